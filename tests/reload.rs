//! Reload by SIGHUP and by editing the file (rename and in place): a diff is
//! applied, and an invalid config changes nothing.

use crate::util::*;
use nix::sys::signal::Signal;
use std::fs;
use std::io::Write;

fn three(server: &FaultServer) -> String {
    [
        client("a", &server.at("/a"), ""),
        client("b", &server.at("/b"), ""),
        client("c", &server.at("/c"), ""),
    ]
    .concat()
}

fn changed(server: &FaultServer) -> String {
    [
        client("a", &server.at("/a"), ""),
        client("b", &server.at("/b"), "scope = \"more\""),
        client("d", &server.at("/d"), ""),
    ]
    .concat()
}

fn with_config_text(sb: &Sandbox, clients: &str) -> String {
    format!(
        "[daemon]\nstate_dir = \"{}\"\n\n{clients}",
        sb.path("state").display()
    )
}

fn check_diff_applied(sb: &Sandbox, server: &FaultServer, daemon: &Daemon) {
    wait_until("the added client's token", WAIT, || {
        sb.read("d.token").is_some()
    });
    wait_until("the changed client refetched", WAIT, || {
        server.count_path("/b") == 2
    });
    // the supervisor's decision, not a pause long enough to see a request:
    // `a` is left alone
    daemon.wait_until("the reload's diff in the log", || {
        daemon.logs().lines().any(|l| {
            l.contains("config applied")
                && ["added=1", "changed=1", "removed=1", "unchanged=1"]
                    .iter()
                    .all(|f| l.contains(f))
        })
    });
    assert_eq!(
        server.count_path("/a"),
        1,
        "an unchanged client is left alone"
    );
    assert_eq!(server.count_path("/c"), 1);
    assert!(
        sb.read("c.token").is_some(),
        "a removed client's file stays"
    );
    assert!(daemon.logs().contains("client removed"));
    assert_eq!(last_scope(server, "/b").as_deref(), Some("more"));
}

/// The `scope` of the last request to `path`.
fn last_scope(server: &FaultServer, path: &str) -> Option<String> {
    let requests = server.requests();
    requests.iter().rfind(|r| r.path == path)?.form("scope")
}

fn start_three(sb: &Sandbox, server: &FaultServer) -> Daemon {
    sb.write_config(&three(server));
    let daemon = sb.start();
    wait_until("three tokens", WAIT, || {
        ["a", "b", "c"]
            .iter()
            .all(|n| sb.read(&format!("{n}.token")).is_some())
    });
    daemon
}

#[test]
fn sighup_reloads_and_picks_up_a_rotated_secret_file() {
    let server = FaultServer::start(Some(3600));
    let sb = Sandbox::new();
    sb.write("b.secret", "first-Secret-Value\n");
    let b = client("b", &server.at("/b"), "").replace(
        "client_secret = \"b-Secret-Value\"",
        "client_secret_file = \"b.secret\"",
    );
    sb.write_config(&[client("a", &server.at("/a"), ""), b.clone()].concat());
    let daemon = sb.start();
    wait_until("two tokens", WAIT, || server.count() == 2);
    // the watcher looks at the config file only, and an edit of it reads
    // only the clients it touched: a secret file change waits for SIGHUP.
    // The edit (a comment in a's table) is seen after the secret file's
    // change, in order: once it is read, the secret's change was passed over.
    sb.write("b.secret", "second-Secret-Value\n");
    let a = client("a", &server.at("/a"), "");
    sb.write_config(&[a.replace("[clients.a]\n", "[clients.a]\n# edited\n"), b].concat());
    daemon.wait_until("the edit read", || {
        daemon.logs().lines().any(|l| {
            l.contains("only clients' tables changed: those alone were read")
                && l.contains("read=1")
        })
    });
    assert_eq!(server.count_path("/b"), 1);
    daemon.signal(Signal::SIGHUP);
    wait_until("b refetched with the new secret", WAIT, || {
        server.count_path("/b") == 2
    });
    daemon.wait_log("SIGHUP: reloading the config", 1);
    let last = server
        .requests()
        .into_iter()
        .rfind(|r| r.path == "/b")
        .unwrap();
    assert_eq!(
        last.form("client_secret").as_deref(),
        Some("second-Secret-Value")
    );
    daemon.wait_until("the reload's diff in the log", || {
        daemon.logs().lines().any(|l| {
            l.contains("config applied") && l.contains("changed=1") && l.contains("unchanged=1")
        })
    });
    assert_eq!(
        server.count_path("/a"),
        1,
        "an unchanged client is left alone"
    );
    daemon.stop();
}

