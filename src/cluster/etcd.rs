//! etcd v3 through its JSON gateway (`/v3/…`, served by every etcd since
//! 3.3 on the client port): leases, ranges, transactions and watches are
//! plain JSON over HTTP(S), so reqwest is enough and no gRPC stack is
//! built. Keys and values are base64 in the JSON, 64-bit numbers strings.
//!
//! Every call tries the endpoints in turn, starting from the last that
//! answered; `Unreachable` means none did.

use super::store::{Begun, Change, Feed};
use crate::secret::Secret;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use url::Url;

#[derive(Clone, Debug, PartialEq)]
pub enum StoreError {
    /// No endpoint answered (a partition, every node down).
    Unreachable(String),
    /// An endpoint answered with an error.
    Refused(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Unreachable(m) | StoreError::Refused(m) => f.write_str(m),
        }
    }
}

/// One key as etcd holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
    pub lease: i64,
}

/// A change seen by a watch: `None` value for a deletion.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub key: String,
    pub put: Option<Kv>,
}

pub struct Etcd {
    http: reqwest::Client,
    /// Without a total timeout: a watch stays open.
    streaming: reqwest::Client,
    endpoints: Vec<Url>,
    preferred: AtomicUsize,
    login: Option<(String, Secret)>,
    auth: tokio::sync::Mutex<Option<String>>,
    /// Every key of the cluster is under it.
    prefix: String,
}

/// Longest wait for one call to one endpoint.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

impl Etcd {
    pub fn new(spec: &super::EtcdSpec) -> Result<Etcd, String> {
        let tls = || {
            crate::grant::http::tls_config_with(
                spec.ca_pem.as_deref().map(|c| &c.pem[..]),
                spec.identity.as_deref(),
            )
        };
        let builder = |tls| {
            crate::grant::http::client_builder(tls)
                .connect_timeout(Duration::from_secs(2))
                .tcp_keepalive(Duration::from_secs(5))
        };
        let http = builder(tls()?)
            .timeout(CALL_TIMEOUT)
            .build()
            .map_err(|e| format!("cannot set up HTTP client: {e}"))?;
        let streaming = builder(tls()?)
            .build()
            .map_err(|e| format!("cannot set up HTTP client: {e}"))?;
        Ok(Etcd {
            http,
            streaming,
            endpoints: spec.endpoints.clone(),
            preferred: AtomicUsize::new(0),
            login: spec.login.clone(),
            auth: tokio::sync::Mutex::new(None),
            prefix: spec.prefix.clone(),
        })
    }

    fn url(&self, i: usize, path: &str) -> String {
        format!("{}{path}", self.endpoints[i].as_str().trim_end_matches('/'))
    }

    /// The auth token for `username`/`password_file`, asked once and again
    /// when etcd says it is no longer valid.
    async fn authenticate(&self, i: usize, renew: bool) -> Result<Option<String>, StoreError> {
        let Some((user, password)) = &self.login else {
            return Ok(None);
        };
        let mut cached = self.auth.lock().await;
        if let (Some(t), false) = (&*cached, renew) {
            return Ok(Some(t.clone()));
        }
        let resp = self
            .http
            .post(self.url(i, "/v3/auth/authenticate"))
            .json(&json!({"name": user, "password": password.expose()}))
            .send()
            .await
            .map_err(|e| StoreError::Unreachable(describe(&self.endpoints[i], &e)))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or_default();
        match body.get("token").and_then(Value::as_str) {
            Some(t) if status.is_success() => {
                *cached = Some(t.to_string());
                Ok(Some(t.to_string()))
            }
            _ => Err(StoreError::Refused(format!(
                "etcd refused user {user:?}: {}",
                error_text(&body, status)
            ))),
        }
    }

