//! The router's Prometheus metrics (`/metrics`, OpenMetrics text).
//!
//! Decision counters are created up front, one per (endpoint, outcome), so the hot path is one
//! atomic increment with no label hashing. Table and sync gauges are read at scrape time.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Which endpoint answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Route = 0,
    Nginx = 1,
    Envoy = 2,
}

/// What the answer was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Routed = 0,
    NoTenant = 1,
    UnknownTenant = 2,
    Suspended = 3,
    FrozenTimeout = 4,
    RateLimited = 5,
    Unauthorized = 6,
    NoEndpoint = 7,
}

const MODES: [&str; 3] = ["route", "nginx", "envoy"];
const OUTCOMES: [&str; 8] = [
    "routed",
    "no_tenant",
    "unknown_tenant",
    "suspended",
    "frozen_timeout",
    "rate_limited",
    "unauthorized",
    "no_endpoint",
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    endpoint: &'static str,
    outcome: &'static str,
}

/// What the scrape reports about the table and its sync.
#[derive(Debug, Clone, Copy)]
pub struct TableGauges {
    pub version: i64,
    pub routes: usize,
    pub connected: bool,
    /// `None`: never known current.
    pub staleness: Option<Duration>,
    pub sync_failures: u64,
    /// Snapshots taken because the control plane's routing epoch changed.
    pub epoch_changes: u64,
    pub from_cache: bool,
    pub quota_tenants: usize,
}

#[derive(Debug)]
pub struct RouterMetrics {
    registry: Registry,
    decisions: Vec<Counter>,
    held: Histogram,
    version: Gauge,
    routes: Gauge,
    connected: Gauge,
    staleness: Gauge<f64, std::sync::atomic::AtomicU64>,
    sync_failures: Gauge,
    epoch_changes: Gauge,
    from_cache: Gauge,
    quota_tenants: Gauge,
    cache_write_failures: Counter,
    nginx_reloads: Family<ReloadLabels, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    outcome: &'static str,
}

impl Default for RouterMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("cellfleet_router");
        let family = Family::<DecisionLabels, Counter>::default();
        let mut decisions = Vec::with_capacity(MODES.len() * OUTCOMES.len());
        for endpoint in MODES {
            for outcome in OUTCOMES {
                decisions.push(
                    family
                        .get_or_create(&DecisionLabels { endpoint, outcome })
                        .clone(),
                );
            }
        }
        registry.register(
            "decisions",
            "Routing decisions by endpoint and outcome",
            family,
        );
        let held = Histogram::new(exponential_buckets(0.005, 2.0, 12));
        registry.register(
            "held_seconds",
            "How long requests for frozen tenants were held",
            held.clone(),
        );
        let gauges = [
            ("table_version", "Version of the routing table being served"),
            ("routes", "(tenant, env) routes in the table"),
            (
                "connected",
                "1 while the last exchange with the control plane succeeded",
            ),
            (
                "sync_failures",
                "Failed exchanges with the control plane since start",
            ),
            (
                "epoch_changes",
                "Snapshots taken since start because the control plane's routing epoch changed (it restarted, or its registry was restored from an older copy)",
            ),
            (
                "serving_cache",
                "1 while serving the table restored from disk (no answer from the control plane yet)",
            ),
            ("quota_tenants", "Tenants holding a rate limiter"),
        ];
        let [
            version,
            routes,
            connected,
            sync_failures,
            epoch_changes,
            from_cache,
            quota_tenants,
        ] = gauges.map(|(name, help)| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        });
        let staleness = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "staleness_seconds",
            "How long the table may have been out of date (0 while connected; -1 never synced)",
            staleness.clone(),
        );
        let cache_write_failures = Counter::default();
        registry.register(
            "cache_write_failures",
            "Failed writes of the on-disk table",
            cache_write_failures.clone(),
        );
        let nginx_reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "nginx_reloads",
            "nginx reloads after the per-cell upstreams changed, by outcome",
            nginx_reloads.clone(),
        );
        RouterMetrics {
            nginx_reloads,
            registry,
            decisions,
            held,
            version,
            routes,
            connected,
            staleness,
            sync_failures,
            epoch_changes,
            from_cache,
            quota_tenants,
            cache_write_failures,
        }
    }
}

impl RouterMetrics {
    pub fn decided(&self, mode: Mode, outcome: Outcome) {
        if let Some(c) = self
            .decisions
            .get(mode as usize * OUTCOMES.len() + outcome as usize)
        {
            c.inc();
        }
    }

    pub fn held(&self, for_: Duration) {
        self.held.observe(for_.as_secs_f64());
    }

    pub fn cache_write_failed(&self) {
        self.cache_write_failures.inc();
    }

    pub fn nginx_reloaded(&self, ok: bool) {
        self.nginx_reloads
            .get_or_create(&ReloadLabels {
                outcome: if ok { "ok" } else { "failed" },
            })
            .inc();
    }

    pub fn render(&self, t: TableGauges) -> String {
        self.version.set(t.version);
        self.routes.set(i64::try_from(t.routes).unwrap_or(i64::MAX));
        self.connected.set(i64::from(t.connected));
        self.staleness
            .set(t.staleness.map_or(-1.0, |s| s.as_secs_f64()));
        self.sync_failures
            .set(i64::try_from(t.sync_failures).unwrap_or(i64::MAX));
        self.epoch_changes
            .set(i64::try_from(t.epoch_changes).unwrap_or(i64::MAX));
        self.from_cache.set(i64::from(t.from_cache));
        self.quota_tenants
            .set(i64::try_from(t.quota_tenants).unwrap_or(i64::MAX));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
