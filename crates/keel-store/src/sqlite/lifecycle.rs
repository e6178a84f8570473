//! Policy versions, their lifecycle, gate runs and shadow decisions in SQLite.
//!
//! Every change reads the state it depends on and writes inside one `BEGIN IMMEDIATE`
//! transaction together with its transition rows, its audit records and the change counter,
//! so two processes promoting at once cannot both win, and the partial unique indexes of the
//! schema hold the "one active, one shadow, one canary per name" rule even against bugs.

use async_trait::async_trait;
use keel_core::{Action, InteractionId, Phase, PolicyRef, ShadowDecision};
use serde_json::{json, Value};
use sqlx::sqlite::{SqlitePool, SqliteRow};
use sqlx::{QueryBuilder, Row, Sqlite, Transaction};
use std::str::FromStr;
use time::OffsetDateTime;

use super::access::{Counter, WriteTx};
use super::{db, from_nanos, insert_rows, to_nanos, SqliteStore};
use crate::access::ChangeError;
use crate::audit::sha256_hex;
use crate::error::{Result, StoreError};
use crate::lifecycle::{
    check_new_version, check_promotion, GateKind, GateRun, LifecycleStore, NewGateRun, NewPolicyVersion, PolicyStatus,
    PolicyVersion, Promotion, RollbackOutcome, Seeded, ShadowExample, ShadowPair, ShadowReport, Transition,
};
use crate::types::AuditEntry;

const VERSION_COLUMNS: &str = "name, version, status, author, approver, parent_version, origin, source_text, \
    sha256, canary_share, created_at, approved_at, status_at, activated_at";

const GATE_COLUMNS: &str =
    "id, policy_name, policy_version, policy_sha256, kind, passed, summary, run_sha256, actor, created_at";

const SHADOW_COLUMNS: &str = "interaction_id, ord, policy_name, policy_version, phase, action, rule";

/// SQL giving an action column's severity, so `MAX` finds the strongest action.
fn severity(column: &str) -> String {
    format!(
        "CASE {column} WHEN 'allow' THEN 0 WHEN 'flag' THEN 1 WHEN 'redact' THEN 2 WHEN 'escalate' THEN 3 \
         WHEN 'block' THEN 4 END"
    )
}

fn action_of_severity(severity: i64) -> Option<Action> {
    usize::try_from(severity).ok().and_then(|i| Action::ALL.get(i).copied())
}

struct Reader<'r> {
    row: &'r SqliteRow,
    what: String,
}

impl<'r> Reader<'r> {
    fn get<T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>>(&self, column: &str) -> Result<T> {
        self.row.try_get(column).map_err(|e| self.corrupt(column, e))
    }

    fn corrupt(&self, column: &str, reason: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt { what: self.what.clone(), reason: format!("column `{column}`: {reason}") }
    }

    fn parse<T, E: std::fmt::Display>(&self, column: &str, parse: impl FnOnce(&str) -> Result<T, E>) -> Result<T> {
        let text: String = self.get(column)?;
        parse(&text).map_err(|e| self.corrupt(column, e))
    }

    fn time(&self, column: &str) -> Result<OffsetDateTime> {
        from_nanos(self.get(column)?, &self.what)
    }

    fn optional_time(&self, column: &str) -> Result<Option<OffsetDateTime>> {
        self.get::<Option<i64>>(column)?.map(|n| from_nanos(n, &self.what)).transpose()
    }
}

fn version_from_row(row: &SqliteRow) -> Result<PolicyVersion> {
    let name: String = row.try_get("name").unwrap_or_default();
    let version: String = row.try_get("version").unwrap_or_default();
    let r = Reader { row, what: format!("policy version {name}@{version}") };
    Ok(PolicyVersion {
        status: r.parse("status", PolicyStatus::from_str)?,
        author: r.get("author")?,
        approver: r.get("approver")?,
        parent_version: r.get("parent_version")?,
        origin: r.get("origin")?,
        source_text: r.get("source_text")?,
        sha256: r.get("sha256")?,
        canary_share: r.get("canary_share")?,
        created_at: r.time("created_at")?,
        approved_at: r.optional_time("approved_at")?,
        status_at: r.time("status_at")?,
        activated_at: r.optional_time("activated_at")?,
        name,
        version,
    })
}

