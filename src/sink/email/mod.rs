//! Alert email: one message per group of alerts, to the recipients their route names.
//!
//! ```text
//! notify() ──try_send──▶ queue ──▶ courier task ──▶ outbox ──(due, under the cap)──▶ SMTP
//!  (any thread,          (bounded)  (groups, routes,  (bounded)   retried with backoff
//!   never blocks)                    hourly cap)
//! ```
//!
//! * [`route`]: which recipients an alert goes to (first matching `[[email.routes]]`);
//! * [`outbox`]: alerts waiting, grouped per recipient set, one per fingerprint;
//! * [`pace`]: the hourly cap and the retry backoff;
//! * [`render`]: Subject, plain text and HTML, with everything from events escaped;
//! * [`mailer`]: the lettre transport and the MIME message;
//! * `courier`: the task that ties them together.
//!
//! Detection never waits for mail: [`EmailNotifier::notify`] only tries to queue, and an
//! alert that finds the queue or the outbox full is dropped and counted in
//! [`EmailCounters::alerts_dropped`], with a warning at most every few seconds.

mod courier;
pub mod mailer;
pub mod outbox;
pub mod pace;
pub mod render;
pub mod route;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::alert::Alert;
use crate::config::EmailSettings;

use courier::Courier;
use mailer::Mailer;
use outbox::Outbox;
use pace::{Backoff, HourlyCap};
use route::Router;

/// What the email sink did, shared with whoever reports it (metrics, tests). Every alert
/// accepted by [`EmailNotifier::notify`] ends in exactly one of `alerts_sent`,
/// `alerts_replaced` or `alerts_dropped`; until then it counts in `queued`.
#[derive(Debug, Default)]
pub struct EmailCounters {
    /// Messages the SMTP server accepted.
    pub messages_sent: AtomicU64,
    /// Alerts carried by those messages.
    pub alerts_sent: AtomicU64,
    /// Failed delivery attempts (unreachable, timed out, refused).
    pub failures: AtomicU64,
    /// Attempts that retried a message after a failure.
    pub retries: AtomicU64,
    /// Alerts that will never be sent: queue or outbox full, refused for good, or still
    /// unsent when a stop ran out of time.
    pub alerts_dropped: AtomicU64,
    /// Alerts not sent because a newer notification of the same alert (fingerprint) took
    /// their place while they waited: the resolution of a firing alert, say.
    pub alerts_replaced: AtomicU64,
    /// Groups that were due while `email.max_per_hour` was reached and had to wait.
    pub rate_limited: AtomicU64,
    /// Gauge: alerts accepted and not yet sent, replaced or dropped.
    pub queued: AtomicU64,
}

/// A copy of [`EmailCounters`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmailCounts {
    pub messages_sent: u64,
    pub alerts_sent: u64,
    pub failures: u64,
    pub retries: u64,
    pub alerts_dropped: u64,
    pub alerts_replaced: u64,
    pub rate_limited: u64,
    pub queued: u64,
}

impl EmailCounters {
    pub fn snapshot(&self) -> EmailCounts {
        EmailCounts {
            messages_sent: self.messages_sent.load(Relaxed),
            alerts_sent: self.alerts_sent.load(Relaxed),
            failures: self.failures.load(Relaxed),
            retries: self.retries.load(Relaxed),
            alerts_dropped: self.alerts_dropped.load(Relaxed),
            alerts_replaced: self.alerts_replaced.load(Relaxed),
            rate_limited: self.rate_limited.load(Relaxed),
            queued: self.queued.load(Relaxed),
        }
    }
}

/// The handle the service keeps: queues alerts for the sender task it started.
pub struct EmailNotifier {
    queue: mpsc::Sender<Alert>,
    counters: Arc<EmailCounters>,
    stop: oneshot::Sender<Instant>,
    task: JoinHandle<()>,
    queue_full_log: Throttle,
}

/// Part of a stop's time left to the task after its own deadline, to count what it could
/// not send before it is cut off.
const STOP_MARGIN: Duration = Duration::from_millis(50);

