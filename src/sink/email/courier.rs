//! The sender task: takes alerts off the queue, groups them, and mails each group when it
//! is due, within the hourly cap, retrying with backoff when the server fails.
//!
//! It keeps taking alerts off the queue while a message is on its way, so a slow SMTP
//! server fills the (bounded) outbox rather than the queue that detection writes to.
//! Every alert accepted by [`super::EmailNotifier::notify`] ends in exactly one counter:
//! sent, replaced by a newer notification of itself, or dropped; until then it is
//! `queued`.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::alert::Alert;

use super::mailer::Mailer;
use super::outbox::{Added, Group, Outbox};
use super::pace::{Backoff, HourlyCap};
use super::route::Router;
use super::{EmailCounters, Throttle};

/// A message the server refuses for good (5xx) this many times is given up: it would be
/// refused for ever (a rejected recipient, a size limit) and hold its alerts' place. Not
/// at once, because some servers answer 5xx for passing trouble too.
const MAX_REFUSALS: u32 = 3;

pub(super) struct Courier {
    pub queue: mpsc::Receiver<Alert>,
    /// False once every sender is gone and the queue is drained.
    pub queue_open: bool,
    /// The deadline of a graceful stop, sent by [`super::EmailNotifier::shutdown`].
    pub stop: oneshot::Receiver<Instant>,
    pub router: Router,
    pub mailer: Mailer,
    pub outbox: Outbox,
    pub cap: HourlyCap,
    pub max_per_hour: u32,
    pub backoff: Backoff,
    pub group_wait: Duration,
    pub timeout: Duration,
    pub counters: Arc<EmailCounters>,
    pub outbox_full_log: Throttle,
}

impl Courier {
    pub async fn run(mut self) {
        while self.queue_open {
            let wake = self.next_wake(Instant::now());
            tokio::select! {
                alert = self.queue.recv() => self.received(alert),
                () = sleep_until(wake) => self.on_due().await,
            }
        }
        // Without a shutdown call (the notifier was dropped), still try for a while.
        let deadline = self
            .stop
            .try_recv()
            .unwrap_or_else(|_| Instant::now() + self.timeout);
        self.flush(deadline).await;
    }

    /// When to look at the outbox next: when its first group may go (due, and the hourly
    /// cap allowing), or sooner when another group falls due while the cap holds
    /// everything back, to note that; never before the backoff ends.
    fn next_wake(&mut self, now: Instant) -> Option<Instant> {
        let wait = self.group_wait;
        let first_due = self.outbox.first()?.opened + wait;
        let send_at = self.cap.next_free(first_due.max(now));
        let note_at = self
            .outbox
            .groups()
            .filter(|g| !g.capped)
            .map(|g| g.opened + wait)
            .min();
        let mut at = note_at.map_or(send_at, |note_at| note_at.min(send_at));
        if let Some(until) = self.backoff.until() {
            at = at.max(until);
        }
        Some(at)
    }

    async fn on_due(&mut self) {
        let now = Instant::now();
        if self.backoff.until().is_some_and(|until| until > now) {
            return;
        }
        let Some(group) = self.outbox.first_mut() else {
            return;
        };
        if group.opened + self.group_wait > now {
            return;
        }
        let free = self.cap.next_free(now);
        if free > now {
            self.note_capped(now, free);
            return;
        }
        self.deliver_first(None).await;
    }

    /// Counts (once each) and logs the groups that are due but held by the hourly cap.
    fn note_capped(&mut self, now: Instant, free: Instant) {
        let mut groups = 0;
        let mut alerts = 0;
        for group in self.outbox.groups_mut() {
            if !group.capped && group.opened + self.group_wait <= now {
                group.capped = true;
                groups += 1;
                alerts += group.alerts.len();
            }
        }
        if groups > 0 {
            self.counters.rate_limited.fetch_add(groups, Relaxed);
            tracing::warn!(
                max_per_hour = self.max_per_hour,
                alerts,
                next_in = %humantime::format_duration(round_up(free - now)),
                "email.max_per_hour reached: these alerts wait, and the next message \
                 allowed to their recipients carries them with any that follow"
            );
        }
    }

    fn received(&mut self, alert: Option<Alert>) {
        let Some(alert) = alert else {
            self.queue_open = false;
            return;
        };
        let recipients = self.router.route(&alert);
        match self.outbox.add(recipients, alert, Instant::now()) {
            Added::Held => {}
            Added::Replaced => {
                self.counters.alerts_replaced.fetch_add(1, Relaxed);
                self.counters.queued.fetch_sub(1, Relaxed);
            }
            Added::Refused => {
                self.counters.alerts_dropped.fetch_add(1, Relaxed);
                self.counters.queued.fetch_sub(1, Relaxed);
                if self.outbox_full_log.ready() {
                    tracing::warn!(
                        max_pending = self.outbox.held(),
                        dropped_total = self.counters.alerts_dropped.load(Relaxed),
                        "email.max_pending alerts are waiting for mail: new alerts are \
                         dropped (and counted) until some are sent; the ones held are kept"
                    );
                }
            }
        }
    }

