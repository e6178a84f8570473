//! Who the CLI acts as: commands that change things present an admin token (`--token` or
//! `KEEL_TOKEN`), which is verified against the store and must hold the command's permission.
//! The token's name is the actor of the audit records the change leaves.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use clap::Args;
use keel_core::{Permission, Role};
use keel_store::access::{lookup_id_of, token_matches};
use keel_store::Store;

/// Where the store is: `--store URL`, or the `store` of `--config keel.toml`, or
/// `$KEEL_HOME/keel.db`.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Store URL, e.g. sqlite://keel.db (default: from --config, else $KEEL_HOME/keel.db).
    #[arg(long, visible_alias = "db")]
    pub store: Option<String>,
    /// Configuration file to take the store URL from.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

impl StoreArgs {
    /// Opens the store these arguments name.
    pub async fn open(&self) -> anyhow::Result<Arc<dyn Store>> {
        let url = crate::store_url(self.store.clone(), self.config.clone())?;
        keel_store::resolve(&url).await.with_context(|| format!("cannot open {}", keel_store::redact_url(&url)))
    }
}

/// The token a changing command acts as.
#[derive(Debug, Clone, Args)]
pub struct TokenArg {
    /// Admin token to act as (or set KEEL_TOKEN); its name is the actor in the audit log.
    #[arg(long, env = "KEEL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// A verified actor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The token's name.
    pub name: String,
    /// Its role.
    pub role: Role,
}

/// Verifies `token` against the store and checks that it holds `permission`.
pub async fn act_as(store: &dyn Store, token: &TokenArg, permission: Permission) -> anyhow::Result<Actor> {
    let Some(presented) = token.token.as_deref().map(str::trim).filter(|t| !t.is_empty()) else {
        bail!(
            "this command changes the store, so it acts as an admin token: pass --token TOKEN or set KEEL_TOKEN \
             (it needs permission `{permission}`, held by {}; an admin creates tokens with `keel token create`)",
            permission.holders()
        );
    };
    let Some(lookup_id) = lookup_id_of(presented) else {
        bail!("--token / KEEL_TOKEN is not an admin token (they look like keelt_<16 hex>_<64 hex>)");
    };
    let Some(record) = store.token_record(lookup_id).await? else {
        bail!("--token / KEEL_TOKEN: no such token in this store (is --store / --config the right one?)");
    };
    if let (Some(at), by) = (record.info.revoked_at, record.info.revoked_by.as_deref()) {
        bail!("--token / KEEL_TOKEN: the token `{}` was revoked at {at} by {}", record.info.name, by.unwrap_or("?"));
    }
    let hash = record.secret_hash.clone();
    let owned = presented.to_owned();
    if !tokio::task::spawn_blocking(move || token_matches(&hash, &owned)).await? {
        bail!("--token / KEEL_TOKEN: invalid token");
    }
    let actor = Actor { name: record.info.name.clone(), role: record.info.role };
    if !actor.role.allows(permission) {
        bail!(
            "the token `{}` (role {}) may not do this: it needs permission `{permission}`, held by {}",
            actor.name,
            actor.role,
            permission.holders()
        );
    }
    store.touch_token(lookup_id, time::OffsetDateTime::now_utc()).await?;
    Ok(actor)
}
