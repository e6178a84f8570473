//! Errors of the evaluation crate, in the user's terms: which file, line and field, which case.

use std::path::PathBuf;

use thiserror::Error;

/// Why an evaluation step failed.
#[derive(Debug, Error)]
pub enum EvalError {
    /// A suite, gate or run file is not valid; the message names file, line and field.
    #[error("{0}")]
    Invalid(String),
    /// A file could not be read or written.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done (`read`, `write`…).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The target or the judge could not be set up (not a per-case failure).
    #[error("{0}")]
    Setup(String),
    /// The store refused a read or a write.
    #[error("store: {0}")]
    Store(#[from] keel_store::StoreError),
}

impl EvalError {
    /// An I/O error on `path`.
    pub fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> EvalError {
        let path = path.into();
        move |source| EvalError::Io { action, path, source }
    }
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, EvalError>;
