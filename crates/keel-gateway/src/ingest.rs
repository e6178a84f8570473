//! Ingest: interactions logged by deployments that do not route through the gateway, judged by
//! the policy in force and stored like gateway traffic, with their historical times kept.
//!
//! The input is JSONL (one interaction per line) or a JSON array of the same objects:
//!
//! ```json
//! {"id": "0190…" (optional UUID), "app": "support", "timestamp": "2026-03-01T09:00:00Z",
//!  "user": "u-17" (optional), "request": {"model": "gpt-4o", "messages": [...]},
//!  "response": {an OpenAI chat completion} | "output": "the answer text",
//!  "latency_ms": 812 (optional), "usage": {"prompt_tokens": 12, "completion_tokens": 40} (optional),
//!  "feedback": {"satisfaction": 4, "thumbs": "up", "wrong_answer": false, "comment": "…"} (optional)}
//! ```
//!
//! Each interaction is judged in monitoring mode: every check of the input and output phases
//! runs (async ones too) and the decisions are recorded, but nothing is redacted or blocked
//! since nothing is returned. An ingested escalation does not create a handoff request: the
//! deployment did not hand off, and handoff KPIs count only real ones (sent to
//! `/api/handoffs`). A line without an `id` gets a time-ordered id derived from its time and
//! its text, so ingesting the same file twice does not double count.
//!
//! A malformed line is reported with its number and field; the others are still ingested.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use keel_core::{Action, Interaction, InteractionId, Outcome, Phase, Privacy, Timings, Tokens};
use keel_policy::text::redact;
use keel_policy::{Context, Lang, Policy, TextPart};
use keel_store::{
    stored_text, AuditEntry, CaseIntake, ChangeError, NewFeedback, Store, StoreError, Thumbs, WriterHandle,
};
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::chat::{input_parts, pii_findings, redacted_request, validate_body};

/// Fields an ingest line may carry.
const FIELDS: &[&str] =
    &["id", "app", "timestamp", "user", "request", "response", "output", "latency_ms", "usage", "feedback"];

/// Feedback given with an ingested interaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineFeedback {
    /// A satisfaction score 1–5.
    pub satisfaction: Option<u8>,
    /// Thumbs up or down.
    pub thumbs: Option<Thumbs>,
    /// True when the user reported the answer wrong.
    pub wrong_answer: Option<bool>,
    /// Free text.
    pub comment: Option<String>,
}

/// One parsed ingest line.
#[derive(Debug, Clone, PartialEq)]
pub struct IngestLine {
    /// The interaction's id (given, or derived from the time and the line's text).
    pub id: InteractionId,
    /// Its app, when the line names one.
    pub app: Option<String>,
    /// When it happened.
    pub timestamp: OffsetDateTime,
    /// The end user, for sticky canary assignment.
    pub user: Option<String>,
    /// The OpenAI chat request body.
    pub request: Value,
    /// The model asked for.
    pub model: String,
    /// The answer text (all choices' contents, joined).
    pub answer: String,
    /// Upstream latency, when logged.
    pub latency_ms: Option<f64>,
    /// Token usage, when logged.
    pub tokens: Tokens,
    /// Feedback given with it.
    pub feedback: Option<LineFeedback>,
}

/// Why a line was not ingested.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineError {
    /// The line number in the input (for a JSON array: the element's position), from 1.
    pub line: usize,
    /// The field at fault, like `request.messages[0].role`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// What is wrong, starting with the field.
    pub message: String,
}

/// What an ingest did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IngestReport {
    /// Interactions stored now.
    pub ingested: u64,
    /// Interactions already stored (or repeated in the input), not stored again.
    pub duplicates: u64,
    /// Feedback events stored with the ingested interactions.
    pub feedback: u64,
    /// Lines refused, in input order.
    pub errors: Vec<LineError>,
}

impl IngestReport {
    /// Adds another chunk's counts and errors.
    pub fn merge(&mut self, other: IngestReport) {
        self.ingested += other.ingested;
        self.duplicates += other.duplicates;
        self.feedback += other.feedback;
        self.errors.extend(other.errors);
    }
}

