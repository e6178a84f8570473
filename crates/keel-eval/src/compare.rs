//! Comparing two runs case by case: which cases got worse, which better, which decisions
//! changed, and McNemar's exact test on the paired pass/fail outcomes, so a drop within noise
//! is not called a regression.

use std::collections::{BTreeMap, HashMap};

use keel_core::Action;
use serde::{Deserialize, Serialize};

use crate::record::{CaseResult, RunRecord};
use crate::score::Status;
use crate::stats::mcnemar_exact;

/// Significance level below which a drop counts as a regression.
pub const ALPHA: f64 = 0.05;

/// One case × repeat whose outcome differs between the runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The case id.
    pub id: String,
    /// The repeat.
    pub sample: u32,
    /// Its category.
    pub category: String,
    /// Status in run A.
    pub from: Status,
    /// Status in run B.
    pub to: Status,
    /// Why, in run B.
    pub reason: String,
}

/// One case whose decision differs between the runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionChange {
    /// The case id.
    pub id: String,
    /// The repeat.
    pub sample: u32,
    /// The decision in run A.
    pub from: Option<Action>,
    /// The decision in run B.
    pub to: Option<Action>,
}

/// The paired test of one group of cases.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PairedTest {
    /// Pairs compared (both runs passed or failed).
    pub pairs: u64,
    /// Pass in A, fail in B.
    pub worse: u64,
    /// Fail in A, pass in B.
    pub better: u64,
    /// McNemar's exact two-sided p-value.
    pub p_value: f64,
    /// True when B is worse and the p-value is below [`ALPHA`].
    pub regression: bool,
}

impl PairedTest {
    fn of(worse: u64, better: u64, pairs: u64) -> Self {
        let p_value = mcnemar_exact(worse, better);
        PairedTest { pairs, worse, better, p_value, regression: worse > better && p_value < ALPHA }
    }
}

/// What changed from run A to run B.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// Run A.
    pub run_a: String,
    /// Run B.
    pub run_b: String,
    /// True when both ran the same suite content.
    pub same_suite: bool,
    /// The test over all cases.
    pub overall: PairedTest,
    /// The test per category.
    pub categories: BTreeMap<String, PairedTest>,
    /// Cases that passed in A and fail in B.
    pub regressions: Vec<Change>,
    /// Cases that failed in A and pass in B.
    pub improvements: Vec<Change>,
    /// Cases that errored in either run (left out of the test).
    pub errors: Vec<Change>,
    /// Cases only one run has.
    pub unpaired: Vec<String>,
    /// Cases whose decision changed.
    pub decision_changes: Vec<DecisionChange>,
}

/// Compares run `a` (the baseline) with run `b`.
pub fn compare(a: &RunRecord, b: &RunRecord) -> Comparison {
    let index: HashMap<(&str, u32), &CaseResult> = a.results.iter().map(|r| ((r.id.as_str(), r.sample), r)).collect();
    let mut seen = std::collections::HashSet::new();
    let (mut regressions, mut improvements, mut errors, mut unpaired, mut decision_changes) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut per_category: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    let (mut worse, mut better, mut pairs) = (0, 0, 0);
    for rb in &b.results {
        let Some(ra) = index.get(&(rb.id.as_str(), rb.sample)) else {
            unpaired.push(format!("{}#{} (only in B)", rb.id, rb.sample));
            continue;
        };
        seen.insert((rb.id.as_str(), rb.sample));
        let change = Change {
            id: rb.id.clone(),
            sample: rb.sample,
            category: rb.category.clone(),
            from: ra.status,
            to: rb.status,
            reason: rb.reason.clone(),
        };
        if ra.decision != rb.decision {
            decision_changes.push(DecisionChange {
                id: rb.id.clone(),
                sample: rb.sample,
                from: ra.decision,
                to: rb.decision,
            });
        }
        if ra.status == Status::Error || rb.status == Status::Error {
            if ra.status != rb.status {
                errors.push(change);
            }
            continue;
        }
        let entry = per_category.entry(rb.category.clone()).or_default();
        pairs += 1;
        entry.2 += 1;
        match (ra.status, rb.status) {
            (Status::Pass, Status::Fail) => {
                worse += 1;
                entry.0 += 1;
                regressions.push(change);
            }
            (Status::Fail, Status::Pass) => {
                better += 1;
                entry.1 += 1;
                improvements.push(change);
            }
            _ => {}
        }
    }
    for ra in &a.results {
        if !seen.contains(&(ra.id.as_str(), ra.sample)) {
            unpaired.push(format!("{}#{} (only in A)", ra.id, ra.sample));
        }
    }
    Comparison {
        run_a: a.run_id.clone(),
        run_b: b.run_id.clone(),
        same_suite: a.suite.sha256 == b.suite.sha256,
        overall: PairedTest::of(worse, better, pairs),
        categories: per_category.into_iter().map(|(k, (w, b, n))| (k, PairedTest::of(w, b, n))).collect(),
        regressions,
        improvements,
        errors,
        unpaired,
        decision_changes,
    }
}

impl Comparison {
    /// True when some group shows a significant regression.
    pub fn has_regression(&self) -> bool {
        self.overall.regression || self.categories.values().any(|t| t.regression)
    }

    /// A readable report.
    pub fn render(&self) -> String {
        let mut out = format!("compare {} → {}\n", self.run_a, self.run_b);
        if !self.same_suite {
            out.push_str("note: the runs used different suite contents; cases are paired by id\n");
        }
        out.push_str(&format!(
            "{:<16} {:>6} {:>6} {:>6} {:>9}  verdict\n",
            "category", "pairs", "worse", "better", "p"
        ));
        let mut rows: Vec<(&str, &PairedTest)> = self.categories.iter().map(|(k, v)| (k.as_str(), v)).collect();
        rows.push(("all", &self.overall));
        for (name, t) in rows {
            let verdict = if t.regression {
                "REGRESSION".to_string()
            } else if t.worse > t.better {
                "worse, within noise".to_string()
            } else if t.better > t.worse {
                "better".to_string()
            } else {
                "no change".to_string()
            };
            out.push_str(&format!(
                "{:<16} {:>6} {:>6} {:>6} {:>9.4}  {verdict}\n",
                name, t.pairs, t.worse, t.better, t.p_value
            ));
        }
        for (title, list) in [
            ("regressions (pass → fail)", &self.regressions),
            ("improvements (fail → pass)", &self.improvements),
            ("errors", &self.errors),
        ] {
            if !list.is_empty() {
                out.push_str(&format!("\n{title}:\n"));
                for c in list {
                    out.push_str(&format!(
                        "  {}#{} [{}] {} → {}: {}\n",
                        c.id,
                        c.sample,
                        c.category,
                        c.from.as_str(),
                        c.to.as_str(),
                        c.reason
                    ));
                }
            }
        }
        if !self.decision_changes.is_empty() {
            out.push_str("\ndecision changes:\n");
            for d in &self.decision_changes {
                let name = |a: Option<Action>| a.map_or("none", |a| a.as_str());
                out.push_str(&format!("  {}#{}: {} → {}\n", d.id, d.sample, name(d.from), name(d.to)));
            }
        }
        for u in &self.unpaired {
            out.push_str(&format!("unpaired: {u}\n"));
        }
        out
    }
}
