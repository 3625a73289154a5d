//! Filesystem faults under a running daemon: the output directory removed
//! and recreated, read-only, full; a symlink planted at the target. The
//! daemon reports, keeps the old file, recovers when the fault is gone, and
//! never writes through a symlink. (A symlink at the temp path is a unit test
//! of `output::file`: the temp name is random, so only there can it be
//! planted in advance.)

use crate::util::*;
use nix::sys::signal::Signal;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// File outputs checked on disk every 200 ms instead of every 10 s.
const CHECK: &str = "check_outputs = \"200ms\"";

fn client_in_out_dir(url: &str) -> String {
    client("a", url, "").replace("path = \"a.token\"", "path = \"out/a.token\"")
}

#[test]
fn a_removed_or_tampered_output_is_written_again_without_a_new_request() {
    let server = FaultServer::start(Some(3600));
    let sb = Sandbox::new();
    sb.write_config_with(CHECK, &client_in_out_dir(&server.url));
    let daemon = sb.start();
    daemon.wait_until("the token", || sb.read("out/a.token").is_some());
    let first = sb.read("out/a.token").unwrap();

    fs::remove_dir_all(sb.path("out")).unwrap();
    daemon.wait_until("the token in a recreated directory", || {
        sb.read("out/a.token").is_some()
    });
    assert_eq!(sb.read("out/a.token").unwrap(), first);
    daemon.wait_log(
        "the output was removed or changed on disk; written again",
        1,
    );

    // removed and recreated by somebody else
    fs::remove_dir_all(sb.path("out")).unwrap();
    fs::create_dir(sb.path("out")).unwrap();
    daemon.wait_until("the token in the directory recreated by hand", || {
        sb.read("out/a.token").is_some()
    });

    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(sb.path("out/a.token"), fs::Permissions::from_mode(0o644)).unwrap();
    daemon.wait_until("the mode made tight again", || {
        sb.mode("out/a.token") == 0o600
    });

    // overwritten in place (same inode)
    fs::write(sb.path("out/a.token"), "garbage").unwrap();
    daemon.wait_until("the content restored", || {
        sb.read("out/a.token").as_deref() == Some(first.as_str())
    });

    daemon.wait_log("written again", 4);
    assert_eq!(server.count(), 1, "restoring a file needs no new token");
    daemon.stop();
}

#[test]
fn an_atomic_dir_edited_in_place_or_relinked_is_written_whole_again() {
    let server = FaultServer::start(Some(3600));
    let sb = Sandbox::new();
    sb.write_config_with(
        CHECK,
        &client("a", &server.url, "").replace(
            "path = \"a.token\"",
            "path = \"a.d\"\nlayout = \"atomic_dir\"",
        ),
    );
    let daemon = sb.start();
    daemon.wait_until("the set", || sb.read("a.d/token").is_some());
    let token = sb.read("a.d/token").unwrap();
    let expires = sb.read("a.d/expires_at").unwrap();

    // written through the link, in place: the set's directory does not change
    fs::write(sb.path("a.d/token"), "edited").unwrap();
    daemon.wait_until("the token repaired", || {
        sb.read("a.d/token").as_ref() == Some(&token)
    });
    // the repair's write is over (the content is back at its switch, before
    // it relinks): else the next edit is undone by this repair, unseen
    daemon.wait_log(
        "the output was removed or changed on disk; written again",
        1,
    );
    // an editor that saves by renaming a file over the link
    fs::write(sb.path("a.d/.expires_at.swp"), "1999-01-01T00:00:00Z").unwrap();
    fs::rename(sb.path("a.d/.expires_at.swp"), sb.path("a.d/expires_at")).unwrap();
    daemon.wait_until("the link restored", || {
        fs::read_link(sb.path("a.d/expires_at")).is_ok()
    });
    assert_eq!(sb.read("a.d/expires_at").unwrap(), expires);
    assert_eq!(
        server.count(),
        1,
        "repaired from the token in memory, no request"
    );
    daemon.wait_log(
        "the output was removed or changed on disk; written again",
        2,
    );
    daemon.stop();
}

