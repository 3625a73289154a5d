//! Grants against real servers: Glewlwyd (password grant, password → refresh
//! chain with one-use rotating refresh tokens), oidc-provider (refresh-token
//! grant with rotation and reuse detection, discovery), oauth2-mock-server
//! (JSON bodies), and static tokens.

use crate::util::*;
use std::time::Duration;

#[test]
fn glewlwyd_password_grant_then_a_rotating_refresh_chain_that_survives_kill_9() {
    let gl = Glewlwyd::start(3);
    let sb = Sandbox::new();
    sb.write("alice.password", "alice-pw\n");
    sb.write_config(&format!(
        "[clients.gl]\ntoken_url = \"{}\"\nauth = \"basic\"\nclient_id = \"gl-client\"\nclient_secret = \"gl-secret\"\ngrant_type = \"password\"\nusername = \"alice\"\npassword_file = \"alice.password\"\nscope = \"read\"\nmin_interval = \"1s\"\n\n[[clients.gl.outputs]]\ntype = \"file\"\npath = \"gl.token\"\n",
        gl.token_url
    ));
    let daemon = sb.start();
    wait_until("the first token", WAIT, || sb.read("gl.token").is_some());
    let mut chain =
        vec![state_refresh_token(&sb, "gl").expect("a refresh token from the password grant")];
    wait_until(
        "two rotations of the refresh token",
        Duration::from_secs(20),
        || {
            if let Some(rt) = state_refresh_token(&sb, "gl") {
                if chain.last() != Some(&rt) {
                    chain.push(rt);
                }
            }
            chain.len() >= 3
        },
    );
    assert!(jwt_claims(&sb.read("gl.token").unwrap())["exp"].is_u64());
    // kill -9 right after a rotation, then restart: the chain goes on from the persisted token
    let refreshed = daemon.logs().matches("token refreshed").count();
    daemon.wait_log("token refreshed", refreshed + 1);
    let logs_before = daemon.logs();
    daemon.kill9();
    let daemon = sb.start();
    let before = state_refresh_token(&sb, "gl").unwrap();
    wait_until(
        "a rotation after the restart",
        Duration::from_secs(20),
        || state_refresh_token(&sb, "gl").is_some_and(|rt| rt != before),
    );
    let logs = logs_before + &daemon.logs();
    assert!(
        !logs.contains("falling back to the password grant"),
        "a refresh token was replayed or refused:\n{logs}"
    );
    assert!(!logs.contains("refused"), "{logs}");
    daemon.stop();
}

