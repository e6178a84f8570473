//! Sequential change detectors for the mean of a value stream (a KPI, a check score, or a rate
//! fed as 0/1): Page–Hinkley, two-sided CUSUM and ADWIN.
//!
//! Page–Hinkley and CUSUM work on values standardised by a warm-up reference (mean and
//! standard deviation of the first `min_samples` values), so their `threshold`, `delta` and `k`
//! are in standard deviations and one default fits a latency in milliseconds and a 5 % rate
//! alike. The warm-up extends past `min_samples` while the values have no spread (all equal),
//! because a rare-event rate whose warm-up saw no event would otherwise standardise by zero
//! and call the first event a change.

use serde::{Deserialize, Serialize};

use super::{
    check_non_negative, check_positive, check_range, expect_value, DriftDetector, DriftSignal, Method, Observation,
};
use crate::error::Result;
use crate::stats::Moments;

/// Standardised values are clamped here so that absurd inputs keep the state finite.
const Z_LIMIT: f64 = 1e9;

/// Which direction of change a Page–Hinkley detector watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Increases and decreases.
    #[default]
    Both,
    /// Increases only (e.g. a wrong-answer rate).
    Up,
    /// Decreases only (e.g. satisfaction).
    Down,
}

/// The warm-up reference that standardises values.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Baseline {
    moments: Moments,
    ready: bool,
    mean: f64,
    scale: f64,
}

impl Baseline {
    /// Learns from `x` while warming up; returns whether the baseline was already ready
    /// (the value that completes the warm-up is not itself tested).
    fn learn(&mut self, x: f64, min_samples: u64) -> bool {
        if self.ready {
            return true;
        }
        self.moments.push(x);
        if self.moments.count() >= min_samples {
            let mean = self.moments.mean();
            let sd = self.moments.std_dev();
            if sd.is_finite() && mean.is_finite() && sd > 1e-12 * mean.abs().max(1.0) {
                self.ready = true;
                self.mean = mean;
                self.scale = sd;
            }
        }
        false
    }

    fn z(&self, x: f64) -> f64 {
        let z = (x - self.mean) / self.scale;
        if z.is_nan() {
            0.0
        } else {
            z.clamp(-Z_LIMIT, Z_LIMIT)
        }
    }

    fn count(&self) -> u64 {
        self.moments.count()
    }

    fn raw(&self, z: f64) -> f64 {
        self.mean + self.scale * z
    }
}

/// One side of a cumulative sum: its value, how long it has been away from zero, and the sum
/// of the standardised values over that run (to estimate the new level).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct Side {
    value: f64,
    run: u64,
    run_sum: f64,
}

impl Side {
    fn step(&mut self, increment: f64, z: f64) {
        let next = self.value + increment;
        if next > 0.0 {
            self.value = next;
            self.run += 1;
            self.run_sum += z;
        } else {
            *self = Side::default();
        }
    }
}

// ---------------------------------------------------------------------------------------------

/// Page–Hinkley configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PageHinkleyConfig {
    /// λ: the cumulative deviation, in reference standard deviations, that signals a change.
    pub threshold: f64,
    /// δ: the tolerated drift per observation, in reference standard deviations.
    pub delta: f64,
    /// Warm-up length that fixes the reference mean and standard deviation (at least 2).
    pub min_samples: u64,
    /// Which direction of change to watch.
    pub direction: Direction,
}

impl Default for PageHinkleyConfig {
    fn default() -> Self {
        Self { threshold: 55.0, delta: 0.1, min_samples: 1_000, direction: Direction::Both }
    }
}

impl PageHinkleyConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        let m = Method::PageHinkley;
        check_positive(m, "threshold", self.threshold)?;
        check_non_negative(m, "delta", self.delta)?;
        check_range(m, "min_samples", self.min_samples, 2, super::MAX_WINDOW)
    }
}

