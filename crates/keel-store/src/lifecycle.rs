//! Stored policy versions and their lifecycle, gate runs, and shadow reports: the types, the
//! rules every backend enforces, and the store trait.
//!
//! A version's status moves `draft → approved → shadow → canary → active → retired`. Shadow
//! and canary are optional stages: an approved version may go straight to active. Approval
//! comes from someone other than the author; every promotion past `approved` needs a passing
//! gate run recorded for that exact version (name, version and text hash), unless an admin
//! overrides it with a reason (audited as `policy.gate_overridden`). Per policy name there is
//! at most one active, one shadow and one canary version. Rollback puts the version that was
//! active before back in force. Every change is one transaction with its audit record.

use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use keel_core::{Action, InteractionId, PolicyRef};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::access::ChangeError;
use crate::error::Result;

/// Where a policy version is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyStatus {
    /// Written, not yet approved; nothing runs it.
    Draft,
    /// Approved by someone other than its author; nothing runs it yet.
    Approved,
    /// Runs beside the active version on live traffic; its decisions are recorded, never enforced.
    Shadow,
    /// Enforced on a share of the traffic (sticky per user), the active version on the rest.
    Canary,
    /// Enforced on all traffic of the apps bound to its policy name (minus the canary share).
    Active,
    /// No longer used; a retired version that was active once can be rolled back to.
    Retired,
}

impl PolicyStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [PolicyStatus; 6] = [
        PolicyStatus::Draft,
        PolicyStatus::Approved,
        PolicyStatus::Shadow,
        PolicyStatus::Canary,
        PolicyStatus::Active,
        PolicyStatus::Retired,
    ];

    /// The lowercase name used in the CLI, the API, storage and audit payloads.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyStatus::Draft => "draft",
            PolicyStatus::Approved => "approved",
            PolicyStatus::Shadow => "shadow",
            PolicyStatus::Canary => "canary",
            PolicyStatus::Active => "active",
            PolicyStatus::Retired => "retired",
        }
    }

    /// True for the statuses a running gateway loads: active, shadow and canary.
    pub fn is_in_force(self) -> bool {
        matches!(self, PolicyStatus::Active | PolicyStatus::Shadow | PolicyStatus::Canary)
    }
}

impl fmt::Display for PolicyStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PolicyStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PolicyStatus::ALL.into_iter().find(|p| p.as_str() == s).ok_or_else(|| {
            format!("unknown status `{s}` (expected draft, approved, shadow, canary, active or retired)")
        })
    }
}

/// A policy version to store: its self-contained source text (a policy extending a file is
/// given resolved) and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPolicyVersion {
    /// The policy's name (from its text).
    pub name: String,
    /// The version (from its text); a stored `name@version` never changes.
    pub version: String,
    /// The full source text; its SHA-256 is computed by the store.
    pub source_text: String,
    /// The version of the same name it was based on; `None` means the version active when it
    /// is added (if any).
    pub parent_version: Option<String>,
    /// Where the text came from, for people: a file path, `api`, `keel.toml`…
    pub origin: String,
}

/// A stored policy version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyVersion {
    /// The policy's name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Where it is in its lifecycle.
    pub status: PolicyStatus,
    /// Who added it.
    pub author: String,
    /// Who approved it, once approved.
    pub approver: Option<String>,
    /// The version it was based on.
    pub parent_version: Option<String>,
    /// Where its text came from.
    pub origin: String,
    /// The full, self-contained source text.
    pub source_text: String,
    /// Lowercase hex SHA-256 of `source_text`.
    pub sha256: String,
    /// The share of traffic it decides while it is the canary, in (0, 1).
    pub canary_share: Option<f64>,
    /// When it was added.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When it was approved.
    #[serde(with = "time::serde::rfc3339::option")]
    pub approved_at: Option<OffsetDateTime>,
    /// When its status last changed.
    #[serde(with = "time::serde::rfc3339")]
    pub status_at: OffsetDateTime,
    /// When it last became active.
    #[serde(with = "time::serde::rfc3339::option")]
    pub activated_at: Option<OffsetDateTime>,
}

impl PolicyVersion {
    /// `name@version`.
    pub fn reference(&self) -> PolicyRef {
        PolicyRef { name: self.name.clone(), version: self.version.clone() }
    }
}

/// One status change of a version, as recorded (the audit log holds it too).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    /// The version.
    pub policy: PolicyRef,
    /// Its status before; `None` when it was added.
    pub from: Option<PolicyStatus>,
    /// Its status after.
    pub to: PolicyStatus,
    /// Who made the change.
    pub actor: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Details: the share, the gate run, an override's reason, what it replaced.
    pub detail: serde_json::Value,
}

