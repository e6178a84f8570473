//! `/api/policies…`: stored policy versions and their lifecycle over HTTP — list, show, add
//! a draft, approve, promote, withdraw, roll back, diff, and what a shadow would have done.
//! Changes act as the caller (token or key name), take effect on this gateway at once and on
//! the others within their poll interval. The CLI (`keel policy …`) does the same against
//! the store directly.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::Json;
use keel_core::{Permission, PolicyRef};
use keel_store::lifecycle::parse_policy_ref;
use keel_store::{NewPolicyVersion, PolicyStatus, PolicyVersion, Promotion};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::api::audit_admin;
use crate::auth::{require, Principal};
use crate::error::ApiError;
use crate::rollout::compile_version;
use crate::state::AppState;
use crate::tokens::{object_body, string_field};

/// A version without its text, for lists.
fn summary(version: &PolicyVersion) -> Value {
    let mut value = serde_json::to_value(version).unwrap_or(Value::Null);
    if let Some(map) = value.as_object_mut() {
        map.remove("source_text");
        map.insert("policy".into(), json!(version.reference().to_string()));
    }
    value
}

/// What this gateway runs now, and what apps bind to.
fn running(state: &AppState) -> Value {
    let rollout = state.rollout();
    let mut versions = Vec::new();
    for (name, slot) in rollout.names() {
        versions.push(json!({"name": name, "active": slot.active.reference().to_string(),
            "shadow": slot.shadow.as_ref().map(|p| p.reference().to_string()),
            "canary": slot.canary.as_ref().map(|c| json!({"policy": c.policy.reference().to_string(), "share": c.share}))}));
    }
    versions.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    json!({"default_policy": rollout.bindings().default_name, "apps": rollout.bindings().apps, "policies": versions})
}

async fn stored(state: &AppState, policy: &PolicyRef) -> Result<PolicyVersion, ApiError> {
    state.store().policy_version(policy).await.map_err(ApiError::internal)?.ok_or_else(|| {
        ApiError::not_found(Some("policy"), format!("no stored version {policy} (see GET /api/policies)"))
    })
}

fn reference(text: &str) -> Result<PolicyRef, ApiError> {
    parse_policy_ref(text).map_err(ApiError::from_change)
}

/// A stored version by `name@version`, or the active version of `name`.
async fn version_or_active(state: &AppState, text: &str, field: &str) -> Result<PolicyVersion, ApiError> {
    if text.contains('@') {
        let policy = parse_policy_ref(text).map_err(|e| ApiError::invalid(field, e.to_string()))?;
        return stored(state, &policy).await;
    }
    let versions = state.store().policy_versions(Some(text)).await.map_err(ApiError::internal)?;
    versions.into_iter().find(|v| v.status == PolicyStatus::Active).ok_or_else(|| {
        ApiError::not_found(Some(field), format!("`{text}` names no policy with an active version (use name@version)"))
    })
}

/// Applies the change on this gateway now, and says what it runs.
async fn applied(state: &AppState, changed: Value) -> Result<Json<Value>, ApiError> {
    state.refresh().await.map_err(ApiError::internal)?;
    Ok(Json(json!({"policy": changed, "running": running(state)})))
}

/// Query of `GET /api/policies`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    name: Option<String>,
}

/// `GET /api/policies[?name=N]`: stored versions (without texts) and what this gateway runs.
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let caller = require(&state, &headers, Permission::ReadPolicies).await?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    audit_admin(&state, &caller, &uri).await?;
    let versions = state.store().policy_versions(query.name.as_deref()).await.map_err(ApiError::internal)?;
    Ok(Json(
        json!({"object": "list", "data": versions.iter().map(summary).collect::<Vec<_>>(), "running": running(&state)}),
    ))
}

