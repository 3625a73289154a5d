//! The cluster's store on Kubernetes: `coordination.k8s.io/v1` Lease
//! objects in one namespace, every write an update compared on the
//! object's `resourceVersion` (a 409 Conflict is a lost race, read again).
//!
//! * `{lease_prefix}member-NAME` — one per member, renewed every third of
//!   the lease: `holderIdentity` the member, `leaseDurationSeconds` the
//!   lease, annotations the process's instance and the *epoch* (the
//!   member's lease id: new each time it joins).
//! * `{lease_prefix}client-CLIENT` — one per client: `holderIdentity` the
//!   owner and the owner's epoch; the sealed record, its revision and the
//!   in-flight mark as annotations, so taking, beginning and saving are
//!   each one compare-and-swap on one object.
//!
//! Kubernetes does not expire a Lease: a member is gone when its Lease
//! has not changed for its `leaseDurationSeconds` as *this* member's clock
//! measures from when it saw the change (as client-go's leader election
//! does) — never sooner than the owner's own fence, which counts from
//! before it sent the renewal. An owner whose renewals failed for a whole
//! lease joins again with a new epoch, so its old ownerships are void.
//! A member seen gone is deleted (compared on its `resourceVersion`).

use super::etcd::StoreError;
use super::store::{Begun, Change, Feed};
use crate::kube::KubeClient;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
const NAME: &str = "tokenkeeper.io/name";
const INSTANCE: &str = "tokenkeeper.io/instance";
const EPOCH: &str = "tokenkeeper.io/epoch";
const RECORD: &str = "tokenkeeper.io/record";
const REVISION: &str = "tokenkeeper.io/revision";
const INFLIGHT: &str = "tokenkeeper.io/inflight";

/// How long the API server keeps one watch open before it is opened
/// again from the last version seen.
const WATCH_SECONDS: u64 = 60;
/// Tries of one compare-and-swap that keeps losing races.
const TRIES: usize = 5;

#[derive(Clone, Debug, PartialEq)]
pub struct KubeSpec {
    pub api: crate::kube::KubeApi,
    pub namespace: String,
    pub lease_prefix: String,
}

pub struct KubeStore {
    shared: Arc<Shared>,
}

struct Shared {
    kube: KubeClient,
    /// `/apis/coordination.k8s.io/v1/namespaces/NS/leases`
    base: String,
    prefix: String,
    /// This member's name and its Lease's name.
    name: String,
    member_lease: String,
    ttl: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    epoch: i64,
    /// This member's Lease as last written, and when that write was sent.
    mine: Option<(Value, Instant)>,
    /// Member Leases as seen: their version, since when, for how long.
    seen: HashMap<String, Seen>,
    /// Client Leases as last read or written (a write tries it first).
    objects: HashMap<String, Value>,
}

struct Seen {
    /// The member's name.
    name: String,
    version: String,
    since: Instant,
    ttl: Duration,
    /// Seen expire: said once, and its Lease deleted.
    gone: bool,
}

/// What one compare-and-swap writes, from the object as read.
enum Step<T> {
    Write(Value, T),
    Done(T),
}

impl KubeStore {
    pub fn new(spec: &KubeSpec, name: &str, ttl: Duration) -> Result<KubeStore, String> {
        Ok(KubeStore {
            shared: Arc::new(Shared {
                kube: KubeClient::new(spec.api.clone())?,
                base: format!(
                    "/apis/coordination.k8s.io/v1/namespaces/{}/leases",
                    spec.namespace
                ),
                prefix: spec.lease_prefix.clone(),
                name: name.to_string(),
                member_lease: object_name(&spec.lease_prefix, "member", name),
                ttl,
                state: Mutex::new(State::default()),
            }),
        })
    }

    pub fn grant(&self) -> i64 {
        let epoch = new_epoch();
        self.shared.lock().epoch = epoch;
        epoch
    }