#[test]
fn glewlwyd_refuses_a_wrong_password_with_a_clear_error() {
    let gl = Glewlwyd::start(60);
    let sb = Sandbox::new();
    sb.write_config(&format!(
        "[clients.gl]\ntoken_url = \"{}\"\nauth = \"basic\"\nclient_id = \"gl-client\"\nclient_secret = \"gl-secret\"\ngrant_type = \"password\"\nusername = \"alice\"\npassword = \"Wrong-Password\"\nscope = \"read\"\n\n[[clients.gl.outputs]]\ntype = \"file\"\npath = \"gl.token\"\n",
        gl.token_url
    ));
    let (code, _, stderr) = sb.run(&["once"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("refused the request: HTTP 403 (empty body)"),
        "{stderr}"
    );
    assert!(!stderr.contains("Wrong-Password"));
}

fn oidc_refresh_config(op: &OidcProvider) -> String {
    format!(
        "[clients.rt]\ntoken_url = \"{}\"\nauth = \"basic\"\nclient_id = \"basic-client\"\nclient_secret = \"basic-secret\"\ngrant_type = \"refresh_token\"\nrefresh_token_file = \"initial.rt\"\nmin_interval = \"1s\"\nbackoff_initial = \"200ms\"\nbackoff_max = \"2s\"\n\n[[clients.rt.outputs]]\ntype = \"file\"\npath = \"rt.token\"\n",
        op.token_url()
    )
}

#[test]
fn oidc_provider_refresh_tokens_rotate_and_a_restart_after_kill_9_never_replays_one() {
    let op = OidcProvider::start(3, None);
    let sb = Sandbox::new();
    let initial = op.refresh_token();
    sb.write("initial.rt", &format!("{initial}\n"));
    sb.write_config(&oidc_refresh_config(&op));
    let daemon = sb.start();
    wait_until("a rotated refresh token", WAIT, || {
        state_refresh_token(&sb, "rt").is_some_and(|rt| rt != initial)
    });
    let mut rounds = 0;
    let mut daemon = Some(daemon);
    let mut logs = String::new();
    while rounds < 3 {
        let d = daemon.take().unwrap();
        let n = d.logs().matches("token refreshed").count();
        d.wait_log("token refreshed", n + 1);
        logs += &d.logs();
        d.kill9();
        daemon = Some(sb.start());
        rounds += 1;
    }
    let d = daemon.unwrap();
    let before = state_refresh_token(&sb, "rt").unwrap();
    wait_until(
        "a rotation after the last restart",
        Duration::from_secs(20),
        || state_refresh_token(&sb, "rt").is_some_and(|rt| rt != before),
    );
    logs += &d.logs();
    d.stop();
    assert!(
        !logs.contains("invalid_grant"),
        "a consumed refresh token was replayed:\n{logs}"
    );
    assert!(jwt_claims(&sb.read("rt.token").unwrap())["exp"].is_u64());
}

#[test]
fn a_refused_refresh_token_needs_attention_and_says_how_to_fix_it() {
    let op = OidcProvider::start(60, None);
    let sb = Sandbox::new();
    sb.write("initial.rt", "not-a-valid-refresh-token\n");
    sb.write_config(&oidc_refresh_config(&op));
    let daemon = sb.start();
    daemon.wait_log("needs attention", 1);
    assert!(
        daemon.logs().contains("invalid_grant")
            && daemon
                .logs()
                .contains("put a new refresh token in refresh_token_file and reload (SIGHUP)"),
        "{}",
        daemon.logs()
    );
    wait_until("status to say NEEDS ATTENTION", WAIT, || {
        sb.run(&["status"]).1.contains("NEEDS ATTENTION")
    });
    // the operator puts a valid token in place and reloads
    sb.write("initial.rt", &op.refresh_token());
    daemon.signal(nix::sys::signal::Signal::SIGHUP);
    wait_until("a token after the fix", WAIT, || {
        sb.read("rt.token").is_some()
    });
    daemon.stop();
}

#[test]
fn issuer_discovery_finds_the_token_endpoint() {
    let op = OidcProvider::start(60, None);
    let sb = Sandbox::new();
    sb.write_config(&format!(
        "[clients.d]\nissuer = \"{}\"\nauth = \"basic\"\nclient_id = \"basic-client\"\nclient_secret = \"basic-secret\"\n\n[[clients.d.outputs]]\ntype = \"file\"\npath = \"d.token\"\n",
        op.base
    ));
    let (code, _, stderr) = sb.run(&["once"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("discovered the token endpoint"), "{stderr}");
    assert!(jwt_claims(&sb.read("d.token").unwrap())["exp"].is_u64());

    // an issuer whose metadata is missing is reported with every place tried
    let server = FaultServer::start(Some(60));
    server.push((0..6).map(|_| Reply::Status(404, "not here".into(), "text/plain", None)));
    sb.write_config(&format!(
        "[clients.d]\nissuer = \"{}/tenant\"\nclient_id = \"x\"\nclient_secret = \"y\"\nbackoff_initial = \"100ms\"\nbackoff_max = \"200ms\"\n\n[[clients.d.outputs]]\ntype = \"file\"\npath = \"d2.token\"\n",
        server.base
    ));
    let (code, _, stderr) = sb.run(&["once"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("/.well-known/oauth-authorization-server/tenant: HTTP 404")
            && stderr.contains("/tenant/.well-known/openid-configuration: HTTP 404"),
        "{stderr}"
    );
}

#[test]
fn json_bodies_against_oauth2_mock_server() {
    let mock = MockServer::start(60);
    let sb = Sandbox::new();
    sb.write_config(&format!(
        "[clients.cc]\ntoken_url = \"{u}\"\nencoding = \"json\"\nclient_id = \"c\"\nclient_secret = \"s\"\n\n[[clients.cc.outputs]]\ntype = \"file\"\npath = \"cc.token\"\n\n[clients.pw]\ntoken_url = \"{u}\"\nencoding = \"json\"\nclient_id = \"c\"\nclient_secret = \"s\"\ngrant_type = \"password\"\nusername = \"u\"\npassword = \"p\"\n\n[[clients.pw.outputs]]\ntype = \"file\"\npath = \"pw.json\"\nformat = \"json\"\n",
        u = mock.token_url
    ));
    let (code, _, stderr) = sb.run(&["once"]);
    assert_eq!(code, 0, "{stderr}");
    let exp = jwt_claims(&sb.read("cc.token").unwrap())["exp"]
        .as_u64()
        .unwrap();
    let iat = jwt_claims(&sb.read("cc.token").unwrap())["iat"]
        .as_u64()
        .unwrap();
    assert_eq!(exp - iat, 60);
    assert!(
        state_refresh_token(&sb, "pw").is_some(),
        "the password grant's refresh token is kept"
    );
}

#[test]
fn static_tokens_with_their_own_scheme_are_reread_on_sigusr1() {
    let sb = Sandbox::new();
    sb.write("wawi.key", "wawi-key-1\n");
    sb.write_config("[clients.wawi]\ngrant_type = \"static\"\ntoken_file = \"wawi.key\"\ntoken_type = \"Wawi\"\n\n[[clients.wawi.outputs]]\ntype = \"file\"\npath = \"wawi.header\"\nformat = \"header\"\n");
    assert_eq!(sb.run(&["check"]).0, 0);
    let daemon = sb.start();
    wait_until("the header file", WAIT, || sb.read("wawi.header").is_some());
    assert_eq!(
        sb.read("wawi.header").unwrap(),
        "Authorization: Wawi wawi-key-1\n"
    );
    sb.write("wawi.key", "wawi-key-2");
    daemon.signal(nix::sys::signal::Signal::SIGUSR1);
    wait_until("the new key", WAIT, || {
        sb.read("wawi.header").unwrap() == "Authorization: Wawi wawi-key-2\n"
    });
    daemon.stop();
}
