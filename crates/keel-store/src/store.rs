//! The per-concern store traits every backend implements.
//!
//! The traits speak Keel's vocabulary only (no SQL, no row ids, no backend types) so a
//! PostgreSQL backend can implement them the same way SQLite does. Callers hold an
//! `Arc<dyn Store>`.

use async_trait::async_trait;
use keel_core::{AuditRecord, Interaction, InteractionId};

use crate::access::AccessStore;
use crate::drift::DriftStore;
use crate::error::Result;
use crate::feedback::FeedbackStore;
use crate::lifecycle::LifecycleStore;
use crate::review::ReviewStore;
use crate::types::{HandoffFilter, HandoffRequest, InteractionFilter, InteractionSummary, VerifyReport, WriteBatch};

/// Reading stored interactions.
#[async_trait]
pub trait InteractionStore: Send + Sync {
    /// The interaction with this id, or `None` when it is not stored.
    async fn get_interaction(&self, id: InteractionId) -> Result<Option<Interaction>>;

    /// Summaries of the interactions matching `filter`, newest first (ties broken by id), at
    /// most `filter.effective_limit()` of them; pass the last id as `before` for the next page.
    async fn list_interactions(&self, filter: &InteractionFilter) -> Result<Vec<InteractionSummary>>;

    /// Up to `limit` interactions stored after insertion sequence number `after_seq`, in
    /// insertion order, each with its sequence number: what a reader that must see every new
    /// row exactly once (the drift monitor) pages through. Insertion order, not `created_at`,
    /// because ingested interactions keep their historical times.
    async fn interactions_after(&self, after_seq: i64, limit: u32) -> Result<Vec<(i64, Interaction)>>;
}

/// Reading and checking the hash-chained audit log.
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Records with `from <= seq <= to`, in seq order, at most `limit` of them.
    ///
    /// A stored row that cannot be read fails with `StoreError::CorruptAuditRecord`.
    async fn audit_records(&self, from: i64, to: i64, limit: u32) -> Result<Vec<AuditRecord>>;

    /// The record with the highest seq, or `None` when the log is empty.
    async fn last_audit_record(&self) -> Result<Option<AuditRecord>>;

    /// Checks the whole chain in seq order, a page at a time, and reports the first break.
    async fn verify(&self) -> Result<VerifyReport> {
        crate::audit::verify_store(self).await
    }
}

/// Reading requests for a human to take over.
#[async_trait]
pub trait HandoffStore: Send + Sync {
    /// Handoff requests matching `filter`, newest first.
    async fn list_handoffs(&self, filter: &HandoffFilter) -> Result<Vec<HandoffRequest>>;
}

/// A complete Keel store: every reading concern plus the single write entry point.
#[async_trait]
pub trait Store:
    InteractionStore + AuditStore + HandoffStore + DriftStore + AccessStore + LifecycleStore + ReviewStore + FeedbackStore
{
    /// Writes the batch in one transaction and returns the audit records it appended: one
    /// `decision` record (actor `gateway`) per interaction in order, then one per explicit
    /// entry in order, then one `review.case_opened` per case it opened. Nothing is written
    /// when it fails.
    async fn write_batch(&self, batch: WriteBatch) -> Result<Vec<AuditRecord>>;
}
