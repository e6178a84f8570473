//! The one error type of the storage layer.

use std::path::PathBuf;

use keel_core::InteractionId;

/// Everything that can go wrong while opening, reading or writing Keel's store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL names no backend Keel knows.
    #[error(
        "unsupported database URL `{url}`: expected `sqlite://PATH` (or `sqlite::memory:` for a \
         throwaway database)"
    )]
    UnsupportedUrl {
        /// The URL with credentials and query removed.
        url: String,
    },

    /// The URL names a backend that is planned but not built yet.
    #[error("{backend} storage is not yet supported (database URL `{url}`); use a `sqlite://PATH` URL for now")]
    NotYetSupported {
        /// The backend's name, e.g. `PostgreSQL`.
        backend: &'static str,
        /// The URL with credentials and query removed.
        url: String,
    },

    /// The database file would go into a directory that does not exist.
    #[error(
        "cannot create the database file `{path}`: the directory `{dir}` does not exist \
         (create it first or choose another path)"
    )]
    MissingDirectory {
        /// The database file asked for.
        path: PathBuf,
        /// Its parent directory, which is missing.
        dir: PathBuf,
    },

    /// The database could not be opened or configured.
    #[error("cannot open the database `{url}`: {source}")]
    Open {
        /// The URL with credentials and query removed.
        url: String,
        /// What the driver reported.
        #[source]
        source: sqlx::Error,
    },

    /// The schema could not be brought up to date.
    #[error("cannot update the database schema of `{url}`: {source}")]
    Migrate {
        /// The URL with credentials and query removed.
        url: String,
        /// What the migrator reported.
        #[source]
        source: sqlx::migrate::MigrateError,
    },

    /// A query failed.
    #[error("database error while {operation}: {source}")]
    Database {
        /// What Keel was doing, in words (`writing a batch`, `listing interactions`…).
        operation: &'static str,
        /// True when retrying later may succeed (busy, locked, I/O, pool exhausted); false when
        /// the data itself was refused (a constraint, a value out of range).
        retryable: bool,
        /// What the driver reported.
        #[source]
        source: sqlx::Error,
    },

    /// A value cannot be stored as given (for example a counter beyond the database's range).
    #[error("cannot store {what}: {reason}")]
    InvalidInput {
        /// What was being stored, e.g. `interaction 0190…`.
        what: String,
        /// Why it was refused.
        reason: String,
    },

    /// A stored row could not be read back into Keel's types.
    #[error("stored {what} is unreadable: {reason}")]
    Corrupt {
        /// What was being read, e.g. `interaction 0190…`.
        what: String,
        /// What was wrong with it.
        reason: String,
    },

    /// A stored audit record could not be read back (its chain position is known).
    #[error("audit record {seq} is unreadable: {reason}")]
    CorruptAuditRecord {
        /// The record's sequence number.
        seq: i64,
        /// What was wrong with it.
        reason: String,
    },

    /// The paging cursor names an interaction that is not stored.
    #[error("paging cursor `before={0}` does not name a stored interaction")]
    CursorNotFound(InteractionId),

    /// Serialising a value to JSON failed.
    #[error("cannot encode {what} as JSON: {source}")]
    Json {
        /// What was being encoded.
        what: &'static str,
        /// What serde_json reported.
        #[source]
        source: serde_json::Error,
    },

    /// Writing an export failed.
    #[error("cannot write the export: {0}")]
    Export(#[source] std::io::Error),

    /// A drift monitor step was computed by a replica that no longer holds the monitor lease.
    #[error("the monitor lease `{lease}` is no longer held by this process; its step was not stored")]
    LeaseLost {
        /// The lease's name.
        lease: String,
    },

    /// No drift alert has this id.
    #[error("no drift alert with id {0}")]
    AlertNotFound(i64),

    /// The alert state machine forbids the move.
    #[error("cannot {action} alert {id}: it is {state}")]
    IllegalAlertTransition {
        /// The alert.
        id: i64,
        /// The requested action (`acknowledge`, `resolve`).
        action: &'static str,
        /// The state it is in.
        state: &'static str,
    },

    /// The background writer has shut down, so the record was not accepted.
    #[error("the storage writer has shut down; the record was not accepted")]
    WriterClosed,
}

impl StoreError {
    /// True when the same write may succeed if tried again later (the database was busy,
    /// locked, unreachable or out of space); false when the data itself was refused.
    ///
    /// The batched writer retries retryable errors and isolates the offending item otherwise.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Database { retryable, .. } => *retryable,
            StoreError::Open { .. } => true,
            StoreError::InvalidInput { .. }
            | StoreError::Json { .. }
            | StoreError::CursorNotFound(_)
            | StoreError::UnsupportedUrl { .. }
            | StoreError::NotYetSupported { .. }
            | StoreError::MissingDirectory { .. }
            | StoreError::Migrate { .. }
            | StoreError::Corrupt { .. }
            | StoreError::CorruptAuditRecord { .. }
            | StoreError::Export(_)
            | StoreError::LeaseLost { .. }
            | StoreError::AlertNotFound(_)
            | StoreError::IllegalAlertTransition { .. }
            | StoreError::WriterClosed => false,
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
