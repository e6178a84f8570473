//! Keel's drift runtime: it turns stored traffic into metric streams, runs keel-monitor's
//! detectors over them incrementally, opens drift alerts with hysteresis, and delivers them
//! to webhooks.
//!
//! This crate owns the *running* of drift detection: which streams exist and how a stored
//! interaction or feedback event becomes an observation ([`stream`]), the validated monitor
//! configuration and its defaults ([`config`]), the monitor loop that reads rows after each
//! detector's cursor in insertion order and checkpoints detector state, cursors and alerts
//! atomically in the store under a lease ([`monitor`]), webhook delivery with retries
//! ([`webhook`]), and the monitor's Prometheus series ([`metrics`]). The statistics
//! themselves belong to keel-monitor, storage to keel-store; HTTP routes for alerts and
//! `/metrics` are the gateway's, and reading keel.toml is the binary's.

pub mod config;
mod error;
pub mod metrics;
pub mod monitor;
pub mod stream;
pub mod webhook;

pub use config::{default_detectors, DetectorSpec, Hysteresis, MonitorConfig, WebhookConfig, WebhookFormat};
pub use error::{DriftError, Result};
pub use metrics::DriftMetrics;
pub use monitor::{Monitor, StepReport, LEASE};
pub use stream::{FeedbackEvent, FeedbackFeed, Stream, TextSide};
pub use webhook::Deliverer;
