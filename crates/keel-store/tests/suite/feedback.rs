//! Feedback, handoff events and the KPI facts of a range.

use std::sync::Arc;
use std::time::Duration;

use keel_core::{Action, InteractionId};
use keel_monitor::kpi::ReviewFacts;
use keel_store::{
    CaseReason, ChangeError, HandoffRequest, HandoffStep, KpiRange, NewFeedback, NewHandoffEvent, NewLabel, Store,
    Thumbs, WriteBatch,
};
use time::OffsetDateTime;

use super::{interaction, write, T0};

fn feedback(event_id: &str, id: InteractionId, satisfaction: Option<u8>) -> NewFeedback {
    NewFeedback {
        event_id: event_id.to_owned(),
        interaction_id: id,
        satisfaction,
        thumbs: None,
        wrong_answer: None,
        comment: None,
        actor: "support-key".to_owned(),
        created_at: T0 + Duration::from_secs(5),
    }
}

fn handoff(event_id: &str, id: InteractionId, step: HandoffStep, at: OffsetDateTime) -> NewHandoffEvent {
    NewHandoffEvent {
        event_id: event_id.to_owned(),
        interaction_id: id,
        step,
        reason: None,
        actor: "agent".to_owned(),
        at,
    }
}

async fn audit_actions(store: &Arc<dyn Store>) -> Vec<(String, String)> {
    store.audit_records(1, i64::MAX, 10_000).await.unwrap().into_iter().map(|r| (r.actor, r.action)).collect()
}

pub async fn feedback_is_idempotent_by_event_id_and_audited(store: Arc<dyn Store>) {
    let i = interaction("support", T0, Action::Allow, &[]);
    let id = i.id;
    write(&store, vec![i]).await;
    let out = store
        .record_feedback(vec![
            feedback("e1", id, Some(4)),
            feedback("e1", id, Some(4)),
            feedback("e1", id, Some(2)),
            feedback("e2", InteractionId::new(), Some(3)),
            feedback("e3", id, Some(9)),
            NewFeedback { thumbs: Some(Thumbs::Down), wrong_answer: Some(true), ..feedback("e4", id, None) },
        ])
        .await
        .unwrap();
    let first = out[0].as_ref().unwrap();
    assert!(!first.duplicate);
    assert_eq!(first.event.app, "support");
    let again = out[1].as_ref().unwrap();
    assert!(again.duplicate);
    assert_eq!(again.event, first.event);
    assert!(matches!(&out[2], Err(ChangeError::Conflict(m)) if m.contains("e1")), "{:?}", out[2]);
    assert!(matches!(&out[3], Err(ChangeError::NotFound(_))), "{:?}", out[3]);
    assert!(matches!(&out[4], Err(ChangeError::Invalid { field, .. }) if field == "satisfaction"), "{:?}", out[4]);
    assert!(!out[5].as_ref().unwrap().duplicate);

    let stored = store.feedback_after(0, 10).await.unwrap();
    assert_eq!(stored.len(), 2, "only the two new events are stored");
    assert!(stored[0].seq < stored[1].seq);
    assert_eq!(stored[1].thumbs, Some(Thumbs::Down));
    assert_eq!(store.feedback_after(stored[0].seq, 10).await.unwrap().len(), 1);
    let recorded: Vec<_> =
        audit_actions(&store).await.into_iter().filter(|(_, action)| action == "feedback.recorded").collect();
    assert_eq!(recorded, vec![("support-key".to_owned(), "feedback.recorded".to_owned()); 2]);
    assert!(store.verify().await.unwrap().is_ok());
}

