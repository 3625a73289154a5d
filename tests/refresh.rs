//! `tokenkeeper refresh NAME`: what a consumer that was just refused (HTTP
//! 401) runs — one request however many ask, an answer only once every
//! output holds it, the endpoint's own words when it refuses, and without a
//! daemon a new token all the same.

use crate::util::*;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::process::Stdio;
use std::time::Duration;

/// A daemon on `clients`, once `file` holds the first token.
fn daemon_on(clients: &str, file: &str) -> (Sandbox, Daemon) {
    let sb = Sandbox::new();
    sb.write_config(clients);
    let daemon = sb.start();
    daemon.wait_until("the first token", || sb.read(file).is_some());
    (sb, daemon)
}

/// A client `a` with two file outputs, `a.token` and `a2.token`.
fn two_outputs(server: &FaultServer) -> String {
    client("a", &server.url, "")
        + "[[clients.a.outputs]]\ntype = \"file\"\npath = \"a2.token\"\nformat = \"raw\"\n"
}

#[test]
fn refresh_returns_a_new_token_once_every_output_holds_it() {
    let server = FaultServer::start(Some(3600));
    let (sb, daemon) = daemon_on(&two_outputs(&server), "a2.token");
    let socket = sb.path("state/control.sock");
    let meta = std::fs::symlink_metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    for n in [2, 3] {
        let (code, stdout, stderr) = sb.run(&["refresh", "a"]);
        assert_eq!(code, 0, "{stderr}");
        let token = stdout.trim_end();
        assert_eq!(token_number(token), Some(n), "{stdout}");
        // read the moment the command returned: every output holds it already
        assert_eq!(sb.read("a.token").as_deref(), Some(token));
        assert_eq!(sb.read("a2.token").as_deref(), Some(token));
        assert_eq!(server.count(), n as usize, "one request per refresh");
    }
    let logs = daemon.logs();
    daemon.stop();
    assert!(logs.contains("refresh requested"), "{logs}");
    assert!(!socket.exists(), "the socket is removed at exit");
    sb.assert_no_secret_in_logs();
}

