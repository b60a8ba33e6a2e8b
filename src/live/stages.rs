//! The stage board: the recent scored buckets of every stage this instance judges, kept
//! for the API, the dashboard and the per-stage gauges of `/metrics`.
//!
//! The engines are single-threaded and live on the consumer thread; the board is their
//! published face. It is fed only when buckets close (once per bucket width per stage,
//! not per event), and sharded (dashmap) so an HTTP reader locks one shard for a moment
//! while the consumer thread writes to others.

use std::collections::VecDeque;
use std::sync::Arc;

use dashmap::DashMap;
use serde::ser::SerializeMap;
use serde::Serialize;

use crate::engine::ScoredBucket;
use crate::time::serialize_ms;

/// The Kafka partition whose engine judges a stage: when the partition is revoked, its
/// stages leave this instance's board (their new owner shows them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub topic: Arc<str>,
    pub partition: i32,
}

/// A stage's state at a glance, as the API and the dashboard show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    // Ordered worst first: lists sort the stages that need a look to the top.
    Silent,
    Anomalous,
    WarmingUp,
    Ok,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Silent => "silent",
            Health::Anomalous => "anomalous",
            Health::WarmingUp => "warming_up",
            Health::Ok => "ok",
        }
    }

    pub fn parse(s: &str) -> Option<Health> {
        [
            Health::Silent,
            Health::Anomalous,
            Health::WarmingUp,
            Health::Ok,
        ]
        .into_iter()
        .find(|h| h.as_str() == s)
    }
}

/// One closed bucket of one metric, as its lead detector judged it. Band and score are
/// stored as `f32`: they are for display, and a stage's history is a few hundred of
/// these, so the width matters more than the seventh digit.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Point {
    #[serde(serialize_with = "serialize_ms")]
    pub bucket_start: i64,
    pub value: f64,
    #[serde(serialize_with = "serialize_narrow")]
    pub expected: Option<f32>,
    #[serde(serialize_with = "serialize_narrow")]
    pub lower: Option<f32>,
    #[serde(serialize_with = "serialize_narrow")]
    pub upper: Option<f32>,
    #[serde(serialize_with = "serialize_narrow")]
    pub score: Option<f32>,
    pub anomalous: bool,
    pub warming_up: bool,
}

/// An `f32` as the decimal it was rounded to: widening it to `f64` as it is would show
/// binary noise in JSON (0.05 as 0.05000000074505806).
fn serialize_narrow<S: serde::Serializer>(x: &Option<f32>, s: S) -> Result<S::Ok, S::Error> {
    match x {
        Some(x) => s.serialize_some(&x.to_string().parse::<f64>().unwrap_or(f64::NAN)),
        None => s.serialize_none(),
    }
}

impl Point {
    fn of(row: &ScoredBucket) -> Point {
        let narrow = |x: Option<f64>| x.filter(|x| x.is_finite()).map(|x| x as f32);
        Point {
            bucket_start: row.bucket_start,
            value: row.value.unwrap_or(f64::NAN),
            expected: narrow(row.expected),
            lower: narrow(row.lower),
            upper: narrow(row.upper),
            score: narrow(row.score),
            anomalous: row.anomalous,
            warming_up: row.warming_up,
        }
    }
}

/// A stage's metrics and their recent points, oldest first.
///
/// Kept in the order the engine first scored them, which is the order its rows come in
/// at every bucket close: each row finds its metric where the one before it left off,
/// with one comparison of names rather than a search. (A map ordered by name cost a
/// third of the live view's work on the consume thread: about 250 instructions per
/// event, 4% of the thread's, counted by callgrind.) Read in order of name.
#[derive(Debug, Clone, Default)]
pub struct MetricPoints {
    series: Vec<(Box<str>, VecDeque<Point>)>,
    /// Where the next row's metric is expected.
    next: usize,
}

impl MetricPoints {
    /// The points of `metric`, if it was scored.
    pub fn get(&self, metric: &str) -> Option<&VecDeque<Point>> {
        Some(&self.series[self.position(metric)?].1)
    }

    fn position(&self, metric: &str) -> Option<usize> {
        self.series.iter().position(|(name, _)| **name == *metric)
    }

    /// Every metric with its points, in order of name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &VecDeque<Point>)> {
        let mut sorted: Vec<_> = self.series.iter().map(|(n, p)| (&**n, p)).collect();
        sorted.sort_unstable_by_key(|&(name, _)| name);
        sorted.into_iter()
    }

    /// The points of every metric, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &VecDeque<Point>> {
        self.series.iter().map(|(_, points)| points)
    }

    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// The points of `metric`, added if new.
    fn slot(&mut self, metric: &str) -> &mut VecDeque<Point> {
        let expected = self.series.get(self.next).filter(|(n, _)| **n == *metric);
        let at = match expected {
            Some(_) => self.next,
            None => match self.position(metric) {
                Some(at) => at,
                None => {
                    self.series.push((metric.into(), VecDeque::new()));
                    self.series.len() - 1
                }
            },
        };
        self.next = (at + 1) % self.series.len();
        &mut self.series[at].1
    }
}

