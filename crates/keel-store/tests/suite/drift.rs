//! The drift monitor's storage: detector checkpoints, alerts and their state machine, the
//! lease, and the webhook outbox.

use std::sync::Arc;
use std::time::Duration;

use keel_core::InteractionId;
use keel_monitor::{AlertAction, AlertState};
use keel_store::{
    AlertFilter, AlertWindow, DeliveryAttempt, DeliveryStatus, DetectorCheckpoint, DriftCommit, DriftSource,
    NewDriftAlert, Store, StoreError,
};
use serde_json::json;
use time::OffsetDateTime;

use super::T0;

const LEASE: &str = "drift-monitor";

fn new_alert(detector: &str) -> NewDriftAlert {
    NewDriftAlert {
        detector: detector.to_owned(),
        stream: "action".to_owned(),
        app: Some("support".to_owned()),
        method: "chi_square".to_owned(),
        statistic: 7.25,
        threshold: 3.5,
        p_value: Some(5.6e-8),
        window: AlertWindow {
            size: 1000,
            first_seq: 4001,
            last_seq: 5000,
            first_at: T0,
            last_at: T0 + Duration::from_secs(60),
        },
        reference_size: 2000,
        samples: 5000,
        detail: "block rose from 2% to 6%".to_owned(),
        sample_interaction_ids: vec![InteractionId::new(), InteractionId::new()],
        opened_at: OffsetDateTime::now_utc(),
    }
}

fn checkpoint(name: &str, cursor: i64) -> DetectorCheckpoint {
    DetectorCheckpoint {
        name: name.to_owned(),
        config_hash: "abc".to_owned(),
        source: DriftSource::Interactions,
        cursor,
        state: json!({"n": cursor, "x": 0.1 + 0.2}),
    }
}

async fn open_alert(store: &Arc<dyn Store>, detector: &str, sinks: &[&str]) -> i64 {
    assert!(store.acquire_lease(LEASE, "me", Duration::from_secs(60)).await.unwrap());
    let opened = store
        .commit_drift(DriftCommit {
            holder: "me".to_owned(),
            lease: LEASE.to_owned(),
            alerts: vec![new_alert(detector)],
            sinks: sinks.iter().map(|s| (*s).to_owned()).collect(),
            ..DriftCommit::default()
        })
        .await
        .unwrap();
    opened[0].id
}

pub async fn drift_commit_stores_state_alerts_and_audit_atomically(store: Arc<dyn Store>) {
    // Without the lease nothing is written.
    let commit = DriftCommit {
        holder: "me".to_owned(),
        lease: LEASE.to_owned(),
        checkpoints: vec![checkpoint("a", 10), checkpoint("b", 12)],
        alerts: vec![new_alert("a")],
        sinks: vec!["ops".to_owned()],
        ..DriftCommit::default()
    };
    let err = store.commit_drift(commit.clone()).await.unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost { .. }), "{err:?}");
    assert!(store.detector_checkpoints().await.unwrap().is_empty());
    assert!(store.list_alerts(&AlertFilter::default()).await.unwrap().is_empty());

    assert!(store.acquire_lease(LEASE, "me", Duration::from_secs(60)).await.unwrap());
    let opened = store.commit_drift(commit).await.unwrap();
    assert_eq!(opened.len(), 1);
    assert_eq!(opened[0].state, AlertState::Open);
    let stored = store.get_alert(opened[0].id).await.unwrap().unwrap();
    assert_eq!(stored, opened[0], "what is returned is what is stored");
    assert_eq!(stored.opened, new_alert("a").clone_with_ids(&stored.opened));

    let checkpoints = store.detector_checkpoints().await.unwrap();
    assert_eq!(checkpoints, vec![checkpoint("a", 10), checkpoint("b", 12)]);
    // A later step replaces a state and removes a detector no longer configured.
    store
        .commit_drift(DriftCommit {
            holder: "me".to_owned(),
            lease: LEASE.to_owned(),
            checkpoints: vec![checkpoint("a", 20)],
            removed: vec!["b".to_owned()],
            ..DriftCommit::default()
        })
        .await
        .unwrap();
    assert_eq!(store.detector_checkpoints().await.unwrap(), vec![checkpoint("a", 20)]);

    let last = store.last_audit_record().await.unwrap().unwrap();
    assert_eq!((last.actor.as_str(), last.action.as_str()), ("monitor", "drift.alert_opened"));
    assert!(last.payload.contains(&format!("\"alert_id\":{}", stored.id)), "{}", last.payload);
    assert!(store.verify().await.unwrap().is_ok());
    // The new alert waits in the outbox for its sink.
    let due = store.due_deliveries(&["ops".to_owned()], OffsetDateTime::now_utc(), 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!((due[0].alert.id, due[0].sink.as_str(), due[0].attempts), (stored.id, "ops", 0));
}

