//! KPI reports: the store's facts for a range, the model's refusals found in the stored
//! answers, and keel-monitor's estimates per bucket and overall. `GET /api/kpi` and
//! `keel kpi` both answer with [`KpiReport`].

use keel_monitor::kpi::{compute, compute_overall, BucketWidth, InteractionFacts, KpiBucket};
use keel_policy::detect::RefusalDetector;
use keel_store::{KpiRange, Store, StoreError};
use serde::Serialize;
use time::OffsetDateTime;

/// Confidence level of every interval unless asked otherwise.
pub const DEFAULT_CONFIDENCE: f64 = 0.95;

/// KPIs of one app (or all) over a range.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KpiReport {
    /// The app, or `None` for all apps.
    pub app: Option<String>,
    /// Start of the range (inclusive).
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    /// End of the range (exclusive).
    #[serde(with = "time::serde::rfc3339")]
    pub until: OffsetDateTime,
    /// Width of each bucket.
    pub bucket: BucketWidth,
    /// Confidence level of the intervals.
    pub confidence: f64,
    /// The whole range as one bucket (`None` when it holds no interaction).
    pub overall: Option<KpiBucket>,
    /// Buckets with at least one interaction, oldest first.
    pub buckets: Vec<KpiBucket>,
}

/// Computes the KPI report of `range`: reads the facts, judges the stored answers for
/// refusals (off the async runtime) and estimates every figure.
pub async fn report(
    store: &dyn Store,
    range: KpiRange,
    bucket: BucketWidth,
    confidence: f64,
) -> Result<KpiReport, StoreError> {
    let rows = store.kpi_rows(&range).await?;
    let compute_all = move || {
        let detector = RefusalDetector::new();
        let interactions: Vec<InteractionFacts> = rows
            .interactions
            .into_iter()
            .map(|i| InteractionFacts { refused: i.response_text.as_deref().map(|t| detector.refuses(t)), ..i.facts })
            .collect();
        let buckets = compute(bucket, &interactions, &rows.feedback, &rows.handoffs, &rows.reviews, confidence)?;
        let overall =
            compute_overall(range.since, &interactions, &rows.feedback, &rows.handoffs, &rows.reviews, confidence)?;
        Ok::<_, keel_monitor::MonitorError>(KpiReport {
            app: range.app,
            since: range.since,
            until: range.until,
            bucket,
            confidence,
            overall,
            buckets,
        })
    };
    let invalid = |reason: String| StoreError::InvalidInput { what: "the KPIs".to_owned(), reason };
    tokio::task::spawn_blocking(compute_all)
        .await
        .map_err(|e| invalid(e.to_string()))?
        .map_err(|e| invalid(e.to_string()))
}
