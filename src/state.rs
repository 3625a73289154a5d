//! The state directory: per client, the current token, its expiry and its
//! refresh token, so that a restart neither loses a rotating refresh token
//! nor causes a storm of token requests. Written like every output: atomic,
//! 0600, in a 0700 directory.

use crate::output::file::{FileOptions, write_atomic};
use crate::secret::Secret;
use crate::token::{Token, from_unix_millis, unix_millis};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

const VERSION: u32 = 1;

/// A token as cached on disk, with the fingerprint of the request it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct CachedToken {
    pub fingerprint: String,
    /// Digest of the initial refresh token the chain started from (refresh grant).
    pub seed: Option<String>,
    pub token: Token,
}

// On-disk form. Holds secrets in the clear: deliberately no Debug.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    fingerprint: String,
    access_token: String,
    token_type: String,
    issued_at_ms: i64,
    expires_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seed: Option<String>,
}

/// What a client resumes from after a restart.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resume {
    /// A still-valid access token.
    pub token: Option<Token>,
    /// The newest refresh token, even when the access token has expired.
    pub refresh_token: Option<Secret>,
    /// When the cached token was issued (to notice a newer one written by another process).
    pub issued_at: Option<std::time::SystemTime>,
}

#[derive(Clone, Debug)]
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    /// What of the cached state of `spec` may be used now: the access token
    /// while it is valid, and the refresh token while the request (and, for
    /// the refresh grant, the configured initial token) is the same.
    pub fn resume(
        &self,
        spec: &crate::grant::TokenRequestSpec,
        client: &str,
        now: std::time::SystemTime,
    ) -> io::Result<Resume> {
        let Some(cached) = self.load(client)? else {
            return Ok(Resume::default());
        };
        if cached.fingerprint != spec.fingerprint() {
            return Ok(Resume::default());
        }
        let refresh_token = match (
            cached.seed == spec.refresh_seed(),
            spec.grant.uses_refresh_tokens(),
        ) {
            (true, true) => cached.token.refresh_token.clone(),
            _ => None,
        };
        let issued_at = cached.token.issued_at;
        let token = (!cached.token.is_expired(now)).then(|| Token {
            refresh_token: refresh_token.clone(),
            ..cached.token
        });
        Ok(Resume {
            token,
            refresh_token,
            issued_at: Some(issued_at),
        })
    }

    /// Opens (creating, 0700) the state directory. An existing directory
    /// that others can read is tightened to 0700.
    pub fn open(dir: &Path) -> io::Result<StateStore> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("state_dir {}: cannot create: {e}", dir.display()),
                )
            })?;
        let meta = fs::metadata(dir)?;
        if meta.permissions().mode() & 0o077 != 0 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("state_dir {}: cannot tighten to 0700: {e}", dir.display()),
                )
            })?;
        }
        Ok(StateStore {
            dir: dir.to_path_buf(),
        })
    }

    /// A store that only reads (for `status` and `token`, which may run as
    /// another user than the daemon).
    pub fn at(dir: &Path) -> StateStore {
        StateStore {
            dir: dir.to_path_buf(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn token_path(&self, client: &str) -> PathBuf {
        self.dir.join(format!("{client}.token.json"))
    }

    pub fn status_path(&self) -> PathBuf {
        self.dir.join("status.json")
    }

    pub fn load(&self, client: &str) -> io::Result<Option<CachedToken>> {
        let path = self.token_path(client);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        };
        let file: StateFile = serde_json::from_slice(&bytes).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: unreadable state: {e}", path.display()),
            )
        })?;
        if file.version != VERSION {
            return Ok(None);
        }
        Ok(Some(CachedToken {
            fingerprint: file.fingerprint,
            seed: file.seed,
            token: Token {
                access_token: Secret::new(file.access_token),
                token_type: file.token_type,
                issued_at: from_unix_millis(file.issued_at_ms),
                expires_at: from_unix_millis(file.expires_at_ms),
                refresh_token: file.refresh_token.map(Secret::new),
            },
        }))
    }

    pub fn save(
        &self,
        client: &str,
        fingerprint: &str,
        seed: Option<&str>,
        token: &Token,
    ) -> io::Result<()> {
        let file = StateFile {
            version: VERSION,
            fingerprint: fingerprint.to_string(),
            access_token: token.access_token.expose().to_string(),
            token_type: token.token_type.clone(),
            issued_at_ms: unix_millis(token.issued_at),
            expires_at_ms: unix_millis(token.expires_at),
            refresh_token: token.refresh_token.as_ref().map(|s| s.expose().to_string()),
            seed: seed.map(str::to_string),
        };
        let bytes = Secret::new(serde_json::to_string(&file).map_err(io::Error::other)?);
        write_atomic(
            &self.token_path(client),
            bytes.expose().as_bytes(),
            &FileOptions {
                mode: 0o600,
                owner: None,
                group: None,
            },
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn round_trip_with_tight_modes() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        fs::create_dir(&state_dir).unwrap();
        fs::set_permissions(&state_dir, fs::Permissions::from_mode(0o755)).unwrap();
        let store = StateStore::open(&state_dir).unwrap();
        assert_eq!(fs::metadata(&state_dir).unwrap().mode() & 0o777, 0o700);
        assert!(store.load("a").unwrap().is_none());
        let issued = UNIX_EPOCH + Duration::from_millis(1_800_000_000_123);
        let token = Token {
            access_token: Secret::new("at"),
            token_type: "Bearer".into(),
            issued_at: issued,
            expires_at: issued + Duration::from_secs(60),
            refresh_token: Some(Secret::new("rt")),
        };
        store.save("a", "fp", Some("seed"), &token).unwrap();
        let cached = store.load("a").unwrap().unwrap();
        assert_eq!(
            cached,
            CachedToken {
                fingerprint: "fp".into(),
                seed: Some("seed".into()),
                token
            }
        );
        let mode = fs::metadata(state_dir.join("a.token.json")).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        fs::write(dir.path().join("a.token.json"), b"{nope").unwrap();
        assert!(store.load("a").is_err());
    }
}
