//! Targets: what a suite is run against.
//!
//! * [`ModelTarget`]: an OpenAI-compatible model endpoint directly (any server, or Keel's
//!   local model served on loopback by the binary).
//! * [`GatewayTarget`]: the same model behind Keel's gateway with a given policy version,
//!   in-process: requests go through the gateway's router with `oneshot` (no listening
//!   socket); each interaction's decisions and checks are captured as the gateway hands it to
//!   its writer (see `tap`), not stored.
//! * [`PolicyTarget`]: a policy version alone, judging each case's recorded `response`.
//!
//! [`RecordedUpstream`] serves recorded responses as an OpenAI-compatible model on loopback,
//! so the whole gateway path can be exercised without a model.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::body::Body;
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::BodyExt;
use keel_core::{Action, Phase};
use keel_gateway::{AppState, GatewaySettings, UpstreamConfig, Upstreams};
use keel_policy::{Context, Lang, Policy, TextPart};
use keel_store::{Writer, WriterConfig};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::error::{EvalError, Result};
use crate::suite::{Case, Role, Suite};
use crate::tap::{Recorded, Tap};

/// Sampling parameters sent to models: deterministic by default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Params {
    /// Sampling temperature (0: greedy).
    pub temperature: f64,
    /// Seed, for servers that honour one.
    pub seed: u64,
    /// Longest answer, in tokens.
    pub max_tokens: u32,
    /// Limit for one request, in milliseconds.
    pub timeout_ms: u64,
}

impl Default for Params {
    fn default() -> Self {
        Params { temperature: 0.0, seed: 0, max_tokens: 256, timeout_ms: 300_000 }
    }
}

/// A policy version as recorded in a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyInfo {
    /// `name@version`.
    pub reference: String,
    /// SHA-256 of the policy file's text.
    pub sha256: String,
}

impl PolicyInfo {
    /// The record of `policy`.
    pub fn of(policy: &Policy) -> Self {
        PolicyInfo { reference: policy.reference().to_string(), sha256: policy.source_sha256().to_string() }
    }
}

/// What a run was run against, as recorded (and as part of every cache key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetInfo {
    /// `model`, `gateway` or `policy`.
    pub kind: String,
    /// The upstream as given: a base URL, `local` or `recorded`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// The model id asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Sampling parameters (absent for the policy target, which samples nothing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub params: Option<Params>,
    /// The policy version judging, for gateway and policy targets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyInfo>,
}

/// One phase's decision, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseDecision {
    /// `input` or `output`.
    pub phase: Phase,
    /// The action.
    pub action: Action,
    /// The rule that fired, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

/// What a target answered to one case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// The text the user received (after the gateway: a block reply, a redacted answer…).
    pub output: String,
    /// The interaction's decision, for targets with a policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<Action>,
    /// Each phase's decision and rule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decisions: Vec<PhaseDecision>,
    /// Checks that hit, in the order they ran.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks_hit: Vec<String>,
    /// Time to the whole answer, in milliseconds.
    pub latency_ms: f64,
}

/// Why a target gave no answer to a case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Worth retrying: a timeout, a connection failure, HTTP 429 or 5xx.
    #[error("{0}")]
    Transient(String),
    /// Retrying would fail again (a 4xx, a malformed answer, a case the target cannot run).
    #[error("{0}")]
    Failed(String),
}

/// Something a suite can be run against.
#[async_trait]
pub trait Target: Send + Sync {
    /// What it is, for the run record and cache keys.
    fn info(&self) -> TargetInfo;
    /// The answer to `case` (`sample` counts repeats from 0).
    async fn respond(&self, case: &Case, sample: u32) -> std::result::Result<Response, TargetError>;
    /// False for targets that are cheap and deterministic, whose answers are not cached.
    fn cacheable(&self) -> bool {
        true
    }
}

/// The OpenAI `messages` array of a case.
fn messages_json(case: &Case) -> Value {
    Value::Array(
        case.messages
            .iter()
            .map(|m| {
                let role = match m.role {
                    Role::System => "system",
                    Role::User => "user",
                    Role::Assistant => "assistant",
                    Role::Tool => "tool",
                };
                json!({"role": role, "content": m.content})
            })
            .collect(),
    )
}