/// What to promote a version to.
#[derive(Debug, Clone, PartialEq)]
pub struct Promotion {
    /// `shadow`, `canary` or `active`.
    pub to: PolicyStatus,
    /// For `canary`: the share of traffic, in (0, 1). Required for canary, refused otherwise.
    pub share: Option<f64>,
    /// Promote without a passing gate run, for this reason (the caller checks that the actor
    /// holds `override_gate`); audited as `policy.gate_overridden`.
    pub skip_gate: Option<String>,
}

/// What a seed (the policy file of keel.toml, at start or on SIGHUP) did.
#[derive(Debug, Clone, PartialEq)]
pub enum Seeded {
    /// The name had no active version: the file's version was stored and activated.
    Activated(PolicyVersion),
    /// The name has an active version: the file's version was stored as a draft.
    Registered(PolicyVersion),
    /// That version is stored already, with the same text; nothing changed.
    Known(PolicyVersion),
}

/// What a rollback did.
#[derive(Debug, Clone, PartialEq)]
pub struct RollbackOutcome {
    /// The version that was active and is now retired.
    pub retired: PolicyVersion,
    /// The version active again.
    pub restored: PolicyVersion,
    /// The canary of the same name, withdrawn back to approved, if there was one.
    pub withdrawn_canary: Option<PolicyVersion>,
}

/// The kinds of gate run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateKind {
    /// Stored interactions re-judged with the version (`keel policy replay`).
    Replay,
    /// An evaluation suite run against the version (`keel eval`).
    Eval,
}

impl GateKind {
    /// The lowercase name used in storage and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            GateKind::Replay => "replay",
            GateKind::Eval => "eval",
        }
    }
}

impl FromStr for GateKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "replay" => Ok(GateKind::Replay),
            "eval" => Ok(GateKind::Eval),
            other => Err(format!("unknown gate kind `{other}` (expected replay or eval)")),
        }
    }
}

/// A gate run to record, made by the replay or evaluation parts.
#[derive(Debug, Clone, PartialEq)]
pub struct NewGateRun {
    /// The version it judged; it must be stored.
    pub policy: PolicyRef,
    /// Replay or eval.
    pub kind: GateKind,
    /// Whether the gate's thresholds were met.
    pub passed: bool,
    /// What the run found, for people and the API (a JSON object: metrics, thresholds…).
    pub summary: serde_json::Value,
    /// Lowercase hex SHA-256 of the full run record its producer keeps (report file, JSONL).
    pub run_sha256: String,
    /// Who ran it.
    pub actor: String,
}

/// A recorded gate run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateRun {
    /// Its id, in recording order.
    pub id: i64,
    /// The version it judged.
    pub policy: PolicyRef,
    /// The SHA-256 of that version's text when the run was recorded.
    pub policy_sha256: String,
    /// Replay or eval.
    pub kind: GateKind,
    /// Whether it passed.
    pub passed: bool,
    /// Its summary.
    pub summary: serde_json::Value,
    /// SHA-256 of the full run record.
    pub run_sha256: String,
    /// Who ran it.
    pub actor: String,
    /// When it was recorded.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// How often the served decision and a shadow version's would-be decision were each pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowPair {
    /// The interaction's decision, as served.
    pub served: Action,
    /// What the shadow version would have decided (strongest across phases).
    pub shadow: Action,
    /// Interactions with this pair.
    pub count: u64,
}

/// One interaction where the shadow version would have decided otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowExample {
    /// The interaction.
    pub interaction_id: InteractionId,
    /// When it happened.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The decision served.
    pub served: Action,
    /// The shadow's decision.
    pub shadow: Action,
    /// The shadow rule that decided, if a rule matched.
    pub rule: Option<String>,
}

/// What a shadow version would have done on the traffic it saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowReport {
    /// The shadow version.
    pub policy: PolicyRef,
    /// Interactions it judged.
    pub interactions: u64,
    /// Interactions where it would have decided otherwise.
    pub differ: u64,
    /// Counts per (served, shadow) pair, most frequent first.
    pub pairs: Vec<ShadowPair>,
    /// The newest interactions where it would have decided otherwise.
    pub examples: Vec<ShadowExample>,
}

