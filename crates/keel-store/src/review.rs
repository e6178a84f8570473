//! The human review queue: cases (why an interaction needs a person, how urgent, who holds it),
//! reviewers' labels, second reviews with adjudication, and inter-reviewer agreement.
//!
//! A case is opened at most once per (interaction, reason). Reviewers take the most urgent
//! case with a lock that lapses, so a crashed reviewer does not hold cases forever. A label
//! closes the case as `labelled`, unless the case needs a second review: then a different
//! reviewer labels it too; agreeing labels settle it, disagreeing ones send it to
//! `needs_adjudication`, where a third person (not one of the two) records the final label.
//! Every change is one transaction with its audit record.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use keel_core::{Action, Interaction, InteractionId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::access::ChangeError;
use crate::error::Result;
use crate::feedback::{Feedback, Thumbs};

/// Priority of escalations and wrong-answer reports: worked first.
pub const PRIORITY_HIGH: i64 = 100;
/// Priority of flagged interactions and drift alert samples.
pub const PRIORITY_NORMAL: i64 = 50;
/// Priority of low satisfaction reports.
pub const PRIORITY_MEDIUM: i64 = 30;
/// Priority of randomly sampled allowed traffic: worked last.
pub const PRIORITY_LOW: i64 = 10;

/// How long a reviewer holds a case taken from the queue unless configured otherwise.
pub const DEFAULT_LOCK: Duration = Duration::from_secs(30 * 60);

/// Why a case entered the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaseReason {
    /// The policy decided `flag`.
    Flagged,
    /// The policy decided `escalate`.
    Escalated,
    /// A user reported a wrong answer.
    WrongAnswerReport,
    /// A user gave a low satisfaction score.
    LowSatisfaction,
    /// A drift alert sampled the interaction from its window.
    DriftAlert,
    /// Random sampling of allowed traffic.
    Sampled,
}

impl CaseReason {
    /// Every reason.
    pub const ALL: [CaseReason; 6] = [
        CaseReason::Flagged,
        CaseReason::Escalated,
        CaseReason::WrongAnswerReport,
        CaseReason::LowSatisfaction,
        CaseReason::DriftAlert,
        CaseReason::Sampled,
    ];

    /// The name used in storage, the API and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            CaseReason::Flagged => "flagged",
            CaseReason::Escalated => "escalated",
            CaseReason::WrongAnswerReport => "wrong_answer_report",
            CaseReason::LowSatisfaction => "low_satisfaction",
            CaseReason::DriftAlert => "drift_alert",
            CaseReason::Sampled => "sampled",
        }
    }

    /// The priority a case of this reason gets unless its opener says otherwise.
    pub fn default_priority(self) -> i64 {
        match self {
            CaseReason::Escalated | CaseReason::WrongAnswerReport => PRIORITY_HIGH,
            CaseReason::Flagged | CaseReason::DriftAlert => PRIORITY_NORMAL,
            CaseReason::LowSatisfaction => PRIORITY_MEDIUM,
            CaseReason::Sampled => PRIORITY_LOW,
        }
    }
}

impl fmt::Display for CaseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CaseReason {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CaseReason::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| {
            format!(
                "unknown reason `{s}` (expected flagged, escalated, wrong_answer_report, low_satisfaction, \
                 drift_alert or sampled)"
            )
        })
    }
}

/// Where a case is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaseStatus {
    /// Waiting for a reviewer (also: waiting for its second review).
    Open,
    /// Taken by a reviewer whose lock has not lapsed.
    InReview,
    /// Its final label is recorded.
    Labelled,
    /// Two reviewers disagreed; a third person decides.
    NeedsAdjudication,
    /// Taken out of the queue without a label.
    Closed,
}

impl CaseStatus {
    /// Every status.
    pub const ALL: [CaseStatus; 5] = [
        CaseStatus::Open,
        CaseStatus::InReview,
        CaseStatus::Labelled,
        CaseStatus::NeedsAdjudication,
        CaseStatus::Closed,
    ];

    /// The name used in storage, the API and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            CaseStatus::Open => "open",
            CaseStatus::InReview => "in_review",
            CaseStatus::Labelled => "labelled",
            CaseStatus::NeedsAdjudication => "needs_adjudication",
            CaseStatus::Closed => "closed",
        }
    }
}

