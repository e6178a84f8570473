//! Client authentication: `Authorization: Bearer KEY`, matched by SHA-256 against the
//! configured key hashes. With no keys configured the gateway is open (loopback only).

use axum::http::HeaderMap;

use crate::error::ApiError;
use crate::state::{AppState, OPEN_APP};

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The key's name (`anonymous` when the gateway is open).
    pub key_name: String,
    /// The app the traffic belongs to.
    pub app: String,
    /// Whether the caller may use `/api/`.
    pub admin: bool,
}

/// Identifies the caller from the request headers.
pub fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    if state.is_open() {
        return Ok(Caller { key_name: "anonymous".into(), app: OPEN_APP.into(), admin: true });
    }
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing `Authorization: Bearer <key>` header"))?;
    let presented = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| ApiError::unauthorized("the Authorization header must be `Bearer <key>`"))?;
    let key = state.key(presented).ok_or_else(|| ApiError::unauthorized("invalid API key"))?;
    Ok(Caller { key_name: key.name.clone(), app: key.app.clone(), admin: key.admin })
}

/// Like [`authenticate`], and requires an admin key.
pub fn authenticate_admin(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let caller = authenticate(state, headers)?;
    if caller.admin {
        Ok(caller)
    } else {
        Err(ApiError::forbidden("this key may not use the Keel API; set admin = true on it"))
    }
}