/// Checks a promotion of a version in status `from` against the lifecycle rules (not the
/// gate and the slots, which need the store).
pub fn check_promotion(policy: &PolicyRef, from: PolicyStatus, promotion: &Promotion) -> Result<(), ChangeError> {
    use PolicyStatus as S;
    let to = promotion.to;
    if !matches!(to, S::Shadow | S::Canary | S::Active) {
        return Err(ChangeError::invalid(
            "to",
            format!(
                "a version is promoted to shadow, canary or active, not to {to} (see approve, withdraw and rollback)"
            ),
        ));
    }
    match (to, promotion.share) {
        (S::Canary, None) => {
            return Err(ChangeError::invalid("share", "a canary needs the share of traffic it decides, e.g. 0.1"))
        }
        (S::Canary, Some(share)) if !(share > 0.0 && share < 1.0) => {
            return Err(ChangeError::invalid(
                "share",
                format!("{share} is not a share of traffic strictly between 0 and 1 (0.1 is 10%)"),
            ))
        }
        (S::Shadow | S::Active, Some(_)) => {
            return Err(ChangeError::invalid("share", "only a canary takes a share of traffic"))
        }
        _ => {}
    }
    let legal = matches!(
        (from, to),
        (S::Approved, S::Shadow | S::Canary | S::Active)
            | (S::Shadow, S::Canary | S::Active)
            | (S::Canary, S::Canary | S::Active)
    );
    if legal {
        return Ok(());
    }
    let reason = match from {
        S::Draft => format!("{policy} is a draft: it must be approved first, by someone other than its author (keel policy approve {policy})"),
        S::Active => format!("{policy} is already active"),
        S::Retired => format!("{policy} is retired: it goes back into force only by rollback (keel policy rollback {} --to {})", policy.name, policy.version),
        S::Shadow if to == S::Shadow => format!("{policy} is already the shadow"),
        S::Approved | S::Shadow | S::Canary => format!(
            "{policy} cannot go from {from} back to {to}: withdraw it first (keel policy withdraw {policy}), then promote it again"
        ),
    };
    Err(ChangeError::Conflict(reason))
}

/// Checks that a version name and text are storable: a version without spaces, a sane name.
pub fn check_new_version(new: &NewPolicyVersion) -> Result<(), ChangeError> {
    let name_ok = !new.name.is_empty()
        && new.name.len() <= 128
        && new.name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !name_ok {
        return Err(ChangeError::invalid(
            "name",
            format!("`{}`: a stored policy name has 1 to 128 letters, digits, `.`, `_` or `-`", new.name),
        ));
    }
    if new.version.is_empty()
        || new.version.len() > 128
        || new.version.contains(|c: char| c.is_whitespace() || c == '@')
    {
        return Err(ChangeError::invalid(
            "version",
            format!("`{}`: a version has 1 to 128 characters, without spaces or `@`", new.version),
        ));
    }
    if new.source_text.trim().is_empty() {
        return Err(ChangeError::invalid("source", "the policy text is empty"));
    }
    Ok(())
}

/// Parses `name@version`.
pub fn parse_policy_ref(text: &str) -> Result<PolicyRef, ChangeError> {
    match text.split_once('@') {
        Some((name, version)) if !name.is_empty() && !version.is_empty() && !version.contains('@') => {
            Ok(PolicyRef { name: name.to_owned(), version: version.to_owned() })
        }
        _ => Err(ChangeError::invalid("policy", format!("`{text}` is not a policy reference like support@1.2.0"))),
    }
}

/// Stored policy versions, their lifecycle, gate runs and shadow reports.
#[async_trait]
pub trait LifecycleStore: Send + Sync {
    /// Stores a new draft authored by `actor` (`policy.added`). A stored `name@version` is
    /// never replaced (`Conflict`).
    async fn add_policy_version(&self, new: NewPolicyVersion, actor: &str) -> Result<PolicyVersion, ChangeError>;

    /// Stores the policy file of keel.toml: activated when its name has no active version
    /// (`policy.seeded`), else stored as a draft; the same version with another text is a
    /// `Conflict`.
    async fn seed_policy_version(&self, new: NewPolicyVersion, actor: &str) -> Result<Seeded, ChangeError>;

    /// One stored version.
    async fn policy_version(&self, policy: &PolicyRef) -> Result<Option<PolicyVersion>>;

    /// Stored versions (of one name, or all), by name, then oldest first.
    async fn policy_versions(&self, name: Option<&str>) -> Result<Vec<PolicyVersion>>;

    /// The versions running gateways load: every active, shadow and canary version.
    async fn policies_in_force(&self) -> Result<Vec<PolicyVersion>>;

    /// The status changes of one version, oldest first.
    async fn policy_transitions(&self, policy: &PolicyRef) -> Result<Vec<Transition>>;

    /// Approves a draft; the approver must not be its author (`Forbidden`).
    async fn approve_policy_version(&self, policy: &PolicyRef, actor: &str) -> Result<PolicyVersion, ChangeError>;

    /// Promotes a version (see [`check_promotion`]); past `approved` it needs a passing gate
    /// run for that exact version, or `skip_gate`. Activating retires the previous active
    /// version; an occupied shadow or canary slot is a `Conflict`.
    async fn promote_policy_version(
        &self,
        policy: &PolicyRef,
        promotion: &Promotion,
        actor: &str,
    ) -> Result<PolicyVersion, ChangeError>;

