//! Events from Kafka: the consumer's configuration, and what its statistics say about the
//! connection and each partition's end.
//!
//! The consume loop itself is in [`crate::run`], because a rebalance must reach the
//! engines it moves: see there. It takes the assigned partitions' messages in batches
//! ([`crate::source::batch`]).

use std::collections::HashMap;

use rdkafka::config::ClientConfig;
use rdkafka::statistics::Statistics;

use crate::config::KafkaSettings;

/// How often librdkafka reports statistics: the freshness of partition ends (for
/// "caught up") and of broker states (for "connected").
pub const STATISTICS_INTERVAL_MS: i64 = 1000;

/// The consumer's configuration: pipewatch's defaults, then `kafka.properties` over them.
pub fn consumer_config(kafka: &KafkaSettings) -> ClientConfig {
    let mut config = crate::kafka::client_config(kafka);
    let defaults = [
        ("group.id", kafka.group_id.as_str()),
        // Offsets are committed by pipewatch, explicitly, once the events before them
        // are applied and their alerts delivered: never by a timer.
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        // A new group reads the backlog: the anomalies in it are still worth knowing,
        // and event time keeps a backlog from looking like silence.
        ("auto.offset.reset", "earliest"),
        // Topics matching a `^regex` subscription are found at the next metadata refresh;
        // librdkafka's 5 minutes would leave a new topic unwatched for that long.
        ("topic.metadata.refresh.interval.ms", "30000"),
        // librdkafka stops fetching a partition while its queue holds
        // `queued.min.messages` or `queued.max.messages.kbytes`, then waits this long
        // before it looks again. With the default of a second, a loop slower than the
        // fetcher drained the queue and sat idle for the rest of that second: on a backlog
        // pipewatch waited for messages about half the time and read 137,000 events/s
        // instead of 206,000 (benches/kafka.rs). Looking again after 10 ms keeps the
        // queue full and costs the fetcher nothing measurable.
        ("fetch.queue.backoff.ms", "10"),
        // Each partition has a queue of its own (`source::batch`), so this bounds each
        // one, not all together as librdkafka's default of 64 MB does for one shared
        // queue. A partition ahead in event time waits there, full, while the others
        // catch up. 8 MB is eight of Apache Kafka's fetches at `max.partition.fetch.bytes`
        // (1 MB), enough that the partition furthest behind does not run dry while its
        // next fetch is on its way. Tansu answers past that limit (about 5.8 MB per
        // partition in `benches/kafka.rs`), so against it the queue holds under two
        // fetches; 16 MB measured no better there (README, Performance).
        ("queued.max.messages.kbytes", "8192"),
        // A fetch leaves out every partition whose queue is full. When all it carries
        // are partitions at their end, the broker holds it until data comes or this long
        // passes, and librdkafka sends that broker no other fetch meanwhile: a partition
        // with a backlog, left out because its queue was full a moment ago, drains and
        // then waits for the held fetch. That happens whenever a backlog is read beside
        // caught-up partitions and the backlog's queues are full as a fetch leaves. With
        // librdkafka's 500 ms, the `kafka` bench stalled 400–500 ms as its last
        // partitions with messages drained past the others' ends (Tansu's fetches
        // otherwise took 10–20 ms); at 100 ms the stall is a fifth as long, and a
        // caught-up consumer asks each broker for news ten times a second, not twice.
        ("fetch.wait.max.ms", "100"),
    ];
    for (name, value) in defaults {
        if !kafka.properties.contains_key(name) {
            config.set(name, value);
        }
    }
    // Always on: the partition ends and broker states it reports drive the live clock.
    config.set("statistics.interval.ms", STATISTICS_INTERVAL_MS.to_string());
    config
}

/// What the latest statistics said.
#[derive(Debug, Default, Clone)]
pub struct BrokerView {
    /// Wall-clock time of the statistics, epoch ms; 0 before any.
    pub at_ms: i64,
    /// Whether any broker connection was up.
    pub connected: bool,
    /// High watermark of each partition the consumer fetches, by (topic, partition).
    pub high_watermarks: HashMap<(String, i32), i64>,
}

impl BrokerView {
    pub fn from_statistics(stats: &Statistics, now_ms: i64) -> BrokerView {
        let connected = stats
            .brokers
            .values()
            .any(|b| b.nodeid >= 0 && b.state == "UP");
        let mut high_watermarks = HashMap::new();
        for (topic, t) in &stats.topics {
            for (&partition, p) in &t.partitions {
                // -1 is "unknown", and the internal partition -1 is librdkafka's own.
                if partition >= 0 && p.hi_offset >= 0 {
                    high_watermarks.insert((topic.clone(), partition), p.hi_offset);
                }
            }
        }
        BrokerView {
            at_ms: now_ms,
            connected,
            high_watermarks,
        }
    }

    /// Connected, by statistics recent enough to trust.
    pub fn connected_at(&self, now_ms: i64) -> bool {
        self.connected && now_ms - self.at_ms <= 3 * STATISTICS_INTERVAL_MS
    }

    pub fn high_watermark(&self, topic: &str, partition: i32) -> Option<i64> {
        self.high_watermarks
            .get(&(topic.to_string(), partition))
            .copied()
    }
}

/// Messages between a consumer's position and the partition's end, as Kafka defines lag.
/// Clamped at zero: a broker may report a high watermark behind what it already served
/// (Tansu reports the base offset of its last batch), and a negative lag means nothing.
pub fn lag(high_watermark: i64, next_offset: i64) -> i64 {
    (high_watermark - next_offset).max(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_never_negative() {
        assert_eq!(lag(100, 40), 60);
        assert_eq!(lag(100, 100), 0);
        assert_eq!(lag(8_942, 9_372), 0);
    }

    #[test]
    fn operator_properties_win_over_defaults() {
        let mut kafka = crate::config::Settings::defaults().kafka;
        kafka
            .properties
            .insert("auto.offset.reset".into(), "latest".into());
        let config = consumer_config(&kafka);
        assert_eq!(config.get("auto.offset.reset"), Some("latest"));
        assert_eq!(config.get("enable.auto.commit"), Some("false"));
        assert_eq!(config.get("group.id"), Some("pipewatch"));
        assert_eq!(config.get("fetch.wait.max.ms"), Some("100"));
    }
}
