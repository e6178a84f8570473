//! Alignment KPIs per time bucket, from the facts the store keeps about interactions, their
//! feedback and their handoffs.
//!
//! Every fact is placed in the bucket of its *interaction's* time, so a bucket's response rate
//! (interactions with a satisfaction score / interactions) and handoff rate compare like with
//! like even when the feedback came a day later. When an interaction got several feedback
//! events, the latest word on each question wins (its last satisfaction score, its last
//! wrong-answer flag): the user changed their mind, they did not answer twice.
//!
//! Rates carry Wilson intervals; means carry t intervals (bootstrap for time to human and
//! latency, which are skewed). A figure that cannot be estimated (a rate with no trials, a mean
//! of fewer than two values) is `None`, never a misleading 0.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{MonitorError, Result};
use crate::stats::{
    bootstrap_mean_interval, wilson_interval, MeanEstimate, Moments, Percentiles, RateEstimate,
    SatisfactionDistribution,
};

/// Resamples of the bootstrap intervals (time to human, latency).
const BOOTSTRAP_RESAMPLES: usize = 1000;

/// Seed of the bootstrap intervals: the same data always gives the same interval.
const BOOTSTRAP_SEED: u64 = 0x6b65_656c;

/// The width of a KPI bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BucketWidth {
    /// One minute.
    Minute,
    /// One hour.
    Hour,
    /// One UTC day.
    Day,
}

impl BucketWidth {
    /// The width in seconds.
    pub fn seconds(self) -> i64 {
        match self {
            BucketWidth::Minute => 60,
            BucketWidth::Hour => 3_600,
            BucketWidth::Day => 86_400,
        }
    }

    /// The start of the bucket holding `at` (buckets are aligned on the unix epoch, in UTC).
    pub fn start_of(self, at: OffsetDateTime) -> OffsetDateTime {
        let t = at.unix_timestamp();
        let start = t.div_euclid(self.seconds()) * self.seconds();
        OffsetDateTime::from_unix_timestamp(start).unwrap_or(at)
    }
}

impl std::str::FromStr for BucketWidth {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "minute" => Ok(BucketWidth::Minute),
            "hour" => Ok(BucketWidth::Hour),
            "day" => Ok(BucketWidth::Day),
            other => Err(format!("unknown bucket `{other}` (use minute, hour or day)")),
        }
    }
}

/// What the KPIs need of one stored interaction.
#[derive(Debug, Clone, PartialEq)]
pub struct InteractionFacts {
    /// The interaction's id, which its feedback and handoff refer to.
    pub id: String,
    /// When it happened (for ingested interactions: the historical time).
    pub at: OffsetDateTime,
    /// The final action (`allow`, `flag`, `redact`, `escalate`, `block`).
    pub action: String,
    /// Every check that ran, with whether it hit.
    pub checks: Vec<(String, bool)>,
    /// Upstream latency in milliseconds, when the upstream was called and timed.
    pub upstream_ms: Option<f64>,
    /// Prompt tokens the upstream reported.
    pub prompt_tokens: Option<u64>,
    /// Completion tokens the upstream reported.
    pub completion_tokens: Option<u64>,
    /// Whether the model's answer refuses; `None` when there is no answer text to judge.
    pub refused: Option<bool>,
}

/// What the KPIs need of one feedback event, in the order the events were stored.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackFacts {
    /// The interaction it is about.
    pub interaction_id: String,
    /// A satisfaction score 1–5, if given.
    pub satisfaction: Option<u8>,
    /// Thumbs up (`true`) or down (`false`), if given.
    pub thumbs_up: Option<bool>,
    /// Whether the user reported the answer wrong, if said.
    pub wrong_answer: Option<bool>,
}

/// What the KPIs need of one handoff.
#[derive(Debug, Clone, PartialEq)]
pub struct HandoffFacts {
    /// The interaction handed off.
    pub interaction_id: String,
    /// When the handoff was requested.
    pub requested_at: OffsetDateTime,
    /// When a human took it, if one did.
    pub taken_at: Option<OffsetDateTime>,
}

