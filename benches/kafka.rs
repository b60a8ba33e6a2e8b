//! `pipewatch run` against a raw rdkafka consumer, on one broker, in one run.
//!
//! `cargo bench --bench kafka`. Starts Tansu (scripts/broker.sh) on a free loopback port,
//! produces 1,000,000 simulated events to a 4-partition topic, then alternates three
//! times: a raw `BaseConsumer` that only reads every message, and pipewatch's consume
//! loop (decode, windows, detectors, alerts, commits), each in a new consumer group.
//! Rates run from the first message to the last, so the group join is not counted
//! (pipewatch's from its first batch done, scaled to all the events).
//! Target: pipewatch ≥ 0.8 × the raw rate (medians). Each round's own ratio is printed
//! too: its runs were seconds apart, so on a shared machine it is the steadier figure.
//!
//! Each round also runs pipewatch with data-flow tracking off (`flow.enabled = false`):
//! the default configuration is the figure that counts, and the second one separates
//! the consume path's own cost from the cost of the data-flow tracker.
//!
//! The broker runs on the same machine, so each timed run also says where the CPU went
//! (from /proc, Linux only): the consuming thread, the data-flow tracker's thread,
//! librdkafka's threads, Tansu, and the rest of the machine (other work competing for
//! the cores), in microseconds per message.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use pipewatch::config::{KafkaSettings, Settings};
use pipewatch::live::{Driver, Live};
use pipewatch::run::{consume, Outlets, Progress, RunArgs};
use pipewatch::simulate::{FaultPlan, SimOptions, Simulation};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

/// Events produced and read per run. `EVENTS=200000` makes a quicker run for trying a
/// change; the figures that count are taken with the default.
static EVENTS: LazyLock<u64> = LazyLock::new(|| {
    std::env::var("EVENTS").map_or(1_000_000, |v| v.parse().expect("EVENTS: a number"))
});
const TOPIC: &str = "bench-events";
/// Alternated rounds; the figures are their medians. `ROUNDS=7` steadies them on a
/// shared machine.
static ROUNDS: LazyLock<usize> =
    LazyLock::new(|| std::env::var("ROUNDS").map_or(3, |v| v.parse().expect("ROUNDS: a number")));

fn broker(verb: &str, port: u16) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/broker.sh");
    let ok = Command::new(script)
        .args([verb, &port.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "broker.sh {verb} {port}");
}

/// CPU time, in seconds, by who spent it.
#[derive(Debug, Default, Clone)]
struct Cpu {
    /// The thread that polls (and, for pipewatch, processes).
    consumer: f64,
    /// Time the consuming thread was ready to run but waited for a core: what the rest
    /// of the machine took from it. The remainder of the wall time it was asleep in
    /// `poll`, with no message to take.
    consumer_waiting: f64,
    /// librdkafka's threads: fetching, decoding message sets, the producers.
    librdkafka: f64,
    /// pipewatch's data-flow tracker (its thread, `pw-flow`).
    tracker: f64,
    /// What the consuming thread spent waiting for the tracker's thread
    /// (`SharedFlow::waited`), not for messages. It overlaps the wait for a core a little:
    /// a woken thread waits for one too, so the three shares can add up to over 100%.
    tracker_wait: f64,
    /// The bench's other threads (its progress watcher, the sink's poller).
    bench: f64,
    broker: f64,
    /// Every core's busy time, ours included.
    machine: f64,
}

