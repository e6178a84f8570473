//! The drift monitor: reads rows after each detector's cursor, feeds its detector, opens
//! alerts through the hysteresis tracker, and checkpoints everything in the store.
//!
//! Exactness across restarts: a detector's state, its cursor and the alerts it opened are
//! written in one transaction, and every alert is written together with the state that opened
//! it. Between checkpoints (at most `checkpoint_interval` apart) nothing else leaves the
//! process, so a monitor that stops — cleanly or not — resumes from its last checkpoint and
//! replays the same rows into the same state: the same alerts open at the same rows as if it
//! had never stopped. Detectors are deterministic (seeded), and rows are sampled by seq.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use keel_core::{Interaction, InteractionId};
use keel_models::Embedder;
use keel_monitor::{
    AlertEvent, AlertState, AlertTracker, Detector, DetectorConfig, DriftDetector, DriftSignal, HysteresisConfig,
    Observation,
};
use keel_store::{
    AlertFilter, AlertWindow, DetectorCheckpoint, DriftAlert, DriftCommit, DriftSource, NewDriftAlert, Store,
    StoreError,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::{DetectorSpec, MonitorConfig};
use crate::error::{DriftError, Result};
use crate::metrics::{DetectorLabels, DriftMetrics};
use crate::stream::{FeedbackFeed, Stream, TextSide};

/// The lease that only one replica holds while it runs the monitor.
pub const LEASE: &str = "drift-monitor";

/// Most observations a detector remembers (seq, time, id) to report its alert's window.
pub const WINDOW_MEMORY: usize = 2_048;

/// One remembered observation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct WindowEntry {
    seq: i64,
    /// Unix nanoseconds of the row's `created_at`.
    at: i128,
    id: InteractionId,
}

/// What a detector persists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct DetectorState {
    detector: Detector,
    tracker: AlertTracker,
    window: VecDeque<WindowEntry>,
}

impl DetectorState {
    fn fresh(spec: &DetectorSpec) -> Result<Self> {
        let detector = spec.detector.build().map_err(|e| DriftError::detector(&spec.name, e))?;
        let hysteresis =
            HysteresisConfig::for_detector(&detector, spec.hysteresis.resolve_fraction, spec.hysteresis.rearm_samples);
        let tracker = AlertTracker::new(hysteresis).map_err(|e| DriftError::detector(&spec.name, e))?;
        Ok(Self { detector, tracker, window: VecDeque::new() })
    }
}

struct Running {
    spec: DetectorSpec,
    labels: DetectorLabels,
    hash: String,
    cursor: i64,
    state: DetectorState,
    fed: u64,
}

impl Running {
    fn window_capacity(&self) -> usize {
        let window = match &self.spec.detector {
            DetectorConfig::Psi(c) => c.window_size,
            DetectorConfig::ChiSquare(c) => c.window_size,
            DetectorConfig::Ks(c) => c.window_size,
            DetectorConfig::Wasserstein(c) => c.window_size,
            DetectorConfig::Centroid(c) => c.window_size,
            DetectorConfig::Mmd(c) => c.window_size,
            DetectorConfig::PageHinkley(_) | DetectorConfig::Cusum(_) | DetectorConfig::Adwin(_) => u64::MAX,
        };
        usize::try_from(window).unwrap_or(WINDOW_MEMORY).min(WINDOW_MEMORY)
    }

    /// Whether this detector reads row `seq` of its source (not read yet, sampled, right app).
    fn wants(&self, seq: i64, app: &str) -> bool {
        seq > self.cursor
            && self.spec.app.as_deref().is_none_or(|a| a == app)
            && seq.unsigned_abs().is_multiple_of(self.spec.sample_every)
    }

    /// Feeds one observation; returns the alert it opened, if any.
    fn feed(
        &mut self,
        entry: WindowEntry,
        observation: &Observation,
        sample_size: usize,
    ) -> Result<Option<NewDriftAlert>> {
        let signal = match self.state.detector.update(observation) {
            Ok(signal) => signal,
            Err(e) => {
                tracing::warn!(detector = %self.spec.name, seq = entry.seq, error = %e, "observation skipped");
                return Ok(None);
            }
        };
        self.fed += 1;
        if self.state.window.len() >= self.window_capacity() {
            self.state.window.pop_front();
        }
        self.state.window.push_back(entry);
        let event = self
            .state
            .tracker
            .observe_detector(signal.as_ref(), &self.state.detector)
            .map_err(|e| DriftError::detector(&self.spec.name, e))?;
        match event {
            Some(AlertEvent::Opened { alert }) => {
                Ok(Some(self.new_alert(alert.statistic, alert.threshold, signal, sample_size)))
            }
            _ => {
                if signal.is_some() {
                    tracing::debug!(detector = %self.spec.name, seq = entry.seq, "signal while an alert is active or the tracker is disarmed");
                }
                Ok(None)
            }
        }
    }

