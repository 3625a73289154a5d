//! A single pass without the loop: `once` fetches for every client and
//! writes every output; `token` prints one client's token.

use crate::clock::Clock;
use crate::config::{ClientSpec, Config};
use crate::grant::{FetchError, TokenSource, obtain};
use crate::schedule::retry_delay;
use crate::secret::Secret;
use crate::state::StateStore;
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
                    rand::random(),
                )
                .min(Duration::from_secs(10));
                tracing::warn!(client = %spec.name, retry_in_s = delay.as_secs_f64(), "token request failed: {e}");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Saves `token` for `spec` in `state`.
pub fn save(state: &StateStore, spec: &ClientSpec, token: &Token) -> std::io::Result<()> {
    state.save(
        &spec.name,
        &spec.request.fingerprint(),
        spec.request.refresh_seed().as_deref(),
        token,
    )
}

/// One client: fetch, persist, write every output. Returns whether all went well.
async fn once_client<S: TokenSource>(
    source: Arc<S>,
    spec: Arc<ClientSpec>,
    state: Option<StateStore>,
    clock: Arc<dyn Clock>,
) -> bool {
    let refresh_token =
        crate::daemon::client::resume(state.as_ref(), &spec, clock.now()).refresh_token;
    if spec.request.grant.uses_refresh_tokens() && state.is_none() {
        tracing::error!(client = %spec.name, "no usable state_dir: a rotated refresh token could not be kept; not fetching");
        return false;
    }
    let token = match fetch_with_retries(&*source, &spec, refresh_token.as_ref(), &*clock).await {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(client = %spec.name, reason = e.reason.as_str(), "no token: {e}");
            return false;
        }
    };
    let min_valid = spec.policy.min_valid;
    if !min_valid.is_zero() && token.remaining(clock.now()) < min_valid {
        tracing::error!(
            client = %spec.name,
            "the new token has less than min_valid ({}) left; not writing it",
            humantime::format_duration(min_valid)
        );
        return false;
    }
    let mut ok = true;
    if let Some(state) = state {
        let (spec2, token2) = (spec.clone(), token.clone());
        let saved = tokio::task::spawn_blocking(move || save(&state, &spec2, &token2)).await;
        if let Ok(Err(e)) | Err(e) = saved.map_err(std::io::Error::other) {
            tracing::error!(client = %spec.name, error = %e, "cannot save the token to state_dir");
            ok = !spec.request.grant.uses_refresh_tokens();
        }
    }
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

/// `tokenkeeper once`: every client at once; true when every client got a
/// token into every output.
pub async fn once<S: TokenSource>(
    config: &Config,
    source: Arc<S>,
    state: Option<StateStore>,
    clock: Arc<dyn Clock>,
) -> bool {
    let mut tasks = tokio::task::JoinSet::new();
    for spec in config.clients.values() {
        tasks.spawn(once_client(
            source.clone(),
            spec.clone(),
            state.clone(),
            clock.clone(),
        ));
    }
    let mut all_ok = true;
    while let Some(result) = tasks.join_next().await {
        all_ok &= result.unwrap_or(false);
    }
    all_ok
}
