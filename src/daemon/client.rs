//! The refresh loop of one client:
//! `loop { sleep until the refresh point; fetch; on success persist, publish
//! and plan the next refresh; on failure keep the current token and back off }`.
//!
//! Time comes from the injected [`Clock`] and tokio's timers only, so the
//! whole loop runs under paused time in tests.

use crate::clock::Clock;
use crate::config::ClientSpec;
use crate::grant::{FetchError, TokenSource};
use crate::schedule::{self, RefreshBasis};
use crate::state::StateStore;
use crate::telemetry::status::StatusBoard;
use crate::token::{Token, rfc3339, unix_seconds};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Longest single sleep; the loop re-reads the clock after it, so a suspended
/// machine or a wall-clock jump delays a refresh by at most this.
const MAX_SLEEP: Duration = Duration::from_secs(30);

/// A source of jitter samples in [0, 1).
pub type Jitter = Arc<dyn Fn() -> f64 + Send + Sync>;

pub fn random_jitter() -> Jitter {
    Arc::new(rand::random::<f64>)
}

pub struct ClientTask<S: TokenSource> {
    pub spec: Arc<ClientSpec>,
    pub source: Arc<S>,
    pub clock: Arc<dyn Clock>,
    pub jitter: Jitter,
    pub state: Option<StateStore>,
    pub board: Arc<StatusBoard>,
    /// The newest valid token, for the output workers.
    pub publish: watch::Sender<Option<Arc<Token>>>,
    /// Bumped to refresh every client now (SIGUSR1).
    pub refresh_now: watch::Receiver<u64>,
    pub cancel: CancellationToken,
}

/// How a client task starts.
pub struct Start {
    /// A still-valid token from the state directory, published at once.
    pub cached: Option<Token>,
    /// Fetch at once even with a cached token (the client's config changed).
    pub force: bool,
}

/// The cached token of `spec`, if it is from the same request and not expired.
pub fn usable_cache(state: Option<&StateStore>, spec: &ClientSpec, now: SystemTime) -> Option<Token> {
    let cached = match state?.load(&spec.name) {
        Ok(c) => c?,
        Err(e) => {
            tracing::warn!(client = %spec.name, error = %e, "ignoring unreadable cached token");
            return None;
        }
    };
    if cached.fingerprint != spec.request.fingerprint() || cached.token.is_expired(now) {
        return None;
    }
    Some(cached.token)
}

