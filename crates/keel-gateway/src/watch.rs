//! The store watcher: several gateways may share one store, and the CLI changes it from
//! outside, so each gateway polls the store's change counters and applies what changed
//! (revoked or new tokens, promotions and rollbacks) without a restart.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::state::AppState;

/// Polls the store every `every` until `stop` turns true. A failed poll is logged and
/// retried at the next tick; what is in force stays as it was.
pub fn watch_store(state: AppState, every: Duration, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(e) = state.refresh().await {
                        tracing::warn!(error = %e, "cannot read the store's change counters; retrying");
                    }
                }
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return;
                    }
                }
            }
        }
    })
}
