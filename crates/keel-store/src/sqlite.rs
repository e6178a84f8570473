//! The SQLite backend: one file, WAL journal, versioned migrations run at open.
//!
//! Writes are serialised inside the process by a mutex and across processes by
//! `BEGIN IMMEDIATE`, so the audit chain is always extended from the record that is really
//! last. Reads use the pool's other connections and do not wait for writes (WAL).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use keel_core::{
    Action, AuditRecord, CheckResult, Decision, Interaction, InteractionId, Outcome, PolicyRef, StoredText, Timings,
    Tokens,
};
use sqlx::migrate::Migrator;
use sqlx::query_builder::Separated;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, Transaction};
use time::OffsetDateTime;
use tokio::sync::Mutex;

mod access;
mod feedback;
mod lifecycle;
mod review;

use crate::audit::{batch_records, check_entries, format_at, parse_at};
use crate::error::{Result, StoreError};
use crate::store::{AuditStore, HandoffStore, InteractionStore, Store};
use crate::types::{checks_hit, HandoffFilter, HandoffRequest, InteractionFilter, InteractionSummary, WriteBatch};
use crate::url::RedactedUrl;

mod drift;

/// The SQLite schema's versioned migrations, embedded at build time.
static MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");

/// How long a statement waits for another connection's lock before failing as busy.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections for a file database: one writer at a time, the rest read concurrently.
const FILE_POOL_SIZE: u32 = 8;

const INTERACTION_COLUMNS: &str = "id, created_at, app, model, stream, request_text, \
    request_sha256, response_text, response_sha256, outcome, http_status, error, upstream_ms, \
    overhead_us, total_ms, prompt_tokens, completion_tokens, policy_name, policy_version, \
    decision, decisions, checks, checks_hit";

const SUMMARY_COLUMNS: &str = "id, created_at, app, model, decision, policy_name, \
    policy_version, outcome, http_status, upstream_ms, overhead_us, total_ms, checks_hit";

const AUDIT_COLUMNS: &str = "seq, at, actor, action, payload, payload_hash, prev_hash, hash";

const CHECK_HIT_COLUMNS: &str = "interaction_id, ord, phase, check_name, score, hit";

const HANDOFF_COLUMNS: &str = "interaction_id, app, created_at, reason";

/// Most values one statement may bind: `SQLITE_MAX_VARIABLE_NUMBER` of the bundled SQLite.
///
/// Going over it is a prepare error that looks like a transient one, so every multi-row
/// INSERT is cut into statements that stay at or under it.
const MAX_BOUND_PARAMETERS: usize = 32_766;

/// Keel's store in one SQLite file (or in memory, for tests).
pub struct SqliteStore {
    pool: SqlitePool,
    url: RedactedUrl,
    write_lock: Mutex<()>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore").field("url", &self.url).finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `sqlite://PATH` or `sqlite:PATH`, or a
    /// private in-memory database for `sqlite::memory:`, and brings its schema up to date.
    ///
    /// The file's directory must exist. The database uses the WAL journal,
    /// `synchronous=NORMAL`, a busy timeout and foreign keys.
    pub async fn open(url: &str) -> Result<Self> {
        let redacted = RedactedUrl::new(url);
        let target = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .ok_or_else(|| StoreError::UnsupportedUrl { url: redacted.to_string() })?;
        let (database, query) = target.split_once('?').unwrap_or((target, ""));
        let in_memory = database == ":memory:" || query.split('&').any(|p| p == "mode=memory");
        if database.is_empty() && !in_memory {
            return Err(StoreError::UnsupportedUrl { url: redacted.to_string() });
        }

        let options = SqliteConnectOptions::from_str(url)
            .map_err(|source| StoreError::Open { url: redacted.to_string(), source })?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);

