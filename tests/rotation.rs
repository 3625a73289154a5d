//! Refresh-token chains against a server that forgives nothing: every
//! refresh token is valid once, and presenting one again revokes its whole
//! family (RFC 9700 §4.14.2, OAuth 2.1 reuse detection). Hundreds of
//! `kill -9` at random moments per grant, `token` and `once` beside the
//! daemon with a slow endpoint, SIGTERM and config edits while a refresh is
//! in flight.
//!
//! A lost chain is counted as *in flight* when the answer that carried the
//! successor never reached state_dir (the process was killed before it had
//! the answer — no client can avoid that), and as *avoidable* when the
//! successor was on disk in state_dir and yet the consumed token was
//! presented again. Avoidable losses must be 0, and so must every other
//! replay.

use crate::util::*;
use nix::sys::signal::Signal;
use rand::Rng;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PASSWORD: &str = "chain-Password-Value";

#[derive(Default)]
pub(crate) struct Strict {
    /// refresh token → (its family, used)
    pub(crate) tokens: HashMap<String, (u64, bool)>,
    /// family → its newest refresh token
    pub(crate) newest: HashMap<u64, String>,
    pub(crate) revoked: HashSet<u64>,
    pub(crate) families: u64,
    pub(crate) rotations: u64,
    /// (the consumed token presented again, the successor it had)
    pub(crate) losses: Vec<(String, String)>,
    /// anything a correct client never does: a token never issued, a
    /// grant it was not configured for, a wrong password
    pub(crate) violations: Vec<String>,
    pub(crate) requests: u64,
    pub(crate) lifetime: u64,
    pub(crate) delay: Duration,
    /// Each rotation: its family, when, and who asked (the peer's address).
    pub(crate) issued: Vec<(u64, std::time::Instant, std::net::IpAddr)>,
    /// The peer of the request being answered.
    peer: Option<std::net::IpAddr>,
}

impl Strict {
    fn issue(&mut self, family: u64) -> serde_json::Value {
        let peer = self.peer.unwrap_or(std::net::Ipv4Addr::LOCALHOST.into());
        self.issued.push((family, std::time::Instant::now(), peer));
        self.rotations += 1;
        let n = self.rotations;
        let next = format!("rt-{n:08}-{:016x}", rand::random::<u64>());
        self.tokens.insert(next.clone(), (family, false));
        self.newest.insert(family, next.clone());
        serde_json::json!({
            "access_token": token_text(n, 64),
            "token_type": "Bearer",
            "expires_in": self.lifetime,
            "refresh_token": next,
        })
    }

    pub(crate) fn seed(&mut self) -> String {
        self.families += 1;
        let family = self.families;
        let seed = format!("rt-seed{family:04}-{:016x}", rand::random::<u64>());
        self.tokens.insert(seed.clone(), (family, false));
        self.newest.insert(family, seed.clone());
        seed
    }
}

async fn strict_handler(
    axum::extract::State(server): axum::extract::State<Arc<Mutex<Strict>>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
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
    let (answer, delay) = {
        let mut s = server.lock().unwrap();
        s.requests += 1;
        s.peer = Some(peer.ip());
        let answer = match form.get("grant_type").map(String::as_str) {
            Some("password") if form.get("password").map(String::as_str) == Some(PASSWORD) => {
                s.families += 1;
                let family = s.families;
                Ok(s.issue(family))
            }
            Some("refresh_token") => {
                let presented = form.get("refresh_token").cloned().unwrap_or_default();
                match s.tokens.get(&presented).copied() {
                    None => {
                        s.violations.push(format!("never issued: {presented}"));
                        Err("unknown refresh token")
                    }
                    Some((family, _)) if s.revoked.contains(&family) => {
                        // a client told invalid_grant may retry it now and then
                        Err("refresh token revoked")
                    }
                    Some((family, true)) => {
                        s.revoked.insert(family);
                        let successor = s.newest[&family].clone();
                        s.losses.push((presented, successor));
                        Err("refresh token reused; the family is revoked")
                    }
                    Some((family, false)) => {
                        s.tokens.insert(presented, (family, true));
                        Ok(s.issue(family))
                    }
                }
            }
            other => {
                s.violations.push(format!("grant {other:?}"));
                Err("unsupported grant")
            }
        };
        (answer, s.delay)
    };
    // the rotation is made; the answer is slow to arrive
    tokio::time::sleep(delay).await;
    match answer {
        Ok(json) => axum::Json(json).into_response(),
        Err(why) => refused(why),
    }
}

