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

/// Longest single sleep; the loop re-reads the clock after it, so a suspended
/// machine or a wall-clock jump delays a refresh by at most this.
const MAX_SLEEP: Duration = Duration::from_secs(30);

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
        ask: Arc<tokio::sync::Notify>,
    }

    impl Harness {
        /// What `tokenkeeper refresh` does to the task.
        fn ask(&self) {
            self.board.modify("c", |s| s.asks.pending = true);
            self.ask.notify_one();
        }

        fn asks(&self) -> crate::telemetry::status::Asks {
            self.board.snapshot()["c"].asks.clone()
        }
    }

    fn start(spec: Arc<ClientSpec>, source: Arc<Scripted>, jitter: f64, start: Start) -> Harness {
        start_on(Arc::default(), spec, source, jitter, start)
    }

    fn start_on(
        board: Arc<StatusBoard>,
        spec: Arc<ClientSpec>,
        source: Arc<Scripted>,
        jitter: f64,
        start: Start,
    ) -> Harness {
        let (publish, tokens) = watch::channel(None);
        let (refresh, refresh_now) = watch::channel(0);
        let cancel = CancellationToken::new();
        let ask = Arc::new(tokio::sync::Notify::new());
        let task = ClientTask {
            spec,
            source,
            clock: Arc::new(TokioClock::starting_at(epoch())),
            jitter: Arc::new(move || jitter),
            state: None,
            board: board.clone(),
            metrics: Arc::default(),
            slots: Arc::new(crate::limiter::Limiter::new(
                REFRESH_SLOTS,
                REFRESH_SLOTS_PER_HOST,
            )),
            publish,
            refresh_now,
            ask: ask.clone(),
            cancel: cancel.clone(),
        };
        tokio::spawn(task.run(start));
        Harness {
            tokens,
            refresh,
            cancel,
            board,
            ask,
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
    async fn tiny_lifetimes_never_become_a_tight_loop() {
        let source = Scripted::new(Duration::from_millis(1500), vec![]);
        let _h = start(spec("min_interval = \"10s\""), source.clone(), 0.0, fresh());
        advance(105).await;
        assert_eq!(
            source.calls(),
            vec![0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_token_is_a_failed_refresh_and_the_current_one_stays() {
        // a good token, then answers that expire on arrival (expires_in: 0),
        // then one with less than min_valid left
        let source = Scripted::new(
            Duration::from_secs(1000),
            vec![
                Ok(Duration::from_secs(1000)),
                Ok(Duration::ZERO),
                Ok(Duration::ZERO),
                Ok(Duration::from_secs(20)),
            ],
        );
        let h = start(
            spec("min_valid = \"30s\"\nbackoff_initial = \"1s\"\nbackoff_max = \"60s\""),
            source.clone(),
            1.0,
            fresh(),
        );
        advance(5).await;
        h.refresh.send_modify(|n| *n += 1);
        advance(5).await;
        // 0: good; 5: expired, 6 (1 s later): expired, 8 (2 s): too short, 12 (4 s): good
        assert_eq!(source.calls(), vec![0, 5, 6, 8]);
        assert_eq!(
            h.tokens.borrow().as_ref().unwrap().access_token.expose(),
            "tok-1",
            "the current token stays"
        );
        let status = h.board.snapshot()["c"].clone();
        assert_eq!(status.consecutive_failures, 3);
        assert!(
            status
                .last_error
                .unwrap()
                .contains("not more than min_valid"),
            "the reason is shown"
        );
        advance(5).await;
        assert_eq!(source.calls(), vec![0, 5, 6, 8, 12]);
        assert_eq!(
            h.tokens.borrow().as_ref().unwrap().access_token.expose(),
            "tok-5"
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
    async fn a_storm_of_refresh_asks_is_one_refresh_a_second() {
        let source = Scripted::new(Duration::from_secs(1000), vec![]);
        let h = start(spec(""), source.clone(), 0.0, fresh());
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            h.refresh.send_modify(|n| *n += 1);
        }
        advance(1).await;
        // min_interval (10 s) is for scheduled refreshes; asks get one a second
        assert_eq!(source.calls(), vec![0, 1, 2, 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn many_asks_before_a_pass_are_answered_by_that_one_pass() {
        let source = Scripted::new(Duration::from_secs(1000), vec![]);
        let h = start(spec(""), source.clone(), 0.0, fresh());
        advance(5).await;
        assert_eq!(h.asks().passes, 1);
        for _ in 0..100 {
            h.ask();
        }
        advance(5).await;
        assert_eq!(source.calls(), vec![0, 5]);
        let asks = h.asks();
        assert_eq!(
            (asks.passes, asks.last_success, asks.pending),
            (2, 2, false)
        );
        assert_eq!(asks.received, Some(epoch() + Duration::from_secs(5)));
        // a wake left over from the answered asks is not a new ask
        h.ask.notify_one();
        advance(5).await;
        assert_eq!(source.calls(), vec![0, 5]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_ask_after_a_failure_waits_a_second_after_that_attempt_and_reports_it() {
        let source = Scripted::new(
            Duration::from_secs(1000),
            vec![Ok(Duration::from_secs(1000)), transient()],
        );
        let h = start(spec(""), source.clone(), 0.0, fresh());
        advance(5).await;
        h.ask();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let asks = h.asks();
        assert_eq!(
            (asks.passes, asks.last_success),
            (2, 1),
            "the failure answers the ask"
        );
        assert_eq!(
            h.board.snapshot()["c"].last_error.as_deref(),
            Some("HTTP 503")
        );
        // asked again at once: no sooner than a second after the failed attempt
        h.ask();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(source.calls().len(), 2);
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(source.calls(), vec![0, 5, 6]);
        assert_eq!(h.asks().last_success, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn an_ask_left_by_a_replaced_task_is_answered_by_the_new_one() {
        let source = Scripted::new(Duration::from_secs(1000), vec![]);
        let first = start(spec(""), source.clone(), 0.0, fresh());
        advance(5).await;
        first.cancel.cancel();
        first.ask();
        let token = first.tokens.borrow().as_ref().map(|t| (**t).clone());
        let _second = start_on(
            first.board.clone(),
            spec(""),
            source.clone(),
            0.0,
            Start {
                resume: Resume {
                    token,
                    ..Resume::default()
                },
                force: false,
            },
        );
        advance(1).await;
        // the cached token is good for 995 s more: only the ask fetches now
        // (at the new task's start: its clock begins at the epoch again)
        assert_eq!(source.calls(), vec![0, 0]);
        assert!(!first.asks().pending);
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