/// The Page–Hinkley test (Page 1954; Hinkley 1971) in both directions.
///
/// With standardised values zₜ and their running mean z̄ₜ (seeded with the warm-up), the
/// upward statistic is mₜ − min m over mₜ = Σ(zᵢ − z̄ᵢ − δ), computed by the equivalent
/// recursion Uₜ = max(0, Uₜ₋₁ + zₜ − z̄ₜ − δ); the downward one mirrors it. O(1) per update.
/// Unlike CUSUM it compares with the running mean rather than the fixed warm-up mean, so a
/// slightly wrong warm-up estimate fades instead of accumulating.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PageHinkley {
    config: PageHinkleyConfig,
    baseline: Baseline,
    mean_count: u64,
    mean_z: f64,
    up: Side,
    down: Side,
    seen: u64,
}

impl PageHinkley {
    /// A fresh detector (the config is trusted: build through [`super::DetectorConfig`] to validate).
    pub fn new(config: PageHinkleyConfig) -> Self {
        Self {
            config,
            baseline: Baseline::default(),
            mean_count: 0,
            mean_z: 0.0,
            up: Side::default(),
            down: Side::default(),
            seen: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &PageHinkleyConfig {
        &self.config
    }

    fn watched(&self) -> (f64, f64) {
        match self.config.direction {
            Direction::Both => (self.up.value, self.down.value),
            Direction::Up => (self.up.value, 0.0),
            Direction::Down => (0.0, self.down.value),
        }
    }
}

impl DriftDetector for PageHinkley {
    fn update(&mut self, observation: &Observation) -> Result<Option<DriftSignal>> {
        let x = expect_value(Method::PageHinkley, observation)?;
        self.seen += 1;
        if !self.baseline.learn(x, self.config.min_samples) {
            self.mean_count = self.baseline.count();
            return Ok(None);
        }
        let z = self.baseline.z(x);
        self.mean_count += 1;
        self.mean_z += (z - self.mean_z) / self.mean_count as f64;
        let deviation = z - self.mean_z;
        self.up.step(deviation - self.config.delta, z);
        self.down.step(-deviation - self.config.delta, z);
        let (up, down) = self.watched();
        let statistic = up.max(down);
        if statistic < self.config.threshold {
            return Ok(None);
        }
        let (side, word) = if up >= down { (self.up, "rose") } else { (self.down, "fell") };
        let recent = self.baseline.raw(side.run_sum / side.run.max(1) as f64);
        let signal = DriftSignal {
            method: Method::PageHinkley,
            statistic,
            threshold: self.config.threshold,
            p_value: None,
            window_size: side.run,
            reference_size: self.baseline.count(),
            samples: self.seen,
            detail: format!(
                "mean {word} from {:.4} (sd {:.4}) to about {recent:.4} over the last {} values",
                self.baseline.mean, self.baseline.scale, side.run
            ),
        };
        self.reset();
        Ok(Some(signal))
    }

    fn statistic(&self) -> f64 {
        let (up, down) = self.watched();
        up.max(down)
    }

    fn threshold(&self) -> f64 {
        self.config.threshold
    }

    fn samples(&self) -> u64 {
        self.seen
    }

    fn is_ready(&self) -> bool {
        self.baseline.ready
    }

    fn reset(&mut self) {
        *self = Self { seen: self.seen, ..Self::new(self.config.clone()) };
    }

    fn method(&self) -> Method {
        Method::PageHinkley
    }
}

// ---------------------------------------------------------------------------------------------

/// CUSUM configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CusumConfig {
    /// h: the cumulative sum, in reference standard deviations, that signals a change.
    pub threshold: f64,
    /// k: the slack per observation in reference standard deviations; about half the smallest
    /// shift worth detecting (0.1 targets shifts of ≈ 0.2 sd, e.g. a 5 % rate becoming 10 %).
    pub k: f64,
    /// Warm-up length that fixes the reference mean and standard deviation (at least 2).
    pub min_samples: u64,
}

impl Default for CusumConfig {
    fn default() -> Self {
        Self { threshold: 60.0, k: 0.1, min_samples: 2_000 }
    }
}

impl CusumConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        let m = Method::Cusum;
        check_positive(m, "threshold", self.threshold)?;
        check_non_negative(m, "k", self.k)?;
        check_range(m, "min_samples", self.min_samples, 2, super::MAX_WINDOW)
    }
}

