//! Admin tokens in SQLite, and the pieces every audited change shares: one write
//! transaction that also appends the audit records, and the change counters.

use async_trait::async_trait;
use keel_core::{AuditRecord, Role};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, Sqlite, Transaction};
use time::OffsetDateTime;
use tokio::sync::MutexGuard;

use super::{db, from_nanos, to_nanos, SqliteStore};
use crate::access::{
    check_token_name, generate_token, hash_token, AccessGeneration, AccessStore, ChangeError, IssuedToken, TokenInfo,
    TokenRecord,
};
use crate::audit::{check_entries, entry_payload, format_at, next_record};
use crate::error::{Result, StoreError};
use crate::types::AuditEntry;

const TOKEN_COLUMNS: &str =
    "lookup_id, name, role, secret_hash, created_at, created_by, last_used_at, revoked_at, revoked_by";

/// A write transaction with the in-process write lock held, as `write_batch` takes it.
pub(super) struct WriteTx<'a> {
    pub(super) tx: Transaction<'static, Sqlite>,
    _lock: MutexGuard<'a, ()>,
}

impl SqliteStore {
    /// Starts a write: the process's write lock, then `BEGIN IMMEDIATE` across processes.
    pub(super) async fn begin_write(&self) -> Result<WriteTx<'_>> {
        let lock = self.write_lock.lock().await;
        let tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db("starting a write"))?;
        Ok(WriteTx { tx, _lock: lock })
    }
}

impl WriteTx<'_> {
    /// Appends `entries` to the audit chain inside this transaction.
    pub(super) async fn audit(&mut self, entries: &[AuditEntry]) -> Result<Vec<AuditRecord>> {
        check_entries(entries)?;
        let last: Option<(i64, String)> = sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(db("reading the end of the audit log"))?;
        let mut link = last;
        let mut records = Vec::with_capacity(entries.len());
        for entry in entries {
            let record = next_record(
                link.as_ref().map(|(seq, hash)| (*seq, hash.as_str())),
                entry.at,
                &entry.actor,
                &entry.action,
                entry_payload(entry),
            );
            sqlx::query(
                "INSERT INTO audit_log (seq, at, actor, action, payload, payload_hash, prev_hash, hash) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(record.seq)
            .bind(format_at(record.at))
            .bind(&record.actor)
            .bind(&record.action)
            .bind(&record.payload)
            .bind(&record.payload_hash)
            .bind(&record.prev_hash)
            .bind(&record.hash)
            .execute(&mut *self.tx)
            .await
            .map_err(db("appending to the audit log"))?;
            link = Some((record.seq, record.hash.clone()));
            records.push(record);
        }
        Ok(records)
    }

    /// Bumps a change counter (`policies` or `tokens`) so other processes notice.
    pub(super) async fn bump(&mut self, counter: Counter) -> Result<()> {
        let sql = match counter {
            Counter::Policies => "UPDATE access_generation SET policies = policies + 1 WHERE id = 1",
            Counter::Tokens => "UPDATE access_generation SET tokens = tokens + 1 WHERE id = 1",
        };
        sqlx::query(sql).execute(&mut *self.tx).await.map_err(db("bumping a change counter"))?;
        Ok(())
    }

    /// Commits everything written in this transaction.
    pub(super) async fn commit(self) -> Result<()> {
        self.tx.commit().await.map_err(db("committing a write"))
    }
}

/// The change counters of `access_generation`.
#[derive(Debug, Clone, Copy)]
pub(super) enum Counter {
    Policies,
    Tokens,
}

fn optional_time(row: &SqliteRow, column: &str, what: &str) -> Result<Option<OffsetDateTime>> {
    let value: Option<i64> = row.try_get(column).map_err(|e| corrupt(what, column, e))?;
    value.map(|nanos| from_nanos(nanos, what)).transpose()
}

fn corrupt(what: &str, column: &str, reason: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt { what: what.to_owned(), reason: format!("column `{column}`: {reason}") }
}

fn token_from_row(row: &SqliteRow) -> Result<TokenRecord> {
    let name: String = row.try_get("name").map_err(|e| corrupt("a token", "name", e))?;
    let what = format!("token `{name}`");
    let text = |column: &str| -> Result<String> { row.try_get(column).map_err(|e| corrupt(&what, column, e)) };
    let role = text("role")?.parse::<Role>().map_err(|e| corrupt(&what, "role", e))?;
    let created_at: i64 = row.try_get("created_at").map_err(|e| corrupt(&what, "created_at", e))?;
    Ok(TokenRecord {
        info: TokenInfo {
            lookup_id: text("lookup_id")?,
            role,
            created_at: from_nanos(created_at, &what)?,
            created_by: text("created_by")?,
            last_used_at: optional_time(row, "last_used_at", &what)?,
            revoked_at: optional_time(row, "revoked_at", &what)?,
            revoked_by: row.try_get("revoked_by").map_err(|e| corrupt(&what, "revoked_by", e))?,
            name,
        },
        secret_hash: text("secret_hash")?,
    })
}

