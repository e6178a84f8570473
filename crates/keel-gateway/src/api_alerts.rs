//! Drift alerts under `/api/alerts` (listing, one alert with its deliveries, acknowledge,
//! resolve) and `/metrics`.
//!
//! Reads leave an `admin.read` audit record; acknowledge and resolve are audited by the store
//! in the same transaction as the change (actor = the key's name). Until roles exist every
//! alert route takes an admin key; the intended matrix is viewer for reads, reviewer for
//! acknowledge, admin for resolve.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use keel_monitor::{AlertAction, AlertState};
use keel_store::{AlertFilter, StoreError};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::audit_admin;
use crate::auth::require;
use crate::error::ApiError;
use crate::state::AppState;
use keel_core::Permission;

/// Query parameters of `GET /api/alerts`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertQuery {
    state: Option<String>,
    detector: Option<String>,
    limit: Option<u32>,
    before: Option<i64>,
}

/// `GET /api/alerts?state=&detector=&limit=&before=`: newest first.
pub async fn list_alerts(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    query: Result<Query<AlertQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let caller = require(&state, &headers, Permission::ReadAlerts).await?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let filter = AlertFilter {
        state: query
            .state
            .as_deref()
            .map(|s| s.parse::<AlertState>().map_err(|e| ApiError::invalid("state", e)))
            .transpose()?,
        detector: query.detector,
        limit: query.limit,
        before: query.before,
    };
    audit_admin(&state, &caller, &uri).await?;
    let alerts = state.store().list_alerts(&filter).await.map_err(ApiError::internal)?;
    let next = (alerts.len() as u32 == filter.effective_limit()).then(|| alerts.last().map(|a| a.id)).flatten();
    Ok(Json(json!({"object": "list", "data": alerts, "next_before": next})))
}

fn alert_id(id: &str) -> Result<i64, ApiError> {
    id.parse().map_err(|_| ApiError::invalid("id", format!("`{id}` is not an alert id (a number)")))
}

/// `GET /api/alerts/{id}`: the alert and every delivery attempt made for it.
pub async fn get_alert(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = require(&state, &headers, Permission::ReadAlerts).await?;
    let id = alert_id(&id)?;
    audit_admin(&state, &caller, &uri).await?;
    let alert = state
        .store()
        .get_alert(id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(Some("id"), format!("no drift alert with id {id}")))?;
    let deliveries = state.store().alert_deliveries(id).await.map_err(ApiError::internal)?;
    Ok(Json(json!({"alert": alert, "deliveries": deliveries})))
}

async fn transition(
    state: &AppState,
    headers: &HeaderMap,
    id: &str,
    action: AlertAction,
) -> Result<Json<Value>, ApiError> {
    let permission = match action {
        AlertAction::Acknowledge => Permission::AcknowledgeAlerts,
        AlertAction::Resolve => Permission::ResolveAlerts,
    };
    let caller = require(state, headers, permission).await?;
    let id = alert_id(id)?;
    match state.store().transition_alert(id, action, caller.actor()).await {
        Ok(alert) => Ok(Json(json!({"alert": alert}))),
        Err(StoreError::AlertNotFound(_)) => {
            Err(ApiError::not_found(Some("id"), format!("no drift alert with id {id}")))
        }
        Err(e @ StoreError::IllegalAlertTransition { .. }) => Err(ApiError::conflict(e.to_string())),
        Err(e) => Err(ApiError::internal(e)),
    }
}

/// `POST /api/alerts/{id}/acknowledge`: `open → acknowledged`; 409 from any other state.
pub async fn acknowledge(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    transition(&state, &headers, &id, AlertAction::Acknowledge).await
}

/// `POST /api/alerts/{id}/resolve`: `open | acknowledged → resolved`; 409 when resolved.
pub async fn resolve(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    transition(&state, &headers, &id, AlertAction::Resolve).await
}

/// `GET /metrics`: open when the API is (no keys or tokens, loopback only), else a key or token
/// with the `viewer` role or above. Scrapes are not audited: a scraper every 15 s would drown the log.
pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    require(&state, &headers, Permission::ReadMetrics).await?;
    let text = state.metrics().encode(state.writer().queue_depth()).map_err(ApiError::internal)?;
    Ok(([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response())
}
