//! Keel's own API under `/api/`: reading stored interactions with their explanations.
//! Every call needs `read_interactions` (any role) and leaves an audit record naming the caller.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Uri};
use axum::Json;
use keel_core::{Action, InteractionId, Permission};
use keel_store::{AuditEntry, InteractionFilter};
use serde::Deserialize;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::auth::{require, Principal};
use crate::error::ApiError;
use crate::state::AppState;

/// Query parameters of `GET /api/interactions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    since: Option<String>,
    until: Option<String>,
    app: Option<String>,
    action: Option<String>,
    check: Option<String>,
    limit: Option<u32>,
    before: Option<String>,
}

pub(crate) fn parse_time(field: &str, value: &str) -> Result<OffsetDateTime, ApiError> {
    if let Ok(at) = OffsetDateTime::parse(value, &Rfc3339) {
        return Ok(at);
    }
    // Relative forms: 30m, 12h, 7d — that long ago.
    let (number, unit) = value.split_at(value.len().saturating_sub(1));
    let amount: i64 = number.parse().map_err(|_| {
        ApiError::invalid(field, format!("`{value}` is neither an RFC 3339 time nor a duration like 30m, 12h or 7d"))
    })?;
    let seconds = match unit {
        "s" => amount,
        "m" => amount * 60,
        "h" => amount * 3600,
        "d" => amount * 86_400,
        _ => return Err(ApiError::invalid(field, format!("unknown duration unit in `{value}` (use s, m, h or d)"))),
    };
    Ok(OffsetDateTime::now_utc() - time::Duration::seconds(seconds))
}

/// Records the admin read, then waits until everything queued before it is stored, so a
/// client reading right after its own request sees that request.
pub(crate) async fn audit_admin(state: &AppState, caller: &Principal, uri: &Uri) -> Result<(), ApiError> {
    state.audit(AuditEntry::now(caller.actor(), "admin.read", json!({"path": uri.to_string()}))).await;
    state.writer().flush().await.map_err(ApiError::internal)
}

/// `GET /api/interactions?since=&until=&app=&action=&check=&limit=&before=`
pub async fn list_interactions(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let caller = require(&state, &headers, Permission::ReadInteractions).await?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let filter = InteractionFilter {
        since: query.since.as_deref().map(|v| parse_time("since", v)).transpose()?,
        until: query.until.as_deref().map(|v| parse_time("until", v)).transpose()?,
        app: query.app,
        action: query
            .action
            .as_deref()
            .map(|a| a.parse::<Action>().map_err(|e| ApiError::invalid("action", e)))
            .transpose()?,
        check: query.check,
        limit: query.limit,
        before: query
            .before
            .as_deref()
            .map(|b| {
                b.parse::<InteractionId>()
                    .map_err(|_| ApiError::invalid("before", "`before` must be an interaction id"))
            })
            .transpose()?,
    };
    audit_admin(&state, &caller, &uri).await?;
    let items = state.store().list_interactions(&filter).await.map_err(ApiError::internal)?;
    let next =
        (items.len() as u32 == filter.effective_limit()).then(|| items.last().map(|i| i.id.to_string())).flatten();
    Ok(Json(json!({"object": "list", "data": items, "next_before": next})))
}

/// `GET /api/interactions/{id}`: the whole interaction with its explanation.
pub async fn get_interaction(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = require(&state, &headers, Permission::ReadInteractions).await?;
    let id: InteractionId = id.parse().map_err(|_| ApiError::invalid("id", "not an interaction id"))?;
    audit_admin(&state, &caller, &uri).await?;
    match state.store().get_interaction(id).await.map_err(ApiError::internal)? {
        Some(interaction) => Ok(Json(json!({
            "interaction": interaction,
            "explanation": interaction.decisions.iter().map(|d| json!({
                "phase": d.phase, "action": d.action, "rule": d.rule, "condition": d.condition,
                "policy": d.policy.to_string(), "reason": d.reason, "evidence": d.evidence,
            })).collect::<Vec<_>>(),
        }))),
        None => Err(ApiError::not_found(Some("id"), format!("no interaction with id {id}"))),
    }
}