#[async_trait]
impl AccessStore for SqliteStore {
    async fn create_token(&self, name: &str, role: Role, actor: &str) -> Result<IssuedToken, ChangeError> {
        check_token_name(name)?;
        let (token, lookup_id) = generate_token();
        let for_hash = token.clone();
        // Argon2 is deliberately slow: keep it off the async runtime.
        let secret_hash = tokio::task::spawn_blocking(move || hash_token(&for_hash))
            .await
            .map_err(|e| StoreError::InvalidInput { what: "a token".to_owned(), reason: e.to_string() })??;
        let now = OffsetDateTime::now_utc();
        let mut w = self.begin_write().await?;
        let taken: Option<i64> = sqlx::query_scalar("SELECT 1 FROM access_tokens WHERE name = ?")
            .bind(name)
            .fetch_optional(&mut *w.tx)
            .await
            .map_err(db("reading tokens"))?;
        if taken.is_some() {
            return Err(ChangeError::Conflict(format!(
                "a token named `{name}` exists already (names are never reused, even after revocation)"
            )));
        }
        sqlx::query(&format!(
            "INSERT INTO access_tokens ({TOKEN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, NULL, NULL, NULL)"
        ))
        .bind(&lookup_id)
        .bind(name)
        .bind(role.as_str())
        .bind(&secret_hash)
        .bind(to_nanos(now, || format!("token `{name}`"))?)
        .bind(actor)
        .execute(&mut *w.tx)
        .await
        .map_err(db("storing a token"))?;
        w.audit(&[AuditEntry::now(
            actor,
            "token.created",
            serde_json::json!({"name": name, "role": role.as_str(), "lookup_id": lookup_id}),
        )])
        .await?;
        w.bump(Counter::Tokens).await?;
        w.commit().await?;
        let info = TokenInfo {
            name: name.to_owned(),
            role,
            lookup_id,
            created_at: now,
            created_by: actor.to_owned(),
            last_used_at: None,
            revoked_at: None,
            revoked_by: None,
        };
        Ok(IssuedToken { info, token })
    }

    async fn list_tokens(&self) -> Result<Vec<TokenInfo>> {
        let rows = sqlx::query(&format!("SELECT {TOKEN_COLUMNS} FROM access_tokens ORDER BY created_at, name"))
            .fetch_all(&self.pool)
            .await
            .map_err(db("listing tokens"))?;
        rows.iter().map(|row| token_from_row(row).map(|t| t.info)).collect()
    }

    async fn revoke_token(&self, name: &str, actor: &str) -> Result<TokenInfo, ChangeError> {
        let mut w = self.begin_write().await?;
        let row = sqlx::query(&format!("SELECT {TOKEN_COLUMNS} FROM access_tokens WHERE name = ?"))
            .bind(name)
            .fetch_optional(&mut *w.tx)
            .await
            .map_err(db("reading tokens"))?;
        let Some(row) = row else {
            return Err(ChangeError::NotFound(format!("no token named `{name}` (see `keel token list`)")));
        };
        let mut info = token_from_row(&row)?.info;
        if let Some(at) = info.revoked_at {
            return Err(ChangeError::Conflict(format!(
                "the token `{name}` was already revoked at {at} by {}",
                info.revoked_by.as_deref().unwrap_or("?")
            )));
        }
        let now = OffsetDateTime::now_utc();
        sqlx::query("UPDATE access_tokens SET revoked_at = ?, revoked_by = ? WHERE name = ?")
            .bind(to_nanos(now, || format!("token `{name}`"))?)
            .bind(actor)
            .bind(name)
            .execute(&mut *w.tx)
            .await
            .map_err(db("revoking a token"))?;
        w.audit(&[AuditEntry::now(
            actor,
            "token.revoked",
            serde_json::json!({"name": name, "role": info.role.as_str(), "lookup_id": info.lookup_id}),
        )])
        .await?;
        w.bump(Counter::Tokens).await?;
        w.commit().await?;
        info.revoked_at = Some(now);
        info.revoked_by = Some(actor.to_owned());
        Ok(info)
    }

    async fn token_record(&self, lookup_id: &str) -> Result<Option<TokenRecord>> {
        let row = sqlx::query(&format!("SELECT {TOKEN_COLUMNS} FROM access_tokens WHERE lookup_id = ?"))
            .bind(lookup_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading a token"))?;
        row.as_ref().map(token_from_row).transpose()
    }

    async fn touch_token(&self, lookup_id: &str, at: OffsetDateTime) -> Result<()> {
        sqlx::query("UPDATE access_tokens SET last_used_at = ? WHERE lookup_id = ?")
            .bind(to_nanos(at, || "a token's last use".to_owned())?)
            .bind(lookup_id)
            .execute(&self.pool)
            .await
            .map_err(db("noting a token's use"))?;
        Ok(())
    }

    async fn access_generation(&self) -> Result<AccessGeneration> {
        let (policies, tokens, active): (i64, i64, i64) = sqlx::query_as(
            "SELECT policies, tokens, (SELECT count(*) FROM access_tokens WHERE revoked_at IS NULL) \
             FROM access_generation WHERE id = 1",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(db("reading the change counters"))?;
        Ok(AccessGeneration { policies, tokens, active_tokens: u64::try_from(active).unwrap_or(0) })
    }
}
