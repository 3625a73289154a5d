//! `cargo bench --bench tokenkeeper [-- SIZES...]`: the real binary against a
//! fast local token server, at 1, 100, 1,000 and 10,000 clients; and the same
//! token work done the way people do it without tokenkeeper (a shell loop of
//! `curl | jq` and `mv`). Prints a table and writes
//! target/bench/results.json. Figures only: nothing here asserts a time.
//!
//! `cargo bench --bench tokenkeeper -- idle [SIZES...]`: the CPU an idle
//! daemon uses (nothing due; file outputs checked every 10 s), and how
//! often it rewrote its status file meanwhile; with
//! `TOKENKEEPER_BENCH_BASELINE`, that build too, in turn.
//!
//! `cargo bench --bench tokenkeeper -- cost [N]`: what
//! the daemon costs at `N` clients (default 10,000) — idle CPU and disk
//! writes, `token NAME`, a config edit and the memory it takes, system
//! calls per chain refresh — for this build and `TOKENKEEPER_BENCH_BASELINE`
//! in turn; then per token against the shell loop at the same batch sizes,
//! serial beside serial and concurrent beside serial, on the default
//! filesystem and each of `TOKENKEEPER_BENCH_DIRS` (see [`cost`]).
//!
//! `cargo bench --bench tokenkeeper -- cluster [N]`: three members and a
//! three-node etcd sharing `N` clients (default 10,000); see [`cluster`].
//!
//! `cargo bench --bench tokenkeeper -- scale [N]`: one daemon of `N`
//! clients (default 100,000): start, idle, `token NAME`, edits, SIGTERM.
//!
//! `cargo bench --bench tokenkeeper -- state [SIZES...]`: what one refresh
//! of a refresh-token chain costs in CPU and system calls (the lock, the
//! state write, the output write), rounds of every client at once, min /
//! median / max over the rounds. Set `TOKENKEEPER_BENCH_BASELINE` to another
//! build of tokenkeeper to measure it in the same run, turn about, and
//! `TOKENKEEPER_BENCH_DIRS` (colon-separated) to run on other filesystems
//! too, e.g. a loop-mounted ext4 image. System calls are counted by
//! `strace -f -c` in a round of their own (skipped without strace).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

#[path = "tokenkeeper/cluster.rs"]
mod cluster;
#[path = "tokenkeeper/cost.rs"]
mod cost;
#[path = "../tests/util/etcd.rs"]
#[allow(dead_code)]
mod etcd;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The build measured: this one, or `TOKENKEEPER_BENCH_BIN` (the main
/// table for another build, e.g. the one before).
fn bin() -> PathBuf {
    std::env::var_os("TOKENKEEPER_BENCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tokenkeeper")))
}

/// A token endpoint that answers as fast as it can, counting requests.
fn token_server(count: Arc<AtomicU64>) -> String {
    async fn token(
        axum::extract::State(count): axum::extract::State<Arc<AtomicU64>>,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        let n = count.fetch_add(1, Ordering::Relaxed);
        // a rotating refresh token, as password-grant clients get (ignored by
        // client-credentials clients)
        axum::Json(serde_json::json!({"access_token": format!("bench-token-{n:012}"), "token_type": "Bearer", "expires_in": 86400, "refresh_token": format!("bench-refresh-{n:012}-0123456789abcdef")})).into_response()
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    let app = axum::Router::new().fallback(token).with_state(count);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let _ = axum::serve(tokio::net::TcpListener::from_std(listener).unwrap(), app).await;
        });
    });
    url
}

/// (user CPU seconds, system CPU seconds) of a process.
fn cpu_split(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, r)| r.split(' ').collect())
        .unwrap_or_default();
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let f = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / ticks
    };
    (f(11), f(12))
}

/// A `/proc/<pid>/status` field (VmRSS, RssAnon, VmHWM) in MiB.
fn status_mib(pid: u32, key: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// How long after its last change the daemon is idle as between refreshes:
/// its pooled connections closed and the freed memory given back
/// (daemon::trim trims between one and two quiet periods after it).
const IDLE_AFTER: Duration = Duration::from_secs(2 * tokenkeeper::internals::QUIET.as_secs() + 1);

/// For the etcd harness the tests share.
fn wait_until(what: &str, limit: Duration, f: impl FnMut() -> bool) {
    wait_every(Duration::from_millis(50), what, limit, f);
}

/// A port free on loopback now (for the etcd harness).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn wait(what: &str, limit: Duration, f: impl FnMut() -> bool) -> Duration {
    wait_every(Duration::from_millis(5), what, limit, f)
}