impl fmt::Display for CaseStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CaseStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CaseStatus::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| {
            format!("unknown status `{s}` (expected open, in_review, labelled, needs_adjudication or closed)")
        })
    }
}

/// A reviewer's judgement of an interaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelKind {
    /// The interaction was fine.
    Ok,
    /// The policy should have intervened.
    Violation,
    /// The model's answer was wrong.
    WrongAnswer,
    /// The policy intervened on something fine.
    OverRefusal,
}

impl LabelKind {
    /// Every label.
    pub const ALL: [LabelKind; 4] =
        [LabelKind::Ok, LabelKind::Violation, LabelKind::WrongAnswer, LabelKind::OverRefusal];

    /// The name used in storage, the API and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            LabelKind::Ok => "ok",
            LabelKind::Violation => "violation",
            LabelKind::WrongAnswer => "wrong_answer",
            LabelKind::OverRefusal => "over_refusal",
        }
    }
}

impl fmt::Display for LabelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LabelKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LabelKind::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown label `{s}` (expected ok, violation, wrong_answer or over_refusal)"))
    }
}

/// A label to record, checked: a violation has its category, a wrong answer its corrected
/// answer, an over-refusal what it should have said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewLabel {
    /// The judgement.
    pub label: LabelKind,
    /// The violation's category (a lowercase identifier); violations only.
    pub category: Option<String>,
    /// The corrected answer (wrong answers) or what it should have said (over-refusals).
    pub correction: Option<String>,
    /// A free note.
    pub note: Option<String>,
    /// Ask for a second review of this case even if the sampling did not.
    pub request_second: bool,
}

impl NewLabel {
    /// Builds a label from the wire's parts, naming the missing or misplaced field:
    /// `category` for violations, `corrected` for wrong answers, `should_have_said` for
    /// over-refusals.
    pub fn from_parts(
        label: &str,
        category: Option<String>,
        corrected: Option<String>,
        should_have_said: Option<String>,
        note: Option<String>,
    ) -> Result<Self, ChangeError> {
        let label: LabelKind = label.parse().map_err(|e: String| ChangeError::invalid("label", e))?;
        let present = |v: Option<String>| v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
        let (category, corrected, should_have_said) =
            (present(category), present(corrected), present(should_have_said));
        let misplaced = |field: &str| {
            ChangeError::invalid(field, format!("`{field}` does not belong to a `{}` label", label.as_str()))
        };
        let correction = match label {
            LabelKind::Ok => {
                if category.is_some() {
                    return Err(misplaced("category"));
                }
                if corrected.is_some() {
                    return Err(misplaced("corrected"));
                }
                if should_have_said.is_some() {
                    return Err(misplaced("should_have_said"));
                }
                None
            }
            LabelKind::Violation => {
                let Some(category) = &category else {
                    return Err(ChangeError::invalid(
                        "category",
                        "a `violation` label needs its category, e.g. product_recall",
                    ));
                };
                if !is_category(category) {
                    return Err(ChangeError::invalid(
                        "category",
                        format!("`{category}` is not a category: use lowercase letters, digits and `_`, up to 64"),
                    ));
                }
                if corrected.is_some() || should_have_said.is_some() {
                    return Err(misplaced(if corrected.is_some() { "corrected" } else { "should_have_said" }));
                }
                None
            }
            LabelKind::WrongAnswer => {
                if category.is_some() {
                    return Err(misplaced("category"));
                }
                if should_have_said.is_some() {
                    return Err(misplaced("should_have_said"));
                }
                Some(corrected.ok_or_else(|| {
                    ChangeError::invalid("corrected", "a `wrong_answer` label needs the corrected answer")
                })?)
            }
            LabelKind::OverRefusal => {
                if category.is_some() {
                    return Err(misplaced("category"));
                }
                if corrected.is_some() {
                    return Err(misplaced("corrected"));
                }
                Some(should_have_said.ok_or_else(|| {
                    ChangeError::invalid("should_have_said", "an `over_refusal` label needs what it should have said")
                })?)
            }
        };
        Ok(Self { label, category, correction, note: present(note), request_second: false })
    }

