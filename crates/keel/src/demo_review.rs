//! The demo's feedback, review and KPI step, over the running demo gateway's HTTP API: the
//! support app reports a wrong answer and a happy customer, a human takes over the Japanese
//! request for a person, a reviewer works the queue (most urgent, then oldest first), and the
//! KPIs of the last hour come back with their intervals.

use std::io::Write;

use anyhow::{bail, Context as _};
use keel_core::Role;
use keel_gateway::AppState;
use reqwest::Method;
use serde_json::{json, Value};

use crate::demo_lifecycle::Api;

/// The question the demo model answers and the customer reports as wrong.
const REPORTED_QUESTION: &str = "How long is the warranty on the KN-8 knife?";
/// What the reviewer says the answer should have been.
const CORRECTED_ANSWER: &str =
    "The KN-8 knife has a five-year warranty; keep the receipt and contact support with the order number.";
/// A question whose answer the customer likes.
const PRAISED_QUESTION: &str = "Can I put the XR-300 jug in the dishwasher?";

/// Runs the step against the demo gateway at `base`, serving `model`.
pub async fn run(state: &AppState, base: &str, model: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let api = Api { client: &client, base };
    let store = state.store().clone();
    writeln!(
        std::io::stdout().lock(),
        "\nFeedback, review queue and KPIs (GET {base}/api/review/cases, GET {base}/api/kpi)"
    )?;
    let run_id = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    let backend_name = format!("demo-support-backend-{run_id}");
    let reviewer_name = format!("demo-reviewer-{run_id}");
    let second_name = format!("demo-second-reviewer-{run_id}");
    let backend = store.create_token(&backend_name, Role::Admin, "demo").await?.token;
    let reviewer = store.create_token(&reviewer_name, Role::Reviewer, "demo").await?.token;
    let second = store.create_token(&second_name, Role::Reviewer, "demo").await?.token;
    state.refresh().await?;
    let outcome = steps(&api, model, &backend, (&reviewer, &second), run_id).await;
    for name in [&backend_name, &reviewer_name, &second_name] {
        store.revoke_token(name, "demo").await?;
    }
    state.refresh().await?;
    outcome
}

/// The interaction id and decision of one chat request.
async fn chat(api: &Api<'_>, model: &str, prompt: &str) -> anyhow::Result<(String, String)> {
    let body = json!({"model": model, "max_tokens": 60, "messages": [{"role": "user", "content": prompt}]});
    let response = api.client.post(format!("{}/v1/chat/completions", api.base)).json(&body).send().await?;
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let id = header("x-keel-interaction-id").context("the gateway sent no x-keel-interaction-id")?;
    Ok((id, header("x-keel-decision").unwrap_or_default()))
}

/// The last user message of a stored interaction (as the review API returns it).
fn question_of(interaction: &Value) -> String {
    let body: Value =
        interaction["request"]["text"].as_str().and_then(|t| serde_json::from_str(t).ok()).unwrap_or_default();
    let last = body["messages"].as_array().and_then(|m| m.iter().rev().find(|m| m["role"] == "user")).cloned();
    last.and_then(|m| m["content"].as_str().map(str::to_owned)).unwrap_or_else(|| "(text not stored)".into())
}

fn rate(value: &Value) -> String {
    match (value["estimate"].as_f64(), value["lower"].as_f64(), value["upper"].as_f64()) {
        (Some(e), Some(l), Some(u)) => format!(
            "{:.0}% [{:.0}–{:.0}%] of {}",
            e * 100.0,
            l * 100.0,
            u * 100.0,
            value["trials"].as_u64().unwrap_or(0)
        ),
        _ => "—".into(),
    }
}

