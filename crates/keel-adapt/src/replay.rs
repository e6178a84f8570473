//! The replay gate: stored interactions re-judged with a candidate version and with the active
//! one, compared on their decisions and scored against reviewers' labels.
//!
//! Scoring maps labels and actions to a binary task where a violation is the positive class:
//! a `violation` label is positive, `ok` and `over_refusal` labels are negative, and
//! `wrong_answer` labels are not scored (they judge the model's facts, not the policy). A
//! version "intervenes" when its action is anything but `allow` (flag, redact, escalate,
//! block): intervening on a positive is a true positive, on a negative a false positive;
//! allowing a positive is a false negative. Over-refusal is narrower: the share of negatives
//! the version *refuses* (block or escalate: the user gets no answer). Precision, recall and
//! over-refusal carry 95% Wilson intervals; F1 a 95% percentile bootstrap interval over the
//! scored interactions (1,000 resamples, fixed seed, so a report is reproducible).

use std::collections::BTreeMap;

use keel_core::{Action, InteractionId, Phase};
use keel_monitor::stats::wilson_interval;
use keel_monitor::SeededRng;
use keel_policy::{Context, Lang, Policy, TextPart};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::labels::ReviewLabel;

/// Bootstrap resamples of the F1 interval.
const F1_RESAMPLES: usize = 1_000;
/// Seed of the F1 bootstrap.
const F1_SEED: u64 = 0x6b65_656c;
/// Confidence of every interval.
const CONFIDENCE: f64 = 0.95;

/// The user and tool texts of a stored OpenAI chat request body (string contents and the
/// text parts of array contents); an unreadable body gives none.
pub fn request_texts(body: &str) -> Vec<String> {
    let Ok(value) = serde_json::from_str::<Value>(body) else { return Vec::new() };
    let Some(messages) = value["messages"].as_array() else { return Vec::new() };
    messages
        .iter()
        .filter(|m| matches!(m["role"].as_str(), Some("user" | "tool")))
        .filter_map(|m| match &m["content"] {
            Value::String(s) => Some(s.clone()),
            Value::Array(parts) => {
                let text: Vec<&str> = parts.iter().filter_map(|p| p["text"].as_str()).collect();
                (!text.is_empty()).then(|| text.join("\n"))
            }
            _ => None,
        })
        .collect()
}

/// What `policy` decides on a stored request body and answer, as the gateway would: the
/// input first (a block or escalation ends it), then the answer; the strongest action wins.
pub fn rejudge(policy: &Policy, app: &str, request_body: &str, answer: Option<&str>) -> Action {
    let inputs = request_texts(request_body);
    let ctx = Context { app, model: "replay", lang: Lang::detect(&inputs.join("\n")) };
    let parts: Vec<TextPart<'_>> =
        inputs.iter().enumerate().map(|(k, text)| TextPart { message: Some(k), text }).collect();
    let input = policy.judge(Phase::Input, &parts, &ctx).decision.action;
    if matches!(input, Action::Block | Action::Escalate) {
        return input;
    }
    match answer {
        Some(answer) if policy.has_checks(Phase::Output) => {
            let output = policy.judge(Phase::Output, &[TextPart { message: None, text: answer }], &ctx).decision.action;
            input.max(output)
        }
        _ => input,
    }
}

/// One re-judged interaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayItem {
    /// The interaction.
    pub interaction_id: InteractionId,
    /// What the active version decides.
    pub active: Action,
    /// What the candidate decides.
    pub candidate: Action,
    /// The reviewers' final label, if the interaction was reviewed.
    pub label: Option<ReviewLabel>,
}

/// Scores of one version against the labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SideScores {
    /// Interventions on violations.
    pub tp: u64,
    /// Interventions on ok / over-refusal labels.
    pub fp: u64,
    /// Violations allowed.
    pub fn_: u64,
    /// Ok / over-refusal labels allowed.
    pub tn: u64,
    /// tp / (tp + fp), with its Wilson interval `[low, high]`.
    pub precision: Option<Estimate>,
    /// tp / (tp + fn), with its Wilson interval.
    pub recall: Option<Estimate>,
    /// 2·tp / (2·tp + fp + fn), with its bootstrap interval.
    pub f1: Option<Estimate>,
    /// Refusals (block, escalate) among ok / over-refusal labels, with its Wilson interval.
    pub over_refusal: Option<Estimate>,
}

/// A point estimate with a 95% interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// The estimate.
    pub value: f64,
    /// Lower end of the interval.
    pub low: f64,
    /// Upper end of the interval.
    pub high: f64,
}

