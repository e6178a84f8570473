//! Measures the two prompt-injection detectors Keel has on a labelled CSV, at fixed operating
//! points and without tuning anything on the data:
//!
//! - the classifier: jailguard's MLP over all-MiniLM-L6-v2 embeddings, cut at 0.5 (its sigmoid's
//!   natural boundary; `--threshold` moves it, but a threshold picked on a test set is no longer
//!   a test result);
//! - the rule-based `injection` heuristic, at the default policy's two rules: `block` when its
//!   score is ≥ 0.8 and `flag` when ≥ 0.4 (policies/default.toml).
//!
//! ```sh
//! cargo run -p keel-models --release --example pull all-minilm-l6-v2   # once
//! cargo run --release -p keel-policy --example injection_eval -- --csv test.csv \
//!     [--text-col text] [--label-col label | --all-positive] [--threshold 0.5] \
//!     [--models-dir DIR] [--examples 5] [--scores-out scores.csv]
//! ```
//!
//! `--scores-out` writes every row's number, label, classifier score, heuristic score and finding
//! kinds, and text, for looking at the errors in other tools.
//!
//! It lives in keel-policy rather than keel-models because keel-policy is the crate that depends
//! on keel-models; a keel-models example needing keel-policy would point the arrow backwards.
//! The datasets are not part of the repository: the path is given on the command line.

#![allow(clippy::print_stdout, reason = "an example that reports its measurements on stdout")]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use keel_models::{default_models_dir, Embedder, InjectionClassifier, MiniLmEmbedder, MINILM_L6_V2};
use keel_policy::detect::InjectionDetector;

/// Texts embedded per call, as the embedder pads them into one batch.
const BATCH: usize = 32;
/// The default policy's `block-injection` rule: `injection.score >= 0.8`.
const HEURISTIC_BLOCK: f64 = 0.8;
/// The default policy's `flag-possible-injection` rule: `injection.score >= 0.4`.
const HEURISTIC_FLAG: f64 = 0.4;
/// Longest excerpt of a text shown among the examples, in characters.
const EXCERPT_CHARS: usize = 100;
/// Two-sided 95% normal quantile, for the Wilson intervals.
const Z95: f64 = 1.959_964;

const USAGE: &str = "usage: injection_eval --csv PATH [--text-col NAME] [--label-col NAME | --all-positive] \
                     [--threshold 0.5] [--models-dir DIR] [--examples 5] [--scores-out PATH]";

/// Command line, validated.
struct Args {
    csv: PathBuf,
    text_col: Option<String>,
    label_col: Option<String>,
    all_positive: bool,
    threshold: f32,
    models_dir: Option<PathBuf>,
    examples: usize,
    scores_out: Option<PathBuf>,
}

impl Args {
    fn parse() -> Result<Self> {
        let mut raw = std::env::args().skip(1);
        let mut csv = None;
        let mut args = Args {
            csv: PathBuf::new(),
            text_col: None,
            label_col: None,
            all_positive: false,
            threshold: 0.5,
            models_dir: None,
            examples: 5,
            scores_out: None,
        };
        while let Some(flag) = raw.next() {
            let mut value = || raw.next().with_context(|| format!("{flag} needs a value\n{USAGE}"));
            match flag.as_str() {
                "--csv" => csv = Some(PathBuf::from(value()?)),
                "--text-col" => args.text_col = Some(value()?),
                "--label-col" => args.label_col = Some(value()?),
                "--all-positive" => args.all_positive = true,
                "--threshold" => {
                    let v = value()?;
                    args.threshold = v.parse().with_context(|| format!("--threshold {v:?} is not a number"))?;
                    if !(0.0..=1.0).contains(&args.threshold) {
                        bail!("--threshold must lie in [0, 1], got {v}");
                    }
                }
                "--models-dir" => args.models_dir = Some(PathBuf::from(value()?)),
                "--scores-out" => args.scores_out = Some(PathBuf::from(value()?)),
                "--examples" => {
                    let v = value()?;
                    args.examples = v.parse().with_context(|| format!("--examples {v:?} is not a count"))?;
                }
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other:?}\n{USAGE}"),
            }
        }
        if args.all_positive && args.label_col.is_some() {
            bail!("--all-positive and --label-col exclude each other");
        }
        args.csv = csv.with_context(|| format!("--csv is required\n{USAGE}"))?;
        Ok(args)
    }
}

