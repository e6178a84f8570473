//! The demo's evaluation step: the shipped `ci-smoke` suite through the demo's gateway policy
//! in-process (recorded answers, no model calls), sealed into the demo's audit chain, with
//! the report's summary and the default gate's outcome.

use std::sync::Arc;

use keel_eval::gate::LoadedGate;
use keel_eval::record;
use keel_eval::suites::{self, BUILTIN_GATES};
use keel_eval::target::{GatewayTarget, Params, RecordedUpstream, RECORDED_MODEL};
use keel_eval::{RunOptions, Scorers};
use keel_policy::Policy;
use keel_store::Store;

use crate::config;

/// Runs the suite under `policy`, writes the run record and seals it into `store` (at
/// `store_url`); returns what to print.
pub async fn run(policy: Arc<Policy>, store: &Arc<dyn Store>, store_url: &str) -> anyhow::Result<String> {
    let found = suites::find("ci-smoke", &config::keel_home())?;
    let upstream = RecordedUpstream::spawn(&found.suite).await?;
    let target =
        GatewayTarget::new(policy, &upstream.base_url(), "recorded", None, RECORDED_MODEL, Params::default()).await?;
    let scorers = Arc::new(Scorers::new(None, None, None));
    let run =
        keel_eval::run(&found.suite, &found.file, Arc::new(target), scorers, None, &RunOptions::default()).await?;
    let path = config::keel_home().join("runs").join(format!("{}.json", run.run_id));
    let sha256 = record::write(&run, &path)?;
    let seq = record::seal(store.as_ref(), &run, &sha256, "demo").await?;
    let gate_text =
        BUILTIN_GATES.iter().find(|(name, _)| *name == "default").map(|(_, text)| *text).unwrap_or_default();
    let gate = LoadedGate::parse("suites/gates/default.toml", gate_text)?;
    let outcome = gate.evaluate(&run);
    Ok(format!(
        "Evaluation: suite {} through the gateway in-process under {}\n{}\nrun record {} sealed at audit seq {seq}\n{}\n(keel eval report {} --html report.html · keel eval verify {} --store {})\n",
        found.suite,
        run.target.policy.as_ref().map_or("?", |p| p.reference.as_str()),
        keel_eval::report::render_text(&run),
        path.display(),
        outcome.reason,
        run.run_id,
        run.run_id,
        keel_store::redact_url(store_url),
    ))
}
