//! Window-vs-reference tests for embedding streams (the mean embedding of inputs or outputs):
//! the cosine distance between centroids, and the maximum mean discrepancy with an RBF kernel.
//!
//! The dimension is fixed by the first vector a detector sees; later vectors of another
//! dimension, empty vectors and non-finite components are rejected with an error. Vectors are
//! stored as `f32` (as embedders produce them) and accumulated in `f64`.

use serde::{Deserialize, Serialize};

use super::{check_positive, check_range, check_windows, wrong_kind, DriftDetector, DriftSignal, Method, Observation};
use crate::error::{MonitorError, Result};
use crate::rng::SeededRng;

/// Checks the observation is a usable vector for a detector whose dimension is `dim` (set on
/// first use).
fn expect_vector<'a>(method: Method, observation: &'a Observation, dim: &mut Option<usize>) -> Result<&'a [f32]> {
    let v = match observation {
        Observation::Vector(v) => v.as_slice(),
        other => return Err(wrong_kind(method, other)),
    };
    if v.is_empty() {
        return Err(MonitorError::EmptyVector);
    }
    if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
        return Err(MonitorError::NonFinite { what: "a vector component", value: bad.to_string() });
    }
    match *dim {
        Some(d) if d != v.len() => Err(MonitorError::DimensionMismatch { expected: d, got: v.len() }),
        Some(_) => Ok(v),
        None => {
            *dim = Some(v.len());
            Ok(v)
        }
    }
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// 1 − cos(a, b), or 0 when either has no direction.
fn cosine_distance(a: &[f64], b: &[f64]) -> f64 {
    let (na, nb) = (norm(a), norm(b));
    if na == 0.0 || nb == 0.0 || !na.is_finite() || !nb.is_finite() {
        return 0.0;
    }
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    (1.0 - dot / (na * nb)).clamp(0.0, 2.0)
}

/// A fixed-capacity ring of vectors stored flat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Ring {
    data: Vec<f32>,
    len: usize,
    pos: usize,
}

impl Ring {
    fn slot(&self, i: usize, dim: usize) -> &[f32] {
        &self.data[i * dim..(i + 1) * dim]
    }
}

// ---------------------------------------------------------------------------------------------

/// Centroid configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CentroidConfig {
    /// Cosine distance between the centroids at which to signal. Its noise level depends on how
    /// spread the embeddings are; the default is calibrated on the harness's embedding stream
    /// (see [`mod@crate::bench`]) and should be re-checked for a new embedder.
    pub threshold: f64,
    /// Vectors in the reference.
    pub reference_size: u64,
    /// Vectors in the sliding window.
    pub window_size: u64,
    /// Window fill before testing (2..=window_size).
    pub min_samples: u64,
}

impl Default for CentroidConfig {
    fn default() -> Self {
        Self { threshold: 0.025, reference_size: 1_000, window_size: 200, min_samples: 200 }
    }
}

impl CentroidConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        let m = Method::Centroid;
        check_positive(m, "threshold", self.threshold)?;
        check_windows(m, self.reference_size, self.window_size, self.min_samples)?;
        check_range(m, "window_size", self.window_size, 10, 100_000)
    }
}

/// Cosine distance 1 − cos(c_ref, c_win) between the mean of the reference vectors and the
/// mean of the last `window_size` vectors. The window sum is updated by adding the new vector
/// and subtracting the evicted one, O(dimension) per update; it is recomputed exactly once per
/// pass over the ring so rounding cannot accumulate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Centroid {
    config: CentroidConfig,
    dim: Option<usize>,
    reference_sum: Vec<f64>,
    reference_count: u64,
    ring: Ring,
    window_sum: Vec<f64>,
    statistic: f64,
    seen: u64,
}

