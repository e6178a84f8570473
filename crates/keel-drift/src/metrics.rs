//! The monitor's Prometheus gauges and counters, registered into the registry `/metrics` serves.

use std::sync::atomic::AtomicU64;

use keel_monitor::AlertState;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of a detector's series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DetectorLabels {
    /// The detector's name.
    pub detector: String,
    /// Its stream.
    pub stream: String,
    /// Its method.
    pub method: String,
}

/// Labels of an alert-state series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertLabels {
    /// The detector's name.
    pub detector: String,
    /// `open`, `acknowledged` or `resolved`.
    pub state: String,
}

/// Labels of a delivery counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// The webhook's name.
    pub sink: String,
    /// `delivered`, `retry` or `failed`.
    pub status: String,
}

/// Every series the drift runtime keeps. Cloning shares the series.
#[derive(Debug, Clone, Default)]
pub struct DriftMetrics {
    statistic: Family<DetectorLabels, Gauge<f64, AtomicU64>>,
    threshold: Family<DetectorLabels, Gauge<f64, AtomicU64>>,
    observations: Family<DetectorLabels, Counter>,
    alert_state: Family<AlertLabels, Gauge>,
    deliveries: Family<DeliveryLabels, Counter>,
}

impl DriftMetrics {
    /// New series, registered into `registry` under `keel_drift_*` and `keel_alert_*`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "keel_drift_statistic",
            "Current statistic of each drift detector (larger means more drift)",
            m.statistic.clone(),
        );
        registry.register(
            "keel_drift_threshold",
            "Statistic at which each drift detector signals",
            m.threshold.clone(),
        );
        registry.register("keel_drift_observations", "Observations fed to each drift detector", m.observations.clone());
        registry.register(
            "keel_drift_alert",
            "1 for the state of each detector's latest drift alert, 0 for the other states",
            m.alert_state.clone(),
        );
        registry.register("keel_alert_deliveries", "Webhook delivery attempts by outcome", m.deliveries.clone());
        m
    }

    /// Sets a detector's statistic and threshold and adds the observations it was fed.
    pub fn detector(&self, labels: &DetectorLabels, statistic: f64, threshold: f64, new_observations: u64) {
        self.statistic.get_or_create(labels).set(statistic);
        self.threshold.get_or_create(labels).set(threshold);
        self.observations.get_or_create(labels).inc_by(new_observations);
    }

    /// Marks the state of a detector's latest alert.
    pub fn alert(&self, detector: &str, state: AlertState) {
        for s in AlertState::ALL {
            let labels = AlertLabels { detector: detector.to_owned(), state: s.name().to_owned() };
            self.alert_state.get_or_create(&labels).set(i64::from(s == state));
        }
    }

    /// Counts one delivery attempt.
    pub fn delivery(&self, sink: &str, status: &str) {
        self.deliveries.get_or_create(&DeliveryLabels { sink: sink.to_owned(), status: status.to_owned() }).inc();
    }
}
