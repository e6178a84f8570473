//! The in-process gateway target's store: it captures each interaction's per-phase decisions
//! and checks as the gateway's writer hands it over, for the case waiting for them, and
//! stores nothing.
//!
//! The run record is the evaluation's record; the gateway's own copy of each interaction was
//! only ever read back for its decisions. Reading it back (flush the writer, then
//! `get_interaction`) cost a transaction and a query per case on the in-memory database's
//! single connection, and capped the gateway target at about 2,000 cases per second; even
//! batched writes made every case wait for a commit. Waiting for the one interaction a case
//! needs also covers interactions the gateway hands over late (after its asynchronous checks).
//! Everything but writes goes to an empty in-memory store, so the gateway's other reads work.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use keel_core::{AuditRecord, Interaction, InteractionId, PolicyRef};
use keel_store::{
    AccessGeneration, AccessStore, AlertFilter, AuditStore, CaseFilter, ChangeError, DeliveryAttempt,
    DetectorCheckpoint, DriftAlert, DriftCommit, DriftStore, Feedback, FeedbackStore, GateRun, HandoffEvent,
    HandoffFilter, HandoffRequest, HandoffStore, InteractionFilter, InteractionStore, InteractionSummary, IssuedToken,
    KpiRange, KpiRows, LifecycleStore, NewCase, NewFeedback, NewGateRun, NewHandoffEvent, NewLabel, NewPolicyVersion,
    PendingDelivery, PolicyVersion, Promotion, Receipt, Result, ReviewCase, ReviewStore, RollbackOutcome, Seeded,
    ShadowReport, Store, StoredLabel, TokenInfo, TokenRecord, Transition, VerifyReport, WriteBatch,
};
use time::OffsetDateTime;
use tokio::sync::oneshot;

use crate::target::PhaseDecision;

/// What the gateway recorded about one interaction, as a run keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Recorded {
    /// Each phase's decision and rule.
    pub decisions: Vec<PhaseDecision>,
    /// Checks that hit, in the order they ran.
    pub checks_hit: Vec<String>,
}

impl Recorded {
    fn of(interaction: &Interaction) -> Self {
        Recorded {
            decisions: interaction
                .decisions
                .iter()
                .map(|d| PhaseDecision { phase: d.phase, action: d.action, rule: d.rule.clone() })
                .collect(),
            checks_hit: keel_store::checks_hit(interaction),
        }
    }
}

enum Slot {
    /// A case waits for this interaction.
    Waiting(oneshot::Sender<Recorded>),
    /// Handed over before its case asked.
    Stored(Recorded),
}

/// A store that hands each written interaction's record to the case waiting for it, drops
/// the write, and passes every other call to `inner`.
pub(crate) struct Tap {
    inner: Arc<dyn Store>,
    slots: Mutex<HashMap<InteractionId, Slot>>,
}

