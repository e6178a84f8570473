//! The real `keel` binary: policy checks, the demo, audit verification against tampering,
//! config errors, and a clean shutdown that loses no acknowledged interaction.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keel_scripted_upstream::{Options, Script};
use sqlx::Connection;

const KEEL: &str = env!("CARGO_BIN_EXE_keel");

fn keel(args: &[&str], home: &Path) -> std::process::Output {
    Command::new(KEEL).args(args).env("KEEL_HOME", home).env("RUST_LOG", "warn").output().unwrap()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn repo_file(path: &str) -> String {
    format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn policy_check_summarises_a_good_file_and_locates_errors() {
    let home = tempfile::tempdir().unwrap();
    let ok = keel(&["policy", "check", &repo_file("policies/default.toml")], home.path());
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(stdout(&ok).contains("policy default@1.1.0"));
    assert!(stdout(&ok).contains("block-injection"));

    let bad = home.path().join("bad.toml");
    std::fs::write(&bad, "name = \"x\"\nversion = \"1\"\n[messages]\nblock = { en = \"no\" }\nescalate = { en = \"h\" }\n[[rules]]\nname = \"r\"\nwhen = \"pii.hit\"\naction = \"block\"\n").unwrap();
    let out = keel(&["policy", "check", bad.to_str().unwrap()], home.path());
    assert!(!out.status.success());
    let message = stderr(&out);
    assert!(message.contains("bad.toml:8:8: rules[0].when: unknown check `pii`"), "{message}");
}

#[test]
fn config_errors_refuse_to_start_naming_the_line() {
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("keel.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\n\n[[upstreams]]\nname = \"a\"\nbase_url = \"http://127.0.0.1:9/v1\"\ntimeout = 5\n",
    )
    .unwrap();
    let out = keel(&["serve", "--config", config.to_str().unwrap()], home.path());
    assert!(!out.status.success());
    assert!(stderr(&out).contains("keel.toml:6:1: unknown field `timeout`"), "{}", stderr(&out));
}

#[test]
fn config_example_is_valid() {
    let home = tempfile::tempdir().unwrap();
    let out = keel(&["config", "example"], home.path());
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(text.contains("[[upstreams]]"));
    let value: toml::Value = toml::from_str(&text).unwrap();
    assert_eq!(value["keys"][0]["app"].as_str(), Some("support"));
}

#[test]
fn keys_new_prints_a_key_and_its_hash() {
    let home = tempfile::tempdir().unwrap();
    let out = stdout(&keel(&["keys", "new", "--name", "bot", "--app", "support"], home.path()));
    let key = out.split("once; give it to the client): ").nth(1).unwrap().lines().next().unwrap();
    let hash = out.split("sha256 = \"").nth(1).unwrap().split('"').next().unwrap();
    use sha2::Digest;
    assert_eq!(hex::encode(sha2::Sha256::digest(key.as_bytes())), hash);
}

/// Edits the database behind Keel's back, as an attacker with file access could: the
/// append-only triggers stop mistakes, not a determined editor, so they go first.
async fn tamper(db: &Path, sql: &str) {
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display())).await.unwrap();
    for statement in
        ["DROP TRIGGER audit_log_no_update", "DROP TRIGGER audit_log_no_delete"].into_iter().chain(sql.split("; "))
    {
        sqlx::query(statement).execute(&mut conn).await.unwrap();
    }
    conn.close().await.unwrap();
}

