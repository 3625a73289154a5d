//! Where tokens go besides single files: atomic file sets, OpenBao (Vault KV
//! v2) with token and AppRole auth, a Kubernetes Secret (against a strict
//! stand-in for the exact request; scripts/check-kubernetes runs it against
//! a real API server), and the hooks that tell
//! consumers: exec and signal. Also min_valid.

use crate::util::*;
use nix::sys::signal::Signal;
use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[test]
fn a_reader_of_an_atomic_dir_never_mixes_two_tokens() {
    let server = FaultServer::start(Some(3600));
    let sb = Sandbox::new();
    sb.write_config(&client("a", &server.url, "min_interval = \"1ms\"").replace(
        "path = \"a.token\"",
        "path = \"a.d\"\nlayout = \"atomic_dir\"\nformat = \"header\"\nextra_headers = { \"X-Tenant-ID\" = \"t1\" }\nmode = \"0640\"",
    ));
    let daemon = sb.start();
    wait_until("the set", WAIT, || sb.read("a.d/token").is_some());
    assert_eq!(
        sb.read("a.d/header").unwrap(),
        format!(
            "Authorization: Bearer {}\nX-Tenant-ID: t1\n",
            sb.read("a.d/token").unwrap()
        )
    );

    let stop = Arc::new(AtomicBool::new(false));
    let dir = sb.path("a.d");
    let reader = {
        let (dir, stop) = (dir.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut consistent_reads, mut versions) = (0u64, std::collections::HashSet::new());
            while !stop.load(Ordering::Relaxed) {
                // the documented way: resolve ..data once, read through it
                let Ok(version) = fs::read_link(dir.join("..data")) else {
                    continue;
                };
                let base = dir.join(&version);
                let (Ok(token), Ok(json)) = (
                    fs::read_to_string(base.join("token")),
                    fs::read_to_string(base.join("token.json")),
                ) else {
                    continue; // that version was just replaced and removed: resolve again
                };
                let json: serde_json::Value = serde_json::from_str(&json).expect("whole json");
                assert_eq!(
                    json["access_token"],
                    token.as_str(),
                    "token and token.json from different versions"
                );
                assert!(token_number(&token).is_some(), "partial token");
                versions.insert(version);
                consistent_reads += 1;
            }
            (consistent_reads, versions.len())
        })
    };
    let spammer = spam_usr1(daemon.pid(), Duration::from_millis(3), stop.clone());
    wait_until("300 rotations", Duration::from_secs(60), || {
        server.count() >= 300
    });
    stop.store(true, Ordering::Relaxed);
    spammer.join().unwrap();
    let (reads, versions) = reader.join().unwrap();
    assert!(
        reads > 100 && versions > 20,
        "reads {reads}, versions seen {versions}"
    );
    daemon.stop();
    let dirs = fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().unwrap().is_dir())
        .count();
    assert_eq!(dirs, 1, "old versions are removed");
    assert_eq!(
        fs::metadata(dir.join("token"))
            .unwrap()
            .permissions()
            .mode_bits(),
        0o640
    );
}

trait ModeBits {
    fn mode_bits(&self) -> u32;
}

impl ModeBits for fs::Permissions {
    fn mode_bits(&self) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        self.mode() & 0o777
    }
}

fn vault_output(bao: &OpenBao, path: &str, auth: &str) -> String {
    format!(
        "[[clients.a.outputs]]\ntype = \"vault_kv\"\naddress = \"{}\"\npath = \"{path}\"\n{auth}\n\n",
        bao.addr
    )
}

