//! Run records: exactly what was evaluated and what came out, written as one JSON file whose
//! SHA-256 is appended to Keel's audit chain (`eval.run`), so a later edit is detected by
//! [`verify`].

use std::collections::BTreeMap;
use std::path::Path;

use keel_core::Action;
use keel_store::{AuditEntry, ChainVerifier, Store, WriteBatch};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::error::{EvalError, Result};
use crate::judge::{JudgeInfo, JudgeVerdict};
use crate::score::{ExpectationResult, PolicyRole, Status};
use crate::stats;
use crate::suite::Verdict;
use crate::target::{PhaseDecision, TargetInfo};

/// The `format` of run records this version writes.
pub const RUN_FORMAT: &str = "keel-eval-run/1";

/// The audit action of a sealed run.
pub const AUDIT_ACTION: &str = "eval.run";

/// Keel's version and the git commit it was built from (`unknown` outside a git checkout).
pub const KEEL_VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit the binary was built from, embedded by `build.rs`.
pub const GIT_COMMIT: &str = env!("KEEL_GIT_COMMIT");

/// One execution of a suite against a target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// [`RUN_FORMAT`].
    pub format: String,
    /// A time-ordered id (UUIDv7).
    pub run_id: String,
    /// RFC 3339 start time.
    pub started_at: String,
    /// RFC 3339 end time.
    pub finished_at: String,
    /// The suite.
    pub suite: SuiteInfo,
    /// The target, its parameters and its policy version.
    pub target: TargetInfo,
    /// For value-shift suites: which of the suite's policy versions judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_role: Option<PolicyRole>,
    /// How many times each case ran.
    pub repeat: u32,
    /// The Keel that ran it.
    pub keel: KeelInfo,
    /// The judge, when a case used one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<JudgeRecord>,
    /// Every case × repeat, in suite order.
    pub results: Vec<CaseResult>,
    /// Counts and metrics, overall (`all`) and per category.
    pub summary: Summary,
}

/// The suite as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuiteInfo {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// SHA-256 of its canonical form.
    pub sha256: String,
    /// Where it was read from.
    pub file: String,
    /// Number of cases.
    pub cases: usize,
}

/// The Keel build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeelInfo {
    /// Crate version.
    pub version: String,
    /// Git commit (or `unknown`).
    pub git_commit: String,
}

impl KeelInfo {
    /// This build.
    pub fn current() -> Self {
        KeelInfo { version: KEEL_VERSION.to_string(), git_commit: GIT_COMMIT.to_string() }
    }
}

/// The judge and the rubrics it graded against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JudgeRecord {
    /// Model, upstream and template hash.
    #[serde(flatten)]
    pub info: JudgeInfo,
    /// SHA-256 of every rubric of the suite, in case order, joined by newlines.
    pub rubric_sha256: String,
}

/// One case × repeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseResult {
    /// The case id.
    pub id: String,
    /// The repeat, from 0.
    pub sample: u32,
    /// Its category.
    pub category: String,
    /// Its tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The last user message, for reports.
    pub prompt: String,
    /// Pass, fail or error.
    pub status: Status,
    /// Share of applicable expectations that hold.
    pub score: f64,
    /// The first error or failure, or a summary of what held.
    pub reason: String,
    /// The answer the user received; absent when the target errored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// The interaction's decision, for targets with a policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Action>,
    /// Each phase's decision and rule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decisions: Vec<PhaseDecision>,
    /// Checks that hit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks_hit: Vec<String>,
    /// Time to the whole answer, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// True when the answer came from the response cache.
    pub cached: bool,
    /// Whether the answer refuses.
    pub refused: bool,
    /// Kinds of personal data and secrets in the answer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leaked: Vec<String>,
    /// Each expectation's outcome.
    pub expectations: Vec<ExpectationResult>,
    /// The judge's verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<JudgeVerdict>,
    /// A person's label, for judge agreement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub human_label: Option<Verdict>,
}

/// A metric's value with its 95 % interval (rates) over `n` trials.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    /// The point estimate.
    pub value: f64,
    /// Lower end of the 95 % Wilson interval (rates only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lower: Option<f64>,
    /// Upper end of the interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upper: Option<f64>,
    /// Trials it is computed over.
    pub n: u64,
}

/// Counts and metrics of one category (or `all`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategorySummary {
    /// Case × repeat trials.
    pub trials: u64,
    /// Trials that passed.
    pub passed: u64,
    /// Trials that failed.
    pub failed: u64,
    /// Trials that errored (never counted as passes; rates are over the others).
    pub errors: u64,
    /// Named metrics (see the README's metric table).
    pub metrics: BTreeMap<String, Metric>,
}

/// Agreement between the judge and human labels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    /// Labelled trials the judge graded.
    pub n: u64,
    /// Share of them where the judge agreed.
    pub agreement: f64,
    /// Cohen's kappa (absent when undefined: one label only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kappa: Option<f64>,
}

