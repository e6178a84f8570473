//! The streaming guard: output checks on a stream as it flows.
//!
//! The guard holds back the last `window` bytes of the answer. Text is released only after
//! the checks have seen it together with the bytes before it, and never in the middle of a
//! finding, so any finding up to `window` bytes long is caught before its first byte reaches
//! the client, even when it straddles chunk boundaries. `redact` rewrites the held-back text;
//! `block` and `escalate` stop the stream and send the policy's reply instead.
//!
//! Checks that need the complete answer (model-based ones, inline) make the guard hold the
//! whole answer until the stream ends: streaming then degrades to a single final release.
//!
//! Cost: the client sees text `window` bytes (plus up to one evaluation step) later than the
//! upstream produced it; at ~4 bytes per token that is about `window / 4` tokens of delay.

use std::sync::Arc;

use keel_core::{Action, CheckResult, Finding, Phase};

use crate::check::Scope;
use crate::policy::{Context, Policy, TextPart, Verdict};
use crate::text::{redact, Lang};

/// What the guard lets through after a push.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuardStep {
    /// Checked (and possibly redacted) text to send now; may be empty.
    pub release: String,
    /// Set when the stream must end: the reply to send before `[DONE]`.
    pub stop: Option<String>,
}

/// Checks a streamed answer incrementally.
pub struct StreamGuard {
    policy: Arc<Policy>,
    app: String,
    model: String,
    lang: Lang,
    window: usize,
    step: usize,
    text: String,
    released: usize,
    evaluated_len: usize,
    local: Vec<CheckResult>,
    whole: Vec<CheckResult>,
    emitted: String,
    strongest: Option<Verdict>,
    stopped: bool,
    hold_all: bool,
}

impl StreamGuard {
    /// A guard for one answer; `lang` picks the language of a block or handoff reply.
    pub fn new(policy: Arc<Policy>, app: &str, model: &str, lang: Lang) -> Self {
        let window = policy.stream_window_bytes();
        StreamGuard {
            hold_all: policy.holds_whole_answer(),
            policy,
            app: app.to_string(),
            model: model.to_string(),
            lang,
            window,
            step: (window / 4).max(16),
            text: String::new(),
            released: 0,
            evaluated_len: 0,
            local: Vec::new(),
            whole: Vec::new(),
            emitted: String::new(),
            strongest: None,
            stopped: false,
        }
    }

    /// Adds a piece of the answer; returns what may be sent now.
    pub fn push(&mut self, delta: &str) -> GuardStep {
        if self.stopped {
            return GuardStep::default();
        }
        self.text.push_str(delta);
        if self.hold_all {
            // A model-based check needs the complete answer: nothing is released before it.
            return GuardStep::default();
        }
        let ready = self.text.len() >= self.evaluated_len + self.step && self.text.len() > self.released + self.window;
        if !ready {
            return GuardStep::default();
        }
        self.evaluate(false)
    }

    /// Ends the answer: checks what is held back and returns the rest.
    pub fn finish(&mut self) -> GuardStep {
        if self.stopped {
            return GuardStep::default();
        }
        self.evaluate(true)
    }

    /// True once the guard has stopped the stream.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// The text actually sent so far (redacted where redaction applied, reply included).
    pub fn emitted(&self) -> &str {
        &self.emitted
    }

    /// The answer as the upstream produced it.
    pub fn original(&self) -> &str {
        &self.text
    }

    /// The most restrictive verdict reached, if the guard evaluated at all.
    pub fn verdict(&self) -> Option<&Verdict> {
        self.strongest.as_ref()
    }

    /// Every check result, aggregated over the whole answer, in policy order.
    pub fn results(&self) -> Vec<CheckResult> {
        let mut all: Vec<CheckResult> = self.local.iter().chain(self.whole.iter()).cloned().collect();
        all.sort_by_key(|r| self.policy_order(&r.check));
        all
    }

    fn policy_order(&self, check: &str) -> usize {
        self.policy.check_index(check).unwrap_or(usize::MAX)
    }

