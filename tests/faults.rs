//! Against the in-test fault server: every wire variant, and every way an
//! upstream can fail.

use crate::util::*;
use base64::Engine;
use std::time::Duration;

const FAST_RETRY: &str = "backoff_initial = \"100ms\"\nbackoff_max = \"300ms\"";

#[test]
fn every_wire_variant_is_sent_as_configured() {
    let server = FaultServer::start(Some(3600));
    let sb = Sandbox::new();
    sb.write_config(&[
        client("formbody", &server.at("/formbody"), "scope = \"read write\""),
        client("jsonbasic", &server.at("/jsonbasic"), "auth = \"basic\"\nencoding = \"json\"\nscope = \"a b\"\nscope_param = \"scopes\""),
        client("multi", &server.at("/multi"), "encoding = \"multipart\"\nparams = { audience = \"api://x\" }\nheaders = { \"X-Api-Key\" = \"k-1\", Accept = \"application/json; charset=utf-8\" }"),
        client("public", &server.at("/public"), "auth = \"none\"").replace("client_secret = \"public-Secret-Value\"\n", ""),
    ].concat());
    let (code, _, stderr) = sb.run(&["once"]);
    assert_eq!(code, 0, "{stderr}");
    let requests = server.requests();
    let req = |path: &str| {
        requests
            .iter()
            .find(|r| r.path == path)
            .unwrap_or_else(|| panic!("no request to {path}"))
            .clone()
    };

    let r = req("/formbody");
    assert_eq!(r.content_type, "application/x-www-form-urlencoded");
    assert_eq!(r.form("grant_type").as_deref(), Some("client_credentials"));
    assert_eq!(r.form("client_id").as_deref(), Some("formbody-id"));
    assert_eq!(
        r.form("client_secret").as_deref(),
        Some("formbody-Secret-Value")
    );
    assert_eq!(r.form("scope").as_deref(), Some("read write"));
    assert_eq!(r.authorization, None);
    assert!(r.user_agent.starts_with("tokenkeeper/"), "{}", r.user_agent);
    assert_eq!(r.header("accept"), Some("application/json"));

    let r = req("/jsonbasic");
    assert_eq!(r.content_type, "application/json");
    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"grant_type": "client_credentials", "scopes": "a b"})
    );
    let basic = r.authorization.unwrap();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(basic.strip_prefix("Basic ").unwrap())
        .unwrap();
    assert_eq!(
        String::from_utf8(decoded).unwrap(),
        "jsonbasic-id:jsonbasic-Secret-Value"
    );

    let r = req("/multi");
    assert!(
        r.content_type.starts_with("multipart/form-data; boundary="),
        "{}",
        r.content_type
    );
    for part in [
        "name=\"grant_type\"\r\n\r\nclient_credentials",
        "name=\"audience\"\r\n\r\napi://x",
        "name=\"client_secret\"\r\n\r\nmulti-Secret-Value",
    ] {
        assert!(r.body.contains(part), "{part:?} missing from {}", r.body);
    }
    assert_eq!(r.header("x-api-key"), Some("k-1"));
    assert_eq!(r.header("accept"), Some("application/json; charset=utf-8"));

    let r = req("/public");
    assert_eq!(r.form("client_id").as_deref(), Some("public-id"));
    assert_eq!(r.form("client_secret"), None);
}

/// Runs `once` against a server scripted with `replies` (three of each, since
/// `once` retries transient failures); returns (exit, stderr).
fn once_against(replies: Vec<Reply>, extra: &str) -> (i32, String, FaultServer) {
    let server = FaultServer::start(Some(3600));
    server.push(replies);
    let sb = Sandbox::new();
    sb.write_config(&client("a", &server.url, extra));
    let (code, _, stderr) = sb.run(&["once"]);
    assert!(sb.read("a.token").is_none() || code == 0);
    (code, stderr, server)
}

fn thrice(r: Reply) -> Vec<Reply> {
    vec![r.clone(), r.clone(), r]
}

#[test]
fn html_error_pages_show_their_title() {
    let page =
        "<html><head><title>502 Bad Gateway</title></head><body><h1>nginx</h1></body></html>";
    let (code, stderr, _) = once_against(
        thrice(Reply::Status(502, page.into(), "text/html", None)),
        "",
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains("failed: HTTP 502 (text/html, 83 bytes): 502 Bad Gateway"),
        "{stderr}"
    );
}

#[test]
fn malformed_json_is_transient_and_explained() {
    let (code, stderr, server) = once_against(
        vec![Reply::Status(
            200,
            "{\"access_token\": \"abc".into(),
            "application/json",
            None,
        )],
        "",
    );
    assert_eq!(code, 0, "recovers on the next attempt: {stderr}");
    assert!(
        stderr.contains("answered HTTP 200 but the body is not JSON (application/json, 21 bytes)"),
        "{stderr}"
    );
    assert_eq!(server.count(), 2);
}

