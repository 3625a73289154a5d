//! The HTTP edge: sends a [`WireRequest`] with reqwest (rustls, built-in web
//! roots plus the client's `ca_file`), reads at most 1 MiB, and hands the
//! answer to the pure parser.

use super::error::{FetchError, Reason};
use super::request::{Value, build_request};
use super::response::{HttpAnswer, MAX_BODY_BYTES, ParseContext, parse_answer};
use super::{CaBundle, Encoding, Endpoint, TokenRequestSpec, TokenSource, discovery};
use crate::secret::Secret;
use crate::token::Token;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Fetches tokens over HTTP. One reqwest client (and so one connection pool
/// and TLS configuration) per distinct CA bundle, shared by every client
/// that uses it.
pub struct HttpTokenSource {
    /// By CA and client certificate file: the digest of the certificate
    /// and key the client was built with, and the client.
    clients: Mutex<HashMap<ClientKey, BuiltClient>>,
    /// Discovered token endpoints by issuer; dropped when a request fails.
    discovered: Mutex<HashMap<String, url::Url>>,
    /// The newest `DPoP-Nonce` each token endpoint gave (RFC 9449 §8).
    dpop_nonces: Mutex<HashMap<String, String>>,
    /// Token requests in flight at once: thousands of clients starting
    /// together must not open thousands of connections (and file
    /// descriptors), and one hung host must not hold every slot.
    in_flight: crate::limiter::Limiter,
}

/// At most this many token requests run at once.
pub const MAX_CONCURRENT_REQUESTS: usize = 64;
/// At most this many of them to any one host.
pub const MAX_REQUESTS_PER_HOST: usize = 16;

impl Default for HttpTokenSource {
    fn default() -> HttpTokenSource {
        HttpTokenSource {
            clients: Mutex::default(),
            discovered: Mutex::default(),
            dpop_nonces: Mutex::default(),
            in_flight: crate::limiter::Limiter::new(MAX_CONCURRENT_REQUESTS, MAX_REQUESTS_PER_HOST),
        }
    }
}

/// `https://`, or `http://` to a loopback host, or anywhere when allowed.
pub fn acceptable_scheme(url: &url::Url, allow_insecure_http: bool) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => allow_insecure_http || is_loopback(url),
        _ => false,
    }
}

pub fn is_loopback(url: &url::Url) -> bool {
    use std::net::IpAddr;
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// `response`'s body, or `None` when it is longer than [`MAX_BODY_BYTES`]
/// (said in advance or found while reading).
async fn body_capped(response: &mut reqwest::Response) -> reqwest::Result<Option<Vec<u8>>> {
    if response.content_length().unwrap_or(0) > MAX_BODY_BYTES as u64 {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// GETs `url` with the cap and timeout of a token request: (status, body).
async fn get_capped(
    client: &reqwest::Client,
    url: &url::Url,
    timeout: std::time::Duration,
) -> Result<(u16, Vec<u8>), String> {
    let exchange = async {
        let mut response = client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| describe(&e))?;
        let status = response.status().as_u16();
        match body_capped(&mut response).await.map_err(|e| describe(&e))? {
            Some(body) => Ok((status, body)),
            None => Err(format!("body over {} KiB", MAX_BODY_BYTES / 1024)),
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "no answer within {}",
                humantime::format_duration(timeout)
            ))
        })
}

/// Builds the TLS configuration: Mozilla's roots (webpki-roots) plus `ca_pem`.
pub fn tls_config(ca_pem: Option<&[u8]>) -> Result<rustls::ClientConfig, String> {
    tls_config_with(ca_pem, None)
}

