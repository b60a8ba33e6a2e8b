//! `pipewatch run`: the service. Events from Kafka in a consumer group, one engine per
//! assigned partition, alerts and dead letters back to Kafka, offsets committed after.
//!
//! # Why one engine per partition
//! Producers key events by `pipeline/stage`, so a stage lives in one partition and the
//! partition is the unit of ownership (as a Kafka Streams task is). Giving each partition
//! its own engine makes a rebalance exact: on revocation the partition's engine is
//! dropped, so this instance stops judging those stages at once; on assignment a new
//! engine starts them, and no stage is ever judged by two instances. It also gives each
//! partition its own event time, so a partition catching up on a backlog cannot close
//! the buckets of a partition that is live, nor the other way round.
//!
//! # History across restarts and rebalances
//! An engine's state is memory only. Kafka keeps the events, so a newly assigned
//! partition is first re-read from `kafka.warmup` before its committed offset ("warm-up"):
//! those events rebuild the baselines and alert states without alerting, dead-lettering
//! or committing (they were handled before). Then processing carries on from the
//! committed offset. With `warmup = "0s"`, or history gone from the topic, the engine
//! starts cold and learns for `detection.training_buckets` before alerting.
//!
//! # Time
//! Event time rules, as in replay. A partition's clock follows the wall clock only while
//! it is caught up (its position at the partition's end, nothing received for a moment)
//! and the broker is reachable, so neither a backlog nor a broker outage looks like
//! silence. Partitions are read in event time too: the next batch comes from the
//! partition furthest behind (see [`crate::source::batch`] for why, and
//! [`Worker::take_next`]).
//!
//! # Delivery
//! At least once: offsets are committed (every `kafka.commit_interval`, on revocation and
//! at stop) only after the sink confirms every alert and dead letter produced so far.
//!
//! Neither wait holds up the consume loop for a periodic commit: later ticks look whether
//! the sink has delivered what the listed offsets' events caused, and the commit is then
//! sent from a thread of its own, one at a time, its answer taken by a later tick.
//! librdkafka waits for a commit's answer without a deadline of ours (for a broker that
//! stops answering, up to `socket.timeout.ms`), and the loop must go on meanwhile,
//! reporting the outage and honouring a stop. A commit on revocation is synchronous: the
//! partitions go once it is answered.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;

use crate::clock::{Clock, SystemClock};
use crate::config::Settings;
use crate::engine::{Engine, FlowMark, Outcome, Outputs, ScoreRows, StageBudget, Stats};
use crate::live::stages::Owner;
use crate::live::{Driver, Live};
use crate::sink::email::EmailNotifier;
use crate::sink::kafka::{KafkaSink, Origin};
use crate::sink::ndjson::NdjsonWriter;
use crate::source::batch::{Arrivals, Batch, Delivered, PartitionQueue};
use crate::source::kafka::{consumer_config, lag, BrokerView};
use crate::telemetry::mirror;

/// How long one poll waits for a message: the loop's reaction time to a stop request.
const POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// Most messages taken from librdkafka at once (see [`crate::source::batch`]): enough
/// that what a take costs is spread thin, few enough that the clock is read often.
const BATCH: usize = 512;
/// How far (in event time) the loop reads a partition ahead of one further behind that
/// has nothing waiting and more to fetch, before it waits for that one (see
/// [`Worker::await_catch_up`]). Reading ahead while that partition's next fetch is on its
/// way keeps the loop busy: in `benches/kafka.rs` (where one fetch of a partition spans
/// about an hour of event time), with a minute or a quarter of an hour the loop waited
/// for messages a fifth to a third of the time, at 0.49–0.65 of the raw rate, against
/// 0.60–0.67 with two hours. Two hours of runs more is little to the data-flow tracker,
/// which keeps runs for `flow.run_ttl` (6 hours) after their last event anyway.
const READ_AHEAD_MS: i64 = 2 * 3_600_000;
/// Longest wait for such a partition's next messages; past it, the others are read on
/// (a partition whose fetches fail must not stop the rest).
const CATCH_UP_WAIT: Duration = Duration::from_millis(500);
/// How often live clocks advance and commits are considered.
const TICK: Duration = Duration::from_millis(250);
/// A caught-up partition follows the wall clock once it has received nothing for this
/// long: a broker's reported end can trail the last batch it serves, and this absorbs it.
const QUIET_MS: i64 = 1000;
/// Messages between two readings of the clocks while messages stream in (a fraction of a
/// millisecond at the rates the loop reaches).
const CLOCK_EVERY: u32 = 64;
/// Longest wait for the sink to confirm deliveries before a commit.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for the broker's answer about committed offsets and timestamps.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
/// At a stop, longest wait for the answer to a periodic commit on its way, the sink's
/// deliveries and the broker's answer to the last commit, all together (at most two
/// thirds of `kafka.shutdown_timeout`, so the stop ends within it). librdkafka waits for
/// a commit's answer without a deadline, and a broker that goes away as the stop begins
/// (Ctrl-C in a terminal running both) may never give one; the offsets since the
/// previous commit are then read again after the restart.
const STOP_WAIT: Duration = Duration::from_secs(20);
/// A periodic commit still unanswered after this long is logged.
const COMMIT_LATE: Duration = Duration::from_secs(10);

#[derive(clap::Args, Debug, Clone, Default)]
pub struct RunArgs {
    /// Also write every alert sent, one JSON object per line, to this file ("-" for
    /// standard output).
    #[arg(long)]
    pub alerts_out: Option<PathBuf>,
    /// Append "topic partition offset" for every message once it is processed, flushed
    /// before each commit: an audit trail that shows no message was skipped.
    #[arg(long)]
    pub offsets_log: Option<PathBuf>,
}

/// Counters of one run, printed when it stops.
#[derive(Debug, Default, Clone)]
pub struct RunCounters {
    pub processed: u64,
    pub applied: u64,
    pub invalid: u64,
    /// Events re-read to rebuild history on assignment (not processed again).
    pub warmup: u64,
    pub commits: u64,
    pub commits_failed: u64,
    pub consumer_errors: u64,
    /// Messages that came one by one through `BaseConsumer::poll` instead of in batches:
    /// from a partition whose queue librdkafka could not give (see
    /// [`crate::source::batch`]).
    /// None in a healthy run.
    pub unbatched: u64,
    pub assigned: u64,
    pub revoked: u64,
}

