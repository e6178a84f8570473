//! Memory entries from labelled cases: map review labels to memory labels, redact personal
//! data, let newer labels of a case supersede older ones, and cluster similar cases (by
//! sentence embedding, whatever their labels) into entries whose claimed label is the
//! (age-weighted) majority. Mixed clusters are kept mixed on purpose: their disagreement is
//! the evidence the check's Beta gate weighs, and their local conflicts are what its
//! neighbour vote resolves.

use std::collections::HashMap;

use keel_models::Embedder;
use keel_policy::detect::{PiiDetector, PiiKind};
use keel_policy::memory::{MemoryCase, MemoryEntry, MemoryLabel, UNSPECIFIED_CATEGORY};
use keel_policy::text::redact;
use keel_policy::Lang;
use serde::Serialize;
use time::OffsetDateTime;

use crate::error::{AdaptError, Result};
use crate::labels::{format_time, LabelledCase, ReviewLabel};

/// Default [`BuildSettings::cluster_similarity`].
pub const DEFAULT_CLUSTER_SIMILARITY: f64 = 0.65;
/// Default [`BuildSettings::cluster_similarity_ja`] (see `keel_policy::memory::DEFAULT_RADIUS_JA`).
pub const DEFAULT_CLUSTER_SIMILARITY_JA: f64 = 0.85;

/// How entries are built.
#[derive(Debug, Clone)]
pub struct BuildSettings {
    /// A case joins the cluster holding its most similar case when that similarity is at
    /// least this (single linkage, in label-time order); otherwise it starts a new entry.
    pub cluster_similarity: f64,
    /// The same for Japanese cases, whose similarities run high with the English MiniLM.
    pub cluster_similarity_ja: f64,
    /// Replace personal data in case texts with typed placeholders before they enter the
    /// policy file (the texts are stored in every version of it).
    pub redact_pii: bool,
    /// The memory check's `half_life_days`, so entry labels follow the same weights.
    pub half_life_days: Option<f64>,
    /// Which labelled texts the memory judges: `wrong_answer` labels are about answers, so
    /// they become violations (category `wrong_answer`) only for output memories.
    pub output_memory: bool,
}

impl Default for BuildSettings {
    fn default() -> Self {
        BuildSettings {
            cluster_similarity: DEFAULT_CLUSTER_SIMILARITY,
            cluster_similarity_ja: DEFAULT_CLUSTER_SIMILARITY_JA,
            redact_pii: true,
            half_life_days: None,
            output_memory: false,
        }
    }
}

/// What building did with the labels.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BuildReport {
    /// Labels given.
    pub labels: usize,
    /// Cases already in the base policy's memory.
    pub existing_cases: usize,
    /// Labels superseded by a later label of the same case.
    pub superseded: usize,
    /// `wrong_answer` labels left out (they do not describe an input memory's texts).
    pub skipped_wrong_answer: usize,
    /// Case texts in which personal data was replaced.
    pub redacted: usize,
    /// Cases in the memory now.
    pub cases: usize,
    /// Entries, and how many claim `violation` / `ok`.
    pub entries: usize,
    /// Entries claiming violation.
    pub violation_entries: usize,
    /// Entries claiming ok.
    pub ok_entries: usize,
    /// Entries whose cases disagree.
    pub mixed_entries: usize,
}

/// The memory label a review label means, or `None` when it says nothing about the texts.
pub fn memory_label(case: &LabelledCase, output_memory: bool) -> Option<(MemoryLabel, Option<String>)> {
    match case.label {
        ReviewLabel::Violation => Some((
            MemoryLabel::Violation,
            Some(case.category.clone().unwrap_or_else(|| UNSPECIFIED_CATEGORY.to_string())),
        )),
        ReviewLabel::Ok | ReviewLabel::OverRefusal => Some((MemoryLabel::Ok, None)),
        ReviewLabel::WrongAnswer if output_memory => Some((MemoryLabel::Violation, Some("wrong_answer".to_string()))),
        ReviewLabel::WrongAnswer => None,
    }
}