/// `GET /api/policies/{name}` (its versions) or `/api/policies/{name@version}`: the version
/// with its text, status changes, gate runs and shadow report.
pub async fn show(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Path(policy): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = require(&state, &headers, Permission::ReadPolicies).await?;
    audit_admin(&state, &caller, &uri).await?;
    if !policy.contains('@') {
        let versions = state.store().policy_versions(Some(&policy)).await.map_err(ApiError::internal)?;
        if versions.is_empty() {
            return Err(ApiError::not_found(Some("policy"), format!("no stored policy named `{policy}`")));
        }
        return Ok(Json(json!({"object": "list", "data": versions.iter().map(summary).collect::<Vec<_>>()})));
    }
    let policy = reference(&policy)?;
    let version = stored(&state, &policy).await?;
    let store = state.store();
    let transitions = store.policy_transitions(&policy).await.map_err(ApiError::internal)?;
    let gate_runs = store.gate_runs(&policy).await.map_err(ApiError::internal)?;
    let shadow = store.shadow_report(&policy, 5).await.map_err(ApiError::internal)?;
    Ok(Json(json!({"version": version, "policy": policy.to_string(), "transitions": transitions,
                   "gate_runs": gate_runs, "shadow": shadow})))
}

/// `POST /api/policies` with `{"source": TOML, "parent"?: VERSION, "origin"?: TEXT}`: a new
/// draft written by the caller (`parent` defaults to the one the text records, else the
/// active version). The text must be self-contained (no `extends` of a file) and
/// compile here; errors name the line (`source:12:8: rules[0].when: …`).
pub async fn add(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let caller = require(&state, &headers, Permission::WritePolicies).await?;
    let body = object_body(&body)?;
    let source = string_field(&body, "source")?;
    let parent = optional_string(&body, "parent")?;
    let origin = optional_string(&body, "origin")?.unwrap_or_else(|| "api".to_owned());
    match keel_policy::resolve::extends_a_file("source", &source) {
        Ok(false) => {}
        Ok(true) => {
            return Err(ApiError::invalid(
                "source",
                "the policy extends a file, which the API cannot read: send it resolved (`keel policy add FILE` does)",
            ))
        }
        Err(e) => return Err(ApiError::invalid("source", e.to_string())),
    }
    let policy = state.compiler().compile("source", &source).await.map_err(|e| ApiError::invalid("source", e))?;
    let reference = policy.reference();
    // A candidate records the version it derives from (`keel policy candidate`).
    let parent = parent.or_else(|| {
        policy.parent().and_then(|p| parse_policy_ref(p).ok()).filter(|p| p.name == reference.name).map(|p| p.version)
    });
    let new = NewPolicyVersion {
        name: reference.name,
        version: reference.version,
        source_text: source,
        parent_version: parent,
        origin,
    };
    let added = state.store().add_policy_version(new, caller.actor()).await.map_err(ApiError::from_change)?;
    Ok((StatusCode::CREATED, Json(json!({"policy": summary(&added)}))))
}

fn optional_string(body: &Map<String, Value>, field: &str) -> Result<Option<String>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::invalid(field, format!("`{field}` must be a non-empty string"))),
    }
}

/// A change's JSON body: `{}` when there is none.
fn change_body(body: &Bytes) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        Ok(Map::new())
    } else {
        object_body(body)
    }
}

/// `POST /api/policies/{name@version}/approve`: by someone other than its author.
pub async fn approve(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(policy): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = require(&state, &headers, Permission::ApprovePolicies).await?;
    let policy = reference(&policy)?;
    let approved =
        state.store().approve_policy_version(&policy, caller.actor()).await.map_err(ApiError::from_change)?;
    applied(&state, summary(&approved)).await
}

/// `POST /api/policies/{name@version}/promote` with `{"to"?: "shadow"|"canary"|"active",
/// "share"?: 0.1, "skip_gate"?: REASON}`; `to` defaults to canary when a share is given, else
/// to the next stage. Overriding the gate needs `override_gate` (role admin).
pub async fn promote(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(policy): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let caller = require(&state, &headers, Permission::PromotePolicies).await?;
    let policy = reference(&policy)?;
    let body = change_body(&body)?;
    let skip_gate = optional_string(&body, "skip_gate")?;
    if skip_gate.is_some() {
        check_override(&caller)?;
    }
    let share = match body.get("share") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_f64().ok_or_else(|| ApiError::invalid("share", "`share` must be a number like 0.1"))?),
    };
    let version = stored(&state, &policy).await?;
    let to = match optional_string(&body, "to")? {
        Some(to) => to.parse::<PolicyStatus>().map_err(|e| ApiError::invalid("to", e))?,
        None if share.is_some() => PolicyStatus::Canary,
        None => next_stage(version.status),
    };
    // Refuse here what this gateway could not run, before anything changes.
    compile_version(state.compiler().as_ref(), &version)
        .await
        .map_err(|e| ApiError::conflict(format!("{policy} cannot be loaded on this gateway: {e}")))?;
    let promotion = Promotion { to, share, skip_gate };
    let promoted = state
        .store()
        .promote_policy_version(&policy, &promotion, caller.actor())
        .await
        .map_err(ApiError::from_change)?;
    if let Some(reason) = &promotion.skip_gate {
        tracing::warn!(policy = %policy, actor = caller.actor(), reason = %reason, to = %promotion.to, "promoted without a passing gate run (audited as policy.gate_overridden)");
    }
    applied(&state, summary(&promoted)).await
}

