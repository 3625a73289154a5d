//! Bounded reads of the files a config names (secrets, tokens, CA bundles,
//! templates, pid files, the config itself): regular files only, opened
//! without blocking — a FIFO, a device (`/dev/zero`) or a directory is an
//! error at once, not a hang or an endless read — and a multi-gigabyte log
//! is an error naming the limit, not an out-of-memory kill.

use std::io::{self, Read};
use std::path::Path;

/// Largest secret, token, CA bundle, template or pid file read.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// Largest config file read (10,000 clients take about 2 MiB).
pub const MAX_CONFIG_BYTES: u64 = 64 * 1024 * 1024;

fn too_large(limit: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "larger than {} MiB; is this the right file?",
            limit / 1024 / 1024
        ),
    )
}

fn utf8(bytes: Vec<u8>) -> io::Result<String> {
    String::from_utf8(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// Opens `path` for reading without blocking (a FIFO with no writer would
/// block `open` for ever) and refuses anything but a regular file.
pub fn open_regular(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let kind = file.metadata()?.file_type();
    if kind.is_file() {
        return Ok(file);
    }
    let what = if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "a device"
    };
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{what}, not a regular file"),
    ))
}

/// Reads at most `limit` bytes of the regular file `path`; more is an error.
pub fn read_limited(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    open_regular(path)?
        .take(limit + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_large(limit));
    }
    Ok(bytes)
}

/// [`read_limited`] with [`MAX_FILE_BYTES`].
pub fn read(path: impl AsRef<Path>) -> io::Result<Vec<u8>> {
    read_limited(path.as_ref(), MAX_FILE_BYTES)
}

/// [`read`] as UTF-8 text.
pub fn read_to_string(path: impl AsRef<Path>) -> io::Result<String> {
    utf8(read(path)?)
}

/// [`read_to_string`] off the async threads.
pub async fn read_to_string_async(path: &Path) -> io::Result<String> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || read_to_string(&path))
        .await
        .map_err(io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_is_refused_at_once_instead_of_blocking_for_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("config.toml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let e = read_limited(&fifo, MAX_CONFIG_BYTES).unwrap_err();
        assert_eq!(e.to_string(), "a FIFO, not a regular file");
        let e = read(dir.path()).unwrap_err();
        assert_eq!(e.to_string(), "a directory, not a regular file");
    }

    #[test]
    fn endless_and_oversized_files_are_refused() {
        let e = read(Path::new("/dev/zero")).unwrap_err();
        assert_eq!(e.to_string(), "a device, not a regular file");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, vec![b'x'; 2048]).unwrap();
        assert_eq!(read_limited(&p, 2048).unwrap().len(), 2048);
        assert!(read_limited(&p, 2047).is_err());
        std::fs::write(&p, [0xff, 0xfe]).unwrap();
        assert_eq!(
            read_to_string(&p).unwrap_err().to_string(),
            "not UTF-8 text"
        );
    }
}
