//! Admin tokens: how they are made and checked, and the store trait that keeps them.
//!
//! A token reads `keelt_<lookup id>_<secret>`. The lookup id (16 hex characters) is public
//! and names the stored row, so checking a presented token costs one argon2id verification,
//! never a scan. Only the argon2id hash of the whole token is stored: the token itself is
//! shown once, when it is created, and cannot be recovered from the store.

use std::fmt;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use async_trait::async_trait;
use keel_core::Role;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{Result, StoreError};

/// What every admin token starts with; client keys (`keel_…`) never do.
pub const TOKEN_PREFIX: &str = "keelt_";

/// Length of a token's public lookup id, in hex characters.
const LOOKUP_ID_LEN: usize = 16;

/// Length of a token's secret part, in hex characters (32 random bytes).
const SECRET_LEN: usize = 64;

/// Actor names Keel itself uses in the audit log; no token may be called like them.
pub const RESERVED_ACTORS: &[&str] = &["system", "gateway", "anonymous", "cli", "bootstrap"];

/// Why a change to tokens or policy versions was refused.
///
/// Each kind maps to one HTTP status in the gateway and to a clear CLI message; the
/// messages are written for the person who asked for the change.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The token, policy or version named does not exist (HTTP 404).
    #[error("{0}")]
    NotFound(String),
    /// The change contradicts the current state: a name taken, an illegal transition, a
    /// missing gate run (HTTP 409).
    #[error("{0}")]
    Conflict(String),
    /// The actor may not make this change, whatever their role (HTTP 403), e.g. approving
    /// their own version.
    #[error("{0}")]
    Forbidden(String),
    /// A value is malformed (HTTP 400); `field` names it.
    #[error("{field}: {message}")]
    Invalid {
        /// The field at fault (`name`, `share`, `kind`…).
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The store failed; nothing was changed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ChangeError {
    /// A malformed value.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ChangeError::Invalid { field: field.into(), message: message.into() }
    }
}

/// A stored admin token, without its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// Its name: the actor of everything done with it.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The public part of the token that finds its row.
    pub lookup_id: String,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Who created it.
    pub created_by: String,
    /// When it was last verified (refreshed at most once per verification-cache period).
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
    /// When it was revoked, if it was.
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    /// Who revoked it.
    pub revoked_by: Option<String>,
}

impl TokenInfo {
    /// True once the token was revoked; a revoked token is refused everywhere.
    pub fn is_revoked(&self) -> bool {
        self.revoked_at.is_some()
    }
}

/// A token just created: its stored description and the token itself, which is shown once.
#[derive(Clone)]
pub struct IssuedToken {
    /// What was stored.
    pub info: TokenInfo,
    /// The token to hand to its holder; the store keeps only its hash.
    pub token: String,
}

impl fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedToken").field("info", &self.info).field("token", &"***").finish()
    }
}

/// A stored token with its hash, for verification.
#[derive(Debug, Clone)]
pub struct TokenRecord {
    /// The token's description.
    pub info: TokenInfo,
    /// Its argon2id hash (PHC string).
    pub secret_hash: String,
}

/// The change counters running gateways poll to notice changes made by other processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AccessGeneration {
    /// Bumped by every change to policy versions (add, approve, promote, withdraw, rollback).
    pub policies: i64,
    /// Bumped by every token created or revoked.
    pub tokens: i64,
    /// Tokens that are not revoked.
    pub active_tokens: u64,
}

/// The lookup id of a presented token, when it has a token's shape.
pub fn lookup_id_of(presented: &str) -> Option<&str> {
    let rest = presented.strip_prefix(TOKEN_PREFIX)?;
    let (lookup, secret) = rest.split_once('_')?;
    let hex =
        |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    (hex(lookup, LOOKUP_ID_LEN) && hex(secret, SECRET_LEN)).then_some(lookup)
}

/// A fresh token (`keelt_<lookup id>_<secret>`) and its lookup id, from the OS's randomness.
pub fn generate_token() -> (String, String) {
    let mut lookup = [0u8; LOOKUP_ID_LEN / 2];
    let mut secret = [0u8; SECRET_LEN / 2];
    rand::rngs::OsRng.fill_bytes(&mut lookup);
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let lookup = hex::encode(lookup);
    (format!("{TOKEN_PREFIX}{lookup}_{}", hex::encode(secret)), lookup)
}

/// The argon2id hash (PHC string, default parameters, random salt) of a token.
pub fn hash_token(token: &str) -> Result<String> {
    let mut salt = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt)
        .map_err(|e| StoreError::InvalidInput { what: "a token".to_owned(), reason: format!("salt: {e}") })?;
    Argon2::default()
        .hash_password(token.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| StoreError::InvalidInput { what: "a token".to_owned(), reason: format!("hashing failed: {e}") })
}

