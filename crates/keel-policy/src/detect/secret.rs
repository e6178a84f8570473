//! Credential detectors: provider API keys and tokens, JWTs, private keys and generic
//! `password = "…"` assignments.
//!
//! Leaked credentials in prompts or answers must be caught before they reach a model or a
//! log. Every credential shape starts with a fixed marker (`AKIA`, `ghp_`, `-----BEGIN`,
//! `password`…), so one Aho-Corasick pass finds all markers and a small hand-written
//! validator checks what follows each one; no per-kind regex scans the whole text.

use aho_corasick::{AhoCorasick, MatchKind};
use keel_core::{Finding, Span};

use super::finding;

const AWS_ACCESS_KEY: &str = "aws_access_key";
const GITHUB_TOKEN: &str = "github_token";
const OPENAI_KEY: &str = "openai_key";
const ANTHROPIC_KEY: &str = "anthropic_key";
const SLACK_TOKEN: &str = "slack_token";
const GOOGLE_API_KEY: &str = "google_api_key";
const STRIPE_KEY: &str = "stripe_key";
const JWT: &str = "jwt";
const PRIVATE_KEY: &str = "private_key";
const GENERIC_SECRET: &str = "generic_secret";

/// Every finding kind the detector reports.
pub const SECRET_KINDS: [&str; 10] = [
    AWS_ACCESS_KEY,
    GITHUB_TOKEN,
    OPENAI_KEY,
    ANTHROPIC_KEY,
    SLACK_TOKEN,
    GOOGLE_API_KEY,
    STRIPE_KEY,
    JWT,
    PRIVATE_KEY,
    GENERIC_SECRET,
];

/// What a marker announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    Aws,
    Github,
    GithubPat,
    OpenAi,
    Anthropic,
    Slack,
    Google,
    Stripe,
    Jwt,
    Pem,
    /// A name like `password` followed by `=` or `:` (`は` too in Japanese), or `Bearer`
    /// followed by a space, then the value.
    Keyword {
        bearer: bool,
        japanese: bool,
    },
}

/// Markers of provider tokens, matched exactly.
const TOKEN_MARKERS: &[(&str, Marker)] = &[
    ("AKIA", Marker::Aws),
    ("ASIA", Marker::Aws),
    ("ghp_", Marker::Github),
    ("gho_", Marker::Github),
    ("ghu_", Marker::Github),
    ("ghs_", Marker::Github),
    ("ghr_", Marker::Github),
    ("github_pat_", Marker::GithubPat),
    ("sk-", Marker::OpenAi),
    ("sk-ant-", Marker::Anthropic),
    ("xox", Marker::Slack),
    ("AIza", Marker::Google),
    ("sk_live_", Marker::Stripe),
    ("rk_live_", Marker::Stripe),
    ("eyJ", Marker::Jwt),
    ("-----BEGIN ", Marker::Pem),
];

/// Names of secrets in assignments, matched in lower, upper and capitalised case.
///
/// Spelling out the cases (instead of a case-insensitive automaton) keeps the automaton's
/// vectorised prefilter, which case-insensitive matching turns off.
const KEYWORDS: &[(&str, Marker)] = &[
    ("password", KEYWORD),
    ("passwd", KEYWORD),
    ("pwd", KEYWORD),
    ("secret", KEYWORD),
    ("token", KEYWORD),
    ("api_key", KEYWORD),
    ("apikey", KEYWORD),
    ("api-key", KEYWORD),
    ("access_key", KEYWORD),
    ("private_key", KEYWORD),
    ("bearer", Marker::Keyword { bearer: true, japanese: false }),
    ("パスワード", JA_KEYWORD),
    ("ﾊﾟｽﾜｰﾄﾞ", JA_KEYWORD),
    ("暗証番号", JA_KEYWORD),
    ("秘密鍵", JA_KEYWORD),
    ("トークン", JA_KEYWORD),
    ("APIキー", JA_KEYWORD),
];

const KEYWORD: Marker = Marker::Keyword { bearer: false, japanese: false };
const JA_KEYWORD: Marker = Marker::Keyword { bearer: false, japanese: true };

