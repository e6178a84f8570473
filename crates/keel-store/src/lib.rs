//! Keel's storage: where interactions, handoff requests and the hash-chained audit log live.
//!
//! This crate owns the per-concern store traits ([`InteractionStore`], [`AuditStore`],
//! [`HandoffStore`], [`DriftStore`], [`AccessStore`] for admin tokens, [`LifecycleStore`] for stored
//! policy versions and gate runs, [`ReviewStore`] for the review queue, [`FeedbackStore`] for
//! feedback, handoff events and KPI facts, and [`Store`] with its single write entry point), their SQLite
//! implementation with its migrations, the audit chain's hashing and verification, the
//! batched [`Writer`] the gateway records through, and the privacy rule for stored text.
//! It must not judge anything (that is keel-policy), speak HTTP (keel-gateway) or read
//! configuration files (the binary): it stores and reads back what it is given.
//!
//! A backend is chosen by URL scheme through [`resolve`]; callers hold an `Arc<dyn Store>`.

pub mod access;
pub mod audit;
mod delegate;
mod drift;
mod error;
pub mod feedback;
pub mod lifecycle;
mod privacy;
pub mod review;
pub mod sqlite;
mod store;
mod types;
mod url;
pub mod writer;

use std::sync::Arc;

pub use access::{AccessGeneration, AccessStore, ChangeError, IssuedToken, TokenInfo, TokenRecord};
pub use audit::{export_jsonl, verify_chain, ChainVerifier};
#[doc(hidden)]
pub use delegate::__private;
pub use drift::{
    AlertFilter, AlertWindow, DeliveryAttempt, DeliveryStatus, DetectorCheckpoint, DriftAlert, DriftCommit,
    DriftSource, DriftStore, NewDriftAlert, PendingDelivery,
};
pub use error::{Result, StoreError};
pub use feedback::{
    Feedback, FeedbackStore, Handoff, HandoffEvent, HandoffStep, KpiInteraction, KpiRange, KpiRows, NewFeedback,
    NewHandoffEvent, Receipt, Thumbs,
};
pub use lifecycle::{
    GateKind, GateRun, LifecycleStore, NewGateRun, NewPolicyVersion, PolicyStatus, PolicyVersion, Promotion,
    RollbackOutcome, Seeded, ShadowExample, ShadowPair, ShadowReport, Transition,
};
pub use privacy::stored_text;
pub use review::{
    Agreement, CaseFilter, CaseIntake, CaseReason, CaseStatus, LabelKind, NewCase, NewLabel, ReviewCase, ReviewSla,
    ReviewStore, StoredLabel,
};
pub use sqlite::SqliteStore;
pub use store::{AuditStore, HandoffStore, InteractionStore, Store};
pub use types::{
    checks_hit, AuditEntry, HandoffFilter, HandoffRequest, InteractionFilter, InteractionSummary, VerifyReport,
    WriteBatch, DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT,
};
pub use url::{redact_url, Backend, RedactedUrl};
pub use writer::{Writer, WriterConfig, WriterHandle, WriterSummary};

/// Opens the store a database URL names: `sqlite://PATH` (created if missing) or
/// `sqlite::memory:`. `postgres://` URLs are recognised but not yet supported.
pub async fn resolve(url: &str) -> Result<Arc<dyn Store>> {
    match Backend::of_url(url) {
        Some(Backend::Sqlite) => Ok(Arc::new(SqliteStore::open(url).await?)),
        Some(Backend::Postgres) => Err(StoreError::NotYetSupported { backend: "PostgreSQL", url: redact_url(url) }),
        None => Err(StoreError::UnsupportedUrl { url: redact_url(url) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resolve_opens_sqlite_in_memory() {
        let store = resolve("sqlite::memory:").await.unwrap();
        assert!(store.verify().await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn resolve_says_postgres_is_not_yet_supported_without_the_password() {
        let err = resolve("postgres://keel:hunter2@db/keel").await.err().unwrap();
        let message = err.to_string();
        assert!(message.contains("not yet supported"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }

    #[tokio::test]
    async fn resolve_refuses_unknown_schemes() {
        let err = resolve("mysql://db/keel").await.err().unwrap();
        assert!(matches!(err, StoreError::UnsupportedUrl { .. }), "{err:?}");
    }
}
