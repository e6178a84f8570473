//! Window-vs-reference tests for categorical streams (action mix, detected language, which
//! check fired): the population stability index and the chi-square homogeneity test.
//!
//! Both learn a reference from the first `reference_size` categories, then compare it with the
//! most recent `window_size` categories after every observation. Categories are interned; past
//! `max_categories` distinct names, new names share one "(other)" cell so that a stream of
//! unique strings cannot grow the state without bound.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::{check_positive, check_range, check_windows, wrong_kind, DriftDetector, DriftSignal, Method, Observation};
use crate::error::Result;
use crate::special::{ln_chi2_sf, surprise};

/// The name reported for the shared overflow cell.
const OTHER: &str = "(other)";

/// Pseudo-count added to every category's count in PSI, so a category absent from one side
/// does not make the index infinite.
const PSI_PSEUDO_COUNT: f64 = 0.5;

/// Cells whose expected count falls below this are pooled before the chi-square test
/// (Cochran's rule), so rare categories do not inflate the statistic.
const MIN_EXPECTED: f64 = 5.0;

/// Reference counts, window ring and interner shared by both categorical methods.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CategoryWindows {
    /// Category name → cell index (cell 0 is "(other)").
    cells: BTreeMap<String, u32>,
    reference: Vec<u64>,
    reference_total: u64,
    window: Vec<u64>,
    ring: VecDeque<u32>,
}

impl CategoryWindows {
    fn new() -> Self {
        Self { cells: BTreeMap::new(), reference: vec![0], reference_total: 0, window: vec![0], ring: VecDeque::new() }
    }

    fn cell(&mut self, name: &str, max_categories: u64) -> usize {
        if let Some(&i) = self.cells.get(name) {
            return i as usize;
        }
        if self.cells.len() as u64 >= max_categories {
            return 0;
        }
        let i = self.reference.len();
        self.cells.insert(name.to_owned(), i as u32);
        self.reference.push(0);
        self.window.push(0);
        i
    }

    fn name(&self, cell: usize) -> &str {
        self.cells.iter().find(|(_, &i)| i as usize == cell).map_or(OTHER, |(n, _)| n.as_str())
    }

    /// Feeds one category; returns whether a full comparison is possible now.
    fn push(&mut self, name: &str, reference_size: u64, window_size: u64, max_categories: u64) -> bool {
        let cell = self.cell(name, max_categories);
        if self.reference_total < reference_size {
            self.reference[cell] += 1;
            self.reference_total += 1;
            return false;
        }
        self.ring.push_back(cell as u32);
        self.window[cell] += 1;
        if self.ring.len() as u64 > window_size {
            if let Some(old) = self.ring.pop_front() {
                self.window[old as usize] -= 1;
            }
        }
        true
    }

    fn window_total(&self) -> u64 {
        self.ring.len() as u64
    }

    /// PSI = Σ (wᵢ − rᵢ) ln(wᵢ / rᵢ) over smoothed shares; also the cell that moved most.
    fn psi(&self) -> (f64, usize) {
        let used: Vec<usize> = (0..self.reference.len()).filter(|&i| self.reference[i] + self.window[i] > 0).collect();
        let k = used.len() as f64;
        let r_total = self.reference_total as f64 + PSI_PSEUDO_COUNT * k;
        let w_total = self.window_total() as f64 + PSI_PSEUDO_COUNT * k;
        let mut psi = 0.0;
        let mut top = (0.0, 0);
        for i in used {
            let r = (self.reference[i] as f64 + PSI_PSEUDO_COUNT) / r_total;
            let w = (self.window[i] as f64 + PSI_PSEUDO_COUNT) / w_total;
            let term = (w - r) * (w / r).ln();
            psi += term;
            if term > top.0 {
                top = (term, i);
            }
        }
        (psi, top.1)
    }

