//! The `[daemon] listen` address: `/metrics` (OpenMetrics text), `/healthz`
//! (alive, no output failing), `/readyz` (every client has a valid token in
//! every output) and `/status` (JSON; never a token).

use super::metrics::Metrics;
use super::status::{ClientStatus, StatusBoard};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Whether every client has a valid token written to every output; else why not.
pub fn readiness(clients: &BTreeMap<String, ClientStatus>, now: i64) -> Result<(), Vec<String>> {
    if clients.is_empty() {
        return Err(vec!["no client has started yet".into()]);
    }
    let mut problems = Vec::new();
    for (name, s) in clients {
        if s.expires_at.is_none_or(|e| e <= now) {
            problems.push(format!("{name}: no valid token"));
            continue;
        }
        let written = s
            .outputs
            .values()
            .filter(|o| o.ok && o.last_write.is_some())
            .count();
        if written < s.expected_outputs {
            problems.push(format!(
                "{name}: {written} of {} outputs written",
                s.expected_outputs
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// Whether no output is failing; else which are.
pub fn health(clients: &BTreeMap<String, ClientStatus>) -> Result<(), Vec<String>> {
    let failing: Vec<String> = clients
        .iter()
        .flat_map(|(name, s)| {
            s.outputs
                .iter()
                .filter(|(_, o)| !o.ok)
                .map(move |(label, o)| {
                    format!(
                        "{name}: {label}: {}",
                        o.last_error.clone().unwrap_or_default()
                    )
                })
        })
        .collect();
    if failing.is_empty() {
        Ok(())
    } else {
        Err(failing)
    }
}

#[derive(Clone)]
struct Shared {
    metrics: Arc<Metrics>,
    board: Arc<StatusBoard>,
}

fn verdict(result: Result<(), Vec<String>>) -> axum::response::Response {
    match result {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(problems) => {
            (StatusCode::SERVICE_UNAVAILABLE, problems.join("\n") + "\n").into_response()
        }
    }
}

/// OpenMetrics to a scraper that asks for it (Prometheus does), the
/// classic text format to anyone else.
async fn metrics_text(
    State(s): State<Shared>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    if openmetrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            s.metrics.encode(),
        )
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            super::metrics::classic(&s.metrics.encode()),
        )
    }
}

async fn healthz(State(s): State<Shared>) -> axum::response::Response {
    verdict(s.board.read(health))
}

async fn readyz(State(s): State<Shared>) -> axum::response::Response {
    let now = crate::token::unix_seconds(crate::clock::SystemClock.now());
    verdict(s.board.read(|clients| readiness(clients, now)))
}

async fn status(State(s): State<Shared>) -> axum::response::Response {
    match s.board.to_json() {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// Binds `addr` and serves until `cancel`.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    board: Arc<StatusBoard>,
    cancel: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .with_state(Shared { metrics, board });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await;
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::status::OutputStatus;

    fn client(
        expires: Option<i64>,
        expected: usize,
        outputs: &[(bool, Option<i64>)],
    ) -> ClientStatus {
        ClientStatus {
            expires_at: expires,
            expected_outputs: expected,
            outputs: outputs
                .iter()
                .enumerate()
                .map(|(i, (ok, w))| {
                    (
                        format!("o{i}"),
                        OutputStatus {
                            ok: *ok,
                            last_write: *w,
                            ..OutputStatus::default()
                        },
                    )
                })
                .collect(),
            ..ClientStatus::default()
        }
    }

    #[test]
    fn ready_only_when_every_output_holds_a_valid_token() {
        let check = |c: ClientStatus| readiness(&BTreeMap::from([("a".to_string(), c)]), 100);
        assert!(check(client(Some(200), 2, &[(true, Some(1)), (true, Some(1))])).is_ok());
        assert_eq!(
            check(client(Some(50), 1, &[(true, Some(1))])).unwrap_err(),
            ["a: no valid token"]
        );
        assert_eq!(
            check(client(Some(200), 2, &[(true, Some(1)), (false, None)])).unwrap_err(),
            ["a: 1 of 2 outputs written"]
        );
        assert!(check(client(None, 1, &[])).is_err());
        assert!(
            readiness(&BTreeMap::new(), 100).is_err(),
            "nothing started is not ready"
        );
        assert!(
            health(&BTreeMap::from([(
                "a".to_string(),
                client(Some(200), 1, &[(false, None)])
            )]))
            .is_err()
        );
    }
}
