//! Checks: the detectors a policy runs, built from their configuration.
//!
//! A [`CheckConfig`] builds a [`Box<dyn Check>`]; building validates everything (patterns,
//! word lists, limits), so a built check can only fail at run time for reasons of the input
//! (for example its size limit).

use std::cell::OnceCell;

use keel_core::{Finding, Span};
use regex::{Regex, RegexBuilder};
use thiserror::Error;

use crate::detect::{InjectionDetector, KeywordMatcher, Normalized, PiiDetector, PiiKind, SecretDetector};
use crate::file::{CheckConfig, KeywordsCheckConfig, LengthCheckConfig, RegexCheckConfig};

/// What a check found in one text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CheckOutput {
    /// Strength of the signal in `[0, 1]`.
    pub score: f64,
    /// What was found, with spans into the text.
    pub findings: Vec<Finding>,
}

impl CheckOutput {
    /// Score 1 when anything was found, 0 otherwise.
    pub fn from_findings(findings: Vec<Finding>) -> Self {
        let score = if findings.is_empty() { 0.0 } else { 1.0 };
        CheckOutput { score, findings }
    }
}

/// Why a check could not run on a text.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum CheckError {
    /// The text is longer than the check's `max_input_bytes`.
    #[error("text of {actual} bytes exceeds this check's max_input_bytes of {limit}")]
    InputTooLarge {
        /// The text's size.
        actual: usize,
        /// The configured limit.
        limit: usize,
    },
}

/// Whether a check's findings depend only on a bounded neighbourhood of text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Findings depend on nearby text only, so a stream can be scanned in windows.
    Local,
    /// The result depends on the whole text (e.g. its length).
    Whole,
}

/// One text to check, with its normalised form computed at most once for all checks.
pub struct CheckInput<'a> {
    text: &'a str,
    normalized: OnceCell<Normalized>,
}

impl<'a> CheckInput<'a> {
    /// Wraps `text`.
    pub fn new(text: &'a str) -> Self {
        CheckInput { text, normalized: OnceCell::new() }
    }

    /// The text as received.
    pub fn text(&self) -> &'a str {
        self.text
    }

    /// The NFKC + lowercase form, shared by every check that needs it.
    pub fn normalized(&self) -> &Normalized {
        self.normalized.get_or_init(|| Normalized::new(self.text))
    }
}

/// A detector that reads a text and reports a score and findings.
pub trait Check: Send + Sync {
    /// Runs the check; spans in the output are byte offsets into `input.text()`.
    fn run(&self, input: &CheckInput<'_>) -> Result<CheckOutput, CheckError>;
    /// Whether the check can be run on windows of a stream.
    fn scope(&self) -> Scope {
        Scope::Local
    }
}

/// Why a check configuration cannot be built.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("{message}")]
pub struct BuildError {
    /// Sub-path of the offending field inside the check, e.g. `patterns[1].pattern`.
    pub field: Vec<crate::source::PathSegment>,
    /// What is wrong.
    pub message: String,
}

impl BuildError {
    fn at(field: Vec<crate::source::PathSegment>, message: impl Into<String>) -> Self {
        BuildError { field, message: message.into() }
    }
}

use crate::source::PathSegment::{Index, Key};

/// Builds the runnable check described by `config`.
pub fn build(config: &CheckConfig) -> Result<Box<dyn Check>, BuildError> {
    Ok(match config {
        CheckConfig::Regex(c) => Box::new(RegexCheck::build(c)?),
        CheckConfig::Keywords(c) => Box::new(KeywordsCheck::build(c)?),
        CheckConfig::Pii(c) => {
            let kinds = c.kinds.clone().unwrap_or_else(|| PiiKind::ALL.to_vec());
            if kinds.is_empty() {
                return Err(BuildError::at(
                    vec![Key("kinds".into())],
                    "list at least one kind, or omit `kinds` for all",
                ));
            }
            Box::new(PiiCheck(PiiDetector::new(&kinds)))
        }
        CheckConfig::Secret(_) => Box::new(SecretCheck(SecretDetector::new())),
        CheckConfig::Injection(_) => Box::new(InjectionCheck(InjectionDetector::new())),
        CheckConfig::Length(c) => Box::new(LengthCheck::build(c)?),
    })
}

struct RegexCheck {
    patterns: Vec<(String, Regex)>,
}

impl RegexCheck {
    fn build(config: &RegexCheckConfig) -> Result<Self, BuildError> {
        if config.patterns.is_empty() {
            return Err(BuildError::at(vec![Key("patterns".into())], "list at least one pattern"));
        }
        let mut patterns = Vec::with_capacity(config.patterns.len());
        for (i, p) in config.patterns.iter().enumerate() {
            let regex = RegexBuilder::new(&p.pattern)
                .case_insensitive(config.case_insensitive)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| {
                    let detail = e.to_string().lines().last().unwrap_or_default().trim().to_string();
                    BuildError::at(
                        vec![Key("patterns".into()), Index(i), Key("pattern".into())],
                        format!("invalid regular expression: {detail}"),
                    )
                })?;
            if regex.is_match("") {
                return Err(BuildError::at(
                    vec![Key("patterns".into()), Index(i), Key("pattern".into())],
                    "the pattern matches the empty string, so it would match every text",
                ));
            }
            patterns.push((p.kind.clone(), regex));
        }
        Ok(RegexCheck { patterns })
    }
}

