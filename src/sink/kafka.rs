//! Alerts and dead letters out to Kafka, with delivery confirmed.
//!
//! One idempotent producer carries both. It never gives up on a message
//! (`message.timeout.ms = 0`): an alert is either delivered or still being retried, and a
//! "resolved" can never overtake the "firing" it ends, because the idempotent producer
//! keeps order per partition and both share a key. The driver commits consumer offsets only
//! once everything produced before it listed them is reported on, which is what makes
//! delivery at-least-once end to end: it waits for that with [`KafkaSink::flush`], or asks
//! without waiting with [`KafkaSink::mark`] and [`KafkaSink::delivered_before`].

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Message};

use crate::alert::Alert;
use crate::config::KafkaSettings;
use crate::decode::Rejection;

/// Counters of what the sink did, shared with whoever reports them.
#[derive(Debug, Default)]
pub struct SinkCounters {
    pub alerts_sent: AtomicU64,
    pub dead_letters_sent: AtomicU64,
    /// Messages the broker refused for good (too large, not authorised, no such topic).
    pub failed: AtomicU64,
    /// Dead letters sent without their payload, which was larger than the producer allows.
    pub payloads_omitted: AtomicU64,
}

/// What a produced message was, carried to its delivery report in the low bit of its
/// opaque, above its number in [`Outstanding`].
#[derive(Clone, Copy)]
#[repr(usize)]
enum Carried {
    Alert = 0,
    DeadLetter = 1,
}

/// Messages queued and not yet reported on, by number in the order they were queued: what
/// a commit of offsets waits for ([`KafkaSink::mark`]).
#[derive(Default)]
struct Outstanding {
    next: usize,
    pending: BTreeSet<usize>,
}

fn outstanding(shared: &Mutex<Outstanding>) -> std::sync::MutexGuard<'_, Outstanding> {
    // A counter and a set, each updated in one call: a panic leaves nothing half-done.
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Counts confirmed deliveries: an alert is "sent" only here.
pub struct DeliveryReports {
    counters: Arc<SinkCounters>,
    outstanding: Arc<Mutex<Outstanding>>,
}

impl ClientContext for DeliveryReports {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        crate::kafka::log(level, facility, message);
    }

    // Statistics are read from the consumer; an operator's `statistics.interval.ms`
    // reaches this producer too and must not flood the log.
    fn stats(&self, _: rdkafka::statistics::Statistics) {}
}

impl ProducerContext for DeliveryReports {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        outstanding(&self.outstanding)
            .pending
            .remove(&(opaque >> 1));
        let carried = opaque & 1;
        let c = &self.counters;
        match result {
            Ok(_) if carried == Carried::Alert as usize => {
                c.alerts_sent.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {
                c.dead_letters_sent.fetch_add(1, Ordering::Relaxed);
            }
            Err((err, message)) => {
                c.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    topic = message.topic(),
                    error = %err,
                    "a message was refused by the broker for good and is lost"
                );
            }
        }
    }
}

/// Where a dead letter came from.
pub struct Origin<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
}

pub struct KafkaSink {
    producer: ThreadedProducer<DeliveryReports>,
    alert_topic: String,
    dead_letter_topic: String,
    counters: Arc<SinkCounters>,
    outstanding: Arc<Mutex<Outstanding>>,
}

impl KafkaSink {
    pub fn new(kafka: &KafkaSettings) -> anyhow::Result<KafkaSink> {
        let counters = Arc::new(SinkCounters::default());
        let outstanding = Arc::new(Mutex::new(Outstanding::default()));
        let mut config = crate::kafka::client_config(kafka);
        for (name, value) in [("enable.idempotence", "true"), ("message.timeout.ms", "0")] {
            if !kafka.properties.contains_key(name) {
                config.set(name, value);
            }
        }
        let producer = config
            .create_with_context(DeliveryReports {
                counters: Arc::clone(&counters),
                outstanding: Arc::clone(&outstanding),
            })
            .context("creating the Kafka producer for alerts and dead letters")?;
        Ok(KafkaSink {
            producer,
            alert_topic: kafka.alert_topic.clone(),
            dead_letter_topic: kafka.dead_letter_topic.clone(),
            counters,
            outstanding,
        })
    }

    pub fn counters(&self) -> &Arc<SinkCounters> {
        &self.counters
    }