        let pool_options = if in_memory {
            // An in-memory database lives as long as its connection: keep exactly one, forever.
            SqlitePoolOptions::new().max_connections(1).min_connections(1).idle_timeout(None).max_lifetime(None)
        } else {
            let path = options.get_filename();
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                let is_dir = tokio::fs::metadata(dir).await.map(|m| m.is_dir()).unwrap_or(false);
                if !is_dir {
                    return Err(StoreError::MissingDirectory { path: path.to_path_buf(), dir: dir.to_path_buf() });
                }
            }
            SqlitePoolOptions::new().max_connections(FILE_POOL_SIZE)
        };

        let pool = pool_options
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Open { url: redacted.to_string(), source })?;
        MIGRATOR.run(&pool).await.map_err(|source| StoreError::Migrate { url: redacted.to_string(), source })?;
        tracing::debug!(url = %redacted, "opened SQLite store");
        Ok(Self { pool, url: redacted, write_lock: Mutex::new(()) })
    }

    /// The database URL with any secrets removed.
    pub fn url(&self) -> &RedactedUrl {
        &self.url
    }

    /// Closes every connection after the queries in progress; later calls fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Maps a driver error to `StoreError::Database`, deciding whether a retry may help.
fn db(operation: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Database { operation, retryable: is_retryable(&source), source }
}

/// True for errors of the environment (busy, locked, I/O, disk full, pool exhausted), false
/// for errors of the data (constraints, sizes, types) that the same write would hit again.
fn is_retryable(error: &sqlx::Error) -> bool {
    const SQLITE_TOOBIG: i64 = 18;
    const SQLITE_CONSTRAINT: i64 = 19;
    const SQLITE_MISMATCH: i64 = 20;
    const SQLITE_RANGE: i64 = 25;
    match error {
        sqlx::Error::Database(e) => {
            let code = e.code().and_then(|c| c.parse::<i64>().ok()).unwrap_or(0);
            !matches!(code & 0xff, SQLITE_TOOBIG | SQLITE_CONSTRAINT | SQLITE_MISMATCH | SQLITE_RANGE)
        }
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed | sqlx::Error::Protocol(_) => true,
        _ => false,
    }
}

/// Number of columns in a comma-separated column list.
const fn column_count(columns: &str) -> usize {
    let bytes = columns.as_bytes();
    let mut count = 1;
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b',' {
            count += 1;
        }
        at += 1;
    }
    count
}

/// Rows of `columns` that one INSERT can carry without going over the bound-parameter limit.
const fn rows_per_insert(columns: &str) -> usize {
    let per_row = column_count(columns);
    if per_row >= MAX_BOUND_PARAMETERS {
        1
    } else {
        MAX_BOUND_PARAMETERS / per_row
    }
}

/// Inserts `rows` into `table` with one multi-row INSERT per `rows_per_insert(columns)`
/// rows; `bind` pushes one row's values, in `columns` order.
///
/// Each statement is one trip to the driver's worker thread whatever its row count, which is
/// what makes a batch cost a few statements instead of several per interaction. The SQL text
/// depends on the row count, so it is not kept in the connection's statement cache: batches
/// come in every size, and caching each would evict the reads' statements and hold large
/// prepared statements on every connection for nothing. Preparing one costs far less than the
/// round trips it replaces.
async fn insert_rows<'a, T>(
    tx: &mut Transaction<'static, Sqlite>,
    table: &str,
    columns: &str,
    rows: &'a [T],
    operation: &'static str,
    mut bind: impl FnMut(&mut Separated<'_, 'a, Sqlite, &'static str>, &'a T) + Send,
) -> Result<()>
where
    T: Sync,
{
    for chunk in rows.chunks(rows_per_insert(columns)) {
        let mut insert = QueryBuilder::<Sqlite>::new(format!("INSERT INTO {table} ({columns}) "));
        insert.push_values(chunk, |mut values, row| bind(&mut values, row));
        insert.build().persistent(false).execute(&mut **tx).await.map_err(db(operation))?;
    }
    Ok(())
}