pub(crate) struct StrictServer {
    pub(crate) url: String,
    state: Arc<Mutex<Strict>>,
    _http: LocalHttp,
}

impl StrictServer {
    pub(crate) fn start(lifetime: u64, delay: Duration) -> StrictServer {
        StrictServer::start_at("127.0.0.1:0", lifetime, delay)
    }

    /// The same, listening on `addr`.
    pub(crate) fn start_at(addr: &str, lifetime: u64, delay: Duration) -> StrictServer {
        let state = Arc::new(Mutex::new(Strict {
            lifetime,
            delay,
            ..Strict::default()
        }));
        let http = LocalHttp::serve_at(addr, |_| {
            axum::Router::new()
                .fallback(axum::routing::post(strict_handler))
                .with_state(state.clone())
        });
        StrictServer {
            url: format!("{}/token", http.base),
            state,
            _http: http,
        }
    }

    pub(crate) fn s(&self) -> std::sync::MutexGuard<'_, Strict> {
        self.state.lock().unwrap()
    }
}

#[derive(Clone, Copy, Debug)]
enum Grant {
    Password,
    RefreshToken,
}

/// A client of `grant` on `server` with fast timings and one file output.
fn chain_client(sb: &Sandbox, server: &StrictServer, grant: Grant, extra: &str) -> String {
    let grant = match grant {
        Grant::Password => {
            format!("grant_type = \"password\"\nusername = \"user\"\npassword = \"{PASSWORD}\"")
        }
        Grant::RefreshToken => {
            let seed = server.s().seed();
            sb.write("initial.rt", &format!("{seed}\n"));
            "grant_type = \"refresh_token\"\nrefresh_token_file = \"initial.rt\"".to_string()
        }
    };
    client(
        "rt",
        &server.url,
        &format!(
            "{grant}\nmin_interval = \"1ms\"\nbackoff_initial = \"50ms\"\nbackoff_max = \"200ms\"\n{extra}"
        ),
    )
}

/// Every file of the sandbox's state_dir, as bytes, to tell later whether a
/// successor ever reached it.
fn state_bytes(sb: &Sandbox) -> Vec<u8> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(sb.path("state"))
        .into_iter()
        .flatten()
        .flatten()
    {
        all.extend(std::fs::read(entry.path()).unwrap_or_default());
    }
    all
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Files a killed or stopped process may have left half-done.
fn leftovers(sb: &Sandbox) -> Vec<String> {
    let mut found = Vec::new();
    for dir in [sb.path("state"), sb.path("")] {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tk-tmp") || name.ends_with(".new") {
                found.push(name);
            }
        }
    }
    found
}

const KILLS: usize = 300;

/// What the kills cost, told apart by what reached state_dir.
#[derive(Default)]
struct Tally {
    avoidable: Vec<String>,
    in_flight: usize,
    /// losses already told apart
    seen: usize,
    /// state_dir's bytes after the last run
    on_disk: Vec<u8>,
}

impl Tally {
    /// After a run: a loss it met is a successor the run before lost; a
    /// refresh-token client whose chain is gone gets a new token from its
    /// operator, as a user would give it.
    fn after_run(&mut self, sb: &Sandbox, server: &StrictServer, grant: Grant, run: usize) {
        let mut s = server.s();
        for (_, successor) in &s.losses[self.seen..] {
            if contains(&self.on_disk, successor) {
                self.avoidable
                    .push(format!("run {run}: {successor} was in state_dir"));
            } else {
                self.in_flight += 1;
            }
        }
        self.seen = s.losses.len();
        self.on_disk = state_bytes(sb);
        assert!(s.violations.is_empty(), "run {run}: {:?}", s.violations);
        if matches!(grant, Grant::RefreshToken) && s.revoked.contains(&s.families) {
            let seed = s.seed();
            drop(s);
            sb.write("initial.rt", &format!("{seed}\n"));
        }
    }
}

