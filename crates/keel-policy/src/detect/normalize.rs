//! Text normalization shared by the detectors, with a map back to the original text.
//!
//! Users (and attackers) write the same thing in many code points: full-width `ＡＢＣ１２３`,
//! half-width katakana `ﾊﾟｽﾜｰﾄﾞ`, upper and lower case. Detectors match on one canonical form
//! (NFKC, then lowercase) but must report spans in the text they were given, so
//! [`Normalized`] keeps a compact map from normalized byte offsets to original ones.

use keel_core::Span;
use unicode_normalization::char::{canonical_combining_class, decompose_compatible};
use unicode_normalization::{is_nfkc_quick, IsNormalized, UnicodeNormalization};

/// One run of the map: from `norm`/`orig` up to the next segment's offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    /// Start of the run in the normalized text.
    norm: usize,
    /// Start of the run in the original text.
    orig: usize,
    /// Byte-for-byte aligned run (offsets shift together); otherwise one rewritten group.
    aligned: bool,
}

/// A text in normalized form (NFKC + lowercase) that remembers where each part came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized {
    /// The normalized text that detectors match against.
    pub text: String,
    /// Sorted by `norm` (and `orig`); the last entry is a sentinel at both texts' ends.
    segments: Vec<Segment>,
}

impl Normalized {
    /// Normalizes `original`, keeping the map back to its byte offsets.
    pub fn new(original: &str) -> Normalized {
        if original.is_ascii() {
            // Lowercasing ASCII keeps every offset, so the whole text is one aligned run.
            return Normalized {
                text: original.to_ascii_lowercase(),
                segments: vec![
                    Segment { norm: 0, orig: 0, aligned: true },
                    Segment { norm: original.len(), orig: original.len(), aligned: true },
                ],
            };
        }
        let mut builder = Builder::new(original);
        let bytes = original.as_bytes();
        // The pending group is `group_start..i`; it is not yet decided whether it is stable.
        let mut group_start = 0;
        let mut group_stable = true;
        let mut group_multi = false;
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] < 0x80 {
                if i > group_start {
                    builder.close_group(group_start, i, group_stable, group_multi);
                }
                let mut j = i + 1;
                while j < bytes.len() && bytes[j] < 0x80 {
                    j += 1;
                }
                // Every ASCII char is a stable starter; only the last one of the run can take
                // following combining marks, so it opens the next pending group.
                group_start = j - 1;
                group_stable = true;
                group_multi = false;
                i = j;
                continue;
            }
            if let Some(end) = fast_stable_run(bytes, i) {
                if i > group_start {
                    builder.close_group(group_start, i, group_stable, group_multi);
                }
                // Like an ASCII run: only the last char can take following marks.
                group_start = end - 3;
                group_stable = true;
                group_multi = false;
                i = end;
                continue;
            }
            let Some(c) = original[i..].chars().next() else {
                break;
            };
            let (starter, stable) = classify(c);
            if starter {
                if i > group_start {
                    builder.close_group(group_start, i, group_stable, group_multi);
                }
                group_start = i;
                group_stable = stable;
                group_multi = false;
            } else {
                group_stable &= stable;
                group_multi |= i > group_start;
            }
            i += c.len_utf8();
        }
        if bytes.len() > group_start {
            builder.close_group(group_start, bytes.len(), group_stable, group_multi);
        }
        builder.finish()
    }

    /// Maps the byte range `start..end` of [`Normalized::text`] back to the original text.
    ///
    /// Out-of-range or reversed bounds are clamped; a range that touches a rewritten group
    /// covers the whole original group. The result always lies on the original's char
    /// boundaries.
    pub fn original_span(&self, start: usize, end: usize) -> Span {
        let len = self.text.len();
        let mut start = start.min(len);
        let mut end = end.min(len).max(start);
        while !self.text.is_char_boundary(start) {
            start -= 1;
        }
        while !self.text.is_char_boundary(end) {
            end += 1;
        }
        let orig_start = self.map_start(start);
        let orig_end = if end == start { orig_start } else { self.map_end(end) };
        Span::new(orig_start, orig_end.max(orig_start))
    }

    /// Byte length of the original text this was built from.
    pub fn original_len(&self) -> usize {
        self.segments.last().map_or(0, |s| s.orig)
    }

    /// True when the normalized text has the same offsets as the original (no rewritten group).
    pub fn is_aligned(&self) -> bool {
        self.segments.iter().all(|s| s.aligned)
    }

    /// Index of the segment that holds normalized byte `pos` (the sentinel for the end).
    fn segment_at(&self, pos: usize) -> usize {
        self.segments.partition_point(|s| s.norm <= pos).saturating_sub(1)
    }

    fn map_start(&self, pos: usize) -> usize {
        let seg = self.segments[self.segment_at(pos)];
        if seg.aligned {
            seg.orig + (pos - seg.norm)
        } else {
            seg.orig
        }
    }

    /// Maps an exclusive end; `pos` is greater than 0.
    fn map_end(&self, pos: usize) -> usize {
        let idx = self.segment_at(pos - 1);
        let seg = self.segments[idx];
        if seg.aligned {
            seg.orig + (pos - seg.norm)
        } else {
            self.segments.get(idx + 1).map_or(seg.orig, |next| next.orig)
        }
    }
}

