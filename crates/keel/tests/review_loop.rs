//! The whole loop through the real `keel` binary: traffic on a running gateway (port 0,
//! scripted upstream) opens review cases → reviewers label them with `keel review` →
//! `keel policy candidate --from-review` → `keel policy add` → `keel policy replay` passes
//! and is recorded as the gate run → a second person approves → shadow → active → the same
//! request gets the new decision live, without a restart → `keel audit verify` passes.
//!
//! Needs MiniLM for the memory check (skipped, with the reason printed, when not pulled).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use keel_scripted_upstream::{Options, Script};
use serde_json::Value;

const KEEL: &str = env!("CARGO_BIN_EXE_keel");

/// The base version: the default pack, plus a flag on every mention of the XR-200 so reviewers
/// see those requests.
const BASE: &str = r#"extends = "default"
name = "support"
version = "1.0.0"

[[checks]]
name = "xr_mention"
kind = "keywords"
phase = "input"
words = ["XR-200"]

[[rules]]
name = "flag-xr-mentions"
priority = 40
phase = "input"
when = "xr_mention"
action = "flag"
"#;

const PURCHASES: [&str; 4] = [
    "I want to buy an XR-200 blender.",
    "Where can I order the XR-200?",
    "Please sell me an XR-200 blender today.",
    "How much does the XR-200 cost? I'd like to purchase one.",
];

const BENIGN: [&str; 4] = [
    "What are your opening hours?",
    "How do I clean my blender jar?",
    "Can I change the delivery address of my order?",
    "Do you ship to Osaka?",
];

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

struct Cli {
    home: tempfile::TempDir,
    models: PathBuf,
    store: String,
}

impl Cli {
    /// Runs keel; returns (success, stdout, stderr).
    fn run(&self, args: &[&str], token: Option<&str>) -> (bool, String, String) {
        let mut command = Command::new(KEEL);
        command
            .args(args)
            .env("KEEL_HOME", self.home.path())
            .env("KEEL_MODELS_DIR", &self.models)
            .env("RUST_LOG", "warn")
            .env_remove("KEEL_TOKEN")
            .env_remove("KEEL_URL");
        if let Some(token) = token {
            command.env("KEEL_TOKEN", token);
        }
        let out = command.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str], token: Option<&str>) -> String {
        let (ok, stdout, stderr) = self.run(args, token);
        assert!(ok, "keel {args:?} failed\nstdout: {stdout}\nstderr: {stderr}");
        stdout
    }

    /// A command that takes `--store`.
    fn on_store(&self, args: &[&str], token: Option<&str>) -> String {
        let mut all = args.to_vec();
        all.extend(["--store", &self.store]);
        self.ok(&all, token)
    }

    fn token(&self, name: &str, role: &str, by: Option<&str>) -> String {
        let out = self.on_store(&["token", "create", "--name", name, "--role", role], by);
        out.lines().find(|l| l.starts_with("keelt_")).unwrap().to_owned()
    }

    fn path(&self, name: &str) -> String {
        self.home.path().join(name).display().to_string()
    }
}

struct Gateway {
    child: Child,
    base: String,
}

