//! Sentence embeddings: the [`Embedder`] seam and all-MiniLM-L6-v2 run on the CPU with candle.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{Tokenizer, TruncationParams};

use crate::error::{ModelError, Result};

/// Turns texts into fixed-size vectors whose cosine similarity tracks meaning.
pub trait Embedder: Send + Sync {
    /// Length of every vector [`Embedder::embed`] returns.
    fn dimension(&self) -> usize;
    /// One L2-normalised vector per text, in the order given.
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, ModelError>;
}

/// Longest input, in tokens, the sentence-transformers model was trained with; longer text is cut.
pub const MINILM_MAX_TOKENS: usize = 256;

/// Texts run through the network together; sorted by length first, so padding stays small.
const BATCH_SIZE: usize = 32;

/// all-MiniLM-L6-v2 (or any BERT in the same layout): mean pooling over the attention mask,
/// then L2 normalisation, as sentence-transformers does.
pub struct MiniLmEmbedder {
    model: BertModel,
    tokenizer: Tokenizer,
    dimension: usize,
    pad_id: u32,
    device: Device,
}

impl std::fmt::Debug for MiniLmEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MiniLmEmbedder").field("dimension", &self.dimension).finish_non_exhaustive()
    }
}

impl MiniLmEmbedder {
    /// Load `model.safetensors`, `tokenizer.json` and `config.json` from `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        let hint = |name: &str| {
            format!(
                "pull the embedding model with `keel models pull {}`, or point Keel at a directory \
                 holding model.safetensors, tokenizer.json and config.json (missing: {name})",
                crate::pull::MINILM_L6_V2.name
            )
        };
        let path_of = |name: &str| -> Result<std::path::PathBuf> {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(ModelError::MissingFile { path: p, hint: hint(name) })
            }
        };
        let config_path = path_of("config.json")?;
        let weights_path = path_of("model.safetensors")?;
        let tokenizer_path = path_of("tokenizer.json")?;

        let config_text = std::fs::read(&config_path).map_err(ModelError::io("read", &config_path))?;
        let config: Config = serde_json::from_slice(&config_text).map_err(|e| ModelError::InvalidModel {
            path: config_path.clone(),
            detail: format!("not a BERT config: {e}"),
        })?;

        let device = Device::Cpu;
        // Read into memory rather than mmap: memory-mapping is `unsafe`, which this workspace forbids.
        let weights = std::fs::read(&weights_path).map_err(ModelError::io("read", &weights_path))?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &device)
            .map_err(|e| ModelError::InvalidModel { path: weights_path.clone(), detail: e.to_string() })?;
        let model = BertModel::load(vb, &config).map_err(|e| ModelError::InvalidModel {
            path: weights_path.clone(),
            detail: format!("weights do not fit the BERT config: {e}"),
        })?;

        let mut tokenizer = Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| ModelError::InvalidModel { path: tokenizer_path.clone(), detail: e.to_string() })?;
        // The shipped tokenizer pads everything to 128 and truncates at 128; batches are padded
        // here instead (to the longest in the batch) and truncation follows the model.
        tokenizer.with_padding(None);
        let max_tokens = MINILM_MAX_TOKENS.min(config.max_position_embeddings);
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: max_tokens, ..TruncationParams::default() }))
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let pad_id = tokenizer.token_to_id("[PAD]").unwrap_or(config.pad_token_id as u32);

        tracing::debug!(dir = %dir.display(), dimension = config.hidden_size, max_tokens, "embedding model loaded");
        Ok(Self { model, tokenizer, dimension: config.hidden_size, pad_id, device })
    }

    /// Embed the encodings at `indices` as one padded batch.
    fn embed_indices(&self, encodings: &[tokenizers::Encoding], indices: &[usize]) -> Result<Vec<Vec<f32>>> {
        let batch: Vec<&tokenizers::Encoding> = indices.iter().map(|&i| &encodings[i]).collect();
        self.embed_batch(&batch)
    }

    /// Embed token sequences that share one padded batch.
    fn embed_batch(&self, batch: &[&tokenizers::Encoding]) -> Result<Vec<Vec<f32>>> {
        let longest = batch.iter().map(|e| e.get_ids().len()).max().unwrap_or(0).max(1);
        let mut ids = Vec::with_capacity(batch.len() * longest);
        let mut mask = Vec::with_capacity(batch.len() * longest);
        for enc in batch {
            let n = enc.get_ids().len();
            ids.extend_from_slice(enc.get_ids());
            ids.extend(std::iter::repeat_n(self.pad_id, longest - n));
            mask.extend(std::iter::repeat_n(1u32, n));
            mask.extend(std::iter::repeat_n(0u32, longest - n));
        }
        let shape = (batch.len(), longest);
        let ids = Tensor::from_vec(ids, shape, &self.device)?;
        let mask = Tensor::from_vec(mask, shape, &self.device)?;
        let token_types = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &token_types, Some(&mask))?;

        // Mean over real tokens only, then unit length.
        let mask_f = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&mask_f)?.sum(1)?;
        let counts = mask_f.sum(1)?.clamp(1e-9f32, f32::MAX)?;
        let mean = summed.broadcast_div(&counts)?;
        let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12f32, f32::MAX)?;
        Ok(mean.broadcast_div(&norm)?.to_vec2::<f32>()?)
    }
}

impl Embedder for MiniLmEmbedder {
    fn dimension(&self) -> usize {
        self.dimension
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, ModelError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let encodings =
            self.tokenizer.encode_batch(texts.to_vec(), true).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let mut order: Vec<usize> = (0..encodings.len()).collect();
        order.sort_by_key(|&i| encodings[i].get_ids().len());

        // candle spreads each batch's matrix products over the cores itself.
        let mut out = vec![Vec::new(); texts.len()];
        for batch in order.chunks(BATCH_SIZE) {
            for (&i, v) in batch.iter().zip(self.embed_indices(&encodings, batch)?) {
                out[i] = v;
            }
        }
        Ok(out)
    }
}

/// Cosine similarity of two vectors (0 when either is all zeros).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut na, mut nb) = (0f32, 0f32, 0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_of_parallel_and_orthogonal_vectors() {
        assert!((cosine(&[1.0, 2.0], &[2.0, 4.0]) - 1.0).abs() < 1e-6);
        assert!(cosine(&[1.0, 0.0], &[0.0, 3.0]).abs() < 1e-6);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 1.0]), 0.0);
    }

    #[test]
    fn missing_files_name_what_to_do() {
        let dir = tempfile::tempdir().ok();
        let dir = dir.as_ref().map(|d| d.path()).unwrap_or(Path::new("/nonexistent"));
        let err = MiniLmEmbedder::load(dir).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("config.json"), "{err}");
        assert!(err.contains("keel models pull all-minilm-l6-v2"), "{err}");
    }
}