    fn new_alert(
        &self,
        statistic: f64,
        threshold: f64,
        signal: Option<DriftSignal>,
        sample_size: usize,
    ) -> NewDriftAlert {
        let ring = &self.state.window;
        let size = signal.as_ref().map_or(ring.len() as u64, |s| s.window_size);
        let kept = usize::try_from(size).unwrap_or(usize::MAX).clamp(1, ring.len().max(1));
        let window: Vec<WindowEntry> = ring.iter().skip(ring.len().saturating_sub(kept)).copied().collect();
        let time = |e: Option<&WindowEntry>| {
            e.and_then(|e| OffsetDateTime::from_unix_timestamp_nanos(e.at).ok()).unwrap_or(OffsetDateTime::UNIX_EPOCH)
        };
        NewDriftAlert {
            detector: self.spec.name.clone(),
            stream: self.spec.stream.to_string(),
            app: self.spec.app.clone(),
            method: self.spec.detector.method().name().to_owned(),
            statistic,
            threshold,
            p_value: signal.as_ref().and_then(|s| s.p_value),
            window: AlertWindow {
                size,
                first_seq: window.first().map_or(0, |e| e.seq),
                last_seq: window.last().map_or(0, |e| e.seq),
                first_at: time(window.first()),
                last_at: time(window.last()),
            },
            reference_size: signal.as_ref().map_or(0, |s| s.reference_size),
            samples: self.state.detector.samples(),
            detail: signal.map_or_else(|| "statistic reached the threshold".to_owned(), |s| s.detail),
            sample_interaction_ids: evenly_spaced(&window, sample_size).into_iter().map(|e| e.id).collect(),
            opened_at: OffsetDateTime::now_utc(),
        }
    }

    fn checkpoint(&self) -> Result<DetectorCheckpoint> {
        let state = serde_json::to_value(&self.state)
            .map_err(|e| DriftError::State { detector: self.spec.name.clone(), reason: e.to_string() })?;
        Ok(DetectorCheckpoint {
            name: self.spec.name.clone(),
            config_hash: self.hash.clone(),
            source: self.spec.stream.source(),
            cursor: self.cursor,
            state,
        })
    }
}

/// `n` entries spread evenly over `window` (all of them when it has no more than `n`).
fn evenly_spaced(window: &[WindowEntry], n: usize) -> Vec<WindowEntry> {
    if window.len() <= n {
        return window.to_vec();
    }
    (0..n).map(|k| window[k * (window.len() - 1) / (n - 1).max(1)]).collect()
}

/// What one step did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepReport {
    /// Rows read (interactions and feedback).
    pub rows: usize,
    /// Alerts opened (as stored).
    pub opened: Vec<DriftAlert>,
    /// True when a read came back full: more rows are waiting.
    pub more: bool,
    /// True when the step ended with a checkpoint.
    pub checkpointed: bool,
}

/// The drift monitor of one process.
pub struct Monitor {
    config: MonitorConfig,
    store: Arc<dyn Store>,
    feedback: Option<Arc<dyn FeedbackFeed>>,
    embedder: Option<Arc<dyn Embedder>>,
    metrics: DriftMetrics,
    holder: String,
    running: Vec<Running>,
    removed: Vec<String>,
    loaded: bool,
    dirty: bool,
    last_checkpoint: Instant,
    lease_renewed: Option<Instant>,
}

