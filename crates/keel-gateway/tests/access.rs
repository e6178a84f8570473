//! Roles on every `/api/…` route, table-driven (route × caller → status), through the router
//! (`oneshot`) with a real SQLite store: admin tokens of each role, an `admin = true` client
//! key, an app's client key, missing, wrong and revoked credentials, and the open mode.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use keel_core::{Permission, Role};
use keel_gateway::{key_hash, AppState, ClientKey, GatewaySettings, Upstreams};
use keel_policy::Policy;
use keel_store::{GateKind, NewGateRun, NewPolicyVersion, PolicyStatus, Promotion, Store, Writer, WriterConfig};
use serde_json::{json, Value};
use tower::ServiceExt;

const DEFAULT_POLICY: &str = include_str!("../../../policies/default.toml");
const ADMIN_KEY: &str = "admin-key-123";
const APP_KEY: &str = "app-key-456";

/// Everyone who may knock on the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Who {
    Nobody,
    Garbage,
    Revoked,
    Token(Role),
    AdminKey,
    AppKey,
}

impl Who {
    fn all() -> Vec<Who> {
        let mut all = vec![Who::Nobody, Who::Garbage, Who::Revoked, Who::AdminKey, Who::AppKey];
        all.extend(Role::ALL.into_iter().map(Who::Token));
        all
    }

    /// A name unique to this caller, for routes that create or revoke things.
    fn slug(self) -> String {
        match self {
            Who::Token(role) => format!("by-{role}").replace('_', "-"),
            other => format!("by-{other:?}").to_lowercase(),
        }
    }

    /// What the route answers this caller: 401 without valid credentials, 403 without the
    /// permission, the route's own status otherwise.
    fn expect(self, permission: Permission, allowed: StatusCode) -> StatusCode {
        let may = match self {
            Who::Nobody | Who::Garbage | Who::Revoked => return StatusCode::UNAUTHORIZED,
            Who::Token(role) => role.allows(permission),
            Who::AdminKey => true,
            Who::AppKey => permission.client_key_may(),
        };
        if may {
            allowed
        } else {
            StatusCode::FORBIDDEN
        }
    }
}

struct Api {
    state: AppState,
    store: Arc<dyn Store>,
    tokens: BTreeMap<Who, String>,
    _dir: tempfile::TempDir,
}

impl Api {
    /// A gateway with client keys, one token per role, one revoked token, and tokens the
    /// callers may revoke.
    async fn start(keys: bool) -> Api {
        let dir = tempfile::tempdir().unwrap();
        let store = keel_store::resolve(&format!("sqlite://{}", dir.path().join("keel.db").display())).await.unwrap();
        let (writer, _task) = Writer::spawn(store.clone(), WriterConfig::default());
        let policy = Policy::parse("default.toml", DEFAULT_POLICY).unwrap();
        let keys = if keys {
            vec![
                ClientKey { name: "ops".into(), app: "console".into(), sha256: key_hash(ADMIN_KEY), admin: true },
                ClientKey { name: "bot".into(), app: "support".into(), sha256: key_hash(APP_KEY), admin: false },
            ]
        } else {
            Vec::new()
        };
        let settings = GatewaySettings {
            keys,
            privacy: Default::default(),
            default_privacy: Default::default(),
            max_body_bytes: 1 << 16,
            review_lock: keel_store::review::DEFAULT_LOCK,
            review: keel_store::CaseIntake::default(),
        };
        let state = AppState::new(settings, Arc::new(policy), Upstreams::new(vec![]).unwrap(), store.clone(), writer);
        let mut tokens = BTreeMap::new();
        for role in Role::ALL {
            let issued = store.create_token(&format!("{role}-1"), role, "bootstrap").await.unwrap();
            tokens.insert(Who::Token(role), issued.token);
        }
        let revoked = store.create_token("gone", Role::Admin, "bootstrap").await.unwrap();
        store.revoke_token("gone", "bootstrap").await.unwrap();
        tokens.insert(Who::Revoked, revoked.token);
        for who in Who::all() {
            store.create_token(&format!("victim-{}", who.slug()), Role::Viewer, "bootstrap").await.unwrap();
            policy_fixtures(store.as_ref(), &who.slug()).await;
        }
        state.refresh_access().await.unwrap();
        Api { state, store, tokens, _dir: dir }
    }

