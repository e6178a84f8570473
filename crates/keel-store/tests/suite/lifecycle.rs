//! Stored policy versions: the lifecycle's legal and illegal transitions, approval by
//! someone else, the gate, seeding, rollback, shadow reports — each change audited, and a
//! refused change leaving nothing behind.

use std::sync::Arc;

use keel_core::{Action, Phase, PolicyRef, ShadowDecision};
use keel_store::{
    ChangeError, GateKind, NewGateRun, NewPolicyVersion, PolicyStatus, Promotion, Seeded, Store, WriteBatch,
};

use super::{interaction, Harness, T0};

fn r(version: &str) -> PolicyRef {
    PolicyRef { name: "support".to_owned(), version: version.to_owned() }
}

fn new(version: &str) -> NewPolicyVersion {
    NewPolicyVersion {
        name: "support".to_owned(),
        version: version.to_owned(),
        source_text: format!("name = \"support\"\nversion = \"{version}\"\n"),
        parent_version: None,
        origin: "test".to_owned(),
    }
}

fn to(status: PolicyStatus) -> Promotion {
    let share = (status == PolicyStatus::Canary).then_some(0.25);
    Promotion { to: status, share, skip_gate: None }
}

async fn gate(store: &Arc<dyn Store>, version: &str, passed: bool) -> i64 {
    let count = store.gate_runs(&r(version)).await.unwrap().len();
    store
        .record_gate_run(NewGateRun {
            policy: r(version),
            kind: GateKind::Replay,
            passed,
            summary: serde_json::json!({"f1": if passed { 0.91 } else { 0.42 }}),
            run_sha256: format!("{count:064x}"),
            actor: "carol".to_owned(),
        })
        .await
        .unwrap()
        .id
}

async fn status(store: &Arc<dyn Store>, version: &str) -> PolicyStatus {
    store.policy_version(&r(version)).await.unwrap().unwrap().status
}

/// `name@version status` of every version in force.
async fn in_force(store: &Arc<dyn Store>) -> Vec<String> {
    store.policies_in_force().await.unwrap().iter().map(|v| format!("{} {}", v.reference(), v.status)).collect()
}

async fn audit_actions(store: &Arc<dyn Store>) -> Vec<String> {
    store
        .audit_records(1, i64::MAX, 10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|r| format!("{} {}", r.actor, r.action))
        .collect()
}

/// support@1 active (seeded) and support@2 approved (by bob, written by alice).
async fn one_active_one_approved(store: &Arc<dyn Store>) {
    assert!(matches!(store.seed_policy_version(new("1"), "system").await.unwrap(), Seeded::Activated(_)));
    store.add_policy_version(new("2"), "alice").await.unwrap();
    store.approve_policy_version(&r("2"), "bob").await.unwrap();
}

