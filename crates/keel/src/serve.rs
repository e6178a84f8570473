//! Running a gateway: wiring config, policy, store, writer and upstreams; serving until a
//! shutdown signal; registering the policy file again on SIGHUP; draining the writer on the
//! way out.
//!
//! The policy file of keel.toml (or `--policy`, or the built-in pack) seeds the store: on the
//! first start its version is stored and activated (`policy.seeded`). From then on the store
//! is the truth: the versions in force are the store's active, shadow and canary versions,
//! and a new version of the file (at start or on SIGHUP) is stored as a draft, to go through
//! approval, the gate and promotion like any other. `x-keel-policy` always names the version
//! that decided.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use keel_gateway::{
    AppState, Bindings, LocalModelServer, PolicyCompiler, RolloutError, UpstreamConfig, Upstreams, LOCAL_MODEL_ID,
};
use keel_policy::{Models, Policy, DEFAULT_PACK};
use keel_store::{AuditEntry, NewPolicyVersion, Seeded, Store, Writer, WriterConfig, WriterHandle, WriterSummary};
use serde_json::json;
use tokio::task::JoinHandle;

use crate::config::{self, Config};
use crate::models;
use crate::monitoring::{self, RunningMonitor};

/// Loads the policy file, or the built-in pack when none is named.
pub fn load_policy(path: Option<&std::path::Path>, models: &Models) -> anyhow::Result<(Policy, String)> {
    match path {
        Some(path) => Ok((Policy::load_with(path, models)?, path.display().to_string())),
        None => {
            Ok((Policy::parse_with("<built-in policies/default.toml>", DEFAULT_PACK, models)?, "built-in".to_string()))
        }
    }
}

/// Loads the models a policy file needs (the embedder for semantic and classifier checks),
/// fetching the pinned ones on first use.
pub async fn models_for(path: Option<&std::path::Path>) -> anyhow::Result<Models> {
    let Some(path) = path else { return Ok(Models::default()) };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("{}: cannot read the policy file", path.display()))?;
    if !Policy::needs_embedder(&path.display().to_string(), &text)? {
        return Ok(Models::default());
    }
    load_models().await
}

/// Loads the embedder and the injection classifier, fetching the pinned models on first use.
pub async fn load_models() -> anyhow::Result<Models> {
    let home = config::keel_home();
    let paths = keel_models::ModelPaths::from_env()
        .unwrap_or_else(|| keel_models::ModelPaths::in_models_dir(&keel_models::models_dir(&home)));
    let loaded = models::load_embedding(&paths, &home).await?;
    Ok(Models { embedder: Some(loaded.embedder), classifier: Some(loaded.classifier) })
}

/// Compiles policy texts with the models they need, loading the models on first need (a
/// promoted version may use semantic checks the file's version did not).
pub struct ModelCompiler {
    models: tokio::sync::Mutex<Models>,
}

impl ModelCompiler {
    /// A compiler that starts with the models already loaded.
    pub fn new(models: Models) -> Self {
        ModelCompiler { models: tokio::sync::Mutex::new(models) }
    }
}

#[async_trait]
impl PolicyCompiler for ModelCompiler {
    async fn compile(&self, label: &str, text: &str) -> Result<Policy, String> {
        let needs = Policy::needs_embedder(label, text).map_err(|e| e.to_string())?;
        let models = {
            let mut models = self.models.lock().await;
            if needs && models.embedder.is_none() {
                *models =
                    load_models().await.map_err(|e| format!("{label}: cannot load the models it needs: {e:#}"))?;
            }
            models.clone()
        };
        let (label, text) = (label.to_owned(), text.to_owned());
        // Model-based checks embed their exemplars while compiling: keep that off the runtime.
        tokio::task::spawn_blocking(move || Policy::parse_with(&label, &text, &models).map_err(|e| e.to_string()))
            .await
            .map_err(|e| e.to_string())?
    }
}

/// The self-contained text of the policy file (its file bases folded in) or of the built-in
/// pack, and where it came from.
fn seed_of(path: Option<&std::path::Path>, policy: &Policy) -> anyhow::Result<NewPolicyVersion> {
    let (source_text, origin) = match path {
        Some(path) => (keel_policy::resolve::resolve_file(path)?, path.display().to_string()),
        None => (DEFAULT_PACK.to_owned(), "built-in default pack".to_owned()),
    };
    let reference = policy.reference();
    Ok(NewPolicyVersion { name: reference.name, version: reference.version, source_text, parent_version: None, origin })
}

