//! The store test suite: every backend must pass these same test bodies.
//!
//! A backend's test file implements [`Harness`] (a fresh database per test, raw SQL access
//! for tamper tests) and invokes `store_test_suite!(make_harness())`. SQLite runs it always;
//! PostgreSQL will run it when `KEEL_TEST_POSTGRES_URL` is set.

// Test support: failing loudly is the point, and not every backend uses every helper.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod access;
mod drift;
mod feedback;
mod lifecycle;
mod review;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use keel_core::{
    Action, CheckResult, Decision, Evidence, Finding, Interaction, InteractionId, Outcome, Phase, PolicyRef, Privacy,
    ShadowDecision, Span, Timings, Tokens, GENESIS_HASH,
};
use keel_store::{
    export_jsonl, stored_text, AuditEntry, HandoffFilter, HandoffRequest, InteractionFilter, InteractionSummary, Store,
    StoreError, VerifyReport, WriteBatch, Writer, WriterConfig,
};
use time::macros::datetime;
use time::OffsetDateTime;

pub use access::*;
pub use lifecycle::*;
pub use review::*;

/// One fresh database for one test, reachable through the store and through raw SQL.
#[async_trait]
pub trait Harness: Send + Sync {
    /// Opens a store on this harness's database (the same database every time), running
    /// migrations as a real start would.
    async fn open(&self) -> Arc<dyn Store>;

    /// Runs SQL directly against the database, as an operator with file access could.
    async fn execute(&self, sql: &str) -> Result<(), String>;

    /// Removes the append-only guards of the audit log, then runs SQL: what someone set on
    /// tampering would do.
    async fn tamper(&self, sql: &str);

    /// The single integer a query returns.
    async fn scalar(&self, sql: &str) -> i64;
}

/// Runs every suite test against the harness the expression builds (an `async` value).
#[macro_export]
macro_rules! store_test_suite {
    ($make:expr) => {
        $crate::store_test_suite!(@store $make;
            interaction_round_trips_with_every_field,
            missing_interaction_is_none,
            list_filters_by_time_range,
            list_filters_by_app_action_and_check,
            list_pages_newest_first_with_before_and_limit,
            list_limit_defaults_to_50_and_caps_at_500,
            list_with_unknown_cursor_is_an_error,
            summaries_carry_the_checks_that_hit,
            every_interaction_gets_a_decision_record,
            audit_seq_has_no_gaps_across_batches,
            failed_batch_writes_nothing,
            handoffs_are_listed_newest_first,
            empty_store_verifies_at_genesis,
            export_writes_one_record_per_line,
            writer_stores_2000_interactions_sent_concurrently,
            writer_flush_waits_for_everything_sent_before_it,
            writer_close_writes_what_was_accepted_and_refuses_more,
            writer_keeps_audit_order,
            interactions_after_pages_in_insertion_order,
            drift_commit_stores_state_alerts_and_audit_atomically,
            alert_transitions_follow_the_state_machine_and_are_audited,
            monitor_lease_has_one_holder_until_it_expires,
            alert_deliveries_are_recorded_and_rescheduled,
            tokens_are_created_listed_and_revoked_with_audit_records,
            token_changes_are_refused_clearly,
            a_stored_token_verifies_and_records_its_use,
            a_version_moves_from_draft_to_active_and_back_by_rollback,
            illegal_changes_are_refused_and_change_nothing,
            the_gate_is_per_exact_version_and_an_override_is_audited,
            seeding_activates_once_then_registers_drafts,
            concurrent_promotions_keep_one_active_version,
            rollback_restores_the_previous_active_and_withdraws_the_canary,
            shadow_decisions_are_stored_with_the_interaction_and_reported,
            flags_escalations_and_sampled_traffic_open_cases_in_the_write,
            opening_a_case_twice_changes_nothing,
            next_takes_the_most_urgent_case_and_locks_it,
            a_lapsed_lock_frees_the_case,
            second_reviews_agree_or_go_to_adjudication,
            a_drift_alert_opens_cases_for_its_sample,
            feedback_is_idempotent_by_event_id_and_audited,
            handoff_steps_follow_requested_taken_resolved,
            an_escalation_counts_as_requested,
            kpi_rows_cover_the_range_and_app,
        );
        $crate::store_test_suite!(@harness $make;
            audit_chain_continues_after_reopening,
            migrations_are_idempotent_on_reopen,
            audit_log_refuses_updates_and_deletes,
            tampered_payload_breaks_at_that_seq,
            deleted_record_breaks_at_the_missing_seq,
            swapped_records_break_at_the_first_of_them,
            unreadable_record_breaks_at_that_seq,
            verify_reads_long_chains_in_pages,
            a_batch_too_big_for_one_statement_is_written_whole_and_in_order,
            the_store_never_holds_a_token,
            stored_versions_are_immutable_and_never_deleted,
        );
    };
    (@store $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let harness = $make.await;
                suite::$name(suite::Harness::open(&harness).await).await;
            }
        )*
    };
    (@harness $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let harness = $make.await;
                suite::$name(&harness).await;
            }
        )*
    };
}

pub use drift::*;
pub use feedback::*;

// ---------------------------------------------------------------------------------------------
// Data builders

const T0: OffsetDateTime = datetime!(2025-06-01 12:00:00.123456789 UTC);