/// [`wait`], looking every `every` (listing a directory of 100,000 files
/// every 5 ms would take the daemon's CPU).
fn wait_every(
    every: Duration,
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> bool,
) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(every);
    }
    start.elapsed()
}

/// One refresh round: SIGUSR1 to the daemon at `pid`, until all `n`
/// clients asked for a token and the last one's file holds it.
fn refresh_round(pid: u32, dir: &Path, n: usize, count: &AtomicU64, limit: Duration) {
    let before = count.load(Ordering::Relaxed);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .unwrap();
    wait("a refresh round", limit, || {
        count.load(Ordering::Relaxed) >= before + n as u64
    });
    let last = dir.join(format!("out/c{}.token", n - 1));
    wait("the round written", limit, || {
        std::fs::read_to_string(&last)
            .ok()
            .and_then(|t| t.strip_prefix("bench-token-")?.parse::<u64>().ok())
            .is_some_and(|k| k >= before)
    });
}

fn config(dir: &Path, url: &str, n: usize) -> String {
    config_with(dir, url, n, |_| String::new())
}

/// `n` clients on `url` with state and outputs in `dir`, each with the
/// keys `extra(i)` gives.
fn config_with(dir: &Path, url: &str, n: usize, extra: impl Fn(usize) -> String) -> String {
    let mut text = format!(
        "[daemon]\nstate_dir = \"{}\"\n\n[defaults]\nmin_interval = \"1ms\"\n\n",
        dir.join("state").display()
    );
    for i in 0..n {
        text.push_str(&format!(
            "[clients.c{i}]\ntoken_url = \"{url}\"\nclient_id = \"c{i}\"\nclient_secret = \"bench-secret\"\n{}[[clients.c{i}.outputs]]\ntype = \"file\"\npath = \"out/c{i}.token\"\n\n",
            extra(i)
        ));
    }
    text
}

/// `bin run --config config` at `RUST_LOG=warn`, its log to `log`.
fn start_daemon(bin: &Path, config: &Path, log: impl Into<Stdio>) -> Child {
    Command::new(bin)
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// `bin run` on `config`, once all `n` of its tokens are in `dir` and the
/// start's burst has settled.
fn started_quiet(bin: &Path, config: &Path, dir: &Path, n: usize) -> Child {
    let child = start_daemon(bin, config, Stdio::null());
    wait("every token written", Duration::from_secs(300), || {
        files_written(dir) >= n
    });
    std::thread::sleep(Duration::from_millis(500));
    child
}

fn files_written(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("out"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".token"))
                .count()
        })
        .unwrap_or(0)
}

#[derive(serde::Serialize)]
struct SizeResult {
    clients: usize,
    start_to_all_written_s: f64,
    refreshes_per_s: f64,
    cpu_per_refresh_us: f64,
    user_cpu_per_refresh_us: f64,
    wall_per_token_us: f64,
    rss_after_burst_mib: f64,
    idle_rss_mib: f64,
    /// The anonymous (heap, stacks) part of the idle RSS; the rest is the
    /// binary's and libraries' pages, shared with other processes.
    idle_private_mib: f64,
    peak_rss_mib: f64,
    config_edit_to_new_token_ms: f64,
    /// Idle again after the config edit: a reload must not keep a second
    /// copy of the clients it left alone.
    idle_rss_after_edit_mib: f64,
    sigterm_to_exit_ms: f64,
}

