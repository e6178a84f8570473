//! `keel ingest FILE` (offline into the store, judged by a policy file; or through a running
//! gateway's `/api/ingest`) and `keel kpi` (KPIs per bucket, straight from the store).

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use keel_core::{Permission, Privacy};
use keel_gateway::ingest::{Ingest, IngestReport};
use keel_gateway::kpi::{KpiReport, DEFAULT_CONFIDENCE};
use keel_monitor::kpi::{BucketWidth, KpiBucket};
use keel_monitor::stats::{MeanEstimate, RateEstimate};
use keel_store::{KpiRange, Writer, WriterConfig};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::identity::{act_as, StoreArgs, TokenArg};

/// Lines sent or judged per chunk: bounds memory on a 60-day log and keeps requests small.
const CHUNK_LINES: usize = 20_000;

/// Lines of `text` in chunks of [`CHUNK_LINES`], each with the number of its first line; a JSON
/// array is one chunk.
fn chunks(text: &str) -> Vec<(usize, String)> {
    if text.trim_start().starts_with('[') {
        return vec![(1, text.to_owned())];
    }
    let lines: Vec<&str> = text.lines().collect();
    lines.chunks(CHUNK_LINES).enumerate().map(|(i, c)| (i * CHUNK_LINES + 1, c.join("\n"))).collect()
}

/// What `--config` says of the apps: the privacy of each (`full` for every app without one)
/// and which feedback opens review cases (`[review]`).
type AppSettings = (Privacy, std::collections::HashMap<String, Privacy>, keel_store::CaseIntake);

fn settings_from(config: Option<&Path>) -> anyhow::Result<AppSettings> {
    let Some(path) = config else { return Ok((Privacy::Full, Default::default(), Default::default())) };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("{}: cannot read the config file", path.display()))?;
    let source = keel_policy::source::TomlSource::new(path.display().to_string(), &text);
    let file: crate::config::ConfigFile = source.deserialize()?;
    let (intake, _lock) = crate::config::review_settings(&file.review, &source)?;
    Ok((file.default_privacy, file.apps.iter().map(|(name, app)| (name.clone(), app.privacy)).collect(), intake))
}

/// Ingests `file` straight into the store named by `store`, judged by `policy` (else the
/// config's policy, else the built-in pack). Without a token the actor is `cli`.
pub async fn offline(
    file: &Path,
    app: Option<&str>,
    store: &StoreArgs,
    policy: Option<&Path>,
    token: &TokenArg,
) -> anyhow::Result<IngestReport> {
    let text = std::fs::read_to_string(file).with_context(|| format!("{}: cannot read", file.display()))?;
    let store_handle = store.open().await?;
    let actor = match token.token {
        Some(_) => act_as(store_handle.as_ref(), token, Permission::Ingest).await?.name,
        None => "cli".to_owned(),
    };
    let config_policy = match (policy, &store.config) {
        (None, Some(config)) => {
            let text = std::fs::read_to_string(config)
                .with_context(|| format!("{}: cannot read the config file", config.display()))?;
            let file: crate::config::ConfigFile =
                keel_policy::source::TomlSource::new(config.display().to_string(), &text).deserialize()?;
            file.policy
        }
        _ => None,
    };
    let policy_path = policy.map(Path::to_path_buf).or(config_policy);
    let models = crate::serve::models_for(policy_path.as_deref()).await?;
    let (policy, source) = crate::serve::load_policy(policy_path.as_deref(), &models)?;
    let policy = Arc::new(policy);
    tracing::info!(policy = %policy.reference(), source = %source, "ingesting with this policy");
    let (default_privacy, privacy, intake) = settings_from(store.config.as_deref())?;
    let (writer, task) = Writer::spawn(store_handle.clone(), WriterConfig { intake, ..WriterConfig::default() });
    let for_policy = policy.clone();
    let pick = move |_: &str, _: &str| -> Result<Arc<keel_policy::Policy>, String> { Ok(for_policy.clone()) };
    let privacy_of = move |app: &str| privacy.get(app).copied().unwrap_or(default_privacy);
    let run = Ingest {
        store: store_handle.as_ref(),
        writer: &writer,
        policy: &pick,
        privacy: &privacy_of,
        default_app: app,
        only_app: None,
        actor: &actor,
        review: &intake,
    };
    let report = run.run_steps(keel_gateway::ingest::steps(&text, 1)).await?;
    writer.close().await;
    let summary = task.await?;
    if summary.rejected > 0 {
        bail!("{} interactions were refused by the store (see the log)", summary.rejected);
    }
    Ok(report)
}

