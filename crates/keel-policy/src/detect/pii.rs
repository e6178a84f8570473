//! Personal data detectors: emails, phone numbers, payment cards, My Number, IBANs, IP
//! addresses and postal codes.
//!
//! A bare regex flags every long number, so each candidate is validated (checksums, country
//! lengths, numbering plans) before it is reported. Candidates come from one pass over the
//! normalized text, which makes full-width digits and hyphens (`０９０－１２３４－５６７８`)
//! look like ASCII; spans are mapped back to the original text.

use std::net::Ipv6Addr;
use std::str::FromStr;

use keel_core::Finding;
use serde::{Deserialize, Serialize};

use super::finding;
use super::normalize::Normalized;

/// A family of personal data the detector can look for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PiiKind {
    /// Email addresses (`email`).
    Email,
    /// Phone numbers: E.164, North American and Japanese domestic (`phone`).
    Phone,
    /// Payment card numbers, Luhn-valid with a known issuer prefix (`credit_card`).
    CreditCard,
    /// Japanese individual numbers with a valid check digit (`my_number`).
    MyNumber,
    /// International bank account numbers with a valid checksum (`iban`).
    Iban,
    /// IPv4 and IPv6 addresses (`ipv4`, `ipv6`).
    IpAddress,
    /// Japanese, US ZIP+4 and UK postal codes (`postal_code`).
    PostalCode,
}

impl PiiKind {
    /// Every kind, in declaration order.
    pub const ALL: [PiiKind; 7] = [
        PiiKind::Email,
        PiiKind::Phone,
        PiiKind::CreditCard,
        PiiKind::MyNumber,
        PiiKind::Iban,
        PiiKind::IpAddress,
        PiiKind::PostalCode,
    ];

    /// The snake_case name used in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            PiiKind::Email => "email",
            PiiKind::Phone => "phone",
            PiiKind::CreditCard => "credit_card",
            PiiKind::MyNumber => "my_number",
            PiiKind::Iban => "iban",
            PiiKind::IpAddress => "ip_address",
            PiiKind::PostalCode => "postal_code",
        }
    }

    /// The finding kinds this family reports.
    pub fn finding_kinds(self) -> &'static [&'static str] {
        match self {
            PiiKind::Email => &[EMAIL],
            PiiKind::Phone => &[PHONE],
            PiiKind::CreditCard => &[CREDIT_CARD],
            PiiKind::MyNumber => &[MY_NUMBER],
            PiiKind::Iban => &[IBAN],
            PiiKind::IpAddress => &[IPV4, IPV6],
            PiiKind::PostalCode => &[POSTAL_CODE],
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

const EMAIL: &str = "email";
const PHONE: &str = "phone";
const CREDIT_CARD: &str = "credit_card";
const MY_NUMBER: &str = "my_number";
const IBAN: &str = "iban";
const IPV4: &str = "ipv4";
const IPV6: &str = "ipv6";
const POSTAL_CODE: &str = "postal_code";

/// Finds personal data of the configured kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PiiDetector {
    enabled: u8,
}

/// A validated match in normalized coordinates; `rank` orders overlapping kinds (lower wins).
#[derive(Debug, Clone, Copy)]
struct Candidate {
    start: usize,
    end: usize,
    kind: &'static str,
    rank: u8,
}

fn rank(kind: &str) -> u8 {
    match kind {
        IBAN => 0,
        CREDIT_CARD => 1,
        MY_NUMBER => 2,
        EMAIL => 3,
        IPV6 => 4,
        PHONE => 5,
        IPV4 => 6,
        _ => 7,
    }
}

impl PiiDetector {
    /// A detector for the given kinds (duplicates are harmless).
    pub fn new(kinds: &[PiiKind]) -> Self {
        PiiDetector { enabled: kinds.iter().fold(0, |acc, k| acc | k.bit()) }
    }

    fn on(&self, kind: PiiKind) -> bool {
        self.enabled & kind.bit() != 0
    }

    /// Finds personal data in `text`; spans are bytes of `text`.
    pub fn find(&self, text: &str) -> Vec<Finding> {
        if self.enabled == 0 || text.is_empty() {
            return Vec::new();
        }
        self.find_in(text, &Normalized::new(text))
    }

    /// Like [`PiiDetector::find`] for a text already normalized (`normalized` must come from
    /// `original`), so several detectors can share one normalization.
    pub fn find_in(&self, original: &str, normalized: &Normalized) -> Vec<Finding> {
        if self.enabled == 0 {
            return Vec::new();
        }
        let t = normalized.text.as_bytes();
        let mut scan =
            Scan { det: *self, t, text: &normalized.text, cands: Vec::new(), groups: Vec::new(), seps: Vec::new() };
        let mut i = 0;
        let mut v6_done = 0;
        loop {
            i = next_interesting(t, i);
            if i >= t.len() {
                break;
            }
            match t[i] {
                b'0'..=b'9' => {
                    if let Some(end) = scan.letters_then_digits(i, original, normalized) {
                        i = end;
                        continue;
                    }
                    i = scan.number_token(i);
                    continue;
                }
                b'@' if self.on(PiiKind::Email) => scan.email(i),
                b':' if self.on(PiiKind::IpAddress) && i >= v6_done => {
                    v6_done = scan.ipv6(i);
                }
                _ => {}
            }
            i += 1;
        }
        let Scan { mut cands, .. } = scan;
        resolve(&mut cands);
        let mut out: Vec<Finding> = Vec::with_capacity(cands.len());
        for c in cands {
            let span = normalized.original_span(c.start, c.end);
            if span.is_empty() || out.last().is_some_and(|f| f.span.end > span.start) {
                continue;
            }
            out.push(finding(c.kind, span));
        }
        out
    }
}

/// Position of the next digit, `:` or `@` at or after `i` (or `t.len()`).
///
/// Most text has none of these, so eight bytes are tested at a time (SWAR): a byte in
/// `0x30..=0x3A` (digits and `:`) or equal to `0x40` (`@`) stops the skip.
fn next_interesting(t: &[u8], mut i: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    while let Some(chunk) = t.get(i..i + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        let low7 = x & (ONES * 0x7F);
        // Bytes b with 0x2F < b < 0x3B (ASCII only: `!x` masks bytes with the high bit).
        let between = (ONES * (0x7F + 0x3B)).wrapping_sub(low7) & !x & low7.wrapping_add(ONES * (0x7F - 0x2F)) & HIGH;
        let y = x ^ (ONES * 0x40);
        let at_sign = y.wrapping_sub(ONES) & !y & HIGH;
        if between | at_sign != 0 {
            break;
        }
        i += 8;
    }
    while i < t.len() && !matches!(t[i], b'0'..=b':' | b'@') {
        i += 1;
    }
    i
}

/// Keeps the best candidate of each cluster of overlapping ones, then sorts by start.
fn resolve(cands: &mut Vec<Candidate>) {
    cands.sort_by_key(|c| (c.start, c.end));
    let mut kept: Vec<Candidate> = Vec::with_capacity(cands.len());
    let mut cluster: Vec<Candidate> = Vec::new();
    let mut cluster_end = 0;
    for c in cands.drain(..) {
        if !cluster.is_empty() && c.start >= cluster_end {
            keep_best(&mut cluster, &mut kept);
        }
        cluster_end = if cluster.is_empty() { c.end } else { cluster_end.max(c.end) };
        cluster.push(c);
    }
    keep_best(&mut cluster, &mut kept);
    kept.sort_by_key(|c| c.start);
    *cands = kept;
}

fn keep_best(cluster: &mut Vec<Candidate>, kept: &mut Vec<Candidate>) {
    if cluster.len() == 1 {
        kept.append(cluster);
        return;
    }
    cluster.sort_by_key(|c| (c.rank, std::cmp::Reverse(c.end - c.start), c.start));
    let first = kept.len();
    for c in cluster.drain(..) {
        if kept[first..].iter().all(|k| c.end <= k.start || k.end <= c.start) {
            kept.push(c);
        }
    }
}

/// A separator between two digit groups of a number token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sep {
    Space,
    Hyphen,
    Dot,
    /// `(` before a group; `spaced` when a space precedes it (`+1 (415)`).
    Open {
        spaced: bool,
        at: usize,
    },
    /// `)` after a group, optionally followed by a space or hyphen.
    Close,
}