/// Shortest value a generic assignment must have to count as a secret.
const MIN_GENERIC_LEN: usize = 12;
/// Random-looking values have at least this many bits of entropy per char.
const MIN_GENERIC_ENTROPY: f64 = 3.0;
/// Longest quoted value considered.
const MAX_QUOTED: usize = 512;

/// Finds credentials in text.
#[derive(Debug, Clone)]
pub struct SecretDetector {
    markers: Option<AhoCorasick>,
    /// What each automaton pattern announces, by pattern id.
    kinds: Vec<Marker>,
}

impl Default for SecretDetector {
    fn default() -> Self {
        Self::new()
    }
}

impl SecretDetector {
    /// Builds the marker automaton once; reuse the detector across texts.
    pub fn new() -> Self {
        let (literals, kinds) = marker_patterns();
        SecretDetector { markers: build_markers(&literals).ok(), kinds }
    }

    /// Finds credentials in `text`, sorted by position and never overlapping.
    pub fn find(&self, text: &str) -> Vec<Finding> {
        let Some(markers) = &self.markers else {
            return Vec::new();
        };
        let t = text.as_bytes();
        let mut tokens: Vec<Finding> = Vec::new();
        let mut generic: Vec<Span> = Vec::new();
        let mut consumed = 0;
        let mut pem_end_cache: Option<Option<usize>> = None;
        for m in markers.find_iter(text) {
            if m.start() < consumed {
                continue;
            }
            let Some(&marker) = self.kinds.get(m.pattern().as_usize()) else {
                continue;
            };
            let (s, e) = (m.start(), m.end());
            if let Marker::Keyword { bearer, japanese } = marker {
                if let Some(span) = generic_value(text, s, e, bearer, japanese) {
                    generic.push(span);
                }
                continue;
            }
            // A token marker must not continue a longer token.
            if s > 0 && is_token_byte(&t[s - 1]) && marker != Marker::Pem {
                continue;
            }
            let found = match marker {
                Marker::Aws => aws(t, e).map(|end| (AWS_ACCESS_KEY, end)),
                Marker::Github => {
                    exact_run(t, e, 36, u8::is_ascii_alphanumeric, is_token_byte).map(|end| (GITHUB_TOKEN, end))
                }
                Marker::GithubPat => exact_run(t, e, 82, is_word_byte, is_token_byte).map(|end| (GITHUB_TOKEN, end)),
                Marker::OpenAi => keyish(t, e, 20).map(|end| (OPENAI_KEY, end)),
                Marker::Anthropic => keyish(t, e, 20).map(|end| (ANTHROPIC_KEY, end)),
                Marker::Slack => slack(t, e).map(|end| (SLACK_TOKEN, end)),
                Marker::Google => exact_run(t, e, 35, is_token_byte, is_token_byte).map(|end| (GOOGLE_API_KEY, end)),
                Marker::Stripe => {
                    let end = run_end(t, e, u8::is_ascii_alphanumeric);
                    (end - e >= 16 && !t.get(end).is_some_and(|&b| is_word_byte(&b))).then_some((STRIPE_KEY, end))
                }
                Marker::Jwt => jwt(t, s).map(|end| (JWT, end)),
                Marker::Pem => pem(text, s, e, &mut pem_end_cache).map(|end| (PRIVATE_KEY, end)),
                Marker::Keyword { .. } => None,
            };
            if let Some((kind, end)) = found {
                tokens.push(finding(kind, Span::new(s, end)));
                consumed = end;
            }
        }
        // A named value that is itself a recognised token is reported as that token.
        let mut out = tokens;
        for span in generic {
            if !out.iter().any(|f| f.span.overlaps(&span)) {
                out.push(finding(GENERIC_SECRET, span));
            }
        }
        out.sort_by_key(|f| (f.span.start, f.span.end));
        let mut last_end = 0;
        out.retain(|f| {
            let keep = f.span.start >= last_end;
            if keep {
                last_end = f.span.end;
            }
            keep
        });
        out
    }
}

/// Every literal the automaton looks for, with what it announces.
fn marker_patterns() -> (Vec<String>, Vec<Marker>) {
    let mut literals: Vec<String> = Vec::new();
    let mut kinds = Vec::new();
    for &(literal, marker) in TOKEN_MARKERS {
        literals.push(literal.to_string());
        kinds.push(marker);
    }
    for &(word, marker) in KEYWORDS {
        let mut capitalised = word.to_string();
        if let Some(first) = capitalised.get_mut(..1) {
            first.make_ascii_uppercase();
        }
        for variant in [word.to_string(), word.to_ascii_uppercase(), capitalised] {
            if !literals.contains(&variant) {
                literals.push(variant);
                kinds.push(marker);
            }
        }
    }
    (literals, kinds)
}

