//! `pipewatch run` against a real Kafka-compatible broker (Tansu, in memory), started on a
//! free loopback port by `scripts/broker.sh` for each test and stopped after it.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};

use common::free_port;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pipewatch::config::{KafkaSettings, Settings};
use pipewatch::simulate::{FaultLabel, FaultPlan, Pace, SimOptions, Simulation};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{
    BaseRecord, DefaultProducerContext, Producer, PurgeConfig, ThreadedProducer,
};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::Value;

const EVENTS: &str = "pipeline-events";
const ALERTS: &str = "pipeline-alerts";
const DEAD_LETTERS: &str = "pipeline-events-dlq";
const PARTITIONS: i32 = 4;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A Tansu broker on a free loopback port, stopped on drop. Clients reach it at
/// `advertised`, which is its own port unless a [`Proxy`] stands in front of it.
struct Broker {
    port: u16,
    advertised: u16,
}

impl Broker {
    fn start() -> Broker {
        let port = free_port();
        Broker::start_advertising(port, port)
    }

    fn start_advertising(port: u16, advertised: u16) -> Broker {
        let broker = Broker { port, advertised };
        broker.run(&["start", &port.to_string(), &advertised.to_string()]);
        broker
    }

    fn run(&self, args: &[&str]) {
        let status = Command::new(repo().join("scripts/broker.sh"))
            .args(args)
            .stdout(Stdio::null())
            .status()
            .expect("scripts/broker.sh runs");
        assert!(status.success(), "broker.sh {args:?} failed");
    }

    fn kafka(&self, group: &str) -> KafkaSettings {
        let mut kafka = Settings::defaults().kafka;
        kafka.brokers = format!("127.0.0.1:{}", self.advertised);
        kafka.group_id = group.to_string();
        // Tansu delays a group join by half the session timeout: keep it short.
        for (k, v) in [
            ("session.timeout.ms", "6000"),
            ("heartbeat.interval.ms", "500"),
        ] {
            kafka.properties.insert(k.into(), v.into());
        }
        kafka
    }

    fn create_topics(&self) {
        let kafka = self.kafka("setup");
        pipewatch::kafka::create_topics(&kafka, &[EVENTS], PARTITIONS).expect("event topic");
        pipewatch::kafka::create_topics(&kafka, &[ALERTS, DEAD_LETTERS], 1).expect("topics");
    }

    /// The broker's process id, from broker.sh's pid file.
    fn pid(&self) -> String {
        let pid_file = std::env::var_os("TANSU_HOME")
            .map_or_else(|| repo().join("scripts/.tansu"), PathBuf::from)
            .join(format!("run/tansu-{}.pid", self.port));
        let pid = std::fs::read_to_string(pid_file).expect("broker.sh's pid file");
        pid.trim().to_string()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.run(&["stop", &self.port.to_string()]);
    }
}

/// A TCP proxy on loopback that can cut every connection and refuse new ones, then come
/// back: a broker outage, as clients see it, without losing the broker's data.
struct Proxy {
    up: Arc<std::sync::atomic::AtomicBool>,
    connections: Arc<Mutex<Vec<std::net::TcpStream>>>,
}

impl Proxy {
    fn start(listen: u16, upstream: u16) -> Proxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        let up = Arc::new(AtomicBool::new(true));
        let connections = Arc::new(Mutex::new(Vec::<std::net::TcpStream>::new()));
        let (flag, conns) = (Arc::clone(&up), Arc::clone(&connections));
        std::thread::spawn(move || loop {
            let listener = TcpListener::bind(("127.0.0.1", listen)).expect("proxy port");
            listener.set_nonblocking(true).expect("nonblocking");
            while flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).expect("blocking");
                        let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", upstream))
                        else {
                            continue;
                        };
                        let mut all = conns.lock().unwrap();
                        for (mut from, mut to) in [
                            (client.try_clone().unwrap(), server.try_clone().unwrap()),
                            (server.try_clone().unwrap(), client.try_clone().unwrap()),
                        ] {
                            std::thread::spawn(move || {
                                let _ = std::io::copy(&mut from, &mut to);
                                let _ = to.shutdown(std::net::Shutdown::Both);
                            });
                        }
                        all.extend([client, server]);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            drop(listener);
            while !flag.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Proxy { up, connections }
    }

    fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for c in self.connections.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A `pipewatch run` process; killed on drop if still running.
struct Pipewatch {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    /// Its /metrics, health checks and API.
    http: std::net::SocketAddr,
}

impl Pipewatch {
    fn start(dir: &Path, name: &str, kafka: &KafkaSettings, extra: &[&str]) -> Pipewatch {
        Pipewatch::start_with(dir, name, kafka, extra, "")
    }

