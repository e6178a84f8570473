//! What is in force: per policy name its active version, its shadow and its canary, and
//! which policy name each app uses; and how a request picks its version.
//!
//! The store is the truth. A gateway loads every version in force from the store at start
//! and again whenever the store's policy counter changes (the store watcher), so a promotion
//! or rollback made by the CLI, the API or another replica takes effect within one poll
//! interval, without a restart. Compiled versions are reused while their text is unchanged.
//!
//! Canary assignment is sticky: a request with a user id (the OpenAI `user` field or the
//! `x-keel-user` header) lands in the canary when SHA-256(user id, canary version) maps below
//! the canary's share, so the same user keeps the same version while that canary runs, and a
//! new canary version reshuffles. A request without a user id is assigned by its interaction
//! id, so the share holds but stickiness cannot.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use keel_core::PolicyRef;
use keel_policy::Policy;
use keel_store::{PolicyStatus, PolicyVersion, Store};
use sha2::{Digest, Sha256};

/// Turns a self-contained policy text into a running policy, with the models this process
/// can load (a policy with model-based checks needs them).
#[async_trait]
pub trait PolicyCompiler: Send + Sync {
    /// Compiles `text`, naming `label` in errors (`label:line:column: field: message`).
    async fn compile(&self, label: &str, text: &str) -> Result<Policy, String>;
}

/// Compiles texts without models: enough for policies without model-based checks.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainCompiler;

#[async_trait]
impl PolicyCompiler for PlainCompiler {
    async fn compile(&self, label: &str, text: &str) -> Result<Policy, String> {
        Policy::parse(label, text).map_err(|e| e.to_string())
    }
}

/// Compiles a stored version, refusing a text that extends a file or names another version.
pub async fn compile_version(compiler: &dyn PolicyCompiler, version: &PolicyVersion) -> Result<Policy, String> {
    let label = format!("<stored {}>", version.reference());
    if keel_policy::resolve::extends_a_file(&label, &version.source_text).map_err(|e| e.to_string())? {
        return Err(format!("{label}: extends a file, which a stored version must not (store it resolved)"));
    }
    let policy = compiler.compile(&label, &version.source_text).await?;
    if policy.reference() != version.reference() {
        return Err(format!("{label}: its text says {}, not {}", policy.reference(), version.reference()));
    }
    Ok(policy)
}

/// Which policy name each app enforces; apps not listed use `default_name`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bindings {
    /// The policy name of apps without a binding (the `policy` of keel.toml).
    pub default_name: String,
    /// `[apps.NAME] policy = "…"`.
    pub apps: HashMap<String, String>,
}

impl Bindings {
    /// The policy name `app` enforces.
    pub fn name_for(&self, app: &str) -> &str {
        self.apps.get(app).map(String::as_str).unwrap_or(&self.default_name)
    }
}

/// A canary: the version and the share of traffic it decides.
#[derive(Debug, Clone)]
pub struct Canary {
    /// The canary version.
    pub policy: Arc<Policy>,
    /// Its share of traffic, in (0, 1).
    pub share: f64,
}

/// The versions in force for one policy name.
#[derive(Debug, Clone)]
pub struct NameRollout {
    /// The active version.
    pub active: Arc<Policy>,
    /// The shadow version, judged beside it and never enforced.
    pub shadow: Option<Arc<Policy>>,
    /// The canary version and its share.
    pub canary: Option<Canary>,
}

/// Everything in force on this gateway.
#[derive(Debug, Clone)]
pub struct Rollout {
    bindings: Bindings,
    default_active: Arc<Policy>,
    names: HashMap<String, NameRollout>,
    /// The store's policy counter this rollout was loaded at (`None`: not from a store).
    generation: Option<i64>,
}

/// The policies that judge one request.
#[derive(Debug, Clone)]
pub struct Selection {
    /// The version that decides (the active one or the canary).
    pub enforce: Arc<Policy>,
    /// The shadow version, if its name has one.
    pub shadow: Option<Arc<Policy>>,
    /// True when the canary was chosen.
    pub canary: bool,
}

/// Where a key lands in [0, 1) for `version`'s canary.
pub fn canary_point(key: &str, version: &PolicyRef) -> f64 {
    let mut hasher = Sha256::new();
    hasher.update(key.as_bytes());
    hasher.update([0]);
    hasher.update(version.to_string().as_bytes());
    let digest = hasher.finalize();
    let mut top = [0u8; 8];
    top.copy_from_slice(&digest[..8]);
    // 53 bits: exactly representable, uniform in [0, 1).
    (u64::from_be_bytes(top) >> 11) as f64 / (1u64 << 53) as f64
}