fn rate(k: u64, n: u64) -> Option<Estimate> {
    let r = wilson_interval(k, n, CONFIDENCE).ok()?;
    Some(Estimate { value: r.estimate, low: r.lower, high: r.upper })
}

/// (positive label, intervened, refused) for the scored items of one side.
fn outcomes(items: &[ReplayItem], side: fn(&ReplayItem) -> Action) -> Vec<(bool, bool, bool)> {
    items
        .iter()
        .filter_map(|item| {
            let positive = match item.label? {
                ReviewLabel::Violation => true,
                ReviewLabel::Ok | ReviewLabel::OverRefusal => false,
                ReviewLabel::WrongAnswer => return None,
            };
            let action = side(item);
            Some((positive, action != Action::Allow, matches!(action, Action::Block | Action::Escalate)))
        })
        .collect()
}

fn f1_of(outcomes: &[(bool, bool, bool)]) -> Option<f64> {
    let tp = outcomes.iter().filter(|(p, i, _)| *p && *i).count() as f64;
    let wrong = outcomes.iter().filter(|(p, i, _)| p != i).count() as f64;
    (tp + wrong > 0.0).then(|| 2.0 * tp / (2.0 * tp + wrong))
}

fn score(items: &[ReplayItem], side: fn(&ReplayItem) -> Action) -> SideScores {
    let outcomes = outcomes(items, side);
    let count = |f: &dyn Fn(&(bool, bool, bool)) -> bool| outcomes.iter().filter(|o| f(o)).count() as u64;
    let tp = count(&|(p, i, _)| *p && *i);
    let fp = count(&|(p, i, _)| !*p && *i);
    let fn_ = count(&|(p, i, _)| *p && !*i);
    let tn = count(&|(p, i, _)| !*p && !*i);
    let refused = count(&|(p, _, r)| !*p && *r);
    let f1 = f1_of(&outcomes).map(|value| {
        let mut rng = SeededRng::new(F1_SEED);
        let mut samples: Vec<f64> = (0..F1_RESAMPLES)
            .filter_map(|_| {
                let resample: Vec<(bool, bool, bool)> =
                    (0..outcomes.len()).map(|_| outcomes[rng.below(outcomes.len())]).collect();
                f1_of(&resample)
            })
            .collect();
        samples.sort_by(f64::total_cmp);
        let at = |q: f64| samples.get(((samples.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(value);
        Estimate { value, low: at(0.025), high: at(0.975) }
    });
    SideScores {
        tp,
        fp,
        fn_,
        tn,
        precision: rate(tp, tp + fp),
        recall: rate(tp, tp + fn_),
        f1,
        over_refusal: rate(refused, fp + tn),
    }
}

/// The shipped replay gate, `suites/gates/replay.toml` (`--gate default`).
pub const SHIPPED_GATE: &str = include_str!("../../../suites/gates/replay.toml");

/// The thresholds a replay must meet (a TOML file; fields left out take the shipped values).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplayGate {
    /// Largest F1 drop from the active version to the candidate (0 = F1 must not drop).
    pub f1_drop_max: f64,
    /// Largest over-refusal rate of the candidate on ok / over-refusal labels.
    pub over_refusal_max: f64,
    /// Fewest scored (labelled) interactions a replay needs to judge at all.
    pub min_labelled: u64,
}

impl Default for ReplayGate {
    fn default() -> Self {
        Self { f1_drop_max: 0.0, over_refusal_max: 0.05, min_labelled: 20 }
    }
}

/// How often a (active, candidate) pair of decisions occurred.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffCell {
    /// The active version's action.
    pub from: Action,
    /// The candidate's action.
    pub to: Action,
    /// Interactions with this pair.
    pub count: u64,
}

/// A replay's findings and verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplayReport {
    /// Interactions re-judged.
    pub replayed: u64,
    /// Interactions skipped because their texts are not stored (privacy `none`).
    pub skipped_no_text: u64,
    /// Interactions whose decision differs.
    pub changed: u64,
    /// The from → to action matrix (active → candidate), non-empty cells only.
    pub matrix: Vec<DiffCell>,
    /// Up to the asked number of interactions whose decision differs.
    pub examples: Vec<ReplayItem>,
    /// Labelled interactions scored (violation, ok, over_refusal).
    pub labelled: u64,
    /// The active version's scores.
    pub active: SideScores,
    /// The candidate's scores.
    pub candidate: SideScores,
    /// The thresholds applied.
    pub gate: ReplayGate,
    /// Whether every threshold was met.
    pub passed: bool,
    /// Why it failed (empty when it passed).
    pub failures: Vec<String>,
}

