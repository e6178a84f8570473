//! KPI statistics with honest uncertainty: Wilson score intervals for rates, t and seeded
//! bootstrap intervals for means, percentiles with a stated interpolation rule, running moments
//! that merge across time buckets, and the 1–5 satisfaction distribution.

use serde::{Deserialize, Serialize};

use crate::error::{finite, MonitorError, Result};
use crate::rng::SeededRng;
use crate::special::{normal_quantile, t_quantile};

fn check_confidence(confidence: f64) -> Result<()> {
    if confidence.is_finite() && confidence > 0.0 && confidence < 1.0 {
        Ok(())
    } else {
        Err(MonitorError::InvalidInput {
            what: "a confidence interval",
            reason: format!("confidence level must be strictly between 0 and 1, got {confidence}"),
        })
    }
}

fn check_values(what: &'static str, values: &[f64]) -> Result<()> {
    for &v in values {
        finite("a sample value", v)?;
    }
    if values.is_empty() {
        return Err(MonitorError::InvalidInput { what, reason: "there are no values".into() });
    }
    Ok(())
}

/// A rate (k successes of n trials) with its Wilson score interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RateEstimate {
    /// Number of successes (e.g. wrong-answer reports).
    pub successes: u64,
    /// Number of trials (e.g. interactions).
    pub trials: u64,
    /// Point estimate k / n.
    pub estimate: f64,
    /// Lower end of the interval, in [0, 1].
    pub lower: f64,
    /// Upper end of the interval, in [0, 1].
    pub upper: f64,
    /// The confidence level the interval was computed at (e.g. 0.95).
    pub confidence: f64,
}

/// Wilson score interval for `successes` of `trials` at `confidence` (e.g. 0.95).
///
/// With z the two-sided normal quantile, p̂ = k/n:
/// centre = (p̂ + z²/2n) / (1 + z²/n), half-width = z/(1 + z²/n) · √(p̂(1−p̂)/n + z²/4n²).
/// Unlike the normal (Wald) interval it stays inside [0, 1] and does not collapse to a point at
/// k = 0 or k = n, so a new app with 0 reports out of 12 does not look certainly perfect.
pub fn wilson_interval(successes: u64, trials: u64, confidence: f64) -> Result<RateEstimate> {
    check_confidence(confidence)?;
    if trials == 0 {
        return Err(MonitorError::InvalidInput { what: "a rate interval", reason: "there are no trials".into() });
    }
    if successes > trials {
        return Err(MonitorError::InvalidInput {
            what: "a rate interval",
            reason: format!("{successes} successes is more than {trials} trials"),
        });
    }
    let n = trials as f64;
    let p = successes as f64 / n;
    let z = normal_quantile(0.5 + confidence / 2.0);
    let z2 = z * z;
    let denom = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denom;
    let half = z / denom * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    // At k = 0 or k = n the exact bound is 0 or 1; pin it against rounding.
    let lower = if successes == 0 { 0.0 } else { (centre - half).clamp(0.0, p) };
    let upper = if successes == trials { 1.0 } else { (centre + half).clamp(p, 1.0) };
    Ok(RateEstimate { successes, trials, estimate: p, lower, upper, confidence })
}

/// How a mean's interval was computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntervalMethod {
    /// Student t interval: mean ± t₍₁₊c₎/₂,ₙ₋₁ · s/√n.
    T,
    /// Percentile bootstrap of the mean with a fixed seed.
    Bootstrap,
}

/// A mean with a confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MeanEstimate {
    /// Number of values.
    pub count: u64,
    /// Sample mean.
    pub mean: f64,
    /// Sample standard deviation (n − 1 denominator); 0 for a single value.
    pub std_dev: f64,
    /// Lower end of the interval.
    pub lower: f64,
    /// Upper end of the interval.
    pub upper: f64,
    /// The confidence level.
    pub confidence: f64,
    /// How the interval was computed.
    pub method: IntervalMethod,
}

/// Running count, mean and sum of squared deviations (Welford), mergeable across buckets
/// (Chan et al.), so a day's KPI is the merge of its hours without keeping the values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Moments {
    count: u64,
    mean: f64,
    m2: f64,
}

impl Moments {
    /// Empty moments.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one value (the caller guarantees it is finite).
    pub fn push(&mut self, x: f64) {
        self.count += 1;
        let delta = x - self.mean;
        self.mean += delta / self.count as f64;
        self.m2 += delta * (x - self.mean);
    }

    /// Adds `weight` copies of one value at once (used for count tables).
    pub fn push_weighted(&mut self, x: f64, weight: u64) {
        if weight > 0 {
            self.merge(&Moments { count: weight, mean: x, m2: 0.0 });
        }
    }

