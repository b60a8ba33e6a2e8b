//! Judging one bucket of one series: the detectors' verdict, what they learn from it, the
//! score rows, and the alert lifecycle.
//!
//! The engine judges the metrics of its stages this way as their buckets close; the
//! data-flow tracker judges the figures it measures for a stage (hop delays, end-to-end
//! latencies) the same way, on its own thread. Both keep a stage's series in a
//! [`Judged`] and hand it to a [`Scorer`].

use std::borrow::Cow;
use std::sync::Arc;

use serde::Serialize;

use crate::alert::{AlertFactory, AlertFacts, Notice, Observation, Rules, Severity, Track};
use crate::config::Direction;
use crate::detect::{self, DetectorState, Judgement, PolicyBook, PolicyId};
use crate::engine::Outputs;
use crate::flow::FlowMetric;
use crate::metric::{AlertKind, Builtin, MetricName, BUILTIN_SLOTS};
use crate::time::serialize_ms;
use crate::window::CorrelationIds;

/// Which [`ScoredBucket`]s are reported as buckets are judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoreRows {
    /// None: alerts only.
    None,
    /// The lead detector's row of each metric, the judgement the verdict reports: all
    /// that the live view (API, dashboard, per-stage gauges) shows.
    Lead,
    /// Every detector's row (`replay --scores`).
    All,
}

/// One scored bucket of one metric by one detector (`../shared/schema/score.md`).
#[derive(Debug, Clone, Serialize)]
pub struct ScoredBucket {
    pub pipeline: Arc<str>,
    pub stage: Arc<str>,
    pub metric: Cow<'static, str>,
    pub detector: &'static str,
    #[serde(serialize_with = "serialize_ms")]
    pub bucket_start: i64,
    #[serde(serialize_with = "serialize_ms")]
    pub bucket_end: i64,
    pub value: Option<f64>,
    pub expected: Option<f64>,
    pub lower: Option<f64>,
    pub upper: Option<f64>,
    pub score: Option<f64>,
    /// The bucket's verdict under the configuration (all detectors combined).
    pub anomalous: bool,
    pub warming_up: bool,
    /// This detector's own verdict (an addition to the v1 fields).
    pub flagged: bool,
    /// This detector's judgement is the one the bucket's verdict, and any alert, reports
    /// (an addition to the v1 fields): the band the dashboard and per-stage metrics show.
    pub lead: bool,
}

/// One metric of one stage: its policy, its learnt state, its alert lifecycles.
#[derive(Debug, Clone)]
pub struct Series {
    policy: PolicyId,
    detectors: DetectorState,
    /// Throughput metrics: [drop, spike]; other metrics use only the first.
    tracks: [Track; 2],
}

impl Series {
    pub fn new(policy: PolicyId) -> Series {
        Series {
            policy,
            detectors: DetectorState::default(),
            tracks: [Track::Idle; 2],
        }
    }
}

/// What a stage's series measure, by slot.
#[derive(Debug, Clone)]
pub enum Slots {
    /// An engine's stage: the built-in metrics, then quality figures by their names in
    /// events (`null_rate`).
    Stage { quality: Vec<Box<str>> },
    /// The data-flow tracker's stage: the figures it measures.
    Flow(Vec<FlowMetric>),
}

impl Slots {
    pub fn metric(&self, slot: usize) -> MetricName<'_> {
        match self {
            Slots::Stage { quality } => match slot.checked_sub(BUILTIN_SLOTS) {
                None => MetricName::Builtin(Builtin::ALL[slot]),
                Some(q) => MetricName::Quality(&quality[q]),
            },
            Slots::Flow(metrics) => MetricName::Flow(metrics[slot].name()),
        }
    }
}

/// The series of one stage that detectors judge, with the names its rows and alerts
/// carry.
#[derive(Debug, Clone)]
pub struct Judged {
    pub pipeline: Arc<str>,
    pub stage: Arc<str>,
    pub series: Vec<Series>,
    pub slots: Slots,
}