fn build_markers(literals: &[String]) -> Result<AhoCorasick, aho_corasick::BuildError> {
    AhoCorasick::builder().match_kind(MatchKind::LeftmostLongest).build(literals)
}

fn is_token_byte(b: &u8) -> bool {
    b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-'
}

fn is_word_byte(b: &u8) -> bool {
    b.is_ascii_alphanumeric() || *b == b'_'
}

fn run_end(t: &[u8], from: usize, ok: impl Fn(&u8) -> bool) -> usize {
    t.get(from..).map_or(from, |rest| from + rest.iter().take_while(|b| ok(b)).count())
}

/// Exactly `len` bytes accepted by `ok` after `from`, not followed by a `cont` byte.
fn exact_run(t: &[u8], from: usize, len: usize, ok: impl Fn(&u8) -> bool, cont: impl Fn(&u8) -> bool) -> Option<usize> {
    let body = t.get(from..from + len)?;
    let end = from + len;
    (body.iter().all(ok) && !t.get(end).is_some_and(cont)).then_some(end)
}

/// `AKIA`/`ASIA` + 16 uppercase letters or digits, at least one a digit (which keeps words
/// like `ASIAPACIFICREGIONS` out).
fn aws(t: &[u8], from: usize) -> Option<usize> {
    let end = exact_run(t, from, 16, |b| b.is_ascii_uppercase() || b.is_ascii_digit(), u8::is_ascii_alphanumeric)?;
    t[from..end].iter().any(u8::is_ascii_digit).then_some(end)
}

/// An OpenAI/Anthropic-style key body: at least `min` key chars with a letter and a digit.
fn keyish(t: &[u8], from: usize, min: usize) -> Option<usize> {
    let end = run_end(t, from, is_token_byte);
    let body = &t[from..end];
    let body = body
        .strip_prefix(b"proj-")
        .or_else(|| body.strip_prefix(b"svcacct-"))
        .or_else(|| body.strip_prefix(b"admin-"))
        .unwrap_or(body);
    let mixed = body.iter().any(u8::is_ascii_digit) && body.iter().any(u8::is_ascii_alphabetic);
    (body.len() >= min && mixed).then_some(end)
}

/// `xox` + one of `abprs` + `-` + a body of at least 10 chars with a digit.
fn slack(t: &[u8], from: usize) -> Option<usize> {
    if !matches!(t.get(from..from + 2)?, [b'a' | b'b' | b'p' | b'r' | b's', b'-']) {
        return None;
    }
    let from = from + 2;
    let end = run_end(t, from, |b| b.is_ascii_alphanumeric() || *b == b'-');
    let body = &t[from..end];
    (body.len() >= 10 && body.iter().any(u8::is_ascii_digit)).then_some(end)
}

/// `header.payload.signature`, base64url, header and payload both JSON objects (`eyJ`).
fn jwt(t: &[u8], s: usize) -> Option<usize> {
    let is_b64 = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-';
    let h_end = run_end(t, s, is_b64);
    if h_end - s < 10 || t.get(h_end) != Some(&b'.') {
        return None;
    }
    let p = h_end + 1;
    if !t.get(p..)?.starts_with(b"eyJ") {
        return None;
    }
    let p_end = run_end(t, p, is_b64);
    if p_end - p < 10 || t.get(p_end) != Some(&b'.') {
        return None;
    }
    let sig_end = run_end(t, p_end + 1, is_b64);
    (sig_end - (p_end + 1) >= 8 && t.get(sig_end).is_none_or(|b| *b != b'.')).then_some(sig_end)
}