impl Rollout {
    /// One policy for every app, with nothing else in force (no store behind it).
    pub fn single(policy: Arc<Policy>) -> Self {
        let name = policy.reference().name;
        let names = HashMap::from([(name.clone(), NameRollout { active: policy.clone(), shadow: None, canary: None })]);
        Rollout {
            bindings: Bindings { default_name: name, apps: HashMap::new() },
            default_active: policy,
            names,
            generation: None,
        }
    }

    /// The store's policy counter this was loaded at.
    pub fn generation(&self) -> Option<i64> {
        self.generation
    }

    /// What apps bind to.
    pub fn bindings(&self) -> &Bindings {
        &self.bindings
    }

    /// The versions in force per policy name.
    pub fn names(&self) -> &HashMap<String, NameRollout> {
        &self.names
    }

    /// The active version of the default policy name (what apps without a binding enforce).
    pub fn default_active(&self) -> Arc<Policy> {
        self.default_active.clone()
    }

    /// The policies for a request of `app`; `key` is its user id (or, without one, its
    /// interaction id). `None` when the app's policy name has no active version.
    pub fn select(&self, app: &str, key: &str) -> Option<Selection> {
        let name = self.names.get(self.bindings.name_for(app))?;
        let canary = name.canary.as_ref().filter(|c| canary_point(key, &c.policy.reference()) < c.share);
        Some(Selection {
            enforce: canary.map(|c| c.policy.clone()).unwrap_or_else(|| name.active.clone()),
            shadow: name.shadow.clone(),
            canary: canary.is_some(),
        })
    }

    /// The same rollout with `policy` as the active version of its name (SIGHUP-free tests and
    /// gateways without lifecycle management).
    pub fn with_active(&self, policy: Arc<Policy>) -> Self {
        let mut next = self.clone();
        let name = policy.reference().name;
        if name == next.bindings.default_name {
            next.default_active = policy.clone();
        }
        match next.names.get_mut(&name) {
            Some(slot) => slot.active = policy,
            None => {
                next.names.insert(name, NameRollout { active: policy, shadow: None, canary: None });
            }
        }
        next
    }

    /// `(name@version, status, sha256)` of every version in force.
    pub fn in_force(&self) -> Vec<(String, &'static str, String)> {
        let mut out = Vec::new();
        for slot in self.names.values() {
            let entry = |p: &Arc<Policy>, status: &'static str| {
                (p.reference().to_string(), status, p.source_sha256().to_owned())
            };
            out.push(entry(&slot.active, "active"));
            out.extend(slot.shadow.as_ref().map(|p| entry(p, "shadow")));
            out.extend(slot.canary.as_ref().map(|c| entry(&c.policy, "canary")));
        }
        out.sort();
        out
    }

    /// Every compiled version, to reuse while its text is unchanged.
    fn compiled(&self) -> HashMap<(String, String), Arc<Policy>> {
        let mut out = HashMap::new();
        for slot in self.names.values() {
            let all = std::iter::once(&slot.active).chain(&slot.shadow).chain(slot.canary.as_ref().map(|c| &c.policy));
            for policy in all {
                out.insert((policy.reference().to_string(), policy.source_sha256().to_owned()), policy.clone());
            }
        }
        out
    }
}

/// Why the versions in force could not be loaded; what ran before stays in force.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// The store could not be read.
    #[error("cannot read the policies in force: {0}")]
    Store(#[from] keel_store::StoreError),
    /// A version in force does not compile here.
    #[error("cannot load {policy} ({status}): {message}")]
    Compile {
        /// The version.
        policy: String,
        /// Its status.
        status: PolicyStatus,
        /// What is wrong.
        message: String,
    },
    /// An app is bound to a policy name with no active version.
    #[error("app `{app}` is bound to policy `{name}`, which has no active version in the store")]
    Unbound {
        /// The app (`*` for apps without a binding).
        app: String,
        /// The policy name.
        name: String,
    },
}

