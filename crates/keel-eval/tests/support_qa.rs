//! Wrong-answer detection on the shipped domain QA suite with the real sentence embedder
//! (all-MiniLM-L6-v2): the recorded correct answers pass, wrong ones fail. Skipped (with a
//! message) when the model is absent; CI pulls it first (`keel models pull`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::path::PathBuf;
use std::sync::Arc;

use keel_eval::target::PolicyTarget;
use keel_eval::{RunOptions, Scorers, Status, Suite};
use keel_models::{Embedder, MiniLmEmbedder};
use keel_policy::{Policy, DEFAULT_PACK};

fn embedder() -> Option<Arc<dyn Embedder>> {
    let dir = keel_models::default_models_dir()
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".keel/models")))?
        .join("all-minilm-l6-v2");
    if !dir.join("model.safetensors").is_file() {
        eprintln!("skipped: no MiniLM model in {} (run `keel models pull`)", dir.display());
        return None;
    }
    Some(Arc::new(MiniLmEmbedder::load(&dir).unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn correct_reference_answers_pass_and_wrong_answers_fail() {
    let Some(embedder) = embedder() else { return };
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../../suites/support-qa.yaml");
    let suite = Suite::load(std::path::Path::new(file)).unwrap();
    let target = Arc::new(PolicyTarget::new(Arc::new(Policy::parse("default.toml", DEFAULT_PACK).unwrap())));
    let scorers = Arc::new(Scorers::new(Some(embedder), None, None));
    let run =
        keel_eval::run(&suite, file, target.clone(), scorers.clone(), None, &RunOptions::default()).await.unwrap();
    let failing: Vec<(&str, &str)> =
        run.results.iter().filter(|r| r.status != Status::Pass).map(|r| (r.id.as_str(), r.reason.as_str())).collect();
    assert!(failing.is_empty(), "{failing:?}");

    let wrong = [
        ("warranty-en", "The XR-200 comes with a one-year limited guarantee on parts only."),
        ("shipping-en", "We ship orders within two weeks."),
        ("returns-en", "Sorry, all sales are final and we do not accept returns."),
        ("cleaning-en", "You can put the whole blender, base included, in the dishwasher."),
        ("hot-liquids-en", "Never blend anything warm in it."),
        ("support-hours-en", "Our support is available by email only."),
    ];
    let mut wrong_suite = suite.clone();
    wrong_suite.cases.retain(|c| wrong.iter().any(|(id, _)| *id == c.id));
    for case in &mut wrong_suite.cases {
        case.response = wrong.iter().find(|(id, _)| *id == case.id).map(|(_, a)| a.to_string());
    }
    let run = keel_eval::run(&wrong_suite, file, target, scorers, None, &RunOptions::default()).await.unwrap();
    for r in &run.results {
        assert_eq!(r.status, Status::Fail, "{} should be caught as a wrong answer: {:?}", r.id, r.expectations);
        let similar = r.expectations.iter().find(|e| e.name == "similar_to");
        if let Some(similar) = similar {
            assert!(similar.value.is_some(), "{}", similar.detail);
        }
    }
}