/// Unix nanoseconds of an instant, as stored in INTEGER time columns.
fn to_nanos(at: OffsetDateTime, what: impl FnOnce() -> String) -> Result<i64> {
    i64::try_from(at.unix_timestamp_nanos()).map_err(|_| StoreError::InvalidInput {
        what: what(),
        reason: format!("the time {at} is outside the years 1678..2261 that can be stored"),
    })
}

fn from_nanos(nanos: i64, what: &str) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos))
        .map_err(|e| StoreError::Corrupt { what: what.to_owned(), reason: format!("bad timestamp {nanos}: {e}") })
}

fn to_i64(value: u64, what: &str, field: &str) -> Result<i64> {
    i64::try_from(value).map_err(|_| StoreError::InvalidInput {
        what: what.to_owned(),
        reason: format!("{field} = {value} is larger than the database can hold"),
    })
}

/// An interaction with its fields converted to what the columns hold.
struct InteractionRow<'a> {
    interaction: &'a Interaction,
    id: String,
    created_at: i64,
    overhead_us: i64,
    prompt_tokens: Option<i64>,
    completion_tokens: Option<i64>,
    decisions: String,
    checks: String,
    checks_hit: String,
}

impl<'a> InteractionRow<'a> {
    fn new(interaction: &'a Interaction) -> Result<Self> {
        let what = format!("interaction {}", interaction.id);
        let json = |source| StoreError::Json { what: "an interaction", source };
        Ok(Self {
            interaction,
            id: interaction.id.to_string(),
            created_at: to_nanos(interaction.created_at, || what.clone())?,
            overhead_us: to_i64(interaction.timings.overhead_us, &what, "overhead_us")?,
            prompt_tokens: interaction.tokens.prompt.map(|t| to_i64(t, &what, "prompt tokens")).transpose()?,
            completion_tokens: interaction
                .tokens
                .completion
                .map(|t| to_i64(t, &what, "completion tokens"))
                .transpose()?,
            decisions: serde_json::to_string(&interaction.decisions).map_err(json)?,
            checks: serde_json::to_string(&interaction.checks).map_err(json)?,
            checks_hit: serde_json::to_string(&checks_hit(interaction)).map_err(json)?,
        })
    }
}

/// One `check_hits` row: a check's result within its interaction.
struct CheckHitRow<'a> {
    interaction_id: &'a str,
    ord: i64,
    check: &'a CheckResult,
}

/// A handoff request with its fields converted to what the columns hold.
struct HandoffRow<'a> {
    handoff: &'a HandoffRequest,
    interaction_id: String,
    created_at: i64,
}

impl<'a> HandoffRow<'a> {
    fn new(handoff: &'a HandoffRequest) -> Result<Self> {
        let created_at =
            to_nanos(handoff.created_at, || format!("the handoff request for interaction {}", handoff.interaction_id))?;
        Ok(Self { handoff, interaction_id: handoff.interaction_id.to_string(), created_at })
    }
}

/// Reads typed columns of one row, naming the row in every error.
struct RowReader<'r> {
    row: &'r SqliteRow,
    what: String,
}

impl<'r> RowReader<'r> {
    fn get<T>(&self, column: &str) -> Result<T>
    where
        T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>,
    {
        self.row.try_get(column).map_err(|e| self.corrupt(column, e))
    }

    fn corrupt(&self, column: &str, reason: impl fmt::Display) -> StoreError {
        StoreError::Corrupt { what: self.what.clone(), reason: format!("column `{column}`: {reason}") }
    }

    fn parse<T, E: fmt::Display>(
        &self,
        column: &str,
        parse: impl FnOnce(&str) -> std::result::Result<T, E>,
    ) -> Result<T> {
        let text: String = self.get(column)?;
        parse(&text).map_err(|e| self.corrupt(column, e))
    }

    fn json<T: serde::de::DeserializeOwned>(&self, column: &str) -> Result<T> {
        self.parse(column, |text| serde_json::from_str::<T>(text))
    }

