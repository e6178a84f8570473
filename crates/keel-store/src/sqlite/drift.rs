//! [`DriftStore`] on SQLite (tables of migration 0003).

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use keel_core::{AuditRecord, InteractionId};
use keel_monitor::{AlertAction, AlertState};
use serde_json::json;
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, Transaction};
use time::OffsetDateTime;

use super::{db, from_nanos, insert_rows, to_nanos, RowReader, SqliteStore, AUDIT_COLUMNS};
use crate::audit::{batch_records, format_at};
use crate::drift::{
    AlertFilter, AlertWindow, DeliveryAttempt, DeliveryStatus, DetectorCheckpoint, DriftAlert, DriftCommit,
    DriftSource, DriftStore, NewDriftAlert, PendingDelivery,
};
use crate::error::{Result, StoreError};
use crate::review::CaseReason;
use crate::types::{AuditEntry, WriteBatch};

const ALERT_COLUMNS: &str = "id, detector, stream, app, method, state, statistic, threshold, p_value, window_size, \
    reference_size, samples, window_first_seq, window_last_seq, window_first_at, window_last_at, detail, \
    sample_interaction_ids, opened_at, acknowledged_at, acknowledged_by, resolved_at, resolved_by";

/// The actor of the audit records the monitor appends.
const MONITOR_ACTOR: &str = "monitor";

/// Appends `entries` to the audit chain inside `tx`, after the record that is really last.
async fn append_audit(tx: &mut Transaction<'static, Sqlite>, entries: Vec<AuditEntry>) -> Result<Vec<AuditRecord>> {
    let last: Option<(i64, String)> = sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut **tx)
        .await
        .map_err(db("reading the end of the audit log"))?;
    let batch = WriteBatch { audit: entries, ..WriteBatch::default() };
    let records =
        batch_records(last.as_ref().map(|(seq, hash)| (*seq, hash.as_str())), OffsetDateTime::now_utc(), &batch);
    insert_rows(tx, "audit_log", AUDIT_COLUMNS, &records, "appending to the audit log", |values, r| {
        values
            .push_bind(r.seq)
            .push_bind(format_at(r.at))
            .push_bind(r.actor.as_str())
            .push_bind(r.action.as_str())
            .push_bind(r.payload.as_str())
            .push_bind(r.payload_hash.as_str())
            .push_bind(r.prev_hash.as_str())
            .push_bind(r.hash.as_str());
    })
    .await?;
    Ok(records)
}

fn nanos(at: OffsetDateTime, what: &str) -> Result<i64> {
    to_nanos(at, || what.to_owned())
}

fn u64_to_i64(value: u64, what: &str) -> Result<i64> {
    i64::try_from(value)
        .map_err(|_| StoreError::InvalidInput { what: what.to_owned(), reason: format!("{value} is too large") })
}

fn alert_from_row(row: &SqliteRow) -> Result<DriftAlert> {
    let id: i64 = row
        .try_get("id")
        .map_err(|e| StoreError::Corrupt { what: "drift alert".to_owned(), reason: format!("column `id`: {e}") })?;
    let r = RowReader { row, what: format!("drift alert {id}") };
    let optional_time = |column: &str| -> Result<Option<OffsetDateTime>> {
        let value: Option<i64> = r.get(column)?;
        value.map(|n| from_nanos(n, &r.what)).transpose()
    };
    let ids: Vec<String> = r.json("sample_interaction_ids")?;
    let sample_interaction_ids = ids
        .iter()
        .map(|s| InteractionId::from_str(s).map_err(|e| r.corrupt("sample_interaction_ids", e)))
        .collect::<Result<Vec<_>>>()?;
    Ok(DriftAlert {
        id,
        state: r.parse("state", AlertState::from_str)?,
        opened: NewDriftAlert {
            detector: r.get("detector")?,
            stream: r.get("stream")?,
            app: r.get("app")?,
            method: r.get("method")?,
            statistic: r.get("statistic")?,
            threshold: r.get("threshold")?,
            p_value: r.get("p_value")?,
            window: AlertWindow {
                size: r.unsigned("window_size")?,
                first_seq: r.get("window_first_seq")?,
                last_seq: r.get("window_last_seq")?,
                first_at: r.time("window_first_at")?,
                last_at: r.time("window_last_at")?,
            },
            reference_size: r.unsigned("reference_size")?,
            samples: r.unsigned("samples")?,
            detail: r.get("detail")?,
            sample_interaction_ids,
            opened_at: r.time("opened_at")?,
        },
        acknowledged_at: optional_time("acknowledged_at")?,
        acknowledged_by: r.get("acknowledged_by")?,
        resolved_at: optional_time("resolved_at")?,
        resolved_by: r.get("resolved_by")?,
    })
}

