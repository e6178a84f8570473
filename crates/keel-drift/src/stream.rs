//! Metric streams: what a detector watches, spelt as in `stream = "…"`, and how one stored
//! interaction (or feedback event) becomes one observation of it.

use std::fmt;
use std::str::FromStr;

use keel_core::{Action, Interaction, InteractionId, Outcome};
use keel_monitor::Observation;
use keel_policy::text::Lang;
use keel_store::DriftSource;
use serde_json::Value;
use time::OffsetDateTime;

/// Which text of an interaction an embedding stream embeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TextSide {
    /// The last user message of the request.
    Input,
    /// The answer the client received.
    Output,
}

/// A token count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenCount {
    /// Prompt tokens.
    Prompt,
    /// Completion tokens.
    Completion,
    /// Both.
    Total,
}

/// A metric stream a detector can watch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Stream {
    /// The interaction's decision, as a category (`allow`, `flag`, …): the action mix.
    Action,
    /// The detected language of the last user message (`en`, `ja`): the language mix.
    Lang,
    /// 1 when a check of kind `refusal` hit (the model refused), else 0; interactions without
    /// such a check are skipped.
    Refusal,
    /// 1 when the interaction was handed to a human (decision `escalate`), else 0.
    Handoff,
    /// Upstream latency in milliseconds, of completed interactions.
    UpstreamMs,
    /// Token counts the upstream reported, of completed interactions that report them.
    Tokens(TokenCount),
    /// The score of the named check (the larger over the phases it ran in).
    CheckScore(String),
    /// 1 when the named check hit in any phase, else 0; skipped when it did not run.
    CheckHit(String),
    /// Satisfaction scores (1–5) from feedback.
    Satisfaction,
    /// 1 for feedback reporting a wrong answer, 0 for feedback saying it was not.
    WrongAnswer,
    /// The MiniLM embedding of the input or output text.
    Embedding(TextSide),
}

/// The streams that need no check name, for messages.
pub const STREAM_NAMES: &str = "action, lang, refusal, handoff, upstream_ms, tokens.prompt, tokens.completion, \
                                tokens.total, check.NAME.score, check.NAME.hit, satisfaction, wrong_answer, \
                                embedding.input, embedding.output";

impl FromStr for Stream {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let stream = match s {
            "action" => Stream::Action,
            "lang" => Stream::Lang,
            "refusal" => Stream::Refusal,
            "handoff" => Stream::Handoff,
            "upstream_ms" => Stream::UpstreamMs,
            "tokens.prompt" => Stream::Tokens(TokenCount::Prompt),
            "tokens.completion" => Stream::Tokens(TokenCount::Completion),
            "tokens.total" => Stream::Tokens(TokenCount::Total),
            "satisfaction" => Stream::Satisfaction,
            "wrong_answer" => Stream::WrongAnswer,
            "embedding.input" => Stream::Embedding(TextSide::Input),
            "embedding.output" => Stream::Embedding(TextSide::Output),
            other => {
                let check = other.strip_prefix("check.").and_then(|rest| rest.rsplit_once('.'));
                match check {
                    Some((name, "score")) if valid_check_name(name) => Stream::CheckScore(name.to_owned()),
                    Some((name, "hit")) if valid_check_name(name) => Stream::CheckHit(name.to_owned()),
                    _ => return Err(format!("unknown stream `{other}` (streams: {STREAM_NAMES})")),
                }
            }
        };
        Ok(stream)
    }
}

fn valid_check_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stream::Action => f.write_str("action"),
            Stream::Lang => f.write_str("lang"),
            Stream::Refusal => f.write_str("refusal"),
            Stream::Handoff => f.write_str("handoff"),
            Stream::UpstreamMs => f.write_str("upstream_ms"),
            Stream::Tokens(TokenCount::Prompt) => f.write_str("tokens.prompt"),
            Stream::Tokens(TokenCount::Completion) => f.write_str("tokens.completion"),
            Stream::Tokens(TokenCount::Total) => f.write_str("tokens.total"),
            Stream::CheckScore(name) => write!(f, "check.{name}.score"),
            Stream::CheckHit(name) => write!(f, "check.{name}.hit"),
            Stream::Satisfaction => f.write_str("satisfaction"),
            Stream::WrongAnswer => f.write_str("wrong_answer"),
            Stream::Embedding(TextSide::Input) => f.write_str("embedding.input"),
            Stream::Embedding(TextSide::Output) => f.write_str("embedding.output"),
        }
    }
}

