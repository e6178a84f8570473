//! Keel's adaptation: turning reviewed cases into policy changes without retraining a model.
//!
//! This crate owns labelled cases as files ([`labels`]), building policy memory entries from
//! them ([`build`]), making *candidate* policy versions from a base version ([`candidate`]) and
//! the adaptation benchmark behind `keel bench adapt` ([`bench`]). The review queue, replay gate
//! and exports will live here too. It never edits a policy in place, stores nothing and serves
//! nothing: callers (the CLI, the review API) decide where a candidate goes and when it is
//! promoted. How the memory check decides is [`keel_policy::memory`]'s business.

pub mod bench;
pub mod build;
pub mod candidate;
mod error;
pub mod labels;
pub mod replay;

pub use build::{build_entries, BuildReport, BuildSettings};
pub use candidate::{build_candidate, next_version, Candidate, CandidateOptions};
pub use error::{AdaptError, Result};
pub use labels::{parse_jsonl, LabelledCase, ReviewLabel};