    /// `start` with more configuration (TOML sections after [http] and [kafka]).
    fn start_with(
        dir: &Path,
        name: &str,
        kafka: &KafkaSettings,
        extra: &[&str],
        more_config: &str,
    ) -> Pipewatch {
        let config = dir.join(format!("{name}.toml"));
        let properties: String = kafka
            .properties
            .iter()
            .map(|(k, v)| format!("\"{k}\" = \"{v}\"\n"))
            .collect();
        let http = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
        std::fs::write(
            &config,
            format!(
                "[http]\nlisten = \"{http}\"\n[kafka]\nbrokers = \"{}\"\ngroup_id = \"{}\"\ntopics = {:?}\nshutdown_timeout = \"{}\"\n[kafka.properties]\n{properties}\n{more_config}",
                kafka.brokers,
                kafka.group_id,
                kafka.topics,
                humantime::format_duration(kafka.shutdown_timeout)
            ),
        )
        .expect("config written");
        let mut child = Command::new(env!("CARGO_BIN_EXE_pipewatch"))
            .arg("--config")
            .arg(&config)
            .arg("run")
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("pipewatch starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let lines = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        Pipewatch { child, log, http }
    }

    fn get(&self, path: &str) -> common::Reply {
        common::get(self.http, path)
    }

    fn metrics(&self) -> String {
        self.get("/metrics").body
    }

    fn logged(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    fn last_assignment(&self) -> Option<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|l| l.contains("partitions assigned"))
            .cloned()
    }

    /// SIGTERM, and the exit status within `within`.
    fn terminate(&mut self, within: Duration) -> ExitStatus {
        self.send_sigterm();
        self.exit_status(within)
    }

    fn send_sigterm(&self) {
        signal("-TERM", &self.child.id().to_string());
    }

