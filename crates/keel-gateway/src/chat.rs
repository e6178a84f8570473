//! `POST /v1/chat/completions`: judge the request, forward it, judge the answer (streamed or
//! not), answer the client, and hand the interaction to the writer.

use std::collections::BTreeMap;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use keel_core::{
    Action, CheckResult, Decision, Finding, Interaction, InteractionId, Outcome, Phase, Privacy, ShadowDecision,
    Timings, Tokens,
};
use keel_policy::text::redact;
use keel_policy::{Context, Lang, Policy, StreamGuard, TextPart};
use keel_store::{stored_text, HandoffRequest};
use serde_json::{json, Value};
use std::sync::Arc;
use time::OffsetDateTime;
use tokio::sync::mpsc;

use crate::auth::{authenticate, Caller};
use crate::error::ApiError;
use crate::sse::SseParser;
use crate::state::AppState;

/// Where a judged text lives in the request: a message, and a content part for array contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PartRef {
    pub(crate) message: usize,
    content_part: Option<usize>,
}

/// A validated chat request.
pub(crate) struct ChatRequest {
    pub(crate) body: Value,
    pub(crate) model: String,
    pub(crate) stream: bool,
}

const ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool", "function"];

fn validate(bytes: &[u8]) -> Result<ChatRequest, ApiError> {
    let body: Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request(format!("request body is not valid JSON (line {}, column {}): {e}", e.line(), e.column()))
    })?;
    validate_body(body)
}

/// Checks a parsed chat request body; errors name the field (`messages[1].role`).
pub(crate) fn validate_body(body: Value) -> Result<ChatRequest, ApiError> {
    let Some(object) = body.as_object() else {
        return Err(ApiError::bad_request("request body must be a JSON object"));
    };
    let model = match object.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        Some(Value::String(_)) => return Err(ApiError::invalid("model", "`model` must not be empty")),
        Some(_) => return Err(ApiError::invalid("model", "`model` must be a string")),
        None => return Err(ApiError::invalid("model", "missing required field `model`")),
    };
    let stream = match object.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::invalid("stream", "`stream` must be a boolean")),
    };
    let messages = match object.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(Value::Array(_)) => return Err(ApiError::invalid("messages", "`messages` must not be empty")),
        Some(_) => return Err(ApiError::invalid("messages", "`messages` must be an array")),
        None => return Err(ApiError::invalid("messages", "missing required field `messages`")),
    };
    for (i, message) in messages.iter().enumerate() {
        let Some(message) = message.as_object() else {
            return Err(ApiError::invalid(format!("messages[{i}]"), "each message must be an object"));
        };
        match message.get("role") {
            Some(Value::String(role)) if ROLES.contains(&role.as_str()) => {}
            Some(Value::String(role)) => {
                return Err(ApiError::invalid(format!("messages[{i}].role"), format!("unknown role `{role}`")))
            }
            Some(_) => return Err(ApiError::invalid(format!("messages[{i}].role"), "`role` must be a string")),
            None => return Err(ApiError::invalid(format!("messages[{i}].role"), "missing required field `role`")),
        }
        match message.get("content") {
            None | Some(Value::Null) | Some(Value::String(_)) => {}
            Some(Value::Array(parts)) => {
                for (j, part) in parts.iter().enumerate() {
                    let field = format!("messages[{i}].content[{j}]");
                    match part.get("type").and_then(Value::as_str) {
                        Some("text") if part.get("text").is_some_and(Value::is_string) => {}
                        Some("text") => {
                            return Err(ApiError::invalid(format!("{field}.text"), "a text part needs a string `text`"))
                        }
                        Some(_) => {}
                        None => {
                            return Err(ApiError::invalid(
                                format!("{field}.type"),
                                "each content part needs a string `type`",
                            ))
                        }
                    }
                }
            }
            Some(_) => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].content"),
                    "`content` must be a string, an array of parts or null",
                ))
            }
        }
    }
    Ok(ChatRequest { body, model, stream })
}

