//! The wire form of a token request, built without I/O.

use super::{ClientAuth, Encoding, GrantSpec, TokenRequestSpec};
use crate::secret::Secret;
use base64::Engine;
use std::fmt;
use url::Url;

/// A header or body value; secret ones print redacted.
#[derive(Clone, PartialEq)]
pub enum Value {
    Plain(String),
    Secret(Secret),
}

impl Value {
    pub fn expose(&self) -> &str {
        match self {
            Value::Plain(s) => s,
            Value::Secret(s) => s.expose(),
        }
    }

    pub fn is_secret(&self) -> bool {
        matches!(self, Value::Secret(_))
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Plain(s) => write!(f, "{s:?}"),
            Value::Secret(_) => f.write_str("[redacted]"),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct WireRequest {
    pub url: Url,
    pub encoding: Encoding,
    /// Headers in order; names as configured (HTTP names are case-insensitive).
    pub headers: Vec<(String, Value)>,
    /// Body fields in order.
    pub fields: Vec<(String, Value)>,
}

impl WireRequest {
    #[cfg(test)]
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.expose())
    }

    #[cfg(test)]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.expose())
    }
}

fn set(list: &mut Vec<(String, Value)>, name: &str, value: Value, case_insensitive: bool) {
    let same = |k: &String| {
        if case_insensitive {
            k.eq_ignore_ascii_case(name)
        } else {
            k == name
        }
    };
    match list.iter_mut().find(|(k, _)| same(k)) {
        Some(slot) => slot.1 = value,
        None => list.push((name.to_string(), value)),
    }
}

/// RFC 6749 §2.3.1: client_id and secret are form-urlencoded before Basic.
fn basic_credentials(client_id: &str, secret: &str) -> Secret {
    let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let raw = format!("{}:{}", encode(client_id), encode(secret));
    Secret::new(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    ))
}

