//! The assigned partitions' messages, taken from librdkafka in batches.
//!
//! rust-rdkafka's `BaseConsumer::poll` hands over one message per call, and each call
//! costs the consuming thread about 0.2 µs besides the message: four clock readings
//! (librdkafka's poll-interval bookkeeping and timeout, and rust-rdkafka's), wrapping the
//! message as an event, and an allocation. A consumer that only reads spent 0.27–0.34 µs
//! per message that way, and 0.08–0.10 µs taking the same messages in batches; in
//! `pipewatch run` the consuming thread's CPU per message went from 1.42–1.68 µs to
//! 1.09–1.32 (`benches/kafka.rs`, 2026-12-07; README, Performance). librdkafka's
//! `rd_kafka_consume_batch_queue` pays that once per batch;
//! rust-rdkafka has no wrapper for it, so this is the one module where pipewatch calls
//! librdkafka itself.
//!
//! How it fits the consumer group: when a partition is assigned, and before librdkafka
//! starts fetching it, its fetch queue is forwarded to a [`MessageQueue`] (`run`'s
//! rebalance callback calls [`Forwarder::forward`]). Its messages then never reach
//! the consumer's own queue, which carries only events (rebalances, statistics, errors,
//! commit answers), still served by `BaseConsumer::poll`. librdkafka ends the
//! forwarding when it stops fetching a partition, and the messages that a revocation
//! left behind in the queue belong to an older version of their partition: librdkafka
//! discards them instead of returning them.

use std::ffi::{c_int, CStr, CString};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, MutexGuard};
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

/// A queue of the consumer's that assigned partitions forward their messages to.
///
/// It belongs to the consumer's librdkafka handle and must be dropped before the
/// consumer is. (Forwarding keeps librdkafka's queue alive until the partitions stop
/// fetching, so dropping it while they fetch is safe: what they deliver then is
/// discarded.)
pub struct MessageQueue {
    queue: NonNull<rd::rd_kafka_queue_t>,
    shared: Arc<Mutex<Option<Target>>>,
}

/// What [`Forwarder`]s forward to: the queue, and the consumer's handle to find
/// partitions' queues by. Gone once the [`MessageQueue`] is dropped.
#[derive(Clone, Copy)]
struct Target {
    queue: NonNull<rd::rd_kafka_queue_t>,
    client: NonNull<rd::rd_kafka_t>,
}

// SAFETY: librdkafka's queues and client handles may be used from any thread.
unsafe impl Send for MessageQueue {}
unsafe impl Sync for MessageQueue {}
unsafe impl Send for Target {}

impl MessageQueue {
    pub fn new<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> MessageQueue {
        let client = NonNull::new(consumer.client().native_ptr())
            .expect("a created consumer has a librdkafka handle");
        // SAFETY: `client` is a live consumer handle; the queue is destroyed in `drop`.
        let queue = unsafe { rd::rd_kafka_queue_new(client.as_ptr()) };
        let queue = NonNull::new(queue).expect("librdkafka allocates queues or aborts");
        MessageQueue {
            queue,
            shared: Arc::new(Mutex::new(Some(Target { queue, client }))),
        }
    }

    /// What the rebalance callback forwards newly assigned partitions with. It may
    /// outlive the queue: it then forwards nothing.
    pub fn forwarder(&self) -> Forwarder {
        Forwarder(Arc::clone(&self.shared))
    }

    /// Empties `batch`, then fills it with the messages waiting, up to its capacity,
    /// waiting up to `timeout` for the first one.
    pub fn take(&self, batch: &mut Batch, timeout: Duration) {
        batch.clear();
        let timeout_ms = c_int::try_from(timeout.as_millis()).unwrap_or(c_int::MAX);
        let room = batch.slots.capacity();
        // SAFETY: the emptied `slots` has room for `room` pointers (a `NonNull` is laid out
        // as a pointer), which librdkafka fills with messages the batch owns until
        // `clear` destroys them.
        let taken = unsafe {
            rd::rd_kafka_consume_batch_queue(
                self.queue.as_ptr(),
                timeout_ms,
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

impl Drop for MessageQueue {
    fn drop(&mut self) {
        lock(&self.shared).take();
        // SAFETY: created in `new`, destroyed once, after forwarders stopped using it;
        // the consumer is still alive (see the type's documentation).
        unsafe { rd::rd_kafka_queue_destroy(self.queue.as_ptr()) };
    }
}

fn lock(target: &Mutex<Option<Target>>) -> MutexGuard<'_, Option<Target>> {
    // Replaced whole, never left half-written.
    target
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Forwards partitions to a [`MessageQueue`] while it exists.
#[derive(Clone)]
pub struct Forwarder(Arc<Mutex<Option<Target>>>);

impl Forwarder {
    /// Sends the messages of `topic`'s `partition` to the queue from now on; false if
    /// the queue is gone or librdkafka has no such partition (its messages then reach
    /// the consumer's own queue, and `BaseConsumer::poll`). Called before the partition
    /// is assigned, so that none of its messages is fetched before.
    pub fn forward(&self, topic: &str, partition: i32) -> bool {
        let Ok(topic) = CString::new(topic) else {
            return false;
        };
        // Held while forwarding, so that the queue cannot go meanwhile.
        let target = lock(&self.0);
        let Some(Target { queue, client }) = *target else {
            return false;
        };
        // SAFETY: the queue exists while the lock holds it, and so does the consumer
        // (see `MessageQueue`). The partition's queue handle is ours, released at once:
        // the forwarding keeps what it needs.
        unsafe {
            let from = rd::rd_kafka_queue_get_partition(client.as_ptr(), topic.as_ptr(), partition);
            if from.is_null() {
                return false;
            }
            rd::rd_kafka_queue_forward(from, queue.as_ptr());
            rd::rd_kafka_queue_destroy(from);
        }
        true
    }
}

/// Messages taken by [`MessageQueue::take`], owned until the next take (or the drop).
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