impl Centroid {
    /// A fresh detector (the config is trusted: build through [`super::DetectorConfig`] to validate).
    pub fn new(config: CentroidConfig) -> Self {
        Self {
            config,
            dim: None,
            reference_sum: Vec::new(),
            reference_count: 0,
            ring: Ring::default(),
            window_sum: Vec::new(),
            statistic: 0.0,
            seen: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &CentroidConfig {
        &self.config
    }
}

impl DriftDetector for Centroid {
    fn update(&mut self, observation: &Observation) -> Result<Option<DriftSignal>> {
        let v = expect_vector(Method::Centroid, observation, &mut self.dim)?;
        let d = v.len();
        self.seen += 1;
        if self.reference_sum.len() != d {
            self.reference_sum = vec![0.0; d];
            self.window_sum = vec![0.0; d];
        }
        if self.reference_count < self.config.reference_size {
            self.reference_sum.iter_mut().zip(v).for_each(|(s, x)| *s += f64::from(*x));
            self.reference_count += 1;
            return Ok(None);
        }
        let capacity = self.config.window_size as usize;
        if self.ring.data.is_empty() {
            self.ring.data = vec![0.0; capacity * d];
        }
        let pos = self.ring.pos;
        if self.ring.len == capacity {
            let old = &self.ring.data[pos * d..(pos + 1) * d];
            self.window_sum.iter_mut().zip(old).for_each(|(s, x)| *s -= f64::from(*x));
        } else {
            self.ring.len += 1;
        }
        self.ring.data[pos * d..(pos + 1) * d].copy_from_slice(v);
        self.window_sum.iter_mut().zip(v).for_each(|(s, x)| *s += f64::from(*x));
        self.ring.pos = (pos + 1) % capacity;
        if self.ring.pos == 0 {
            self.window_sum.iter_mut().for_each(|s| *s = 0.0);
            for i in 0..self.ring.len {
                let slot = &self.ring.data[i * d..(i + 1) * d];
                self.window_sum.iter_mut().zip(slot).for_each(|(s, x)| *s += f64::from(*x));
            }
        }
        if (self.ring.len as u64) < self.config.min_samples {
            return Ok(None);
        }
        let distance = cosine_distance(&self.reference_sum, &self.window_sum);
        self.statistic = distance;
        if distance < self.config.threshold {
            return Ok(None);
        }
        let signal = DriftSignal {
            method: Method::Centroid,
            statistic: distance,
            threshold: self.config.threshold,
            p_value: None,
            window_size: self.ring.len as u64,
            reference_size: self.reference_count,
            samples: self.seen,
            detail: format!(
                "embedding centroid turned by {:.1}° (cosine distance {distance:.4}); window centroid norm {:.3} vs \
                 reference {:.3}",
                (1.0 - distance).clamp(-1.0, 1.0).acos().to_degrees(),
                norm(&self.window_sum) / self.ring.len as f64,
                norm(&self.reference_sum) / self.reference_count as f64,
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
        self.reference_count >= self.config.reference_size
    }

    fn reset(&mut self) {
        *self = Self { seen: self.seen, dim: self.dim, ..Self::new(self.config.clone()) };
    }

    fn method(&self) -> Method {
        Method::Centroid
    }
}

// ---------------------------------------------------------------------------------------------

/// MMD configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MmdConfig {
    /// Unbiased MMD² at which to signal.
    pub threshold: f64,
    /// Vectors in the reference (a uniform subsample of them is kept).
    pub reference_size: u64,
    /// Reference vectors kept, drawn by reservoir sampling (2..=reference_size).
    pub subsample: u64,
    /// Vectors in the sliding window.
    pub window_size: u64,
    /// Window fill before testing (2..=window_size).
    pub min_samples: u64,
    /// Seed of the reservoir sampler (the same stream and seed keep the same subsample).
    pub seed: u64,
}

impl Default for MmdConfig {
    fn default() -> Self {
        Self { threshold: 0.01, reference_size: 1_000, subsample: 100, window_size: 100, min_samples: 100, seed: 0 }
    }
}

impl MmdConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        let m = Method::Mmd;
        check_positive(m, "threshold", self.threshold)?;
        check_windows(m, self.reference_size, self.window_size, self.min_samples)?;
        check_range(m, "window_size", self.window_size, 10, 5_000)?;
        check_range(m, "subsample", self.subsample, 2, self.reference_size.min(5_000))
    }
}

/// Maximum mean discrepancy (Gretton et al., JMLR 2012) between a reference subsample R
/// (m vectors, reservoir-sampled from the first `reference_size`) and the last n =
/// `window_size` vectors W, with the RBF kernel k(x, y) = exp(−‖x − y‖² / (2σ²)) and σ² the
/// median squared distance within R (the median heuristic). The statistic is the unbiased
///
/// MMD²ᵤ = Σ_{i≠j} k(rᵢ, rⱼ)/(m(m−1)) + Σ_{i≠j} k(wᵢ, wⱼ)/(n(n−1)) − 2 Σ k(rᵢ, wⱼ)/(mn),
///
/// kept up to date incrementally: each arrival adds, and each eviction subtracts, its kernel
/// row against the window and the reference, O((n + m)·dimension) per update, with an exact
/// recomputation once per pass over the ring. It can be slightly negative when nothing changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mmd {
    config: MmdConfig,
    dim: Option<usize>,
    rng: SeededRng,
    reservoir: Vec<f32>,
    reference_seen: u64,
    /// 1 / (2σ²), fixed when the reference completes.
    gamma: f64,
    k_rr: f64,
    ring: Ring,
    /// Σᵢ k(rᵢ, w) for the vector in each ring slot.
    slot_ref: Vec<f64>,
    k_ww: f64,
    k_rw: f64,
    statistic: f64,
    seen: u64,
}