/// What the KPIs need of one settled review: the final label of a case.
#[derive(Debug, Clone, PartialEq)]
pub struct ReviewFacts {
    /// The interaction reviewed.
    pub interaction_id: String,
    /// True when the final label says the answer was wrong (`wrong_answer`).
    pub wrong_answer: bool,
}

/// Satisfaction in one bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SatisfactionKpi {
    /// Mean score with a t interval (`None` with fewer than two scores).
    pub mean: Option<MeanEstimate>,
    /// Counts of scores 1..5 (`distribution[0]` is the number of 1s).
    pub distribution: [u64; 5],
    /// Interactions with a score / interactions.
    pub response_rate: Option<RateEstimate>,
}

/// Wrong-answer rates in one bucket, by who said so.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WrongAnswerKpi {
    /// Interactions a user reported wrong / interactions.
    pub user_reports: Option<RateEstimate>,
    /// Interactions a reviewer labelled `wrong_answer` / interactions with a settled review
    /// (an interaction with several cases counts once, wrong when any says so).
    pub reviewer_labels: Option<RateEstimate>,
}

/// Handoffs to a human in one bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandoffKpi {
    /// Interactions handed off / interactions.
    pub rate: Option<RateEstimate>,
    /// Handoffs a human took.
    pub taken: u64,
    /// Seconds from requested to taken: mean with a bootstrap interval.
    pub time_to_human_s: Option<MeanEstimate>,
    /// Seconds from requested to taken: p50, p90, p99.
    pub time_to_human_percentiles_s: Option<Percentiles>,
}

/// Upstream latency in one bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyKpi {
    /// Milliseconds: mean with a bootstrap interval.
    pub mean_ms: Option<MeanEstimate>,
    /// Milliseconds: p50, p90, p99.
    pub percentiles_ms: Option<Percentiles>,
}

/// Tokens in one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenKpi {
    /// Prompt tokens reported.
    pub prompt: u64,
    /// Completion tokens reported.
    pub completion: u64,
    /// Interactions whose upstream reported usage.
    pub reported: u64,
}

/// Every KPI of one time bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KpiBucket {
    /// Start of the bucket (inclusive).
    #[serde(with = "time::serde::rfc3339")]
    pub start: OffsetDateTime,
    /// Interactions in the bucket.
    pub interactions: u64,
    /// Satisfaction.
    pub satisfaction: SatisfactionKpi,
    /// Thumbs down / thumbs given.
    pub thumbs_down_rate: Option<RateEstimate>,
    /// Wrong answers.
    pub wrong_answer: WrongAnswerKpi,
    /// Handoffs.
    pub handoff: HandoffKpi,
    /// Per check: interactions where it hit / interactions where it ran.
    pub check_hit_rates: BTreeMap<String, RateEstimate>,
    /// Per final action: interactions with it / interactions.
    pub action_mix: BTreeMap<String, RateEstimate>,
    /// Answers that refuse / answers with stored text.
    pub refusal_rate: Option<RateEstimate>,
    /// Upstream latency.
    pub latency: LatencyKpi,
    /// Tokens.
    pub tokens: TokenKpi,
}

/// The facts of one bucket, gathered before the estimates are computed.
#[derive(Default)]
struct Gathered<'a> {
    interactions: Vec<&'a InteractionFacts>,
    satisfaction: HashMap<&'a str, u8>,
    thumbs: HashMap<&'a str, bool>,
    wrong: HashMap<&'a str, bool>,
    handoffs: HashMap<&'a str, &'a HandoffFacts>,
    reviewed: HashMap<&'a str, bool>,
}

/// KPIs per bucket of `width`, oldest first, at `confidence` (e.g. 0.95). Only buckets with at
/// least one interaction appear; feedback and handoffs of interactions not in `interactions`
/// are ignored (they belong to another app or time range).
pub fn compute(
    width: BucketWidth,
    interactions: &[InteractionFacts],
    feedback: &[FeedbackFacts],
    handoffs: &[HandoffFacts],
    reviews: &[ReviewFacts],
    confidence: f64,
) -> Result<Vec<KpiBucket>> {
    compute_by(|at| width.start_of(at), interactions, feedback, handoffs, reviews, confidence)
}