impl Tap {
    /// A tap on `inner`.
    pub fn new(inner: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(Tap { inner, slots: Mutex::new(HashMap::new()) })
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<InteractionId, Slot>> {
        // A panic while holding the map cannot leave it half-updated: every change is one call.
        self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What the gateway recorded for `id`, waiting up to `within` for its writer; `None` when
    /// it was not handed over in time (its asynchronous checks are still running).
    pub async fn recorded(&self, id: InteractionId, within: Duration) -> Option<Recorded> {
        let waiting = {
            let mut slots = self.slots();
            if let Some(Slot::Stored(recorded)) = slots.remove(&id) {
                return Some(recorded);
            }
            let (tx, rx) = oneshot::channel();
            slots.insert(id, Slot::Waiting(tx));
            rx
        };
        match tokio::time::timeout(within, waiting).await {
            Ok(Ok(recorded)) => Some(recorded),
            _ => {
                self.slots().remove(&id);
                None
            }
        }
    }

    fn stored(&self, id: InteractionId, recorded: Recorded) {
        let mut slots = self.slots();
        match slots.remove(&id) {
            Some(Slot::Waiting(tx)) => {
                // The case gave up waiting: nobody needs the record any more.
                let _ = tx.send(recorded);
            }
            Some(Slot::Stored(_)) | None => {
                slots.insert(id, Slot::Stored(recorded));
            }
        }
    }
}

#[async_trait]
impl Store for Tap {
    /// Captures the interactions; their audit records, handoffs and explicit audit entries
    /// are not kept (no audit record is appended, so none is returned).
    async fn write_batch(&self, batch: WriteBatch) -> Result<Vec<AuditRecord>> {
        for interaction in &batch.interactions {
            self.stored(interaction.id, Recorded::of(interaction));
        }
        Ok(Vec::new())
    }
}

#[async_trait]
impl InteractionStore for Tap {
    async fn get_interaction(&self, id: InteractionId) -> Result<Option<Interaction>> {
        self.inner.get_interaction(id).await
    }
    async fn list_interactions(&self, filter: &InteractionFilter) -> Result<Vec<InteractionSummary>> {
        self.inner.list_interactions(filter).await
    }
    async fn interactions_after(&self, after_seq: i64, limit: u32) -> Result<Vec<(i64, Interaction)>> {
        self.inner.interactions_after(after_seq, limit).await
    }
}

#[async_trait]
impl AuditStore for Tap {
    async fn audit_records(&self, from: i64, to: i64, limit: u32) -> Result<Vec<AuditRecord>> {
        self.inner.audit_records(from, to, limit).await
    }
    async fn last_audit_record(&self) -> Result<Option<AuditRecord>> {
        self.inner.last_audit_record().await
    }
    async fn verify(&self) -> Result<VerifyReport> {
        self.inner.verify().await
    }
}

#[async_trait]
impl HandoffStore for Tap {
    async fn list_handoffs(&self, filter: &HandoffFilter) -> Result<Vec<HandoffRequest>> {
        self.inner.list_handoffs(filter).await
    }
}

#[async_trait]
impl DriftStore for Tap {
    async fn detector_checkpoints(&self) -> Result<Vec<DetectorCheckpoint>> {
        self.inner.detector_checkpoints().await
    }
    async fn commit_drift(&self, commit: DriftCommit) -> Result<Vec<DriftAlert>> {
        self.inner.commit_drift(commit).await
    }
    async fn list_alerts(&self, filter: &AlertFilter) -> Result<Vec<DriftAlert>> {
        self.inner.list_alerts(filter).await
    }
    async fn get_alert(&self, id: i64) -> Result<Option<DriftAlert>> {
        self.inner.get_alert(id).await
    }
    async fn transition_alert(&self, id: i64, action: keel_monitor::AlertAction, actor: &str) -> Result<DriftAlert> {
        self.inner.transition_alert(id, action, actor).await
    }
    async fn acquire_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
        self.inner.acquire_lease(name, holder, ttl).await
    }
    async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        self.inner.release_lease(name, holder).await
    }
    async fn due_deliveries(&self, sinks: &[String], now: OffsetDateTime, limit: u32) -> Result<Vec<PendingDelivery>> {
        self.inner.due_deliveries(sinks, now, limit).await
    }
    async fn record_delivery(&self, attempt: &DeliveryAttempt) -> Result<()> {
        self.inner.record_delivery(attempt).await
    }
    async fn alert_deliveries(&self, alert_id: i64) -> Result<Vec<DeliveryAttempt>> {
        self.inner.alert_deliveries(alert_id).await
    }
}

#[async_trait]
impl AccessStore for Tap {
    async fn create_token(&self, name: &str, role: keel_core::Role, actor: &str) -> Result<IssuedToken, ChangeError> {
        self.inner.create_token(name, role, actor).await
    }
    async fn list_tokens(&self) -> Result<Vec<TokenInfo>> {
        self.inner.list_tokens().await
    }
    async fn revoke_token(&self, name: &str, actor: &str) -> Result<TokenInfo, ChangeError> {
        self.inner.revoke_token(name, actor).await
    }
    async fn token_record(&self, lookup_id: &str) -> Result<Option<TokenRecord>> {
        self.inner.token_record(lookup_id).await
    }
    async fn touch_token(&self, lookup_id: &str, at: OffsetDateTime) -> Result<()> {
        self.inner.touch_token(lookup_id, at).await
    }
    async fn access_generation(&self) -> Result<AccessGeneration> {
        self.inner.access_generation().await
    }
}

#[async_trait]
impl LifecycleStore for Tap {
    async fn add_policy_version(&self, new: NewPolicyVersion, actor: &str) -> Result<PolicyVersion, ChangeError> {
        self.inner.add_policy_version(new, actor).await
    }
    async fn seed_policy_version(&self, new: NewPolicyVersion, actor: &str) -> Result<Seeded, ChangeError> {
        self.inner.seed_policy_version(new, actor).await
    }
    async fn policy_version(&self, policy: &PolicyRef) -> Result<Option<PolicyVersion>> {
        self.inner.policy_version(policy).await
    }
    async fn policy_versions(&self, name: Option<&str>) -> Result<Vec<PolicyVersion>> {
        self.inner.policy_versions(name).await
    }
    async fn policies_in_force(&self) -> Result<Vec<PolicyVersion>> {
        self.inner.policies_in_force().await
    }
    async fn policy_transitions(&self, policy: &PolicyRef) -> Result<Vec<Transition>> {
        self.inner.policy_transitions(policy).await
    }
    async fn approve_policy_version(&self, policy: &PolicyRef, actor: &str) -> Result<PolicyVersion, ChangeError> {
        self.inner.approve_policy_version(policy, actor).await
    }
    async fn promote_policy_version(
        &self,
        policy: &PolicyRef,
        promotion: &Promotion,
        actor: &str,
    ) -> Result<PolicyVersion, ChangeError> {
        self.inner.promote_policy_version(policy, promotion, actor).await
    }
    async fn withdraw_policy_version(&self, policy: &PolicyRef, actor: &str) -> Result<PolicyVersion, ChangeError> {
        self.inner.withdraw_policy_version(policy, actor).await
    }
    async fn rollback_policy(&self, name: &str, to: Option<&str>, actor: &str) -> Result<RollbackOutcome, ChangeError> {
        self.inner.rollback_policy(name, to, actor).await
    }
    async fn record_gate_run(&self, run: NewGateRun) -> Result<GateRun, ChangeError> {
        self.inner.record_gate_run(run).await
    }
    async fn gate_runs(&self, policy: &PolicyRef) -> Result<Vec<GateRun>> {
        self.inner.gate_runs(policy).await
    }
    async fn shadow_report(&self, policy: &PolicyRef, examples: u32) -> Result<ShadowReport> {
        self.inner.shadow_report(policy, examples).await
    }
}

