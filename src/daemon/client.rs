//! The refresh loop of one client:
//! `loop { sleep until the refresh point; fetch; on success persist, publish
//! and plan the next refresh; on failure keep the current token and back off }`.
//!
//! Time comes from the injected [`Clock`] and tokio's timers only, so the
//! whole loop runs under paused time in tests.

mod chain;

use crate::clock::Clock;
use crate::cluster::{Seat, Stored};
use crate::config::ClientSpec;
use crate::grant::{FetchError, GrantSpec, Reason, TokenSource};
use crate::schedule::{self, RefreshBasis};
use crate::secret::Secret;
use crate::state::{ChainLock, Resume, StateStore};
use crate::telemetry::metrics::ClientMetrics;
use crate::telemetry::status::StatusBoard;
use crate::token::{Token, rfc3339, unix_seconds};
use chain::{Begun, ChainStore, Hold};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// Cluster mode: a request is not sent with less of the lease left than this.
const MIN_LEASE_BUDGET: Duration = Duration::from_millis(100);
/// Cluster mode: how soon an owner whose lease's renewal is late tries again.
const FENCE_RETRY: Duration = Duration::from_millis(250);
/// Cluster mode: an ask a member could not answer (it did not own the
/// client) is answered if the client becomes its own within this.
const ASK_KEPT: Duration = Duration::from_secs(2);

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
    /// Cluster mode: this client's seat (who owns it, what the store holds).
    pub seat: Option<Seat>,
    /// Cluster mode: the remote outputs' channel, fed only with the tokens
    /// this member fetched as the client's owner.
    pub publish_remote: Option<watch::Sender<Option<Arc<Token>>>>,
    /// Cluster mode: whether this member owned the client when the task
    /// last looked (a gained client is planned anew).
    pub was_owned: AtomicBool,
}

/// Refreshes in flight at once, across every client of a daemon; a refresh
/// is in flight from its request until its token is saved.
pub const REFRESH_SLOTS: usize = 64;
/// Of them, at most this many for one host: the clients of a hung endpoint
/// hold these, and every other endpoint's clients have the rest.
pub const REFRESH_SLOTS_PER_HOST: usize = 16;

/// The status message of a client whose newest refresh token is only in memory.
const UNSAVED: &str = "cannot save the rotated refresh token to state_dir; it is kept in memory and saved before the next refresh, which waits until it is";

