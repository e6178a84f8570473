//! Online drift detectors over metric streams.
//!
//! Every detector is *config data that builds a running object*: a [`DetectorConfig`]
//! (serde-tagged by `method`, unknown fields rejected, validated by [`DetectorConfig::build`])
//! builds a [`Detector`], which is fed one [`Observation`] at a time and answers with a
//! [`DriftSignal`] when its statistic reaches its threshold. Updates are incremental (O(1),
//! O(log n) or O(window) per observation, never a rescan of history) and the whole running
//! state serialises with serde, so a monitor can persist it and continue exactly after a restart.
//!
//! Conventions shared by every method:
//! - a larger statistic always means more drift, and a signal fires when
//!   `statistic ≥ threshold`; the p-value tests (KS, chi-square) therefore report the surprise
//!   −log10(p) as their statistic and put the p-value itself in [`DriftSignal::p_value`];
//! - after a signal the detector starts afresh (re-learns its reference from the observations
//!   that follow; ADWIN instead drops the older part of its window, which is its own way of
//!   forgetting), so one change produces one signal and the new regime becomes the baseline.
//!   Whether the operator still considers the drift open is the [`crate::alert`] machine's job.
//!
//! | method | reads | statistic |
//! |---|---|---|
//! | `page_hinkley` | values | Page–Hinkley cumulative deviation from the running mean, in reference standard deviations |
//! | `cusum` | values | two-sided CUSUM of values standardised by a warm-up reference |
//! | `adwin` | values | ADWIN's largest sub-window mean gap divided by its cut bound (signal at 1) |
//! | `psi` | categories | population stability index, window vs reference |
//! | `chi_square` | categories | −log10 p of the chi-square homogeneity test, window vs reference |
//! | `ks` | values | −log10 p of the two-sample Kolmogorov–Smirnov test, window vs reference |
//! | `wasserstein` | values | Wasserstein-1 distance, window vs reference, in reference standard deviations |
//! | `centroid` | vectors | cosine distance between the reference and window centroids |
//! | `mmd` | vectors | unbiased MMD² with an RBF kernel, window vs a reference subsample |

mod categorical;
mod continuous;
mod embedding;
mod sequential;

use serde::{Deserialize, Serialize};

use crate::error::{MonitorError, Result};

pub use categorical::{ChiSquare, ChiSquareConfig, Psi, PsiConfig};
pub use continuous::{Ks, KsConfig, Wasserstein, WassersteinConfig};
pub use embedding::{Centroid, CentroidConfig, Mmd, MmdConfig};
pub use sequential::{Adwin, AdwinConfig, Cusum, CusumConfig, Direction, PageHinkley, PageHinkleyConfig};

/// One element of a metric stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Observation {
    /// A number: a KPI sample, a check score, a latency, or 0/1 for a rate.
    Value(f64),
    /// A label: an action, a detected language, a check that fired.
    Category(String),
    /// An embedding of an input or output.
    Vector(Vec<f32>),
}

impl Observation {
    /// The kind's name as used in error messages: `value`, `category` or `vector`.
    pub fn kind(&self) -> &'static str {
        match self {
            Observation::Value(_) => "value",
            Observation::Category(_) => "category",
            Observation::Vector(_) => "vector",
        }
    }
}

impl From<f64> for Observation {
    fn from(v: f64) -> Self {
        Observation::Value(v)
    }
}

impl From<bool> for Observation {
    /// A rate event: `true` is 1, `false` is 0.
    fn from(hit: bool) -> Self {
        Observation::Value(if hit { 1.0 } else { 0.0 })
    }
}

impl From<&str> for Observation {
    fn from(c: &str) -> Self {
        Observation::Category(c.to_owned())
    }
}

impl From<String> for Observation {
    fn from(c: String) -> Self {
        Observation::Category(c)
    }
}

impl From<Vec<f32>> for Observation {
    fn from(v: Vec<f32>) -> Self {
        Observation::Vector(v)
    }
}

/// The detection methods, as spelt in `method = "…"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Page–Hinkley test (both directions).
    PageHinkley,
    /// Two-sided standardised CUSUM.
    Cusum,
    /// ADWIN adaptive windowing (bounded variant).
    Adwin,
    /// Population stability index.
    Psi,
    /// Chi-square homogeneity test.
    ChiSquare,
    /// Two-sample Kolmogorov–Smirnov test.
    Ks,
    /// Wasserstein-1 distance.
    Wasserstein,
    /// Centroid cosine distance.
    Centroid,
    /// Maximum mean discrepancy with an RBF kernel.
    Mmd,
}

impl Method {
    /// Every method, in table order.
    pub const ALL: [Method; 9] = [
        Method::PageHinkley,
        Method::Cusum,
        Method::Adwin,
        Method::Psi,
        Method::ChiSquare,
        Method::Ks,
        Method::Wasserstein,
        Method::Centroid,
        Method::Mmd,
    ];

