//! `keel policy replay`: stored interactions re-judged with a candidate version and with the
//! active version of its name, scored against the review queue's final labels, gated, and
//! recorded as the candidate's `replay` gate run (see keel-adapt's `replay` for the scoring).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use keel_adapt::replay::{rejudge, report, ReplayGate, ReplayItem, ReplayReport, SideScores};
use keel_adapt::ReviewLabel;
use keel_core::{InteractionId, Permission};
use keel_policy::Policy;
use keel_store::lifecycle::parse_policy_ref;
use keel_store::{
    CaseFilter, CaseStatus, GateKind, InteractionFilter, LabelKind, NewGateRun, PolicyStatus, PolicyVersion, Store,
};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::identity::{act_as, StoreArgs, TokenArg};

/// What `keel policy replay` was asked.
pub struct ReplayArgs {
    /// NAME@VERSION of the candidate.
    pub candidate: String,
    /// How far back: `14d`, `12h`, or an RFC 3339 time.
    pub since: String,
    /// A gate file, or `default`.
    pub gate: String,
    /// Differing interactions to show.
    pub examples: usize,
    /// Print JSON.
    pub json: bool,
    /// Where the store is.
    pub store: StoreArgs,
    /// Who runs it.
    pub token: TokenArg,
}

/// `14d`, `12h`, `30m` ago, or an RFC 3339 instant.
pub fn parse_since(text: &str) -> anyhow::Result<OffsetDateTime> {
    if let Ok(at) = OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339) {
        return Ok(at);
    }
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let amount: i64 = number.parse().with_context(|| format!("`{text}` is neither a time nor like 14d, 12h, 30m"))?;
    let seconds = match unit {
        "d" => amount * 86_400,
        "h" => amount * 3_600,
        "m" => amount * 60,
        _ => bail!("`{text}`: unknown unit (use d, h or m)"),
    };
    Ok(OffsetDateTime::now_utc() - time::Duration::seconds(seconds))
}

/// The shipped gate, or the TOML file at `path`.
pub fn load_gate(path: &str) -> anyhow::Result<ReplayGate> {
    if path == "default" {
        return Ok(keel_policy::source::TomlSource::new("suites/gates/replay.toml", keel_adapt::replay::SHIPPED_GATE)
            .deserialize()?);
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("{path}: cannot read the replay gate"))?;
    Ok(keel_policy::source::TomlSource::new(path, &text).deserialize()?)
}

fn label_of(kind: LabelKind) -> ReviewLabel {
    match kind {
        LabelKind::Ok => ReviewLabel::Ok,
        LabelKind::Violation => ReviewLabel::Violation,
        LabelKind::WrongAnswer => ReviewLabel::WrongAnswer,
        LabelKind::OverRefusal => ReviewLabel::OverRefusal,
    }
}

async fn compile(version: &PolicyVersion) -> anyhow::Result<Policy> {
    let compiler = crate::serve::ModelCompiler::new(keel_policy::Models::default());
    keel_gateway::rollout::compile_version(&compiler, version)
        .await
        .map_err(|e| anyhow::anyhow!("{} does not compile: {e}", version.reference()))
}

/// Re-judges the interactions of `since` with both versions and reports; nothing is recorded.
pub async fn replay(
    store: &dyn Store,
    candidate: &Policy,
    active: &Policy,
    since: OffsetDateTime,
    gate: &ReplayGate,
    examples: usize,
) -> anyhow::Result<ReplayReport> {
    let labelled = store
        .list_cases(&CaseFilter { status: Some(CaseStatus::Labelled), all: true, ..CaseFilter::default() })
        .await?;
    let labels: HashMap<InteractionId, ReviewLabel> = labelled
        .iter()
        .filter_map(|case| case.final_label().map(|l| (case.interaction_id, label_of(l.label))))
        .collect();
    let mut items = Vec::new();
    let mut skipped = 0;
    let mut before = None;
    loop {
        let filter = InteractionFilter { since: Some(since), limit: Some(500), before, ..InteractionFilter::default() };
        let page = store.list_interactions(&filter).await?;
        for summary in &page {
            let Some(interaction) = store.get_interaction(summary.id).await? else { continue };
            let Some(request) = interaction.request.text.as_deref() else {
                skipped += 1;
                continue;
            };
            let answer = interaction.response.text.as_deref();
            items.push(ReplayItem {
                interaction_id: interaction.id,
                active: rejudge(active, &interaction.app, request, answer),
                candidate: rejudge(candidate, &interaction.app, request, answer),
                label: labels.get(&interaction.id).copied(),
            });
        }
        match page.last() {
            Some(last) if page.len() == 500 => before = Some(last.id),
            _ => break,
        }
    }
    Ok(report(&items, skipped, gate, examples))
}