fn gate_from_row(row: &SqliteRow) -> Result<GateRun> {
    let id: i64 = row.try_get("id").unwrap_or_default();
    let r = Reader { row, what: format!("gate run {id}") };
    Ok(GateRun {
        id,
        policy: PolicyRef { name: r.get("policy_name")?, version: r.get("policy_version")? },
        policy_sha256: r.get("policy_sha256")?,
        kind: r.parse("kind", GateKind::from_str)?,
        passed: r.get("passed")?,
        summary: r.parse("summary", |t| serde_json::from_str::<Value>(t))?,
        run_sha256: r.get("run_sha256")?,
        actor: r.get("actor")?,
        created_at: r.time("created_at")?,
    })
}

fn nanos(at: OffsetDateTime) -> Result<i64> {
    to_nanos(at, || "a lifecycle change".to_owned())
}

/// Stores the shadow decisions of interactions written in the same batch.
pub(super) async fn insert_shadow(
    tx: &mut Transaction<'static, Sqlite>,
    interactions: &[(&str, &[ShadowDecision])],
) -> Result<()> {
    let rows: Vec<(&str, i64, &ShadowDecision)> = interactions
        .iter()
        .flat_map(|(id, shadow)| shadow.iter().enumerate().map(move |(ord, s)| (*id, ord as i64, s)))
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    insert_rows(tx, "shadow_decisions", SHADOW_COLUMNS, &rows, "storing shadow decisions", |values, (id, ord, s)| {
        values
            .push_bind(*id)
            .push_bind(*ord)
            .push_bind(s.policy.name.as_str())
            .push_bind(s.policy.version.as_str())
            .push_bind(s.phase.as_str())
            .push_bind(s.action.as_str())
            .push_bind(s.rule.as_deref());
    })
    .await
}

/// The shadow decisions stored with an interaction, in order.
pub(super) async fn shadow_of(pool: &SqlitePool, id: InteractionId) -> Result<Vec<ShadowDecision>> {
    let rows =
        sqlx::query(&format!("SELECT {SHADOW_COLUMNS} FROM shadow_decisions WHERE interaction_id = ? ORDER BY ord"))
            .bind(id.to_string())
            .fetch_all(pool)
            .await
            .map_err(db("reading shadow decisions"))?;
    rows.iter()
        .map(|row| {
            let r = Reader { row, what: format!("shadow decision of interaction {id}") };
            Ok(ShadowDecision {
                policy: PolicyRef { name: r.get("policy_name")?, version: r.get("policy_version")? },
                phase: r.parse("phase", |p| match p {
                    "input" => Ok(Phase::Input),
                    "output" => Ok(Phase::Output),
                    other => Err(format!("unknown phase `{other}`")),
                })?,
                action: r.parse("action", Action::from_str)?,
                rule: r.get("rule")?,
            })
        })
        .collect()
}