/// Stores the policy file's version (see the module docs) and says what happened.
async fn seed(store: &dyn Store, path: Option<&std::path::Path>, policy: &Policy) -> anyhow::Result<()> {
    let new = seed_of(path, policy)?;
    let origin = new.origin.clone();
    match store.seed_policy_version(new, "system").await {
        Ok(Seeded::Activated(v)) => {
            tracing::info!(policy = %v.reference(), origin = %origin, "first start with this policy: stored and activated");
        }
        Ok(Seeded::Registered(v)) => tracing::warn!(
            policy = %v.reference(), origin = %origin,
            "the policy file holds a new version: stored as a draft; the store's active version stays in force until it is approved, gated and promoted (keel policy approve / promote)"
        ),
        Ok(Seeded::Known(v)) if v.status != keel_store::PolicyStatus::Active => tracing::warn!(
            policy = %v.reference(), status = %v.status, origin = %origin,
            "the policy file holds a stored version that is not active; the store's active version is in force"
        ),
        Ok(Seeded::Known(_)) => {}
        Err(keel_store::ChangeError::Store(e)) => return Err(e.into()),
        Err(e) => {
            tracing::error!(error = %e, origin = %origin, "the policy file is refused; the store's versions stay in force");
            store
                .write_batch(keel_store::WriteBatch {
                    audit: vec![AuditEntry::now(
                        "system",
                        "policy.reload_refused",
                        json!({"error": e.to_string(), "origin": origin}),
                    )],
                    ..keel_store::WriteBatch::default()
                })
                .await?;
        }
    }
    Ok(())
}

/// A gateway that is listening.
pub struct RunningGateway {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its shared state (policy, store…).
    pub state: AppState,
    server: JoinHandle<std::io::Result<()>>,
    shutdown: tokio::sync::watch::Sender<bool>,
    writer: WriterHandle,
    writer_task: JoinHandle<WriterSummary>,
    policy_path: Option<std::path::PathBuf>,
    models: Models,
    local_servers: Vec<LocalModelServer>,
    monitor: Option<RunningMonitor>,
}

impl RunningGateway {
    /// Stops accepting connections, lets in-flight requests finish, and writes everything.
    pub async fn shutdown(self) -> anyhow::Result<WriterSummary> {
        let _ = self.shutdown.send(true);
        match self.server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "server error"),
            Err(e) => tracing::error!(error = %e, "server task failed"),
        }
        // Answered requests may still run async checks before they are stored.
        self.state.tasks().close();
        self.state.tasks().wait().await;
        if let Some(monitor) = self.monitor {
            monitor.stop().await;
        }
        for server in &self.local_servers {
            server.stop();
        }
        self.writer.close().await;
        drop(self.state);
        let summary = self.writer_task.await.context("the store writer failed")?;
        Ok(summary)
    }

    /// Serves until Ctrl-C or SIGTERM (reloading the policy on SIGHUP), then shuts down cleanly.
    pub async fn wait_for_signal_then_shutdown(self) -> anyhow::Result<WriterSummary> {
        let reload_state = self.state.clone();
        let policy_path = self.policy_path.clone();
        wait_for_shutdown_signal(reload_state, policy_path, self.models.clone()).await;
        tracing::info!("shutting down: finishing in-flight requests and writing every record");
        self.shutdown().await
    }
}

