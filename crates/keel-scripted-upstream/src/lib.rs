//! A scripted OpenAI-compatible chat server.
//!
//! It is the test double for upstream models (tests need answers they can predict, chunked
//! streams, delays and failures on demand) and, until the local model lands, the demo's
//! built-in model. It speaks the same wire format as real servers: `GET /v1/models`,
//! `POST /v1/chat/completions` with and without `stream`, SSE with `data: [DONE]`.
//! It is not a language model and never claims to be one: its model ids start with `scripted`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::stream::{self, StreamExt};
use serde_json::{json, Value};

/// What the server answers to a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// An assistant message with this text.
    Text(String),
    /// A tool call with this function name and JSON arguments.
    ToolCall {
        /// The function name.
        name: String,
        /// The arguments, as a JSON string.
        arguments: String,
    },
    /// An HTTP error with this status.
    Error(u16),
    /// Never answer (to test timeouts).
    Hang,
}

/// Maps the last user message to a reply: the first rule whose trigger it contains wins.
#[derive(Debug, Clone, Default)]
pub struct Script {
    rules: Vec<(String, Reply)>,
    fallback: Option<Reply>,
}

impl Script {
    /// An empty script: every request is answered by echoing the last user message.
    pub fn echo() -> Self {
        Script::default()
    }

    /// Adds a rule: a last user message containing `trigger` gets `reply`.
    pub fn on(mut self, trigger: &str, reply: Reply) -> Self {
        self.rules.push((trigger.to_string(), reply));
        self
    }

    /// The reply when no rule matches (instead of echoing).
    pub fn otherwise(mut self, reply: Reply) -> Self {
        self.fallback = Some(reply);
        self
    }

    fn reply_for(&self, last_user: &str) -> Reply {
        self.rules
            .iter()
            .find(|(trigger, _)| last_user.contains(trigger.as_str()))
            .map(|(_, reply)| reply.clone())
            .or_else(|| self.fallback.clone())
            .unwrap_or_else(|| Reply::Text(format!("You said: {last_user}")))
    }

    /// The demo's customer-support script for a fictional appliance maker, in EN and JA.
    pub fn support_demo() -> Self {
        Script::echo()
            .on("warranty", Reply::Text("The XR-200 blender has a two-year warranty from the date of purchase. Keep your receipt and contact us if anything goes wrong.".into()))
            .on("保証", Reply::Text("XR-200ブレンダーの保証期間はご購入日から2年間です。レシートを保管のうえ、不具合があればご連絡ください。".into()))
            .on("refund", Reply::Text("Sure. I have noted your card ending for the refund. Our billing team will email you at billing@example.com within 3 business days.".into()))
            .on("配送", Reply::Text("ご注文の商品は通常3営業日以内に発送されます。お問い合わせはサポート窓口 03-1234-5678 までお電話ください。".into()))
            .otherwise(Reply::Text("Thanks for contacting support. Could you tell me the model number of your appliance?".into()))
    }
}

/// How the server behaves, besides what it answers.
#[derive(Debug, Clone)]
pub struct Options {
    /// Model ids listed by `/v1/models` and accepted by the chat endpoint.
    pub models: Vec<String>,
    /// Wait before answering (simulates model latency).
    pub delay: Duration,
    /// Characters per streamed chunk.
    pub chunk_chars: usize,
    /// Wait between streamed chunks.
    pub chunk_delay: Duration,
    /// Answer this many first requests with HTTP 500 (to test error handling).
    pub fail_first: usize,
    /// Keep every request body for inspection (turn off for load tests).
    pub record: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            models: vec!["scripted-1".into()],
            delay: Duration::ZERO,
            chunk_chars: 4,
            chunk_delay: Duration::ZERO,
            fail_first: 0,
            record: true,
        }
    }
}

struct Shared {
    script: Script,
    options: Options,
    served: AtomicUsize,
    received: Mutex<Vec<Value>>,
}