    /// Takes a shadow or canary version out of force, back to approved.
    async fn withdraw_policy_version(&self, policy: &PolicyRef, actor: &str) -> Result<PolicyVersion, ChangeError>;

    /// Retires the active version of `name` and restores the one active before it (or the
    /// retired, once-active version `to`); withdraws the name's canary.
    async fn rollback_policy(&self, name: &str, to: Option<&str>, actor: &str) -> Result<RollbackOutcome, ChangeError>;

    /// Records a gate run of a stored version (`gate.recorded`); the same run record
    /// (`run_sha256`) is recorded once per version (`Conflict`).
    async fn record_gate_run(&self, run: NewGateRun) -> Result<GateRun, ChangeError>;

    /// The gate runs of one version, oldest first.
    async fn gate_runs(&self, policy: &PolicyRef) -> Result<Vec<GateRun>>;

    /// What the shadow version `policy` would have decided on the traffic it saw, with up to
    /// `examples` of the newest interactions where it differs.
    async fn shadow_report(&self, policy: &PolicyRef, examples: u32) -> Result<ShadowReport>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r() -> PolicyRef {
        PolicyRef { name: "support".into(), version: "2".into() }
    }

    fn to(to: PolicyStatus, share: Option<f64>) -> Promotion {
        Promotion { to, share, skip_gate: None }
    }

    #[test]
    fn legal_promotions_go_forward_from_approved() {
        use PolicyStatus as S;
        let legal = [
            (S::Approved, S::Shadow),
            (S::Approved, S::Canary),
            (S::Approved, S::Active),
            (S::Shadow, S::Canary),
            (S::Shadow, S::Active),
            (S::Canary, S::Canary),
            (S::Canary, S::Active),
        ];
        for from in PolicyStatus::ALL {
            for target in [S::Shadow, S::Canary, S::Active] {
                let share = (target == S::Canary).then_some(0.1);
                let outcome = check_promotion(&r(), from, &to(target, share));
                assert_eq!(outcome.is_ok(), legal.contains(&(from, target)), "{from} → {target}: {outcome:?}");
            }
        }
    }

    #[test]
    fn illegal_promotions_say_what_to_do_instead() {
        use PolicyStatus as S;
        let message = |from, target| check_promotion(&r(), from, &to(target, None)).unwrap_err().to_string();
        assert!(message(S::Draft, S::Active).contains("must be approved first"));
        assert!(message(S::Retired, S::Active).contains("keel policy rollback support --to 2"));
        assert!(message(S::Canary, S::Shadow).contains("withdraw it first"));
        assert!(message(S::Active, S::Active).contains("already active"));
    }

    #[test]
    fn shares_belong_to_canaries_only() {
        use PolicyStatus as S;
        for bad in [0.0, 1.0, -0.5, f64::NAN, 1.5] {
            let err = check_promotion(&r(), S::Approved, &to(S::Canary, Some(bad))).unwrap_err();
            assert!(matches!(err, ChangeError::Invalid { ref field, .. } if field == "share"), "{bad}: {err:?}");
        }
        assert!(check_promotion(&r(), S::Approved, &to(S::Canary, None)).is_err());
        assert!(check_promotion(&r(), S::Approved, &to(S::Active, Some(0.5))).is_err());
        let err = check_promotion(&r(), S::Approved, &to(S::Retired, None)).unwrap_err();
        assert!(matches!(err, ChangeError::Invalid { ref field, .. } if field == "to"), "{err:?}");
    }

    proptest::proptest! {
        #[test]
        fn a_reference_reads_back_what_it_prints(name in "[a-z][a-z0-9_.-]{0,20}", version in "[0-9A-Za-z.+_-]{1,20}", junk in "\\PC{0,40}") {
            let reference = PolicyRef { name, version };
            proptest::prop_assert_eq!(parse_policy_ref(&reference.to_string()).ok(), Some(reference));
            if let Ok(parsed) = parse_policy_ref(&junk) {
                proptest::prop_assert_eq!(parsed.to_string(), junk);
            }
        }
    }

    #[test]
    fn references_and_names_are_checked() {
        assert_eq!(parse_policy_ref("support@1.2.0").unwrap().to_string(), "support@1.2.0");
        for bad in ["support", "@1", "support@", "a@b@c"] {
            assert!(parse_policy_ref(bad).is_err(), "{bad}");
        }
        let new = |name: &str, version: &str| NewPolicyVersion {
            name: name.into(),
            version: version.into(),
            source_text: "x".into(),
            parent_version: None,
            origin: "test".into(),
        };
        assert!(check_new_version(&new("support-bot", "1.0.0-rc.1")).is_ok());
        assert!(check_new_version(&new("sup port", "1")).is_err());
        assert!(check_new_version(&new("support", "1 2")).is_err());
        assert!(check_new_version(&new("support", "1@2")).is_err());
    }
}
