//! Feedback, handoff events, ingest and KPIs through the router (`oneshot`) with a real
//! SQLite store.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use keel_core::InteractionId;
use keel_gateway::{key_hash, AppState, ClientKey, GatewaySettings, Upstreams};
use keel_policy::Policy;
use keel_store::{CaseFilter, CaseReason, Store, Writer, WriterConfig};
use serde_json::{json, Value};
use tower::ServiceExt;

const DEFAULT_POLICY: &str = include_str!("../../../policies/default.toml");
const SUPPORT_KEY: &str = "support-key-1";
const SALES_KEY: &str = "sales-key-2";
const ADMIN_KEY: &str = "admin-key-3";

struct Api {
    state: AppState,
    store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
}

impl Api {
    async fn start() -> Api {
        let dir = tempfile::tempdir().unwrap();
        let store = keel_store::resolve(&format!("sqlite://{}", dir.path().join("keel.db").display())).await.unwrap();
        let (writer, _task) = Writer::spawn(store.clone(), WriterConfig::default());
        let policy = Policy::parse("default.toml", DEFAULT_POLICY).unwrap();
        let settings = GatewaySettings {
            keys: vec![
                ClientKey {
                    name: "support-bot".into(),
                    app: "support".into(),
                    sha256: key_hash(SUPPORT_KEY),
                    admin: false,
                },
                ClientKey { name: "sales-bot".into(), app: "sales".into(), sha256: key_hash(SALES_KEY), admin: false },
                ClientKey { name: "ops".into(), app: "console".into(), sha256: key_hash(ADMIN_KEY), admin: true },
            ],
            privacy: Default::default(),
            default_privacy: Default::default(),
            max_body_bytes: 1 << 16,
            review_lock: keel_store::review::DEFAULT_LOCK,
            review: keel_store::CaseIntake::default(),
        };
        let state = AppState::new(settings, Arc::new(policy), Upstreams::new(vec![]).unwrap(), store.clone(), writer);
        Api { state, store, _dir: dir }
    }

    async fn call(&self, method: &str, path: &str, key: &str, body: Option<String>) -> (StatusCode, Value) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {key}"))
            .body(body.map(Body::from).unwrap_or_else(Body::empty))
            .unwrap();
        let response = keel_gateway::router(self.state.clone()).oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, key: &str, body: Value) -> (StatusCode, Value) {
        self.call("POST", path, key, Some(body.to_string())).await
    }
}

fn line(id: InteractionId, timestamp: &str, user_text: &str, output: &str) -> Value {
    json!({
        "id": id.to_string(),
        "app": "support",
        "timestamp": timestamp,
        "request": {"model": "gpt-test", "messages": [{"role": "user", "content": user_text}]},
        "output": output,
        "latency_ms": 250.0,
        "usage": {"prompt_tokens": 7, "completion_tokens": 3},
    })
}

fn jsonl(lines: &[Value]) -> String {
    lines.iter().map(Value::to_string).collect::<Vec<_>>().join("\n")
}

/// Ingests one interaction of `support` and returns its id.
async fn ingested(api: &Api) -> InteractionId {
    let id = InteractionId::new();
    let (status, body) = api
        .call("POST", "/api/ingest", SUPPORT_KEY, Some(jsonl(&[line(id, "2026-03-01T09:00:00Z", "hi", "hello")])))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    id
}

