//! Labelled cases: a reviewer's judgement of one interaction, as the review queue produces
//! them and as `keel policy candidate --from-labels FILE.jsonl` reads them (one JSON object per
//! line).
//!
//! ```json
//! {"case_id":"c-17","interaction_id":"0197…","text":"Should I buy an XR-200?","label":"violation","category":"product_recall","reviewer":"aiko","labelled_at":"2026-05-01T09:30:00Z"}
//! ```
//!
//! Fields: `case_id`, `text` (what the memory judges: the request for input memories),
//! `label` (`ok`, `violation`, `wrong_answer`, `over_refusal`), `reviewer`, `labelled_at`
//! (RFC 3339) are required; `category` (violations only: a lowercase identifier, default
//! `unspecified`), `interaction_id` and `correction` (what the answer should have been) are
//! optional. Unknown fields are errors, so a typo is not silently dropped.

use keel_policy::memory::{is_category, parse_time};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::error::{AdaptError, Result};

/// A reviewer's label, as the review queue records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReviewLabel {
    /// The interaction was fine.
    Ok,
    /// The policy should have intervened.
    Violation,
    /// The model's answer was wrong (corrections feed datasets, not the memory).
    WrongAnswer,
    /// The policy intervened on something fine.
    OverRefusal,
}

impl ReviewLabel {
    /// The name used in files and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ReviewLabel::Ok => "ok",
            ReviewLabel::Violation => "violation",
            ReviewLabel::WrongAnswer => "wrong_answer",
            ReviewLabel::OverRefusal => "over_refusal",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "ok" => ReviewLabel::Ok,
            "violation" => ReviewLabel::Violation,
            "wrong_answer" => ReviewLabel::WrongAnswer,
            "over_refusal" => ReviewLabel::OverRefusal,
            _ => return None,
        })
    }
}

/// One labelled case.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabelledCase {
    /// The review case's id; a later label of the same case supersedes an earlier one.
    pub case_id: String,
    /// The interaction the case was made from.
    pub interaction_id: Option<String>,
    /// The text the label is about.
    pub text: String,
    /// The reviewer's label.
    pub label: ReviewLabel,
    /// The violation category (violations only).
    pub category: Option<String>,
    /// Who labelled it.
    pub reviewer: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub labelled_at: OffsetDateTime,
    /// What the answer should have said (wrong answers and over-refusals).
    pub correction: Option<String>,
}

const FIELDS: &[&str] =
    &["case_id", "interaction_id", "text", "label", "category", "reviewer", "labelled_at", "correction"];

/// Reads labelled cases from JSON lines; blank lines are skipped. Errors name the file, the
/// line and the field.
pub fn parse_jsonl(file: &str, text: &str) -> Result<Vec<LabelledCase>> {
    let mut cases = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let number = index + 1;
        let error = |field: &str, message: String| AdaptError::Label {
            file: file.to_string(),
            line: number,
            field: field.to_string(),
            message,
        };
        let value: Value = serde_json::from_str(line).map_err(|e| error("-", format!("not a JSON object: {e}")))?;
        let Value::Object(object) = value else {
            return Err(error("-", "expected a JSON object, one per line".into()));
        };
        cases.push(case_from(&object).map_err(|(field, message)| error(field, message))?);
    }
    Ok(cases)
}

fn case_from(object: &Map<String, Value>) -> Result<LabelledCase, (&'static str, String)> {
    if let Some(unknown) = object.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(("-", format!("unknown field `{unknown}`, expected one of {}", FIELDS.join(", "))));
    }
    let string = |field: &'static str| -> Result<Option<String>, (&'static str, String)> {
        match object.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err((field, format!("expected a string, found {}", kind_of(other)))),
        }
    };
    let required = |field: &'static str| -> Result<String, (&'static str, String)> {
        match string(field)? {
            Some(s) if !s.trim().is_empty() => Ok(s),
            Some(_) => Err((field, "must not be empty".into())),
            None => Err((field, "missing".into())),
        }
    };
    let case_id = required("case_id")?;
    let text = required("text")?;
    let reviewer = required("reviewer")?;
    let label_text = required("label")?;
    let label = ReviewLabel::parse(&label_text).ok_or((
        "label",
        format!("unknown label `{label_text}`, expected one of ok, violation, wrong_answer, over_refusal"),
    ))?;
    let category = string("category")?;
    match (&category, label) {
        (Some(c), ReviewLabel::Violation) if !is_category(c) => {
            return Err((
                "category",
                format!(
                    "`{c}` is not a valid category (lowercase letters, digits and _, starting with a letter; not `ok`)"
                ),
            ))
        }
        (Some(_), other) if other != ReviewLabel::Violation => {
            return Err((
                "category",
                format!("only violation labels take a category (this one is `{}`)", other.as_str()),
            ))
        }
        _ => {}
    }
    let time_text = required("labelled_at")?;
    let labelled_at = parse_time(&time_text)
        .ok_or(("labelled_at", format!("`{time_text}` is not an RFC 3339 time such as 2026-05-01T09:30:00Z")))?;
    Ok(LabelledCase {
        case_id,
        interaction_id: string("interaction_id")?,
        text,
        label,
        category,
        reviewer,
        labelled_at,
        correction: string("correction")?,
    })
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Writes cases as JSON lines that [`parse_jsonl`] reads back.
pub fn to_jsonl(cases: &[LabelledCase]) -> String {
    let mut out = String::new();
    for case in cases {
        let mut object = Map::new();
        object.insert("case_id".into(), case.case_id.clone().into());
        if let Some(id) = &case.interaction_id {
            object.insert("interaction_id".into(), id.clone().into());
        }
        object.insert("text".into(), case.text.clone().into());
        object.insert("label".into(), case.label.as_str().into());
        if let Some(c) = &case.category {
            object.insert("category".into(), c.clone().into());
        }
        object.insert("reviewer".into(), case.reviewer.clone().into());
        object.insert("labelled_at".into(), format_time(case.labelled_at).into());
        if let Some(c) = &case.correction {
            object.insert("correction".into(), c.clone().into());
        }
        out.push_str(&Value::Object(object).to_string());
        out.push('\n');
    }
    out
}

