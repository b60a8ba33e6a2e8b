//! The event generator: walks every pipeline unit by unit (a batch run or a streaming
//! micro-batch), computes each stage's outcome, and releases events in timestamp order.
//!
//! Ordering works like a k-way merge. Every event of a unit is stamped at or after the unit's
//! ready time, and units of a pipeline are generated in ready-time order, so once the earliest
//! pending event is no later than the next ready time of every pipeline, no event still to be
//! generated can precede it. Only the events of the units in flight are ever held in memory.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::Arc;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::encode::{event_key, DELAY_SALT};
use super::faults::{build_labels, ActiveFault, FaultKind, FaultLabel, FaultSet, LabelTracker};
use super::noise::{mix64, normal, poisson_like, round_to, scale_count, seeded, stream};
use super::topology::{Mode, Pipeline, Stage, Topology};

/// Chance that one stage's attempt at one unit fails transiently and is retried.
const STREAMING_RETRY_P: f64 = 1.0 / 5_000.0;
const BATCH_RETRY_P: f64 = 1.0 / 250.0;
/// Chance that an event counts one or two organic errors.
const ORGANIC_ERROR_P: f64 = 0.01;
/// Schema violations per record read on a quality stage: mostly 0 on a micro-batch (one in
/// twenty carries one), a few per batch run. A count proportional to volume gives detectors a
/// learnable distribution rather than isolated blips on a zero baseline.
const SCHEMA_VIOLATIONS_PER_RECORD: f64 = 5e-5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    Success,
    Failure,
    Retry,
}

impl Status {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Status::Success => "success",
            Status::Failure => "failure",
            Status::Retry => "retry",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Quality {
    pub null_rate: f64,
    pub duplicate_rate: f64,
    pub schema_violations: u32,
}

/// One event before encoding.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RawEvent {
    /// Event time, epoch milliseconds.
    pub ts: i64,
    pub pipeline: u32,
    pub stage: u32,
    /// Sequence number of the unit within its pipeline.
    pub unit: u64,
    /// Time the correlation id is named after: the scheduled run time, or the micro-batch cut.
    pub corr_ms: i64,
    pub status: Status,
    pub records_in: u64,
    pub records_out: u64,
    pub rejected: u64,
    pub bytes: u64,
    pub errors: u64,
    pub duration_ms: f64,
    pub quality: Option<Quality>,
    /// Index into the pipeline's hosts.
    pub host: u32,
}

/// A heap entry ordered by `(key, seq)`, smallest first.
struct Pending {
    key: i64,
    seq: u64,
    event: RawEvent,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Pending {}

impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Pending {
    // Reversed, so that std's max-heap pops the earliest entry.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.key, other.seq).cmp(&(self.key, self.seq))
    }
}

/// The random numbers one stage consumes for one unit, always drawn in full, so the organic data
/// stays the same whatever faults act (see `noise`).
struct StageDraws {
    z_count: f64,
    u_count: f64,
    z_reject: f64,
    u_reject: f64,
    u_error: f64,
    z_duration: f64,
    z_lag: f64,
    z_bytes: f64,
    u_host: f64,
    u_retry: f64,
    u_retry_at: f64,
    u_backoff: f64,
    z_null: f64,
    z_dup: f64,
    z_schema: f64,
    u_schema: f64,
}

impl StageDraws {
    fn draw(rng: &mut ChaCha8Rng) -> Self {
        StageDraws {
            z_count: normal(rng),
            u_count: rng.gen(),
            z_reject: normal(rng),
            u_reject: rng.gen(),
            u_error: rng.gen(),
            z_duration: normal(rng),
            z_lag: normal(rng),
            z_bytes: normal(rng),
            u_host: rng.gen(),
            u_retry: rng.gen(),
            u_retry_at: rng.gen(),
            u_backoff: rng.gen(),
            z_null: normal(rng),
            z_dup: normal(rng),
            z_schema: normal(rng),
            u_schema: rng.gen(),
        }
    }
}

