//! The integration-test harness: a sandbox directory per test, the real
//! binary as a child process, the real oidc-provider on loopback, and a small
//! in-test token server for fault injection.

#![allow(dead_code)]
//!
//! * [`sandbox`]: a test's directory, the daemon and commands run in it.
//! * [`servers`]: real servers on loopback (oidc-provider, Glewlwyd,
//!   oauth2-mock-server, OpenBao, moto) and a throwaway CA.
//! * [`fault`]: the in-test token endpoint whose every answer a test scripts.
//! * [`etcd`]: a real three-node etcd on loopback (cluster mode's store);
//!   [`netns`]: a network namespace to cut a member off from it;
//!   [`kube`]: a real kube-apiserver (cluster mode's other store).

mod etcd;
mod fault;
mod kube;
mod netns;
mod sandbox;
mod servers;

pub use etcd::*;
pub use fault::*;
pub use kube::*;
pub use netns::*;
pub use sandbox::*;
pub use servers::*;

use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The binary under test: this build's, or `TOKENKEEPER_TEST_BIN` (to run
/// a suite against another build, e.g. an earlier release, for a before and
/// after).
pub fn bin() -> PathBuf {
    std::env::var_os("TOKENKEEPER_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tokenkeeper")))
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Polls `f` every 20 ms until it holds; panics naming `what` after `timeout`.
#[track_caller]
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub const WAIT: Duration = Duration::from_secs(15);

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn read_all(mut r: impl Read) -> String {
    let mut s = String::new();
    let _ = r.read_to_string(&mut s);
    s
}
