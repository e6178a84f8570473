//! `keel review next|label|release|adjudicate|list|agreement`: the review queue, worked
//! through a running gateway's `/api/review` with an admin token (`--token` or `KEEL_TOKEN`),
//! so locks, roles and audit records are the gateway's.

use std::fmt::Write as _;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

/// Where the gateway is and who the CLI acts as.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// The gateway's base URL.
    #[arg(long, env = "KEEL_URL", default_value = "http://127.0.0.1:8080", global = true)]
    pub url: String,
    /// Admin token to act as (or set KEEL_TOKEN); its name is the reviewer.
    #[arg(long, env = "KEEL_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Print the API's JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

/// A label as the command line gives it.
#[derive(Debug, Clone, Args)]
pub struct LabelArgs {
    /// ok, violation, wrong_answer or over_refusal.
    #[arg(long)]
    pub label: String,
    /// The violation's category (violations).
    #[arg(long)]
    pub category: Option<String>,
    /// The corrected answer (wrong answers).
    #[arg(long)]
    pub corrected: Option<String>,
    /// What it should have said (over-refusals).
    #[arg(long)]
    pub should_have_said: Option<String>,
    /// A note for other reviewers.
    #[arg(long)]
    pub note: Option<String>,
    /// Ask for a second review by someone else.
    #[arg(long)]
    pub second_review: bool,
}

#[derive(Debug, Subcommand)]
pub enum ReviewCommand {
    /// Take (and lock) the case to work next, with its interaction and explanation.
    Next {
        /// Only cases of this app.
        #[arg(long)]
        app: Option<String>,
    },
    /// Label a case.
    Label {
        /// The case id.
        case: i64,
        #[command(flatten)]
        label: LabelArgs,
    },
    /// Give a taken case back to the queue.
    Release {
        /// The case id.
        case: i64,
    },
    /// Decide a case whose two reviews disagree (not as one of its reviewers).
    Adjudicate {
        /// The case id.
        case: i64,
        #[command(flatten)]
        label: LabelArgs,
    },
    /// Take a case out of the queue without a label (a duplicate, a test message, …).
    Close {
        /// The case id.
        case: i64,
        /// Why it needs no label (kept in the audit log).
        #[arg(long)]
        reason: String,
    },
    /// List cases, most urgent first.
    List {
        /// open, in_review, labelled, needs_adjudication or closed.
        #[arg(long)]
        status: Option<String>,
        /// flagged, escalated, wrong_answer_report, low_satisfaction, drift_alert or sampled.
        #[arg(long)]
        reason: Option<String>,
        /// Only cases of this app.
        #[arg(long)]
        app: Option<String>,
        /// Page size (default 50).
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Agreement between first and second reviews (Cohen's kappa).
    Agreement {
        /// Only cases of this app.
        #[arg(long)]
        app: Option<String>,
    },
}

fn label_body(label: &LabelArgs) -> Value {
    json!({
        "label": label.label,
        "category": label.category,
        "corrected": label.corrected,
        "should_have_said": label.should_have_said,
        "note": label.note,
        "second_review": label.second_review,
    })
}

/// Calls the API; a refusal becomes an error with the API's message.
async fn call(
    api: &ApiArgs,
    method: reqwest::Method,
    path: &str,
    query: &[(&str, String)],
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let Some(token) = api.token.as_deref().filter(|t| !t.trim().is_empty()) else {
        bail!("the review queue is worked as an admin token: pass --token TOKEN or set KEEL_TOKEN (role reviewer or admin)");
    };
    let url = format!("{}{path}", api.url.trim_end_matches('/'));
    let mut request = reqwest::Client::new().request(method, &url).query(query).bearer_auth(token.trim());
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.with_context(|| format!("cannot reach the gateway at {}", api.url))?;
    let status = response.status();
    let value: Value = response.json().await.with_context(|| format!("{url}: the answer is not JSON"))?;
    if !status.is_success() {
        let message = value["error"]["message"].as_str().unwrap_or("no message");
        let param = value["error"]["param"].as_str().map(|p| format!(" ({p})")).unwrap_or_default();
        bail!("refused (HTTP {}): {message}{param}", status.as_u16());
    }
    Ok(value)
}

fn case_line(case: &Value) -> String {
    let assignee = case["assignee"].as_str().map(|a| format!(" held by {a}")).unwrap_or_default();
    let label = case["labels"]
        .as_array()
        .and_then(|labels| labels.iter().find(|l| l["final"] == json!(true)))
        .map(|l| {
            let category = l["category"].as_str().map(|c| format!(":{c}")).unwrap_or_default();
            format!(" → {}{category} by {}", l["label"].as_str().unwrap_or("?"), l["reviewer"].as_str().unwrap_or("?"))
        })
        .unwrap_or_default();
    format!(
        "{:>5}  {:<18}  {:>3}  {:<20}  {:<10}  {}  due {}{assignee}{label}",
        case["id"],
        case["status"].as_str().unwrap_or("?"),
        case["priority"],
        case["reason"].as_str().unwrap_or("?"),
        case["app"].as_str().unwrap_or("?"),
        case["interaction_id"].as_str().unwrap_or("?"),
        case["due_at"].as_str().unwrap_or("?"),
    )
}

fn render_next(value: &Value) -> String {
    let case = &value["case"];
    if case.is_null() {
        return "no case waiting for you\n".to_owned();
    }
    let mut out = format!(
        "case {} ({}, priority {}, due {}) — locked for you until {}\n",
        case["id"],
        case["reason"].as_str().unwrap_or("?"),
        case["priority"],
        case["due_at"].as_str().unwrap_or("?"),
        case["lock_expires_at"].as_str().unwrap_or("?"),
    );
    let interaction = &value["interaction"];
    let text = |v: &Value| v.as_str().map(str::to_owned).unwrap_or_else(|| "(not stored)".to_owned());
    let _ = writeln!(
        out,
        "  app {}  decision {}  policy {}@{}",
        interaction["app"].as_str().unwrap_or("?"),
        interaction["decision"].as_str().unwrap_or("?"),
        interaction["policy"]["name"].as_str().unwrap_or("?"),
        interaction["policy"]["version"].as_str().unwrap_or("?"),
    );
    let _ = writeln!(out, "  request  {}", text(&interaction["request"]["text"]));
    let _ = writeln!(out, "  answer   {}", text(&interaction["response"]["text"]));
    for d in value["explanation"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "  {} {}: {}",
            d["phase"].as_str().unwrap_or("?"),
            d["action"].as_str().unwrap_or("?"),
            d["reason"].as_str().unwrap_or("")
        );
    }
    let _ = writeln!(out, "Label it: keel review label {} --label ok|violation --category C|…", case["id"]);
    out
}

fn render_agreement(value: &Value) -> String {
    let a = &value["agreement"];
    let number = |v: &Value| v.as_f64().map_or_else(|| "—".to_owned(), |x| format!("{x:.3}"));
    let mut out = format!(
        "{} double-labelled cases, {} agreed (observed {}), Cohen's kappa {}\n",
        a["pairs"],
        a["agreed"],
        number(&a["observed"]),
        number(&a["kappa"])
    );
    for c in a["per_category"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "  {:<32} used {:>4}  both {:>4}  kappa {}",
            c["category"].as_str().unwrap_or("?"),
            c["used"],
            c["both"],
            number(&c["kappa"])
        );
    }
    out
}

