//! The runner: every case × repeat against a target, with bounded concurrency, an optional
//! rate limit, retries on transient errors, the response cache, and a progress bar on a TTY.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::Mutex;

use crate::cache::{key_of, Cache};
use crate::error::{EvalError, Result};
use crate::judge::{sha256_hex, JudgeInfo};
use crate::record::{CaseResult, JudgeRecord, KeelInfo, RunRecord, SuiteInfo, Summary, RUN_FORMAT};
use crate::score::{case_status, ExpectationResult, PolicyRole, Scorers, Status};
use crate::suite::{Case, Suite};
use crate::target::{Response, Target, TargetError};

/// How a run runs.
pub struct RunOptions {
    /// Times each case runs (each repeat is its own trial and cache entry).
    pub repeat: u32,
    /// Cases in flight at once.
    pub concurrency: usize,
    /// Most target calls per second (cached answers do not count).
    pub rate: Option<f64>,
    /// Extra attempts after a transient error.
    pub retries: u32,
    /// The response cache.
    pub cache: Arc<Cache<Response>>,
    /// Show a progress bar (only drawn when stderr is a terminal).
    pub progress: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            repeat: 1,
            concurrency: 4,
            rate: None,
            retries: 3,
            cache: Arc::new(Cache::in_memory()),
            progress: false,
        }
    }
}

/// Which of a value-shift suite's policy versions `target` runs; an error when it is neither.
pub fn policy_role(suite: &Suite, target: &dyn Target) -> Result<Option<PolicyRole>> {
    let Some(pair) = &suite.policies else { return Ok(None) };
    let info = target.info();
    let Some(policy) = info.policy else {
        return Err(EvalError::Setup(format!(
            "suite {} compares policy versions {} and {}: run it against a gateway or policy target",
            suite.name, pair.before, pair.after
        )));
    };
    if policy.reference == pair.before {
        Ok(Some(PolicyRole::Before))
    } else if policy.reference == pair.after {
        Ok(Some(PolicyRole::After))
    } else {
        Err(EvalError::Setup(format!(
            "suite {} is written for policy {} (before) and {} (after), not {}",
            suite.name, pair.before, pair.after, policy.reference
        )))
    }
}

/// Spaces target calls at least `1 / rate` seconds apart.
struct Pacer {
    next: Mutex<tokio::time::Instant>,
    gap: Duration,
}

