//! Data-driven config tests: `check(input, expected)` compares the whole
//! error text (or "ok") so a message change is a visible diff.

use super::edit::Edit;
use super::*;
use crate::grant::{ClientAuth, Encoding, GrantSpec};
use crate::output::{Format, OutputKind};
use std::time::Duration;

const PATH: &str = "/etc/tk/config.toml";

fn env(name: &str) -> Option<String> {
    match name {
        "CREDENTIALS_DIRECTORY" => Some("/run/credentials/tokenkeeper.service".into()),
        "SHOP_SECRET" => Some("from-env".into()),
        _ => None,
    }
}

fn load(input: &str) -> Result<Config, ConfigError> {
    load_str(Path::new(PATH), input, &env)
}

#[track_caller]
fn check(input: &str, expected: &str) {
    let got = match load(input) {
        Ok(_) => "ok".to_string(),
        Err(e) => e.to_string(),
    };
    assert_eq!(got, expected.trim(), "\n--- input ---\n{input}");
}

const MINIMAL: &str = r#"
[clients.shop]
token_url = "https://auth.example.com/token"
client_id = "id"
client_secret = "s3cret"
[[clients.shop.outputs]]
type = "file"
path = "/run/tk/shop.token"
"#;

#[test]
fn minimal_config_gets_the_documented_defaults() {
    let c = load(MINIMAL).unwrap();
    assert_eq!(c.daemon.state_dir, PathBuf::from("/var/lib/tokenkeeper"));
    assert_eq!(c.daemon.log_format, LogFormat::Text);
    let shop = &c.clients["shop"];
    assert_eq!(shop.request.auth, ClientAuth::Body);
    assert_eq!(shop.request.encoding, Encoding::Form);
    assert_eq!(shop.request.grant, GrantSpec::ClientCredentials);
    assert_eq!(shop.request.timeout, Duration::from_secs(30));
    assert_eq!(shop.request.default_lifetime, Duration::from_secs(3600));
    assert_eq!(shop.policy, Policy::default());
    let OutputKind::File(f) = &shop.outputs[0].kind else {
        panic!("a file output")
    };
    assert_eq!((f.mode, &f.format), (0o600, &Format::Raw));
}

#[test]
fn defaults_are_inherited_and_overridden() {
    let input = format!(
        "[defaults]\nrefresh_ratio = 0.5\nmin_interval = \"1m\"\ntimeout = \"5s\"\n{}refresh_ratio = 0.9\n",
        MINIMAL.replace(
            "[[clients.shop.outputs]]\ntype = \"file\"\npath = \"/run/tk/shop.token\"\n",
            ""
        )
    ) + "[[clients.shop.outputs]]\ntype = \"file\"\npath = \"/run/tk/shop.token\"\n";
    let c = load(&input).unwrap();
    let p = &c.clients["shop"].policy;
    assert_eq!(p.refresh_ratio, 0.9);
    assert_eq!(p.min_interval, Duration::from_secs(60));
    assert_eq!(c.clients["shop"].request.timeout, Duration::from_secs(5));
}