pub async fn handoff_steps_follow_requested_taken_resolved(store: Arc<dyn Store>) {
    let i = interaction("support", T0, Action::Allow, &[]);
    let id = i.id;
    write(&store, vec![i]).await;
    let at = |s: u64| T0 + Duration::from_secs(s);

    let early = store.record_handoff_event(handoff("t0", id, HandoffStep::Taken, at(1))).await.unwrap_err();
    assert!(matches!(&early, ChangeError::Conflict(m) if m.contains("never requested")), "{early:?}");
    let unknown = store
        .record_handoff_event(handoff("x", InteractionId::new(), HandoffStep::Requested, at(1)))
        .await
        .unwrap_err();
    assert!(matches!(unknown, ChangeError::NotFound(_)), "{unknown:?}");

    let requested = store.record_handoff_event(handoff("r1", id, HandoffStep::Requested, at(10))).await.unwrap();
    assert_eq!(requested.event.handoff.requested_at, at(10));
    let skip = store.record_handoff_event(handoff("v0", id, HandoffStep::Resolved, at(11))).await.unwrap_err();
    assert!(matches!(&skip, ChangeError::Conflict(m) if m.contains("nobody has taken it")), "{skip:?}");
    let taken = store.record_handoff_event(handoff("t1", id, HandoffStep::Taken, at(70))).await.unwrap();
    assert_eq!(taken.event.handoff.taken_at, Some(at(70)));
    let retry = store.record_handoff_event(handoff("t1", id, HandoffStep::Taken, at(70))).await.unwrap();
    assert!(retry.duplicate);
    let twice = store.record_handoff_event(handoff("t2", id, HandoffStep::Taken, at(80))).await.unwrap_err();
    assert!(matches!(&twice, ChangeError::Conflict(m) if m.contains("already taken")), "{twice:?}");
    let reused = store.record_handoff_event(handoff("t1", id, HandoffStep::Resolved, at(90))).await.unwrap_err();
    assert!(matches!(reused, ChangeError::Conflict(_)), "{reused:?}");
    let resolved = store.record_handoff_event(handoff("v1", id, HandoffStep::Resolved, at(99))).await.unwrap();
    assert_eq!(resolved.event.handoff.resolved_at, Some(at(99)));

    let steps: Vec<String> = audit_actions(&store)
        .await
        .into_iter()
        .filter(|(_, a)| a.starts_with("handoff."))
        .map(|(actor, a)| format!("{actor} {a}"))
        .collect();
    assert_eq!(steps, ["agent handoff.requested", "agent handoff.taken", "agent handoff.resolved"]);
    let rows = store.kpi_rows(&KpiRange { app: None, since: T0, until: at(3600) }).await.unwrap();
    assert_eq!(rows.handoffs.len(), 1);
    assert_eq!(rows.handoffs[0].taken_at, Some(at(70)));
}

pub async fn an_escalation_counts_as_requested(store: Arc<dyn Store>) {
    let i = interaction("support", T0, Action::Escalate, &[]);
    let id = i.id;
    let request = HandoffRequest { interaction_id: id, app: "support".into(), created_at: T0, reason: "angry".into() };
    store
        .write_batch(WriteBatch { interactions: vec![i], handoffs: vec![request], audit: vec![], cases: vec![] })
        .await
        .unwrap();
    let taken =
        store.record_handoff_event(handoff("t", id, HandoffStep::Taken, T0 + Duration::from_secs(30))).await.unwrap();
    assert_eq!(taken.event.handoff.reason, "angry");
    assert_eq!(taken.event.handoff.requested_at, T0);
}

pub async fn kpi_rows_cover_the_range_and_app(store: Arc<dyn Store>) {
    let inside = interaction("support", T0, Action::Flag, &["pii"]);
    let other_app = interaction("sales", T0, Action::Allow, &[]);
    let later = interaction("support", T0 + Duration::from_secs(7200), Action::Allow, &[]);
    let (a, b, c) = (inside.id, other_app.id, later.id);
    write(&store, vec![inside, other_app, later]).await;
    store
        .record_feedback(vec![feedback("a", a, Some(5)), feedback("b", b, Some(1)), feedback("c", c, Some(2))])
        .await
        .unwrap();
    let rows = store
        .kpi_rows(&KpiRange { app: Some("support".into()), since: T0, until: T0 + Duration::from_secs(3600) })
        .await
        .unwrap();
    assert_eq!(rows.interactions.len(), 1);
    let facts = &rows.interactions[0].facts;
    assert_eq!(facts.id, a.to_string());
    assert_eq!(facts.action, "flag");
    assert_eq!(facts.checks, vec![("pii".to_owned(), true), ("quiet".to_owned(), false)]);
    assert_eq!(facts.upstream_ms, Some(12.5));
    assert_eq!(rows.interactions[0].response_text.as_deref(), Some("hello"));
    assert_eq!(rows.feedback.len(), 1);
    assert_eq!(rows.feedback[0].satisfaction, Some(5));
    let known = store.stored_interactions(&[a, b, InteractionId::new()]).await.unwrap();
    assert_eq!(known.len(), 2);
    assert!(known.contains(&a) && known.contains(&b));
    assert!(rows.reviews.is_empty(), "nothing is reviewed yet");

    let intake = keel_store::CaseIntake::default();
    let (case, _) =
        store.open_case(intake.case(a, "support", CaseReason::WrongAnswerReport, None, T0), "test").await.unwrap();
    let label = NewLabel::from_parts("wrong_answer", None, Some("The XR-200 is recalled.".into()), None, None).unwrap();
    store.label_case(case.id, label, "aiko").await.unwrap();
    let (other, _) = store.open_case(intake.case(b, "sales", CaseReason::Sampled, None, T0), "test").await.unwrap();
    store.label_case(other.id, NewLabel::from_parts("ok", None, None, None, None).unwrap(), "aiko").await.unwrap();
    let rows = store
        .kpi_rows(&KpiRange { app: Some("support".into()), since: T0, until: T0 + Duration::from_secs(3600) })
        .await
        .unwrap();
    assert_eq!(rows.reviews, vec![ReviewFacts { interaction_id: a.to_string(), wrong_answer: true }]);
}
