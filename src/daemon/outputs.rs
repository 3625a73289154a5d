//! One worker per output: waits for a new token on the client's watch
//! channel, writes it, runs the output's hooks when something changed, and on
//! failure retries on its own (1 s doubling to 1 min) until it succeeds or a
//! newer token arrives. A slow or failing output never holds up another
//! output or client.

use crate::output::{Layout, OutputKind, OutputSpec, WriteOutcome, Writer};
use crate::schedule::{FailureClass, Policy, retry_delay};
use crate::telemetry::metrics::{Metrics, OutputLabels};
use crate::telemetry::status::StatusBoard;
use crate::token::Token;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

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

pub async fn run_output(
    client: String,
    spec: OutputSpec,
    min_valid: Duration,
    mut tokens: watch::Receiver<Option<Arc<Token>>>,
    board: Arc<StatusBoard>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let label = spec.label();
    let series = OutputLabels {
        client: client.clone(),
        output: label.clone(),
    };
    if let OutputKind::File(file) = &spec.kind {
        if file.layout == Layout::File {
            let path = file.path.clone();
            let _ = tokio::task::spawn_blocking(move || {
                crate::output::file::remove_stale_temp_files(&path)
            })
            .await;
        }
    }
    let writer = match Writer::new(&spec) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(client = %client, output = %label, "cannot set up the output: {e}");
            board.update(&client, |s| {
                let o = s.outputs.entry(label.clone()).or_default();
                o.ok = false;
                o.last_error = Some(e.clone());
            });
            return;
        }
    };

    tokens.mark_changed();
    let mut failures: u32 = 0;
    let mut retry: Option<Duration> = None;
    loop {
        let alive = match retry {
            None => tokio::select! {
                _ = cancel.cancelled() => return,
                r = tokens.changed() => r.is_ok(),
            },
            Some(delay) => tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(delay) => true,
                r = tokens.changed() => r.is_ok(),
            },
        };
        if !alive {
            return;
        }
        let Some(token) = tokens.borrow_and_update().clone() else {
            continue;
        };
        if !min_valid.is_zero() && token.remaining(SystemTime::now()) < min_valid {
            tracing::warn!(client = %client, output = %label, "not writing a token with less than min_valid left; waiting for a fresher one");
            retry = None;
            continue;
        }
        match Box::pin(writer.write(&token)).await {
            Ok(outcome) => {
                failures = 0;
                retry = None;
                let mut problems = Vec::new();
                if outcome == WriteOutcome::Written {
                    tracing::debug!(client = %client, output = %label, "written");
                    metrics.output_writes.get_or_create(&series).inc();
                    problems = Box::pin(run_hooks(&client, &spec, &token)).await;
                    if !problems.is_empty() {
                        metrics
                            .hook_failures
                            .get_or_create(&series)
                            .inc_by(problems.len() as u64);
                    }
                }
                board.update(&client, |s| {
                    let o = s.outputs.entry(label.clone()).or_default();
                    o.ok = true;
                    o.last_error = None;
                    o.last_write = Some(crate::token::unix_seconds(SystemTime::now()));
                    if !problems.is_empty() {
                        o.hook_failures += problems.len() as u64;
                        o.last_hook_error = problems.last().cloned();
                    }
                });
            }
            Err(e) => {
                metrics.output_failures.get_or_create(&series).inc();
                failures = failures.saturating_add(1);
                let delay = retry_delay(
                    failures,
                    FailureClass::Transient,
                    None,
                    &output_retry_policy(),
                    rand::random(),
                );
                tracing::warn!(
                    client = %client, output = %label, failures, retry_in_s = delay.as_secs_f64(),
                    "cannot write output: {e}; the previous content stays in place"
                );
                board.update(&client, |s| {
                    let o = s.outputs.entry(label.clone()).or_default();
                    o.ok = false;
                    o.last_error = Some(e.clone());
                });
                retry = Some(delay);
            }
        }
    }
}