/// Normalizes a pattern exactly as [`Normalized::new`] normalizes text, so the two match.
pub fn normalize(s: &str) -> String {
    Normalized::new(s).text
}

/// Accumulates the normalized text and its map; aligned runs are copied lazily in bulk.
struct Builder<'a> {
    original: &'a str,
    text: String,
    segments: Vec<Segment>,
    /// Start of the original bytes that are aligned but not yet copied into `text`.
    pending: usize,
}

impl<'a> Builder<'a> {
    fn new(original: &'a str) -> Self {
        Builder {
            original,
            text: String::with_capacity(original.len() + original.len() / 4),
            segments: Vec::new(),
            pending: 0,
        }
    }

    fn mark(&mut self, norm: usize, orig: usize, aligned: bool) {
        // Consecutive aligned runs stay contiguous in both texts, so one segment covers them.
        if aligned && self.segments.last().is_some_and(|s| s.aligned) {
            return;
        }
        self.segments.push(Segment { norm, orig, aligned });
    }

    fn flush_pending(&mut self, upto: usize) {
        if upto <= self.pending {
            return;
        }
        let norm = self.text.len();
        self.mark(norm, self.pending, true);
        self.text.push_str(&self.original[self.pending..upto]);
        // Uppercase ASCII keeps its width, so lowercasing it keeps the run aligned.
        self.text[norm..].make_ascii_lowercase();
        self.pending = upto;
    }

    fn close_group(&mut self, start: usize, end: usize, stable: bool, multi: bool) {
        let group = &self.original[start..end];
        if stable && (!multi || is_nfkc_quick(group.chars()) == IsNormalized::Yes) {
            return; // stays in the pending aligned run
        }
        self.flush_pending(start);
        let norm = self.text.len();
        if !multi {
            if let Some(ascii) = group.chars().next().and_then(full_width_ascii) {
                self.text.push(char::from(ascii.to_ascii_lowercase()));
                self.mark(norm, start, false);
                self.pending = end;
                return;
            }
        }
        for c in group.nfkc() {
            for l in c.to_lowercase() {
                self.text.push(l);
            }
        }
        let unchanged = self.text.as_bytes()[norm..] == *group.as_bytes();
        self.mark(norm, start, unchanged);
        self.pending = end;
    }

    fn finish(mut self) -> Normalized {
        self.flush_pending(self.original.len());
        self.segments.push(Segment { norm: self.text.len(), orig: self.original.len(), aligned: true });
        Normalized { text: self.text, segments: self.segments }
    }
}

/// The ASCII char NFKC maps a full-width form (or the ideographic space) to.
///
/// These are the most common rewritten chars in Japanese text; mapping them directly skips
/// the general decomposition tables.
#[inline]
fn full_width_ascii(c: char) -> Option<u8> {
    match c as u32 {
        cp @ 0xFF01..=0xFF5E => u8::try_from(cp - 0xFEE0).ok(),
        0x3000 => Some(b' '),
        _ => None,
    }
}

