//! Refusal detection: does a model's answer decline the request instead of answering it?
//!
//! Three shapes count, in English and Japanese: a plain decline ("I can't help with that",
//! "回答いたしかねます"), an apology that declines ("I'm sorry, but I cannot provide…",
//! "申し訳ございませんが、お応えできません"), and a hand-off instead of an answer ("I'm
//! connecting you with a member of our team", "担当者におつなぎします"). Support answers that
//! merely apologise ("Sorry for the delay, your order ships tomorrow") or state a fact about
//! the world ("we cannot ship to PO boxes") do not count: a decline needs a first-person
//! subject, a verb of helping or answering, and an object that is the request itself.
//!
//! Phrases are matched in normalized text (NFKC + lowercase), so full-width and mixed-case
//! spellings are found too; spans are reported in the original text.

use keel_core::{Finding, Span};
use regex::Regex;

use super::finding;
use super::normalize::Normalized;

/// A shape of refusal, with its finding kind and its score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Declines,
    ApologisesAndDeclines,
    HandsOff,
}

impl Shape {
    fn kind(self) -> &'static str {
        match self {
            Shape::Declines => "declines",
            Shape::ApologisesAndDeclines => "apologises_and_declines",
            Shape::HandsOff => "hands_off",
        }
    }

    fn score(self) -> f64 {
        match self {
            Shape::ApologisesAndDeclines => 1.0,
            Shape::Declines => 0.9,
            Shape::HandsOff => 0.8,
        }
    }
}

/// Every finding kind the detector reports, with its score.
pub const REFUSAL_KINDS: [(&str, f64); 3] = [("apologises_and_declines", 1.0), ("declines", 0.9), ("hands_off", 0.8)];

/// ASCII word boundary (Unicode `\b` is slow on Japanese text and not needed for English words).
const B: &str = r"(?-u:\b)";

/// "I can't", "we are unable to", "i'm not able to"… — the first-person inability.
const CANNOT: &str = r"(?:i|we)(?:\s+(?:really|simply|just|unfortunately|still))?(?:\s+(?:can['’]?t|cannot|can\s+not|won['’]?t|will\s+not|must\s+not|shouldn['’]?t|should\s+not|(?:am|are)\s+(?:unable|not\s+able|not\s+allowed|not\s+permitted)\s+to)|['’](?:m|re)\s+(?:unable|not\s+able|not\s+allowed|not\s+permitted)\s+to)";

/// Verbs of helping or answering that a refusal declines.
const HELP_VERBS: &str = r"(?:help|assist|provide|share|comply|fulfil|fulfill|answer|support|engage|generate|create|write|give|produce|offer|disclose|reveal|discuss|respond|tell|explain|accommodate|participate|do)";

/// What a refusal declines: the request itself, not a thing in the world ("a refund").
const THE_REQUEST: &str = r"(?:that|this|those|these|it|such|any|anything|so|here|your\s+(?:request|question)|the\s+(?:request|question)|with|on|in|information|instructions|details|content|assistance|help|advice|guidance)";