    fn unsigned<T: TryFrom<i64>>(&self, column: &str) -> Result<T> {
        let value: i64 = self.get(column)?;
        T::try_from(value).map_err(|_| self.corrupt(column, format!("{value} is out of range")))
    }

    fn time(&self, column: &str) -> Result<OffsetDateTime> {
        let nanos: i64 = self.get(column)?;
        from_nanos(nanos, &self.what)
    }
}

fn reader<'r>(row: &'r SqliteRow, kind: &str) -> RowReader<'r> {
    let id = row.try_get::<String, _>("id").unwrap_or_else(|_| "?".to_owned());
    RowReader { row, what: format!("{kind} {id}") }
}

fn interaction_from_row(row: &SqliteRow) -> Result<Interaction> {
    let r = reader(row, "interaction");
    Ok(Interaction {
        id: r.parse("id", InteractionId::from_str)?,
        created_at: r.time("created_at")?,
        app: r.get("app")?,
        model: r.get("model")?,
        stream: r.get("stream")?,
        request: StoredText { text: r.get("request_text")?, sha256: r.get("request_sha256")? },
        response: StoredText { text: r.get("response_text")?, sha256: r.get("response_sha256")? },
        outcome: r.parse("outcome", Outcome::from_str)?,
        http_status: r.unsigned("http_status")?,
        error: r.get("error")?,
        timings: timings(&r)?,
        tokens: Tokens {
            prompt: optional_unsigned(&r, "prompt_tokens")?,
            completion: optional_unsigned(&r, "completion_tokens")?,
        },
        policy: policy(&r)?,
        decision: r.parse("decision", Action::from_str)?,
        decisions: r.json::<Vec<Decision>>("decisions")?,
        checks: r.json::<Vec<CheckResult>>("checks")?,
        shadow: Vec::new(),
    })
}

fn summary_from_row(row: &SqliteRow) -> Result<InteractionSummary> {
    let r = reader(row, "interaction");
    Ok(InteractionSummary {
        id: r.parse("id", InteractionId::from_str)?,
        created_at: r.time("created_at")?,
        app: r.get("app")?,
        model: r.get("model")?,
        decision: r.parse("decision", Action::from_str)?,
        policy: policy(&r)?,
        outcome: r.parse("outcome", Outcome::from_str)?,
        http_status: r.unsigned("http_status")?,
        timings: timings(&r)?,
        checks_hit: r.json::<Vec<String>>("checks_hit")?,
    })
}

fn timings(r: &RowReader<'_>) -> Result<Timings> {
    Ok(Timings {
        upstream_ms: r.get("upstream_ms")?,
        overhead_us: r.unsigned("overhead_us")?,
        total_ms: r.get("total_ms")?,
    })
}

fn policy(r: &RowReader<'_>) -> Result<PolicyRef> {
    Ok(PolicyRef { name: r.get("policy_name")?, version: r.get("policy_version")? })
}

fn optional_unsigned(r: &RowReader<'_>, column: &str) -> Result<Option<u64>> {
    let value: Option<i64> = r.get(column)?;
    value.map(|v| u64::try_from(v).map_err(|_| r.corrupt(column, format!("{v} is negative")))).transpose()
}

fn audit_from_row(row: &SqliteRow) -> Result<AuditRecord> {
    let seq: i64 = row
        .try_get("seq")
        .map_err(|e| StoreError::Corrupt { what: "audit record".to_owned(), reason: format!("column `seq`: {e}") })?;
    let corrupt = |column: &str, reason: String| StoreError::CorruptAuditRecord {
        seq,
        reason: format!("column `{column}`: {reason}"),
    };
    let text = |column: &str| -> Result<String> {
        row.try_get::<String, _>(column).map_err(|e| corrupt(column, e.to_string()))
    };
    let at = text("at")?;
    Ok(AuditRecord {
        seq,
        at: parse_at(&at).map_err(|e| corrupt("at", format!("`{at}` is not a time: {e}")))?,
        actor: text("actor")?,
        action: text("action")?,
        payload: text("payload")?,
        payload_hash: text("payload_hash")?,
        prev_hash: text("prev_hash")?,
        hash: text("hash")?,
    })
}