/// The texts of user and tool messages, which input checks read.
pub(crate) fn input_parts(body: &Value) -> Vec<(PartRef, String)> {
    let mut parts = Vec::new();
    let Some(messages) = body["messages"].as_array() else { return parts };
    for (i, message) in messages.iter().enumerate() {
        if !matches!(message["role"].as_str(), Some("user" | "tool")) {
            continue;
        }
        match &message["content"] {
            Value::String(text) => parts.push((PartRef { message: i, content_part: None }, text.clone())),
            Value::Array(items) => {
                for (j, item) in items.iter().enumerate() {
                    if let Some(text) = item["text"].as_str() {
                        parts.push((PartRef { message: i, content_part: Some(j) }, text.to_string()));
                    }
                }
            }
            _ => {}
        }
    }
    parts
}

/// The end user a request is for: the `x-keel-user` header, else the OpenAI `user` field.
/// It makes canary assignment sticky; it is not stored.
fn user_of(headers: &HeaderMap, body: &Value) -> Result<Option<String>, ApiError> {
    if let Some(header) = headers.get("x-keel-user") {
        let user = header
            .to_str()
            .map_err(|_| ApiError::invalid("x-keel-user", "the x-keel-user header must be visible ASCII"))?;
        return Ok(Some(user.trim().to_owned()).filter(|u| !u.is_empty()));
    }
    match body.get("user") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(user)) => Ok(Some(user.clone()).filter(|u| !u.is_empty())),
        Some(_) => Err(ApiError::invalid("user", "`user` must be a string")),
    }
}

/// Writes `text` back into the request at `at`.
fn set_part(body: &mut Value, at: PartRef, text: String) {
    let slot = match at.content_part {
        None => &mut body["messages"][at.message]["content"],
        Some(j) => &mut body["messages"][at.message]["content"][j]["text"],
    };
    *slot = Value::String(text);
}

/// Everything known about an interaction while it is being served.
struct Record {
    id: InteractionId,
    created_at: OffsetDateTime,
    started: Instant,
    caller: Caller,
    model: String,
    stream: bool,
    privacy: Privacy,
    request_original: String,
    request_redacted: Option<String>,
    policy: Arc<Policy>,
    /// The shadow version judging beside `policy`, after the answer.
    shadow: Option<Arc<Policy>>,
    lang: Lang,
    decisions: Vec<Decision>,
    checks: Vec<CheckResult>,
    upstream_ms: f64,
    tokens: Tokens,
    /// The request texts, kept for async checks and the shadow (empty when neither runs).
    input_texts: Vec<(Option<usize>, String)>,
}

impl Record {
    /// What runs after the answer: the policy's async checks and the shadow version.
    fn after_answer(&mut self) -> AfterAnswer {
        AfterAnswer {
            policy: self.policy.clone(),
            shadow: self.shadow.clone(),
            lang: self.lang,
            input: std::mem::take(&mut self.input_texts),
        }
    }

    fn decision(&self) -> Action {
        self.decisions.iter().map(|d| d.action).max().unwrap_or(Action::Allow)
    }

    /// The `x-keel-*` headers for the decision taken so far.
    fn headers(&self) -> HeaderMap {
        keel_headers(&self.id, self.decision(), &self.policy.reference())
    }

    /// Builds the stored interaction; `answer` is the original answer text and its PII findings.
    fn finish(
        self,
        outcome: Outcome,
        http_status: u16,
        error: Option<String>,
        answer: &str,
        answer_pii: &[&Finding],
    ) -> Interaction {
        let total_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let overhead_us = ((total_ms - self.upstream_ms).max(0.0) * 1000.0) as u64;
        let redacted_answer = (!answer_pii.is_empty()).then(|| redact(answer, answer_pii));
        let decision = self.decision();
        Interaction {
            id: self.id,
            created_at: self.created_at,
            app: self.caller.app.clone(),
            model: self.model.clone(),
            stream: self.stream,
            request: stored_text(&self.request_original, self.request_redacted.as_deref(), self.privacy),
            response: stored_text(answer, redacted_answer.as_deref(), self.privacy),
            outcome,
            http_status,
            error,
            timings: Timings { upstream_ms: self.upstream_ms, overhead_us, total_ms },
            tokens: self.tokens,
            policy: self.policy.reference(),
            decision,
            decisions: self.decisions,
            checks: self.checks,
            shadow: Vec::new(),
        }
    }
}

/// Runs CPU-heavy judging (model-based checks) without stalling the runtime's other tasks.
fn blocking<R>(heavy: bool, work: impl FnOnce() -> R) -> R {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if heavy && multi_thread {
        tokio::task::block_in_place(work)
    } else {
        work()
    }
}

