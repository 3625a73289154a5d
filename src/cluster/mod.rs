//! Cluster mode: members that share `[cluster]` share their clients
//! through etcd. Each client is owned by one live member at a time; the
//! owner alone sends its token requests and writes the token — with the
//! rotated refresh token, sealed ([`seal`]) — to the store, fenced by its
//! lease; every member watches the store and publishes what it reads to
//! its own outputs.
//!
//! Keys under `prefix`:
//! * `members/NAME` — one per live member, on its lease; the value is the
//!   process's instance id (two processes with one name are told apart).
//! * `owners/CLIENT` — the owner's name, on its lease: gone when the owner
//!   is (its lease expires, or it stops and revokes it).
//! * `tokens/CLIENT` — the sealed record of the newest token; no lease.
//! * `inflight/CLIENT` — a refresh was begun and has not ended: put with
//!   the read of the record, deleted with the write of the answer (or when
//!   the endpoint refused without rotating). Found at the start of a
//!   refresh, it says the record's refresh token may have been presented
//!   already (its member was killed with the request in flight).
//!
//! Who should own a client is rendezvous hashing over the live members
//! ([`rank`]); the owner hands a client over (deletes its owner key) when
//! another live member ranks first, and takes a client whose owner key is
//! gone when it ranks first. An owner stops sending requests before its
//! lease can have expired: [`Seat::fence`] answers only while the last
//! renewal's TTL, less a margin, has not run out, and a request is cut at
//! that point; the write of the answer compares the owner key's lease.

pub mod etcd;
pub mod kubernetes;
pub mod seal;
pub mod store;

use crate::grant::{CaBundle, ClientIdentity};
use crate::secret::Secret;
use crate::state::CachedToken;
use etcd::{Etcd, StoreError};
use kubernetes::{KubeSpec, KubeStore};
use seal::SealKey;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store::{Change, Store};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use url::Url;

#[derive(Clone, Debug, PartialEq)]
pub struct ClusterSpec {
    pub name: String,
    pub lease_ttl: Duration,
    pub key: SealKey,
    pub backend: BackendSpec,
}

/// The engine the members share.
#[derive(Clone, Debug, PartialEq)]
pub enum BackendSpec {
    Etcd(EtcdSpec),
    Kubernetes(KubeSpec),
}

#[derive(Clone, Debug, PartialEq)]
pub struct EtcdSpec {
    pub endpoints: Vec<Url>,
    pub ca_pem: Option<Arc<CaBundle>>,
    pub identity: Option<Arc<ClientIdentity>>,
    pub login: Option<(String, Secret)>,
    pub prefix: String,
}

/// What the store holds for one client, as this member last read it.
#[derive(Clone, Debug, Default)]
pub enum Stored {
    #[default]
    Nothing,
    Record(Arc<Record>),
    /// There is a record this member cannot read (another key, altered).
    Unreadable(String),
}

#[derive(Debug)]
pub struct Record {
    pub cached: CachedToken,
    /// The key's mod revision: a write compares it.
    pub revision: i64,
}

/// Owner keys taken or handed over at once by one member.
const BALANCE_IN_FLIGHT: usize = 32;

/// Sets a flag's channel to `value`; whether it changed. Only a change
/// wakes the receivers (every client task holds one of each).
fn set(flag: &watch::Sender<bool>, value: bool) -> bool {
    flag.send_if_modified(|v| std::mem::replace(v, value) != value)
}

/// The members ranked for `client`, best first: rendezvous hashing, so a
/// member joining or leaving moves only the clients it gains or had.
pub fn rank<'a>(client: &str, members: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut scored: Vec<(u64, &str)> = members
        .map(|m| {
            let d = Sha256::digest([m.as_bytes(), b"\0", client.as_bytes()].concat());
            let mut top = [0u8; 8];
            top.copy_from_slice(&d[..8]);
            (u64::from_be_bytes(top), m)
        })
        .collect();
    scored.sort_unstable_by(|a, b| b.cmp(a));
    scored.into_iter().map(|(_, m)| m).collect()
}

/// The lease of an owner, for one refresh: requests end before `until`.
#[derive(Clone, Copy, Debug)]
pub struct Fence {
    pub lease: i64,
    pub until: Instant,
}

/// Counters for `/metrics` and `/status`.
#[derive(Default)]
pub struct Stats {
    pub transitions: AtomicU64,
    pub store_errors: AtomicU64,
}

