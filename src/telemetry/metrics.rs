//! Prometheus metrics (prometheus-client). Everything a dashboard or an alert
//! needs per client: when its token expires, when it last succeeded, refreshes
//! and failures by reason, token endpoint latency, output write failures, and
//! config reloads. Never a token.
//!
//! A client's series live in one small [`ClientMetrics`] that its tasks update
//! without hashing a label or taking a shared lock, and that a collector reads
//! at scrape time. (prometheus-client's `Family` keeps a hash-map entry, a
//! label string and a lock per series: with eight families and a
//! histogram, most of an idle client's memory; docs/benchmarks.md, "Where
//! the memory went".)

use crate::grant::Reason;
use crate::output::OutputReason;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

fn unix_seconds(t: SystemTime) -> f64 {
    crate::token::unix_millis(t) as f64 / 1000.0
}

/// Upper bounds of the token request latency buckets: 5 ms doubling to
/// 40.96 s (and +Inf).
const LATENCY_BUCKETS: usize = 14;

fn latency_bound(i: usize) -> f64 {
    if i < LATENCY_BUCKETS {
        0.005 * (1u64 << i) as f64
    } else {
        f64::INFINITY
    }
}

/// Token endpoint latency of one client: counts per bucket (not cumulative).
#[derive(Debug, Default)]
struct Latency {
    sum: f64,
    count: u64,
    buckets: [u64; LATENCY_BUCKETS + 1],
}

impl Latency {
    fn observe(&mut self, seconds: f64) {
        self.sum += seconds;
        self.count += 1;
        let i = (0..LATENCY_BUCKETS)
            .find(|&i| seconds <= latency_bound(i))
            .unwrap_or(LATENCY_BUCKETS);
        self.buckets[i] += 1;
    }
}

#[derive(Clone, Debug, Default)]
struct OutputValues {
    label: Box<str>,
    writes: u64,
    failures: u64,
    /// `failures` by [`OutputReason`].
    by_reason: [u32; OutputReason::ALL.len()],
    hook_failures: u64,
}

#[derive(Debug, Default)]
struct Values {
    /// Unix seconds; `None` (no series) until the client has a token.
    token_expiry: Option<f64>,
    token_lifetime: Option<f64>,
    last_success: Option<f64>,
    refreshes: u64,
    /// By [`Reason`]; a reason appears once it has happened.
    failures: [u64; Reason::ALL.len()],
    consecutive_failures: u32,
    needs_attention: bool,
    latency: Latency,
    /// In the order of the client's outputs.
    outputs: Box<[OutputValues]>,
}

/// One client's series. Its client task and output workers update it; the
/// scrape reads it.
#[derive(Debug, Default)]
pub struct ClientMetrics(Mutex<Values>);

impl ClientMetrics {
    fn values(&self) -> MutexGuard<'_, Values> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The client holds a token: when it expires, and its lifetime.
    pub fn token(&self, expires_at: SystemTime, lifetime: Duration) {
        let mut v = self.values();
        v.token_expiry = Some(unix_seconds(expires_at));
        v.token_lifetime = Some(lifetime.as_secs_f64());
    }

    /// A token request took `took`, whatever its outcome.
    pub fn request(&self, took: Duration) {
        self.values().latency.observe(took.as_secs_f64());
    }

    /// A token was obtained, issued at `issued_at`.
    pub fn success(&self, issued_at: SystemTime) {
        let mut v = self.values();
        v.refreshes += 1;
        v.last_success = Some(unix_seconds(issued_at));
        v.consecutive_failures = 0;
        v.needs_attention = false;
    }

    /// A token request failed; `consecutive` counts this one.
    pub fn failure(&self, reason: Reason, consecutive: u32, permanent: bool) {
        let mut v = self.values();
        v.failures[reason as usize] += 1;
        v.consecutive_failures = consecutive;
        v.needs_attention = permanent;
    }

    /// Output `index` was written and changed; `hook_failures` of its hooks
    /// failed.
    pub fn output_written(&self, index: usize, hook_failures: usize) {
        if let Some(o) = self.values().outputs.get_mut(index) {
            o.writes += 1;
            o.hook_failures += hook_failures as u64;
        }
    }

    /// A write of output `index` failed, for `reason`.
    pub fn output_failed(&self, index: usize, reason: OutputReason) {
        if let Some(o) = self.values().outputs.get_mut(index) {
            o.failures += 1;
            o.by_reason[reason as usize] += 1;
        }
    }
}

