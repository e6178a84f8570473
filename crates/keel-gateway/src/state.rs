//! What every handler shares: settings, the active policy, the upstreams, the store and the
//! batched writer.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use keel_core::{Interaction, Privacy};
use keel_policy::Policy;
use keel_store::{AuditEntry, HandoffRequest, Store, WriterHandle};
use sha2::{Digest, Sha256};
use tokio_util::task::TaskTracker;

use crate::metrics::GatewayMetrics;
use crate::upstream::Upstreams;

/// A client key as configured: only its SHA-256 is kept.
#[derive(Clone)]
pub struct ClientKey {
    /// The key's name, recorded as the actor of what it does.
    pub name: String,
    /// The app its traffic belongs to.
    pub app: String,
    /// SHA-256 of the key.
    pub sha256: [u8; 32],
    /// Whether it may use the Keel API under `/api/`.
    pub admin: bool,
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientKey")
            .field("name", &self.name)
            .field("app", &self.app)
            .field("admin", &self.admin)
            .finish()
    }
}

/// SHA-256 of a presented key, to compare with configured hashes.
pub fn key_hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Gateway settings that do not change while it runs.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// Client keys; when empty the gateway is open (and must listen on loopback only).
    pub keys: Vec<ClientKey>,
    /// Privacy per app; apps not listed use `default_privacy`.
    pub privacy: HashMap<String, Privacy>,
    /// Privacy of apps not listed.
    pub default_privacy: Privacy,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
}

impl GatewaySettings {
    /// The privacy setting of `app`.
    pub fn privacy_of(&self, app: &str) -> Privacy {
        self.privacy.get(app).copied().unwrap_or(self.default_privacy)
    }
}

/// The app name used for requests when no client keys are configured.
pub const OPEN_APP: &str = "default";

/// Shared state of a running gateway.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    settings: GatewaySettings,
    keys_by_hash: HashMap<[u8; 32], ClientKey>,
    policy: RwLock<Arc<Policy>>,
    upstreams: Upstreams,
    store: Arc<dyn Store>,
    writer: WriterHandle,
    tasks: TaskTracker,
    metrics: GatewayMetrics,
}

impl AppState {
    /// Bundles everything the handlers need.
    pub fn new(
        settings: GatewaySettings,
        policy: Arc<Policy>,
        upstreams: Upstreams,
        store: Arc<dyn Store>,
        writer: WriterHandle,
    ) -> Self {
        let keys_by_hash = settings.keys.iter().map(|k| (k.sha256, k.clone())).collect();
        AppState {
            inner: Arc::new(Inner {
                settings,
                keys_by_hash,
                policy: RwLock::new(policy),
                upstreams,
                store,
                writer,
                tasks: TaskTracker::new(),
                metrics: GatewayMetrics::new(),
            }),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &GatewaySettings {
        &self.inner.settings
    }

    /// The key whose hash matches `presented`, if any.
    pub fn key(&self, presented: &str) -> Option<&ClientKey> {
        self.inner.keys_by_hash.get(&key_hash(presented))
    }

    /// True when no client keys are configured.
    pub fn is_open(&self) -> bool {
        self.inner.keys_by_hash.is_empty()
    }

    /// The policy in force now.
    pub fn policy(&self) -> Arc<Policy> {
        match self.inner.policy.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Puts `policy` in force for requests that start from now on.
    pub fn set_policy(&self, policy: Arc<Policy>) {
        match self.inner.policy.write() {
            Ok(mut p) => *p = policy,
            Err(poisoned) => *poisoned.into_inner() = policy,
        }
    }

    /// The upstreams.
    pub fn upstreams(&self) -> &Upstreams {
        &self.inner.upstreams
    }

    /// The store, for reads.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Background work of requests that already answered (async checks); shutdown waits for it.
    pub fn tasks(&self) -> &TaskTracker {
        &self.inner.tasks
    }

    /// The Prometheus series `/metrics` serves.
    pub fn metrics(&self) -> &GatewayMetrics {
        &self.inner.metrics
    }

    /// The batched writer, for every write.
    pub fn writer(&self) -> &WriterHandle {
        &self.inner.writer
    }

    /// Queues an interaction for storage; a closed writer (shutdown) is logged, not fatal.
    ///
    /// The hand-over runs in a tracked task: a client that disconnects while the queue is full
    /// cancels its request, but never the record of an upstream call already made. The caller
    /// still waits for the hand-over, so a full queue slows requests down (backpressure).
    pub async fn record(&self, interaction: Interaction, handoff: Option<HandoffRequest>) {
        self.inner.metrics.observe(&interaction);
        let writer = self.inner.writer.clone();
        let handover = self.inner.tasks.spawn(async move {
            let id = interaction.id;
            if let Err(e) = writer.record_interaction(interaction, handoff).await {
                tracing::error!(interaction = %id, error = %e, "interaction not stored");
            }
        });
        let _ = handover.await;
    }

    /// Queues an audit entry; a closed writer is logged.
    pub async fn audit(&self, entry: AuditEntry) {
        let action = entry.action.clone();
        if let Err(e) = self.inner.writer.record_audit(entry).await {
            tracing::error!(action = %action, error = %e, "audit entry not stored");
        }
    }
}