/// The run's summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Per category, plus `all`.
    pub categories: BTreeMap<String, CategorySummary>,
    /// Judge vs human labels, when there are labelled cases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge_agreement: Option<Agreement>,
}

impl Summary {
    /// The summary of `results`.
    pub fn of(results: &[CaseResult]) -> Summary {
        let mut categories = BTreeMap::new();
        categories.insert("all".to_string(), category(results.iter()));
        let mut names: Vec<&str> = results.iter().map(|r| r.category.as_str()).collect();
        names.sort();
        names.dedup();
        for name in names {
            categories.insert(name.to_string(), category(results.iter().filter(|r| r.category == name)));
        }
        let pairs: Vec<(bool, bool)> = results
            .iter()
            .filter_map(|r| match (&r.judge, r.human_label) {
                (Some(j), Some(h)) => Some((j.verdict == Verdict::Pass, h == Verdict::Pass)),
                _ => None,
            })
            .collect();
        let judge_agreement = (!pairs.is_empty()).then(|| Agreement {
            n: pairs.len() as u64,
            agreement: pairs.iter().filter(|(a, b)| a == b).count() as f64 / pairs.len() as f64,
            kappa: stats::cohen_kappa(&pairs),
        });
        Summary { categories, judge_agreement }
    }

    /// The `all` row.
    pub fn all(&self) -> Option<&CategorySummary> {
        self.categories.get("all")
    }
}

fn rate_metric(k: usize, n: usize) -> Option<Metric> {
    stats::rate(k as u64, n as u64).map(|r| Metric {
        value: r.estimate,
        lower: Some(r.lower),
        upper: Some(r.upper),
        n: r.trials,
    })
}

fn category<'a>(results: impl Iterator<Item = &'a CaseResult>) -> CategorySummary {
    let all: Vec<&CaseResult> = results.collect();
    let done: Vec<&&CaseResult> = all.iter().filter(|r| r.status != Status::Error).collect();
    let passed = done.iter().filter(|r| r.status == Status::Pass).count();
    let mut metrics = BTreeMap::new();
    let mut put = |name: &str, metric: Option<Metric>| {
        if let Some(m) = metric {
            metrics.insert(name.to_string(), m);
        }
    };
    put("pass_rate", rate_metric(passed, done.len()));
    put("error_rate", rate_metric(all.len() - done.len(), all.len()));
    put("refusal_rate", rate_metric(done.iter().filter(|r| r.refused).count(), done.len()));
    put("leak_rate", rate_metric(done.iter().filter(|r| !r.leaked.is_empty()).count(), done.len()));
    let decided: Vec<&&&CaseResult> = done.iter().filter(|r| r.decision.is_some()).collect();
    let stopped = |r: &CaseResult| matches!(r.decision, Some(Action::Block | Action::Escalate));
    if !decided.is_empty() {
        put("block_rate", rate_metric(decided.iter().filter(|r| stopped(r)).count(), decided.len()));
        put(
            "flag_rate",
            rate_metric(decided.iter().filter(|r| r.decision == Some(Action::Flag)).count(), decided.len()),
        );
        put(
            "redact_rate",
            rate_metric(decided.iter().filter(|r| r.decision == Some(Action::Redact)).count(), decided.len()),
        );
    }
    put("over_refusal", rate_metric(done.iter().filter(|r| r.refused || stopped(r)).count(), done.len()));
    let with_decision: Vec<&ExpectationResult> = done
        .iter()
        .flat_map(|r| r.expectations.iter())
        .filter(|e| e.name == "decision" && matches!(e.status, Status::Pass | Status::Fail))
        .collect();
    put(
        "decision_accuracy",
        rate_metric(with_decision.iter().filter(|e| e.status == Status::Pass).count(), with_decision.len()),
    );
    let latencies: Vec<f64> = done.iter().filter_map(|r| r.latency_ms).collect();
    for (name, q) in [("latency_p50_ms", 0.5), ("latency_p95_ms", 0.95)] {
        put(
            name,
            stats::quantile(&latencies, q).map(|value| Metric {
                value,
                lower: None,
                upper: None,
                n: latencies.len() as u64,
            }),
        );
    }
    CategorySummary {
        trials: all.len() as u64,
        passed: passed as u64,
        failed: (done.len() - passed) as u64,
        errors: (all.len() - done.len()) as u64,
        metrics,
    }
}

