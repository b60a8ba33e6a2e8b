//! The data-flow tracker on a thread of its own, beside the engines.
//!
//! Following runs costs more per event than everything else an engine does with the
//! event (a run's state is touched minutes apart in event time, so nearly every touch
//! misses the caches), and none of it is needed to judge the event's own stage. So the
//! tracker runs on its own thread: each engine hands it batches of events
//! ([`Sightings`]) with its watermark ([`FlowLink::report`]), and takes back, in the order
//! it sent them, what the tracker found meanwhile ([`Answer`]): the alerts raised, and the
//! rows of the data-flow metrics it judged for the engine's stages.
//!
//! An engine never waits for the tracker to take in what it has just sent. It waits only
//! where its output depends on an answer: at each tick of its event time (every 15
//! minutes of it), for the answers through the report it sent at the tick before, but
//! never for those of its last 16 reports (`engine::FLOW_SLACK_REPORTS`), so those it
//! waits for have long since come unless the tracker is far behind; at the end of its
//! input, and before a live service commits, for every answer. Where an answer comes out
//! therefore depends on the engine's own events alone, never on how fast the thread ran:
//! a replay gives the same output, in the same order, every time.
//!
//! Memory stays bounded: requests wait in a bounded queue (an engine that outruns the
//! tracker waits to send: back-pressure); an answer gives its batch back as soon as it
//! comes, and waits, small, until the engine applies it: at the first tick that is both
//! past its report's tick and 16 reports on.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{FlowTracker, Sightings};
use crate::engine::Outputs;
use crate::score::ScoreRows;

/// Requests waiting for the tracker's thread, from all engines: enough to keep it busy
/// while engines run ahead, few enough that a slow tracker soon holds them back.
const QUEUED_REQUESTS: usize = 64;

/// The tracker as the engines and the API share it: its state, and the queue of its
/// thread. Clones share both; the thread ends when the last clone is dropped.
#[derive(Clone)]
pub struct SharedFlow {
    tracker: Arc<Mutex<FlowTracker>>,
    requests: SyncSender<Request>,
    /// Nanoseconds the engines spent blocked on the thread (see [`SharedFlow::waited`]).
    waited_ns: Arc<AtomicU64>,
}

enum Request {
    /// A new engine: where the answers to its reports go.
    Join {
        source: usize,
        answers: Sender<Answer>,
    },
    Report {
        source: usize,
        sightings: Sightings,
        /// The engine's event time, when it moved.
        watermark_ms: Option<i64>,
        /// Its input has ended (see [`FlowTracker::finish`]).
        ends: bool,
    },
    /// The engine went away (its partition was revoked), with the events it had not
    /// handed over yet.
    Leave { source: usize, sightings: Sightings },
}

/// What the tracker found for one engine while taking in one of its reports.
pub struct Answer {
    /// The alerts raised meanwhile, whatever stage they are about, and the rows of the
    /// data-flow metrics judged for the engine's stages.
    pub found: Outputs,
    /// The report's batch, emptied: an engine reuses it as soon as the answer comes,
    /// however long the answer then waits to be applied.
    batch: Sightings,
}

/// Emptied batches an engine keeps for its next reports: as many as may be on their
/// way at once in a steady stream, so that handing events over allocates nothing (a
/// batch holds tens of kilobytes).
const SPARE_BATCHES: usize = 8;

impl SharedFlow {
    /// Starts the tracker's thread.
    pub fn start(tracker: FlowTracker) -> std::io::Result<SharedFlow> {
        let tracker = Arc::new(Mutex::new(tracker));
        let (requests, queue) = mpsc::sync_channel(QUEUED_REQUESTS);
        let shared = Arc::clone(&tracker);
        std::thread::Builder::new()
            .name("pw-flow".into())
            .spawn(move || serve(&shared, queue))?;
        Ok(SharedFlow {
            tracker,
            requests,
            waited_ns: Arc::default(),
        })
    }

    /// How long the engines have waited for the tracker's thread, in all: for its
    /// answers at their ticks, or for room in its queue. Reading a backlog, this is the
    /// time the tracker held the consume loop back (`pipewatch_flow_wait_seconds_total`).
    /// In `benches/kafka.rs` (2 cores, the broker on them too) it is none since engines
    /// leave the tracker their last reports (`engine::FLOW_SLACK_REPORTS`); before, it was
    /// about a sixth of the loop's time, mostly the two threads taking turns at ticks.
    pub fn waited(&self) -> Duration {
        Duration::from_nanos(self.waited_ns.load(Ordering::Relaxed))
    }