/// [`tls_config`], presenting `identity` when the server asks for a client
/// certificate (mutual TLS).
pub fn tls_config_with(
    ca_pem: Option<&[u8]>,
    identity: Option<&super::ClientIdentity>,
) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(pem) = ca_pem {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("cannot read PEM certificate: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("unusable CA certificate: {e}"))?;
            added += 1;
        }
        if added == 0 {
            return Err("no PEM certificate found".into());
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots);
    let mut config = match identity {
        None => config.with_no_client_auth(),
        Some(id) => {
            let (chain, key) = id.parts()?;
            config
                .with_client_auth_cert(chain, key)
                .map_err(|e| match e {
                    rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                        "the key is not the certificate's: their public keys differ".to_string()
                    }
                    e => format!("unusable client certificate or key: {e}"),
                })?
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

impl HttpTokenSource {
    pub fn new() -> HttpTokenSource {
        HttpTokenSource::default()
    }

    /// The token endpoint of `spec`: configured, or discovered (and cached).
    async fn token_url(
        &self,
        spec: &TokenRequestSpec,
        client: &reqwest::Client,
    ) -> Result<url::Url, FetchError> {
        let issuer = match &spec.endpoint {
            Endpoint::TokenUrl(url) => return Ok(url.clone()),
            Endpoint::Issuer(issuer) => issuer,
            Endpoint::StaticFile(_) => {
                return Err(FetchError::permanent(
                    Reason::Other,
                    "a static token has no token endpoint",
                ));
            }
        };
        if let Some(url) = self
            .discovered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(issuer.as_str())
        {
            return Ok(url.clone());
        }
        let mut problems = Vec::new();
        for metadata in discovery::metadata_urls(issuer) {
            let label = endpoint_label(&metadata);
            match get_capped(client, &metadata, spec.timeout).await {
                Ok((200, body)) => match discovery::token_endpoint(&body, issuer) {
                    Ok(url) if acceptable_scheme(&url, spec.allow_insecure_http) => {
                        tracing::info!(issuer = %issuer, token_endpoint = %endpoint_label(&url), "discovered the token endpoint");
                        self.discovered
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(issuer.to_string(), url.clone());
                        return Ok(url);
                    }
                    Ok(url) => {
                        return Err(FetchError::permanent(
                            Reason::Other,
                            format!(
                                "{label}: the discovered token_endpoint {} is not https:// (set allow_insecure_http = true to accept it)",
                                endpoint_label(&url)
                            ),
                        ));
                    }
                    Err(e) => {
                        return Err(FetchError::permanent(
                            Reason::BadResponse,
                            format!("{label}: {e}"),
                        ));
                    }
                },
                Ok((status, _)) => problems.push(format!("{label}: HTTP {status}")),
                Err(e) => problems.push(format!("{label}: {e}")),
            }
        }
        Err(FetchError::transient(
            Reason::Connect,
            format!(
                "cannot discover the token endpoint of issuer {}: {}",
                endpoint_label(issuer),
                problems.join("; ")
            ),
        ))
    }

    fn client_for(
        &self,
        ca: Option<&CaBundle>,
        tls_client: Option<&super::TlsClientFiles>,
    ) -> Result<reqwest::Client, FetchError> {
        let key = (ca.map(|c| c.digest), tls_client.map(|t| t.cert.clone()));
        let ca_pem = ca.map(|c| &c.pem[..]);
        // the certificate and key as they are on disk now (renewed in
        // place, they are used from the next request on)
        let identity = match tls_client {
            None => None,
            Some(files) => Some(read_identity(files).map_err(|e| {
                FetchError::transient(Reason::Other, format!("client certificate: {e}"))
            })?),
        };
        let digest = identity.as_ref().map(|(d, _)| *d);
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((built, client)) = clients.get(&key)
            && *built == digest
        {
            return Ok(client.clone());
        }
        let tls = tls_config_with(ca_pem, identity.as_ref().map(|(_, id)| id))
            .map_err(|e| FetchError::permanent(Reason::Other, format!("ca_file: {e}")))?;
        let client = client_builder(tls)
            // a refresh burst (start, SIGUSR1, clients sharing a lifetime)
            // reuses connections within it; between bursts, which are
            // minutes apart, an idle connection only holds memory and a
            // socket, and may be closed by the server under us (Node's
            // default keep-alive is 5 s)
            .pool_idle_timeout(POOL_IDLE)
            .build()
            .map_err(|e| {
                FetchError::permanent(Reason::Other, format!("cannot set up HTTP client: {e}"))
            })?;
        clients.insert(key, (digest, client.clone()));
        Ok(client)
    }
}

/// A CA's digest and a client certificate's file.
type ClientKey = (Option<[u8; 32]>, Option<std::path::PathBuf>);
/// The digest of the certificate and key a client was built with, and it.
type BuiltClient = (Option<[u8; 32]>, reqwest::Client);

/// A client certificate and key from their files, and their digest.
fn read_identity(
    files: &super::TlsClientFiles,
) -> Result<([u8; 32], super::ClientIdentity), String> {
    use sha2::{Digest, Sha256};
    let read = |p: &std::path::Path| {
        crate::fsread::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    let (cert, key) = (read(&files.cert)?, read(&files.key)?);
    let digest: [u8; 32] = Sha256::new()
        .chain_update(&cert)
        .chain_update(&key)
        .finalize()
        .into();
    let id = super::ClientIdentity::new(cert, key)
        .map_err(|e| format!("{} and {}: {e}", files.cert.display(), files.key.display()))?;
    Ok((digest, id))
}

/// Every HTTP client of the daemon (token endpoints, remote outputs): our
/// user agent, `tls` for trust, and redirects never followed (requests
/// carry credentials).
pub fn client_builder(tls: rustls::ClientConfig) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .user_agent(crate::USER_AGENT)
        .redirect(reqwest::redirect::Policy::none())
        .tls_backend_preconfigured(tls)
}

/// How long an idle connection to a token endpoint is kept for reuse.
pub const POOL_IDLE: std::time::Duration = std::time::Duration::from_secs(4);

/// The endpoint as shown in messages: no query string, no user info.
pub fn endpoint_label(url: &url::Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.set_fragment(None);
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.to_string()
}

/// Describes a reqwest error with its causes, and what a certificate
/// error means.
pub fn describe(e: &reqwest::Error) -> String {
    let mut text = String::new();
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(err) = source {
        let s = err.to_string();
        if !text.contains(&s) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&s);
        }
        source = err.source();
    }
    if text.is_empty() {
        text = e.to_string();
    }
    match tls_explained(&text) {
        Some(what) => format!("{what} ({text})"),
        None => text,
    }
}

