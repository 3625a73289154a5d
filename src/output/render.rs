//! The content of a token file in each format. Pure.

use crate::grant::dpop::DpopKey;
use crate::secret::Secret;
use crate::token::{Token, rfc3339, unix_seconds};
use std::sync::Arc;

/// The fields a template may use, as `{{ name }}`.
/// What a `{{ field }}` of a template stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    AccessToken,
    TokenType,
    ExpiresAt,
    IssuedAt,
    ExpiresAtUnix,
    IssuedAtUnix,
}

/// Every field by its name in a template.
const FIELDS: [(&str, Field); 6] = [
    ("access_token", Field::AccessToken),
    ("token_type", Field::TokenType),
    ("expires_at", Field::ExpiresAt),
    ("issued_at", Field::IssuedAt),
    ("expires_at_unix", Field::ExpiresAtUnix),
    ("issued_at_unix", Field::IssuedAtUnix),
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Format {
    /// The token alone, no trailing newline.
    Raw,
    /// `{"access_token","token_type","expires_at","issued_at"}`.
    Json,
    /// Shell-sourceable `KEY='value'` lines.
    Env,
    /// `Authorization: <type> <token>` plus extra headers, for `curl -H @file`.
    Header {
        extra_headers: Vec<(String, String)>,
    },
    /// A user template, parsed at config time.
    Template(Template),
    /// [`Format::Json`] with the DPoP proof key the token is bound to:
    /// `"dpop": {"alg", "jkt", "jwk" (public), "private_key" (PKCS#8 PEM)}`
    /// — what a consumer needs to sign a proof for each request.
    Dpop(Arc<DpopKey>),
}

impl Format {
    /// The file content. It contains the token, so it is a [`Secret`].
    /// Only [`Format::Dpop`] can fail: its key may have to be read.
    pub fn render(&self, token: &Token) -> Result<Secret, String> {
        Ok(match self {
            Format::Raw => raw(token),
            Format::Json => json(token),
            Format::Env => env(token),
            Format::Header { extra_headers } => header(token, extra_headers),
            Format::Template(t) => Secret::new(t.render(token)),
            Format::Dpop(key) => {
                let key = key.get().map_err(|e| format!("DPoP proof key: {e}"))?;
                let mut doc = json_doc(token);
                doc["dpop"] = serde_json::json!({
                    "alg": key.key.alg().name(),
                    "jkt": key.jkt,
                    "jwk": key.key.public_jwk(),
                    "private_key": key.pem.expose(),
                });
                let mut s = doc.to_string();
                s.push('\n');
                Secret::new(s)
            }
        })
    }
}

/// `raw`: the token alone, no trailing newline.
pub fn raw(token: &Token) -> Secret {
    Secret::new(token.access_token.expose())
}

fn json_doc(token: &Token) -> serde_json::Value {
    serde_json::json!({
        "access_token": token.access_token.expose(),
        "token_type": token.token_type,
        "expires_at": rfc3339(token.expires_at),
        "issued_at": rfc3339(token.issued_at),
    })
}

/// `json`: one object and a newline.
pub fn json(token: &Token) -> Secret {
    let mut s = json_doc(token).to_string();
    s.push('\n');
    Secret::new(s)
}

/// `env`: shell-sourceable lines.
pub fn env(token: &Token) -> Secret {
    Secret::new(format!(
        "ACCESS_TOKEN={}\nTOKEN_TYPE={}\nTOKEN_EXPIRES_AT={}\n",
        shell_quote(token.access_token.expose()),
        shell_quote(&token.token_type),
        shell_quote(&rfc3339(token.expires_at)),
    ))
}

/// `header`: `Authorization: <type> <token>` and `extra_headers`.
pub fn header(token: &Token, extra_headers: &[(String, String)]) -> Secret {
    let mut s = format!(
        "Authorization: {} {}\n",
        token.token_type,
        token.access_token.expose()
    );
    for (name, value) in extra_headers {
        s.push_str(&format!("{name}: {value}\n"));
    }
    Secret::new(s)
}

/// Single-quoted for POSIX shells; a `'` inside becomes `'\''`.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(Field),
}

/// `{{ field }}` placeholders in literal text; nothing else is special.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
}

