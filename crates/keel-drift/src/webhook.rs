//! Alert delivery to webhooks: Keel's JSON payload or a Slack message, POSTed with a timeout,
//! retried with exponential backoff, every attempt recorded. The outbox lives in the store,
//! so deliveries still pending when Keel stops resume when it starts again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keel_store::{DeliveryAttempt, DeliveryStatus, DriftAlert, PendingDelivery, Store};
use serde_json::{json, Value};
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::config::{WebhookConfig, WebhookFormat, MAX_BACKOFF};
use crate::error::Result;
use crate::metrics::DriftMetrics;

/// The event name in the JSON payload.
pub const OPENED_EVENT: &str = "drift_alert.opened";

/// Deliveries handled per pass.
const PASS_LIMIT: u32 = 100;

/// A one-line summary of an alert, for people.
pub fn summary(alert: &DriftAlert) -> String {
    let a = &alert.opened;
    let app = a.app.as_deref().map(|app| format!(" (app {app})")).unwrap_or_default();
    format!(
        "Keel drift alert #{}: detector {} on stream {}{app}: {} statistic {:.4} reached threshold {:.4} over {} \
         observations (seq {}..{}): {}",
        alert.id,
        a.detector,
        a.stream,
        a.method,
        a.statistic,
        a.threshold,
        a.window.size,
        a.window.first_seq,
        a.window.last_seq,
        a.detail
    )
}

/// The body POSTed for an opened alert, in the sink's format.
pub fn payload(alert: &DriftAlert, format: WebhookFormat) -> Value {
    match format {
        WebhookFormat::Json => json!({
            "event": OPENED_EVENT,
            "summary": summary(alert),
            "alert": alert,
        }),
        WebhookFormat::Slack => {
            let a = &alert.opened;
            let samples: Vec<String> = a.sample_interaction_ids.iter().take(5).map(|id| format!("`{id}`")).collect();
            let markdown = format!(
                ":warning: *Keel drift alert #{}* — `{}` on `{}`{}\n*{}* statistic *{:.4}* ≥ threshold {:.4}\nwindow: {} \
                 observations, {} → {} (seq {}..{})\n{}\nsample interactions: {}",
                alert.id,
                a.detector,
                a.stream,
                a.app.as_deref().map(|app| format!(" (app `{app}`)")).unwrap_or_default(),
                a.method,
                a.statistic,
                a.threshold,
                a.window.size,
                rfc3339(a.window.first_at),
                rfc3339(a.window.last_at),
                a.window.first_seq,
                a.window.last_seq,
                a.detail,
                if samples.is_empty() { "none".to_owned() } else { samples.join(", ") },
            );
            json!({
                "text": summary(alert),
                "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": markdown}}],
            })
        }
    }
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| at.to_string())
}

/// The wait after failed attempt `attempt` (1-based): `initial · 2^(attempt−1)`, at most
/// [`MAX_BACKOFF`].
pub fn backoff(initial: Duration, attempt: u32) -> Duration {
    initial.saturating_mul(1u32 << attempt.saturating_sub(1).min(20)).min(MAX_BACKOFF)
}

/// Delivers queued alerts to the configured webhooks.
pub struct Deliverer {
    store: Arc<dyn Store>,
    webhooks: Vec<WebhookConfig>,
    client: reqwest::Client,
    metrics: DriftMetrics,
}

impl Deliverer {
    /// A deliverer for `webhooks`.
    pub fn new(store: Arc<dyn Store>, webhooks: Vec<WebhookConfig>, metrics: DriftMetrics) -> Result<Self> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("keel/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| crate::DriftError::HttpClient(e.to_string()))?;
        Ok(Self { store, webhooks, client, metrics })
    }