/// Two-sided tabular CUSUM (Page 1954; Montgomery, *Statistical Quality Control*, §9.1) on
/// values standardised by the warm-up: S⁺ₜ = max(0, S⁺ₜ₋₁ + zₜ − k),
/// S⁻ₜ = max(0, S⁻ₜ₋₁ − zₜ − k); signals when either reaches h. O(1) per update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cusum {
    config: CusumConfig,
    baseline: Baseline,
    upper: Side,
    lower: Side,
    seen: u64,
}

impl Cusum {
    /// A fresh detector (the config is trusted: build through [`super::DetectorConfig`] to validate).
    pub fn new(config: CusumConfig) -> Self {
        Self { config, baseline: Baseline::default(), upper: Side::default(), lower: Side::default(), seen: 0 }
    }

    /// The configuration.
    pub fn config(&self) -> &CusumConfig {
        &self.config
    }
}

impl DriftDetector for Cusum {
    fn update(&mut self, observation: &Observation) -> Result<Option<DriftSignal>> {
        let x = expect_value(Method::Cusum, observation)?;
        self.seen += 1;
        if !self.baseline.learn(x, self.config.min_samples) {
            return Ok(None);
        }
        let z = self.baseline.z(x);
        self.upper.step(z - self.config.k, z);
        self.lower.step(-z - self.config.k, z);
        let statistic = self.upper.value.max(self.lower.value);
        if statistic < self.config.threshold {
            return Ok(None);
        }
        let (side, word) =
            if self.upper.value >= self.lower.value { (self.upper, "rose") } else { (self.lower, "fell") };
        let recent = self.baseline.raw(side.run_sum / side.run.max(1) as f64);
        let signal = DriftSignal {
            method: Method::Cusum,
            statistic,
            threshold: self.config.threshold,
            p_value: None,
            window_size: side.run,
            reference_size: self.baseline.count(),
            samples: self.seen,
            detail: format!(
                "mean {word} from {:.4} (sd {:.4}) to about {recent:.4} over the last {} values",
                self.baseline.mean, self.baseline.scale, side.run
            ),
        };
        self.reset();
        Ok(Some(signal))
    }

    fn statistic(&self) -> f64 {
        self.upper.value.max(self.lower.value)
    }

    fn threshold(&self) -> f64 {
        self.config.threshold
    }

    fn samples(&self) -> u64 {
        self.seen
    }

    fn is_ready(&self) -> bool {
        self.baseline.ready
    }

    fn reset(&mut self) {
        *self = Self { seen: self.seen, ..Self::new(self.config.clone()) };
    }

    fn method(&self) -> Method {
        Method::Cusum
    }
}

// ---------------------------------------------------------------------------------------------

/// ADWIN configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdwinConfig {
    /// δ: confidence parameter of the cut test (smaller: fewer false alarms, later detection).
    /// ADWIN's statistic is the mean gap divided by the cut bound, so its threshold is always 1.
    pub delta: f64,
    /// Smallest sub-window on either side of a cut (and half the width before the first test).
    pub min_samples: u64,
    /// Buckets kept per size class of the exponential histogram (M in the paper; ≥ 2).
    pub max_buckets: u64,
    /// Test for a cut every `clock` observations (1 tests every time).
    pub clock: u64,
    /// Bound on the window width: older buckets are dropped past it (the bounded variant).
    pub max_window: u64,
}

impl Default for AdwinConfig {
    fn default() -> Self {
        Self { delta: 3e-3, min_samples: 32, max_buckets: 5, clock: 32, max_window: 100_000 }
    }
}

