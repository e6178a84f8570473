//! The drift runtime's error type.

use keel_monitor::MonitorError;
use keel_store::StoreError;

/// Everything that can go wrong while running the drift monitor.
#[derive(Debug, thiserror::Error)]
pub enum DriftError {
    /// A detector cannot run as configured.
    #[error("detector `{detector}`: {message}")]
    Config {
        /// The detector's name.
        detector: String,
        /// What is wrong.
        message: String,
    },
    /// The detector math refused something (a config value, an alert transition).
    #[error("detector `{detector}`: {source}")]
    Detector {
        /// The detector's name.
        detector: String,
        /// What keel-monitor said.
        #[source]
        source: MonitorError,
    },
    /// A detector's state could not be encoded.
    #[error("detector `{detector}`: cannot encode its state: {reason}")]
    State {
        /// The detector's name.
        detector: String,
        /// Why.
        reason: String,
    },
    /// The embedder failed.
    #[error("embedding failed: {0}")]
    Embedding(String),
    /// The webhook HTTP client could not be built.
    #[error("cannot build the webhook HTTP client: {0}")]
    HttpClient(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl DriftError {
    pub(crate) fn config(detector: &str, message: impl Into<String>) -> Self {
        DriftError::Config { detector: detector.to_owned(), message: message.into() }
    }

    pub(crate) fn detector(detector: &str, source: MonitorError) -> Self {
        DriftError::Detector { detector: detector.to_owned(), source }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = DriftError> = std::result::Result<T, E>;
