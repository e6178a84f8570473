//! Upstream model servers: which upstream serves which model, and the HTTP client that
//! forwards requests to them (timeouts, retry on connect failure only).
//!
//! Only connection failures are retried: the request never reached the upstream, so a
//! retry cannot run a generation twice. Timeouts and 5xx answers are not retried.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;

use crate::error::ApiError;

/// One upstream as configured.
#[derive(Clone)]
pub struct UpstreamConfig {
    /// A name for logs and errors.
    pub name: String,
    /// Base URL of its OpenAI-compatible API, e.g. `http://127.0.0.1:11434/v1`.
    pub base_url: String,
    /// Sent as `Authorization: Bearer …` when set.
    pub api_key: Option<String>,
    /// Models it serves; empty means "ask its `/models` endpoint".
    pub models: Vec<String>,
    /// Limit for establishing a connection.
    pub connect_timeout: Duration,
    /// Limit for the whole answer (non-streamed) or for the first byte and each gap (streamed).
    pub request_timeout: Duration,
    /// Extra attempts after a connection failure.
    pub max_retries: u32,
}

impl std::fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("models", &self.models)
            .finish()
    }
}

struct Upstream {
    config: UpstreamConfig,
    client: reqwest::Client,
    discovered: RwLock<Discovered>,
}

#[derive(Default)]
struct Discovered {
    models: Vec<String>,
    ok: bool,
    at: Option<Instant>,
}

/// How long a failed or missed model discovery is trusted before asking again.
const REDISCOVER_AFTER: Duration = Duration::from_secs(10);

/// All upstreams and the model → upstream routing.
pub struct Upstreams {
    upstreams: Vec<Upstream>,
}

/// An answer from an upstream: status and either a full body or a byte stream.
pub struct UpstreamResponse {
    /// The upstream's HTTP status.
    pub status: u16,
    /// The raw response, to read as JSON or as a stream.
    pub response: reqwest::Response,
}

impl Upstreams {
    /// Builds a client per upstream.
    pub fn new(configs: Vec<UpstreamConfig>) -> Result<Self, reqwest::Error> {
        let upstreams = configs
            .into_iter()
            .map(|config| {
                let client = reqwest::Client::builder()
                    .connect_timeout(config.connect_timeout)
                    .pool_idle_timeout(Duration::from_secs(90))
                    .tcp_nodelay(true)
                    .build()?;
                Ok(Upstream { config, client, discovered: RwLock::new(Discovered::default()) })
            })
            .collect::<Result<Vec<_>, reqwest::Error>>()?;
        Ok(Upstreams { upstreams })
    }

    /// Asks every upstream without a configured model list for its models.
    pub async fn discover(&self) {
        for upstream in &self.upstreams {
            if upstream.config.models.is_empty() {
                upstream.discover().await;
            }
        }
    }

    /// Every model id that can be requested, with the upstream serving it.
    pub fn models(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for upstream in &self.upstreams {
            for model in upstream.model_list() {
                out.push((model, upstream.config.name.clone()));
            }
        }
        out
    }

    /// Finds the upstream for `model`: a configured or discovered match, else an upstream
    /// whose discovery failed (it will answer for itself). `None` means the model is unknown.
    pub async fn route(&self, model: &str) -> Option<usize> {
        if let Some(i) = self.lookup(model) {
            return Some(i);
        }
        for upstream in self.upstreams.iter().filter(|u| u.config.models.is_empty()) {
            if upstream.discovery_stale() {
                upstream.discover().await;
            }
        }
        self.lookup(model)
            .or_else(|| self.upstreams.iter().position(|u| u.config.models.is_empty() && !u.discovery_ok()))
    }

    fn lookup(&self, model: &str) -> Option<usize> {
        self.upstreams.iter().position(|u| u.model_list().iter().any(|m| m == model))
    }

    /// The name of upstream `index`.
    pub fn name(&self, index: usize) -> &str {
        self.upstreams.get(index).map_or("", |u| u.config.name.as_str())
    }

