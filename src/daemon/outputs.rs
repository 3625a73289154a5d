//! One worker per output: waits for a new token on the client's watch
//! channel, writes it, runs the output's hooks when something changed, and on
//! failure retries on its own (1 s doubling to 1 min) until it succeeds or a
//! newer token arrives. A slow or failing output never holds up another
//! output or client. Outputs on the local filesystem are checked every
//! `[daemon] check_outputs` by one [`Sweep`] for all of them (an `lstat`
//! each): one that was removed, replaced or re-moded behind the daemon's
//! back is written again by its worker.

use super::client::Jitter;
use crate::clock::Clock;
use crate::config::ClientSpec;
use crate::output::{Layout, OutputKind, OutputReason, OutputSpec, Stamp, WriteOutcome, Writer};
use crate::schedule::{FailureClass, Policy, retry_delay};
use crate::telemetry::metrics::ClientMetrics;
use crate::telemetry::status::StatusBoard;
use crate::token::Token;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Why the worker woke up.
enum Wake {
    /// A new token, or the retry of a failed write.
    Write,
    /// Time to check that the file on disk is still what was written.
    Check,
}

fn output_retry_policy() -> Policy {
    Policy {
        backoff_initial: Duration::from_secs(1),
        backoff_max: Duration::from_secs(60),
        ..Policy::default()
    }
}

/// Runs `spec`'s hooks after a write that changed something; failures are
/// logged and counted in the status, never retried.
pub async fn run_hooks(client: &str, spec: &OutputSpec, token: &Token) -> Vec<String> {
    let label = spec.label();
    let mut problems = Vec::new();
    if let Some(exec) = &spec.hooks.exec {
        match exec.run(client, &label, token).await {
            Ok(()) => tracing::debug!(client = %client, output = %label, "exec hook done"),
            Err(e) => {
                tracing::warn!(client = %client, output = %label, "exec hook failed: {e}");
                problems.push(format!("exec hook: {e}"));
            }
        }
    }
    if let Some(signal) = &spec.hooks.signal {
        match signal.send() {
            Ok(pid) => tracing::debug!(client = %client, output = %label, pid, "signal hook sent"),
            Err(e) => {
                tracing::warn!(client = %client, output = %label, "signal hook failed: {e}");
                problems.push(format!("signal hook: {e}"));
            }
        }
    }
    problems
}

/// What every output worker of a daemon shares.
pub struct OutputContext {
    /// Checks the file outputs on disk (`[daemon] check_outputs`); `None`:
    /// never.
    pub sweep: Option<Arc<Sweep>>,
    pub clock: Arc<dyn Clock>,
    pub jitter: Jitter,
    /// The output directories whose stale temp files were removed, and when
    /// this daemon began (a temp file older than that is a killed write's).
    pub tidied: Tidied,
}

impl OutputContext {
    /// The workers' context, from the daemon's start on.
    pub fn new(clock: Arc<dyn Clock>, jitter: Jitter, sweep: Option<Arc<Sweep>>) -> Arc<Self> {
        Arc::new(OutputContext {
            sweep,
            tidied: Tidied::since(clock.now()),
            clock,
            jitter,
        })
    }
}

/// Which output directories have had their stale temp files removed: the
/// first worker writing to a directory does it, once, for all.
pub struct Tidied {
    since: std::time::SystemTime,
    dirs: Mutex<std::collections::HashSet<std::path::PathBuf>>,
}

impl Tidied {
    pub fn since(since: std::time::SystemTime) -> Tidied {
        Tidied {
            since,
            dirs: Mutex::default(),
        }
    }

    /// Removes the stale temp files of the directory of `path`, unless that
    /// was done already.
    async fn tidy(&self, path: &std::path::Path) {
        let Some(dir) = path.parent() else { return };
        let first = self
            .dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(dir.to_path_buf());
        if first {
            let (dir, since) = (dir.to_path_buf(), self.since);
            let _ = tokio::task::spawn_blocking(move || {
                crate::output::file::remove_stale_temp_files_in(&dir, since)
            })
            .await;
        }
    }
}

