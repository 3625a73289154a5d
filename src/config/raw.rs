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
    /// Client name with the span of its key, and its table.
    pub clients: Vec<(Spanned<String>, RawClient)>,
    /// Client tables that could not be read (their errors are already reported).
    pub unreadable_clients: usize,
}

fn from_toml(e: toml::de::Error, key: &str) -> Diagnostic {
    Diagnostic {
        span: e.span(),
        key: key.to_string(),
        message: e.message().trim().to_string(),
    }
}

fn section<T: for<'de> Deserialize<'de>>(
    value: Spanned<DeValue<'_>>,
    key: &str,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<T> {
    T::deserialize(value.into_deserializer())
        .map_err(|e| diagnostics.push(from_toml(e, key)))
        .ok()
}

/// Parses `text`; returns what could be read and every error found on the way.
pub fn parse(text: &str) -> (RawConfig, Vec<Diagnostic>) {
    let mut diagnostics = Vec::new();
    let mut raw = RawConfig::default();
    let root = match DeTable::parse(text) {
        Ok(root) => root,
        Err(e) => {
            diagnostics.push(from_toml(e, "(syntax)"));
            return (raw, diagnostics);
        }
    };
    for (key, value) in root.into_inner() {
        match key.get_ref().as_ref() {
            "daemon" => raw.daemon = section(value, "daemon", &mut diagnostics).unwrap_or_default(),
            "defaults" => {
                raw.defaults = section(value, "defaults", &mut diagnostics).unwrap_or_default()
            }
            "clients" => {
                let span = value.span();
                match value.into_inner() {
                    DeValue::Table(table) => {
                        for (name, client) in table {
                            let name_span = name.span();
                            let name = name.into_inner().to_string();
                            let key = format!("clients.{name}");
                            if !matches!(client.get_ref(), DeValue::Table(_)) {
                                diagnostics.push(Diagnostic {
                                    span: Some(client.span()),
                                    key,
                                    message: "must be a table: [clients.NAME]".into(),
                                });
                                continue;
                            }
                            match section(client, &key, &mut diagnostics) {
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
                message: "unknown top-level key, expected `daemon`, `defaults` or `clients`".into(),
            }),
        }
    }
    (raw, diagnostics)
}