    /// POSTs `body` to `path` on the first endpoint that answers.
    async fn call(&self, path: &str, body: &Value) -> Result<Value, StoreError> {
        let n = self.endpoints.len();
        let start = self.preferred.load(Ordering::Relaxed);
        let mut last = StoreError::Unreachable("no endpoint".into());
        for k in 0..n {
            let i = (start + k) % n;
            match self.call_one(i, path, body).await {
                Ok(v) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(e @ StoreError::Refused(_)) => return Err(e),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn call_one(&self, i: usize, path: &str, body: &Value) -> Result<Value, StoreError> {
        let mut renew = false;
        loop {
            let token = self.authenticate(i, renew).await?;
            let mut req = self.http.post(self.url(i, path)).json(body);
            if let Some(t) = &token {
                req = req.header("Authorization", t);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| StoreError::Unreachable(describe(&self.endpoints[i], &e)))?;
            let status = resp.status();
            let value: Value = resp.json().await.unwrap_or_default();
            if status.is_success() {
                return Ok(value);
            }
            let text = error_text(&value, status);
            if token.is_some() && !renew && text.contains("invalid auth token") {
                renew = true;
                continue;
            }
            // a node without a leader (partitioned, or electing) cannot
            // answer: another may
            if status.is_server_error() || text.contains("no leader") {
                return Err(StoreError::Unreachable(format!(
                    "{}: {text}",
                    self.endpoints[i]
                )));
            }
            return Err(StoreError::Refused(format!(
                "{}: {text}",
                self.endpoints[i]
            )));
        }
    }

    /// A lease of `ttl`; its id.
    pub async fn grant(&self, ttl: Duration) -> Result<i64, StoreError> {
        let v = self
            .call(
                "/v3/lease/grant",
                &json!({"TTL": ttl.as_secs().to_string()}),
            )
            .await?;
        num(&v["ID"]).ok_or_else(|| StoreError::Refused("etcd granted no lease".into()))
    }

    /// Renews lease `id`; its remaining TTL in seconds (0: it is gone).
    pub async fn keepalive(&self, id: i64) -> Result<i64, StoreError> {
        let v = self
            .call("/v3/lease/keepalive", &json!({"ID": id.to_string()}))
            .await?;
        Ok(num(&v["result"]["TTL"]).unwrap_or(0))
    }

    pub async fn revoke(&self, id: i64) -> Result<(), StoreError> {
        self.call("/v3/lease/revoke", &json!({"ID": id.to_string()}))
            .await
            .map(drop)
    }

    /// Every key under `prefix`, and the store's revision.
    pub async fn range_prefix(&self, prefix: &str) -> Result<(i64, Vec<Kv>), StoreError> {
        let v = self
            .call(
                "/v3/kv/range",
                &json!({"key": b64(prefix), "range_end": b64(prefix_end(prefix))}),
            )
            .await?;
        let rev = num(&v["header"]["revision"]).unwrap_or(0);
        let kvs = v["kvs"]
            .as_array()
            .map_or(Vec::new(), |a| a.iter().filter_map(kv).collect());
        Ok((rev, kvs))
    }

    /// A transaction; whether the compares held.
    pub async fn txn(
        &self,
        compare: Vec<Value>,
        success: Vec<Value>,
        failure: Vec<Value>,
    ) -> Result<(bool, Value), StoreError> {
        let v = self
            .call(
                "/v3/kv/txn",
                &json!({"compare": compare, "success": success, "failure": failure}),
            )
            .await?;
        Ok((v["succeeded"].as_bool().unwrap_or(false), v))
    }

    /// A watch of every key under `prefix` from revision `from`.
    pub async fn watch(&self, prefix: &str, from: i64) -> Result<Watch, StoreError> {
        let n = self.endpoints.len();
        let start = self.preferred.load(Ordering::Relaxed);
        let body = json!({"create_request": {
            "key": b64(prefix), "range_end": b64(prefix_end(prefix)),
            "start_revision": from.to_string(),
        }});
        let mut last = StoreError::Unreachable("no endpoint".into());
        for k in 0..n {
            let i = (start + k) % n;
            let token = match self.authenticate(i, false).await {
                Ok(t) => t,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let mut req = self.streaming.post(self.url(i, "/v3/watch")).json(&body);
            if let Some(t) = &token {
                req = req.header("Authorization", t);
            }
            match tokio::time::timeout(CALL_TIMEOUT, req.send()).await {
                Ok(Ok(resp)) if resp.status().is_success() => {
                    return Ok(Watch {
                        resp,
                        buf: Vec::new(),
                    });
                }
                Ok(Ok(resp)) => {
                    last = StoreError::Refused(format!(
                        "{}: watch refused: HTTP {}",
                        self.endpoints[i],
                        resp.status()
                    ))
                }
                Ok(Err(e)) => last = StoreError::Unreachable(describe(&self.endpoints[i], &e)),
                Err(_) => {
                    last = StoreError::Unreachable(format!("{}: no answer", self.endpoints[i]))
                }
            }
        }
        Err(last)
    }
}

/// The cluster's operations ([`super::store::Store`]) as keys under
/// `prefix`: `members/NAME` and `owners/CLIENT` on their member's lease,
/// `tokens/CLIENT` (the sealed record), `inflight/CLIENT` (a refresh begun).
impl Etcd {
    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}{kind}/{name}", self.prefix)
    }

    pub async fn register(
        &self,
        name: &str,
        instance: &str,
        lease: i64,
    ) -> Result<bool, StoreError> {
        let key = self.key("members", name);
        let (ok, answer) = self
            .txn(
                vec![ops::absent(&key)],
                vec![ops::put(&key, instance.as_bytes(), lease)],
                vec![ops::get(&key)],
            )
            .await?;
        if ok {
            return Ok(true);
        }
        let Some(kv) = first_kv(&answer["responses"][0]) else {
            return Ok(false);
        };
        if kv.value != instance.as_bytes() {
            return Ok(false);
        }
        if kv.lease == lease {
            return Ok(true);
        }
        // this process's key on its earlier lease (etcd restored it after
        // a restart of every node): moved onto the new one, or it would
        // vanish with the old
        let (moved, _) = self
            .txn(
                vec![ops::mod_revision(&key, kv.mod_revision)],
                vec![ops::put(&key, instance.as_bytes(), lease)],
                vec![],
            )
            .await?;
        Ok(moved)
    }

    pub async fn snapshot(&self) -> Result<(Vec<Change>, Feed), StoreError> {
        let (rev, kvs) = self.range_prefix(&self.prefix).await?;
        let changes = kvs
            .iter()
            .filter_map(|kv| change(&self.prefix, &kv.key, Some(kv)))
            .collect();
        let watch = self.watch(&self.prefix, rev + 1).await?;
        Ok((changes, Feed::Etcd(watch, self.prefix.clone())))
    }

    pub async fn take(&self, client: &str, name: &str, lease: i64) -> Result<(), StoreError> {
        let key = self.key("owners", client);
        self.txn(
            vec![ops::absent(&key)],
            vec![ops::put(&key, name.as_bytes(), lease)],
            vec![],
        )
        .await
        .map(drop)
    }

    pub async fn release(&self, client: &str, lease: i64) -> Result<(), StoreError> {
        let key = self.key("owners", client);
        self.txn(
            vec![ops::has_lease(&key, lease)],
            vec![ops::delete(&key)],
            vec![],
        )
        .await
        .map(drop)
    }

    pub async fn begin(
        &self,
        client: &str,
        name: &str,
        lease: i64,
    ) -> Result<Option<Begun>, StoreError> {
        let (owners, tokens, inflight) = (
            self.key("owners", client),
            self.key("tokens", client),
            self.key("inflight", client),
        );
        let (ok, answer) = self
            .txn(
                vec![ops::has_lease(&owners, lease)],
                vec![
                    ops::get(&tokens),
                    ops::get(&inflight),
                    ops::put(&inflight, name.as_bytes(), 0),
                ],
                vec![],
            )
            .await?;
        if !ok {
            return Ok(None);
        }
        let responses = &answer["responses"];
        Ok(Some(Begun {
            sealed: first_kv(&responses[0]).map(|kv| (kv.value, kv.mod_revision)),
            unfinished: first_kv(&responses[1]).is_some(),
        }))
    }

    pub async fn settle(&self, client: &str, lease: i64) -> Result<(), StoreError> {
        let (owners, inflight) = (self.key("owners", client), self.key("inflight", client));
        self.txn(
            vec![ops::has_lease(&owners, lease)],
            vec![ops::delete(&inflight)],
            vec![],
        )
        .await
        .map(drop)
    }

    pub async fn save(
        &self,
        client: &str,
        lease: i64,
        revision: i64,
        sealed: &[u8],
    ) -> Result<bool, StoreError> {
        let (owners, tokens, inflight) = (
            self.key("owners", client),
            self.key("tokens", client),
            self.key("inflight", client),
        );
        let unchanged = if revision == 0 {
            ops::absent(&tokens)
        } else {
            ops::mod_revision(&tokens, revision)
        };
        let (ok, _) = self
            .txn(
                vec![ops::has_lease(&owners, lease), unchanged],
                vec![ops::put(&tokens, sealed, 0), ops::delete(&inflight)],
                vec![],
            )
            .await?;
        Ok(ok)
    }
}

/// A key's change under `prefix` as the cluster's [`Change`].
pub fn change(prefix: &str, key: &str, put: Option<&Kv>) -> Option<Change> {
    let (kind, name) = key.strip_prefix(prefix)?.split_once('/')?;
    let name = name.to_string();
    Some(match (kind, put) {
        ("members", Some(kv)) => Change::Member {
            name,
            instance: String::from_utf8_lossy(&kv.value).into_owned(),
            lease: kv.lease,
        },
        ("members", None) => Change::MemberGone(name),
        ("owners", put) => Change::Owner {
            client: name,
            owner: put.map(|kv| (String::from_utf8_lossy(&kv.value).into_owned(), kv.lease)),
        },
        ("tokens", put) => Change::Token {
            client: name,
            sealed: put.map(|kv| (kv.value.clone(), kv.mod_revision)),
        },
        _ => return None,
    })
}

/// An open watch: a stream of JSON objects, one per line.
pub struct Watch {
    resp: reqwest::Response,
    buf: Vec<u8>,
}

impl Watch {
    /// The next batch of events (empty for a progress or creation notice);
    /// an error when the stream ended or etcd cancelled it (compacted).
    pub async fn next(&mut self) -> Result<Vec<Event>, StoreError> {
        loop {
            if let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                let trimmed = line.trim_ascii();
                if trimmed.is_empty() {
                    continue;
                }
                let v: Value = serde_json::from_slice(trimmed).map_err(|_| {
                    StoreError::Refused("the watch sent something unreadable".into())
                })?;
                return events(&v);
            }
            match self.resp.chunk().await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk),
                Ok(None) => return Err(StoreError::Unreachable("the watch ended".into())),
                Err(e) => {
                    return Err(StoreError::Unreachable(format!("the watch broke: {e}")));
                }
            }
        }
    }
}

