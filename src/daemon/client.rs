//! The refresh loop of one client:
//! `loop { sleep until the refresh point; fetch; on success persist, publish
//! and plan the next refresh; on failure keep the current token and back off }`.
//!
//! Time comes from the injected [`Clock`] and tokio's timers only, so the
//! whole loop runs under paused time in tests.

use crate::clock::Clock;
use crate::config::ClientSpec;
use crate::grant::{FetchError, GrantSpec, Reason, TokenSource};
use crate::schedule::{self, RefreshBasis};
use crate::secret::Secret;
use crate::state::{ChainLock, Resume, StateStore};
use crate::telemetry::metrics::ClientMetrics;
use crate::telemetry::status::StatusBoard;
use crate::token::{Token, rfc3339, unix_seconds};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// An explicit ask for a new token (SIGUSR1, `tokenkeeper refresh`) is
/// honoured at once — a consumer that was just refused wants a new token
/// now, whatever `min_interval` says — but never sooner than this (or
/// `min_interval`, if shorter) after the last attempt: a storm of asks is
/// one request a second, whether the endpoint answers or fails.
pub const EXPLICIT_FLOOR: Duration = Duration::from_secs(1);

/// Longest single sleep, a backstop: a wall-clock jump or a suspended
/// machine wakes every task at once (`wall_moved`), so an idle client's
/// task is not woken before its refresh is due.
const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// A source of jitter samples in [0, 1).
pub type Jitter = Arc<dyn Fn() -> f64 + Send + Sync>;

/// A jitter sample in [0, 1): the one source of randomness for timing.
#[allow(clippy::disallowed_methods, reason = "the one source of timing jitter")]
pub fn jitter_sample() -> f64 {
    rand::random::<f64>()
}

pub fn random_jitter() -> Jitter {
    Arc::new(jitter_sample)
}

pub struct ClientTask<S: TokenSource> {
    pub spec: Arc<ClientSpec>,
    pub source: Arc<S>,
    pub clock: Arc<dyn Clock>,
    pub jitter: Jitter,
    pub state: Option<StateStore>,
    pub board: Arc<StatusBoard>,
    /// This client's Prometheus series.
    pub metrics: Arc<ClientMetrics>,
    /// The newest valid token, for the output workers.
    pub publish: watch::Sender<Option<Arc<Token>>>,
    /// Bumped to refresh every client now (SIGUSR1).
    pub refresh_now: watch::Receiver<u64>,
    /// Bumped when the wall clock moved other than with the monotonic one
    /// (a jump, a suspended machine): the task reads the clock again.
    pub wall_moved: watch::Receiver<u64>,
    /// Notified when someone asks this client alone for a new token
    /// (`tokenkeeper refresh`; the ask itself is `Asks::pending` on the board).
    pub ask: Arc<tokio::sync::Notify>,
    pub cancel: CancellationToken,
    /// Refreshes in flight across all clients: a client waits for a slot
    /// before it builds its (large) request, so thousands of clients due at
    /// once queue cheaply.
    pub slots: Arc<crate::limiter::Limiter>,
}

/// Refreshes in flight at once, across every client of a daemon; a refresh
/// is in flight from its request until its token is saved.
pub const REFRESH_SLOTS: usize = 64;
/// Of them, at most this many for one host: the clients of a hung endpoint
/// hold these, and every other endpoint's clients have the rest.
pub const REFRESH_SLOTS_PER_HOST: usize = 16;

/// The status message of a client whose newest refresh token is only in memory.
const UNSAVED: &str = "cannot save the rotated refresh token to state_dir; it is kept in memory and saved before the next refresh, which waits until it is";

/// A client task's view of its chain, lent to one refresh.
struct Chain<'a> {
    refresh_token: &'a mut Option<Secret>,
    /// Issue time of the newest token this task knows.
    known_issue: &'a mut Option<SystemTime>,
    unsaved: &'a mut Option<Token>,
    asked_at: Option<SystemTime>,
}