    fn evaluate(&mut self, last: bool) -> GuardStep {
        self.evaluated_len = self.text.len();
        let scan_from = self.scan_start();
        let part = [TextPart { message: None, text: &self.text[scan_from..] }];
        let fresh = self.policy.run_checks_scoped(Phase::Output, &part, Scope::Local);
        merge(&mut self.local, fresh, scan_from);
        let whole = [TextPart { message: None, text: &self.text }];
        self.whole = self.policy.run_checks_scoped(Phase::Output, &whole, Scope::Whole);
        if last {
            self.whole.extend(self.policy.run_checks_scoped(Phase::Output, &whole, Scope::Final));
        }

        let results = self.results();
        let ctx = Context { app: &self.app, model: &self.model, lang: self.lang };
        let verdict = self.policy.decide(Phase::Output, &results, &ctx);
        let action = verdict.decision.action;
        let reply = verdict.reply.clone();
        let redact_checks = verdict.redact_checks.clone();
        if self.strongest.as_ref().is_none_or(|s| action > s.decision.action) {
            self.strongest = Some(verdict);
        }

        if matches!(action, Action::Block | Action::Escalate) {
            self.stopped = true;
            let reply = reply.unwrap_or_default();
            self.emitted.push_str(&reply);
            return GuardStep { release: String::new(), stop: Some(reply) };
        }

        let release_to = self.release_point(last, &results);
        if release_to <= self.released {
            return GuardStep::default();
        }
        let chunk = &self.text[self.released..release_to];
        let release = if action == Action::Redact {
            let shifted: Vec<Finding> = results
                .iter()
                .filter(|r| redact_checks.contains(&r.check))
                .flat_map(|r| r.findings.iter())
                .filter(|f| f.span.start >= self.released && f.span.end <= release_to)
                .map(|f| {
                    let mut f = f.clone();
                    f.span.start -= self.released;
                    f.span.end -= self.released;
                    f
                })
                .collect();
            let refs: Vec<&Finding> = shifted.iter().collect();
            redact(chunk, &refs)
        } else {
            chunk.to_string()
        };
        self.released = release_to;
        self.emitted.push_str(&release);
        GuardStep { release, stop: None }
    }

    /// Where the next scan starts: a window before the released text, moved back to a
    /// whitespace so detectors do not see a word or number cut in half.
    fn scan_start(&self) -> usize {
        let mut start = floor_char_boundary(&self.text, self.released.saturating_sub(self.window));
        let floor = self.released.saturating_sub(2 * self.window);
        while start > floor && !self.text.as_bytes()[start - 1].is_ascii_whitespace() {
            start = floor_char_boundary(&self.text, start - 1);
        }
        start
    }

    /// How far text may be released: everything at the end, else all but the window, and
    /// never through the middle of a finding.
    fn release_point(&self, last: bool, results: &[CheckResult]) -> usize {
        if last {
            return self.text.len();
        }
        let mut point = floor_char_boundary(&self.text, self.text.len().saturating_sub(self.window));
        for finding in results.iter().flat_map(|r| r.findings.iter()) {
            if finding.span.start < point && finding.span.end > point {
                point = finding.span.start;
            }
        }
        point.max(self.released)
    }
}

/// Folds a window's results into the running results, shifting spans by `offset`.
fn merge(running: &mut Vec<CheckResult>, fresh: Vec<CheckResult>, offset: usize) {
    for mut result in fresh {
        for f in &mut result.findings {
            f.span.start += offset;
            f.span.end += offset;
        }
        match running.iter_mut().find(|r| r.check == result.check) {
            Some(existing) => {
                existing.score = existing.score.max(result.score);
                existing.hit |= result.hit;
                existing.elapsed_us += result.elapsed_us;
                if existing.error.is_none() {
                    existing.error = result.error;
                }
                for f in result.findings {
                    if !existing.findings.iter().any(|e| e.kind == f.kind && e.span == f.span) {
                        existing.findings.push(f);
                    }
                }
                existing.findings.sort_by_key(|f| f.span);
            }
            None => running.push(result),
        }
    }
}

