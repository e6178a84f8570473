//! Feedback on interactions, the events of handoffs to a human, and the facts the KPIs are
//! computed from.
//!
//! Both kinds of event carry a client-supplied event id: sending the same event again (same id,
//! same body) returns what was stored with `duplicate: true`; the same id with another body is a
//! conflict. Every stored event appends an audit record (with its actor) in the same
//! transaction.

use std::collections::HashSet;

use async_trait::async_trait;
use keel_core::InteractionId;
use keel_monitor::kpi::{FeedbackFacts, HandoffFacts, InteractionFacts, ReviewFacts};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::access::ChangeError;
use crate::error::Result;

/// Longest client event id accepted.
pub const MAX_EVENT_ID_LEN: usize = 200;

/// Longest feedback comment accepted, in characters.
pub const MAX_COMMENT_CHARS: usize = 4_000;

/// Thumbs up or down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Thumbs {
    /// The answer was good.
    Up,
    /// The answer was bad.
    Down,
}

impl Thumbs {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Thumbs::Up => "up",
            Thumbs::Down => "down",
        }
    }
}

impl std::str::FromStr for Thumbs {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "up" => Ok(Thumbs::Up),
            "down" => Ok(Thumbs::Down),
            other => Err(format!("`{other}` is neither `up` nor `down`")),
        }
    }
}

/// A feedback event to store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewFeedback {
    /// The client's id for this event: its idempotency key.
    pub event_id: String,
    /// The interaction it is about; it must be stored.
    pub interaction_id: InteractionId,
    /// A satisfaction score 1–5.
    pub satisfaction: Option<u8>,
    /// Thumbs up or down.
    pub thumbs: Option<Thumbs>,
    /// True when the user reports the answer as wrong.
    pub wrong_answer: Option<bool>,
    /// Free text from the user.
    pub comment: Option<String>,
    /// Who sent it (the key or token name).
    pub actor: String,
    /// When it was given.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// Checks a client event id.
pub fn check_event_id(event_id: &str) -> Result<(), ChangeError> {
    if event_id.trim().is_empty() {
        return Err(ChangeError::invalid("event_id", "must not be empty"));
    }
    if event_id.len() > MAX_EVENT_ID_LEN {
        return Err(ChangeError::invalid("event_id", format!("must be at most {MAX_EVENT_ID_LEN} bytes")));
    }
    Ok(())
}

impl NewFeedback {
    /// Refuses what cannot be stored: an empty event id, a score outside 1–5, a comment over
    /// the limit, or an event that says nothing (no score, no thumbs, no wrong-answer flag).
    pub fn validate(&self) -> Result<(), ChangeError> {
        check_event_id(&self.event_id)?;
        if let Some(score) = self.satisfaction {
            if !(1..=5).contains(&score) {
                return Err(ChangeError::invalid("satisfaction", format!("must be 1 to 5, got {score}")));
            }
        }
        if self.comment.as_ref().is_some_and(|c| c.chars().count() > MAX_COMMENT_CHARS) {
            return Err(ChangeError::invalid("comment", format!("must be at most {MAX_COMMENT_CHARS} characters")));
        }
        if self.satisfaction.is_none() && self.thumbs.is_none() && self.wrong_answer.is_none() {
            return Err(ChangeError::invalid(
                "satisfaction",
                "feedback needs at least one of `satisfaction`, `thumbs` or `wrong_answer`",
            ));
        }
        Ok(())
    }

    /// SHA-256 of what the event says (not who sent it or when): a retry must match it.
    pub fn body_sha256(&self) -> String {
        let body = serde_json::json!([
            self.interaction_id.to_string(),
            self.satisfaction,
            self.thumbs.map(Thumbs::as_str),
            self.wrong_answer,
            self.comment,
        ]);
        hex::encode(Sha256::digest(body.to_string().as_bytes()))
    }
}

/// A stored feedback event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feedback {
    /// Insertion sequence number: the drift monitor's cursor.
    pub seq: i64,
    /// The client's event id.
    pub event_id: String,
    /// The interaction it is about.
    pub interaction_id: InteractionId,
    /// The interaction's app.
    pub app: String,
    /// A satisfaction score 1–5.
    pub satisfaction: Option<u8>,
    /// Thumbs up or down.
    pub thumbs: Option<Thumbs>,
    /// True when the user reported the answer as wrong.
    pub wrong_answer: Option<bool>,
    /// Free text from the user.
    pub comment: Option<String>,
    /// Who sent it.
    pub actor: String,
    /// When it was given.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// What storing an event did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt<T> {
    /// The stored event (for a duplicate: the one stored first).
    pub event: T,
    /// True when the event was stored before and nothing changed now.
    pub duplicate: bool,
}

/// A step of a handoff to a human.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HandoffStep {
    /// A human was asked to take over.
    Requested,
    /// A human took it.
    Taken,
    /// The human finished.
    Resolved,
}

impl HandoffStep {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            HandoffStep::Requested => "requested",
            HandoffStep::Taken => "taken",
            HandoffStep::Resolved => "resolved",
        }
    }
}

impl std::str::FromStr for HandoffStep {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "requested" => Ok(HandoffStep::Requested),
            "taken" => Ok(HandoffStep::Taken),
            "resolved" => Ok(HandoffStep::Resolved),
            other => Err(format!("unknown handoff event `{other}` (use requested, taken or resolved)")),
        }
    }
}