/// A member of the cluster: its lease, its view of the store, and the
/// seats of its clients.
pub struct Member {
    spec: Arc<ClusterSpec>,
    store: Store,
    instance: String,
    inner: Mutex<Inner>,
    /// Members or owners changed: rebalance.
    changed: Notify,
    /// Bumped when the lease is granted anew or renewed after a failure:
    /// the watch is opened again (a partition may have left it hanging).
    reconnected: watch::Sender<u64>,
    /// True while this member has been cut off from the store for longer
    /// than a lease (see [`Seat::cut_off`]).
    cut_off: watch::Sender<bool>,
    pub stats: Stats,
}

#[derive(Default)]
struct Inner {
    lease: i64,
    valid_until: Option<Instant>,
    registered: bool,
    /// The last renewal failed (said once per outage).
    failing: bool,
    /// Since when calls to the store fail.
    failing_since: Option<Instant>,
    duplicate_said: bool,
    /// The live members: their instance and lease.
    members: BTreeMap<String, (String, i64)>,
    /// Bumped when a member joins or leaves: each seat's rank is
    /// computed again.
    members_gen: u64,
    /// The seats whose owner changed since `update_owned` last looked
    /// (`None`: every seat is to be looked at).
    moved: Option<Vec<String>>,
    /// Whether the lease was live, and which, when it last looked.
    was_live: Option<(bool, i64)>,
    owners: HashMap<String, (String, i64)>,
    records: HashMap<String, Stored>,
    seats: HashMap<String, SeatSlot>,
}

struct SeatSlot {
    stored: watch::Sender<Stored>,
    owned: watch::Sender<bool>,
    busy: Arc<tokio::sync::Mutex<()>>,
    /// The member ranked first, as of `members_gen` (`ranked`).
    first: Option<String>,
    ranked: u64,
}

fn live_owner<'a>(
    owners: &'a HashMap<String, (String, i64)>,
    members: &BTreeMap<String, (String, i64)>,
    client: &str,
) -> Option<&'a (String, i64)> {
    owners
        .get(client)
        .filter(|(m, l)| members.get(m).is_some_and(|(_, live)| live == l))
}

impl Inner {
    /// The owner of `client`, while its lease is a live member's (on
    /// Kubernetes a Lease stays when its member is gone).
    fn owner(&self, client: &str) -> Option<&(String, i64)> {
        live_owner(&self.owners, &self.members, client)
    }

    /// `client`'s owner changed (or its seat is new).
    fn moved_one(&mut self, client: &str) {
        if let Some(list) = &mut self.moved {
            list.push(client.to_string());
        }
    }
}