fn english_patterns() -> Vec<(Shape, String)> {
    vec![
        // I'm sorry, but I can't help with that. / Sorry, I cannot provide instructions…
        (
            Shape::ApologisesAndDeclines,
            format!(
                r"{B}(?:(?:i['’]?m|i\s+am|we['’]?re|we\s+are)\s+(?:really\s+|very\s+|so\s+|truly\s+)?(?:sorry|afraid)|sorry|apologies|i\s+apologi[sz]e|unfortunately)\s*[,.!;:]?\s*(?:but\s+)?(?:(?:i|we)\s+(?:have|need)\s+to\s+tell\s+you\s+(?:that\s+)?)?{CANNOT}\s+(?:(?:really|actually|directly|fully)\s+)?{HELP_VERBS}(?:\s+(?:you\s+)?(?:with\s+)?{THE_REQUEST}{B}|\s*[.!,;]|\s*$)"
            ),
        ),
        // I'm sorry, but that's not something I can help with.
        (
            Shape::ApologisesAndDeclines,
            format!(
                r"{B}(?:(?:i['’]?m|i\s+am)\s+(?:really\s+|very\s+|so\s+)?(?:sorry|afraid)|sorry|unfortunately)\s*[,.!;:]?\s*(?:but\s+)?(?:that|this)(?:['’]s|\s+is)\s+(?:not\s+something\s+(?:i|we)\s+can|something\s+(?:i|we)\s+(?:can['’]?t|cannot)|outside\s+(?:of\s+)?(?:what\s+(?:i|we)\s+can|my|our))\s*{HELP_VERBS}?"
            ),
        ),
        // I can't help with that. / I cannot provide instructions for… / I won't do that.
        (
            Shape::Declines,
            format!(
                r"{B}{CANNOT}\s+(?:(?:really|actually|directly|fully|in\s+good\s+conscience)\s+)?{HELP_VERBS}(?:\s+(?:you\s+)?(?:with\s+)?{THE_REQUEST}{B}|\s*[.!]|\s*$)"
            ),
        ),
        // I must decline. / I have to respectfully decline this request.
        (
            Shape::Declines,
            format!(
                r"{B}(?:i|we)\s+(?:must|have\s+to|need\s+to|will\s+have\s+to|['’]ll\s+have\s+to|am\s+going\s+to\s+have\s+to)\s+(?:respectfully\s+|politely\s+)?(?:decline|refuse){B}"
            ),
        ),
        // I'm not comfortable providing… / I am not going to help with that.
        (
            Shape::Declines,
            format!(
                r"{B}(?:i['’]?m|i\s+am)\s+not\s+(?:comfortable|going\s+to|willing\s+to|in\s+a\s+position\s+to)\s+(?:with\s+)?(?:help|assist|provid|shar|writ|creat|generat|answer|do(?:ing)?\s+that|giv|disclos|discuss|explain)"
            ),
        ),
        // That's not something I can help with. / This is something I cannot assist with.
        (
            Shape::Declines,
            format!(
                r"{B}(?:that|this)(?:['’]s|\s+is)\s+(?:not\s+something\s+(?:i|we)\s+(?:can|am\s+able\s+to)|something\s+(?:i|we)\s+(?:can['’]?t|cannot|won['’]?t))\s+(?:help|assist|do|provide|discuss|share|answer|support)"
            ),
        ),
        // As an AI language model, I cannot…
        (
            Shape::Declines,
            format!(
                r"{B}as\s+an?\s+(?:ai|artificial\s+intelligence)(?:\s+(?:language\s+model|assistant|model|chatbot))?\s*,?\s+(?:i|we)\s+(?:can['’]?t|cannot|don['’]?t|do\s+not|am\s+not\s+able|am\s+unable|won['’]?t|must\s+not|am\s+not\s+allowed)"
            ),
        ),
        // I'm connecting you with a member of our team. / Let me transfer you to an agent.
        (
            Shape::HandsOff,
            format!(
                r"{B}(?:(?:i['’]?m|i\s+am|we['’]?re|we\s+are)\s+(?:now\s+)?(?:connecting|transferring|handing|escalating|passing|forwarding)|(?:i|we)(?:['’]ll|\s+will)\s+(?:now\s+)?(?:connect|transfer|hand|escalate|pass|forward)|let\s+me\s+(?:connect|transfer|hand|escalate|pass)|i\s+(?:have|['’]ve)\s+(?:connected|transferred|escalated|handed))\s+(?:you|this|your\s+(?:request|question|conversation|case|chat))\s+(?:over\s+)?(?:to|with)\s+(?:a|an|one\s+of|our|the|my|someone|somebody|human|live|another)"
            ),
        ),
    ]
}