impl WriteTx<'_> {
    async fn version(&mut self, policy: &PolicyRef) -> Result<Option<PolicyVersion>> {
        let row = sqlx::query(&format!("SELECT {VERSION_COLUMNS} FROM policy_versions WHERE name = ? AND version = ?"))
            .bind(&policy.name)
            .bind(&policy.version)
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(db("reading a policy version"))?;
        row.as_ref().map(version_from_row).transpose()
    }

    /// The version, or a `NotFound` that lists the versions of that name.
    async fn existing(&mut self, policy: &PolicyRef) -> Result<PolicyVersion, ChangeError> {
        if let Some(found) = self.version(policy).await? {
            return Ok(found);
        }
        let versions: Vec<String> =
            sqlx::query_scalar("SELECT version FROM policy_versions WHERE name = ? ORDER BY created_at")
                .bind(&policy.name)
                .fetch_all(&mut *self.tx)
                .await
                .map_err(db("reading policy versions"))?;
        Err(ChangeError::NotFound(if versions.is_empty() {
            format!("no stored policy named `{}` (see `keel policy list`)", policy.name)
        } else {
            format!("no stored version {policy}; stored versions of `{}`: {}", policy.name, versions.join(", "))
        }))
    }

    /// The version of `name` in `status` (active, shadow or canary: at most one each).
    async fn slot(&mut self, name: &str, status: PolicyStatus) -> Result<Option<PolicyVersion>> {
        let row = sqlx::query(&format!("SELECT {VERSION_COLUMNS} FROM policy_versions WHERE name = ? AND status = ?"))
            .bind(name)
            .bind(status.as_str())
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(db("reading a policy version"))?;
        row.as_ref().map(version_from_row).transpose()
    }

    async fn insert_version(
        &mut self,
        new: &NewPolicyVersion,
        status: PolicyStatus,
        author: &str,
        now: OffsetDateTime,
    ) -> Result<PolicyVersion, ChangeError> {
        let parent = match &new.parent_version {
            Some(parent) => {
                let reference = PolicyRef { name: new.name.clone(), version: parent.clone() };
                if self.version(&reference).await?.is_none() {
                    return Err(ChangeError::invalid("parent", format!("no stored version {reference} to base it on")));
                }
                Some(parent.clone())
            }
            None => self.slot(&new.name, PolicyStatus::Active).await?.map(|v| v.version),
        };
        let activated = (status == PolicyStatus::Active).then_some(nanos(now)?);
        sqlx::query(&format!(
            "INSERT INTO policy_versions ({VERSION_COLUMNS}) VALUES (?, ?, ?, ?, NULL, ?, ?, ?, ?, NULL, ?, NULL, ?, ?)"
        ))
        .bind(&new.name)
        .bind(&new.version)
        .bind(status.as_str())
        .bind(author)
        .bind(&parent)
        .bind(&new.origin)
        .bind(&new.source_text)
        .bind(sha256_hex(&new.source_text))
        .bind(nanos(now)?)
        .bind(nanos(now)?)
        .bind(activated)
        .execute(&mut *self.tx)
        .await
        .map_err(db("storing a policy version"))?;
        let reference = PolicyRef { name: new.name.clone(), version: new.version.clone() };
        self.transition(&reference, None, status, author, now, json!({"origin": new.origin, "parent": parent})).await?;
        self.existing(&reference).await
    }

    /// Refuses a `name@version` that is stored already, saying whether the text differs.
    async fn refuse_duplicate(&mut self, new: &NewPolicyVersion) -> Result<Option<PolicyVersion>, ChangeError> {
        let reference = PolicyRef { name: new.name.clone(), version: new.version.clone() };
        let Some(stored) = self.version(&reference).await? else {
            return Ok(None);
        };
        if stored.sha256 == sha256_hex(&new.source_text) {
            return Ok(Some(stored));
        }
        Err(ChangeError::Conflict(format!(
            "{reference} is stored already with another text (sha256 {}…, {}): a stored version never changes; \
             bump `version` in the file for a new one",
            &stored.sha256[..12],
            stored.status
        )))
    }

    async fn set_status(
        &mut self,
        policy: &PolicyRef,
        to: PolicyStatus,
        share: Option<f64>,
        now: OffsetDateTime,
    ) -> Result<()> {
        let activated = if to == PolicyStatus::Active { Some(nanos(now)?) } else { None };
        sqlx::query(
            "UPDATE policy_versions SET status = ?, status_at = ?, canary_share = ?, \
             activated_at = coalesce(?, activated_at) WHERE name = ? AND version = ?",
        )
        .bind(to.as_str())
        .bind(nanos(now)?)
        .bind(share)
        .bind(activated)
        .bind(&policy.name)
        .bind(&policy.version)
        .execute(&mut *self.tx)
        .await
        .map_err(db("changing a policy version's status"))?;
        Ok(())
    }

    async fn transition(
        &mut self,
        policy: &PolicyRef,
        from: Option<PolicyStatus>,
        to: PolicyStatus,
        actor: &str,
        at: OffsetDateTime,
        detail: Value,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO policy_transitions (name, version, from_status, to_status, actor, at, detail) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&policy.name)
        .bind(&policy.version)
        .bind(from.map(PolicyStatus::as_str))
        .bind(to.as_str())
        .bind(actor)
        .bind(nanos(at)?)
        .bind(detail.to_string())
        .execute(&mut *self.tx)
        .await
        .map_err(db("recording a status change"))?;
        Ok(())
    }

    /// Moves a version to `to` and records the transition.
    async fn move_to(
        &mut self,
        version: &PolicyVersion,
        to: PolicyStatus,
        share: Option<f64>,
        actor: &str,
        now: OffsetDateTime,
        detail: Value,
    ) -> Result<()> {
        let reference = version.reference();
        self.set_status(&reference, to, share, now).await?;
        self.transition(&reference, Some(version.status), to, actor, now, detail).await
    }

    /// Audits, bumps the policy counter and commits.
    async fn finish(mut self, entries: Vec<AuditEntry>) -> Result<()> {
        self.audit(&entries).await?;
        self.bump(Counter::Policies).await?;
        self.commit().await
    }
}

