//! End-to-end flows of the evaluation loop: real targets (the scripted upstream over HTTP, the
//! gateway router in-process, policies on recorded answers), real cache files, a real SQLite
//! store for sealing and verification.

// Test code: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use keel_core::Action;
use keel_eval::judge::Judge;
use keel_eval::record::{self, CaseResult, RunRecord, Verification};
use keel_eval::target::{GatewayTarget, ModelTarget, Params, PolicyTarget, RecordedUpstream, RECORDED_MODEL};
use keel_eval::{compare, Cache, LoadedGate, RunOptions, Scorers, Status, Suite};
use keel_policy::{Policy, DEFAULT_PACK};
use keel_scripted_upstream::{Options, Reply, Script};

fn repo(path: &str) -> String {
    format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"))
}

fn shipped(name: &str) -> Suite {
    Suite::load(Path::new(&repo(&format!("suites/{name}")))).unwrap()
}

fn policy(path: &str) -> Arc<Policy> {
    Arc::new(Policy::load(Path::new(&repo(path))).unwrap())
}

async fn scripted(script: Script, options: Options) -> keel_scripted_upstream::RunningUpstream {
    keel_scripted_upstream::spawn(SocketAddr::from(([127, 0, 0, 1], 0)), script, options).await.unwrap()
}

fn scorers() -> Arc<Scorers> {
    Arc::new(Scorers::new(None, None, None))
}

fn options(cache: Cache<keel_eval::Response>) -> RunOptions {
    RunOptions { retries: 0, cache: Arc::new(cache), ..RunOptions::default() }
}

const QA: &str = r#"
name: qa
version: "1"
category: qa
cases:
  - id: warranty
    prompt: What is the warranty?
    expect: { contains: two years, does_not_refuse: true }
  - id: refund
    prompt: Can I get a refund?
    expect: { contains: 30 days }
  - id: shipping
    prompt: How long is shipping?
    expect: { regex: "(?i)three business days" }
"#;

