//! Checks the embedding detectors' calibrated thresholds (set on synthetic 32-d vectors) on
//! real 384-d all-MiniLM-L6-v2 embeddings of English and Japanese customer-support messages:
//! a topic-mix shift (a product recall starts to make up a quarter of the traffic) against
//! no-change controls, for `centroid` and `mmd` with their default settings.
//!
//! ```sh
//! keel models pull all-minilm-l6-v2   # once
//! cargo run -p keel-drift --example embedding_drift_check [TRIALS] [CONTROL_EVENTS]          # the defaults Keel uses
//! cargo run -p keel-drift --example embedding_drift_check [TRIALS] [CONTROL_EVENTS] ladder   # calibration ladder
//! ```
//!
//! The ladder runs on calibration seeds, the default check on other (report) seeds.
//!
//! The messages are sampled with replacement from fixed pools (12 per topic, half EN, half
//! JA), so a stream has the spread of real support traffic's topics but fewer distinct texts.
#![allow(clippy::print_stdout)]

use std::process::ExitCode;

use keel_drift::config::embedding_detector;
use keel_models::{Embedder, MiniLmEmbedder};
use keel_monitor::drift::{CentroidConfig, MmdConfig};
use keel_monitor::{DetectorConfig, DriftDetector, Method, Observation, SeededRng};

const SHIPPING: &[&str] = &[
    "Where is my order? It was supposed to arrive yesterday.",
    "Can I change the delivery address for order 5521?",
    "How long does shipping to Hokkaido take?",
    "The tracking number you sent does not work.",
    "Do you ship to Okinawa, and is there an extra fee?",
    "My parcel says delivered but I have not received it.",
    "注文した商品はいつ届きますか？",
    "配送先の住所を変更できますか？",
    "追跡番号を入力しても情報が出てきません。",
    "北海道までの配送日数を教えてください。",
    "配達済みになっていますが、荷物が届いていません。",
    "送料はいくらかかりますか？",
];

const WARRANTY: &[&str] = &[
    "How long is the warranty on the XR-200 blender?",
    "Does the warranty cover a cracked jug?",
    "I lost my receipt, can I still use the warranty?",
    "Is the extended warranty worth buying?",
    "The motor stopped working after eight months, is that covered?",
    "How do I register my product for the warranty?",
    "XR-200の保証期間はどのくらいですか？",
    "レシートをなくしましたが保証は受けられますか？",
    "保証で修理してもらえますか？",
    "延長保証に加入する方法を教えてください。",
    "購入から半年でモーターが止まりました。保証の対象ですか？",
    "製品登録はどこでできますか？",
];

const RETURNS: &[&str] = &[
    "I want to return the kettle, it is the wrong colour.",
    "How do I get a refund for a damaged item?",
    "Can I exchange my toaster for a bigger model?",
    "When will my refund show up on my card?",
    "Do I have to pay for return shipping?",
    "The box was opened, can I still return it?",
    "商品を返品したいのですが、どうすればいいですか？",
    "返金はいつ頃になりますか？",
    "色違いの商品と交換できますか？",
    "返送料は自己負担ですか？",
    "届いた商品が壊れていたので返金してください。",
    "開封済みでも返品できますか？",
];

const ACCOUNT: &[&str] = &[
    "I forgot my password and cannot log in.",
    "How do I change the email address on my account?",
    "Please delete my account and my data.",
    "I did not get the verification email.",
    "Can I merge two accounts?",
    "My account was locked after too many attempts.",
    "パスワードを忘れてログインできません。",
    "登録メールアドレスを変更したいです。",
    "アカウントを削除してください。",
    "確認メールが届きません。",
    "ログインできなくなりました。",
    "会員情報の変更方法を教えてください。",
];

const USAGE: &[&str] = &[
    "How do I clean the blender blades safely?",
    "What is the best setting for crushing ice?",
    "Can I put the jug in the dishwasher?",
    "The display shows E3, what does it mean?",
    "How much power does the rice cooker use?",
    "Where can I download the user manual?",
    "ミキサーの刃はどうやって洗えばいいですか？",
    "氷を砕くときはどの設定がいいですか？",
    "容器は食洗機で洗えますか？",
    "表示にE3と出ています。どういう意味ですか？",
    "炊飯器の消費電力を教えてください。",
    "取扱説明書はどこでダウンロードできますか？",
];

/// The topic that appears after the change: a product recall.
const RECALL: &[&str] = &[
    "Is my XR-200 part of the recall?",
    "I heard the XR-200 can overheat, is it safe to keep using it?",
    "How do I get the replacement part for the recalled blender?",
    "My blender smelled of burning plastic, is this the recall issue?",
    "Where do I check the serial number for the recall?",
    "Will I get a refund for the recalled model?",
    "XR-200はリコールの対象ですか？",
    "リコール対象のミキサーはまだ使っても安全ですか？",
    "リコールの交換部品はどうやって受け取れますか？",
    "ミキサーから焦げたにおいがしました。リコールと関係ありますか？",
    "製造番号はどこで確認できますか？リコールについて知りたいです。",
    "リコール対象の製品は返金してもらえますか？",
];