/// Live figures of a running service, readable from other threads (benchmarks, and the
/// metrics endpoint).
#[derive(Debug, Default)]
pub struct Progress {
    /// Messages processed (warm-up re-reads excluded), as of the last batch done.
    pub processed: AtomicU64,
}

/// One assigned partition and its engine.
struct PartitionTask {
    owner: Owner,
    engine: Engine,
    /// Offset after the last message processed.
    next_offset: Option<i64>,
    committed: Option<i64>,
    /// Messages before this offset are warm-up: applied, nothing emitted.
    warm_until: Option<i64>,
    last_message_ms: i64,
    /// Where its messages wait (see [`crate::source::batch`]); none for a partition whose
    /// queue librdkafka could not give, and once the consume loop ends.
    queue: Option<PartitionQueue>,
    /// Not known to be at its end: behind it in the statistics of the last tick while
    /// connected, not read yet, or no statistics have told its end yet. The last case is
    /// a run's first second, when the loop reads the most: taking "unknown" for "at its
    /// end" there let partitions drift apart.
    more_to_fetch: bool,
    /// Since when the consume loop has waited for this partition's next messages, while
    /// it is behind the others (see [`Worker::await_catch_up`]).
    awaited_since: Option<Instant>,
}

impl PartitionTask {
    fn is(&self, topic: &str, partition: i32) -> bool {
        self.owner.partition == partition && *self.owner.topic == *topic
    }
}

/// What a commit would send, decided before sending it.
enum CommitPlan {
    /// Every processed offset is committed already.
    Nothing,
    /// Not now: what the offsets cover is not all delivered (or logged) yet.
    Held,
    Offsets(Planned),
}

/// Offsets to commit: as librdkafka takes them, and by partition for when the broker
/// confirms them.
struct Planned {
    list: TopicPartitionList,
    next: Vec<(Owner, i64)>,
}

/// Where the periodic commit is. Its offsets wait for what the data-flow tracker found
/// from their events to be passed on, for the alerts and dead letters their events
/// caused to be delivered, then for the broker's answer; no wait holds up the consume
/// loop.
enum PeriodicCommit {
    Idle,
    /// Listed, waiting for the tracker's answers to what each partition's engine had
    /// read by then ([`Engine::flow_mark`]). Once committed, those events are history,
    /// which a restart reads again only to rebuild state: a finding not sent by then
    /// never would be.
    Finding {
        planned: Planned,
        marks: Vec<(Owner, FlowMark)>,
        waiting: Waiting,
    },
    /// Waiting for what the sink had queued by then (`mark`) to be delivered.
    Delivering {
        planned: Planned,
        mark: usize,
        waiting: Waiting,
    },
    /// Sent from a thread of its own ([`send_commit`]).
    Sent(CommitInFlight),
}

struct CommitInFlight {
    answer: Receiver<KafkaResult<()>>,
    thread: JoinHandle<()>,
    next: Vec<(Owner, i64)>,
    waiting: Waiting,
}

/// How long a step of the periodic commit has waited, and whether the log said so.
struct Waiting {
    since: Instant,
    said: bool,
}

impl Waiting {
    fn start() -> Waiting {
        Waiting {
            since: Instant::now(),
            said: false,
        }
    }

    /// True once, when the wait reaches `COMMIT_LATE`: the moment to log it.
    fn now_late(&mut self) -> bool {
        let late = !self.said && self.since.elapsed() >= COMMIT_LATE;
        self.said |= late;
        late
    }
}

/// Everything the consume loop and the rebalance callback share.
struct Worker {
    settings: Settings,
    budget: StageBudget,
    tasks: Vec<PartitionTask>,
    /// Index of the task that took the last message: messages come in runs per partition.
    last_task: usize,
    /// Wakes the consume loop when a partition's queue gets messages.
    arrivals: Arc<Arrivals>,
    sink: KafkaSink,
    out: Outputs,
    alerts_out: Option<NdjsonWriter>,
    offsets_log: Option<BufWriter<File>>,
    clock: SystemClock,
    /// The wall clock as last read; see `CLOCK_EVERY`.
    now_ms: i64,
    counters: RunCounters,
    progress: Arc<Progress>,
    last_commit: Instant,
    /// One periodic commit at a time.
    periodic: PeriodicCommit,
    live: Arc<Live>,
    /// Alert email, when `email.enabled`.
    email: Option<Arc<EmailNotifier>>,
    /// Counters of the engines of partitions no longer assigned.
    retired: Stats,
}

/// The consumer's context: librdkafka calls it from `poll`, on the loop's own thread.
/// Statistics and errors touch only their own fields, never the worker: librdkafka may
/// call them while the worker is busy inside a commit.
struct ServiceContext {
    worker: Mutex<Worker>,
    brokers: Mutex<BrokerView>,
    errors: AtomicU64,
}

impl ServiceContext {
    fn worker(&self) -> MutexGuard<'_, Worker> {
        self.worker
            .lock()
            .expect("the worker is never left mid-update by a panic that is caught")
    }

    fn brokers(&self) -> MutexGuard<'_, BrokerView> {
        self.brokers
            .lock()
            .expect("the broker view is replaced whole, never left half-written")
    }
}

impl ClientContext for ServiceContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        crate::kafka::log(level, facility, message);
    }

    fn stats(&self, statistics: Statistics) {
        *self.brokers() = BrokerView::from_statistics(&statistics, SystemClock.now_ms());
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // librdkafka retries on its own; these say why it has to (broker down, refused
        // connection, authentication) and are repeated while the cause lasts.
        tracing::warn!(error = %error, "kafka: {reason}");
        self.errors.fetch_add(1, Ordering::Relaxed);
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.brokers().connected = false;
        }
    }
}

impl ConsumerContext for ServiceContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        partitions: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let mut worker = self.worker();
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let own_output = worker.assign(consumer, partitions);
                let assigned = if cooperative {
                    consumer.incremental_assign(partitions)
                } else {
                    consumer.assign(partitions)
                };
                match own_output.count() {
                    0 => assigned,
                    _ => assigned.and_then(|()| consumer.pause(&own_output)),
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                worker.revoke(consumer, partitions);
                if cooperative {
                    consumer.incremental_unassign(partitions)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                tracing::error!(error = ?other, "rebalance failed; dropping the assignment");
                let all = partitions.clone();
                worker.revoke(consumer, &all);
                consumer.unassign()
            }
        };
        if let Err(err) = result {
            tracing::error!(error = %err, "cannot apply the rebalance");
        }
    }
}

