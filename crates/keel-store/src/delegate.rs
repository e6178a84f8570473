//! Delegation for store wrappers: a wrapper that changes only how batches are written (a
//! test store that fails on demand, an evaluation tap) hands every reading call to the store
//! it wraps, and gets each new store trait with it.

/// Implements every reading trait of [`crate::Store`] for `$ty` by handing each call to
/// `self.$field`, which implements them all (e.g. an `Arc<dyn Store>`); the wrapper then
/// implements [`crate::Store`] itself, with its own `write_batch`.
#[macro_export]
macro_rules! delegate_store_reads {
    ($ty:ty, $field:ident) => {
        #[$crate::__private::async_trait]
        impl $crate::InteractionStore for $ty {
            async fn get_interaction(
                &self,
                id: $crate::__private::keel_core::InteractionId,
            ) -> $crate::Result<Option<$crate::__private::keel_core::Interaction>> {
                self.$field.get_interaction(id).await
            }
            async fn list_interactions(
                &self,
                filter: &$crate::InteractionFilter,
            ) -> $crate::Result<Vec<$crate::InteractionSummary>> {
                self.$field.list_interactions(filter).await
            }
            async fn interactions_after(
                &self,
                after_seq: i64,
                limit: u32,
            ) -> $crate::Result<Vec<(i64, $crate::__private::keel_core::Interaction)>> {
                self.$field.interactions_after(after_seq, limit).await
            }
        }

        #[$crate::__private::async_trait]
        impl $crate::AuditStore for $ty {
            async fn audit_records(
                &self,
                from: i64,
                to: i64,
                limit: u32,
            ) -> $crate::Result<Vec<$crate::__private::keel_core::AuditRecord>> {
                self.$field.audit_records(from, to, limit).await
            }
            async fn last_audit_record(&self) -> $crate::Result<Option<$crate::__private::keel_core::AuditRecord>> {
                self.$field.last_audit_record().await
            }
            async fn verify(&self) -> $crate::Result<$crate::VerifyReport> {
                self.$field.verify().await
            }
        }

        #[$crate::__private::async_trait]
        impl $crate::HandoffStore for $ty {
            async fn list_handoffs(
                &self,
                filter: &$crate::HandoffFilter,
            ) -> $crate::Result<Vec<$crate::HandoffRequest>> {
                self.$field.list_handoffs(filter).await
            }
        }

        #[$crate::__private::async_trait]
        impl $crate::DriftStore for $ty {
            async fn detector_checkpoints(&self) -> $crate::Result<Vec<$crate::DetectorCheckpoint>> {
                self.$field.detector_checkpoints().await
            }
            async fn commit_drift(&self, commit: $crate::DriftCommit) -> $crate::Result<Vec<$crate::DriftAlert>> {
                self.$field.commit_drift(commit).await
            }
            async fn list_alerts(&self, filter: &$crate::AlertFilter) -> $crate::Result<Vec<$crate::DriftAlert>> {
                self.$field.list_alerts(filter).await
            }
            async fn get_alert(&self, id: i64) -> $crate::Result<Option<$crate::DriftAlert>> {
                self.$field.get_alert(id).await
            }
            async fn transition_alert(
                &self,
                id: i64,
                action: $crate::__private::keel_monitor::AlertAction,
                actor: &str,
            ) -> $crate::Result<$crate::DriftAlert> {
                self.$field.transition_alert(id, action, actor).await
            }
            async fn acquire_lease(
                &self,
                name: &str,
                holder: &str,
                ttl: ::std::time::Duration,
            ) -> $crate::Result<bool> {
                self.$field.acquire_lease(name, holder, ttl).await
            }
            async fn release_lease(&self, name: &str, holder: &str) -> $crate::Result<()> {
                self.$field.release_lease(name, holder).await
            }
            async fn due_deliveries(
                &self,
                sinks: &[String],
                now: $crate::__private::time::OffsetDateTime,
                limit: u32,
            ) -> $crate::Result<Vec<$crate::PendingDelivery>> {
                self.$field.due_deliveries(sinks, now, limit).await
            }
            async fn record_delivery(&self, attempt: &$crate::DeliveryAttempt) -> $crate::Result<()> {
                self.$field.record_delivery(attempt).await
            }
            async fn alert_deliveries(&self, alert_id: i64) -> $crate::Result<Vec<$crate::DeliveryAttempt>> {
                self.$field.alert_deliveries(alert_id).await
            }
        }

        #[$crate::__private::async_trait]
        impl $crate::AccessStore for $ty {
            async fn create_token(
                &self,
                name: &str,
                role: $crate::__private::keel_core::Role,
                actor: &str,
            ) -> $crate::Result<$crate::IssuedToken, $crate::ChangeError> {
                self.$field.create_token(name, role, actor).await
            }
            async fn list_tokens(&self) -> $crate::Result<Vec<$crate::TokenInfo>> {
                self.$field.list_tokens().await
            }
            async fn revoke_token(
                &self,
                name: &str,
                actor: &str,
            ) -> $crate::Result<$crate::TokenInfo, $crate::ChangeError> {
                self.$field.revoke_token(name, actor).await
            }
            async fn token_record(&self, lookup_id: &str) -> $crate::Result<Option<$crate::TokenRecord>> {
                self.$field.token_record(lookup_id).await
            }
            async fn touch_token(
                &self,
                lookup_id: &str,
                at: $crate::__private::time::OffsetDateTime,
            ) -> $crate::Result<()> {
                self.$field.touch_token(lookup_id, at).await
            }
            async fn access_generation(&self) -> $crate::Result<$crate::AccessGeneration> {
                self.$field.access_generation().await
            }
        }

        #[$crate::__private::async_trait]
        impl $crate::LifecycleStore for $ty {
            async fn add_policy_version(
                &self,
                new: $crate::NewPolicyVersion,
                actor: &str,
            ) -> $crate::Result<$crate::PolicyVersion, $crate::ChangeError> {
                self.$field.add_policy_version(new, actor).await
            }
            async fn seed_policy_version(
                &self,
                new: $crate::NewPolicyVersion,
                actor: &str,
            ) -> $crate::Result<$crate::Seeded, $crate::ChangeError> {
                self.$field.seed_policy_version(new, actor).await
            }
            async fn policy_version(
                &self,
                policy: &$crate::__private::keel_core::PolicyRef,
            ) -> $crate::Result<Option<$crate::PolicyVersion>> {
                self.$field.policy_version(policy).await
            }
            async fn policy_versions(&self, name: Option<&str>) -> $crate::Result<Vec<$crate::PolicyVersion>> {
                self.$field.policy_versions(name).await
            }
            async fn policies_in_force(&self) -> $crate::Result<Vec<$crate::PolicyVersion>> {
                self.$field.policies_in_force().await
            }
            async fn policy_transitions(
                &self,
                policy: &$crate::__private::keel_core::PolicyRef,
            ) -> $crate::Result<Vec<$crate::Transition>> {
                self.$field.policy_transitions(policy).await
            }
            async fn approve_policy_version(
                &self,
                policy: &$crate::__private::keel_core::PolicyRef,
                actor: &str,
            ) -> $crate::Result<$crate::PolicyVersion, $crate::ChangeError> {
                self.$field.approve_policy_version(policy, actor).await
            }
            async fn promote_policy_version(
                &self,
                policy: &$crate::__private::keel_core::PolicyRef,
                promotion: &$crate::Promotion,
                actor: &str,
            ) -> $crate::Result<$crate::PolicyVersion, $crate::ChangeError> {
                self.$field.promote_policy_version(policy, promotion, actor).await
            }
            async fn withdraw_policy_version(
                &self,
                policy: &$crate::__private::keel_core::PolicyRef,
                actor: &str,
            ) -> $crate::Result<$crate::PolicyVersion, $crate::ChangeError> {
                self.$field.withdraw_policy_version(policy, actor).await
            }
            async fn rollback_policy(
                &self,
                name: &str,
                to: Option<&str>,
                actor: &str,
            ) -> $crate::Result<$crate::RollbackOutcome, $crate::ChangeError> {
                self.$field.rollback_policy(name, to, actor).await
            }
            async fn record_gate_run(
                &self,
                run: $crate::NewGateRun,
            ) -> $crate::Result<$crate::GateRun, $crate::ChangeError> {
                self.$field.record_gate_run(run).await
            }
            async fn gate_runs(
                &self,
                policy: &$crate::__private::keel_core::PolicyRef,
            ) -> $crate::Result<Vec<$crate::GateRun>> {
                self.$field.gate_runs(policy).await
            }
            async fn shadow_report(
                &self,
                policy: &$crate::__private::keel_core::PolicyRef,
                examples: u32,
            ) -> $crate::Result<$crate::ShadowReport> {
                self.$field.shadow_report(policy, examples).await
            }
        }

        #[$crate::__private::async_trait]
        impl $crate::ReviewStore for $ty {
            async fn open_case(
                &self,
                new: $crate::NewCase,
                actor: &str,
            ) -> $crate::Result<($crate::ReviewCase, bool), $crate::ChangeError> {
                self.$field.open_case(new, actor).await
            }
            async fn get_case(&self, id: i64) -> $crate::Result<Option<$crate::ReviewCase>> {
                self.$field.get_case(id).await
            }
            async fn list_cases(&self, filter: &$crate::CaseFilter) -> $crate::Result<Vec<$crate::ReviewCase>> {
                self.$field.list_cases(filter).await
            }
            async fn take_next_case(
                &self,
                actor: &str,
                app: Option<&str>,
                lock: ::std::time::Duration,
            ) -> $crate::Result<Option<$crate::ReviewCase>> {
                self.$field.take_next_case(actor, app, lock).await
            }
            async fn label_case(
                &self,
                id: i64,
                label: $crate::NewLabel,
                actor: &str,
            ) -> $crate::Result<$crate::ReviewCase, $crate::ChangeError> {
                self.$field.label_case(id, label, actor).await
            }
            async fn release_case(
                &self,
                id: i64,
                actor: &str,
            ) -> $crate::Result<$crate::ReviewCase, $crate::ChangeError> {
                self.$field.release_case(id, actor).await
            }
            async fn adjudicate_case(
                &self,
                id: i64,
                label: $crate::NewLabel,
                actor: &str,
            ) -> $crate::Result<$crate::ReviewCase, $crate::ChangeError> {
                self.$field.adjudicate_case(id, label, actor).await
            }
            async fn close_case(
                &self,
                id: i64,
                reason: &str,
                actor: &str,
            ) -> $crate::Result<$crate::ReviewCase, $crate::ChangeError> {
                self.$field.close_case(id, reason, actor).await
            }
            async fn review_pairs(
                &self,
                app: Option<&str>,
            ) -> $crate::Result<Vec<($crate::StoredLabel, $crate::StoredLabel)>> {
                self.$field.review_pairs(app).await
            }
        }

        #[$crate::__private::async_trait]
        impl $crate::FeedbackStore for $ty {
            async fn record_feedback(
                &self,
                events: Vec<$crate::NewFeedback>,
            ) -> $crate::Result<Vec<$crate::Result<$crate::Receipt<$crate::Feedback>, $crate::ChangeError>>> {
                self.$field.record_feedback(events).await
            }
            async fn feedback_after(&self, after_seq: i64, limit: u32) -> $crate::Result<Vec<$crate::Feedback>> {
                self.$field.feedback_after(after_seq, limit).await
            }
            async fn record_handoff_event(
                &self,
                event: $crate::NewHandoffEvent,
            ) -> $crate::Result<$crate::Receipt<$crate::HandoffEvent>, $crate::ChangeError> {
                self.$field.record_handoff_event(event).await
            }
            async fn stored_interactions(
                &self,
                ids: &[$crate::__private::keel_core::InteractionId],
            ) -> $crate::Result<::std::collections::HashSet<$crate::__private::keel_core::InteractionId>> {
                self.$field.stored_interactions(ids).await
            }
            async fn kpi_rows(&self, range: &$crate::KpiRange) -> $crate::Result<$crate::KpiRows> {
                self.$field.kpi_rows(range).await
            }
        }
    };
}

#[doc(hidden)]
pub mod __private {
    pub use async_trait::async_trait;
    pub use keel_core;
    pub use keel_monitor;
    pub use time;
}
