//! Outputs: where tokens go. Each kind is a variant of [`OutputKind`] with a
//! blocking `write`; the daemon runs each output in its own worker, so a
//! failing output is retried on its own and never blocks another.
//!
//! Only this module writes token files (state files go through
//! [`file::write_atomic`] too).

pub mod file;
pub mod render;

use crate::token::Token;
use std::path::PathBuf;

pub use render::Format;

/// One configured output of one client.
#[derive(Clone, Debug, PartialEq)]
pub struct OutputSpec {
    pub kind: OutputKind,
}

#[derive(Clone, Debug, PartialEq)]
pub enum OutputKind {
    File(FileOutput),
}

#[derive(Clone, Debug, PartialEq)]
pub struct FileOutput {
    pub path: PathBuf,
    pub format: Format,
    /// Permission bits applied on every write, whatever the umask.
    pub mode: u32,
    pub owner: Option<u32>,
    pub group: Option<u32>,
}

/// What a successful write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    Written,
    /// The target already had exactly this content and mode.
    Unchanged,
}

impl OutputSpec {
    /// A short name for logs and status, e.g. `file /run/tokenkeeper/shop.token`.
    pub fn label(&self) -> String {
        match &self.kind {
            OutputKind::File(f) => format!("file {}", f.path.display()),
        }
    }

    /// Writes `token` to this output (blocking I/O: run it off the async threads).
    pub fn write(&self, token: &Token) -> std::io::Result<WriteOutcome> {
        match &self.kind {
            OutputKind::File(f) => {
                let content = f.format.render(token);
                file::write_atomic(
                    &f.path,
                    content.expose().as_bytes(),
                    &file::FileOptions {
                        mode: f.mode,
                        owner: f.owner,
                        group: f.group,
                    },
                )
            }
        }
    }
}
