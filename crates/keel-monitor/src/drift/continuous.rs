//! Window-vs-reference tests for continuous streams (latency, a check score, response length):
//! the two-sample Kolmogorov–Smirnov test and the Wasserstein-1 distance.
//!
//! Both learn a sorted reference from the first `reference_size` values, then keep the most
//! recent `window_size` values both in arrival order (to evict the oldest) and sorted (by
//! binary-search insertion), so each update costs O(window) moves plus one O(reference +
//! window) merge walk of the two empirical distribution functions.
//!
//! Both skip that walk when it provably cannot reach the threshold: once the window is full,
//! one update (one value in, one out) moves every point of F_win by at most 1/n, so D moves by
//! at most 1/n, and W₁ by at most |x_in − x_out|/n. While the last computed statistic plus
//! that accumulated bound stays below the threshold the walk is skipped, so signals fire at
//! exactly the same observation as with a walk on every update, at a fraction of the cost on a
//! quiet stream. The flip side: between walks [`DriftDetector::statistic`] reports the last
//! computed value.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::{check_positive, check_windows, expect_value, DriftDetector, DriftSignal, Method, Observation};
use crate::error::Result;
use crate::special::{ln_kolmogorov_sf, surprise};
use crate::stats::Moments;

/// Relative slack on the skip bounds, so float rounding can never skip a walk that would fire.
const BOUND_SLACK: f64 = 1e-9;

/// What one push did.
struct Pushed {
    /// The window holds at least `min_samples` values: a comparison is possible.
    ready: bool,
    /// The window was already full, so this push evicted `evicted`.
    evicted: Option<f64>,
}

/// Sorted reference plus a sliding window kept in arrival order and sorted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct ValueWindows {
    reference: Vec<f64>,
    reference_moments: Moments,
    reference_sorted: bool,
    ring: VecDeque<f64>,
    sorted: Vec<f64>,
}

impl ValueWindows {
    /// Feeds one value.
    fn push(&mut self, x: f64, reference_size: u64, window_size: u64, min_samples: u64) -> Pushed {
        if (self.reference.len() as u64) < reference_size {
            self.reference.push(x);
            self.reference_moments.push(x);
            if self.reference.len() as u64 == reference_size {
                self.reference.sort_by(f64::total_cmp);
                self.reference_sorted = true;
            }
            return Pushed { ready: false, evicted: None };
        }
        self.ring.push_back(x);
        let at = self.sorted.partition_point(|v| v.total_cmp(&x).is_lt());
        self.sorted.insert(at, x);
        let mut evicted = None;
        if self.ring.len() as u64 > window_size {
            if let Some(old) = self.ring.pop_front() {
                let at = self.sorted.partition_point(|v| v.total_cmp(&old).is_lt());
                if at < self.sorted.len() {
                    self.sorted.remove(at);
                }
                evicted = Some(old);
            }
        }
        Pushed { ready: self.sorted.len() as u64 >= min_samples, evicted }
    }

    fn ready(&self) -> bool {
        self.reference_sorted
    }

    /// Walks the merged order of both sorted samples once, calling `f(e, next, i, j)` after
    /// taking each element `e` (except the last): `i`, `j` count the reference and window
    /// elements taken so far and `next` is the smallest element not yet taken. The ECDF gap is
    /// only meaningful where `next > e` (past a run of ties). The loop avoids data-dependent
    /// branches (merge order is random, so branches would mispredict half the time).
    #[inline(always)]
    fn merge_walk(&self, mut f: impl FnMut(f64, f64, usize, usize)) {
        let (r, w) = (&self.reference, &self.sorted);
        let head = |v: &Vec<f64>, k: usize| v.get(k).copied().unwrap_or(f64::INFINITY);
        let (mut i, mut j) = (0, 0);
        for _ in 1..r.len() + w.len() {
            let (a, b) = (head(r, i), head(w, j));
            let e = a.min(b);
            i += usize::from(a <= b);
            j += usize::from(b < a);
            f(e, head(r, i).min(head(w, j)), i, j);
        }
    }

    /// KS statistic D = sup |F_ref − F_win| and the value where the gap is largest, with the
    /// sign of F_win − F_ref there (positive: the window sits lower).
    fn ks(&self) -> (f64, f64, f64) {
        let (nr, nw) = (self.reference.len() as i64, self.sorted.len() as i64);
        if nr == 0 || nw == 0 {
            return (0.0, 0.0, 0.0);
        }
        // Gaps scaled by nr·nw stay integers: F_win − F_ref = (j·nr − i·nw) / (nr·nw).
        let (mut best, mut best_signed, mut at) = (0i64, 0i64, 0.0);
        self.merge_walk(|e, next, i, j| {
            let signed = j as i64 * nr - i as i64 * nw;
            let better = next > e && signed.abs() > best;
            best = if better { signed.abs() } else { best };
            best_signed = if better { signed } else { best_signed };
            at = if better { e } else { at };
        });
        let scale = (nr * nw) as f64;
        (best as f64 / scale, at, best_signed as f64 / scale)
    }

