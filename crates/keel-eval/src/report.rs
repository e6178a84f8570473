//! Reports of a run: a terminal table, and a standalone HTML page (no external assets) with
//! per-category bars and every case.

use std::fmt::Write as _;

use crate::record::{CategorySummary, Metric, RunRecord};
use crate::score::Status;

fn pct(m: Option<&Metric>) -> String {
    match m {
        Some(m) => match (m.lower, m.upper) {
            (Some(l), Some(u)) => format!("{:.1}% [{:.0}–{:.0}]", m.value * 100.0, l * 100.0, u * 100.0),
            _ => format!("{:.1}", m.value),
        },
        None => "—".into(),
    }
}

/// The terminal report: header, a table per category, and the cases that did not pass.
pub fn render_text(run: &RunRecord) -> String {
    let mut out = String::new();
    let target = &run.target;
    let _ = writeln!(out, "run {}  {}", run.run_id, run.finished_at);
    let _ = writeln!(
        out,
        "suite {}@{} (sha256 {}…, {} cases × {})",
        run.suite.name,
        run.suite.version,
        &run.suite.sha256[..12.min(run.suite.sha256.len())],
        run.suite.cases,
        run.repeat
    );
    let mut t = format!("target {}", target.kind);
    if let Some(u) = &target.upstream {
        t.push_str(&format!(" upstream {u}"));
    }
    if let Some(m) = &target.model {
        t.push_str(&format!(" model {m}"));
    }
    if let Some(p) = &target.policy {
        t.push_str(&format!(" policy {} (sha256 {}…)", p.reference, &p.sha256[..12.min(p.sha256.len())]));
    }
    let _ = writeln!(out, "{t}");
    if let Some(j) = &run.judge {
        let _ = writeln!(
            out,
            "judge {} at {} (template {}…, rubrics {}…)",
            j.info.model,
            j.info.upstream,
            &j.info.template_sha256[..12],
            &j.rubric_sha256[..12]
        );
    }
    let _ = writeln!(out, "keel {} ({})\n", run.keel.version, run.keel.git_commit);
    let _ = writeln!(
        out,
        "{:<14} {:>6} {:>5} {:>5} {:>5}  {:<20} {:<20} {:<20} {:<20} {:>8}",
        "category", "trials", "pass", "fail", "err", "pass_rate", "block_rate", "over_refusal", "leak_rate", "p95 ms"
    );
    let row = |out: &mut String, name: &str, c: &CategorySummary| {
        let _ = writeln!(
            out,
            "{:<14} {:>6} {:>5} {:>5} {:>5}  {:<20} {:<20} {:<20} {:<20} {:>8}",
            name,
            c.trials,
            c.passed,
            c.failed,
            c.errors,
            pct(c.metrics.get("pass_rate")),
            pct(c.metrics.get("block_rate")),
            pct(c.metrics.get("over_refusal")),
            pct(c.metrics.get("leak_rate")),
            c.metrics.get("latency_p95_ms").map_or("—".into(), |m| format!("{:.1}", m.value)),
        );
    };
    for (name, c) in run.summary.categories.iter().filter(|(k, _)| k.as_str() != "all") {
        row(&mut out, name, c);
    }
    if let Some(all) = run.summary.all() {
        row(&mut out, "all", all);
    }
    if let Some(a) = &run.summary.judge_agreement {
        let kappa = a.kappa.map_or("undefined".into(), |k| format!("{k:.3}"));
        let _ = writeln!(
            out,
            "\njudge vs human labels: {} labelled, agreement {:.1}%, Cohen's kappa {kappa}",
            a.n,
            a.agreement * 100.0
        );
    }
    let failing: Vec<_> = run.results.iter().filter(|r| r.status != Status::Pass).collect();
    if !failing.is_empty() {
        let _ = writeln!(out, "\nnot passing ({}):", failing.len());
        for r in failing.iter().take(50) {
            let _ = writeln!(out, "  {:<5} {}#{} [{}] {}", r.status.as_str(), r.id, r.sample, r.category, r.reason);
        }
        if failing.len() > 50 {
            let _ = writeln!(out, "  … and {} more (see --json)", failing.len() - 50);
        }
    }
    out
}

fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A standalone HTML page: summary, per-category bars, every case.
pub fn render_html(run: &RunRecord) -> String {
    let mut html = String::new();
    let title = format!("Keel eval: {}@{} on {}", run.suite.name, run.suite.version, run.target.kind);
    let _ = write!(
        html,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>\
body{{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse;margin:1em 0}}\
td,th{{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}}th{{background:#f4f4f4}}\
.bar{{background:#eee;width:240px;height:14px;position:relative}}.fill{{height:14px}}.pass .fill,.fill.pass{{background:#2e8b57}}\
.fill.block{{background:#4169e1}}.fill.refuse{{background:#d2691e}}.fill.leak{{background:#b22222}}\
.ci{{position:absolute;top:0;height:14px;border-left:2px solid #000;border-right:2px solid #000;box-sizing:border-box}}\
.status-pass{{color:#2e8b57}}.status-fail{{color:#b22222;font-weight:bold}}.status-error{{color:#8b008b;font-weight:bold}}\
code,pre{{white-space:pre-wrap;font-size:12px}}</style></head><body><h1>{}</h1>",
        esc(&title),
        esc(&title)
    );
    let policy = run
        .target
        .policy
        .as_ref()
        .map(|p| format!("{} (sha256 {})", p.reference, p.sha256))
        .unwrap_or_else(|| "none".into());
    let _ = write!(
        html,
        "<p>run <code>{}</code> · {} → {}<br>suite sha256 <code>{}</code> · {} cases × {}<br>target {} · upstream {} · model {} · policy {}<br>keel {} ({})</p>",
        esc(&run.run_id),
        esc(&run.started_at),
        esc(&run.finished_at),
        esc(&run.suite.sha256),
        run.suite.cases,
        run.repeat,
        esc(&run.target.kind),
        esc(run.target.upstream.as_deref().unwrap_or("—")),
        esc(run.target.model.as_deref().unwrap_or("—")),
        esc(&policy),
        esc(&run.keel.version),
        esc(&run.keel.git_commit)
    );
    html.push_str("<h2>Per category</h2><table><tr><th>category</th><th>trials</th><th>pass / fail / error</th><th>pass rate</th><th>block rate</th><th>over-refusal</th><th>leak rate</th></tr>");
    let bar = |m: Option<&Metric>, class: &str| -> String {
        match m {
            None => "—".into(),
            Some(m) => {
                let ci = match (m.lower, m.upper) {
                    (Some(l), Some(u)) => format!(
                        "<div class=\"ci\" style=\"left:{:.1}%;width:{:.1}%\"></div>",
                        l * 100.0,
                        (u - l) * 100.0
                    ),
                    _ => String::new(),
                };
                format!(
                    "<div class=\"bar\"><div class=\"fill {class}\" style=\"width:{:.1}%\"></div>{ci}</div>{:.1}%",
                    m.value * 100.0,
                    m.value * 100.0
                )
            }
        }
    };
    for (name, c) in &run.summary.categories {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{} / {} / {}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(name),
            c.trials,
            c.passed,
            c.failed,
            c.errors,
            bar(c.metrics.get("pass_rate"), "pass"),
            bar(c.metrics.get("block_rate"), "block"),
            bar(c.metrics.get("over_refusal"), "refuse"),
            bar(c.metrics.get("leak_rate"), "leak")
        );
    }
    html.push_str("</table><p>Bars show the estimate; the black frame is the 95% Wilson interval.</p><h2>Cases</h2><table><tr><th>case</th><th>category</th><th>status</th><th>decision</th><th>prompt</th><th>answer</th><th>reason</th></tr>");
    for r in &run.results {
        let _ = write!(
            html,
            "<tr><td>{}#{}</td><td>{}</td><td class=\"status-{}\">{}</td><td>{}</td><td><pre>{}</pre></td><td><pre>{}</pre></td><td>{}</td></tr>",
            esc(&r.id),
            r.sample,
            esc(&r.category),
            r.status.as_str(),
            r.status.as_str(),
            r.decision.map_or("—", |d| d.as_str()),
            esc(&r.prompt),
            esc(r.output.as_deref().unwrap_or("")),
            esc(&r.reason)
        );
    }
    html.push_str("</table></body></html>\n");
    html
}