impl Worker {
    fn new(
        settings: &Settings,
        args: &RunArgs,
        progress: Arc<Progress>,
        outlets: Outlets,
    ) -> anyhow::Result<Worker> {
        let alerts_out = args
            .alerts_out
            .as_ref()
            .map(|p| {
                NdjsonWriter::create(p).with_context(|| format!("cannot create {}", p.display()))
            })
            .transpose()?;
        let offsets_log = args
            .offsets_log
            .as_ref()
            .map(|p| open_offsets_log(p).with_context(|| format!("cannot open {}", p.display())))
            .transpose()?;
        Ok(Worker {
            settings: settings.clone(),
            budget: StageBudget::new(settings.stages.max_tracked),
            tasks: Vec::new(),
            last_task: 0,
            arrivals: Arc::default(),
            sink: KafkaSink::new(&settings.kafka)?,
            out: Outputs::default(),
            alerts_out,
            offsets_log,
            clock: SystemClock,
            now_ms: SystemClock.now_ms(),
            counters: RunCounters::default(),
            progress,
            last_commit: Instant::now(),
            periodic: PeriodicCommit::Idle,
            live: outlets.live,
            email: outlets.email,
            retired: Stats::default(),
        })
    }

    fn task_index(&mut self, topic: &str, partition: i32) -> usize {
        let hit = |t: &PartitionTask| t.is(topic, partition);
        if self.tasks.get(self.last_task).is_some_and(hit) {
            return self.last_task;
        }
        let index = match self.tasks.iter().position(hit) {
            Some(i) => i,
            None => {
                // A message from a partition the rebalance callback did not announce
                // cannot happen with librdkafka; if it did, judging it beats dropping it.
                tracing::warn!(topic, partition, "message from an unannounced partition");
                self.tasks.push(self.new_task(topic, partition));
                self.tasks.len() - 1
            }
        };
        self.last_task = index;
        index
    }

    fn new_task(&self, topic: &str, partition: i32) -> PartitionTask {
        PartitionTask {
            owner: Owner {
                topic: Arc::from(topic),
                partition,
            },
            // Scores feed the live view (API, dashboard, per-stage gauges).
            engine: Engine::with_shared(
                &self.settings,
                ScoreRows::Lead,
                self.budget.clone(),
                self.live.flow.clone(),
            ),
            next_offset: None,
            committed: None,
            warm_until: None,
            last_message_ms: self.clock.now_ms(),
            queue: None,
            more_to_fetch: true,
            awaited_since: None,
        }
    }