impl Stream {
    /// The observation kind it gives: `value`, `category` or `vector` (as `Method::reads`).
    pub fn gives(&self) -> &'static str {
        match self {
            Stream::Action | Stream::Lang => "category",
            Stream::Embedding(_) => "vector",
            _ => "value",
        }
    }

    /// The table it is read from.
    pub fn source(&self) -> DriftSource {
        match self {
            Stream::Satisfaction | Stream::WrongAnswer => DriftSource::Feedback,
            _ => DriftSource::Interactions,
        }
    }

    /// The text an embedding stream embeds (`None` for other streams or when there is none).
    pub fn text_of(&self, interaction: &Interaction) -> Option<String> {
        match self {
            Stream::Embedding(TextSide::Input) => last_user_text(interaction),
            Stream::Embedding(TextSide::Output) => interaction.response.text.clone().filter(|t| !t.trim().is_empty()),
            _ => None,
        }
    }

    /// The observation an interaction gives, or `None` when it has none for this stream
    /// (the check did not run, no tokens were reported, the text is not stored…). Embedding
    /// and feedback streams are observed elsewhere and give `None` here.
    pub fn observe(&self, interaction: &Interaction) -> Option<Observation> {
        let completed = interaction.outcome == Outcome::Completed;
        match self {
            Stream::Action => Some(Observation::Category(interaction.decision.as_str().to_owned())),
            Stream::Lang => {
                last_user_text(interaction).map(|t| Observation::Category(Lang::detect(&t).code().to_owned()))
            }
            Stream::Refusal => {
                let mut refusals =
                    interaction.checks.iter().filter(|c| c.kind == "refusal" && c.error.is_none()).peekable();
                refusals.peek()?;
                Some(refusals.any(|c| c.hit).into())
            }
            Stream::Handoff => Some((interaction.decision == Action::Escalate).into()),
            Stream::UpstreamMs => completed.then_some(Observation::Value(interaction.timings.upstream_ms)),
            Stream::Tokens(which) => {
                let t = interaction.tokens;
                let count = match which {
                    TokenCount::Prompt => t.prompt,
                    TokenCount::Completion => t.completion,
                    TokenCount::Total => t.prompt.zip(t.completion).map(|(p, c)| p + c),
                };
                count.filter(|_| completed).map(|n| Observation::Value(n as f64))
            }
            Stream::CheckScore(name) => interaction
                .checks
                .iter()
                .filter(|c| &c.check == name && c.error.is_none())
                .map(|c| c.score)
                .reduce(f64::max)
                .map(Observation::Value),
            Stream::CheckHit(name) => {
                let mut ran = interaction.checks.iter().filter(|c| &c.check == name && c.error.is_none()).peekable();
                ran.peek()?;
                Some(ran.any(|c| c.hit).into())
            }
            Stream::Satisfaction | Stream::WrongAnswer | Stream::Embedding(_) => None,
        }
    }

    /// The observation a feedback event gives for a feedback stream.
    pub fn observe_feedback(&self, feedback: &FeedbackEvent) -> Option<Observation> {
        match self {
            Stream::Satisfaction => feedback.satisfaction.map(|s| Observation::Value(f64::from(s))),
            Stream::WrongAnswer => feedback.wrong_answer.map(Observation::from),
            _ => None,
        }
    }
}

/// What the drift monitor reads of one stored feedback event.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackEvent {
    /// The interaction it is about.
    pub interaction_id: InteractionId,
    /// The interaction's app.
    pub app: String,
    /// When it was given.
    pub created_at: OffsetDateTime,
    /// A satisfaction score 1–5, if given.
    pub satisfaction: Option<u8>,
    /// Whether the answer was reported wrong, if said.
    pub wrong_answer: Option<bool>,
}

/// Reads feedback in insertion order: the store's `feedback_after`, behind a seam so the
/// monitor does not depend on how feedback is stored.
#[async_trait::async_trait]
pub trait FeedbackFeed: Send + Sync {
    /// Up to `limit` feedback events stored after insertion seq `after_seq`, in order.
    async fn feedback_after(&self, after_seq: i64, limit: u32) -> keel_store::Result<Vec<(i64, FeedbackEvent)>>;
}

/// The last user message of a stored OpenAI chat request body, if its text is stored.
pub fn last_user_text(interaction: &Interaction) -> Option<String> {
    let body: Value = serde_json::from_str(interaction.request.text.as_deref()?).ok()?;
    let message = body["messages"].as_array()?.iter().rev().find(|m| m["role"] == "user")?;
    let text = match &message["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join("\n"),
        _ => return None,
    };
    (!text.trim().is_empty()).then_some(text)
}

#[cfg(test)]
mod tests {
    use keel_core::{CheckResult, Phase, PolicyRef, StoredText, Timings, Tokens};

    use super::*;

    fn check(name: &str, kind: &str, phase: Phase, score: f64, hit: bool) -> CheckResult {
        CheckResult {
            check: name.into(),
            kind: kind.into(),
            phase,
            score,
            hit,
            findings: vec![],
            error: None,
            detail: None,
            elapsed_us: 1,
            mode: Default::default(),
        }
    }

