//! The token-response parser over arbitrary answers. Input: two bytes of
//! status, one byte choosing the content type, the field mapping (standard or
//! JTL-style `authToken`/`tokenExpireAt`) and the Retry-After header, then the
//! body. Never a panic; a token only when it is usable; on a 2xx answer, an
//! error never shows the access token it refused (judged against the same
//! answer with a token of `~`s, which no message contains, so a token that is
//! part of the fixed wording is no finding).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::time::{Duration, UNIX_EPOCH};
use tokenkeeper::internals::ResponseMapping;
use tokenkeeper::internals::{HttpAnswer, ParseContext, parse_answer};
use tokenkeeper::internals::Redactor;

fuzz_target!(|data: &[u8]| {
    let [a, b, flags, body @ ..] = data else {
        return;
    };
    let status = 100 + u16::from_le_bytes([*a, *b]) % 500;
    let mapping = if flags & 1 == 0 {
        ResponseMapping::default()
    } else {
        ResponseMapping {
            access_token: "/authToken".into(),
            expires_in: "/data/expires_in".into(),
            expires_at: "/tokenExpireAt".into(),
            refresh_token: "/refreshToken".into(),
            token_type: "/type".into(),
        }
    };
    let content_type = [
        Some("application/json"),
        Some("text/html; charset=utf-8"),
        None,
        Some("application/x-www-form-urlencoded"),
    ][usize::from(flags >> 1 & 3)];
    let retry_after = [
        None,
        Some("7"),
        Some("Wed, 21 Oct 2015 07:28:00 GMT"),
        Some("soon"),
    ][usize::from(flags >> 3 & 3)];
    let redactor = Redactor::new();
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let cx = ParseContext {
        endpoint: "https://auth.example.com/token",
        mapping: &mapping,
        default_lifetime: Duration::from_secs(3600),
        now,
        redactor: &redactor,
    };
    let answer = HttpAnswer {
        status,
        content_type,
        retry_after,
        location: Some("https://elsewhere.example.com/"),
        body,
    };
    match parse_answer(&answer, &cx) {
        Ok(token) => {
            let value = token.access_token.expose();
            assert!(!value.is_empty());
            assert!(
                value.bytes().all(|b| (0x21..=0x7e).contains(&b)),
                "unusable token accepted"
            );
            assert!(token.expires_at >= token.issued_at);
            assert!(!token.token_type.is_empty());
            assert!(!token.token_type.contains(char::is_whitespace));
        }
        Err(e) if (200..300).contains(&status) => {
            // shown = the token occurs in the message more often than when
            // the same answer carries a token that cannot be in any message
            // (a token like "expires_a" is part of the fixed wording)
            let Ok(mut json) = serde_json::from_slice::<serde_json::Value>(body) else {
                return;
            };
            let Some(slot) = json.pointer_mut(&mapping.access_token) else {
                return;
            };
            let Some(refused) = slot.as_str().map(|t| t.trim().to_string()) else {
                return;
            };
            if refused.len() < 8 {
                return;
            }
            *slot = "~".repeat(refused.chars().count()).into();
            let other = serde_json::to_vec(&json).unwrap_or_default();
            let baseline = parse_answer(
                &HttpAnswer {
                    body: &other,
                    ..answer
                },
                &cx,
            )
            .err()
            .map_or(0, |e| e.message.matches(refused.as_str()).count());
            assert!(
                e.message.matches(refused.as_str()).count() <= baseline,
                "the refused token shown in: {}",
                e.message
            );
        }
        Err(_) => {}
    }
});