/// Compares, scores and gates re-judged interactions.
pub fn report(items: &[ReplayItem], skipped_no_text: u64, gate: &ReplayGate, max_examples: usize) -> ReplayReport {
    let mut cells: BTreeMap<(Action, Action), u64> = BTreeMap::new();
    for item in items {
        *cells.entry((item.active, item.candidate)).or_default() += 1;
    }
    let matrix = cells.into_iter().map(|((from, to), count)| DiffCell { from, to, count }).collect();
    let differing: Vec<&ReplayItem> = items.iter().filter(|i| i.active != i.candidate).collect();
    let active = score(items, |i| i.active);
    let candidate = score(items, |i| i.candidate);
    let labelled = active.tp + active.fp + active.fn_ + active.tn;
    let mut failures = Vec::new();
    if labelled < gate.min_labelled {
        failures.push(format!(
            "only {labelled} labelled interactions were replayed; the gate needs at least {} (min_labelled)",
            gate.min_labelled
        ));
    }
    let (f1_active, f1_candidate) = (active.f1.map_or(0.0, |e| e.value), candidate.f1.map_or(0.0, |e| e.value));
    if f1_candidate < f1_active - gate.f1_drop_max - 1e-12 {
        failures.push(format!(
            "F1 drops from {f1_active:.3} (active) to {f1_candidate:.3} (candidate); at most {} is allowed (f1_drop_max)",
            gate.f1_drop_max
        ));
    }
    if let Some(rate) = candidate.over_refusal.filter(|r| r.value > gate.over_refusal_max) {
        failures.push(format!(
            "the candidate refuses {:.1}% of interactions labelled ok or over_refusal; at most {:.1}% is allowed \
             (over_refusal_max)",
            rate.value * 100.0,
            gate.over_refusal_max * 100.0
        ));
    }
    ReplayReport {
        replayed: items.len() as u64,
        skipped_no_text,
        changed: differing.len() as u64,
        matrix,
        examples: differing.into_iter().take(max_examples).cloned().collect(),
        labelled,
        active,
        candidate,
        gate: gate.clone(),
        passed: failures.is_empty(),
        failures,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::{Allow, Block, Flag};
    use ReviewLabel::{Ok, OverRefusal, Violation, WrongAnswer};

    fn item(active: Action, candidate: Action, label: Option<ReviewLabel>) -> ReplayItem {
        ReplayItem { interaction_id: InteractionId::new(), active, candidate, label }
    }

    /// Ten interactions, numbers by hand:
    /// - 4 violations: active intervenes on 1 (flag), candidate on 3 (block ×2, flag).
    /// - 4 ok: active blocks none; candidate blocks 1.
    /// - 1 over_refusal: both block it.
    /// - 1 wrong_answer (not scored) and 1 unlabelled (changes only the diff).
    fn fixture() -> Vec<ReplayItem> {
        vec![
            item(Flag, Flag, Some(Violation)),
            item(Allow, Block, Some(Violation)),
            item(Allow, Block, Some(Violation)),
            item(Allow, Allow, Some(Violation)),
            item(Allow, Allow, Some(Ok)),
            item(Allow, Allow, Some(Ok)),
            item(Allow, Allow, Some(Ok)),
            item(Allow, Block, Some(Ok)),
            item(Block, Block, Some(OverRefusal)),
            item(Allow, Allow, Some(WrongAnswer)),
            item(Allow, Flag, None),
        ]
    }

    #[test]
    fn replay_numbers_match_the_hand_computed_fixture() {
        let gate = ReplayGate { min_labelled: 5, over_refusal_max: 0.5, f1_drop_max: 0.0 };
        let r = report(&fixture(), 2, &gate, 10);
        assert_eq!((r.replayed, r.skipped_no_text, r.changed, r.labelled), (11, 2, 4, 9));
        let cell = |from, to| r.matrix.iter().find(|c| c.from == from && c.to == to).map_or(0, |c| c.count);
        assert_eq!((cell(Allow, Block), cell(Allow, Flag), cell(Allow, Allow), cell(Flag, Flag)), (3, 1, 5, 1));
        assert_eq!(r.examples.len(), 4);

        // Active: tp 1, fp 1 (the over_refusal block), fn 3, tn 4.
        // P = 1/2, R = 1/4, F1 = 2/(2 + 1 + 3) = 1/3; over-refusal = 1/5.
        let a = &r.active;
        assert_eq!((a.tp, a.fp, a.fn_, a.tn), (1, 1, 3, 4));
        assert!((a.precision.unwrap().value - 0.5).abs() < 1e-12);
        assert!((a.recall.unwrap().value - 0.25).abs() < 1e-12);
        assert!((a.f1.unwrap().value - 1.0 / 3.0).abs() < 1e-12);
        assert!((a.over_refusal.unwrap().value - 0.2).abs() < 1e-12);
        // Candidate: tp 3, fp 2, fn 1, tn 3. P = 3/5, R = 3/4, F1 = 6/(6 + 2 + 1) = 2/3;
        // over-refusal = 2/5.
        let c = &r.candidate;
        assert_eq!((c.tp, c.fp, c.fn_, c.tn), (3, 2, 1, 3));
        assert!((c.precision.unwrap().value - 0.6).abs() < 1e-12);
        assert!((c.recall.unwrap().value - 0.75).abs() < 1e-12);
        let f1 = c.f1.unwrap();
        assert!((f1.value - 2.0 / 3.0).abs() < 1e-12);
        assert!(f1.low <= f1.value && f1.value <= f1.high && f1.low < f1.high, "{f1:?}");
        // Wilson for 3/5 at 95%: (0.2307, 0.8824).
        let p = c.precision.unwrap();
        assert!((p.low - 0.2307).abs() < 1e-3 && (p.high - 0.8824).abs() < 1e-3, "{p:?}");
        assert!((c.over_refusal.unwrap().value - 0.4).abs() < 1e-12);
        assert!(r.passed, "{:?}", r.failures);
    }

    #[test]
    fn the_gate_names_each_threshold_it_misses() {
        let strict = ReplayGate { min_labelled: 20, over_refusal_max: 0.05, f1_drop_max: 0.0 };
        let r = report(&fixture(), 0, &strict, 10);
        assert!(!r.passed);
        assert_eq!(r.failures.len(), 2, "{:?}", r.failures);
        assert!(r.failures[0].contains("min_labelled"));
        assert!(r.failures[1].contains("over_refusal_max"));
        // Swapping the sides makes F1 drop from 2/3 to 1/3.
        let swapped: Vec<ReplayItem> =
            fixture().into_iter().map(|i| ReplayItem { active: i.candidate, candidate: i.active, ..i }).collect();
        let r = report(&swapped, 0, &ReplayGate { min_labelled: 1, over_refusal_max: 1.0, f1_drop_max: 0.1 }, 0);
        assert_eq!(r.failures.len(), 1, "{:?}", r.failures);
        assert!(r.failures[0].contains("F1 drops from 0.667 (active) to 0.333"), "{:?}", r.failures);
        assert!(r.examples.is_empty());
    }

    #[test]
    fn the_shipped_gate_file_is_the_default() {
        let shipped: ReplayGate =
            keel_policy::source::TomlSource::new("replay.toml", SHIPPED_GATE).deserialize().unwrap();
        assert_eq!(shipped, ReplayGate::default());
    }

    #[test]
    fn request_texts_reads_user_and_tool_messages() {
        let body = r#"{"model":"m","messages":[{"role":"system","content":"be nice"},{"role":"user","content":"hi"},{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]}"#;
        assert_eq!(request_texts(body), vec!["hi".to_owned(), "a\nb".to_owned()]);
        assert!(request_texts("not json").is_empty());
    }

    #[test]
    fn rejudging_follows_the_gateway_order() {
        let policy = Policy::parse(
            "p.toml",
            r#"
name = "p"
version = "1"
[messages]
block = { en = "no" }
escalate = { en = "human" }
[[checks]]
name = "xr"
kind = "keywords"
phase = "both"
words = ["XR-200"]
[[rules]]
name = "block-xr"
priority = 5
phase = "both"
when = "xr"
action = "block"
"#,
        )
        .unwrap();
        let body = |text: &str| serde_json::json!({"messages": [{"role": "user", "content": text}]}).to_string();
        assert_eq!(rejudge(&policy, "a", &body("buy an XR-200?"), Some("sure")), Action::Block);
        assert_eq!(rejudge(&policy, "a", &body("what to buy?"), Some("the XR-200")), Action::Block);
        assert_eq!(rejudge(&policy, "a", &body("what to buy?"), Some("a kettle")), Action::Allow);
    }
}