/// What a unit looks like before it reaches the stages.
struct Unit {
    seq: u64,
    ready_ms: i64,
    corr_ms: i64,
    /// Seconds of source traffic the unit carries.
    span_s: f64,
    /// Daily cycle × unit-level noise.
    volume: f64,
}

/// What a stage handed on for the current unit.
#[derive(Clone, Copy, Default)]
struct Outcome {
    /// Whether downstream stages received its output (not silent, not failed, not skipped).
    delivered: bool,
    /// Whether the unit got stuck at or before this stage: no stage after it sees the unit,
    /// even one that another upstream would feed.
    stuck: bool,
    records_out: u64,
    finish_ms: i64,
}

/// A stage's input for the current unit.
struct Input {
    records: u64,
    ready_ms: i64,
}

/// Generation state of one pipeline.
struct Line {
    rng: ChaCha8Rng,
    /// Noise of fault effects, kept apart so faults never disturb the organic stream.
    fault_rng: ChaCha8Rng,
    /// Ready (streaming) or scheduled (batch) time of the next unit: no later event can be
    /// stamped earlier.
    next_ms: i64,
    prev_ready_ms: i64,
    next_seq: u64,
    /// When each stage finished its previous unit: stages process units one at a time.
    free_at: Vec<i64>,
}

impl Line {
    fn new(pipe: &Pipeline, index: usize, seed: u64, start_ms: i64) -> Self {
        let base = stream::PIPELINE_BASE + 2 * index as u64;
        let mut rng = seeded(seed, base);
        let (next_ms, prev_ready_ms) = match pipe.mode {
            // Random phase, so pipelines do not tick in lockstep.
            Mode::Streaming { interval_ms } => {
                let first = start_ms + rng.gen_range(0..interval_ms);
                (first, first - interval_ms)
            }
            // First scheduled time at or after the start, aligned to UTC.
            Mode::Batch {
                period_ms,
                offset_ms,
            } => {
                let rel = start_ms - offset_ms;
                let k = rel.div_euclid(period_ms) + i64::from(rel.rem_euclid(period_ms) != 0);
                (k * period_ms + offset_ms, 0)
            }
        };
        Line {
            rng,
            fault_rng: seeded(seed, base + 1),
            next_ms,
            prev_ready_ms,
            next_seq: 0,
            free_at: vec![i64::MIN; pipe.stages.len()],
        }
    }

    /// Draws the next unit's timing and volume and advances the schedule.
    fn begin_unit(&mut self, pipe: &Pipeline) -> Unit {
        let seq = self.next_seq;
        self.next_seq += 1;
        let z_volume = normal(&mut self.rng);
        let (ready_ms, corr_ms, span_s) = match pipe.mode {
            Mode::Streaming { interval_ms } => {
                let ready = self.next_ms;
                let span = ready - self.prev_ready_ms;
                let gap = (interval_ms as f64 * self.rng.gen_range(0.75..1.25)).round() as i64;
                self.prev_ready_ms = ready;
                self.next_ms = ready + gap.max(1);
                (ready, ready, span as f64 / 1_000.0)
            }
            Mode::Batch { period_ms, .. } => {
                let scheduled = self.next_ms;
                let jitter = self.rng.gen_range(0..5_000);
                self.next_ms = scheduled + period_ms;
                (scheduled + jitter, scheduled, period_ms as f64 / 1_000.0)
            }
        };
        // Unit-level noise of a few percent on top of the Poisson noise of the counts, which
        // alone would be far too smooth for the large counts of batch runs.
        let volume = pipe.daily_factor(ready_ms) * (0.03 * z_volume).exp();
        Unit {
            seq,
            ready_ms,
            corr_ms,
            span_s,
            volume,
        }
    }
}

