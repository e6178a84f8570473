//! `[monitor]` in keel.toml: drift detectors and alert webhooks as written, and their
//! validation into `keel_drift::MonitorConfig` with file:line errors.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::bail;
use keel_drift::config::{DetectorSpec, Hysteresis, MonitorConfig, WebhookConfig, WebhookFormat};
use keel_drift::Stream;
use keel_monitor::{DetectorConfig, Method, MonitorError};
use keel_policy::source::{FieldPath, TomlSource};
use serde::{Deserialize, Serialize};

/// The documented `[monitor]` part of `keel config example`.
pub const EXAMPLE: &str = r#"
# Drift monitoring. Without this section (or with no [[monitor.detectors]]) a default set runs:
# the action mix (chi_square), the hit rate of every check of the policy (cusum), and, when the
# MiniLM model is installed, the input-embedding centroid (1 request in 10). Detectors read new
# interactions in insertion order in the background; their state persists in the store.
[monitor]
# false turns drift monitoring off.
enabled = true
# Wait between reads when nothing new arrived, in milliseconds.
poll_interval_ms = 2000
# Rows read per step.
batch_size = 1000
# Longest time between two checkpoints of the detector state while no alert opens, in seconds
# (an alert is always stored together with the state that opened it).
checkpoint_interval_s = 30
# With several gateway replicas on one store, one runs the monitor; it holds a lease this long
# and renews it every third of it. Another replica takes over when it expires.
lease_ttl_s = 30
# Interaction ids recorded per alert, spread over its window (for review).
alert_sample_size = 20

[[monitor.detectors]]
# Unique name: the alert's detector, the metrics label, the key of the stored state.
name = "action-mix"
# What to watch: action, lang, refusal, handoff, upstream_ms, tokens.prompt, tokens.completion,
# tokens.total, check.NAME.score, check.NAME.hit, satisfaction, wrong_answer (from stored feedback),
# embedding.input, embedding.output (need the MiniLM model).
stream = "action"
# Only this app's traffic; omit for all apps.
# app = "support"
# page_hinkley, cusum, adwin (value streams); psi, chi_square (action, lang); ks, wasserstein
# (value streams); centroid, mmd (embedding streams).
method = "chi_square"
# The statistic at which it fires; omit for the calibrated default (crates/keel-monitor/CALIBRATION.md):
# page_hinkley 55, cusum 60, psi 0.035, chi_square 3.5 (p < 10^-3.5), ks 4, wasserstein 0.22;
# on the MiniLM embedding streams centroid 0.02 (window 500) and mmd 0.006 (window 300).
# adwin has no threshold; set its `delta` (default 0.003).
threshold = 3.5
# Window methods: observations in the reference (learnt first) and in the sliding window.
reference_size = 2000
window_size = 1000
# Window methods: window fill before testing; page_hinkley/cusum: warm-up length; adwin: the
# smallest sub-window.
min_samples = 1000
# Other settings, each only for its methods: delta (page_hinkley, adwin), k (cusum),
# direction = "both" | "up" | "down" (page_hinkley), max_categories (psi, chi_square),
# subsample and seed (mmd), max_buckets, clock and max_window (adwin).
# Hysteresis: after an alert opens, the detector may open another only once its statistic has
# stayed below resolve_fraction × threshold for rearm_samples observations (and the alert is
# resolved).
resolve_fraction = 0.5
rearm_samples = 500
# Observe one row in this many (by insertion order). Default 1; 10 for embedding streams.
sample_every = 1

[[monitor.detectors]]
name = "pii-rate"
stream = "check.pii.hit"
method = "cusum"

# Where alerts are POSTed when they open. Retries back off exponentially; every attempt is
# recorded, and deliveries still pending at shutdown resume at the next start.
[[monitor.webhooks]]
# The sink's name in delivery records; default: the URL's host.
name = "ops"
url = "https://hooks.example.com/keel"
# "json" (Keel's payload, see the README) or "slack" (an incoming-webhook message).
format = "json"
# A header sent with every delivery, its value read from an environment variable at start.
# secret_header = "authorization"
# secret_env = "KEEL_WEBHOOK_TOKEN"
# Limit for one attempt, in milliseconds.
timeout_ms = 5000
# Attempts before the delivery is recorded as failed.
max_attempts = 5
# Wait before the second attempt, in milliseconds; doubles after each failure (at most 10 min).
initial_backoff_ms = 1000
"#;

/// `[monitor]` as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorFile {
    enabled: Option<bool>,
    poll_interval_ms: Option<u64>,
    batch_size: Option<u32>,
    checkpoint_interval_s: Option<u64>,
    lease_ttl_s: Option<u64>,
    alert_sample_size: Option<usize>,
    #[serde(default)]
    detectors: Vec<DetectorFile>,
    #[serde(default)]
    webhooks: Vec<WebhookFile>,
}