#[test]
fn every_error_is_reported_at_once_with_line_column_and_key() {
    check(
        r#"
[daemon]
log_format = "xml"

[clients.a]
token_url = "https://auth.example.com/token"
client_id = "id"
client_secret = "s"
refresh_ratio = 1.5
refresh_before = "soon"
[[clients.a.outputs]]
type = "file"
path = "/run/tk/a"
mode = "0999"

[clients.b]
token_url = "http://auth.example.com/token"
client_id = "id"
client_secret = "s"
colour = "blue"
[[clients.b.outputs]]
type = "file"
path = "/run/tk/b"
"#,
        r#"
/etc/tk/config.toml:3:14: daemon.log_format: unknown value `xml`, expected one of `text`, `json`
/etc/tk/config.toml:9:17: clients.a.refresh_ratio: 1.5 must lie strictly between 0 and 1 (a share of the token's lifetime)
/etc/tk/config.toml:10:18: clients.a.refresh_before: "soon" is not a duration (expected number at 0); write e.g. "90s", "5m", "1h"
/etc/tk/config.toml:14:8: clients.a.outputs[0].mode: "0999" is not an octal mode; write e.g. "0640"
/etc/tk/config.toml:20:1: clients.b: unknown key `colour`, expected one of `preset`, `token_url`, `issuer`, `grant_type`, `client_id`, `client_secret_file`, `client_secret_env`, `client_secret`, `auth`, `private_key_file`, `certificate_file`, `key_id`, `signing_alg`, `assertion_audience`, `assertion_issuer`, `assertion_subject`, `service_account_file`, `subject_token_file`, `subject_token_type`, `actor_token_file`, `actor_token_type`, `audience`, `resource`, `tls_cert_file`, `tls_key_file`, `dpop`, `dpop_key_file`, `encoding`, `scope`, `scope_param`, `params`, `headers`, `username`, `password_file`, `password_env`, `password`, `refresh_token_file`, `refresh_token_param`, `token_file`, `token_type`, `response`, `ca_file`, `allow_insecure_http`, `default_lifetime`, `max_lifetime`, `min_valid`, `refresh_ratio`, `refresh_before`, `min_interval`, `timeout`, `backoff_initial`, `backoff_max`, `outputs`
"#,
    );
}

#[test]
fn errors_in_one_output_come_at_once_each_named_by_the_outputs_place() {
    // an invalid mode and an unknown group: both in the first round
    check(
        r#"
[clients.a]
token_url = "https://auth.example.com/token"
client_id = "id"
client_secret = "s"
[[clients.a.outputs]]
type = "file"
path = "/run/tk/a"
mode = "0999"
group = "no-such-group-here"
"#,
        r#"
/etc/tk/config.toml:9:8: clients.a.outputs[0].mode: "0999" is not an octal mode; write e.g. "0640"
/etc/tk/config.toml:10:9: clients.a.outputs[0].group: no group named "no-such-group-here"
"#,
    );
    // what serde refuses inside an output names the output, not the client
    check(
        r#"
[clients.a]
token_url = "https://auth.example.com/token"
client_id = "id"
client_secret = "s"
[[clients.a.outputs]]
type = "file"
path = "/run/tk/a"
[[clients.a.outputs]]
type = "file"
path = "/run/tk/b"
format = "headers"
"#,
        r#"
/etc/tk/config.toml:12:10: clients.a.outputs[1].format: unknown value `headers`; did you mean `header`?
"#,
    );
    // a file that is not TOML is that one error, not also "no client"
    check(
        "[clients.a]\nmode = 0640\n",
        r#"/etc/tk/config.toml:2:8: mode: unexpected leading zero, expected nothing; a mode is a string: mode = "0640""#,
    );
}

#[test]
fn semantic_errors_table() {
    let base = |extra: &str, output: &str| {
        format!(
            "[clients.c]\ntoken_url = \"https://a.example/token\"\nclient_id = \"id\"\n{extra}\n[[clients.c.outputs]]\ntype = \"file\"\npath = \"/run/tk/c\"\n{output}\n"
        )
    };
    let cases: &[(&str, &str, &str)] = &[
        ("client_secret = \"s\"", "", "ok"),
        (
            "",
            "",
            "/etc/tk/config.toml:3:13: clients.c.client_secret: one of client_secret_file, client_secret_env or client_secret is required (or auth = \"none\" for a public client)",
        ),
        ("auth = \"none\"", "", "ok"),
        (
            "auth = \"none\"\nclient_secret = \"s\"",
            "",
            "/etc/tk/config.toml:5:17: clients.c.client_secret: auth = \"none\" never sends a client secret; remove it or choose auth = \"body\" or \"basic\"",
        ),
        (
            "client_secret = \"s\"\nclient_secret_env = \"X\"",
            "",
            "/etc/tk/config.toml:5:21: clients.c.client_secret_env: set only one of client_secret_file, client_secret_env, client_secret",
        ),
        ("client_secret_env = \"SHOP_SECRET\"", "", "ok"),
        (
            "client_secret_env = \"MISSING\"",
            "",
            "/etc/tk/config.toml:4:21: clients.c.client_secret_env: environment variable MISSING is not set or empty",
        ),
        (
            "client_secret_file = \"$CREDENTIALS_DIRECTORY/nope\"",
            "",
            "/etc/tk/config.toml:4:22: clients.c.client_secret_file: cannot read /run/credentials/tokenkeeper.service/nope: No such file or directory (os error 2)",
        ),
        (
            "client_secret_file = \"$RUNTIME_DIRECTORY/x\"",
            "",
            "/etc/tk/config.toml:4:22: clients.c.client_secret_file: uses $RUNTIME_DIRECTORY, which is not set in the environment (systemd sets it for the unit's matching directive)",
        ),
        (
            "client_secret = \"s\"\nmin_interval = \"0s\"",
            "",
            "/etc/tk/config.toml:5:16: clients.c.min_interval: must be more than zero: it is what keeps a short-lived token from turning into a tight loop",
        ),
        (
            "client_secret = \"s\"\nmin_interval = \"2h\"",
            "",
            "/etc/tk/config.toml:5:16: clients.c.min_interval: 2h is not shorter than default_lifetime 1h: a token of that lifetime would always expire before its refresh",
        ),
        (
            "client_secret = \"s\"\nbackoff_initial = \"1m\"\nbackoff_max = \"10s\"",
            "",
            "/etc/tk/config.toml:6:15: clients.c.backoff_max: 10s is less than backoff_initial 1m",
        ),
        (
            "client_secret = \"s\"\ngrant_type = \"password\"",
            "",
            "/etc/tk/config.toml:5:14: clients.c.username: is required with grant_type = \"password\"\n/etc/tk/config.toml:5:14: clients.c.password: one of password_file, password_env or password is required with grant_type = \"password\"",
        ),
        (
            "client_secret = \"s\"\nusername = \"u\"",
            "",
            "/etc/tk/config.toml:5:12: clients.c.username: applies only to grant_type = \"password\"",
        ),
        (
            "client_secret = \"s\"\nheaders = { \"Bad Name\" = \"x\" }",
            "",
            "/etc/tk/config.toml:5:11: clients.c.headers: \"Bad Name\" is not a valid HTTP header name",
        ),
        (
            "client_secret = \"s\"\n[clients.c.response]\naccess_token = \"authToken\"",
            "",
            "/etc/tk/config.toml:6:16: clients.c.response.access_token: \"authToken\" is not a JSON Pointer; write e.g. \"/authToken\"",
        ),
        ("client_secret = \"s\"", "mode = \"0640\"", "ok"),
        ("client_secret = \"s\"", "mode = 0o640", "ok"),
        (
            "client_secret = \"s\"",
            "mode = 640",
            "/etc/tk/config.toml:8:8: clients.c.outputs[0].mode: 640 is not a mode (a TOML integer is decimal); write it as a string, e.g. \"0640\"",
        ),
        (
            "client_secret = \"s\"",
            "mode = \"0240\"",
            "/etc/tk/config.toml:8:8: clients.c.outputs[0].mode: 0240 leaves the owner unable to read the file",
        ),
        (
            "client_secret = \"s\"",
            "format = \"template\"\ntemplate = \"{{ token }}\"",
            "/etc/tk/config.toml:9:12: clients.c.outputs[0].template: unknown template field `token` (known: access_token, token_type, expires_at, issued_at, expires_at_unix, issued_at_unix)",
        ),
        (
            "client_secret = \"s\"",
            "extra_headers = { \"X-Tenant-ID\" = \"t\" }",
            "/etc/tk/config.toml:8:17: clients.c.outputs[0].extra_headers: applies only to format = \"header\"",
        ),
        (
            "client_secret = \"s\"",
            "format = \"header\"\nextra_headers = { \"X-Tenant-ID\" = \"t\" }",
            "ok",
        ),
        (
            "client_secret = \"s\"",
            "owner = \"no-such-user-here\"",
            "/etc/tk/config.toml:8:9: clients.c.outputs[0].owner: no user named \"no-such-user-here\"",
        ),
        (
            "client_secret = \"s\"\nca_file = \"/nonexistent/ca.pem\"",
            "",
            "/etc/tk/config.toml:5:11: clients.c.ca_file: cannot read /nonexistent/ca.pem: No such file or directory (os error 2)",
        ),
        ("client_secret = \"s\"\npreset = \"shopware\"", "", "ok"),
        (
            "preset = \"shopware\"\ngrant_type = \"password\"",
            "",
            "/etc/tk/config.toml:5:14: clients.c.username: is required: preset \"shopware\" with grant_type = \"password\" logs in as an Administration user: set username and one of password_file, password_env, password\n/etc/tk/config.toml:5:14: clients.c.password: is required: preset \"shopware\" with grant_type = \"password\" logs in as an Administration user: set username and one of password_file, password_env, password",
        ),
        (
            "preset = \"shopware\"\ngrant_type = \"password\"\nusername = \"admin\"\npassword = \"pw\"",
            "",
            "ok",
        ),
        (
            "preset = \"jtl-scx\"",
            "",
            "/etc/tk/config.toml:4:10: clients.c.refresh_token_file: is required: preset \"jtl-scx\" authenticates with the seller's long-lived SCX refresh token: set refresh_token_file",
        ),
        (
            "client_secret = \"s\"\npreset = \"floriday\"",
            "",
            "/etc/tk/config.toml:5:10: clients.c.scope: is required: preset \"floriday\" needs scope: the API scopes, space-separated, e.g. \"role:app catalog:read\"",
        ),
        (
            "client_secret = \"s\"\npreset = \"magento\"",
            "",
            "/etc/tk/config.toml:5:10: clients.c.preset: unknown value `magento`, expected one of `plentymarkets`, `jtl-cloud`, `jtl-scx`, `oro`, `shopware`, `floriday`, `google-service-account`, `entra-id`, `okta`, `auth0`, `keycloak`",
        ),
        (
            "client_secret = \"s\"\nissuer = \"https://idp.example.com\"",
            "",
            "/etc/tk/config.toml:5:10: clients.c.issuer: set only one of token_url, issuer",
        ),
        (
            "client_secret = \"s\"\ngrant_type = \"static\"",
            "",
            "/etc/tk/config.toml:2:13: clients.c.token_url: a static token is read from token_file; it has no endpoint\n/etc/tk/config.toml:5:14: clients.c.token_file: is required with grant_type = \"static\" (the file holding the key)",
        ),
        (
            "client_secret = \"s\"\ntoken_type = \"Wawi key\"",
            "",
            "/etc/tk/config.toml:5:14: clients.c.token_type: \"Wawi key\" is not an HTTP authorization scheme (letters, digits, -._~+/)",
        ),
    ];
    for (extra, output, expected) in cases {
        check(&base(extra, output), expected);
    }
}

#[test]
fn plain_http_only_for_loopback_unless_allowed() {
    let with_url = |url: &str, extra: &str| {
        MINIMAL
            .replace("https://auth.example.com/token", url)
            .replace(
                "client_id = \"id\"",
                &format!("client_id = \"id\"\n{extra}"),
            )
    };
    check(&with_url("http://127.0.0.1:8080/token", ""), "ok");
    check(&with_url("http://[::1]:8080/token", ""), "ok");
    check(&with_url("http://localhost/token", ""), "ok");
    check(
        &with_url("http://auth.example.com/token", ""),
        "/etc/tk/config.toml:3:13: clients.shop.token_url: plain http:// would send credentials in the clear; use https://, or set allow_insecure_http = true (loopback hosts are always allowed)",
    );
    check(
        &with_url(
            "http://auth.example.com/token",
            "allow_insecure_http = true",
        ),
        "ok",
    );
    check(
        &with_url("ftp://auth.example.com/token", ""),
        "/etc/tk/config.toml:3:13: clients.shop.token_url: scheme \"ftp\" is not supported; use https://",
    );
}

#[test]
fn two_outputs_cannot_share_a_path() {
    let second = MINIMAL
        .replace("[clients.shop]", "[clients.erp]")
        .replace("clients.shop.outputs", "clients.erp.outputs")
        .replace("/run/tk/shop.token", "/run/tk/./x/../shop.token");
    check(
        &format!("{MINIMAL}{second}"),
        "/etc/tk/config.toml:8:8: clients.shop.outputs[0].path: /run/tk/shop.token is also written by clients.erp.outputs[0]; two outputs cannot share a path",
    );
}

#[test]
fn secret_files_lose_one_trailing_newline_and_relative_paths_follow_the_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("shop.secret"), "s3cret\n").unwrap();
    let input = MINIMAL
        .replace(
            "client_secret = \"s3cret\"",
            "client_secret_file = \"shop.secret\"",
        )
        .replace("/run/tk/shop.token", "out/shop.token");
    let path = dir.path().join("config.toml");
    let c = load_str(&path, &input, &env).unwrap();
    let shop = &c.clients["shop"];
    assert_eq!(
        shop.request.client_secret.as_ref().unwrap().expose(),
        "s3cret"
    );
    let OutputKind::File(f) = &shop.outputs[0].kind else {
        panic!("a file output")
    };
    assert_eq!(f.path, dir.path().join("out/shop.token"));

    std::fs::write(dir.path().join("shop.secret"), "\n").unwrap();
    let e = load_str(&path, &input, &env).unwrap_err().to_string();
    let want = format!(
        "clients.shop.client_secret_file: {} is empty",
        dir.path().join("shop.secret").display()
    );
    assert!(e.ends_with(&want), "{e}");
}

