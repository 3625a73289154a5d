//! The config file as written: serde types with spans, `deny_unknown_fields`
//! everywhere. Each top-level section and each client is deserialized on its
//! own, so one bad client does not hide the errors of the next.

use super::Diagnostic;
use crate::grant::{ClientAuth, Encoding};
use serde::Deserialize;
use serde::de::IntoDeserializer;
use std::collections::BTreeMap;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

pub type S<T> = Option<Spanned<T>>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDaemon {
    pub state_dir: S<String>,
    pub log_format: S<LogFormat>,
    pub listen: S<String>,
    pub ready_timeout: S<String>,
    pub check_outputs: S<String>,
}

/// `[cluster]`: members sharing clients through a store (etcd).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub backend: S<ClusterBackend>,
    pub name: S<String>,
    pub lease_ttl: S<String>,
    pub encryption_key_file: S<String>,
    // etcd
    pub endpoints: S<Vec<String>>,
    pub ca_file: S<String>,
    pub cert_file: S<String>,
    pub key_file: S<String>,
    pub username: S<String>,
    pub password_file: S<String>,
    pub prefix: S<String>,
    // kubernetes
    pub namespace: S<String>,
    pub api_server: S<String>,
    pub token_file: S<String>,
    pub lease_prefix: S<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterBackend {
    Etcd,
    Kubernetes,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Keys a client inherits from `[defaults]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    pub refresh_ratio: S<f64>,
    pub refresh_before: S<String>,
    pub min_interval: S<String>,
    pub timeout: S<String>,
    pub backoff_initial: S<String>,
    pub backoff_max: S<String>,
    pub default_lifetime: S<String>,
    pub max_lifetime: S<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantKind {
    ClientCredentials,
    Password,
    RefreshToken,
    Static,
    /// RFC 7523 §2.1: a JWT the client signed is the grant.
    JwtBearer,
    /// RFC 8693: a token from elsewhere (a workload's) exchanged for one.
    TokenExchange,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClient {
    pub preset: S<super::presets::Preset>,
    pub token_url: S<String>,
    pub issuer: S<String>,
    pub grant_type: S<GrantKind>,
    pub client_id: S<String>,
    pub client_secret_file: S<String>,
    pub client_secret_env: S<String>,
    pub client_secret: S<String>,
    pub auth: S<ClientAuth>,
    // private_key_jwt, client_secret_jwt
    pub private_key_file: S<String>,
    /// private_key_jwt: the key's certificate (its thumbprints name it).
    pub certificate_file: S<String>,
    pub key_id: S<String>,
    pub signing_alg: S<crate::grant::assertion::Alg>,
    pub assertion_audience: S<String>,
    // grant_type = "jwt_bearer"
    pub assertion_issuer: S<String>,
    pub assertion_subject: S<String>,
    pub service_account_file: S<String>,
    // grant_type = "token_exchange"
    pub subject_token_file: S<String>,
    pub subject_token_type: S<String>,
    pub actor_token_file: S<String>,
    pub actor_token_type: S<String>,
    pub audience: S<String>,
    pub resource: S<String>,
    // tls_client_auth, self_signed_tls_client_auth
    pub tls_cert_file: S<String>,
    pub tls_key_file: S<String>,
    // DPoP (RFC 9449): sender-constrained tokens
    pub dpop: S<bool>,
    pub dpop_key_file: S<String>,
    pub encoding: S<Encoding>,
    pub scope: S<String>,
    pub scope_param: S<String>,
    pub params: S<BTreeMap<String, String>>,
    pub headers: S<BTreeMap<String, String>>,
    pub username: S<String>,
    pub password_file: S<String>,
    pub password_env: S<String>,
    pub password: S<String>,
    pub refresh_token_file: S<String>,
    pub refresh_token_param: S<String>,
    pub token_file: S<String>,
    pub token_type: S<String>,
    pub response: S<RawResponse>,
    pub ca_file: S<String>,
    pub allow_insecure_http: S<bool>,
    pub default_lifetime: S<String>,
    pub max_lifetime: S<String>,
    pub min_valid: S<String>,
    pub refresh_ratio: S<f64>,
    pub refresh_before: S<String>,
    pub min_interval: S<String>,
    pub timeout: S<String>,
    pub backoff_initial: S<String>,
    pub backoff_max: S<String>,
    pub outputs: S<Vec<Spanned<RawOutput>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResponse {
    pub access_token: S<String>,
    pub expires_in: S<String>,
    pub expires_at: S<String>,
    pub refresh_token: S<String>,
    pub token_type: S<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputType {
    File,
    VaultKv,
    KubernetesSecret,
    AwsSecretsManager,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayoutKind {
    File,
    AtomicDir,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FormatKind {
    Raw,
    Json,
    Env,
    Header,
    Template,
    /// The token and the DPoP proof key a consumer signs its proofs with.
    Dpop,
}

/// `mode = "0640"` (the documented form) or a TOML octal integer `0o640`.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum RawMode {
    Text(String),
    Number(i64),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutput {
    #[serde(rename = "type")]
    pub kind: Spanned<OutputType>,
    // file
    pub path: S<String>,
    pub format: S<FormatKind>,
    pub mode: S<RawMode>,
    pub owner: S<String>,
    pub group: S<String>,
    pub extra_headers: S<BTreeMap<String, String>>,
    pub template: S<String>,
    pub template_file: S<String>,
    pub layout: S<LayoutKind>,
    // vault_kv (`path` is the secret's path below the mount)
    pub address: S<String>,
    pub mount: S<String>,
    pub token_file: S<String>,
    pub token_env: S<String>,
    pub approle_mount: S<String>,
    pub role_id_file: S<String>,
    pub secret_id_file: S<String>,
    pub namespace: S<String>,
    pub ca_file: S<String>,
    // kubernetes_secret (and `namespace`, `token_file`, `ca_file`, `format`)
    pub name: S<String>,
    pub key: S<String>,
    pub api_server: S<String>,
    pub kubeconfig: S<String>,
    pub context: S<String>,
    // aws_secrets_manager (and `ca_file`)
    pub secret_id: S<String>,
    pub region: S<String>,
    pub endpoint_url: S<String>,
    // hooks
    pub exec: S<Vec<String>>,
    pub exec_timeout: S<String>,
    pub exec_pass_token: S<bool>,
    pub signal: S<String>,
    pub pid_file: S<String>,
}

#[derive(Debug, Default)]
pub struct RawConfig {
    pub daemon: RawDaemon,
    pub defaults: RawDefaults,
    /// `[cluster]`, when there is one.
    pub cluster: Option<Spanned<RawCluster>>,
    /// Client name with the span of its key, and its table.
    pub clients: Vec<(Spanned<String>, RawClient)>,
    /// Client tables that could not be read (their errors are already reported).
    pub unreadable_clients: usize,
    /// The text is not TOML: nothing was read, and the one error says where.
    pub not_toml: bool,
    /// The clients [`parse_only`] left unread, by name.
    pub skipped_clients: Vec<String>,
}

fn from_toml(e: toml::de::Error, key: &str, text: &str) -> Diagnostic {
    let message = e.message().trim().to_string();
    let span = e.span();
    // the key whose value is wrong, from the text before the value on its line
    let named = span
        .as_ref()
        .and_then(|s| text.get(..s.start))
        .and_then(|before| before.rsplit('\n').next())
        .and_then(|line| line.strip_suffix(' ').or(Some(line)))
        .and_then(|line| line.trim_end().strip_suffix('='))
        .map(|k| k.trim())
        .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    let key = match (named, key) {
        (Some(name), "(syntax)") => name.to_string(),
        (Some(name), section) => format!("{section}.{name}"),
        (None, section) => section.to_string(),
    };
    Diagnostic {
        span,
        key,
        message: explained(&message, named),
    }
}

/// Keys whose values are durations.
const DURATIONS: [&str; 12] = [
    "lease_ttl",
    "refresh_before",
    "min_interval",
    "timeout",
    "backoff_initial",
    "backoff_max",
    "default_lifetime",
    "max_lifetime",
    "min_valid",
    "exec_timeout",
    "ready_timeout",
    "check_outputs",
];

/// serde's and toml's words, with what to do: the nearest expected name
/// for a typo, and the string form where a number was written (for `key`,
/// when it is known).
fn explained(message: &str, key: Option<&str>) -> String {
    for kind in ["unknown field", "unknown variant"] {
        let Some(rest) = message.strip_prefix(&format!("{kind} `")) else {
            continue;
        };
        let Some((given, expected)) = rest.split_once('`') else {
            continue;
        };
        let names: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        let nearest = names
            .iter()
            .map(|n| (strsim::jaro_winkler(given, n), *n))
            .max_by(|a, b| a.0.total_cmp(&b.0));
        let what = if kind == "unknown field" {
            "key"
        } else {
            "value"
        };
        return match nearest {
            Some((score, name)) if score >= 0.85 => {
                format!("unknown {what} `{given}`; did you mean `{name}`?")
            }
            _ => {
                let listed: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
                format!(
                    "unknown {what} `{given}`, expected one of {}",
                    listed.join(", ")
                )
            }
        };
    }
    if message.contains("expected a string")
        && (message.contains("integer") || message.contains("float"))
    {
        let example = match key {
            Some(k) if DURATIONS.contains(&k) => ", e.g. \"300s\" or \"5m\"",
            Some("mode") => ", e.g. \"0640\"",
            _ => "",
        };
        return format!("{message}; write it in quotes{example}");
    }
    if message.contains("leading zero") {
        return format!("{message}; a mode is a string: mode = \"0640\"");
    }
    message.to_string()
}

