//! The state directory: per client, the current token, its expiry and its
//! refresh token, so that a restart neither loses a rotating refresh token
//! nor causes a storm of token requests.
//!
//! A client's state is two files in `state_dir` (0700):
//!
//! * `NAME.lock` — empty, never replaced: whoever refreshes a chain (the
//!   daemon's client task, `once`, `token`, a second daemon) holds an
//!   exclusive `flock` on it from reading the chain until the new state is
//!   durable. One refresh in flight per chain, across processes.
//! * `NAME.state` — two fixed-size slots, each a checksummed record
//!   (`TKSTATE1 seq len sum` header, then the JSON record). A save writes
//!   the slot that does not hold the newest record, in place, and
//!   `fdatasync`s it: no new inode, no rename, one flush. A write cut short
//!   (a crash, a power loss) leaves a slot whose sum does not match, and
//!   the other slot — the previous record — is read instead. Overwriting
//!   blocks that are already allocated needs no free space, so a full
//!   filesystem does not stop a chain that already has its file.
//!
//! The file is created, or grown when a record outgrows its slot, by
//! writing `NAME.state.new` whole and renaming it into place; a `.new` left
//! by a killed process is adopted when it holds a newer record, else
//! removed. State from earlier versions (`NAME.token.json`, and the temp
//! files `.NAME.token.json.*.tk-tmp` a killed process could leave holding a
//! newer refresh token) is migrated: the newest complete record wins.

use crate::secret::Secret;
use crate::token::{Token, from_unix_millis, unix_millis};
use nix::fcntl::{Flock, FlockArg};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use slots::{HEADER, Image, MIN_ROOM, Slot, decode, encode_slot, slot_size_for};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

mod slots;

const VERSION: u32 = 1;
/// A state file larger than this is not ours.
const MAX_FILE: u64 = 4 << 20;

/// A token as cached on disk, with the fingerprint of the request it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct CachedToken {
    pub fingerprint: String,
    /// Digest of the initial refresh token the chain started from (refresh grant).
    pub seed: Option<String>,
    pub token: Token,
}

// The record. Holds secrets in the clear: deliberately no Debug.
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

/// The record of `token` (JSON; it holds secrets in the clear): what a
/// state file's slot holds, and what cluster mode seals into the store.
pub fn record(fingerprint: &str, seed: Option<&str>, token: &Token) -> io::Result<Secret> {
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
    Ok(Secret::new(
        serde_json::to_string(&file).map_err(io::Error::other)?,
    ))
}

/// A record [`record`] made, read back.
pub fn read_record(bytes: &[u8]) -> Option<CachedToken> {
    StateFile::parse(bytes).map(StateFile::cached)
}

impl StateFile {
    fn parse(bytes: &[u8]) -> Option<StateFile> {
        serde_json::from_slice::<StateFile>(bytes)
            .ok()
            .filter(|f| f.version == VERSION)
    }