    /// Runs `wait`, which blocks on the tracker's thread, and counts the time it took.
    fn timed<T>(&self, wait: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let result = wait();
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.waited_ns.fetch_add(nanos, Ordering::Relaxed);
        result
    }

    /// Queues a request, waiting (counted) while the queue is full.
    fn send(&self, request: Request) {
        let ended = match self.requests.try_send(request) {
            Ok(()) => false,
            Err(TrySendError::Full(request)) => self.timed(|| self.requests.send(request)).is_err(),
            Err(TrySendError::Disconnected(_)) => true,
        };
        if ended {
            panic!("the data-flow tracker's thread has ended (it panicked: see above)");
        }
    }

    /// The tracker's state, for reading (API, metrics, tests) or for what must be
    /// answered at once ([`FlowTracker::stage_key`]). Its thread holds the lock while it
    /// takes in a batch.
    pub fn lock(&self) -> MutexGuard<'_, FlowTracker> {
        lock(&self.tracker)
    }

    /// Registers a new engine as a source of events, which reports `score_rows` of the
    /// data-flow metrics of its stages.
    pub fn connect(&self, score_rows: ScoreRows) -> FlowLink {
        let source = self.lock().add_source(score_rows);
        let (answers, receiver) = mpsc::channel();
        self.send(Request::Join { source, answers });
        FlowLink {
            flow: self.clone(),
            source,
            answers: receiver,
            sent: 0,
            received: 0,
            arrived: VecDeque::new(),
            spares: Vec::new(),
            left: false,
        }
    }
}

/// The tracker's thread: takes requests in the order they came until every
/// [`SharedFlow`] is gone.
fn serve(tracker: &Mutex<FlowTracker>, requests: Receiver<Request>) {
    let mut answers: Vec<Option<Sender<Answer>>> = Vec::new();
    while let Some(request) = next(&requests) {
        match request {
            Request::Join {
                source,
                answers: to,
            } => {
                if answers.len() <= source {
                    answers.resize_with(source + 1, || None);
                }
                answers[source] = Some(to);
            }
            Request::Report {
                source,
                mut sightings,
                watermark_ms,
                ends,
            } => {
                let mut found = Outputs::default();
                {
                    let mut tracker = lock(tracker);
                    tracker.observe(source, &mut sightings);
                    if let Some(watermark_ms) = watermark_ms {
                        tracker.advance(source, watermark_ms, &mut found.alerts);
                    }
                    if ends {
                        tracker.finish(source, &mut found.alerts);
                    }
                    tracker.take_rows(source, &mut found.scores);
                }
                let answer = Answer {
                    found,
                    batch: sightings,
                };
                // An engine dropped with answers on their way no longer wants them.
                if let Some(to) = answers.get(source).and_then(Option::as_ref) {
                    let _ = to.send(answer);
                }
            }
            Request::Leave {
                source,
                mut sightings,
            } => {
                let mut tracker = lock(tracker);
                tracker.observe(source, &mut sightings);
                tracker.remove_source(source);
                if let Some(slot) = answers.get_mut(source) {
                    *slot = None;
                }
            }
        }
    }
}

/// How long the thread looks for more work before it sleeps (see [`next`]).
const AWAKE_FOR: Duration = Duration::from_micros(50);

/// The next request; none once every sender is gone. Waking a sleeping thread costs the
/// engine that sends a system call and, on a virtual machine, an interrupt to the other
/// core: about 4 µs measured here. An engine streaming a backlog reports every 512 events
/// or 15 minutes of event time, every few hundred µs, and the thread takes a report in
/// in about half that: it stays awake a little while after each request, yielding its
/// core to whoever needs it, and sleeps only when the engines pause. Measured on `engine`
/// (medians of 11 alternated pairs, when engines reported at every one-minute bucket
/// close): 0.93 of the rate without ids staying awake 50 µs, 0.87 sleeping at once, 0.86
/// staying awake 250 µs (the spinning core slows the engine's).
fn next(requests: &Receiver<Request>) -> Option<Request> {
    let awake_since = Instant::now();
    loop {
        match requests.try_recv() {
            Ok(request) => return Some(request),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) if awake_since.elapsed() < AWAKE_FOR => {
                std::thread::yield_now()
            }
            Err(TryRecvError::Empty) => return requests.recv().ok(),
        }
    }
}