pub async fn a_version_moves_from_draft_to_active_and_back_by_rollback(store: Arc<dyn Store>) {
    assert!(matches!(store.seed_policy_version(new("1"), "system").await.unwrap(), Seeded::Activated(_)));
    let added = store.add_policy_version(new("2"), "alice").await.unwrap();
    assert_eq!((added.status, added.parent_version.as_deref()), (PolicyStatus::Draft, Some("1")));
    assert_eq!(added.sha256, keel_store::audit::sha256_hex(&added.source_text));

    let own = store.approve_policy_version(&r("2"), "alice").await.unwrap_err();
    assert!(matches!(&own, ChangeError::Forbidden(m) if m.contains("someone other than its author")), "{own:?}");
    let approved = store.approve_policy_version(&r("2"), "bob").await.unwrap();
    assert_eq!((approved.status, approved.approver.as_deref()), (PolicyStatus::Approved, Some("bob")));

    let ungated = store.promote_policy_version(&r("2"), &to(PolicyStatus::Shadow), "alice").await.unwrap_err();
    assert!(matches!(&ungated, ChangeError::Conflict(m) if m.contains("no passing gate run")), "{ungated:?}");
    gate(&store, "2", false).await;
    let failed = store.promote_policy_version(&r("2"), &to(PolicyStatus::Shadow), "alice").await.unwrap_err();
    assert!(failed.to_string().contains("1 recorded run(s) failed"), "{failed}");
    let passing = gate(&store, "2", true).await;

    store.promote_policy_version(&r("2"), &to(PolicyStatus::Shadow), "alice").await.unwrap();
    assert_eq!(in_force(&store).await, ["support@1 active", "support@2 shadow"]);
    let canary = store.promote_policy_version(&r("2"), &to(PolicyStatus::Canary), "alice").await.unwrap();
    assert_eq!(canary.canary_share, Some(0.25));
    let wider = Promotion { share: Some(0.5), ..to(PolicyStatus::Canary) };
    assert_eq!(store.promote_policy_version(&r("2"), &wider, "alice").await.unwrap().canary_share, Some(0.5));
    let active = store.promote_policy_version(&r("2"), &to(PolicyStatus::Active), "alice").await.unwrap();
    assert_eq!((active.status, active.canary_share), (PolicyStatus::Active, None));
    assert_eq!(status(&store, "1").await, PolicyStatus::Retired);
    assert_eq!(in_force(&store).await, ["support@2 active"]);

    let history: Vec<String> = store
        .policy_transitions(&r("2"))
        .await
        .unwrap()
        .iter()
        .map(|t| format!("{}→{} by {}", t.from.map(|s| s.as_str()).unwrap_or("-"), t.to, t.actor))
        .collect();
    assert_eq!(
        history,
        [
            "-→draft by alice",
            "draft→approved by bob",
            "approved→shadow by alice",
            "shadow→canary by alice",
            "canary→canary by alice",
            "canary→active by alice"
        ]
    );
    let last = store.policy_transitions(&r("2")).await.unwrap().pop().unwrap();
    assert_eq!(last.detail["gate_run"], passing);
    assert_eq!(last.detail["replaced"], "support@1");

    let rolled = store.rollback_policy("support", None, "bob").await.unwrap();
    assert_eq!((rolled.retired.reference(), rolled.restored.reference()), (r("2"), r("1")));
    assert_eq!(in_force(&store).await, ["support@1 active"]);

    let actions = audit_actions(&store).await;
    assert_eq!(
        actions,
        [
            "system policy.seeded",
            "alice policy.added",
            "bob policy.approved",
            "carol gate.recorded",
            "carol gate.recorded",
            "alice policy.promoted",
            "alice policy.promoted",
            "alice policy.promoted",
            "alice policy.promoted",
            "bob policy.rolled_back"
        ]
    );
    assert!(store.verify().await.unwrap().is_ok());
    assert_eq!(store.access_generation().await.unwrap().policies, 10);
}