    /// Chi-square homogeneity statistic of the 2×k table (reference vs window) after pooling
    /// sparse cells, with its degrees of freedom and the cell that contributes most.
    fn chi_square(&self) -> (f64, f64, usize) {
        let r_total = self.reference_total as f64;
        let w_total = self.window_total() as f64;
        let n = r_total + w_total;
        if r_total == 0.0 || w_total == 0.0 {
            return (0.0, 0.0, 0);
        }
        // (reference count, window count, representative cell)
        let mut kept: Vec<(f64, f64, usize)> = Vec::new();
        let mut pooled = (0.0, 0.0);
        for i in 0..self.reference.len() {
            let (r, w) = (self.reference[i] as f64, self.window[i] as f64);
            let total = r + w;
            if total == 0.0 {
                continue;
            }
            if (total * r_total / n).min(total * w_total / n) < MIN_EXPECTED {
                pooled.0 += r;
                pooled.1 += w;
            } else {
                kept.push((r, w, i));
            }
        }
        let pooled_total = pooled.0 + pooled.1;
        if pooled_total > 0.0 {
            let pooled_ok = (pooled_total * r_total / n).min(pooled_total * w_total / n) >= MIN_EXPECTED;
            let smallest = kept.iter_mut().min_by(|a, b| (a.0 + a.1).total_cmp(&(b.0 + b.1)));
            match (pooled_ok, smallest) {
                (false, Some(cell)) => {
                    cell.0 += pooled.0;
                    cell.1 += pooled.1;
                }
                _ => kept.push((pooled.0, pooled.1, 0)),
            }
        }
        if kept.len() < 2 {
            return (0.0, 0.0, 0);
        }
        let mut chi2 = 0.0;
        let mut top = (0.0, 0);
        for &(r, w, i) in &kept {
            let total = r + w;
            let er = total * r_total / n;
            let ew = total * w_total / n;
            let term = (r - er).powi(2) / er + (w - ew).powi(2) / ew;
            chi2 += term;
            if term > top.0 {
                top = (term, i);
            }
        }
        (chi2, (kept.len() - 1) as f64, top.1)
    }

    fn shares(&self, cell: usize) -> (f64, f64) {
        let r = self.reference[cell] as f64 / self.reference_total.max(1) as f64;
        let w = self.window[cell] as f64 / self.window_total().max(1) as f64;
        (r, w)
    }
}

fn expect_category(method: Method, observation: &Observation) -> Result<&str> {
    match observation {
        Observation::Category(c) => Ok(c),
        other => Err(wrong_kind(method, other)),
    }
}

fn validate_categorical(
    method: Method,
    threshold: f64,
    reference_size: u64,
    window_size: u64,
    min_samples: u64,
    max_categories: u64,
) -> Result<()> {
    check_positive(method, "threshold", threshold)?;
    check_windows(method, reference_size, window_size, min_samples)?;
    check_range(method, "max_categories", max_categories, 2, 10_000)
}

// ---------------------------------------------------------------------------------------------

/// PSI configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PsiConfig {
    /// PSI at which to signal. The classic rules of thumb (0.1 moderate, 0.25 major) are for
    /// one-off comparisons; the default is calibrated for a 1,000-event window tested after
    /// every observation (see [`mod@crate::bench`]).
    pub threshold: f64,
    /// Categories in the reference.
    pub reference_size: u64,
    /// Categories in the sliding window.
    pub window_size: u64,
    /// Window fill before testing (2..=window_size).
    pub min_samples: u64,
    /// Distinct category names tracked before new ones share the "(other)" cell.
    pub max_categories: u64,
}

impl Default for PsiConfig {
    fn default() -> Self {
        Self { threshold: 0.035, reference_size: 2_000, window_size: 1_000, min_samples: 1_000, max_categories: 64 }
    }
}

impl PsiConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        validate_categorical(
            Method::Psi,
            self.threshold,
            self.reference_size,
            self.window_size,
            self.min_samples,
            self.max_categories,
        )
    }
}