#[test]
fn oversized_bodies_are_not_read() {
    let (code, stderr, _) = once_against(thrice(Reply::Huge), "");
    assert_eq!(code, 1);
    assert!(
        stderr.contains("with a body over 1024 KiB; not read"),
        "{stderr}"
    );
}

#[test]
fn tokens_with_control_characters_are_refused_without_being_shown() {
    let (code, stderr, _) = once_against(
        thrice(Reply::TokenText(format!("abc{TOKEN_MARKER}\u{1b}[2J"))),
        "",
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains("contains whitespace, a control or a non-ASCII character (byte 14 of 18)"),
        "{stderr}"
    );
    assert!(!stderr.contains(TOKEN_MARKER));
}

#[test]
fn slow_answers_time_out() {
    let (code, stderr, _) = once_against(
        thrice(Reply::Slow(Duration::from_secs(3))),
        "timeout = \"500ms\"",
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains("no complete answer from token endpoint")
            && stderr.contains("within 500ms"),
        "{stderr}"
    );
}

#[test]
fn connection_refused_is_reported() {
    let port = free_port();
    let sb = Sandbox::new();
    sb.write_config(&client(
        "a",
        &format!("http://127.0.0.1:{port}/token"),
        FAST_RETRY,
    ));
    let (code, _, stderr) = sb.run(&["once"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&format!(
            "cannot connect to token endpoint http://127.0.0.1:{port}/token"
        )),
        "{stderr}"
    );
}

#[test]
fn redirects_are_not_followed_with_credentials() {
    let server = FaultServer::start(Some(3600));
    let sb = Sandbox::new();
    sb.write_config(&client("a", &server.url, FAST_RETRY));
    server.push([Reply::Status(302, String::new(), "text/plain", None)]);
    let (code, _, stderr) = sb.run(&["once"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("answered HTTP 302") && stderr.contains("redirects are not followed"),
        "{stderr}"
    );
    assert_eq!(
        server.count(),
        1,
        "a permanent failure is not retried by once"
    );
}

#[test]
fn retry_after_is_honoured() {
    let (code, stderr, server) = once_against(
        vec![Reply::Status(
            429,
            "{}".into(),
            "application/json",
            Some("2".into()),
        )],
        "",
    );
    assert_eq!(code, 0, "{stderr}");
    let r = server.requests();
    let gap = r[1].at - r[0].at;
    assert!(gap >= Duration::from_millis(1900), "retried after {gap:?}");
    assert!(
        stderr.contains("HTTP 429") && stderr.contains("retry after 2s"),
        "{stderr}"
    );
}

#[test]
fn transient_failures_keep_the_last_token_until_the_upstream_recovers() {
    let server = FaultServer::start(Some(2));
    let sb = Sandbox::new();
    sb.write_config(&client("a", &server.url, ""));
    server.push([Reply::Token(Some(2))]);
    server.push((0..6).map(|_| Reply::Status(503, "busy".into(), "text/plain", None)));
    let daemon = sb.start();
    wait_until("the first token", WAIT, || sb.read("a.token").is_some());
    assert_eq!(token_number(&sb.read("a.token").unwrap()), Some(1));
    daemon.wait_log("HTTP 503", 3);
    assert_eq!(
        token_number(&sb.read("a.token").unwrap()),
        Some(1),
        "the last good token stays in place"
    );
    wait_until("a token after recovery", WAIT, || {
        token_number(&sb.read("a.token").unwrap()).unwrap() >= 8
    });
    assert!(
        daemon.logs().contains("current token stays in place until")
            || daemon.logs().contains("NO VALID TOKEN")
    );
}

#[test]
fn a_restart_with_a_valid_cached_token_makes_no_request() {
    let server = FaultServer::start(Some(3600));
    let sb = Sandbox::new();
    sb.write_config(&client("a", &server.url, ""));
    let daemon = sb.start();
    wait_until("the token", WAIT, || sb.read("a.token").is_some());
    daemon.stop();
    assert_eq!(server.count(), 1);
    std::fs::remove_file(sb.path("a.token")).unwrap();
    let daemon = sb.start();
    daemon.wait_log("using the cached token", 1);
    wait_until("the output rewritten from the cache", WAIT, || {
        sb.read("a.token").is_some()
    });
    // the task's plan, as it logged it: the next refresh is most of an hour away
    let logs = daemon.logs();
    let next: u64 = logs
        .lines()
        .find(|l| l.contains("using the cached token"))
        .and_then(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("next_refresh_in_s="))
        })
        .and_then(|n| n.parse().ok())
        .expect("the plan in the log");
    assert!(next > 1800, "next refresh in {next} s");
    assert_eq!(server.count(), 1, "no request after a restart");
    assert_eq!(token_number(&sb.read("a.token").unwrap()), Some(1));
    daemon.stop();

    // a different request (scope) is a different token: fetched anew
    sb.write_config(&client("a", &server.url, "scope = \"other\""));
    let daemon = sb.start();
    wait_until("a new token", WAIT, || server.count() == 2);
    daemon.stop();
}

