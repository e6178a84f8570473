//! Keel's load generator and the fixed-delay upstream it is measured against (`bench/load.sh`).
//!
//! `run` is open loop: request *i* is due at `start + i / rate` whether or not earlier ones
//! have finished, and its latency counts from that due time, not from when it was actually
//! sent. A server (or this client) that falls behind therefore shows up as latency instead of
//! quietly lowering the rate, which a closed loop of "send, wait, send" would do (coordinated
//! omission). Pacing runs on its own OS thread with `std::thread::sleep`, which is precise to
//! tens of microseconds, where the tokio timer has a 1 ms tick.
//!
//! Traffic goes to loopback addresses only: both subcommands refuse anything else.

// A benchmark tool reports its figures on stdout, where bench/load.sh reads them.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use futures::StreamExt;
use keel_scripted_upstream::{Options, Script};
use serde_json::json;

#[derive(Parser)]
#[command(name = "loadgen", about = "Open-loop load generator and fixed-delay upstream for Keel's latency benchmark")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the scripted upstream (echo script) until killed; prints its base URL first.
    Upstream {
        /// Loopback address to listen on (port 0: any free port).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Fixed wait before every answer, in milliseconds.
        #[arg(long, default_value_t = 20)]
        delay_ms: u64,
        /// Tokio worker threads (default: one per core).
        #[arg(long)]
        threads: Option<usize>,
        /// Exit by itself after this many seconds, so a forgotten server does not linger.
        #[arg(long, default_value_t = 900)]
        exit_after: u64,
    },
    /// Send chat requests at a constant rate and report latency percentiles.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Chat completions URL on loopback, e.g. http://127.0.0.1:8080/v1/chat/completions.
    #[arg(long)]
    url: String,
    /// Requests started per second.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Seconds measured (after the warm-up).
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Seconds sent at the same rate before measuring and not counted (fills connection pools).
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// Ask for streamed answers (SSE); latency is then to the last byte.
    #[arg(long)]
    stream: bool,
    /// Bytes of user content per request (approximate; EN and JA text).
    #[arg(long, default_value_t = 1000)]
    body_bytes: usize,
    /// Model id to request.
    #[arg(long, default_value = "scripted-1")]
    model: String,
    /// Per-request time limit, in milliseconds; a request over it counts as an error.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Idle keep-alive connections kept (default: rate / 10, at least 64).
    #[arg(long)]
    connections: Option<usize>,
    /// Most requests in flight; a due request beyond it is not sent and counts as an error.
    #[arg(long, default_value_t = 20_000)]
    max_in_flight: usize,
    /// Tokio worker threads (default: one per core; the pacer has its own thread).
    #[arg(long)]
    threads: Option<usize>,
    /// A name for this run, copied into the JSON line.
    #[arg(long, default_value = "")]
    label: String,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Upstream { listen, delay_ms, threads, exit_after } => upstream(listen, delay_ms, threads, exit_after),
        Command::Run(args) => run(args),
    }
}

fn runtime(threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        builder.worker_threads(n.max(1));
    }
    builder.enable_all().build().context("cannot start the async runtime")
}

fn upstream(listen: SocketAddr, delay_ms: u64, threads: Option<usize>, exit_after: u64) -> anyhow::Result<()> {
    if !listen.ip().is_loopback() {
        bail!("--listen {listen}: the benchmark upstream only listens on loopback");
    }
    runtime(threads)?.block_on(async {
        let options = Options {
            record: false,
            delay: Duration::from_millis(delay_ms),
            models: vec!["scripted-1".into()],
            ..Options::default()
        };
        let server = keel_scripted_upstream::spawn(listen, Script::echo(), options)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        println!("{}", server.base_url());
        tokio::select! {
            _ = terminated() => {}
            _ = tokio::time::sleep(Duration::from_secs(exit_after)) => eprintln!("upstream: exiting after {exit_after} s"),
        }
        // bench/load.sh compares this with the interactions Keel stored.
        eprintln!("upstream: served {} chat requests", server.served());
        server.stop();
        Ok(())
    })
}

/// Waits for Ctrl-C or SIGTERM.
async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Validated `run` arguments.
struct Plan {
    url: reqwest::Url,
    rate: u32,
    warmup_requests: u64,
    total_requests: u64,
    duration: Duration,
    warmup: Duration,
    timeout: Duration,
}

