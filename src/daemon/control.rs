//! `tokenkeeper refresh NAME`: the daemon's control socket,
//! `state_dir/control.sock`, and the command's side of it.
//!
//! A caller sends one JSON line, `{"refresh": NAME, "since": unix ms}`, and
//! gets one back: `{"access_token", "expires_at"}` once every output of the
//! client holds a token that arrived at or after `since`, or `{"error"}`.
//! `{"status": true}` gets the status board as `tokenkeeper status` shows
//! it (the daemon writes no status file while it runs).
//! An ask raises `Asks::pending` on the status board and wakes the client
//! task; the task's next refresh pass answers every ask made before it
//! ended, so a hundred callers asking at once cause one request (and a
//! caller whose token arrived meanwhile causes none).
//!
//! The socket is reachable by whoever may enter `state_dir` (0700: the
//! daemon's user and root, as for `tokenkeeper token`), and the daemon
//! answers only peers of its own user or root.

use crate::telemetry::status::{StatusBoard, StatusFile};
use crate::token::Token;
use serde::{Deserialize, Serialize};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

/// The socket's name in `state_dir`.
pub const SOCKET: &str = "control.sock";
/// Longest request line.
const MAX_REQUEST: u64 = 4096;
/// How long a caller has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET)
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Request {
    Refresh {
        refresh: String,
        /// Unix milliseconds: a token that arrived at or after this answers.
        since: u64,
    },
    Status {
        status: bool,
    },
}

/// Longest status answer the command reads (10,000 clients are ~3 MiB).
const MAX_STATUS: u64 = 256 << 20;

/// The answer. Not `Debug`: it holds a token.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reply {
    Token {
        access_token: String,
        expires_at: String,
    },
    Error {
        error: String,
    },
}

/// What the control server needs of a running client.
pub struct Handle {
    /// Wakes the client task.
    pub ask: Arc<Notify>,
    /// Its newest token.
    pub tokens: watch::Receiver<Option<Arc<Token>>>,
}

/// A question to the supervisor, which owns the running clients.
pub struct Lookup {
    pub name: String,
    pub reply: oneshot::Sender<Option<Handle>>,
}

/// The bound socket; removed when dropped, unless another process has
/// replaced it meanwhile.
pub struct Bound {
    pub listener: UnixListener,
    path: PathBuf,
    inode: (u64, u64),
}

impl Drop for Bound {
    fn drop(&mut self) {
        let ours =
            std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.inode);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds the control socket in `state_dir`, owner-only from the start. A
/// socket left by a stopped daemon is replaced; one a live daemon answers on
/// is left to it (`Ok(None)`), and anything that is not a socket is refused.
pub fn bind(state_dir: &Path) -> io::Result<Option<Bound>> {
    use nix::sys::stat::{Mode, umask};
    let path = socket_path(state_dir);
    match std::fs::symlink_metadata(&path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                return Ok(None);
            }
            std::fs::remove_file(&path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // the mask only narrows what is created meanwhile, and every file
    // tokenkeeper writes sets its own mode anyway
    let previous = umask(Mode::from_bits_truncate(0o177));
    let bound = std::os::unix::net::UnixListener::bind(&path);
    umask(previous);
    let listener = bound?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let meta = std::fs::symlink_metadata(&path)?;
    listener.set_nonblocking(true)?;
    Ok(Some(Bound {
        listener: UnixListener::from_std(listener)?,
        path,
        inode: (meta.dev(), meta.ino()),
    }))
}

/// Answers asks on `bound` until `cancel`.
pub async fn serve(
    bound: Bound,
    lookups: mpsc::Sender<Lookup>,
    board: Arc<StatusBoard>,
    cancel: CancellationToken,
) {
    let own = nix::unistd::geteuid().as_raw();
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = bound.listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "control socket: cannot accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let allowed = stream
            .peer_cred()
            .is_ok_and(|c| c.uid() == own || c.uid() == 0);
        let (lookups, board, cancel) = (lookups.clone(), board.clone(), cancel.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = answer(stream, allowed, lookups, board) => {}
            }
        });
    }
}

/// One caller: its request, the wait, the reply. Stops waiting when the
/// caller hangs up.
async fn answer(
    stream: UnixStream,
    allowed: bool,
    lookups: mpsc::Sender<Lookup>,
    board: Arc<StatusBoard>,
) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read.take(MAX_REQUEST));
    let mut line = String::new();
    // read first, even from a peer that is refused: its request is on the
    // way, and a reply before it would meet a broken pipe instead
    let read = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await;
    let reply = match (allowed, read) {
        (false, _) => error("only the daemon's user or root may ask it for a token".into()),
        (true, Ok(Ok(_))) => match serde_json::from_str::<Request>(&line) {
            Ok(Request::Status { .. }) => {
                // the board as JSON, straight from under its lock
                if let Ok(mut json) = board.to_json() {
                    json.push(b'\n');
                    let _ = write.write_all(&json).await;
                }
                return;
            }
            Ok(Request::Refresh {
                refresh: name,
                since,
            }) => {
                let since = crate::token::from_unix_millis(since as i64);
                let gone = async {
                    let mut rest = [0u8; 64];
                    while matches!(reader.read(&mut rest).await, Ok(n) if n > 0) {}
                };
                tokio::select! {
                    _ = gone => return,
                    reply = refresh(&name, since, &lookups, &board) => reply,
                }
            }
            Err(_) => error("not a refresh request".into()),
        },
        (true, _) => error("no request".into()),
    };
    if let Ok(mut json) = serde_json::to_vec(&reply) {
        json.push(b'\n');
        let _ = write.write_all(&json).await;
    }
}

