//! How a command ends badly: its exit status (the contract's 1 or 2) and
//! what it says on stderr, decided where the failure is and printed in one
//! place (`cli::main`).

use std::process::ExitCode;

#[derive(Debug, thiserror::Error)]
pub enum Exit {
    /// The config is invalid: exit 2.
    #[error("{0}")]
    Config(String),
    /// Anything else: exit 1.
    #[error("{0}")]
    Failed(String),
    /// Exit 1; what went wrong is already in the log.
    #[error("")]
    Logged,
}

impl Exit {
    pub fn failed(message: impl std::fmt::Display) -> Exit {
        Exit::Failed(message.to_string())
    }

    /// The same, with an invalid config as a plain failure (exit 1), for
    /// commands whose callers check for 0 or not.
    pub fn into_failure(self) -> Exit {
        match self {
            Exit::Config(message) => Exit::Failed(message),
            other => other,
        }
    }

    pub fn code(&self) -> ExitCode {
        match self {
            Exit::Config(_) => ExitCode::from(2),
            Exit::Failed(_) | Exit::Logged => ExitCode::from(1),
        }
    }
}
