//! Grants: what a token request looks like on the wire, and what comes back.
//!
//! `request` builds the wire form of a request and `response` parses an
//! answer; both are pure. `http` is the only part that touches the network.

pub mod error;
pub mod http;
pub mod request;
pub mod response;

use crate::secret::Secret;
use crate::token::Token;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use url::Url;

pub use error::{FetchError, Reason};

/// The OAuth 2.0 grant a client uses.
#[derive(Clone, Debug, PartialEq)]
pub enum GrantSpec {
    ClientCredentials,
    /// Resource owner password credentials (RFC 6749 §4.3).
    Password {
        username: String,
        password: Secret,
    },
    /// Refresh token grant; `initial` is used until the endpoint hands out a
    /// newer one, which is then kept in the state directory.
    RefreshToken {
        initial: Secret,
    },
}

impl GrantSpec {
    pub fn grant_type(&self) -> &'static str {
        match self {
            GrantSpec::ClientCredentials => "client_credentials",
            GrantSpec::Password { .. } => "password",
            GrantSpec::RefreshToken { .. } => "refresh_token",
        }
    }
}

/// How the client authenticates to the token endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// `client_secret_post`: client_id and client_secret in the body.
    Body,
    /// `client_secret_basic`: HTTP Basic authentication.
    Basic,
    /// Public client: client_id (if any) in the body, no secret.
    None,
}

/// How the request body is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    Form,
    Json,
    Multipart,
}

/// JSON Pointers (RFC 6901) to the fields of a token response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseMapping {
    pub access_token: String,
    pub expires_in: String,
    pub expires_at: String,
    pub refresh_token: String,
    pub token_type: String,
}

impl Default for ResponseMapping {
    fn default() -> ResponseMapping {
        ResponseMapping {
            access_token: "/access_token".into(),
            expires_in: "/expires_in".into(),
            expires_at: "/expires_at".into(),
            refresh_token: "/refresh_token".into(),
            token_type: "/token_type".into(),
        }
    }
}

/// Everything needed to ask one token endpoint for a token.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenRequestSpec {
    pub token_url: Url,
    pub grant: GrantSpec,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret>,
    pub auth: ClientAuth,
    pub encoding: Encoding,
    pub scope: Option<String>,
    pub scope_param: String,
    pub refresh_token_param: String,
    pub params: BTreeMap<String, String>,
    pub headers: BTreeMap<String, String>,
    pub response: ResponseMapping,
    /// One request, connect to last byte.
    pub timeout: Duration,
    /// Extra trusted CA certificates (PEM), beside the built-in web roots.
    pub ca_pem: Option<Arc<[u8]>>,
    /// Lifetime assumed when neither the response nor a JWT `exp` gives one.
    pub default_lifetime: Duration,
}

impl TokenRequestSpec {
    /// A stable digest of what identifies the tokens this request yields
    /// (endpoint, client, grant, scope, extra fields; never a secret). A cached
    /// token is reused after a restart only when its fingerprint matches.
    pub fn fingerprint(&self) -> String {
        let username = match &self.grant {
            GrantSpec::Password { username, .. } => username.as_str(),
            _ => "",
        };
        let identity = serde_json::json!({
            "token_url": self.token_url.as_str(),
            "grant": self.grant.grant_type(),
            "username": username,
            "client_id": self.client_id,
            "scope": self.scope,
            "scope_param": self.scope_param,
            "params": self.params,
        });
        let digest = Sha256::digest(identity.to_string().as_bytes());
        digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
    }

    /// The secrets this request carries, for scrubbing foreign text.
    pub fn redactor<'a>(
        &'a self,
        refresh_token: Option<&'a Secret>,
    ) -> crate::secret::Redactor<'a> {
        let password = match &self.grant {
            GrantSpec::Password { password, .. } => Some(password),
            GrantSpec::RefreshToken { initial } => Some(initial),
            GrantSpec::ClientCredentials => None,
        };
        crate::secret::Redactor::new()
            .with(self.client_secret.as_ref())
            .with(password)
            .with(refresh_token)
    }
}

/// Something that turns a request spec into a token: the HTTP implementation
/// in production, a scripted fake in the core's tests.
pub trait TokenSource: Send + Sync + 'static {
    /// `refresh_token` is the newest refresh token known for this client, if
    /// any; `now` is stamped as the token's issue time.
    fn fetch(
        &self,
        spec: &TokenRequestSpec,
        refresh_token: Option<&Secret>,
        now: SystemTime,
    ) -> impl Future<Output = Result<Token, FetchError>> + Send;
}