#[test]
fn a_hundred_callers_at_once_cause_one_request_and_get_one_token() {
    let server = FaultServer::start(Some(3600));
    let (sb, daemon) = daemon_on(&client("a", &server.url, ""), "a.token");
    // the endpoint takes a second to answer, as busy ones do
    server.push([Reply::Slow(Duration::from_secs(1))]);
    let callers: Vec<_> = (0..100)
        .map(|_| {
            sb.cmd(&["refresh", "a"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut answers = std::collections::BTreeSet::new();
    for caller in callers {
        let out = caller.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        sb.keep_log(&stderr);
        assert!(out.status.success(), "{stderr}");
        answers.insert(String::from_utf8_lossy(&out.stdout).trim_end().to_string());
    }
    assert_eq!(
        server.count(),
        2,
        "the first token, then one refresh for all 100"
    );
    assert_eq!(answers.len(), 1, "one token for everyone");
    let token = answers.into_iter().next().unwrap();
    assert_eq!(token_number(&token), Some(2));
    assert_eq!(sb.read("a.token"), Some(token));
    // a caller who starts after that answer arrived asks for a newer one
    let (code, stdout, _) = sb.run(&["refresh", "a"]);
    assert_eq!((code, token_number(stdout.trim_end())), (0, Some(3)));
    assert_eq!(server.count(), 3);
    daemon.stop();
    sb.assert_no_secret_in_logs();
}

#[test]
fn a_refusal_is_the_endpoints_error_and_exit_1_and_the_old_token_stays() {
    let server = FaultServer::start(Some(3600));
    let (sb, daemon) = daemon_on(&client("a", &server.url, ""), "a.token");
    let first = sb.read("a.token").unwrap();
    server.push([Reply::Status(
        401,
        r#"{"error":"invalid_client","error_description":"client a-id is disabled"}"#.into(),
        "application/json",
        None,
    )]);
    let (code, stdout, stderr) = sb.run(&["refresh", "a"]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stdout, "");
    assert!(
        stderr.contains("invalid_client") && stderr.contains("client a-id is disabled"),
        "{stderr}"
    );
    assert_eq!(sb.read("a.token"), Some(first));
    let (code, _, stderr) = sb.run(&["refresh", "nope"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("no client named \"nope\""), "{stderr}");
    daemon.stop();
    sb.assert_no_secret_in_logs();
}

#[test]
fn refresh_names_the_output_that_could_not_take_the_new_token() {
    let server = FaultServer::start(Some(3600));
    let clients = client("a", &server.url, "")
        + "[[clients.a.outputs]]\ntype = \"file\"\npath = \"blocked/a.token\"\n";
    let (sb, daemon) = daemon_on(&clients, "blocked/a.token");
    // the output's directory becomes a file: no write can succeed there
    std::fs::remove_dir_all(sb.path("blocked")).unwrap();
    sb.write("blocked", "not a directory");
    let (code, stdout, stderr) = sb.run(&["refresh", "a"]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stdout, "", "no token for an answer that is not everywhere");
    assert!(
        stderr.contains("could not be written to file") && stderr.contains("blocked/a.token"),
        "{stderr}"
    );
    // the other output has it
    assert_eq!(token_number(&sb.read("a.token").unwrap()), Some(2));
    // and the status says why, by a reason the metrics use too
    daemon.wait_until("the failure's reason in the status", || {
        let status: serde_json::Value =
            serde_json::from_str(&sb.run(&["status", "--json"]).1).unwrap_or_default();
        let outputs = &status["clients"]["a"]["outputs"];
        outputs
            .as_object()
            .is_some_and(|o| o.values().any(|o| o["reason"] == "filesystem"))
    });
    daemon.stop();
}

#[test]
fn without_a_daemon_refresh_fetches_a_new_token_itself() {
    let server = FaultServer::start(Some(3600));
    let sb = Sandbox::new();
    sb.write_config(&client("a", &server.url, ""));
    for n in [1, 2] {
        let (code, stdout, stderr) = sb.run(&["refresh", "a"]);
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(token_number(stdout.trim_end()), Some(n));
        assert_eq!(
            server.count(),
            n as usize,
            "a cached token does not answer a refresh"
        );
    }
    // `token` is content with the one refresh left in state_dir
    let (code, stdout, _) = sb.run(&["token", "a"]);
    assert_eq!((code, token_number(stdout.trim_end())), (0, Some(2)));
    assert_eq!(server.count(), 2);
    server.push([Reply::Status(
        400,
        r#"{"error":"invalid_scope","error_description":"scope x is unknown"}"#.into(),
        "application/json",
        None,
    )]);
    let (code, stdout, stderr) = sb.run(&["refresh", "a"]);
    assert_eq!((code, stdout.as_str()), (1, ""), "{stderr}");
    assert!(
        stderr.contains("invalid_scope") && stderr.contains("scope x is unknown"),
        "{stderr}"
    );
    sb.assert_no_secret_in_logs();
}

#[test]
fn only_the_daemons_user_or_root_may_ask_it() {
    let server = FaultServer::start(Some(3600));
    let (sb, daemon) = daemon_on(&client("a", &server.url, ""), "a.token");
    let nobody = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ];
    for open in [sb.dir.path(), &sb.config()] {
        std::fs::set_permissions(open, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let run_as_nobody = || {
        let out = sb.cmd_via(&nobody, &["refresh", "a"]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        sb.keep_log(&stderr);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr,
        )
    };
    // state_dir is 0700: the socket cannot even be reached
    let (code, stdout, stderr) = run_as_nobody();
    assert_eq!((code, stdout.as_str()), (Some(1), ""), "{stderr}");
    assert!(
        stderr.contains("cannot ask the daemon") && stderr.contains("ermission denied"),
        "{stderr}"
    );
    // and opened up by hand, the daemon itself refuses another user
    std::fs::set_permissions(sb.path("state"), std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(
        sb.path("state/control.sock"),
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    let (code, stdout, stderr) = run_as_nobody();
    assert_eq!((code, stdout.as_str()), (Some(1), ""), "{stderr}");
    assert!(
        stderr.contains("only the daemon's user or root"),
        "{stderr}"
    );
    assert_eq!(server.count(), 1, "nobody's asks caused no request");
    daemon.stop();
}
