//! `type = "vault_kv"`: HashiCorp Vault / OpenBao KV version 2. The token
//! fields are the secret's data; every write is check-and-set against the
//! version just read, and a version holding a token that expires later is
//! left alone, so two daemons never overwrite a newer token with an older one.

use super::{OutputError, OutputReason as R, WriteOutcome};
use crate::secret::Secret;
use crate::token::{Token, rfc3339};
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use url::Url;

#[derive(Clone, Debug, PartialEq)]
pub struct VaultOutput {
    pub address: Url,
    pub mount: String,
    pub path: String,
    pub namespace: Option<String>,
    pub auth: VaultAuth,
    pub ca_pem: Option<Arc<crate::grant::CaBundle>>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum VaultAuth {
    /// A token read from this file at every use (Vault Agent may rotate it).
    TokenFile(PathBuf),
    /// A token from this environment variable (default `VAULT_TOKEN`).
    TokenEnv(String),
    AppRole {
        mount: String,
        role_id_file: PathBuf,
        secret_id_file: PathBuf,
    },
}

/// Per-output state: the HTTP client and an AppRole login.
pub struct VaultWriter {
    spec: VaultOutput,
    http: reqwest::Client,
    login: tokio::sync::Mutex<Option<Secret>>,
}

fn read_secret_file(path: &PathBuf) -> Result<Secret, OutputError> {
    let text = crate::fsread::read_to_string(path)
        .map_err(|e| R::Credentials.because(format!("cannot read {}: {e}", path.display())))?;
    let value = text.trim();
    if value.is_empty() {
        return Err(R::Credentials.because(format!("{} is empty", path.display())));
    }
    Ok(Secret::new(value))
}

/// The `errors` of a Vault error body, joined.
fn vault_errors(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("errors").cloned())
        .and_then(|e| {
            e.as_array().map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            })
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("{} bytes", body.len()))
}

impl VaultWriter {
    pub fn new(spec: VaultOutput) -> Result<VaultWriter, OutputError> {
        let http = super::http_client(spec.ca_pem.as_deref().map(|c| &c.pem[..]))?;
        Ok(VaultWriter {
            spec,
            http,
            login: tokio::sync::Mutex::new(None),
        })
    }

    fn url(&self, api_path: &str) -> String {
        format!(
            "{}/v1/{}",
            self.spec.address.as_str().trim_end_matches('/'),
            api_path
        )
    }

    fn request(
        &self,
        method: reqwest::Method,
        api_path: &str,
        token: Option<&Secret>,
    ) -> Result<reqwest::RequestBuilder, OutputError> {
        let mut r = self.http.request(method, self.url(api_path));
        if let Some(ns) = &self.spec.namespace {
            r = r.header("X-Vault-Namespace", ns);
        }
        if let Some(t) = token {
            let mut value = reqwest::header::HeaderValue::from_str(t.expose()).map_err(|_| {
                R::Credentials.because("the Vault token is not a valid header value")
            })?;
            value.set_sensitive(true);
            r = r.header("X-Vault-Token", value);
        }
        Ok(r)
    }

    async fn send(&self, r: reqwest::RequestBuilder) -> Result<(u16, Vec<u8>), OutputError> {
        let resp = r.send().await.map_err(|e| {
            R::Unreachable.because(format!("cannot reach Vault at {}: {e}", self.spec.address))
        })?;
        let status = resp.status().as_u16();
        let body = resp
            .bytes()
            .await
            .map_err(|e| R::Unreachable.because(format!("reading Vault's answer: {e}")))?;
        Ok((status, body.to_vec()))
    }