#[test]
fn sighup_adds_changes_and_removes_clients() {
    let server = FaultServer::start(Some(3600));
    let sb = Sandbox::new();
    let mut daemon = start_three(&sb, &server);
    fs::write(sb.config(), with_config_text(&sb, &changed(&server))).unwrap();
    daemon.signal(Signal::SIGHUP);
    check_diff_applied(&sb, &server, &daemon);
    assert!(daemon.is_running());
    daemon.stop();
}

#[test]
fn editing_the_file_by_rename_reloads() {
    let server = FaultServer::start(Some(3600));
    let sb = Sandbox::new();
    let daemon = start_three(&sb, &server);
    let tmp = sb.path(".config.toml.swp");
    fs::write(&tmp, with_config_text(&sb, &changed(&server))).unwrap();
    fs::rename(&tmp, sb.config()).unwrap();
    check_diff_applied(&sb, &server, &daemon);
    daemon.wait_log("config file changed", 1);
    daemon.stop();
}

#[test]
fn editing_the_file_in_place_reloads() {
    let server = FaultServer::start(Some(3600));
    let sb = Sandbox::new();
    let daemon = start_three(&sb, &server);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(sb.config())
        .unwrap();
    f.write_all(with_config_text(&sb, &changed(&server)).as_bytes())
        .unwrap();
    drop(f);
    check_diff_applied(&sb, &server, &daemon);
    daemon.stop();
}

#[test]
fn an_invalid_reload_keeps_the_old_config_serving() {
    let server = FaultServer::start(Some(2));
    let sb = Sandbox::new();
    sb.write_config(&client("a", &server.url, ""));
    let mut daemon = sb.start();
    wait_until("a token", WAIT, || sb.read("a.token").is_some());
    fs::write(sb.config(), "[clients.a]\ntoken_url = 7\n").unwrap();
    daemon.wait_log("config reload failed; still running the previous config", 1);
    assert!(
        daemon.logs().contains(
            "clients.a.token_url: invalid type: integer `7`, expected a string; write it in quotes"
        ),
        "{}",
        daemon.logs()
    );
    daemon.signal(Signal::SIGHUP);
    daemon.wait_log("config reload failed; still running the previous config", 2);
    let before = token_number(&sb.read("a.token").unwrap()).unwrap();
    wait_until("the old config still refreshing", WAIT, || {
        token_number(&sb.read("a.token").unwrap()).unwrap() > before + 1
    });
    assert!(daemon.is_running());

    sb.write_config(&format!(
        "{}{}",
        client("a", &server.url, ""),
        client("e", &server.url, "")
    ));
    wait_until("the fixed config applied", WAIT, || {
        sb.read("e.token").is_some()
    });
    daemon.stop();
}