impl Sep {
    /// Where a match may begin or end inside a token: only at a space, so a match never
    /// takes part of a hyphenated or dotted number.
    fn is_cut(self) -> bool {
        matches!(self, Sep::Space | Sep::Open { spaced: true, .. })
    }
}

/// What precedes the first digit of a match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prefix {
    None,
    Plus(usize),
    Paren(usize),
}

/// Up to 19 digits of a match, gathered from its groups.
struct Digits {
    buf: [u8; 19],
    len: usize,
}

impl Digits {
    fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len]
    }
    fn starts_with(&self, prefix: &[u8]) -> bool {
        self.as_slice().starts_with(prefix)
    }
    /// The first `n` digits as a number (n ≤ 6).
    fn prefix_value(&self, n: usize) -> u32 {
        self.as_slice().iter().take(n).fold(0, |acc, d| acc * 10 + u32::from(d - b'0'))
    }
}

struct Scan<'a> {
    det: PiiDetector,
    t: &'a [u8],
    text: &'a str,
    cands: Vec<Candidate>,
    groups: Vec<(usize, usize)>,
    seps: Vec<Sep>,
}

const HYPHENS: [&str; 8] =
    ["\u{2010}", "\u{2011}", "\u{2012}", "\u{2013}", "\u{2014}", "\u{2015}", "\u{2212}", "\u{30FC}"];

fn is_glue(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'@'
}

impl<'a> Scan<'a> {
    fn push(&mut self, start: usize, end: usize, kind: &'static str) {
        self.cands.push(Candidate { start, end, kind, rank: rank(kind) });
    }

    /// IBANs and UK postcodes start with letters right before a digit; returns the end of a
    /// found IBAN so its digit groups are not read again as numbers.
    fn letters_then_digits(&mut self, i: usize, original: &str, normalized: &Normalized) -> Option<usize> {
        let t = self.t;
        if i == 0 || !t[i - 1].is_ascii_alphabetic() {
            return None;
        }
        if self.det.on(PiiKind::Iban) && i >= 2 && t[i - 2].is_ascii_alphabetic() {
            if let Some(end) = iban_at(t, i - 2) {
                self.push(i - 2, end, IBAN);
                return Some(end);
            }
        }
        if self.det.on(PiiKind::PostalCode) {
            if let Some((s, e)) = uk_postcode_at(t, i) {
                let span = normalized.original_span(s, e);
                // Postcodes are printed in capitals; lowercase look-alikes are ordinary words.
                let upper = original.get(span.start..span.end).is_some_and(|o| !o.chars().any(char::is_lowercase));
                if upper {
                    self.push(s, e, POSTAL_CODE);
                }
            }
        }
        None
    }

