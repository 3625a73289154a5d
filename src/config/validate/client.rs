//! One client's table: its endpoint, authentication, grant, request and
//! refresh policy, and its outputs.

use crate::config::presets::{Preset, PresetDefaults};
use crate::config::raw::{GrantKind, RawClient, S};
use crate::grant::http::acceptable_scheme;
use crate::grant::{ClientAuth, Encoding, Endpoint, ResponseMapping};
use crate::schedule::Policy;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;
use url::Url;

use super::*;

/// What every client inherits from `[defaults]` (or the built-in policy).
pub(super) struct ClientDefaults {
    pub(super) ratio: Option<(f64, Range<usize>, String)>,
    pub(super) before: Duration,
    pub(super) min: Duration,
    pub(super) timeout: Duration,
    pub(super) binit: Duration,
    pub(super) bmax: Duration,
    pub(super) lifetime: Duration,
    pub(super) max_lifetime: Duration,
    /// Where a client's DPoP proof key is made (`state_dir`).
    pub(super) state_dir: std::path::PathBuf,
}

pub(super) fn validate_client(
    v: &mut Validator<'_>,
    name: &str,
    ck: &str,
    c: &RawClient,
    d: &ClientDefaults,
) -> Option<ClientPlan> {
    let cx = Cx::new(ck, c);
    let endpoint = check_endpoint(v, &cx);
    let (auth, encoding, client_id, client_secret) = check_auth(v, &cx);
    let assertion = check_assertion(v, &cx, auth);
    let tls_client = check_tls_client(v, &cx, auth);
    let grant = check_grant(v, &cx);
    let request = check_request(v, &cx);
    let (policy, timeout, default_lifetime) = check_policy(v, &cx, d);
    let ca_file = c.ca_file.as_ref().and_then(|f| {
        v.path(f, &cx.key("ca_file")).map(|p| Located {
            value: p,
            span: f.span(),
            key: cx.key("ca_file"),
        })
    });
    let dpop = check_dpop(v, &cx, name, &d.state_dir);
    let outputs = check_outputs(v, &cx, dpop.as_ref().map(|(k, _)| k));

    // (a client with errors still has a plan, built from what is valid and
    // defaults for the rest: `build` then checks what it can — groups,
    // secret files — so every error shows at once. Such a plan never runs:
    // the diagnostics refuse the config.)
    Some(ClientPlan {
        name: name.to_string(),
        endpoint: endpoint?,
        allow_insecure_http: cx.allow_http,
        token_type: request.token_type,
        grant: grant?,
        client_id,
        client_secret,
        auth,
        assertion,
        tls_client,
        encoding,
        scope: c.scope.as_ref().map(|s| s.get_ref().clone()),
        scope_param: request.scope_param,
        refresh_token_param: request.refresh_token_param,
        params: request.params,
        headers: request.headers,
        response: request.response,
        timeout,
        ca_file,
        default_lifetime,
        policy,
        outputs,
        dpop,
    })
}

/// What every check of one client's table knows: where it is, its raw
/// table, and what its preset and grant make of it.
struct Cx<'c> {
    /// `clients.NAME`
    ck: &'c str,
    c: &'c RawClient,
    preset: Option<Preset>,
    grant_kind: GrantKind,
    pd: PresetDefaults,
    /// Where the grant was chosen (`grant_type`, else `preset`).
    grant_span: Option<Range<usize>>,
    allow_http: bool,
}