    pub async fn register(&self, instance: &str, lease: i64) -> Result<bool, StoreError> {
        let s = &self.shared;
        let sent = Instant::now();
        let (status, current) = s.call(Method::GET, &s.member_lease, None).await?;
        let ttl = lease_seconds(s.ttl);
        let now = micro_time();
        let fresh = |base: Value| {
            let mut o = base;
            o["apiVersion"] = json!("coordination.k8s.io/v1");
            o["kind"] = json!("Lease");
            o["metadata"]["name"] = json!(s.member_lease);
            o["metadata"]["labels"][MANAGED_BY] = json!("tokenkeeper");
            let a = &mut o["metadata"]["annotations"];
            a[NAME] = json!(s.name);
            a[INSTANCE] = json!(instance);
            a[EPOCH] = json!(lease.to_string());
            o["spec"]["holderIdentity"] = json!(s.name);
            o["spec"]["leaseDurationSeconds"] = json!(ttl);
            o["spec"]["acquireTime"] = json!(now);
            o["spec"]["renewTime"] = json!(now);
            o
        };
        let written = if status == StatusCode::NOT_FOUND {
            s.call(Method::POST, "", Some(&fresh(json!({})))).await?.1
        } else {
            let ours = annotation(&current, INSTANCE) == Some(instance);
            let version = version(&current).to_string();
            let expired = {
                let mut state = s.lock();
                let seen = state
                    .seen
                    .entry(s.member_lease.clone())
                    .or_insert_with(|| Seen {
                        name: s.name.clone(),
                        version: version.clone(),
                        since: Instant::now(),
                        ttl: lease_ttl_of(&current),
                        gone: false,
                    });
                if seen.version != version {
                    seen.version = version.clone();
                    seen.since = Instant::now();
                    seen.gone = false;
                }
                seen.since.elapsed() >= seen.ttl
            };
            if !ours && !expired {
                return Ok(false);
            }
            s.call(Method::PUT, &s.member_lease, Some(&fresh(current)))
                .await?
                .1
        };
        if written.is_null() {
            // a race with a process of the same name: looked at again
            return Ok(false);
        }
        let mut state = s.lock();
        if state.epoch == lease {
            state.mine = Some((written, sent));
        }
        Ok(true)
    }

    pub async fn keepalive(&self, lease: i64) -> Result<i64, StoreError> {
        let s = &self.shared;
        let ttl = s.ttl.as_secs().max(1);
        let mine = {
            let state = s.lock();
            match &state.mine {
                // renewals failed for a whole lease: the others may have
                // seen it expire, so the epoch is over
                Some((o, sent)) if state.epoch == lease && sent.elapsed().as_secs() < ttl => {
                    o.clone()
                }
                _ => return Ok(0),
            }
        };
        let mut o = mine;
        o["spec"]["renewTime"] = json!(micro_time());
        let sent = Instant::now();
        let (_, written) = s.call(Method::PUT, &s.member_lease, Some(&o)).await?;
        if written.is_null() {
            // changed or deleted by another: the name is someone else's
            return Ok(0);
        }
        let mut state = s.lock();
        if state.epoch != lease {
            return Ok(0);
        }
        state.mine = Some((written, sent));
        Ok(ttl as i64)
    }

    pub async fn revoke(&self, lease: i64) -> Result<(), StoreError> {
        let s = &self.shared;
        let mine = {
            let mut state = s.lock();
            if state.epoch != lease {
                return Ok(());
            }
            state.mine.take()
        };
        if let Some((o, _)) = mine {
            s.delete(&s.member_lease, version(&o)).await?;
        }
        Ok(())
    }

    pub async fn snapshot(&self) -> Result<(Vec<Change>, Feed), StoreError> {
        let s = &self.shared;
        let (_, list) = s
            .call(
                Method::GET,
                &format!("?labelSelector={MANAGED_BY}%3Dtokenkeeper"),
                None,
            )
            .await?;
        let from = list["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut watch = KubeWatch {
            shared: s.clone(),
            from,
            resp: None,
            buf: Vec::new(),
            revisions: HashMap::new(),
        };
        let mut changes = Vec::new();
        for o in list["items"].as_array().into_iter().flatten() {
            changes.extend(watch.apply(o, false));
        }
        Ok((changes, Feed::Kubernetes(watch)))
    }

    pub async fn take(
        &self,
        client: &str,
        name: &str,
        lease: i64,
        replacing: Option<&(String, i64)>,
    ) -> Result<(), StoreError> {
        let now = micro_time();
        let ttl = lease_seconds(self.shared.ttl);
        self.shared
            .modify(client, |o| {
                let o = match o {
                    None => new_client(&self.shared.prefix, client),
                    Some(o) if owner_of(o).is_none() || owner_of(o).as_ref() == replacing => {
                        o.clone()
                    }
                    Some(_) => return Step::Done(()),
                };
                let mut o = o;
                let moves = o["spec"]["leaseTransitions"].as_i64().unwrap_or(0);
                let had = owner_of(&o).is_some();
                o["spec"]["holderIdentity"] = json!(name);
                o["spec"]["leaseDurationSeconds"] = json!(ttl);
                o["spec"]["acquireTime"] = json!(now);
                o["spec"]["renewTime"] = json!(now);
                o["spec"]["leaseTransitions"] = json!(moves + i64::from(had));
                o["metadata"]["annotations"][EPOCH] = json!(lease.to_string());
                Step::Write(o, ())
            })
            .await
    }

