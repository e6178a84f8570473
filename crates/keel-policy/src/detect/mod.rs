//! Detectors that find sensitive or hostile content in chat text: personal data, secrets,
//! prompt injection, policy keywords, and answers that refuse instead of answering.
//!
//! Checks in a policy are thin wrappers around these detectors; keeping them here, free of
//! policy and configuration concerns, lets each one be tested and benchmarked on its own.
//! Every detector reports byte spans of the text it was given, sorted by position.

pub mod injection;
pub mod keywords;
pub mod normalize;
pub mod pii;
pub mod refusal;
pub mod secret;

pub use injection::{InjectionDetector, INJECTION_KINDS};
pub use keywords::{KeywordError, KeywordMatcher};
pub use normalize::{normalize, Normalized};
pub use pii::{PiiDetector, PiiKind};
pub use refusal::{RefusalDetector, REFUSAL_KINDS};
pub use secret::{SecretDetector, SECRET_KINDS};

use keel_core::{Finding, Span};

/// A finding of `kind` at `span`, without message index or detail.
pub(crate) fn finding(kind: &str, span: Span) -> Finding {
    Finding { kind: kind.to_string(), span, message: None, detail: None }
}