fn kill_9_at_random_moments(grant: Grant) {
    let server = StrictServer::start(3600, Duration::ZERO);
    let sb = Sandbox::new();
    sb.write_config(&chain_client(&sb, &server, grant, ""));
    let mut rng = rand::rng();
    let mut tally = Tally::default();
    for round in 0..KILLS {
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
        if sb.path("state/rt.state").exists() {
            let token = state_token(&sb, "rt")
                .unwrap_or_else(|| panic!("round {round}: no whole record in the state file"));
            assert!(token_number(token.access_token.expose()).is_some());
        }
        tally.after_run(&sb, &server, grant, round);
    }

    // one refresh to meet what the last kill left, then the chain goes on,
    // and a clean stop leaves nothing half-done
    for run in [KILLS, KILLS + 1] {
        let (before, requests) = {
            let s = server.s();
            (s.rotations, s.requests)
        };
        let daemon = sb.start();
        daemon.wait_log("tokenkeeper started", 1);
        daemon.signal(Signal::SIGUSR1);
        if run == KILLS {
            daemon.wait_until("a request after the last kill", || {
                server.s().requests > requests
            });
            daemon.stop();
            tally.after_run(&sb, &server, grant, run);
            continue;
        }
        daemon.wait_until("a refresh after the last kill", || {
            server.s().rotations > before
        });
        daemon.wait_until("the newest token on disk", || {
            sb.read("rt.token")
                .and_then(|t| token_number(&t))
                .is_some_and(|n| n > before)
        });
        let logs = daemon.logs();
        daemon.stop();
        assert!(!logs.contains("needs attention"), "{logs}");
    }
    tally.after_run(&sb, &server, grant, KILLS + 1);
    let s = server.s();
    eprintln!(
        "chain under kill -9, {grant:?} grant: {KILLS} kills, {} rotations, {} chains lost: {} avoidable, {} in flight (killed before the answer reached state_dir)",
        s.rotations,
        s.losses.len(),
        tally.avoidable.len(),
        tally.in_flight
    );
    assert!(tally.avoidable.is_empty(), "{:?}", tally.avoidable);
    assert_eq!(tally.avoidable.len() + tally.in_flight, s.losses.len());
    assert!(s.violations.is_empty(), "{:?}", s.violations);
    assert_eq!(leftovers(&sb), Vec::<String>::new());
    assert!(
        s.rotations as usize > KILLS,
        "the kills landed while rotating ({} rotations)",
        s.rotations
    );
}

#[test]
fn kill_9_during_password_grant_rotation_never_replays_a_saved_refresh_token() {
    kill_9_at_random_moments(Grant::Password);
}

#[test]
fn kill_9_during_refresh_token_rotation_never_replays_a_saved_refresh_token() {
    kill_9_at_random_moments(Grant::RefreshToken);
}

/// Runs `tokenkeeper ARGS` again and again on `threads` threads until
/// `stop`; (runs, failures with their stderr).
fn hammer(
    sb: &Arc<Sandbox>,
    args: &'static [&'static str],
    threads: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<(usize, Vec<String>)>> {
    (0..threads)
        .map(|_| {
            let (sb, stop) = (sb.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut runs, mut failed) = (0, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    let (code, out, err) = sb.run(args);
                    runs += 1;
                    let prints = args[0] == "token" || args[0] == "refresh";
                    if code != 0 || (prints && token_number(out.trim()).is_none()) {
                        failed.push(format!("exit {code}: {err}"));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                (runs, failed)
            })
        })
        .collect()
}

