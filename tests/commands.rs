//! Exit statuses and output of every command, as the contract states them.

use crate::util::*;
use std::time::Duration;

#[test]
fn check_reports_every_error_with_file_line_column_and_key() {
    let sb = Sandbox::new();
    sb.write_config(&client("a", "https://auth.example.com/token", ""));
    let (code, stdout, _) = sb.run(&["check"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("ok, 1 client(s): a"), "{stdout}");

    sb.write_config(&client(
        "a",
        "https://auth.example.com/token",
        "refresh_ratio = 2\ncolour = 1",
    ));
    let (code, _, stderr) = sb.run(&["check"]);
    assert_eq!(code, 2);
    let config = sb.config().display().to_string();
    assert!(
        stderr.contains(&format!("{config}:12:1: clients.a: unknown key `colour`")),
        "{stderr}"
    );

    // a validation error in one client and a build error (unreadable secret) in another: both at once
    let b = client("b", "https://auth.example.com/token", "").replace(
        "client_secret = \"b-Secret-Value\"",
        "client_secret_file = \"missing.secret\"",
    );
    sb.write_config(&(client("a", "https://auth.example.com/token", "refresh_ratio = 2") + &b));
    let (code, _, stderr) = sb.run(&["check"]);
    assert_eq!(code, 2);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(lines[0].ends_with(":11:17: clients.a.refresh_ratio: 2 must lie strictly between 0 and 1 (a share of the token's lifetime)"), "{stderr}");
    assert!(
        lines[1].contains(":20:22: clients.b.client_secret_file: cannot read")
            && lines[1].contains("missing.secret: No such file"),
        "{stderr}"
    );
}

#[test]
fn once_exits_0_1_or_2() {
    let server = FaultServer::start(Some(3600));
    let sb = Sandbox::new();
    sb.write_config(&format!(
        "{}{}",
        client("a", &server.at("/a"), ""),
        client("b", &server.at("/b"), "")
    ));
    let (code, _, stderr) = sb.run(&["once"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(token_number(&sb.read("a.token").unwrap()).is_some());
    assert!(token_number(&sb.read("b.token").unwrap()).is_some());

    server.push([Reply::Status(
        401,
        r#"{"error":"invalid_client"}"#.into(),
        "application/json",
        None,
    )]);
    let (code, _, stderr) = sb.run(&["once"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("invalid_client"), "{stderr}");

    sb.write("config.toml", "[clients.x]\n");
    assert_eq!(sb.run(&["once"]).0, 2);
    assert_eq!(
        sb.run(&["run"]).0,
        2,
        "run exits 2 on an invalid config at start"
    );
}

#[test]
fn token_prints_a_valid_token_from_cache_or_by_fetching() {
    let server = FaultServer::start(Some(3600));
    let sb = Sandbox::new();
    sb.write_config(&client("a", &server.url, ""));
    let (code, stdout, stderr) = sb.run(&["token", "a"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(token_number(stdout.trim()), Some(1));
    let (code, stdout, _) = sb.run(&["token", "a"]);
    assert_eq!(
        (code, token_number(stdout.trim())),
        (0, Some(1)),
        "second call is served from the state cache"
    );
    assert_eq!(server.count(), 1);

    let (code, stdout, stderr) = sb.run(&["token", "nope"]);
    assert_eq!((code, stdout.as_str()), (1, ""));
    assert!(
        stderr.contains("no client named \"nope\"") && stderr.contains("(clients: a)"),
        "{stderr}"
    );

    let sb2 = Sandbox::new();
    sb2.write_config(&client("a", &server.url, ""));
    server.push([Reply::Status(
        400,
        r#"{"error":"invalid_grant","error_description":"grant revoked"}"#.into(),
        "application/json",
        None,
    )]);
    let (code, stdout, stderr) = sb2.run(&["token", "a"]);
    assert_eq!((code, stdout.as_str()), (1, ""));
    assert!(
        stderr.contains("HTTP 400 invalid_grant: grant revoked"),
        "{stderr}"
    );
}

#[test]
fn once_client_and_token_read_one_client_and_are_not_stopped_by_another() {
    let server = FaultServer::start(Some(3600));
    let sb = Sandbox::new();
    let broken = client("c", &server.at("/c"), "colour = \"blue\"");
    sb.write_config(
        &[
            client("a", &server.at("/a"), ""),
            client("b", &server.at("/b"), ""),
            broken.clone(),
        ]
        .concat(),
    );
    // the whole config is invalid (c): `once` refuses it, exit 2
    assert_eq!(sb.run(&["once"]).0, 2);
    // one client is read alone: b's request, b's output, nothing else
    let (code, _, stderr) = sb.run(&["once", "--client", "b"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!((server.count_path("/a"), server.count_path("/b")), (0, 1));
    assert!(sb.read("b.token").is_some() && sb.read("a.token").is_none());
    let (code, stdout, stderr) = sb.run(&["token", "a"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(token_number(stdout.trim()).is_some());
    // the named client's own errors still stop it, with their own lines
    let (code, _, stderr) = sb.run(&["once", "--client", "c"]);
    assert_eq!(code, 2, "an invalid config is once's exit 2");
    assert!(
        stderr.contains("clients.c: unknown key `colour`"),
        "{stderr}"
    );
    let (code, _, stderr) = sb.run(&["token", "c"]);
    assert_eq!(code, 1, "and token's exit 1");
    assert!(
        stderr.contains("clients.c: unknown key `colour`"),
        "{stderr}"
    );
    let (code, _, stderr) = sb.run(&["once", "--client", "nope"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("(clients: a, b, c)"), "{stderr}");
}

#[test]
fn sigterm_stops_within_a_second_and_leaves_every_file() {
    let server = FaultServer::start(Some(3600));
    let sb = Sandbox::new();
    sb.write_config(&client("a", &server.url, ""));
    let daemon = sb.start();
    wait_until("the token file", WAIT, || sb.read("a.token").is_some());
    let (status, took) = daemon.stop();
    assert_eq!(status.code(), Some(0));
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(token_number(&sb.read("a.token").unwrap()).is_some());
    assert!(sb.path("state/a.state").exists());
}

#[test]
fn status_shows_a_table_of_clients() {
    let server = FaultServer::start(Some(3600));
    let sb = Sandbox::new();
    sb.write_config(&format!(
        "{}{}",
        client("a", &server.at("/a"), ""),
        client("b", &server.at("/b"), "")
    ));
    server.push([Reply::Status(503, "down".into(), "text/plain", None)]);
    let daemon = sb.start();
    wait_until("both tokens", WAIT, || {
        sb.read("a.token").is_some() && sb.read("b.token").is_some()
    });
    // (asked of the daemon: live)
    wait_until("a status with both clients", WAIT, || {
        let out = sb.run(&["status"]).1;
        out.contains("daemon running")
            && out
                .lines()
                .any(|l| l.starts_with("a ") && l.contains("in "))
    });
    let (code, stdout, _) = sb.run(&["status"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("daemon running"), "{stdout}");
    assert!(
        stdout.contains("CLIENT") && stdout.contains("EXPIRES"),
        "{stdout}"
    );
    let a = stdout
        .lines()
        .find(|l| l.starts_with("a "))
        .expect("row for a");
    assert!(a.contains("in 59m") || a.contains("in 60m"), "{a}");
    // a running daemon writes no status file: nothing on disk while it runs
    assert_eq!(sb.read("state/status.json"), None);
    daemon.stop();
    assert!(
        sb.read("state/status.json").is_some(),
        "written once, at the stop"
    );
    let (_, stdout, _) = sb.run(&["status"]);
    assert!(stdout.contains("daemon not running"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("a ") && l.contains("in ")),
        "{stdout}"
    );
}

/// `tokenkeeper dev` with 3 s tokens in the sandbox's `demo/`.
fn dev_command(sb: &Sandbox) -> std::process::Command {
    let mut cmd = std::process::Command::new(bin());
    cmd.args(["dev", "--dir"])
        .arg(sb.path("demo"))
        .args(["--lifetime", "3s"])
        .current_dir(sb.dir.path())
        .env_remove("RUST_LOG");
    cmd
}

#[test]
fn dev_demo_rotates_tokens_within_seconds() {
    let sb = Sandbox::new();
    let daemon = sb.start_with(dev_command(&sb));
    let mut seen = Vec::new();
    wait_until("two demo tokens", WAIT, || {
        if let Some(t) = sb.read("demo/demo.token") {
            if seen.last() != Some(&t) {
                seen.push(t);
            }
        }
        seen.len() >= 2
    });
    let claims = jwt_claims(&seen[1]);
    assert_eq!(claims["iss"], "tokenkeeper-dev");
    assert!(
        sb.read("demo/demo.header")
            .unwrap()
            .contains("X-Demo-Tenant: tenant-1")
    );
    let (status, _) = daemon.stop();
    assert!(status.success());
}

#[test]
fn json_logs_are_one_object_per_line_with_the_client() {
    let server = FaultServer::start(Some(3600));
    let sb = Sandbox::new();
    sb.write(
        "config.toml",
        &format!(
            "[daemon]\nstate_dir = \"state\"\nlog_format = \"json\"\n\n{}",
            client("a", &server.url, "")
        ),
    );
    let (code, _, stderr) = sb.run(&["once"]);
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    let written = lines
        .iter()
        .find(|l| l["message"] == "token written")
        .expect("a 'token written' line");
    assert_eq!(written["client"], "a");
    assert_eq!(written["level"], "INFO");
    assert!(written["expires_at"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn a_secret_file_that_never_ends_is_a_config_error_not_an_out_of_memory_kill() {
    let sb = Sandbox::new();
    sb.write_config(&client("a", "https://auth.example.com/token", "").replace(
        "client_secret = \"a-Secret-Value\"",
        "client_secret_file = \"/dev/zero\"",
    ));
    let (code, _, stderr) = sb.run(&["check"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("clients.a.client_secret_file")
            && stderr.contains("/dev/zero")
            && stderr.contains("a device, not a regular file"),
        "{stderr}"
    );
}

#[test]
fn dev_keeps_an_edited_config_and_says_so() {
    let sb = Sandbox::new();
    let dev = || sb.start_with(dev_command(&sb));
    let daemon = dev();
    wait_until("the demo token", WAIT, || {
        sb.read("demo/demo.token").is_some()
    });
    daemon.stop();
    // a pristine demo config is written anew, an edited one is kept
    let daemon = dev();
    wait_until("the demo token again", WAIT, || {
        sb.read("demo/demo.token").is_some()
    });
    assert!(!daemon.logs().contains("keeping your edited"));
    daemon.stop();
    let edited = sb.read("demo/config.toml").unwrap() + "\n# my own note\n";
    sb.write("demo/config.toml", &edited);
    let daemon = dev();
    daemon.wait_log("keeping your edited", 1);
    wait_until("a token from the edited config", WAIT, || {
        sb.read("demo/demo.token").is_some()
    });
    daemon.stop();
    assert!(
        sb.read("demo/config.toml")
            .unwrap()
            .contains("# my own note")
    );
}

#[test]
fn a_fifo_at_the_config_path_is_an_error_not_a_hang() {
    let server = FaultServer::start(Some(3600));
    let sb = Sandbox::new();
    let fifo = sb.path("fifo.toml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let started = std::time::Instant::now();
    let mut check = std::process::Command::new(bin())
        .args(["check", "--config"])
        .arg(&fifo)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(status) = check.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(5) {
            let _ = check.kill();
            let _ = check.wait();
            panic!("`check` of a FIFO still blocked after 5 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stderr = read_all(check.stderr.take().unwrap());
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("a FIFO, not a regular file"), "{stderr}");

    // the daemon's config replaced by a FIFO, then SIGHUP: refused, and
    // SIGTERM still stops it
    sb.write_config(&client("a", &server.url, ""));
    let daemon = sb.start();
    daemon.wait_until("the token", || sb.read("a.token").is_some());
    std::fs::rename(&fifo, sb.config()).unwrap();
    daemon.signal(nix::sys::signal::Signal::SIGHUP);
    daemon.wait_log("a FIFO, not a regular file", 1);
    let (status, took) = daemon.stop();
    assert_eq!(status.code(), Some(0));
    assert!(took < Duration::from_secs(2), "{took:?}");
}

#[test]
fn signals_during_start_up_do_not_kill_the_daemon() {
    use nix::sys::signal::{Signal, kill};
    let server = FaultServer::start(Some(3600));
    let sb = Sandbox::new();
    let clients: String = (0..1000)
        .map(|i| client(&format!("c{i}"), &server.url, ""))
        .collect();
    sb.write_config(&clients);
    let mut daemon = sb.start();
    // the way a `systemctl reload` right after start, or a consumer asking
    // for a refresh, would come: while the config is still being loaded
    std::thread::sleep(Duration::from_millis(20));
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(400) {
        let _ = kill(daemon.pid(), Signal::SIGHUP);
        let _ = kill(daemon.pid(), Signal::SIGUSR1);
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(daemon.is_running(), "{}", daemon.logs());
    daemon.wait_log("tokenkeeper started", 1);
    let (status, _) = daemon.stop();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn log_lines_carry_no_colour_codes_off_a_terminal() {
    let server = FaultServer::start(Some(3600));
    let sb = Sandbox::new();
    sb.write_config(&client("a", &server.url, ""));
    let mut cmd = sb.cmd(&["run"]);
    cmd.env_remove("NO_COLOR").env("RUST_LOG", "info");
    let daemon = sb.start_with(cmd);
    daemon.wait_log("token refreshed", 1);
    let logs = daemon.logs();
    daemon.stop();
    assert!(!logs.contains('\x1b'), "{logs:?}");
}

#[test]
fn listen_beyond_loopback_is_warned_about_in_check_and_the_log() {
    let server = FaultServer::start(Some(3600));
    let sb = Sandbox::new();
    // (port 0: the kernel picks one when the daemon binds)
    sb.write_config_with("listen = \"0.0.0.0:0\"", &client("a", &server.url, ""));
    let (code, _, stderr) = sb.run(&["check"]);
    assert_eq!(code, 0, "a warning, not an error");
    assert!(
        stderr.contains("warning: daemon.listen") && stderr.contains("reachable from other hosts"),
        "{stderr}"
    );
    let daemon = sb.start();
    daemon.wait_log("reachable from other hosts", 1);
    daemon.stop();

    sb.write_config_with("listen = \"127.0.0.1:0\"", &client("a", &server.url, ""));
    let (code, _, stderr) = sb.run(&["check"]);
    assert_eq!(code, 0);
    assert!(!stderr.contains("warning"), "{stderr}");
}

/// Every shipped example and every README config block with a client, as
/// the config it is, run through `check` outside systemd: the unit's
/// directories default as documented, and the only complaints allowed are
/// secret files that are not on this machine.
#[test]
fn every_example_and_readme_config_checks_outside_systemd() {
    let sb = Sandbox::new();
    let creds = sb.path("credentials");
    std::fs::create_dir(&creds).unwrap();
    let mut configs = Vec::new();
    let mut paths: Vec<_> = std::fs::read_dir(repo().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.push(repo().join("packaging/config.example.toml"));
    paths.sort();
    for path in paths {
        configs.push((
            path.display().to_string(),
            std::fs::read_to_string(&path).unwrap(),
        ));
    }
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    // ```toml blocks, also indented ones in a list (the indent is dropped)
    let mut block: Option<(usize, String)> = None;
    for line in readme.lines() {
        match &mut block {
            None => {
                if let Some(indent) = line.strip_suffix("```toml") {
                    if indent.trim().is_empty() {
                        block = Some((indent.len(), String::new()));
                    }
                }
            }
            Some((indent, body)) => {
                if line.trim() == "```" {
                    if body.contains("[clients.") {
                        let n = configs.len() + 1;
                        configs.push((format!("README.md toml block {n}"), body.clone()));
                    }
                    block = None;
                } else {
                    body.push_str(line.get(*indent..).unwrap_or(line.trim_start()));
                    body.push('\n');
                }
            }
        }
    }
    assert!(configs.len() > 8, "{} configs", configs.len());
    for (name, text) in configs {
        let mut files: Vec<&str> = text
            .split("$CREDENTIALS_DIRECTORY/")
            .skip(1)
            .map(|rest| rest.split('"').next().unwrap())
            .collect();
        // keys before the certificates made for them
        files.sort_by_key(|f| f.ends_with(".crt"));
        for file in files {
            credential_file(&creds, file);
        }
        sb.write("config.toml", &text);
        let mut check = std::process::Command::new(bin());
        // secrets given in the environment, as the config says
        for rest in text.split("_env = \"").skip(1) {
            check.env(rest.split('"').next().unwrap(), "a-dummy-secret-value");
        }
        let out = check
            .args(["check", "--config"])
            .arg(sb.config())
            .env("CREDENTIALS_DIRECTORY", &creds)
            .env_remove("RUNTIME_DIRECTORY")
            .env_remove("STATE_DIRECTORY")
            .env_remove("TOKENKEEPER_CONFIG")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // what only the machine it runs on can supply
        let machine = ["cannot read", "no group named", "no user named"];
        let unexpected: Vec<&str> = stderr
            .lines()
            .filter(|l| !machine.iter().any(|m| l.contains(m)) && !l.contains(": warning: "))
            .collect();
        assert!(unexpected.is_empty(), "{name}:\n{stderr}");
        if !machine.iter().any(|m| stderr.contains(m)) {
            assert_eq!(out.status.code(), Some(0), "{name}:\n{stderr}");
        }
    }
}

#[test]
fn status_needs_no_secret() {
    let sb = Sandbox::new();
    sb.write_config(&client("a", "https://auth.example.com/token", "").replace(
        "client_secret = \"a-Secret-Value\"",
        "client_secret_file = \"not-here.secret\"",
    ));
    assert_eq!(sb.run(&["check"]).0, 2);
    let (code, stdout, stderr) = sb.run(&["status"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("CLIENT") && stdout.contains("\na "),
        "{stdout}"
    );
}
