//! How many token requests run at once: at most a global number, and at
//! most a smaller number to any one host, so that the clients of one hung
//! or black-holed endpoint hold a few of the slots, not all of them, and
//! every other endpoint's clients go on. A permit is taken for the host
//! first, then a global one — always in that order, so two waiters never
//! hold one each of what the other needs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct Limiter {
    global: Arc<Semaphore>,
    per_host: usize,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// A slot, released when dropped.
pub struct Permit {
    _global: OwnedSemaphorePermit,
    _host: OwnedSemaphorePermit,
}

impl Limiter {
    pub fn new(global: usize, per_host: usize) -> Limiter {
        Limiter {
            global: Arc::new(Semaphore::new(global)),
            per_host: per_host.min(global),
            hosts: Mutex::default(),
        }
    }

    /// Waits for a slot for a request to `host`; `None` only if the
    /// limiter was closed (it never is: read it as shutting down).
    pub async fn acquire(&self, host: &str) -> Option<Permit> {
        let semaphore = self
            .hosts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(host.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_host)))
            .clone();
        let _host = semaphore.acquire_owned().await.ok()?;
        let _global = self.global.clone().acquire_owned().await.ok()?;
        Some(Permit { _global, _host })
    }
}

/// The host a request goes to, as the limiter counts it: host and port of
/// the token URL or the issuer; one key for all static-token files.
pub fn host_of(endpoint: &crate::grant::Endpoint) -> String {
    use crate::grant::Endpoint;
    match endpoint {
        Endpoint::TokenUrl(u) | Endpoint::Issuer(u) => format!(
            "{}:{}",
            u.host_str().unwrap_or_default(),
            u.port_or_known_default().unwrap_or_default()
        ),
        Endpoint::StaticFile(_) => "file".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_hung_host_holds_its_share_and_every_other_host_goes_on() {
        let limiter = Arc::new(Limiter::new(4, 2));
        // two requests to a host that never answers
        let hung: Vec<Option<Permit>> = vec![
            limiter.acquire("hung:443").await,
            limiter.acquire("hung:443").await,
        ];
        // a third to it waits for them
        let waiting = {
            let limiter = limiter.clone();
            tokio::spawn(async move { limiter.acquire("hung:443").await })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiting.is_finished(), "the per-host cap holds");
        // the other host still gets the rest of the global slots
        let ok = tokio::time::timeout(Duration::from_secs(1), async {
            (
                limiter.acquire("ok:443").await,
                limiter.acquire("ok:443").await,
            )
        })
        .await;
        assert!(ok.is_ok(), "the healthy host is not starved");
        drop(hung);
        drop(ok);
        assert!(
            tokio::time::timeout(Duration::from_secs(1), waiting)
                .await
                .is_ok()
        );
    }
}
