//! Throughput of the default policy pack (every check plus the rules) on English and
//! Japanese texts of 1 KB and 16 KB, judged as input and as output.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use keel_core::Phase;
use keel_policy::{Context, Lang, Policy, TextPart};

const EN: &str = "Hello, I bought the XR-200 blender last month and the lid does not close properly anymore. \
Could you tell me whether this is covered by the warranty, and how I can send it in for repair? \
My order number is 4471-2209 and you can reach me at jane.doe@example.com or +1 415 555 0100. ";
const JA: &str = "先月購入したXR-200ブレンダーのふたがきちんと閉まらなくなりました。保証の対象になるか、\
修理に出す方法を教えていただけますか。注文番号は４４７１－２２０９です。連絡先はtaro@example.jp、\
電話番号は090-1234-5678です。よろしくお願いいたします。";

fn text(seed: &str, bytes: usize) -> String {
    let mut out = String::with_capacity(bytes + seed.len());
    while out.len() < bytes {
        out.push_str(seed);
    }
    let mut end = bytes.min(out.len());
    while !out.is_char_boundary(end) {
        end -= 1;
    }
    out.truncate(end);
    out
}

fn bench(c: &mut Criterion) {
    let policy = Policy::parse("default.toml", include_str!("../../../policies/default.toml")).unwrap();
    let mut group = c.benchmark_group("default_pack");
    for (lang_name, seed, lang) in [("en", EN, Lang::En), ("ja", JA, Lang::Ja)] {
        for size in [1024usize, 16 * 1024] {
            let sample = text(seed, size);
            let ctx = Context { app: "bench", model: "m", lang };
            group.throughput(Throughput::Bytes(sample.len() as u64));
            for phase in [Phase::Input, Phase::Output] {
                let id = BenchmarkId::new(format!("{lang_name}/{phase}"), size);
                group.bench_with_input(id, &sample, |b, sample| {
                    b.iter(|| policy.judge(phase, &[TextPart { message: Some(0), text: sample }], &ctx))
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
