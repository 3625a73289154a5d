//! The fault server: a token endpoint whose every answer a test can script.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Every token it issues contains this marker, so a test can grep logs for it.
pub const TOKEN_MARKER: &str = "SeCrEtToKeN";

#[derive(Clone, Debug)]
pub enum Reply {
    /// A standard token response; `None` lifetime leaves out `expires_in`.
    Token(Option<u64>),
    /// A token whose text is given (e.g. with control characters).
    TokenText(String),
    /// Any status with a body and content type, and an optional Retry-After.
    Status(u16, String, &'static str, Option<String>),
    /// Answers a normal token after this delay.
    Slow(Duration),
    /// 200 with a body over the 1 MiB cap.
    Huge,
}

#[derive(Clone, Debug)]
pub struct Recorded {
    pub at: Instant,
    pub path: String,
    pub content_type: String,
    pub authorization: Option<String>,
    pub user_agent: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A form field of the body.
    pub fn form(&self, name: &str) -> Option<String> {
        url::form_urlencoded::parse(self.body.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

struct FaultState {
    script: VecDeque<Reply>,
    lifetime: Option<u64>,
    padding: usize,
    issued: u64,
    requests: Vec<Recorded>,
}

/// An axum app on 127.0.0.1, served from a thread of its own until dropped.
pub struct LocalHttp {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LocalHttp {
    /// Serves the app that `app` builds from the server's base address.
    pub fn serve(app: impl FnOnce(&str) -> axum::Router) -> LocalHttp {
        LocalHttp::serve_at("127.0.0.1:0", app)
    }

    /// The same on `addr` (an address of a test's network namespace's
    /// veth, say); handlers may ask for the peer (`ConnectInfo`).
    pub fn serve_at(addr: &str, app: impl FnOnce(&str) -> axum::Router) -> LocalHttp {
        let listener = std::net::TcpListener::bind(addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = app(&base);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = rx.await;
                    })
                    .await;
            });
        });
        LocalHttp {
            base,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }
}

impl Drop for LocalHttp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub struct FaultServer {
    /// The token endpoint, `http://127.0.0.1:PORT/token`.
    pub url: String,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    state: Arc<Mutex<FaultState>>,
    _http: LocalHttp,
}

pub fn token_text(n: u64, padding: usize) -> String {
    format!("tk{n:06}-{TOKEN_MARKER}-{}", "x".repeat(padding))
}

/// The number of a token issued by the fault server (checks it is whole).
pub fn token_number(text: &str) -> Option<u64> {
    let n: u64 = text.get(2..8)?.parse().ok()?;
    let padding = text.len().checked_sub(8 + 2 + TOKEN_MARKER.len())?;
    (text == token_text(n, padding)).then_some(n)
}

async fn fault_handler(
    axum::extract::State(state): axum::extract::State<Arc<Mutex<FaultState>>>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (reply, n, lifetime, padding) = {
        let mut s = state.lock().unwrap();
        s.requests.push(Recorded {
            at: Instant::now(),
            path: uri.path().to_string(),
            content_type: get("content-type").unwrap_or_default(),
            authorization: get("authorization"),
            user_agent: get("user-agent").unwrap_or_default(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                .collect(),
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        let reply = s.script.pop_front().unwrap_or(Reply::Token(s.lifetime));
        s.issued += 1;
        (reply, s.issued, s.lifetime, s.padding)
    };
    let token = |lifetime: Option<u64>| {
        let mut body =
            serde_json::json!({"access_token": token_text(n, padding), "token_type": "Bearer"});
        if let Some(l) = lifetime {
            body["expires_in"] = l.into();
        }
        axum::Json(body).into_response()
    };
    match reply {
        Reply::Token(l) => token(l),
        Reply::TokenText(t) => {
            axum::Json(serde_json::json!({"access_token": t, "expires_in": 60})).into_response()
        }
        Reply::Status(code, body, ct, retry_after) => {
            let mut r = (
                axum::http::StatusCode::from_u16(code).unwrap(),
                [("content-type", ct)],
                body,
            )
                .into_response();
            if let Some(ra) = retry_after {
                r.headers_mut().insert("retry-after", ra.parse().unwrap());
            }
            r
        }
        Reply::Slow(d) => {
            tokio::time::sleep(d).await;
            token(lifetime)
        }
        Reply::Huge => (
            axum::http::StatusCode::OK,
            [("content-type", "application/json")],
            "x".repeat(2 * 1024 * 1024),
        )
            .into_response(),
    }
}

impl FaultServer {
    /// A server answering standard tokens of `lifetime` seconds unless scripted otherwise.
    pub fn start(lifetime: Option<u64>) -> FaultServer {
        let state = Arc::new(Mutex::new(FaultState {
            script: VecDeque::new(),
            lifetime,
            padding: 16,
            issued: 0,
            requests: Vec::new(),
        }));
        let http = LocalHttp::serve(|_| {
            axum::Router::new()
                .fallback(fault_handler)
                .with_state(state.clone())
        });
        FaultServer {
            url: format!("{}/token", http.base),
            base: http.base.clone(),
            state,
            _http: http,
        }
    }

    /// `base` + `path`: one server, told apart by path per client.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn push(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.lock().unwrap().script.extend(replies);
    }

    pub fn set_lifetime(&self, lifetime: Option<u64>) {
        self.state.lock().unwrap().lifetime = lifetime;
    }

    /// Pads every token to at least this many characters (to catch partial writes).
    pub fn set_padding(&self, padding: usize) {
        self.state.lock().unwrap().padding = padding;
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn count(&self) -> usize {
        self.state.lock().unwrap().requests.len()
    }

    pub fn count_path(&self, path: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|r| r.path == path)
            .count()
    }
}
