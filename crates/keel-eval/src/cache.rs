//! Append-only caches of target answers and judge verdicts, one JSON line per entry.
//!
//! A rerun with the same key gets the same answer without calling anything, so reruns are
//! cheap and identical, and an interrupted run resumes where it stopped: every finished case
//! is appended (and flushed) as soon as it is answered. A torn last line (a crash mid-write)
//! is skipped when the file is read back. Errors are never cached.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{EvalError, Result};

/// A cache of `V` by key, kept in memory and appended to a file.
pub struct Cache<V> {
    path: Option<PathBuf>,
    entries: Mutex<HashMap<String, V>>,
    file: Mutex<Option<File>>,
}

#[derive(Serialize, Deserialize)]
struct Line<V> {
    key: String,
    value: V,
}

impl<V: Serialize + DeserializeOwned + Clone> Cache<V> {
    /// A cache that forgets everything when dropped.
    pub fn in_memory() -> Self {
        Cache { path: None, entries: Mutex::new(HashMap::new()), file: Mutex::new(None) }
    }

    /// Opens (creating it and its directory if missing) the cache file at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(EvalError::io("create directory", dir))?;
        }
        let mut entries = HashMap::new();
        if let Ok(file) = File::open(path) {
            for line in BufReader::new(file).lines() {
                let Ok(line) = line else { break };
                // A line that does not parse was cut short by an interruption: skip it.
                if let Ok(entry) = serde_json::from_str::<Line<V>>(&line) {
                    entries.insert(entry.key, entry.value);
                }
            }
        }
        let mut file = OpenOptions::new().create(true).append(true).open(path).map_err(EvalError::io("open", path))?;
        // A torn last line must not swallow the next entry: end it first.
        let torn = std::fs::read(path).map(|bytes| bytes.last().is_some_and(|b| *b != b'\n')).unwrap_or(false);
        if torn {
            file.write_all(b"\n").map_err(EvalError::io("write", path))?;
        }
        Ok(Cache { path: Some(path.to_path_buf()), entries: Mutex::new(entries), file: Mutex::new(Some(file)) })
    }

    /// The cached value for `key`.
    pub fn get(&self, key: &str) -> Option<V> {
        self.entries.lock().ok().and_then(|e| e.get(key).cloned())
    }

    /// Remembers `value` under `key`, appending it to the file.
    pub fn put(&self, key: &str, value: &V) -> Result<()> {
        if let Ok(mut entries) = self.entries.lock() {
            entries.insert(key.to_string(), value.clone());
        }
        let mut guard = match self.file.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let (Some(file), Some(path)) = (guard.as_mut(), &self.path) {
            let mut line = serde_json::to_vec(&Line { key: key.to_string(), value: value.clone() })
                .map_err(|e| EvalError::Setup(format!("cannot encode a cache entry: {e}")))?;
            line.push(b'\n');
            // One write per line: concurrent appenders interleave whole lines.
            file.write_all(&line).map_err(EvalError::io("write", path))?;
            file.flush().map_err(EvalError::io("write", path))?;
        }
        Ok(())
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The cache key of a JSON-serialisable description: lowercase hex SHA-256 of its compact JSON.
pub fn key_of(value: &serde_json::Value) -> String {
    hex::encode(Sha256::digest(value.to_string().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_reopening_and_a_torn_last_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c").join("cache.jsonl");
        let cache: Cache<String> = Cache::open(&path).unwrap();
        cache.put("a", &"first".to_string()).unwrap();
        cache.put("b", &"second".to_string()).unwrap();
        drop(cache);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"key\":\"c\",\"val").unwrap();
        drop(file);
        let again: Cache<String> = Cache::open(&path).unwrap();
        assert_eq!(again.get("a").as_deref(), Some("first"));
        assert_eq!(again.get("b").as_deref(), Some("second"));
        assert_eq!(again.get("c"), None);
        assert_eq!(again.len(), 2);
        again.put("d", &"after the tear".to_string()).unwrap();
        drop(again);
        let third: Cache<String> = Cache::open(&path).unwrap();
        assert_eq!(third.get("d").as_deref(), Some("after the tear"));
    }
}