impl<'c> Cx<'c> {
    fn new(ck: &'c str, c: &'c RawClient) -> Cx<'c> {
        let preset = c.preset.as_ref().map(|p| *p.get_ref());
        let grant_kind = c
            .grant_type
            .as_ref()
            .map(|g| *g.get_ref())
            .or(preset.map(Preset::default_grant))
            .unwrap_or(GrantKind::ClientCredentials);
        Cx {
            ck,
            c,
            preset,
            grant_kind,
            pd: preset.map(|p| p.defaults(grant_kind)).unwrap_or_default(),
            grant_span: c
                .grant_type
                .as_ref()
                .map(|g| g.span())
                .or(c.preset.as_ref().map(|p| p.span())),
            allow_http: c.allow_insecure_http.as_ref().is_some_and(|a| *a.get_ref()),
        }
    }

    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.ck)
    }

    /// An "is required" message: the preset's reason when it has one.
    fn required(&self, k: &str, generic: String) -> String {
        match self.preset.and_then(|p| p.explain(self.grant_kind, k)) {
            Some(why) => format!("is required: {why}"),
            None => generic,
        }
    }

    /// `value` as the URL of `k`, if it is one the client may send credentials to.
    fn url(
        &self,
        v: &mut Validator<'_>,
        value: &str,
        span: Option<Range<usize>>,
        k: &str,
    ) -> Option<Url> {
        let message = match Url::parse(value) {
            Ok(url) if acceptable_scheme(&url, self.allow_http) => return Some(url),
            Ok(url) if url.scheme() == "http" => "plain http:// would send credentials in the clear; use https://, or set allow_insecure_http = true (loopback hosts are always allowed)".to_string(),
            Ok(url) => format!("scheme {:?} is not supported; use https://", url.scheme()),
            Err(e) => format!("not a URL: {e}"),
        };
        v.error(span, &self.key(k), message);
        None
    }

    /// A parameter name that must not be empty, else `default`.
    fn nonempty(
        &self,
        v: &mut Validator<'_>,
        s: &S<String>,
        k: &str,
        default: &'static str,
    ) -> Cow<'static, str> {
        match s {
            Some(x) if x.get_ref().trim().is_empty() => {
                v.error(x.span(), &self.key(k), "must not be empty");
                default.into()
            }
            Some(x) => x.get_ref().clone().into(),
            None => default.into(),
        }
    }
}

/// Where tokens come from: `token_url`, `issuer` (discovery), the preset's
/// endpoint, or a static token's file.
fn check_endpoint(v: &mut Validator<'_>, cx: &Cx<'_>) -> Option<Endpoint> {
    let (c, pd, grant_kind, grant_span) = (cx.c, &cx.pd, cx.grant_kind, &cx.grant_span);
    if grant_kind == GrantKind::Static {
        for (field, k) in [(&c.token_url, "token_url"), (&c.issuer, "issuer")] {
            if let Some(f) = field {
                v.error(
                    f.span(),
                    &cx.key(k),
                    "a static token is read from token_file; it has no endpoint",
                );
            }
        }
        match &c.token_file {
            Some(f) => v.path(f, &cx.key("token_file")).map(Endpoint::StaticFile),
            None => {
                v.error(
                    grant_span.clone(),
                    &cx.key("token_file"),
                    "is required with grant_type = \"static\" (the file holding the key)",
                );
                None
            }
        }
    } else {
        if let Some(f) = &c.token_file {
            v.error(
                f.span(),
                &cx.key("token_file"),
                "applies only to grant_type = \"static\"",
            );
        }
        match (&c.token_url, &c.issuer) {
            (Some(_), Some(i)) => {
                v.error(
                    i.span(),
                    &cx.key("issuer"),
                    "set only one of token_url, issuer",
                );
                None
            }
            (Some(u), None) => cx
                .url(v, u.get_ref(), Some(u.span()), "token_url")
                .map(Endpoint::TokenUrl),
            (None, Some(i)) => cx
                .url(v, i.get_ref(), Some(i.span()), "issuer")
                .map(Endpoint::Issuer),
            (None, None) => match pd.token_url {
                Some(default) => cx
                    .url(v, default, None, "token_url")
                    .map(Endpoint::TokenUrl),
                None => {
                    let message =
                        cx.required("token_url", "token_url (or issuer) is required".into());
                    v.error(
                        c.preset.as_ref().map(|p| p.span()),
                        &cx.key("token_url"),
                        message,
                    );
                    None
                }
            },
        }
    }
}