type ByClient = BTreeMap<Box<str>, Arc<ClientMetrics>>;

/// Every client's series, by client name: the collector.
#[derive(Debug, Default)]
struct Clients(Mutex<ByClient>);

impl Clients {
    fn lock(&self) -> MutexGuard<'_, ByClient> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Encodes one metric family: its descriptor, then `sample` for each
/// client (which writes nothing for a client without that series).
fn family(
    encoder: &mut DescriptorEncoder,
    (name, help, kind): (&str, &str, MetricType),
    clients: &ByClient,
    mut sample: impl FnMut(&str, &Values, &mut MetricEncoder) -> fmt::Result,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (client, series) in clients {
        sample(client, &series.values(), &mut metric)?;
    }
    Ok(())
}

fn gauge(metric: &mut MetricEncoder, client: &str, value: f64) -> fmt::Result {
    ConstGauge::new(value).encode(metric.encode_family(&[("client", client)])?)
}

fn counter(metric: &mut MetricEncoder, labels: &[(&str, &str)], value: u64) -> fmt::Result {
    ConstCounter::new(value).encode(metric.encode_family(&labels)?)
}

/// A metric's name, help, and how to read its value.
type Series<T, V> = (&'static str, &'static str, fn(&T) -> V);

const GAUGE: MetricType = MetricType::Gauge;
const COUNTER: MetricType = MetricType::Counter;

impl Collector for Clients {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let clients = self.lock();
        let e = &mut e;
        let c = &*clients;
        #[rustfmt::skip]
        let gauges: [Series<Values, Option<f64>>; 5] = [
            ("token_expiry_timestamp_seconds", "When the client's current token expires (Unix time)", |v| v.token_expiry),
            ("token_lifetime_seconds", "Lifetime of the client's current token", |v| v.token_lifetime),
            ("last_success_timestamp_seconds", "When the client last got a token (Unix time)", |v| v.last_success),
            ("consecutive_failures", "Failed token requests since the last success", |v| Some(v.consecutive_failures.into())),
            ("needs_attention", "1 while the endpoint refuses the client (credentials, grant)", |v| Some(u8::from(v.needs_attention).into())),
        ];
        for (name, help, value) in gauges {
            family(e, (name, help, GAUGE), c, |client, v, m| match value(v) {
                Some(x) => gauge(m, client, x),
                None => Ok(()),
            })?;
        }
        family(
            e,
            ("refreshes", "Tokens obtained", COUNTER),
            c,
            |client, v, m| counter(m, &[("client", client)], v.refreshes),
        )?;
        let failures = (
            "refresh_failures",
            "Failed token requests, by reason",
            COUNTER,
        );
        family(e, failures, c, |client, v, m| {
            for (reason, &n) in Reason::ALL.iter().zip(&v.failures) {
                if n > 0 {
                    counter(m, &[("client", client), ("reason", reason.as_str())], n)?;
                }
            }
            Ok(())
        })?;
        let latency = (
            "token_request_duration_seconds",
            "Token endpoint latency",
            MetricType::Histogram,
        );
        family(e, latency, c, |client, v, m| {
            let l = &v.latency;
            let buckets: [(f64, u64); LATENCY_BUCKETS + 1] =
                std::array::from_fn(|i| (latency_bound(i), l.buckets[i]));
            m.encode_family(&[("client", client)])?
                .encode_histogram::<NoLabelSet>(l.sum, l.count, &buckets, None)
        })?;
        #[rustfmt::skip]
        let outputs: [Series<OutputValues, u64>; 3] = [
            ("output_writes", "Writes that changed an output", |o| o.writes),
            ("output_write_failures", "Failed output writes", |o| o.failures),
            ("hook_failures", "Failed exec or signal hooks", |o| o.hook_failures),
        ];
        for (name, help, value) in outputs {
            family(e, (name, help, COUNTER), c, |client, v, m| {
                for o in &v.outputs {
                    counter(m, &[("client", client), ("output", &o.label)], value(o))?;
                }
                Ok(())
            })?;
        }
        let by_reason = (
            "output_failures",
            "Failed output writes, by reason",
            COUNTER,
        );
        family(e, by_reason, c, |client, v, m| {
            for o in &v.outputs {
                for (reason, &n) in OutputReason::ALL.iter().zip(&o.by_reason) {
                    if n > 0 {
                        let labels = [
                            ("client", client),
                            ("output", &o.label),
                            ("reason", reason.as_str()),
                        ];
                        counter(m, &labels, n.into())?;
                    }
                }
            }
            Ok(())
        })?;
        Ok(())
    }
}