/// A field error before the line number is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field at fault.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

fn field_error(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    let field = field.into();
    FieldError { message: format!("{field}: {}", message.into()), field: Some(field) }
}

fn optional_str<'a>(object: &'a Map<String, Value>, field: &str) -> Result<Option<&'a str>, FieldError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(field_error(field, "must be a string")),
    }
}

fn count(object: &Map<String, Value>, prefix: &str, field: &str) -> Result<Option<u64>, FieldError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            v.as_u64().map(Some).ok_or_else(|| field_error(format!("{prefix}{field}"), "must be a whole number ≥ 0"))
        }
    }
}

fn parse_feedback(value: &Value) -> Result<LineFeedback, FieldError> {
    let object = value.as_object().ok_or_else(|| field_error("feedback", "must be an object"))?;
    for key in object.keys() {
        if !["satisfaction", "thumbs", "wrong_answer", "comment"].contains(&key.as_str()) {
            return Err(field_error(
                format!("feedback.{key}"),
                "unknown field (expected satisfaction, thumbs, wrong_answer, comment)",
            ));
        }
    }
    let satisfaction = match object.get("satisfaction") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(s @ 1..=5) => Some(s as u8),
            _ => return Err(field_error("feedback.satisfaction", format!("must be a whole number 1 to 5, got {v}"))),
        },
    };
    let thumbs = match object.get("thumbs") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) => Some(t.parse::<Thumbs>().map_err(|e| field_error("feedback.thumbs", e))?),
        Some(_) => return Err(field_error("feedback.thumbs", "must be `up` or `down`")),
    };
    let wrong_answer = match object.get("wrong_answer") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err(field_error("feedback.wrong_answer", "must be true or false")),
    };
    let comment = match object.get("comment") {
        None | Some(Value::Null) => None,
        Some(Value::String(c)) => Some(c.clone()),
        Some(_) => return Err(field_error("feedback.comment", "must be a string")),
    };
    if satisfaction.is_none() && thumbs.is_none() && wrong_answer.is_none() {
        return Err(field_error("feedback", "needs at least one of `satisfaction`, `thumbs` or `wrong_answer`"));
    }
    Ok(LineFeedback { satisfaction, thumbs, wrong_answer, comment })
}

/// The answer text of an OpenAI chat completion: every choice's message content, joined.
fn completion_text(response: &Value) -> Result<String, FieldError> {
    let choices = response
        .get("choices")
        .and_then(Value::as_array)
        .ok_or_else(|| field_error("response.choices", "must be an array (an OpenAI chat completion)"))?;
    let mut text = String::new();
    for (i, choice) in choices.iter().enumerate() {
        match &choice["message"]["content"] {
            Value::Null => {}
            Value::String(s) => text.push_str(s),
            _ => return Err(field_error(format!("response.choices[{i}].message.content"), "must be a string or null")),
        }
    }
    Ok(text)
}

