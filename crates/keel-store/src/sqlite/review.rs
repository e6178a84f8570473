//! [`ReviewStore`] on SQLite (tables of migration 0006).
//!
//! Every change reads the case inside one `BEGIN IMMEDIATE` transaction, checks it, writes it
//! and appends its audit record, so two reviewers taking or labelling at once cannot both win.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use keel_core::InteractionId;
use serde_json::json;
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Sqlite, Transaction};
use time::OffsetDateTime;

use super::{db, from_nanos, to_nanos, RowReader, SqliteStore};
use crate::access::ChangeError;
use crate::error::Result;
use crate::review::{
    CaseFilter, CaseReason, CaseStatus, LabelKind, LabelRole, NewCase, NewLabel, ReviewCase, ReviewStore, StoredLabel,
};
use crate::types::AuditEntry;

const CASE_COLUMNS: &str = "id, interaction_id, app, reason, alert_id, priority, status, needs_second, assignee, \
    lock_expires_at, created_at, due_at, first_taken_at, labelled_at, closed_at";

const LABEL_COLUMNS: &str = "id, case_id, kind, reviewer, label, category, correction, note, at, final";

fn nanos(at: OffsetDateTime) -> Result<i64> {
    to_nanos(at, || "a review case".to_owned())
}

fn case_from_row(row: &SqliteRow) -> Result<ReviewCase> {
    let id: i64 = sqlx::Row::try_get(row, "id").unwrap_or_default();
    let r = RowReader { row, what: format!("review case {id}") };
    let optional_time = |column: &str| -> Result<Option<OffsetDateTime>> {
        r.get::<Option<i64>>(column)?.map(|n| from_nanos(n, &r.what)).transpose()
    };
    Ok(ReviewCase {
        id,
        interaction_id: r.parse("interaction_id", InteractionId::from_str)?,
        app: r.get("app")?,
        reason: r.parse("reason", CaseReason::from_str)?,
        alert_id: r.get("alert_id")?,
        priority: r.get("priority")?,
        status: r.parse("status", CaseStatus::from_str)?,
        needs_second: r.get("needs_second")?,
        assignee: r.get("assignee")?,
        lock_expires_at: optional_time("lock_expires_at")?,
        created_at: r.time("created_at")?,
        due_at: r.time("due_at")?,
        first_taken_at: optional_time("first_taken_at")?,
        labelled_at: optional_time("labelled_at")?,
        closed_at: optional_time("closed_at")?,
        labels: Vec::new(),
    })
}

fn label_from_row(row: &SqliteRow) -> Result<(i64, StoredLabel)> {
    let id: i64 = sqlx::Row::try_get(row, "id").unwrap_or_default();
    let r = RowReader { row, what: format!("review label {id}") };
    let role = match r.get::<String>("kind")?.as_str() {
        "review" => LabelRole::Review,
        "adjudication" => LabelRole::Adjudication,
        other => return Err(r.corrupt("kind", format!("unknown label kind `{other}`"))),
    };
    Ok((
        r.get("case_id")?,
        StoredLabel {
            id,
            role,
            reviewer: r.get("reviewer")?,
            label: r.parse("label", LabelKind::from_str)?,
            category: r.get("category")?,
            correction: r.get("correction")?,
            note: r.get("note")?,
            at: r.time("at")?,
            is_final: r.get("final")?,
        },
    ))
}

/// Fills in the labels of `cases` with one query.
async fn with_labels<'e, E>(executor: E, mut cases: Vec<ReviewCase>) -> Result<Vec<ReviewCase>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    if cases.is_empty() {
        return Ok(cases);
    }
    let mut q = QueryBuilder::<Sqlite>::new(format!("SELECT {LABEL_COLUMNS} FROM review_labels WHERE case_id IN ("));
    let mut ids = q.separated(", ");
    for case in &cases {
        ids.push_bind(case.id);
    }
    q.push(") ORDER BY id");
    let rows = q.build().persistent(false).fetch_all(executor).await.map_err(db("reading review labels"))?;
    for row in &rows {
        let (case_id, label) = label_from_row(row)?;
        if let Some(case) = cases.iter_mut().find(|c| c.id == case_id) {
            case.labels.push(label);
        }
    }
    Ok(cases)
}

