//! Feedback, handoffs, ingest and KPIs under `/api/`:
//! `POST /api/feedback`, `POST /api/handoffs/{id}/{requested|taken|resolved}`,
//! `POST /api/ingest` and `GET /api/kpi`.
//!
//! Feedback, handoff events and ingest are app-scoped: a client key acts only for its own
//! app (403 otherwise). Stored events are audited by the store in the same transaction.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use keel_core::{InteractionId, Permission};
use keel_monitor::kpi::BucketWidth;
use keel_store::{Feedback, HandoffStep, KpiRange, NewFeedback, NewHandoffEvent, Thumbs};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::api::{audit_admin, parse_time};
use crate::auth::{require, Principal};
use crate::error::ApiError;
use crate::ingest::Ingest;
use crate::kpi::{report, DEFAULT_CONFIDENCE};
use crate::state::AppState;

/// Largest ingest body accepted: a batch of logs is far larger than one chat request.
pub const MAX_INGEST_BYTES: usize = 64 * 1024 * 1024;

async fn body_bytes(body: Body, limit: usize) -> Result<axum::body::Bytes, ApiError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError::too_large(limit)),
        Err(e) => Err(ApiError::bad_request(format!("could not read the request body: {e}"))),
    }
}

/// The body as a JSON object, refusing fields not in `allowed`.
async fn json_object(body: Body, limit: usize, allowed: &[&str]) -> Result<Map<String, Value>, ApiError> {
    let bytes = body_bytes(body, limit).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(format!("request body is not valid JSON (line {}, column {}): {e}", e.line(), e.column()))
    })?;
    let Value::Object(object) = value else { return Err(ApiError::bad_request("request body must be a JSON object")) };
    if let Some(key) = object.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::invalid(key.clone(), format!("unknown field `{key}` (expected {})", allowed.join(", "))));
    }
    Ok(object)
}

fn string_field(object: &Map<String, Value>, field: &str) -> Result<Option<String>, ApiError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ApiError::invalid(field, format!("`{field}` must be a string, got {other}"))),
    }
}

fn required_string(object: &Map<String, Value>, field: &str) -> Result<String, ApiError> {
    string_field(object, field)?.ok_or_else(|| ApiError::invalid(field, format!("missing required field `{field}`")))
}

fn interaction_id(field: &str, text: &str) -> Result<InteractionId, ApiError> {
    text.parse().map_err(|_| ApiError::invalid(field, format!("`{text}` is not an interaction id (a UUID)")))
}

fn time_field(object: &Map<String, Value>, field: &str) -> Result<Option<OffsetDateTime>, ApiError> {
    string_field(object, field)?
        .map(|t| {
            OffsetDateTime::parse(&t, &Rfc3339)
                .map_err(|e| ApiError::invalid(field, format!("`{field}` must be an RFC 3339 time: {e}")))
        })
        .transpose()
}

/// How long feedback for an interaction that is not stored yet waits for the gateway's
/// background tasks (async checks, the shadow policy) to hand it to the writer.
const PENDING_RECORD_WAIT: Duration = Duration::from_secs(2);