impl Plan {
    fn new(args: &RunArgs) -> anyhow::Result<Self> {
        let url = reqwest::Url::parse(&args.url).with_context(|| format!("--url `{}` is not a URL", args.url))?;
        let loopback = match url.host_str() {
            Some("localhost") => true,
            Some(host) => {
                host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
            }
            None => false,
        };
        if !loopback || url.scheme() != "http" {
            bail!("--url {url}: only http:// on loopback (127.0.0.0/8, ::1, localhost) is allowed");
        }
        if !(1..=20_000).contains(&args.rate) {
            bail!("--rate {}: must be 1 to 20000 requests per second", args.rate);
        }
        if !(1..=600).contains(&args.duration) || args.warmup > 60 {
            bail!("--duration must be 1 to 600 s and --warmup at most 60 s");
        }
        if !(16..=1_000_000).contains(&args.body_bytes) {
            bail!("--body-bytes {}: must be 16 to 1000000", args.body_bytes);
        }
        let rate = u64::from(args.rate);
        Ok(Plan {
            url,
            rate: args.rate,
            warmup_requests: rate * args.warmup,
            total_requests: rate * (args.warmup + args.duration),
            duration: Duration::from_secs(args.duration),
            warmup: Duration::from_secs(args.warmup),
            timeout: Duration::from_millis(args.timeout_ms.max(1)),
        })
    }

