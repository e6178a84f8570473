//! Detectors that find sensitive or hostile content in chat text: personal data, secrets,
//! prompt injection and policy keywords.
//!
//! Checks in a policy are thin wrappers around these detectors; keeping them here, free of
//! policy and configuration concerns, lets each one be tested and benchmarked on its own.
//! Every detector reports byte spans of the text it was given, sorted by position.

pub mod injection;
pub mod keywords;
pub mod normalize;
pub mod pii;
pub mod secret;

pub use injection::{InjectionDetector, INJECTION_KINDS};
pub use keywords::{KeywordError, KeywordMatcher};
pub use normalize::{normalize, Normalized};
pub use pii::{PiiDetector, PiiKind};
pub use secret::{SecretDetector, SECRET_KINDS};

use keel_core::{Finding, Span};

/// A finding of `kind` at `span`, without message index or detail.
pub(crate) fn finding(kind: &str, span: Span) -> Finding {
    Finding {
        kind: kind.to_string(),
        span,
        message: None,
        detail: None,
    }
}

#[cfg(test)]
mod perf_tmp {
    use super::*;
    use std::time::Instant;

    fn make(base: &str, size: usize) -> String {
        let mut s = String::new();
        while s.len() < size {
            s.push_str(base);
        }
        let mut end = size;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s
    }

    #[test]
    #[ignore]
    fn throughput() {
        let en = "Hello team, the quarterly report is attached. Please review the numbers for Q3 2024 before Friday; revenue grew 12.5% and we shipped 3 releases. Let me know if you have questions about the roadmap or the hiring plan for the next sprint. Thanks, and have a great weekend! ";
        let ja = "お世話になっております。第3四半期の報告書を添付いたしましたので、金曜日までにご確認ください。売上は前年比12.5%増加し、新しい機能を3つリリースしました。ご不明な点がございましたら、お気軽にお問い合わせください。よろしくお願いいたします。";
        let pii = PiiDetector::new(&PiiKind::ALL);
        let sec = SecretDetector::new();
        let inj = InjectionDetector::new();
        let kw = KeywordMatcher::new(
            &[
                "bomb".to_string(),
                "爆弾".to_string(),
                "kill".to_string(),
                "weapon".to_string(),
            ],
            true,
        )
        .unwrap();
        for (name, base) in [("en", en), ("ja", ja)] {
            for size in [1024usize, 16 * 1024] {
                let text = make(base, size);
                let iters = (64 * 1024 * 1024 / size).max(1);
                let run = |label: &str, f: &dyn Fn(&str) -> usize| {
                    let t0 = Instant::now();
                    let mut acc = 0;
                    for _ in 0..iters {
                        acc += f(std::hint::black_box(&text));
                    }
                    let secs = t0.elapsed().as_secs_f64();
                    println!(
                        "{name} {size:>6} {label:<10} {:>8.1} MB/s ({acc})",
                        (size * iters) as f64 / secs / 1e6
                    );
                };
                run("normalize", &|t| Normalized::new(t).text.len());
                for (i, p) in injection::specs().into_iter().enumerate() {
                    let re = regex::Regex::new(&p.pattern).unwrap();
                    let l = format!("p{i}");
                    run(&l, &|t| re.find_iter(t).count());
                }
                let all: Vec<String> = injection::specs().into_iter().map(|s| s.pattern).collect();
                let comb = regex::Regex::new(&all.join("|")).unwrap();
                run("combined", &|t| comb.find_iter(t).count());
                for (cat, re) in &inj.phrases {
                    let l = format!("{cat:?}");
                    run(&l, &|t| re.find_iter(t).count());
                }
                if let Some(re) = &inj.encoded_trigger {
                    run("enc", &|t| re.find_iter(t).count());
                }
                run("hidden", &|t| injection::hidden_runs(t).len());
                run("gates", &|t| inj.open_phrases(t).count_ones() as usize);
                let words: Vec<&str> = injection::specs()
                    .iter()
                    .flat_map(|s| s.gates.iter().copied())
                    .filter(|g| g.is_ascii())
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let std_ac = aho_corasick::AhoCorasick::builder()
                    .match_kind(aho_corasick::MatchKind::Standard)
                    .build(&words)
                    .unwrap();
                let lf_ac = aho_corasick::AhoCorasick::builder()
                    .match_kind(aho_corasick::MatchKind::LeftmostFirst)
                    .build(&words)
                    .unwrap();
                run("ac-ovl", &|t| std_ac.find_overlapping_iter(t).count());
                run("ac-std", &|t| std_ac.find_iter(t).count());
                run("ac-lf", &|t| lf_ac.find_iter(t).count());
                let rs = regex::Regex::new(
                    &words
                        .iter()
                        .map(|w| regex::escape(w))
                        .collect::<Vec<_>>()
                        .join("|"),
                )
                .unwrap();
                run("re-alt", &|t| rs.find_iter(t).count());
                run("pii", &|t| pii.find(t).len());
                run("secret", &|t| sec.find(t).len());
                run("injection", &|t| inj.scan(t).1.len());
                run("keywords", &|t| kw.find(&Normalized::new(t)).len());
                run("all-shared", &|t| {
                    let n = Normalized::new(t);
                    pii.find_in(t, &n).len()
                        + sec.find(t).len()
                        + inj.scan_in(t, &n).1.len()
                        + kw.find(&n).len()
                });
            }
        }
    }
}
