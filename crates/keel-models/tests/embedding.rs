//! The MiniLM embedder against real weights (skipped when absent), checked against reference
//! cosines computed by an independent numpy implementation (fixtures/make_embedding_fixtures.py).

// Test code: a failure should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::OnceLock;

use keel_models::{cosine, Embedder, MiniLmEmbedder};

fn embedder() -> Option<&'static MiniLmEmbedder> {
    static EMBEDDER: OnceLock<Option<MiniLmEmbedder>> = OnceLock::new();
    let e = EMBEDDER.get_or_init(|| common::minilm_dir().map(|d| MiniLmEmbedder::load(&d).unwrap())).as_ref();
    if e.is_none() {
        eprintln!("skipping: the embedding model is not installed");
    }
    e
}

struct Pair {
    a: String,
    b: String,
    cosine: f32,
}

fn reference_pairs() -> Vec<Pair> {
    let text = include_str!("fixtures/embedding_cosines.json");
    let json: serde_json::Value = serde_json::from_str(text).unwrap();
    json["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| Pair {
            a: p["a"].as_str().unwrap().to_string(),
            b: p["b"].as_str().unwrap().to_string(),
            cosine: p["cosine"].as_f64().unwrap() as f32,
        })
        .collect()
}

#[test]
fn cosines_match_the_independent_reference_one_by_one_and_batched() {
    let Some(e) = embedder() else { return };
    let pairs = reference_pairs();
    assert!(pairs.len() >= 6);
    let all: Vec<&str> = pairs.iter().flat_map(|p| [p.a.as_str(), p.b.as_str()]).collect();
    let batched = e.embed(&all).unwrap();
    for (i, p) in pairs.iter().enumerate() {
        let single = e.embed(&[&p.a, &p.b]).unwrap();
        let ours = cosine(&single[0], &single[1]);
        let ours_batched = cosine(&batched[2 * i], &batched[2 * i + 1]);
        eprintln!("{:+.4} (ref {:+.4}) {:?}", ours, p.cosine, &p.b);
        assert!((ours - p.cosine).abs() <= 1e-3, "{} vs {} for {:?}", ours, p.cosine, p.b);
        assert!((ours_batched - p.cosine).abs() <= 1e-3, "batched {} vs {}", ours_batched, p.cosine);
    }
}

#[test]
fn vectors_are_384_wide_and_unit_length() {
    let Some(e) = embedder() else { return };
    assert_eq!(e.dimension(), 384);
    let v = e.embed(&["hello", "", "日本語のテキスト"]).unwrap();
    assert_eq!(v.len(), 3);
    for x in &v {
        assert_eq!(x.len(), 384);
        let norm: f32 = x.iter().map(|a| a * a).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
    }
    assert!(e.embed(&[]).unwrap().is_empty());
}

#[test]
fn padding_in_a_batch_does_not_change_a_vector() {
    let Some(e) = embedder() else { return };
    let short = "Short text.";
    let long = "A much longer sentence that forces the short one to be padded in its batch. ".repeat(5);
    let alone = e.embed(&[short]).unwrap().remove(0);
    let together = e.embed(&[&long, short, &long]).unwrap();
    assert!(cosine(&alone, &together[1]) > 0.99999);
    for (a, b) in alone.iter().zip(&together[1]) {
        assert!((a - b).abs() < 1e-4);
    }
}

#[test]
fn many_texts_keep_their_order_across_internal_batches() {
    let Some(e) = embedder() else { return };
    let texts: Vec<String> = (0..70).map(|i| format!("item {i} {}", "x ".repeat(i % 13))).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let all = e.embed(&refs).unwrap();
    for i in [0, 31, 32, 69] {
        let one = e.embed(&[refs[i]]).unwrap().remove(0);
        assert!(cosine(&one, &all[i]) > 0.99999, "text {i}");
    }
}