/// Population stability index between the reference mix and the window mix:
/// PSI = Σᵢ (wᵢ − rᵢ) · ln(wᵢ / rᵢ), with shares smoothed by a pseudo-count of 0.5 per
/// category. O(categories) per update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Psi {
    config: PsiConfig,
    windows: CategoryWindows,
    statistic: f64,
    seen: u64,
}

impl Psi {
    /// A fresh detector (the config is trusted: build through [`super::DetectorConfig`] to validate).
    pub fn new(config: PsiConfig) -> Self {
        Self { config, windows: CategoryWindows::new(), statistic: 0.0, seen: 0 }
    }

    /// The configuration.
    pub fn config(&self) -> &PsiConfig {
        &self.config
    }
}

impl DriftDetector for Psi {
    fn update(&mut self, observation: &Observation) -> Result<Option<DriftSignal>> {
        let name = expect_category(Method::Psi, observation)?;
        self.seen += 1;
        let c = &self.config;
        if !self.windows.push(name, c.reference_size, c.window_size, c.max_categories)
            || self.windows.window_total() < c.min_samples
        {
            return Ok(None);
        }
        let (psi, top) = self.windows.psi();
        self.statistic = psi;
        if psi < c.threshold {
            return Ok(None);
        }
        let (r, w) = self.windows.shares(top);
        let signal = DriftSignal {
            method: Method::Psi,
            statistic: psi,
            threshold: c.threshold,
            p_value: None,
            window_size: self.windows.window_total(),
            reference_size: self.windows.reference_total,
            samples: self.seen,
            detail: format!(
                "category mix changed; largest move: {:?} from {:.1}% to {:.1}%",
                self.windows.name(top),
                r * 100.0,
                w * 100.0
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
        self.windows.reference_total >= self.config.reference_size
    }

    fn reset(&mut self) {
        *self = Self { seen: self.seen, ..Self::new(self.config.clone()) };
    }

    fn method(&self) -> Method {
        Method::Psi
    }
}

// ---------------------------------------------------------------------------------------------

/// Chi-square configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChiSquareConfig {
    /// Surprise −log10(p) at which to signal (3.5 means p < 10⁻³·⁵). Because the window is
    /// tested after every observation, the per-test level must be far below the usual 0.05.
    pub threshold: f64,
    /// Categories in the reference.
    pub reference_size: u64,
    /// Categories in the sliding window.
    pub window_size: u64,
    /// Window fill before testing (2..=window_size).
    pub min_samples: u64,
    /// Distinct category names tracked before new ones share the "(other)" cell.
    pub max_categories: u64,
}

impl Default for ChiSquareConfig {
    fn default() -> Self {
        Self { threshold: 3.5, reference_size: 2_000, window_size: 1_000, min_samples: 1_000, max_categories: 64 }
    }
}

impl ChiSquareConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        validate_categorical(
            Method::ChiSquare,
            self.threshold,
            self.reference_size,
            self.window_size,
            self.min_samples,
            self.max_categories,
        )
    }
}

/// Pearson's chi-square test of homogeneity between the reference counts and the window
/// counts (a 2×k contingency table, df = k − 1), after pooling cells whose expected count is
/// below 5. The p-value is the chi-square survival function, computed in log space so that the
/// reported surprise stays finite however strong the evidence. O(categories) per update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChiSquare {
    config: ChiSquareConfig,
    windows: CategoryWindows,
    statistic: f64,
    seen: u64,
}

impl ChiSquare {
    /// A fresh detector (the config is trusted: build through [`super::DetectorConfig`] to validate).
    pub fn new(config: ChiSquareConfig) -> Self {
        Self { config, windows: CategoryWindows::new(), statistic: 0.0, seen: 0 }
    }

    /// The configuration.
    pub fn config(&self) -> &ChiSquareConfig {
        &self.config
    }
}

