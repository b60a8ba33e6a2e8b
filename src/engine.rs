//! The engine: decoded events in, alerts and scored buckets out, in event time.
//!
//! One engine, several drivers: `pipewatch replay` feeds it from a file, `pipewatch run`
//! from Kafka, the benchmarks from memory. It is single-threaded and deterministic: the
//! same events in the same order give the same alerts (except their random `alert_id`).
//! Data-flow tracking across stages runs beside it, on the tracker's own thread
//! ([`crate::flow`]): the engine hands it events in batches, and passes on what it found
//! every 15 minutes of event time, at points that depend on the events alone (see
//! `flow::worker`).
//!
//! Time is the **watermark**, the newest event time seen. Bucket `b` covers
//! `[b·width, (b+1)·width)` and is closed, for every stage at once, when the watermark
//! passes its end plus `allowed_lateness`; an event for a closed bucket is late and
//! dropped. In live mode an idle consumer lets the wall clock move the watermark (see
//! [`Engine::advance_clock`]), so silence is found even when every stream stops.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use hashbrown::HashTable;

use crate::alert::{
    Alert, AlertFactory, AlertFacts, AlertStatus, Observation, Rules, Severity, Track,
};
use crate::config::{Settings, SilenceSettings};
use crate::decode::{decode_hinting, DecodeLimits, Event, Reason, Rejection, Upstream};
use crate::dedup::RecentIds;
use crate::detect::silence::GapTracker;
use crate::detect::{Judgement, PolicyBook};
use crate::flow::{Answer, FlowLink, FlowTracker, SharedFlow, Sightings, StageKey};
use crate::metric::{AlertKind, Builtin, MetricName, BUILTIN_SLOTS};
use crate::score::{stop_judging, AlertCounts, Judged, Scorer, Series, Slots};
use crate::window::{Bucket, Reported};

pub use crate::score::{ScoreRows, ScoredBucket};

/// How often, in event time, an engine tells the data-flow tracker where it is (and so
/// lets it run its checks), and applies the answers to its reports up to the last such
/// tick. What the tracker finds does not depend on how often (see
/// `FlowTracker::advance`), only when, in event time, it comes out; live, `pipewatch run`
/// tells it every commit interval as well (see [`Engine::flow_mark`]). Reading a backlog,
/// an engine covers a minute of event time in a few dozen events, and each report costs
/// both threads a batch handed over, an answer and often a wake-up. Reporting at every
/// (one-minute) bucket close, as before, `kafka` at 400,000 events measured 0.49 and 0.48
/// of the raw rate; with this tick, in the same two alternated pairs of runs, 0.71 and
/// 0.59, the tracker's thread spending 0.33–0.62 µs per message instead of 0.53–0.68.
const FLOW_TICK_MS: i64 = 15 * 60_000;

/// Reports an engine leaves the data-flow tracker to answer before it waits for them:
/// at a tick it applies the answers through the report of the tick before, but never
/// those of its last this many reports. A tick is 15 minutes of event time, and reading a
/// backlog a partition with a few hundred events an hour covers two or three ticks in one
/// batch (`run`'s 512 messages), so the report of the tick before had often been sent a
/// fraction of a millisecond earlier: the engine waited for the tracker at nearly every
/// tick, the two threads took turns, and a core sat idle meanwhile. In
/// `benches/kafka.rs` the consume loop waited for the tracker 14% of its time (median
/// of 28 rounds) and now never does; over those rounds, alternated with the build
/// before, it read 576,000 events/s against 529,000 (medians; the raw consumer 748,000
/// and 746,000), and now waits for messages instead (README, Performance). What comes
/// out where still depends on the engine's events alone, and the answers held are few
/// and small (each gave its batch back as it came).
const FLOW_SLACK_REPORTS: u64 = 16;

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
    /// Alerts passed on: the engine's own, and the data-flow tracker's.
    pub alerts: AlertCounts,
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
        self.alerts.firing += other.alerts.firing;
        self.alerts.resolved += other.alerts.resolved;
    }
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

struct Stage {
    /// Its names, and the series of its metrics: the built-ins, then its quality figures.
    judged: Judged,
    /// Open buckets, oldest first; at most lateness/width + 2 of them.
    open: Vec<Bucket>,
    /// The last bucket closed, emptied into the next one opened (see [`Bucket::reset`]).
    spare: Option<Bucket>,
    reported: Reported,
    gaps: GapTracker,
    silence: Track,
    /// The stage's key in the data-flow tracker, once an event with a correlation id
    /// asked for it.
    flow_key: FlowKey,
    /// Its upstream stages as the last event that declared them wrote them (see
    /// [`Stage::declares`]).
    declared_upstream: Option<Box<str>>,
}

