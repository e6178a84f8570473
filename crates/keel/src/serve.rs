//! Running a gateway: wiring config, policy, store, writer and upstreams; serving until a
//! shutdown signal; reloading the policy on SIGHUP; draining the writer on the way out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use keel_gateway::{AppState, LocalModelServer, UpstreamConfig, Upstreams, LOCAL_MODEL_ID};
use keel_policy::{Models, Policy, DEFAULT_PACK};
use keel_store::{AuditEntry, Store, Writer, WriterConfig, WriterHandle, WriterSummary};
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
    let home = config::keel_home();
    let paths = keel_models::ModelPaths::from_env()
        .unwrap_or_else(|| keel_models::ModelPaths::in_models_dir(&keel_models::models_dir(&home)));
    let loaded = models::load_embedding(&paths, &home).await?;
    Ok(Models { embedder: Some(loaded.embedder), classifier: Some(loaded.classifier) })
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
    let (writer, writer_task) = Writer::spawn(store.clone(), WriterConfig::default());
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
    writer.record_audit(policy_loaded(&policy, &policy_source)).await?;

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
    let policy = Arc::new(policy);
    let state = AppState::new(config.gateway.clone(), policy.clone(), upstreams, store, writer.clone());
    let monitor = monitoring::start(config.monitor.clone(), &state, &models, &policy).await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let (shutdown, mut shutdown_rx) = tokio::sync::watch::channel(false);
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

fn policy_loaded(policy: &Policy, source: &str) -> AuditEntry {
    AuditEntry::now(
        "system",
        "policy.loaded",
        json!({
            "policy": policy.reference().to_string(),
            "source": source,
            "sha256": policy.source_sha256(),
        }),
    )
}

/// Waits for Ctrl-C or SIGTERM; on SIGHUP reloads the policy (a bad file keeps the old one).
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

/// Replaces the running policy with the file's current content, if it is valid.
pub async fn reload(state: &AppState, path: Option<&std::path::Path>, models: &Models) {
    match load_policy(path, models) {
        Ok((policy, source)) => {
            tracing::info!(policy = %policy.reference(), "policy reloaded");
            state.audit(policy_loaded(&policy, &source)).await;
            state.set_policy(Arc::new(policy));
        }
        Err(e) => {
            tracing::error!(error = %e, running = %state.policy().reference(), "policy reload refused; the running policy stays in force");
            state.audit(AuditEntry::now("system", "policy.reload_refused", json!({"error": e.to_string()}))).await;
        }
    }
}