    pub async fn release(&self, client: &str, lease: i64) -> Result<(), StoreError> {
        self.shared
            .modify(client, |o| match o {
                Some(o) if owner_of(o).is_some_and(|(_, l)| l == lease) => {
                    let mut o = o.clone();
                    if let Some(spec) = o["spec"].as_object_mut() {
                        spec.remove("holderIdentity");
                    }
                    if let Some(a) = o["metadata"]["annotations"].as_object_mut() {
                        a.remove(EPOCH);
                    }
                    Step::Write(o, ())
                }
                _ => Step::Done(()),
            })
            .await
    }

    pub async fn begin(
        &self,
        client: &str,
        name: &str,
        lease: i64,
    ) -> Result<Option<Begun>, StoreError> {
        self.shared
            .modify(client, |o| match o {
                Some(o) if owner_of(o) == Some((name.to_string(), lease)) => {
                    let begun = Begun {
                        sealed: record_of(o),
                        unfinished: annotation(o, INFLIGHT).is_some(),
                    };
                    let mut o = o.clone();
                    o["metadata"]["annotations"][INFLIGHT] = json!(name);
                    Step::Write(o, Some(begun))
                }
                _ => Step::Done(None),
            })
            .await
    }

    pub async fn settle(&self, client: &str, lease: i64) -> Result<(), StoreError> {
        self.shared
            .modify(client, |o| match o {
                Some(o)
                    if owner_of(o).is_some_and(|(_, l)| l == lease)
                        && annotation(o, INFLIGHT).is_some() =>
                {
                    let mut o = o.clone();
                    if let Some(a) = o["metadata"]["annotations"].as_object_mut() {
                        a.remove(INFLIGHT);
                    }
                    Step::Write(o, ())
                }
                _ => Step::Done(()),
            })
            .await
    }