    async fn token(&self) -> Result<Secret, OutputError> {
        match &self.spec.auth {
            VaultAuth::TokenFile(path) => read_secret_file(path),
            VaultAuth::TokenEnv(var) => std::env::var(var)
                .ok()
                .filter(|v| !v.is_empty())
                .map(Secret::new)
                .ok_or_else(|| {
                    R::Credentials.because(format!("environment variable {var} is not set"))
                }),
            VaultAuth::AppRole {
                mount,
                role_id_file,
                secret_id_file,
            } => {
                let mut login = self.login.lock().await;
                if let Some(t) = login.as_ref() {
                    return Ok(t.clone());
                }
                let role_id = read_secret_file(role_id_file)?;
                let secret_id = read_secret_file(secret_id_file)?;
                let body = json!({"role_id": role_id.expose(), "secret_id": secret_id.expose()});
                let (status, body) = self
                    .send(
                        self.request(reqwest::Method::POST, &format!("auth/{mount}/login"), None)?
                            .json(&body),
                    )
                    .await?;
                if status != 200 {
                    return Err(R::Credentials.because(format!(
                        "AppRole login at auth/{mount} refused: HTTP {status}: {}",
                        vault_errors(&body)
                    )));
                }
                let v: serde_json::Value = serde_json::from_slice(&body)
                    .map_err(|_| R::BadAnswer.because("AppRole login answer is not JSON"))?;
                let token = v
                    .pointer("/auth/client_token")
                    .and_then(|t| t.as_str())
                    .ok_or_else(|| {
                        R::BadAnswer.because("AppRole login answer has no auth.client_token")
                    })?;
                let token = Secret::new(token);
                *login = Some(token.clone());
                Ok(token)
            }
        }
    }

    /// Writes `token` with check-and-set.
    pub async fn write(&self, token: &Token) -> Result<WriteOutcome, OutputError> {
        let data_path = format!(
            "{}/data/{}",
            self.spec.mount,
            self.spec.path.trim_matches('/')
        );
        let shown = format!("{}/{}", self.spec.mount, self.spec.path.trim_matches('/'));
        for attempt in 0..4 {
            let vault_token = self.token().await?;
            let (status, body) = self
                .send(self.request(reqwest::Method::GET, &data_path, Some(&vault_token))?)
                .await?;
            let (version, current) = match status {
                200 => {
                    let v: serde_json::Value = serde_json::from_slice(&body)
                        .map_err(|_| R::BadAnswer.because("Vault's answer is not JSON"))?;
                    let version = v
                        .pointer("/data/metadata/version")
                        .and_then(|x| x.as_u64())
                        .unwrap_or(0);
                    (version, v.pointer("/data/data").cloned())
                }
                404 => (0, None),
                403 if matches!(self.spec.auth, VaultAuth::AppRole { .. }) && attempt == 0 => {
                    *self.login.lock().await = None;
                    continue;
                }
                _ => {
                    return Err(R::Refused.because(format!(
                        "Vault refused reading {shown}: HTTP {status}: {}",
                        vault_errors(&body)
                    )));
                }
            };
            if let Some(current) = &current {
                if current.get("access_token").and_then(|t| t.as_str())
                    == Some(token.access_token.expose())
                {
                    return Ok(WriteOutcome::Unchanged);
                }
                let theirs = current
                    .get("expires_at_unix")
                    .and_then(|x| x.as_i64())
                    .unwrap_or(i64::MIN);
                if theirs > crate::token::unix_seconds(token.expires_at) {
                    tracing::info!(output = %shown, "Vault already holds a token that expires later; not overwriting it");
                    return Ok(WriteOutcome::Unchanged);
                }
            }
            let data = json!({
                "options": {"cas": version},
                "data": {
                    "access_token": token.access_token.expose(),
                    "token_type": token.token_type,
                    "expires_at": rfc3339(token.expires_at),
                    "expires_at_unix": crate::token::unix_seconds(token.expires_at),
                    "issued_at": rfc3339(token.issued_at),
                },
            });
            let (status, body) = self
                .send(
                    self.request(reqwest::Method::POST, &data_path, Some(&vault_token))?
                        .json(&data),
                )
                .await?;
            match status {
                200 | 204 => return Ok(WriteOutcome::Written),
                400 if vault_errors(&body).contains("check-and-set") => continue,
                _ => {
                    return Err(R::Refused.because(format!(
                        "Vault refused writing {shown}: HTTP {status}: {}",
                        vault_errors(&body)
                    )));
                }
            }
        }
        Err(R::Conflict.because(format!(
            "Vault kept changing {shown} under us (check-and-set lost 4 times)"
        )))
    }
}
