//! The assigned partitions' messages, each partition's in a queue of its own, taken from
//! librdkafka in batches.
//!
//! # Why a queue per partition
//! A backlog must be read in event time across partitions, as replay reads it: the
//! data-flow tracker follows runs across stages that live in different partitions, and
//! its clock is the slowest partition's. librdkafka fetches partitions by bytes, not by
//! event time, so from one shared queue a partition with fewer events an hour runs hours
//! ahead of a busier one. The tracker then keeps every run of those hours, runs out of
//! room (`flow.max_runs`), forgets runs still in progress and finds them stuck when their
//! next stage turns up. So each assigned partition keeps its messages in its own queue,
//! and the consume loop takes its next batch from the partition furthest behind in event
//! time that has messages waiting (as a Kafka Streams task picks the partition with the
//! oldest record). A partition ahead is simply not read: its queue fills up to
//! `queued.max.messages.kbytes`, which then applies per partition, and librdkafka stops
//! fetching it until the others catch up. Nothing is paused, so nothing fetched is
//! thrown away and fetched again. A partition behind whose queue runs dry while it has
//! more to fetch holds the others up only briefly, and only once they are far ahead of it
//! (`run`'s `Worker::await_catch_up`); live, or caught up, partitions are read as their
//! messages come.
//!
//! The partitions ahead, their queues full, drop out of librdkafka's fetches meanwhile. A
//! fetch left with only partitions at their end is held by the broker, which is why the
//! consumer sets `fetch.wait.max.ms` low (`source::kafka`; README, Performance, "Held
//! fetches"). With that, in `benches/kafka.rs` the loop waits for messages a few per cent
//! of the time with data-flow tracking on, and 14–25% with it off.
//!
//! # Why batches
//! rust-rdkafka's `BaseConsumer::poll` hands over one message per call, and each call
//! costs the consuming thread about 0.2 µs besides the message: four clock readings
//! (librdkafka's poll-interval bookkeeping and timeout, and rust-rdkafka's), wrapping the
//! message as an event, and an allocation. A consumer that only reads spent 0.27–0.34 µs
//! per message that way, and 0.08–0.10 µs taking the same messages in batches; in
//! `pipewatch run` the consuming thread's CPU per message went from 1.42–1.68 µs to
//! 1.09–1.32 (`benches/kafka.rs`, 2026-12-07; README, Performance). librdkafka's
//! `rd_kafka_consume_batch_queue` pays that once per batch; rust-rdkafka wraps neither it
//! nor partition queues, so this is the one module where pipewatch calls librdkafka
//! itself.
//!
//! # How it fits the consumer group
//! When a partition is assigned, and before librdkafka starts fetching it, `run`'s
//! rebalance callback opens its [`PartitionQueue`]: the partition's fetch queue stops
//! being forwarded to the consumer's own queue, which then carries only events
//! (rebalances, statistics, errors, commit answers), still served by
//! `BaseConsumer::poll`. [`Arrivals`] wakes the loop when a partition's empty queue gets
//! a message. On revocation the queue is closed with its partition's engine; messages a
//! revocation leaves behind belong to an older version of their partition, and
//! librdkafka discards them instead of returning them.

use std::ffi::{c_void, CStr, CString};
use std::ptr::NonNull;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::Message;

/// One message as pipewatch reads it, whichever way it came.
#[derive(Debug, Clone, Copy)]
pub struct Delivered<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
    /// The message's timestamp (the producer's, or the broker's append time), epoch ms.
    pub timestamp_ms: Option<i64>,
}

impl<'a> Delivered<'a> {
    pub fn of(message: &'a BorrowedMessage<'_>) -> Delivered<'a> {
        Delivered {
            topic: message.topic(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key(),
            payload: message.payload().unwrap_or_default(),
            timestamp_ms: message.timestamp().to_millis(),
        }
    }
}

