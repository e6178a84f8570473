//! `keel policy candidate` and `keel bench adapt` through the real binary, on the real MiniLM
//! (skipped, with the reason printed, when the models are not pulled; `scripts/test` pulls them).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::Command;

const KEEL: &str = env!("CARGO_BIN_EXE_keel");

fn models_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("KEEL_MODELS_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".keel/models")))?;
    if dir.join("all-minilm-l6-v2/model.safetensors").is_file() {
        Some(dir)
    } else {
        eprintln!("skipped: no MiniLM model in {} (run `keel models pull`)", dir.display());
        None
    }
}

fn keel(args: &[&str], home: &Path, models: &Path) -> std::process::Output {
    Command::new(KEEL)
        .args(args)
        .env("KEEL_HOME", home)
        .env("KEEL_MODELS_DIR", models)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const LABELS: &str = r#"{"case_id":"c-1","interaction_id":"i-1","text":"Should I buy the XR-200 blender?","label":"violation","category":"product_recall","reviewer":"aiko","labelled_at":"2026-05-01T09:00:00Z"}
{"case_id":"c-2","interaction_id":"i-2","text":"Where can I order an XR-200?","label":"violation","category":"product_recall","reviewer":"ken","labelled_at":"2026-05-01T10:00:00Z"}
{"case_id":"c-3","interaction_id":"i-3","text":"I want to purchase an XR-200 blender.","label":"violation","category":"product_recall","reviewer":"aiko","labelled_at":"2026-05-01T11:00:00Z"}
{"case_id":"c-4","text":"Can I make smoothies with the XR-200?","label":"ok","reviewer":"ken","labelled_at":"2026-05-01T12:00:00Z"}
"#;

#[test]
fn candidate_writes_a_new_version_and_leaves_the_base_alone() {
    let Some(models) = models_dir() else { return };
    let home = tempfile::tempdir().unwrap();
    let base = home.path().join("support-demo.toml");
    let demo =
        std::fs::read_to_string(format!("{}/../../policies/support-demo.toml", env!("CARGO_MANIFEST_DIR"))).unwrap();
    std::fs::write(&base, &demo).unwrap();
    let labels = home.path().join("labels.jsonl");
    std::fs::write(&labels, LABELS).unwrap();
    let out_file = home.path().join("candidate.toml");
    let args = [
        "policy",
        "candidate",
        "--from-labels",
        labels.to_str().unwrap(),
        "--base",
        base.to_str().unwrap(),
        "-o",
        out_file.to_str().unwrap(),
        "--action",
        "escalate",
    ];
    let out = keel(&args, home.path(), &models);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("wrote candidate support-demo@1.0.0-mem.1"), "{stdout}");
    assert!(stdout.contains("parent support-demo@1.0.0"), "{stdout}");
    assert_eq!(std::fs::read_to_string(&base).unwrap(), demo, "the base is never edited");
    let candidate = std::fs::read_to_string(&out_file).unwrap();
    assert!(candidate.contains("case_id = \"c-2\""));
    let check = keel(&["policy", "check", out_file.to_str().unwrap()], home.path(), &models);
    assert!(check.status.success(), "{}", text(&check.stderr));
    assert!(text(&check.stdout).contains("memory-violation"), "{}", text(&check.stdout));

    // Writing over the base is refused; bad labels name file, line and field.
    let over = [
        "policy",
        "candidate",
        "--from-labels",
        labels.to_str().unwrap(),
        "--base",
        base.to_str().unwrap(),
        "-o",
        base.to_str().unwrap(),
    ];
    let out = keel(&over, home.path(), &models);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("the base version is never edited"), "{}", text(&out.stderr));
    std::fs::write(
        &labels,
        LABELS.replace("\"reviewer\":\"ken\",\"labelled_at\":\"2026-05-01T10:00:00Z\"", "\"reviewer\":\"ken\""),
    )
    .unwrap();
    let out = keel(&args, home.path(), &models);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("labels.jsonl:2: labelled_at: missing"), "{}", text(&out.stderr));
}

/// About 25 s in a debug build; run with `cargo test -p keel --test adapt -- --ignored`.
#[test]
#[ignore = "slow (~25 s debug): cargo test -p keel --test adapt -- --ignored"]
fn quick_bench_memory_beats_the_static_policy_after_the_change() {
    let Some(models) = models_dir() else { return };
    let home = tempfile::tempdir().unwrap();
    let out = keel(&["bench", "adapt", "--quick", "--json"], home.path(), &models);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let f1 = |variant: &str, noise: f64, part: &str| -> f64 {
        let row = report["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["variant"] == variant && (r["noise"].as_f64().unwrap() - noise).abs() < 1e-9)
            .unwrap();
        let c = &row[part];
        let tp = c["true_positive"].as_f64().unwrap();
        let d = 2.0 * tp + c["false_positive"].as_f64().unwrap() + c["false_negative"].as_f64().unwrap();
        2.0 * tp / d
    };
    for noise in [0.0, 0.2] {
        let (keel_after, static_after) = (f1("keel", noise, "after"), f1("static", noise, "after"));
        assert!(keel_after > static_after + 0.05, "noise {noise}: Keel {keel_after:.3} vs static {static_after:.3}");
    }
}