    /// W₁ = ∫ |F_ref(x) − F_win(x)| dx.
    fn wasserstein(&self) -> f64 {
        let (nr, nw) = (self.reference.len() as i64, self.sorted.len() as i64);
        if nr == 0 || nw == 0 {
            return 0.0;
        }
        let mut area = 0.0;
        self.merge_walk(|e, next, i, j| {
            area += (j as i64 * nr - i as i64 * nw).abs() as f64 * (next - e);
        });
        area / (nr * nw) as f64
    }

    fn window_mean(&self) -> f64 {
        self.ring.iter().sum::<f64>() / self.ring.len().max(1) as f64
    }
}

fn validate_continuous(method: Method, threshold: f64, reference_size: u64, window_size: u64, min: u64) -> Result<()> {
    check_positive(method, "threshold", threshold)?;
    check_windows(method, reference_size, window_size, min)
}

// ---------------------------------------------------------------------------------------------

/// Kolmogorov–Smirnov configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KsConfig {
    /// Surprise −log10(p) at which to signal (4 means p < 10⁻⁴). The window is tested after
    /// every observation, so the per-test level must be far below the usual 0.05.
    pub threshold: f64,
    /// Values in the reference.
    pub reference_size: u64,
    /// Values in the sliding window.
    pub window_size: u64,
    /// Window fill before testing (2..=window_size).
    pub min_samples: u64,
}

impl Default for KsConfig {
    fn default() -> Self {
        Self { threshold: 4.0, reference_size: 1_000, window_size: 500, min_samples: 500 }
    }
}

impl KsConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        validate_continuous(Method::Ks, self.threshold, self.reference_size, self.window_size, self.min_samples)
    }
}

/// Two-sample Kolmogorov–Smirnov test between the reference and the window.
///
/// D = sup |F_ref − F_win| (ties handled by stepping past equal values together); the p-value
/// is the asymptotic Kolmogorov tail Q_KS(λ) with Stephens' small-sample correction
/// λ = (√nₑ + 0.12 + 0.11/√nₑ)·D, nₑ = n·m/(n + m) (Press et al., *Numerical Recipes* §14.3.3).
/// The statistic is −log10(p). Meant for continuous values; on heavily tied data (0/1 rates)
/// it is conservative, use CUSUM or chi-square there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ks {
    config: KsConfig,
    windows: ValueWindows,
    statistic: f64,
    /// D at the last walk over a full window, and updates since; `None` before the first.
    last_walk: Option<(f64, u64)>,
    seen: u64,
}

impl Ks {
    /// A fresh detector (the config is trusted: build through [`super::DetectorConfig`] to validate).
    pub fn new(config: KsConfig) -> Self {
        Self { config, windows: ValueWindows::default(), statistic: 0.0, last_walk: None, seen: 0 }
    }

    /// The configuration.
    pub fn config(&self) -> &KsConfig {
        &self.config
    }
}

/// ln p-value of a two-sample KS statistic `d` for samples of sizes `n` and `m`.
pub(crate) fn ks_ln_p_value(d: f64, n: f64, m: f64) -> f64 {
    let ne = n * m / (n + m);
    let root = ne.sqrt();
    ln_kolmogorov_sf((root + 0.12 + 0.11 / root) * d)
}

impl DriftDetector for Ks {
    fn update(&mut self, observation: &Observation) -> Result<Option<DriftSignal>> {
        let x = expect_value(Method::Ks, observation)?;
        self.seen += 1;
        let c = &self.config;
        let pushed = self.windows.push(x, c.reference_size, c.window_size, c.min_samples);
        if !pushed.ready {
            return Ok(None);
        }
        let (nr, nw) = (self.windows.reference.len() as f64, self.windows.sorted.len() as f64);
        let full = pushed.evicted.is_some();
        if let (true, Some((d, since))) = (full, self.last_walk.as_mut()) {
            *since += 1;
            let bound = (*d + *since as f64 / nw).min(1.0);
            if surprise(ks_ln_p_value(bound, nr, nw)) < c.threshold - BOUND_SLACK {
                return Ok(None);
            }
        }
        let (d, at, sign) = self.windows.ks();
        self.last_walk = full.then_some((d, 0));
        let ln_p = ks_ln_p_value(d, nr, nw);
        let s = surprise(ln_p);
        self.statistic = s;
        if s < c.threshold {
            return Ok(None);
        }
        let word = if sign > 0.0 { "lower" } else { "higher" };
        let signal = DriftSignal {
            method: Method::Ks,
            statistic: s,
            threshold: c.threshold,
            p_value: Some(ln_p.exp()),
            window_size: self.windows.sorted.len() as u64,
            reference_size: self.windows.reference.len() as u64,
            samples: self.seen,
            detail: format!(
                "distribution moved {word}: KS D = {d:.4} at {at:.4}; window mean {:.4} vs reference {:.4}",
                self.windows.window_mean(),
                self.windows.reference_moments.mean()
            ),
        };
        self.reset();
        Ok(Some(signal))
    }