fn handoff_from_row(row: &SqliteRow) -> Result<HandoffRequest> {
    let r = RowReader { row, what: "handoff request".to_owned() };
    Ok(HandoffRequest {
        interaction_id: r.parse("interaction_id", InteractionId::from_str)?,
        app: r.get("app")?,
        created_at: r.time("created_at")?,
        reason: r.get("reason")?,
    })
}

#[async_trait]
impl InteractionStore for SqliteStore {
    async fn get_interaction(&self, id: InteractionId) -> Result<Option<Interaction>> {
        let sql = format!("SELECT {INTERACTION_COLUMNS} FROM interactions WHERE id = ?");
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading an interaction"))?;
        let Some(mut interaction) = row.as_ref().map(interaction_from_row).transpose()? else {
            return Ok(None);
        };
        interaction.shadow = lifecycle::shadow_of(&self.pool, id).await?;
        Ok(Some(interaction))
    }

    async fn list_interactions(&self, filter: &InteractionFilter) -> Result<Vec<InteractionSummary>> {
        let mut q = QueryBuilder::<Sqlite>::new(format!("SELECT {SUMMARY_COLUMNS} FROM interactions WHERE 1 = 1"));
        if let Some(since) = filter.since {
            q.push(" AND created_at >= ").push_bind(to_nanos(since, || "the `since` filter".to_owned())?);
        }
        if let Some(until) = filter.until {
            q.push(" AND created_at < ").push_bind(to_nanos(until, || "the `until` filter".to_owned())?);
        }
        if let Some(app) = &filter.app {
            q.push(" AND app = ").push_bind(app.clone());
        }
        if let Some(action) = filter.action {
            q.push(" AND decision = ").push_bind(action.as_str());
        }
        if let Some(check) = &filter.check {
            q.push(
                " AND EXISTS (SELECT 1 FROM check_hits h WHERE h.interaction_id = interactions.id \
                 AND h.hit = 1 AND h.check_name = ",
            )
            .push_bind(check.clone())
            .push(")");
        }
        if let Some(before) = filter.before {
            let cursor: Option<i64> = sqlx::query_scalar("SELECT created_at FROM interactions WHERE id = ?")
                .bind(before.to_string())
                .fetch_optional(&self.pool)
                .await
                .map_err(db("reading the paging cursor"))?;
            let cursor = cursor.ok_or(StoreError::CursorNotFound(before))?;
            q.push(" AND (created_at < ")
                .push_bind(cursor)
                .push(" OR (created_at = ")
                .push_bind(cursor)
                .push(" AND id < ")
                .push_bind(before.to_string())
                .push("))");
        }
        q.push(" ORDER BY created_at DESC, id DESC LIMIT ").push_bind(i64::from(filter.effective_limit()));
        let rows = q.build().fetch_all(&self.pool).await.map_err(db("listing interactions"))?;
        rows.iter().map(summary_from_row).collect()
    }

    async fn interactions_after(&self, after_seq: i64, limit: u32) -> Result<Vec<(i64, Interaction)>> {
        // Writes are serialised (one writer, `BEGIN IMMEDIATE`), so rowids grow in commit order
        // and a reader never sees a row appear behind its cursor.
        let sql = format!(
            "SELECT rowid AS seq, {INTERACTION_COLUMNS} FROM interactions WHERE rowid > ? ORDER BY rowid LIMIT ?"
        );
        let rows = sqlx::query(&sql)
            .bind(after_seq)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(db("reading new interactions"))?;
        rows.iter()
            .map(|row| {
                let seq: i64 = row.try_get("seq").map_err(|e| StoreError::Corrupt {
                    what: "interaction".to_owned(),
                    reason: format!("column `seq`: {e}"),
                })?;
                Ok((seq, interaction_from_row(row)?))
            })
            .collect()
    }
}

