//! Keel's own model server: the local chat model behind an OpenAI-compatible endpoint on a
//! loopback port. The gateway reaches it over HTTP like any other upstream, so the policy
//! path is exactly the same for local and remote models.
//!
//! One generation runs at a time per model (the model is single-threaded state); further
//! requests wait in a bounded queue and get HTTP 429 when it is full.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use keel_models::{ChatMessage, GenerateParams, LocalLlm};
use serde_json::{json, Value};
use time::OffsetDateTime;
use tokio::sync::{mpsc, Semaphore};

use crate::error::ApiError;

/// The model id of the pinned local chat model.
pub const LOCAL_MODEL_ID: &str = "local/smollm2-135m";

/// Tokens generated when a request sets no `max_tokens`.
const DEFAULT_MAX_TOKENS: usize = 256;

struct Shared {
    llm: Arc<LocalLlm>,
    model_id: String,
    permit: Arc<Semaphore>,
    waiting: AtomicUsize,
    queue: usize,
}

/// A running local model server.
pub struct LocalModelServer {
    /// Where it listens (loopback).
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl LocalModelServer {
    /// The base URL to use as an upstream.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Stops the server.
    pub fn stop(&self) {
        self.task.abort();
    }
}

/// Serves `llm` as `model_id` on a free loopback port; `queue` requests may wait.
pub async fn spawn_local_model(llm: Arc<LocalLlm>, model_id: &str, queue: usize) -> std::io::Result<LocalModelServer> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared {
        llm,
        model_id: model_id.to_string(),
        permit: Arc::new(Semaphore::new(1)),
        waiting: AtomicUsize::new(0),
        queue,
    });
    let app =
        Router::new().route("/v1/models", get(models)).route("/v1/chat/completions", post(chat)).with_state(shared);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "local model server stopped");
        }
    });
    Ok(LocalModelServer { addr, task })
}

async fn models(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(
        json!({"object": "list", "data": [{"id": shared.model_id, "object": "model", "created": 0, "owned_by": "keel-local"}]}),
    )
}

/// The request fields the local model honours; the rest are ignored, as OpenAI servers do.
fn parse(body: &Value, model_id: &str) -> Result<(Vec<ChatMessage>, GenerateParams, bool), ApiError> {
    if body["model"].as_str() != Some(model_id) {
        return Err(ApiError::not_found(Some("model"), format!("this server serves only `{model_id}`")));
    }
    let messages = body["messages"]
        .as_array()
        .ok_or_else(|| ApiError::invalid("messages", "`messages` must be an array"))?
        .iter()
        .map(|m| ChatMessage {
            role: m["role"].as_str().unwrap_or("user").to_string(),
            content: match &m["content"] {
                Value::String(s) => s.clone(),
                Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join("\n"),
                _ => String::new(),
            },
        })
        .collect();
    let stop = match &body["stop"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items.iter().filter_map(|s| s.as_str().map(str::to_string)).collect(),
        _ => Vec::new(),
    };
    let max_tokens = body["max_completion_tokens"]
        .as_u64()
        .or_else(|| body["max_tokens"].as_u64())
        .map_or(DEFAULT_MAX_TOKENS, |n| n as usize);
    let params = GenerateParams {
        max_tokens,
        temperature: body["temperature"].as_f64().unwrap_or(0.0),
        top_p: body["top_p"].as_f64().unwrap_or(1.0),
        seed: body["seed"].as_u64().unwrap_or(0),
        stop,
    };
    Ok((messages, params, body["stream"] == Value::Bool(true)))
}

async fn chat(State(shared): State<Arc<Shared>>, Json(body): Json<Value>) -> Response {
    let (messages, params, stream) = match parse(&body, &shared.model_id) {
        Ok(parsed) => parsed,
        Err(e) => return e.into_response(),
    };
    if shared.waiting.fetch_add(1, Ordering::SeqCst) >= shared.queue {
        shared.waiting.fetch_sub(1, Ordering::SeqCst);
        let error = ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: format!("the local model is busy: {} requests are already waiting", shared.queue),
            param: None,
            code: "rate_limit_exceeded",
        };
        return error.into_response();
    }
    let permit = shared.permit.clone().acquire_owned().await;
    shared.waiting.fetch_sub(1, Ordering::SeqCst);
    let Ok(permit) = permit else {
        return ApiError::internal("the local model is shutting down").into_response();
    };
    let id = format!("chatcmpl-local-{}", OffsetDateTime::now_utc().unix_timestamp_nanos());
    let created = OffsetDateTime::now_utc().unix_timestamp();
    let llm = shared.llm.clone();
    let model = shared.model_id.clone();
    if !stream {
        let generated = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            llm.generate(&messages, &params, &mut |_| true)
        })
        .await;
        return match generated {
            Ok(Ok(g)) => Json(json!({
                "id": id, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": g.text}, "finish_reason": g.finish_reason}],
                "usage": {"prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens,
                          "total_tokens": g.prompt_tokens + g.completion_tokens}
            }))
            .into_response(),
            Ok(Err(e)) => ApiError::bad_request(e.to_string()).into_response(),
            Err(e) => ApiError::internal(e).into_response(),
        };
    }
    let include_usage = body["stream_options"]["include_usage"] == Value::Bool(true);
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let chunk = |delta: Value, finish: Value| {
            let c = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
            Bytes::from(format!("data: {c}\n\n"))
        };
        if tx.blocking_send(chunk(json!({"role": "assistant", "content": ""}), Value::Null)).is_err() {
            return;
        }
        // A closed channel means the client went away: stop generating.
        let result = llm.generate(&messages, &params, &mut |piece| {
            tx.blocking_send(chunk(json!({"content": piece}), Value::Null)).is_ok()
        });
        match result {
            Ok(g) => {
                let _ = tx.blocking_send(chunk(json!({}), json!(g.finish_reason)));
                if include_usage {
                    let usage = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [],
                        "usage": {"prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens,
                                  "total_tokens": g.prompt_tokens + g.completion_tokens}});
                    let _ = tx.blocking_send(Bytes::from(format!("data: {usage}\n\n")));
                }
            }
            Err(e) => {
                let error = json!({"error": {"message": e.to_string(), "type": "api_error"}});
                let _ = tx.blocking_send(Bytes::from(format!("data: {error}\n\n")));
            }
        }
        let _ = tx.blocking_send(Bytes::from_static(b"data: [DONE]\n\n"));
    });
    let body =
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, std::convert::Infallible>));
    let mut response = body.into_response();
    response.headers_mut().insert("content-type", HeaderValue::from_static("text/event-stream"));
    response
}