fn japanese_patterns() -> Vec<(Shape, String)> {
    // Polite and plain forms of "cannot do" (できません, いたしかねます, しかねます…).
    let cannot = r"(?:でき(?:ません|かねます|ない|ず)|いたしかねます|致しかねます|いたしかね|しかねます|出来(?:ません|かねます|ない))";
    let answer = r"(?:お応え|お答え|ご回答|回答|お手伝い|ご協力|ご提供|提供|お教え|教え|お伝え|ご案内|お引き受け|対応|サポート|ご支援|支援|生成|作成)";
    // Without an apology or a named request, only verbs that cannot mean "is compatible
    // with" (対応, サポート) or "cannot tell yet" (ご案内) count.
    let answer_only = r"(?:お応え|お答え|ご回答|回答|お手伝い|ご協力|ご提供|お教え|お引き受け)";
    let apology = r"(?:申し訳(?:ございません|ございませんが|ありません|ありませんが|ない|なく)|すみません|すいません|ごめんなさい|恐れ入りますが|恐縮ですが|残念(?:ながら|ですが))";
    let request = r"(?:ご?依頼|ご?要望|ご?要求|ご?質問|お問い?合わせ|リクエスト|内容|件|お願い|情報)";
    vec![
        // 申し訳ございませんが、そのご依頼にはお応えできません。
        (Shape::ApologisesAndDeclines, format!(r"{apology}[^。！？\n]{{0,40}}?{answer}(?:すること|いたすこと|は|が|も|を)?(?:は|が)?{cannot}")),
        // そのご依頼にはお応えできかねます / この質問には回答できません
        (Shape::Declines, format!(r"(?:その|この|こちらの|そちらの|そのような|このような|そういった|こういった|ご提示の)[^。！？\n]{{0,6}}?{request}(?:には|は|に|について(?:は)?|に関して(?:は)?|を)[^。！？\n]{{0,12}}?{answer}?(?:すること|は|が)?(?:は)?{cannot}")),
        // 回答いたしかねます / お答えすることはできません (with no apology)
        (Shape::Declines, format!(r"{answer_only}(?:すること|いたすこと)?(?:は|が)?(?:いたしかねます|致しかねます|しかねます|できかねます|出来かねます|することはできません|することができません|できません)")),
        // AIとしてお答えできません / AIなので…できません
        (Shape::Declines, format!(r"(?:aiとして|aiなので|aiですので|言語モデルとして)[^。！？\n]{{0,20}}?{cannot}")),
        // 担当者におつなぎします / オペレーターにお繋ぎいたします / 担当部署へ引き継ぎます
        (Shape::HandsOff, r"(?:担当者?|担当部署|担当チーム|チーム|オペレーター|スタッフ|専門(?:の)?(?:者|スタッフ|窓口|部署|チーム)|係員|人間|有人)(?:に|へ)(?:お?つなぎ|お?繋ぎ|おつなぎ|転送|お?引き継ぎ|お?引継ぎ|引き継|エスカレーション)(?:します|いたします|致します|しております|させていただきます|いたしますので|しますので)".to_string()),
    ]
}

/// Finds refusals in a model's answer and scores them.
#[derive(Debug, Clone)]
pub struct RefusalDetector {
    english: Vec<(Shape, Regex)>,
    japanese: Vec<(Shape, Regex)>,
}

impl Default for RefusalDetector {
    fn default() -> Self {
        Self::new()
    }
}

impl RefusalDetector {
    /// Compiles the phrase patterns (a pattern that does not compile is skipped: the
    /// `every_pattern_compiles` test keeps that from happening).
    pub fn new() -> Self {
        let compile = |patterns: Vec<(Shape, String)>| -> Vec<(Shape, Regex)> {
            patterns.into_iter().filter_map(|(shape, p)| Regex::new(&p).ok().map(|r| (shape, r))).collect()
        };
        RefusalDetector { english: compile(english_patterns()), japanese: compile(japanese_patterns()) }
    }

    /// Scores `text` in `[0, 1]` (the strongest shape found) and lists the evidence by position.
    pub fn scan(&self, text: &str) -> (f64, Vec<Finding>) {
        self.scan_in(&Normalized::new(text))
    }

    /// True when `text` refuses (any shape found).
    pub fn refuses(&self, text: &str) -> bool {
        !self.scan(text).1.is_empty()
    }

