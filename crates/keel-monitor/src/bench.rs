//! The detector quality harness behind `keel bench drift`: seeded synthetic streams with known
//! change points, run through each detector many times, reported as detection delay and false
//! alarm rates.
//!
//! ## Streams
//! | scenario | before the change | after the change | detectors |
//! |---|---|---|---|
//! | mean shift | N(0, 1) | N(0.5, 1) | value |
//! | rate shift | Bernoulli(5 %) as 0/1 | Bernoulli(10 %) | value |
//! | category mix | allow 85 / flag 8 / redact 4 / block 2.5 / escalate 0.5 % | 75 / 12 / 5 / 6 / 2 % | category |
//! | embedding shift | 32-d unit vectors normalise(c + 0.3·g) | the centroid c turns by 25° | vector |
//!
//! Every change stream changes at event [`BenchPlan::change_at`] and runs
//! [`BenchPlan::after_change`] events past it. Each scenario has a no-change control: the
//! "before" distribution for the whole stream. All detectors see the same streams.
//!
//! ## Measures
//! - **delay**: events after the change up to and including the first signal at or after it
//!   (a signal on the first changed event has delay 1); a trial with no signal by the end of
//!   the stream is a miss. Median and p90 over all trials, misses counting as infinitely late
//!   (shown as `miss` when the percentile falls on one).
//! - **false alarms per 10,000 events**: signals before the change point per 10,000
//!   pre-change events, and signals on the no-change controls per 10,000 control events
//!   (warm-up and reference events included in the denominator: they are a real cost of
//!   starting a detector).
//!
//! ## How the default thresholds were chosen
//! The targets are a median delay of at most 1,000 events for the 5 % → 10 % rate change and
//! at most 1 false alarm per 100,000 events (0.1 per 10,000) on the no-change controls. The
//! defaults were calibrated with `cargo run --release -p keel-monitor --example
//! calibrate_thresholds`, which runs the controls and the change streams on
//! [`CALIBRATION_SEED`], a seed never used for reporting, for a ladder of thresholds per method.
//! For each method the default is the most sensitive rung of the ladder (lowest threshold;
//! highest δ for ADWIN) whose calibration false-alarm rate, taken as the worse of the
//! pre-change and the no-change rates over all the method's streams, is at most a third of
//! the target (0.033 per 10,000: a margin for seed-to-seed variation); for Page–Hinkley and
//! CUSUM the warm-up length (1,000 or 2,000) was chosen the same way. The rate-shift delays of
//! the chosen rungs were then checked against their target (all well under it). The
//! calibration tables are in the crate's `CALIBRATION.md`. The reported table ([`REPORT_SEED`])
//! is run once with those defaults and never fed back into them.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};

use crate::drift::{DetectorConfig, DriftDetector, Method, Observation};
use crate::error::{MonitorError, Result};
use crate::rng::SeededRng;

/// Seed of the streams in the reported table.
pub const REPORT_SEED: u64 = 0x5EED_0004_0000_0001;
/// Seed of the streams the default thresholds were calibrated on; never used for reporting.
pub const CALIBRATION_SEED: u64 = 0xCA11_B8A7_E000_0002;

/// Target: median delay (events) for the 5 % → 10 % rate change.
pub const TARGET_RATE_MEDIAN_DELAY: f64 = 1_000.0;
/// Target: false alarms per 10,000 events on no-change streams (1 per 100,000).
pub const TARGET_FALSE_ALARMS_PER_10K: f64 = 0.1;

const ACTIONS: [&str; 5] = ["allow", "flag", "redact", "block", "escalate"];
const ACTIONS_BEFORE: [f64; 5] = [0.85, 0.08, 0.04, 0.025, 0.005];
const ACTIONS_AFTER: [f64; 5] = [0.75, 0.12, 0.05, 0.06, 0.02];
const EMBEDDING_DIM: usize = 32;
const EMBEDDING_NOISE: f64 = 0.3;
const EMBEDDING_TURN_DEGREES: f64 = 25.0;

/// A synthetic stream family with a known change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// N(0, 1) → N(0.5, 1).
    MeanShift,
    /// Bernoulli 5 % → 10 %, fed as 0/1 values.
    RateShift,
    /// An action mix that moves toward flag/block/escalate.
    CategoryShift,
    /// Unit vectors whose centroid turns by 25°.
    EmbeddingShift,
}

impl Scenario {
    /// Every scenario, in table order.
    pub const ALL: [Scenario; 4] =
        [Scenario::MeanShift, Scenario::RateShift, Scenario::CategoryShift, Scenario::EmbeddingShift];