/// As a JSON object of metric → points, in order of name.
impl Serialize for MetricPoints {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.len()))?;
        for (name, points) in self.iter() {
            map.serialize_entry(name, points)?;
        }
        map.end()
    }
}

#[derive(Debug, Clone, Default)]
pub struct StageView {
    pub owner: Option<Owner>,
    pub metrics: MetricPoints,
    /// Firing alerts of this stage, silence excepted.
    pub firing: u32,
    /// A silence alert of this stage is firing.
    pub silent: bool,
    pub last_bucket_end: i64,
}

impl StageView {
    pub fn health(&self) -> Health {
        if self.silent {
            Health::Silent
        } else if self.firing > 0 {
            Health::Anomalous
        } else if self
            .metrics
            .values()
            .all(|points| points.back().is_none_or(|p| p.warming_up))
        {
            Health::WarmingUp
        } else {
            Health::Ok
        }
    }
}

/// (pipeline, stage), shared with the engine's stage, so a closed bucket adds its points
/// to the board without copying the names.
pub type StageKey = (Arc<str>, Arc<str>);

/// The key of a stage named by reference (an API path, an alert).
fn key(pipeline: &str, stage: &str) -> StageKey {
    (Arc::from(pipeline), Arc::from(stage))
}

pub struct StageBoard {
    /// Hashed with hashbrown's default (foldhash, seeded per process) rather than
    /// SipHash: a lookup per group of closed buckets is on the consumer thread.
    stages: DashMap<StageKey, StageView, hashbrown::DefaultHashBuilder>,
    /// Points kept per stage and metric.
    history: usize,
}

impl StageBoard {
    pub fn new(history: usize) -> StageBoard {
        StageBoard {
            stages: DashMap::default(),
            history: history.max(1),
        }
    }

    /// Adds closed buckets. Only the lead detector's row of each bucket is kept: it is
    /// the judgement the verdict and any alert report.
    pub fn add_scores(&self, rows: &[ScoredBucket], owner: Option<&Owner>) {
        let mut rows = rows.iter().filter(|r| r.lead).peekable();
        while let Some(first) = rows.next() {
            // Rows come grouped by stage: one lookup serves the group.
            let mut view = self
                .stages
                .entry((first.pipeline.clone(), first.stage.clone()))
                .or_default();
            // Rewritten only when it changed: a clone and a drop of an `Arc` spared per
            // group. (`Arc<str>` equality compares pointers before bytes already.)
            if view.owner.as_ref() != owner {
                view.owner = owner.cloned();
            }
            let mut row = Some(first);
            while let Some(r) = row {
                self.push(&mut view, r);
                row = rows.next_if(|n| n.pipeline == r.pipeline && n.stage == r.stage);
            }
        }
    }

    fn push(&self, view: &mut StageView, row: &ScoredBucket) {
        view.last_bucket_end = view.last_bucket_end.max(row.bucket_end);
        let points = view.metrics.slot(&row.metric);
        if points.len() == self.history {
            points.pop_front();
        }
        points.push_back(Point::of(row));
    }

    /// Notes that an alert of this stage started (`firing`) or stopped firing. A stage
    /// alerts only after buckets of it were scored, so it is on the board already.
    pub fn note_alert(&self, pipeline: &str, stage: &str, silence: bool, firing: bool) {
        let key = key(pipeline, stage);
        let Some(mut view) = self.stages.get_mut(&key) else {
            return;
        };
        if silence {
            view.silent = firing;
        } else if firing {
            view.firing += 1;
        } else {
            view.firing = view.firing.saturating_sub(1);
        }
    }

    pub fn forget(&self, pipeline: &str, stage: &str) {
        self.stages.remove(&key(pipeline, stage));
    }

    /// Forgets the stages of a revoked partition; returns their keys.
    pub fn forget_owner(&self, owner: &Owner) -> Vec<StageKey> {
        let mut gone = Vec::new();
        self.stages.retain(|key, view| {
            let keep = view.owner.as_ref() != Some(owner);
            if !keep {
                gone.push(key.clone());
            }
            keep
        });
        gone
    }

    pub fn len(&self) -> usize {
        self.stages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }

    /// A copy of one stage's view.
    pub fn get(&self, pipeline: &str, stage: &str) -> Option<StageView> {
        self.stages.get(&key(pipeline, stage)).map(|v| v.clone())
    }