/// The context of one stage processing one unit.
struct StageCtx<'a> {
    pipeline: u32,
    stage: u32,
    def: &'a Stage,
    mode: Mode,
    unit: &'a Unit,
    hosts: usize,
}

/// A stage's events for one unit, or the events it would have emitted if silenced.
struct Processed {
    retry: Option<RawEvent>,
    main: RawEvent,
    suppressed: bool,
    finish_ms: i64,
}

impl Processed {
    fn first_ts(&self) -> i64 {
        self.retry.as_ref().map_or(self.main.ts, |r| r.ts)
    }
}

/// Generates the events of a simulation in timestamp order.
pub(crate) struct Generator {
    topo: Arc<Topology>,
    faults: Arc<FaultSet>,
    end_ms: i64,
    lines: Vec<Line>,
    pending: BinaryHeap<Pending>,
    seq: u64,
    trackers: Vec<LabelTracker>,
    outcomes: Vec<Outcome>,
}

impl Generator {
    pub(crate) fn new(
        topo: Arc<Topology>,
        faults: Arc<FaultSet>,
        seed: u64,
        start_ms: i64,
        end_ms: i64,
    ) -> Self {
        let lines = topo
            .pipelines
            .iter()
            .enumerate()
            .map(|(i, p)| Line::new(p, i, seed, start_ms))
            .collect();
        let trackers = vec![LabelTracker::default(); faults.faults.len()];
        Generator {
            topo,
            faults,
            end_ms,
            lines,
            pending: BinaryHeap::new(),
            seq: 0,
            trackers,
            outcomes: Vec::new(),
        }
    }

    /// The next event in timestamp order (ties in generation order).
    pub(crate) fn next_event(&mut self) -> Option<RawEvent> {
        loop {
            let next_unit = self
                .lines
                .iter()
                .enumerate()
                .filter(|(_, l)| l.next_ms < self.end_ms)
                .min_by_key(|(i, l)| (l.next_ms, *i))
                .map(|(i, l)| (i, l.next_ms));
            match (self.pending.peek(), next_unit) {
                (Some(top), Some((_, bound))) if top.key <= bound => {}
                (Some(_), None) => {}
                (None, None) => return None,
                (_, Some((p, _))) => {
                    self.generate_unit(p);
                    continue;
                }
            }
            return self.pending.pop().map(|p| p.event);
        }
    }

    /// The labels of the faults seen so far; complete once `next_event` has returned `None`.
    pub(crate) fn labels(&self) -> Vec<FaultLabel> {
        build_labels(&self.faults, &self.trackers, &self.topo, self.end_ms)
    }