fn section<T: for<'de> Deserialize<'de>>(
    value: Spanned<DeValue<'_>>,
    key: &str,
    text: &str,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<T> {
    T::deserialize(value.into_deserializer())
        .map_err(|e| diagnostics.push(from_toml(e, key, text)))
        .ok()
}

/// Where each `[[clients.NAME.outputs]]` table of a client is in the text.
fn output_spans(client: &DeValue<'_>) -> Vec<std::ops::Range<usize>> {
    let DeValue::Table(table) = client else {
        return Vec::new();
    };
    // an element's own span is its `[[...]]` header; its keys follow it
    let extent = |o: &Spanned<DeValue<'_>>| {
        let start = o.span().start;
        let end = match o.get_ref() {
            DeValue::Table(t) => t
                .iter()
                .map(|(k, v)| k.span().end.max(v.span().end))
                .fold(o.span().end, usize::max),
            _ => o.span().end,
        };
        start..end
    };
    match table.get("outputs").map(|o| o.get_ref()) {
        Some(DeValue::Array(list)) => list.iter().map(extent).collect(),
        _ => Vec::new(),
    }
}

/// Parses `text`; returns what could be read and every error found on the way.
pub fn parse(text: &str) -> (RawConfig, Vec<Diagnostic>) {
    parse_only(text, None)
}

