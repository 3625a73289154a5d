//! Secret newtype: the only way a secret or token is held in memory.
//!
//! `Debug` and `Display` print `[redacted]`; the value is reachable only
//! through [`Secret::expose`], so a stray `{:?}` in a log line cannot leak it.

use secrecy::{ExposeSecret, SecretString};
use std::fmt;

#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(SecretString::from(value.into()))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    pub fn is_empty(&self) -> bool {
        self.expose().is_empty()
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        self.expose() == other.expose()
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Scrubs known secret values out of text that came from elsewhere (an
/// upstream's error page, a library's error message) before it is logged.
#[derive(Default)]
pub struct Redactor<'a> {
    secrets: Vec<&'a str>,
}

impl<'a> Redactor<'a> {
    pub fn new() -> Redactor<'a> {
        Redactor::default()
    }

    pub fn with(mut self, secret: Option<&'a Secret>) -> Redactor<'a> {
        if let Some(secret) = secret {
            // very short values would redact ordinary words; they are not
            // realistic secrets and are left alone
            if secret.expose().len() >= 4 {
                self.secrets.push(secret.expose());
            }
        }
        self
    }

    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in &self.secrets {
            if out.contains(secret) {
                out = out.replace(secret, "[redacted]");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("hunter2-very-secret");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{s}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some([redacted])");
        assert_eq!(s.expose(), "hunter2-very-secret");
    }

    #[test]
    fn redactor_scrubs_every_occurrence() {
        let a = Secret::new("s3cr3t-value");
        let r = Redactor::new().with(Some(&a)).with(None);
        assert_eq!(
            r.scrub("bad secret s3cr3t-value (s3cr3t-value)"),
            "bad secret [redacted] ([redacted])"
        );
    }
}
