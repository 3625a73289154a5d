//! Grants: what a token request looks like on the wire, and what comes back.
//!
//! `request` builds the wire form of a request, `response` parses an answer
//! and `discovery` a metadata document; all three are pure. `http` is the
//! only part that touches the network; [`obtain`] picks the grant (refresh
//! token first, password as the fallback) and reads static tokens.

pub mod assertion;
pub mod discovery;
pub mod dpop;
pub mod error;
pub mod http;
pub mod request;
pub mod response;

use crate::secret::Secret;
use crate::token::Token;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
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
    /// A permanent credential read from a file (an API key); no request.
    Static,
    /// RFC 7523 §2.1: a JWT signed by the client is the grant.
    JwtBearer(Arc<JwtBearer>),
    /// RFC 8693: a subject token (read from its file for each request,
    /// as a projected service account token is renewed) exchanged.
    TokenExchange(Arc<TokenExchange>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct TokenExchange {
    pub subject_token_file: PathBuf,
    pub subject_token_type: String,
    /// The actor token's file and type.
    pub actor: Option<(PathBuf, String)>,
    pub audience: Option<String>,
    pub resource: Option<String>,
}

pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The default type of a subject or actor token.
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

/// The JWT bearer grant's assertion: who signs it, and its claims.
#[derive(Debug, PartialEq)]
pub struct JwtBearer {
    pub key: assertion::AssertionKey,
    pub issuer: String,
    pub subject: Option<String>,
    /// `aud` (default: the token endpoint).
    pub audience: Option<String>,
    /// The scopes go in the assertion (Google's service accounts).
    pub scope_claim: bool,
}

pub const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

impl GrantSpec {
    pub fn grant_type(&self) -> &'static str {
        match self {
            GrantSpec::ClientCredentials => "client_credentials",
            GrantSpec::Password { .. } => "password",
            GrantSpec::RefreshToken { .. } => "refresh_token",
            GrantSpec::Static => "static",
            GrantSpec::JwtBearer(_) => JWT_BEARER,
            GrantSpec::TokenExchange(_) => TOKEN_EXCHANGE,
        }
    }

    /// Whether refresh tokens from the endpoint are used for the next request.
    pub fn uses_refresh_tokens(&self) -> bool {
        matches!(
            self,
            GrantSpec::Password { .. } | GrantSpec::RefreshToken { .. }
        )
    }
}

/// The PEM of a `ca_file`, read and checked once per config load and shared
/// by every client that names the same file, with its SHA-256 (HTTP clients
/// are kept per bundle, and hashing 200 KB on every request is not free).
#[derive(Clone, PartialEq, Eq)]
pub struct CaBundle {
    pub pem: Vec<u8>,
    pub digest: [u8; 32],
}

impl CaBundle {
    pub fn new(pem: Vec<u8>) -> CaBundle {
        let digest = Sha256::digest(&pem).into();
        CaBundle { pem, digest }
    }
}

/// A client certificate chain and its private key (PEM), for mutual TLS.
/// `Debug` never shows the key.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientIdentity {
    pub cert_pem: Vec<u8>,
    key_pem: crate::secret::Secret,
}

impl ClientIdentity {
    /// Checks that both parse, so a bad file is reported where it is named.
    pub fn new(cert_pem: Vec<u8>, key_pem: Vec<u8>) -> Result<ClientIdentity, String> {
        let key_pem =
            String::from_utf8(key_pem).map_err(|_| "the client key is not PEM text".to_string())?;
        let id = ClientIdentity {
            cert_pem,
            key_pem: crate::secret::Secret::new(key_pem),
        };
        // rustls checks the key matches the certificate (and that the
        // certificate is one it can use: X.509 v3)
        http::tls_config_with(None, Some(&id))?;
        Ok(id)
    }

    pub fn parts(
        &self,
    ) -> Result<
        (
            Vec<rustls::pki_types::CertificateDer<'static>>,
            rustls::pki_types::PrivateKeyDer<'static>,
        ),
        String,
    > {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain = CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("cannot read the client certificate (PEM): {e}"))?;
        if chain.is_empty() {
            return Err("no PEM certificate in the client certificate".into());
        }
        // the parser's error names the PEM section, never the key's bytes
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.expose().as_bytes())
            .map_err(|e| format!("cannot read the client key (PEM): {e}"))?;
        Ok((chain, key))
    }
}

impl std::fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CaBundle({} bytes)", self.pem.len())
    }
}

