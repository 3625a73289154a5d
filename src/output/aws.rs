//! `type = "aws_secrets_manager"`: PutSecretValue with the token fields as a
//! JSON SecretString, creating the secret when it does not exist yet.
//! Requests are signed with AWS's own SigV4 implementation (`aws-sigv4`);
//! credentials come from the usual chain: environment, shared credentials
//! file (profile), web identity (EKS/IRSA) through STS.

use super::{OutputError, OutputReason as R, WriteOutcome};
use crate::secret::Secret;
use crate::token::Token;
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use url::Url;

#[derive(Clone, Debug, PartialEq)]
pub struct AwsOutput {
    pub secret_id: String,
    pub region: String,
    /// Default `https://secretsmanager.<region>.amazonaws.com`.
    pub endpoint: Url,
    pub ca_pem: Option<Arc<crate::grant::CaBundle>>,
}

/// Credentials as the chain found them.
#[derive(Clone)]
struct Found {
    access_key: String,
    secret_key: Secret,
    session_token: Option<Secret>,
    /// Until when (web identity); `None` for static credentials.
    expires: Option<SystemTime>,
    source: &'static str,
}

pub struct AwsWriter {
    spec: AwsOutput,
    http: reqwest::Client,
    cached: tokio::sync::Mutex<Option<Found>>,
    last: tokio::sync::Mutex<Option<String>>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// `[profile]` sections of an INI credentials file.
fn profile_credentials(text: &str, profile: &str) -> Option<(String, String, Option<String>)> {
    let mut in_section = false;
    let (mut ak, mut sk, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') && line.ends_with(']') {
            let name = line[1..line.len() - 1].trim();
            in_section = name == profile || name == format!("profile {profile}");
            continue;
        }
        if !in_section {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_string();
            match k.trim() {
                "aws_access_key_id" => ak = Some(v),
                "aws_secret_access_key" => sk = Some(v),
                "aws_session_token" => token = Some(v),
                _ => {}
            }
        }
    }
    Some((ak?, sk?, token))
}

/// The text of `<tag>…</tag>` in an XML answer (STS is small and flat).
fn xml_tag<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let start = xml.find(&format!("<{tag}>"))? + tag.len() + 2;
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(&xml[start..end])
}

impl AwsWriter {
    pub fn new(spec: AwsOutput) -> Result<AwsWriter, OutputError> {
        let http = super::http_client(spec.ca_pem.as_deref().map(|c| &c.pem[..]))?;
        Ok(AwsWriter {
            spec,
            http,
            cached: tokio::sync::Mutex::new(None),
            last: tokio::sync::Mutex::new(None),
        })
    }

    async fn credentials(&self) -> Result<Found, OutputError> {
        let mut cached = self.cached.lock().await;
        if let Some(found) = cached.as_ref() {
            if found
                .expires
                .is_none_or(|e| e > crate::clock::SystemClock.now() + Duration::from_secs(300))
            {
                return Ok(found.clone());
            }
        }
        let found = self.find_credentials().await?;
        tracing::debug!(source = found.source, secret_id = %self.spec.secret_id, "using AWS credentials");
        *cached = Some(found.clone());
        Ok(found)
    }

    async fn find_credentials(&self) -> Result<Found, OutputError> {
        if let (Some(ak), Some(sk)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
            return Ok(Found {
                access_key: ak,
                secret_key: Secret::new(sk),
                session_token: env("AWS_SESSION_TOKEN").map(Secret::new),
                expires: None,
                source: "environment",
            });
        }
        let file = env("AWS_SHARED_CREDENTIALS_FILE")
            .map(std::path::PathBuf::from)
            .or_else(|| env("HOME").map(|h| std::path::Path::new(&h).join(".aws/credentials")));
        let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".into());
        if let Some(text) = file
            .as_ref()
            .and_then(|f| crate::fsread::read_to_string(f).ok())
        {
            if let Some((ak, sk, token)) = profile_credentials(&text, &profile) {
                return Ok(Found {
                    access_key: ak,
                    secret_key: Secret::new(sk),
                    session_token: token.map(Secret::new),
                    expires: None,
                    source: "profile",
                });
            }
        }
        if let (Some(token_file), Some(role)) =
            (env("AWS_WEB_IDENTITY_TOKEN_FILE"), env("AWS_ROLE_ARN"))
        {
            return self.assume_role_with_web_identity(&token_file, &role).await;
        }
        Err(R::Credentials.because(format!(
            "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile in {} ({profile}), or AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN",
            file.map(|f| f.display().to_string())
                .unwrap_or_else(|| "~/.aws/credentials".into())
        )))
    }

