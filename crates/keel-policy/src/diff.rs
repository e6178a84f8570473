//! What changed between two policy texts: a semantic diff (settings, messages, checks and
//! rules by name, field by field, and the order rules are tried in) and a unified text diff.
//!
//! Both texts are read as written (for stored versions: self-contained, see
//! [`crate::resolve`]); a changed `extends` shows as a changed setting.

use std::collections::BTreeSet;

use serde::Serialize;
use serde_json::Value;

use crate::file::PolicyFile;
use crate::source::{SourceError, TomlSource};

/// Which part of a policy a change is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Section {
    /// The name or version.
    Policy,
    /// `description`, `parent`, `parent_sha256`, `extends`, `on_check_error`, `stream_window_bytes`.
    Setting,
    /// The block and escalate replies.
    Message,
    /// A check, by name.
    Check,
    /// A rule, by name.
    Rule,
    /// The order in which rules that are in both versions are tried.
    RuleOrder,
}

/// Whether something was added, removed or changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// Only in the second version.
    Added,
    /// Only in the first version.
    Removed,
    /// In both, different.
    Changed,
}

/// One semantic change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// Where.
    pub section: Section,
    /// The check's or rule's name, or the setting's.
    pub name: String,
    /// What happened to it.
    pub change: ChangeKind,
    /// Field by field: `threshold: 0.5 → 0.7`, `words: +"refund"`.
    pub details: Vec<String>,
}

/// The difference between two policy texts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyDiff {
    /// The first version's label (`name@version` or a file).
    pub from: String,
    /// The second version's label.
    pub to: String,
    /// The semantic changes, in policy order: policy, settings, messages, checks, rules.
    pub changes: Vec<Change>,
    /// A unified diff of the two texts.
    pub text: String,
}

impl PolicyDiff {
    /// The diff for people: one line per change with its details, then the text diff.
    pub fn render(&self) -> String {
        let mut out = format!("{} → {}\n", self.from, self.to);
        if self.changes.is_empty() {
            out.push_str("  no semantic change\n");
        }
        for change in &self.changes {
            let mark = match change.change {
                ChangeKind::Added => "+",
                ChangeKind::Removed => "-",
                ChangeKind::Changed => "~",
            };
            let section = match change.section {
                Section::Policy => "policy",
                Section::Setting => "setting",
                Section::Message => "message",
                Section::Check => "check",
                Section::Rule => "rule",
                Section::RuleOrder => "order",
            };
            out.push_str(&format!("  {mark} {section} {}\n", change.name));
            for detail in &change.details {
                out.push_str(&format!("      {detail}\n"));
            }
        }
        if !self.text.is_empty() {
            out.push('\n');
            out.push_str(&self.text);
        }
        out
    }
}