fn floor_char_boundary(text: &str, mut index: usize) -> usize {
    index = index.min(text.len());
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const POLICY: &str = r#"
name = "t"
version = "1"
stream_window_bytes = 32
[messages]
block = { en = "Blocked.", ja = "ブロックしました。" }
escalate = { en = "A human will help.", ja = "担当者に代わります。" }
[[checks]]
name = "pii"
kind = "pii"
kinds = ["email"]
phase = "output"
[[checks]]
name = "banned"
kind = "keywords"
words = ["forbidden secret"]
phase = "output"
[[rules]]
name = "block-banned"
when = "banned"
action = "block"
[[rules]]
name = "redact-pii"
when = "pii"
action = "redact"
"#;

    fn guard() -> StreamGuard {
        let policy = Arc::new(Policy::parse("t.toml", POLICY).unwrap());
        StreamGuard::new(policy, "app", "m", Lang::En)
    }

    fn run(chunks: &[&str]) -> (String, Option<String>, StreamGuard) {
        let mut g = guard();
        let mut out = String::new();
        for c in chunks {
            let step = g.push(c);
            out.push_str(&step.release);
            if let Some(reply) = step.stop {
                return (out, Some(reply), g);
            }
        }
        let step = g.finish();
        out.push_str(&step.release);
        (out, step.stop, g)
    }

    fn chunked(text: &str, size: usize) -> Vec<String> {
        let chars: Vec<char> = text.chars().collect();
        chars.chunks(size.max(1)).map(|c| c.iter().collect()).collect()
    }

    #[test]
    fn redacts_an_email_split_across_chunks() {
        let text = "Hello, write to alice.smith@example.com for help with your order today, thanks a lot.";
        for size in [1, 3, 7, 50] {
            let chunks = chunked(text, size);
            let refs: Vec<&str> = chunks.iter().map(String::as_str).collect();
            let (out, stop, g) = run(&refs);
            assert_eq!(stop, None);
            assert_eq!(out, text.replace("alice.smith@example.com", "[EMAIL]"), "chunk size {size}");
            assert_eq!(g.verdict().unwrap().decision.action, Action::Redact);
        }
    }

    #[test]
    fn blocks_before_any_banned_byte_is_released() {
        let text = format!("{} the forbidden secret is out {}", "a".repeat(100), "b".repeat(100));
        let chunks = chunked(&text, 5);
        let refs: Vec<&str> = chunks.iter().map(String::as_str).collect();
        let (out, stop, g) = run(&refs);
        assert_eq!(stop.as_deref(), Some("Blocked."));
        assert!(!out.contains("forbidden"), "released: {out}");
        assert!(!out.contains("forb"), "no partial phrase may leak: {out}");
        assert!(g.stopped());
        assert!(g.emitted().ends_with("Blocked."));
    }

    #[test]
    fn holds_back_the_window_until_finish() {
        let mut g = guard();
        let step = g.push("short answer");
        assert_eq!(step.release, "");
        assert_eq!(g.finish().release, "short answer");
    }

    #[test]
    fn clean_text_passes_unchanged_and_allows() {
        let text = "日本語の回答です。ご質問ありがとうございます。製品の保証期間は一年間です。";
        let chunks = chunked(text, 2);
        let refs: Vec<&str> = chunks.iter().map(String::as_str).collect();
        let (out, stop, g) = run(&refs);
        assert_eq!(stop, None);
        assert_eq!(out, text);
        assert_eq!(g.verdict().unwrap().decision.action, Action::Allow);
    }

    proptest! {
        #[test]
        fn never_leaks_an_email_whatever_the_chunking(
            prefix in "[a-z ]{0,80}",
            suffix in "[a-z ]{0,80}",
            cuts in proptest::collection::vec(1usize..12, 1..40),
        ) {
            let email = "bob.jones@example.org";
            let text = format!("{prefix} {email} {suffix}");
            let mut chunks = Vec::new();
            let mut rest = text.as_str();
            for c in cuts.iter().cycle() {
                if rest.is_empty() { break; }
                let n = (*c).min(rest.len());
                chunks.push(&rest[..n]);
                rest = &rest[n..];
            }
            let (out, stop, _) = run(&chunks);
            prop_assert_eq!(stop, None);
            prop_assert!(!out.contains("bob.jones"), "leaked: {}", out);
            prop_assert!(!out.contains("example.org"), "leaked: {}", out);
            prop_assert_eq!(out, text.replace(email, "[EMAIL]"));
        }

        #[test]
        fn released_text_is_a_prefix_of_the_input_when_nothing_is_found(
            text in "[a-z ,.]{0,300}",
            size in 1usize..20,
        ) {
            let chunks = chunked(&text, size);
            let refs: Vec<&str> = chunks.iter().map(String::as_str).collect();
            let mut g = guard();
            let mut out = String::new();
            for c in &refs {
                out.push_str(&g.push(c).release);
                prop_assert!(text.starts_with(&out));
            }
            out.push_str(&g.finish().release);
            prop_assert_eq!(out, text);
        }
    }
}
