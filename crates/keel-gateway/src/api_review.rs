//! The review queue under `/api/review`: listing cases, taking the next one (locked to the
//! caller), labelling, releasing, adjudicating, closing, and reviewer agreement.
//!
//! Reading needs `read_interactions` (and leaves an `admin.read` record); working cases needs
//! `review_cases`. Changes are audited by the store in the same transaction as the change,
//! with the caller's name as the actor.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Uri};
use axum::Json;
use keel_core::Permission;
use keel_store::review::agreement;
use keel_store::{CaseFilter, CaseReason, CaseStatus, NewLabel, ReviewCase};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::api::audit_admin;
use crate::auth::{require, Principal};
use crate::error::ApiError;
use crate::state::AppState;
use crate::tokens::object_body;

/// Query parameters of `GET /api/review/cases`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseQuery {
    status: Option<String>,
    reason: Option<String>,
    app: Option<String>,
    limit: Option<u32>,
}

/// Query parameters of `GET /api/review/agreement`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgreementQuery {
    app: Option<String>,
}

/// The app a caller's listing is restricted to: its own for a client key, else what it asked.
fn scoped_app(caller: &Principal, asked: Option<String>) -> Result<Option<String>, ApiError> {
    match (caller.app_scope(), asked) {
        (Some(own), Some(app)) => {
            caller.check_app(&app)?;
            Ok(Some(own.to_owned()))
        }
        (Some(own), None) => Ok(Some(own.to_owned())),
        (None, asked) => Ok(asked),
    }
}

/// `GET /api/review/cases?status=&reason=&app=&limit=`: by priority, then oldest first.
pub async fn list_cases(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    query: Result<Query<CaseQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let caller = require(&state, &headers, Permission::ReadInteractions).await?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let filter = CaseFilter {
        status: query
            .status
            .as_deref()
            .map(|s| s.parse::<CaseStatus>().map_err(|e| ApiError::invalid("status", e)))
            .transpose()?,
        reason: query
            .reason
            .as_deref()
            .map(|s| s.parse::<CaseReason>().map_err(|e| ApiError::invalid("reason", e)))
            .transpose()?,
        app: scoped_app(&caller, query.app)?,
        limit: query.limit,
        ..CaseFilter::default()
    };
    audit_admin(&state, &caller, &uri).await?;
    let cases = state.store().list_cases(&filter).await.map_err(ApiError::internal)?;
    Ok(Json(json!({"object": "list", "data": cases})))
}

fn case_id(id: &str) -> Result<i64, ApiError> {
    id.parse().map_err(|_| ApiError::invalid("id", format!("`{id}` is not a review case id (a number)")))
}

fn unknown(id: i64) -> ApiError {
    ApiError::not_found(Some("id"), format!("no review case with id {id}"))
}

/// The case with the interaction it is about and the decision's explanation.
async fn with_interaction(state: &AppState, case: ReviewCase) -> Result<Value, ApiError> {
    let interaction = state.store().get_interaction(case.interaction_id).await.map_err(ApiError::internal)?;
    let explanation: Vec<Value> = interaction
        .iter()
        .flat_map(|i| &i.decisions)
        .map(|d| {
            json!({
                "phase": d.phase, "action": d.action, "rule": d.rule, "condition": d.condition,
                "policy": d.policy.to_string(), "reason": d.reason, "evidence": d.evidence,
            })
        })
        .collect();
    Ok(json!({"case": case, "interaction": interaction, "explanation": explanation}))
}

/// `GET /api/review/cases/{id}`: the case, its labels, the interaction and its explanation.
pub async fn get_case(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = require(&state, &headers, Permission::ReadInteractions).await?;
    let id = case_id(&id)?;
    audit_admin(&state, &caller, &uri).await?;
    let case = state.store().get_case(id).await.map_err(ApiError::internal)?.ok_or_else(|| unknown(id))?;
    caller.check_app(&case.app)?;
    Ok(Json(with_interaction(&state, case).await?))
}

fn optional_string(body: &Map<String, Value>, field: &str) -> Result<Option<String>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::invalid(field, format!("`{field}` must be a string"))),
    }
}

fn empty_or_object(body: &Bytes) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        Ok(Map::new())
    } else {
        object_body(body)
    }
}

const LABEL_FIELDS: &[&str] = &["label", "category", "corrected", "should_have_said", "note", "second_review"];

