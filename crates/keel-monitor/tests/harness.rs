//! The full detector quality harness against the issue's targets. Slow in debug builds, so it
//! is ignored by default; run it in release:
//!
//! ```sh
//! cargo test --release -p keel-monitor --test harness -- --ignored --nocapture
//! ```
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use keel_monitor::bench::{run, BenchOptions, BenchPlan, Scenario};
use keel_monitor::Method;

#[test]
#[ignore = "about a minute in release mode; run with --ignored"]
fn full_harness_meets_the_targets() {
    let table = run(&BenchOptions::defaults(BenchPlan::full())).unwrap();
    println!("{}", table.to_markdown());
    let failed: Vec<_> = table.targets().into_iter().filter(|c| !c.passed).collect();
    assert!(failed.is_empty(), "targets missed: {failed:#?}");
    for row in &table.rows {
        // A false alarm shortly before the change makes a detector relearn its reference across
        // the change point and miss it; allow those few trials, nothing more.
        assert!(row.detected * 100 >= row.trials * 98, "{} missed changes on {}", row.detector, row.scenario.label());
    }
    let rate: Vec<_> = table.rows.iter().filter(|r| r.scenario == Scenario::RateShift).map(|r| r.method).collect();
    assert_eq!(rate, [Method::PageHinkley, Method::Cusum, Method::Adwin]);
}