    /// An error librdkafka reported to the consume loop: counted and logged (it retries on
    /// its own). A partition's end, which librdkafka reports this way when a user sets
    /// `enable.partition.eof`, is none: the live clock learns of ends from the statistics.
    fn consumer_error(&mut self, err: &KafkaError) {
        let end = matches!(err, KafkaError::PartitionEOF(_))
            || err.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF);
        if end {
            tracing::debug!(error = %err, "partition end");
            return;
        }
        self.counters.consumer_errors += 1;
        tracing::warn!(error = %err, "kafka consumer error");
    }

    /// One message, start to end. `sample_latency`: observe its processing latency.
    fn process(&mut self, message: &Delivered<'_>, sample_latency: bool) {
        let now_ms = self.now_ms;
        let i = self.task_index(message.topic, message.partition);
        let task = &mut self.tasks[i];
        let payload = message.payload;
        let offset = message.offset;
        let outcome = task.engine.ingest(payload, now_ms, &mut self.out);
        task.next_offset = Some(offset + 1);
        task.last_message_ms = now_ms;
        if let Some(end) = task.warm_until {
            if offset < end {
                // Handled before this assignment: only the state it builds is wanted.
                self.restore(i);
                self.counters.warmup += 1;
                if offset + 1 >= end {
                    // And what the data-flow tracker found from it, too.
                    self.flush_flow(i);
                    let task = &mut self.tasks[i];
                    task.warm_until = None;
                    tracing::info!(
                        topic = message.topic,
                        partition = task.owner.partition,
                        stages = task.engine.tracked_stages(),
                        "warm-up done; judging from the committed offset"
                    );
                }
                return;
            }
            // The committed offset's message is gone (compaction, retention): judge on.
            task.warm_until = None;
        }
        self.counters.processed += 1;
        if sample_latency {
            if let Some(ts) = message.timestamp_ms.filter(|&ts| ts > 0) {
                let seconds = (now_ms - ts).max(0) as f64 / 1000.0;
                self.live.telemetry.processing_latency.observe(seconds);
            }
        }
        match &outcome {
            Outcome::Applied => self.counters.applied += 1,
            Outcome::Invalid(rejection) => {
                self.counters.invalid += 1;
                let origin = Origin {
                    topic: message.topic,
                    partition: message.partition,
                    offset,
                    key: message.key,
                };
                self.sink.dead_letter(payload, &origin, rejection);
            }
            _ => {}
        }
        if let Some(log) = self.offsets_log.as_mut() {
            if let Err(err) = writeln!(log, "{} {} {}", message.topic, message.partition, offset) {
                tracing::error!(error = %err, "cannot write the offsets log");
            }
        }
        self.publish(i);
    }

    /// Publishes how many messages are processed: once a batch, rather than with an
    /// atomic add per message.
    fn show_progress(&self) {
        (self.progress.processed).store(self.counters.processed, Ordering::Relaxed);
    }

    /// Takes the next batch, from the partition furthest behind in event time among those
    /// with messages waiting (see [`crate::source::batch`]); false if there is none to
    /// take now. A partition not read yet counts as furthest behind.
    fn take_next(&mut self, batch: &mut Batch) -> bool {
        batch.clear();
        // A queue that looked full may hold only what a revocation left, which taking
        // discards: then the next is tried.
        for _ in 0..self.tasks.len() {
            let Some((i, task)) = (self.tasks.iter().enumerate())
                .filter(|(_, t)| t.queue.as_ref().is_some_and(|q| !q.is_empty()))
                .min_by_key(|(_, t)| t.engine.watermark_ms())
            else {
                return false;
            };
            if self.await_catch_up(task.engine.watermark_ms()) {
                return false;
            }
            if let Some(queue) = &self.tasks[i].queue {
                queue.take(batch);
            }
            if !batch.is_empty() {
                return true;
            }
        }
        false
    }

    /// Whether to wait for a partition further behind, rather than read one at
    /// `watermark_ms`: one more than `READ_AHEAD_MS` behind it, with nothing waiting, and
    /// more to fetch (not known to be at its end), waited for less than
    /// `CATCH_UP_WAIT` since its queue ran dry. On a backlog, the partition furthest behind
    /// runs dry whenever its fetches fall behind the loop, and reading on regardless let
    /// partitions drift hours apart again (`benches/kafka.rs`). A partition known to be at
    /// its end is never waited for, and one whose fetches fail holds the others up only
    /// that long.
    fn await_catch_up(&mut self, watermark_ms: Option<i64>) -> bool {
        let Some(read_at_ms) = watermark_ms else {
            return false;
        };
        let now = Instant::now();
        let mut wait = false;
        for task in &mut self.tasks {
            let behind = task.queue.as_ref().is_some_and(PartitionQueue::is_empty)
                && task.more_to_fetch
                && task.engine.watermark_ms().unwrap_or(i64::MIN) < read_at_ms - READ_AHEAD_MS;
            if behind {
                let since = *task.awaited_since.get_or_insert(now);
                wait |= now.duration_since(since) < CATCH_UP_WAIT;
            } else {
                task.awaited_since = None;
            }
        }
        wait
    }

    /// Lets go of the partitions' queues, which must go before the consumer does.
    fn close_queues(&mut self) {
        for task in &mut self.tasks {
            task.queue = None;
        }
    }

    /// Takes in what task `i`'s engine produced from history it re-read to warm up:
    /// its alerts were sent before, by this instance or another, and are only restored.
    fn restore(&mut self, i: usize) {
        for alert in self.out.alerts.drain(..) {
            self.live.restore_alert(&alert);
        }
        self.live.observe(&mut self.out, Some(&self.tasks[i].owner));
    }

    /// Waits for what the data-flow tracker found from task `i`'s events, and passes it
    /// on (or restores it, while the task warms up).
    fn flush_flow(&mut self, i: usize) {
        self.tasks[i].engine.flush_flow(&mut self.out);
        match self.tasks[i].warm_until {
            Some(_) => self.restore(i),
            None => self.publish(i),
        }
    }

    /// Sends what task `i`'s engine produced, and shows it in the live view.
    fn publish(&mut self, i: usize) {
        if self.out.alerts.is_empty() && self.out.scores.is_empty() && self.out.forgotten.is_empty()
        {
            return;
        }
        for mut alert in self.out.alerts.drain(..) {
            let email = self.live.record_alert(&mut alert);
            tracing::info!(
                status = ?alert.status,
                severity = ?alert.severity,
                fingerprint = %alert.fingerprint,
                "{}",
                alert.summary
            );
            self.sink.alert(&alert);
            if let Some(notifier) = self.email.as_ref().filter(|_| email) {
                notifier.notify(&alert);
            }
            if let Some(file) = self.alerts_out.as_mut() {
                if let Err(err) = file.write(&alert) {
                    tracing::error!(error = %err, "cannot write --alerts-out");
                }
            }
        }
        if let Some(file) = self.alerts_out.as_mut() {
            if let Err(err) = file.flush() {
                tracing::error!(error = %err, "cannot write --alerts-out");
            }
        }
        self.live.observe(&mut self.out, Some(&self.tasks[i].owner));
    }

    /// Periodic work: live clocks, then commits: the answer to the one on its way, or a
    /// new one when it is due.
    fn tick(&mut self, consumer: &Arc<BaseConsumer<ServiceContext>>) {
        let now_ms = self.clock.now_ms();
        self.now_ms = now_ms;
        let brokers = consumer.context().brokers().clone();
        let connected = brokers.connected_at(now_ms);
        if connected {
            for i in 0..self.tasks.len() {
                let task = &mut self.tasks[i];
                // Whether messages remain before the partition's end; none if unknown.
                let remaining = match (
                    task.next_offset,
                    brokers.high_watermark(&task.owner.topic, task.owner.partition),
                ) {
                    (Some(next), Some(high)) => Some(next < high),
                    _ => None,
                };
                task.more_to_fetch = remaining != Some(false);
                if remaining == Some(false)
                    && task.warm_until.is_none()
                    && now_ms - task.last_message_ms >= QUIET_MS
                {
                    task.engine.advance_clock(now_ms, &mut self.out);
                    self.publish(i);
                }
            }
        }
        self.periodic_commit(consumer);
        self.report(consumer, &brokers, connected);
    }

    /// Mirrors the run's figures into the metrics and the readiness report.
    fn report(
        &self,
        consumer: &BaseConsumer<ServiceContext>,
        brokers: &BrokerView,
        connected: bool,
    ) {
        let t = &self.live.telemetry;
        let mut totals = self.retired.clone();
        for task in &self.tasks {
            totals += task.engine.stats();
        }
        t.record_engine(&totals);
        self.live.record_flow();
        t.tracked_stages.set(
            self.tasks
                .iter()
                .map(|t| t.engine.tracked_stages())
                .sum::<usize>() as i64,
        );
        t.assigned_partitions.set(self.tasks.len() as i64);
        t.kafka_up.set(i64::from(connected));
        mirror(
            &t.kafka_errors,
            consumer.context().errors.load(Ordering::Relaxed) + self.counters.consumer_errors,
        );
        mirror(&t.warmup_events, self.counters.warmup);
        mirror(&t.commits.with_label_values(&["ok"]), self.counters.commits);
        mirror(
            &t.commits.with_label_values(&["failed"]),
            self.counters.commits_failed,
        );
        let sink = self.sink.counters();
        mirror(
            &t.kafka_alerts_sent,
            sink.alerts_sent.load(Ordering::Relaxed),
        );
        mirror(
            &t.dead_letters_sent,
            sink.dead_letters_sent.load(Ordering::Relaxed),
        );
        mirror(
            &t.kafka_delivery_failures,
            sink.failed.load(Ordering::Relaxed),
        );
        mirror(
            &t.dead_letter_payloads_omitted,
            sink.payloads_omitted.load(Ordering::Relaxed),
        );
        for task in &self.tasks {
            let (topic, partition) = (&*task.owner.topic, task.owner.partition);
            if let (Some(next), Some(high)) =
                (task.next_offset, brokers.high_watermark(topic, partition))
            {
                t.consumer_lag
                    .with_label_values(&[topic, &partition.to_string()])
                    .set(lag(high, next));
            }
        }
        if let Some(email) = &self.email {
            let e = email.counters().snapshot();
            mirror(&t.email_messages_sent, e.messages_sent);
            mirror(&t.email_alerts_sent, e.alerts_sent);
            mirror(&t.email_send_failures, e.failures);
            mirror(&t.email_alerts_dropped, e.alerts_dropped);
            mirror(&t.email_alerts_superseded, e.alerts_replaced);
            mirror(&t.email_rate_limited, e.rate_limited);
            t.email_queued_alerts.set(e.queued as i64);
        }
        let warming = self.tasks.iter().filter(|t| t.warm_until.is_some()).count();
        self.live
            .set_service_state(connected, self.tasks.len(), warming);
    }

    /// Commits what was processed, once everything it caused is delivered, and waits
    /// for the answer: where the partitions go next (a revocation). A periodic commit
    /// still on its way is waited for first (`FLUSH_TIMEOUT` at most), so that it cannot
    /// land after this one.
    fn commit(&mut self, consumer: &BaseConsumer<ServiceContext>) -> bool {
        self.finish_periodic_commit(FLUSH_TIMEOUT);
        match self.plan_commit(FLUSH_TIMEOUT) {
            CommitPlan::Nothing => true,
            CommitPlan::Held => false,
            CommitPlan::Offsets(planned) => {
                let result = consumer.commit(&planned.list, CommitMode::Sync);
                self.record_commit(Some(result), &planned.next)
            }
        }
    }

    /// The periodic commit, as far as it can go without waiting: the offsets listed when
    /// one is due, sent once the sink has delivered what their events caused, and the
    /// broker's answer taken when it has come.
    fn periodic_commit(&mut self, consumer: &Arc<BaseConsumer<ServiceContext>>) {
        loop {
            match std::mem::replace(&mut self.periodic, PeriodicCommit::Idle) {
                PeriodicCommit::Idle => {
                    if self.last_commit.elapsed() < self.settings.kafka.commit_interval {
                        return;
                    }
                    let CommitPlan::Offsets(planned) = self.list_offsets() else {
                        return;
                    };
                    let marks = (self.tasks.iter_mut())
                        .filter(|t| planned.next.iter().any(|(owner, _)| *owner == t.owner))
                        .map(|t| (t.owner.clone(), t.engine.flow_mark()))
                        .collect();
                    self.periodic = PeriodicCommit::Finding {
                        planned,
                        marks,
                        waiting: Waiting::start(),
                    };
                }
                PeriodicCommit::Finding {
                    planned,
                    mut marks,
                    mut waiting,
                } => {
                    marks.retain(|(owner, mark)| {
                        // A partition revoked since was committed with its revocation.
                        let Some(i) = self.tasks.iter().position(|t| t.owner == *owner) else {
                            return false;
                        };
                        let passed_on = self.tasks[i].engine.flow_passed_on(*mark, &mut self.out);
                        self.publish(i);
                        !passed_on
                    });
                    if !marks.is_empty() {
                        if waiting.now_late() {
                            tracing::warn!(
                                partitions = marks.len(),
                                "the data-flow tracker is behind; offsets stay uncommitted"
                            );
                        }
                        self.periodic = PeriodicCommit::Finding {
                            planned,
                            marks,
                            waiting,
                        };
                        return;
                    }
                    self.periodic = PeriodicCommit::Delivering {
                        planned,
                        mark: self.sink.mark(),
                        waiting: Waiting::start(),
                    };
                }
                PeriodicCommit::Delivering {
                    planned,
                    mark,
                    mut waiting,
                } => {
                    if !self.sink.delivered_before(mark) {
                        if waiting.now_late() {
                            tracing::warn!(
                                in_flight = self.sink.in_flight(),
                                "alerts or dead letters not yet delivered; offsets stay \
                                 uncommitted"
                            );
                        }
                        self.periodic = PeriodicCommit::Delivering {
                            planned,
                            mark,
                            waiting,
                        };
                        return;
                    }
                    let Some((answer, thread)) = send_commit(consumer, planned.list) else {
                        self.record_commit(None, &planned.next);
                        return;
                    };
                    self.periodic = PeriodicCommit::Sent(CommitInFlight {
                        answer,
                        thread,
                        next: planned.next,
                        waiting: Waiting::start(),
                    });
                }
                PeriodicCommit::Sent(mut commit) => {
                    let result = match commit.answer.try_recv() {
                        Ok(result) => Some(result),
                        // Its thread ended without answering.
                        Err(TryRecvError::Disconnected) => None,
                        Err(TryRecvError::Empty) => {
                            if commit.waiting.now_late() {
                                tracing::warn!(
                                    waited = ?commit.waiting.since.elapsed(),
                                    "an offset commit has no answer yet; consuming goes on, \
                                     and the next commit waits for it"
                                );
                            }
                            self.periodic = PeriodicCommit::Sent(commit);
                            return;
                        }
                    };
                    self.end_commit(commit, result);
                    return;
                }
            }
        }
    }

    /// Waits `within` at most for the answer to a periodic commit on its way, if any (one
    /// still waiting for deliveries is dropped: the caller commits with a flush of its
    /// own). False when there is one and the broker did not answer it in time.
    fn finish_periodic_commit(&mut self, within: Duration) -> bool {
        let PeriodicCommit::Sent(commit) =
            std::mem::replace(&mut self.periodic, PeriodicCommit::Idle)
        else {
            return true;
        };
        match commit.answer.recv_timeout(within) {
            Ok(result) => self.end_commit(commit, Some(result)),
            Err(RecvTimeoutError::Disconnected) => self.end_commit(commit, None),
            Err(RecvTimeoutError::Timeout) => {
                tracing::warn!(
                    waited = ?commit.waiting.since.elapsed(),
                    "no answer to the offset commit on its way"
                );
                // A later tick may still take its answer.
                self.periodic = PeriodicCommit::Sent(commit);
                return false;
            }
        }
        true
    }

    fn end_commit(&mut self, commit: CommitInFlight, result: Option<KafkaResult<()>>) {
        // It ends right after answering: joined, its share of the consumer is gone.
        let _ = commit.thread.join();
        self.record_commit(result, &commit.next);
    }

    /// The offsets to commit now: those processed since the last commit, once what the
    /// data-flow tracker found from their events is passed on (see
    /// [`PeriodicCommit::Finding`]) and the alerts and dead letters they caused are
    /// delivered (waiting `flush_timeout` for them).
    fn plan_commit(&mut self, flush_timeout: Duration) -> CommitPlan {
        for i in 0..self.tasks.len() {
            if self.tasks[i].warm_until.is_none() {
                self.flush_flow(i);
            }
        }
        let planned = match self.list_offsets() {
            CommitPlan::Offsets(planned) => planned,
            nothing_or_held => return nothing_or_held,
        };
        if !self.sink.flush(flush_timeout) {
            tracing::warn!(
                in_flight = self.sink.in_flight(),
                "alerts or dead letters not yet delivered; offsets stay uncommitted"
            );
            self.counters.commits_failed += 1;
            return CommitPlan::Held;
        }
        CommitPlan::Offsets(planned)
    }

    /// The offsets processed since the last commit, whatever their events caused (held
    /// if the offsets log cannot be written).
    fn list_offsets(&mut self) -> CommitPlan {
        self.last_commit = Instant::now();
        let mut offsets = TopicPartitionList::new();
        let mut next_offsets = Vec::new();
        for task in &self.tasks {
            if let Some(next) = task.next_offset {
                if task.warm_until.is_none() && task.committed.is_none_or(|c| next > c) {
                    let added = offsets.add_partition_offset(
                        &task.owner.topic,
                        task.owner.partition,
                        Offset::Offset(next),
                    );
                    match added {
                        Ok(()) => next_offsets.push((task.owner.clone(), next)),
                        Err(err) => {
                            tracing::error!(error = %err, "cannot list an offset to commit")
                        }
                    }
                }
            }
        }
        if offsets.count() == 0 {
            return CommitPlan::Nothing;
        }
        if let Some(log) = self.offsets_log.as_mut() {
            if let Err(err) = log.flush() {
                tracing::error!(error = %err, "cannot write the offsets log; not committing");
                return CommitPlan::Held;
            }
        }
        CommitPlan::Offsets(Planned {
            list: offsets,
            next: next_offsets,
        })
    }

    /// The broker's answer to a commit of the `next` offsets of their partitions (none:
    /// no answer in time).
    fn record_commit(&mut self, result: Option<KafkaResult<()>>, next: &[(Owner, i64)]) -> bool {
        match result {
            Some(Ok(())) => {
                tracing::debug!(partitions = next.len(), "committed");
                self.counters.commits += 1;
                for (owner, offset) in next {
                    // Partitions revoked since are gone, with what they committed.
                    if let Some(task) = self.tasks.iter_mut().find(|t| t.owner == *owner) {
                        task.committed = task.committed.max(Some(*offset));
                    }
                }
                true
            }
            Some(Err(err)) => {
                self.counters.commits_failed += 1;
                tracing::warn!(error = %err, "offset commit failed; will retry");
                false
            }
            None => {
                self.counters.commits_failed += 1;
                tracing::warn!("no answer to the offset commit in time");
                false
            }
        }
    }

    /// New partitions: an engine each, and warm-up from history where there is some.
    /// Returns the partitions of pipewatch's own output topics, which a `^regex` in
    /// `kafka.topics` can match: the caller pauses them, for reading them would turn
    /// every dead letter into a new one, for ever.
    fn assign(
        &mut self,
        consumer: &BaseConsumer<ServiceContext>,
        partitions: &mut TopicPartitionList,
    ) -> TopicPartitionList {
        let kafka = &self.settings.kafka;
        let mut own_output = TopicPartitionList::new();
        let mut added = Vec::new();
        for element in partitions.elements() {
            let (topic, partition) = (element.topic(), element.partition());
            if topic == kafka.alert_topic || topic == kafka.dead_letter_topic {
                own_output.add_partition(topic, partition);
            } else if !self.tasks.iter().any(|t| t.is(topic, partition)) {
                added.push((topic.to_string(), partition));
            }
        }
        for (topic, partition) in &added {
            let mut task = self.new_task(topic, *partition);
            // Before the partition is assigned, so that librdkafka fetches none of its
            // messages into the consumer's own queue.
            task.queue = PartitionQueue::open(consumer, topic, *partition, &self.arrivals);
            if task.queue.is_none() {
                tracing::warn!(
                    topic,
                    partition,
                    "no queue of its own for the partition: its messages come one by one"
                );
            }
            self.tasks.push(task);
        }
        self.counters.assigned += added.len() as u64;
        tracing::info!(partitions = ?added, "partitions assigned");
        if own_output.count() > 0 {
            tracing::warn!(
                partitions = own_output.count(),
                "kafka.topics matches pipewatch's own alert or dead-letter topic: not read"
            );
        }
        if !self.settings.kafka.warmup.is_zero() && !added.is_empty() {
            if let Err(err) = self.plan_warmup(consumer, partitions, &added) {
                tracing::warn!(error = %err, "starting without warm-up");
            }
        }
        own_output
    }

    /// Moves each new partition's start back by `kafka.warmup` before its committed
    /// offset, and marks the re-read part as warm-up.
    fn plan_warmup(
        &mut self,
        consumer: &BaseConsumer<ServiceContext>,
        partitions: &mut TopicPartitionList,
        added: &[(String, i32)],
    ) -> Result<(), KafkaError> {
        let committed = consumer.committed_offsets(partitions.clone(), ADMIN_TIMEOUT)?;
        let since = self.clock.now_ms() - self.settings.kafka.warmup.as_millis() as i64;
        let mut at = TopicPartitionList::new();
        for (topic, partition) in added {
            at.add_partition_offset(topic, *partition, Offset::Offset(since))?;
        }
        let starts = consumer.offsets_for_times(at, ADMIN_TIMEOUT)?;
        for (topic, partition) in added {
            let offset_in = |list: &TopicPartitionList| {
                list.find_partition(topic, *partition).map(|e| e.offset())
            };
            let (Some(Offset::Offset(end)), Some(Offset::Offset(start))) =
                (offset_in(&committed), offset_in(&starts))
            else {
                continue;
            };
            if start >= end {
                continue;
            }
            partitions.set_partition_offset(topic, *partition, Offset::Offset(start))?;
            if let Some(task) = self.tasks.iter_mut().find(|t| t.is(topic, *partition)) {
                task.warm_until = Some(end);
                task.committed = Some(end);
            }
            tracing::info!(
                topic,
                partition,
                from = start,
                to = end,
                "warming up from history"
            );
        }
        Ok(())
    }

    /// Partitions taken away: commit what was done with them, then forget their stages.
    fn revoke(&mut self, consumer: &BaseConsumer<ServiceContext>, partitions: &TopicPartitionList) {
        // What the data-flow tracker found from their events goes out before their
        // engines go, even when the assignment was lost: some of it may be about stages
        // of the partitions that stay.
        for i in 0..self.tasks.len() {
            let owner = &self.tasks[i].owner;
            if (partitions.find_partition(&owner.topic, owner.partition)).is_some() {
                self.flush_flow(i);
            }
        }
        if !consumer.assignment_lost() {
            self.commit(consumer);
        }
        // Offsets listed for a periodic commit and not sent yet are listed again later;
        // what they waited for may be gone with the partitions.
        if !matches!(self.periodic, PeriodicCommit::Sent(_)) {
            self.periodic = PeriodicCommit::Idle;
        }
        let before = self.tasks.len();
        let (live, retired) = (&self.live, &mut self.retired);
        self.tasks.retain(|t| {
            let keep = partitions
                .find_partition(&t.owner.topic, t.owner.partition)
                .is_none();
            if !keep {
                *retired += t.engine.stats();
                live.revoke(&t.owner);
                let partition = t.owner.partition.to_string();
                // Absent when no lag was ever reported for it.
                let _ = live
                    .telemetry
                    .consumer_lag
                    .remove_label_values(&[&*t.owner.topic, partition.as_str()]);
            }
            keep
        });
        self.last_task = 0;
        self.counters.revoked += (before - self.tasks.len()) as u64;
        tracing::info!(
            partitions = partitions.count(),
            lost = consumer.assignment_lost(),
            "partitions revoked; their stages are now judged by their new owner"
        );
    }
}

