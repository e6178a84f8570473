//! The statistics behind run summaries and comparisons: Wilson intervals for rates (from
//! keel-monitor), McNemar's exact test for paired pass/fail outcomes, and Cohen's kappa for
//! agreement between a judge and people.

use keel_monitor::stats::{wilson_interval, RateEstimate};

/// Confidence level of every interval in a run summary.
pub const CONFIDENCE: f64 = 0.95;

/// `k` of `n` with its 95 % Wilson interval; `None` when `n` is 0.
pub fn rate(k: u64, n: u64) -> Option<RateEstimate> {
    wilson_interval(k, n, CONFIDENCE).ok()
}

/// Two-sided exact McNemar p-value for `b` pairs that went one way and `c` the other: the
/// probability, under "no change", of a split at least this uneven among the `b + c`
/// discordant pairs (a binomial test with p = ½). Pairs that agree carry no information.
pub fn mcnemar_exact(b: u64, c: u64) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let k = b.min(c);
    // P(X <= k) for X ~ Binomial(n, 1/2), summed in log space so large n does not underflow.
    let ln_half_n = -(n as f64) * std::f64::consts::LN_2;
    let mut ln_choose = 0.0f64; // ln C(n, 0)
    let mut tail = 0.0f64;
    for i in 0..=k {
        if i > 0 {
            ln_choose += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        tail += (ln_choose + ln_half_n).exp();
    }
    (2.0 * tail).min(1.0)
}

/// Cohen's kappa between two raters' binary labels; `None` with fewer than one pair or when
/// chance agreement is total (both raters gave one label only), where kappa is undefined.
pub fn cohen_kappa(pairs: &[(bool, bool)]) -> Option<f64> {
    if pairs.is_empty() {
        return None;
    }
    let n = pairs.len() as f64;
    let agree = pairs.iter().filter(|(a, b)| a == b).count() as f64 / n;
    let a_yes = pairs.iter().filter(|(a, _)| *a).count() as f64 / n;
    let b_yes = pairs.iter().filter(|(_, b)| *b).count() as f64 / n;
    let chance = a_yes * b_yes + (1.0 - a_yes) * (1.0 - b_yes);
    if (1.0 - chance).abs() < 1e-12 {
        return None;
    }
    Some((agree - chance) / (1.0 - chance))
}

/// The `q`-quantile (0..=1) of `values` by linear interpolation; `None` when empty.
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcnemar_matches_the_binomial_table() {
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        // 0 of 6 discordant pairs one way: 2 · (1/2)^6 = 0.03125.
        assert!((mcnemar_exact(6, 0) - 0.03125).abs() < 1e-12);
        assert!((mcnemar_exact(0, 6) - 0.03125).abs() < 1e-12);
        // 1 of 5: 2 · (1 + 5) / 32 = 0.375.
        assert!((mcnemar_exact(4, 1) - 0.375).abs() < 1e-12);
        assert_eq!(mcnemar_exact(3, 3), 1.0);
        let big = mcnemar_exact(600, 400);
        assert!(big > 0.0 && big < 1e-9, "{big}");
    }

    #[test]
    fn kappa_is_one_for_agreement_zero_for_chance_and_undefined_for_constants() {
        let same = [(true, true), (false, false), (true, true), (false, false)];
        assert_eq!(cohen_kappa(&same), Some(1.0));
        let chance = [(true, true), (true, false), (false, true), (false, false)];
        assert_eq!(cohen_kappa(&chance), Some(0.0));
        assert_eq!(cohen_kappa(&[(true, true), (true, true)]), None);
        assert_eq!(cohen_kappa(&[]), None);
        let opposite = [(true, false), (false, true)];
        assert_eq!(cohen_kappa(&opposite), Some(-1.0));
    }

    #[test]
    fn quantiles_interpolate() {
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&[3.0, 1.0, 2.0], 0.5), Some(2.0));
        assert_eq!(quantile(&[1.0, 2.0], 0.95), Some(1.95));
        assert!(rate(0, 0).is_none());
        let r = rate(19, 20).unwrap();
        assert!(r.lower < 0.95 && r.upper > 0.95);
    }
}