/// A test interaction: `hits` are the checks that hit, plus one check that ran and did not.
pub fn interaction(app: &str, created_at: OffsetDateTime, decision: Action, hits: &[&str]) -> Interaction {
    let policy = PolicyRef { name: "default".to_owned(), version: "3".to_owned() };
    let mut checks: Vec<CheckResult> = hits
        .iter()
        .map(|name| CheckResult {
            check: (*name).to_owned(),
            kind: "regex".to_owned(),
            phase: Phase::Input,
            score: 1.0,
            hit: true,
            findings: vec![],
            error: None,
            elapsed_us: 12,
            mode: Default::default(),
            detail: None,
        })
        .collect();
    checks.push(CheckResult {
        check: "quiet".to_owned(),
        kind: "keywords".to_owned(),
        phase: Phase::Output,
        score: 0.0,
        hit: false,
        findings: vec![],
        error: None,
        elapsed_us: 3,
        mode: Default::default(),
        detail: None,
    });
    Interaction {
        id: InteractionId::new(),
        created_at,
        app: app.to_owned(),
        model: "gpt-test".to_owned(),
        stream: false,
        request: stored_text("{\"messages\":[]}", None, Privacy::Full),
        response: stored_text("hello", None, Privacy::Full),
        outcome: Outcome::Completed,
        http_status: 200,
        error: None,
        timings: Timings { upstream_ms: 12.5, overhead_us: 340, total_ms: 13.25 },
        tokens: Tokens::default(),
        policy: policy.clone(),
        decision,
        decisions: vec![Decision {
            action: decision,
            phase: Phase::Input,
            rule: hits.first().map(|h| format!("rule-{h}")),
            condition: None,
            policy,
            evidence: vec![],
            reason: "test".to_owned(),
        }],
        checks,
        shadow: vec![],
    }
}

/// An interaction with every optional field set and unusual values everywhere.
pub fn full_interaction() -> Interaction {
    let policy = PolicyRef { name: "support-bot".to_owned(), version: "2025-06-01.2".to_owned() };
    Interaction {
        id: InteractionId::new(),
        created_at: datetime!(2025-06-01 23:59:59.999999999 UTC),
        app: "support".to_owned(),
        model: "llama-3-8b".to_owned(),
        stream: true,
        request: stored_text(
            "my mail is a@b.example, 日本語も",
            Some("my mail is [EMAIL], 日本語も"),
            Privacy::Redacted,
        ),
        response: stored_text("secret answer", None, Privacy::None),
        outcome: Outcome::ClientGone,
        http_status: 499,
        error: Some("client closed the stream after 3 chunks".to_owned()),
        timings: Timings { upstream_ms: 1234.5, overhead_us: u64::from(u32::MAX) + 7, total_ms: 1240.125 },
        tokens: Tokens { prompt: Some(17), completion: Some(0) },
        policy: policy.clone(),
        decision: Action::Escalate,
        decisions: vec![
            Decision {
                action: Action::Redact,
                phase: Phase::Input,
                rule: Some("redact-pii".to_owned()),
                condition: Some("pii.hit".to_owned()),
                policy: policy.clone(),
                evidence: vec![Evidence {
                    check: "pii".to_owned(),
                    score: 1.0,
                    hit: true,
                    kinds: vec!["email".to_owned()],
                    error: None,
                    detail: None,
                }],
                reason: "PII in the request".to_owned(),
            },
            Decision {
                action: Action::Escalate,
                phase: Phase::Output,
                rule: Some("angry-customer".to_owned()),
                condition: Some("sentiment.score > 0.8 && !judge.error".to_owned()),
                policy,
                evidence: vec![Evidence {
                    check: "judge".to_owned(),
                    score: 0.0,
                    hit: false,
                    kinds: vec![],
                    error: Some("timeout".to_owned()),
                    detail: None,
                }],
                reason: "the customer wants a human".to_owned(),
            },
        ],
        checks: vec![
            CheckResult {
                check: "pii".to_owned(),
                kind: "pii".to_owned(),
                phase: Phase::Input,
                score: 1.0,
                hit: true,
                findings: vec![Finding {
                    kind: "email".to_owned(),
                    span: Span::new(11, 23),
                    message: Some(0),
                    detail: Some("domain b.example".to_owned()),
                }],
                error: None,
                elapsed_us: 88,
                mode: Default::default(),
                detail: None,
            },
            CheckResult {
                check: "judge".to_owned(),
                kind: "judge".to_owned(),
                phase: Phase::Output,
                score: 0.0,
                hit: false,
                findings: vec![],
                error: Some("timeout".to_owned()),
                elapsed_us: 2_000_000,
                mode: Default::default(),
                detail: None,
            },
            CheckResult {
                check: "sentiment".to_owned(),
                kind: "classifier".to_owned(),
                phase: Phase::Output,
                score: 0.875,
                hit: true,
                findings: vec![],
                error: None,
                elapsed_us: 1500,
                mode: Default::default(),
                detail: None,
            },
            CheckResult {
                check: "pii".to_owned(),
                kind: "pii".to_owned(),
                phase: Phase::Output,
                score: 0.5,
                hit: true,
                findings: vec![],
                error: None,
                elapsed_us: 70,
                mode: Default::default(),
                detail: None,
            },
        ],
        shadow: vec![
            ShadowDecision {
                policy: PolicyRef { name: "support-bot".to_owned(), version: "2025-06-02.1".to_owned() },
                phase: Phase::Input,
                action: Action::Block,
                rule: Some("block-recall".to_owned()),
            },
            ShadowDecision {
                policy: PolicyRef { name: "support-bot".to_owned(), version: "2025-06-02.1".to_owned() },
                phase: Phase::Output,
                action: Action::Allow,
                rule: None,
            },
        ],
    }
}