    /// True when two labels say the same thing (label and, for violations, category).
    pub fn agrees_with(&self, other: &StoredLabel) -> bool {
        self.label == other.label && self.category == other.category
    }
}

/// A lowercase identifier of 1 to 64 letters, digits and `_`, starting with a letter.
fn is_category(text: &str) -> bool {
    let mut bytes = text.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z'))
        && text.len() <= 64
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Whether a stored label is a reviewer's or an adjudicator's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelRole {
    /// A first or second review.
    Review,
    /// The decision on a disagreement.
    Adjudication,
}

impl LabelRole {
    /// The name used in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            LabelRole::Review => "review",
            LabelRole::Adjudication => "adjudication",
        }
    }
}

/// A recorded label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredLabel {
    /// Its id, in recording order.
    pub id: i64,
    /// Review or adjudication.
    pub role: LabelRole,
    /// Who gave it.
    pub reviewer: String,
    /// The judgement.
    pub label: LabelKind,
    /// The violation category.
    pub category: Option<String>,
    /// The corrected answer or what it should have said.
    pub correction: Option<String>,
    /// The reviewer's note.
    pub note: Option<String>,
    /// When it was given.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// True for the label that decides the case.
    #[serde(rename = "final")]
    pub is_final: bool,
}

/// A case to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCase {
    /// The interaction; it must be stored (in the same or an earlier batch).
    pub interaction_id: InteractionId,
    /// Its app.
    pub app: String,
    /// Why it needs a person.
    pub reason: CaseReason,
    /// The drift alert that sampled it (reason `drift_alert`).
    pub alert_id: Option<i64>,
    /// Higher is worked first (see the `PRIORITY_*` constants).
    pub priority: i64,
    /// Two labels by different reviewers are needed.
    pub needs_second: bool,
    /// When it was opened.
    pub created_at: OffsetDateTime,
    /// When it should be labelled by.
    pub due_at: OffsetDateTime,
}

/// A stored case with its labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReviewCase {
    /// Its id.
    pub id: i64,
    /// The interaction.
    pub interaction_id: InteractionId,
    /// Its app.
    pub app: String,
    /// Why it is in the queue.
    pub reason: CaseReason,
    /// The drift alert that sampled it.
    pub alert_id: Option<i64>,
    /// Higher is worked first.
    pub priority: i64,
    /// Where it is.
    pub status: CaseStatus,
    /// Two labels by different reviewers are needed.
    pub needs_second: bool,
    /// Who holds the lock (while `in_review`).
    pub assignee: Option<String>,
    /// When the lock lapses.
    #[serde(with = "time::serde::rfc3339::option")]
    pub lock_expires_at: Option<OffsetDateTime>,
    /// When it was opened.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The SLA: when it should be labelled by.
    #[serde(with = "time::serde::rfc3339")]
    pub due_at: OffsetDateTime,
    /// When a reviewer first took it.
    #[serde(with = "time::serde::rfc3339::option")]
    pub first_taken_at: Option<OffsetDateTime>,
    /// When its final label was recorded.
    #[serde(with = "time::serde::rfc3339::option")]
    pub labelled_at: Option<OffsetDateTime>,
    /// When it was closed without a label.
    #[serde(with = "time::serde::rfc3339::option")]
    pub closed_at: Option<OffsetDateTime>,
    /// Every label, oldest first.
    pub labels: Vec<StoredLabel>,
}

impl ReviewCase {
    /// The label that decides the case, once there is one.
    pub fn final_label(&self) -> Option<&StoredLabel> {
        self.labels.iter().find(|l| l.is_final)
    }

    /// The reviewer labels (not adjudications), oldest first.
    pub fn reviews(&self) -> impl Iterator<Item = &StoredLabel> {
        self.labels.iter().filter(|l| l.role == LabelRole::Review)
    }

    /// Who holds a lock on it at `now`, and until when, if anyone does.
    pub fn lock_at(&self, now: OffsetDateTime) -> Option<(&str, OffsetDateTime)> {
        match (&self.assignee, self.lock_expires_at) {
            (Some(who), Some(until)) if self.status == CaseStatus::InReview && until > now => Some((who, until)),
            _ => None,
        }
    }
}

