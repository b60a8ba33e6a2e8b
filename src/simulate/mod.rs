//! A seeded generator of realistic pipeline events, for tests, benchmarks and the quickstart demo
//! (`pipewatch simulate`).
//!
//! # What it simulates
//! Pipelines cut their work into *units*, each of which flows through every stage and shares one
//! correlation id:
//! - **streaming** pipelines cut a micro-batch every few seconds (nominal interval ±25 %); each
//!   stage emits one event per micro-batch some tens to hundreds of milliseconds after its
//!   upstream;
//! - **batch** pipelines run on a UTC-aligned schedule (hourly or every 15 minutes) starting
//!   0–5 s late; each stage emits one event when it finishes, a few seconds (scheduler lag) plus
//!   its processing time (tens of seconds) after its upstream.
//!
//! Source volume follows a daily sinusoid (±32–40 %, trough around 03:00–05:00 UTC) with a few
//! percent of noise. Within a unit the data is conserved exactly: a stage's `records_in` is the
//! sum of its upstream stages' `records_out`, and `records_out = records_in − records_rejected`
//! (a run stuck by a fault has no events from the stage where it stopped on, rather than fewer
//! records).
//! The only anomalies are the injected faults; the organic data has no failures, only rare
//! `retry` events (always followed by the unit's `success` event) and rare small error counts.
//!
//! Faults change nothing outside their window and the stages downstream of them: the organic
//! randomness is drawn identically whatever the fault plan, so a run with
//! [`FaultPlan::Default`] and one with [`FaultPlan::None`] differ only there.
//!
//! # Determinism
//! Everything derives from [`SimOptions::seed`] through ChaCha8 streams and fixed hashes; the same
//! options give byte-identical output on every platform.

mod cli;
mod encode;
mod faults;
mod generator;
mod kafka;
mod noise;
mod topology;

#[cfg(test)]
mod tests;

use std::io::{self, BufWriter, Write};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context};
use chrono::{DateTime, TimeZone, Utc};

pub use cli::{run, FaultsChoice, SimulateArgs};
pub use faults::{FaultKind, FaultLabel, FaultPlan, FaultSpec};
pub use kafka::{produce, Pace};

use encode::Encoder;
use faults::{default_plan, flow_plan, FaultSet};
use generator::{Disorder, Generator, RawEvent};
use noise::{seeded, stream};
use topology::{Mode, Topology};

/// The largest number of pipelines a simulation accepts (event ids reserve 16 bits for it).
pub const MAX_PIPELINES: usize = 10_000;

/// How event timestamps are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum TimestampFormat {
    /// `"2026-11-24T03:00:00.250Z"`.
    #[default]
    Rfc3339,
    /// `1795489200250`.
    EpochMs,
    /// Either form, chosen per event by a hash of the event.
    Mixed,
}

/// Everything that determines a simulation's output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimOptions {
    /// Seed of every random choice.
    pub seed: u64,
    /// Start of the simulated period; no event is stamped before it.
    pub start: DateTime<Utc>,
    /// Length of the simulated period; no event is stamped at or after `start + duration`.
    pub duration: Duration,
    /// Number of pipelines (1..=[`MAX_PIPELINES`]); see [`Simulation`] for the set.
    pub pipelines: usize,
    /// Which faults to inject.
    pub faults: FaultPlan,
    /// Where the default and flow plans place their faults: in the first this much of the
    /// period (all of it when none), so that history can hold them and live events after
    /// it none, in one simulation whose runs carry on across the two.
    pub faults_within: Option<Duration>,
    /// Each event is delivered up to this much later than its place in timestamp order.
    pub disorder: Duration,
    /// Form of the `timestamp` field.
    pub timestamp_format: TimestampFormat,
    /// When false, events carry no `correlation_id` (for benchmarks of the plain path).
    pub correlation_ids: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            seed: 42,
            start: Utc
                .with_ymd_and_hms(2026, 11, 1, 0, 0, 0)
                .single()
                .expect("a valid constant date"),
            duration: Duration::from_secs(86_400),
            pipelines: 4,
            faults: FaultPlan::Default,
            faults_within: None,
            disorder: Duration::ZERO,
            timestamp_format: TimestampFormat::Rfc3339,
            correlation_ids: true,
        }
    }
}