    /// Reads the number token starting at digit `i`, reports what it holds, and returns
    /// the token's end.
    fn number_token(&mut self, i: usize) -> usize {
        let t = self.t;
        self.groups.clear();
        self.seps.clear();
        let mut p = i;
        loop {
            let start = p;
            while p < t.len() && t[p].is_ascii_digit() {
                p += 1;
            }
            self.groups.push((start, p));
            match parse_sep(t, p) {
                Some((sep, next)) => {
                    self.seps.push(sep);
                    p = next;
                }
                None => break,
            }
        }
        let end = p;
        let (prefix, outer) = match i.checked_sub(1).map(|j| t[j]) {
            Some(b'+') => (Prefix::Plus(i - 1), i - 1),
            Some(b'(') => (Prefix::Paren(i - 1), i - 1),
            _ => (Prefix::None, i),
        };
        let before = outer.checked_sub(1).map(|j| t[j]);
        let glued_before = match before {
            Some(b) if is_glue(b) => true,
            // `ABC-1234`, `path/1234`: the number belongs to a longer code.
            Some(b'-' | b'/') => outer >= 2 && t[outer - 2].is_ascii_alphanumeric(),
            _ => false,
        };
        let after = t.get(end).copied();
        let glued_after = match after {
            Some(b) if is_glue(b) => true,
            Some(b'-' | b'/') => t.get(end + 1).is_some_and(u8::is_ascii_alphanumeric),
            _ => false,
        };
        let dotted_before = before == Some(b'.');

        let n = self.groups.len();
        let mut g = 0;
        while g < n {
            if g > 0 && !self.seps[g - 1].is_cut() {
                g += 1;
                continue;
            }
            if g == 0 && glued_before {
                g += 1;
                continue;
            }
            let match_prefix = if g == 0 {
                prefix
            } else {
                match self.seps[g - 1] {
                    Sep::Open { at, .. } => Prefix::Paren(at),
                    _ => Prefix::None,
                }
            };
            let mut found = None;
            let last = (g + 6).min(n - 1);
            for j in (g..=last).rev() {
                if j < n - 1 && !self.seps[j].is_cut() {
                    continue;
                }
                if j == n - 1 && glued_after {
                    continue;
                }
                let ctx =
                    Ctx { whole: g == 0 && j == n - 1, dotted_before: g == 0 && dotted_before, prefix: match_prefix };
                if let Some(m) = self.classify(g, j, ctx) {
                    found = Some((j, m));
                    break;
                }
            }
            match found {
                Some((j, (s, e, kind))) => {
                    self.push(s, e, kind);
                    g = j + 1;
                }
                None => g += 1,
            }
        }
        end
    }

    /// Tries every kind on groups `g..=j`, most specific first.
    fn classify(&self, g: usize, j: usize, ctx: Ctx) -> Option<(usize, usize, &'static str)> {
        let groups = &self.groups[g..=j];
        let seps = &self.seps[g..j];
        let mut digits = Digits { buf: [0; 19], len: 0 };
        let mut lens_buf = [0usize; 7];
        for (slot, &(s, e)) in lens_buf.iter_mut().zip(groups) {
            *slot = e - s;
        }
        let lens = &lens_buf[..groups.len()];
        for &(s, e) in groups {
            for &d in &self.t[s..e] {
                if digits.len == digits.buf.len() {
                    return None;
                }
                digits.buf[digits.len] = d;
                digits.len += 1;
            }
        }
        let start = groups[0].0;
        let end = groups[groups.len() - 1].1;
        let det = self.det;
        if det.on(PiiKind::CreditCard) && is_card(&digits, lens, seps) {
            return Some((start, end, CREDIT_CARD));
        }
        if det.on(PiiKind::MyNumber) && is_my_number(&digits, lens, seps) {
            return Some((start, end, MY_NUMBER));
        }
        if det.on(PiiKind::Phone) {
            if let Some(s) = phone_start(&digits, lens, seps, ctx.prefix) {
                return Some((s.unwrap_or(start), end, PHONE));
            }
        }
        if det.on(PiiKind::PostalCode) {
            let hyphen_pair = groups.len() == 2 && seps[0] == Sep::Hyphen;
            let jp_context = ctx.whole && ctx.prefix == Prefix::None && self.postal_context(start);
            let jp = (hyphen_pair && lens == [3, 4] && (ctx.whole || jp_context))
                || (lens.len() == 1 && digits.len == 7 && jp_context);
            let zip = hyphen_pair && lens == [5, 4] && ctx.whole;
            if jp || zip {
                return Some((start, end, POSTAL_CODE));
            }
        }
        if det.on(PiiKind::IpAddress)
            && ctx.whole
            && !ctx.dotted_before
            && groups.len() == 4
            && seps.iter().all(|s| *s == Sep::Dot)
            && groups.iter().all(|&(s, e)| is_octet(&self.t[s..e]))
        {
            return Some((start, end, IPV4));
        }
        None
    }

    /// True when `〒` or `郵便番号` (with optional spaces or a colon) precedes `start`.
    fn postal_context(&self, start: usize) -> bool {
        let Some(before) = self.text.get(..start) else {
            return false;
        };
        let trimmed = before.trim_end_matches([' ', ':']);
        trimmed.ends_with('〒') || trimmed.ends_with("郵便番号")
    }

    fn email(&mut self, at: usize) {
        if let Some((s, e)) = email_at(self.t, at) {
            self.push(s, e, EMAIL);
        }
    }

    /// Checks the hex-and-colon run around `colon`; returns where that run ends.
    fn ipv6(&mut self, colon: usize) -> usize {
        let t = self.t;
        let is_v6 = |b: u8| b.is_ascii_hexdigit() || b == b':' || b == b'.';
        let mut s = colon;
        while s > 0 && is_v6(t[s - 1]) && colon - s < 64 {
            s -= 1;
        }
        let mut e = colon + 1;
        while e < t.len() && is_v6(t[e]) && e - s < 64 {
            e += 1;
        }
        let run_end = e;
        // Trailing sentence punctuation and a label colon (`addr:fe80::1`) are not part of it.
        while e > s && t[e - 1] == b'.' {
            e -= 1;
        }
        if e >= s + 2 && t[e - 1] == b':' && t[e - 2] != b':' {
            e -= 1;
        }
        if e >= s + 2 && t[s] == b':' && t[s + 1] != b':' {
            s += 1;
        }
        let before_ok = s == 0 || !is_glue(t[s - 1]);
        let after_ok = e >= t.len() || !is_glue(t[e]);
        let cand = &t[s..e];
        let colons = cand.iter().filter(|&&b| b == b':').count();
        if before_ok
            && after_ok
            && colons >= 2
            && cand.iter().any(u8::is_ascii_digit)
            && std::str::from_utf8(cand).ok().is_some_and(|c| Ipv6Addr::from_str(c).is_ok())
        {
            self.push(s, e, IPV6);
        }
        run_end
    }
}

