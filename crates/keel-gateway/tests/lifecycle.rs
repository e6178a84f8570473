//! The policy lifecycle on a running gateway (real HTTP server on a loopback port, scripted
//! upstream, SQLite store): what a shadow version would decide is recorded and never served,
//! promotions over `/api/policies` take effect on the next request, apps follow the policy
//! name they are bound to, and a version that cannot load never replaces what runs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use keel_core::{Action, Phase, PolicyRef, Role};
use keel_gateway::{
    key_hash, AppState, Bindings, ClientKey, GatewaySettings, PlainCompiler, UpstreamConfig, Upstreams,
};
use keel_policy::Policy;
use keel_scripted_upstream::{Options, Reply, RunningUpstream, Script};
use keel_store::{GateKind, NewGateRun, NewPolicyVersion, PolicyStatus, Promotion, Store, Writer, WriterConfig};
use serde_json::{json, Value};

const DEFAULT_POLICY: &str = include_str!("../../../policies/default.toml");
const MODEL: &str = "scripted-1";
const SHOP_KEY: &str = "shop-key-1";
const SUPPORT_KEY: &str = "support-key-1";

/// The default pack as `name@version`, plus extra TOML.
fn text(name: &str, version: &str, extra: &str) -> String {
    renamed(DEFAULT_POLICY, name, version) + extra
}

/// `text` with its top-level `name` and `version` set.
fn renamed(text: &str, name: &str, version: &str) -> String {
    let (mut named, mut versioned) = (false, false);
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            if !named && line.starts_with("name = ") {
                named = true;
                format!("name = \"{name}\"")
            } else if !versioned && line.starts_with("version = ") {
                versioned = true;
                format!("version = \"{version}\"")
            } else {
                line.to_owned()
            }
        })
        .collect();
    lines.join("\n") + "\n"
}

/// Escalates refund requests; blocks answers that mention the XR-200.
const STRICTER: &str = r#"
[[checks]]
name = "refund"
kind = "keywords"
phase = "input"
words = ["refund"]

[[checks]]
name = "recalled_product"
kind = "keywords"
phase = "output"
words = ["XR-200"]

[[rules]]
name = "escalate-refunds"
priority = 5
phase = "input"
when = "refund"
action = "escalate"

[[rules]]
name = "block-recalled-product"
priority = 5
phase = "output"
when = "recalled_product"
action = "block"
"#;

struct Harness {
    base: String,
    state: AppState,
    store: Arc<dyn Store>,
    client: reqwest::Client,
    admin: String,
    author: String,
    approver: String,
    _upstream: RunningUpstream,
    _dir: tempfile::TempDir,
}

async fn seed(store: &dyn Store, name: &str) {
    let new = NewPolicyVersion {
        name: name.into(),
        version: "1.0.0".into(),
        source_text: text(name, "1.0.0", ""),
        parent_version: None,
        origin: "test".into(),
    };
    store.seed_policy_version(new, "system").await.unwrap();
}

