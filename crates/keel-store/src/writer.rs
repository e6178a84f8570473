//! The batched writer: the gateway hands records to it and never waits for the database.
//!
//! Handles send on a bounded channel. When the channel is full, sending waits until the
//! writer catches up (backpressure): records are never dropped to make room. The writer task
//! gathers up to `max_batch` items, or whatever arrived within `max_delay` of the first one,
//! and stores them with one [`Store::write_batch`] call (one transaction).
//!
//! Failures: an error the database may get over (busy, locked, I/O, disk full) is logged and
//! the same batch is retried with growing delays, without limit, so nothing is lost while
//! the database is away (the channel fills up and senders wait). An error about the data
//! itself (a constraint, a value out of range) would fail again, so the batch is split and
//! each item written on its own; an item refused on its own is logged at `error` level with
//! its contents' identity and counted in [`WriterHandle::rejected`], and the rest are kept.
//!
//! Shutdown: when every handle is dropped, or [`WriterHandle::close`] is called, the task
//! stops accepting, writes everything already accepted, and its `JoinHandle` completes.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keel_core::Interaction;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use crate::error::{Result, StoreError};
use crate::review::CaseIntake;
use crate::store::Store;
use crate::types::{AuditEntry, HandoffRequest, WriteBatch};

/// First delay before retrying a failed write; it doubles on each failure.
const RETRY_BASE: Duration = Duration::from_millis(50);

/// Longest delay between two retries of the same write.
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Failed attempts logged at `warn` before further ones are logged at `error`.
const QUIET_RETRIES: u32 = 3;

/// How the writer batches.
#[derive(Debug, Clone, PartialEq)]
pub struct WriterConfig {
    /// Most items (interactions, audit entries) written in one transaction.
    pub max_batch: usize,
    /// Longest wait after the first item of a batch before writing it.
    pub max_delay: Duration,
    /// Items the channel holds before senders wait.
    pub capacity: usize,
    /// Which interactions open review cases as they are written (in the same transaction).
    pub intake: CaseIntake,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self { max_batch: 512, max_delay: Duration::from_millis(5), capacity: 8192, intake: CaseIntake::default() }
    }
}

/// What the writer task did before it finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriterSummary {
    /// Items stored.
    pub written: u64,
    /// Items the database refused even on their own (each was logged at `error` level).
    pub rejected: u64,
}

/// One thing to store.
#[derive(Debug, Clone)]
enum Item {
    Interaction(Box<Interaction>, Option<HandoffRequest>),
    Audit(AuditEntry),
}

enum Message {
    Item(Item),
    Flush(oneshot::Sender<()>),
    Close,
}

#[derive(Debug, Default)]
struct Shared {
    pending: AtomicUsize,
    written: AtomicU64,
    rejected: AtomicU64,
    closed: AtomicBool,
}

/// Starts the writer task.
pub struct Writer;

impl Writer {
    /// Spawns the writer task on the current tokio runtime; returns a handle to send to it and
    /// the task's `JoinHandle`, which completes after a clean shutdown has written everything.
    pub fn spawn(store: Arc<dyn Store>, config: WriterConfig) -> (WriterHandle, JoinHandle<WriterSummary>) {
        let (tx, rx) = mpsc::channel(config.capacity.max(1));
        let shared = Arc::new(Shared::default());
        let task = Task {
            store,
            max_batch: config.max_batch.max(1),
            max_delay: config.max_delay,
            intake: config.intake,
            shared: Arc::clone(&shared),
        };
        let join = tokio::spawn(task.run(rx).instrument(tracing::info_span!("store_writer")));
        (WriterHandle { tx, shared }, join)
    }
}

/// Sends records to the writer task; clone it freely.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Message>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for WriterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterHandle")
            .field("queue_depth", &self.queue_depth())
            .field("rejected", &self.rejected())
            .finish()
    }
}

impl WriterHandle {
    /// Queues an interaction (and the handoff request it raised) for storage.
    ///
    /// Waits while the queue is full (backpressure); once it returns `Ok` the writer owns
    /// the record and a clean shutdown will store it. Fails only when the writer has shut down.
    pub async fn record_interaction(&self, interaction: Interaction, handoff: Option<HandoffRequest>) -> Result<()> {
        self.send_item(Item::Interaction(Box::new(interaction), handoff)).await
    }

    /// Queues an explicit audit entry; it is appended after everything queued before it.
    ///
    /// Waits while the queue is full, like [`WriterHandle::record_interaction`].
    pub async fn record_audit(&self, entry: AuditEntry) -> Result<()> {
        self.send_item(Item::Audit(entry)).await
    }