/// What the data-flow tracker said when a stage's first event with a correlation id
/// asked for its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlowKey {
    NotAsked,
    Key(StageKey),
    /// Its pipeline has `flow.max_stages_per_pipeline` stages already: the stage's
    /// events are counted, not followed (and the tracker is not asked again).
    Refused,
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

    /// Heap bytes held, for memory accounting.
    fn heap_bytes(&self) -> usize {
        self.judged.heap_bytes()
            + self.open.capacity() * std::mem::size_of::<Bucket>()
            + self.open.iter().map(Bucket::heap_bytes).sum::<usize>()
            + self
                .spare
                .as_ref()
                .map_or(0, |b| std::mem::size_of::<Bucket>() + b.heap_bytes())
    }
}

/// The hash that finds a stage in the engine's index.
fn stage_hash(hasher: &impl BuildHasher, pipeline: &str, stage: &str) -> u64 {
    hasher.hash_one((pipeline, stage))
}

/// The hash the duplicate filter remembers an event by, if it has an id: ids are unique
/// within a stage.
fn id_hash(hasher: &impl BuildHasher, stage_hash: u64, event: &Event) -> Option<u64> {
    event
        .event_id
        .as_ref()
        .map(|id| hasher.hash_one((stage_hash, id)))
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

/// What an engine had handed the data-flow tracker at one moment (see
/// [`Engine::flow_mark`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowMark(u64);

/// Which of the data-flow tracker's answers an engine applies.
enum Answers {
    /// Those to reports up to this number, waiting for them.
    Through(u64),
    /// Those that have come.
    Arrived,
}

/// Everything bucket closing needs besides the stage itself, borrowed apart from the
/// stage list so both can be used at once.
struct Closer<'a> {
    scorer: Scorer<'a>,
    silence: &'a SilenceSettings,
    bucket_ms: i64,
    values: &'a mut Vec<f64>,
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
    /// Data-flow tracking: this engine's link to the tracker's thread, which the engines
    /// of one process share (see [`crate::flow::SharedFlow`]).
    flow: Option<FlowLink>,
    /// The event time of the engine's last tick of the data-flow tracker
    /// (`FLOW_TICK_MS`).
    flow_clock_ms: i64,
    /// Events for the flow tracker, handed over in batches (see [`Sightings`]).
    sightings: Sightings,
    /// The tracker's answers taken, being applied (a buffer).
    flow_answers: Vec<Answer>,
    /// The number of the report sent at the last tick (`FLOW_TICK_MS`), through which
    /// the next tick applies the answers (but for the last `FLOW_SLACK_REPORTS`).
    flow_tick_report: u64,
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
        let flow = flow.map(|f| f.connect(score_rows));
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
            flow_answers: Vec::new(),
            flow_tick_report: 0,
        }
    }

    /// The latest event time read (epoch ms), none before the first event.
    pub fn watermark_ms(&self) -> Option<i64> {
        self.watermark_ms
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
        let (hasher, recent_ids) = (&self.hasher, &self.recent_ids);
        let identified = |event: &Event| {
            if let Some(h) = id_hash(
                hasher,
                stage_hash(hasher, &event.pipeline, &event.stage),
                event,
            ) {
                recent_ids.prefetch(h);
            }
        };
        match decode_hinting(bytes, &limits, identified) {
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
        let stage_hash = stage_hash(&self.hasher, &event.pipeline, &event.stage);
        let id_hash = id_hash(&self.hasher, stage_hash, event);
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
        if let (Some(link), Some(_)) = (&self.flow, &event.correlation_id) {
            let stage = &mut self.stages[index];
            if stage.flow_key == FlowKey::NotAsked {
                let key = link.flow().lock().stage_key(&event.pipeline, &event.stage);
                stage.flow_key = key.map_or(FlowKey::Refused, FlowKey::Key);
            }
            match stage.flow_key {
                FlowKey::Key(key) => {
                    let declares = stage.declares(&event.upstream);
                    if self.sightings.push(key, event, declares) >= MAX_SIGHTINGS {
                        self.report_flow(self.watermark_ms);
                    }
                }
                FlowKey::Refused => self.sightings.refuse(),
                FlowKey::NotAsked => unreachable!("asked above"),
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
        }
        // The tracker is told the time at every call, not only at its ticks
        // (`FLOW_TICK_MS`): a run that stopped halfway is found stuck when its deadline
        // passes, not up to a tick later. A partition with nothing in it is caught up
        // too: it must not hold the data-flow clock back for ever.
        self.report_flow(Some(now_ms));
        // Live, what the tracker found is passed on as soon as it comes.
        self.apply_flow_answers(Answers::Arrived, out);
    }

    /// Waits for the data-flow tracker to take in every event this engine has read, and
    /// this engine's event time, and passes on what it has found. Without this, what the
    /// tracker finds comes out at the tick (`FLOW_TICK_MS`) after the report's (see
    /// `flow::worker`).
    pub fn flush_flow(&mut self, out: &mut Outputs) {
        let last = self.report_flow(self.watermark_ms);
        self.apply_flow_answers(Answers::Through(last), out);
    }

    /// The same without waiting: hands the data-flow tracker every event this engine
    /// has read, with this engine's event time, and returns the mark that
    /// [`Engine::flow_passed_on`] waits for. `pipewatch run` calls it before each
    /// commit, so live, the tracker's clock is never more than a commit interval behind.
    pub fn flow_mark(&mut self) -> FlowMark {
        FlowMark(self.report_flow(self.watermark_ms))
    }

    /// Passes on what the data-flow tracker has answered so far, without waiting; true
    /// once that includes everything it found from the events read before `mark`.
    pub fn flow_passed_on(&mut self, mark: FlowMark, out: &mut Outputs) -> bool {
        self.apply_flow_answers(Answers::Arrived, out);
        self.flow.as_ref().is_none_or(|link| link.taken() >= mark.0)
    }

    /// Hands the data-flow tracker the events waiting for it and, when given, this
    /// engine's event time. Returns the report's number (see [`FlowLink::report`]).
    fn report_flow(&mut self, now_ms: Option<i64>) -> u64 {
        let Some(link) = &mut self.flow else {
            return 0;
        };
        link.report(&mut self.sightings, now_ms, false)
    }

    /// Passes on the tracker's answers: the alerts it raised, and the rows of the
    /// data-flow metrics it judged for this engine's stages.
    fn apply_flow_answers(&mut self, which: Answers, out: &mut Outputs) {
        let Some(link) = &mut self.flow else {
            return;
        };
        let mut answers = std::mem::take(&mut self.flow_answers);
        match which {
            Answers::Through(report) => answers.extend(link.take_through(report)),
            Answers::Arrived => answers.extend(link.take_arrived()),
        }
        for mut answer in answers.drain(..) {
            for alert in &answer.found.alerts {
                match alert.status {
                    AlertStatus::Firing => self.stats.alerts.firing += 1,
                    AlertStatus::Resolved => self.stats.alerts.resolved += 1,
                }
            }
            out.alerts.append(&mut answer.found.alerts);
            out.scores.append(&mut answer.found.scores);
        }
        self.flow_answers = answers;
    }

    /// End of a finite input (replay): closes every bucket that is complete, without
    /// inventing time beyond the last event. The data-flow tracker gets what it has not
    /// seen and the last event's time, and judges the figures of those buckets too. The
    /// bucket the input ends in is partial: scoring it would read a healthy stage's last
    /// seconds as a drop.
    pub fn finish(&mut self, out: &mut Outputs) {
        if let Some(link) = &mut self.flow {
            let last = link.report(&mut self.sightings, self.watermark_ms, true);
            self.apply_flow_answers(Answers::Through(last), out);
        }
        if let Some(wm) = self.watermark_ms {
            let last = (wm + 1).div_euclid(self.bucket_ms) - 1;
            while self.closed_through < last {
                self.closed_through += 1;
                self.close_bucket(self.closed_through, out);
            }
        }
    }

    fn stage_index(&mut self, event: &Event, hash: u64) -> Option<usize> {
        let stages = &self.stages;
        if let Some(&i) = self.index.find(hash, |&i| {
            let s = &stages[i as usize].judged;
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
            let s = &stages[j as usize].judged;
            stage_hash(hasher, &s.pipeline, &s.stage)
        });
        self.stats.stages_created += 1;
        Some(i)
    }

    fn new_stage(&mut self, event: &Event) -> Stage {
        let path = format!("{}/{}", event.pipeline, event.stage);
        let series = (Builtin::ALL.iter())
            .map(|b| Series::new(self.policies.resolve(&path, b.name())))
            .collect();
        Stage {
            judged: Judged {
                pipeline: Arc::from(&*event.pipeline),
                stage: Arc::from(&*event.stage),
                series,
                slots: Slots::Stage {
                    quality: Vec::new(),
                },
            },
            open: Vec::with_capacity(2),
            spare: None,
            reported: Reported::default(),
            gaps: GapTracker::new(event.timestamp_ms),
            silence: Track::Idle,
            flow_key: FlowKey::NotAsked,
            declared_upstream: None,
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
        let judged = &mut self.stages[index].judged;
        let Slots::Stage { quality } = &mut judged.slots else {
            unreachable!("an engine's stages have the built-ins and quality figures")
        };
        if let Some(q) = quality.iter().position(|n| **n == *name) {
            return (BUILTIN_SLOTS + q) as u16;
        }
        if quality.len() >= self.max_quality {
            self.stats.quality_overflow += 1;
            return u16::MAX;
        }
        quality.push(Box::from(name));
        let metric = MetricName::Quality(name).to_string();
        let policy = self.policies.resolve(&judged.path(), &metric);
        judged.series.push(Series::new(policy));
        (judged.series.len() - 1) as u16
    }

    fn advance_watermark(&mut self, ts: i64, out: &mut Outputs) {
        let previous = self.watermark_ms.unwrap_or(ts);
        self.watermark_ms = Some(ts.max(previous));
        let closable = (ts - self.lateness_ms).div_euclid(self.bucket_ms) - 1;
        if self.flow.is_some() && ts >= self.flow_clock_ms.saturating_add(FLOW_TICK_MS) {
            self.flow_clock_ms = ts;
            let report = self.report_flow(Some(ts));
            // The answers through the report of the last tick, but for the last few
            // reports (`FLOW_SLACK_REPORTS`): long since come unless the tracker is far
            // behind. Where answers are applied depends on this engine's events alone
            // (see `flow::worker`).
            let last_tick = std::mem::replace(&mut self.flow_tick_report, report);
            let through = last_tick.min(report.saturating_sub(FLOW_SLACK_REPORTS));
            self.apply_flow_answers(Answers::Through(through), out);
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
            scorer: Scorer {
                policies: &self.policies,
                factory: &self.factory,
                rules: &self.rules,
                score_rows: self.score_rows,
                judgements: &mut self.judgements,
                counts: &mut self.stats.alerts,
            },
            silence: &self.silence,
            bucket_ms: self.bucket_ms,
            values: &mut self.values,
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
        let hash = stage_hash(&self.hasher, &stage.judged.pipeline, &stage.judged.stage);
        if let Ok(entry) = self.index.find_entry(hash, |&j| j as usize == i) {
            entry.remove();
        }
        if let Some(moved) = self.stages.get(i) {
            let old = self.stages.len() as u32;
            let moved = &moved.judged;
            let moved_hash = stage_hash(&self.hasher, &moved.pipeline, &moved.stage);
            if let Some(slot) = self.index.find_mut(moved_hash, |&j| j == old) {
                *slot = i as u32;
            }
        }
        self.stats.stages_evicted += 1;
        self.budget.give_back(1);
        let judged = &mut stage.judged;
        if self.score_rows != ScoreRows::None {
            (out.forgotten).push((judged.pipeline.to_string(), judged.stage.to_string()));
        }
        let all_slots = 0..judged.series.len();
        stop_judging(
            judged,
            Some(&mut stage.silence),
            all_slots,
            end_ms,
            "the stage sent nothing for stages.idle_timeout and is no longer tracked",
            &self.factory,
            &mut self.stats.alerts,
            out,
        );
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.budget.give_back(self.stages.len());
        if let Some(link) = &mut self.flow {
            // What it applied counts for runs that go on in other engines; but not
            // while unwinding, when the tracker may be what failed.
            if !std::thread::panicking() {
                link.leave(std::mem::take(&mut self.sightings));
            }
        }
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
        let slots = stage.judged.series.len();
        self.values.resize(slots, f64::NAN);
        let dense = stage
            .gaps
            .is_dense(self.bucket_ms, self.silence.training_gaps);
        bucket.values(dense, &stage.reported, self.values);

        if self.values.iter().any(|v| !v.is_nan()) {
            let ids = &bucket.correlation_ids;
            for (slot, &value) in self.values.iter().enumerate() {
                let judged = &mut stage.judged;
                (self.scorer).score(judged, slot, value, ids, start_ms, end_ms, out);
            }
        }
        if self.silence.enabled {
            self.judge_silence(stage, start_ms, end_ms, out);
        }
        stage.spare = Some(bucket);
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
            .observe(observation, start_ms, end_ms, self.scorer.rules)
        else {
            return;
        };
        let seconds = |ms: f64| ms / 1000.0;
        let alert = self.scorer.factory.build(&AlertFacts {
            notice,
            kind: AlertKind::Silence,
            pipeline: &stage.judged.pipeline,
            stage: &stage.judged.stage,
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
        self.scorer.counts.count(&notice);
        out.alerts.push(alert);
    }
}