/// One labelled text.
struct Row {
    /// 1-based position among the data records (the header not counted).
    row: usize,
    text: String,
    injection: bool,
}

/// The rows of the CSV and the columns they came from.
struct Dataset {
    rows: Vec<Row>,
    text_col: String,
    label_source: String,
}

/// Reads a label the way public injection sets spell them.
fn parse_label(raw: &str) -> Option<bool> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "1" | "1.0" | "true" | "yes" | "injection" | "prompt_injection" | "jailbreak" | "malicious" | "attack"
        | "unsafe" => Some(true),
        "0" | "0.0" | "false" | "no" | "benign" | "safe" | "legit" | "legitimate" => Some(false),
        _ => None,
    }
}

fn read_dataset(args: &Args) -> Result<Dataset> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_path(&args.csv)
        .with_context(|| format!("cannot open {}", args.csv.display()))?;
    let headers: Vec<String> = reader
        .headers()
        .with_context(|| format!("cannot read the header row of {}", args.csv.display()))?
        .iter()
        .map(|h| h.trim_start_matches('\u{feff}').to_string())
        .collect();
    let find = |name: &str| headers.iter().position(|h| h == name);

    // A single-column file is a list of texts; otherwise the column must be named `text` or given.
    let text_col = match (&args.text_col, headers.len()) {
        (Some(name), _) => name.clone(),
        (None, 1) => headers[0].clone(),
        (None, _) => "text".to_string(),
    };
    let Some(text_idx) = find(&text_col) else {
        bail!("{} has no column {text_col:?} (columns: {headers:?}); name it with --text-col", args.csv.display());
    };
    let label_idx = if args.all_positive {
        None
    } else {
        let name = args.label_col.as_deref().unwrap_or("label");
        match find(name) {
            Some(i) => Some(i),
            None => bail!(
                "{} has no column {name:?} (columns: {headers:?}); name it with --label-col, or pass \
                 --all-positive if every row is an injection",
                args.csv.display()
            ),
        }
    };
    let label_source = match label_idx {
        Some(i) => format!("column {:?}", headers[i]),
        None => "--all-positive (every row is an injection)".to_string(),
    };

    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.with_context(|| format!("{}: record {} is malformed", args.csv.display(), i + 1))?;
        let row = i + 1;
        let text = record.get(text_idx).with_context(|| format!("record {row} has no {text_col:?} field"))?;
        let injection = match label_idx {
            None => true,
            Some(j) => {
                let raw = record.get(j).with_context(|| format!("record {row} has no label field"))?;
                parse_label(raw).with_context(|| format!("record {row}: cannot read label {raw:?} as 0/1"))?
            }
        };
        rows.push(Row { row, text: text.to_string(), injection });
    }
    if rows.is_empty() {
        bail!("{} has no rows", args.csv.display());
    }
    Ok(Dataset { rows, text_col, label_source })
}

/// Counts of a binary detector against the labels.
#[derive(Default, Clone, Copy)]
struct Confusion {
    tp: u64,
    fp: u64,
    tn: u64,
    fn_: u64,
}

impl Confusion {
    fn of(labels: &[bool], predicted: impl IntoIterator<Item = bool>) -> Self {
        let mut c = Confusion::default();
        for (&actual, hit) in labels.iter().zip(predicted) {
            match (actual, hit) {
                (true, true) => c.tp += 1,
                (false, true) => c.fp += 1,
                (false, false) => c.tn += 1,
                (true, false) => c.fn_ += 1,
            }
        }
        c
    }

    fn n(&self) -> u64 {
        self.tp + self.fp + self.tn + self.fn_
    }

    /// Whether the set has benign rows; without them precision is 100% by construction.
    fn has_negatives(&self) -> bool {
        self.fp + self.tn > 0
    }

    fn precision(&self) -> Option<(f64, (f64, f64))> {
        if !self.has_negatives() {
            return None;
        }
        proportion(self.tp, self.tp + self.fp)
    }

    fn recall(&self) -> Option<(f64, (f64, f64))> {
        proportion(self.tp, self.tp + self.fn_)
    }