    /// When request `i` is due, counted from the start.
    fn due(&self, i: u64) -> Duration {
        let nanos = u128::from(i) * 1_000_000_000 / u128::from(self.rate);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Failure {
    Status(u16),
    Transport,
    Timeout,
    Overload,
}

impl Failure {
    fn name(self) -> String {
        match self {
            Failure::Status(code) => format!("http_{code}"),
            Failure::Transport => "transport".into(),
            Failure::Timeout => "timeout".into(),
            Failure::Overload => "client_overload".into(),
        }
    }
}

/// One request's measurements, as offsets from the run's start.
struct Sample {
    index: u64,
    /// Due time to the end of the response body.
    latency: Duration,
    /// How late the pacer actually handed it to the runtime.
    dispatch_lag: Duration,
    done_at: Duration,
    result: Result<(), Failure>,
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let plan = Plan::new(&args)?;
    let bodies = Arc::new(bodies(&args.model, args.stream, args.body_bytes));
    let pool = args.connections.unwrap_or((args.rate as usize / 10).max(64));
    let client = reqwest::Client::builder()
        .http1_only()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(pool)
        .pool_idle_timeout(Duration::from_secs(30))
        .timeout(plan.timeout)
        .build()
        .context("cannot build the HTTP client")?;
    let runtime = runtime(args.threads)?;
    let in_flight = Arc::new(AtomicUsize::new(0));

    let wall_start = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    // A little slack so the first requests are not already late.
    let start = Instant::now() + Duration::from_millis(20);
    let mut tasks = Vec::with_capacity(usize::try_from(plan.total_requests).unwrap_or(0));
    for i in 0..plan.total_requests {
        let due = start + plan.due(i);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let dispatched = Instant::now();
        let body = bodies[(i as usize) % bodies.len()].clone();
        let (client, url, in_flight) = (client.clone(), plan.url.clone(), in_flight.clone());
        let max_in_flight = args.max_in_flight;
        tasks.push(runtime.spawn(async move {
            let result = if in_flight.fetch_add(1, Ordering::Relaxed) >= max_in_flight {
                Err(Failure::Overload)
            } else {
                send(&client, url, body).await
            };
            in_flight.fetch_sub(1, Ordering::Relaxed);
            let end = Instant::now();
            Sample {
                index: i,
                latency: end.saturating_duration_since(due),
                dispatch_lag: dispatched.saturating_duration_since(due),
                done_at: end.saturating_duration_since(start),
                result,
            }
        }));
    }
    let samples: Vec<Sample> = runtime.block_on(async {
        let mut samples = Vec::with_capacity(tasks.len());
        for task in tasks {
            // Every task ends within the client timeout; a panicked one is simply missing.
            if let Ok(sample) = task.await {
                samples.push(sample);
            }
        }
        samples
    });
    let report = Report::new(&plan, &args, &samples, wall_start);
    report.print();
    Ok(())
}

async fn send(client: &reqwest::Client, url: reqwest::Url, body: Bytes) -> Result<(), Failure> {
    let response = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(classify)?;
    let status = response.status().as_u16();
    // Read the whole body (every SSE event for streams): latency is to the last byte.
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        chunk.map_err(classify)?;
    }
    if status == 200 {
        Ok(())
    } else {
        Err(Failure::Status(status))
    }
}

fn classify(e: reqwest::Error) -> Failure {
    if e.is_timeout() {
        Failure::Timeout
    } else {
        Failure::Transport
    }
}

/// Support-desk sentences for a fictional appliance shop. They avoid digits, handoff words and
/// injection phrasings so the default pack allows them; the emails added to some bodies make
/// the PII check hit and the redaction path run.
const EN: &[&str] = &[
    "My blender makes a grinding noise when I use the highest speed setting.",
    "I bought the kettle last month and the lid no longer closes properly.",
    "Could you explain how to descale the coffee machine without damaging the heating element?",
    "The toaster browns one side of the bread much more than the other side.",
    "I would like to know whether the replacement filter fits the older model of the air purifier.",
    "The rice cooker finished early and the rice in the middle was still hard.",
    "Is it normal for the dishwasher to leave a white film on glasses after the eco cycle?",
    "The vacuum cleaner loses suction after a few minutes and the bin is not full.",
    "Please tell me which cleaning products are safe for the stainless steel finish.",
    "The display on the microwave flickers when the door is opened.",
];

const JA: &[&str] = &[
    "ブレンダーを最高速度で使うと、ガリガリという異音がします。",
    "先月購入した電気ケトルのふたが、きちんと閉まらなくなりました。",
    "ヒーターを傷めずにコーヒーメーカーの湯あかを取る方法を教えてください。",
    "トースターでパンを焼くと、片面だけが強く焦げてしまいます。",
    "交換用フィルターが旧型の空気清浄機にも合うかどうか知りたいです。",
    "炊飯器が早めに炊き上がり、真ん中のご飯がまだ硬いままでした。",
    "食器洗い機のエコモードの後、グラスに白いくもりが残るのは普通ですか。",
    "掃除機の吸引力が数分で弱くなりますが、ダストボックスは満杯ではありません。",
    "ステンレス部分に使っても安全な洗剤を教えていただけますか。",
    "電子レンジの扉を開けると、表示パネルがちらつきます。",
];

const EMAILS: &[&str] = &[
    "You can reach me at taro.yamada@example.com if you need more details.",
    "連絡先は hanako.sato@example.jp です。",
];

/// How many different bodies are sent in turn.
const BODY_VARIANTS: usize = 64;

/// Ready-to-send request bodies: a third EN, a third JA, a third both; one in eight with an email.
fn bodies(model: &str, stream: bool, body_bytes: usize) -> Vec<Bytes> {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        // xorshift64: a fixed, dependency-free sequence so every run sends the same bodies.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    (0..BODY_VARIANTS)
        .map(|v| {
            let mut content = String::with_capacity(body_bytes + 128);
            if v % 8 == 3 {
                content.push_str(EMAILS[(v / 8) % EMAILS.len()]);
                content.push(' ');
            }
            while content.len() < body_bytes {
                let japanese = match v % 3 {
                    0 => false,
                    1 => true,
                    _ => next() % 2 == 0,
                };
                let pool = if japanese { JA } else { EN };
                let sentence = pool[(next() % pool.len() as u64) as usize];
                if content.len() + sentence.len() > body_bytes && !content.is_empty() {
                    break;
                }
                if !content.is_empty() && !japanese {
                    content.push(' ');
                }
                content.push_str(sentence);
            }
            let mut body = json!({
                "model": model,
                "messages": [
                    {"role": "system", "content": "You are the support assistant of a home appliance shop. Answer briefly and politely."},
                    {"role": "user", "content": content}
                ],
                "temperature": 0.2,
                "stream": stream,
            });
            if stream {
                body["stream_options"] = json!({"include_usage": true});
            }
            Bytes::from(body.to_string())
        })
        .collect()
}

/// The figures of a run, over the requests due after the warm-up.
struct Report {
    label: String,
    url: String,
    stream: bool,
    rate: u32,
    duration_s: u64,
    count: usize,
    errors: usize,
    error_kinds: BTreeMap<String, usize>,
    achieved_rps: f64,
    latency_ms: Percentiles,
    dispatch_lag_ms: Percentiles,
    /// Unix time of the first and last measured due instants, for matching stored interactions.
    measure_start_unix_ns: u128,
    measure_end_unix_ns: u128,
}

struct Percentiles {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
    mean: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `values` (sorted here), in milliseconds.
    fn of(mut values: Vec<Duration>) -> Self {
        values.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let at = |q: f64| {
            if values.is_empty() {
                return 0.0;
            }
            let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
            ms(values[rank - 1])
        };
        let mean =
            if values.is_empty() { 0.0 } else { values.iter().map(|d| ms(*d)).sum::<f64>() / values.len() as f64 };
        Percentiles { p50: at(0.50), p90: at(0.90), p99: at(0.99), p999: at(0.999), max: at(1.0), mean }
    }

