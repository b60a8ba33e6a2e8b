//! The engine: decoded events in, alerts and scored buckets out, in event time.
//!
//! One engine, several drivers: `pipewatch replay` feeds it from a file, `pipewatch run`
//! from Kafka, the benchmarks from memory. It is single-threaded and deterministic: the
//! same events in the same order give the same alerts (except their random `alert_id`).
//!
//! Time is the **watermark**, the newest event time seen. Bucket `b` covers
//! `[b·width, (b+1)·width)` and is closed, for every stage at once, when the watermark
//! passes its end plus `allowed_lateness`; an event for a closed bucket is late and
//! dropped. In live mode an idle consumer lets the wall clock move the watermark (see
//! [`Engine::advance_clock`]), so silence is found even when every stream stops.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use hashbrown::HashTable;
use serde::Serialize;

use crate::alert::{Alert, AlertFactory, AlertFacts, Notice, Observation, Rules, Severity, Track};
use crate::config::{Direction, Settings, SilenceSettings};
use crate::decode::{decode, DecodeLimits, Event, Reason, Rejection, Upstream};
use crate::detect::silence::GapTracker;
use crate::detect::{self, DetectorState, Judgement, PolicyBook, PolicyId};
use crate::flow::{FlowMetric, FlowTracker, SettledFigures, SharedFlow, Sightings, StageKey};
use crate::metric::{AlertKind, Builtin, MetricName, BUILTIN_SLOTS};
use crate::time::serialize_ms;
use crate::window::{Bucket, CorrelationIds, Reported};

/// How often, in event time, an engine at least tells the data-flow tracker where it is
/// (and so runs its checks): stuck and failed runs are minutes overdue (`flow.stuck_min`)
/// when found, and a few seconds more is nothing to them.
const FLOW_TICK_MS: i64 = 10_000;

/// Buckets of data-flow figures a stage keeps waiting for the tracker's clock (see
/// [`FlowBucket`]); beyond them, the oldest is judged with the figures it has. A bound,
/// not a working size: figures come as their runs settle, and their bucket is judged as
/// soon as the clock has passed it, so one or two wait.
const MAX_FLOW_BUCKETS: usize = 64;

/// Events an engine keeps for the data-flow tracker before it hands them over even
/// between ticks: a bound on the batch, and on how far behind the API's traces are.
const MAX_SIGHTINGS: usize = 512;

/// What happened to one message.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Applied,
    /// Its bucket was already closed.
    Late,
    /// Its `event_id` was seen recently.
    Duplicate,
    /// A new stage, and `stages.max_tracked` are tracked already (by this process).
    StageLimit,
    Invalid(Rejection),
}

/// Counters of everything the engine did; exported as metrics and printed by replay.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    pub applied: u64,
    pub late: u64,
    pub duplicate: u64,
    pub stage_limit: u64,
    pub invalid: [u64; Reason::ALL.len()],
    /// Quality figures ignored because a stage tracks `max_quality_metrics` already.
    pub quality_overflow: u64,
    pub stages_created: u64,
    pub stages_evicted: u64,
    pub buckets_closed: u64,
    /// Empty buckets passed over when event time jumped far ahead.
    pub buckets_skipped: u64,
    pub alerts_firing: u64,
    pub alerts_resolved: u64,
    /// Data-flow figures whose bucket had been judged before their run settled, or
    /// whose stage was forgotten (before or after they came).
    pub flow_figures_late: u64,
}

impl Stats {
    pub fn invalid_total(&self) -> u64 {
        self.invalid.iter().sum()
    }
}

/// Sums counters: a process's totals are those of its engines, live and dropped.
impl std::ops::AddAssign<&Stats> for Stats {
    fn add_assign(&mut self, other: &Stats) {
        self.applied += other.applied;
        self.late += other.late;
        self.duplicate += other.duplicate;
        self.stage_limit += other.stage_limit;
        for (a, b) in self.invalid.iter_mut().zip(other.invalid.iter()) {
            *a += b;
        }
        self.quality_overflow += other.quality_overflow;
        self.stages_created += other.stages_created;
        self.stages_evicted += other.stages_evicted;
        self.buckets_closed += other.buckets_closed;
        self.buckets_skipped += other.buckets_skipped;
        self.alerts_firing += other.alerts_firing;
        self.alerts_resolved += other.alerts_resolved;
        self.flow_figures_late += other.flow_figures_late;
    }
}

/// Which [`ScoredBucket`]s the engine reports as buckets close.
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

/// Where the engine puts what it produces; the driver drains it.
#[derive(Debug, Default)]
pub struct Outputs {
    pub alerts: Vec<Alert>,
    /// The rows the engine was built to report ([`ScoreRows`]).
    pub scores: Vec<ScoredBucket>,
    /// Stages forgotten after `stages.idle_timeout`, as (pipeline, stage); filled only
    /// when rows are reported, for whoever keeps a view of the stages built from them.
    pub forgotten: Vec<(String, String)>,
}

/// One metric of one stage: its policy, its learnt state, its alert lifecycles.
#[derive(Debug, Clone)]
struct Series {
    policy: PolicyId,
    detectors: DetectorState,
    /// Throughput metrics: [drop, spike]; other metrics use only the first.
    tracks: [Track; 2],
}