#[test]
fn openbao_kv2_with_a_token_file_and_check_and_set() {
    let bao = OpenBao::start();
    let server = FaultServer::start(Some(3600));
    let sb = Sandbox::new();
    sb.write("bao.token", "root-token\n");
    sb.write_config(
        &(client("a", &server.url, "")
            + &vault_output(&bao, "oauth/a", "token_file = \"bao.token\"")),
    );
    let (code, _, stderr) = sb.run(&["once"]);
    assert_eq!(code, 0, "{stderr}");
    let (status, body) = bao.api("GET", "secret/data/oauth/a", None);
    assert_eq!(status, 200);
    let data = &body["data"]["data"];
    assert_eq!(data["access_token"], sb.read("a.token").unwrap().as_str());
    assert_eq!(data["token_type"], "Bearer");
    assert!(data["expires_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(body["data"]["metadata"]["version"], 1);

    // another daemon wrote a token that lives longer: it is not overwritten
    let later = serde_json::json!({"data": {"access_token": "newer-token", "expires_at_unix": 4_102_444_800i64}});
    assert_eq!(bao.api("POST", "secret/data/oauth/a", Some(later)).0, 200);
    let (code, _, stderr) = sb.run(&["once"]);
    assert_eq!(code, 0, "{stderr}");
    let (_, body) = bao.api("GET", "secret/data/oauth/a", None);
    assert_eq!(body["data"]["data"]["access_token"], "newer-token");
    assert!(
        stderr.contains("already holds a token that expires later"),
        "{stderr}"
    );
}

#[test]
fn openbao_approle_with_a_least_privilege_policy() {
    let bao = OpenBao::start();
    assert_eq!(
        bao.api(
            "POST",
            "sys/auth/approle",
            Some(serde_json::json!({"type": "approle"}))
        )
        .0,
        204
    );
    let policy =
        r#"path "secret/data/oauth/allowed" { capabilities = ["create", "update", "read"] }"#;
    assert_eq!(
        bao.api(
            "PUT",
            "sys/policies/acl/tokenkeeper",
            Some(serde_json::json!({"policy": policy}))
        )
        .0,
        204
    );
    assert_eq!(
        bao.api(
            "POST",
            "auth/approle/role/tokenkeeper",
            Some(serde_json::json!({"token_policies": ["tokenkeeper"]}))
        )
        .0,
        204
    );
    let (_, role) = bao.api("GET", "auth/approle/role/tokenkeeper/role-id", None);
    let (_, secret) = bao.api("POST", "auth/approle/role/tokenkeeper/secret-id", None);
    let sb = Sandbox::new();
    sb.write("role-id", role["data"]["role_id"].as_str().unwrap());
    sb.write("secret-id", secret["data"]["secret_id"].as_str().unwrap());
    let server = FaultServer::start(Some(3600));
    let approle = "role_id_file = \"role-id\"\nsecret_id_file = \"secret-id\"";
    sb.write_config(
        &(client("a", &server.url, "")
            + &vault_output(&bao, "oauth/allowed", approle)
            + &vault_output(&bao, "oauth/forbidden", approle)),
    );
    let daemon = sb.start();
    daemon.wait_log("cannot write output", 1);
    let logs = daemon.logs();
    assert!(
        logs.contains("vault_kv secret/oauth/forbidden") && logs.contains("permission denied"),
        "{logs}"
    );
    let (status, body) = bao.api("GET", "secret/data/oauth/allowed", None);
    assert_eq!(status, 200, "the allowed path was written");
    assert_eq!(
        body["data"]["data"]["access_token"],
        sb.read("a.token").unwrap().as_str()
    );
    assert_eq!(bao.api("GET", "secret/data/oauth/forbidden", None).0, 404);
    wait_until("status to show the refused output", WAIT, || {
        let status = sb.run(&["status"]).1;
        status.contains("vault_kv secret/oauth/forbidden") && status.contains("permission denied")
    });
    daemon.stop();
}

#[derive(Default, Clone)]
struct ApiLog {
    requests: Vec<(String, String, String, String, String)>, // method, path+query, content type, authorization, body
}

/// A stand-in for the Kubernetes API server: it accepts exactly the
/// server-side apply tokenkeeper must send, and records it.
fn kube_standin(log: Arc<Mutex<ApiLog>>) -> LocalHttp {
    async fn handler(
        axum::extract::State(log): axum::extract::State<Arc<Mutex<ApiLog>>>,
        method: axum::http::Method,
        uri: axum::http::Uri,
        headers: axum::http::HeaderMap,
        body: String,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        let h = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        log.lock().unwrap().requests.push((
            method.to_string(),
            uri.to_string(),
            h("content-type"),
            h("authorization"),
            body.clone(),
        ));
        let ok = method == "PATCH"
            && uri.path() == "/api/v1/namespaces/team-a/secrets/api-token"
            && uri.query() == Some("fieldManager=tokenkeeper&force=true")
            && h("content-type") == "application/apply-patch+yaml"
            && h("authorization") == "Bearer sa-token-123";
        if !ok {
            return (axum::http::StatusCode::FORBIDDEN, axum::Json(serde_json::json!({"kind": "Status", "message": "forbidden: not the expected apply"}))).into_response();
        }
        axum::Json(serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default())
            .into_response()
    }
    LocalHttp::serve(|_| axum::Router::new().fallback(handler).with_state(log))
}

#[test]
fn a_kubernetes_secret_by_server_side_apply() {
    use base64::Engine;
    let log = Arc::new(Mutex::new(ApiLog::default()));
    let api = kube_standin(log.clone());
    let server = FaultServer::start(Some(3600));
    let sb = Sandbox::new();
    sb.write("sa-token", "sa-token-123\n");
    sb.write_config(&(client("a", &server.url, "") + &format!(
        "[[clients.a.outputs]]\ntype = \"kubernetes_secret\"\napi_server = \"{}\"\ntoken_file = \"sa-token\"\nnamespace = \"team-a\"\nname = \"api-token\"\nkey = \"token\"\n",
        api.base
    )));
    let (code, _, stderr) = sb.run(&["once"]);
    assert_eq!(code, 0, "{stderr}");
    let requests = log.lock().unwrap().requests.clone();
    assert_eq!(requests.len(), 1);
    let body: serde_json::Value = serde_json::from_str(&requests[0].4).unwrap();
    assert_eq!(body["apiVersion"], "v1");
    assert_eq!(body["kind"], "Secret");
    assert_eq!(body["metadata"]["name"], "api-token");
    assert_eq!(body["metadata"]["namespace"], "team-a");
    let data = base64::engine::general_purpose::STANDARD
        .decode(body["data"]["token"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        String::from_utf8(data).unwrap(),
        sb.read("a.token").unwrap()
    );
    assert_eq!(
        body["data"].as_object().unwrap().len(),
        1,
        "only the key tokenkeeper owns"
    );

    // a refusal is reported with the API's message
    sb.write("sa-token", "wrong");
    let (code, _, stderr) = sb.run(&["once"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("the Kubernetes API refused applying secret team-a/api-token: HTTP 403: forbidden: not the expected apply"), "{stderr}");
}

#[test]
fn a_consumer_that_reloads_on_sighup_always_reads_the_new_token() {
    let server = FaultServer::start(Some(3600));
    let sb = Sandbox::new();
    let consumer = sb.write(
        "consumer.sh",
        // the trap before the pid file: a HUP before the trap would end bash
        "#!/bin/bash\ntrap 'cat a.token >> seen; echo >> seen' HUP\necho $$ > consumer.pid\nwhile true; do sleep 0.05; done\n",
    );
    // SIGHUP at its default: a shell cannot trap a signal ignored when it
    // started, as it is under `nohup`, which CI or a developer may use
    let mut child = std::process::Command::new("env")
        .args(["--default-signal=HUP", "bash"])
        .arg(&consumer)
        .current_dir(sb.dir.path())
        .spawn()
        .unwrap();
    wait_until("the consumer's pid file", WAIT, || {
        sb.read("consumer.pid").is_some_and(|p| p.ends_with('\n'))
    });
    sb.write_config(&client("a", &server.url, "").replace(
        "path = \"a.token\"",
        "path = \"a.token\"\nsignal = \"HUP\"\npid_file = \"consumer.pid\"",
    ));
    let daemon = sb.start();
    for round in 1..=5u64 {
        let what = format!(
            "the consumer read token {round} (consumer running: {:?}, a.token: {:?})",
            child.try_wait().map(|s| s.is_none()),
            sb.read("a.token").and_then(|t| token_number(&t))
        );
        daemon.wait_until(&what, || {
            sb.read("seen")
                .is_some_and(|s| s.lines().count() as u64 >= round)
        });
        let seen = sb.read("seen").unwrap();
        let last = seen.lines().last().unwrap();
        assert_eq!(
            token_number(last),
            Some(round),
            "after signal {round} the consumer read {last:?}"
        );
        daemon.signal(Signal::SIGUSR1);
    }
    daemon.stop();
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn exec_hooks_get_the_environment_and_are_killed_at_their_timeout() {
    let server = FaultServer::start(Some(3600));
    let sb = Sandbox::new();
    let outputs = "[[clients.a.outputs]]\ntype = \"file\"\npath = \"b.token\"\nexec = [\"sh\", \"-c\", \"env > hook.env\"]\n\n[[clients.a.outputs]]\ntype = \"file\"\npath = \"c.token\"\nexec = [\"sleep\", \"30\"]\nexec_timeout = \"300ms\"\n";
    sb.write_config(&(client("a", &server.url, "") + outputs));
    let started = std::time::Instant::now();
    let (code, _, stderr) = sb.run(&["once"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let env = sb.read("hook.env").unwrap();
    assert!(
        env.contains("TOKENKEEPER_CLIENT=a\n")
            && env.contains(&format!(
                "TOKENKEEPER_OUTPUT=file {}\n",
                sb.path("b.token").display()
            )),
        "{env}"
    );
    assert!(env.contains("TOKENKEEPER_EXPIRES_AT=20"), "{env}");
    assert!(
        !env.contains(TOKEN_MARKER),
        "the token is not passed unless asked"
    );
    assert!(
        stderr.contains("exec hook failed: sleep did not finish within 300ms; killed"),
        "{stderr}"
    );
    // unchanged content: no write, so no hook
    std::fs::remove_file(sb.path("hook.env")).unwrap();
    let (_, _, _) = sb.run(&["once"]);
    assert!(sb.read("hook.env").is_some(), "a new token is a change");
}

#[test]
fn min_valid_keeps_short_tokens_out_of_outputs() {
    let server = FaultServer::start(Some(5));
    let sb = Sandbox::new();
    sb.write_config(&client("a", &server.url, "min_valid = \"10s\""));
    let (code, _, stderr) = sb.run(&["once"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("not more than min_valid"), "{stderr}");
    assert!(sb.read("a.token").is_none());
}

fn aws_output(moto: &Moto, id: &str) -> String {
    format!(
        "[[clients.a.outputs]]\ntype = \"aws_secrets_manager\"\nsecret_id = \"{id}\"\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n",
        moto.url
    )
}

fn once_with_aws_keys(sb: &Sandbox, key: &str, secret: &str) -> (i32, String) {
    let mut cmd = sb.cmd(&["once"]);
    cmd.env("AWS_ACCESS_KEY_ID", key)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env_remove("AWS_SESSION_TOKEN")
        .env("HOME", sb.dir.path());
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn aws_secrets_manager_creates_then_updates_the_secret() {
    let moto = Moto::start(None);
    let server = FaultServer::start(Some(3600));
    let sb = Sandbox::new();
    sb.write_config(&(client("a", &server.url, "") + &aws_output(&moto, "oauth/a")));
    for round in 1..=2 {
        let (code, stderr) = once_with_aws_keys(&sb, "testing", "testing");
        assert_eq!(code, 0, "{stderr}");
        let stored: serde_json::Value =
            serde_json::from_str(&moto.secret_string("oauth/a").expect("the secret")).unwrap();
        assert_eq!(
            stored["access_token"],
            sb.read("a.token").unwrap().as_str(),
            "round {round}"
        );
        assert_eq!(stored["token_type"], "Bearer");
        assert_eq!(stderr.contains("creating it"), round == 1, "{stderr}");
    }
}

#[test]
fn aws_secrets_manager_with_auth_enforced_signs_correctly() {
    // three free actions to create an IAM user with a policy and a key; then moto checks every signature
    let moto = Moto::start(Some(3));
    let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"secretsmanager:*","Resource":"*"}]}"#;
    moto.curl(
        "iam",
        "testing",
        "testing",
        &[
            "-d",
            "Action=CreateUser",
            "-d",
            "UserName=tk",
            "-d",
            "Version=2010-05-08",
        ],
    );
    moto.curl(
        "iam",
        "testing",
        "testing",
        &[
            "-d",
            "Action=PutUserPolicy",
            "-d",
            "UserName=tk",
            "-d",
            "PolicyName=sm",
            "--data-urlencode",
            &format!("PolicyDocument={policy}"),
            "-d",
            "Version=2010-05-08",
        ],
    );
    let xml = moto.curl(
        "iam",
        "testing",
        "testing",
        &[
            "-d",
            "Action=CreateAccessKey",
            "-d",
            "UserName=tk",
            "-d",
            "Version=2010-05-08",
        ],
    );
    let tag = |t: &str| {
        xml.split(&format!("<{t}>"))
            .nth(1)
            .and_then(|r| r.split(&format!("</{t}>")).next())
            .unwrap_or_else(|| panic!("no {t} in {xml}"))
            .to_string()
    };
    let (key, secret) = (tag("AccessKeyId"), tag("SecretAccessKey"));

    let server = FaultServer::start(Some(3600));
    let sb = Sandbox::new();
    sb.write_config(&(client("a", &server.url, "") + &aws_output(&moto, "oauth/enforced")));
    let (code, stderr) = once_with_aws_keys(&sb, &key, &secret);
    assert_eq!(code, 0, "a correctly signed request is accepted: {stderr}");

    let (code, stderr) = once_with_aws_keys(&sb, &key, "not-the-secret-key");
    assert_eq!(code, 1);
    assert!(
        stderr.contains("Secrets Manager refused writing oauth/enforced: HTTP 4")
            && stderr.contains("Signature"),
        "{stderr}"
    );
    assert!(!stderr.contains("not-the-secret-key"));
}