/// Loads every version in force from the store, reusing the compiled versions of `previous`
/// whose text is unchanged. Every bound name must have an active version.
pub async fn load_rollout(
    store: &dyn Store,
    compiler: &dyn PolicyCompiler,
    bindings: &Bindings,
    previous: Option<&Rollout>,
) -> Result<Rollout, RolloutError> {
    let generation = store.access_generation().await?.policies;
    let versions = store.policies_in_force().await?;
    let reuse = previous.map(Rollout::compiled).unwrap_or_default();
    let mut active: HashMap<String, Arc<Policy>> = HashMap::new();
    let mut shadow: HashMap<String, Arc<Policy>> = HashMap::new();
    let mut canary: HashMap<String, Canary> = HashMap::new();
    for version in &versions {
        let key = (version.reference().to_string(), version.sha256.clone());
        let policy =
            match reuse.get(&key) {
                Some(policy) => policy.clone(),
                None => Arc::new(compile_version(compiler, version).await.map_err(|message| {
                    RolloutError::Compile { policy: version.reference().to_string(), status: version.status, message }
                })?),
            };
        match version.status {
            PolicyStatus::Active => {
                active.insert(version.name.clone(), policy);
            }
            PolicyStatus::Shadow => {
                shadow.insert(version.name.clone(), policy);
            }
            PolicyStatus::Canary => {
                let share = version.canary_share.unwrap_or(0.0);
                canary.insert(version.name.clone(), Canary { policy, share });
            }
            _ => {}
        }
    }
    let mut required: Vec<(String, String)> = vec![("*".to_owned(), bindings.default_name.clone())];
    required.extend(bindings.apps.iter().map(|(app, name)| (app.clone(), name.clone())));
    for (app, name) in required {
        if !active.contains_key(&name) {
            return Err(RolloutError::Unbound { app, name });
        }
    }
    let default_active = active
        .get(&bindings.default_name)
        .cloned()
        .ok_or_else(|| RolloutError::Unbound { app: "*".to_owned(), name: bindings.default_name.clone() })?;
    let names = active
        .into_iter()
        .map(|(name, active)| {
            let slot = NameRollout { active, shadow: shadow.remove(&name), canary: canary.remove(&name) };
            (name, slot)
        })
        .collect();
    Ok(Rollout { bindings: bindings.clone(), default_active, names, generation: Some(generation) })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: &str = keel_policy::DEFAULT_PACK;

    fn policy(version: &str) -> Arc<Policy> {
        let current = Policy::parse("default.toml", DEFAULT).unwrap().reference().version;
        let text = DEFAULT.replacen(&format!("version = \"{current}\""), &format!("version = \"{version}\""), 1);
        Arc::new(Policy::parse("default.toml", &text).unwrap())
    }

    fn with_canary(share: f64) -> Rollout {
        let mut rollout = Rollout::single(policy("1"));
        if let Some(slot) = rollout.names.get_mut("default") {
            slot.canary = Some(Canary { policy: policy("2"), share });
            slot.shadow = Some(policy("3"));
        }
        rollout
    }

    #[test]
    fn the_same_user_always_gets_the_same_version() {
        let rollout = with_canary(0.3);
        for user in ["alice", "bob", "顧客-0042", ""] {
            let first = rollout.select("any", user).unwrap();
            for _ in 0..20 {
                let again = rollout.select("any", user).unwrap();
                assert_eq!(again.enforce.reference(), first.enforce.reference(), "{user}");
            }
            assert_eq!(first.shadow.unwrap().reference().version, "3");
        }
    }

    #[test]
    fn the_canary_share_holds_within_a_binomial_bound() {
        for share in [0.05, 0.1, 0.5] {
            let rollout = with_canary(share);
            let n = 20_000u32;
            let hits = (0..n).filter(|i| rollout.select("app", &format!("user-{i}")).unwrap().canary).count() as f64;
            let expected = share * f64::from(n);
            // Five standard deviations of a binomial(n, share): a failure is not bad luck.
            let bound = 5.0 * (f64::from(n) * share * (1.0 - share)).sqrt();
            assert!((hits - expected).abs() < bound, "share {share}: {hits} of {n} (expected {expected} ± {bound})");
        }
    }

    #[test]
    fn a_new_canary_version_reshuffles_users() {
        let a = PolicyRef { name: "p".into(), version: "2".into() };
        let b = PolicyRef { name: "p".into(), version: "3".into() };
        let moved = (0..2000)
            .filter(|i| (canary_point(&format!("u{i}"), &a) < 0.5) != (canary_point(&format!("u{i}"), &b) < 0.5))
            .count();
        assert!((800..1200).contains(&moved), "about half of the users change side: {moved}");
        assert!((0.0..1.0).contains(&canary_point("x", &a)));
    }

    #[test]
    fn apps_use_their_bound_name_else_the_default() {
        let mut rollout = Rollout::single(policy("1"));
        let billing = Arc::new(
            Policy::parse("b.toml", &DEFAULT.replacen("name = \"default\"", "name = \"billing\"", 1)).unwrap(),
        );
        rollout = rollout.with_active(billing);
        rollout.bindings.apps.insert("shop".into(), "billing".into());
        assert_eq!(rollout.select("shop", "u").unwrap().enforce.reference().name, "billing");
        assert_eq!(rollout.select("support", "u").unwrap().enforce.reference().name, "default");
        assert!(!rollout.select("support", "u").unwrap().canary);
        rollout.bindings.apps.insert("lost".into(), "nothing".into());
        assert!(rollout.select("lost", "u").is_none());
    }
}