/// What a certificate error from rustls means, and what to do, for the ones
/// people meet: the library's words name a Rust enum, not a fix.
fn tls_explained(text: &str) -> Option<&'static str> {
    const KNOWN: [(&str, &str); 5] = [
        (
            "CaUsedAsEndEntity",
            "the server presents a CA certificate as its own (a self-signed certificate with basicConstraints CA:TRUE, as `openssl req -x509` makes by default); give the server a certificate issued by a CA (basicConstraints CA:FALSE) and put that CA in ca_file",
        ),
        (
            "UnknownIssuer",
            "the server's certificate is not signed by a CA tokenkeeper trusts (Mozilla's roots and the client's ca_file); set ca_file to the PEM file of the CA that issued it",
        ),
        (
            "NotValidForName",
            "the server's certificate is not issued for the host name in the URL; use the name (or IP address) it was issued for",
        ),
        (
            "NotValidYet",
            "the server's certificate is not valid yet; check this host's clock",
        ),
        ("Expired", "the server's certificate has expired"),
    ];
    KNOWN
        .iter()
        .find(|(marker, _)| text.contains(marker))
        .map(|(_, what)| *what)
}

impl TokenSource for HttpTokenSource {
    async fn fetch(
        &self,
        spec: &TokenRequestSpec,
        refresh_token: Option<&Secret>,
        now: SystemTime,
    ) -> Result<Token, FetchError> {
        let redactor = spec.redactor(refresh_token);
        let client = self.client_for(spec.ca_pem.as_deref(), spec.tls_client.as_ref())?;
        let _permit = self
            .in_flight
            .acquire(&crate::limiter::host_of(&spec.endpoint))
            .await
            .ok_or_else(|| FetchError::transient(Reason::Other, "shutting down"))?;
        let token_url = self.token_url(spec, &client).await?;
        let result = self
            .exchange(spec, &client, &token_url, refresh_token, &redactor, now)
            .await;
        if result.is_err() {
            if let Endpoint::Issuer(issuer) = &spec.endpoint {
                // a failing endpoint may have moved: discover again next time
                self.discovered
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(issuer.as_str());
            }
        }
        result
    }
}