struct Stage {
    pipeline: Arc<str>,
    stage: Arc<str>,
    /// Open buckets, oldest first; at most lateness/width + 2 of them.
    open: Vec<Bucket>,
    /// The last bucket closed, emptied into the next one opened (see [`Bucket::reset`]).
    spare: Option<Bucket>,
    series: Vec<Series>,
    /// The names of the metrics after the built-ins, in slot order.
    extra: Vec<Extra>,
    reported: Reported,
    gaps: GapTracker,
    silence: Track,
    /// The stage's key in the data-flow tracker, once an event with a correlation id
    /// asked for it.
    flow_key: Option<StageKey>,
    /// Its upstream stages as the last event that declared them wrote them (see
    /// [`Stage::declares`]).
    declared_upstream: Option<Box<str>>,
    /// The slots of its data-flow metrics, by [`FlowMetric::index`] (`u16::MAX` until
    /// the first figure).
    flow_slots: [u16; FlowMetric::COUNT],
    /// Buckets of its data-flow figures waiting to be judged, oldest first.
    flow_open: VecDeque<FlowBucket>,
    /// The last one judged, emptied into the next one opened (its correlation ids'
    /// buffers with it).
    flow_spare: Option<FlowBucket>,
    /// The newest of them judged (`i64::MIN`: none).
    flow_closed: i64,
}

/// One bucket of a stage's data-flow figures. The tracker measures them once the runs
/// that ended in the bucket have settled, that is once its clock, the slowest
/// partition's event time, has passed the bucket's end by the allowed lateness. That
/// can be long after this engine closed the stage's own bucket: a partition read ahead
/// of the others (a backlog comes partition by partition) would find the figures late.
/// So they are judged on the tracker's clock instead ([`Engine::close_flow_buckets`]),
/// and a stage's hop delays and end-to-end latencies are the same whatever the
/// partitioning and whatever the order partitions are read in.
struct FlowBucket {
    index: i64,
    /// (sum, count) of the figures, by [`FlowMetric::index`].
    sums: [(f64, u32); FlowMetric::COUNT],
    /// The first runs the figures came from, which an alert on them names.
    correlation_ids: CorrelationIds,
}

/// A metric of a stage beyond the built-ins.
enum Extra {
    /// A quality figure, by its name in events (`null_rate`).
    Quality(Box<str>),
    /// A data-flow figure.
    Flow(FlowMetric),
}

/// The name of metric `slot` of a stage with these extra metrics. A function of the
/// names alone, so the stage's other fields stay free to borrow mutably.
fn metric_name(extra: &[Extra], slot: usize) -> MetricName<'_> {
    match slot.checked_sub(BUILTIN_SLOTS).map(|i| &extra[i]) {
        None => MetricName::Builtin(Builtin::ALL[slot]),
        Some(Extra::Quality(name)) => MetricName::Quality(name),
        Some(Extra::Flow(metric)) => MetricName::Flow(metric.name()),
    }
}

impl Stage {
    /// Whether `upstream`, from an event of this stage, is a declaration for the
    /// data-flow tracker to read: it names stages, and not written as the last one
    /// was. Producers repeat theirs on every event, and comparing the text here, where
    /// the stage is at hand, spares the tracker resolving the names each time. (A
    /// declaration the fast decoder could not keep as written is always passed on.)
    fn declares(&mut self, upstream: &Upstream<'_>) -> bool {
        if upstream.is_empty() {
            return false;
        }
        let written = upstream.as_written();
        if written.is_some() && self.declared_upstream.as_deref() == written {
            return false;
        }
        self.declared_upstream = written.map(Box::from);
        true
    }

    fn new_bucket(&mut self, index: i64) -> Bucket {
        match self.spare.take() {
            Some(mut bucket) => {
                bucket.reset(index);
                bucket
            }
            None => Bucket::new(index),
        }
    }

    /// The open bucket `index`, opened (in order) if it is not yet.
    fn open_bucket(&mut self, index: i64) -> &mut Bucket {
        match self.open.iter().position(|b| b.index >= index) {
            Some(p) if self.open[p].index == index => &mut self.open[p],
            Some(p) => {
                let new = self.new_bucket(index);
                self.open.insert(p, new);
                &mut self.open[p]
            }
            None => {
                let new = self.new_bucket(index);
                self.open.push(new);
                self.open.last_mut().expect("just pushed")
            }
        }
    }

    /// The bucket of data-flow figures `index`, opened (in order) if it is not yet.
    fn flow_bucket(&mut self, index: i64) -> &mut FlowBucket {
        let open = &mut self.flow_open;
        // Nearly always the newest, or a new one after it; a few may wait when figures
        // come faster than the engine judges them (see `MAX_FLOW_BUCKETS`).
        let at = match open.binary_search_by_key(&index, |b| b.index) {
            Ok(i) => i,
            Err(at) => {
                let correlation_ids = match self.flow_spare.take() {
                    Some(mut spare) => {
                        spare.correlation_ids.clear();
                        spare.correlation_ids
                    }
                    None => CorrelationIds::default(),
                };
                let bucket = FlowBucket {
                    index,
                    sums: [(0.0, 0); FlowMetric::COUNT],
                    correlation_ids,
                };
                open.insert(at, bucket);
                at
            }
        };
        &mut open[at]
    }