    /// Sends the group that has waited longest. `deadline` bounds the attempt on a stop.
    async fn deliver_first(&mut self, deadline: Option<Instant>) {
        let Some(group) = self.outbox.take_first() else {
            return;
        };
        if group.attempts > 0 {
            self.counters.retries.fetch_add(1, Relaxed);
        }
        let to = self.router.recipients(group.recipients);
        let message = match self.mailer.message(to, &group.alerts) {
            Ok(message) => message,
            Err(e) => {
                // Addresses are validated at start, so this is a bug, not a condition to
                // retry: retrying would fail the same way.
                tracing::error!(error = %format!("{e:#}"), alerts = group.alerts.len(),
                    "could not build an alert email; its alerts are dropped");
                self.give_up(group);
                return;
            }
        };
        let limit = match deadline {
            Some(d) => self
                .timeout
                .min(d.saturating_duration_since(Instant::now())),
            None => self.timeout,
        };
        let attempt = tokio::time::timeout(limit, self.mailer.send(message));
        tokio::pin!(attempt);
        let result = loop {
            tokio::select! {
                result = &mut attempt => break result,
                alert = self.queue.recv(), if self.queue_open => self.received(alert),
            }
        };
        let now = Instant::now();
        match result {
            Ok(Ok(())) => {
                let n = group.alerts.len() as u64;
                self.cap.record(now);
                self.backoff.succeeded();
                self.counters.messages_sent.fetch_add(1, Relaxed);
                self.counters.alerts_sent.fetch_add(n, Relaxed);
                self.counters.queued.fetch_sub(n, Relaxed);
                tracing::debug!(alerts = n, "alert email sent");
                self.outbox.done(group);
            }
            Ok(Err(e)) => self.failed(group, &e.to_string(), e.is_permanent(), now),
            Err(_elapsed) => {
                let error = format!(
                    "no answer within {} (email.timeout)",
                    humantime::format_duration(limit)
                );
                self.failed(group, &error, false, now)
            }
        }
    }

    fn failed(&mut self, mut group: Group, error: &str, permanent: bool, now: Instant) {
        self.counters.failures.fetch_add(1, Relaxed);
        let wait = self.backoff.failed(now);
        group.attempts += 1;
        group.refusals += u32::from(permanent);
        if group.refusals >= MAX_REFUSALS {
            tracing::error!(
                error,
                alerts = group.alerts.len(),
                attempts = group.attempts,
                "the SMTP server refused this alert email for good {MAX_REFUSALS} times; \
                 its alerts are dropped"
            );
            self.give_up(group);
            return;
        }
        tracing::warn!(
            error,
            alerts = group.alerts.len(),
            attempt = group.attempts,
            retry_in = %humantime::format_duration(wait),
            "sending alert email failed; its alerts are kept for the next attempt"
        );
        let replaced = self.outbox.put_back(group) as u64;
        self.counters.alerts_replaced.fetch_add(replaced, Relaxed);
        self.counters.queued.fetch_sub(replaced, Relaxed);
    }

    fn give_up(&mut self, group: Group) {
        let n = group.alerts.len() as u64;
        self.counters.alerts_dropped.fetch_add(n, Relaxed);
        self.counters.queued.fetch_sub(n, Relaxed);
        self.outbox.done(group);
    }

    /// On stop: everything held goes out now, due or not, regardless of the hourly cap (one message per set of recipients at most, and otherwise these alerts would
    /// be lost with the process), retrying until `deadline`; whatever is left then is
    /// dropped and counted.
    async fn flush(&mut self, deadline: Instant) {
        // One try at once, however long the backoff has grown (up to retry_max_backoff,
        // likely longer than the stop may take); backoff again between later tries.
        self.backoff.succeeded();
        loop {
            let now = Instant::now();
            if self.outbox.first().is_none() || now >= deadline {
                break;
            }
            if let Some(until) = self.backoff.until().filter(|&until| until > now) {
                tokio::time::sleep_until(until.min(deadline).into()).await;
                continue;
            }
            self.deliver_first(Some(deadline)).await;
        }
        let left = self.outbox.clear() as u64;
        if left > 0 {
            self.counters.alerts_dropped.fetch_add(left, Relaxed);
            self.counters.queued.fetch_sub(left, Relaxed);
            tracing::error!(
                alerts = left,
                "stopping with alert email unsent: these alerts are dropped"
            );
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// For log lines: "59m 59s 999ms 812us 3ns" says less than "1h".
fn round_up(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs() + u64::from(d.subsec_nanos() > 0))
}