impl DriftDetector for ChiSquare {
    fn update(&mut self, observation: &Observation) -> Result<Option<DriftSignal>> {
        let name = expect_category(Method::ChiSquare, observation)?;
        self.seen += 1;
        let c = &self.config;
        if !self.windows.push(name, c.reference_size, c.window_size, c.max_categories)
            || self.windows.window_total() < c.min_samples
        {
            return Ok(None);
        }
        let (chi2, df, top) = self.windows.chi_square();
        let ln_p = if df >= 1.0 { ln_chi2_sf(chi2, df) } else { 0.0 };
        let s = surprise(ln_p);
        self.statistic = s;
        if s < c.threshold {
            return Ok(None);
        }
        let (r, w) = self.windows.shares(top);
        let signal = DriftSignal {
            method: Method::ChiSquare,
            statistic: s,
            threshold: c.threshold,
            p_value: Some(ln_p.exp()),
            window_size: self.windows.window_total(),
            reference_size: self.windows.reference_total,
            samples: self.seen,
            detail: format!(
                "category mix changed: chi-square {chi2:.2} on {df} df; largest contribution: {:?} from {:.1}% to \
                 {:.1}%",
                self.windows.name(top),
                r * 100.0,
                w * 100.0
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
        self.windows.reference_total >= self.config.reference_size
    }

    fn reset(&mut self) {
        *self = Self { seen: self.seen, ..Self::new(self.config.clone()) };
    }

    fn method(&self) -> Method {
        Method::ChiSquare
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows(reference: &[(&str, u64)], window: &[(&str, u64)]) -> CategoryWindows {
        let mut w = CategoryWindows::new();
        let r_total: u64 = reference.iter().map(|p| p.1).sum();
        let w_total: u64 = window.iter().map(|p| p.1).sum();
        for (name, n) in reference {
            for _ in 0..*n {
                w.push(name, r_total, w_total, 64);
            }
        }
        for (name, n) in window {
            for _ in 0..*n {
                w.push(name, r_total, w_total, 64);
            }
        }
        w
    }

    // scipy.stats.chi2_contingency([[50, 30, 20], [30, 40, 30]], correction=False)
    //   -> statistic 8.428571428571429, dof 2, pvalue 0.01478287719483942
    // PSI by hand with pseudo-count 0.5 (3 categories, totals 101.5 each):
    //   r = [50.5, 30.5, 20.5]/101.5, w = [30.5, 40.5, 30.5]/101.5, Σ (w−r) ln(w/r) = 0.16644043283783516
    #[test]
    fn chi_square_and_psi_fixtures() {
        let w = windows(&[("a", 50), ("b", 30), ("c", 20)], &[("a", 30), ("b", 40), ("c", 30)]);
        let (chi2, df, _) = w.chi_square();
        assert!((chi2 - 8.428_571_428_571_429).abs() < 1e-9, "{chi2}");
        assert_eq!(df, 2.0);
        assert!((ln_chi2_sf(chi2, df).exp() - 0.014_782_877_194_839_42).abs() < 1e-12);
        let (psi, _) = w.psi();
        let r = [50.5, 30.5, 20.5].map(|x: f64| x / 101.5);
        let q = [30.5, 40.5, 30.5].map(|x: f64| x / 101.5);
        let want: f64 = r.iter().zip(q).map(|(r, w)| (w - r) * (w / r).ln()).sum();
        assert!((psi - want).abs() < 1e-12);
        assert!((want - 0.166_440_432_837_835_16).abs() < 1e-6, "{want}");
    }

    #[test]
    fn sparse_cells_are_pooled() {
        // "x" and "y" have expected counts below 5 and are pooled (then merged into the smallest cell).
        let w = windows(&[("a", 60), ("b", 40), ("x", 1)], &[("a", 55), ("b", 44), ("y", 2)]);
        let (_, df, _) = w.chi_square();
        assert_eq!(df, 1.0);
    }

    #[test]
    fn categories_past_the_cap_share_other() {
        let mut w = CategoryWindows::new();
        for i in 0..10 {
            w.push(&format!("c{i}"), 100, 10, 3);
        }
        assert_eq!(w.cells.len(), 3);
        assert_eq!(w.reference[0], 7);
        assert_eq!(w.name(0), OTHER);
    }
}
