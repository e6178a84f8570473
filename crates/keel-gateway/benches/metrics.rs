//! Cost of the one metrics call the gateway makes per interaction (`GatewayMetrics::observe`,
//! when the interaction is handed to the writer), and of a `/metrics` scrape's encoding.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, Criterion};
use keel_core::{
    Action, CheckResult, Interaction, InteractionId, Outcome, Phase, PolicyRef, StoredText, Timings, Tokens,
};
use keel_gateway::GatewayMetrics;

fn interaction(app: &str, decision: Action) -> Interaction {
    let check = |name: &str, hit: bool| CheckResult {
        check: name.into(),
        kind: name.into(),
        phase: Phase::Input,
        score: if hit { 1.0 } else { 0.0 },
        hit,
        findings: vec![],
        error: None,
        detail: None,
        elapsed_us: 3,
        mode: Default::default(),
    };
    Interaction {
        id: InteractionId::new(),
        created_at: time::OffsetDateTime::now_utc(),
        app: app.into(),
        model: "m".into(),
        stream: false,
        request: StoredText::default(),
        response: StoredText::default(),
        outcome: Outcome::Completed,
        http_status: 200,
        error: None,
        timings: Timings { upstream_ms: 420.0, overhead_us: 300, total_ms: 421.0 },
        tokens: Tokens::default(),
        policy: PolicyRef { name: "default".into(), version: "1".into() },
        decision,
        decisions: vec![],
        checks: vec![
            check("pii", true),
            check("secrets", false),
            check("injection", false),
            check("answer_length", true),
        ],
        shadow: Vec::new(),
    }
}

fn bench(c: &mut Criterion) {
    let metrics = GatewayMetrics::new();
    let samples: Vec<Interaction> =
        ["support", "sales", "internal"].iter().flat_map(|app| Action::ALL.map(|a| interaction(app, a))).collect();
    let mut n = 0usize;
    c.bench_function("observe one interaction (2 check hits)", |b| {
        b.iter(|| {
            n = (n + 1) % samples.len();
            metrics.observe(&samples[n]);
        })
    });
    c.bench_function("encode /metrics (15 request series)", |b| b.iter(|| metrics.encode(0).unwrap().len()));
}

criterion_group!(benches, bench);
criterion_main!(benches);
