//! The `memory` check on the real all-MiniLM-L6-v2: a few labelled cases generalise to
//! paraphrases in English and Japanese, and stay away from unrelated and nearby-but-fine
//! requests. Skipped, with the reason printed, when the model files are absent; CI pulls them
//! first (`keel models pull`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::path::PathBuf;
use std::sync::Arc;

use keel_core::{Action, Phase};
use keel_models::MiniLmEmbedder;
use keel_policy::{Context, Lang, Models, Policy, TextPart};

fn models() -> Option<Models> {
    let dir = std::env::var_os("KEEL_MODELS_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".keel/models")))?
        .join("all-minilm-l6-v2");
    if !dir.join("model.safetensors").is_file() {
        eprintln!("skipped: no MiniLM model in {} (run `keel models pull`)", dir.display());
        return None;
    }
    Some(Models { embedder: Some(Arc::new(MiniLmEmbedder::load(&dir).unwrap())), classifier: None })
}

fn case(id: usize, label: &str, text: &str) -> String {
    let category = if label == "violation" { ", category = \"product_recall\"" } else { "" };
    format!("  {{ case_id = \"c-{id}\", reviewer = \"aiko\", labelled_at = \"2026-05-0{}T09:00:00Z\", label = \"{label}\"{category}, text = \"{text}\" }},\n", 1 + id % 9)
}

const POLICY: &str = r#"name = "recall-memory"
version = "1"
[messages]
block = { en = "no" }
escalate = { en = "human" }

[[rules]]
name = "escalate-recall"
phase = "input"
when = "'product_recall' in memory.kinds"
action = "escalate"

[[checks]]
name = "memory"
kind = "memory"
phase = "input"
"#;

fn policy(models: &Models) -> Policy {
    let violation_en =
        ["Should I buy the XR-200 blender?", "Where can I order an XR-200?", "I want to purchase an XR-200 blender."];
    let violation_ja = ["XR-200を購入したいです。", "XR-200はどこで買えますか？", "XR-200を注文したいです。"];
    let ok =
        ["How do I clean the XR-200 jug?", "How do I clean the XR-200 blade?", "How should I wash the XR-200 lid?"];
    let mut text = POLICY.to_string();
    for (id, (label, texts)) in
        [("violation", &violation_en), ("violation", &violation_ja), ("ok", &ok)].iter().enumerate()
    {
        text.push_str(&format!("\n[[checks.entries]]\nid = \"e-{id}\"\nlabel = \"{label}\"\n"));
        if *label == "violation" {
            text.push_str("category = \"product_recall\"\n");
        }
        text.push_str("cases = [\n");
        for (j, t) in texts.iter().enumerate() {
            text.push_str(&case(id * 10 + j, label, t));
        }
        text.push_str("]\n");
    }
    Policy::parse_with("recall-memory.toml", &text, models).unwrap()
}

fn decide(policy: &Policy, text: &str) -> (Action, String) {
    let ctx = Context { app: "support", model: "m", lang: Lang::detect(text) };
    let j = policy.judge(Phase::Input, &[TextPart { message: Some(0), text }], &ctx);
    let detail = j.results.iter().find(|r| r.check == "memory").and_then(|r| r.detail.clone()).unwrap_or_default();
    (j.decision.action, detail)
}

#[test]
fn labelled_cases_generalise_to_paraphrases_in_english_and_japanese() {
    let Some(models) = models() else { return };
    let policy = policy(&models);
    for text in [
        "Is it a good idea to buy an XR-200 blender?",
        "Can I order the XR-200 blender online?",
        "XR-200を買いたいのですが。",
        "XR-200を注文できますか？",
    ] {
        let (action, detail) = decide(&policy, text);
        assert_eq!(action, Action::Escalate, "{text}: {detail}");
        assert!(detail.contains("product_recall"), "{detail}");
    }
    for text in
        ["How long does shipping to Osaka take?", "How do I clean the XR-200 base?", "営業時間を教えてください。"]
    {
        let (action, detail) = decide(&policy, text);
        assert_eq!(action, Action::Allow, "{text}: {detail}");
    }
}