    /// Like [`RefusalDetector::scan`] for a text already normalized, so several detectors can
    /// share one normalization.
    pub fn scan_in(&self, normalized: &Normalized) -> (f64, Vec<Finding>) {
        let hay = normalized.text.as_str();
        let mut found: Vec<(Shape, Span)> = Vec::new();
        let japanese: &[(Shape, Regex)] = if hay.is_ascii() { &[] } else { &self.japanese };
        for (shape, regex) in self.english.iter().chain(japanese) {
            for m in regex.find_iter(hay) {
                let span = normalized.original_span(m.start(), m.end());
                if !span.is_empty() {
                    found.push((*shape, span));
                }
            }
        }
        // One finding per stretch of text: overlapping matches keep the strongest shape.
        found.sort_by(|a, b| a.1.start.cmp(&b.1.start).then(b.0.score().total_cmp(&a.0.score())));
        let mut findings: Vec<Finding> = Vec::with_capacity(found.len());
        let mut kept: Vec<Shape> = Vec::with_capacity(found.len());
        for (shape, span) in found {
            if let (Some(last), Some(last_shape)) = (findings.last_mut(), kept.last_mut()) {
                if span.start < last.span.end {
                    if shape.score() > last_shape.score() {
                        *last = finding(shape.kind(), Span::new(last.span.start, last.span.end.max(span.end)));
                        *last_shape = shape;
                    } else {
                        last.span.end = last.span.end.max(span.end);
                    }
                    continue;
                }
            }
            findings.push(finding(shape.kind(), span));
            kept.push(shape);
        }
        let score = kept.iter().map(|s| s.score()).fold(0.0, f64::max);
        (score, findings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    /// One detector for every test: compiling the patterns dominates an unoptimised test run.
    fn detector() -> &'static RefusalDetector {
        static DETECTOR: OnceLock<RefusalDetector> = OnceLock::new();
        DETECTOR.get_or_init(RefusalDetector::new)
    }

    fn kinds(text: &str) -> Vec<&'static str> {
        let (_, findings) = detector().scan(text);
        findings.iter().map(|f| REFUSAL_KINDS.iter().find(|(k, _)| *k == f.kind).map_or("?", |(k, _)| *k)).collect()
    }

    #[test]
    fn every_pattern_compiles() {
        for (_, p) in english_patterns().into_iter().chain(japanese_patterns()) {
            assert!(Regex::new(&p).is_ok(), "{p}");
        }
        let d = detector();
        assert_eq!(d.english.len(), english_patterns().len());
        assert_eq!(d.japanese.len(), japanese_patterns().len());
    }

    #[test]
    fn english_refusals_are_found() {
        for text in [
            "I can't help with that.",
            "I cannot provide instructions for making explosives.",
            "I won't do that.",
            "I'm unable to assist with this request.",
            "I am not able to share that information.",
            "I must respectfully decline.",
            "I'm not comfortable providing that kind of advice.",
            "That's not something I can help with.",
            "As an AI language model, I cannot browse the internet.",
            "I CAN’T HELP WITH THAT REQUEST.",
            "Ｉ ｃａｎｎｏｔ ｈｅｌｐ ｗｉｔｈ ｔｈａｔ.",
        ] {
            assert_eq!(kinds(text), vec!["declines"], "{text}");
        }
        for text in [
            "Sorry, I can't help with that request.",
            "I'm sorry, but I cannot assist with that.",
            "I'm afraid I can't answer that.",
            "Unfortunately, I am unable to provide that information.",
            "I'm sorry, but that's not something I can help with.",
            "Apologies, but I won't write that.",
        ] {
            assert_eq!(kinds(text), vec!["apologises_and_declines"], "{text}");
        }
        for text in [
            "I'm connecting you with a member of our support team. They will reply here shortly.",
            "Let me transfer you to a human agent.",
            "I'll hand this over to our safety team.",
        ] {
            assert_eq!(kinds(text), vec!["hands_off"], "{text}");
        }
    }

    #[test]
    fn japanese_refusals_are_found() {
        for text in [
            "申し訳ございませんが、そのご依頼にはお応えできません。",
            "申し訳ありませんが、その質問にはお答えできかねます。",
            "すみません、お手伝いできません。",
        ] {
            assert_eq!(kinds(text), vec!["apologises_and_declines"], "{text}");
        }
        for text in [
            "その質問には回答いたしかねます。",
            "この件についてはお答えすることはできません。",
            "AIとしてお答えできません。",
        ] {
            assert_eq!(kinds(text), vec!["declines"], "{text}");
        }
        for text in ["担当者におつなぎします。まもなくこちらでご返信いたします。", "オペレーターにお繋ぎいたします。"]
        {
            assert_eq!(kinds(text), vec!["hands_off"], "{text}");
        }
    }