/// A label from a request body, its required fields checked and named.
fn label_body(body: &Bytes) -> Result<NewLabel, ApiError> {
    let body = object_body(body)?;
    if let Some(unknown) = body.keys().find(|k| !LABEL_FIELDS.contains(&k.as_str())) {
        return Err(ApiError::invalid(
            unknown.clone(),
            format!("unknown field `{unknown}` (expected {})", LABEL_FIELDS.join(", ")),
        ));
    }
    let Some(label) = optional_string(&body, "label")? else {
        return Err(ApiError::invalid(
            "label",
            "missing required field `label` (ok, violation, wrong_answer or over_refusal)",
        ));
    };
    let mut new = NewLabel::from_parts(
        &label,
        optional_string(&body, "category")?,
        optional_string(&body, "corrected")?,
        optional_string(&body, "should_have_said")?,
        optional_string(&body, "note")?,
    )
    .map_err(ApiError::from_change)?;
    new.request_second = match body.get("second_review") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::invalid("second_review", "`second_review` must be true or false")),
    };
    Ok(new)
}

/// `POST /api/review/next` with `{"app"?: APP}`: takes and locks the case the caller should
/// work next (the one it holds, else the most urgent, oldest unlocked one); `{"case": null}`
/// when the queue is empty.
pub async fn next(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<Json<Value>, ApiError> {
    let caller = require(&state, &headers, Permission::ReviewCases).await?;
    let body = empty_or_object(&body)?;
    let app = scoped_app(&caller, optional_string(&body, "app")?)?;
    let lock = state.settings().review_lock;
    let taken = state.store().take_next_case(caller.actor(), app.as_deref(), lock).await.map_err(ApiError::internal)?;
    match taken {
        Some(case) => Ok(Json(with_interaction(&state, case).await?)),
        None => Ok(Json(json!({"case": null}))),
    }
}

async fn case_of_caller(state: &AppState, caller: &Principal, id: i64) -> Result<ReviewCase, ApiError> {
    let case = state.store().get_case(id).await.map_err(ApiError::internal)?.ok_or_else(|| unknown(id))?;
    caller.check_app(&case.app)?;
    Ok(case)
}

/// `POST /api/review/cases/{id}/label` with `{"label", "category"?, "corrected"?,
/// "should_have_said"?, "note"?, "second_review"?}`.
pub async fn label(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let caller = require(&state, &headers, Permission::ReviewCases).await?;
    let id = case_id(&id)?;
    let label = label_body(&body)?;
    case_of_caller(&state, &caller, id).await?;
    let case = state.store().label_case(id, label, caller.actor()).await.map_err(ApiError::from_change)?;
    Ok(Json(json!({"case": case})))
}

/// `POST /api/review/cases/{id}/release`: the holder gives the case back to the queue.
pub async fn release(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = require(&state, &headers, Permission::ReviewCases).await?;
    let id = case_id(&id)?;
    case_of_caller(&state, &caller, id).await?;
    let case = state.store().release_case(id, caller.actor()).await.map_err(ApiError::from_change)?;
    Ok(Json(json!({"case": case})))
}

/// `POST /api/review/cases/{id}/adjudicate` with a label body: the final label of a case whose
/// two reviews disagree, by someone who reviewed neither.
pub async fn adjudicate(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let caller = require(&state, &headers, Permission::ReviewCases).await?;
    let id = case_id(&id)?;
    let label = label_body(&body)?;
    case_of_caller(&state, &caller, id).await?;
    let case = state.store().adjudicate_case(id, label, caller.actor()).await.map_err(ApiError::from_change)?;
    Ok(Json(json!({"case": case})))
}

/// `POST /api/review/cases/{id}/close` with `{"reason"}`: out of the queue without a label.
pub async fn close(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let caller = require(&state, &headers, Permission::ReviewCases).await?;
    let id = case_id(&id)?;
    let body = object_body(&body)?;
    let reason = crate::tokens::string_field(&body, "reason")?;
    case_of_caller(&state, &caller, id).await?;
    let case = state.store().close_case(id, &reason, caller.actor()).await.map_err(ApiError::from_change)?;
    Ok(Json(json!({"case": case})))
}

/// `GET /api/review/agreement?app=`: Cohen's kappa between first and second reviews, overall
/// and per label and violation category.
pub async fn agreement_report(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    query: Result<Query<AgreementQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let caller = require(&state, &headers, Permission::ReadInteractions).await?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let app = scoped_app(&caller, query.app)?;
    audit_admin(&state, &caller, &uri).await?;
    let pairs = state.store().review_pairs(app.as_deref()).await.map_err(ApiError::internal)?;
    Ok(Json(json!({"agreement": agreement(&pairs)})))
}
