//! Admin tokens and the policy lifecycle through the real `keel` binary: the CLI against a
//! SQLite file, and running gateways (port 0, scripted upstream) that pick up changes made
//! by the CLI without a restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use keel_scripted_upstream::{Options, RunningUpstream, Script};

const KEEL: &str = env!("CARGO_BIN_EXE_keel");

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(&self) -> &str {
        assert_eq!(self.code, Some(0), "stdout: {}\nstderr: {}", self.stdout, self.stderr);
        &self.stdout
    }

    fn failed(&self) -> &str {
        assert_ne!(self.code, Some(0), "expected a failure; stdout: {}", self.stdout);
        &self.stderr
    }
}

fn keel(home: &Path, args: &[&str], token: Option<&str>) -> Run {
    let mut command = Command::new(KEEL);
    command.args(args).env("KEEL_HOME", home).env("RUST_LOG", "warn").env_remove("KEEL_TOKEN");
    if let Some(token) = token {
        command.env("KEEL_TOKEN", token);
    }
    let out = command.output().unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The token printed by `keel token create`.
fn token_of(stdout: &str) -> String {
    stdout.lines().find(|l| l.starts_with("keelt_")).unwrap_or_else(|| panic!("no token in: {stdout}")).to_owned()
}

struct Env {
    home: tempfile::TempDir,
    store: String,
}

impl Env {
    fn new() -> Env {
        let home = tempfile::tempdir().unwrap();
        let store = format!("sqlite://{}", home.path().join("keel.db").display());
        Env { home, store }
    }

    fn keel(&self, args: &[&str], token: Option<&str>) -> Run {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--store", &self.store]);
        keel(self.home.path(), &all, token)
    }

    fn create_token(&self, name: &str, role: &str, by: Option<&str>) -> String {
        token_of(self.keel(&["token", "create", "--name", name, "--role", role], by).ok())
    }
}

struct Gateway {
    child: Child,
    base: String,
    client: reqwest::Client,
}

impl Gateway {
    fn start(env: &Env, upstream: &RunningUpstream, extra: &[&str]) -> Gateway {
        let config = env.home.path().join("keel.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\nstore = \"{}\"\n[[upstreams]]\nname = \"scripted\"\nbase_url = \"{}\"\n[lifecycle]\npoll_interval_ms = 100\n",
                env.store,
                upstream.base_url()
            ),
        )
        .unwrap();
        let mut child = Command::new(KEEL)
            .args(["serve", "--config", config.to_str().unwrap()])
            .args(extra)
            .env("KEEL_HOME", env.home.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let base = line.trim().strip_prefix("Keel listening on ").unwrap_or_else(|| panic!("{line}")).to_string();
        Gateway { child, base: base.trim_end_matches("/v1").to_string(), client: reqwest::Client::new() }
    }

    async fn api_status(&self, path: &str, token: &str) -> u16 {
        self.client.get(format!("{}{path}", self.base)).bearer_auth(token).send().await.unwrap().status().as_u16()
    }

    fn stop(mut self) {
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(self.child.wait().unwrap().success());
    }
}

impl Drop for Gateway {
    /// A failing test must not leave its gateway running.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn scripted() -> RunningUpstream {
    keel_scripted_upstream::spawn(SocketAddr::from(([127, 0, 0, 1], 0)), Script::echo(), Options::default())
        .await
        .unwrap()
}

#[test]
fn tokens_bootstrap_then_need_an_admin_token() {
    let env = Env::new();
    // Only an admin token may be the first one, and it needs no token.
    let refused = env.keel(&["token", "create", "--name", "v", "--role", "viewer"], None);
    assert!(refused.failed().contains("no admin token yet"), "{}", refused.stderr);
    let admin = env.create_token("root", "admin", None);

    // From now on creating tokens needs an admin token.
    let without = env.keel(&["token", "create", "--name", "v", "--role", "viewer"], None);
    assert!(without.failed().contains("pass --token TOKEN or set KEEL_TOKEN"), "{}", without.stderr);
    let viewer = env.create_token("vera", "viewer", Some(&admin));
    let by_viewer = env.keel(&["token", "create", "--name", "w", "--role", "viewer"], Some(&viewer));
    assert!(
        by_viewer.failed().contains(
            "the token `vera` (role viewer) may not do this: it needs permission `manage_tokens`, held by role admin"
        ),
        "{}",
        by_viewer.stderr
    );
    let bad_role = env.keel(&["token", "create", "--name", "w", "--role", "root"], Some(&admin));
    assert!(bad_role.failed().contains("unknown role `root`"), "{}", bad_role.stderr);

    let list = env.keel(&["token", "list"], None);
    let table = list.ok();
    assert!(table.lines().any(|l| l.starts_with("root ") && l.contains("admin") && l.contains("bootstrap")), "{table}");
    assert!(table.lines().any(|l| l.starts_with("vera ") && l.contains("viewer") && l.contains(" root ")), "{table}");
    assert!(!table.contains(&admin) && !table.contains(&viewer));

    env.keel(&["token", "revoke", "vera"], Some(&admin)).ok();
    let json: serde_json::Value = serde_json::from_str(env.keel(&["token", "list", "--json"], None).ok()).unwrap();
    assert_eq!(json[1]["revoked_by"], "root");
    let revoked = env.keel(&["token", "create", "--name", "w", "--role", "viewer"], Some(&viewer));
    assert!(revoked.failed().contains("was revoked"), "{}", revoked.stderr);
    let twice = env.keel(&["token", "revoke", "vera"], Some(&admin));
    assert!(twice.failed().contains("already revoked"), "{}", twice.stderr);

    // The database file holds no token, only hashes.
    let bytes = std::fs::read(env.home.path().join("keel.db")).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    for token in [&admin, &viewer] {
        assert!(!text.contains(&token[token.len() - 64..]), "the store holds a token");
    }
    env.keel(&["audit", "verify"], None).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_by_the_cli_stops_working_on_a_running_gateway_within_seconds() {
    let upstream = scripted().await;
    let env = Env::new();
    let admin = env.create_token("root", "admin", None);
    let auditor = env.create_token("audra", "auditor", Some(&admin));
    let gateway = Gateway::start(&env, &upstream, &[]);
    assert_eq!(gateway.api_status("/api/interactions", &auditor).await, 200);
    assert_eq!(gateway.api_status("/api/tokens", &auditor).await, 403);
    assert_eq!(gateway.api_status("/api/interactions", "keelt_0000000000000000_0").await, 401);

    env.keel(&["token", "revoke", "audra"], Some(&admin)).ok();
    let mut status = 200;
    for _ in 0..50 {
        status = gateway.api_status("/api/interactions", &auditor).await;
        if status == 401 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 401, "the revocation reached the running gateway");
    assert_eq!(gateway.api_status("/api/tokens", &admin).await, 200);
    gateway.stop();
    env.keel(&["audit", "verify"], None).ok();
}

const DEFAULT_POLICY: &str = include_str!("../../../policies/default.toml");

/// `text` with its top-level `version` set to `version`.
fn set_version(text: &str, version: &str) -> String {
    let mut done = false;
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            if !done && line.starts_with("version = ") {
                done = true;
                format!("version = \"{version}\"")
            } else {
                line.to_owned()
            }
        })
        .collect();
    lines.join("\n") + "\n"
}

