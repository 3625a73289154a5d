//! Authorization server metadata (RFC 8414, with OpenID Connect Discovery as
//! the fallback): where to look, and how to read the answer. Pure.

use url::Url;

/// The metadata URLs to try for `issuer`, in order: RFC 8414's
/// `/.well-known/oauth-authorization-server` inserted before the issuer's
/// path; the same appended to the issuer (as Okta, behind Floriday, serves
/// it); then OpenID Connect's `<issuer>/.well-known/openid-configuration`.
pub fn metadata_urls(issuer: &Url) -> Vec<Url> {
    let path = issuer.path().trim_end_matches('/');
    let mut urls: Vec<Url> = Vec::new();
    for candidate in [
        format!("/.well-known/oauth-authorization-server{path}"),
        format!("{path}/.well-known/oauth-authorization-server"),
        format!("{path}/.well-known/openid-configuration"),
    ] {
        let mut url = issuer.clone();
        url.set_path(&candidate);
        url.set_query(None);
        if !urls.contains(&url) {
            urls.push(url);
        }
    }
    urls
}

fn same_issuer(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// Reads `token_endpoint` from a metadata document, which must name the
/// configured issuer (a mismatch could mix up two servers).
pub fn token_endpoint(body: &[u8], issuer: &Url) -> Result<Url, String> {
    let doc: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| "the metadata is not JSON".to_string())?;
    match doc.get("issuer").and_then(|v| v.as_str()) {
        Some(named) if same_issuer(named, issuer.as_str()) => {}
        Some(named) => {
            return Err(format!(
                "the metadata names issuer {named:?}, not {:?}",
                issuer.as_str()
            ));
        }
        None => return Err("the metadata has no issuer".into()),
    }
    let endpoint = doc
        .get("token_endpoint")
        .and_then(|v| v.as_str())
        .ok_or_else(|| "the metadata has no token_endpoint".to_string())?;
    Url::parse(endpoint).map_err(|e| format!("its token_endpoint {endpoint:?} is not a URL: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn well_known_urls_for_issuers_with_and_without_a_path() {
        assert_eq!(
            metadata_urls(&u("https://idp.example.com"))
                .iter()
                .map(Url::as_str)
                .collect::<Vec<_>>(),
            [
                "https://idp.example.com/.well-known/oauth-authorization-server",
                "https://idp.example.com/.well-known/openid-configuration"
            ]
        );
        assert_eq!(
            metadata_urls(&u("https://idp.example.com/oauth2/aus1/"))
                .iter()
                .map(Url::as_str)
                .collect::<Vec<_>>(),
            [
                "https://idp.example.com/.well-known/oauth-authorization-server/oauth2/aus1",
                "https://idp.example.com/oauth2/aus1/.well-known/oauth-authorization-server",
                "https://idp.example.com/oauth2/aus1/.well-known/openid-configuration"
            ]
        );
    }

    #[test]
    fn the_token_endpoint_must_come_from_the_same_issuer() {
        let iss = u("https://idp.example.com/");
        let ok = br#"{"issuer":"https://idp.example.com","token_endpoint":"https://idp.example.com/oauth2/token"}"#;
        assert_eq!(
            token_endpoint(ok, &iss).unwrap().as_str(),
            "https://idp.example.com/oauth2/token"
        );
        let other = br#"{"issuer":"https://evil.example.com","token_endpoint":"https://evil.example.com/t"}"#;
        assert!(
            token_endpoint(other, &iss)
                .unwrap_err()
                .contains("names issuer")
        );
        assert!(
            token_endpoint(br#"{"issuer":"https://idp.example.com"}"#, &iss)
                .unwrap_err()
                .contains("no token_endpoint")
        );
        assert!(
            token_endpoint(b"<html>", &iss)
                .unwrap_err()
                .contains("not JSON")
        );
    }
}
