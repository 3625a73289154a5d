//! Atomic, symlink-safe file replacement.
//!
//! Every write: a temp file in the target's directory, created owner-only,
//! given its final owner and mode, then written, fsynced, renamed over the
//! target, and the directory fsynced. A reader sees the whole old file or the
//! whole new one, never a partial or empty one, and never one with looser
//! permissions than asked.

use super::{Stamp, WriteOutcome};
use std::fs::{self, File, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileOptions {
    pub mode: u32,
    pub owner: Option<u32>,
    pub group: Option<u32>,
}

pub(super) fn error(path: &Path, what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {what}: {e}", path.display()))
}

fn split(path: &Path) -> io::Result<(PathBuf, String)> {
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a file path", path.display()),
        )
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((dir, name.to_string()))
}

/// What a write target must be when it exists.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Existing {
    File,
    Dir,
}

/// The metadata of what is at `path` (`None` when nothing is): a symlink
/// there, or something of another kind than `want`, is an error.
pub(super) fn existing(path: &Path, want: Existing) -> io::Result<Option<fs::Metadata>> {
    let refuse = |why: &str| {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: {why}", path.display()),
        ))
    };
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            refuse("is a symlink; refusing to write through it")
        }
        Ok(meta) if want == Existing::File && !meta.is_file() => {
            refuse("exists and is not a regular file")
        }
        Ok(meta) if want == Existing::Dir && !meta.is_dir() => {
            refuse("exists and is not a directory")
        }
        Ok(meta) => Ok(Some(meta)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(error(path, "cannot inspect", e)),
    }
}

/// True when `path` already holds exactly `content` with the wanted mode and owner.
fn unchanged(path: &Path, meta: &fs::Metadata, content: &[u8], opts: &FileOptions) -> bool {
    if meta.mode() & 0o7777 != opts.mode
        || meta.len() != content.len() as u64
        || opts.owner.is_some_and(|uid| meta.uid() != uid)
        || opts.group.is_some_and(|gid| meta.gid() != gid)
    {
        return false;
    }
    let mut existing = Vec::with_capacity(content.len());
    match File::open(path) {
        Ok(f) => {
            f.take(content.len() as u64 + 1)
                .read_to_end(&mut existing)
                .is_ok()
                && existing == content
        }
        Err(_) => false,
    }
}

/// Walks to `dir` from `/` one component at a time without trusting what
/// another user could have put on the way, creating what is missing with
/// `mode` (never following a symlink at the component being created):
///
/// * a symlink owned by somebody other than root, this user or `owner` in a
///   directory others may write to (sticky, like `/tmp`, or not) is refused:
///   it was planted, and following it would write the token where its owner
///   chose;
/// * a directory owned by another user than root, this user or `owner` is
///   refused: its owner could swap its entries under us;
/// * a directory anyone may write to without the sticky bit is used, with a
///   warning once per process (a Kubernetes `emptyDir` is made that way, and
///   is shared only within its pod).
///
/// Symlinks that pass are followed (at most 40).
pub fn trusted_dir(dir: &Path, mode: u32, owner: Option<u32>) -> io::Result<()> {
    use std::collections::VecDeque;
    use std::path::Component;
    let me = nix::unistd::geteuid().as_raw();
    let trusted = |uid: u32| uid == 0 || uid == me || Some(uid) == owner;
    let absolute = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir()?.join(dir)
    };
    let mut rest: VecDeque<std::ffi::OsString> = absolute
        .components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut current = PathBuf::from("/");
    let mut current_meta = fs::metadata(&current)?;
    let mut hops = 0;
    while let Some(part) = rest.pop_front() {
        if part == ".." {
            current.pop();
            current_meta = fs::metadata(&current)?;
            continue;
        }
        let next = current.join(&part);
        let meta = match fs::symlink_metadata(&next) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                match fs::DirBuilder::new().mode(mode).create(&next) {
                    Ok(()) => {}
                    // somebody made it meanwhile: judged below like any other
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(error(&next, "cannot create directory", e)),
                }
                fs::symlink_metadata(&next).map_err(|e| error(&next, "cannot inspect", e))?
            }
            Err(e) => return Err(error(&next, "cannot inspect", e)),
        };
        let others_may_write = current_meta.mode() & 0o002 != 0;
        if meta.file_type().is_symlink() {
            if others_may_write && !trusted(meta.uid()) {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "{}: a symlink owned by uid {} in {}, a directory others may write to; refusing to follow it (it may have been planted)",
                        next.display(),
                        meta.uid(),
                        current.display()
                    ),
                ));
            }
            hops += 1;
            if hops > 40 {
                return Err(error(
                    &next,
                    "too many symlinks",
                    io::ErrorKind::Other.into(),
                ));
            }
            let target = fs::read_link(&next).map_err(|e| error(&next, "cannot read link", e))?;
            if target.is_absolute() {
                current = PathBuf::from("/");
                current_meta = fs::metadata(&current)?;
            }
            for c in target.components().rev() {
                match c {
                    Component::Normal(p) => rest.push_front(p.to_os_string()),
                    Component::ParentDir => rest.push_front("..".into()),
                    _ => {}
                }
            }
            continue;
        }
        if !meta.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: exists and is not a directory", next.display()),
            ));
        }
        if !trusted(meta.uid()) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{}: owned by uid {}, not by root, this user (uid {me}) or the output's owner; its owner could replace what is written there, so it is not used",
                    next.display(),
                    meta.uid()
                ),
            ));
        }
        if meta.mode() & 0o002 != 0 && meta.mode() & 0o1000 == 0 {
            warn_once(&next);
        }
        current = next;
        current_meta = meta;
    }
    Ok(())
}