pub struct Metrics {
    registry: Registry,
    clients_series: Arc<Clients>,
    pub reloads: Counter,
    pub reload_failures: Counter,
    pub clients: Gauge,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::with_prefix("tokenkeeper");
        let m = Metrics {
            registry: Registry::default(),
            clients_series: Arc::default(),
            reloads: Counter::default(),
            reload_failures: Counter::default(),
            clients: Gauge::default(),
        };
        registry.register_collector(Box::new(m.clients_series.clone()));
        registry.register(
            "config_reloads",
            "Config reloads applied",
            m.reloads.clone(),
        );
        registry.register(
            "config_reload_failures",
            "Config reloads refused as invalid",
            m.reload_failures.clone(),
        );
        registry.register("clients", "Configured clients", m.clients.clone());
        Metrics { registry, ..m }
    }
}

/// Cluster mode: the member's view, read at each scrape.
struct ClusterSeries(Arc<crate::cluster::Member>);

impl std::fmt::Debug for ClusterSeries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSeries")
    }
}

impl Collector for ClusterSeries {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        use std::sync::atomic::Ordering::Relaxed;
        let member = &self.0;
        let (members, owners) = member.view();
        let me = member.name();
        let m = e.encode_descriptor(
            "cluster_members",
            "Live members of the cluster, as this member sees them",
            None,
            GAUGE,
        )?;
        ConstGauge::new(members.len() as i64).encode(m)?;
        let mut m = e.encode_descriptor(
            "cluster_owned",
            "1 while this member owns the client (it alone refreshes it); summed over the members, 1 per client",
            None,
            GAUGE,
        )?;
        for (client, owner) in &owners {
            let owned = i64::from(owner.as_deref() == Some(me));
            ConstGauge::new(owned).encode(m.encode_family(&[("client", client.as_str())])?)?;
        }
        let m = e.encode_descriptor(
            "cluster_lease_transitions",
            "Clients this member gained or lost",
            None,
            COUNTER,
        )?;
        ConstCounter::new(member.stats.transitions.load(Relaxed)).encode(m)?;
        let m = e.encode_descriptor(
            "cluster_store_errors",
            "Failed calls to the cluster store, and refused fenced writes",
            None,
            COUNTER,
        )?;
        ConstCounter::new(member.stats.store_errors.load(Relaxed)).encode(m)?;
        Ok(())
    }
}

impl Metrics {
    /// Cluster mode: the member's series too.
    pub fn with_cluster(mut self, member: Option<Arc<crate::cluster::Member>>) -> Metrics {
        if let Some(member) = member {
            self.registry
                .register_collector(Box::new(ClusterSeries(member)));
        }
        self
    }

    /// The series of client `name`, whose outputs have these labels. A
    /// client that (re)starts after a change keeps its counts, and those of
    /// the outputs it still has; the others are forgotten. (The stopped
    /// tasks of the old client share the struct until they notice their
    /// cancellation; an output index past the new list is ignored.)
    pub fn client(&self, name: &str, outputs: &[String]) -> Arc<ClientMetrics> {
        let series = self
            .clients_series
            .lock()
            .entry(name.into())
            .or_default()
            .clone();
        {
            let mut v = series.values();
            let old = std::mem::take(&mut v.outputs);
            v.outputs = outputs
                .iter()
                .map(|label| {
                    old.iter()
                        .find(|o| *o.label == **label)
                        .cloned()
                        .unwrap_or_else(|| OutputValues {
                            label: label.as_str().into(),
                            ..OutputValues::default()
                        })
                })
                .collect();
        }
        series
    }

