//! `keel.toml`: the server configuration, its documented example, validation, and the
//! command-line overrides that let `keel serve --upstream URL` run with no file at all.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use keel_core::Privacy;
use keel_gateway::{ClientKey, GatewaySettings, UpstreamConfig};
use keel_policy::source::{FieldPath, TomlSource};
use serde::{Deserialize, Serialize};

/// The example printed by `keel config example`; every field is documented here.
pub const EXAMPLE: &str = r#"# keel.toml — Keel server configuration. Unknown fields are errors.

# Address and port the gateway listens on. Without [[keys]], Keel only binds to loopback.
listen = "127.0.0.1:8080"

# Where interactions and the audit log are stored: sqlite://PATH (created if missing).
store = "sqlite://keel.db"

# The policy file to enforce. Omit it to use the built-in default pack (policies/default.toml).
policy = "policies/default.toml"

# Largest request body accepted, in bytes; larger requests get HTTP 413.
max_body_bytes = 1048576

# What is stored of apps not listed under [apps]: "full", "redacted" (PII replaced) or "none" (hashes only).
default_privacy = "full"

# Upstream OpenAI-compatible servers. A request goes to the first upstream serving its model.
# `keel serve --upstream local` (or an upstream with `local = true`) serves the local model
# SmolLM2-135M-Instruct as `local/smollm2-135m`, fetched with `keel models pull` on first use.
[[upstreams]]
# A name for logs and errors.
name = "local"
# Base URL of the OpenAI-compatible API (ending in /v1 for most servers).
base_url = "http://127.0.0.1:11434/v1"
# Environment variable holding the upstream's API key; omit for servers without keys.
api_key_env = "OPENAI_API_KEY"
# Models this upstream serves. Omit to ask the upstream's /v1/models at start.
models = ["llama3.2"]
# Limit for establishing a connection, in milliseconds.
connect_timeout_ms = 3000
# Limit for a whole answer (or for each gap in a streamed answer), in milliseconds.
request_timeout_ms = 120000
# Extra attempts after a connection failure (never after the request reached the upstream).
max_retries = 2

[[upstreams]]
name = "on-device"
# Serve a local GGUF chat model inside Keel instead of calling a server (no base_url then).
local = true
# The GGUF file; omit to use the pinned SmolLM2-135M-Instruct from `keel models pull`.
# gguf = "/models/my-model.gguf"
# Requests that may wait for the local model before new ones get HTTP 429.
queue = 16

# Client keys. Only the SHA-256 of each key is stored; `keel keys new` makes a key and its line.
[[keys]]
# The key's name, recorded as the actor in the audit log.
name = "support-bot"
# The app its traffic belongs to (for KPIs, filters and privacy).
app = "support"
# SHA-256 of the key, 64 hex characters.
sha256 = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
# Whether the key may use the Keel API under /api/ (interactions, explanations).
admin = false

# Per-app settings.
[apps.support]
# What is stored of this app's texts: "full", "redacted" or "none".
privacy = "redacted"
# The stored policy (by name) whose active version judges this app's traffic. Omit it to use
# the policy of `policy` above. The name needs an active version in the store at start.
# policy = "support-bot"

# Admin tokens and stored policy versions (see `keel token` and `keel policy`).
[lifecycle]
# How often a running gateway polls the store for changes made elsewhere (the CLI, other
# replicas): promotions, rollbacks and token revocations take effect within this time.
poll_interval_ms = 1000

# The human review queue. Flagged and escalated interactions always open a case; so do user
# reports (wrong answers, low satisfaction) and drift alerts (for the interactions they sample).
[review]
# Share of allowed interactions sampled for review, from 0 to 1 (0.01 = 1%), so reviewers also
# see what the policy lets through. Decided by a hash of the interaction id: repeatable.
sample_rate = 0.01
# Share of cases that need a second review by a different reviewer, from 0 to 1; agreement
# is tracked (Cohen's kappa) and disagreements go to adjudication.
second_review_share = 0.1
# How long a reviewer holds a case taken with `keel review next` before the lock lapses.
lock_minutes = 30
# How soon a case should be labelled, by priority: escalations and wrong-answer reports (high),
# flags, drift samples and low satisfaction (normal), sampled traffic (low).
sla_high_hours = 4
sla_normal_hours = 24
sla_low_hours = 72
"#;