#[async_trait]
impl ReviewStore for Tap {
    async fn open_case(&self, new: NewCase, actor: &str) -> Result<(ReviewCase, bool), ChangeError> {
        self.inner.open_case(new, actor).await
    }
    async fn get_case(&self, id: i64) -> Result<Option<ReviewCase>> {
        self.inner.get_case(id).await
    }
    async fn list_cases(&self, filter: &CaseFilter) -> Result<Vec<ReviewCase>> {
        self.inner.list_cases(filter).await
    }
    async fn take_next_case(&self, actor: &str, app: Option<&str>, lock: Duration) -> Result<Option<ReviewCase>> {
        self.inner.take_next_case(actor, app, lock).await
    }
    async fn label_case(&self, id: i64, label: NewLabel, actor: &str) -> Result<ReviewCase, ChangeError> {
        self.inner.label_case(id, label, actor).await
    }
    async fn release_case(&self, id: i64, actor: &str) -> Result<ReviewCase, ChangeError> {
        self.inner.release_case(id, actor).await
    }
    async fn adjudicate_case(&self, id: i64, label: NewLabel, actor: &str) -> Result<ReviewCase, ChangeError> {
        self.inner.adjudicate_case(id, label, actor).await
    }
    async fn close_case(&self, id: i64, reason: &str, actor: &str) -> Result<ReviewCase, ChangeError> {
        self.inner.close_case(id, reason, actor).await
    }
    async fn review_pairs(&self, app: Option<&str>) -> Result<Vec<(StoredLabel, StoredLabel)>> {
        self.inner.review_pairs(app).await
    }
}

#[async_trait]
impl FeedbackStore for Tap {
    async fn record_feedback(&self, events: Vec<NewFeedback>) -> Result<Vec<Result<Receipt<Feedback>, ChangeError>>> {
        self.inner.record_feedback(events).await
    }
    async fn feedback_after(&self, after_seq: i64, limit: u32) -> Result<Vec<Feedback>> {
        self.inner.feedback_after(after_seq, limit).await
    }
    async fn record_handoff_event(&self, event: NewHandoffEvent) -> Result<Receipt<HandoffEvent>, ChangeError> {
        self.inner.record_handoff_event(event).await
    }
    async fn stored_interactions(&self, ids: &[InteractionId]) -> Result<std::collections::HashSet<InteractionId>> {
        self.inner.stored_interactions(ids).await
    }
    async fn kpi_rows(&self, range: &KpiRange) -> Result<KpiRows> {
        self.inner.kpi_rows(range).await
    }
}

#[cfg(test)]
mod tests {
    use keel_core::{Action, Phase};

    use super::*;

    fn recorded(rule: &str) -> Recorded {
        Recorded {
            decisions: vec![PhaseDecision { phase: Phase::Input, action: Action::Block, rule: Some(rule.into()) }],
            checks_hit: vec!["injection".into()],
        }
    }

    async fn tap() -> Arc<Tap> {
        Tap::new(keel_store::resolve("sqlite::memory:").await.unwrap())
    }

    #[tokio::test]
    async fn a_record_reaches_its_case_whether_it_comes_before_or_after_the_case_asks() {
        let tap = tap().await;
        let (early, late) = (InteractionId::new(), InteractionId::new());
        tap.stored(early, recorded("early"));
        assert_eq!(tap.recorded(early, Duration::from_secs(5)).await, Some(recorded("early")));
        let waiting = {
            let tap = tap.clone();
            tokio::spawn(async move { tap.recorded(late, Duration::from_secs(5)).await })
        };
        while tap.slots().is_empty() {
            tokio::task::yield_now().await;
        }
        tap.stored(late, recorded("late"));
        assert_eq!(waiting.await.unwrap(), Some(recorded("late")));
        assert!(tap.slots().is_empty(), "handed-over records are not kept");
    }

    #[tokio::test]
    async fn a_case_that_gives_up_leaves_nothing_behind() {
        let tap = tap().await;
        let id = InteractionId::new();
        assert_eq!(tap.recorded(id, Duration::from_millis(10)).await, None);
        assert!(tap.slots().is_empty());
    }
}
