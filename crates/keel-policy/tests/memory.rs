//! The `memory` check: evidence gating, conflict-aware local decisions, broad generalisation,
//! per-category kinds, provenance in explanations and load-time validation. These run on a
//! bag-of-words embedder (`keel_models::WordEmbedder`) so the logic is tested exactly and fast;
//! `memory_minilm.rs` runs paraphrases through the real MiniLM.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use keel_core::{Action, Phase};
use keel_policy::{Context, Lang, Models, Policy, TextPart};
use proptest::prelude::*;

use keel_models::WordEmbedder;

fn models() -> Models {
    Models { embedder: Some(Arc::new(WordEmbedder::default())), classifier: None }
}

/// (case id, label, category, text)
type Case<'a> = (&'a str, &'a str, Option<&'a str>, &'a str);

fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn entry(id: &str, label: &str, category: Option<&str>, cases: &[Case<'_>]) -> String {
    let mut out = format!("[[checks.entries]]\nid = {}\nlabel = {}\n", q(id), q(label));
    if let Some(c) = category {
        out.push_str(&format!("category = {}\n", q(c)));
    }
    out.push_str("cases = [\n");
    for (i, (case_id, label, category, text)) in cases.iter().enumerate() {
        out.push_str(&format!(
            "  {{ case_id = {}, interaction_id = \"0197-{case_id}\", reviewer = {}, labelled_at = \"2026-05-0{}T09:00:00Z\", label = {}, {}text = {} }},\n",
            q(case_id),
            q(if i % 2 == 0 { "aiko" } else { "ken" }),
            1 + i % 9,
            q(label),
            category.map(|c| format!("category = {}, ", q(c))).unwrap_or_default(),
            q(text)
        ));
    }
    out.push_str("]\n");
    out
}

const HEADER: &str = r#"name = "mem"
version = "1"
[messages]
block = { en = "no" }
escalate = { en = "human" }
"#;

const RULES: &str = r#"
[[rules]]
name = "memory-ok"
priority = 5
phase = "input"
when = "'ok' in memory.kinds"
action = "allow"

[[rules]]
name = "escalate-recall"
priority = 10
phase = "input"
when = "'product_recall' in memory.kinds"
action = "escalate"

[[rules]]
name = "block-memory"
priority = 20
phase = "input"
when = "memory"
action = "block"

[[rules]]
name = "block-blender-word"
priority = 30
phase = "input"
when = "blender_word"
action = "block"
"#;

fn policy_with(settings: &str, entries: &str) -> Policy {
    let text = format!(
        "{HEADER}[[checks]]\nname = \"blender_word\"\nkind = \"keywords\"\nphase = \"input\"\nwords = [\"smoothie\"]\n\n[[checks]]\nname = \"memory\"\nkind = \"memory\"\nphase = \"input\"\n{settings}\n{entries}\n{RULES}"
    );
    Policy::parse_with("mem.toml", &text, &models()).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn judge(policy: &Policy, text: &str) -> (Action, Option<String>, keel_core::CheckResult) {
    let ctx = Context { app: "support", model: "m", lang: Lang::detect(text) };
    let j = policy.judge(Phase::Input, &[TextPart { message: Some(0), text }], &ctx);
    let memory = j.results.iter().find(|r| r.check == "memory").unwrap().clone();
    (j.decision.action, j.decision.rule, memory)
}

#[test]
fn one_noisy_label_does_not_act() {
    let p = policy_with(
        "",
        &entry(
            "e-1",
            "violation",
            Some("product_recall"),
            &[("c-1", "violation", Some("product_recall"), "should I buy the XR-200 blender")],
        ),
    );
    let (action, _, memory) = judge(&p, "should I buy the XR-200 blender today");
    assert_eq!(action, Action::Allow);
    assert!(!memory.hit);
    assert!(memory.score > 0.0 && memory.score < 0.5, "{}", memory.score);
    let detail = memory.detail.unwrap();
    assert!(detail.contains("abstains"), "{detail}");
}

#[test]
fn consistent_labels_act_and_expose_their_category() {
    let cases = [
        ("c-1", "violation", Some("product_recall"), "should I buy the XR-200 blender"),
        ("c-2", "violation", Some("product_recall"), "I want to buy an XR-200 blender"),
        ("c-3", "violation", Some("product_recall"), "is the XR-200 blender a good buy"),
    ];
    let p = policy_with("", &entry("e-1", "violation", Some("product_recall"), &cases));
    let (action, rule, memory) = judge(&p, "where can I buy the XR-200 blender");
    assert_eq!(action, Action::Escalate, "{:?}", memory.detail);
    assert_eq!(rule.as_deref(), Some("escalate-recall"));
    assert!(memory.hit);
    assert_eq!(memory.findings[0].kind, "product_recall");
    assert!(memory.score >= 0.5 && memory.score <= 1.0);
    // One of them is not enough.
    let p = policy_with("", &entry("e-1", "violation", Some("product_recall"), &cases[..1]));
    assert_eq!(judge(&p, "where can I buy the XR-200 blender").0, Action::Allow);
    // Two agreeing and one contradicting label are not either.
    let mixed = [cases[0], cases[1], ("c-3", "ok", None, "is the XR-200 blender a good buy")];
    let p = policy_with("", &entry("e-1", "violation", Some("product_recall"), &mixed));
    let (action, _, memory) = judge(&p, "should I buy the XR-200 blender");
    assert_eq!(action, Action::Allow, "{:?}", memory.detail);
}

#[test]
fn a_lone_violation_in_an_ok_neighbourhood_does_not_over_generalise() {
    let ok = [
        ("c-1", "ok", None, "how do I clean the XR-200 blender jug"),
        ("c-2", "ok", None, "how do I clean the XR-200 blender lid"),
        ("c-3", "ok", None, "how do I clean the XR-200 blender blade"),
        ("c-4", "ok", None, "how do I clean the XR-200 blender base"),
    ];
    let lone = [("c-9", "violation", Some("product_recall"), "how do I clean the XR-200 blender motor")];
    let entries =
        format!("{}{}", entry("e-ok", "ok", None, &ok), entry("e-v", "violation", Some("product_recall"), &lone));
    let p = policy_with("", &entries);
    // Nearest to the lone report, but its neighbourhood is mostly ok: the neighbours decide.
    let (action, _, memory) = judge(&p, "how do I clean the XR-200 blender motor housing");
    assert!(!memory.hit, "{:?}", memory.detail);
    assert_ne!(action, Action::Block);
    let detail = memory.detail.unwrap();
    assert!(detail.contains("local vote"), "{detail}");
    assert!(detail.contains("c-9"), "the conflicting case is named: {detail}");

    // The same lone report merged into the ok entry (one cluster, mixed labels) is no different.
    let mut all = ok.to_vec();
    all.extend(lone);
    let p = policy_with("", &entry("e-ok", "ok", None, &all));
    let (_, _, memory) = judge(&p, "how do I clean the XR-200 blender motor housing");
    assert!(!memory.hit, "{:?}", memory.detail);
}

#[test]
fn a_broad_entry_generalises_to_texts_near_any_of_its_cases() {
    let cases = [
        ("c-1", "violation", Some("product_recall"), "should I buy the XR-200"),
        ("c-2", "violation", Some("product_recall"), "XR-200 price please"),
        ("c-3", "violation", Some("product_recall"), "order an XR-200 for my mother"),
        ("c-4", "violation", Some("product_recall"), "XR-200を買いたいです"),
    ];
    let p = policy_with("", &entry("e-1", "violation", Some("product_recall"), &cases));
    // Near one case only (c-3), but the entry's four agreeing labels are the evidence.
    let (action, _, memory) = judge(&p, "order an XR-200 for my father");
    assert_eq!(action, Action::Escalate, "{:?}", memory.detail);
    assert!(memory.detail.unwrap().contains("broad entry e-1"));
    let (action, _, _) = judge(&p, "XR-200を買いたい");
    assert_eq!(action, Action::Escalate);
    // Unrelated texts are outside the radius.
    let (action, _, memory) = judge(&p, "what are your opening hours");
    assert_eq!(action, Action::Allow);
    assert!(memory.detail.unwrap().contains("no labelled case within"));
}

#[test]
fn confident_ok_entries_lift_an_over_refusal() {
    let ok = [
        ("c-1", "ok", None, "a banana smoothie recipe for the blender"),
        ("c-2", "ok", None, "a mango smoothie recipe for the blender"),
        ("c-3", "ok", None, "a berry smoothie recipe for the blender"),
    ];
    let p = policy_with("", &entry("e-ok", "ok", None, &ok));
    let (action, rule, memory) = judge(&p, "a kiwi smoothie recipe for the blender");
    assert_eq!(action, Action::Allow);
    assert_eq!(rule.as_deref(), Some("memory-ok"), "{:?}", memory.detail);
    assert_eq!(memory.score, 0.0);
    assert!(!memory.hit);
    assert_eq!(memory.findings[0].kind, "ok");
    // Without the memory the keyword rule blocks it.
    let (action, rule, _) = judge(&p, "smoothie time");
    assert_eq!((action, rule.as_deref()), (Action::Block, Some("block-blender-word")));
}

#[test]
fn the_explanation_carries_provenance_and_the_posterior() {
    let cases = [
        ("c-1", "violation", Some("product_recall"), "should I buy the XR-200 blender"),
        ("c-2", "violation", Some("product_recall"), "I want to buy an XR-200 blender"),
        ("c-3", "violation", Some("product_recall"), "is the XR-200 blender a good buy"),
    ];
    let p = policy_with("", &entry("e-1", "violation", Some("product_recall"), &cases));
    let (_, _, memory) = judge(&p, "should I buy an XR-200 blender");
    let detail = memory.detail.unwrap();
    for needle in [
        "broad entry e-1",
        "violation/product_recall",
        "3 of 3 labels agree",
        "reviewers aiko, ken",
        "cases c-1, c-2, c-3",
        "Beta(4.00, 1.00)",
        "at 80 %",
        "interaction 0197-c-1",
        "2026-05-01T09:00:00Z",
        "so it acts",
    ] {
        assert!(detail.contains(needle), "missing {needle:?} in {detail}");
    }
    assert!((memory.score - 0.2f64.powf(0.25)).abs() < 1e-6, "Beta(4,1) has quantile q^(1/4): {}", memory.score);
}

#[test]
fn settings_change_the_gate() {
    let cases = [("c-1", "violation", Some("product_recall"), "should I buy the XR-200 blender")];
    let entries = entry("e-1", "violation", Some("product_recall"), &cases);
    // A lax threshold lets one label act; a strict confidence or a pessimistic prior does not.
    let lax = policy_with("threshold = 0.3", &entries);
    assert_eq!(judge(&lax, "should I buy the XR-200 blender now").0, Action::Escalate);
    let strict = policy_with("threshold = 0.3\nconfidence = 0.99", &entries);
    assert_eq!(judge(&strict, "should I buy the XR-200 blender now").0, Action::Allow);
    let sceptical = policy_with("threshold = 0.3\nprior = { alpha = 1.0, beta = 4.0 }", &entries);
    assert_eq!(judge(&sceptical, "should I buy the XR-200 blender now").0, Action::Allow);
    // A radius of 1 only matches the very same text.
    let narrow = policy_with("threshold = 0.3\nradius = 1.0", &entries);
    assert_eq!(judge(&narrow, "should I buy the XR-200 blender now").0, Action::Allow);
}

#[test]
fn age_decay_lets_newer_labels_overrule_older_ones() {
    let mixed = |old_label: &str, new_label: &str| -> String {
        let mut out = String::from(
            "[[checks.entries]]\nid = \"e-1\"\nlabel = \"violation\"\ncategory = \"product_recall\"\ncases = [\n",
        );
        for (i, day) in [1, 2, 3, 4].iter().enumerate() {
            out.push_str(&format!("  {{ case_id = \"old-{i}\", reviewer = \"aiko\", labelled_at = \"2026-03-0{day}T09:00:00Z\", label = \"{old_label}\", text = \"should I buy the XR-200 blender {i}\" }},\n"));
        }
        for (i, day) in [20, 21, 22, 23].iter().enumerate() {
            let category = if new_label == "violation" { ", category = \"product_recall\"" } else { "" };
            out.push_str(&format!("  {{ case_id = \"new-{i}\", reviewer = \"ken\", labelled_at = \"2026-04-{day}T09:00:00Z\", label = \"{new_label}\"{category}, text = \"should I buy the XR-200 blender {i} now\" }},\n"));
        }
        out.push_str("]\n");
        out
    };
    let entries = mixed("ok", "violation");
    // Four old "ok" against four new "violation": without decay a tie, so no verdict.
    let p = policy_with("k = 8", &entries);
    let (action, _, memory) = judge(&p, "should I buy the XR-200 blender");
    assert_eq!(action, Action::Allow, "{:?}", memory.detail);
    // With a one-week half-life the March labels weigh ~1/8 and the recall labels decide.
    let p = policy_with("k = 8\nhalf_life_days = 7.0", &entries);
    let (action, _, memory) = judge(&p, "should I buy the XR-200 blender");
    assert_eq!(action, Action::Escalate, "{:?}", memory.detail);
}

#[test]
fn empty_memory_and_empty_text_give_no_signal() {
    let p = policy_with("", "");
    let (action, _, memory) = judge(&p, "should I buy the XR-200 blender");
    assert_eq!((action, memory.score, memory.hit), (Action::Allow, 0.0, false));
    let cases = [("c-1", "ok", None, "hello")];
    let p = policy_with("", &entry("e-1", "ok", None, &cases));
    let (_, _, memory) = judge(&p, "   ");
    assert_eq!((memory.score, memory.findings.len()), (0.0, 0));
}

fn load_error(settings: &str, entries: &str) -> String {
    let text = format!("{HEADER}[[checks]]\nname = \"memory\"\nkind = \"memory\"\n{settings}\n{entries}");
    Policy::parse_with("mem.toml", &text, &models()).unwrap_err().to_string()
}

#[test]
fn bad_entries_are_refused_naming_file_line_and_field() {
    let good = [("c-1", "ok", None, "hello")];
    let e = load_error("", &entry("e-1", "ok", None, &good).replace("2026-05-01T09:00:00Z", "yesterday"));
    assert!(e.starts_with("mem.toml:"), "{e}");
    assert!(e.contains("checks[0].entries[0].cases[0].labelled_at: `yesterday` is not an RFC 3339 time"), "{e}");
    let twice = format!("{}{}", entry("e-1", "ok", None, &good), entry("e-1", "ok", None, &good));
    assert!(load_error("", &twice).contains("checks[0].entries[1].id: an entry with id `e-1` is already defined"));
    let e = load_error("", &entry("e-1", "ok", Some("recall"), &good));
    assert!(e.contains("checks[0].entries[0].category: only violations have a category"), "{e}");
    let e = load_error("", &entry("e-1", "violation", Some("Bad Category"), &good));
    assert!(e.contains("entries[0].category: `Bad Category` is not a valid category"), "{e}");
    let e = load_error("", &entry("e-1", "ok", None, &[("c-1", "ok", None, " ")]));
    assert!(e.contains("entries[0].cases[0].text: must not be empty"), "{e}");
    let e = load_error("", &entry("e-1", "maybe", None, &good));
    assert!(e.contains("unknown variant `maybe`, expected `violation` or `ok`"), "{e}");
    assert!(load_error("k = 0", "").contains("checks[0].k: must be at least 1"));
    assert!(load_error("radius = 1.5", "").contains("checks[0].radius: must be greater than 0 and at most 1"));
    assert!(load_error("confidence = 1.0", "").contains("checks[0].confidence: must be between 0 and 1"));
    assert!(
        load_error("prior = { alpha = 0.0, beta = 1.0 }", "").contains("checks[0].prior.alpha: must be greater than 0")
    );
    assert!(load_error("half_life_days = -1.0", "").contains("checks[0].half_life_days: must be a positive number"));
    let e = load_error("", "[[checks.entries]]\nid = \"e\"\nlabel = \"ok\"\ncases = []\n");
    assert!(e.contains("entries[0].cases: list at least one labelled case"), "{e}");
}

#[test]
fn a_memory_check_without_the_embedder_is_refused() {
    let text = format!("{HEADER}[[checks]]\nname = \"memory\"\nkind = \"memory\"\n");
    let e = Policy::parse("mem.toml", &text).unwrap_err().to_string();
    assert!(e.contains("checks[0].kind: needs the sentence embedder"), "{e}");
    assert!(Policy::needs_embedder("mem.toml", &text).unwrap());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Entries written as TOML read back as the same entries, whatever the texts hold.
    #[test]
    fn entries_round_trip_through_the_policy_file(
        texts in proptest::collection::vec("\\PC{1,40}", 1..5),
        ids in proptest::collection::vec("[a-z][a-z0-9_-]{0,10}", 1..5),
        violation in any::<bool>(),
    ) {
        prop_assume!(texts.iter().all(|t| !t.trim().is_empty()));
        let (label, category) = if violation { ("violation", Some("product_recall")) } else { ("ok", None) };
        let cases: Vec<(String, &str, Option<&str>, String)> =
            texts.iter().zip(ids.iter().cycle()).map(|(t, id)| (id.clone(), label, category, t.clone())).collect();
        let borrowed: Vec<Case<'_>> = cases.iter().map(|(id, l, c, t)| (id.as_str(), *l, *c, t.as_str())).collect();
        let text = format!("{HEADER}[[checks]]\nname = \"memory\"\nkind = \"memory\"\n{}", entry("e-1", label, category, &borrowed));
        let raw: keel_policy::file::PolicyFile = toml::from_str(&text).unwrap();
        let keel_policy::file::CheckConfig::Memory(memory) = &raw.checks[0] else { panic!("not a memory check") };
        let read: Vec<&str> = memory.entries[0].cases.iter().map(|c| c.text.as_str()).collect();
        prop_assert_eq!(read, texts.iter().map(String::as_str).collect::<Vec<_>>());
        prop_assert!(Policy::parse_with("p.toml", &text, &models()).is_ok());
    }

    /// Arbitrary edits of a memory section never panic the parser; they load or name a field.
    #[test]
    fn mangled_entries_load_or_fail_cleanly(cut in 0usize..400, insert in "\\PC{0,8}") {
        let good = entry("e-1", "violation", Some("product_recall"), &[("c-1", "violation", Some("product_recall"), "buy the XR-200")]);
        let text = format!("{HEADER}[[checks]]\nname = \"memory\"\nkind = \"memory\"\n{good}");
        let at = text.char_indices().map(|(i, _)| i).nth(cut.min(text.chars().count() - 1)).unwrap_or(0);
        let mangled = format!("{}{}{}", &text[..at], insert, &text[at..]);
        match Policy::parse_with("p.toml", &mangled, &models()) {
            Ok(_) => {}
            Err(e) => prop_assert!(e.to_string().starts_with("p.toml"), "{}", e),
        }
    }
}