    #[test]
    fn support_answers_that_say_sorry_are_not_refusals() {
        for text in [
            "Sorry for the delay! Your order ships tomorrow.",
            "I'm sorry to hear your blender stopped working. Here is how to get a replacement: bring it with your receipt.",
            "We're sorry for the inconvenience. I've issued a refund to your card.",
            "I can't wait to hear how you like it!",
            "We cannot ship to PO boxes, but we can deliver to a nearby pickup point.",
            "I can't provide a refund without a receipt, but an exchange is possible.",
            "If the blade won't turn, unplug the unit and check the jar is seated.",
            "You can't use the XR-200 with hot liquids above 80°C.",
            "Please contact our support team at support@example.com if anything goes wrong.",
            "The warranty doesn't cover water damage.",
            "Sorry, I meant the XR-300. It has a three-year warranty.",
            "ご不便をおかけして申し訳ございません。交換品を本日発送いたします。",
            "申し訳ございませんが、在庫切れのため入荷は来週になります。",
            "保証期間はご購入日から2年間です。",
            "お手数ですが、レシートをご用意ください。",
            "",
        ] {
            assert!(kinds(text).is_empty(), "{text}: {:?}", kinds(text));
        }
    }

    #[test]
    fn keels_own_replies_are_refusals() {
        let default_pack = crate::DEFAULT_PACK;
        for text in [
            "Sorry, I can't help with that request.",
            "申し訳ございませんが、そのご依頼にはお応えできません。",
            "I'm connecting you with a member of our support team. They will reply here shortly.",
            "担当者におつなぎします。まもなくこちらでご返信いたします。",
        ] {
            assert!(default_pack.contains(text), "the default pack changed its messages: {text}");
            assert!(detector().refuses(text), "{text}");
        }
    }

    #[test]
    fn score_is_the_strongest_shape_and_spans_point_at_the_phrase() {
        let text = "Here is the manual. I'm sorry, but I can't help with the rest. I'll transfer you to a human agent.";
        let (score, findings) = detector().scan(text);
        assert_eq!(score, 1.0);
        let kinds: Vec<&str> = findings.iter().map(|f| f.kind.as_str()).collect();
        assert_eq!(kinds, vec!["apologises_and_declines", "hands_off"]);
        assert!(text[findings[0].span.start..findings[0].span.end].starts_with("I'm sorry"));
        let (score, _) = detector().scan("Let me connect you with our team.");
        assert_eq!(score, 0.8);
    }

    proptest! {
        #[test]
        fn arbitrary_text_gives_valid_spans_and_score(text in any::<String>()) {
            let (score, findings) = detector().scan(&text);
            prop_assert!((0.0..=1.0).contains(&score));
            prop_assert_eq!(score > 0.0, !findings.is_empty());
            let mut last_end = 0;
            for f in &findings {
                prop_assert!(f.span.start < f.span.end && f.span.end <= text.len());
                prop_assert!(text.is_char_boundary(f.span.start) && text.is_char_boundary(f.span.end));
                prop_assert!(f.span.start >= last_end);
                last_end = f.span.end;
            }
        }

        #[test]
        fn a_refusal_is_found_wherever_it_sits(
            pre in "[a-zA-Z0-9 ,.]{0,40}",
            post in "[a-zA-Z0-9 ,.]{0,40}",
            refusal in prop::sample::select(vec![
                "I can't help with that.", "I'm sorry, but I cannot assist with that.", "I must decline.",
                "申し訳ございませんが、お応えできません。", "担当者におつなぎします。",
            ]),
        ) {
            let text = format!("{pre}. {refusal} {post}");
            prop_assert!(detector().refuses(&text), "{}", text);
        }

        #[test]
        fn apologies_alone_never_refuse(
            apology in prop::sample::select(vec!["Sorry for the wait.", "I'm sorry to hear that.", "We apologise for the trouble.", "ご迷惑をおかけして申し訳ございません。"]),
            answer in prop::sample::select(vec!["Your order ships tomorrow.", "The warranty is two years.", "交換品を発送しました。", "Here is the manual."]),
        ) {
            let text = format!("{apology} {answer}");
            prop_assert!(!detector().refuses(&text), "{}", text);
        }
    }
}