/// A running server.
pub struct RunningUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningUpstream {
    /// The base URL to configure as an upstream (`http://127.0.0.1:PORT/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Request bodies received so far (when `record` is on).
    pub fn received(&self) -> Vec<Value> {
        self.shared.received.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Number of chat requests answered or failed so far.
    pub fn served(&self) -> usize {
        self.shared.served.load(Ordering::SeqCst)
    }

    /// Stops the server.
    pub fn stop(self) {
        self.task.abort();
    }
}

/// Starts a server on `addr` (use port 0 for any free port).
pub async fn spawn(addr: SocketAddr, script: Script, options: Options) -> std::io::Result<RunningUpstream> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared { script, options, served: AtomicUsize::new(0), received: Mutex::new(Vec::new()) });
    let app = router(shared.clone());
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "scripted upstream stopped");
        }
    });
    Ok(RunningUpstream { addr, shared, task })
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new().route("/v1/models", get(models)).route("/v1/chat/completions", post(chat)).with_state(shared)
}

async fn models(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let data: Vec<Value> = shared
        .options
        .models
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "keel-scripted"}))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": {"message": message, "type": "invalid_request_error", "code": null}})))
        .into_response()
}

fn last_user_text(body: &Value) -> String {
    body["messages"]
        .as_array()
        .and_then(|messages| messages.iter().rev().find(|m| m["role"] == "user"))
        .map(|m| match &m["content"] {
            Value::String(s) => s.clone(),
            Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join(" "),
            _ => String::new(),
        })
        .unwrap_or_default()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

async fn chat(State(shared): State<Arc<Shared>>, Json(body): Json<Value>) -> Response {
    let n = shared.served.fetch_add(1, Ordering::SeqCst);
    if shared.options.record {
        if let Ok(mut received) = shared.received.lock() {
            received.push(body.clone());
        }
    }
    if n < shared.options.fail_first {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "scripted failure");
    }
    let model = body["model"].as_str().unwrap_or_default().to_string();
    if !shared.options.models.contains(&model) {
        return error(StatusCode::NOT_FOUND, &format!("The model `{model}` does not exist"));
    }
    if !shared.options.delay.is_zero() {
        tokio::time::sleep(shared.options.delay).await;
    }
    let prompt = last_user_text(&body);
    let reply = shared.script.reply_for(&prompt);
    let prompt_tokens = prompt.split_whitespace().count().max(1) as u64;
    match reply {
        Reply::Error(status) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            error(status, "scripted error")
        }
        Reply::Hang => {
            std::future::pending::<()>().await;
            error(StatusCode::INTERNAL_SERVER_ERROR, "unreachable")
        }
        reply if body["stream"] == Value::Bool(true) => {
            stream_reply(&shared.options, &model, reply, prompt_tokens, &body)
        }
        Reply::Text(text) => {
            let completion_tokens = text.split_whitespace().count().max(1) as u64;
            Json(json!({
                "id": format!("chatcmpl-scripted-{n}"),
                "object": "chat.completion",
                "created": now(),
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}
            }))
            .into_response()
        }
        Reply::ToolCall { name, arguments } => Json(json!({
            "id": format!("chatcmpl-scripted-{n}"),
            "object": "chat.completion",
            "created": now(),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}}
            ]}, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 1, "total_tokens": prompt_tokens + 1}
        }))
        .into_response(),
    }
}

fn stream_reply(options: &Options, model: &str, reply: Reply, prompt_tokens: u64, body: &Value) -> Response {
    let id = format!("chatcmpl-scripted-{}", now());
    let created = now();
    let chunk = |delta: Value, finish: Value| {
        json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let mut events = vec![chunk(json!({"role": "assistant", "content": ""}), Value::Null)];
    let finish = match reply {
        Reply::Text(text) => {
            let chars: Vec<char> = text.chars().collect();
            for piece in chars.chunks(options.chunk_chars.max(1)) {
                events.push(chunk(json!({"content": piece.iter().collect::<String>()}), Value::Null));
            }
            "stop"
        }
        Reply::ToolCall { name, arguments } => {
            events.push(chunk(
                json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}}]}),
                Value::Null,
            ));
            "tool_calls"
        }
        Reply::Error(_) | Reply::Hang => "stop",
    };
    events.push(chunk(json!({}), json!(finish)));
    if body["stream_options"]["include_usage"] == Value::Bool(true) {
        let completion = (events.len() - 2) as u64;
        events.push(json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}}));
    }
    let delay = options.chunk_delay;
    let data = events.into_iter().map(|e| e.to_string()).chain(std::iter::once("[DONE]".to_string()));
    let stream = stream::iter(data).then(move |payload| async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok::<_, std::convert::Infallible>(Event::default().data(payload))
    });
    Sse::new(stream).into_response()
}