    /// The observation kind the scenario produces.
    pub fn kind(self) -> &'static str {
        match self {
            Scenario::MeanShift | Scenario::RateShift => "value",
            Scenario::CategoryShift => "category",
            Scenario::EmbeddingShift => "vector",
        }
    }

    /// Whether `method` is meant for this stream: it must read the stream's kind, and the rate
    /// stream (0/1 values, all ties) is left to the sequential mean detectors, since KS and
    /// Wasserstein compare continuous distributions.
    pub fn suits(self, method: Method) -> bool {
        match self {
            Scenario::RateShift => matches!(method, Method::PageHinkley | Method::Cusum | Method::Adwin),
            _ => self.kind() == method.reads(),
        }
    }

    /// A short description for tables.
    pub fn label(self) -> &'static str {
        match self {
            Scenario::MeanShift => "mean 0 → 0.5 sd",
            Scenario::RateShift => "rate 5% → 10%",
            Scenario::CategoryShift => "action mix",
            Scenario::EmbeddingShift => "embedding 25° turn",
        }
    }

    fn id(self) -> u64 {
        match self {
            Scenario::MeanShift => 1,
            Scenario::RateShift => 2,
            Scenario::CategoryShift => 3,
            Scenario::EmbeddingShift => 4,
        }
    }
}

/// A seeded stream of one scenario; `change_at: None` is its no-change control.
#[derive(Debug, Clone)]
pub struct Stream {
    scenario: Scenario,
    rng: SeededRng,
    change_at: Option<u64>,
    t: u64,
    centroid_before: Vec<f64>,
    centroid_after: Vec<f64>,
}

fn normalise(v: &mut [f64]) {
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

impl Stream {
    /// The stream of `scenario` drawn from `seed`, changing at event `change_at` (0-based).
    pub fn new(scenario: Scenario, seed: u64, change_at: Option<u64>) -> Self {
        let mut rng = SeededRng::new(seed);
        let (mut before, mut after) = (Vec::new(), Vec::new());
        if scenario == Scenario::EmbeddingShift {
            before = (0..EMBEDDING_DIM).map(|_| rng.normal()).collect();
            normalise(&mut before);
            // A direction orthogonal to the centroid (Gram–Schmidt), to turn it by a known angle.
            let mut u: Vec<f64> = (0..EMBEDDING_DIM).map(|_| rng.normal()).collect();
            let dot: f64 = u.iter().zip(&before).map(|(a, b)| a * b).sum();
            u.iter_mut().zip(&before).for_each(|(a, b)| *a -= dot * b);
            normalise(&mut u);
            let theta = EMBEDDING_TURN_DEGREES.to_radians();
            after = before.iter().zip(&u).map(|(c, u)| theta.cos() * c + theta.sin() * u).collect();
        }
        Self { scenario, rng, change_at, t: 0, centroid_before: before, centroid_after: after }
    }

    /// Whether the event about to be drawn is past the change point.
    fn changed(&self) -> bool {
        self.change_at.is_some_and(|c| self.t >= c)
    }

    /// The next event.
    pub fn next_observation(&mut self) -> Observation {
        let changed = self.changed();
        self.t += 1;
        match self.scenario {
            Scenario::MeanShift => Observation::Value(self.rng.normal() + if changed { 0.5 } else { 0.0 }),
            Scenario::RateShift => Observation::from(self.rng.bernoulli(if changed { 0.10 } else { 0.05 })),
            Scenario::CategoryShift => {
                let i = self.rng.weighted(if changed { &ACTIONS_AFTER } else { &ACTIONS_BEFORE });
                Observation::Category(ACTIONS[i].to_owned())
            }
            Scenario::EmbeddingShift => {
                let c = if changed { &self.centroid_after } else { &self.centroid_before };
                let mut v: Vec<f64> = c.iter().map(|x| x + EMBEDDING_NOISE * self.rng.normal()).collect();
                normalise(&mut v);
                Observation::Vector(v.into_iter().map(|x| x as f32).collect())
            }
        }
    }
}

/// How many streams of which length the harness runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BenchPlan {
    /// Change-stream trials per detector and scenario.
    pub trials: usize,
    /// Event index (0-based) of the first changed event.
    pub change_at: u64,
    /// Events after the change before a trial counts as a miss.
    pub after_change: u64,
    /// No-change control streams per detector and scenario.
    pub control_streams: usize,
    /// Events per control stream.
    pub control_len: u64,
}

impl BenchPlan {
    /// A few seconds in debug builds: for tests and a first look.
    pub fn quick() -> Self {
        Self { trials: 6, change_at: 5_000, after_change: 5_000, control_streams: 2, control_len: 20_000 }
    }