/// Wakes the consume loop when a message reaches a partition queue that was empty.
///
/// A count of those arrivals: the loop reads it before looking at the queues and, if
/// they were all empty, waits for it to move. An arrival between the two is then not
/// missed, for librdkafka calls back on every queue that goes from empty to not.
#[derive(Debug, Default)]
pub struct Arrivals {
    count: Mutex<u64>,
    changed: Condvar,
}

impl Arrivals {
    /// Arrivals so far.
    pub fn seen(&self) -> u64 {
        *lock(&self.count)
    }

    /// Waits until a message arrives after `seen` was read, or `timeout` passes.
    pub fn wait_after(&self, seen: u64, timeout: Duration) {
        let count = lock(&self.count);
        // Timing out is an answer too: the loop has other work every `timeout`.
        let _ = self
            .changed
            .wait_timeout_while(count, timeout, |count| *count == seen);
    }

    fn arrived(&self) {
        *lock(&self.count) += 1;
        self.changed.notify_one();
    }
}

/// librdkafka's call, from its broker thread, when an empty partition queue gets a
/// message. It holds the queue's lock meanwhile, and a [`PartitionQueue`] turns the call
/// off (taking that lock) before it lets go of its [`Arrivals`].
unsafe extern "C" fn on_arrival(_client: *mut rd::rd_kafka_t, arrivals: *mut c_void) {
    // SAFETY: the pointer a `PartitionQueue` registered, to the `Arrivals` it keeps alive
    // until it turns this call off.
    let arrivals = unsafe { &*arrivals.cast_const().cast::<Arrivals>() };
    arrivals.arrived();
}

/// One assigned partition's messages, kept apart from the consumer's queue and from the
/// other partitions' (see the module's documentation).
///
/// It holds a reference to the consumer's librdkafka handle and must be dropped before
/// the consumer is.
pub struct PartitionQueue {
    queue: NonNull<rd::rd_kafka_queue_t>,
    /// Registered with librdkafka, so kept alive as long as the queue is.
    _arrivals: Arc<Arrivals>,
}

// SAFETY: librdkafka's queues may be used from any thread.
unsafe impl Send for PartitionQueue {}

impl PartitionQueue {
    /// Keeps the messages of `topic`'s `partition` in a queue of their own from now on,
    /// and has `arrivals` told when they come. `None` if librdkafka has no such
    /// partition: its messages then reach the consumer's own queue, and
    /// `BaseConsumer::poll`. Opened before the partition is assigned, so that none of its
    /// messages is fetched into the consumer's queue before.
    pub fn open<C: ConsumerContext>(
        consumer: &BaseConsumer<C>,
        topic: &str,
        partition: i32,
        arrivals: &Arc<Arrivals>,
    ) -> Option<PartitionQueue> {
        let topic = CString::new(topic).ok()?;
        let client = consumer.client().native_ptr();
        // SAFETY: `client` is a live consumer handle; the queue reference returned is
        // ours, released in `drop`.
        let queue = unsafe { rd::rd_kafka_queue_get_partition(client, topic.as_ptr(), partition) };
        let queue = NonNull::new(queue)?;
        let arrivals = Arc::clone(arrivals);
        // SAFETY: forwarding to nothing keeps the partition's messages in its queue
        // (librdkafka then leaves the forwarding to the application, and does not forward
        // it to the consumer's queue when it starts fetching). The callback's pointer
        // stays valid while `arrivals` is held, that is until `drop` turns it off.
        unsafe {
            rd::rd_kafka_queue_forward(queue.as_ptr(), std::ptr::null_mut());
            rd::rd_kafka_queue_cb_event_enable(
                queue.as_ptr(),
                Some(on_arrival),
                Arc::as_ptr(&arrivals).cast_mut().cast(),
            );
        }
        Some(PartitionQueue {
            queue,
            _arrivals: arrivals,
        })
    }

    /// Whether messages (or errors in their place) are waiting.
    pub fn is_empty(&self) -> bool {
        // SAFETY: a live queue handle.
        unsafe { rd::rd_kafka_queue_length(self.queue.as_ptr()) == 0 }
    }

