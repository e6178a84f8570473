//! How many interactions per second the SQLite store writes: 20,000 interactions with 7 checks
//! each, in batches of 512 (the writer's default), one in 20 with a handoff request, into a
//! fresh file. Ignored by default; run it optimised:
//!
//! ```text
//! cargo test -p keel-store --release --test write_throughput -- --ignored --nocapture
//! ```

// A measurement harness: failing loudly is the point, and printing the figures is its output.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_core::{
    Action, CheckResult, Decision, Evidence, Interaction, InteractionId, Outcome, Phase, PolicyRef, Privacy, Timings,
    Tokens,
};
use keel_store::{
    stored_text, AuditStore, HandoffRequest, InteractionFilter, InteractionStore, SqliteStore, Store, WriteBatch,
    Writer, WriterConfig,
};
use time::OffsetDateTime;

const INTERACTIONS: usize = 20_000;
const BATCH: usize = 512;
const CHECKS: [(&str, &str, Phase); 7] = [
    ("pii", "pii", Phase::Input),
    ("injection", "injection", Phase::Input),
    ("secrets", "regex", Phase::Input),
    ("topics", "keywords", Phase::Input),
    ("pii-out", "pii", Phase::Output),
    ("toxicity", "classifier", Phase::Output),
    ("links", "regex", Phase::Output),
];

/// An interaction shaped like the load test's: a short chat request and answer, 7 checks.
fn interaction(n: usize) -> Interaction {
    let policy = PolicyRef { name: "support-demo".to_owned(), version: "2025-06-01.1".to_owned() };
    let hit = n.is_multiple_of(5);
    let decision = if n.is_multiple_of(20) {
        Action::Escalate
    } else if hit {
        Action::Flag
    } else {
        Action::Allow
    };
    let checks = CHECKS
        .iter()
        .enumerate()
        .map(|(k, (check, kind, phase))| CheckResult {
            check: (*check).to_owned(),
            kind: (*kind).to_owned(),
            phase: *phase,
            score: if hit && k == 0 { 1.0 } else { 0.05 * k as f64 },
            hit: hit && k == 0,
            findings: vec![],
            error: None,
            detail: None,
            elapsed_us: 40 + k as u64,
            mode: Default::default(),
        })
        .collect();
    let request = format!(
        "{{\"model\":\"gpt-4o-mini\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hello, my order {n} has not \
         arrived yet and I would like to know where it is. Could you check the tracking for me?\"}}]}}"
    );
    Interaction {
        id: InteractionId::new(),
        created_at: OffsetDateTime::now_utc(),
        app: "support".to_owned(),
        model: "gpt-4o-mini".to_owned(),
        stream: n.is_multiple_of(2),
        request: stored_text(&request, None, Privacy::Full),
        response: stored_text(
            "Thanks for reaching out! Your parcel left our warehouse yesterday and should arrive within two days.",
            None,
            Privacy::Full,
        ),
        outcome: Outcome::Completed,
        http_status: 200,
        error: None,
        timings: Timings { upstream_ms: 80.5, overhead_us: 900, total_ms: 81.75 },
        tokens: Tokens { prompt: Some(42), completion: Some(23) },
        policy: policy.clone(),
        decision,
        decisions: vec![Decision {
            action: decision,
            phase: Phase::Input,
            rule: hit.then(|| "flag-pii".to_owned()),
            condition: hit.then(|| "pii.hit".to_owned()),
            policy,
            evidence: vec![Evidence {
                check: "pii".to_owned(),
                score: 1.0,
                hit,
                kinds: vec![],
                error: None,
                detail: None,
            }],
            reason: "test load".to_owned(),
        }],
        checks,
        shadow: vec![],
    }
}

fn handoff(i: &Interaction) -> Option<HandoffRequest> {
    (i.decision == Action::Escalate).then(|| HandoffRequest {
        interaction_id: i.id,
        app: i.app.clone(),
        created_at: i.created_at,
        reason: "the customer wants a human".to_owned(),
    })
}

fn report(what: &str, elapsed: Duration) {
    let rate = INTERACTIONS as f64 / elapsed.as_secs_f64();
    println!("{what}: {INTERACTIONS} interactions (7 checks each) in {elapsed:.2?}: {rate:.0} interactions/s");
}

async fn check_stored(store: &SqliteStore) {
    assert_eq!(store.last_audit_record().await.unwrap().map(|r| r.seq), Some(INTERACTIONS as i64));
    assert!(store.verify().await.unwrap().is_ok());
    let newest = store.list_interactions(&InteractionFilter::default()).await.unwrap();
    assert_eq!(newest.len(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run it in release mode with --ignored --nocapture"]
async fn sqlite_write_batch_throughput() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&format!("sqlite://{}", dir.path().join("keel.db").display())).await.unwrap();
    let interactions: Vec<Interaction> = (0..INTERACTIONS).map(interaction).collect();
    let batches: Vec<WriteBatch> = interactions
        .chunks(BATCH)
        .map(|chunk| WriteBatch {
            interactions: chunk.to_vec(),
            handoffs: chunk.iter().filter_map(handoff).collect(),
            audit: vec![],
            cases: Vec::new(),
        })
        .collect();

    let start = Instant::now();
    for batch in batches {
        store.write_batch(batch).await.unwrap();
    }
    report("write_batch", start.elapsed());
    check_stored(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run it in release mode with --ignored --nocapture"]
async fn sqlite_writer_throughput() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        Arc::new(SqliteStore::open(&format!("sqlite://{}", dir.path().join("keel.db").display())).await.unwrap());
    let interactions: Vec<Interaction> = (0..INTERACTIONS).map(interaction).collect();
    let (handle, join) = Writer::spawn(store.clone(), WriterConfig::default());

    let start = Instant::now();
    for i in interactions {
        let h = handoff(&i);
        handle.record_interaction(i, h).await.unwrap();
    }
    drop(handle);
    let summary = join.await.unwrap();
    report("writer", start.elapsed());
    assert_eq!((summary.written, summary.rejected), (INTERACTIONS as u64, 0));
    check_stored(&store).await;
}