#[async_trait]
impl LifecycleStore for SqliteStore {
    async fn add_policy_version(&self, new: NewPolicyVersion, actor: &str) -> Result<PolicyVersion, ChangeError> {
        check_new_version(&new)?;
        let now = OffsetDateTime::now_utc();
        let mut w = self.begin_write().await?;
        if let Some(stored) = w.refuse_duplicate(&new).await? {
            return Err(ChangeError::Conflict(format!(
                "{} is stored already with this same text ({}); nothing to add",
                stored.reference(),
                stored.status
            )));
        }
        let added = w.insert_version(&new, PolicyStatus::Draft, actor, now).await?;
        let entry = AuditEntry::now(
            actor,
            "policy.added",
            json!({"policy": added.reference().to_string(), "sha256": added.sha256, "origin": added.origin,
                   "parent": added.parent_version}),
        );
        w.finish(vec![entry]).await?;
        Ok(added)
    }

    async fn seed_policy_version(&self, new: NewPolicyVersion, actor: &str) -> Result<Seeded, ChangeError> {
        check_new_version(&new)?;
        let now = OffsetDateTime::now_utc();
        let mut w = self.begin_write().await?;
        if let Some(stored) = w.refuse_duplicate(&new).await? {
            return Ok(Seeded::Known(stored));
        }
        let activate = w.slot(&new.name, PolicyStatus::Active).await?.is_none();
        let status = if activate { PolicyStatus::Active } else { PolicyStatus::Draft };
        let stored = w.insert_version(&new, status, actor, now).await?;
        let (action, seeded) = if activate {
            ("policy.seeded", Seeded::Activated(stored.clone()))
        } else {
            ("policy.added", Seeded::Registered(stored.clone()))
        };
        let entry = AuditEntry::now(
            actor,
            action,
            json!({"policy": stored.reference().to_string(), "sha256": stored.sha256, "origin": stored.origin,
                   "status": stored.status, "parent": stored.parent_version}),
        );
        w.finish(vec![entry]).await?;
        Ok(seeded)
    }

    async fn policy_version(&self, policy: &PolicyRef) -> Result<Option<PolicyVersion>> {
        let row = sqlx::query(&format!("SELECT {VERSION_COLUMNS} FROM policy_versions WHERE name = ? AND version = ?"))
            .bind(&policy.name)
            .bind(&policy.version)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading a policy version"))?;
        row.as_ref().map(version_from_row).transpose()
    }

    async fn policy_versions(&self, name: Option<&str>) -> Result<Vec<PolicyVersion>> {
        let mut q = QueryBuilder::<Sqlite>::new(format!("SELECT {VERSION_COLUMNS} FROM policy_versions"));
        if let Some(name) = name {
            q.push(" WHERE name = ").push_bind(name.to_owned());
        }
        q.push(" ORDER BY name, created_at, version");
        let rows = q.build().fetch_all(&self.pool).await.map_err(db("listing policy versions"))?;
        rows.iter().map(version_from_row).collect()
    }