pub async fn alert_transitions_follow_the_state_machine_and_are_audited(store: Arc<dyn Store>) {
    let id = open_alert(&store, "a", &[]).await;
    let before = store.last_audit_record().await.unwrap().unwrap().seq;
    let acked = store.transition_alert(id, AlertAction::Acknowledge, "ana").await.unwrap();
    assert_eq!((acked.state, acked.acknowledged_by.as_deref()), (AlertState::Acknowledged, Some("ana")));
    let err = store.transition_alert(id, AlertAction::Acknowledge, "bo").await.unwrap_err();
    assert_eq!(err.to_string(), format!("cannot acknowledge alert {id}: it is acknowledged"));
    let resolved = store.transition_alert(id, AlertAction::Resolve, "bo").await.unwrap();
    assert_eq!((resolved.state, resolved.resolved_by.as_deref()), (AlertState::Resolved, Some("bo")));
    assert_eq!(store.get_alert(id).await.unwrap().unwrap(), resolved);
    for action in [AlertAction::Acknowledge, AlertAction::Resolve] {
        let err = store.transition_alert(id, action, "cy").await.unwrap_err();
        assert!(matches!(err, StoreError::IllegalAlertTransition { state: "resolved", .. }), "{err:?}");
    }
    assert!(matches!(
        store.transition_alert(id + 100, AlertAction::Resolve, "cy").await.unwrap_err(),
        StoreError::AlertNotFound(_)
    ));
    // Two changes, two records; refused moves leave none.
    let records = store.audit_records(before + 1, i64::MAX, 10).await.unwrap();
    let actions: Vec<(&str, &str)> = records.iter().map(|r| (r.actor.as_str(), r.action.as_str())).collect();
    assert_eq!(actions, [("ana", "drift.alert_acknowledged"), ("bo", "drift.alert_resolved")]);
    assert!(store.verify().await.unwrap().is_ok());

    // Filters: state and detector, newest first.
    let other = open_alert(&store, "b", &[]).await;
    let open =
        store.list_alerts(&AlertFilter { state: Some(AlertState::Open), ..AlertFilter::default() }).await.unwrap();
    assert_eq!(open.iter().map(|a| a.id).collect::<Vec<_>>(), vec![other]);
    let of_a = store.list_alerts(&AlertFilter { detector: Some("a".into()), ..AlertFilter::default() }).await.unwrap();
    assert_eq!(of_a.iter().map(|a| a.id).collect::<Vec<_>>(), vec![id]);
    let all = store.list_alerts(&AlertFilter::default()).await.unwrap();
    assert_eq!(all.iter().map(|a| a.id).collect::<Vec<_>>(), vec![other, id]);
}

pub async fn monitor_lease_has_one_holder_until_it_expires(store: Arc<dyn Store>) {
    assert!(store.acquire_lease(LEASE, "a", Duration::from_millis(300)).await.unwrap());
    assert!(!store.acquire_lease(LEASE, "b", Duration::from_secs(60)).await.unwrap(), "a holds it");
    assert!(store.acquire_lease(LEASE, "a", Duration::from_millis(300)).await.unwrap(), "a renews");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(store.acquire_lease(LEASE, "b", Duration::from_secs(60)).await.unwrap(), "expired: b takes over");
    let err = store
        .commit_drift(DriftCommit { holder: "a".into(), lease: LEASE.into(), ..DriftCommit::default() })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost { .. }), "a's late step is refused: {err:?}");
    store.release_lease(LEASE, "a").await.unwrap();
    assert!(!store.acquire_lease(LEASE, "a", Duration::from_secs(60)).await.unwrap(), "a cannot release b's lease");
    store.release_lease(LEASE, "b").await.unwrap();
    assert!(store.acquire_lease(LEASE, "a", Duration::from_secs(60)).await.unwrap());
}

pub async fn alert_deliveries_are_recorded_and_rescheduled(store: Arc<dyn Store>) {
    let id = open_alert(&store, "a", &["ops", "slack"]).await;
    let now = OffsetDateTime::now_utc();
    let sinks = vec!["ops".to_owned(), "slack".to_owned()];
    assert_eq!(store.due_deliveries(&sinks, now, 10).await.unwrap().len(), 2);
    assert!(store.due_deliveries(&[], now, 10).await.unwrap().is_empty());
    let later = now + Duration::from_secs(30);
    let attempt = |sink: &str, n, status, next| DeliveryAttempt {
        alert_id: id,
        sink: sink.to_owned(),
        attempt: n,
        status,
        http_status: Some(500),
        error: Some("HTTP 500".to_owned()),
        at: now,
        next_attempt_at: next,
    };
    store.record_delivery(&attempt("ops", 1, DeliveryStatus::Retry, Some(later))).await.unwrap();
    store.record_delivery(&attempt("slack", 1, DeliveryStatus::Failed, None)).await.unwrap();
    assert!(store.due_deliveries(&sinks, now, 10).await.unwrap().is_empty(), "ops waits, slack gave up");
    let due = store.due_deliveries(&sinks, later, 10).await.unwrap();
    assert_eq!((due.len(), due[0].sink.as_str(), due[0].attempts), (1, "ops", 1));
    store
        .record_delivery(&DeliveryAttempt {
            http_status: Some(204),
            error: None,
            ..attempt("ops", 2, DeliveryStatus::Delivered, None)
        })
        .await
        .unwrap();
    assert!(store.due_deliveries(&sinks, later + Duration::from_secs(3600), 10).await.unwrap().is_empty());
    let log = store.alert_deliveries(id).await.unwrap();
    let summary: Vec<(&str, u32, DeliveryStatus, Option<u16>)> =
        log.iter().map(|d| (d.sink.as_str(), d.attempt, d.status, d.http_status)).collect();
    assert_eq!(
        summary,
        [
            ("ops", 1, DeliveryStatus::Retry, Some(500)),
            ("slack", 1, DeliveryStatus::Failed, Some(500)),
            ("ops", 2, DeliveryStatus::Delivered, Some(204)),
        ]
    );
}

trait SameIds {
    fn clone_with_ids(self, stored: &NewDriftAlert) -> NewDriftAlert;
}

impl SameIds for NewDriftAlert {
    /// The fixture with the stored sample ids and opening time (both are generated per call).
    fn clone_with_ids(self, stored: &NewDriftAlert) -> NewDriftAlert {
        NewDriftAlert {
            sample_interaction_ids: stored.sample_interaction_ids.clone(),
            opened_at: stored.opened_at,
            ..self
        }
    }
}