fn request_body(case: &Case, model: &str, params: &Params) -> Value {
    json!({
        "model": model,
        "messages": messages_json(case),
        "temperature": params.temperature,
        "seed": params.seed,
        "max_tokens": params.max_tokens,
        "stream": false,
    })
}

fn classify_status(status: u16, body: &str) -> TargetError {
    let detail = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.chars().take(200).collect());
    let message = format!("HTTP {status}: {detail}");
    if status == 429 || status >= 500 {
        TargetError::Transient(message)
    } else {
        TargetError::Failed(message)
    }
}

fn answer_text(body: &Value) -> std::result::Result<String, TargetError> {
    body["choices"][0]["message"]["content"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| TargetError::Failed("the answer has no choices[0].message.content".into()))
}

/// An OpenAI-compatible model endpoint, called directly.
pub struct ModelTarget {
    client: reqwest::Client,
    base_url: String,
    upstream: String,
    api_key: Option<String>,
    model: String,
    params: Params,
}

impl ModelTarget {
    /// A target for `model` at `base_url` (`upstream` is how the user named it: a URL or `local`).
    pub fn new(base_url: &str, upstream: &str, api_key: Option<String>, model: &str, params: Params) -> Result<Self> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_millis(params.timeout_ms))
            .build()
            .map_err(|e| EvalError::Setup(format!("cannot build the HTTP client: {e}")))?;
        Ok(ModelTarget {
            client,
            base_url: base_url.trim_end_matches('/').to_string(),
            upstream: upstream.to_string(),
            api_key,
            model: model.to_string(),
            params,
        })
    }
}

#[async_trait]
impl Target for ModelTarget {
    fn info(&self) -> TargetInfo {
        TargetInfo {
            kind: "model".into(),
            upstream: Some(self.upstream.clone()),
            model: Some(self.model.clone()),
            params: Some(self.params.clone()),
            policy: None,
        }
    }

    async fn respond(&self, case: &Case, _sample: u32) -> std::result::Result<Response, TargetError> {
        let started = Instant::now();
        let mut request = self.client.post(format!("{}/chat/completions", self.base_url)).json(&request_body(
            case,
            &self.model,
            &self.params,
        ));
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|e| {
            if e.is_timeout() {
                TargetError::Transient(format!("no answer within {} ms", self.params.timeout_ms))
            } else {
                TargetError::Transient(format!("cannot reach {}: {e}", self.base_url))
            }
        })?;
        let status = response.status().as_u16();
        let text =
            response.text().await.map_err(|e| TargetError::Transient(format!("reading the answer failed: {e}")))?;
        if !(200..300).contains(&status) {
            return Err(classify_status(status, &text));
        }
        let body: Value =
            serde_json::from_str(&text).map_err(|e| TargetError::Failed(format!("the answer is not JSON: {e}")))?;
        Ok(Response {
            output: answer_text(&body)?,
            decision: None,
            decisions: Vec::new(),
            checks_hit: Vec::new(),
            latency_ms: started.elapsed().as_secs_f64() * 1000.0,
        })
    }
}

/// The gateway with a policy version in front of a model, run in-process.
pub struct GatewayTarget {
    router: Router,
    tap: Arc<Tap>,
    upstream: String,
    model: String,
    params: Params,
    policy: PolicyInfo,
    send_case_id: bool,
}

/// The body field that tells a [`RecordedUpstream`] which case a request is for.
pub const CASE_FIELD: &str = "keel_eval_case";

/// Longest wait for the gateway to hand over a served interaction. It is immediate unless the
/// policy has asynchronous (model-based) checks, which run first.
const STORED_WITHIN: Duration = Duration::from_secs(30);