/// How the client authenticates: `auth`, `encoding`, its id and secret.
fn check_auth(
    v: &mut Validator<'_>,
    cx: &Cx<'_>,
) -> (
    ClientAuth,
    Encoding,
    Option<String>,
    Option<Located<SecretSource>>,
) {
    let (c, pd, grant_kind, grant_span, ck) = (cx.c, &cx.pd, cx.grant_kind, &cx.grant_span, cx.ck);
    let auth = c
        .auth
        .as_ref()
        .map(|a| *a.get_ref())
        .or(pd.auth)
        // the JWT bearer grant's assertion, or the subject token, is the
        // credential
        .unwrap_or(
            if matches!(grant_kind, GrantKind::JwtBearer | GrantKind::TokenExchange) {
                ClientAuth::None
            } else {
                ClientAuth::Body
            },
        );
    let encoding = c
        .encoding
        .as_ref()
        .map(|e| *e.get_ref())
        .or(pd.encoding)
        .unwrap_or(Encoding::Form);
    let client_secret = v.secret_source(
        &c.client_secret_file,
        &c.client_secret_env,
        &c.client_secret,
        "client_secret",
        ck,
    );
    let client_id = c
        .client_id
        .as_ref()
        .map(|s| s.get_ref().clone())
        .or(pd.client_id.map(str::to_string));
    match (auth, grant_kind) {
        (_, GrantKind::Static) => {}
        (ClientAuth::Body | ClientAuth::Basic | ClientAuth::ClientSecretJwt, _) => {
            let auth_name = match auth {
                ClientAuth::Basic => "basic",
                ClientAuth::ClientSecretJwt => "client_secret_jwt",
                _ => "body",
            };
            if client_id.is_none() {
                let message = cx.required(
                    "client_id",
                    format!("is required with auth = \"{auth_name}\""),
                );
                v.error(
                    c.auth.as_ref().map(|a| a.span()).or(grant_span.clone()),
                    &cx.key("client_id"),
                    message,
                );
            }
            if c.client_secret_file.is_none()
                && c.client_secret_env.is_none()
                && c.client_secret.is_none()
            {
                let message = cx.required("client_secret", "one of client_secret_file, client_secret_env or client_secret is required (or auth = \"none\" for a public client)".into());
                v.error(
                    c.client_id
                        .as_ref()
                        .map(|s| s.span())
                        .or(grant_span.clone()),
                    &cx.key("client_secret"),
                    message,
                );
            }
        }
        (ClientAuth::None, _) => {
            if let Some(s) = &client_secret {
                v.error(s.span.clone(), &s.key, "auth = \"none\" never sends a client secret; remove it or choose auth = \"body\" or \"basic\"");
            }
        }
        (ClientAuth::PrivateKeyJwt | ClientAuth::Tls | ClientAuth::SelfSignedTls, _) => {
            let (auth_name, with) = match auth {
                ClientAuth::PrivateKeyJwt => ("private_key_jwt", "signs with private_key_file"),
                ClientAuth::Tls => ("tls_client_auth", "authenticates with tls_cert_file"),
                _ => (
                    "self_signed_tls_client_auth",
                    "authenticates with tls_cert_file",
                ),
            };
            if client_id.is_none() {
                let message = cx.required(
                    "client_id",
                    format!("is required with auth = \"{auth_name}\" (it names whose key or certificate it is)"),
                );
                v.error(
                    c.auth.as_ref().map(|a| a.span()).or(grant_span.clone()),
                    &cx.key("client_id"),
                    message,
                );
            }
            if let Some(s) = &client_secret {
                v.error(
                    s.span.clone(),
                    &s.key,
                    format!(
                        "auth = \"{auth_name}\" {with} and never sends a client secret; remove it"
                    ),
                );
            }
        }
    }

    (auth, encoding, client_id, client_secret)
}

/// `dpop = true` (RFC 9449): the proof key, `dpop_key_file` or one made in
/// `state_dir`. A static token is not requested, so it cannot be bound.
fn check_dpop(
    v: &mut Validator<'_>,
    cx: &Cx<'_>,
    name: &str,
    state_dir: &std::path::Path,
) -> Option<(
    std::sync::Arc<crate::grant::dpop::DpopKey>,
    Option<Located<PathBuf>>,
)> {
    let c = cx.c;
    let on = c.dpop.as_ref().is_some_and(|d| *d.get_ref());
    if !on {
        if let Some(f) = &c.dpop_key_file {
            v.error(
                f.span(),
                &cx.key("dpop_key_file"),
                "applies with dpop = true",
            );
        }
        return None;
    }
    if cx.grant_kind == GrantKind::Static {
        v.error(
            c.dpop.as_ref().map(|d| d.span()),
            &cx.key("dpop"),
            "a static token is read from a file, never requested: there is nothing to bind to a key",
        );
        return None;
    }
    let file = match &c.dpop_key_file {
        Some(f) => Some(Located {
            value: v.path(f, &cx.key("dpop_key_file"))?,
            span: f.span(),
            key: cx.key("dpop_key_file"),
        }),
        None => None,
    };
    let key = match &file {
        Some(f) => crate::grant::dpop::DpopKey::new(f.value.clone(), false),
        None => {
            crate::grant::dpop::DpopKey::new(state_dir.join(format!("{name}.dpop-key.pem")), true)
        }
    };
    Some((std::sync::Arc::new(key), file))
}