impl<S: TokenSource> ClientTask<S> {
    pub async fn run(mut self, start: Start) {
        let name = self.spec.name.clone();
        let mut current: Option<Arc<Token>> = None;
        let mut next = self.clock.now();
        if let Some(token) = start.cached {
            let token = Arc::new(token);
            if !start.force {
                next = self.plan(&token).at;
                tracing::info!(
                    client = %name,
                    expires_at = %rfc3339(token.expires_at),
                    next_refresh_in_s = next.duration_since(self.clock.now()).unwrap_or_default().as_secs(),
                    "using the cached token"
                );
            }
            self.board.update(&name, |s| {
                s.expires_at = Some(unix_seconds(token.expires_at));
                s.last_refresh = Some(unix_seconds(token.issued_at));
                s.next_refresh = Some(unix_seconds(next));
            });
            let _ = self.publish.send(Some(token.clone()));
            current = Some(token);
        }

        let mut failures: u32 = 0;
        let mut warned_basis = false;
        let mut refresh_open = true;
        loop {
            // sleep until `next`, a forced refresh, or shutdown
            loop {
                let now = self.clock.now();
                let Ok(wait) = next.duration_since(now) else { break };
                if wait.is_zero() {
                    break;
                }
                tokio::select! {
                    _ = self.cancel.cancelled() => return,
                    changed = self.refresh_now.changed(), if refresh_open => match changed {
                        Ok(()) => {
                            tracing::info!(client = %name, "refresh requested");
                            next = self.clock.now();
                        }
                        Err(_) => refresh_open = false,
                    },
                    _ = tokio::time::sleep(wait.min(MAX_SLEEP)) => {}
                }
            }

            let started = self.clock.now();
            let refresh_token = current.as_ref().and_then(|t| t.refresh_token.clone());
            let result = tokio::select! {
                _ = self.cancel.cancelled() => return,
                r = self.source.fetch(&self.spec.request, refresh_token.as_ref(), started) => r,
            };
            let took = self.clock.now().duration_since(started).unwrap_or_default();
            match result {
                Ok(mut token) => {
                    if token.refresh_token.is_none() {
                        token.refresh_token = refresh_token;
                    }
                    // persist before publishing: a rotated refresh token must
                    // survive a crash right after this point
                    self.persist(&token).await;
                    let token = Arc::new(token);
                    let _ = self.publish.send(Some(token.clone()));
                    failures = 0;
                    let plan = self.plan(&token);
                    next = plan.at;
                    let lifetime = token.lifetime();
                    tracing::info!(
                        client = %name,
                        expires_at = %rfc3339(token.expires_at),
                        lifetime_s = lifetime.as_secs(),
                        next_refresh_in_s = next.duration_since(self.clock.now()).unwrap_or_default().as_secs(),
                        duration_ms = took.as_millis() as u64,
                        "token refreshed"
                    );
                    if plan.basis != RefreshBasis::Policy && !warned_basis {
                        warned_basis = true;
                        let why = match plan.basis {
                            RefreshBasis::MinInterval => "refreshing no sooner than min_interval after issue",
                            _ => "refresh_before exceeds the lifetime; refreshing by refresh_ratio",
                        };
                        tracing::warn!(client = %name, lifetime_s = lifetime.as_secs(), "short token lifetime: {why}");
                    }
                    self.board.update(&name, |s| {
                        s.last_refresh = Some(unix_seconds(token.issued_at));
                        s.expires_at = Some(unix_seconds(token.expires_at));
                        s.next_refresh = Some(unix_seconds(next));
                        s.consecutive_failures = 0;
                        s.last_error = None;
                        s.needs_attention = false;
                    });
                    current = Some(token);
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let delay = schedule::retry_delay(
                        failures,
                        error.class,
                        error.retry_after,
                        &self.spec.policy,
                        (self.jitter)(),
                    );
                    next = self.clock.now() + delay;
                    self.report_failure(&error, failures, delay, current.as_deref());
                    self.board.update(&name, |s| {
                        s.consecutive_failures = failures;
                        s.last_error = Some(error.message.clone());
                        s.needs_attention = error.is_permanent();
                        s.next_refresh = Some(unix_seconds(next));
                    });
                }
            }
        }
    }

    fn plan(&self, token: &Token) -> schedule::RefreshPlan {
        schedule::refresh_at(
            token.issued_at,
            token.expires_at,
            self.clock.now(),
            &self.spec.policy,
            (self.jitter)(),
        )
    }

    async fn persist(&self, token: &Token) {
        let Some(state) = self.state.clone() else { return };
        let (name, fingerprint, token) = (self.spec.name.clone(), self.spec.request.fingerprint(), token.clone());
        let result = tokio::task::spawn_blocking(move || state.save(&name, &fingerprint, &token)).await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(client = %self.spec.name, error = %e, "cannot save the token to state_dir"),
            Err(e) => tracing::error!(client = %self.spec.name, error = %e, "saving the token to state_dir failed"),
        }
    }

    fn report_failure(&self, error: &FetchError, failures: u32, delay: Duration, current: Option<&Token>) {
        let name = &self.spec.name;
        let retry_in_s = delay.as_secs_f64();
        let now = self.clock.now();
        let token_state = match current {
            Some(t) if !t.is_expired(now) => format!("current token stays in place until {}", rfc3339(t.expires_at)),
            Some(t) => format!("NO VALID TOKEN: the last one expired at {}", rfc3339(t.expires_at)),
            None => "no token yet".to_string(),
        };
        if error.is_permanent() {
            tracing::error!(
                client = %name, reason = error.reason.as_str(), failures, retry_in_s,
                "token request refused, needs attention: {error}; {token_state}"
            );
        } else {
            tracing::warn!(
                client = %name, reason = error.reason.as_str(), failures, retry_in_s,
                "token request failed: {error}; {token_state}"
            );
        }
    }
}