    async fn policies_in_force(&self) -> Result<Vec<PolicyVersion>> {
        let rows = sqlx::query(&format!(
            "SELECT {VERSION_COLUMNS} FROM policy_versions WHERE status IN ('active', 'shadow', 'canary') \
             ORDER BY name, status"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading the policies in force"))?;
        rows.iter().map(version_from_row).collect()
    }

    async fn policy_transitions(&self, policy: &PolicyRef) -> Result<Vec<Transition>> {
        let rows = sqlx::query(
            "SELECT seq, from_status, to_status, actor, at, detail FROM policy_transitions \
             WHERE name = ? AND version = ? ORDER BY seq",
        )
        .bind(&policy.name)
        .bind(&policy.version)
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading status changes"))?;
        rows.iter()
            .map(|row| {
                let r = Reader { row, what: format!("a status change of {policy}") };
                Ok(Transition {
                    policy: policy.clone(),
                    from: r
                        .get::<Option<String>>("from_status")?
                        .map(|s| s.parse())
                        .transpose()
                        .map_err(|e: String| r.corrupt("from_status", e))?,
                    to: r.parse("to_status", PolicyStatus::from_str)?,
                    actor: r.get("actor")?,
                    at: r.time("at")?,
                    detail: r.parse("detail", |t| serde_json::from_str::<Value>(t))?,
                })
            })
            .collect()
    }

    async fn approve_policy_version(&self, policy: &PolicyRef, actor: &str) -> Result<PolicyVersion, ChangeError> {
        let now = OffsetDateTime::now_utc();
        let mut w = self.begin_write().await?;
        let version = w.existing(policy).await?;
        if version.status != PolicyStatus::Draft {
            return Err(ChangeError::Conflict(format!(
                "{policy} is {} (approved by {}): only drafts are approved",
                version.status,
                version.approver.as_deref().unwrap_or("nobody")
            )));
        }
        if version.author == actor {
            return Err(ChangeError::Forbidden(format!(
                "`{actor}` wrote {policy}: approval must come from someone other than its author"
            )));
        }
        sqlx::query("UPDATE policy_versions SET approver = ?, approved_at = ? WHERE name = ? AND version = ?")
            .bind(actor)
            .bind(nanos(now)?)
            .bind(&policy.name)
            .bind(&policy.version)
            .execute(&mut *w.tx)
            .await
            .map_err(db("approving a policy version"))?;
        w.move_to(&version, PolicyStatus::Approved, None, actor, now, json!({"author": version.author})).await?;
        let entry = AuditEntry::now(
            actor,
            "policy.approved",
            json!({"policy": policy.to_string(), "author": version.author, "sha256": version.sha256}),
        );
        w.finish(vec![entry]).await?;
        self.policy_version(policy).await?.ok_or_else(|| ChangeError::NotFound(format!("{policy} vanished")))
    }

    async fn promote_policy_version(
        &self,
        policy: &PolicyRef,
        promotion: &Promotion,
        actor: &str,
    ) -> Result<PolicyVersion, ChangeError> {
        if let Some(reason) = &promotion.skip_gate {
            if reason.trim().is_empty() {
                return Err(ChangeError::invalid("skip_gate", "overriding the gate needs a reason"));
            }
        }
        let now = OffsetDateTime::now_utc();
        let mut w = self.begin_write().await?;
        let version = w.existing(policy).await?;
        check_promotion(policy, version.status, promotion)?;

        let runs: Vec<(i64, bool)> = sqlx::query_as(
            "SELECT id, passed FROM gate_runs WHERE policy_name = ? AND policy_version = ? AND policy_sha256 = ? \
             ORDER BY id DESC",
        )
        .bind(&policy.name)
        .bind(&policy.version)
        .bind(&version.sha256)
        .fetch_all(&mut *w.tx)
        .await
        .map_err(db("reading gate runs"))?;
        let gate_run = runs.iter().find(|(_, passed)| *passed).map(|(id, _)| *id);
        if gate_run.is_none() && promotion.skip_gate.is_none() {
            let failing = runs.len();
            return Err(ChangeError::Conflict(format!(
                "{policy} has no passing gate run (replay or eval) recorded for this exact version \
                 (sha256 {}…){}: run the replay or evaluation gate on it first; promotion to {} needs one",
                &version.sha256[..12],
                if failing > 0 { format!("; {failing} recorded run(s) failed") } else { String::new() },
                promotion.to
            )));
        }

        let mut replaced = None;
        match promotion.to {
            PolicyStatus::Shadow | PolicyStatus::Canary => {
                if let Some(other) = w.slot(&policy.name, promotion.to).await?.filter(|o| o.version != version.version)
                {
                    return Err(ChangeError::Conflict(format!(
                        "{} is already the {} of `{}` (at most one per policy): withdraw it first \
                         (keel policy withdraw {})",
                        other.reference(),
                        promotion.to,
                        policy.name,
                        other.reference()
                    )));
                }
            }
            _ => {
                if let Some(current) = w.slot(&policy.name, PolicyStatus::Active).await? {
                    w.move_to(
                        &current,
                        PolicyStatus::Retired,
                        None,
                        actor,
                        now,
                        json!({"replaced_by": policy.to_string()}),
                    )
                    .await?;
                    replaced = Some(current.reference().to_string());
                }
            }
        }
        let detail = json!({"share": promotion.share, "gate_run": gate_run, "skip_gate": promotion.skip_gate,
                            "replaced": replaced});
        w.move_to(&version, promotion.to, promotion.share, actor, now, detail).await?;
        let mut entries = Vec::new();
        if let (None, Some(reason)) = (gate_run, &promotion.skip_gate) {
            entries.push(AuditEntry::now(
                actor,
                "policy.gate_overridden",
                json!({"policy": policy.to_string(), "to": promotion.to, "reason": reason, "sha256": version.sha256}),
            ));
        }
        entries.push(AuditEntry::now(
            actor,
            "policy.promoted",
            json!({"policy": policy.to_string(), "from": version.status, "to": promotion.to,
                   "share": promotion.share, "gate_run": gate_run, "replaced": replaced, "sha256": version.sha256}),
        ));
        w.finish(entries).await?;
        self.policy_version(policy).await?.ok_or_else(|| ChangeError::NotFound(format!("{policy} vanished")))
    }

    async fn withdraw_policy_version(&self, policy: &PolicyRef, actor: &str) -> Result<PolicyVersion, ChangeError> {
        let now = OffsetDateTime::now_utc();
        let mut w = self.begin_write().await?;
        let version = w.existing(policy).await?;
        if !matches!(version.status, PolicyStatus::Shadow | PolicyStatus::Canary) {
            return Err(ChangeError::Conflict(format!(
                "{policy} is {}: only a shadow or canary version is withdrawn (the active one is replaced by \
                 promotion or rollback)",
                version.status
            )));
        }
        w.move_to(&version, PolicyStatus::Approved, None, actor, now, json!({"withdrawn": true})).await?;
        let entry = AuditEntry::now(
            actor,
            "policy.withdrawn",
            json!({"policy": policy.to_string(), "from": version.status, "to": PolicyStatus::Approved}),
        );
        w.finish(vec![entry]).await?;
        self.policy_version(policy).await?.ok_or_else(|| ChangeError::NotFound(format!("{policy} vanished")))
    }

    async fn rollback_policy(&self, name: &str, to: Option<&str>, actor: &str) -> Result<RollbackOutcome, ChangeError> {
        let now = OffsetDateTime::now_utc();
        let mut w = self.begin_write().await?;
        let Some(current) = w.slot(name, PolicyStatus::Active).await? else {
            return Err(ChangeError::NotFound(format!("policy `{name}` has no active version to roll back")));
        };
        let target = match to {
            Some(version) => {
                let reference = PolicyRef { name: name.to_owned(), version: version.to_owned() };
                let target = w.existing(&reference).await?;
                if target.status == PolicyStatus::Active {
                    return Err(ChangeError::Conflict(format!("{reference} is the active version already")));
                }
                if target.status != PolicyStatus::Retired || target.activated_at.is_none() {
                    return Err(ChangeError::Conflict(format!(
                        "{reference} is {} and was never active: rollback only restores a version that was in force \
                         before (promote it instead)",
                        target.status
                    )));
                }
                target
            }
            None => {
                let row = sqlx::query(&format!(
                    "SELECT {VERSION_COLUMNS} FROM policy_versions WHERE name = ? AND status = 'retired' \
                     AND activated_at IS NOT NULL ORDER BY activated_at DESC LIMIT 1"
                ))
                .bind(name)
                .fetch_optional(&mut *w.tx)
                .await
                .map_err(db("reading policy versions"))?;
                match row.as_ref().map(version_from_row).transpose()? {
                    Some(target) => target,
                    None => {
                        return Err(ChangeError::Conflict(format!(
                            "nothing to roll back to: {} is the only version of `{name}` that was ever active",
                            current.reference()
                        )))
                    }
                }
            }
        };
        let restored_ref = target.reference().to_string();
        w.move_to(&current, PolicyStatus::Retired, None, actor, now, json!({"rolled_back_to": restored_ref})).await?;
        let canary = w.slot(name, PolicyStatus::Canary).await?;
        if let Some(canary) = &canary {
            w.move_to(canary, PolicyStatus::Approved, None, actor, now, json!({"withdrawn_by_rollback": true})).await?;
        }
        w.move_to(
            &target,
            PolicyStatus::Active,
            None,
            actor,
            now,
            json!({"rollback_from": current.reference().to_string()}),
        )
        .await?;
        let entry = AuditEntry::now(
            actor,
            "policy.rolled_back",
            json!({"policy": name, "from": current.reference().to_string(), "to": restored_ref,
                   "withdrawn_canary": canary.as_ref().map(|c| c.reference().to_string())}),
        );
        w.finish(vec![entry]).await?;
        let reread = |v: &PolicyVersion| v.reference();
        let (retired, restored) = (reread(&current), reread(&target));
        let get = |r: PolicyRef| async move {
            self.policy_version(&r).await?.ok_or_else(|| ChangeError::NotFound(format!("{r} vanished")))
        };
        let withdrawn_canary = match canary {
            Some(c) => Some(get(c.reference()).await?),
            None => None,
        };
        Ok(RollbackOutcome { retired: get(retired).await?, restored: get(restored).await?, withdrawn_canary })
    }

    async fn record_gate_run(&self, run: NewGateRun) -> Result<GateRun, ChangeError> {
        if run.run_sha256.len() != 64
            || !run.run_sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(ChangeError::invalid("run_sha256", "must be 64 lowercase hex characters (a SHA-256)"));
        }
        if !run.summary.is_object() {
            return Err(ChangeError::invalid("summary", "must be a JSON object"));
        }
        if run.actor.trim().is_empty() {
            return Err(ChangeError::invalid("actor", "must name who ran the gate"));
        }
        let now = OffsetDateTime::now_utc();
        let mut w = self.begin_write().await?;
        let version = w.existing(&run.policy).await?;
        let twice: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM gate_runs WHERE policy_name = ? AND policy_version = ? AND run_sha256 = ?",
        )
        .bind(&run.policy.name)
        .bind(&run.policy.version)
        .bind(&run.run_sha256)
        .fetch_optional(&mut *w.tx)
        .await
        .map_err(db("reading gate runs"))?;
        if let Some(id) = twice {
            return Err(ChangeError::Conflict(format!(
                "this run (sha256 {}…) is recorded for {} already, as gate run #{id}",
                &run.run_sha256[..12],
                run.policy
            )));
        }
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO gate_runs (policy_name, policy_version, policy_sha256, kind, passed, summary, run_sha256, \
             actor, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(&run.policy.name)
        .bind(&run.policy.version)
        .bind(&version.sha256)
        .bind(run.kind.as_str())
        .bind(run.passed)
        .bind(run.summary.to_string())
        .bind(&run.run_sha256)
        .bind(&run.actor)
        .bind(nanos(now)?)
        .fetch_one(&mut *w.tx)
        .await
        .map_err(db("recording a gate run"))?;
        let entry = AuditEntry::now(
            run.actor.clone(),
            "gate.recorded",
            json!({"policy": run.policy.to_string(), "gate_run": id, "kind": run.kind, "passed": run.passed,
                   "run_sha256": run.run_sha256, "policy_sha256": version.sha256}),
        );
        w.finish(vec![entry]).await?;
        Ok(GateRun {
            id,
            policy: run.policy,
            policy_sha256: version.sha256,
            kind: run.kind,
            passed: run.passed,
            summary: run.summary,
            run_sha256: run.run_sha256,
            actor: run.actor,
            created_at: now,
        })
    }

    async fn gate_runs(&self, policy: &PolicyRef) -> Result<Vec<GateRun>> {
        let rows = sqlx::query(&format!(
            "SELECT {GATE_COLUMNS} FROM gate_runs WHERE policy_name = ? AND policy_version = ? ORDER BY id"
        ))
        .bind(&policy.name)
        .bind(&policy.version)
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading gate runs"))?;
        rows.iter().map(gate_from_row).collect()
    }

    async fn shadow_report(&self, policy: &PolicyRef, examples: u32) -> Result<ShadowReport> {
        let per_interaction = format!(
            "WITH per AS (SELECT interaction_id, MAX({}) AS sev FROM shadow_decisions \
             WHERE policy_name = ? AND policy_version = ? GROUP BY interaction_id)",
            severity("action")
        );
        let pairs: Vec<(i64, i64, i64)> = sqlx::query_as(&format!(
            "{per_interaction} SELECT {} AS served, per.sev, count(*) FROM per JOIN interactions i \
             ON i.id = per.interaction_id GROUP BY served, per.sev ORDER BY count(*) DESC, served, per.sev",
            severity("i.decision")
        ))
        .bind(&policy.name)
        .bind(&policy.version)
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading shadow decisions"))?;
        let corrupt = |reason: String| StoreError::Corrupt { what: format!("shadow decisions of {policy}"), reason };
        let mut report = ShadowReport {
            policy: policy.clone(),
            interactions: 0,
            differ: 0,
            pairs: Vec::with_capacity(pairs.len()),
            examples: Vec::new(),
        };
        for (served, shadow, count) in pairs {
            let (Some(served), Some(shadow)) = (action_of_severity(served), action_of_severity(shadow)) else {
                return Err(corrupt(format!("unknown action severity {served} or {shadow}")));
            };
            let count = u64::try_from(count).unwrap_or(0);
            report.interactions += count;
            if served != shadow {
                report.differ += count;
            }
            report.pairs.push(ShadowPair { served, shadow, count });
        }
        let rows = sqlx::query(&format!(
            "{per_interaction} SELECT per.interaction_id, per.sev, i.created_at, i.decision, \
             (SELECT s.rule FROM shadow_decisions s WHERE s.interaction_id = per.interaction_id \
              AND s.policy_name = ? AND s.policy_version = ? ORDER BY {} DESC, s.ord LIMIT 1) AS rule \
             FROM per JOIN interactions i ON i.id = per.interaction_id WHERE per.sev != {} \
             ORDER BY i.created_at DESC, per.interaction_id DESC LIMIT ?",
            severity("s.action"),
            severity("i.decision")
        ))
        .bind(&policy.name)
        .bind(&policy.version)
        .bind(&policy.name)
        .bind(&policy.version)
        .bind(i64::from(examples))
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading shadow decisions"))?;
        for row in &rows {
            let r = Reader { row, what: format!("a shadow decision of {policy}") };
            let sev: i64 = r.get("sev")?;
            report.examples.push(ShadowExample {
                interaction_id: r.parse("interaction_id", InteractionId::from_str)?,
                created_at: r.time("created_at")?,
                served: r.parse("decision", Action::from_str)?,
                shadow: action_of_severity(sev).ok_or_else(|| corrupt(format!("unknown action severity {sev}")))?,
                rule: r.get("rule")?,
            });
        }
        Ok(report)
    }
}
