//! pipewatch's own metrics, in the Prometheus text format on `GET /metrics`.
//!
//! Names follow Prometheus conventions: a `pipewatch_` prefix, `_total` on counters, base
//! units (`_seconds`). The hot path never touches a metric: the engines keep plain
//! counters, and the drivers mirror them here a few times a second ([`mirror`]); counters
//! kept as atomics by the sinks are mirrored when a scrape comes. Per-stage gauges and
//! the `ALERTS`-style gauge are built from the live state at scrape time (see
//! `crate::api::metrics`), so a stage that leaves leaves no stale series behind.

use std::time::Duration;

use prometheus::{
    Counter, Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::alert::{Alert, AlertStatus};
use crate::decode::Reason;
use crate::engine::Stats;

/// Upper bounds of the processing-latency buckets, in seconds: from a few milliseconds
/// (live, caught up) to an hour (catching up on a backlog).
const LATENCY_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// The `outcome` label values of `pipewatch_events_total`.
const OUTCOMES: [&str; 5] = ["applied", "late", "duplicate", "stage_limit", "invalid"];

pub struct Telemetry {
    registry: Registry,
    pub events: IntCounterVec,
    pub invalid: IntCounterVec,
    pub quality_ignored: IntCounter,
    pub buckets_closed: IntCounter,
    pub stages_created: IntCounter,
    pub stages_evicted: IntCounter,
    pub tracked_stages: IntGauge,
    pub alerts: IntCounterVec,
    pub notifications_silenced: IntCounter,

    pub warmup_events: IntCounter,
    pub commits: IntCounterVec,
    pub consumer_lag: IntGaugeVec,
    pub assigned_partitions: IntGauge,
    pub kafka_up: IntGauge,
    pub kafka_errors: IntCounter,
    pub processing_latency: Histogram,

    pub kafka_alerts_sent: IntCounter,
    pub dead_letters_sent: IntCounter,
    pub dead_letter_payloads_omitted: IntCounter,
    pub kafka_delivery_failures: IntCounter,

    pub email_messages_sent: IntCounter,
    pub email_alerts_sent: IntCounter,
    pub email_send_failures: IntCounter,
    pub email_alerts_dropped: IntCounter,
    pub email_alerts_superseded: IntCounter,
    pub email_rate_limited: IntCounter,
    pub email_queued_alerts: IntGauge,

    pub flow_runs: IntGauge,
    pub flow_runs_forgotten: IntCounterVec,
    pub flow_dropped: IntCounterVec,
    pub flow_wait: Counter,
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("a valid metric name");
    registry
        .register(Box::new(c.clone()))
        .expect("each metric is registered once");
    c
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric name");
    registry
        .register(Box::new(c.clone()))
        .expect("each metric is registered once");
    c
}

fn seconds_counter(registry: &Registry, name: &str, help: &str) -> Counter {
    let c = Counter::new(name, help).expect("a valid metric name");
    registry
        .register(Box::new(c.clone()))
        .expect("each metric is registered once");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("a valid metric name");
    registry
        .register(Box::new(g.clone()))
        .expect("each metric is registered once");
    g
}

/// Raises a counter to `total`, a figure counted elsewhere. Totals only grow, so this
/// keeps the counter's Prometheus semantics.
pub fn mirror(counter: &IntCounter, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}

impl Telemetry {
    pub fn new() -> Telemetry {
        let registry = Registry::new();
        let r = &registry;
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("the process collector is registered once");
        let build = IntGaugeVec::new(
            Opts::new(
                "pipewatch_build_info",
                "pipewatch's version, as a label; always 1",
            ),
            &["version"],
        )
        .expect("a valid metric name");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        registry
            .register(Box::new(build))
            .expect("each metric is registered once");
        let processing_latency = Histogram::with_opts(
            HistogramOpts::new(
                "pipewatch_processing_latency_seconds",
                "Seconds from a message's Kafka timestamp to its processing by pipewatch \
                 (sampled: one message in 64 while messages stream in, every one otherwise)",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("valid histogram options");
        registry
            .register(Box::new(processing_latency.clone()))
            .expect("each metric is registered once");
        let consumer_lag = IntGaugeVec::new(
            Opts::new(
                "pipewatch_consumer_lag_messages",
                "Messages between this instance's position and the end of each assigned \
                 partition (librdkafka statistics)",
            ),
            &["topic", "partition"],
        )
        .expect("a valid metric name");
        registry
            .register(Box::new(consumer_lag.clone()))
            .expect("each metric is registered once");
        let telemetry = Telemetry {
            events: counter_vec(
                r,
                "pipewatch_events_total",
                "Messages by outcome: applied, late (their bucket was closed), duplicate \
                 (event_id seen recently), stage_limit (stages.max_tracked reached), invalid",
                &["outcome"],
            ),
            invalid: counter_vec(
                r,
                "pipewatch_invalid_events_total",
                "Invalid messages by reason (see the event schema)",
                &["reason"],
            ),
            quality_ignored: counter(
                r,
                "pipewatch_quality_figures_ignored_total",
                "Quality figures ignored because their stage tracks \
                 stages.max_quality_metrics already",
            ),
            buckets_closed: counter(
                r,
                "pipewatch_buckets_closed_total",
                "Event-time buckets closed and scored (per partition engine)",
            ),
            stages_created: counter(
                r,
                "pipewatch_stages_created_total",
                "Stages that started being tracked",
            ),
            stages_evicted: counter(
                r,
                "pipewatch_stages_evicted_total",
                "Stages forgotten after stages.idle_timeout without events",
            ),
            tracked_stages: gauge(
                r,
                "pipewatch_tracked_stages",
                "Stages tracked by this instance",
            ),
            alerts: counter_vec(
                r,
                "pipewatch_alerts_total",
                "Alert notifications by kind, severity and status (firing, resolved)",
                &["kind", "severity", "status"],
            ),
            notifications_silenced: counter(
                r,
                "pipewatch_notifications_silenced_total",
                "Firing notifications not emailed because a silence matched them",
            ),
            warmup_events: counter(
                r,
                "pipewatch_warmup_events_total",
                "Messages re-read to rebuild history after an assignment",
            ),
            commits: counter_vec(
                r,
                "pipewatch_offset_commits_total",
                "Consumer offset commits by result (ok, failed)",
                &["result"],
            ),
            consumer_lag,
            assigned_partitions: gauge(
                r,
                "pipewatch_assigned_partitions",
                "Event-topic partitions assigned to this instance",
            ),
            kafka_up: gauge(
                r,
                "pipewatch_kafka_up",
                "1 when a Kafka broker was reachable in the last statistics, else 0",
            ),
            kafka_errors: counter(
                r,
                "pipewatch_kafka_errors_total",
                "Errors reported by the Kafka client: connections (broker down, refused, authentication) and failed fetches",
            ),
            processing_latency,
            kafka_alerts_sent: counter(
                r,
                "pipewatch_kafka_alerts_sent_total",
                "Alert notifications confirmed delivered to kafka.alert_topic",
            ),
            dead_letters_sent: counter(
                r,
                "pipewatch_dead_letters_total",
                "Invalid messages confirmed delivered to kafka.dead_letter_topic",
            ),
            dead_letter_payloads_omitted: counter(
                r,
                "pipewatch_dead_letter_payloads_omitted_total",
                "Dead letters sent without their payload, larger than the producer allows",
            ),
            kafka_delivery_failures: counter(
                r,
                "pipewatch_kafka_delivery_failures_total",
                "Alerts or dead letters the broker refused for good",
            ),
            email_messages_sent: counter(
                r,
                "pipewatch_email_messages_sent_total",
                "Alert emails accepted by the SMTP server",
            ),
            email_alerts_sent: counter(
                r,
                "pipewatch_email_alerts_sent_total",
                "Alert notifications carried by the emails sent (one email may group several)",
            ),
            email_send_failures: counter(
                r,
                "pipewatch_email_send_failures_total",
                "Failed attempts to send an email (each is retried with backoff)",
            ),
            email_alerts_dropped: counter(
                r,
                "pipewatch_email_alerts_dropped_total",
                "Alert notifications never emailed: the queue or the outbox was full, or \
                 the SMTP server refused the message for good",
            ),
            email_alerts_superseded: counter(
                r,
                "pipewatch_email_alerts_superseded_total",
                "Alert notifications replaced, while waiting to be emailed, by a newer one \
                 of the same alert (a resolution replacing its firing)",
            ),
            email_rate_limited: counter(
                r,
                "pipewatch_email_rate_limited_total",
                "Grouped emails held back by email.max_per_hour (sent later as a digest)",
            ),
            email_queued_alerts: gauge(
                r,
                "pipewatch_email_queued_alerts",
                "Alert notifications waiting to be emailed",
            ),
            flow_runs: gauge(
                r,
                "pipewatch_flow_runs",
                "Runs (correlation ids) followed across stages now",
            ),
            flow_runs_forgotten: counter_vec(
                r,
                "pipewatch_flow_runs_forgotten_total",
                "Runs forgotten: capacity (flow.max_runs reached, oldest first) or expired \
                 (flow.run_ttl after their last event)",
                &["reason"],
            ),
            flow_dropped: counter_vec(
                r,
                "pipewatch_flow_dropped_total",
                "What data-flow tracking passed over to stay within its bounds: events of \
                 stages beyond flow.max_stages_per_pipeline, visits that never settled, \
                 deadlines never checked, figures no engine took, figures that came after \
                 their bucket was judged",
                &["what"],
            ),
            flow_wait: seconds_counter(
                r,
                "pipewatch_flow_wait_seconds_total",
                "Time the consume loop waited for the data-flow tracker's thread (its \
                 answers, or room in its queue): a rate near 1 means following runs is \
                 what holds the loop back",
            ),
            registry,
        };
        // Series of known label values exist from the start at 0: a series born at its
        // first increment hides that increment from rate() and increase().
        for reason in Reason::ALL {
            telemetry.invalid.with_label_values(&[reason.as_str()]);
        }
        for outcome in OUTCOMES {
            telemetry.events.with_label_values(&[outcome]);
        }
        for result in ["ok", "failed"] {
            telemetry.commits.with_label_values(&[result]);
        }
        for reason in ["capacity", "expired"] {
            telemetry.flow_runs_forgotten.with_label_values(&[reason]);
        }
        for what in ["stages", "visits", "checks", "figures", "late_figures"] {
            telemetry.flow_dropped.with_label_values(&[what]);
        }
        telemetry
    }

    /// Mirrors an engine's (or several engines') cumulative counters.
    pub fn record_engine(&self, totals: &Stats) {
        let totals_by_outcome = [
            totals.applied,
            totals.late,
            totals.duplicate,
            totals.stage_limit,
            totals.invalid_total(),
        ];
        for (outcome, total) in OUTCOMES.into_iter().zip(totals_by_outcome) {
            mirror(&self.events.with_label_values(&[outcome]), total);
        }
        for reason in Reason::ALL {
            let total = totals.invalid[reason.index()];
            mirror(&self.invalid.with_label_values(&[reason.as_str()]), total);
        }
        mirror(&self.quality_ignored, totals.quality_overflow);
        mirror(&self.buckets_closed, totals.buckets_closed);
        mirror(&self.stages_created, totals.stages_created);
        mirror(&self.stages_evicted, totals.stages_evicted);
    }

    /// Mirrors the data-flow tracker's figures.
    /// `waited`: the engines' time waiting for the tracker's thread, in all.
    pub fn record_flow(&self, flow: &crate::flow::FlowTracker, waited: Duration) {
        let (total, now) = (waited.as_secs_f64(), self.flow_wait.get());
        if total > now {
            self.flow_wait.inc_by(total - now);
        }
        self.flow_runs.set(flow.tracked_runs() as i64);
        let stats = flow.stats();
        mirror(
            &self.flow_runs_forgotten.with_label_values(&["capacity"]),
            stats.runs_evicted,
        );
        mirror(
            &self.flow_runs_forgotten.with_label_values(&["expired"]),
            stats.runs_expired,
        );
        for (what, total) in [
            ("stages", stats.stages_over_limit),
            ("visits", stats.visits_dropped),
            ("checks", stats.checks_dropped),
            ("figures", stats.figures_dropped),
            ("late_figures", stats.figures_late),
        ] {
            mirror(&self.flow_dropped.with_label_values(&[what]), total);
        }
    }

    pub fn record_alert(&self, alert: &Alert) {
        let status = match alert.status {
            AlertStatus::Firing => "firing",
            AlertStatus::Resolved => "resolved",
        };
        self.alerts
            .with_label_values(&[alert.kind, alert.severity, status])
            .inc();
    }

    /// Everything registered, in the text exposition format, followed by `extra`
    /// families built for this scrape.
    pub fn encode(&self, extra: Vec<prometheus::proto::MetricFamily>) -> String {
        let mut families = self.registry.gather();
        families.extend(extra);
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&families, &mut out)
            .expect("encoding metrics into memory cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Default for Telemetry {
    fn default() -> Telemetry {
        Telemetry::new()
    }
}