    /// Waits until everything queued before this call has been written (or, for data the
    /// database refused, rejected and logged).
    pub async fn flush(&self) -> Result<()> {
        let (ack, done) = oneshot::channel();
        self.tx.send(Message::Flush(ack)).await.map_err(|_| StoreError::WriterClosed)?;
        done.await.map_err(|_| StoreError::WriterClosed)
    }

    /// Starts a clean shutdown from any handle: later records are refused with
    /// `WriterClosed`, everything accepted so far is written, then the task ends.
    pub async fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        // An error means the task is already gone, which is what was asked for.
        let _ = self.tx.send(Message::Close).await;
    }

    /// Items accepted but not yet written, including those being written and senders
    /// waiting for room: the queue depth gauge.
    pub fn queue_depth(&self) -> usize {
        self.shared.pending.load(Ordering::Relaxed)
    }

    /// Items stored so far.
    pub fn written(&self) -> u64 {
        self.shared.written.load(Ordering::Relaxed)
    }

    /// Items the database refused even on their own; each was logged at `error` level.
    pub fn rejected(&self) -> u64 {
        self.shared.rejected.load(Ordering::Relaxed)
    }

    async fn send_item(&self, item: Item) -> Result<()> {
        if self.shared.closed.load(Ordering::SeqCst) {
            return Err(StoreError::WriterClosed);
        }
        // Count before sending so the task never decrements below zero.
        self.shared.pending.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(Message::Item(item)).await.is_err() {
            self.shared.pending.fetch_sub(1, Ordering::Relaxed);
            return Err(StoreError::WriterClosed);
        }
        Ok(())
    }
}

struct Task {
    store: Arc<dyn Store>,
    max_batch: usize,
    max_delay: Duration,
    intake: CaseIntake,
    shared: Arc<Shared>,
}

impl Task {
    async fn run(self, mut rx: mpsc::Receiver<Message>) -> WriterSummary {
        // An item that arrived while a batch was open but must start the next one.
        let mut carry: Option<Item> = None;
        loop {
            let first = match carry.take() {
                Some(item) => item,
                None => match rx.recv().await {
                    Some(Message::Item(item)) => item,
                    // Nothing is pending: everything sent before the flush is written.
                    Some(Message::Flush(ack)) => {
                        let _ = ack.send(());
                        continue;
                    }
                    Some(Message::Close) => {
                        rx.close();
                        continue;
                    }
                    None => break,
                },
            };

            let mut items = vec![first];
            let mut acks = Vec::new();
            let deadline = Instant::now() + self.max_delay;
            while items.len() < self.max_batch {
                let message = match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(message)) => message,
                    Ok(None) | Err(_) => break,
                };
                match message {
                    Message::Item(item) if fits(&items, &item) => items.push(item),
                    Message::Item(item) => {
                        carry = Some(item);
                        break;
                    }
                    Message::Flush(ack) => {
                        acks.push(ack);
                        break;
                    }
                    // Stop accepting; what is already queued is still read and written.
                    Message::Close => rx.close(),
                }
            }

