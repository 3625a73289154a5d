//! systemd's notify protocol (`Type=notify`): READY=1 once every client has a
//! token in every output (or after `ready_timeout`), STATUS= with the count
//! of healthy clients, and WATCHDOG=1 at half the `WatchdogSec=` interval.
//! Without NOTIFY_SOCKET every call is a no-op.

use super::server::readiness;
use super::status::StatusBoard;
use sd_notify::NotifyState;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn status_line(board: &StatusBoard, now: i64) -> (bool, String) {
    board.read(|clients| {
        let ready = readiness(clients, now).is_ok();
        let healthy = clients
            .values()
            .filter(|s| s.expires_at.is_some_and(|e| e > now) && s.outputs.values().all(|o| o.ok))
            .count();
        (
            ready,
            format!("{healthy}/{} clients healthy", clients.len()),
        )
    })
}

pub async fn run(board: Arc<StatusBoard>, ready_timeout: Duration, cancel: CancellationToken) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let watchdog = sd_notify::watchdog_enabled();
    let tick = watchdog
        .map(|w| (w / 2).min(Duration::from_millis(500)))
        .unwrap_or(Duration::from_millis(500));
    let start = tokio::time::Instant::now();
    let mut sent_ready = false;
    let mut last_status = String::new();
    loop {
        let now = crate::token::unix_seconds(crate::clock::SystemClock.now());
        let (ready, status) = status_line(&board, now);
        let mut states = Vec::new();
        if !sent_ready && (ready || start.elapsed() >= ready_timeout) {
            if !ready {
                tracing::warn!(
                    "ready_timeout passed before every client had a token; telling systemd we are ready anyway"
                );
            }
            states.push(NotifyState::Ready);
            sent_ready = true;
        }
        if status != last_status {
            last_status = status.clone();
            states.push(NotifyState::Status(&last_status));
        }
        if watchdog.is_some() {
            states.push(NotifyState::Watchdog);
        }
        if !states.is_empty() {
            if let Err(e) = sd_notify::notify(&states) {
                tracing::warn!(error = %e, "cannot notify systemd");
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => {
                let _ = sd_notify::notify(&[NotifyState::Stopping]);
                return;
            }
            _ = tokio::time::sleep(tick) => {}
        }
    }
}