fn lock(tracker: &Mutex<FlowTracker>) -> MutexGuard<'_, FlowTracker> {
    tracker
        .lock()
        .expect("the flow tracker is never left half-updated by a panic that is caught")
}

/// One engine's connection to the tracker's thread.
pub struct FlowLink {
    flow: SharedFlow,
    source: usize,
    answers: Receiver<Answer>,
    /// Reports sent, and answers taken off the channel.
    sent: u64,
    received: u64,
    /// Answers taken off the channel and not applied yet, oldest first; the newest is
    /// the answer to report number `received`.
    arrived: VecDeque<Answer>,
    /// Emptied batches, for the next reports.
    spares: Vec<Sightings>,
    /// Whether the engine said it goes away ([`FlowLink::leave`]).
    left: bool,
}

impl FlowLink {
    pub fn flow(&self) -> &SharedFlow {
        &self.flow
    }

    /// Hands the tracker `sightings` (replaced by an empty batch) and, when given, the
    /// engine's event time; `ends`: the engine's input has ended. Returns the report's
    /// number, by which [`FlowLink::take_through`] waits for its answer.
    pub fn report(
        &mut self,
        sightings: &mut Sightings,
        watermark_ms: Option<i64>,
        ends: bool,
    ) -> u64 {
        let batch = std::mem::replace(sightings, self.spares.pop().unwrap_or_default());
        let source = self.source;
        let report = Request::Report {
            source,
            sightings: batch,
            watermark_ms,
            ends,
        };
        self.flow.send(report);
        self.sent += 1;
        // Answers that came meanwhile give their batches back now: an engine reports
        // every 512 events, and applies answers only every 15 minutes of event time.
        while let Ok(answer) = self.answers.try_recv() {
            self.arrive(answer);
        }
        self.sent
    }

    fn arrive(&mut self, mut answer: Answer) {
        self.received += 1;
        if self.spares.len() < SPARE_BATCHES {
            self.spares.push(std::mem::take(&mut answer.batch));
        }
        answer.batch = Sightings::default();
        self.arrived.push_back(answer);
    }

    /// The answers through report number `report`, oldest first, waiting for those
    /// that have not come yet.
    pub fn take_through(&mut self, report: u64) -> impl Iterator<Item = Answer> + '_ {
        let report = report.min(self.sent);
        while self.received < report {
            let answer = match self.answers.try_recv() {
                Ok(answer) => Ok(answer),
                Err(TryRecvError::Empty) => self.flow.timed(|| self.answers.recv()),
                Err(TryRecvError::Disconnected) => Err(mpsc::RecvError),
            };
            match answer {
                Ok(answer) => self.arrive(answer),
                Err(_) => {
                    panic!("the data-flow tracker's thread has ended (it panicked: see above)")
                }
            }
        }
        let count = (self.arrived.len()).saturating_sub((self.received - report) as usize);
        self.arrived.drain(..count)
    }

    /// How many answers have been taken (the number of the last report they answer).
    pub fn taken(&self) -> u64 {
        self.received - self.arrived.len() as u64
    }

    /// Every answer that has come, without waiting.
    pub fn take_arrived(&mut self) -> impl Iterator<Item = Answer> + '_ {
        while let Ok(answer) = self.answers.try_recv() {
            self.arrive(answer);
        }
        self.arrived.drain(..)
    }

    /// The engine goes away: the tracker takes in `sightings`, the events it had not
    /// handed over, and its clock is held back by this source no more. (Not `send`:
    /// this is called from drops, which must not panic.)
    pub fn leave(&mut self, sightings: Sightings) {
        if !std::mem::replace(&mut self.left, true) {
            let source = self.source;
            let _ = (self.flow.requests).send(Request::Leave { source, sightings });
        }
    }
}

impl Drop for FlowLink {
    /// Without [`FlowLink::leave`] (an engine dropped while unwinding hands over nothing,
    /// for the tracker may be what failed), the source still leaves: it must not hold
    /// back the tracker's clock.
    fn drop(&mut self) {
        self.leave(Sightings::default());
    }
}
