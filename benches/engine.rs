//! Engine throughput: raw JSON bytes → decode → window update (and the bucket closing and
//! scoring that event time triggers), on the calling thread; with correlation ids, the
//! data-flow tracker works beside it on its own thread, and a pass ends once
//! `Engine::finish` has all it found.
//!
//! `cargo bench --bench engine`. Events come from the simulator (realistic sizes and
//! field mix). Baseline in the same run: `serde_json::from_slice::<Value>` over the same
//! bytes, i.e. what merely parsing the messages costs with the usual tool.
//! Target: ≥ 1,000,000 events/s.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use pipewatch::config::Settings;
use pipewatch::engine::{Engine, Outcome, Outputs, ScoreRows};
use pipewatch::simulate::{FaultPlan, SimOptions, Simulation};

/// Enough simulated days to reach this many events.
const EVENTS: usize = 500_000;

fn simulated(correlation_ids: bool) -> Vec<Vec<u8>> {
    let opts = SimOptions {
        duration: Duration::from_secs(7 * 86_400),
        pipelines: 12,
        faults: FaultPlan::Default,
        correlation_ids,
        ..SimOptions::default()
    };
    let mut sim = Simulation::new(opts).expect("simulation options are valid");
    sim.events().take(EVENTS).collect()
}

fn ingest_all(events: &[Vec<u8>], settings: &Settings) -> u64 {
    let mut engine = Engine::new(settings, ScoreRows::None);
    let mut out = Outputs::default();
    let now = chrono::Utc::now().timestamp_millis();
    let mut applied = 0;
    for e in events {
        if engine.ingest(e, now, &mut out) == Outcome::Applied {
            applied += 1;
        }
        out.alerts.clear();
    }
    engine.finish(&mut out);
    applied
}

fn bench(c: &mut Criterion) {
    let settings = Settings::defaults();
    let with_ids = simulated(true);
    let without_ids = simulated(false);
    let bytes: usize = with_ids.iter().map(Vec::len).sum();
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

    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(with_ids.len() as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.bench_function("serde_json_value_parse_baseline", |b| {
        b.iter(|| {
            with_ids
                .iter()
                .map(|e| serde_json::from_slice::<serde_json::Value>(e).is_ok() as usize)
                .sum::<usize>()
        })
    });
    let limits = pipewatch::decode::DecodeLimits::new(65_536, i64::MAX / 2, 0);
    group.bench_function("decode_only", |b| {
        b.iter(|| {
            with_ids
                .iter()
                .map(|e| pipewatch::decode::decode(e, &limits).is_ok() as usize)
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
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