    /// The published table: 200 trials and 2 million control events per row; about a minute on
    /// two cores in release mode.
    pub fn full() -> Self {
        Self { trials: 200, change_at: 5_000, after_change: 5_000, control_streams: 20, control_len: 100_000 }
    }
}

/// A detector to benchmark, with the name it has in the table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchDetector {
    /// Row label.
    pub label: String,
    /// The configuration under test.
    pub config: DetectorConfig,
}

/// What to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchOptions {
    /// Sizes.
    pub plan: BenchPlan,
    /// Base seed of every stream.
    pub seed: u64,
    /// Worker threads (at least 1).
    pub threads: usize,
    /// Detectors; each runs on the scenarios that suit its method ([`Scenario::suits`]).
    pub detectors: Vec<BenchDetector>,
}

impl BenchOptions {
    /// Every method with its default config, on [`REPORT_SEED`], with one worker per core.
    pub fn defaults(plan: BenchPlan) -> Self {
        let detectors = Method::ALL
            .iter()
            .map(|&m| BenchDetector { label: m.name().to_owned(), config: DetectorConfig::default_for(m) })
            .collect();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self { plan, seed: REPORT_SEED, threads, detectors }
    }
}

/// One detector on one scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchRow {
    /// Detector label.
    pub detector: String,
    /// Its method.
    pub method: Method,
    /// The scenario.
    pub scenario: Scenario,
    /// Change-stream trials run.
    pub trials: usize,
    /// Trials with a signal at or after the change.
    pub detected: usize,
    /// Median delay in events; `None` when the median trial missed.
    pub median_delay: Option<f64>,
    /// 90th-percentile delay in events; `None` when that trial missed.
    pub p90_delay: Option<f64>,
    /// Signals before the change point, over all trials.
    pub false_alarms_before: u64,
    /// Pre-change events, over all trials.
    pub events_before: u64,
    /// Signals on the no-change controls.
    pub false_alarms_control: u64,
    /// Events in the no-change controls.
    pub events_control: u64,
}

impl BenchRow {
    /// Pre-change false alarms per 10,000 events.
    pub fn false_alarm_rate_before(&self) -> f64 {
        per_10k(self.false_alarms_before, self.events_before)
    }

    /// No-change false alarms per 10,000 events.
    pub fn false_alarm_rate_control(&self) -> f64 {
        per_10k(self.false_alarms_control, self.events_control)
    }
}

fn per_10k(count: u64, events: u64) -> f64 {
    if events == 0 {
        0.0
    } else {
        count as f64 * 10_000.0 / events as f64
    }
}

/// One target from the issue, checked against one row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetCheck {
    /// Detector label.
    pub detector: String,
    /// Which target.
    pub target: String,
    /// The measured value (`None`: the median trial missed).
    pub value: Option<f64>,
    /// The limit.
    pub limit: f64,
    /// Whether the row meets it.
    pub passed: bool,
}

/// The harness's result: one row per detector and scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchTable {
    /// The sizes that were run.
    pub plan: BenchPlan,
    /// The base seed.
    pub seed: u64,
    /// The rows, in detector then scenario order.
    pub rows: Vec<BenchRow>,
}

fn fmt_delay(d: Option<f64>) -> String {
    d.map_or_else(|| "miss".to_owned(), |d| format!("{d:.0}"))
}

fn fmt_events(n: u64) -> String {
    if n >= 1_000_000 {
        format!("{:.1}M", n as f64 / 1e6)
    } else if n >= 1_000 {
        format!("{:.0}k", n as f64 / 1e3)
    } else {
        n.to_string()
    }
}

impl BenchTable {
    /// The targets for every row they apply to: no-change false alarms for all, and the
    /// rate-shift median delay for the value detectors.
    pub fn targets(&self) -> Vec<TargetCheck> {
        let mut out = Vec::new();
        for row in &self.rows {
            let rate = row.false_alarm_rate_control();
            out.push(TargetCheck {
                detector: row.detector.clone(),
                target: format!("no-change false alarms / 10k ({})", row.scenario.label()),
                value: Some(rate),
                limit: TARGET_FALSE_ALARMS_PER_10K,
                passed: rate <= TARGET_FALSE_ALARMS_PER_10K,
            });
            if row.scenario == Scenario::RateShift {
                out.push(TargetCheck {
                    detector: row.detector.clone(),
                    target: "median delay, rate 5% → 10%".to_owned(),
                    value: row.median_delay,
                    limit: TARGET_RATE_MEDIAN_DELAY,
                    passed: row.median_delay.is_some_and(|d| d <= TARGET_RATE_MEDIAN_DELAY),
                });
            }
        }
        out
    }

