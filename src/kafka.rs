//! What every Kafka client of pipewatch shares: connection settings, and creating topics.
//!
//! The consumer (`source::kafka`), the alert and dead-letter producer (`sink::kafka`) and
//! the simulator's producer all start from [`client_config`], so `kafka.properties` (SASL,
//! TLS, timeouts) reaches every one of them the same way.

use std::time::Duration;

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::ToBytes;
use rdkafka::producer::{BaseRecord, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use crate::config::KafkaSettings;

/// The message key producers use, and pipewatch's own producers set: all events of one
/// stage land in one partition, so one instance owns the stage (see the event schema).
pub fn stage_key(pipeline: &str, stage: &str) -> String {
    format!("{pipeline}/{stage}")
}

/// `bootstrap.servers`, pipewatch's defaults, then `kafka.properties` over them: the
/// operator's word is final.
pub fn client_config(kafka: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.brokers)
        // librdkafka backs off up to 10 s between reconnects by default; after a broker
        // outage that delays catching up for no benefit at pipewatch's connection count.
        .set("reconnect.backoff.max.ms", "1000")
        // Only pipewatch's own properties are logged by librdkafka's `debug` contexts,
        // which stay off unless the operator sets `debug`.
        .set("client.id", "pipewatch");
    for (name, value) in &kafka.properties {
        config.set(name, value);
    }
    config
}

/// librdkafka's log lines, into pipewatch's log. `kafka.properties` go to every client,
/// so each client warns that the others' properties do not apply to it: that warning
/// says nothing to the operator and is kept to debug level.
pub fn log(level: RDKafkaLogLevel, facility: &str, message: &str) {
    let ignored_property = facility == "CONFWARN" && message.contains("will be ignored by this");
    match level {
        _ if ignored_property => tracing::debug!(target: "librdkafka", "{facility} {message}"),
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", "{facility} {message}"),
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", "{facility} {message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", "{facility} {message}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", "{facility} {message}"),
    }
}

/// The context of clients that need nothing but pipewatch's logging (the simulator's
/// producer).
pub struct LoggingContext;

impl ClientContext for LoggingContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        log(level, facility, message);
    }
}

impl ProducerContext for LoggingContext {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: ()) {}
}

/// Queues `record`, waiting out a full local queue: that is backpressure from a broker
/// that cannot keep up (or is away), and dropping the message is not an option. Other
/// errors are returned.
pub fn send_waiting<C, K, P>(
    producer: &ThreadedProducer<C>,
    mut record: BaseRecord<'_, K, P, C::DeliveryOpaque>,
) -> Result<(), KafkaError>
where
    C: ProducerContext,
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err((err, _)) => return Err(err),
        }
    }
}

/// Creates the topics that do not exist yet, with `partitions` each (replication 1: this
/// is for local brokers, tests and the quickstart; production topics are the platform
/// team's business). Existing topics are left as they are.
pub fn create_topics(
    kafka: &KafkaSettings,
    topics: &[&str],
    partitions: i32,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(kafka)
        .create()
        .context("creating a Kafka admin client")?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = block_on(admin.create_topics(&new, &options)).context("creating topics")?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => anyhow::bail!("cannot create topic {topic}: {code}"),
        }
    }
    Ok(())
}

/// Runs an rdkafka admin future to completion on the calling thread. The admin client
/// drives its own background thread, so no async runtime is needed for this one call.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime without I/O always builds");
    runtime.block_on(future)
}
