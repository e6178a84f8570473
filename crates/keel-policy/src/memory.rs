//! Policy memory: a check that learns from reviewed cases without retraining any model.
//!
//! After the design of LiSA (Kim et al., 2026, "Lifelong Safety Adaptation via Conservative
//! Policy Induction", arXiv 2605.14454), memory has three parts:
//!
//! - **Broad abstractions.** Entries are clusters of similar labelled cases (by sentence
//!   embedding). A text near any case of an entry whose neighbourhood agrees takes the entry's
//!   label, so a few reports generalise to paraphrases the reviewers never saw.
//! - **Conflict-aware local rules.** Where the nearest labelled cases within `radius` (`k`
//!   labels' worth of them)
//!   disagree (or the nearest case disagrees with its own entry), the entry is not trusted:
//!   the nearest neighbours vote instead, so one report in an otherwise "ok" region cannot
//!   over-generalise.
//! - **Evidence-aware gating.** Every verdict carries a Beta posterior over the agreement of
//!   the labels behind it — `Beta(prior.alpha + agreeing, prior.beta + disagreeing)` — and acts
//!   only when its lower bound at `confidence` clears the check's `threshold`. One label never
//!   acts alone; two consistent ones do with the defaults; 20 % label noise lowers the bound
//!   instead of flipping decisions.
//!
//! Labels may lose weight with age (`half_life_days`, measured back from the newest label in
//! the memory, so a policy version always decides the same way), which lets a changed norm
//! overrule the labels made before the change. Weights count relative to the freshest label
//! consulted, so age alone never weakens evidence nobody contradicts.
//!
//! The check's score is the lower bound of the violation verdict (0 for "ok" and for no
//! verdict); it hits when the gate opens. Its findings' kinds are the violation category
//! (so rules can act per category) or `ok` when the memory is confident a text is fine (so a
//! rule can lift an over-refusal). The detail explains the verdict: mode, entry or neighbours,
//! their labels, the posterior and its bound, and the provenance of the cases.

use std::fmt;
use std::sync::Arc;

use keel_core::{Finding, Span};
use keel_models::Embedder;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::check::{BuildError, Check, CheckError, CheckInput, CheckOutput, Scope};
use crate::file::MemoryCheckConfig;
use crate::source::PathSegment::{Index, Key};
use crate::text::Lang;

/// The finding kind of a confident "ok" verdict.
pub const OK_KIND: &str = "ok";
/// The category of violations labelled without one.
pub const UNSPECIFIED_CATEGORY: &str = "unspecified";

/// Default `radius`: cosine similarity at which a labelled case counts as near.
pub const DEFAULT_RADIUS: f64 = 0.65;
/// Default `radius_ja`: the radius for Japanese texts. all-MiniLM-L6-v2 is an English model:
/// Japanese texts share many sub-word tokens, so even unrelated ones score 0.5–0.8 (see
/// `cargo run -p keel-adapt --example topic_similarity`), and a tighter radius keeps topics apart.
pub const DEFAULT_RADIUS_JA: f64 = 0.85;
/// Default `k`: labels' worth of nearest neighbours consulted (faded labels count fractionally).
pub const DEFAULT_K: usize = 5;
/// Default `confidence` of the posterior lower bound.
pub const DEFAULT_CONFIDENCE: f64 = 0.8;
/// At most this many times `k` neighbours are consulted, however faded their labels.
const MAX_NEIGHBOURS_PER_K: usize = 4;
/// Default prior pseudo-counts (a uniform prior).
pub const DEFAULT_PRIOR: BetaPrior = BetaPrior { alpha: 1.0, beta: 1.0 };

/// What a memory case or entry says about a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryLabel {
    /// The policy should have intervened (with a category).
    Violation,
    /// The text is fine (including over-refusals: the policy blocked something fine).
    Ok,
}

impl MemoryLabel {
    /// The lowercase name used in files.
    pub fn as_str(self) -> &'static str {
        match self {
            MemoryLabel::Violation => "violation",
            MemoryLabel::Ok => "ok",
        }
    }
}

/// Pseudo-counts of the Beta prior over label agreement.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BetaPrior {
    /// Prior agreeing labels (> 0).
    pub alpha: f64,
    /// Prior disagreeing labels (> 0).
    pub beta: f64,
}

impl Default for BetaPrior {
    fn default() -> Self {
        DEFAULT_PRIOR
    }
}