#[tokio::test]
async fn demo_decides_explains_and_leaves_a_verifiable_chain_that_detects_tampering() {
    let home = tempfile::tempdir().unwrap();
    let db = home.path().join("demo.db");
    let store = format!("sqlite://{}", db.display());
    let out = keel(&["demo", "--scripted", "--exit", "--listen", "127.0.0.1:0", "--store", &store], home.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for expected in [
        "→ redact",
        "→ block",
        "→ escalate",
        "rule `block-injection` matched",
        "credit_card",
        "[PHONE]",
        "\"status\":\"ok\"",
        "b. approval by its author → HTTP 403",
        "c. promotion to shadow without a gate run → HTTP 409",
        "shadow report: judged 3, would have decided otherwise on 2",
        "x-keel-policy default@1.1.0 → default@1.1.0-demo.",
        "the refund request: redact → escalate",
        ", x-keel-policy default@1.1.0-demo.",
        "(satisfaction 2) → review case ",
        "a happy customer: satisfaction 5, thumbs up (no case)",
        "(wrong_answer_report, priority 100, due ",
        "\"How long is the warranty on the KN-8 knife?\" → wrong_answer (labelled",
        "wrong answers: user reports ",
    ] {
        assert!(text.contains(expected), "demo output lacks {expected:?}:\n{text}");
    }
    // Three settled reviews (a drawn second review is given by a second reviewer), one of them
    // a wrong answer: the reviewers' rate is shown apart from the users' reports.
    assert!(text.contains("reviewer labels 33% [6–79%] of 3"), "the reviewer's labels reach the KPIs:\n{text}");
    let verify = keel(&["audit", "verify", "--store", &store], home.path());
    assert!(verify.status.success(), "{}", stdout(&verify));
    assert!(stdout(&verify).starts_with("OK: "));

    let export = keel(&["audit", "export", "--store", &store], home.path());
    let lines: Vec<serde_json::Value> = stdout(&export).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines.len() >= 8);
    assert!(lines.iter().any(|r| r["action"] == "policy.loaded"));

    // Change one payload: verify fails naming that record.
    tamper(&db, "UPDATE audit_log SET payload = payload || ' ' WHERE seq = 5").await;
    let broken = keel(&["audit", "verify", "--store", &store], home.path());
    assert_eq!(broken.status.code(), Some(2));
    assert!(stdout(&broken).starts_with("BROKEN at seq 5"), "{}", stdout(&broken));
}