    fn false_positive_rate(&self) -> Option<(f64, (f64, f64))> {
        proportion(self.fp, self.fp + self.tn)
    }

    fn f1(&self) -> Option<f64> {
        let denom = 2 * self.tp + self.fp + self.fn_;
        (denom > 0 && self.has_negatives()).then(|| 2.0 * self.tp as f64 / denom as f64)
    }

    fn accuracy(&self) -> f64 {
        (self.tp + self.tn) as f64 / self.n().max(1) as f64
    }
}

/// `k / n` with its Wilson score 95% interval; `None` when `n` is 0.
fn proportion(k: u64, n: u64) -> Option<(f64, (f64, f64))> {
    if n == 0 {
        return None;
    }
    let (k, n) = (k as f64, n as f64);
    let p = k / n;
    let z2 = Z95 * Z95;
    let denom = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denom;
    let half = Z95 / denom * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    Some((p, ((centre - half).max(0.0), (centre + half).min(1.0))))
}

/// Area under the ROC curve (the Mann–Whitney statistic, ties counted half); `None` unless both
/// classes are present. Threshold-free, so it says how separable the scores are without
/// choosing a cut on the test data.
fn roc_auc(labels: &[bool], scores: &[f64]) -> Option<f64> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let (mut rank_sum_pos, mut pos, mut neg) = (0.0, 0u64, 0u64);
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j < order.len() && scores[order[j]] == scores[order[i]] {
            j += 1;
        }
        // Tied scores share the mean of ranks i+1..=j.
        let mean_rank = (i + 1 + j) as f64 / 2.0;
        for &k in &order[i..j] {
            if labels[k] {
                rank_sum_pos += mean_rank;
                pos += 1;
            } else {
                neg += 1;
            }
        }
        i = j;
    }
    if pos == 0 || neg == 0 {
        return None;
    }
    let (p, n) = (pos as f64, neg as f64);
    Some((rank_sum_pos - p * (p + 1.0) / 2.0) / (p * n))
}

fn pct_ci(v: Option<(f64, (f64, f64))>) -> String {
    match v {
        Some((p, (lo, hi))) => format!("{:5.1}% [{:5.1}, {:5.1}]", 100.0 * p, 100.0 * lo, 100.0 * hi),
        None => format!("{:>21}", "n/a"),
    }
}

fn excerpt(text: &str) -> String {
    let flat: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let mut out: String = flat.chars().take(EXCERPT_CHARS).collect();
    if flat.chars().count() > EXCERPT_CHARS {
        out.push('…');
    }
    out
}

/// One detector at one operating point.
struct Outcome {
    name: String,
    cut: String,
    confusion: Confusion,
}

fn print_metrics(outcomes: &[Outcome]) {
    println!(
        "{:<34} {:>7} {:>5} {:>5} {:>5} {:>5}  {:<23} {:<23} {:>6} {:>6}  {:<23}",
        "detector",
        "cut",
        "TP",
        "FP",
        "TN",
        "FN",
        "precision [95% CI]",
        "recall [95% CI]",
        "F1",
        "acc",
        "false-positive rate"
    );
    for o in outcomes {
        let c = &o.confusion;
        let f1 = c.f1().map_or_else(|| "n/a".to_string(), |f| format!("{:.3}", f));
        println!(
            "{:<34} {:>7} {:>5} {:>5} {:>5} {:>5}  {:<23} {:<23} {:>6} {:>5.1}%  {:<23}",
            o.name,
            o.cut,
            c.tp,
            c.fp,
            c.tn,
            c.fn_,
            pct_ci(c.precision()),
            pct_ci(c.recall()),
            f1,
            100.0 * c.accuracy(),
            pct_ci(c.false_positive_rate()),
        );
    }
    println!();
    for o in outcomes {
        let c = &o.confusion;
        println!("confusion matrix: {} {}", o.name, o.cut);
        println!("{:>22} {:>16} {:>16}", "", "pred. injection", "pred. benign");
        println!("{:>22} {:>16} {:>16}", "actual injection", c.tp, c.fn_);
        println!("{:>22} {:>16} {:>16}", "actual benign", c.fp, c.tn);
    }
}

