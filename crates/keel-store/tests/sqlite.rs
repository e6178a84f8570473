//! The store test suite on SQLite (a file in a fresh temporary directory per test), plus the
//! checks that only make sense for SQLite.

// The harness is test code: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod suite;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use keel_store::AuditStore;
use keel_store::{SqliteStore, Store, StoreError};
use sqlx::sqlite::{SqlitePool, SqlitePoolOptions};

/// A fresh SQLite file per test; the directory is removed when the harness is dropped.
struct SqliteHarness {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl SqliteHarness {
    fn url(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }

    /// A separate single-connection pool, as another process with the file would have.
    async fn connection(&self) -> SqlitePool {
        SqlitePoolOptions::new().max_connections(1).connect(&self.url()).await.unwrap()
    }
}

async fn sqlite_harness() -> SqliteHarness {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keel.db");
    SqliteHarness { dir, path }
}

#[async_trait]
impl suite::Harness for SqliteHarness {
    async fn open(&self) -> Arc<dyn Store> {
        Arc::new(SqliteStore::open(&self.url()).await.unwrap())
    }

    async fn execute(&self, sql: &str) -> Result<(), String> {
        let conn = self.connection().await;
        let result = sqlx::raw_sql(sql).execute(&conn).await.map(|_| ()).map_err(|e| e.to_string());
        conn.close().await;
        result
    }

    async fn tamper(&self, sql: &str) {
        self.execute(
            "DROP TRIGGER IF EXISTS audit_log_no_update; \
             DROP TRIGGER IF EXISTS audit_log_no_delete;",
        )
        .await
        .unwrap();
        self.execute(sql).await.unwrap();
    }

    async fn scalar(&self, sql: &str) -> i64 {
        let conn = self.connection().await;
        let value: i64 = sqlx::query_scalar(sql).fetch_one(&conn).await.unwrap();
        conn.close().await;
        value
    }
}

store_test_suite!(sqlite_harness());

#[tokio::test]
async fn open_in_a_missing_directory_says_which_directory() {
    let h = sqlite_harness().await;
    let path = h.dir.path().join("no-such-dir").join("keel.db");
    let err = SqliteStore::open(&format!("sqlite://{}", path.display())).await.unwrap_err();
    let StoreError::MissingDirectory { dir, .. } = &err else {
        panic!("expected MissingDirectory, got {err:?}");
    };
    assert_eq!(dir, &h.dir.path().join("no-such-dir"));
    let message = err.to_string();
    assert!(message.contains("no-such-dir"), "{message}");
    assert!(message.contains("does not exist"), "{message}");
    assert!(!path.exists());
}

#[tokio::test]
async fn open_creates_the_file_in_wal_mode() {
    let h = sqlite_harness().await;
    assert!(!h.path.exists());
    let store = SqliteStore::open(&h.url()).await.unwrap();
    assert!(h.path.exists());
    let conn = h.connection().await;
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&conn).await.unwrap();
    assert_eq!(mode, "wal");
    assert!(format!("{store:?}").contains("SqliteStore"));
}

#[tokio::test]
async fn sqlite_colon_path_form_is_accepted() {
    let h = sqlite_harness().await;
    let store = SqliteStore::open(&format!("sqlite:{}", h.path.display())).await.unwrap();
    assert!(store.verify().await.unwrap().is_ok());
    assert!(h.path.exists());
}

#[tokio::test]
async fn memory_databases_are_separate() {
    let a = keel_store::resolve("sqlite::memory:").await.unwrap();
    let b = keel_store::resolve("sqlite::memory:").await.unwrap();
    a.write_batch(keel_store::WriteBatch {
        audit: vec![keel_store::AuditEntry::now("cli", "test", serde_json::json!({}))],
        ..keel_store::WriteBatch::default()
    })
    .await
    .unwrap();
    assert!(a.last_audit_record().await.unwrap().is_some());
    assert!(b.last_audit_record().await.unwrap().is_none());
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_a_clear_error() {
    let h = sqlite_harness().await;
    std::fs::write(&h.path, b"this is not a database, just some text that is long enough").unwrap();
    let err = SqliteStore::open(&h.url()).await.unwrap_err();
    let message = err.to_string();
    assert!(message.contains(&h.path.display().to_string()), "{message}");
}
