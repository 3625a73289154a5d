//! Why a token request failed, classified for retrying and for metrics.

use crate::schedule::FailureClass;
use std::time::Duration;

/// A short, stable label for metrics and status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The endpoint refused with an OAuth error (4xx).
    Refused,
    RateLimited,
    ServerError,
    Timeout,
    Connect,
    /// A redirect, which is not followed for a request carrying credentials.
    Redirect,
    /// 2xx, but the body is not a usable token response.
    BadResponse,
    /// The body exceeded the size cap.
    TooLarge,
    /// The access token would break a header (whitespace or control characters).
    InvalidToken,
    /// The state could not be locked, read or written, so a request that
    /// rotates a refresh-token chain was not sent (or its answer not saved).
    State,
    Other,
}

impl Reason {
    /// Every reason, in declaration order (`reason as usize` indexes it).
    pub const ALL: [Reason; 11] = [
        Reason::Refused,
        Reason::RateLimited,
        Reason::ServerError,
        Reason::Timeout,
        Reason::Connect,
        Reason::Redirect,
        Reason::BadResponse,
        Reason::TooLarge,
        Reason::InvalidToken,
        Reason::State,
        Reason::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Refused => "refused",
            Reason::RateLimited => "rate_limited",
            Reason::ServerError => "server_error",
            Reason::Timeout => "timeout",
            Reason::Connect => "connect",
            Reason::Redirect => "redirect",
            Reason::BadResponse => "bad_response",
            Reason::TooLarge => "too_large",
            Reason::InvalidToken => "invalid_token",
            Reason::State => "state",
            Reason::Other => "other",
        }
    }
}

/// A failed token request. `message` is safe to log: it never contains a
/// secret or a token.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct FetchError {
    pub class: FailureClass,
    pub reason: Reason,
    pub message: String,
    pub retry_after: Option<Duration>,
    /// The HTTP status, when there was an answer.
    pub status: Option<u16>,
    /// The endpoint's OAuth `error` code, e.g. `invalid_client`.
    pub oauth_error: Option<String>,
}

impl FetchError {
    pub fn transient(reason: Reason, message: impl Into<String>) -> FetchError {
        FetchError {
            class: FailureClass::Transient,
            reason,
            message: message.into(),
            retry_after: None,
            status: None,
            oauth_error: None,
        }
    }

    pub fn permanent(reason: Reason, message: impl Into<String>) -> FetchError {
        FetchError {
            class: FailureClass::Permanent,
            ..FetchError::transient(reason, message)
        }
    }

    pub fn is_permanent(&self) -> bool {
        self.class == FailureClass::Permanent
    }

    /// A permanent refusal, or a chain paused because its state cannot be
    /// saved: either way a person has to look.
    pub fn needs_attention(&self) -> bool {
        self.is_permanent() || self.reason == Reason::State
    }
}

#[cfg(test)]
mod tests {
    use super::Reason;

    #[test]
    fn every_reason_is_listed_at_its_own_index() {
        for (i, reason) in Reason::ALL.into_iter().enumerate() {
            assert_eq!(reason as usize, i, "{}", reason.as_str());
        }
    }
}
