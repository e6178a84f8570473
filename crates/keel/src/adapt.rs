//! `keel policy candidate` and `keel bench adapt`: the CLI over `keel-adapt`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use keel_adapt::bench::{BenchOptions, BenchReport};
use keel_adapt::{build_candidate, parse_jsonl, BuildSettings, CandidateOptions};
use keel_core::Action;
use keel_models::Embedder;
use keel_policy::file::PhaseSelector;
use keel_policy::Models;

use crate::{config, models};

/// What `keel policy candidate` was asked for.
pub struct CandidateArgs {
    pub labels: PathBuf,
    pub base: PathBuf,
    pub output: PathBuf,
    pub version: Option<String>,
    pub check: String,
    pub phase: PhaseSelector,
    pub action: Action,
    pub priority: i32,
    pub lift: Vec<String>,
    pub cluster_similarity: f64,
    pub half_life_days: Option<f64>,
    pub keep_pii: bool,
    pub json: bool,
}

/// The embedder and classifier (pulled on first use), as `keel serve` loads them.
async fn load_models() -> anyhow::Result<models::Embedding> {
    let home = config::keel_home();
    let paths = keel_models::ModelPaths::from_env()
        .unwrap_or_else(|| keel_models::ModelPaths::in_models_dir(&keel_models::models_dir(&home)));
    models::load_embedding(&paths, &home).await
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Builds a candidate version and writes it to `--output`; the base file is only read.
pub async fn candidate(args: CandidateArgs) -> anyhow::Result<String> {
    if same_file(&args.base, &args.output) {
        anyhow::bail!(
            "{}: the candidate must go to a new file; the base version is never edited",
            args.output.display()
        );
    }
    let labels_text = std::fs::read_to_string(&args.labels)
        .with_context(|| format!("{}: cannot read the labels file", args.labels.display()))?;
    let labels = parse_jsonl(&args.labels.display().to_string(), &labels_text)?;
    let base_text = std::fs::read_to_string(&args.base)
        .with_context(|| format!("{}: cannot read the base policy", args.base.display()))?;
    let loaded = load_models().await?;
    let models = Models { embedder: Some(loaded.embedder), classifier: Some(loaded.classifier) };
    let options = CandidateOptions {
        check_name: args.check,
        phase: args.phase,
        version: args.version,
        violation_action: args.action,
        rule_priority: args.priority,
        lift_rules: args.lift,
        build: BuildSettings {
            cluster_similarity: args.cluster_similarity,
            redact_pii: !args.keep_pii,
            half_life_days: args.half_life_days,
            ..BuildSettings::default()
        },
    };
    let (base, output) = (args.base.display().to_string(), args.output.display().to_string());
    let candidate =
        tokio::task::spawn_blocking(move || build_candidate(&base, &base_text, &output, &labels, &models, &options))
            .await??;
    std::fs::write(&args.output, &candidate.text)
        .with_context(|| format!("{}: cannot write the candidate", args.output.display()))?;
    if args.json {
        let mut value = serde_json::to_value(&candidate)?;
        if let Some(object) = value.as_object_mut() {
            object.remove("text");
            object.insert("file".into(), args.output.display().to_string().into());
        }
        return Ok(format!("{}\n", serde_json::to_string_pretty(&value)?));
    }
    let r = &candidate.report;
    let mut out = format!(
        "wrote candidate {} to {} (parent {}, sha256 {})\n",
        candidate.reference,
        args.output.display(),
        candidate.parent,
        candidate.sha256
    );
    out.push_str(&format!(
        "  labels {}  existing cases {}  superseded {}  wrong_answer skipped {}  redacted {}\n  memory: {} cases in {} entries ({} violation, {} ok, {} mixed)\n",
        r.labels, r.existing_cases, r.superseded, r.skipped_wrong_answer, r.redacted, r.cases, r.entries,
        r.violation_entries, r.ok_entries, r.mixed_entries
    ));
    if candidate.created_check {
        out.push_str("  added the memory check and its violation rule\n");
    }
    for rule in &candidate.lifted {
        out.push_str(&format!("  rule `{rule}` is lifted where the memory is confident the text is fine\n"));
    }
    out.push_str("The base version is unchanged; review the candidate (`keel policy check`) before promoting it.\n");
    Ok(out)
}

/// What `keel bench adapt` was asked for; unset values keep the preset's.
pub struct BenchArgs {
    pub quick: bool,
    pub seed: Option<u64>,
    pub items: Option<usize>,
    pub label_rate: Option<f64>,
    pub radius: Option<f64>,
    pub cluster_similarity: Option<f64>,
    pub half_life_days: Option<f64>,
    pub json: bool,
}

/// Runs the adaptation benchmark on the real MiniLM embedder.
pub async fn bench(args: BenchArgs) -> anyhow::Result<String> {
    let mut options = if args.quick { BenchOptions::quick() } else { BenchOptions::full() };
    let json = args.json;
    if let Some(seed) = args.seed {
        options.seed = seed;
    }
    if let Some(v) = args.items {
        options.items = v;
    }
    if let Some(v) = args.label_rate {
        options.label_rate = v;
    }
    if let Some(v) = args.radius {
        options.radius = v;
    }
    if let Some(v) = args.cluster_similarity {
        options.cluster_similarity = v;
    }
    if let Some(v) = args.half_life_days {
        options.half_life_days = v;
    }
    let embedder: Arc<dyn Embedder> = load_models().await?.embedder;
    let report: BenchReport = tokio::task::spawn_blocking(move || keel_adapt::bench::run(&options, embedder)).await??;
    if json {
        Ok(format!("{}\n", serde_json::to_string_pretty(&report)?))
    } else {
        Ok(report.to_string())
    }
}