/// Squared Euclidean distance, accumulated in eight f32 lanes so it vectorises; the rounding
/// (relative ~1e-6) is far below what matters for a kernel value, and the same inputs always
/// give the same result, which the incremental add/subtract bookkeeping relies on.
fn sq_dist(a: &[f32], b: &[f32]) -> f64 {
    let mut lanes = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| (x - y) * (x - y)).sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            let d = x[k] - y[k];
            lanes[k] += d * d;
        }
    }
    f64::from(lanes.iter().sum::<f32>() + tail)
}

impl Mmd {
    /// A fresh detector (the config is trusted: build through [`super::DetectorConfig`] to validate).
    pub fn new(config: MmdConfig) -> Self {
        let rng = SeededRng::new(config.seed);
        Self {
            config,
            dim: None,
            rng,
            reservoir: Vec::new(),
            reference_seen: 0,
            gamma: 0.0,
            k_rr: 0.0,
            ring: Ring::default(),
            slot_ref: Vec::new(),
            k_ww: 0.0,
            k_rw: 0.0,
            statistic: 0.0,
            seen: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &MmdConfig {
        &self.config
    }

    fn kernel(&self, a: &[f32], b: &[f32]) -> f64 {
        (-self.gamma * sq_dist(a, b)).exp()
    }

    fn m(&self, d: usize) -> usize {
        self.reservoir.len() / d
    }

    fn learn_reference(&mut self, v: &[f32]) {
        let d = v.len();
        let m = self.config.subsample as usize;
        let t = self.reference_seen as usize;
        if t < m {
            self.reservoir.extend_from_slice(v);
        } else {
            let j = self.rng.below(t + 1);
            if j < m {
                self.reservoir[j * d..(j + 1) * d].copy_from_slice(v);
            }
        }
        self.reference_seen += 1;
        if self.reference_seen == self.config.reference_size {
            let m = self.m(d);
            let mut dists = Vec::with_capacity(m * (m - 1) / 2);
            for i in 0..m {
                for j in i + 1..m {
                    dists.push(sq_dist(&self.reservoir[i * d..(i + 1) * d], &self.reservoir[j * d..(j + 1) * d]));
                }
            }
            dists.sort_by(f64::total_cmp);
            let median = dists.get(dists.len() / 2).copied().unwrap_or(1.0);
            let sigma2 = if median > 0.0 && median.is_finite() { median } else { 1.0 };
            self.gamma = 1.0 / (2.0 * sigma2);
            let mut k_rr = 0.0;
            for i in 0..m {
                for j in i + 1..m {
                    k_rr += 2.0 * self.kernel(&self.reservoir[i * d..(i + 1) * d], &self.reservoir[j * d..(j + 1) * d]);
                }
            }
            self.k_rr = k_rr;
        }
    }

    fn ref_row(&self, v: &[f32]) -> f64 {
        let d = v.len();
        (0..self.m(d)).map(|i| self.kernel(&self.reservoir[i * d..(i + 1) * d], v)).sum()
    }

    /// Recomputes the window sums from scratch.
    fn recompute(&mut self, d: usize) {
        let n = self.ring.len;
        let mut k_ww = 0.0;
        for i in 0..n {
            for j in i + 1..n {
                k_ww += 2.0 * self.kernel(self.ring.slot(i, d), self.ring.slot(j, d));
            }
        }
        let rows: Vec<f64> = (0..n).map(|i| self.ref_row(self.ring.slot(i, d))).collect();
        self.k_rw = rows.iter().sum();
        self.slot_ref[..n].copy_from_slice(&rows);
        self.k_ww = k_ww;
    }

    fn mmd2(&self, d: usize) -> f64 {
        let m = self.m(d) as f64;
        let n = self.ring.len as f64;
        self.k_rr / (m * (m - 1.0)) + self.k_ww / (n * (n - 1.0)) - 2.0 * self.k_rw / (m * n)
    }
}

impl DriftDetector for Mmd {
    fn update(&mut self, observation: &Observation) -> Result<Option<DriftSignal>> {
        let v = expect_vector(Method::Mmd, observation, &mut self.dim)?;
        let d = v.len();
        self.seen += 1;
        if self.reference_seen < self.config.reference_size {
            self.learn_reference(v);
            return Ok(None);
        }
        let capacity = self.config.window_size as usize;
        if self.ring.data.is_empty() {
            self.ring.data = vec![0.0; capacity * d];
            self.slot_ref = vec![0.0; capacity];
        }
        let pos = self.ring.pos;
        let full = self.ring.len == capacity;
        let occupied = if full { capacity } else { self.ring.len };
        // One pass over the other window vectors: kernel row of the evicted and of the new vector.
        let (mut old_row, mut new_row) = (0.0, 0.0);
        for j in (0..occupied).filter(|&j| j != pos) {
            let w = self.ring.slot(j, d);
            if full {
                old_row += self.kernel(self.ring.slot(pos, d), w);
            }
            new_row += self.kernel(v, w);
        }
        if full {
            self.k_ww -= 2.0 * old_row;
            self.k_rw -= self.slot_ref[pos];
        } else {
            self.ring.len += 1;
        }
        let ref_row = self.ref_row(v);
        self.k_ww += 2.0 * new_row;
        self.k_rw += ref_row;
        self.slot_ref[pos] = ref_row;
        self.ring.data[pos * d..(pos + 1) * d].copy_from_slice(v);
        self.ring.pos = (pos + 1) % capacity;
        if self.ring.pos == 0 {
            self.recompute(d);
        }
        if (self.ring.len as u64) < self.config.min_samples {
            return Ok(None);
        }
        let mmd2 = self.mmd2(d);
        self.statistic = if mmd2.is_finite() { mmd2 } else { 0.0 };
        if self.statistic < self.config.threshold {
            return Ok(None);
        }
        let signal = DriftSignal {
            method: Method::Mmd,
            statistic: self.statistic,
            threshold: self.config.threshold,
            p_value: None,
            window_size: self.ring.len as u64,
            reference_size: self.reference_seen,
            samples: self.seen,
            detail: format!(
                "embedding distribution changed: MMD² {:.4} against a {}-vector reference subsample (RBF bandwidth σ² = \
                 {:.4})",
                self.statistic,
                self.m(d),
                1.0 / (2.0 * self.gamma)
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
        self.reference_seen >= self.config.reference_size
    }

    fn reset(&mut self) {
        // Keep the generator moving so successive references draw different subsamples.
        let rng = self.rng.clone();
        *self = Self { seen: self.seen, dim: self.dim, rng, ..Self::new(self.config.clone()) };
    }

    fn method(&self) -> Method {
        Method::Mmd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute_mmd2(r: &[Vec<f32>], w: &[Vec<f32>], gamma: f64) -> f64 {
        let k = |a: &[f32], b: &[f32]| (-gamma * sq_dist(a, b)).exp();
        let (m, n) = (r.len() as f64, w.len() as f64);
        let mut rr = 0.0;
        let mut ww = 0.0;
        let mut rw = 0.0;
        for (i, a) in r.iter().enumerate() {
            for (j, b) in r.iter().enumerate() {
                if i != j {
                    rr += k(a, b);
                }
            }
            for b in w {
                rw += k(a, b);
            }
        }
        for (i, a) in w.iter().enumerate() {
            for (j, b) in w.iter().enumerate() {
                if i != j {
                    ww += k(a, b);
                }
            }
        }
        rr / (m * (m - 1.0)) + ww / (n * (n - 1.0)) - 2.0 * rw / (m * n)
    }

    #[test]
    fn incremental_mmd_matches_brute_force() {
        let mut rng = SeededRng::new(3);
        let mut vec_of = |shift: f32| -> Vec<f32> { (0..4).map(|_| rng.normal() as f32 + shift).collect() };
        let config =
            MmdConfig { threshold: 1e9, reference_size: 20, subsample: 20, window_size: 10, min_samples: 2, seed: 1 };
        let mut mmd = Mmd::new(config);
        let reference: Vec<Vec<f32>> = (0..20).map(|_| vec_of(0.0)).collect();
        for r in &reference {
            mmd.update(&Observation::Vector(r.clone())).unwrap();
        }
        let stream: Vec<Vec<f32>> = (0..27).map(|i| vec_of(if i > 12 { 0.8 } else { 0.0 })).collect();
        for (t, v) in stream.iter().enumerate() {
            mmd.update(&Observation::Vector(v.clone())).unwrap();
            if t >= 1 {
                let start = (t + 1).saturating_sub(10);
                let want = brute_mmd2(&reference, &stream[start..=t], mmd.gamma);
                assert!((mmd.statistic - want).abs() < 1e-9, "t={t}: {} vs {want}", mmd.statistic);
            }
        }
    }

    #[test]
    fn cosine_distance_edges() {
        assert_eq!(cosine_distance(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
        assert!((cosine_distance(&[1.0, 0.0], &[0.0, 2.0]) - 1.0).abs() < 1e-15);
        assert!((cosine_distance(&[1.0, 0.0], &[-1.0, 0.0]) - 2.0).abs() < 1e-15);
    }
}