/// One abstraction: a cluster of similar labelled cases and the label it claims for them.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryEntry {
    /// A stable id, quoted in explanations.
    pub id: String,
    /// The label the entry claims; its cases' agreement with it is the evidence.
    pub label: MemoryLabel,
    /// The violation category (violation entries only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// The labelled cases behind the entry.
    pub cases: Vec<MemoryCase>,
}

/// One reviewed case, with its provenance.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryCase {
    /// The review case's id.
    pub case_id: String,
    /// The interaction the case was made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interaction_id: Option<String>,
    /// The reviewer who labelled it.
    pub reviewer: String,
    /// When it was labelled (RFC 3339).
    pub labelled_at: String,
    /// What the label means for the memory.
    pub label: MemoryLabel,
    /// The violation category (violation cases only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// The reviewer's label as given (`ok`, `violation`, `over_refusal`, …), for provenance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review_label: Option<String>,
    /// The text the label is about (personal data already redacted by the builder).
    pub text: String,
}

/// The lower bound of a `Beta(alpha, beta)` posterior at one-sided credibility `confidence`:
/// the `1 - confidence` quantile. Both parameters must be positive; `confidence` in (0, 1).
pub fn lower_bound(alpha: f64, beta: f64, confidence: f64) -> f64 {
    if !(alpha > 0.0 && beta > 0.0 && confidence > 0.0 && confidence < 1.0) {
        return 0.0;
    }
    let q = statrs::function::beta::inv_beta_reg(alpha, beta, 1.0 - confidence);
    if q.is_finite() {
        q.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// Parses an RFC 3339 time as used in `labelled_at`.
pub fn parse_time(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339).ok()
}

/// A case ready for lookup: its vector, label, weight and where it came from.
struct IndexedCase {
    entry: usize,
    labelled_at: OffsetDateTime,
    vector: Vec<f32>,
    label: MemoryLabel,
    category: Option<String>,
    weight: f64,
    case: MemoryCase,
}

/// An entry's evidence, computed once when the policy is compiled.
struct IndexedEntry {
    id: String,
    label: MemoryLabel,
    category: Option<String>,
    agree: f64,
    disagree: f64,
    max_weight: f64,
    agreeing_cases: usize,
    cases: usize,
    reviewers: Vec<String>,
    case_ids: Vec<String>,
}

/// The memory check: entries embedded once at compile time, looked up per text.
pub(crate) struct MemoryCheck {
    embedder: Arc<dyn Embedder>,
    entries: Vec<IndexedEntry>,
    cases: Vec<IndexedCase>,
    radius: f64,
    radius_ja: f64,
    k: usize,
    prior: BetaPrior,
    confidence: f64,
    threshold: f64,
}

impl MemoryCheck {
    pub(crate) fn build(
        config: &MemoryCheckConfig,
        threshold: f64,
        embedder: Arc<dyn Embedder>,
    ) -> Result<Self, BuildError> {
        let at = |path: Vec<crate::source::PathSegment>, message: String| BuildError { field: path, message };
        if !(config.radius > 0.0 && config.radius <= 1.0) {
            return Err(at(vec![Key("radius".into())], "must be greater than 0 and at most 1".into()));
        }
        if !(config.radius_ja > 0.0 && config.radius_ja <= 1.0) {
            return Err(at(vec![Key("radius_ja".into())], "must be greater than 0 and at most 1".into()));
        }
        if config.k == 0 {
            return Err(at(vec![Key("k".into())], "must be at least 1".into()));
        }
        if !(config.prior.alpha > 0.0 && config.prior.alpha.is_finite()) {
            return Err(at(vec![Key("prior".into()), Key("alpha".into())], "must be greater than 0".into()));
        }
        if !(config.prior.beta > 0.0 && config.prior.beta.is_finite()) {
            return Err(at(vec![Key("prior".into()), Key("beta".into())], "must be greater than 0".into()));
        }
        if !(config.confidence > 0.0 && config.confidence < 1.0) {
            return Err(at(vec![Key("confidence".into())], "must be between 0 and 1 (exclusive)".into()));
        }
        if let Some(h) = config.half_life_days {
            if !(h > 0.0 && h.is_finite()) {
                return Err(at(vec![Key("half_life_days".into())], "must be a positive number of days".into()));
            }
        }

        let mut ids = std::collections::HashSet::new();
        let mut times = Vec::new();
        for (i, entry) in config.entries.iter().enumerate() {
            let path = |rest: &[&str]| {
                let mut p = vec![Key("entries".into()), Index(i)];
                p.extend(rest.iter().map(|k| Key((*k).into())));
                p
            };
            if entry.id.trim().is_empty() {
                return Err(at(path(&["id"]), "must not be empty".into()));
            }
            if !ids.insert(entry.id.as_str()) {
                return Err(at(path(&["id"]), format!("an entry with id `{}` is already defined", entry.id)));
            }
            check_category(entry.label, entry.category.as_deref()).map_err(|m| at(path(&["category"]), m))?;
            if entry.cases.is_empty() {
                return Err(at(path(&["cases"]), "list at least one labelled case".into()));
            }
            for (j, case) in entry.cases.iter().enumerate() {
                let case_path = |field: &str| {
                    let mut p = path(&["cases"]);
                    p.push(Index(j));
                    p.push(Key(field.into()));
                    p
                };
                if case.case_id.trim().is_empty() {
                    return Err(at(case_path("case_id"), "must not be empty".into()));
                }
                if case.reviewer.trim().is_empty() {
                    return Err(at(case_path("reviewer"), "must not be empty".into()));
                }
                if case.text.trim().is_empty() {
                    return Err(at(case_path("text"), "must not be empty".into()));
                }
                check_category(case.label, case.category.as_deref()).map_err(|m| at(case_path("category"), m))?;
                let time = parse_time(&case.labelled_at).ok_or_else(|| {
                    at(
                        case_path("labelled_at"),
                        format!("`{}` is not an RFC 3339 time such as 2026-05-01T09:30:00Z", case.labelled_at),
                    )
                })?;
                times.push(time);
            }
        }

        let texts: Vec<&str> = config.entries.iter().flat_map(|e| e.cases.iter().map(|c| c.text.as_str())).collect();
        let vectors = if texts.is_empty() {
            Vec::new()
        } else {
            embedder
                .embed(&texts)
                .map_err(|e| at(vec![Key("entries".into())], format!("cannot embed the cases: {e}")))?
        };
        let newest = times.iter().max().copied();
        let weight_of = |time: OffsetDateTime| match (config.half_life_days, newest) {
            (Some(half_life), Some(newest)) => {
                let age_days = (newest - time).as_seconds_f64() / 86_400.0;
                0.5f64.powf(age_days.max(0.0) / half_life)
            }
            _ => 1.0,
        };

        let mut cases = Vec::with_capacity(texts.len());
        let mut entries = Vec::with_capacity(config.entries.len());
        let mut vectors = vectors.into_iter();
        let mut times = times.into_iter();
        for (e, entry) in config.entries.iter().enumerate() {
            let (mut agree, mut disagree, mut agreeing_cases, mut max_weight) = (0.0, 0.0, 0, 0.0f64);
            let mut reviewers: Vec<String> = Vec::new();
            for case in &entry.cases {
                let vector = vectors.next().unwrap_or_default();
                let weight = times.next().map(weight_of).unwrap_or(1.0);
                max_weight = max_weight.max(weight);
                if case.label == entry.label {
                    agree += weight;
                    agreeing_cases += 1;
                } else {
                    disagree += weight;
                }
                if !reviewers.contains(&case.reviewer) {
                    reviewers.push(case.reviewer.clone());
                }
                cases.push(IndexedCase {
                    entry: e,
                    labelled_at: parse_time(&case.labelled_at).unwrap_or(OffsetDateTime::UNIX_EPOCH),
                    vector,
                    label: case.label,
                    category: case.category.clone(),
                    weight,
                    case: case.clone(),
                });
            }
            entries.push(IndexedEntry {
                id: entry.id.clone(),
                label: entry.label,
                category: entry.category.clone(),
                agree,
                disagree,
                max_weight,
                agreeing_cases,
                cases: entry.cases.len(),
                reviewers,
                case_ids: entry.cases.iter().map(|c| c.case_id.clone()).collect(),
            });
        }
        Ok(MemoryCheck {
            embedder,
            entries,
            cases,
            radius: config.radius,
            radius_ja: config.radius_ja,
            k: config.k,
            prior: config.prior,
            confidence: config.confidence,
            threshold,
        })
    }

    /// The memory's verdict on a text's embedding, with its explanation.
    pub(crate) fn explain(&self, vector: &[f32], lang: Lang) -> Explanation {
        let radius = match lang {
            Lang::Ja => self.radius_ja,
            Lang::En => self.radius,
        };
        let mut scored: Vec<(usize, f64)> =
            self.cases.iter().enumerate().map(|(i, c)| (i, similarity(&c.vector, vector))).collect();
        // Equally similar cases (the same text labelled twice): the newer label first.
        scored.sort_by(|a, b| {
            b.1.total_cmp(&a.1).then(self.cases[b.0].labelled_at.cmp(&self.cases[a.0].labelled_at)).then(a.0.cmp(&b.0))
        });
        let nearest_overall = scored.first().map(|&(i, s)| (self.cases[i].case.case_id.clone(), s));
        // Nearest first until `k` labels' worth of weight is consulted: a label faded by age
        // counts for less, so fresher ones further out still get a say.
        let mut mass = 0.0;
        let near: Vec<(usize, f64)> = scored
            .into_iter()
            .take_while(|&(_, s)| s >= radius)
            .take_while(|&(i, _)| {
                let open = mass < self.k as f64;
                mass += self.cases[i].weight;
                open
            })
            .take(MAX_NEIGHBOURS_PER_K * self.k)
            .collect();
        let neighbours: Vec<Neighbour> = near
            .iter()
            .map(|&(i, s)| {
                let c = &self.cases[i];
                Neighbour {
                    case_id: c.case.case_id.clone(),
                    interaction_id: c.case.interaction_id.clone(),
                    entry: self.entries[c.entry].id.clone(),
                    label: c.label,
                    category: c.category.clone(),
                    reviewer: c.case.reviewer.clone(),
                    labelled_at: c.case.labelled_at.clone(),
                    similarity: s,
                    weight: c.weight,
                    text: c.case.text.clone(),
                }
            })
            .collect();
        let Some(&(first, _)) = near.first() else {
            return Explanation {
                mode: Mode::NoEvidence,
                radius,
                nearest: nearest_overall,
                ..self.empty_explanation()
            };
        };
        // The entries the neighbourhood touches; without conflict their evidence is pooled.
        let label_of_nearest = self.entries[self.cases[first].entry].label;
        let mut touched: Vec<usize> = Vec::new();
        for &(i, _) in &near {
            if !touched.contains(&self.cases[i].entry) {
                touched.push(self.cases[i].entry);
            }
        }
        let conflict = near.iter().any(|&(i, _)| self.cases[i].label != label_of_nearest)
            || touched.iter().any(|&e| self.entries[e].label != label_of_nearest);
        // Weights count relative to the freshest label consulted: age alone does not weaken
        // uncontested evidence, it only lets newer labels overrule older ones.
        let (mode, label, category, agree, disagree) = if !conflict {
            let freshest =
                touched.iter().map(|&e| self.entries[e].max_weight).fold(0.0, f64::max).max(f64::MIN_POSITIVE);
            let agree = touched.iter().map(|&e| self.entries[e].agree).sum::<f64>() / freshest;
            let disagree = touched.iter().map(|&e| self.entries[e].disagree).sum::<f64>() / freshest;
            let category = self.entries[self.cases[first].entry].category.clone();
            (Mode::Broad, Some(label_of_nearest), category, agree, disagree)
        } else {
            let freshest = near.iter().map(|&(i, _)| self.cases[i].weight).fold(0.0, f64::max).max(f64::MIN_POSITIVE);
            let weight_of = |label: MemoryLabel| {
                near.iter()
                    .filter(|&&(i, _)| self.cases[i].label == label)
                    .map(|&(i, _)| self.cases[i].weight / freshest)
                    .sum::<f64>()
            };
            let (violation, ok) = (weight_of(MemoryLabel::Violation), weight_of(MemoryLabel::Ok));
            if violation > ok {
                let category = majority_category(near.iter().map(|&(i, _)| &self.cases[i]));
                (Mode::Local, Some(MemoryLabel::Violation), category, violation, ok)
            } else if ok > violation {
                (Mode::Local, Some(MemoryLabel::Ok), None, ok, violation)
            } else {
                (Mode::Local, None, None, ok, violation)
            }
        };
        let alpha = self.prior.alpha + agree;
        let beta = self.prior.beta + disagree;
        let bound = if label.is_some() { lower_bound(alpha, beta, self.confidence) } else { 0.0 };
        Explanation {
            mode,
            label,
            category,
            alpha,
            beta,
            lower_bound: bound,
            confidence: self.confidence,
            threshold: self.threshold,
            acts: label.is_some() && bound >= self.threshold && bound > 0.0,
            radius,
            entries: touched
                .iter()
                .map(|&e| {
                    let entry = &self.entries[e];
                    EntrySummary {
                        id: entry.id.clone(),
                        label: entry.label,
                        category: entry.category.clone(),
                        agreeing_cases: entry.agreeing_cases,
                        cases: entry.cases,
                        reviewers: entry.reviewers.clone(),
                        case_ids: entry.case_ids.clone(),
                    }
                })
                .collect(),
            neighbours,
            nearest: nearest_overall,
        }
    }

    fn empty_explanation(&self) -> Explanation {
        Explanation {
            mode: Mode::NoEvidence,
            label: None,
            category: None,
            alpha: self.prior.alpha,
            beta: self.prior.beta,
            lower_bound: 0.0,
            confidence: self.confidence,
            threshold: self.threshold,
            acts: false,
            radius: self.radius,
            entries: Vec::new(),
            neighbours: Vec::new(),
            nearest: None,
        }
    }
}

fn check_category(label: MemoryLabel, category: Option<&str>) -> Result<(), String> {
    match (label, category) {
        (MemoryLabel::Ok, Some(_)) => Err("only violations have a category".into()),
        (MemoryLabel::Violation, Some(c)) if !is_category(c) => Err(format!(
            "`{c}` is not a valid category (lowercase letters, digits and _, starting with a letter; not `ok`)"
        )),
        _ => Ok(()),
    }
}

/// True for a usable violation category: an identifier other than `ok`.
pub fn is_category(name: &str) -> bool {
    let mut chars = name.chars();
    name != OK_KIND
        && matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn majority_category<'c>(cases: impl Iterator<Item = &'c IndexedCase>) -> Option<String> {
    let mut weights: Vec<(String, f64)> = Vec::new();
    for case in cases.filter(|c| c.label == MemoryLabel::Violation) {
        let category = case.category.clone().unwrap_or_else(|| UNSPECIFIED_CATEGORY.to_string());
        match weights.iter_mut().find(|(c, _)| *c == category) {
            Some((_, w)) => *w += case.weight,
            None => weights.push((category, case.weight)),
        }
    }
    // Ties keep the category of the nearer case (the earlier one in the list).
    weights
        .into_iter()
        .fold(None, |best: Option<(String, f64)>, (c, w)| match best {
            Some((bc, bw)) if bw >= w => Some((bc, bw)),
            _ => Some((c, w)),
        })
        .map(|(c, _)| c)
}

/// Cosine similarity of two L2-normalised vectors (a dot product).
fn similarity(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum()
}

impl Check for MemoryCheck {
    fn run(&self, input: &CheckInput<'_>) -> Result<CheckOutput, CheckError> {
        let text = input.text();
        if text.trim().is_empty() || self.cases.is_empty() {
            return Ok(CheckOutput::default());
        }
        let vector = input.embedding(self.embedder.as_ref())?;
        let explanation = self.explain(vector, Lang::detect(text));
        let detail = explanation.to_string();
        let score = match explanation.label {
            Some(MemoryLabel::Violation) => explanation.lower_bound,
            _ => 0.0,
        };
        let findings = match (explanation.acts, explanation.label) {
            (true, Some(label)) => vec![Finding {
                kind: match label {
                    MemoryLabel::Violation => {
                        explanation.category.clone().unwrap_or_else(|| UNSPECIFIED_CATEGORY.to_string())
                    }
                    MemoryLabel::Ok => OK_KIND.to_string(),
                },
                span: Span::new(0, text.len()),
                message: None,
                detail: Some(detail.clone()),
            }],
            _ => Vec::new(),
        };
        Ok(CheckOutput { score, findings, detail: Some(detail) })
    }

    fn scope(&self) -> Scope {
        Scope::Final
    }
}

/// How the memory reached its verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// No labelled case within the radius: the memory has no opinion.
    NoEvidence,
    /// The neighbourhood agrees with the nearest case's entry: the entry's evidence decides.
    Broad,
    /// The neighbourhood's labels conflict: the nearest labelled neighbours vote.
    Local,
}