#[test]
fn syntax_errors_and_empty_files() {
    check(
        "[clients.a\n",
        "/etc/tk/config.toml:1:11: (syntax): unclosed table, expected `]`",
    );
    check(
        "",
        "/etc/tk/config.toml: clients: no client is configured; add a [clients.NAME] table",
    );
    check(
        "colour = 1\n[clients]\n",
        "/etc/tk/config.toml:1:1: colour: unknown top-level key, expected `daemon`, `defaults`, `cluster` or `clients`\n/etc/tk/config.toml: clients: no client is configured; add a [clients.NAME] table",
    );
    check(
        &MINIMAL
            .replace("[clients.shop]", "[clients.\"my shop\"]")
            .replace("clients.shop.outputs", "clients.\"my shop\".outputs"),
        "/etc/tk/config.toml:2:10: clients.my shop: client names may use only letters, digits, `_` and `-`",
    );
}

#[test]
fn no_secret_in_errors_or_debug() {
    let c = load(MINIMAL).unwrap();
    let dbg = format!("{c:?}");
    assert!(!dbg.contains("s3cret"), "{dbg}");
    let bad = MINIMAL.replace("refresh", "") + "min_interval = \"x\"\n";
    let e = load(&bad.replace(
        "[[clients.shop.outputs]]",
        "min_interval = \"x\"\n[[clients.shop.outputs]]",
    ))
    .unwrap_err();
    assert!(!e.to_string().contains("s3cret"));
}