impl Pacer {
    async fn wait(&self) {
        let at = {
            let mut next = self.next.lock().await;
            let now = tokio::time::Instant::now();
            let at = (*next).max(now);
            *next = at + self.gap;
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

/// Runs `suite` (read from `suite_file`) against `target`, scoring with `scorers`.
pub async fn run(
    suite: &Suite,
    suite_file: &str,
    target: Arc<dyn Target>,
    scorers: Arc<Scorers>,
    judge: Option<JudgeInfo>,
    options: &RunOptions,
) -> Result<RunRecord> {
    let role = policy_role(suite, target.as_ref())?;
    let started_at = now();
    let info = target.info();
    let jobs: Vec<(usize, &Case, u32)> = suite
        .cases
        .iter()
        .flat_map(|c| (0..options.repeat.max(1)).map(move |s| (c, s)))
        .enumerate()
        .map(|(i, (c, s))| (i, c, s))
        .collect();
    let bar = if options.progress && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        ProgressBar::with_draw_target(Some(jobs.len() as u64), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {pos}/{len} cases [{bar:30}] {per_sec} eta {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let pacer = options
        .rate
        .filter(|r| *r > 0.0)
        .map(|rate| Pacer { next: Mutex::new(tokio::time::Instant::now()), gap: Duration::from_secs_f64(1.0 / rate) });
    let target_key = json!({"kind": info.kind, "upstream": info.upstream, "model": info.model, "params": info.params, "policy": info.policy});
    let mut results: Vec<(usize, CaseResult)> = futures::stream::iter(jobs)
        .map(|(index, case, sample)| {
            let target = target.clone();
            let scorers = scorers.clone();
            let pacer = pacer.as_ref();
            let bar = bar.clone();
            let target_key = target_key.clone();
            async move {
                let key = key_of(&json!({"target": target_key, "sample": sample, "messages": case.messages}));
                let cached = if target.cacheable() { options.cache.get(&key) } else { None };
                let was_cached = cached.is_some();
                let answer = match cached {
                    Some(response) => Ok(response),
                    None => {
                        let answer = call(target.as_ref(), case, sample, options.retries, pacer).await;
                        if let (Ok(response), true) = (&answer, target.cacheable()) {
                            if let Err(e) = options.cache.put(&key, response) {
                                tracing::warn!(error = %e, "answer not cached");
                            }
                        }
                        answer
                    }
                };
                let result = score(case, sample, answer, was_cached, &scorers).await;
                bar.inc(1);
                (index, result)
            }
        })
        .buffer_unordered(options.concurrency.max(1))
        .collect()
        .await;
    bar.finish_and_clear();
    results.sort_by_key(|(i, _)| *i);
    let results: Vec<CaseResult> = results.into_iter().map(|(_, r)| r).collect();
    let judge = judge.filter(|_| suite.cases.iter().any(|c| c.expect.judge.is_some())).map(|info| {
        let rubrics: Vec<String> =
            suite.cases.iter().filter_map(|c| c.expect.judge.as_ref()).map(|j| sha256_hex(&j.rubric)).collect();
        JudgeRecord { info, rubric_sha256: sha256_hex(&rubrics.join("\n")) }
    });
    Ok(RunRecord {
        format: RUN_FORMAT.to_string(),
        run_id: uuid::Uuid::now_v7().to_string(),
        started_at,
        finished_at: now(),
        suite: SuiteInfo {
            name: suite.name.clone(),
            version: suite.version.clone(),
            sha256: suite.sha256(),
            file: suite_file.to_string(),
            cases: suite.cases.len(),
        },
        target: info,
        policy_role: role,
        repeat: options.repeat.max(1),
        keel: KeelInfo::current(),
        judge,
        summary: Summary::of(&results),
        results,
    })
}

fn now() -> String {
    OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default()
}

/// Calls the target, retrying transient errors with growing delays.
async fn call(
    target: &dyn Target,
    case: &Case,
    sample: u32,
    retries: u32,
    pacer: Option<&Pacer>,
) -> std::result::Result<Response, String> {
    let mut attempt = 0;
    loop {
        if let Some(pacer) = pacer {
            pacer.wait().await;
        }
        match target.respond(case, sample).await {
            Ok(response) => return Ok(response),
            Err(TargetError::Transient(e)) if attempt < retries => {
                attempt += 1;
                tracing::debug!(case = %case.id, attempt, error = %e, "transient error, retrying");
                tokio::time::sleep(Duration::from_millis(250 << attempt.min(5))).await;
            }
            Err(TargetError::Transient(e)) => return Err(format!("{e} (after {} attempts)", attempt + 1)),
            Err(TargetError::Failed(e)) => return Err(e),
        }
    }
}

async fn score(
    case: &Case,
    sample: u32,
    answer: std::result::Result<Response, String>,
    cached: bool,
    scorers: &Scorers,
) -> CaseResult {
    let base = CaseResult {
        id: case.id.clone(),
        sample,
        category: case.category.clone(),
        tags: case.tags.clone(),
        prompt: case.prompt().to_string(),
        status: Status::Error,
        score: 0.0,
        reason: String::new(),
        output: None,
        decision: None,
        decisions: Vec::new(),
        checks_hit: Vec::new(),
        latency_ms: None,
        cached,
        refused: false,
        leaked: Vec::new(),
        expectations: Vec::new(),
        judge: None,
        human_label: case.human_label,
    };
    match answer {
        Err(e) => CaseResult {
            reason: format!("target: {e}"),
            expectations: vec![ExpectationResult {
                name: "target".into(),
                status: Status::Error,
                detail: e,
                value: None,
            }],
            ..base
        },
        Ok(response) => {
            let scored = scorers.score(case, &response).await;
            let (status, score, reason) = case_status(&scored.expectations);
            CaseResult {
                status,
                score,
                reason,
                output: Some(response.output),
                decision: response.decision,
                decisions: response.decisions,
                checks_hit: response.checks_hit,
                latency_ms: Some(response.latency_ms),
                refused: scored.refused,
                leaked: scored.leaked,
                expectations: scored.expectations,
                judge: scored.judge,
                ..base
            }
        }
    }
}