    /// Runs every stage of the next unit of pipeline `p`, queueing its events.
    fn generate_unit(&mut self, p: usize) {
        let topo = Arc::clone(&self.topo);
        let faults = Arc::clone(&self.faults);
        let pipe = &topo.pipelines[p];
        let unit = self.lines[p].begin_unit(pipe);
        self.outcomes.clear();
        for (s, def) in pipe.stages.iter().enumerate() {
            let line = &mut self.lines[p];
            let draws = StageDraws::draw(&mut line.rng);
            // A run stuck upstream never gets here, whatever another upstream delivered.
            if def.upstream.iter().any(|&u| self.outcomes[u].stuck) {
                self.outcomes.push(Outcome {
                    stuck: true,
                    ..Outcome::default()
                });
                continue;
            }
            let Some(input) = stage_input(def, &unit, &self.outcomes, &draws) else {
                // Every input was lost to a fault: the stage has nothing to process.
                self.outcomes.push(Outcome::default());
                continue;
            };
            let lag = queue_lag_ms(def, pipe.mode, &draws);
            // Whether a fault acts depends on when the unit would start without it, so that a
            // slowed hand-over cannot push a unit out of its own fault's window.
            let start_ms = (input.ready_ms + lag).max(line.free_at[s]);
            let fault = faults.active(p, s, start_ms);
            let start_ms = match fault {
                Some((i, f)) if f.kind == FaultKind::StuckRun => {
                    // The stage never takes the unit up, so it stays free for the next one.
                    // Only this fault's label sees the unit: for any other fault on the stage it
                    // has no event, like a unit that never arrived.
                    if input.ready_ms < self.end_ms {
                        self.trackers[i].observe(true, input.ready_ms);
                    }
                    self.outcomes.push(Outcome {
                        stuck: true,
                        ..Outcome::default()
                    });
                    continue;
                }
                Some((_, f)) if f.kind == FaultKind::SlowHop => {
                    let backlog = (f.magnitude * typical_queue_lag_ms(pipe.mode)).round() as i64;
                    (input.ready_ms + lag + backlog).max(line.free_at[s])
                }
                _ => start_ms,
            };
            let ctx = StageCtx {
                pipeline: p as u32,
                stage: s as u32,
                def,
                mode: pipe.mode,
                unit: &unit,
                hosts: pipe.hosts.len(),
            };
            let fault_def = fault.map(|(_, f)| f);
            let done = process(
                &ctx,
                input,
                start_ms,
                &draws,
                fault_def,
                &mut line.fault_rng,
            );
            line.free_at[s] = done.finish_ms;
            self.track(p, s, fault.map(|(i, _)| i), done.first_ts());
            self.outcomes.push(Outcome {
                delivered: !done.suppressed && done.main.status != Status::Failure,
                stuck: false,
                records_out: done.main.records_out,
                finish_ms: done.finish_ms,
            });
            if !done.suppressed {
                self.push(done.retry);
                self.push(Some(done.main));
            }
        }
    }

    /// Feeds the label trackers of the faults on stage `s` of pipeline `p`.
    fn track(&mut self, p: usize, s: usize, acting: Option<usize>, first_ts: i64) {
        if first_ts >= self.end_ms {
            return;
        }
        for &fi in self.faults.of_stage(p, s) {
            self.trackers[fi].observe(acting == Some(fi), first_ts);
        }
    }

    /// Queues an event unless it falls after the end of the simulation.
    fn push(&mut self, event: Option<RawEvent>) {
        if let Some(event) = event.filter(|e| e.ts < self.end_ms) {
            self.seq += 1;
            self.pending.push(Pending {
                key: event.ts,
                seq: self.seq,
                event,
            });
        }
    }
}

/// Records read and the time they are available: from outside for sources, otherwise the sum of
/// what the upstream stages delivered for this unit (`None` when none did).
fn stage_input(def: &Stage, unit: &Unit, outcomes: &[Outcome], d: &StageDraws) -> Option<Input> {
    if def.upstream.is_empty() {
        let lambda = def.source_rate * unit.span_s * unit.volume;
        return Some(Input {
            records: poisson_like(lambda, d.z_count, d.u_count),
            ready_ms: unit.ready_ms,
        });
    }
    def.upstream
        .iter()
        .map(|&u| outcomes[u])
        .filter(|o| o.delivered)
        .fold(None, |acc: Option<Input>, o| {
            Some(match acc {
                None => Input {
                    records: o.records_out,
                    ready_ms: o.finish_ms,
                },
                Some(a) => Input {
                    records: a.records + o.records_out,
                    ready_ms: a.ready_ms.max(o.finish_ms),
                },
            })
        })
}

/// Hand-over delay between an upstream finishing and this stage starting: a few tens of
/// milliseconds through a stream, a few seconds for a batch scheduler. Sources start at once
/// (their batch start jitter is in the unit's ready time).
fn queue_lag_ms(def: &Stage, mode: Mode, d: &StageDraws) -> i64 {
    if def.upstream.is_empty() {
        return 0;
    }
    let spread = if mode.is_streaming() { 0.5 } else { 0.4 };
    (typical_queue_lag_ms(mode) * (spread * d.z_lag).exp()).round() as i64
}

