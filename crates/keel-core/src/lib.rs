//! Keel's vocabulary, shared by every other crate: interactions, check results, findings,
//! decisions with their explanations, audit records, the ids that name them, and the roles
//! and permissions of the people who act on them.
//!
//! This crate owns plain data and the small rules that belong to the data itself (severity
//! order of actions, id generation). It must not do I/O, parse policy files or know about
//! HTTP; those belong to the crates that depend on it.

mod access;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

pub use access::{Permission, Role};

/// A time-ordered id (UUIDv7) for one interaction, so storage order and pagination follow time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct InteractionId(pub Uuid);

impl InteractionId {
    /// A fresh id for an interaction that starts now.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for InteractionId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for InteractionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for InteractionId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// Which side of an interaction a check reads: the client's request or the model's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The request's messages, before the upstream model sees them.
    Input,
    /// The upstream model's answer, before the client sees it.
    Output,
}

impl Phase {
    /// The lowercase name used in policy files, the API and storage.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Input => "input",
            Phase::Output => "output",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A byte range `start..end` in the text a check read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Span {
    /// First byte of the finding.
    pub start: usize,
    /// One past the last byte of the finding.
    pub end: usize,
}

impl Span {
    /// A span from `start` (inclusive) to `end` (exclusive).
    pub fn new(start: usize, end: usize) -> Self {
        Self { start, end }
    }

    /// Number of bytes covered.
    pub fn len(&self) -> usize {
        self.end.saturating_sub(self.start)
    }

    /// True when the span covers no byte.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when the two spans share at least one byte.
    pub fn overlaps(&self, other: &Span) -> bool {
        self.start < other.end && other.start < self.end
    }
}

/// One thing a check found: what it is (`email`, `credit_card`, `override_phrase`…) and where.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// The kind of thing found; redaction placeholders are derived from it (`[EMAIL]`).
    pub kind: String,
    /// Where it was found, in bytes of the text that was checked.
    pub span: Span,
    /// Index of the request message the span refers to (input phase only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<usize>,
    /// Extra evidence that explains the finding without repeating sensitive text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What one check concluded about one phase of an interaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    /// The check's name in the policy.
    pub check: String,
    /// The check's kind (`pii`, `regex`, `injection`…).
    pub kind: String,
    /// Which side was read.
    pub phase: Phase,
    /// Strength of the signal in `[0, 1]`.
    pub score: f64,
    /// True when the check considers its signal present (score at or above its threshold).
    pub hit: bool,
    /// What was found, with spans.
    pub findings: Vec<Finding>,
    /// Set when the check could not run; the policy's `on_check_error` decides what follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What the check saw, for people (e.g. the closest exemplar and its similarity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Time the check took, in microseconds.
    pub elapsed_us: u64,
    /// Whether it ran before the answer (and could decide) or after it (monitoring only).
    #[serde(default)]
    pub mode: CheckMode,
}

/// When a check runs relative to the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckMode {
    /// Before the answer is sent: its result can decide, and its time adds to latency.
    #[default]
    Inline,
    /// After the answer is sent: recorded for monitoring only, adding no latency.
    Async,
}

/// The action a decision takes, from most permissive to most restrictive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Pass the text through unchanged.
    Allow,
    /// Pass it through and mark the interaction for review.
    Flag,
    /// Replace the findings' spans with typed placeholders, then pass the text through.
    Redact,
    /// Reply with a handoff message and record a request for a human to take over.
    Escalate,
    /// Reply with the policy's block message instead of the model's answer.
    Block,
}

impl Action {
    /// All actions, in severity order.
    pub const ALL: [Action; 5] = [Action::Allow, Action::Flag, Action::Redact, Action::Escalate, Action::Block];

    /// The lowercase name used in policy files, headers, the API and storage.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Flag => "flag",
            Action::Redact => "redact",
            Action::Escalate => "escalate",
            Action::Block => "block",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Action::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| format!("unknown action `{s}` (expected allow, flag, redact, escalate or block)"))
    }
}

/// Names one version of one policy, written `name@version`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PolicyRef {
    /// The policy's name.
    pub name: String,
    /// The policy's version string.
    pub version: String,
}

impl fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.version)
    }
}

/// The action taken in one phase and why: the rule that fired and the evidence behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// What was done.
    pub action: Action,
    /// The phase this decision was taken in.
    pub phase: Phase,
    /// The rule that fired, or `None` when no rule matched and the default applied.
    pub rule: Option<String>,
    /// The rule's condition as written in the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// The policy version that decided.
    pub policy: PolicyRef,
    /// Checks whose results the rule read, with their score and the kinds they found.
    pub evidence: Vec<Evidence>,
    /// A one-sentence explanation for people.
    pub reason: String,
}

