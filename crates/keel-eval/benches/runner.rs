//! Cases per second of the runner with deterministic scorers on the in-process targets: the
//! default pack on recorded answers (`policy` target), and the whole gateway path through the
//! router (`gateway` target, recorded upstream on loopback). Each iteration runs a suite of
//! `CASES` cases built from the shipped suites (jailbreak, personal data, over-refusal), so
//! `CASES / time` is the figure; criterion reports it as elements per second.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use keel_eval::target::{GatewayTarget, Params, PolicyTarget, RecordedUpstream, RECORDED_MODEL};
use keel_eval::{RunOptions, Scorers, Suite};
use keel_policy::{Policy, DEFAULT_PACK};

const CASES: usize = 1000;

/// The shipped suites' cases, repeated under fresh ids until there are `CASES` of them.
fn big_suite() -> Suite {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../suites/");
    let mut cases = Vec::new();
    for file in ["jailbreak.yaml", "pii.yaml", "over-refusal.yaml", "ci-smoke.yaml"] {
        cases.extend(Suite::load(std::path::Path::new(&format!("{dir}{file}"))).unwrap().cases);
    }
    let mut suite = Suite::load(std::path::Path::new(&format!("{dir}ci-smoke.yaml"))).unwrap();
    suite.cases = (0..CASES)
        .map(|i| {
            let mut case = cases[i % cases.len()].clone();
            case.id = format!("{}-{i}", case.id);
            case
        })
        .collect();
    suite
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let suite = big_suite();
    let policy = Arc::new(Policy::parse("default.toml", DEFAULT_PACK).unwrap());
    let scorers = Arc::new(Scorers::new(None, None, None));
    let mut group = c.benchmark_group("runner");
    group.throughput(Throughput::Elements(CASES as u64));
    group.sample_size(10);

    let target = Arc::new(PolicyTarget::new(policy.clone()));
    let options = RunOptions { concurrency: 8, ..RunOptions::default() };
    group.bench_function("policy_target_1000_cases", |b| {
        b.iter(|| {
            runtime.block_on(keel_eval::run(&suite, "bench", target.clone(), scorers.clone(), None, &options)).unwrap()
        })
    });

    let (recorded, gateway) = runtime.block_on(async {
        let recorded = RecordedUpstream::spawn(&suite).await.unwrap();
        let gateway = GatewayTarget::new(
            policy.clone(),
            &recorded.base_url(),
            "recorded",
            None,
            RECORDED_MODEL,
            Params::default(),
        )
        .await
        .unwrap();
        (recorded, Arc::new(gateway))
    });
    group.bench_function("gateway_target_1000_cases", |b| {
        b.iter(|| {
            runtime.block_on(keel_eval::run(&suite, "bench", gateway.clone(), scorers.clone(), None, &options)).unwrap()
        })
    });
    group.finish();
    drop(recorded);
}

criterion_group!(benches, bench);
criterion_main!(benches);