/// KPIs of everything given as one bucket starting at `start`; `None` when there are no
/// interactions.
pub fn compute_overall(
    start: OffsetDateTime,
    interactions: &[InteractionFacts],
    feedback: &[FeedbackFacts],
    handoffs: &[HandoffFacts],
    reviews: &[ReviewFacts],
    confidence: f64,
) -> Result<Option<KpiBucket>> {
    Ok(compute_by(|_| start, interactions, feedback, handoffs, reviews, confidence)?.pop())
}

fn compute_by(
    start_of: impl Fn(OffsetDateTime) -> OffsetDateTime,
    interactions: &[InteractionFacts],
    feedback: &[FeedbackFacts],
    handoffs: &[HandoffFacts],
    reviews: &[ReviewFacts],
    confidence: f64,
) -> Result<Vec<KpiBucket>> {
    let mut buckets: BTreeMap<OffsetDateTime, Gathered<'_>> = BTreeMap::new();
    let mut bucket_of: HashMap<&str, OffsetDateTime> = HashMap::with_capacity(interactions.len());
    for i in interactions {
        let start = start_of(i.at);
        bucket_of.insert(i.id.as_str(), start);
        buckets.entry(start).or_default().interactions.push(i);
    }
    for f in feedback {
        let Some(g) = bucket_of.get(f.interaction_id.as_str()).and_then(|b| buckets.get_mut(b)) else { continue };
        let id = f.interaction_id.as_str();
        if let Some(score) = f.satisfaction {
            if !(1..=5).contains(&score) {
                return Err(MonitorError::InvalidValue {
                    what: "satisfaction score",
                    reason: format!("scores run from 1 to 5, got {score}"),
                });
            }
            g.satisfaction.insert(id, score);
        }
        if let Some(up) = f.thumbs_up {
            g.thumbs.insert(id, up);
        }
        if let Some(wrong) = f.wrong_answer {
            g.wrong.insert(id, wrong);
        }
    }
    for h in handoffs {
        let id = h.interaction_id.as_str();
        let Some(g) = bucket_of.get(id).and_then(|b| buckets.get_mut(b)) else { continue };
        g.handoffs.entry(id).or_insert(h);
    }
    for r in reviews {
        let id = r.interaction_id.as_str();
        let Some(g) = bucket_of.get(id).and_then(|b| buckets.get_mut(b)) else { continue };
        *g.reviewed.entry(id).or_default() |= r.wrong_answer;
    }
    buckets.into_iter().map(|(start, g)| bucket(start, &g, confidence)).collect()
}

/// A rate, or `None` when there were no trials.
fn rate(successes: u64, trials: u64, confidence: f64) -> Result<Option<RateEstimate>> {
    if trials == 0 {
        return Ok(None);
    }
    wilson_interval(successes, trials, confidence).map(Some)
}

fn bootstrap(values: &[f64], confidence: f64) -> Result<Option<MeanEstimate>> {
    if values.len() < 2 {
        return Ok(None);
    }
    bootstrap_mean_interval(values, confidence, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED).map(Some)
}

fn percentiles(values: &[f64]) -> Result<Option<Percentiles>> {
    if values.is_empty() {
        return Ok(None);
    }
    Percentiles::of(values).map(Some)
}

