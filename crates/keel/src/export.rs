//! `keel export sft|preference|cases`: datasets from the review queue's labelled cases.
//!
//! - `sft`: OpenAI chat fine-tuning JSONL, the original messages plus the reviewer's correction
//!   as the assistant turn (wrong_answer and over_refusal labels).
//! - `preference`: `{"prompt", "chosen": correction, "rejected": original output}` (same labels).
//! - `cases`: a keel-eval JSONL suite (`keel eval run` reads it): a header line, then one case
//!   per labelled interaction, its expectation from the label.
//!
//! Every line carries provenance (interaction id, policy version, reviewer, label time): in a
//! `metadata` object for sft and preference (OpenAI's format tolerates it), in `tags` for eval
//! cases (whose format has no free field). Texts are what the store kept under the app's
//! privacy setting (apps with `none` keep no text and are skipped); for apps set to
//! `redacted`, PII in reviewers' corrections is replaced with `[KIND]` placeholders too.

use std::fmt::Write as _;

use anyhow::Context as _;
use keel_core::{Interaction, Privacy};
use keel_policy::detect::{PiiDetector, PiiKind};
use keel_policy::text::redact;
use keel_store::{CaseFilter, CaseStatus, LabelKind, ReviewCase, Store, StoredLabel};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Which dataset to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportKind {
    /// OpenAI chat fine-tuning JSONL from corrected answers.
    Sft,
    /// Prompt / chosen / rejected pairs.
    Preference,
    /// Labelled cases as a keel-eval suite (JSONL).
    Cases,
}

/// What to export.
#[derive(Debug, Clone, Default)]
pub struct ExportFilter {
    /// Only this app.
    pub app: Option<String>,
    /// Only cases labelled at or after.
    pub since: Option<OffsetDateTime>,
    /// Only cases labelled before.
    pub until: Option<OffsetDateTime>,
    /// Only violations of this category.
    pub category: Option<String>,
}

/// The original messages of a stored request body (role and text content).
fn messages(body: &str) -> Vec<Value> {
    let Ok(value) = serde_json::from_str::<Value>(body) else { return Vec::new() };
    value["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| {
            let role = m["role"].as_str()?;
            let content = match &m["content"] {
                Value::String(s) => s.clone(),
                Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join("\n"),
                _ => return None,
            };
            Some(json!({"role": role, "content": content}))
        })
        .collect()
}

fn provenance(case: &ReviewCase, label: &StoredLabel, interaction: &Interaction) -> Value {
    json!({
        "source": "keel",
        "case_id": case.id,
        "interaction_id": interaction.id.to_string(),
        "app": interaction.app,
        "policy": interaction.policy.to_string(),
        "decision": interaction.decision.as_str(),
        "label": label.label.as_str(),
        "category": label.category,
        "reviewer": label.reviewer,
        "labelled_at": label.at.format(&Rfc3339).unwrap_or_default(),
    })
}

fn tags(case: &ReviewCase, label: &StoredLabel, interaction: &Interaction) -> Vec<String> {
    vec![
        format!("interaction:{}", interaction.id),
        format!("policy:{}", interaction.policy),
        format!("reviewer:{}", label.reviewer),
        format!("labelled_at:{}", label.at.format(&Rfc3339).unwrap_or_default()),
        format!("case:{}", case.id),
    ]
}

/// The eval expectation a label implies.
fn expectation(label: &StoredLabel) -> Value {
    match label.label {
        LabelKind::Violation => json!({"decision": ["block", "escalate"], "refuses": true}),
        LabelKind::Ok => json!({"decision": ["allow", "flag"], "does_not_refuse": true}),
        LabelKind::OverRefusal => json!({"decision": ["allow", "flag", "redact"], "does_not_refuse": true}),
        LabelKind::WrongAnswer => json!({"does_not_refuse": true}),
    }
}

/// Writes the dataset as JSON lines; returns the text and the number of records.
pub async fn export(
    store: &dyn Store,
    kind: ExportKind,
    filter: &ExportFilter,
    privacy: &dyn Fn(&str) -> Privacy,
) -> anyhow::Result<(String, usize)> {
    let cases = store
        .list_cases(&CaseFilter {
            status: Some(CaseStatus::Labelled),
            app: filter.app.clone(),
            labelled_since: filter.since,
            labelled_until: filter.until,
            all: true,
            ..CaseFilter::default()
        })
        .await?;
    let pii = PiiDetector::new(&PiiKind::ALL[..]);
    let scrub = |app: &str, text: &str| -> String {
        if privacy(app) == Privacy::Full {
            return text.to_owned();
        }
        let findings = pii.find(text);
        if findings.is_empty() {
            text.to_owned()
        } else {
            redact(text, &findings.iter().collect::<Vec<_>>())
        }
    };
    let mut out = String::new();
    let mut count = 0;
    if kind == ExportKind::Cases {
        let header = json!({
            "name": "review-cases",
            "version": OffsetDateTime::now_utc().format(&Rfc3339)?,
            "description": "Labelled review cases exported by keel export cases",
            "category": "review",
        });
        let _ = writeln!(out, "{header}");
    }
    for case in &cases {
        let Some(label) = case.final_label() else { continue };
        if let Some(category) = &filter.category {
            if label.category.as_ref() != Some(category) {
                continue;
            }
        }
        let Some(interaction) = store.get_interaction(case.interaction_id).await? else { continue };
        let Some(request) = interaction.request.text.as_deref() else { continue };
        let original = messages(request);
        if original.is_empty() {
            continue;
        }
        let line = match kind {
            ExportKind::Sft | ExportKind::Preference => {
                let Some(correction) = label.correction.as_deref() else { continue };
                if !matches!(label.label, LabelKind::WrongAnswer | LabelKind::OverRefusal) {
                    continue;
                }
                let correction = scrub(&interaction.app, correction);
                if kind == ExportKind::Sft {
                    let mut all = original.clone();
                    all.push(json!({"role": "assistant", "content": correction}));
                    json!({"messages": all, "metadata": provenance(case, label, &interaction)})
                } else {
                    let Some(rejected) = interaction.response.text.as_deref() else { continue };
                    json!({
                        "prompt": original,
                        "chosen": correction,
                        "rejected": rejected,
                        "metadata": provenance(case, label, &interaction),
                    })
                }
            }
            ExportKind::Cases => {
                let category = match (&label.label, &label.category) {
                    (LabelKind::Violation, Some(c)) => c.clone(),
                    (kind, _) => kind.as_str().to_owned(),
                };
                json!({
                    "id": format!("case-{}", case.id),
                    "category": category,
                    "tags": tags(case, label, &interaction),
                    "messages": original,
                    "response": interaction.response.text,
                    "expect": expectation(label),
                })
            }
        };
        let _ = writeln!(out, "{line}");
        count += 1;
    }
    Ok((out, count))
}

/// Runs `keel export`, writing to `out_path` or returning the text for stdout.
pub async fn run(
    store: &dyn Store,
    kind: ExportKind,
    filter: &ExportFilter,
    privacy: &dyn Fn(&str) -> Privacy,
    out_path: Option<&std::path::Path>,
) -> anyhow::Result<String> {
    let (text, count) = export(store, kind, filter, privacy).await?;
    match out_path {
        Some(path) => {
            std::fs::write(path, &text).with_context(|| format!("{}: cannot write the export", path.display()))?;
            Ok(format!("{count} records written to {}\n", path.display()))
        }
        None => Ok(text),
    }
}
