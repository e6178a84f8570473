//! Keel's monitor: the statistics and state machines that notice when a deployed model's
//! behaviour drifts.
//!
//! This crate owns the *math* of monitoring: KPIs per time bucket ([`kpi`]), estimates with honest intervals
//! ([`stats`]: Wilson for rates, t and bootstrap for means, percentiles, satisfaction
//! distributions), online drift detectors over metric streams ([`drift`]: Page–Hinkley, CUSUM,
//! ADWIN, PSI, chi-square, Kolmogorov–Smirnov, Wasserstein, centroid distance, MMD), the alert
//! hysteresis state machine ([`alert`]), and the detector quality harness ([`mod@bench`]) behind
//! `keel bench drift`. Everything here is pure and deterministic: detector and alert state is
//! plain serde data, randomness is seeded.
//!
//! It must not do I/O: no HTTP, no storage, no clocks, no threads except the harness's worker
//! pool. Feeding streams from the store, persisting detector state, delivering alerts to
//! webhooks and serving `/metrics` belong to the crates that wire this one in.

pub mod alert;
pub mod bench;
pub mod drift;
mod error;
pub mod kpi;
mod rng;
mod special;
pub mod stats;

pub use alert::{Alert, AlertAction, AlertEvent, AlertState, AlertTracker, HysteresisConfig};
pub use drift::{Detector, DetectorConfig, DriftDetector, DriftSignal, Method, Observation};
pub use error::{MonitorError, Result};
pub use rng::SeededRng;