/// The audit payload of an opened alert: what fired, against what, over which window.
fn opened_payload(alert: &DriftAlert) -> serde_json::Value {
    let a = &alert.opened;
    json!({
        "alert_id": alert.id,
        "detector": a.detector,
        "stream": a.stream,
        "app": a.app,
        "method": a.method,
        "statistic": a.statistic,
        "threshold": a.threshold,
        "window": {"first_seq": a.window.first_seq, "last_seq": a.window.last_seq, "size": a.window.size},
        "samples": a.samples,
    })
}

async fn insert_alert(tx: &mut Transaction<'static, Sqlite>, alert: &NewDriftAlert) -> Result<i64> {
    let what = format!("a drift alert of detector {}", alert.detector);
    let ids: Vec<String> = alert.sample_interaction_ids.iter().map(ToString::to_string).collect();
    let ids =
        serde_json::to_string(&ids).map_err(|source| StoreError::Json { what: "sample interaction ids", source })?;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO drift_alerts (detector, stream, app, method, state, statistic, threshold, p_value, window_size, \
         reference_size, samples, window_first_seq, window_last_seq, window_first_at, window_last_at, detail, \
         sample_interaction_ids, opened_at) VALUES (?, ?, ?, ?, 'open', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
         RETURNING id",
    )
    .bind(&alert.detector)
    .bind(&alert.stream)
    .bind(&alert.app)
    .bind(&alert.method)
    .bind(alert.statistic)
    .bind(alert.threshold)
    .bind(alert.p_value)
    .bind(u64_to_i64(alert.window.size, &what)?)
    .bind(u64_to_i64(alert.reference_size, &what)?)
    .bind(u64_to_i64(alert.samples, &what)?)
    .bind(alert.window.first_seq)
    .bind(alert.window.last_seq)
    .bind(nanos(alert.window.first_at, &what)?)
    .bind(nanos(alert.window.last_at, &what)?)
    .bind(&alert.detail)
    .bind(ids)
    .bind(nanos(alert.opened_at, &what)?)
    .fetch_one(&mut **tx)
    .await
    .map_err(db("opening a drift alert"))?;
    Ok(id)
}

async fn holds_lease(tx: &mut Transaction<'static, Sqlite>, lease: &str, holder: &str) -> Result<bool> {
    let now = nanos(OffsetDateTime::now_utc(), "the lease check")?;
    let held: Option<i64> =
        sqlx::query_scalar("SELECT 1 FROM monitor_leases WHERE name = ? AND holder = ? AND expires_at > ?")
            .bind(lease)
            .bind(holder)
            .bind(now)
            .fetch_optional(&mut **tx)
            .await
            .map_err(db("checking the monitor lease"))?;
    Ok(held.is_some())
}

fn delivery_from_row(row: &SqliteRow) -> Result<DeliveryAttempt> {
    let r = RowReader { row, what: "alert delivery".to_owned() };
    let status = match r.get::<String>("status")?.as_str() {
        "delivered" => DeliveryStatus::Delivered,
        "retry" => DeliveryStatus::Retry,
        "failed" => DeliveryStatus::Failed,
        other => return Err(r.corrupt("status", format!("unknown delivery status `{other}`"))),
    };
    let http_status: Option<i64> = r.get("http_status")?;
    Ok(DeliveryAttempt {
        alert_id: r.get("alert_id")?,
        sink: r.get("sink")?,
        attempt: r.unsigned("attempt")?,
        status,
        http_status: http_status.and_then(|s| u16::try_from(s).ok()),
        error: r.get("error")?,
        at: r.time("at")?,
        next_attempt_at: None,
    })
}

