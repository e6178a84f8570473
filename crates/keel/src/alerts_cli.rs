//! `keel alerts list|show|ack|resolve` (straight on the store, like `keel audit`) and
//! `keel bench drift` (the detector quality harness).

use std::fmt::Write as _;

use anyhow::Context as _;
use keel_monitor::bench::{self, BenchOptions, BenchPlan, BenchTable};
use keel_monitor::{AlertAction, AlertState};
use keel_store::{AlertFilter, DriftAlert, Store, StoreError};
use time::format_description::well_known::Rfc3339;

fn at(t: time::OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// The alerts as a table, newest first.
pub fn table(alerts: &[DriftAlert]) -> String {
    if alerts.is_empty() {
        return "no drift alerts\n".to_owned();
    }
    let mut out = format!(
        "{:>5}  {:<12}  {:<24}  {:<18}  {:<12}  {:>10}  {:>9}  {:<25}  window (seq)\n",
        "id", "state", "detector", "stream", "method", "statistic", "threshold", "opened"
    );
    for a in alerts {
        let o = &a.opened;
        let _ = writeln!(
            out,
            "{:>5}  {:<12}  {:<24}  {:<18}  {:<12}  {:>10.4}  {:>9.4}  {:<25}  {}..{} ({} obs)",
            a.id,
            a.state.name(),
            o.detector,
            o.stream,
            o.method,
            o.statistic,
            o.threshold,
            at(o.opened_at),
            o.window.first_seq,
            o.window.last_seq,
            o.window.size
        );
    }
    out
}

/// One alert in full, with its deliveries.
pub async fn show(store: &dyn Store, id: i64, json: bool) -> anyhow::Result<String> {
    let alert = store.get_alert(id).await?.ok_or(StoreError::AlertNotFound(id))?;
    let deliveries = store.alert_deliveries(id).await?;
    if json {
        return Ok(serde_json::to_string_pretty(&serde_json::json!({"alert": alert, "deliveries": deliveries}))? + "\n");
    }
    let o = &alert.opened;
    let mut out = format!(
        "alert {} — {}\n  detector   {} ({} on stream {}{})\n  statistic  {:.6} (threshold {:.6}{})\n  window     {} observations, seq {}..{}, {} → {}\n  reference  {} observations; {} seen in total\n  detail     {}\n  opened     {}\n",
        alert.id,
        alert.state.name(),
        o.detector,
        o.method,
        o.stream,
        o.app.as_deref().map(|a| format!(", app {a}")).unwrap_or_default(),
        o.statistic,
        o.threshold,
        o.p_value.map(|p| format!(", p = {p:.3e}")).unwrap_or_default(),
        o.window.size,
        o.window.first_seq,
        o.window.last_seq,
        at(o.window.first_at),
        at(o.window.last_at),
        o.reference_size,
        o.samples,
        o.detail,
        at(o.opened_at),
    );
    if let (Some(t), Some(by)) = (alert.acknowledged_at, &alert.acknowledged_by) {
        let _ = writeln!(out, "  acknowledged {} by {by}", at(t));
    }
    if let (Some(t), Some(by)) = (alert.resolved_at, &alert.resolved_by) {
        let _ = writeln!(out, "  resolved   {} by {by}", at(t));
    }
    let ids: Vec<String> = o.sample_interaction_ids.iter().map(ToString::to_string).collect();
    let _ = writeln!(out, "  sample     {} interactions: {}", ids.len(), ids.join(" "));
    for d in &deliveries {
        let _ = writeln!(
            out,
            "  delivery   {} attempt {}: {}{}{} at {}",
            d.sink,
            d.attempt,
            d.status.as_str(),
            d.http_status.map(|s| format!(" (HTTP {s})")).unwrap_or_default(),
            d.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default(),
            at(d.at)
        );
    }
    Ok(out)
}

/// Lists alerts.
pub async fn list(
    store: &dyn Store,
    state: Option<String>,
    detector: Option<String>,
    limit: Option<u32>,
    json: bool,
) -> anyhow::Result<String> {
    let state = state.map(|s| s.parse::<AlertState>().map_err(|e| anyhow::anyhow!("--state: {e}"))).transpose()?;
    let alerts = store.list_alerts(&AlertFilter { state, detector, limit, before: None }).await?;
    if json {
        return Ok(serde_json::to_string_pretty(&alerts)? + "\n");
    }
    Ok(table(&alerts))
}

/// Acknowledges or resolves an alert, audited with `actor`.
pub async fn transition(
    store: &dyn Store,
    id: i64,
    action: AlertAction,
    actor: &str,
    json: bool,
) -> anyhow::Result<String> {
    let alert = store.transition_alert(id, action, actor).await.with_context(|| format!("alert {id}"))?;
    if json {
        return Ok(serde_json::to_string_pretty(&alert)? + "\n");
    }
    Ok(format!("alert {} is now {} ({} by {actor})\n", alert.id, alert.state.name(), action.name()))
}

/// Runs the drift quality harness and renders it: a human table, Markdown, or JSON.
pub fn bench_drift(full: bool, seed: Option<u64>, markdown: bool, json: bool) -> anyhow::Result<String> {
    let mut options = BenchOptions::defaults(if full { BenchPlan::full() } else { BenchPlan::quick() });
    if let Some(seed) = seed {
        options.seed = seed;
    }
    let started = std::time::Instant::now();
    let table = bench::run(&options)?;
    tracing::info!(threads = options.threads, seconds = started.elapsed().as_secs_f64(), "drift bench done");
    if json {
        return Ok(
            serde_json::to_string_pretty(&serde_json::json!({"table": table, "targets": table.targets()}))? + "\n"
        );
    }
    let mut out = if markdown { table.to_markdown() } else { human(&table) };
    let checks = table.targets();
    let failed: Vec<_> = checks.iter().filter(|c| !c.passed).collect();
    let _ = writeln!(out, "\nTargets (rate 5% → 10% detected within a median of 1,000 events; ≤ 0.1 false alarms per 10,000 no-change events): {} of {} met", checks.len() - failed.len(), checks.len());
    for c in failed {
        let value = c.value.map_or_else(|| "miss".to_owned(), |v| format!("{v:.3}"));
        let _ = writeln!(out, "  NOT MET  {}: {} = {value} (limit {})", c.detector, c.target, c.limit);
    }
    if !full {
        out.push_str("(quick run: few trials, rough figures; `--full` for the published table)\n");
    }
    Ok(out)
}

fn human(table: &BenchTable) -> String {
    let p = &table.plan;
    let mut out = format!(
        "seed {:#x}: {} trials per row, change at event {}; no-change controls {} × {} events\n\n{:<14} {:<22} {:>9} {:>8} {:>8} {:>14} {:>14}  targets\n",
        table.seed, p.trials, p.change_at, p.control_streams, p.control_len,
        "detector", "stream", "detected", "median", "p90", "FA/10k before", "FA/10k none"
    );
    let checks = table.targets();
    for r in &table.rows {
        let delay = |d: Option<f64>| d.map_or_else(|| "miss".to_owned(), |d| format!("{d:.0}"));
        let met = checks
            .iter()
            .filter(|c| {
                c.detector == r.detector
                    && (c.target.contains(r.scenario.label())
                        || (c.target.starts_with("median") && r.scenario == keel_monitor::bench::Scenario::RateShift))
            })
            .all(|c| c.passed);
        let _ = writeln!(
            out,
            "{:<14} {:<22} {:>5}/{:<3} {:>8} {:>8} {:>14.3} {:>14.3}  {}",
            r.detector,
            r.scenario.label(),
            r.detected,
            r.trials,
            delay(r.median_delay),
            delay(r.p90_delay),
            r.false_alarm_rate_before(),
            r.false_alarm_rate_control(),
            if met { "met" } else { "NOT MET" }
        );
    }
    out
}