    fn statistic(&self) -> f64 {
        self.statistic
    }

    fn threshold(&self) -> f64 {
        self.config.threshold
    }

    fn samples(&self) -> u64 {
        self.seen
    }

    fn is_ready(&self) -> bool {
        self.windows.ready()
    }

    fn reset(&mut self) {
        *self = Self { seen: self.seen, ..Self::new(self.config.clone()) };
    }

    fn method(&self) -> Method {
        Method::Ks
    }
}

// ---------------------------------------------------------------------------------------------

/// Wasserstein configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WassersteinConfig {
    /// Distance, in reference standard deviations, at which to signal.
    pub threshold: f64,
    /// Values in the reference.
    pub reference_size: u64,
    /// Values in the sliding window.
    pub window_size: u64,
    /// Window fill before testing (2..=window_size).
    pub min_samples: u64,
}

impl Default for WassersteinConfig {
    fn default() -> Self {
        Self { threshold: 0.22, reference_size: 1_000, window_size: 500, min_samples: 500 }
    }
}

impl WassersteinConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        validate_continuous(
            Method::Wasserstein,
            self.threshold,
            self.reference_size,
            self.window_size,
            self.min_samples,
        )
    }
}

/// Wasserstein-1 (earth mover's) distance between the reference and window empirical
/// distributions, W₁ = ∫ |F_ref(x) − F_win(x)| dx, divided by the reference's standard
/// deviation so the threshold does not depend on the stream's unit (a reference with no spread
/// leaves the distance in raw units). Unlike KS it grows with how *far* mass moved, so it
/// notices a thin tail moving a long way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Wasserstein {
    config: WassersteinConfig,
    windows: ValueWindows,
    statistic: f64,
    /// Normalised W₁ at the last walk over a full window, and the bound on how far it may have
    /// moved since; `None` before the first.
    last_walk: Option<(f64, f64)>,
    seen: u64,
}

impl Wasserstein {
    /// A fresh detector (the config is trusted: build through [`super::DetectorConfig`] to validate).
    pub fn new(config: WassersteinConfig) -> Self {
        Self { config, windows: ValueWindows::default(), statistic: 0.0, last_walk: None, seen: 0 }
    }

    /// The configuration.
    pub fn config(&self) -> &WassersteinConfig {
        &self.config
    }
}

impl DriftDetector for Wasserstein {
    fn update(&mut self, observation: &Observation) -> Result<Option<DriftSignal>> {
        let x = expect_value(Method::Wasserstein, observation)?;
        self.seen += 1;
        let c = &self.config;
        let pushed = self.windows.push(x, c.reference_size, c.window_size, c.min_samples);
        if !pushed.ready {
            return Ok(None);
        }
        let sd = self.windows.reference_moments.std_dev();
        let scale = if sd > 0.0 && sd.is_finite() { sd } else { 1.0 };
        let nw = self.windows.sorted.len() as f64;
        if let (Some(out), Some((w, moved))) = (pushed.evicted, self.last_walk.as_mut()) {
            *moved += (x - out).abs() / nw / scale;
            if (*w + *moved).is_finite() && *w + *moved < c.threshold * (1.0 - BOUND_SLACK) {
                return Ok(None);
            }
        }
        let raw = self.windows.wasserstein();
        let w = raw / scale;
        self.statistic = if w.is_finite() { w } else { f64::MAX };
        self.last_walk = pushed.evicted.map(|_| (self.statistic, 0.0));
        if self.statistic < c.threshold {
            return Ok(None);
        }
        let signal = DriftSignal {
            method: Method::Wasserstein,
            statistic: self.statistic,
            threshold: c.threshold,
            p_value: None,
            window_size: self.windows.sorted.len() as u64,
            reference_size: self.windows.reference.len() as u64,
            samples: self.seen,
            detail: format!(
                "distribution moved by {raw:.4} (raw units); window mean {:.4} vs reference {:.4} (sd {sd:.4})",
                self.windows.window_mean(),
                self.windows.reference_moments.mean()
            ),
        };
        self.reset();
        Ok(Some(signal))
    }

    fn statistic(&self) -> f64 {
        self.statistic
    }

    fn threshold(&self) -> f64 {
        self.config.threshold
    }

    fn samples(&self) -> u64 {
        self.seen
    }