/// `tls_client_auth` and `self_signed_tls_client_auth`: `tls_cert_file`
/// and `tls_key_file`, required; refused with another `auth`.
fn check_tls_client(
    v: &mut Validator<'_>,
    cx: &Cx<'_>,
    auth: ClientAuth,
) -> Option<(Located<PathBuf>, Located<PathBuf>)> {
    let c = cx.c;
    let mtls = matches!(auth, ClientAuth::Tls | ClientAuth::SelfSignedTls);
    let file = |v: &mut Validator<'_>, given: &S<String>, k: &str, what: &str| match given {
        Some(f) if mtls => v.path(f, &cx.key(k)).map(|p| Located {
            value: p,
            span: f.span(),
            key: cx.key(k),
        }),
        Some(f) => {
            v.error(
                f.span(),
                &cx.key(k),
                "applies to auth = \"tls_client_auth\" or \"self_signed_tls_client_auth\" (a client certificate)",
            );
            None
        }
        None if mtls => {
            v.error(
                c.auth.as_ref().map(|a| a.span()),
                &cx.key(k),
                format!("is required with mutual-TLS client authentication: {what}"),
            );
            None
        }
        None => None,
    };
    let cert = file(
        v,
        &c.tls_cert_file,
        "tls_cert_file",
        "the client certificate (PEM; its chain after it)",
    );
    let key = file(
        v,
        &c.tls_key_file,
        "tls_key_file",
        "the certificate's private key (PEM)",
    );
    cert.zip(key)
}

/// `private_key_jwt` (`private_key_file`, `key_id`, `signing_alg`) and
/// `client_secret_jwt`; `assertion_audience` for both; these keys with
/// another `auth` are refused.
fn check_assertion(v: &mut Validator<'_>, cx: &Cx<'_>, auth: ClientAuth) -> Option<AssertionPlan> {
    use crate::grant::assertion::Alg;
    let c = cx.c;
    let audience = c.assertion_audience.as_ref().map(|a| a.get_ref().clone());
    match auth {
        ClientAuth::PrivateKeyJwt if cx.grant_kind == GrantKind::JwtBearer => {
            v.error(
                c.auth.as_ref().map(|a| a.span()),
                &cx.key("auth"),
                "with grant_type = \"jwt_bearer\", private_key_file signs the grant's assertion; choose another auth (\"none\", the default, or one with a secret or a certificate)",
            );
            None
        }
        ClientAuth::PrivateKeyJwt => {
            if let Some(a) = &c.signing_alg
                && *a.get_ref() == Alg::HS256
            {
                v.error(a.span(), &cx.key("signing_alg"), "HS256 signs with the client secret: that is auth = \"client_secret_jwt\"; a private key signs RS256, PS256, ES256 or EdDSA");
            }
            let file = match &c.private_key_file {
                Some(f) => v.path(f, &cx.key("private_key_file")).map(|p| Located {
                    value: p,
                    span: f.span(),
                    key: cx.key("private_key_file"),
                }),
                None => {
                    v.error(
                        c.auth.as_ref().map(|a| a.span()),
                        &cx.key("private_key_file"),
                        "is required with auth = \"private_key_jwt\": the PEM private key (PKCS#8, or PKCS#1 for RSA) whose public half the provider knows",
                    );
                    None
                }
            };
            let certificate = c.certificate_file.as_ref().and_then(|f| {
                v.path(f, &cx.key("certificate_file")).map(|p| Located {
                    value: p,
                    span: f.span(),
                    key: cx.key("certificate_file"),
                })
            });
            Some(AssertionPlan {
                key: AssertionKeyPlan::Private {
                    file: file?,
                    alg: c.signing_alg.as_ref().map(|a| *a.get_ref()),
                    kid: c.key_id.as_ref().map(|k| k.get_ref().clone()),
                    certificate,
                },
                audience,
            })
        }
        ClientAuth::ClientSecretJwt => {
            for (given, k, why) in [
                (
                    c.private_key_file.as_ref().map(|s| s.span()),
                    "private_key_file",
                    "signs with the client secret, not a private key",
                ),
                (
                    c.key_id.as_ref().map(|s| s.span()),
                    "key_id",
                    "signs with the client secret, which has no key id",
                ),
            ] {
                if let Some(at) = given {
                    v.error(
                        at,
                        &cx.key(k),
                        format!("auth = \"client_secret_jwt\" {why}"),
                    );
                }
            }
            if let Some(a) = &c.signing_alg
                && *a.get_ref() != Alg::HS256
            {
                v.error(a.span(), &cx.key("signing_alg"), "auth = \"client_secret_jwt\" signs HS256 (the client secret); RS256, PS256, ES256 and EdDSA are auth = \"private_key_jwt\"");
            }
            Some(AssertionPlan {
                key: AssertionKeyPlan::Secret,
                audience,
            })
        }
        // the keys are the grant's
        _ if cx.grant_kind == GrantKind::JwtBearer => None,
        _ => {
            for (given, k) in [
                (
                    c.private_key_file.as_ref().map(|s| s.span()),
                    "private_key_file",
                ),
                (c.key_id.as_ref().map(|s| s.span()), "key_id"),
                (c.signing_alg.as_ref().map(|s| s.span()), "signing_alg"),
                (
                    c.assertion_audience.as_ref().map(|s| s.span()),
                    "assertion_audience",
                ),
                (
                    c.certificate_file.as_ref().map(|s| s.span()),
                    "certificate_file",
                ),
            ] {
                if let Some(at) = given {
                    v.error(at, &cx.key(k), "applies to auth = \"private_key_jwt\" or \"client_secret_jwt\" (a signed client assertion)");
                }
            }
            None
        }
    }
}