    pub async fn save(
        &self,
        client: &str,
        lease: i64,
        revision: i64,
        sealed: &[u8],
    ) -> Result<bool, StoreError> {
        use base64::Engine;
        let text = base64::engine::general_purpose::STANDARD.encode(sealed);
        self.shared
            .modify(client, |o| match o {
                Some(o)
                    if owner_of(o).is_some_and(|(_, l)| l == lease)
                        && record_of(o).map_or(0, |(_, r)| r) == revision =>
                {
                    let mut o = o.clone();
                    let a = &mut o["metadata"]["annotations"];
                    a[RECORD] = json!(text);
                    a[REVISION] = json!((revision + 1).to_string());
                    if let Some(a) = a.as_object_mut() {
                        a.remove(INFLIGHT);
                    }
                    Step::Write(o, true)
                }
                _ => Step::Done(false),
            })
            .await
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One call to the Lease API at `path` (after the collection's);
    /// `Null` for 404 Not Found and 409 Conflict (the caller looks again).
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), StoreError> {
        let sep = if path.is_empty() || path.starts_with('?') {
            ""
        } else {
            "/"
        };
        let url = self.kube.url(&format!("{}{sep}{path}", self.base));
        let mut asked_again = false;
        loop {
            let auth = self
                .kube
                .authorization()
                .await
                .map_err(StoreError::Refused)?;
            let mut req = self.kube.http().request(method.clone(), &url);
            if let Some(a) = auth {
                req = req.header(reqwest::header::AUTHORIZATION, a);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = req.send().await.map_err(|e| {
                StoreError::Unreachable(format!(
                    "cannot reach the Kubernetes API at {}: {}",
                    self.kube.server(),
                    crate::grant::http::describe(&e)
                ))
            })?;
            let status = resp.status();
            let value: Value = resp.json().await.unwrap_or_default();
            if status.is_success() {
                return Ok((status, value));
            }
            if matches!(status, StatusCode::NOT_FOUND | StatusCode::CONFLICT) {
                return Ok((status, Value::Null));
            }
            if status == StatusCode::UNAUTHORIZED && !asked_again {
                self.kube.forget_credential().await;
                asked_again = true;
                continue;
            }
            let what = format!(
                "the Kubernetes API refused {method} {}{sep}{}: HTTP {status}: {}",
                self.base.rsplit('/').next().unwrap_or("leases"),
                path.split('?').next().unwrap_or_default(),
                value["message"].as_str().unwrap_or("(no message)")
            );
            return Err(
                if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                    StoreError::Unreachable(what)
                } else {
                    StoreError::Refused(what)
                },
            );
        }
    }

    async fn delete(&self, name: &str, version: &str) -> Result<(), StoreError> {
        let body = json!({"apiVersion": "v1", "kind": "DeleteOptions",
            "preconditions": {"resourceVersion": version}});
        self.call(Method::DELETE, name, Some(&body)).await.map(drop)
    }

    /// A compare-and-swap on the client's Lease: `step` decides from the
    /// object as read (`None`: there is none) what to write; a lost race
    /// reads it again.
    async fn modify<T>(
        &self,
        client: &str,
        step: impl Fn(Option<&Value>) -> Step<T>,
    ) -> Result<T, StoreError> {
        let name = object_name(&self.prefix, "client", client);
        let mut cached = self.lock().objects.get(&name).cloned();
        for _ in 0..TRIES {
            let current = match cached.take() {
                Some(o) => Some(o),
                None => {
                    let (status, o) = self.call(Method::GET, &name, None).await?;
                    (status != StatusCode::NOT_FOUND && !o.is_null()).then_some(o)
                }
            };
            let (new, out) = match step(current.as_ref()) {
                Step::Done(out) => return Ok(out),
                Step::Write(new, out) => (new, out),
            };
            let (_, written) = match current {
                None => self.call(Method::POST, "", Some(&new)).await?,
                Some(_) => self.call(Method::PUT, &name, Some(&new)).await?,
            };
            if !written.is_null() {
                self.lock().objects.insert(name, written);
                return Ok(out);
            }
            self.lock().objects.remove(&name);
        }
        Err(StoreError::Unreachable(format!(
            "the Lease {name} kept changing under {TRIES} updates"
        )))
    }
}

/// The feed of a Lease watch, and members seen expire.
pub struct KubeWatch {
    shared: Arc<Shared>,
    /// The last version seen: a watch that ends is opened again from it.
    from: String,
    resp: Option<reqwest::Response>,
    buf: Vec<u8>,
    /// The record revision last told per client Lease (an owner's change
    /// alone does not tell the record again).
    revisions: HashMap<String, i64>,
}

impl KubeWatch {
    pub async fn next(&mut self) -> Result<Vec<Change>, StoreError> {
        loop {
            let gone = self.expired();
            if !gone.is_empty() {
                return Ok(gone);
            }
            if let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                let Ok(v) = serde_json::from_slice::<Value>(line.trim_ascii()) else {
                    continue;
                };
                let changes = self.event(&v)?;
                if !changes.is_empty() {
                    return Ok(changes);
                }
                continue;
            }
            if self.resp.is_none() {
                self.resp = Some(self.open().await?);
            }
            let deadline = self.next_expiry();
            let Some(resp) = self.resp.as_mut() else {
                continue;
            };
            tokio::select! {
                chunk = resp.chunk() => match chunk {
                    Ok(Some(c)) => self.buf.extend_from_slice(&c),
                    // the API server ends a watch after its timeout: open
                    // it again from the last version seen
                    Ok(None) => self.resp = None,
                    Err(e) => {
                        return Err(StoreError::Unreachable(format!("the Lease watch broke: {e}")));
                    }
                },
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    async fn open(&self) -> Result<reqwest::Response, StoreError> {
        let s = &self.shared;
        let url = s.kube.url(&format!(
            "{}?watch=true&allowWatchBookmarks=true&timeoutSeconds={WATCH_SECONDS}&resourceVersion={}&labelSelector={MANAGED_BY}%3Dtokenkeeper",
            s.base, self.from
        ));
        let auth = s.kube.authorization().await.map_err(StoreError::Refused)?;
        let mut req = s
            .kube
            .http()
            .get(url)
            .timeout(Duration::from_secs(WATCH_SECONDS + 30));
        if let Some(a) = auth {
            req = req.header(reqwest::header::AUTHORIZATION, a);
        }
        let resp = req.send().await.map_err(|e| {
            StoreError::Unreachable(format!(
                "cannot watch the Leases: {}",
                crate::grant::http::describe(&e)
            ))
        })?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            s.kube.forget_credential().await;
        }
        if !resp.status().is_success() {
            return Err(StoreError::Refused(format!(
                "the Kubernetes API refused watching the Leases: HTTP {}",
                resp.status()
            )));
        }
        Ok(resp)
    }

    fn event(&mut self, v: &Value) -> Result<Vec<Change>, StoreError> {
        let o = &v["object"];
        if let Some(rv) = o["metadata"]["resourceVersion"].as_str() {
            self.from = rv.to_string();
        }
        match v["type"].as_str() {
            Some("ADDED" | "MODIFIED") => Ok(self.apply(o, false)),
            Some("DELETED") => Ok(self.apply(o, true)),
            Some("ERROR") => Err(StoreError::Refused(format!(
                "the Lease watch ended: {}",
                o["message"].as_str().unwrap_or("(no message)")
            ))),
            _ => Ok(Vec::new()),
        }
    }

    /// The changes one Lease object says.
    fn apply(&mut self, o: &Value, deleted: bool) -> Vec<Change> {
        let s = &self.shared;
        let object = o["metadata"]["name"].as_str().unwrap_or_default();
        let Some(rest) = object.strip_prefix(&s.prefix) else {
            return Vec::new();
        };
        let Some(name) = annotation(o, NAME).map(str::to_string) else {
            return Vec::new();
        };
        if rest.starts_with("member-") {
            let mut state = s.lock();
            if deleted {
                state.seen.remove(object);
                return vec![Change::MemberGone(name)];
            }
            let version = version(o).to_string();
            let seen = state.seen.entry(object.to_string()).or_insert(Seen {
                name: name.clone(),
                version: String::new(),
                since: Instant::now(),
                ttl: Duration::ZERO,
                gone: false,
            });
            if seen.version != version {
                *seen = Seen {
                    name: name.clone(),
                    version,
                    since: Instant::now(),
                    ttl: lease_ttl_of(o),
                    gone: false,
                };
            }
            if seen.gone {
                return Vec::new();
            }
            let lease = annotation(o, EPOCH)
                .and_then(|e| e.parse().ok())
                .unwrap_or(0);
            vec![Change::Member {
                name,
                instance: annotation(o, INSTANCE).unwrap_or_default().to_string(),
                lease,
            }]
        } else if rest.starts_with("client-") {
            let mut out = Vec::new();
            if deleted {
                s.lock().objects.remove(object);
                self.revisions.remove(object);
                out.push(Change::Owner {
                    client: name.clone(),
                    owner: None,
                });
                out.push(Change::Token {
                    client: name,
                    sealed: None,
                });
                return out;
            }
            s.lock().objects.insert(object.to_string(), o.clone());
            out.push(Change::Owner {
                client: name.clone(),
                owner: owner_of(o),
            });
            let record = record_of(o);
            let revision = record.as_ref().map_or(0, |(_, r)| *r);
            if self.revisions.insert(object.to_string(), revision) != Some(revision) {
                out.push(Change::Token {
                    client: name,
                    sealed: record,
                });
            }
            out
        } else {
            Vec::new()
        }
    }

    /// Members whose Lease has not changed for its duration: gone, and
    /// their Lease deleted (unless it changed meanwhile).
    fn expired(&mut self) -> Vec<Change> {
        let s = &self.shared;
        let mut gone = Vec::new();
        let mut state = s.lock();
        for (object, seen) in state.seen.iter_mut() {
            if !seen.gone && *object != s.member_lease && seen.since.elapsed() >= seen.ttl {
                seen.gone = true;
                gone.push((object.clone(), seen.version.clone(), seen.name.clone()));
            }
        }
        drop(state);
        gone.into_iter()
            .map(|(object, version, name)| {
                let shared = s.clone();
                tokio::spawn(async move {
                    let _ = shared.delete(&object, &version).await;
                });
                Change::MemberGone(name)
            })
            .collect()
    }

    fn next_expiry(&self) -> Instant {
        let s = &self.shared;
        let state = s.lock();
        state
            .seen
            .iter()
            .filter(|(o, seen)| !seen.gone && **o != s.member_lease)
            .map(|(_, seen)| seen.since + seen.ttl)
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))
    }
}

