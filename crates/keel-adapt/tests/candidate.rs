//! Candidate versions from labelled cases: the base is never changed, the candidate compiles,
//! records its parent and carries its entries in the text its sha256 covers, and its decisions
//! follow the labels. Runs on the bag-of-words test embedder (fast, exact).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use keel_adapt::{build_candidate, parse_jsonl, AdaptError, CandidateOptions, LabelledCase};
use keel_core::{Action, Phase};
use keel_models::WordEmbedder;
use keel_policy::{Context, Lang, Models, Policy, TextPart};
use sha2::{Digest, Sha256};

const BASE: &str = r#"# The support bot's policy.
name = "support"
version = "1.0.0"

[messages]
block = { en = "no" }
escalate = { en = "human" }

[[checks]]
name = "pii"
kind = "pii"

[[checks]]
name = "smoothie_word"
kind = "keywords"
phase = "input"
words = ["smoothie"]

[[rules]]
name = "block-smoothies"
priority = 50
phase = "input"
when = "smoothie_word"
action = "block"

[[rules]]
name = "redact-pii"
priority = 40
when = "pii"
action = "redact"
"#;

fn models() -> Models {
    Models { embedder: Some(Arc::new(WordEmbedder::default())), classifier: None }
}

fn label(id: &str, label: &str, category: Option<&str>, text: &str, day: u32) -> String {
    let category = category.map(|c| format!(",\"category\":\"{c}\"")).unwrap_or_default();
    format!(
        "{{\"case_id\":\"{id}\",\"interaction_id\":\"i-{id}\",\"text\":{},\"label\":\"{label}\"{category},\"reviewer\":\"{}\",\"labelled_at\":\"2026-05-{day:02}T09:00:00Z\"}}\n",
        serde_json::to_string(text).unwrap(),
        if day.is_multiple_of(2) { "aiko" } else { "ken" }
    )
}

fn recall_labels() -> Vec<LabelledCase> {
    let text = [
        label("c-1", "violation", Some("product_recall"), "should I buy the XR-200 blender", 1),
        label("c-2", "violation", Some("product_recall"), "should I buy the XR-200 blender today", 2),
        label("c-3", "violation", Some("product_recall"), "should I buy the XR-200 blender online", 3),
        label("c-4", "wrong_answer", None, "the bot said the XR-200 is fine", 4),
    ]
    .concat();
    parse_jsonl("labels.jsonl", &text).unwrap()
}

fn decide(policy: &Policy, text: &str) -> (Action, Option<String>) {
    let ctx = Context { app: "support", model: "m", lang: Lang::En };
    let j = policy.judge(Phase::Input, &[TextPart { message: Some(0), text }], &ctx);
    (j.decision.action, j.decision.rule)
}

#[test]
fn a_candidate_learns_the_labels_and_never_changes_the_base() {
    let base_copy = BASE.to_string();
    let options = CandidateOptions { violation_action: Action::Escalate, ..CandidateOptions::default() };
    let candidate =
        build_candidate("support.toml", BASE, "support.toml", &recall_labels(), &models(), &options).unwrap();
    assert_eq!(BASE, base_copy);
    assert_eq!(candidate.reference.to_string(), "support@1.0.0-mem.1");
    assert_eq!(candidate.parent.to_string(), "support@1.0.0");
    assert_eq!(candidate.parent_sha256, hex::encode(Sha256::digest(BASE.as_bytes())));
    assert!(candidate.created_check);
    assert_eq!((candidate.report.cases, candidate.report.skipped_wrong_answer), (3, 1));
    assert!(candidate.text.starts_with("# The support bot's policy."), "comments are kept");
    assert!(candidate.text.contains("parent = \"support@1.0.0\""));

    let base = Policy::parse_with("support.toml", BASE, &models()).unwrap();
    let new = Policy::parse_with("support.toml", &candidate.text, &models()).unwrap();
    assert_eq!(new.parent(), Some("support@1.0.0"));
    assert_eq!(new.source_sha256(), candidate.sha256);
    let paraphrase = "should I buy the XR-200 blender here";
    assert_eq!(decide(&base, paraphrase).0, Action::Allow);
    assert_eq!(decide(&new, paraphrase), (Action::Escalate, Some("memory-violation".into())));
    assert_eq!(decide(&new, "what are your opening hours").0, Action::Allow);

    // The entries are in the text the version's hash covers: change one case, change the hash.
    assert!(candidate.text.contains("case_id = \"c-2\""));
    let tampered = candidate.text.replace("the XR-200 blender today", "the XR-100 blender today");
    assert_ne!(tampered, candidate.text);
    let tampered = Policy::parse_with("support.toml", &tampered, &models()).unwrap();
    assert_ne!(tampered.source_sha256(), new.source_sha256());
}

