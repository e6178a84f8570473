//! The review queue's storage: intake from written batches and drift alerts, idempotent
//! opening, locks that lapse, labels with their required fields, second reviews,
//! adjudication, agreement, and the audit records of every change.

use std::sync::Arc;
use std::time::Duration;

use keel_core::{Action, Interaction};
use keel_store::review::{agreement, PRIORITY_HIGH, PRIORITY_LOW, PRIORITY_NORMAL};
use keel_store::{
    AlertWindow, CaseFilter, CaseIntake, CaseReason, CaseStatus, ChangeError, DriftCommit, LabelKind, NewDriftAlert,
    NewLabel, Store, WriteBatch,
};
use time::OffsetDateTime;

use super::{interaction, T0};

async fn write(store: &Arc<dyn Store>, interactions: Vec<Interaction>, intake: &CaseIntake) {
    let now = OffsetDateTime::now_utc();
    let cases = interactions.iter().filter_map(|i| intake.case_for(i, now)).collect();
    store.write_batch(WriteBatch { interactions, cases, ..WriteBatch::default() }).await.unwrap();
}

async fn actions(store: &Arc<dyn Store>, action: &str) -> Vec<keel_core::AuditRecord> {
    let records = store.audit_records(1, i64::MAX, 10_000).await.unwrap();
    records.into_iter().filter(|r| r.action == action).collect()
}

fn label(kind: &str, category: Option<&str>) -> NewLabel {
    let correction = matches!(kind, "wrong_answer").then(|| "the right answer".to_owned());
    let said = matches!(kind, "over_refusal").then(|| "what it should have said".to_owned());
    NewLabel::from_parts(kind, category.map(str::to_owned), correction, said, None).unwrap()
}

const LOCK: Duration = Duration::from_secs(600);

pub async fn flags_escalations_and_sampled_traffic_open_cases_in_the_write(store: Arc<dyn Store>) {
    let flagged = interaction("support", T0, Action::Flag, &["pii"]);
    let escalated = interaction("support", T0, Action::Escalate, &[]);
    let blocked = interaction("support", T0, Action::Block, &["jailbreak"]);
    let allowed: Vec<Interaction> = (0..200).map(|_| interaction("support", T0, Action::Allow, &[])).collect();
    let intake = CaseIntake { sample_rate: 0.1, ..CaseIntake::default() };
    let expected_sampled = allowed.iter().filter(|i| intake.samples(i.id)).count();
    assert!(expected_sampled > 0 && expected_sampled < 200, "{expected_sampled}");
    let mut batch = vec![flagged.clone(), escalated.clone(), blocked.clone()];
    batch.extend(allowed.clone());
    write(&store, batch, &intake).await;

    let all = store.list_cases(&CaseFilter { all: true, ..CaseFilter::default() }).await.unwrap();
    assert_eq!(all.len(), 2 + expected_sampled, "one case per flag and escalation, plus the sampled share");
    // Worked in priority order: the escalation, the flag, then the sampled.
    assert_eq!((all[0].reason, all[0].priority), (CaseReason::Escalated, PRIORITY_HIGH));
    assert_eq!(all[0].interaction_id, escalated.id);
    assert_eq!((all[1].reason, all[1].priority), (CaseReason::Flagged, PRIORITY_NORMAL));
    assert!(all[2..].iter().all(|c| c.reason == CaseReason::Sampled && c.priority == PRIORITY_LOW));
    assert!(all.iter().all(|c| c.status == CaseStatus::Open && c.due_at > c.created_at));
    assert!(!all.iter().any(|c| c.interaction_id == blocked.id), "a block is not queued by itself");
    let opened = actions(&store, "review.case_opened").await;
    assert_eq!(opened.len(), all.len(), "every opened case is audited in the same write");
    assert!(opened.iter().all(|r| r.actor == "gateway"));

    let sampled = store
        .list_cases(&CaseFilter { reason: Some(CaseReason::Sampled), all: true, ..CaseFilter::default() })
        .await
        .unwrap();
    assert_eq!(sampled.len(), expected_sampled);
}

pub async fn opening_a_case_twice_changes_nothing(store: Arc<dyn Store>) {
    let i = interaction("support", T0, Action::Allow, &[]);
    write(&store, vec![i.clone()], &CaseIntake::default()).await;
    let intake = CaseIntake::default();
    let new = intake.case(i.id, "support", CaseReason::WrongAnswerReport, None, OffsetDateTime::now_utc());
    let (case, opened) = store.open_case(new.clone(), "feedback").await.unwrap();
    assert!(opened);
    assert_eq!((case.reason, case.priority), (CaseReason::WrongAnswerReport, PRIORITY_HIGH));
    let (again, opened) = store.open_case(new, "feedback").await.unwrap();
    assert!(!opened);
    assert_eq!(again.id, case.id);
    assert_eq!(actions(&store, "review.case_opened").await.len(), 1);
    // Another reason for the same interaction is another case.
    let other = intake.case(i.id, "support", CaseReason::LowSatisfaction, None, OffsetDateTime::now_utc());
    assert!(store.open_case(other, "feedback").await.unwrap().1);

    let unknown = intake.case(keel_core::InteractionId::new(), "support", CaseReason::Sampled, None, T0);
    let err = store.open_case(unknown, "feedback").await.unwrap_err();
    assert!(matches!(err, ChangeError::NotFound(_)), "{err:?}");
}

