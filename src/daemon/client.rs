//! The refresh loop of one client:
//! `loop { sleep until the refresh point; fetch; on success persist, publish
//! and plan the next refresh; on failure keep the current token and back off }`.
//!
//! Time comes from the injected [`Clock`] and tokio's timers only, so the
//! whole loop runs under paused time in tests.

use crate::clock::Clock;
use crate::config::ClientSpec;
use crate::grant::{FetchError, GrantSpec, TokenSource};
use crate::schedule::{self, RefreshBasis};
use crate::secret::Secret;
use crate::state::{Resume, StateStore};
use crate::telemetry::metrics::ClientMetrics;
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
    /// This client's Prometheus series.
    pub metrics: Arc<ClientMetrics>,
    /// The newest valid token, for the output workers.
    pub publish: watch::Sender<Option<Arc<Token>>>,
    /// Bumped to refresh every client now (SIGUSR1).
    pub refresh_now: watch::Receiver<u64>,
    pub cancel: CancellationToken,
    /// Refreshes in flight across all clients: a client waits for a slot
    /// before it builds its (large) request, so thousands of clients due at
    /// once queue cheaply.
    pub slots: Arc<tokio::sync::Semaphore>,
}

/// Refreshes in flight at once, across every client of a daemon; a refresh
/// is in flight from its request until its token is saved.
pub const REFRESH_SLOTS: usize = 64;

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
            self.record_token(&token);
            let _ = self.publish.send(Some(token.clone()));
            current = Some(token);
        }

        let mut failures: u32 = 0;
        let mut warned_basis = false;
        let mut refresh_open = true;
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

                // boxed, like every large await here: an idle task should be small
                if let Some((newer, issued)) = Box::pin(self.newer_refresh_token(known_issue)).await
                {
                    tracing::info!(client = %name, "using a newer refresh token from state_dir (written by another tokenkeeper command)");
                    refresh_token = Some(newer);
                    known_issue = Some(issued);
                }
                let _slot = tokio::select! {
                    _ = self.cancel.cancelled() => return,
                    slot = self.slots.clone().acquire_owned() => slot,
                };
                let started = self.clock.now();
                let result = tokio::select! {
                    _ = self.cancel.cancelled() => return,
                    // boxed: the HTTP future is large, and an idle task should not carry it
                    r = Box::pin(crate::grant::obtain(&*self.source, &self.spec.request, refresh_token.as_ref(), started)) => r,
                };
                // the slot is held until the token is saved (it drops at the
                // end of this pass): the disk is slower than a fast endpoint,
                // and a burst must not pile up thousands of unsaved tokens
                let took = self.clock.now().duration_since(started).unwrap_or_default();
                self.metrics.request(took);
                match result {
                    Ok(token) => {
                        refresh_token = token.refresh_token.clone();
                        known_issue = Some(token.issued_at);
                        // persist before publishing: a rotated refresh token must
                        // survive a crash right after this point
                        Box::pin(self.persist(&token)).await;
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
                        self.metrics
                            .failure(error.reason, failures, error.is_permanent());
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

    /// A refresh token in state_dir newer than the one this task knows: a
    /// `tokenkeeper once` or `token` may have rotated it meanwhile, and
    /// replaying the consumed one would break the chain.
    async fn newer_refresh_token(
        &self,
        known_issue: Option<SystemTime>,
    ) -> Option<(Secret, SystemTime)> {
        if !self.spec.request.grant.uses_refresh_tokens() {
            return None;
        }
        let state = self.state.clone()?;
        let (spec, now) = (self.spec.clone(), self.clock.now());
        let resume =
            tokio::task::spawn_blocking(move || state.resume(&spec.request, &spec.name, now).ok())
                .await
                .ok()??;
        let issued = resume.issued_at?;
        if known_issue.is_some_and(|known| issued <= known) {
            return None;
        }
        Some((resume.refresh_token?, issued))
    }

    async fn persist(&self, token: &Token) {
        let Some(state) = self.state.clone() else {
            return;
        };
        let (name, fingerprint, seed, token) = (
            self.spec.name.clone(),
            self.spec.request.fingerprint(),
            self.spec.request.refresh_seed(),
            token.clone(),
        );
        let result = tokio::task::spawn_blocking(move || {
            state.save(&name, &fingerprint, seed.as_deref(), &token)
        })
        .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(client = %self.spec.name, error = %e, "cannot save the token to state_dir")
            }
            Err(e) => {
                tracing::error!(client = %self.spec.name, error = %e, "saving the token to state_dir failed")
            }
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
        if error.is_permanent() {
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
mod tests {
    use super::*;
    use crate::clock::TokioClock;
    use crate::config::load_str;
    use crate::grant::{Reason, TokenRequestSpec};
    use crate::secret::Secret;
    use crate::state::Resume;
    use std::collections::VecDeque;
    use std::path::Path;
    use std::sync::Mutex;
    use std::time::UNIX_EPOCH;

    /// Answers from a script (a lifetime, or an error), then `lifetime` forever;
    /// records when it was asked.
    struct Scripted {
        script: Mutex<VecDeque<Result<Duration, FetchError>>>,
        lifetime: Duration,
        calls: Mutex<Vec<SystemTime>>,
        refresh_tokens_seen: Mutex<Vec<Option<String>>>,
    }

    impl Scripted {
        fn new(lifetime: Duration, script: Vec<Result<Duration, FetchError>>) -> Arc<Scripted> {
            Arc::new(Scripted {
                script: Mutex::new(script.into()),
                lifetime,
                calls: Mutex::new(Vec::new()),
                refresh_tokens_seen: Mutex::new(Vec::new()),
            })
        }

        /// Call times in seconds since the test's epoch.
        fn calls(&self) -> Vec<u64> {
            self.calls
                .lock()
                .unwrap()
                .iter()
                .map(|t| t.duration_since(epoch()).unwrap().as_secs())
                .collect()
        }
    }

    impl TokenSource for Scripted {
        async fn fetch(
            &self,
            _: &TokenRequestSpec,
            rt: Option<&Secret>,
            now: SystemTime,
        ) -> Result<Token, FetchError> {
            let n = {
                let mut calls = self.calls.lock().unwrap();
                calls.push(now);
                calls.len()
            };
            self.refresh_tokens_seen
                .lock()
                .unwrap()
                .push(rt.map(|s| s.expose().to_string()));
            let lifetime = self
                .script
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(Ok(self.lifetime))?;
            Ok(Token {
                access_token: Secret::new(format!("tok-{n}")),
                token_type: "Bearer".into(),
                issued_at: now,
                expires_at: now + lifetime,
                refresh_token: (n % 2 == 1).then(|| Secret::new(format!("rt-{n}"))),
            })
        }
    }

    fn epoch() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn spec(policy: &str) -> Arc<ClientSpec> {
        let toml = format!(
            "[clients.c]\ntoken_url = \"https://a.example/token\"\nclient_id = \"id\"\nclient_secret = \"s\"\n{policy}\n[[clients.c.outputs]]\ntype = \"file\"\npath = \"/run/tk/c\"\n"
        );
        load_str(Path::new("/etc/tk/config.toml"), &toml, &|_| None)
            .unwrap()
            .clients["c"]
            .clone()
    }

    struct Harness {
        tokens: watch::Receiver<Option<Arc<Token>>>,
        refresh: watch::Sender<u64>,
        cancel: CancellationToken,
        board: Arc<StatusBoard>,
    }

    fn start(spec: Arc<ClientSpec>, source: Arc<Scripted>, jitter: f64, start: Start) -> Harness {
        let (publish, tokens) = watch::channel(None);
        let (refresh, refresh_now) = watch::channel(0);
        let cancel = CancellationToken::new();
        let board = Arc::new(StatusBoard::default());
        let task = ClientTask {
            spec,
            source,
            clock: Arc::new(TokioClock::starting_at(epoch())),
            jitter: Arc::new(move || jitter),
            state: None,
            board: board.clone(),
            metrics: Arc::default(),
            slots: Arc::new(tokio::sync::Semaphore::new(REFRESH_SLOTS)),
            publish,
            refresh_now,
            cancel: cancel.clone(),
        };
        tokio::spawn(task.run(start));
        Harness {
            tokens,
            refresh,
            cancel,
            board,
        }
    }

    async fn advance(secs: u64) {
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }

    fn fresh() -> Start {
        Start {
            resume: Resume::default(),
            force: false,
        }
    }

    const PASSWORD: &str = "grant_type = \"password\"\nusername = \"u\"\npassword = \"p\"";

    fn transient() -> Result<Duration, FetchError> {
        Err(FetchError::transient(Reason::ServerError, "HTTP 503"))
    }

    #[tokio::test(start_paused = true)]
    async fn refreshes_at_the_ratio_of_each_lifetime() {
        let source = Scripted::new(Duration::from_secs(100), vec![]);
        let h = start(spec(""), source.clone(), 0.0, fresh());
        advance(400).await;
        h.cancel.cancel();
        assert_eq!(source.calls(), vec![0, 75, 150, 225, 300, 375]);
        assert_eq!(
            h.tokens.borrow().as_ref().unwrap().access_token.expose(),
            "tok-6"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn jitter_moves_refreshes_earlier_by_a_share_of_the_lifetime() {
        let source = Scripted::new(Duration::from_secs(1000), vec![]);
        let _h = start(spec(""), source.clone(), 0.5, fresh());
        advance(1500).await;
        // min(0.75 * 1000, 1000 - 300) - 0.05 * 1000 = 650
        assert_eq!(source.calls(), vec![0, 650, 1300]);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_or_tiny_lifetimes_never_become_a_tight_loop() {
        let source = Scripted::new(Duration::ZERO, vec![]);
        let _h = start(spec("min_interval = \"10s\""), source.clone(), 0.0, fresh());
        advance(105).await;
        assert_eq!(
            source.calls(),
            vec![0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_back_off_exponentially_and_keep_the_last_token() {
        let source = Scripted::new(
            Duration::from_secs(100),
            vec![
                Ok(Duration::from_secs(100)),
                transient(),
                transient(),
                transient(),
                transient(),
            ],
        );
        let h = start(
            spec("backoff_initial = \"1s\"\nbackoff_max = \"60s\""),
            source.clone(),
            1.0,
            fresh(),
        );
        advance(80).await;
        // success at 0; refresh at 75 - 10 (full jitter) = 65; then 1, 2, 4, 8 s apart
        assert_eq!(source.calls(), vec![0, 65, 66, 68, 72]);
        assert_eq!(
            h.tokens.borrow().as_ref().unwrap().access_token.expose(),
            "tok-1",
            "the last good token stays"
        );
        assert_eq!(h.board.snapshot()["c"].consecutive_failures, 4);
        advance(10).await;
        assert_eq!(source.calls(), vec![0, 65, 66, 68, 72, 80]);
        assert_eq!(
            h.tokens.borrow().as_ref().unwrap().access_token.expose(),
            "tok-6"
        );
        assert_eq!(h.board.snapshot()["c"].consecutive_failures, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_failures_retry_at_backoff_max_and_honour_retry_after() {
        let refused = Err(FetchError::permanent(
            Reason::Refused,
            "HTTP 401 invalid_client",
        ));
        let mut limited = FetchError::transient(Reason::RateLimited, "HTTP 429");
        limited.retry_after = Some(Duration::from_secs(30));
        let source = Scripted::new(Duration::from_secs(3600), vec![refused, Err(limited)]);
        let h = start(spec("backoff_max = \"2m\""), source.clone(), 0.0, fresh());
        advance(1).await;
        assert!(h.board.snapshot()["c"].needs_attention);
        advance(200).await;
        assert_eq!(source.calls(), vec![0, 120, 150]);
        assert!(!h.board.snapshot()["c"].needs_attention);
    }

    #[tokio::test(start_paused = true)]
    async fn a_valid_cached_token_is_not_fetched_again() {
        let source = Scripted::new(Duration::from_secs(100), vec![]);
        let cached = Token {
            access_token: Secret::new("cached"),
            token_type: "Bearer".into(),
            issued_at: epoch() - Duration::from_secs(50),
            expires_at: epoch() + Duration::from_secs(50),
            refresh_token: Some(Secret::new("rt-cached")),
        };
        let h = start(
            spec(PASSWORD),
            source.clone(),
            0.0,
            Start {
                resume: Resume {
                    refresh_token: cached.refresh_token.clone(),
                    issued_at: Some(cached.issued_at),
                    token: Some(cached),
                },
                force: false,
            },
        );
        advance(1).await;
        assert_eq!(
            h.tokens.borrow().as_ref().unwrap().access_token.expose(),
            "cached"
        );
        assert!(
            source.calls().is_empty(),
            "no request while the cached token is fresh"
        );
        advance(30).await;
        assert_eq!(
            source.calls(),
            vec![25],
            "refresh at 75% of the cached token's lifetime"
        );
        assert_eq!(
            source.refresh_tokens_seen.lock().unwrap()[0].as_deref(),
            Some("rt-cached")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn refresh_now_fetches_at_once_and_rotated_refresh_tokens_are_used() {
        let source = Scripted::new(Duration::from_secs(1000), vec![]);
        let h = start(spec(PASSWORD), source.clone(), 0.0, fresh());
        advance(5).await;
        h.refresh.send_modify(|n| *n += 1);
        advance(5).await;
        h.refresh.send_modify(|n| *n += 1);
        advance(5).await;
        assert_eq!(source.calls(), vec![0, 5, 10]);
        // call 1 returned rt-1; call 2 none (rt-1 is kept); call 3 sees rt-1 still
        let seen = source.refresh_tokens_seen.lock().unwrap().clone();
        assert_eq!(seen, vec![None, Some("rt-1".into()), Some("rt-1".into())]);
    }

    #[tokio::test(start_paused = true)]
    async fn client_credentials_never_send_refresh_tokens() {
        let source = Scripted::new(Duration::from_secs(1000), vec![]);
        let h = start(spec(""), source.clone(), 0.0, fresh());
        advance(5).await;
        h.refresh.send_modify(|n| *n += 1);
        advance(5).await;
        assert_eq!(
            *source.refresh_tokens_seen.lock().unwrap(),
            vec![None, None]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_refresh_token_falls_back_to_the_password_in_the_same_attempt() {
        let mut refused = FetchError::permanent(Reason::Refused, "HTTP 400 invalid_grant");
        refused.oauth_error = Some("invalid_grant".into());
        let source = Scripted::new(
            Duration::from_secs(1000),
            vec![Ok(Duration::from_secs(1000)), Err(refused)],
        );
        let h = start(spec(PASSWORD), source.clone(), 0.0, fresh());
        advance(5).await;
        h.refresh.send_modify(|n| *n += 1);
        advance(5).await;
        // rt-1 refused at 5 s, the password grant (no refresh token) at once after it
        assert_eq!(source.calls(), vec![0, 5, 5]);
        let seen = source.refresh_tokens_seen.lock().unwrap().clone();
        assert_eq!(seen, vec![None, Some("rt-1".into()), None]);
        assert_eq!(
            h.tokens.borrow().as_ref().unwrap().access_token.expose(),
            "tok-3"
        );
        assert_eq!(h.board.snapshot()["c"].consecutive_failures, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_stops_the_task() {
        let source = Scripted::new(Duration::from_secs(100), vec![]);
        let h = start(spec(""), source.clone(), 0.0, fresh());
        advance(1).await;
        h.cancel.cancel();
        advance(1000).await;
        assert_eq!(source.calls(), vec![0]);
    }
}
