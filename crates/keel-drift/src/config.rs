//! The validated monitor configuration (built by the binary from `[monitor]` in keel.toml),
//! the default detector set, and the hash that tells a changed detector config apart.

use std::time::Duration;

use keel_monitor::drift::{CentroidConfig, ChiSquareConfig, CusumConfig, Direction, MmdConfig, PageHinkleyConfig};
use keel_monitor::DetectorConfig;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::stream::{Stream, TextSide};

/// How a detector's alerts open and re-arm (see `keel_monitor::alert`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hysteresis {
    /// The stream counts as quiet below this fraction of the detector's threshold (0 < f < 1).
    pub resolve_fraction: f64,
    /// Consecutive quiet observations before another alert may open.
    pub rearm_samples: u64,
}

impl Default for Hysteresis {
    fn default() -> Self {
        Self { resolve_fraction: 0.5, rearm_samples: 500 }
    }
}

/// One configured detector.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectorSpec {
    /// Unique name: the alert's `detector`, the metrics label, the key of its persisted state.
    pub name: String,
    /// What it watches.
    pub stream: Stream,
    /// Only interactions (or feedback) of this app; all apps when `None`.
    pub app: Option<String>,
    /// Method and its settings (already validated).
    pub detector: DetectorConfig,
    /// Alert hysteresis.
    pub hysteresis: Hysteresis,
    /// Observe one row in this many (by insertion seq, so a restart samples the same rows).
    pub sample_every: u64,
}

impl DetectorSpec {
    /// A detector with the default hysteresis on every row.
    pub fn new(name: &str, stream: Stream, detector: DetectorConfig) -> Self {
        let sample_every = if matches!(stream, Stream::Embedding(_)) { DEFAULT_EMBEDDING_SAMPLE_EVERY } else { 1 };
        Self { name: name.to_owned(), stream, app: None, detector, hysteresis: Hysteresis::default(), sample_every }
    }

    /// SHA-256 over everything that shapes the detector's state: a stored state whose hash
    /// differs belongs to another configuration and is not resumed.
    pub fn config_hash(&self) -> String {
        let canonical = json!({
            "stream": self.stream.to_string(),
            "app": self.app,
            "detector": self.detector,
            "resolve_fraction": self.hysteresis.resolve_fraction,
            "rearm_samples": self.hysteresis.rearm_samples,
            "sample_every": self.sample_every,
        });
        hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
    }
}

/// Centroid settings for MiniLM embeddings of support traffic: threshold 0.02 over a
/// 500-vector window against a 2,000-vector reference. keel-monitor's default (0.025 over 200)
/// was calibrated on synthetic 32-d vectors; on real all-MiniLM-L6-v2 vectors of EN/JA support
/// messages it raised 1.6 false alarms per 10,000 events (the `embedding_drift_check` example;
/// figures in keel-monitor's CALIBRATION.md).
pub fn minilm_centroid() -> CentroidConfig {
    CentroidConfig { threshold: 0.02, reference_size: 2_000, window_size: 500, min_samples: 500 }
}

/// MMD settings for MiniLM embeddings, calibrated like [`minilm_centroid`]: MMD² 0.006 over a
/// 300-vector window against a 300-vector subsample of a 2,000-vector reference.
pub fn minilm_mmd() -> MmdConfig {
    MmdConfig { threshold: 0.006, reference_size: 2_000, subsample: 300, window_size: 300, min_samples: 300, seed: 0 }
}

/// The default config of a method on Keel's (MiniLM) embedding streams; methods other than
/// centroid and mmd get keel-monitor's default.
pub fn embedding_detector(method: keel_monitor::Method) -> DetectorConfig {
    match method {
        keel_monitor::Method::Centroid => DetectorConfig::Centroid(minilm_centroid()),
        keel_monitor::Method::Mmd => DetectorConfig::Mmd(minilm_mmd()),
        other => DetectorConfig::default_for(other),
    }
}

/// Embedding streams embed one row in this many by default: MiniLM costs milliseconds of CPU
/// per text, too much for every request of a busy gateway on a small machine.
pub const DEFAULT_EMBEDDING_SAMPLE_EVERY: u64 = 10;

/// Webhook body format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookFormat {
    /// Keel's JSON payload (documented in the README).
    Json,
    /// A Slack incoming-webhook message (`text` plus a Markdown block).
    Slack,
}

/// One webhook sink.
#[derive(Clone, PartialEq)]
pub struct WebhookConfig {
    /// The sink's name (recorded with every delivery).
    pub name: String,
    /// Where to POST.
    pub url: String,
    /// Body format.
    pub format: WebhookFormat,
    /// A header sent with every delivery (name, value read from the environment at start).
    pub secret_header: Option<(String, String)>,
    /// Limit for one attempt.
    pub timeout: Duration,
    /// Attempts before a delivery is recorded as failed.
    pub max_attempts: u32,
    /// Wait before the second attempt; it doubles after each failure, up to [`MAX_BACKOFF`].
    pub initial_backoff: Duration,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("name", &self.name)
            .field("url", &keel_store::redact_url(&self.url))
            .field("format", &self.format)
            .field("secret_header", &self.secret_header.as_ref().map(|(h, _)| h))
            .field("timeout", &self.timeout)
            .field("max_attempts", &self.max_attempts)
            .finish()
    }
}

