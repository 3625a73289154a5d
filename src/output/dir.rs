//! `layout = "atomic_dir"`: a set of files that change together, the way the
//! kubelet updates Secret and ConfigMap volumes. Each version is a fresh
//! hidden directory `..<timestamp>`; one rename of the `..data` symlink
//! switches every file at once; `token`, `expires_at`, ... are symlinks into
//! `..data`. A reader that resolves `..data` once and reads through that
//! directory never mixes two versions (if the old directory vanishes
//! mid-read, it resolves again).

use super::file::{Existing, FileOptions, dir_mode, error as context, existing};
use super::{Stamp, WriteOutcome};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

pub const DATA_LINK: &str = "..data";

/// The files of a set, as [`super::FileOutput::set_files`] makes them.
pub const SET_FILES: [&str; 7] = [
    "token",
    "token_type",
    "expires_at",
    "issued_at",
    "header",
    "token.json",
    "token.env",
];

fn same_content(version: &Path, files: &[(&str, Vec<u8>)]) -> bool {
    files
        .iter()
        .all(|(name, content)| fs::read(version.join(name)).is_ok_and(|c| &c == content))
}

/// Whether `dir/name` is the set's own link, `..data/name`.
fn is_own_link(dir: &Path, name: &str) -> bool {
    fs::read_link(dir.join(name)).is_ok_and(|target| target == Path::new(DATA_LINK).join(name))
}

/// Makes `dir/name` the set's own link again: a link of the set's is left
/// alone; a file or another link someone put there (an editor saving by
/// rename replaces the link with a file) is replaced in one rename; a
/// directory is refused.
///
/// Returns the link's [`Stamp`] as this write found or made it: looked at
/// before it was judged (an own link) or before it was renamed into place,
/// so a change right after shows as one.
fn relink(dir: &Path, name: &str, version_name: &str) -> io::Result<Stamp> {
    let link = dir.join(name);
    let found = fs::symlink_metadata(&link);
    if let Ok(meta) = &found {
        if meta.file_type().is_symlink() && is_own_link(dir, name) {
            return Ok(Stamp::from_metadata(meta));
        }
    }
    if found.is_ok_and(|m| m.is_dir()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{}: a directory where the set's link belongs",
                link.display()
            ),
        ));
    }
    // a name of this write's own, as for the switch
    let tmp = dir.join(format!("..link_tmp{}.{name}", &version_name[1..]));
    std::os::unix::fs::symlink(Path::new(DATA_LINK).join(name), &tmp)
        .map_err(|e| context(&tmp, "cannot create symlink", e))?;
    let made = fs::symlink_metadata(&tmp).map_err(|e| context(&tmp, "cannot stat", e))?;
    fs::rename(&tmp, &link).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        context(&link, "cannot replace with the set's link", e)
    })?;
    Ok(Stamp::from_metadata(&made))
}

