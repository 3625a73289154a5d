//! `tokenkeeper dev`: a self-contained demo. A small token issuer on
//! 127.0.0.1 hands out short-lived JWT-shaped tokens; the real daemon keeps
//! them fresh under `./tokenkeeper-dev/`, from a config file written there
//! that can be edited while it runs.

use crate::exit::Exit;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const DEMO_CLIENT_ID: &str = "demo";
pub const DEMO_CLIENT_SECRET: &str = "demo-secret";

struct Issuer {
    lifetime: Duration,
    key: [u8; 32],
    issued: AtomicU64,
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({"error": error, "error_description": description})),
    )
        .into_response()
}

/// Client credentials from HTTP Basic or from the body.
fn credentials(headers: &HeaderMap, form: &HashMap<String, String>) -> Option<(String, String)> {
    if let Some(basic) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
    {
        let decoded = String::from_utf8(STANDARD.decode(basic.trim()).ok()?).ok()?;
        let (id, secret) = decoded.split_once(':')?;
        return Some((id.to_string(), secret.to_string()));
    }
    Some((
        form.get("client_id")?.clone(),
        form.get("client_secret")?.clone(),
    ))
}

async fn token(
    State(issuer): State<Arc<Issuer>>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<HashMap<String, String>>,
) -> Response {
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "only client_credentials is supported",
        );
    }
    match credentials(&headers, &form) {
        Some((id, secret)) if id == DEMO_CLIENT_ID && secret == DEMO_CLIENT_SECRET => {}
        _ => {
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication failed",
            );
        }
    }
    let n = issuer.issued.fetch_add(1, Ordering::Relaxed) + 1;
    let now = crate::token::unix_seconds(crate::clock::SystemClock.now());
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = serde_json::json!({
        "iss": "tokenkeeper-dev",
        "sub": DEMO_CLIENT_ID,
        "scope": form.get("scope").cloned().unwrap_or_default(),
        "iat": now,
        "exp": now + issuer.lifetime.as_secs() as i64,
        "jti": n,
    });
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let mut mac = Sha256::new();
    mac.update(issuer.key);
    mac.update(format!("{header}.{payload}"));
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize());
    axum::Json(serde_json::json!({
        "access_token": format!("{header}.{payload}.{signature}"),
        "token_type": "Bearer",
        "expires_in": issuer.lifetime.as_secs(),
        "scope": form.get("scope").cloned().unwrap_or_default(),
    }))
    .into_response()
}

/// Starts the demo issuer on 127.0.0.1 (any free port); returns its address.
pub async fn start_issuer(
    lifetime: Duration,
    port: u16,
    cancel: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let issuer = Arc::new(Issuer {
        lifetime,
        #[allow(clippy::disallowed_methods, reason = "a key, not timing")]
        key: rand::random(),
        issued: AtomicU64::new(0),
    });
    let app = Router::new()
        .route("/token", post(token))
        .with_state(issuer);
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => l,
        // the port the config names is taken: any other
        Err(_) if port != 0 => tokio::net::TcpListener::bind("127.0.0.1:0").await?,
        Err(e) => return Err(e),
    };
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await;
    });
    Ok(addr)
}

/// The demo's config file.
pub fn demo_config(addr: SocketAddr, lifetime: Duration) -> String {
    let before = (lifetime / 3).max(Duration::from_secs(1));
    format!(
        r#"# Written by `tokenkeeper dev`. The demo issuer listens on {addr} and hands
# out {life} tokens. Edit this file while the demo runs: tokenkeeper reloads it.
[daemon]
state_dir = "state"

[defaults]
refresh_before = "{before}"
min_interval = "2s"
backoff_max = "10s"

[clients.demo]
token_url = "http://{addr}/token"
client_id = "{DEMO_CLIENT_ID}"
client_secret = "{DEMO_CLIENT_SECRET}"
auth = "basic"
scope = "demo:read"

# the token alone: curl -H "Authorization: Bearer $(cat tokenkeeper-dev/demo.token)"
[[clients.demo.outputs]]
type = "file"
path = "demo.token"

[[clients.demo.outputs]]
type = "file"
path = "demo.json"
format = "json"

# curl -H @tokenkeeper-dev/demo.header
[[clients.demo.outputs]]
type = "file"
path = "demo.header"
format = "header"
extra_headers = {{ "X-Demo-Tenant" = "tenant-1" }}

# . tokenkeeper-dev/demo.env
[[clients.demo.outputs]]
type = "file"
path = "demo.env"
format = "env"
"#,
        life = humantime::format_duration(lifetime),
        before = humantime::format_duration(before),
    )
}