    async fn assume_role_with_web_identity(
        &self,
        token_file: &str,
        role: &str,
    ) -> Result<Found, OutputError> {
        let web_token = crate::fsread::read_to_string(token_file).map_err(|e| {
            R::Credentials.because(format!(
                "cannot read AWS_WEB_IDENTITY_TOKEN_FILE {token_file}: {e}"
            ))
        })?;
        let sts = env("AWS_ENDPOINT_URL_STS")
            .unwrap_or_else(|| format!("https://sts.{}.amazonaws.com", self.spec.region));
        let session = env("AWS_ROLE_SESSION_NAME").unwrap_or_else(|| "tokenkeeper".into());
        let form = [
            ("Action", "AssumeRoleWithWebIdentity"),
            ("Version", "2011-06-15"),
            ("RoleArn", role),
            ("RoleSessionName", session.as_str()),
            ("WebIdentityToken", web_token.trim()),
        ];
        let resp = self
            .http
            .post(&sts)
            .form(&form)
            .send()
            .await
            .map_err(|e| R::Unreachable.because(format!("cannot reach STS at {sts}: {e}")))?;
        let status = resp.status().as_u16();
        let xml = resp.text().await.unwrap_or_default();
        if status != 200 {
            let message = xml_tag(&xml, "Message").unwrap_or("no message");
            return Err(R::Credentials.because(format!(
                "STS refused AssumeRoleWithWebIdentity for {role}: HTTP {status}: {message}"
            )));
        }
        let field = |t: &str| {
            xml_tag(&xml, t)
                .map(str::to_string)
                .ok_or_else(|| R::BadAnswer.because(format!("STS answer has no {t}")))
        };
        let expires = xml_tag(&xml, "Expiration")
            .and_then(|e| {
                time::OffsetDateTime::parse(e, &time::format_description::well_known::Rfc3339).ok()
            })
            .map(|e| crate::token::from_unix_millis((e.unix_timestamp_nanos() / 1_000_000) as i64));
        Ok(Found {
            access_key: field("AccessKeyId")?,
            secret_key: Secret::new(field("SecretAccessKey")?),
            session_token: Some(Secret::new(field("SessionToken")?)),
            expires: expires.or(Some(
                crate::clock::SystemClock.now() + Duration::from_secs(900),
            )),
            source: "web identity",
        })
    }