impl HttpTokenSource {
    async fn exchange(
        &self,
        spec: &TokenRequestSpec,
        client: &reqwest::Client,
        token_url: &url::Url,
        refresh_token: Option<&Secret>,
        redactor: &crate::secret::Redactor<'_>,
        now: SystemTime,
    ) -> Result<Token, FetchError> {
        let endpoint = endpoint_label(token_url);
        let mut wire = build_request(spec, token_url, refresh_token);
        if let super::GrantSpec::TokenExchange(x) = &spec.grant {
            // read for each request: a projected token is renewed on disk
            let read = |p: &std::path::Path, what: &str| {
                crate::fsread::read_to_string(p)
                    .map(|t| Secret::new(t.trim()))
                    .map_err(|e| {
                        FetchError::transient(
                            Reason::Other,
                            format!("cannot read the {what} {}: {e}", p.display()),
                        )
                    })
            };
            let subject = read(&x.subject_token_file, "subject token")?;
            wire.fields
                .push(("subject_token".into(), Value::Secret(subject)));
            wire.fields.push((
                "subject_token_type".into(),
                Value::Plain(x.subject_token_type.clone()),
            ));
            if let Some((file, kind)) = &x.actor {
                let actor = read(file, "actor token")?;
                wire.fields
                    .push(("actor_token".into(), Value::Secret(actor)));
                wire.fields
                    .push(("actor_token_type".into(), Value::Plain(kind.clone())));
            }
            for (name, value) in [("audience", &x.audience), ("resource", &x.resource)] {
                if let Some(v) = value {
                    wire.fields.push((name.into(), Value::Plain(v.clone())));
                }
            }
        }
        if let super::GrantSpec::JwtBearer(grant) = &spec.grant {
            let audience = grant
                .audience
                .clone()
                .unwrap_or_else(|| token_url.to_string());
            let scope = spec.scope.as_deref().filter(|_| grant.scope_claim);
            let jwt = grant
                .key
                .grant_assertion(
                    &grant.issuer,
                    grant.subject.as_deref(),
                    &audience,
                    scope,
                    now,
                )
                .map_err(|e| FetchError::permanent(Reason::Other, e))?;
            wire.fields.push(("assertion".into(), Value::Secret(jwt)));
        }
        if let Some(key) = &spec.assertion {
            let audience = spec
                .assertion_audience
                .clone()
                .unwrap_or_else(|| token_url.to_string());
            let jwt = key
                .assertion(spec.client_id.as_deref().unwrap_or(""), &audience, now)
                .map_err(|e| FetchError::permanent(Reason::Other, e))?;
            wire.fields.push((
                "client_assertion_type".into(),
                Value::Plain(super::assertion::ASSERTION_TYPE.into()),
            ));
            wire.fields
                .push(("client_assertion".into(), Value::Secret(jwt)));
        }

        // DPoP: a fresh proof for each attempt, with the endpoint's newest
        // nonce; an endpoint that wants a (new) nonce refuses with
        // `use_dpop_nonce` and names it, before it looks at the grant
        // (RFC 9449 §8): the one retry sends the same refresh token
        let proof_key = match &spec.dpop {
            None => None,
            Some(k) => Some(k.get().map_err(|e| {
                FetchError::transient(Reason::Other, format!("DPoP proof key: {e}"))
            })?),
        };
        let mut asked_nonce = false;
        loop {
            let mut builder = post(client, &wire)?;
            if let Some(k) = &proof_key {
                let nonce = self
                    .dpop_nonces
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(token_url.as_str())
                    .cloned();
                let proof = k
                    .key
                    .dpop_proof("POST", token_url, now, nonce.as_deref(), None)
                    .map_err(|e| FetchError::permanent(Reason::Other, e))?;
                let mut header = reqwest::header::HeaderValue::from_str(proof.expose())
                    .map_err(|_| FetchError::permanent(Reason::Other, "unusable DPoP proof"))?;
                header.set_sensitive(true);
                builder = builder.header("DPoP", header);
            }
            let (answer, nonce) = self.send(spec, builder, &endpoint, redactor).await?;
            if let Some(nonce) = &nonce
                && proof_key.is_some()
            {
                self.dpop_nonces
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(token_url.to_string(), nonce.clone());
            }
            let (status, content_type, retry_after, location, body) = answer;
            let cx = ParseContext {
                endpoint: &endpoint,
                mapping: &spec.response,
                default_lifetime: spec.default_lifetime,
                now,
                redactor,
            };
            let token = match parse_answer(
                &HttpAnswer {
                    status,
                    content_type: content_type.as_deref(),
                    retry_after: retry_after.as_deref(),
                    location: location.as_deref(),
                    body: &body,
                },
                &cx,
            ) {
                Err(e)
                    if proof_key.is_some()
                        && nonce.is_some()
                        && !asked_nonce
                        && e.oauth_error.as_deref() == Some("use_dpop_nonce") =>
                {
                    tracing::debug!(endpoint = %endpoint, "the token endpoint asks for a DPoP nonce; sending the proof again with it");
                    asked_nonce = true;
                    continue;
                }
                answer => answer?,
            };
            return Ok(match &spec.token_type {
                Some(forced) => Token {
                    token_type: forced.clone(),
                    ..token
                },
                None => token,
            });
        }
    }