    /// Folds another set of moments into this one, as if its values had been pushed here.
    pub fn merge(&mut self, other: &Moments) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = *other;
            return;
        }
        let n1 = self.count as f64;
        let n2 = other.count as f64;
        let n = n1 + n2;
        let delta = other.mean - self.mean;
        self.mean += delta * n2 / n;
        self.m2 += other.m2 + delta * delta * n1 * n2 / n;
        self.count += other.count;
    }

    /// Number of values.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Mean (0 when empty).
    pub fn mean(&self) -> f64 {
        self.mean
    }

    /// Sample variance with n − 1 denominator (0 with fewer than two values).
    pub fn variance(&self) -> f64 {
        if self.count < 2 {
            0.0
        } else {
            (self.m2 / (self.count - 1) as f64).max(0.0)
        }
    }

    /// Sample standard deviation.
    pub fn std_dev(&self) -> f64 {
        self.variance().sqrt()
    }

    /// Student t interval for the mean; needs at least two values.
    pub fn t_interval(&self, confidence: f64) -> Result<MeanEstimate> {
        check_confidence(confidence)?;
        if self.count < 2 {
            return Err(MonitorError::InvalidInput {
                what: "a t interval",
                reason: format!("it needs at least 2 values, got {}", self.count),
            });
        }
        let n = self.count as f64;
        let sd = self.std_dev();
        let t = t_quantile(0.5 + confidence / 2.0, n - 1.0);
        let half = t * sd / n.sqrt();
        Ok(MeanEstimate {
            count: self.count,
            mean: self.mean,
            std_dev: sd,
            lower: self.mean - half,
            upper: self.mean + half,
            confidence,
            method: IntervalMethod::T,
        })
    }
}

/// Mean of `values` with a Student t interval at `confidence`.
pub fn mean_t_interval(values: &[f64], confidence: f64) -> Result<MeanEstimate> {
    check_values("a t interval", values)?;
    let mut m = Moments::new();
    values.iter().for_each(|&v| m.push(v));
    m.t_interval(confidence)
}

/// Mean of `values` with a percentile-bootstrap interval: `resamples` resamples with
/// replacement drawn by a generator seeded with `seed` (same inputs, same interval), and the
/// interval's ends are the (1 − c)/2 and (1 + c)/2 percentiles (rule of [`percentile`]) of
/// the resampled means. Use it for skewed data such as latencies or time to human, where the t
/// interval's symmetry is wrong.
pub fn bootstrap_mean_interval(values: &[f64], confidence: f64, resamples: usize, seed: u64) -> Result<MeanEstimate> {
    check_confidence(confidence)?;
    check_values("a bootstrap interval", values)?;
    if resamples < 100 {
        return Err(MonitorError::InvalidInput {
            what: "a bootstrap interval",
            reason: format!("it needs at least 100 resamples, got {resamples}"),
        });
    }
    let mut m = Moments::new();
    values.iter().for_each(|&v| m.push(v));
    let mut rng = SeededRng::new(seed);
    let n = values.len();
    let mut means: Vec<f64> =
        (0..resamples).map(|_| (0..n).map(|_| values[rng.below(n)]).sum::<f64>() / n as f64).collect();
    means.sort_by(f64::total_cmp);
    Ok(MeanEstimate {
        count: m.count(),
        mean: m.mean(),
        std_dev: m.std_dev(),
        lower: percentile_of_sorted(&means, (1.0 - confidence) / 2.0),
        upper: percentile_of_sorted(&means, (1.0 + confidence) / 2.0),
        confidence,
        method: IntervalMethod::Bootstrap,
    })
}

/// Percentile `q` (0 ≤ q ≤ 1) of sorted, non-empty values by linear interpolation between
/// closest ranks: h = (n − 1)·q, result = x₍⌊h⌋₎ + (h − ⌊h⌋)(x₍⌊h⌋₊₁₎ − x₍⌊h⌋₎) with 0-based
/// ranks. This is Hyndman & Fan's type 7, the default of NumPy, R and spreadsheets'
/// PERCENTILE.INC, and Python's `statistics.quantiles(method="inclusive")`.
fn percentile_of_sorted(sorted: &[f64], q: f64) -> f64 {
    let h = (sorted.len() - 1) as f64 * q;
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
}

