//! `keel token create | list | revoke`: admin tokens, kept in the store as argon2id hashes.

use std::io::Write;
use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;
use keel_core::{Permission, Role};
use keel_store::{ChangeError, TokenInfo};
use time::format_description::well_known::Rfc3339;

use crate::identity::{act_as, StoreArgs, TokenArg};

/// The actor of the first admin token, made while no admin token exists.
const BOOTSTRAP_ACTOR: &str = "bootstrap";

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it once (only its hash is stored). Needs an admin token,
    /// except for the first admin token of a store.
    Create {
        /// Its role: admin, policy_author, reviewer, auditor or viewer.
        #[arg(long)]
        role: Role,
        /// Its name: the actor of everything done with it (never reused).
        #[arg(long)]
        name: String,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        token: TokenArg,
    },
    /// List tokens: names, roles, created, last used, revoked.
    List {
        #[command(flatten)]
        store: StoreArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token; running gateways refuse it within seconds.
    Revoke {
        /// The token's name.
        name: String,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        token: TokenArg,
    },
}

fn refused(error: ChangeError) -> anyhow::Error {
    anyhow::anyhow!("refused: {error}")
}

/// Runs a `keel token` command.
pub async fn run(command: TokenCommand) -> anyhow::Result<ExitCode> {
    match command {
        TokenCommand::Create { role, name, store, token } => {
            let store = store.open().await?;
            let admins = store.list_tokens().await?.into_iter().filter(|t| t.role == Role::Admin && !t.is_revoked());
            let actor = if admins.count() == 0 && token.token.is_none() {
                if role != Role::Admin {
                    bail!(
                        "this store has no admin token yet: create one first (keel token create --role admin --name NAME); \
                         it needs no --token, and it then creates the others"
                    );
                }
                eprintln!("note: no admin token exists yet, so this first one is created without a token (audited as `{BOOTSTRAP_ACTOR}`)");
                BOOTSTRAP_ACTOR.to_owned()
            } else {
                act_as(store.as_ref(), &token, Permission::ManageTokens).await?.name
            };
            let issued = store.create_token(&name, role, &actor).await.map_err(refused)?;
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "Token `{}` (role {}) — shown once, keep it now:\n{}\n\nUse it as `--token TOKEN`, `KEEL_TOKEN=TOKEN`, or `Authorization: Bearer TOKEN` on /api/.",
                issued.info.name, issued.info.role, issued.token
            )?;
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::List { store, json } => {
            let tokens = store.open().await?.list_tokens().await?;
            let mut out = std::io::stdout().lock();
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&tokens)?)?;
            } else {
                write!(out, "{}", table(&tokens))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Revoke { name, store, token } => {
            let store = store.open().await?;
            let actor = act_as(store.as_ref(), &token, Permission::ManageTokens).await?;
            let info = store.revoke_token(&name, &actor.name).await.map_err(refused)?;
            println!(
                "Revoked `{}` (role {}); running gateways refuse it within their poll interval.",
                info.name, info.role
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn when(at: Option<time::OffsetDateTime>) -> String {
    at.and_then(|t| t.replace_nanosecond(0).ok()).and_then(|t| t.format(&Rfc3339).ok()).unwrap_or_else(|| "-".into())
}

fn table(tokens: &[TokenInfo]) -> String {
    if tokens.is_empty() {
        return "no tokens (create the first admin token with `keel token create --role admin --name NAME`)\n".into();
    }
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            let revoked = match (&t.revoked_at, &t.revoked_by) {
                (Some(at), by) => format!("{} by {}", when(Some(*at)), by.as_deref().unwrap_or("?")),
                (None, _) => "-".into(),
            };
            vec![
                t.name.clone(),
                t.role.to_string(),
                when(Some(t.created_at)),
                t.created_by.clone(),
                when(t.last_used_at),
                revoked,
            ]
        })
        .collect();
    crate::table::render(&["NAME", "ROLE", "CREATED", "BY", "LAST USED", "REVOKED"], &rows)
}
