//! LLM judges: any OpenAI-compatible model grades an answer against a case's rubric.
//!
//! The judge is asked for a JSON verdict (`{"verdict": "pass" | "fail", "reason": "…"}`); an
//! answer without exactly that is a *malformed verdict*, reported as an error of the case and
//! never as a pass. Verdicts are cached by (judge, prompt), so a rerun asks nothing again.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::cache::{key_of, Cache};
use crate::error::{EvalError, Result};
use crate::suite::{Case, JudgeExpect, Role, Verdict};

/// The prompt every judge gets; `{rubric}`, `{reference}`, `{conversation}` and `{answer}` are
/// filled in. Its SHA-256 is part of every run record that used a judge.
pub const JUDGE_TEMPLATE: &str = "You are grading an AI assistant's answer for a customer-support evaluation.\n\
Rubric (what a passing answer does):\n{rubric}\n\
{reference}\
Conversation:\n{conversation}\n\
Answer to grade:\n{answer}\n\n\
Reply with one JSON object and nothing else: {\"verdict\": \"pass\" or \"fail\", \"reason\": \"one sentence\"}";

/// Lowercase hex SHA-256 of a text.
pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// A judge's grade of one answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JudgeVerdict {
    /// Pass or fail.
    pub verdict: Verdict,
    /// The judge's one-sentence reason.
    pub reason: String,
}

/// What the run record says about the judge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JudgeInfo {
    /// The judge model.
    pub model: String,
    /// Its upstream as given (a base URL or `local`).
    pub upstream: String,
    /// SHA-256 of [`JUDGE_TEMPLATE`].
    pub template_sha256: String,
}

/// A judge model behind an OpenAI-compatible endpoint, with its verdict cache.
pub struct Judge {
    client: reqwest::Client,
    base_url: String,
    upstream: String,
    api_key: Option<String>,
    model: String,
    cache: Cache<JudgeVerdict>,
    retries: u32,
}