    /// Queues one alert, keyed by its fingerprint (so a topic compacted by key keeps each
    /// alert's latest state). Waits while the local queue is full: that is backpressure
    /// from a broker that cannot keep up, and dropping alerts is not an option.
    pub fn alert(&self, alert: &Alert) {
        let payload = serde_json::to_vec(alert).expect("an alert always serialises");
        let record = BaseRecord::with_opaque_to(&self.alert_topic, Carried::Alert as usize)
            .key(alert.fingerprint.as_bytes())
            .payload(payload.as_slice());
        self.send(record);
    }

    /// Queues an invalid message, unchanged, with why and where from in its headers.
    pub fn dead_letter(&self, payload: &[u8], origin: &Origin<'_>, rejection: &Rejection) {
        let partition = origin.partition.to_string();
        let offset = origin.offset.to_string();
        let headers = OwnedHeaders::new()
            .insert(header("pipewatch.reason", rejection.reason.as_str()))
            .insert(header("pipewatch.field", rejection.field.unwrap_or("")))
            .insert(header("pipewatch.detail", &rejection.detail))
            .insert(header("pipewatch.source.topic", origin.topic))
            .insert(header("pipewatch.source.partition", &partition))
            .insert(header("pipewatch.source.offset", &offset));
        let mut record =
            BaseRecord::with_opaque_to(&self.dead_letter_topic, Carried::DeadLetter as usize)
                .payload(payload)
                .headers(headers.clone());
        if let Some(key) = origin.key {
            record = record.key(key);
        }
        match self.try_send(record) {
            Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)) => {
                // Larger than this producer may send (message.max.bytes): the reason and
                // origin still go, so the message can be found at its source.
                self.counters
                    .payloads_omitted
                    .fetch_add(1, Ordering::Relaxed);
                let size = payload.len().to_string();
                let mut record = BaseRecord::<[u8], [u8], usize>::with_opaque_to(
                    &self.dead_letter_topic,
                    Carried::DeadLetter as usize,
                )
                .headers(headers.insert(header("pipewatch.payload_omitted_bytes", &size)));
                if let Some(key) = origin.key {
                    record = record.key(key);
                }
                self.send(record);
            }
            Err(err) => self.refused(&self.dead_letter_topic, &err),
            Ok(()) => {}
        }
    }

    /// A mark for everything queued so far: [`KafkaSink::delivered_before`] says when all
    /// of it has been reported on (delivered, or refused for good), without waiting.
    pub fn mark(&self) -> usize {
        outstanding(&self.outstanding).next
    }

    /// Has everything queued before `mark` been reported on?
    pub fn delivered_before(&self, mark: usize) -> bool {
        let outstanding = outstanding(&self.outstanding);
        outstanding.pending.first().is_none_or(|&n| n >= mark)
    }

    /// Waits until everything queued so far is delivered, up to `timeout`. `false` means
    /// some messages are still in flight (a broker is away): offsets must not be committed.
    pub fn flush(&self, timeout: Duration) -> bool {
        self.producer.flush(timeout).is_ok()
    }

    pub fn in_flight(&self) -> i32 {
        self.producer.in_flight_count()
    }

    fn send(&self, record: BaseRecord<'_, [u8], [u8], usize>) {
        let topic = record.topic;
        if let Err(err) = self.try_send(record) {
            self.refused(topic, &err);
        }
    }

    /// Queues `record` (its opaque says what it [`Carried`]), numbered among the
    /// outstanding messages until its delivery report comes.
    fn try_send(&self, mut record: BaseRecord<'_, [u8], [u8], usize>) -> Result<(), KafkaError> {
        let number = {
            let mut outstanding = outstanding(&self.outstanding);
            let number = outstanding.next;
            outstanding.next += 1;
            // Before it is queued: its report may come at once, on the producer's thread.
            outstanding.pending.insert(number);
            number
        };
        record.delivery_opaque |= number << 1;
        let sent = crate::kafka::send_waiting(&self.producer, record);
        if sent.is_err() {
            outstanding(&self.outstanding).pending.remove(&number);
        }
        sent
    }

    fn refused(&self, topic: &str, err: &KafkaError) {
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
        tracing::error!(topic, error = %err, "cannot queue a message for Kafka; it is lost");
    }
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}
