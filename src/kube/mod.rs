//! Reaching a Kubernetes API server: in a pod through its service account,
//! out of it through `api_server`/`token_file`/`ca_file` or a kubeconfig
//! file ([`kubeconfig`]). [`KubeApi`] is the built, comparable description;
//! [`KubeClient`] the runtime (one HTTP client, the exec plugin's cached
//! credential). Used by the `kubernetes_secret` output.

pub mod kubeconfig;

use crate::grant::{CaBundle, ClientIdentity};
use crate::secret::Secret;
pub use kubeconfig::{Credential, ExecPlugin};
use reqwest::header::HeaderValue;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use url::Url;

pub const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// How an exec plugin's credential is used at most, when it gives no expiry.
const EXEC_UNTIL_ASKED_AGAIN: Duration = Duration::from_secs(5 * 60);
/// An exec plugin that does not answer within this is stopped.
const EXEC_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, PartialEq)]
pub struct KubeApi {
    pub server: Url,
    pub ca_pem: Option<Arc<CaBundle>>,
    pub identity: Option<Arc<ClientIdentity>>,
    pub credential: Credential,
}

pub struct KubeClient {
    api: KubeApi,
    http: reqwest::Client,
    exec: tokio::sync::Mutex<Option<(Secret, SystemTime)>>,
}

impl KubeClient {
    pub fn new(api: KubeApi) -> Result<KubeClient, String> {
        let tls = crate::grant::http::tls_config_with(
            api.ca_pem.as_deref().map(|c| &c.pem[..]),
            api.identity.as_deref(),
        )?;
        let http = crate::grant::http::client_builder(tls)
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("cannot set up HTTP client: {e}"))?;
        Ok(KubeClient {
            api,
            http,
            exec: tokio::sync::Mutex::new(None),
        })
    }

    pub fn server(&self) -> &Url {
        &self.api.server
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `path` (starting with `/`) on the API server.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api.server.as_str().trim_end_matches('/'))
    }

    /// The `Authorization` header, if the credential is a bearer token
    /// (none with a client certificate alone). A token file is read every
    /// time (the kubelet rotates it); an exec plugin's answer is kept until
    /// shortly before it expires.
    pub async fn authorization(&self) -> Result<Option<HeaderValue>, String> {
        let token = match &self.api.credential {
            Credential::None => return Ok(None),
            Credential::Token(t) => t.clone(),
            Credential::TokenFile(f) => crate::fsread::read_to_string(f)
                .map(|t| Secret::new(t.trim()))
                .map_err(|e| format!("cannot read the API token {}: {e}", f.display()))?,
            Credential::Exec(plugin) => {
                let mut cached = self.exec.lock().await;
                match &*cached {
                    Some((t, until)) if crate::clock::SystemClock.now() < *until => t.clone(),
                    _ => {
                        let (t, until) = run_exec(plugin, &self.api.server).await?;
                        *cached = Some((t.clone(), until));
                        t
                    }
                }
            }
        };
        let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
            .map_err(|_| "the API token is not a valid header value".to_string())?;
        value.set_sensitive(true);
        Ok(Some(value))
    }

    /// After a 401: an exec plugin is asked again next time.
    pub async fn forget_credential(&self) {
        *self.exec.lock().await = None;
    }
}

/// Runs an exec credential plugin the way kubectl does (non-interactive)
/// and reads its ExecCredential's token and expiry.
async fn run_exec(plugin: &ExecPlugin, server: &Url) -> Result<(Secret, SystemTime), String> {
    let info = serde_json::json!({
        "apiVersion": plugin.api_version,
        "kind": "ExecCredential",
        "spec": {"interactive": false, "cluster": {"server": server.as_str()}},
    });
    let shown = plugin.command.display();
    let run = tokio::process::Command::new(&plugin.command)
        .args(&plugin.args)
        .envs(plugin.env.iter().map(|(k, v)| (k, v)))
        .env("KUBERNETES_EXEC_INFO", info.to_string())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(EXEC_TIMEOUT, run)
        .await
        .map_err(|_| format!("the exec plugin {shown} did not answer within 30 s"))?
        .map_err(|e| format!("cannot run the exec plugin {shown}: {e}"))?;
    if !out.status.success() {
        // its own words on stderr: the last line, which is where plugins
        // say what went wrong (stdout, which would hold a credential, is
        // never shown)
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        let last: String = last.chars().take(300).collect();
        return Err(format!(
            "the exec plugin {shown} failed ({}): {last}",
            out.status
        ));
    }
    parse_exec_credential(&out.stdout, crate::clock::SystemClock.now())
        .map_err(|e| format!("the exec plugin {shown} {e}"))
}

/// The token and how long to use it from an ExecCredential (JSON).
fn parse_exec_credential(stdout: &[u8], now: SystemTime) -> Result<(Secret, SystemTime), String> {
    let v: serde_json::Value = serde_json::from_slice(stdout)
        .map_err(|_| "did not print an ExecCredential (JSON)".to_string())?;
    let status = v
        .get("status")
        .ok_or("printed an ExecCredential without status")?;
    let token = status
        .get("token")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .ok_or(
            "printed no status.token (client certificates from exec plugins are not supported)",
        )?;
    let until = match status.get("expirationTimestamp").and_then(|t| t.as_str()) {
        Some(ts) => {
            let at =
                time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
                    .map_err(|_| format!("printed an unreadable expirationTimestamp {ts:?}"))?;
            let at = SystemTime::from(at);
            // asked again a little before it expires, as kubectl does
            at.checked_sub(Duration::from_secs(10)).unwrap_or(at)
        }
        None => now + EXEC_UNTIL_ASKED_AGAIN,
    };
    Ok((Secret::new(token), until))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exec_credential_gives_its_token_until_shortly_before_expiry() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let (t, until) = parse_exec_credential(
            br#"{"kind":"ExecCredential","status":{"token":"abc","expirationTimestamp":"2027-01-15T08:00:00Z"}}"#,
            now,
        )
        .unwrap();
        assert_eq!(t.expose(), "abc");
        let want = SystemTime::from(time::macros::datetime!(2027-01-15 08:00 UTC))
            - Duration::from_secs(10);
        assert_eq!(until, want);
        let (_, until) = parse_exec_credential(br#"{"status":{"token":"abc"}}"#, now).unwrap();
        assert_eq!(until, now + EXEC_UNTIL_ASKED_AGAIN);
        for (bad, want) in [
            (&b"not json"[..], "did not print an ExecCredential"),
            (
                br#"{"status":{"clientCertificateData":"x"}}"#,
                "printed no status.token",
            ),
            (
                br#"{"status":{"token":"a","expirationTimestamp":"soon"}}"#,
                "unreadable expirationTimestamp",
            ),
        ] {
            let err = parse_exec_credential(bad, now).unwrap_err();
            assert!(err.contains(want), "{err}");
        }
    }
}