    fn cached(self) -> CachedToken {
        CachedToken {
            fingerprint: self.fingerprint,
            seed: self.seed,
            token: Token {
                access_token: Secret::new(self.access_token),
                token_type: self.token_type,
                issued_at: from_unix_millis(self.issued_at_ms),
                expires_at: from_unix_millis(self.expires_at_ms),
                refresh_token: self.refresh_token.map(Secret::new),
            },
        }
    }
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

/// What of `cached` a client with `spec` may use at `now`: the access token
/// while it is valid, and the refresh token while the request (and, for the
/// refresh grant, the configured initial token) is the same.
pub fn resume_from(
    cached: Option<CachedToken>,
    spec: &crate::grant::TokenRequestSpec,
    now: std::time::SystemTime,
) -> Resume {
    let Some(cached) = cached else {
        return Resume::default();
    };
    if cached.fingerprint != spec.fingerprint() {
        return Resume::default();
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
    Resume {
        token,
        refresh_token,
        issued_at: Some(issued_at),
    }
}

fn with_path(path: &Path, what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {what}: {e}", path.display()))
}

/// Reads a whole file that is not a symlink; `None` when it does not exist.
fn read_file(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(with_path(path, "cannot open", e)),
    };
    read_whole(&file, path).map(Some)
}

/// The whole content of `file` (opened from `path`): a regular file of at
/// most [`MAX_FILE`] bytes, or it is not ours.
fn read_whole(file: &File, path: &Path) -> io::Result<Vec<u8>> {
    let meta = file
        .metadata()
        .map_err(|e| with_path(path, "cannot inspect", e))?;
    if !meta.is_file() || meta.len() > MAX_FILE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: not a tokenkeeper state file", path.display()),
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    io::Read::read_to_end(&mut &*file, &mut bytes)
        .map_err(|e| with_path(path, "cannot read", e))?;
    Ok(bytes)
}

/// Opens `path` (never through a symlink) for reading and writing — created
/// 0600 with `create` — or, where this user may not write it (another user's
/// `state_dir`, a read-only filesystem), for reading only, with why not.
fn open_writable_or_readable(path: &Path, create: bool) -> io::Result<(File, Option<io::Error>)> {
    let open = |write: bool| {
        OpenOptions::new()
            .read(true)
            .write(write)
            .create(write && create)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
    };
    match open(true) {
        Ok(file) => Ok((file, None)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
            ) =>
        {
            open(false).map(|file| (file, Some(e)))
        }
        Err(e) => Err(e),
    }
}

#[derive(Clone, Debug)]
pub struct StateStore {
    dir: PathBuf,
    /// Temp files an earlier version left (`.NAME.token.json.*.tk-tmp`),
    /// by client: the directory is listed for them once, when first asked
    /// (this version never writes them; listing it for every client made a
    /// first start with 100,000 clients quadratic).
    legacy_temps: Arc<OnceLock<HashMap<String, Vec<PathBuf>>>>,
}

impl StateStore {
    /// Opens (creating, 0700) the state directory. An existing directory
    /// that others can read is tightened to 0700. State left by earlier
    /// versions or by killed processes is migrated or recovered now.
    pub fn open(dir: &Path) -> io::Result<StateStore> {
        crate::output::file::trusted_dir(dir, 0o700, None)
            .map_err(|e| io::Error::new(e.kind(), format!("state_dir {}: {e}", dir.display())))?;
        let meta = fs::metadata(dir)?;
        if meta.permissions().mode() & 0o077 != 0 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("state_dir {}: cannot tighten to 0700: {e}", dir.display()),
                )
            })?;
        }
        let store = StateStore::at(dir);
        store.recover_all();
        Ok(store)
    }

    /// A store that only reads (for `status` and `token`, which may run as
    /// another user than the daemon).
    pub fn at(dir: &Path) -> StateStore {
        StateStore {
            dir: dir.to_path_buf(),
            legacy_temps: Arc::default(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, client: &str, suffix: &str) -> PathBuf {
        self.dir.join(format!("{client}{suffix}"))
    }

    pub fn status_path(&self) -> PathBuf {
        self.dir.join("status.json")
    }

    /// Migrates every client's state from earlier versions, adopts or
    /// removes what killed processes left (`.new` files, temp files), and
    /// removes stale temp files of the status file. Best effort: a client
    /// whose lock is held is left to its holder; problems are logged.
    fn recover_all(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let mut clients = std::collections::BTreeSet::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(client) = name.strip_suffix(".token.json") {
                clients.insert(client.to_string());
            } else if let Some(client) = name.strip_suffix(".state.new") {
                clients.insert(client.to_string());
            } else if let Some(rest) = name.strip_prefix('.') {
                if let Some(client) = rest
                    .split(".token.json.")
                    .next()
                    .filter(|_| rest.contains(".token.json.") && rest.ends_with(".tk-tmp"))
                {
                    clients.insert(client.to_string());
                }
            }
        }
        crate::output::file::remove_stale_temp_files(&self.status_path());
        for client in clients {
            match self.try_lock(&client) {
                Ok(Some(mut lock)) => {
                    if let Err(e) = lock.migrate() {
                        tracing::warn!(client = %client, error = %e, "cannot migrate the state of an earlier version");
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(client = %client, error = %e, "cannot lock the state"),
            }
        }
    }

    /// The newest whole record, read without the lock (a concurrent save
    /// writes the other slot). Falls back to an earlier version's file.
    pub fn load(&self, client: &str) -> io::Result<Option<CachedToken>> {
        let path = self.path(client, ".state");
        match read_file(&path)? {
            Some(bytes) => Ok(decode(&bytes)
                .newest
                .and_then(|(_, s)| StateFile::parse(&s.payload))
                .map(StateFile::cached)),
            None => Ok(self.legacy_newest(client)?.map(|(_, f)| f.cached())),
        }
    }

    /// What of the cached state of `spec` may be used now.
    pub fn resume(
        &self,
        spec: &crate::grant::TokenRequestSpec,
        client: &str,
        now: std::time::SystemTime,
    ) -> io::Result<Resume> {
        Ok(resume_from(self.load(client)?, spec, now))
    }

    /// The newest complete record of an earlier version: `NAME.token.json`
    /// or a temp file beside it that a killed process never renamed; with
    /// the paths it was found among.
    fn legacy_newest(&self, client: &str) -> io::Result<Option<(Vec<PathBuf>, StateFile)>> {
        let main = self.path(client, ".token.json");
        let mut paths = Vec::new();
        if main.exists() {
            paths.push(main.clone());
        }
        let temps = self.legacy_temps.get_or_init(|| {
            let mut found: HashMap<String, Vec<PathBuf>> = HashMap::new();
            for entry in fs::read_dir(&self.dir).into_iter().flatten().flatten() {
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                let client = name
                    .strip_prefix('.')
                    .filter(|_| name.ends_with(".tk-tmp"))
                    .and_then(|rest| rest.split_once(".token.json."))
                    .map(|(client, _)| client);
                if let Some(client) = client {
                    found
                        .entry(client.to_string())
                        .or_default()
                        .push(entry.path());
                }
            }
            found
        });
        paths.extend(temps.get(client).into_iter().flatten().cloned());
        if paths.is_empty() {
            return Ok(None);
        }
        let mut best: Option<StateFile> = None;
        for path in &paths {
            let Some(bytes) = read_file(path).ok().flatten() else {
                continue;
            };
            match StateFile::parse(&bytes) {
                Some(f)
                    if best
                        .as_ref()
                        .is_none_or(|b| f.issued_at_ms > b.issued_at_ms) =>
                {
                    best = Some(f)
                }
                Some(_) => {}
                None if *path == main => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: unreadable state", main.display()),
                    ));
                }
                None => {}
            }
        }
        Ok(best.map(|b| (paths, b)))
    }

    /// Takes `client`'s lock if nobody holds it (`None` if somebody does).
    /// The lock file is created when missing; a user who may only read
    /// `state_dir` locks it read-only.
    pub fn try_lock(&self, client: &str) -> io::Result<Option<ChainLock>> {
        let path = self.path(client, ".lock");
        let (file, _) = open_writable_or_readable(&path, true)
            .map_err(|e| with_path(&path, "cannot open the lock file", e))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                let mut held = ChainLock {
                    store: self.clone(),
                    client: client.to_string(),
                    _lock: lock,
                    opened: None,
                };
                held.recover_new()?;
                Ok(Some(held))
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, errno)) => Err(with_path(&path, "cannot lock", errno.into())),
        }
    }

    /// Takes `client`'s lock, waiting at most `wait` for its holder.
    pub async fn lock(&self, client: &str, wait: Duration) -> io::Result<ChainLock> {
        Ok(self.lock_and(client, wait, |_| ()).await?.0)
    }

    /// Takes `client`'s lock, waiting at most `wait` for its holder, and
    /// runs `first` under it in the same hop to a blocking thread.
    pub async fn lock_and<R, F>(
        &self,
        client: &str,
        wait: Duration,
        first: F,
    ) -> io::Result<(ChainLock, R)>
    where
        R: Send + 'static,
        F: FnOnce(&mut ChainLock) -> R + Send + 'static,
    {
        enum Attempt<F, R> {
            Held(ChainLock, R),
            Busy(F),
        }
        let deadline = tokio::time::Instant::now() + wait;
        let mut pause = Duration::from_millis(2);
        let mut first = first;
        loop {
            let (store, name) = (self.clone(), client.to_string());
            let attempt = tokio::task::spawn_blocking(move || {
                Ok::<_, io::Error>(match store.try_lock(&name)? {
                    Some(mut lock) => {
                        let r = first(&mut lock);
                        Attempt::Held(lock, r)
                    }
                    None => Attempt::Busy(first),
                })
            })
            .await
            .map_err(io::Error::other)??;
            match attempt {
                Attempt::Held(lock, r) => return Ok((lock, r)),
                Attempt::Busy(f) => first = f,
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{}: another tokenkeeper has been refreshing {client} for {}; not waiting longer",
                        self.path(client, ".lock").display(),
                        humantime::format_duration(wait)
                    ),
                ));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }
}

