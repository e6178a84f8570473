//! A compiled policy and its decisions.
//!
//! [`Policy::parse`] validates a policy file completely (names, patterns, conditions, which
//! checks a rule may read in which phase) and reports the first problem with file, line,
//! column and field. A built [`Policy`] is immutable; a new version is a new `Policy`.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use keel_core::{Action, CheckMode, CheckResult, Decision, Evidence, Finding, Phase, PolicyRef};
use keel_models::{Embedder, InjectionClassifier};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::check::{self, Check, CheckError, CheckInput, Scope};
use crate::expr::{self, ContextVar, Env, Expr, Field};
use crate::file::{
    CheckConfig, LocalizedText, Messages, OnCheckError, PhaseSelector, PolicyFile, DEFAULT_STREAM_WINDOW,
};
use crate::source::{FieldPath, SourceError, TomlSource};
use crate::text::{redact, Lang};

/// Why a policy could not be loaded.
#[derive(Debug, Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("{file}: cannot read the policy file: {source}")]
    Io {
        /// The file.
        file: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a valid policy.
    #[error(transparent)]
    Invalid(#[from] SourceError),
}

/// A check ready to run, with its policy-level settings.
#[derive(Clone)]
struct CompiledCheck {
    name: String,
    kind: &'static str,
    phase: PhaseSelector,
    threshold: f64,
    max_input_bytes: Option<usize>,
    mode: CheckMode,
    imp: Arc<dyn Check>,
}

/// A rule with its condition compiled.
#[derive(Clone)]
struct CompiledRule {
    name: String,
    priority: i32,
    phase: PhaseSelector,
    when_source: String,
    when: Expr,
    action: Action,
    message: Option<LocalizedText>,
    redact_slots: Vec<usize>,
    reads: Vec<usize>,
}

/// A validated, immutable policy version.
pub struct Policy {
    name: String,
    version: String,
    description: String,
    parent: Option<String>,
    parent_sha256: Option<String>,
    on_check_error: OnCheckError,
    stream_window_bytes: usize,
    messages: Messages,
    checks: Vec<CompiledCheck>,
    rules: Vec<CompiledRule>,
    source_sha256: String,
    source_text: String,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("checks", &self.checks.len())
            .field("rules", &self.rules.len())
            .finish()
    }
}

/// What a decision reads besides check results.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The app of the client key.
    pub app: &'a str,
    /// The model asked for.
    pub model: &'a str,
    /// The language replies should be in.
    pub lang: Lang,
}

/// One text to judge: a request message (with its index) or the answer.
#[derive(Debug, Clone, Copy)]
pub struct TextPart<'a> {
    /// Index of the request message, `None` for the answer.
    pub message: Option<usize>,
    /// The text.
    pub text: &'a str,
}

/// The outcome of judging one phase.
#[derive(Debug, Clone)]
pub struct Judgement {
    /// The decision and its explanation.
    pub decision: Decision,
    /// Every check that ran, in policy order.
    pub results: Vec<CheckResult>,
    /// The reply that replaces the answer, for `block` and `escalate`.
    pub reply: Option<String>,
    /// For `redact`: each part's redacted text, aligned with the parts judged.
    pub redacted: Vec<Option<String>>,
}

/// The rule-level part of a decision, before texts are rewritten.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// The decision and its explanation.
    pub decision: Decision,
    /// The reply, for `block` and `escalate`.
    pub reply: Option<String>,
    /// Names of the checks whose findings a `redact` replaces.
    pub redact_checks: Vec<String>,
}

/// The models checks may use; a policy with model-based checks needs them to compile.
#[derive(Clone, Default)]
pub struct Models {
    /// The sentence embedder (semantic and classifier checks).
    pub embedder: Option<Arc<dyn Embedder>>,
    /// The prompt-injection classifier over the embedder's vectors.
    pub classifier: Option<Arc<InjectionClassifier>>,
}

/// The built-in default policy pack (`policies/default.toml`).
pub const DEFAULT_PACK: &str = include_str!("../../../policies/default.toml");

/// How deep `extends` chains may go, so a cycle is an error rather than a hang.
pub(crate) const MAX_EXTENDS_DEPTH: usize = 4;

const RESERVED: &[&str] = &["phase", "app", "model", "true", "false", "and", "or", "not", "in", "has_any", "len"];