/// What is judged after the answer, off the request path.
struct AfterAnswer {
    policy: Arc<Policy>,
    shadow: Option<Arc<Policy>>,
    lang: Lang,
    input: Vec<(Option<usize>, String)>,
}

/// What the shadow version would have decided: the input always, the answer when there was one.
fn judge_in_shadow(
    shadow: &Policy,
    interaction: &Interaction,
    lang: Lang,
    input: &[TextPart<'_>],
    answer: &str,
) -> Vec<ShadowDecision> {
    let ctx = Context { app: &interaction.app, model: &interaction.model, lang };
    let mut decisions = vec![shadow.judge(Phase::Input, input, &ctx).decision];
    if !answer.is_empty() && shadow.has_checks(Phase::Output) {
        decisions.push(shadow.judge(Phase::Output, &[TextPart { message: None, text: answer }], &ctx).decision);
    }
    decisions
        .into_iter()
        .map(|d| ShadowDecision { policy: shadow.reference(), phase: d.phase, action: d.action, rule: d.rule })
        .collect()
}

/// Stores `interaction` after running the policy's async (monitoring-only) checks and the
/// shadow version on the request texts and the answer, off the request path; with neither
/// it stores at once. Nothing here changes what the client got.
async fn record_after_answer(
    state: &AppState,
    after: AfterAnswer,
    mut interaction: Interaction,
    handoff: Option<HandoffRequest>,
    answer: String,
) {
    let AfterAnswer { policy, shadow, lang, input } = after;
    if !policy.has_async_checks(Phase::Input) && !policy.has_async_checks(Phase::Output) && shadow.is_none() {
        state.record(interaction, handoff).await;
        return;
    }
    let state_for_task = state.clone();
    state.tasks().spawn(async move {
        // Kept so a failing check cannot cost the record of a served request.
        let unjudged = interaction.clone();
        let judged = tokio::task::spawn_blocking(move || {
            let parts: Vec<TextPart<'_>> = input.iter().map(|(m, t)| TextPart { message: *m, text: t }).collect();
            let mut results = policy.run_async_checks(Phase::Input, &parts);
            if !answer.is_empty() {
                results.extend(policy.run_async_checks(Phase::Output, &[TextPart { message: None, text: &answer }]));
            }
            let shadowed = shadow.map(|s| judge_in_shadow(&s, &interaction, lang, &parts, &answer)).unwrap_or_default();
            interaction.checks.extend(results);
            interaction.shadow = shadowed;
            interaction
        })
        .await;
        let interaction = judged.unwrap_or_else(|e| {
            tracing::error!(interaction = %unjudged.id, error = %e, "async checks or the shadow policy failed");
            unjudged
        });
        state_for_task.record(interaction, handoff).await;
    });
}

/// Findings of PII checks in `results`, which the `redacted` privacy setting removes from storage.
pub(crate) fn pii_findings(results: &[CheckResult]) -> Vec<&Finding> {
    results.iter().filter(|r| r.kind == "pii").flat_map(|r| r.findings.iter()).collect()
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError::too_large(limit)),
        Err(e) => Err(ApiError::bad_request(format!("could not read the request body: {e}"))),
    }
}

