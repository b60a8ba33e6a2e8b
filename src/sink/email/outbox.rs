//! Alerts waiting to be mailed, grouped by recipients.
//!
//! A group opens with its first alert and collects the others for the same recipients
//! until it goes out (`group_wait` later, or later still under the hourly cap or after a
//! failure). Within a group an alert is kept once, by fingerprint: a newer notification of
//! it replaces the older (the latest state is what a reader needs, and a resolution
//! carries when the alert started and ended). The outbox holds at most `capacity` alerts,
//! counting the group being sent, which is what bounds memory however long the SMTP
//! server stays away.

use std::time::Instant;

use crate::alert::Alert;

use super::route::RecipientSet;

#[derive(Debug)]
pub struct Group {
    pub recipients: RecipientSet,
    pub alerts: Vec<Alert>,
    /// When its first alert arrived; it is due `group_wait` later.
    pub opened: Instant,
    /// Failed attempts to send it so far.
    pub attempts: u32,
    /// Of those, the ones the server refused for good (5xx).
    pub refusals: u32,
    /// Whether its wait for the hourly cap was already counted and logged.
    pub capped: bool,
}

/// What became of an alert handed to [`Outbox::add`].
#[derive(Debug, PartialEq, Eq)]
pub enum Added {
    /// Held, in a new group or an open one.
    Held,
    /// Held in place of an older notification of the same alert, which will not be sent.
    Replaced,
    /// Not held: the outbox is full.
    Refused,
}

#[derive(Debug)]
pub struct Outbox {
    /// Open groups, at most one per recipient set (a handful: one per distinct route).
    groups: Vec<Group>,
    /// Alerts in `groups` plus those taken out and not yet delivered or given up.
    held: usize,
    capacity: usize,
}

impl Outbox {
    pub fn new(capacity: usize) -> Outbox {
        Outbox {
            groups: Vec::new(),
            held: 0,
            capacity: capacity.max(1),
        }
    }

    pub fn add(&mut self, recipients: RecipientSet, alert: Alert, now: Instant) -> Added {
        let open = self.groups.iter().position(|g| g.recipients == recipients);
        if let Some(g) = open {
            let alerts = &mut self.groups[g].alerts;
            if let Some(i) = position(alerts, &alert.fingerprint) {
                alerts[i] = alert;
                return Added::Replaced;
            }
        }
        if self.held >= self.capacity {
            return Added::Refused;
        }
        self.held += 1;
        match open {
            Some(g) => self.groups[g].alerts.push(alert),
            None => self.groups.push(Group {
                recipients,
                alerts: vec![alert],
                opened: now,
                attempts: 0,
                refusals: 0,
                capped: false,
            }),
        }
        Added::Held
    }

    /// The group that has waited longest, which is the next one due.
    pub fn first(&self) -> Option<&Group> {
        self.groups.iter().min_by_key(|g| g.opened)
    }

    pub fn first_mut(&mut self) -> Option<&mut Group> {
        self.groups.iter_mut().min_by_key(|g| g.opened)
    }

    pub fn groups(&self) -> impl Iterator<Item = &Group> {
        self.groups.iter()
    }

    pub fn groups_mut(&mut self) -> impl Iterator<Item = &mut Group> {
        self.groups.iter_mut()
    }

    /// Takes the first group out to send it. Its alerts stay counted as held until
    /// [`Outbox::done`] or [`Outbox::put_back`].
    pub fn take_first(&mut self) -> Option<Group> {
        let i = (0..self.groups.len()).min_by_key(|&i| self.groups[i].opened)?;
        Some(self.groups.swap_remove(i))
    }

    /// A taken group was delivered or given up: its alerts are no longer held.
    pub fn done(&mut self, group: Group) {
        self.held -= group.alerts.len();
    }

    /// A taken group failed and will be tried again. Alerts for the same recipients that
    /// arrived meanwhile join it; where one is a newer notification of an alert in it, the
    /// newer one stays. Returns how many older notifications were replaced that way.
    pub fn put_back(&mut self, mut group: Group) -> usize {
        let Some(newer) = self
            .groups
            .iter_mut()
            .find(|g| g.recipients == group.recipients)
        else {
            self.groups.push(group);
            return 0;
        };
        let before = group.alerts.len();
        group
            .alerts
            .retain(|old| position(&newer.alerts, &old.fingerprint).is_none());
        let replaced = before - group.alerts.len();
        group.alerts.append(&mut newer.alerts);
        *newer = group;
        self.held -= replaced;
        replaced
    }

