//! The data-flow metrics of a stage, judged like any metric of the stage: the hand-over
//! delay into it (`hop_delay`) and, at a final stage, runs' end-to-end latency
//! (`e2e_latency`).
//!
//! The tracker measures a figure when a run settles at the stage, and keeps it in the
//! bucket the run ended in there. A bucket is judged once the tracker's clock (the
//! slowest partition's event time) has passed its end by the allowed lateness: by then
//! every run that ended in it has settled. So a stage's figures, and the rows and alerts
//! judged from them, are the same whatever the partitioning and whatever the order the
//! partitions are read in; and the tracker judges them on its own thread, where the
//! figures are, so that no engine spends time on them.

use std::collections::VecDeque;
use std::sync::Arc;

use super::FlowMetric;
use crate::alert::{AlertFactory, Rules};
use crate::detect::{Judgement, PolicyBook};
use crate::engine::Outputs;
use crate::score::{stop_judging, AlertCounts, Judged, ScoreRows, Scorer, Series, Slots};
use crate::window::CorrelationIds;

/// Buckets of figures a stage keeps waiting for the tracker's clock; beyond them, the
/// oldest is judged with the figures it has. A bound, not a working size: figures come
/// as their runs settle, on the clock that judges their buckets, so one or two wait.
const MAX_WAITING_BUCKETS: usize = 64;

/// One bucket of a stage's figures.
#[derive(Debug, Clone)]
struct FigureBucket {
    index: i64,
    /// (sum, count) of the figures, by [`FlowMetric::index`].
    sums: [(f64, u32); FlowMetric::COUNT],
    /// The first runs the figures came from, which an alert on them names.
    correlation_ids: CorrelationIds,
}

/// A stage's data-flow figures: the buckets waiting to be judged, and the series that
/// judge them.
#[derive(Debug, Clone)]
pub struct StageFigures {
    /// The series of the metrics measured so far: none until the first bucket is judged,
    /// and again once the stage has had no figure for `stages.idle_timeout`.
    judged: Option<Judged>,
    /// Buckets waiting to be judged, oldest first.
    open: VecDeque<FigureBucket>,
    /// The last one judged, emptied into the next one opened (its correlation ids'
    /// buffers with it).
    spare: Option<FigureBucket>,
    /// Every bucket up to and including this one has been judged.
    judged_through: i64,
    /// Where the newest figure ended.
    last_ms: i64,
}

impl Default for StageFigures {
    fn default() -> StageFigures {
        StageFigures {
            judged: None,
            open: VecDeque::new(),
            spare: None,
            judged_through: i64::MIN,
            last_ms: i64::MIN,
        }
    }
}

/// What judging a stage's figures needs besides the figures.
pub struct FigureJudge<'a> {
    pub policies: &'a mut PolicyBook,
    pub factory: &'a AlertFactory,
    pub rules: &'a Rules,
    /// The rows the stage's engine reports.
    pub score_rows: ScoreRows,
    /// A buffer.
    pub judgements: &'a mut Vec<Judgement>,
    pub counts: &'a mut AlertCounts,
    pub bucket_ms: i64,
    /// `stages.idle_timeout`: a stage with no figure for this long has its series
    /// forgotten, as an engine forgets an idle stage.
    pub idle_timeout_ms: i64,
}

impl StageFigures {
    /// Takes in a figure of `metric` for a run that ended at `end_ms`; false when its
    /// bucket has been judged already (the figure is dropped).
    pub fn add(
        &mut self,
        metric: FlowMetric,
        end_ms: i64,
        value: f64,
        correlation_id: &str,
        bucket_ms: i64,
        max_correlation_ids: usize,
    ) -> bool {
        let index = end_ms.div_euclid(bucket_ms);
        if index <= self.judged_through {
            return false;
        }
        self.last_ms = self.last_ms.max(end_ms);
        // Nearly always the newest bucket, or a new one after it.
        let at = match self.open.iter().rposition(|b| b.index <= index) {
            Some(at) if self.open[at].index == index => at,
            found => {
                let at = found.map_or(0, |at| at + 1);
                let mut bucket = self.spare.take().unwrap_or_else(|| FigureBucket {
                    index,
                    sums: [(0.0, 0); FlowMetric::COUNT],
                    correlation_ids: CorrelationIds::default(),
                });
                bucket.index = index;
                bucket.sums = [(0.0, 0); FlowMetric::COUNT];
                bucket.correlation_ids.clear();
                self.open.insert(at, bucket);
                at
            }
        };
        let bucket = &mut self.open[at];
        let sum = &mut bucket.sums[metric.index()];
        sum.0 += value;
        sum.1 += 1;
        (bucket.correlation_ids).insert(correlation_id, max_correlation_ids);
        true
    }