fn run_size(n: usize, url: &str, count: &Arc<AtomicU64>) -> SizeResult {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config(dir.path(), url, n)).unwrap();
    let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
    let c0 = count.load(Ordering::Relaxed);
    let start = Instant::now();
    let mut child = start_daemon(&bin(), &path, log);
    let pid = child.id();
    let limit = Duration::from_secs(300);
    wait("every token written", limit, || {
        files_written(dir.path()) >= n
    });
    let start_to_all = start.elapsed();
    assert!(count.load(Ordering::Relaxed) - c0 >= n as u64);

    // steady refresh: every client at once (SIGUSR1), three rounds
    std::thread::sleep(Duration::from_millis(500));
    let (mut wall, mut cpu, mut user) = (Duration::ZERO, 0.0, 0.0);
    for _ in 0..3 {
        let (user0, system0) = cpu_split(pid);
        let t0 = Instant::now();
        refresh_round(pid, dir.path(), n, count, limit);
        wall += t0.elapsed();
        std::thread::sleep(Duration::from_millis(300)); // let the last writes finish before reading CPU
        let (user1, system1) = cpu_split(pid);
        cpu += user1 + system1 - user0 - system0;
        user += user1 - user0;
    }
    let refreshes = 3.0 * n as f64;

    // right after the burst: the token endpoint's connections still pooled
    std::thread::sleep(Duration::from_secs(2));
    let burst_rss = status_mib(pid, "VmRSS:");
    // idle, as between refreshes: the pool has closed them, and the daemon
    // has given the burst's free memory back (daemon::trim)
    std::thread::sleep(IDLE_AFTER);
    let (rss, private, peak) = (
        status_mib(pid, "VmRSS:"),
        status_mib(pid, "RssAnon:"),
        status_mib(pid, "VmHWM:"),
    );

    // a config edit (by rename, as editors do) to the new client's token on disk
    let tmp = dir.path().join(".config.toml.new");
    std::fs::write(&tmp, config(dir.path(), url, n) + &format!("[clients.extra]\ntoken_url = \"{url}\"\nclient_id = \"x\"\nclient_secret = \"s\"\n[[clients.extra.outputs]]\ntype = \"file\"\npath = \"out/extra.token\"\n")).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    // `wait` times from its call, right after the rename
    let edit = wait("the new client's token", limit, || {
        dir.path().join("out/extra.token").exists()
    });
    std::thread::sleep(IDLE_AFTER);
    let rss_after_edit = status_mib(pid, "VmRSS:");

    let t0 = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    child.wait().unwrap();
    let stop = t0.elapsed();

    SizeResult {
        clients: n,
        start_to_all_written_s: start_to_all.as_secs_f64(),
        refreshes_per_s: refreshes / wall.as_secs_f64(),
        cpu_per_refresh_us: cpu / refreshes * 1e6,
        user_cpu_per_refresh_us: user / refreshes * 1e6,
        wall_per_token_us: wall.as_secs_f64() / refreshes * 1e6,
        rss_after_burst_mib: burst_rss,
        idle_rss_mib: rss,
        idle_private_mib: private,
        peak_rss_mib: peak,
        config_edit_to_new_token_ms: edit.as_secs_f64() * 1e3,
        idle_rss_after_edit_mib: rss_after_edit,
        sigterm_to_exit_ms: stop.as_secs_f64() * 1e3,
    }
}

/// The same token work as a shell loop: curl | jq, then mv into place.
fn shell_loop(url: &str, tokens: usize) -> Option<f64> {
    if Command::new("jq").arg("--version").output().is_err() {
        eprintln!("jq not installed: skipping the shell-loop comparison");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "for i in $(seq 1 {tokens}); do curl -s -d grant_type=client_credentials -d client_id=c -d client_secret=s '{url}' | jq -r .access_token > t.tmp && mv t.tmp t; done"
    );
    let t0 = Instant::now();
    let ok = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .status()
        .ok()?
        .success();
    let per = t0.elapsed().as_secs_f64() / tokens as f64 * 1e6;
    ok.then_some(per)
}

/// A config of `n` password-grant clients (a rotating chain each), with
/// state and outputs in `dir`.
fn chain_config(dir: &Path, url: &str, n: usize) -> String {
    config_with(dir, url, n, |i| {
        format!("grant_type = \"password\"\nusername = \"u{i}\"\npassword = \"bench-password\"\n")
    })
}

/// Per-refresh figures of one build on one filesystem at one size.
struct ChainCost {
    /// CPU µs per refresh (user + system), and user alone, per round.
    cpu_us: Vec<f64>,
    user_us: Vec<f64>,
    /// System calls per refresh, by name, from a round under strace.
    syscalls: Option<std::collections::BTreeMap<String, f64>>,
}

/// Counts of `strace -c` output, by system call.
fn parse_strace(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let calls = f.get(3)?.parse::<f64>().ok()?;
            Some((f.last()?.to_string(), calls))
        })
        .filter(|(name, _)| name != "total")
        .fold(std::collections::BTreeMap::new(), |mut m, (name, calls)| {
            // rename(2) and its *at forms count as one
            let name = if name.starts_with("rename") {
                "rename".to_string()
            } else {
                name
            };
            *m.entry(name).or_insert(0.0) += calls;
            m
        })
}

