//! Updates per second of every detector with its default configuration, measured once the
//! reference is learnt (the steady state a long-running monitor is in). Streams come from the
//! quality harness's no-change generators.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use keel_monitor::bench::{Scenario, Stream};
use keel_monitor::{DetectorConfig, DriftDetector, Method, Observation};

const BATCH: usize = 1_000;

fn scenario_for(method: Method) -> Scenario {
    match method.reads() {
        "category" => Scenario::CategoryShift,
        "vector" => Scenario::EmbeddingShift,
        _ => Scenario::MeanShift,
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("detector_update");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);
    for method in Method::ALL {
        let mut detector = DetectorConfig::default_for(method).build().unwrap();
        let mut stream = Stream::new(scenario_for(method), 7, None);
        // Past the warm-up / reference and a full window.
        for _ in 0..5_000 {
            detector.update(&stream.next_observation()).unwrap();
        }
        let batch: Vec<Observation> = (0..BATCH).map(|_| stream.next_observation()).collect();
        group.bench_function(BenchmarkId::from_parameter(method.name()), |b| {
            b.iter(|| {
                for obs in &batch {
                    std::hint::black_box(detector.update(obs).unwrap());
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