    /// The name used in configs and messages.
    pub fn name(self) -> &'static str {
        match self {
            Method::PageHinkley => "page_hinkley",
            Method::Cusum => "cusum",
            Method::Adwin => "adwin",
            Method::Psi => "psi",
            Method::ChiSquare => "chi_square",
            Method::Ks => "ks",
            Method::Wasserstein => "wasserstein",
            Method::Centroid => "centroid",
            Method::Mmd => "mmd",
        }
    }

    /// The observation kind this method reads.
    pub fn reads(self) -> &'static str {
        match self {
            Method::PageHinkley | Method::Cusum | Method::Adwin | Method::Ks | Method::Wasserstein => "value",
            Method::Psi | Method::ChiSquare => "category",
            Method::Centroid | Method::Mmd => "vector",
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A detector's report that its stream changed: what it measured, against which threshold,
/// over how much data. This is what a drift alert records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftSignal {
    /// The method that fired.
    pub method: Method,
    /// The statistic at the moment it fired (≥ `threshold`).
    pub statistic: f64,
    /// The threshold it reached.
    pub threshold: f64,
    /// The test's p-value, for the methods that have one (KS, chi-square).
    pub p_value: Option<f64>,
    /// Observations in the recent window the statistic covers (for the sequential methods, the
    /// run since the statistic last stood at zero, or ADWIN's newer sub-window).
    pub window_size: u64,
    /// Observations in the reference it was compared with (warm-up, reference window, or
    /// ADWIN's older sub-window).
    pub reference_size: u64,
    /// Observations this detector had seen in total, including this one.
    pub samples: u64,
    /// A one-line human explanation (direction and size of the change).
    pub detail: String,
}

/// The common interface of every drift detector.
pub trait DriftDetector {
    /// Feeds one observation; returns a signal when the stream has drifted. An observation of
    /// the wrong kind, a non-finite number or a vector of the wrong dimension is an error and
    /// leaves the state untouched.
    fn update(&mut self, observation: &Observation) -> Result<Option<DriftSignal>>;
    /// The current statistic (0 while the detector is still learning its reference).
    fn statistic(&self) -> f64;
    /// The threshold the statistic is compared with.
    fn threshold(&self) -> f64;
    /// Observations seen since the detector was built (not reset by signals).
    fn samples(&self) -> u64;
    /// Whether the detector has its reference and is testing.
    fn is_ready(&self) -> bool;
    /// Forgets everything learnt and starts a fresh reference (the sample count is kept).
    fn reset(&mut self);
    /// The detection method.
    fn method(&self) -> Method;
}

/// Configuration of one detector, as written in `keel.toml` (`method = "cusum"`, …).
/// Every field has a calibrated default, see [`mod@crate::bench`] for how they were chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum DetectorConfig {
    /// Page–Hinkley.
    PageHinkley(PageHinkleyConfig),
    /// CUSUM.
    Cusum(CusumConfig),
    /// ADWIN.
    Adwin(AdwinConfig),
    /// Population stability index.
    Psi(PsiConfig),
    /// Chi-square test.
    ChiSquare(ChiSquareConfig),
    /// Kolmogorov–Smirnov test.
    Ks(KsConfig),
    /// Wasserstein-1 distance.
    Wasserstein(WassersteinConfig),
    /// Centroid cosine distance.
    Centroid(CentroidConfig),
    /// Maximum mean discrepancy.
    Mmd(MmdConfig),
}

impl DetectorConfig {
    /// The default configuration of `method`.
    pub fn default_for(method: Method) -> Self {
        match method {
            Method::PageHinkley => Self::PageHinkley(PageHinkleyConfig::default()),
            Method::Cusum => Self::Cusum(CusumConfig::default()),
            Method::Adwin => Self::Adwin(AdwinConfig::default()),
            Method::Psi => Self::Psi(PsiConfig::default()),
            Method::ChiSquare => Self::ChiSquare(ChiSquareConfig::default()),
            Method::Ks => Self::Ks(KsConfig::default()),
            Method::Wasserstein => Self::Wasserstein(WassersteinConfig::default()),
            Method::Centroid => Self::Centroid(CentroidConfig::default()),
            Method::Mmd => Self::Mmd(MmdConfig::default()),
        }
    }

    /// The configured method.
    pub fn method(&self) -> Method {
        match self {
            Self::PageHinkley(_) => Method::PageHinkley,
            Self::Cusum(_) => Method::Cusum,
            Self::Adwin(_) => Method::Adwin,
            Self::Psi(_) => Method::Psi,
            Self::ChiSquare(_) => Method::ChiSquare,
            Self::Ks(_) => Method::Ks,
            Self::Wasserstein(_) => Method::Wasserstein,
            Self::Centroid(_) => Method::Centroid,
            Self::Mmd(_) => Method::Mmd,
        }
    }

    /// Checks every field, naming the first one out of range.
    pub fn validate(&self) -> Result<()> {
        match self {
            Self::PageHinkley(c) => c.validate(),
            Self::Cusum(c) => c.validate(),
            Self::Adwin(c) => c.validate(),
            Self::Psi(c) => c.validate(),
            Self::ChiSquare(c) => c.validate(),
            Self::Ks(c) => c.validate(),
            Self::Wasserstein(c) => c.validate(),
            Self::Centroid(c) => c.validate(),
            Self::Mmd(c) => c.validate(),
        }
    }