#[test]
fn the_packaged_example_config_is_valid() {
    let creds = tempfile::tempdir().unwrap();
    std::fs::write(creds.path().join("shop"), "s\n").unwrap();
    std::fs::write(creds.path().join("jtl"), "s\n").unwrap();
    let creds_dir = creds.path().display().to_string();
    let env = move |name: &str| match name {
        "CREDENTIALS_DIRECTORY" => Some(creds_dir.clone()),
        "RUNTIME_DIRECTORY" => Some("/run/tokenkeeper".into()),
        "CUSTOM_SECRET" => Some("c".into()),
        _ => None,
    };
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/config.example.toml");
    // the example's group may not exist on the machine running the tests
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("group = \"integrations\"", "group = \"0\"");
    let c = load_str(&path, &text, &env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.clients.keys().collect::<Vec<_>>(),
        ["custom", "jtl", "shop"]
    );
    let OutputKind::File(f) = &c.clients["jtl"].outputs[0].kind else {
        panic!("a file output")
    };
    assert_eq!(f.path, PathBuf::from("/run/tokenkeeper/jtl.header"));
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn check_error_places(text: &str) -> Result<(), TestCaseError> {
        if let Err(e) = load(text) {
            for d in &e.diagnostics {
                if let Some(span) = &d.span {
                    prop_assert!(
                        span.start <= text.len(),
                        "span {span:?} outside a {}-byte file",
                        text.len()
                    );
                }
            }
            prop_assert!(!e.to_string().is_empty());
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Any text: an error or a config, never a panic; every error points into the file.
        #[test]
        fn arbitrary_text(text in "\\PC{0,300}") {
            check_error_places(&text)?;
        }

        /// Near misses: a valid config with a few bytes inserted or deleted anywhere.
        #[test]
        fn near_misses_of_a_valid_config(at in 0usize..MINIMAL.len(), delete in 0usize..6, insert in "[ -~\\n]{0,6}") {
            let end = (at + delete).min(MINIMAL.len());
            let text = format!("{}{}{}", &MINIMAL[..at], insert, &MINIMAL[end..]);
            check_error_places(&text)?;
        }

        /// Values of the wrong kind or out of range in every duration and ratio key.
        #[test]
        fn odd_policy_values(key in prop::sample::select(vec!["refresh_ratio", "refresh_before", "min_interval", "timeout", "backoff_initial", "backoff_max", "default_lifetime", "min_valid"]),
                             value in prop_oneof![Just("-1".to_string()), Just("1e309".to_string()), Just("\"\"".to_string()), "\"[0-9]{0,3}[a-z]{0,3}\"", "-?[0-9]{1,4}(\\.[0-9]{1,3})?"]) {
            let text = MINIMAL.replace("client_secret = \"s3cret\"", &format!("client_secret = \"s3cret\"\n{key} = {value}"));
            check_error_places(&text)?;
        }
    }
}

/// A public self-signed certificate made for this test (no key is kept).
const TEST_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBnTCCAUOgAwIBAgIUMstlxfoJSpjfjIDmIN1DMJpkc+QwCgYIKoZIzj0EAwIw
IzEhMB8GA1UEAwwYdG9rZW5rZWVwZXIgdW5pdC10ZXN0IENBMCAXDTI2MTEzMDIz
MjM1MVoYDzIxMjYxMTA2MjMyMzUxWjAjMSEwHwYDVQQDDBh0b2tlbmtlZXBlciB1
bml0LXRlc3QgQ0EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAASucc/w0Dv65sBL
msT5ZaA3fmLKFO9W/3HCPo/mHvftNvfh0N39xPlCf2raP51JtJuDFNwyIFDPy8Km
i60bV6vwo1MwUTAdBgNVHQ4EFgQUAljYIaGT2bTGNRcROL9LzxgLBkwwHwYDVR0j
BBgwFoAUAljYIaGT2bTGNRcROL9LzxgLBkwwDwYDVR0TAQH/BAUwAwEB/zAKBggq
hkjOPQQDAgNIADBFAiEAuV/tCBBf5a56GG5u0WEua1QNECeRp23Rzxpt7AxAwiwC
ICmU9JmYsQ5KFP1q5T88eDnzbe1DKb7PdXNTxlJCwgPR
-----END CERTIFICATE-----
";

#[test]
fn clients_naming_one_ca_file_share_one_bundle_read_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), TEST_CA).unwrap();
    let client = |name: &str| {
        format!(
            "[clients.{name}]\ntoken_url = \"https://a.example/token\"\nclient_id = \"id\"\nclient_secret = \"s\"\nca_file = \"ca.pem\"\n[[clients.{name}.outputs]]\ntype = \"file\"\npath = \"{name}.token\"\n"
        )
    };
    let input = format!("{}{}", client("a"), client("b"));
    let c = load_str(&dir.path().join("config.toml"), &input, &env).unwrap();
    let (a, b) = (
        c.clients["a"].request.ca_pem.clone().unwrap(),
        c.clients["b"].request.ca_pem.clone().unwrap(),
    );
    assert!(std::sync::Arc::ptr_eq(&a, &b), "one bundle in memory");
    assert_eq!(a.pem, TEST_CA.as_bytes());
    use sha2::Digest;
    assert_eq!(a.digest, <[u8; 32]>::from(sha2::Sha256::digest(TEST_CA)));
}

