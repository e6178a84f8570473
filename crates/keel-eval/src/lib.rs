//! Keel's evaluation: suites of cases, the targets they run against (a model, the model
//! behind the gateway with a policy version in-process, or a policy alone on recorded
//! answers), scorers (deterministic, refusal, embedding similarity, LLM judges), run records
//! sealed into the audit chain, reports, paired comparison and promotion gates.
//!
//! This crate owns the evaluation loop and its file formats (suites, run records, gates). It
//! must not change policies or stored interactions: it reads a policy, calls targets, and
//! writes run records plus one `eval.run` audit record per run. The binary wires it to the
//! CLI (`keel eval …`, `keel suites …`) and loads models.

pub mod cache;
pub mod compare;
mod error;
pub mod gate;
pub mod judge;
pub mod record;
pub mod report;
pub mod run;
pub mod score;
pub mod stats;
pub mod suite;
pub mod suites;
mod tap;
pub mod target;

pub use cache::Cache;
pub use compare::{compare, Comparison};
pub use error::{EvalError, Result};
pub use gate::{evaluate as evaluate_gate, GateOutcome, LoadedGate, Risk};
pub use judge::{Judge, JudgeVerdict};
pub use record::{RunRecord, Verification};
pub use run::{run, RunOptions};
pub use score::{PolicyRole, Scorers, Status};
pub use suite::{Case, Suite};
pub use target::{GatewayTarget, ModelTarget, Params, PolicyTarget, RecordedUpstream, Response, Target, TargetInfo};