/// The app of a stored interaction (404 when it is not stored), checked against the caller.
/// An interaction answered a moment ago may still be in the writer's queue (flush), or, when
/// the policy has async checks or a shadow version, still being judged in the background:
/// a client that sends feedback right after the answer must not get a 404 for it.
async fn app_of(state: &AppState, caller: &Principal, field: &str, id: InteractionId) -> Result<String, ApiError> {
    let mut found = state.store().get_interaction(id).await.map_err(ApiError::internal)?;
    let deadline = tokio::time::Instant::now() + PENDING_RECORD_WAIT;
    let mut first = true;
    while found.is_none() && (first || (!state.tasks().is_empty() && tokio::time::Instant::now() < deadline)) {
        if !first {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        first = false;
        state.writer().flush().await.map_err(ApiError::internal)?;
        found = state.store().get_interaction(id).await.map_err(ApiError::internal)?;
    }
    let interaction = found.ok_or_else(|| ApiError::not_found(Some(field), format!("no interaction with id {id}")))?;
    caller.check_app(&interaction.app)?;
    Ok(interaction.app)
}

/// `POST /api/feedback` with `{"event_id", "interaction_id", "satisfaction"?: 1..5,
/// "thumbs"?: "up"|"down", "wrong_answer"?: bool, "comment"?: string}`: 201 when stored,
/// 200 with `duplicate: true` when the same event was stored before.
pub async fn feedback(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let caller = require(&state, &headers, Permission::SendFeedback).await?;
    let object = json_object(
        body,
        state.settings().max_body_bytes,
        &["event_id", "interaction_id", "satisfaction", "thumbs", "wrong_answer", "comment"],
    )
    .await?;
    let event_id = required_string(&object, "event_id")?;
    let id = interaction_id("interaction_id", &required_string(&object, "interaction_id")?)?;
    let satisfaction = match object.get("satisfaction") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(s @ 1..=5) => Some(s as u8),
            _ => {
                return Err(ApiError::invalid(
                    "satisfaction",
                    format!("`satisfaction` must be a whole number from 1 to 5, got {v}"),
                ))
            }
        },
    };
    let thumbs = string_field(&object, "thumbs")?
        .map(|t| t.parse::<Thumbs>().map_err(|e| ApiError::invalid("thumbs", format!("`thumbs`: {e}"))))
        .transpose()?;
    let wrong_answer = match object.get("wrong_answer") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(v) => {
            return Err(ApiError::invalid("wrong_answer", format!("`wrong_answer` must be true or false, got {v}")))
        }
    };
    let event = NewFeedback {
        event_id,
        interaction_id: id,
        satisfaction,
        thumbs,
        wrong_answer,
        comment: string_field(&object, "comment")?,
        actor: caller.actor().to_owned(),
        created_at: OffsetDateTime::now_utc(),
    };
    event.validate().map_err(ApiError::from_change)?;
    app_of(&state, &caller, "interaction_id", id).await?;
    let outcome = state.store().record_feedback(vec![event]).await.map_err(ApiError::internal)?;
    let receipt = outcome
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::internal("the store answered no feedback outcome"))?
        .map_err(ApiError::from_change)?;
    let case =
        if receipt.duplicate { None } else { open_feedback_case(&state, &receipt.event, caller.actor()).await? };
    let status = if receipt.duplicate { StatusCode::OK } else { StatusCode::CREATED };
    let body = json!({
        "object": "feedback",
        "duplicate": receipt.duplicate,
        "feedback": receipt.event,
        "review_case": case,
    });
    Ok((status, Json(body)).into_response())
}

/// Opens the review case a new feedback event calls for (a wrong-answer report or a low
/// score), if any; the id of the case, which may have been open already.
async fn open_feedback_case(state: &AppState, feedback: &Feedback, actor: &str) -> Result<Option<i64>, ApiError> {
    let Some(case) = state.settings().review.case_for_feedback(feedback, OffsetDateTime::now_utc()) else {
        return Ok(None);
    };
    let (case, _opened) = state.store().open_case(case, actor).await.map_err(ApiError::from_change)?;
    Ok(Some(case.id))
}

/// `POST /api/handoffs/{interaction id}/{requested|taken|resolved}` with `{"event_id",
/// "reason"?, "at"?}`: 201 when stored, 200 with `duplicate: true` for a repeated event.
pub async fn handoff(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id, step)): Path<(String, String)>,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = require(&state, &headers, Permission::SendFeedback).await?;
    let step: HandoffStep = step.parse().map_err(|e: String| ApiError::invalid("event", e))?;
    let id = interaction_id("id", &id)?;
    let object = json_object(body, state.settings().max_body_bytes, &["event_id", "reason", "at"]).await?;
    let event = NewHandoffEvent {
        event_id: required_string(&object, "event_id")?,
        interaction_id: id,
        step,
        reason: string_field(&object, "reason")?,
        actor: caller.actor().to_owned(),
        at: time_field(&object, "at")?.unwrap_or_else(OffsetDateTime::now_utc),
    };
    keel_store::feedback::check_event_id(&event.event_id).map_err(ApiError::from_change)?;
    app_of(&state, &caller, "id", id).await?;
    let receipt = state.store().record_handoff_event(event).await.map_err(ApiError::from_change)?;
    let status = if receipt.duplicate { StatusCode::OK } else { StatusCode::CREATED };
    let body = json!({"object": "handoff_event", "duplicate": receipt.duplicate, "event": receipt.event});
    Ok((status, Json(body)).into_response())
}