    /// The table as GitHub-flavoured Markdown, with the run's sizes and seed above it.
    pub fn to_markdown(&self) -> String {
        let p = &self.plan;
        let mut s = format!(
            "Seed {:#x}; {} change trials per row (change at event {}, {} events after it); no-change controls: {} \
             streams × {} events per row.\n\n",
            self.seed, p.trials, p.change_at, p.after_change, p.control_streams, p.control_len
        );
        s.push_str(
            "| detector | stream | detected | median delay | p90 delay | false alarms / 10k before change | false \
             alarms / 10k, no-change |\n|---|---|---:|---:|---:|---:|---:|\n",
        );
        for r in &self.rows {
            s.push_str(&format!(
                "| {} | {} | {}/{} | {} | {} | {:.3} ({} in {}) | {:.3} ({} in {}) |\n",
                r.detector,
                r.scenario.label(),
                r.detected,
                r.trials,
                fmt_delay(r.median_delay),
                fmt_delay(r.p90_delay),
                r.false_alarm_rate_before(),
                r.false_alarms_before,
                fmt_events(r.events_before),
                r.false_alarm_rate_control(),
                r.false_alarms_control,
                fmt_events(r.events_control),
            ));
        }
        s
    }
}

impl fmt::Display for BenchTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_markdown())
    }
}

/// What one stream did to one detector.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Outcome {
    false_alarms: u64,
    events_before: u64,
    delay: Option<u64>,
}

/// Runs `config` over one stream. With a change point, stops at the first signal after it.
fn run_stream(
    config: &DetectorConfig,
    scenario: Scenario,
    seed: u64,
    change_at: Option<u64>,
    len: u64,
) -> Result<Outcome> {
    let mut detector = config.build()?;
    let mut stream = Stream::new(scenario, seed, change_at);
    let mut out = Outcome::default();
    for t in 0..len {
        let obs = stream.next_observation();
        let signal = detector.update(&obs)?;
        let after = change_at.is_some_and(|c| t >= c);
        if !after {
            out.events_before += 1;
        }
        if signal.is_some() {
            match change_at {
                Some(c) if t >= c => {
                    out.delay = Some(t - c + 1);
                    break;
                }
                _ => out.false_alarms += 1,
            }
        }
    }
    Ok(out)
}

/// The seed of stream `index` of a scenario; the same for every detector (common random
/// numbers make the rows comparable).
pub fn stream_seed(base: u64, scenario: Scenario, control: bool, index: usize) -> u64 {
    let mut r = SeededRng::new(base ^ (scenario.id() << 56) ^ (u64::from(control) << 48) ^ index as u64);
    r.next_u64()
}

/// What one worker computed: (job index, outcome).
type WorkerResults = Vec<(usize, Result<Outcome>)>;

struct Job {
    row: usize,
    scenario: Scenario,
    control: bool,
    index: usize,
}

/// Percentile q of sorted delays where misses are +∞ (type-7 interpolation; `None` on a miss).
fn censored_percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let h = (sorted.len() - 1) as f64 * q;
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    let frac = h - lo as f64;
    if !sorted[lo].is_finite() || (frac > 0.0 && !sorted[hi].is_finite()) {
        return None;
    }
    Some(if frac > 0.0 { sorted[lo] + frac * (sorted[hi] - sorted[lo]) } else { sorted[lo] })
}