    /// Sends a chat completion request body to upstream `index`.
    pub async fn chat(&self, index: usize, body: &Value) -> Result<UpstreamResponse, ApiError> {
        let upstream = self.upstreams.get(index).ok_or_else(|| ApiError::internal("upstream index out of range"))?;
        upstream.post("chat/completions", body).await
    }

    /// The request timeout of upstream `index` (also the gap limit of a stream).
    pub fn timeout(&self, index: usize) -> Duration {
        self.upstreams.get(index).map_or(Duration::from_secs(60), |u| u.config.request_timeout)
    }
}

impl Upstream {
    fn model_list(&self) -> Vec<String> {
        if !self.config.models.is_empty() {
            return self.config.models.clone();
        }
        self.discovered.read().map(|d| d.models.clone()).unwrap_or_default()
    }

    fn discovery_ok(&self) -> bool {
        self.discovered.read().map(|d| d.ok).unwrap_or(false)
    }

    fn discovery_stale(&self) -> bool {
        self.discovered.read().map(|d| d.at.is_none_or(|at| at.elapsed() > REDISCOVER_AFTER)).unwrap_or(true)
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{}", self.config.base_url.trim_end_matches('/'), path)
    }

    async fn discover(&self) {
        let mut request = self.client.get(self.url("models")).timeout(self.config.request_timeout);
        if let Some(key) = &self.config.api_key {
            request = request.bearer_auth(key);
        }
        let result = async {
            let response = request.send().await?.error_for_status()?;
            let body: Value = response.json().await?;
            Ok::<_, reqwest::Error>(
                body["data"]
                    .as_array()
                    .map(|data| data.iter().filter_map(|m| m["id"].as_str().map(str::to_string)).collect::<Vec<_>>())
                    .unwrap_or_default(),
            )
        }
        .await;
        let mut discovered = match self.discovered.write() {
            Ok(d) => d,
            Err(poisoned) => poisoned.into_inner(),
        };
        discovered.at = Some(Instant::now());
        match result {
            Ok(models) => {
                tracing::info!(upstream = %self.config.name, count = models.len(), "discovered upstream models");
                discovered.models = models;
                discovered.ok = true;
            }
            Err(e) => {
                tracing::warn!(upstream = %self.config.name, error = %e, "model discovery failed; forwarding every model to this upstream");
                discovered.ok = false;
            }
        }
    }

    async fn post(&self, path: &str, body: &Value) -> Result<UpstreamResponse, ApiError> {
        let payload = Bytes::from(serde_json::to_vec(body).map_err(ApiError::internal)?);
        let mut attempt = 0;
        loop {
            let mut request = self
                .client
                .post(self.url(path))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(payload.clone());
            if let Some(key) = &self.config.api_key {
                request = request.bearer_auth(key);
            }
            match tokio::time::timeout(self.config.request_timeout, request.send()).await {
                Err(_) => {
                    return Err(ApiError::gateway_timeout(format!(
                        "upstream `{}` did not answer within {} ms",
                        self.config.name,
                        self.config.request_timeout.as_millis()
                    )))
                }
                Ok(Ok(response)) => return Ok(UpstreamResponse { status: response.status().as_u16(), response }),
                Ok(Err(e)) if e.is_connect() && attempt < self.config.max_retries => {
                    attempt += 1;
                    tracing::warn!(upstream = %self.config.name, attempt, error = %e, "connect failed, retrying");
                    tokio::time::sleep(Duration::from_millis(50 << attempt.min(6))).await;
                }
                Ok(Err(e)) if e.is_timeout() => {
                    return Err(ApiError::gateway_timeout(format!("upstream `{}` timed out", self.config.name)))
                }
                Ok(Err(e)) => {
                    tracing::warn!(upstream = %self.config.name, error = %e, "upstream request failed");
                    return Err(ApiError::bad_gateway(format!("upstream `{}` is unreachable", self.config.name)));
                }
            }
        }
    }
}

/// All upstream model ids for `/v1/models`, deduplicated, in configuration order.
pub fn model_ids(models: &[(String, String)]) -> Vec<String> {
    let mut seen = HashMap::new();
    models.iter().filter(|(id, _)| seen.insert(id.clone(), ()).is_none()).map(|(id, _)| id.clone()).collect()
}
