//! Candidate policy versions: the base version's text with its memory check's entries rebuilt
//! from labelled cases, a new version string and the parent recorded (`parent`,
//! `parent_sha256`). The base text is only read; the candidate is a new text that must compile
//! before it is returned. Everything else in the file — comments, order, other checks and
//! rules — is kept as written.
//!
//! When the base has no memory check, one is added (`kind = "memory"`) with two rules:
//! `<check>-violation` (`when = "<check>"`, the configured action) and nothing for "ok": an
//! allow rule would also skip redaction and every later rule. Instead, the rules named in
//! `lift_rules` (those that over-refused) get `and not ('ok' in <check>.kinds)` added to their
//! condition, so a confident "ok" memory lifts exactly them.

use keel_core::{Action, PolicyRef};
use keel_policy::file::{CheckConfig, PhaseSelector, PolicyFile};
use keel_policy::memory::{MemoryCase, MemoryEntry, OK_KIND};
use keel_policy::source::TomlSource;
use keel_policy::{Models, Policy};
use serde::Serialize;
use sha2::{Digest, Sha256};
use toml_edit::{Array, ArrayOfTables, DocumentMut, InlineTable, Item, Table, Value};

use crate::build::{build_entries, BuildReport, BuildSettings};
use crate::error::{AdaptError, Result};
use crate::labels::LabelledCase;

/// Default priority of the rule a new memory check gets: after injection, secret and handoff
/// rules of the default pack (≤ 30), before redaction (40), so a remembered violation is not
/// merely redacted.
pub const DEFAULT_RULE_PRIORITY: i32 = 32;

/// How a candidate is made.
#[derive(Debug, Clone)]
pub struct CandidateOptions {
    /// The memory check's name (created if the base has none).
    pub check_name: String,
    /// Its phase, when it is created.
    pub phase: PhaseSelector,
    /// The candidate's version; default: the base's with `-mem.N` bumped.
    pub version: Option<String>,
    /// The action of the rule a new memory check gets.
    pub violation_action: Action,
    /// That rule's priority.
    pub rule_priority: i32,
    /// Rules that a confident "ok" memory may lift (their conditions gain `and not ('ok' in …)`).
    pub lift_rules: Vec<String>,
    /// How entries are built.
    pub build: BuildSettings,
}

impl Default for CandidateOptions {
    fn default() -> Self {
        CandidateOptions {
            check_name: "memory".into(),
            phase: PhaseSelector::Input,
            version: None,
            violation_action: Action::Block,
            rule_priority: DEFAULT_RULE_PRIORITY,
            lift_rules: Vec::new(),
            build: BuildSettings::default(),
        }
    }
}

/// A candidate policy version.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    /// The policy file's text.
    pub text: String,
    /// `name@version` of the candidate.
    pub reference: PolicyRef,
    /// `name@version` of the base it was derived from.
    pub parent: PolicyRef,
    /// SHA-256 of the base's text.
    pub parent_sha256: String,
    /// SHA-256 of the candidate's text (the version's hash, entries included).
    pub sha256: String,
    /// What happened to the labels.
    pub report: BuildReport,
    /// True when the memory check (and its rule) were added.
    pub created_check: bool,
    /// Rules whose conditions now let a confident "ok" memory lift them.
    pub lifted: Vec<String>,
}