/// The demo issuer's address in a config `dev` wrote: its `token_url`.
fn issuer_address(config: &str) -> Option<SocketAddr> {
    let rest = config.split("token_url = \"http://").nth(1)?;
    rest.split('/').next()?.parse().ok()
}

/// `tokenkeeper dev`'s options.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Where the demo's config, state and token files go.
    #[arg(long, default_value = "tokenkeeper-dev")]
    pub dir: std::path::PathBuf,
    /// Lifetime of the demo tokens.
    #[arg(long, default_value = "30s")]
    pub lifetime: humantime::Duration,
}

pub async fn run(args: DevArgs) -> Result<(), Exit> {
    crate::telemetry::logging::init(crate::config::LogFormat::Text);
    let lifetime: Duration = args.lifetime.into();
    let cancel = CancellationToken::new();
    let path = args.dir.join("config.toml");
    let existing = std::fs::read_to_string(&path).ok();
    let previous = existing.as_deref().and_then(issuer_address);
    let port = previous.map_or(0, |a| a.port());
    let addr = start_issuer(lifetime, port, cancel.clone())
        .await
        .map_err(|e| {
            Exit::failed(format!(
                "tokenkeeper dev: cannot start the demo issuer: {e}"
            ))
        })?;
    let text = match (&existing, previous) {
        // as `dev` wrote it: written anew (the lifetime may have changed)
        (Some(text), Some(prev)) if *text == demo_config(prev, lifetime) => {
            demo_config(addr, lifetime)
        }
        (Some(text), previous) => match previous {
            Some(prev) if prev != addr => {
                eprintln!(
                    "tokenkeeper dev: keeping your edited {}; the demo issuer moved from {prev} to {addr}, and only that address in it is updated",
                    path.display()
                );
                text.replace(&prev.to_string(), &addr.to_string())
            }
            _ => {
                eprintln!(
                    "tokenkeeper dev: keeping your edited {} (delete it for a fresh demo config)",
                    path.display()
                );
                text.clone()
            }
        },
        (None, _) => demo_config(addr, lifetime),
    };
    let written = if existing.as_ref() == Some(&text) {
        Ok(())
    } else {
        std::fs::create_dir_all(&args.dir).and_then(|()| std::fs::write(&path, &text))
    };
    written.map_err(|e| {
        Exit::failed(format!(
            "tokenkeeper dev: cannot write {}: {e}",
            path.display()
        ))
    })?;
    let config = crate::config::load(&path, &crate::config::process_env)
        .map_err(|e| Exit::Config(e.to_string()))?;
    let dir = args.dir.display();
    eprintln!(
        "\ntokenkeeper dev: demo issuer on http://{addr}/token, {} tokens\n\
         tokens are kept fresh in {dir}/ (demo.token, demo.json, demo.header, demo.env)\n\
         try:   watch -n1 cat {dir}/demo.json\n\
         edit   {dir}/config.toml to see a reload; Ctrl-C stops\n",
        humantime::format_duration(lifetime)
    );
    let result = crate::daemon::run(config, CancellationToken::new()).await;
    cancel.cancel();
    result.map_err(|e| Exit::failed(format!("tokenkeeper dev: {e:#}")))
}