/// A time-ordered id for a line without one: its time, then bits of the line's hash, so the
/// same line always gets the same id.
fn derived_id(timestamp: OffsetDateTime, text: &str) -> InteractionId {
    let digest = Sha256::digest(text.as_bytes());
    let mut tail = [0u8; 10];
    tail.copy_from_slice(&digest[..10]);
    let millis = u64::try_from(timestamp.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    InteractionId(uuid::Builder::from_unix_timestamp_millis(millis, &tail).into_uuid())
}

/// Parses one ingest object (the text is the line as given, for the derived id).
pub fn parse_value(value: Value, text: &str) -> Result<IngestLine, FieldError> {
    let Value::Object(mut object) = value else {
        return Err(FieldError { field: None, message: "each line must be a JSON object".to_owned() });
    };
    if let Some(key) = object.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(field_error(key.clone(), format!("unknown field (expected one of {})", FIELDS.join(", "))));
    }
    let timestamp = match object.get("timestamp") {
        Some(Value::String(t)) => OffsetDateTime::parse(t, &Rfc3339)
            .map_err(|e| field_error("timestamp", format!("`{t}` is not an RFC 3339 time: {e}")))?,
        Some(_) => return Err(field_error("timestamp", "must be an RFC 3339 string")),
        None => return Err(field_error("timestamp", "missing required field")),
    };
    if !(1970..=2200).contains(&timestamp.year()) {
        return Err(field_error("timestamp", "must be between the years 1970 and 2200"));
    }
    let app = match optional_str(&object, "app")? {
        Some(a) if a.trim().is_empty() => return Err(field_error("app", "must not be empty")),
        other => other.map(str::to_owned),
    };
    let user = optional_str(&object, "user")?.map(str::to_owned);
    let request = object.remove("request").ok_or_else(|| field_error("request", "missing required field"))?;
    let chat = validate_body(request).map_err(|e| match e.param {
        Some(param) => field_error(format!("request.{param}"), e.message),
        None => field_error("request", e.message),
    })?;
    let answer = match (object.get("response"), object.get("output")) {
        (Some(_), Some(_)) => return Err(field_error("output", "give either `response` or `output`, not both")),
        (Some(response), None) => completion_text(response)?,
        (None, Some(Value::String(text))) => text.clone(),
        (None, Some(_)) => return Err(field_error("output", "must be a string")),
        (None, None) => String::new(),
    };
    let latency_ms = match object.get("latency_ms") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_f64() {
            Some(ms) if ms.is_finite() && ms >= 0.0 => Some(ms),
            _ => return Err(field_error("latency_ms", "must be a number ≥ 0")),
        },
    };
    let usage = match (object.get("usage"), object.get("response").and_then(|r| r.get("usage"))) {
        (Some(Value::Object(u)), _) => Some((u, "usage.")),
        (Some(Value::Null) | None, Some(Value::Object(u))) => Some((u, "response.usage.")),
        (Some(Value::Null) | None, _) => None,
        (Some(_), _) => return Err(field_error("usage", "must be an object")),
    };
    let tokens = match usage {
        Some((u, prefix)) => {
            Tokens { prompt: count(u, prefix, "prompt_tokens")?, completion: count(u, prefix, "completion_tokens")? }
        }
        None => Tokens::default(),
    };
    let feedback = match object.get("feedback") {
        None | Some(Value::Null) => None,
        Some(f) => Some(parse_feedback(f)?),
    };
    let id = match optional_str(&object, "id")? {
        Some(id) => id.parse::<InteractionId>().map_err(|e| field_error("id", format!("`{id}` is not a UUID: {e}")))?,
        None => derived_id(timestamp, text),
    };
    Ok(IngestLine {
        id,
        app,
        timestamp,
        user,
        request: chat.body,
        model: chat.model,
        answer,
        latency_ms,
        tokens,
        feedback,
    })
}

/// Parses one JSONL line.
pub fn parse_line(text: &str) -> Result<IngestLine, FieldError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| FieldError { field: None, message: format!("not valid JSON (column {}): {e}", e.column()) })?;
    parse_value(value, text)
}

/// `f` of every item, in order, spread over the machine's cores: judging is CPU work and the
/// batched writer runs beside it.
fn in_parallel<T: Send, R: Send>(items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    if threads < 2 || items.len() < 64 {
        return items.into_iter().map(f).collect();
    }
    let per_thread = items.len().div_ceil(threads);
    let mut groups: Vec<Vec<T>> = Vec::with_capacity(threads);
    let mut items = items.into_iter();
    loop {
        let group: Vec<T> = items.by_ref().take(per_thread).collect();
        if group.is_empty() {
            break;
        }
        groups.push(group);
    }
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> =
            groups.into_iter().map(|g| scope.spawn(move || g.into_iter().map(f).collect::<Vec<R>>())).collect();
        // A panicking judge is a bug; re-raise it where the caller (a blocking task) sees it.
        handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
    })
}