/// Percentile `q` in [0, 1] of `values` (any order), by the rule of type 7 (see
/// [`Percentiles`]): linear interpolation between closest ranks at h = (n − 1)·q.
pub fn percentile(values: &[f64], q: f64) -> Result<f64> {
    check_values("a percentile", values)?;
    if !(0.0..=1.0).contains(&q) {
        return Err(MonitorError::InvalidInput {
            what: "a percentile",
            reason: format!("the quantile must be within [0, 1], got {q}"),
        });
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    Ok(percentile_of_sorted(&sorted, q))
}

/// The p50, p90 and p99 of a sample.
///
/// Interpolation rule (Hyndman & Fan type 7, NumPy's and R's default): sort the n values,
/// take h = (n − 1)·q and interpolate linearly between the values at 0-based ranks ⌊h⌋ and
/// ⌊h⌋ + 1. So p50 of [1, 2, 3, 4] is 2.5, and a single value is every percentile.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Number of values.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
}

impl Percentiles {
    /// Computes p50, p90 and p99 of `values` (any order, at least one, all finite).
    pub fn of(values: &[f64]) -> Result<Self> {
        check_values("percentiles", values)?;
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        Ok(Self {
            count: sorted.len() as u64,
            p50: percentile_of_sorted(&sorted, 0.5),
            p90: percentile_of_sorted(&sorted, 0.9),
            p99: percentile_of_sorted(&sorted, 0.99),
        })
    }
}

/// Counts of satisfaction scores 1–5, mergeable across buckets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SatisfactionDistribution {
    /// `counts[i]` is the number of scores equal to `i + 1`.
    pub counts: [u64; 5],
}

impl SatisfactionDistribution {
    /// An empty distribution.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one score; anything outside 1–5 is rejected.
    pub fn record(&mut self, score: u8) -> Result<()> {
        match score {
            1..=5 => {
                self.counts[usize::from(score - 1)] += 1;
                Ok(())
            }
            _ => Err(MonitorError::InvalidValue {
                what: "satisfaction score",
                reason: format!("scores run from 1 to 5, got {score}"),
            }),
        }
    }

    /// Adds another bucket's counts.
    pub fn merge(&mut self, other: &SatisfactionDistribution) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a += b;
        }
    }

    /// Number of scores recorded.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Number of scores equal to `score` (0 for scores outside 1–5).
    pub fn count(&self, score: u8) -> u64 {
        match score {
            1..=5 => self.counts[usize::from(score - 1)],
            _ => 0,
        }
    }

    /// Share of each score among all scores (all 0 when empty).
    pub fn shares(&self) -> [f64; 5] {
        let total = self.total();
        if total == 0 {
            return [0.0; 5];
        }
        self.counts.map(|c| c as f64 / total as f64)
    }

    /// The scores' running moments.
    pub fn moments(&self) -> Moments {
        let mut m = Moments::new();
        for (i, &c) in self.counts.iter().enumerate() {
            m.push_weighted((i + 1) as f64, c);
        }
        m
    }

    /// Mean score with a t interval (needs at least two scores).
    pub fn mean_interval(&self, confidence: f64) -> Result<MeanEstimate> {
        self.moments().t_interval(confidence)
    }

    /// Share of `interactions` that received a score, with its Wilson interval.
    pub fn response_rate(&self, interactions: u64, confidence: f64) -> Result<RateEstimate> {
        wilson_interval(self.total(), interactions, confidence)
    }
}

