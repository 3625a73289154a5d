//! Running it for real: metrics scraped and parsed by Prometheus' own parser
//! while the upstream fails, health and readiness, and systemd's notify
//! protocol on a socket as a Type=notify service would see it.

use crate::util::*;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

fn get(url: &str) -> (u16, String) {
    get_accepting(url, "*/*")
}

/// What Prometheus asks /metrics for.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

fn get_accepting(url: &str, accept: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-H",
            &format!("Accept: {accept}"),
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            url,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Parses OpenMetrics text with prometheus_client's parser (PyPI); returns
/// `name{labels} value` lines of the samples.
fn parse_openmetrics(text: &str) -> Vec<String> {
    parse_with("prometheus_client.openmetrics.parser", text)
}

/// [`parse_openmetrics`] for the classic text format.
fn parse_classic(text: &str) -> Vec<String> {
    parse_with("prometheus_client.parser", text)
}

fn parse_with(parser: &str, text: &str) -> Vec<String> {
    let script = "import sys\nfrom PARSER import text_string_to_metric_families\nfor f in text_string_to_metric_families(sys.stdin.read()):\n    for s in f.samples:\n        labels = ','.join(f'{k}=\"{v}\"' for k, v in sorted(s.labels.items()))\n        print(f'{s.name}{{{labels}}} {s.value}')\n".replace("PARSER", parser);
    let mut child = Command::new(repo().join("tests/upstreams/venv/bin/python"))
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python (run scripts/install-test-deps)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "not valid OpenMetrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn sample(samples: &[String], prefix: &str) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.starts_with(prefix))
        .and_then(|s| s.rsplit(' ').next()?.parse().ok())
}

#[test]
fn metrics_parse_and_show_failures_rising_while_the_upstream_fails() {
    let sb = Sandbox::new();
    let healthy = FaultServer::start(Some(3600));
    let failing = FaultServer::start(Some(3600));
    failing.push((0..1000).map(|_| Reply::Status(503, "down".into(), "text/plain", None)));
    sb.write(
        "config.toml",
        &format!(
            "[daemon]\nstate_dir = \"state\"\nlisten = \"127.0.0.1:0\"\n\n{}{}",
            client("ok", &healthy.url, ""),
            client(
                "down",
                &failing.url,
                "backoff_initial = \"100ms\"\nbackoff_max = \"300ms\""
            )
        ),
    );
    let daemon = sb.start();
    let base = format!("http://{}", daemon.listen_addr());
    wait_until("the listen address", WAIT, || {
        get(&format!("{base}/healthz")).0 != 0
    });
    wait_until("a token for ok", WAIT, || sb.read("ok.token").is_some());
    let metrics = || get_accepting(&format!("{base}/metrics"), PROMETHEUS_ACCEPT);
    let first = parse_openmetrics(&metrics().1);
    std::thread::sleep(Duration::from_millis(1200));
    let (code, text) = metrics();
    assert_eq!(code, 200);
    let second = parse_openmetrics(&text);
    // anyone else gets the classic text format: the same samples, a
    // counter family named as its samples are, no `# EOF`
    let (code, classic) = get(&format!("{base}/metrics"));
    assert_eq!(code, 200);
    assert!(!classic.contains("# EOF") && text.contains("# EOF"));
    assert!(
        classic.contains("# TYPE tokenkeeper_refreshes_total counter"),
        "{classic}"
    );
    let parsed = parse_classic(&classic);
    assert_eq!(
        sample(&parsed, "tokenkeeper_refreshes_total{client=\"ok\"}"),
        Some(1.0)
    );
    let failures = |s: &[String]| {
        sample(
            s,
            "tokenkeeper_refresh_failures_total{client=\"down\",reason=\"server_error\"}",
        )
        .unwrap_or(0.0)
    };
    assert!(
        failures(&second) > failures(&first) && failures(&first) >= 1.0,
        "{} then {}",
        failures(&first),
        failures(&second)
    );
    assert!(
        sample(
            &second,
            "tokenkeeper_token_expiry_timestamp_seconds{client=\"ok\"}"
        )
        .unwrap()
            > 1.7e9
    );
    assert_eq!(
        sample(&second, "tokenkeeper_refreshes_total{client=\"ok\"}"),
        Some(1.0)
    );
    assert!(
        sample(
            &second,
            "tokenkeeper_token_request_duration_seconds_count{client=\"ok\"}"
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(sample(&second, "tokenkeeper_clients{}"), Some(2.0));
    assert!(!text.contains(TOKEN_MARKER));

    // healthy outputs, but "down" has no token: alive yes, ready no
    assert_eq!(get(&format!("{base}/healthz")).0, 200);
    let (code, body) = get(&format!("{base}/readyz"));
    assert_eq!(code, 503);
    assert!(body.contains("down: no valid token"), "{body}");
    let (code, body) = get(&format!("{base}/status"));
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        status["clients"]["down"]["consecutive_failures"]
            .as_u64()
            .unwrap()
            >= 2
    );
    assert!(!body.contains(TOKEN_MARKER));
    daemon.stop();
}

#[test]
fn a_type_notify_service_sees_ready_only_after_the_token_files_exist_then_watchdog_pings() {
    let server = FaultServer::start(Some(3600));
    server.push([Reply::Slow(Duration::from_millis(800))]);
    let sb = Sandbox::new();
    let socket_path = sb.path("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    sb.write_config(&client("a", &server.url, ""));
    let mut cmd = sb.cmd(&["run"]);
    cmd.env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000");
    let daemon = sb.start_with(cmd);
    let start = Instant::now();
    let (mut ready_seen, mut watchdogs, mut status_lines) = (false, 0, Vec::new());
    let mut buf = [0u8; 4096];
    while start.elapsed() < Duration::from_secs(15) && !(ready_seen && watchdogs >= 3) {
        let Ok(n) = socket.recv(&mut buf) else {
            continue;
        };
        let message = String::from_utf8_lossy(&buf[..n]).into_owned();
        for line in message.lines() {
            match line {
                "READY=1" => {
                    assert!(
                        sb.read("a.token").is_some(),
                        "READY=1 before the token file existed"
                    );
                    ready_seen = true;
                }
                "WATCHDOG=1" => watchdogs += 1,
                l if l.starts_with("STATUS=") => status_lines.push(l.to_string()),
                _ => {}
            }
        }
    }
    assert!(ready_seen, "no READY=1");
    assert!(watchdogs >= 3, "{watchdogs} watchdog pings");
    assert!(
        status_lines
            .iter()
            .any(|l| l == "STATUS=1/1 clients healthy"),
        "{status_lines:?}"
    );
    daemon.stop();
}
