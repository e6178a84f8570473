//! The drift monitor against a real SQLite file: alerts after a seeded change and none before,
//! exact continuation after a restart, config changes, the lease, alert transitions made
//! elsewhere, and webhook delivery to a local HTTP receiver.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use keel_core::{
    Action, CheckResult, Interaction, InteractionId, Outcome, Phase, PolicyRef, StoredText, Timings, Tokens,
};
use keel_drift::config::{DetectorSpec, MonitorConfig, WebhookConfig, WebhookFormat};
use keel_drift::{Deliverer, DriftMetrics, FeedbackEvent, FeedbackFeed, Monitor, Stream};
use keel_monitor::drift::{ChiSquareConfig, CusumConfig};
use keel_monitor::{AlertAction, AlertState, DetectorConfig, SeededRng};
use keel_store::{AlertFilter, DeliveryStatus, DriftAlert, SqliteStore, Store, WriteBatch};
use serde_json::Value;
use time::OffsetDateTime;

const CHANGE_AT: usize = 6_000;
const TOTAL: usize = 9_000;

/// The action mix moves (more blocks and flags) and the `pii` check's hit rate doubles from
/// row `CHANGE_AT` on. Seeded: the same seed always gives the same stream.
fn traffic(seed: u64, from: usize, to: usize) -> Vec<Interaction> {
    let mut rng = SeededRng::new(seed);
    // Skip to `from` so that any cut of the stream gives the same rows.
    for _ in 0..from * 2 {
        rng.next_f64();
    }
    let t0 = OffsetDateTime::from_unix_timestamp(1_750_000_000).unwrap();
    (from..to)
        .map(|n| {
            let changed = n >= CHANGE_AT;
            let (a, b) = (rng.next_f64(), rng.next_f64());
            let decision = match (changed, a) {
                (false, a) if a < 0.85 => Action::Allow,
                (false, a) if a < 0.95 => Action::Flag,
                (false, _) => Action::Block,
                (true, a) if a < 0.70 => Action::Allow,
                (true, a) if a < 0.85 => Action::Flag,
                (true, _) => Action::Block,
            };
            let pii = b < if changed { 0.10 } else { 0.05 };
            interaction(t0 + Duration::from_secs(n as u64 * 60), decision, pii)
        })
        .collect()
}