/// Which cases to list, oldest first within priority (the order reviewers work them).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CaseFilter {
    /// Only cases in this status.
    pub status: Option<CaseStatus>,
    /// Only cases of this reason.
    pub reason: Option<CaseReason>,
    /// Only cases of this app.
    pub app: Option<String>,
    /// Only cases whose final label was recorded at or after this instant.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub labelled_since: Option<OffsetDateTime>,
    /// Only cases whose final label was recorded before this instant.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub labelled_until: Option<OffsetDateTime>,
    /// Page size: 50 when unset, at most 500 — or, with `all`, no limit (exports).
    pub limit: Option<u32>,
    /// Every matching case, whatever `limit` says.
    pub all: bool,
}

impl CaseFilter {
    /// The page size this filter asks for, after applying the default and the bounds.
    pub fn effective_limit(&self) -> u32 {
        self.limit.unwrap_or(crate::DEFAULT_LIST_LIMIT).clamp(1, crate::MAX_LIST_LIMIT)
    }
}

/// How long a case may wait for its final label, by priority band.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewSla {
    /// Priority at or above [`PRIORITY_HIGH`].
    pub high: Duration,
    /// Priority at or above [`PRIORITY_MEDIUM`].
    pub normal: Duration,
    /// Lower priorities.
    pub low: Duration,
}

impl Default for ReviewSla {
    fn default() -> Self {
        Self {
            high: Duration::from_secs(4 * 3600),
            normal: Duration::from_secs(24 * 3600),
            low: Duration::from_secs(72 * 3600),
        }
    }
}

impl ReviewSla {
    /// When a case of `priority` opened at `created_at` is due.
    pub fn due_at(&self, created_at: OffsetDateTime, priority: i64) -> OffsetDateTime {
        let wait = if priority >= PRIORITY_HIGH {
            self.high
        } else if priority >= PRIORITY_MEDIUM {
            self.normal
        } else {
            self.low
        };
        created_at.checked_add(wait.try_into().unwrap_or(time::Duration::MAX)).unwrap_or(created_at)
    }
}

/// Which stored interactions become cases as they are written: flags and escalations always,
/// allowed traffic at `sample_rate`, and a share of all cases needing a second review.
///
/// Both draws hash the interaction id (each with its own salt), so whether an interaction is
/// sampled is the same in every process and in tests.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CaseIntake {
    /// Share of allowed interactions sampled for review, in [0, 1].
    pub sample_rate: f64,
    /// Share of cases that need a second review, in [0, 1].
    pub second_review_share: f64,
    /// Due dates by priority.
    pub sla: ReviewSla,
}

impl Default for CaseIntake {
    fn default() -> Self {
        Self { sample_rate: 0.0, second_review_share: 0.0, sla: ReviewSla::default() }
    }
}