#[derive(Debug, Clone, Copy)]
struct Ctx {
    /// The match is the whole token.
    whole: bool,
    /// A `.` directly precedes the token (`.1.2.3.4` is not an address).
    dotted_before: bool,
    prefix: Prefix,
}

/// Parses a separator at `p`; returns it with the position of the next group's first digit.
fn parse_sep(t: &[u8], p: usize) -> Option<(Sep, usize)> {
    let rest = t.get(p..)?;
    let digit_at = |k: usize| rest.get(k).is_some_and(u8::is_ascii_digit);
    let (sep, len) = match rest.first()? {
        b' ' if digit_at(1) => (Sep::Space, 1),
        b' ' if rest.get(1) == Some(&b'(') && digit_at(2) => (Sep::Open { spaced: true, at: p + 1 }, 2),
        b'(' if digit_at(1) => (Sep::Open { spaced: false, at: p }, 1),
        b')' if digit_at(1) => (Sep::Close, 1),
        b')' if matches!(rest.get(1), Some(b' ' | b'-')) && digit_at(2) => (Sep::Close, 2),
        b'-' if digit_at(1) => (Sep::Hyphen, 1),
        b'.' if digit_at(1) => (Sep::Dot, 1),
        0xE2 | 0xE3 => {
            let h = HYPHENS.iter().find(|h| rest.starts_with(h.as_bytes()))?;
            if !digit_at(h.len()) {
                return None;
            }
            (Sep::Hyphen, h.len())
        }
        _ => return None,
    };
    Some((sep, p + len))
}

/// All separators are the same space or hyphen (or there is none).
fn uniform(seps: &[Sep]) -> bool {
    match seps.first() {
        None => true,
        Some(first @ (Sep::Space | Sep::Hyphen)) => seps.iter().all(|s| s == first),
        Some(_) => false,
    }
}

fn is_card(d: &Digits, lens: &[usize], seps: &[Sep]) -> bool {
    if !(13..=19).contains(&d.len) || !uniform(seps) {
        return false;
    }
    let k = lens.len();
    if k > 1 {
        // Printed cards group as 4-4-4-4(-3) or 4-6-5 / 4-6-4; other groupings are other numbers.
        let fours = lens[0] == 4 && lens[1..k - 1].iter().all(|&l| l == 4) && lens[k - 1] <= 4;
        let amex = k == 3 && lens[0] == 4 && lens[1] == 6 && (4..=5).contains(&lens[2]);
        if !(fours || amex) {
            return false;
        }
    }
    card_brand_ok(d) && luhn(d.as_slice())
}

/// Known issuer prefixes with the lengths each brand issues.
fn card_brand_ok(d: &Digits) -> bool {
    let len = d.len;
    let p2 = d.prefix_value(2);
    let p3 = d.prefix_value(3);
    let p4 = d.prefix_value(4);
    if d.starts_with(b"4") {
        return matches!(len, 13 | 16 | 19);
    }
    if (51..=55).contains(&p2) || (2221..=2720).contains(&p4) {
        return len == 16;
    }
    if p2 == 34 || p2 == 37 {
        return len == 15;
    }
    if (3528..=3589).contains(&p4) || p4 == 6011 || p2 == 65 || (644..=649).contains(&p3) {
        return (16..=19).contains(&len);
    }
    if p2 == 36 || p2 == 38 || (300..=305).contains(&p3) {
        return (14..=19).contains(&len);
    }
    if p2 == 62 {
        return (16..=19).contains(&len);
    }
    false
}

/// Luhn checksum over ASCII digits.
fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    // Not `is_multiple_of`: the workspace still supports Rust 1.85.
    let rem = sum % 10;
    rem == 0
}

fn is_my_number(d: &Digits, lens: &[usize], seps: &[Sep]) -> bool {
    if d.len != 12 || !uniform(seps) {
        return false;
    }
    let shape_ok = lens.len() == 1 || lens == [4, 4, 4];
    shape_ok && my_number_check(d.as_slice())
}

/// The check digit rule of the Japanese individual number (12 ASCII digits).
fn my_number_check(digits: &[u8]) -> bool {
    if digits.len() != 12 {
        return false;
    }
    let sum: u32 = (1..=11usize)
        .map(|n| {
            let p = u32::from(digits[11 - n] - b'0');
            let q = if n <= 6 { n + 1 } else { n - 5 } as u32;
            p * q
        })
        .sum();
    let r = sum % 11;
    let check = if r <= 1 { 0 } else { 11 - r };
    u32::from(digits[11] - b'0') == check
}

/// North American area code and exchange both start with 2–9.
fn nanp_ok(d10: &[u8]) -> bool {
    d10.len() == 10 && d10[0] >= b'2' && d10[3] >= b'2'
}

