//! A deterministic bag-of-words embedder for tests of embedding logic (policy memory,
//! semantic checks) that must run fast, exactly and without model files; the real MiniLM is
//! tested against fixtures. Behind the `test-embedder` feature, for dev-dependencies only.

use crate::{Embedder, ModelError};

/// Hashes lowercase words (and, for Japanese, characters) into `dimension` buckets and
/// normalises: texts sharing words are similar, texts sharing none are orthogonal.
pub struct WordEmbedder {
    /// The vectors' length.
    pub dimension: usize,
}

impl Default for WordEmbedder {
    fn default() -> Self {
        WordEmbedder { dimension: 384 }
    }
}

fn bucket(token: &str, dimension: usize) -> usize {
    // FNV-1a: stable across runs and platforms.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in token.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % dimension as u64) as usize
}

impl Embedder for WordEmbedder {
    fn dimension(&self) -> usize {
        self.dimension
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, ModelError> {
        Ok(texts
            .iter()
            .map(|text| {
                let mut v = vec![0f32; self.dimension];
                let lower = text.to_lowercase();
                for word in lower.split(|c: char| !c.is_alphanumeric() && c != '-').filter(|w| !w.is_empty()) {
                    if word.is_ascii() {
                        v[bucket(word, self.dimension)] += 1.0;
                    } else {
                        for c in word.chars() {
                            v[bucket(&c.to_string(), self.dimension)] += 1.0;
                        }
                    }
                }
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                if norm > 0.0 {
                    v.iter_mut().for_each(|x| *x /= norm);
                }
                v
            })
            .collect())
    }
}