/// Warns once per process about a directory anyone may write to.
fn warn_once(dir: &Path) {
    static WARNED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    let mut warned = WARNED.lock().unwrap_or_else(|p| p.into_inner());
    if !warned.iter().any(|d| d == dir) {
        warned.push(dir.to_path_buf());
        tracing::warn!(
            dir = %dir.display(),
            "a directory anyone may write to, without the sticky bit: others can replace what is written there (fine for a pod's emptyDir; elsewhere, chmod o-w or +t)"
        );
    }
}

/// The mode for a directory created to hold a file of `file_mode`: owner rwx,
/// and traversal for whoever may read the file.
pub(super) fn dir_mode(file_mode: u32) -> u32 {
    let mut mode = 0o700;
    if file_mode & 0o040 != 0 {
        mode |= 0o050;
    }
    if file_mode & 0o004 != 0 {
        mode |= 0o005;
    }
    mode
}

/// Random characters in a temp file's name (`.NAME.XXXXXX.tk-tmp`).
const TEMP_RANDOM_CHARS: usize = 6;

/// Creates the temp file for `name` in `dir` with O_CREAT|O_EXCL and
/// owner-only bits (of `mode`): whatever is planted at the temp path — a
/// symlink, a file — makes creation fail instead of being followed or
/// reused. (`tempfile` retries another random name on such a collision.)
fn temp_file(
    dir: &Path,
    name: &str,
    mode: u32,
    random_chars: usize,
) -> io::Result<tempfile::NamedTempFile> {
    tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tk-tmp")
        .rand_bytes(random_chars)
        .permissions(Permissions::from_mode(mode & 0o700))
        .tempfile_in(dir)
}

/// Replaces `path` with `content` atomically. Refuses a symlink (or anything
/// but a regular file) at the target; writes nothing when the content, mode
/// and owner are already right.
pub fn write_atomic(path: &Path, content: &[u8], opts: &FileOptions) -> io::Result<WriteOutcome> {
    write_atomic_stamped(path, content, opts).map(|(outcome, _)| outcome)
}

