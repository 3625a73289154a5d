//! Turning an HTTP answer from a token endpoint into a [`Token`] or a
//! classified [`FetchError`]. Pure: the caller passes the answer and `now`.

use super::ResponseMapping;
use super::error::{FetchError, Reason};
use crate::schedule::FailureClass;
use crate::secret::{Redactor, Secret};
use crate::token::Token;
use base64::Engine;
use serde_json::Value as Json;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The parts of an HTTP answer that matter here.
#[derive(Clone, Copy, Debug)]
pub struct HttpAnswer<'a> {
    pub status: u16,
    pub content_type: Option<&'a str>,
    pub retry_after: Option<&'a str>,
    pub location: Option<&'a str>,
    pub body: &'a [u8],
}

/// Largest body read from a token endpoint.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What else a parse needs to know.
pub struct ParseContext<'a> {
    /// The endpoint as shown in messages (no query string).
    pub endpoint: &'a str,
    pub mapping: &'a ResponseMapping,
    pub default_lifetime: Duration,
    pub now: SystemTime,
    pub redactor: &'a Redactor<'a>,
}

pub fn parse_answer(answer: &HttpAnswer<'_>, cx: &ParseContext<'_>) -> Result<Token, FetchError> {
    match answer.status {
        200..=299 => parse_success(answer, cx),
        300..=399 => Err(FetchError {
            status: Some(answer.status),
            ..FetchError::permanent(
                Reason::Redirect,
                format!(
                    "token endpoint {} answered HTTP {} redirecting to {}; redirects are not followed \
                     for a request that carries credentials: set token_url to the final address",
                    cx.endpoint,
                    answer.status,
                    cx.redactor
                        .scrub(answer.location.unwrap_or("(no Location header)")),
                ),
            )
        }),
        _ => Err(error_answer(answer, cx)),
    }
}

fn error_answer(answer: &HttpAnswer<'_>, cx: &ParseContext<'_>) -> FetchError {
    let status = answer.status;
    let (class, reason) = match status {
        429 => (FailureClass::Transient, Reason::RateLimited),
        408 => (FailureClass::Transient, Reason::Timeout),
        500..=599 => (FailureClass::Transient, Reason::ServerError),
        // every other 4xx (invalid_client, unauthorized_client, invalid_grant,
        // invalid_scope, invalid_request, ...) will not heal by retrying soon
        _ => (FailureClass::Permanent, Reason::Refused),
    };
    let retry_after = answer
        .retry_after
        .and_then(|v| parse_retry_after(v, cx.now));

    let json: Option<Json> = serde_json::from_slice(answer.body).ok();
    let oauth_error = json
        .as_ref()
        .and_then(|j| j.get("error"))
        .and_then(Json::as_str)
        .map(|s| cx.redactor.scrub(&printable(s, 100)));
    let description = json
        .as_ref()
        .and_then(|j| j.get("error_description"))
        .and_then(Json::as_str)
        .map(|s| cx.redactor.scrub(&printable(s, 300)));

    let verb = match class {
        FailureClass::Permanent => "refused the request",
        FailureClass::Transient => "failed",
    };
    let mut message = format!("token endpoint {} {verb}: HTTP {status}", cx.endpoint);
    match (&oauth_error, &description) {
        (Some(e), Some(d)) => message.push_str(&format!(" {e}: {d}")),
        (Some(e), None) => message.push_str(&format!(" {e}")),
        (None, Some(d)) => message.push_str(&format!(": {d}")),
        (None, None) if answer.body.is_empty() => message.push_str(" (empty body)"),
        (None, None) => message.push_str(&format!(
            " ({}, {} bytes): {}",
            answer.content_type.unwrap_or("no content type"),
            answer.body.len(),
            cx.redactor.scrub(&body_summary(answer.body)),
        )),
    }
    if let Some(d) = retry_after {
        message.push_str(&format!("; retry after {}s", d.as_secs()));
    }
    FetchError {
        class,
        reason,
        message,
        retry_after,
        status: Some(status),
        oauth_error,
    }
}