/// Whether `c` starts a group, and whether it is already normalized on its own.
#[inline]
fn classify(c: char) -> (bool, bool) {
    if fast_stable(c) {
        return (true, true);
    }
    if full_width_ascii(c).is_some() {
        return (true, false);
    }
    let mut first = None;
    decompose_compatible(c, |d| {
        if first.is_none() {
            first = Some(d);
        }
    });
    let starter = canonical_combining_class(first.unwrap_or(c)) == 0;
    let stable = is_nfkc_quick(std::iter::once(c)) == IsNormalized::Yes && lowercase_is_self(c);
    (starter, stable)
}

fn lowercase_is_self(c: char) -> bool {
    let mut lower = c.to_lowercase();
    lower.next() == Some(c) && lower.next().is_none()
}

/// End of the run of three-byte [`fast_stable`] chars starting at `i`, if there is one.
/// Decoding by hand keeps Japanese text on a tight loop.
#[inline]
fn fast_stable_run(bytes: &[u8], i: usize) -> Option<usize> {
    let mut j = i;
    while let Some(&[b0, b1, b2]) = bytes.get(j..j + 3) {
        if !(0xE3..=0xED).contains(&b0) {
            break;
        }
        let cp = (u32::from(b0 & 0x0F) << 12) | (u32::from(b1 & 0x3F) << 6) | u32::from(b2 & 0x3F);
        if !char::from_u32(cp).is_some_and(fast_stable) {
            break;
        }
        j += 3;
    }
    (j > i).then_some(j)
}

