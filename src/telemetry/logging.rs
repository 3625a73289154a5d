//! tracing setup: human text by default, JSON with `log_format = "json"`,
//! `RUST_LOG` respected. Under journald (JOURNAL_STREAM set) text lines carry
//! no timestamp of their own, since the journal adds one.

use crate::config::LogFormat;
use tracing_subscriber::EnvFilter;

/// Colour only for a person at a terminal: not in a file, a pipe, `podman
/// logs` or `kubectl logs`, and not with `NO_COLOR` set (no-color.org).
fn colour() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match (format, under_journald) {
        (LogFormat::Json, _) => builder.json().flatten_event(true).try_init(),
        (LogFormat::Text, true) => builder.without_time().with_ansi(false).try_init(),
        (LogFormat::Text, false) => builder.with_ansi(colour()).try_init(),
    };
}