fn chain_cost(bin: &Path, base: &Path, url: &str, n: usize, count: &Arc<AtomicU64>) -> ChainCost {
    const ROUNDS: usize = 5;
    let dir = tempfile::tempdir_in(base).unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, chain_config(dir.path(), url, n)).unwrap();
    let mut child = started_quiet(bin, &path, dir.path(), n);
    let pid = child.id();
    let limit = Duration::from_secs(300);
    let round = |count: &Arc<AtomicU64>| {
        refresh_round(pid, dir.path(), n, count, limit);
        std::thread::sleep(Duration::from_millis(300));
    };
    let (mut cpu_us, mut user_us) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let (user0, system0) = cpu_split(pid);
        round(count);
        let (user1, system1) = cpu_split(pid);
        cpu_us.push((user1 + system1 - user0 - system0) / n as f64 * 1e6);
        user_us.push((user1 - user0) / n as f64 * 1e6);
    }
    let out = dir.path().join("strace.txt");
    let syscalls = Command::new("strace")
        .args(["-f", "-c", "-o"])
        .arg(&out)
        .args(["-p", &pid.to_string()])
        .stderr(Stdio::null())
        .spawn()
        .ok()
        .map(|mut strace| {
            std::thread::sleep(Duration::from_millis(500));
            round(count);
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(strace.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            );
            let _ = strace.wait();
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            parse_strace(&text)
                .into_iter()
                .map(|(k, v)| (k, v / n as f64))
                .collect()
        });
    let _ = child.kill();
    let _ = child.wait();
    ChainCost {
        cpu_us,
        user_us,
        syscalls,
    }
}

/// "min / median / max" of `v`, with `digits` after the point.
fn min_median_max(v: &[f64], digits: usize) -> String {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    format!(
        "{:.digits$} / {:.digits$} / {:.digits$}",
        v[0],
        v[v.len() / 2],
        v[v.len() - 1]
    )
}

/// `-- state`: the chain refresh's cost, this build against a baseline.
fn state_bench(sizes: &[usize]) {
    let count = Arc::new(AtomicU64::new(0));
    let url = token_server(count.clone());
    let mut builds = vec![("this build".to_string(), bin())];
    if let Some(b) = std::env::var_os("TOKENKEEPER_BENCH_BASELINE") {
        builds.push(("baseline".to_string(), PathBuf::from(b)));
    }
    std::fs::create_dir_all("target/bench").unwrap();
    let mut dirs = vec![std::fs::canonicalize("target/bench").unwrap()];
    if let Some(extra) = std::env::var_os("TOKENKEEPER_BENCH_DIRS") {
        dirs.extend(std::env::split_paths(&extra));
    }
    let interesting = [
        "openat",
        "fsync",
        "fdatasync",
        "rename",
        "flock",
        "pwrite64",
        "write",
    ];
    println!(
        "\n| filesystem | clients | build | CPU µs per refresh, min / median / max | user µs | {} | all syscalls |",
        interesting.join(" | ")
    );
    println!(
        "|---|---:|---|---:|---:|{}---:|",
        "---:|".repeat(interesting.len())
    );
    for dir in &dirs {
        for &n in sizes {
            for (name, bin) in &builds {
                let c = chain_cost(bin, dir, &url, n, &count);
                let calls = |k: &str| {
                    c.syscalls.as_ref().map_or("-".to_string(), |s| {
                        format!("{:.1}", s.get(k).copied().unwrap_or(0.0))
                    })
                };
                let total = c.syscalls.as_ref().map_or("-".to_string(), |s| {
                    format!("{:.1}", s.values().sum::<f64>())
                });
                println!(
                    "| {} | {n} | {name} | {} | {} | {} | {total} |",
                    dir.display(),
                    min_median_max(&c.cpu_us, 0),
                    min_median_max(&c.user_us, 0),
                    interesting.map(calls).join(" | ")
                );
            }
        }
    }
}

