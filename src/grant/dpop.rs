//! DPoP (RFC 9449): a client with `dpop = true` proves on every token
//! request that it holds a private key, and gets tokens bound to that key
//! (`token_type` `DPoP`, `cnf.jkt` its thumbprint): a token copied off the
//! host is worthless without the key.
//!
//! The proof key is `dpop_key_file` when configured (cluster members share
//! it), otherwise an EC P-256 key tokenkeeper makes once in `state_dir`
//! (`NAME.dpop-key.pem`, 0600) and keeps beside the client's refresh chain:
//! a new key would orphan every token bound to the old one.

use super::assertion::{AssertionKey, generate_p256};
use crate::secret::Secret;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Where a client's proof key is, loaded on first use.
#[derive(Debug)]
pub struct DpopKey {
    path: PathBuf,
    /// Made there when missing (the `state_dir` key); a configured
    /// `dpop_key_file` must exist.
    generated: bool,
    loaded: Mutex<Option<Arc<ProofKey>>>,
}

/// A loaded proof key: what signs, the PEM a `dpop` output hands to the
/// consumer, and the thumbprint tokens are bound to.
pub struct ProofKey {
    pub key: AssertionKey,
    pub pem: Secret,
    pub jkt: String,
}

impl std::fmt::Debug for ProofKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProofKey")
            .field("jkt", &self.jkt)
            .finish_non_exhaustive()
    }
}

impl PartialEq for DpopKey {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path && self.generated == other.generated
    }
}
impl Eq for DpopKey {}

impl DpopKey {
    /// The key in `path`, made there on first use when `generated`.
    pub fn new(path: PathBuf, generated: bool) -> DpopKey {
        DpopKey {
            path,
            generated,
            loaded: Mutex::default(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The key: loaded once, or made and saved first (0600, never over a
    /// key another process saved a moment before: that one is used).
    pub fn get(&self) -> Result<Arc<ProofKey>, String> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = loaded.as_ref() {
            return Ok(k.clone());
        }
        let pem = match crate::fsread::read(&self.path) {
            Ok(pem) => pem,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.generated => self.make()?,
            Err(e) => return Err(format!("cannot read {}: {e}", self.path.display())),
        };
        let key =
            Arc::new(ProofKey::from_pem(&pem).map_err(|e| format!("{} {e}", self.path.display()))?);
        *loaded = Some(key.clone());
        Ok(key)
    }

    /// Makes a key and saves it without replacing one that is there;
    /// returns what the file holds then.
    fn make(&self) -> Result<Vec<u8>, String> {
        let at = |e: std::io::Error| format!("cannot save {}: {e}", self.path.display());
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let pem = generate_p256()?;
        // 0600 from the start (tempfile's default), whole before it is named
        let mut tmp = tempfile::Builder::new()
            .prefix(".dpop-key.")
            .tempfile_in(dir)
            .map_err(at)?;
        tmp.write_all(pem.expose().as_bytes()).map_err(at)?;
        tmp.as_file().sync_all().map_err(at)?;
        match tmp.persist_noclobber(&self.path) {
            Ok(_) => {
                std::fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(at)?;
                tracing::info!(path = %self.path.display(), "made a DPoP proof key");
                Ok(pem.expose().as_bytes().to_vec())
            }
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {
                crate::fsread::read(&self.path)
                    .map_err(|e| format!("cannot read {}: {e}", self.path.display()))
            }
            Err(e) => Err(at(e.error)),
        }
    }
}

/// A proof for `method` `url` with the token and key of a `dpop` output
/// file's `text` (`tokenkeeper proof`). Errors never quote the file.
pub fn proof_for(
    text: &str,
    method: &str,
    url: &str,
    nonce: Option<&str>,
    now: std::time::SystemTime,
) -> Result<Secret, String> {
    #[derive(serde::Deserialize)]
    struct Output {
        access_token: Option<String>,
        dpop: Option<Key>,
    }
    #[derive(serde::Deserialize)]
    struct Key {
        private_key: Option<String>,
    }
    let out: Output = serde_json::from_str(text)
        .map_err(|_| "is not a format = \"dpop\" output (JSON)".to_string())?;
    let (Some(token), Some(pem)) = (out.access_token, out.dpop.and_then(|k| k.private_key)) else {
        return Err(
            "is not a format = \"dpop\" output: it has no access_token and dpop.private_key".into(),
        );
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(format!("{method:?} is not an HTTP method (GET, POST, ...)"));
    }
    let url = url::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let key =
        ProofKey::from_pem(pem.as_bytes()).map_err(|e| format!("its dpop.private_key {e}"))?;
    key.key
        .dpop_proof(method, &url, now, nonce, Some(&Secret::new(token)))
}

impl ProofKey {
    fn from_pem(pem: &[u8]) -> Result<ProofKey, String> {
        let key = AssertionKey::private(pem, None, None)?;
        let jkt = key.thumbprint();
        let text = std::str::from_utf8(pem).map_err(|_| "is not a PEM file".to_string())?;
        Ok(ProofKey {
            key,
            pem: Secret::new(text),
            jkt,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_made_key_is_saved_0600_and_used_again() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shop.dpop-key.pem");
        let first = DpopKey::new(path.clone(), true).get().unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // another process (a new DpopKey) finds it, and binds to the same thumbprint
        let again = DpopKey::new(path.clone(), true).get().unwrap();
        assert_eq!(first.jkt, again.jkt);
        assert_eq!(first.pem.expose(), again.pem.expose());
        // nothing but the key is left in the directory
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_configured_key_file_is_never_made() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.pem");
        let e = DpopKey::new(path.clone(), false).get().unwrap_err();
        assert!(
            e.contains("cannot read") && e.contains("missing.pem"),
            "{e}"
        );
        assert!(!path.exists());
    }

    #[test]
    fn a_proof_carries_the_key_and_what_the_request_is() {
        use base64::Engine;
        let key = ProofKey::from_pem(generate_p256().unwrap().expose().as_bytes()).unwrap();
        let url = url::Url::parse("https://as.example/token?x=1#f").unwrap();
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let at = Secret::new("the-token");
        let proof = key
            .key
            .dpop_proof("POST", &url, now, Some("n-1"), Some(&at))
            .unwrap();
        let parts: Vec<_> = proof.expose().split('.').collect();
        let decode = |s: &str| -> serde_json::Value {
            serde_json::from_slice(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(s)
                    .unwrap(),
            )
            .unwrap()
        };
        let (header, claims) = (decode(parts[0]), decode(parts[1]));
        assert_eq!(header["typ"], "dpop+jwt");
        assert_eq!(header["alg"], "ES256");
        assert!(header["jwk"].get("d").is_none(), "no private part");
        assert_eq!(header["jwk"]["kty"], "EC");
        assert_eq!(claims["htm"], "POST");
        assert_eq!(claims["htu"], "https://as.example/token");
        assert_eq!(claims["iat"], 1_700_000_000);
        assert_eq!(claims["nonce"], "n-1");
        // RFC 9449 §4.2: ath = base64url(SHA-256(token))
        use sha2::{Digest, Sha256};
        let ath =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(b"the-token"));
        assert_eq!(claims["ath"], ath);
        assert_ne!(
            claims["jti"],
            decode(
                key.key
                    .dpop_proof("POST", &url, now, None, None)
                    .unwrap()
                    .expose()
                    .split('.')
                    .nth(1)
                    .unwrap()
            )["jti"]
        );
    }
}