/// How a stage's pipeline cuts its work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cadence {
    /// A micro-batch every `interval` on average (uniformly 0.75–1.25 × `interval`).
    Streaming {
        /// Mean time between micro-batches.
        interval: Duration,
    },
    /// A run every `period`, scheduled `offset` past each UTC-aligned period, started 0–5 s late.
    Batch {
        /// Time between scheduled runs.
        period: Duration,
        /// Scheduled time past each UTC-aligned period (0 for runs on the hour).
        offset: Duration,
    },
}

/// Static facts about one simulated stage, for tests that need the ground truth.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageInfo {
    /// Pipeline name.
    pub pipeline: String,
    /// Stage name.
    pub stage: String,
    /// How the pipeline cuts its work into units.
    pub cadence: Cadence,
    /// The stages feeding this one (the true lineage, whether or not events carry it).
    pub upstream: Vec<String>,
    /// Whether events carry `upstream` (false for `inventory_sync`: lineage must be learned).
    pub upstream_in_events: bool,
    /// Whether events carry `quality` figures.
    pub reports_quality: bool,
}

/// A configured simulation. Generating is repeatable: every call to [`Simulation::events`] or
/// [`Simulation::write_events`] starts over and yields the same events.
///
/// # Pipelines
/// The first four, in order (more cycle through further templates, then repeat with a suffix):
///
/// | pipeline | cadence | stages (upstream) |
/// |---|---|---|
/// | `orders_etl` | batch, hourly at :00 | `extract` → `transform`* → `load` |
/// | `clickstream` | streaming, ~8 s | `ingest` → `parse`* → `sessionize` → `sink` |
/// | `payments` | streaming, ~12 s | `cards`, `transfers` → `normalize`* → `score` → `publish` |
/// | `inventory_sync` | batch, every 15 min | `snapshot` → `diff`* → `upsert`, `diff` → `notify` |
///
/// (* reports quality; `inventory_sync` events carry no `upstream`.)
///
/// # Default fault plan
/// One fault of each kind but `stuck_run` and `slow_hop`, each on its own stage, none on the first pipeline (`orders_etl` stays
/// fault-free when there are two pipelines or more), one per equal time slot after the first day
/// (runs of two days or more) or after the first third (shorter runs), in a seeded order,
/// 20–90 minutes long (silence 20–60; batch stages at least two runs plus 5 minutes). Runs too
/// short for that shrink each fault to 60 % of its slot and keep faults off batch stages whose
/// runs would be too sparse to show them. Faults are at least 15 % of a slot apart, so neither
/// they nor their downstream consequences overlap.
///
/// # Flow fault plan
/// What data-flow tracking finds: one `stuck_run`, one `slow_hop` and one `records_lost`, placed
/// in time like the default plan (three slots), each on its own pipeline while there are enough
/// (never `orders_etl`, as above), on a stage that has an upstream. With the first four
/// pipelines: `stuck_run` on a batch stage with stages after it (one run, its window opening at
/// that run's scheduled time and lasting half a period), `slow_hop` on a streaming stage
/// (20–90 minutes), `records_lost` on the remaining pipeline.
pub struct Simulation {
    opts: SimOptions,
    topo: Arc<Topology>,
    faults: Arc<FaultSet>,
    specs: Vec<FaultSpec>,
    start_ms: i64,
    end_ms: i64,
    disorder_ms: i64,
    /// Labels of the last complete generation pass.
    labels: Option<Vec<FaultLabel>>,
}

