//! Every drift detector against seeded streams with known change points, its persisted state,
//! its config validation and its input checks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keel_monitor::bench::{Scenario, Stream};
use keel_monitor::drift::{CusumConfig, KsConfig};
use keel_monitor::{
    AlertEvent, AlertState, AlertTracker, Detector, DetectorConfig, DriftDetector, DriftSignal, HysteresisConfig,
    Method, MonitorError, Observation,
};

const CHANGE_AT: u64 = 5_000;

fn scenario_for(method: Method) -> Scenario {
    match method.reads() {
        "category" => Scenario::CategoryShift,
        "vector" => Scenario::EmbeddingShift,
        _ => Scenario::MeanShift,
    }
}

/// Runs the default detector of `method` over a stream; returns (event index, signal) pairs.
fn signals(method: Method, scenario: Scenario, seed: u64, change_at: Option<u64>, len: u64) -> Vec<(u64, DriftSignal)> {
    let mut detector = DetectorConfig::default_for(method).build().unwrap();
    let mut stream = Stream::new(scenario, seed, change_at);
    let mut out = Vec::new();
    for t in 0..len {
        if let Some(s) = detector.update(&stream.next_observation()).unwrap() {
            out.push((t, s));
        }
    }
    out
}

fn check_signal(method: Method, t: u64, s: &DriftSignal) {
    assert_eq!(s.method, method);
    assert!(s.statistic >= s.threshold, "{method}: {s:?}");
    assert_eq!(s.samples, t + 1, "{method}: samples counts every observation");
    assert!(s.window_size > 0 && s.reference_size > 0, "{method}: {s:?}");
    assert!(!s.detail.is_empty());
    match method {
        Method::Ks | Method::ChiSquare => {
            let p = s.p_value.unwrap();
            assert!(p > 0.0 && p <= 10f64.powf(-s.threshold) * (1.0 + 1e-9), "{method}: p = {p}");
        }
        _ => assert!(s.p_value.is_none()),
    }
}

/// Each detector catches the change on every seeded stream. The defaults allow about one false
/// alarm per 100,000 events (see `bench`), so across four 5,000-event pre-change stretches at
/// most one early signal is tolerated; more means a broken detector.
#[test]
fn every_detector_fires_after_the_change_and_not_before() {
    for method in Method::ALL {
        let scenario = scenario_for(method);
        let mut early = Vec::new();
        for seed in [101, 202, 303, 404] {
            let found = signals(method, scenario, seed, Some(CHANGE_AT), CHANGE_AT + 3_000);
            early.extend(found.iter().filter(|(t, _)| *t < CHANGE_AT).map(|(t, _)| (seed, *t)));
            let (t, s) = found
                .iter()
                .find(|(t, _)| *t >= CHANGE_AT)
                .unwrap_or_else(|| panic!("{method} seed {seed}: missed the change"));
            check_signal(method, *t, s);
        }
        assert!(early.len() <= 1, "{method}: false alarms before the change at (seed, event) {early:?}");
    }
}

#[test]
fn sequential_detectors_catch_a_rate_doubling() {
    for method in [Method::PageHinkley, Method::Cusum, Method::Adwin] {
        let found = signals(method, Scenario::RateShift, 303, Some(CHANGE_AT), CHANGE_AT + 4_000);
        assert!(found.iter().all(|(t, _)| *t >= CHANGE_AT), "{method}: {found:?}");
        let (t, s) = found.first().unwrap_or_else(|| panic!("{method}: missed 5% → 10%"));
        check_signal(method, *t, s);
        assert!(s.detail.contains("rose"), "{method}: {}", s.detail);
    }
}

#[test]
fn no_change_controls_stay_quiet() {
    for method in Method::ALL {
        let found = signals(method, scenario_for(method), 404, None, 20_000);
        assert!(found.is_empty(), "{method}: false alarms on a no-change stream: {found:?}");
    }
    for method in [Method::PageHinkley, Method::Cusum, Method::Adwin] {
        let found = signals(method, Scenario::RateShift, 405, None, 20_000);
        assert!(found.is_empty(), "{method}: false alarms on a no-change rate: {found:?}");
    }
}