/// Runs the daemon on a chain of 2 s tokens from an endpoint that answers
/// in 300 ms, with each of `commands` run by its number of threads beside
/// it for `secs`; asserts that no command failed and no chain was lost, and
/// returns the daemon's log.
fn beside_the_daemon(commands: &[(&'static [&'static str], usize)], secs: u64) -> String {
    let server = StrictServer::start(2, Duration::from_millis(300));
    let sb = Arc::new(Sandbox::new());
    sb.write_config(&chain_client(
        &sb,
        &server,
        Grant::Password,
        "timeout = \"10s\"",
    ));
    let daemon = sb.start();
    daemon.wait_until("the first token", || sb.read("rt.token").is_some());
    let stop = Arc::new(AtomicBool::new(false));
    let runners: Vec<_> = commands
        .iter()
        .flat_map(|(args, threads)| hammer(&sb, args, *threads, &stop))
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    let (mut runs, mut failed) = (0, Vec::new());
    for r in runners {
        let (n, f) = r.join().unwrap();
        runs += n;
        failed.extend(f);
    }
    let logs = daemon.logs();
    daemon.stop();
    let s = server.s();
    let names: Vec<&str> = commands.iter().map(|(args, _)| args[0]).collect();
    eprintln!(
        "{} beside the daemon: {runs} runs, {} requests, {} rotations, {} chains lost",
        names.join("/"),
        s.requests,
        s.rotations,
        s.losses.len()
    );
    assert!(runs > 20, "{runs} runs");
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(s.losses, vec![], "not one chain lost");
    assert!(s.violations.is_empty(), "{:?}", s.violations);
    assert_eq!(s.families, 1, "one chain from the first password grant on");
    assert_eq!(leftovers(&sb), Vec::<String>::new());
    sb.assert_no_secret_in_logs();
    logs
}

#[test]
fn token_and_once_beside_the_daemon_with_a_slow_endpoint_never_break_the_chain() {
    // the daemon refreshes every 1.5 s and `token` finds the token nearly
    // expired (under 1 s left) a third of the time, while `once` always
    // refreshes
    let logs = beside_the_daemon(&[(&["token", "rt"], 2), (&["once"], 1)], 8);
    assert!(
        logs.contains("using the token another tokenkeeper has just written"),
        "the daemon used a token `once` or `token` wrote instead of refreshing again"
    );
}

#[test]
fn refresh_and_once_beside_the_daemon_never_break_the_chain() {
    // `refresh` makes the daemon rotate on demand, up to once a second,
    // while `once` rotates the same chain from outside
    let logs = beside_the_daemon(&[(&["refresh", "rt"], 3), (&["once"], 1)], 5);
    assert!(logs.contains("refresh requested"));
}

#[test]
fn sigterm_while_a_refresh_is_in_flight_waits_for_its_answer_and_saves_it() {
    let server = StrictServer::start(3600, Duration::from_millis(1500));
    let sb = Sandbox::new();
    sb.write_config(&chain_client(&sb, &server, Grant::RefreshToken, ""));
    let daemon = sb.start();
    daemon.wait_until("the first token", || sb.read("rt.token").is_some());
    let first = state_refresh_token(&sb, "rt").unwrap();
    daemon.signal(Signal::SIGUSR1);
    daemon.wait_until("the refresh sent", || server.s().requests == 2);
    let sent = Instant::now();
    let (status, _) = daemon.stop();
    assert!(status.success());
    assert!(
        sent.elapsed() >= Duration::from_millis(1200),
        "the daemon waited for the answer"
    );
    let saved = state_refresh_token(&sb, "rt").unwrap();
    assert_ne!(saved, first, "the rotated refresh token was saved");
    {
        let s = server.s();
        assert_eq!(s.newest[&s.families], saved, "the newest of the chain");
    }
    // and the next start goes on from it
    let daemon = sb.start();
    daemon.wait_log("tokenkeeper started", 1);
    daemon.signal(Signal::SIGUSR1);
    daemon.wait_until("a third rotation", || server.s().rotations == 3);
    daemon.stop();
    let s = server.s();
    assert_eq!(s.losses, vec![]);
    assert!(s.violations.is_empty(), "{:?}", s.violations);
}

