//! The review queue on a running gateway (loopback HTTP server, scripted upstream, SQLite
//! store): flagged and escalated traffic opens cases as it is stored, reviewers take and lock
//! them, labels are checked field by field, second reviews go to adjudication when they
//! disagree, and the errors say who holds what.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use keel_core::Role;
use keel_gateway::{key_hash, AppState, ClientKey, GatewaySettings, UpstreamConfig, Upstreams};
use keel_policy::Policy;
use keel_scripted_upstream::{Options, RunningUpstream, Script};
use keel_store::{CaseIntake, Store, Writer, WriterConfig};
use reqwest::Method;
use serde_json::{json, Value};

const MODEL: &str = "scripted-1";
const KEY: &str = "support-key-1";

const POLICY: &str = r#"
name = "review-test"
version = "1"

[messages]
block = { en = "Sorry, I can't help with that." }
escalate = { en = "A person will take over." }

[[checks]]
name = "refund"
kind = "keywords"
phase = "input"
words = ["refund"]

[[checks]]
name = "lawyer"
kind = "keywords"
phase = "input"
words = ["lawyer"]

[[rules]]
name = "flag-refunds"
priority = 5
phase = "input"
when = "refund"
action = "flag"

[[rules]]
name = "escalate-lawyers"
priority = 6
phase = "input"
when = "lawyer"
action = "escalate"
"#;

struct Harness {
    base: String,
    state: AppState,
    store: Arc<dyn Store>,
    client: reqwest::Client,
    tokens: std::collections::HashMap<&'static str, String>,
    _upstream: RunningUpstream,
    _dir: tempfile::TempDir,
}