#[test]
fn state_round_trips_through_json_and_continues_identically() {
    for method in Method::ALL {
        let mut a = DetectorConfig::default_for(method).build().unwrap();
        let mut stream = Stream::new(scenario_for(method), 7, Some(3_600));
        for _ in 0..3_500 {
            a.update(&stream.next_observation()).unwrap();
        }
        let json = serde_json::to_string(&a).unwrap();
        assert!(json.starts_with(&format!("{{\"method\":\"{}\"", method.name())), "{json:.80}");
        let mut b: Detector = serde_json::from_str(&json).unwrap();
        assert_eq!(a, b, "{method}: restored state differs");
        let mut fired = 0;
        for _ in 0..3_000 {
            let obs = stream.next_observation();
            let (sa, sb) = (a.update(&obs).unwrap(), b.update(&obs).unwrap());
            fired += usize::from(sa.is_some());
            assert_eq!(sa, sb, "{method}: restored detector diverged");
        }
        assert!(fired > 0, "{method}: the continuation should include the change");
        assert_eq!(serde_json::to_string(&a).unwrap(), serde_json::to_string(&b).unwrap());
    }
}

#[test]
fn configs_parse_with_defaults_and_reject_unknown_fields() {
    let c: DetectorConfig = serde_json::from_str(r#"{"method": "cusum"}"#).unwrap();
    assert_eq!(c, DetectorConfig::Cusum(CusumConfig::default()));
    let c: DetectorConfig = serde_json::from_str(r#"{"method": "ks", "threshold": 8, "window_size": 300}"#).unwrap();
    assert_eq!(c, DetectorConfig::Ks(KsConfig { threshold: 8.0, window_size: 300, ..KsConfig::default() }));
    for method in Method::ALL {
        let json = serde_json::to_string(&DetectorConfig::default_for(method)).unwrap();
        let back: DetectorConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back.method(), method);
        back.validate().unwrap();
    }
    let e = serde_json::from_str::<DetectorConfig>(r#"{"method": "psi", "treshold": 0.2}"#).unwrap_err();
    assert!(e.to_string().starts_with("unknown field `treshold`"), "{e}");
    let e = serde_json::from_str::<DetectorConfig>(r#"{"method": "zscore"}"#).unwrap_err();
    assert!(e.to_string().starts_with("unknown variant `zscore`"), "{e}");
    let e = serde_json::from_str::<DetectorConfig>(r#"{"threshold": 3}"#).unwrap_err();
    assert!(e.to_string().starts_with("missing field `method`"), "{e}");
}

#[test]
fn validation_names_the_method_field_and_value() {
    let cases = [
        (
            r#"{"method": "cusum", "threshold": -1}"#,
            "invalid cusum config: `threshold` must be a finite number greater than 0, got -1",
        ),
        (
            r#"{"method": "cusum", "min_samples": 1}"#,
            "invalid cusum config: `min_samples` must be between 2 and 1000000, got 1",
        ),
        (
            r#"{"method": "page_hinkley", "delta": -0.5}"#,
            "invalid page_hinkley config: `delta` must be a finite number of at least 0, got -0.5",
        ),
        (
            r#"{"method": "adwin", "delta": 1.5}"#,
            "invalid adwin config: `delta` must be strictly between 0 and 1, got 1.5",
        ),
        (
            r#"{"method": "adwin", "max_buckets": 1}"#,
            "invalid adwin config: `max_buckets` must be between 2 and 1000, got 1",
        ),
        (
            r#"{"method": "ks", "window_size": 100, "min_samples": 500}"#,
            "invalid ks config: `min_samples` must be between 2 and window_size (100), got 500",
        ),
        (
            r#"{"method": "wasserstein", "reference_size": 5}"#,
            "invalid wasserstein config: `reference_size` must be between 10 and 1000000, got 5",
        ),
        (
            r#"{"method": "psi", "max_categories": 1}"#,
            "invalid psi config: `max_categories` must be between 2 and 10000, got 1",
        ),
        (
            r#"{"method": "chi_square", "threshold": 0}"#,
            "invalid chi_square config: `threshold` must be a finite number greater than 0, got 0",
        ),
        (
            r#"{"method": "centroid", "window_size": 1}"#,
            "invalid centroid config: `window_size` must be between 10 and 1000000, got 1",
        ),
        (
            r#"{"method": "mmd", "subsample": 5000, "reference_size": 1000}"#,
            "invalid mmd config: `subsample` must be between 2 and 1000, got 5000",
        ),
    ];
    for (json, want) in cases {
        let config: DetectorConfig = serde_json::from_str(json).unwrap();
        let e = config.build().unwrap_err();
        assert_eq!(e.to_string(), want, "{json}");
        assert!(matches!(e, MonitorError::InvalidConfig { .. }));
    }
}

#[test]
fn wrong_inputs_are_errors_and_leave_the_state_alone() {
    let mut cusum = DetectorConfig::default_for(Method::Cusum).build().unwrap();
    let before = cusum.clone();
    let e = cusum.update(&Observation::from("allow")).unwrap_err();
    assert_eq!(e.to_string(), "the cusum detector reads value observations, got a category observation");
    let e = cusum.update(&Observation::Value(f64::NAN)).unwrap_err();
    assert_eq!(e.to_string(), "a value observation must be a finite number, got NaN");
    assert!(cusum.update(&Observation::Value(f64::INFINITY)).is_err());
    assert_eq!(cusum, before);

    let mut psi = DetectorConfig::default_for(Method::Psi).build().unwrap();
    let e = psi.update(&Observation::Vector(vec![1.0])).unwrap_err();
    assert_eq!(e.to_string(), "the psi detector reads category observations, got a vector observation");

    for method in [Method::Centroid, Method::Mmd] {
        let mut d = DetectorConfig::default_for(method).build().unwrap();
        assert!(d.update(&Observation::Value(1.0)).is_err());
        d.update(&Observation::Vector(vec![0.1, 0.2, 0.3])).unwrap();
        let e = d.update(&Observation::Vector(vec![0.1, 0.2])).unwrap_err();
        assert_eq!(e.to_string(), "vector has 2 dimensions, but this detector's vectors have 3");
        assert_eq!(d.update(&Observation::Vector(vec![])).unwrap_err(), MonitorError::EmptyVector);
        let e = d.update(&Observation::Vector(vec![0.1, f32::NAN, 0.3])).unwrap_err();
        assert_eq!(e.to_string(), "a vector component must be a finite number, got NaN");
        assert_eq!(d.samples(), 1);
    }
}

#[test]
fn constant_warm_up_extends_until_the_values_spread() {
    // A rare event whose first thousand trials are all misses must not standardise by zero.
    let mut d = DetectorConfig::default_for(Method::Cusum).build().unwrap();
    for _ in 0..3_000 {
        assert!(d.update(&Observation::from(false)).unwrap().is_none());
    }
    assert!(!d.is_ready());
    assert!(d.update(&Observation::from(true)).unwrap().is_none());
    assert!(d.is_ready());
}

#[test]
fn alert_follows_a_detector_with_hysteresis() {
    let mut detector = DetectorConfig::default_for(Method::Cusum).build().unwrap();
    let mut tracker = AlertTracker::new(HysteresisConfig::for_detector(&detector, 0.5, 500)).unwrap();
    let mut stream = Stream::new(Scenario::MeanShift, 11, Some(CHANGE_AT));
    let mut opened = Vec::new();
    for t in 0..CHANGE_AT + 3_000 {
        let signal = detector.update(&stream.next_observation()).unwrap();
        if let Some(AlertEvent::Opened { alert }) = tracker.observe_detector(signal.as_ref(), &detector).unwrap() {
            opened.push((t, alert));
        }
    }
    assert_eq!(opened.len(), 1, "one change, one alert: {opened:?}");
    let (t, alert) = &opened[0];
    assert!(*t >= CHANGE_AT);
    let signal = alert.signal.as_ref().unwrap();
    assert_eq!(alert.statistic, signal.statistic);
    assert_eq!(alert.threshold, detector.threshold());
    assert_eq!(tracker.acknowledge("oncall").unwrap().state, AlertState::Acknowledged);
    assert_eq!(tracker.resolve().unwrap().state, AlertState::Resolved);
}