pub async fn next_takes_the_most_urgent_case_and_locks_it(store: Arc<dyn Store>) {
    let flag = interaction("support", T0, Action::Flag, &[]);
    let escalate = interaction("support", T0, Action::Escalate, &[]);
    let other_app = interaction("billing", T0, Action::Escalate, &[]);
    write(&store, vec![flag.clone(), escalate.clone(), other_app], &CaseIntake::default()).await;

    let first = store.take_next_case("aiko", Some("support"), LOCK).await.unwrap().unwrap();
    assert_eq!(first.interaction_id, escalate.id);
    assert_eq!(first.status, CaseStatus::InReview);
    assert_eq!(first.assignee.as_deref(), Some("aiko"));
    assert!(first.first_taken_at.is_some());
    // Asking again gives back the case already held, not a second one.
    let again = store.take_next_case("aiko", Some("support"), LOCK).await.unwrap().unwrap();
    assert_eq!(again.id, first.id);
    // Another reviewer gets the next case; the held one is not offered.
    let second = store.take_next_case("ben", Some("support"), LOCK).await.unwrap().unwrap();
    assert_eq!(second.interaction_id, flag.id);
    assert!(store.take_next_case("carl", Some("support"), LOCK).await.unwrap().is_none());

    // A label on a case someone else holds names them and the lock's end.
    let err = store.label_case(first.id, label("ok", None), "ben").await.unwrap_err();
    let ChangeError::Conflict(message) = err else { panic!("{err:?}") };
    assert!(message.contains("locked by aiko until"), "{message}");
    // Only the holder releases; then the case is free again.
    assert!(matches!(store.release_case(first.id, "ben").await.unwrap_err(), ChangeError::Conflict(_)));
    let released = store.release_case(first.id, "aiko").await.unwrap();
    assert_eq!((released.status, released.assignee), (CaseStatus::Open, None));
    let taken = store.take_next_case("carl", Some("support"), LOCK).await.unwrap().unwrap();
    assert_eq!(taken.id, first.id);
    assert_eq!(actions(&store, "review.case_taken").await.len(), 4);
    assert_eq!(actions(&store, "review.case_released").await.len(), 1);
    assert!(matches!(store.label_case(9999, label("ok", None), "carl").await.unwrap_err(), ChangeError::NotFound(_)));
}

pub async fn a_lapsed_lock_frees_the_case(store: Arc<dyn Store>) {
    let flag = interaction("support", T0, Action::Flag, &[]);
    write(&store, vec![flag], &CaseIntake::default()).await;
    let taken = store.take_next_case("crashed", None, Duration::from_millis(50)).await.unwrap().unwrap();
    assert!(store.take_next_case("ben", None, LOCK).await.unwrap().is_none(), "held while the lock lasts");
    tokio::time::sleep(Duration::from_millis(80)).await;
    let retaken = store.take_next_case("ben", None, LOCK).await.unwrap().unwrap();
    assert_eq!(retaken.id, taken.id);
    assert_eq!(retaken.assignee.as_deref(), Some("ben"));
    assert_eq!(retaken.first_taken_at, taken.first_taken_at, "the SLA keeps the first take");
    let labelled = store.label_case(taken.id, label("violation", Some("product_recall")), "ben").await.unwrap();
    assert_eq!(labelled.status, CaseStatus::Labelled);
    let fin = labelled.final_label().unwrap();
    assert_eq!(
        (fin.label, fin.category.as_deref(), fin.reviewer.as_str()),
        (LabelKind::Violation, Some("product_recall"), "ben")
    );
    assert!(labelled.labelled_at.is_some());
    assert!(labelled.assignee.is_none());
    let err = store.label_case(taken.id, label("ok", None), "carl").await.unwrap_err();
    assert!(matches!(err, ChangeError::Conflict(_)), "a settled case takes no more labels: {err:?}");
}

