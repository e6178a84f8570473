//! What one admin-token check costs: the argon2id verification a gateway pays on a cache
//! miss (and the CLI on every command), against the cached path's SHA-256 lookup key.
//! `cargo bench -p keel-store --bench tokens`

use criterion::{criterion_group, criterion_main, Criterion};
use keel_store::access::{generate_token, hash_token, token_matches};
use sha2::{Digest, Sha256};

fn tokens(c: &mut Criterion) {
    let (token, _) = generate_token();
    let hash = hash_token(&token).unwrap_or_default();
    let mut group = c.benchmark_group("token");
    group.sample_size(20);
    group.bench_function("argon2id_verify", |b| b.iter(|| token_matches(&hash, std::hint::black_box(&token))));
    group.bench_function("argon2id_hash", |b| b.iter(|| hash_token(std::hint::black_box(&token))));
    group.bench_function("cache_key_sha256", |b| {
        b.iter(|| -> [u8; 32] { Sha256::digest(std::hint::black_box(token.as_bytes())).into() })
    });
    group.finish();
}

criterion_group!(benches, tokens);
criterion_main!(benches);