/// The default pack as a new version that escalates refund requests to a human.
fn refunds_version(version: &str) -> String {
    set_version(DEFAULT_POLICY, version)
        + r#"
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
"#
}

/// Records a gate run directly in the store, as the replay and evaluation parts do.
async fn record_gate(env: &Env, policy: &str, passed: bool) {
    let store = keel_store::resolve(&env.store).await.unwrap();
    let (name, version) = policy.split_once('@').unwrap();
    store
        .record_gate_run(keel_store::NewGateRun {
            policy: keel_core::PolicyRef { name: name.into(), version: version.into() },
            kind: keel_store::GateKind::Eval,
            passed,
            summary: serde_json::json!({"suite": "support-smoke", "f1": 0.93}),
            run_sha256: if passed { "c0ffee".repeat(10) + "c0ff" } else { "bad0".repeat(16) },
            actor: "eval-bot".into(),
        })
        .await
        .unwrap();
}

impl Gateway {
    /// Sends a chat request; returns (x-keel-policy, x-keel-decision, interaction id).
    async fn chat(&self, content: &str, user: Option<&str>) -> (String, String, String) {
        let mut request = self
            .client
            .post(format!("{}/v1/chat/completions", self.base))
            .json(&serde_json::json!({"model": "scripted-1", "messages": [{"role": "user", "content": content}]}));
        if let Some(user) = user {
            request = request.header("x-keel-user", user);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        let header = |name: &str| response.headers()[name].to_str().unwrap().to_string();
        (header("x-keel-policy"), header("x-keel-decision"), header("x-keel-interaction-id"))
    }

    /// Waits until requests are judged by `policy` (the gateway polls the store).
    async fn wait_for_policy(&self, policy: &str) -> (String, String, String) {
        for _ in 0..100 {
            let served = self.chat("I want a refund for my blender", None).await;
            if served.0 == policy {
                return served;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the running gateway never switched to {policy}");
    }

    /// The stored interaction, once it is written (shadow judging runs after the answer).
    async fn interaction(&self, id: &str, token: &str) -> serde_json::Value {
        for _ in 0..100 {
            let response = self
                .client
                .get(format!("{}/api/interactions/{id}", self.base))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            if response.status() == 200 {
                return response.json::<serde_json::Value>().await.unwrap()["interaction"].clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("interaction {id} was never stored");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_and_rollback_change_live_decisions_on_a_running_gateway() {
    let upstream = scripted().await;
    let env = Env::new();
    let root = env.create_token("root", "admin", None);
    let alice = env.create_token("alice", "policy_author", Some(&root));
    let bob = env.create_token("bob", "policy_author", Some(&root));
    let gateway = Gateway::start(&env, &upstream, &[]);

    // The first start seeded the built-in pack and activated it.
    assert_eq!(gateway.chat("I want a refund for my blender", None).await.0, "default@1.1.0");
    let listed = env.keel(&["policy", "list"], None);
    assert!(listed
        .ok()
        .lines()
        .any(|l| l.starts_with("default@1.1.0") && l.contains("active") && l.contains("system")));

    // A candidate that does not compile is refused with its file and line.
    let bad = env.home.path().join("bad.toml");
    std::fs::write(&bad, refunds_version("9.0.0").replace("when = \"refund\"", "when = \"refnud\"")).unwrap();
    let refused = env.keel(&["policy", "add", bad.to_str().unwrap()], Some(&alice));
    assert!(
        refused.failed().contains("bad.toml:") && refused.stderr.contains("unknown check `refnud`"),
        "{}",
        refused.stderr
    );

    let file = env.home.path().join("refunds.toml");
    std::fs::write(&file, refunds_version("9.0.0")).unwrap();
    let by_viewer = env.create_token("vic", "viewer", Some(&root));
    assert!(env
        .keel(&["policy", "add", file.to_str().unwrap()], Some(&by_viewer))
        .failed()
        .contains("held by role policy_author or admin"));
    let added = env.keel(&["policy", "add", file.to_str().unwrap()], Some(&alice));
    assert!(added.ok().contains("Added default@9.0.0 as a draft by alice"), "{}", added.stdout);

    let own = env.keel(&["policy", "approve", "default@9.0.0"], Some(&alice));
    assert!(own.failed().contains("approval must come from someone other than its author"), "{}", own.stderr);
    let early = env.keel(&["policy", "promote", "default@9.0.0", "--to", "active"], Some(&bob));
    assert!(early.failed().contains("must be approved first"), "{}", early.stderr);
    env.keel(&["policy", "approve", "default@9.0.0"], Some(&bob)).ok();
    let ungated = env.keel(&["policy", "promote", "default@9.0.0", "--to", "shadow"], Some(&alice));
    assert!(ungated.failed().contains("no passing gate run"), "{}", ungated.stderr);
    let not_admin = env.keel(&["policy", "promote", "default@9.0.0", "--skip-gate", "trust me"], Some(&alice));
    assert!(not_admin.failed().contains("may not skip the gate"), "{}", not_admin.stderr);
    record_gate(&env, "default@9.0.0", false).await;
    assert!(env
        .keel(&["policy", "promote", "default@9.0.0"], Some(&alice))
        .failed()
        .contains("1 recorded run(s) failed"));
    // A real evaluation of exactly the stored text, recorded as its gate run by the CLI.
    let stored_text = env.home.path().join("stored.toml");
    std::fs::write(&stored_text, env.keel(&["policy", "show", "default@9.0.0", "--text"], None).ok()).unwrap();
    let eval =
        env.keel(&["eval", "run", "ci-smoke", "--target", "policy", "--policy", stored_text.to_str().unwrap()], None);
    eval.ok();
    let viewer_gate = env.keel(&["policy", "gate", "default@9.0.0", "--run", "last"], Some(&by_viewer));
    assert!(viewer_gate.failed().contains("needs permission `run_gates`"), "{}", viewer_gate.stderr);
    let wrong = env.home.path().join("other.toml");
    std::fs::write(&wrong, DEFAULT_POLICY).unwrap();
    env.keel(&["eval", "run", "ci-smoke", "--target", "policy", "--policy", wrong.to_str().unwrap()], None).ok();
    let mismatch = env.keel(&["policy", "gate", "default@9.0.0", "--run", "last"], Some(&alice));
    assert!(mismatch.failed().contains("not the stored default@9.0.0"), "{}", mismatch.stderr);
    let runs = std::fs::read_dir(env.home.path().join("runs")).unwrap().count();
    assert_eq!(runs, 2);
    let mut run_files: Vec<_> =
        std::fs::read_dir(env.home.path().join("runs")).unwrap().map(|e| e.unwrap().path()).collect();
    run_files.sort();
    let gated = env.keel(&["policy", "gate", "default@9.0.0", "--run", run_files[0].to_str().unwrap()], Some(&alice));
    assert!(gated.ok().contains("PASSED — gate `default` passed"), "{}", gated.stdout);
    let twice = env.keel(&["policy", "gate", "default@9.0.0", "--run", run_files[0].to_str().unwrap()], Some(&alice));
    assert!(twice.failed().contains("recorded for default@9.0.0 already"), "{}", twice.stderr);

    // Shadow: the served answer and version do not change; the would-be decision is stored.
    env.keel(&["policy", "promote", "default@9.0.0", "--to", "shadow"], Some(&alice)).ok();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (policy, decision, id) = gateway.chat("I want a refund for my blender", None).await;
    assert_eq!((policy.as_str(), decision.as_str()), ("default@1.1.0", "allow"));
    let stored = gateway.interaction(&id, &root).await;
    assert_eq!(stored["decision"], "allow");
    let shadow = stored["shadow"].as_array().unwrap_or_else(|| panic!("no shadow decisions: {stored}"));
    assert_eq!(shadow[0]["policy"], serde_json::json!({"name": "default", "version": "9.0.0"}));
    assert_eq!(
        (shadow[0]["action"].as_str(), shadow[0]["rule"].as_str()),
        (Some("escalate"), Some("escalate-refunds"))
    );
    let show = env.keel(&["policy", "show", "default@9.0.0"], None);
    assert!(show.ok().contains("would have decided otherwise on 1"), "{}", show.stdout);

    // Active: the running gateway switches without a restart; the old version retires.
    env.keel(&["policy", "promote", "default@9.0.0", "--to", "active"], Some(&alice)).ok();
    let (_, decision, id) = gateway.wait_for_policy("default@9.0.0").await;
    assert_eq!(decision, "escalate");
    assert_eq!(gateway.interaction(&id, &root).await["policy"]["version"], "9.0.0");
    let list = env.keel(&["policy", "list", "--json"], None);
    let versions: serde_json::Value = serde_json::from_str(list.ok()).unwrap();
    let status = |v: &str| versions.as_array().unwrap().iter().find(|x| x["version"] == v).unwrap()["status"].clone();
    assert_eq!((status("1.1.0"), status("9.0.0")), (serde_json::json!("retired"), serde_json::json!("active")));

    let diff = env.keel(&["policy", "diff", "default@1.1.0", "default@9.0.0"], None);
    let diff = diff.ok();
    assert!(diff.contains("  + check refund") && diff.contains("  + rule escalate-refunds"), "{diff}");
    assert!(diff.contains("+++ default@9.0.0"), "{diff}");

    // Rollback: one command, live again within the poll interval.
    let rolled = env.keel(&["policy", "rollback", "default"], Some(&bob));
    assert!(rolled.ok().contains("default@9.0.0 retired, default@1.1.0 active again"), "{}", rolled.stdout);
    let (_, decision, _) = gateway.wait_for_policy("default@1.1.0").await;
    assert_eq!(decision, "allow");
    gateway.stop();

    let verify = env.keel(&["audit", "verify"], None);
    assert!(verify.ok().starts_with("OK: "), "{}", verify.stdout);
    let export = env.keel(&["audit", "export"], None);
    let actions: Vec<(String, String)> = export
        .ok()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|r| (r["actor"].as_str().unwrap().to_owned(), r["action"].as_str().unwrap().to_owned()))
        .filter(|(_, action)| action.starts_with("policy.") || action.starts_with("gate."))
        .collect();
    let want: Vec<(String, String)> = [
        ("system", "policy.seeded"),
        ("system", "policy.loaded"),
        ("alice", "policy.added"),
        ("bob", "policy.approved"),
        ("eval-bot", "gate.recorded"),
        ("alice", "gate.recorded"),
        ("alice", "policy.promoted"),
        ("system", "policy.loaded"),
        ("alice", "policy.promoted"),
        ("system", "policy.loaded"),
        ("bob", "policy.rolled_back"),
        ("system", "policy.loaded"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(actions, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_decides_a_sticky_share_of_users_on_a_running_gateway() {
    let upstream = scripted().await;
    let env = Env::new();
    let root = env.create_token("root", "admin", None);
    let gateway = Gateway::start(&env, &upstream, &[]);
    let file = env.home.path().join("refunds.toml");
    std::fs::write(&file, refunds_version("2.0.0")).unwrap();
    let author = env.create_token("alice", "policy_author", Some(&root));
    env.keel(&["policy", "add", file.to_str().unwrap()], Some(&author)).ok();
    env.keel(&["policy", "approve", "default@2.0.0"], Some(&root)).ok();
    record_gate(&env, "default@2.0.0", true).await;
    let bad_share = env.keel(&["policy", "promote", "default@2.0.0", "--to", "canary", "--share", "1.5"], Some(&root));
    assert!(bad_share.failed().contains("strictly between 0 and 1"), "{}", bad_share.stderr);
    env.keel(&["policy", "promote", "default@2.0.0", "--to", "canary", "--share", "0.3"], Some(&root)).ok();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let canary = keel_core::PolicyRef { name: "default".into(), version: "2.0.0".into() };
    let mut in_canary = 0;
    for i in 0..40 {
        let user = format!("customer-{i}");
        let expected =
            if keel_gateway::rollout::canary_point(&user, &canary) < 0.3 { "default@2.0.0" } else { "default@1.1.0" };
        for _ in 0..2 {
            let (policy, decision, _) = gateway.chat("I want a refund", Some(&user)).await;
            assert_eq!(policy, expected, "user {user} is sticky to one version");
            assert_eq!(decision, if policy == "default@2.0.0" { "escalate" } else { "allow" });
        }
        in_canary += usize::from(expected == "default@2.0.0");
    }
    // 40 users at 30%: a binomial(40, 0.3) stays within 4 standard deviations (±11.6).
    assert!((1..=23).contains(&in_canary), "{in_canary} of 40 users in the canary");

    // Rollback withdraws the canary: every user is back on the active version.
    env.keel(&["policy", "rollback", "default"], Some(&root)).failed();
    env.keel(&["policy", "withdraw", "default@2.0.0"], Some(&root)).ok();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..10 {
        assert_eq!(gateway.chat("I want a refund", Some(&format!("customer-{i}"))).await.0, "default@1.1.0");
    }
    gateway.stop();
    env.keel(&["audit", "verify"], None).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_follow_the_policy_name_they_are_bound_to() {
    use sha2::Digest;
    let upstream = scripted().await;
    let env = Env::new();
    let hash = |key: &str| hex::encode(sha2::Sha256::digest(key.as_bytes()));
    let config = env.home.path().join("keel.toml");
    let text = format!(
        "listen = \"127.0.0.1:0\"\nstore = \"{}\"\n\n[[upstreams]]\nname = \"scripted\"\nbase_url = \"{}\"\n\n\
         [[keys]]\nname = \"shop-bot\"\napp = \"shop\"\nsha256 = \"{}\"\n\n[[keys]]\nname = \"support-bot\"\napp = \"support\"\nsha256 = \"{}\"\n\n\
         [apps.shop]\npolicy = \"shop\"\n\n[lifecycle]\npoll_interval_ms = 100\n",
        env.store,
        upstream.base_url(),
        hash("shop-key"),
        hash("support-key")
    );
    std::fs::write(&config, text).unwrap();
    let serve = |home: &Path| {
        Command::new(KEEL)
            .args(["serve", "--config", config.to_str().unwrap()])
            .env("KEEL_HOME", home)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let refused = serve(env.home.path());
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains("keel.toml:19:10: apps.shop.policy: no version of policy `shop` is active in the store"),
        "{message}"
    );

    let root = env.create_token("root", "admin", None);
    let file = env.home.path().join("shop.toml");
    std::fs::write(&file, DEFAULT_POLICY.replacen("name = \"default\"", "name = \"shop\"", 1)).unwrap();
    let author = env.create_token("sam", "policy_author", Some(&root));
    env.keel(&["policy", "add", file.to_str().unwrap()], Some(&author)).ok();
    env.keel(&["policy", "approve", "shop@1.1.0"], Some(&root)).ok();
    env.keel(
        &["policy", "promote", "shop@1.1.0", "--to", "active", "--skip-gate", "first version of a new policy"],
        Some(&root),
    )
    .ok();

    let mut child = Command::new(KEEL)
        .args(["serve", "--config", config.to_str().unwrap()])
        .env("KEEL_HOME", env.home.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let base = line.trim().strip_prefix("Keel listening on ").unwrap().trim_end_matches("/v1").to_string();
    let gateway = Gateway { child, base, client: reqwest::Client::new() };
    let served = |key: &'static str| {
        let client = gateway.client.clone();
        let url = format!("{}/v1/chat/completions", gateway.base);
        async move {
            let body = serde_json::json!({"model": "scripted-1", "messages": [{"role": "user", "content": "hi"}]});
            let response = client.post(url).bearer_auth(key).json(&body).send().await.unwrap();
            response.headers()["x-keel-policy"].to_str().unwrap().to_string()
        }
    };
    assert_eq!(served("shop-key").await, "shop@1.1.0");
    assert_eq!(served("support-key").await, "default@1.1.0");
    gateway.stop();
}