/// A refresh that stopped before its request: a transient failure that
/// says why.
fn paused(why: String) -> Pass {
    Pass::Fetched(Err(FetchError::transient(Reason::State, why)))
}

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
    /// Cluster mode: another member owns the client.
    NotOwner,
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
        let mut seat_rx = self
            .seat
            .as_ref()
            .map(|s| (s.stored.clone(), s.owned.clone(), s.cut_off.clone()));
        if self.seat.is_some() {
            next = self.follow(&mut current, &mut known_issue, next);
        }
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
                        _ = seat_changed(&mut seat_rx) => {
                            let had = current.as_ref().map(|t| t.issued_at);
                            next = self.follow(&mut current, &mut known_issue, next);
                            // an ask this member could not answer (another
                            // owned the client): answered by the owner's
                            // next token, or by this member once it owns it
                            // (only a recent ask: one a view that lagged
                            // behind the store could not answer)
                            if let Some(asked) = asked_at {
                                let now = self.clock.now();
                                let recent = now.duration_since(asked).is_ok_and(|d| d < ASK_KEPT);
                                if current.as_ref().map(|t| t.issued_at) != had || !recent {
                                    asked_at = None;
                                } else if self.was_owned.load(Ordering::Relaxed) {
                                    next = now;
                                }
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
                let ask = asked_at.take();
                let chain = Chain {
                    refresh_token: &mut refresh_token,
                    known_issue: &mut known_issue,
                    unsaved: &mut unsaved,
                    asked_at: ask,
                };
                // boxed, like every large await here: an idle task should be small
                let pass = match (&self.seat, &self.state) {
                    (Some(seat), _) => {
                        Box::pin(self.chain_pass(ChainStore::Cluster(seat), chain)).await
                    }
                    (None, Some(state)) if self.spec.request.grant.uses_refresh_tokens() => {
                        Box::pin(self.chain_pass(ChainStore::Local(state), chain)).await
                    }
                    _ => {
                        let result = tokio::select! {
                            _ = self.cancel.cancelled() => return,
                            r = Box::pin(crate::grant::obtain(&*self.source, &self.spec.request, refresh_token.as_ref(), started)) => self.usable(r),
                        };
                        if let Ok(token) = &result {
                            // persist before publishing: a crash right after
                            // this point restarts from this token
                            Box::pin(self.persist(token)).await;
                        }
                        Pass::Fetched(result)
                    }
                };
                let result = match pass {
                    Pass::Cancelled => return,
                    Pass::NotOwner => {
                        // the ask stands, for when this member owns the client
                        asked_at = ask;
                        let owned = self.seat.as_ref().is_some_and(|s| *s.owned.borrow());
                        next = if owned {
                            // owned, but the lease's renewal is late (a busy
                            // store, a busy host): tried again shortly, once
                            // it is renewed or the client has moved
                            self.clock.now() + FENCE_RETRY
                        } else {
                            self.follow(&mut current, &mut known_issue, next)
                        };
                        continue;
                    }
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
                    // (a rotated refresh token is saved even with a token
                    // that cannot be used)
                    Pass::Fetched(result) => self.usable(result),
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
                        if let Some(remote) = &self.publish_remote {
                            let _ = remote.send(Some(token.clone()));
                        }
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

    /// One refresh of a refresh-token chain (or, in cluster mode, of any
    /// client), the same on every [`ChainStore`]: begun exclusively —
    /// under the chain's lock in `state_dir`, so `once`, `token` and
    /// another daemon wait; or under the owner's fence, so every other
    /// member waits — with the stored record read (the chain's truth, which
    /// another process or host may have moved on), then the request, then
    /// the answer made durable before anything uses it. Once the request is
    /// sent, cancellation (shutdown, a reload) does not abandon it: the
    /// rotation the server makes is saved. A fence cuts the request before
    /// the lease could have run out.
    async fn chain_pass(&self, store: ChainStore<'_>, chain: Chain<'_>) -> Pass {
        let now = self.clock.now();
        let begun = match store {
            ChainStore::Local(state) => self.begin_local(state, chain.unsaved).await,
            ChainStore::Cluster(seat) => self.begin_cluster(seat).await,
        };
        let Begun {
            hold,
            cached,
            unfinished,
        } = match begun {
            Ok(begun) => begun,
            Err(pass) => return pass,
        };
        let resume = crate::state::resume_from(cached, &self.spec.request, now);
        if resume.issued_at.is_some() {
            *chain.refresh_token = resume.refresh_token.clone();
        }
        // the last refresh begun never ended: its refresh token may be
        // spent. A password client starts a new chain rather than present
        // it again (a server with reuse detection would revoke the family);
        // a refresh-token client has no other way, and tries it.
        let password = matches!(
            self.spec.request.grant,
            crate::grant::GrantSpec::Password { .. }
        );
        if unfinished && password && chain.refresh_token.is_some() {
            tracing::warn!(client = %self.spec.name, "the last refresh of this chain did not end (its member stopped with the request in flight, or the request was cut): its refresh token may be spent, so the password grant starts a new chain instead of presenting it again");
            *chain.refresh_token = None;
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
        let budget = hold
            .until()
            .map(|until| until.saturating_duration_since(tokio::time::Instant::now()));
        if budget.is_some_and(|b| b < MIN_LEASE_BUDGET) {
            return paused("this member's lease runs out too soon for a request".into());
        }
        // the request: not raced against cancellation
        let request = Box::pin(crate::grant::obtain(
            &*self.source,
            &self.spec.request,
            chain.refresh_token.as_ref(),
            now,
        ));
        let result = match budget {
            None => request.await,
            Some(budget) => match tokio::time::timeout(budget, request).await {
                Ok(result) => result,
                Err(_) => Err(FetchError::transient(
                    Reason::Timeout,
                    "no answer before this member's lease could run out: the request was cut",
                )),
            },
        };
        // the endpoint answered without rotating, or was never reached: the
        // refresh ended (a cut or garbled answer may have rotated: the mark stays)
        if let Err(e) = &result
            && matches!(
                e.reason,
                Reason::Refused | Reason::RateLimited | Reason::ServerError | Reason::Connect
            )
            && let Err(store) = hold.settle().await
        {
            tracing::debug!(client = %self.spec.name, error = %store, "cannot clear the in-flight mark");
        }
        if let Ok(token) = &result {
            let local = hold.is_local();
            match hold.save(&self.spec, token).await {
                Ok(()) => {}
                Err(e) if local => {
                    tracing::error!(client = %self.spec.name, error = %e, "{UNSAVED}");
                    *chain.unsaved = Some(token.clone());
                }
                Err(e) => {
                    tracing::error!(client = %self.spec.name, error = %e, "the new token is used here but was not stored");
                }
            }
            if !local {
                // what this host serves after a restart while the store is away
                Box::pin(self.persist(token)).await;
            }
        }
        Pass::Fetched(result)
    }

    /// Begins a refresh of a chain kept in `state_dir`: its lock, a token
    /// left unsaved saved first, the record read, room made for the answer.
    async fn begin_local<'a>(
        &self,
        state: &StateStore,
        unsaved: &mut Option<Token>,
    ) -> Result<Begun<'a>, Pass> {
        let stalled = |e: std::io::Error| {
            paused(format!(
                "state_dir: {e}; not refreshing until the state can be saved, since the answer rotates the refresh token"
            ))
        };
        // under the lock, in the hop that takes it (a copy of the unsaved
        // token: the original stays if the lock is not had)
        let (spec, left) = (self.spec.clone(), unsaved.clone());
        let first = move |lock: &mut ChainLock| {
            let checked = (|| {
                if let Some(token) = &left {
                    save(lock, &spec, token)?;
                }
                let cached = lock.load()?;
                lock.prepare()?;
                Ok::<_, std::io::Error>(cached)
            })();
            let left = if checked.is_err() { left } else { None };
            (checked, left)
        };
        let locked = tokio::select! {
            _ = self.cancel.cancelled() => return Err(Pass::Cancelled),
            locked = state.lock_and(&self.spec.name, self.spec.request.timeout, first) => locked,
        };
        match locked {
            Ok((lock, (checked, left))) => {
                *unsaved = left;
                match checked {
                    Ok(cached) => Ok(Begun {
                        hold: Hold::Local(lock),
                        cached,
                        unfinished: false,
                    }),
                    Err(e) => Err(stalled(e)),
                }
            }
            Err(e) => Err(stalled(e)),
        }
    }

    /// Begins a refresh by the client's owner: the seat's busy lock (the
    /// client is not handed over meanwhile), the lease's fence, and the
    /// store's record read with the in-flight mark put, in one write that
    /// holds only while this member owns the client. A member cut off from
    /// the store refreshes a client without a chain on its own.
    async fn begin_cluster<'a>(&self, seat: &'a Seat) -> Result<Begun<'a>, Pass> {
        let busy = tokio::select! {
            _ = self.cancel.cancelled() => return Err(Pass::Cancelled),
            held = seat.busy() => held,
        };
        let Some(fence) = seat.fence() else {
            if self.on_its_own(seat) {
                let result = tokio::select! {
                    _ = self.cancel.cancelled() => return Err(Pass::Cancelled),
                    r = Box::pin(crate::grant::obtain(&*self.source, &self.spec.request, None, self.clock.now())) => r,
                };
                if let Ok(token) = &result {
                    Box::pin(self.persist(token)).await;
                }
                return Err(Pass::Fetched(result));
            }
            return Err(Pass::NotOwner);
        };
        let begun = tokio::select! {
            _ = self.cancel.cancelled() => return Err(Pass::Cancelled),
            begun = tokio::time::timeout_at(fence.until, seat.begin(&fence)) => begun,
        };
        let (stored, unfinished) = match begun {
            Err(_) => {
                return Err(paused(
                    "the cluster store did not answer within the lease: not refreshing without reading the chain".into(),
                ));
            }
            Ok(Err(e)) => {
                return Err(paused(format!(
                    "cluster store: {e}; not refreshing without reading the chain"
                )));
            }
            Ok(Ok(None)) => return Err(Pass::NotOwner),
            Ok(Ok(Some(begun))) => begun,
        };
        let (cached, revision) = match stored {
            Stored::Unreadable(why) => {
                return Err(paused(format!(
                    "the cluster store's record of this client {why}: it is neither used nor overwritten (give every member the same encryption_key_file)"
                )));
            }
            Stored::Record(r) => (Some(r.cached.clone()), r.revision),
            Stored::Nothing => (None, 0),
        };
        Ok(Begun {
            hold: Hold::Cluster {
                seat,
                fence,
                revision,
                _busy: busy,
            },
            cached,
            unfinished,
        })
    }

    /// Cluster mode, after the seat changed (or a pass found another
    /// member owns the client): publishes a newer token the store holds,
    /// and says when this task next has something to do — the token's
    /// refresh point if this member owns the client, else only when the
    /// seat changes again.
    fn follow(
        &self,
        current: &mut Option<Arc<Token>>,
        known_issue: &mut Option<SystemTime>,
        next: SystemTime,
    ) -> SystemTime {
        let (next, adopted) = self.follow_store(current, known_issue, next);
        if let (Some(token), Some(state)) = (adopted, self.state.clone()) {
            // what `token NAME` and a restart while the store is away read
            // (in the background: a write per adopted token)
            let spec = self.spec.clone();
            tokio::task::spawn_blocking(move || {
                if let Ok(Some(mut lock)) = state.try_lock(&spec.name) {
                    let _ = save(&mut lock, &spec, &token);
                }
            });
        }
        next
    }

    fn follow_store(
        &self,
        current: &mut Option<Arc<Token>>,
        known_issue: &mut Option<SystemTime>,
        next: SystemTime,
    ) -> (SystemTime, Option<Arc<Token>>) {
        let Some(seat) = &self.seat else {
            return (next, None);
        };
        let mut adopted = None;
        let now = self.clock.now();
        let owned = *seat.owned.borrow() || self.on_its_own(seat);
        let stored = seat.stored.borrow().clone();
        match stored {
            Stored::Record(r) if Some(r.cached.token.issued_at) > *known_issue => {
                if r.cached.fingerprint != self.spec.request.fingerprint() {
                    tracing::warn!(client = %self.spec.name, "the cluster store holds a token for another configuration of this client (members must configure it alike): not used here");
                } else if r
                    .cached
                    .token
                    .unusable(now, self.spec.policy.min_valid)
                    .is_none()
                {
                    *known_issue = Some(r.cached.token.issued_at);
                    let token = Arc::new(r.cached.token.clone());
                    let due = self.adopt(&token, "using the token the cluster's owner wrote");
                    *current = Some(token.clone());
                    adopted = Some(token);
                    if owned {
                        return (due, adopted);
                    }
                }
            }
            Stored::Unreadable(why) => {
                tracing::error!(client = %self.spec.name, "the cluster store's record of this client {why}: it is neither used nor overwritten (give every member the same encryption_key_file)");
            }
            _ => {}
        }
        let gained = owned && !self.was_owned.swap(owned, Ordering::Relaxed);
        self.was_owned.store(owned, Ordering::Relaxed);
        let next = match (owned, current) {
            // just gained: due when its token is (a refresh planned while
            // it was owned, a backoff among them, stands)
            (true, Some(t)) if gained => self.plan(t).at.min(next.max(now)),
            (true, Some(_)) => next,
            (true, None) => now,
            (false, _) => now + MAX_SLEEP,
        };
        (next, adopted)
    }

    /// Cluster mode, cut off from the store for longer than a lease: a
    /// client without a refresh-token chain is refreshed here on its own
    /// (a chain never is without the lease).
    fn on_its_own(&self, seat: &Seat) -> bool {
        *seat.cut_off.borrow() && !self.spec.request.grant.uses_refresh_tokens()
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

/// Resolves when the seat's record or ownership changed (never without a
/// seat, or once its channels are closed).
async fn seat_changed(
    seat: &mut Option<(
        watch::Receiver<Stored>,
        watch::Receiver<bool>,
        watch::Receiver<bool>,
    )>,
) {
    let Some((stored, owned, cut_off)) = seat else {
        return std::future::pending().await;
    };
    let changed = tokio::select! {
        r = stored.changed() => r,
        r = owned.changed() => r,
        r = cut_off.changed() => r,
    };
    if changed.is_err() {
        *seat = None;
    }
}

#[cfg(test)]
mod tests;
