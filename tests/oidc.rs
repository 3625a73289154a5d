//! Against panva's oidc-provider: client_credentials with Basic and body
//! auth, RS256 JWTs with `exp`, RFC-shaped errors, TLS with a private CA.

use crate::util::*;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn oidc_client(name: &str, url: &str, id: &str, secret: &str, auth: &str, extra: &str) -> String {
    format!(
        "[clients.{name}]\ntoken_url = \"{url}\"\nclient_id = \"{id}\"\nclient_secret = \"{secret}\"\nauth = \"{auth}\"\nscope = \"read\"\nmin_interval = \"1s\"\n{extra}\n\n[[clients.{name}.outputs]]\ntype = \"file\"\npath = \"{name}.token\"\n\n[[clients.{name}.outputs]]\ntype = \"file\"\npath = \"{name}.json\"\nformat = \"json\"\nmode = \"0640\"\n\n"
    )
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn basic_and_body_auth_get_real_jwts() {
    let op = OidcProvider::start(60, None);
    let sb = Sandbox::new();
    sb.write_config(&format!(
        "{}{}",
        oidc_client(
            "basic",
            &op.token_url(),
            "basic-client",
            "basic-secret",
            "basic",
            ""
        ),
        oidc_client(
            "post",
            &op.token_url(),
            "post-client",
            "post-secret",
            "body",
            ""
        )
    ));
    let (code, _, stderr) = sb.run(&["once"]);
    assert_eq!(code, 0, "{stderr}");
    for name in ["basic", "post"] {
        let token = sb.read(&format!("{name}.token")).unwrap();
        let claims = jwt_claims(&token);
        let exp = claims["exp"].as_u64().unwrap();
        assert!(exp.abs_diff(now() + 60) <= 5, "exp {exp}");
        assert_eq!(claims["client_id"], format!("{name}-client"));
        let json: serde_json::Value =
            serde_json::from_str(&sb.read(&format!("{name}.json")).unwrap()).unwrap();
        assert_eq!(json["access_token"], token.as_str());
        assert_eq!(json["token_type"], "Bearer");
        assert_eq!(sb.mode(&format!("{name}.token")), 0o600);
        assert_eq!(sb.mode(&format!("{name}.json")), 0o640);
    }
}

#[test]
fn the_daemon_rotates_real_tokens_before_they_expire() {
    let op = OidcProvider::start(4, None);
    let sb = Sandbox::new();
    sb.write_config(&oidc_client(
        "basic",
        &op.token_url(),
        "basic-client",
        "basic-secret",
        "basic",
        "",
    ));
    let daemon = sb.start();
    let mut seen = Vec::new();
    wait_until("three different tokens", Duration::from_secs(20), || {
        if let Some(t) = sb.read("basic.token") {
            if seen.last() != Some(&t) {
                let exp = jwt_claims(&t)["exp"].as_u64().unwrap();
                assert!(exp > now(), "an expired token was on disk");
                seen.push(t);
            }
        }
        seen.len() >= 3
    });
    let (status, took) = daemon.stop();
    assert!(status.success());
    assert!(took < Duration::from_secs(1), "stopped in {took:?}");
    assert!(sb.read("basic.token").is_some(), "files stay after a stop");
}

#[test]
fn a_refused_client_shows_the_endpoints_error_and_description() {
    let op = OidcProvider::start(60, None);
    let sb = Sandbox::new();
    sb.write_config(&oidc_client(
        "bad",
        &op.token_url(),
        "basic-client",
        "wrong-Secret-Value",
        "basic",
        "",
    ));
    let (code, _, stderr) = sb.run(&["once"]);
    assert_eq!(code, 1);
    assert!(
        stderr
            .contains("refused the request: HTTP 401 invalid_client: client authentication failed"),
        "{stderr}"
    );
    assert!(!stderr.contains("wrong-Secret-Value"));
    assert!(sb.read("bad.token").is_none());
}

#[test]
fn tls_needs_the_private_ca_in_ca_file() {
    let sb = Sandbox::new();
    let ca = make_test_ca(sb.dir.path());
    let op = OidcProvider::start(60, Some((&ca.cert, &ca.key)));
    let url = op.token_url();
    assert!(url.starts_with("https://"));
    let with_ca = format!("ca_file = \"{}\"", ca.ca.display());
    let with_other = format!("ca_file = \"{}\"", ca.other_ca.display());
    sb.write_config(&oidc_client(
        "trusted",
        &url,
        "basic-client",
        "basic-secret",
        "basic",
        &with_ca,
    ));
    let (code, _, stderr) = sb.run(&["once"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(jwt_claims(&sb.read("trusted.token").unwrap())["exp"].is_u64());

    for extra in ["", with_other.as_str()] {
        sb.write_config(&oidc_client(
            "untrusted",
            &url,
            "basic-client",
            "basic-secret",
            "basic",
            &format!("{extra}\nbackoff_initial = \"100ms\"\nbackoff_max = \"200ms\""),
        ));
        let (code, _, stderr) = sb.run(&["once"]);
        assert_eq!(code, 1);
        assert!(
            stderr.contains("cannot connect to token endpoint")
                && stderr.contains("not signed by a CA tokenkeeper trusts")
                && stderr.contains("set ca_file")
                && stderr.contains("UnknownIssuer"),
            "{stderr}"
        );
    }
}

#[test]
fn a_self_signed_ca_certificate_on_the_server_is_explained() {
    // what `openssl req -x509` makes: a CA certificate used as the server's
    // own, which curl accepts and rustls (rightly) does not
    let sb = Sandbox::new();
    let ok = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-keyout",
            "self.key",
            "-out",
            "self.crt",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .current_dir(sb.dir.path())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let op = OidcProvider::start(60, Some((&sb.path("self.crt"), &sb.path("self.key"))));
    sb.write_config(&oidc_client(
        "selfsigned",
        &op.token_url(),
        "basic-client",
        "basic-secret",
        "basic",
        &format!(
            "ca_file = \"{}\"\nbackoff_initial = \"100ms\"\nbackoff_max = \"200ms\"",
            sb.path("self.crt").display()
        ),
    ));
    let (code, _, stderr) = sb.run(&["once"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("presents a CA certificate as its own")
            && stderr.contains("basicConstraints CA:FALSE"),
        "{stderr}"
    );
}