impl Cpu {
    /// Now. `consumer` names the consuming thread, `broker` is Tansu's pid.
    fn read(consumer: &str, broker: u32) -> Cpu {
        // /proc reports in USER_HZ, which is 100 on every Linux ABI.
        const HZ: f64 = 100.0;
        let mut cpu = Cpu::default();
        let threads = std::fs::read_dir("/proc/self/task").expect("/proc");
        for thread in threads.flatten() {
            let Some((name, seconds)) = proc_stat(&thread.path().join("stat")) else {
                continue;
            };
            let seconds = seconds / HZ;
            match name.as_str() {
                n if n == consumer => {
                    // In nanoseconds: running, then waiting on a run queue.
                    let schedstat = std::fs::read_to_string(thread.path().join("schedstat"))
                        .unwrap_or_default();
                    let ns: Vec<f64> = schedstat
                        .split_whitespace()
                        .filter_map(|n| n.parse().ok())
                        .collect();
                    if let [running, waiting, ..] = ns[..] {
                        cpu.consumer += running / 1e9;
                        cpu.consumer_waiting += waiting / 1e9;
                    } else {
                        cpu.consumer += seconds;
                    }
                }
                n if n.starts_with("rdk:") => cpu.librdkafka += seconds,
                "pw-flow" => cpu.tracker += seconds,
                _ => cpu.bench += seconds,
            }
        }
        cpu.broker =
            proc_stat(&PathBuf::from(format!("/proc/{broker}/stat"))).map_or(0.0, |(_, s)| s / HZ);
        let all = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
        let ticks: Vec<f64> = all
            .lines()
            .next()
            .expect("the cpu line")
            .split_whitespace()
            .skip(1)
            .map(|t| t.parse().expect("ticks"))
            .collect();
        // user nice system idle iowait irq softirq steal: busy is all but idle and iowait.
        cpu.machine = (ticks.iter().take(8).sum::<f64>() - ticks[3] - ticks[4]) / HZ;
        cpu
    }

    fn since(&self, before: &Cpu) -> Cpu {
        Cpu {
            consumer: self.consumer - before.consumer,
            consumer_waiting: self.consumer_waiting - before.consumer_waiting,
            librdkafka: self.librdkafka - before.librdkafka,
            tracker: self.tracker - before.tracker,
            tracker_wait: self.tracker_wait - before.tracker_wait,
            bench: self.bench - before.bench,
            broker: self.broker - before.broker,
            machine: self.machine - before.machine,
        }
    }

    /// Everything the run's own threads and Tansu spent.
    fn ours(&self) -> f64 {
        self.consumer + self.librdkafka + self.tracker + self.bench + self.broker
    }

    /// The rate this run's CPU cost per message would allow if the consumer, librdkafka,
    /// the tracker, the bench and Tansu had every core of the machine to themselves: the
    /// cores divided by their CPU per message, and no more than the consuming thread's
    /// own rate.
    fn ceiling(&self) -> f64 {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let total = self.ours();
        let events = *EVENTS as f64;
        (cores * events / total).min(events / self.consumer)
    }

    /// Per message, in microseconds, and the cores that the rest of the machine used.
    fn describe(&self, seconds: f64) -> String {
        let us = |s: f64| s * 1e6 / *EVENTS as f64;
        let rest = self.machine - self.ours();
        let share = |s: f64| 100.0 * s / seconds;
        format!(
            "CPU per message: consumer thread {:.2} µs, data-flow tracker {:.2} µs, librdkafka {:.2} µs, tansu {:.2} µs; \
             consumer thread ran {:.0}%, waited for a core {:.0}%, for the tracker {:.0}%, for messages {:.0}% of the time; \
             rest of machine {:.2} cores; CPU-bound ceiling {:.0} events/s",
            us(self.consumer),
            us(self.tracker),
            us(self.librdkafka),
            us(self.broker),
            share(self.consumer),
            share(self.consumer_waiting),
            share(self.tracker_wait),
            share(seconds - self.consumer - self.consumer_waiting - self.tracker_wait).max(0.0),
            rest.max(0.0) / seconds,
            self.ceiling()
        )
    }
}

/// A thread's or process's name and its user plus system time, in ticks.
fn proc_stat(path: &std::path::Path) -> Option<(String, f64)> {
    let stat = std::fs::read_to_string(path).ok()?;
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let name = stat[open + 1..close].to_string();
    // After the name: state, then utime and stime are the 12th and 13th fields.
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some((name, ticks))
}

/// Tansu's pid, from the pid file broker.sh writes (under `TANSU_HOME`, as it does).
fn broker_pid(port: u16) -> u32 {
    let home = std::env::var_os("TANSU_HOME").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/.tansu"),
        PathBuf::from,
    );
    let file = home.join(format!("run/tansu-{port}.pid"));
    let pid = std::fs::read_to_string(&file).expect("broker.sh's pid file");
    pid.trim().parse().expect("a pid")
}

