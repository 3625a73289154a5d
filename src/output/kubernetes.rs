//! `type = "kubernetes_secret"`: one server-side apply of a Secret's data,
//! with field manager `tokenkeeper`, so it composes with other controllers.
//! How the API server is reached (pod, explicit, kubeconfig) is
//! [`crate::kube`]'s.

use super::render::Format;
use super::{OutputError, OutputReason as R, WriteOutcome};
use crate::kube::{KubeApi, KubeClient};
use crate::token::Token;
use base64::Engine;
use reqwest::header::HeaderValue;

pub const FIELD_MANAGER: &str = "tokenkeeper";

#[derive(Clone, Debug, PartialEq)]
pub struct KubernetesOutput {
    pub api: KubeApi,
    pub namespace: String,
    pub name: String,
    pub key: String,
    pub format: Format,
}

pub struct KubernetesWriter {
    spec: KubernetesOutput,
    kube: KubeClient,
    last: tokio::sync::Mutex<Option<String>>,
}

impl KubernetesWriter {
    pub fn new(spec: KubernetesOutput) -> Result<KubernetesWriter, OutputError> {
        let kube = KubeClient::new(spec.api.clone()).map_err(|e| R::Setup.because(e))?;
        Ok(KubernetesWriter {
            spec,
            kube,
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
    async fn is_missing(&self, auth: Option<&HeaderValue>) -> bool {
        let url = self.kube.url(&format!(
            "/api/v1/namespaces/{}/secrets/{}",
            self.spec.namespace, self.spec.name
        ));
        let mut get = self
            .kube
            .http()
            .get(url)
            .header("Accept", "application/json");
        if let Some(auth) = auth {
            get = get.header("Authorization", auth.clone());
        }
        get.send()
            .await
            .is_ok_and(|r| r.status() == reqwest::StatusCode::NOT_FOUND)
    }

    pub async fn write(&self, token: &Token) -> Result<WriteOutcome, OutputError> {
        let content = self
            .spec
            .format
            .render(token)
            .map_err(|e| R::Setup.because(e))?;
        let mut last = self.last.lock().await;
        if last.as_deref() == Some(content.expose()) {
            return Ok(WriteOutcome::Unchanged);
        }
        let auth = self
            .kube
            .authorization()
            .await
            .map_err(|e| R::Credentials.because(e))?;
        let url = self.kube.url(&format!(
            "/api/v1/namespaces/{}/secrets/{}?fieldManager={FIELD_MANAGER}&force=true",
            self.spec.namespace, self.spec.name
        ));
        let body = Self::apply_body(&self.spec, content.expose()).to_string();
        let mut patch = self
            .kube
            .http()
            .patch(url)
            .header("Content-Type", "application/apply-patch+yaml")
            .header("Accept", "application/json")
            .body(body);
        if let Some(auth) = &auth {
            patch = patch.header("Authorization", auth.clone());
        }
        let resp = patch.send().await.map_err(|e| {
            R::Unreachable.because(format!(
                "cannot reach the Kubernetes API at {}: {e}",
                self.kube.server()
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
        if status == 401 {
            self.kube.forget_credential().await;
        }
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
                || (!message.contains("cannot ") && self.is_missing(auth.as_ref()).await));
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
