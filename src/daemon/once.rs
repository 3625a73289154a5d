//! A single pass without the loop: `once` fetches for every client and
//! writes every output; `token` prints one client's token.

use crate::clock::Clock;
use crate::config::{ClientSpec, Config};
use crate::daemon::client::save;
use crate::grant::{FetchError, TokenSource, obtain};
use crate::schedule::retry_delay;
use crate::secret::Secret;
use crate::state::{ChainLock, Resume, StateStore, resume_from};
use crate::token::Token;
use std::sync::Arc;
use std::time::Duration;

/// Attempts per client in `once` for transient failures.
const ONCE_ATTEMPTS: u32 = 3;

/// Gets a token for `spec`, retrying transient failures a little.
pub async fn fetch_with_retries<S: TokenSource>(
    source: &S,
    spec: &ClientSpec,
    refresh_token: Option<&Secret>,
    clock: &dyn Clock,
) -> Result<Token, FetchError> {
    let mut failures = 0;
    loop {
        match obtain(source, &spec.request, refresh_token, clock.now()).await {
            Ok(token) => return Ok(token),
            Err(e) if e.is_permanent() => return Err(e),
            Err(e) => {
                failures += 1;
                if failures >= ONCE_ATTEMPTS {
                    return Err(e);
                }
                let delay = retry_delay(
                    failures,
                    e.class,
                    e.retry_after,
                    &spec.policy,
                    super::client::jitter_sample(),
                )
                .min(Duration::from_secs(10));
                tracing::warn!(client = %spec.name, retry_in_s = delay.as_secs_f64(), "token request failed: {e}");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Where a single pass's token came from.
pub enum Got {
    /// From state_dir: written by whoever held the chain's lock before.
    Cached(Token),
    Fetched(Token),
}

impl Got {
    pub fn token(self) -> Token {
        match self {
            Got::Cached(t) | Got::Fetched(t) => t,
        }
    }
}

/// A token for `spec` in a single pass (`once`, `token`). Under the
/// client's lock in `state` — waiting at most the client's `timeout` for a
/// daemon or another command refreshing it — the token in state_dir is
/// used when `reuse` accepts it; otherwise a new one is fetched and saved
/// before it is returned. A grant whose answer rotates a refresh token is
/// not sent unless its answer can be saved.
pub async fn get<S: TokenSource>(
    source: &S,
    spec: &Arc<ClientSpec>,
    state: Option<&StateStore>,
    clock: &dyn Clock,
    reuse: impl Fn(&Token) -> bool,
) -> Result<Got, String> {
    let chain = spec.request.grant.uses_refresh_tokens();
    let unsaveable = |e: &dyn std::fmt::Display| {
        format!("{e}; not fetching, since the rotated refresh token could not be kept")
    };
    let (owned, now) = (spec.clone(), clock.now());
    let first = move |lock: &mut ChainLock| {
        let resume = resume_from(lock.load()?, &owned.request, now);
        if chain {
            lock.prepare()?;
        }
        Ok::<_, std::io::Error>(resume)
    };
    let locked = match state {
        Some(state) => Some(
            state
                .lock_and(&spec.name, spec.request.timeout, first)
                .await,
        ),
        None if chain => return Err(unsaveable(&"no usable state_dir")),
        None => None,
    };
    let (lock, resume) = match locked {
        Some(Ok((lock, Ok(resume)))) => (Some(lock), resume),
        Some(Ok((_, Err(e)))) if chain => return Err(unsaveable(&format!("state_dir: {e}"))),
        Some(Err(e)) if chain => return Err(unsaveable(&e)),
        Some(Ok((lock, Err(e)))) => {
            tracing::warn!(client = %spec.name, error = %e, "ignoring the token cache");
            (Some(lock), Resume::default())
        }
        Some(Err(e)) => {
            tracing::warn!(client = %spec.name, error = %e, "fetching without the token cache");
            (None, Resume::default())
        }
        None => (None, Resume::default()),
    };
    if let Some(token) = resume.token.filter(|t| reuse(t)) {
        return Ok(Got::Cached(token));
    }
    let token = fetch_with_retries(source, spec, resume.refresh_token.as_ref(), clock)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(mut lock) = lock {
        let (owned, copy) = (spec.clone(), token.clone());
        let saved = tokio::task::spawn_blocking(move || save(&mut lock, &owned, &copy))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match saved {
            Ok(()) => {}
            Err(e) if chain => {
                return Err(format!(
                    "cannot save the rotated refresh token to state_dir: {e}; the chain is lost"
                ));
            }
            Err(e) => {
                tracing::warn!(client = %spec.name, error = %e, "cannot save the token to state_dir")
            }
        }
    }
    // checked after the save: a rotated refresh token is kept either way
    match token.unusable(clock.now(), spec.policy.min_valid) {
        Some(why) => Err(format!("{why}; not written")),
        None => Ok(Got::Fetched(token)),
    }
}

/// One client: fetch, persist, write every output. Returns whether all went well.
async fn once_client<S: TokenSource>(
    source: Arc<S>,
    spec: Arc<ClientSpec>,
    state: Option<StateStore>,
    clock: Arc<dyn Clock>,
) -> bool {
    // a token written by a holder of the lock while this pass waited for
    // it is as good as one this pass fetches
    let before = state
        .as_ref()
        .and_then(|s| s.load(&spec.name).ok().flatten())
        .map(|c| c.token.issued_at);
    let min_valid = spec.policy.min_valid;
    let now = clock.now();
    let reuse = |t: &Token| Some(t.issued_at) > before && t.remaining(now) > min_valid;
    let token = match get(&*source, &spec, state.as_ref(), &*clock, reuse).await {
        Ok(Got::Cached(t)) => {
            tracing::info!(client = %spec.name, "using the token another tokenkeeper has just written");
            t
        }
        Ok(Got::Fetched(t)) => t,
        Err(e) => {
            tracing::error!(client = %spec.name, "no token: {e}");
            return false;
        }
    };
    let mut ok = true;
    let token = Arc::new(token);
    for output in &spec.outputs {
        let written = match crate::output::Writer::new(output) {
            Ok(writer) => writer.write(&token).await,
            Err(e) => Err(e),
        };
        match written {
            Ok(crate::output::WriteOutcome::Written) => {
                crate::daemon::outputs::run_hooks(&spec.name, output, &token).await;
            }
            Ok(crate::output::WriteOutcome::Unchanged) => {}
            Err(e) => {
                tracing::error!(client = %spec.name, output = %output.label(), "cannot write output: {e}");
                ok = false;
            }
        }
    }
    if ok {
        tracing::info!(client = %spec.name, expires_at = %crate::token::rfc3339(token.expires_at), "token written");
    }
    ok
}

/// Why a command does not refresh a chain in cluster mode.
pub const CLUSTER_CHAIN: &str = "cluster mode: this refresh-token chain is refreshed only by its owner among the members (it holds the lease); a command does not refresh it — the daemon writes the current token to the outputs and state_dir";

/// `tokenkeeper once`: every client at once; true when every client got a
/// token into every output.
pub async fn once<S: TokenSource>(
    config: &Config,
    source: Arc<S>,
    state: Option<StateStore>,
    clock: Arc<dyn Clock>,
) -> bool {
    let mut tasks = tokio::task::JoinSet::new();
    let mut all_ok = true;
    for spec in config.clients.values() {
        if config.daemon.cluster.is_some() && spec.request.grant.uses_refresh_tokens() {
            tracing::error!(client = %spec.name, "{CLUSTER_CHAIN}");
            all_ok = false;
            continue;
        }
        tasks.spawn(once_client(
            source.clone(),
            spec.clone(),
            state.clone(),
            clock.clone(),
        ));
    }
    while let Some(result) = tasks.join_next().await {
        all_ok &= result.unwrap_or(false);
    }
    all_ok
}