/// Opens the offsets log for appending. A process killed while writing it can leave a
/// torn last line: a newline first keeps that fragment from merging with the next record.
fn open_offsets_log(path: &std::path::Path) -> std::io::Result<BufWriter<File>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?;
    let len = file.metadata()?.len();
    if len > 0 {
        let mut last = [0u8];
        file.seek(SeekFrom::Start(len - 1))?;
        file.read_exact(&mut last)?;
        if last[0] != b'\n' {
            file.write_all(b"\n")?;
        }
    }
    Ok(BufWriter::new(file))
}

/// Where a run's results go besides the Kafka topics.
pub struct Outlets {
    /// The live state behind the API, dashboard and metrics.
    pub live: Arc<Live>,
    pub email: Option<Arc<EmailNotifier>>,
}

/// Consumes until `stop` is set, then stops cleanly: commit, leave the group.
pub fn consume(
    settings: &Settings,
    args: &RunArgs,
    stop: &AtomicBool,
    progress: Arc<Progress>,
    outlets: Outlets,
) -> anyhow::Result<RunCounters> {
    let worker = Worker::new(settings, args, progress, outlets)?;
    let sink_counters = Arc::clone(worker.sink.counters());
    // Shared with the threads that send commits and close it (`send_commit`,
    // `close_within`).
    let consumer: Arc<BaseConsumer<ServiceContext>> = Arc::new(
        consumer_config(&settings.kafka)
            .create_with_context(ServiceContext {
                worker: Mutex::new(worker),
                brokers: Mutex::new(BrokerView::default()),
                errors: AtomicU64::new(0),
            })
            .context("creating the Kafka consumer")?,
    );
    let context = Arc::clone(consumer.context());
    let arrivals = Arc::clone(&context.worker().arrivals);
    let topics: Vec<&str> = settings.kafka.topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .with_context(|| format!("subscribing to {topics:?}"))?;
    tracing::info!(
        brokers = %settings.kafka.brokers,
        group = %settings.kafka.group_id,
        topics = ?topics,
        "consuming"
    );
    let mut batch = Batch::with_capacity(BATCH);
    let mut next_tick = Instant::now() + TICK;
    // A clock reading (about 30 ns on these machines) for every message would cost a few
    // per cent of its work: while messages stream in, the clock is read every
    // `CLOCK_EVERY` messages.
    let mut until_clock = 0u32;
    while !stop.load(Ordering::Relaxed) {
        // Events: rebalances, statistics, errors, commit answers. A message comes this way
        // only from a partition that has no queue of its own.
        let polled = match consumer.poll(Duration::ZERO) {
            Some(Ok(message)) => {
                let mut worker = context.worker();
                worker.now_ms = worker.clock.now_ms();
                worker.counters.unbatched += 1;
                worker.process(&Delivered::of(&message), true);
                worker.show_progress();
                true
            }
            Some(Err(err)) => {
                context.worker().consumer_error(&err);
                false
            }
            None => false,
        };
        // Read before the queues are looked at, so that a message arriving after the
        // look still ends the wait below.
        let seen = arrivals.seen();
        let taken = {
            let mut worker = context.worker();
            let taken = worker.take_next(&mut batch);
            for message in batch.iter() {
                match message {
                    Ok(message) => {
                        if until_clock == 0 {
                            until_clock = CLOCK_EVERY;
                            worker.now_ms = worker.clock.now_ms();
                        }
                        worker.process(&message, until_clock == CLOCK_EVERY);
                        until_clock -= 1;
                    }
                    Err(err) => {
                        worker.consumer_error(&err);
                        until_clock = 0;
                    }
                }
            }
            if taken {
                worker.show_progress();
            }
            taken
        };
        if !taken {
            until_clock = 0;
            // Waiting for messages only when the consumer's own queue had none either:
            // one that brings them one by one is read at full speed too.
            if !polled {
                arrivals.wait_after(seen, POLL_TIMEOUT);
            }
        }
        if Instant::now() >= next_tick {
            context.worker().tick(&consumer);
            next_tick = Instant::now() + TICK;
        }
    }
    // Every message taken was processed (a batch is finished before the stop is looked
    // at); they go back to librdkafka before the consumer is closed.
    drop(batch);
    tracing::info!("stopping: committing processed offsets and leaving the group");
    let stop_began = Instant::now();
    let deadline = stop_began + STOP_WAIT.min(settings.kafka.shutdown_timeout * 2 / 3);
    let left = || deadline.saturating_duration_since(Instant::now());
    // A periodic commit still on its way is answered first, or the last commit waits
    // behind it; without an answer the broker is not answering, and sending another
    // commit would only wait the same way.
    let answered = context.worker().finish_periodic_commit(left());
    let plan = match answered {
        true => context.worker().plan_commit(left()),
        false => CommitPlan::Held,
    };
    let committed = match plan {
        CommitPlan::Nothing => true,
        CommitPlan::Held => false,
        CommitPlan::Offsets(planned) => {
            // Not under the worker's lock: nothing else needs it now, but a commit that
            // gets no answer must not hold it.
            let result = commit_within(&consumer, planned.list, left());
            context.worker().record_commit(result, &planned.next)
        }
    };
    {
        let worker = context.worker();
        let brokers = context.brokers().clone();
        worker.report(&consumer, &brokers, false);
    }
    if !committed {
        tracing::warn!("the last commit failed; events since the previous one will be read again");
    }
    consumer.unsubscribe();
    context.worker().close_queues();
    let mut counters = context.worker().counters.clone();
    counters.consumer_errors += context.errors.load(Ordering::Relaxed);
    // The rest of the stop's share of kafka.shutdown_timeout, less a sixth for what
    // follows, goes to leaving the group. Closing serves the revocation, which takes the
    // worker (and commits, if there is anything left): the worker is not touched after.
    let close_by = stop_began + settings.kafka.shutdown_timeout * 5 / 6;
    close_within(consumer, close_by.saturating_duration_since(Instant::now()));
    tracing::info!(
        alerts_sent = sink_counters.alerts_sent.load(Ordering::Relaxed),
        dead_letters_sent = sink_counters.dead_letters_sent.load(Ordering::Relaxed),
        "stopped"
    );
    Ok(counters)
}