#[async_trait]
impl AuditStore for SqliteStore {
    async fn audit_records(&self, from: i64, to: i64, limit: u32) -> Result<Vec<AuditRecord>> {
        let sql = format!("SELECT {AUDIT_COLUMNS} FROM audit_log WHERE seq >= ? AND seq <= ? ORDER BY seq LIMIT ?");
        let rows = sqlx::query(&sql)
            .bind(from)
            .bind(to)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(db("reading the audit log"))?;
        rows.iter().map(audit_from_row).collect()
    }

    async fn last_audit_record(&self) -> Result<Option<AuditRecord>> {
        let sql = format!("SELECT {AUDIT_COLUMNS} FROM audit_log ORDER BY seq DESC LIMIT 1");
        let row = sqlx::query(&sql).fetch_optional(&self.pool).await.map_err(db("reading the audit log"))?;
        row.as_ref().map(audit_from_row).transpose()
    }
}

#[async_trait]
impl HandoffStore for SqliteStore {
    async fn list_handoffs(&self, filter: &HandoffFilter) -> Result<Vec<HandoffRequest>> {
        let mut q =
            QueryBuilder::<Sqlite>::new("SELECT interaction_id, app, created_at, reason FROM handoffs WHERE 1 = 1");
        if let Some(app) = &filter.app {
            q.push(" AND app = ").push_bind(app.clone());
        }
        if let Some(since) = filter.since {
            q.push(" AND created_at >= ").push_bind(to_nanos(since, || "the `since` filter".to_owned())?);
        }
        q.push(" ORDER BY created_at DESC, id DESC LIMIT ").push_bind(i64::from(filter.effective_limit()));
        let rows = q.build().fetch_all(&self.pool).await.map_err(db("listing handoff requests"))?;
        rows.iter().map(handoff_from_row).collect()
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn write_batch(&self, mut batch: WriteBatch) -> Result<Vec<AuditRecord>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        // Convert everything first: a value that cannot be stored fails before any I/O.
        check_entries(&batch.audit)?;
        let rows = batch.interactions.iter().map(InteractionRow::new).collect::<Result<Vec<_>>>()?;
        let check_hits: Vec<CheckHitRow<'_>> = rows
            .iter()
            .flat_map(|row| {
                row.interaction.checks.iter().enumerate().map(|(ord, check)| CheckHitRow {
                    interaction_id: &row.id,
                    ord: i64::try_from(ord).unwrap_or(i64::MAX),
                    check,
                })
            })
            .collect();
        let handoffs = batch.handoffs.iter().map(HandoffRow::new).collect::<Result<Vec<_>>>()?;

        // A few statements per batch, whatever its size: each table's rows go in multi-row
        // INSERTs. A row the database refuses fails the whole batch with a data error (not
        // retryable), and the writer then stores the batch's items one by one.
        let _writer = self.write_lock.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db("starting a write"))?;