/// The input's items with their line numbers: the elements of a JSON array, or the non-blank
/// lines of JSONL (numbered from `first_line`), parsed on every core.
fn items(body: &str, first_line: usize) -> Vec<(usize, Result<IngestLine, FieldError>)> {
    let trimmed = body.trim_start();
    if trimmed.starts_with('[') {
        return match serde_json::from_str::<Vec<Value>>(trimmed) {
            Ok(values) => values
                .into_iter()
                .enumerate()
                .map(|(i, v)| {
                    let text = v.to_string();
                    (first_line + i, parse_value(v, &text))
                })
                .collect(),
            Err(e) => vec![(
                first_line + e.line().saturating_sub(1),
                Err(FieldError { field: None, message: format!("the JSON array is not valid JSON: {e}") }),
            )],
        };
    }
    let lines: Vec<(usize, &str)> =
        body.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).map(|(i, l)| (first_line + i, l)).collect();
    in_parallel(lines, |(n, l)| (n, parse_line(l)))
}

/// Judges one ingested interaction in monitoring mode and builds what is stored.
pub fn judge(policy: &Policy, line: &IngestLine, app: &str, privacy: Privacy) -> Interaction {
    let started = Instant::now();
    let parts = input_parts(&line.request);
    let lang = Lang::detect(&parts.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>().join("\n"));
    let ctx = Context { app, model: &line.model, lang };
    let text_parts: Vec<TextPart<'_>> =
        parts.iter().enumerate().map(|(k, (_, text))| TextPart { message: Some(k), text }).collect();
    let mut input = policy.judge(Phase::Input, &text_parts, &ctx);
    for result in &mut input.results {
        for finding in &mut result.findings {
            finding.message = finding.message.and_then(|k| parts.get(k)).map(|(at, _)| at.message);
        }
    }
    let request_original = line.request.to_string();
    let request_redacted =
        (privacy == Privacy::Redacted).then(|| redacted_request(&line.request, &parts, &input.results));
    let mut decisions = vec![input.decision];
    let mut checks = input.results;
    if policy.has_async_checks(Phase::Input) {
        let by_message: Vec<TextPart<'_>> =
            parts.iter().map(|(at, text)| TextPart { message: Some(at.message), text }).collect();
        checks.extend(policy.run_async_checks(Phase::Input, &by_message));
    }
    let mut redacted_answer = None;
    if !line.answer.is_empty() {
        let answer = [TextPart { message: None, text: &line.answer }];
        let output = policy.judge(Phase::Output, &answer, &ctx);
        if policy.has_checks(Phase::Output) {
            decisions.push(output.decision);
        }
        let pii = pii_findings(&output.results);
        if !pii.is_empty() {
            redacted_answer = Some(redact(&line.answer, &pii));
        }
        checks.extend(output.results);
        if policy.has_async_checks(Phase::Output) {
            checks.extend(policy.run_async_checks(Phase::Output, &answer));
        }
    }
    let upstream_ms = line.latency_ms.unwrap_or(0.0);
    Interaction {
        id: line.id,
        created_at: line.timestamp,
        app: app.to_owned(),
        model: line.model.clone(),
        stream: line.request["stream"].as_bool().unwrap_or(false),
        request: stored_text(&request_original, request_redacted.as_deref(), privacy),
        response: stored_text(&line.answer, redacted_answer.as_deref(), privacy),
        outcome: Outcome::Completed,
        http_status: 200,
        error: None,
        timings: Timings {
            upstream_ms,
            overhead_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            total_ms: upstream_ms,
        },
        tokens: line.tokens,
        policy: policy.reference(),
        decision: decisions.iter().map(|d| d.action).max().unwrap_or(Action::Allow),
        decisions,
        checks,
        shadow: Vec::new(),
    }
}

/// Picks the policy that judges an interaction of `app` (`key` is its user, else its id);
/// `Err` says why none can.
pub type PolicyFor<'a> = dyn Fn(&str, &str) -> Result<Arc<Policy>, String> + Send + Sync + 'a;

