//! Keel's policy engine: policy files, the checks they configure, the rule language and
//! the decisions it yields, and the streaming guard that applies output checks to a stream.
//!
//! This crate is pure computation: it reads no network and writes no storage. Callers (the
//! gateway, ingest, replay, evaluation) hand it texts and get check results and decisions
//! with their explanations back.

pub mod check;
pub mod detect;
pub mod diff;
pub mod expr;
pub mod file;
pub mod memory;
mod policy;
pub mod resolve;
pub mod source;
pub mod stream;
pub mod text;

pub use policy::{Context, Judgement, Models, Policy, PolicyError, TextPart, Verdict, DEFAULT_PACK};
pub use stream::{GuardStep, StreamGuard};
pub use text::Lang;
