//! The prompt-injection classifier: jailguard 0.1.2's small MLP over MiniLM sentence embeddings.
//!
//! The weights file (`assets/jailguard/neural_binary_200k.json`, MIT OR Apache-2.0) is a JSON
//! object of named dense layers stored row-major as `[out][in]`: `w_h1` 256×384 with `b_h1`,
//! `w_h2` 128×256 with `b_h2`, `w_out` 1×128 with `b_out`, plus the training-only
//! `learning_rate` and `dropout_rate`. Inference is `relu(W1·x + b1)`, `relu(W2·h1 + b2)`,
//! `sigmoid(Wout·h2 + bout)`; the input is the mean-pooled, L2-normalised all-MiniLM-L6-v2
//! embedding with no further scaling, and dropout is not applied at inference.

use serde::Deserialize;

use crate::embed::Embedder;
use crate::error::{ModelError, Result};

/// The bundled weights, compiled into the binary.
const BUILTIN_WEIGHTS: &[u8] = include_bytes!("../assets/jailguard/neural_binary_200k.json");

/// Width of the embeddings the classifier reads (all-MiniLM-L6-v2).
pub const INJECTION_INPUT_DIM: usize = 384;

/// The weights file as written by jailguard.
#[derive(Deserialize)]
struct WeightsFile {
    w_h1: Vec<Vec<f32>>,
    b_h1: Vec<f32>,
    w_h2: Vec<Vec<f32>>,
    b_h2: Vec<f32>,
    w_out: Vec<Vec<f32>>,
    b_out: Vec<f32>,
}

/// How a layer's outputs are squashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Activation {
    Relu,
    Sigmoid,
}

/// One fully connected layer, weights row-major `[out][in]`, flattened.
#[derive(Debug, Clone)]
struct Dense {
    weights: Vec<f32>,
    bias: Vec<f32>,
    inputs: usize,
    activation: Activation,
}

impl Dense {
    fn from_rows(
        name: &str,
        rows: Vec<Vec<f32>>,
        bias: Vec<f32>,
        inputs: usize,
        activation: Activation,
    ) -> Result<Self> {
        let invalid =
            |detail: String| ModelError::InvalidModel { path: "jailguard/neural_binary_200k.json".into(), detail };
        if rows.len() != bias.len() {
            return Err(invalid(format!("layer {name} has {} rows but {} biases", rows.len(), bias.len())));
        }
        let mut weights = Vec::with_capacity(rows.len() * inputs);
        for (i, row) in rows.into_iter().enumerate() {
            if row.len() != inputs {
                return Err(invalid(format!("layer {name} row {i} has {} weights, expected {inputs}", row.len())));
            }
            weights.extend(row);
        }
        Ok(Self { weights, bias, inputs, activation })
    }

    fn outputs(&self) -> usize {
        self.bias.len()
    }

    fn forward(&self, x: &[f32]) -> Vec<f32> {
        self.weights
            .chunks_exact(self.inputs)
            .zip(&self.bias)
            .map(|(row, b)| {
                let z = b + row.iter().zip(x).map(|(w, v)| w * v).sum::<f32>();
                match self.activation {
                    Activation::Relu => z.max(0.0),
                    Activation::Sigmoid => sigmoid(z),
                }
            })
            .collect()
    }
}

fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

/// Scores how likely a text is a prompt-injection attempt, from its MiniLM embedding.
#[derive(Debug, Clone)]
pub struct InjectionClassifier {
    layers: Vec<Dense>,
}

impl InjectionClassifier {
    /// The classifier bundled with Keel (jailguard 0.1.2's `neural_binary_200k.json`).
    pub fn load_builtin() -> Result<Self> {
        Self::from_json(BUILTIN_WEIGHTS)
    }

