//! Engine throughput: raw JSON bytes → decode → window update (and the bucket closing and
//! scoring that event time triggers), on the calling thread; with correlation ids, the
//! data-flow tracker works beside it on its own thread, and a pass ends once
//! `Engine::finish` has all it found.
//!
//! `run_path_with_correlation_ids` does what `pipewatch run` does with each message,
//! without Kafka: one engine per partition (four, events split by their key as a
//! producer's partitioner would), one tracker shared by them, and every closed bucket's
//! lead row and every alert taken into the live view. It is the consume loop's own work,
//! the part of `benches/kafka.rs` that does not depend on the broker, and with no broker
//! sharing the cores its figures are steadier; under callgrind it counts instructions.
//!
//! `cargo bench --bench engine`. Events come from the simulator (realistic sizes and
//! field mix). Baseline in the same run: `serde_json::from_slice::<Value>` over the same
//! bytes, i.e. what merely parsing the messages costs with the usual tool.
//! Target: ≥ 1,000,000 events/s.

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use pipewatch::config::Settings;
use pipewatch::engine::{Engine, Outcome, Outputs, ScoreRows, StageBudget};
use pipewatch::live::stages::Owner;
use pipewatch::live::{Driver, Live};
use pipewatch::simulate::{FaultPlan, KeyedEvent, SimOptions, Simulation};

/// Enough simulated days to reach this many events.
const EVENTS: usize = 500_000;

fn simulated(correlation_ids: bool) -> Vec<KeyedEvent> {
    let opts = SimOptions {
        duration: Duration::from_secs(7 * 86_400),
        pipelines: 12,
        faults: FaultPlan::Default,
        correlation_ids,
        ..SimOptions::default()
    };
    let mut sim = Simulation::new(opts).expect("simulation options are valid");
    sim.keyed_events().take(EVENTS).collect()
}

fn ingest_all(events: &[KeyedEvent], settings: &Settings) -> u64 {
    let mut engine = Engine::new(settings, ScoreRows::None);
    let mut out = Outputs::default();
    let now = chrono::Utc::now().timestamp_millis();
    let mut applied = 0;
    for e in events {
        if engine.ingest(&e.json, now, &mut out) == Outcome::Applied {
            applied += 1;
        }
        out.alerts.clear();
    }
    engine.finish(&mut out);
    applied
}

/// Partitions of the topic `run_path` reads.
const PARTITIONS: usize = 4;

/// A live view and the engines of `PARTITIONS` partitions feeding it, as `pipewatch run`
/// sets them up at assignment.
fn run_setup(settings: &Settings) -> (Arc<Live>, Vec<(Owner, Engine)>) {
    let live = Arc::new(Live::new(settings, Driver::Service));
    let budget = StageBudget::new(settings.stages.max_tracked);
    let engines = (0..PARTITIONS)
        .map(|partition| {
            let owner = Owner {
                topic: Arc::from("events"),
                partition: partition as i32,
            };
            let engine =
                Engine::with_shared(settings, ScoreRows::Lead, budget.clone(), live.flow.clone());
            (owner, engine)
        })
        .collect();
    (live, engines)
}

/// Each event's partition, by its key (a fixed hash, so every pass splits alike).
fn partitions(events: &[KeyedEvent]) -> Vec<usize> {
    let hasher = BuildHasherDefault::<DefaultHasher>::default();
    (events.iter())
        .map(|e| hasher.hash_one(&e.key) as usize % PARTITIONS)
        .collect()
}

/// `pipewatch run`'s work per message, in production order: its partition's engine
/// ingests it, then its alerts and scored buckets go to the live view.
fn run_path(
    events: &[KeyedEvent],
    partition: &[usize],
    live: &Live,
    engines: &mut [(Owner, Engine)],
) -> u64 {
    let mut out = Outputs::default();
    let now = chrono::Utc::now().timestamp_millis();
    let mut applied = 0;
    for (e, &p) in events.iter().zip(partition) {
        let (owner, engine) = &mut engines[p];
        if engine.ingest(&e.json, now, &mut out) == Outcome::Applied {
            applied += 1;
        }
        publish(live, &mut out, owner);
    }
    for (owner, engine) in engines.iter_mut() {
        engine.finish(&mut out);
        publish(live, &mut out, owner);
    }
    applied
}

/// What an engine produced, into the live view, as `pipewatch run` publishes it (less the
/// sinks).
fn publish(live: &Live, out: &mut Outputs, owner: &Owner) {
    for mut alert in out.alerts.drain(..) {
        live.record_alert(&mut alert);
    }
    live.observe(out, Some(owner));
}

fn bench(c: &mut Criterion) {
    let settings = Settings::defaults();
    let with_ids = simulated(true);
    let without_ids = simulated(false);
    let bytes: usize = with_ids.iter().map(|e| e.json.len()).sum();
    eprintln!(
        "{} events, {:.0} bytes per event on average",
        with_ids.len(),
        bytes as f64 / with_ids.len() as f64
    );
    assert_eq!(
        ingest_all(&with_ids, &settings) as usize,
        with_ids.len(),
        "every simulated event applies"
    );
    let partition = partitions(&with_ids);
    let (live, mut engines) = run_setup(&settings);
    assert_eq!(
        run_path(&with_ids, &partition, &live, &mut engines) as usize,
        with_ids.len(),
        "every simulated event applies on the run path too"
    );
    assert!(!live.stages.is_empty(), "the live view shows the stages");

    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(with_ids.len() as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.bench_function("serde_json_value_parse_baseline", |b| {
        b.iter(|| {
            with_ids
                .iter()
                .map(|e| serde_json::from_slice::<serde_json::Value>(&e.json).is_ok() as usize)
                .sum::<usize>()
        })
    });
    let limits = pipewatch::decode::DecodeLimits::new(65_536, i64::MAX / 2, 0);
    group.bench_function("decode_only", |b| {
        b.iter(|| {
            with_ids
                .iter()
                .map(|e| pipewatch::decode::decode(&e.json, &limits).is_ok() as usize)
                .sum::<usize>()
        })
    });
    group.bench_function("ingest_with_correlation_ids", |b| {
        b.iter_batched(
            || (),
            |()| ingest_all(&with_ids, &settings),
            BatchSize::PerIteration,
        )
    });
    group.bench_function("ingest_without_correlation_ids", |b| {
        b.iter_batched(
            || (),
            |()| ingest_all(&without_ids, &settings),
            BatchSize::PerIteration,
        )
    });
    group.bench_function("run_path_with_correlation_ids", |b| {
        b.iter_batched(
            || run_setup(&settings),
            |(live, mut engines)| {
                run_path(&with_ids, &partition, &live, &mut engines);
                // Dropped after the timing: a pass ends once the engines have every
                // answer (`finish`), not once the tracker's thread has freed its state.
                (live, engines)
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
