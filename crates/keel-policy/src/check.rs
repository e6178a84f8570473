//! Checks: the detectors a policy runs, built from their configuration.
//!
//! A [`CheckConfig`] builds a [`Box<dyn Check>`]; building validates everything (patterns,
//! word lists, limits), so a built check can only fail at run time for reasons of the input
//! (for example its size limit).

use std::cell::OnceCell;
use std::sync::Arc;

use keel_core::{Finding, Span};
use regex::{Regex, RegexBuilder};
use thiserror::Error;

use crate::detect::{
    InjectionDetector, KeywordMatcher, Normalized, PiiDetector, PiiKind, RefusalDetector, SecretDetector,
};
use keel_models::{Embedder, InjectionClassifier};

use crate::file::{CheckConfig, KeywordsCheckConfig, LengthCheckConfig, RegexCheckConfig, SemanticCheckConfig};
use crate::memory::MemoryCheck;
use crate::policy::Models;

/// What a check found in one text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CheckOutput {
    /// Strength of the signal in `[0, 1]`.
    pub score: f64,
    /// What was found, with spans into the text.
    pub findings: Vec<Finding>,
    /// What the check saw, for explanations.
    pub detail: Option<String>,
}

impl CheckOutput {
    /// Score 1 when anything was found, 0 otherwise.
    pub fn from_findings(findings: Vec<Finding>) -> Self {
        let score = if findings.is_empty() { 0.0 } else { 1.0 };
        CheckOutput { score, findings, detail: None }
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
    /// A model the check uses failed.
    #[error("model error: {0}")]
    Model(String),
}

/// Whether a check's findings depend only on a bounded neighbourhood of text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Findings depend on nearby text only, so a stream can be scanned in windows.
    Local,
    /// The result depends on the whole text (e.g. its length) and is cheap to recompute.
    Whole,
    /// The result depends on the whole text and is costly (a model), so it runs once on the
    /// complete text.
    Final,
}

/// One text to check, with its normalised form computed at most once for all checks.
pub struct CheckInput<'a> {
    text: &'a str,
    normalized: OnceCell<Normalized>,
    embedding: OnceCell<Result<Vec<f32>, String>>,
}

impl<'a> CheckInput<'a> {
    /// Wraps `text`.
    pub fn new(text: &'a str) -> Self {
        CheckInput { text, normalized: OnceCell::new(), embedding: OnceCell::new() }
    }

    /// The text as received.
    pub fn text(&self) -> &'a str {
        self.text
    }

    /// The NFKC + lowercase form, shared by every check that needs it.
    pub fn normalized(&self) -> &Normalized {
        self.normalized.get_or_init(|| Normalized::new(self.text))
    }

    /// The sentence embedding of the text, computed at most once for all checks.
    pub fn embedding(&self, embedder: &dyn Embedder) -> Result<&[f32], CheckError> {
        let result = self.embedding.get_or_init(|| {
            embedder
                .embed(&[self.text])
                .map_err(|e| e.to_string())
                .and_then(|mut v| v.pop().ok_or_else(|| "the embedder returned no vector".to_string()))
        });
        result.as_deref().map_err(|e| CheckError::Model(e.clone()))
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

/// Builds the runnable check described by `config`; `threshold` is its hit threshold.
pub fn build(config: &CheckConfig, threshold: f64, models: &Models) -> Result<Arc<dyn Check>, BuildError> {
    Ok(match config {
        CheckConfig::Regex(c) => Arc::new(RegexCheck::build(c)?),
        CheckConfig::Keywords(c) => Arc::new(KeywordsCheck::build(c)?),
        CheckConfig::Pii(c) => {
            let kinds = c.kinds.clone().unwrap_or_else(|| PiiKind::ALL.to_vec());
            if kinds.is_empty() {
                return Err(BuildError::at(
                    vec![Key("kinds".into())],
                    "list at least one kind, or omit `kinds` for all",
                ));
            }
            Arc::new(PiiCheck(PiiDetector::new(&kinds)))
        }
        CheckConfig::Secret(_) => Arc::new(SecretCheck(SecretDetector::new())),
        CheckConfig::Injection(_) => Arc::new(InjectionCheck(InjectionDetector::new())),
        CheckConfig::Refusal(_) => Arc::new(RefusalCheck(RefusalDetector::new())),
        CheckConfig::Length(c) => Arc::new(LengthCheck::build(c)?),
        CheckConfig::Semantic(c) => Arc::new(SemanticCheck::build(c, threshold, embedder(models)?)?),
        CheckConfig::InjectionClassifier(_) => {
            let classifier = models.classifier.clone().ok_or_else(|| {
                BuildError::at(vec![Key("kind".into())], "needs the injection classifier, which is not loaded")
            })?;
            Arc::new(ClassifierCheck { embedder: embedder(models)?, classifier })
        }
        CheckConfig::Memory(c) => Arc::new(MemoryCheck::build(c, threshold, embedder(models)?)?),
    })
}

fn embedder(models: &Models) -> Result<Arc<dyn Embedder>, BuildError> {
    models.embedder.clone().ok_or_else(|| {
        BuildError::at(
            vec![Key("kind".into())],
            "needs the sentence embedder, which is not loaded (run `keel models pull`, or set models in keel.toml)",
        )
    })
}

/// Cosine similarity of two L2-normalised vectors (a dot product).
fn similarity(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum()
}

/// Similarity to example sentences, embedded once when the policy is compiled.
struct SemanticCheck {
    embedder: Arc<dyn Embedder>,
    exemplars: Vec<(String, Vec<f32>)>,
    allowed: Vec<(String, Vec<f32>)>,
    threshold: f64,
}

impl SemanticCheck {
    fn build(config: &SemanticCheckConfig, threshold: f64, embedder: Arc<dyn Embedder>) -> Result<Self, BuildError> {
        if config.exemplars.is_empty() {
            return Err(BuildError::at(vec![Key("exemplars".into())], "list at least one exemplar sentence"));
        }
        let embed = |texts: &[String], field: &str| -> Result<Vec<(String, Vec<f32>)>, BuildError> {
            if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
                return Err(BuildError::at(vec![Key(field.into()), Index(i)], "must not be empty"));
            }
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let vectors = embedder
                .embed(&refs)
                .map_err(|e| BuildError::at(vec![Key(field.into())], format!("cannot embed: {e}")))?;
            Ok(texts.iter().cloned().zip(vectors).collect())
        };
        let exemplars = embed(&config.exemplars, "exemplars")?;
        let allowed = if config.allowed.is_empty() { Vec::new() } else { embed(&config.allowed, "allowed")? };
        Ok(SemanticCheck { embedder, exemplars, allowed, threshold })
    }

    fn closest<'e>(set: &'e [(String, Vec<f32>)], vector: &[f32]) -> Option<(&'e str, f64)> {
        set.iter().map(|(text, v)| (text.as_str(), similarity(v, vector))).max_by(|a, b| a.1.total_cmp(&b.1))
    }
}