impl GatewayTarget {
    /// A gateway judging with `policy` in front of `model` at `base_url`; `upstream` is how the
    /// user named it (a URL, `local` or `recorded`). Its interactions are captured, not stored.
    pub async fn new(
        policy: Arc<Policy>,
        base_url: &str,
        upstream: &str,
        api_key: Option<String>,
        model: &str,
        params: Params,
    ) -> Result<Self> {
        let tap = Tap::new(keel_store::resolve("sqlite::memory:").await?);
        let store: Arc<dyn keel_store::Store> = tap.clone();
        // One item per write: the tap stores nothing, so batching would only make each case
        // wait for the batch window (a timer tick, about a millisecond) before its record.
        let (writer, _task) = Writer::spawn(
            store.clone(),
            WriterConfig { max_batch: 1, max_delay: Duration::ZERO, capacity: 8192, ..WriterConfig::default() },
        );
        let upstreams = Upstreams::new(vec![UpstreamConfig {
            name: "eval".into(),
            base_url: base_url.to_string(),
            api_key,
            models: vec![model.to_string()],
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_millis(params.timeout_ms),
            max_retries: 0,
        }])
        .map_err(|e| EvalError::Setup(format!("cannot build the upstream client: {e}")))?;
        let settings = GatewaySettings {
            keys: Vec::new(),
            privacy: HashMap::new(),
            default_privacy: keel_core::Privacy::Full,
            max_body_bytes: 16 << 20,
            review_lock: keel_store::review::DEFAULT_LOCK,
            review: keel_store::CaseIntake::default(),
        };
        let info = PolicyInfo::of(&policy);
        let state = AppState::new(settings, policy, upstreams, store, writer);
        Ok(GatewayTarget {
            router: keel_gateway::router(state),
            tap,
            upstream: upstream.to_string(),
            model: model.to_string(),
            params,
            policy: info,
            send_case_id: upstream == "recorded",
        })
    }
}

#[async_trait]
impl Target for GatewayTarget {
    fn info(&self) -> TargetInfo {
        TargetInfo {
            kind: "gateway".into(),
            upstream: Some(self.upstream.clone()),
            model: Some(self.model.clone()),
            params: Some(self.params.clone()),
            policy: Some(self.policy.clone()),
        }
    }

    fn cacheable(&self) -> bool {
        // Recorded answers through the in-process gateway are cheap and deterministic.
        !self.send_case_id
    }

    async fn respond(&self, case: &Case, _sample: u32) -> std::result::Result<Response, TargetError> {
        let started = Instant::now();
        let mut body = request_body(case, &self.model, &self.params);
        if self.send_case_id {
            body[CASE_FIELD] = Value::String(case.id.clone());
        }
        let request = axum::http::Request::post("/v1/chat/completions")
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .map_err(|e| TargetError::Failed(format!("cannot build the request: {e}")))?;
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .map_err(|e| TargetError::Failed(format!("the gateway failed: {e}")))?;
        let status = response.status().as_u16();
        let (decision, interaction) = {
            let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
            (header("x-keel-decision").and_then(|d| d.parse::<Action>().ok()), header("x-keel-interaction-id"))
        };
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| TargetError::Transient(format!("reading the gateway's answer failed: {e}")))?
            .to_bytes();
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        // Waited for on errors too, so no record is left behind in the tap.
        let recorded = match interaction.and_then(|id| id.parse().ok()) {
            Some(id) => self.tap.recorded(id, STORED_WITHIN).await.unwrap_or_default(),
            None => Recorded::default(),
        };
        let text = String::from_utf8_lossy(&bytes);
        if !(200..300).contains(&status) {
            return Err(classify_status(status, &text));
        }
        let body: Value =
            serde_json::from_str(&text).map_err(|e| TargetError::Failed(format!("the answer is not JSON: {e}")))?;
        let output = answer_text(&body)?;
        Ok(Response { output, decision, decisions: recorded.decisions, checks_hit: recorded.checks_hit, latency_ms })
    }
}

/// A policy version alone, judging each case's recorded `response` as the gateway would.
pub struct PolicyTarget {
    policy: Arc<Policy>,
}

impl PolicyTarget {
    /// A target that judges with `policy`.
    pub fn new(policy: Arc<Policy>) -> Self {
        PolicyTarget { policy }
    }

