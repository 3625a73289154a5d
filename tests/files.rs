//! The token file's guarantees: never partial, never empty, never looser than
//! its mode, never written through a symlink, never corrupted by kill -9.

use crate::util::*;
use rand::Rng;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[test]
fn readers_never_see_a_missing_empty_partial_or_loose_file_during_hundreds_of_rewrites() {
    let server = FaultServer::start(Some(3600));
    server.set_padding(20_000);
    let sb = Sandbox::new();
    sb.write_config(
        &client("a", &server.url, "min_interval = \"1ms\"")
            .replace("path = \"a.token\"", "path = \"a.token\"\nmode = \"0640\""),
    );
    let daemon = sb.start();
    wait_until("the first token", WAIT, || sb.read("a.token").is_some());

    let stop = Arc::new(AtomicBool::new(false));
    let path = sb.path("a.token");
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (path, stop) = (path.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut reads, mut distinct, mut last) = (0u64, 0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let text =
                        fs::read_to_string(&path).expect("token file missing during a rewrite");
                    let n = token_number(&text).unwrap_or_else(|| {
                        panic!("partial or empty token file ({} bytes)", text.len())
                    });
                    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
                    assert_eq!(mode, 0o640, "mode changed during a rewrite");
                    assert!(n >= last, "an older token replaced a newer one");
                    if n != last {
                        distinct += 1;
                        last = n;
                    }
                    reads += 1;
                }
                (reads, distinct)
            })
        })
        .collect();
    let spammer = spam_usr1(daemon.pid(), Duration::from_millis(3), stop.clone());
    wait_until("300 rewrites", Duration::from_secs(60), || {
        server.count() >= 300
    });
    stop.store(true, Ordering::Relaxed);
    spammer.join().unwrap();
    for r in readers {
        let (reads, distinct) = r.join().unwrap();
        assert!(
            reads > 100 && distinct > 20,
            "reads {reads}, distinct tokens seen {distinct}"
        );
    }
    daemon.stop();
    let leftovers: Vec<_> = fs::read_dir(sb.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tk-tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temp files left behind after a clean stop: {leftovers:?}"
    );
}

#[test]
fn kill_9_at_random_moments_never_leaves_a_corrupt_file() {
    let server = FaultServer::start(Some(3600));
    server.set_padding(50_000);
    let sb = Sandbox::new();
    sb.write_config(&client("a", &server.url, "min_interval = \"1ms\"").replace("[[clients.a.outputs]]", "[[clients.a.outputs]]\ntype = \"file\"\npath = \"a.json\"\nformat = \"json\"\n\n[[clients.a.outputs]]"));
    let mut rng = rand::rng();
    for round in 0..120 {
        let daemon = sb.start();
        daemon.wait_log("tokenkeeper started", 1);
        let stop = Arc::new(AtomicBool::new(false));
        let spammer = spam_usr1(daemon.pid(), Duration::from_millis(3), stop.clone());
        std::thread::sleep(Duration::from_millis(rng.random_range(10..120)));
        // stop signalling first: a dead pid may be reused by another test's process
        stop.store(true, Ordering::Relaxed);
        spammer.join().unwrap();
        daemon.kill9();

        if let Some(text) = sb.read("a.token") {
            assert!(
                token_number(&text).is_some(),
                "round {round}: corrupt a.token ({} bytes)",
                text.len()
            );
        }
        if let Some(text) = sb.read("a.json") {
            let json: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("round {round}: corrupt a.json: {e}"));
            assert!(token_number(json["access_token"].as_str().unwrap()).is_some());
        }
        if sb.path("state/a.state").exists() {
            let cached = state_token(&sb, "a")
                .unwrap_or_else(|| panic!("round {round}: no whole record in the state"));
            assert!(token_number(cached.access_token.expose()).is_some());
        }
    }
    assert!(
        server.count() > 120,
        "the rounds did rewrite ({} requests)",
        server.count()
    );
    // a clean start after all that serves from the state and tidies temp files
    let daemon = sb.start();
    wait_until("a valid token", WAIT, || {
        sb.read("a.token")
            .is_some_and(|t| token_number(&t).is_some())
    });
    std::thread::sleep(Duration::from_millis(300));
    daemon.stop();
    let leftovers: Vec<_> = fs::read_dir(sb.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tk-tmp"))
        .map(|e| e.file_name())
        .collect();
    assert!(
        leftovers.is_empty(),
        "stale temp files not removed: {leftovers:?}"
    );
}