fn interaction(created_at: OffsetDateTime, decision: Action, pii: bool) -> Interaction {
    let policy = PolicyRef { name: "p".into(), version: "1".into() };
    Interaction {
        id: InteractionId::new(),
        created_at,
        app: "support".into(),
        model: "m".into(),
        stream: false,
        request: StoredText {
            text: Some(r#"{"messages":[{"role":"user","content":"hi"}]}"#.into()),
            sha256: String::new(),
        },
        response: StoredText { text: Some("hello".into()), sha256: String::new() },
        outcome: Outcome::Completed,
        http_status: 200,
        error: None,
        timings: Timings { upstream_ms: 100.0, overhead_us: 10, total_ms: 101.0 },
        tokens: Tokens::default(),
        policy,
        decision,
        decisions: vec![],
        checks: vec![CheckResult {
            check: "pii".into(),
            kind: "pii".into(),
            phase: Phase::Input,
            score: if pii { 1.0 } else { 0.0 },
            hit: pii,
            findings: vec![],
            error: None,
            detail: None,
            elapsed_us: 1,
            mode: Default::default(),
        }],
        shadow: Vec::new(),
    }
}

async fn store_in(dir: &tempfile::TempDir) -> Arc<dyn Store> {
    Arc::new(SqliteStore::open(&format!("sqlite://{}", dir.path().join("keel.db").display())).await.unwrap())
}

async fn write(store: &Arc<dyn Store>, rows: Vec<Interaction>) {
    for chunk in rows.chunks(1_000) {
        store.write_batch(WriteBatch { interactions: chunk.to_vec(), ..WriteBatch::default() }).await.unwrap();
    }
}

fn detectors() -> Vec<DetectorSpec> {
    vec![
        DetectorSpec::new("action-mix", Stream::Action, DetectorConfig::ChiSquare(ChiSquareConfig::default())),
        DetectorSpec::new("pii-rate", "check.pii.hit".parse().unwrap(), DetectorConfig::Cusum(CusumConfig::default())),
    ]
}

fn config(batch_size: u32) -> MonitorConfig {
    MonitorConfig {
        batch_size,
        checkpoint_interval: Duration::ZERO,
        detectors: detectors(),
        ..MonitorConfig::default()
    }
}

fn monitor(store: &Arc<dyn Store>, config: MonitorConfig) -> Monitor {
    Monitor::new(config, store.clone(), None, None, DriftMetrics::default()).unwrap()
}

/// Steps until every row is read.
async fn drain(m: &mut Monitor) -> Vec<DriftAlert> {
    assert!(m.ensure_lease().await.unwrap());
    let mut opened = Vec::new();
    loop {
        let report = m.step().await.unwrap();
        opened.extend(report.opened);
        if report.rows == 0 {
            return opened;
        }
    }
}

/// What identifies an alert's content (not its id or wall-clock time).
type Essence = (String, u64, i64, i64, String, Vec<InteractionId>);

fn essence(a: &DriftAlert) -> Essence {
    let o = &a.opened;
    (
        o.detector.clone(),
        o.statistic.to_bits(),
        o.window.first_seq,
        o.window.last_seq,
        o.detail.clone(),
        o.sample_interaction_ids.clone(),
    )
}

async fn seq_of_row(store: &Arc<dyn Store>, row: usize) -> i64 {
    store.interactions_after(0, (row + 1) as u32).await.unwrap()[row].0
}

#[tokio::test]
async fn alerts_open_after_the_change_and_not_before() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(&dir).await;
    write(&store, traffic(7, 0, TOTAL)).await;
    let change_seq = seq_of_row(&store, CHANGE_AT).await;
    let mut m = monitor(&store, config(1_000));
    let opened = drain(&mut m).await;

    let mut detectors: Vec<&str> = opened.iter().map(|a| a.opened.detector.as_str()).collect();
    detectors.sort_unstable();
    assert_eq!(detectors, ["action-mix", "pii-rate"], "{opened:#?}");
    for a in &opened {
        let o = &a.opened;
        assert!(o.window.last_seq >= change_seq, "{} fired before the change: {o:?}", o.detector);
        assert!(o.window.last_seq < change_seq + 2_000, "{} fired late: {o:?}", o.detector);
        assert!(o.statistic >= o.threshold);
        assert!(o.window.first_seq <= o.window.last_seq && o.window.size > 0);
        assert!(o.window.first_at <= o.window.last_at);
        assert_eq!(o.sample_interaction_ids.len(), 20);
        assert!(o.samples > 0 && o.reference_size > 0);
        let sampled = store.get_interaction(o.sample_interaction_ids[0]).await.unwrap();
        assert!(sampled.is_some(), "sample ids name stored interactions");
    }
    let chi = opened.iter().find(|a| a.opened.detector == "action-mix").unwrap();
    assert!(chi.opened.p_value.is_some_and(|p| p < 1e-3));
    // Every opened alert is in the audit chain, then the review cases of its sample.
    let records = store.audit_records(1, i64::MAX, u32::MAX).await.unwrap();
    let alerts = records.iter().filter(|r| r.action == "drift.alert_opened").count();
    assert_eq!(alerts, opened.len());
    let cases = store
        .list_cases(&keel_store::CaseFilter {
            reason: Some(keel_store::CaseReason::DriftAlert),
            all: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!cases.is_empty() && cases.iter().all(|c| opened.iter().any(|a| Some(a.id) == c.alert_id)));
    assert_eq!(records.last().unwrap().action, "review.case_opened");
    assert!(store.verify().await.unwrap().is_ok());

    // Nothing new: no more alerts, no more rows.
    let report = m.step().await.unwrap();
    assert_eq!((report.rows, report.opened.len()), (0, 0));
}

#[tokio::test]
async fn a_restarted_monitor_continues_exactly_where_it_left_off() {
    // Reference: one monitor reads everything in one go.
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(&dir).await;
    let rows = traffic(11, 0, TOTAL);
    write(&store, rows.clone()).await;
    let uninterrupted: Vec<_> = drain(&mut monitor(&store, config(700))).await.iter().map(essence).collect();
    assert_eq!(uninterrupted.len(), 2);

    // The same rows, with three restarts at awkward places: once after a clean flush, once
    // mid-way through the alerts, and once dropped without a final checkpoint (a crash).
    let dir2 = tempfile::tempdir().unwrap();
    let store2 = store_in(&dir2).await;
    write(&store2, rows).await;
    let mut got = Vec::new();
    let mut m = monitor(&store2, config(700));
    assert!(m.ensure_lease().await.unwrap());
    for _ in 0..4 {
        got.extend(m.step().await.unwrap().opened);
    }
    m.flush().await.unwrap();
    stop(&store2, m).await;
    for _ in 0..2 {
        let mut m = monitor(&store2, MonitorConfig { checkpoint_interval: Duration::from_secs(3600), ..config(700) });
        assert!(m.ensure_lease().await.unwrap());
        // Until an alert opened (and was checkpointed with its state), then one step more
        // that is lost with the process.
        for _ in 0..8 {
            let opened = m.step().await.unwrap().opened;
            let done = !opened.is_empty();
            got.extend(opened);
            if done {
                break;
            }
        }
        m.step().await.unwrap();
        stop(&store2, m).await; // no flush: rows fed since the last checkpoint are replayed
    }
    let mut m = monitor(&store2, config(700));
    got.extend(drain(&mut m).await);
    assert_eq!(got.len(), 2, "each crash run opened one alert before it stopped");
    let got: Vec<_> = got.iter().map(essence).collect();
    let sample_free =
        |v: &Vec<Essence>| v.iter().map(|(d, s, f, l, t, _)| (d.clone(), *s, *f, *l, t.clone())).collect::<Vec<_>>();
    assert_eq!(
        sample_free(&got),
        sample_free(&uninterrupted),
        "the same alerts at the same rows with the same statistics"
    );
    // Interaction ids differ between the two stores (fresh UUIDs), but their positions match.
    assert_eq!(
        got.iter().map(|g| g.5.len()).collect::<Vec<_>>(),
        uninterrupted.iter().map(|u| u.5.len()).collect::<Vec<_>>()
    );
    assert_eq!(store2.list_alerts(&AlertFilter::default()).await.unwrap().len(), 2, "no alert stored twice");
}

/// A process that stops: its lease goes (as when it expires), without a final checkpoint.
async fn stop(store: &Arc<dyn Store>, m: Monitor) {
    store.release_lease(keel_drift::LEASE, m.holder()).await.unwrap();
}

#[tokio::test]
async fn a_changed_detector_restarts_from_the_head_and_an_unchanged_one_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(&dir).await;
    write(&store, traffic(3, 0, 3_000)).await;
    let mut m = monitor(&store, config(1_000));
    drain(&mut m).await;
    m.flush().await.unwrap();
    let before = store.detector_checkpoints().await.unwrap();
    stop(&store, m).await;

    let mut changed = config(1_000);
    changed.detectors[1].detector = DetectorConfig::Cusum(CusumConfig { threshold: 80.0, ..CusumConfig::default() });
    changed.detectors.push(DetectorSpec::new(
        "lang-mix",
        Stream::Lang,
        DetectorConfig::ChiSquare(ChiSquareConfig::default()),
    ));
    changed.detectors.remove(0);
    let mut m = monitor(&store, changed);
    write(&store, traffic(3, 3_000, 3_010)).await;
    drain(&mut m).await;
    m.flush().await.unwrap();
    let after = store.detector_checkpoints().await.unwrap();
    let names: Vec<&str> = after.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["lang-mix", "pii-rate"], "the removed detector's state is gone");
    let pii_before = before.iter().find(|c| c.name == "pii-rate").unwrap();
    let pii_after = after.iter().find(|c| c.name == "pii-rate").unwrap();
    assert_ne!(pii_before.config_hash, pii_after.config_hash);
    // Fresh: it started at the old head and has only seen the 10 new rows.
    let samples = pii_after.state["detector"]["seen"].as_u64().unwrap();
    assert_eq!(samples, 10, "{}", pii_after.state["detector"]);
    let lang = after.iter().find(|c| c.name == "lang-mix").unwrap();
    assert_eq!(lang.cursor, pii_after.cursor);
}

