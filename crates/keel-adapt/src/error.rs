//! Errors of the adaptation crate, in the terms of the files and labels the user gave.

use thiserror::Error;

/// Why labels could not be read or a candidate could not be built.
#[derive(Debug, Error)]
pub enum AdaptError {
    /// A labels file line is not a valid labelled case.
    #[error("{file}:{line}: {field}: {message}")]
    Label {
        /// The labels file.
        file: String,
        /// 1-based line.
        line: usize,
        /// The offending field (`-` for the line as a whole).
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The base policy cannot be used.
    #[error("{file}: {message}")]
    Base {
        /// The base policy file.
        file: String,
        /// What is wrong.
        message: String,
    },
    /// The candidate does not compile as a policy (a bug or an impossible option).
    #[error("the candidate does not compile: {0}")]
    Candidate(String),
    /// The embedder failed.
    #[error("cannot embed the labelled cases: {0}")]
    Embed(String),
    /// Options are inconsistent.
    #[error("{0}")]
    Options(String),
}

/// Results of this crate.
pub type Result<T, E = AdaptError> = std::result::Result<T, E>;