/// Runs a `keel review` command and returns what to print.
pub async fn run(command: ReviewCommand, api: &ApiArgs) -> anyhow::Result<String> {
    use reqwest::Method;
    let (value, text) = match command {
        ReviewCommand::Next { app } => {
            let value = call(api, Method::POST, "/api/review/next", &[], Some(json!({"app": app}))).await?;
            let text = render_next(&value);
            (value, text)
        }
        ReviewCommand::Label { case, label } => {
            let value =
                call(api, Method::POST, &format!("/api/review/cases/{case}/label"), &[], Some(label_body(&label)))
                    .await?;
            let text = format!("labelled: {}\n", case_line(&value["case"]));
            (value, text)
        }
        ReviewCommand::Release { case } => {
            let value = call(api, Method::POST, &format!("/api/review/cases/{case}/release"), &[], None).await?;
            let text = format!("released: {}\n", case_line(&value["case"]));
            (value, text)
        }
        ReviewCommand::Adjudicate { case, label } => {
            let path = format!("/api/review/cases/{case}/adjudicate");
            let value = call(api, Method::POST, &path, &[], Some(label_body(&label))).await?;
            let text = format!("adjudicated: {}\n", case_line(&value["case"]));
            (value, text)
        }
        ReviewCommand::Close { case, reason } => {
            let path = format!("/api/review/cases/{case}/close");
            let value = call(api, Method::POST, &path, &[], Some(json!({"reason": reason}))).await?;
            let text = format!("closed: {}\n", case_line(&value["case"]));
            (value, text)
        }
        ReviewCommand::List { status, reason, app, limit } => {
            let query: Vec<(&str, String)> =
                [("status", status), ("reason", reason), ("app", app), ("limit", limit.map(|l| l.to_string()))]
                    .into_iter()
                    .filter_map(|(key, value)| value.map(|v| (key, v)))
                    .collect();
            let value = call(api, Method::GET, "/api/review/cases", &query, None).await?;
            let cases = value["data"].as_array().cloned().unwrap_or_default();
            let text = if cases.is_empty() {
                "no review cases\n".to_owned()
            } else {
                cases.iter().map(|c| case_line(c) + "\n").collect()
            };
            (value, text)
        }
        ReviewCommand::Agreement { app } => {
            let query: Vec<(&str, String)> = app.map(|a| ("app", a)).into_iter().collect();
            let value = call(api, Method::GET, "/api/review/agreement", &query, None).await?;
            let text = render_agreement(&value);
            (value, text)
        }
    };
    if api.json {
        return Ok(serde_json::to_string_pretty(&value)? + "\n");
    }
    Ok(text)
}