    /// The exit status, once it has stopped, within `within`.
    fn exit_status(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "pipewatch did not stop within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Requires a clean exit (status 0), on its own, within `shutdown_timeout` of a stop
    /// signal sent at `signalled_at` (and 2 s for the test's own latency); how long it took.
    fn clean_stop(&mut self, signalled_at: Instant, shutdown_timeout: Duration) -> Duration {
        let status = self.exit_status(shutdown_timeout + Duration::from_secs(10));
        let took = signalled_at.elapsed();
        assert!(
            status.success(),
            "a clean stop: {status}; its last words:\n{}",
            self.log_tail(20)
        );
        assert_eq!(
            self.logged("did not stop within kafka.shutdown_timeout"),
            0,
            "the stop ends on its own"
        );
        assert!(
            took < shutdown_timeout + Duration::from_secs(2),
            "stopped in {took:?}"
        );
        took
    }

    /// The last `n` lines it logged, but for librdkafka's.
    fn log_tail(&self, n: usize) -> String {
        let log = self.log.lock().unwrap();
        let own: Vec<&str> = log
            .iter()
            .map(String::as_str)
            .filter(|l| !l.contains("librdkafka"))
            .collect();
        own[own.len().saturating_sub(n)..].join("\n")
    }

    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }
}

impl Drop for Pipewatch {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The last `days` days up to now, simulated with one fault of each kind.
fn recent_simulation(days: u64, seed: u64) -> Simulation {
    Simulation::new(SimOptions {
        seed,
        start: chrono::Utc::now() - chrono::Duration::days(days as i64),
        duration: Duration::from_secs(days * 86_400),
        faults: FaultPlan::Default,
        ..SimOptions::default()
    })
    .expect("valid options")
}

/// Two simulated days; returns the fault labels and the event count.
fn produce_simulation(kafka: &KafkaSettings, seed: u64) -> (Vec<FaultLabel>, u64) {
    let mut sim = recent_simulation(2, seed);
    let sent = pipewatch::simulate::produce(&mut sim, kafka, EVENTS, Pace::default())
        .expect("events produced");
    (sim.labels(), sent)
}

/// Everything on partition 0 of `topic` from the start, read until `enough` says so.
fn read_topic(
    kafka: &KafkaSettings,
    topic: &str,
    timeout: Duration,
    mut enough: impl FnMut(&[rdkafka::message::OwnedMessage]) -> bool,
) -> Vec<rdkafka::message::OwnedMessage> {
    let consumer: BaseConsumer = pipewatch::kafka::client_config(kafka)
        .set("group.id", "test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .expect("tpl");
    consumer.assign(&tpl).expect("assign");
    let mut messages = Vec::new();
    let deadline = Instant::now() + timeout;
    while !enough(&messages) {
        assert!(
            Instant::now() < deadline,
            "timed out reading {topic}: {} messages so far",
            messages.len()
        );
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            messages.push(m.detach());
        }
    }
    messages
}

fn alerts_in(messages: &[rdkafka::message::OwnedMessage]) -> Vec<Value> {
    messages
        .iter()
        .map(|m| serde_json::from_slice(m.payload().expect("payload")).expect("alert JSON"))
        .collect()
}

/// Firing alerts that match each injected fault (records_lost is #5's, left out).
fn unmatched_faults(labels: &[FaultLabel], alerts: &[Value]) -> Vec<String> {
    labels
        .iter()
        .filter(|l| {
            !alerts.iter().any(|a| {
                a["status"] == "firing"
                    && a["pipeline"] == l.pipeline.as_str()
                    && a["stage"] == l.stage.as_str()
                    && a["kind"] == l.expected_alert
            })
        })
        .map(|l| format!("{} on {}/{}", l.expected_alert, l.pipeline, l.stage))
        .collect()
}

fn header<'a>(m: &'a rdkafka::message::OwnedMessage, name: &str) -> Option<&'a str> {
    let headers = m.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

#[test]
fn faults_alert_on_the_alert_topic_and_invalid_messages_are_dead_lettered() {
    let broker = Broker::start();
    broker.create_topics();
    let dir = tempfile::tempdir().expect("temp dir");
    let kafka = broker.kafka("pipewatch-e2e");
    let (labels, _) = produce_simulation(&kafka, 11);

    let producer: ThreadedProducer<DefaultProducerContext> =
        pipewatch::kafka::client_config(&kafka)
            .create()
            .expect("producer");
    let invalid: [&[u8]; 3] = [
        b"{not json",
        br#"{"pipeline":"p","stage":"s","timestamp":1795000000000,"records_in":-5}"#,
        b"<img src=x onerror=alert(1)>",
    ];
    for payload in invalid {
        producer
            .send(BaseRecord::to(EVENTS).key("bad/input").payload(payload))
            .map_err(|(e, _)| e)
            .expect("queued");
    }
    producer.flush(Duration::from_secs(10)).expect("delivered");

    // A regex that also matches the dead-letter topic: pipewatch must not read its own
    // output, or each dead letter would come back as a new one.
    let mut watching = kafka.clone();
    watching.topics = vec!["^pipeline-events.*".into()];
    // librdkafka reports each partition's end in a message's place when asked to (a
    // property users may pass through): an end of the backlog, not an error.
    (watching.properties).insert("enable.partition.eof".into(), "true".into());
    let mut pw = Pipewatch::start(dir.path(), "e2e", &watching, &[]);
    let alert_messages = read_topic(&kafka, ALERTS, Duration::from_secs(120), |m| {
        unmatched_faults(&labels, &alerts_in(m)).is_empty()
    });
    let dead = read_topic(&kafka, DEAD_LETTERS, Duration::from_secs(30), |m| {
        m.len() >= 3
    });
    std::thread::sleep(Duration::from_secs(3));
    let settled = read_topic(&kafka, DEAD_LETTERS, Duration::from_secs(30), |m| {
        m.len() >= 3
    });
    assert_eq!(
        settled.len(),
        3,
        "each invalid message dead-lettered once, never re-read"
    );
    assert!(pw.logged("own alert or dead-letter topic") > 0);

    // What the HTTP surface says of the same run.
    let ready = pw.get("/readyz");
    assert_eq!(ready.status, 200, "{}", ready.body);
    let metrics = pw.metrics();
    let value = |name: &str| common::value(&metrics, name);
    assert_eq!(value("pipewatch_dead_letters_total"), Some(3.0));
    assert!(metrics.contains("pipewatch_events_total{outcome=\"invalid\"} 3"));
    assert!(metrics.contains("pipewatch_invalid_events_total{reason=\"negative_count\"} 1"));
    assert_eq!(
        value("pipewatch_assigned_partitions"),
        Some(PARTITIONS as f64)
    );
    assert_eq!(value("pipewatch_kafka_up"), Some(1.0));
    assert!(value("pipewatch_kafka_alerts_sent_total").unwrap() >= labels.len() as f64);
    assert!(value("pipewatch_processing_latency_seconds_count").unwrap() > 0.0);
    // The partitions are read a fetch at a time, some ahead of others in event time:
    // data-flow figures wait for the slowest, and none come after their bucket.
    assert_eq!(
        value(r#"pipewatch_flow_dropped_total{what="late_figures"}"#),
        Some(0.0)
    );
    // How long the loop waited for the tracker's thread: a time, whatever it came to.
    let waited = value("pipewatch_flow_wait_seconds_total");
    assert!(waited.is_some_and(|s| s >= 0.0), "{waited:?}");
    let lag = common::series(&metrics, "pipewatch_consumer_lag_messages");
    assert_eq!(lag.len(), PARTITIONS as usize, "{lag:?}");
    assert!(!common::series(&metrics, "pipewatch_stage_value").is_empty());
    let stages = pw.get("/api/v1/stages").json();
    assert_eq!(
        stages["total"], 16,
        "the simulation's stages, all on this instance"
    );
    let active = pw.get("/api/v1/alerts?state=recent").json();
    assert!(!active["alerts"].as_array().unwrap().is_empty());

    let status = pw.terminate(Duration::from_secs(15));
    assert!(status.success(), "graceful stop exits 0: {status}");
    assert_eq!(pw.logged("stopped"), 1);
    // Every message came in batches: each partition was forwarded to the batch queue
    // before it was assigned (see `source::batch`), none left to `BaseConsumer::poll`.
    assert_eq!(pw.logged("messages processed"), 1, "the run's summary");
    assert_eq!(pw.logged("not in batches"), 0, "{}", pw.log_tail(5));
    assert_eq!(pw.logged("kafka consumer error"), 0, "{}", pw.log_tail(5));

    let alerts = alerts_in(&alert_messages);
    println!(
        "{} alert notifications for {} faults",
        alerts.len(),
        labels.len()
    );
    for (message, alert) in alert_messages.iter().zip(&alerts) {
        assert_eq!(
            message.key().map(|k| std::str::from_utf8(k).unwrap()),
            alert["fingerprint"].as_str(),
            "key = fingerprint"
        );
        assert_eq!(alert["version"], "1");
        for field in [
            "alert_id", "status", "severity", "kind", "pipeline", "stage", "summary",
        ] {
            assert!(alert[field].is_string(), "{field} in {alert}");
        }
    }

    let by_payload: BTreeMap<&[u8], &rdkafka::message::OwnedMessage> = dead
        .iter()
        .map(|m| (m.payload().unwrap_or_default(), m))
        .collect();
    let expectations: [(&[u8], &str, &str); 3] = [
        (invalid[0], "not_json", ""),
        (invalid[1], "negative_count", "records_in"),
        (invalid[2], "not_json", ""),
    ];
    for (payload, reason, field) in expectations {
        let m = by_payload.get(payload).unwrap_or_else(|| {
            panic!(
                "{} dead-lettered unchanged",
                String::from_utf8_lossy(payload)
            )
        });
        assert_eq!(header(m, "pipewatch.reason"), Some(reason));
        assert_eq!(header(m, "pipewatch.field"), Some(field));
        assert_eq!(header(m, "pipewatch.source.topic"), Some(EVENTS));
        let partition: i32 = header(m, "pipewatch.source.partition")
            .unwrap()
            .parse()
            .unwrap();
        let offset: i64 = header(m, "pipewatch.source.offset")
            .unwrap()
            .parse()
            .unwrap();
        assert!((0..PARTITIONS).contains(&partition) && offset >= 0);
        assert_eq!(m.key(), Some(&b"bad/input"[..]), "the original key is kept");
    }
}

/// Reads an offsets log into (partition, offset) → times processed. A line is only taken
/// once complete: the log may be read while pipewatch writes it, and a killed process may
/// leave a torn line behind (pipewatch starts its own on a new line).
fn processed_offsets(path: &Path) -> BTreeMap<(i32, i64), u32> {
    let mut seen = BTreeMap::new();
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    for line in complete.lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        if let [_, partition, offset] = parts[..] {
            if let (Ok(p), Ok(o)) = (partition.parse(), offset.parse()) {
                *seen.entry((p, o)).or_insert(0) += 1;
            }
        }
    }
    seen
}

#[test]
fn a_killed_instance_loses_nothing_when_restarted() {
    let broker = Broker::start();
    broker.create_topics();
    let dir = tempfile::tempdir().expect("temp dir");
    let kafka = broker.kafka("pipewatch-restart");
    let (_, sent) = produce_simulation(&kafka, 12);
    let log = dir.path().join("offsets.log");
    let log_arg = log.to_str().unwrap();

    let mut first = Pipewatch::start(dir.path(), "first", &kafka, &["--offsets-log", log_arg]);
    // Kill it mid-stream, once it has committed some of the topic but not all.
    wait_until("a first commit", Duration::from_secs(60), || {
        processed_offsets(&log).len() as u64 > sent / 10
    });
    first.kill();
    let before_restart = processed_offsets(&log).len() as u64;
    assert!(
        before_restart < sent,
        "killed mid-stream ({before_restart} of {sent})"
    );

    let mut second = Pipewatch::start(dir.path(), "second", &kafka, &["--offsets-log", log_arg]);
    wait_until("every event processed", Duration::from_secs(120), || {
        processed_offsets(&log).len() as u64 >= sent
    });
    assert!(second.terminate(Duration::from_secs(15)).success());

    let seen = processed_offsets(&log);
    let per_partition: BTreeMap<i32, i64> = seen.keys().fold(BTreeMap::new(), |mut m, (p, o)| {
        let top = m.entry(*p).or_insert(-1);
        *top = (*top).max(*o);
        m
    });
    for (&partition, &top) in &per_partition {
        for offset in 0..=top {
            assert!(
                seen.contains_key(&(partition, offset)),
                "offset {offset} of partition {partition} skipped"
            );
        }
    }
    let total: u64 = per_partition.values().map(|t| (t + 1) as u64).sum();
    assert_eq!(total, sent, "every produced event is accounted for");
    let repeats: u32 = seen.values().map(|n| n - 1).sum();
    println!(
        "{sent} events: {} processed at least once, {repeats} processed twice (after the kill), {} warm-up re-reads logged by the second instance",
        seen.len(),
        second.logged("warming up from history")
    );
}

/// The backlog of two partitions over the same twelve hours, one with ten times the
/// other's events: librdkafka fetches them by bytes, so the sparse one's twelve hours come
/// with the busy one's first hour or so. Read in event time, no message is processed more
/// than the read-ahead allowed (two hours) and a batch's span (512 of the sparse
/// partition's events, 92 minutes) behind the latest event time processed before it;
/// read in the order fetched, that lag is ten hours or more.
#[test]
fn a_backlog_is_read_in_event_time_across_partitions() {
    const HOURS: i64 = 12;
    // (partition, milliseconds between its events)
    const PARTITIONS_READ: [(i32, i64); 2] = [(0, 1_080), (1, 10_800)];
    let broker = Broker::start();
    broker.create_topics();
    let dir = tempfile::tempdir().expect("temp dir");
    let kafka = broker.kafka("pipewatch-event-time");
    let start_ms = (chrono::Utc::now() - chrono::Duration::days(2)).timestamp_millis();
    let producer: ThreadedProducer<DefaultProducerContext> =
        pipewatch::kafka::client_config(&kafka)
            .set("linger.ms", "20")
            .create()
            .expect("producer");
    let mut sent = 0u64;
    for (partition, step_ms) in PARTITIONS_READ {
        let stage = format!("stage-{partition}");
        for ts in (start_ms..start_ms + HOURS * 3_600_000).step_by(step_ms as usize) {
            let event = format!(
                r#"{{"pipeline":"orders","stage":"{stage}","timestamp":{ts},"records_in":5,"records_out":5}}"#
            );
            let record = BaseRecord::to(EVENTS)
                .partition(partition)
                .key(&stage)
                .payload(&event);
            pipewatch::kafka::send_waiting(&producer, record).expect("queued");
            sent += 1;
        }
    }
    producer.flush(Duration::from_secs(30)).expect("delivered");
    // A new topic's offsets count from 0, one per event.
    let event_time = |partition: i32, offset: i64| {
        let (_, step_ms) = PARTITIONS_READ
            .iter()
            .find(|(p, _)| *p == partition)
            .expect("a partition written to");
        start_ms + offset * step_ms
    };

    let log = dir.path().join("offsets.log");
    let mut pipewatch = Pipewatch::start(
        dir.path(),
        "event-time",
        &kafka,
        &["--offsets-log", log.to_str().unwrap()],
    );
    wait_until("every event processed", Duration::from_secs(120), || {
        processed_offsets(&log).len() as u64 >= sent
    });
    assert!(pipewatch.terminate(Duration::from_secs(15)).success());

    let text = std::fs::read_to_string(&log).expect("offsets log");
    let (mut latest_ms, mut furthest_behind_ms, mut lines) = (i64::MIN, 0, 0u64);
    for line in text.lines() {
        let [_, partition, offset] = line.split(' ').collect::<Vec<_>>()[..] else {
            panic!("an offsets log line: {line:?}");
        };
        let ts = event_time(partition.parse().unwrap(), offset.parse().unwrap());
        furthest_behind_ms = furthest_behind_ms.max(latest_ms.saturating_sub(ts));
        latest_ms = latest_ms.max(ts);
        lines += 1;
    }
    assert_eq!(lines, sent, "each event processed once");
    println!(
        "{sent} events: at most {} minutes behind the latest event time read",
        furthest_behind_ms / 60_000
    );
    assert!(
        furthest_behind_ms <= 4 * 3_600_000,
        "read {} minutes behind the latest event time read before",
        furthest_behind_ms / 60_000
    );
}

#[test]
fn two_instances_split_the_partitions_and_each_stage_alerts_from_one() {
    let broker = Broker::start();
    broker.create_topics();
    let dir = tempfile::tempdir().expect("temp dir");
    let kafka = broker.kafka("pipewatch-pair");
    let out = |name: &str| dir.path().join(format!("{name}.alerts"));
    let (a_out, b_out) = (out("a"), out("b"));
    let a = Pipewatch::start(
        dir.path(),
        "a",
        &kafka,
        &["--alerts-out", a_out.to_str().unwrap()],
    );
    wait_until(
        "the first instance's assignment",
        Duration::from_secs(60),
        || a.last_assignment().is_some_and(|l| l.contains(EVENTS)),
    );
    let b = Pipewatch::start(
        dir.path(),
        "b",
        &kafka,
        &["--alerts-out", b_out.to_str().unwrap()],
    );
    // Stable once both hold partitions (eager rebalance: a gives up all, then gets half).
    wait_until(
        "the partitions to be split",
        Duration::from_secs(60),
        || {
            let count =
                |p: &Pipewatch| p.last_assignment().map_or(0, |l| l.matches(EVENTS).count());
            count(&b) > 0 && count(&a) > 0 && count(&a) + count(&b) == PARTITIONS as usize
        },
    );

    let (labels, _) = produce_simulation(&kafka, 13);
    let read = |path: &Path| -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("alert JSON"))
            .collect()
    };
    wait_until("every fault to alert", Duration::from_secs(120), || {
        let mut all = read(&a_out);
        all.extend(read(&b_out));
        unmatched_faults(&labels, &all).is_empty()
    });
    let stages = |alerts: &[Value]| -> HashSet<String> {
        alerts
            .iter()
            .map(|a| {
                format!(
                    "{}/{}",
                    a["pipeline"].as_str().unwrap(),
                    a["stage"].as_str().unwrap()
                )
            })
            .collect()
    };
    let (from_a, from_b) = (stages(&read(&a_out)), stages(&read(&b_out)));
    println!("instance a alerted on {from_a:?}\ninstance b alerted on {from_b:?}");
    assert!(
        !from_a.is_empty() && !from_b.is_empty(),
        "both instances do work"
    );
    let both: BTreeSet<_> = from_a.intersection(&from_b).collect();
    assert!(
        both.is_empty(),
        "stages alerted by both instances: {both:?}"
    );
}

