//! Calibration aid for the memory's similarity settings: mean and 90th-percentile cosine
//! similarity (all-MiniLM-L6-v2) between the adaptation benchmark's topics, per language, on a
//! calibration seed never used for the reported table.
//!
//! `cargo run -p keel-adapt --example topic_similarity` (needs `keel models pull`).
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use keel_adapt::bench::{stream, BenchOptions, TOPICS};
use keel_models::{Embedder, MiniLmEmbedder};

fn main() {
    let dir = keel_models::models_dir(&keel_models::default_home().expect("a home directory")).join("all-minilm-l6-v2");
    let embedder = MiniLmEmbedder::load(&dir).expect("the MiniLM model (run `keel models pull`)");
    let options = BenchOptions { seed: 0xCA11_B8A7_E000_0005, items: 600, ..BenchOptions::quick() };
    let items = stream(&options);
    let texts: Vec<&str> = items.iter().map(|i| i.text.as_str()).collect();
    let vectors = embedder.embed(&texts).expect("embeddings");
    for japanese in [false, true] {
        println!("\n{} (mean / p90 similarity between requests of two topics)", if japanese { "JA" } else { "EN" });
        print!("{:>16}", "");
        for t in TOPICS {
            print!("{:>16}", t.name);
        }
        println!();
        for a in TOPICS {
            print!("{:>16}", a.name);
            for b in TOPICS {
                let mut sims = Vec::new();
                for (i, x) in items.iter().enumerate() {
                    for (j, y) in items.iter().enumerate() {
                        if i < j
                            && x.japanese == japanese
                            && y.japanese == japanese
                            && x.topic == a.name
                            && y.topic == b.name
                        {
                            sims.push(vectors[i].iter().zip(&vectors[j]).map(|(p, q)| p * q).sum::<f32>());
                        }
                    }
                }
                sims.sort_by(f32::total_cmp);
                let mean = sims.iter().sum::<f32>() / sims.len().max(1) as f32;
                let p90 = sims.get(sims.len() * 9 / 10).copied().unwrap_or(0.0);
                print!("{:>16}", format!("{mean:.2}/{p90:.2}"));
            }
            println!();
        }
    }
}