/// The Lease object's name for a member or a client: `name` as it is
/// when it is a DNS label already, else made one and told apart by a hash.
pub fn object_name(prefix: &str, kind: &str, name: &str) -> String {
    let mut label: String = name
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-' | '.') => c,
            _ => '-',
        })
        .collect();
    let clean = label == name
        && label.starts_with(|c: char| c.is_ascii_alphanumeric())
        && label.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !clean {
        let d = Sha256::digest(name.as_bytes());
        label = format!(
            "{}-{:02x}{:02x}{:02x}{:02x}",
            label.trim_matches(|c: char| !c.is_ascii_alphanumeric()),
            d[0],
            d[1],
            d[2],
            d[3]
        );
    }
    let mut out = format!("{prefix}{kind}-{label}");
    if out.len() > 253 {
        let d = Sha256::digest(name.as_bytes());
        out.truncate(240);
        out = format!(
            "{}-{:02x}{:02x}{:02x}{:02x}",
            out.trim_end_matches(|c: char| !c.is_ascii_alphanumeric()),
            d[0],
            d[1],
            d[2],
            d[3]
        );
    }
    out
}

fn new_client(prefix: &str, client: &str) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": object_name(prefix, "client", client),
            "labels": {MANAGED_BY: "tokenkeeper"},
            "annotations": {NAME: client},
        },
        "spec": {},
    })
}