/// The median hand-over delay of a pipeline's stages.
fn typical_queue_lag_ms(mode: Mode) -> f64 {
    if mode.is_streaming() {
        15.0
    } else {
        4_000.0
    }
}

/// Computes one stage's events for one unit, applying `fault` if one acts.
fn process(
    ctx: &StageCtx,
    input: Input,
    start_ms: i64,
    d: &StageDraws,
    fault: Option<&ActiveFault>,
    frng: &mut ChaCha8Rng,
) -> Processed {
    let def = ctx.def;
    let kind = fault.map(|f| f.kind);
    let magnitude = fault.map_or(1.0, |f| f.magnitude);

    let records_in = match kind {
        Some(FaultKind::Drop | FaultKind::Spike) => scale_count(input.records, magnitude),
        Some(FaultKind::RecordsLost) => {
            let share = (magnitude * (1.0 + 0.02 * normal(frng))).clamp(0.55, 0.9);
            scale_count(input.records, share)
        }
        _ => input.records,
    };
    let rejected =
        poisson_like(records_in as f64 * def.reject_frac, d.z_reject, d.u_reject).min(records_in);
    // Most events count no error; one in a hundred counts one or two.
    let mut errors = if d.u_error < ORGANIC_ERROR_P {
        1 + (d.u_error / ORGANIC_ERROR_P * 2.0) as u64
    } else {
        0
    };
    // Processing time grows with the input, around the stage's typical figure, log-normally.
    let ratio = records_in as f64 / def.typical_in.max(1.0);
    let mut duration = def.typical_ms * (0.2 + 0.8 * ratio) * (0.2 * d.z_duration).exp();
    let mut status = Status::Success;
    let mut null_override = None;
    match fault {
        Some(f) if f.kind == FaultKind::ErrorBurst => {
            errors = scale_count(records_in, magnitude * frng.gen_range(0.75..1.25));
            if frng.gen_bool(f.fail_prob) {
                status = Status::Failure;
                duration *= frng.gen_range(0.3..1.0);
            }
        }
        Some(f) if f.kind == FaultKind::LatencyJump => duration *= f.magnitude,
        Some(f) if f.kind == FaultKind::QualityDegradation => {
            let level = f.magnitude * (0.1 * normal(frng)).exp();
            null_override = Some(level.clamp(0.1, 0.3));
        }
        _ => {}
    }
    let duration = duration.max(1.0);
    let duration_whole = duration.round() as i64;

    // A rare transient failure: the attempt is abandoned part-way, then retried after a backoff.
    let retry_p = if ctx.mode.is_streaming() {
        STREAMING_RETRY_P
    } else {
        BATCH_RETRY_P
    };
    let (retry_ts, run_from) = if d.u_retry < retry_p {
        let partial = (duration * (0.1 + 0.8 * d.u_retry_at)).round().max(1.0);
        let backoff = if ctx.mode.is_streaming() {
            1_000.0 + 2_000.0 * d.u_backoff
        } else {
            15_000.0 + 45_000.0 * d.u_backoff
        };
        let at = start_ms + partial as i64;
        (Some((at, partial)), at + backoff.round() as i64)
    } else {
        (None, start_ms)
    };
    let finish_ms = run_from + duration_whole.max(1);

    let host = if ctx.mode.is_streaming() {
        def.pinned_host
    } else {
        ((d.u_host * ctx.hosts as f64) as usize).min(ctx.hosts - 1)
    } as u32;
    let base = RawEvent {
        ts: finish_ms,
        pipeline: ctx.pipeline,
        stage: ctx.stage,
        unit: ctx.unit.seq,
        corr_ms: ctx.unit.corr_ms,
        status,
        records_in,
        records_out: 0,
        rejected: 0,
        bytes: 0,
        errors,
        duration_ms: round_to(duration, 1),
        quality: None,
        host,
    };
    let retry = retry_ts.map(|(ts, partial)| RawEvent {
        ts,
        status: Status::Retry,
        errors: 1,
        duration_ms: round_to(partial, 1),
        ..base.clone()
    });
    let main = if status == Status::Failure {
        base
    } else {
        let records_out = records_in - rejected;
        let bytes = records_out as f64 * def.record_bytes * (1.0 + 0.01 * d.z_bytes);
        RawEvent {
            records_out,
            rejected,
            bytes: bytes.round().max(0.0) as u64,
            quality: def.null_base.map(|base_rate| Quality {
                null_rate: null_override
                    .unwrap_or_else(|| round_to((base_rate + 0.0003 * d.z_null).max(0.0), 6)),
                duplicate_rate: round_to((0.00008 + 0.00005 * d.z_dup).max(0.0), 6),
                schema_violations: poisson_like(
                    records_in as f64 * SCHEMA_VIOLATIONS_PER_RECORD,
                    d.z_schema,
                    d.u_schema,
                ) as u32,
            }),
            ..base
        }
    };
    Processed {
        retry,
        main,
        suppressed: kind == Some(FaultKind::Silence),
        finish_ms,
    }
}