/// What one refresh of a chain came to.
enum Pass {
    /// Cancelled before anything was sent.
    Cancelled,
    /// Another process refreshed the chain meanwhile; its token is fresh.
    Adopted(Token),
    Fetched(Result<Token, FetchError>),
}

/// Saves `token` for `spec` under `lock`.
pub fn save(lock: &mut ChainLock, spec: &ClientSpec, token: &Token) -> std::io::Result<()> {
    lock.save(
        &spec.request.fingerprint(),
        spec.request.refresh_seed().as_deref(),
        token,
    )
}

/// How a client task starts.
pub struct Start {
    /// What the state directory had: a still-valid token (published at
    /// once) and the newest refresh token.
    pub resume: Resume,
    /// Fetch at once even with a cached token (the client's config changed).
    pub force: bool,
}

/// What `spec` may resume from the state directory.
pub fn resume(state: Option<&StateStore>, spec: &ClientSpec, now: SystemTime) -> Resume {
    let Some(state) = state else {
        return Resume::default();
    };
    state
        .resume(&spec.request, &spec.name, now)
        .unwrap_or_else(|e| {
            tracing::warn!(client = %spec.name, error = %e, "ignoring unreadable cached token");
            Resume::default()
        })
}

impl<S: TokenSource> ClientTask<S> {
    /// The task. A cached token is published before the future is built, so
    /// the future carries none of `start`; and `run` is not an `async fn`,
    /// whose arguments the future would hold twice (rust-lang/rust#62958):
    /// with thousands of clients, every byte of an idle task counts.
    pub fn run(mut self, start: Start) -> impl Future<Output = ()> {
        let name = self.spec.name.clone();
        let mut current: Option<Arc<Token>> = None;
        let mut refresh_token: Option<Secret> = start.resume.refresh_token;
        let mut known_issue = start.resume.issued_at;
        let mut next = self.clock.now();
        if let Some(token) = start.resume.token {
            let token = Arc::new(token);
            if start.force {
                self.published(&token, next);
            } else {
                next = self.adopt(&token, "using the cached token");
            }
            current = Some(token);
        }

        // asked for a fresh token at this time (SIGUSR1, `refresh`, a
        // changed config): a token another process wrote before it does not
        // answer the ask. (An ask the task this one replaces had not answered
        // yet is this one's to answer.)
        let asked = self
            .board
            .read(|c| c.get(&*name).is_some_and(|s| s.asks.pending));
        let mut asked_at = (start.force || asked).then(|| self.clock.now());
        if asked {
            next = self.clock.now();
        }
        // when the last request was sent: an ask is answered no sooner than
        // EXPLICIT_FLOOR after it
        let mut last_attempt = current.as_ref().map(|t| t.issued_at);
        // a token whose state could not be saved: saved before anything else
        let mut unsaved: Option<Token> = None;
        let mut failures: u32 = 0;
        let mut warned_basis = false;
        let (mut refresh_open, mut wall_open) = (true, true);
        async move {
            loop {
                // sleep until `next`, a forced refresh, or shutdown
                loop {
                    let now = self.clock.now();
                    let Ok(wait) = next.duration_since(now) else {
                        break;
                    };
                    if wait.is_zero() {
                        break;
                    }
                    tokio::select! {
                        _ = self.cancel.cancelled() => {
                            if unsaved.is_some() {
                                tracing::error!(client = %name, "stopping with a rotated refresh token that could not be saved to state_dir: the chain is lost at the next start");
                            }
                            return;
                        }
                        changed = self.refresh_now.changed(), if refresh_open => match changed {
                            Ok(()) => {
                                next = self.asked(last_attempt, next);
                                asked_at = Some(self.clock.now());
                            }
                            Err(_) => refresh_open = false,
                        },
                        _ = self.ask.notified() => {
                            // (a wake left over from an ask an earlier pass answered is not one)
                            if self.board.read(|c| c.get(&*name).is_some_and(|s| s.asks.pending)) {
                                next = self.asked(last_attempt, next);
                                asked_at = Some(self.clock.now());
                            }
                        }
                        changed = self.wall_moved.changed(), if wall_open => {
                            if changed.is_err() {
                                wall_open = false;
                            }
                        }
                        _ = tokio::time::sleep(wait.min(MAX_SLEEP)) => {}
                    }
                }

                let host = crate::limiter::host_of(&self.spec.request.endpoint);
                let _slot = tokio::select! {
                    _ = self.cancel.cancelled() => return,
                    slot = self.slots.acquire(&host) => match slot {
                        Some(slot) => slot,
                        None => return,
                    },
                };
                // the slot is held until the token is saved (it drops at the
                // end of this pass): the disk is slower than a fast endpoint,
                // and a burst must not pile up thousands of unsaved tokens
                let started = self.clock.now();
                last_attempt = Some(started);
                let result = match &self.state {
                    // boxed, like every large await here: an idle task should be small
                    Some(state) if self.spec.request.grant.uses_refresh_tokens() => {
                        let chain = Chain {
                            refresh_token: &mut refresh_token,
                            known_issue: &mut known_issue,
                            unsaved: &mut unsaved,
                            asked_at: asked_at.take(),
                        };
                        match Box::pin(self.chain_pass(state, chain)).await {
                            Pass::Cancelled => return,
                            Pass::Adopted(token) => {
                                let token = Arc::new(token);
                                next = self.adopt(
                                    &token,
                                    "using the token another tokenkeeper has just written",
                                );
                                let now = self.clock.now();
                                self.board.update(&name, |s| s.asks.ended(Some(now)));
                                failures = 0;
                                current = Some(token);
                                continue;
                            }
                            // (a rotated refresh token is saved even with a
                            // token that cannot be used)
                            Pass::Fetched(result) => self.usable(result),
                        }
                    }
                    _ => {
                        asked_at = None;
                        let result = tokio::select! {
                            _ = self.cancel.cancelled() => return,
                            r = Box::pin(crate::grant::obtain(&*self.source, &self.spec.request, refresh_token.as_ref(), started)) => self.usable(r),
                        };
                        if let Ok(token) = &result {
                            // persist before publishing: a crash right after
                            // this point restarts from this token
                            Box::pin(self.persist(token)).await;
                        }
                        result
                    }
                };
                let took = self.clock.now().duration_since(started).unwrap_or_default();
                // a paused chain sent nothing
                if !result.as_ref().is_err_and(|e| e.reason == Reason::State) {
                    self.metrics.request(took);
                }
                match result {
                    Ok(token) => {
                        // (while a save is pending, the next pass takes the
                        // refresh token from the state once it is saved)
                        refresh_token = token.refresh_token.clone();
                        known_issue = Some(token.issued_at);
                        let received = self.clock.now();
                        let token = Arc::new(token);
                        self.record_token(&token);
                        self.metrics.success(token.issued_at);
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
                                RefreshBasis::MinInterval => {
                                    "refreshing no sooner than min_interval after issue"
                                }
                                _ => {
                                    "refresh_before exceeds the lifetime; refreshing by refresh_ratio"
                                }
                            };
                            tracing::warn!(client = %name, lifetime_s = lifetime.as_secs(), "short token lifetime: {why}");
                        }
                        self.board.update(&name, |s| {
                            s.last_refresh = Some(unix_seconds(token.issued_at));
                            s.expires_at = Some(unix_seconds(token.expires_at));
                            s.next_refresh = Some(unix_seconds(next));
                            s.consecutive_failures = 0;
                            s.last_error = unsaved.is_some().then(|| UNSAVED.to_string());
                            s.needs_attention = unsaved.is_some();
                            s.asks.ended(Some(received));
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
                        self.metrics
                            .failure(error.reason, failures, error.needs_attention());
                        self.report_failure(&error, failures, delay, current.as_deref());
                        self.board.update(&name, |s| {
                            s.consecutive_failures = failures;
                            s.last_error = Some(error.message.clone());
                            s.needs_attention = error.needs_attention();
                            s.next_refresh = Some(unix_seconds(next));
                            s.asks.ended(None);
                        });
                    }
                }
            }
        }
    }

