//! Preset conformance: each preset against an in-test token endpoint that is
//! as strict as the platform's documentation. It refuses the wrong content
//! type, credentials in the wrong place, a missing or misspelled scope, and a
//! reused refresh token; every test also shows it refusing a near miss.

use crate::util::*;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ID: &str = "app-id";
const SECRET: &str = "app-Secret-Value";

#[derive(Default)]
struct Strict {
    lifetime: u64,
    issued: u64,
    valid_refresh: HashSet<String>,
    reused: u32,
    /// (platform, grant) of every token handed out
    grants: Vec<(String, String)>,
    refusals: Vec<String>,
}

type Fields = HashMap<String, String>;

fn form(body: &[u8]) -> Fields {
    url::form_urlencoded::parse(body).into_owned().collect()
}

fn json(body: &[u8]) -> Option<Fields> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.as_object()?
        .iter()
        .map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
        .collect()
}

/// A minimal multipart/form-data reader: text fields only.
fn multipart(content_type: &str, body: &[u8]) -> Option<Fields> {
    let boundary = content_type.split("boundary=").nth(1)?.trim_matches('"');
    let text = String::from_utf8_lossy(body);
    let mut fields = Fields::new();
    for part in text.split(&format!("--{boundary}")) {
        let Some((head, value)) = part.split_once("\r\n\r\n") else {
            continue;
        };
        let name = head.split("name=\"").nth(1)?.split('"').next()?;
        fields.insert(name.to_string(), value.trim_end_matches("\r\n").to_string());
    }
    Some(fields)
}

fn basic(headers: &axum::http::HeaderMap) -> Option<(String, String)> {
    use base64::Engine;
    let value = headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Basic ")?;
    let decoded = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(value)
            .ok()?,
    )
    .ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((id.to_string(), secret.to_string()))
}