fn estimate(e: Option<keel_adapt::replay::Estimate>) -> String {
    e.map_or_else(|| "—".to_owned(), |e| format!("{:.3} [{:.3}, {:.3}]", e.value, e.low, e.high))
}

fn side(out: &mut String, name: &str, s: &SideScores) {
    let _ = writeln!(
        out,
        "  {name:<10} P {}  R {}  F1 {}  over-refusal {}  (tp {} fp {} fn {} tn {})",
        estimate(s.precision),
        estimate(s.recall),
        estimate(s.f1),
        estimate(s.over_refusal),
        s.tp,
        s.fp,
        s.fn_,
        s.tn
    );
}

/// The report as text.
pub fn render(r: &ReplayReport, candidate: &str, active: &str) -> String {
    let mut out = format!(
        "Replay of {candidate} against {active}: {} interactions re-judged ({} skipped: texts not stored), {} decided differently\n",
        r.replayed, r.skipped_no_text, r.changed
    );
    out.push_str("Decisions (active → candidate):\n");
    for c in &r.matrix {
        let _ = writeln!(out, "  {:<8} → {:<8} {:>6}", c.from.as_str(), c.to.as_str(), c.count);
    }
    for e in &r.examples {
        let label = e.label.map(|l| format!(" (labelled {})", l.as_str())).unwrap_or_default();
        let _ = writeln!(out, "  e.g. {} {} → {}{label}", e.interaction_id, e.active.as_str(), e.candidate.as_str());
    }
    let _ = writeln!(out, "Against {} reviewer labels (violation = positive; 95% intervals):", r.labelled);
    side(&mut out, "active", &r.active);
    side(&mut out, "candidate", &r.candidate);
    if r.passed {
        out.push_str("Gate: PASSED\n");
    } else {
        out.push_str("Gate: FAILED\n");
        for f in &r.failures {
            let _ = writeln!(out, "  - {f}");
        }
    }
    out
}

/// Runs `keel policy replay`; true when the gate passed.
pub async fn run(args: ReplayArgs, out: &mut impl std::io::Write) -> anyhow::Result<bool> {
    let reference = parse_policy_ref(&args.candidate).map_err(|e| anyhow::anyhow!("--candidate: {e}"))?;
    let since = parse_since(&args.since).context("--since")?;
    let gate = load_gate(&args.gate)?;
    let store: Arc<dyn Store> = args.store.open().await?;
    let actor = act_as(store.as_ref(), &args.token, Permission::RunGates).await?;
    let candidate_version = store
        .policy_version(&reference)
        .await?
        .with_context(|| format!("no stored version {reference} (add it first: keel policy add FILE)"))?;
    let active_version = store
        .policy_versions(Some(&reference.name))
        .await?
        .into_iter()
        .find(|v| v.status == PolicyStatus::Active)
        .with_context(|| format!("the policy {} has no active version to compare with", reference.name))?;
    let (candidate, active) = (compile(&candidate_version).await?, compile(&active_version).await?);
    let r = replay(store.as_ref(), &candidate, &active, since, &gate, args.examples).await?;
    let full = serde_json::to_string(&r)?;
    let run_sha256 = hex::encode(Sha256::digest(full.as_bytes()));
    let summary = serde_json::json!({
        "since": since.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        "against": active_version.reference().to_string(),
        "replayed": r.replayed,
        "changed": r.changed,
        "labelled": r.labelled,
        "f1": {"active": r.active.f1.map(|e| e.value), "candidate": r.candidate.f1.map(|e| e.value)},
        "over_refusal": r.candidate.over_refusal.map(|e| e.value),
        "gate": r.gate,
        "failures": r.failures,
    });
    let run = NewGateRun {
        policy: reference.clone(),
        kind: GateKind::Replay,
        passed: r.passed,
        summary,
        run_sha256,
        actor: actor.name.clone(),
    };
    let recorded = store.record_gate_run(run).await.map_err(|e| anyhow::anyhow!("recording the gate run: {e}"))?;
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&serde_json::json!({"report": r, "gate_run": recorded}))?)?;
    } else {
        write!(out, "{}", render(&r, &reference.to_string(), &active_version.reference().to_string()))?;
        writeln!(out, "Recorded as gate run {} of {reference} (replay, by {}).", recorded.id, actor.name)?;
    }
    Ok(r.passed)
}