fn qa_script() -> Script {
    Script::echo()
        .on("warranty", Reply::Text("The warranty is two years.".into()))
        .on("refund", Reply::Text("Refunds within 14 days.".into()))
        .on("shipping", Reply::Text("Shipping takes three business days.".into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_run_scores_answers_and_a_rerun_hits_the_cache_with_identical_results() {
    let upstream = scripted(qa_script(), Options { models: vec!["m".into()], ..Options::default() }).await;
    let dir = tempfile::tempdir().unwrap();
    let cache_file = dir.path().join("responses.jsonl");
    let suite = Suite::parse("qa.yaml", QA).unwrap();
    let target = Arc::new(ModelTarget::new(&upstream.base_url(), "scripted", None, "m", Params::default()).unwrap());
    let first =
        keel_eval::run(&suite, "qa.yaml", target.clone(), scorers(), None, &options(Cache::open(&cache_file).unwrap()))
            .await
            .unwrap();
    let statuses: Vec<Status> = first.results.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![Status::Pass, Status::Fail, Status::Pass]);
    assert!(first.results[1].reason.contains("does not contain \"30 days\""), "{}", first.results[1].reason);
    assert_eq!(upstream.served(), 3);
    let sent = upstream.received();
    assert_eq!(sent[0]["temperature"], 0.0);
    assert_eq!(sent[0]["seed"], 0);

    let second =
        keel_eval::run(&suite, "qa.yaml", target, scorers(), None, &options(Cache::open(&cache_file).unwrap()))
            .await
            .unwrap();
    assert_eq!(upstream.served(), 3, "a rerun must not call the target again");
    assert!(second.results.iter().all(|r| r.cached));
    let strip = |r: &RunRecord| -> Vec<CaseResult> {
        r.results.iter().map(|c| CaseResult { cached: false, ..c.clone() }).collect()
    };
    assert_eq!(strip(&first), strip(&second));
    assert_eq!(first.summary, second.summary);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_run_resumes_from_the_cache_and_errors_are_never_passes() {
    // The first two requests fail with HTTP 500, as an upstream dying mid-run would.
    let upstream =
        scripted(qa_script(), Options { models: vec!["m".into()], fail_first: 2, ..Options::default() }).await;
    let dir = tempfile::tempdir().unwrap();
    let cache_file = dir.path().join("responses.jsonl");
    let suite = Suite::parse("qa.yaml", QA).unwrap();
    let target = Arc::new(ModelTarget::new(&upstream.base_url(), "scripted", None, "m", Params::default()).unwrap());
    let opts = RunOptions { concurrency: 1, ..options(Cache::open(&cache_file).unwrap()) };
    let first = keel_eval::run(&suite, "qa.yaml", target.clone(), scorers(), None, &opts).await.unwrap();
    let all = first.summary.all().unwrap();
    assert_eq!((all.errors, all.passed), (2, 1), "{:?}", first.results.iter().map(|r| &r.reason).collect::<Vec<_>>());
    assert!(first.results[0].reason.contains("HTTP 500"), "{}", first.results[0].reason);
    assert_eq!(first.summary.categories["qa"].metrics["error_rate"].value, 2.0 / 3.0);
    assert_eq!(upstream.served(), 3);

    let resumed =
        keel_eval::run(&suite, "qa.yaml", target, scorers(), None, &options(Cache::open(&cache_file).unwrap()))
            .await
            .unwrap();
    assert_eq!(upstream.served(), 5, "only the two errored cases are asked again");
    assert_eq!(resumed.results.iter().filter(|r| r.cached).count(), 1);
    assert_eq!(resumed.summary.all().unwrap().errors, 0);
}

const FIVE: &str = r#"
name: five
version: "1"
category: qa
cases:
  - { id: c1, prompt: question one, expect: { contains: answer } }
  - { id: c2, prompt: question two, expect: { contains: answer } }
  - { id: c3, prompt: question three, expect: { contains: answer } }
  - { id: c4, prompt: question four, expect: { contains: answer } }
  - { id: c5, prompt: question five, expect: { contains: answer } }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_cancelled_mid_way_resumes_without_redoing_finished_cases() {
    let answers = || {
        ["one", "two", "three", "four", "five"]
            .into_iter()
            .fold(Script::echo(), |s, n| s.on(&format!("question {n}"), Reply::Text(format!("answer {n}"))))
    };
    let upstream_options = || Options { models: vec!["m".into()], ..Options::default() };
    // The first upstream never answers the fourth case, so the run is cut there.
    let hanging = scripted(
        Script::echo().on("question four", Reply::Hang).on("question", Reply::Text("answer".into())),
        upstream_options(),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cache_file = dir.path().join("responses.jsonl");
    let suite = Suite::parse("five.yaml", FIVE).unwrap();
    let target = Arc::new(ModelTarget::new(&hanging.base_url(), "scripted", None, "m", Params::default()).unwrap());
    let opts = RunOptions { concurrency: 1, ..options(Cache::open(&cache_file).unwrap()) };
    let fourth_asked = async {
        while hanging.served() < 4 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    // Cancelled as Ctrl-C or a killed CI job would: the run's future is dropped mid-way, so
    // there is no run record, only the cache file.
    tokio::select! {
        run = keel_eval::run(&suite, "five.yaml", target, scorers(), None, &opts) => {
            panic!("the run finished although its fourth case hangs: {:?}", run.map(|r| r.summary))
        }
        () = fourth_asked => {}
        () = tokio::time::sleep(Duration::from_secs(10)) => panic!("the fourth case was never asked"),
    }
    let finished = std::fs::read_to_string(&cache_file).unwrap().lines().count();
    assert_eq!(finished, 3, "each finished case is in the cache file as soon as it is answered");

    // Resumed against a fresh upstream of the same name: only the unfinished cases are asked.
    let fresh = scripted(answers(), upstream_options()).await;
    let target = Arc::new(ModelTarget::new(&fresh.base_url(), "scripted", None, "m", Params::default()).unwrap());
    let resumed =
        keel_eval::run(&suite, "five.yaml", target, scorers(), None, &options(Cache::open(&cache_file).unwrap()))
            .await
            .unwrap();
    assert_eq!(fresh.served(), 2, "the three finished cases must not be redone");
    let mut asked: Vec<String> =
        fresh.received().iter().map(|b| b["messages"][0]["content"].as_str().unwrap().to_string()).collect();
    asked.sort();
    assert_eq!(asked, vec!["question five", "question four"]);
    let cached: Vec<(&str, bool)> = resumed.results.iter().map(|r| (r.id.as_str(), r.cached)).collect();
    assert_eq!(cached, vec![("c1", true), ("c2", true), ("c3", true), ("c4", false), ("c5", false)]);
    assert_eq!(resumed.summary.all().unwrap().passed, 5);
    assert_eq!(resumed.results[3].output.as_deref(), Some("answer four"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_errors_are_retried() {
    let upstream =
        scripted(qa_script(), Options { models: vec!["m".into()], fail_first: 1, ..Options::default() }).await;
    let suite = Suite::parse("qa.yaml", QA).unwrap();
    let target = Arc::new(ModelTarget::new(&upstream.base_url(), "scripted", None, "m", Params::default()).unwrap());
    let opts = RunOptions { retries: 2, concurrency: 1, ..RunOptions::default() };
    let run = keel_eval::run(&suite, "qa.yaml", target, scorers(), None, &opts).await.unwrap();
    assert_eq!(run.summary.all().unwrap().errors, 0);
    assert_eq!(upstream.served(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_process_gateway_records_decisions_rules_and_what_the_user_got() {
    let suite = shipped("ci-smoke.yaml");
    let recorded = RecordedUpstream::spawn(&suite).await.unwrap();
    let default = Arc::new(Policy::parse("default.toml", DEFAULT_PACK).unwrap());
    let target = GatewayTarget::new(default, &recorded.base_url(), "recorded", None, RECORDED_MODEL, Params::default())
        .await
        .unwrap();
    let run = keel_eval::run(&suite, "ci-smoke.yaml", Arc::new(target), scorers(), None, &RunOptions::default())
        .await
        .unwrap();
    let failing: Vec<&str> =
        run.results.iter().filter(|r| r.status != Status::Pass).map(|r| r.reason.as_str()).collect();
    assert!(failing.is_empty(), "{failing:?}");
    let card = run.results.iter().find(|r| r.id == "pii-card-answer").unwrap();
    assert_eq!(card.decision, Some(Action::Redact));
    assert_eq!(card.output.as_deref(), Some("You paid with the card [CREDIT_CARD]."));
    assert!(card.decisions.iter().any(|d| d.rule.as_deref() == Some("redact-pii")), "{:?}", card.decisions);
    let jailbreak = run.results.iter().find(|r| r.id == "jailbreak-override-en").unwrap();
    assert_eq!(jailbreak.output.as_deref(), Some("Sorry, I can't help with that request."));
    assert!(jailbreak.checks_hit.contains(&"injection".to_string()));
    assert!(jailbreak.refused);
    let gate = LoadedGate::load(Path::new(&repo("suites/gates/default.toml"))).unwrap();
    let outcome = gate.evaluate(&run);
    assert!(outcome.passed, "{}", outcome.reason);
}

#[tokio::test]
async fn a_tampered_run_record_fails_verification() {
    let dir = tempfile::tempdir().unwrap();
    let store = keel_store::resolve(&format!("sqlite://{}", dir.path().join("keel.db").display())).await.unwrap();
    let suite = shipped("ci-smoke.yaml");
    let target = Arc::new(PolicyTarget::new(Arc::new(Policy::parse("default.toml", DEFAULT_PACK).unwrap())));
    let run = keel_eval::run(&suite, "ci-smoke.yaml", target, scorers(), None, &RunOptions::default()).await.unwrap();
    let path = dir.path().join("run.json");
    let sha = record::write(&run, &path).unwrap();
    let seq = record::seal(store.as_ref(), &run, &sha, "test").await.unwrap();
    assert_eq!(
        record::verify(store.as_ref(), &path).await.unwrap(),
        Verification::Verified { run_id: run.run_id.clone(), sha256: sha.clone(), seq }
    );
    assert_eq!(record::read(&path).unwrap(), run);

    let text = std::fs::read_to_string(&path).unwrap();
    let edited = text.replacen("\"status\": \"fail\"", "\"status\": \"pass\"", 1).replacen(
        "\"passed\": 10",
        "\"passed\": 11",
        1,
    );
    let edited = if edited == text { text.replacen("\"cached\": false", "\"cached\": true", 1) } else { edited };
    assert_ne!(edited, text);
    std::fs::write(&path, edited).unwrap();
    match record::verify(store.as_ref(), &path).await.unwrap() {
        Verification::Edited { sealed_sha256, seq: at, .. } => {
            assert_eq!(sealed_sha256, sha);
            assert_eq!(at, seq);
        }
        other => panic!("an edit must be detected: {other:?}"),
    }

    let unsealed = dir.path().join("other.json");
    record::write(&RunRecord { run_id: "not-sealed".into(), ..run }, &unsealed).unwrap();
    assert!(matches!(record::verify(store.as_ref(), &unsealed).await.unwrap(), Verification::NotSealed { .. }));
}

/// A run of `n` cases where the cases in `fail` fail; the rest pass.
fn synthetic(run_id: &str, n: usize, fail: &[usize]) -> RunRecord {
    let suite = shipped("ci-smoke.yaml");
    let target = Arc::new(PolicyTarget::new(Arc::new(Policy::parse("default.toml", DEFAULT_PACK).unwrap())));
    let template =
        futures::executor::block_on(keel_eval::run(&suite, "x", target, scorers(), None, &RunOptions::default()))
            .unwrap();
    let base = template.results[0].clone();
    let results: Vec<CaseResult> = (0..n)
        .map(|i| CaseResult {
            id: format!("case-{i:03}"),
            category: "synthetic".into(),
            status: if fail.contains(&i) { Status::Fail } else { Status::Pass },
            ..base.clone()
        })
        .collect();
    RunRecord { run_id: run_id.into(), summary: keel_eval::record::Summary::of(&results), results, ..template }
}

/// Deterministic picks of `k` distinct indices below `n` (a seeded LCG), for reproducible noise.
fn seeded_picks(seed: u64, n: usize, k: usize) -> Vec<usize> {
    let mut state = seed;
    let mut out = Vec::new();
    while out.len() < k {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let i = (state >> 33) as usize % n;
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

#[test]
fn compare_flags_a_real_regression_and_not_noise() {
    let baseline_fail = seeded_picks(7, 60, 6);
    let a = synthetic("a", 60, &baseline_fail);
    // Noise: two baseline failures now pass, three other cases now fail.
    let mut noisy: Vec<usize> = baseline_fail[2..].to_vec();
    noisy.extend(seeded_picks(11, 60, 10).into_iter().filter(|i| !baseline_fail.contains(i)).take(3));
    let b_noise = synthetic("b-noise", 60, &noisy);
    let c = compare(&a, &b_noise);
    assert_eq!((c.overall.worse, c.overall.better), (3, 2));
    assert!(!c.has_regression(), "p = {}", c.overall.p_value);
    assert!(c.render().contains("worse, within noise"), "{}", c.render());

    // A regression: twelve more cases fail and none improve.
    let mut worse = baseline_fail.clone();
    worse.extend(seeded_picks(13, 60, 30).into_iter().filter(|i| !baseline_fail.contains(i)).take(12));
    let b_bad = synthetic("b-bad", 60, &worse);
    let c = compare(&a, &b_bad);
    assert_eq!((c.overall.worse, c.overall.better), (12, 0));
    assert!(c.has_regression(), "p = {}", c.overall.p_value);
    assert_eq!(c.regressions.len(), 12);
    assert!(c.render().contains("REGRESSION"));
}

fn run_shift(suite: &Suite, policy: Arc<Policy>) -> RunRecord {
    let target = Arc::new(PolicyTarget::new(policy));
    let role = keel_eval::run::policy_role(suite, target.as_ref()).unwrap();
    let scorers = Arc::new(Scorers::new(None, None, role));
    futures::executor::block_on(keel_eval::run(suite, "shift", target, scorers, None, &RunOptions::default())).unwrap()
}

#[test]
fn value_shift_suites_pass_for_their_policy_pairs() {
    for name in ["recall", "regulation", "relaxed"] {
        let suite = shipped(&format!("value-shift-{name}.yaml"));
        let before = run_shift(&suite, policy(&format!("suites/policies/{name}-before.toml")));
        let after = run_shift(&suite, policy(&format!("suites/policies/{name}-after.toml")));
        for run in [&before, &after] {
            let failing: Vec<&str> =
                run.results.iter().filter(|r| r.status != Status::Pass).map(|r| r.reason.as_str()).collect();
            assert!(failing.is_empty(), "{name} {:?}: {failing:?}", run.policy_role);
        }
        let changed: Vec<String> = compare(&before, &after).decision_changes.into_iter().map(|d| d.id).collect();
        let tagged: Vec<String> =
            suite.cases.iter().filter(|c| c.tags.iter().any(|t| t == "changes")).map(|c| c.id.clone()).collect();
        assert_eq!(changed, tagged, "{name}: the new version changes exactly the tagged decisions");
    }
}

#[test]
fn value_shift_fails_when_the_after_policy_changes_an_unrelated_decision() {
    let suite = shipped("value-shift-recall.yaml");
    let text = std::fs::read_to_string(repo("suites/policies/recall-after.toml")).unwrap();
    // The same version, but its pattern also catches the warranty question.
    let overreaching = text.replace("(recall|recalled|safe|", "(warranty|recall|recalled|safe|");
    assert_ne!(overreaching, text);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("recall-after.toml");
    std::fs::write(&file, overreaching).unwrap();
    let run = run_shift(&suite, Arc::new(Policy::load(&file).unwrap()));
    let failing: Vec<&str> = run.results.iter().filter(|r| r.status == Status::Fail).map(|r| r.id.as_str()).collect();
    assert_eq!(failing, vec!["warranty-en"]);
    let wrong_pair = Arc::new(PolicyTarget::new(Arc::new(Policy::parse("default.toml", DEFAULT_PACK).unwrap())));
    let e = keel_eval::run::policy_role(&suite, wrong_pair.as_ref()).err().unwrap().to_string();
    assert!(e.contains("not default@1.1.0"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_judge_with_malformed_verdicts_gives_errors_not_passes() {
    const JUDGED: &str = r#"
name: judged
version: "1"
cases:
  - id: good
    prompt: What is the warranty?
    response: Two years.
    human_label: pass
    expect: { judge: { rubric: States a two-year warranty } }
  - id: rambling
    prompt: Shipping?
    response: Three days.
    human_label: fail
    expect: { judge: { rubric: States three business days } }
  - id: truncated
    prompt: Returns?
    response: Thirty days.
    expect: { judge: { rubric: States thirty days } }
"#;
    let judge_server = scripted(
        Script::echo()
            .on(
                "two-year",
                Reply::Text("```json\n{\"verdict\": \"pass\", \"reason\": \"It states two years.\"}\n```".into()),
            )
            .on("three business", Reply::Text("I think this answer is mostly fine, I would pass it.".into()))
            .on("thirty", Reply::Text("{\"verdict\": \"pass\"".into())),
        Options { models: vec!["judge".into()], ..Options::default() },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let judge_cache = dir.path().join("judge.jsonl");
    let judge = Arc::new(
        Judge::new(
            &judge_server.base_url(),
            "scripted",
            None,
            "judge",
            Cache::open(&judge_cache).unwrap(),
            Duration::from_secs(5),
        )
        .unwrap(),
    );
    let info = judge.info();
    let suite = Suite::parse("judged.yaml", JUDGED).unwrap();
    let target = Arc::new(PolicyTarget::new(Arc::new(Policy::parse("default.toml", DEFAULT_PACK).unwrap())));
    let scorers = Arc::new(Scorers::new(None, Some(judge), None));
    let run =
        keel_eval::run(&suite, "judged.yaml", target.clone(), scorers, Some(info.clone()), &RunOptions::default())
            .await
            .unwrap();
    let statuses: Vec<(&str, Status)> = run.results.iter().map(|r| (r.id.as_str(), r.status)).collect();
    assert_eq!(statuses, vec![("good", Status::Pass), ("rambling", Status::Error), ("truncated", Status::Error)]);
    assert!(run.results[1].reason.contains("malformed verdict"), "{}", run.results[1].reason);
    assert_eq!(run.summary.all().unwrap().errors, 2);
    let judge_record = run.judge.as_ref().unwrap();
    assert_eq!(judge_record.info.model, "judge");
    assert_eq!(judge_record.info.template_sha256, keel_eval::judge::sha256_hex(keel_eval::judge::JUDGE_TEMPLATE));
    let agreement = run.summary.judge_agreement.unwrap();
    assert_eq!(agreement.n, 1);

    // Verdicts are cached: a rerun does not ask the judge again.
    let served = judge_server.served();
    let judge = Arc::new(
        Judge::new(
            &judge_server.base_url(),
            "scripted",
            None,
            "judge",
            Cache::open(&judge_cache).unwrap(),
            Duration::from_secs(5),
        )
        .unwrap(),
    );
    let rerun = keel_eval::run(
        &suite,
        "judged.yaml",
        target,
        Arc::new(Scorers::new(None, Some(judge), None)),
        Some(info),
        &RunOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(rerun.results[0].status, Status::Pass);
    assert_eq!(judge_server.served(), served + 2, "only the malformed (uncached) verdicts are asked again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn judge_agreement_with_human_labels_is_measured_on_labelled_cases() {
    // (rubric word, judge verdict, human label): four agreements in six, both raters pass half.
    let rows = [
        ("alpha", "pass", "pass"),
        ("bravo", "pass", "fail"),
        ("charlie", "fail", "fail"),
        ("delta", "fail", "fail"),
        ("echo", "pass", "pass"),
        ("foxtrot", "fail", "pass"),
    ];
    let mut suite_text = String::from("name: labelled\nversion: \"1\"\ncategory: qa\ncases:\n");
    let mut script = Script::echo();
    for (word, verdict, human) in rows {
        suite_text.push_str(&format!(
            "  - {{ id: {word}, prompt: Tell me about {word}, response: About {word}., human_label: {human}, expect: {{ judge: {{ rubric: Mentions {word} }} }} }}\n"
        ));
        script = script.on(
            &format!("Mentions {word}"),
            Reply::Text(format!("{{\"verdict\": \"{verdict}\", \"reason\": \"graded {word}\"}}")),
        );
    }
    // An unlabelled case is graded but not paired.
    suite_text.push_str("  - { id: golf, prompt: Tell me about golf, response: About golf., expect: { judge: { rubric: Mentions golf } } }\n");
    script = script.on("Mentions golf", Reply::Text("{\"verdict\": \"fail\", \"reason\": \"no\"}".into()));
    let judge_server = scripted(script, Options { models: vec!["judge".into()], ..Options::default() }).await;
    let dir = tempfile::tempdir().unwrap();
    let judge = Arc::new(
        Judge::new(
            &judge_server.base_url(),
            "scripted",
            None,
            "judge",
            Cache::open(&dir.path().join("judge.jsonl")).unwrap(),
            Duration::from_secs(5),
        )
        .unwrap(),
    );
    let info = judge.info();
    let suite = Suite::parse("labelled.yaml", &suite_text).unwrap();
    let target = Arc::new(PolicyTarget::new(Arc::new(Policy::parse("default.toml", DEFAULT_PACK).unwrap())));
    let run = keel_eval::run(
        &suite,
        "labelled.yaml",
        target,
        Arc::new(Scorers::new(None, Some(judge), None)),
        Some(info),
        &RunOptions::default(),
    )
    .await
    .unwrap();
    let verdicts: Vec<(&str, Status)> = run.results.iter().map(|r| (r.id.as_str(), r.status)).collect();
    assert_eq!(
        verdicts,
        vec![
            ("alpha", Status::Pass),
            ("bravo", Status::Pass),
            ("charlie", Status::Fail),
            ("delta", Status::Fail),
            ("echo", Status::Pass),
            ("foxtrot", Status::Fail),
            ("golf", Status::Fail),
        ]
    );
    let agreement = run.summary.judge_agreement.unwrap();
    assert_eq!(agreement.n, 6);
    assert!((agreement.agreement - 4.0 / 6.0).abs() < 1e-12, "{agreement:?}");
    // Observed 2/3, chance 1/2: kappa = (2/3 - 1/2) / (1 - 1/2) = 1/3.
    assert!((agreement.kappa.unwrap() - 1.0 / 3.0).abs() < 1e-12, "{agreement:?}");
    let text = keel_eval::report::render_text(&run);
    assert!(text.contains("judge vs human labels: 6 labelled, agreement 66.7%, Cohen's kappa 0.333"), "{text}");
}