impl Check for SemanticCheck {
    fn run(&self, input: &CheckInput<'_>) -> Result<CheckOutput, CheckError> {
        let text = input.text();
        if text.trim().is_empty() {
            return Ok(CheckOutput::default());
        }
        let vector = input.embedding(self.embedder.as_ref())?;
        let Some((exemplar, similarity)) = Self::closest(&self.exemplars, vector) else {
            return Ok(CheckOutput::default());
        };
        let mut detail = format!("closest exemplar \"{exemplar}\" (similarity {similarity:.2})");
        let mut score = similarity.clamp(0.0, 1.0);
        if let Some((allowed, allowed_similarity)) = Self::closest(&self.allowed, vector) {
            detail.push_str(&format!("; closest allowed example \"{allowed}\" ({allowed_similarity:.2})"));
            if allowed_similarity >= similarity {
                score = 0.0;
                detail.push_str(", which is closer, so no hit");
            }
        }
        let findings = if score >= self.threshold && score > 0.0 {
            vec![Finding {
                kind: "semantic_match".into(),
                span: Span::new(0, text.len()),
                message: None,
                detail: Some(detail.clone()),
            }]
        } else {
            Vec::new()
        };
        Ok(CheckOutput { score, findings, detail: Some(detail) })
    }

    fn scope(&self) -> Scope {
        Scope::Final
    }
}

/// The jailguard MLP over the text's sentence embedding.
struct ClassifierCheck {
    embedder: Arc<dyn Embedder>,
    classifier: Arc<InjectionClassifier>,
}

impl Check for ClassifierCheck {
    fn run(&self, input: &CheckInput<'_>) -> Result<CheckOutput, CheckError> {
        if input.text().trim().is_empty() {
            return Ok(CheckOutput::default());
        }
        let vector = input.embedding(self.embedder.as_ref())?;
        let score = f64::from(self.classifier.score(vector)).clamp(0.0, 1.0);
        Ok(CheckOutput {
            score,
            findings: Vec::new(),
            detail: Some(format!("classifier probability of injection {score:.3}")),
        })
    }

    fn scope(&self) -> Scope {
        Scope::Final
    }
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
        Ok(CheckOutput { score, findings, detail: None })
    }
}

struct RefusalCheck(RefusalDetector);

impl Check for RefusalCheck {
    fn run(&self, input: &CheckInput<'_>) -> Result<CheckOutput, CheckError> {
        let (score, findings) = self.0.scan_in(input.normalized());
        Ok(CheckOutput { score, findings, detail: None })
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