impl Policy {
    /// Reads and compiles the policy file at `path` (without model-based checks).
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        Policy::load_with(path, &Models::default())
    }

    /// Reads and compiles the policy file at `path`, with `models` for model-based checks.
    pub fn load_with(path: &Path, models: &Models) -> Result<Policy, PolicyError> {
        Policy::load_at_depth(path, models, 0)
    }

    fn load_at_depth(path: &Path, models: &Models, depth: usize) -> Result<Policy, PolicyError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Io { file: file.clone(), source })?;
        Ok(Policy::parse_at_depth(&file, &text, models, depth)?)
    }

    /// Compiles policy `text`, naming `file` in errors (without model-based checks).
    pub fn parse(file: &str, text: &str) -> Result<Policy, SourceError> {
        Policy::parse_with(file, text, &Models::default())
    }

    /// Compiles policy `text` with `models` for model-based checks, naming `file` in errors.
    pub fn parse_with(file: &str, text: &str, models: &Models) -> Result<Policy, SourceError> {
        Policy::parse_at_depth(file, text, models, 0)
    }

    /// True when the policy in `text` (or one it extends) has checks that need the embedder.
    pub fn needs_embedder(file: &str, text: &str) -> Result<bool, SourceError> {
        let raw: PolicyFile = TomlSource::new(file, text).deserialize()?;
        let own = raw.checks.iter().any(CheckConfig::needs_embedder);
        let base = match raw.extends.as_deref() {
            Some("default") | None => false,
            Some(path) => {
                let path = Path::new(file).parent().unwrap_or(Path::new(".")).join(path);
                match std::fs::read_to_string(&path) {
                    Ok(text) => Policy::needs_embedder(&path.display().to_string(), &text)?,
                    Err(_) => false,
                }
            }
        };
        Ok(own || base)
    }

    fn parse_at_depth(file: &str, text: &str, models: &Models, depth: usize) -> Result<Policy, SourceError> {
        let source = TomlSource::new(file, text);
        let raw: PolicyFile = source.deserialize()?;
        let base = match raw.extends.as_deref() {
            None => None,
            Some(_) if depth >= MAX_EXTENDS_DEPTH => {
                return Err(
                    source.error_at(&FieldPath::key("extends"), "policies extend each other too deeply (a cycle?)")
                )
            }
            Some("default") => {
                Some(Policy::parse_at_depth("<built-in default pack>", DEFAULT_PACK, models, depth + 1)?)
            }
            Some(relative) => {
                let path = Path::new(file).parent().unwrap_or(Path::new(".")).join(relative);
                let base = Policy::load_at_depth(&path, models, depth + 1).map_err(|e| {
                    source.error_at(&FieldPath::key("extends"), format!("cannot use the base policy: {e}"))
                })?;
                Some(base)
            }
        };
        Policy::compile(raw, &source, text, models, base)
    }

    fn compile(
        raw: PolicyFile,
        source: &TomlSource<'_>,
        text: &str,
        models: &Models,
        base: Option<Policy>,
    ) -> Result<Policy, SourceError> {
        if raw.name.trim().is_empty() {
            return Err(source.error_at(&FieldPath::key("name"), "must not be empty"));
        }
        if raw.version.trim().is_empty() || raw.version.contains(char::is_whitespace) {
            return Err(source
                .error_at(&FieldPath::key("version"), "must be a non-empty version without spaces, e.g. \"1.2.0\""));
        }
        let stream_window_bytes =
            raw.stream_window_bytes.or(base.as_ref().map(|b| b.stream_window_bytes)).unwrap_or(DEFAULT_STREAM_WINDOW);
        if !(16..=65_536).contains(&stream_window_bytes) {
            return Err(source.error_at(&FieldPath::key("stream_window_bytes"), "must be between 16 and 65536"));
        }
        let on_check_error = raw.on_check_error.or(base.as_ref().map(|b| b.on_check_error)).unwrap_or_default();
        let messages = match (raw.messages, &base) {
            (Some(messages), _) => messages,
            (None, Some(base)) => base.messages.clone(),
            (None, None) => {
                return Err(source.error_at(&FieldPath::default(), "missing [messages] (block and escalate replies)"))
            }
        };
        for (key, text) in [("block", &messages.block), ("escalate", &messages.escalate)] {
            if text.en.trim().is_empty() {
                return Err(source.error_at(&FieldPath::key("messages").field(key).field("en"), "must not be empty"));
            }
        }

        let (mut checks, base_rules) = match base {
            Some(base) => (base.checks, base.rules),
            None => (Vec::new(), Vec::new()),
        };
        let mut names: HashSet<String> = checks.iter().map(|c| c.name.clone()).collect();
        for (i, config) in raw.checks.iter().enumerate() {
            let path = FieldPath::key("checks").index(i);
            let common = config.common();
            if !is_identifier(common.name) {
                return Err(source.error_at(
                    &path.field("name"),
                    format!(
                        "`{}` is not a valid check name (use lowercase letters, digits and _, starting with a letter)",
                        common.name
                    ),
                ));
            }
            if RESERVED.contains(&common.name) {
                return Err(
                    source.error_at(&path.field("name"), format!("`{}` is a reserved word in conditions", common.name))
                );
            }
            if !names.insert(common.name.to_string()) {
                return Err(
                    source.error_at(&path.field("name"), format!("a check named `{}` is already defined", common.name))
                );
            }
            if matches!(config, CheckConfig::Refusal(_)) && common.phase != PhaseSelector::Output {
                return Err(source.error_at(
                    &path.field("phase"),
                    "a refusal check reads the model's answer: set phase = \"output\"",
                ));
            }
            let threshold = common.threshold.unwrap_or(0.5);
            if !(0.0..=1.0).contains(&threshold) {
                return Err(source.error_at(&path.field("threshold"), "must be between 0 and 1"));
            }
            if common.max_input_bytes == Some(0) {
                return Err(source.error_at(&path.field("max_input_bytes"), "must be greater than 0"));
            }
            let imp = check::build(config, threshold, models).map_err(|e| {
                let mut field = path.clone();
                field.0.extend(e.field.iter().cloned());
                source.error_at(&field, e.message)
            })?;
            checks.push(CompiledCheck {
                name: common.name.to_string(),
                kind: config.kind(),
                phase: common.phase,
                threshold,
                max_input_bytes: common.max_input_bytes,
                mode: common.mode,
                imp,
            });
        }

        let slots = Slots(&checks);
        // Base rules keep their order ahead of this file's at equal priority.
        let base_count = base_rules.len();
        let mut rules: Vec<(i32, usize, CompiledRule)> =
            base_rules.into_iter().enumerate().map(|(i, r)| (r.priority, i, r)).collect();
        let mut rule_names: HashSet<String> = rules.iter().map(|(_, _, r)| r.name.clone()).collect();
        for (i, rule) in raw.rules.iter().enumerate() {
            let path = FieldPath::key("rules").index(i);
            if rule.name.trim().is_empty() {
                return Err(source.error_at(&path.field("name"), "must not be empty"));
            }
            if !rule_names.insert(rule.name.clone()) {
                return Err(
                    source.error_at(&path.field("name"), format!("a rule named `{}` is already defined", rule.name))
                );
            }
            let when = expr::compile(&rule.when, &slots)
                .map_err(|e| source.error_at_offset(&path.field("when"), e.offset, e.message.clone()))?;
            let reads = when.referenced_checks();
            for &slot in &reads {
                let check = &checks[slot];
                if check.mode == CheckMode::Async {
                    return Err(source.error_at(
                        &path.field("when"),
                        format!("reads check `{}`, which runs async (after the answer, for monitoring) and so cannot decide", check.name),
                    ));
                }
                let never = [Phase::Input, Phase::Output]
                    .into_iter()
                    .filter(|p| rule.phase.includes(*p))
                    .all(|p| !check.phase.includes(p));
                if never {
                    return Err(source.error_at(
                        &path.field("when"),
                        format!(
                            "reads check `{}`, which never runs in this rule's phase ({:?} vs {:?})",
                            check.name, rule.phase, check.phase
                        )
                        .to_lowercase(),
                    ));
                }
            }
            let redact_slots = match &rule.redact {
                Some(list) => {
                    if rule.action != Action::Redact {
                        return Err(source.error_at(
                            &path.field("redact"),
                            "only rules with action = \"redact\" take a redact list",
                        ));
                    }
                    let mut found = Vec::new();
                    for (j, name) in list.iter().enumerate() {
                        match checks.iter().position(|c| &c.name == name) {
                            Some(slot) => found.push(slot),
                            None => {
                                return Err(
                                    source.error_at(&path.field("redact").index(j), format!("unknown check `{name}`"))
                                )
                            }
                        }
                    }
                    found
                }
                None => reads.clone(),
            };
            if rule.message.is_some() && !matches!(rule.action, Action::Block | Action::Escalate) {
                return Err(source.error_at(&path.field("message"), "only block and escalate rules send a message"));
            }
            rules.push((
                rule.priority,
                base_count + i,
                CompiledRule {
                    name: rule.name.clone(),
                    priority: rule.priority,
                    phase: rule.phase,
                    when_source: rule.when.clone(),
                    when,
                    action: rule.action,
                    message: rule.message.clone(),
                    redact_slots,
                    reads,
                },
            ));
        }
        rules.sort_by_key(|(priority, index, _)| (*priority, *index));

        Ok(Policy {
            name: raw.name,
            version: raw.version,
            description: raw.description,
            parent: raw.parent,
            parent_sha256: raw.parent_sha256,
            on_check_error,
            stream_window_bytes,
            messages,
            checks,
            rules: rules.into_iter().map(|(_, _, r)| r).collect(),
            source_sha256: hex::encode(Sha256::digest(text.as_bytes())),
            source_text: text.to_string(),
        })
    }

    /// `name@version`.
    pub fn reference(&self) -> PolicyRef {
        PolicyRef { name: self.name.clone(), version: self.version.clone() }
    }

    /// The policy's description.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The version this one was derived from (`name@version`), when recorded.
    pub fn parent(&self) -> Option<&str> {
        self.parent.as_deref()
    }

    /// Lowercase hex SHA-256 of the parent version's text, when recorded.
    pub fn parent_sha256(&self) -> Option<&str> {
        self.parent_sha256.as_deref()
    }

    /// Lowercase hex SHA-256 of the policy file's text.
    pub fn source_sha256(&self) -> &str {
        &self.source_sha256
    }

    /// The policy file's text, as loaded.
    pub fn source_text(&self) -> &str {
        &self.source_text
    }

    /// Bytes of streamed output held back for checking.
    pub fn stream_window_bytes(&self) -> usize {
        self.stream_window_bytes
    }

    /// The names of the policy's checks, in file order.
    pub fn check_names(&self) -> Vec<&str> {
        self.checks.iter().map(|c| c.name.as_str()).collect()
    }

    /// Position of the check called `name` in the policy.
    pub(crate) fn check_index(&self, name: &str) -> Option<usize> {
        self.checks.iter().position(|c| c.name == name)
    }

    /// True when at least one check reads `phase`.
    pub fn has_checks(&self, phase: Phase) -> bool {
        self.checks.iter().any(|c| c.phase.includes(phase) && c.mode == CheckMode::Inline)
    }

    /// True when some check runs a model (and so costs milliseconds, not microseconds).
    pub fn has_model_checks(&self) -> bool {
        self.checks.iter().any(|c| c.imp.scope() == Scope::Final)
    }

    /// True when an async (monitoring-only) check reads `phase`.
    pub fn has_async_checks(&self, phase: Phase) -> bool {
        self.checks.iter().any(|c| c.phase.includes(phase) && c.mode == CheckMode::Async)
    }

    /// True when an inline output check needs the complete answer, so a stream is held back
    /// entirely until it ends.
    pub fn holds_whole_answer(&self) -> bool {
        self.checks
            .iter()
            .any(|c| c.phase.includes(Phase::Output) && c.mode == CheckMode::Inline && c.imp.scope() == Scope::Final)
    }

    /// A human-readable summary for `keel policy check`.
    pub fn summary(&self) -> String {
        let mut out = format!("policy {}@{}", self.name, self.version);
        if !self.description.is_empty() {
            out.push_str(&format!(" — {}", self.description));
        }
        out.push_str(&format!(
            "\n  on_check_error = {:?}, stream window = {} bytes\n  {} checks:\n",
            self.on_check_error,
            self.stream_window_bytes,
            self.checks.len()
        ));
        for c in &self.checks {
            out.push_str(&format!(
                "    {:<22} {:<10} {:<7} threshold {}\n",
                c.name,
                c.kind,
                phase_name(c.phase),
                c.threshold
            ));
        }
        out.push_str(&format!("  {} rules (first match wins):\n", self.rules.len()));
        for r in &self.rules {
            out.push_str(&format!(
                "    {:<22} {:<8} {:<7} when {}\n",
                r.name,
                r.action.as_str(),
                phase_name(r.phase),
                r.when_source
            ));
        }
        out
    }

    /// Runs every check that reads `phase` on every part; findings carry the part's message index.
    pub fn run_checks(&self, phase: Phase, parts: &[TextPart<'_>]) -> Vec<CheckResult> {
        self.run_checks_where(phase, parts, |c| c.mode == CheckMode::Inline)
    }

    /// Runs the async (monitoring-only) checks of `phase`; call it after the answer is sent.
    pub fn run_async_checks(&self, phase: Phase, parts: &[TextPart<'_>]) -> Vec<CheckResult> {
        self.run_checks_where(phase, parts, |c| c.mode == CheckMode::Async)
    }

    /// Runs the inline checks of `phase` with the given scope (the stream guard's windows).
    pub(crate) fn run_checks_scoped(&self, phase: Phase, parts: &[TextPart<'_>], scope: Scope) -> Vec<CheckResult> {
        self.run_checks_where(phase, parts, |c| c.mode == CheckMode::Inline && c.imp.scope() == scope)
    }

    fn run_checks_where(
        &self,
        phase: Phase,
        parts: &[TextPart<'_>],
        keep: impl Fn(&CompiledCheck) -> bool,
    ) -> Vec<CheckResult> {
        let inputs: Vec<CheckInput<'_>> = parts.iter().map(|p| CheckInput::new(p.text)).collect();
        self.checks
            .iter()
            .filter(|c| c.phase.includes(phase) && keep(c))
            .map(|c| Self::run_one(c, phase, parts, &inputs))
            .collect()
    }

    fn run_one(check: &CompiledCheck, phase: Phase, parts: &[TextPart<'_>], inputs: &[CheckInput<'_>]) -> CheckResult {
        let started = Instant::now();
        let mut score: f64 = 0.0;
        let mut findings = Vec::new();
        let mut error = None;
        let mut detail: Option<String> = None;
        for (part, input) in parts.iter().zip(inputs) {
            let outcome = match check.max_input_bytes {
                Some(limit) if part.text.len() > limit => {
                    Err(CheckError::InputTooLarge { actual: part.text.len(), limit })
                }
                _ => check.imp.run(input),
            };
            match outcome {
                Ok(output) => {
                    let clamped = output.score.clamp(0.0, 1.0);
                    if output.detail.is_some() && (detail.is_none() || clamped > score) {
                        detail = output.detail;
                    }
                    score = score.max(clamped);
                    findings.extend(output.findings.into_iter().map(|f| Finding { message: part.message, ..f }));
                }
                Err(e) => {
                    error = Some(e.to_string());
                    break;
                }
            }
        }
        if error.is_some() {
            score = 0.0;
        }
        CheckResult {
            check: check.name.clone(),
            kind: check.kind.to_string(),
            phase,
            score,
            hit: error.is_none() && score >= check.threshold && score > 0.0,
            findings,
            error,
            detail,
            elapsed_us: started.elapsed().as_micros() as u64,
            mode: check.mode,
        }
    }

    /// Runs the checks of `phase` on `parts` and decides.
    pub fn judge(&self, phase: Phase, parts: &[TextPart<'_>], ctx: &Context<'_>) -> Judgement {
        let results = self.run_checks(phase, parts);
        let verdict = self.decide(phase, &results, ctx);
        let redacted = if verdict.decision.action == Action::Redact {
            parts
                .iter()
                .map(|part| {
                    let spans: Vec<&Finding> = results
                        .iter()
                        .filter(|r| verdict.redact_checks.contains(&r.check))
                        .flat_map(|r| r.findings.iter())
                        .filter(|f| f.message == part.message)
                        .collect();
                    (!spans.is_empty()).then(|| redact(part.text, &spans))
                })
                .collect()
        } else {
            vec![None; parts.len()]
        };
        Judgement { decision: verdict.decision, results, reply: verdict.reply, redacted }
    }

    /// Applies the rules of `phase` to check `results` (first match by priority wins).
    pub fn decide(&self, phase: Phase, results: &[CheckResult], ctx: &Context<'_>) -> Verdict {
        let env = ResultEnv::new(self, results, phase, ctx);
        let failed: Vec<&CheckResult> = results.iter().filter(|r| r.error.is_some()).collect();
        if !failed.is_empty() && self.on_check_error == OnCheckError::FailClosed {
            let names: Vec<&str> = failed.iter().map(|r| r.check.as_str()).collect();
            let reason = format!(
                "check(s) {} could not run ({}); this policy fails closed",
                names.join(", "),
                failed[0].error.as_deref().unwrap_or_default()
            );
            return Verdict {
                decision: self.decision(Action::Block, phase, None, failed.iter().copied(), reason),
                reply: Some(self.localized(&self.messages.block, ctx.lang)),
                redact_checks: Vec::new(),
            };
        }
        for rule in &self.rules {
            if !rule.phase.includes(phase) || !rule.when.eval_bool(&env) {
                continue;
            }
            let evidence = rule.reads.iter().filter_map(|slot| env.result(*slot));
            let reason = format!("rule `{}` matched: {}", rule.name, rule.when_source);
            let reply = match rule.action {
                Action::Block => Some(self.localized(rule.message.as_ref().unwrap_or(&self.messages.block), ctx.lang)),
                Action::Escalate => {
                    Some(self.localized(rule.message.as_ref().unwrap_or(&self.messages.escalate), ctx.lang))
                }
                _ => None,
            };
            let mut decision = self.decision(rule.action, phase, Some(rule), evidence, reason);
            if !failed.is_empty() {
                decision.reason.push_str(&format!(" (fail_open: {} failed and read as no signal)", failed[0].check));
            }
            return Verdict {
                decision,
                reply,
                redact_checks: rule.redact_slots.iter().map(|s| self.checks[*s].name.clone()).collect(),
            };
        }
        let hits: Vec<&CheckResult> = results.iter().filter(|r| r.hit || r.error.is_some()).collect();
        let reason = if hits.is_empty() {
            "no rule matched and no check hit".to_string()
        } else {
            format!("no rule matched ({} check(s) hit without a rule for them)", hits.len())
        };
        Verdict {
            decision: self.decision(Action::Allow, phase, None, hits.into_iter(), reason),
            reply: None,
            redact_checks: Vec::new(),
        }
    }

    fn decision<'r>(
        &self,
        action: Action,
        phase: Phase,
        rule: Option<&CompiledRule>,
        evidence: impl Iterator<Item = &'r CheckResult>,
        reason: String,
    ) -> Decision {
        Decision {
            action,
            phase,
            rule: rule.map(|r| r.name.clone()),
            condition: rule.map(|r| r.when_source.clone()),
            policy: self.reference(),
            evidence: evidence.map(evidence_of).collect(),
            reason,
        }
    }

    fn localized(&self, text: &LocalizedText, lang: Lang) -> String {
        match (lang, &text.ja) {
            (Lang::Ja, Some(ja)) => ja.clone(),
            _ => text.en.clone(),
        }
    }
}

fn evidence_of(result: &CheckResult) -> Evidence {
    let mut kinds: Vec<String> = Vec::new();
    for f in &result.findings {
        if !kinds.contains(&f.kind) {
            kinds.push(f.kind.clone());
        }
    }
    Evidence {
        check: result.check.clone(),
        score: result.score,
        hit: result.hit,
        kinds,
        error: result.error.clone(),
        detail: result.detail.clone(),
    }
}

fn phase_name(phase: PhaseSelector) -> &'static str {
    match phase {
        PhaseSelector::Input => "input",
        PhaseSelector::Output => "output",
        PhaseSelector::Both => "both",
    }
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Check names → slots, for compiling conditions.
struct Slots<'a>(&'a [CompiledCheck]);

impl expr::Names for Slots<'_> {
    fn check_slot(&self, name: &str) -> Option<usize> {
        self.0.iter().position(|c| c.name == name)
    }
    fn check_names(&self) -> Vec<String> {
        self.0.iter().map(|c| c.name.clone()).collect()
    }
}

/// Check results indexed by slot, for evaluating conditions.
struct ResultEnv<'a> {
    by_slot: Vec<Option<&'a CheckResult>>,
    kinds: Vec<Vec<String>>,
    phase: Phase,
    ctx: &'a Context<'a>,
}

