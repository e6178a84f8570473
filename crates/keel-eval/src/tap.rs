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
use keel_core::{AuditRecord, Interaction, InteractionId};
use keel_store::{Result, Store, WriteBatch};
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

keel_store::delegate_store_reads!(Tap, inner);

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
