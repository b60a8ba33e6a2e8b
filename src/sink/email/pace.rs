//! When the next message may go: the hourly cap, and the backoff after failures. Both
//! are plain state over `Instant`s handed in, so they are tested without waiting.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

const HOUR: Duration = Duration::from_secs(3_600);

/// At most `max` messages in any rolling hour. A sliding window rather than a fixed clock
/// hour or a token bucket: no burst of twice the cap across an hour's boundary, and the
/// rule is the one an operator reads ("never more than N in an hour").
#[derive(Debug)]
pub struct HourlyCap {
    max: usize,
    /// When the messages of the last hour went, oldest first; never more than `max`.
    sent: VecDeque<Instant>,
}

impl HourlyCap {
    pub fn new(max_per_hour: u32) -> HourlyCap {
        let max = max_per_hour.max(1) as usize;
        HourlyCap {
            max,
            sent: VecDeque::with_capacity(max.min(1024)),
        }
    }

    /// The earliest instant, from `now` on, at which one more message is allowed.
    pub fn next_free(&mut self, now: Instant) -> Instant {
        while self.sent.front().is_some_and(|&t| t + HOUR <= now) {
            self.sent.pop_front();
        }
        if self.sent.len() < self.max {
            now
        } else {
            self.sent[0] + HOUR
        }
    }

    pub fn record(&mut self, at: Instant) {
        if self.sent.len() == self.max {
            // only reached by a send past the cap (the final flush): keep the newest
            self.sent.pop_front();
        }
        self.sent.push_back(at);
    }
}

/// Exponential backoff shared by every recipient set: when the server is down it is down
/// for all of them, and one clock keeps pipewatch from knocking once per group.
#[derive(Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    /// The last wait, `None` after a success.
    current: Option<Duration>,
    until: Option<Instant>,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
            current: None,
            until: None,
        }
    }

    /// Records a failed attempt at `now`; returns how long to wait before the next one.
    pub fn failed(&mut self, now: Instant) -> Duration {
        let wait = match self.current {
            None => self.initial,
            Some(last) => last.saturating_mul(2).min(self.max),
        };
        self.current = Some(wait);
        self.until = Some(now + wait);
        wait
    }

    /// Records a success (or forgets the failures): the next attempt may go at once.
    pub fn succeeded(&mut self) {
        self.current = None;
        self.until = None;
    }

    /// No attempt before this (`None`: go ahead).
    pub fn until(&self) -> Option<Instant> {
        self.until
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_allows_max_per_rolling_hour() {
        let t0 = Instant::now();
        let mut cap = HourlyCap::new(2);
        assert_eq!(cap.next_free(t0), t0);
        cap.record(t0);
        let t1 = t0 + Duration::from_secs(600);
        assert_eq!(cap.next_free(t1), t1);
        cap.record(t1);
        let t2 = t0 + Duration::from_secs(1_200);
        assert_eq!(
            cap.next_free(t2),
            t0 + HOUR,
            "full until the oldest is an hour old"
        );
        let t3 = t0 + HOUR;
        assert_eq!(cap.next_free(t3), t3);
        cap.record(t3);
        assert_eq!(cap.next_free(t3), t1 + HOUR);
    }

    #[test]
    fn a_send_past_the_cap_keeps_the_window_bounded() {
        let t0 = Instant::now();
        let mut cap = HourlyCap::new(1);
        cap.record(t0);
        cap.record(t0 + Duration::from_secs(1));
        assert_eq!(cap.sent.len(), 1);
        assert_eq!(
            cap.next_free(t0 + Duration::from_secs(2)),
            t0 + Duration::from_secs(1) + HOUR
        );
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let t = Instant::now();
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(5));
        assert_eq!(b.until(), None);
        let waits: Vec<u64> = (0..5).map(|_| b.failed(t).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 5, 5]);
        assert_eq!(b.until(), Some(t + Duration::from_secs(5)));
        b.succeeded();
        assert_eq!(b.until(), None);
        assert_eq!(b.failed(t), Duration::from_secs(1));
    }
}
