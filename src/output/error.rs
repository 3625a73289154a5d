//! Why an output was not written: a closed set of reasons (the `reason`
//! label of `tokenkeeper_output_failures_total` and of the status), each
//! with a message that is safe to log.

/// A short, stable label for metrics and status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputReason {
    /// The local filesystem refused (permissions, read-only, full, a
    /// symlink or a directory in the way).
    Filesystem,
    /// The output's own credentials: a token file, an environment
    /// variable, a login the store refused, credentials that cannot sign.
    Credentials,
    /// The store did not answer (connection, TLS, timeout).
    Unreachable,
    /// The store answered with an error.
    Refused,
    /// The store's answer made no sense.
    BadAnswer,
    /// Somebody else kept changing the secret (check-and-set lost).
    Conflict,
    /// The output could not be set up (its HTTP client, its CA bundle).
    Setup,
    /// The token had less than `min_valid` left.
    Stale,
}

impl OutputReason {
    /// Every reason, in declaration order (`reason as usize` indexes it).
    pub const ALL: [OutputReason; 8] = [
        OutputReason::Filesystem,
        OutputReason::Credentials,
        OutputReason::Unreachable,
        OutputReason::Refused,
        OutputReason::BadAnswer,
        OutputReason::Conflict,
        OutputReason::Setup,
        OutputReason::Stale,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OutputReason::Filesystem => "filesystem",
            OutputReason::Credentials => "credentials",
            OutputReason::Unreachable => "unreachable",
            OutputReason::Refused => "refused",
            OutputReason::BadAnswer => "bad_answer",
            OutputReason::Conflict => "conflict",
            OutputReason::Setup => "setup",
            OutputReason::Stale => "stale",
        }
    }

    /// An error of this reason that says `message`.
    pub fn because(self, message: impl Into<String>) -> OutputError {
        OutputError {
            reason: self,
            message: message.into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct OutputError {
    pub reason: OutputReason,
    pub message: String,
}

impl From<std::io::Error> for OutputError {
    fn from(e: std::io::Error) -> OutputError {
        OutputReason::Filesystem.because(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_listed_in_order_with_a_distinct_label() {
        for (i, r) in OutputReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
            assert_eq!(
                serde_json::to_value(r).unwrap(),
                r.as_str(),
                "the status says it alike"
            );
        }
        let labels: std::collections::HashSet<&str> =
            OutputReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), OutputReason::ALL.len());
    }
}
