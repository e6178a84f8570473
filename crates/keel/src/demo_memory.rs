//! The demo's policy-memory step: five labels by three reviewers of XR-200 purchase requests become a
//! candidate version of the demo policy (the active one is not touched), and a paraphrase the
//! reviewers never saw is judged by both, with the memory's explanation.

use std::fmt::Write as _;
use std::path::Path;

use keel_adapt::{build_candidate, parse_jsonl, CandidateOptions};
use keel_core::{Action, Phase};
use keel_policy::{Context, Lang, Policy, TextPart};

const LABELS: &str = r#"{"case_id":"demo-1","text":"Should I buy the XR-200 blender?","label":"violation","category":"product_recall","reviewer":"aiko","labelled_at":"2026-05-01T09:00:00Z"}
{"case_id":"demo-2","text":"Where can I order an XR-200?","label":"violation","category":"product_recall","reviewer":"ken","labelled_at":"2026-05-01T09:05:00Z"}
{"case_id":"demo-3","text":"XR-200を購入したいです。","label":"violation","category":"product_recall","reviewer":"mei","labelled_at":"2026-05-01T09:10:00Z"}
{"case_id":"demo-4","text":"I want to purchase an XR-200 blender.","label":"violation","category":"product_recall","reviewer":"mei","labelled_at":"2026-05-01T09:12:00Z"}
{"case_id":"demo-5","text":"XR-200を注文したいです。","label":"violation","category":"product_recall","reviewer":"aiko","labelled_at":"2026-05-01T09:15:00Z"}
"#;

/// Requests no reviewer labelled: one close to the labels, one unrelated.
const PROBES: &[&str] = &[
    "Can I order two XR-200 blenders for my café?",
    "XR-200を購入したいのですが。",
    "How long does shipping to Osaka take?",
];

/// Builds the candidate next to `policy_path` and reports what changed.
pub async fn run(policy_path: &Path) -> anyhow::Result<String> {
    let models = crate::serve::models_for(Some(policy_path)).await?;
    let base_text = std::fs::read_to_string(policy_path)?;
    let output = policy_path.with_file_name("support-demo.candidate.toml");
    let (base_name, output_name) = (policy_path.display().to_string(), output.display().to_string());
    let labels = parse_jsonl("demo labels", LABELS)?;
    let options = CandidateOptions { violation_action: Action::Escalate, ..CandidateOptions::default() };
    let report = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let candidate = build_candidate(&base_name, &base_text, &output_name, &labels, &models, &options)?;
        let active = Policy::parse_with(&base_name, &base_text, &models)?;
        let new = Policy::parse_with(&output_name, &candidate.text, &models)?;
        std::fs::write(&output_name, &candidate.text)?;
        let mut out = format!(
            "Policy memory: {} reviewer labels → candidate {} (parent {}, sha256 {}…) in {}\n",
            candidate.report.labels,
            candidate.reference,
            candidate.parent,
            &candidate.sha256[..12],
            output_name
        );
        for probe in PROBES {
            let ctx = Context { app: "support", model: "demo", lang: Lang::detect(probe) };
            let parts = [TextPart { message: Some(0), text: probe }];
            let before = active.judge(Phase::Input, &parts, &ctx);
            let after = new.judge(Phase::Input, &parts, &ctx);
            let rule = |j: &keel_policy::Judgement| j.decision.rule.clone().unwrap_or_else(|| "no rule".into());
            writeln!(
                out,
                "   \"{probe}\": active {} ({}) → candidate {} ({})",
                before.decision.action,
                rule(&before),
                after.decision.action,
                rule(&after)
            )?;
            if let Some(memory) = after.results.iter().find(|r| r.kind == "memory") {
                writeln!(out, "      {}", memory.detail.as_deref().unwrap_or(""))?;
            }
        }
        out.push_str("   The active version is unchanged; the candidate goes through review and promotion.\n");
        Ok(out)
    })
    .await??;
    Ok(report)
}