/// [`write_atomic`], also returning the file's [`Stamp`] as this call left
/// it (taken from the written file itself, so a change by somebody else
/// right after the rename still shows as a change).
pub fn write_atomic_stamped(
    path: &Path,
    content: &[u8],
    opts: &FileOptions,
) -> io::Result<(WriteOutcome, Stamp)> {
    let (dir, name) = split(path)?;
    if let Some(meta) = existing(path, Existing::File)? {
        if unchanged(path, &meta, content, opts) {
            return Ok((WriteOutcome::Unchanged, Stamp::from_metadata(&meta)));
        }
    }
    trusted_dir(&dir, dir_mode(opts.mode), opts.owner)?;

    let mut tmp = temp_file(&dir, &name, opts.mode, TEMP_RANDOM_CHARS)
        .map_err(|e| error(path, "cannot create temp file", e))?;
    if opts.owner.is_some() || opts.group.is_some() {
        std::os::unix::fs::fchown(tmp.as_file(), opts.owner, opts.group)
            .map_err(|e| error(path, "cannot set owner/group", e))?;
    }
    tmp.as_file()
        .set_permissions(Permissions::from_mode(opts.mode))
        .map_err(|e| error(path, "cannot set mode", e))?;
    tmp.write_all(content)
        .map_err(|e| error(path, "cannot write", e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| error(path, "cannot fsync", e))?;
    let stamp = tmp
        .as_file()
        .metadata()
        .map(|m| Stamp::from_metadata(&m))
        .map_err(|e| error(path, "cannot inspect", e))?;
    tmp.persist(path)
        .map_err(|e| error(path, "cannot rename into place", e.error))?;
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| error(&dir, "cannot fsync directory", e))?;
    Ok((WriteOutcome::Written, stamp))
}

/// Removes from `dir` the temp files (`.*.tk-tmp`) that were last written
/// before `before` — by a process killed mid-write, since a live writer's
/// temp file is younger: one directory listing for every output in it,
/// where a listing per output made a start with 10,000 outputs in one
/// directory read 10⁸ entries.
pub fn remove_stale_temp_files_in(dir: &Path, before: std::time::SystemTime) {
    remove_temp_files(dir, |_, entry| {
        entry
            .metadata()
            .ok()
            .filter(|m| m.file_type().is_file())
            .and_then(|m| m.modified().ok())
            .is_some_and(|t| t < before)
    });
}

/// Removes the temp files a killed write of `path` left.
pub fn remove_stale_temp_files(path: &Path) {
    let Ok((dir, name)) = split(path) else { return };
    let prefix = format!(".{name}.");
    remove_temp_files(&dir, |n, _| n.starts_with(&prefix));
}

