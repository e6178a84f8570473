//! `/metrics`: the gateway's Prometheus series (requests, latencies, check hits, the writer's
//! queue) and whatever other parts register (the drift monitor's), in the text exposition
//! format.
//!
//! The hot path pays one call per interaction, [`GatewayMetrics::observe`], made when the
//! interaction is handed to the writer: a few label lookups and atomic adds.

use std::sync::Mutex;

use keel_core::Interaction;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The content type of the text exposition format `/metrics` answers in.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of a request series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The app.
    pub app: String,
    /// The decision.
    pub action: String,
}

/// Labels of an upstream latency series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppLabels {
    /// The app.
    pub app: String,
}

/// Labels of a check-hit series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    /// The app.
    pub app: String,
    /// The check's name.
    pub check: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Seconds from 1 ms to about 33 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The gateway's series and the registry `/metrics` encodes.
#[derive(Debug)]
pub struct GatewayMetrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    duration: HistogramFamily<RequestLabels>,
    upstream: HistogramFamily<AppLabels>,
    check_hits: Family<CheckLabels, Counter>,
    writer_queue: Gauge,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl GatewayMetrics {
    /// A registry with the gateway's series.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = HistogramFamily::<RequestLabels>::new_with_constructor(latency_histogram as fn() -> Histogram);
        let upstream = HistogramFamily::<AppLabels>::new_with_constructor(latency_histogram as fn() -> Histogram);
        let check_hits = Family::<CheckLabels, Counter>::default();
        let writer_queue = Gauge::default();
        registry.register("keel_requests", "Interactions handed to the store, by app and decision", requests.clone());
        registry.register(
            "keel_request_duration_seconds",
            "Wall time from request to finished response, by app and decision",
            duration.clone(),
        );
        registry.register(
            "keel_upstream_duration_seconds",
            "Time the upstream model took, for completed interactions that called it, by app",
            upstream.clone(),
        );
        registry.register("keel_check_hits", "Checks that hit, by app and check", check_hits.clone());
        registry.register("keel_writer_queue_depth", "Records accepted but not yet stored", writer_queue.clone());
        Self { registry: Mutex::new(registry), requests, duration, upstream, check_hits, writer_queue }
    }

    /// Counts one interaction: its decision, its latencies and the checks that hit.
    pub fn observe(&self, interaction: &Interaction) {
        let labels = RequestLabels { app: interaction.app.clone(), action: interaction.decision.as_str().to_owned() };
        self.requests.get_or_create(&labels).inc();
        self.duration.get_or_create(&labels).observe(interaction.timings.total_ms / 1000.0);
        // An input-phase block or escalation never calls the upstream (its time is 0).
        if interaction.outcome == keel_core::Outcome::Completed && interaction.timings.upstream_ms > 0.0 {
            let app = AppLabels { app: interaction.app.clone() };
            self.upstream.get_or_create(&app).observe(interaction.timings.upstream_ms / 1000.0);
        }
        for name in keel_store::checks_hit(interaction) {
            self.check_hits.get_or_create(&CheckLabels { app: interaction.app.clone(), check: name }).inc();
        }
    }

    /// Lets another part register its series (the drift monitor's gauges).
    pub fn register(&self, add: impl FnOnce(&mut Registry)) {
        match self.registry.lock() {
            Ok(mut registry) => add(&mut registry),
            Err(poisoned) => add(&mut poisoned.into_inner()),
        }
    }

    /// Every series in the text exposition format, with the writer queue depth as given.
    pub fn encode(&self, writer_queue_depth: usize) -> Result<String, std::fmt::Error> {
        self.writer_queue.set(i64::try_from(writer_queue_depth).unwrap_or(i64::MAX));
        let mut text = String::new();
        match self.registry.lock() {
            Ok(registry) => prometheus_client::encoding::text::encode(&mut text, &registry)?,
            Err(poisoned) => prometheus_client::encoding::text::encode(&mut text, &poisoned.into_inner())?,
        }
        Ok(text)
    }
}