    /// Validates the config and builds a fresh detector from it.
    pub fn build(&self) -> Result<Detector> {
        self.validate()?;
        Ok(match self {
            Self::PageHinkley(c) => Detector::PageHinkley(PageHinkley::new(c.clone())),
            Self::Cusum(c) => Detector::Cusum(Cusum::new(c.clone())),
            Self::Adwin(c) => Detector::Adwin(Adwin::new(c.clone())),
            Self::Psi(c) => Detector::Psi(Psi::new(c.clone())),
            Self::ChiSquare(c) => Detector::ChiSquare(ChiSquare::new(c.clone())),
            Self::Ks(c) => Detector::Ks(Ks::new(c.clone())),
            Self::Wasserstein(c) => Detector::Wasserstein(Wasserstein::new(c.clone())),
            Self::Centroid(c) => Detector::Centroid(Centroid::new(c.clone())),
            Self::Mmd(c) => Detector::Mmd(Mmd::new(c.clone())),
        })
    }
}

/// A running detector of any method: the closed set the monitor stores and restores.
/// Its serde form (tagged by `method`) holds the config and the full state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum Detector {
    /// Page–Hinkley.
    PageHinkley(PageHinkley),
    /// CUSUM.
    Cusum(Cusum),
    /// ADWIN.
    Adwin(Adwin),
    /// Population stability index.
    Psi(Psi),
    /// Chi-square test.
    ChiSquare(ChiSquare),
    /// Kolmogorov–Smirnov test.
    Ks(Ks),
    /// Wasserstein-1 distance.
    Wasserstein(Wasserstein),
    /// Centroid cosine distance.
    Centroid(Centroid),
    /// Maximum mean discrepancy.
    Mmd(Mmd),
}

macro_rules! each_detector {
    ($self:expr, $d:ident => $body:expr) => {
        match $self {
            Detector::PageHinkley($d) => $body,
            Detector::Cusum($d) => $body,
            Detector::Adwin($d) => $body,
            Detector::Psi($d) => $body,
            Detector::ChiSquare($d) => $body,
            Detector::Ks($d) => $body,
            Detector::Wasserstein($d) => $body,
            Detector::Centroid($d) => $body,
            Detector::Mmd($d) => $body,
        }
    };
}

impl DriftDetector for Detector {
    fn update(&mut self, observation: &Observation) -> Result<Option<DriftSignal>> {
        each_detector!(self, d => d.update(observation))
    }
    fn statistic(&self) -> f64 {
        each_detector!(self, d => d.statistic())
    }
    fn threshold(&self) -> f64 {
        each_detector!(self, d => d.threshold())
    }
    fn samples(&self) -> u64 {
        each_detector!(self, d => d.samples())
    }
    fn is_ready(&self) -> bool {
        each_detector!(self, d => d.is_ready())
    }
    fn reset(&mut self) {
        each_detector!(self, d => d.reset())
    }
    fn method(&self) -> Method {
        each_detector!(self, d => d.method())
    }
}

// ---- helpers shared by the detector modules ----

/// Largest reference or window a config may ask for: keeps persisted state bounded.
pub(crate) const MAX_WINDOW: u64 = 1_000_000;

pub(crate) fn invalid(method: Method, field: &'static str, reason: String) -> MonitorError {
    MonitorError::InvalidConfig { method: method.name(), field, reason }
}

/// `value` must be finite and > 0.
pub(crate) fn check_positive(method: Method, field: &'static str, value: f64) -> Result<()> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(invalid(method, field, format!("must be a finite number greater than 0, got {value}")))
    }
}

/// `value` must be finite and ≥ 0.
pub(crate) fn check_non_negative(method: Method, field: &'static str, value: f64) -> Result<()> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(invalid(method, field, format!("must be a finite number of at least 0, got {value}")))
    }
}

/// `min ≤ value ≤ max`.
pub(crate) fn check_range(method: Method, field: &'static str, value: u64, min: u64, max: u64) -> Result<()> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(invalid(method, field, format!("must be between {min} and {max}, got {value}")))
    }
}

/// The reference/window trio every window-vs-reference method shares.
pub(crate) fn check_windows(method: Method, reference_size: u64, window_size: u64, min_samples: u64) -> Result<()> {
    check_range(method, "reference_size", reference_size, 10, MAX_WINDOW)?;
    check_range(method, "window_size", window_size, 10, MAX_WINDOW)?;
    if min_samples < 2 || min_samples > window_size {
        return Err(invalid(
            method,
            "min_samples",
            format!("must be between 2 and window_size ({window_size}), got {min_samples}"),
        ));
    }
    Ok(())
}

pub(crate) fn wrong_kind(method: Method, got: &Observation) -> MonitorError {
    MonitorError::WrongObservation { method: method.name(), expected: method.reads(), got: got.kind() }
}

/// Extracts a finite value or explains why not.
pub(crate) fn expect_value(method: Method, observation: &Observation) -> Result<f64> {
    match observation {
        Observation::Value(v) => crate::error::finite("a value observation", *v),
        other => Err(wrong_kind(method, other)),
    }
}