impl Monitor {
    /// A monitor for `config`. Embedding streams need `embedder` and feedback streams need
    /// `feedback`; a detector whose source is missing is refused here, naming it.
    pub fn new(
        config: MonitorConfig,
        store: Arc<dyn Store>,
        feedback: Option<Arc<dyn FeedbackFeed>>,
        embedder: Option<Arc<dyn Embedder>>,
        metrics: DriftMetrics,
    ) -> Result<Self> {
        let mut names = HashSet::new();
        for spec in &config.detectors {
            if !names.insert(spec.name.as_str()) {
                return Err(DriftError::config(&spec.name, "another detector has the same name"));
            }
            if spec.detector.method().reads() != spec.stream.gives() {
                return Err(DriftError::config(
                    &spec.name,
                    format!(
                        "method {} reads {} observations but stream {} gives {}",
                        spec.detector.method(),
                        spec.detector.method().reads(),
                        spec.stream,
                        spec.stream.gives()
                    ),
                ));
            }
            spec.detector.validate().map_err(|e| DriftError::detector(&spec.name, e))?;
            if matches!(spec.stream, Stream::Embedding(_)) && embedder.is_none() {
                return Err(DriftError::config(
                    &spec.name,
                    "embedding streams need the MiniLM model (keel models pull)",
                ));
            }
            if spec.stream.source() == DriftSource::Feedback && feedback.is_none() {
                return Err(DriftError::config(&spec.name, "this store keeps no feedback to read"));
            }
        }
        Ok(Self {
            config,
            store,
            feedback,
            embedder,
            metrics,
            holder: format!("{}-{}", std::process::id(), uuid::Uuid::now_v7()),
            running: Vec::new(),
            removed: Vec::new(),
            loaded: false,
            dirty: false,
            last_checkpoint: Instant::now(),
            lease_renewed: None,
        })
    }

    /// This process's lease holder id.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Takes or renews the monitor lease when a third of its time has passed; true while held.
    pub async fn ensure_lease(&mut self) -> Result<bool> {
        let renew_after = self.config.lease_ttl / 3;
        if self.lease_renewed.is_some_and(|at| at.elapsed() < renew_after) {
            return Ok(true);
        }
        let held = self.store.acquire_lease(LEASE, &self.holder, self.config.lease_ttl).await?;
        if held {
            self.lease_renewed = Some(Instant::now());
        } else {
            self.lease_renewed = None;
            // Another replica runs the monitor; if it stops, this one resumes from its checkpoints.
            self.loaded = false;
        }
        Ok(held)
    }