/// Where tokens come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    TokenUrl(Url),
    /// Discover `token_endpoint` from this issuer's metadata (RFC 8414, OIDC).
    Issuer(Url),
    /// `grant_type = "static"`: the token is this file's content.
    StaticFile(PathBuf),
}

impl Endpoint {
    pub fn label(&self) -> String {
        match self {
            Endpoint::TokenUrl(u) => http::endpoint_label(u),
            Endpoint::Issuer(u) => format!("issuer {}", http::endpoint_label(u)),
            Endpoint::StaticFile(p) => format!("file {}", p.display()),
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
    /// A JWT signed with the client's private key (RFC 7523 §2.2).
    PrivateKeyJwt,
    /// A JWT signed with the client secret (HS256).
    ClientSecretJwt,
    /// Mutual TLS with a certificate from a CA the provider trusts,
    /// bound to the client by its subject (RFC 8705 §2.1).
    #[serde(rename = "tls_client_auth")]
    Tls,
    /// Mutual TLS with a self-signed certificate the provider has
    /// registered (RFC 8705 §2.2).
    #[serde(rename = "self_signed_tls_client_auth")]
    SelfSignedTls,
}

/// The client certificate and key of mutual-TLS client authentication:
/// read for every request, so a certificate renewed on disk is used from
/// the next request on.
#[derive(Clone, Debug, PartialEq)]
pub struct TlsClientFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// How the request body is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    Form,
    Json,
    Multipart,
}

/// JSON Pointers (RFC 6901) to the fields of a token response. Almost
/// always the defaults or a preset's: borrowed, not allocated per client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseMapping {
    pub access_token: Cow<'static, str>,
    pub expires_in: Cow<'static, str>,
    pub expires_at: Cow<'static, str>,
    pub refresh_token: Cow<'static, str>,
    pub token_type: Cow<'static, str>,
}

impl Default for ResponseMapping {
    fn default() -> ResponseMapping {
        ResponseMapping {
            access_token: Cow::Borrowed("/access_token"),
            expires_in: Cow::Borrowed("/expires_in"),
            expires_at: Cow::Borrowed("/expires_at"),
            refresh_token: Cow::Borrowed("/refresh_token"),
            token_type: Cow::Borrowed("/token_type"),
        }
    }
}

/// Everything needed to ask one token endpoint for a token.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenRequestSpec {
    pub endpoint: Endpoint,
    /// `http://` endpoints (also discovered ones) beyond loopback are allowed.
    pub allow_insecure_http: bool,
    pub grant: GrantSpec,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret>,
    pub auth: ClientAuth,
    pub encoding: Encoding,
    pub scope: Option<String>,
    pub scope_param: Cow<'static, str>,
    pub refresh_token_param: Cow<'static, str>,
    pub params: BTreeMap<String, String>,
    pub headers: BTreeMap<String, String>,
    pub response: ResponseMapping,
    /// One request, connect to last byte.
    pub timeout: Duration,
    /// Extra trusted CA certificates (PEM), beside the built-in web roots.
    pub ca_pem: Option<Arc<CaBundle>>,
    /// Lifetime assumed when neither the response nor a JWT `exp` gives one.
    pub default_lifetime: Duration,
    /// Overrides the endpoint's `token_type` (the authorization scheme).
    pub token_type: Option<String>,
    /// `private_key_jwt`, `client_secret_jwt`: what signs the client
    /// assertion, and its `aud` (default: the token endpoint).
    pub assertion: Option<Arc<assertion::AssertionKey>>,
    pub assertion_audience: Option<String>,
    /// `tls_client_auth`, `self_signed_tls_client_auth`.
    pub tls_client: Option<TlsClientFiles>,
    /// `dpop = true`: every request carries a DPoP proof of this key.
    pub dpop: Option<Arc<dpop::DpopKey>>,
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
        let endpoint = match &self.endpoint {
            Endpoint::TokenUrl(u) | Endpoint::Issuer(u) => u.to_string(),
            Endpoint::StaticFile(p) => p.display().to_string(),
        };
        let mut identity = serde_json::json!({
            "endpoint": endpoint,
            "grant": self.grant.grant_type(),
            "username": username,
            "client_id": self.client_id,
            "scope": self.scope,
            "scope_param": self.scope_param,
            "params": self.params,
        });
        // a token bound to a key is another token than a bearer one (and
        // one bound to another key); absent, earlier fingerprints stand
        if let Some(key) = &self.dpop {
            identity["dpop"] = serde_json::json!(key.path());
        }
        short_digest(identity.to_string().as_bytes())
    }

    /// The secrets this request carries, for scrubbing foreign text.
    pub fn redactor<'a>(
        &'a self,
        refresh_token: Option<&'a Secret>,
    ) -> crate::secret::Redactor<'a> {
        let password = match &self.grant {
            GrantSpec::Password { password, .. } => Some(password),
            GrantSpec::RefreshToken { initial } => Some(initial),
            GrantSpec::ClientCredentials
            | GrantSpec::Static
            | GrantSpec::JwtBearer(_)
            | GrantSpec::TokenExchange(_) => None,
        };
        crate::secret::Redactor::new()
            .with(self.client_secret.as_ref())
            .with(password)
            .with(refresh_token)
    }

    /// A digest of the configured initial refresh token: when an operator
    /// puts a new one in `refresh_token_file`, the persisted chain is dropped.
    pub fn refresh_seed(&self) -> Option<String> {
        match &self.grant {
            GrantSpec::RefreshToken { initial } => Some(short_digest(initial.expose().as_bytes())),
            _ => None,
        }
    }
}