fn entry(action: &str, n: usize) -> AuditEntry {
    AuditEntry {
        at: T0 + time::Duration::seconds(n as i64),
        actor: "cli".to_owned(),
        action: action.to_owned(),
        payload: serde_json::json!({ "n": n, "note": "naïve – ünïcode" }),
    }
}

async fn write(store: &Arc<dyn Store>, interactions: Vec<Interaction>) {
    store.write_batch(WriteBatch { interactions, ..WriteBatch::default() }).await.unwrap();
}

async fn write_audit(store: &Arc<dyn Store>, entries: Vec<AuditEntry>) {
    store.write_batch(WriteBatch { audit: entries, ..WriteBatch::default() }).await.unwrap();
}

async fn ids(store: &Arc<dyn Store>, filter: InteractionFilter) -> Vec<InteractionId> {
    store.list_interactions(&filter).await.unwrap().into_iter().map(|s| s.id).collect()
}

fn broken_at(report: &VerifyReport) -> Option<i64> {
    match report {
        VerifyReport::Broken { seq, .. } => Some(*seq),
        VerifyReport::Ok { .. } => None,
    }
}

/// A chain of `n` explicit records (seq 1..=n).
async fn chain_of(store: &Arc<dyn Store>, n: usize) {
    write_audit(store, (1..=n).map(|i| entry("test.entry", i)).collect()).await;
}

/// Every stored interaction id, newest first, paging through with `before`.
async fn all_ids(store: &Arc<dyn Store>) -> Vec<InteractionId> {
    let mut out = Vec::new();
    let mut before = None;
    loop {
        let page = ids(store, InteractionFilter { limit: Some(500), before, ..InteractionFilter::default() }).await;
        let Some(last) = page.last().copied() else {
            return out;
        };
        out.extend(page);
        before = Some(last);
    }
}

// ---------------------------------------------------------------------------------------------
// Interactions

pub async fn interaction_round_trips_with_every_field(store: Arc<dyn Store>) {
    let original = full_interaction();
    write(&store, vec![original.clone()]).await;
    let back = store.get_interaction(original.id).await.unwrap().unwrap();
    assert_eq!(back, original);
    assert_eq!(back.created_at.nanosecond(), 999_999_999);
    assert_eq!(back.request.text.as_deref(), Some("my mail is [EMAIL], 日本語も"));
    assert_eq!(back.response.text, None);
    assert_eq!(back.response.sha256, keel_store::audit::sha256_hex("secret answer"));
}

pub async fn missing_interaction_is_none(store: Arc<dyn Store>) {
    write(&store, vec![interaction("a", T0, Action::Allow, &[])]).await;
    assert_eq!(store.get_interaction(InteractionId::new()).await.unwrap(), None);
}

pub async fn list_filters_by_time_range(store: Arc<dyn Store>) {
    let at = |s: i64| T0 + time::Duration::seconds(s);
    let all: Vec<Interaction> = (0..5).map(|s| interaction("a", at(s), Action::Allow, &[])).collect();
    write(&store, all.clone()).await;
    let got =
        ids(&store, InteractionFilter { since: Some(at(1)), until: Some(at(4)), ..InteractionFilter::default() }).await;
    // `since` is inclusive, `until` exclusive; newest first.
    assert_eq!(got, vec![all[3].id, all[2].id, all[1].id]);

    let one_ns_later = ids(
        &store,
        InteractionFilter {
            since: Some(at(1) + time::Duration::nanoseconds(1)),
            until: Some(at(2) + time::Duration::nanoseconds(1)),
            ..InteractionFilter::default()
        },
    )
    .await;
    assert_eq!(one_ns_later, vec![all[2].id]);

    // Instants in another offset mean the same time.
    let offset = time::UtcOffset::from_hms(9, 0, 0).unwrap();
    let in_tokyo =
        ids(&store, InteractionFilter { since: Some(at(3).to_offset(offset)), ..InteractionFilter::default() }).await;
    assert_eq!(in_tokyo, vec![all[4].id, all[3].id]);
}