impl Gateway {
    fn start(cli: &Cli, config: &Path) -> Gateway {
        let mut child = Command::new(KEEL)
            .args(["serve", "--config", config.to_str().unwrap()])
            .env("KEEL_HOME", cli.home.path())
            .env("KEEL_MODELS_DIR", &cli.models)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let base = line.trim().strip_prefix("Keel listening on ").unwrap_or_else(|| panic!("{line}")).to_string();
        Gateway { child, base: base.trim_end_matches("/v1").to_string() }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn chat(client: &reqwest::Client, base: &str, content: &str) -> (String, String) {
    let response = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&serde_json::json!({"model": "scripted-1", "messages": [{"role": "user", "content": content}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let header = |name: &str| response.headers()[name].to_str().unwrap().to_string();
    (header("x-keel-policy"), header("x-keel-decision"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_become_a_gated_approved_policy_that_changes_live_decisions() {
    let Some(models) = models_dir() else { return };
    let upstream =
        keel_scripted_upstream::spawn(SocketAddr::from(([127, 0, 0, 1], 0)), Script::echo(), Options::default())
            .await
            .unwrap();
    let home = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", home.path().join("keel.db").display());
    let cli = Cli { home, models, store };
    let root = cli.token("root", "admin", None);
    let alice = cli.token("alice", "policy_author", Some(&root));
    let bob = cli.token("bob", "policy_author", Some(&root));
    let rita = cli.token("rita", "reviewer", Some(&root));
    let vera = cli.token("vera", "viewer", Some(&root));

    let base_file = cli.path("support.toml");
    std::fs::write(&base_file, BASE).unwrap();
    let config = cli.home.path().join("keel.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nstore = \"{}\"\npolicy = \"{base_file}\"\n[[upstreams]]\nname = \"scripted\"\nbase_url = \"{}\"\n[lifecycle]\npoll_interval_ms = 100\n[review]\nsample_rate = 1.0\nsecond_review_share = 0.0\n",
            cli.store,
            upstream.base_url()
        ),
    )
    .unwrap();
    let gateway = Gateway::start(&cli, &config);
    let client = reqwest::Client::new();

    // Traffic: XR-200 purchase requests are flagged; the rest is allowed and sampled (rate 1).
    for text in PURCHASES {
        assert_eq!(chat(&client, &gateway.base, text).await, ("support@1.0.0".into(), "flag".into()));
    }
    for text in BENIGN {
        assert_eq!(chat(&client, &gateway.base, text).await.1, "allow");
    }

    // Reviewers work the queue through the API; a viewer may not.
    let url = gateway.base.as_str();
    let (ok, _, stderr) = cli.run(&["review", "next", "--url", url], Some(&vera));
    assert!(!ok && stderr.contains("HTTP 403"), "{stderr}");
    let mut labelled = 0;
    for _ in 0..50 {
        let next: Value =
            serde_json::from_str(&cli.ok(&["review", "next", "--url", url, "--json"], Some(&rita))).unwrap();
        if next["case"].is_null() {
            break;
        }
        let id = next["case"]["id"].to_string();
        let request = next["interaction"]["request"]["text"].as_str().unwrap();
        let args: Vec<&str> = if request.contains("XR-200") {
            vec!["review", "label", &id, "--url", url, "--label", "violation", "--category", "product_recall"]
        } else {
            vec!["review", "label", &id, "--url", url, "--label", "ok"]
        };
        cli.ok(&args, Some(&rita));
        labelled += 1;
    }
    assert_eq!(labelled, PURCHASES.len() + BENIGN.len(), "flagged and sampled traffic became cases");
    let listed = cli.ok(&["review", "list", "--url", url, "--status", "labelled"], Some(&vera));
    assert_eq!(listed.lines().count(), labelled, "{listed}");
    assert!(listed.lines().all(|l| l.contains("by rita")), "{listed}");
    let agreement = cli.ok(&["review", "agreement", "--url", url], Some(&vera));
    assert!(agreement.starts_with("0 double-labelled cases"), "{agreement}");

    // The labelled cases as datasets: an eval suite that `keel eval run` accepts.
    let suite = cli.path("review-cases.jsonl");
    let out = cli.on_store(&["export", "cases", "--out", &suite], None);
    assert!(out.contains(&format!("{labelled} records written")), "{out}");
    let run = cli.ok(&["eval", "run", &suite, "--target", "policy", "--policy", &base_file, "--json"], None);
    let run: Value = serde_json::from_str(&run).unwrap();
    assert_eq!(run["results"].as_array().unwrap().len(), 8);
    let recall = &run["summary"]["categories"]["product_recall"];
    assert_eq!(
        (recall["trials"].as_u64(), recall["passed"].as_u64()),
        (Some(4), Some(0)),
        "the base misses the new norm"
    );
    assert_eq!(run["summary"]["categories"]["ok"]["passed"], 4);
    let sft = cli.on_store(&["export", "sft"], None);
    assert!(sft.is_empty(), "no wrong answers or over-refusals were labelled: {sft}");

    // Labels → a candidate → a stored draft.
    let candidate_file = cli.path("candidate.toml");
    let out = cli.on_store(
        &["policy", "candidate", "--from-review", "--base", &base_file, "-o", &candidate_file, "--action", "block"],
        None,
    );
    assert!(out.contains("wrote candidate support@1.0.0-mem.1"), "{out}");
    let labels = std::fs::read_to_string(format!("{candidate_file}.labels.jsonl")).unwrap();
    assert_eq!(labels.lines().count(), labelled);
    cli.on_store(&["policy", "add", &candidate_file], Some(&alice));
    let run = cli.ok(&["eval", "run", &suite, "--target", "policy", "--policy", &candidate_file, "--json"], None);
    let run: Value = serde_json::from_str(&run).unwrap();
    assert_eq!(run["summary"]["categories"]["all"]["passed"], 8, "the candidate meets every exported case");

    // Replay against the active version: recorded as the candidate's gate run.
    let gate = cli.path("gate.toml");
    std::fs::write(&gate, "f1_drop_max = 0.0\nover_refusal_max = 0.0\nmin_labelled = 8\n").unwrap();
    let out = cli.on_store(
        &["policy", "replay", "--candidate", "support@1.0.0-mem.1", "--since", "1d", "--gate", &gate, "--json"],
        Some(&alice),
    );
    let replay: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(replay["report"]["passed"], true, "{out}");
    assert_eq!(replay["report"]["labelled"], 8);
    assert_eq!(replay["report"]["candidate"]["tp"], 4, "{out}");
    assert_eq!(replay["report"]["candidate"]["fp"], 0, "{out}");
    assert_eq!(replay["gate_run"]["kind"], "replay");

    // A second person approves; shadow, then active, take effect on the running gateway.
    cli.on_store(&["policy", "approve", "support@1.0.0-mem.1"], Some(&bob));
    cli.on_store(&["policy", "promote", "support@1.0.0-mem.1", "--to", "shadow"], Some(&alice));
    cli.on_store(&["policy", "promote", "support@1.0.0-mem.1", "--to", "active"], Some(&alice));
    let mut served = (String::new(), String::new());
    for _ in 0..100 {
        served = chat(&client, &gateway.base, PURCHASES[0]).await;
        if served.0 == "support@1.0.0-mem.1" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(served, ("support@1.0.0-mem.1".into(), "block".into()), "the same request, decided anew");
    assert_eq!(chat(&client, &gateway.base, BENIGN[0]).await.1, "allow");

    // That repeat was sampled too; a case nobody needs to label leaves the queue by `close`.
    let mut open = Value::Null;
    for _ in 0..100 {
        open =
            serde_json::from_str(&cli.ok(&["review", "list", "--url", url, "--status", "open", "--json"], Some(&rita)))
                .unwrap();
        if open["data"].as_array().is_some_and(|cases| !cases.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let id = open["data"][0]["id"].to_string();
    let closed =
        cli.ok(&["review", "close", &id, "--url", url, "--reason", "a repeat of a reviewed question"], Some(&rita));
    assert!(closed.starts_with("closed: ") && closed.contains(" closed "), "{closed}");
    let (ok, _, stderr) = cli.run(&["review", "close", &id, "--url", url, "--reason", "again"], Some(&rita));
    assert!(!ok && stderr.contains("HTTP 409"), "a closed case cannot be closed again: {stderr}");

    drop(gateway);
    let verify = cli.on_store(&["audit", "verify"], None);
    assert!(verify.to_lowercase().contains("ok"), "{verify}");
}
