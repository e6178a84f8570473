//! Runs the drift detector quality harness with the default detectors on the report seed and
//! prints the Markdown table (the README's figures):
//!
//! ```sh
//! cargo run --release -p keel-monitor --example drift_table          # full: ~1 min on 2 cores
//! cargo run --release -p keel-monitor --example drift_table -- quick # a few seconds
//! ```
#![allow(clippy::print_stdout)]

use std::process::ExitCode;
use std::time::Instant;

use keel_monitor::bench::{run, BenchOptions, BenchPlan};

fn main() -> ExitCode {
    let quick = std::env::args().any(|a| a == "quick");
    let options = BenchOptions::defaults(if quick { BenchPlan::quick() } else { BenchPlan::full() });
    let started = Instant::now();
    let table = match run(&options) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("drift bench failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}", table.to_markdown());
    let checks = table.targets();
    let failed: Vec<_> = checks.iter().filter(|c| !c.passed).collect();
    println!("Targets: {} of {} checks met.", checks.len() - failed.len(), checks.len());
    for c in &failed {
        let value = c.value.map_or_else(|| "miss".to_owned(), |v| format!("{v:.3}"));
        println!("- {}: {} = {value} (limit {})", c.detector, c.target, c.limit);
    }
    eprintln!("{} threads, {:.1} s", options.threads, started.elapsed().as_secs_f64());
    ExitCode::SUCCESS
}