/// The whole documented example: the server settings, then `[monitor]`.
pub fn example() -> String {
    format!("{EXAMPLE}{}", crate::config_monitor::EXAMPLE)
}

/// `keel.toml` as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// See [`EXAMPLE`].
    pub listen: Option<String>,
    /// See [`EXAMPLE`].
    pub store: Option<String>,
    /// See [`EXAMPLE`].
    pub policy: Option<PathBuf>,
    /// See [`EXAMPLE`].
    pub max_body_bytes: Option<usize>,
    /// See [`EXAMPLE`].
    #[serde(default)]
    pub default_privacy: Privacy,
    /// See [`EXAMPLE`].
    #[serde(default)]
    pub upstreams: Vec<UpstreamFile>,
    /// See [`EXAMPLE`].
    #[serde(default)]
    pub keys: Vec<KeyFile>,
    /// See [`EXAMPLE`].
    #[serde(default)]
    pub apps: HashMap<String, AppFile>,
    /// See [`crate::config_monitor::EXAMPLE`].
    pub monitor: Option<crate::config_monitor::MonitorFile>,
    /// See [`EXAMPLE`].
    #[serde(default)]
    pub lifecycle: LifecycleFile,
    /// See [`EXAMPLE`].
    #[serde(default)]
    pub review: ReviewFile,
}

/// The `[review]` table.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReviewFile {
    sample_rate: f64,
    second_review_share: f64,
    lock_minutes: u64,
    sla_high_hours: u64,
    sla_normal_hours: u64,
    sla_low_hours: u64,
}

impl Default for ReviewFile {
    fn default() -> Self {
        Self {
            sample_rate: 0.01,
            second_review_share: 0.1,
            lock_minutes: 30,
            sla_high_hours: 4,
            sla_normal_hours: 24,
            sla_low_hours: 72,
        }
    }
}

/// Checks `[review]` and builds the intake and the lock duration from it.
pub(crate) fn review_settings(
    file: &ReviewFile,
    source: &TomlSource<'_>,
) -> anyhow::Result<(keel_store::CaseIntake, Duration)> {
    let at = |field: &str| FieldPath::key("review").field(field);
    for (field, value) in [("sample_rate", file.sample_rate), ("second_review_share", file.second_review_share)] {
        if !(0.0..=1.0).contains(&value) {
            bail!(source.error_at(&at(field), format!("{value} is not a share between 0 and 1 (0.01 is 1%)")));
        }
    }
    if !(1..=24 * 60).contains(&file.lock_minutes) {
        bail!(source.error_at(&at("lock_minutes"), "must be between 1 and 1440 (minutes)"));
    }
    let hours = |field: &str, value: u64| -> anyhow::Result<Duration> {
        if !(1..=24 * 365).contains(&value) {
            bail!(source.error_at(&at(field), "must be between 1 and 8760 (hours)"));
        }
        Ok(Duration::from_secs(value * 3600))
    };
    let sla = keel_store::ReviewSla {
        high: hours("sla_high_hours", file.sla_high_hours)?,
        normal: hours("sla_normal_hours", file.sla_normal_hours)?,
        low: hours("sla_low_hours", file.sla_low_hours)?,
    };
    let intake =
        keel_store::CaseIntake { sample_rate: file.sample_rate, second_review_share: file.second_review_share, sla };
    Ok((intake, Duration::from_secs(file.lock_minutes * 60)))
}

/// The `[lifecycle]` table.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LifecycleFile {
    #[serde(default = "default_poll_interval")]
    poll_interval_ms: u64,
}

impl Default for LifecycleFile {
    fn default() -> Self {
        Self { poll_interval_ms: default_poll_interval() }
    }
}

fn default_poll_interval() -> u64 {
    1000
}

/// One `[[upstreams]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    name: String,
    #[serde(default)]
    base_url: Option<String>,
    #[serde(default)]
    local: bool,
    #[serde(default)]
    gguf: Option<PathBuf>,
    #[serde(default = "default_queue")]
    queue: usize,
    api_key_env: Option<String>,
    #[serde(default)]
    models: Vec<String>,
    #[serde(default = "default_connect_timeout")]
    connect_timeout_ms: u64,
    #[serde(default = "default_request_timeout")]
    request_timeout_ms: u64,
    #[serde(default = "default_retries")]
    max_retries: u32,
}