#[test]
fn the_mode_is_exact_whatever_the_umask() {
    let server = FaultServer::start(Some(3600));
    for (umask, mode) in [
        ("000", "0600"),
        ("000", "0640"),
        ("077", "0644"),
        ("022", "0400"),
    ] {
        let sb = Sandbox::new();
        sb.write_config(&client("a", &server.url, "").replace(
            "path = \"a.token\"",
            &format!("path = \"a.token\"\nmode = \"{mode}\""),
        ));
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c")
            .arg(format!("umask {umask}; exec \"$0\" once --config \"$1\""))
            .arg(bin())
            .arg(sb.config())
            .env_remove("RUST_LOG");
        let status = cmd.status().unwrap();
        assert!(status.success());
        assert_eq!(
            sb.mode("a.token"),
            u32::from_str_radix(mode, 8).unwrap(),
            "umask {umask} mode {mode}"
        );
        assert_eq!(sb.mode("state/a.state"), 0o600);
        assert_eq!(sb.mode("state/a.lock"), 0o600);
        assert_eq!(sb.mode("state") & 0o777, 0o700);
    }
}

#[test]
fn a_symlink_at_the_target_is_refused() {
    let server = FaultServer::start(Some(3600));
    let sb = Sandbox::new();
    sb.write_config(&client("a", &server.url, ""));
    let victim = sb.write("victim", "precious");
    std::os::unix::fs::symlink(&victim, sb.path("a.token")).unwrap();
    let (code, _, stderr) = sb.run(&["once"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("is a symlink; refusing to write through it"),
        "{stderr}"
    );
    assert_eq!(sb.read("victim").unwrap(), "precious");
    assert!(
        fs::symlink_metadata(sb.path("a.token"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn a_failing_output_is_retried_on_its_own_and_blocks_nothing() {
    let server = FaultServer::start(Some(3600));
    let sb = Sandbox::new();
    // `blocked/` cannot be created while a file of that name exists
    sb.write("blocked", "a file in the way");
    sb.write_config(&format!(
        "{}{}",
        client("a", &server.url, "").replace("[[clients.a.outputs]]", "[[clients.a.outputs]]\ntype = \"file\"\npath = \"blocked/a.token\"\n\n[[clients.a.outputs]]"),
        client("b", &server.url, "")
    ));
    let daemon = sb.start();
    wait_until("the healthy outputs", WAIT, || {
        sb.read("a.token").is_some() && sb.read("b.token").is_some()
    });
    daemon.wait_log("cannot write output", 2);
    fs::remove_file(sb.path("blocked")).unwrap();
    wait_until("the blocked output after the fault is gone", WAIT, || {
        sb.read("blocked/a.token").is_some()
    });
    assert_eq!(sb.read("blocked/a.token"), sb.read("a.token"));
    assert_eq!(
        server.count(),
        2,
        "a failing output causes no extra token request"
    );
    daemon.stop();
}

#[test]
fn owner_and_group_are_applied_on_every_write() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: changing a file's owner needs root");
        return;
    }
    let server = FaultServer::start(Some(3600));
    let sb = Sandbox::new();
    sb.write_config(&client("a", &server.url, "").replace(
        "path = \"a.token\"",
        "path = \"a.token\"\nowner = \"nobody\"\ngroup = \"1234\"\nmode = \"0640\"",
    ));
    let (code, _, stderr) = sb.run(&["once"]);
    assert_eq!(code, 0, "{stderr}");
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(sb.path("a.token")).unwrap();
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .unwrap()
        .uid
        .as_raw();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o777),
        (nobody, 1234, 0o640)
    );
}
