//! Outputs: where tokens go. Each kind is a variant of [`OutputKind`]; a
//! [`Writer`] is its runtime (HTTP client, login) and writes one token. The
//! daemon runs each output in its own worker, so a failing output is retried
//! on its own and never blocks another.
//!
//! Only this module writes token files (state files go through
//! [`file::write_atomic`] too).

pub mod aws;
pub mod dir;
mod error;
pub mod file;
pub mod hooks;
pub mod kubernetes;
pub mod render;
pub mod vault;

pub use error::{OutputError, OutputReason};

use crate::token::{Token, rfc3339};
use std::path::PathBuf;
use std::sync::Arc;

pub use hooks::Hooks;
pub use render::Format;

/// One configured output of one client.
#[derive(Clone, Debug, PartialEq)]
pub struct OutputSpec {
    pub kind: OutputKind,
    pub hooks: Hooks,
}

#[derive(Clone, Debug, PartialEq)]
pub enum OutputKind {
    File(FileOutput),
    // boxed: each is two to three times a file output, and every client's
    // spec would carry the largest (thousands of clients have file outputs)
    VaultKv(Box<vault::VaultOutput>),
    KubernetesSecret(Box<kubernetes::KubernetesOutput>),
    AwsSecretsManager(Box<aws::AwsOutput>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// One file, replaced atomically.
    File,
    /// A directory of files that change together (see [`dir`]).
    AtomicDir,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FileOutput {
    pub path: PathBuf,
    pub format: Format,
    /// Permission bits applied on every write, whatever the umask.
    pub mode: u32,
    pub owner: Option<u32>,
    pub group: Option<u32>,
    pub layout: Layout,
}

/// What a successful write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    Written,
    /// The target already had exactly this content (and mode).
    Unchanged,
}

impl OutputSpec {
    /// A short name for logs and status, e.g. `file /run/tokenkeeper/shop.token`.
    pub fn label(&self) -> String {
        match &self.kind {
            OutputKind::File(f) if f.layout == Layout::AtomicDir => {
                format!("atomic_dir {}", f.path.display())
            }
            OutputKind::File(f) => format!("file {}", f.path.display()),
            OutputKind::VaultKv(v) => format!("vault_kv {}/{}", v.mount, v.path.trim_matches('/')),
            OutputKind::KubernetesSecret(k) => {
                format!("kubernetes_secret {}/{}", k.namespace, k.name)
            }
            OutputKind::AwsSecretsManager(a) => format!("aws_secrets_manager {}", a.secret_id),
        }
    }
}

impl FileOutput {
    fn options(&self) -> file::FileOptions {
        file::FileOptions {
            mode: self.mode,
            owner: self.owner,
            group: self.group,
        }
    }

    /// The files of an `atomic_dir` set.
    pub fn set_files(&self, token: &Token) -> Vec<(&'static str, Vec<u8>)> {
        let extra = match &self.format {
            Format::Header { extra_headers } => extra_headers.clone(),
            _ => Vec::new(),
        };
        // in the order of dir::SET_FILES, which names them
        let contents = [
            render::raw(token).expose().as_bytes().to_vec(),
            token.token_type.as_bytes().to_vec(),
            rfc3339(token.expires_at).into_bytes(),
            rfc3339(token.issued_at).into_bytes(),
            render::header(token, &extra).expose().as_bytes().to_vec(),
            render::json(token).expose().as_bytes().to_vec(),
            render::env(token).expose().as_bytes().to_vec(),
        ];
        dir::SET_FILES.into_iter().zip(contents).collect()
    }

    /// What the output looks like on disk now (blocking: one `lstat`, or
    /// one per file of an `atomic_dir` set); `None` when it is missing.
    pub fn stamp(&self) -> Option<Stamp> {
        match self.layout {
            Layout::File => Stamp::of(&self.path),
            Layout::AtomicDir => Stamp::of_set(&self.path),
        }
    }

    /// Writes `token` (blocking I/O: run it off the async threads), and
    /// returns what the output looked like right after.
    pub fn write(&self, token: &Token) -> std::io::Result<(WriteOutcome, Option<Stamp>)> {
        match self.layout {
            Layout::File => file::write_atomic_stamped(
                &self.path,
                self.format
                    .render(token)
                    .map_err(std::io::Error::other)?
                    .expose()
                    .as_bytes(),
                &self.options(),
            )
            .map(|(outcome, stamp)| (outcome, Some(stamp))),
            Layout::AtomicDir => {
                let (outcome, stamp) =
                    dir::write_set(&self.path, &self.set_files(token), &self.options())?;
                // a set written now is stamped from its files as written;
                // one left as it was, by looking at it
                Ok((outcome, stamp.or_else(|| Stamp::of_set(&self.path))))
            }
        }
    }
}

/// A file output's identity on disk after the daemon's last write: when a
/// later [`Stamp::of`] differs, somebody removed, replaced, touched or
/// re-moded it, and the daemon writes it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    mode: u32,
    owner: (u32, u32),
    /// For an `atomic_dir` set, a digest of its files' stamps.
    files: u64,
}

impl Stamp {
    /// What the file (or link, or directory) at `path` looks like on disk
    /// now, by one `lstat`. `None` when it is missing.
    pub fn of(path: &std::path::Path) -> Option<Stamp> {
        std::fs::symlink_metadata(path)
            .ok()
            .map(|m| Stamp::from_metadata(&m))
    }