/// The state file as read under a lock: one handle (opened for writing
/// when it could be) and its image, kept for the lock's lifetime so a
/// refresh opens and reads it once.
struct Opened {
    file: File,
    /// Why it could not be opened for writing.
    read_only: Option<io::Error>,
    image: Image,
}

/// The exclusive right to read and rotate one client's chain; released
/// when dropped. Its methods do blocking file I/O.
pub struct ChainLock {
    store: StateStore,
    client: String,
    _lock: Flock<File>,
    opened: Option<Opened>,
}

impl ChainLock {
    fn path(&self, suffix: &str) -> PathBuf {
        self.store.path(&self.client, suffix)
    }

    /// The state file, opened and read once under this lock; `None` when
    /// there is none.
    fn opened(&mut self) -> io::Result<Option<&mut Opened>> {
        if self.opened.is_none() {
            let path = self.path(".state");
            let (file, read_only) = match open_writable_or_readable(&path, false) {
                Ok(opened) => opened,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(with_path(&path, "cannot open", e)),
            };
            let bytes = read_whole(&file, &path)?;
            self.opened = Some(Opened {
                file,
                read_only,
                image: decode(&bytes),
            });
        }
        Ok(self.opened.as_mut())
    }

    /// The newest record (see [`StateStore::load`]).
    pub fn load(&mut self) -> io::Result<Option<CachedToken>> {
        match self.opened()? {
            Some(o) => Ok(o
                .image
                .newest
                .as_ref()
                .and_then(|(_, s)| StateFile::parse(&s.payload))
                .map(StateFile::cached)),
            None => Ok(self
                .store
                .legacy_newest(&self.client)?
                .map(|(_, f)| f.cached())),
        }
    }