/// One timed run: seconds from the first message to the last, and the CPU spent then.
struct Timed {
    seconds: f64,
    cpu: Cpu,
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
    for event in sim.keyed_events().take(*EVENTS as usize) {
        bytes += event.json.len();
        let record = BaseRecord::to(TOPIC).key(&event.key).payload(&event.json);
        pipewatch::kafka::send_waiting(&producer, record).expect("queued");
    }
    producer
        .flush(Duration::from_secs(120))
        .expect("all delivered");
    bytes
}

/// From the first message to the `EVENTS`th, reading only, on a thread of its own: named,
/// so that /proc can tell its CPU time from the bench's.
fn raw(kafka: &KafkaSettings, broker: u32) -> Timed {
    let kafka = kafka.clone();
    let reader = std::thread::Builder::new()
        .name("raw".into())
        .spawn(move || {
            // pipewatch's settings, but for the bound of the prefetch: pipewatch's applies
            // to each partition's queue, and this consumer reads one queue for all of them,
            // so it keeps librdkafka's default for that one queue.
            let consumer: BaseConsumer = pipewatch::source::kafka::consumer_config(&kafka)
                .set("queued.max.messages.kbytes", "65536")
                .create()
                .expect("consumer");
            consumer.subscribe(&[TOPIC]).expect("subscribe");
            let (mut seen, mut first) = (0u64, None);
            while seen < *EVENTS {
                if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
                    first.get_or_insert_with(|| (Instant::now(), Cpu::read("raw", broker)));
                    seen += 1;
                }
            }
            let (started, cpu) = first.expect("messages");
            Timed {
                seconds: started.elapsed().as_secs_f64(),
                cpu: Cpu::read("raw", broker).since(&cpu),
            }
        });
    reader.expect("a thread").join().expect("raw consumer")
}

/// From the first message to the `EVENTS`th, through pipewatch's consume loop.
fn pipewatch(settings: &Settings, broker: u32) -> Timed {
    let progress = Arc::new(Progress::default());
    let stop = Arc::new(AtomicBool::new(false));
    // Named, so that a profiler can tell its time from the raw consumer's.
    let live = Arc::new(Live::new(settings, Driver::Service));
    let tracker_wait = || live.flow.as_ref().map_or(0.0, |f| f.waited().as_secs_f64());
    let worker = std::thread::Builder::new()
        .name("pipewatch".into())
        .spawn({
            let (settings, progress, stop) = (settings.clone(), progress.clone(), stop.clone());
            let live = Arc::clone(&live);
            move || {
                let outlets = Outlets { live, email: None };
                consume(&settings, &RunArgs::default(), &stop, progress, outlets).expect("consumes")
            }
        })
        .expect("a thread");
    while progress.processed.load(Ordering::Relaxed) == 0 {
        std::thread::sleep(Duration::from_micros(200));
    }
    let read = || Cpu {
        tracker_wait: tracker_wait(),
        ..Cpu::read("pipewatch", broker)
    };
    // pipewatch shows its progress once a batch is done: the messages of the first one
    // are not timed, so the time is scaled to all of them.
    let (first, untimed) = (Instant::now(), progress.processed.load(Ordering::Relaxed));
    let cpu = read();
    wait_until(&progress.processed, *EVENTS);
    let timed = Timed {
        seconds: first.elapsed().as_secs_f64() * *EVENTS as f64 / (*EVENTS - untimed) as f64,
        cpu: read().since(&cpu),
    };
    stop.store(true, Ordering::Relaxed);
    worker.join().expect("consume thread");
    if let Some(flow) = &live.flow {
        // How much the tracker had to forget: runs still in progress, forgotten to make
        // room, are what reading partitions far apart in event time costs.
        let stats = flow.lock().stats().clone();
        println!(
            "  data-flow tracker: {} runs started, {} forgotten to make room (flow.max_runs), {} stuck runs",
            stats.runs_started, stats.runs_evicted, stats.stuck_runs
        );
    }
    timed
}