/// A deterministic draw in [0, 1) from an interaction id and a salt.
pub fn draw(id: InteractionId, salt: &str) -> f64 {
    let mut hasher = Sha256::new();
    hasher.update(salt.as_bytes());
    hasher.update(id.to_string().as_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // The top 53 bits make an exact double in [0, 1).
    (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
}

impl CaseIntake {
    /// True when the allowed interaction `id` is sampled for review.
    pub fn samples(&self, id: InteractionId) -> bool {
        draw(id, "keel.review.sample") < self.sample_rate
    }

    /// True when a case of interaction `id` needs a second review.
    pub fn wants_second(&self, id: InteractionId) -> bool {
        draw(id, "keel.review.second") < self.second_review_share
    }

    /// A case for `interaction_id` opened now for `reason` at its default priority.
    pub fn case(
        &self,
        interaction_id: InteractionId,
        app: &str,
        reason: CaseReason,
        alert_id: Option<i64>,
        now: OffsetDateTime,
    ) -> NewCase {
        let priority = reason.default_priority();
        NewCase {
            interaction_id,
            app: app.to_owned(),
            reason,
            alert_id,
            priority,
            needs_second: self.wants_second(interaction_id),
            created_at: now,
            due_at: self.sla.due_at(now, priority),
        }
    }

    /// The case a just-served interaction opens, if any.
    pub fn case_for(&self, interaction: &Interaction, now: OffsetDateTime) -> Option<NewCase> {
        let reason = match interaction.decision {
            Action::Flag => CaseReason::Flagged,
            Action::Escalate => CaseReason::Escalated,
            Action::Allow if self.samples(interaction.id) => CaseReason::Sampled,
            _ => return None,
        };
        Some(self.case(interaction.id, &interaction.app, reason, None, now))
    }

    /// The case a user's feedback opens: a reported wrong answer, or a low score
    /// (satisfaction 1–2 or thumbs down). Praise and middling scores open none.
    pub fn case_for_feedback(&self, feedback: &Feedback, now: OffsetDateTime) -> Option<NewCase> {
        let low = feedback.satisfaction.is_some_and(|s| s <= 2) || feedback.thumbs == Some(Thumbs::Down);
        let reason = if feedback.wrong_answer == Some(true) {
            CaseReason::WrongAnswerReport
        } else if low {
            CaseReason::LowSatisfaction
        } else {
            return None;
        };
        Some(self.case(feedback.interaction_id, &feedback.app, reason, None, now))
    }
}

/// Agreement between the two reviews of double-labelled cases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    /// Cases with two reviews.
    pub pairs: u64,
    /// Pairs whose labels (and violation categories) agree.
    pub agreed: u64,
    /// `agreed / pairs`.
    pub observed: Option<f64>,
    /// Cohen's kappa over the label (with the violation category as part of it).
    pub kappa: Option<f64>,
    /// One-versus-rest kappa per label and per violation category (`violation:CATEGORY`).
    pub per_category: Vec<CategoryAgreement>,
}

/// Agreement on one label or violation category, one versus the rest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategoryAgreement {
    /// `ok`, `violation`, …, or `violation:CATEGORY`.
    pub category: String,
    /// Pairs where at least one reviewer used it.
    pub used: u64,
    /// Pairs where both did.
    pub both: u64,
    /// Cohen's kappa of "used it" between the two reviewers; `None` when undefined.
    pub kappa: Option<f64>,
}

/// Agreement over `(first review, second review)` pairs.
pub fn agreement(pairs: &[(StoredLabel, StoredLabel)]) -> Agreement {
    let key = |l: &StoredLabel| match &l.category {
        Some(c) if l.label == LabelKind::Violation => format!("violation:{c}"),
        _ => l.label.as_str().to_owned(),
    };
    let keyed: Vec<(String, String)> = pairs.iter().map(|(a, b)| (key(a), key(b))).collect();
    let agreed = keyed.iter().filter(|(a, b)| a == b).count() as u64;
    let mut categories: Vec<String> = LabelKind::ALL.iter().map(|l| l.as_str().to_owned()).collect();
    for (a, b) in &keyed {
        for k in [a, b] {
            if k.starts_with("violation:") && !categories.contains(k) {
                categories.push(k.clone());
            }
        }
    }
    let per_category = categories
        .into_iter()
        .filter_map(|category| {
            let uses = |k: &str| k == category || (category == "violation" && k.starts_with("violation:"));
            let binary: Vec<(bool, bool)> = keyed.iter().map(|(a, b)| (uses(a), uses(b))).collect();
            let used = binary.iter().filter(|(a, b)| *a || *b).count() as u64;
            (used > 0).then(|| CategoryAgreement {
                both: binary.iter().filter(|(a, b)| *a && *b).count() as u64,
                kappa: keel_monitor::stats::cohen_kappa(&binary),
                used,
                category,
            })
        })
        .collect();
    Agreement {
        pairs: pairs.len() as u64,
        agreed,
        observed: (!pairs.is_empty()).then(|| agreed as f64 / pairs.len() as f64),
        kappa: keel_monitor::stats::cohen_kappa(&keyed),
        per_category,
    }
}

/// The review queue's storage.
#[async_trait]
pub trait ReviewStore: Send + Sync {
    /// Opens a case (`review.case_opened`, actor `actor`), or returns the one already open
    /// for the same (interaction, reason) unchanged; the flag says whether it was opened now.
    /// An interaction that is not stored is `NotFound`.
    async fn open_case(&self, new: NewCase, actor: &str) -> Result<(ReviewCase, bool), ChangeError>;