impl Judged {
    /// `pipeline/stage`, as policies match it.
    pub fn path(&self) -> String {
        format!("{}/{}", self.pipeline, self.stage)
    }

    /// Heap bytes held, for memory accounting.
    pub fn heap_bytes(&self) -> usize {
        let names = match &self.slots {
            Slots::Stage { quality } => quality.iter().map(|q| q.len() + 16).sum(),
            Slots::Flow(metrics) => metrics.capacity(),
        };
        self.pipeline.len()
            + self.stage.len()
            + self.series.capacity() * std::mem::size_of::<Series>()
            + (self.series.iter())
                .map(|s| s.detectors.zscore.heap_bytes())
                .sum::<usize>()
            + names
    }
}

/// Alerts raised and resolved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AlertCounts {
    pub firing: u64,
    pub resolved: u64,
}

impl AlertCounts {
    pub fn count(&mut self, notice: &Notice) {
        match notice {
            Notice::Firing { .. } => self.firing += 1,
            Notice::Resolved { .. } => self.resolved += 1,
        }
    }
}

/// Everything judging a bucket needs besides the series: borrowed apart from them, so
/// that both can be used at once.
pub struct Scorer<'a> {
    pub policies: &'a PolicyBook,
    pub factory: &'a AlertFactory,
    pub rules: &'a Rules,
    pub score_rows: ScoreRows,
    /// A buffer.
    pub judgements: &'a mut Vec<Judgement>,
    pub counts: &'a mut AlertCounts,
}

impl Scorer<'_> {
    /// Judges `value`, one bucket of series `slot`, learns from it if it was normal, and
    /// moves its alert lifecycle. (Inlined into the engine's closer: outlined, it cost
    /// `engine` about 1% more instructions.)
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub fn score(
        &mut self,
        judged: &mut Judged,
        slot: usize,
        value: f64,
        correlation_ids: &CorrelationIds,
        start_ms: i64,
        end_ms: i64,
        out: &mut Outputs,
    ) {
        // A metric without a value is neither judged nor learnt from, scored nor alerted
        // on: its bands would only be computed to be thrown away.
        if value.is_nan() {
            return;
        }
        let series = &judged.series[slot];
        let policy = self.policies.get(series.policy);
        let verdict = detect::judge(policy, &series.detectors, value, self.judgements);
        let band = verdict
            .lead
            .and_then(|j| j.band)
            .map(|b| (b.lower, b.upper));
        let relearned = judged.series[slot]
            .detectors
            .learn(policy, value, verdict.unusual, band);
        let metric = judged.slots.metric(slot);
        // Built-in metrics are never negative, so neither is the band shown for them; a
        // quality figure may be, and is shown as computed.
        let floor = match metric {
            MetricName::Builtin(_) | MetricName::Flow(_) => 0.0,
            MetricName::Quality(_) => f64::NEG_INFINITY,
        };
        if self.score_rows != ScoreRows::None {
            for j in self.judgements.iter() {
                let lead = verdict.lead.is_some_and(|l| l.detector == j.detector);
                if !lead && self.score_rows == ScoreRows::Lead {
                    continue;
                }
                out.scores.push(ScoredBucket {
                    pipeline: Arc::clone(&judged.pipeline),
                    stage: Arc::clone(&judged.stage),
                    metric: metric.label(),
                    detector: j.detector.as_str(),
                    bucket_start: start_ms,
                    bucket_end: end_ms,
                    value: Some(value),
                    expected: j.band.map(|b| b.expected),
                    lower: j.band.map(|b| b.lower.max(floor)),
                    upper: j.band.map(|b| b.upper),
                    score: j.band.and_then(|b| b.score),
                    anomalous: verdict.anomalous,
                    warming_up: j.band.is_none(),
                    flagged: j.band.is_some_and(|b| b.flagged),
                    lead,
                });
            }
        }
        if relearned {
            stop_judging(
                judged,
                None,
                slot..slot + 1,
                end_ms,
                "the value stayed outside its band for detection.relearn_after buckets; \
                 the detectors now learn this level as normal",
                self.factory,
                self.counts,
                out,
            );
            return;
        }
        if !policy.enabled {
            return;
        }
        let Some(lead) = verdict.lead.filter(|_| !value.is_nan()) else {
            return;
        };
        let Some(band) = lead.band else {
            return; // still learning: neither anomalous nor evidence of normality
        };
        let score = band.score.unwrap_or(0.0);
        let above = score > 0.0;
        let throughput = matches!(metric, MetricName::Builtin(b) if b.is_throughput());
        let severity = Severity::from_score(score, policy.critical_score);
        // Throughput has a drop track (0) and a spike track (1); other metrics one track.
        for side in 0..if throughput { 2 } else { 1 } {
            let observation = if verdict.anomalous && (!throughput || above == (side == 1)) {
                Observation::Anomalous(severity)
            } else {
                Observation::Normal
            };
            let track = &mut judged.series[slot].tracks[side];
            let Some(notice) = track.observe(observation, start_ms, end_ms, self.rules) else {
                continue;
            };
            let kind = AlertKind::of(metric, side == 1);
            let alert = self.factory.build(&AlertFacts {
                notice,
                kind,
                pipeline: &judged.pipeline,
                stage: &judged.stage,
                metric: &metric.to_string(),
                detector: lead.detector.as_str(),
                value,
                expected: band.expected,
                lower: band.lower.max(floor),
                upper: band.upper,
                score,
                bucket_start: start_ms,
                bucket_end: end_ms,
                correlation_ids: &correlation_ids.iter().collect::<Vec<_>>(),
                upward_only: policy.direction == Direction::Up,
            });
            self.counts.count(&notice);
            out.alerts.push(alert);
        }
    }
}

