//! The status board: per client, what happened last. The daemon keeps it in
//! memory; `tokenkeeper status` asks the running daemon for it (the control
//! socket), `/status` serves it, and when the daemon stops it is written
//! (no token in it) to `state_dir/status.json` for `status` to show then.
//! Nothing is written while the daemon runs.

use crate::output::file::{FileOptions, write_atomic};
use litemap::LiteMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::sync::Notify;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OutputStatus {
    pub ok: bool,
    pub last_write: Option<i64>,
    pub last_error: Option<String>,
    /// Why the last write failed (with `last_error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<crate::output::OutputReason>,
    #[serde(default)]
    pub hook_failures: u64,
    #[serde(default)]
    pub last_hook_error: Option<String>,
    /// The issue time of the token this output was last written with
    /// (`ok` says whether that worked): how `tokenkeeper refresh` knows that
    /// every output holds the new token. Not in the status file.
    #[serde(skip)]
    pub tried: Option<SystemTime>,
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
    /// By output label. A sorted `Vec` (a client has one to a few outputs,
    /// and a `BTreeMap` node is ~1 KiB), a JSON object like a map.
    pub outputs: LiteMap<String, OutputStatus>,
    /// What `tokenkeeper refresh` and the client task share (not in the
    /// status file).
    #[serde(skip)]
    pub asks: Asks,
}

/// Asks for a new token now (`tokenkeeper refresh`), and the refresh
/// passes that answer them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Asks {
    /// Someone waits for a refresh pass (cleared when one ends).
    pub pending: bool,
    /// Refresh passes ended (success or failure) since the client started.
    pub passes: u64,
    /// The last of them that ended with a new token.
    pub last_success: u64,
    /// When the current token arrived: a caller who asked before that has
    /// its answer.
    pub received: Option<SystemTime>,
}