/// A `-----BEGIN … PRIVATE KEY-----` header; the span runs to its END line when present.
fn pem(text: &str, s: usize, e: usize, end_cache: &mut Option<Option<usize>>) -> Option<usize> {
    let rest = text.get(e..)?;
    let label_len = find_within(rest.as_bytes(), b"-----", 48)?;
    let label = &rest[..label_len];
    if !label.ends_with("PRIVATE KEY") || !label.bytes().all(|b| b.is_ascii_uppercase() || b == b' ') {
        return None;
    }
    let header_end = e + label_len + 5;
    // Remember where the next END marker is, so many headers without one stay linear.
    let next_end = match *end_cache {
        Some(Some(pos)) if pos >= header_end => Some(pos),
        Some(None) => None,
        _ => {
            let found = text[header_end..].find("-----END ").map(|p| header_end + p);
            *end_cache = Some(found);
            found
        }
    };
    let Some(end_at) = next_end else {
        return Some(header_end);
    };
    let after = &text[end_at + 9..];
    match find_within(after.as_bytes(), b"-----", 48) {
        Some(n) if after[..n].ends_with("PRIVATE KEY") => Some(end_at + 9 + n + 5),
        _ => Some(header_end),
    }
    .filter(|&end| end > s)
}

/// Position of `needle` starting within the first `limit` bytes of `hay`.
fn find_within(hay: &[u8], needle: &[u8], limit: usize) -> Option<usize> {
    hay.windows(needle.len()).take(limit).position(|w| w == needle)
}

/// The value of an assignment to the keyword at `ks..ke`, when it looks like a secret.
fn generic_value(text: &str, ks: usize, ke: usize, bearer: bool, japanese: bool) -> Option<Span> {
    let t = text.as_bytes();
    if bearer && ks > 0 && t[ks - 1].is_ascii_alphanumeric() {
        return None;
    }
    let mut p = ke;
    if bearer {
        if t.get(p) != Some(&b' ') {
            return None;
        }
        p += 1;
    } else {
        // `"password": "…"` in JSON closes the key's quote first.
        if matches!(t.get(p), Some(b'"' | b'\'')) {
            p += 1;
        }
        p = skip_blanks(t, p);
        let rest = text.get(p..)?;
        let sep = [":=", "=>", "=", ":", "：", "＝"]
            .into_iter()
            .chain(japanese.then_some("は"))
            .find(|s| rest.starts_with(s))?;
        p = skip_blanks(t, p + sep.len());
    }
    let (start, end) = match t.get(p) {
        Some(&q @ (b'"' | b'\'' | b'`')) => {
            let body = text.get(p + 1..)?;
            let close = body
                .char_indices()
                .take_while(|&(i, c)| i < MAX_QUOTED && c != '\n')
                .find(|&(_, c)| c as u32 == u32::from(q))?
                .0;
            (p + 1, p + 1 + close)
        }
        _ => {
            let end = run_end(t, p, |&b| b.is_ascii_graphic() && !b"\"'`,;&<>)]}".contains(&b));
            (p, end)
        }
    };
    let value = text.get(start..end)?;
    // References to secrets kept elsewhere (`${DB_PASSWORD}`, `{{ token }}`) are not secrets.
    if value.starts_with(['$', '{', '<', '%']) {
        return None;
    }
    let chars = value.chars().count();
    (chars >= MIN_GENERIC_LEN && entropy(value) >= MIN_GENERIC_ENTROPY).then_some(Span::new(start, end))
}

fn skip_blanks(t: &[u8], mut p: usize) -> usize {
    while matches!(t.get(p), Some(b' ' | b'\t')) {
        p += 1;
    }
    p
}