    pub fn from_metadata(meta: &std::fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            mode: meta.mode(),
            owner: (meta.uid(), meta.gid()),
            files: 0,
        }
    }

    /// An `atomic_dir` set at `dir` as it is now: its directory, each of
    /// its links (a link removed or replaced by a file), and each file of
    /// the version `..data` points to (an edit in place through a link);
    /// one `lstat` each.
    pub fn of_set(dir: &std::path::Path) -> Option<Stamp> {
        let version = std::fs::read_link(dir.join(dir::DATA_LINK)).ok();
        let files = version
            .as_ref()
            .map(|v| dir::SET_FILES.map(|name| Stamp::of(&dir.join(v).join(name))));
        let links = dir::SET_FILES.map(|name| Stamp::of(&dir.join(name)));
        Stamp::set(dir, version.as_deref(), files, links)
    }

    /// An `atomic_dir` set's stamp: its directory (which one, its mode and
    /// owner — not its times or size, which any entry's change moves, and
    /// which a write could only take by looking afterwards), and a digest
    /// of the version `..data` names, what each of its files looked like
    /// and each of the set's links (in [`dir::SET_FILES`]' order).
    pub fn set(
        dir: &std::path::Path,
        version: Option<&std::path::Path>,
        files: Option<[Option<Stamp>; dir::SET_FILES.len()]>,
        links: [Option<Stamp>; dir::SET_FILES.len()],
    ) -> Option<Stamp> {
        use std::hash::{Hash, Hasher};
        let mut stamp = Stamp::of(dir)?;
        (stamp.len, stamp.mtime) = (0, (0, 0));
        let mut digest = std::hash::DefaultHasher::new();
        version.hash(&mut digest);
        files.hash(&mut digest);
        links.hash(&mut digest);
        stamp.files = digest.finish();
        Some(stamp)
    }
}

/// The HTTP client of a remote output (Vault, Kubernetes, AWS): Mozilla's
/// roots plus the output's `ca_file`, no redirects, 30 s per request.
pub fn http_client(ca_pem: Option<&[u8]>) -> Result<reqwest::Client, OutputError> {
    let tls = crate::grant::http::tls_config(ca_pem).map_err(|e| OutputReason::Setup.because(e))?;
    crate::grant::http::client_builder(tls)
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| OutputReason::Setup.because(format!("cannot set up HTTP client: {e}")))
}

/// The runtime of one output.
/// The remote variants are boxed: a file output's worker, the common case
/// thousands of times over, stays small.
pub enum Writer {
    File(FileOutput),
    Vault(Box<vault::VaultWriter>),
    Kubernetes(Box<kubernetes::KubernetesWriter>),
    Aws(Box<aws::AwsWriter>),
}

impl Writer {
    pub fn new(spec: &OutputSpec) -> Result<Writer, OutputError> {
        Ok(match &spec.kind {
            OutputKind::File(f) => Writer::File(f.clone()),
            OutputKind::VaultKv(v) => {
                Writer::Vault(Box::new(vault::VaultWriter::new((**v).clone())?))
            }
            OutputKind::KubernetesSecret(k) => {
                Writer::Kubernetes(Box::new(kubernetes::KubernetesWriter::new((**k).clone())?))
            }
            OutputKind::AwsSecretsManager(a) => {
                Writer::Aws(Box::new(aws::AwsWriter::new((**a).clone())?))
            }
        })
    }

    /// Writes one token; the error is safe to log.
    pub async fn write(&self, token: &Arc<Token>) -> Result<WriteOutcome, OutputError> {
        self.write_stamped(token).await.map(|(outcome, _)| outcome)
    }

    /// [`Writer::write`], with the output's [`Stamp`] as the write left it
    /// (for outputs on the local filesystem).
    pub async fn write_stamped(
        &self,
        token: &Arc<Token>,
    ) -> Result<(WriteOutcome, Option<Stamp>), OutputError> {
        match self {
            Writer::File(f) => {
                let (f, token) = (f.clone(), token.clone());
                match tokio::task::spawn_blocking(move || f.write(&token)).await {
                    Ok(result) => result.map_err(OutputError::from),
                    Err(e) => {
                        Err(OutputReason::Filesystem.because(format!("write task failed: {e}")))
                    }
                }
            }
            // boxed: the remote writes' futures are large, a file write's is not
            Writer::Vault(v) => Box::pin(v.write(token)).await.map(|o| (o, None)),
            Writer::Kubernetes(k) => Box::pin(k.write(token)).await.map(|o| (o, None)),
            Writer::Aws(a) => Box::pin(a.write(token)).await.map(|o| (o, None)),
        }
    }

    /// Whether the output is on the local filesystem, and so checked there.
    pub fn is_checked(&self) -> bool {
        matches!(self, Writer::File(_))
    }

    /// For outputs on the local filesystem, their [`Stamp`] now; `None` when
    /// missing and for outputs that are not checked.
    pub async fn stamp(&self) -> Option<Stamp> {
        let Writer::File(f) = self else { return None };
        let f = f.clone();
        tokio::task::spawn_blocking(move || f.stamp())
            .await
            .ok()
            .flatten()
    }
}