async fn steps(
    api: &Api<'_>,
    model: &str,
    backend: &str,
    (reviewer, second): (&str, &str),
    run_id: i128,
) -> anyhow::Result<()> {
    let (reported, _) = chat(api, model, REPORTED_QUESTION).await?;
    let answer = api
        .expect(
            Method::POST,
            "/api/feedback",
            backend,
            Some(json!({"event_id": format!("demo-{run_id}-wrong"), "interaction_id": reported,
                        "satisfaction": 2, "wrong_answer": true, "comment": "The warranty is five years, not two."})),
            201,
        )
        .await?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        " - the support app reports a wrong answer to \"{REPORTED_QUESTION}\" (satisfaction 2) → review case {}",
        answer["review_case"]
    )?;
    drop(out);
    let (praised, _) = chat(api, model, PRAISED_QUESTION).await?;
    api.expect(
        Method::POST,
        "/api/feedback",
        backend,
        Some(json!({"event_id": format!("demo-{run_id}-happy"), "interaction_id": praised, "satisfaction": 5, "thumbs": "up"})),
        201,
    )
    .await?;
    writeln!(std::io::stdout().lock(), " - a happy customer: satisfaction 5, thumbs up (no case)")?;

    let escalated = api.expect(Method::GET, "/api/interactions?action=escalate&limit=1", backend, None, 200).await?;
    if let Some(id) = escalated["data"][0]["id"].as_str() {
        let taken = api
            .expect(
                Method::POST,
                &format!("/api/handoffs/{id}/taken"),
                backend,
                Some(json!({"event_id": format!("demo-{run_id}-taken"), "reason": "operator Sato"})),
                201,
            )
            .await?;
        writeln!(
            std::io::stdout().lock(),
            " - a person takes over the last escalated conversation (requested {}, taken {})",
            taken["event"]["handoff"]["requested_at"].as_str().unwrap_or("?"),
            taken["event"]["handoff"]["taken_at"].as_str().unwrap_or("?")
        )?;
    }

    for _ in 0..3 {
        let next = api.expect(Method::POST, "/api/review/next", reviewer, Some(json!({})), 200).await?;
        if next["case"].is_null() {
            break;
        }
        let case = &next["case"];
        let id = case["id"].as_i64().context("a case without an id")?;
        let reason = case["reason"].as_str().unwrap_or("?");
        let label = match reason {
            "wrong_answer_report" => json!({"label": "wrong_answer", "corrected": CORRECTED_ANSWER}),
            "escalated" | "flagged" => json!({"label": "violation", "category": "needs_human"}),
            _ => json!({"label": "ok"}),
        };
        let path = format!("/api/review/cases/{id}/label");
        let mut labelled = api.expect(Method::POST, &path, reviewer, Some(label.clone()), 200).await?;
        // A case drawn for a second review waits for another reviewer; here the second agrees.
        let seconded = labelled["case"]["status"] == "open";
        if seconded {
            labelled = api.expect(Method::POST, &path, second, Some(label.clone()), 200).await?;
        }
        writeln!(
            std::io::stdout().lock(),
            " - reviewer takes case {id} ({reason}, priority {}, due {}): \"{}\" → {} ({})",
            case["priority"],
            case["due_at"].as_str().unwrap_or("?"),
            question_of(&next["interaction"]),
            label["label"].as_str().unwrap_or("?"),
            match (labelled["case"]["status"].as_str(), seconded) {
                (Some(status), true) => format!("{status} after a second reviewer agreed"),
                (Some(status), false) => status.to_owned(),
                (None, _) => "?".to_owned(),
            }
        )?;
    }

    let kpi = api.expect(Method::GET, "/api/kpi?since=1h&bucket=hour", backend, None, 200).await?;
    let all = &kpi["overall"];
    if all.is_null() {
        bail!("the KPIs of the last hour are empty: {kpi}");
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "   KPIs, last hour ({} interactions, 95% intervals):", all["interactions"])?;
    let mean = &all["satisfaction"]["mean"];
    let satisfaction = match (mean["mean"].as_f64(), mean["lower"].as_f64(), mean["upper"].as_f64()) {
        (Some(m), Some(l), Some(u)) => format!("{m:.1} [{l:.1}–{u:.1}]"),
        _ => "— (fewer than two scores)".into(),
    };
    writeln!(out, "     satisfaction {satisfaction}, response rate {}", rate(&all["satisfaction"]["response_rate"]))?;
    writeln!(
        out,
        "     wrong answers: user reports {}, reviewer labels {}",
        rate(&all["wrong_answer"]["user_reports"]),
        rate(&all["wrong_answer"]["reviewer_labels"])
    )?;
    let p50 = all["handoff"]["time_to_human_percentiles_s"]["p50"].as_f64();
    writeln!(
        out,
        "     handoffs {}, time to human p50 {}",
        rate(&all["handoff"]["rate"]),
        p50.map_or("—".into(), |s| format!("{s:.0} s"))
    )?;
    let mix: Vec<String> = all["action_mix"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(action, r)| format!("{action} {:.0}%", r["estimate"].as_f64().unwrap_or(0.0) * 100.0))
        .collect();
    writeln!(out, "     action mix: {}", mix.join(", "))?;
    writeln!(
        out,
        "   export the corrections for fine-tuning: keel export sft --store … (see the README's Dataset export)"
    )?;
    Ok(())
}