    /// Empties the outbox; returns how many alerts it held.
    pub fn clear(&mut self) -> usize {
        self.groups.clear();
        std::mem::take(&mut self.held)
    }

    pub fn held(&self) -> usize {
        self.held
    }
}

fn position(alerts: &[Alert], fingerprint: &str) -> Option<usize> {
    alerts.iter().position(|a| a.fingerprint == fingerprint)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::alert::AlertStatus;
    use crate::sink::email::render::tests::alert;

    fn with(fingerprint: &str, status: AlertStatus) -> Alert {
        let mut a = alert();
        a.fingerprint = fingerprint.into();
        a.status = status;
        a
    }

    fn fingerprints(group: &Group) -> Vec<(&str, AlertStatus)> {
        group
            .alerts
            .iter()
            .map(|a| (a.fingerprint.as_str(), a.status))
            .collect()
    }

    #[test]
    fn groups_by_recipients_and_keeps_the_newest_notification() {
        let t = Instant::now();
        let mut out = Outbox::new(10);
        assert_eq!(out.add(0, with("a", AlertStatus::Firing), t), Added::Held);
        let later = t + Duration::from_millis(5);
        assert_eq!(
            out.add(1, with("b", AlertStatus::Firing), later),
            Added::Held
        );
        assert_eq!(
            out.add(0, with("c", AlertStatus::Firing), later),
            Added::Held
        );
        assert_eq!(
            out.add(0, with("a", AlertStatus::Resolved), later),
            Added::Replaced
        );
        assert_eq!(out.held(), 3);
        let first = out.take_first().unwrap();
        assert_eq!(first.recipients, 0);
        assert_eq!(first.opened, t, "a group is due from its first alert");
        assert_eq!(
            fingerprints(&first),
            [("a", AlertStatus::Resolved), ("c", AlertStatus::Firing)]
        );
        out.done(first);
        assert_eq!(out.held(), 1);
        assert_eq!(out.first().unwrap().recipients, 1);
    }

    #[test]
    fn full_outbox_refuses_new_alerts_but_takes_newer_notifications() {
        let t = Instant::now();
        let mut out = Outbox::new(2);
        out.add(0, with("a", AlertStatus::Firing), t);
        out.add(1, with("b", AlertStatus::Firing), t);
        assert_eq!(
            out.add(0, with("c", AlertStatus::Firing), t),
            Added::Refused
        );
        assert_eq!(
            out.add(0, with("a", AlertStatus::Resolved), t),
            Added::Replaced
        );
        assert_eq!(out.held(), 2);
    }

    #[test]
    fn a_failed_group_goes_back_merged_with_what_arrived_meanwhile() {
        let t = Instant::now();
        let mut out = Outbox::new(10);
        out.add(0, with("a", AlertStatus::Firing), t);
        out.add(0, with("b", AlertStatus::Firing), t);
        let mut sending = out.take_first().unwrap();
        let later = t + Duration::from_secs(1);
        // the in-flight group still counts against the bound
        assert_eq!(out.held(), 2);
        out.add(0, with("b", AlertStatus::Resolved), later);
        out.add(0, with("c", AlertStatus::Firing), later);
        assert_eq!(out.held(), 4);
        sending.attempts += 1;
        assert_eq!(out.put_back(sending), 1, "b firing gave way to b resolved");
        assert_eq!(out.held(), 3);
        let group = out.first().unwrap();
        assert_eq!(group.opened, t, "it keeps its place in line");
        assert_eq!(group.attempts, 1);
        assert_eq!(
            fingerprints(group),
            [
                ("a", AlertStatus::Firing),
                ("b", AlertStatus::Resolved),
                ("c", AlertStatus::Firing)
            ]
        );
        assert_eq!(out.clear(), 3);
        assert!(out.first().is_none());
    }
}
