//! Invariants that must hold for every input: intervals contain their point estimates and rate
//! intervals stay in [0, 1]; detectors never panic on finite input and their state always
//! survives serialisation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use keel_monitor::drift::{
    AdwinConfig, CentroidConfig, ChiSquareConfig, CusumConfig, KsConfig, MmdConfig, PageHinkleyConfig, PsiConfig,
    WassersteinConfig,
};
use keel_monitor::stats::{bootstrap_mean_interval, mean_t_interval, wilson_interval, Percentiles};
use keel_monitor::{Detector, DetectorConfig, DriftDetector, Method, Observation};
use proptest::prelude::*;

/// Small windows so a short input reaches every code path (reference complete, window full,
/// signals and resets).
fn small_config(method: Method) -> DetectorConfig {
    match method {
        Method::PageHinkley => {
            DetectorConfig::PageHinkley(PageHinkleyConfig { threshold: 3.0, min_samples: 5, ..Default::default() })
        }
        Method::Cusum => DetectorConfig::Cusum(CusumConfig { threshold: 3.0, min_samples: 5, ..Default::default() }),
        Method::Adwin => DetectorConfig::Adwin(AdwinConfig {
            delta: 0.1,
            min_samples: 2,
            clock: 1,
            max_window: 64,
            ..Default::default()
        }),
        Method::Psi => DetectorConfig::Psi(PsiConfig {
            threshold: 0.05,
            reference_size: 10,
            window_size: 10,
            min_samples: 5,
            max_categories: 4,
        }),
        Method::ChiSquare => DetectorConfig::ChiSquare(ChiSquareConfig {
            threshold: 1.0,
            reference_size: 10,
            window_size: 10,
            min_samples: 5,
            max_categories: 4,
        }),
        Method::Ks => {
            DetectorConfig::Ks(KsConfig { threshold: 1.0, reference_size: 10, window_size: 10, min_samples: 5 })
        }
        Method::Wasserstein => DetectorConfig::Wasserstein(WassersteinConfig {
            threshold: 0.5,
            reference_size: 10,
            window_size: 10,
            min_samples: 5,
        }),
        Method::Centroid => DetectorConfig::Centroid(CentroidConfig {
            threshold: 0.01,
            reference_size: 10,
            window_size: 10,
            min_samples: 5,
        }),
        Method::Mmd => DetectorConfig::Mmd(MmdConfig {
            threshold: 0.01,
            reference_size: 12,
            subsample: 6,
            window_size: 10,
            min_samples: 5,
            seed: 3,
        }),
    }
}

fn finite_f64() -> impl Strategy<Value = f64> {
    prop_oneof![any::<f64>().prop_filter("finite", |x| x.is_finite()), -1e3f64..1e3, Just(0.0), Just(1.0),]
}

fn finite_f32() -> impl Strategy<Value = f32> {
    prop_oneof![any::<f32>().prop_filter("finite", |x| x.is_finite()), -2f32..2.0]
}

/// Feeds observations, checking nothing panics and the statistic is never NaN.
fn feed(method: Method, observations: &[Observation]) -> Detector {
    let mut d = small_config(method).build().unwrap();
    for o in observations {
        let signal = d.update(o).unwrap();
        assert!(!d.statistic().is_nan(), "{method}: NaN statistic");
        if let Some(s) = signal {
            assert!(!s.statistic.is_nan());
        }
    }
    d
}

fn round_trips(d: &Detector) {
    let json = serde_json::to_string(d).unwrap();
    let back: Detector = serde_json::from_str(&json).unwrap();
    assert_eq!(&back, d);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn wilson_contains_the_estimate_within_unit_interval(n in 1u64..2_000_000, frac in 0.0f64..=1.0, conf in 0.5f64..0.9999) {
        let k = ((n as f64) * frac).floor() as u64;
        let w = wilson_interval(k, n, conf).unwrap();
        prop_assert!(0.0 <= w.lower && w.lower <= w.estimate && w.estimate <= w.upper && w.upper <= 1.0, "{w:?}");
    }

    #[test]
    fn t_interval_contains_the_mean(xs in prop::collection::vec(-1e6f64..1e6, 2..60), conf in 0.5f64..0.999) {
        let m = mean_t_interval(&xs, conf).unwrap();
        prop_assert!(m.lower <= m.mean && m.mean <= m.upper, "{m:?}");
    }

    #[test]
    fn bootstrap_interval_is_ordered_and_inside_the_data(xs in prop::collection::vec(-1e6f64..1e6, 1..40), seed in any::<u64>()) {
        let m = bootstrap_mean_interval(&xs, 0.95, 200, seed).unwrap();
        let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        // A resampled mean of equal values can differ from them by a rounding step.
        let eps = 1e-12 * lo.abs().max(hi.abs()).max(1.0);
        prop_assert!(lo - eps <= m.lower && m.lower <= m.upper && m.upper <= hi + eps, "{m:?}");
    }

    #[test]
    fn percentiles_are_ordered_and_inside_the_data(xs in prop::collection::vec(finite_f64(), 1..80)) {
        let p = Percentiles::of(&xs).unwrap();
        let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        prop_assert!(lo <= p.p50 && p.p50 <= p.p90 && p.p90 <= p.p99 && p.p99 <= hi, "{p:?}");
    }

    #[test]
    fn value_detectors_never_panic(xs in prop::collection::vec(finite_f64(), 0..300)) {
        let obs: Vec<Observation> = xs.into_iter().map(Observation::Value).collect();
        for method in [Method::PageHinkley, Method::Cusum, Method::Adwin, Method::Ks, Method::Wasserstein] {
            feed(method, &obs);
        }
    }

    #[test]
    fn value_detector_state_always_round_trips(xs in prop::collection::vec(-1e6f64..1e6, 0..300)) {
        let obs: Vec<Observation> = xs.into_iter().map(Observation::Value).collect();
        for method in [Method::PageHinkley, Method::Cusum, Method::Adwin, Method::Ks, Method::Wasserstein] {
            round_trips(&feed(method, &obs));
        }
    }

    #[test]
    fn category_detectors_never_panic(names in prop::collection::vec("[a-f]{1,2}|[\\PC]{0,6}", 0..300)) {
        let obs: Vec<Observation> = names.into_iter().map(Observation::Category).collect();
        for method in [Method::Psi, Method::ChiSquare] {
            round_trips(&feed(method, &obs));
        }
    }

    #[test]
    fn vector_detectors_never_panic(vs in prop::collection::vec(prop::collection::vec(finite_f32(), 3), 0..120)) {
        let obs: Vec<Observation> = vs.into_iter().map(Observation::Vector).collect();
        for method in [Method::Centroid, Method::Mmd] {
            let d = feed(method, &obs);
            if obs.iter().all(|o| matches!(o, Observation::Vector(v) if v.iter().all(|x| x.abs() < 1e6))) {
                round_trips(&d);
            }
        }
    }
}