pub async fn illegal_changes_are_refused_and_change_nothing(store: Arc<dyn Store>) {
    one_active_one_approved(&store).await;
    store.add_policy_version(new("3"), "alice").await.unwrap();
    gate(&store, "2", true).await;
    gate(&store, "3", true).await;
    let before_force = in_force(&store).await;
    let before_audit = audit_actions(&store).await.len();
    let before_versions = store.policy_versions(None).await.unwrap();

    let conflict = |e: ChangeError, needle: &str| match e {
        ChangeError::Conflict(m) => assert!(m.contains(needle), "{m} lacks {needle:?}"),
        other => panic!("expected a conflict about {needle:?}, got {other:?}"),
    };
    // A draft cannot skip approval, even with a passing gate run.
    conflict(
        store.promote_policy_version(&r("3"), &to(PolicyStatus::Active), "bob").await.unwrap_err(),
        "must be approved first",
    );
    conflict(store.approve_policy_version(&r("2"), "carol").await.unwrap_err(), "only drafts are approved");
    conflict(
        store.promote_policy_version(&r("1"), &to(PolicyStatus::Active), "bob").await.unwrap_err(),
        "already active",
    );
    conflict(store.withdraw_policy_version(&r("1"), "bob").await.unwrap_err(), "only a shadow or canary");
    conflict(store.rollback_policy("support", None, "bob").await.unwrap_err(), "nothing to roll back to");
    conflict(store.rollback_policy("support", Some("2"), "bob").await.unwrap_err(), "never active");
    conflict(store.add_policy_version(new("2"), "alice").await.unwrap_err(), "same text");
    let mut changed = new("2");
    changed.source_text.push_str("# edited\n");
    conflict(store.add_policy_version(changed, "alice").await.unwrap_err(), "bump `version`");
    let shares = [None, Some(0.0), Some(1.0)];
    for share in shares {
        let bad = Promotion { to: PolicyStatus::Canary, share, skip_gate: None };
        let err = store.promote_policy_version(&r("2"), &bad, "bob").await.unwrap_err();
        assert!(matches!(&err, ChangeError::Invalid { field, .. } if field == "share"), "{share:?}: {err:?}");
    }
    let missing = store.promote_policy_version(&r("9"), &to(PolicyStatus::Active), "bob").await.unwrap_err();
    assert!(
        matches!(&missing, ChangeError::NotFound(m) if m.contains("stored versions of `support`: 1, 2, 3")),
        "{missing:?}"
    );
    let other = PolicyRef { name: "billing".into(), version: "1".into() };
    let err = store.approve_policy_version(&other, "bob").await.unwrap_err();
    assert!(matches!(&err, ChangeError::NotFound(m) if m.contains("no stored policy named `billing`")), "{err:?}");
    assert!(matches!(store.rollback_policy("billing", None, "bob").await.unwrap_err(), ChangeError::NotFound(_)));
    let orphan = NewPolicyVersion { parent_version: Some("7".into()), ..new("4") };
    let err = store.add_policy_version(orphan, "alice").await.unwrap_err();
    assert!(matches!(&err, ChangeError::Invalid { field, .. } if field == "parent"), "{err:?}");
    let bad_run = NewGateRun {
        policy: r("2"),
        kind: GateKind::Eval,
        passed: true,
        summary: serde_json::json!({}),
        run_sha256: "nope".into(),
        actor: "carol".into(),
    };
    let err = store.record_gate_run(bad_run.clone()).await.unwrap_err();
    assert!(matches!(&err, ChangeError::Invalid { field, .. } if field == "run_sha256"), "{err:?}");
    let err = store
        .record_gate_run(NewGateRun { summary: serde_json::json!([1]), run_sha256: "0".repeat(64), ..bad_run.clone() })
        .await
        .unwrap_err();
    assert!(matches!(&err, ChangeError::Invalid { field, .. } if field == "summary"), "{err:?}");
    let err = store
        .record_gate_run(NewGateRun { policy: r("9"), run_sha256: "0".repeat(64), ..bad_run.clone() })
        .await
        .unwrap_err();
    assert!(matches!(err, ChangeError::NotFound(_)), "{err:?}");
    // The same run record counts once per version.
    let again = NewGateRun { run_sha256: format!("{:064x}", 0), ..bad_run };
    conflict(store.record_gate_run(again).await.unwrap_err(), "recorded for support@2 already");

    // At most one shadow per name: the second one is refused until the first is withdrawn.
    store.approve_policy_version(&r("3"), "bob").await.unwrap();
    store.promote_policy_version(&r("2"), &to(PolicyStatus::Shadow), "bob").await.unwrap();
    conflict(
        store.promote_policy_version(&r("3"), &to(PolicyStatus::Shadow), "bob").await.unwrap_err(),
        "withdraw it first",
    );
    conflict(
        store.promote_policy_version(&r("2"), &to(PolicyStatus::Shadow), "bob").await.unwrap_err(),
        "already the shadow",
    );
    store.withdraw_policy_version(&r("2"), "bob").await.unwrap();
    store.promote_policy_version(&r("3"), &to(PolicyStatus::Shadow), "bob").await.unwrap();

    // Only the two approvals of 3, the shadow of 2, its withdrawal and the shadow of 3 happened.
    assert_eq!(in_force(&store).await, ["support@1 active", "support@3 shadow"]);
    assert_eq!(before_force, ["support@1 active"]);
    assert_eq!(audit_actions(&store).await.len(), before_audit + 4);
    let after_versions = store.policy_versions(None).await.unwrap();
    assert_eq!(after_versions.len(), before_versions.len(), "nothing added, nothing lost");
    for (a, b) in before_versions.iter().zip(&after_versions) {
        assert_eq!((&a.source_text, &a.sha256), (&b.source_text, &b.sha256));
    }
}

