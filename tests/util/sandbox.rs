//! A test's directory, and the daemon and commands run in it.

use super::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

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
            ["token", "secret", "password", "private_key"]
                .iter()
                .any(|s| k.contains(s))
                && !k.ends_with("_file")
                && !k.ends_with("_url")
                && !k.ends_with("_uri")
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

    /// The address the daemon's listen server bound (`listen` may say port
    /// 0: the test picks no port in advance), once it serves.
    #[track_caller]
    pub fn listen_addr(&self) -> String {
        self.wait_log("serving /metrics", 1);
        let logs = self.logs();
        let line = logs
            .lines()
            .find(|l| l.contains("serving /metrics"))
            .unwrap_or_default();
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("listen="))
            .unwrap_or_else(|| panic!("no listen= in {line:?}"))
            .to_string()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then waits: (exit status, time to exit).
    pub fn stop(self) -> (ExitStatus, Duration) {
        self.signal(Signal::SIGTERM);
        self.exits_after(Signal::SIGTERM)
    }

    /// Waits for the daemon to end after `sent` (within 10 s): (exit
    /// status, time to exit).
    pub fn exits_after(mut self, sent: Signal) -> (ExitStatus, Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, start.elapsed());
            }
            if start.elapsed() > Duration::from_secs(10) {
                panic!("daemon did not stop within 10 s of {sent}\n{}", self.logs());
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

/// A credential file a config names, in `dir`: a real key (openssl) for
/// `.key`/`.pem`, a certificate for the key of the same stem for `.crt`,
/// a service account key file for `.json`, else a secret; mode 0600.
pub fn credential_file(dir: &std::path::Path, name: &str) {
    let stem = name.rsplit_once('.').map_or(name, |(s, _)| s);
    let script = match name.rsplit_once('.').map(|(_, e)| e) {
        Some("key" | "pem") => {
            format!("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out {name}")
        }
        Some("crt") => {
            format!("openssl req -x509 -key {stem}.key -out {name} -days 1 -subj /CN=example")
        }
        Some("json") => format!(
            "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out {stem}.sa.pem"
        ),
        _ => String::new(),
    };
    if !script.is_empty() {
        let ok = Command::new("sh")
            .args(["-c", &script])
            .current_dir(dir)
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "{script}");
    }
    if name.ends_with(".json") {
        let key = fs::read_to_string(dir.join(format!("{stem}.sa.pem"))).unwrap();
        let sa = serde_json::json!({"type": "service_account", "private_key_id": "k1",
            "private_key": key, "client_email": "sa@example.iam.gserviceaccount.com",
            "token_uri": "https://oauth2.googleapis.com/token"});
        fs::write(dir.join(name), sa.to_string()).unwrap();
    } else if script.is_empty() {
        fs::write(dir.join(name), "a-dummy-secret-value\n").unwrap();
    }
    fs::set_permissions(dir.join(name), fs::Permissions::from_mode(0o600)).unwrap();
}