pub async fn list_filters_by_app_action_and_check(store: Arc<dyn Store>) {
    let at = |s: i64| T0 + time::Duration::seconds(s);
    let a_allow = interaction("shop", at(0), Action::Allow, &[]);
    let a_block = interaction("shop", at(1), Action::Block, &["secrets", "pii"]);
    let b_block = interaction("support", at(2), Action::Block, &["pii"]);
    let b_flag = interaction("support", at(3), Action::Flag, &["injection"]);
    write(&store, vec![a_allow.clone(), a_block.clone(), b_block.clone(), b_flag.clone()]).await;

    let by_app = ids(&store, InteractionFilter { app: Some("shop".to_owned()), ..InteractionFilter::default() }).await;
    assert_eq!(by_app, vec![a_block.id, a_allow.id]);

    let by_action =
        ids(&store, InteractionFilter { action: Some(Action::Block), ..InteractionFilter::default() }).await;
    assert_eq!(by_action, vec![b_block.id, a_block.id]);

    let by_check =
        ids(&store, InteractionFilter { check: Some("pii".to_owned()), ..InteractionFilter::default() }).await;
    assert_eq!(by_check, vec![b_block.id, a_block.id]);

    // A check that ran but did not hit does not match.
    let not_hit =
        ids(&store, InteractionFilter { check: Some("quiet".to_owned()), ..InteractionFilter::default() }).await;
    assert!(not_hit.is_empty(), "{not_hit:?}");

    let combined = ids(
        &store,
        InteractionFilter {
            app: Some("support".to_owned()),
            action: Some(Action::Block),
            check: Some("pii".to_owned()),
            since: Some(at(2)),
            ..InteractionFilter::default()
        },
    )
    .await;
    assert_eq!(combined, vec![b_block.id]);

    let nothing = ids(
        &store,
        InteractionFilter { app: Some("shop".to_owned()), action: Some(Action::Flag), ..InteractionFilter::default() },
    )
    .await;
    assert!(nothing.is_empty());
}

pub async fn list_pages_newest_first_with_before_and_limit(store: Arc<dyn Store>) {
    // Seven interactions; the last three share one instant, so ties are broken by id.
    let mut all: Vec<Interaction> =
        (0..4).map(|s| interaction("a", T0 + time::Duration::seconds(s), Action::Allow, &[])).collect();
    let tie = T0 + time::Duration::seconds(10);
    all.extend((0..3).map(|_| interaction("a", tie, Action::Allow, &[])));
    // Store them out of order: the listing must not depend on insertion order.
    let mut shuffled = all.clone();
    shuffled.reverse();
    shuffled.swap(1, 4);
    write(&store, shuffled).await;

    let mut newest_first: Vec<&Interaction> = all.iter().collect();
    newest_first.sort_by_key(|i| std::cmp::Reverse((i.created_at, i.id)));
    let expected: Vec<InteractionId> = newest_first.iter().map(|i| i.id).collect();

    let mut pages = Vec::new();
    let mut before = None;
    loop {
        let page = ids(&store, InteractionFilter { limit: Some(2), before, ..InteractionFilter::default() }).await;
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 2);
        before = page.last().copied();
        pages.push(page);
    }
    // Pages of two split the tied three, so the cursor must break ties by id.
    assert_eq!(pages.len(), 4, "{pages:?}");
    assert_eq!(pages.concat(), expected);

    // The cursor combines with filters.
    let older = ids(
        &store,
        InteractionFilter {
            before: Some(all[2].id),
            until: Some(T0 + time::Duration::seconds(1)),
            ..InteractionFilter::default()
        },
    )
    .await;
    assert_eq!(older, vec![all[0].id]);
}

pub async fn list_limit_defaults_to_50_and_caps_at_500(store: Arc<dyn Store>) {
    let many: Vec<Interaction> =
        (0..510).map(|i| interaction("a", T0 + time::Duration::milliseconds(i), Action::Allow, &[])).collect();
    write(&store, many).await;
    assert_eq!(ids(&store, InteractionFilter::default()).await.len(), 50);
    let capped = InteractionFilter { limit: Some(10_000), ..InteractionFilter::default() };
    assert_eq!(ids(&store, capped).await.len(), 500);
    let one = InteractionFilter { limit: Some(0), ..InteractionFilter::default() };
    assert_eq!(ids(&store, one).await.len(), 1);
}

pub async fn list_with_unknown_cursor_is_an_error(store: Arc<dyn Store>) {
    write(&store, vec![interaction("a", T0, Action::Allow, &[])]).await;
    let unknown = InteractionId::new();
    let err = store
        .list_interactions(&InteractionFilter { before: Some(unknown), ..InteractionFilter::default() })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::CursorNotFound(id) if id == unknown), "{err:?}");
    assert!(err.to_string().contains(&unknown.to_string()));
}

pub async fn summaries_carry_the_checks_that_hit(store: Arc<dyn Store>) {
    let full = full_interaction();
    write(&store, vec![full.clone()]).await;
    let listed = store.list_interactions(&InteractionFilter::default()).await.unwrap();
    assert_eq!(listed, vec![InteractionSummary::of(&full)]);
    // `pii` hit in both phases but is named once; `judge` did not hit.
    assert_eq!(listed[0].checks_hit, vec!["pii", "sentiment"]);
}

// ---------------------------------------------------------------------------------------------
// Audit