    /// When to refresh after an explicit ask, given the refresh due at
    /// `next`: now, but no sooner than [`EXPLICIT_FLOOR`] after the last
    /// attempt.
    fn asked(&self, last_attempt: Option<SystemTime>, next: SystemTime) -> SystemTime {
        let now = self.clock.now();
        let gap = EXPLICIT_FLOOR.min(self.spec.policy.min_interval);
        let floor = last_attempt.map(|t| t + gap);
        tracing::info!(client = %self.spec.name, "refresh requested");
        floor.map_or(now, |f| f.max(now)).min(next)
    }

    /// A token already expired, or with no more than `min_valid` left, is a
    /// failed refresh: the current token stays and the endpoint is asked
    /// again with backoff.
    fn usable(&self, result: Result<Token, FetchError>) -> Result<Token, FetchError> {
        let token = result?;
        match token.unusable(self.clock.now(), self.spec.policy.min_valid) {
            Some(why) => Err(FetchError::transient(Reason::BadResponse, why)),
            None => Ok(token),
        }
    }

    fn record_token(&self, token: &Token) {
        self.metrics.token(token.expires_at, token.lifetime());
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

    /// Uses a token this task did not fetch (cached, or written by another
    /// process): plans its refresh, says `why`, publishes it; returns when
    /// it is due.
    fn adopt(&self, token: &Arc<Token>, why: &str) -> SystemTime {
        let next = self.plan(token).at;
        tracing::info!(
            client = %self.spec.name,
            expires_at = %rfc3339(token.expires_at),
            next_refresh_in_s = next.duration_since(self.clock.now()).unwrap_or_default().as_secs(),
            "{why}"
        );
        self.published(token, next);
        next
    }

    /// Publishes a token this task did not fetch, due again at `next`.
    fn published(&self, token: &Arc<Token>, next: SystemTime) {
        self.record_token(token);
        let _ = self.publish.send(Some(token.clone()));
        self.board.update(&self.spec.name, |s| {
            s.last_refresh = Some(unix_seconds(token.issued_at));
            s.expires_at = Some(unix_seconds(token.expires_at));
            s.next_refresh = Some(unix_seconds(next));
            s.consecutive_failures = 0;
            s.last_error = None;
            s.needs_attention = false;
        });
    }

    /// One refresh of a refresh-token chain, under the chain's lock from
    /// reading the state until the answer is durable; whoever else refreshes
    /// it (`once`, `token`, another daemon) waits meanwhile, and so does this
    /// task for them. Once the request is sent, cancellation (shutdown, a
    /// reload) does not abandon it: the rotation the server makes is saved.
    /// Bounded by the client's `timeout`, for the lock and for the request.
    async fn chain_pass(&self, state: &StateStore, chain: Chain<'_>) -> Pass {
        let paused = |e: std::io::Error| {
            Pass::Fetched(Err(FetchError::transient(
                Reason::State,
                format!(
                    "state_dir: {e}; not refreshing until the state can be saved, since the answer rotates the refresh token"
                ),
            )))
        };
        // under the lock, in the hop that takes it: a token left unsaved
        // first, then what the state says now, and room for the answer
        // (a copy of the unsaved token: the original stays if the lock is not had)
        let (spec, unsaved, now) = (self.spec.clone(), chain.unsaved.clone(), self.clock.now());
        let first = move |lock: &mut ChainLock| {
            let checked = (|| {
                if let Some(token) = &unsaved {
                    save(lock, &spec, token)?;
                }
                let resume = crate::state::resume_from(lock.load()?, &spec.request, now);
                lock.prepare()?;
                Ok::<_, std::io::Error>(resume)
            })();
            let unsaved = if checked.is_err() { unsaved } else { None };
            (checked, unsaved)
        };
        let locked = tokio::select! {
            _ = self.cancel.cancelled() => return Pass::Cancelled,
            locked = state.lock_and(&self.spec.name, self.spec.request.timeout, first) => locked,
        };
        let (mut lock, resume) = match locked {
            Ok((lock, (checked, unsaved))) => {
                *chain.unsaved = unsaved;
                match checked {
                    Ok(resume) => (lock, resume),
                    Err(e) => return paused(e),
                }
            }
            Err(e) => return paused(e),
        };
        if resume.issued_at.is_some() {
            // the state is the chain's truth: another process may have moved it on
            *chain.refresh_token = resume.refresh_token.clone();
        }
        if resume.issued_at > *chain.known_issue {
            *chain.known_issue = resume.issued_at;
            if let Some(token) = resume.token {
                let fresh = self.plan(&token).at > now;
                if fresh && chain.asked_at.is_none_or(|asked| asked <= token.issued_at) {
                    return Pass::Adopted(token);
                }
            }
        }
        // the request: not raced against cancellation
        let result = Box::pin(crate::grant::obtain(
            &*self.source,
            &self.spec.request,
            chain.refresh_token.as_ref(),
            now,
        ))
        .await;
        if let Ok(token) = &result {
            let (spec, copy) = (self.spec.clone(), token.clone());
            let saved = tokio::task::spawn_blocking(move || save(&mut lock, &spec, &copy))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            if let Err(e) = saved {
                tracing::error!(client = %self.spec.name, error = %e, "{UNSAVED}");
                *chain.unsaved = Some(token.clone());
            }
        }
        Pass::Fetched(result)
    }

    /// Saves a token of a client without a chain (a failure costs only a
    /// request at the next start), under the lock so that two writers never
    /// write the same slot.
    async fn persist(&self, token: &Token) {
        let Some(state) = self.state.clone() else {
            return;
        };
        let saved = match state.lock(&self.spec.name, self.spec.request.timeout).await {
            Ok(mut lock) => {
                let (spec, token) = (self.spec.clone(), token.clone());
                tokio::task::spawn_blocking(move || save(&mut lock, &spec, &token))
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            }
            Err(e) => Err(e),
        };
        if let Err(e) = saved {
            tracing::error!(client = %self.spec.name, error = %e, "cannot save the token to state_dir");
        }
    }

    fn report_failure(
        &self,
        error: &FetchError,
        failures: u32,
        delay: Duration,
        current: Option<&Token>,
    ) {
        let name = &self.spec.name;
        let retry_in_s = delay.as_secs_f64();
        let now = self.clock.now();
        let token_state = match current {
            Some(t) if !t.is_expired(now) => format!(
                "current token stays in place until {}",
                rfc3339(t.expires_at)
            ),
            Some(t) => format!(
                "NO VALID TOKEN: the last one expired at {}",
                rfc3339(t.expires_at)
            ),
            None => "no token yet".to_string(),
        };
        let hint = match (&self.spec.request.grant, error.oauth_error.as_deref()) {
            (GrantSpec::RefreshToken { .. }, Some("invalid_grant")) => {
                "; put a new refresh token in refresh_token_file and reload (SIGHUP)"
            }
            _ => "",
        };
        if error.reason == Reason::State {
            tracing::error!(
                client = %name, reason = error.reason.as_str(), failures, retry_in_s,
                "needs attention: {error}; {token_state}"
            );
        } else if error.is_permanent() {
            tracing::error!(
                client = %name, reason = error.reason.as_str(), failures, retry_in_s,
                "token request refused, needs attention: {error}; {token_state}{hint}"
            );
        } else {
            tracing::warn!(
                client = %name, reason = error.reason.as_str(), failures, retry_in_s,
                "token request failed: {error}; {token_state}"
            );
        }
    }
}

#[cfg(test)]
mod tests;