fn annotation<'a>(o: &'a Value, key: &str) -> Option<&'a str> {
    o["metadata"]["annotations"][key].as_str()
}

fn version(o: &Value) -> &str {
    o["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default()
}

/// The owner of a client's Lease: its holder and the holder's epoch.
fn owner_of(o: &Value) -> Option<(String, i64)> {
    let holder = o["spec"]["holderIdentity"]
        .as_str()
        .filter(|h| !h.is_empty())?;
    let epoch = annotation(o, EPOCH)?.parse().ok()?;
    Some((holder.to_string(), epoch))
}

/// The sealed record of a client's Lease and its revision.
fn record_of(o: &Value) -> Option<(Vec<u8>, i64)> {
    use base64::Engine;
    let sealed = base64::engine::general_purpose::STANDARD
        .decode(annotation(o, RECORD)?)
        .ok()?;
    let revision = annotation(o, REVISION)?.parse().ok()?;
    Some((sealed, revision))
}

fn lease_ttl_of(o: &Value) -> Duration {
    Duration::from_secs(o["spec"]["leaseDurationSeconds"].as_u64().unwrap_or(15))
}

/// The lease as whole seconds, rounded up: the others wait at least as
/// long as this member counts.
fn lease_seconds(ttl: Duration) -> u64 {
    ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0)
}

/// A Kubernetes MicroTime: now, in UTC, to the microsecond.
fn micro_time() -> String {
    let f = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    time::OffsetDateTime::from(crate::clock::SystemClock.now())
        .format(&f)
        .unwrap_or_default()
}

/// A new epoch: random, positive, never 0.
fn new_epoch() -> i64 {
    let bits = crate::daemon::client::jitter_sample().to_bits();
    ((bits ^ rand_bits()) as i64 & i64::MAX).max(1)
}

fn rand_bits() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_names_are_dns_labels_and_stay_apart() {
        assert_eq!(object_name("tk-", "client", "shop"), "tk-client-shop");
        assert_eq!(
            object_name("tk-", "member", "pod-7f9c-x2"),
            "tk-member-pod-7f9c-x2"
        );
        let a = object_name("tk-", "client", "Shop_EU");
        let b = object_name("tk-", "client", "shop-eu");
        assert!(a.starts_with("tk-client-shop-eu-"), "{a}");
        assert_ne!(a, b);
        let long = object_name("tk-", "client", &"x".repeat(400));
        assert!(long.len() <= 253, "{}", long.len());
    }

    #[test]
    fn owner_and_record_are_read_from_the_object() {
        let mut o = new_client("tk-", "shop");
        assert_eq!(owner_of(&o), None);
        assert_eq!(record_of(&o), None);
        o["spec"]["holderIdentity"] = json!("host-a");
        o["metadata"]["annotations"][EPOCH] = json!("42");
        o["metadata"]["annotations"][RECORD] = json!("eA==");
        o["metadata"]["annotations"][REVISION] = json!("3");
        assert_eq!(owner_of(&o), Some(("host-a".into(), 42)));
        assert_eq!(record_of(&o), Some((b"x".to_vec(), 3)));
        assert_eq!(lease_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(lease_seconds(Duration::from_secs(15)), 15);
        assert!(micro_time().ends_with('Z') && micro_time().len() == 27);
    }
}