#[test]
fn a_symlink_planted_at_the_target_while_running_is_never_written_through() {
    let server = FaultServer::start(Some(3600));
    let sb = Sandbox::new();
    sb.write_config_with(CHECK, &client_in_out_dir(&server.url));
    let daemon = sb.start();
    daemon.wait_until("the token", || sb.read("out/a.token").is_some());
    let first = token_number(&sb.read("out/a.token").unwrap()).unwrap();

    // planted by rename, the way an attacker would swap it in
    let victim = sb.write("victim", "precious");
    std::os::unix::fs::symlink(&victim, sb.path("out/.plant")).unwrap();
    fs::rename(sb.path("out/.plant"), sb.path("out/a.token")).unwrap();
    daemon.wait_log("is a symlink; refusing to write through it", 1);
    // a new token arriving meanwhile is not written through it either
    daemon.signal(Signal::SIGUSR1);
    daemon.wait_until("the second token request", || server.count() >= 2);
    daemon.wait_log("is a symlink; refusing to write through it", 2);
    assert_eq!(sb.read("victim").unwrap(), "precious");

    fs::remove_file(sb.path("out/a.token")).unwrap();
    daemon.wait_until("the newer token once the symlink is gone", || {
        sb.read("out/a.token")
            .and_then(|t| token_number(&t))
            .is_some_and(|n| n > first)
    });
    assert_eq!(sb.read("victim").unwrap(), "precious");
    daemon.stop();
}

/// `unshare`/`nsenter` arguments: a mount namespace, and a user namespace
/// too when not root.
pub fn namespace_args(program: &'static str) -> Vec<&'static str> {
    let mut args = vec![program];
    if !nix::unistd::geteuid().is_root() {
        args.push(if program == "unshare" {
            "--map-root-user"
        } else {
            "--user"
        });
    }
    args.push("--mount");
    args
}

/// Starts the daemon in a mount namespace of its own with a tmpfs of `size`
/// at `out/`; `None` (saying why) where this machine does not allow it.
fn start_on_tmpfs(sb: &Sandbox, size: &str) -> Option<Daemon> {
    start_on_tmpfs_at(sb, "out", size)
}

/// The same with the tmpfs at `rel` in the sandbox.
pub fn start_on_tmpfs_at(sb: &Sandbox, rel: &str, size: &str) -> Option<Daemon> {
    let out = sb.path(rel);
    fs::create_dir_all(&out).unwrap();
    let out = out.to_str().unwrap().to_string();
    let mut unshare = namespace_args("unshare");
    unshare.extend(["--propagation", "private", "sh", "-c"]);
    let probe = Command::new(unshare[0])
        .args(&unshare[1..])
        .arg("mount -t tmpfs -o size=64k tmpfs \"$0\"")
        .arg(&out)
        .output();
    match probe {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            eprintln!(
                "skipped: cannot mount a tmpfs in a mount namespace here: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return None;
        }
        Err(e) => {
            eprintln!("skipped: cannot run unshare: {e}");
            return None;
        }
    }
    let script = format!("mount -t tmpfs -o size={size},mode=0755 tmpfs \"$0\" && exec \"$@\"");
    let mut wrapper = unshare;
    wrapper.push(&script);
    wrapper.push(&out);
    Some(sb.start_with(sb.cmd_via(&wrapper, &["run"])))
}

/// `path` as the daemon sees it, inside its mount namespace.
pub fn inside(daemon: &Daemon, path: &Path) -> PathBuf {
    PathBuf::from(format!("/proc/{}/root", daemon.pid())).join(path.strip_prefix("/").unwrap())
}

/// Runs `script` (with `$0` = `arg`) in the daemon's mount namespace.
#[track_caller]
pub fn in_namespace(daemon: &Daemon, script: &str, arg: &Path) {
    let pid = daemon.pid().to_string();
    let mut args = namespace_args("nsenter");
    args.extend(["--target", &pid, "sh", "-c", script]);
    let out = Command::new(args[0])
        .args(&args[1..])
        .arg(arg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_read_only_or_full_filesystem_keeps_the_old_token_and_recovers() {
    let server = FaultServer::start(Some(3600));
    server.set_padding(8000);
    let sb = Sandbox::new();
    sb.write_config_with(CHECK, &client_in_out_dir(&server.url));
    let Some(daemon) = start_on_tmpfs(&sb, "256k") else {
        return;
    };
    let out = sb.path("out");
    let token = inside(&daemon, &out.join("a.token"));
    let number = || {
        fs::read_to_string(&token)
            .ok()
            .map(|t| token_number(&t).expect("a whole token"))
    };
    daemon.wait_until("the first token", || number().is_some());
    let first = number().unwrap();
    assert!(
        sb.read("out/a.token").is_none(),
        "the token went to the tmpfs, not the directory beneath it"
    );

    in_namespace(&daemon, "mount -o remount,ro \"$0\"", &out);
    daemon.signal(Signal::SIGUSR1);
    daemon.wait_log("Read-only file system", 1);
    assert_eq!(server.count(), 2, "a new token was fetched");
    assert_eq!(number(), Some(first), "the old token stays in place");
    in_namespace(&daemon, "mount -o remount,rw \"$0\"", &out);
    daemon.wait_until("the new token once writable again", || {
        number() > Some(first)
    });
    let second = number().unwrap();

    in_namespace(
        &daemon,
        "cat /dev/zero > \"$0/filler\" 2>/dev/null; true",
        &out,
    );
    daemon.signal(Signal::SIGUSR1);
    daemon.wait_log("No space left on device", 1);
    assert_eq!(number(), Some(second), "the old token stays in place");
    let temp_files: Vec<_> = fs::read_dir(inside(&daemon, &out))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tk-tmp"))
        .collect();
    assert!(
        temp_files.is_empty(),
        "a failed write leaves no temp file: {temp_files:?}"
    );
    in_namespace(&daemon, "rm \"$0/filler\"", &out);
    daemon.wait_until("the new token once there is room again", || {
        number() > Some(second)
    });
    daemon.stop();
}

/// Makes `path` (not following a symlink) belong to uid/gid 65534, as if
/// another user had made it; false (saying so) where this is not root.
fn give_to_another_user(path: &Path) -> bool {
    let nobody = Some(nix::unistd::Uid::from_raw(65534));
    let group = Some(nix::unistd::Gid::from_raw(65534));
    match nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        path,
        nobody,
        group,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    ) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("skipped: cannot give a file to another user here: {e}");
            false
        }
    }
}