    fn credential(&self, who: Who) -> Option<String> {
        match who {
            Who::Nobody => None,
            Who::Garbage => Some("keelt_0123456789abcdef_".to_owned() + &"0".repeat(64)),
            Who::AdminKey => Some(ADMIN_KEY.to_owned()),
            Who::AppKey => Some(APP_KEY.to_owned()),
            Who::Revoked | Who::Token(_) => self.tokens.get(&who).cloned(),
        }
    }

    async fn call(&self, method: &str, path: &str, bearer: Option<&str>, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(bearer) = bearer {
            request = request.header("authorization", format!("Bearer {bearer}"));
        }
        let body = match body {
            Some(v) => {
                request = request.header("content-type", "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        let response = keel_gateway::router(self.state.clone()).oneshot(request.body(body).unwrap()).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }
}

/// The default pack under another name and version.
fn policy_text(name: &str, version: &str) -> String {
    renamed(DEFAULT_POLICY, name, version)
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

async fn add(store: &dyn Store, name: &str, version: &str) {
    let new = NewPolicyVersion {
        name: name.into(),
        version: version.into(),
        source_text: policy_text(name, version),
        parent_version: None,
        origin: "test".into(),
    };
    store.add_policy_version(new, "writer").await.unwrap();
}

async fn approve_and_gate(store: &dyn Store, name: &str, version: &str) {
    let policy = keel_core::PolicyRef { name: name.into(), version: version.into() };
    store.approve_policy_version(&policy, "checker").await.unwrap();
    let run = NewGateRun {
        policy,
        kind: GateKind::Replay,
        passed: true,
        summary: json!({}),
        run_sha256: "0".repeat(64),
        actor: "gate".into(),
    };
    store.record_gate_run(run).await.unwrap();
}

async fn promote(store: &dyn Store, name: &str, version: &str, to: PolicyStatus) {
    let policy = keel_core::PolicyRef { name: name.into(), version: version.into() };
    store.promote_policy_version(&policy, &Promotion { to, share: None, skip_gate: None }, "checker").await.unwrap();
}

/// For each caller, versions its allowed calls can change: a draft to approve, an approved
/// version to promote, a shadow to withdraw, and a policy name to roll back.
async fn policy_fixtures(store: &dyn Store, slug: &str) {
    if store
        .policy_version(&keel_core::PolicyRef { name: "default".into(), version: "1.0.0".into() })
        .await
        .unwrap()
        .is_none()
    {
        let seed = NewPolicyVersion {
            name: "default".into(),
            version: "1.0.0".into(),
            source_text: policy_text("default", "1.0.0"),
            parent_version: None,
            origin: "test".into(),
        };
        store.seed_policy_version(seed, "system").await.unwrap();
    }
    add(store, "default", &format!("approve-{slug}")).await;
    add(store, "default", &format!("promote-{slug}")).await;
    approve_and_gate(store, "default", &format!("promote-{slug}")).await;
    for (name, versions) in [(format!("w-{slug}"), ["1", "2"]), (format!("r-{slug}"), ["1", "2"])] {
        for version in versions {
            add(store, &name, version).await;
            approve_and_gate(store, &name, version).await;
        }
        promote(store, &name, "1", PolicyStatus::Active).await;
        let second = if name.starts_with("w-") { PolicyStatus::Shadow } else { PolicyStatus::Active };
        promote(store, &name, "2", second).await;
    }
}

/// One route of the table: how to call it as a given caller, the permission it needs, and
/// what it answers a caller who holds it.
struct Route {
    method: &'static str,
    path: fn(Who) -> String,
    body: fn(Who) -> Option<Value>,
    permission: Permission,
    allowed: StatusCode,
}

fn no_body(_: Who) -> Option<Value> {
    None
}

fn routes() -> Vec<Route> {
    vec![
        Route {
            method: "GET",
            path: |_| "/api/review/cases?status=open".into(),
            body: no_body,
            permission: Permission::ReadInteractions,
            allowed: StatusCode::OK,
        },
        Route {
            method: "GET",
            path: |_| "/api/review/cases/999999".into(),
            body: no_body,
            permission: Permission::ReadInteractions,
            allowed: StatusCode::NOT_FOUND,
        },
        Route {
            method: "GET",
            path: |_| "/api/review/agreement".into(),
            body: no_body,
            permission: Permission::ReadInteractions,
            allowed: StatusCode::OK,
        },
        Route {
            method: "POST",
            path: |_| "/api/review/next".into(),
            body: no_body,
            permission: Permission::ReviewCases,
            allowed: StatusCode::OK,
        },
        Route {
            method: "POST",
            path: |_| "/api/review/cases/999999/label".into(),
            body: |_| Some(json!({"label": "ok"})),
            permission: Permission::ReviewCases,
            allowed: StatusCode::NOT_FOUND,
        },
        Route {
            method: "POST",
            path: |_| "/api/review/cases/999999/release".into(),
            body: no_body,
            permission: Permission::ReviewCases,
            allowed: StatusCode::NOT_FOUND,
        },
        Route {
            method: "POST",
            path: |_| "/api/review/cases/999999/adjudicate".into(),
            body: |_| Some(json!({"label": "ok"})),
            permission: Permission::ReviewCases,
            allowed: StatusCode::NOT_FOUND,
        },
        Route {
            method: "POST",
            path: |_| "/api/review/cases/999999/close".into(),
            body: |_| Some(json!({"reason": "duplicate"})),
            permission: Permission::ReviewCases,
            allowed: StatusCode::NOT_FOUND,
        },
        Route {
            method: "GET",
            path: |_| "/api/interactions".into(),
            body: no_body,
            permission: Permission::ReadInteractions,
            allowed: StatusCode::OK,
        },
        Route {
            method: "GET",
            path: |_| "/api/interactions/0190a0a0-0000-7000-8000-000000000000".into(),
            body: no_body,
            permission: Permission::ReadInteractions,
            allowed: StatusCode::NOT_FOUND,
        },
        Route {
            method: "GET",
            path: |_| "/api/policies".into(),
            body: no_body,
            permission: Permission::ReadPolicies,
            allowed: StatusCode::OK,
        },
        Route {
            method: "GET",
            path: |_| "/api/policies/default".into(),
            body: no_body,
            permission: Permission::ReadPolicies,
            allowed: StatusCode::OK,
        },
        Route {
            method: "GET",
            path: |_| "/api/policies/default@1.0.0".into(),
            body: no_body,
            permission: Permission::ReadPolicies,
            allowed: StatusCode::OK,
        },
        Route {
            method: "GET",
            path: |_| "/api/policies/diff?from=default@1.0.0&to=default".into(),
            body: no_body,
            permission: Permission::ReadPolicies,
            allowed: StatusCode::OK,
        },
        Route {
            method: "GET",
            path: |_| "/api/policies/default@1.0.0/shadow".into(),
            body: no_body,
            permission: Permission::ReadPolicies,
            allowed: StatusCode::OK,
        },
        Route {
            method: "POST",
            path: |_| "/api/policies".into(),
            body: |who| Some(json!({"source": policy_text("default", &format!("new-{}", who.slug()))})),
            permission: Permission::WritePolicies,
            allowed: StatusCode::CREATED,
        },
        Route {
            method: "POST",
            path: |who| format!("/api/policies/default@approve-{}/approve", who.slug()),
            body: no_body,
            permission: Permission::ApprovePolicies,
            allowed: StatusCode::OK,
        },
        Route {
            method: "POST",
            path: |who| format!("/api/policies/default@promote-{}/promote", who.slug()),
            body: |_| Some(json!({"to": "active"})),
            permission: Permission::PromotePolicies,
            allowed: StatusCode::OK,
        },
        Route {
            method: "POST",
            path: |who| format!("/api/policies/w-{}@2/withdraw", who.slug()),
            body: no_body,
            permission: Permission::PromotePolicies,
            allowed: StatusCode::OK,
        },
        Route {
            method: "POST",
            path: |who| format!("/api/policies/r-{}/rollback", who.slug()),
            body: no_body,
            permission: Permission::PromotePolicies,
            allowed: StatusCode::OK,
        },
        Route {
            method: "POST",
            path: |_| "/api/feedback".into(),
            body: |who| {
                Some(
                    json!({"event_id": who.slug(), "interaction_id": "0190a0a0-0000-7000-8000-000000000000", "satisfaction": 4}),
                )
            },
            permission: Permission::SendFeedback,
            allowed: StatusCode::NOT_FOUND,
        },
        Route {
            method: "POST",
            path: |_| "/api/handoffs/0190a0a0-0000-7000-8000-000000000000/requested".into(),
            body: |who| Some(json!({"event_id": who.slug()})),
            permission: Permission::SendFeedback,
            allowed: StatusCode::NOT_FOUND,
        },
        Route {
            method: "POST",
            path: |_| "/api/ingest".into(),
            body: |who| {
                Some(json!([{
                    "app": "support",
                    "timestamp": "2026-03-01T09:00:00Z",
                    "request": {"model": "m", "messages": [{"role": "user", "content": who.slug()}]},
                    "output": "ok",
                }]))
            },
            permission: Permission::Ingest,
            allowed: StatusCode::OK,
        },
        Route {
            method: "GET",
            path: |_| "/api/kpi?since=1d".into(),
            body: no_body,
            permission: Permission::ReadKpi,
            allowed: StatusCode::OK,
        },
        Route {
            method: "GET",
            path: |_| "/api/tokens".into(),
            body: no_body,
            permission: Permission::ManageTokens,
            allowed: StatusCode::OK,
        },
        Route {
            method: "POST",
            path: |_| "/api/tokens".into(),
            body: |who| Some(json!({"name": format!("new-{}", who.slug()), "role": "viewer"})),
            permission: Permission::ManageTokens,
            allowed: StatusCode::CREATED,
        },
        Route {
            method: "POST",
            path: |who| format!("/api/tokens/victim-{}/revoke", who.slug()),
            body: no_body,
            permission: Permission::ManageTokens,
            allowed: StatusCode::OK,
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_checks_the_role_of_every_caller() {
    let api = Api::start(true).await;
    let mut failures = Vec::new();
    for route in routes() {
        for who in Who::all() {
            let path = (route.path)(who);
            let credential = api.credential(who);
            let (status, body) = api.call(route.method, &path, credential.as_deref(), (route.body)(who)).await;
            let want = who.expect(route.permission, route.allowed);
            if status != want {
                failures.push(format!("{} {path} as {who:?}: {status} (want {want}) {body}", route.method));
            }
            if status == StatusCode::FORBIDDEN {
                let message = body["error"]["message"].as_str().unwrap_or_default();
                if !message.contains(&route.permission.holders()) {
                    failures.push(format!(
                        "{} {path} as {who:?}: 403 does not name the role needed: {message}",
                        route.method
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_routes_audit_the_actor_and_show_the_token_once() {
    let api = Api::start(true).await;
    let admin = api.credential(Who::Token(Role::Admin)).unwrap();
    let (status, created) =
        api.call("POST", "/api/tokens", Some(&admin), Some(json!({"name": "rita", "role": "reviewer"}))).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let token = created["token"].as_str().unwrap().to_owned();
    assert_eq!(created["role"], "reviewer");

    let (_, listed) = api.call("GET", "/api/tokens", Some(&admin), None).await;
    let listed = listed["data"].as_array().unwrap();
    assert!(listed.iter().all(|t| t.get("token").is_none() && t.get("secret_hash").is_none()));
    assert!(!serde_json::to_string(listed).unwrap().contains(&token[20..]), "the list never shows a token");

    // The new token works at once, with its role.
    let (status, _) = api.call("GET", "/api/interactions", Some(&token), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = api.call("GET", "/api/tokens", Some(&token), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body["error"]["message"].as_str().unwrap().contains("the token `rita` (role reviewer)"), "{body}");

    // Bad input names the field; nothing is stored.
    let (status, body) =
        api.call("POST", "/api/tokens", Some(&admin), Some(json!({"name": "x", "role": "root"}))).await;
    assert_eq!((status, body["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("role")));
    let (status, body) = api.call("POST", "/api/tokens", Some(&admin), Some(json!({"role": "viewer"}))).await;
    assert_eq!((status, body["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("name")));
    let (status, _) =
        api.call("POST", "/api/tokens", Some(&admin), Some(json!({"name": "rita", "role": "viewer"}))).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = api.call("POST", "/api/tokens/nobody/revoke", Some(&admin), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, _) = api.call("POST", "/api/tokens/rita/revoke", Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = api.call("GET", "/api/interactions", Some(&token), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a revoked token stops working at once: {body}");

    api.state.writer().flush().await.unwrap();
    let records = api.store.audit_records(1, i64::MAX, 1000).await.unwrap();
    let by_admin: Vec<&str> = records.iter().filter(|r| r.actor == "admin-1").map(|r| r.action.as_str()).collect();
    assert_eq!(by_admin, ["token.created", "admin.read", "token.revoked"]);
    assert!(records.iter().any(|r| r.actor == "rita" && r.action == "admin.read"));
    assert!(api.store.verify().await.unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_elsewhere_reaches_this_gateway_when_it_reads_the_counters() {
    let api = Api::start(true).await;
    let viewer = api.credential(Who::Token(Role::Viewer)).unwrap();
    assert_eq!(api.call("GET", "/api/interactions", Some(&viewer), None).await.0, StatusCode::OK);
    // Another process (the CLI) revokes it in the store; this gateway's cache still trusts it…
    api.store.revoke_token("viewer-1", "admin-1").await.unwrap();
    assert_eq!(api.call("GET", "/api/interactions", Some(&viewer), None).await.0, StatusCode::OK);
    // …until the watcher reads the counters (every poll interval).
    api.state.refresh_access().await.unwrap();
    let (status, body) = api.call("GET", "/api/interactions", Some(&viewer), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["error"]["message"].as_str().unwrap().contains("revoked"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_is_open_without_keys_and_tokens_and_closes_with_the_first_token() {
    let dir = tempfile::tempdir().unwrap();
    let store = keel_store::resolve(&format!("sqlite://{}", dir.path().join("keel.db").display())).await.unwrap();
    let (writer, _task) = Writer::spawn(store.clone(), WriterConfig::default());
    let settings = GatewaySettings {
        keys: vec![],
        privacy: Default::default(),
        default_privacy: Default::default(),
        max_body_bytes: 1 << 16,
        review_lock: keel_store::review::DEFAULT_LOCK,
        review: keel_store::CaseIntake::default(),
    };
    let policy = Policy::parse("default.toml", DEFAULT_POLICY).unwrap();
    let state = AppState::new(settings, Arc::new(policy), Upstreams::new(vec![]).unwrap(), store.clone(), writer);
    let api = Api { state: state.clone(), store: store.clone(), tokens: BTreeMap::new(), _dir: dir };
    state.refresh_access().await.unwrap();
    let (status, _) = api.call("GET", "/api/tokens", None, None).await;
    assert_eq!(status, StatusCode::OK, "open: a local caller acts as admin");
    let (status, created) =
        api.call("POST", "/api/tokens", None, Some(json!({"name": "first", "role": "viewer"}))).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(api.call("GET", "/api/interactions", None, None).await.0, StatusCode::UNAUTHORIZED);
    let viewer = created["token"].as_str().unwrap();
    assert_eq!(api.call("GET", "/api/interactions", Some(viewer), None).await.0, StatusCode::OK);
    assert_eq!(api.call("GET", "/api/tokens", Some(viewer), None).await.0, StatusCode::FORBIDDEN);
    state.writer().flush().await.unwrap();
    let records = store.audit_records(1, i64::MAX, 100).await.unwrap();
    let actions: Vec<(&str, &str)> = records.iter().map(|r| (r.actor.as_str(), r.action.as_str())).collect();
    assert_eq!(actions, [("anonymous", "admin.read"), ("anonymous", "token.created"), ("first", "admin.read")]);
}
