//! The data the store traits take and return, beyond keel-core's vocabulary.

use keel_core::{Action, Interaction, InteractionId, Outcome, PolicyRef, Timings};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Page size used when `InteractionFilter::limit` is not set.
pub const DEFAULT_LIST_LIMIT: u32 = 50;

/// Largest page `list_interactions` returns; larger limits are lowered to it.
pub const MAX_LIST_LIMIT: u32 = 500;

/// Which interactions to list, newest first.
///
/// Every set field narrows the result; an empty filter lists the newest interactions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InteractionFilter {
    /// Only interactions created at or after this instant.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub since: Option<OffsetDateTime>,
    /// Only interactions created strictly before this instant.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub until: Option<OffsetDateTime>,
    /// Only interactions of this app.
    #[serde(default)]
    pub app: Option<String>,
    /// Only interactions whose decision took this action.
    #[serde(default)]
    pub action: Option<Action>,
    /// Only interactions where the check of this name hit (in either phase).
    #[serde(default)]
    pub check: Option<String>,
    /// Page size: 50 when unset, at most 500 (larger values are lowered), at least 1.
    #[serde(default)]
    pub limit: Option<u32>,
    /// Paging cursor: only interactions listed after this one (that is, older than it).
    #[serde(default)]
    pub before: Option<InteractionId>,
}

impl InteractionFilter {
    /// The page size this filter asks for, after applying the default and the bounds.
    pub fn effective_limit(&self) -> u32 {
        self.limit.unwrap_or(DEFAULT_LIST_LIMIT).clamp(1, MAX_LIST_LIMIT)
    }
}

/// One line of an interaction list: enough to show and filter, without the texts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InteractionSummary {
    /// The interaction's id; pass it as `before` to get the next page.
    pub id: InteractionId,
    /// When the request arrived.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The app the client key belongs to.
    pub app: String,
    /// The model the client asked for.
    pub model: String,
    /// The interaction's decision (the most restrictive action across phases).
    pub decision: Action,
    /// The policy version that judged it.
    pub policy: PolicyRef,
    /// How it ended.
    pub outcome: Outcome,
    /// The HTTP status the client got.
    pub http_status: u16,
    /// Where the time went.
    pub timings: Timings,
    /// Names of the checks that hit, in the order they ran, each once.
    pub checks_hit: Vec<String>,
}

impl InteractionSummary {
    /// The summary of a full interaction, as the store would list it.
    pub fn of(interaction: &Interaction) -> Self {
        Self {
            id: interaction.id,
            created_at: interaction.created_at,
            app: interaction.app.clone(),
            model: interaction.model.clone(),
            decision: interaction.decision,
            policy: interaction.policy.clone(),
            outcome: interaction.outcome,
            http_status: interaction.http_status,
            timings: interaction.timings,
            checks_hit: checks_hit(interaction),
        }
    }
}

/// Names of the checks that hit in an interaction, in the order they ran, without repeats.
pub fn checks_hit(interaction: &Interaction) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for check in interaction.checks.iter().filter(|c| c.hit) {
        if !names.iter().any(|n| n == &check.check) {
            names.push(check.check.clone());
        }
    }
    names
}

/// A request for a human to take over a conversation, recorded when a rule escalates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffRequest {
    /// The interaction that was escalated; it must be stored (in the same or an earlier batch).
    pub interaction_id: InteractionId,
    /// The app it belongs to.
    pub app: String,
    /// When the handoff was requested.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Why, usually the deciding rule's explanation.
    pub reason: String,
}

/// Which handoff requests to list, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffFilter {
    /// Only requests of this app.
    #[serde(default)]
    pub app: Option<String>,
    /// Only requests made at or after this instant.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub since: Option<OffsetDateTime>,
    /// Page size: 50 when unset, at most 500 (larger values are lowered), at least 1.
    #[serde(default)]
    pub limit: Option<u32>,
}

impl HandoffFilter {
    /// The page size this filter asks for, after applying the default and the bounds.
    pub fn effective_limit(&self) -> u32 {
        self.limit.unwrap_or(DEFAULT_LIST_LIMIT).clamp(1, MAX_LIST_LIMIT)
    }
}

/// An audit event to append to the chain; the store assigns its sequence number and hashes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When it happened.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Who acted: a key name, `system`, `cli`…
    pub actor: String,
    /// What was done (`policy.loaded`, `config.loaded`, `admin.read`…).
    pub action: String,
    /// Details; stored as compact JSON text and covered by the hash.
    pub payload: serde_json::Value,
}

impl AuditEntry {
    /// An entry stamped with the current time.
    pub fn now(actor: impl Into<String>, action: impl Into<String>, payload: serde_json::Value) -> Self {
        Self { at: OffsetDateTime::now_utc(), actor: actor.into(), action: action.into(), payload }
    }
}

/// Everything written in one transaction: all of it is stored, or none of it.
///
/// Each interaction also gets a `decision` audit record (actor `gateway`). Records are
/// appended in this order: the decision records in interaction order, then `audit` in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WriteBatch {
    /// Interactions to store.
    pub interactions: Vec<Interaction>,
    /// Handoff requests to store, after the interactions they refer to.
    pub handoffs: Vec<HandoffRequest>,
    /// Explicit audit entries to append after the interactions' decision records.
    pub audit: Vec<AuditEntry>,
    /// Review cases to open (after the interactions they refer to); a case that exists for
    /// its (interaction, reason) is skipped. Each opened case gets a `review.case_opened`
    /// record (actor `gateway`) after the explicit entries.
    pub cases: Vec<crate::review::NewCase>,
}

impl WriteBatch {
    /// Number of items (interactions, handoffs, audit entries and cases) in the batch.
    pub fn len(&self) -> usize {
        self.interactions.len() + self.handoffs.len() + self.audit.len() + self.cases.len()
    }

    /// True when the batch holds nothing to write.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The outcome of checking the audit chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum VerifyReport {
    /// Every record links to the one before it and matches its own hash.
    Ok {
        /// Number of records checked.
        count: u64,
        /// Sequence number of the last record (0 when the chain is empty).
        last_seq: i64,
        /// Hash of the last record (the genesis hash when the chain is empty); compare it with
        /// a copy kept elsewhere to detect a rewritten or truncated tail.
        last_hash: String,
    },
    /// The first record that does not fit the chain.
    Broken {
        /// Sequence number where the chain breaks (for a missing record: the missing number).
        seq: i64,
        /// What is wrong there.
        reason: String,
    },
}

impl VerifyReport {
    /// True when the chain verified.
    pub fn is_ok(&self) -> bool {
        matches!(self, VerifyReport::Ok { .. })
    }
}