#[test]
fn a_broker_down_at_start_or_mid_stream_loses_nothing() {
    let (broker_port, proxy_port) = (free_port(), free_port());
    let proxy = Proxy::start(proxy_port, broker_port);
    let broker = Broker::start_advertising(broker_port, proxy_port);
    broker.create_topics();
    let dir = tempfile::tempdir().expect("temp dir");
    let kafka = broker.kafka("pipewatch-outage");
    let log = dir.path().join("offsets.log");

    // Down at start: pipewatch keeps trying, says so, and joins once the broker is back.
    proxy.cut();
    let mut pw = Pipewatch::start(
        dir.path(),
        "outage",
        &kafka,
        &["--offsets-log", log.to_str().unwrap()],
    );
    wait_until("the failure to be logged", Duration::from_secs(30), || {
        pw.logged("kafka:") > 0
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        pw.last_assignment().is_none(),
        "no assignment without a broker"
    );
    assert_eq!(pw.get("/healthz").status, 200, "alive without a broker");
    let unready = pw.get("/readyz");
    assert_eq!(unready.status, 503);
    assert!(
        unready.body.contains("not connected to Kafka"),
        "{}",
        unready.body
    );
    assert!(common::value(&pw.metrics(), "pipewatch_kafka_errors_total").unwrap() > 0.0);
    proxy.restore();
    wait_until("the assignment", Duration::from_secs(60), || {
        pw.last_assignment().is_some()
    });
    wait_until("readiness", Duration::from_secs(30), || {
        pw.get("/readyz").status == 200
    });

    // Events keep coming before, during and after the outage; the producer buffers them.
    let producing = std::thread::spawn({
        let kafka = kafka.clone();
        move || {
            let mut sim = recent_simulation(1, 14);
            let pace = Pace {
                rate: Some(8_000.0),
                realtime: false,
            };
            pipewatch::simulate::produce(&mut sim, &kafka, EVENTS, pace).expect("all delivered")
        }
    });
    wait_until("processing to start", Duration::from_secs(30), || {
        !processed_offsets(&log).is_empty()
    });
    let errors_before = pw.logged("kafka:");
    let cut_at = Instant::now();
    proxy.cut();
    wait_until("the outage in the metrics", Duration::from_secs(15), || {
        common::value(&pw.metrics(), "pipewatch_kafka_up") == Some(0.0)
    });
    assert_eq!(
        pw.get("/readyz").status,
        503,
        "not ready while the broker is away"
    );
    std::thread::sleep(Duration::from_secs(5).saturating_sub(cut_at.elapsed()));
    let during = processed_offsets(&log).len();
    proxy.restore();
    let sent = producing.join().expect("producer thread");
    wait_until("every event processed", Duration::from_secs(120), || {
        processed_offsets(&log).len() as u64 >= sent
    });
    assert!(pw.logged("kafka:") > errors_before, "the outage is logged");
    assert!(pw.terminate(Duration::from_secs(15)).success());
    let seen = processed_offsets(&log);
    let total: u64 = (0..PARTITIONS)
        .map(|p| seen.range((p, 0)..(p, i64::MAX)).count() as u64)
        .sum();
    assert_eq!(total, sent, "every produced event processed, none skipped");
    for &(p, o) in seen.keys() {
        assert!(
            o == 0 || seen.contains_key(&(p, o - 1)),
            "gap before offset {o} of partition {p}"
        );
    }
    println!("{sent} events, {during} processed when the connection was cut for 5 s, all processed after");
}

/// The setting of the stop tests: a broker with the topics, and pipewatch consuming from
/// it (named `name`, with an offsets log and a 3 s `kafka.shutdown_timeout`), its
/// partitions assigned, while events stream in.
struct StopScene {
    broker: Broker,
    kafka: KafkaSettings,
    log: PathBuf,
    pw: Pipewatch,
    producing: EventStream,
    _dir: tempfile::TempDir,
}

impl StopScene {
    fn start(name: &str, seed: u64) -> StopScene {
        let broker = Broker::start();
        broker.create_topics();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut kafka = broker.kafka(&format!("pipewatch-{name}"));
        kafka.shutdown_timeout = Duration::from_secs(3);
        let log = dir.path().join("offsets.log");
        let pw = Pipewatch::start(
            dir.path(),
            name,
            &kafka,
            &["--offsets-log", log.to_str().unwrap()],
        );
        wait_until("the assignment", Duration::from_secs(60), || {
            pw.last_assignment().is_some()
        });
        let producing = EventStream::start(&kafka, seed);
        StopScene {
            broker,
            kafka,
            log,
            pw,
            producing,
            _dir: dir,
        }
    }
}

#[test]
fn a_stop_as_the_broker_goes_away_ends_within_the_shutdown_timeout() {
    let StopScene {
        broker,
        kafka,
        log,
        mut pw,
        producing,
        _dir,
    } = StopScene::start("stop-outage", 15);
    wait_until("processing to start", Duration::from_secs(30), || {
        processed_offsets(&log).len() > 1_000
    });

    // The broker goes away as the stop begins: the last commit goes to a broker that is
    // shutting down, and librdkafka may wait for its answer without a deadline (once, the
    // process waited for that thread for ever; then the stop gave up after
    // kafka.shutdown_timeout and exited 1). pipewatch waits two thirds of that at most for the
    // answer, says what it left uncommitted, and exits 0 within the timeout.
    // Both at once, as Ctrl-C does to a terminal's foreground processes.
    let signalled = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "kill -TERM {}; kill -INT {}",
            pw.child.id(),
            broker.pid()
        ))
        .status()
        .expect("sh runs");
    assert!(signalled.success());
    let took = pw.clean_stop(Instant::now(), kafka.shutdown_timeout);
    producing.stop();
    let unanswered = pw.logged("no answer to the offset commit in time") > 0;
    println!(
        "stopped as the broker went away in {took:?}: the last commit {}",
        if unanswered {
            "got no answer"
        } else if pw.logged("the last commit failed") > 0 {
            "failed"
        } else {
            "went through"
        }
    );
}

