//! Who is calling, and whether they may: client keys, admin tokens, and the one permission
//! check every `/api/…` route makes.
//!
//! `/v1/*` takes client keys (`Authorization: Bearer KEY`, matched by SHA-256 against the
//! configured hashes); with no keys configured it is open (loopback only). `/api/*` routes
//! call [`require`] with the [`Permission`] they need: an admin token (`keelt_…`, checked
//! with one argon2id verification, then cached for [`TOKEN_CACHE_TTL`]), an `admin = true`
//! client key (role admin), or — for app-scoped permissions — the app's client key. With no
//! client keys and no tokens in force the API is open to local callers, as before tokens
//! existed; the first token created closes it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use keel_core::{Permission, Role};
use keel_store::access::{lookup_id_of, token_matches, TOKEN_PREFIX};
use keel_store::{AccessGeneration, Store};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::error::ApiError;
use crate::state::{AppState, OPEN_APP};

/// How long a successful token verification is trusted without checking the store again.
/// Revocations reach running gateways sooner: the store watcher clears the cache as soon
/// as it sees the token counter change.
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(30);

/// Argon2 verifications run at once; more wait, so bad tokens cannot starve the blocking pool.
const CONCURRENT_VERIFICATIONS: usize = 2;

/// Who is calling `/v1/*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The key's name (`anonymous` when the gateway is open).
    pub key_name: String,
    /// The app the traffic belongs to.
    pub app: String,
    /// Whether the key is an `admin = true` key.
    pub admin: bool,
}

/// Who is calling `/api/*`, as established by [`require`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// No client keys and no tokens in force: a local caller on a loopback-only gateway,
    /// acting as admin.
    Open,
    /// A client key from keel.toml.
    Key {
        /// The key's name.
        name: String,
        /// Its app.
        app: String,
        /// `admin = true`: counts as role admin.
        admin: bool,
    },
    /// An admin token.
    Token {
        /// The token's name.
        name: String,
        /// Its role.
        role: Role,
    },
}

impl Principal {
    /// The name recorded as the actor of what this caller does.
    pub fn actor(&self) -> &str {
        match self {
            Principal::Open => "anonymous",
            Principal::Key { name, .. } | Principal::Token { name, .. } => name,
        }
    }

    /// The caller's role; `None` for an app's client key, which holds app-scoped powers only.
    pub fn role(&self) -> Option<Role> {
        match self {
            Principal::Open | Principal::Key { admin: true, .. } => Some(Role::Admin),
            Principal::Key { admin: false, .. } => None,
            Principal::Token { role, .. } => Some(*role),
        }
    }

    /// The only app this caller may act for, or `None` when it may act for any app.
    pub fn app_scope(&self) -> Option<&str> {
        match self {
            Principal::Key { app, admin: false, .. } => Some(app),
            _ => None,
        }
    }

    /// True when the caller holds `permission` (for app-scoped ones, see [`Principal::check_app`]).
    pub fn may(&self, permission: Permission) -> bool {
        match self.role() {
            Some(role) => role.allows(permission),
            None => permission.client_key_may(),
        }
    }

    /// 403 unless the caller may act for `app`: a client key only for its own app.
    pub fn check_app(&self, app: &str) -> Result<(), ApiError> {
        match self.app_scope() {
            Some(own) if own != app => Err(ApiError::forbidden(format!(
                "the client key `{}` belongs to app `{own}` and may not act for app `{app}`",
                self.actor()
            ))),
            _ => Ok(()),
        }
    }
}

/// Identifies the caller of `/v1/*` from the request headers.
pub fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    if state.is_open() {
        return Ok(Caller { key_name: "anonymous".into(), app: OPEN_APP.into(), admin: true });
    }
    let presented = bearer(headers)?.ok_or_else(|| missing_credentials("<key>"))?;
    let key = state.key(presented).ok_or_else(|| ApiError::unauthorized("invalid API key"))?;
    Ok(Caller { key_name: key.name.clone(), app: key.app.clone(), admin: key.admin })
}

/// Identifies the caller of an `/api/…` route and checks that it holds `permission`:
/// 401 for a missing, unknown or revoked credential, 403 naming the role needed otherwise.
///
/// Every `/api/` handler calls this once, first. For app-scoped permissions
/// ([`Permission::SendFeedback`], [`Permission::Ingest`]) also call
/// [`Principal::check_app`] with the app the request acts for.
pub async fn require(state: &AppState, headers: &HeaderMap, permission: Permission) -> Result<Principal, ApiError> {
    let principal = identify(state, headers).await?;
    if principal.may(permission) {
        return Ok(principal);
    }
    let who = match &principal {
        Principal::Token { name, role } => format!("the token `{name}` (role {role})"),
        Principal::Key { name, app, .. } => format!("the client key `{name}` of app `{app}`"),
        Principal::Open => "this caller".to_owned(),
    };
    Err(ApiError::forbidden(format!(
        "{who} may not do this: it needs permission `{permission}`, held by {}",
        permission.holders()
    )))
}

