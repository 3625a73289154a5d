//! No secret, password or token in any log line, at any level.

use crate::util::*;
use base64::Engine;
use nix::sys::signal::Signal;
use std::time::Duration;

#[test]
fn nothing_secret_reaches_the_logs_at_trace_level() {
    let (server_a, server_b) = (FaultServer::start(Some(2)), FaultServer::start(Some(2)));
    let sb = Sandbox::new();
    sb.write_config(&format!(
        "{}{}",
        client("a", &server_a.url, "auth = \"basic\""),
        client("b", &server_b.url, "encoding = \"json\"")
    ));
    // an endpoint that echoes the secret back in its error must not leak it either
    server_a.push([
        Reply::Status(
            401,
            r#"{"error":"invalid_client","error_description":"bad secret a-Secret-Value"}"#.into(),
            "application/json",
            None,
        ),
        Reply::Status(200, "{not json".into(), "application/json", None),
    ]);
    server_b.push([
        Reply::Status(
            500,
            "<html><title>oops b-Secret-Value</title></html>".into(),
            "text/html",
            None,
        ),
        Reply::TokenText(format!("{TOKEN_MARKER}\n")),
    ]);
    let mut cmd = sb.cmd(&["run"]);
    cmd.env("RUST_LOG", "trace");
    let daemon = sb.start_with(cmd);
    wait_until("tokens for both", WAIT, || {
        sb.read("a.token").is_some() && sb.read("b.token").is_some()
    });
    daemon.signal(Signal::SIGUSR1);
    std::thread::sleep(Duration::from_millis(2500));
    daemon.signal(Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    let mut logs = daemon.logs();
    daemon.stop();

    let mut cmd = sb.cmd(&["once"]);
    cmd.env("RUST_LOG", "trace");
    let out = cmd.output().unwrap();
    logs.push_str(&String::from_utf8_lossy(&out.stderr));
    let mut cmd = sb.cmd(&["token", "a"]);
    cmd.env("RUST_LOG", "trace");
    let out = cmd.output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(TOKEN_MARKER),
        "token prints the token on stdout"
    );
    logs.push_str(&String::from_utf8_lossy(&out.stderr));

    assert!(
        logs.len() > 10_000,
        "trace logging was on ({} bytes)",
        logs.len()
    );
    assert!(logs.contains("invalid_client"), "the refusal was logged");
    let basic = base64::engine::general_purpose::STANDARD.encode("a-id:a-Secret-Value");
    for needle in [
        TOKEN_MARKER,
        "a-Secret-Value",
        "b-Secret-Value",
        basic.as_str(),
    ] {
        if let Some(at) = logs.find(needle) {
            let start = logs[..at].rfind('\n').unwrap_or(0);
            panic!(
                "{needle:?} appears in the logs: {}",
                &logs[start..(at + 200).min(logs.len())]
            );
        }
    }
}

/// The harness's own secret scan (run when every sandbox is dropped) has
/// teeth: a refresh token planted in a log is found.
#[test]
fn the_harness_secret_scan_finds_a_planted_leak() {
    let sb = Sandbox::new();
    sb.write("some.rt", "rt-0123456789abcdef\n");
    sb.write(
        "state/x.json",
        r#"{"access_token":"at-abcdefghijklmnop","expires_at":"2026-01-01T00:00:00Z"}"#,
    );
    assert!(sb.secrets().contains(&"rt-0123456789abcdef".to_string()));
    assert!(sb.secrets().contains(&"at-abcdefghijklmnop".to_string()));
    assert!(!sb.secrets().iter().any(|s| s.starts_with("2026")));
    for leak in ["rt-0123456789abcdef", "at-abcdefghijklmnop"] {
        sb.keep_log(&format!(
            "line one\nTRACE sending refresh_token={leak} now\n"
        ));
        let scan = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            sb.assert_no_secret_in_logs()
        }));
        let message = scan.expect_err("the planted leak was not found");
        let message = message.downcast_ref::<String>().unwrap();
        assert!(message.contains(leak), "{message}");
        assert!(message.contains("TRACE sending"), "{message}");
        for entry in std::fs::read_dir(sb.dir.path()).unwrap().flatten() {
            if entry.path().extension().is_some_and(|e| e == "log") {
                std::fs::remove_file(entry.path()).unwrap();
            }
        }
    }
}