pub async fn every_interaction_gets_a_decision_record(store: Arc<dyn Store>) {
    let first = full_interaction();
    let second = interaction("shop", T0, Action::Block, &["secrets"]);
    let records = store
        .write_batch(WriteBatch {
            interactions: vec![first.clone(), second.clone()],
            handoffs: vec![],
            audit: vec![entry("policy.loaded", 1)],
            cases: Vec::new(),
        })
        .await
        .unwrap();

    let seqs: Vec<i64> = records.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    assert_eq!(records[0].prev_hash, GENESIS_HASH);
    assert_eq!(records[1].prev_hash, records[0].hash);
    assert_eq!(records[2].prev_hash, records[1].hash);
    assert_eq!((records[0].actor.as_str(), records[0].action.as_str()), ("gateway", "decision"));
    assert_eq!((records[2].actor.as_str(), records[2].action.as_str()), ("cli", "policy.loaded"));
    assert_eq!(records[2].at, entry("policy.loaded", 1).at);

    let payload: serde_json::Value = serde_json::from_str(&records[0].payload).unwrap();
    assert_eq!(payload["interaction_id"], first.id.to_string());
    assert_eq!(payload["app"], "support");
    assert_eq!(payload["decision"], "escalate");
    assert_eq!(payload["policy"], "support-bot@2025-06-01.2");
    assert_eq!(payload["rules"][0]["rule"], "redact-pii");
    assert_eq!(payload["rules"][1]["rule"], "angry-customer");
    assert_eq!(payload["rules"][1]["phase"], "output");
    assert_eq!(payload["request_sha256"], first.request.sha256);
    assert_eq!(payload["response_sha256"], first.response.sha256);
    assert!(!records[0].payload.contains("a@b.example"), "texts stay out of the audit log");
    let payload: serde_json::Value = serde_json::from_str(&records[1].payload).unwrap();
    assert_eq!(payload["interaction_id"], second.id.to_string());

    // What was returned is what is stored.
    assert_eq!(store.audit_records(1, 3, 10).await.unwrap(), records);
    assert_eq!(store.audit_records(2, 2, 10).await.unwrap(), records[1..2]);
    assert_eq!(store.audit_records(1, 3, 2).await.unwrap(), records[..2]);
    assert_eq!(store.last_audit_record().await.unwrap().as_ref(), records.last());
}

pub async fn audit_seq_has_no_gaps_across_batches(store: Arc<dyn Store>) {
    let mut returned = Vec::new();
    for round in 0..5 {
        let batch = WriteBatch {
            interactions: (0..round).map(|_| interaction("a", T0, Action::Allow, &[])).collect(),
            handoffs: vec![],
            audit: (0..2).map(|n| entry("test.entry", n)).collect(),
            cases: Vec::new(),
        };
        returned.extend(store.write_batch(batch).await.unwrap());
    }
    // An empty batch appends nothing.
    assert!(store.write_batch(WriteBatch::default()).await.unwrap().is_empty());

    let n = (1 + 2 + 3 + 4) + 5 * 2; // interactions of rounds 1..4, two entries per round
    let stored = store.audit_records(i64::MIN, i64::MAX, 1000).await.unwrap();
    assert_eq!(stored, returned);
    assert_eq!(stored.iter().map(|r| r.seq).collect::<Vec<_>>(), (1..=n).collect::<Vec<i64>>());
    assert_eq!(
        store.verify().await.unwrap(),
        VerifyReport::Ok { count: n as u64, last_seq: n, last_hash: stored[stored.len() - 1].hash.clone() }
    );
}

pub async fn failed_batch_writes_nothing(store: Arc<dyn Store>) {
    let existing = interaction("a", T0, Action::Allow, &[]);
    write(&store, vec![existing.clone()]).await;
    let fresh = interaction("a", T0, Action::Allow, &[]);
    let err = store
        .write_batch(WriteBatch {
            interactions: vec![fresh.clone(), existing.clone()],
            handoffs: vec![],
            audit: vec![entry("test.entry", 1)],
            cases: Vec::new(),
        })
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "a duplicate id is the data's fault: {err:?}");
    assert_eq!(store.get_interaction(fresh.id).await.unwrap(), None);
    assert_eq!(store.last_audit_record().await.unwrap().map(|r| r.seq), Some(1));
    assert!(store.verify().await.unwrap().is_ok());
}

pub async fn handoffs_are_listed_newest_first(store: Arc<dyn Store>) {
    let a = interaction("shop", T0, Action::Escalate, &["angry"]);
    let b = interaction("support", T0, Action::Escalate, &["angry"]);
    let c = interaction("support", T0, Action::Escalate, &["angry"]);
    let handoff = |i: &Interaction, s: i64| HandoffRequest {
        interaction_id: i.id,
        app: i.app.clone(),
        created_at: T0 + time::Duration::seconds(s),
        reason: format!("handoff {s}"),
    };
    let (ha, hb, hc) = (handoff(&a, 1), handoff(&b, 2), handoff(&c, 3));
    store
        .write_batch(WriteBatch {
            interactions: vec![a, b, c],
            handoffs: vec![ha.clone(), hc.clone(), hb.clone()],
            audit: vec![],
            cases: Vec::new(),
        })
        .await
        .unwrap();

    let all = store.list_handoffs(&HandoffFilter::default()).await.unwrap();
    assert_eq!(all, vec![hc.clone(), hb.clone(), ha.clone()]);
    let support = store
        .list_handoffs(&HandoffFilter {
            app: Some("support".to_owned()),
            since: Some(T0 + time::Duration::seconds(3)),
            limit: None,
        })
        .await
        .unwrap();
    assert_eq!(support, vec![hc]);
    let one = store.list_handoffs(&HandoffFilter { limit: Some(1), ..HandoffFilter::default() }).await.unwrap();
    assert_eq!(one.len(), 1);
}

pub async fn empty_store_verifies_at_genesis(store: Arc<dyn Store>) {
    assert_eq!(store.last_audit_record().await.unwrap(), None);
    assert_eq!(
        store.verify().await.unwrap(),
        VerifyReport::Ok { count: 0, last_seq: 0, last_hash: GENESIS_HASH.to_owned() }
    );
}

