//! Drift alerts with hysteresis: the state machine that turns a detector's statistic into
//! alerts an operator can act on, without flapping.
//!
//! An alert goes `open → acknowledged → resolved` (an operator may also resolve an open alert
//! directly). Every other move is an error: acknowledging twice, acknowledging or resolving a
//! resolved alert, acting when no alert exists.
//!
//! Hysteresis: a new alert opens when the statistic reaches `open_threshold` *and* the tracker
//! is armed. Opening disarms it; it re-arms only after the statistic has stayed below the lower
//! `resolve_threshold` for `rearm_samples` consecutive observations. So a statistic hovering
//! around the open threshold yields one alert, not one per crossing, and resolving an alert
//! while the stream is still disturbed does not immediately re-open it.

use serde::{Deserialize, Serialize};

use crate::drift::{DriftDetector, DriftSignal};
use crate::error::{finite, MonitorError, Result};

/// Thresholds and re-arm length of one alert tracker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HysteresisConfig {
    /// Statistic at or above which an (armed) tracker opens an alert.
    pub open_threshold: f64,
    /// Statistic below which the stream counts as quiet again; must be below `open_threshold`.
    pub resolve_threshold: f64,
    /// Consecutive quiet observations needed before another alert may open (at least 1).
    pub rearm_samples: u64,
}

impl HysteresisConfig {
    /// Hysteresis for a detector: open at its own threshold, quiet below `resolve_fraction` of
    /// it (e.g. 0.5), re-arm after `rearm_samples` quiet observations.
    pub fn for_detector(detector: &dyn DriftDetector, resolve_fraction: f64, rearm_samples: u64) -> Self {
        let t = detector.threshold();
        Self { open_threshold: t, resolve_threshold: t * resolve_fraction, rearm_samples }
    }

    /// Checks the thresholds are finite and ordered and the re-arm length positive.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, reason| Err(MonitorError::InvalidConfig { method: "alert", field, reason });
        if !self.open_threshold.is_finite() {
            return bad("open_threshold", format!("must be a finite number, got {}", self.open_threshold));
        }
        if !self.resolve_threshold.is_finite() || self.resolve_threshold >= self.open_threshold {
            return bad(
                "resolve_threshold",
                format!(
                    "must be a finite number below open_threshold ({}), got {}",
                    self.open_threshold, self.resolve_threshold
                ),
            );
        }
        if self.rearm_samples == 0 {
            return bad("rearm_samples", "must be at least 1, got 0".to_owned());
        }
        Ok(())
    }
}

/// Where an alert is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    /// Raised, nobody has looked yet.
    Open,
    /// An operator has taken it.
    Acknowledged,
    /// Closed.
    Resolved,
}

impl AlertState {
    /// Every state, in lifecycle order.
    pub const ALL: [AlertState; 3] = [AlertState::Open, AlertState::Acknowledged, AlertState::Resolved];

    /// The state's name as used in messages.
    pub fn name(self) -> &'static str {
        match self {
            AlertState::Open => "open",
            AlertState::Acknowledged => "acknowledged",
            AlertState::Resolved => "resolved",
        }
    }

    /// The state `action` leads to from this one, or `None` when the machine forbids it:
    /// `open → acknowledged`, and `open | acknowledged → resolved`.
    pub fn after(self, action: AlertAction) -> Option<AlertState> {
        match (self, action) {
            (AlertState::Open, AlertAction::Acknowledge) => Some(AlertState::Acknowledged),
            (AlertState::Open | AlertState::Acknowledged, AlertAction::Resolve) => Some(AlertState::Resolved),
            _ => None,
        }
    }
}

impl std::str::FromStr for AlertState {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        AlertState::ALL
            .into_iter()
            .find(|state| state.name() == s)
            .ok_or_else(|| format!("unknown alert state `{s}` (expected open, acknowledged or resolved)"))
    }
}

/// What an operator can do to an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertAction {
    /// Take it: `open → acknowledged`.
    Acknowledge,
    /// Close it: `open | acknowledged → resolved`.
    Resolve,
}

impl AlertAction {
    /// The action's name as used in messages.
    pub fn name(self) -> &'static str {
        match self {
            AlertAction::Acknowledge => "acknowledge",
            AlertAction::Resolve => "resolve",
        }
    }
}

/// One drift alert and what it recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Sequence number within its tracker, from 1.
    pub id: u64,
    /// Current state.
    pub state: AlertState,
    /// The tracker's observation count when the alert opened.
    pub opened_at: u64,
    /// The statistic that opened it.
    pub statistic: f64,
    /// The threshold it reached.
    pub threshold: f64,
    /// The largest statistic seen while it was open or acknowledged.
    pub peak_statistic: f64,
    /// The detector's signal (window, sample sizes, detail), when a detector opened it.
    pub signal: Option<DriftSignal>,
    /// Who acknowledged it.
    pub acknowledged_by: Option<String>,
    /// Observation count at acknowledgement.
    pub acknowledged_at: Option<u64>,
    /// Observation count at resolution.
    pub resolved_at: Option<u64>,
}