/// Runs the harness. Deterministic for given options, whatever the thread count.
pub fn run(options: &BenchOptions) -> Result<BenchTable> {
    for d in &options.detectors {
        d.config.validate()?;
    }
    let plan = options.plan;
    let mut rows = Vec::new();
    let mut jobs = Vec::new();
    for d in &options.detectors {
        let method = d.config.method();
        for scenario in Scenario::ALL.into_iter().filter(|s| s.suits(method)) {
            let row = rows.len();
            rows.push(BenchRow {
                detector: d.label.clone(),
                method,
                scenario,
                trials: plan.trials,
                detected: 0,
                median_delay: None,
                p90_delay: None,
                false_alarms_before: 0,
                events_before: 0,
                false_alarms_control: 0,
                events_control: 0,
            });
            jobs.extend((0..plan.control_streams).map(|index| Job { row, scenario, control: true, index }));
            jobs.extend((0..plan.trials).map(|index| Job { row, scenario, control: false, index }));
        }
    }
    let configs: Vec<&DetectorConfig> = options
        .detectors
        .iter()
        .flat_map(|d| {
            let method = d.config.method();
            Scenario::ALL.into_iter().filter(move |s| s.suits(method)).map(move |_| &d.config)
        })
        .collect();

    let next = AtomicUsize::new(0);
    let worker = || {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(job) = jobs.get(i) else { break };
            let seed = stream_seed(options.seed, job.scenario, job.control, job.index);
            let result = if job.control {
                run_stream(configs[job.row], job.scenario, seed, None, plan.control_len)
            } else {
                run_stream(
                    configs[job.row],
                    job.scenario,
                    seed,
                    Some(plan.change_at),
                    plan.change_at + plan.after_change,
                )
            };
            done.push((i, result));
        }
        done
    };
    let mut results: Vec<Option<Outcome>> = vec![None; jobs.len()];
    let per_thread: Vec<std::thread::Result<WorkerResults>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..options.threads.max(1)).map(|_| s.spawn(worker)).collect();
        handles.into_iter().map(|h| h.join()).collect()
    });
    for done in per_thread {
        let done = done.map_err(|_| MonitorError::InvalidInput {
            what: "the drift benchmark",
            reason: "a worker thread stopped unexpectedly".to_owned(),
        })?;
        for (i, r) in done {
            results[i] = Some(r?);
        }
    }

    let mut delays: Vec<Vec<f64>> = vec![Vec::new(); rows.len()];
    for (job, outcome) in jobs.iter().zip(results) {
        let Some(o) = outcome else { continue };
        let row = &mut rows[job.row];
        if job.control {
            row.false_alarms_control += o.false_alarms;
            row.events_control += o.events_before;
        } else {
            row.false_alarms_before += o.false_alarms;
            row.events_before += o.events_before;
            row.detected += usize::from(o.delay.is_some());
            delays[job.row].push(o.delay.map_or(f64::INFINITY, |d| d as f64));
        }
    }
    for (row, mut d) in rows.iter_mut().zip(delays) {
        d.sort_by(f64::total_cmp);
        row.median_delay = censored_percentile(&d, 0.5);
        row.p90_delay = censored_percentile(&d, 0.9);
    }
    Ok(BenchTable { plan, seed: options.seed, rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn censored_percentiles() {
        let inf = f64::INFINITY;
        assert_eq!(censored_percentile(&[1.0, 2.0, 3.0], 0.5), Some(2.0));
        assert_eq!(censored_percentile(&[1.0, 2.0, 3.0, 4.0], 0.5), Some(2.5));
        assert_eq!(censored_percentile(&[1.0, 2.0, inf], 0.5), Some(2.0));
        assert_eq!(censored_percentile(&[1.0, 2.0, inf, inf], 0.5), None);
        assert_eq!(censored_percentile(&[], 0.5), None);
    }

    #[test]
    fn streams_are_seeded_and_change_where_told() {
        let mut a = Stream::new(Scenario::RateShift, 9, Some(100));
        let mut b = Stream::new(Scenario::RateShift, 9, Some(100));
        for _ in 0..300 {
            assert_eq!(a.next_observation(), b.next_observation());
        }
        // Embedding centroids are unit vectors 25° apart.
        let s = Stream::new(Scenario::EmbeddingShift, 1, Some(10));
        let dot: f64 = s.centroid_before.iter().zip(&s.centroid_after).map(|(a, b)| a * b).sum();
        assert!((dot - 25f64.to_radians().cos()).abs() < 1e-12);
        // The rate really moves from 5 % to 10 %.
        let mut r = Stream::new(Scenario::RateShift, 2, Some(100_000));
        let ones = |r: &mut Stream, n: usize| {
            (0..n).filter(|_| r.next_observation() == Observation::Value(1.0)).count() as f64 / n as f64
        };
        let before = ones(&mut r, 100_000);
        let after = ones(&mut r, 100_000);
        assert!((before - 0.05).abs() < 0.003 && (after - 0.10).abs() < 0.004, "{before} {after}");
    }

    #[test]
    fn quick_harness_runs_every_method_and_renders() {
        let mut options = BenchOptions::defaults(BenchPlan {
            trials: 2,
            control_streams: 1,
            control_len: 6_000,
            ..BenchPlan::quick()
        });
        options.threads = 2;
        let table = run(&options).unwrap();
        // 3 sequential methods × 2 scenarios + KS, Wasserstein, 2 categorical, 2 embedding.
        assert_eq!(table.rows.len(), 12);
        let md = table.to_markdown();
        assert!(md.contains("| cusum | rate 5% → 10% |"), "{md}");
        assert_eq!(md.lines().filter(|l| l.starts_with("| ")).count(), 13);
        // Deterministic whatever the thread count.
        options.threads = 1;
        assert_eq!(run(&options).unwrap(), table);
    }
}