/// Builds entries from the cases already in a memory and new labels.
pub fn build_entries(
    existing: &[MemoryEntry],
    labels: &[LabelledCase],
    embedder: &dyn Embedder,
    settings: &BuildSettings,
) -> Result<(Vec<MemoryEntry>, BuildReport)> {
    let valid = |s: f64| s > 0.0 && s <= 1.0;
    if !valid(settings.cluster_similarity) || !valid(settings.cluster_similarity_ja) {
        return Err(AdaptError::Options("cluster similarity must be greater than 0 and at most 1".into()));
    }
    let mut report = BuildReport { labels: labels.len(), ..BuildReport::default() };
    let pii = settings.redact_pii.then(|| PiiDetector::new(&PiiKind::ALL[..]));

    // Every case once: the latest label of a case id wins (ties: the later in the input).
    let mut by_id: HashMap<String, (OffsetDateTime, MemoryCase)> = HashMap::new();
    let mut keep = |time: OffsetDateTime, case: MemoryCase, report: &mut BuildReport| match by_id.get(&case.case_id) {
        Some((old, _)) if *old > time => report.superseded += 1,
        Some(_) => {
            report.superseded += 1;
            by_id.insert(case.case_id.clone(), (time, case));
        }
        None => {
            by_id.insert(case.case_id.clone(), (time, case));
        }
    };
    for case in existing.iter().flat_map(|e| e.cases.iter()) {
        report.existing_cases += 1;
        let time = keel_policy::memory::parse_time(&case.labelled_at).unwrap_or(OffsetDateTime::UNIX_EPOCH);
        keep(time, case.clone(), &mut report);
    }
    for label in labels {
        let Some((memory_label, category)) = memory_label(label, settings.output_memory) else {
            report.skipped_wrong_answer += 1;
            continue;
        };
        let text = match &pii {
            Some(detector) => {
                let findings = detector.find(&label.text);
                if findings.is_empty() {
                    label.text.clone()
                } else {
                    report.redacted += 1;
                    redact(&label.text, &findings.iter().collect::<Vec<_>>())
                }
            }
            None => label.text.clone(),
        };
        let case = MemoryCase {
            case_id: label.case_id.clone(),
            interaction_id: label.interaction_id.clone(),
            reviewer: label.reviewer.clone(),
            labelled_at: format_time(label.labelled_at),
            label: memory_label,
            category,
            review_label: Some(label.label.as_str().to_string()),
            text,
        };
        keep(label.labelled_at, case, &mut report);
    }
    let mut cases: Vec<(OffsetDateTime, MemoryCase)> = by_id.into_values().collect();
    cases.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.case_id.cmp(&b.1.case_id)));
    report.cases = cases.len();
    if cases.is_empty() {
        return Ok((Vec::new(), report));
    }

    let texts: Vec<&str> = cases.iter().map(|(_, c)| c.text.as_str()).collect();
    let vectors = embedder.embed(&texts).map_err(|e| AdaptError::Embed(e.to_string()))?;
    let mut clusters: Vec<Vec<usize>> = Vec::new();
    let mut cluster_of: Vec<usize> = Vec::with_capacity(cases.len());
    for i in 0..cases.len() {
        let threshold = match Lang::detect(&cases[i].1.text) {
            Lang::Ja => settings.cluster_similarity_ja,
            Lang::En => settings.cluster_similarity,
        };
        let best = (0..i)
            .map(|j| (cluster_of[j], dot(&vectors[i], &vectors[j])))
            .filter(|&(_, s)| s >= threshold)
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)));
        let cluster = match best {
            Some((cluster, _)) => cluster,
            None => {
                clusters.push(Vec::new());
                clusters.len() - 1
            }
        };
        clusters[cluster].push(i);
        cluster_of.push(cluster);
    }

    let newest = cases.iter().map(|(t, _)| *t).max().unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let weight = |time: OffsetDateTime| match settings.half_life_days {
        Some(h) if h > 0.0 => 0.5f64.powf(((newest - time).as_seconds_f64() / 86_400.0).max(0.0) / h),
        _ => 1.0,
    };
    let mut entries = Vec::with_capacity(clusters.len());
    for members in clusters {
        let (mut violation, mut ok) = (0.0, 0.0);
        let mut categories: Vec<(String, f64)> = Vec::new();
        for &m in &members {
            let (time, case) = &cases[m];
            let w = weight(*time);
            match case.label {
                MemoryLabel::Violation => {
                    violation += w;
                    let c = case.category.clone().unwrap_or_else(|| UNSPECIFIED_CATEGORY.to_string());
                    match categories.iter_mut().find(|(name, _)| *name == c) {
                        Some((_, total)) => *total += w,
                        None => categories.push((c, w)),
                    }
                }
                MemoryLabel::Ok => ok += w,
            }
        }
        // Ties go to the most recent case's label: a changed norm shows first in new labels.
        let latest = members.iter().copied().max_by_key(|&m| cases[m].0).map(|m| cases[m].1.label);
        let label = if violation > ok {
            MemoryLabel::Violation
        } else if ok > violation {
            MemoryLabel::Ok
        } else {
            latest.unwrap_or(MemoryLabel::Ok)
        };
        let category = (label == MemoryLabel::Violation).then(|| {
            categories
                .iter()
                .fold(None::<&(String, f64)>, |best, c| match best {
                    Some(b) if b.1 >= c.1 => Some(b),
                    _ => Some(c),
                })
                .map(|(c, _)| c.clone())
                .unwrap_or_else(|| UNSPECIFIED_CATEGORY.to_string())
        });
        let members: Vec<MemoryCase> = members.iter().map(|&m| cases[m].1.clone()).collect();
        if members.iter().any(|c| c.label != label) {
            report.mixed_entries += 1;
        }
        match label {
            MemoryLabel::Violation => report.violation_entries += 1,
            MemoryLabel::Ok => report.ok_entries += 1,
        }
        entries.push(MemoryEntry { id: format!("e-{}", members[0].case_id), label, category, cases: members });
    }
    report.entries = entries.len();
    Ok((entries, report))
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum()
}