impl AdwinConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        let m = Method::Adwin;
        if !(self.delta.is_finite() && self.delta > 0.0 && self.delta < 1.0) {
            return Err(super::invalid(m, "delta", format!("must be strictly between 0 and 1, got {}", self.delta)));
        }
        check_range(m, "min_samples", self.min_samples, 1, 100_000)?;
        check_range(m, "max_buckets", self.max_buckets, 2, 1_000)?;
        check_range(m, "clock", self.clock, 1, 100_000)?;
        check_range(m, "max_window", self.max_window, 4 * self.min_samples.max(1), super::MAX_WINDOW * 100)
    }
}

/// One exponential-histogram bucket: `n` values with their sum and sum of squared deviations.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Bucket {
    n: u64,
    total: f64,
    m2: f64,
}

impl Bucket {
    fn merge(a: Bucket, b: Bucket) -> Bucket {
        let n = a.n + b.n;
        let d = a.total / a.n as f64 - b.total / b.n as f64;
        Bucket { n, total: a.total + b.total, m2: a.m2 + b.m2 + d * d * (a.n * b.n) as f64 / n as f64 }
    }
}

/// A cut ADWIN found: sizes and means of the older and newer sub-windows, and the bound.
#[derive(Debug, Clone, Copy)]
struct Cut {
    n0: u64,
    n1: u64,
    mu0: f64,
    mu1: f64,
    eps: f64,
}

/// ADWIN (Bifet & Gavaldà, "Learning from time-changing data with adaptive windowing", 2007),
/// the ADWIN2 exponential-histogram form, *bounded*: the window also drops its oldest buckets
/// past `max_window`, which bounds memory and the persisted state and lets a very long stable
/// history still react within a bounded time.
///
/// Every `clock` observations it tries each bucket boundary as a cut between an older
/// sub-window W₀ and a newer W₁ (both ≥ `min_samples`), and cuts when
/// |μ₀ − μ₁| ≥ ε = √(2/m · σ²_W · ln(2/δ′)) + 2/(3m) · ln(2/δ′), with m = 1/(1/n₀ + 1/n₁),
/// σ²_W the window variance and δ′ = δ / ln n (the variance form of the paper's bound).
/// Cutting drops W₀; a check that cuts signals once. Amortised O(1) per insert and
/// O(M log W) per check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Adwin {
    config: AdwinConfig,
    /// `rows[i]` holds buckets of 2^i values, oldest first; higher rows are older.
    rows: Vec<Vec<Bucket>>,
    width: u64,
    total: f64,
    m2: f64,
    since_check: u64,
    last_ratio: f64,
    seen: u64,
}

impl Adwin {
    /// A fresh detector (the config is trusted: build through [`super::DetectorConfig`] to validate).
    pub fn new(config: AdwinConfig) -> Self {
        Self { config, rows: Vec::new(), width: 0, total: 0.0, m2: 0.0, since_check: 0, last_ratio: 0.0, seen: 0 }
    }

    /// The configuration.
    pub fn config(&self) -> &AdwinConfig {
        &self.config
    }

    /// Current window width.
    pub fn width(&self) -> u64 {
        self.width
    }

    /// Mean of the current window.
    pub fn mean(&self) -> f64 {
        if self.width == 0 {
            0.0
        } else {
            self.total / self.width as f64
        }
    }

    fn insert(&mut self, x: f64) {
        if self.width > 0 {
            let d = x - self.mean();
            self.m2 += d * d * self.width as f64 / (self.width + 1) as f64;
        }
        self.width += 1;
        self.total += x;
        if self.rows.is_empty() {
            self.rows.push(Vec::new());
        }
        self.rows[0].push(Bucket { n: 1, total: x, m2: 0.0 });
        let max = self.config.max_buckets as usize;
        let mut i = 0;
        while i < self.rows.len() && self.rows[i].len() > max {
            let a = self.rows[i].remove(0);
            let b = self.rows[i].remove(0);
            if i + 1 == self.rows.len() {
                self.rows.push(Vec::new());
            }
            self.rows[i + 1].push(Bucket::merge(a, b));
            i += 1;
        }
    }