/// Cohen's kappa of two raters over the same items, any number of categories: the observed
/// agreement p_o corrected for the agreement p_e their marginal shares give by chance,
/// κ = (p_o − p_e) / (1 − p_e). `None` without pairs, or when chance agreement is total (both
/// raters used one and the same category only), where kappa is undefined.
pub fn cohen_kappa<T: PartialEq>(pairs: &[(T, T)]) -> Option<f64> {
    if pairs.is_empty() {
        return None;
    }
    let n = pairs.len() as f64;
    let observed = pairs.iter().filter(|(a, b)| a == b).count() as f64 / n;
    let mut categories: Vec<&T> = Vec::new();
    for (a, b) in pairs {
        for c in [a, b] {
            if !categories.contains(&c) {
                categories.push(c);
            }
        }
    }
    let chance: f64 = categories
        .iter()
        .map(|c| {
            let first = pairs.iter().filter(|(a, _)| a == *c).count() as f64 / n;
            let second = pairs.iter().filter(|(_, b)| b == *c).count() as f64 / n;
            first * second
        })
        .sum();
    if (1.0 - chance).abs() < 1e-12 {
        return None;
    }
    Some((observed - chance) / (1.0 - chance))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(got: f64, want: f64, tol: f64) {
        assert!((got - want).abs() <= tol, "got {got}, want {want} (tol {tol})");
    }

    // Reference values, computed independently with Python 3 / SciPy 1.17:
    //
    //   import math, statistics
    //   from scipy import stats
    //   def wilson(k, n, c):
    //       z = stats.norm.ppf(0.5 + c / 2); p = k / n
    //       d = 1 + z*z/n; centre = (p + z*z/(2*n)) / d
    //       half = z / d * math.sqrt(p*(1-p)/n + z*z/(4*n*n))
    //       return centre - half, centre + half
    //   wilson(5, 100, .95)   # (0.0215436792, 0.1117504692)
    //   wilson(0, 12, .95)    # (0.0, 0.2424940067)
    //   wilson(81, 263, .90)  # (0.2633136172, 0.3565663496)
    //   stats.binomtest(5, 100).proportion_ci(method="wilson")  # agrees to 1e-15
    //   xs = [2.0, 4.0, 4.0, 5.0, 7.0, 9.0, 13.0]
    //   m = statistics.mean(xs); s = statistics.stdev(xs)
    //   t = stats.t.ppf(0.975, len(xs) - 1); (m - t*s/math.sqrt(7), m + t*s/math.sqrt(7))
    //   statistics.quantiles(ys, n=100, method="inclusive")  # [p1..p99] for the percentile fixture
    #[test]
    fn wilson_fixtures() {
        let w = wilson_interval(5, 100, 0.95).unwrap();
        close(w.estimate, 0.05, 1e-15);
        close(w.lower, 0.021_543_679_154_367_96, 1e-9);
        close(w.upper, 0.111_750_469_231_919_13, 1e-9);

        let w = wilson_interval(0, 12, 0.95).unwrap();
        assert_eq!(w.lower, 0.0);
        close(w.upper, 0.242_494_006_655_240_85, 1e-9);

        let w = wilson_interval(81, 263, 0.90).unwrap();
        close(w.lower, 0.263_313_617_188_481_4, 1e-9);
        close(w.upper, 0.356_566_349_608_488_15, 1e-9);

        let w = wilson_interval(7, 7, 0.99).unwrap();
        assert_eq!(w.upper, 1.0);
        assert!(w.lower > 0.0 && w.lower < 1.0);
    }

    #[test]
    fn rate_and_confidence_errors_are_precise() {
        let e = wilson_interval(3, 0, 0.95).unwrap_err();
        assert_eq!(e.to_string(), "cannot compute a rate interval: there are no trials");
        let e = wilson_interval(5, 4, 0.95).unwrap_err();
        assert_eq!(e.to_string(), "cannot compute a rate interval: 5 successes is more than 4 trials");
        let e = wilson_interval(1, 4, 1.0).unwrap_err();
        assert!(e.to_string().contains("confidence level must be strictly between 0 and 1, got 1"), "{e}");
    }

    #[test]
    fn t_interval_fixture() {
        let xs = [2.0, 4.0, 4.0, 5.0, 7.0, 9.0, 13.0];
        let m = mean_t_interval(&xs, 0.95).unwrap();
        close(m.mean, 6.285_714_285_714_286, 1e-12);
        close(m.std_dev, 3.728_908_942_943_218, 1e-12);
        close(m.lower, 2.837_048_703_968_117_4, 1e-9);
        close(m.upper, 9.734_379_867_460_454, 1e-9);
        assert_eq!(m.method, IntervalMethod::T);
        assert!(mean_t_interval(&[1.0], 0.95).is_err());
        assert!(mean_t_interval(&[1.0, f64::NAN], 0.95).is_err());
    }

    #[test]
    fn moments_merge_equals_pushing_everything() {
        let xs: Vec<f64> = (0..50).map(|i| (i as f64 * 0.37).sin() * 10.0 + i as f64).collect();
        let mut all = Moments::new();
        xs.iter().for_each(|&x| all.push(x));
        let mut a = Moments::new();
        let mut b = Moments::new();
        xs[..17].iter().for_each(|&x| a.push(x));
        xs[17..].iter().for_each(|&x| b.push(x));
        a.merge(&b);
        assert_eq!(a.count(), all.count());
        close(a.mean(), all.mean(), 1e-12);
        close(a.variance(), all.variance(), 1e-9);
    }

    #[test]
    fn bootstrap_is_seeded_and_sensible() {
        // Skewed sample (time to human, seconds).
        let xs = [3.0, 4.0, 4.5, 5.0, 6.0, 7.0, 9.0, 12.0, 20.0, 45.0, 110.0, 8.0, 5.5, 6.5, 4.2];
        let a = bootstrap_mean_interval(&xs, 0.95, 2_000, 42).unwrap();
        let b = bootstrap_mean_interval(&xs, 0.95, 2_000, 42).unwrap();
        assert_eq!(a, b, "same seed, same interval");
        let t = mean_t_interval(&xs, 0.95).unwrap();
        assert!(a.lower < a.mean && a.mean < a.upper);
        // Right-skewed data: the bootstrap interval sits to the right of the symmetric t interval
        // at its lower end (it cannot go below the smallest plausible mean).
        assert!(a.lower > t.lower, "bootstrap {a:?} vs t {t:?}");
        close(a.mean, 16.646_666_666_666_67, 1e-9);
        assert!(bootstrap_mean_interval(&xs, 0.95, 10, 1).is_err());
    }

    #[test]
    fn percentile_fixtures() {
        // numpy.percentile(ys, [50, 90, 99]) (linear) == statistics.quantiles(inclusive)
        let ys = [15.0, 20.0, 35.0, 40.0, 50.0, 3.0, 7.0, 1.0, 120.0, 64.0];
        let p = Percentiles::of(&ys).unwrap();
        close(p.p50, 27.5, 1e-12);
        close(p.p90, 69.6, 1e-12);
        close(p.p99, 114.96, 1e-12);
        assert_eq!(p.count, 10);
        let one = Percentiles::of(&[4.0]).unwrap();
        assert_eq!((one.p50, one.p90, one.p99), (4.0, 4.0, 4.0));
        close(percentile(&[1.0, 2.0, 3.0, 4.0], 0.5).unwrap(), 2.5, 1e-15);
        close(percentile(&[1.0, 2.0, 3.0, 4.0], 0.25).unwrap(), 1.75, 1e-15);
        assert!(percentile(&[1.0], 1.5).is_err());
        assert!(Percentiles::of(&[]).is_err());
    }

    #[test]
    fn satisfaction_distribution() {
        let mut d = SatisfactionDistribution::new();
        for s in [5, 5, 4, 3, 5, 1, 4, 4, 5, 2] {
            d.record(s).unwrap();
        }
        assert_eq!(d.total(), 10);
        assert_eq!(d.count(5), 4);
        assert_eq!(d.counts, [1, 1, 1, 3, 4]);
        close(d.shares()[4], 0.4, 1e-15);
        let m = d.mean_interval(0.95).unwrap();
        let direct = mean_t_interval(&[5.0, 5.0, 4.0, 3.0, 5.0, 1.0, 4.0, 4.0, 5.0, 2.0], 0.95).unwrap();
        close(m.mean, 3.8, 1e-12);
        close(m.lower, direct.lower, 1e-12);
        close(m.upper, direct.upper, 1e-12);
        let r = d.response_rate(40, 0.95).unwrap();
        close(r.estimate, 0.25, 1e-15);
        let e = d.record(6).unwrap_err();
        assert_eq!(e.to_string(), "invalid satisfaction score: scores run from 1 to 5, got 6");
        let mut e2 = SatisfactionDistribution::new();
        e2.merge(&d);
        e2.merge(&d);
        assert_eq!(e2.total(), 20);
    }
    #[test]
    fn kappa_matches_a_hand_computed_table() {
        // 10 items, labels a/b/c. Agreements: (a,a)×4, (b,b)×3, (c,c)×1 → p_o = 0.8;
        // disagreements (a,b) and (c,b). Rater 1: a×5, b×3, c×2; rater 2: a×4, b×5, c×1.
        // p_e = 0.5·0.4 + 0.3·0.5 + 0.2·0.1 = 0.37 → κ = (0.8 − 0.37) / 0.63 = 43/63.
        let mut pairs = vec![("a", "a"); 4];
        pairs.extend(vec![("b", "b"); 3]);
        pairs.push(("c", "c"));
        pairs.push(("a", "b"));
        pairs.push(("c", "b"));
        let kappa = cohen_kappa(&pairs).unwrap();
        assert!((kappa - 43.0 / 63.0).abs() < 1e-12, "{kappa}");
    }

    #[test]
    fn kappa_is_one_for_perfect_agreement_and_undefined_without_variation() {
        assert_eq!(cohen_kappa(&[(1, 1), (2, 2)]), Some(1.0));
        assert_eq!(cohen_kappa(&[(1, 1), (1, 1)]), None);
        assert_eq!(cohen_kappa::<u8>(&[]), None);
        // Systematic disagreement on two balanced categories: p_o = 0, p_e = 0.5 → κ = −1.
        assert_eq!(cohen_kappa(&[(true, false), (false, true)]), Some(-1.0));
    }
}