            self.write(items).await;
            for ack in acks {
                let _ = ack.send(());
            }
        }
        let summary = WriterSummary {
            written: self.shared.written.load(Ordering::Relaxed),
            rejected: self.shared.rejected.load(Ordering::Relaxed),
        };
        tracing::debug!(written = summary.written, rejected = summary.rejected, "store writer finished");
        summary
    }

    /// Writes the items as one batch; if the data is refused, writes them one by one so a
    /// bad item cannot take the others down with it.
    async fn write(&self, items: Vec<Item>) {
        let count = items.len();
        match self.write_with_retry(&items).await {
            Ok(()) => self.done(count, 0),
            Err(error) if count == 1 => {
                for item in &items {
                    reject(item, &error);
                }
                self.done(0, 1);
            }
            Err(error) => {
                tracing::warn!(
                    items = count,
                    %error,
                    "the database refused a batch; writing its items one by one"
                );
                for item in items {
                    match self.write_with_retry(std::slice::from_ref(&item)).await {
                        Ok(()) => self.done(1, 0),
                        Err(error) => {
                            reject(&item, &error);
                            self.done(0, 1);
                        }
                    }
                }
            }
        }
    }

    fn done(&self, written: usize, rejected: usize) {
        self.shared.written.fetch_add(written as u64, Ordering::Relaxed);
        self.shared.rejected.fetch_add(rejected as u64, Ordering::Relaxed);
        self.shared.pending.fetch_sub(written + rejected, Ordering::Relaxed);
    }

    /// Writes the items, retrying as long as the error is one a retry may get past.
    async fn write_with_retry(&self, items: &[Item]) -> Result<()> {
        let mut attempt: u32 = 0;
        loop {
            // Built per attempt: the store takes the batch, and most writes need one attempt.
            match self.store.write_batch(to_batch(items, &self.intake)).await {
                Ok(_) => return Ok(()),
                Err(error) if !error.is_retryable() => return Err(error),
                Err(error) => {
                    attempt = attempt.saturating_add(1);
                    let delay = backoff(attempt);
                    if attempt <= QUIET_RETRIES {
                        tracing::warn!(attempt, items = items.len(), retry_in = ?delay, %error, "store write failed; retrying");
                    } else {
                        tracing::error!(attempt, items = items.len(), retry_in = ?delay, %error, "store write still failing; retrying");
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// True when `item` can join `items` without changing the order of the audit records:
/// a batch appends its interactions' records before its explicit entries, so an
/// interaction that arrives after an entry starts a new batch (and so a batch never holds
/// an interaction after an entry: looking at the last item is enough).
fn fits(items: &[Item], item: &Item) -> bool {
    match item {
        Item::Audit(_) => true,
        Item::Interaction(..) => !matches!(items.last(), Some(Item::Audit(_))),
    }
}

fn to_batch(items: &[Item], intake: &CaseIntake) -> WriteBatch {
    let mut batch = WriteBatch::default();
    let now = time::OffsetDateTime::now_utc();
    for item in items {
        match item {
            Item::Interaction(interaction, handoff) => {
                batch.cases.extend(intake.case_for(interaction, now));
                batch.interactions.push((**interaction).clone());
                batch.handoffs.extend(handoff.iter().cloned());
            }
            Item::Audit(entry) => batch.audit.push(entry.clone()),
        }
    }
    batch
}

fn backoff(attempt: u32) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(16);
    RETRY_BASE.saturating_mul(factor).min(RETRY_MAX)
}

fn reject(item: &Item, error: &StoreError) {
    match item {
        Item::Interaction(interaction, handoff) => tracing::error!(
            interaction_id = %interaction.id,
            app = %interaction.app,
            decision = %interaction.decision,
            handoff = handoff.is_some(),
            %error,
            "the database refused an interaction; it was not stored"
        ),
        Item::Audit(entry) => tracing::error!(
            actor = %entry.actor,
            action = %entry.action,
            payload = %entry.payload,
            %error,
            "the database refused an audit entry; it was not stored"
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;
    use std::sync::Mutex;

    use async_trait::async_trait;
    use keel_core::{Action, AuditRecord, InteractionId, Outcome, PolicyRef, StoredText, Timings, Tokens};
    use tokio::sync::Semaphore;

    use super::*;
    use crate::store::{AuditStore, InteractionStore};
    use crate::types::{InteractionFilter, VerifyReport};
    use crate::SqliteStore;

    /// A real in-memory store whose writes can fail, refuse one interaction, or wait.
    struct FlakyStore {
        inner: SqliteStore,
        transient_failures: AtomicU32,
        poison: Option<InteractionId>,
        gate: Option<Arc<Semaphore>>,
        calls: AtomicU32,
        batch_sizes: Mutex<Vec<usize>>,
    }

    impl FlakyStore {
        async fn new() -> Self {
            Self {
                inner: SqliteStore::open("sqlite::memory:").await.unwrap(),
                transient_failures: AtomicU32::new(0),
                poison: None,
                gate: None,
                calls: AtomicU32::new(0),
                batch_sizes: Mutex::new(Vec::new()),
            }
        }
    }

    crate::delegate_store_reads!(FlakyStore, inner);

    #[async_trait]
    impl Store for FlakyStore {
        async fn write_batch(&self, batch: WriteBatch) -> Result<Vec<AuditRecord>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if let Some(gate) = &self.gate {
                gate.acquire().await.unwrap().forget();
            }
            let failing =
                self.transient_failures.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
            if failing {
                return Err(StoreError::Database {
                    operation: "testing",
                    retryable: true,
                    source: sqlx::Error::PoolTimedOut,
                });
            }
            if let Some(poison) = self.poison {
                if batch.interactions.iter().any(|i| i.id == poison) {
                    return Err(StoreError::InvalidInput {
                        what: format!("interaction {poison}"),
                        reason: "poisoned for the test".to_owned(),
                    });
                }
            }
            self.batch_sizes.lock().unwrap().push(batch.len());
            self.inner.write_batch(batch).await
        }
    }

    fn interaction() -> Interaction {
        let policy = PolicyRef { name: "p".to_owned(), version: "1".to_owned() };
        Interaction {
            id: InteractionId::new(),
            created_at: time::OffsetDateTime::now_utc(),
            app: "app".to_owned(),
            model: "m".to_owned(),
            stream: false,
            request: StoredText::default(),
            response: StoredText::default(),
            outcome: Outcome::Completed,
            http_status: 200,
            error: None,
            timings: Timings::default(),
            tokens: Tokens::default(),
            policy,
            decision: Action::Allow,
            decisions: vec![],
            checks: vec![],
            shadow: vec![],
        }
    }

    fn slow_config() -> WriterConfig {
        WriterConfig {
            max_batch: 10_000,
            max_delay: Duration::from_secs(3600),
            capacity: 64,
            ..WriterConfig::default()
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff(1), Duration::from_millis(50));
        assert_eq!(backoff(2), Duration::from_millis(100));
        assert_eq!(backoff(4), Duration::from_millis(400));
        assert_eq!(backoff(10), RETRY_MAX);
        assert_eq!(backoff(u32::MAX), RETRY_MAX);
    }

    #[test]
    fn an_interaction_after_an_audit_entry_starts_a_new_batch() {
        let i = || Item::Interaction(Box::new(interaction()), None);
        let a = || Item::Audit(AuditEntry::now("cli", "x", serde_json::json!({})));
        assert!(fits(&[i()], &i()));
        assert!(fits(&[i()], &a()));
        assert!(fits(&[i(), a()], &a()));
        assert!(!fits(&[i(), a()], &i()));
    }

    #[tokio::test]
    async fn default_config_matches_the_documented_values() {
        let c = WriterConfig::default();
        assert_eq!((c.max_batch, c.max_delay, c.capacity), (512, Duration::from_millis(5), 8192));
    }

    #[tokio::test]
    async fn transient_errors_are_retried_until_written() {
        let store = FlakyStore::new().await;
        store.transient_failures.store(3, Ordering::SeqCst);
        let store = Arc::new(store);
        let (handle, join) = Writer::spawn(store.clone(), slow_config());
        let sent: Vec<Interaction> = (0..5).map(|_| interaction()).collect();
        for i in &sent {
            handle.record_interaction(i.clone(), None).await.unwrap();
        }
        handle.flush().await.unwrap();
        assert_eq!(store.calls.load(Ordering::SeqCst), 4);
        for i in &sent {
            assert!(store.get_interaction(i.id).await.unwrap().is_some());
        }
        drop(handle);
        let summary = join.await.unwrap();
        assert_eq!(summary, WriterSummary { written: 5, rejected: 0 });
    }

    #[tokio::test]
    async fn a_refused_item_is_isolated_and_the_rest_are_written() {
        let mut store = FlakyStore::new().await;
        let sent: Vec<Interaction> = (0..5).map(|_| interaction()).collect();
        store.poison = Some(sent[2].id);
        let store = Arc::new(store);
        let (handle, join) = Writer::spawn(store.clone(), slow_config());
        for i in &sent {
            handle.record_interaction(i.clone(), None).await.unwrap();
        }
        handle.record_audit(AuditEntry::now("cli", "after", serde_json::json!({}))).await.unwrap();
        handle.flush().await.unwrap();
        assert_eq!(handle.rejected(), 1);
        assert_eq!(handle.queue_depth(), 0);
        for (n, i) in sent.iter().enumerate() {
            let stored = store.get_interaction(i.id).await.unwrap().is_some();
            assert_eq!(stored, n != 2, "interaction {n}");
        }
        // The chain has the four decisions and the entry, in the order they were sent.
        let records = store.audit_records(1, 100, 100).await.unwrap();
        assert_eq!(records.len(), 5);
        assert_eq!(records[4].action, "after");
        assert!(matches!(store.verify().await.unwrap(), VerifyReport::Ok { count: 5, .. }));
        drop(handle);
        assert_eq!(join.await.unwrap(), WriterSummary { written: 5, rejected: 1 });
    }

    #[tokio::test]
    async fn a_row_sqlite_refuses_in_a_multi_row_insert_is_isolated_and_the_rest_are_written() {
        let store = Arc::new(FlakyStore::new().await);
        let stored_before = interaction();
        store
            .write_batch(WriteBatch { interactions: vec![stored_before.clone()], ..WriteBatch::default() })
            .await
            .unwrap();
        let (handle, join) = Writer::spawn(store.clone(), slow_config());
        let mut sent: Vec<Interaction> = (0..5).map(|_| interaction()).collect();
        // The same id again: the primary key refuses it, inside the batch's one INSERT.
        sent[3] = Interaction { app: "duplicate".to_owned(), ..stored_before.clone() };
        for i in &sent {
            handle.record_interaction(i.clone(), None).await.unwrap();
        }
        handle.flush().await.unwrap();

        // The whole batch once, then each of its five items on its own.
        assert_eq!(store.calls.load(Ordering::SeqCst), 1 + 1 + 5);
        assert_eq!(handle.rejected(), 1);
        for (n, i) in sent.iter().enumerate().filter(|(n, _)| *n != 3) {
            assert_eq!(store.get_interaction(i.id).await.unwrap().as_ref(), Some(i), "interaction {n}");
        }
        assert_eq!(store.get_interaction(stored_before.id).await.unwrap(), Some(stored_before));
        assert!(matches!(store.verify().await.unwrap(), VerifyReport::Ok { count: 5, .. }));
        drop(handle);
        assert_eq!(join.await.unwrap(), WriterSummary { written: 4, rejected: 1 });
    }

    #[tokio::test]
    async fn batches_are_cut_at_max_batch() {
        let store = Arc::new(FlakyStore::new().await);
        let config = WriterConfig { max_batch: 4, ..slow_config() };
        let (handle, join) = Writer::spawn(store.clone(), config);
        for _ in 0..10 {
            handle.record_interaction(interaction(), None).await.unwrap();
        }
        handle.flush().await.unwrap();
        assert_eq!(*store.batch_sizes.lock().unwrap(), vec![4, 4, 2]);
        drop(handle);
        join.await.unwrap();
    }

    #[tokio::test]
    async fn a_batch_is_written_after_max_delay_without_a_flush() {
        let store = Arc::new(FlakyStore::new().await);
        let config = WriterConfig { max_delay: Duration::from_millis(20), ..slow_config() };
        let (handle, join) = Writer::spawn(store.clone(), config);
        handle.record_interaction(interaction(), None).await.unwrap();
        let waited = tokio::time::timeout(Duration::from_secs(5), async {
            while handle.written() == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(waited.is_ok(), "the batch was not written after max_delay");
        drop(handle);
        join.await.unwrap();
    }

    #[tokio::test]
    async fn a_full_queue_makes_senders_wait_instead_of_dropping() {
        let mut store = FlakyStore::new().await;
        let gate = Arc::new(Semaphore::new(0));
        store.gate = Some(gate.clone());
        let store = Arc::new(store);
        let config =
            WriterConfig { max_batch: 1, max_delay: Duration::from_millis(1), capacity: 2, ..WriterConfig::default() };
        let (handle, join) = Writer::spawn(store.clone(), config);
        let sender = {
            let handle = handle.clone();
            tokio::spawn(async move {
                for _ in 0..6 {
                    handle.record_interaction(interaction(), None).await.unwrap();
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        // One item is being written (blocked), two wait in the channel, the fourth sender waits.
        assert!(!sender.is_finished(), "senders must wait while the queue is full");
        assert_eq!(handle.queue_depth(), 4);

        gate.add_permits(1000);
        tokio::time::timeout(Duration::from_secs(5), sender).await.unwrap().unwrap();
        drop(handle);
        let summary = join.await.unwrap();
        assert_eq!(summary.written, 6);
        assert_eq!(store.list_interactions(&InteractionFilter::default()).await.unwrap().len(), 6);
    }

    #[tokio::test]
    async fn zero_sizes_in_the_config_do_not_break_the_writer() {
        let store = Arc::new(FlakyStore::new().await);
        let config = WriterConfig { max_batch: 0, max_delay: Duration::ZERO, capacity: 0, ..WriterConfig::default() };
        let (handle, join) = Writer::spawn(store.clone(), config);
        for _ in 0..3 {
            handle.record_interaction(interaction(), None).await.unwrap();
        }
        drop(handle);
        assert_eq!(join.await.unwrap().written, 3);
    }

    #[tokio::test]
    async fn dropping_every_handle_drains_the_queue() {
        let store = Arc::new(FlakyStore::new().await);
        let (handle, join) = Writer::spawn(store.clone(), slow_config());
        for _ in 0..100 {
            handle.record_interaction(interaction(), None).await.unwrap();
        }
        drop(handle);
        let summary = tokio::time::timeout(Duration::from_secs(10), join).await.unwrap().unwrap();
        assert_eq!(summary.written, 100);
        let listed = store
            .list_interactions(&InteractionFilter { limit: Some(500), ..InteractionFilter::default() })
            .await
            .unwrap();
        assert_eq!(listed.len(), 100);
    }
}