/// The stage after `status`: approved → shadow → canary → active.
pub fn next_stage(status: PolicyStatus) -> PolicyStatus {
    match status {
        PolicyStatus::Draft | PolicyStatus::Approved => PolicyStatus::Shadow,
        PolicyStatus::Shadow => PolicyStatus::Canary,
        PolicyStatus::Canary | PolicyStatus::Active | PolicyStatus::Retired => PolicyStatus::Active,
    }
}

fn check_override(caller: &Principal) -> Result<(), ApiError> {
    if caller.may(Permission::OverrideGate) {
        return Ok(());
    }
    Err(ApiError::forbidden(format!(
        "`{}` may not skip the gate: it needs permission `override_gate`, held by {}",
        caller.actor(),
        Permission::OverrideGate.holders()
    )))
}

/// `POST /api/policies/{name@version}/withdraw`: a shadow or canary back to approved.
pub async fn withdraw(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(policy): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = require(&state, &headers, Permission::PromotePolicies).await?;
    let policy = reference(&policy)?;
    let withdrawn =
        state.store().withdraw_policy_version(&policy, caller.actor()).await.map_err(ApiError::from_change)?;
    applied(&state, summary(&withdrawn)).await
}

/// `POST /api/policies/{name}/rollback` with `{"to"?: VERSION}`: the version active before
/// goes back into force.
pub async fn rollback(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let caller = require(&state, &headers, Permission::PromotePolicies).await?;
    if name.contains('@') {
        return Err(ApiError::invalid(
            "policy",
            "roll back a policy name (`support`), optionally with {\"to\": VERSION}",
        ));
    }
    let body = change_body(&body)?;
    let to = optional_string(&body, "to")?;
    let outcome =
        state.store().rollback_policy(&name, to.as_deref(), caller.actor()).await.map_err(ApiError::from_change)?;
    let changed = json!({"retired": summary(&outcome.retired), "restored": summary(&outcome.restored),
        "withdrawn_canary": outcome.withdrawn_canary.as_ref().map(summary)});
    applied(&state, changed).await
}

/// Query of `GET /api/policies/diff`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffQuery {
    from: String,
    to: String,
}

/// `GET /api/policies/diff?from=A&to=B` (`name@version`, or a name for its active version):
/// the semantic and the text diff.
pub async fn diff(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    query: Result<Query<DiffQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let caller = require(&state, &headers, Permission::ReadPolicies).await?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    audit_admin(&state, &caller, &uri).await?;
    let from = version_or_active(&state, &query.from, "from").await?;
    let to = version_or_active(&state, &query.to, "to").await?;
    let diff = keel_policy::diff::diff(
        &from.reference().to_string(),
        &from.source_text,
        &to.reference().to_string(),
        &to.source_text,
    )
    .map_err(ApiError::internal)?;
    Ok(Json(serde_json::to_value(&diff).map_err(ApiError::internal)?))
}

/// Query of `GET /api/policies/{name@version}/shadow`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowQuery {
    examples: Option<u32>,
}

/// `GET /api/policies/{name@version}/shadow[?examples=N]`: what the version would have
/// decided on the traffic it shadowed, against what was served.
pub async fn shadow(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Path(policy): Path<String>,
    query: Result<Query<ShadowQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let caller = require(&state, &headers, Permission::ReadPolicies).await?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let policy = reference(&policy)?;
    audit_admin(&state, &caller, &uri).await?;
    stored(&state, &policy).await?;
    let report = state
        .store()
        .shadow_report(&policy, query.examples.unwrap_or(20).min(500))
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(serde_json::to_value(&report).map_err(ApiError::internal)?))
}