/// RFC 3339 with a `Z` offset, as stored in memory entries.
pub fn format_time(time: OffsetDateTime) -> String {
    time.to_offset(time::UtcOffset::UTC)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| time.unix_timestamp().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GOOD: &str = r#"{"case_id":"c-1","interaction_id":"i-1","text":"Should I buy an XR-200?","label":"violation","category":"product_recall","reviewer":"aiko","labelled_at":"2026-05-01T09:30:00Z"}"#;

    fn err(line: &str) -> String {
        parse_jsonl("labels.jsonl", &format!("{GOOD}\n\n{line}\n")).unwrap_err().to_string()
    }

    #[test]
    fn reads_every_label_kind() {
        let text = format!(
            "{GOOD}\n{}\n{}\n{}\n",
            r#"{"case_id":"c-2","text":"t","label":"ok","reviewer":"ken","labelled_at":"2026-05-01T10:00:00+09:00"}"#,
            r#"{"case_id":"c-3","text":"t","label":"over_refusal","reviewer":"ken","labelled_at":"2026-05-02T00:00:00Z","correction":"Here is the recipe."}"#,
            r#"{"case_id":"c-4","text":"t","label":"wrong_answer","reviewer":"ken","labelled_at":"2026-05-02T00:00:00Z"}"#,
        );
        let cases = parse_jsonl("l.jsonl", &text).unwrap();
        assert_eq!(cases.len(), 4);
        assert_eq!(cases[0].category.as_deref(), Some("product_recall"));
        assert_eq!(cases[1].label, ReviewLabel::Ok);
        assert_eq!(format_time(cases[1].labelled_at), "2026-05-01T01:00:00Z");
        assert_eq!(cases[2].correction.as_deref(), Some("Here is the recipe."));
        assert_eq!(parse_jsonl("l.jsonl", &to_jsonl(&cases)).unwrap(), cases);
    }

    #[test]
    fn errors_name_file_line_and_field() {
        assert_eq!(err("{"), "labels.jsonl:3: -: not a JSON object: EOF while parsing an object at line 1 column 1");
        assert_eq!(err("[1]"), "labels.jsonl:3: -: expected a JSON object, one per line");
        assert!(err(&GOOD.replace("\"label\":\"violation\"", "\"label\":\"bad\""))
            .starts_with("labels.jsonl:3: label: unknown label `bad`"));
        assert_eq!(err(&GOOD.replace("\"reviewer\":\"aiko\",", "")), "labels.jsonl:3: reviewer: missing");
        assert_eq!(err(&GOOD.replace("\"aiko\"", "7")), "labels.jsonl:3: reviewer: expected a string, found a number");
        assert!(err(&GOOD.replace("2026-05-01T09:30:00Z", "May 1st"))
            .starts_with("labels.jsonl:3: labelled_at: `May 1st` is not an RFC 3339 time"));
        assert!(err(&GOOD.replace("\"violation\"", "\"ok\""))
            .starts_with("labels.jsonl:3: category: only violation labels take a category"));
        assert!(err(&GOOD.replace("product_recall", "Product Recall"))
            .starts_with("labels.jsonl:3: category: `Product Recall` is not a valid category"));
        assert!(err(&GOOD.replace("\"text\"", "\"txt\"")).starts_with("labels.jsonl:3: -: unknown field `txt`"));
        assert_eq!(err(&GOOD.replace("Should I buy an XR-200?", "  ")), "labels.jsonl:3: text: must not be empty");
    }

    proptest! {
        #[test]
        fn any_line_parses_or_names_its_line(line in "\\PC{0,120}") {
            match parse_jsonl("l.jsonl", &line) {
                Ok(cases) => prop_assert!(cases.len() <= 1),
                Err(e) => prop_assert!(e.to_string().starts_with("l.jsonl:1: "), "{}", e),
            }
        }

        #[test]
        fn written_cases_read_back(
            text in "\\PC{1,60}", reviewer in "[a-z]{1,8}", id in "[a-z0-9-]{1,12}",
            seconds in 0i64..4_000_000_000, violation in any::<bool>()
        ) {
            prop_assume!(!text.trim().is_empty());
            let case = LabelledCase {
                case_id: id,
                interaction_id: None,
                text,
                label: if violation { ReviewLabel::Violation } else { ReviewLabel::OverRefusal },
                category: violation.then(|| "product_recall".to_string()),
                reviewer,
                labelled_at: OffsetDateTime::from_unix_timestamp(seconds).unwrap(),
                correction: None,
            };
            prop_assert_eq!(parse_jsonl("l.jsonl", &to_jsonl(std::slice::from_ref(&case))).unwrap(), vec![case]);
        }
    }
}