fn events(v: &Value) -> Result<Vec<Event>, StoreError> {
    if let Some(e) = v.get("error") {
        return Err(StoreError::Refused(format!(
            "the watch failed: {}",
            e["message"].as_str().unwrap_or("?")
        )));
    }
    let r = &v["result"];
    if r["canceled"].as_bool() == Some(true) {
        return Err(StoreError::Refused(format!(
            "etcd cancelled the watch: {}",
            r["cancel_reason"].as_str().unwrap_or("compacted")
        )));
    }
    Ok(r["events"].as_array().map_or(Vec::new(), |a| {
        a.iter()
            .filter_map(|e| {
                let kv_json = &e["kv"];
                let key = unb64(kv_json["key"].as_str()?)?;
                let key = String::from_utf8(key).ok()?;
                let deleted = e["type"].as_str() == Some("DELETE");
                Some(Event {
                    put: if deleted { None } else { kv(kv_json) },
                    key,
                })
            })
            .collect()
    }))
}

/// The first key of a transaction's range response.
pub fn first_kv(response: &Value) -> Option<Kv> {
    response["response_range"]["kvs"]
        .as_array()?
        .first()
        .and_then(kv)
}

fn kv(v: &Value) -> Option<Kv> {
    Some(Kv {
        key: String::from_utf8(unb64(v["key"].as_str()?)?).ok()?,
        value: v["value"].as_str().map_or(Some(Vec::new()), unb64)?,
        mod_revision: num(&v["mod_revision"]).unwrap_or(0),
        lease: num(&v["lease"]).unwrap_or(0),
    })
}