/// A Kubernetes ConfigMap volume: `config.toml -> ..data/config.toml`,
/// `..data -> ..<timestamp>`, updated by one rename of a new `..data` link.
#[test]
fn a_configmap_style_data_swap_reloads() {
    let server = FaultServer::start(Some(3600));
    let sb = Sandbox::new();
    let volume = sb.path("volume");
    fs::create_dir_all(volume.join("..2026_01")).unwrap();
    fs::write(
        volume.join("..2026_01/config.toml"),
        with_config_text(
            &sb,
            &client("a", &server.at("/a"), "").replace(
                "path = \"a.token\"",
                &format!("path = \"{}\"", sb.path("a.token").display()),
            ),
        ),
    )
    .unwrap();
    std::os::unix::fs::symlink("..2026_01", volume.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/config.toml", volume.join("config.toml")).unwrap();
    let mut cmd = std::process::Command::new(bin());
    cmd.args(["run", "--config"])
        .arg(volume.join("config.toml"))
        .env_remove("RUST_LOG");
    let daemon = sb.start_with(cmd);
    wait_until("a's token", WAIT, || sb.read("a.token").is_some());

    let both = [
        client("a", &server.at("/a"), ""),
        client("b", &server.at("/b"), ""),
    ]
    .concat()
    .replace(
        "path = \"a.token\"",
        &format!("path = \"{}\"", sb.path("a.token").display()),
    )
    .replace(
        "path = \"b.token\"",
        &format!("path = \"{}\"", sb.path("b.token").display()),
    );
    fs::create_dir_all(volume.join("..2026_02")).unwrap();
    fs::write(
        volume.join("..2026_02/config.toml"),
        with_config_text(&sb, &both),
    )
    .unwrap();
    std::os::unix::fs::symlink("..2026_02", volume.join("..data_tmp")).unwrap();
    fs::rename(volume.join("..data_tmp"), volume.join("..data")).unwrap();
    fs::remove_dir_all(volume.join("..2026_01")).unwrap();
    wait_until("b's token after the swap", WAIT, || {
        sb.read("b.token").is_some()
    });
    assert_eq!(server.count_path("/a"), 1);
    daemon.stop();
}

/// An edit of one client's table in a file of many: only that client is
/// read (the log says so), it is applied like any reload, and a mistake in
/// it — its own, or an output another client already writes — is refused
/// with its line, the old config still running.
#[test]
fn an_edit_of_one_client_reads_that_client_alone() {
    let server = FaultServer::start(Some(3600));
    let sb = Sandbox::new();
    let names = ["a", "b", "c", "d", "e"];
    let text = |b_extra: &str, b_path: &str| {
        let clients: String = names
            .iter()
            .map(|n| match *n {
                "b" => client(n, &server.at("/b"), b_extra)
                    .replace("path = \"b.token\"", &format!("path = \"{b_path}\"")),
                n => client(n, &server.at(&format!("/{n}")), ""),
            })
            .collect();
        with_config_text(&sb, &clients)
    };
    fs::write(sb.config(), text("", "b.token")).unwrap();
    let daemon = sb.start();
    wait_until("five tokens", WAIT, || {
        names
            .iter()
            .all(|n| sb.read(&format!("{n}.token")).is_some())
    });

    // b takes a's file: refused at b's line, nothing changes
    let taken = text("", "a.token");
    fs::write(sb.config(), &taken).unwrap();
    daemon.wait_log("config reload failed; still running the previous config", 1);
    let line = taken
        .lines()
        .position(|l| l == "path = \"a.token\"")
        .and_then(|first| {
            taken
                .lines()
                .skip(first + 1)
                .position(|l| l == "path = \"a.token\"")
                .map(|p| first + 2 + p)
        })
        .unwrap();
    let logs = daemon.logs();
    assert!(
        logs.contains(&format!(":{line}:8: clients.b.outputs[0].path: "))
            && logs.contains("is also written by clients.a.outputs[0]"),
        "{logs}"
    );

    fs::write(sb.config(), text("scope = \"more\"", "b.token")).unwrap();
    daemon.wait_until("the edit read alone", || {
        daemon.logs().lines().any(|l| {
            l.contains("only clients' tables changed: those alone were read")
                && l.contains("read=1")
                && l.contains("removed=0")
        })
    });
    wait_until("b refetched", WAIT, || server.count_path("/b") == 2);
    daemon.wait_until("the diff in the log", || {
        daemon.logs().lines().any(|l| {
            l.contains("config applied")
                && ["added=0", "changed=1", "removed=0", "unchanged=4"]
                    .iter()
                    .all(|f| l.contains(f))
        })
    });
    assert_eq!(last_scope(&server, "/b").as_deref(), Some("more"));
    for n in ["a", "c", "d", "e"] {
        assert_eq!(server.count_path(&format!("/{n}")), 1, "{n} is left alone");
    }
    daemon.stop();
}