/// The case `id` inside `tx`, with its labels.
async fn case_in(tx: &mut Transaction<'static, Sqlite>, id: i64) -> Result<Option<ReviewCase>> {
    let row = sqlx::query(&format!("SELECT {CASE_COLUMNS} FROM review_cases WHERE id = ?"))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db("reading a review case"))?;
    let Some(case) = row.as_ref().map(case_from_row).transpose()? else { return Ok(None) };
    Ok(with_labels(&mut **tx, vec![case]).await?.pop())
}

async fn existing(tx: &mut Transaction<'static, Sqlite>, id: i64) -> Result<ReviewCase, ChangeError> {
    case_in(tx, id).await?.ok_or_else(|| ChangeError::NotFound(format!("no review case with id {id}")))
}

fn at(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// Refuses a change to a case someone else holds a live lock on.
fn refuse_foreign_lock(case: &ReviewCase, actor: &str, now: OffsetDateTime) -> Result<(), ChangeError> {
    match case.lock_at(now) {
        Some((holder, until)) if holder != actor => Err(ChangeError::Conflict(format!(
            "review case {} is locked by {holder} until {} (it lapses then, or {holder} releases it)",
            case.id,
            at(until)
        ))),
        _ => Ok(()),
    }
}

/// Inserts a case unless one exists for its (interaction, reason); returns the new id.
pub(super) async fn insert_case(tx: &mut Transaction<'static, Sqlite>, new: &NewCase) -> Result<Option<i64>> {
    sqlx::query_scalar(
        "INSERT INTO review_cases (interaction_id, app, reason, alert_id, priority, status, needs_second, \
         created_at, due_at) VALUES (?, ?, ?, ?, ?, 'open', ?, ?, ?) \
         ON CONFLICT (interaction_id, reason) DO NOTHING RETURNING id",
    )
    .bind(new.interaction_id.to_string())
    .bind(&new.app)
    .bind(new.reason.as_str())
    .bind(new.alert_id)
    .bind(new.priority)
    .bind(new.needs_second)
    .bind(nanos(new.created_at)?)
    .bind(nanos(new.due_at)?)
    .fetch_optional(&mut **tx)
    .await
    .map_err(db("opening a review case"))
}

/// The audit entry of an opened case.
pub(super) fn opened_entry(id: i64, new: &NewCase, actor: &str) -> AuditEntry {
    AuditEntry {
        at: new.created_at,
        actor: actor.to_owned(),
        action: "review.case_opened".to_owned(),
        payload: json!({
            "case_id": id,
            "interaction_id": new.interaction_id.to_string(),
            "app": new.app,
            "reason": new.reason.as_str(),
            "alert_id": new.alert_id,
            "priority": new.priority,
            "needs_second": new.needs_second,
        }),
    }
}

fn label_payload(case: &ReviewCase, label: &NewLabel) -> serde_json::Value {
    json!({
        "case_id": case.id,
        "interaction_id": case.interaction_id.to_string(),
        "label": label.label.as_str(),
        "category": label.category,
        "has_correction": label.correction.is_some(),
        "status": case.status.as_str(),
    })
}

async fn insert_label(
    tx: &mut Transaction<'static, Sqlite>,
    case_id: i64,
    role: LabelRole,
    label: &NewLabel,
    actor: &str,
    now: OffsetDateTime,
    is_final: bool,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO review_labels (case_id, kind, reviewer, label, category, correction, note, at, final) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(case_id)
    .bind(role.as_str())
    .bind(actor)
    .bind(label.label.as_str())
    .bind(&label.category)
    .bind(&label.correction)
    .bind(&label.note)
    .bind(nanos(now)?)
    .bind(is_final)
    .execute(&mut **tx)
    .await
    .map_err(db("recording a review label"))?;
    Ok(())
}

/// Sets a case's status and lock, and its labelled or closed time when given.
async fn set_case(
    tx: &mut Transaction<'static, Sqlite>,
    id: i64,
    status: CaseStatus,
    lock: Option<(&str, OffsetDateTime)>,
    labelled_at: Option<OffsetDateTime>,
    needs_second: bool,
) -> Result<()> {
    sqlx::query(
        "UPDATE review_cases SET status = ?, assignee = ?, lock_expires_at = ?, \
         labelled_at = COALESCE(?, labelled_at), needs_second = ? WHERE id = ?",
    )
    .bind(status.as_str())
    .bind(lock.map(|(who, _)| who))
    .bind(lock.map(|(_, until)| nanos(until)).transpose()?)
    .bind(labelled_at.map(nanos).transpose()?)
    .bind(needs_second)
    .bind(id)
    .execute(&mut **tx)
    .await
    .map_err(db("updating a review case"))?;
    Ok(())
}

#[async_trait]
impl ReviewStore for SqliteStore {
    async fn open_case(&self, new: NewCase, actor: &str) -> Result<(ReviewCase, bool), ChangeError> {
        let mut w = self.begin_write().await?;
        let stored: Option<i64> = sqlx::query_scalar("SELECT 1 FROM interactions WHERE id = ?")
            .bind(new.interaction_id.to_string())
            .fetch_optional(&mut *w.tx)
            .await
            .map_err(db("reading an interaction"))?;
        if stored.is_none() {
            return Err(ChangeError::NotFound(format!("no stored interaction {}", new.interaction_id)));
        }
        match insert_case(&mut w.tx, &new).await? {
            Some(id) => {
                w.audit(&[opened_entry(id, &new, actor)]).await?;
                let case = existing(&mut w.tx, id).await?;
                w.commit().await?;
                Ok((case, true))
            }
            None => {
                let id: i64 = sqlx::query_scalar("SELECT id FROM review_cases WHERE interaction_id = ? AND reason = ?")
                    .bind(new.interaction_id.to_string())
                    .bind(new.reason.as_str())
                    .fetch_one(&mut *w.tx)
                    .await
                    .map_err(db("reading a review case"))?;
                Ok((existing(&mut w.tx, id).await?, false))
            }
        }
    }

    async fn get_case(&self, id: i64) -> Result<Option<ReviewCase>> {
        let row = sqlx::query(&format!("SELECT {CASE_COLUMNS} FROM review_cases WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading a review case"))?;
        let Some(case) = row.as_ref().map(case_from_row).transpose()? else { return Ok(None) };
        Ok(with_labels(&self.pool, vec![case]).await?.pop())
    }

    async fn list_cases(&self, filter: &CaseFilter) -> Result<Vec<ReviewCase>> {
        let mut q = QueryBuilder::<Sqlite>::new(format!("SELECT {CASE_COLUMNS} FROM review_cases WHERE 1 = 1"));
        if let Some(status) = filter.status {
            q.push(" AND status = ").push_bind(status.as_str());
        }
        if let Some(reason) = filter.reason {
            q.push(" AND reason = ").push_bind(reason.as_str());
        }
        if let Some(app) = &filter.app {
            q.push(" AND app = ").push_bind(app.clone());
        }
        if let Some(since) = filter.labelled_since {
            q.push(" AND labelled_at >= ").push_bind(nanos(since)?);
        }
        if let Some(until) = filter.labelled_until {
            q.push(" AND labelled_at < ").push_bind(nanos(until)?);
        }
        q.push(" ORDER BY priority DESC, created_at, id");
        if !filter.all {
            q.push(" LIMIT ").push_bind(i64::from(filter.effective_limit()));
        }
        let rows = q.build().fetch_all(&self.pool).await.map_err(db("listing review cases"))?;
        let cases = rows.iter().map(case_from_row).collect::<Result<Vec<_>>>()?;
        with_labels(&self.pool, cases).await
    }

    async fn take_next_case(&self, actor: &str, app: Option<&str>, lock: Duration) -> Result<Option<ReviewCase>> {
        let now = OffsetDateTime::now_utc();
        let until = now.checked_add(lock.try_into().unwrap_or(time::Duration::MAX)).unwrap_or(now);
        let mut w = self.begin_write().await?;
        let mut q = QueryBuilder::<Sqlite>::new("SELECT id FROM review_cases c WHERE (");
        q.push("(status = 'in_review' AND assignee = ")
            .push_bind(actor)
            .push(" AND lock_expires_at > ")
            .push_bind(nanos(now)?)
            .push(") OR ((status = 'open' OR (status = 'in_review' AND lock_expires_at <= ")
            .push_bind(nanos(now)?)
            .push(")) AND NOT EXISTS (SELECT 1 FROM review_labels l WHERE l.case_id = c.id AND l.reviewer = ")
            .push_bind(actor)
            .push(")))");
        if let Some(app) = app {
            q.push(" AND app = ").push_bind(app.to_owned());
        }
        // The case the actor holds comes first, so asking again does not lock a second one.
        q.push(" ORDER BY (status = 'in_review' AND assignee = ")
            .push_bind(actor)
            .push(") DESC, priority DESC, created_at, id LIMIT 1");
        let id: Option<i64> =
            q.build_query_scalar().fetch_optional(&mut *w.tx).await.map_err(db("finding the next review case"))?;
        let Some(id) = id else { return Ok(None) };
        sqlx::query(
            "UPDATE review_cases SET status = 'in_review', assignee = ?, lock_expires_at = ?, \
             first_taken_at = COALESCE(first_taken_at, ?) WHERE id = ?",
        )
        .bind(actor)
        .bind(nanos(until)?)
        .bind(nanos(now)?)
        .bind(id)
        .execute(&mut *w.tx)
        .await
        .map_err(db("taking a review case"))?;
        let case = case_in(&mut w.tx, id).await?;
        if let Some(case) = &case {
            w.audit(&[AuditEntry::now(
                actor,
                "review.case_taken",
                json!({"case_id": id, "interaction_id": case.interaction_id.to_string(), "lock_expires_at": at(until)}),
            )])
            .await?;
        }
        w.commit().await?;
        Ok(case)
    }

    async fn label_case(&self, id: i64, label: NewLabel, actor: &str) -> Result<ReviewCase, ChangeError> {
        let now = OffsetDateTime::now_utc();
        let mut w = self.begin_write().await?;
        let case = existing(&mut w.tx, id).await?;
        match case.status {
            CaseStatus::Labelled => {
                return Err(ChangeError::Conflict(format!(
                    "review case {id} is labelled already (at {})",
                    case.labelled_at.map(at).unwrap_or_default()
                )))
            }
            CaseStatus::NeedsAdjudication => {
                return Err(ChangeError::Conflict(format!(
                    "review case {id} has two disagreeing labels: it needs adjudication (POST /api/review/cases/{id}/adjudicate)"
                )))
            }
            CaseStatus::Closed => return Err(ChangeError::Conflict(format!("review case {id} is closed"))),
            CaseStatus::Open | CaseStatus::InReview => {}
        }
        refuse_foreign_lock(&case, actor, now)?;
        let reviews: Vec<&StoredLabel> = case.reviews().collect();
        if let Some(mine) = reviews.iter().find(|l| l.reviewer == actor) {
            return Err(ChangeError::Conflict(format!(
                "{actor} labelled review case {id} already (at {}): a second review comes from a different reviewer",
                at(mine.at)
            )));
        }
        let needs_second = case.needs_second || label.request_second;
        let (status, is_final) = match reviews.first() {
            None if needs_second => (CaseStatus::Open, false),
            None => (CaseStatus::Labelled, true),
            Some(first) if label.agrees_with(first) => (CaseStatus::Labelled, true),
            Some(_) => (CaseStatus::NeedsAdjudication, false),
        };
        insert_label(&mut w.tx, id, LabelRole::Review, &label, actor, now, is_final).await?;
        set_case(&mut w.tx, id, status, None, is_final.then_some(now), needs_second).await?;
        let updated = existing(&mut w.tx, id).await?;
        let mut payload = label_payload(&updated, &label);
        payload["review"] = json!(reviews.len() + 1);
        w.audit(&[AuditEntry::now(actor, "review.labelled", payload)]).await?;
        w.commit().await?;
        Ok(updated)
    }

    async fn release_case(&self, id: i64, actor: &str) -> Result<ReviewCase, ChangeError> {
        let now = OffsetDateTime::now_utc();
        let mut w = self.begin_write().await?;
        let case = existing(&mut w.tx, id).await?;
        match case.lock_at(now) {
            Some((holder, _)) if holder == actor => {}
            Some((holder, until)) => {
                return Err(ChangeError::Conflict(format!(
                    "review case {id} is locked by {holder} until {}, not by {actor}",
                    at(until)
                )))
            }
            None => return Err(ChangeError::Conflict(format!("{actor} holds no lock on review case {id}"))),
        }
        set_case(&mut w.tx, id, CaseStatus::Open, None, None, case.needs_second).await?;
        w.audit(&[AuditEntry::now(
            actor,
            "review.case_released",
            json!({"case_id": id, "interaction_id": case.interaction_id.to_string()}),
        )])
        .await?;
        let updated = existing(&mut w.tx, id).await?;
        w.commit().await?;
        Ok(updated)
    }

    async fn adjudicate_case(&self, id: i64, label: NewLabel, actor: &str) -> Result<ReviewCase, ChangeError> {
        let now = OffsetDateTime::now_utc();
        let mut w = self.begin_write().await?;
        let case = existing(&mut w.tx, id).await?;
        if case.status != CaseStatus::NeedsAdjudication {
            return Err(ChangeError::Conflict(format!(
                "review case {id} is {}: only a case with disagreeing labels (needs_adjudication) is adjudicated",
                case.status
            )));
        }
        if case.reviews().any(|l| l.reviewer == actor) {
            return Err(ChangeError::Forbidden(format!(
                "{actor} labelled review case {id}: a disagreement is adjudicated by someone who did not review it"
            )));
        }
        insert_label(&mut w.tx, id, LabelRole::Adjudication, &label, actor, now, true).await?;
        set_case(&mut w.tx, id, CaseStatus::Labelled, None, Some(now), case.needs_second).await?;
        let updated = existing(&mut w.tx, id).await?;
        w.audit(&[AuditEntry::now(actor, "review.adjudicated", label_payload(&updated, &label))]).await?;
        w.commit().await?;
        Ok(updated)
    }

    async fn close_case(&self, id: i64, reason: &str, actor: &str) -> Result<ReviewCase, ChangeError> {
        let now = OffsetDateTime::now_utc();
        let mut w = self.begin_write().await?;
        let case = existing(&mut w.tx, id).await?;
        if matches!(case.status, CaseStatus::Labelled | CaseStatus::Closed) {
            return Err(ChangeError::Conflict(format!("review case {id} is {} already", case.status)));
        }
        refuse_foreign_lock(&case, actor, now)?;
        sqlx::query(
            "UPDATE review_cases SET status = 'closed', assignee = NULL, lock_expires_at = NULL, closed_at = ? \
             WHERE id = ?",
        )
        .bind(nanos(now)?)
        .bind(id)
        .execute(&mut *w.tx)
        .await
        .map_err(db("closing a review case"))?;
        w.audit(&[AuditEntry::now(
            actor,
            "review.case_closed",
            json!({"case_id": id, "interaction_id": case.interaction_id.to_string(), "reason": reason}),
        )])
        .await?;
        let updated = existing(&mut w.tx, id).await?;
        w.commit().await?;
        Ok(updated)
    }

    async fn review_pairs(&self, app: Option<&str>) -> Result<Vec<(StoredLabel, StoredLabel)>> {
        let mut q = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {CASE_COLUMNS} FROM review_cases c WHERE (SELECT count(*) FROM review_labels l \
             WHERE l.case_id = c.id AND l.kind = 'review') >= 2"
        ));
        if let Some(app) = app {
            q.push(" AND app = ").push_bind(app.to_owned());
        }
        q.push(" ORDER BY created_at, id");
        let rows = q.build().fetch_all(&self.pool).await.map_err(db("reading double-labelled cases"))?;
        let cases = rows.iter().map(case_from_row).collect::<Result<Vec<_>>>()?;
        let cases = with_labels(&self.pool, cases).await?;
        Ok(cases
            .into_iter()
            .filter_map(|case| {
                let mut reviews = case.reviews().cloned();
                Some((reviews.next()?, reviews.next()?))
            })
            .collect())
    }
}