    /// Empties `batch`, then fills it with the messages waiting, up to its capacity,
    /// without waiting for any.
    pub fn take(&self, batch: &mut Batch) {
        batch.clear();
        let room = batch.slots.capacity();
        // SAFETY: the emptied `slots` has room for `room` pointers (a `NonNull` is laid out
        // as a pointer), which librdkafka fills with messages the batch owns until
        // `clear` destroys them.
        let taken = unsafe {
            rd::rd_kafka_consume_batch_queue(
                self.queue.as_ptr(),
                0,
                batch.slots.as_mut_ptr().cast(),
                room,
            )
        };
        // Negative only for an invalid queue; none is.
        let taken = usize::try_from(taken).unwrap_or(0).min(room);
        // SAFETY: librdkafka wrote `taken` non-null message pointers.
        unsafe { batch.slots.set_len(taken) };
    }
}

impl Drop for PartitionQueue {
    fn drop(&mut self) {
        // SAFETY: a live queue handle, released once. Turning the callback off takes the
        // queue's lock, which librdkafka holds while calling it: once this returns, no
        // call is running or will run, and `arrivals` may go.
        unsafe {
            rd::rd_kafka_queue_cb_event_enable(self.queue.as_ptr(), None, std::ptr::null_mut());
            rd::rd_kafka_queue_destroy(self.queue.as_ptr());
        }
    }
}

fn lock<T>(value: &Mutex<T>) -> MutexGuard<'_, T> {
    // A counter, never left half-written.
    value
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Messages taken by [`PartitionQueue::take`], owned until the next take (or the drop).
pub struct Batch {
    /// Its capacity is how many a take may bring.
    slots: Vec<NonNull<rd::rd_kafka_message_t>>,
}

// SAFETY: librdkafka's messages may be read and destroyed from any thread.
unsafe impl Send for Batch {}

impl Batch {
    pub fn with_capacity(capacity: usize) -> Batch {
        Batch {
            slots: Vec::with_capacity(capacity.max(1)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The messages, in the order librdkafka delivered them: each a message, or an
    /// error librdkafka reports in a message's place (a partition's fetch failed).
    pub fn iter(&self) -> impl Iterator<Item = Result<Delivered<'_>, KafkaError>> + '_ {
        // Messages of one partition come in runs: its topic's name is read once a run.
        let mut topic: (*const rd::rd_kafka_topic_t, &str) = (std::ptr::null(), "");
        self.slots.iter().map(move |m| {
            // SAFETY: a message librdkafka returned, not destroyed before `clear`; its
            // topic, payload and key live as long as it does.
            let m = unsafe { m.as_ref() };
            if m.err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                return Err(KafkaError::MessageConsumption(m.err.into()));
            }
            if topic.0 != m.rkt.cast_const() {
                // SAFETY: every message holds a reference to its topic, whose name is a
                // NUL-terminated string.
                let name = unsafe { CStr::from_ptr(rd::rd_kafka_topic_name(m.rkt)) };
                topic = (m.rkt.cast_const(), name.to_str().unwrap_or_default());
            }
            // SAFETY: as above; a null payload or key is an absent one.
            let bytes = |ptr: *mut std::ffi::c_void, len: usize| unsafe {
                (!ptr.is_null()).then(|| std::slice::from_raw_parts(ptr.cast::<u8>(), len))
            };
            let mut kind = rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
            // SAFETY: as above.
            let timestamp = unsafe { rd::rd_kafka_message_timestamp(m, &mut kind) };
            Ok(Delivered {
                topic: topic.1,
                partition: m.partition,
                offset: m.offset,
                key: bytes(m.key, m.key_len),
                payload: bytes(m.payload, m.len).unwrap_or_default(),
                timestamp_ms: (timestamp >= 0).then_some(timestamp),
            })
        })
    }

    /// Gives the messages back to librdkafka.
    pub fn clear(&mut self) {
        for m in self.slots.drain(..) {
            // SAFETY: each message is destroyed once, here.
            unsafe { rd::rd_kafka_message_destroy(m.as_ptr()) };
        }
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        self.clear();
    }
}