    /// Drops the oldest bucket, keeping the window's running moments exact.
    fn drop_oldest(&mut self) {
        let Some(row) = self.rows.iter_mut().rev().find(|r| !r.is_empty()) else {
            return;
        };
        let b = row.remove(0);
        let rest = self.width - b.n;
        if rest == 0 {
            self.width = 0;
            self.total = 0.0;
            self.m2 = 0.0;
        } else {
            let mean_b = b.total / b.n as f64;
            let mean_rest = (self.total - b.total) / rest as f64;
            let d = mean_b - mean_rest;
            self.m2 = (self.m2 - b.m2 - d * d * (b.n * rest) as f64 / self.width as f64).max(0.0);
            self.width = rest;
            self.total -= b.total;
        }
        while self.rows.last().is_some_and(Vec::is_empty) {
            self.rows.pop();
        }
    }

    /// Scans the cut points oldest to newest; returns the largest gap/bound ratio seen and the
    /// first cut found.
    fn scan(&self) -> (f64, Option<Cut>) {
        let w = self.width as f64;
        let variance = self.m2 / w;
        let ln_term = (2.0 * w.ln() / self.config.delta).ln();
        let min = self.config.min_samples;
        let mut n0 = 0u64;
        let mut s0 = 0.0;
        let mut best = 0.0f64;
        for row in self.rows.iter().rev() {
            for b in row {
                n0 += b.n;
                s0 += b.total;
                let n1 = self.width - n0;
                if n1 < min {
                    return (best, None);
                }
                if n0 < min {
                    continue;
                }
                let mu0 = s0 / n0 as f64;
                let mu1 = (self.total - s0) / n1 as f64;
                let m = 1.0 / (1.0 / n0 as f64 + 1.0 / n1 as f64);
                let eps = (2.0 / m * variance * ln_term).sqrt() + 2.0 / (3.0 * m) * ln_term;
                let gap = (mu0 - mu1).abs();
                let ratio = if eps > 0.0 { gap / eps } else { 0.0 };
                best = best.max(ratio);
                if gap > eps {
                    return (best, Some(Cut { n0, n1, mu0, mu1, eps }));
                }
            }
        }
        (best, None)
    }
}

impl DriftDetector for Adwin {
    fn update(&mut self, observation: &Observation) -> Result<Option<DriftSignal>> {
        let x = expect_value(Method::Adwin, observation)?;
        self.seen += 1;
        self.insert(x);
        while self.width > self.config.max_window {
            self.drop_oldest();
        }
        self.since_check += 1;
        if self.since_check < self.config.clock || self.width < 2 * self.config.min_samples {
            return Ok(None);
        }
        self.since_check = 0;
        let (ratio, cut) = self.scan();
        self.last_ratio = ratio;
        let Some(Cut { n0, n1, mu0, mu1, eps }) = cut else {
            return Ok(None);
        };
        // Drop the older sub-window bucket by bucket until no cut remains.
        let mut dropped = 0;
        loop {
            let before = self.width;
            self.drop_oldest();
            dropped += before - self.width;
            if self.width < 2 * self.config.min_samples || self.scan().1.is_none() {
                break;
            }
        }
        self.last_ratio = 0.0;
        let word = if mu1 > mu0 { "rose" } else { "fell" };
        Ok(Some(DriftSignal {
            method: Method::Adwin,
            statistic: ratio,
            threshold: 1.0,
            p_value: None,
            window_size: n1,
            reference_size: n0,
            samples: self.seen,
            detail: format!(
                "mean {word} from {mu0:.4} (older {n0} values) to {mu1:.4} (newer {n1}); gap exceeds the cut bound \
                 {eps:.4}; dropped {dropped} old values"
            ),
        }))
    }

    fn statistic(&self) -> f64 {
        self.last_ratio
    }

    fn threshold(&self) -> f64 {
        1.0
    }

    fn samples(&self) -> u64 {
        self.seen
    }

    fn is_ready(&self) -> bool {
        self.width >= 2 * self.config.min_samples
    }

    fn reset(&mut self) {
        *self = Self { seen: self.seen, ..Self::new(self.config.clone()) };
    }

    fn method(&self) -> Method {
        Method::Adwin
    }
}