/// Ends the judging of some of a stage's series (and of its silence, when given): every
/// lifecycle returns to idle, and each firing alert is resolved with `note` as its
/// summary. This is not the condition ending but pipewatch ceasing to judge it (the stage
/// was forgotten, or the detectors accepted a new level), so the resolution has no value
/// or band (nulls) and detector "none"; without it a subscriber would keep a ghost alert
/// firing for ever.
#[allow(clippy::too_many_arguments)]
pub fn stop_judging(
    judged: &mut Judged,
    silence: Option<&mut Track>,
    slots: std::ops::Range<usize>,
    end_ms: i64,
    note: &str,
    factory: &AlertFactory,
    counts: &mut AlertCounts,
    out: &mut Outputs,
) {
    let mut firing: Vec<(AlertKind, String, Notice)> = Vec::new();
    if let Some(Track::Firing {
        started_ms,
        severity,
        ..
    }) = silence.map(std::mem::take)
    {
        firing.push((
            AlertKind::Silence,
            "silence".into(),
            resolved(started_ms, end_ms, severity),
        ));
    }
    for slot in slots {
        let metric = judged.slots.metric(slot);
        for side in 0..2 {
            let track = std::mem::take(&mut judged.series[slot].tracks[side]);
            if let Track::Firing {
                started_ms,
                severity,
                ..
            } = track
            {
                firing.push((
                    AlertKind::of(metric, side == 1),
                    metric.to_string(),
                    resolved(started_ms, end_ms, severity),
                ));
            }
        }
    }
    for (kind, metric, notice) in firing {
        let mut alert = factory.build(&AlertFacts {
            notice,
            kind,
            pipeline: &judged.pipeline,
            stage: &judged.stage,
            metric: &metric,
            detector: "none",
            value: f64::NAN,
            expected: f64::NAN,
            lower: f64::NAN,
            upper: f64::NAN,
            score: f64::NAN,
            bucket_start: end_ms - factory.bucket_ms,
            bucket_end: end_ms,
            correlation_ids: &[],
            upward_only: false,
        });
        alert.summary = format!("{}/{} {metric}: {note}", judged.pipeline, judged.stage);
        alert.annotations.insert("note", note.to_string());
        counts.count(&notice);
        out.alerts.push(alert);
    }
}

fn resolved(started_ms: i64, ended_ms: i64, severity: Severity) -> Notice {
    Notice::Resolved {
        started_ms,
        ended_ms,
        severity,
    }
}