    /// One case with its labels.
    async fn get_case(&self, id: i64) -> Result<Option<ReviewCase>>;

    /// Cases matching `filter`, by priority (highest first), then oldest first.
    async fn list_cases(&self, filter: &CaseFilter) -> Result<Vec<ReviewCase>>;

    /// Takes the case `actor` should work next and locks it for `lock` (`review.case_taken`):
    /// the case they hold already, else the highest-priority, oldest open case (or one whose
    /// lock lapsed) they have not labelled, of `app` when given. `None` when there is none.
    async fn take_next_case(&self, actor: &str, app: Option<&str>, lock: Duration) -> Result<Option<ReviewCase>>;

    /// Records `actor`'s label (`review.labelled`). Refused: unknown case (`NotFound`), a case
    /// locked by someone else, already labelled by `actor`, settled, or awaiting adjudication
    /// (`Conflict`, naming who holds it and until when).
    async fn label_case(&self, id: i64, label: NewLabel, actor: &str) -> Result<ReviewCase, ChangeError>;

    /// Gives a held case back to the queue (`review.case_released`); only its holder may.
    async fn release_case(&self, id: i64, actor: &str) -> Result<ReviewCase, ChangeError>;

    /// Records the final label of a case in `needs_adjudication` (`review.adjudicated`); the
    /// adjudicator must not be one of its reviewers (`Forbidden`).
    async fn adjudicate_case(&self, id: i64, label: NewLabel, actor: &str) -> Result<ReviewCase, ChangeError>;

    /// Takes an unsettled case out of the queue without a label (`review.case_closed`).
    async fn close_case(&self, id: i64, reason: &str, actor: &str) -> Result<ReviewCase, ChangeError>;

    /// The two reviews of every double-labelled case (of `app` when given), oldest case first.
    async fn review_pairs(&self, app: Option<&str>) -> Result<Vec<(StoredLabel, StoredLabel)>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(error: ChangeError) -> String {
        match error {
            ChangeError::Invalid { field, .. } => field,
            other => format!("not invalid: {other}"),
        }
    }

    #[test]
    fn feedback_opens_a_case_for_wrong_answers_and_low_scores_only() {
        let intake = CaseIntake::default();
        let feedback = |satisfaction, thumbs, wrong_answer| Feedback {
            seq: 1,
            event_id: "e".into(),
            interaction_id: InteractionId::new(),
            app: "support".into(),
            satisfaction,
            thumbs,
            wrong_answer,
            comment: None,
            actor: "key:bot".into(),
            created_at: OffsetDateTime::UNIX_EPOCH,
        };
        let reason = |f: Feedback| intake.case_for_feedback(&f, OffsetDateTime::UNIX_EPOCH).map(|c| c.reason);
        assert_eq!(reason(feedback(Some(5), None, Some(true))), Some(CaseReason::WrongAnswerReport));
        assert_eq!(reason(feedback(Some(2), None, None)), Some(CaseReason::LowSatisfaction));
        assert_eq!(reason(feedback(None, Some(Thumbs::Down), Some(false))), Some(CaseReason::LowSatisfaction));
        assert_eq!(reason(feedback(Some(3), Some(Thumbs::Up), Some(false))), None);
        assert_eq!(reason(feedback(Some(1), None, Some(true))), Some(CaseReason::WrongAnswerReport), "a report wins");
    }

    #[test]
    fn labels_name_the_field_they_miss() {
        let s = |v: &str| Some(v.to_owned());
        assert_eq!(field(NewLabel::from_parts("violation", None, None, None, None).unwrap_err()), "category");
        assert_eq!(field(NewLabel::from_parts("wrong_answer", None, None, None, None).unwrap_err()), "corrected");
        assert_eq!(
            field(NewLabel::from_parts("over_refusal", None, s("x"), None, None).unwrap_err()),
            "corrected",
            "a misplaced field is named too"
        );
        assert_eq!(
            field(NewLabel::from_parts("over_refusal", None, None, None, None).unwrap_err()),
            "should_have_said"
        );
        assert_eq!(field(NewLabel::from_parts("maybe", None, None, None, None).unwrap_err()), "label");
        assert_eq!(field(NewLabel::from_parts("violation", s("Bad Cat"), None, None, None).unwrap_err()), "category");
        assert_eq!(field(NewLabel::from_parts("ok", s("x"), None, None, None).unwrap_err()), "category");
        let ok = NewLabel::from_parts("wrong_answer", None, s(" 42 "), None, s("  ")).unwrap();
        assert_eq!(ok.correction.as_deref(), Some("42"));
        assert_eq!(ok.note, None);
        let v = NewLabel::from_parts("violation", s("product_recall"), None, None, None).unwrap();
        assert_eq!(v.category.as_deref(), Some("product_recall"));
    }