/// One ingest run: where it stores, how it judges, and for whom.
pub struct Ingest<'a> {
    /// The store (to find duplicates and store feedback).
    pub store: &'a dyn Store,
    /// The batched writer interactions go through, like gateway traffic.
    pub writer: &'a WriterHandle,
    /// The policy for each interaction.
    pub policy: &'a PolicyFor<'a>,
    /// The privacy setting of an app.
    pub privacy: &'a (dyn Fn(&str) -> Privacy + Send + Sync + 'a),
    /// The app of lines that name none.
    pub default_app: Option<&'a str>,
    /// When set, lines of any other app are refused (a client key's own app).
    pub only_app: Option<&'a str>,
    /// Who ingests: the actor of the audit records and of the feedback.
    pub actor: &'a str,
    /// Which feedback opens review cases (wrong-answer reports, low scores).
    pub review: &'a CaseIntake,
}

/// Lines judged at once off the async runtime.
const JUDGE_CHUNK: usize = 2_048;

/// JSONL lines per step of a run: one step is judged while the one before it is stored.
const STEP_LINES: usize = 4_096;

/// A step parsed and judged but not stored yet.
pub struct Judged {
    report: IngestReport,
    interactions: Vec<(usize, IngestLine, Interaction)>,
}

impl Ingest<'_> {
    /// Ingests `body` (JSONL or a JSON array) whose first line is line `first_line` of the input.
    pub async fn run(&self, body: &str, first_line: usize) -> Result<IngestReport, StoreError> {
        self.run_steps(steps(body, first_line)).await
    }

    /// Ingests the given parts of one input (each with the number of its first line), judging
    /// each part while the one before it is stored, so the parsing and judging cores and the
    /// store's writer work at the same time; one `ingest` audit record for the whole.
    pub async fn run_steps(
        &self,
        parts: impl IntoIterator<Item = (usize, String)>,
    ) -> Result<IngestReport, StoreError> {
        let mut report = IngestReport::default();
        let mut waiting: Option<Judged> = None;
        for (first_line, part) in parts {
            let next = self.judge_part(part, first_line);
            let judged = match waiting.take() {
                Some(previous) => {
                    let (judged, stored) = tokio::join!(next, self.store_judged(previous));
                    report.merge(stored?);
                    judged?
                }
                None => next.await?,
            };
            waiting = Some(judged);
        }
        if let Some(last) = waiting {
            report.merge(self.store_judged(last).await?);
        }
        report.errors.sort_by_key(|e| e.line);
        self.writer
            .record_audit(AuditEntry::now(
                self.actor,
                "ingest",
                serde_json::json!({
                    "ingested": report.ingested,
                    "duplicates": report.duplicates,
                    "feedback": report.feedback,
                    "errors": report.errors.len(),
                }),
            ))
            .await?;
        Ok(report)
    }

    /// Parses and judges one part; reads nothing from the store. Lines already stored are
    /// judged too (they are only known in [`Ingest::store_judged`]): a repeat costs a judgement,
    /// never a second row.
    async fn judge_part(&self, body: String, first_line: usize) -> Result<Judged, StoreError> {
        let mut report = IngestReport::default();
        let mut accepted: Vec<(usize, IngestLine, String, Arc<Policy>, Privacy)> = Vec::new();
        let parsed = tokio::task::spawn_blocking(move || items(&body, first_line))
            .await
            .map_err(|e| StoreError::InvalidInput { what: "an ingest batch".to_owned(), reason: e.to_string() })?;
        for (line_no, parsed) in parsed {
            let refuse = |e: FieldError| LineError { line: line_no, field: e.field, message: e.message };
            let line = match parsed {
                Ok(line) => line,
                Err(e) => {
                    report.errors.push(refuse(e));
                    continue;
                }
            };
            let Some(app) = line.app.clone().or_else(|| self.default_app.map(str::to_owned)) else {
                report.errors.push(refuse(field_error("app", "missing (give `app` in the line or a default app)")));
                continue;
            };
            if let Some(only) = self.only_app.filter(|only| *only != app) {
                report.errors.push(refuse(field_error(
                    "app",
                    format!("`{}` may only ingest interactions of app `{only}`, not `{app}`", self.actor),
                )));
                continue;
            }
            let key = line.user.clone().unwrap_or_else(|| line.id.to_string());
            match (self.policy)(&app, &key) {
                Ok(policy) => {
                    let privacy = (self.privacy)(&app);
                    accepted.push((line_no, line, app, policy, privacy));
                }
                Err(message) => report.errors.push(refuse(field_error("app", message))),
            }
        }

        let mut interactions = Vec::with_capacity(accepted.len());
        while !accepted.is_empty() {
            let rest = accepted.split_off(accepted.len().min(JUDGE_CHUNK));
            let chunk = std::mem::replace(&mut accepted, rest);
            let judged = tokio::task::spawn_blocking(move || {
                in_parallel(chunk, |(line_no, line, app, policy, privacy)| {
                    let interaction = judge(&policy, &line, &app, privacy);
                    (line_no, line, interaction)
                })
            })
            .await
            .map_err(|e| StoreError::InvalidInput { what: "an ingest batch".to_owned(), reason: e.to_string() })?;
            interactions.extend(judged);
        }
        Ok(Judged { report, interactions })
    }

    /// Stores a judged part: drops what is stored already (or repeated), hands the rest to
    /// the writer, waits for it, then stores the feedback the lines carry.
    async fn store_judged(&self, judged: Judged) -> Result<IngestReport, StoreError> {
        let Judged { mut report, mut interactions } = judged;
        let ids: Vec<InteractionId> = interactions.iter().map(|(_, _, i)| i.id).collect();
        let stored = self.store.stored_interactions(&ids).await?;
        let mut seen: HashSet<InteractionId> = HashSet::with_capacity(interactions.len());
        interactions.retain(|(_, _, interaction)| {
            let new = !stored.contains(&interaction.id) && seen.insert(interaction.id);
            if !new {
                report.duplicates += 1;
            }
            new
        });

        let mut feedback = Vec::new();
        for (line_no, line, interaction) in interactions {
            let id = interaction.id;
            self.writer.record_interaction(interaction, None).await?;
            report.ingested += 1;
            if let Some(f) = line.feedback {
                feedback.push((
                    line_no,
                    NewFeedback {
                        event_id: format!("ingest:{id}"),
                        interaction_id: id,
                        satisfaction: f.satisfaction,
                        thumbs: f.thumbs,
                        wrong_answer: f.wrong_answer,
                        comment: f.comment,
                        actor: self.actor.to_owned(),
                        created_at: line.timestamp,
                    },
                ));
            }
        }
        self.writer.flush().await?;
        if !feedback.is_empty() {
            let (lines, events): (Vec<usize>, Vec<NewFeedback>) = feedback.into_iter().unzip();
            for (line, outcome) in lines.into_iter().zip(self.store.record_feedback(events).await?) {
                match outcome {
                    Ok(receipt) => {
                        report.feedback += 1;
                        if let Some(case) = (!receipt.duplicate)
                            .then(|| self.review.case_for_feedback(&receipt.event, OffsetDateTime::now_utc()))
                            .flatten()
                        {
                            self.store.open_case(case, self.actor).await.map_err(|e| match e {
                                ChangeError::Store(e) => e,
                                other => StoreError::InvalidInput {
                                    what: "a review case for ingested feedback".to_owned(),
                                    reason: other.to_string(),
                                },
                            })?;
                        }
                    }
                    Err(e) => report.errors.push(LineError {
                        line,
                        field: Some("feedback".into()),
                        message: format!("feedback: {e}"),
                    }),
                }
            }
        }
        Ok(report)
    }
}