/// Compares policy text `b` (the newer) with `a`.
pub fn diff(a_label: &str, a_text: &str, b_label: &str, b_text: &str) -> Result<PolicyDiff, SourceError> {
    let a: PolicyFile = TomlSource::new(a_label, a_text).deserialize()?;
    let b: PolicyFile = TomlSource::new(b_label, b_text).deserialize()?;
    let mut changes = Vec::new();
    for (field, old, new) in [("name", &a.name, &b.name), ("version", &a.version, &b.version)] {
        if old != new {
            changes.push(changed(Section::Policy, field, vec![format!("{old:?} → {new:?}")]));
        }
    }
    let settings = [
        ("description", json(&a.description), json(&b.description)),
        ("parent", json(&a.parent), json(&b.parent)),
        ("parent_sha256", json(&a.parent_sha256), json(&b.parent_sha256)),
        ("extends", json(&a.extends), json(&b.extends)),
        ("on_check_error", json(&a.on_check_error), json(&b.on_check_error)),
        ("stream_window_bytes", json(&a.stream_window_bytes), json(&b.stream_window_bytes)),
    ];
    for (name, old, new) in settings {
        if old != new {
            changes.push(changed(Section::Setting, name, vec![format!("{} → {}", show(&old), show(&new))]));
        }
    }
    let messages = fields(&json(&a.messages), &json(&b.messages), "");
    if !messages.is_empty() {
        changes.push(changed(Section::Message, "messages", messages));
    }
    named(Section::Check, &a.checks, &b.checks, |c| c.common().name.to_owned(), &mut changes);
    named(Section::Rule, &a.rules, &b.rules, |r| r.name.clone(), &mut changes);

    let order = |file: &PolicyFile, keep: &BTreeSet<&str>| -> Vec<String> {
        let mut rules: Vec<(i32, usize, &str)> = file
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| keep.contains(r.name.as_str()))
            .map(|(i, r)| (r.priority, i, r.name.as_str()))
            .collect();
        rules.sort();
        rules.into_iter().map(|(_, _, n)| n.to_owned()).collect()
    };
    let in_a: BTreeSet<&str> = a.rules.iter().map(|r| r.name.as_str()).collect();
    let in_b: BTreeSet<&str> = b.rules.iter().map(|r| r.name.as_str()).collect();
    let common: BTreeSet<&str> = in_a.intersection(&in_b).copied().collect();
    let (before, after) = (order(&a, &common), order(&b, &common));
    if before != after {
        changes.push(changed(
            Section::RuleOrder,
            "rules",
            vec![format!("before: {}", before.join(", ")), format!("after:  {}", after.join(", "))],
        ));
    }

    let text = similar::TextDiff::from_lines(a_text, b_text)
        .unified_diff()
        .context_radius(3)
        .header(a_label, b_label)
        .to_string();
    Ok(PolicyDiff { from: a_label.to_owned(), to: b_label.to_owned(), changes, text })
}

fn changed(section: Section, name: &str, details: Vec<String>) -> Change {
    Change { section, name: name.to_owned(), change: ChangeKind::Changed, details }
}

fn json<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

fn show(value: &Value) -> String {
    match value {
        Value::Null => "(unset)".to_owned(),
        other => other.to_string(),
    }
}

/// Added, removed and changed items of two lists keyed by name, in the order of `b` then `a`.
fn named<T: Serialize>(section: Section, a: &[T], b: &[T], name: impl Fn(&T) -> String, out: &mut Vec<Change>) {
    for item in b {
        let key = name(item);
        match a.iter().find(|old| name(old) == key) {
            None => out.push(Change { section, name: key, change: ChangeKind::Added, details: Vec::new() }),
            Some(old) => {
                let details = fields(&json(old), &json(item), "");
                if !details.is_empty() {
                    out.push(Change { section, name: key, change: ChangeKind::Changed, details });
                }
            }
        }
    }
    for item in a {
        let key = name(item);
        if !b.iter().any(|new| name(new) == key) {
            out.push(Change { section, name: key, change: ChangeKind::Removed, details: Vec::new() });
        }
    }
}

/// Field-by-field differences of two JSON values (`prefix` names where they are).
fn fields(old: &Value, new: &Value, prefix: &str) -> Vec<String> {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            let mut out = Vec::new();
            for key in keys {
                let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                let (x, y) = (a.get(key).unwrap_or(&Value::Null), b.get(key).unwrap_or(&Value::Null));
                if x != y {
                    out.extend(fields(x, y, &path));
                }
            }
            out
        }
        (Value::Array(a), Value::Array(b)) if a.iter().chain(b).all(|v| !v.is_object() && !v.is_array()) => {
            let added: Vec<String> = b.iter().filter(|v| !a.contains(v)).map(|v| format!("+{v}")).collect();
            let removed: Vec<String> = a.iter().filter(|v| !b.contains(v)).map(|v| format!("-{v}")).collect();
            let both: Vec<String> = added.into_iter().chain(removed).collect();
            if both.is_empty() {
                vec![format!("{}reordered", at(prefix))]
            } else {
                vec![format!("{}{}", at(prefix), both.join(", "))]
            }
        }
        _ if old == new => Vec::new(),
        _ => vec![format!("{}{} → {}", at(prefix), show(old), show(new))],
    }
}

