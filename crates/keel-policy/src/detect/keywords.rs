//! Keyword lists matched in one pass over normalized text.
//!
//! Policies list words in whatever form their authors type; matching both the words and the
//! text in normalized form makes `ＢＯＭＢ`, `Bomb` and `bomb` one word, and Aho-Corasick keeps
//! the cost independent of the list's length.

use aho_corasick::{AhoCorasick, Input, MatchKind};
use keel_core::Span;

use super::normalize::{normalize, Normalized};

/// Why a keyword list could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeywordError {
    /// The list has no words at all.
    #[error("the keyword list is empty")]
    EmptyList,
    /// One word is empty or only whitespace.
    #[error("keyword #{index} is empty")]
    EmptyWord {
        /// Position of the word in the list, from 0.
        index: usize,
    },
    /// The automaton could not be built (for example, the list is too large).
    #[error("cannot build the keyword matcher: {0}")]
    Build(String),
}

/// Which ends of a word need a word boundary in whole-word mode.
#[derive(Debug, Clone, Copy)]
struct Edges {
    start: bool,
    end: bool,
}

/// A compiled keyword list.
#[derive(Debug, Clone)]
pub struct KeywordMatcher {
    automaton: AhoCorasick,
    edges: Vec<Edges>,
    whole_word: bool,
}

impl KeywordMatcher {
    /// Compiles `words`; with `whole_word`, Latin words only match as whole words.
    pub fn new(words: &[String], whole_word: bool) -> Result<Self, KeywordError> {
        if words.is_empty() {
            return Err(KeywordError::EmptyList);
        }
        let mut patterns = Vec::with_capacity(words.len());
        let mut edges = Vec::with_capacity(words.len());
        for (index, word) in words.iter().enumerate() {
            let normalized = normalize(word.trim());
            let (Some(first), Some(last)) = (normalized.chars().next(), normalized.chars().last()) else {
                return Err(KeywordError::EmptyWord { index });
            };
            // Only words that start or end with a Latin letter or digit can run into a
            // longer word ("bomb" in "bombastic"); CJK words have no such neighbours.
            edges.push(Edges { start: first.is_ascii_alphanumeric(), end: last.is_ascii_alphanumeric() });
            patterns.push(normalized);
        }
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&patterns)
            .map_err(|e| KeywordError::Build(e.to_string()))?;
        Ok(KeywordMatcher { automaton, edges, whole_word })
    }

    /// Number of words in the list.
    pub fn len(&self) -> usize {
        self.edges.len()
    }

    /// Always false: an empty list is rejected at construction.
    pub fn is_empty(&self) -> bool {
        self.edges.is_empty()
    }

    /// Finds the words in `text`: original spans with the index of the word, by position.
    pub fn find(&self, text: &Normalized) -> Vec<(Span, usize)> {
        let hay = text.text.as_str();
        let mut out: Vec<(Span, usize)> = Vec::new();
        let mut push = |start: usize, end: usize, word: usize| {
            let span = text.original_span(start, end);
            // Two matches inside one rewritten group map to the same original group.
            if out.last().is_some_and(|(last, _)| last.end > span.start) {
                return;
            }
            out.push((span, word));
        };
        if !self.whole_word {
            for m in self.automaton.find_iter(hay) {
                push(m.start(), m.end(), m.pattern().as_usize());
            }
            return out;
        }
        let mut pos = 0;
        while pos < hay.len() {
            let Some(m) = self.automaton.find(Input::new(hay).range(pos..)) else {
                break;
            };
            let word = m.pattern().as_usize();
            if self.on_boundaries(hay, m.start(), m.end(), word) {
                push(m.start(), m.end(), word);
                pos = m.end();
            } else {
                // A rejected match may hide a valid one that starts inside it.
                pos = m.start() + hay[m.start()..].chars().next().map_or(1, char::len_utf8);
            }
        }
        out
    }

    fn on_boundaries(&self, hay: &str, start: usize, end: usize, word: usize) -> bool {
        let Some(edges) = self.edges.get(word) else {
            return true;
        };
        let before_ok = !edges.start || !hay.get(..start).and_then(|s| s.chars().next_back()).is_some_and(is_word_char);
        let after_ok = !edges.end || !hay.get(end..).and_then(|s| s.chars().next()).is_some_and(is_word_char);
        before_ok && after_ok
    }
}

