//! `type = "kubernetes_secret"`: one server-side apply of a Secret's data,
//! with field manager `tokenkeeper`, so it composes with other controllers.
//! In a pod it uses the service account (token, CA, namespace,
//! KUBERNETES_SERVICE_HOST/PORT); `api_server`, `token_file` and `ca_file`
//! override them (out of cluster, or for tests).

use super::render::Format;
use super::{OutputError, OutputReason as R, WriteOutcome};
use crate::token::Token;
use base64::Engine;
use std::path::PathBuf;
use std::sync::Arc;
use url::Url;

pub const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
pub const FIELD_MANAGER: &str = "tokenkeeper";

#[derive(Clone, Debug, PartialEq)]
pub struct KubernetesOutput {
    pub api_server: Url,
    pub namespace: String,
    pub name: String,
    pub key: String,
    pub format: Format,
    pub token_file: PathBuf,
    pub ca_pem: Option<Arc<crate::grant::CaBundle>>,
}

pub struct KubernetesWriter {
    spec: KubernetesOutput,
    http: reqwest::Client,
    last: tokio::sync::Mutex<Option<String>>,
}

impl KubernetesWriter {
    pub fn new(spec: KubernetesOutput) -> Result<KubernetesWriter, OutputError> {
        let http = super::http_client(spec.ca_pem.as_deref().map(|c| &c.pem[..]))?;
        Ok(KubernetesWriter {
            spec,
            http,
            last: tokio::sync::Mutex::new(None),
        })
    }

    /// The apply body (JSON is YAML): only the fields tokenkeeper owns.
    pub fn apply_body(spec: &KubernetesOutput, content: &str) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": spec.name,
                "namespace": spec.namespace,
                "labels": {"app.kubernetes.io/managed-by": "tokenkeeper"},
            },
            "type": "Opaque",
            "data": {spec.key.clone(): base64::engine::general_purpose::STANDARD.encode(content)},
        })
    }

    /// Whether the Secret is not there (a GET answers 404).
    async fn is_missing(&self, auth: &reqwest::header::HeaderValue) -> bool {
        let url = format!(
            "{}/api/v1/namespaces/{}/secrets/{}",
            self.spec.api_server.as_str().trim_end_matches('/'),
            self.spec.namespace,
            self.spec.name
        );
        let answer = self
            .http
            .get(url)
            .header("Authorization", auth.clone())
            .header("Accept", "application/json")
            .send()
            .await;
        answer.is_ok_and(|r| r.status() == reqwest::StatusCode::NOT_FOUND)
    }

    pub async fn write(&self, token: &Token) -> Result<WriteOutcome, OutputError> {
        let content = self.spec.format.render(token);
        let mut last = self.last.lock().await;
        if last.as_deref() == Some(content.expose()) {
            return Ok(WriteOutcome::Unchanged);
        }
        let sa_token = crate::fsread::read_to_string(&self.spec.token_file).map_err(|e| {
            R::Credentials.because(format!(
                "cannot read the service account token {}: {e}",
                self.spec.token_file.display()
            ))
        })?;
        let mut auth =
            reqwest::header::HeaderValue::from_str(&format!("Bearer {}", sa_token.trim()))
                .map_err(|_| {
                    R::Credentials.because("the service account token is not a valid header value")
                })?;
        auth.set_sensitive(true);
        let url = format!(
            "{}/api/v1/namespaces/{}/secrets/{}?fieldManager={FIELD_MANAGER}&force=true",
            self.spec.api_server.as_str().trim_end_matches('/'),
            self.spec.namespace,
            self.spec.name
        );
        let body = Self::apply_body(&self.spec, content.expose()).to_string();
        let resp = self
            .http
            .patch(url)
            .header("Authorization", auth.clone())
            .header("Content-Type", "application/apply-patch+yaml")
            .header("Accept", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| {
                R::Unreachable.because(format!(
                    "cannot reach the Kubernetes API at {}: {e}",
                    self.spec.api_server
                ))
            })?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            *last = Some(content.expose().to_string());
            return Ok(WriteOutcome::Written);
        }
        let body = resp.bytes().await.unwrap_or_default();
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                v.get("message")
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| format!("{} bytes", body.len()));
        let reason = if matches!(status, 401 | 403) {
            R::Credentials
        } else {
            R::Refused
        };
        // an apply of a missing Secret is a create, which RBAC cannot scope
        // to a name; the API's 403 for it may name no verb (Kubernetes 1.20
        // says only "is forbidden:"), so ask whether the Secret is there
        let missing = status == 403
            && (message.contains("cannot create")
                || (!message.contains("cannot ") && self.is_missing(&auth).await));
        let hint = if missing {
            " (the Secret does not exist, and creating it needs `create` on secrets, which RBAC cannot limit to one name: create the Secret once, empty, as packaging/kubernetes/secret-writer/rbac.yaml does)"
        } else {
            ""
        };
        Err(reason.because(format!(
            "the Kubernetes API refused applying secret {}/{}: HTTP {status}: {message}{hint}",
            self.spec.namespace, self.spec.name
        )))
    }
}