impl EmailNotifier {
    /// Spawns the sender task on `runtime`. `dashboard_url` (`alerts.dashboard_url`) is
    /// linked in every message's footer; each alert links its own stage. Fails on settings
    /// that did not pass validation or a TLS setup that cannot be built. It does not
    /// connect: an unreachable server shows as failures and retries, not here.
    pub fn start(
        settings: &EmailSettings,
        dashboard_url: Option<&str>,
        runtime: &tokio::runtime::Handle,
    ) -> anyhow::Result<EmailNotifier> {
        // Validation asks for recipients only when email is enabled; without any, every
        // alert would be accepted here and dropped there.
        anyhow::ensure!(
            !settings.to.is_empty(),
            "email.to is empty: alert email needs at least one default recipient"
        );
        let counters = Arc::new(EmailCounters::default());
        let (queue, queue_rx) = mpsc::channel(settings.queue_capacity.max(1));
        let (stop, stop_rx) = oneshot::channel();
        let courier = Courier {
            queue: queue_rx,
            queue_open: true,
            stop: stop_rx,
            router: Router::new(settings)?,
            mailer: Mailer::new(settings, dashboard_url)?,
            outbox: Outbox::new(settings.max_pending),
            cap: HourlyCap::new(settings.max_per_hour),
            max_per_hour: settings.max_per_hour,
            backoff: Backoff::new(settings.retry_backoff, settings.retry_max_backoff),
            group_wait: settings.group_wait,
            timeout: settings.timeout,
            counters: Arc::clone(&counters),
            outbox_full_log: Throttle::new(),
        };
        Ok(EmailNotifier {
            queue,
            counters,
            stop,
            task: runtime.spawn(courier.run()),
            queue_full_log: Throttle::new(),
        })
    }

    /// Queues `alert` for mail. Never blocks and needs no runtime context, so the consume
    /// loop can call it from its own thread; a full queue drops the alert and counts it.
    pub fn notify(&self, alert: &Alert) {
        // Counted before it is queued: the task may send it (and subtract) at once.
        self.counters.queued.fetch_add(1, Relaxed);
        let Err(e) = self.queue.try_send(alert.clone()) else {
            return;
        };
        self.counters.queued.fetch_sub(1, Relaxed);
        self.counters.alerts_dropped.fetch_add(1, Relaxed);
        if self.queue_full_log.ready() {
            let dropped_total = self.counters.alerts_dropped.load(Relaxed);
            match e {
                TrySendError::Full(_) => tracing::warn!(
                    dropped_total,
                    "the email queue (email.queue_capacity) is full: alerts are dropped \
                     from email (and counted) until it drains; detection goes on"
                ),
                TrySendError::Closed(_) => tracing::error!(
                    dropped_total,
                    "the email sender task has stopped: alerts are dropped from email"
                ),
            }
        }
    }

    pub fn counters(&self) -> &Arc<EmailCounters> {
        &self.counters
    }

    /// Stops the sender task: what is queued or waiting goes out now (groups not yet due,
    /// and past the hourly cap), retried until `timeout` runs out; whatever is still
    /// unsent then is dropped, counted and logged. Returns within `timeout`, give or take
    /// a few milliseconds.
    pub async fn shutdown(self, timeout: Duration) {
        let EmailNotifier {
            queue,
            counters,
            stop,
            mut task,
            ..
        } = self;
        let started = Instant::now();
        let deadline = started + timeout;
        let _ = stop.send(deadline.checked_sub(STOP_MARGIN).unwrap_or(started));
        // The task drains what is queued, then sees the queue closed and flushes.
        drop(queue);
        match tokio::time::timeout_at(deadline.into(), &mut task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "the email sender task failed"),
            Err(_) => {
                task.abort();
                let _ = task.await;
                let left = counters.queued.swap(0, Relaxed);
                if left > 0 {
                    counters.alerts_dropped.fetch_add(left, Relaxed);
                    tracing::error!(
                        alerts = left,
                        "stopping with alert email unsent: these alerts are dropped"
                    );
                }
            }
        }
    }
}

/// Lets a repeated warning through at most once per [`Throttle::EVERY`], from any thread:
/// a flood of drops must not become a flood of log lines.
pub(crate) struct Throttle {
    epoch: Instant,
    /// Milliseconds after `epoch` from which the next line may go.
    next_ms: AtomicU64,
}

impl Throttle {
    const EVERY: Duration = Duration::from_secs(10);

    fn new() -> Throttle {
        Throttle {
            epoch: Instant::now(),
            next_ms: AtomicU64::new(0),
        }
    }

    fn ready(&self) -> bool {
        let now = self.epoch.elapsed().as_millis() as u64;
        let next = self.next_ms.load(Relaxed);
        now >= next
            && self
                .next_ms
                .compare_exchange(next, now + Self::EVERY.as_millis() as u64, Relaxed, Relaxed)
                .is_ok()
    }
}
