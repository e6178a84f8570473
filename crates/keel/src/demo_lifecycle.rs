//! The demo's policy-lifecycle step, on the running demo gateway and over its HTTP API: a
//! second version of the policy in force as a draft, refused approval by its author and
//! approval by a second person, a refused promotion without a gate run, a recorded gate run,
//! the version in shadow on demo traffic (what it would have decided), promotion to active
//! (`x-keel-policy` changes without a restart), and rollback.

use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context as _};
use keel_core::{PolicyRef, Role};
use keel_gateway::AppState;
use keel_store::{GateKind, NewGateRun};
use serde_json::{json, Value};

/// What the new version adds: refund requests go to a person.
const REFUNDS_TO_A_PERSON: &str = r#"
# Added by the demo's lifecycle step: refund requests go to a person.
[[checks]]
name = "refund"
kind = "keywords"
phase = "input"
words = ["refund", "返金"]

[[rules]]
name = "escalate-refunds"
priority = 5
phase = "input"
when = "refund"
action = "escalate"
"#;

/// Demo traffic judged while the new version is the shadow.
const SHADOW_TRAFFIC: &[&str] = &[
    "What is the warranty on the XR-200 blender?",
    "I want a refund. My card is 4111 1111 1111 1111 and my email is taro.yamada@example.jp",
    "返金してください。注文番号はA-1042です。",
];

/// `text` with its top-level `version = "…"` set to `version`.
fn with_version(text: &str, version: &str) -> anyhow::Result<String> {
    let mut replaced = false;
    let mut out = String::with_capacity(text.len() + 64);
    for line in text.lines() {
        let key = line.split('=').next().map(str::trim);
        if !replaced && key == Some("version") {
            out.push_str(&format!("version = \"{version}\""));
            replaced = true;
        } else {
            out.push_str(line);
        }
        out.push('\n');
        if line.trim_start().starts_with('[') && !replaced {
            bail!("the policy text sets no top-level version");
        }
    }
    Ok(out)
}

/// The demo gateway's HTTP API, as an operator's tooling would call it.
pub(crate) struct Api<'a> {
    pub(crate) client: &'a reqwest::Client,
    pub(crate) base: &'a str,
}

impl Api<'_> {
    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut request = self.client.request(method, format!("{}{path}", self.base)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    pub(crate) async fn expect(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
        want: u16,
    ) -> anyhow::Result<Value> {
        let (status, value) = self.call(method, path, token, body).await?;
        if status != want {
            bail!("{path}: HTTP {status} (expected {want}): {value}");
        }
        Ok(value)
    }

    /// (x-keel-policy, x-keel-decision, answer) of one chat request.
    async fn chat(&self, model: &str, prompt: &str) -> anyhow::Result<(String, String, String)> {
        let body = json!({"model": model, "max_tokens": 60, "messages": [{"role": "user", "content": prompt}]});
        let response = self.client.post(format!("{}/v1/chat/completions", self.base)).json(&body).send().await?;
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("?").to_string();
        let (policy, decision) = (header("x-keel-policy"), header("x-keel-decision"));
        let value: Value = response.json().await?;
        let answer = value["choices"][0]["message"]["content"].as_str().unwrap_or_default().replace('\n', " ");
        Ok((policy, decision, answer))
    }
}

fn error_of(value: &Value) -> &str {
    value["error"]["message"].as_str().unwrap_or("?")
}

/// Runs the lifecycle step against the demo gateway at `base`, serving `model`.
pub async fn run(state: &AppState, base: &str, model: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let api = Api { client: &client, base };
    let store = state.store().clone();
    let mut out = std::io::stdout().lock();
    writeln!(out, "\nPolicy lifecycle — the store is the truth, every step is audited (GET {base}/api/policies)")?;
    drop(out);

    let run_id = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    let author_name = format!("demo-author-{run_id}");
    let approver_name = format!("demo-approver-{run_id}");
    let author = store.create_token(&author_name, Role::PolicyAuthor, "demo").await?.token;
    let approver = store.create_token(&approver_name, Role::PolicyAuthor, "demo").await?.token;
    state.refresh().await?;
    let outcome = steps(state, &api, model, (&author_name, &author), (&approver_name, &approver), run_id).await;
    // The demo's tokens go, whatever happened: the demo API stays open on loopback.
    for name in [&author_name, &approver_name] {
        store.revoke_token(name, "demo").await?;
    }
    state.refresh().await?;
    outcome?;
    writeln!(std::io::stdout().lock(), "   the demo's tokens are revoked again (keel token list --store …)")?;
    Ok(())
}