/// The first 16 bytes of a SHA-256, in hex: enough to tell two requests or
/// two seeds apart, and nothing of a secret.
fn short_digest(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Something that sends one token request: the HTTP implementation in
/// production, a scripted fake in the core's tests.
pub trait TokenSource: Send + Sync + 'static {
    /// With `refresh_token`, a grant that uses refresh tokens sends the
    /// refresh_token grant; without, its primary grant. `now` is stamped as
    /// the token's issue time.
    fn fetch(
        &self,
        spec: &TokenRequestSpec,
        refresh_token: Option<&Secret>,
        now: SystemTime,
    ) -> impl Future<Output = Result<Token, FetchError>> + Send;
}

/// Gets a token for `spec`: reads a static token, or asks `source` — with
/// the newest refresh token when the grant uses them, falling back to the
/// password grant when the endpoint refuses it (`invalid_grant`). The
/// returned token carries the refresh token to use next time.
pub async fn obtain<S: TokenSource>(
    source: &S,
    spec: &TokenRequestSpec,
    refresh_token: Option<&Secret>,
    now: SystemTime,
) -> Result<Token, FetchError> {
    if let Endpoint::StaticFile(path) = &spec.endpoint {
        return read_static(path, spec, now).await;
    }
    let refresh_token = refresh_token.filter(|_| spec.grant.uses_refresh_tokens());
    match source.fetch(spec, refresh_token, now).await {
        Ok(mut token) => {
            // endpoints that do not rotate send no new refresh token: keep ours
            if token.refresh_token.is_none() && spec.grant.uses_refresh_tokens() {
                token.refresh_token = refresh_token.cloned();
            }
            Ok(token)
        }
        Err(e)
            if refresh_token.is_some()
                && matches!(spec.grant, GrantSpec::Password { .. })
                && e.oauth_error.as_deref() == Some("invalid_grant") =>
        {
            tracing::warn!("refresh token refused ({e}); falling back to the password grant");
            source.fetch(spec, None, now).await
        }
        Err(e) => Err(e),
    }
}

/// `grant_type = "static"`: the file's content (one trailing newline and
/// surrounding whitespace ignored), valid for `default_lifetime`, then read again.
async fn read_static(
    path: &std::path::Path,
    spec: &TokenRequestSpec,
    now: SystemTime,
) -> Result<Token, FetchError> {
    let text = crate::fsread::read_to_string_async(path)
        .await
        .map_err(|e| {
            FetchError::transient(
                Reason::Other,
                format!("cannot read the static token file {}: {e}", path.display()),
            )
        })?;
    let value = text.trim();
    if value.is_empty() {
        return Err(FetchError::transient(
            Reason::InvalidToken,
            format!("the static token file {} is empty", path.display()),
        ));
    }
    if let Some(pos) = value.bytes().position(|b| !(0x21..=0x7e).contains(&b)) {
        return Err(FetchError::permanent(
            Reason::InvalidToken,
            format!(
                "the static token in {} contains whitespace or a control character (byte {pos}); it would break a header",
                path.display()
            ),
        ));
    }
    Ok(Token {
        access_token: Secret::new(value),
        token_type: spec.token_type.clone().unwrap_or_else(|| "Bearer".into()),
        issued_at: now,
        expires_at: now + spec.default_lifetime,
        refresh_token: None,
    })
}