    fn is_ready(&self) -> bool {
        self.windows.ready()
    }

    fn reset(&mut self) {
        *self = Self { seen: self.seen, ..Self::new(self.config.clone()) };
    }

    fn method(&self) -> Method {
        Method::Wasserstein
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(reference: &[f64], window: &[f64]) -> ValueWindows {
        let mut w = ValueWindows::default();
        for &x in reference {
            let _ = w.push(x, reference.len() as u64, window.len() as u64, 1);
        }
        for &x in window {
            let _ = w.push(x, reference.len() as u64, window.len() as u64, 1);
        }
        w
    }

    // scipy.stats.ks_2samp(a, b).statistic and scipy.stats.wasserstein_distance(a, b) with
    //   a = [0.1, 0.4, 0.4, 0.7, 1.2, 1.9, 2.5, 3.0]; b = [0.4, 0.9, 1.5, 1.8, 2.2, 3.3]
    //   -> D = 0.3333333333333333, W1 = 0.4666666666666667
    // scipy.stats.kstwobign.sf((sqrt(ne) + 0.12 + 0.11/sqrt(ne)) * 0.3), ne = 300*200/500
    //   -> 4.968519331781085e-10
    #[test]
    fn ks_and_wasserstein_fixtures() {
        let a = [0.1, 0.4, 0.4, 0.7, 1.2, 1.9, 2.5, 3.0];
        let b = [0.4, 0.9, 1.5, 1.8, 2.2, 3.3];
        let w = filled(&a, &b);
        let (d, _, _) = w.ks();
        assert!((d - 1.0 / 3.0).abs() < 1e-12, "{d}");
        assert!((w.wasserstein() - 0.466_666_666_666_666_7).abs() < 1e-12, "{}", w.wasserstein());
        let p = ks_ln_p_value(0.3, 300.0, 200.0).exp();
        assert!((p / 4.968_519_331_781_085e-10 - 1.0).abs() < 1e-10, "{p}");
    }

    /// The skipped walks never change when a signal fires: compare with a walk on every update.
    #[test]
    fn skipping_walks_fires_exactly_when_walking_every_time_would() {
        use crate::bench::{Scenario, Stream};
        let (r, w) = (500, 300);
        let ks_threshold = 4.0;
        let w_threshold = 0.2;
        for (seed, change) in [(1, Some(3_000)), (2, Some(2_500)), (3, None)] {
            let mut ks =
                Ks::new(KsConfig { threshold: ks_threshold, reference_size: r, window_size: w, min_samples: w });
            let mut wd = Wasserstein::new(WassersteinConfig {
                threshold: w_threshold,
                reference_size: r,
                window_size: w,
                min_samples: w,
            });
            let (mut eager_ks, mut eager_w) = (ValueWindows::default(), ValueWindows::default());
            let mut stream = Stream::new(Scenario::MeanShift, seed, change);
            let (mut walked, mut fired) = (0, 0);
            for _ in 0..8_000 {
                let obs = stream.next_observation();
                let Observation::Value(x) = obs else { unreachable!() };
                let ks_fired = ks.update(&obs).unwrap().is_some();
                if eager_ks.push(x, r, w, w).ready {
                    walked += 1;
                    let (nr, nw) = (eager_ks.reference.len() as f64, eager_ks.sorted.len() as f64);
                    let want = surprise(ks_ln_p_value(eager_ks.ks().0, nr, nw)) >= ks_threshold;
                    assert_eq!(ks_fired, want, "ks, seed {seed}");
                } else {
                    assert!(!ks_fired);
                }
                if ks_fired {
                    fired += 1;
                    eager_ks = ValueWindows::default();
                }
                let w_fired = wd.update(&obs).unwrap().is_some();
                if eager_w.push(x, r, w, w).ready {
                    let want = eager_w.wasserstein() / eager_w.reference_moments.std_dev() >= w_threshold;
                    assert_eq!(w_fired, want, "wasserstein, seed {seed}");
                } else {
                    assert!(!w_fired);
                }
                if w_fired {
                    fired += 1;
                    eager_w = ValueWindows::default();
                }
            }
            assert!(walked > 1_000);
            assert_eq!(fired > 0, change.is_some(), "seed {seed}");
        }
    }

    #[test]
    fn sliding_window_evicts_oldest_from_sorted_copy() {
        let mut w = ValueWindows::default();
        for x in [5.0, 1.0, 3.0] {
            let _ = w.push(x, 3, 2, 1);
        }
        for x in [9.0, 2.0, 7.0] {
            let _ = w.push(x, 3, 2, 1);
        }
        assert_eq!(w.ring, VecDeque::from(vec![2.0, 7.0]));
        assert_eq!(w.sorted, vec![2.0, 7.0]);
        assert_eq!(w.reference, vec![1.0, 3.0, 5.0]);
    }
}