/// Sends `file` to a running gateway's `/api/ingest`, a chunk per request.
pub async fn online(file: &Path, app: Option<&str>, url: &str, token: Option<&str>) -> anyhow::Result<IngestReport> {
    let text = std::fs::read_to_string(file).with_context(|| format!("{}: cannot read", file.display()))?;
    let client = reqwest::Client::new();
    let mut endpoint = reqwest::Url::parse(&format!("{}/api/ingest", url.trim_end_matches('/')))
        .with_context(|| format!("--url {url} is not a URL"))?;
    if let Some(app) = app {
        endpoint.query_pairs_mut().append_pair("app", app);
    }
    let mut report = IngestReport::default();
    for (first, chunk) in chunks(&text) {
        let mut request = client.post(endpoint.clone()).body(chunk);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.with_context(|| format!("cannot reach {url}"))?;
        let status = response.status();
        let body: serde_json::Value =
            response.json().await.with_context(|| format!("{url} answered {status} without JSON"))?;
        if !status.is_success() && body.get("errors").is_none() {
            bail!("{url} answered {status}: {}", body["error"]["message"].as_str().unwrap_or("no message"));
        }
        let count = |field: &str| body[field].as_u64().unwrap_or(0);
        let mut part = IngestReport {
            ingested: count("ingested"),
            duplicates: count("duplicates"),
            feedback: count("feedback"),
            errors: Vec::new(),
        };
        for e in body["errors"].as_array().into_iter().flatten() {
            part.errors.push(keel_gateway::ingest::LineError {
                line: first - 1 + e["line"].as_u64().unwrap_or(0) as usize,
                field: e["field"].as_str().map(str::to_owned),
                message: e["message"].as_str().unwrap_or_default().to_owned(),
            });
        }
        report.merge(part);
    }
    Ok(report)
}

/// The report for the terminal: counts, then each refused line.
pub fn describe(report: &IngestReport, json: bool) -> anyhow::Result<String> {
    if json {
        return Ok(serde_json::to_string_pretty(report)? + "\n");
    }
    let mut out = format!(
        "ingested {} interactions ({} duplicates skipped, {} feedback events), {} lines refused\n",
        report.ingested,
        report.duplicates,
        report.feedback,
        report.errors.len()
    );
    for e in &report.errors {
        let _ = writeln!(out, "  line {}: {}", e.line, e.message);
    }
    Ok(out)
}

/// `--since 7d` or an RFC 3339 time.
fn instant(flag: &str, value: &str) -> anyhow::Result<OffsetDateTime> {
    if let Ok(at) = OffsetDateTime::parse(value, &Rfc3339) {
        return Ok(at);
    }
    let (number, unit) = value.split_at(value.len().saturating_sub(1));
    let amount: i64 = number.parse().map_err(|_| {
        anyhow::anyhow!("{flag}: `{value}` is neither an RFC 3339 time nor a duration like 30m, 12h or 7d")
    })?;
    let seconds = match unit {
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => bail!("{flag}: unknown duration unit in `{value}` (use m, h or d)"),
    };
    Ok(OffsetDateTime::now_utc() - time::Duration::seconds(amount * seconds))
}