    /// One signed Secrets Manager call: (status, JSON answer).
    async fn call(
        &self,
        target: &str,
        body: &serde_json::Value,
    ) -> Result<(u16, serde_json::Value), OutputError> {
        let creds = self.credentials().await?;
        let body = body.to_string();
        let url = self.spec.endpoint.as_str().to_string();
        let host = self
            .spec
            .endpoint
            .host_str()
            .unwrap_or_default()
            .to_string();
        let host = match self.spec.endpoint.port() {
            Some(p) => format!("{host}:{p}"),
            None => host,
        };
        let amz_target = format!("secretsmanager.{target}");
        let headers = [
            ("host", host.as_str()),
            ("content-type", "application/x-amz-json-1.1"),
            ("x-amz-target", amz_target.as_str()),
        ];
        let identity: aws_smithy_runtime_api::client::identity::Identity = Credentials::new(
            creds.access_key.clone(),
            creds.secret_key.expose().to_string(),
            creds.session_token.as_ref().map(|t| t.expose().to_string()),
            None,
            "tokenkeeper",
        )
        .into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.spec.region)
            .name("secretsmanager")
            .time(crate::clock::SystemClock.now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| R::Credentials.because(format!("cannot sign: {e}")))?
            .into();
        let signable = SignableRequest::new(
            "POST",
            url.clone(),
            headers.iter().copied(),
            SignableBody::Bytes(body.as_bytes()),
        )
        .map_err(|e| R::Credentials.because(format!("cannot sign: {e}")))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| R::Credentials.because(format!("cannot sign: {e}")))?
            .into_parts();
        let mut request = self
            .http
            .post(&url)
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amz-target", &amz_target);
        for (name, value) in instructions.headers() {
            let mut v = reqwest::header::HeaderValue::from_str(value)
                .map_err(|_| R::Credentials.because("bad signature header"))?;
            v.set_sensitive(
                name.eq_ignore_ascii_case("authorization")
                    || name.eq_ignore_ascii_case("x-amz-security-token"),
            );
            request = request.header(name, v);
        }
        let resp = request.body(body).send().await.map_err(|e| {
            R::Unreachable.because(format!(
                "cannot reach Secrets Manager at {}: {e}",
                self.spec.endpoint
            ))
        })?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap_or_default();
        let answer = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            // authentication errors may come as XML
            let text = String::from_utf8_lossy(&bytes);
            serde_json::json!({
                "__type": xml_tag(&text, "Code").unwrap_or("error"),
                "message": xml_tag(&text, "Message").unwrap_or(""),
            })
        });
        Ok((status, answer))
    }

    fn describe(answer: &serde_json::Value) -> String {
        let kind = answer
            .get("__type")
            .and_then(|t| t.as_str())
            .unwrap_or("error");
        let kind = kind.rsplit('#').next().unwrap_or(kind);
        let message = answer
            .get("message")
            .or(answer.get("Message"))
            .and_then(|m| m.as_str())
            .unwrap_or("");
        format!("{kind}: {message}")
    }

    pub async fn write(&self, token: &Token) -> Result<WriteOutcome, OutputError> {
        let content = super::render::json(token).expose().trim_end().to_string();
        let mut last = self.last.lock().await;
        if last.as_deref() == Some(content.as_str()) {
            return Ok(WriteOutcome::Unchanged);
        }
        let id = &self.spec.secret_id;
        let (status, answer) = self
            .call(
                "PutSecretValue",
                &serde_json::json!({"SecretId": id, "SecretString": content}),
            )
            .await?;
        let (status, answer) = if (400..500).contains(&status)
            && Self::describe(&answer).starts_with("ResourceNotFoundException")
        {
            tracing::info!(secret_id = %id, "the secret does not exist yet: creating it");
            self.call("CreateSecret", &serde_json::json!({"Name": id, "SecretString": content, "Description": "managed by tokenkeeper"})).await?
        } else {
            (status, answer)
        };
        if status == 200 {
            *last = Some(content);
            return Ok(WriteOutcome::Written);
        }
        Err(R::Refused.because(format!(
            "Secrets Manager refused writing {id}: HTTP {status}: {}",
            Self::describe(&answer)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_and_sts_answers() {
        let ini = "[default]\naws_access_key_id = AK1\naws_secret_access_key = SK1\n\n[profile ci]\naws_access_key_id=AK2\naws_secret_access_key=SK2\naws_session_token=T2\n";
        assert_eq!(
            profile_credentials(ini, "default"),
            Some(("AK1".into(), "SK1".into(), None))
        );
        assert_eq!(
            profile_credentials(ini, "ci"),
            Some(("AK2".into(), "SK2".into(), Some("T2".into())))
        );
        assert_eq!(profile_credentials(ini, "other"), None);
        let xml = "<AssumeRoleWithWebIdentityResponse><Credentials><AccessKeyId>ASIA</AccessKeyId><Expiration>2026-01-01T00:00:00Z</Expiration></Credentials></AssumeRoleWithWebIdentityResponse>";
        assert_eq!(xml_tag(xml, "AccessKeyId"), Some("ASIA"));
        assert_eq!(xml_tag(xml, "SessionToken"), None);
    }
}