/// `field: `, or nothing for a whole value.
fn at(prefix: &str) -> String {
    if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}: ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = r#"name = "support"
version = "1"
extends = "default"
[[checks]]
name = "recall"
kind = "keywords"
words = ["recall"]
threshold = 0.5
[[rules]]
name = "flag-recall"
when = "recall"
action = "flag"
[[rules]]
name = "old"
when = "recall.score > 0.9"
action = "block"
"#;

    const B: &str = r#"name = "support"
version = "2"
extends = "default"
stream_window_bytes = 128
[messages]
block = { en = "No." }
escalate = { en = "Wait.", ja = "お待ちください。" }
[[checks]]
name = "recall"
kind = "keywords"
words = ["recall", "リコール"]
threshold = 0.7
[[checks]]
name = "refund"
kind = "keywords"
words = ["refund"]
[[rules]]
name = "escalate-refund"
priority = 1
when = "refund"
action = "escalate"
[[rules]]
name = "flag-recall"
when = "recall"
action = "escalate"
"#;

    #[test]
    fn checks_rules_settings_and_messages_are_compared_by_name() {
        let d = diff("support@1", A, "support@2", B).unwrap();
        let summary: Vec<String> = d
            .changes
            .iter()
            .map(|c| format!("{:?} {:?} {}: {}", c.change, c.section, c.name, c.details.join("; ")))
            .collect();
        assert_eq!(summary, [
            "Changed Policy version: \"1\" → \"2\"",
            "Changed Setting stream_window_bytes: (unset) → 128",
            "Changed Message messages: (unset) → {\"block\":{\"en\":\"No.\"},\"escalate\":{\"en\":\"Wait.\",\"ja\":\"お待ちください。\"}}",
            "Changed Check recall: threshold: 0.5 → 0.7; words: +\"リコール\"",
            "Added Check refund: ",
            "Added Rule escalate-refund: ",
            "Changed Rule flag-recall: action: \"flag\" → \"escalate\"",
            "Removed Rule old: ",
        ]);
        assert!(d.text.starts_with("--- support@1\n+++ support@2\n"), "{}", d.text);
        assert!(d.text.contains("-version = \"1\"\n+version = \"2\"\n"), "{}", d.text);
        let rendered = d.render();
        assert!(rendered.contains("  ~ check recall\n      threshold: 0.5 → 0.7\n"), "{rendered}");
        assert!(rendered.contains("  - rule old\n"), "{rendered}");
    }

    #[test]
    fn a_change_of_rule_order_is_shown() {
        let a = "name = \"p\"\nversion = \"1\"\nextends = \"default\"\n[[rules]]\nname = \"a\"\nwhen = \"pii\"\naction = \"flag\"\n[[rules]]\nname = \"b\"\nwhen = \"pii\"\naction = \"block\"\n";
        let b = a.replace("name = \"b\"\n", "name = \"b\"\npriority = 1\n");
        let d = diff("a", a, "b", &b).unwrap();
        let order = d.changes.iter().find(|c| c.section == Section::RuleOrder).unwrap();
        assert_eq!(order.details, ["before: a, b", "after:  b, a"]);
    }

    #[test]
    fn identical_texts_have_no_changes() {
        let d = diff("a", A, "b", A).unwrap();
        assert!(d.changes.is_empty() && d.text.is_empty(), "{d:?}");
        assert!(d.render().contains("no semantic change"));
    }

    #[test]
    fn an_unreadable_text_is_located() {
        let err = diff("a", A, "b.toml", "name = \n").unwrap_err().to_string();
        assert!(err.starts_with("b.toml:1:"), "{err}");
    }
}
