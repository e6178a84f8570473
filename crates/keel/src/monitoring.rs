//! Wiring the drift monitor into `keel serve`: the detector set (configured or default), the
//! embedder for embedding streams, the monitor and webhook tasks, and their shutdown.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use keel_drift::{
    default_detectors, Deliverer, DriftMetrics, FeedbackEvent, FeedbackFeed, Monitor, MonitorConfig, Stream,
};
use keel_gateway::AppState;
use keel_models::Embedder;
use keel_policy::{Models, Policy};
use keel_store::Store;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{config, models};

/// How often the deliverer looks for due webhook deliveries.
const DELIVERY_POLL: Duration = Duration::from_millis(500);

/// The store's feedback as the drift monitor reads it.
pub struct StoredFeedback(pub Arc<dyn Store>);

#[async_trait::async_trait]
impl FeedbackFeed for StoredFeedback {
    async fn feedback_after(&self, after_seq: i64, limit: u32) -> keel_store::Result<Vec<(i64, FeedbackEvent)>> {
        let stored = self.0.feedback_after(after_seq, limit).await?;
        Ok(stored
            .into_iter()
            .map(|f| {
                let event = FeedbackEvent {
                    interaction_id: f.interaction_id,
                    app: f.app,
                    created_at: f.created_at,
                    satisfaction: f.satisfaction,
                    wrong_answer: f.wrong_answer,
                };
                (f.seq, event)
            })
            .collect())
    }
}

/// The monitor and deliverer tasks of a running server.
pub struct RunningMonitor {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningMonitor {
    /// Stops both tasks; the monitor writes a last checkpoint and releases its lease.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "drift monitor task failed");
            }
        }
    }
}

/// Starts the drift monitor for `config` (nothing when it is disabled). With no configured
/// detectors the default set runs; embedding streams use the policy's embedder, or load
/// MiniLM (fetching it when a configured detector needs it and it is absent).
pub async fn start(
    mut config: MonitorConfig,
    state: &AppState,
    models: &Models,
    policy: &Policy,
) -> anyhow::Result<Option<RunningMonitor>> {
    if !config.enabled {
        tracing::info!("drift monitoring is off ([monitor] enabled = false)");
        return Ok(None);
    }
    let home = config::keel_home();
    let paths = keel_models::ModelPaths::from_env()
        .unwrap_or_else(|| keel_models::ModelPaths::in_models_dir(&keel_models::models_dir(&home)));
    let defaults = config.detectors.is_empty();
    if defaults {
        let checks: Vec<String> = policy.check_names().into_iter().map(str::to_owned).collect();
        let embeddings = models.embedder.is_some() || paths.has_embedder();
        config.detectors = default_detectors(&checks, true, embeddings);
    }
    let needs_embedder = config.detectors.iter().any(|d| matches!(d.stream, Stream::Embedding(_)));
    let embedder: Option<Arc<dyn Embedder>> = match (&models.embedder, needs_embedder) {
        (_, false) => None,
        (Some(embedder), true) => Some(embedder.clone()),
        (None, true) => {
            let loaded =
                models::load_embedding(&paths, &home).await.context("embedding drift detectors need MiniLM")?;
            Some(loaded.embedder)
        }
    };
    let mut metrics = None;
    state.metrics().register(|registry| metrics = Some(DriftMetrics::register(registry)));
    let metrics = metrics.unwrap_or_default();
    let names: Vec<&str> = config.detectors.iter().map(|d| d.name.as_str()).collect();
    tracing::info!(
        detectors = %names.join(", "),
        webhooks = config.webhooks.len(),
        "drift monitor: {} {} detectors",
        names.len(),
        if defaults { "default" } else { "configured" }
    );
    let webhooks = config.webhooks.clone();
    let feedback: Arc<dyn FeedbackFeed> = Arc::new(StoredFeedback(state.store().clone()));
    let monitor = Monitor::new(config, state.store().clone(), Some(feedback), embedder, metrics.clone())?;
    let deliverer = Deliverer::new(state.store().clone(), webhooks, metrics)?;
    let (stop, stopped) = watch::channel(false);
    let leader = Arc::new(AtomicBool::new(false));
    let tasks = vec![
        tokio::spawn(monitor.run(stopped.clone(), leader.clone())),
        tokio::spawn(deliverer.run(stopped, leader, DELIVERY_POLL)),
    ];
    Ok(Some(RunningMonitor { stop, tasks }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_core::Privacy;
    use keel_drift::DetectorSpec;
    use keel_monitor::{DetectorConfig, Method};
    use keel_store::{DriftSource, Writer, WriterConfig};

    #[tokio::test]
    async fn a_satisfaction_stream_reads_stored_feedback() {
        let store = keel_store::resolve("sqlite::memory:").await.unwrap();
        let (writer, _task) = Writer::spawn(store.clone(), WriterConfig::default());
        let policy = Arc::new(crate::serve::load_policy(None, &Models::default()).unwrap().0);
        let pick = move |_: &str, _: &str| -> Result<Arc<Policy>, String> { Ok(policy.clone()) };
        let privacy = |_: &str| Privacy::Full;
        let line = |t: &str, s: u8| {
            format!(
                r#"{{"app":"a","timestamp":"{t}","request":{{"model":"m","messages":[{{"role":"user","content":"q"}}]}},"output":"x","feedback":{{"satisfaction":{s}}}}}"#
            )
        };
        let body = [line("2026-01-01T00:00:00Z", 5), line("2026-01-01T00:01:00Z", 4), line("2026-01-01T00:02:00Z", 2)]
            .join("\n");
        let ingest = keel_gateway::ingest::Ingest {
            store: store.as_ref(),
            writer: &writer,
            policy: &pick,
            privacy: &privacy,
            default_app: None,
            only_app: None,
            actor: "test",
            review: &keel_store::CaseIntake::default(),
        };
        assert_eq!(ingest.run(&body, 1).await.unwrap().feedback, 3);
        let cases = store.list_cases(&keel_store::CaseFilter::default()).await.unwrap();
        let reasons: Vec<_> = cases.iter().map(|c| c.reason).collect();
        assert_eq!(reasons, [keel_store::CaseReason::LowSatisfaction], "only the score of 2 asks for a review");

        let spec = DetectorSpec::new("sat", Stream::Satisfaction, DetectorConfig::default_for(Method::PageHinkley));
        let config = MonitorConfig { detectors: vec![spec], ..MonitorConfig::default() };
        let feedback: Arc<dyn FeedbackFeed> = Arc::new(StoredFeedback(store.clone()));
        let mut monitor = Monitor::new(config, store.clone(), Some(feedback), None, DriftMetrics::default()).unwrap();
        assert!(monitor.ensure_lease().await.unwrap());
        let report = monitor.step().await.unwrap();
        assert_eq!(report.rows, 3, "{report:?}");
        monitor.flush().await.unwrap();
        let checkpoints = store.detector_checkpoints().await.unwrap();
        let sat = checkpoints.iter().find(|c| c.name == "sat").unwrap();
        assert_eq!((sat.source, sat.cursor), (DriftSource::Feedback, 3));
    }
}