/// If groups of lengths `lens` form a phone number, returns `Some(start)` where `start` is
/// set when the match includes a prefix character (`+` or `(`).
fn phone_start(d: &Digits, lens: &[usize], seps: &[Sep], prefix: Prefix) -> Option<Option<usize>> {
    let digits = d.as_slice();
    let k = lens.len();
    if let Prefix::Plus(at) = prefix {
        // E.164: a country code and a national number, 8 to 15 digits in all.
        let ok = digits[0] != b'0'
            && (8..=15).contains(&digits.len())
            && (k == 1 || lens[0] <= 3)
            && if digits[0] == b'1' {
                digits.len() == 11 && nanp_ok(&digits[1..])
            } else if digits.starts_with(b"81") {
                (11..=12).contains(&digits.len()) && digits[2] != b'0'
            } else {
                true
            };
        return ok.then_some(Some(at));
    }
    let paren = match prefix {
        Prefix::Paren(at) if seps.first() == Some(&Sep::Close) => Some(at),
        _ => None,
    };
    if digits[0] == b'0' {
        return jp_domestic(digits, lens, seps, paren.is_some()).then_some(paren);
    }
    // North American numbers: (415) 555-0100, 415-555-0100, 415.555.0100, 1-415-555-0100.
    if k == 3 && lens == [3, 3, 4] && nanp_ok(digits) {
        let ok = if paren.is_some() {
            matches!(seps[1], Sep::Hyphen | Sep::Space | Sep::Dot)
        } else {
            seps[0] == seps[1] && matches!(seps[0], Sep::Hyphen | Sep::Dot)
        };
        return ok.then_some(paren);
    }
    if k == 4
        && paren.is_none()
        && lens == [1, 3, 3, 4]
        && digits[0] == b'1'
        && nanp_ok(&digits[1..])
        && seps.iter().all(|s| *s == seps[0])
        && matches!(seps[0], Sep::Hyphen | Sep::Dot)
    {
        return Some(None);
    }
    None
}

/// Japanese domestic numbers: 10 digits for landlines and 0120, 11 for mobiles, 050 and 0800.
fn jp_domestic(digits: &[u8], lens: &[usize], seps: &[Sep], paren: bool) -> bool {
    if digits.len() < 2 || digits[1] == b'0' {
        return false;
    }
    let mobile = digits.len() >= 3 && digits[2] == b'0' && matches!(digits[1], b'5' | b'6' | b'7' | b'8' | b'9');
    if lens.len() == 1 {
        return mobile && digits.len() == 11 && digits[1] != b'5';
    }
    if lens.len() != 3 {
        return false;
    }
    let seps_ok = (seps[0] == seps[1] && matches!(seps[0], Sep::Hyphen | Sep::Space))
        || matches!(seps, [Sep::Open { spaced: false, .. }, Sep::Close])
        || (paren && matches!(seps[1], Sep::Hyphen | Sep::Space));
    if !seps_ok {
        return false;
    }
    // 0800 shares its first digits with 080 mobiles, so toll-free prefixes go first.
    if digits.starts_with(b"0800") {
        return digits.len() == 11 && lens == [4, 3, 4];
    }
    if digits.starts_with(b"0120") || digits.starts_with(b"0570") || digits.starts_with(b"0990") {
        return digits.len() == 10 && lens == [4, 3, 3];
    }
    if mobile {
        return digits.len() == 11 && lens == [3, 4, 4];
    }
    digits.len() == 10 && (2..=5).contains(&lens[0]) && (1..=4).contains(&lens[1]) && lens[2] == 4
}

fn is_octet(g: &[u8]) -> bool {
    match g.len() {
        1 => true,
        2 | 3 if g[0] != b'0' => g.iter().fold(0u32, |a, &d| a * 10 + u32::from(d - b'0')) <= 255,
        _ => false,
    }
}

/// An email address around the `@` at `at`, as a normalized byte range.
fn email_at(t: &[u8], at: usize) -> Option<(usize, usize)> {
    let is_local = |b: u8| b.is_ascii_alphanumeric() || b"._%+-".contains(&b);
    let is_domain = |b: u8| b.is_ascii_alphanumeric() || b == b'.' || b == b'-';
    let mut s = at;
    while s > 0 && is_local(t[s - 1]) && at - s <= 64 {
        s -= 1;
    }
    if s > 0 && is_local(t[s - 1]) {
        return None; // local part longer than 64
    }
    while s < at && t[s] == b'.' {
        s += 1;
    }
    let local = &t[s..at];
    if local.is_empty() || local.ends_with(b".") || local.windows(2).any(|w| w == b"..") {
        return None;
    }
    let mut e = at + 1;
    while e < t.len() && is_domain(t[e]) && e - at <= 255 {
        e += 1;
    }
    while e > at + 1 && t[e - 1] == b'.' {
        e -= 1;
    }
    let domain = &t[at + 1..e];
    let mut labels = 0;
    let mut tld: &[u8] = &[];
    for label in domain.split(|&b| b == b'.') {
        let ok = (1..=63).contains(&label.len())
            && label[0].is_ascii_alphanumeric()
            && label[label.len() - 1].is_ascii_alphanumeric();
        if !ok {
            return None;
        }
        labels += 1;
        tld = label;
    }
    let tld_ok = tld.len() >= 2 && tld.iter().all(u8::is_ascii_alphabetic);
    (labels >= 2 && tld_ok).then_some((s, e))
}

/// IBAN lengths by country.
fn iban_length(cc: [u8; 2]) -> Option<usize> {
    let len = match &cc {
        b"AD" => 24,
        b"AE" => 23,
        b"AL" => 28,
        b"AT" => 20,
        b"AZ" => 28,
        b"BA" => 20,
        b"BE" => 16,
        b"BG" => 22,
        b"BH" => 22,
        b"BR" => 29,
        b"CH" => 21,
        b"CR" => 22,
        b"CY" => 28,
        b"CZ" => 24,
        b"DE" => 22,
        b"DK" => 18,
        b"DO" => 28,
        b"EE" => 20,
        b"EG" => 29,
        b"ES" => 24,
        b"FI" => 18,
        b"FO" => 18,
        b"FR" => 27,
        b"GB" => 22,
        b"GE" => 22,
        b"GI" => 23,
        b"GL" => 18,
        b"GR" => 27,
        b"GT" => 28,
        b"HR" => 21,
        b"HU" => 28,
        b"IE" => 22,
        b"IL" => 23,
        b"IS" => 26,
        b"IT" => 27,
        b"JO" => 30,
        b"KW" => 30,
        b"KZ" => 20,
        b"LB" => 28,
        b"LI" => 21,
        b"LT" => 20,
        b"LU" => 20,
        b"LV" => 21,
        b"MC" => 27,
        b"MD" => 24,
        b"ME" => 22,
        b"MK" => 19,
        b"MR" => 27,
        b"MT" => 31,
        b"MU" => 30,
        b"NL" => 18,
        b"NO" => 15,
        b"PK" => 24,
        b"PL" => 28,
        b"PS" => 29,
        b"PT" => 25,
        b"QA" => 29,
        b"RO" => 24,
        b"RS" => 22,
        b"SA" => 24,
        b"SE" => 24,
        b"SI" => 19,
        b"SK" => 24,
        b"SM" => 27,
        b"TN" => 24,
        b"TR" => 26,
        b"UA" => 29,
        b"VG" => 24,
        b"XK" => 20,
        _ => return None,
    };
    Some(len)
}