pub async fn export_writes_one_record_per_line(store: Arc<dyn Store>) {
    write(&store, vec![interaction("a", T0, Action::Allow, &[])]).await;
    chain_of(&store, 3).await;
    let mut out: Vec<u8> = Vec::new();
    let n = export_jsonl(store.as_ref(), &mut out).await.unwrap();
    assert_eq!(n, 4);
    let text = String::from_utf8(out).unwrap();
    let parsed: Vec<keel_core::AuditRecord> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(parsed.len(), 4);
    assert!(text.ends_with('\n'));
    assert_eq!(parsed, store.audit_records(1, 4, 10).await.unwrap());
}

// ---------------------------------------------------------------------------------------------
// Writer

pub async fn writer_stores_2000_interactions_sent_concurrently(store: Arc<dyn Store>) {
    let (handle, join) = Writer::spawn(Arc::clone(&store), WriterConfig::default());
    let mut senders = Vec::new();
    let mut sent = Vec::new();
    for task in 0..8 {
        let batch: Vec<Interaction> =
            (0..250).map(|_| interaction(&format!("app{task}"), T0, Action::Allow, &[])).collect();
        sent.extend(batch.iter().map(|i| i.id));
        let handle = handle.clone();
        senders.push(tokio::spawn(async move {
            for (n, i) in batch.into_iter().enumerate() {
                let handoff = (n % 50 == 0).then(|| HandoffRequest {
                    interaction_id: i.id,
                    app: i.app.clone(),
                    created_at: T0,
                    reason: "test".to_owned(),
                });
                handle.record_interaction(i, handoff).await.unwrap();
            }
        }));
    }
    drop(handle);
    for s in senders {
        s.await.unwrap();
    }
    let summary = tokio::time::timeout(Duration::from_secs(60), join).await.unwrap().unwrap();
    assert_eq!(summary.written, 2000);
    assert_eq!(summary.rejected, 0);

    let mut stored = all_ids(&store).await;
    stored.sort();
    sent.sort();
    assert_eq!(stored, sent);
    assert_eq!(
        store.list_handoffs(&HandoffFilter { limit: Some(500), ..HandoffFilter::default() }).await.unwrap().len(),
        8 * 5
    );
    match store.verify().await.unwrap() {
        VerifyReport::Ok { count, .. } => assert_eq!(count, 2000),
        broken => panic!("{broken:?}"),
    }
}