    fn json(&self) -> serde_json::Value {
        let r = |x: f64| (x * 1000.0).round() / 1000.0;
        json!({"p50": r(self.p50), "p90": r(self.p90), "p99": r(self.p99), "p99_9": r(self.p999), "max": r(self.max), "mean": r(self.mean)})
    }
}

impl Report {
    fn new(plan: &Plan, args: &RunArgs, samples: &[Sample], wall_start: Duration) -> Self {
        let measured: Vec<&Sample> = samples.iter().filter(|s| s.index >= plan.warmup_requests).collect();
        let mut error_kinds = BTreeMap::new();
        let mut latencies = Vec::with_capacity(measured.len());
        for sample in &measured {
            match sample.result {
                Ok(()) => latencies.push(sample.latency),
                Err(failure) => *error_kinds.entry(failure.name()).or_insert(0) += 1,
            }
        }
        // Throughput: successful completions inside the measured window, whatever their due time.
        let window = plan.warmup..plan.warmup + plan.duration;
        let completed = samples.iter().filter(|s| s.result.is_ok() && window.contains(&s.done_at)).count();
        let lags = measured.iter().map(|s| s.dispatch_lag).collect();
        let unix = |offset: Duration| (wall_start + Duration::from_millis(20) + offset).as_nanos();
        Report {
            label: args.label.clone(),
            url: plan.url.to_string(),
            stream: args.stream,
            rate: plan.rate,
            duration_s: plan.duration.as_secs(),
            count: measured.len(),
            errors: error_kinds.values().sum(),
            error_kinds,
            achieved_rps: completed as f64 / plan.duration.as_secs_f64(),
            latency_ms: Percentiles::of(latencies),
            dispatch_lag_ms: Percentiles::of(lags),
            measure_start_unix_ns: unix(plan.due(plan.warmup_requests)),
            measure_end_unix_ns: unix(plan.due(plan.total_requests)),
        }
    }

    fn print(&self) {
        let l = &self.latency_ms;
        let stream = if self.stream { "stream" } else { "json" };
        println!("{} {} rate={}/s duration={}s", self.label, self.url, self.rate, self.duration_s);
        println!(
            "{:>8} {:>7} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "count", "errors", "achieved", "p50", "p90", "p99", "p99.9", "max", "mode"
        );
        println!(
            "{:>8} {:>7} {:>9.1} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8}",
            self.count, self.errors, self.achieved_rps, l.p50, l.p90, l.p99, l.p999, l.max, stream
        );
        println!(
            "latency in ms from each request's due time; pacer dispatch lag p99 {:.3} ms, max {:.3} ms",
            self.dispatch_lag_ms.p99, self.dispatch_lag_ms.max
        );
        let line = json!({
            "label": self.label,
            "url": self.url,
            "stream": self.stream,
            "rate": self.rate,
            "duration_s": self.duration_s,
            "count": self.count,
            "errors": self.errors,
            "error_kinds": self.error_kinds,
            "achieved_rps": (self.achieved_rps * 10.0).round() / 10.0,
            "latency_ms": self.latency_ms.json(),
            "dispatch_lag_ms": self.dispatch_lag_ms.json(),
            "measure_start_unix_ns": self.measure_start_unix_ns.to_string(),
            "measure_end_unix_ns": self.measure_end_unix_ns.to_string(),
        });
        println!("{line}");
    }
}
