//! The crate's one error type, with messages in the operator's terms.

use thiserror::Error;

/// Everything that can go wrong in the monitor's statistics, detectors and alerts.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum MonitorError {
    /// A detector or alert configuration value is out of range; names the method and field.
    #[error("invalid {method} config: `{field}` {reason}")]
    InvalidConfig {
        /// The detector method (or `alert`) whose config is wrong.
        method: &'static str,
        /// The offending field, as spelt in the config file.
        field: &'static str,
        /// What the value must be, and what it was.
        reason: String,
    },
    /// A detector was fed an observation of a kind it does not read.
    #[error("the {method} detector reads {expected} observations, got a {got} observation")]
    WrongObservation {
        /// The detector method.
        method: &'static str,
        /// The kind it reads (`value`, `category` or `vector`).
        expected: &'static str,
        /// The kind it got.
        got: &'static str,
    },
    /// A number in an observation or a sample is NaN or infinite.
    #[error("{what} must be a finite number, got {value}")]
    NonFinite {
        /// What carried the number (an observation, a vector component, a sample value).
        what: &'static str,
        /// The number, as text (NaN and infinities print as such).
        value: String,
    },
    /// An embedding vector does not have the dimension the detector learned from its first vector.
    #[error("vector has {got} dimensions, but this detector's vectors have {expected}")]
    DimensionMismatch {
        /// The dimension the detector fixed on its first vector.
        expected: usize,
        /// The dimension of the rejected vector.
        got: usize,
    },
    /// An empty embedding vector.
    #[error("vector observation is empty")]
    EmptyVector,
    /// A statistic was asked of data that cannot answer it (no samples, k > n, …).
    #[error("cannot compute {what}: {reason}")]
    InvalidInput {
        /// The statistic asked for.
        what: &'static str,
        /// Why the input cannot answer it.
        reason: String,
    },
    /// A single value is out of its allowed range (a satisfaction score of 6, …).
    #[error("invalid {what}: {reason}")]
    InvalidValue {
        /// What the value is.
        what: &'static str,
        /// The allowed range, and what the value was.
        reason: String,
    },
    /// An alert was asked to move along a transition its state machine forbids.
    #[error("cannot {action} alert {alert_id}: it is {state}")]
    IllegalTransition {
        /// The alert's sequence number within its tracker.
        alert_id: u64,
        /// The requested action (`acknowledge`, `resolve`).
        action: &'static str,
        /// The state the alert was in.
        state: &'static str,
    },
    /// An alert action was requested while the tracker has no alert.
    #[error("cannot {action}: no alert has been opened yet")]
    NoAlert {
        /// The requested action.
        action: &'static str,
    },
}

/// Shorthand for results in this crate.
pub type Result<T> = std::result::Result<T, MonitorError>;

/// Checks that `value` is finite, naming `what` in the error.
pub(crate) fn finite(what: &'static str, value: f64) -> Result<f64> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(MonitorError::NonFinite { what, value: value.to_string() })
    }
}