#[test]
fn a_symlink_or_directory_another_user_planted_on_the_way_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let server = FaultServer::start(Some(3600));
    let sb = Sandbox::new();
    // a directory like /tmp: anyone may write to it, sticky
    let public = sb.path("public");
    fs::create_dir(&public).unwrap();
    fs::set_permissions(&public, fs::Permissions::from_mode(0o1777)).unwrap();
    // another user plants a symlink as a missing parent of the output path
    let victim = sb.path("victim");
    fs::create_dir(&victim).unwrap();
    std::os::unix::fs::symlink(&victim, public.join("out")).unwrap();
    if !give_to_another_user(&public.join("out")) {
        return;
    }
    // and creates a directory in advance, for the next output
    fs::create_dir(public.join("pre")).unwrap();
    assert!(give_to_another_user(&public.join("pre")));
    let config = |path: &str| {
        client("a", &server.url, "").replace("path = \"a.token\"", &format!("path = \"{path}\""))
    };

    sb.write_config(&config("public/out/a.token"));
    let (code, _, stderr) = sb.run(&["once"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("public/out: a symlink owned by uid 65534")
            && stderr.contains("refusing to follow it"),
        "{stderr}"
    );
    assert_eq!(
        fs::read_dir(&victim).unwrap().count(),
        0,
        "nothing written through it"
    );

    sb.write_config(&config("public/pre/a.token"));
    let (code, _, stderr) = sb.run(&["once"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("public/pre: owned by uid 65534"),
        "{stderr}"
    );
    assert!(!public.join("pre/a.token").exists());

    // a directory of our own in the same place is fine
    sb.write_config(&config("public/mine/a.token"));
    let (code, _, stderr) = sb.run(&["once"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(token_number(&sb.read("public/mine/a.token").unwrap()).is_some());
}