    fn newest_seq(&mut self) -> Option<u64> {
        let opened = self.opened().ok().flatten()?;
        opened.image.newest.as_ref().map(|(_, s)| s.seq)
    }

    /// A `.new` file is only written under the lock, so one found by the
    /// holder was left by a killed process: adopted when it holds a newer
    /// record than the state file, else removed.
    fn recover_new(&mut self) -> io::Result<()> {
        let new = self.path(".state.new");
        let Some(bytes) = read_file(&new).ok().flatten() else {
            return Ok(());
        };
        let candidate = decode(&bytes).newest.map(|(_, s)| s.seq);
        if candidate.is_some() && candidate > self.newest_seq() {
            fs::rename(&new, self.path(".state"))
                .map_err(|e| with_path(&new, "cannot rename into place", e))?;
            self.opened = None;
            self.sync_dir()?;
            tracing::info!(client = %self.client, "recovered the newest state record left by a stopped process");
        } else {
            fs::remove_file(&new).map_err(|e| with_path(&new, "cannot remove", e))?;
        }
        Ok(())
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.store.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| with_path(&self.store.dir, "cannot fsync the directory", e))
    }

    /// Writes a whole new state file with slots of `slot_size`, `record` in
    /// the first, and renames it into place.
    fn rewrite(&mut self, slot_size: usize, record: Option<(u64, &[u8])>) -> io::Result<()> {
        self.opened = None;
        let new = self.path(".state.new");
        let mut image = match record {
            Some((seq, payload)) => encode_slot(seq, payload, slot_size),
            None => vec![b'\n'; slot_size],
        };
        image.resize(slot_size * 2, b'\n');
        let image = secrecy::SecretSlice::from(image);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&new)
            .map_err(|e| with_path(&new, "cannot create", e))?;
        let written = file
            .write_all_at(image.expose_secret(), 0)
            .and_then(|()| file.sync_all());
        if let Err(e) = written {
            let _ = fs::remove_file(&new);
            return Err(with_path(&new, "cannot write", e));
        }
        fs::rename(&new, self.path(".state"))
            .map_err(|e| with_path(&new, "cannot rename into place", e))?;
        self.sync_dir()
    }

    /// Makes sure the next [`save`](Self::save) can be written before a
    /// request that rotates the chain is sent: the state file exists, opens
    /// for writing, and has room for a record twice the size of the current
    /// one. On a filesystem that is read-only, full (for a file yet to be
    /// created or grown) or not ours, this fails and nothing is sent.
    pub fn prepare(&mut self) -> io::Result<()> {
        let path = self.path(".state");
        let Some(opened) = self.opened()? else {
            if self.store.legacy_newest(&self.client)?.is_some() {
                return self.migrate();
            }
            return self.rewrite(slot_size_for(0), None);
        };
        if let Some(e) = &opened.read_only {
            return Err(with_path(
                &path,
                "cannot open for writing",
                io::Error::new(e.kind(), e.to_string()),
            ));
        }
        let len = opened
            .image
            .newest
            .as_ref()
            .map_or(0, |(_, s)| s.payload.len());
        if opened.image.slot_size < HEADER + 2 * len.max(MIN_ROOM) {
            let record = opened.image.newest.take().map(|(_, s)| s);
            return self.rewrite(
                slot_size_for(len),
                record.as_ref().map(|s| (s.seq, &s.payload[..])),
            );
        }
        Ok(())
    }

    /// Saves `token` as the newest record, durably (fdatasync) before it
    /// returns.
    pub fn save(&mut self, fingerprint: &str, seed: Option<&str>, token: &Token) -> io::Result<()> {
        let payload = record(fingerprint, seed, token)?;
        self.write_record(payload.expose().as_bytes())
    }

    fn write_record(&mut self, payload: &[u8]) -> io::Result<()> {
        let path = self.path(".state");
        let Some(opened) = self.opened()? else {
            return self.rewrite(slot_size_for(payload.len()), Some((1, payload)));
        };
        let (slot, seq) = match &opened.image.newest {
            Some((i, s)) => (1 - i, s.seq + 1),
            None => (0, 1),
        };
        if opened.image.slot_size < HEADER + payload.len() {
            return self.rewrite(slot_size_for(payload.len()), Some((seq, payload)));
        }
        if let Some(e) = &opened.read_only {
            return Err(with_path(
                &path,
                "cannot open for writing",
                io::Error::new(e.kind(), e.to_string()),
            ));
        }
        let size = opened.image.slot_size;
        let bytes = secrecy::SecretSlice::from(encode_slot(seq, payload, size));
        let written = opened
            .file
            .write_all_at(bytes.expose_secret(), (slot * size) as u64)
            .and_then(|()| opened.file.sync_data());
        match written {
            Ok(()) => {
                opened.image.newest = Some((
                    slot,
                    Slot {
                        seq,
                        payload: payload.to_vec(),
                    },
                ));
                Ok(())
            }
            Err(e) => {
                // what is on disk is not known now: read it again next time
                self.opened = None;
                Err(with_path(&path, "cannot write", e))
            }
        }
    }

    /// Moves an earlier version's newest record (see
    /// [`StateStore::legacy_newest`]) into the state file, then removes the
    /// old files: they hold a refresh token the chain has moved past, or
    /// will once it rotates.
    fn migrate(&mut self) -> io::Result<()> {
        let Some((paths, best)) = self.store.legacy_newest(&self.client)? else {
            return Ok(());
        };
        let current = self.opened()?.and_then(|o| {
            o.image
                .newest
                .as_ref()
                .map(|(_, s)| (s.seq, StateFile::parse(&s.payload).map(|f| f.issued_at_ms)))
        });
        if current
            .as_ref()
            .is_none_or(|(_, issued)| issued.is_none_or(|c| best.issued_at_ms > c))
        {
            let payload = Secret::new(serde_json::to_string(&best).map_err(io::Error::other)?);
            let seq = current.map_or(1, |(seq, _)| seq + 1);
            let len = payload.expose().len();
            self.rewrite(slot_size_for(len), Some((seq, payload.expose().as_bytes())))?;
            tracing::info!(client = %self.client, from = paths.len(), "state migrated from an earlier version");
        }
        for path in &paths {
            fs::remove_file(path).map_err(|e| with_path(path, "cannot remove", e))?;
        }
        self.sync_dir()
    }
}

#[cfg(test)]
mod tests;
