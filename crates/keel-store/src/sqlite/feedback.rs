//! Feedback and handoff events in SQLite, and the KPI facts of a time range.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use async_trait::async_trait;
use keel_core::InteractionId;
use keel_monitor::kpi::{FeedbackFacts, HandoffFacts, InteractionFacts, ReviewFacts};
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite};

use super::access::WriteTx;
use super::{db, from_nanos, to_nanos, SqliteStore};
use crate::access::ChangeError;
use crate::error::{Result, StoreError};
use crate::feedback::{
    check_event_id, Feedback, FeedbackStore, Handoff, HandoffEvent, HandoffStep, KpiInteraction, KpiRange, KpiRows,
    NewFeedback, NewHandoffEvent, Receipt, Thumbs,
};
use crate::types::AuditEntry;

const FEEDBACK_COLUMNS: &str =
    "seq, event_id, interaction_id, app, satisfaction, thumbs, wrong_answer, comment, actor, created_at";

/// Ids per `IN (…)` lookup, well under SQLite's bound-parameter limit.
const IDS_PER_LOOKUP: usize = 500;

fn corrupt(what: &str, column: &str, reason: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt { what: what.to_owned(), reason: format!("column `{column}`: {reason}") }
}

fn get<'r, T>(row: &'r SqliteRow, what: &str, column: &str) -> Result<T>
where
    T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>,
{
    row.try_get(column).map_err(|e| corrupt(what, column, e))
}

fn interaction_id(row: &SqliteRow, what: &str, column: &str) -> Result<InteractionId> {
    let text: String = get(row, what, column)?;
    InteractionId::from_str(&text).map_err(|e| corrupt(what, column, e))
}

fn feedback_from_row(row: &SqliteRow) -> Result<Feedback> {
    let seq: i64 = get(row, "feedback", "seq")?;
    let what = format!("feedback {seq}");
    let satisfaction: Option<i64> = get(row, &what, "satisfaction")?;
    let thumbs: Option<String> = get(row, &what, "thumbs")?;
    let created_at: i64 = get(row, &what, "created_at")?;
    Ok(Feedback {
        seq,
        event_id: get(row, &what, "event_id")?,
        interaction_id: interaction_id(row, &what, "interaction_id")?,
        app: get(row, &what, "app")?,
        satisfaction: satisfaction
            .map(|s| u8::try_from(s).map_err(|_| corrupt(&what, "satisfaction", format!("{s} is out of range"))))
            .transpose()?,
        thumbs: thumbs.map(|t| t.parse::<Thumbs>().map_err(|e| corrupt(&what, "thumbs", e))).transpose()?,
        wrong_answer: get(row, &what, "wrong_answer")?,
        comment: get(row, &what, "comment")?,
        actor: get(row, &what, "actor")?,
        created_at: from_nanos(created_at, &what)?,
    })
}

/// The app of a stored interaction, inside the write.
async fn app_of(w: &mut WriteTx<'_>, id: InteractionId) -> Result<Option<String>> {
    sqlx::query_scalar("SELECT app FROM interactions WHERE id = ?")
        .bind(id.to_string())
        .fetch_optional(&mut *w.tx)
        .await
        .map_err(db("reading an interaction"))
}

fn unknown_interaction(id: InteractionId) -> ChangeError {
    ChangeError::NotFound(format!("no interaction with id {id}"))
}

impl SqliteStore {
    /// Stores one feedback event inside `w`; the audit entry to append is pushed to `audit`.
    async fn feedback_one(
        w: &mut WriteTx<'_>,
        event: NewFeedback,
        audit: &mut Vec<AuditEntry>,
    ) -> Result<Receipt<Feedback>, ChangeError> {
        event.validate()?;
        let hash = event.body_sha256();
        let sql = format!("SELECT {FEEDBACK_COLUMNS}, body_sha256 FROM feedback WHERE event_id = ?");
        let existing =
            sqlx::query(&sql).bind(&event.event_id).fetch_optional(&mut *w.tx).await.map_err(db("reading feedback"))?;
        if let Some(row) = existing {
            let stored_hash: String = get(&row, "feedback", "body_sha256")?;
            if stored_hash != hash {
                return Err(ChangeError::Conflict(format!(
                    "feedback event `{}` was already stored with a different body; use a new event id for new feedback",
                    event.event_id
                )));
            }
            return Ok(Receipt { event: feedback_from_row(&row)?, duplicate: true });
        }
        let app = app_of(w, event.interaction_id).await?.ok_or_else(|| unknown_interaction(event.interaction_id))?;
        let created_at = to_nanos(event.created_at, || format!("feedback event `{}`", event.event_id))?;
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO feedback (event_id, body_sha256, interaction_id, app, satisfaction, thumbs, wrong_answer, \
             comment, actor, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING seq",
        )
        .bind(&event.event_id)
        .bind(&hash)
        .bind(event.interaction_id.to_string())
        .bind(&app)
        .bind(event.satisfaction.map(i64::from))
        .bind(event.thumbs.map(Thumbs::as_str))
        .bind(event.wrong_answer)
        .bind(event.comment.as_deref())
        .bind(&event.actor)
        .bind(created_at)
        .fetch_one(&mut *w.tx)
        .await
        .map_err(db("storing feedback"))?;
        audit.push(AuditEntry::now(
            &event.actor,
            "feedback.recorded",
            serde_json::json!({
                "event_id": event.event_id,
                "interaction_id": event.interaction_id.to_string(),
                "satisfaction": event.satisfaction,
                "thumbs": event.thumbs.map(Thumbs::as_str),
                "wrong_answer": event.wrong_answer,
            }),
        ));
        Ok(Receipt {
            event: Feedback {
                seq,
                event_id: event.event_id,
                interaction_id: event.interaction_id,
                app,
                satisfaction: event.satisfaction,
                thumbs: event.thumbs,
                wrong_answer: event.wrong_answer,
                comment: event.comment,
                actor: event.actor,
                created_at: event.created_at,
            },
            duplicate: false,
        })
    }
}

