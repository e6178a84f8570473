//! The policy file as written by people (TOML), before validation.
//!
//! Every struct denies unknown fields so a typo is an error, not a silently ignored setting.
//! [`crate::Policy::compile`] turns this into a policy that cannot be invalid once built.

use serde::{Deserialize, Serialize};

use keel_core::CheckMode;

use crate::detect::PiiKind;

/// The root of a policy file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// The policy's name, shown as `name@version` in headers and explanations.
    pub name: String,
    /// The version of this file's content; bump it on every change.
    pub version: String,
    /// What the policy is for.
    #[serde(default)]
    pub description: String,
    /// The version this one was derived from (`name@version`), e.g. by `keel policy candidate`.
    #[serde(default)]
    pub parent: Option<String>,
    /// Lowercase hex SHA-256 of the parent version's file text, so the lineage is checkable.
    #[serde(default)]
    pub parent_sha256: Option<String>,
    /// A policy this one builds on: `"default"` for the built-in pack, or a file path
    /// (relative to this file). Its checks and rules come first; this file adds to them.
    #[serde(default)]
    pub extends: Option<String>,
    /// What happens when a check cannot run: block (`fail_closed`) or ignore it (`fail_open`).
    #[serde(default)]
    pub on_check_error: Option<OnCheckError>,
    /// Bytes of streamed output held back so findings that straddle chunks are still caught.
    #[serde(default)]
    pub stream_window_bytes: Option<usize>,
    /// Replies sent for `block` and `escalate`, per language (inherited when extending).
    #[serde(default)]
    pub messages: Option<Messages>,
    /// The checks, run in file order.
    #[serde(default)]
    pub checks: Vec<CheckConfig>,
    /// The rules, tried by ascending priority; the first that matches decides.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

/// The stream window when neither the policy nor the one it extends sets it.
pub const DEFAULT_STREAM_WINDOW: usize = 256;

/// What a check error means for the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnCheckError {
    /// A failed check blocks the interaction with the block message.
    #[default]
    FailClosed,
    /// A failed check reads as "no signal"; its error is kept in the explanation.
    FailOpen,
}

/// Replies for the actions that replace the model's answer.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Messages {
    /// Sent instead of the answer on `block`.
    pub block: LocalizedText,
    /// Sent instead of the answer on `escalate`.
    pub escalate: LocalizedText,
}

/// A text in English and, optionally, Japanese; English is the fallback.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LocalizedText {
    /// English text.
    pub en: String,
    /// Japanese text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ja: Option<String>,
}

/// Which sides of an interaction a check or rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PhaseSelector {
    /// Only the request.
    Input,
    /// Only the answer.
    Output,
    /// Both.
    #[default]
    Both,
}

impl PhaseSelector {
    /// True when this selector includes `phase`.
    pub fn includes(self, phase: keel_core::Phase) -> bool {
        matches!(
            (self, phase),
            (PhaseSelector::Both, _)
                | (PhaseSelector::Input, keel_core::Phase::Input)
                | (PhaseSelector::Output, keel_core::Phase::Output)
        )
    }
}

/// Settings every check has, whatever its kind.
macro_rules! check_config {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Deserialize, Serialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// The check's name; rules refer to it (`pii.hit`). Letters, digits and `_`.
            pub name: String,
            /// Which side it reads.
            #[serde(default)]
            pub phase: PhaseSelector,
            /// Score at or above which the check counts as a hit.
            #[serde(default)]
            pub threshold: Option<f64>,
            /// Texts longer than this are not scanned; the check reports an error instead.
            #[serde(default)]
            pub max_input_bytes: Option<usize>,
            /// `inline` (default): runs before the answer and can decide; `async`: runs after
            /// the answer is sent, for monitoring only, adding no latency.
            #[serde(default)]
            pub mode: CheckMode,
            $($(#[$fmeta])* pub $field: $ty,)*
        }
    };
}

check_config!(
    /// Regular expressions; each match is a finding of the pattern's kind.
    RegexCheckConfig {
        /// The patterns (Rust `regex` syntax).
        patterns: Vec<RegexPattern>,
        /// Match without regard to case.
        #[serde(default)]
        case_insensitive: bool,
    }
);