    fn path(&self) -> String {
        format!("{}/{}", self.pipeline, self.stage)
    }

    /// Heap bytes held, for memory accounting.
    fn heap_bytes(&self) -> usize {
        self.pipeline.len()
            + self.stage.len()
            + self.open.capacity() * std::mem::size_of::<Bucket>()
            + self.open.iter().map(Bucket::heap_bytes).sum::<usize>()
            + self
                .spare
                .as_ref()
                .map_or(0, |b| std::mem::size_of::<Bucket>() + b.heap_bytes())
            + self.series.capacity() * std::mem::size_of::<Series>()
            + self
                .series
                .iter()
                .map(|s| s.detectors.zscore.heap_bytes())
                .sum::<usize>()
            + self
                .extra
                .iter()
                .map(|e| match e {
                    Extra::Quality(q) => q.len() + 16,
                    Extra::Flow(_) => 16,
                })
                .sum::<usize>()
            + self.flow_open.capacity() * std::mem::size_of::<FlowBucket>()
            + (self.flow_open.iter().chain(&self.flow_spare))
                .map(|b| b.correlation_ids.heap_bytes())
                .sum::<usize>()
    }
}

/// Event ids seen recently: a bounded FIFO of 64-bit hashes.
struct RecentIds {
    order: VecDeque<u64>,
    set: hashbrown::HashSet<u64>,
    capacity: usize,
}

impl RecentIds {
    fn new(capacity: usize) -> RecentIds {
        // Sized for a quiet partition and grown on demand: `pipewatch run` keeps an engine
        // per partition, and most see far fewer than `dedup_capacity` recent ids.
        RecentIds {
            order: VecDeque::with_capacity(capacity.min(1 << 10)),
            set: hashbrown::HashSet::with_capacity(capacity.min(1 << 10)),
            capacity,
        }
    }

    fn hash(&self, stage_hash: u64, id: &str) -> u64 {
        self.set.hasher().hash_one((stage_hash, id))
    }

    /// Claims id hash `h` for an event: false when it is among the recent ids (the event
    /// is a duplicate). One probe of the set serves both the check and the insertion; the
    /// claim is then confirmed once the event is applied, or withdrawn if it is not.
    fn claim(&mut self, h: u64) -> bool {
        self.capacity == 0 || self.set.insert(h)
    }

    fn withdraw(&mut self, h: u64) {
        if self.capacity > 0 {
            self.set.remove(&h);
        }
    }

    /// Records a claimed id as the newest, forgetting the oldest beyond the capacity.
    fn confirm(&mut self, h: u64) {
        if self.capacity == 0 {
            return;
        }
        self.order.push_back(h);
        if self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }
}

/// How many more stages this process may track: `stages.max_tracked` is a bound on the
/// process, and `pipewatch run` keeps one engine per Kafka partition, so the engines of
/// one process draw on one shared budget. Clones share it.
#[derive(Debug, Clone)]
pub struct StageBudget(Arc<AtomicUsize>);

impl StageBudget {
    pub fn new(max_stages: usize) -> StageBudget {
        StageBudget(Arc::new(AtomicUsize::new(max_stages)))
    }

    /// Takes one stage's place, if one is left.
    fn take(&self) -> bool {
        self.0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(1)
            })
            .is_ok()
    }

    fn give_back(&self, stages: usize) {
        self.0.fetch_add(stages, Ordering::Relaxed);
    }
}

/// Everything bucket closing needs besides the stage itself, borrowed apart from the
/// stage list so both can be used at once.
struct Closer<'a> {
    policies: &'a PolicyBook,
    factory: &'a AlertFactory,
    rules: &'a Rules,
    silence: &'a SilenceSettings,
    bucket_ms: i64,
    score_rows: ScoreRows,
    values: &'a mut Vec<f64>,
    judgements: &'a mut Vec<Judgement>,
    stats: &'a mut Stats,
}

pub struct Engine {
    bucket_ms: i64,
    lateness_ms: i64,
    history_len: usize,
    budget: StageBudget,
    max_quality: usize,
    idle_timeout_ms: i64,
    max_correlation_ids: usize,
    max_event_bytes: usize,
    max_future_skew_ms: i64,
    silence: SilenceSettings,
    rules: Rules,
    factory: AlertFactory,
    policies: PolicyBook,
    score_rows: ScoreRows,

    hasher: hashbrown::DefaultHashBuilder,
    index: HashTable<u32>,
    stages: Vec<Stage>,
    watermark_ms: Option<i64>,
    /// Every bucket up to and including this one is closed.
    closed_through: i64,
    recent_ids: RecentIds,
    stats: Stats,

    values: Vec<f64>,
    judgements: Vec<Judgement>,
    quality_buf: Vec<(u16, f64)>,
    /// Data-flow tracking, shared by the engines of one process; and this engine's
    /// number among its sources of time.
    flow: Option<(SharedFlow, usize)>,
    /// Event time up to which the flow tracker has been told.
    flow_clock_ms: i64,
    /// Events for the flow tracker, handed over in batches (see [`Sightings`]).
    sightings: Sightings,
    flow_figures: SettledFigures,
    /// The tracker's clock as this engine last saw it (see [`FlowBucket`]).
    flow_settled_ms: i64,
    /// Every bucket of data-flow figures up to and including this one is judged.
    flow_closed_through: i64,
}