impl<'a> ResultEnv<'a> {
    fn new(policy: &Policy, results: &'a [CheckResult], phase: Phase, ctx: &'a Context<'a>) -> Self {
        let by_slot: Vec<Option<&CheckResult>> =
            policy.checks.iter().map(|c| results.iter().find(|r| r.check == c.name)).collect();
        let kinds = by_slot.iter().map(|r| r.map(|r| evidence_of(r).kinds).unwrap_or_default()).collect();
        ResultEnv { by_slot, kinds, phase, ctx }
    }

    fn result(&self, slot: usize) -> Option<&'a CheckResult> {
        self.by_slot.get(slot).copied().flatten()
    }
}

impl Env for ResultEnv<'_> {
    fn check_num(&self, slot: usize, field: Field) -> f64 {
        match (self.result(slot), field) {
            (Some(r), Field::Score) => r.score,
            (Some(r), Field::Count) => r.findings.len() as f64,
            _ => 0.0,
        }
    }

    fn check_bool(&self, slot: usize, field: Field) -> bool {
        match (self.result(slot), field) {
            (Some(r), Field::Hit) => r.hit,
            (Some(r), Field::Error) => r.error.is_some(),
            _ => false,
        }
    }

    fn check_kinds(&self, slot: usize) -> &[String] {
        self.kinds.get(slot).map(Vec::as_slice).unwrap_or(&[])
    }

    fn context(&self, var: ContextVar) -> &str {
        match var {
            ContextVar::Phase => self.phase.as_str(),
            ContextVar::App => self.ctx.app,
            ContextVar::Model => self.ctx.model,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "name = \"t\"\nversion = \"1\"\n[messages]\nblock = { en = \"no\", ja = \"いいえ\" }\nescalate = { en = \"human\" }\n";

    fn policy(body: &str) -> Result<Policy, SourceError> {
        Policy::parse("p.toml", &format!("{HEADER}{body}"))
    }

    fn err(body: &str) -> String {
        policy(body).unwrap_err().to_string()
    }

    const CTX: Context<'static> = Context { app: "support", model: "m", lang: Lang::En };

    #[test]
    fn the_default_pack_compiles() {
        let p = Policy::parse("default.toml", include_str!("../../../policies/default.toml")).unwrap();
        assert_eq!(p.reference().to_string(), "default@1.1.0");
        assert!(p.summary().contains("block-injection"));
    }

    #[test]
    fn errors_name_file_line_column_and_field() {
        insta::assert_snapshot!(err("[[checks]]\nname = \"pii\"\nkind = \"pii\"\n[[rules]]\nname = \"r\"\nwhen = \"pii && secret\"\naction = \"block\"\n"),
            @"p.toml:11:16: rules[0].when: unknown check `secret` (this policy's checks: pii)");
        insta::assert_snapshot!(err("[[checks]]\nname = \"r\"\nkind = \"regex\"\npatterns = [{ kind = \"x\", pattern = \"(\" }]\n"),
            @"p.toml:9:37: checks[0].patterns[0].pattern: invalid regular expression: error: unclosed group");
        insta::assert_snapshot!(err("[[checks]]\nname = \"Bad Name\"\nkind = \"pii\"\n"),
            @"p.toml:7:8: checks[0].name: `Bad Name` is not a valid check name (use lowercase letters, digits and _, starting with a letter)");
        insta::assert_snapshot!(err("[[checks]]\nname = \"a\"\nkind = \"telepathy\"\n"),
            @"p.toml:8:8: unknown variant `telepathy`, expected one of `regex`, `keywords`, `pii`, `secret`, `injection`, `refusal`, `length`, `semantic`, `injection_classifier`, `memory`");
        insta::assert_snapshot!(err("[[checks]]\nname = \"a\"\nkind = \"pii\"\ncolour = \"red\"\n"),
            @"p.toml:6:1: unknown field `colour`, expected one of `name`, `phase`, `threshold`, `max_input_bytes`, `mode`, `kinds`");
        insta::assert_snapshot!(err("[[rules]]\nname = \"r\"\nwhen = \"true\"\naction = \"explode\"\n"),
            @"p.toml:9:10: unknown variant `explode`, expected one of `allow`, `flag`, `redact`, `escalate`, `block`");
        insta::assert_snapshot!(err("[[checks]]\nname = \"inj\"\nkind = \"injection\"\nphase = \"input\"\n[[rules]]\nname = \"r\"\nphase = \"output\"\nwhen = \"inj\"\naction = \"block\"\n"),
            @"p.toml:13:8: rules[0].when: reads check `inj`, which never runs in this rule's phase (output vs input)");
        insta::assert_snapshot!(err("[[checks]]\nname = \"a\"\nkind = \"pii\"\nthreshold = 2.0\n"),
            @"p.toml:9:13: checks[0].threshold: must be between 0 and 1");
        insta::assert_snapshot!(err("[[checks]]\nname = \"refused\"\nkind = \"refusal\"\n"),
            @"p.toml:6:1: checks[0].phase: a refusal check reads the model's answer: set phase = \"output\"");
    }

    #[test]
    fn the_default_pack_monitors_refusals_without_acting_on_them() {
        let p = Policy::parse("default.toml", DEFAULT_PACK).unwrap();
        let refused = "I'm sorry, but I can't help with that request.";
        let j = p.judge(Phase::Output, &[TextPart { message: None, text: refused }], &CTX);
        let refusal = j.results.iter().find(|r| r.kind == "refusal").unwrap();
        assert!(refusal.hit);
        assert_eq!(refusal.findings[0].kind, "apologises_and_declines");
        assert_eq!(j.decision.action, Action::Allow);
        let answered = "Sorry for the wait! The XR-200 has a two-year warranty.";
        let j = p.judge(Phase::Output, &[TextPart { message: None, text: answered }], &CTX);
        assert!(!j.results.iter().any(|r| r.kind == "refusal" && r.hit));
        let j = p.judge(Phase::Input, &[TextPart { message: Some(0), text: refused }], &CTX);
        assert!(!j.results.iter().any(|r| r.kind == "refusal"), "refusal reads the output only");
    }

    #[test]
    fn the_default_pack_hands_over_threats_of_legal_action_but_not_every_mention_of_a_lawyer() {
        let p = Policy::parse("default.toml", DEFAULT_PACK).unwrap();
        let action = |text: &str| p.judge(Phase::Input, &[TextPart { message: Some(0), text }], &CTX).decision.action;
        assert_eq!(action("Fix this today or I will contact my lawyer."), Action::Escalate);
        assert_eq!(action("この件は弁護士に相談します。"), Action::Escalate);
        assert_eq!(action("Does the warranty cover blenders bought for a lawyer's office kitchen?"), Action::Allow);
        assert_eq!(action("弁護士事務所で使うミキサーも保証の対象ですか?"), Action::Allow);
    }

    #[test]
    fn a_syntax_error_is_located() {
        let e = Policy::parse("p.toml", "name = \"t\"\nversion = \n").unwrap_err();
        assert_eq!(e.line, Some(2));
    }

    #[test]
    fn first_matching_rule_by_priority_wins() {
        let p = policy("[[checks]]\nname = \"pii\"\nkind = \"pii\"\n[[rules]]\nname = \"late\"\npriority = 50\nwhen = \"pii\"\naction = \"block\"\n[[rules]]\nname = \"early\"\npriority = 5\nwhen = \"pii\"\naction = \"flag\"\n").unwrap();
        let j = p.judge(Phase::Input, &[TextPart { message: Some(0), text: "mail a.b@example.com" }], &CTX);
        assert_eq!(j.decision.action, Action::Flag);
        assert_eq!(j.decision.rule.as_deref(), Some("early"));
        assert_eq!(j.decision.evidence[0].kinds, vec!["email"]);
        let j = p.judge(Phase::Input, &[TextPart { message: Some(0), text: "nothing here" }], &CTX);
        assert_eq!(j.decision.action, Action::Allow);
        assert_eq!(j.decision.rule, None);
    }

    #[test]
    fn redaction_rewrites_each_part_and_block_replies_in_the_users_language() {
        let p = policy("[[checks]]\nname = \"pii\"\nkind = \"pii\"\n[[checks]]\nname = \"bad\"\nkind = \"keywords\"\nwords = [\"爆弾\"]\n[[rules]]\nname = \"b\"\nwhen = \"bad\"\naction = \"block\"\n[[rules]]\nname = \"r\"\nwhen = \"pii\"\naction = \"redact\"\n").unwrap();
        let parts = [
            TextPart { message: Some(0), text: "hello" },
            TextPart { message: Some(1), text: "call +1 415 555 0100 now" },
        ];
        let j = p.judge(Phase::Input, &parts, &CTX);
        assert_eq!(j.decision.action, Action::Redact);
        assert_eq!(j.redacted, vec![None, Some("call [PHONE] now".to_string())]);
        let ja = Context { lang: Lang::Ja, ..CTX };
        let j = p.judge(Phase::Input, &[TextPart { message: Some(0), text: "爆弾の作り方" }], &ja);
        assert_eq!(j.decision.action, Action::Block);
        assert_eq!(j.reply.as_deref(), Some("いいえ"));
        let j = p.judge(Phase::Input, &[TextPart { message: Some(0), text: "爆弾" }], &CTX);
        assert_eq!(j.reply.as_deref(), Some("no"));
    }

    #[test]
    fn check_errors_follow_the_failure_mode() {
        let body = "[[checks]]\nname = \"pii\"\nkind = \"pii\"\nmax_input_bytes = 10\n[[rules]]\nname = \"r\"\nwhen = \"pii\"\naction = \"redact\"\n";
        let closed = policy(body).unwrap();
        let long = "a perfectly harmless but long text";
        let j = closed.judge(Phase::Input, &[TextPart { message: Some(0), text: long }], &CTX);
        assert_eq!(j.decision.action, Action::Block);
        assert!(j.decision.reason.contains("fails closed"), "{}", j.decision.reason);
        assert!(j.results[0].error.is_some());
        let open = Policy::parse("p.toml", &format!("on_check_error = \"fail_open\"\n{HEADER}{body}")).unwrap();
        let j = open.judge(Phase::Input, &[TextPart { message: Some(0), text: long }], &CTX);
        assert_eq!(j.decision.action, Action::Allow);
        assert_eq!(
            j.decision.evidence[0].error.as_deref(),
            Some("text of 34 bytes exceeds this check's max_input_bytes of 10")
        );
    }
}