pub async fn the_gate_is_per_exact_version_and_an_override_is_audited(store: Arc<dyn Store>) {
    one_active_one_approved(&store).await;
    store.add_policy_version(new("3"), "alice").await.unwrap();
    store.approve_policy_version(&r("3"), "bob").await.unwrap();
    gate(&store, "2", true).await;
    let err = store.promote_policy_version(&r("3"), &to(PolicyStatus::Active), "bob").await.unwrap_err();
    assert!(err.to_string().contains("no passing gate run"), "support@2's run does not count for support@3: {err}");

    let blank = Promotion { skip_gate: Some("  ".into()), ..to(PolicyStatus::Active) };
    let err = store.promote_policy_version(&r("3"), &blank, "root").await.unwrap_err();
    assert!(matches!(&err, ChangeError::Invalid { field, .. } if field == "skip_gate"), "{err:?}");
    let forced = Promotion { skip_gate: Some("incident 42: recall wording".into()), ..to(PolicyStatus::Active) };
    store.promote_policy_version(&r("3"), &forced, "root").await.unwrap();
    assert_eq!(in_force(&store).await, ["support@3 active"]);
    let records = store.audit_records(1, i64::MAX, 1000).await.unwrap();
    let overridden = records.iter().find(|r| r.action == "policy.gate_overridden").unwrap();
    assert_eq!(overridden.actor, "root");
    let payload: serde_json::Value = serde_json::from_str(&overridden.payload).unwrap();
    assert_eq!(
        (payload["policy"].as_str(), payload["reason"].as_str()),
        (Some("support@3"), Some("incident 42: recall wording"))
    );
    let last = store.policy_transitions(&r("3")).await.unwrap().pop().unwrap();
    assert_eq!(last.detail["skip_gate"], "incident 42: recall wording");
}

pub async fn seeding_activates_once_then_registers_drafts(store: Arc<dyn Store>) {
    let Seeded::Activated(first) = store.seed_policy_version(new("1"), "system").await.unwrap() else {
        panic!("the first seed activates");
    };
    assert!(first.activated_at.is_some());
    assert!(
        matches!(store.seed_policy_version(new("1"), "system").await.unwrap(), Seeded::Known(v) if v.status == PolicyStatus::Active)
    );
    let mut edited = new("1");
    edited.source_text.push_str("# edited without a new version\n");
    let err = store.seed_policy_version(edited, "system").await.unwrap_err();
    assert!(matches!(&err, ChangeError::Conflict(m) if m.contains("bump `version`")), "{err:?}");
    let Seeded::Registered(second) = store.seed_policy_version(new("2"), "system").await.unwrap() else {
        panic!("a later version of the file is registered as a draft");
    };
    assert_eq!((second.status, second.parent_version.as_deref()), (PolicyStatus::Draft, Some("1")));
    assert_eq!(in_force(&store).await, ["support@1 active"]);
    // The file's author is `system`, so any person may approve it.
    store.approve_policy_version(&r("2"), "alice").await.unwrap();
}

pub async fn concurrent_promotions_keep_one_active_version(store: Arc<dyn Store>) {
    one_active_one_approved(&store).await;
    store.add_policy_version(new("3"), "alice").await.unwrap();
    store.approve_policy_version(&r("3"), "bob").await.unwrap();
    gate(&store, "2", true).await;
    gate(&store, "3", true).await;
    let promote = |version: &'static str, target: PolicyStatus| {
        let store = store.clone();
        tokio::spawn(async move { store.promote_policy_version(&r(version), &to(target), "bob").await })
    };
    let (a, b) = (promote("2", PolicyStatus::Shadow), promote("3", PolicyStatus::Shadow));
    let results = [a.await.unwrap(), b.await.unwrap()];
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "exactly one shadow wins: {results:?}");
    let shadow = if results[0].is_ok() { "2" } else { "3" };
    store.withdraw_policy_version(&r(shadow), "bob").await.unwrap();

    let (a, b) = (promote("2", PolicyStatus::Active), promote("3", PolicyStatus::Active));
    assert!(a.await.unwrap().is_ok() && b.await.unwrap().is_ok(), "each activation retires the one before");
    let force = in_force(&store).await;
    assert_eq!(force.len(), 1, "{force:?}");
    let statuses = [status(&store, "1").await, status(&store, "2").await, status(&store, "3").await];
    assert_eq!(statuses.iter().filter(|s| **s == PolicyStatus::Active).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == PolicyStatus::Retired).count(), 2, "{statuses:?}");
    assert!(store.verify().await.unwrap().is_ok());
}

