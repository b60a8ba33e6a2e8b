//! The alert book: which alerts are firing now, and the latest notifications, for the
//! API, the `ALERTS`-style gauge and the decision to email a resolution.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::alert::{Alert, AlertStatus};

use super::stages::StageKey;

/// What a notification changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The alert started firing.
    Started,
    /// A firing alert was notified again (repeat interval, or a rise to critical).
    Repeated,
    /// The alert stopped firing.
    Ended,
    /// A resolution of an alert this book did not know (it fired before this instance
    /// owned the stage).
    EndedUnknown,
}

#[derive(Debug, Clone)]
pub struct ActiveAlert {
    pub alert: Arc<Alert>,
    /// A person was told by email that it fires, so they must be told when it ends.
    pub emailed: bool,
}

#[derive(Default)]
struct Book {
    active: HashMap<String, ActiveAlert>,
    recent: VecDeque<Arc<Alert>>,
}

pub struct AlertBook {
    book: Mutex<Book>,
    recent_capacity: usize,
}

impl AlertBook {
    pub fn new(recent_capacity: usize) -> AlertBook {
        AlertBook {
            book: Mutex::new(Book::default()),
            recent_capacity: recent_capacity.max(1),
        }
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        self.book
            .lock()
            .expect("the alert book is never left half-updated")
    }

    /// Records a notification. `may_email`: no silence mutes it. Returns what changed
    /// and whether to email it: a firing one when not muted; a resolution when its
    /// firing was emailed, or is unknown (better one resolution too many than a person
    /// left believing an alert still fires).
    pub fn record(&self, alert: &Alert, may_email: bool) -> (Change, bool) {
        let alert = Arc::new(alert.clone());
        let mut book = self.book();
        let result = match alert.status {
            AlertStatus::Firing => match book.active.get_mut(&alert.fingerprint) {
                Some(active) => {
                    active.alert = Arc::clone(&alert);
                    active.emailed |= may_email;
                    (Change::Repeated, may_email)
                }
                None => {
                    book.active.insert(
                        alert.fingerprint.clone(),
                        ActiveAlert {
                            alert: Arc::clone(&alert),
                            emailed: may_email,
                        },
                    );
                    (Change::Started, may_email)
                }
            },
            AlertStatus::Resolved => match book.active.remove(&alert.fingerprint) {
                Some(active) => (Change::Ended, active.emailed),
                None => (Change::EndedUnknown, may_email),
            },
        };
        self.remember(&mut book, alert);
        result
    }

    /// Records a notification re-derived while warming up from history: it was sent
    /// before, so the alert's state is restored without sending anything again.
    pub fn restore(&self, alert: &Alert) -> Change {
        let (change, _) = self.record(alert, true);
        change
    }

    fn remember(&self, book: &mut Book, alert: Arc<Alert>) {
        if book.recent.len() == self.recent_capacity {
            book.recent.pop_back();
        }
        book.recent.push_front(alert);
    }

    /// Drops the active alerts of stages this instance no longer judges (their new
    /// owner carries them on); they are not resolved.
    pub fn forget_stages(&self, stages: &[StageKey]) {
        if stages.is_empty() {
            return;
        }
        let gone: std::collections::HashSet<(&str, &str)> =
            stages.iter().map(|(p, s)| (&**p, &**s)).collect();
        self.book()
            .active
            .retain(|_, a| !gone.contains(&(a.alert.pipeline.as_str(), a.alert.stage.as_str())));
    }

    /// The firing alerts, most severe and then oldest first.
    pub fn active(&self) -> Vec<ActiveAlert> {
        let mut active: Vec<ActiveAlert> = self.book().active.values().cloned().collect();
        active.sort_by(|a, b| {
            (b.alert.severity == "critical")
                .cmp(&(a.alert.severity == "critical"))
                .then(a.alert.starts_at.cmp(&b.alert.starts_at))
                .then_with(|| a.alert.fingerprint.cmp(&b.alert.fingerprint))
        });
        active
    }

    pub fn active_count(&self) -> usize {
        self.book().active.len()
    }

    /// The latest notifications, newest first.
    pub fn recent(&self) -> Vec<Arc<Alert>> {
        self.book().recent.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metric::AlertKind;

    fn firing() -> Alert {
        crate::alert::test_alert("p", "s", "records", AlertKind::ThroughputDrop)
    }

    fn resolved() -> Alert {
        let mut a = firing();
        a.status = AlertStatus::Resolved;
        a.ends_at = Some(a.starts_at + 60_000);
        a
    }

    #[test]
    fn a_resolution_is_emailed_only_when_its_firing_was() {
        let book = AlertBook::new(10);
        assert_eq!(book.record(&firing(), false), (Change::Started, false));
        assert_eq!(book.active_count(), 1);
        assert_eq!(book.record(&resolved(), true), (Change::Ended, false));

        assert_eq!(book.record(&firing(), false), (Change::Started, false));
        assert_eq!(book.record(&firing(), true), (Change::Repeated, true));
        assert_eq!(book.record(&resolved(), false), (Change::Ended, true));
        assert_eq!(book.active_count(), 0);
        assert_eq!(book.record(&resolved(), true), (Change::EndedUnknown, true));
        assert_eq!(book.recent().len(), 6);
    }

    #[test]
    fn recent_is_bounded_newest_first_and_revoked_stages_leave() {
        let book = AlertBook::new(2);
        book.record(&firing(), true);
        book.record(&resolved(), true);
        book.record(&firing(), true);
        let recent = book.recent();
        assert_eq!(recent.len(), 2);
        assert_eq!(recent[0].status, AlertStatus::Firing);
        book.forget_stages(&[("p".into(), "s".into())]);
        assert!(book.active().is_empty());
    }
}