/// One `[[monitor.detectors]]` entry: the common fields, then every method's settings (each
/// checked against the chosen method).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorFile {
    name: String,
    stream: String,
    app: Option<String>,
    method: Method,
    resolve_fraction: Option<f64>,
    rearm_samples: Option<u64>,
    sample_every: Option<u64>,
    threshold: Option<f64>,
    reference_size: Option<u64>,
    window_size: Option<u64>,
    min_samples: Option<u64>,
    delta: Option<f64>,
    k: Option<f64>,
    direction: Option<String>,
    max_categories: Option<u64>,
    subsample: Option<u64>,
    seed: Option<u64>,
    max_buckets: Option<u64>,
    clock: Option<u64>,
    max_window: Option<u64>,
}

impl DetectorFile {
    /// The method settings given, by name, as JSON values.
    fn settings(&self) -> Vec<(&'static str, serde_json::Value)> {
        use serde_json::json;
        let fields = [
            ("threshold", self.threshold.map(|v| json!(v))),
            ("reference_size", self.reference_size.map(|v| json!(v))),
            ("window_size", self.window_size.map(|v| json!(v))),
            ("min_samples", self.min_samples.map(|v| json!(v))),
            ("delta", self.delta.map(|v| json!(v))),
            ("k", self.k.map(|v| json!(v))),
            ("direction", self.direction.as_ref().map(|v| json!(v))),
            ("max_categories", self.max_categories.map(|v| json!(v))),
            ("subsample", self.subsample.map(|v| json!(v))),
            ("seed", self.seed.map(|v| json!(v))),
            ("max_buckets", self.max_buckets.map(|v| json!(v))),
            ("clock", self.clock.map(|v| json!(v))),
            ("max_window", self.max_window.map(|v| json!(v))),
        ];
        fields.into_iter().filter_map(|(name, value)| value.map(|v| (name, v))).collect()
    }
}

/// One `[[monitor.webhooks]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookFile {
    name: Option<String>,
    url: String,
    #[serde(default = "default_format")]
    format: String,
    secret_header: Option<String>,
    secret_env: Option<String>,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "default_max_attempts")]
    max_attempts: u32,
    #[serde(default = "default_backoff_ms")]
    initial_backoff_ms: u64,
}

fn default_format() -> String {
    "json".to_owned()
}
fn default_timeout_ms() -> u64 {
    5_000
}
fn default_max_attempts() -> u32 {
    5
}
fn default_backoff_ms() -> u64 {
    1_000
}

/// Which methods read a kind of observation, for messages.
fn methods_reading(kind: &str) -> String {
    Method::ALL.iter().filter(|m| m.reads() == kind).map(|m| m.name()).collect::<Vec<_>>().join(", ")
}