/// True when `presented` is the token `secret_hash` was made from. CPU-heavy (one argon2id
/// run, tens of milliseconds): call it off the async runtime.
pub fn token_matches(secret_hash: &str, presented: &str) -> bool {
    match PasswordHash::new(secret_hash) {
        Ok(hash) => Argon2::default().verify_password(presented.as_bytes(), &hash).is_ok(),
        Err(_) => false,
    }
}

/// Checks a token name: 1 to 64 letters, digits, `.`, `_` or `-`, and not one of Keel's
/// own actor names.
pub fn check_token_name(name: &str) -> std::result::Result<(), ChangeError> {
    if name.is_empty() || name.len() > 64 {
        return Err(ChangeError::invalid("name", "a token name has 1 to 64 characters"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        return Err(ChangeError::invalid(
            "name",
            format!("`{name}` may only use letters, digits, `.`, `_` and `-` (it is the actor in the audit log)"),
        ));
    }
    if RESERVED_ACTORS.contains(&name) {
        return Err(ChangeError::invalid("name", format!("`{name}` is an actor name Keel itself uses")));
    }
    Ok(())
}

/// Keeping admin tokens.
#[async_trait]
pub trait AccessStore: Send + Sync {
    /// Creates a token called `name` with `role`, stores only its hash, and appends a
    /// `token.created` audit record by `actor` in the same transaction. Names are never
    /// reused, even after revocation (`Conflict`).
    async fn create_token(&self, name: &str, role: Role, actor: &str) -> Result<IssuedToken, ChangeError>;

    /// Every token, oldest first, revoked ones included.
    async fn list_tokens(&self) -> Result<Vec<TokenInfo>>;

    /// Revokes the token called `name` and appends a `token.revoked` audit record by `actor`.
    /// Revoking a revoked token is a `Conflict`; an unknown name is `NotFound`.
    async fn revoke_token(&self, name: &str, actor: &str) -> Result<TokenInfo, ChangeError>;

    /// The token with this lookup id and its hash, revoked or not, for verification.
    async fn token_record(&self, lookup_id: &str) -> Result<Option<TokenRecord>>;

    /// Notes that the token was used at `at` (not audited: it is bookkeeping, not a change).
    async fn touch_token(&self, lookup_id: &str, at: OffsetDateTime) -> Result<()>;

    /// The change counters and the number of tokens in force.
    async fn access_generation(&self) -> Result<AccessGeneration>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_have_the_documented_shape() {
        let (token, lookup) = generate_token();
        assert_eq!(lookup_id_of(&token), Some(lookup.as_str()));
        assert_eq!(token.len(), TOKEN_PREFIX.len() + LOOKUP_ID_LEN + 1 + SECRET_LEN);
        let (other, _) = generate_token();
        assert_ne!(token, other);
    }

    #[test]
    fn malformed_tokens_have_no_lookup_id() {
        let (token, _) = generate_token();
        for bad in [
            "keel_0123",
            "keelt_",
            &token[..token.len() - 1],
            &token.replace("keelt_", "keelx_"),
            &token.to_uppercase(),
            &format!("{token}0"),
        ] {
            assert_eq!(lookup_id_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_hash_verifies_its_token_only() {
        let (token, _) = generate_token();
        let hash = hash_token(&token).unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(!hash.contains(&token[TOKEN_PREFIX.len()..]));
        assert!(token_matches(&hash, &token));
        let (other, _) = generate_token();
        assert!(!token_matches(&hash, &other));
        assert!(!token_matches("not a hash", &token));
        assert_ne!(hash_token(&token).unwrap(), hash, "salts differ");
    }

    proptest::proptest! {
        #[test]
        fn only_the_token_shape_has_a_lookup_id(text in "\\PC{0,100}", lookup in "[0-9a-f]{16}", secret in "[0-9a-f]{64}") {
            let token = format!("{TOKEN_PREFIX}{lookup}_{secret}");
            proptest::prop_assert_eq!(lookup_id_of(&token), Some(lookup.as_str()));
            if let Some(found) = lookup_id_of(&text) {
                proptest::prop_assert!(text.starts_with(TOKEN_PREFIX) && text.len() == token.len());
                proptest::prop_assert_eq!(found.len(), LOOKUP_ID_LEN);
            }
            let spliced = format!("{token}{text}");
            proptest::prop_assert_eq!(lookup_id_of(&spliced).is_some(), text.is_empty());
        }
    }

    #[test]
    fn token_names_are_checked() {
        assert!(check_token_name("alice.ops-1").is_ok());
        for bad in ["", "has space", "gateway", "système", &"x".repeat(65)] {
            assert!(matches!(check_token_name(bad), Err(ChangeError::Invalid { .. })), "{bad}");
        }
    }
}
