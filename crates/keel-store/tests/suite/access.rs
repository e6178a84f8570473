//! Admin tokens: created, listed, revoked, audited — and never stored in the clear.

use std::sync::Arc;

use keel_core::Role;
use keel_store::access::{lookup_id_of, token_matches};
use keel_store::{AccessGeneration, ChangeError, Store};

use super::Harness;

async fn audit_actions(store: &Arc<dyn Store>) -> Vec<(String, String, serde_json::Value)> {
    store
        .audit_records(1, i64::MAX, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.actor, r.action, serde_json::from_str(&r.payload).unwrap()))
        .collect()
}

pub async fn tokens_are_created_listed_and_revoked_with_audit_records(store: Arc<dyn Store>) {
    assert_eq!(store.access_generation().await.unwrap(), AccessGeneration::default());
    let alice = store.create_token("alice", Role::PolicyAuthor, "bootstrap").await.unwrap();
    let bob = store.create_token("bob", Role::Viewer, "alice").await.unwrap();
    assert_eq!(lookup_id_of(&alice.token), Some(alice.info.lookup_id.as_str()));
    assert_ne!(alice.info.lookup_id, bob.info.lookup_id);
    assert_eq!(store.access_generation().await.unwrap(), AccessGeneration { policies: 0, tokens: 2, active_tokens: 2 });

    let listed = store.list_tokens().await.unwrap();
    assert_eq!(
        listed.iter().map(|t| (t.name.as_str(), t.role)).collect::<Vec<_>>(),
        [("alice", Role::PolicyAuthor), ("bob", Role::Viewer)]
    );
    assert_eq!(listed[1].created_by, "alice");
    assert!(listed.iter().all(|t| !t.is_revoked() && t.last_used_at.is_none()));

    let revoked = store.revoke_token("bob", "alice").await.unwrap();
    assert!(revoked.is_revoked());
    assert_eq!(revoked.revoked_by.as_deref(), Some("alice"));
    let listed = store.list_tokens().await.unwrap();
    assert_eq!(listed[1].revoked_by.as_deref(), Some("alice"));
    assert!(listed[1].revoked_at.is_some());
    assert_eq!(store.access_generation().await.unwrap(), AccessGeneration { policies: 0, tokens: 3, active_tokens: 1 });

    let actions = audit_actions(&store).await;
    let summary: Vec<(&str, &str, &str)> = actions
        .iter()
        .map(|(actor, action, p)| (actor.as_str(), action.as_str(), p["name"].as_str().unwrap()))
        .collect();
    assert_eq!(
        summary,
        [("bootstrap", "token.created", "alice"), ("alice", "token.created", "bob"), ("alice", "token.revoked", "bob")]
    );
    assert_eq!(actions[0].2["role"], "policy_author");
    assert!(store.verify().await.unwrap().is_ok());
}

pub async fn token_changes_are_refused_clearly(store: Arc<dyn Store>) {
    store.create_token("carol", Role::Admin, "bootstrap").await.unwrap();
    let taken = store.create_token("carol", Role::Viewer, "bootstrap").await.unwrap_err();
    assert!(matches!(&taken, ChangeError::Conflict(m) if m.contains("exists already")), "{taken:?}");
    store.revoke_token("carol", "carol").await.unwrap();
    let again = store.create_token("carol", Role::Viewer, "bootstrap").await.unwrap_err();
    assert!(matches!(&again, ChangeError::Conflict(m) if m.contains("never reused")), "{again:?}");
    let twice = store.revoke_token("carol", "carol").await.unwrap_err();
    assert!(matches!(&twice, ChangeError::Conflict(m) if m.contains("already revoked")), "{twice:?}");
    let unknown = store.revoke_token("dave", "carol").await.unwrap_err();
    assert!(matches!(&unknown, ChangeError::NotFound(m) if m.contains("dave")), "{unknown:?}");
    let bad = store.create_token("has space", Role::Viewer, "carol").await.unwrap_err();
    assert!(matches!(&bad, ChangeError::Invalid { field, .. } if field == "name"), "{bad:?}");
    // Refused changes leave no trace: one creation and one revocation were audited.
    assert_eq!(audit_actions(&store).await.len(), 2);
    assert_eq!(store.list_tokens().await.unwrap().len(), 1);
}

pub async fn a_stored_token_verifies_and_records_its_use(store: Arc<dyn Store>) {
    let issued = store.create_token("erin", Role::Auditor, "bootstrap").await.unwrap();
    let record = store.token_record(&issued.info.lookup_id).await.unwrap().unwrap();
    assert_eq!(record.info, issued.info);
    assert!(token_matches(&record.secret_hash, &issued.token));
    let mut wrong = issued.token.clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == '0' { '1' } else { '0' });
    assert!(!token_matches(&record.secret_hash, &wrong));
    assert!(store.token_record("0000000000000000").await.unwrap().is_none());

    let at = time::OffsetDateTime::now_utc();
    store.touch_token(&issued.info.lookup_id, at).await.unwrap();
    let listed = store.list_tokens().await.unwrap();
    assert_eq!(listed[0].last_used_at, Some(at));
}

pub async fn the_store_never_holds_a_token(h: &dyn Harness) {
    let store = h.open().await;
    let issued = store.create_token("frank", Role::Admin, "bootstrap").await.unwrap();
    let secret = issued.token.rsplit('_').next().unwrap().to_owned();
    assert_eq!(secret.len(), 64);
    let like = |table: &str, column: &str| format!("SELECT count(*) FROM {table} WHERE {column} LIKE '%{secret}%'");
    for (table, column) in [
        ("access_tokens", "lookup_id"),
        ("access_tokens", "name"),
        ("access_tokens", "secret_hash"),
        ("access_tokens", "created_by"),
        ("audit_log", "payload"),
    ] {
        assert_eq!(h.scalar(&like(table, column)).await, 0, "{table}.{column} holds the token");
    }
    assert_eq!(h.scalar("SELECT count(*) FROM access_tokens WHERE secret_hash LIKE '$argon2id$%'").await, 1);
    // A reopened store still verifies the token: the hash is all it needs.
    let reopened = h.open().await;
    let record = reopened.token_record(&issued.info.lookup_id).await.unwrap().unwrap();
    assert!(token_matches(&record.secret_hash, &issued.token));
}