/// Shannon entropy of `s` in bits per char.
fn entropy(s: &str) -> f64 {
    let mut ascii = [0u32; 128];
    let mut other: Vec<(char, u32)> = Vec::new();
    let mut total = 0u32;
    for c in s.chars() {
        total += 1;
        if c.is_ascii() {
            ascii[c as usize] += 1;
        } else if let Some(slot) = other.iter_mut().find(|(o, _)| *o == c) {
            slot.1 += 1;
        } else {
            other.push((c, 1));
        }
    }
    if total == 0 {
        return 0.0;
    }
    let total = f64::from(total);
    ascii
        .iter()
        .copied()
        .chain(other.iter().map(|&(_, n)| n))
        .filter(|&n| n > 0)
        .map(|n| {
            let p = f64::from(n) / total;
            -p * p.log2()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn found(text: &str) -> Vec<(String, String)> {
        SecretDetector::new()
            .find(text)
            .into_iter()
            .map(|f| (f.kind, text[f.span.start..f.span.end].to_string()))
            .collect()
    }

    fn one(kind: &str, s: &str) -> Vec<(String, String)> {
        vec![(kind.to_string(), s.to_string())]
    }

    const GH: &str = "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789";
    const JWT_SAMPLE: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";

    #[test]
    fn markers_build() {
        let (literals, kinds) = marker_patterns();
        assert_eq!(literals.len(), kinds.len());
        // Past 64 literals the automaton loses its vectorised prefilter.
        assert!(literals.len() <= 64, "{} literals", literals.len());
        assert!(build_markers(&literals).is_ok());
        assert!(SecretDetector::new().markers.is_some());
        assert!(literals.contains(&"Password".to_string()));
        assert!(literals.contains(&"API_KEY".to_string()));
    }

    #[test]
    fn aws_keys() {
        assert_eq!(found("key AKIAIOSFODNN7EXAMPLE ok"), one("aws_access_key", "AKIAIOSFODNN7EXAMPLE"));
        assert_eq!(found("ASIA1234567890ABCDEF"), one("aws_access_key", "ASIA1234567890ABCDEF"));
        assert!(found("AKIAIOSFODNN7EXAMPLEX").is_empty());
        assert!(found("xAKIAIOSFODNN7EXAMPLE").is_empty());
        assert!(found("akiaiosfodnn7example").is_empty());
        assert!(found("xoxz-1234567890abc").is_empty());
        assert!(found("ASIAPACIFICREGIONSXX").is_empty());
    }

    #[test]
    fn github_tokens() {
        assert_eq!(found(&format!("token {GH}.")), one("github_token", GH));
        assert!(found(&format!("{GH}x")).is_empty());
        assert!(found("ghp_short123").is_empty());
        let pat = format!("github_pat_{}", "A1b2_".repeat(16) + "Zz");
        assert_eq!(pat.len(), 11 + 82);
        assert_eq!(found(&format!("use {pat} now")), one("github_token", &pat));
    }

    #[test]
    fn openai_and_anthropic_keys() {
        let oa = "sk-proj-Abc123Def456Ghi789Jkl012Mno345";
        assert_eq!(found(&format!("OPENAI_API_KEY {oa}")), one("openai_key", oa));
        assert_eq!(found("sk-AbCdEfGhIjKlMnOp1234567890"), one("openai_key", "sk-AbCdEfGhIjKlMnOp1234567890"));
        let an = "sk-ant-api03-AbCdEfGhIjKlMnOpQrStUv1234567890";
        assert_eq!(found(&format!("key={an}")), one("anthropic_key", an));
        assert!(found("sk-this-is-a-very-long-slug-without-digits").is_empty());
        assert!(found("task-Abc123Def456Ghi789Jkl012").is_empty());
        assert!(found("sk-short1").is_empty());
    }

    #[test]
    fn slack_google_stripe() {
        let sl = "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx";
        assert_eq!(found(&format!("slack {sl}")), one("slack_token", sl));
        assert!(found("xoxb-abc").is_empty());
        let g = "AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q";
        assert_eq!(g.len(), 39);
        assert_eq!(found(&format!("key: {g}")), one("google_api_key", g));
        assert!(found("AIzaShort").is_empty());
        let st = "sk_live_4eC39HqLyjWDarjtT1zdp7dc";
        assert_eq!(found(&format!("stripe {st}")), one("stripe_key", st));
        assert_eq!(found("rk_live_51H8abcdEFGH1234ijkl"), one("stripe_key", "rk_live_51H8abcdEFGH1234ijkl"));
        assert!(found("sk_test_4eC39HqLyjWDarjtT1zdp7dc").is_empty());
    }

    #[test]
    fn jwts() {
        assert_eq!(found(&format!("Authorization: Bearer {JWT_SAMPLE}")), one("jwt", JWT_SAMPLE));
        assert!(found("eyJhbGciOiJIUzI1NiJ9.notjson.sig").is_empty());
        assert!(found("eyJhbGciOiJIUzI1NiJ9").is_empty());
    }

    #[test]
    fn private_keys() {
        let key = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\nabc\n-----END RSA PRIVATE KEY-----";
        assert_eq!(found(&format!("here:\n{key}\nthanks")), one("private_key", key));
        assert_eq!(
            found("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk"),
            one("private_key", "-----BEGIN OPENSSH PRIVATE KEY-----")
        );
        assert!(found("-----BEGIN PUBLIC KEY-----\nabc\n-----END PUBLIC KEY-----").is_empty());
        assert!(found("-----BEGIN CERTIFICATE-----").is_empty());
    }

    #[test]
    fn generic_assignments() {
        assert_eq!(found(r#"password = "Xk9#mP2$vL7qR4""#), one("generic_secret", "Xk9#mP2$vL7qR4"));
        assert_eq!(found("DB_PASSWORD=Xk9mP2vL7qR4tZ ok"), one("generic_secret", "Xk9mP2vL7qR4tZ"));
        assert_eq!(found(r#"{"api_key": "q8Zr3LmN5xTb7Kd1"}"#), one("generic_secret", "q8Zr3LmN5xTb7Kd1"));
        assert_eq!(found("token: a1B2c3D4e5F6g7H8"), one("generic_secret", "a1B2c3D4e5F6g7H8"));
        assert_eq!(found("パスワード：Xk9mP2vL7qR4tZです"), one("generic_secret", "Xk9mP2vL7qR4tZ"));
        assert_eq!(found("ﾊﾟｽﾜｰﾄﾞは Xk9mP2vL7qR4tZ"), one("generic_secret", "Xk9mP2vL7qR4tZ"));
        assert_eq!(found("Authorization: Bearer q8Zr3LmN5xTb7Kd1"), one("generic_secret", "q8Zr3LmN5xTb7Kd1"));
        // Low entropy, too short, references and non-assignments are not secrets.
        assert!(found(r#"password = "aaaaaaaaaaaaaaaa""#).is_empty());
        assert!(found("password = hunter2").is_empty());
        assert!(found("password: ${DB_PASSWORD_FROM_ENV}").is_empty());
        assert!(found("max_tokens: 4096").is_empty());
        assert!(found("token_url = https://example.com/oauth2/token/Xk9").is_empty());
        assert!(found("reset your password at the portal").is_empty());
    }

    #[test]
    fn named_token_is_reported_as_the_token() {
        let text = format!("api_key = \"{GH}\"");
        assert_eq!(found(&text), one("github_token", GH));
    }

    #[test]
    fn several_secrets_are_sorted() {
        let text = format!("a {GH} b AKIAIOSFODNN7EXAMPLE c {JWT_SAMPLE}");
        let kinds: Vec<String> = found(&text).into_iter().map(|(k, _)| k).collect();
        assert_eq!(kinds, ["github_token", "aws_access_key", "jwt"]);
    }

    #[test]
    fn entropy_is_bits_per_char() {
        assert_eq!(entropy("aaaa"), 0.0);
        assert!((entropy("abcd") - 2.0).abs() < 1e-9);
        assert!((entropy("あいうえ") - 2.0).abs() < 1e-9);
    }

    proptest! {
        #[test]
        fn arbitrary_text_gives_valid_spans(text in any::<String>()) {
            let mut last_end = 0;
            for f in SecretDetector::new().find(&text) {
                prop_assert!(f.span.start < f.span.end && f.span.end <= text.len());
                prop_assert!(text.is_char_boundary(f.span.start) && text.is_char_boundary(f.span.end));
                prop_assert!(f.span.start >= last_end);
                last_end = f.span.end;
                prop_assert!(SECRET_KINDS.contains(&f.kind.as_str()));
                prop_assert!(f.message.is_none() && f.detail.is_none());
            }
        }

        #[test]
        fn marker_soup_gives_valid_spans(parts in prop::collection::vec(
            prop::sample::select(vec!["sk-", "ghp_", "eyJ", ".", "=", " ", "\"", "password", "-----BEGIN ", "PRIVATE KEY-----", "-----END ", "Ab9", "パスワード", "：", "\n"]),
            0..30,
        )) {
            let text: String = parts.concat();
            for f in SecretDetector::new().find(&text) {
                prop_assert!(f.span.start < f.span.end && f.span.end <= text.len());
                prop_assert!(text.is_char_boundary(f.span.start) && text.is_char_boundary(f.span.end));
            }
        }
    }
}