/// Builds a candidate from `base_text` (read from `base_file`) and `labels`. `output_file` is
/// where the candidate will live: it is compiled as if there, so a relative `extends` must
/// resolve from it. `models` must hold the embedder.
pub fn build_candidate(
    base_file: &str,
    base_text: &str,
    output_file: &str,
    labels: &[LabelledCase],
    models: &Models,
    options: &CandidateOptions,
) -> Result<Candidate> {
    let base_error = |message: String| AdaptError::Base { file: base_file.to_string(), message };
    let embedder = models.embedder.clone().ok_or_else(|| {
        AdaptError::Options("building memory needs the sentence embedder (run `keel models pull`)".into())
    })?;
    let base = Policy::parse_with(base_file, base_text, models).map_err(|e| base_error(e.to_string()))?;
    let raw: PolicyFile = TomlSource::new(base_file, base_text).deserialize().map_err(|e| base_error(e.to_string()))?;

    let existing = raw.checks.iter().find_map(|c| match c {
        CheckConfig::Memory(m) if m.name == options.check_name => Some(m),
        _ => None,
    });
    if existing.is_none() && raw.checks.iter().any(|c| c.common().name == options.check_name) {
        return Err(base_error(format!("a check named `{}` exists but is not a memory check", options.check_name)));
    }
    let mut settings = options.build.clone();
    let phase = existing.map(|m| m.phase).unwrap_or(options.phase);
    settings.output_memory = phase == PhaseSelector::Output;
    if let Some(m) = existing {
        settings.half_life_days = m.half_life_days.or(settings.half_life_days);
    }
    let old_entries: &[MemoryEntry] = existing.map(|m| m.entries.as_slice()).unwrap_or(&[]);
    let (entries, report) = build_entries(old_entries, labels, embedder.as_ref(), &settings)?;

    let mut doc: DocumentMut = base_text.parse().map_err(|e: toml_edit::TomlError| base_error(e.to_string()))?;
    let version = match &options.version {
        Some(v) => v.clone(),
        None => next_version(&raw.version),
    };
    if version == raw.version {
        return Err(AdaptError::Options(format!("the candidate needs a version other than the base's `{version}`")));
    }
    let parent = base.reference();
    let parent_sha256 = hex::encode(Sha256::digest(base_text.as_bytes()));
    doc["version"] = toml_edit::value(version.clone());
    doc["parent"] = toml_edit::value(parent.to_string());
    doc["parent_sha256"] = toml_edit::value(parent_sha256.clone());

    let created_check = existing.is_none();
    let checks = match doc.get_mut("checks") {
        Some(item) => {
            item.as_array_of_tables_mut().ok_or_else(|| base_error("`checks` is not an array of tables".into()))?
        }
        None => {
            doc["checks"] = Item::ArrayOfTables(ArrayOfTables::new());
            doc["checks"].as_array_of_tables_mut().ok_or_else(|| base_error("cannot add checks".into()))?
        }
    };
    let table = if created_check {
        let mut table = Table::new();
        table["name"] = toml_edit::value(options.check_name.clone());
        table["kind"] = toml_edit::value("memory");
        table["phase"] = toml_edit::value(phase_name(phase));
        if let Some(h) = settings.half_life_days {
            table["half_life_days"] = toml_edit::value(h);
        }
        table.decor_mut().set_prefix(
            "\n# Policy memory built from reviewed cases by `keel policy candidate` (see the README's\n\
             # \"Policy memory\"): entries are clusters of labelled cases with their provenance.\n",
        );
        checks.push(table);
        let last = checks.len() - 1;
        checks.get_mut(last).ok_or_else(|| base_error("cannot add the memory check".into()))?
    } else {
        checks
            .iter_mut()
            .find(|t| t.get("name").and_then(Item::as_str) == Some(options.check_name.as_str()))
            .ok_or_else(|| base_error(format!("the memory check `{}` is not in this file", options.check_name)))?
    };
    table.remove("entries");
    if !entries.is_empty() {
        table.insert("entries", Item::ArrayOfTables(entries_toml(&entries)));
    }

    if created_check {
        let rules = match doc.get_mut("rules") {
            Some(item) => {
                item.as_array_of_tables_mut().ok_or_else(|| base_error("`rules` is not an array of tables".into()))?
            }
            None => {
                doc["rules"] = Item::ArrayOfTables(ArrayOfTables::new());
                doc["rules"].as_array_of_tables_mut().ok_or_else(|| base_error("cannot add rules".into()))?
            }
        };
        let mut rule = Table::new();
        rule["name"] = toml_edit::value(format!("{}-violation", options.check_name));
        rule["priority"] = toml_edit::value(i64::from(options.rule_priority));
        rule["phase"] = toml_edit::value(phase_name(phase));
        rule["when"] = toml_edit::value(options.check_name.clone());
        rule["action"] = toml_edit::value(options.violation_action.as_str());
        rule.decor_mut().set_prefix(format!(
            "\n# Texts the memory confidently remembers as violations (category in {}.kinds).\n",
            options.check_name
        ));
        rules.push(rule);
    }

    let lifted = lift(&mut doc, &options.lift_rules, &options.check_name).map_err(base_error)?;

    let text = doc.to_string();
    let candidate = Policy::parse_with(output_file, &text, models).map_err(|e| AdaptError::Candidate(e.to_string()))?;
    Ok(Candidate {
        sha256: candidate.source_sha256().to_string(),
        reference: candidate.reference(),
        text,
        parent,
        parent_sha256,
        report,
        created_check,
        lifted,
    })
}