    /// A classifier from weights in jailguard's JSON format.
    pub fn from_json(json: &[u8]) -> Result<Self> {
        let w: WeightsFile = serde_json::from_slice(json).map_err(|e| ModelError::InvalidModel {
            path: "jailguard/neural_binary_200k.json".into(),
            detail: format!("not a jailguard weights file: {e}"),
        })?;
        let h1 = Dense::from_rows("h1", w.w_h1, w.b_h1, INJECTION_INPUT_DIM, Activation::Relu)?;
        let h2 = Dense::from_rows("h2", w.w_h2, w.b_h2, h1.outputs(), Activation::Relu)?;
        let out = Dense::from_rows("out", w.w_out, w.b_out, h2.outputs(), Activation::Sigmoid)?;
        if out.outputs() != 1 {
            return Err(ModelError::InvalidModel {
                path: "jailguard/neural_binary_200k.json".into(),
                detail: format!("output layer has {} units, expected 1", out.outputs()),
            });
        }
        Ok(Self { layers: vec![h1, h2, out] })
    }

    /// Probability in `[0, 1]` that the text behind `embedding` is a prompt injection.
    ///
    /// `embedding` should be a 384-dim all-MiniLM-L6-v2 embedding; a shorter one is read as if
    /// zero-padded and a longer one is cut, as jailguard does.
    pub fn score(&self, embedding: &[f32]) -> f32 {
        if embedding.len() != INJECTION_INPUT_DIM {
            tracing::warn!(
                got = embedding.len(),
                expected = INJECTION_INPUT_DIM,
                "injection classifier given an embedding of the wrong size"
            );
        }
        let mut x = embedding.to_vec();
        for layer in &self.layers {
            x = layer.forward(&x);
        }
        x.first().copied().unwrap_or(0.0)
    }

    /// Embed `texts` with `embedder` and score each one.
    pub fn score_texts(&self, embedder: &dyn Embedder, texts: &[&str]) -> Result<Vec<f32>> {
        Ok(embedder.embed(texts)?.iter().map(|e| self.score(e)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_weights_have_the_documented_shape() {
        let c = InjectionClassifier::load_builtin().unwrap();
        let dims: Vec<(usize, usize)> = c.layers.iter().map(|l| (l.inputs, l.outputs())).collect();
        assert_eq!(dims, vec![(384, 256), (256, 128), (128, 1)]);
        let s = c.score(&[0.0; 384]);
        assert!((0.0..=1.0).contains(&s));
    }

    #[test]
    fn forward_pass_matches_a_hand_computed_network() {
        // 384 inputs, all weights of unit 0 = 1/384 → h1[0] = mean(x); second unit negative → 0.
        let w_h1 = vec![vec![1.0 / 384.0; 384], vec![-1.0; 384]];
        let json = serde_json::json!({
            "w_h1": w_h1, "b_h1": [0.0, 0.0],
            "w_h2": [[2.0, 5.0]], "b_h2": [-0.5],
            "w_out": [[1.0]], "b_out": [0.25],
            "learning_rate": 0.01, "dropout_rate": 0.2
        });
        let c = InjectionClassifier::from_json(json.to_string().as_bytes()).unwrap();
        let x = vec![1.0; 384];
        // h1 = [1, 0]; h2 = relu(2*1 + 0 - 0.5) = 1.5; out = sigmoid(1.5 + 0.25)
        let expected = 1.0 / (1.0 + (-1.75f32).exp());
        assert!((c.score(&x) - expected).abs() < 1e-6);
        // ReLU clamps: all-negative input gives h1 = [0, 384] → h2 = relu(5·384 − 0.5)
        let y = vec![-1.0; 384];
        assert!(c.score(&y) > 0.99);
    }

    #[test]
    fn malformed_weights_are_rejected_with_the_reason() {
        let json = serde_json::json!({
            "w_h1": [[1.0, 2.0]], "b_h1": [0.0],
            "w_h2": [[1.0]], "b_h2": [0.0],
            "w_out": [[1.0]], "b_out": [0.0]
        });
        let err = InjectionClassifier::from_json(json.to_string().as_bytes()).unwrap_err();
        assert!(err.to_string().contains("expected 384"), "{err}");
    }
}
