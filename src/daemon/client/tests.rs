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
    clock: Arc<JumpClock>,
    /// What the supervisor bumps when the wall clock jumped.
    wall: watch::Sender<u64>,
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
    let (wall, wall_moved) = watch::channel(0);
    let cancel = CancellationToken::new();
    let ask = Arc::new(tokio::sync::Notify::new());
    let clock = Arc::new(JumpClock {
        tokio: TokioClock::starting_at(epoch()),
        ahead: Default::default(),
    });
    let task = ClientTask {
        spec,
        source,
        clock: clock.clone(),
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
        wall_moved,
        ask: ask.clone(),
        cancel: cancel.clone(),
        seat: None,
        publish_remote: None,
        was_owned: Default::default(),
    };
    tokio::spawn(task.run(start));
    Harness {
        tokens,
        refresh,
        cancel,
        board,
        ask,
        clock,
        wall,
    }
}

/// Tokio's (pausable) clock, whose wall time a test can set forward.
struct JumpClock {
    tokio: TokioClock,
    ahead: std::sync::atomic::AtomicU64,
}

impl Clock for JumpClock {
    fn now(&self) -> SystemTime {
        self.tokio.now()
            + Duration::from_secs(self.ahead.load(std::sync::atomic::Ordering::Relaxed))
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
    // an ask the old task did not answer before it stopped: only on the board
    first.board.modify("c", |s| s.asks.pending = true);
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
async fn a_wall_clock_jump_is_read_at_once_and_an_idle_task_sleeps_until_due() {
    let source = Scripted::new(Duration::from_secs(10_000), vec![]);
    let h = start(spec(""), source.clone(), 0.0, fresh());
    advance(10).await;
    // the wall clock goes past the refresh point (7,500 s) while the task
    // sleeps on the monotonic clock, due in 7,490 s more
    h.clock
        .ahead
        .store(8_000, std::sync::atomic::Ordering::Relaxed);
    advance(600).await;
    assert_eq!(source.calls(), vec![0], "nothing wakes it but its timer");
    h.wall.send_modify(|n| *n += 1);
    advance(1).await;
    assert_eq!(
        source.calls().len(),
        2,
        "read the clock again: overdue, refreshed"
    );
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