    /// Restores every detector from its checkpoint (same config hash) or starts it afresh at
    /// the current head of its source.
    async fn load(&mut self) -> Result<()> {
        let stored: HashMap<String, DetectorCheckpoint> =
            self.store.detector_checkpoints().await?.into_iter().map(|c| (c.name.clone(), c)).collect();
        let mut head: HashMap<DriftSource, i64> = HashMap::new();
        for c in stored.values() {
            let h = head.entry(c.source).or_insert(0);
            *h = (*h).max(c.cursor);
        }
        let mut running = Vec::with_capacity(self.config.detectors.len());
        for spec in &self.config.detectors {
            let hash = spec.config_hash();
            let restored = stored.get(&spec.name).filter(|c| c.config_hash == hash).and_then(|c| {
                match serde_json::from_value::<DetectorState>(c.state.clone()) {
                    Ok(state) => Some((c.cursor, state)),
                    Err(e) => {
                        tracing::warn!(detector = %spec.name, error = %e, "stored detector state unreadable; starting afresh");
                        None
                    }
                }
            });
            let (cursor, state) = match restored {
                Some(found) => found,
                None => {
                    let cursor = head.get(&spec.stream.source()).copied().unwrap_or(0);
                    if stored.contains_key(&spec.name) {
                        tracing::info!(detector = %spec.name, cursor, "detector configuration changed; it starts afresh from here");
                    }
                    (cursor, DetectorState::fresh(spec)?)
                }
            };
            let labels = DetectorLabels {
                detector: spec.name.clone(),
                stream: spec.stream.to_string(),
                method: spec.detector.method().name().to_owned(),
            };
            running.push(Running { spec: spec.clone(), labels, hash, cursor, state, fed: 0 });
        }
        let configured: HashSet<&str> = self.config.detectors.iter().map(|d| d.name.as_str()).collect();
        self.removed = stored.keys().filter(|n| !configured.contains(n.as_str())).cloned().collect();
        self.running = running;
        self.loaded = true;
        self.dirty = !self.removed.is_empty();
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    /// Applies acknowledgements and resolutions made through the API or CLI to the trackers.
    /// A tracker's unresolved alert is its detector's latest stored alert.
    async fn sync_alerts(&mut self) -> Result<()> {
        for d in &mut self.running {
            let Some(tracked) = d.state.tracker.current().map(|a| a.state).filter(|s| *s != AlertState::Resolved)
            else {
                continue;
            };
            let filter = AlertFilter { detector: Some(d.spec.name.clone()), limit: Some(1), ..AlertFilter::default() };
            let latest = self.store.list_alerts(&filter).await?.into_iter().next();
            let stored = latest.as_ref().map_or(AlertState::Resolved, |a| a.state);
            match (stored, tracked) {
                (AlertState::Acknowledged, AlertState::Open) => {
                    let by = latest.as_ref().and_then(|a| a.acknowledged_by.clone()).unwrap_or_default();
                    d.state.tracker.acknowledge(&by).map_err(|e| DriftError::detector(&d.spec.name, e))?;
                    self.dirty = true;
                }
                (AlertState::Resolved, _) => {
                    d.state.tracker.resolve().map_err(|e| DriftError::detector(&d.spec.name, e))?;
                    self.dirty = true;
                }
                _ => {}
            }
            self.metrics.alert(&d.spec.name, stored);
        }
        Ok(())
    }

    /// One step: read what is new (up to `batch_size` rows per source), feed it, and
    /// checkpoint when an alert opened or the checkpoint interval has passed.
    pub async fn step(&mut self) -> Result<StepReport> {
        if !self.loaded {
            self.load().await?;
        }
        let outcome = self.read_and_feed().await;
        let (rows, more, alerts) = match outcome {
            Ok(found) => found,
            Err(e) => {
                // Whatever was fed is dropped: the next step replays it from the checkpoint.
                self.loaded = false;
                return Err(e);
            }
        };
        let mut report = StepReport { rows, more, ..StepReport::default() };
        self.dirty |= rows > 0;
        if !alerts.is_empty() || (self.dirty && self.last_checkpoint.elapsed() >= self.config.checkpoint_interval) {
            report.opened = self.checkpoint(alerts).await?;
            report.checkpointed = true;
        }
        for d in &mut self.running {
            self.metrics.detector(&d.labels, d.state.detector.statistic(), d.state.detector.threshold(), d.fed);
            d.fed = 0;
        }
        Ok(report)
    }

    async fn read_and_feed(&mut self) -> Result<(usize, bool, Vec<(usize, NewDriftAlert)>)> {
        self.sync_alerts().await?;
        let batch = self.config.batch_size.max(1);
        let sample_size = self.config.alert_sample_size;
        let mut alerts = Vec::new();
        let mut rows = 0;
        let mut more = false;

        let interaction_cursor = self.min_cursor(DriftSource::Interactions);
        if let Some(after) = interaction_cursor {
            let found = self.store.interactions_after(after, batch).await?;
            rows += found.len();
            more |= found.len() as u32 == batch;
            let vectors = self.embed(&found).await?;
            for (seq, interaction) in &found {
                let entry =
                    WindowEntry { seq: *seq, at: interaction.created_at.unix_timestamp_nanos(), id: interaction.id };
                for (index, d) in self.running.iter_mut().enumerate() {
                    if d.spec.stream.source() != DriftSource::Interactions || !d.wants(*seq, &interaction.app) {
                        if d.spec.stream.source() == DriftSource::Interactions {
                            d.cursor = d.cursor.max(*seq);
                        }
                        continue;
                    }
                    d.cursor = *seq;
                    let observation = match &d.spec.stream {
                        Stream::Embedding(side) => vectors.get(&(*seq, *side)).cloned().map(Observation::Vector),
                        stream => stream.observe(interaction),
                    };
                    if let Some(observation) = observation {
                        if let Some(alert) = d.feed(entry, &observation, sample_size)? {
                            alerts.push((index, alert));
                        }
                    }
                }
            }
        }

        if let (Some(after), Some(feed)) = (self.min_cursor(DriftSource::Feedback), self.feedback.clone()) {
            let found = feed.feedback_after(after, batch).await?;
            rows += found.len();
            more |= found.len() as u32 == batch;
            for (seq, event) in &found {
                let entry =
                    WindowEntry { seq: *seq, at: event.created_at.unix_timestamp_nanos(), id: event.interaction_id };
                for (index, d) in self.running.iter_mut().enumerate() {
                    if d.spec.stream.source() != DriftSource::Feedback {
                        continue;
                    }
                    let wanted = d.wants(*seq, &event.app);
                    d.cursor = d.cursor.max(*seq);
                    if !wanted {
                        continue;
                    }
                    if let Some(observation) = d.spec.stream.observe_feedback(event) {
                        if let Some(alert) = d.feed(entry, &observation, sample_size)? {
                            alerts.push((index, alert));
                        }
                    }
                }
            }
        }
        Ok((rows, more, alerts))
    }

    fn min_cursor(&self, source: DriftSource) -> Option<i64> {
        self.running.iter().filter(|d| d.spec.stream.source() == source).map(|d| d.cursor).min()
    }

    /// MiniLM vectors for the rows embedding detectors will read, keyed by (seq, side).
    async fn embed(&self, rows: &[(i64, Interaction)]) -> Result<HashMap<(i64, TextSide), Vec<f32>>> {
        let Some(embedder) = self.embedder.clone() else { return Ok(HashMap::new()) };
        let mut keys = Vec::new();
        let mut texts = Vec::new();
        for (seq, interaction) in rows {
            let mut sides: Vec<TextSide> = Vec::new();
            for d in &self.running {
                if let Stream::Embedding(side) = d.spec.stream {
                    if d.wants(*seq, &interaction.app) && !sides.contains(&side) {
                        sides.push(side);
                    }
                }
            }
            for side in sides {
                if let Some(text) = Stream::Embedding(side).text_of(interaction) {
                    keys.push((*seq, side));
                    texts.push(text);
                }
            }
        }
        if texts.is_empty() {
            return Ok(HashMap::new());
        }
        let vectors = tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            embedder.embed(&refs)
        })
        .await
        .map_err(|e| DriftError::Embedding(e.to_string()))?
        .map_err(|e| DriftError::Embedding(e.to_string()))?;
        Ok(keys.into_iter().zip(vectors).collect())
    }

    /// Stores every detector's state with the alerts that opened since the last checkpoint.
    async fn checkpoint(&mut self, alerts: Vec<(usize, NewDriftAlert)>) -> Result<Vec<DriftAlert>> {
        let checkpoints = self.running.iter().map(Running::checkpoint).collect::<Result<Vec<_>>>()?;
        let (owners, new_alerts): (Vec<usize>, Vec<NewDriftAlert>) = alerts.into_iter().unzip();
        let commit = DriftCommit {
            holder: self.holder.clone(),
            lease: LEASE.to_owned(),
            checkpoints,
            removed: self.removed.clone(),
            alerts: new_alerts,
            sinks: self.config.webhooks.iter().map(|w| w.name.clone()).collect(),
            review: self.config.review,
        };
        let opened = match self.store.commit_drift(commit).await {
            Ok(opened) => opened,
            Err(e) => {
                self.loaded = false;
                if matches!(e, StoreError::LeaseLost { .. }) {
                    self.lease_renewed = None;
                }
                return Err(e.into());
            }
        };
        for (owner, alert) in owners.iter().zip(&opened) {
            let d = &self.running[*owner];
            self.metrics.alert(&d.spec.name, AlertState::Open);
            tracing::warn!(
                alert = alert.id,
                detector = %d.spec.name,
                stream = %d.spec.stream,
                statistic = alert.opened.statistic,
                threshold = alert.opened.threshold,
                "drift alert opened: {}",
                alert.opened.detail
            );
        }
        self.removed.clear();
        self.dirty = false;
        self.last_checkpoint = Instant::now();
        Ok(opened)
    }

    /// Runs until `shutdown` turns true: keeps the lease, steps while there is a backlog,
    /// otherwise waits `poll_interval`. `leader` tells the webhook deliverer whether this
    /// process holds the lease. Checkpoints and releases the lease on the way out.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>, leader: Arc<AtomicBool>) {
        let mut held = false;
        while !*shutdown.borrow() {
            held = match self.ensure_lease().await {
                Ok(held) => held,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take the monitor lease; retrying");
                    false
                }
            };
            leader.store(held, Ordering::Relaxed);
            let mut more = false;
            if held {
                match self.step().await {
                    Ok(report) => more = report.more,
                    Err(e) => {
                        tracing::warn!(error = %e, "drift monitor step failed; retrying from the last checkpoint")
                    }
                }
            }
            if more {
                tokio::task::yield_now().await;
            } else {
                tokio::select! {
                    _ = tokio::time::sleep(self.config.poll_interval) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
        leader.store(false, Ordering::Relaxed);
        if held && self.loaded && self.dirty {
            if let Err(e) = self.checkpoint(Vec::new()).await {
                tracing::warn!(error = %e, "final drift checkpoint failed; the next start replays from the previous one");
            }
        }
        if held {
            if let Err(e) = self.store.release_lease(LEASE, &self.holder).await {
                tracing::warn!(error = %e, "cannot release the monitor lease; it expires by itself");
            }
        }
    }

    /// Writes a checkpoint now if anything changed since the last one (for shutdown paths
    /// that drive [`Monitor::step`] themselves).
    pub async fn flush(&mut self) -> Result<()> {
        if self.loaded && self.dirty {
            self.checkpoint(Vec::new()).await?;
        }
        Ok(())
    }

    /// The current statistic and threshold of each detector, by name (for tests and status).
    pub fn statistics(&self) -> Vec<(String, f64, f64)> {
        self.running
            .iter()
            .map(|d| (d.spec.name.clone(), d.state.detector.statistic(), d.state.detector.threshold()))
            .collect()
    }
}
