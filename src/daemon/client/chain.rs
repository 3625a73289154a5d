//! Where a refresh-token chain's truth is kept, and what lets one refresh
//! at a time move it: this host's state directory (a file lock: every
//! other process on the host waits) or the cluster's store, etcd or
//! Kubernetes (the owner's lease and its fence: every other host waits).
//!
//! One refresh is the same on both: [`ChainStore`] begins it (exclusive,
//! and the stored record read: the chain's truth), the request is sent,
//! and the [`Hold`] saves the answer before anything uses it — or, when
//! the endpoint refused without rotating, settles.

use crate::cluster::{Fence, Seat};
use crate::config::ClientSpec;
use crate::state::{CachedToken, ChainLock, StateStore};
use crate::token::Token;
use std::sync::Arc;

/// A chain's store, for one client task.
#[derive(Clone, Copy)]
pub enum ChainStore<'a> {
    Local(&'a StateStore),
    Cluster(&'a Seat),
}

/// What one refresh holds, from its begin to its save.
pub enum Hold<'a> {
    /// The chain's lock in `state_dir`, room made for the answer.
    Local(ChainLock),
    /// The owner's fence; the record's revision the answer replaces; the
    /// seat kept from being handed over meanwhile.
    Cluster {
        seat: &'a Seat,
        fence: Fence,
        revision: i64,
        _busy: tokio::sync::OwnedMutexGuard<()>,
    },
}

/// A refresh begun: what it holds, the stored record, and whether the
/// last refresh begun never ended (its refresh token may be spent).
pub struct Begun<'a> {
    pub hold: Hold<'a>,
    pub cached: Option<CachedToken>,
    pub unfinished: bool,
}

impl Hold<'_> {
    /// When the request must have ended, if anything bounds it: the fence.
    pub fn until(&self) -> Option<tokio::time::Instant> {
        match self {
            Hold::Local(_) => None,
            Hold::Cluster { fence, .. } => Some(fence.until),
        }
    }

    pub fn is_local(&self) -> bool {
        matches!(self, Hold::Local(_))
    }

    /// The refresh ended without a rotation: a cluster's in-flight mark
    /// goes (the lock of a local chain is released when the hold drops).
    pub async fn settle(&self) -> Result<(), String> {
        match self {
            Hold::Local(_) => Ok(()),
            Hold::Cluster { seat, fence, .. } => {
                seat.settle(fence).await.map_err(|e| e.to_string())
            }
        }
    }

    /// Makes `token` (and its refresh token) the chain's truth; an error
    /// says why it is not.
    pub async fn save(self, spec: &Arc<ClientSpec>, token: &Token) -> Result<(), String> {
        match self {
            Hold::Local(mut lock) => {
                let (spec, copy) = (spec.clone(), token.clone());
                tokio::task::spawn_blocking(move || super::save(&mut lock, &spec, &copy))
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e)))
                    .map_err(|e| e.to_string())
            }
            Hold::Cluster {
                seat,
                fence,
                revision,
                ..
            } => {
                let cached = CachedToken {
                    fingerprint: spec.request.fingerprint(),
                    seed: spec.request.refresh_seed(),
                    token: token.clone(),
                };
                match seat.save(&fence, revision, &cached).await {
                    Ok(true) => Ok(()),
                    Ok(false) => Err("this member lost the lease, or the store's record moved on, while it refreshed".into()),
                    Err(e) => Err(format!("cannot write it to the cluster store: {e}")),
                }
            }
        }
    }
}