/// A handoff event to store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewHandoffEvent {
    /// The client's id for this event: its idempotency key.
    pub event_id: String,
    /// The interaction handed off; it must be stored.
    pub interaction_id: InteractionId,
    /// Which step.
    pub step: HandoffStep,
    /// Why a handoff is requested (used when `requested` creates the handoff).
    pub reason: Option<String>,
    /// Who sent it.
    pub actor: String,
    /// When it happened.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

impl NewHandoffEvent {
    /// SHA-256 of what the event says: a retry must match it.
    pub fn body_sha256(&self) -> String {
        let body = serde_json::json!([self.interaction_id.to_string(), self.step.as_str(), self.reason]);
        hex::encode(Sha256::digest(body.to_string().as_bytes()))
    }
}

/// A handoff and how far it got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handoff {
    /// The interaction handed off.
    pub interaction_id: InteractionId,
    /// Its app.
    pub app: String,
    /// Why it was requested.
    pub reason: String,
    /// When it was requested.
    #[serde(with = "time::serde::rfc3339")]
    pub requested_at: OffsetDateTime,
    /// When a human took it.
    #[serde(with = "time::serde::rfc3339::option")]
    pub taken_at: Option<OffsetDateTime>,
    /// When the human finished.
    #[serde(with = "time::serde::rfc3339::option")]
    pub resolved_at: Option<OffsetDateTime>,
}

/// The stored result of a handoff event: the event's id and step, and the handoff after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffEvent {
    /// The client's event id.
    pub event_id: String,
    /// Which step it recorded.
    pub step: HandoffStep,
    /// Who sent it.
    pub actor: String,
    /// The handoff as it stands.
    pub handoff: Handoff,
}

/// Which interactions the KPIs cover: `since <= created_at < until`, of one app or all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KpiRange {
    /// Only this app; all apps when `None`.
    pub app: Option<String>,
    /// Start (inclusive).
    pub since: OffsetDateTime,
    /// End (exclusive).
    pub until: OffsetDateTime,
}

/// An interaction's KPI facts and its stored answer text (from which the caller decides
/// whether it refuses; the store does not judge).
#[derive(Debug, Clone, PartialEq)]
pub struct KpiInteraction {
    /// The facts, with `refused` left `None`.
    pub facts: InteractionFacts,
    /// The answer as stored (`None` under privacy `none` or when there was no answer).
    pub response_text: Option<String>,
}

/// Everything the KPIs of a range are computed from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KpiRows {
    /// The interactions in the range, oldest first.
    pub interactions: Vec<KpiInteraction>,
    /// Their feedback, in insertion order.
    pub feedback: Vec<FeedbackFacts>,
    /// Their handoffs.
    pub handoffs: Vec<HandoffFacts>,
    /// The final labels of their settled review cases.
    pub reviews: Vec<ReviewFacts>,
}

/// Storing and reading feedback and handoff events.
#[async_trait]
pub trait FeedbackStore: Send + Sync {
    /// Stores each event in one transaction and answers per event, in order: stored, a
    /// duplicate, or refused (unknown interaction → `NotFound`, same id with another body →
    /// `Conflict`, malformed → `Invalid`). A refused event does not stop the others.
    async fn record_feedback(&self, events: Vec<NewFeedback>) -> Result<Vec<Result<Receipt<Feedback>, ChangeError>>>;

    /// Up to `limit` feedback events stored after insertion seq `after_seq`, in order.
    async fn feedback_after(&self, after_seq: i64, limit: u32) -> Result<Vec<Feedback>>;

    /// Records a handoff step: `requested` creates the handoff when none exists, `taken` needs
    /// it requested, `resolved` needs it taken; a step out of order or taken twice is a
    /// `Conflict`, an unknown interaction `NotFound`.
    async fn record_handoff_event(&self, event: NewHandoffEvent) -> Result<Receipt<HandoffEvent>, ChangeError>;

    /// Which of `ids` are stored interactions.
    async fn stored_interactions(&self, ids: &[InteractionId]) -> Result<HashSet<InteractionId>>;

    /// The facts of the interactions in `range`, with their feedback and handoffs.
    async fn kpi_rows(&self, range: &KpiRange) -> Result<KpiRows>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> NewFeedback {
        NewFeedback {
            event_id: "e1".into(),
            interaction_id: InteractionId::new(),
            satisfaction: Some(4),
            thumbs: None,
            wrong_answer: None,
            comment: None,
            actor: "app".into(),
            created_at: OffsetDateTime::now_utc(),
        }
    }

    #[test]
    fn validation_names_the_field() {
        assert!(event().validate().is_ok());
        let bad = NewFeedback { satisfaction: Some(6), ..event() };
        assert_eq!(bad.validate().unwrap_err().to_string(), "satisfaction: must be 1 to 5, got 6");
        let empty = NewFeedback { satisfaction: None, ..event() };
        assert!(empty.validate().unwrap_err().to_string().contains("at least one of"));
        let no_id = NewFeedback { event_id: " ".into(), ..event() };
        assert!(no_id.validate().unwrap_err().to_string().starts_with("event_id:"));
    }

    #[test]
    fn the_body_hash_ignores_who_and_when_but_not_what() {
        let a = event();
        let later =
            NewFeedback { actor: "other".into(), created_at: a.created_at + time::Duration::hours(1), ..a.clone() };
        assert_eq!(a.body_sha256(), later.body_sha256());
        let changed = NewFeedback { satisfaction: Some(5), ..a.clone() };
        assert_ne!(a.body_sha256(), changed.body_sha256());
    }
}
