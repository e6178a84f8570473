//! Keel's HTTP face: the OpenAI-compatible gateway (`/v1/chat/completions`, `/v1/models`),
//! its upstream clients, and the Keel API under `/api/`.
//!
//! Handlers are thin: judging belongs to `keel-policy`, storage to `keel-store`. This crate
//! owns the wire formats (OpenAI JSON, SSE), authentication and role checks ([`require`]),
//! which stored policy version judges each request ([`rollout`]: active, shadow, canary,
//! followed from the store without a restart), and the order of events of one interaction.
//! It does not read configuration files; the binary builds [`AppState`].

mod api;
mod api_alerts;
mod api_feedback;
mod api_review;
mod auth;
mod chat;
pub mod error;
pub mod ingest;
pub mod kpi;
mod local;
pub mod metrics;
mod policies;
pub mod rollout;
pub mod sse;
mod state;
mod tokens;
pub mod upstream;
mod watch;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

pub use auth::{require, Caller, Principal, TokenVerifier, TOKEN_CACHE_TTL};
pub use error::ApiError;
pub use local::{spawn_local_model, LocalModelServer, LOCAL_MODEL_ID};
pub use metrics::GatewayMetrics;
pub use policies::next_stage;
pub use rollout::{Bindings, PlainCompiler, PolicyCompiler, Rollout, RolloutError};
pub use state::{key_hash, AppState, ClientKey, GatewaySettings, OPEN_APP};
pub use upstream::{UpstreamConfig, Upstreams};
pub use watch::watch_store;

/// The gateway's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/models", get(list_models))
        .route("/api/interactions", get(api::list_interactions))
        .route("/api/interactions/{id}", get(api::get_interaction))
        .route("/api/alerts", get(api_alerts::list_alerts))
        .route("/api/alerts/{id}", get(api_alerts::get_alert))
        .route("/api/alerts/{id}/acknowledge", post(api_alerts::acknowledge))
        .route("/api/alerts/{id}/resolve", post(api_alerts::resolve))
        .route("/api/feedback", post(api_feedback::feedback))
        .route("/api/handoffs/{id}/{event}", post(api_feedback::handoff))
        .route("/api/ingest", post(api_feedback::ingest))
        .route("/api/kpi", get(api_feedback::kpi))
        .route("/metrics", get(api_alerts::metrics))
        .route("/api/policies", get(policies::list).post(policies::add))
        .route("/api/policies/diff", get(policies::diff))
        .route("/api/policies/{policy}", get(policies::show))
        .route("/api/policies/{policy}/approve", post(policies::approve))
        .route("/api/policies/{policy}/promote", post(policies::promote))
        .route("/api/policies/{policy}/withdraw", post(policies::withdraw))
        .route("/api/policies/{policy}/rollback", post(policies::rollback))
        .route("/api/policies/{policy}/shadow", get(policies::shadow))
        .route("/api/review/cases", get(api_review::list_cases))
        .route("/api/review/cases/{id}", get(api_review::get_case))
        .route("/api/review/cases/{id}/label", post(api_review::label))
        .route("/api/review/cases/{id}/release", post(api_review::release))
        .route("/api/review/cases/{id}/adjudicate", post(api_review::adjudicate))
        .route("/api/review/cases/{id}/close", post(api_review::close))
        .route("/api/review/next", post(api_review::next))
        .route("/api/review/agreement", get(api_review::agreement_report))
        .route("/api/tokens", get(tokens::list_tokens).post(tokens::create_token))
        .route("/api/tokens/{name}/revoke", post(tokens::revoke_token))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(|| async { ApiError::not_found(None, "no such route") })
        // One span per request (method, path): what `tracing` subscribers and the binary's
        // OpenTelemetry export see. Spans carry no bodies or headers.
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(tower_http::trace::DefaultMakeSpan::new().level(tracing::Level::INFO)),
        )
        .with_state(state)
}

async fn list_models(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    auth::authenticate(&state, &headers)?;
    let data: Vec<Value> = upstream::model_ids(&state.upstreams().models())
        .into_iter()
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "keel"}))
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}
