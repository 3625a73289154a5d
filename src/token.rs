//! The token as tokenkeeper holds it after a successful fetch.

use crate::secret::Secret;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

#[derive(Clone, Debug, PartialEq)]
pub struct Token {
    pub access_token: Secret,
    /// The HTTP authorization scheme, `Bearer` unless the endpoint says otherwise.
    pub token_type: String,
    pub issued_at: SystemTime,
    pub expires_at: SystemTime,
    /// A refresh token that came with this access token, if any.
    pub refresh_token: Option<Secret>,
}

impl Token {
    pub fn lifetime(&self) -> Duration {
        self.expires_at
            .duration_since(self.issued_at)
            .unwrap_or(Duration::ZERO)
    }

    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.expires_at
            .duration_since(now)
            .unwrap_or(Duration::ZERO)
    }

    pub fn is_expired(&self, now: SystemTime) -> bool {
        now >= self.expires_at
    }

    /// Why this token, just received, must not replace the current one: it
    /// has already expired (`expires_in: 0`, an `expires_at` or JWT `exp`
    /// in the past), or has no more than `min_valid` left. `None` when it
    /// is good to use.
    pub fn unusable(&self, now: SystemTime, min_valid: Duration) -> Option<String> {
        let left = self.remaining(now);
        if left.is_zero() {
            Some(format!(
                "the endpoint answered with a token that has already expired (expires_at {})",
                rfc3339(self.expires_at)
            ))
        } else if left <= min_valid {
            Some(format!(
                "the endpoint answered with a token valid for {} only, not more than min_valid ({})",
                humantime::format_duration(Duration::from_secs(left.as_secs())),
                humantime::format_duration(min_valid)
            ))
        } else {
            None
        }
    }
}

/// RFC 3339 in UTC with second precision, e.g. `2026-11-23T10:15:00Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = unix_seconds(t);
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|dt| dt.format(&Rfc3339).ok())
        .unwrap_or_else(|| secs.to_string())
}

pub fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

pub fn unix_millis(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

pub fn from_unix_millis(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_is_utc_with_seconds() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_000_000_900);
        assert_eq!(rfc3339(t), "2026-11-18T11:06:40Z");
        assert_eq!(from_unix_millis(unix_millis(t)), t);
    }
}