/// Validates `[monitor]` (absent: defaults). `detectors` stays empty when none are written:
/// the server fills in the default set, which depends on the policy and the installed models.
pub fn validate(file: Option<&MonitorFile>, source: &TomlSource<'_>) -> anyhow::Result<MonitorConfig> {
    let mut config = MonitorConfig::default();
    let Some(file) = file else { return Ok(config) };
    let at = FieldPath::key("monitor");
    config.enabled = file.enabled.unwrap_or(true);
    let positive = |field: &str, value: Option<u64>| -> anyhow::Result<Option<u64>> {
        match value {
            Some(0) => bail!(source.error_at(&at.field(field), "must be at least 1")),
            other => Ok(other),
        }
    };
    if let Some(ms) = positive("poll_interval_ms", file.poll_interval_ms)? {
        config.poll_interval = Duration::from_millis(ms);
    }
    if let Some(n) = positive("batch_size", file.batch_size.map(u64::from))? {
        if n > 10_000 {
            bail!(source.error_at(&at.field("batch_size"), format!("must be at most 10000, got {n}")));
        }
        config.batch_size = n as u32;
    }
    if let Some(s) = file.checkpoint_interval_s {
        config.checkpoint_interval = Duration::from_secs(s);
    }
    if let Some(s) = positive("lease_ttl_s", file.lease_ttl_s)? {
        config.lease_ttl = Duration::from_secs(s);
    }
    if let Some(n) = file.alert_sample_size {
        if n > 1_000 {
            bail!(source.error_at(&at.field("alert_sample_size"), format!("must be at most 1000, got {n}")));
        }
        config.alert_sample_size = n;
    }

    let mut names = HashSet::new();
    for (i, d) in file.detectors.iter().enumerate() {
        let here = at.field("detectors").index(i);
        config.detectors.push(detector(d, &here, source, &mut names)?);
    }

    let mut sinks = HashSet::new();
    for (i, w) in file.webhooks.iter().enumerate() {
        let here = at.field("webhooks").index(i);
        let url = reqwest::Url::parse(&w.url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| source.error_at(&here.field("url"), format!("`{}` is not an http or https URL", w.url)))?;
        let name = w.name.clone().unwrap_or_else(|| url.host_str().unwrap_or("webhook").to_owned());
        if name.trim().is_empty() {
            bail!(source.error_at(&here.field("name"), "must not be empty"));
        }
        if !sinks.insert(name.clone()) {
            bail!(source.error_at(
                &here.field(if w.name.is_some() { "name" } else { "url" }),
                format!("another webhook is already named `{name}` (set a distinct `name`)")
            ));
        }
        let format = match w.format.as_str() {
            "json" => WebhookFormat::Json,
            "slack" => WebhookFormat::Slack,
            other => bail!(source.error_at(&here.field("format"), format!("`{other}` is not json or slack"))),
        };
        let secret_header = match (&w.secret_header, &w.secret_env) {
            (None, None) => None,
            (Some(_), None) => bail!(source.error_at(&here.field("secret_header"), "set secret_env too")),
            (header, Some(var)) => match std::env::var(var) {
                Ok(value) if !value.is_empty() => {
                    let header = header.clone().unwrap_or_else(|| "authorization".to_owned());
                    if reqwest::header::HeaderName::from_bytes(header.as_bytes()).is_err() {
                        bail!(source.error_at(&here.field("secret_header"), format!("`{header}` is not a header name")));
                    }
                    Some((header, value))
                }
                _ => {
                    bail!(source.error_at(&here.field("secret_env"), format!("environment variable `{var}` is not set")))
                }
            },
        };
        if w.timeout_ms == 0 {
            bail!(source.error_at(&here.field("timeout_ms"), "must be at least 1"));
        }
        if !(1..=100).contains(&w.max_attempts) {
            bail!(source
                .error_at(&here.field("max_attempts"), format!("must be between 1 and 100, got {}", w.max_attempts)));
        }
        config.webhooks.push(WebhookConfig {
            name,
            url: w.url.clone(),
            format,
            secret_header,
            timeout: Duration::from_millis(w.timeout_ms),
            max_attempts: w.max_attempts,
            initial_backoff: Duration::from_millis(w.initial_backoff_ms),
        });
    }
    Ok(config)
}