fn num(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

pub fn b64(s: impl AsRef<[u8]>) -> String {
    B64.encode(s)
}

fn unb64(s: &str) -> Option<Vec<u8>> {
    B64.decode(s).ok()
}

/// The end of the range of keys starting with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn error_text(v: &Value, status: reqwest::StatusCode) -> String {
    v.get("message")
        .or_else(|| v.get("error"))
        .and_then(Value::as_str)
        .map_or_else(|| format!("HTTP {status}"), str::to_string)
}

fn describe(endpoint: &Url, e: &reqwest::Error) -> String {
    format!(
        "cannot reach etcd at {endpoint}: {}",
        crate::grant::http::describe(e)
    )
}

/// The compare and requests the members use, by name.
pub mod ops {
    use super::b64;
    use serde_json::{Value, json};

    pub fn absent(key: &str) -> Value {
        json!({"key": b64(key), "target": "CREATE", "create_revision": "0"})
    }
    pub fn has_lease(key: &str, lease: i64) -> Value {
        json!({"key": b64(key), "target": "LEASE", "lease": lease.to_string()})
    }
    pub fn mod_revision(key: &str, revision: i64) -> Value {
        json!({"key": b64(key), "target": "MOD", "mod_revision": revision.to_string()})
    }
    pub fn put(key: &str, value: &[u8], lease: i64) -> Value {
        let mut put = json!({"key": b64(key), "value": b64(value)});
        if lease != 0 {
            put["lease"] = json!(lease.to_string());
        }
        json!({"request_put": put})
    }
    pub fn delete(key: &str) -> Value {
        json!({"request_delete_range": {"key": b64(key)}})
    }
    pub fn get(key: &str) -> Value {
        json!({"request_range": {"key": b64(key)}})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_range_ends_after_its_last_key() {
        assert_eq!(prefix_end("/tk/"), b"/tk0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }

    #[test]
    fn watch_events_are_read_from_the_gateway_json() {
        let v: Value = serde_json::from_str(r#"{"result":{"header":{"revision":"4"},"events":[
            {"kv":{"key":"L3RrL3Rva2VuL2I=","create_revision":"4","mod_revision":"4","version":"1","value":"eA==","lease":"7"}},
            {"type":"DELETE","kv":{"key":"L3RrL3Rva2VuL2E=","mod_revision":"5"}}]}}"#).unwrap();
        let e = events(&v).unwrap();
        assert_eq!(e[0].key, "/tk/token/b");
        assert_eq!(e[0].put.as_ref().unwrap().value, b"x");
        assert_eq!(e[0].put.as_ref().unwrap().lease, 7);
        assert_eq!(
            e[1],
            Event {
                key: "/tk/token/a".into(),
                put: None
            }
        );
        let cancelled: Value =
            serde_json::from_str(r#"{"result":{"canceled":true,"compact_revision":"9"}}"#).unwrap();
        assert!(events(&cancelled).is_err());
    }
}