/// Adds the "ok memory lifts this rule" clause to each named rule defined in the document.
fn lift(doc: &mut DocumentMut, names: &[String], check: &str) -> Result<Vec<String>, String> {
    let clause = format!("'{OK_KIND}' in {check}.kinds");
    let mut lifted = Vec::new();
    for name in names {
        let rule = doc
            .get_mut("rules")
            .and_then(Item::as_array_of_tables_mut)
            .and_then(|rules| rules.iter_mut().find(|r| r.get("name").and_then(Item::as_str) == Some(name.as_str())))
            .ok_or_else(|| {
                format!("rule `{name}` to lift is not defined in this file (rules inherited through `extends` cannot be changed here)")
            })?;
        let when = rule.get("when").and_then(Item::as_str).unwrap_or_default().to_string();
        if !when.contains(&clause) {
            rule["when"] = toml_edit::value(format!("({when}) and not ({clause})"));
        }
        lifted.push(name.clone());
    }
    Ok(lifted)
}

fn entries_toml(entries: &[MemoryEntry]) -> ArrayOfTables {
    let mut array = ArrayOfTables::new();
    for entry in entries {
        let mut table = Table::new();
        table["id"] = toml_edit::value(entry.id.clone());
        table["label"] = toml_edit::value(entry.label.as_str());
        if let Some(c) = &entry.category {
            table["category"] = toml_edit::value(c.clone());
        }
        let mut cases = Array::new();
        for case in &entry.cases {
            cases.push_formatted(Value::InlineTable(case_toml(case)).decorated("\n  ", ""));
        }
        cases.set_trailing("\n");
        cases.set_trailing_comma(true);
        table["cases"] = toml_edit::value(cases);
        array.push(table);
    }
    array
}

fn case_toml(case: &MemoryCase) -> InlineTable {
    let mut t = InlineTable::new();
    t.insert("case_id", case.case_id.clone().into());
    if let Some(id) = &case.interaction_id {
        t.insert("interaction_id", id.clone().into());
    }
    t.insert("reviewer", case.reviewer.clone().into());
    t.insert("labelled_at", case.labelled_at.clone().into());
    t.insert("label", case.label.as_str().into());
    if let Some(c) = &case.category {
        t.insert("category", c.clone().into());
    }
    if let Some(l) = &case.review_label {
        t.insert("review_label", l.clone().into());
    }
    t.insert("text", case.text.clone().into());
    t
}

fn phase_name(phase: PhaseSelector) -> &'static str {
    match phase {
        PhaseSelector::Input => "input",
        PhaseSelector::Output => "output",
        PhaseSelector::Both => "both",
    }
}

/// The version after `version`: `1.2.0` → `1.2.0-mem.1`, `1.2.0-mem.4` → `1.2.0-mem.5`.
pub fn next_version(version: &str) -> String {
    if let Some((head, n)) = version.rsplit_once("-mem.") {
        if let Ok(n) = n.parse::<u64>() {
            return format!("{head}-mem.{}", n + 1);
        }
    }
    format!("{version}-mem.1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_bump() {
        assert_eq!(next_version("1.0.0"), "1.0.0-mem.1");
        assert_eq!(next_version("1.0.0-mem.1"), "1.0.0-mem.2");
        assert_eq!(next_version("2-mem.x"), "2-mem.x-mem.1");
    }
}