impl Judge {
    /// A judge `model` at `base_url` (`upstream` as the user named it), caching in `cache`.
    pub fn new(
        base_url: &str,
        upstream: &str,
        api_key: Option<String>,
        model: &str,
        cache: Cache<JudgeVerdict>,
        timeout: Duration,
    ) -> Result<Self> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(timeout)
            .build()
            .map_err(|e| EvalError::Setup(format!("cannot build the judge's HTTP client: {e}")))?;
        Ok(Judge {
            client,
            base_url: base_url.trim_end_matches('/').to_string(),
            upstream: upstream.to_string(),
            api_key,
            model: model.to_string(),
            cache,
            retries: 2,
        })
    }

    /// The record of this judge.
    pub fn info(&self) -> JudgeInfo {
        JudgeInfo {
            model: self.model.clone(),
            upstream: self.upstream.clone(),
            template_sha256: sha256_hex(JUDGE_TEMPLATE),
        }
    }

    /// Grades `answer` to `case` against `expect`; a malformed verdict or a failed call is an error.
    pub async fn grade(
        &self,
        case: &Case,
        expect: &JudgeExpect,
        answer: &str,
    ) -> std::result::Result<JudgeVerdict, String> {
        let prompt = judge_prompt(case, expect, answer);
        let key = key_of(&json!({"judge": self.model, "upstream": self.upstream, "prompt": prompt}));
        if let Some(cached) = self.cache.get(&key) {
            return Ok(cached);
        }
        let body = json!({
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0.0,
            "seed": 0,
            "max_tokens": 200,
        });
        let mut attempt = 0;
        let text = loop {
            let mut request = self.client.post(format!("{}/chat/completions", self.base_url)).json(&body);
            if let Some(api_key) = &self.api_key {
                request = request.bearer_auth(api_key);
            }
            let outcome = match request.send().await {
                Ok(response) if response.status().is_success() => match response.json::<Value>().await {
                    Ok(v) => Ok(v["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_string()),
                    Err(e) => Err((false, format!("the judge's answer is not JSON: {e}"))),
                },
                Ok(response) => {
                    let status = response.status().as_u16();
                    Err((status == 429 || status >= 500, format!("the judge answered HTTP {status}")))
                }
                Err(e) => Err((true, format!("cannot reach the judge: {e}"))),
            };
            match outcome {
                Ok(text) => break text,
                Err((true, _)) if attempt < self.retries => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
                Err((_, message)) => return Err(message),
            }
        };
        let verdict = parse_verdict(&text)?;
        if let Err(e) = self.cache.put(&key, &verdict) {
            tracing::warn!(error = %e, "judge verdict not cached");
        }
        Ok(verdict)
    }
}

/// The judge prompt for one answer.
pub fn judge_prompt(case: &Case, expect: &JudgeExpect, answer: &str) -> String {
    let conversation: Vec<String> = case
        .messages
        .iter()
        .map(|m| {
            let role = match m.role {
                Role::System => "system",
                Role::User => "user",
                Role::Assistant => "assistant",
                Role::Tool => "tool",
            };
            format!("[{role}] {}", m.content)
        })
        .collect();
    let reference = expect.reference.as_ref().map(|r| format!("Reference answer:\n{r}\n")).unwrap_or_default();
    JUDGE_TEMPLATE
        .replace("{rubric}", &expect.rubric)
        .replace("{reference}", &reference)
        .replace("{conversation}", &conversation.join("\n"))
        .replace("{answer}", answer)
}

/// Reads a verdict out of a judge's answer: the first JSON object in it (models like to wrap
/// it in a code fence), with `verdict` `pass` or `fail` and a string `reason`.
pub fn parse_verdict(text: &str) -> std::result::Result<JudgeVerdict, String> {
    let shown: String = text.chars().take(120).collect();
    let malformed = |why: &str| format!("malformed verdict ({why}): {shown:?}");
    let start = text.find('{').ok_or_else(|| malformed("no JSON object"))?;
    let mut stream = serde_json::Deserializer::from_str(&text[start..]).into_iter::<Value>();
    let value = match stream.next() {
        Some(Ok(v)) => v,
        _ => return Err(malformed("no complete JSON object")),
    };
    let verdict = match value.get("verdict").and_then(Value::as_str).map(|v| v.trim().to_ascii_lowercase()) {
        Some(v) if v == "pass" => Verdict::Pass,
        Some(v) if v == "fail" => Verdict::Fail,
        Some(_) => return Err(malformed("`verdict` is neither \"pass\" nor \"fail\"")),
        None => return Err(malformed("no string `verdict`")),
    };
    let reason = value.get("reason").and_then(Value::as_str).ok_or_else(|| malformed("no string `reason`"))?;
    Ok(JudgeVerdict { verdict, reason: reason.trim().to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_formed_verdicts_parse_even_inside_a_fence() {
        let v = parse_verdict("```json\n{\"verdict\": \"PASS\", \"reason\": \"Correct warranty.\"}\n```").unwrap();
        assert_eq!(v, JudgeVerdict { verdict: Verdict::Pass, reason: "Correct warranty.".into() });
        let v = parse_verdict("{\"verdict\":\"fail\",\"reason\":\"wrong\"}").unwrap();
        assert_eq!(v.verdict, Verdict::Fail);
    }

    #[test]
    fn malformed_verdicts_are_errors_never_passes() {
        for text in [
            "",
            "PASS",
            "The answer is good, I'd say it passes.",
            "{\"verdict\": \"pass\"",
            "{\"verdict\": \"maybe\", \"reason\": \"unsure\"}",
            "{\"verdict\": true, \"reason\": \"x\"}",
            "{\"score\": 5, \"reason\": \"x\"}",
            "{\"verdict\": \"pass\"}",
        ] {
            let e = parse_verdict(text).unwrap_err();
            assert!(e.starts_with("malformed verdict"), "{text}: {e}");
        }
    }
}