    /// Sends one token request: the answer (status, content type,
    /// Retry-After, Location, body) and the `DPoP-Nonce` it gave.
    async fn send(
        &self,
        spec: &TokenRequestSpec,
        builder: reqwest::RequestBuilder,
        endpoint: &str,
        redactor: &crate::secret::Redactor<'_>,
    ) -> Result<(Answer, Option<String>), FetchError> {
        let exchange = async {
            let mut response = builder.send().await?;
            let status = response.status().as_u16();
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let content_type = header(reqwest::header::CONTENT_TYPE.as_str());
            let retry_after = header(reqwest::header::RETRY_AFTER.as_str());
            let location = header(reqwest::header::LOCATION.as_str());
            let nonce = header("dpop-nonce");
            let Some(body) = body_capped(&mut response).await? else {
                return Ok(Err(status));
            };
            Ok::<_, reqwest::Error>(Ok((
                (status, content_type, retry_after, location, body),
                nonce,
            )))
        };

        match tokio::time::timeout(spec.timeout, exchange).await {
            Err(_) => Err(FetchError::transient(
                Reason::Timeout,
                format!(
                    "no complete answer from token endpoint {endpoint} within {}",
                    humantime::format_duration(spec.timeout)
                ),
            )),
            Ok(Err(e)) => {
                let reason = if e.is_timeout() {
                    Reason::Timeout
                } else if e.is_connect() {
                    Reason::Connect
                } else {
                    Reason::Other
                };
                let what = if e.is_connect() {
                    "cannot connect to"
                } else {
                    "request failed to"
                };
                Err(FetchError::transient(
                    reason,
                    redactor.scrub(&format!(
                        "{what} token endpoint {endpoint}: {}",
                        describe(&e)
                    )),
                ))
            }
            Ok(Ok(Err(status))) => Err(FetchError {
                status: Some(status),
                ..FetchError::transient(
                    Reason::TooLarge,
                    format!(
                        "token endpoint {endpoint} answered HTTP {status} with a body over {} KiB; not read",
                        MAX_BODY_BYTES / 1024
                    ),
                )
            }),
            Ok(Ok(Ok(answer))) => Ok(answer),
        }
    }
}

/// What a token endpoint answered: status, content type, Retry-After,
/// Location, body.
type Answer = (u16, Option<String>, Option<String>, Option<String>, Vec<u8>);

/// The POST of `wire`: its headers (secret ones marked sensitive) and its
/// fields in its encoding.
fn post(
    client: &reqwest::Client,
    wire: &super::request::WireRequest,
) -> Result<reqwest::RequestBuilder, FetchError> {
    let mut builder = client.post(wire.url.clone());
    for (name, value) in &wire.headers {
        let mut header = reqwest::header::HeaderValue::from_str(value.expose()).map_err(|_| {
            FetchError::permanent(
                Reason::Other,
                format!("header {name} has a value HTTP cannot carry"),
            )
        })?;
        header.set_sensitive(value.is_secret());
        builder = builder.header(name.as_str(), header);
    }
    let pairs: Vec<(&str, &str)> = wire
        .fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.expose()))
        .collect();
    Ok(match wire.encoding {
        Encoding::Form => builder.form(&pairs),
        Encoding::Json => {
            let object: serde_json::Map<String, serde_json::Value> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
                .collect();
            builder.json(&object)
        }
        Encoding::Multipart => {
            let mut form = reqwest::multipart::Form::new();
            for (k, v) in &pairs {
                form = form.text(k.to_string(), v.to_string());
            }
            builder.multipart(form)
        }
    })
}