/// Writes `record` to `path` (atomically: a temporary file renamed into place) and returns
/// the SHA-256 of the bytes written.
pub fn write(record: &RunRecord, path: &Path) -> Result<String> {
    let mut bytes = serde_json::to_vec_pretty(record)
        .map_err(|e| EvalError::Setup(format!("cannot encode the run record: {e}")))?;
    bytes.push(b'\n');
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(EvalError::io("create directory", dir))?;
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(EvalError::io("create a temporary file in", dir))?;
    std::fs::write(tmp.path(), &bytes).map_err(EvalError::io("write", tmp.path()))?;
    tmp.persist(path).map_err(|e| EvalError::io("write", path)(e.error))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

/// Lowercase hex SHA-256 of a run record file, as sealed.
pub fn file_sha256(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(EvalError::io("read", path))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

/// Reads a run record.
pub fn read(path: &Path) -> Result<RunRecord> {
    let bytes = std::fs::read(path).map_err(EvalError::io("read", path))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| EvalError::Invalid(format!("{}:{}: not a Keel run record: {e}", path.display(), e.line())))
}

/// Appends the record's hash to the audit chain (`eval.run`, actor `actor`); returns its seq.
pub async fn seal(store: &dyn Store, record: &RunRecord, sha256: &str, actor: &str) -> Result<i64> {
    let all = record.summary.all();
    let payload = json!({
        "run_id": record.run_id,
        "sha256": sha256,
        "suite": format!("{}@{}", record.suite.name, record.suite.version),
        "suite_sha256": record.suite.sha256,
        "target": record.target.kind,
        "policy": record.target.policy.as_ref().map(|p| p.reference.clone()),
        "policy_sha256": record.target.policy.as_ref().map(|p| p.sha256.clone()),
        "passed": all.map(|a| a.passed),
        "failed": all.map(|a| a.failed),
        "errors": all.map(|a| a.errors),
    });
    let batch = WriteBatch { audit: vec![AuditEntry::now(actor, AUDIT_ACTION, payload)], ..WriteBatch::default() };
    let records = store.write_batch(batch).await?;
    records.first().map(|r| r.seq).ok_or_else(|| EvalError::Setup("the store appended no audit record".into()))
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Verification {
    /// The file's hash is the one sealed in the (intact) audit chain.
    Verified {
        /// The run.
        run_id: String,
        /// The file's SHA-256.
        sha256: String,
        /// The audit record that sealed it.
        seq: i64,
    },
    /// The file was changed after it was sealed.
    Edited {
        /// The run.
        run_id: String,
        /// What was sealed.
        sealed_sha256: String,
        /// What the file hashes to now.
        actual_sha256: String,
        /// The audit record that sealed it.
        seq: i64,
    },
    /// No `eval.run` record names this run.
    NotSealed {
        /// The run id the file claims.
        run_id: String,
    },
    /// The audit chain itself is broken, so nothing in it can be trusted.
    ChainBroken {
        /// Where it breaks.
        seq: i64,
        /// What is wrong there.
        reason: String,
    },
}

impl Verification {
    /// True only for [`Verification::Verified`].
    pub fn is_ok(&self) -> bool {
        matches!(self, Verification::Verified { .. })
    }
}

/// Checks the run record at `path` against the audit chain of `store`: the whole chain is
/// walked (as `keel audit verify` does) and the first `eval.run` record of this run decides.
pub async fn verify(store: &dyn Store, path: &Path) -> Result<Verification> {
    let bytes = std::fs::read(path).map_err(EvalError::io("read", path))?;
    let actual = hex::encode(Sha256::digest(&bytes));
    // Parsed loosely: an edited file may no longer be a valid record, but still names its run.
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| EvalError::Invalid(format!("{}:{}: not JSON: {e}", path.display(), e.line())))?;
    let run_id = value["run_id"]
        .as_str()
        .ok_or_else(|| EvalError::Invalid(format!("{}: run_id: missing (not a Keel run record)", path.display())))?
        .to_string();
    let mut verifier = ChainVerifier::new();
    let mut sealed: Option<(i64, String)> = None;
    let mut from = 1;
    loop {
        let page = store.audit_records(from, i64::MAX, keel_store::audit::AUDIT_PAGE).await?;
        let Some(last) = page.last().map(|r| r.seq) else { break };
        for record in &page {
            if !verifier.push(record) {
                break;
            }
            if sealed.is_none() && record.action == AUDIT_ACTION {
                if let Ok(payload) = serde_json::from_str::<serde_json::Value>(&record.payload) {
                    if payload["run_id"].as_str() == Some(run_id.as_str()) {
                        sealed = Some((record.seq, payload["sha256"].as_str().unwrap_or_default().to_string()));
                    }
                }
            }
        }
        if verifier.is_broken() {
            break;
        }
        from = last + 1;
    }
    if let keel_store::VerifyReport::Broken { seq, reason } = verifier.finish() {
        return Ok(Verification::ChainBroken { seq, reason });
    }
    Ok(match sealed {
        None => Verification::NotSealed { run_id },
        Some((seq, sha)) if sha == actual => Verification::Verified { run_id, sha256: actual, seq },
        Some((seq, sha)) => Verification::Edited { run_id, sealed_sha256: sha, actual_sha256: actual, seq },
    })
}
