//! Client authentication without a shared secret, against panva's
//! oidc-provider: signed assertions (RFC 7523 §2.2) — `private_key_jwt`
//! with RSA (RS256, PS256), EC P-256 and Ed25519 keys made here by
//! openssl, and `client_secret_jwt` — and mutual TLS (RFC 8705) —
//! `tls_client_auth` and `self_signed_tls_client_auth`; each with near
//! misses the provider refuses; and what `check` says about a bad key.

use crate::util::*;
use std::path::Path;
use std::process::Command;

fn sh(cmd: &str, dir: &Path) {
    let ok = Command::new("sh")
        .args(["-c", cmd])
        .current_dir(dir)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "{cmd}");
}

/// Private keys in the sandbox (0600), the public halves of the
/// registered ones in `keys`: rsa, ec, ed; `stranger` is registered nowhere.
fn make_keys(sb: &Sandbox, keys: &Path) {
    sh(
        "umask 077
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rsa.pem
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ec.pem
openssl genpkey -algorithm ED25519 -out ed.pem
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out stranger.pem",
        sb.dir.path(),
    );
    for k in ["rsa", "ec", "ed"] {
        sh(
            &format!(
                "openssl pkey -in {k}.pem -pubout -out {}/{k}.pub.pem",
                keys.display()
            ),
            sb.dir.path(),
        );
    }
}

fn jwt_client(name: &str, url: &str, id: &str, auth: &str, extra: &str) -> String {
    format!(
        "[clients.{name}]\ntoken_url = \"{url}\"\nclient_id = \"{id}\"\nauth = \"{auth}\"\nscope = \"read\"\nmin_interval = \"1s\"\n{extra}\n\n[[clients.{name}.outputs]]\ntype = \"file\"\npath = \"{name}.token\"\n\n"
    )
}

const SECRET: &str = "a-client-secret-long-enough-for-hs256-0123456789";

