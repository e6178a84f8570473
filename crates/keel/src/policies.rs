//! `keel policy …`: policy files and stored policy versions — check, add, list, show,
//! approve, promote, withdraw, rollback, diff. Commands that change the store act as an
//! admin token (see [`crate::identity`]); running gateways apply the change within their
//! poll interval.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::Subcommand;
use keel_core::{Permission, PolicyRef};
use keel_policy::Policy;
use keel_store::lifecycle::parse_policy_ref;
use keel_store::{ChangeError, NewPolicyVersion, PolicyStatus, PolicyVersion, Promotion, Store};
use time::format_description::well_known::Rfc3339;

use crate::identity::{act_as, StoreArgs, TokenArg};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy file and print its checks and rules.
    Check {
        /// The policy file.
        file: PathBuf,
    },
    /// Build a candidate version from labelled cases: the base's text with its memory updated.
    Candidate {
        /// Labelled cases, one JSON object per line (see the README's "Policy memory").
        #[arg(long = "from-labels", value_name = "FILE.jsonl", required_unless_present = "from_review")]
        from_labels: Option<PathBuf>,
        /// Take the labels from the review queue's labelled cases instead (written next to
        /// the candidate as NEW_FILE.labels.jsonl, for the record).
        #[arg(long, conflicts_with = "from_labels")]
        from_review: bool,
        /// With --from-review: only cases labelled since (14d, 12h, or an RFC 3339 time).
        #[arg(long, requires = "from_review")]
        since: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
        /// The base policy version (only read, never changed).
        #[arg(long, value_name = "POLICY_FILE")]
        base: PathBuf,
        /// Where to write the candidate (a new file).
        #[arg(long, short, value_name = "NEW_FILE")]
        output: PathBuf,
        /// The candidate's version (default: the base's with `-mem.N` bumped).
        #[arg(long)]
        version: Option<String>,
        /// Name of the memory check (created if the base has none).
        #[arg(long, default_value = "memory")]
        check: String,
        /// Phase of a created memory check: input, output or both.
        #[arg(long, default_value = "input", value_parser = parse_phase)]
        phase: keel_policy::file::PhaseSelector,
        /// Action of the rule a created memory check gets.
        #[arg(long, default_value = "block", value_parser = parse_action)]
        action: keel_core::Action,
        /// Priority of that rule.
        #[arg(long, default_value_t = keel_adapt::candidate::DEFAULT_RULE_PRIORITY)]
        priority: i32,
        /// A rule that confident "ok" memory may lift (over-refusals); repeatable.
        #[arg(long)]
        lift: Vec<String>,
        /// Similarity at which a case joins an existing entry's cluster.
        #[arg(long, default_value_t = keel_adapt::build::DEFAULT_CLUSTER_SIMILARITY)]
        cluster_similarity: f64,
        /// Age half-life of labels for a created memory check, in days (default: no decay).
        #[arg(long)]
        half_life_days: Option<f64>,
        /// Keep personal data in case texts (default: replaced with [KIND] placeholders).
        #[arg(long)]
        keep_pii: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Re-judge stored interactions with a candidate version and the active one, score both
    /// against reviewers' labels, gate the result and record it as the candidate's replay gate
    /// run. Exits 1 when the gate fails (the failing run is recorded too).
    Replay {
        /// NAME@VERSION of the stored candidate.
        #[arg(long)]
        candidate: String,
        /// How far back to replay: 14d, 12h, 30m, or an RFC 3339 time.
        #[arg(long, default_value = "14d")]
        since: String,
        /// The replay gate file (TOML: f1_drop_max, over_refusal_max, min_labelled), or
        /// `default` for the shipped gate.
        #[arg(long, default_value = "default")]
        gate: String,
        /// Differing interactions to show as examples.
        #[arg(long, default_value_t = 10)]
        examples: usize,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        token: TokenArg,
    },
    /// Store a policy file as a new draft version (a file it extends is folded in).
    Add {
        /// The policy file; its `name` and `version` name the stored version.
        file: PathBuf,
        /// The version it is based on (default: the `parent` the file records, else the
        /// active version of its name).
        #[arg(long)]
        parent: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        token: TokenArg,
    },
    /// List stored versions (of one policy name, or all) and what is in force.
    List {
        /// Only this policy name.
        name: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one version: status, people, history, gate runs, shadow report and text.
    Show {
        /// NAME@VERSION.
        policy: String,
        #[command(flatten)]
        store: StoreArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Print only the stored text (e.g. to evaluate exactly what is stored).
        #[arg(long, conflicts_with = "json")]
        text: bool,
    },
    /// Record an evaluation run as the gate run of a stored version: the run (a file, a run
    /// id, or `last`) must have judged exactly that version's text; the gate decides pass or
    /// fail. Exits 1 when the gate fails (the failing run is recorded too).
    Gate {
        /// NAME@VERSION.
        policy: String,
        /// The evaluation run (`keel eval run … --policy FILE` wrote it).
        #[arg(long)]
        run: String,
        /// The gate file, or `default` for the shipped gate.
        #[arg(long, default_value = "default")]
        gate: String,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        token: TokenArg,
    },
    /// Approve a draft; the approver must not be its author.
    Approve {
        /// NAME@VERSION.
        policy: String,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        token: TokenArg,
    },
    /// Promote a version: to shadow, canary or active (default: canary with --share, else the
    /// next stage). Past `approved` it needs a passing gate run for that version.
    Promote {
        /// NAME@VERSION.
        policy: String,
        /// shadow, canary or active.
        #[arg(long)]
        to: Option<PolicyStatus>,
        /// For a canary: the share of traffic it decides, e.g. 0.1.
        #[arg(long)]
        share: Option<f64>,
        /// Promote without a passing gate run, for this reason (role admin; audited).
        #[arg(long, value_name = "REASON")]
        skip_gate: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        token: TokenArg,
    },
    /// Take a shadow or canary version out of force (back to approved).
    Withdraw {
        /// NAME@VERSION.
        policy: String,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        token: TokenArg,
    },
    /// Put the version that was active before back in force (and withdraw the canary).
    Rollback {
        /// The policy name.
        name: String,
        /// Roll back to this version (one that was active before) instead of the last one.
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        token: TokenArg,
    },
    /// What changed from A to B: checks, rules, settings, messages, and the text. A and B
    /// are NAME@VERSION, a NAME (its active version) or a policy file.
    Diff {
        /// The older version.
        a: String,
        /// The newer version.
        b: String,
        #[command(flatten)]
        store: StoreArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn parse_phase(text: &str) -> Result<keel_policy::file::PhaseSelector, String> {
    match text {
        "input" => Ok(keel_policy::file::PhaseSelector::Input),
        "output" => Ok(keel_policy::file::PhaseSelector::Output),
        "both" => Ok(keel_policy::file::PhaseSelector::Both),
        other => Err(format!("`{other}` is not a phase (input, output, both)")),
    }
}

fn parse_action(text: &str) -> Result<keel_core::Action, String> {
    serde_json::from_value(serde_json::Value::String(text.to_string()))
        .map_err(|_| format!("`{text}` is not an action (allow, flag, redact, escalate, block)"))
}

fn refused(error: ChangeError) -> anyhow::Error {
    anyhow::anyhow!("refused: {error}")
}

fn reference(text: &str) -> anyhow::Result<PolicyRef> {
    parse_policy_ref(text).map_err(|e| anyhow::anyhow!("{e}"))
}

/// The parent a candidate file records (`parent = "name@version"`, as `keel policy candidate`
/// writes it), when it is a stored version of the same name; a recorded `parent_sha256` that
/// differs from the stored text is refused, since the lineage would be false.
async fn recorded_parent(store: &dyn Store, policy: &Policy) -> anyhow::Result<Option<String>> {
    let Some(recorded) = policy.parent() else { return Ok(None) };
    let Ok(parent) = parse_policy_ref(recorded) else {
        bail!("the file's `parent = \"{recorded}\"` is not a policy reference like support@1.2.0");
    };
    if parent.name != policy.reference().name {
        return Ok(None);
    }
    let Some(stored) = store.policy_version(&parent).await? else {
        bail!(
            "the file says it derives from {parent}, which is not stored here (pass --parent, or add {parent} first)"
        );
    };
    if let Some(sha) = policy.parent_sha256().filter(|sha| *sha != stored.sha256) {
        bail!(
            "the file says it derives from {parent} with sha256 {sha}, but the stored {parent} has sha256 {}: \
             it was built from another text",
            stored.sha256
        );
    }
    Ok(Some(parent.version))
}

/// Compiles a policy file with the models it needs (fetched on first use).
async fn compile_file(path: &Path) -> anyhow::Result<Policy> {
    let models = crate::serve::models_for(Some(path)).await?;
    Ok(Policy::load_with(path, &models)?)
}

/// Compiles a stored version as a gateway would, so a promotion never puts in force what
/// cannot run.
async fn compile_stored(version: &PolicyVersion) -> anyhow::Result<()> {
    let compiler = crate::serve::ModelCompiler::new(keel_policy::Models::default());
    keel_gateway::rollout::compile_version(&compiler, version)
        .await
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("{} does not compile: {e}", version.reference()))
}

async fn stored(store: &dyn Store, policy: &PolicyRef) -> anyhow::Result<PolicyVersion> {
    store.policy_version(policy).await?.with_context(|| format!("no stored version {policy} (see `keel policy list`)"))
}

/// Runs a `keel policy` command.
pub async fn run(command: PolicyCommand) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match command {
        PolicyCommand::Check { file } => {
            let policy = compile_file(&file).await?;
            writeln!(out, "{}: OK\n{}", file.display(), policy.summary())?;
        }
        PolicyCommand::Replay { candidate, since, gate, examples, json, store, token } => {
            let args = crate::replay::ReplayArgs { candidate, since, gate, examples, json, store, token };
            if !crate::replay::run(args, &mut out).await? {
                return Ok(ExitCode::from(1));
            }
        }
        PolicyCommand::Candidate {
            from_labels,
            from_review,
            since,
            store,
            base,
            output,
            version,
            check,
            phase,
            action,
            priority,
            lift,
            cluster_similarity,
            half_life_days,
            keep_pii,
            json,
        } => {
            let labels = match from_labels {
                Some(path) if !from_review => path,
                _ => {
                    let since = since.as_deref().map(crate::replay::parse_since).transpose().context("--since")?;
                    let path = PathBuf::from(format!("{}.labels.jsonl", output.display()));
                    let store = store.open().await?;
                    let count = crate::replay::labels_from_review(store.as_ref(), since, &path).await?;
                    if count == 0 {
                        bail!(
                            "the review queue has no labelled cases{} to learn from",
                            if since.is_some() { " in that time" } else { "" }
                        );
                    }
                    tracing::info!(cases = count, file = %path.display(), "labels taken from the review queue");
                    path
                }
            };
            let args = crate::adapt::CandidateArgs {
                labels,
                base,
                output,
                version,
                check,
                phase,
                action,
                priority,
                lift,
                cluster_similarity,
                half_life_days,
                keep_pii,
                json,
            };
            write!(out, "{}", crate::adapt::candidate(args).await?)?;
        }
        PolicyCommand::Add { file, parent, store, token } => {
            let policy = compile_file(&file).await?;
            let source_text = keel_policy::resolve::resolve_file(&file)?;
            let store = store.open().await?;
            let actor = act_as(store.as_ref(), &token, Permission::WritePolicies).await?;
            let reference = policy.reference();
            let parent = match parent {
                Some(parent) => Some(parent),
                None => recorded_parent(store.as_ref(), &policy).await?,
            };
            let new = NewPolicyVersion {
                name: reference.name,
                version: reference.version,
                source_text,
                parent_version: parent,
                origin: file.display().to_string(),
            };
            let added = store.add_policy_version(new, &actor.name).await.map_err(refused)?;
            writeln!(
                out,
                "Added {} as a draft by {} (sha256 {}, parent {}).\nNext: someone other than {} approves it: keel policy approve {}",
                added.reference(),
                added.author,
                &added.sha256[..16],
                added.parent_version.as_deref().unwrap_or("none"),
                added.author,
                added.reference()
            )?;
        }
        PolicyCommand::List { name, store, json } => {
            let store = store.open().await?;
            let versions = store.policy_versions(name.as_deref()).await?;
            if json {
                let without_text: Vec<serde_json::Value> = versions
                    .iter()
                    .map(|v| {
                        let mut value = serde_json::to_value(v).unwrap_or_default();
                        if let Some(map) = value.as_object_mut() {
                            map.remove("source_text");
                        }
                        value
                    })
                    .collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&without_text)?)?;
            } else {
                write!(out, "{}", table(&versions))?;
            }
        }
        PolicyCommand::Show { policy, store, json, text } => {
            let store = store.open().await?;
            let policy = reference(&policy)?;
            let version = stored(store.as_ref(), &policy).await?;
            if text {
                write!(out, "{}", version.source_text)?;
                return Ok(ExitCode::SUCCESS);
            }
            let transitions = store.policy_transitions(&policy).await?;
            let gate_runs = store.gate_runs(&policy).await?;
            let shadow = store.shadow_report(&policy, 5).await?;
            if json {
                let value = serde_json::json!({"version": version, "transitions": transitions,
                                               "gate_runs": gate_runs, "shadow": shadow});
                writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
            } else {
                write!(out, "{}", show(&version, &transitions, &gate_runs, &shadow))?;
            }
        }
        PolicyCommand::Gate { policy, run, gate, store, token } => {
            let store = store.open().await?;
            let actor = act_as(store.as_ref(), &token, Permission::RunGates).await?;
            let policy = reference(&policy)?;
            let version = stored(store.as_ref(), &policy).await?;
            let (path, record) = crate::eval::load_run(&run)?;
            let judged = record.target.policy.as_ref().with_context(|| {
                format!("{}: the run judged no policy (run the gateway or policy target with --policy)", path.display())
            })?;
            if judged.reference != policy.to_string() || judged.sha256 != version.sha256 {
                bail!(
                    "{}: the run judged {} (sha256 {}), not the stored {policy} (sha256 {}); evaluate exactly the stored \
                     text: keel policy show {policy} --text > {}.toml",
                    path.display(),
                    judged.reference,
                    judged.sha256,
                    version.sha256,
                    policy.name
                );
            }
            let gate = crate::eval::load_gate(&gate)?;
            let outcome = keel_eval::GateOutcome {
                run_sha256: Some(keel_eval::record::file_sha256(&path)?),
                ..keel_eval::evaluate_gate(&gate, &record)
            };
            let run = keel_store::NewGateRun {
                policy: policy.clone(),
                kind: keel_store::GateKind::Eval,
                passed: outcome.passed,
                summary: serde_json::to_value(&outcome)?,
                run_sha256: outcome.run_sha256.clone().unwrap_or_default(),
                actor: actor.name.clone(),
            };
            let recorded = store.record_gate_run(run).await.map_err(refused)?;
            writeln!(
                out,
                "Gate run #{} recorded for {policy} by {}: {} — {}",
                recorded.id,
                actor.name,
                if recorded.passed { "PASSED" } else { "FAILED" },
                outcome.reason
            )?;
            if !recorded.passed {
                return Ok(ExitCode::from(1));
            }
        }
        PolicyCommand::Approve { policy, store, token } => {
            let store = store.open().await?;
            let actor = act_as(store.as_ref(), &token, Permission::ApprovePolicies).await?;
            let policy = reference(&policy)?;
            let approved = store.approve_policy_version(&policy, &actor.name).await.map_err(refused)?;
            writeln!(
                out,
                "{} approved by {} (author {}).\nNext: a passing gate run (replay or eval), then keel policy promote {}",
                approved.reference(),
                actor.name,
                approved.author,
                approved.reference()
            )?;
        }
        PolicyCommand::Promote { policy, to, share, skip_gate, store, token } => {
            let store = store.open().await?;
            let actor = act_as(store.as_ref(), &token, Permission::PromotePolicies).await?;
            if skip_gate.is_some() && !actor.role.allows(Permission::OverrideGate) {
                bail!(
                    "the token `{}` (role {}) may not skip the gate: it needs permission `override_gate`, held by {}",
                    actor.name,
                    actor.role,
                    Permission::OverrideGate.holders()
                );
            }
            let policy = reference(&policy)?;
            let version = stored(store.as_ref(), &policy).await?;
            compile_stored(&version).await?;
            let to = match (to, share) {
                (Some(to), _) => to,
                (None, Some(_)) => PolicyStatus::Canary,
                (None, None) => keel_gateway::next_stage(version.status),
            };
            let promotion = Promotion { to, share, skip_gate };
            let promoted = store.promote_policy_version(&policy, &promotion, &actor.name).await.map_err(refused)?;
            if let Some(reason) = &promotion.skip_gate {
                writeln!(
                    out,
                    "WARNING: the gate was skipped by {} (\"{reason}\"); audited as policy.gate_overridden.",
                    actor.name
                )?;
            }
            let share = promoted.canary_share.map(|s| format!(" on {:.1}% of traffic", s * 100.0)).unwrap_or_default();
            writeln!(
                out,
                "{}: {} → {}{share} by {}.\nRunning gateways apply it within their poll interval ([lifecycle] poll_interval_ms, 1 s by default).",
                promoted.reference(),
                version.status,
                promoted.status,
                actor.name
            )?;
        }
        PolicyCommand::Withdraw { policy, store, token } => {
            let store = store.open().await?;
            let actor = act_as(store.as_ref(), &token, Permission::PromotePolicies).await?;
            let policy = reference(&policy)?;
            let withdrawn = store.withdraw_policy_version(&policy, &actor.name).await.map_err(refused)?;
            writeln!(out, "{} withdrawn (now {}) by {}.", withdrawn.reference(), withdrawn.status, actor.name)?;
        }
        PolicyCommand::Rollback { name, to, store, token } => {
            let store = store.open().await?;
            let actor = act_as(store.as_ref(), &token, Permission::PromotePolicies).await?;
            let outcome = store.rollback_policy(&name, to.as_deref(), &actor.name).await.map_err(refused)?;
            writeln!(
                out,
                "Rolled back `{name}` by {}: {} retired, {} active again{}.",
                actor.name,
                outcome.retired.reference(),
                outcome.restored.reference(),
                outcome.withdrawn_canary.map(|c| format!("; canary {} withdrawn", c.reference())).unwrap_or_default()
            )?;
        }
        PolicyCommand::Diff { a, b, store, json } => {
            let store = store.open().await?;
            let (a_label, a_text) = diff_side(store.as_ref(), &a).await?;
            let (b_label, b_text) = diff_side(store.as_ref(), &b).await?;
            let diff = keel_policy::diff::diff(&a_label, &a_text, &b_label, &b_text)?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&diff)?)?;
            } else {
                write!(out, "{}", diff.render())?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The label and text of a diff side: a policy file, `name@version`, or a name's active version.
async fn diff_side(store: &dyn Store, side: &str) -> anyhow::Result<(String, String)> {
    let path = Path::new(side);
    if path.is_file() {
        return Ok((side.to_owned(), keel_policy::resolve::resolve_file(path)?));
    }
    let version = if side.contains('@') {
        stored(store, &reference(side)?).await?
    } else {
        let versions = store.policy_versions(Some(side)).await?;
        versions.into_iter().find(|v| v.status == PolicyStatus::Active).with_context(|| {
            format!("`{side}` is neither a policy file, NAME@VERSION, nor a policy name with an active version")
        })?
    };
    Ok((version.reference().to_string(), version.source_text))
}

fn when(at: Option<time::OffsetDateTime>) -> String {
    at.and_then(|t| t.replace_nanosecond(0).ok()).and_then(|t| t.format(&Rfc3339).ok()).unwrap_or_else(|| "-".into())
}

fn table(versions: &[PolicyVersion]) -> String {
    if versions.is_empty() {
        return "no stored policy versions (a gateway seeds its policy file on first start; `keel policy add FILE` adds drafts)\n".into();
    }
    let rows: Vec<Vec<String>> = versions
        .iter()
        .map(|v| {
            let note = match (v.status, v.canary_share) {
                (PolicyStatus::Canary, Some(share)) => format!("{:.1}% of traffic", share * 100.0),
                _ => v.parent_version.as_deref().map(|p| format!("from {p}")).unwrap_or_default(),
            };
            vec![
                v.reference().to_string(),
                v.status.to_string(),
                v.author.clone(),
                v.approver.clone().unwrap_or_else(|| "-".into()),
                when(Some(v.status_at)),
                note,
            ]
        })
        .collect();
    crate::table::render(&["POLICY", "STATUS", "AUTHOR", "APPROVER", "SINCE", "NOTE"], &rows)
}

fn show(
    v: &PolicyVersion,
    transitions: &[keel_store::Transition],
    gate_runs: &[keel_store::GateRun],
    shadow: &keel_store::ShadowReport,
) -> String {
    let mut out = format!(
        "{}  {}{}\n  author {}   approver {}   parent {}\n  origin {}\n  sha256 {}\n  created {}   status since {}\n",
        v.reference(),
        v.status,
        v.canary_share.map(|s| format!(" ({:.1}% of traffic)", s * 100.0)).unwrap_or_default(),
        v.author,
        v.approver.as_deref().unwrap_or("-"),
        v.parent_version.as_deref().unwrap_or("-"),
        v.origin,
        v.sha256,
        when(Some(v.created_at)),
        when(Some(v.status_at)),
    );
    out.push_str("history:\n");
    for t in transitions {
        out.push_str(&format!(
            "  {}  {:>8} → {:<8} by {}  {}\n",
            when(Some(t.at)),
            t.from.map(|s| s.as_str()).unwrap_or("-"),
            t.to.as_str(),
            t.actor,
            t.detail
        ));
    }
    out.push_str("gate runs:\n");
    if gate_runs.is_empty() {
        out.push_str("  none (promotion past approved needs a passing one)\n");
    }
    for g in gate_runs {
        let summary = match g.summary.get("reason").and_then(|r| r.as_str()) {
            Some(reason) => reason.to_owned(),
            None => g.summary.to_string().chars().take(160).collect(),
        };
        out.push_str(&format!(
            "  #{} {} {} by {} at {}  run sha256 {}…  {summary}\n",
            g.id,
            g.kind.as_str(),
            if g.passed { "PASSED" } else { "FAILED" },
            g.actor,
            when(Some(g.created_at)),
            &g.run_sha256[..g.run_sha256.len().min(12)],
        ));
    }
    if shadow.interactions > 0 {
        out.push_str(&format!(
            "shadow: judged {} interactions, would have decided otherwise on {}\n",
            shadow.interactions, shadow.differ
        ));
        for p in &shadow.pairs {
            out.push_str(&format!("  served {:<8} shadow {:<8} × {}\n", p.served.as_str(), p.shadow.as_str(), p.count));
        }
        for e in &shadow.examples {
            out.push_str(&format!(
                "  e.g. {} served {} → would {} (rule {})\n",
                e.interaction_id,
                e.served,
                e.shadow,
                e.rule.as_deref().unwrap_or("none")
            ));
        }
    }
    out.push_str("text:\n");
    out.push_str(&v.source_text);
    if !v.source_text.ends_with('\n') {
        out.push('\n');
    }
    out
}