#[test]
fn over_refusals_lift_only_the_named_rule() {
    let text = [
        label("c-1", "over_refusal", None, "a banana smoothie recipe please", 1),
        label("c-2", "over_refusal", None, "a mango smoothie recipe please", 2),
        label("c-3", "ok", None, "a berry smoothie recipe please", 3),
    ]
    .concat();
    let labels = parse_jsonl("labels.jsonl", &text).unwrap();
    let options = CandidateOptions { lift_rules: vec!["block-smoothies".into()], ..CandidateOptions::default() };
    let candidate = build_candidate("support.toml", BASE, "support.toml", &labels, &models(), &options).unwrap();
    assert_eq!(candidate.lifted, vec!["block-smoothies".to_string()]);
    assert!(candidate.text.contains("when = \"(smoothie_word) and not ('ok' in memory.kinds)\""), "{}", candidate.text);
    let new = Policy::parse_with("support.toml", &candidate.text, &models()).unwrap();
    assert_eq!(decide(&new, "a kiwi smoothie recipe please").0, Action::Allow);
    // Redaction still applies to texts the memory finds fine.
    assert_eq!(decide(&new, "a kiwi smoothie recipe please, mail me at a.b@example.com").0, Action::Redact);
    // Far from the labelled cases the rule still blocks.
    assert_eq!(decide(&new, "smoothie").0, Action::Block);
    // Lifting twice does not stack the clause.
    let again = build_candidate("support.toml", &candidate.text, "support.toml", &labels, &models(), &options).unwrap();
    assert_eq!(again.text.matches("'ok' in memory.kinds").count(), 1);
}

#[test]
fn a_candidate_of_a_candidate_keeps_the_memory_and_later_labels_supersede() {
    let options = CandidateOptions::default();
    let first = build_candidate("support.toml", BASE, "support.toml", &recall_labels(), &models(), &options).unwrap();
    let relabel = parse_jsonl(
        "labels.jsonl",
        &[
            label("c-1", "ok", None, "should I buy the XR-200 blender", 9),
            label("c-5", "violation", Some("product_recall"), "order the XR-200 blender", 8),
        ]
        .concat(),
    )
    .unwrap();
    let second = build_candidate("support.toml", &first.text, "support.toml", &relabel, &models(), &options).unwrap();
    assert_eq!(second.reference.to_string(), "support@1.0.0-mem.2");
    assert_eq!(second.parent.to_string(), "support@1.0.0-mem.1");
    assert!(!second.created_check);
    assert_eq!(second.report.existing_cases, 3);
    assert_eq!(second.report.superseded, 1);
    assert_eq!(second.report.cases, 4);
    assert_eq!(second.text.matches("name = \"memory-violation\"").count(), 1, "rules are not added twice");
    assert!(second.text.contains("case_id = \"c-1\", interaction_id = \"i-c-1\", reviewer = \"ken\", labelled_at = \"2026-05-09T09:00:00Z\", label = \"ok\""), "{}", second.text);
}

#[test]
fn a_memory_check_in_the_middle_of_the_file_keeps_its_place() {
    let base = BASE.replace(
        "[[checks]]\nname = \"smoothie_word\"",
        "[[checks]]\nname = \"memory\"\nkind = \"memory\"\nphase = \"input\"\nk = 3\n\n[[checks]]\nname = \"smoothie_word\"",
    );
    let candidate = build_candidate(
        "support.toml",
        &base,
        "support.toml",
        &recall_labels(),
        &models(),
        &CandidateOptions::default(),
    )
    .unwrap();
    assert!(!candidate.created_check);
    let memory_at = candidate.text.find("[[checks.entries]]").unwrap();
    let next_check = candidate.text.find("name = \"smoothie_word\"").unwrap();
    assert!(memory_at < next_check, "{}", candidate.text);
    let policy = Policy::parse_with("support.toml", &candidate.text, &models()).unwrap();
    assert!(policy.summary().contains("smoothie_word"));
    assert_eq!(decide(&policy, "smoothie").0, Action::Block);
}

#[test]
fn personal_data_is_redacted_before_it_enters_the_policy() {
    let text = label("c-1", "violation", Some("product_recall"), "buy XR-200, call me on +1 415 555 0100", 1);
    let labels = parse_jsonl("labels.jsonl", &text).unwrap();
    let candidate =
        build_candidate("support.toml", BASE, "support.toml", &labels, &models(), &CandidateOptions::default())
            .unwrap();
    assert!(candidate.text.contains("buy XR-200, call me on [PHONE]"), "{}", candidate.text);
    assert!(!candidate.text.contains("555 0100"));
    assert_eq!(candidate.report.redacted, 1);
}

#[test]
fn bad_bases_and_options_are_clear_errors() {
    let labels = recall_labels();
    let options = CandidateOptions::default();
    let broken = BASE.replace("action = \"block\"", "action = \"explode\"");
    let err = build_candidate("support.toml", &broken, "support.toml", &labels, &models(), &options).unwrap_err();
    assert!(matches!(err, AdaptError::Base { .. }));
    assert!(err.to_string().starts_with("support.toml: support.toml:"), "{err}");
    let lift = CandidateOptions { lift_rules: vec!["nope".into()], ..CandidateOptions::default() };
    let err = build_candidate("support.toml", BASE, "support.toml", &labels, &models(), &lift).unwrap_err();
    assert!(err.to_string().contains("rule `nope` to lift is not defined in this file"), "{err}");
    let same = CandidateOptions { version: Some("1.0.0".into()), ..CandidateOptions::default() };
    assert!(build_candidate("support.toml", BASE, "support.toml", &labels, &models(), &same).is_err());
    let clash = CandidateOptions { check_name: "pii".into(), ..CandidateOptions::default() };
    let err = build_candidate("support.toml", BASE, "support.toml", &labels, &models(), &clash).unwrap_err();
    assert!(err.to_string().contains("exists but is not a memory check"), "{err}");
    let err = build_candidate("support.toml", BASE, "support.toml", &labels, &Models::default(), &options).unwrap_err();
    assert!(err.to_string().contains("needs the sentence embedder"), "{err}");
}