type Answer = Result<serde_json::Value, (u16, &'static str, String)>;

fn refuse(status: u16, error: &'static str, why: impl Into<String>) -> Answer {
    Err((status, error, why.into()))
}

async fn strict_handler(
    axum::extract::State((state, base)): axum::extract::State<(Arc<Mutex<Strict>>, String)>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut s = state.lock().unwrap();
    s.issued += 1;
    let (n, lifetime) = (s.issued, s.lifetime);
    let token = |platform: &str| format!("tok-{platform}-{n}");
    let standard = |platform: &str, refresh: Option<String>| {
        let mut v = serde_json::json!({"access_token": token(platform), "token_type": "Bearer", "expires_in": lifetime});
        if let Some(rt) = refresh {
            v["refresh_token"] = rt.into();
        }
        v
    };
    let form_ct = ct.starts_with("application/x-www-form-urlencoded");
    let json_ct = ct.starts_with("application/json");
    let path = uri.path().to_string();
    let answer: Answer = match (method.as_str(), path.as_str()) {
        ("POST", "/plenty/token") => {
            let f = form(&body);
            if !form_ct {
                refuse(415, "invalid_request", "plentymarkets expects a form body")
            } else if headers.contains_key("authorization") {
                refuse(
                    400,
                    "invalid_request",
                    "client credentials belong in the body",
                )
            } else if f.get("grant_type").map(String::as_str) != Some("client_credentials") {
                refuse(400, "unsupported_grant_type", "client_credentials only")
            } else if f.get("client_id").map(String::as_str) != Some(ID)
                || f.get("client_secret").map(String::as_str) != Some(SECRET)
            {
                refuse(401, "invalid_client", "client authentication failed")
            } else {
                Ok(standard("plenty", None))
            }
        }
        ("POST", "/jtl/oauth2/token") => {
            let f = form(&body);
            if !form_ct {
                refuse(415, "invalid_request", "form body expected")
            } else if f.contains_key("client_secret") {
                refuse(
                    400,
                    "invalid_request",
                    "JTL expects HTTP Basic client authentication, not a secret in the body",
                )
            } else if basic(&headers) != Some((ID.into(), SECRET.into())) {
                refuse(
                    401,
                    "invalid_client",
                    "HTTP Basic client authentication failed",
                )
            } else if f.get("grant_type").map(String::as_str) != Some("client_credentials") {
                refuse(400, "unsupported_grant_type", "client_credentials only")
            } else {
                Ok(standard("jtl", None))
            }
        }
        ("POST", "/scx/v1/auth") => match multipart(&ct, &body)
            .filter(|_| ct.starts_with("multipart/form-data"))
        {
            None => refuse(
                415,
                "invalid_request",
                "multipart/form-data with a refreshToken field expected",
            ),
            Some(f) if f.get("refreshToken").map(String::as_str) != Some("scx-refresh-token") => {
                refuse(401, "invalid_grant", "unknown refreshToken")
            }
            Some(_) => {
                let expire = time::OffsetDateTime::now_utc().to_offset(time::macros::offset!(+2))
                    + time::Duration::seconds(lifetime as i64);
                let expire = expire
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap();
                Ok(
                    serde_json::json!({"authToken": token("scx"), "tokenExpireAt": expire, "expiresIn": lifetime}),
                )
            }
        },
        ("POST", "/oro/oauth2-token") | ("POST", "/shop/api/oauth/token") => {
            let shopware = path.starts_with("/shop");
            let platform = if shopware { "shopware" } else { "oro" };
            match json(&body).filter(|_| json_ct) {
                None => refuse(
                    415,
                    "invalid_request",
                    format!("{platform} expects a JSON body"),
                ),
                Some(f) => {
                    let grant = f.get("grant_type").cloned().unwrap_or_default();
                    let admin = shopware && grant != "client_credentials";
                    let client_ok = if admin {
                        f.get("client_id").map(String::as_str) == Some("administration")
                            && !f.contains_key("client_secret")
                    } else {
                        f.get("client_id").map(String::as_str) == Some(ID)
                            && f.get("client_secret").map(String::as_str) == Some(SECRET)
                    };
                    if !client_ok {
                        refuse(401, "invalid_client", "client authentication failed")
                    } else {
                        match grant.as_str() {
                            "client_credentials" => Ok(standard(platform, None)),
                            "password" if shopware && f.contains_key("scope") => refuse(
                                400,
                                "invalid_request",
                                "Shopware's password grant takes `scopes`, not `scope`",
                            ),
                            "password"
                                if shopware
                                    && f.get("scopes").map(String::as_str) != Some("write") =>
                            {
                                refuse(400, "invalid_scope", "scopes = write is required")
                            }
                            "password"
                                if f.get("username").map(String::as_str) == Some("admin")
                                    && f.get("password").map(String::as_str)
                                        == Some("admin-pw") =>
                            {
                                let rt = format!("rt-{platform}-{n}");
                                s.valid_refresh.insert(rt.clone());
                                Ok(standard(platform, Some(rt)))
                            }
                            "password" => {
                                refuse(400, "invalid_grant", "wrong username or password")
                            }
                            "refresh_token" => {
                                let rt = f.get("refresh_token").cloned().unwrap_or_default();
                                if s.valid_refresh.remove(&rt) {
                                    let next = format!("rt-{platform}-{n}");
                                    s.valid_refresh.insert(next.clone());
                                    Ok(standard(platform, Some(next)))
                                } else {
                                    s.reused += 1;
                                    refuse(
                                        400,
                                        "invalid_grant",
                                        "the refresh token is invalid or was already used",
                                    )
                                }
                            }
                            _ => refuse(400, "unsupported_grant_type", grant.clone()),
                        }
                    }
                }
            }
        }
        ("GET", "/floriday/.well-known/oauth-authorization-server") => Ok(
            serde_json::json!({"issuer": format!("{base}/floriday"), "token_endpoint": format!("{base}/floriday/token")}),
        ),
        ("POST", "/floriday/token") => {
            let f = form(&body);
            let accept = headers
                .get("accept")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !form_ct {
                refuse(415, "invalid_request", "form body expected")
            } else if !accept.contains("application/json") {
                refuse(
                    406,
                    "invalid_request",
                    "Accept: application/json is required",
                )
            } else if f.get("scope").is_none_or(|s| s.is_empty()) {
                refuse(400, "invalid_scope", "scope is required")
            } else if f.get("client_id").map(String::as_str) != Some(ID)
                || f.get("client_secret").map(String::as_str) != Some(SECRET)
            {
                refuse(401, "invalid_client", "client authentication failed")
            } else {
                Ok(standard("floriday", None))
            }
        }
        _ => refuse(404, "not_found", format!("{method} {path}")),
    };
    match answer {
        Ok(v) => {
            let platform = path.split('/').nth(1).unwrap_or("").to_string();
            let grant = if method == "GET" {
                "metadata".to_string()
            } else {
                form(&body)
                    .get("grant_type")
                    .cloned()
                    .or_else(|| json(&body).and_then(|f| f.get("grant_type").cloned()))
                    .unwrap_or("refreshToken".into())
            };
            s.grants.push((platform, grant));
            axum::Json(v).into_response()
        }
        Err((status, error, why)) => {
            s.refusals.push(why.clone());
            let code = axum::http::StatusCode::from_u16(status).unwrap();
            (
                code,
                axum::Json(serde_json::json!({"error": error, "error_description": why})),
            )
                .into_response()
        }
    }
}

struct StrictServer {
    base: String,
    state: Arc<Mutex<Strict>>,
    _http: LocalHttp,
}

impl StrictServer {
    fn start(lifetime: u64) -> StrictServer {
        let state = Arc::new(Mutex::new(Strict {
            lifetime,
            ..Strict::default()
        }));
        let http = LocalHttp::serve(|base| {
            axum::Router::new()
                .fallback(strict_handler)
                .with_state((state.clone(), base.to_string()))
        });
        StrictServer {
            base: http.base.clone(),
            state,
            _http: http,
        }
    }

    fn grants(&self, platform: &str, grant: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .grants
            .iter()
            .filter(|(p, g)| p == platform && g == grant)
            .count()
    }

    fn reused(&self) -> u32 {
        self.state.lock().unwrap().reused
    }
}

fn preset_client(name: &str, preset: &str, url_key: &str, url: &str, extra: &str) -> String {
    format!(
        "[clients.{name}]\npreset = \"{preset}\"\n{url_key} = \"{url}\"\nmin_interval = \"1s\"\nbackoff_initial = \"200ms\"\nbackoff_max = \"1s\"\n{extra}\n\n[[clients.{name}.outputs]]\ntype = \"file\"\npath = \"{name}.json\"\nformat = \"json\"\n\n"
    )
}

const CREDS: &str = "client_id = \"app-id\"\nclient_secret = \"app-Secret-Value\"";

/// `once` with `config` fails (exit 1) and says `says` on stderr.
#[track_caller]
fn once_refused(sb: &Sandbox, config: &str, says: &str) {
    let (code, stderr, _) = once(sb, config);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains(says), "{stderr}");
}