/// Computes the KPI report from the store.
pub async fn kpi(
    store: &StoreArgs,
    app: Option<String>,
    since: &str,
    until: Option<&str>,
    bucket: &str,
) -> anyhow::Result<KpiReport> {
    let since = instant("--since", since)?;
    let until = until.map(|u| instant("--until", u)).transpose()?.unwrap_or_else(OffsetDateTime::now_utc);
    if since >= until {
        bail!("--since must be before --until");
    }
    let bucket: BucketWidth = bucket.parse().map_err(|e: String| anyhow::anyhow!("--bucket: {e}"))?;
    let store = store.open().await?;
    Ok(keel_gateway::kpi::report(store.as_ref(), KpiRange { app, since, until }, bucket, DEFAULT_CONFIDENCE).await?)
}

fn rate(r: &Option<RateEstimate>) -> String {
    match r {
        Some(r) => format!("{:.1}% [{:.1}–{:.1}]", r.estimate * 100.0, r.lower * 100.0, r.upper * 100.0),
        None => "—".to_owned(),
    }
}

fn mean(m: &Option<MeanEstimate>, decimals: usize) -> String {
    match m {
        Some(m) => format!("{:.d$} [{:.d$}–{:.d$}]", m.mean, m.lower, m.upper, d = decimals),
        None => "—".to_owned(),
    }
}

fn row(label: &str, b: &KpiBucket) -> String {
    let p50 = b.latency.percentiles_ms.map(|p| format!("{:.0}/{:.0}", p.p50, p.p90)).unwrap_or_else(|| "—".into());
    let tth = b
        .handoff
        .time_to_human_percentiles_s
        .map(|p| format!("{:.0}/{:.0}", p.p50, p.p90))
        .unwrap_or_else(|| "—".into());
    format!(
        "{label:<20}  {:>7}  {:<19}  {:<19}  {:<19}  {:<19}  {:<19}  {:>9}  {:>11}  {:>8}\n",
        b.interactions,
        mean(&b.satisfaction.mean, 2),
        rate(&b.satisfaction.response_rate),
        rate(&b.wrong_answer.user_reports),
        rate(&b.handoff.rate),
        rate(&b.refusal_rate),
        tth,
        p50,
        b.tokens.prompt + b.tokens.completion,
    )
}

/// The report as a table: one row per bucket and one for the whole range, then the overall
/// per-check hit rates and action mix.
pub fn kpi_table(report: &KpiReport) -> String {
    let at = |t: OffsetDateTime| t.format(&Rfc3339).unwrap_or_else(|_| t.to_string());
    let mut out = format!(
        "KPIs for {} from {} to {} by {}, {:.0}% intervals\n",
        report.app.as_deref().map(|a| format!("app {a}")).unwrap_or_else(|| "all apps".into()),
        at(report.since),
        at(report.until),
        serde_json::to_value(report.bucket).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
        report.confidence * 100.0
    );
    let Some(overall) = &report.overall else {
        out.push_str("no interactions in this range\n");
        return out;
    };
    let _ = writeln!(
        out,
        "{:<20}  {:>7}  {:<19}  {:<19}  {:<19}  {:<19}  {:<19}  {:>9}  {:>11}  {:>8}",
        "bucket",
        "n",
        "satisfaction",
        "response rate",
        "wrong (user)",
        "handoff rate",
        "refusal rate",
        "tth p50/90",
        "latency p50/90",
        "tokens"
    );
    for b in &report.buckets {
        out.push_str(&row(&at(b.start), b));
    }
    out.push_str(&row("all", overall));
    out.push_str("\nchecks (hit rate):");
    for (name, r) in &overall.check_hit_rates {
        let _ = write!(out, "  {name} {}", rate(&Some(*r)));
    }
    out.push_str("\nactions:");
    for (name, r) in &overall.action_mix {
        let _ = write!(out, "  {name} {}", rate(&Some(*r)));
    }
    out.push_str("\nwrong answers by reviewers: — (no review labels stored yet)\n");
    out
}