#[test]
fn typos_and_numbers_where_strings_belong_are_explained() {
    let client = |extra: &str| {
        format!(
            "[clients.c]\ntoken_url = \"https://a.example/token\"\nclient_id = \"id\"\nclient_secret = \"s\"\n{extra}\n[[clients.c.outputs]]\ntype = \"file\"\npath = \"/run/tk/c\"\n"
        )
    };
    check(
        &client("min_intervall = \"10s\""),
        "/etc/tk/config.toml:5:1: clients.c: unknown key `min_intervall`; did you mean `min_interval`?",
    );
    check(
        &format!("[defaults]\nrefresh_before = 300\n{}", client("")),
        "/etc/tk/config.toml:2:18: defaults.refresh_before: invalid type: integer `300`, expected a string; write it in quotes, e.g. \"300s\" or \"5m\"",
    );
    let e = load(&client("").replace("path = \"/run/tk/c\"", "path = \"/run/tk/c\"\nmode = 0640"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("mode: ") && e.contains("a mode is a string: mode = \"0640\""),
        "{e}"
    );
}

#[test]
fn outputs_that_meet_on_disk_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("real")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("link")).unwrap();
    let client = |name: &str, outputs: &str| {
        format!(
            "[clients.{name}]\ntoken_url = \"https://a.example/token\"\nclient_id = \"id\"\nclient_secret = \"s\"\n{outputs}"
        )
    };
    let file = |name: &str, path: &str| {
        format!("[[clients.{name}.outputs]]\ntype = \"file\"\npath = \"{path}\"\n")
    };
    let input = format!(
        "{}{}{}",
        client("a", &file("a", "real/a.token")),
        client("b", &file("b", "link/a.token")),
        client(
            "c",
            &format!(
                "[[clients.c.outputs]]\ntype = \"file\"\npath = \"set\"\nlayout = \"atomic_dir\"\n{}",
                file("c", "set/extra.token")
            )
        ),
    );
    let e = load_str(&dir.path().join("config.toml"), &input, &env)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("clients.b.outputs[0].path: ")
            && e.contains("link/a.token is the same file as")
            && e.contains("of clients.a.outputs[0]"),
        "{e}"
    );
    assert!(
        e.contains("clients.c.outputs[1].path: ")
            && e.contains("lies inside the atomic_dir set of clients.c.outputs[0]"),
        "{e}"
    );
}

