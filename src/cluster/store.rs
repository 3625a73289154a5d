//! The cluster's shared store, as the [`Member`](super::Member) sees it:
//! member leases, one owner and one sealed record per client, and a feed
//! of their changes. Two engines behind one closed enum — etcd (keys on
//! leases, transactions) and Kubernetes (`coordination.k8s.io/v1` Lease
//! objects, updates compared on `resourceVersion`) — so the ownership,
//! balance and fencing logic is written once.
//!
//! The words are etcd's: a *lease* is a member's liveness (an etcd lease
//! id, or the epoch of a member's Lease object), an *owner* is a member
//! name with the lease it took the client on, a *revision* names the
//! record a write replaces.

use super::etcd::{Etcd, StoreError};
use super::kubernetes::KubeStore;
use std::time::Duration;

pub enum Store {
    Etcd(Etcd),
    Kubernetes(KubeStore),
}

/// One change of the store, in the order the store made it.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// A member is live on `lease`; `instance` tells two processes with
    /// one name apart.
    Member {
        name: String,
        instance: String,
        lease: i64,
    },
    MemberGone(String),
    /// A client's owner (name and lease), or none.
    Owner {
        client: String,
        owner: Option<(String, i64)>,
    },
    /// A client's sealed record and its revision, or none.
    Token {
        client: String,
        sealed: Option<(Vec<u8>, i64)>,
    },
}

/// What a refresh begins from.
#[derive(Debug)]
pub struct Begun {
    pub sealed: Option<(Vec<u8>, i64)>,
    /// A refresh was begun before and never ended.
    pub unfinished: bool,
}

/// An open feed of changes.
pub enum Feed {
    Etcd(super::etcd::Watch, String),
    Kubernetes(super::kubernetes::KubeWatch),
}

impl Feed {
    /// The next changes; an error when the feed ended (read it all again).
    pub async fn next(&mut self) -> Result<Vec<Change>, StoreError> {
        match self {
            Feed::Etcd(w, prefix) => {
                let events = w.next().await?;
                Ok(events
                    .iter()
                    .filter_map(|e| super::etcd::change(prefix, &e.key, e.put.as_ref()))
                    .collect())
            }
            Feed::Kubernetes(w) => w.next().await,
        }
    }
}

impl Store {
    /// A new lease of `ttl` for this member.
    pub async fn grant(&self, ttl: Duration) -> Result<i64, StoreError> {
        match self {
            Store::Etcd(e) => e.grant(ttl).await,
            Store::Kubernetes(k) => Ok(k.grant()),
        }
    }

    /// Renews `lease`: the seconds it has left (0: it is gone).
    pub async fn keepalive(&self, lease: i64) -> Result<i64, StoreError> {
        match self {
            Store::Etcd(e) => e.keepalive(lease).await,
            Store::Kubernetes(k) => k.keepalive(lease).await,
        }
    }

    /// Ends `lease` now: its clients are the others' at once.
    pub async fn revoke(&self, lease: i64) -> Result<(), StoreError> {
        match self {
            Store::Etcd(e) => e.revoke(lease).await,
            Store::Kubernetes(k) => k.revoke(lease).await,
        }
    }

    /// Puts this member in the store on `lease`; false while another live
    /// process has the name.
    pub async fn register(
        &self,
        name: &str,
        instance: &str,
        lease: i64,
    ) -> Result<bool, StoreError> {
        match self {
            Store::Etcd(e) => e.register(name, instance, lease).await,
            Store::Kubernetes(k) => k.register(instance, lease).await,
        }
    }

    /// Everything the store holds now, and a feed of what changes after.
    pub async fn snapshot(&self) -> Result<(Vec<Change>, Feed), StoreError> {
        match self {
            Store::Etcd(e) => e.snapshot().await,
            Store::Kubernetes(k) => k.snapshot().await,
        }
    }

    /// Makes `name` on `lease` the owner of `client`, if it has none or
    /// still has `replacing` (an owner whose lease the view saw end).
    pub async fn take(
        &self,
        client: &str,
        name: &str,
        lease: i64,
        replacing: Option<&(String, i64)>,
    ) -> Result<(), StoreError> {
        match self {
            Store::Etcd(e) => e.take(client, name, lease).await,
            Store::Kubernetes(k) => k.take(client, name, lease, replacing).await,
        }
    }

    /// `client` has no owner any more, if it was still on `lease`.
    pub async fn release(&self, client: &str, lease: i64) -> Result<(), StoreError> {
        match self {
            Store::Etcd(e) => e.release(client, lease).await,
            Store::Kubernetes(k) => k.release(client, lease).await,
        }
    }

    /// Reads the record and marks a refresh in flight, while `name` owns
    /// `client` on `lease` (`None` when it does not).
    pub async fn begin(
        &self,
        client: &str,
        name: &str,
        lease: i64,
    ) -> Result<Option<Begun>, StoreError> {
        match self {
            Store::Etcd(e) => e.begin(client, name, lease).await,
            Store::Kubernetes(k) => k.begin(client, name, lease).await,
        }
    }

    /// Removes the in-flight mark, while the owner is on `lease`.
    pub async fn settle(&self, client: &str, lease: i64) -> Result<(), StoreError> {
        match self {
            Store::Etcd(e) => e.settle(client, lease).await,
            Store::Kubernetes(k) => k.settle(client, lease).await,
        }
    }

    /// Writes `sealed` as the record and removes the mark, if the owner is
    /// still on `lease` and the record still at `revision` (0: none).
    pub async fn save(
        &self,
        client: &str,
        lease: i64,
        revision: i64,
        sealed: &[u8],
    ) -> Result<bool, StoreError> {
        match self {
            Store::Etcd(e) => e.save(client, lease, revision, sealed).await,
            Store::Kubernetes(k) => k.save(client, lease, revision, sealed).await,
        }
    }
}
