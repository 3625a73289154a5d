//! Prometheus metrics (prometheus-client). Everything a dashboard or an alert
//! needs per client: when its token expires, when it last succeeded, refreshes
//! and failures by reason, token endpoint latency, output write failures, and
//! config reloads. Never a token.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClientLabel {
    pub client: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub client: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutputLabels {
    pub client: String,
    pub output: String,
}

fn histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

pub struct Metrics {
    registry: Registry,
    pub token_expiry: Family<ClientLabel, Gauge<f64, AtomicU64>>,
    pub token_lifetime: Family<ClientLabel, Gauge<f64, AtomicU64>>,
    pub last_success: Family<ClientLabel, Gauge<f64, AtomicU64>>,
    pub refreshes: Family<ClientLabel, Counter>,
    pub failures: Family<ReasonLabels, Counter>,
    pub consecutive_failures: Family<ClientLabel, Gauge>,
    pub needs_attention: Family<ClientLabel, Gauge>,
    pub request_duration: Family<ClientLabel, Histogram, fn() -> Histogram>,
    pub output_writes: Family<OutputLabels, Counter>,
    pub output_failures: Family<OutputLabels, Counter>,
    pub hook_failures: Family<OutputLabels, Counter>,
    pub reloads: Counter,
    pub reload_failures: Counter,
    pub clients: Gauge,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::with_prefix("tokenkeeper");
        let m = Metrics {
            token_expiry: Family::default(),
            token_lifetime: Family::default(),
            last_success: Family::default(),
            refreshes: Family::default(),
            failures: Family::default(),
            consecutive_failures: Family::default(),
            needs_attention: Family::default(),
            request_duration: Family::new_with_constructor(histogram as fn() -> Histogram),
            output_writes: Family::default(),
            output_failures: Family::default(),
            hook_failures: Family::default(),
            reloads: Counter::default(),
            reload_failures: Counter::default(),
            clients: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "token_expiry_timestamp_seconds",
            "When the client's current token expires (Unix time)",
            m.token_expiry.clone(),
        );
        registry.register(
            "token_lifetime_seconds",
            "Lifetime of the client's current token",
            m.token_lifetime.clone(),
        );
        registry.register(
            "last_success_timestamp_seconds",
            "When the client last got a token (Unix time)",
            m.last_success.clone(),
        );
        registry.register("refreshes", "Tokens obtained", m.refreshes.clone());
        registry.register(
            "refresh_failures",
            "Failed token requests, by reason",
            m.failures.clone(),
        );
        registry.register(
            "consecutive_failures",
            "Failed token requests since the last success",
            m.consecutive_failures.clone(),
        );
        registry.register(
            "needs_attention",
            "1 while the endpoint refuses the client (credentials, grant)",
            m.needs_attention.clone(),
        );
        registry.register(
            "token_request_duration_seconds",
            "Token endpoint latency",
            m.request_duration.clone(),
        );
        registry.register(
            "output_writes",
            "Writes that changed an output",
            m.output_writes.clone(),
        );
        registry.register(
            "output_write_failures",
            "Failed output writes",
            m.output_failures.clone(),
        );
        registry.register(
            "hook_failures",
            "Failed exec or signal hooks",
            m.hook_failures.clone(),
        );
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

impl Metrics {
    pub fn client(name: &str) -> ClientLabel {
        ClientLabel {
            client: name.to_string(),
        }
    }

    /// Forgets a removed client's series.
    pub fn remove_client(&self, name: &str) {
        let l = Metrics::client(name);
        for family in [&self.token_expiry, &self.token_lifetime, &self.last_success] {
            family.remove(&l);
        }
        self.refreshes.remove(&l);
        self.consecutive_failures.remove(&l);
        self.needs_attention.remove(&l);
        self.request_duration.remove(&l);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