/// `once` for one client: (exit status, stderr, the token written).
fn once(sb: &Sandbox, config: &str) -> (i32, String, Option<String>) {
    sb.write_config(config);
    let _ = std::fs::remove_dir_all(sb.path("state"));
    let (code, _, stderr) = sb.run(&["once"]);
    let token = std::fs::read_dir(sb.dir.path())
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .and_then(|e| {
            let json: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(e.path()).ok()?).ok()?;
            json["access_token"].as_str().map(str::to_string)
        });
    for e in std::fs::read_dir(sb.dir.path()).unwrap().flatten() {
        if e.file_name().to_string_lossy().ends_with(".json") {
            let _ = std::fs::remove_file(e.path());
        }
    }
    (code, stderr, token)
}

#[test]
fn plentymarkets_form_body_credentials() {
    let server = StrictServer::start(3600);
    let sb = Sandbox::new();
    let url = format!("{}/plenty/token", server.base);
    let (code, stderr, token) = once(
        &sb,
        &preset_client("plenty", "plentymarkets", "token_url", &url, CREDS),
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(token.unwrap().starts_with("tok-plenty-"));
    once_refused(
        &sb,
        &preset_client(
            "plenty",
            "plentymarkets",
            "token_url",
            &url,
            &format!("{CREDS}\nauth = \"basic\""),
        ),
        "HTTP 400 invalid_request: client credentials belong in the body",
    );
}

#[test]
fn jtl_cloud_basic_auth_and_the_tenant_header() {
    let server = StrictServer::start(3600);
    let sb = Sandbox::new();
    let url = format!("{}/jtl/oauth2/token", server.base);
    let config = preset_client("jtl", "jtl-cloud", "token_url", &url, CREDS)
        + "[[clients.jtl.outputs]]\ntype = \"file\"\npath = \"jtl.header\"\nformat = \"header\"\nextra_headers = { \"X-Tenant-ID\" = \"tenant-42\" }\n";
    let (code, stderr, token) = once(&sb, &config);
    assert_eq!(code, 0, "{stderr}");
    let token = token.unwrap();
    assert_eq!(
        sb.read("jtl.header").unwrap(),
        format!("Authorization: Bearer {token}\nX-Tenant-ID: tenant-42\n")
    );
    once_refused(
        &sb,
        &preset_client(
            "jtl",
            "jtl-cloud",
            "token_url",
            &url,
            &format!("{CREDS}\nauth = \"body\""),
        ),
        "expects HTTP Basic client authentication",
    );
}

#[test]
fn jtl_scx_multipart_refresh_token_and_its_own_response_fields() {
    let server = StrictServer::start(3600);
    let sb = Sandbox::new();
    sb.write("scx.rt", "scx-refresh-token\n");
    let url = format!("{}/scx/v1/auth", server.base);
    let (code, stderr, token) = once(
        &sb,
        &preset_client(
            "scx",
            "jtl-scx",
            "token_url",
            &url,
            "refresh_token_file = \"scx.rt\"",
        ),
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(token.unwrap().starts_with("tok-scx-"));
    once_refused(
        &sb,
        &preset_client(
            "scx",
            "jtl-scx",
            "token_url",
            &url,
            "refresh_token_file = \"scx.rt\"\nencoding = \"form\"",
        ),
        "multipart/form-data with a refreshToken field expected",
    );
}

#[test]
fn floriday_discovery_scope_and_accept_header() {
    let server = StrictServer::start(3600);
    let sb = Sandbox::new();
    let issuer = format!("{}/floriday", server.base);
    let (code, stderr, token) = once(
        &sb,
        &preset_client(
            "flori",
            "floriday",
            "issuer",
            &issuer,
            &format!("{CREDS}\nscope = \"role:app catalog:read\""),
        ),
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(token.unwrap().starts_with("tok-floriday-"));
    assert_eq!(server.grants("floriday", "metadata"), 1);
    once_refused(
        &sb,
        &preset_client(
            "flori",
            "floriday",
            "issuer",
            &issuer,
            &format!("{CREDS}\nscope = \"x\"\nheaders = {{ Accept = \"text/plain\" }}"),
        ),
        "HTTP 406 invalid_request: Accept: application/json is required",
    );
    // and check explains the missing scope in one line
    sb.write_config(&preset_client(
        "flori", "floriday", "issuer", &issuer, CREDS,
    ));
    let (code, _, stderr) = sb.run(&["check"]);
    assert_eq!(code, 2);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("clients.flori.scope: is required: preset \"floriday\" needs scope"),
        "{stderr}"
    );
}

/// Runs the daemon until the server has answered `refreshes` refresh grants
/// for `platform`; asserts no refresh token was ever reused.
fn run_chain(server: &StrictServer, sb: &Sandbox, config: &str, platform: &str, refreshes: usize) {
    sb.write_config(config);
    let daemon = sb.start();
    wait_until(
        &format!("{refreshes} refresh grants"),
        Duration::from_secs(30),
        || server.grants(platform, "refresh_token") >= refreshes,
    );
    let logs = daemon.logs();
    daemon.stop();
    assert_eq!(server.reused(), 0, "a refresh token was reused:\n{logs}");
    assert_eq!(
        server.grants(platform, "password"),
        1,
        "one password grant, then the refresh chain:\n{logs}"
    );
}

#[test]
fn shopware_password_grant_with_scopes_and_a_rotating_refresh_token() {
    let server = StrictServer::start(2);
    let sb = Sandbox::new();
    let url = format!("{}/shop/api/oauth/token", server.base);
    let admin = "grant_type = \"password\"\nusername = \"admin\"\npassword = \"admin-pw\"\nscope = \"write\"";
    run_chain(
        &server,
        &sb,
        &preset_client("shop", "shopware", "token_url", &url, admin),
        "shop",
        3,
    );
    // the integration (client credentials) flavour of the same preset
    let (code, stderr, _) = once(
        &sb,
        &preset_client("shop", "shopware", "token_url", &url, CREDS),
    );
    assert_eq!(code, 0, "{stderr}");
    // near miss: `scope` instead of `scopes`
    once_refused(
        &sb,
        &preset_client(
            "shop",
            "shopware",
            "token_url",
            &url,
            &format!("{admin}\nscope_param = \"scope\""),
        ),
        "takes `scopes`, not `scope`",
    );
    // check explains a password grant without username in one line each
    sb.write_config(&preset_client(
        "shop",
        "shopware",
        "token_url",
        &url,
        "grant_type = \"password\"\npassword = \"x\"",
    ));
    let (code, _, stderr) = sb.run(&["check"]);
    assert_eq!(code, 2);
    assert!(stderr.trim().ends_with("clients.shop.username: is required: preset \"shopware\" with grant_type = \"password\" logs in as an Administration user: set username and one of password_file, password_env, password"), "{stderr}");
}

#[test]
fn oro_json_bodies_password_then_refresh() {
    let server = StrictServer::start(2);
    let sb = Sandbox::new();
    let url = format!("{}/oro/oauth2-token", server.base);
    run_chain(
        &server,
        &sb,
        &preset_client(
            "oro",
            "oro",
            "token_url",
            &url,
            &format!(
                "{CREDS}\ngrant_type = \"password\"\nusername = \"admin\"\npassword = \"admin-pw\""
            ),
        ),
        "oro",
        2,
    );
    once_refused(
        &sb,
        &preset_client(
            "oro",
            "oro",
            "token_url",
            &url,
            &format!("{CREDS}\nencoding = \"form\""),
        ),
        "oro expects a JSON body",
    );
}