impl Simulation {
    /// Builds the topology and resolves the fault plan. Fails on invalid options or on a
    /// [`FaultSpec`] that names an unknown pipeline or stage, asks for `quality_degradation` on a
    /// stage without quality figures or `records_lost`, `stuck_run` or `slow_hop` on a source, or
    /// overlaps another fault on the same stage.
    ///
    /// # Errors
    /// Invalid options or fault specs, as above.
    pub fn new(opts: SimOptions) -> anyhow::Result<Simulation> {
        ensure!(
            (1..=MAX_PIPELINES).contains(&opts.pipelines),
            "pipelines must be between 1 and {MAX_PIPELINES}, not {}",
            opts.pipelines
        );
        ensure!(!opts.duration.is_zero(), "duration must not be zero");
        let end = chrono::Duration::from_std(opts.duration)
            .ok()
            .and_then(|d| opts.start.checked_add_signed(d))
            .context("start + duration is out of range")?;
        let disorder_ms = i64::try_from(opts.disorder.as_millis())
            .ok()
            .filter(|&ms| ms <= i64::from(u32::MAX))
            .context("disorder is out of range")?;
        let start_ms = opts.start.timestamp_millis();
        let end_ms = end.timestamp_millis();

        let faults_end_ms = match opts.faults_within {
            Some(within) => {
                ensure!(!within.is_zero(), "faults_within must not be zero");
                let within_ms = i64::try_from(within.as_millis()).unwrap_or(i64::MAX);
                end_ms.min(start_ms.saturating_add(within_ms))
            }
            None => end_ms,
        };

        let topo = Topology::build(opts.pipelines, &mut seeded(opts.seed, stream::TOPOLOGY));
        let specs = match &opts.faults {
            FaultPlan::None => Vec::new(),
            FaultPlan::Default => default_plan(&topo, opts.start, faults_end_ms, opts.seed),
            FaultPlan::Flow => flow_plan(&topo, opts.start, faults_end_ms, opts.seed),
            FaultPlan::Explicit(specs) => specs.clone(),
        };
        let faults = FaultSet::resolve(&specs, &topo, opts.seed)?;
        Ok(Simulation {
            opts,
            topo: Arc::new(topo),
            faults: Arc::new(faults),
            specs,
            start_ms,
            end_ms,
            disorder_ms,
            labels: None,
        })
    }

    /// The options this simulation was built with.
    pub fn options(&self) -> &SimOptions {
        &self.opts
    }

    /// Every (pipeline, stage), pipelines in order, stages upstream first.
    pub fn stages(&self) -> Vec<(String, String)> {
        self.topo
            .pipelines
            .iter()
            .flat_map(|p| p.stages.iter().map(|s| (p.name.clone(), s.name.clone())))
            .collect()
    }

    /// Cadence, true lineage and quality reporting of every stage, in [`Self::stages`] order.
    pub fn stage_info(&self) -> Vec<StageInfo> {
        self.topo
            .pipelines
            .iter()
            .flat_map(|p| {
                let cadence = match p.mode {
                    Mode::Streaming { interval_ms } => Cadence::Streaming {
                        interval: millis(interval_ms),
                    },
                    Mode::Batch {
                        period_ms,
                        offset_ms,
                    } => Cadence::Batch {
                        period: millis(period_ms),
                        offset: millis(offset_ms),
                    },
                };
                p.stages.iter().map(move |s| StageInfo {
                    pipeline: p.name.clone(),
                    stage: s.name.clone(),
                    cadence,
                    upstream: s
                        .upstream
                        .iter()
                        .map(|&u| p.stages[u].name.clone())
                        .collect(),
                    upstream_in_events: p.upstream_in_events,
                    reports_quality: s.null_base.is_some(),
                })
            })
            .collect()
    }

    /// The faults this simulation injects (the default or flow plan resolved, or the explicit
    /// list).
    pub fn fault_specs(&self) -> &[FaultSpec] {
        &self.specs
    }

    /// Writes every event as one JSON line, returning how many were written. The writer is
    /// buffered internally and flushed at the end.
    ///
    /// # Errors
    /// Any error of `out`; the events written before it are not rolled back.
    pub fn write_events<W: Write>(&mut self, out: W) -> io::Result<u64> {
        let mut out = BufWriter::with_capacity(1 << 16, out);
        let mut events = self.raw_events();
        let mut encoder = self.encoder();
        let mut line = Vec::with_capacity(1024);
        let mut written = 0u64;
        while let Some(event) = events.next() {
            line.clear();
            encoder
                .encode(&event, &mut line)
                .map_err(io::Error::other)?;
            line.push(b'\n');
            out.write_all(&line)?;
            written += 1;
        }
        out.flush()?;
        self.labels = Some(events.labels());
        Ok(written)
    }