impl Engine {
    /// `score_rows`: which closed buckets are also reported as [`ScoredBucket`]s.
    /// With `flow.enabled`, the engine tracks runs across stages with a tracker of its own.
    pub fn new(settings: &Settings, score_rows: ScoreRows) -> Engine {
        Engine::with_shared(
            settings,
            score_rows,
            StageBudget::new(settings.stages.max_tracked),
            FlowTracker::shared(settings),
        )
    }

    /// An engine that draws its stages from `budget` and tracks runs with `flow`, both
    /// shared with other engines (and `flow` with whoever shows runs).
    pub fn with_shared(
        settings: &Settings,
        score_rows: ScoreRows,
        budget: StageBudget,
        flow: Option<SharedFlow>,
    ) -> Engine {
        let flow = flow.map(|f| {
            let source = crate::flow::lock(&f).add_source();
            (f, source)
        });
        let bucket_ms = settings.bucket_ms();
        Engine {
            bucket_ms,
            lateness_ms: settings.lateness_ms(),
            history_len: settings.window.buckets as usize,
            budget,
            max_quality: settings.stages.max_quality_metrics,
            idle_timeout_ms: settings.stages.idle_timeout.as_millis() as i64,
            max_correlation_ids: settings.alerts.max_correlation_ids,
            max_event_bytes: settings.input.max_event_bytes,
            max_future_skew_ms: settings.input.max_future_skew.as_millis() as i64,
            silence: settings.silence.clone(),
            rules: Rules::new(&settings.alerts),
            factory: AlertFactory {
                bucket_ms,
                dashboard_url: settings.alerts.dashboard_url.clone(),
            },
            policies: PolicyBook::new(settings),
            score_rows,
            hasher: Default::default(),
            index: HashTable::new(),
            stages: Vec::new(),
            watermark_ms: None,
            closed_through: i64::MIN,
            recent_ids: RecentIds::new(settings.input.dedup_capacity),
            stats: Stats::default(),
            values: Vec::new(),
            judgements: Vec::new(),
            quality_buf: Vec::new(),
            flow,
            flow_clock_ms: i64::MIN,
            sightings: Sightings::default(),
            flow_figures: SettledFigures::default(),
            flow_settled_ms: i64::MIN,
            flow_closed_through: i64::MIN,
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn tracked_stages(&self) -> usize {
        self.stages.len()
    }

    /// Heap bytes held by stage state (an estimate from capacities, for the memory
    /// benchmark and the tracked-memory gauge).
    pub fn stage_heap_bytes(&self) -> usize {
        self.stages.iter().map(Stage::heap_bytes).sum::<usize>()
            + self.stages.capacity() * std::mem::size_of::<Stage>()
            + self.index.capacity() * (std::mem::size_of::<u32>() + 1)
    }

    /// Decodes one raw message and applies it: the single path every driver uses.
    /// `now_ms` is the wall clock, for refusing timestamps from the future.
    pub fn ingest(&mut self, bytes: &[u8], now_ms: i64, out: &mut Outputs) -> Outcome {
        let limits = DecodeLimits::new(self.max_event_bytes, now_ms, self.max_future_skew_ms);
        match decode(bytes, &limits) {
            Ok(ref event) => self.apply(event, out),
            Err(rejection) => {
                self.stats.invalid[rejection.reason.index()] += 1;
                Outcome::Invalid(rejection)
            }
        }
    }

    /// Applies one valid event, closing the buckets its time lets close.
    pub fn apply(&mut self, event: &Event, out: &mut Outputs) -> Outcome {
        let ts = event.timestamp_ms;
        let bucket = ts.div_euclid(self.bucket_ms);
        if self.watermark_ms.is_none() {
            self.watermark_ms = Some(ts);
            self.closed_through = (ts - self.lateness_ms).div_euclid(self.bucket_ms) - 1;
        }
        if bucket <= self.closed_through {
            self.stats.late += 1;
            return Outcome::Late;
        }
        let stage_hash = self.hasher.hash_one((&*event.pipeline, &*event.stage));
        let id_hash = event
            .event_id
            .as_ref()
            .map(|id| self.recent_ids.hash(stage_hash, id));
        if id_hash.is_some_and(|h| !self.recent_ids.claim(h)) {
            self.stats.duplicate += 1;
            return Outcome::Duplicate;
        }
        let Some(index) = self.stage_index(event, stage_hash) else {
            if let Some(h) = id_hash {
                self.recent_ids.withdraw(h);
            }
            self.stats.stage_limit += 1;
            return Outcome::StageLimit;
        };
        if let (Some((flow, _)), Some(_)) = (&self.flow, &event.correlation_id) {
            let stage = &mut self.stages[index];
            if stage.flow_key.is_none() {
                stage.flow_key = crate::flow::lock(flow).stage_key(&event.pipeline, &event.stage);
            }
            if let Some(key) = stage.flow_key {
                let declares = stage.declares(&event.upstream);
                if self.sightings.push(key, index as u32, event, declares) >= MAX_SIGHTINGS {
                    self.hand_over_sightings();
                }
            }
        }
        self.add_to_stage(index, event, bucket);
        if let Some(h) = id_hash {
            self.recent_ids.confirm(h);
        }
        self.stats.applied += 1;
        if ts > self.watermark_ms.unwrap_or(i64::MIN) {
            self.advance_watermark(ts, out);
        }
        Outcome::Applied
    }

    /// Live mode, when the consumer is idle (caught up, nothing arriving): lets the wall
    /// clock move event time to now, so buckets close (at their end plus the lateness, as
    /// in replay) and silence is found even when every stream has stopped. A driver
    /// catching up on a backlog must not call this: the backlog's own event time rules.
    pub fn advance_clock(&mut self, now_ms: i64, out: &mut Outputs) {
        if self.watermark_ms.is_some_and(|wm| now_ms > wm) {
            self.advance_watermark(now_ms, out);
        } else {
            // A partition with nothing in it is caught up too: it must not hold the
            // data-flow clock back for ever.
            self.advance_flow(now_ms, out);
        }
    }

    /// Tells the data-flow tracker that this engine's event time is `now_ms`, takes the
    /// figures it settled for this engine's stages into their buckets, and judges the
    /// buckets its clock has passed. A figure whose bucket was judged already, or whose
    /// stage was forgotten, is counted (`flow_figures_late`) and dropped.
    fn advance_flow(&mut self, now_ms: i64, out: &mut Outputs) {
        let Some((flow, source)) = &self.flow else {
            return;
        };
        let mut figures = std::mem::take(&mut self.flow_figures);
        {
            let mut tracker = crate::flow::lock(flow);
            tracker.observe(*source, &mut self.sightings);
            tracker.advance(*source, now_ms, &mut out.alerts);
            tracker.take_settled(*source, &mut figures);
            self.flow_settled_ms = tracker.clock_ms();
        }
        for (f, correlation_id) in figures.iter() {
            let bucket = f.end_ms.div_euclid(self.bucket_ms);
            // The tag is the stage's index when it last reported; forgetting a stage
            // moves another into its place (`swap_remove`), whose figures then come
            // with a stale tag until it reports again.
            let index = match self.stages.get(f.tag as usize) {
                Some(s) if s.flow_key == Some(f.key) => Some(f.tag as usize),
                _ => self.stages.iter().position(|s| s.flow_key == Some(f.key)),
            };
            let judged = |i: usize| self.flow_closed_through.max(self.stages[i].flow_closed);
            let Some(index) = index.filter(|&i| bucket > judged(i)) else {
                self.stats.flow_figures_late += 1;
                continue;
            };
            self.flow_slot(index, f.metric);
            let open = self.stages[index].flow_bucket(bucket);
            let sum = &mut open.sums[f.metric.index()];
            sum.0 += f.value;
            sum.1 += 1;
            (open.correlation_ids).insert(correlation_id, self.max_correlation_ids);
        }
        figures.clear();
        self.flow_figures = figures;
        self.close_flow_buckets(self.closed_through, out);
    }

    /// Judges the buckets of data-flow figures that are complete: those the tracker's
    /// clock has passed by the allowed lateness (every run that ended in them has
    /// settled), up to `through` at most, which no stage bucket closed after. (A stage
    /// with more than `MAX_FLOW_BUCKETS` waiting has its oldest judged as it stands.)
    fn close_flow_buckets(&mut self, through: i64, out: &mut Outputs) {
        let settled =
            (self.flow_settled_ms.saturating_sub(self.lateness_ms)).div_euclid(self.bucket_ms) - 1;
        let through = through.min(settled);
        // The engine tells the tracker the time far more often than a bucket's worth.
        if through <= self.flow_closed_through {
            return;
        }
        self.flow_closed_through = through;
        let (mut closer, stages) = self.closer();
        for stage in stages {
            while let Some(first) = stage.flow_open.front() {
                if first.index > through && stage.flow_open.len() <= MAX_FLOW_BUCKETS {
                    break;
                }
                let bucket = stage.flow_open.pop_front().expect("a front");
                stage.flow_closed = stage.flow_closed.max(bucket.index);
                closer.close_flow(stage, &bucket, out);
                stage.flow_spare = Some(bucket);
            }
        }
    }

    /// Hands the events waiting for the data-flow tracker over to it.
    fn hand_over_sightings(&mut self) {
        if let Some((flow, source)) = &self.flow {
            if !self.sightings.is_empty() {
                crate::flow::lock(flow).observe(*source, &mut self.sightings);
            }
        }
    }

    /// End of a finite input (replay): closes every bucket that is complete, without
    /// inventing time beyond the last event. The data-flow tracker first gets what it
    /// has not seen and the last event's time, so that the figures of those buckets are
    /// in. The bucket the input ends in is partial:
    /// scoring it would read a healthy stage's last seconds as a drop.
    pub fn finish(&mut self, out: &mut Outputs) {
        match self.watermark_ms {
            Some(wm) => self.advance_flow(wm, out),
            None => self.hand_over_sightings(),
        }
        if let Some(wm) = self.watermark_ms {
            let last = (wm + 1).div_euclid(self.bucket_ms) - 1;
            // The input is over: what the tracker settled is all there will be, and the
            // figures are judged with their buckets (before a stage can be forgotten).
            self.flow_settled_ms = i64::MAX;
            while self.closed_through < last {
                self.closed_through += 1;
                self.close_bucket(self.closed_through, out);
            }
            self.close_flow_buckets(last, out);
        }
    }

    fn stage_index(&mut self, event: &Event, hash: u64) -> Option<usize> {
        let stages = &self.stages;
        if let Some(&i) = self.index.find(hash, |&i| {
            let s = &stages[i as usize];
            *s.pipeline == *event.pipeline && *s.stage == *event.stage
        }) {
            return Some(i as usize);
        }
        if !self.budget.take() {
            return None;
        }
        let stage = self.new_stage(event);
        let i = self.stages.len();
        self.stages.push(stage);
        let (stages, hasher) = (&self.stages, &self.hasher);
        self.index.insert_unique(hash, i as u32, |&j| {
            let s = &stages[j as usize];
            hasher.hash_one((&*s.pipeline, &*s.stage))
        });
        self.stats.stages_created += 1;
        Some(i)
    }

    fn new_stage(&mut self, event: &Event) -> Stage {
        let path = format!("{}/{}", event.pipeline, event.stage);
        let series = Builtin::ALL
            .iter()
            .map(|b| Series {
                policy: self.policies.resolve(&path, b.name()),
                detectors: DetectorState::default(),
                tracks: [Track::Idle; 2],
            })
            .collect();
        Stage {
            pipeline: Arc::from(&*event.pipeline),
            stage: Arc::from(&*event.stage),
            open: Vec::with_capacity(2),
            spare: None,
            series,
            extra: Vec::new(),
            reported: Reported::default(),
            gaps: GapTracker::new(event.timestamp_ms),
            silence: Track::Idle,
            flow_key: None,
            declared_upstream: None,
            flow_slots: [u16::MAX; FlowMetric::COUNT],
            flow_open: VecDeque::new(),
            flow_spare: None,
            flow_closed: i64::MIN,
        }
    }

    fn add_to_stage(&mut self, index: usize, event: &Event, bucket: i64) {
        // Quality names map to slots first (new names may add slots), into a buffer the
        // engine keeps so that events with quality figures do not allocate.
        let mut figures = std::mem::take(&mut self.quality_buf);
        figures.clear();
        for (name, x) in &event.quality {
            let slot = self.quality_slot(index, name);
            if slot != u16::MAX {
                figures.push((slot, *x));
            }
        }
        let stage = &mut self.stages[index];
        let open = stage.open_bucket(bucket);
        open.add(event, figures.iter().copied(), self.max_correlation_ids);
        stage.gaps.observe(event.timestamp_ms, &self.silence);
        self.quality_buf = figures;
    }

    /// The slot of quality figure `name` in stage `index`, created if new; `u16::MAX`
    /// when the stage tracks `max_quality_metrics` figures already.
    fn quality_slot(&mut self, index: usize, name: &str) -> u16 {
        let stage = &self.stages[index];
        let found = stage
            .extra
            .iter()
            .position(|e| matches!(e, Extra::Quality(n) if **n == *name));
        if let Some(q) = found {
            return (BUILTIN_SLOTS + q) as u16;
        }
        let tracked = stage
            .extra
            .iter()
            .filter(|e| matches!(e, Extra::Quality(_)))
            .count();
        if tracked >= self.max_quality {
            self.stats.quality_overflow += 1;
            return u16::MAX;
        }
        self.add_extra(index, Extra::Quality(Box::from(name)))
    }

    /// The slot of data-flow metric `metric` in stage `index`, created if new.
    fn flow_slot(&mut self, index: usize, metric: FlowMetric) -> u16 {
        let known = self.stages[index].flow_slots[metric.index()];
        if known != u16::MAX {
            return known;
        }
        let slot = self.add_extra(index, Extra::Flow(metric));
        self.stages[index].flow_slots[metric.index()] = slot;
        slot
    }

    fn add_extra(&mut self, index: usize, extra: Extra) -> u16 {
        let stage = &self.stages[index];
        let metric = match &extra {
            Extra::Quality(q) => MetricName::Quality(q),
            Extra::Flow(f) => MetricName::Flow(f.name()),
        };
        let policy = self.policies.resolve(&stage.path(), &metric.to_string());
        let stage = &mut self.stages[index];
        stage.extra.push(extra);
        stage.series.push(Series {
            policy,
            detectors: DetectorState::default(),
            tracks: [Track::Idle; 2],
        });
        (BUILTIN_SLOTS + stage.extra.len() - 1) as u16
    }

    fn advance_watermark(&mut self, ts: i64, out: &mut Outputs) {
        let previous = self.watermark_ms.unwrap_or(ts);
        self.watermark_ms = Some(ts.max(previous));
        let closable = (ts - self.lateness_ms).div_euclid(self.bucket_ms) - 1;
        // Told as buckets close, the tracker has the figures of a closing bucket when
        // its clock is this engine's (replay), and they are judged with it; otherwise,
        // with run deadlines minutes long, telling it every few seconds of event time
        // is soon enough. (What it finds does not depend on how often: see
        // `FlowTracker::advance`, and `FlowBucket` for the figures.)
        let closes = closable > self.closed_through;
        if self.flow.is_some() && (closes || ts >= self.flow_clock_ms.saturating_add(FLOW_TICK_MS))
        {
            self.flow_clock_ms = ts;
            self.advance_flow(ts, out);
        }
        // After a jump far ahead (a long gap in the data), close the buckets that hold
        // data and the last `history_len` empty ones, and pass over the rest: they
        // would be empty for every stage, and closing each could stall the engine.
        let newest_with_data = previous.div_euclid(self.bucket_ms);
        let skip_from = newest_with_data.max(closable - self.history_len as i64);
        while self.closed_through < closable {
            if self.closed_through >= newest_with_data && self.closed_through < skip_from {
                self.stats.buckets_skipped += (skip_from - self.closed_through) as u64;
                self.closed_through = skip_from;
                continue;
            }
            self.closed_through += 1;
            self.close_bucket(self.closed_through, out);
        }
    }

    /// What judges closing buckets, and the stages whose buckets it judges.
    fn closer(&mut self) -> (Closer<'_>, &mut Vec<Stage>) {
        let closer = Closer {
            policies: &self.policies,
            factory: &self.factory,
            rules: &self.rules,
            silence: &self.silence,
            bucket_ms: self.bucket_ms,
            score_rows: self.score_rows,
            values: &mut self.values,
            judgements: &mut self.judgements,
            stats: &mut self.stats,
        };
        (closer, &mut self.stages)
    }

    /// Closes bucket `b` for every stage, then forgets stages idle for too long.
    fn close_bucket(&mut self, b: i64, out: &mut Outputs) {
        self.stats.buckets_closed += 1;
        let end_ms = (b + 1) * self.bucket_ms;
        let (mut closer, stages) = self.closer();
        for stage in stages {
            closer.close(stage, b, out);
        }
        // Before any stage is forgotten with figures waiting.
        if self.flow.is_some() {
            self.close_flow_buckets(b, out);
        }
        let mut i = 0;
        while i < self.stages.len() {
            if end_ms - self.stages[i].gaps.last_event_ms() > self.idle_timeout_ms {
                self.evict(i, end_ms, out);
            } else {
                i += 1;
            }
        }
    }

    /// Forgets stage `i`. Its firing alerts are resolved, as Prometheus resolves the
    /// alerts of a series that disappears, so no subscriber keeps a ghost alert.
    fn evict(&mut self, i: usize, end_ms: i64, out: &mut Outputs) {
        let mut stage = self.stages.swap_remove(i);
        let hash = self.hasher.hash_one((&*stage.pipeline, &*stage.stage));
        if let Ok(entry) = self.index.find_entry(hash, |&j| j as usize == i) {
            entry.remove();
        }
        if let Some(moved) = self.stages.get(i) {
            let old = self.stages.len() as u32;
            let moved_hash = self.hasher.hash_one((&*moved.pipeline, &*moved.stage));
            if let Some(slot) = self.index.find_mut(moved_hash, |&j| j == old) {
                *slot = i as u32;
            }
        }
        self.stats.stages_evicted += 1;
        // Figures waiting for a later part of the tracker's clock go with the stage.
        let waiting: u64 = (stage.flow_open.iter())
            .flat_map(|b| b.sums.map(|(_, n)| u64::from(n)))
            .sum();
        self.stats.flow_figures_late += waiting;
        self.budget.give_back(1);
        if self.score_rows != ScoreRows::None {
            out.forgotten
                .push((stage.pipeline.to_string(), stage.stage.to_string()));
        }
        let all_slots = 0..stage.series.len();
        stop_judging(
            &mut stage,
            all_slots,
            true,
            end_ms,
            "the stage sent nothing for stages.idle_timeout and is no longer tracked",
            &self.factory,
            &mut self.stats,
            out,
        );
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.budget.give_back(self.stages.len());
        if let Some((flow, source)) = &self.flow {
            // Not `flow::lock`: a drop while unwinding must not panic again.
            let mut tracker = flow.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            // What it applied counts for runs that go on in other engines; but not
            // while unwinding, when the tracker may be what failed.
            if !std::thread::panicking() {
                tracker.observe(*source, &mut self.sightings);
            }
            tracker.remove_source(*source);
        }
    }
}

/// Ends the judging of some of a stage's series (and of its silence, with `silence`):
/// every lifecycle returns to idle, and each firing alert is resolved with `note` as
/// its summary. This is not the condition ending but pipewatch ceasing to judge it (the
/// stage was forgotten, or the detectors accepted a new level), so the resolution has no
/// value or band (nulls) and detector "none"; without it a subscriber would keep a ghost
/// alert firing for ever.
#[allow(clippy::too_many_arguments)]
fn stop_judging(
    stage: &mut Stage,
    slots: std::ops::Range<usize>,
    silence: bool,
    end_ms: i64,
    note: &str,
    factory: &AlertFactory,
    stats: &mut Stats,
    out: &mut Outputs,
) {
    let mut firing: Vec<(AlertKind, String, Notice)> = Vec::new();
    if silence {
        if let Track::Firing {
            started_ms,
            severity,
            ..
        } = std::mem::take(&mut stage.silence)
        {
            firing.push((
                AlertKind::Silence,
                "silence".into(),
                resolved(started_ms, end_ms, severity),
            ));
        }
    }
    for slot in slots {
        let metric = metric_name(&stage.extra, slot);
        for side in 0..2 {
            let track = std::mem::take(&mut stage.series[slot].tracks[side]);
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
            pipeline: &stage.pipeline,
            stage: &stage.stage,
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
        alert.summary = format!("{}/{} {metric}: {note}", stage.pipeline, stage.stage);
        alert.annotations.insert("note", note.to_string());
        stats.alerts_resolved += 1;
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

impl Closer<'_> {
    fn close(&mut self, stage: &mut Stage, b: i64, out: &mut Outputs) {
        let start_ms = b * self.bucket_ms;
        let end_ms = start_ms + self.bucket_ms;
        let bucket = match stage.open.first() {
            Some(first) if first.index == b => stage.open.remove(0),
            _ => stage.new_bucket(b),
        };
        bucket.note_reported(&mut stage.reported);
        let slots = stage.series.len();
        self.values.resize(slots, f64::NAN);
        let dense = stage
            .gaps
            .is_dense(self.bucket_ms, self.silence.training_gaps);
        bucket.values(dense, &stage.reported, self.values);

        if self.values.iter().any(|v| !v.is_nan()) {
            for slot in 0..slots {
                self.score(stage, slot, &bucket.correlation_ids, start_ms, end_ms, out);
            }
        }
        if self.silence.enabled {
            self.judge_silence(stage, start_ms, end_ms, out);
        }
        stage.spare = Some(bucket);
    }

    /// Judges a bucket of a stage's data-flow figures.
    fn close_flow(&mut self, stage: &mut Stage, bucket: &FlowBucket, out: &mut Outputs) {
        let start_ms = bucket.index * self.bucket_ms;
        let end_ms = start_ms + self.bucket_ms;
        self.values.resize(stage.series.len(), f64::NAN);
        for (metric, &(sum, n)) in bucket.sums.iter().enumerate() {
            let slot = stage.flow_slots[metric];
            if n == 0 || slot == u16::MAX {
                continue;
            }
            // `score` reads this slot's value alone.
            self.values[slot as usize] = sum / n as f64;
            let ids = &bucket.correlation_ids;
            self.score(stage, slot as usize, ids, start_ms, end_ms, out);
        }
    }

    /// Judges one metric of the closing bucket, learns from it if it was normal, and
    /// moves its alert lifecycle. (Inlined into both closers: outlined, it cost `engine`
    /// about 1% more instructions.)
    #[inline(always)]
    fn score(
        &mut self,
        stage: &mut Stage,
        slot: usize,
        correlation_ids: &CorrelationIds,
        start_ms: i64,
        end_ms: i64,
        out: &mut Outputs,
    ) {
        let value = self.values[slot];
        // A metric without a value is neither judged nor learnt from, scored nor alerted
        // on: its bands would only be computed to be thrown away.
        if value.is_nan() {
            return;
        }
        let series = &stage.series[slot];
        let policy = self.policies.get(series.policy);
        let verdict = detect::judge(policy, &series.detectors, value, self.judgements);
        let band = verdict
            .lead
            .and_then(|j| j.band)
            .map(|b| (b.lower, b.upper));
        let relearned = stage.series[slot]
            .detectors
            .learn(policy, value, verdict.unusual, band);
        let metric = metric_name(&stage.extra, slot);
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
                    pipeline: Arc::clone(&stage.pipeline),
                    stage: Arc::clone(&stage.stage),
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
                stage,
                slot..slot + 1,
                false,
                end_ms,
                "the value stayed outside its band for detection.relearn_after buckets; \
                 the detectors now learn this level as normal",
                self.factory,
                self.stats,
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
            let track = &mut stage.series[slot].tracks[side];
            let Some(notice) = track.observe(observation, start_ms, end_ms, self.rules) else {
                continue;
            };
            let kind = AlertKind::of(metric, side == 1);
            let alert = self.factory.build(&AlertFacts {
                notice,
                kind,
                pipeline: &stage.pipeline,
                stage: &stage.stage,
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
            self.count(&notice);
            out.alerts.push(alert);
        }
    }

    fn judge_silence(&mut self, stage: &mut Stage, start_ms: i64, end_ms: i64, out: &mut Outputs) {
        let Some(j) = stage.gaps.judge(end_ms, self.silence) else {
            return;
        };
        // A stage that stopped is what "fails silently" means: always critical. Its score
        // grows with every quiet minute, so a warning would only escalate a minute later.
        let observation = if j.silent {
            Observation::Anomalous(Severity::Critical)
        } else {
            Observation::Normal
        };
        let Some(notice) = stage
            .silence
            .observe(observation, start_ms, end_ms, self.rules)
        else {
            return;
        };
        let seconds = |ms: f64| ms / 1000.0;
        let alert = self.factory.build(&AlertFacts {
            notice,
            kind: AlertKind::Silence,
            pipeline: &stage.pipeline,
            stage: &stage.stage,
            metric: "silence",
            detector: "silence",
            value: seconds(j.silent_for_ms as f64),
            expected: seconds(j.baseline.expected),
            lower: 0.0,
            upper: seconds(j.threshold_ms),
            score: j.score,
            bucket_start: start_ms,
            bucket_end: end_ms,
            correlation_ids: &[],
            upward_only: true,
        });
        self.count(&notice);
        out.alerts.push(alert);
    }

    fn count(&mut self, notice: &Notice) {
        match notice {
            Notice::Firing { .. } => self.stats.alerts_firing += 1,
            Notice::Resolved { .. } => self.stats.alerts_resolved += 1,
        }
    }
}
