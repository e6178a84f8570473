//! Self-contained policy texts. A stored policy version must never depend on files, so a
//! policy that `extends` a file is folded into one text: the base's checks and rules come
//! first, then the policy's own, exactly as [`crate::Policy`] compiles an `extends` chain.
//! `extends = "default"` stays as it is: the built-in pack ships inside Keel itself.

use std::path::Path;

use crate::file::PolicyFile;
use crate::policy::{PolicyError, MAX_EXTENDS_DEPTH};
use crate::source::{FieldPath, SourceError, TomlSource};

/// The self-contained text of the policy file at `path`: the file itself when it extends no
/// file, else the file with its bases folded in.
pub fn resolve_file(path: &Path) -> Result<String, PolicyError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Io { file: file.clone(), source })?;
    Ok(resolve_text(&file, &text)?)
}

/// Like [`resolve_file`], for `text` read from `file` (a path the bases are relative to).
pub fn resolve_text(file: &str, text: &str) -> Result<String, SourceError> {
    let (flat, bases) = flatten(file, text, 0)?;
    if bases.is_empty() {
        return Ok(text.to_owned());
    }
    let body = toml::to_string(&flat).map_err(|e| SourceError {
        file: file.to_owned(),
        line: None,
        column: None,
        field: None,
        message: format!("cannot write the resolved policy: {e}"),
    })?;
    Ok(format!(
        "# {}@{}, stored resolved: the base policy file(s) {} were folded in, so this text needs no other file.\n{body}",
        flat.name,
        flat.version,
        bases.join(", ")
    ))
}

/// True when the policy in `text` extends a file (which a stored text must not).
pub fn extends_a_file(file: &str, text: &str) -> Result<bool, SourceError> {
    let raw: PolicyFile = TomlSource::new(file, text).deserialize()?;
    Ok(!matches!(raw.extends.as_deref(), None | Some("default")))
}

/// The policy with its file bases merged in, and the files that were merged.
fn flatten(file: &str, text: &str, depth: usize) -> Result<(PolicyFile, Vec<String>), SourceError> {
    let source = TomlSource::new(file, text);
    let own: PolicyFile = source.deserialize()?;
    let relative = match own.extends.as_deref() {
        None | Some("default") => return Ok((own, Vec::new())),
        Some(relative) => relative.to_owned(),
    };
    if depth >= MAX_EXTENDS_DEPTH {
        return Err(source.error_at(&FieldPath::key("extends"), "policies extend each other too deeply (a cycle?)"));
    }
    let path = Path::new(file).parent().unwrap_or(Path::new(".")).join(&relative);
    let base_file = path.display().to_string();
    let base_text = std::fs::read_to_string(&path).map_err(|e| {
        source.error_at(&FieldPath::key("extends"), format!("cannot read the base policy {base_file}: {e}"))
    })?;
    let (base, mut bases) = flatten(&base_file, &base_text, depth + 1)?;
    bases.insert(0, relative);
    let mut checks = base.checks;
    checks.extend(own.checks);
    let mut rules = base.rules;
    rules.extend(own.rules);
    let merged = PolicyFile {
        name: own.name,
        version: own.version,
        description: own.description,
        parent: own.parent,
        parent_sha256: own.parent_sha256,
        extends: base.extends,
        on_check_error: own.on_check_error.or(base.on_check_error),
        stream_window_bytes: own.stream_window_bytes.or(base.stream_window_bytes),
        messages: own.messages.or(base.messages),
        checks,
        rules,
    };
    Ok((merged, bases))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Context, Lang, Policy, TextPart};
    use keel_core::Phase;

    const BASE: &str = r#"
name = "base"
version = "1"
extends = "default"
on_check_error = "fail_open"
[messages]
block = { en = "No.", ja = "いいえ。" }
escalate = { en = "A person will help." }
[[checks]]
name = "recall"
kind = "keywords"
words = ["recall", "リコール"]
[[rules]]
name = "escalate-recall"
priority = 5
when = "recall"
action = "escalate"
"#;

    const OWN: &str = r#"
name = "support"
version = "2"
extends = "base.toml"
stream_window_bytes = 128
[[checks]]
name = "refund"
kind = "keywords"
words = ["refund"]
[[rules]]
name = "flag-refund"
priority = 5
when = "refund"
action = "flag"
"#;

    fn files() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("base.toml"), BASE).unwrap();
        let own = dir.path().join("support.toml");
        std::fs::write(&own, OWN).unwrap();
        (dir, own)
    }

    #[test]
    fn a_resolved_policy_compiles_to_the_same_policy_without_its_files() {
        let (dir, own) = files();
        let nested = Policy::load(&own).unwrap();
        let resolved = resolve_file(&own).unwrap();
        assert!(resolved.starts_with("# support@2, stored resolved: the base policy file(s) base.toml were folded in"));
        assert!(!extends_a_file("stored", &resolved).unwrap());
        drop(dir);
        let flat = Policy::parse("<stored support@2>", &resolved).unwrap();
        assert_eq!(flat.summary(), nested.summary());
        assert_eq!(flat.reference().to_string(), "support@2");
        assert_eq!(flat.stream_window_bytes(), 128);
        let ctx = Context { app: "a", model: "m", lang: Lang::Ja };
        for text in ["refund please", "リコールについて", "my card is 4111 1111 1111 1111", "hello"] {
            let part = [TextPart { message: Some(0), text }];
            let (a, b) = (nested.judge(Phase::Input, &part, &ctx), flat.judge(Phase::Input, &part, &ctx));
            assert_eq!(
                (a.decision.action, a.decision.rule, a.reply),
                (b.decision.action, b.decision.rule, b.reply),
                "{text}"
            );
        }
    }

    #[test]
    fn a_policy_without_file_bases_is_kept_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("base.toml");
        std::fs::write(&path, BASE).unwrap();
        assert_eq!(resolve_file(&path).unwrap(), BASE);
        assert!(!extends_a_file("base.toml", BASE).unwrap());
        assert!(extends_a_file("support.toml", OWN).unwrap());
    }

    #[test]
    fn a_missing_base_is_named() {
        let err = resolve_text("/nowhere/support.toml", OWN).unwrap_err().to_string();
        assert!(err.contains("support.toml:4:11: extends: cannot read the base policy /nowhere/base.toml"), "{err}");
    }
}