async fn start(intake: CaseIntake) -> Harness {
    let upstream =
        keel_scripted_upstream::spawn(SocketAddr::from(([127, 0, 0, 1], 0)), Script::echo(), Options::default())
            .await
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = keel_store::resolve(&format!("sqlite://{}", dir.path().join("keel.db").display())).await.unwrap();
    let (writer, _task) = Writer::spawn(store.clone(), WriterConfig { intake, ..WriterConfig::default() });
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
    let settings = GatewaySettings {
        keys: vec![ClientKey { name: "bot".into(), app: "support".into(), sha256: key_hash(KEY), admin: false }],
        privacy: Default::default(),
        default_privacy: Default::default(),
        max_body_bytes: 1 << 16,
        review_lock: Duration::from_secs(600),
        review: keel_store::CaseIntake::default(),
    };
    let policy = Policy::parse("review.toml", POLICY).unwrap();
    let state = AppState::new(settings, Arc::new(policy), upstreams, store.clone(), writer);
    let mut tokens = std::collections::HashMap::new();
    for (name, role) in [
        ("aiko", Role::Reviewer),
        ("ben", Role::Reviewer),
        ("carl", Role::Reviewer),
        ("vera", Role::Viewer),
        ("root", Role::Admin),
    ] {
        tokens.insert(name, store.create_token(name, role, "bootstrap").await.unwrap().token);
    }
    state.refresh_access().await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = keel_gateway::router(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Harness {
        base: format!("http://{addr}"),
        state,
        store,
        client: reqwest::Client::new(),
        tokens,
        _upstream: upstream,
        _dir: dir,
    }
}

impl Harness {
    async fn chat(&self, content: &str) -> String {
        let response = self
            .client
            .post(format!("{}/v1/chat/completions", self.base))
            .bearer_auth(KEY)
            .json(&json!({"model": MODEL, "messages": [{"role": "user", "content": content}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.headers()["x-keel-interaction-id"].to_str().unwrap().to_owned()
    }

    async fn settle(&self) {
        self.state.tasks().close();
        self.state.tasks().wait().await;
        self.state.tasks().reopen();
        self.state.writer().flush().await.unwrap();
    }

    async fn api(&self, method: Method, path: &str, who: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.base)).bearer_auth(&self.tokens[who]);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviewers_take_label_and_adjudicate_cases_opened_by_traffic() {
    let h = start(CaseIntake { second_review_share: 1.0, ..CaseIntake::default() }).await;
    let flagged = h.chat("I want a refund for my order").await;
    let escalated = h.chat("my lawyer will call you").await;
    h.chat("what are your opening hours?").await;
    h.settle().await;

    let (status, list) = h.api(Method::GET, "/api/review/cases", "vera", None).await;
    assert_eq!(status, 200, "{list}");
    let cases = list["data"].as_array().unwrap();
    assert_eq!(cases.len(), 2, "the flag and the escalation, not the allowed request (sampling is off)");
    assert_eq!(cases[0]["interaction_id"], json!(escalated), "escalations come first");
    assert_eq!(cases[0]["reason"], "escalated");
    assert_eq!(cases[1]["reason"], "flagged");

    // A viewer reads but does not work the queue.
    let (status, body) = h.api(Method::POST, "/api/review/next", "vera", None).await;
    assert_eq!(status, 403, "{body}");

    let (status, next) = h.api(Method::POST, "/api/review/next", "aiko", None).await;
    assert_eq!(status, 200, "{next}");
    let case = next["case"]["id"].as_i64().unwrap();
    assert_eq!(next["case"]["interaction_id"], json!(escalated));
    assert_eq!(next["case"]["assignee"], "aiko");
    assert!(next["interaction"]["request"]["text"].as_str().unwrap().contains("lawyer"));
    assert_eq!(next["explanation"][0]["action"], "escalate");

    // Someone else's lock: 409 naming the holder.
    let (status, body) =
        h.api(Method::POST, &format!("/api/review/cases/{case}/label"), "ben", Some(json!({"label": "ok"}))).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("locked by aiko until"), "{body}");
    // A label without its required field: 400 naming it.
    let (status, body) = h
        .api(Method::POST, &format!("/api/review/cases/{case}/label"), "aiko", Some(json!({"label": "violation"})))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "category");
    let (status, body) = h
        .api(Method::POST, &format!("/api/review/cases/{case}/label"), "aiko", Some(json!({"label": "wrong_answer"})))
        .await;
    assert_eq!((status, body["error"]["param"].as_str()), (400, Some("corrected")), "{body}");
    // Unknown case: 404.
    let (status, _) = h.api(Method::POST, "/api/review/cases/424242/label", "aiko", Some(json!({"label": "ok"}))).await;
    assert_eq!(status, 404);

    let violation = json!({"label": "violation", "category": "legal_threat"});
    let (status, body) =
        h.api(Method::POST, &format!("/api/review/cases/{case}/label"), "aiko", Some(violation.clone())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["case"]["status"], "open", "it waits for its second review");
    let (status, body) =
        h.api(Method::POST, &format!("/api/review/cases/{case}/label"), "aiko", Some(violation.clone())).await;
    assert_eq!(status, 409, "the same reviewer twice: {body}");

    // Ben disagrees → adjudication; aiko may not adjudicate, carl does.
    let (status, body) =
        h.api(Method::POST, &format!("/api/review/cases/{case}/label"), "ben", Some(json!({"label": "ok"}))).await;
    assert_eq!((status, body["case"]["status"].as_str()), (200, Some("needs_adjudication")), "{body}");
    let path = format!("/api/review/cases/{case}/adjudicate");
    let (status, _) = h.api(Method::POST, &path, "aiko", Some(violation.clone())).await;
    assert_eq!(status, 403);
    let (status, body) = h.api(Method::POST, &path, "carl", Some(violation)).await;
    assert_eq!((status, body["case"]["status"].as_str()), (200, Some("labelled")), "{body}");

    // Release: only the holder.
    let (_, next) = h.api(Method::POST, "/api/review/next", "carl", None).await;
    assert_eq!(next["case"]["interaction_id"], json!(flagged));
    let other = next["case"]["id"].as_i64().unwrap();
    let (status, _) = h.api(Method::POST, &format!("/api/review/cases/{other}/release"), "ben", None).await;
    assert_eq!(status, 409);
    let (status, body) = h.api(Method::POST, &format!("/api/review/cases/{other}/release"), "carl", None).await;
    assert_eq!((status, body["case"]["status"].as_str()), (200, Some("open")), "{body}");

    let (status, body) = h.api(Method::GET, "/api/review/agreement", "vera", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["agreement"]["pairs"].as_u64(), body["agreement"]["agreed"].as_u64()), (Some(1), Some(0)));
    assert!(h.store.verify().await.unwrap().is_ok());
}