impl Check for RegexCheck {
    fn run(&self, input: &CheckInput<'_>) -> Result<CheckOutput, CheckError> {
        let text = input.text();
        let mut findings = Vec::new();
        for (kind, regex) in &self.patterns {
            findings.extend(regex.find_iter(text).map(|m| Finding {
                kind: kind.clone(),
                span: Span::new(m.start(), m.end()),
                message: None,
                detail: None,
            }));
        }
        findings.sort_by_key(|f| f.span);
        Ok(CheckOutput::from_findings(findings))
    }
}

struct KeywordsCheck {
    matcher: KeywordMatcher,
    words: Vec<String>,
    kind: String,
}

impl KeywordsCheck {
    fn build(config: &KeywordsCheckConfig) -> Result<Self, BuildError> {
        let matcher = KeywordMatcher::new(&config.words, config.whole_word)
            .map_err(|e| BuildError::at(vec![Key("words".into())], e.to_string()))?;
        Ok(KeywordsCheck {
            matcher,
            words: config.words.clone(),
            kind: config.finding_kind.clone().unwrap_or_else(|| config.name.clone()),
        })
    }
}

impl Check for KeywordsCheck {
    fn run(&self, input: &CheckInput<'_>) -> Result<CheckOutput, CheckError> {
        let findings = self
            .matcher
            .find(input.normalized())
            .into_iter()
            .map(|(span, word)| Finding {
                kind: self.kind.clone(),
                span,
                message: None,
                detail: self.words.get(word).map(|w| format!("matched keyword `{w}`")),
            })
            .collect();
        Ok(CheckOutput::from_findings(findings))
    }
}

struct PiiCheck(PiiDetector);

impl Check for PiiCheck {
    fn run(&self, input: &CheckInput<'_>) -> Result<CheckOutput, CheckError> {
        Ok(CheckOutput::from_findings(self.0.find_in(input.text(), input.normalized())))
    }
}

struct SecretCheck(SecretDetector);

impl Check for SecretCheck {
    fn run(&self, input: &CheckInput<'_>) -> Result<CheckOutput, CheckError> {
        Ok(CheckOutput::from_findings(self.0.find(input.text())))
    }
}

struct InjectionCheck(InjectionDetector);

impl Check for InjectionCheck {
    fn run(&self, input: &CheckInput<'_>) -> Result<CheckOutput, CheckError> {
        let (score, findings) = self.0.scan_in(input.text(), input.normalized());
        Ok(CheckOutput { score, findings })
    }
}

struct LengthCheck {
    max_chars: Option<usize>,
    min_chars: Option<usize>,
}

impl LengthCheck {
    fn build(config: &LengthCheckConfig) -> Result<Self, BuildError> {
        if config.max_chars.is_none() && config.min_chars.is_none() {
            return Err(BuildError::at(vec![Key("max_chars".into())], "set max_chars, min_chars or both"));
        }
        if let (Some(min), Some(max)) = (config.min_chars, config.max_chars) {
            if min > max {
                return Err(BuildError::at(
                    vec![Key("min_chars".into())],
                    format!("min_chars ({min}) is greater than max_chars ({max})"),
                ));
            }
        }
        Ok(LengthCheck { max_chars: config.max_chars, min_chars: config.min_chars })
    }
}

impl Check for LengthCheck {
    fn run(&self, input: &CheckInput<'_>) -> Result<CheckOutput, CheckError> {
        let text = input.text();
        let mut findings = Vec::new();
        if let Some(max) = self.max_chars {
            // The span covers the part beyond the limit, so redaction would cut it off.
            if let Some((start, _)) = text.char_indices().nth(max) {
                findings.push(Finding {
                    kind: "too_long".into(),
                    span: Span::new(start, text.len()),
                    message: None,
                    detail: Some(format!("more than {max} characters")),
                });
            }
        }
        if let Some(min) = self.min_chars {
            let count = text.chars().count();
            if count < min {
                findings.push(Finding {
                    kind: "too_short".into(),
                    span: Span::new(0, text.len()),
                    message: None,
                    detail: Some(format!("{count} characters, fewer than {min}")),
                });
            }
        }
        Ok(CheckOutput::from_findings(findings))
    }

    fn scope(&self) -> Scope {
        Scope::Whole
    }
}