/// The handoff of `id` as stored inside `w`, if it was requested.
async fn handoff_of(w: &mut WriteTx<'_>, id: InteractionId) -> Result<Option<Handoff>> {
    let what = format!("the handoff of interaction {id}");
    let row = sqlx::query("SELECT app, created_at, reason FROM handoffs WHERE interaction_id = ? ORDER BY id LIMIT 1")
        .bind(id.to_string())
        .fetch_optional(&mut *w.tx)
        .await
        .map_err(db("reading a handoff"))?;
    let Some(row) = row else { return Ok(None) };
    let steps = sqlx::query("SELECT event, at FROM handoff_events WHERE interaction_id = ? ORDER BY seq")
        .bind(id.to_string())
        .fetch_all(&mut *w.tx)
        .await
        .map_err(db("reading handoff events"))?;
    let mut handoff = Handoff {
        interaction_id: id,
        app: get(&row, &what, "app")?,
        reason: get(&row, &what, "reason")?,
        requested_at: from_nanos(get(&row, &what, "created_at")?, &what)?,
        taken_at: None,
        resolved_at: None,
    };
    for step in steps {
        let name: String = get(&step, &what, "event")?;
        let at = from_nanos(get(&step, &what, "at")?, &what)?;
        match name.parse::<HandoffStep>().map_err(|e| corrupt(&what, "event", e))? {
            HandoffStep::Requested => {}
            HandoffStep::Taken => handoff.taken_at = handoff.taken_at.or(Some(at)),
            HandoffStep::Resolved => handoff.resolved_at = handoff.resolved_at.or(Some(at)),
        }
    }
    Ok(Some(handoff))
}

/// `AND i.app = ?` when the range names an app, after the time bounds.
fn push_range(q: &mut QueryBuilder<'_, Sqlite>, range: &KpiRange) -> Result<()> {
    q.push(" WHERE i.created_at >= ")
        .push_bind(to_nanos(range.since, || "the `since` bound".to_owned())?)
        .push(" AND i.created_at < ")
        .push_bind(to_nanos(range.until, || "the `until` bound".to_owned())?);
    if let Some(app) = &range.app {
        q.push(" AND i.app = ").push_bind(app.clone());
    }
    Ok(())
}

fn optional_unsigned(row: &SqliteRow, what: &str, column: &str) -> Result<Option<u64>> {
    let value: Option<i64> = get(row, what, column)?;
    value.map(|v| u64::try_from(v).map_err(|_| corrupt(what, column, format!("{v} is negative")))).transpose()
}