/// A labelled neighbour of the text, with its provenance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Neighbour {
    /// The review case.
    pub case_id: String,
    /// The interaction it came from.
    pub interaction_id: Option<String>,
    /// The entry it belongs to.
    pub entry: String,
    /// Its label.
    pub label: MemoryLabel,
    /// Its category.
    pub category: Option<String>,
    /// Who labelled it.
    pub reviewer: String,
    /// When.
    pub labelled_at: String,
    /// Cosine similarity to the text.
    pub similarity: f64,
    /// Its weight after age decay.
    pub weight: f64,
    /// The case's text.
    pub text: String,
}

/// An entry the neighbourhood touches.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EntrySummary {
    /// Its id.
    pub id: String,
    /// The label it claims.
    pub label: MemoryLabel,
    /// Its category.
    pub category: Option<String>,
    /// Cases whose label agrees with the entry's.
    pub agreeing_cases: usize,
    /// All its cases.
    pub cases: usize,
    /// Who labelled them.
    pub reviewers: Vec<String>,
    /// Their case ids.
    pub case_ids: Vec<String>,
}

/// Why the memory decided what it did about one text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    /// Broad entry, local neighbours, or no evidence.
    pub mode: Mode,
    /// The verdict before gating (`None`: no evidence or a tie).
    pub label: Option<MemoryLabel>,
    /// The violation category of the verdict.
    pub category: Option<String>,
    /// Posterior alpha (prior + agreeing weight).
    pub alpha: f64,
    /// Posterior beta (prior + disagreeing weight).
    pub beta: f64,
    /// Lower bound of the posterior at `confidence`.
    pub lower_bound: f64,
    /// The bound's credibility.
    pub confidence: f64,
    /// The bound a verdict must clear to act.
    pub threshold: f64,
    /// True when the verdict clears the gate.
    pub acts: bool,
    /// The similarity radius.
    pub radius: f64,
    /// The entries of the neighbours, the nearest case's first.
    pub entries: Vec<EntrySummary>,
    /// The labelled neighbours within the radius (at most `k`), nearest first.
    pub neighbours: Vec<Neighbour>,
    /// The nearest case overall and its similarity (also outside the radius).
    pub nearest: Option<(String, f64)>,
}

