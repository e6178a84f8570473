//! `keel eval` and `keel suites` through the real binary: a gated run on the in-process
//! gateway, gate exit codes (0 pass, 1 fail, 2 bad input), verification of a sealed run
//! against an edit, reports, comparison and suite errors with file, line and field.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};

const KEEL: &str = env!("CARGO_BIN_EXE_keel");

fn keel(args: &[&str], home: &Path) -> Output {
    Command::new(KEEL).args(args).env("KEEL_HOME", home).env("RUST_LOG", "warn").output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn a_gated_run_on_the_in_process_gateway_then_report_gate_verify_and_compare() {
    let home = tempfile::tempdir().unwrap();
    let run = home.path().join("run.json");
    let out = keel(
        &[
            "eval",
            "run",
            "ci-smoke",
            "--target",
            "gateway",
            "--upstream",
            "recorded",
            "--gate",
            "default",
            "--out",
            run.to_str().unwrap(),
        ],
        home.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("gate `default` passed"), "{}", text(&out));
    assert!(text(&out).contains("policy default@1.1.0"), "{}", text(&out));
    let run = run.to_str().unwrap();

    let gate = keel(&["eval", "gate", run, "--gate", "default"], home.path());
    assert_eq!(gate.status.code(), Some(0), "{}", text(&gate));

    let strict = home.path().join("strict.toml");
    std::fs::write(
        &strict,
        "name = \"strict\"\n[[criteria]]\nrequire = \"benign.latency_p95_ms <= 0\"\nrisk = \"high\"\n",
    )
    .unwrap();
    let failed = keel(&["eval", "gate", run, "--gate", strict.to_str().unwrap()], home.path());
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed));
    assert!(
        text(&failed).contains("gate `strict` failed (high risk): benign.latency_p95_ms <= 0"),
        "{}",
        text(&failed)
    );

    let warn_only = home.path().join("warn.toml");
    std::fs::write(
        &warn_only,
        "name = \"warn\"\nfail_at = \"high\"\n[[criteria]]\nrequire = \"benign.latency_p95_ms <= 0\"\nrisk = \"low\"\n",
    )
    .unwrap();
    let warned = keel(&["eval", "gate", run, "--gate", warn_only.to_str().unwrap()], home.path());
    assert_eq!(warned.status.code(), Some(0), "{}", text(&warned));
    assert!(text(&warned).contains("(warnings)"), "{}", text(&warned));

    let typo = home.path().join("typo.toml");
    std::fs::write(&typo, "name = \"typo\"\n[[criteria]]\nrequire = \"jailbreak.blok_rate >= 0.9\"\nrisk = \"high\"\n")
        .unwrap();
    let bad = keel(&["eval", "gate", run, "--gate", typo.to_str().unwrap()], home.path());
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    assert!(text(&bad).contains("typo.toml:3:11: criteria[0].require: unknown metric `blok_rate`"), "{}", text(&bad));
    let missing = keel(&["eval", "gate", "no-such-run", "--gate", "default"], home.path());
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing));

    let verified = keel(&["eval", "verify", run], home.path());
    assert_eq!(verified.status.code(), Some(0), "{}", text(&verified));
    assert!(text(&verified).starts_with("OK: run "), "{}", text(&verified));

    let html = home.path().join("report.html");
    let report = keel(&["eval", "report", run, "--html", html.to_str().unwrap()], home.path());
    assert_eq!(report.status.code(), Some(0), "{}", text(&report));
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.starts_with("<!doctype html>") && page.contains("jailbreak") && !page.contains("http"), "{page}");
    let json = keel(&["eval", "report", run, "--json"], home.path());
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(value["format"], "keel-eval-run/1");
    assert_eq!(value["summary"]["categories"]["all"]["errors"], 0);

    let same = keel(&["eval", "compare", run, run], home.path());
    assert_eq!(same.status.code(), Some(0), "{}", text(&same));

    let original = std::fs::read_to_string(run).unwrap();
    std::fs::write(run, original.replacen("\"decision\": \"block\"", "\"decision\": \"allow\"", 1)).unwrap();
    let edited = keel(&["eval", "verify", run], home.path());
    assert_eq!(edited.status.code(), Some(1), "{}", text(&edited));
    assert!(text(&edited).starts_with("EDITED: run "), "{}", text(&edited));
    let audit = keel(&["audit", "verify"], home.path());
    assert!(audit.status.success(), "the audit chain itself is intact: {}", text(&audit));
}

#[test]
fn suite_errors_name_file_line_and_field_and_exit_2() {
    let home = tempfile::tempdir().unwrap();
    let suite = home.path().join("bad.yaml");
    std::fs::write(
        &suite,
        "name: bad\nversion: '1'\ncases:\n  - id: a\n    prompt: hi\n    expect:\n      regex: '(unclosed'\n",
    )
    .unwrap();
    let out = keel(&["eval", "run", suite.to_str().unwrap(), "--target", "policy", "--policy", "default"], home.path());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("bad.yaml:7: cases[0].expect.regex: invalid regular expression"), "{}", text(&out));
    let list = keel(&["suites", "list"], home.path());
    assert!(list.status.success());
    for name in ["jailbreak", "pii", "over-refusal", "support-qa", "value-shift-recall"] {
        assert!(text(&list).contains(name), "{}", text(&list));
    }
    assert!(!text(&list).contains("invalid"), "{}", text(&list));
}

#[test]
fn value_shift_runs_by_shipped_policy_version() {
    let home = tempfile::tempdir().unwrap();
    for version in ["recall-shift@1.0.0", "recall-shift@1.1.0"] {
        let out = keel(&["eval", "run", "value-shift-recall", "--target", "policy", "--policy", version], home.path());
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(!text(&out).contains("not passing"), "{}", text(&out));
    }
    let wrong = keel(&["eval", "run", "value-shift-recall", "--target", "policy", "--policy", "default"], home.path());
    assert_eq!(wrong.status.code(), Some(2), "{}", text(&wrong));
    assert!(text(&wrong).contains("not default@1.1.0"), "{}", text(&wrong));
}