/// Prints up to `limit` missed injections and false alarms, in file order.
fn print_examples(title: &str, rows: &[Row], hit: &[bool], note: &dyn Fn(usize) -> String, limit: usize) {
    let missed: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].injection && !hit[i]).collect();
    let false_alarms: Vec<usize> = (0..rows.len()).filter(|&i| !rows[i].injection && hit[i]).collect();
    for (kind, list) in [("missed injections", &missed), ("false alarms", &false_alarms)] {
        println!("{title}: {kind} ({} in all, first {} in file order)", list.len(), limit.min(list.len()));
        for &i in list.iter().take(limit) {
            println!("  row {:>5} {}  {}", rows[i].row, note(i), excerpt(&rows[i].text));
        }
    }
}

fn write_scores(path: &std::path::Path, rows: &[Row], scores: &[f32], scans: &[(f64, Vec<String>)]) -> Result<()> {
    let mut out = csv::Writer::from_path(path).with_context(|| format!("cannot create {}", path.display()))?;
    out.write_record(["row", "label", "classifier", "heuristic", "heuristic_kinds", "text"])?;
    for ((row, score), (h, kinds)) in rows.iter().zip(scores).zip(scans) {
        out.write_record([
            row.row.to_string(),
            u8::from(row.injection).to_string(),
            format!("{score:.6}"),
            format!("{h:.4}"),
            kinds.join(","),
            row.text.clone(),
        ])?;
    }
    out.flush().with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn per_second(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

fn main() -> Result<()> {
    let args = Args::parse()?;
    let data = read_dataset(&args)?;
    let rows = &data.rows;
    let labels: Vec<bool> = rows.iter().map(|r| r.injection).collect();
    let positives = labels.iter().filter(|&&l| l).count();
    println!("dataset      {}", args.csv.display());
    println!("text         column {:?}", data.text_col);
    println!("labels       {}", data.label_source);
    println!("n            {} ({} injections, {} benign)", rows.len(), positives, rows.len() - positives);
    println!();

    // The classifier path: MiniLM embeddings, then the MLP.
    let models_dir = match &args.models_dir {
        Some(d) => d.clone(),
        None => default_models_dir().context("cannot tell where Keel's models are: pass --models-dir")?,
    };
    let model_dir = models_dir.join(MINILM_L6_V2.name);
    let started = Instant::now();
    let embedder = MiniLmEmbedder::load(&model_dir)?;
    let classifier = InjectionClassifier::load_builtin()?;
    let load_time = started.elapsed();
    let started = Instant::now();
    let mut scores: Vec<f32> = Vec::with_capacity(rows.len());
    for batch in rows.chunks(BATCH) {
        let texts: Vec<&str> = batch.iter().map(|r| r.text.as_str()).collect();
        scores.extend(classifier.score_texts(&embedder as &dyn Embedder, &texts)?);
    }
    let classify_time = started.elapsed();
    let model_hit: Vec<bool> = scores.iter().map(|&s| s >= args.threshold).collect();

    // The heuristic, as the default policy's rules read its score.
    let detector = InjectionDetector::new();
    let started = Instant::now();
    let scans: Vec<(f64, Vec<String>)> = rows
        .iter()
        .map(|r| {
            let (score, findings) = detector.scan(&r.text);
            let mut kinds: Vec<String> = findings.into_iter().map(|f| f.kind).collect();
            kinds.dedup();
            (score, kinds)
        })
        .collect();
    let heuristic_time = started.elapsed();
    let block_hit: Vec<bool> = scans.iter().map(|(s, _)| *s >= HEURISTIC_BLOCK).collect();
    let flag_hit: Vec<bool> = scans.iter().map(|(s, _)| *s >= HEURISTIC_FLAG).collect();

    let outcomes = [
        Outcome {
            name: "classifier (jailguard MLP/MiniLM)".into(),
            cut: format!(">={:.2}", args.threshold),
            confusion: Confusion::of(&labels, model_hit.iter().copied()),
        },
        Outcome {
            name: "heuristic `injection`, block".into(),
            cut: format!(">={HEURISTIC_BLOCK:.2}"),
            confusion: Confusion::of(&labels, block_hit.iter().copied()),
        },
        Outcome {
            name: "heuristic `injection`, flag".into(),
            cut: format!(">={HEURISTIC_FLAG:.2}"),
            confusion: Confusion::of(&labels, flag_hit.iter().copied()),
        },
    ];
    print_metrics(&outcomes);
    if let Some(path) = &args.scores_out {
        write_scores(path, rows, &scores, &scans)?;
    }
    println!();

    let model_scores: Vec<f64> = scores.iter().map(|&s| f64::from(s)).collect();
    let heuristic_scores: Vec<f64> = scans.iter().map(|(s, _)| *s).collect();
    let auc = |s: &[f64]| roc_auc(&labels, s).map_or_else(|| "n/a (one class only)".to_string(), |a| format!("{a:.3}"));
    println!("ROC AUC (threshold-free)  classifier {}  heuristic {}", auc(&model_scores), auc(&heuristic_scores));
    println!();

    let n = rows.len();
    println!(
        "timing  classifier: load {:.2} s; embed+score {:.2} s = {:.1} texts/s ({:.2} ms/text, batches of {BATCH})",
        load_time.as_secs_f64(),
        classify_time.as_secs_f64(),
        per_second(n, classify_time),
        1e3 * classify_time.as_secs_f64() / n as f64,
    );
    println!(
        "        heuristic:  {:.3} s = {:.0} texts/s ({:.1} µs/text)",
        heuristic_time.as_secs_f64(),
        per_second(n, heuristic_time),
        1e6 * heuristic_time.as_secs_f64() / n as f64,
    );
    println!();

    let model_note = |i: usize| format!("p={:.3}", scores[i]);
    print_examples(&format!("classifier >={:.2}", args.threshold), rows, &model_hit, &model_note, args.examples);
    println!();
    let heuristic_note = |i: usize| {
        let (score, kinds) = &scans[i];
        if kinds.is_empty() {
            format!("s={score:.2}")
        } else {
            format!("s={score:.2} [{}]", kinds.join(","))
        }
    };
    print_examples(&format!("heuristic flag >={HEURISTIC_FLAG:.2}"), rows, &flag_hit, &heuristic_note, args.examples);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_interval_matches_the_textbook_values() {
        // 81/263 → 0.308, Wilson 95% [0.255, 0.366] (Newcombe 1998, example).
        let (p, (lo, hi)) = proportion(81, 263).unwrap();
        assert!((p - 0.30798).abs() < 1e-4);
        assert!((lo - 0.2553).abs() < 1e-3, "{lo}");
        assert!((hi - 0.3662).abs() < 1e-3, "{hi}");
        let (_, (lo, hi)) = proportion(0, 10).unwrap();
        assert_eq!(lo, 0.0);
        assert!((hi - 0.2775).abs() < 1e-3, "{hi}");
        assert!(proportion(0, 0).is_none());
    }

    #[test]
    fn auc_counts_ties_as_half() {
        let labels = [true, true, false, false];
        assert_eq!(roc_auc(&labels, &[0.9, 0.8, 0.2, 0.1]), Some(1.0));
        assert_eq!(roc_auc(&labels, &[0.1, 0.2, 0.8, 0.9]), Some(0.0));
        assert_eq!(roc_auc(&labels, &[0.5, 0.5, 0.5, 0.5]), Some(0.5));
        assert_eq!(roc_auc(&[true, true], &[0.1, 0.9]), None);
    }

    #[test]
    fn confusion_and_its_metrics() {
        let c = Confusion::of(&[true, true, false, false, true], [true, false, true, false, true]);
        assert_eq!((c.tp, c.fp, c.tn, c.fn_), (2, 1, 1, 1));
        assert!((c.f1().unwrap() - 4.0 / 6.0).abs() < 1e-12);
        assert!((c.accuracy() - 0.6).abs() < 1e-12);
    }

    #[test]
    fn precision_is_not_claimed_without_benign_rows() {
        let c = Confusion::of(&[true, true, true], [true, false, true]);
        assert!(c.precision().is_none());
        assert!(c.f1().is_none());
        assert!((c.recall().unwrap().0 - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn labels_in_common_spellings() {
        assert_eq!(parse_label(" 1 "), Some(true));
        assert_eq!(parse_label("Benign"), Some(false));
        assert_eq!(parse_label("maybe"), None);
    }
}