/// The file outputs' check on disk, all of them in one round every
/// `[daemon] check_outputs`: one timer and one blocking hop per round, not
/// a timer and a hop per output (10,000 outputs woke 10,000 tasks every
/// 10 s). A worker registers what its output looked like right after its
/// last write; the sweep `lstat`s each and wakes the workers whose output
/// differs, which look again and write it anew.
#[derive(Default)]
pub struct Sweep {
    outputs: Mutex<HashMap<u64, Checked>>,
    next: AtomicU64,
}

/// One output the sweep checks.
struct Checked {
    client: Arc<ClientSpec>,
    index: usize,
    /// After the worker's last good write; `None`: nothing to check (not
    /// written yet, or its write is failing and being retried).
    expected: Option<Option<Stamp>>,
    wake: Arc<Notify>,
}

/// A worker's place in the [`Sweep`]; leaves it when dropped.
struct Joined {
    sweep: Arc<Sweep>,
    id: u64,
    wake: Arc<Notify>,
}

impl Sweep {
    fn join(self: &Arc<Self>, client: &Arc<ClientSpec>, index: usize) -> Joined {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let wake = Arc::new(Notify::new());
        self.lock().insert(
            id,
            Checked {
                client: client.clone(),
                index,
                expected: None,
                wake: wake.clone(),
            },
        );
        Joined {
            sweep: self.clone(),
            id,
            wake,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Checked>> {
        self.outputs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks every registered output every `every` until `cancel`.
    pub async fn run(self: Arc<Self>, every: Duration, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let round: Vec<(u64, Arc<ClientSpec>, usize, Option<Stamp>)> = self
                .lock()
                .iter()
                .filter_map(|(id, c)| Some((*id, c.client.clone(), c.index, c.expected?)))
                .collect();
            let changed = tokio::task::spawn_blocking(move || {
                round
                    .into_iter()
                    .filter(|(_, client, index, expected)| {
                        let now = match client.outputs.get(*index).map(|o| &o.kind) {
                            Some(OutputKind::File(f)) => f.stamp(),
                            _ => return false,
                        };
                        now != *expected
                    })
                    .map(|(id, ..)| id)
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            let outputs = self.lock();
            for id in changed {
                if let Some(c) = outputs.get(&id) {
                    c.wake.notify_one();
                }
            }
        }
    }
}

impl Joined {
    /// What the output looked like after a good write (`None`: do not check).
    fn expect(&self, stamp: Option<Option<Stamp>>) {
        if let Some(c) = self.sweep.lock().get_mut(&self.id) {
            c.expected = stamp;
        }
    }
}

impl Drop for Joined {
    fn drop(&mut self) {
        self.sweep.lock().remove(&self.id);
    }
}

/// The worker of `client.outputs[index]`. It shares the client's spec rather
/// than holding a copy: with thousands of clients, every byte of a worker's
/// state is paid thousands of times (and so it is not an `async fn`, whose
/// future would hold its arguments twice: rust-lang/rust#62958).
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn holds its arguments twice"
)]
pub fn run_output(
    client: Arc<ClientSpec>,
    index: usize,
    ctx: Arc<OutputContext>,
    mut tokens: watch::Receiver<Option<Arc<Token>>>,
    board: Arc<StatusBoard>,
    metrics: Arc<ClientMetrics>,
    cancel: CancellationToken,
) -> impl Future<Output = ()> {
    async move {
        let Some(spec) = client.outputs.get(index) else {
            return;
        };
        let client_spec = &client;
        let client = &client.name;
        let label = spec.label();
        if let OutputKind::File(file) = &spec.kind {
            if file.layout == Layout::File {
                ctx.tidied.tidy(&file.path).await;
            }
        }
        let writer = match Writer::new(spec) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(client = %client, output = %label, "cannot set up the output: {e}");
                // every token that comes is one this output failed to hold
                tokens.mark_changed();
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        r = tokens.changed() => if r.is_err() { return },
                    }
                    let tried = tokens.borrow_and_update().as_ref().map(|t| t.issued_at);
                    board.update(client, |s| {
                        let o = s.outputs.entry(label.clone()).or_default();
                        o.ok = false;
                        o.last_error = Some(e.message.clone());
                        o.reason = Some(e.reason);
                        o.tried = tried;
                    });
                }
            }
        };

        tokens.mark_changed();
        let mut failures: u32 = 0;
        let mut retry: Option<Duration> = None;
        // after a good write: what the output looked like then (`Some(None)`:
        // missing already); `None` when it is not checked or nothing was written
        let mut stamp: Option<Option<Stamp>> = None;
        // in the sweep while the worker runs, when the output is checked
        let joined = match &ctx.sweep {
            Some(sweep) if writer.is_checked() => Some(sweep.join(client_spec, index)),
            _ => None,
        };
        let checked = async |joined: &Option<Joined>| match joined {
            Some(j) => j.wake.notified().await,
            None => std::future::pending().await,
        };
        loop {
            let wake = match retry {
                Some(delay) => tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(delay) => Some(Wake::Write),
                    r = tokens.changed() => r.is_ok().then_some(Wake::Write),
                },
                None => tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = checked(&joined), if stamp.is_some() => Some(Wake::Check),
                    r = tokens.changed() => r.is_ok().then_some(Wake::Write),
                },
            };
            let Some(wake) = wake else { return };
            if let Wake::Check = wake {
                if stamp == Some(writer.stamp().await) {
                    continue;
                }
            }
            let Some(token) = tokens.borrow_and_update().clone() else {
                continue;
            };
            let min_valid = client_spec.policy.min_valid;
            if !min_valid.is_zero() && token.remaining(ctx.clock.now()) < min_valid {
                tracing::warn!(client = %client, output = %label, "not writing a token with less than min_valid left; waiting for a fresher one");
                board.update(client, |s| {
                    let o = s.outputs.entry(label.clone()).or_default();
                    o.tried = Some(token.issued_at);
                    o.ok = false;
                    o.last_error =
                        Some("not written: the token has less than min_valid left".into());
                    o.reason = Some(OutputReason::Stale);
                });
                retry = None;
                stamp = None;
                if let Some(j) = &joined {
                    j.expect(None);
                }
                continue;
            }
            match Box::pin(writer.write_stamped(&token)).await {
                Ok((outcome, written)) => {
                    failures = 0;
                    retry = None;
                    stamp = writer.is_checked().then_some(written);
                    if let Some(j) = &joined {
                        j.expect(stamp);
                    }
                    let mut problems = Vec::new();
                    if outcome == WriteOutcome::Written {
                        if let Wake::Check = wake {
                            tracing::warn!(client = %client, output = %label, "the output was removed or changed on disk; written again");
                        } else {
                            tracing::debug!(client = %client, output = %label, "written");
                        }
                        problems = Box::pin(run_hooks(client, spec, &token)).await;
                        metrics.output_written(index, problems.len());
                    }
                    board.update(client, |s| {
                        let o = s.outputs.entry(label.clone()).or_default();
                        o.ok = true;
                        o.last_error = None;
                        o.reason = None;
                        o.tried = Some(token.issued_at);
                        o.last_write = Some(crate::token::unix_seconds(ctx.clock.now()));
                        if !problems.is_empty() {
                            o.hook_failures += problems.len() as u64;
                            o.last_hook_error = problems.last().cloned();
                        }
                    });
                }
                Err(e) => {
                    metrics.output_failed(index, e.reason);
                    failures = failures.saturating_add(1);
                    let delay = retry_delay(
                        failures,
                        FailureClass::Transient,
                        None,
                        &output_retry_policy(),
                        (ctx.jitter)(),
                    );
                    tracing::warn!(
                        client = %client, output = %label, failures, retry_in_s = delay.as_secs_f64(),
                        "cannot write output: {e}; the previous content stays in place"
                    );
                    board.update(client, |s| {
                        let o = s.outputs.entry(label.clone()).or_default();
                        o.ok = false;
                        o.last_error = Some(e.message.clone());
                        o.reason = Some(e.reason);
                        o.tried = Some(token.issued_at);
                    });
                    retry = Some(delay);
                    if let Some(j) = &joined {
                        j.expect(None);
                    }
                }
            }
        }
    }
}