/// The handler.
pub async fn chat_completions(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    match serve(state, headers, body).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn serve(state: AppState, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let started = Instant::now();
    let created_at = OffsetDateTime::now_utc();
    let caller = authenticate(&state, &headers)?;
    let bytes = read_body(body, state.settings().max_body_bytes).await?;
    let ChatRequest { mut body, model, stream } = validate(&bytes)?;
    let Some(upstream) = state.upstreams().route(&model).await else {
        return Err(ApiError::not_found(Some("model"), format!("The model `{model}` does not exist")));
    };
    let id = InteractionId::new();
    let user = user_of(&headers, &body)?;
    let selection = state.select_policy(&caller.app, user.as_deref().unwrap_or(&id.to_string()))?;
    let policy = selection.enforce;
    let parts = input_parts(&body);
    let lang = Lang::detect(&parts.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>().join("\n"));
    let ctx = Context { app: &caller.app, model: &model, lang };
    let text_parts: Vec<TextPart<'_>> =
        parts.iter().enumerate().map(|(k, (_, text))| TextPart { message: Some(k), text }).collect();
    let heavy = policy.has_model_checks();
    let mut input = blocking(heavy, || policy.judge(Phase::Input, &text_parts, &ctx));
    // Findings name the request message, not the judged part.
    for result in &mut input.results {
        for finding in &mut result.findings {
            finding.message = finding.message.and_then(|k| parts.get(k)).map(|(at, _)| at.message);
        }
    }
    let privacy = state.settings().privacy_of(&caller.app);
    let request_original = String::from_utf8_lossy(&bytes).into_owned();
    let request_redacted = (privacy == Privacy::Redacted).then(|| redacted_request(&body, &parts, &input.results));
    for (k, redacted) in input.redacted.iter().enumerate() {
        if let (Some(text), Some((at, _))) = (redacted, parts.get(k)) {
            set_part(&mut body, *at, text.clone());
        }
    }
    let input_action = input.decision.action;
    let mut record = Record {
        id,
        created_at,
        started,
        caller,
        model,
        stream,
        privacy,
        request_original,
        request_redacted,
        policy: policy.clone(),
        lang,
        decisions: vec![input.decision],
        checks: input.results,
        upstream_ms: 0.0,
        tokens: Tokens::default(),
        input_texts: if policy.has_async_checks(Phase::Input) || selection.shadow.is_some() {
            parts.iter().map(|(at, text)| (Some(at.message), text.clone())).collect()
        } else {
            Vec::new()
        },
        shadow: selection.shadow,
    };
    tracing::debug!(interaction = %record.id, app = %record.caller.app, decision = %input_action, "input judged");

    if matches!(input_action, Action::Block | Action::Escalate) {
        let reply = input.reply.unwrap_or_default();
        return Ok(reply_without_upstream(&state, record, reply).await);
    }

    let upstream_started = Instant::now();
    let sent = state.upstreams().chat(upstream, &body).await;
    let response = match sent {
        Ok(r) => r,
        Err(e) => {
            record.upstream_ms = upstream_started.elapsed().as_secs_f64() * 1000.0;
            return Ok(upstream_failed(&state, record, e).await);
        }
    };
    if !(200..300).contains(&response.status) {
        record.upstream_ms = upstream_started.elapsed().as_secs_f64() * 1000.0;
        let status = response.status;
        let text = response.response.text().await.unwrap_or_default();
        let error = if status >= 500 {
            ApiError::bad_gateway(format!(
                "upstream `{}` answered with status {status}",
                state.upstreams().name(upstream)
            ))
        } else {
            // A 4xx from the upstream is about the request: pass its status and body on.
            let body = serde_json::from_str::<Value>(&text)
                .unwrap_or_else(|_| json!({"error": {"message": text, "type": "upstream_error"}}));
            let interaction =
                record.finish(Outcome::UpstreamError, status, Some(format!("upstream answered {status}")), "", &[]);
            let headers = keel_headers(&interaction.id, interaction.decision, &interaction.policy);
            state.record(interaction, None).await;
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            return Ok((code, headers, axum::Json(body)).into_response());
        };
        return Ok(upstream_failed(&state, record, error).await);
    }
    if stream {
        Ok(stream_answer(state, record, response.response, upstream, upstream_started, lang))
    } else {
        Ok(whole_answer(&state, record, response.response, upstream, upstream_started, lang).await)
    }
}

/// `x-keel-interaction-id`, `x-keel-decision` and `x-keel-policy`.
fn keel_headers(id: &InteractionId, decision: Action, policy: &keel_core::PolicyRef) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("x-keel-interaction-id", id.to_string()),
        ("x-keel-decision", decision.as_str().to_string()),
        ("x-keel-policy", policy.to_string()),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    headers
}

pub(crate) fn redacted_request(body: &Value, parts: &[(PartRef, String)], results: &[CheckResult]) -> String {
    let mut copy = body.clone();
    let pii = pii_findings(results);
    for (at, text) in parts {
        let here: Vec<&Finding> = pii.iter().copied().filter(|f| f.message == Some(at.message)).collect();
        if !here.is_empty() {
            set_part(&mut copy, *at, redact(text, &here));
        }
    }
    copy.to_string()
}

