//! The status board: per client, what happened last. The daemon keeps it in
//! memory and writes it (no token in it) to `state_dir/status.json`, which
//! `tokenkeeper status` reads.

use crate::output::file::{FileOptions, write_atomic};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OutputStatus {
    pub ok: bool,
    pub last_write: Option<i64>,
    pub last_error: Option<String>,
    #[serde(default)]
    pub hook_failures: u64,
    #[serde(default)]
    pub last_hook_error: Option<String>,
}

/// Times are Unix seconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClientStatus {
    pub last_refresh: Option<i64>,
    pub expires_at: Option<i64>,
    pub next_refresh: Option<i64>,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    /// A permanent failure (bad credentials, refused grant): a person must act.
    pub needs_attention: bool,
    /// How many outputs the client has (for readiness).
    #[serde(default)]
    pub expected_outputs: usize,
    pub outputs: BTreeMap<String, OutputStatus>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StatusFile {
    pub pid: u32,
    pub written_at: i64,
    pub clients: BTreeMap<String, ClientStatus>,
}

#[derive(Default)]
pub struct StatusBoard {
    clients: Mutex<BTreeMap<String, ClientStatus>>,
    changed: Notify,
}

impl StatusBoard {
    pub fn update(&self, client: &str, f: impl FnOnce(&mut ClientStatus)) {
        {
            let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
            f(clients.entry(client.to_string()).or_default());
        }
        self.changed.notify_one();
    }

    pub fn remove(&self, client: &str) {
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(client);
        self.changed.notify_one();
    }

    pub fn snapshot(&self) -> BTreeMap<String, ClientStatus> {
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Writes the board to `path` whenever it changes (at most once a second)
    /// until `cancel`, then once more.
    pub async fn write_loop(&self, path: PathBuf, cancel: CancellationToken) {
        loop {
            let stop = tokio::select! {
                _ = cancel.cancelled() => true,
                _ = self.changed.notified() => false,
            };
            if !stop {
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            let file = StatusFile {
                pid: std::process::id(),
                written_at: crate::token::unix_seconds(std::time::SystemTime::now()),
                clients: self.snapshot(),
            };
            let path2 = path.clone();
            let result = tokio::task::spawn_blocking(move || write_status(&path2, &file)).await;
            if let Ok(Err(e)) = result {
                tracing::warn!(error = %e, "cannot write the status file");
            }
            if stop || cancel.is_cancelled() {
                return;
            }
        }
    }
}

pub fn write_status(path: &Path, file: &StatusFile) -> std::io::Result<()> {
    let text = serde_json::to_string(file).map_err(std::io::Error::other)?;
    write_atomic(
        path,
        text.as_bytes(),
        &FileOptions {
            mode: 0o644,
            owner: None,
            group: None,
        },
    )?;
    Ok(())
}

pub fn read_status(path: &Path) -> std::io::Result<StatusFile> {
    let bytes = std::fs::read(path)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}