pub async fn second_reviews_agree_or_go_to_adjudication(store: Arc<dyn Store>) {
    let a = interaction("support", T0, Action::Flag, &[]);
    let b = interaction("support", T0 + Duration::from_secs(1), Action::Flag, &[]);
    let intake = CaseIntake { second_review_share: 1.0, ..CaseIntake::default() };
    write(&store, vec![a.clone(), b.clone()], &intake).await;
    let cases = store.list_cases(&CaseFilter::default()).await.unwrap();
    assert!(cases.iter().all(|c| c.needs_second));
    let (ca, cb) = (cases[0].id, cases[1].id);

    // Agreement settles the case with the second label as final.
    let after_first = store.label_case(ca, label("violation", Some("recall")), "aiko").await.unwrap();
    assert_eq!(after_first.status, CaseStatus::Open, "waiting for its second review");
    assert!(after_first.final_label().is_none());
    let err = store.label_case(ca, label("violation", Some("recall")), "aiko").await.unwrap_err();
    let ChangeError::Conflict(message) = err else { panic!("{err:?}") };
    assert!(message.contains("different reviewer"), "{message}");
    // The first reviewer is not offered the case again; another reviewer is.
    let next = store.take_next_case("aiko", None, LOCK).await.unwrap().unwrap();
    assert_eq!(next.id, cb);
    store.release_case(cb, "aiko").await.unwrap();
    let agreed = store.label_case(ca, label("violation", Some("recall")), "ben").await.unwrap();
    assert_eq!(agreed.status, CaseStatus::Labelled);
    assert_eq!(agreed.final_label().unwrap().reviewer, "ben");

    // Disagreement needs a third person.
    store.label_case(cb, label("ok", None), "aiko").await.unwrap();
    let disputed = store.label_case(cb, label("violation", Some("recall")), "ben").await.unwrap();
    assert_eq!(disputed.status, CaseStatus::NeedsAdjudication);
    assert!(matches!(store.label_case(cb, label("ok", None), "carl").await.unwrap_err(), ChangeError::Conflict(_)));
    let err = store.adjudicate_case(cb, label("ok", None), "aiko").await.unwrap_err();
    assert!(matches!(err, ChangeError::Forbidden(_)), "a reviewer of the case does not adjudicate it: {err:?}");
    let decided = store.adjudicate_case(cb, label("ok", None), "carl").await.unwrap();
    assert_eq!(decided.status, CaseStatus::Labelled);
    let fin = decided.final_label().unwrap();
    assert_eq!((fin.label, fin.reviewer.as_str()), (LabelKind::Ok, "carl"));
    assert!(matches!(
        store.adjudicate_case(ca, label("ok", None), "carl").await.unwrap_err(),
        ChangeError::Conflict(_)
    ));

    let pairs = store.review_pairs(None).await.unwrap();
    assert_eq!(pairs.len(), 2);
    let report = agreement(&pairs);
    assert_eq!((report.pairs, report.agreed), (2, 1));
    assert_eq!(actions(&store, "review.labelled").await.len(), 4);
    assert_eq!(actions(&store, "review.adjudicated").await.len(), 1);
    assert!(store.verify().await.unwrap().is_ok());
}

pub async fn a_drift_alert_opens_cases_for_its_sample(store: Arc<dyn Store>) {
    let sampled: Vec<Interaction> = (0..3).map(|_| interaction("support", T0, Action::Allow, &[])).collect();
    write(&store, sampled.clone(), &CaseIntake::default()).await;
    assert!(store.acquire_lease("drift-monitor", "me", Duration::from_secs(60)).await.unwrap());
    let mut ids: Vec<_> = sampled.iter().map(|i| i.id).collect();
    ids.push(keel_core::InteractionId::new());
    let alert = NewDriftAlert {
        detector: "action-rate".into(),
        stream: "action".into(),
        app: Some("support".into()),
        method: "chi_square".into(),
        statistic: 9.0,
        threshold: 3.0,
        p_value: None,
        window: AlertWindow { size: 3, first_seq: 1, last_seq: 3, first_at: T0, last_at: T0 },
        reference_size: 100,
        samples: 103,
        detail: "block rose".into(),
        sample_interaction_ids: ids,
        opened_at: OffsetDateTime::now_utc(),
    };
    let commit = DriftCommit {
        holder: "me".into(),
        lease: "drift-monitor".into(),
        alerts: vec![alert],
        ..DriftCommit::default()
    };
    let opened = store.commit_drift(commit).await.unwrap();
    let cases =
        store.list_cases(&CaseFilter { reason: Some(CaseReason::DriftAlert), ..CaseFilter::default() }).await.unwrap();
    assert_eq!(cases.len(), 3, "one per stored sampled interaction");
    assert!(cases.iter().all(|c| c.alert_id == Some(opened[0].id) && c.app == "support"));
    let audited = actions(&store, "review.case_opened").await;
    assert_eq!(audited.len(), 3);
    assert!(audited.iter().all(|r| r.actor == "monitor"));
}
