//! The demo's drift step: a local webhook receiver, a replay of two days of logged support
//! traffic whose action mix shifts halfway (more blocks and flags), the drift alert the
//! running monitor opens, and its delivery to the receiver.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use keel_core::{
    Action, CheckResult, Interaction, InteractionId, Outcome, Phase, PolicyRef, StoredText, Timings, Tokens,
};
use keel_drift::{WebhookConfig, WebhookFormat};
use keel_monitor::SeededRng;
use serde_json::Value;
use time::OffsetDateTime;

use crate::config::Config;
use crate::serve::RunningGateway;

/// Logged interactions replayed; the mix shifts after the first `REPLAY_SHIFT`.
const REPLAY: u64 = 4_000;
const REPLAY_SHIFT: u64 = 2_500;

/// The receiver the demo delivers alerts to, and what it received.
pub struct DriftDemo {
    url: String,
    received: Arc<Mutex<Vec<Value>>>,
}

/// Starts the webhook receiver and points the monitor at it (call before the server starts).
pub async fn prepare(config: &mut Config) -> anyhow::Result<DriftDemo> {
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let sink = sink.clone();
            async move {
                if let Ok(mut bodies) = sink.lock() {
                    bodies.push(body);
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("cannot start the demo webhook")?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    config.monitor.poll_interval = Duration::from_millis(200);
    config.monitor.webhooks.push(WebhookConfig {
        name: "demo-receiver".into(),
        url: url.clone(),
        format: WebhookFormat::Json,
        secret_header: None,
        timeout: Duration::from_secs(5),
        max_attempts: 3,
        initial_backoff: Duration::from_millis(200),
    });
    Ok(DriftDemo { url, received })
}

/// One replayed interaction of the fictional support app.
fn logged(at: OffsetDateTime, decision: Action) -> Interaction {
    let injection = decision == Action::Block;
    Interaction {
        id: InteractionId::new(),
        created_at: at,
        app: "support-replay".into(),
        model: "logged-model".into(),
        stream: false,
        request: StoredText {
            text: Some(r#"{"messages":[{"role":"user","content":"Where is my order?"}]}"#.into()),
            sha256: String::new(),
        },
        response: StoredText { text: Some("It ships tomorrow.".into()), sha256: String::new() },
        outcome: Outcome::Completed,
        http_status: 200,
        error: None,
        timings: Timings { upstream_ms: 180.0, overhead_us: 40, total_ms: 181.0 },
        tokens: Tokens { prompt: Some(20), completion: Some(8) },
        policy: PolicyRef { name: "default".into(), version: "1.0.0".into() },
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
    }
}

impl DriftDemo {
    /// Replays the shifted log, waits for the alert and its delivery, and prints both.
    pub async fn run(self, gateway: &RunningGateway, base: &str, store: &str) -> anyhow::Result<()> {
        let mut rng = SeededRng::new(2025);
        let start = OffsetDateTime::now_utc() - time::Duration::days(2);
        for n in 0..REPLAY {
            let at = start + time::Duration::seconds((n * 2 * 86_400 / REPLAY) as i64);
            let a = rng.next_f64();
            let decision = match (n >= REPLAY_SHIFT, a) {
                (false, a) if a < 0.86 => Action::Allow,
                (false, a) if a < 0.95 => Action::Flag,
                (false, _) => Action::Block,
                (true, a) if a < 0.70 => Action::Allow,
                (true, a) if a < 0.84 => Action::Flag,
                (true, _) => Action::Block,
            };
            gateway.state.writer().record_interaction(logged(at, decision), None).await?;
        }
        gateway.state.writer().flush().await?;
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "\nDrift: replayed {REPLAY} logged interactions of app `support-replay` (two days; after the first \
             {REPLAY_SHIFT} the action mix shifts: blocks 5% → 16%, flags 9% → 14%)."
        )?;
        drop(out);

        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let alert = loop {
            let list: Value = client.get(format!("{base}/api/alerts?detector=action-mix")).send().await?.json().await?;
            if let Some(alert) = list["data"].as_array().and_then(|a| a.first()).cloned() {
                let delivered =
                    self.received.lock().map(|r| r.iter().any(|b| b["alert"]["id"] == alert["id"])).unwrap_or(false);
                if delivered {
                    break alert;
                }
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("the drift monitor opened no alert within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let id = alert["id"].as_i64().unwrap_or_default();
        // The receiver has the body; the attempt is recorded a moment later.
        let detail = loop {
            let detail: Value = client.get(format!("{base}/api/alerts/{id}")).send().await?.json().await?;
            if detail["deliveries"].as_array().is_some_and(|d| !d.is_empty()) || tokio::time::Instant::now() > deadline
            {
                break detail;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let w = &alert["window"];
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "   alert #{id} ({}): detector {} ({} on stream `{}`)\n   statistic  {:.2} ≥ threshold {:.2}   p = {:.1e}\n   window     {} observations, seq {}..{}, {} → {}\n   detail     {}",
            alert["state"].as_str().unwrap_or("?"),
            alert["detector"].as_str().unwrap_or("?"),
            alert["method"].as_str().unwrap_or("?"),
            alert["stream"].as_str().unwrap_or("?"),
            alert["statistic"].as_f64().unwrap_or(0.0),
            alert["threshold"].as_f64().unwrap_or(0.0),
            alert["p_value"].as_f64().unwrap_or(f64::NAN),
            w["size"],
            w["first_seq"],
            w["last_seq"],
            w["first_at"].as_str().unwrap_or("?"),
            w["last_at"].as_str().unwrap_or("?"),
            alert["detail"].as_str().unwrap_or(""),
        )?;
        for d in detail["deliveries"].as_array().into_iter().flatten() {
            writeln!(
                out,
                "   delivered  to {} at {} (attempt {}, HTTP {}): POST {}",
                d["sink"].as_str().unwrap_or("?"),
                d["at"].as_str().unwrap_or("?"),
                d["attempt"],
                d["http_status"],
                self.url
            )?;
        }
        writeln!(
            out,
            "   next       keel alerts ack {id} --store {store}  ·  POST {base}/api/alerts/{id}/resolve  ·  GET {base}/metrics"
        )?;
        Ok(())
    }
}