fn completion_body(id: &InteractionId, model: &str, content: &str) -> Value {
    json!({
        "id": format!("chatcmpl-keel-{id}"),
        "object": "chat.completion",
        "created": OffsetDateTime::now_utc().unix_timestamp(),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    })
}

fn chunk_body(id: &str, model: &str, index: u64, delta: Value, finish: Value) -> Value {
    json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": OffsetDateTime::now_utc().unix_timestamp(),
        "model": model,
        "choices": [{"index": index, "delta": delta, "finish_reason": finish}]
    })
}

fn sse_data(payload: &str) -> Bytes {
    Bytes::from(format!("data: {payload}\n\n"))
}

/// Answers a request blocked or escalated on input, without calling the upstream.
async fn reply_without_upstream(state: &AppState, mut record: Record, reply: String) -> Response {
    let after = record.after_answer();
    let action = record.decision();
    let stream = record.stream;
    let model = record.model.clone();
    let id = record.id;
    let mut headers = record.headers();
    let reason = record.decisions.last().map(|d| d.reason.clone()).unwrap_or_default();
    let app = record.caller.app.clone();
    let interaction = record.finish(Outcome::Completed, 200, None, "", &[]);
    let handoff = (action == Action::Escalate).then_some(HandoffRequest {
        interaction_id: id,
        app,
        created_at: interaction.created_at,
        reason,
    });
    record_after_answer(state, after, interaction, handoff, String::new()).await;
    if stream {
        let chunk_id = format!("chatcmpl-keel-{id}");
        let mut out = Vec::new();
        out.push(sse_data(
            &chunk_body(&chunk_id, &model, 0, json!({"role": "assistant", "content": reply}), Value::Null).to_string(),
        ));
        out.push(sse_data(&chunk_body(&chunk_id, &model, 0, json!({}), json!("stop")).to_string()));
        out.push(Bytes::from(format!(": keel-decision {action}\n\n")));
        out.push(sse_data("[DONE]"));
        headers.insert("content-type", HeaderValue::from_static("text/event-stream"));
        headers.insert("cache-control", HeaderValue::from_static("no-cache"));
        let body = Body::from_stream(futures::stream::iter(out.into_iter().map(Ok::<_, std::convert::Infallible>)));
        (headers, body).into_response()
    } else {
        (headers, axum::Json(completion_body(&id, &model, &reply))).into_response()
    }
}

async fn upstream_failed(state: &AppState, record: Record, error: ApiError) -> Response {
    let headers = record.headers();
    let interaction =
        record.finish(Outcome::UpstreamError, error.status.as_u16(), Some(error.message.clone()), "", &[]);
    state.record(interaction, None).await;
    let mut response = error.into_response();
    response.headers_mut().extend(headers);
    response
}

fn usage_of(body: &Value) -> Tokens {
    Tokens { prompt: body["usage"]["prompt_tokens"].as_u64(), completion: body["usage"]["completion_tokens"].as_u64() }
}