/// One pattern of a regex check.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegexPattern {
    /// The kind of its findings (also the redaction placeholder).
    pub kind: String,
    /// The regular expression.
    pub pattern: String,
}

check_config!(
    /// Words and phrases, matched after NFKC normalisation and case folding.
    KeywordsCheckConfig {
        /// The words or phrases.
        words: Vec<String>,
        /// The kind of its findings; defaults to the check's name.
        #[serde(default)]
        finding_kind: Option<String>,
        /// Latin words only match as whole words (`bomb` does not match `bombastic`).
        #[serde(default = "yes")]
        whole_word: bool,
    }
);

fn yes() -> bool {
    true
}

check_config!(
    /// Personal data: validated emails, phones, cards, My Numbers, IBANs, IPs, postal codes.
    PiiCheckConfig {
        /// The kinds to detect; all when omitted.
        #[serde(default)]
        kinds: Option<Vec<PiiKind>>,
    }
);

check_config!(
    /// Credentials: API keys and tokens of known shapes, private keys, high-entropy assignments.
    SecretCheckConfig {}
);

check_config!(
    /// Prompt-injection heuristics in English and Japanese, and hidden characters.
    InjectionCheckConfig {}
);

check_config!(
    /// Answers that decline, apologise and decline, or hand off instead of answering (EN + JA).
    RefusalCheckConfig {}
);

check_config!(
    /// Text length limits, in characters.
    LengthCheckConfig {
        /// Longer texts hit.
        #[serde(default)]
        max_chars: Option<usize>,
        /// Shorter texts hit.
        #[serde(default)]
        min_chars: Option<usize>,
    }
);

check_config!(
    /// Similarity of the text to example sentences, with sentence embeddings (all-MiniLM-L6-v2).
    SemanticCheckConfig {
        /// Sentences the check looks for; the score is the highest cosine similarity to one.
        exemplars: Vec<String>,
        /// Counter-examples: a text closer to one of these than to every exemplar does not hit.
        #[serde(default)]
        allowed: Vec<String>,
    }
);

check_config!(
    /// A small neural classifier over sentence embeddings that scores prompt injection.
    InjectionClassifierCheckConfig {}
);

check_config!(
    /// Policy memory: labelled cases (clusters with provenance) that decide similar new texts,
    /// gated by a Beta posterior over their label agreement (see [`crate::memory`]). The
    /// check's `threshold` is the lower bound a verdict must clear to act.
    MemoryCheckConfig {
        /// Cosine similarity at or above which a labelled case counts as near a text (default 0.65).
        #[serde(default = "memory_radius")]
        radius: f64,
        /// The radius for Japanese texts, whose MiniLM similarities run high (default 0.85).
        #[serde(default = "memory_radius_ja")]
        radius_ja: f64,
        /// How many labels' worth of the nearest cases within `radius` are consulted (default 5;
        /// labels faded by age count fractionally, so more of them are read).
        #[serde(default = "memory_k")]
        k: usize,
        /// Pseudo-counts of the Beta prior over label agreement (default alpha = 1, beta = 1).
        #[serde(default)]
        prior: crate::memory::BetaPrior,
        /// Credibility of the posterior lower bound (default 0.8: the 20 % quantile).
        #[serde(default = "memory_confidence")]
        confidence: f64,
        /// Labels lose half their weight per this many days before the newest label in the
        /// memory (default: no decay).
        #[serde(default)]
        half_life_days: Option<f64>,
        /// The memory's entries (written by `keel policy candidate`).
        #[serde(default)]
        entries: Vec<crate::memory::MemoryEntry>,
    }
);

fn memory_radius() -> f64 {
    crate::memory::DEFAULT_RADIUS
}

fn memory_radius_ja() -> f64 {
    crate::memory::DEFAULT_RADIUS_JA
}

fn memory_k() -> usize {
    crate::memory::DEFAULT_K
}

fn memory_confidence() -> f64 {
    crate::memory::DEFAULT_CONFIDENCE
}

