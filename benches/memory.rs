//! Memory per tracked stage with default settings, measured with a counting allocator.
//!
//! `cargo bench --bench memory` creates 100,000 stages, runs each through enough buckets
//! that every ring and sketch is allocated (history, z-score windows, three quality
//! figures, open buckets), and reports live heap bytes per stage. Target: ≤ 16 KiB.
//!
//! It then measures data-flow tracking: 100,000 runs of a four-stage pipeline, once with
//! `flow.enabled` and once without, and reports the difference per run.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use pipewatch::config::Settings;
use pipewatch::engine::{Engine, Outputs, ScoreRows};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const STAGES: usize = 100_000;
const T0: i64 = 1_793_491_200_000;

fn main() {
    let mut settings = Settings::defaults();
    settings.stages.max_tracked = STAGES;
    let bucket_ms = settings.bucket_ms();
    let buckets = 25; // past training (20), so every detector ring exists
    let before = LIVE.load(Ordering::Relaxed);
    let mut engine = Engine::new(&settings, ScoreRows::None);
    let mut out = Outputs::default();
    let now = T0 + 86_400_000;
    let mut line = Vec::with_capacity(512);
    for b in 0..buckets {
        for s in 0..STAGES {
            let ts = T0 + b * bucket_ms + (s as i64 % 1000);
            line.clear();
            use std::io::Write;
            write!(
                line,
                r#"{{"pipeline":"pipeline-{p}","stage":"stage-{s}","timestamp":{ts},"correlation_id":"run-{b}-{p}","records_in":{r},"records_out":{r},"errors":0,"records_rejected":1,"bytes":{by},"duration_ms":{d},"quality":{{"null_rate":0.01,"duplicate_rate":0.0,"schema_violations":0}}}}"#,
                p = s % 97,
                r = 1000 + b,
                by = 100_000 + b,
                d = 100 + b,
            )
            .unwrap();
            engine.ingest(&line, now, &mut out);
        }
        out.alerts.clear();
    }
    let live = LIVE.load(Ordering::Relaxed) - before;
    let per_stage = live as f64 / STAGES as f64;
    println!(
        "memory: {} stages tracked, {:.1} MiB live heap, {:.0} bytes per stage (target ≤ 16384); engine's own estimate {:.0} bytes per stage",
        engine.tracked_stages(),
        live as f64 / (1 << 20) as f64,
        per_stage,
        engine.stage_heap_bytes() as f64 / STAGES as f64
    );
    println!("stats: {:?}", engine.stats());
    drop(engine);
    wait_for_trackers();
    per_run();
}

const RUNS: i64 = 100_000;

/// Live heap after `RUNS` runs through stages a → b → c → d, one run a second.
fn runs_heap(flow: bool) -> isize {
    let mut settings = Settings::defaults();
    settings.flow.enabled = flow;
    settings.flow.max_runs = RUNS as usize;
    settings.flow.run_ttl = std::time::Duration::from_secs(86_400);
    let before = LIVE.load(Ordering::Relaxed);
    let mut engine = Engine::new(&settings, ScoreRows::None);
    let mut out = Outputs::default();
    let mut line = Vec::with_capacity(256);
    for r in 0..RUNS {
        for (i, stage) in ["a", "b", "c", "d"].iter().enumerate() {
            let ts = T0 + r * 1000 + i as i64 * 200;
            line.clear();
            use std::io::Write;
            write!(
                line,
                r#"{{"pipeline":"p","stage":"{stage}","timestamp":{ts},"correlation_id":"p-run-{r:08}","duration_ms":50,"records_in":1000,"records_out":1000}}"#
            )
            .unwrap();
            engine.ingest(&line, i64::MAX, &mut out);
        }
        out.alerts.clear();
    }
    // The tracker takes events in on its own thread: everything handed over is taken
    // in (and no batch is on its way) before the heap is read.
    engine.flush_flow(&mut out);
    let live = LIVE.load(Ordering::Relaxed) - before;
    drop(engine);
    wait_for_trackers();
    live
}

/// Waits until no data-flow tracker's thread is left. A dropped engine's tracker frees
/// its state on its own thread, after the drop returns: read meanwhile, the next
/// measurement would count those frees as its own (the one without flow tracking read
/// −35 MB that way, and runs 755 bytes each instead of about 400). Linux: the threads
/// are found by name in /proc.
fn wait_for_trackers() {
    let trackers = || {
        std::fs::read_dir("/proc/self/task").map_or(0, |threads| {
            threads
                .flatten()
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.trim() == "pw-flow")
                })
                .count()
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while trackers() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn per_run() {
    let with = runs_heap(true);
    let without = runs_heap(false);
    println!(
        "memory: {RUNS} runs of 4 stages tracked, {:.0} bytes per run (live heap with flow.enabled minus without)",
        (with - without) as f64 / RUNS as f64
    );
}