    /// Forgets a removed client's series.
    pub fn remove_client(&self, name: &str) {
        self.clients_series.lock().remove(name);
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// `openmetrics` in the classic Prometheus text format (0.0.4), for a
/// scraper that does not ask for OpenMetrics (curl, `promtool check
/// metrics`, older agents): a counter family is named by its samples
/// (`x_total`, which OpenMetrics names `x`), there is no `# UNIT` or
/// `# EOF`, and `unknown` is `untyped`.
pub fn classic(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        let renamed = |rest: &str, tag: &str| {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            if counters.contains(name) {
                format!("# {tag} {name}_total {tail}")
            } else {
                format!("# {tag} {rest}")
            }
        };
        let line = if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            renamed(rest, "HELP")
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            renamed(rest, "TYPE").replace(" unknown", " untyped")
        } else {
            line.to_string()
        };
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str, prefix: &str) -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn a_client_has_its_series_and_a_token_adds_the_token_gauges() {
        let m = Metrics::default();
        let c = m.client("shop", &["file:/run/a".into()]);
        let text = m.encode();
        assert_eq!(
            lines(&text, "tokenkeeper_refreshes_total"),
            ["tokenkeeper_refreshes_total{client=\"shop\"} 0"]
        );
        assert!(!text.contains("tokenkeeper_token_expiry_timestamp_seconds{"));
        assert!(!text.contains("tokenkeeper_refresh_failures_total{"));

        let at = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        c.token(at(1_800_000_600), Duration::from_secs(600));
        c.request(Duration::from_millis(30));
        c.failure(Reason::ServerError, 1, false);
        c.request(Duration::from_secs(100));
        c.success(at(1_800_000_000));
        c.output_written(0, 1);
        c.output_failed(0, OutputReason::Unreachable);
        c.output_failed(7, OutputReason::Refused); // an index the client no longer has: ignored
        let text = m.encode();
        for line in [
            "tokenkeeper_token_expiry_timestamp_seconds{client=\"shop\"} 1800000600.0",
            "tokenkeeper_token_lifetime_seconds{client=\"shop\"} 600.0",
            "tokenkeeper_last_success_timestamp_seconds{client=\"shop\"} 1800000000.0",
            "tokenkeeper_refreshes_total{client=\"shop\"} 1",
            "tokenkeeper_refresh_failures_total{client=\"shop\",reason=\"server_error\"} 1",
            "tokenkeeper_consecutive_failures{client=\"shop\"} 0.0",
            "tokenkeeper_needs_attention{client=\"shop\"} 0.0",
            "tokenkeeper_token_request_duration_seconds_count{client=\"shop\"} 2",
            "tokenkeeper_token_request_duration_seconds_bucket{le=\"0.02\",client=\"shop\"} 0",
            "tokenkeeper_token_request_duration_seconds_bucket{le=\"0.04\",client=\"shop\"} 1",
            "tokenkeeper_token_request_duration_seconds_bucket{le=\"40.96\",client=\"shop\"} 1",
            "tokenkeeper_token_request_duration_seconds_bucket{le=\"+Inf\",client=\"shop\"} 2",
            "tokenkeeper_output_writes_total{client=\"shop\",output=\"file:/run/a\"} 1",
            "tokenkeeper_output_write_failures_total{client=\"shop\",output=\"file:/run/a\"} 1",
            "tokenkeeper_hook_failures_total{client=\"shop\",output=\"file:/run/a\"} 1",
            "tokenkeeper_output_failures_total{client=\"shop\",output=\"file:/run/a\",reason=\"unreachable\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }

    #[test]
    fn a_changed_client_keeps_its_counts_and_a_removed_one_goes() {
        let m = Metrics::default();
        let c = m.client("shop", &["a".into(), "b".into()]);
        c.success(crate::clock::SystemClock.now());
        c.output_written(0, 0);
        c.output_written(1, 0);
        let c = m.client("shop", &["b".into(), "c".into()]);
        c.output_written(0, 0);
        let text = m.encode();
        assert_eq!(
            lines(&text, "tokenkeeper_output_writes_total"),
            [
                "tokenkeeper_output_writes_total{client=\"shop\",output=\"b\"} 2",
                "tokenkeeper_output_writes_total{client=\"shop\",output=\"c\"} 0",
            ]
        );
        assert_eq!(
            lines(&text, "tokenkeeper_refreshes_total"),
            ["tokenkeeper_refreshes_total{client=\"shop\"} 1"]
        );
        m.remove_client("shop");
        assert!(!m.encode().contains("client=\"shop\""));
    }

    #[test]
    fn the_classic_format_names_a_counter_family_by_its_samples() {
        let open = "# HELP x_refreshes Refreshes.\n# TYPE x_refreshes counter\nx_refreshes_total{client=\"a\"} 1\n# HELP x_age Age.\n# TYPE x_age gauge\n# UNIT x_age seconds\nx_age 2\n# TYPE x_other unknown\nx_other 3\n# EOF\n";
        assert_eq!(
            classic(open),
            "# HELP x_refreshes_total Refreshes.\n# TYPE x_refreshes_total counter\nx_refreshes_total{client=\"a\"} 1\n# HELP x_age Age.\n# TYPE x_age gauge\nx_age 2\n# TYPE x_other untyped\nx_other 3\n"
        );
    }
}
