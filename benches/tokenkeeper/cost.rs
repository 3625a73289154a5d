//! `-- cost [N]`: what the daemon costs while nothing happens and per piece
//! of work, at `N` clients (default 10,000), for this build and, with
//! `TOKENKEEPER_BENCH_BASELINE`, the build before, in turn; then per token
//! against the shell loop at the same batch sizes, on the default
//! filesystem and each of `TOKENKEEPER_BENCH_DIRS`.

use super::*;

/// (wall, CPU user + system, peak RSS in MiB) of one command run to its
/// end, from `wait4`'s resource usage of that child alone (which reaps it:
/// `Child::wait` would lose the usage).
#[allow(clippy::zombie_processes)]
pub fn run_measured(cmd: &mut Command) -> (Duration, f64, f64) {
    let t0 = Instant::now();
    let child = cmd.stdout(Stdio::null()).spawn().unwrap();
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for the kernel to fill
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `child` is our child, not yet waited for; both pointers are
    // to live locals
    let waited = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let wall = t0.elapsed();
    assert_eq!(waited, child.id() as i32, "wait4");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{cmd:?} failed ({status})"
    );
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (
        wall,
        seconds(usage.ru_utime) + seconds(usage.ru_stime),
        usage.ru_maxrss as f64 / 1024.0,
    )
}

/// Bytes a process wrote to storage (`/proc/<pid>/io`'s `write_bytes`).
fn disk_writes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes: ")?.trim().parse().ok())
        .unwrap_or(0)
}

/// One build's figures at `n` clients.
struct Idle {
    start_s: f64,
    stop_ms: f64,
    cpu_percent: Vec<f64>,
    disk_kib_per_s: Vec<f64>,
    idle_rss: f64,
    token_ms: Vec<f64>,
    token_mib: Vec<f64>,
    edit_ms: Vec<f64>,
    edit_peak: Vec<f64>,
}