/// Delays delivery of each event by a deterministic pseudo-random 0..=`disorder_ms`, so that no
/// event arrives after one stamped more than `disorder_ms` later than itself.
pub(crate) struct Disorder {
    disorder_ms: i64,
    salt: u64,
    buffer: BinaryHeap<Pending>,
    newest_ts: i64,
    seq: u64,
}

impl Disorder {
    pub(crate) fn new(disorder_ms: i64, seed: u64) -> Self {
        Disorder {
            disorder_ms,
            salt: mix64(seed ^ DELAY_SALT),
            buffer: BinaryHeap::new(),
            newest_ts: i64::MIN,
            seq: 0,
        }
    }

    /// The next event to deliver, pulling from `gen` as needed.
    pub(crate) fn next(&mut self, gen: &mut Generator) -> Option<RawEvent> {
        if self.disorder_ms <= 0 {
            return gen.next_event();
        }
        loop {
            // Every event still to come has a delivery key of at least `newest_ts`.
            if self
                .buffer
                .peek()
                .is_some_and(|top| top.key <= self.newest_ts)
            {
                return self.buffer.pop().map(|p| p.event);
            }
            let Some(event) = gen.next_event() else {
                return self.buffer.pop().map(|p| p.event);
            };
            let delay = mix64(event_key(&event) ^ self.salt) % (self.disorder_ms as u64 + 1);
            self.newest_ts = event.ts;
            self.seq += 1;
            self.buffer.push(Pending {
                key: event.ts + delay as i64,
                seq: self.seq,
                event,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::topology::HOUR_MS;

    fn generator(pipelines: usize, hours: i64) -> Generator {
        let topo = Arc::new(Topology::build(pipelines, &mut seeded(5, stream::TOPOLOGY)));
        Generator::new(topo, Arc::default(), 5, 0, hours * HOUR_MS)
    }

    #[test]
    fn events_come_out_in_timestamp_order() {
        let mut gen = generator(4, 3);
        let mut last = i64::MIN;
        let mut n = 0;
        while let Some(e) = gen.next_event() {
            assert!(e.ts >= last);
            last = e.ts;
            n += 1;
        }
        assert!(n > 5_000, "{n}");
    }

    #[test]
    fn stages_process_one_unit_at_a_time() {
        let mut gen = generator(4, 6);
        let mut last: std::collections::HashMap<(u32, u32), (u64, i64)> = Default::default();
        while let Some(e) = gen.next_event() {
            if let Some(&(unit, ts)) = last.get(&(e.pipeline, e.stage)) {
                assert!(e.unit >= unit && e.ts >= ts);
            }
            last.insert((e.pipeline, e.stage), (e.unit, e.ts));
        }
    }
}