/// Sends a commit of `offsets` from a thread of its own, whose answer comes on the
/// channel returned (with the thread, which ends right after answering); none if the
/// thread cannot start. librdkafka may keep that thread waiting for a long time: a commit
/// with a deadline does not exist in librdkafka, and an asynchronous one reports nothing
/// through rust-rdkafka's `commit_callback` (its issue #856).
fn send_commit(
    consumer: &Arc<BaseConsumer<ServiceContext>>,
    offsets: TopicPartitionList,
) -> Option<(Receiver<KafkaResult<()>>, JoinHandle<()>)> {
    let (answer, answered) = std::sync::mpsc::sync_channel(1);
    let consumer = Arc::clone(consumer);
    let sent = std::thread::Builder::new()
        .name("offset-commit".into())
        .spawn(move || {
            let _ = answer.send(consumer.commit(&offsets, CommitMode::Sync));
        });
    match sent {
        Ok(thread) => Some((answered, thread)),
        Err(err) => {
            tracing::error!(error = %err, "cannot start the thread of an offset commit");
            None
        }
    }
}

/// Drops the consumer, which closes it and so leaves the group, waiting `wait` at most:
/// librdkafka waits for the group coordinator's answer without a deadline of ours, and a
/// broker that stopped answering never gives one. The other members then take over the
/// partitions after the session timeout. (While a commit's thread still holds the
/// consumer, the drop only lets go of it, and the consumer closes when that thread ends.)
fn close_within(consumer: Arc<BaseConsumer<ServiceContext>>, wait: Duration) {
    let (closed, done) = std::sync::mpsc::sync_channel::<()>(1);
    let closing = std::thread::Builder::new()
        .name("consumer-close".into())
        .spawn(move || {
            drop(consumer);
            let _ = closed.send(());
        });
    if let Err(err) = closing {
        tracing::error!(error = %err, "cannot start the thread that closes the consumer");
        return;
    }
    if done.recv_timeout(wait).is_err() {
        tracing::warn!(
            "no answer on leaving the group in time; the other members take over its \
             partitions after the session timeout"
        );
    }
}