fn shorten(text: &str, max_chars: usize) -> String {
    let mut chars = text.chars();
    let head: String = chars.by_ref().take(max_chars).collect();
    if chars.next().is_some() {
        format!("{head}…")
    } else {
        head
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = match (self.label, &self.category) {
            (Some(MemoryLabel::Violation), Some(c)) => format!("violation/{c}"),
            (Some(label), _) => label.as_str().to_string(),
            (None, _) => "no verdict".to_string(),
        };
        match self.mode {
            Mode::NoEvidence => {
                write!(f, "memory: no labelled case within similarity {:.2}", self.radius)?;
                if let Some((case, s)) = &self.nearest {
                    write!(f, " (nearest: case {case} at {s:.2})")?;
                }
                return Ok(());
            }
            Mode::Broad => {
                let ids: Vec<&str> = self.entries.iter().map(|e| e.id.as_str()).collect();
                let mut reviewers: Vec<&str> = Vec::new();
                for r in self.entries.iter().flat_map(|e| e.reviewers.iter()) {
                    if !reviewers.contains(&r.as_str()) {
                        reviewers.push(r);
                    }
                }
                let case_ids: Vec<&str> =
                    self.entries.iter().flat_map(|e| e.case_ids.iter().map(String::as_str)).collect();
                write!(
                    f,
                    "memory: broad {} {} ({verdict}; {} of {} labels agree; reviewers {}; cases {})",
                    if ids.len() == 1 { "entry" } else { "entries" },
                    ids.join(" + "),
                    self.entries.iter().map(|e| e.agreeing_cases).sum::<usize>(),
                    self.entries.iter().map(|e| e.cases).sum::<usize>(),
                    reviewers.join(", "),
                    case_ids.join(", ")
                )?;
            }
            Mode::Local => {
                let ok = self.neighbours.iter().filter(|n| n.label == MemoryLabel::Ok).count();
                write!(
                    f,
                    "memory: local vote of the {} nearest labelled cases, which conflict ({} violation, {ok} ok) → {verdict}",
                    self.neighbours.len(),
                    self.neighbours.len() - ok
                )?;
            }
        }
        let gate = if self.acts { "≥" } else { "<" };
        let outcome = if self.acts { "acts" } else { "abstains" };
        write!(
            f,
            "; Beta({:.2}, {:.2}) lower bound {:.2} at {:.0} % {gate} {:.2}, so it {outcome}; neighbours:",
            self.alpha,
            self.beta,
            self.lower_bound,
            self.confidence * 100.0,
            self.threshold
        )?;
        for n in self.neighbours.iter().take(8) {
            let label = match (&n.label, &n.category) {
                (MemoryLabel::Violation, Some(c)) => format!("violation/{c}"),
                (label, _) => label.as_str().to_string(),
            };
            write!(f, " [case {} {label} sim {:.2} by {} at {}", n.case_id, n.similarity, n.reviewer, n.labelled_at)?;
            if let Some(id) = &n.interaction_id {
                write!(f, ", interaction {id}")?;
            }
            write!(f, ": \"{}\"]", shorten(&n.text, 60))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn one_label_is_not_enough_and_two_consistent_ones_are() {
        let bound = |agree: f64, disagree: f64| lower_bound(1.0 + agree, 1.0 + disagree, DEFAULT_CONFIDENCE);
        assert!(bound(1.0, 0.0) < 0.5, "{}", bound(1.0, 0.0));
        assert!(bound(2.0, 0.0) >= 0.5, "{}", bound(2.0, 0.0));
        // Beta(2, 1) has CDF x², so its 20 % quantile is √0.2.
        assert!((bound(1.0, 0.0) - 0.2f64.sqrt()).abs() < 1e-6);
        // A contradicting label needs more agreement to outweigh it.
        assert!(bound(2.0, 1.0) < 0.5, "{}", bound(2.0, 1.0));
        assert!(bound(4.0, 1.0) >= 0.5, "{}", bound(4.0, 1.0));
        // One label each way is no evidence.
        assert!(bound(1.0, 1.0) < 0.5);
    }

    #[test]
    fn invalid_parameters_give_no_bound() {
        assert_eq!(lower_bound(0.0, 1.0, 0.9), 0.0);
        assert_eq!(lower_bound(1.0, 1.0, 1.0), 0.0);
        assert_eq!(lower_bound(f64::NAN, 1.0, 0.9), 0.0);
    }

    #[test]
    fn categories_are_identifiers_other_than_ok() {
        assert!(is_category("product_recall"));
        assert!(!is_category("ok"));
        assert!(!is_category("Product"));
        assert!(!is_category(""));
    }

    proptest! {
        #[test]
        fn the_bound_is_a_probability_below_the_mean(alpha in 0.01f64..500.0, beta in 0.01f64..500.0, confidence in 0.5f64..0.999) {
            let b = lower_bound(alpha, beta, confidence);
            prop_assert!((0.0..=1.0).contains(&b));
            // A strongly skewed posterior can have its median above its mean; the bounds in use
            // (confidence ≥ 0.75, pseudo-counts ≥ 0.5) stay below it.
            prop_assume!(confidence >= 0.75 && alpha >= 0.5 && beta >= 0.5);
            let mean = alpha / (alpha + beta);
            prop_assert!(b <= mean + 1e-9, "bound {b} above the mean {mean}");
        }

        #[test]
        fn the_bound_is_the_quantile(alpha in 0.5f64..200.0, beta in 0.5f64..200.0, confidence in 0.5f64..0.99) {
            let b = lower_bound(alpha, beta, confidence);
            let cdf = statrs::function::beta::beta_reg(alpha, beta, b);
            prop_assert!((cdf - (1.0 - confidence)).abs() < 1e-6, "cdf at the bound {cdf}");
        }

        #[test]
        fn more_agreement_raises_the_bound_and_more_disagreement_lowers_it(
            alpha in 0.5f64..100.0, beta in 0.5f64..100.0, extra in 0.1f64..50.0, confidence in 0.5f64..0.99
        ) {
            let b = lower_bound(alpha, beta, confidence);
            prop_assert!(lower_bound(alpha + extra, beta, confidence) >= b - 1e-9);
            prop_assert!(lower_bound(alpha, beta + extra, confidence) <= b + 1e-9);
        }

        #[test]
        fn a_higher_confidence_is_more_conservative(alpha in 0.5f64..100.0, beta in 0.5f64..100.0, c in 0.5f64..0.98) {
            prop_assert!(lower_bound(alpha, beta, c + 0.01) <= lower_bound(alpha, beta, c) + 1e-9);
        }
    }
}