/// Longest wait between two delivery attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// The monitor's validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct MonitorConfig {
    /// Whether the monitor runs at all.
    pub enabled: bool,
    /// Wait between reads when the last read found no backlog.
    pub poll_interval: Duration,
    /// Rows read per step.
    pub batch_size: u32,
    /// Longest time between two state checkpoints while no alert opens.
    pub checkpoint_interval: Duration,
    /// How long the monitor lease lasts without renewal.
    pub lease_ttl: Duration,
    /// Interaction ids recorded per alert from its window.
    pub alert_sample_size: usize,
    /// The detectors.
    pub detectors: Vec<DetectorSpec>,
    /// Where alerts are delivered.
    pub webhooks: Vec<WebhookConfig>,
    /// Due dates (and second reviews) of the review cases alerts open for their samples.
    pub review: keel_store::CaseIntake,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            poll_interval: Duration::from_secs(2),
            batch_size: 1_000,
            checkpoint_interval: Duration::from_secs(30),
            lease_ttl: Duration::from_secs(30),
            alert_sample_size: 20,
            detectors: Vec::new(),
            webhooks: Vec::new(),
            review: keel_store::CaseIntake::default(),
        }
    }
}

/// The detectors that run when keel.toml configures none: the action mix, every policy
/// check's hit rate, the wrong-answer rate and satisfaction (when feedback is stored), and the
/// input embedding centroid when the MiniLM model is installed.
pub fn default_detectors(checks: &[String], feedback: bool, embeddings: bool) -> Vec<DetectorSpec> {
    let mut out =
        vec![DetectorSpec::new("action-mix", Stream::Action, DetectorConfig::ChiSquare(ChiSquareConfig::default()))];
    for check in checks {
        out.push(DetectorSpec::new(
            &format!("check-{check}-hit-rate"),
            Stream::CheckHit(check.clone()),
            DetectorConfig::Cusum(CusumConfig::default()),
        ));
    }
    if feedback {
        out.push(DetectorSpec::new(
            "wrong-answer-rate",
            Stream::WrongAnswer,
            DetectorConfig::Cusum(CusumConfig::default()),
        ));
        out.push(DetectorSpec::new(
            "satisfaction",
            Stream::Satisfaction,
            DetectorConfig::PageHinkley(PageHinkleyConfig {
                direction: Direction::Down,
                ..PageHinkleyConfig::default()
            }),
        ));
    }
    if embeddings {
        out.push(DetectorSpec::new(
            "input-topics",
            Stream::Embedding(TextSide::Input),
            embedding_detector(keel_monitor::Method::Centroid),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_changes_with_anything_that_shapes_the_state() {
        let base = DetectorSpec::new("a", Stream::Action, DetectorConfig::ChiSquare(ChiSquareConfig::default()));
        let same = base.clone();
        assert_eq!(base.config_hash(), same.config_hash());
        let mut renamed = base.clone();
        renamed.name = "b".into();
        assert_eq!(base.config_hash(), renamed.config_hash(), "the name keys the state, it is not part of it");
        let mut other = base.clone();
        other.detector = DetectorConfig::ChiSquare(ChiSquareConfig { threshold: 4.0, ..ChiSquareConfig::default() });
        assert_ne!(base.config_hash(), other.config_hash());
        let mut app = base.clone();
        app.app = Some("support".into());
        assert_ne!(base.config_hash(), app.config_hash());
        let mut rearm = base;
        rearm.hysteresis.rearm_samples = 1;
        assert_ne!(rearm.config_hash(), same.config_hash());
    }

    #[test]
    fn defaults_follow_the_policy_and_what_is_installed() {
        let names = |d: Vec<DetectorSpec>| d.into_iter().map(|d| d.name).collect::<Vec<_>>();
        assert_eq!(
            names(default_detectors(&["pii".into(), "injection".into()], false, false)),
            ["action-mix", "check-pii-hit-rate", "check-injection-hit-rate"]
        );
        let all = default_detectors(&[], true, true);
        assert_eq!(names(all.clone()), ["action-mix", "wrong-answer-rate", "satisfaction", "input-topics"]);
        assert_eq!(all[3].sample_every, DEFAULT_EMBEDDING_SAMPLE_EVERY);
        for d in all {
            assert_eq!(d.detector.method().reads(), d.stream.gives(), "{}", d.name);
            d.detector.validate().unwrap();
        }
    }
}