async fn start() -> Harness {
    let script = Script::echo().on("blender", Reply::Text("The XR-200 blender has a two-year warranty.".into()));
    let upstream = keel_scripted_upstream::spawn(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        script,
        Options { chunk_chars: 4, ..Options::default() },
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = keel_store::resolve(&format!("sqlite://{}", dir.path().join("keel.db").display())).await.unwrap();
    seed(store.as_ref(), "default").await;
    seed(store.as_ref(), "shop").await;
    let (writer, _task) = Writer::spawn(store.clone(), WriterConfig::default());
    let upstreams = Upstreams::new(vec![UpstreamConfig {
        name: "scripted".into(),
        base_url: upstream.base_url(),
        api_key: None,
        models: vec![MODEL.into()],
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(5),
        max_retries: 0,
    }])
    .unwrap();
    let keys = vec![
        ClientKey { name: "shop-bot".into(), app: "shop".into(), sha256: key_hash(SHOP_KEY), admin: false },
        ClientKey { name: "support-bot".into(), app: "support".into(), sha256: key_hash(SUPPORT_KEY), admin: false },
    ];
    let settings = GatewaySettings {
        keys,
        privacy: Default::default(),
        default_privacy: Default::default(),
        max_body_bytes: 1 << 16,
        review_lock: keel_store::review::DEFAULT_LOCK,
        review: keel_store::CaseIntake::default(),
    };
    let file_policy = Policy::parse("default.toml", DEFAULT_POLICY).unwrap();
    let state = AppState::new(settings, Arc::new(file_policy), upstreams, store.clone(), writer);
    let bindings = Bindings { default_name: "default".into(), apps: HashMap::from([("shop".into(), "shop".into())]) };
    state.manage_policies(Arc::new(PlainCompiler), bindings).await.unwrap();
    let admin = store.create_token("root", Role::Admin, "bootstrap").await.unwrap().token;
    let author = store.create_token("alice", Role::PolicyAuthor, "root").await.unwrap().token;
    let approver = store.create_token("bob", Role::PolicyAuthor, "root").await.unwrap().token;
    state.refresh().await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = keel_gateway::router(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Harness {
        base: format!("http://{addr}"),
        state,
        store,
        client: reqwest::Client::new(),
        admin,
        author,
        approver,
        _upstream: upstream,
        _dir: dir,
    }
}

struct Served {
    policy: String,
    decision: String,
    id: String,
    answer: String,
}

impl Harness {
    async fn chat(&self, key: &str, content: &str, stream: bool) -> Served {
        let response = self
            .client
            .post(format!("{}/v1/chat/completions", self.base))
            .bearer_auth(key)
            .json(&json!({"model": MODEL, "stream": stream, "messages": [{"role": "user", "content": content}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let header = |name: &str| response.headers()[name].to_str().unwrap().to_string();
        let (policy, decision, id) =
            (header("x-keel-policy"), header("x-keel-decision"), header("x-keel-interaction-id"));
        let body = response.text().await.unwrap();
        let answer = if stream {
            body.lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .filter_map(|d| serde_json::from_str::<Value>(d).ok())
                .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_string))
                .collect()
        } else {
            serde_json::from_str::<Value>(&body).unwrap()["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_string()
        };
        Served { policy, decision, id, answer }
    }

    async fn api(&self, method: reqwest::Method, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.base)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn stored(&self, id: &str) -> keel_core::Interaction {
        self.state.tasks().close();
        self.state.tasks().wait().await;
        self.state.tasks().reopen();
        self.state.writer().flush().await.unwrap();
        self.store.get_interaction(id.parse().unwrap()).await.unwrap().expect("stored")
    }

    async fn gate(&self, policy: &str) {
        let (name, version) = policy.split_once('@').unwrap();
        let run = NewGateRun {
            policy: PolicyRef { name: name.into(), version: version.into() },
            kind: GateKind::Replay,
            passed: true,
            summary: json!({"f1": 0.9}),
            run_sha256: "1".repeat(64),
            actor: "replay".into(),
        };
        self.store.record_gate_run(run).await.unwrap();
    }

    /// Adds `default@2.0.0` (stricter), approved and gated, by the API.
    async fn stricter_version(&self) {
        let (status, added) = self
            .api(
                reqwest::Method::POST,
                "/api/policies",
                &self.author,
                Some(json!({"source": text("default", "2.0.0", STRICTER)})),
            )
            .await;
        assert_eq!(status, 201, "{added}");
        let (status, body) =
            self.api(reqwest::Method::POST, "/api/policies/default@2.0.0/approve", &self.approver, None).await;
        assert_eq!(status, 200, "{body}");
        self.gate("default@2.0.0").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_records_what_it_would_decide_and_changes_nothing_served() {
    let h = start().await;
    let before_plain = h.chat(SUPPORT_KEY, "I want a refund for my blender", false).await;
    let before_stream = h.chat(SUPPORT_KEY, "I want a refund for my blender", true).await;
    h.stricter_version().await;
    let (status, body) = h
        .api(reqwest::Method::POST, "/api/policies/default@2.0.0/promote", &h.author, Some(json!({"to": "shadow"})))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["running"]["policies"][0]["shadow"], "default@2.0.0", "in force on this gateway at once");

    for stream in [false, true] {
        let served = h.chat(SUPPORT_KEY, "I want a refund for my blender", stream).await;
        let before = if stream { &before_stream } else { &before_plain };
        assert_eq!((served.policy.as_str(), served.decision.as_str()), ("default@1.0.0", "allow"));
        assert_eq!(served.answer, before.answer, "the shadow changes nothing the client gets (stream: {stream})");
        assert_eq!(served.answer, "The XR-200 blender has a two-year warranty.");
        let stored = h.stored(&served.id).await;
        assert_eq!(stored.decision, Action::Allow);
        let shadow: Vec<(Phase, Action, Option<&str>)> =
            stored.shadow.iter().map(|s| (s.phase, s.action, s.rule.as_deref())).collect();
        assert_eq!(
            shadow,
            [
                (Phase::Input, Action::Escalate, Some("escalate-refunds")),
                (Phase::Output, Action::Block, Some("block-recalled-product"))
            ]
        );
        assert!(stored.shadow.iter().all(|s| s.policy.to_string() == "default@2.0.0"));
    }
    // The shop app is bound to another policy name, which has no shadow.
    let shop = h.chat(SHOP_KEY, "I want a refund for my blender", false).await;
    assert_eq!(shop.policy, "shop@1.0.0");
    assert!(h.stored(&shop.id).await.shadow.is_empty());

    let (status, report) = h.api(reqwest::Method::GET, "/api/policies/default@2.0.0/shadow", &h.approver, None).await;
    assert_eq!(status, 200);
    assert_eq!((report["interactions"].as_u64(), report["differ"].as_u64()), (Some(2), Some(2)));
    assert_eq!(report["pairs"][0], json!({"served": "allow", "shadow": "block", "count": 2}));
    assert_eq!(report["examples"][0]["rule"], "block-recalled-product", "the rule of the strongest would-be action");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotion_and_rollback_over_the_api_change_the_next_request() {
    let h = start().await;
    assert_eq!(h.chat(SUPPORT_KEY, "I want a refund", false).await.policy, "default@1.0.0");

    // Bad candidates are refused with the line and field; nothing is stored.
    let broken = text("default", "2.0.0", STRICTER).replace("when = \"refund\"", "when = \"refnud\"");
    let (status, body) =
        h.api(reqwest::Method::POST, "/api/policies", &h.author, Some(json!({"source": broken}))).await;
    assert_eq!((status, body["error"]["param"].as_str()), (400, Some("source")));
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("source:") && message.contains("unknown check `refnud`"), "{message}");
    let extends = "name = \"x\"\nversion = \"1\"\nextends = \"base.toml\"\n";
    let (status, body) =
        h.api(reqwest::Method::POST, "/api/policies", &h.author, Some(json!({"source": extends}))).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("extends a file"), "{body}");
    assert_eq!(h.store.policy_versions(Some("default")).await.unwrap().len(), 1);

    let (status, _) = h
        .api(
            reqwest::Method::POST,
            "/api/policies",
            &h.author,
            Some(json!({"source": text("default", "2.0.0", STRICTER)})),
        )
        .await;
    assert_eq!(status, 201);
    let (status, body) = h.api(reqwest::Method::POST, "/api/policies/default@2.0.0/approve", &h.author, None).await;
    assert_eq!(status, 403);
    assert!(body["error"]["message"].as_str().unwrap().contains("someone other than its author"), "{body}");
    let (status, body) = h
        .api(reqwest::Method::POST, "/api/policies/default@2.0.0/promote", &h.author, Some(json!({"to": "active"})))
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("must be approved first"), "{body}");
    h.api(reqwest::Method::POST, "/api/policies/default@2.0.0/approve", &h.approver, None).await;
    let (status, body) = h
        .api(reqwest::Method::POST, "/api/policies/default@2.0.0/promote", &h.author, Some(json!({"to": "active"})))
        .await;
    assert_eq!(status, 409);
    assert!(body["error"]["message"].as_str().unwrap().contains("no passing gate run"), "{body}");
    let skip = json!({"to": "active", "skip_gate": "hotfix"});
    let (status, body) =
        h.api(reqwest::Method::POST, "/api/policies/default@2.0.0/promote", &h.author, Some(skip)).await;
    assert_eq!(status, 403, "only an admin may skip the gate: {body}");
    let (status, body) = h.api(reqwest::Method::POST, "/api/policies/default@9/promote", &h.author, None).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = h
        .api(
            reqwest::Method::POST,
            "/api/policies/default@2.0.0/promote",
            &h.author,
            Some(json!({"to": "canary", "share": 2})),
        )
        .await;
    assert_eq!((status, body["error"]["param"].as_str()), (400, Some("share")));
    assert_eq!(
        h.chat(SUPPORT_KEY, "I want a refund", false).await.policy,
        "default@1.0.0",
        "nothing changed by accident"
    );

    h.gate("default@2.0.0").await;
    let (status, body) = h
        .api(reqwest::Method::POST, "/api/policies/default@2.0.0/promote", &h.author, Some(json!({"to": "active"})))
        .await;
    assert_eq!(status, 200, "{body}");
    let served = h.chat(SUPPORT_KEY, "I want a refund", false).await;
    assert_eq!((served.policy.as_str(), served.decision.as_str()), ("default@2.0.0", "escalate"));
    assert_eq!(h.stored(&served.id).await.policy.to_string(), "default@2.0.0");
    assert_eq!(h.chat(SHOP_KEY, "I want a refund", false).await.policy, "shop@1.0.0", "other names are untouched");

    let (status, diff) =
        h.api(reqwest::Method::GET, "/api/policies/diff?from=default@1.0.0&to=default", &h.approver, None).await;
    assert_eq!(status, 200);
    let added: Vec<&str> = diff["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["change"] == "added")
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(added, ["refund", "recalled_product", "escalate-refunds", "block-recalled-product"]);

    let (status, body) = h.api(reqwest::Method::POST, "/api/policies/default/rollback", &h.approver, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["policy"]["restored"]["policy"], "default@1.0.0");
    let served = h.chat(SUPPORT_KEY, "I want a refund", false).await;
    assert_eq!((served.policy.as_str(), served.decision.as_str()), ("default@1.0.0", "allow"));
    let (status, body) =
        h.api(reqwest::Method::POST, "/api/policies/default/rollback", &h.approver, Some(json!({"to": "9"}))).await;
    assert_eq!(status, 404, "{body}");

    let (status, shown) = h.api(reqwest::Method::GET, "/api/policies/default@2.0.0", &h.admin, None).await;
    assert_eq!(status, 200);
    assert_eq!(shown["version"]["status"], "retired");
    let history: Vec<&str> =
        shown["transitions"].as_array().unwrap().iter().map(|t| t["to"].as_str().unwrap()).collect();
    assert_eq!(history, ["draft", "approved", "active", "retired"]);
    assert_eq!(shown["gate_runs"][0]["kind"], "replay");
    h.state.writer().flush().await.unwrap();
    assert!(h.store.verify().await.unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_cannot_load_never_replaces_what_runs() {
    let h = start().await;
    // Written past every API check, straight into the store, as a broken replica could.
    let new = NewPolicyVersion {
        name: "default".into(),
        version: "3.0.0".into(),
        source_text:
            "name = \"default\"\nversion = \"3.0.0\"\n[[rules]]\nname = \"x\"\nwhen = \"nothing\"\naction = \"block\"\n"
                .into(),
        parent_version: None,
        origin: "test".into(),
    };
    h.store.add_policy_version(new, "mallory").await.unwrap();
    let reference = PolicyRef { name: "default".into(), version: "3.0.0".into() };
    h.store.approve_policy_version(&reference, "root").await.unwrap();
    let forced = Promotion { to: PolicyStatus::Active, share: None, skip_gate: Some("test".into()) };
    h.store.promote_policy_version(&reference, &forced, "root").await.unwrap();
    h.state.refresh().await.unwrap();
    h.state.refresh().await.unwrap();
    assert_eq!(h.chat(SUPPORT_KEY, "hello", false).await.policy, "default@1.0.0", "what ran stays in force");
    h.state.writer().flush().await.unwrap();
    let failures: Vec<_> = h
        .store
        .audit_records(1, i64::MAX, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.action == "policy.load_failed")
        .collect();
    assert_eq!(failures.len(), 1, "audited once per change, not once per poll");
    assert!(failures[0].payload.contains("default@3.0.0"), "{}", failures[0].payload);
    // The API refuses to promote what this gateway could not load.
    let new = NewPolicyVersion {
        name: "default".into(),
        version: "4.0.0".into(),
        source_text: "not a policy".into(),
        parent_version: None,
        origin: "test".into(),
    };
    h.store.add_policy_version(new, "mallory").await.unwrap();
    h.store
        .approve_policy_version(&PolicyRef { name: "default".into(), version: "4.0.0".into() }, "root")
        .await
        .unwrap();
    h.gate("default@4.0.0").await;
    let (status, body) = h
        .api(reqwest::Method::POST, "/api/policies/default@4.0.0/promote", &h.admin, Some(json!({"to": "active"})))
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("cannot be loaded on this gateway"), "{body}");
}