#[tokio::test]
async fn only_one_replica_runs_the_monitor() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(&dir).await;
    let mut a = monitor(&store, config(1_000));
    let mut b = monitor(&store, config(1_000));
    assert!(a.ensure_lease().await.unwrap());
    assert!(!b.ensure_lease().await.unwrap());
    // A's lease runs out (it stopped renewing); B takes over and A's late step is refused.
    let mut short = monitor(&store, MonitorConfig { lease_ttl: Duration::from_millis(50), ..config(1_000) });
    store.release_lease(keel_drift::LEASE, a.holder()).await.unwrap();
    assert!(short.ensure_lease().await.unwrap());
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert!(b.ensure_lease().await.unwrap());
    write(&store, traffic(5, 0, 10)).await;
    let err = short.step().await.unwrap_err().to_string();
    assert!(err.contains("no longer held"), "{err}");
}

#[tokio::test]
async fn acknowledging_and_resolving_elsewhere_reaches_the_tracker() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(&dir).await;
    write(&store, traffic(7, 0, TOTAL)).await;
    let mut cfg = config(1_000);
    cfg.detectors.truncate(1);
    cfg.detectors[0].hysteresis.rearm_samples = 1;
    let mut m = monitor(&store, cfg);
    let opened = drain(&mut m).await;
    assert_eq!(opened.len(), 1);
    let id = opened[0].id;
    store.transition_alert(id, AlertAction::Acknowledge, "ana").await.unwrap();
    m.step().await.unwrap();
    m.flush().await.unwrap();
    let state = &store.detector_checkpoints().await.unwrap()[0].state;
    assert_eq!(state["tracker"]["current"]["state"], "acknowledged");
    assert_eq!(state["tracker"]["current"]["acknowledged_by"], "ana");
    store.transition_alert(id, AlertAction::Resolve, "ana").await.unwrap();
    // A second change after the resolution opens a new alert.
    let t = OffsetDateTime::now_utc();
    let back: Vec<Interaction> =
        (0..4_000).map(|n| interaction(t, if n % 2 == 0 { Action::Block } else { Action::Allow }, false)).collect();
    write(&store, back).await;
    let again = drain(&mut m).await;
    assert_eq!(again.len(), 1, "resolved, re-armed, and a new shift opens a new alert");
    assert_eq!(store.get_alert(id).await.unwrap().unwrap().state, AlertState::Resolved);
}