pub async fn rollback_restores_the_previous_active_and_withdraws_the_canary(store: Arc<dyn Store>) {
    one_active_one_approved(&store).await;
    for v in ["3", "4"] {
        store.add_policy_version(new(v), "alice").await.unwrap();
        store.approve_policy_version(&r(v), "bob").await.unwrap();
    }
    for v in ["2", "3", "4"] {
        gate(&store, v, true).await;
    }
    store.promote_policy_version(&r("2"), &to(PolicyStatus::Active), "bob").await.unwrap();
    store.promote_policy_version(&r("3"), &to(PolicyStatus::Active), "bob").await.unwrap();
    store.promote_policy_version(&r("4"), &to(PolicyStatus::Canary), "bob").await.unwrap();
    assert_eq!(in_force(&store).await, ["support@3 active", "support@4 canary"]);

    let rolled = store.rollback_policy("support", None, "bob").await.unwrap();
    assert_eq!(rolled.restored.reference(), r("2"), "the most recently active one before");
    assert_eq!(rolled.withdrawn_canary.map(|c| (c.reference(), c.status)), Some((r("4"), PolicyStatus::Approved)));
    assert_eq!(in_force(&store).await, ["support@2 active"]);
    let jumped = store.rollback_policy("support", Some("1"), "bob").await.unwrap();
    assert_eq!((jumped.retired.reference(), jumped.restored.reference()), (r("2"), r("1")));
    assert_eq!(in_force(&store).await, ["support@1 active"]);
}

pub async fn shadow_decisions_are_stored_with_the_interaction_and_reported(store: Arc<dyn Store>) {
    let shadow = |phase, action, rule: Option<&str>| ShadowDecision {
        policy: r("2"),
        phase,
        action,
        rule: rule.map(str::to_owned),
    };
    let at = |s: i64| T0 + time::Duration::seconds(s);
    let mut same = interaction("support", at(0), Action::Allow, &[]);
    same.shadow = vec![shadow(Phase::Input, Action::Allow, None), shadow(Phase::Output, Action::Allow, None)];
    let mut stricter = interaction("support", at(1), Action::Allow, &[]);
    stricter.shadow = vec![
        shadow(Phase::Input, Action::Escalate, Some("escalate-refunds")),
        shadow(Phase::Output, Action::Flag, Some("x")),
    ];
    let mut laxer = interaction("support", at(2), Action::Block, &["injection"]);
    laxer.shadow = vec![shadow(Phase::Input, Action::Flag, Some("flag-injection"))];
    let unshadowed = interaction("support", at(3), Action::Allow, &[]);
    store
        .write_batch(WriteBatch {
            interactions: vec![same.clone(), stricter.clone(), laxer.clone(), unshadowed.clone()],
            ..WriteBatch::default()
        })
        .await
        .unwrap();
    assert_eq!(store.get_interaction(stricter.id).await.unwrap().unwrap().shadow, stricter.shadow);
    assert!(store.get_interaction(unshadowed.id).await.unwrap().unwrap().shadow.is_empty());

    let report = store.shadow_report(&r("2"), 10).await.unwrap();
    assert_eq!((report.interactions, report.differ), (3, 2));
    let pairs: Vec<(Action, Action, u64)> = report.pairs.iter().map(|p| (p.served, p.shadow, p.count)).collect();
    assert_eq!(pairs.len(), 3);
    assert!(pairs.contains(&(Action::Allow, Action::Escalate, 1)) && pairs.contains(&(Action::Block, Action::Flag, 1)));
    let examples: Vec<_> =
        report.examples.iter().map(|e| (e.interaction_id, e.served, e.shadow, e.rule.as_deref())).collect();
    assert_eq!(
        examples,
        [
            (laxer.id, Action::Block, Action::Flag, Some("flag-injection")),
            (stricter.id, Action::Allow, Action::Escalate, Some("escalate-refunds"))
        ]
    );
    assert_eq!(store.shadow_report(&r("2"), 1).await.unwrap().examples.len(), 1);
    assert_eq!(store.shadow_report(&r("9"), 10).await.unwrap().interactions, 0);
}

pub async fn stored_versions_are_immutable_and_never_deleted(h: &dyn Harness) {
    let store = h.open().await;
    store.seed_policy_version(new("1"), "system").await.unwrap();
    let edit = h.execute("UPDATE policy_versions SET source_text = 'x' WHERE version = '1'").await.unwrap_err();
    assert!(edit.contains("immutable"), "{edit}");
    let delete = h.execute("DELETE FROM policy_versions").await.unwrap_err();
    assert!(delete.contains("never deleted"), "{delete}");
    let second_active = h
        .execute(
            "INSERT INTO policy_versions (name, version, status, author, origin, source_text, sha256, created_at, status_at) \
             VALUES ('support', '2', 'active', 'x', 'x', 'x', 'x', 0, 0)",
        )
        .await
        .unwrap_err();
    assert!(second_active.contains("UNIQUE"), "two active versions of one name are impossible: {second_active}");
    assert_eq!(h.scalar("SELECT count(*) FROM policy_versions").await, 1);
}