/// `grant_type = "token_exchange"`: the subject token's file (required),
/// the actor token's, their types, `audience`, `resource`.
fn check_token_exchange(v: &mut Validator<'_>, cx: &Cx<'_>) -> Option<GrantPlan> {
    let c = cx.c;
    let text = |s: &S<String>| s.as_ref().map(|x| x.get_ref().clone());
    let subject = match &c.subject_token_file {
        Some(f) => v.path(f, &cx.key("subject_token_file")),
        None => {
            v.error(
                cx.grant_span.clone(),
                &cx.key("subject_token_file"),
                "is required with grant_type = \"token_exchange\": the file of the token to exchange (e.g. a projected service account token), read for every request",
            );
            None
        }
    };
    let actor = match (&c.actor_token_file, &c.actor_token_type) {
        (Some(f), kind) => v.path(f, &cx.key("actor_token_file")).map(|p| {
            Some((
                p,
                text(kind).unwrap_or_else(|| crate::grant::JWT_TOKEN_TYPE.into()),
            ))
        }),
        (None, Some(t)) => {
            v.error(
                t.span(),
                &cx.key("actor_token_type"),
                "is the type of actor_token_file, which is not given",
            );
            None
        }
        (None, None) => Some(None),
    };
    Some(GrantPlan::TokenExchange(crate::grant::TokenExchange {
        subject_token_file: subject?,
        subject_token_type: text(&c.subject_token_type)
            .unwrap_or_else(|| crate::grant::JWT_TOKEN_TYPE.into()),
        actor: actor?,
        audience: text(&c.audience),
        resource: text(&c.resource),
    }))
}

/// `grant_type = "jwt_bearer"`: the key that signs the assertion — a PEM
/// `private_key_file`, or a Google `service_account_file` — and its claims.
fn check_jwt_bearer(v: &mut Validator<'_>, cx: &Cx<'_>) -> Option<GrantPlan> {
    use crate::grant::assertion::Alg;
    let c = cx.c;
    let located = |v: &mut Validator<'_>, f: &Spanned<String>, k: &str| {
        v.path(f, &cx.key(k)).map(|p| Located {
            value: p,
            span: f.span(),
            key: cx.key(k),
        })
    };
    if let Some(f) = &c.certificate_file {
        v.error(
            f.span(),
            &cx.key("certificate_file"),
            "applies to auth = \"private_key_jwt\" (a certificate that names the client's key)",
        );
    }
    let key = match (&c.service_account_file, &c.private_key_file) {
        (Some(_), Some(p)) => {
            v.error(
                p.span(),
                &cx.key("private_key_file"),
                "give service_account_file (its key is inside) or private_key_file, not both",
            );
            None
        }
        (Some(f), None) => {
            for (given, k) in [
                (c.key_id.as_ref().map(|s| s.span()), "key_id"),
                (c.signing_alg.as_ref().map(|s| s.span()), "signing_alg"),
            ] {
                if let Some(at) = given {
                    v.error(
                        at,
                        &cx.key(k),
                        "comes from the service account file (private_key_id, RS256)",
                    );
                }
            }
            located(v, f, "service_account_file").map(JwtKeyPlan::ServiceAccount)
        }
        (None, Some(f)) => {
            if let Some(a) = &c.signing_alg
                && *a.get_ref() == Alg::HS256
            {
                v.error(a.span(), &cx.key("signing_alg"), "the JWT bearer grant is signed with a private key: RS256, PS256, ES256 or EdDSA");
            }
            located(v, f, "private_key_file").map(|file| JwtKeyPlan::Private {
                file,
                alg: c.signing_alg.as_ref().map(|a| *a.get_ref()),
                kid: c.key_id.as_ref().map(|k| k.get_ref().clone()),
            })
        }
        (None, None) => {
            let message = cx.required("private_key_file", "is required with grant_type = \"jwt_bearer\": the PEM private key that signs the assertion (or service_account_file, a Google service account's JSON key)".into());
            v.error(cx.grant_span.clone(), &cx.key("private_key_file"), message);
            None
        }
    };
    let google = cx.preset == Some(Preset::GoogleServiceAccount);
    Some(GrantPlan::JwtBearer {
        key: key?,
        issuer: c.assertion_issuer.as_ref().map(|s| s.get_ref().clone()),
        subject: c.assertion_subject.as_ref().map(|s| s.get_ref().clone()),
        audience: c.assertion_audience.as_ref().map(|s| s.get_ref().clone()),
        scope_claim: google,
        endpoint_from_file: c.service_account_file.is_some()
            && c.token_url.is_none()
            && c.issuer.is_none(),
    })
}

