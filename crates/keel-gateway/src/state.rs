//! What every handler shares: settings, the policies in force, the upstreams, the store,
//! the batched writer and the token verifications.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use keel_core::{Interaction, Privacy};
use keel_policy::Policy;
use keel_store::{AuditEntry, HandoffRequest, Store, WriterHandle};
use sha2::{Digest, Sha256};
use tokio_util::task::TaskTracker;

use crate::auth::TokenVerifier;
use crate::error::ApiError;
use crate::metrics::GatewayMetrics;
use crate::rollout::{load_rollout, Bindings, PlainCompiler, PolicyCompiler, Rollout, RolloutError, Selection};
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
    /// How long a reviewer's lock on a review case lasts before it lapses.
    pub review_lock: std::time::Duration,
    /// How review cases are made (priorities, due dates, second reviews): what a route that
    /// opens one (user feedback) passes to `ReviewStore::open_case` via `CaseIntake::case`.
    pub review: keel_store::CaseIntake,
}

impl GatewaySettings {
    /// The privacy setting of `app`.
    pub fn privacy_of(&self, app: &str) -> Privacy {
        self.privacy.get(app).copied().unwrap_or(self.default_privacy)
    }
}

/// How the policies in force are loaded from the store.
struct Lifecycle {
    compiler: Arc<dyn PolicyCompiler>,
    bindings: Bindings,
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
    rollout: RwLock<Arc<Rollout>>,
    lifecycle: RwLock<Option<Arc<Lifecycle>>>,
    /// Serialises reloads of the rollout; holds the policy counter whose load last failed.
    reloading: tokio::sync::Mutex<Option<i64>>,
    upstreams: Upstreams,
    store: Arc<dyn Store>,
    writer: WriterHandle,
    tasks: TaskTracker,
    metrics: GatewayMetrics,
    access: TokenVerifier,
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
                rollout: RwLock::new(Arc::new(Rollout::single(policy))),
                lifecycle: RwLock::new(None),
                reloading: tokio::sync::Mutex::new(None),
                upstreams,
                store,
                writer,
                tasks: TaskTracker::new(),
                metrics: GatewayMetrics::new(),
                access: TokenVerifier::default(),
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

    /// True when no client keys are configured: `/v1/*` accepts every (local) caller.
    pub fn is_open(&self) -> bool {
        self.inner.keys_by_hash.is_empty()
    }

    /// True when no client keys are configured and no admin token is in force: `/api/*`
    /// accepts every (local) caller as admin.
    pub fn api_is_open(&self) -> bool {
        self.is_open() && self.inner.access.active_tokens() == 0
    }

    /// This gateway's token verifications.
    pub fn access(&self) -> &TokenVerifier {
        &self.inner.access
    }

    /// Reads the store's change counters and applies what changed for tokens (a revoked or
    /// new token); routes that change tokens call it at once.
    pub async fn refresh_access(&self) -> Result<(), keel_store::StoreError> {
        let generation = self.inner.store.access_generation().await?;
        self.inner.access.observe(&generation);
        Ok(())
    }

    /// The active version of the default policy name (what apps without a binding enforce).
    pub fn policy(&self) -> Arc<Policy> {
        self.rollout().default_active()
    }

    /// Everything in force now.
    pub fn rollout(&self) -> Arc<Rollout> {
        match self.inner.rollout.read() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set_rollout(&self, rollout: Rollout) {
        let rollout = Arc::new(rollout);
        match self.inner.rollout.write() {
            Ok(mut r) => *r = rollout,
            Err(poisoned) => *poisoned.into_inner() = rollout,
        }
    }

    /// Puts `policy` in force as the active version of its name, for requests that start from
    /// now on (a gateway whose policies are not managed in the store).
    pub fn set_policy(&self, policy: Arc<Policy>) {
        self.set_rollout(self.rollout().with_active(policy));
    }

    /// The policies that judge a request of `app`: `key` is its user id, or its interaction id
    /// when it has none (see [`crate::rollout`] for the canary's stickiness).
    pub fn select_policy(&self, app: &str, key: &str) -> Result<Selection, ApiError> {
        self.rollout().select(app, key).ok_or_else(|| {
            ApiError::unavailable(format!("no active policy version for app `{app}`; no request can be judged"))
        })
    }

    /// Takes the policies in force from the store from now on: loads them at once (failing if
    /// they cannot be loaded) and again whenever [`AppState::refresh`] sees them change.
    pub async fn manage_policies(
        &self,
        compiler: Arc<dyn PolicyCompiler>,
        bindings: Bindings,
    ) -> Result<Arc<Rollout>, RolloutError> {
        let lifecycle = Arc::new(Lifecycle { compiler, bindings });
        let rollout =
            load_rollout(self.inner.store.as_ref(), lifecycle.compiler.as_ref(), &lifecycle.bindings, None).await?;
        match self.inner.lifecycle.write() {
            Ok(mut l) => *l = Some(lifecycle),
            Err(poisoned) => *poisoned.into_inner() = Some(lifecycle),
        }
        self.audit_loaded(None, &rollout).await;
        self.set_rollout(rollout);
        Ok(self.rollout())
    }

    fn lifecycle(&self) -> Option<Arc<Lifecycle>> {
        match self.inner.lifecycle.read() {
            Ok(l) => l.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// How stored versions are compiled on this gateway (with the models it can load).
    pub fn compiler(&self) -> Arc<dyn PolicyCompiler> {
        self.lifecycle().map(|l| l.compiler.clone()).unwrap_or_else(|| Arc::new(PlainCompiler))
    }

    /// Applies what changed in the store since the last look: tokens (see
    /// [`AppState::refresh_access`]) and, when policies are managed in the store, the
    /// versions in force. A version that cannot be loaded leaves what runs in force; the
    /// failure is logged and audited once per change.
    pub async fn refresh(&self) -> Result<(), keel_store::StoreError> {
        let generation = self.inner.store.access_generation().await?;
        self.inner.access.observe(&generation);
        let Some(lifecycle) = self.lifecycle() else { return Ok(()) };
        let mut failed = self.inner.reloading.lock().await;
        let current = self.rollout();
        if current.generation() == Some(generation.policies) || *failed == Some(generation.policies) {
            return Ok(());
        }
        match load_rollout(self.inner.store.as_ref(), lifecycle.compiler.as_ref(), &lifecycle.bindings, Some(&current))
            .await
        {
            Ok(next) => {
                *failed = None;
                self.audit_loaded(Some(&current), &next).await;
                self.set_rollout(next);
            }
            Err(RolloutError::Store(e)) => return Err(e),
            Err(e) => {
                *failed = Some(generation.policies);
                tracing::error!(error = %e, "the policies in force changed in the store but cannot be loaded here; what runs stays in force");
                self.audit(AuditEntry::now(
                    "system",
                    "policy.load_failed",
                    serde_json::json!({"error": e.to_string()}),
                ))
                .await;
            }
        }
        Ok(())
    }

    /// Audits `policy.loaded` for each version in force in `next` that was not in `previous`.
    async fn audit_loaded(&self, previous: Option<&Rollout>, next: &Rollout) {
        let was = |reference: &str, role: &str| {
            previous.is_some_and(|p| p.in_force().iter().any(|(r, s, _)| *r == reference && *s == role))
        };
        for (reference, role, sha256) in next.in_force() {
            if !was(&reference, role) {
                let payload =
                    serde_json::json!({"policy": reference, "status": role, "sha256": sha256, "source": "store"});
                self.audit(AuditEntry::now("system", "policy.loaded", payload)).await;
                tracing::info!(policy = %reference, status = role, "policy in force");
            }
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