fn bucket(start: OffsetDateTime, g: &Gathered<'_>, confidence: f64) -> Result<KpiBucket> {
    let n = g.interactions.len() as u64;
    let count = |it: &mut dyn Iterator<Item = bool>| it.filter(|b| *b).count() as u64;

    let mut distribution = SatisfactionDistribution::new();
    for &score in g.satisfaction.values() {
        distribution.record(score)?;
    }
    let moments: Moments = distribution.moments();
    let satisfaction = SatisfactionKpi {
        // Scores live on 1..=5, so a wide small-sample t interval is cut to the scale.
        mean: if moments.count() >= 2 {
            let mut estimate = moments.t_interval(confidence)?;
            estimate.lower = estimate.lower.max(1.0);
            estimate.upper = estimate.upper.min(5.0);
            Some(estimate)
        } else {
            None
        },
        distribution: distribution.counts,
        response_rate: rate(distribution.total(), n, confidence)?,
    };

    let thumbs_down = count(&mut g.thumbs.values().map(|up| !up));
    let wrong = count(&mut g.wrong.values().copied());

    let waits: Vec<f64> = g
        .handoffs
        .values()
        .filter_map(|h| h.taken_at.map(|t| (t - h.requested_at).as_seconds_f64().max(0.0)))
        .collect();
    let handoff = HandoffKpi {
        rate: rate(g.handoffs.len() as u64, n, confidence)?,
        taken: waits.len() as u64,
        time_to_human_s: bootstrap(&waits, confidence)?,
        time_to_human_percentiles_s: percentiles(&waits)?,
    };

    let mut checks: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let mut actions: BTreeMap<&str, u64> = BTreeMap::new();
    let mut latencies = Vec::new();
    let mut tokens = TokenKpi { prompt: 0, completion: 0, reported: 0 };
    let (mut refused, mut judged) = (0u64, 0u64);
    for i in &g.interactions {
        // A check that ran twice on one interaction (input and output) counts once: it hit
        // the interaction or it did not.
        let mut seen: BTreeMap<&str, bool> = BTreeMap::new();
        for (name, hit) in &i.checks {
            *seen.entry(name.as_str()).or_default() |= *hit;
        }
        for (name, hit) in seen {
            let entry = checks.entry(name).or_default();
            entry.1 += 1;
            entry.0 += u64::from(hit);
        }
        *actions.entry(i.action.as_str()).or_default() += 1;
        if let Some(ms) = i.upstream_ms.filter(|ms| ms.is_finite()) {
            latencies.push(ms);
        }
        if i.prompt_tokens.is_some() || i.completion_tokens.is_some() {
            tokens.reported += 1;
            tokens.prompt += i.prompt_tokens.unwrap_or(0);
            tokens.completion += i.completion_tokens.unwrap_or(0);
        }
        if let Some(r) = i.refused {
            judged += 1;
            refused += u64::from(r);
        }
    }

    Ok(KpiBucket {
        start,
        interactions: n,
        satisfaction,
        thumbs_down_rate: rate(thumbs_down, g.thumbs.len() as u64, confidence)?,
        wrong_answer: WrongAnswerKpi {
            user_reports: rate(wrong, n, confidence)?,
            reviewer_labels: rate(count(&mut g.reviewed.values().copied()), g.reviewed.len() as u64, confidence)?,
        },
        handoff,
        check_hit_rates: checks
            .into_iter()
            .map(|(name, (hits, ran))| Ok((name.to_owned(), wilson_interval(hits, ran, confidence)?)))
            .collect::<Result<_>>()?,
        action_mix: actions
            .into_iter()
            .map(|(action, k)| Ok((action.to_owned(), wilson_interval(k, n, confidence)?)))
            .collect::<Result<_>>()?,
        refusal_rate: rate(refused, judged, confidence)?,
        latency: LatencyKpi { mean_ms: bootstrap(&latencies, confidence)?, percentiles_ms: percentiles(&latencies)? },
        tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn close(got: f64, want: f64, tol: f64) {
        assert!((got - want).abs() <= tol, "got {got}, want {want}");
    }

    fn interaction(id: &str, at: OffsetDateTime, action: &str, pii_hit: bool, ms: f64) -> InteractionFacts {
        InteractionFacts {
            id: id.to_owned(),
            at,
            action: action.to_owned(),
            checks: vec![("pii".to_owned(), pii_hit), ("injection".to_owned(), false)],
            upstream_ms: Some(ms),
            prompt_tokens: Some(10),
            completion_tokens: Some(5),
            refused: Some(action == "block"),
        }
    }

    fn feedback(id: &str, satisfaction: Option<u8>, wrong: Option<bool>) -> FeedbackFacts {
        FeedbackFacts { interaction_id: id.to_owned(), satisfaction, thumbs_up: None, wrong_answer: wrong }
    }

    /// Day 1 holds four interactions a..d, day 2 one interaction e.
    ///
    /// Day 1 by hand:
    /// - scores: a 4 → 5 (latest wins), b 3, c 4 → {3, 4, 5}: mean 4, s = 1,
    ///   t(0.975, 2) = 4.302653 → 4 ± 4.302653 · 1/√3 = 4 ± 2.484138 → [1.515862, 6.484138],
    ///   cut to the 1–5 scale → [1.515862, 5];
    ///   distribution [0, 0, 1, 1, 1]; response rate 3/4.
    /// - wrong answers: b said wrong, then d said not wrong → 1 of 4 = 0.25. Reviewers: a
    ///   labelled ok, c labelled wrong in one case and ok in another (wrong wins), e (day 2)
    ///   wrong → day 1: 1 of 2 reviewed.
    /// - handoffs: c requested at 12:00:00, taken 12:01:00 (60 s); d requested, not taken →
    ///   rate 2/4, one wait of 60 s (p50 = p90 = 60).
    /// - pii hit on a and b → 2/4; injection never → 0/4; actions: allow 3, block 1.
    /// - latency 100, 200, 300, 400 ms: mean 250, p50 = 250, p90 = 300 + 0.7·100 = 370.
    /// - tokens: 4 · 10 prompt, 4 · 5 completion; refusals: d (block) → 1/4.
    #[test]
    fn kpis_match_hand_computed_figures() {
        let d1 = datetime!(2026-03-01 09:00 UTC);
        let d2 = datetime!(2026-03-02 09:00 UTC);
        let interactions = vec![
            interaction("a", d1, "allow", true, 100.0),
            interaction("b", d1 + time::Duration::hours(1), "allow", true, 200.0),
            interaction("c", d1 + time::Duration::hours(2), "allow", false, 300.0),
            interaction("d", d1 + time::Duration::hours(3), "block", false, 400.0),
            interaction("e", d2, "allow", false, 50.0),
        ];
        let feedback = vec![
            feedback("a", Some(4), None),
            feedback("b", Some(3), Some(true)),
            feedback("a", Some(5), None),
            feedback("c", Some(4), None),
            feedback("d", None, Some(false)),
            feedback("elsewhere", Some(1), Some(true)),
        ];
        let noon = datetime!(2026-03-01 12:00 UTC);
        let handoffs = vec![
            HandoffFacts {
                interaction_id: "c".into(),
                requested_at: noon,
                taken_at: Some(noon + time::Duration::minutes(1)),
            },
            HandoffFacts { interaction_id: "d".into(), requested_at: noon, taken_at: None },
        ];
        let review = |id: &str, wrong_answer| ReviewFacts { interaction_id: id.into(), wrong_answer };
        let reviews = vec![review("a", false), review("c", true), review("c", false), review("e", true)];
        let buckets = compute(BucketWidth::Day, &interactions, &feedback, &handoffs, &reviews, 0.95).unwrap();
        assert_eq!(buckets.len(), 2);
        let b = &buckets[0];
        assert_eq!(b.start, datetime!(2026-03-01 00:00 UTC));
        assert_eq!(b.interactions, 4);
        let mean = b.satisfaction.mean.unwrap();
        close(mean.mean, 4.0, 1e-12);
        close(mean.std_dev, 1.0, 1e-12);
        close(mean.lower, 1.515862, 1e-5);
        close(mean.upper, 5.0, 1e-12);
        assert_eq!(b.satisfaction.distribution, [0, 0, 1, 1, 1]);
        let response = b.satisfaction.response_rate.unwrap();
        assert_eq!((response.successes, response.trials), (3, 4));
        let wrong = b.wrong_answer.user_reports.unwrap();
        assert_eq!((wrong.successes, wrong.trials), (1, 4));
        let reviewed = b.wrong_answer.reviewer_labels.unwrap();
        assert_eq!((reviewed.successes, reviewed.trials), (1, 2), "shown apart from the user reports");
        let handoff = b.handoff.rate.unwrap();
        assert_eq!((handoff.successes, handoff.trials), (2, 4));
        assert_eq!(b.handoff.taken, 1);
        assert!(b.handoff.time_to_human_s.is_none(), "one wait is too few for an interval");
        let waits = b.handoff.time_to_human_percentiles_s.unwrap();
        close(waits.p50, 60.0, 1e-12);
        close(waits.p90, 60.0, 1e-12);
        assert_eq!((b.check_hit_rates["pii"].successes, b.check_hit_rates["pii"].trials), (2, 4));
        assert_eq!(b.check_hit_rates["injection"].successes, 0);
        assert_eq!(b.action_mix["allow"].successes, 3);
        assert_eq!(b.action_mix["block"].successes, 1);
        let refusal = b.refusal_rate.unwrap();
        assert_eq!((refusal.successes, refusal.trials), (1, 4));
        let latency = b.latency.mean_ms.unwrap();
        close(latency.mean, 250.0, 1e-12);
        assert!(latency.lower < 250.0 && latency.upper > 250.0);
        let p = b.latency.percentiles_ms.unwrap();
        close(p.p50, 250.0, 1e-12);
        close(p.p90, 370.0, 1e-12);
        assert_eq!(b.tokens, TokenKpi { prompt: 40, completion: 20, reported: 4 });

        let overall = compute_overall(d1, &interactions, &feedback, &handoffs, &reviews, 0.95).unwrap().unwrap();
        assert_eq!(overall.interactions, 5);
        // Scores {3, 4, 5} of 5 interactions; e has none.
        assert_eq!(overall.satisfaction.response_rate.unwrap().trials, 5);
        assert_eq!(overall.satisfaction.distribution, [0, 0, 1, 1, 1]);

        let e = &buckets[1];
        assert_eq!(e.interactions, 1);
        assert!(e.satisfaction.mean.is_none());
        assert_eq!(e.satisfaction.response_rate.unwrap().successes, 0);
        assert_eq!(e.handoff.rate.unwrap().successes, 0);
    }

    proptest::proptest! {
        /// However the traffic falls into buckets, the buckets' counts add up to the overall ones.
        #[test]
        fn buckets_add_up_to_the_whole_range(
            rows in proptest::collection::vec((0i64..3 * 86_400, proptest::option::of(1u8..=5), proptest::bool::ANY), 1..60)
        ) {
            let t0 = datetime!(2026-03-01 00:00 UTC);
            let interactions: Vec<InteractionFacts> = rows
                .iter()
                .enumerate()
                .map(|(k, (s, _, hit))| interaction(&k.to_string(), t0 + time::Duration::seconds(*s), "allow", *hit, 10.0))
                .collect();
            let feedback: Vec<FeedbackFacts> =
                rows.iter().enumerate().map(|(k, (_, score, _))| feedback(&k.to_string(), *score, Some(false))).collect();
            let buckets = compute(BucketWidth::Hour, &interactions, &feedback, &[], &[], 0.95).unwrap();
            let overall = compute_overall(t0, &interactions, &feedback, &[], &[], 0.95).unwrap().unwrap();
            let sum = |f: &dyn Fn(&KpiBucket) -> u64| buckets.iter().map(f).sum::<u64>();
            proptest::prop_assert_eq!(sum(&|b| b.interactions), overall.interactions);
            proptest::prop_assert_eq!(sum(&|b| b.satisfaction.distribution.iter().sum()), rows.iter().filter(|r| r.1.is_some()).count() as u64);
            proptest::prop_assert_eq!(sum(&|b| b.check_hit_rates["pii"].successes), overall.check_hit_rates["pii"].successes);
            for b in &buckets {
                let r = b.satisfaction.response_rate.unwrap();
                proptest::prop_assert!(r.lower <= r.estimate && r.estimate <= r.upper);
            }
        }
    }

    #[test]
    fn buckets_align_on_the_epoch() {
        let at = datetime!(2026-03-01 09:41:17 UTC);
        assert_eq!(BucketWidth::Minute.start_of(at), datetime!(2026-03-01 09:41 UTC));
        assert_eq!(BucketWidth::Hour.start_of(at), datetime!(2026-03-01 09:00 UTC));
        assert_eq!(BucketWidth::Day.start_of(at), datetime!(2026-03-01 00:00 UTC));
        assert_eq!("hour".parse::<BucketWidth>(), Ok(BucketWidth::Hour));
        assert!("week".parse::<BucketWidth>().unwrap_err().contains("minute, hour or day"));
    }

    #[test]
    fn an_out_of_range_score_is_refused() {
        let i = vec![interaction("a", datetime!(2026-03-01 09:00 UTC), "allow", false, 1.0)];
        let err = compute(BucketWidth::Day, &i, &[feedback("a", Some(6), None)], &[], &[], 0.95).unwrap_err();
        assert!(err.to_string().contains("got 6"), "{err}");
    }
}