#[test]
fn one_client_is_loaded_without_the_others_and_its_errors_keep_their_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    let client = |name: &str, extra: &str| {
        format!(
            "[clients.{name}]\ntoken_url = \"https://a.example/token\"\nclient_id = \"id\"\nclient_secret = \"s\"\n{extra}\n[[clients.{name}.outputs]]\ntype = \"file\"\npath = \"/run/tk/{name}\"\n"
        )
    };
    // b is broken; a is read alone all the same
    let text = format!(
        "[daemon]\nstate_dir = \"/s\"\n\n{}\n{}\n{}",
        client("a", ""),
        client("b", "colour = 1"),
        client("c", "refresh_ratio = 2")
    );
    std::fs::write(&path, &text).unwrap();
    let one = |name: &str| load_one(&path, name, &env);
    match one("a").unwrap() {
        One::Found(c) => {
            assert_eq!(c.clients.keys().collect::<Vec<_>>(), ["a"]);
            assert_eq!(c.daemon.state_dir, Path::new("/s"));
        }
        One::Missing(_) => panic!("a is there"),
    }
    // c's own error, at its own line of the whole file
    let Err(e) = one("c") else {
        panic!("c is invalid")
    };
    let line = text.lines().position(|l| l == "refresh_ratio = 2").unwrap() + 1;
    assert!(
        e.to_string()
            .contains(&format!(":{line}:17: clients.c.refresh_ratio:")),
        "{e}"
    );
    assert!(
        !e.to_string().contains("colour"),
        "b's error is not c's: {e}"
    );
    match one("d").unwrap() {
        One::Missing(names) => assert_eq!(names, ["a", "b", "c"]),
        One::Found(_) => panic!("there is no d"),
    }
    // another layout: the whole file is parsed, one client still read
    std::fs::write(
        &path,
        "[clients]\na = { token_url = \"https://a.example/token\", client_id = \"id\", client_secret = \"s\", outputs = [{ type = \"file\", path = \"/run/tk/a\" }] }\n",
    )
    .unwrap();
    assert!(matches!(one("a").unwrap(), One::Found(c) if c.clients.len() == 1));
}

/// A config file on disk for [`Config::reload`], its clients written by
/// `client`.
struct Edited {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Edited {
    fn new(text: &str) -> (Edited, Config) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).unwrap();
        let config = super::load(&path, &env).unwrap();
        (Edited { _dir: dir, path }, config)
    }

    fn write(&self, text: &str) {
        std::fs::write(&self.path, text).unwrap();
    }
}

fn edit_client(name: &str, extra: &str, path: &str) -> String {
    format!(
        "[clients.{name}]\ntoken_url = \"https://a.example/token\"\nclient_id = \"id\"\nclient_secret = \"s\"\n{extra}\n[[clients.{name}.outputs]]\ntype = \"file\"\npath = \"{path}\"\n"
    )
}