async fn whole_answer(
    state: &AppState,
    mut record: Record,
    response: reqwest::Response,
    upstream: usize,
    upstream_started: Instant,
    lang: Lang,
) -> Response {
    let read = tokio::time::timeout(state.upstreams().timeout(upstream), response.bytes()).await;
    record.upstream_ms = upstream_started.elapsed().as_secs_f64() * 1000.0;
    let bytes = match read {
        Err(_) => {
            return upstream_failed(
                state,
                record,
                ApiError::gateway_timeout("upstream did not finish its answer in time"),
            )
            .await
        }
        Ok(Err(e)) => {
            return upstream_failed(
                state,
                record,
                ApiError::bad_gateway(format!("reading the upstream answer failed: {e}")),
            )
            .await
        }
        Ok(Ok(bytes)) => bytes,
    };
    let Ok(mut answer) = serde_json::from_slice::<Value>(&bytes) else {
        return upstream_failed(state, record, ApiError::bad_gateway("upstream answered with invalid JSON")).await;
    };
    record.tokens = usage_of(&answer);
    let policy = record.policy.clone();
    let ctx = Context { app: &record.caller.app, model: &record.model, lang };
    let mut original = String::new();
    let mut output_results: Vec<CheckResult> = Vec::new();
    let mut strongest: Option<Decision> = None;
    let mut handoff_reason = None;
    let choices = answer["choices"].as_array_mut().map(std::mem::take).unwrap_or_default();
    let mut rewritten = Vec::with_capacity(choices.len());
    for mut choice in choices {
        if let Some(text) = choice["message"]["content"].as_str().map(str::to_string) {
            let judged = blocking(policy.has_model_checks(), || {
                policy.judge(Phase::Output, &[TextPart { message: None, text: &text }], &ctx)
            });
            match judged.decision.action {
                Action::Block | Action::Escalate => {
                    choice["message"] =
                        json!({"role": "assistant", "content": judged.reply.clone().unwrap_or_default()});
                    choice["finish_reason"] = json!("stop");
                    if judged.decision.action == Action::Escalate {
                        handoff_reason = Some(judged.decision.reason.clone());
                    }
                }
                Action::Redact => {
                    if let Some(Some(redacted)) = judged.redacted.first() {
                        choice["message"]["content"] = Value::String(redacted.clone());
                    }
                }
                Action::Allow | Action::Flag => {}
            }
            if strongest.as_ref().is_none_or(|s| judged.decision.action > s.action) {
                strongest = Some(judged.decision);
            }
            output_results.extend(judged.results);
            original.push_str(&text);
        }
        rewritten.push(choice);
    }
    answer["choices"] = Value::Array(rewritten);
    if let Some(decision) = strongest.filter(|_| policy.has_checks(Phase::Output)) {
        record.decisions.push(decision);
    }
    let pii: Vec<Finding> = pii_findings(&output_results).into_iter().cloned().collect();
    record.checks.extend(output_results);
    let headers = record.headers();
    let id = record.id;
    let app = record.caller.app.clone();
    let after = record.after_answer();
    let pii_refs: Vec<&Finding> = pii.iter().collect();
    let interaction = record.finish(Outcome::Completed, 200, None, &original, &pii_refs);
    let handoff = handoff_reason.map(|reason| HandoffRequest {
        interaction_id: id,
        app,
        created_at: interaction.created_at,
        reason,
    });
    record_after_answer(state, after, interaction, handoff, original).await;
    (headers, axum::Json(answer)).into_response()
}

/// Streams the answer through the output guards.
fn stream_answer(
    state: AppState,
    record: Record,
    response: reqwest::Response,
    upstream: usize,
    upstream_started: Instant,
    lang: Lang,
) -> Response {
    let mut headers = record.headers();
    headers.insert("content-type", HeaderValue::from_static("text/event-stream"));
    headers.insert("cache-control", HeaderValue::from_static("no-cache"));
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let gap = state.upstreams().timeout(upstream);
    tokio::spawn(async move {
        let pump = StreamPump::new(record, lang, tx);
        pump.run(state, response, gap, upstream_started).await;
    });
    let body =
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, std::convert::Infallible>));
    (headers, body).into_response()
}

/// Moves one streamed answer from the upstream to the client through the guards.
struct StreamPump {
    record: Record,
    lang: Lang,
    tx: mpsc::Sender<Bytes>,
    guards: BTreeMap<u64, StreamGuard>,
    plain: BTreeMap<u64, String>,
    guarded: bool,
    client_gone: bool,
    chunk_id: String,
}

enum Flow {
    Continue,
    Done,
}

impl StreamPump {
    fn new(record: Record, lang: Lang, tx: mpsc::Sender<Bytes>) -> Self {
        let guarded = record.policy.has_checks(Phase::Output);
        let chunk_id = format!("chatcmpl-keel-{}", record.id);
        StreamPump {
            record,
            lang,
            tx,
            guards: BTreeMap::new(),
            plain: BTreeMap::new(),
            guarded,
            client_gone: false,
            chunk_id,
        }
    }

    async fn send(&mut self, bytes: Bytes) {
        if !self.client_gone && self.tx.send(bytes).await.is_err() {
            self.client_gone = true;
        }
    }

    fn guard(&mut self, index: u64) -> &mut StreamGuard {
        let policy = self.record.policy.clone();
        let (app, model, lang) = (self.record.caller.app.clone(), self.record.model.clone(), self.lang);
        self.guards.entry(index).or_insert_with(|| StreamGuard::new(policy, &app, &model, lang))
    }

