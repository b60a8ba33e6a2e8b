//! `pipewatch simulate --kafka`: the simulation, produced to a Kafka topic as a pipeline's
//! own producers would, keyed by `pipeline/stage`.

use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};

use crate::config::KafkaSettings;

use super::Simulation;

/// How fast events go out.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pace {
    /// Events per second at most; `None` is as fast as the broker takes them.
    pub rate: Option<f64>,
    /// Hold each event until the wall clock reaches its timestamp.
    pub realtime: bool,
}

/// Produces every event of `sim` to `topic`; returns how many were delivered.
pub fn produce(
    sim: &mut Simulation,
    kafka: &KafkaSettings,
    topic: &str,
    pace: Pace,
) -> anyhow::Result<u64> {
    let mut config = crate::kafka::client_config(kafka);
    for (name, value) in [("enable.idempotence", "true"), ("linger.ms", "20")] {
        if !kafka.properties.contains_key(name) {
            config.set(name, value);
        }
    }
    let producer: ThreadedProducer<crate::kafka::LoggingContext> = config
        .create_with_context(crate::kafka::LoggingContext)
        .context("creating the Kafka producer")?;
    let started = Instant::now();
    let mut sent = 0u64;
    for event in sim.keyed_events() {
        if pace.realtime {
            let ahead_ms = event.timestamp_ms - chrono::Utc::now().timestamp_millis();
            if ahead_ms > 0 {
                std::thread::sleep(Duration::from_millis(ahead_ms as u64));
            }
        }
        if let Some(rate) = pace.rate {
            let due = Duration::from_secs_f64(sent as f64 / rate);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        // The broker may be slower than the simulator (or away): wait, lose nothing.
        let record = BaseRecord::to(topic).key(&event.key).payload(&event.json);
        crate::kafka::send_waiting(&producer, record).context("producing a simulated event")?;
        sent += 1;
    }
    producer
        .flush(Duration::from_secs(60))
        .context("delivering the last simulated events")?;
    Ok(sent)
}