    /// Judges the buckets up to and including `through` (and the oldest beyond
    /// `MAX_WAITING_BUCKETS`), then, once the stage has had no figure for
    /// `stages.idle_timeout` before `now_ms`, forgets its series: their firing alerts are
    /// resolved, as an engine resolves those of a stage it forgets.
    pub fn judge(
        &mut self,
        through: i64,
        now_ms: i64,
        names: (&Arc<str>, &Arc<str>),
        judge: &mut FigureJudge<'_>,
        out: &mut Outputs,
    ) {
        while let Some(first) = self.open.front() {
            if first.index > through && self.open.len() <= MAX_WAITING_BUCKETS {
                break;
            }
            let bucket = self.open.pop_front().expect("a front");
            self.judged_through = self.judged_through.max(bucket.index);
            let judged = self.judged.get_or_insert_with(|| Judged {
                pipeline: Arc::clone(names.0),
                stage: Arc::clone(names.1),
                series: Vec::new(),
                slots: Slots::Flow(Vec::new()),
            });
            let start_ms = bucket.index * judge.bucket_ms;
            let end_ms = start_ms + judge.bucket_ms;
            for (metric, &(sum, n)) in FlowMetric::ALL.iter().zip(&bucket.sums) {
                if n == 0 {
                    continue;
                }
                let slot = slot_of(judged, *metric, judge.policies);
                let mut scorer = Scorer {
                    policies: judge.policies,
                    factory: judge.factory,
                    rules: judge.rules,
                    score_rows: judge.score_rows,
                    judgements: judge.judgements,
                    counts: judge.counts,
                };
                let value = sum / n as f64;
                let ids = &bucket.correlation_ids;
                scorer.score(judged, slot, value, ids, start_ms, end_ms, out);
            }
            self.spare = Some(bucket);
        }
        let idle = now_ms.saturating_sub(self.last_ms) > judge.idle_timeout_ms;
        if idle && self.open.is_empty() {
            if let Some(mut judged) = self.judged.take() {
                let all_slots = 0..judged.series.len();
                let end_ms = (through + 1).saturating_mul(judge.bucket_ms);
                stop_judging(
                    &mut judged,
                    None,
                    all_slots,
                    end_ms,
                    "no hand-over delay or end-to-end latency was measured for \
                     stages.idle_timeout: these metrics are no longer judged",
                    judge.factory,
                    judge.counts,
                    out,
                );
                self.spare = None;
            }
        }
    }

    /// Heap bytes held, for memory accounting.
    pub fn heap_bytes(&self) -> usize {
        self.judged.as_ref().map_or(0, Judged::heap_bytes)
            + self.open.capacity() * std::mem::size_of::<FigureBucket>()
            + (self.open.iter().chain(&self.spare))
                .map(|b| b.correlation_ids.heap_bytes())
                .sum::<usize>()
    }
}

/// The slot of `metric` in a stage's judged figures, added (with its policy) if new.
fn slot_of(judged: &mut Judged, metric: FlowMetric, policies: &mut PolicyBook) -> usize {
    let Slots::Flow(metrics) = &mut judged.slots else {
        unreachable!("a stage's figures are judged as data-flow metrics")
    };
    if let Some(slot) = metrics.iter().position(|&m| m == metric) {
        return slot;
    }
    metrics.push(metric);
    let policy = policies.resolve(&judged.path(), metric.name());
    judged.series.push(Series::new(policy));
    judged.series.len() - 1
}