/// Start, idle windows, `token NAME`, three edits; then SIGTERM.
fn daemon_costs(bin: &Path, url: &str, n: usize) -> Idle {
    const WINDOW: Duration = Duration::from_secs(10);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config(dir.path(), url, n)).unwrap();
    let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
    let started = Instant::now();
    let mut child = start_daemon(bin, &path, log);
    let pid = child.id();
    let limit = Duration::from_secs(1800);
    let every = Duration::from_millis(if n > 10_000 { 250 } else { 5 });
    wait_every(every, "every token written", limit, || {
        files_written(dir.path()) >= n
    });
    let start_s = started.elapsed().as_secs_f64();
    std::thread::sleep(IDLE_AFTER);
    let (mut cpu_percent, mut disk_kib_per_s) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let ((u0, s0), w0, t0) = (cpu_split(pid), disk_writes(pid), Instant::now());
        std::thread::sleep(WINDOW);
        let ((u1, s1), w1, t) = (cpu_split(pid), disk_writes(pid), t0.elapsed());
        cpu_percent.push((u1 + s1 - u0 - s0) / t.as_secs_f64() * 100.0);
        disk_kib_per_s.push((w1 - w0) as f64 / 1024.0 / t.as_secs_f64());
    }
    let idle_rss = status_mib(pid, "VmRSS:");

    let (mut token_ms, mut token_mib) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let (wall, _, rss) = run_measured(
            Command::new(bin)
                .args(["token", &format!("c{}", n / 2), "--config"])
                .arg(&path),
        );
        token_ms.push(wall.as_secs_f64() * 1e3);
        token_mib.push(rss);
    }

    let (mut edit_ms, mut edit_peak) = (Vec::new(), Vec::new());
    let mut text = config(dir.path(), url, n);
    for k in 0..3 {
        // the high-water mark from here (Linux ≥ 4.0: "5" resets VmHWM)
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
        text += &format!(
            "[clients.extra{k}]\ntoken_url = \"{url}\"\nclient_id = \"x\"\nclient_secret = \"s\"\n[[clients.extra{k}.outputs]]\ntype = \"file\"\npath = \"out/extra{k}.token\"\n"
        );
        let tmp = dir.path().join(".config.toml.new");
        std::fs::write(&tmp, &text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let took = wait("the new client's token", limit, || {
            dir.path().join(format!("out/extra{k}.token")).exists()
        });
        edit_ms.push(took.as_secs_f64() * 1e3);
        std::thread::sleep(Duration::from_millis(500));
        edit_peak.push(status_mib(pid, "VmHWM:"));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let stopping = Instant::now();
    child.wait().unwrap();
    Idle {
        start_s,
        stop_ms: stopping.elapsed().as_secs_f64() * 1e3,
        cpu_percent,
        disk_kib_per_s,
        idle_rss,
        token_ms,
        token_mib,
        edit_ms,
        edit_peak,
    }
}

/// Wall and CPU per token of one batch of `n` tokens, done one way.
struct PerToken {
    how: &'static str,
    wall_us: f64,
    cpu_us: f64,
}

/// Runs `cmd`, which must fetch `n` tokens, as one [`PerToken`].
fn batch(how: &'static str, cmd: &mut Command, n: usize, count: &AtomicU64) -> PerToken {
    let before = count.load(Ordering::Relaxed);
    let (wall, cpu, _) = run_measured(cmd);
    assert!(
        count.load(Ordering::Relaxed) - before >= n as u64,
        "{how}: fewer than {n} tokens"
    );
    PerToken {
        how,
        wall_us: wall.as_secs_f64() / n as f64 * 1e6,
        cpu_us: cpu / n as f64 * 1e6,
    }
}

/// The shell loop people run without tokenkeeper, `n` tokens in `base`;
/// `None` without jq.
fn shell_batch(base: &Path, url: &str, n: usize, count: &AtomicU64) -> Option<PerToken> {
    Command::new("jq").arg("--version").output().ok()?;
    let dir = tempfile::tempdir_in(base).unwrap();
    let script = format!(
        "for i in $(seq 1 {n}); do curl -s -d grant_type=client_credentials -d client_id=c -d client_secret=s '{url}' | jq -r .access_token > t.tmp && mv t.tmp t || exit 1; done"
    );
    Some(batch(
        "shell loop: curl \\| jq, mv (serial)",
        Command::new("bash")
            .arg("-c")
            .arg(&script)
            .current_dir(dir.path()),
        n,
        count,
    ))
}

/// The same `n` tokens by tokenkeeper in `base`: `once --client` in a shell
/// loop (serial; builds that have it), `once` (one process, concurrent
/// inside) and a daemon's refresh round (concurrent).
fn tokenkeeper_batches(
    bin: &Path,
    base: &Path,
    url: &str,
    n: usize,
    count: &Arc<AtomicU64>,
) -> Vec<PerToken> {
    let dir = tempfile::tempdir_in(base).unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config(dir.path(), url, n)).unwrap();
    let mut rows = Vec::new();
    let once_client = Command::new(bin)
        .args(["once", "--help"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--client"));
    if once_client {
        let script = format!(
            "for i in $(seq 0 {}); do '{}' once --client c$i --config '{}' || exit 1; done",
            n - 1,
            bin.display(),
            path.display()
        );
        rows.push(batch(
            "`once --client NAME` in a shell loop (serial)",
            Command::new("bash")
                .arg("-c")
                .arg(&script)
                .env("RUST_LOG", "warn"),
            n,
            count,
        ));
    }
    rows.push(batch(
        "`once`, every client (concurrent)",
        Command::new(bin)
            .args(["once", "--config"])
            .arg(&path)
            .env("RUST_LOG", "warn"),
        n,
        count,
    ));

    let mut child = started_quiet(bin, &path, dir.path(), n);
    let pid = child.id();
    let limit = Duration::from_secs(300);
    let (mut wall, mut cpu) = (Duration::ZERO, 0.0);
    for _ in 0..3 {
        let (u0, s0) = cpu_split(pid);
        let t0 = Instant::now();
        refresh_round(pid, dir.path(), n, count, limit);
        wall += t0.elapsed();
        std::thread::sleep(Duration::from_millis(300));
        let (u1, s1) = cpu_split(pid);
        cpu += u1 + s1 - u0 - s0;
    }
    let _ = child.kill();
    let _ = child.wait();
    rows.push(PerToken {
        how: "daemon refresh round, every client (concurrent)",
        wall_us: wall.as_secs_f64() / (3 * n) as f64 * 1e6,
        cpu_us: cpu / (3 * n) as f64 * 1e6,
    });
    rows
}

pub fn cost_bench(n: usize) {
    let count = Arc::new(AtomicU64::new(0));
    let url = token_server(count.clone());
    let mut builds = vec![("this build".to_string(), bin())];
    if let Some(b) = std::env::var_os("TOKENKEEPER_BENCH_BASELINE") {
        builds.insert(0, ("before".to_string(), PathBuf::from(b)));
    }
    let idle: Vec<Idle> = builds
        .iter()
        .map(|(_, b)| daemon_costs(b, &url, n))
        .collect();
    let chains: Vec<ChainCost> = builds
        .iter()
        .map(|(_, b)| chain_cost(b, &std::env::temp_dir(), &url, 1000, &count))
        .collect();

    println!(
        "\n{n} clients, one output file each, on {} (min / median / max):\n",
        std::env::temp_dir().display()
    );
    println!(
        "| cost | {} |",
        builds
            .iter()
            .map(|(name, _)| name.as_str())
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("|---|{}", "---:|".repeat(builds.len()));
    let row = |label: &str, f: &dyn Fn(&Idle) -> String| {
        println!(
            "| {label} | {} |",
            idle.iter().map(f).collect::<Vec<_>>().join(" | ")
        );
    };
    row("start → every token written, s", &|i| {
        format!("{:.1}", i.start_s)
    });
    row("SIGTERM → exit, ms", &|i| format!("{:.0}", i.stop_ms));
    row("idle CPU, % of a core per 10-s window", &|i| {
        min_median_max(&i.cpu_percent, 2)
    });
    row("idle disk writes, KiB/s per 10-s window", &|i| {
        min_median_max(&i.disk_kib_per_s, 1)
    });
    row("idle RSS", &|i| format!("{:.1} MiB", i.idle_rss));
    row("`token NAME`, wall ms (5 runs)", &|i| {
        min_median_max(&i.token_ms, 1)
    });
    row("`token NAME`, peak RSS MiB", &|i| {
        min_median_max(&i.token_mib, 1)
    });
    row(
        "config edit (one client added) → its token, ms (3 edits)",
        &|i| min_median_max(&i.edit_ms, 0),
    );
    row("peak RSS during an edit, MiB (× idle)", &|i| {
        let top = i.edit_peak.iter().copied().fold(0.0, f64::max);
        format!("{top:.1} ({:.2}×)", top / i.idle_rss)
    });
    let calls = |c: &ChainCost, k: &str| {
        c.syscalls.as_ref().map_or("-".to_string(), |s| {
            format!("{:.1}", s.get(k).copied().unwrap_or(0.0))
        })
    };
    println!(
        "| syscalls per chain refresh at 1,000 clients (openat / fsync + fdatasync / rename) | {} |",
        chains
            .iter()
            .map(|c| {
                let syncs = c.syscalls.as_ref().map_or("-".to_string(), |s| {
                    format!(
                        "{:.1}",
                        s.get("fsync").copied().unwrap_or(0.0)
                            + s.get("fdatasync").copied().unwrap_or(0.0)
                    )
                });
                format!("{} / {syncs} / {}", calls(c, "openat"), calls(c, "rename"))
            })
            .collect::<Vec<_>>()
            .join(" | ")
    );

    let mut dirs = vec![std::env::temp_dir()];
    if let Some(extra) = std::env::var_os("TOKENKEEPER_BENCH_DIRS") {
        dirs.extend(std::env::split_paths(&extra));
    }
    println!(
        "\nPer token, the same batch of N tokens done each way: wall time of the batch ÷ N, and the CPU of every process involved ÷ N (the token endpoint's not counted):\n"
    );
    println!(
        "| filesystem | N | build | how | wall per token | CPU per token | shell loop ÷ this: wall (CPU) |"
    );
    println!("|---|---:|---|---|---:|---:|---:|");
    for dir in &dirs {
        for n in [100, 1000] {
            let shell = shell_batch(dir, &url, n, &count);
            let mut rows: Vec<(&str, PerToken)> = Vec::new();
            for (name, b) in &builds {
                rows.extend(
                    tokenkeeper_batches(b, dir, &url, n, &count)
                        .into_iter()
                        .map(|r| (name.as_str(), r)),
                );
            }
            if let Some(s) = &shell {
                println!(
                    "| {} | {n} | — | {} | {:.0} µs | {:.0} µs | 1× |",
                    dir.display(),
                    s.how,
                    s.wall_us,
                    s.cpu_us
                );
            }
            for (name, r) in rows {
                let ratio = shell.as_ref().map_or("-".to_string(), |s| {
                    format!(
                        "{:.1}× ({:.1}×)",
                        s.wall_us / r.wall_us,
                        s.cpu_us / r.cpu_us
                    )
                });
                println!(
                    "| {} | {n} | {name} | {} | {:.0} µs | {:.0} µs | {ratio} |",
                    dir.display(),
                    r.how,
                    r.wall_us,
                    r.cpu_us
                );
            }
        }
    }
}

/// `-- scale [N]`: one daemon of `N` clients (default 100,000): start,
/// idle, `token NAME`, three edits, SIGTERM.
pub fn scale_bench(n: usize) {
    let count = Arc::new(AtomicU64::new(0));
    let url = token_server(count.clone());
    let i = daemon_costs(&bin(), &url, n);
    println!(
        "\n{n} clients, one output file each, on {}:\n",
        std::env::temp_dir().display()
    );
    println!(
        "| start → all written | idle RSS (per client) | idle CPU, % of a core per 10-s window | `token NAME` | config edit → new token | peak RSS during an edit | SIGTERM → exit |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {:.1} s | {:.1} MiB ({:.2} KiB) | {} | {} ms, {} MiB | {} ms | {:.1} MiB | {:.0} ms |",
        i.start_s,
        i.idle_rss,
        i.idle_rss * 1024.0 / n as f64,
        min_median_max(&i.cpu_percent, 2),
        min_median_max(&i.token_ms, 1),
        min_median_max(&i.token_mib, 1),
        min_median_max(&i.edit_ms, 0),
        i.edit_peak.iter().copied().fold(0.0, f64::max),
        i.stop_ms
    );
}