/// `-- idle`: the CPU a daemon with `n` clients uses while nothing
/// refreshes (file outputs checked every 10 s, the default), in % of one
/// core per 10 s window; this build and `TOKENKEEPER_BENCH_BASELINE` in
/// turn, each started afresh.
fn idle_bench(sizes: &[usize]) {
    const WINDOW: Duration = Duration::from_secs(10);
    const WINDOWS: usize = 3;
    let count = Arc::new(AtomicU64::new(0));
    let url = token_server(count.clone());
    let mut builds = vec![("this build".to_string(), bin())];
    if let Some(b) = std::env::var_os("TOKENKEEPER_BENCH_BASELINE") {
        builds.push(("baseline".to_string(), PathBuf::from(b)));
    }
    println!(
        "\n| clients | build | idle CPU, % of a core per {}-s window, min / median / max | status file writes |",
        WINDOW.as_secs()
    );
    println!("|---:|---|---:|---:|");
    for &n in sizes {
        for (name, bin) in &builds {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("config.toml");
            // lifetimes of a day: nothing is due while it is measured
            std::fs::write(&path, config(dir.path(), &url, n)).unwrap();
            let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
            let mut child = start_daemon(bin, &path, log);
            let pid = child.id();
            wait("every token written", Duration::from_secs(300), || {
                files_written(dir.path()) >= n
            });
            std::thread::sleep(IDLE_AFTER);
            let status = dir.path().join("state/status.json");
            let stamp = || {
                std::fs::metadata(&status)
                    .ok()
                    .and_then(|m| m.modified().ok())
            };
            let mut writes = 0;
            let mut percents = Vec::new();
            for _ in 0..WINDOWS {
                let (u0, s0) = cpu_split(pid);
                let t0 = Instant::now();
                let mut last = stamp();
                while t0.elapsed() < WINDOW {
                    std::thread::sleep(Duration::from_millis(200));
                    let now = stamp();
                    if now != last {
                        writes += 1;
                        last = now;
                    }
                }
                let (u1, s1) = cpu_split(pid);
                percents.push((u1 + s1 - u0 - s0) / t0.elapsed().as_secs_f64() * 100.0);
            }
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            )
            .unwrap();
            child.wait().unwrap();
            let mut v = percents.clone();
            v.sort_by(f64::total_cmp);
            println!(
                "| {n} | {name} | {:.2} / {:.2} / {:.2} | {writes} in {} s |",
                v[0],
                v[v.len() / 2],
                v[v.len() - 1],
                WINDOW.as_secs() * WINDOWS as u64
            );
        }
    }
}

/// The sizes on the command line (numbers), or `default`.
fn sizes_or(default: &[usize]) -> Vec<usize> {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    if sizes.is_empty() {
        default.to_vec()
    } else {
        sizes
    }
}

fn main() {
    let mode = |name: &str| std::env::args().any(|a| a == name);
    if mode("idle") {
        return idle_bench(&sizes_or(&[1000, 10000]));
    }
    if mode("state") {
        return state_bench(&sizes_or(&[100, 1000]));
    }
    if mode("scale") {
        return cost::scale_bench(sizes_or(&[100_000])[0]);
    }
    if mode("cluster") {
        return cluster::cluster_bench(sizes_or(&[10_000])[0]);
    }
    if mode("cost") {
        return cost::cost_bench(sizes_or(&[10_000])[0]);
    }
    let sizes = sizes_or(&[1, 100, 1000, 10000]);
    let count = Arc::new(AtomicU64::new(0));
    let url = token_server(count.clone());
    let results: Vec<SizeResult> = sizes.iter().map(|&n| run_size(n, &url, &count)).collect();
    let shell = shell_loop(&url, 200);

    println!(
        "\n| clients | start → all written | refreshes/s | CPU per refresh (user) | wall per token | idle RSS (private) | RSS after a burst | peak RSS | config edit → new token | idle RSS after the edit | SIGTERM → exit |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &results {
        println!(
            "| {} | {:.2} s | {:.0} | {:.0} µs ({:.0} µs) | {:.0} µs | {:.1} MiB ({:.1}) | {:.1} MiB | {:.1} MiB | {:.0} ms | {:.1} MiB | {:.0} ms |",
            r.clients,
            r.start_to_all_written_s,
            r.refreshes_per_s,
            r.cpu_per_refresh_us,
            r.user_cpu_per_refresh_us,
            r.wall_per_token_us,
            r.idle_rss_mib,
            r.idle_private_mib,
            r.rss_after_burst_mib,
            r.peak_rss_mib,
            r.config_edit_to_new_token_ms,
            r.idle_rss_after_edit_mib,
            r.sigterm_to_exit_ms
        );
    }
    let best = results
        .iter()
        .map(|r| r.wall_per_token_us)
        .fold(f64::MAX, f64::min);
    if let Some(per) = shell {
        println!(
            "\nshell loop (curl | jq, mv), 200 tokens: {per:.0} µs per token; tokenkeeper: {best:.0} µs per token at its best size; ratio {:.1}×",
            per / best
        );
    }
    let json = serde_json::json!({"sizes": results, "shell_loop_us_per_token": shell, "ratio": shell.map(|s| s / best)});
    std::fs::create_dir_all("target/bench").unwrap();
    std::fs::write(
        "target/bench/results.json",
        serde_json::to_string_pretty(&json).unwrap(),
    )
    .unwrap();
    println!("written target/bench/results.json");
}