#[test]
fn signed_assertions_get_tokens_and_near_misses_are_refused() {
    let sb = Sandbox::new();
    let keys = tempfile::tempdir().unwrap();
    make_keys(&sb, keys.path());
    let op = OidcProvider::start_with_keys(60, keys.path(), None);
    let url = op.token_url();
    let good = [
        jwt_client(
            "rsa",
            &url,
            "pkjwt-rsa",
            "private_key_jwt",
            "private_key_file = \"rsa.pem\"",
        ),
        jwt_client(
            "rsa-pss",
            &url,
            "pkjwt-rsa",
            "private_key_jwt",
            "private_key_file = \"rsa.pem\"\nsigning_alg = \"PS256\"",
        ),
        jwt_client(
            "ec",
            &url,
            "pkjwt-ec",
            "private_key_jwt",
            "private_key_file = \"ec.pem\"",
        ),
        jwt_client(
            "ed",
            &url,
            "pkjwt-ed",
            "private_key_jwt",
            "private_key_file = \"ed.pem\"",
        ),
        // aud the issuer, as some providers want
        jwt_client(
            "issuer-aud",
            &url,
            "pkjwt-ec",
            "private_key_jwt",
            &format!(
                "private_key_file = \"ec.pem\"\nassertion_audience = \"{}\"",
                op.base
            ),
        ),
        jwt_client(
            "hs",
            &url,
            "secretjwt-client",
            "client_secret_jwt",
            &format!("client_secret = \"{SECRET}\""),
        ),
    ];
    sb.write_config(&good.concat());
    let (code, _, stderr) = sb.run(&["once"]);
    assert_eq!(code, 0, "{stderr}");
    for (name, id) in [
        ("rsa", "pkjwt-rsa"),
        ("rsa-pss", "pkjwt-rsa"),
        ("ec", "pkjwt-ec"),
        ("ed", "pkjwt-ed"),
        ("issuer-aud", "pkjwt-ec"),
        ("hs", "secretjwt-client"),
    ] {
        let token = sb
            .read(&format!("{name}.token"))
            .unwrap_or_else(|| panic!("{name}: no token"));
        assert_eq!(jwt_claims(&token)["client_id"], id, "{name}");
    }

    // near misses, each refused by the provider with its words
    for (name, id, auth, extra) in [
        // a key the provider does not know
        ("stranger", "pkjwt-rsa", "private_key_jwt", "private_key_file = \"stranger.pem\"".to_string()),
        // another audience
        ("wrong-aud", "pkjwt-rsa", "private_key_jwt", "private_key_file = \"rsa.pem\"\nassertion_audience = \"https://elsewhere.example/token\"".to_string()),
        // the right key under another client's id
        ("other-client", "pkjwt-ec", "private_key_jwt", "private_key_file = \"rsa.pem\"".to_string()),
        // the wrong secret
        ("hs-wrong", "secretjwt-client", "client_secret_jwt", "client_secret = \"not-the-secret-but-just-as-long-0123456789\"".to_string()),
    ] {
        sb.write_config(&jwt_client(name, &url, id, auth, &extra));
        let (code, _, stderr) = sb.run(&["once"]);
        assert_eq!(code, 1, "{name}: {stderr}");
        assert!(
            stderr.contains("HTTP 401 invalid_client: client authentication failed"),
            "{name}: {stderr}"
        );
        assert!(!stderr.contains("eyJ"), "{name}: an assertion in the output: {stderr}");
        assert!(sb.read(&format!("{name}.token")).is_none(), "{name}");
    }

    // an expired assertion: signed an hour ago (with the registered key),
    // refused; the same key's fresh one is accepted (the control)
    let pem = std::fs::read(sb.path("ec.pem")).unwrap();
    let key = tokenkeeper::internals::AssertionKey::private(&pem, None, None).unwrap();
    let post = |at: std::time::SystemTime| {
        let jwt = key.assertion("pkjwt-ec", &url, at).unwrap();
        let out = Command::new("curl")
            .args([
                "-s",
                "-m",
                "10",
                &url,
                "-d",
                "grant_type=client_credentials",
                "-d",
                "scope=read",
            ])
            .args(["-d", "client_id=pkjwt-ec"])
            .args([
                "-d",
                "client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ])
            .args(["-d", &format!("client_assertion={}", jwt.expose())])
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    assert_eq!(post(hour_ago)["error"], "invalid_client");
    assert!(post(std::time::SystemTime::now())["access_token"].is_string());
}

#[test]
fn check_explains_a_bad_private_key() {
    let sb = Sandbox::new();
    sh(
        "umask 077
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ec.pem
openssl ecparam -name prime256v1 -genkey -noout -out sec1.pem
cp ec.pem open.pem && chmod 644 open.pem
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out other.pem
openssl req -x509 -new -key ec.pem -subj /CN=a -days 1 -out ec.crt 2>/dev/null",
        sb.dir.path(),
    );
    let url = "https://idp.example.com/token";
    sb.write_config(
        &[
            jwt_client(
                "alg",
                url,
                "a",
                "private_key_jwt",
                "private_key_file = \"ec.pem\"\nsigning_alg = \"RS256\"",
            ),
            jwt_client(
                "sec1",
                url,
                "a",
                "private_key_jwt",
                "private_key_file = \"sec1.pem\"",
            ),
            jwt_client(
                "open",
                url,
                "a",
                "private_key_jwt",
                "private_key_file = \"open.pem\"",
            ),
            jwt_client("nokey", url, "a", "private_key_jwt", ""),
            jwt_client(
                "hs",
                url,
                "a",
                "private_key_jwt",
                "private_key_file = \"ec.pem\"\nsigning_alg = \"HS256\"\nclient_secret = \"x\"",
            ),
            jwt_client(
                "body",
                url,
                "a",
                "body",
                "client_secret = \"x\"\nprivate_key_file = \"ec.pem\"\ntls_cert_file = \"ec.pem\"",
            ),
            jwt_client(
                "mtls",
                url,
                "a",
                "tls_client_auth",
                "client_secret = \"x\"\ntls_cert_file = \"ec.pem\"",
            ),
            // a certificate and a key that are not a pair
            jwt_client(
                "pair",
                url,
                "a",
                "tls_client_auth",
                "tls_cert_file = \"ec.crt\"\ntls_key_file = \"other.pem\"",
            ),
            jwt_client(
                "x5t",
                url,
                "a",
                "private_key_jwt",
                "private_key_file = \"other.pem\"\ncertificate_file = \"ec.crt\"",
            ),
        ]
        .concat(),
    );
    let (code, _, err) = sb.run(&["check"]);
    assert_eq!(code, 2, "{err}");
    for want in [
        "clients.alg.private_key_file: ",
        "ec.pem is an EC P-256 key, which cannot sign RS256 (signing_alg)",
        "sec1.pem is an EC key in SEC1 form",
        "open.pem is readable by every user (mode 644)",
        "clients.nokey.private_key_file: is required with auth = \"private_key_jwt\"",
        "clients.hs.signing_alg: HS256 signs with the client secret",
        "clients.hs.client_secret: auth = \"private_key_jwt\" signs with private_key_file",
        "clients.body.private_key_file: applies to auth = \"private_key_jwt\" or \"client_secret_jwt\"",
        "clients.body.tls_cert_file: applies to auth = \"tls_client_auth\" or \"self_signed_tls_client_auth\"",
        "clients.mtls.tls_key_file: is required with mutual-TLS client authentication",
        "clients.mtls.client_secret: auth = \"tls_client_auth\" authenticates with tls_cert_file and never sends a client secret",
        "clients.x5t.certificate_file: ",
        "clients.pair.tls_cert_file: ",
    ] {
        assert!(err.contains(want), "{want:?} not in:\n{err}");
    }
    let mismatch = "ec.crt and ";
    let differ = "other.pem: the key is not the certificate's: their public keys differ";
    assert_eq!(
        err.lines()
            .filter(|l| l.contains(mismatch) && l.contains(differ))
            .count(),
        2,
        "{err}"
    );
    let pem = sb.read("ec.pem").unwrap();
    let body = pem.lines().nth(1).unwrap();
    assert!(!err.contains(body), "a key in the output:\n{err}");
}

/// Mutual TLS: a certificate the provider's CA issued (tls_client_auth,
/// bound by subject) and a registered self-signed one; a certificate from
/// another CA, an unregistered one and none at all are refused; a
/// certificate replaced on disk is used from the next request on.
#[test]
fn mutual_tls_client_authentication() {
    let sb = Sandbox::new();
    let ca = make_test_ca(sb.dir.path());
    sh(
        "umask 077
openssl req -newkey rsa:2048 -nodes -keyout client.key -out client.csr -subj /CN=tk-client
printf 'extendedKeyUsage=clientAuth\\n' > client.ext
openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile client.ext -out client.crt
openssl req -newkey rsa:2048 -nodes -keyout foreign.key -out foreign.csr -subj /CN=tk-client
openssl x509 -req -in foreign.csr -CA other-ca.crt -CAkey other.key -CAcreateserial -days 2 -extfile client.ext -out foreign.crt
openssl req -x509 -newkey rsa:2048 -nodes -keyout self.key -out self.crt -days 2 -subj /CN=tk-self
openssl req -x509 -newkey rsa:2048 -nodes -keyout stranger.key -out stranger.crt -days 2 -subj /CN=tk-self",
        sb.dir.path(),
    );
    let op = OidcProvider::start_mtls(60, &ca, &sb.path("self.crt"));
    let url = op.token_url();
    let mtls = |name: &str, id: &str, auth: &str, pair: &str| {
        jwt_client(
            name,
            &url,
            id,
            auth,
            &format!(
                "ca_file = \"ca.crt\"\ntls_cert_file = \"{pair}.crt\"\ntls_key_file = \"{pair}.key\""
            ),
        )
    };
    sb.write_config(
        &[
            mtls("ca", "mtls-ca", "tls_client_auth", "client"),
            mtls("self", "mtls-self", "self_signed_tls_client_auth", "self"),
        ]
        .concat(),
    );
    let (code, _, stderr) = sb.run(&["once"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        jwt_claims(&sb.read("ca.token").unwrap())["client_id"],
        "mtls-ca"
    );
    assert_eq!(
        jwt_claims(&sb.read("self.token").unwrap())["client_id"],
        "mtls-self"
    );

    for (name, id, auth, pair) in [
        ("foreign", "mtls-ca", "tls_client_auth", "foreign"),
        (
            "stranger",
            "mtls-self",
            "self_signed_tls_client_auth",
            "stranger",
        ),
    ] {
        sb.write_config(&mtls(name, id, auth, pair));
        let (code, _, stderr) = sb.run(&["once"]);
        assert_eq!(code, 1, "{name}: {stderr}");
        assert!(
            stderr.contains("HTTP 401 invalid_client: client authentication failed"),
            "{name}: {stderr}"
        );
    }
    // no certificate at all
    let out = Command::new("curl")
        .args(["-s", "-m", "10", "--cacert"])
        .arg(&ca.ca)
        .args([
            &url,
            "-d",
            "grant_type=client_credentials",
            "-d",
            "client_id=mtls-ca",
        ])
        .output()
        .unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["error"], "invalid_client", "{answer}");

    // the daemon reads the certificate for each request: replaced on disk
    // by one the provider does not know, the next request is refused;
    // put back, the next one succeeds
    sb.write_config(&mtls(
        "self",
        "mtls-self",
        "self_signed_tls_client_auth",
        "self",
    ));
    let d = sb.start();
    d.wait_log("using the cached token", 1);
    d.signal(nix::sys::signal::Signal::SIGUSR1);
    d.wait_log("token refreshed", 1);
    let swap = |from: &str| {
        for ext in ["crt", "key"] {
            std::fs::copy(
                sb.path(&format!("{from}.{ext}")),
                sb.path(&format!("self.{ext}")),
            )
            .unwrap();
        }
    };
    sh(
        "cp self.crt keep.crt && cp self.key keep.key",
        sb.dir.path(),
    );
    swap("stranger");
    d.signal(nix::sys::signal::Signal::SIGUSR1);
    d.wait_log("invalid_client", 1);
    swap("keep");
    d.signal(nix::sys::signal::Signal::SIGUSR1);
    d.wait_log("token refreshed", 2);
    let (status, _) = d.stop();
    assert!(status.success());
}

/// A Google service account's JSON key (`preset = "google-service-account"`)
/// against an endpoint as strict as Google's: the token; the file's
/// `token_uri` is the endpoint; a key the endpoint does not know, another
/// audience and a missing scope are refused with Google's words; `check`
/// explains a file that is not a service account key.
#[test]
fn a_google_service_account_key_gets_a_token_by_the_jwt_bearer_grant() {
    let sb = Sandbox::new();
    sh(
        "umask 077
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.pem
openssl pkey -in sa.pem -pubout -out sa.pub.pem
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out other.pem",
        sb.dir.path(),
    );
    let email = "tokenkeeper@project-1.iam.gserviceaccount.com";
    let google = GoogleTokenServer::start(&sb.path("sa.pub.pem"), "key-1", email);
    let sa_file = |name: &str, pem: &str, token_uri: &str| {
        let key = serde_json::json!({
            "type": "service_account",
            "project_id": "project-1",
            "private_key_id": "key-1",
            "private_key": sb.read(pem).unwrap(),
            "client_email": email,
            "client_id": "1234567890",
            "token_uri": token_uri,
        });
        sb.write(name, &key.to_string());
        sh(&format!("chmod 600 {name}"), sb.dir.path());
    };
    sa_file("sa.json", "sa.pem", &google.token_url());
    sa_file("other.json", "other.pem", &google.token_url());
    let client = |name: &str, file: &str, extra: &str| {
        format!(
            "[clients.{name}]\npreset = \"google-service-account\"\nservice_account_file = \"{file}\"\nmin_interval = \"1s\"\n{extra}\n\n[[clients.{name}.outputs]]\ntype = \"file\"\npath = \"{name}.token\"\n\n"
        )
    };
    let scope = "scope = \"https://www.googleapis.com/auth/cloud-platform\"";
    sb.write_config(&client("gcp", "sa.json", scope));
    let (code, _, stderr) = sb.run(&["once"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(sb.read("gcp.token").unwrap().starts_with("ya29."));
    assert_eq!(google.issued(), 1);

    for (name, file, extra, want) in [
        (
            "other-key",
            "other.json",
            scope.to_string(),
            "HTTP 400 invalid_grant: Invalid JWT Signature.",
        ),
        (
            "wrong-aud",
            "sa.json",
            format!("{scope}\nassertion_audience = \"https://oauth2.googleapis.com/token\""),
            "invalid_grant: Invalid JWT: Failed audience check",
        ),
    ] {
        sb.write_config(&client(name, file, &extra));
        let (code, _, stderr) = sb.run(&["once"]);
        assert_eq!(code, 1, "{name}: {stderr}");
        assert!(stderr.contains(want), "{name}: {stderr}");
        assert!(
            !stderr.contains("BEGIN PRIVATE KEY") && !stderr.contains("eyJ"),
            "{stderr}"
        );
    }
    assert_eq!(google.issued(), 1);

    // check: the scope the preset needs; a file that is not a key
    sb.write(
        "not-sa.json",
        "{\"type\": \"authorized_user\", \"client_id\": \"x\"}",
    );
    sh("chmod 600 not-sa.json", sb.dir.path());
    sb.write_config(
        &[
            client("noscope", "sa.json", ""),
            client("notsa", "not-sa.json", scope),
        ]
        .concat(),
    );
    let (code, _, err) = sb.run(&["check"]);
    assert_eq!(code, 2, "{err}");
    for want in [
        "clients.noscope.scope: is required: preset \"google-service-account\" needs scope",
        "not-sa.json: is a \"authorized_user\" file, not a service account key",
    ] {
        assert!(err.contains(want), "{want:?} not in:\n{err}");
    }
}

/// The JWT bearer grant (RFC 7523 §2.1) with a key of the client's own and
/// token exchange (RFC 8693) of a Kubernetes-style service account token,
/// against oidc-provider's grants of those types: tokens; another key,
/// another audience, an expired subject token (replaced on disk: read for
/// each request) and another audience for the exchange are refused.
#[test]
fn the_jwt_bearer_grant_and_token_exchange() {
    let sb = Sandbox::new();
    let keys = tempfile::tempdir().unwrap();
    make_keys(&sb, keys.path());
    sh(
        "umask 077
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out kubelet.pem
openssl pkey -in kubelet.pem -pubout -out kubelet.pub.pem",
        sb.dir.path(),
    );
    let op = OidcProvider::start_with_keys(60, keys.path(), Some(&sb.path("kubelet.pub.pem")));
    let url = op.token_url();
    let bearer = |name: &str, key: &str, extra: &str| {
        format!(
            "[clients.{name}]\ntoken_url = \"{url}\"\ngrant_type = \"jwt_bearer\"\nclient_id = \"bearer-rsa\"\nprivate_key_file = \"{key}\"\nmin_interval = \"1s\"\n{extra}\n\n[[clients.{name}.outputs]]\ntype = \"file\"\npath = \"{name}.token\"\n\n"
        )
    };
    sb.write_config(&bearer("jb", "rsa.pem", "scope = \"read\""));
    let (code, _, stderr) = sb.run(&["once"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(sb.read("jb.token").is_some());
    for (name, key, extra, want) in [
        ("jb-stranger", "stranger.pem", "", "invalid_grant"),
        (
            "jb-aud",
            "rsa.pem",
            "assertion_audience = \"https://elsewhere.example\"",
            "invalid_grant",
        ),
    ] {
        sb.write_config(&bearer(name, key, extra));
        let (code, _, stderr) = sb.run(&["once"]);
        assert_eq!(code, 1, "{name}: {stderr}");
        assert!(stderr.contains(want), "{name}: {stderr}");
    }

    // a service account token, as the kubelet projects it
    let kubelet = tokenkeeper::internals::AssertionKey::private(
        sb.read("kubelet.pem").unwrap().as_bytes(),
        None,
        None,
    )
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let project = |exp: u64| {
        let jwt = kubelet
            .sign(&serde_json::json!({"iss": "https://kubernetes.default.svc",
                "aud": "tokenkeeper-test", "sub": "system:serviceaccount:team-a:erp",
                "iat": now - 7200, "exp": exp}))
            .unwrap();
        sb.write("sa.token", jwt.expose());
    };
    project(now + 600);
    let exchange = |name: &str, audience: &str| {
        format!(
            "[clients.{name}]\ntoken_url = \"{url}\"\ngrant_type = \"token_exchange\"\nclient_id = \"exchange-client\"\nclient_secret = \"exchange-secret\"\nauth = \"basic\"\nsubject_token_file = \"sa.token\"\naudience = \"{audience}\"\nmin_interval = \"1s\"\n\n[[clients.{name}.outputs]]\ntype = \"file\"\npath = \"{name}.token\"\n\n"
        )
    };
    sb.write_config(&exchange("tx", "urn:example:api"));
    let (code, _, stderr) = sb.run(&["once"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(sb.read("tx.token").is_some());
    sb.write_config(&exchange("tx-aud", "urn:example:other"));
    let (code, _, stderr) = sb.run(&["once"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("invalid_target"), "{stderr}");
    // the token on disk expired: read again, refused
    project(now - 60);
    sb.write_config(&exchange("tx", "urn:example:api"));
    let (code, _, stderr) = sb.run(&["once"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("HTTP 400 invalid_grant"), "{stderr}");
}

/// RFC 7638 thumbprint of the public half of the private key in `pem`, as
/// panva's jose computes it (the provider's own library).
fn jose_thumbprint(pem: &Path) -> String {
    stdout_of(
        Command::new("node")
            .args([
                "--input-type=module",
                "-e",
                "import {calculateJwkThumbprint} from 'jose'; import {createPublicKey} from 'node:crypto'; import {readFileSync} from 'node:fs'; console.log(await calculateJwkThumbprint(createPublicKey(readFileSync(process.argv[1])).export({format:'jwk'})))",
            ])
            .arg(pem)
            .current_dir(repo().join("tests/upstreams")),
    )
}

/// What `cmd` printed, trimmed; it must succeed.
fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn dpop_client(name: &str, url: &str, id: &str, extra: &str, outputs: &str) -> String {
    format!(
        "[clients.{name}]\ntoken_url = \"{url}\"\nclient_id = \"{id}\"\nclient_secret = \"dpop-secret\"\nscope = \"read\"\nmin_interval = \"1s\"\n{extra}\n\n[[clients.{name}.outputs]]\ntype = \"file\"\npath = \"{name}.token\"\n{outputs}\n"
    )
}

/// DPoP (RFC 9449) against oidc-provider with a client that gets only
/// key-bound tokens: the proof key is made once in state_dir (0600) and
/// kept, the provider binds every token to its thumbprint, and the `dpop`
/// output hands a consumer the token with that key. Without `dpop`, the
/// provider's refusal is shown; `check` explains a bad key and a `dpop`
/// output on a client without it.
#[test]
fn dpop_binds_tokens_to_a_proof_key_kept_in_state_dir() {
    let sb = Sandbox::new();
    let op = OidcProvider::start(60, None);
    let url = op.token_url();
    let dpop_output =
        "\n[[clients.bound.outputs]]\ntype = \"file\"\npath = \"bound.json\"\nformat = \"dpop\"\n";
    sb.write_config(&dpop_client(
        "bound",
        &url,
        "dpop-client",
        "dpop = true",
        dpop_output,
    ));
    let (code, _, stderr) = sb.run(&["once"]);
    assert_eq!(code, 0, "{stderr}");

    let key_file = sb.path("state/bound.dpop-key.pem");
    assert_eq!(sb.mode("state/bound.dpop-key.pem"), 0o600);
    let key = std::fs::read_to_string(&key_file).unwrap();
    let jkt = jose_thumbprint(&key_file);
    let token = sb.read("bound.token").unwrap();
    assert_eq!(
        jwt_claims(&token)["cnf"]["jkt"],
        jkt.as_str(),
        "bound to the key in state_dir"
    );
    let doc: serde_json::Value = serde_json::from_str(&sb.read("bound.json").unwrap()).unwrap();
    assert_eq!(doc["access_token"], token.as_str());
    assert_eq!(doc["token_type"], "DPoP");
    assert_eq!(doc["dpop"]["jkt"], jkt.as_str());
    assert_eq!(doc["dpop"]["alg"], "ES256");
    assert_eq!(doc["dpop"]["private_key"], key.as_str());
    assert!(doc["dpop"]["jwk"].get("d").is_none());

    // a consumer with nothing but that file: `tokenkeeper proof` signs for
    // one request, and a resource server that checks all of RFC 9449 §7
    // (token, key, method, URL, ath, iat, jti) accepts it, once
    let orders = format!("{}/resource/orders?page=2", op.base);
    let proof = |method: &str, url: &str| {
        stdout_of(
            Command::new(bin())
                .args(["proof", "bound.json", method, url])
                .current_dir(sb.dir.path()),
        )
    };
    let get = |proof: &str| {
        let out = Command::new("curl")
            .args([
                "-sS",
                "-H",
                &format!("Authorization: DPoP {token}"),
                "-H",
                &format!("DPoP: {proof}"),
                &orders,
            ])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let p = proof("GET", &orders);
    assert!(
        get(&p).contains("\"client_id\":\"dpop-client\""),
        "{}",
        get(&p)
    );
    assert!(get(&p).contains("the proof was used before"));
    let elsewhere = format!("{}/resource/other", op.base);
    assert!(get(&proof("GET", &elsewhere)).contains("htu is not the URL"));
    assert!(get(&proof("POST", &orders)).contains("htm is not the method"));

    // a new token (another scope, so the cached one is not reused) is
    // bound to the same key: the key is made once
    sb.write_config(
        &dpop_client("bound", &url, "dpop-client", "dpop = true", dpop_output)
            .replace("scope = \"read\"", "scope = \"read write\""),
    );
    let (code, _, stderr) = sb.run(&["once"]);
    assert_eq!(code, 0, "{stderr}");
    let again = sb.read("bound.token").unwrap();
    assert_ne!(again, token);
    assert_eq!(jwt_claims(&again)["cnf"]["jkt"], jkt.as_str());
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), key);

    // near miss: the same client without a proof, refused in the
    // provider's words (it keeps its reason, "DPoP proof JWT not provided",
    // to its own log)
    sb.write_config(&dpop_client("bound", &url, "dpop-client", "", ""));
    let (code, _, stderr) = sb.run(&["once"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("HTTP 400 invalid_grant: grant request is invalid"),
        "{stderr}"
    );

    // what check says: a key file that holds no key, a key others may read,
    // a dpop output without dpop, dpop on a static token
    sb.write("not-a-key.pem", "hello\n");
    std::fs::set_permissions(
        sb.path("not-a-key.pem"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    sb.write("open.pem", &key);
    std::fs::set_permissions(
        sb.path("open.pem"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    sb.write("static.token", "abcdefghijklmnop");
    sb.write_config(&[
        dpop_client("a", &url, "dpop-client", "dpop = true\ndpop_key_file = \"not-a-key.pem\"", ""),
        dpop_client("b", &url, "dpop-client", "dpop = true\ndpop_key_file = \"open.pem\"", ""),
        dpop_client("c", &url, "dpop-client", "", "\n[[clients.c.outputs]]\ntype = \"file\"\npath = \"c.json\"\nformat = \"dpop\"\n"),
        "[clients.d]\ngrant_type = \"static\"\ntoken_file = \"static.token\"\ndpop = true\n[[clients.d.outputs]]\ntype = \"file\"\npath = \"d.token\"\n\n".to_string(),
    ].concat());
    let (code, _, stderr) = sb.run(&["check"]);
    assert_ne!(code, 0);
    for (key, words) in [
        ("clients.a.dpop_key_file", "holds no PEM private key"),
        ("clients.b.dpop_key_file", "open.pem"),
        (
            "clients.c.outputs[1].format",
            "needs dpop = true on the client",
        ),
        ("clients.d.dpop", "nothing to bind to a key"),
    ] {
        assert!(
            stderr.lines().any(|l| l.contains(key) && l.contains(words))
                || stderr.contains(key) && stderr.contains(words),
            "{key}: {words}\n{stderr}"
        );
    }
}

/// A provider that wants its nonce in every proof (RFC 9449 §8) refuses
/// the first proof with `use_dpop_nonce` and names one; the proof is sent
/// again with it, with the same refresh token — refused before the grant
/// is looked at, it was not spent. oidc-provider rotates refresh tokens and
/// revokes the grant when one is used twice: a chain that goes on proves
/// none was.
#[test]
fn a_dpop_nonce_costs_one_retry_and_never_the_refresh_chain() {
    let sb = Sandbox::new();
    let op = OidcProvider::start(3, None);
    let rt = op.refresh_token_for("dpop-nonce", "dpop-secret");
    sb.write("chain.rt", &rt);
    sb.write_config(
        &dpop_client(
            "chain",
            &op.token_url(),
            "dpop-nonce",
            "grant_type = \"refresh_token\"\nrefresh_token_file = \"chain.rt\"\ndpop = true",
            "",
        )
        .replace("scope = \"read\"\n", ""),
    );
    let d = sb.start();
    d.wait_log("token refreshed", 4);
    let logs = d.logs();
    assert!(
        logs.contains("asks for a DPoP nonce"),
        "the first proof had no nonce"
    );
    assert!(!logs.contains("invalid_grant"), "the chain broke");
    // the nonce is asked for and given within one fetch: never a failure
    assert!(
        !logs.contains("use_dpop_nonce"),
        "a refusal for a nonce surfaced"
    );
    let token = sb.read("chain.token").unwrap();
    assert_eq!(
        jwt_claims(&token)["cnf"]["jkt"],
        jose_thumbprint(&sb.path("state/chain.dpop-key.pem")).as_str()
    );
}
