//! The drift monitor's storage: persisted detector state, drift alerts with their state
//! machine, the webhook outbox and delivery log, and the lease that lets one replica run the
//! monitor.

use std::time::Duration;

use async_trait::async_trait;
use keel_core::InteractionId;
use keel_monitor::{AlertAction, AlertState};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::Result;

/// Which insertion-ordered table a detector reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftSource {
    /// Stored interactions (`interactions_after`).
    Interactions,
    /// Stored feedback events.
    Feedback,
}

impl DriftSource {
    /// The name used in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            DriftSource::Interactions => "interactions",
            DriftSource::Feedback => "feedback",
        }
    }
}

/// One detector's persisted state: enough to continue exactly where it stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectorCheckpoint {
    /// The detector's configured name.
    pub name: String,
    /// Hash of the configuration the state belongs to; a changed config starts afresh.
    pub config_hash: String,
    /// The table it reads.
    pub source: DriftSource,
    /// The insertion sequence number of the last row of `source` it has read.
    pub cursor: i64,
    /// The running state (detector, alert tracker, window ring) as JSON.
    pub state: serde_json::Value,
}

/// The observations a drift alert's statistic covers, by insertion seq and interaction time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertWindow {
    /// Observations in the window (as the detector counts them).
    pub size: u64,
    /// Insertion seq of the first observation in the window (as far as the monitor keeps them).
    pub first_seq: i64,
    /// Insertion seq of the observation that fired.
    pub last_seq: i64,
    /// `created_at` of the first observation's interaction.
    #[serde(with = "time::serde::rfc3339")]
    pub first_at: OffsetDateTime,
    /// `created_at` of the observation that fired.
    #[serde(with = "time::serde::rfc3339")]
    pub last_at: OffsetDateTime,
}

/// A drift alert as the monitor opens it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewDriftAlert {
    /// The detector's name.
    pub detector: String,
    /// The stream it watches (`action`, `check.pii.hit`, …).
    pub stream: String,
    /// The app it is restricted to, if any.
    pub app: Option<String>,
    /// The detection method.
    pub method: String,
    /// The statistic that opened the alert.
    pub statistic: f64,
    /// The threshold it reached.
    pub threshold: f64,
    /// The test's p-value, for methods that have one.
    pub p_value: Option<f64>,
    /// The window the statistic covers.
    pub window: AlertWindow,
    /// Observations in the reference it was compared with.
    pub reference_size: u64,
    /// Observations the detector had seen in total.
    pub samples: u64,
    /// A one-line explanation of the change.
    pub detail: String,
    /// A sample of interactions from the window (for review cases).
    pub sample_interaction_ids: Vec<InteractionId>,
    /// When the monitor opened it (wall time).
    #[serde(with = "time::serde::rfc3339")]
    pub opened_at: OffsetDateTime,
}

/// A stored drift alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftAlert {
    /// Its id.
    pub id: i64,
    /// Where it is in its life.
    pub state: AlertState,
    /// What the monitor recorded when it opened.
    #[serde(flatten)]
    pub opened: NewDriftAlert,
    /// When it was acknowledged.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub acknowledged_at: Option<OffsetDateTime>,
    /// Who acknowledged it.
    pub acknowledged_by: Option<String>,
    /// When it was resolved.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub resolved_at: Option<OffsetDateTime>,
    /// Who resolved it.
    pub resolved_by: Option<String>,
}

/// Which alerts to list, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertFilter {
    /// Only alerts in this state.
    pub state: Option<AlertState>,
    /// Only alerts of this detector.
    pub detector: Option<String>,
    /// Page size: 50 when unset, at most 500.
    pub limit: Option<u32>,
    /// Paging cursor: only alerts with a smaller id.
    pub before: Option<i64>,
}

impl AlertFilter {
    /// The page size this filter asks for, after applying the default and the bounds.
    pub fn effective_limit(&self) -> u32 {
        self.limit.unwrap_or(crate::DEFAULT_LIST_LIMIT).clamp(1, crate::MAX_LIST_LIMIT)
    }
}