/// A char that continues a Latin word. Kana and ideographs do not: Japanese writes Latin
/// words without spaces around them (`これはbombです`).
fn is_word_char(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphanumeric();
    }
    c.is_alphanumeric() && !is_cjk(c)
}

fn is_cjk(c: char) -> bool {
    matches!(
        c as u32,
        0x3000..=0x30FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0xFF66..=0xFF9F
            | 0xAC00..=0xD7A3 | 0x20000..=0x3FFFF
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn words(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn found(m: &KeywordMatcher, text: &str) -> Vec<(String, usize)> {
        let n = Normalized::new(text);
        m.find(&n).into_iter().map(|(s, i)| (text[s.start..s.end].to_string(), i)).collect()
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(KeywordMatcher::new(&[], false).err(), Some(KeywordError::EmptyList));
        let err = KeywordMatcher::new(&words(&["ok", " "]), false).err();
        assert_eq!(err, Some(KeywordError::EmptyWord { index: 1 }));
        assert_eq!(KeywordError::EmptyWord { index: 1 }.to_string(), "keyword #1 is empty");
    }

    #[test]
    fn whole_word_rejects_longer_words() {
        let m = KeywordMatcher::new(&words(&["bomb"]), true).unwrap();
        assert!(found(&m, "that was bombastic").is_empty());
        assert!(found(&m, "abomb").is_empty());
        assert_eq!(found(&m, "a Bomb!"), vec![("Bomb".to_string(), 0)]);
        assert_eq!(found(&m, "これはbombです"), vec![("bomb".to_string(), 0)]);
        let loose = KeywordMatcher::new(&words(&["bomb"]), false).unwrap();
        assert_eq!(found(&loose, "bombastic"), vec![("bomb".to_string(), 0)]);
    }

    #[test]
    fn rejected_match_does_not_hide_a_later_one() {
        let m = KeywordMatcher::new(&words(&["foo bar", "bar"]), true).unwrap();
        assert_eq!(found(&m, "xfoo bar"), vec![("bar".to_string(), 1)]);
    }

    #[test]
    fn normalized_forms_match() {
        let m = KeywordMatcher::new(&words(&["ＢＯＭＢ", "ﾊﾟｽﾜｰﾄﾞ", "爆弾"]), true).unwrap();
        assert_eq!(
            found(&m, "bomb と パスワード と 爆弾テロ と ｂｏｍｂ"),
            vec![
                ("bomb".to_string(), 0),
                ("パスワード".to_string(), 1),
                ("爆弾".to_string(), 2),
                ("ｂｏｍｂ".to_string(), 0),
            ]
        );
    }

    #[test]
    fn longest_word_wins() {
        let m = KeywordMatcher::new(&words(&["pass", "password"]), false).unwrap();
        assert_eq!(found(&m, "my password"), vec![("password".to_string(), 1)]);
    }

    fn full_width(s: &str) -> String {
        s.chars()
            .map(|c| match c {
                '!'..='~' => char::from_u32(c as u32 - 0x21 + 0xFF01).unwrap_or(c),
                _ => c,
            })
            .collect()
    }

    proptest! {
        #[test]
        fn spans_are_valid(text in any::<String>(), ww in any::<bool>()) {
            let m = KeywordMatcher::new(&words(&["a", "ab", "é", "ア", "1"]), ww).unwrap();
            let n = Normalized::new(&text);
            let mut last_end = 0;
            for (span, _) in m.find(&n) {
                prop_assert!(span.start < span.end && span.end <= text.len());
                prop_assert!(text.is_char_boundary(span.start) && text.is_char_boundary(span.end));
                prop_assert!(span.start >= last_end);
                last_end = span.end;
            }
        }

        #[test]
        fn full_width_keyword_is_found(word in "[a-z0-9]{2,10}", pre in "[a-z ]{0,10}", post in "[a-z ]{0,10}") {
            let m = KeywordMatcher::new(std::slice::from_ref(&word), true).unwrap();
            let fw = full_width(&word.to_uppercase());
            let text = format!("{pre} {fw} {post}");
            let hits = found(&m, &text);
            prop_assert!(hits.contains(&(fw, 0)), "{:?}", hits);
        }
    }
}