async fn steps(
    state: &AppState,
    api: &Api<'_>,
    model: &str,
    (author_name, author): (&str, &str),
    (approver_name, approver): (&str, &str),
    run_id: i128,
) -> anyhow::Result<()> {
    use reqwest::Method;
    let active = state.policy().reference();
    let shown = api.expect(Method::GET, &format!("/api/policies/{active}"), author, None, 200).await?;
    let source = shown["version"]["source_text"].as_str().context("the active version has no text")?;
    let version = format!("{}-demo.{run_id}", active.version);
    let candidate = PolicyRef { name: active.name.clone(), version: version.clone() };
    let text = with_version(source, &version)? + REFUNDS_TO_A_PERSON;

    let added = api
        .expect(Method::POST, "/api/policies", author, Some(json!({"source": text, "origin": "keel demo"})), 201)
        .await?;
    let diff =
        api.expect(Method::GET, &format!("/api/policies/diff?from={active}&to={candidate}"), author, None, 200).await?;
    let changes: Vec<String> = diff["changes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            format!(
                "{} {} {}",
                c["change"].as_str().unwrap_or("?"),
                c["section"].as_str().unwrap_or("?"),
                c["name"].as_str().unwrap_or("?")
            )
        })
        .collect();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "a. draft {candidate} by {author_name} (parent {}): {}",
        added["policy"]["parent_version"].as_str().unwrap_or("-"),
        changes.join(", ")
    )?;

    let (status, refused) = api.call(Method::POST, &format!("/api/policies/{candidate}/approve"), author, None).await?;
    writeln!(out, "b. approval by its author → HTTP {status}: {}", error_of(&refused))?;
    api.expect(Method::POST, &format!("/api/policies/{candidate}/approve"), approver, None, 200).await?;
    writeln!(out, "   approval by {approver_name} → approved")?;
    let promote = format!("/api/policies/{candidate}/promote");
    let (status, refused) = api.call(Method::POST, &promote, author, Some(json!({"to": "shadow"}))).await?;
    writeln!(out, "c. promotion to shadow without a gate run → HTTP {status}: {}", error_of(&refused))?;
    drop(out);

    // In production the replay and evaluation gates record these (`keel policy replay`, `keel eval`).
    let summary = json!({"note": "demo gate run: recorded by the demo, not measured"});
    let run_sha256 = keel_store::audit::sha256_hex(summary.to_string());
    let gate = state
        .store()
        .record_gate_run(NewGateRun {
            policy: candidate.clone(),
            kind: GateKind::Eval,
            passed: true,
            summary,
            run_sha256,
            actor: "demo".into(),
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    writeln!(std::io::stdout().lock(), "d. gate run #{} recorded for {candidate} (eval, passed)", gate.id)?;

    api.expect(Method::POST, &promote, author, Some(json!({"to": "shadow"})), 200).await?;
    writeln!(
        std::io::stdout().lock(),
        "e. {candidate} → shadow: it judges live traffic beside {active}, enforcing nothing"
    )?;
    for prompt in SHADOW_TRAFFIC {
        let (policy, decision, _) = api.chat(model, prompt).await?;
        writeln!(std::io::stdout().lock(), "   served by {policy}: {decision:<8} {prompt}")?;
    }
    let shadow_path = format!("/api/policies/{candidate}/shadow");
    let mut report = Value::Null;
    for _ in 0..100 {
        report = api.expect(Method::GET, &shadow_path, author, None, 200).await?;
        if report["interactions"].as_u64() >= Some(SHADOW_TRAFFIC.len() as u64) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "   shadow report: judged {}, would have decided otherwise on {}",
        report["interactions"].as_u64().unwrap_or(0),
        report["differ"].as_u64().unwrap_or(0)
    )?;
    for e in report["examples"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "     {} served {} → would {} (rule {})",
            e["interaction_id"].as_str().unwrap_or("?"),
            e["served"].as_str().unwrap_or("?"),
            e["shadow"].as_str().unwrap_or("?"),
            e["rule"].as_str().unwrap_or("none")
        )?;
    }
    drop(out);

    let probe = SHADOW_TRAFFIC[1];
    let (before, before_decision, _) = api.chat(model, probe).await?;
    api.expect(Method::POST, &promote, approver, Some(json!({"to": "active"})), 200).await?;
    let (after, after_decision, answer) = api.chat(model, probe).await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "f. {candidate} → active on the running gateway: x-keel-policy {before} → {after}")?;
    writeln!(out, "   the refund request: {before_decision} → {after_decision} ({answer})")?;
    drop(out);

    let rolled =
        api.expect(Method::POST, &format!("/api/policies/{}/rollback", active.name), approver, None, 200).await?;
    let (back, back_decision, _) = api.chat(model, probe).await?;
    writeln!(
        std::io::stdout().lock(),
        "g. rollback by {approver_name}: {} retired, x-keel-policy {after} → {back}, the refund request: {back_decision}",
        rolled["policy"]["retired"]["policy"].as_str().unwrap_or("?")
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_top_level_version_is_replaced() {
        let text = "name = \"p\"\nversion = \"1.0.0\"\n[[checks]]\nname = \"v\"\nversion_note = 1\n";
        let out = with_version(text, "1.0.0-demo.7").unwrap();
        assert_eq!(out, "name = \"p\"\nversion = \"1.0.0-demo.7\"\n[[checks]]\nname = \"v\"\nversion_note = 1\n");
        assert!(with_version("name = \"p\"\n[x]\nversion = \"1\"\n", "2").is_err());
    }
}