    async fn run(
        mut self,
        state: AppState,
        response: reqwest::Response,
        gap: std::time::Duration,
        upstream_started: Instant,
    ) {
        let mut parser = SseParser::new();
        let mut upstream = response.bytes_stream();
        let mut error: Option<String> = None;
        let mut done = false;
        while !done && !self.client_gone {
            let next = tokio::time::timeout(gap, upstream.next()).await;
            let events = match next {
                Err(_) => {
                    error = Some(format!("upstream sent nothing for {} ms", gap.as_millis()));
                    break;
                }
                Ok(None) => match parser.finish() {
                    Ok(last) => {
                        done = true;
                        last.into_iter().collect()
                    }
                    Err(e) => {
                        error = Some(e.to_string());
                        break;
                    }
                },
                Ok(Some(Err(e))) => {
                    error = Some(format!("upstream stream broke: {e}"));
                    break;
                }
                Ok(Some(Ok(bytes))) => match parser.push(&bytes) {
                    Ok(events) => events,
                    Err(e) => {
                        error = Some(e.to_string());
                        break;
                    }
                },
            };
            for data in events {
                if let Flow::Done = self.event(&data).await {
                    done = true;
                    break;
                }
            }
        }
        self.record.upstream_ms = upstream_started.elapsed().as_secs_f64() * 1000.0;
        let stopped = self.guards.values().any(StreamGuard::stopped);
        if !stopped && !self.client_gone {
            self.flush_guards().await;
        }
        if let Some(message) = &error {
            let body = json!({"error": {"message": message, "type": "api_error", "code": "upstream_error"}});
            self.send(sse_data(&body.to_string())).await;
        }
        self.finish(state, error).await;
    }

    /// Handles one upstream event; `Done` ends the stream.
    async fn event(&mut self, data: &str) -> Flow {
        if data.trim() == "[DONE]" {
            return Flow::Done;
        }
        let Ok(mut chunk) = serde_json::from_str::<Value>(data) else {
            if self.guarded {
                tracing::warn!(interaction = %self.record.id, "dropping an unparseable upstream chunk: it cannot be checked");
            } else {
                self.send(sse_data(data)).await;
            }
            return Flow::Continue;
        };
        if chunk.get("usage").is_some_and(|u| !u.is_null()) {
            let usage = usage_of(&chunk);
            self.record.tokens = usage;
        }
        let mut stop: Option<(u64, String)> = None;
        let mut send = false;
        if let Some(choices) = chunk["choices"].as_array_mut() {
            for choice in choices.iter_mut() {
                let index = choice["index"].as_u64().unwrap_or(0);
                let content = choice["delta"]["content"].as_str().map(str::to_string);
                let finishing = !choice["finish_reason"].is_null();
                if !self.guarded {
                    if let Some(text) = &content {
                        self.plain.entry(index).or_default().push_str(text);
                    }
                    send = true;
                    continue;
                }
                let mut release = String::new();
                if let Some(text) = &content {
                    let step = self.guard(index).push(text);
                    release.push_str(&step.release);
                    if let Some(reply) = step.stop {
                        stop = Some((index, reply));
                        break;
                    }
                }
                if finishing {
                    let heavy = self.record.policy.has_model_checks();
                    let guard = self.guard(index);
                    let step = blocking(heavy, || guard.finish());
                    release.push_str(&step.release);
                    if let Some(reply) = step.stop {
                        stop = Some((index, reply));
                        break;
                    }
                }
                let has_other = choice["delta"].as_object().is_some_and(|d| d.keys().any(|k| k != "content"));
                if content.is_some() || !release.is_empty() {
                    choice["delta"]["content"] = Value::String(release.clone());
                }
                if !release.is_empty() || has_other || finishing {
                    send = true;
                }
            }
        } else {
            send = true;
        }
        if let Some((index, reply)) = stop {
            self.stop_with(index, &reply).await;
            return Flow::Done;
        }
        if send {
            self.send(sse_data(&chunk.to_string())).await;
        }
        Flow::Continue
    }

    async fn stop_with(&mut self, index: u64, reply: &str) {
        let model = self.record.model.clone();
        let chunk = chunk_body(&self.chunk_id, &model, index, json!({"content": reply}), json!("stop"));
        self.send(sse_data(&chunk.to_string())).await;
    }