/// What an observation changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AlertEvent {
    /// A new alert opened.
    Opened {
        /// The new alert.
        alert: Alert,
    },
    /// The statistic has been quiet long enough; the next crossing may open a new alert.
    Rearmed {
        /// Observation count when it re-armed.
        at: u64,
    },
}

/// The hysteresis state machine for one monitored stream. Serialisable, so it survives restarts
/// with the detector it follows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertTracker {
    config: HysteresisConfig,
    current: Option<Alert>,
    armed: bool,
    quiet_run: u64,
    observations: u64,
}

impl AlertTracker {
    /// A tracker with no alert, armed.
    pub fn new(config: HysteresisConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self { config, current: None, armed: true, quiet_run: 0, observations: 0 })
    }

    /// The configuration.
    pub fn config(&self) -> &HysteresisConfig {
        &self.config
    }

    /// The latest alert (open, acknowledged or resolved), if any.
    pub fn current(&self) -> Option<&Alert> {
        self.current.as_ref()
    }

    /// Whether a crossing would open a new alert now.
    pub fn is_armed(&self) -> bool {
        self.armed
    }

    /// Consecutive observations below the resolve threshold so far.
    pub fn quiet_run(&self) -> u64 {
        self.quiet_run
    }

    /// Feeds one value of the statistic.
    pub fn observe(&mut self, statistic: f64) -> Result<Option<AlertEvent>> {
        self.step(statistic, None)
    }

    /// Feeds one detector update: the signal if it fired (its statistic is the one that counts,
    /// since detectors start afresh after signalling), otherwise the detector's current statistic.
    pub fn observe_detector(
        &mut self,
        signal: Option<&DriftSignal>,
        detector: &dyn DriftDetector,
    ) -> Result<Option<AlertEvent>> {
        match signal {
            Some(s) => self.step(s.statistic, Some(s.clone())),
            None => self.step(detector.statistic(), None),
        }
    }

    fn step(&mut self, statistic: f64, signal: Option<DriftSignal>) -> Result<Option<AlertEvent>> {
        let statistic = finite("an alert statistic", statistic)?;
        self.observations += 1;
        if statistic < self.config.resolve_threshold {
            self.quiet_run += 1;
        } else {
            self.quiet_run = 0;
        }
        let active = self.current.as_ref().is_some_and(|a| a.state != AlertState::Resolved);
        if let Some(alert) = self.current.as_mut().filter(|_| active) {
            alert.peak_statistic = alert.peak_statistic.max(statistic);
        }
        let mut event = None;
        if !self.armed && self.quiet_run >= self.config.rearm_samples {
            self.armed = true;
            event = Some(AlertEvent::Rearmed { at: self.observations });
        }
        if !active && self.armed && statistic >= self.config.open_threshold {
            let alert = Alert {
                id: self.current.as_ref().map_or(1, |a| a.id + 1),
                state: AlertState::Open,
                opened_at: self.observations,
                statistic,
                threshold: signal.as_ref().map_or(self.config.open_threshold, |s| s.threshold),
                peak_statistic: statistic,
                signal,
                acknowledged_by: None,
                acknowledged_at: None,
                resolved_at: None,
            };
            self.armed = false;
            self.quiet_run = 0;
            self.current = Some(alert.clone());
            event = Some(AlertEvent::Opened { alert });
        }
        Ok(event)
    }

    /// `open → acknowledged`, recording who.
    pub fn acknowledge(&mut self, by: &str) -> Result<&Alert> {
        let at = self.observations;
        let alert = self.current.as_mut().ok_or(MonitorError::NoAlert { action: "acknowledge" })?;
        alert.state = alert.state.after(AlertAction::Acknowledge).ok_or(MonitorError::IllegalTransition {
            alert_id: alert.id,
            action: "acknowledge",
            state: alert.state.name(),
        })?;
        alert.acknowledged_by = Some(by.to_owned());
        alert.acknowledged_at = Some(at);
        Ok(alert)
    }

    /// `open | acknowledged → resolved`. The tracker stays disarmed until the statistic has
    /// been quiet for `rearm_samples` observations.
    pub fn resolve(&mut self) -> Result<&Alert> {
        let at = self.observations;
        let alert = self.current.as_mut().ok_or(MonitorError::NoAlert { action: "resolve" })?;
        alert.state = alert.state.after(AlertAction::Resolve).ok_or(MonitorError::IllegalTransition {
            alert_id: alert.id,
            action: "resolve",
            state: alert.state.name(),
        })?;
        alert.resolved_at = Some(at);
        Ok(alert)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker() -> AlertTracker {
        AlertTracker::new(HysteresisConfig { open_threshold: 10.0, resolve_threshold: 5.0, rearm_samples: 3 }).unwrap()
    }

    fn opened(e: Option<AlertEvent>) -> bool {
        matches!(e, Some(AlertEvent::Opened { .. }))
    }

    #[test]
    fn open_acknowledge_resolve() {
        let mut t = tracker();
        assert!(!opened(t.observe(4.0).unwrap()));
        assert!(opened(t.observe(12.0).unwrap()));
        let a = t.current().unwrap();
        assert_eq!((a.id, a.state, a.opened_at, a.statistic), (1, AlertState::Open, 2, 12.0));
        t.observe(15.0).unwrap();
        assert_eq!(t.current().unwrap().peak_statistic, 15.0);
        assert_eq!(t.acknowledge("ana").unwrap().state, AlertState::Acknowledged);
        assert_eq!(t.resolve().unwrap().state, AlertState::Resolved);
        assert_eq!(t.current().unwrap().acknowledged_by.as_deref(), Some("ana"));
    }

    #[test]
    fn illegal_transitions_are_errors() {
        let mut t = tracker();
        assert_eq!(t.acknowledge("x").unwrap_err().to_string(), "cannot acknowledge: no alert has been opened yet");
        assert_eq!(t.resolve().unwrap_err().to_string(), "cannot resolve: no alert has been opened yet");
        t.observe(11.0).unwrap();
        t.acknowledge("x").unwrap();
        assert_eq!(t.acknowledge("y").unwrap_err().to_string(), "cannot acknowledge alert 1: it is acknowledged");
        t.resolve().unwrap();
        assert_eq!(t.resolve().unwrap_err().to_string(), "cannot resolve alert 1: it is resolved");
        assert_eq!(t.acknowledge("z").unwrap_err().to_string(), "cannot acknowledge alert 1: it is resolved");
        // An open alert may be resolved directly.
        let mut t = tracker();
        t.observe(11.0).unwrap();
        assert_eq!(t.resolve().unwrap().state, AlertState::Resolved);
    }

    #[test]
    fn hovering_statistic_does_not_flap() {
        let mut t = tracker();
        let mut opens = 0;
        // Hovers around the open threshold, never below the resolve threshold for long.
        for i in 0..1_000 {
            let s = if i % 2 == 0 { 10.5 } else { 9.0 };
            if opened(t.observe(s).unwrap()) {
                opens += 1;
                t.resolve().unwrap();
            }
        }
        assert_eq!(opens, 1, "one alert for a hovering statistic");
        // Two quiet samples are not enough to re-arm…
        t.observe(1.0).unwrap();
        t.observe(1.0).unwrap();
        assert!(!opened(t.observe(20.0).unwrap()));
        // …three are.
        for _ in 0..2 {
            t.observe(1.0).unwrap();
        }
        assert!(matches!(t.observe(1.0).unwrap(), Some(AlertEvent::Rearmed { .. })));
        assert!(opened(t.observe(20.0).unwrap()));
        assert_eq!(t.current().unwrap().id, 2);
    }

    #[test]
    fn no_new_alert_while_one_is_active_even_if_rearmed() {
        let mut t = tracker();
        t.observe(11.0).unwrap();
        for _ in 0..5 {
            t.observe(0.0).unwrap();
        }
        assert!(t.is_armed());
        assert!(!opened(t.observe(11.0).unwrap()), "still open: no second alert");
        t.resolve().unwrap();
        assert!(opened(t.observe(11.0).unwrap()), "quiet long enough before: opens at once");
    }

    #[test]
    fn config_validation() {
        let e = AlertTracker::new(HysteresisConfig { open_threshold: 1.0, resolve_threshold: 1.0, rearm_samples: 3 })
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid alert config: `resolve_threshold` must be a finite number below open_threshold (1), got 1"
        );
        let e = AlertTracker::new(HysteresisConfig { open_threshold: 1.0, resolve_threshold: 0.5, rearm_samples: 0 })
            .unwrap_err();
        assert_eq!(e.to_string(), "invalid alert config: `rearm_samples` must be at least 1, got 0");
        assert!(tracker().observe(f64::NAN).is_err());
    }

    #[test]
    fn state_machine_table() {
        use AlertAction::*;
        use AlertState::*;
        assert_eq!(Open.after(Acknowledge), Some(Acknowledged));
        assert_eq!(Open.after(Resolve), Some(Resolved));
        assert_eq!(Acknowledged.after(Resolve), Some(Resolved));
        assert_eq!(Acknowledged.after(Acknowledge), None);
        assert_eq!(Resolved.after(Acknowledge), None);
        assert_eq!(Resolved.after(Resolve), None);
        for state in AlertState::ALL {
            assert_eq!(state.name().parse::<AlertState>(), Ok(state));
        }
        assert!("closed".parse::<AlertState>().is_err());
    }

    #[test]
    fn survives_serde() {
        let mut t = tracker();
        t.observe(11.0).unwrap();
        t.acknowledge("ops").unwrap();
        let json = serde_json::to_string(&t).unwrap();
        let mut back: AlertTracker = serde_json::from_str(&json).unwrap();
        assert_eq!(back, t);
        back.resolve().unwrap();
    }
}