fn bad_response(cx: &ParseContext<'_>, status: u16, what: String) -> FetchError {
    FetchError {
        status: Some(status),
        ..FetchError::transient(
            Reason::BadResponse,
            format!(
                "token endpoint {} answered HTTP {status} but {what}",
                cx.endpoint
            ),
        )
    }
}

fn parse_success(answer: &HttpAnswer<'_>, cx: &ParseContext<'_>) -> Result<Token, FetchError> {
    let status = answer.status;
    let json: Json = serde_json::from_slice(answer.body).map_err(|_| {
        bad_response(
            cx,
            status,
            format!(
                "the body is not JSON ({}, {} bytes)",
                answer.content_type.unwrap_or("no content type"),
                answer.body.len()
            ),
        )
    })?;
    if !json.is_object() {
        return Err(bad_response(
            cx,
            status,
            "the body is not a JSON object".into(),
        ));
    }
    let keys = || {
        json.as_object()
            .map(|o| {
                o.keys()
                    .map(|k| printable(k, 40))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };

    let access_token = match json.pointer(&cx.mapping.access_token) {
        Some(Json::String(s)) if !s.is_empty() => s.as_str(),
        Some(Json::String(_)) => {
            return Err(bad_response(
                cx,
                status,
                format!("the access token at {} is empty", cx.mapping.access_token),
            ));
        }
        _ => {
            return Err(bad_response(
                cx,
                status,
                format!(
                    "has no access token string at {} (top-level keys: {})",
                    cx.mapping.access_token,
                    keys()
                ),
            ));
        }
    };
    if let Some(pos) = access_token
        .bytes()
        .position(|b| !(0x21..=0x7e).contains(&b))
    {
        return Err(FetchError {
            status: Some(status),
            ..FetchError::transient(
                Reason::InvalidToken,
                format!(
                    "token endpoint {} answered HTTP {status} with an access token that contains \
                     whitespace, a control or a non-ASCII character (byte {pos} of {}); refusing it, \
                     it would break an Authorization header",
                    cx.endpoint,
                    access_token.len()
                ),
            )
        });
    }

    let token_type = match json.pointer(&cx.mapping.token_type).and_then(Json::as_str) {
        None | Some("") => "Bearer".to_string(),
        Some(t) if t.eq_ignore_ascii_case("bearer") => "Bearer".to_string(),
        Some(t) if is_token68(t) => t.to_string(),
        Some(t) => {
            return Err(bad_response(
                cx,
                status,
                format!(
                    "its token_type {:?} is not a valid HTTP auth scheme",
                    printable(t, 40)
                ),
            ));
        }
    };

    let now = cx.now;
    let expires_at = if let Some(v) = non_null(json.pointer(&cx.mapping.expires_in)) {
        let secs = seconds(v).ok_or_else(|| {
            bad_response(
                cx,
                status,
                format!("{} is not a number of seconds", cx.mapping.expires_in),
            )
        })?;
        now + Duration::from_secs_f64(secs)
    } else if let Some(v) = non_null(json.pointer(&cx.mapping.expires_at)) {
        timestamp(v).ok_or_else(|| {
            bad_response(
                cx,
                status,
                format!(
                    "{} is neither an RFC 3339 timestamp nor Unix seconds",
                    cx.mapping.expires_at
                ),
            )
        })?
    } else if let Some(exp) = jwt_exp(access_token) {
        exp
    } else {
        now + cx.default_lifetime
    };

    let refresh_token = match json.pointer(&cx.mapping.refresh_token) {
        Some(Json::String(s)) if !s.is_empty() => Some(Secret::new(s.clone())),
        _ => None,
    };

    Ok(Token {
        access_token: Secret::new(access_token),
        token_type,
        issued_at: now,
        expires_at: expires_at.max(now),
        refresh_token,
    })
}

fn non_null(v: Option<&Json>) -> Option<&Json> {
    v.filter(|v| !v.is_null())
}

/// Seconds as a JSON number or numeric string; negative, NaN or absurd values are refused.
fn seconds(v: &Json) -> Option<f64> {
    let secs = match v {
        Json::Number(n) => n.as_f64()?,
        Json::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    // a century is plenty; larger values would overflow time arithmetic
    (secs.is_finite() && (0.0..=3.2e9).contains(&secs)).then_some(secs)
}

fn timestamp(v: &Json) -> Option<SystemTime> {
    match v {
        Json::String(s) => {
            let dt = OffsetDateTime::parse(s.trim(), &Rfc3339).ok()?;
            let nanos = dt.unix_timestamp_nanos();
            let ms = i64::try_from(nanos / 1_000_000).ok()?;
            Some(crate::token::from_unix_millis(ms))
        }
        Json::Number(n) => {
            let secs = n.as_f64()?;
            (secs.is_finite() && (0.0..=1e11).contains(&secs))
                .then(|| UNIX_EPOCH + Duration::from_secs_f64(secs))
        }
        _ => None,
    }
}

/// The `exp` claim of a JWT-shaped access token, without verifying anything.
pub fn jwt_exp(token: &str) -> Option<SystemTime> {
    let mut parts = token.split('.');
    let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Json = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_f64()?;
    (exp.is_finite() && (0.0..=1e11).contains(&exp))
        .then(|| UNIX_EPOCH + Duration::from_secs_f64(exp))
}

/// `Retry-After`: delta-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs.min(86_400)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// RFC 7235's token68: what an access token or an authorization scheme may
/// be made of in an HTTP header.
pub fn is_token68(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

/// At most `max` characters, control characters replaced, whitespace collapsed.
fn printable(s: &str, max: usize) -> String {
    let mut out = String::new();
    let mut last_space = false;
    for c in s.chars() {
        let c = if c.is_control() || c.is_whitespace() {
            ' '
        } else {
            c
        };
        if c == ' ' && last_space {
            continue;
        }
        last_space = c == ' ';
        if out.chars().count() >= max {
            out.push('…');
            break;
        }
        out.push(c);
    }
    out.trim().to_string()
}

/// A short human summary of a non-JSON error body: an HTML page's title, or
/// its first characters.
fn body_summary(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(4096)]);
    let lower = text.to_ascii_lowercase();
    if let (Some(start), Some(end)) = (lower.find("<title>"), lower.find("</title>")) {
        if start + 7 <= end {
            return printable(&text[start + 7..end], 120);
        }
    }
    printable(&text, 120)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn check(status: u16, body: &str, mapping: &ResponseMapping) -> Result<Token, FetchError> {
        let redactor = Redactor::new();
        let cx = ParseContext {
            endpoint: "https://auth.example.com/token",
            mapping,
            default_lifetime: Duration::from_secs(3600),
            now: now(),
            redactor: &redactor,
        };
        let answer = HttpAnswer {
            status,
            content_type: Some("application/json"),
            retry_after: None,
            location: None,
            body: body.as_bytes(),
        };
        parse_answer(&answer, &cx)
    }

    fn lifetime(r: &Result<Token, FetchError>) -> u64 {
        r.as_ref().unwrap().lifetime().as_secs()
    }

    fn jwt(exp: u64) -> String {
        let b = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!(
            "{}.{}.sig",
            b(r#"{"alg":"RS256"}"#),
            b(&format!(r#"{{"exp":{exp}}}"#))
        )
    }

    #[test]
    fn standard_and_string_lifetimes() {
        let m = ResponseMapping::default();
        let cases = [
            (r#"{"access_token":"abc","expires_in":3600}"#, 3600),
            (r#"{"access_token":"abc","expires_in":"600"}"#, 600),
            (
                r#"{"access_token":"abc","expires_in":59.9,"token_type":"bearer"}"#,
                59,
            ),
            (r#"{"access_token":"abc"}"#, 3600),
            (r#"{"access_token":"abc","expires_in":null}"#, 3600),
            // now is 2027-01-15T08:00:00Z; any offset is understood
            (
                r#"{"access_token":"abc","expires_at":"2027-01-15T10:00:00+01:00"}"#,
                3600,
            ),
            (r#"{"access_token":"abc","expires_at":1800000600}"#, 600),
            // already past: a zero lifetime, never a negative one
            (
                r#"{"access_token":"abc","expires_at":"2027-01-15T07:00:00Z"}"#,
                0,
            ),
        ];
        for (body, want) in cases {
            assert_eq!(lifetime(&check(200, body, &m)), want, "{body}");
        }
        let t = check(200, cases[2].0, &m).unwrap();
        assert_eq!(t.token_type, "Bearer");
        assert_eq!(t.access_token.expose(), "abc");
    }

    #[test]
    fn jwt_exp_is_the_fallback_lifetime() {
        let m = ResponseMapping::default();
        let body = format!(r#"{{"access_token":"{}"}}"#, jwt(1_800_000_120));
        assert_eq!(lifetime(&check(200, &body, &m)), 120);
    }

    #[test]
    fn non_standard_fields_through_pointers() {
        let m = ResponseMapping {
            access_token: "/authToken".into(),
            expires_at: "/tokenExpireAt".into(),
            refresh_token: "/data/rt".into(),
            ..ResponseMapping::default()
        };
        let body =
            r#"{"authToken":"scx","tokenExpireAt":"2027-01-15T07:00:00.500Z","data":{"rt":"r1"}}"#;
        let t = check(200, body, &m).unwrap();
        assert_eq!(t.access_token.expose(), "scx");
        assert_eq!(t.refresh_token.unwrap().expose(), "r1");
    }

    #[test]
    fn bad_successes_are_transient_and_never_echo_the_token() {
        let m = ResponseMapping::default();
        let cases = [
            ("<html>oops</html>", Reason::BadResponse),
            ("[1,2]", Reason::BadResponse),
            (r#"{"token":"x"}"#, Reason::BadResponse),
            (r#"{"access_token":""}"#, Reason::BadResponse),
            (
                r#"{"access_token":"abc","expires_in":-5}"#,
                Reason::BadResponse,
            ),
            (
                r#"{"access_token":"abc","expires_in":"soon"}"#,
                Reason::BadResponse,
            ),
            (
                r#"{"access_token":"abc","token_type":"Bearer x"}"#,
                Reason::BadResponse,
            ),
            (r#"{"access_token":"secret-tok\nen"}"#, Reason::InvalidToken),
            (r#"{"access_token":"secret-tok en"}"#, Reason::InvalidToken),
            (
                "{\"access_token\":\"secret-tok\u{e9}n\"}",
                Reason::InvalidToken,
            ),
        ];
        for (body, reason) in cases {
            let e = check(200, body, &m).unwrap_err();
            assert_eq!(e.reason, reason, "{body}: {e}");
            assert_eq!(e.class, FailureClass::Transient, "{body}");
            assert!(!e.message.contains("secret-tok"), "{}", e.message);
        }
        let e = check(200, r#"{"token":"x","ttl":1}"#, &m).unwrap_err();
        assert!(
            e.message.contains("top-level keys: token, ttl"),
            "{}",
            e.message
        );
    }

    #[test]
    fn oauth_errors_show_code_description_and_status() {
        let m = ResponseMapping::default();
        let e = check(
            401,
            r#"{"error":"invalid_client","error_description":"client authentication failed"}"#,
            &m,
        )
        .unwrap_err();
        assert_eq!(e.class, FailureClass::Permanent);
        assert_eq!(e.oauth_error.as_deref(), Some("invalid_client"));
        assert_eq!(
            e.message,
            "token endpoint https://auth.example.com/token refused the request: HTTP 401 invalid_client: client authentication failed"
        );
        for (status, class, reason) in [
            (400, FailureClass::Permanent, Reason::Refused),
            (403, FailureClass::Permanent, Reason::Refused),
            (429, FailureClass::Transient, Reason::RateLimited),
            (500, FailureClass::Transient, Reason::ServerError),
            (503, FailureClass::Transient, Reason::ServerError),
            (302, FailureClass::Permanent, Reason::Redirect),
        ] {
            let e = check(status, "", &m).unwrap_err();
            assert_eq!((e.class, e.reason), (class, reason), "{status}");
            assert_eq!(e.status, Some(status));
        }
    }

    #[test]
    fn html_error_pages_are_summarised_by_title() {
        let m = ResponseMapping::default();
        let e = check(
            502,
            "<html><head><title>502 Bad\n Gateway</title></head><body>…</body></html>",
            &m,
        )
        .unwrap_err();
        assert!(
            e.message
                .ends_with("(application/json, 73 bytes): 502 Bad Gateway"),
            "{}",
            e.message
        );
    }

    #[test]
    fn error_descriptions_are_scrubbed_of_known_secrets() {
        let secret = Secret::new("the-client-secret");
        let redactor = Redactor::new().with(Some(&secret));
        let m = ResponseMapping::default();
        let cx = ParseContext {
            endpoint: "e",
            mapping: &m,
            default_lifetime: Duration::from_secs(1),
            now: now(),
            redactor: &redactor,
        };
        let body =
            br#"{"error":"invalid_client","error_description":"bad secret the-client-secret"}"#;
        let answer = HttpAnswer {
            status: 401,
            content_type: None,
            retry_after: None,
            location: None,
            body,
        };
        let e = parse_answer(&answer, &cx).unwrap_err();
        assert!(!e.message.contains("the-client-secret"), "{}", e.message);
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        assert_eq!(
            parse_retry_after("30", now()),
            Some(Duration::from_secs(30))
        );
        let date = httpdate::fmt_http_date(now() + Duration::from_secs(90));
        assert_eq!(
            parse_retry_after(&date, now()),
            Some(Duration::from_secs(90))
        );
        assert_eq!(parse_retry_after("soon", now()), None);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;
    use std::time::UNIX_EPOCH;

    fn parse(status: u16, body: &[u8]) -> Result<Token, FetchError> {
        let redactor = Redactor::new();
        let mapping = ResponseMapping::default();
        let cx = ParseContext {
            endpoint: "https://auth.example.com/token",
            mapping: &mapping,
            default_lifetime: Duration::from_secs(3600),
            now: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            redactor: &redactor,
        };
        parse_answer(
            &HttpAnswer {
                status,
                content_type: Some("application/json"),
                retry_after: Some("7"),
                location: None,
                body,
            },
            &cx,
        )
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(serde_json::Value::from),
            "\\PC{0,24}".prop_map(serde_json::Value::from),
            Just(serde_json::json!({"nested": [1, 2]})),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// Any bytes with any status: a token or an error, never a panic.
        #[test]
        fn arbitrary_answers(status in 100u16..600, body in prop::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse(status, &body);
        }

        /// Token-shaped JSON with odd values: a token only when it is usable, and
        /// the token never appears in an error.
        #[test]
        fn near_miss_token_responses(token in "\\PC{8,40}", expires_in in json_value(), expires_at in json_value(), token_type in json_value()) {
            let body = serde_json::json!({"access_token": token, "expires_in": expires_in, "expires_at": expires_at, "token_type": token_type});
            match parse(200, body.to_string().as_bytes()) {
                Ok(t) => {
                    prop_assert!(t.access_token.expose().bytes().all(|b| (0x21..=0x7e).contains(&b)));
                    prop_assert!(t.expires_at >= t.issued_at);
                    prop_assert!(!t.token_type.is_empty() && !t.token_type.contains(char::is_whitespace));
                }
                Err(e) => prop_assert!(!e.message.contains(token.as_str()), "{}", e.message),
            }
        }
    }
}
