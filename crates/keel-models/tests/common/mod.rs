//! Finding the real model files for tests: `$KEEL_MODELS_DIR`, else `$KEEL_HOME/models`
//! (default `~/.keel/models`). Tests that need them skip, saying why, when they are absent;
//! `cargo run -p keel-models --example pull` installs them.

#![allow(dead_code)]

use std::path::PathBuf;

use keel_models::ModelPaths;

fn paths() -> Option<ModelPaths> {
    let paths = ModelPaths::from_env();
    if paths.is_none() {
        eprintln!("skipping: no KEEL_HOME, KEEL_MODELS_DIR or HOME to find models in");
    }
    paths
}

/// The MiniLM directory, or `None` (with the reason printed) when it is not installed.
pub fn minilm_dir() -> Option<PathBuf> {
    let p = paths()?;
    if p.has_embedder() {
        Some(p.embedder_dir)
    } else {
        eprintln!(
            "skipping: all-minilm-l6-v2 is not installed in {} (run `cargo run -p keel-models --example pull`)",
            p.embedder_dir.display()
        );
        None
    }
}

/// The SmolLM2 GGUF file, or `None` (with the reason printed) when it is not installed.
pub fn smollm_gguf() -> Option<PathBuf> {
    let p = paths()?;
    if p.has_llm() {
        Some(p.llm_gguf)
    } else {
        eprintln!(
            "skipping: smollm2-135m-instruct is not installed at {} (run `cargo run -p keel-models --example pull`)",
            p.llm_gguf.display()
        );
        None
    }
}
