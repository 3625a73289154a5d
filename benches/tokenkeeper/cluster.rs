//! `-- cluster [N]`: three members sharing `N` clients (default 10,000)
//! through a real three-node etcd on loopback: the requests of a refresh
//! window (every member asked at once; must equal `N`), what the store
//! carries per refresh, each member's idle CPU and memory, and the
//! failover of the third of the clients a killed member owned.

use super::*;

const PREFIX: &str = "/tokenkeeper-bench/";
const LEASE_TTL: Duration = Duration::from_secs(5);

/// etcd's own counters, summed over the nodes: (range and txn calls,
/// bytes received and sent by its gRPC server).
fn etcd_traffic(etcd: &etcd::EtcdCluster) -> (f64, f64) {
    let mut calls = 0.0;
    let mut bytes = 0.0;
    for e in etcd.endpoints() {
        let out = Command::new("curl")
            .args(["-s", "-m", "5", &format!("{e}/metrics")])
            .output()
            .unwrap();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let value = || {
                line.rsplit(' ')
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            if line.starts_with("grpc_server_handled_total")
                && (line.contains("grpc_method=\"Range\"") || line.contains("grpc_method=\"Txn\""))
            {
                calls += value();
            }
            if line.starts_with("etcd_network_client_grpc_received_bytes_total")
                || line.starts_with("etcd_network_client_grpc_sent_bytes_total")
            {
                bytes += value();
            }
        }
    }
    (calls, bytes)
}

/// Clients owned by each member name, from the store.
fn owners(etcd: &etcd::EtcdCluster) -> std::collections::BTreeMap<String, usize> {
    let mut by = std::collections::BTreeMap::new();
    for (_, v) in etcd.dump(&format!("{PREFIX}owners/")) {
        *by.entry(String::from_utf8_lossy(&v).into_owned())
            .or_insert(0) += 1;
    }
    by
}

/// Every member's file of every client holds a token issued at or after
/// request number `since`.
fn all_written_since(dirs: &[PathBuf], n: usize, since: u64) -> bool {
    dirs.iter().all(|d| {
        (0..n).all(|i| {
            std::fs::read_to_string(d.join(format!("out/c{i}.token")))
                .ok()
                .and_then(|t| t.strip_prefix("bench-token-")?.parse::<u64>().ok())
                .is_some_and(|k| k >= since)
        })
    })
}