#[async_trait]
impl FeedbackStore for SqliteStore {
    async fn record_feedback(&self, events: Vec<NewFeedback>) -> Result<Vec<Result<Receipt<Feedback>, ChangeError>>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let mut w = self.begin_write().await?;
        let mut audit = Vec::new();
        let mut out = Vec::with_capacity(events.len());
        for event in events {
            match Self::feedback_one(&mut w, event, &mut audit).await {
                Err(ChangeError::Store(e)) => return Err(e),
                other => out.push(other),
            }
        }
        w.audit(&audit).await?;
        w.commit().await?;
        Ok(out)
    }

    async fn feedback_after(&self, after_seq: i64, limit: u32) -> Result<Vec<Feedback>> {
        let sql = format!("SELECT {FEEDBACK_COLUMNS} FROM feedback WHERE seq > ? ORDER BY seq LIMIT ?");
        let rows = sqlx::query(&sql)
            .bind(after_seq)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(db("reading new feedback"))?;
        rows.iter().map(feedback_from_row).collect()
    }

    async fn record_handoff_event(&self, event: NewHandoffEvent) -> Result<Receipt<HandoffEvent>, ChangeError> {
        check_event_id(&event.event_id)?;
        let hash = event.body_sha256();
        let id = event.interaction_id;
        let mut w = self.begin_write().await?;
        let existing: Option<(String, String, String)> =
            sqlx::query_as("SELECT body_sha256, event, actor FROM handoff_events WHERE event_id = ?")
                .bind(&event.event_id)
                .fetch_optional(&mut *w.tx)
                .await
                .map_err(db("reading handoff events"))?;
        if let Some((stored_hash, step, actor)) = existing {
            if stored_hash != hash {
                return Err(ChangeError::Conflict(format!(
                    "handoff event `{}` was already stored with a different body; use a new event id",
                    event.event_id
                )));
            }
            let handoff = handoff_of(&mut w, id).await?.ok_or_else(|| unknown_interaction(id))?;
            let step = step.parse::<HandoffStep>().map_err(|e| corrupt("a handoff event", "event", e))?;
            return Ok(Receipt {
                event: HandoffEvent { event_id: event.event_id, step, actor, handoff },
                duplicate: true,
            });
        }
        let app = app_of(&mut w, id).await?.ok_or_else(|| unknown_interaction(id))?;
        let at = to_nanos(event.at, || format!("handoff event `{}`", event.event_id))?;
        let current = handoff_of(&mut w, id).await?;
        match (event.step, &current) {
            (HandoffStep::Requested, None) => {
                let reason = event.reason.clone().unwrap_or_else(|| format!("requested by {}", event.actor));
                sqlx::query("INSERT INTO handoffs (interaction_id, app, created_at, reason) VALUES (?, ?, ?, ?)")
                    .bind(id.to_string())
                    .bind(&app)
                    .bind(at)
                    .bind(reason)
                    .execute(&mut *w.tx)
                    .await
                    .map_err(db("storing a handoff request"))?;
            }
            (HandoffStep::Requested, Some(_)) => {}
            (HandoffStep::Taken | HandoffStep::Resolved, None) => {
                return Err(ChangeError::Conflict(format!(
                    "the handoff of interaction {id} cannot be {}: it was never requested",
                    event.step.as_str()
                )));
            }
            (HandoffStep::Taken, Some(h)) if h.taken_at.is_some() => {
                return Err(ChangeError::Conflict(format!("the handoff of interaction {id} was already taken")));
            }
            (HandoffStep::Resolved, Some(h)) if h.taken_at.is_none() => {
                return Err(ChangeError::Conflict(format!(
                    "the handoff of interaction {id} cannot be resolved: nobody has taken it"
                )));
            }
            (HandoffStep::Resolved, Some(h)) if h.resolved_at.is_some() => {
                return Err(ChangeError::Conflict(format!("the handoff of interaction {id} was already resolved")));
            }
            (HandoffStep::Taken | HandoffStep::Resolved, Some(_)) => {}
        }
        sqlx::query(
            "INSERT INTO handoff_events (event_id, body_sha256, interaction_id, event, actor, at) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&event.event_id)
        .bind(&hash)
        .bind(id.to_string())
        .bind(event.step.as_str())
        .bind(&event.actor)
        .bind(at)
        .execute(&mut *w.tx)
        .await
        .map_err(db("storing a handoff event"))?;
        w.audit(&[AuditEntry::now(
            &event.actor,
            format!("handoff.{}", event.step.as_str()),
            serde_json::json!({"event_id": event.event_id, "interaction_id": id.to_string()}),
        )])
        .await?;
        let handoff = handoff_of(&mut w, id).await?.ok_or_else(|| unknown_interaction(id))?;
        w.commit().await?;
        Ok(Receipt {
            event: HandoffEvent { event_id: event.event_id, step: event.step, actor: event.actor, handoff },
            duplicate: false,
        })
    }

    async fn stored_interactions(&self, ids: &[InteractionId]) -> Result<HashSet<InteractionId>> {
        let mut found = HashSet::new();
        for chunk in ids.chunks(IDS_PER_LOOKUP) {
            let mut q = QueryBuilder::<Sqlite>::new("SELECT id FROM interactions WHERE id IN (");
            let mut list = q.separated(", ");
            for id in chunk {
                list.push_bind(id.to_string());
            }
            q.push(")");
            let rows: Vec<String> =
                q.build_query_scalar().fetch_all(&self.pool).await.map_err(db("looking up interactions"))?;
            for id in rows {
                found.insert(InteractionId::from_str(&id).map_err(|e| corrupt("an interaction", "id", e))?);
            }
        }
        Ok(found)
    }

    async fn kpi_rows(&self, range: &KpiRange) -> Result<KpiRows> {
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT h.interaction_id, h.check_name, h.hit FROM check_hits h JOIN interactions i ON i.id = h.interaction_id",
        );
        push_range(&mut q, range)?;
        q.push(" ORDER BY h.interaction_id, h.ord");
        let mut checks: HashMap<String, Vec<(String, bool)>> = HashMap::new();
        for row in q.build().fetch_all(&self.pool).await.map_err(db("reading check results for KPIs"))? {
            let id: String = get(&row, "a check result", "interaction_id")?;
            checks
                .entry(id)
                .or_default()
                .push((get(&row, "a check result", "check_name")?, get(&row, "a check result", "hit")?));
        }

        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT i.id, i.created_at, i.decision, i.upstream_ms, i.prompt_tokens, i.completion_tokens, \
             i.response_text FROM interactions i",
        );
        push_range(&mut q, range)?;
        q.push(" ORDER BY i.created_at, i.id");
        let mut interactions = Vec::new();
        for row in q.build().fetch_all(&self.pool).await.map_err(db("reading interactions for KPIs"))? {
            let id: String = get(&row, "an interaction", "id")?;
            let what = format!("interaction {id}");
            let upstream_ms: f64 = get(&row, &what, "upstream_ms")?;
            interactions.push(KpiInteraction {
                facts: InteractionFacts {
                    at: from_nanos(get(&row, &what, "created_at")?, &what)?,
                    action: get(&row, &what, "decision")?,
                    checks: checks.remove(&id).unwrap_or_default(),
                    // Blocked-on-input requests and logs without a latency store 0: not a measurement.
                    upstream_ms: (upstream_ms > 0.0).then_some(upstream_ms),
                    prompt_tokens: optional_unsigned(&row, &what, "prompt_tokens")?,
                    completion_tokens: optional_unsigned(&row, &what, "completion_tokens")?,
                    refused: None,
                    id,
                },
                response_text: get::<Option<String>>(&row, &what, "response_text")?.filter(|t| !t.is_empty()),
            });
        }

        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT f.interaction_id, f.satisfaction, f.thumbs, f.wrong_answer FROM feedback f \
             JOIN interactions i ON i.id = f.interaction_id",
        );
        push_range(&mut q, range)?;
        q.push(" ORDER BY f.seq");
        let mut feedback = Vec::new();
        for row in q.build().fetch_all(&self.pool).await.map_err(db("reading feedback for KPIs"))? {
            let satisfaction: Option<i64> = get(&row, "feedback", "satisfaction")?;
            let thumbs: Option<String> = get(&row, "feedback", "thumbs")?;
            feedback.push(FeedbackFacts {
                interaction_id: get(&row, "feedback", "interaction_id")?,
                satisfaction: satisfaction.and_then(|s| u8::try_from(s).ok()),
                thumbs_up: thumbs.map(|t| t == Thumbs::Up.as_str()),
                wrong_answer: get(&row, "feedback", "wrong_answer")?,
            });
        }

        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT h.interaction_id, MIN(h.created_at) AS requested_at, \
             (SELECT MIN(e.at) FROM handoff_events e WHERE e.interaction_id = h.interaction_id AND e.event = 'taken') \
             AS taken_at FROM handoffs h JOIN interactions i ON i.id = h.interaction_id",
        );
        push_range(&mut q, range)?;
        q.push(" GROUP BY h.interaction_id");
        let mut handoffs = Vec::new();
        for row in q.build().fetch_all(&self.pool).await.map_err(db("reading handoffs for KPIs"))? {
            let what = "a handoff";
            let taken: Option<i64> = get(&row, what, "taken_at")?;
            handoffs.push(HandoffFacts {
                interaction_id: get(&row, what, "interaction_id")?,
                requested_at: from_nanos(get(&row, what, "requested_at")?, what)?,
                taken_at: taken.map(|t| from_nanos(t, what)).transpose()?,
            });
        }
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT c.interaction_id, l.label FROM review_labels l JOIN review_cases c ON c.id = l.case_id \
             JOIN interactions i ON i.id = c.interaction_id",
        );
        push_range(&mut q, range)?;
        q.push(" AND l.final = 1 ORDER BY l.id");
        let mut reviews = Vec::new();
        for row in q.build().fetch_all(&self.pool).await.map_err(db("reading review labels for KPIs"))? {
            let what = "a review label";
            let label: String = get(&row, what, "label")?;
            reviews.push(ReviewFacts {
                interaction_id: get(&row, what, "interaction_id")?,
                wrong_answer: label == crate::review::LabelKind::WrongAnswer.as_str(),
            });
        }
        Ok(KpiRows { interactions, feedback, handoffs, reviews })
    }
}
