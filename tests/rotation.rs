//! Refresh-token rotation under `kill -9`: hundreds of kills at random
//! moments while a one-use refresh-token chain is rotated as fast as the
//! daemon can, against a server that enforces the chain.
//!
//! The server's rule is the one rotating providers use with a grace period
//! (Okta's, Auth0's reuse interval): a refresh token is consumed by use, but
//! may be presented once more while its successor has never been used — the
//! answer that carried the successor can be lost when the client dies before
//! it persisted it, and no client can avoid that. Anything else is a replay:
//! presenting a token whose successor was already used, a token more than one
//! step back, or a token never issued. The daemon must never do that, and its
//! chain must never break.

use crate::util::*;
use nix::sys::signal::Signal;
use rand::Rng;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Chain {
    /// refresh token → (its successor, if one was issued; whether the
    /// successor was presented)
    issued: HashMap<String, (Option<String>, bool)>,
    refreshes: u64,
    /// presentations of a token again while its successor was unused
    lost_in_flight: u64,
    violations: Vec<String>,
}

struct ChainServer {
    url: String,
    chain: Arc<Mutex<Chain>>,
    _http: LocalHttp,
}

async fn chain_handler(
    axum::extract::State(chain): axum::extract::State<Arc<Mutex<Chain>>>,
    body: String,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let form: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let refused = |why: &str| {
        (
            axum::http::StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({"error": "invalid_grant", "error_description": why})),
        )
            .into_response()
    };
    let presented = form.get("refresh_token").cloned().unwrap_or_default();
    let mut chain = chain.lock().unwrap();
    if form.get("grant_type").map(String::as_str) != Some("refresh_token") {
        chain
            .violations
            .push(format!("grant_type {:?}", form.get("grant_type")));
        return refused("only refresh_token");
    }
    let Some((successor, successor_used)) = chain.issued.get(&presented).cloned() else {
        chain.violations.push(format!(
            "a refresh token never issued or already dropped: {presented}"
        ));
        return refused("unknown refresh token");
    };
    if successor_used {
        chain
            .violations
            .push(format!("replay: {presented} after its successor was used"));
        return refused("refresh token reused");
    }
    if let Some(lost) = successor {
        // the answer carrying `lost` never made it to disk: `lost` is void
        chain.lost_in_flight += 1;
        chain.issued.remove(&lost);
    }
    // the presented token's parent, if any, now has a used successor
    for (_, entry) in chain.issued.iter_mut() {
        if entry.0.as_deref() == Some(presented.as_str()) {
            entry.1 = true;
        }
    }
    chain.refreshes += 1;
    let n = chain.refreshes;
    let next = format!("rt-{n:08}-{:016x}", rand::random::<u64>());
    chain.issued.insert(presented, (Some(next.clone()), false));
    chain.issued.insert(next.clone(), (None, false));
    axum::Json(serde_json::json!({
        "access_token": token_text(n, 64),
        "token_type": "Bearer",
        "expires_in": 3600,
        "refresh_token": next,
    }))
    .into_response()
}

impl ChainServer {
    fn start(first: &str) -> ChainServer {
        let chain = Arc::new(Mutex::new(Chain::default()));
        chain
            .lock()
            .unwrap()
            .issued
            .insert(first.to_string(), (None, false));
        let http = LocalHttp::serve(|_| {
            axum::Router::new()
                .fallback(axum::routing::post(chain_handler))
                .with_state(chain.clone())
        });
        ChainServer {
            url: format!("{}/token", http.base),
            chain,
            _http: http,
        }
    }
}

const ROUNDS: usize = 300;

#[test]
fn hundreds_of_kill_9_during_refresh_token_rotation_never_replay_or_break_the_chain() {
    let first = "rt-initial-0123456789abcdef";
    let server = ChainServer::start(first);
    let sb = Sandbox::new();
    sb.write("initial.rt", &format!("{first}\n"));
    sb.write_config(&format!(
        "[clients.rt]\ntoken_url = \"{}\"\nclient_id = \"rt-id\"\nclient_secret = \"rt-Secret-Value\"\ngrant_type = \"refresh_token\"\nrefresh_token_file = \"initial.rt\"\nmin_interval = \"1ms\"\nbackoff_initial = \"50ms\"\nbackoff_max = \"200ms\"\n\n[[clients.rt.outputs]]\ntype = \"file\"\npath = \"rt.token\"\n",
        server.url
    ));
    let mut rng = rand::rng();
    for round in 0..ROUNDS {
        let daemon = sb.start();
        daemon.wait_log("tokenkeeper started", 1);
        let stop = Arc::new(AtomicBool::new(false));
        let spammer = spam_usr1(daemon.pid(), Duration::from_millis(2), stop.clone());
        std::thread::sleep(Duration::from_millis(rng.random_range(5..80)));
        stop.store(true, Ordering::Relaxed);
        spammer.join().unwrap();
        daemon.kill9();

        if let Some(text) = sb.read("rt.token") {
            assert!(
                token_number(&text).is_some(),
                "round {round}: corrupt rt.token ({} bytes)",
                text.len()
            );
        }
        if let Some(rt) = state_refresh_token(&sb, "rt") {
            assert!(rt.starts_with("rt-"), "round {round}: odd state {rt:?}");
        }
        let chain = server.chain.lock().unwrap();
        assert!(
            chain.violations.is_empty(),
            "round {round}: {:?}",
            chain.violations
        );
    }

    // after all that the chain goes on
    let before = server.chain.lock().unwrap().refreshes;
    let daemon = sb.start();
    daemon.wait_log("tokenkeeper started", 1);
    daemon.signal(Signal::SIGUSR1);
    wait_until("a refresh after the last kill", WAIT, || {
        server.chain.lock().unwrap().refreshes > before
    });
    wait_until("the newest token on disk", WAIT, || {
        sb.read("rt.token")
            .and_then(|t| token_number(&t))
            .is_some_and(|n| n > before)
    });
    let logs = daemon.logs();
    daemon.stop();
    let chain = server.chain.lock().unwrap();
    eprintln!(
        "rotation under kill -9: {ROUNDS} kills, {} rotations, {} answers lost in flight (re-presented within the grace rule), {} violations",
        chain.refreshes,
        chain.lost_in_flight,
        chain.violations.len()
    );
    assert!(chain.violations.is_empty(), "{:?}", chain.violations);
    assert!(!logs.contains("needs attention"), "{logs}");
    assert!(
        chain.refreshes as usize > ROUNDS,
        "the kills landed while rotating ({} rotations)",
        chain.refreshes
    );
}