/// One check's contribution to a decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// The check's name.
    pub check: String,
    /// Its score.
    pub score: f64,
    /// Whether it hit.
    pub hit: bool,
    /// The distinct kinds of its findings.
    pub kinds: Vec<String>,
    /// Set when the check failed and the failure mode decided instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What the check saw, for people (e.g. the closest exemplar and its similarity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// How much of an app's text Keel keeps in storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Privacy {
    /// Requests and responses as they were.
    #[default]
    Full,
    /// Text with every PII finding replaced by its placeholder.
    Redacted,
    /// No text at all: only SHA-256 hashes of the request and the response.
    None,
}

impl Privacy {
    /// The lowercase name used in config and storage.
    pub fn as_str(self) -> &'static str {
        match self {
            Privacy::Full => "full",
            Privacy::Redacted => "redacted",
            Privacy::None => "none",
        }
    }
}

/// How an interaction ended, seen from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The client got an answer (the model's, a redacted one, or a block/handoff message).
    Completed,
    /// The upstream failed or timed out; the client got a 5xx.
    UpstreamError,
    /// The client went away before the answer was complete.
    ClientGone,
}

impl Outcome {
    /// The lowercase name used in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::UpstreamError => "upstream_error",
            Outcome::ClientGone => "client_gone",
        }
    }
}

impl FromStr for Outcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "completed" => Ok(Outcome::Completed),
            "upstream_error" => Ok(Outcome::UpstreamError),
            "client_gone" => Ok(Outcome::ClientGone),
            other => Err(format!("unknown outcome `{other}`")),
        }
    }
}

/// Where the time of one interaction went.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Timings {
    /// From sending the request upstream to the last byte of its answer, in milliseconds.
    pub upstream_ms: f64,
    /// Keel's own time (parsing, checks, rules, serialisation), in microseconds.
    pub overhead_us: u64,
    /// Wall time from receiving the request to finishing the response, in milliseconds.
    pub total_ms: f64,
}

/// Token counts as reported by the upstream (`usage`), when it reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Tokens {
    /// Prompt tokens.
    pub prompt: Option<u64>,
    /// Completion tokens.
    pub completion: Option<u64>,
}

/// One request and its response, with everything Keel decided about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interaction {
    /// Its id, also sent to the client in `x-keel-interaction-id`.
    pub id: InteractionId,
    /// When the request arrived.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The app the client key belongs to.
    pub app: String,
    /// The model the client asked for.
    pub model: String,
    /// Whether the client asked for a streamed answer.
    pub stream: bool,
    /// The request body as stored under the app's privacy setting.
    pub request: StoredText,
    /// The answer text the client received, as stored under the app's privacy setting.
    pub response: StoredText,
    /// How the interaction ended.
    pub outcome: Outcome,
    /// The HTTP status the client got.
    pub http_status: u16,
    /// The error, when the outcome is not `completed`.
    pub error: Option<String>,
    /// Where the time went.
    pub timings: Timings,
    /// Tokens used.
    pub tokens: Tokens,
    /// The policy version that judged it.
    pub policy: PolicyRef,
    /// The most restrictive action across phases: the interaction's decision.
    pub decision: Action,
    /// The decision of each phase that ran, with its explanation.
    pub decisions: Vec<Decision>,
    /// Every check's result, both phases.
    pub checks: Vec<CheckResult>,
    /// What shadow policy versions would have decided (recorded only; nothing enforced them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shadow: Vec<ShadowDecision>,
}

/// What a shadow policy version would have decided in one phase of an interaction. It runs
/// beside the enforced version on live traffic and changes nothing the client gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowDecision {
    /// The shadow version.
    pub policy: PolicyRef,
    /// The phase it judged.
    pub phase: Phase,
    /// The action it would have taken.
    pub action: Action,
    /// The rule that would have fired, or `None` when no rule matched.
    pub rule: Option<String>,
}

/// Text kept according to a privacy setting: the text itself (full or redacted) and its hash.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StoredText {
    /// The text, absent when the privacy setting is `none`.
    pub text: Option<String>,
    /// Lowercase hex SHA-256 of the original, unredacted text.
    pub sha256: String,
}

/// One entry of the hash-chained audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the chain, starting at 1, without gaps.
    pub seq: i64,
    /// When it was appended.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Who acted: a key name, `system`, or `cli`.
    pub actor: String,
    /// What was done (`decision`, `policy.loaded`, `config.loaded`, `admin.read`…).
    pub action: String,
    /// The JSON payload the hash covers.
    pub payload: String,
    /// Lowercase hex SHA-256 of `payload`.
    pub payload_hash: String,
    /// `hash` of the previous record (64 zeros for the first).
    pub prev_hash: String,
    /// Lowercase hex SHA-256 over this record's fields and `prev_hash`.
    pub hash: String,
}

/// The `prev_hash` of the first audit record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";