#[async_trait]
impl DriftStore for SqliteStore {
    async fn detector_checkpoints(&self) -> Result<Vec<DetectorCheckpoint>> {
        let rows = sqlx::query("SELECT name, config_hash, source, cursor, state FROM drift_detectors ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(db("reading drift detector states"))?;
        rows.iter()
            .map(|row| {
                let name: String = row.try_get("name").unwrap_or_default();
                let r = RowReader { row, what: format!("drift detector {name}") };
                let source = match r.get::<String>("source")?.as_str() {
                    "interactions" => DriftSource::Interactions,
                    "feedback" => DriftSource::Feedback,
                    other => return Err(r.corrupt("source", format!("unknown source `{other}`"))),
                };
                Ok(DetectorCheckpoint {
                    name: name.clone(),
                    config_hash: r.get("config_hash")?,
                    source,
                    cursor: r.get("cursor")?,
                    state: r.json("state")?,
                })
            })
            .collect()
    }

    async fn commit_drift(&self, commit: DriftCommit) -> Result<Vec<DriftAlert>> {
        let states = commit
            .checkpoints
            .iter()
            .map(|c| {
                serde_json::to_string(&c.state).map_err(|source| StoreError::Json { what: "detector state", source })
            })
            .collect::<Result<Vec<_>>>()?;
        let now = OffsetDateTime::now_utc();
        let now_nanos = nanos(now, "the monitor step")?;
        let _writer = self.write_lock.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db("starting a write"))?;
        if !holds_lease(&mut tx, &commit.lease, &commit.holder).await? {
            return Err(StoreError::LeaseLost { lease: commit.lease });
        }
        for (checkpoint, state) in commit.checkpoints.iter().zip(&states) {
            sqlx::query(
                "INSERT INTO drift_detectors (name, config_hash, source, cursor, state, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET config_hash = excluded.config_hash, \
                 source = excluded.source, cursor = excluded.cursor, state = excluded.state, \
                 updated_at = excluded.updated_at",
            )
            .bind(&checkpoint.name)
            .bind(&checkpoint.config_hash)
            .bind(checkpoint.source.as_str())
            .bind(checkpoint.cursor)
            .bind(state)
            .bind(now_nanos)
            .execute(&mut *tx)
            .await
            .map_err(db("storing a drift detector state"))?;
        }
        for name in &commit.removed {
            sqlx::query("DELETE FROM drift_detectors WHERE name = ?")
                .bind(name)
                .execute(&mut *tx)
                .await
                .map_err(db("removing a drift detector state"))?;
        }
        let mut opened = Vec::with_capacity(commit.alerts.len());
        for alert in commit.alerts {
            let id = insert_alert(&mut tx, &alert).await?;
            for sink in &commit.sinks {
                sqlx::query(
                    "INSERT INTO alert_outbox (alert_id, sink, status, attempts, next_attempt_at) \
                     VALUES (?, ?, 'pending', 0, ?)",
                )
                .bind(id)
                .bind(sink)
                .bind(now_nanos)
                .execute(&mut *tx)
                .await
                .map_err(db("queueing an alert delivery"))?;
            }
            opened.push(DriftAlert {
                id,
                state: AlertState::Open,
                opened: alert,
                acknowledged_at: None,
                acknowledged_by: None,
                resolved_at: None,
                resolved_by: None,
            });
        }
        let mut entries: Vec<AuditEntry> =
            opened.iter().map(|a| AuditEntry::now(MONITOR_ACTOR, "drift.alert_opened", opened_payload(a))).collect();
        for alert in &opened {
            for id in &alert.opened.sample_interaction_ids {
                let app: Option<String> = sqlx::query_scalar("SELECT app FROM interactions WHERE id = ?")
                    .bind(id.to_string())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db("reading a sampled interaction"))?;
                // A sample names stored interactions; one gone since (none are deleted today) has nothing to review.
                let Some(app) = app else { continue };
                let case = commit.review.case(*id, &app, CaseReason::DriftAlert, Some(alert.id), now);
                if let Some(case_id) = super::review::insert_case(&mut tx, &case).await? {
                    entries.push(super::review::opened_entry(case_id, &case, MONITOR_ACTOR));
                }
            }
        }
        append_audit(&mut tx, entries).await?;
        tx.commit().await.map_err(db("committing a monitor step"))?;
        Ok(opened)
    }

    async fn list_alerts(&self, filter: &AlertFilter) -> Result<Vec<DriftAlert>> {
        let mut q = QueryBuilder::<Sqlite>::new(format!("SELECT {ALERT_COLUMNS} FROM drift_alerts WHERE 1 = 1"));
        if let Some(state) = filter.state {
            q.push(" AND state = ").push_bind(state.name());
        }
        if let Some(detector) = &filter.detector {
            q.push(" AND detector = ").push_bind(detector.clone());
        }
        if let Some(before) = filter.before {
            q.push(" AND id < ").push_bind(before);
        }
        q.push(" ORDER BY id DESC LIMIT ").push_bind(i64::from(filter.effective_limit()));
        let rows = q.build().fetch_all(&self.pool).await.map_err(db("listing drift alerts"))?;
        rows.iter().map(alert_from_row).collect()
    }

    async fn get_alert(&self, id: i64) -> Result<Option<DriftAlert>> {
        let sql = format!("SELECT {ALERT_COLUMNS} FROM drift_alerts WHERE id = ?");
        let row = sqlx::query(&sql).bind(id).fetch_optional(&self.pool).await.map_err(db("reading a drift alert"))?;
        row.as_ref().map(alert_from_row).transpose()
    }

    async fn transition_alert(&self, id: i64, action: AlertAction, actor: &str) -> Result<DriftAlert> {
        let now = OffsetDateTime::now_utc();
        let _writer = self.write_lock.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db("starting a write"))?;
        let sql = format!("SELECT {ALERT_COLUMNS} FROM drift_alerts WHERE id = ?");
        let row = sqlx::query(&sql).bind(id).fetch_optional(&mut *tx).await.map_err(db("reading a drift alert"))?;
        let mut alert = row.as_ref().map(alert_from_row).transpose()?.ok_or(StoreError::AlertNotFound(id))?;
        let next = alert.state.after(action).ok_or(StoreError::IllegalAlertTransition {
            id,
            action: action.name(),
            state: alert.state.name(),
        })?;
        let at = nanos(now, "an alert transition")?;
        let (at_column, by_column) = match action {
            AlertAction::Acknowledge => ("acknowledged_at", "acknowledged_by"),
            AlertAction::Resolve => ("resolved_at", "resolved_by"),
        };
        sqlx::query(&format!("UPDATE drift_alerts SET state = ?, {at_column} = ?, {by_column} = ? WHERE id = ?"))
            .bind(next.name())
            .bind(at)
            .bind(actor)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db("changing a drift alert"))?;
        let audit_action = match action {
            AlertAction::Acknowledge => "drift.alert_acknowledged",
            AlertAction::Resolve => "drift.alert_resolved",
        };
        let payload =
            json!({"alert_id": id, "detector": alert.opened.detector, "from": alert.state.name(), "to": next.name()});
        append_audit(
            &mut tx,
            vec![AuditEntry { at: now, actor: actor.to_owned(), action: audit_action.to_owned(), payload }],
        )
        .await?;
        tx.commit().await.map_err(db("committing an alert transition"))?;
        alert.state = next;
        match action {
            AlertAction::Acknowledge => {
                alert.acknowledged_at = Some(now);
                alert.acknowledged_by = Some(actor.to_owned());
            }
            AlertAction::Resolve => {
                alert.resolved_at = Some(now);
                alert.resolved_by = Some(actor.to_owned());
            }
        }
        Ok(alert)
    }

    async fn acquire_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
        let now = OffsetDateTime::now_utc();
        let expires = now + ttl;
        let (now, expires) = (nanos(now, "a lease")?, nanos(expires, "a lease")?);
        let _writer = self.write_lock.lock().await;
        sqlx::query(
            "INSERT INTO monitor_leases (name, holder, expires_at) VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE \
             SET holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE monitor_leases.holder = excluded.holder OR monitor_leases.expires_at <= ?",
        )
        .bind(name)
        .bind(holder)
        .bind(expires)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(db("taking the monitor lease"))?;
        let current: Option<String> = sqlx::query_scalar("SELECT holder FROM monitor_leases WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading the monitor lease"))?;
        Ok(current.as_deref() == Some(holder))
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        let _writer = self.write_lock.lock().await;
        sqlx::query("DELETE FROM monitor_leases WHERE name = ? AND holder = ?")
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await
            .map_err(db("releasing the monitor lease"))?;
        Ok(())
    }

    async fn due_deliveries(&self, sinks: &[String], now: OffsetDateTime, limit: u32) -> Result<Vec<PendingDelivery>> {
        if sinks.is_empty() {
            return Ok(Vec::new());
        }
        let columns: Vec<String> = ALERT_COLUMNS.split(", ").map(|c| format!("a.{c}")).collect();
        let mut q = QueryBuilder::<Sqlite>::new(format!(
            "SELECT o.sink AS sink, o.attempts AS attempts, {} FROM alert_outbox o JOIN drift_alerts a ON a.id = \
             o.alert_id WHERE o.status = 'pending' AND o.next_attempt_at <= ",
            columns.join(", ")
        ));
        q.push_bind(nanos(now, "the delivery time")?).push(" AND o.sink IN (");
        let mut list = q.separated(", ");
        for sink in sinks {
            list.push_bind(sink.clone());
        }
        q.push(") ORDER BY o.alert_id, o.sink LIMIT ").push_bind(i64::from(limit));
        let rows = q.build().fetch_all(&self.pool).await.map_err(db("reading due alert deliveries"))?;
        rows.iter()
            .map(|row| {
                let r = RowReader { row, what: "alert delivery".to_owned() };
                Ok(PendingDelivery {
                    alert: alert_from_row(row)?,
                    sink: r.get("sink")?,
                    attempts: r.unsigned("attempts")?,
                })
            })
            .collect()
    }

    async fn record_delivery(&self, attempt: &DeliveryAttempt) -> Result<()> {
        let at = nanos(attempt.at, "a delivery attempt")?;
        let next = match (attempt.status, attempt.next_attempt_at) {
            (DeliveryStatus::Retry, Some(next)) => nanos(next, "a delivery attempt")?,
            _ => at,
        };
        let outbox_status = match attempt.status {
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Retry => "pending",
            DeliveryStatus::Failed => "failed",
        };
        let _writer = self.write_lock.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db("starting a write"))?;
        sqlx::query(
            "INSERT INTO alert_deliveries (alert_id, sink, attempt, status, http_status, error, at) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(attempt.alert_id)
        .bind(&attempt.sink)
        .bind(i64::from(attempt.attempt))
        .bind(attempt.status.as_str())
        .bind(attempt.http_status.map(i64::from))
        .bind(&attempt.error)
        .bind(at)
        .execute(&mut *tx)
        .await
        .map_err(db("recording an alert delivery"))?;
        sqlx::query(
            "UPDATE alert_outbox SET status = ?, attempts = ?, next_attempt_at = ? WHERE alert_id = ? AND sink = ?",
        )
        .bind(outbox_status)
        .bind(i64::from(attempt.attempt))
        .bind(next)
        .bind(attempt.alert_id)
        .bind(&attempt.sink)
        .execute(&mut *tx)
        .await
        .map_err(db("updating an alert delivery"))?;
        tx.commit().await.map_err(db("committing an alert delivery"))?;
        Ok(())
    }

    async fn alert_deliveries(&self, alert_id: i64) -> Result<Vec<DeliveryAttempt>> {
        let rows = sqlx::query(
            "SELECT alert_id, sink, attempt, status, http_status, error, at FROM alert_deliveries \
             WHERE alert_id = ? ORDER BY id",
        )
        .bind(alert_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading alert deliveries"))?;
        rows.iter().map(delivery_from_row).collect()
    }
}
