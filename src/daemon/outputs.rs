//! One worker per output: waits for a new token on the client's watch
//! channel, writes it off the async threads, and on failure retries on its
//! own (1 s doubling to 1 min) until it succeeds or a newer token arrives.
//! A slow or failing output never holds up another output or client.

use crate::output::{OutputKind, OutputSpec, WriteOutcome};
use crate::schedule::{FailureClass, Policy, retry_delay};
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

pub async fn run_output(
    client: String,
    spec: OutputSpec,
    mut tokens: watch::Receiver<Option<Arc<Token>>>,
    board: Arc<StatusBoard>,
    cancel: CancellationToken,
) {
    let label = spec.label();
    let OutputKind::File(file) = &spec.kind;
    let path = file.path.clone();
    let _ =
        tokio::task::spawn_blocking(move || crate::output::file::remove_stale_temp_files(&path))
            .await;

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
        let (spec2, token2) = (spec.clone(), token.clone());
        let result = tokio::task::spawn_blocking(move || spec2.write(&token2)).await;
        let result = match result {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(format!("write task failed: {e}"))),
        };
        match result {
            Ok(outcome) => {
                failures = 0;
                retry = None;
                if outcome == WriteOutcome::Written {
                    tracing::debug!(client = %client, output = %label, "written");
                }
                board.update(&client, |s| {
                    let o = s.outputs.entry(label.clone()).or_default();
                    o.ok = true;
                    o.last_error = None;
                    o.last_write = Some(crate::token::unix_seconds(SystemTime::now()));
                });
            }
            Err(e) => {
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
                    "cannot write output: {e}; the previous file stays in place"
                );
                board.update(&client, |s| {
                    let o = s.outputs.entry(label.clone()).or_default();
                    o.ok = false;
                    o.last_error = Some(e.to_string());
                });
                retry = Some(delay);
            }
        }
    }
}