/// The grant and its own keys (`username`, `password*`,
/// `refresh_token_file`), and no key of another grant.
fn check_grant(v: &mut Validator<'_>, cx: &Cx<'_>) -> Option<GrantPlan> {
    let (c, pd, grant_kind, grant_span, ck) = (cx.c, &cx.pd, cx.grant_kind, &cx.grant_span, cx.ck);
    let password = v.secret_source(
        &c.password_file,
        &c.password_env,
        &c.password,
        "password",
        ck,
    );
    let grant = match grant_kind {
        GrantKind::ClientCredentials => Some(GrantPlan::ClientCredentials),
        GrantKind::Static => Some(GrantPlan::Static),
        GrantKind::JwtBearer => check_jwt_bearer(v, cx),
        GrantKind::TokenExchange => check_token_exchange(v, cx),
        GrantKind::Password => match (&c.username, password.clone()) {
            (Some(u), Some(p)) => Some(GrantPlan::Password {
                username: u.get_ref().clone(),
                password: p,
            }),
            (u, p) => {
                if u.is_none() {
                    let message = cx.required(
                        "username",
                        "is required with grant_type = \"password\"".into(),
                    );
                    v.error(grant_span.clone(), &cx.key("username"), message);
                }
                if p.is_none()
                    && c.password_file.is_none()
                    && c.password_env.is_none()
                    && c.password.is_none()
                {
                    let message = cx.required("password", "one of password_file, password_env or password is required with grant_type = \"password\"".into());
                    v.error(grant_span.clone(), &cx.key("password"), message);
                }
                None
            }
        },
        GrantKind::RefreshToken => {
            match &c.refresh_token_file {
                Some(f) => {
                    v.path(f, &cx.key("refresh_token_file"))
                        .map(|p| GrantPlan::RefreshToken {
                            initial: Located {
                                value: SecretSource::File(p),
                                span: f.span(),
                                key: cx.key("refresh_token_file"),
                            },
                        })
                }
                None => {
                    let message = cx.required("refresh_token_file", "is required with grant_type = \"refresh_token\" (the initial refresh token)".into());
                    v.error(grant_span.clone(), &cx.key("refresh_token_file"), message);
                    None
                }
            }
        }
    };
    if grant_kind != GrantKind::Password {
        for (field, k) in [
            (&c.username, "username"),
            (&c.password_file, "password_file"),
            (&c.password_env, "password_env"),
            (&c.password, "password"),
        ] {
            if let Some(f) = field {
                v.error(
                    f.span(),
                    &cx.key(k),
                    "applies only to grant_type = \"password\"",
                );
            }
        }
    }
    if grant_kind != GrantKind::TokenExchange {
        for (field, k) in [
            (&c.subject_token_file, "subject_token_file"),
            (&c.subject_token_type, "subject_token_type"),
            (&c.actor_token_file, "actor_token_file"),
            (&c.actor_token_type, "actor_token_type"),
            (&c.audience, "audience"),
            (&c.resource, "resource"),
        ] {
            if let Some(f) = field {
                v.error(
                    f.span(),
                    &cx.key(k),
                    "applies only to grant_type = \"token_exchange\"",
                );
            }
        }
    }
    if grant_kind != GrantKind::JwtBearer {
        for (field, k) in [
            (&c.service_account_file, "service_account_file"),
            (&c.assertion_issuer, "assertion_issuer"),
            (&c.assertion_subject, "assertion_subject"),
        ] {
            if let Some(f) = field {
                v.error(
                    f.span(),
                    &cx.key(k),
                    "applies only to grant_type = \"jwt_bearer\"",
                );
            }
        }
    }
    if grant_kind != GrantKind::RefreshToken {
        if let Some(f) = &c.refresh_token_file {
            v.error(
                f.span(),
                &cx.key("refresh_token_file"),
                "applies only to grant_type = \"refresh_token\"",
            );
        }
    }
    if pd.scope_required && c.scope.is_none() {
        let message = cx.required("scope", "is required".into());
        v.error(
            c.preset.as_ref().map(|p| p.span()),
            &cx.key("scope"),
            message,
        );
    }
    grant
}