/// Query parameters of `POST /api/ingest`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestQuery {
    app: Option<String>,
}

/// `POST /api/ingest?app=` with JSONL or a JSON array of interactions (see [`crate::ingest`]):
/// `{"ingested", "duplicates", "feedback", "errors": [{"line", "field", "message"}]}`, 200 when
/// any line was ingested or already stored, 400 when every line failed.
pub async fn ingest(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<IngestQuery>, axum::extract::rejection::QueryRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = require(&state, &headers, Permission::Ingest).await?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if let Some(app) = &query.app {
        caller.check_app(app)?;
    }
    let bytes = body_bytes(body, MAX_INGEST_BYTES).await?;
    let text = std::str::from_utf8(&bytes).map_err(|e| ApiError::bad_request(format!("the body is not UTF-8: {e}")))?;
    if text.trim().is_empty() {
        return Err(ApiError::bad_request("the body holds no interactions (send JSONL or a JSON array)"));
    }
    let only_app = caller.app_scope().map(str::to_owned);
    let default_app = query.app.clone().or_else(|| only_app.clone());
    let for_policy = state.clone();
    let policy = move |app: &str, key: &str| -> Result<Arc<keel_policy::Policy>, String> {
        for_policy.select_policy(app, key).map(|s| s.enforce).map_err(|e| e.message)
    };
    let for_privacy = state.clone();
    let privacy = move |app: &str| for_privacy.settings().privacy_of(app);
    let run = Ingest {
        store: state.store().as_ref(),
        writer: state.writer(),
        policy: &policy,
        privacy: &privacy,
        default_app: default_app.as_deref(),
        only_app: only_app.as_deref(),
        actor: caller.actor(),
        review: &state.settings().review,
    };
    let report = run.run(text, 1).await.map_err(ApiError::internal)?;
    let mut body = serde_json::to_value(&report).map_err(ApiError::internal)?;
    if report.ingested == 0 && report.duplicates == 0 {
        let error = ApiError::bad_request("no interaction could be ingested; see `errors`");
        body["error"] = error.body()["error"].clone();
        return Ok((StatusCode::BAD_REQUEST, Json(body)).into_response());
    }
    Ok((StatusCode::OK, Json(body)).into_response())
}

/// Query parameters of `GET /api/kpi`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KpiQuery {
    app: Option<String>,
    since: Option<String>,
    until: Option<String>,
    bucket: Option<String>,
    confidence: Option<f64>,
}

/// `GET /api/kpi?app=&since=7d&until=&bucket=day&confidence=0.95`: the [`crate::kpi::KpiReport`].
pub async fn kpi(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    query: Result<Query<KpiQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let caller = require(&state, &headers, Permission::ReadKpi).await?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if let Some(app) = &query.app {
        caller.check_app(app)?;
    }
    let until =
        query.until.as_deref().map(|v| parse_time("until", v)).transpose()?.unwrap_or_else(OffsetDateTime::now_utc);
    let since = parse_time("since", query.since.as_deref().unwrap_or("7d"))?;
    if since >= until {
        return Err(ApiError::invalid("since", "`since` must be before `until`"));
    }
    let bucket = query
        .bucket
        .as_deref()
        .map(|b| b.parse::<BucketWidth>().map_err(|e| ApiError::invalid("bucket", e)))
        .transpose()?
        .unwrap_or(BucketWidth::Day);
    let confidence = query.confidence.unwrap_or(DEFAULT_CONFIDENCE);
    if !(confidence > 0.0 && confidence < 1.0) {
        return Err(ApiError::invalid("confidence", format!("`confidence` must be between 0 and 1, got {confidence}")));
    }
    audit_admin(&state, &caller, &uri).await?;
    let range = KpiRange { app: query.app.or_else(|| caller.app_scope().map(str::to_owned)), since, until };
    let report = report(state.store().as_ref(), range, bucket, confidence).await.map_err(ApiError::internal)?;
    Ok(Json(serde_json::to_value(report).map_err(ApiError::internal)?))
}