fn error(error: String) -> Reply {
    Reply::Error { error }
}

/// Asks `name`'s task for a token that arrived at or after `since` and
/// waits until every output of the client holds it.
async fn refresh(
    name: &str,
    since: SystemTime,
    lookups: &mpsc::Sender<Lookup>,
    board: &StatusBoard,
) -> Reply {
    let (tx, rx) = oneshot::channel();
    let lookup = Lookup {
        name: name.to_string(),
        reply: tx,
    };
    let handle = match lookups.send(lookup).await {
        Ok(()) => rx.await.ok().flatten(),
        Err(_) => None,
    };
    let Some(handle) = handle else {
        return error(format!("the daemon runs no client named {name:?}"));
    };
    let removed = || format!("{name} was removed from the config meanwhile");
    let asked = board.modify(name, |s| {
        let answered = s.asks.received.is_some_and(|at| at >= since);
        if !answered {
            s.asks.pending = true;
        }
        (s.asks.passes, answered)
    });
    let Some((passes, answered)) = asked else {
        return error(removed());
    };
    if !answered {
        handle.ask.notify_one();
        let pass = board
            .until(|clients| match clients.get(name) {
                None => Some(Err(removed())),
                Some(s) if s.asks.last_success > passes => Some(Ok(())),
                Some(s) if s.asks.passes > passes => Some(Err(s
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "the refresh failed".into()))),
                Some(_) => None,
            })
            .await;
        if let Err(e) = pass {
            return error(e);
        }
    }
    // the newest token, once every output has tried it
    let held = board
        .until(|clients| {
            let Some(s) = clients.get(name) else {
                return Some(Err(removed()));
            };
            let token = handle.tokens.borrow().clone()?;
            if s.outputs.len() < s.expected_outputs
                || s.outputs.values().any(|o| o.tried != Some(token.issued_at))
            {
                return None;
            }
            match s.outputs.iter().find(|(_, o)| !o.ok) {
                Some((label, o)) => Some(Err(format!(
                    "the new token could not be written to {label}: {}",
                    o.last_error.as_deref().unwrap_or("failed")
                ))),
                None => Some(Ok(token)),
            }
        })
        .await;
    match held {
        Ok(token) => Reply::Token {
            access_token: token.access_token.expose().to_string(),
            expires_at: crate::token::rfc3339(token.expires_at),
        },
        Err(e) => error(e),
    }
}

/// Why the command could not ask the daemon.
pub enum Unreachable {
    /// No daemon listens on this state_dir.
    NoDaemon,
    Other(io::Error),
}

/// The command's side: asks the daemon serving `state_dir` for a token of
/// `name` that arrived at or after `since`.
pub async fn ask(state_dir: &Path, name: &str, since: SystemTime) -> Result<Reply, Unreachable> {
    let request = Request::Refresh {
        refresh: name.to_string(),
        since: crate::token::unix_millis(since).max(0) as u64,
    };
    exchange(state_dir, &request, 1 << 20).await
}

/// The running daemon's status board, asked of the daemon serving `state_dir`.
pub async fn status(state_dir: &Path) -> Result<StatusFile, Unreachable> {
    exchange(state_dir, &Request::Status { status: true }, MAX_STATUS).await
}

/// One request to the daemon serving `state_dir`, and its one-line answer
/// (at most `cap` bytes).
async fn exchange<T: serde::de::DeserializeOwned>(
    state_dir: &Path,
    request: &Request,
    cap: u64,
) -> Result<T, Unreachable> {
    let path = socket_path(state_dir);
    let mut stream = UnixStream::connect(&path)
        .await
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => Unreachable::NoDaemon,
            _ => Unreachable::Other(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        })?;
    let mut line = serde_json::to_vec(request).map_err(|e| Unreachable::Other(e.into()))?;
    line.push(b'\n');
    stream.write_all(&line).await.map_err(Unreachable::Other)?;
    let mut answer = String::new();
    BufReader::new(stream.take(cap))
        .read_line(&mut answer)
        .await
        .map_err(Unreachable::Other)?;
    serde_json::from_str(&answer).map_err(|_| {
        Unreachable::Other(io::Error::new(
            io::ErrorKind::InvalidData,
            "the daemon hung up without an answer",
        ))
    })
}