/// The labels file a candidate is built from, taken from the review queue: one JSON line per
/// labelled case (keel-adapt's label format), texts from the stored requests.
pub async fn labels_from_review(
    store: &dyn Store,
    since: Option<OffsetDateTime>,
    path: &Path,
) -> anyhow::Result<usize> {
    let cases = store
        .list_cases(&CaseFilter {
            status: Some(CaseStatus::Labelled),
            labelled_since: since,
            all: true,
            ..CaseFilter::default()
        })
        .await?;
    let mut lines = String::new();
    let mut count = 0;
    for case in &cases {
        let Some(label) = case.final_label() else { continue };
        let Some(interaction) = store.get_interaction(case.interaction_id).await? else { continue };
        let Some(request) = interaction.request.text.as_deref() else { continue };
        let text = keel_adapt::replay::request_texts(request).join("\n");
        if text.trim().is_empty() {
            continue;
        }
        let line = serde_json::json!({
            "case_id": format!("case-{}", case.id),
            "interaction_id": case.interaction_id.to_string(),
            "text": text,
            "label": label.label.as_str(),
            "category": label.category,
            "reviewer": label.reviewer,
            "labelled_at": label.at.format(&time::format_description::well_known::Rfc3339)?,
            "correction": label.correction,
        });
        lines.push_str(&line.to_string());
        lines.push('\n');
        count += 1;
    }
    std::fs::write(path, lines).with_context(|| format!("{}: cannot write the labels", path.display()))?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use keel_core::{Action, Interaction, Outcome, PolicyRef, Privacy, Timings, Tokens};
    use keel_store::{CaseIntake, CaseReason, NewLabel, WriteBatch};

    use super::*;

    const BASE: &str =
        "name = \"s\"\nversion = \"1\"\n[messages]\nblock = { en = \"no\" }\nescalate = { en = \"human\" }\n";

    fn stored(text: &str, privacy: Privacy) -> Interaction {
        let body = serde_json::json!({"messages": [{"role": "user", "content": text}]}).to_string();
        Interaction {
            id: InteractionId::new(),
            created_at: OffsetDateTime::now_utc(),
            app: "support".into(),
            model: "m".into(),
            stream: false,
            request: keel_store::stored_text(&body, None, privacy),
            response: keel_store::stored_text("ok", None, privacy),
            outcome: Outcome::Completed,
            http_status: 200,
            error: None,
            timings: Timings { upstream_ms: 1.0, overhead_us: 1, total_ms: 1.0 },
            tokens: Tokens::default(),
            policy: PolicyRef { name: "s".into(), version: "1".into() },
            decision: Action::Allow,
            decisions: vec![],
            checks: vec![],
            shadow: vec![],
        }
    }

    #[tokio::test]
    async fn replay_scores_queue_labels_and_skips_rows_without_text() {
        let store = keel_store::resolve("sqlite::memory:").await.unwrap();
        let rows = [
            stored("buy an XR-200", Privacy::Full),
            stored("opening hours?", Privacy::Full),
            stored("buy an XR-200 now", Privacy::None),
        ];
        let intake = CaseIntake::default();
        let now = OffsetDateTime::now_utc();
        let cases = rows.iter().map(|i| intake.case(i.id, "support", CaseReason::Sampled, None, now)).collect();
        store.write_batch(WriteBatch { interactions: rows.to_vec(), cases, ..WriteBatch::default() }).await.unwrap();
        let queued = store.list_cases(&CaseFilter { all: true, ..CaseFilter::default() }).await.unwrap();
        let violation = NewLabel::from_parts("violation", Some("recall".into()), None, None, None).unwrap();
        store.label_case(queued[0].id, violation, "aiko").await.unwrap();
        store
            .label_case(queued[1].id, NewLabel::from_parts("ok", None, None, None, None).unwrap(), "aiko")
            .await
            .unwrap();

        let active = Policy::parse("a.toml", BASE).unwrap();
        let candidate = Policy::parse(
            "c.toml",
            &format!(
                "{BASE}[[checks]]\nname = \"xr\"\nkind = \"keywords\"\nphase = \"input\"\nwords = [\"XR-200\"]\n\
                 [[rules]]\nname = \"block-xr\"\npriority = 5\nphase = \"input\"\nwhen = \"xr\"\naction = \"block\"\n"
            ),
        )
        .unwrap();
        let gate = ReplayGate { min_labelled: 2, ..ReplayGate::default() };
        let since = OffsetDateTime::now_utc() - time::Duration::hours(1);
        let r = replay(store.as_ref(), &candidate, &active, since, &gate, 10).await.unwrap();
        assert_eq!((r.replayed, r.skipped_no_text, r.changed, r.labelled), (2, 1, 1, 2));
        assert_eq!((r.active.tp, r.active.fn_, r.active.tn), (0, 1, 1));
        assert_eq!((r.candidate.tp, r.candidate.fp, r.candidate.tn), (1, 0, 1));
        assert!(r.passed, "{:?}", r.failures);
        assert!(render(&r, "s@2", "s@1").contains("allow    → block         1"), "{}", render(&r, "s@2", "s@1"));
    }
}