struct StaticFeedback(Vec<(i64, FeedbackEvent)>);

#[async_trait::async_trait]
impl FeedbackFeed for StaticFeedback {
    async fn feedback_after(&self, after_seq: i64, limit: u32) -> keel_store::Result<Vec<(i64, FeedbackEvent)>> {
        Ok(self.0.iter().filter(|(s, _)| *s > after_seq).take(limit as usize).cloned().collect())
    }
}

#[tokio::test]
async fn feedback_streams_read_the_feedback_feed() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(&dir).await;
    let mut rng = SeededRng::new(1);
    let events: Vec<(i64, FeedbackEvent)> = (1..=8_000)
        .map(|seq| {
            let wrong = rng.next_f64() < if seq > 5_000 { 0.12 } else { 0.05 };
            (
                seq,
                FeedbackEvent {
                    interaction_id: InteractionId::new(),
                    app: "support".into(),
                    created_at: OffsetDateTime::now_utc(),
                    satisfaction: None,
                    wrong_answer: Some(wrong),
                },
            )
        })
        .collect();
    let spec = DetectorSpec::new("wrong", Stream::WrongAnswer, DetectorConfig::Cusum(CusumConfig::default()));
    let cfg = MonitorConfig { detectors: vec![spec.clone()], ..config(1_000) };
    // Without a feedback feed the detector is refused, naming it.
    let err = Monitor::new(cfg.clone(), store.clone(), None, None, DriftMetrics::default()).err().unwrap();
    assert_eq!(err.to_string(), "detector `wrong`: this store keeps no feedback to read");
    let mut m = Monitor::new(cfg, store.clone(), Some(Arc::new(StaticFeedback(events))), None, DriftMetrics::default())
        .unwrap();
    let opened = drain(&mut m).await;
    assert_eq!(opened.len(), 1);
    assert!(opened[0].opened.window.last_seq > 5_000, "{:?}", opened[0].opened.window);
}

// ---- webhooks ----

#[derive(Clone, Default)]
struct Receiver {
    calls: Arc<AtomicUsize>,
    fail_first: usize,
    always_fail: bool,
    bodies: Arc<Mutex<Vec<(HeaderMap, Value)>>>,
}