pub async fn writer_flush_waits_for_everything_sent_before_it(store: Arc<dyn Store>) {
    // A delay far longer than the test: only flush can cause the write.
    let config = WriterConfig {
        max_batch: 10_000,
        max_delay: Duration::from_secs(3600),
        capacity: 64,
        ..WriterConfig::default()
    };
    let (handle, join) = Writer::spawn(Arc::clone(&store), config);
    let sent: Vec<Interaction> = (0..10).map(|_| interaction("a", T0, Action::Allow, &[])).collect();
    for i in &sent {
        handle.record_interaction(i.clone(), None).await.unwrap();
    }
    handle.record_audit(entry("test.entry", 1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(store.last_audit_record().await.unwrap().is_none(), "nothing is written before the delay or a flush");
    assert_eq!(handle.queue_depth(), 11);

    handle.flush().await.unwrap();
    assert_eq!(handle.queue_depth(), 0);
    assert_eq!(handle.written(), 11);
    for i in &sent {
        assert!(store.get_interaction(i.id).await.unwrap().is_some());
    }
    assert_eq!(store.last_audit_record().await.unwrap().map(|r| r.seq), Some(11));
    // A flush with nothing pending returns at once.
    tokio::time::timeout(Duration::from_secs(5), handle.flush()).await.unwrap().unwrap();
    drop(handle);
    join.await.unwrap();
}

pub async fn writer_close_writes_what_was_accepted_and_refuses_more(store: Arc<dyn Store>) {
    let config = WriterConfig { max_delay: Duration::from_secs(3600), ..WriterConfig::default() };
    let (handle, join) = Writer::spawn(Arc::clone(&store), config);
    let kept = handle.clone(); // a handle still alive: close() must end the task anyway
    let accepted = interaction("a", T0, Action::Allow, &[]);
    handle.record_interaction(accepted.clone(), None).await.unwrap();
    handle.close().await;
    let refused = kept.record_interaction(interaction("a", T0, Action::Allow, &[]), None).await;
    assert!(matches!(refused, Err(StoreError::WriterClosed)), "{refused:?}");
    let summary = tokio::time::timeout(Duration::from_secs(10), join).await.unwrap().unwrap();
    assert_eq!(summary.written, 1);
    assert!(store.get_interaction(accepted.id).await.unwrap().is_some());
    assert!(matches!(kept.flush().await, Err(StoreError::WriterClosed)));
}

pub async fn writer_keeps_audit_order(store: Arc<dyn Store>) {
    let (handle, join) = Writer::spawn(Arc::clone(&store), WriterConfig::default());
    let first = interaction("a", T0, Action::Allow, &[]);
    let second = interaction("a", T0, Action::Block, &["x"]);
    handle.record_interaction(first.clone(), None).await.unwrap();
    handle.record_audit(entry("policy.loaded", 1)).await.unwrap();
    handle.record_interaction(second.clone(), None).await.unwrap();
    handle.record_audit(entry("config.loaded", 2)).await.unwrap();
    drop(handle);
    join.await.unwrap();

    let records = store.audit_records(1, 10, 10).await.unwrap();
    let actions: Vec<&str> = records.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(actions, vec!["decision", "policy.loaded", "decision", "config.loaded"]);
    assert!(records[0].payload.contains(&first.id.to_string()));
    assert!(records[2].payload.contains(&second.id.to_string()));
}

// ---------------------------------------------------------------------------------------------
// Reopening and tampering

pub async fn audit_chain_continues_after_reopening(h: &dyn Harness) {
    let store = h.open().await;
    write(&store, vec![interaction("a", T0, Action::Allow, &[])]).await;
    chain_of(&store, 2).await;
    drop(store);

    let store = h.open().await;
    let records = store
        .write_batch(WriteBatch {
            interactions: vec![interaction("a", T0, Action::Flag, &["x"])],
            handoffs: vec![],
            audit: vec![entry("test.entry", 9)],
            cases: Vec::new(),
        })
        .await
        .unwrap();
    assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![4, 5]);
    drop(store);

    let store = h.open().await;
    let all = store.audit_records(i64::MIN, i64::MAX, 100).await.unwrap();
    assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
    assert_eq!(all[3].prev_hash, all[2].hash);
    assert!(store.verify().await.unwrap().is_ok());
}

pub async fn migrations_are_idempotent_on_reopen(h: &dyn Harness) {
    let store = h.open().await;
    let first = interaction("a", T0, Action::Allow, &["x"]);
    write(&store, vec![first.clone()]).await;
    drop(store);
    let applied = h.scalar("SELECT COUNT(*) FROM _sqlx_migrations").await;
    assert!(applied >= 1);

    for _ in 0..3 {
        let store = h.open().await;
        assert_eq!(store.get_interaction(first.id).await.unwrap(), Some(first.clone()));
        drop(store);
    }
    assert_eq!(h.scalar("SELECT COUNT(*) FROM _sqlx_migrations").await, applied);
    assert_eq!(h.scalar("SELECT COUNT(*) FROM interactions").await, 1);
}

pub async fn audit_log_refuses_updates_and_deletes(h: &dyn Harness) {
    let store = h.open().await;
    chain_of(&store, 3).await;
    let update = h.execute("UPDATE audit_log SET payload = '{}' WHERE seq = 2").await;
    assert!(update.is_err(), "the audit log must be append-only");
    let delete = h.execute("DELETE FROM audit_log WHERE seq = 2").await;
    assert!(delete.is_err(), "the audit log must be append-only");
    assert!(store.verify().await.unwrap().is_ok());
}

pub async fn tampered_payload_breaks_at_that_seq(h: &dyn Harness) {
    let store = h.open().await;
    write(&store, vec![interaction("a", T0, Action::Block, &["x"])]).await;
    chain_of(&store, 4).await;
    assert!(store.verify().await.unwrap().is_ok());

    h.tamper("UPDATE audit_log SET payload = '{\"n\":99}' WHERE seq = 3").await;
    let report = store.verify().await.unwrap();
    assert_eq!(broken_at(&report), Some(3), "{report:?}");
}

pub async fn deleted_record_breaks_at_the_missing_seq(h: &dyn Harness) {
    let store = h.open().await;
    chain_of(&store, 5).await;
    h.tamper("DELETE FROM audit_log WHERE seq = 3").await;
    let report = store.verify().await.unwrap();
    // The report names the missing record, not the one after the gap.
    assert_eq!(broken_at(&report), Some(3), "{report:?}");
    let VerifyReport::Broken { reason, .. } = report else { unreachable!() };
    assert!(reason.contains("missing"), "{reason}");
}

pub async fn swapped_records_break_at_the_first_of_them(h: &dyn Harness) {
    let store = h.open().await;
    chain_of(&store, 6).await;
    // Swap the contents of records 2 and 4, each keeping its position.
    h.tamper(
        "UPDATE audit_log SET seq = -seq WHERE seq IN (2, 4); \
         UPDATE audit_log SET seq = 4 WHERE seq = -2; \
         UPDATE audit_log SET seq = 2 WHERE seq = -4;",
    )
    .await;
    let report = store.verify().await.unwrap();
    assert_eq!(broken_at(&report), Some(2), "{report:?}");
}

pub async fn unreadable_record_breaks_at_that_seq(h: &dyn Harness) {
    let store = h.open().await;
    chain_of(&store, 5).await;
    h.tamper("UPDATE audit_log SET at = 'yesterday' WHERE seq = 4").await;
    let report = store.verify().await.unwrap();
    assert_eq!(broken_at(&report), Some(4), "{report:?}");

    // An earlier break still wins over an unreadable record.
    h.tamper("UPDATE audit_log SET actor = 'mallory' WHERE seq = 2").await;
    let report = store.verify().await.unwrap();
    assert_eq!(broken_at(&report), Some(2), "{report:?}");
}

pub async fn verify_reads_long_chains_in_pages(h: &dyn Harness) {
    let store = h.open().await;
    let n = keel_store::audit::AUDIT_PAGE as usize * 2 + 345;
    chain_of(&store, n).await;
    match store.verify().await.unwrap() {
        VerifyReport::Ok { count, last_seq, .. } => {
            assert_eq!(count, n as u64);
            assert_eq!(last_seq, n as i64);
        }
        broken => panic!("{broken:?}"),
    }
    let target = keel_store::audit::AUDIT_PAGE as i64 * 2 + 100;
    h.tamper(&format!("UPDATE audit_log SET action = 'policy.deleted' WHERE seq = {target}")).await;
    assert_eq!(broken_at(&store.verify().await.unwrap()), Some(target));
    // A gap exactly at a page boundary is found too.
    let boundary = keel_store::audit::AUDIT_PAGE as i64;
    h.tamper(&format!("DELETE FROM audit_log WHERE seq = {boundary}")).await;
    assert_eq!(broken_at(&store.verify().await.unwrap()), Some(boundary));
}

// ---------------------------------------------------------------------------------------------
// Batches that need several statements

/// Big enough that each table needs more than one INSERT on SQLite, whose statements bind at
/// most 32,766 values: 1,424 interactions (23 columns), 5,461 check results (6), 8,191
/// handoff requests (4) or 4,095 audit records (8) per statement.
pub async fn a_batch_too_big_for_one_statement_is_written_whole_and_in_order(h: &dyn Harness) {
    let store = h.open().await;
    let interactions: Vec<Interaction> =
        (0..1_500).map(|_| interaction("bulk", T0, Action::Flag, &["a", "b", "c", "d", "e", "f"])).collect();
    assert_eq!(interactions[0].checks.len(), 7);
    let handoffs: Vec<HandoffRequest> = (0..8_200)
        .map(|n| HandoffRequest {
            interaction_id: interactions[n % interactions.len()].id,
            app: "bulk".to_owned(),
            created_at: T0 + time::Duration::milliseconds(n as i64),
            reason: format!("handoff {n}"),
        })
        .collect();
    let entries: Vec<AuditEntry> = (0..4_100).map(|n| entry("test.entry", n)).collect();

    let records = store
        .write_batch(WriteBatch {
            interactions: interactions.clone(),
            handoffs: handoffs.clone(),
            audit: entries.clone(),
            cases: Vec::new(),
        })
        .await
        .unwrap();

    // The decision records in interaction order, then the entries in order, in one chain.
    let n = interactions.len() + entries.len();
    assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), (1..=n as i64).collect::<Vec<_>>());
    for (record, i) in records.iter().zip(&interactions) {
        let payload: serde_json::Value = serde_json::from_str(&record.payload).unwrap();
        assert_eq!(
            (record.action.as_str(), payload["interaction_id"].as_str()),
            ("decision", Some(&*i.id.to_string()))
        );
    }
    for (record, e) in records[interactions.len()..].iter().zip(&entries) {
        assert_eq!((record.action.as_str(), record.at), (e.action.as_str(), e.at));
    }
    assert_eq!(store.audit_records(1, n as i64, 10_000).await.unwrap(), records);
    assert!(matches!(store.verify().await.unwrap(), VerifyReport::Ok { count, .. } if count == n as u64));

    assert_eq!(h.scalar("SELECT COUNT(*) FROM interactions").await, 1_500);
    assert_eq!(h.scalar("SELECT COUNT(*) FROM check_hits").await, 1_500 * 7);
    assert_eq!(h.scalar("SELECT COUNT(*) FROM handoffs").await, 8_200);
    for i in [&interactions[0], &interactions[1_423], &interactions[1_424], &interactions[1_499]] {
        assert_eq!(store.get_interaction(i.id).await.unwrap().as_ref(), Some(i));
        let ords = h.scalar(&format!("SELECT SUM(ord) FROM check_hits WHERE interaction_id = '{}'", i.id)).await;
        assert_eq!(ords, (0..7).sum::<i64>());
    }
    let newest = store.list_handoffs(&HandoffFilter { limit: Some(1), ..HandoffFilter::default() }).await.unwrap();
    assert_eq!(newest, vec![handoffs[8_199].clone()]);
    let with_check =
        InteractionFilter { check: Some("f".to_owned()), limit: Some(500), ..InteractionFilter::default() };
    assert_eq!(store.list_interactions(&with_check).await.unwrap().len(), 500);
}