/// [`parse`], reading of `[clients]` only the client `only` when it is
/// given (the others' names are kept, in `skipped_clients`): `token NAME`
/// and `once --client NAME` at 10,000 clients read one.
pub fn parse_only(text: &str, only: Option<&str>) -> (RawConfig, Vec<Diagnostic>) {
    let mut diagnostics = Vec::new();
    let mut raw = RawConfig::default();
    let root = match DeTable::parse(text) {
        Ok(root) => root,
        Err(e) => {
            diagnostics.push(from_toml(e, "(syntax)", text));
            raw.not_toml = true;
            return (raw, diagnostics);
        }
    };
    for (key, value) in root.into_inner() {
        match key.get_ref().as_ref() {
            "daemon" => {
                raw.daemon = section(value, "daemon", text, &mut diagnostics).unwrap_or_default()
            }
            "defaults" => {
                raw.defaults =
                    section(value, "defaults", text, &mut diagnostics).unwrap_or_default()
            }
            "cluster" => {
                let span = value.span();
                raw.cluster = Some(Spanned::new(
                    span,
                    section(value, "cluster", text, &mut diagnostics).unwrap_or_default(),
                ))
            }
            "clients" => {
                let span = value.span();
                match value.into_inner() {
                    DeValue::Table(table) => {
                        for (name, client) in table {
                            let name_span = name.span();
                            let name = name.into_inner().to_string();
                            if only.is_some_and(|only| only != name) {
                                raw.skipped_clients.push(name);
                                continue;
                            }
                            let key = format!("clients.{name}");
                            if !matches!(client.get_ref(), DeValue::Table(_)) {
                                diagnostics.push(Diagnostic {
                                    span: Some(client.span()),
                                    key,
                                    message: "must be a table: [clients.NAME]".into(),
                                });
                                continue;
                            }
                            // an error inside an output is named by the output's place
                            let outputs = output_spans(client.get_ref());
                            let within = |at: &std::ops::Range<usize>| {
                                outputs
                                    .iter()
                                    .position(|o| o.start <= at.start && at.end <= o.end)
                                    .map_or(key.clone(), |i| format!("{key}.outputs[{i}]"))
                            };
                            let parsed = RawClient::deserialize(client.into_deserializer())
                                .map_err(|e| {
                                    let key = e.span().map_or(key.clone(), |at| within(&at));
                                    diagnostics.push(from_toml(e, &key, text))
                                })
                                .ok();
                            match parsed {
                                Some(parsed) => {
                                    raw.clients.push((Spanned::new(name_span, name), parsed))
                                }
                                None => raw.unreadable_clients += 1,
                            }
                        }
                    }
                    _ => diagnostics.push(Diagnostic {
                        span: Some(span),
                        key: "clients".into(),
                        message: "must be a table of clients: [clients.NAME]".into(),
                    }),
                }
            }
            other => diagnostics.push(Diagnostic {
                span: Some(key.span()),
                key: other.to_string(),
                message:
                    "unknown top-level key, expected `daemon`, `defaults`, `cluster` or `clients`"
                        .into(),
            }),
        }
    }
    (raw, diagnostics)
}