impl Template {
    /// Parses `text`; an unknown field or an unclosed `{{` is an error.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                pieces.push(Piece::Text(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| "a `{{` is never closed with `}}`".to_string())?;
            let name = after[..end].trim();
            let Some(&(_, field)) = FIELDS.iter().find(|(n, _)| *n == name) else {
                let known: Vec<&str> = FIELDS.iter().map(|(n, _)| *n).collect();
                return Err(format!(
                    "unknown template field `{name}` (known: {})",
                    known.join(", ")
                ));
            };
            pieces.push(Piece::Field(field));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        Ok(Template { pieces })
    }

    fn render(&self, token: &Token) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Field(f) => match f {
                    Field::AccessToken => out.push_str(token.access_token.expose()),
                    Field::TokenType => out.push_str(&token.token_type),
                    Field::ExpiresAt => out.push_str(&rfc3339(token.expires_at)),
                    Field::IssuedAt => out.push_str(&rfc3339(token.issued_at)),
                    Field::ExpiresAtUnix => {
                        out.push_str(&unix_seconds(token.expires_at).to_string())
                    }
                    Field::IssuedAtUnix => out.push_str(&unix_seconds(token.issued_at).to_string()),
                },
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn token() -> Token {
        let issued = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        Token {
            access_token: Secret::new("eyJ.abc'd.sig"),
            token_type: "Bearer".into(),
            issued_at: issued,
            expires_at: issued + Duration::from_secs(3600),
            refresh_token: None,
        }
    }

    fn check(format: Format, expected: &str) {
        assert_eq!(format.render(&token()).unwrap().expose(), expected);
    }

    #[test]
    fn dpop_is_json_with_the_proof_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = Arc::new(DpopKey::new(dir.path().join("k.pem"), true));
        let text = Format::Dpop(key.clone()).render(&token()).unwrap();
        let doc: serde_json::Value = serde_json::from_str(text.expose()).unwrap();
        assert_eq!(doc["access_token"], "eyJ.abc'd.sig");
        let made = key.get().unwrap();
        assert_eq!(doc["dpop"]["jkt"], made.jkt.as_str());
        assert_eq!(doc["dpop"]["alg"], "ES256");
        assert_eq!(doc["dpop"]["private_key"], made.pem.expose());
        assert!(doc["dpop"]["jwk"].get("d").is_none());
        // a configured key that is not there: an error, never a file without the key
        let gone = Format::Dpop(Arc::new(DpopKey::new(dir.path().join("none.pem"), false)));
        assert!(gone.render(&token()).unwrap_err().contains("none.pem"));
    }

    #[test]
    fn every_format() {
        check(Format::Raw, "eyJ.abc'd.sig");
        check(
            Format::Json,
            "{\"access_token\":\"eyJ.abc'd.sig\",\"expires_at\":\"2027-01-15T09:00:00Z\",\"issued_at\":\"2027-01-15T08:00:00Z\",\"token_type\":\"Bearer\"}\n",
        );
        check(
            Format::Env,
            "ACCESS_TOKEN='eyJ.abc'\\''d.sig'\nTOKEN_TYPE='Bearer'\nTOKEN_EXPIRES_AT='2027-01-15T09:00:00Z'\n",
        );
        check(
            Format::Header {
                extra_headers: vec![("X-Tenant-ID".into(), "t-1".into())],
            },
            "Authorization: Bearer eyJ.abc'd.sig\nX-Tenant-ID: t-1\n",
        );
        check(
            Format::Template(
                Template::parse(
                    "machine api login x password {{ access_token }} # {{expires_at_unix}}\n",
                )
                .unwrap(),
            ),
            "machine api login x password eyJ.abc'd.sig # 1800003600\n",
        );
    }

    #[test]
    fn templates_reject_unknown_fields_and_unclosed_braces() {
        assert!(
            Template::parse("{{ acess_token }}")
                .unwrap_err()
                .contains("unknown template field `acess_token`")
        );
        assert!(
            Template::parse("x {{ access_token")
                .unwrap_err()
                .contains("never closed")
        );
        assert_eq!(
            Template::parse("plain").unwrap().pieces,
            vec![Piece::Text("plain".into())]
        );
    }
}
