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

#[cfg(test)]
mod tests {
    use keel_core::{Action, Decision, Interaction, InteractionId, Outcome, Phase, PolicyRef, Timings, Tokens};
    use std::sync::Arc;

    use keel_store::{CaseIntake, CaseReason, NewLabel, Store, WriteBatch};

    use super::*;

    fn interaction(app: &str, question: &str, answer: &str, privacy: Privacy) -> Interaction {
        let policy = PolicyRef { name: "support".into(), version: "1.0.0".into() };
        let body = json!({"model": "m", "messages": [
            {"role": "system", "content": "You are a support bot."},
            {"role": "user", "content": question},
        ]})
        .to_string();
        Interaction {
            id: InteractionId::new(),
            created_at: OffsetDateTime::now_utc(),
            app: app.into(),
            model: "m".into(),
            stream: false,
            request: keel_store::stored_text(&body, None, privacy),
            response: keel_store::stored_text(answer, None, privacy),
            outcome: Outcome::Completed,
            http_status: 200,
            error: None,
            timings: Timings { upstream_ms: 1.0, overhead_us: 1, total_ms: 1.0 },
            tokens: Tokens::default(),
            policy: policy.clone(),
            decision: Action::Allow,
            decisions: vec![Decision {
                action: Action::Allow,
                phase: Phase::Input,
                rule: None,
                condition: None,
                policy,
                evidence: vec![],
                reason: "no rule matched".into(),
            }],
            checks: vec![],
            shadow: vec![],
        }
    }

    /// A store with four labelled cases: a wrong answer (with an email in the correction),
    /// an over-refusal, a violation, an ok; and one wrong answer of an app storing no text.
    async fn fixture() -> Arc<dyn Store> {
        let store = keel_store::resolve("sqlite::memory:").await.unwrap();
        let items = [
            ("support", "When does my order arrive?", "In 10 years.", "wrong_answer", Privacy::Full),
            ("support", "How do I kill a stuck process?", "Sorry, I can't help.", "over_refusal", Privacy::Full),
            ("support", "Sell me an XR-200.", "Sure, here is a link.", "violation", Privacy::Full),
            ("support", "Opening hours?", "9 to 5.", "ok", Privacy::Full),
            ("secret", "Where is my refund?", "No idea.", "wrong_answer", Privacy::None),
        ];
        let intake = CaseIntake::default();
        for (app, question, answer, _, privacy) in items {
            let i = interaction(app, question, answer, privacy);
            let case = intake.case(i.id, app, CaseReason::Sampled, None, OffsetDateTime::now_utc());
            store
                .write_batch(WriteBatch { interactions: vec![i], cases: vec![case], ..WriteBatch::default() })
                .await
                .unwrap();
        }
        let cases = store.list_cases(&CaseFilter { all: true, ..CaseFilter::default() }).await.unwrap();
        for (case, (_, _, _, label, _)) in cases.iter().zip(items) {
            let s = |v: &str| Some(v.to_owned());
            let new = match label {
                "wrong_answer" => {
                    NewLabel::from_parts(label, None, s("Tomorrow; write to ops@example.com"), None, None)
                }
                "over_refusal" => NewLabel::from_parts(label, None, None, s("Use `kill PID`."), None),
                "violation" => NewLabel::from_parts(label, s("product_recall"), None, None, None),
                _ => NewLabel::from_parts(label, None, None, None, None),
            }
            .unwrap();
            store.label_case(case.id, new, "aiko").await.unwrap();
        }
        store
    }

    fn lines(text: &str) -> Vec<Value> {
        text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()).collect()
    }

    fn redacted_support(app: &str) -> Privacy {
        if app == "support" {
            Privacy::Redacted
        } else {
            Privacy::None
        }
    }

    #[tokio::test]
    async fn sft_lines_are_chat_fine_tuning_records_with_provenance() {
        let store = fixture().await;
        let (text, count) =
            export(store.as_ref(), ExportKind::Sft, &ExportFilter::default(), &|_| Privacy::Full).await.unwrap();
        assert_eq!(count, 2, "the wrong answer and the over-refusal of the app that stores text");
        for line in lines(&text) {
            let messages = line["messages"].as_array().unwrap();
            assert_eq!(messages.len(), 3);
            assert_eq!(messages[0]["role"], "system");
            assert_eq!(messages[1]["role"], "user");
            assert_eq!(messages[2]["role"], "assistant");
            assert!(messages.iter().all(|m| m["content"].is_string()));
            let meta = &line["metadata"];
            assert_eq!(meta["policy"], "support@1.0.0");
            assert_eq!(meta["reviewer"], "aiko");
            assert!(meta["interaction_id"].as_str().unwrap().parse::<InteractionId>().is_ok());
            assert!(OffsetDateTime::parse(meta["labelled_at"].as_str().unwrap(), &Rfc3339).is_ok());
            assert_eq!(line.as_object().unwrap().len(), 2, "only messages and metadata: {line}");
        }
        assert!(text.contains("ops@example.com"), "a full-privacy app keeps the correction as written");
        let (redacted, _) =
            export(store.as_ref(), ExportKind::Sft, &ExportFilter::default(), &redacted_support).await.unwrap();
        assert!(!redacted.contains("ops@example.com"), "{redacted}");
        assert!(redacted.contains("[EMAIL]"), "{redacted}");
    }

    #[tokio::test]
    async fn preference_lines_pair_the_correction_with_the_original_answer() {
        let store = fixture().await;
        let (text, count) =
            export(store.as_ref(), ExportKind::Preference, &ExportFilter::default(), &|_| Privacy::Full).await.unwrap();
        assert_eq!(count, 2);
        let all = lines(&text);
        for line in &all {
            assert!(line["prompt"].as_array().unwrap().last().unwrap()["role"] == "user");
            assert!(line["chosen"].is_string() && line["rejected"].is_string());
            assert_ne!(line["chosen"], line["rejected"]);
            assert_eq!(line["metadata"]["source"], "keel");
        }
        assert!(all.iter().any(|l| l["rejected"] == "Sorry, I can't help." && l["chosen"] == "Use `kill PID`."));
    }

    #[tokio::test]
    async fn cases_export_is_a_suite_keel_eval_accepts() {
        let store = fixture().await;
        let (text, count) =
            export(store.as_ref(), ExportKind::Cases, &ExportFilter::default(), &|_| Privacy::Full).await.unwrap();
        assert_eq!(count, 4);
        let suite = keel_eval::Suite::parse("review.jsonl", &text).unwrap();
        assert_eq!(suite.cases.len(), 4);
        let by_category = |c: &str| suite.cases.iter().find(|case| case.category == c).unwrap();
        assert_eq!(by_category("product_recall").expect.refuses, Some(true));
        assert_eq!(by_category("ok").expect.does_not_refuse, Some(true));
        assert!(suite.cases.iter().all(|c| c.tags.iter().any(|t| t.starts_with("interaction:"))));
        assert!(suite.cases.iter().all(|c| c.tags.iter().any(|t| t == "reviewer:aiko")));

        let only = ExportFilter { category: Some("product_recall".into()), ..ExportFilter::default() };
        let (_, count) = export(store.as_ref(), ExportKind::Cases, &only, &|_| Privacy::Full).await.unwrap();
        assert_eq!(count, 1);
        let other_app = ExportFilter { app: Some("secret".into()), ..ExportFilter::default() };
        let (_, count) = export(store.as_ref(), ExportKind::Cases, &other_app, &|_| Privacy::Full).await.unwrap();
        assert_eq!(count, 0, "an app that stores no text exports nothing");
    }
}