fn detector(
    d: &DetectorFile,
    here: &FieldPath,
    source: &TomlSource<'_>,
    names: &mut HashSet<String>,
) -> anyhow::Result<DetectorSpec> {
    let valid_name = !d.name.is_empty() && d.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid_name {
        bail!(source.error_at(&here.field("name"), "use letters, digits, `-` and `_` only"));
    }
    if !names.insert(d.name.clone()) {
        bail!(source.error_at(&here.field("name"), format!("another detector is already named `{}`", d.name)));
    }
    let stream: Stream = d.stream.parse().map_err(|e: String| source.error_at(&here.field("stream"), e))?;
    let method = d.method;
    if method.reads() != stream.gives() {
        bail!(source.error_at(
            &here.field("method"),
            format!(
                "{method} reads {} observations, but stream `{stream}` gives {}s; for this stream use {}",
                method.reads(),
                stream.gives(),
                methods_reading(stream.gives())
            )
        ));
    }
    if let Some(app) = &d.app {
        if app.trim().is_empty() {
            bail!(source.error_at(&here.field("app"), "must not be empty (omit it for all apps)"));
        }
    }

    // The method's settings are exactly the fields of its default config.
    // Embedding streams are MiniLM vectors: their centroid/mmd defaults are calibrated on those.
    let base = if matches!(stream, Stream::Embedding(_)) {
        keel_drift::config::embedding_detector(method)
    } else {
        DetectorConfig::default_for(method)
    };
    let mut value = serde_json::to_value(base)?;
    let Some(object) = value.as_object_mut() else { bail!("internal: detector config is not an object") };
    let known: Vec<String> = object.keys().filter(|k| *k != "method").cloned().collect();
    for (field, setting) in d.settings() {
        if !object.contains_key(field) {
            let hint = if method == Method::Adwin && field == "threshold" {
                " (adwin's statistic is always compared with 1; its sensitivity is `delta`)"
            } else {
                ""
            };
            bail!(source.error_at(
                &here.field(field),
                format!("`{field}` is not a setting of {method} (its settings: {}){hint}", known.join(", "))
            ));
        }
        object.insert(field.to_owned(), setting);
    }
    let detector: DetectorConfig = serde_json::from_value(value)
        .map_err(|e| source.error_at(&here.field("direction"), format!("must be both, up or down ({e})")))?;
    if let Err(e) = detector.validate() {
        let (field, message) = match &e {
            MonitorError::InvalidConfig { field, reason, .. } => (*field, reason.clone()),
            other => ("method", other.to_string()),
        };
        bail!(source.error_at(&here.field(field), message));
    }

    let mut hysteresis = Hysteresis::default();
    if let Some(f) = d.resolve_fraction {
        if !(f > 0.0 && f < 1.0) {
            bail!(source
                .error_at(&here.field("resolve_fraction"), format!("must be between 0 and 1 (exclusive), got {f}")));
        }
        hysteresis.resolve_fraction = f;
    }
    if let Some(n) = d.rearm_samples {
        if n == 0 {
            bail!(source.error_at(&here.field("rearm_samples"), "must be at least 1"));
        }
        hysteresis.rearm_samples = n;
    }
    let mut spec = DetectorSpec::new(&d.name, stream, detector);
    spec.app = d.app.clone();
    spec.hysteresis = hysteresis;
    if let Some(n) = d.sample_every {
        if n == 0 {
            bail!(source.error_at(&here.field("sample_every"), "must be at least 1"));
        }
        spec.sample_every = n;
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<MonitorConfig> {
        #[derive(Deserialize)]
        struct Root {
            monitor: Option<MonitorFile>,
        }
        let source = TomlSource::new("keel.toml", text);
        let root: Root = source.deserialize()?;
        validate(root.monitor.as_ref(), &source)
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn the_example_section_is_valid_and_complete() {
        let config = parse(EXAMPLE).unwrap();
        assert_eq!(config.detectors.len(), 2);
        assert_eq!(config.detectors[0].stream, Stream::Action);
        assert_eq!(config.detectors[1].stream, Stream::CheckHit("pii".into()));
        assert_eq!(config.webhooks[0].name, "ops");
        assert_eq!(config.batch_size, 1000);
        // Every field of the raw structs appears in the example (as a setting or in a comment).
        for field in [
            "enabled",
            "poll_interval_ms",
            "batch_size",
            "checkpoint_interval_s",
            "lease_ttl_s",
            "alert_sample_size",
            "name",
            "stream",
            "app",
            "method",
            "threshold",
            "reference_size",
            "window_size",
            "min_samples",
            "delta",
            "k",
            "direction",
            "max_categories",
            "subsample",
            "seed",
            "max_buckets",
            "clock",
            "max_window",
            "resolve_fraction",
            "rearm_samples",
            "sample_every",
            "url",
            "format",
            "secret_header",
            "secret_env",
            "timeout_ms",
            "max_attempts",
            "initial_backoff_ms",
        ] {
            assert!(EXAMPLE.contains(field), "{field} is not documented");
        }
    }

    #[test]
    fn absent_section_means_defaults() {
        let config = parse("").unwrap();
        assert!(config.enabled && config.detectors.is_empty() && config.webhooks.is_empty());
    }

    #[test]
    fn a_categorical_method_on_a_numeric_stream_names_the_field() {
        let e = err("[[monitor.detectors]]\nname = \"lat\"\nstream = \"upstream_ms\"\nmethod = \"chi_square\"\n");
        assert_eq!(
            e,
            "keel.toml:4:10: monitor.detectors[0].method: chi_square reads category observations, but stream \
             `upstream_ms` gives values; for this stream use page_hinkley, cusum, adwin, ks, wasserstein"
        );
        let e = err("[[monitor.detectors]]\nname = \"e\"\nstream = \"embedding.input\"\nmethod = \"ks\"\n");
        assert!(e.contains("for this stream use centroid, mmd"), "{e}");
    }

    #[test]
    fn bad_values_name_file_line_and_field() {
        let d = "[[monitor.detectors]]\nname = \"a\"\nstream = \"action\"\nmethod = \"psi\"\n";
        assert_eq!(
            err(&format!("{d}delta = 0.1\n")),
            "keel.toml:5:9: monitor.detectors[0].delta: `delta` is not a setting of psi (its settings: max_categories, \
             min_samples, reference_size, threshold, window_size)"
        );
        assert_eq!(
            err(&format!("{d}threshold = -1.0\n")),
            "keel.toml:5:13: monitor.detectors[0].threshold: must be a finite number greater than 0, got -1"
        );
        assert_eq!(
            err(&format!("{d}window_size = 100\nmin_samples = 500\n")),
            "keel.toml:6:15: monitor.detectors[0].min_samples: must be between 2 and window_size (100), got 500"
        );
        assert!(
            err(&format!("{d}rearm_samples = 0\n")).starts_with("keel.toml:5:17: monitor.detectors[0].rearm_samples")
        );
        assert!(err(&format!("{d}resolve_fraction = 1.5\n")).contains("must be between 0 and 1"));
        let e = err("[[monitor.detectors]]\nname = \"a\"\nstream = \"latency\"\nmethod = \"cusum\"\n");
        assert!(
            e.starts_with("keel.toml:3:10: monitor.detectors[0].stream: unknown stream `latency` (streams: action"),
            "{e}"
        );
        let e = err("[[monitor.detectors]]\nname = \"a\"\nstream = \"action\"\nmethod = \"magic\"\n");
        assert!(e.starts_with("keel.toml:4:10: unknown variant `magic`"), "{e}");
        let e =
            err("[[monitor.detectors]]\nname = \"a\"\nstream = \"upstream_ms\"\nmethod = \"adwin\"\nthreshold = 2.0\n");
        assert!(e.contains("its sensitivity is `delta`"), "{e}");
        let e = err("[[monitor.detectors]]\nname = \"a\"\nstream = \"upstream_ms\"\nmethod = \"page_hinkley\"\ndirection = \"sideways\"\n");
        assert!(e.starts_with("keel.toml:5:13: monitor.detectors[0].direction: must be both, up or down"), "{e}");
        let e = err(&format!("{d}\n{d}"));
        assert!(
            e.starts_with("keel.toml:7:8: monitor.detectors[1].name: another detector is already named `a`"),
            "{e}"
        );
        let e = err("[monitor]\nbatch_size = 0\n");
        assert_eq!(e, "keel.toml:2:14: monitor.batch_size: must be at least 1");
        let e = err("[[monitor.detectors]]\nname = \"a\"\nstream = \"action\"\nmethod = \"psi\"\nwindow = 3\n");
        assert!(e.starts_with("keel.toml:5:1: unknown field `window`"), "{e}");
    }

    #[test]
    fn embedding_streams_get_the_minilm_calibrated_thresholds() {
        let config =
            parse("[[monitor.detectors]]\nname = \"t\"\nstream = \"embedding.output\"\nmethod = \"mmd\"\n").unwrap();
        assert_eq!(config.detectors[0].detector, keel_drift::config::embedding_detector(Method::Mmd));
        assert_eq!(config.detectors[0].sample_every, 10);
        let config =
            parse("[[monitor.detectors]]\nname = \"t\"\nstream = \"embedding.input\"\nmethod = \"centroid\"\nthreshold = 0.1\n")
                .unwrap();
        assert!(matches!(&config.detectors[0].detector, DetectorConfig::Centroid(c) if c.threshold == 0.1));
    }

    #[test]
    fn webhooks_are_validated() {
        let e = err("[[monitor.webhooks]]\nurl = \"ftp://x\"\n");
        assert_eq!(e, "keel.toml:2:7: monitor.webhooks[0].url: `ftp://x` is not an http or https URL");
        let e = err("[[monitor.webhooks]]\nurl = \"http://a/x\"\nformat = \"xml\"\n");
        assert!(e.starts_with("keel.toml:3:10: monitor.webhooks[0].format"), "{e}");
        let e = err("[[monitor.webhooks]]\nurl = \"http://a/x\"\nsecret_env = \"KEEL_TEST_SURELY_UNSET_VAR\"\n");
        assert!(e.contains("environment variable `KEEL_TEST_SURELY_UNSET_VAR` is not set"), "{e}");
        let e = err("[[monitor.webhooks]]\nurl = \"http://a/x\"\n[[monitor.webhooks]]\nurl = \"http://a/y\"\n");
        assert!(e.contains("monitor.webhooks[1].url: another webhook is already named `a`"), "{e}");
        std::env::set_var("KEEL_TEST_HOOK_SECRET", "t0ken");
        let config = parse(
            "[[monitor.webhooks]]\nurl = \"http://a/x\"\nformat = \"slack\"\nsecret_header = \"x-token\"\nsecret_env = \"KEEL_TEST_HOOK_SECRET\"\n",
        )
        .unwrap();
        let w = &config.webhooks[0];
        assert_eq!((w.name.as_str(), w.format, w.max_attempts), ("a", WebhookFormat::Slack, 5));
        assert_eq!(w.secret_header, Some(("x-token".to_owned(), "t0ken".to_owned())));
        assert!(!format!("{w:?}").contains("t0ken"), "the secret stays out of Debug");
    }
}