        insert_rows(&mut tx, "interactions", INTERACTION_COLUMNS, &rows, "storing an interaction", |values, row| {
            let i = row.interaction;
            values
                .push_bind(row.id.as_str())
                .push_bind(row.created_at)
                .push_bind(i.app.as_str())
                .push_bind(i.model.as_str())
                .push_bind(i.stream)
                .push_bind(i.request.text.as_deref())
                .push_bind(i.request.sha256.as_str())
                .push_bind(i.response.text.as_deref())
                .push_bind(i.response.sha256.as_str())
                .push_bind(i.outcome.as_str())
                .push_bind(i64::from(i.http_status))
                .push_bind(i.error.as_deref())
                .push_bind(i.timings.upstream_ms)
                .push_bind(row.overhead_us)
                .push_bind(i.timings.total_ms)
                .push_bind(row.prompt_tokens)
                .push_bind(row.completion_tokens)
                .push_bind(i.policy.name.as_str())
                .push_bind(i.policy.version.as_str())
                .push_bind(i.decision.as_str())
                .push_bind(row.decisions.as_str())
                .push_bind(row.checks.as_str())
                .push_bind(row.checks_hit.as_str());
        })
        .await?;
        insert_rows(&mut tx, "check_hits", CHECK_HIT_COLUMNS, &check_hits, "storing check results", |values, row| {
            values
                .push_bind(row.interaction_id)
                .push_bind(row.ord)
                .push_bind(row.check.phase.as_str())
                .push_bind(row.check.check.as_str())
                .push_bind(row.check.score)
                .push_bind(row.check.hit);
        })
        .await?;
        let shadow: Vec<(&str, &[keel_core::ShadowDecision])> =
            rows.iter().map(|row| (row.id.as_str(), row.interaction.shadow.as_slice())).collect();
        lifecycle::insert_shadow(&mut tx, &shadow).await?;
        insert_rows(&mut tx, "handoffs", HANDOFF_COLUMNS, &handoffs, "storing a handoff request", |values, row| {
            values
                .push_bind(row.interaction_id.as_str())
                .push_bind(row.handoff.app.as_str())
                .push_bind(row.created_at)
                .push_bind(row.handoff.reason.as_str());
        })
        .await?;
        // Cases are few (flags, escalations, a sampled share), so one statement each is fine,
        // and it tells which ones already existed.
        for case in &batch.cases {
            if let Some(id) = review::insert_case(&mut tx, case).await? {
                batch.audit.push(review::opened_entry(id, case, "gateway"));
            }
        }

        let last: Option<(i64, String)> = sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await
            .map_err(db("reading the end of the audit log"))?;
        let records =
            batch_records(last.as_ref().map(|(seq, hash)| (*seq, hash.as_str())), OffsetDateTime::now_utc(), &batch);
        insert_rows(&mut tx, "audit_log", AUDIT_COLUMNS, &records, "appending to the audit log", |values, r| {
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

        tx.commit().await.map_err(db("committing a write"))?;
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_database_opens_and_migrates() {
        let store = SqliteStore::open("sqlite::memory:").await.unwrap();
        assert!(store.last_audit_record().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn missing_directory_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope").join("keel.db");
        let err = SqliteStore::open(&format!("sqlite://{}", path.display())).await.unwrap_err();
        assert!(matches!(err, StoreError::MissingDirectory { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("does not exist"), "{message}");
        assert!(message.contains("nope"), "{message}");
    }

    #[tokio::test]
    async fn non_sqlite_url_is_refused() {
        let err = SqliteStore::open("postgres://u:p@h/db").await.unwrap_err();
        assert!(matches!(err, StoreError::UnsupportedUrl { .. }), "{err:?}");
        assert!(!err.to_string().contains(":p@"));
    }

    #[test]
    fn inserts_are_cut_to_stay_within_the_bound_parameter_limit() {
        let tables = [
            (INTERACTION_COLUMNS, 23, 1_424),
            (CHECK_HIT_COLUMNS, 6, 5_461),
            (HANDOFF_COLUMNS, 4, 8_191),
            (AUDIT_COLUMNS, 8, 4_095),
        ];
        for (columns, count, rows) in tables {
            assert_eq!(column_count(columns), count, "{columns}");
            assert_eq!(rows_per_insert(columns), rows, "{columns}");
            assert!(rows * count <= MAX_BOUND_PARAMETERS);
            assert!((rows + 1) * count > MAX_BOUND_PARAMETERS);
        }
        assert_eq!(column_count("only"), 1);
    }

    #[test]
    fn constraint_errors_are_not_retryable() {
        assert!(is_retryable(&sqlx::Error::PoolTimedOut));
        assert!(!is_retryable(&sqlx::Error::RowNotFound));
    }
}