/// An IBAN starting at `s` (two letters then two digits), compact or in groups of four;
/// returns its end.
fn iban_at(t: &[u8], s: usize) -> Option<usize> {
    if s > 0 && t[s - 1].is_ascii_alphanumeric() {
        return None;
    }
    let cc = [t.get(s)?.to_ascii_uppercase(), t.get(s + 1)?.to_ascii_uppercase()];
    if !t.get(s + 2)?.is_ascii_digit() || !t.get(s + 3)?.is_ascii_digit() {
        return None;
    }
    let len = iban_length(cc)?;
    let mut buf = [0u8; 34];
    let mut count = 0;
    let mut spaced: Option<bool> = None;
    let mut p = s;
    while count < len {
        if count > 0 && count % 4 == 0 {
            let space = t.get(p) == Some(&b' ');
            if spaced.is_some_and(|sp| sp != space) {
                return None;
            }
            spaced = Some(space);
            if space {
                p += 1;
            }
        }
        let b = *t.get(p)?;
        if !b.is_ascii_alphanumeric() {
            return None;
        }
        buf[count] = b.to_ascii_uppercase();
        count += 1;
        p += 1;
    }
    if t.get(p).is_some_and(|&b| is_glue(b)) {
        return None;
    }
    iban_checksum(&buf[..len]).then_some(p)
}

/// ISO 13616 mod-97 check over uppercase ASCII alphanumerics.
fn iban_checksum(iban: &[u8]) -> bool {
    if iban.len() < 5 {
        return false;
    }
    let mut rem: u32 = 0;
    for &b in iban[4..].iter().chain(&iban[..4]) {
        rem = match b {
            b'0'..=b'9' => (rem * 10 + u32::from(b - b'0')) % 97,
            b'A'..=b'Z' => (rem * 100 + u32::from(b - b'A') + 10) % 97,
            _ => return false,
        };
    }
    rem == 1
}