/// Returns once `processed` reaches `target`, waking seldom: the run is measured on the
/// machine it shares, and a watcher that looked every 200 µs woke about 3,500 times a
/// second, each time taking a core from the threads it measured. It sleeps half the time
/// the rest should take at the rate so far (at most 50 ms, at least 100 µs), so it wakes
/// a few dozen times a run and still sees the end within about 100 µs.
fn wait_until(processed: &AtomicU64, target: u64) {
    let (since, done_then) = (Instant::now(), processed.load(Ordering::Relaxed));
    loop {
        let done = processed.load(Ordering::Relaxed);
        if done >= target {
            return;
        }
        let rate = (done - done_then) as f64 / since.elapsed().as_secs_f64();
        let rest = (target - done) as f64 / rate;
        let nap = if rest.is_finite() { rest / 2.0 } else { 1e-3 };
        std::thread::sleep(Duration::from_secs_f64(nap.clamp(100e-6, 50e-3)));
    }
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
    // `RUST_LOG=pipewatch=debug` shows the consume loop's commits and their round trips.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    broker("start", port);
    let tansu = broker_pid(port);
    let base = settings(port, "setup");
    pipewatch::kafka::create_topics(&base.kafka, &[TOPIC], 4).expect("topic");
    pipewatch::kafka::create_topics(&base.kafka, &["bench-alerts", "bench-dlq"], 1)
        .expect("topics");
    let t = Instant::now();
    let bytes = produce(&base.kafka);
    eprintln!(
        "produced {} events ({:.0} B each) in {:.1} s",
        *EVENTS,
        bytes as f64 / *EVENTS as f64,
        t.elapsed().as_secs_f64()
    );
    let (mut raw_s, mut pw_s, mut off_s) = (Vec::new(), Vec::new(), Vec::new());
    let (mut pw_ceiling, mut off_ceiling) = (Vec::new(), Vec::new());
    let (mut pw_paired, mut off_paired) = (Vec::new(), Vec::new());
    for round in 0..*ROUNDS {
        let r = raw(&settings(port, &format!("raw-{round}")).kafka, tansu);
        let p = pipewatch(&settings(port, &format!("pipewatch-{round}")), tansu);
        let mut no_flow = settings(port, &format!("pipewatch-noflow-{round}"));
        no_flow.flow.enabled = false;
        let o = pipewatch(&no_flow, tansu);
        for (name, t) in [("raw", &r), ("pipewatch", &p), ("pipewatch, flow off", &o)] {
            eprintln!(
                "round {round}: {name:<20} {:>7.0} events/s; {}",
                *EVENTS as f64 / t.seconds,
                t.cpu.describe(t.seconds)
            );
        }
        raw_s.push(r.seconds);
        pw_s.push(p.seconds);
        off_s.push(o.seconds);
        // Each round's own ratio: the raw consumer and pipewatch ran seconds apart, on the
        // machine as it was then, so the pair is steadier than medians taken apart.
        pw_paired.push(r.seconds / p.seconds);
        off_paired.push(r.seconds / o.seconds);
        pw_ceiling.push(p.cpu.ceiling());
        off_ceiling.push(o.cpu.ceiling());
    }
    broker("stop", port);
    let rate = |seconds: Vec<f64>| *EVENTS as f64 / median(seconds);
    let (raw_rate, pw_rate, off_rate) = (rate(raw_s), rate(pw_s), rate(off_s));
    println!(
        "kafka consume, medians of {}: raw rdkafka {raw_rate:.0} events/s, pipewatch run {pw_rate:.0} events/s, ratio {:.2} (target >= 0.80)",
        *ROUNDS,
        pw_rate / raw_rate
    );
    println!(
        "  without data-flow tracking (flow.enabled = false): pipewatch run {off_rate:.0} events/s, ratio {:.2}",
        off_rate / raw_rate
    );
    let spread = |v: &[f64]| {
        let (lo, hi) = v
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        format!("median {:.2} ({lo:.2}-{hi:.2})", median(v.to_vec()))
    };
    println!(
        "  each round's ratio: pipewatch run {}, flow off {}",
        spread(&pw_paired),
        spread(&off_paired)
    );
    // The raw consumer waits for messages most of the time (its rate is set by fetch round
    // trips, not CPU), so its rate stands; pipewatch's could at most reach its ceiling.
    let (pw_max, off_max) = (median(pw_ceiling), median(off_ceiling));
    println!(
        "  CPU-bound ceilings (every core to the consumer, the tracker, librdkafka and Tansu): pipewatch run {pw_max:.0} events/s, ratio {:.2}; flow off {off_max:.0} events/s, ratio {:.2}",
        pw_max / raw_rate,
        off_max / raw_rate
    );
}