    #[test]
    fn sampling_is_deterministic_and_close_to_its_rate() {
        let intake = CaseIntake { sample_rate: 0.1, ..CaseIntake::default() };
        let ids: Vec<InteractionId> = (0..5000).map(|_| InteractionId::new()).collect();
        let sampled = ids.iter().filter(|id| intake.samples(**id)).count();
        assert!((400..=600).contains(&sampled), "{sampled} of 5000 at 10%");
        assert!(ids.iter().all(|id| intake.samples(*id) == intake.samples(*id)));
        let none = CaseIntake::default();
        assert!(ids.iter().all(|id| !none.samples(*id)));
        let all = CaseIntake { sample_rate: 1.0, ..CaseIntake::default() };
        assert!(ids.iter().all(|id| all.samples(*id)));
    }

    #[test]
    fn the_sla_follows_the_priority_band() {
        let sla = ReviewSla::default();
        let t = OffsetDateTime::UNIX_EPOCH;
        assert_eq!(sla.due_at(t, PRIORITY_HIGH), t + time::Duration::hours(4));
        assert_eq!(sla.due_at(t, PRIORITY_NORMAL), t + time::Duration::hours(24));
        assert_eq!(sla.due_at(t, PRIORITY_LOW), t + time::Duration::hours(72));
    }

    fn label(label: LabelKind, category: Option<&str>) -> StoredLabel {
        StoredLabel {
            id: 0,
            role: LabelRole::Review,
            reviewer: "r".into(),
            label,
            category: category.map(str::to_owned),
            correction: None,
            note: None,
            at: OffsetDateTime::UNIX_EPOCH,
            is_final: false,
        }
    }

    #[test]
    fn agreement_is_computed_per_category_by_hand() {
        use LabelKind::{Ok, Violation};
        // 4 pairs: (ok, ok), (v:a, v:a), (v:a, v:b), (ok, v:b).
        let pairs = vec![
            (label(Ok, None), label(Ok, None)),
            (label(Violation, Some("a")), label(Violation, Some("a"))),
            (label(Violation, Some("a")), label(Violation, Some("b"))),
            (label(Ok, None), label(Violation, Some("b"))),
        ];
        let report = agreement(&pairs);
        assert_eq!((report.pairs, report.agreed), (4, 2));
        // Overall: p_o = 0.5; rater 1 ok 0.5, v:a 0.5; rater 2 ok 0.25, v:a 0.25, v:b 0.5;
        // p_e = 0.5·0.25 + 0.5·0.25 = 0.25 → κ = (0.5 − 0.25) / 0.75 = 1/3.
        assert!((report.kappa.unwrap() - 1.0 / 3.0).abs() < 1e-12);
        let of = |c: &str| report.per_category.iter().find(|a| a.category == c).unwrap();
        // `violation` one-vs-rest: (F,F), (T,T), (T,T), (F,T): p_o = 0.75; p_e = 0.5·0.75 + 0.5·0.25
        // = 0.5 → κ = 0.5.
        assert!((of("violation").kappa.unwrap() - 0.5).abs() < 1e-12);
        assert_eq!((of("violation").used, of("violation").both), (3, 2));
        // `violation:b`: (F,F), (F,F), (F,T), (F,T): rater 1 never uses it: p_o = 0.5, p_e = 0.5 → 0.
        assert_eq!(of("violation:b").kappa, Some(0.0));
        assert!(report.per_category.iter().all(|c| c.category != "wrong_answer"));
    }
}