/// Everything one monitor step stores, in one transaction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DriftCommit {
    /// The lease holder that computed it; nothing is written unless it still holds the lease.
    pub holder: String,
    /// The lease's name.
    pub lease: String,
    /// Detector states to store (replacing each detector's previous row).
    pub checkpoints: Vec<DetectorCheckpoint>,
    /// Detectors no longer configured, whose rows are removed.
    pub removed: Vec<String>,
    /// Alerts to open; each gets a `drift.alert_opened` audit record (actor `monitor`).
    pub alerts: Vec<NewDriftAlert>,
    /// Webhook sinks every new alert is queued for.
    pub sinks: Vec<String>,
    /// How the review cases each new alert opens for its sampled interactions are made
    /// (`drift_alert`, one per sampled interaction, audited as `review.case_opened`).
    pub review: crate::review::CaseIntake,
}

/// An alert waiting for delivery to one sink.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingDelivery {
    /// The alert.
    pub alert: DriftAlert,
    /// The sink's name.
    pub sink: String,
    /// Attempts made so far.
    pub attempts: u32,
}

/// What one delivery attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// The sink accepted it.
    Delivered,
    /// It failed; another attempt is scheduled.
    Retry,
    /// It failed and no attempts are left.
    Failed,
}

impl DeliveryStatus {
    /// The name used in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Retry => "retry",
            DeliveryStatus::Failed => "failed",
        }
    }
}

/// One recorded delivery attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryAttempt {
    /// The alert.
    pub alert_id: i64,
    /// The sink's name.
    pub sink: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// What came of it.
    pub status: DeliveryStatus,
    /// The HTTP status the sink answered, if it answered.
    pub http_status: Option<u16>,
    /// Why it failed.
    pub error: Option<String>,
    /// When it was made.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// For `retry`: when to try again.
    #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<OffsetDateTime>,
}

/// The drift monitor's storage.
#[async_trait]
pub trait DriftStore: Send + Sync {
    /// Every stored detector state.
    async fn detector_checkpoints(&self) -> Result<Vec<DetectorCheckpoint>>;

    /// Stores a monitor step in one transaction: detector states, new alerts (with their audit
    /// records and outbox rows). Fails with `StoreError::LeaseLost`, writing nothing, when
    /// `commit.holder` no longer holds the lease. Returns the new alerts with their ids.
    async fn commit_drift(&self, commit: DriftCommit) -> Result<Vec<DriftAlert>>;

    /// Alerts matching `filter`, newest first.
    async fn list_alerts(&self, filter: &AlertFilter) -> Result<Vec<DriftAlert>>;

    /// One alert, or `None`.
    async fn get_alert(&self, id: i64) -> Result<Option<DriftAlert>>;

    /// Moves an alert along its state machine and appends the audit record
    /// (`drift.alert_acknowledged` / `drift.alert_resolved`, actor `actor`) in the same
    /// transaction. Unknown id: `StoreError::AlertNotFound`; a move the machine forbids:
    /// `StoreError::IllegalAlertTransition`, and nothing changes.
    async fn transition_alert(&self, id: i64, action: AlertAction, actor: &str) -> Result<DriftAlert>;

    /// Takes or renews the lease `name` for `holder` until `ttl` from now; true when `holder`
    /// holds it afterwards (it was free, expired, or already its own).
    async fn acquire_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool>;

    /// Gives the lease up if `holder` has it, so another replica can take over at once.
    async fn release_lease(&self, name: &str, holder: &str) -> Result<()>;

    /// Pending deliveries to `sinks` whose next attempt is due at `now`, oldest alert first.
    async fn due_deliveries(&self, sinks: &[String], now: OffsetDateTime, limit: u32) -> Result<Vec<PendingDelivery>>;

    /// Records an attempt and moves the outbox row on (delivered, rescheduled or failed).
    async fn record_delivery(&self, attempt: &DeliveryAttempt) -> Result<()>;

    /// Every attempt made for an alert, in order.
    async fn alert_deliveries(&self, alert_id: i64) -> Result<Vec<DeliveryAttempt>>;
}
