//! Text helpers the decisions need: redaction with typed placeholders and a language guess
//! that picks the English or Japanese reply.

use keel_core::Finding;

/// The placeholder that replaces a finding of `kind`: `email` → `[EMAIL]`.
pub fn placeholder(kind: &str) -> String {
    format!("[{}]", kind.to_uppercase())
}

/// Replaces every finding's span in `text` with its placeholder. Overlapping findings merge
/// into one placeholder (the kind of the first); spans outside the text or off char
/// boundaries are ignored rather than trusted.
pub fn redact(text: &str, findings: &[&Finding]) -> String {
    let mut spans: Vec<&Finding> = findings
        .iter()
        .copied()
        .filter(|f| {
            f.span.start < f.span.end
                && f.span.end <= text.len()
                && text.is_char_boundary(f.span.start)
                && text.is_char_boundary(f.span.end)
        })
        .collect();
    spans.sort_by_key(|f| (f.span.start, std::cmp::Reverse(f.span.end)));
    let mut out = String::with_capacity(text.len());
    let mut cursor = 0;
    for finding in spans {
        if finding.span.start < cursor {
            // Overlaps a span already replaced; extend the cut if it reaches further.
            cursor = cursor.max(finding.span.end);
            continue;
        }
        out.push_str(&text[cursor..finding.span.start]);
        out.push_str(&placeholder(&finding.kind));
        cursor = finding.span.end;
    }
    out.push_str(&text[cursor..]);
    out
}

/// The languages Keel replies in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// English, also the fallback.
    En,
    /// Japanese.
    Ja,
}

impl Lang {
    /// Guesses the language of `text`: Japanese when kana or kanji make up at least a fifth
    /// of its letters, English otherwise.
    pub fn detect(text: &str) -> Lang {
        let mut letters = 0usize;
        let mut japanese = 0usize;
        for c in text.chars() {
            if is_japanese(c) {
                japanese += 1;
                letters += 1;
            } else if c.is_alphabetic() {
                letters += 1;
            }
        }
        if letters > 0 && japanese * 5 >= letters {
            Lang::Ja
        } else {
            Lang::En
        }
    }

    /// The ISO 639-1 code.
    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Ja => "ja",
        }
    }
}

fn is_japanese(c: char) -> bool {
    matches!(c,
        '\u{3040}'..='\u{30ff}'   // hiragana, katakana
        | '\u{31f0}'..='\u{31ff}' // katakana extensions
        | '\u{ff66}'..='\u{ff9f}' // half-width katakana
        | '\u{4e00}'..='\u{9fff}' // CJK unified ideographs
        | '\u{3400}'..='\u{4dbf}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_core::Span;

    fn finding(kind: &str, start: usize, end: usize) -> Finding {
        Finding { kind: kind.into(), span: Span::new(start, end), message: None, detail: None }
    }

    #[test]
    fn redacts_spans_with_typed_placeholders() {
        let text = "mail a@b.co or call 090-1234-5678 now";
        let a = finding("email", 5, 11);
        let b = finding("phone", 20, 33);
        assert_eq!(redact(text, &[&b, &a]), "mail [EMAIL] or call [PHONE] now");
    }

    #[test]
    fn overlapping_spans_merge() {
        let text = "0123456789";
        let a = finding("x", 2, 6);
        let b = finding("y", 4, 8);
        assert_eq!(redact(text, &[&a, &b]), "01[X]89");
    }

    #[test]
    fn ignores_invalid_spans() {
        let text = "日本";
        let bad = finding("x", 1, 2);
        let out_of_range = finding("x", 2, 99);
        assert_eq!(redact(text, &[&bad, &out_of_range]), "日本");
    }

    #[test]
    fn detects_japanese() {
        assert_eq!(Lang::detect("注文した商品が届きません"), Lang::Ja);
        assert_eq!(Lang::detect("My order XR-200 has not arrived"), Lang::En);
        assert_eq!(Lang::detect("XR-200の保証について教えてください"), Lang::Ja);
        assert_eq!(Lang::detect(""), Lang::En);
    }
}