fn edit_file(clients: &[(&str, &str, &str)]) -> String {
    let mut text = String::from("[daemon]\nstate_dir = \"/s\"\n\n[defaults]\ntimeout = \"5s\"\n\n");
    for (name, extra, path) in clients {
        text += &edit_client(name, extra, path);
    }
    text
}

#[track_caller]
fn edited(config: &Config) -> Edit {
    match config.reload(&env) {
        Ok(Reload::Edit(edit)) => edit,
        Ok(Reload::Whole(_)) => panic!("read whole"),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn an_edit_reads_only_the_clients_it_touched_and_they_come_out_as_a_whole_load_makes_them() {
    // more left alone than touched (else it reads the whole file)
    let alone: Vec<(String, String)> = (0..6)
        .map(|i| (format!("z{i}"), format!("/run/tk/z{i}")))
        .collect();
    let with_alone = |mine: &[(&str, &str, &str)]| {
        let mut all = mine.to_vec();
        all.extend(alone.iter().map(|(n, p)| (n.as_str(), "", p.as_str())));
        edit_file(&all)
    };
    let (file, mut config) = Edited::new(&with_alone(&[
        ("a", "", "/run/tk/a"),
        ("b", "", "/run/tk/b"),
        ("c", "", "/run/tk/c"),
    ]));
    // b changed, c removed, d, e, f added
    let text = with_alone(&[
        ("a", "", "/run/tk/a"),
        ("b", "scope = \"more\"", "/run/tk/b"),
        ("d", "", "/run/tk/d"),
        ("e", "", "/run/tk/e"),
        ("f", "", "/run/tk/f"),
    ]);
    file.write(&text);
    let edit = edited(&config);
    assert_eq!(
        edit.clients.keys().collect::<Vec<_>>(),
        ["b", "d", "e", "f"]
    );
    assert_eq!(edit.removed, ["c"]);
    let whole = load_str(&file.path, &text, &env).unwrap();
    for (name, spec) in &edit.clients {
        assert_eq!(spec, &whole.clients[name], "{name}");
    }
    config.commit(edit);
    assert_eq!(config.digest, whole.digest);
    // the next edit is measured from the committed one: a comment in d
    let commented = text.replace("[clients.d]\n", "[clients.d]\n# d's\n");
    file.write(&commented);
    let edit = edited(&config);
    assert_eq!(edit.clients.keys().collect::<Vec<_>>(), ["d"]);
    assert!(edit.removed.is_empty());
    assert_eq!(edit.clients["d"], whole.clients["d"], "as it was");
    config.commit(edit);
    // nothing but a removal
    file.write(&commented.replace(&edit_client("f", "", "/run/tk/f"), ""));
    let edit = edited(&config);
    assert!(edit.clients.is_empty());
    assert_eq!(edit.removed, ["f"]);
}

#[test]
fn the_shared_part_another_layout_or_most_clients_changed_read_the_whole_file() {
    let two = [
        ("a", "", "/run/tk/a"),
        ("b", "", "/run/tk/b"),
        ("c", "", "/run/tk/c"),
    ];
    let text = edit_file(&two);
    let (file, config) = Edited::new(&text);
    let whole = |text: &str| {
        file.write(text);
        matches!(config.reload(&env), Ok(Reload::Whole(_)))
    };
    assert!(whole(&text.replace("timeout = \"5s\"", "timeout = \"6s\"")));
    assert!(whole(
        &text.replace("state_dir = \"/s\"", "state_dir = \"/t\"")
    ));
    assert!(whole(&format!("{text}[clients]\n")), "not the plain layout");
    assert!(whole(&edit_file(&[
        ("a", "scope = \"x\"", "/run/tk/a"),
        ("b", "scope = \"x\"", "/run/tk/b"),
        ("c", "", "/run/tk/c"),
    ])));
    assert!(!whole(&edit_file(&[
        ("a", "scope = \"x\"", "/run/tk/a"),
        ("b", "", "/run/tk/b"),
        ("c", "", "/run/tk/c"),
    ])));
    // a config that was not of the plain layout reads whole from then on
    let (file, config) = Edited::new(
        "[clients]\na = { token_url = \"https://a.example/token\", client_id = \"id\", client_secret = \"s\", outputs = [{ type = \"file\", path = \"/run/tk/a\" }] }\n",
    );
    file.write(&edit_file(&two));
    assert!(matches!(config.reload(&env), Ok(Reload::Whole(_))));
}

#[test]
fn an_edit_is_checked_against_the_clients_it_left_alone_and_its_errors_keep_their_lines() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    std::fs::create_dir(dir.path().join("real")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("link")).unwrap();
    let clients = [
        ("a", "", format!("{d}/real/a.token")),
        ("b", "", format!("{d}/b.token")),
        ("c", "", format!("{d}/set/c.token")),
        ("e", "", format!("{d}/e.token")),
    ];
    let as_refs = |c: &[(&'static str, &'static str, String)]| {
        edit_file(
            &c.iter()
                .map(|(n, x, p)| (*n, *x, p.as_str()))
                .collect::<Vec<_>>(),
        )
    };
    let (file, config) = Edited::new(&as_refs(&clients));
    let refused = |text: &str| {
        file.write(text);
        match config.reload(&env) {
            Ok(Reload::Edit(_)) => panic!("accepted:\n{text}"),
            Ok(Reload::Whole(_)) => panic!("read whole:\n{text}"),
            Err(e) => e.to_string(),
        }
    };
    // b takes a's path as written
    let mut taken = clients.clone();
    taken[1].2 = clients[0].2.clone();
    let e = refused(&as_refs(&taken));
    assert!(
        e.contains("clients.b.outputs[0].path: ")
            && e.contains("also written by clients.a.outputs[0]"),
        "{e}"
    );
    // ... through a symlinked directory
    taken[1].2 = format!("{d}/link/a.token");
    let e = refused(&as_refs(&taken));
    assert!(
        e.contains("link/a.token is the same file as") && e.contains("of clients.a.outputs[0]"),
        "{e}"
    );
    // b becomes an atomic_dir set around c's file
    taken[1].2 = format!("{d}/set\"\nlayout = \"atomic_dir");
    let e = refused(&as_refs(&taken));
    assert!(
        e.contains("clients.c.outputs[0].path: ")
            && e.contains("inside the atomic_dir set of clients.b.outputs[0]"),
        "{e}"
    );
    // b's own mistakes, at their lines in the whole file
    let mut broken = clients.clone();
    broken[1].1 = "refresh_ratio = 2";
    let text = as_refs(&broken);
    let line = text.lines().position(|l| l == "refresh_ratio = 2").unwrap() + 1;
    let e = refused(&text);
    assert!(
        e.starts_with(&format!(
            "{}:{line}:17: clients.b.refresh_ratio:",
            file.path.display()
        )),
        "{e}"
    );
    broken[1].1 = "scope = \"unclosed";
    let text = as_refs(&broken);
    let line = text
        .lines()
        .position(|l| l == "scope = \"unclosed")
        .unwrap()
        + 1;
    let e = refused(&text);
    assert!(e.contains(&format!(":{line}:")), "{e}");
}

#[test]
fn a_kubeconfig_file_gives_the_api_server_and_is_not_mixed_with_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("kubeconfig"),
        "current-context: prod\nclusters:\n- {name: c, cluster: {server: \"https://k8s.example.com:6443\"}}\nusers:\n- {name: u, user: {tokenFile: sa.token}}\ncontexts:\n- {name: prod, context: {cluster: c, user: u, namespace: shop}}\n- {name: other, context: {cluster: c, user: u}}\n",
    )
    .unwrap();
    let output = "[[clients.shop.outputs]]\ntype = \"kubernetes_secret\"\nname = \"api\"\nkubeconfig = \"kubeconfig\"\n";
    let path = dir.path().join("config.toml");
    let c = load_str(&path, &format!("{MINIMAL}{output}"), &env).unwrap();
    let OutputKind::KubernetesSecret(k) = &c.clients["shop"].outputs[1].kind else {
        panic!("a kubernetes_secret output")
    };
    assert_eq!(k.api.server.as_str(), "https://k8s.example.com:6443/");
    assert_eq!(k.namespace, "shop");
    assert_eq!(
        k.api.credential,
        crate::kube::Credential::TokenFile(dir.path().join("sa.token"))
    );
    let other = format!("{MINIMAL}{output}context = \"other\"\n");
    let c = load_str(&path, &other, &env).unwrap();
    let OutputKind::KubernetesSecret(k) = &c.clients["shop"].outputs[1].kind else {
        panic!("a kubernetes_secret output")
    };
    assert_eq!(k.namespace, "default", "kubectl's default namespace");

    let mixed = format!("{MINIMAL}{output}api_server = \"https://x\"\ncontext = \"nope\"\n");
    let e = load_str(&path, &mixed, &env).unwrap_err().to_string();
    let lines: Vec<&str> = e.lines().collect();
    assert_eq!(lines.len(), 2, "{e}");
    // sorted by line: the kubeconfig key comes first
    assert!(lines[1].ends_with("clients.shop.outputs[1].api_server: the kubeconfig file names the API server, its CA and the credentials: give either kubeconfig or this"), "{e}");
    assert!(
        lines[0].contains(&format!(
            "clients.shop.outputs[1].kubeconfig: {}: has no context \"nope\" (it has: \"prod\", \"other\")",
            dir.path().join("kubeconfig").display()
        )),
        "{e}"
    );
    let stray = MINIMAL.to_string()
        + "[[clients.shop.outputs]]\ntype = \"kubernetes_secret\"\nname = \"api\"\napi_server = \"https://k8s.example.com\"\ncontext = \"prod\"\n";
    let e = load(&stray).unwrap_err().to_string();
    assert!(
        e.contains("clients.shop.outputs[1].context: names a context of a kubeconfig file: set kubeconfig too"),
        "{e}"
    );
}
