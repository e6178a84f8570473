//! Calibrates the default thresholds on the calibration seed (never the report seed): runs a
//! ladder of thresholds per method through the harness and prints each rung's no-change false
//! alarm rate and delays. The rule that picked the defaults is in `keel_monitor::bench`'s docs.
//!
//! ```sh
//! cargo run --release -p keel-monitor --example calibrate_thresholds [METHOD ...]
//! ```
#![allow(clippy::print_stdout)]

use std::process::ExitCode;
use std::time::Instant;

use keel_monitor::bench::{run, BenchDetector, BenchOptions, BenchPlan, CALIBRATION_SEED};
use keel_monitor::drift::{
    AdwinConfig, CentroidConfig, ChiSquareConfig, CusumConfig, KsConfig, MmdConfig, PageHinkleyConfig, PsiConfig,
    WassersteinConfig,
};
use keel_monitor::{DetectorConfig, Method};

/// Page–Hinkley and CUSUM thresholds tried, with each warm-up length.
const SEQUENTIAL: [f64; 6] = [45.0, 50.0, 55.0, 60.0, 70.0, 80.0];
const WARMUPS: [u64; 2] = [1_000, 2_000];

fn ladder(method: Method) -> Vec<BenchDetector> {
    let d = |label: String, config: DetectorConfig| BenchDetector { label, config };
    match method {
        Method::PageHinkley => WARMUPS
            .iter()
            .flat_map(|&w| SEQUENTIAL.map(move |t| (w, t)))
            .map(|(w, t)| {
                let c = PageHinkleyConfig { threshold: t, min_samples: w, ..Default::default() };
                d(format!("page_hinkley λ={t} warm-up {w}"), DetectorConfig::PageHinkley(c))
            })
            .collect(),
        Method::Cusum => WARMUPS
            .iter()
            .flat_map(|&w| SEQUENTIAL.map(move |t| (w, t)))
            .map(|(w, t)| {
                let c = CusumConfig { threshold: t, min_samples: w, ..Default::default() };
                d(format!("cusum h={t} warm-up {w}"), DetectorConfig::Cusum(c))
            })
            .collect(),
        Method::Adwin => [1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 1e-5]
            .map(|t| d(format!("adwin δ={t:e}"), DetectorConfig::Adwin(AdwinConfig { delta: t, ..Default::default() })))
            .to_vec(),
        Method::Psi => [0.025, 0.03, 0.035, 0.04, 0.05, 0.06]
            .map(|t| d(format!("psi {t}"), DetectorConfig::Psi(PsiConfig { threshold: t, ..Default::default() })))
            .to_vec(),
        Method::ChiSquare => [2.5, 3.0, 3.5, 4.0, 5.0, 6.0]
            .map(|t| {
                d(
                    format!("chi_square {t}"),
                    DetectorConfig::ChiSquare(ChiSquareConfig { threshold: t, ..Default::default() }),
                )
            })
            .to_vec(),
        Method::Ks => [2.5, 3.0, 3.5, 4.0, 5.0, 6.0]
            .map(|t| d(format!("ks {t}"), DetectorConfig::Ks(KsConfig { threshold: t, ..Default::default() })))
            .to_vec(),
        Method::Wasserstein => [0.15, 0.18, 0.2, 0.22, 0.25, 0.3]
            .map(|t| {
                d(
                    format!("wasserstein {t}"),
                    DetectorConfig::Wasserstein(WassersteinConfig { threshold: t, ..Default::default() }),
                )
            })
            .to_vec(),
        Method::Centroid => [0.015, 0.02, 0.025, 0.03, 0.04, 0.05]
            .map(|t| {
                d(
                    format!("centroid {t}"),
                    DetectorConfig::Centroid(CentroidConfig { threshold: t, ..Default::default() }),
                )
            })
            .to_vec(),
        Method::Mmd => [0.003, 0.005, 0.0075, 0.01, 0.015, 0.02]
            .map(|t| d(format!("mmd {t}"), DetectorConfig::Mmd(MmdConfig { threshold: t, ..Default::default() })))
            .to_vec(),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "quick");
    let named: Vec<&String> = args.iter().filter(|a| *a != "quick").collect();
    let methods: Vec<Method> =
        Method::ALL.into_iter().filter(|m| named.is_empty() || named.iter().any(|a| *a == m.name())).collect();
    let plan = if quick {
        BenchPlan::quick()
    } else {
        BenchPlan { trials: 100, change_at: 5_000, after_change: 5_000, control_streams: 30, control_len: 100_000 }
    };
    for method in methods {
        let mut options = BenchOptions::defaults(plan);
        options.seed = CALIBRATION_SEED;
        options.detectors = ladder(method);
        let started = Instant::now();
        match run(&options) {
            Ok(table) => println!("## {method}\n\n{}", table.to_markdown()),
            Err(e) => {
                eprintln!("{method}: {e}");
                return ExitCode::FAILURE;
            }
        }
        eprintln!("{method}: {:.1} s", started.elapsed().as_secs_f64());
    }
    ExitCode::SUCCESS
}