/// Commits `offsets` and waits for the broker's answer for `wait` at most (none when it
/// did not come).
fn commit_within(
    consumer: &Arc<BaseConsumer<ServiceContext>>,
    offsets: TopicPartitionList,
    wait: Duration,
) -> Option<KafkaResult<()>> {
    let (answered, thread) = send_commit(consumer, offsets)?;
    let result = answered.recv_timeout(wait).ok()?;
    // Joined, its share of the consumer is gone, and the caller's drop closes the
    // consumer (leaving the group) on the caller's thread.
    let _ = thread.join();
    Some(result)
}

/// `pipewatch run`: consumes on a blocking thread until SIGINT or SIGTERM, then gives it
/// `kafka.shutdown_timeout` to stop cleanly.
pub async fn serve(settings: Settings, args: RunArgs) -> anyhow::Result<RunCounters> {
    let stop = Arc::new(AtomicBool::new(false));
    let timeout = settings.kafka.shutdown_timeout;
    let live = Arc::new(Live::new(&settings, Driver::Service));
    // The HTTP server outlives the consumer, so that metrics and readiness stay
    // readable while it stops.
    let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let (_, http) = crate::api::serve(&settings.http.listen, Arc::clone(&live), async {
        let _ = http_stopped.await;
    })
    .await?;
    let email = match settings.email.enabled {
        true => Some(Arc::new(EmailNotifier::start(
            &settings.email,
            Some(&settings.alerts.dashboard_url),
            &tokio::runtime::Handle::current(),
        )?)),
        false => None,
    };
    let outlets = Outlets {
        live,
        email: email.clone(),
    };
    let mut consumer = tokio::task::spawn_blocking({
        let stop = Arc::clone(&stop);
        move || consume(&settings, &args, &stop, Arc::default(), outlets)
    });
    let result = tokio::select! {
        result = &mut consumer => Some(result),
        signal = stop_requested() => {
            tracing::info!("{signal}: stopping");
            None
        }
    };
    let result = match result {
        Some(result) => result.context("the consumer thread panicked")?,
        None => {
            stop.store(true, Ordering::Relaxed);
            match tokio::time::timeout(timeout, consumer).await {
                Ok(result) => result.context("the consumer thread panicked")?,
                Err(_) => Err(anyhow::anyhow!(
                    "did not stop within kafka.shutdown_timeout ({}); events since the last commit will be read again",
                    humantime::format_duration(timeout)
                )),
            }
        }
    };
    // The consumer thread is done with the notifier: what is still waiting (grouped,
    // or held back by the rate limit) goes out now, within the same bound as the rest.
    if let Some(email) = email.and_then(Arc::into_inner) {
        email.shutdown(timeout).await;
    }
    let _ = http_stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(2), http).await;
    result
}

/// Resolves on SIGINT or SIGTERM, naming it.
pub async fn stop_requested() -> &'static str {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler cannot fail on Unix");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

/// The line printed when `pipewatch run` stops.
pub fn summary(c: &RunCounters) -> String {
    let unbatched = match c.unbatched {
        0 => String::new(),
        n => format!("; {n} messages came one by one, not in batches"),
    };
    format!(
        "run: {} messages processed ({} applied, {} invalid), {} re-read for warm-up; {} commits ({} failed); \
         {} partitions assigned, {} revoked; {} consumer errors{unbatched}",
        c.processed,
        c.applied,
        c.invalid,
        c.warmup,
        c.commits,
        c.commits_failed,
        c.assigned,
        c.revoked,
        c.consumer_errors
    )
}