    /// The gateway's semantics on recorded text: input first (a block or escalation replaces
    /// the answer), then the answer (block, escalate, or redact rewrite it). A case without a
    /// recorded answer is judged on its request only.
    pub fn judge(&self, case: &Case) -> std::result::Result<Response, TargetError> {
        let started = Instant::now();
        let inputs: Vec<&str> = case
            .messages
            .iter()
            .filter(|m| matches!(m.role, Role::User | Role::Tool))
            .map(|m| m.content.as_str())
            .collect();
        let lang = match case.language.as_deref() {
            Some("ja") => Lang::Ja,
            Some(_) => Lang::En,
            None => Lang::detect(&inputs.join("\n")),
        };
        let ctx = Context { app: "eval", model: "recorded", lang };
        let parts: Vec<TextPart<'_>> =
            inputs.iter().enumerate().map(|(k, text)| TextPart { message: Some(k), text }).collect();
        let input = self.policy.judge(Phase::Input, &parts, &ctx);
        let mut checks_hit: Vec<String> = Vec::new();
        let mut note = |results: &[keel_core::CheckResult]| {
            for r in results.iter().filter(|r| r.hit) {
                if !checks_hit.contains(&r.check) {
                    checks_hit.push(r.check.clone());
                }
            }
        };
        note(&input.results);
        let mut decisions = vec![PhaseDecision {
            phase: Phase::Input,
            action: input.decision.action,
            rule: input.decision.rule.clone(),
        }];
        let output = if matches!(input.decision.action, Action::Block | Action::Escalate) {
            input.reply.clone().unwrap_or_default()
        } else if case.response.is_none() {
            // Without a recorded answer only the request is judged; nothing reached the user.
            String::new()
        } else {
            let answer = case.response.as_deref().unwrap_or_default();
            let judged = self.policy.judge(Phase::Output, &[TextPart { message: None, text: answer }], &ctx);
            note(&judged.results);
            if self.policy.has_checks(Phase::Output) {
                decisions.push(PhaseDecision {
                    phase: Phase::Output,
                    action: judged.decision.action,
                    rule: judged.decision.rule.clone(),
                });
            }
            match judged.decision.action {
                Action::Block | Action::Escalate => judged.reply.unwrap_or_default(),
                Action::Redact => judged.redacted.into_iter().next().flatten().unwrap_or_else(|| answer.to_string()),
                Action::Allow | Action::Flag => answer.to_string(),
            }
        };
        let decision = decisions.iter().map(|d| d.action).max();
        Ok(Response { output, decision, decisions, checks_hit, latency_ms: started.elapsed().as_secs_f64() * 1000.0 })
    }
}

#[async_trait]
impl Target for PolicyTarget {
    fn info(&self) -> TargetInfo {
        TargetInfo {
            kind: "policy".into(),
            upstream: Some("recorded".into()),
            model: None,
            params: None,
            policy: Some(PolicyInfo::of(&self.policy)),
        }
    }

    fn cacheable(&self) -> bool {
        false
    }

    async fn respond(&self, case: &Case, _sample: u32) -> std::result::Result<Response, TargetError> {
        self.judge(case)
    }
}

/// Recorded answers served as an OpenAI-compatible model on a loopback port.
pub struct RecordedUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

/// The model id the recorded upstream serves.
pub const RECORDED_MODEL: &str = "recorded";

impl RecordedUpstream {
    /// Serves the recorded `response` of every case of `suite`, found by the request's
    /// `keel_eval_case` field; a case without one is answered with HTTP 404.
    pub async fn spawn(suite: &Suite) -> Result<Self> {
        let answers: HashMap<String, String> =
            suite.cases.iter().filter_map(|c| c.response.clone().map(|r| (c.id.clone(), r))).collect();
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .map_err(|e| EvalError::Setup(format!("cannot listen on loopback: {e}")))?;
        let addr = listener.local_addr().map_err(|e| EvalError::Setup(e.to_string()))?;
        let app = Router::new()
            .route(
                "/v1/models",
                get(|| async { Json(json!({"object": "list", "data": [{"id": RECORDED_MODEL, "object": "model"}]})) }),
            )
            .route("/v1/chat/completions", post(recorded_answer))
            .with_state(Arc::new(answers));
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "recorded upstream stopped");
            }
        });
        Ok(RecordedUpstream { addr, task })
    }

    /// The base URL to use as an upstream.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
}

impl Drop for RecordedUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn recorded_answer(
    State(answers): State<Arc<HashMap<String, String>>>,
    Json(body): Json<Value>,
) -> (axum::http::StatusCode, Json<Value>) {
    let id = body[CASE_FIELD].as_str().unwrap_or_default();
    match answers.get(id) {
        Some(text) => (
            axum::http::StatusCode::OK,
            Json(json!({
                "id": format!("chatcmpl-recorded-{id}"), "object": "chat.completion", "created": 0, "model": RECORDED_MODEL,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
            })),
        ),
        None => (
            axum::http::StatusCode::NOT_FOUND,
            Json(
                json!({"error": {"message": format!("case `{id}` has no recorded response"), "type": "invalid_request_error"}}),
            ),
        ),
    }
}