impl Asks {
    /// A refresh pass ended: with a token that arrived at `received`, or
    /// failed. Either way it answers every ask made before it ended.
    pub fn ended(&mut self, received: Option<SystemTime>) {
        self.passes += 1;
        self.pending = false;
        if received.is_some() {
            self.last_success = self.passes;
            self.received = received;
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StatusFile<C = BTreeMap<String, ClientStatus>> {
    pub pid: u32,
    pub written_at: i64,
    pub clients: C,
    /// Cluster mode: this member, the live members, each client's owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub member: String,
    pub members: Vec<String>,
    /// By client: the member that owns it (`null`: none right now).
    pub owners: BTreeMap<String, Option<String>>,
    pub lease_transitions: u64,
    pub store_errors: u64,
}

impl ClusterStatus {
    pub fn of(member: &crate::cluster::Member) -> ClusterStatus {
        use std::sync::atomic::Ordering::Relaxed;
        let (members, owners) = member.view();
        ClusterStatus {
            member: member.name().to_string(),
            members,
            owners,
            lease_transitions: member.stats.transitions.load(Relaxed),
            store_errors: member.stats.store_errors.load(Relaxed),
        }
    }
}

impl<C> StatusFile<C> {
    /// This process's status as of now.
    pub fn now(clients: C) -> StatusFile<C> {
        StatusFile {
            pid: std::process::id(),
            written_at: crate::token::unix_seconds(crate::clock::SystemClock.now()),
            clients,
            cluster: None,
        }
    }
}

#[derive(Default)]
pub struct StatusBoard {
    clients: Mutex<BTreeMap<String, ClientStatus>>,
    /// Wakes everyone in [`StatusBoard::until`] on every change.
    settled: Notify,
    /// Bumped on every change (for [`crate::daemon::trim`]).
    generation: AtomicU64,
    /// Cluster mode: the member, for the status's `cluster`.
    cluster: std::sync::OnceLock<Arc<crate::cluster::Member>>,
}

impl StatusBoard {
    pub fn update<R>(&self, client: &str, f: impl FnOnce(&mut ClientStatus) -> R) -> R {
        self.change(|clients| {
            // (the name is copied only for a client the board does not have yet)
            if !clients.contains_key(client) {
                clients.insert(client.to_string(), ClientStatus::default());
            }
            match clients.get_mut(client) {
                Some(status) => f(status),
                None => f(&mut ClientStatus::default()),
            }
        })
    }

    /// `f` on the board under its lock, then everyone told of a change.
    fn change<R>(&self, f: impl FnOnce(&mut BTreeMap<String, ClientStatus>) -> R) -> R {
        let r = f(&mut self.clients.lock().unwrap_or_else(|p| p.into_inner()));
        self.changed();
        r
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
        self.settled.notify_waiters();
    }

    /// Waits until `f` of the board says something: it is asked again after
    /// every change.
    pub async fn until<R>(
        &self,
        mut f: impl FnMut(&BTreeMap<String, ClientStatus>) -> Option<R>,
    ) -> R {
        loop {
            let notified = self.settled.notified();
            let mut notified = std::pin::pin!(notified);
            // registered before the look, so a change in between wakes it
            notified.as_mut().enable();
            if let Some(r) = self.read(&mut f) {
                return r;
            }
            notified.await;
        }
    }

    /// How many changes the board has seen.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// A client (re)starts with these outputs: it keeps the status of those
    /// it still has and forgets the others, which would otherwise count
    /// towards readiness forever.
    pub fn set_outputs(&self, client: &str, labels: &[String]) {
        self.update(client, |s| {
            if s.outputs.is_empty() {
                // exactly: `reserve` would make room for four
                s.outputs = LiteMap::with_capacity(labels.len());
            }
            s.outputs.retain(|label, _| labels.contains(label));
            s.expected_outputs = labels.len();
        });
    }

    /// Like [`StatusBoard::update`], for a client already on the board.
    pub fn modify<R>(&self, client: &str, f: impl FnOnce(&mut ClientStatus) -> R) -> Option<R> {
        self.change(|clients| clients.get_mut(client).map(f))
    }

    pub fn remove(&self, client: &str) {
        self.change(|clients| clients.remove(client));
    }

    /// Reads the board under its lock (no copy: with thousands of clients a
    /// copy is megabytes, and readiness is checked twice a second).
    pub fn read<R>(&self, f: impl FnOnce(&BTreeMap<String, ClientStatus>) -> R) -> R {
        f(&self.clients.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A copy of the board.
    #[cfg(test)]
    pub fn snapshot(&self) -> BTreeMap<String, ClientStatus> {
        self.read(Clone::clone)
    }

    /// The status file's JSON as of now.
    pub fn to_json(&self) -> serde_json::Result<Vec<u8>> {
        let cluster = self.cluster.get().map(|m| ClusterStatus::of(m));
        self.read(|clients| {
            let mut file = StatusFile::now(clients);
            file.cluster = cluster;
            serde_json::to_vec(&file)
        })
    }

    /// Cluster mode: the status names the member's view.
    pub fn set_cluster(&self, member: Option<Arc<crate::cluster::Member>>) {
        if let Some(m) = member {
            let _ = self.cluster.set(m);
        }
    }
}

/// "3m ago", "in 12m", "now".
pub fn relative(t: i64, now: i64) -> String {
    let delta = t - now;
    let abs = delta.unsigned_abs();
    let amount = match abs {
        0..=1 => return "now".into(),
        2..=119 => format!("{abs}s"),
        120..=7199 => format!("{}m", abs / 60),
        7200..=172_799 => format!("{}h", abs / 3600),
        _ => format!("{}d", abs / 86_400),
    };
    if delta < 0 {
        format!("{amount} ago")
    } else {
        format!("in {amount}")
    }
}

/// The table `tokenkeeper status` prints, a line per client as of `now`
/// (Unix seconds); with `colour`, each line is red (needs attention, or no
/// valid token), yellow (failing) or green.
pub fn table(clients: &[(String, ClientStatus)], now: i64, colour: bool) -> String {
    let mut rows = vec![
        [
            "CLIENT",
            "LAST REFRESH",
            "EXPIRES",
            "NEXT REFRESH",
            "FAILURES",
            "LAST ERROR",
        ]
        .map(String::from),
    ];
    for (name, s) in clients {
        let show = |t: Option<i64>| t.map(|t| relative(t, now)).unwrap_or_else(|| "-".into());
        let mut error = s.last_error.clone().unwrap_or_default();
        if let Some((label, o)) = s.outputs.iter().find(|(_, o)| !o.ok) {
            error = format!("{label}: {}", o.last_error.clone().unwrap_or_default());
        }
        if s.needs_attention {
            error = format!("NEEDS ATTENTION: {error}");
        }
        rows.push([
            name.clone(),
            show(s.last_refresh),
            show(s.expires_at),
            show(s.next_refresh),
            s.consecutive_failures.to_string(),
            error,
        ]);
    }
    let widths: Vec<usize> = (0..5)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, row) in rows.into_iter().enumerate() {
        let paint = match (colour, i) {
            (false, _) | (_, 0) => "",
            _ if row[5].starts_with("NEEDS ATTENTION")
                || row[2] == "-"
                || row[2].ends_with(" ago") =>
            {
                "\x1b[31m"
            }
            _ if row[4] != "0" || !row[5].is_empty() => "\x1b[33m",
            _ => "\x1b[32m",
        };
        let mut line = String::from(paint);
        for (i, cell) in row.iter().enumerate() {
            if i < 5 {
                line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            } else {
                line.push_str(cell);
            }
        }
        if !paint.is_empty() {
            line = format!("{}\x1b[0m", line.trim_end());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

pub fn write_status(path: &Path, json: &[u8]) -> std::io::Result<()> {
    write_atomic(
        path,
        json,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times() {
        assert_eq!(relative(100, 100), "now");
        assert_eq!(relative(130, 100), "in 30s");
        assert_eq!(relative(100, 400), "5m ago");
        assert_eq!(relative(100 + 3 * 3600, 100), "in 3h");
        assert_eq!(relative(0, 3 * 86_400), "3d ago");
    }

    #[test]
    fn the_table_lines_up_and_colours_by_state_only_when_asked() {
        let fine = ClientStatus {
            last_refresh: Some(40),
            expires_at: Some(3700),
            next_refresh: Some(2800),
            ..ClientStatus::default()
        };
        let mut refused = fine.clone();
        refused.needs_attention = true;
        refused.consecutive_failures = 3;
        refused.last_error = Some("HTTP 401 invalid_client".into());
        let clients = [("shop".to_string(), fine), ("erp".to_string(), refused)];
        let plain = table(&clients, 100, false);
        assert_eq!(
            plain,
            "CLIENT  LAST REFRESH  EXPIRES  NEXT REFRESH  FAILURES  LAST ERROR\n\
             shop    60s ago       in 60m   in 45m        0\n\
             erp     60s ago       in 60m   in 45m        3         NEEDS ATTENTION: HTTP 401 invalid_client\n"
        );
        let coloured = table(&clients, 100, true);
        let lines: Vec<&str> = coloured.lines().collect();
        assert!(!lines[0].contains('\x1b'));
        assert!(lines[1].starts_with("\x1b[32mshop") && lines[1].ends_with("\x1b[0m"));
        assert!(lines[2].starts_with("\x1b[31merp"));
    }

    #[test]
    fn a_restarted_client_keeps_only_the_outputs_it_still_has() {
        let board = StatusBoard::default();
        let labels = ["file /a".to_string(), "file /b".to_string()];
        board.set_outputs("c", &labels);
        for label in &labels {
            board.update("c", |s| {
                s.outputs.entry(label.clone()).or_default().ok = true
            });
        }
        board.set_outputs("c", &["file /b".to_string(), "file /c".to_string()]);
        let s = &board.snapshot()["c"];
        assert_eq!(s.expected_outputs, 2);
        assert_eq!(
            s.outputs
                .iter()
                .map(|(l, _)| l.as_str())
                .collect::<Vec<_>>(),
            ["file /b"]
        );
        assert!(s.outputs.get("file /b").is_some_and(|o| o.ok));
    }

    #[test]
    fn the_status_json_has_outputs_as_an_object_by_label_and_reads_back() {
        let board = StatusBoard::default();
        board.update("c", |s| {
            s.outputs.entry("file /z".into()).or_default().ok = true;
            s.outputs.entry("file /a".into()).or_default().last_error = Some("boom".into());
        });
        let json: serde_json::Value = serde_json::from_slice(&board.to_json().unwrap()).unwrap();
        let outputs = &json["clients"]["c"]["outputs"];
        assert_eq!(outputs["file /z"]["ok"], true);
        assert_eq!(outputs["file /a"]["last_error"], "boom");
        let keys: Vec<&String> = outputs.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["file /a", "file /z"], "sorted by label");
        let back: StatusFile = serde_json::from_slice(&board.to_json().unwrap()).unwrap();
        assert_eq!(back.clients, board.snapshot());
        assert_eq!(back.pid, std::process::id());
    }
}