/// Builds the request for `spec` to `url`. With a `refresh_token` (the
/// newest one known), a grant that uses refresh tokens sends the
/// refresh_token grant; the refresh grant falls back to the configured
/// initial token; client credentials ignore refresh tokens.
pub fn build_request(
    spec: &TokenRequestSpec,
    url: &Url,
    refresh_token: Option<&Secret>,
) -> WireRequest {
    let mut headers = vec![(
        "Accept".to_string(),
        Value::Plain("application/json".into()),
    )];
    let refresh_with = match &spec.grant {
        GrantSpec::Password { .. } => refresh_token,
        GrantSpec::RefreshToken { initial } => Some(refresh_token.unwrap_or(initial)),
        GrantSpec::ClientCredentials
        | GrantSpec::Static
        | GrantSpec::JwtBearer(_)
        | GrantSpec::TokenExchange(_) => None,
    };
    let mut fields = Vec::new();
    match (refresh_with, &spec.grant) {
        (Some(rt), _) => {
            fields.push((
                "grant_type".to_string(),
                Value::Plain("refresh_token".into()),
            ));
            fields.push((
                spec.refresh_token_param.to_string(),
                Value::Secret(rt.clone()),
            ));
        }
        (None, GrantSpec::Password { username, password }) => {
            fields.push(("grant_type".to_string(), Value::Plain("password".into())));
            fields.push(("username".into(), Value::Plain(username.clone())));
            fields.push(("password".into(), Value::Secret(password.clone())));
        }
        (None, grant) => fields.push((
            "grant_type".to_string(),
            Value::Plain(grant.grant_type().into()),
        )),
    }

    match spec.auth {
        ClientAuth::Body => {
            if let Some(id) = &spec.client_id {
                fields.push(("client_id".into(), Value::Plain(id.clone())));
            }
            if let Some(secret) = &spec.client_secret {
                fields.push(("client_secret".into(), Value::Secret(secret.clone())));
            }
        }
        ClientAuth::Basic => {
            let id = spec.client_id.as_deref().unwrap_or("");
            let secret = spec
                .client_secret
                .as_ref()
                .map(Secret::expose)
                .unwrap_or("");
            headers.push((
                "Authorization".into(),
                Value::Secret(basic_credentials(id, secret)),
            ));
        }
        // the assertion itself is signed when the request is sent
        // (`assertion::AssertionKey::assertion`): it holds the time
        // mutual TLS: the certificate is the credential, client_id says whose
        ClientAuth::None
        | ClientAuth::PrivateKeyJwt
        | ClientAuth::ClientSecretJwt
        | ClientAuth::Tls
        | ClientAuth::SelfSignedTls => {
            if let Some(id) = &spec.client_id {
                fields.push(("client_id".into(), Value::Plain(id.clone())));
            }
        }
    }

    let scope_claim = matches!(&spec.grant, GrantSpec::JwtBearer(j) if j.scope_claim);
    if let Some(scope) = spec.scope.as_ref().filter(|_| !scope_claim) {
        set(
            &mut fields,
            &spec.scope_param,
            Value::Plain(scope.clone()),
            false,
        );
    }
    for (name, value) in &spec.params {
        set(&mut fields, name, Value::Plain(value.clone()), false);
    }
    for (name, value) in &spec.headers {
        set(&mut headers, name, Value::Plain(value.clone()), true);
    }

    WireRequest {
        url: url.clone(),
        encoding: spec.encoding,
        headers,
        fields,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grant::{Endpoint, ResponseMapping};
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn spec(auth: ClientAuth, grant: GrantSpec) -> TokenRequestSpec {
        TokenRequestSpec {
            endpoint: Endpoint::TokenUrl(url()),
            allow_insecure_http: false,
            grant,
            client_id: Some("my client".into()),
            client_secret: Some(Secret::new("p@ss:word")),
            auth,
            encoding: Encoding::Form,
            scope: None,
            scope_param: "scope".into(),
            refresh_token_param: "refresh_token".into(),
            params: BTreeMap::new(),
            headers: BTreeMap::new(),
            response: ResponseMapping::default(),
            timeout: Duration::from_secs(30),
            ca_pem: None,
            default_lifetime: Duration::from_secs(3600),
            token_type: None,
            assertion: None,
            assertion_audience: None,
            tls_client: None,
            dpop: None,
        }
    }

    fn url() -> Url {
        Url::parse("https://auth.example.com/token").unwrap()
    }

    fn build_request(spec: &TokenRequestSpec, rt: Option<&Secret>) -> WireRequest {
        super::build_request(spec, &url(), rt)
    }

    #[test]
    fn body_auth_puts_credentials_in_the_body() {
        let r = build_request(&spec(ClientAuth::Body, GrantSpec::ClientCredentials), None);
        assert_eq!(r.field("grant_type"), Some("client_credentials"));
        assert_eq!(r.field("client_id"), Some("my client"));
        assert_eq!(r.field("client_secret"), Some("p@ss:word"));
        assert_eq!(r.header("authorization"), None);
        assert_eq!(r.header("accept"), Some("application/json"));
    }

    #[test]
    fn basic_auth_form_encodes_then_base64s() {
        let r = build_request(&spec(ClientAuth::Basic, GrantSpec::ClientCredentials), None);
        assert_eq!(r.field("client_id"), None);
        assert_eq!(r.field("client_secret"), None);
        let header = r.header("Authorization").unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(header.strip_prefix("Basic ").unwrap())
            .unwrap();
        assert_eq!(
            String::from_utf8(decoded).unwrap(),
            "my+client:p%40ss%3Aword"
        );
    }

    #[test]
    fn none_auth_sends_only_the_client_id() {
        let r = build_request(&spec(ClientAuth::None, GrantSpec::ClientCredentials), None);
        assert_eq!(r.field("client_id"), Some("my client"));
        assert_eq!(r.field("client_secret"), None);
    }

    #[test]
    fn scope_param_params_and_headers_apply_in_order() {
        let mut s = spec(ClientAuth::Body, GrantSpec::ClientCredentials);
        s.scope = Some("read write".into());
        s.scope_param = "scopes".into();
        s.params.insert("audience".into(), "api".into());
        s.params.insert("grant_type".into(), "urn:custom".into());
        s.headers.insert("accept".into(), "text/plain".into());
        s.headers.insert("X-Api-Key".into(), "k".into());
        let r = build_request(&s, None);
        assert_eq!(r.field("scopes"), Some("read write"));
        assert_eq!(r.field("scope"), None);
        assert_eq!(r.field("audience"), Some("api"));
        assert_eq!(r.field("grant_type"), Some("urn:custom"), "params override");
        assert_eq!(r.header("Accept"), Some("text/plain"), "headers override");
        assert_eq!(r.header("x-api-key"), Some("k"));
    }

    #[test]
    fn password_and_refresh_grants() {
        let pw = GrantSpec::Password {
            username: "alice".into(),
            password: Secret::new("pw"),
        };
        let r = build_request(&spec(ClientAuth::Basic, pw), None);
        assert_eq!(r.field("grant_type"), Some("password"));
        assert_eq!(r.field("username"), Some("alice"));
        assert_eq!(r.field("password"), Some("pw"));

        let mut s = spec(
            ClientAuth::Basic,
            GrantSpec::RefreshToken {
                initial: Secret::new("rt-1"),
            },
        );
        s.refresh_token_param = "refreshToken".into();
        assert_eq!(build_request(&s, None).field("refreshToken"), Some("rt-1"));
        let newer = Secret::new("rt-2");
        assert_eq!(
            build_request(&s, Some(&newer)).field("refreshToken"),
            Some("rt-2")
        );
    }

    #[test]
    fn a_password_client_with_a_refresh_token_refreshes_and_client_credentials_ignore_it() {
        let pw = GrantSpec::Password {
            username: "alice".into(),
            password: Secret::new("pw"),
        };
        let mut s = spec(ClientAuth::None, pw);
        s.client_id = Some("administration".into());
        s.client_secret = None;
        s.scope = Some("write".into());
        s.scope_param = "scopes".into();
        let rt = Secret::new("rt-9");
        let r = build_request(&s, Some(&rt));
        assert_eq!(r.field("grant_type"), Some("refresh_token"));
        assert_eq!(r.field("refresh_token"), Some("rt-9"));
        assert_eq!(r.field("password"), None);
        assert_eq!(r.field("client_id"), Some("administration"));
        assert_eq!(r.field("scopes"), Some("write"));
        let cc = build_request(
            &spec(ClientAuth::Body, GrantSpec::ClientCredentials),
            Some(&rt),
        );
        assert_eq!(cc.field("grant_type"), Some("client_credentials"));
        assert_eq!(cc.field("refresh_token"), None);
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let r = build_request(&spec(ClientAuth::Body, GrantSpec::ClientCredentials), None);
        let dbg = format!("{r:?}");
        assert!(!dbg.contains("p@ss:word"), "{dbg}");
        assert!(dbg.contains("[redacted]"));
    }
}