/// The request's shape beyond the grant.
struct RequestShape {
    token_type: Option<String>,
    scope_param: Cow<'static, str>,
    refresh_token_param: Cow<'static, str>,
    params: BTreeMap<String, String>,
    headers: BTreeMap<String, String>,
    response: ResponseMapping,
}

/// `token_type`, parameter names, extra `params` and `headers`, and where
/// the answer's fields are (`response`).
fn check_request(v: &mut Validator<'_>, cx: &Cx<'_>) -> RequestShape {
    let (c, pd) = (cx.c, &cx.pd);
    let token_type = match &c.token_type {
        Some(t) if crate::grant::response::is_token68(t.get_ref()) => Some(t.get_ref().clone()),
        Some(t) => {
            v.error(
                t.span(),
                &cx.key("token_type"),
                format!(
                    "{:?} is not an HTTP authorization scheme (letters, digits, -._~+/)",
                    t.get_ref()
                ),
            );
            None
        }
        None => None,
    };

    let scope_param = cx.nonempty(
        v,
        &c.scope_param,
        "scope_param",
        pd.scope_param.unwrap_or("scope"),
    );
    let refresh_token_param = cx.nonempty(
        v,
        &c.refresh_token_param,
        "refresh_token_param",
        pd.refresh_token_param.unwrap_or("refresh_token"),
    );
    let params = c
        .params
        .as_ref()
        .map(|p| p.get_ref().clone())
        .unwrap_or_default();
    if let Some(p) = &c.params {
        if p.get_ref().keys().any(|k| k.is_empty()) {
            v.error(
                p.span(),
                &cx.key("params"),
                "parameter names must not be empty",
            );
        }
    }
    let mut headers: BTreeMap<String, String> = pd
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if let Some(h) = &c.headers {
        for (name, value) in h.get_ref() {
            headers.retain(|k, _| !k.eq_ignore_ascii_case(name));
            headers.insert(name.clone(), value.clone());
        }
    }
    if let Some(h) = &c.headers {
        for (n, val) in h.get_ref() {
            if !header_name_ok(n) {
                v.error(
                    h.span(),
                    &cx.key("headers"),
                    format!("{n:?} is not a valid HTTP header name"),
                );
            } else if !header_value_ok(val) {
                v.error(h.span(), &cx.key("headers"), format!("the value of {n} is not a valid HTTP header value (no line breaks or control characters)"));
            }
        }
    }

    let mut response = ResponseMapping::default();
    for (field, pointer) in pd.response {
        let target = match *field {
            "access_token" => &mut response.access_token,
            "expires_in" => &mut response.expires_in,
            "expires_at" => &mut response.expires_at,
            "refresh_token" => &mut response.refresh_token,
            _ => &mut response.token_type,
        };
        *target = Cow::Borrowed(pointer);
    }
    if let Some(r) = &c.response {
        let r = r.get_ref();
        for (field, target, k) in [
            (&r.access_token, &mut response.access_token, "access_token"),
            (&r.expires_in, &mut response.expires_in, "expires_in"),
            (&r.expires_at, &mut response.expires_at, "expires_at"),
            (
                &r.refresh_token,
                &mut response.refresh_token,
                "refresh_token",
            ),
            (&r.token_type, &mut response.token_type, "token_type"),
        ] {
            if let Some(p) = field {
                if !p.get_ref().starts_with('/') {
                    v.error(
                        p.span(),
                        &cx.key(&format!("response.{k}")),
                        format!(
                            "{:?} is not a JSON Pointer; write e.g. \"/{}\"",
                            p.get_ref(),
                            p.get_ref().trim_start_matches('/')
                        ),
                    );
                }
                *target = p.get_ref().clone().into();
            }
        }
    }

    RequestShape {
        token_type,
        scope_param,
        refresh_token_param,
        params,
        headers,
        response,
    }
}