/// Removes the temp files (`.*.tk-tmp`) in `dir` that `stale` picks.
fn remove_temp_files(dir: &Path, stale: impl Fn(&str, &fs::DirEntry) -> bool) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(n) = file_name.to_str() else {
            continue;
        };
        if n.starts_with('.') && n.ends_with(".tk-tmp") && stale(n, &entry) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn opts(mode: u32) -> FileOptions {
        FileOptions {
            mode,
            owner: None,
            group: None,
        }
    }

    #[test]
    fn writes_then_skips_unchanged_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        assert_eq!(
            write_atomic(&p, b"one", &opts(0o600)).unwrap(),
            WriteOutcome::Written
        );
        assert_eq!(
            write_atomic(&p, b"one", &opts(0o600)).unwrap(),
            WriteOutcome::Unchanged
        );
        assert_eq!(
            write_atomic(&p, b"two", &opts(0o600)).unwrap(),
            WriteOutcome::Written
        );
        assert_eq!(fs::read(&p).unwrap(), b"two");
        // a mode change alone is a write
        assert_eq!(
            write_atomic(&p, b"two", &opts(0o640)).unwrap(),
            WriteOutcome::Written
        );
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o640);
    }

    /// The stamp comes from the written file itself: it equals what an
    /// `lstat` sees afterwards, and any later change shows.
    #[test]
    fn the_stamp_of_a_write_is_the_file_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        let (_, written) = write_atomic_stamped(&p, b"one", &opts(0o600)).unwrap();
        assert_eq!(Stamp::of(&p), Some(written));
        let (outcome, again) = write_atomic_stamped(&p, b"one", &opts(0o600)).unwrap();
        assert_eq!((outcome, again), (WriteOutcome::Unchanged, written));
        fs::set_permissions(&p, Permissions::from_mode(0o644)).unwrap();
        assert_ne!(Stamp::of(&p), Some(written));
        let (_, fixed) = write_atomic_stamped(&p, b"one", &opts(0o600)).unwrap();
        fs::rename(dir.path().join("t"), dir.path().join("u")).unwrap();
        fs::write(&p, b"one").unwrap();
        assert_ne!(Stamp::of(&p), Some(fixed));
    }

    #[test]
    fn mode_is_exact_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o600, 0o640, 0o644, 0o400, 0o660] {
            let p = dir.path().join(format!("m{mode:o}"));
            write_atomic(&p, b"x", &opts(mode)).unwrap();
            assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, mode);
        }
    }

    #[test]
    fn refuses_symlinks_and_directories_at_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"keep").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let e = write_atomic(&link, b"evil", &opts(0o600)).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        fs::create_dir(dir.path().join("d")).unwrap();
        assert!(write_atomic(&dir.path().join("d"), b"x", &opts(0o600)).is_err());
    }

    /// With no randomness the temp path is known in advance: plant a symlink
    /// there and creation must fail rather than follow it.
    #[test]
    fn a_symlink_planted_at_the_temp_path_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"keep").unwrap();
        let planted = dir.path().join(".t..tk-tmp");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let e = temp_file(dir.path(), "t", 0o600, 0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
        // a dangling symlink (O_CREAT would create its target) too
        fs::remove_file(&planted).unwrap();
        let elsewhere = dir.path().join("created-through-the-link");
        std::os::unix::fs::symlink(&elsewhere, &planted).unwrap();
        assert!(temp_file(dir.path(), "t", 0o600, 0).is_err());
        assert!(!elsewhere.exists());
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        // and the real write, random name and all, leaves both alone
        write_atomic(&dir.path().join("t"), b"new", &opts(0o600)).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        assert!(!elsewhere.exists());
        assert!(
            fs::symlink_metadata(&planted)
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    #[test]
    fn temp_files_are_never_readable_beyond_the_asked_mode() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o600, 0o640, 0o644, 0o400] {
            let tmp = temp_file(dir.path(), "t", mode, TEMP_RANDOM_CHARS).unwrap();
            let got = tmp.as_file().metadata().unwrap().mode() & 0o7777;
            assert_eq!(got & 0o077, 0, "mode {mode:o}: temp file born {got:o}");
        }
    }

    #[test]
    fn creates_a_missing_directory_tight() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b/t");
        write_atomic(&p, b"x", &opts(0o640)).unwrap();
        assert_eq!(
            fs::metadata(p.parent().unwrap()).unwrap().mode() & 0o777,
            0o750
        );
    }

    #[test]
    fn a_directory_loses_the_temp_files_older_than_the_daemon_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let at = |name: &str, age: u64| {
            let f = fs::File::create(dir.path().join(name)).unwrap();
            f.set_modified(crate::clock::SystemClock.now() - std::time::Duration::from_secs(age))
                .unwrap();
        };
        at(".a.killed.tk-tmp", 600);
        at(".b.killed.tk-tmp", 600);
        at(".c.writing-now.tk-tmp", 0);
        at("a", 600);
        at(".hidden", 600);
        let started = crate::clock::SystemClock.now() - std::time::Duration::from_secs(60);
        remove_stale_temp_files_in(dir.path(), started);
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [".c.writing-now.tk-tmp", ".hidden", "a"]);
    }

    #[test]
    fn stale_temp_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        fs::write(dir.path().join(".t.abc123.tk-tmp"), b"half").unwrap();
        fs::write(dir.path().join(".other.abc.tk-tmp"), b"not ours").unwrap();
        remove_stale_temp_files(&p);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(".other.abc.tk-tmp")]);
    }

    /// Readers hammering the file during a thousand rewrites never see it
    /// missing, empty, partial, or with a looser mode.
    #[test]
    fn readers_never_see_a_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        let content = |i: usize| format!("{i:06}{}", "x".repeat(8000 + i % 97));
        write_atomic(&p, content(0).as_bytes(), &opts(0o600)).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let (p, done) = (p.clone(), done.clone());
                std::thread::spawn(move || {
                    let mut reads = 0;
                    while !done.load(Ordering::Relaxed) {
                        let text = fs::read_to_string(&p).expect("file missing during rewrite");
                        let i: usize = text[..6].parse().expect("partial file");
                        assert_eq!(text.len(), 6 + 8000 + i % 97, "partial file");
                        let mode = fs::metadata(&p).unwrap().mode() & 0o777;
                        assert_eq!(mode, 0o600);
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        for i in 1..1000 {
            write_atomic(&p, content(i).as_bytes(), &opts(0o600)).unwrap();
        }
        done.store(true, Ordering::Relaxed);
        for r in readers {
            assert!(r.join().unwrap() > 0);
        }
    }
}