/// Writes `files` (name, content) as one new version of the set in `dir`;
/// with the set's [`Stamp`] when it wrote one, taken from each file as it
/// was written (a look at the files afterwards would race with an edit
/// right after the switch, and take the edit for what was written).
pub fn write_set(
    dir: &Path,
    files: &[(&str, Vec<u8>)],
    opts: &FileOptions,
) -> io::Result<(WriteOutcome, Option<Stamp>)> {
    // a symlink or anything but a directory at the set's path is refused;
    // the way to it is walked, and made, without trusting other users
    existing(dir, Existing::Dir)?;
    super::file::trusted_dir(dir, dir_mode(opts.mode), opts.owner)?;
    let data = dir.join(DATA_LINK);
    let previous = fs::read_link(&data).ok();
    if let Some(prev) = &previous {
        let linked = files.iter().all(|(name, _)| is_own_link(dir, name));
        if linked && same_content(&dir.join(prev), files) {
            return Ok((WriteOutcome::Unchanged, None));
        }
    }

    let stamp = crate::clock::SystemClock
        .now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let version_name = format!(
        "..{}.{:09}.{}",
        stamp.as_secs(),
        stamp.subsec_nanos(),
        std::process::id()
    );
    let version = dir.join(&version_name);
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&version)
        .map_err(|e| context(&version, "cannot create version directory", e))?;
    let mut stamps = Vec::with_capacity(files.len());
    for (name, content) in files {
        let path = version.join(name);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(opts.mode & 0o700)
            .open(&path)
            .map_err(|e| context(&path, "cannot create", e))?;
        if opts.owner.is_some() || opts.group.is_some() {
            std::os::unix::fs::fchown(&f, opts.owner, opts.group)
                .map_err(|e| context(&path, "cannot set owner/group", e))?;
        }
        f.set_permissions(fs::Permissions::from_mode(opts.mode))
            .map_err(|e| context(&path, "cannot set mode", e))?;
        f.write_all(content)
            .map_err(|e| context(&path, "cannot write", e))?;
        f.sync_all()
            .map_err(|e| context(&path, "cannot fsync", e))?;
        let meta = f.metadata().map_err(|e| context(&path, "cannot stat", e))?;
        stamps.push((*name, Stamp::from_metadata(&meta)));
    }
    if opts.owner.is_some() || opts.group.is_some() {
        std::os::unix::fs::chown(&version, opts.owner, opts.group)
            .map_err(|e| context(&version, "cannot set owner/group", e))?;
    }
    fs::set_permissions(&version, fs::Permissions::from_mode(dir_mode(opts.mode)))
        .map_err(|e| context(&version, "cannot set mode", e))?;
    File::open(&version)
        .and_then(|d| d.sync_all())
        .map_err(|e| context(&version, "cannot fsync", e))?;

    // one rename switches every file; the new link's name is this write's
    // own (`..data_tmp.<version>`), so nothing planted in advance is in its way
    let tmp = dir.join(format!("..data_tmp{}", &version_name[1..]));
    std::os::unix::fs::symlink(&version_name, &tmp)
        .map_err(|e| context(&tmp, "cannot create symlink", e))?;
    if let Err(e) = fs::rename(&tmp, &data) {
        let _ = fs::remove_file(&tmp);
        return Err(context(&data, "cannot switch", e));
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| context(dir, "cannot fsync", e))?;

    // the `token` link last: a reader that waits for it (the first write
    // makes the links one by one) finds every other file there too
    let mut links = Vec::with_capacity(files.len());
    let (last, first): (Vec<_>, Vec<_>) = files.iter().partition(|(name, _)| *name == "token");
    for (name, _) in first.into_iter().chain(last) {
        links.push((*name, relink(dir, name, &version_name)?));
    }
    // the previous version, and any a killed or failed write left behind
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if is_dir && name.starts_with("..") && name != version_name.as_str() {
                let _ = fs::remove_dir_all(entry.path());
            } else if !is_dir && (name.starts_with("..data_tmp") || name.starts_with("..link_tmp"))
            {
                // a link a killed write made and never renamed
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    let of = |taken: &[(&str, Stamp)]| {
        SET_FILES.map(|name| taken.iter().find(|(n, _)| *n == name).map(|(_, s)| *s))
    };
    let stamp = Stamp::set(
        dir,
        Some(Path::new(&version_name)),
        Some(of(&stamps)),
        of(&links),
    );
    Ok((WriteOutcome::Written, stamp))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(
        dir: &Path,
        files: &[(&str, Vec<u8>)],
        opts: &FileOptions,
    ) -> io::Result<WriteOutcome> {
        write_set(dir, files, opts).map(|(outcome, _)| outcome)
    }

    fn opts() -> FileOptions {
        FileOptions {
            mode: 0o640,
            owner: None,
            group: None,
        }
    }

    #[test]
    fn nothing_planted_at_a_temp_name_blocks_a_write() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("set");
        fs::create_dir(&dir).unwrap();
        // a directory where the switch's link used to be made, and a link a
        // killed write left
        fs::create_dir(dir.join("..data_tmp")).unwrap();
        std::os::unix::fs::symlink("..nowhere", dir.join("..data_tmp.1.2.3")).unwrap();
        let v1 = [("token", b"t1".to_vec())];
        write(&dir, &v1, &opts()).unwrap();
        assert_eq!(fs::read(dir.join("token")).unwrap(), b"t1");
        write(&dir, &[("token", b"t2".to_vec())], &opts()).unwrap();
        assert_eq!(fs::read(dir.join("token")).unwrap(), b"t2");
        let left: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("..data_tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn a_set_edited_in_place_or_relinked_is_written_whole_again() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("set");
        let v1 = [("token", b"t1".to_vec()), ("expires_at", b"e1".to_vec())];
        write(&dir, &v1, &opts()).unwrap();
        // edited through the link, in place
        fs::write(dir.join("token"), b"edited").unwrap();
        assert_eq!(write(&dir, &v1, &opts()).unwrap(), WriteOutcome::Written);
        assert_eq!(fs::read(dir.join("token")).unwrap(), b"t1");
        // saved by an editor that renames a file over the link
        fs::write(dir.join("edit.tmp"), b"e1").unwrap();
        fs::rename(dir.join("edit.tmp"), dir.join("expires_at")).unwrap();
        assert_eq!(write(&dir, &v1, &opts()).unwrap(), WriteOutcome::Written);
        assert!(is_own_link(&dir, "expires_at"));
        // another link in its place
        fs::remove_file(dir.join("token")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.join("token")).unwrap();
        write(&dir, &v1, &opts()).unwrap();
        assert_eq!(fs::read(dir.join("token")).unwrap(), b"t1");
        // a directory is not replaced
        fs::remove_file(dir.join("token")).unwrap();
        fs::create_dir(dir.join("token")).unwrap();
        let e = write(&dir, &v1, &opts()).unwrap_err();
        assert!(
            e.to_string()
                .contains("a directory where the set's link belongs"),
            "{e}"
        );
    }

    #[test]
    fn versions_switch_by_one_rename_and_old_ones_go() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("set");
        let v1 = [("token", b"t1".to_vec()), ("expires_at", b"e1".to_vec())];
        assert_eq!(write(&dir, &v1, &opts()).unwrap(), WriteOutcome::Written);
        assert_eq!(write(&dir, &v1, &opts()).unwrap(), WriteOutcome::Unchanged);
        assert_eq!(fs::read(dir.join("token")).unwrap(), b"t1");
        let v2 = [("token", b"t2".to_vec()), ("expires_at", b"e2".to_vec())];
        write(&dir, &v2, &opts()).unwrap();
        assert_eq!(fs::read(dir.join("expires_at")).unwrap(), b"e2");
        let versions: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_type().unwrap().is_dir())
            .collect();
        assert_eq!(versions.len(), 1, "the old version is removed");
        let mode = fs::metadata(dir.join("token"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o640);
    }
}
