//! End to end through the real `keel` binary: a seeded 30-day log with a shift on day 15,
//! stored with its historical timestamps through the store's batched writer (as ingest will
//! store it), is read by `keel serve`'s drift monitor; an alert opens after the shift and none
//! before; the alert is delivered to a local webhook and handled with `keel alerts`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_core::{
    Action, CheckResult, Interaction, InteractionId, Outcome, Phase, PolicyRef, StoredText, Timings, Tokens,
};
use keel_monitor::SeededRng;
use keel_scripted_upstream::{Options, Script};
use keel_store::{Writer, WriterConfig};
use serde_json::Value;
use time::OffsetDateTime;

const KEEL: &str = env!("CARGO_BIN_EXE_keel");
const DAYS: u64 = 30;
const SHIFT_DAY: u64 = 15;
const PER_DAY: u64 = 400;

/// Day 0 of the log: 2025-03-01 00:00 UTC.
fn day_start(day: u64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_740_787_200 + (day * 86_400) as i64).unwrap()
}

/// A support app's traffic: from day 15 the model refuses more and injection attempts double
/// (more blocks and flags in the action mix).
fn log(seed: u64) -> Vec<Interaction> {
    let mut rng = SeededRng::new(seed);
    let policy = PolicyRef { name: "default".into(), version: "1.0.0".into() };
    let mut out = Vec::new();
    for day in 0..DAYS {
        let shifted = day >= SHIFT_DAY;
        for n in 0..PER_DAY {
            let created_at = day_start(day) + Duration::from_secs(n * 86_400 / PER_DAY);
            let a = rng.next_f64();
            let decision = if shifted {
                match a {
                    a if a < 0.74 => Action::Allow,
                    a if a < 0.86 => Action::Flag,
                    a if a < 0.92 => Action::Redact,
                    _ => Action::Block,
                }
            } else {
                match a {
                    a if a < 0.85 => Action::Allow,
                    a if a < 0.93 => Action::Flag,
                    a if a < 0.975 => Action::Redact,
                    _ => Action::Block,
                }
            };
            let injection = decision == Action::Block;
            out.push(Interaction {
                id: InteractionId::new(),
                created_at,
                app: "support".into(),
                model: "m".into(),
                stream: false,
                request: StoredText {
                    text: Some(r#"{"messages":[{"role":"user","content":"Where is my order?"}]}"#.into()),
                    sha256: String::new(),
                },
                response: StoredText { text: Some("It ships tomorrow.".into()), sha256: String::new() },
                outcome: Outcome::Completed,
                http_status: 200,
                error: None,
                timings: Timings { upstream_ms: 200.0, overhead_us: 50, total_ms: 201.0 },
                tokens: Tokens { prompt: Some(20), completion: Some(8) },
                policy: policy.clone(),
                decision,
                decisions: vec![],
                checks: vec![CheckResult {
                    check: "injection".into(),
                    kind: "injection".into(),
                    phase: Phase::Input,
                    score: if injection { 0.9 } else { 0.0 },
                    hit: injection,
                    findings: vec![],
                    error: None,
                    detail: None,
                    elapsed_us: 3,
                    mode: Default::default(),
                }],
                shadow: Vec::new(),
            });
        }
    }
    out
}

/// Stores the log through the batched writer, keeping its historical timestamps.
async fn store_log(url: &str, rows: Vec<Interaction>) {
    let store = keel_store::resolve(url).await.unwrap();
    let (writer, task) = Writer::spawn(store, WriterConfig::default());
    for i in rows {
        writer.record_interaction(i, None).await.unwrap();
    }
    drop(writer);
    assert_eq!(task.await.unwrap().written, DAYS * PER_DAY);
}

fn serve(home: &Path, config: &Path) -> (Child, String) {
    let mut child = Command::new(KEEL)
        .args(["serve", "--config", config.to_str().unwrap()])
        .env("KEEL_HOME", home)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let base = line.trim().strip_prefix("Keel listening on ").unwrap().trim_end_matches("/v1").to_string();
    (child, base)
}

fn stop(mut child: Child) {
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(started.elapsed() < Duration::from_secs(20), "keel did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn webhook_receiver() -> (SocketAddr, Arc<Mutex<Vec<Value>>>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(body);
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shift_on_day_15_of_a_30_day_log_opens_an_alert_after_it_and_none_before() {
    let upstream =
        keel_scripted_upstream::spawn(SocketAddr::from(([127, 0, 0, 1], 0)), Script::echo(), Options::default())
            .await
            .unwrap();
    let home = tempfile::tempdir().unwrap();
    let db = home.path().join("keel.db");
    let url = format!("sqlite://{}", db.display());
    store_log(&url, log(15)).await;
    let (hook, received) = webhook_receiver().await;

    let config = home.path().join("keel.toml");
    std::fs::write(
        &config,
        format!(
            r#"listen = "127.0.0.1:0"
store = "{url}"

[[upstreams]]
name = "scripted"
base_url = "{}"
models = ["scripted-1"]

[monitor]
poll_interval_ms = 100

[[monitor.detectors]]
name = "action-mix"
stream = "action"
method = "chi_square"

[[monitor.detectors]]
name = "injection-rate"
stream = "check.injection.hit"
method = "cusum"

[[monitor.detectors]]
name = "latency"
stream = "upstream_ms"
method = "ks"

[[monitor.webhooks]]
name = "ops"
url = "http://{hook}/hook"
"#,
            upstream.base_url()
        ),
    )
    .unwrap();
    let (child, base) = serve(home.path(), &config);
    let client = reqwest::Client::new();
    let started = Instant::now();
    let alerts = loop {
        let list: Value = client.get(format!("{base}/api/alerts")).send().await.unwrap().json().await.unwrap();
        let alerts = list["data"].as_array().unwrap().clone();
        let delivered = received.lock().unwrap().len();
        if alerts.len() >= 2 && delivered >= alerts.len() {
            break alerts;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no alerts after 60 s: {list}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Everything has been read: the monitor has caught up with the log.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let list: Value = client.get(format!("{base}/api/alerts")).send().await.unwrap().json().await.unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), alerts.len(), "no further alerts: {list}");

    let shift = day_start(SHIFT_DAY);
    let mut detectors: Vec<&str> = alerts.iter().map(|a| a["detector"].as_str().unwrap()).collect();
    detectors.sort_unstable();
    assert_eq!(detectors, ["action-mix", "injection-rate"], "the latency did not change: {alerts:#?}");
    for a in &alerts {
        let at = |f: &str| {
            OffsetDateTime::parse(a["window"][f].as_str().unwrap(), &time::format_description::well_known::Rfc3339)
                .unwrap()
        };
        assert!(at("last_at") >= shift, "alert fired before the shift: {a}");
        assert!(at("last_at") < shift + Duration::from_secs(5 * 86_400), "alert fired days late: {a}");
        assert!(a["statistic"].as_f64().unwrap() >= a["threshold"].as_f64().unwrap());
        assert_eq!(a["state"], "open");
    }
    let bodies = received.lock().unwrap().clone();
    assert!(bodies.iter().all(|b| b["event"] == "drift_alert.opened"));

    // The operator's side, through the CLI on the same store while the server runs.
    let id = alerts[0]["id"].as_i64().unwrap().to_string();
    let run = |args: &[&str]| {
        let out = Command::new(KEEL).args(args).env("KEEL_HOME", home.path()).env("RUST_LOG", "warn").output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, table, err) = run(&["alerts", "list", "--store", &url]);
    assert!(ok, "{err}");
    assert!(table.contains("action-mix") && table.contains("injection-rate") && table.contains("open"), "{table}");
    let (ok, shown, _) = run(&["alerts", "show", &id, "--store", &url]);
    assert!(ok && shown.contains("statistic") && shown.contains("delivery   ops attempt 1: delivered"), "{shown}");
    let (ok, out, _) = run(&["alerts", "ack", &id, "--store", &url, "--actor", "ana"]);
    assert!(ok && out.contains("is now acknowledged"), "{out}");
    let (ok, _, err) = run(&["alerts", "ack", &id, "--store", &url]);
    assert!(!ok && err.contains("cannot acknowledge alert") && err.contains("it is acknowledged"), "{err}");
    let (ok, json, _) = run(&["alerts", "resolve", &id, "--store", &url, "--json"]);
    assert!(ok);
    assert_eq!(serde_json::from_str::<Value>(&json).unwrap()["state"], "resolved");
    let one: Value = client.get(format!("{base}/api/alerts/{id}")).send().await.unwrap().json().await.unwrap();
    assert_eq!(one["alert"]["resolved_by"], "cli");
    assert_eq!(one["alert"]["acknowledged_by"], "ana");

    stop(child);
    let (ok, out, _) = run(&["audit", "verify", "--store", &url]);
    assert!(ok, "{out}");
}