/// One check, tagged by its kind.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CheckConfig {
    /// See [`RegexCheckConfig`].
    Regex(RegexCheckConfig),
    /// See [`KeywordsCheckConfig`].
    Keywords(KeywordsCheckConfig),
    /// See [`PiiCheckConfig`].
    Pii(PiiCheckConfig),
    /// See [`SecretCheckConfig`].
    Secret(SecretCheckConfig),
    /// See [`InjectionCheckConfig`].
    Injection(InjectionCheckConfig),
    /// See [`RefusalCheckConfig`].
    Refusal(RefusalCheckConfig),
    /// See [`LengthCheckConfig`].
    Length(LengthCheckConfig),
    /// See [`SemanticCheckConfig`].
    Semantic(SemanticCheckConfig),
    /// See [`InjectionClassifierCheckConfig`].
    InjectionClassifier(InjectionClassifierCheckConfig),
    /// See [`MemoryCheckConfig`].
    Memory(MemoryCheckConfig),
}

/// A check's common settings, whatever its kind.
pub struct CommonCheckSettings<'a> {
    /// The check's name.
    pub name: &'a str,
    /// Its phase selector.
    pub phase: PhaseSelector,
    /// Its hit threshold.
    pub threshold: Option<f64>,
    /// Its input size limit.
    pub max_input_bytes: Option<usize>,
    /// Inline or async.
    pub mode: CheckMode,
}

impl CheckConfig {
    /// The kind as written in the file.
    pub fn kind(&self) -> &'static str {
        match self {
            CheckConfig::Regex(_) => "regex",
            CheckConfig::Keywords(_) => "keywords",
            CheckConfig::Pii(_) => "pii",
            CheckConfig::Secret(_) => "secret",
            CheckConfig::Injection(_) => "injection",
            CheckConfig::Refusal(_) => "refusal",
            CheckConfig::Length(_) => "length",
            CheckConfig::Semantic(_) => "semantic",
            CheckConfig::InjectionClassifier(_) => "injection_classifier",
            CheckConfig::Memory(_) => "memory",
        }
    }

    /// The settings every kind shares.
    pub fn common(&self) -> CommonCheckSettings<'_> {
        macro_rules! common {
            ($c:expr) => {
                CommonCheckSettings {
                    name: &$c.name,
                    phase: $c.phase,
                    threshold: $c.threshold,
                    max_input_bytes: $c.max_input_bytes,
                    mode: $c.mode,
                }
            };
        }
        match self {
            CheckConfig::Regex(c) => common!(c),
            CheckConfig::Keywords(c) => common!(c),
            CheckConfig::Pii(c) => common!(c),
            CheckConfig::Secret(c) => common!(c),
            CheckConfig::Injection(c) => common!(c),
            CheckConfig::Refusal(c) => common!(c),
            CheckConfig::Length(c) => common!(c),
            CheckConfig::Semantic(c) => common!(c),
            CheckConfig::InjectionClassifier(c) => common!(c),
            CheckConfig::Memory(c) => common!(c),
        }
    }

    /// True when the check needs the sentence embedder.
    pub fn needs_embedder(&self) -> bool {
        matches!(self, CheckConfig::Semantic(_) | CheckConfig::InjectionClassifier(_) | CheckConfig::Memory(_))
    }
}

/// A rule: when its condition holds, its action is the decision.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// The rule's name, quoted in explanations.
    pub name: String,
    /// Lower numbers are tried first; ties keep file order.
    #[serde(default = "default_priority")]
    pub priority: i32,
    /// Which phases the rule is tried in.
    #[serde(default)]
    pub phase: PhaseSelector,
    /// The condition (see the expression language in the README).
    pub when: String,
    /// What to do when it holds.
    pub action: keel_core::Action,
    /// A reply that overrides the policy's message for `block` / `escalate`.
    #[serde(default)]
    pub message: Option<LocalizedText>,
    /// For `redact`: the checks whose findings are replaced; defaults to those the condition reads.
    #[serde(default)]
    pub redact: Option<Vec<String>>,
}

fn default_priority() -> i32 {
    100
}