async fn identify(state: &AppState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let presented = bearer(headers)?;
    if let Some(token) = presented.filter(|p| p.starts_with(TOKEN_PREFIX)) {
        let verified = state.access().verify(state.store().as_ref(), token).await?;
        return Ok(Principal::Token { name: verified.name, role: verified.role });
    }
    if state.api_is_open() {
        return Ok(Principal::Open);
    }
    let presented = presented.ok_or_else(|| missing_credentials("<token>"))?;
    let key = state.key(presented).ok_or_else(|| ApiError::unauthorized("invalid API key or token"))?;
    Ok(Principal::Key { name: key.name.clone(), app: key.app.clone(), admin: key.admin })
}

fn missing_credentials(what: &str) -> ApiError {
    ApiError::unauthorized(format!("missing `Authorization: Bearer {what}` header"))
}

/// The bearer credential, `None` when there is no Authorization header.
fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(header) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(Some)
        .ok_or_else(|| ApiError::unauthorized("the Authorization header must be `Bearer <key or token>`"))
}

/// A token that verified.
#[derive(Debug, Clone)]
struct Verified {
    name: String,
    role: Role,
    at: Instant,
}

/// Token verifications of this process: recent successes, the token counter last seen, and
/// how many tokens are in force (which decides whether the API is open).
#[derive(Debug)]
pub struct TokenVerifier {
    /// Successful verifications by SHA-256 of the presented token (never the token itself).
    verified: Mutex<HashMap<[u8; 32], Verified>>,
    generation: AtomicI64,
    active_tokens: AtomicU64,
    argon: Semaphore,
}

impl Default for TokenVerifier {
    fn default() -> Self {
        TokenVerifier {
            verified: Mutex::new(HashMap::new()),
            generation: AtomicI64::new(0),
            active_tokens: AtomicU64::new(0),
            argon: Semaphore::new(CONCURRENT_VERIFICATIONS),
        }
    }
}

impl TokenVerifier {
    /// Takes the store's counters into account: a changed token counter forgets every cached
    /// verification, so a revocation made anywhere takes effect here at once.
    pub fn observe(&self, generation: &AccessGeneration) {
        self.active_tokens.store(generation.active_tokens, Ordering::SeqCst);
        if self.generation.swap(generation.tokens, Ordering::SeqCst) != generation.tokens {
            self.cache().clear();
        }
    }

    /// Tokens in force at the last observation.
    pub fn active_tokens(&self) -> u64 {
        self.active_tokens.load(Ordering::SeqCst)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Verified>> {
        match self.verified.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    async fn verify(&self, store: &dyn Store, presented: &str) -> Result<Verified, ApiError> {
        let key: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        if let Some(hit) = self.cache().get(&key).filter(|v| v.at.elapsed() < TOKEN_CACHE_TTL).cloned() {
            return Ok(hit);
        }
        let invalid = || ApiError::unauthorized("invalid token");
        let lookup_id = lookup_id_of(presented).ok_or_else(invalid)?;
        let record = store.token_record(lookup_id).await.map_err(ApiError::internal)?.ok_or_else(invalid)?;
        if record.info.is_revoked() {
            return Err(ApiError::unauthorized(format!("the token `{}` was revoked", record.info.name)));
        }
        let permit = self.argon.acquire().await.map_err(ApiError::internal)?;
        let hash = record.secret_hash.clone();
        let owned = presented.to_owned();
        let matches =
            tokio::task::spawn_blocking(move || token_matches(&hash, &owned)).await.map_err(ApiError::internal)?;
        drop(permit);
        if !matches {
            return Err(invalid());
        }
        let verified = Verified { name: record.info.name.clone(), role: record.info.role, at: Instant::now() };
        self.cache().insert(key, verified.clone());
        if let Err(e) = store.touch_token(lookup_id, time::OffsetDateTime::now_utc()).await {
            tracing::warn!(token = %record.info.name, error = %e, "could not note the token's last use");
        }
        Ok(verified)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_hold_what_their_role_holds() {
        let viewer = Principal::Token { name: "v".into(), role: Role::Viewer };
        assert!(viewer.may(Permission::ReadInteractions));
        assert!(!viewer.may(Permission::PromotePolicies));
        let key = Principal::Key { name: "bot".into(), app: "support".into(), admin: false };
        assert!(!key.may(Permission::ReadInteractions));
        assert!(key.may(Permission::SendFeedback));
        assert!(key.check_app("support").is_ok());
        let err = key.check_app("billing").unwrap_err();
        assert_eq!(err.status, 403);
        assert!(err.message.contains("app `support`"), "{}", err.message);
        let admin_key = Principal::Key { name: "ops".into(), app: "console".into(), admin: true };
        assert!(admin_key.may(Permission::ManageTokens));
        assert!(admin_key.check_app("billing").is_ok());
        assert_eq!(Principal::Open.role(), Some(Role::Admin));
        assert_eq!(Principal::Open.actor(), "anonymous");
    }

    #[test]
    fn a_changed_token_counter_forgets_cached_verifications() {
        let verifier = TokenVerifier::default();
        verifier.cache().insert([1; 32], Verified { name: "a".into(), role: Role::Admin, at: Instant::now() });
        verifier.observe(&AccessGeneration { policies: 5, tokens: 0, active_tokens: 1 });
        assert_eq!(verifier.cache().len(), 1, "only the policy counter changed");
        assert_eq!(verifier.active_tokens(), 1);
        verifier.observe(&AccessGeneration { policies: 5, tokens: 1, active_tokens: 0 });
        assert!(verifier.cache().is_empty());
        assert_eq!(verifier.active_tokens(), 0);
    }
}