    /// One pass: every due delivery is attempted once. Returns the attempts made.
    pub async fn deliver_due(&self) -> Result<usize> {
        let names: Vec<String> = self.webhooks.iter().map(|w| w.name.clone()).collect();
        let due = self.store.due_deliveries(&names, OffsetDateTime::now_utc(), PASS_LIMIT).await?;
        for pending in &due {
            let Some(webhook) = self.webhooks.iter().find(|w| w.name == pending.sink) else { continue };
            let attempt = self.attempt(webhook, pending).await;
            self.metrics.delivery(&attempt.sink, attempt.status.as_str());
            match attempt.status {
                DeliveryStatus::Delivered => {
                    tracing::info!(alert = attempt.alert_id, sink = %attempt.sink, attempt = attempt.attempt, "drift alert delivered")
                }
                DeliveryStatus::Retry => tracing::warn!(
                    alert = attempt.alert_id, sink = %attempt.sink, attempt = attempt.attempt,
                    error = attempt.error.as_deref().unwrap_or(""), "drift alert delivery failed; will retry"
                ),
                DeliveryStatus::Failed => tracing::error!(
                    alert = attempt.alert_id, sink = %attempt.sink, attempt = attempt.attempt,
                    error = attempt.error.as_deref().unwrap_or(""), "drift alert delivery failed; no attempts left"
                ),
            }
            self.store.record_delivery(&attempt).await?;
        }
        Ok(due.len())
    }

    async fn attempt(&self, webhook: &WebhookConfig, pending: &PendingDelivery) -> DeliveryAttempt {
        let number = pending.attempts + 1;
        let mut request = self
            .client
            .post(&webhook.url)
            .timeout(webhook.timeout)
            .header("x-keel-alert-id", pending.alert.id.to_string())
            .json(&payload(&pending.alert, webhook.format));
        if let Some((header, value)) = &webhook.secret_header {
            request = request.header(header.as_str(), value.as_str());
        }
        let (http_status, error) = match request.send().await {
            Ok(response) if response.status().is_success() => (Some(response.status().as_u16()), None),
            Ok(response) => {
                let status = response.status();
                (Some(status.as_u16()), Some(format!("the webhook answered HTTP {status}")))
            }
            Err(e) if e.is_timeout() => (None, Some(format!("no answer within {} ms", webhook.timeout.as_millis()))),
            Err(e) => (None, Some(format!("cannot reach the webhook: {}", without_url(&e)))),
        };
        let at = OffsetDateTime::now_utc();
        let (status, next_attempt_at) = match &error {
            None => (DeliveryStatus::Delivered, None),
            Some(_) if number >= webhook.max_attempts => (DeliveryStatus::Failed, None),
            Some(_) => (DeliveryStatus::Retry, Some(at + backoff(webhook.initial_backoff, number))),
        };
        DeliveryAttempt {
            alert_id: pending.alert.id,
            sink: webhook.name.clone(),
            attempt: number,
            status,
            http_status,
            error,
            at,
            next_attempt_at,
        }
    }

    /// Delivers while `leader` is set (only the lease holder delivers), every `poll`, until
    /// `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>, leader: Arc<AtomicBool>, poll: Duration) {
        while !*shutdown.borrow() {
            if leader.load(Ordering::Relaxed) {
                if let Err(e) = self.deliver_due().await {
                    tracing::warn!(error = %e, "alert delivery pass failed; retrying");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = shutdown.changed() => {}
            }
        }
    }
}

/// A reqwest error's message without the URL (which may carry a token, as Slack's do).
fn without_url(e: &reqwest::Error) -> String {
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
    let mut text = if e.is_connect() { "connection failed".to_owned() } else { "request failed".to_owned() };
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = |n| backoff(Duration::from_secs(1), n);
        assert_eq!((b(1), b(2), b(3)), (Duration::from_secs(1), Duration::from_secs(2), Duration::from_secs(4)));
        assert_eq!(b(30), MAX_BACKOFF);
        assert_eq!(b(u32::MAX), MAX_BACKOFF);
    }
}