    /// Calls `f` with one stage's view, if the stage is on the board, without copying it
    /// (its shard locked for reading meanwhile).
    pub fn read<R>(
        &self,
        pipeline: &str,
        stage: &str,
        f: impl FnOnce(&StageView) -> R,
    ) -> Option<R> {
        self.stages.get(&key(pipeline, stage)).map(|v| f(&v))
    }

    /// Calls `f` with every stage in turn (each shard locked for reading meanwhile).
    pub fn for_each(&self, mut f: impl FnMut(&StageKey, &StageView)) {
        for entry in self.stages.iter() {
            f(entry.key(), entry.value());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(stage: &str, metric: &str, start: i64, lead: bool, warming: bool) -> ScoredBucket {
        ScoredBucket {
            pipeline: "p".into(),
            stage: stage.into(),
            metric: metric.to_string().into(),
            detector: "ewma",
            bucket_start: start,
            bucket_end: start + 60_000,
            value: Some(10.0),
            expected: (!warming).then_some(10.0),
            lower: (!warming).then_some(8.0),
            upper: (!warming).then_some(12.0),
            score: (!warming).then_some(0.0),
            anomalous: false,
            warming_up: warming,
            flagged: false,
            lead,
        }
    }

    #[test]
    fn keeps_lead_rows_up_to_the_history_length() {
        let board = StageBoard::new(3);
        let rows: Vec<_> = (0..5)
            .flat_map(|i| {
                [
                    row("a", "records", i * 60_000, true, false),
                    row("a", "records", i * 60_000, false, false),
                    row("b", "records", i * 60_000, true, true),
                ]
            })
            .collect();
        board.add_scores(&rows, None);
        let a = board.get("p", "a").unwrap();
        let points = a.metrics.get("records").unwrap();
        assert_eq!(points.len(), 3);
        assert_eq!(points[0].bucket_start, 2 * 60_000);
        assert_eq!(a.health(), Health::Ok);
        assert_eq!(board.get("p", "b").unwrap().health(), Health::WarmingUp);
    }

    #[test]
    fn metrics_keep_their_points_apart_and_read_in_order_of_name() {
        let board = StageBoard::new(4);
        // The engine's order, then a metric it scores only from the second close on,
        // then a close that skips one: every row lands on its own metric.
        let close = |i: i64, metrics: &[&str]| -> Vec<ScoredBucket> {
            (metrics.iter())
                .map(|m| row("a", m, i * 60_000, true, false))
                .collect()
        };
        board.add_scores(&close(0, &["records", "errors", "duration"]), None);
        board.add_scores(&close(1, &["records", "errors", "duration", "bytes"]), None);
        board.add_scores(&close(2, &["records", "duration", "bytes"]), None);
        let a = board.get("p", "a").unwrap();
        let starts = |m: &str| -> Vec<i64> {
            let points = a.metrics.get(m).unwrap();
            points.iter().map(|p| p.bucket_start / 60_000).collect()
        };
        assert_eq!(starts("records"), [0, 1, 2]);
        assert_eq!(starts("errors"), [0, 1]);
        assert_eq!(starts("duration"), [0, 1, 2]);
        assert_eq!(starts("bytes"), [1, 2]);
        assert!(a.metrics.get("quality.nulls").is_none());
        let names: Vec<&str> = a.metrics.iter().map(|(name, _)| name).collect();
        assert_eq!(names, ["bytes", "duration", "errors", "records"]);
        let json = serde_json::to_string(&a.metrics).unwrap();
        let at = |name: &str| json.find(&format!("\"{name}\"")).unwrap();
        let order = ["bytes", "duration", "errors", "records"].map(at);
        assert!(order.is_sorted(), "{json}");
    }

    #[test]
    fn health_follows_alerts_silence_first() {
        let board = StageBoard::new(3);
        board.add_scores(&[row("a", "records", 0, true, false)], None);
        board.note_alert("p", "a", false, true);
        assert_eq!(board.get("p", "a").unwrap().health(), Health::Anomalous);
        board.note_alert("p", "a", true, true);
        assert_eq!(board.get("p", "a").unwrap().health(), Health::Silent);
        board.note_alert("p", "a", true, false);
        board.note_alert("p", "a", false, false);
        assert_eq!(board.get("p", "a").unwrap().health(), Health::Ok);
    }

    #[test]
    fn a_revoked_partition_takes_its_stages_away() {
        let board = StageBoard::new(3);
        let mine = Owner {
            topic: Arc::from("t"),
            partition: 0,
        };
        let other = Owner {
            topic: Arc::from("t"),
            partition: 1,
        };
        board.add_scores(&[row("a", "records", 0, true, false)], Some(&mine));
        board.add_scores(&[row("b", "records", 0, true, false)], Some(&other));
        let gone = board.forget_owner(&mine);
        assert_eq!(gone, vec![("p".into(), "a".into())]);
        assert!(board.get("p", "a").is_none());
        assert!(board.get("p", "b").is_some());
    }
}
