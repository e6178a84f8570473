//! `/api/tokens`: admin tokens over HTTP (`manage_tokens`, role admin). The CLI
//! (`keel token …`) does the same against the store directly.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::Json;
use keel_core::{Permission, Role};
use keel_store::TokenInfo;
use serde_json::{json, Map, Value};

use crate::api::audit_admin;
use crate::auth::require;
use crate::error::ApiError;
use crate::state::AppState;

/// The fields of a JSON object body; 400 naming the problem otherwise.
pub(crate) fn object_body(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request("the request body must be a JSON object")),
        Err(e) => Err(ApiError::bad_request(format!(
            "the request body is not valid JSON (line {}, column {}): {e}",
            e.line(),
            e.column()
        ))),
    }
}

/// A required string field of a JSON object body.
pub(crate) fn string_field(body: &Map<String, Value>, field: &str) -> Result<String, ApiError> {
    match body.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => Err(ApiError::invalid(field, format!("`{field}` must not be empty"))),
        Some(_) => Err(ApiError::invalid(field, format!("`{field}` must be a string"))),
        None => Err(ApiError::invalid(field, format!("missing required field `{field}`"))),
    }
}

fn token_json(info: &TokenInfo) -> Value {
    serde_json::to_value(info).unwrap_or(Value::Null)
}

/// `GET /api/tokens`: every token, revoked ones included, without secrets.
pub async fn list_tokens(State(state): State<AppState>, headers: HeaderMap, uri: Uri) -> Result<Json<Value>, ApiError> {
    let caller = require(&state, &headers, Permission::ManageTokens).await?;
    audit_admin(&state, &caller, &uri).await?;
    let tokens = state.store().list_tokens().await.map_err(ApiError::internal)?;
    Ok(Json(json!({"object": "list", "data": tokens.iter().map(token_json).collect::<Vec<_>>()})))
}

/// `POST /api/tokens` with `{"name": N, "role": R}`: a new token, shown once in `token`.
pub async fn create_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let caller = require(&state, &headers, Permission::ManageTokens).await?;
    let body = object_body(&body)?;
    let name = string_field(&body, "name")?;
    let role: Role = string_field(&body, "role")?.parse().map_err(|e: String| ApiError::invalid("role", e))?;
    let issued = state.store().create_token(&name, role, caller.actor()).await.map_err(ApiError::from_change)?;
    state.refresh_access().await.map_err(ApiError::internal)?;
    let mut out = token_json(&issued.info);
    out["token"] = Value::String(issued.token);
    Ok((StatusCode::CREATED, Json(out)))
}

/// `POST /api/tokens/{name}/revoke`: the token stops working on every gateway within seconds.
pub async fn revoke_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = require(&state, &headers, Permission::ManageTokens).await?;
    let info = state.store().revoke_token(&name, caller.actor()).await.map_err(ApiError::from_change)?;
    state.refresh_access().await.map_err(ApiError::internal)?;
    Ok(Json(token_json(&info)))
}