    /// Every event's JSON (without newline), lazily, in delivery order.
    pub fn events(&mut self) -> impl Iterator<Item = Vec<u8>> + '_ {
        Events {
            raw: self.raw_events(),
            encoder: self.encoder(),
            labels: &mut self.labels,
        }
    }

    /// Every event with its Kafka key and event time, lazily, in delivery order.
    pub fn keyed_events(&mut self) -> impl Iterator<Item = KeyedEvent> + '_ {
        let topo = Arc::clone(&self.topo);
        KeyedEvents {
            events: Events {
                raw: self.raw_events(),
                encoder: self.encoder(),
                labels: &mut self.labels,
            },
            topo,
        }
    }

    /// One label per injected fault that affected at least one event, in plan order (by start
    /// for the default and flow plans). Labels do not depend on having generated the events: without a
    /// completed pass this runs the generator once without encoding (a fraction of the cost).
    pub fn labels(&self) -> Vec<FaultLabel> {
        if let Some(labels) = &self.labels {
            return labels.clone();
        }
        let mut generator = self.generator();
        while generator.next_event().is_some() {}
        generator.labels()
    }

    fn generator(&self) -> Generator {
        Generator::new(
            Arc::clone(&self.topo),
            Arc::clone(&self.faults),
            self.opts.seed,
            self.start_ms,
            self.end_ms,
        )
    }

    fn raw_events(&self) -> RawEvents {
        RawEvents {
            generator: self.generator(),
            disorder: Disorder::new(self.disorder_ms, self.opts.seed),
        }
    }

    fn encoder(&self) -> Encoder {
        Encoder::new(
            Arc::clone(&self.topo),
            self.opts.seed,
            self.start_ms,
            self.opts.timestamp_format,
            self.opts.correlation_ids,
        )
    }
}

fn millis(ms: i64) -> Duration {
    Duration::from_millis(ms.max(0) as u64)
}

/// Generated events in delivery order (timestamp order shuffled within the disorder bound).
struct RawEvents {
    generator: Generator,
    disorder: Disorder,
}

impl RawEvents {
    fn next(&mut self) -> Option<RawEvent> {
        self.disorder.next(&mut self.generator)
    }

    fn labels(&self) -> Vec<FaultLabel> {
        self.generator.labels()
    }
}

/// The iterator behind [`Simulation::events`]; it stores the labels when it runs out.
struct Events<'a> {
    raw: RawEvents,
    encoder: Encoder,
    labels: &'a mut Option<Vec<FaultLabel>>,
}

impl Events<'_> {
    /// The next event and its JSON.
    fn next_encoded(&mut self) -> Option<(RawEvent, Vec<u8>)> {
        let Some(event) = self.raw.next() else {
            if self.labels.is_none() {
                *self.labels = Some(self.raw.labels());
            }
            return None;
        };
        let mut json = Vec::with_capacity(448);
        self.encoder
            .encode(&event, &mut json)
            .expect("serializing plain fields into memory cannot fail");
        Some((event, json))
    }
}

impl Iterator for Events<'_> {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        self.next_encoded().map(|(_, json)| json)
    }
}

/// One event with what a Kafka producer needs besides its JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyedEvent {
    /// `pipeline/stage`, the message key of the event schema.
    pub key: String,
    /// Event time, epoch milliseconds.
    pub timestamp_ms: i64,
    pub json: Vec<u8>,
}

/// The iterator behind [`Simulation::keyed_events`].
struct KeyedEvents<'a> {
    events: Events<'a>,
    topo: Arc<Topology>,
}

impl Iterator for KeyedEvents<'_> {
    type Item = KeyedEvent;

    fn next(&mut self) -> Option<KeyedEvent> {
        let (event, json) = self.events.next_encoded()?;
        let pipeline = &self.topo.pipelines[event.pipeline as usize];
        let stage = &pipeline.stages[event.stage as usize];
        Some(KeyedEvent {
            key: crate::kafka::stage_key(&pipeline.name, &stage.name),
            timestamp_ms: event.ts,
            json,
        })
    }
}