#[test]
fn missing_or_zero_lifetimes_never_loop() {
    // expires_in 0: a token expired on arrival is a failed refresh, never
    // written, and asked for again with backoff (200 ms doubling to 2 s)
    let server = FaultServer::start(Some(0));
    let sb = Sandbox::new();
    sb.write_config(&client("a", &server.url, ""));
    let daemon = sb.start();
    std::thread::sleep(Duration::from_millis(3500));
    let n = server.count();
    assert!((3..=12).contains(&n), "{n} requests in 3.5 s");
    assert!(daemon.logs().contains("a token that has already expired"));
    assert_eq!(
        sb.read("a.token"),
        None,
        "an expired token is never written"
    );
    daemon.stop();
    let (code, _, stderr) = sb.run(&["once"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("already expired"), "{stderr}");
    assert_eq!(sb.read("a.token"), None);

    // a tiny lifetime is used, and refreshed no sooner than min_interval
    server.set_lifetime(Some(1));
    let sb = Sandbox::new();
    sb.write_config(&client("a", &server.url, ""));
    let before = server.count();
    let daemon = sb.start();
    std::thread::sleep(Duration::from_millis(3500));
    let n = server.count() - before;
    assert!(
        (3..=5).contains(&n),
        "{n} requests in 3.5 s with min_interval 1s"
    );
    assert!(daemon.logs().contains("short token lifetime"));
    daemon.stop();

    server.set_lifetime(None);
    let sb = Sandbox::new();
    sb.write_config(
        &client("a", &server.url, "default_lifetime = \"2h\"")
            .replace("path = \"a.token\"", "path = \"a.json\"\nformat = \"json\""),
    );
    assert_eq!(sb.run(&["once"]).0, 0);
    let json: serde_json::Value = serde_json::from_str(&sb.read("a.json").unwrap()).unwrap();
    let exp = time::OffsetDateTime::parse(
        json["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let lifetime = exp - time::OffsetDateTime::now_utc();
    assert!(
        lifetime > time::Duration::minutes(119) && lifetime <= time::Duration::minutes(120),
        "{lifetime}"
    );
}

#[test]
fn sigusr1_refreshes_every_client_now() {
    let server = FaultServer::start(Some(3600));
    let sb = Sandbox::new();
    sb.write_config(&format!(
        "{}{}",
        client("a", &server.at("/a"), ""),
        client("b", &server.at("/b"), "")
    ));
    let daemon = sb.start();
    wait_until("both tokens", WAIT, || server.count() == 2);
    daemon.signal(nix::sys::signal::Signal::SIGUSR1);
    wait_until("both refreshed", WAIT, || server.count() == 4);
    wait_until("new files", WAIT, || {
        token_number(&sb.read("a.token").unwrap()).unwrap() > 2
            && token_number(&sb.read("b.token").unwrap()).unwrap() > 2
    });
    daemon.stop();
}

#[test]
fn one_black_holed_endpoint_does_not_hold_up_the_others() {
    // a listener that never accepts: requests to it hang until `timeout`
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hung_url = format!("http://{}/token", hole.local_addr().unwrap());
    let server = FaultServer::start(Some(3600));
    let sb = Sandbox::new();
    // the hung clients sort first, so they start (and queue) first
    let mut config = String::new();
    for i in 0..100 {
        config += &client(&format!("a-hung-{i:03}"), &hung_url, "timeout = \"60s\"");
    }
    for i in 0..200 {
        config += &client(&format!("b-ok-{i:03}"), &server.url, "");
    }
    sb.write_config(&config);
    let daemon = sb.start();
    daemon.wait_until(
        "every healthy client's token, long before the hung ones time out",
        || (0..200).all(|i| sb.path(&format!("b-ok-{i:03}.token")).exists()),
    );
    assert!(!sb.path("a-hung-000.token").exists());
    daemon.stop();
    drop(hole);
}

/// A crash signal crashes: systemd's Restart=on-failure and a core dump
/// depend on it (Rust's runtime used to pass over a SIGSEGV sent by kill).
#[test]
fn a_sigsegv_ends_the_daemon_by_that_signal() {
    use std::os::unix::process::ExitStatusExt;
    let server = FaultServer::start(Some(3600));
    let sb = Sandbox::new();
    sb.write_config(&client("a", &server.url, ""));
    let daemon = sb.start();
    wait_until("a token", WAIT, || sb.read("a.token").is_some());
    daemon.signal(nix::sys::signal::Signal::SIGSEGV);
    let (status, _) = daemon.exits_after(nix::sys::signal::Signal::SIGSEGV);
    assert_eq!(status.signal(), Some(libc::SIGSEGV), "{status:?}");
}