fn default_connect_timeout() -> u64 {
    3000
}
fn default_request_timeout() -> u64 {
    120_000
}
fn default_retries() -> u32 {
    2
}
fn default_queue() -> usize {
    16
}

/// A local model served inside Keel.
#[derive(Debug, Clone)]
pub struct LocalUpstream {
    /// The upstream's name.
    pub name: String,
    /// The GGUF file; `None` for the pinned model.
    pub gguf: Option<PathBuf>,
    /// Requests that may wait.
    pub queue: usize,
}

/// One `[[keys]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    name: String,
    app: String,
    sha256: String,
    #[serde(default)]
    admin: bool,
}

/// One `[apps.NAME]` table.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AppFile {
    /// What is stored of the app's texts.
    #[serde(default)]
    pub privacy: Privacy,
    #[serde(default)]
    policy: Option<String>,
}

/// An app bound to a stored policy name by `[apps.NAME] policy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppPolicy {
    /// The app.
    pub app: String,
    /// The policy name it enforces.
    pub policy: String,
    /// Where the binding is written (`keel.toml:14:10: apps.support.policy`), for errors.
    pub location: String,
}

/// Values given on the command line, which win over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--listen`
    pub listen: Option<String>,
    /// `--upstream`
    pub upstream: Option<String>,
    /// `--policy`
    pub policy: Option<PathBuf>,
    /// `--store`
    pub store: Option<String>,
}

/// The validated configuration a server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Store URL.
    pub store: String,
    /// Policy file; `None` means the built-in pack.
    pub policy: Option<PathBuf>,
    /// HTTP upstreams in order.
    pub upstreams: Vec<UpstreamConfig>,
    /// Local models to serve (after the HTTP upstreams in routing order).
    pub local_upstreams: Vec<LocalUpstream>,
    /// Gateway settings.
    pub gateway: GatewaySettings,
    /// Apps bound to a policy name other than the default one.
    pub app_policies: Vec<AppPolicy>,
    /// How often the store is polled for changes made elsewhere.
    pub poll_interval: Duration,
    /// Notes for the operator about adjustments made (e.g. loopback only).
    pub notices: Vec<String>,
    /// Drift monitoring; no detectors means the default set.
    pub monitor: keel_drift::MonitorConfig,
}

/// `$KEEL_HOME`, or `~/.keel`.
pub fn keel_home() -> PathBuf {
    if let Some(home) = std::env::var_os("KEEL_HOME") {
        return PathBuf::from(home);
    }
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(".")).join(".keel")
}

/// The store URL used when neither file nor flag names one.
pub fn default_store_url(file_name: &str) -> anyhow::Result<String> {
    let home = keel_home();
    std::fs::create_dir_all(&home)
        .with_context(|| format!("cannot create Keel's home directory {}", home.display()))?;
    Ok(format!("sqlite://{}", home.join(file_name).display()))
}

/// Reads `path` (if given), applies overrides and validates everything.
pub fn load(path: Option<&Path>, overrides: Overrides) -> anyhow::Result<Config> {
    let (file, source_text, file_name) = match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("{}: cannot read the config file", path.display()))?;
            let name = path.display().to_string();
            let parsed: ConfigFile = TomlSource::new(&name, &text).deserialize()?;
            (parsed, text, name)
        }
        None => (ConfigFile::default(), String::new(), "<command line>".to_string()),
    };
    validate(file, &source_text, &file_name, overrides)
}