const BEFORE: [f64; 6] = [0.30, 0.20, 0.20, 0.15, 0.15, 0.0];
const AFTER: [f64; 6] = [0.225, 0.15, 0.15, 0.1125, 0.1125, 0.25];
const CHANGE_AT: u64 = 3_000;
const AFTER_CHANGE: u64 = 3_000;

struct Pools {
    /// Per topic, the embeddings of its messages.
    vectors: Vec<Vec<Vec<f32>>>,
}

impl Pools {
    fn draw(&self, rng: &mut SeededRng, mix: &[f64; 6]) -> Vec<f32> {
        let topic = rng.weighted(mix);
        let pool = &self.vectors[topic];
        pool[rng.below(pool.len())].clone()
    }
}

/// Runs one stream; returns (false alarms before the change or in a control, delay).
fn run(
    config: &DetectorConfig,
    pools: &Pools,
    seed: u64,
    change: bool,
    len: u64,
) -> keel_monitor::Result<(u64, Option<u64>)> {
    let mut detector = config.build()?;
    let mut rng = SeededRng::new(seed);
    let mut false_alarms = 0;
    for t in 0..len {
        let after = change && t >= CHANGE_AT;
        let v = pools.draw(&mut rng, if after { &AFTER } else { &BEFORE });
        if let Ok(Some(_)) = detector.update(&Observation::Vector(v)) {
            if after {
                return Ok((false_alarms, Some(t - CHANGE_AT + 1)));
            }
            false_alarms += 1;
        }
    }
    Ok((false_alarms, None))
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn main() -> ExitCode {
    match check() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn check() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let trials: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(50);
    let control_events: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(300_000);
    let ladder = args.next().is_some_and(|a| a == "ladder");
    let home = keel_models::default_home().unwrap_or_else(|| std::path::PathBuf::from(".keel"));
    let dir = keel_models::models_dir(&home).join("all-minilm-l6-v2");
    let embedder = MiniLmEmbedder::load(&dir)?;
    let topics = [SHIPPING, WARRANTY, RETURNS, ACCOUNT, USAGE, RECALL];
    let mut vectors = Vec::new();
    for texts in topics {
        vectors.push(embedder.embed(texts)?);
    }
    let pools = Pools { vectors };
    println!(
        "MiniLM ({} dims), {} texts in 6 topics (EN+JA); change at event {CHANGE_AT}: a recall topic grows from 0 to 25%.\n{trials} change trials, {control_events} no-change control events per method.\n",
        embedder.dimension(),
        topics.iter().map(|t| t.len()).sum::<usize>()
    );
    println!("| method | threshold | detected | median delay | p90 delay | false alarms / 10k before change | false alarms / 10k, no-change |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let configs: Vec<DetectorConfig> = if ladder {
        let centroid = [0.015, 0.02, 0.025, 0.03, 0.035].map(|t| {
            DetectorConfig::Centroid(CentroidConfig {
                threshold: t,
                window_size: 500,
                min_samples: 500,
                reference_size: 2_000,
            })
        });
        let mmd = [0.004, 0.006, 0.008, 0.01, 0.015].map(|t| {
            DetectorConfig::Mmd(MmdConfig {
                threshold: t,
                window_size: 300,
                min_samples: 300,
                subsample: 300,
                reference_size: 2_000,
                ..MmdConfig::default()
            })
        });
        centroid.into_iter().chain(mmd).collect()
    } else {
        vec![embedding_detector(Method::Centroid), embedding_detector(Method::Mmd)]
    };
    let seed_base = if ladder { 0xca11_0000 } else { 0 };
    for config in &configs {
        let method = config.method();
        let threshold = config.build().map(|d| d.threshold()).unwrap_or(f64::NAN);
        let mut delays = Vec::new();
        let mut before = 0;
        for t in 0..trials {
            let (fa, delay) = run(config, &pools, seed_base + 1_000 + t, true, CHANGE_AT + AFTER_CHANGE)?;
            before += fa;
            delays.push(delay.map_or(f64::INFINITY, |d| d as f64));
        }
        let streams = 10;
        let mut control = 0;
        for s in 0..streams {
            control += run(config, &pools, seed_base + 900_000 + s, false, control_events / streams)?.0;
        }
        delays.sort_by(f64::total_cmp);
        let show = |d: f64| if d.is_finite() { format!("{d:.0}") } else { "miss".to_owned() };
        let window = match config {
            DetectorConfig::Centroid(c) => c.window_size,
            DetectorConfig::Mmd(c) => c.window_size,
            _ => 0,
        };
        println!(
            "| {method} (window {window}) | {threshold} | {}/{trials} | {} | {} | {:.3} ({before} in {}) | {:.3} ({control} in {control_events}) |",
            delays.iter().filter(|d| d.is_finite()).count(),
            show(percentile(&delays, 0.5)),
            show(percentile(&delays, 0.9)),
            before as f64 * 10_000.0 / (trials * CHANGE_AT) as f64,
            trials * CHANGE_AT,
            control as f64 * 10_000.0 / control_events as f64,
        );
    }
    Ok(())
}