    /// Releases what the guards still hold at the end of the stream.
    async fn flush_guards(&mut self) {
        let indices: Vec<u64> = self.guards.keys().copied().collect();
        for index in indices {
            let heavy = self.record.policy.has_model_checks();
            let guard = self.guard(index);
            let step = blocking(heavy, || guard.finish());
            if let Some(reply) = step.stop {
                self.stop_with(index, &reply).await;
                return;
            }
            if !step.release.is_empty() {
                let model = self.record.model.clone();
                let chunk = chunk_body(&self.chunk_id, &model, index, json!({"content": step.release}), Value::Null);
                self.send(sse_data(&chunk.to_string())).await;
            }
        }
    }

    async fn finish(mut self, state: AppState, error: Option<String>) {
        let mut output_results = Vec::new();
        let mut strongest: Option<Decision> = None;
        let mut original = String::new();
        let mut reply_escalated = None;
        for guard in self.guards.values() {
            original.push_str(guard.original());
            output_results.extend(guard.results());
            if let Some(verdict) = guard.verdict() {
                if verdict.decision.action == Action::Escalate {
                    reply_escalated = Some(verdict.decision.reason.clone());
                }
                if strongest.as_ref().is_none_or(|s| verdict.decision.action > s.action) {
                    strongest = Some(verdict.decision.clone());
                }
            }
        }
        for text in self.plain.values() {
            original.push_str(text);
        }
        if let Some(decision) = strongest {
            self.record.decisions.push(decision);
        }
        let action = self.record.decision();
        self.send(Bytes::from(format!(": keel-decision {action}\n\n"))).await;
        self.send(sse_data("[DONE]")).await;
        let outcome = match (&error, self.client_gone) {
            (Some(_), _) => Outcome::UpstreamError,
            (None, true) => Outcome::ClientGone,
            (None, false) => Outcome::Completed,
        };
        let pii: Vec<Finding> = pii_findings(&output_results).into_iter().cloned().collect();
        self.record.checks.extend(output_results);
        let id = self.record.id;
        let app = self.record.caller.app.clone();
        let after = self.record.after_answer();
        let pii_refs: Vec<&Finding> = pii.iter().collect();
        let status = if error.is_some() { 502 } else { 200 };
        let interaction = self.record.finish(outcome, status, error, &original, &pii_refs);
        let handoff = reply_escalated.map(|reason| HandoffRequest {
            interaction_id: id,
            app,
            created_at: interaction.created_at,
            reason,
        });
        record_after_answer(&state, after, interaction, handoff, original).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_field() {
        let err = |body: &str| validate(body.as_bytes()).err().unwrap();
        assert_eq!(err("{").status, StatusCode::BAD_REQUEST);
        assert_eq!(err("[]").message, "request body must be a JSON object");
        assert_eq!(err(r#"{"messages":[{"role":"user","content":"x"}]}"#).param.as_deref(), Some("model"));
        assert_eq!(err(r#"{"model":1,"messages":[]}"#).param.as_deref(), Some("model"));
        assert_eq!(err(r#"{"model":"m","messages":[]}"#).param.as_deref(), Some("messages"));
        assert_eq!(
            err(r#"{"model":"m","messages":[{"role":"user","content":5}]}"#).param.as_deref(),
            Some("messages[0].content")
        );
        assert_eq!(
            err(r#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#).param.as_deref(),
            Some("messages[0].role")
        );
        assert_eq!(
            err(r#"{"model":"m","stream":"yes","messages":[{"role":"user","content":"x"}]}"#).param.as_deref(),
            Some("stream")
        );
        assert_eq!(
            err(r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":3}]}]}"#).param.as_deref(),
            Some("messages[0].content[0].text")
        );
        assert!(validate(br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"x_custom":{"a":1}}"#).is_ok());
    }

    #[test]
    fn input_parts_read_user_and_tool_texts_only() {
        let body = json!({"messages": [
            {"role": "system", "content": "be nice"},
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "hi"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}}, {"type": "text", "text": "b"}]},
            {"role": "tool", "content": "result", "tool_call_id": "1"}
        ]});
        let parts = input_parts(&body);
        let texts: Vec<&str> = parts.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(texts, vec!["hello", "a", "b", "result"]);
        assert_eq!(parts[2].0, PartRef { message: 3, content_part: Some(2) });
        let mut body = body;
        set_part(&mut body, parts[2].0, "B".into());
        assert_eq!(body["messages"][3]["content"][2]["text"], "B");
    }
}