/// Validates a parsed file (`text` is its source, for error locations).
pub fn validate(file: ConfigFile, text: &str, file_name: &str, overrides: Overrides) -> anyhow::Result<Config> {
    let source = TomlSource::new(file_name, text);
    let mut notices = Vec::new();

    let listen_text = overrides.listen.clone().or(file.listen.clone()).unwrap_or_else(|| "127.0.0.1:8080".into());
    let mut listen: SocketAddr = listen_text.parse().map_err(|_| {
        if overrides.listen.is_some() {
            anyhow::anyhow!("--listen: `{listen_text}` is not an address like 127.0.0.1:8080")
        } else {
            source
                .error_at(&FieldPath::key("listen"), format!("`{listen_text}` is not an address like 127.0.0.1:8080"))
                .into()
        }
    })?;

    let mut upstreams = Vec::new();
    let mut local_upstreams = Vec::new();
    if overrides.upstream.as_deref() == Some("local") {
        local_upstreams.push(LocalUpstream { name: "local".into(), gguf: None, queue: default_queue() });
    } else if let Some(url) = &overrides.upstream {
        check_url(url).map_err(|m| anyhow::anyhow!("--upstream: {m} (or `local` for the local model)"))?;
        upstreams.push(UpstreamConfig {
            name: "upstream".into(),
            base_url: url.clone(),
            api_key: std::env::var("KEEL_UPSTREAM_API_KEY").ok().filter(|k| !k.is_empty()),
            models: Vec::new(),
            connect_timeout: Duration::from_millis(default_connect_timeout()),
            request_timeout: Duration::from_millis(default_request_timeout()),
            max_retries: default_retries(),
        });
    } else {
        let mut names = std::collections::HashSet::new();
        for (i, u) in file.upstreams.iter().enumerate() {
            let at = FieldPath::key("upstreams").index(i);
            if !names.insert(u.name.clone()) {
                bail!(source.error_at(&at.field("name"), format!("an upstream named `{}` is already defined", u.name)));
            }
            if u.local {
                if u.base_url.is_some() {
                    bail!(source
                        .error_at(&at.field("base_url"), "a local upstream has no base_url (remove one of the two)"));
                }
                if let Some(gguf) = &u.gguf {
                    if !gguf.is_file() {
                        bail!(source.error_at(&at.field("gguf"), format!("no such file: {}", gguf.display())));
                    }
                }
                if u.queue == 0 {
                    bail!(source.error_at(&at.field("queue"), "must be at least 1"));
                }
                local_upstreams.push(LocalUpstream { name: u.name.clone(), gguf: u.gguf.clone(), queue: u.queue });
                continue;
            }
            if u.gguf.is_some() {
                bail!(source.error_at(&at.field("gguf"), "gguf is only for local upstreams (set local = true)"));
            }
            let Some(base_url) = &u.base_url else {
                bail!(source.error_at(&at, "set base_url (an OpenAI-compatible server) or local = true"));
            };
            check_url(base_url).map_err(|m| source.error_at(&at.field("base_url"), m))?;
            if u.request_timeout_ms == 0 || u.connect_timeout_ms == 0 {
                bail!(source.error_at(&at.field("request_timeout_ms"), "timeouts must be greater than 0"));
            }
            let api_key =
                match &u.api_key_env {
                    Some(var) => match std::env::var(var) {
                        Ok(value) if !value.is_empty() => Some(value),
                        _ => bail!(source
                            .error_at(&at.field("api_key_env"), format!("environment variable `{var}` is not set"))),
                    },
                    None => None,
                };
            upstreams.push(UpstreamConfig {
                name: u.name.clone(),
                base_url: base_url.clone(),
                api_key,
                models: u.models.clone(),
                connect_timeout: Duration::from_millis(u.connect_timeout_ms),
                request_timeout: Duration::from_millis(u.request_timeout_ms),
                max_retries: u.max_retries,
            });
        }
    }
    if upstreams.is_empty() && local_upstreams.is_empty() {
        bail!("no upstream configured: pass --upstream URL (e.g. http://127.0.0.1:11434/v1), --upstream local, or add [[upstreams]] to keel.toml");
    }

    let mut keys = Vec::new();
    for (i, k) in file.keys.iter().enumerate() {
        let at = FieldPath::key("keys").index(i);
        let bytes = hex::decode(&k.sha256).ok().and_then(|b| <[u8; 32]>::try_from(b).ok()).ok_or_else(|| {
            source.error_at(
                &at.field("sha256"),
                "must be 64 hex characters (the SHA-256 of the key; see `keel keys new`)",
            )
        })?;
        if k.app.trim().is_empty() {
            bail!(source.error_at(&at.field("app"), "must not be empty"));
        }
        if keys.iter().any(|existing: &ClientKey| existing.sha256 == bytes) {
            bail!(source.error_at(&at.field("sha256"), "the same key is configured twice"));
        }
        keys.push(ClientKey { name: k.name.clone(), app: k.app.clone(), sha256: bytes, admin: k.admin });
    }
    if keys.is_empty() && !listen.ip().is_loopback() {
        notices.push(format!(
            "no client keys are configured, so Keel listens on loopback only (127.0.0.1:{}) instead of {listen}",
            listen.port()
        ));
        listen = SocketAddr::from(([127, 0, 0, 1], listen.port()));
    }
    if keys.is_empty() {
        notices.push("no client keys configured: every local client is accepted as app `default`".into());
    }

    let max_body_bytes = file.max_body_bytes.unwrap_or(1 << 20);
    if max_body_bytes < 1024 {
        bail!(source.error_at(&FieldPath::key("max_body_bytes"), "must be at least 1024"));
    }
    let mut monitor = crate::config_monitor::validate(file.monitor.as_ref(), &source)?;
    let (review, review_lock) = review_settings(&file.review, &source)?;
    monitor.review = review;
    let mut app_policies = Vec::new();
    for (app, settings) in &file.apps {
        let Some(policy) = &settings.policy else { continue };
        let at = FieldPath::key("apps").field(app).field("policy");
        if policy.trim().is_empty() || policy.contains('@') {
            bail!(source.error_at(&at, "a policy name, like \"support-bot\" (apps follow the name's active version)"));
        }
        let located = source.error_at(&at, "");
        let location = match (located.line, located.column) {
            (Some(line), Some(column)) => format!("{file_name}:{line}:{column}: {at}"),
            _ => format!("{file_name}: {at}"),
        };
        app_policies.push(AppPolicy { app: app.clone(), policy: policy.clone(), location });
    }
    app_policies.sort_by(|a, b| a.app.cmp(&b.app));
    let poll_interval_ms = file.lifecycle.poll_interval_ms;
    if !(50..=60_000).contains(&poll_interval_ms) {
        bail!(source.error_at(
            &FieldPath::key("lifecycle").field("poll_interval_ms"),
            "must be between 50 and 60000 (milliseconds)"
        ));
    }
    let store = match overrides.store.or(file.store) {
        Some(url) => url,
        None => default_store_url("keel.db")?,
    };
    Ok(Config {
        listen,
        store,
        policy: overrides.policy.or(file.policy),
        upstreams,
        local_upstreams,
        gateway: GatewaySettings {
            keys,
            privacy: file.apps.iter().map(|(name, app)| (name.clone(), app.privacy)).collect(),
            default_privacy: file.default_privacy,
            max_body_bytes,
            review_lock,
            review,
        },
        app_policies,
        poll_interval: Duration::from_millis(poll_interval_ms),
        notices,
        monitor,
    })
}