#[test]
fn config_edits_during_a_refresh_in_flight_never_lose_the_chain() {
    let server = StrictServer::start(3600, Duration::from_millis(800));
    let sb = Sandbox::new();
    let config = chain_client(&sb, &server, Grant::Password, "");
    sb.write_config(&config);
    let daemon = sb.start();
    daemon.wait_until("the first token", || sb.read("rt.token").is_some());

    // an output added while a refresh is in flight: the refresh completes,
    // the new output gets the current token, and no request is made for it
    daemon.signal(Signal::SIGUSR1);
    daemon.wait_until("the refresh sent", || server.s().requests == 2);
    let with_output =
        format!("{config}\n[[clients.rt.outputs]]\ntype = \"file\"\npath = \"second.token\"\n");
    sb.write_config(&with_output);
    daemon.wait_log("outputs changed", 1);
    daemon.wait_until("the refreshed token in both outputs", || {
        let n = |f: &str| sb.read(f).and_then(|t| token_number(&t));
        n("rt.token") == Some(2) && n("second.token") == Some(2)
    });
    // (the decision is the "outputs changed" line: the task, its token and
    // its schedule stay; a new task would have said "client changed")
    assert!(!daemon.logs().contains("client changed"));
    assert_eq!(
        server.s().requests,
        2,
        "an output-only edit makes no request"
    );

    // the token request changed while a refresh is in flight: the old task
    // saves its answer, the new one starts its own chain without a replay
    daemon.signal(Signal::SIGUSR1);
    daemon.wait_until("the refresh sent", || server.s().requests == 3);
    sb.write_config(&with_output.replace(
        "grant_type = \"password\"",
        "grant_type = \"password\"\nscope = \"orders\"",
    ));
    daemon.wait_log("client changed; fetching a new token", 1);
    daemon.wait_until("a token from the new request", || {
        server.s().requests >= 4
            && sb.read("second.token").and_then(|t| token_number(&t)) >= Some(4)
    });
    daemon.stop();
    let s = server.s();
    assert_eq!(s.losses, vec![]);
    assert!(s.violations.is_empty(), "{:?}", s.violations);
    assert_eq!(leftovers(&sb), Vec::<String>::new());
}

/// `tokenkeeper once` in the daemon's mount namespace: (exit code, stderr).
fn once_inside(sb: &Sandbox, daemon: &Daemon) -> (i32, String) {
    let pid = daemon.pid().to_string();
    let mut wrapper = crate::filesystem::namespace_args("nsenter");
    wrapper.extend(["--target", &pid]);
    let out = sb.cmd_via(&wrapper, &["once"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    sb.keep_log(&stderr);
    (out.status.code().unwrap_or(-1), stderr)
}

#[test]
fn a_read_only_or_full_state_dir_never_rotates_a_chain_it_cannot_save() {
    let server = StrictServer::start(3600, Duration::ZERO);
    let sb = Sandbox::new();
    sb.write_config(&chain_client(&sb, &server, Grant::Password, ""));
    let Some(daemon) = crate::filesystem::start_on_tmpfs_at(&sb, "state", "256k") else {
        return;
    };
    let state = sb.path("state");
    let number = || sb.read("rt.token").and_then(|t| token_number(&t));
    daemon.wait_until("the first token", || number() == Some(1));

    // read-only: the daemon pauses the chain, `once` refuses, nothing is sent
    crate::filesystem::in_namespace(&daemon, "mount -o remount,ro \"$0\"", &state);
    daemon.signal(Signal::SIGUSR1);
    daemon.wait_log("needs attention: state_dir:", 1);
    assert!(daemon.logs().contains("Read-only file system"));
    let (code, stderr) = once_inside(&sb, &daemon);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("not fetching, since the rotated refresh token could not be kept"),
        "{stderr}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        server.s().requests,
        1,
        "no rotation that could not be saved"
    );
    assert_eq!(number(), Some(1), "the current token stays in place");

    // writable again: the paused chain resumes by itself
    crate::filesystem::in_namespace(&daemon, "mount -o remount,rw \"$0\"", &state);
    daemon.wait_until("the refresh once writable again", || number() == Some(2));

    // full: a chain that has its state file rotates in place, daemon and `once` alike
    crate::filesystem::in_namespace(
        &daemon,
        "cat /dev/zero > \"$0/filler\" 2>/dev/null; true",
        &state,
    );
    daemon.signal(Signal::SIGUSR1);
    daemon.wait_until("a refresh on the full state_dir", || number() == Some(3));
    let (code, stderr) = once_inside(&sb, &daemon);
    assert_eq!(code, 0, "{stderr}");
    daemon.signal(Signal::SIGUSR1);
    daemon.wait_until("the daemon goes on from once's token", || {
        number() == Some(5)
    });
    daemon.stop();
    let s = server.s();
    assert_eq!(s.losses, vec![]);
    assert!(s.violations.is_empty(), "{:?}", s.violations);
    assert_eq!(s.families, 1, "one chain throughout");
}