/// `body` cut into parts of [`STEP_LINES`] JSONL lines, each with the number of its first
/// line; a JSON array stays whole (its elements are not lines).
pub fn steps(body: &str, first_line: usize) -> Vec<(usize, String)> {
    if body.trim_start().starts_with('[') {
        return vec![(first_line, body.to_owned())];
    }
    let lines: Vec<&str> = body.lines().collect();
    lines.chunks(STEP_LINES).enumerate().map(|(i, part)| (first_line + i * STEP_LINES, part.join("\n"))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"app":"support","timestamp":"2026-03-01T09:00:00Z","request":{"model":"m","messages":[{"role":"user","content":"hi"}]},"output":"hello","latency_ms":120,"usage":{"prompt_tokens":3,"completion_tokens":2},"feedback":{"satisfaction":4}}"#;

    #[test]
    fn a_full_line_parses() {
        let line = parse_line(LINE).unwrap();
        assert_eq!(line.app.as_deref(), Some("support"));
        assert_eq!(line.model, "m");
        assert_eq!(line.answer, "hello");
        assert_eq!(line.latency_ms, Some(120.0));
        assert_eq!(line.tokens, Tokens { prompt: Some(3), completion: Some(2) });
        assert_eq!(line.feedback.unwrap().satisfaction, Some(4));
        assert_eq!(line.timestamp, time::macros::datetime!(2026-03-01 09:00 UTC));
    }

    #[test]
    fn the_derived_id_is_stable_and_time_ordered() {
        let a = parse_line(LINE).unwrap().id;
        assert_eq!(a, parse_line(LINE).unwrap().id);
        assert_eq!(a.0.get_version_num(), 7);
        let later = LINE.replace("09:00:00Z", "10:00:00Z");
        assert!(parse_line(&later).unwrap().id > a);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (LINE.replace(r#""timestamp":"2026-03-01T09:00:00Z""#, r#""timestamp":"yesterday""#), "timestamp"),
            (LINE.replace(r#""role":"user""#, r#""role":"boss""#), "request.messages[0].role"),
            (LINE.replace(r#""satisfaction":4"#, r#""satisfaction":7"#), "feedback.satisfaction"),
            (LINE.replace(r#""latency_ms":120"#, r#""latency_ms":"fast""#), "latency_ms"),
            (LINE.replace(r#""app":"support""#, r#""ap":"support""#), "ap"),
            (LINE.replace(r#""output":"hello""#, r#""output":"hello","response":{"choices":[]}"#), "output"),
        ];
        for (text, field) in cases {
            let err = parse_line(&text).unwrap_err();
            assert_eq!(err.field.as_deref(), Some(field), "{}", err.message);
            assert!(err.message.starts_with(&format!("{field}: ")), "{}", err.message);
        }
        assert!(parse_line("{not json").unwrap_err().message.starts_with("not valid JSON"));
    }

    #[test]
    fn an_openai_completion_gives_the_answer_and_usage() {
        let text = r#"{"timestamp":"2026-03-01T09:00:00Z","request":{"model":"m","messages":[{"role":"user","content":"hi"}]},"response":{"choices":[{"message":{"role":"assistant","content":"a"}},{"message":{"content":"b"}}],"usage":{"prompt_tokens":9}}}"#;
        let line = parse_line(text).unwrap();
        assert_eq!(line.answer, "ab");
        assert_eq!(line.tokens.prompt, Some(9));
        assert!(line.app.is_none());
    }

    #[test]
    fn arrays_and_jsonl_number_their_items() {
        let jsonl = format!("{LINE}\n\n{{\"x\":1}}\n");
        let numbered: Vec<(usize, bool)> = items(&jsonl, 1).into_iter().map(|(n, r)| (n, r.is_ok())).collect();
        assert_eq!(numbered, [(1, true), (3, false)]);
        let array = format!("[{LINE}, 5]");
        let numbered: Vec<(usize, bool)> = items(&array, 1).into_iter().map(|(n, r)| (n, r.is_ok())).collect();
        assert_eq!(numbered, [(1, true), (2, false)]);
    }
}