impl Member {
    pub fn new(spec: Arc<ClusterSpec>) -> Result<Arc<Member>, String> {
        let store = match &spec.backend {
            BackendSpec::Etcd(e) => Store::Etcd(Etcd::new(e)?),
            BackendSpec::Kubernetes(k) => {
                Store::Kubernetes(KubeStore::new(k, &spec.name, spec.lease_ttl)?)
            }
        };
        let instance = format!("{:016x}", crate::daemon::client::jitter_sample().to_bits());
        Ok(Arc::new(Member {
            spec,
            store,
            instance,
            inner: Mutex::new(Inner::default()),
            changed: Notify::new(),
            reconnected: watch::channel(0).0,
            cut_off: watch::channel(false).0,
            stats: Stats::default(),
        }))
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    fn margin(&self) -> Duration {
        (self.spec.lease_ttl / 4).max(Duration::from_millis(500))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The seat of `client`: what the store holds for it and whether this
    /// member owns it.
    pub fn seat(self: &Arc<Member>, client: &str) -> Seat {
        let mut inner = self.lock();
        let stored_now = inner.records.get(client).cloned().unwrap_or_default();
        inner.moved_one(client);
        let slot = inner
            .seats
            .entry(client.to_string())
            .or_insert_with(|| SeatSlot {
                stored: watch::channel(stored_now).0,
                owned: watch::channel(false).0,
                busy: Arc::new(tokio::sync::Mutex::new(())),
                first: None,
                ranked: u64::MAX,
            });
        let seat = Seat {
            member: self.clone(),
            client: client.to_string(),
            stored: slot.stored.subscribe(),
            owned: slot.owned.subscribe(),
            cut_off: self.cut_off.subscribe(),
            busy: slot.busy.clone(),
        };
        drop(inner);
        self.changed.notify_one();
        seat
    }

    /// `client` is no longer configured: its seat goes, and its owner key
    /// if this member holds it.
    pub async fn leave(&self, client: &str) {
        let held = {
            let mut inner = self.lock();
            inner.seats.remove(client);
            let lease = inner.lease;
            (inner.owners.get(client) == Some(&(self.spec.name.clone(), lease)) && lease != 0)
                .then_some(lease)
        };
        if let Some(lease) = held {
            let _ = self.release(client, lease).await;
        }
    }

    /// `client` has no owner any more, if it was on `lease`.
    async fn release(&self, client: &str, lease: i64) -> Result<(), StoreError> {
        self.store.release(client, lease).await
    }

    /// The live members, and who owns each seated client (for `/status`).
    pub fn view(&self) -> (Vec<String>, BTreeMap<String, Option<String>>) {
        let inner = self.lock();
        let members = inner.members.keys().cloned().collect();
        let owners = inner
            .seats
            .keys()
            .map(|c| (c.clone(), inner.owner(c).map(|(m, _)| m.clone())))
            .collect();
        (members, owners)
    }

    /// Runs the member until `cancel`: the lease, the watch, the balance.
    /// At the end the lease is revoked, so the others take over at once.
    pub async fn run(self: Arc<Member>, cancel: CancellationToken) {
        let lease = tokio::spawn(self.clone().lease_loop(cancel.clone()));
        let watch = tokio::spawn(self.clone().watch_loop(cancel.clone()));
        let balance = tokio::spawn(self.clone().balance_loop(cancel.clone()));
        let _ = tokio::join!(lease, watch, balance);
        let lease = {
            let mut inner = self.lock();
            let lease = inner.lease;
            inner.lease = 0;
            inner.valid_until = None;
            lease
        };
        self.update_owned();
        if lease != 0 {
            match self.store.revoke(lease).await {
                Ok(()) => {
                    tracing::info!(member = %self.spec.name, "left the cluster: its clients are the others' now")
                }
                Err(e) => {
                    tracing::warn!(member = %self.spec.name, error = %e, "cannot revoke the lease on leaving: the others take over when it expires")
                }
            }
        }
    }

    fn store_error(&self, what: &str, e: &StoreError) {
        self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
        let first = {
            let mut inner = self.lock();
            inner.failing_since.get_or_insert_with(Instant::now);
            !std::mem::replace(&mut inner.failing, true)
        };
        if first {
            tracing::warn!(member = %self.spec.name, error = %e, "cluster store: {what} failed; tokens already here are kept and served, and no refresh chain is refreshed without the lease");
        } else {
            tracing::debug!(member = %self.spec.name, error = %e, "cluster store: {what} failed");
        }
    }

    async fn lease_loop(self: Arc<Member>, cancel: CancellationToken) {
        let ttl = self.spec.lease_ttl;
        let every = ttl / 3;
        loop {
            let (lease, registered) = {
                let inner = self.lock();
                (inner.lease, inner.registered)
            };
            if lease == 0 {
                let sent = Instant::now();
                match self.store.grant(ttl).await {
                    Ok(id) => {
                        let mut inner = self.lock();
                        inner.lease = id;
                        inner.valid_until = Some(sent + ttl);
                        inner.registered = false;
                        drop(inner);
                        self.reconnected.send_modify(|n| *n += 1);
                        continue;
                    }
                    Err(e) => {
                        self.store_error("granting a lease", &e);
                        self.update_owned();
                    }
                }
            } else if !registered {
                match self.register(lease).await {
                    Ok(true) => {
                        let mut inner = self.lock();
                        inner.registered = true;
                        inner.duplicate_said = false;
                        let recovered = std::mem::replace(&mut inner.failing, false);
                        inner.failing_since = None;
                        drop(inner);
                        set(&self.cut_off, false);
                        tracing::info!(member = %self.spec.name, recovered, "joined the cluster");
                        self.changed.notify_one();
                    }
                    Ok(false) => {}
                    Err(e) => self.store_error("registering", &e),
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let lease = self.lock().lease;
            if lease == 0 {
                continue;
            }
            let sent = Instant::now();
            match self.store.keepalive(lease).await {
                Ok(left) if left > 0 => {
                    let mut inner = self.lock();
                    inner.valid_until = Some(sent + Duration::from_secs(left as u64));
                    let recovered = std::mem::replace(&mut inner.failing, false);
                    inner.failing_since = None;
                    drop(inner);
                    set(&self.cut_off, false);
                    if recovered {
                        tracing::info!(member = %self.spec.name, "cluster store reachable again");
                        self.reconnected.send_modify(|n| *n += 1);
                    }
                }
                Ok(_) => {
                    tracing::warn!(member = %self.spec.name, "the lease expired: this member's clients went to the others; joining again");
                    self.lost_lease();
                }
                Err(e) => {
                    self.store_error("renewing the lease", &e);
                    let expired = self.lock().valid_until.is_none_or(|u| Instant::now() >= u);
                    if expired {
                        self.lost_lease();
                    }
                }
            }
            self.update_owned();
        }
    }

    fn lost_lease(&self) {
        let mut inner = self.lock();
        inner.lease = 0;
        inner.valid_until = None;
        inner.registered = false;
        drop(inner);
        self.update_owned();
    }

    /// Puts this member in the store on `lease`, unless another process
    /// has its name (said, and tried again later).
    async fn register(&self, lease: i64) -> Result<bool, StoreError> {
        if self
            .store
            .register(&self.spec.name, &self.instance, lease)
            .await?
        {
            return Ok(true);
        }
        let say = !std::mem::replace(&mut self.lock().duplicate_said, true);
        if say {
            tracing::error!(member = %self.spec.name, "another process holds this member's name (a second member with this [cluster] name, or this member's previous process until its lease ends): give each member its own name; this one waits, owning nothing, until the name is free");
        }
        Ok(false)
    }

    async fn watch_loop(self: Arc<Member>, cancel: CancellationToken) {
        let mut reconnected = self.reconnected.subscribe();
        loop {
            match self.store.snapshot().await {
                Ok((changes, mut feed)) => {
                    self.resync(changes);
                    loop {
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = reconnected.changed() => break,
                            next = feed.next() => match next {
                                Ok(changes) => {
                                    // a token's record concerns its seat
                                    // alone; members and owners, the balance
                                    let mut moved = false;
                                    for c in changes {
                                        moved |= self.apply(c);
                                    }
                                    if moved {
                                        self.update_owned();
                                        self.changed.notify_one();
                                    }
                                }
                                Err(e) => {
                                    self.store_error("watching", &e);
                                    break;
                                }
                            }
                        }
                    }
                }
                Err(e) => self.store_error("reading the store", &e),
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// The whole view from a full read.
    fn resync(&self, changes: Vec<Change>) {
        {
            let mut inner = self.lock();
            inner.members.clear();
            inner.members_gen += 1;
            inner.owners.clear();
            inner.moved = None;
            let gone: Vec<String> = inner.records.keys().cloned().collect();
            drop(inner);
            for client in gone {
                self.apply(Change::Token {
                    client,
                    sealed: None,
                });
            }
        }
        for c in changes {
            self.apply(c);
        }
        self.update_owned();
        self.changed.notify_one();
    }

    /// Applies one change to the view; whether members or owners changed.
    fn apply(&self, change: Change) -> bool {
        let mut inner = self.lock();
        match change {
            Change::Member {
                name,
                instance,
                lease,
            } => {
                let before = inner.members.insert(name, (instance, lease));
                if before.is_none_or(|(_, l)| l != lease) {
                    inner.members_gen += 1;
                    // owners on the lease that ended, or on the new one
                    inner.moved = None;
                }
            }
            Change::MemberGone(name) => {
                if inner.members.remove(&name).is_some() {
                    inner.members_gen += 1;
                    inner.moved = None;
                }
            }
            Change::Owner { client, owner } => {
                inner.moved_one(&client);
                match owner {
                    Some(o) => inner.owners.insert(client, o),
                    None => inner.owners.remove(&client),
                };
            }
            Change::Token { client, sealed } => {
                let stored = match sealed {
                    None => Stored::Nothing,
                    Some((value, revision)) => self.open(&client, &value, revision),
                };
                if let Some(slot) = inner.seats.get(&client) {
                    slot.stored.send_replace(stored.clone());
                }
                inner.records.insert(client, stored);
                return false;
            }
        }
        true
    }

    fn open(&self, client: &str, sealed: &[u8], revision: i64) -> Stored {
        match self.spec.key.open(client, sealed) {
            Ok(plain) => match crate::state::read_record(&plain) {
                Some(cached) => Stored::Record(Arc::new(Record { cached, revision })),
                None => Stored::Unreadable("is not a token record".into()),
            },
            Err(why) => Stored::Unreadable(why),
        }
    }

    /// Tells each seat whether this member owns it now, and whether the
    /// member is cut off.
    fn update_owned(&self) {
        let mut inner = self.lock();
        let live = inner.lease != 0
            && inner.registered
            && inner.valid_until.is_some_and(|u| Instant::now() < u);
        // a seat is looked at when its owner changed, every seat when the
        // lease did
        let moved = inner.moved.replace(Vec::new());
        let lease_moved = inner.was_live != Some((live, inner.lease));
        if !lease_moved && moved.as_ref().is_some_and(Vec::is_empty) {
            return;
        }
        inner.was_live = Some((live, inner.lease));
        let some = if lease_moved { None } else { moved };
        let cut_off = !live
            && inner
                .failing_since
                .is_some_and(|t| t.elapsed() >= self.spec.lease_ttl);
        if set(&self.cut_off, cut_off) && cut_off {
            tracing::warn!(member = %self.spec.name, "cut off from the cluster store for longer than a lease: clients without a refresh-token chain are refreshed here on their own until it is back; chains wait");
        }
        let look = |client: &String, slot: &SeatSlot| {
            let owned = live
                && inner
                    .owners
                    .get(client)
                    .is_some_and(|(m, l)| *m == self.spec.name && *l == inner.lease);
            if set(&slot.owned, owned) {
                self.stats.transitions.fetch_add(1, Ordering::Relaxed);
                tracing::info!(member = %self.spec.name, client = %client, owned, "ownership changed");
            }
        };
        match &some {
            None => inner.seats.iter().for_each(|(c, slot)| look(c, slot)),
            Some(clients) => {
                for c in clients {
                    if let Some(slot) = inner.seats.get(c) {
                        look(c, slot);
                    }
                }
            }
        }
    }

    async fn balance_loop(self: Arc<Member>, cancel: CancellationToken) {
        let every = self.spec.lease_ttl / 3;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.changed.notified() => {}
                _ = tokio::time::sleep(every) => {}
            }
            self.update_owned();
            self.balance().await;
        }
    }

    /// Takes the clients this member ranks first for and nobody owns;
    /// hands over the ones another live member ranks first for.
    async fn balance(self: &Arc<Member>) {
        let me = self.spec.name.clone();
        let (lease, take, give) = {
            let mut guard = self.lock();
            let inner = &mut *guard;
            let live = inner.lease != 0
                && inner.registered
                && inner
                    .valid_until
                    .is_some_and(|u| Instant::now() + self.margin() < u);
            if !live {
                return;
            }
            let mut take = Vec::new();
            let mut give = Vec::new();
            for (client, slot) in inner.seats.iter_mut() {
                if slot.ranked != inner.members_gen {
                    slot.first = rank(client, inner.members.keys().map(String::as_str))
                        .first()
                        .map(|m| m.to_string());
                    slot.ranked = inner.members_gen;
                }
                let first = &slot.first;
                match live_owner(&inner.owners, &inner.members, client) {
                    None if first.as_deref() == Some(me.as_str()) => {
                        take.push((client.clone(), inner.owners.get(client).cloned()))
                    }
                    Some((owner, l))
                        if *owner == me
                            && *l == inner.lease
                            && first.as_deref().is_some_and(|f| f != me) =>
                    {
                        give.push((client.clone(), slot.busy.clone()))
                    }
                    _ => {}
                }
            }
            (inner.lease, take, give)
        };
        // many at once (etcd commits them together); each a transaction of
        // its own, so one that loses a race fails alone
        let mut running = tokio::task::JoinSet::new();
        for (client, replacing) in take {
            if running.len() >= BALANCE_IN_FLIGHT {
                if let Some(Ok(Err(e))) = running.join_next().await {
                    self.store_error("taking a client", &e);
                    return;
                }
            }
            let (member, me) = (self.clone(), me.clone());
            running.spawn(async move {
                member
                    .store
                    .take(&client, &me, lease, replacing.as_ref())
                    .await
            });
        }
        for (client, busy) in give {
            // not while a refresh of it is in flight
            let Ok(held) = busy.try_lock_owned() else {
                continue;
            };
            if running.len() >= BALANCE_IN_FLIGHT {
                if let Some(Ok(Err(e))) = running.join_next().await {
                    self.store_error("handing a client over", &e);
                    return;
                }
            }
            let member = self.clone();
            running.spawn(async move {
                let done = member.release(&client, lease).await;
                if done.is_ok() {
                    // not owned from here on, whatever the watch says when
                    let mut inner = member.lock();
                    inner.owners.remove(&client);
                    inner.moved_one(&client);
                    drop(inner);
                    member.update_owned();
                }
                drop(held);
                done
            });
        }
        while let Some(done) = running.join_next().await {
            if let Ok(Err(e)) = done {
                self.store_error("balancing the clients", &e);
            }
        }
    }
}

/// One client's place in the cluster, held by its task.
pub struct Seat {
    member: Arc<Member>,
    client: String,
    pub stored: watch::Receiver<Stored>,
    pub owned: watch::Receiver<bool>,
    /// True while this member has been cut off from the store for longer
    /// than a lease: no member can be known to refresh this client, and
    /// one without a refresh-token chain is refreshed here on its own.
    pub cut_off: watch::Receiver<bool>,
    busy: Arc<tokio::sync::Mutex<()>>,
}

impl Seat {
    /// While this member owns the client and its lease is renewed: the
    /// lease, and when a request must have ended.
    pub fn fence(&self) -> Option<Fence> {
        let inner = self.member.lock();
        let until = inner.valid_until?.checked_sub(self.member.margin())?;
        let owned = inner.registered
            && inner.lease != 0
            && inner
                .owners
                .get(&self.client)
                .is_some_and(|(m, l)| *m == self.member.spec.name && *l == inner.lease);
        (owned && Instant::now() < until).then_some(Fence {
            lease: inner.lease,
            until,
        })
    }

    /// Held for one refresh: the client is not handed over meanwhile.
    pub async fn busy(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.busy.clone().lock_owned().await
    }

    /// Begins a refresh under `fence`: reads the store's record (the
    /// chain's truth) and marks a refresh in flight (`inflight/CLIENT`),
    /// in one transaction that holds only while this member owns the
    /// client. Also says whether a mark was there already: the last refresh
    /// begun never finished (its member was killed, or its request cut),
    /// so the record's refresh token may have been presented.
    /// `Ok(None)`: this member no longer owns the client.
    pub async fn begin(&self, fence: &Fence) -> Result<Option<(Stored, bool)>, StoreError> {
        let begun = self
            .member
            .store
            .begin(&self.client, &self.member.spec.name, fence.lease)
            .await?;
        Ok(begun.map(|b| {
            let stored = match b.sealed {
                None => Stored::Nothing,
                Some((sealed, revision)) => self.member.open(&self.client, &sealed, revision),
            };
            (stored, b.unfinished)
        }))
    }

    /// Ends a refresh that failed without a rotation (the endpoint
    /// answered, or was never reached): the mark goes.
    pub async fn settle(&self, fence: &Fence) -> Result<(), StoreError> {
        self.member.store.settle(&self.client, fence.lease).await
    }

    /// Writes `cached` as the client's record if this member still owns it
    /// under `fence` and the record is still the one at `revision` (0: none).
    /// `Ok(false)`: it was not written (the lease or the record moved on).
    pub async fn save(
        &self,
        fence: &Fence,
        revision: i64,
        cached: &CachedToken,
    ) -> Result<bool, StoreError> {
        let plain =
            crate::state::record(&cached.fingerprint, cached.seed.as_deref(), &cached.token)
                .map_err(|e| StoreError::Refused(format!("cannot encode the record: {e}")))?;
        let sealed = self
            .member
            .spec
            .key
            .seal(&self.client, plain.expose().as_bytes())
            .map_err(StoreError::Refused)?;
        let ok = self
            .member
            .store
            .save(&self.client, fence.lease, revision, &sealed)
            .await?;
        if !ok {
            self.member
                .stats
                .store_errors
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_moves_only_the_clients_of_the_member_that_left() {
        let three = ["a", "b", "c"];
        let two = ["a", "b"];
        let clients: Vec<String> = (0..3000).map(|i| format!("client-{i}")).collect();
        let mut per = HashMap::new();
        for c in &clients {
            let before = rank(c, three.iter().copied())[0];
            *per.entry(before).or_insert(0) += 1;
            let after = rank(c, two.iter().copied())[0];
            if before != "c" {
                assert_eq!(before, after, "{c} moved though its member stayed");
            }
        }
        for m in three {
            let n = per[m];
            assert!((800..1200).contains(&n), "{m} ranks first for {n} of 3000");
        }
        assert_eq!(rank("x", std::iter::empty()), Vec::<&str>::new());
    }
}