/// Starts a gateway for `config` and returns once it listens.
pub async fn start(config: &Config) -> anyhow::Result<RunningGateway> {
    let models = models_for(config.policy.as_deref()).await?;
    let (policy, policy_source) = load_policy(config.policy.as_deref(), &models)?;
    let store: Arc<dyn Store> = keel_store::resolve(&config.store)
        .await
        .with_context(|| format!("cannot open the store {}", keel_store::redact_url(&config.store)))?;
    let (writer, writer_task) =
        Writer::spawn(store.clone(), WriterConfig { intake: config.gateway.review, ..WriterConfig::default() });
    for notice in &config.notices {
        tracing::warn!("{notice}");
    }
    writer
        .record_audit(AuditEntry::now("system", "config.loaded", json!({
            "listen": config.listen.to_string(),
            "upstreams": config.upstreams.iter().map(|u| json!({"name": u.name, "base_url": u.base_url, "models": u.models})).collect::<Vec<_>>(),
            "keys": config.gateway.keys.iter().map(|k| json!({"name": k.name, "app": k.app, "admin": k.admin})).collect::<Vec<_>>(),
            "max_body_bytes": config.gateway.max_body_bytes,
        })))
        .await?;

    let mut upstream_configs = config.upstreams.clone();
    let mut local_servers = Vec::new();
    for local in &config.local_upstreams {
        let home = config::keel_home();
        let paths = match &local.gguf {
            Some(gguf) => keel_models::ModelPaths::in_models_dir(&keel_models::models_dir(&home)).with_llm_gguf(gguf),
            None => keel_models::ModelPaths::from_env()
                .unwrap_or_else(|| keel_models::ModelPaths::in_models_dir(&keel_models::models_dir(&home))),
        };
        let llm = models::load_llm(&paths, &home).await?;
        let server = keel_gateway::spawn_local_model(llm, LOCAL_MODEL_ID, local.queue).await?;
        tracing::info!(upstream = %local.name, model = LOCAL_MODEL_ID, "serving the local model");
        upstream_configs.push(UpstreamConfig {
            name: local.name.clone(),
            base_url: server.base_url(),
            api_key: None,
            models: vec![LOCAL_MODEL_ID.to_string()],
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(600),
            max_retries: 0,
        });
        local_servers.push(server);
    }
    let upstreams = Upstreams::new(upstream_configs).context("cannot build the upstream HTTP client")?;
    upstreams.discover().await;
    seed(store.as_ref(), config.policy.as_deref(), &policy).await?;
    let file_policy = policy.reference();
    let state = AppState::new(config.gateway.clone(), Arc::new(policy), upstreams, store, writer.clone());
    state.refresh_access().await.context("cannot read the admin tokens of the store")?;
    let bindings = Bindings {
        default_name: file_policy.name.clone(),
        apps: config.app_policies.iter().map(|b| (b.app.clone(), b.policy.clone())).collect(),
    };
    let rollout = state.manage_policies(Arc::new(ModelCompiler::new(models.clone())), bindings).await.map_err(|e| {
        match &e {
            RolloutError::Unbound { app, name } => match config.app_policies.iter().find(|b| &b.app == app) {
                Some(binding) => anyhow::anyhow!(
                    "{}: no version of policy `{name}` is active in the store (add it with `keel policy add`, approve and promote it first)",
                    binding.location
                ),
                None => anyhow::anyhow!("{e}"),
            },
            _ => anyhow::anyhow!("{e}"),
        }
    })?;
    let in_force_policy = rollout.default_active();
    let in_force = in_force_policy.reference();
    if in_force != file_policy {
        tracing::warn!(
            file = %file_policy, in_force = %in_force, source = %policy_source,
            "the policy file is not the version in force: the store's active version decides (see `keel policy list`)"
        );
    }
    if state.is_open() && !state.api_is_open() {
        tracing::info!("no client keys configured, but admin tokens exist: /api/ needs a token");
    }
    let monitor = monitoring::start(config.monitor.clone(), &state, &models, &in_force_policy).await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let (shutdown, mut shutdown_rx) = tokio::sync::watch::channel(false);
    keel_gateway::watch_store(state.clone(), config.poll_interval, shutdown.subscribe());
    let app = keel_gateway::router(state.clone());
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = shutdown_rx.wait_for(|stop| *stop).await;
            })
            .await
    });
    Ok(RunningGateway {
        addr,
        state,
        server,
        shutdown,
        writer,
        writer_task,
        policy_path: config.policy.clone(),
        models,
        local_servers,
        monitor,
    })
}

/// Waits for Ctrl-C or SIGTERM; on SIGHUP stores the policy file's version again (see [`reload`]).
async fn wait_for_shutdown_signal(state: AppState, policy_path: Option<std::path::PathBuf>, models: Models) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut hup)) = (signal(SignalKind::terminate()), signal(SignalKind::hangup())) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return,
                _ = term.recv() => return,
                _ = hup.recv() => reload(&state, policy_path.as_deref(), &models).await,
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (state, policy_path, models);
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Stores the policy file's current version (SIGHUP): a new version becomes a draft (see the
/// module docs); a file that does not compile, or that changed without a new version, is
/// refused and audited. What is in force changes only through the store.
pub async fn reload(state: &AppState, path: Option<&std::path::Path>, models: &Models) {
    let checked = async {
        let needs = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("{}: cannot read the policy file", path.display()))?;
                Policy::needs_embedder(&path.display().to_string(), &text)?
            }
            None => false,
        };
        let models = if needs && models.embedder.is_none() { load_models().await? } else { models.clone() };
        load_policy(path, &models).map(|(policy, _)| policy)
    };
    match checked.await {
        Ok(policy) => {
            tracing::info!(policy = %policy.reference(), "policy file read again");
            if let Err(e) = seed(state.store().as_ref(), path, &policy).await {
                tracing::error!(error = %e, "cannot store the policy file's version");
            }
            if let Err(e) = state.refresh().await {
                tracing::error!(error = %e, "cannot read the store");
            }
        }
        Err(e) => {
            tracing::error!(error = %e, running = %state.policy().reference(), "policy file refused; what is in force stays");
            state.audit(AuditEntry::now("system", "policy.reload_refused", json!({"error": e.to_string()}))).await;
        }
    }
}