#[test]
fn a_broker_that_stops_answering_holds_up_neither_consuming_nor_a_stop() {
    let StopScene {
        broker,
        kafka,
        mut pw,
        producing,
        _dir,
        ..
    } = StopScene::start("frozen", 16);
    wait_until("a commit", Duration::from_secs(30), || {
        let metrics = pw.metrics();
        common::value(&metrics, r#"pipewatch_offset_commits_total{result="ok"}"#) > Some(0.0)
    });

    // The broker stops answering without closing a connection (stopped, not killed):
    // the periodic commit sent next (every second) waits for an answer that does not
    // come, or for the delivery of the alerts its events caused; librdkafka gives up on a
    // request after socket.timeout.ms, a minute. Once, the consume loop waited with it,
    // and a stop then gave up after kafka.shutdown_timeout and exited 1. Leaving the
    // group gets no answer either.
    let frozen = Frozen::stop(&broker);
    std::thread::sleep(Duration::from_millis(2_500));
    pw.send_sigterm();
    let took = pw.clean_stop(Instant::now(), kafka.shutdown_timeout);
    drop(frozen);
    producing.stop();
    assert!(
        pw.logged("the last commit failed; events since the previous one will be read again") > 0,
        "the stop says that it left events uncommitted:\n{}",
        pw.log_tail(20)
    );
    let waited_for = if pw.logged("no answer to the offset commit on its way") > 0 {
        "the answer to a commit"
    } else {
        "deliveries"
    };
    println!("stopped in {took:?}, having waited in vain for {waited_for}");
}

/// A broker process stopped (SIGSTOP) until this is dropped: its connections stay open
/// and nothing on them is answered.
struct Frozen(String);

impl Frozen {
    fn stop(broker: &Broker) -> Frozen {
        let pid = broker.pid();
        signal("-STOP", &pid);
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal("-CONT", &self.0);
    }
}

fn signal(signal: &str, pid: &str) {
    let sent = Command::new("kill").args([signal, pid]).status();
    assert!(sent.is_ok_and(|s| s.success()), "kill {signal} {pid}");
}

/// Simulated events produced to the event topic, one every 300 µs, until stopped: events
/// go on arriving up to the moment the broker goes away.
struct EventStream {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl EventStream {
    fn start(kafka: &KafkaSettings, seed: u64) -> EventStream {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (kafka, stop) = (kafka.clone(), Arc::clone(&stop));
            move || {
                let mut sim = recent_simulation(1, seed);
                let producer: ThreadedProducer<DefaultProducerContext> =
                    pipewatch::kafka::client_config(&kafka)
                        .create()
                        .expect("producer");
                for event in sim.keyed_events() {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let record = BaseRecord::to(EVENTS).key(&event.key).payload(&event.json);
                    let _ = producer.send(record);
                    std::thread::sleep(Duration::from_micros(300));
                }
                // The broker may be away by now: what it did not take is dropped.
                producer.purge(PurgeConfig::default().queue().inflight());
            }
        });
        EventStream { stop, thread }
    }

    fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("producer thread");
    }
}