pub fn cluster_bench(n: usize) {
    let etcd = etcd::EtcdCluster::start(3);
    let count = Arc::new(AtomicU64::new(0));
    let url = token_server(count.clone());
    let root = tempfile::tempdir().unwrap();
    let key = root.path().join("cluster.key");
    std::fs::write(&key, rand_key()).unwrap();
    let names = ["member-a", "member-b", "member-c"];
    let dirs: Vec<PathBuf> = names.iter().map(|m| root.path().join(m)).collect();
    let mut children: Vec<Option<Child>> = Vec::new();
    let started = Instant::now();
    for (dir, name) in dirs.iter().zip(names) {
        std::fs::create_dir_all(dir.join("out")).unwrap();
        let cluster = format!(
            "\n\n[cluster]\nbackend = \"etcd\"\nname = \"{name}\"\nlease_ttl = \"{}s\"\nencryption_key_file = \"{}\"\nendpoints = {}\nprefix = \"{PREFIX}\"\n\n[defaults]",
            LEASE_TTL.as_secs(),
            key.display(),
            etcd.endpoints_toml()
        );
        let text = config(dir, &url, n).replacen("\n\n[defaults]", &cluster, 1);
        std::fs::write(dir.join("config.toml"), text).unwrap();
        let log = std::fs::File::create(dir.join("daemon.log")).unwrap();
        children.push(Some(start_daemon(&bin(), &dir.join("config.toml"), log)));
    }
    wait_every(
        Duration::from_millis(500),
        "every member holds every token",
        Duration::from_secs(900),
        || all_written_since(&dirs, n, 0),
    );
    let start_s = started.elapsed().as_secs_f64();
    let start_requests = count.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(2));
    let spread = owners(&etcd);

    // a refresh window: every member asked to refresh every client at once
    let mut windows = Vec::new();
    for _ in 0..3 {
        let before = count.load(Ordering::Relaxed);
        let (calls0, bytes0) = etcd_traffic(&etcd);
        let t0 = Instant::now();
        signal_all(&children, nix::sys::signal::Signal::SIGUSR1);
        wait_every(
            Duration::from_millis(200),
            "the window written everywhere",
            Duration::from_secs(600),
            || all_written_since(&dirs, n, before),
        );
        let took = t0.elapsed();
        std::thread::sleep(Duration::from_secs(2));
        let requests = count.load(Ordering::Relaxed) - before;
        let (calls1, bytes1) = etcd_traffic(&etcd);
        windows.push((
            requests,
            took.as_secs_f64(),
            (calls1 - calls0) / requests.max(1) as f64,
            (bytes1 - bytes0) / requests.max(1) as f64,
        ));
    }

    // idle: each member's CPU over 20 s, and memory
    std::thread::sleep(IDLE_AFTER);
    let cpu0: Vec<(f64, f64)> = children
        .iter()
        .flatten()
        .map(|c| cpu_split(c.id()))
        .collect();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(20));
    let wall = t0.elapsed().as_secs_f64();
    let idle: Vec<(f64, f64)> = children
        .iter()
        .flatten()
        .zip(&cpu0)
        .map(|(c, (u0, s0))| {
            let (u1, s1) = cpu_split(c.id());
            (
                (u1 + s1 - u0 - s0) / wall * 100.0,
                status_mib(c.id(), "VmRSS"),
            )
        })
        .collect();

    // failover: member-a killed; its clients taken over by the others
    let lost = spread.get(names[0]).copied().unwrap_or(0);
    let before = count.load(Ordering::Relaxed);
    let t0 = Instant::now();
    if let Some(mut a) = children[0].take() {
        a.kill().unwrap();
        a.wait().unwrap();
    }
    let mut first_s = None;
    wait_every(
        Duration::from_millis(100),
        "the killed member's clients taken over",
        Duration::from_secs(600),
        || {
            let o = owners(&etcd);
            if first_s.is_none() && o.get(names[0]).copied().unwrap_or(0) < lost {
                first_s = Some(t0.elapsed().as_secs_f64());
            }
            !o.contains_key(names[0]) && o.values().sum::<usize>() == n
        },
    );
    let failover_s = t0.elapsed().as_secs_f64();
    let during = count.load(Ordering::Relaxed) - before;
    // the members' views of the store catch up with it (an ask before that
    // reaches a member that does not own the client yet in its view)
    std::thread::sleep(Duration::from_secs(2));
    // the two left, asked at once: still one request per client
    let before = count.load(Ordering::Relaxed);
    signal_all(&children, nix::sys::signal::Signal::SIGUSR1);
    wait_every(
        Duration::from_millis(200),
        "the window after the failover",
        Duration::from_secs(600),
        || all_written_since(&dirs[1..], n, before),
    );
    std::thread::sleep(Duration::from_secs(2));
    let after_failover = count.load(Ordering::Relaxed) - before;
    signal_all(&children, nix::sys::signal::Signal::SIGTERM);
    for c in children.iter_mut().flatten() {
        let _ = c.wait();
    }

    println!(
        "\n### Cluster mode: 3 members × {n} clients, a 3-node etcd (loopback), lease_ttl {} s\n",
        LEASE_TTL.as_secs()
    );
    println!(
        "start → every member holds every token: {start_s:.1} s, {start_requests} token requests (one per client: {})",
        start_requests == n as u64
    );
    println!("clients owned: {spread:?}\n");
    println!(
        "| refresh window (every member sent SIGUSR1 at once) | token requests | must be | written by every member | store calls per refresh | store bytes per refresh |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (i, (req, took, calls, bytes)) in windows.iter().enumerate() {
        println!(
            "| {} | {req} | {n} | {took:.1} s | {calls:.2} | {bytes:.0} |",
            i + 1
        );
    }
    println!("\n| member | idle CPU (20 s) | RSS |");
    println!("|---|---:|---:|");
    for (name, (cpu, rss)) in names.iter().zip(&idle) {
        println!("| {name} | {cpu:.2} % | {rss:.1} MiB |");
    }
    println!(
        "\nfailover: kill -9 of {} (owner of {lost} clients): first client taken over after {:.1} s, all after {failover_s:.1} s; {during} token requests meanwhile; the next window of the two left: {after_failover} requests (must be {n})",
        names[0],
        first_s.unwrap_or(f64::NAN)
    );
}

/// `signal` to every member still running.
fn signal_all(children: &[Option<Child>], signal: nix::sys::signal::Signal) {
    for c in children.iter().flatten() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), signal);
    }
}

fn rand_key() -> Vec<u8> {
    let mut key = vec![0u8; 32];
    let f = std::fs::File::open("/dev/urandom").unwrap();
    std::io::Read::read_exact(&mut std::io::BufReader::new(f), &mut key).unwrap();
    key
}