/// A UK postcode (`SW1A 1AA`, `M1 1AE`) whose outward digits start at `d`.
fn uk_postcode_at(t: &[u8], d: usize) -> Option<(usize, usize)> {
    let mut s = d;
    while s > 0 && t[s - 1].is_ascii_alphabetic() && d - s < 3 {
        s -= 1;
    }
    let letters = d - s;
    if !(1..=2).contains(&letters) || (s > 0 && is_glue(t[s - 1])) {
        return None;
    }
    let mut p = d;
    while p < t.len() && t[p].is_ascii_digit() {
        p += 1;
    }
    let digits = p - d;
    if !(1..=2).contains(&digits) {
        return None;
    }
    if digits == 1 && t.get(p).is_some_and(u8::is_ascii_alphabetic) {
        p += 1;
    }
    let inward = t.get(p..p + 4)?;
    let ok = inward[0] == b' '
        && inward[1].is_ascii_digit()
        && inward[2].is_ascii_alphabetic()
        && inward[3].is_ascii_alphabetic()
        && !t.get(p + 4).is_some_and(|&b| is_glue(b));
    ok.then_some((s, p + 4))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all() -> PiiDetector {
        PiiDetector::new(&PiiKind::ALL)
    }

    /// `(kind, matched text)` for every finding.
    fn found(text: &str) -> Vec<(String, String)> {
        all().find(text).into_iter().map(|f| (f.kind, text[f.span.start..f.span.end].to_string())).collect()
    }

    fn one(kind: &str, s: &str) -> Vec<(String, String)> {
        vec![(kind.to_string(), s.to_string())]
    }

    /// Independent Luhn: double every second digit from the right.
    fn luhn_check_digit(body: &str) -> char {
        let mut sum = 0;
        for (i, c) in body.chars().rev().enumerate() {
            let mut d = c.to_digit(10).unwrap();
            if i % 2 == 0 {
                d *= 2;
                if d > 9 {
                    d -= 9;
                }
            }
            sum += d;
        }
        char::from_digit((10 - sum % 10) % 10, 10).unwrap()
    }

    /// Independent My Number check digit, straight from the published formula.
    fn my_number_digit(first11: &str) -> char {
        let d: Vec<u32> = first11.chars().map(|c| c.to_digit(10).unwrap()).collect();
        let mut sum = 0;
        for n in 1..=11u32 {
            let p = d[11 - n as usize];
            let q = if n <= 6 { n + 1 } else { n - 5 };
            sum += p * q;
        }
        let r = sum % 11;
        char::from_digit(if r <= 1 { 0 } else { 11 - r }, 10).unwrap()
    }

    fn card(body: &str) -> String {
        format!("{body}{}", luhn_check_digit(body))
    }

    fn bump_last(s: &str) -> String {
        let mut v: Vec<char> = s.chars().collect();
        let last = v.len() - 1;
        let d = v[last].to_digit(10).unwrap();
        v[last] = char::from_digit((d + 1) % 10, 10).unwrap();
        v.into_iter().collect()
    }

    #[test]
    fn kinds_serialize_snake_case() {
        let json = serde_json::to_string(&PiiKind::ALL).unwrap();
        assert_eq!(json, r#"["email","phone","credit_card","my_number","iban","ip_address","postal_code"]"#);
        let k: PiiKind = serde_json::from_str("\"my_number\"").unwrap();
        assert_eq!(k, PiiKind::MyNumber);
        assert_eq!(PiiKind::IpAddress.finding_kinds(), &["ipv4", "ipv6"]);
    }

    #[test]
    fn emails() {
        assert_eq!(
            found("write to Taro.Yamada+news@Mail.Example.co.jp."),
            one("email", "Taro.Yamada+news@Mail.Example.co.jp")
        );
        assert_eq!(found("連絡先はtaro@example.comです"), one("email", "taro@example.com"));
        assert_eq!(found("ｔａｒｏ＠ｅｘａｍｐｌｅ．ｃｏｍ"), one("email", "ｔａｒｏ＠ｅｘａｍｐｌｅ．ｃｏｍ"));
        for bad in [
            "a@b",
            "a@b.c",
            "a..b@example.com",
            "a@-example.com",
            "a@example.c0m",
            "@example.com",
            "user@localhost",
            "a.@example.com",
        ] {
            assert!(found(bad).iter().all(|(k, _)| k != "email"), "{bad}");
        }
    }

    #[test]
    fn phones_international_and_north_american() {
        for p in [
            "+81 90-1234-5678",
            "+1 (415) 555-0100",
            "+819012345678",
            "+44 20 7946 0958",
            "(415) 555-0100",
            "415-555-0100",
            "415.555.0100",
            "1-415-555-0100",
        ] {
            assert_eq!(found(&format!("call {p} now")), one("phone", p), "{p}");
        }
        for bad in ["+1 (115) 555-0100", "+0 1234 5678", "415-055-0100", "+81 0 1234", "1234-5678"] {
            assert!(found(&format!("call {bad} now")).iter().all(|(k, _)| k != "phone"), "{bad}");
        }
    }

    #[test]
    fn phones_japanese() {
        for p in [
            "090-1234-5678",
            "080 1234 5678",
            "07012345678",
            "03-1234-5678",
            "045-123-4567",
            "0467-12-3456",
            "0120-123-456",
            "0800-123-4567",
            "03(1234)5678",
            "０９０－１２３４－５６７８",
            "０３ー１２３４ー５６７８",
            "090−1234−5678",
            "090‐1234‐5678",
        ] {
            assert_eq!(found(&format!("電話は{p}です")), one("phone", p), "{p}");
        }
        for bad in [
            "090-1234-567",
            "0312345678",
            "090-123-45678",
            "03-1234-56789",
            "0120-123-4567",
            "00-1234-5678",
            "0901234567",
        ] {
            assert!(found(&format!("電話は{bad}です")).is_empty(), "{bad}");
        }
    }

    #[test]
    fn numbers_inside_longer_runs_are_not_found() {
        let c = card("411111111111111");
        assert!(found(&format!("x {c}12345678901234 y")).is_empty());
        assert!(found(&format!("id=99{c}")).is_empty());
        assert!(found("order 1-090-1234-5678-2").is_empty());
        assert!(found("ref ABC-090-1234-5678").is_empty());
        assert!(found("pi 3.14159265358979").is_empty());
    }

    #[test]
    fn credit_cards() {
        let visa = card("411111111111111");
        assert_eq!(visa, "4111111111111111");
        for (body, fmt) in [
            ("411111111111111", [4, 4, 4, 4].as_slice()),
            ("555555555555444", &[4, 4, 4, 4]),
            ("222100000000000", &[4, 4, 4, 4]),
            ("37828224631000", &[4, 6, 5]),
            ("353011133330000", &[4, 4, 4, 4]),
            ("601111111111111", &[4, 4, 4, 4]),
            ("3056930902590", &[4, 6, 4]),
            ("621234567890123", &[4, 4, 4, 4]),
            ("411111111111111111", &[4, 4, 4, 4, 3]),
        ] {
            let number = card(body);
            assert_eq!(found(&format!("card {number}.")), one("credit_card", &number));
            let mut spaced = String::new();
            let mut pos = 0;
            for (i, len) in fmt.iter().enumerate() {
                if i > 0 {
                    spaced.push(' ');
                }
                spaced.push_str(&number[pos..pos + len]);
                pos += len;
            }
            assert_eq!(found(&format!("カード{spaced}で")), one("credit_card", &spaced));
            let hyphened = spaced.replace(' ', "-");
            assert_eq!(found(&format!("card: {hyphened}")), one("credit_card", &hyphened));
            let bad = bump_last(&number);
            assert!(found(&format!("card {bad}.")).iter().all(|(k, _)| k != "credit_card"), "{bad}");
        }
        // Luhn-valid but no known issuer prefix.
        assert!(found(&format!("card {}", card("123456789012345"))).is_empty());
        // Mixed separators and odd groupings are not cards.
        assert!(found("4111-1111 1111-1111").is_empty());
        assert!(found("41 1111 1111 1111 11").is_empty());
        assert_eq!(
            found("ｶｰﾄﾞ ４１１１ １１１１ １１１１ １１１１"),
            one("credit_card", "４１１１ １１１１ １１１１ １１１１")
        );
    }

    #[test]
    fn my_numbers() {
        for first in ["12345678901", "98765432109", "11111111111", "00000000000", "50000000007"] {
            let number = format!("{first}{}", my_number_digit(first));
            assert_eq!(found(&format!("マイナンバーは{number}です")), one("my_number", &number));
            let spaced = format!("{} {} {}", &number[..4], &number[4..8], &number[8..]);
            assert_eq!(found(&format!("番号 {spaced}")), one("my_number", &spaced));
            let hyphened = spaced.replace(' ', "-");
            assert_eq!(found(&format!("番号 {hyphened}")), one("my_number", &hyphened));
            assert!(found(&format!("番号 {}", bump_last(&number))).is_empty());
        }
    }

    #[test]
    fn ibans() {
        for iban in [
            "GB82 WEST 1234 5698 7654 32",
            "GB82WEST12345698765432",
            "DE89 3704 0044 0532 0130 00",
            "FR14 2004 1010 0505 0001 3M02 606",
            "NL91 ABNA 0417 1643 00",
            "BE68 5390 0754 7034",
        ] {
            assert_eq!(found(&format!("IBAN: {iban}.")), one("iban", iban), "{iban}");
        }
        for bad in [
            "GB82 WEST 1234 5698 7654 33",
            "DE89 3704 0044 0532 0130 01",
            "GB82 WEST 1234 5698 7654",
            "GB82 WEST 12345698765432",
            "ZZ82 WEST 1234 5698 7654 32",
        ] {
            assert!(found(&format!("IBAN: {bad}")).iter().all(|(k, _)| k != "iban"), "{bad}");
        }
    }

    #[test]
    fn ip_addresses() {
        assert_eq!(found("host 192.168.0.1."), one("ipv4", "192.168.0.1"));
        assert_eq!(found("10.0.0.1 と 10.0.0.2"), {
            let mut v = one("ipv4", "10.0.0.1");
            v.extend(one("ipv4", "10.0.0.2"));
            v
        });
        for bad in ["1.2.3.4.5", "256.1.1.1", "01.2.3.4", "v1.2.3.4", "1.2.3"] {
            assert!(found(&format!("x {bad} y")).is_empty(), "{bad}");
        }
        for ip in ["2001:db8::1", "fe80::1ff:fe23:4567:890a", "::1", "2001:0db8:0000:0000:0000:ff00:0042:8329"] {
            assert_eq!(found(&format!("addr {ip} ok")), one("ipv6", ip), "{ip}");
        }
        assert_eq!(found("addr:2001:db8::1."), one("ipv6", "2001:db8::1"));
        assert_eq!(found("::ffff:192.168.0.1"), one("ipv6", "::ffff:192.168.0.1"));
        for bad in ["12:30:45", "std::fmt", "a::b", "dead::beef", "00:1a:2b:3c:4d:5e"] {
            assert!(found(&format!("at {bad} x")).is_empty(), "{bad}");
        }
    }

    #[test]
    fn postal_codes() {
        assert_eq!(found("〒123-4567 東京都"), one("postal_code", "123-4567"));
        assert_eq!(found("〒1234567"), one("postal_code", "1234567"));
        assert_eq!(found("郵便番号：１２３４５６７"), one("postal_code", "１２３４５６７"));
        assert_eq!(found("住所 123-4567 東京都"), one("postal_code", "123-4567"));
        assert_eq!(found("ZIP 94105-1234"), one("postal_code", "94105-1234"));
        assert_eq!(found("London SW1A 1AA, UK"), one("postal_code", "SW1A 1AA"));
        assert_eq!(found("M1 1AE"), one("postal_code", "M1 1AE"));
        for bad in ["1234567", "123-4567-89", "1-123-4567", "sw1a 1aa", "94105", "12345-678"] {
            assert!(found(&format!("x {bad} y")).is_empty(), "{bad}");
        }
    }

    #[test]
    fn specific_kinds_win_and_spans_are_sorted() {
        let c = card("411111111111111");
        let text = format!("mail a@b.co, tel 090-1234-5678, card {c}, ip 10.1.2.3");
        let kinds: Vec<String> = found(&text).into_iter().map(|(k, _)| k).collect();
        assert_eq!(kinds, ["email", "phone", "credit_card", "ipv4"]);
        let only_phone = PiiDetector::new(&[PiiKind::Phone]);
        assert_eq!(only_phone.find(&text).len(), 1);
        assert!(PiiDetector::new(&[]).find(&text).is_empty());
    }

    fn full_width(s: &str) -> String {
        s.chars()
            .map(|c| match c {
                '!'..='~' => char::from_u32(c as u32 - 0x21 + 0xFF01).unwrap_or(c),
                _ => c,
            })
            .collect()
    }

    fn check_spans(text: &str, findings: &[Finding]) -> Result<(), TestCaseError> {
        let mut last_end = 0;
        for f in findings {
            prop_assert!(f.span.start < f.span.end && f.span.end <= text.len());
            prop_assert!(text.is_char_boundary(f.span.start) && text.is_char_boundary(f.span.end));
            prop_assert!(f.span.start >= last_end, "overlap in {:?}", findings);
            prop_assert!(f.message.is_none() && f.detail.is_none());
            last_end = f.span.end;
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn arbitrary_text_gives_valid_spans(text in any::<String>()) {
            check_spans(&text, &all().find(&text))?;
        }

        #[test]
        fn numeric_text_gives_valid_spans(text in "[0-9０-９ \\-ー.:()+@a-fA-F〒]{0,60}") {
            check_spans(&text, &all().find(&text))?;
        }

        #[test]
        fn full_width_phone_and_card_are_found(
            mid in 1000u32..9999,
            last in 1000u32..9999,
            body in "[0-9]{15}",
        ) {
            let phone = full_width(&format!("090-{mid}-{last}"));
            prop_assert_eq!(found(&format!("電話：{phone}。")), one("phone", &phone));
            let number = full_width(&card(&format!("4{}", &body[1..])));
            prop_assert_eq!(found(&format!("カード{number}")), one("credit_card", &number));
        }

        #[test]
        fn embedded_visa_is_found_until_its_last_digit_changes(
            body in "[0-9]{14}",
            before in prop::collection::vec("[a-zA-Z]{1,8}", 0..6),
            after in prop::collection::vec("[a-zA-Z]{1,8}", 0..6),
        ) {
            let number = card(&format!("4{body}"));
            let text = format!("{} {number} {}", before.join(" "), after.join(" "));
            let hits = found(&text);
            prop_assert_eq!(hits, one("credit_card", &number));
            let changed = format!("{} {} {}", before.join(" "), bump_last(&number), after.join(" "));
            prop_assert!(found(&changed).iter().all(|(k, _)| k != "credit_card"));
        }
    }
}