/// The refresh policy, `timeout` and `default_lifetime`, each against the
/// others.
fn check_policy(
    v: &mut Validator<'_>,
    cx: &Cx<'_>,
    d: &ClientDefaults,
) -> (Policy, Duration, Duration) {
    let c = cx.c;
    let policy_base = Policy::default();
    let refresh_ratio = match (&c.refresh_ratio, &d.ratio) {
        (Some(r), _) => Some((*r.get_ref(), r.span(), cx.key("refresh_ratio"))),
        (None, Some(dr)) => Some(dr.clone()),
        (None, None) => None,
    };
    let refresh_ratio = match refresh_ratio {
        Some((r, span, k)) => {
            if !(r > 0.0 && r < 1.0) {
                v.error(
                    span,
                    &k,
                    format!(
                        "{r} must lie strictly between 0 and 1 (a share of the token's lifetime)"
                    ),
                );
            }
            r
        }
        None => policy_base.refresh_ratio,
    };
    let policy = Policy {
        refresh_ratio,
        refresh_before: v.duration(
            &c.refresh_before,
            Some(d.before),
            &cx.key("refresh_before"),
            d.before,
        ),
        min_interval: v.duration(&c.min_interval, Some(d.min), &cx.key("min_interval"), d.min),
        backoff_initial: v.duration(
            &c.backoff_initial,
            Some(d.binit),
            &cx.key("backoff_initial"),
            d.binit,
        ),
        backoff_max: v.duration(&c.backoff_max, Some(d.bmax), &cx.key("backoff_max"), d.bmax),
        min_valid: v.duration(&c.min_valid, None, &cx.key("min_valid"), Duration::ZERO),
        max_lifetime: v.duration(
            &c.max_lifetime,
            Some(d.max_lifetime),
            &cx.key("max_lifetime"),
            d.max_lifetime,
        ),
    };
    let timeout = v.duration(&c.timeout, Some(d.timeout), &cx.key("timeout"), d.timeout);
    let default_lifetime = v.duration(
        &c.default_lifetime,
        Some(d.lifetime),
        &cx.key("default_lifetime"),
        d.lifetime,
    );
    let span_of = |own: &S<String>| own.as_ref().map(|s| s.span());
    if !policy.min_valid.is_zero() && policy.min_valid >= default_lifetime {
        v.error(span_of(&c.min_valid), &cx.key("min_valid"), format!(
                "{} is not shorter than default_lifetime {}: no token of that lifetime could ever be written",
                humantime::format_duration(policy.min_valid),
                humantime::format_duration(default_lifetime)
            ));
    }
    if policy.min_interval.is_zero() {
        v.error(span_of(&c.min_interval), &cx.key("min_interval"), "must be more than zero: it is what keeps a short-lived token from turning into a tight loop");
    }
    if policy.backoff_initial.is_zero() {
        v.error(
            span_of(&c.backoff_initial),
            &cx.key("backoff_initial"),
            "must be more than zero",
        );
    }
    if policy.backoff_max < policy.backoff_initial {
        v.error(
            span_of(&c.backoff_max),
            &cx.key("backoff_max"),
            format!(
                "{} is less than backoff_initial {}",
                humantime::format_duration(policy.backoff_max),
                humantime::format_duration(policy.backoff_initial)
            ),
        );
    }
    if timeout.is_zero() {
        v.error(
            span_of(&c.timeout),
            &cx.key("timeout"),
            "must be more than zero",
        );
    }
    if default_lifetime.is_zero() {
        v.error(
            span_of(&c.default_lifetime),
            &cx.key("default_lifetime"),
            "must be more than zero",
        );
    } else if policy.min_interval >= default_lifetime {
        v.error(span_of(&c.min_interval).or(span_of(&c.default_lifetime)), &cx.key("min_interval"), format!(
                "{} is not shorter than default_lifetime {}: a token of that lifetime would always expire before its refresh",
                humantime::format_duration(policy.min_interval),
                humantime::format_duration(default_lifetime)
            ));
    }

    (policy, timeout, default_lifetime)
}

/// The client's outputs: at least one.
fn check_outputs(
    v: &mut Validator<'_>,
    cx: &Cx<'_>,
    dpop: Option<&std::sync::Arc<crate::grant::dpop::DpopKey>>,
) -> Vec<OutputPlan> {
    let (c, ck) = (cx.c, cx.ck);
    let mut outputs = Vec::new();
    match &c.outputs {
        Some(list) if !list.get_ref().is_empty() => {
            for (i, o) in list.get_ref().iter().enumerate() {
                if let Some(plan) = validate_output(v, &format!("{ck}.outputs[{i}]"), o, dpop) {
                    outputs.push(plan);
                }
            }
        }
        Some(list) => v.error(
            list.span(),
            &cx.key("outputs"),
            "at least one output is required",
        ),
        None => v.error(
            None,
            &cx.key("outputs"),
            "at least one [[clients.NAME.outputs]] table is required",
        ),
    }

    outputs
}