// ---------------------------------------------------------------------------------------------
// Reading new rows by insertion order (the drift monitor's cursor)

pub async fn interactions_after_pages_in_insertion_order(store: Arc<dyn Store>) {
    // Stored out of time order, as an ingest of old logs after live traffic would be.
    let late = interaction("a", T0 + Duration::from_secs(3600), Action::Allow, &[]);
    let early = interaction("b", T0, Action::Block, &["pii"]);
    let middle = interaction("c", T0 + Duration::from_secs(60), Action::Flag, &[]);
    write(&store, vec![late.clone()]).await;
    write(&store, vec![early.clone(), middle.clone()]).await;

    let all = store.interactions_after(0, 100).await.unwrap();
    let got: Vec<&str> = all.iter().map(|(_, i)| i.app.as_str()).collect();
    assert_eq!(got, ["a", "b", "c"], "insertion order, not created_at");
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "sequence numbers increase");
    assert_eq!(all[1].1, early, "whole interactions come back");

    let first = store.interactions_after(0, 2).await.unwrap();
    assert_eq!(first.len(), 2);
    let rest = store.interactions_after(first[1].0, 2).await.unwrap();
    assert_eq!(rest.iter().map(|(_, i)| i.id).collect::<Vec<_>>(), vec![middle.id]);
    assert!(store.interactions_after(rest[0].0, 10).await.unwrap().is_empty());
}