/// Events of one stage every 100 ms from `from_ms` (inclusive) to `to_ms` (exclusive),
/// with `records` each.
fn send_stage_events(
    producer: &ThreadedProducer<DefaultProducerContext>,
    from_ms: i64,
    to_ms: i64,
    records: impl Fn(i64) -> u64,
) {
    for (i, ts) in (from_ms..to_ms).step_by(100).enumerate() {
        let n = records(i as i64);
        let event = format!(
            r#"{{"pipeline":"orders","stage":"load","timestamp":{ts},"records_in":{n},"records_out":{n}}}"#
        );
        pipewatch::kafka::send_waiting(
            producer,
            BaseRecord::to(EVENTS).key("orders/load").payload(&event),
        )
        .expect("queued");
    }
    producer.flush(Duration::from_secs(10)).expect("delivered");
}

#[test]
fn a_fault_is_emailed_after_an_smtp_outage_then_its_resolution() {
    let broker = Broker::start();
    broker.create_topics();
    let dir = tempfile::tempdir().expect("temp dir");
    let kafka = broker.kafka("pipewatch-email");
    let smtp_port = free_port();
    // One-second buckets, so a fault and its end take seconds; only the records metric
    // is judged, so the one fault makes one alert.
    let config = format!(
        r#"
[window]
bucket = "1s"
allowed_lateness = "0s"
[detection]
training_buckets = 10
[metrics.events]
enabled = false
[silence]
enabled = false
[email]
enabled = true
smtp_port = {smtp_port}
from = "pipewatch@pipewatch.test"
to = ["oncall@pipewatch.test"]
group_wait = "300ms"
retry_backoff = "100ms"
retry_max_backoff = "500ms"
"#
    );
    let pw = Pipewatch::start_with(dir.path(), "email", &kafka, &[], &config);
    wait_until("the assignment", Duration::from_secs(60), || {
        pw.last_assignment().is_some()
    });
    let producer: ThreadedProducer<DefaultProducerContext> =
        pipewatch::kafka::client_config(&kafka)
            .create()
            .expect("producer");
    let now = chrono::Utc::now().timestamp_millis() / 1000 * 1000;
    // 40 s of normal volume, then 10 s at 2% of it, running a few seconds into the
    // future (allowed up to input.max_future_skew) so no wall-clock gap opens before the
    // recovery is sent.
    let fault_end = now + 10_000;
    send_stage_events(&producer, now - 40_000, now, |i| 1000 + (i % 7) as u64 * 10);
    send_stage_events(&producer, now, fault_end, |_| 20);

    // The SMTP server is down: the alert reaches Kafka and the metrics all the same.
    let alerts = read_topic(&kafka, ALERTS, Duration::from_secs(30), |m| {
        alerts_in(m).iter().any(|a| a["status"] == "firing")
    });
    let firing = alerts_in(&alerts).remove(0);
    assert_eq!(firing["kind"], "throughput_drop");
    assert_eq!(firing["stage"], "load");
    wait_until(
        "failed sends in the metrics",
        Duration::from_secs(15),
        || {
            common::value(&pw.metrics(), "pipewatch_email_send_failures_total")
                .is_some_and(|n| n > 0.0)
        },
    );
    let metrics = pw.metrics();
    assert!(metrics.contains(
        "pipewatch_alerts_total{kind=\"throughput_drop\",severity=\"critical\",status=\"firing\"} 1"
    ));
    assert_eq!(
        common::value(&metrics, "pipewatch_email_messages_sent_total"),
        Some(0.0)
    );

    // The server comes back: the waiting mail is delivered, once.
    let server = common::smtp::SmtpServer::start(smtp_port, &[]);
    let mails = server.wait_for(1);
    let mail = &mails[0];
    assert!(
        mail.subject()
            .starts_with("[pipewatch] FIRING critical: orders/load records fell to"),
        "{}",
        mail.subject()
    );
    assert_eq!(mail.recipients(), ["oncall@pipewatch.test"]);
    assert_eq!(mail.header("To").unwrap(), "oncall@pipewatch.test");
    for part in mail.parts() {
        for needle in [
            "throughput_drop",
            firing["summary"].as_str().unwrap(),
            "/stages/orders/load",
        ] {
            assert!(part.contains(needle), "{needle:?} not in {part}");
        }
    }

    // The volume recovers: the alert resolves and a second mail says so.
    let resume = fault_end.max(chrono::Utc::now().timestamp_millis() / 1000 * 1000 + 1000);
    send_stage_events(&producer, resume, resume + 5_000, |i| {
        1000 + (i % 7) as u64 * 10
    });
    let mails = server.wait_for(2);
    assert!(
        mails[1]
            .subject()
            .starts_with("[pipewatch] RESOLVED: orders/load records"),
        "{}",
        mails[1].subject()
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(server.messages().len(), 2, "one mail per notification");
    let metrics = pw.metrics();
    assert_eq!(
        common::value(&metrics, "pipewatch_email_messages_sent_total"),
        Some(2.0)
    );
    assert_eq!(
        common::value(&metrics, "pipewatch_email_alerts_dropped_total"),
        Some(0.0)
    );
}