#[tokio::test]
async fn ingest_reports_bad_lines_keeps_history_and_does_not_double_count() {
    let api = Api::start().await;
    let (a, b) = (InteractionId::new(), InteractionId::new());
    let mut with_feedback = line(b, "2026-02-10T08:30:00+09:00", "my mail is ann@example.com", "noted");
    with_feedback["feedback"] = json!({"satisfaction": 2, "wrong_answer": true});
    let mut bad_time = line(InteractionId::new(), "last tuesday", "hi", "hello");
    bad_time["app"] = json!("support");
    let body = [
        jsonl(&[line(a, "2026-01-05T10:00:00Z", "hi", "hello"), bad_time]),
        "{not json".to_owned(),
        jsonl(&[with_feedback]),
    ]
    .join("\n");
    let (status, report) = api.call("POST", "/api/ingest", SUPPORT_KEY, Some(body.clone())).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["ingested"], 2);
    assert_eq!(report["duplicates"], 0);
    assert_eq!(report["feedback"], 1);
    let errors = report["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{report}");
    assert_eq!(errors[0]["line"], 2);
    assert_eq!(errors[0]["field"], "timestamp");
    assert!(errors[0]["message"].as_str().unwrap().starts_with("timestamp: `last tuesday` is not an RFC 3339 time"));
    assert_eq!(errors[1]["line"], 3);
    assert!(errors[1]["message"].as_str().unwrap().starts_with("not valid JSON"));

    let stored = api.store.get_interaction(b).await.unwrap().unwrap();
    assert_eq!(stored.created_at, time::macros::datetime!(2026-02-09 23:30 UTC), "the historical time is kept");
    assert_eq!(stored.app, "support");
    assert_eq!(stored.timings.upstream_ms, 250.0);
    assert_eq!(stored.tokens.prompt, Some(7));
    assert!(stored.checks.iter().any(|c| c.check == "pii" && c.hit), "the policy judged it");
    assert_eq!(stored.decision, keel_core::Action::Redact, "decisions are recorded in monitoring mode");
    assert_eq!(api.store.feedback_after(0, 10).await.unwrap().len(), 1);

    let (status, again) = api.call("POST", "/api/ingest", SUPPORT_KEY, Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["ingested"], 0);
    assert_eq!(again["duplicates"], 2);
    assert_eq!(api.store.feedback_after(0, 10).await.unwrap().len(), 1, "feedback is not stored twice");

    let (status, failed) = api.call("POST", "/api/ingest", SUPPORT_KEY, Some("{}\n[1]".to_owned())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{failed}");
    assert_eq!(failed["errors"].as_array().unwrap().len(), 2);
    assert!(failed["error"]["message"].as_str().unwrap().contains("no interaction could be ingested"));

    let mut other_app = line(InteractionId::new(), "2026-01-05T10:00:00Z", "hi", "hello");
    other_app["app"] = json!("sales");
    let (status, refused) = api.call("POST", "/api/ingest", SUPPORT_KEY, Some(jsonl(&[other_app]))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    assert!(refused["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("may only ingest interactions of app `support`"));
    let (status, _) = api.call("POST", "/api/ingest?app=sales", SUPPORT_KEY, Some("{}".into())).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_long_ingest_is_stored_in_steps_with_file_line_numbers_and_one_audit_record() {
    let api = Api::start().await;
    // Longer than one step (4,096 lines): the repeat of line 3 and the broken line sit in the
    // second step, which is judged while the first is stored.
    let ids: Vec<InteractionId> = (0..4_098).map(|_| InteractionId::new()).collect();
    let mut lines: Vec<String> = ids
        .iter()
        .map(|id| line(*id, "2026-03-01T09:00:00Z", "Where is my order?", "On its way.").to_string())
        .collect();
    lines.push(line(ids[2], "2026-03-01T09:00:00Z", "Where is my order?", "On its way.").to_string());
    lines.push("{broken".to_owned());
    let (status, report) = api.call("POST", "/api/ingest", SUPPORT_KEY, Some(lines.join("\n"))).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!((report["ingested"].as_u64(), report["duplicates"].as_u64()), (Some(4_098), Some(1)), "{report}");
    let errors = report["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{report}");
    assert_eq!(errors[0]["line"], 4_100);
    assert!(api.store.get_interaction(ids[4_097]).await.unwrap().is_some());
    api.state.writer().flush().await.unwrap();
    let audit = api.store.audit_records(0, i64::MAX, 10_000).await.unwrap();
    let ingests: Vec<_> = audit.iter().filter(|r| r.action == "ingest").collect();
    assert_eq!(ingests.len(), 1, "one record for the request");
    let payload: Value = serde_json::from_str(&ingests[0].payload).unwrap();
    assert_eq!(payload["ingested"], 4_098);
}

#[tokio::test]
async fn feedback_waits_for_an_interaction_still_judged_in_the_background() {
    let api = Api::start().await;
    // Stands for an answer whose async checks still run: it reaches the store only when the
    // background task ends, after the client already has the answer (and its id).
    let id = InteractionId::new();
    let body = jsonl(&[line(id, "2026-03-01T09:00:00Z", "hi", "hello")]);
    let state = api.state.clone();
    api.state.tasks().spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let request = Request::builder()
            .method("POST")
            .uri("/api/ingest")
            .header("authorization", format!("Bearer {SUPPORT_KEY}"))
            .body(Body::from(body))
            .unwrap();
        let response = keel_gateway::router(state).oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    });
    let event = json!({"event_id": "fb-early", "interaction_id": id.to_string(), "thumbs": "up"});
    let (status, body) = api.post("/api/feedback", SUPPORT_KEY, event).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // With nothing left in the background, an unknown interaction is still a 404.
    let unknown = json!({"event_id": "fb-none", "interaction_id": InteractionId::new().to_string(), "thumbs": "up"});
    let (status, _) = api.post("/api/feedback", SUPPORT_KEY, unknown).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn feedback_is_validated_scoped_and_idempotent() {
    let api = Api::start().await;
    let id = ingested(&api).await;
    let event = json!({"event_id": "fb-1", "interaction_id": id.to_string(), "satisfaction": 4, "comment": "ok"});

    let (status, body) = api.post("/api/feedback", SUPPORT_KEY, event.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["duplicate"], false);
    assert_eq!(body["feedback"]["satisfaction"], 4);
    assert_eq!(body["feedback"]["actor"], "support-bot");
    let (status, body) = api.post("/api/feedback", SUPPORT_KEY, event.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["duplicate"], true);
    let mut changed = event.clone();
    changed["satisfaction"] = json!(1);
    let (status, body) = api.post("/api/feedback", SUPPORT_KEY, changed).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("fb-1"));

    let bad = |patch: Value| {
        let mut e = json!({"event_id": "fb-x", "interaction_id": id.to_string()});
        for (k, v) in patch.as_object().unwrap() {
            e[k] = v.clone();
        }
        e
    };
    for (body, param, words) in [
        (bad(json!({"satisfaction": 6})), "satisfaction", "from 1 to 5, got 6"),
        (bad(json!({"satisfaction": "4"})), "satisfaction", "got \"4\""),
        (bad(json!({"satisfaction": 3.5})), "satisfaction", "whole number"),
        (bad(json!({"thumbs": "sideways"})), "thumbs", "neither `up` nor `down`"),
        (bad(json!({"wrong_answer": "yes"})), "wrong_answer", "true or false"),
        (bad(json!({"stars": 5})), "stars", "unknown field"),
        (bad(json!({})), "satisfaction", "at least one of"),
        (json!({"interaction_id": id.to_string(), "satisfaction": 3}), "event_id", "missing required field"),
        (bad(json!({"interaction_id": "nope", "satisfaction": 3})), "interaction_id", "not an interaction id"),
    ] {
        let (status, answer) = api.post("/api/feedback", SUPPORT_KEY, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert_eq!(answer["error"]["param"], param, "{answer}");
        assert!(answer["error"]["message"].as_str().unwrap().contains(words), "{answer}");
    }

    let unknown = json!({"event_id": "fb-2", "interaction_id": InteractionId::new().to_string(), "thumbs": "up"});
    let (status, body) = api.post("/api/feedback", SUPPORT_KEY, unknown).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["param"], "interaction_id");

    let (status, body) = api
        .post(
            "/api/feedback",
            SALES_KEY,
            json!({"event_id": "fb-3", "interaction_id": id.to_string(), "thumbs": "down"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("may not act for app `support`"));
    assert_eq!(api.store.feedback_after(0, 10).await.unwrap().len(), 1, "only fb-1 is stored");
    assert_eq!(api.store.list_cases(&CaseFilter::default()).await.unwrap().len(), 0, "a 4 asks for no review");
}

#[tokio::test]
async fn wrong_answer_reports_and_low_scores_open_review_cases_once() {
    let api = Api::start().await;
    let id = ingested(&api).await;
    let report = json!({"event_id": "fb-w", "interaction_id": id.to_string(), "wrong_answer": true, "comment": "no"});
    let (status, body) = api.post("/api/feedback", SUPPORT_KEY, report.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let case_id = body["review_case"].as_i64().expect("a case id");
    let (_, again) = api.post("/api/feedback", SUPPORT_KEY, report).await;
    assert!(again["review_case"].is_null(), "a repeated event opens nothing: {again}");
    let low = json!({"event_id": "fb-l", "interaction_id": id.to_string(), "satisfaction": 1});
    let (status, body) = api.post("/api/feedback", SUPPORT_KEY, low).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let cases = api.store.list_cases(&CaseFilter::default()).await.unwrap();
    let reasons: Vec<_> = cases.iter().map(|c| (c.reason, c.interaction_id)).collect();
    assert_eq!(reasons, [(CaseReason::WrongAnswerReport, id), (CaseReason::LowSatisfaction, id)], "by priority");
    assert_eq!(cases[0].id, case_id);
}

#[tokio::test]
async fn handoff_events_follow_their_order() {
    let api = Api::start().await;
    let id = ingested(&api).await;
    let path = |step: &str| format!("/api/handoffs/{id}/{step}");
    let at = |t: &str| json!({"event_id": format!("h-{t}"), "at": format!("2026-03-01T09:{t}Z")});

    let (status, body) = api.post(&path("taken"), SUPPORT_KEY, at("00:30")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("never requested"));
    let (status, body) = api.post(&path("requested"), SUPPORT_KEY, at("01:00")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = api.post(&path("resolved"), SUPPORT_KEY, at("01:30")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, body) = api.post(&path("taken"), SUPPORT_KEY, at("03:00")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["event"]["handoff"]["taken_at"], "2026-03-01T09:03:00Z");
    let (status, body) = api.post(&path("taken"), SUPPORT_KEY, at("03:00")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["duplicate"], true);
    let (status, _) = api.post(&path("taken"), SUPPORT_KEY, at("04:00")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, body) = api.post(&path("resolved"), SUPPORT_KEY, at("09:00")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let (status, body) = api.post(&path("paused"), SUPPORT_KEY, at("10:00")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["param"], "event");
    let (status, _) =
        api.post(&format!("/api/handoffs/{}/requested", InteractionId::new()), SUPPORT_KEY, at("10:00")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api.post(&path("requested"), SALES_KEY, at("11:00")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Time to human: requested 09:01, taken 09:03 → 120 s.
    let (status, kpi) = api
        .call("GET", "/api/kpi?app=support&since=2026-03-01T00:00:00Z&until=2026-03-02T00:00:00Z", ADMIN_KEY, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{kpi}");
    let handoff = &kpi["buckets"][0]["handoff"];
    assert_eq!(handoff["rate"]["successes"], 1);
    assert_eq!(handoff["time_to_human_percentiles_s"]["p50"], 120.0);
}

#[tokio::test]
async fn kpis_come_per_bucket_with_intervals() {
    let api = Api::start().await;
    // Day 1: three interactions scored 2, 4 and 4 (one said wrong); day 2: one, unscored.
    let ids: Vec<InteractionId> = (0..4).map(|_| InteractionId::new()).collect();
    let mut lines = vec![
        line(ids[0], "2026-03-01T09:00:00Z", "hi", "hello"),
        line(ids[1], "2026-03-01T10:00:00Z", "hi", "I'm sorry, but I can't help with that."),
        line(ids[2], "2026-03-01T11:00:00Z", "mail me at ann@example.com", "ok"),
        line(ids[3], "2026-03-02T11:00:00Z", "hi", "hello"),
    ];
    lines[0]["feedback"] = json!({"satisfaction": 2, "wrong_answer": true});
    lines[1]["feedback"] = json!({"satisfaction": 4});
    lines[2]["feedback"] = json!({"satisfaction": 4, "thumbs": "up"});
    let (status, body) = api.call("POST", "/api/ingest", SUPPORT_KEY, Some(jsonl(&lines))).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let (status, kpi) = api
        .call(
            "GET",
            "/api/kpi?app=support&since=2026-03-01T00:00:00Z&until=2026-03-03T00:00:00Z&bucket=day",
            ADMIN_KEY,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{kpi}");
    let day1 = &kpi["buckets"][0];
    assert_eq!(day1["start"], "2026-03-01T00:00:00Z");
    assert_eq!(day1["interactions"], 3);
    // Mean of {2, 4, 4} = 10/3; s = √(4/3) ≈ 1.1547; distribution [0, 1, 0, 2, 0].
    let mean = &day1["satisfaction"]["mean"];
    assert!((mean["mean"].as_f64().unwrap() - 10.0 / 3.0).abs() < 1e-9, "{mean}");
    assert!((mean["std_dev"].as_f64().unwrap() - (4.0f64 / 3.0).sqrt()).abs() < 1e-9, "{mean}");
    assert_eq!(day1["satisfaction"]["distribution"], json!([0, 1, 0, 2, 0]));
    assert_eq!(day1["satisfaction"]["response_rate"]["estimate"], 1.0);
    assert_eq!(day1["wrong_answer"]["user_reports"]["successes"], 1);
    assert!(day1["wrong_answer"]["reviewer_labels"].is_null());
    assert_eq!(day1["refusal_rate"]["successes"], 1);
    assert_eq!(day1["check_hit_rates"]["pii"]["successes"], 1);
    assert_eq!(day1["check_hit_rates"]["pii"]["trials"], 3);
    assert_eq!(day1["action_mix"]["redact"]["successes"], 1);
    assert_eq!(day1["latency"]["percentiles_ms"]["p50"], 250.0);
    assert_eq!(day1["tokens"]["prompt"], 21);
    assert_eq!(kpi["buckets"][1]["interactions"], 1);
    assert_eq!(kpi["overall"]["interactions"], 4);
    assert_eq!(kpi["overall"]["satisfaction"]["response_rate"]["successes"], 3);

    for (query, param) in [("bucket=week", "bucket"), ("since=soon", "since"), ("confidence=2", "confidence")] {
        let (status, body) = api.call("GET", &format!("/api/kpi?{query}"), ADMIN_KEY, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"]["param"], param, "{body}");
    }
    let (status, _) = api.call("GET", "/api/kpi", SUPPORT_KEY, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a client key may not read KPIs");
}