#[tokio::test]
async fn audit_verify_detects_deleted_and_swapped_records() {
    for (sql, seq) in [
        ("DELETE FROM audit_log WHERE seq = 4", 4),
        ("UPDATE audit_log SET seq = CASE seq WHEN 3 THEN -6 WHEN 6 THEN -3 END WHERE seq IN (3, 6); UPDATE audit_log SET seq = -seq WHERE seq < 0", 3),
    ] {
        let home = tempfile::tempdir().unwrap();
        let db = home.path().join("demo.db");
        let store = format!("sqlite://{}", db.display());
        assert!(keel(&["demo", "--scripted", "--exit", "--listen", "127.0.0.1:0", "--store", &store], home.path()).status.success());
        tamper(&db, sql).await;
        let out = keel(&["audit", "verify", "--store", &store], home.path());
        assert_eq!(out.status.code(), Some(2), "{sql}");
        assert!(stdout(&out).starts_with(&format!("BROKEN at seq {seq}")), "{sql}: {}", stdout(&out));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_every_acknowledged_interaction() {
    let upstream = keel_scripted_upstream::spawn(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        Script::echo(),
        Options { record: false, ..Options::default() },
    )
    .await
    .unwrap();
    let home = tempfile::tempdir().unwrap();
    let db = home.path().join("keel.db");
    let store = format!("sqlite://{}", db.display());
    let mut child = Command::new(KEEL)
        .args(["serve", "--listen", "127.0.0.1:0", "--upstream", &upstream.base_url(), "--store", &store])
        .env("KEEL_HOME", home.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let base = line.trim().strip_prefix("Keel listening on ").unwrap().to_string();

    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for i in 0..300 {
        let client = client.clone();
        let url = format!("{base}/chat/completions");
        tasks.push(tokio::spawn(async move {
            let body = serde_json::json!({"model": "scripted-1", "messages": [{"role": "user", "content": format!("message {i}")}]});
            client.post(url).json(&body).send().await.unwrap().status()
        }));
    }
    let mut acknowledged = 0;
    for t in tasks {
        if t.await.unwrap() == 200 {
            acknowledged += 1;
        }
    }
    assert_eq!(acknowledged, 300);
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "keel did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
    let mut conn = sqlx::SqliteConnection::connect(&store).await.unwrap();
    let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM interactions").fetch_one(&mut conn).await.unwrap();
    assert_eq!(count, 300);
    let verify = keel(&["audit", "verify", "--store", &store], home.path());
    assert!(verify.status.success(), "{}", stdout(&verify));
}

/// Kills the child process if the test fails before stopping it.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// SIGHUP reads the policy file again. The store is the truth of what is in force, so a
/// valid new version is stored as a draft and goes into force only when promoted (here by an
/// admin overriding the gate); a bad file is refused and audited, and nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_registers_a_new_policy_version_and_refuses_a_bad_file() {
    let upstream =
        keel_scripted_upstream::spawn(SocketAddr::from(([127, 0, 0, 1], 0)), Script::echo(), Options::default())
            .await
            .unwrap();
    let home = tempfile::tempdir().unwrap();
    let policy = home.path().join("policy.toml");
    let original = std::fs::read_to_string(repo_file("policies/default.toml")).unwrap();
    std::fs::write(&policy, &original).unwrap();
    let store = format!("sqlite://{}", home.path().join("keel.db").display());
    let mut child = Command::new(KEEL)
        .args(["serve", "--listen", "127.0.0.1:0", "--upstream", &upstream.base_url(), "--store", &store])
        .args(["--policy", policy.to_str().unwrap()])
        .env("KEEL_HOME", home.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let child = KillOnDrop(child);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let base = line.trim().strip_prefix("Keel listening on ").unwrap().to_string();
    let client = reqwest::Client::new();
    let policy_header = || {
        let client = client.clone();
        let url = format!("{base}/chat/completions");
        async move {
            let body = serde_json::json!({"model": "scripted-1", "messages": [{"role": "user", "content": "hi"}]});
            let response = client.post(url).json(&body).send().await.unwrap();
            response.headers()["x-keel-policy"].to_str().unwrap().to_string()
        }
    };
    let hup = |pid: u32| Command::new("kill").args(["-HUP", &pid.to_string()]).status().unwrap();
    let wait_for = |want: &'static str| async move {
        for _ in 0..100 {
            if policy_header().await == want {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    };
    assert_eq!(policy_header().await, "default@1.1.0");

    std::fs::write(&policy, original.replace("when = \"injection.score >= 0.8\"", "when = \"injection.scor >= 0.8\""))
        .unwrap();
    hup(child.0.id());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(policy_header().await, "default@1.1.0", "a bad file leaves the running policy in force");

    std::fs::write(&policy, original.replace("version = \"1.1.0\"", "version = \"1.2.0\"")).unwrap();
    hup(child.0.id());
    let mut registered = false;
    for _ in 0..100 {
        let list = stdout(&keel(&["policy", "list", "--store", &store], home.path()));
        if list.lines().any(|l| l.starts_with("default@1.2.0") && l.contains("draft") && l.contains("system")) {
            registered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(registered, "the new version of the file is stored as a draft");
    assert_eq!(policy_header().await, "default@1.1.0", "a draft is not in force");

    // Promotion puts it in force on the running gateway, without a restart.
    let created =
        stdout(&keel(&["token", "create", "--name", "root", "--role", "admin", "--store", &store], home.path()));
    let token = created.lines().find(|l| l.starts_with("keelt_")).unwrap().to_owned();
    let with_token = |args: &[&str]| {
        let out = Command::new(KEEL)
            .args(args)
            .args(["--store", &store, "--token", &token])
            .env("KEEL_HOME", home.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    };
    with_token(&["policy", "approve", "default@1.2.0"]);
    with_token(&["policy", "promote", "default@1.2.0", "--to", "active", "--skip-gate", "reviewed by hand"]);
    assert!(wait_for("default@1.2.0").await, "the promoted version is in force without a restart");

    Command::new("kill").args(["-TERM", &child.0.id().to_string()]).status().unwrap();
    let mut child = child;
    assert!(child.0.wait().unwrap().success());
    let export = keel(&["audit", "export", "--store", &store], home.path());
    let actions: Vec<String> = stdout(&export)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["action"].as_str().unwrap().to_string())
        .collect();
    assert!(actions.contains(&"policy.reload_refused".to_string()), "{actions:?}");
    let count = |action: &str| actions.iter().filter(|a| *a == action).count();
    assert_eq!(
        (count("policy.seeded"), count("policy.added"), count("policy.gate_overridden")),
        (1, 1, 1),
        "{actions:?}"
    );
}
