//! `pipewatch run` against a raw rdkafka consumer, on one broker, in one run.
//!
//! `cargo bench --bench kafka`. Starts Tansu (scripts/broker.sh) on a free loopback port,
//! produces 1,000,000 simulated events to a 4-partition topic, then alternates three
//! times: a raw `BaseConsumer` that only reads every message, and pipewatch's consume
//! loop (decode, windows, detectors, alerts, commits), each in a new consumer group.
//! Rates run from the first message to the last, so the group join is not counted.
//! Target: pipewatch ≥ 0.8 × the raw rate (medians).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pipewatch::config::{KafkaSettings, Settings};
use pipewatch::live::{Driver, Live};
use pipewatch::run::{consume, Outlets, Progress, RunArgs};
use pipewatch::simulate::{FaultPlan, SimOptions, Simulation};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

const EVENTS: u64 = 1_000_000;
const TOPIC: &str = "bench-events";
const ROUNDS: usize = 3;

fn broker(verb: &str, port: u16) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/broker.sh");
    let ok = Command::new(script)
        .args([verb, &port.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "broker.sh {verb} {port}");
}

fn settings(port: u16, group: &str) -> Settings {
    let mut s = Settings::defaults();
    s.kafka.brokers = format!("127.0.0.1:{port}");
    s.kafka.group_id = group.into();
    s.kafka.topics = vec![TOPIC.into()];
    s.kafka.alert_topic = "bench-alerts".into();
    s.kafka.dead_letter_topic = "bench-dlq".into();
    for (k, v) in [
        ("session.timeout.ms", "6000"),
        ("heartbeat.interval.ms", "500"),
    ] {
        s.kafka.properties.insert(k.into(), v.into());
    }
    s
}

fn produce(kafka: &KafkaSettings) -> usize {
    let mut sim = Simulation::new(SimOptions {
        pipelines: 12,
        duration: Duration::from_secs(6 * 86_400),
        faults: FaultPlan::Default,
        ..SimOptions::default()
    })
    .expect("valid options");
    let producer: ThreadedProducer<DefaultProducerContext> = pipewatch::kafka::client_config(kafka)
        .set("linger.ms", "20")
        .create()
        .expect("producer");
    let mut bytes = 0;
    for event in sim.keyed_events().take(EVENTS as usize) {
        bytes += event.json.len();
        let record = BaseRecord::to(TOPIC).key(&event.key).payload(&event.json);
        pipewatch::kafka::send_waiting(&producer, record).expect("queued");
    }
    producer
        .flush(Duration::from_secs(120))
        .expect("all delivered");
    bytes
}

/// Seconds from the first message to the `EVENTS`th, reading only.
fn raw(kafka: &KafkaSettings) -> f64 {
    let consumer: BaseConsumer = pipewatch::source::kafka::consumer_config(kafka)
        .create()
        .expect("consumer");
    consumer.subscribe(&[TOPIC]).expect("subscribe");
    let (mut seen, mut first) = (0u64, None);
    while seen < EVENTS {
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
            first.get_or_insert_with(Instant::now);
            seen += 1;
        }
    }
    first.expect("messages").elapsed().as_secs_f64()
}

/// Seconds from the first message to the `EVENTS`th, through pipewatch's consume loop.
fn pipewatch(settings: &Settings) -> f64 {
    let progress = Arc::new(Progress::default());
    let stop = Arc::new(AtomicBool::new(false));
    // Named, so that a profiler can tell its time from the raw consumer's.
    let worker = std::thread::Builder::new()
        .name("pipewatch".into())
        .spawn({
            let (settings, progress, stop) = (settings.clone(), progress.clone(), stop.clone());
            move || {
                let live = Arc::new(Live::new(&settings, Driver::Service));
                let outlets = Outlets { live, email: None };
                consume(&settings, &RunArgs::default(), &stop, progress, outlets).expect("consumes")
            }
        })
        .expect("a thread");
    while progress.processed.load(Ordering::Relaxed) == 0 {
        std::thread::sleep(Duration::from_micros(200));
    }
    let first = Instant::now();
    while progress.processed.load(Ordering::Relaxed) < EVENTS {
        std::thread::sleep(Duration::from_micros(200));
    }
    let seconds = first.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    worker.join().expect("consume thread");
    seconds
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // `cargo test --benches` runs bench targets with `--bench` absent: nothing to measure.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    broker("start", port);
    let base = settings(port, "setup");
    pipewatch::kafka::create_topics(&base.kafka, &[TOPIC], 4).expect("topic");
    pipewatch::kafka::create_topics(&base.kafka, &["bench-alerts", "bench-dlq"], 1)
        .expect("topics");
    let t = Instant::now();
    let bytes = produce(&base.kafka);
    eprintln!(
        "produced {EVENTS} events ({:.0} B each) in {:.1} s",
        bytes as f64 / EVENTS as f64,
        t.elapsed().as_secs_f64()
    );
    let (mut raw_s, mut pw_s) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let r = raw(&settings(port, &format!("raw-{round}")).kafka);
        let p = pipewatch(&settings(port, &format!("pipewatch-{round}")));
        eprintln!(
            "round {round}: raw {:.0} events/s, pipewatch {:.0} events/s",
            EVENTS as f64 / r,
            EVENTS as f64 / p
        );
        raw_s.push(r);
        pw_s.push(p);
    }
    broker("stop", port);
    let (raw_rate, pw_rate) = (EVENTS as f64 / median(raw_s), EVENTS as f64 / median(pw_s));
    println!(
        "kafka consume, medians of {ROUNDS}: raw rdkafka {raw_rate:.0} events/s, pipewatch run {pw_rate:.0} events/s, ratio {:.2} (target >= 0.80)",
        pw_rate / raw_rate
    );
}