    fn interaction(request: &str) -> Interaction {
        Interaction {
            id: InteractionId::new(),
            created_at: OffsetDateTime::UNIX_EPOCH,
            app: "a".into(),
            model: "m".into(),
            stream: false,
            request: StoredText { text: Some(request.into()), sha256: String::new() },
            response: StoredText { text: Some("answer".into()), sha256: String::new() },
            outcome: Outcome::Completed,
            http_status: 200,
            error: None,
            timings: Timings { upstream_ms: 120.0, overhead_us: 1, total_ms: 121.0 },
            tokens: Tokens { prompt: Some(10), completion: Some(5) },
            policy: PolicyRef { name: "p".into(), version: "1".into() },
            decision: Action::Escalate,
            decisions: vec![],
            checks: vec![
                check("pii", "pii", Phase::Input, 0.2, false),
                check("pii", "pii", Phase::Output, 0.9, true),
                check("refused", "refusal", Phase::Output, 0.0, false),
            ],
            shadow: Vec::new(),
        }
    }

    #[test]
    fn names_round_trip_and_unknown_names_list_the_streams() {
        for name in [
            "action",
            "lang",
            "refusal",
            "handoff",
            "upstream_ms",
            "tokens.prompt",
            "tokens.completion",
            "tokens.total",
            "check.pii.score",
            "check.my-check_2.hit",
            "satisfaction",
            "wrong_answer",
            "embedding.input",
            "embedding.output",
        ] {
            assert_eq!(name.parse::<Stream>().unwrap().to_string(), name);
        }
        for bad in ["latency", "check.pii", "check..hit", "check.pii.count", "embedding"] {
            let err = bad.parse::<Stream>().unwrap_err();
            assert!(err.starts_with(&format!("unknown stream `{bad}`")), "{err}");
        }
        assert_eq!(
            "check.a.b.hit".parse::<Stream>(),
            Err(format!("unknown stream `check.a.b.hit` (streams: {STREAM_NAMES})"))
        );
    }

    #[test]
    fn interactions_become_observations() {
        let body = r#"{"model":"m","messages":[{"role":"system","content":"be nice"},{"role":"user","content":"配送について教えてください"}]}"#;
        let i = interaction(body);
        let obs = |s: &str| s.parse::<Stream>().unwrap().observe(&i);
        assert_eq!(obs("action"), Some(Observation::Category("escalate".into())));
        assert_eq!(obs("lang"), Some(Observation::Category("ja".into())));
        assert_eq!(obs("handoff"), Some(Observation::Value(1.0)));
        assert_eq!(obs("refusal"), Some(Observation::Value(0.0)));
        assert_eq!(obs("upstream_ms"), Some(Observation::Value(120.0)));
        assert_eq!(obs("tokens.total"), Some(Observation::Value(15.0)));
        assert_eq!(obs("check.pii.score"), Some(Observation::Value(0.9)), "the larger phase score");
        assert_eq!(obs("check.pii.hit"), Some(Observation::Value(1.0)));
        assert_eq!(obs("check.other.hit"), None, "a check that did not run gives nothing");
        assert_eq!(obs("satisfaction"), None);
        assert_eq!(Stream::Embedding(TextSide::Input).text_of(&i).as_deref(), Some("配送について教えてください"));
        assert_eq!(Stream::Embedding(TextSide::Output).text_of(&i).as_deref(), Some("answer"));

        let parts = r#"{"messages":[{"role":"user","content":[{"type":"text","text":"Where is my order?"}]}]}"#;
        assert_eq!(interaction(parts).checks.len(), 3);
        assert_eq!(
            "lang".parse::<Stream>().unwrap().observe(&interaction(parts)),
            Some(Observation::Category("en".into()))
        );
        let mut failed = interaction(parts);
        failed.outcome = Outcome::UpstreamError;
        failed.request.text = None;
        assert_eq!("upstream_ms".parse::<Stream>().unwrap().observe(&failed), None);
        assert_eq!("lang".parse::<Stream>().unwrap().observe(&failed), None, "privacy none: no text");
    }

    #[test]
    fn feedback_becomes_observations() {
        let f = FeedbackEvent {
            interaction_id: InteractionId::new(),
            app: "a".into(),
            created_at: OffsetDateTime::UNIX_EPOCH,
            satisfaction: Some(4),
            wrong_answer: None,
        };
        assert_eq!(Stream::Satisfaction.observe_feedback(&f), Some(Observation::Value(4.0)));
        assert_eq!(Stream::WrongAnswer.observe_feedback(&f), None);
        assert_eq!(Stream::Satisfaction.source(), DriftSource::Feedback);
        assert_eq!(Stream::Action.source(), DriftSource::Interactions);
    }
}