fn check_url(url: &str) -> Result<(), String> {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(()),
        Ok(u) => Err(format!("`{url}` must be an http or https URL, not {}", u.scheme())),
        Err(e) => Err(format!("`{url}` is not a URL: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Config> {
        std::env::set_var("KEEL_TEST_KEY_VAR", "sk-test");
        let file: ConfigFile = TomlSource::new("keel.toml", text).deserialize()?;
        validate(file, text, "keel.toml", Overrides { store: Some("sqlite::memory:".into()), ..Overrides::default() })
    }

    #[test]
    fn the_documented_example_parses() {
        std::env::set_var("OPENAI_API_KEY", "sk-example");
        let config = parse(&example()).unwrap();
        assert_eq!(config.monitor.detectors.len(), 2);
        assert_eq!(config.upstreams[0].models, vec!["llama3.2"]);
        assert_eq!(config.local_upstreams[0].name, "on-device");
        assert_eq!(config.gateway.keys[0].app, "support");
        assert_eq!(config.gateway.privacy_of("support"), Privacy::Redacted);
        assert_eq!(config.gateway.privacy_of("other"), Privacy::Full);
    }

    #[test]
    fn unknown_fields_name_file_and_line() {
        let err = parse("listen = \"127.0.0.1:1\"\nlisten_port = 3\n").unwrap_err().to_string();
        insta::assert_snapshot!(err, @r"keel.toml:2:1: unknown field `listen_port`, expected one of `listen`, `store`, `policy`, `max_body_bytes`, `default_privacy`, `upstreams`, `keys`, `apps`, `monitor`, `lifecycle`, `review`");
    }

    #[test]
    fn bad_values_name_the_field() {
        let text = "[[upstreams]]\nname = \"a\"\nbase_url = \"ftp://x\"\n";
        let err = parse(text).unwrap_err().to_string();
        insta::assert_snapshot!(err, @"keel.toml:3:12: upstreams[0].base_url: `ftp://x` must be an http or https URL, not ftp");
        let text = "[[upstreams]]\nname = \"a\"\nbase_url = \"http://x/v1\"\n[[keys]]\nname = \"k\"\napp = \"a\"\nsha256 = \"abc\"\n";
        let err = parse(text).unwrap_err().to_string();
        assert!(err.starts_with("keel.toml:7:10: keys[0].sha256: must be 64 hex characters"), "{err}");
        let text = "listen = \"nowhere\"\n[[upstreams]]\nname = \"a\"\nbase_url = \"http://x/v1\"\n";
        let err = parse(text).unwrap_err().to_string();
        assert!(err.starts_with("keel.toml:1:10: listen:"), "{err}");
    }

    #[test]
    fn the_review_table_is_validated_and_reaches_the_intake() {
        let base = "[[upstreams]]\nname = \"a\"\nbase_url = \"http://x/v1\"\n";
        let config = parse(base).unwrap();
        assert_eq!(config.gateway.review.sample_rate, 0.01, "the documented default");
        assert_eq!(config.gateway.review_lock, Duration::from_secs(30 * 60));
        let text = format!("{base}[review]\nsample_rate = 0.25\nlock_minutes = 5\nsla_high_hours = 1\n");
        let config = parse(&text).unwrap();
        assert_eq!(config.gateway.review.sample_rate, 0.25);
        assert_eq!(config.monitor.review.sla.high, Duration::from_secs(3600), "drift cases use the same SLA");
        assert_eq!(config.gateway.review_lock, Duration::from_secs(300));
        let err = parse(&format!("{base}[review]\nsample_rate = 1.5\n")).unwrap_err().to_string();
        assert!(err.starts_with("keel.toml:5:15: review.sample_rate: 1.5 is not a share between 0 and 1"), "{err}");
        let err = parse(&format!("{base}[review]\nlock_minutes = 0\n")).unwrap_err().to_string();
        assert!(err.contains("review.lock_minutes: must be between 1 and 1440"), "{err}");
    }

    #[test]
    fn without_keys_only_loopback_is_used() {
        let text = "listen = \"0.0.0.0:9000\"\n[[upstreams]]\nname = \"a\"\nbase_url = \"http://x/v1\"\n";
        let config = parse(text).unwrap();
        assert_eq!(config.listen, "127.0.0.1:9000".parse().unwrap());
        assert!(config.notices[0].contains("loopback only"));
    }

    #[test]
    fn command_line_upstream_needs_no_file() {
        let config = validate(
            ConfigFile::default(),
            "",
            "<command line>",
            Overrides {
                upstream: Some("http://127.0.0.1:11434/v1".into()),
                store: Some("sqlite::memory:".into()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(config.upstreams[0].base_url, "http://127.0.0.1:11434/v1");
        assert!(config.upstreams[0].models.is_empty());
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
    }

    #[test]
    fn local_upstreams_are_validated() {
        let err =
            parse("[[upstreams]]\nname = \"a\"\nlocal = true\nbase_url = \"http://x/v1\"\n").unwrap_err().to_string();
        assert!(err.starts_with("keel.toml:4:12: upstreams[0].base_url: a local upstream has no base_url"), "{err}");
        let err = parse("[[upstreams]]\nname = \"a\"\n").unwrap_err().to_string();
        assert!(err.contains("set base_url (an OpenAI-compatible server) or local = true"), "{err}");
        let config = validate(
            ConfigFile::default(),
            "",
            "<command line>",
            Overrides { upstream: Some("local".into()), store: Some("sqlite::memory:".into()), ..Overrides::default() },
        )
        .unwrap();
        assert!(config.upstreams.is_empty());
        assert_eq!(config.local_upstreams.len(), 1);
    }

    #[test]
    fn no_upstream_is_a_clear_error() {
        let err = validate(ConfigFile::default(), "", "<command line>", Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("no upstream configured"), "{err}");
    }
}