async fn spawn_receiver(receiver: Receiver) -> SocketAddr {
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, Json(body): Json<Value>| {
            let r = receiver.clone();
            async move {
                let n = r.calls.fetch_add(1, Ordering::SeqCst);
                r.bodies.lock().unwrap().push((headers, body));
                if r.always_fail || n < r.fail_first {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn webhook(name: &str, addr: SocketAddr, format: WebhookFormat, max_attempts: u32) -> WebhookConfig {
    WebhookConfig {
        name: name.into(),
        url: format!("http://{addr}/hook"),
        format,
        secret_header: Some(("x-hook-secret".into(), "s3cret".into())),
        timeout: Duration::from_secs(5),
        max_attempts,
        initial_backoff: Duration::from_millis(10),
    }
}

#[tokio::test]
async fn webhooks_are_retried_after_a_500_and_a_failure_is_recorded_after_max_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(&dir).await;
    write(&store, traffic(7, 0, TOTAL)).await;
    let flaky = Receiver { fail_first: 1, ..Receiver::default() };
    let broken = Receiver { always_fail: true, ..Receiver::default() };
    let flaky_addr = spawn_receiver(flaky.clone()).await;
    let broken_addr = spawn_receiver(broken.clone()).await;
    let hooks = vec![
        webhook("ops", flaky_addr, WebhookFormat::Json, 5),
        webhook("slack", broken_addr, WebhookFormat::Slack, 3),
    ];
    let mut cfg = config(1_000);
    cfg.detectors.truncate(1);
    cfg.webhooks = hooks.clone();
    let opened = drain(&mut monitor(&store, cfg)).await;
    assert_eq!(opened.len(), 1);
    let id = opened[0].id;

    // Deliveries survive a restart: a new deliverer (a new process) picks them up.
    let deliverer = Deliverer::new(store.clone(), hooks, DriftMetrics::default()).unwrap();
    for _ in 0..50 {
        deliverer.deliver_due().await.unwrap();
        let log = store.alert_deliveries(id).await.unwrap();
        if log.iter().filter(|d| d.status != DeliveryStatus::Retry).count() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = store.alert_deliveries(id).await.unwrap();
    let summary: Vec<(&str, u32, DeliveryStatus, Option<u16>)> =
        log.iter().map(|d| (d.sink.as_str(), d.attempt, d.status, d.http_status)).collect();
    let ops: Vec<_> = summary.iter().filter(|s| s.0 == "ops").collect();
    let slack: Vec<_> = summary.iter().filter(|s| s.0 == "slack").collect();
    assert_eq!(ops, [&("ops", 1, DeliveryStatus::Retry, Some(500)), &("ops", 2, DeliveryStatus::Delivered, Some(204))]);
    assert_eq!(
        slack,
        [
            &("slack", 1, DeliveryStatus::Retry, Some(500)),
            &("slack", 2, DeliveryStatus::Retry, Some(500)),
            &("slack", 3, DeliveryStatus::Failed, Some(500)),
        ]
    );
    assert!(log
        .iter()
        .filter(|d| d.status != DeliveryStatus::Delivered)
        .all(|d| d.error.as_deref() == Some("the webhook answered HTTP 500 Internal Server Error")));
    assert_eq!(deliverer.deliver_due().await.unwrap(), 0, "nothing left to deliver");

    let bodies = flaky.bodies.lock().unwrap().clone();
    let (headers, body) = &bodies[1];
    assert_eq!(headers["x-hook-secret"], "s3cret");
    assert_eq!(headers["x-keel-alert-id"], id.to_string());
    assert_eq!(body["event"], "drift_alert.opened");
    assert_eq!(body["alert"]["id"], id);
    assert_eq!(body["alert"]["detector"], "action-mix");
    assert_eq!(body["alert"]["state"], "open");
    assert!(body["alert"]["statistic"].as_f64().unwrap() >= body["alert"]["threshold"].as_f64().unwrap());
    assert!(body["alert"]["window"]["first_seq"].as_i64().is_some());
    assert_eq!(body["alert"]["sample_interaction_ids"].as_array().unwrap().len(), 20);
    let slack_body = &broken.bodies.lock().unwrap()[0].1;
    assert!(slack_body["text"].as_str().unwrap().starts_with(&format!("Keel drift alert #{id}: detector action-mix")));
    assert_eq!(slack_body["blocks"][0]["text"]["type"], "mrkdwn");
}

#[tokio::test]
async fn the_run_loop_delivers_while_leading_and_stops_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(&dir).await;
    let receiver = Receiver::default();
    let addr = spawn_receiver(receiver.clone()).await;
    let mut cfg = config(1_000);
    cfg.detectors.truncate(1);
    cfg.poll_interval = Duration::from_millis(20);
    cfg.webhooks = vec![webhook("ops", addr, WebhookFormat::Json, 3)];
    let m = monitor(&store, cfg.clone());
    let deliverer = Deliverer::new(store.clone(), cfg.webhooks.clone(), DriftMetrics::default()).unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let leader = Arc::new(AtomicBool::new(false));
    let monitor_task = tokio::spawn(m.run(stopped.clone(), leader.clone()));
    let deliver_task = tokio::spawn(deliverer.run(stopped, leader, Duration::from_millis(20)));
    write(&store, traffic(7, 0, TOTAL)).await;
    for _ in 0..500 {
        if receiver.calls.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(receiver.calls.load(Ordering::SeqCst), 1, "the alert reached the webhook");
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), monitor_task).await.unwrap().unwrap();
    tokio::time::timeout(Duration::from_secs(5), deliver_task).await.unwrap().unwrap();
    // The lease was released: another process can take over at once.
    assert!(store.acquire_lease(keel_drift::LEASE, "next", Duration::from_secs(5)).await.unwrap());
}