/// Common CJK ranges that NFKC and lowercase leave untouched, checked without table lookups
/// (a test verifies every code point in them).
#[inline]
fn fast_stable(c: char) -> bool {
    matches!(
        c as u32,
        0x3001..=0x3003
            | 0x3005..=0x301B
            | 0x3041..=0x3096
            | 0x309D..=0x309E
            | 0x30A1..=0x30FA
            | 0x30FC..=0x30FE
            | 0x3400..=0x4DBF
            | 0x4E00..=0x9FFF
            | 0xAC00..=0xD7A3
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn slice(n: &Normalized, original: &str, needle: &str) -> String {
        let start = n.text.find(needle).expect("needle in normalized text");
        let span = n.original_span(start, start + needle.len());
        original[span.start..span.end].to_string()
    }

    #[test]
    fn ascii_is_lowercased_and_aligned() {
        let n = Normalized::new("Hello WORLD");
        assert_eq!(n.text, "hello world");
        assert!(n.is_aligned());
        assert_eq!(n.original_span(6, 11), Span::new(6, 11));
    }

    #[test]
    fn full_width_becomes_ascii() {
        let original = "番号はＡＢＣ１２３です";
        let n = Normalized::new(original);
        assert_eq!(n.text, "番号はabc123です");
        assert_eq!(slice(&n, original, "abc123"), "ＡＢＣ１２３");
        assert_eq!(slice(&n, original, "c1"), "Ｃ１");
        assert_eq!(slice(&n, original, "です"), "です");
    }

    #[test]
    fn half_width_katakana_composes_with_dakuten() {
        assert_eq!(normalize("ｶﾞｲﾄﾞ"), "ガイド");
        assert_eq!(normalize("ﾊﾟｽﾜｰﾄﾞ"), "パスワード");
        let original = "xﾊﾟｽﾜｰﾄﾞy";
        let n = Normalized::new(original);
        assert_eq!(slice(&n, original, "パ"), "ﾊﾟ");
        assert_eq!(slice(&n, original, "パスワード"), "ﾊﾟｽﾜｰﾄﾞ");
        assert_eq!(slice(&n, original, "y"), "y");
    }

    #[test]
    fn combining_marks_join_the_previous_char() {
        let original = "CAFE\u{301} ok";
        let n = Normalized::new(original);
        assert_eq!(n.text, "caf\u{e9} ok");
        assert_eq!(slice(&n, original, "\u{e9}"), "E\u{301}");
        assert_eq!(slice(&n, original, "ca"), "CA");
        assert_eq!(slice(&n, original, "ok"), "ok");
    }

    #[test]
    fn expansion_maps_to_the_whole_group() {
        // U+3392 SQUARE MHZ expands to three chars.
        let original = "a\u{3392}b";
        let n = Normalized::new(original);
        assert_eq!(n.text, "amhzb");
        assert_eq!(n.original_span(2, 3), Span::new(1, 4));
        assert_eq!(n.original_span(4, 5), Span::new(4, 5));
    }

    #[test]
    fn stable_non_ascii_stays_aligned() {
        let original = "こんにちは世界、カタカナ。";
        let n = Normalized::new(original);
        assert_eq!(n.text, original);
        assert!(n.is_aligned());
        assert_eq!(n.original_len(), original.len());
    }

    #[test]
    fn empty_text() {
        let n = Normalized::new("");
        assert_eq!(n.text, "");
        assert_eq!(n.original_span(0, 0), Span::new(0, 0));
        assert_eq!(n.original_span(3, 9), Span::new(0, 0));
    }

    #[test]
    fn fast_ranges_are_really_stable() {
        for cp in 0x3000u32..=0xD7A3 {
            let Some(c) = char::from_u32(cp) else {
                continue;
            };
            if !fast_stable(c) {
                continue;
            }
            let s = c.to_string();
            let nfkc: String = s.nfkc().collect();
            assert_eq!(nfkc, s, "U+{cp:04X} changes under NFKC");
            assert!(lowercase_is_self(c), "U+{cp:04X} changes under lowercase");
            assert_eq!(canonical_combining_class(c), 0, "U+{cp:04X} is not a starter");
        }
    }

    #[test]
    fn full_width_shortcut_agrees_with_nfkc() {
        for cp in (0xFF01u32..=0xFF5E).chain([0x3000]) {
            let c = char::from_u32(cp).unwrap();
            let expected: String = c.to_string().nfkc().collect::<String>().to_lowercase();
            assert_eq!(normalize(&c.to_string()), expected, "U+{cp:04X}");
            let ascii = full_width_ascii(c).unwrap();
            assert_eq!(expected, char::from(ascii.to_ascii_lowercase()).to_string());
        }
        // A combining mark after a full-width letter still composes with it.
        assert_eq!(normalize("Ｅ\u{301}"), "\u{e9}");
    }

    #[test]
    fn matches_plain_nfkc_lowercase_on_common_text() {
        for s in ["ＡＢＣ１２３", "ｶﾞｲﾄﾞ", "Ｔｏｋｙｏ　Ｔｏｗｅｒ", "①②", "ﾃｽﾄ　ＤＡＴＡ"]
        {
            let expected: String = s.nfkc().collect::<String>().to_lowercase();
            assert_eq!(normalize(s), expected, "{s}");
        }
    }

    fn full_width(s: &str) -> String {
        s.chars()
            .map(|c| match c {
                '!'..='~' => char::from_u32(c as u32 - 0x21 + 0xFF01).unwrap_or(c),
                ' ' => '\u{3000}',
                _ => c,
            })
            .collect()
    }

    proptest! {
        #[test]
        fn original_span_is_in_bounds(s in "\\PC{0,40}", a in 0usize..200, b in 0usize..200) {
            let n = Normalized::new(&s);
            let span = n.original_span(a.min(b), a.max(b));
            prop_assert!(span.start <= span.end);
            prop_assert!(span.end <= s.len());
            prop_assert!(s.is_char_boundary(span.start));
            prop_assert!(s.is_char_boundary(span.end));
        }

        #[test]
        fn any_string_maps_on_boundaries(s in any::<String>(), a in 0usize..400, b in 0usize..400) {
            let n = Normalized::new(&s);
            prop_assert_eq!(n.original_len(), s.len());
            let span = n.original_span(a.min(b), a.max(b));
            prop_assert!(span.start <= span.end && span.end <= s.len());
            prop_assert!(s.is_char_boundary(span.start) && s.is_char_boundary(span.end));
            prop_assert_eq!(n.original_span(0, n.text.len()), Span::new(0, s.len()));
        }

        #[test]
        fn spans_are_monotonic(s in "[a-zＡ-Ｚ０-９ｱ-ﾝﾞﾟ\u{301}あ-ん ]{0,30}") {
            let n = Normalized::new(&s);
            let mut last = 0;
            for (i, _) in n.text.char_indices() {
                let span = n.original_span(i, i);
                prop_assert!(span.start >= last);
                last = span.start;
            }
        }

        #[test]
        fn full_width_ascii_normalizes_to_lowercase(s in "[!-~]{1,30}") {
            prop_assert_eq!(normalize(&full_width(&s)), s.to_ascii_lowercase());
        }
    }
}
