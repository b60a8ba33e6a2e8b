//! The alert lifecycle of one (stage, metric, kind): pending → firing → resolved.
//!
//! An alert fires after `for` consecutive anomalous buckets and resolves after
//! `resolve_after` consecutive normal ones; a bucket without a value is not observed.
//! While firing it is notified again only when `repeat_interval` has passed (event time)
//! or when its severity rises, so a long outage is one alert, not one per bucket.

use crate::config::AlertSettings;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

    pub fn from_score(score: f64, critical_score: f64) -> Severity {
        if score.abs() >= critical_score {
            Severity::Critical
        } else {
            Severity::Warning
        }
    }
}

/// What one closed bucket said about the tracked condition. A bucket without a value
/// says nothing and is not observed at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    Anomalous(Severity),
    Normal,
}

/// The lifecycle rules, in buckets and milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub for_buckets: u32,
    pub resolve_after: u32,
    pub repeat_interval_ms: i64,
}

impl Rules {
    pub fn new(settings: &AlertSettings) -> Rules {
        Rules {
            for_buckets: settings.for_buckets,
            resolve_after: settings.resolve_after,
            repeat_interval_ms: settings.repeat_interval.as_millis() as i64,
        }
    }
}

/// A notification the lifecycle asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    Firing {
        started_ms: i64,
        severity: Severity,
    },
    Resolved {
        started_ms: i64,
        ended_ms: i64,
        severity: Severity,
    },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Track {
    #[default]
    Idle,
    Pending {
        anomalous: u32,
    },
    Firing {
        started_ms: i64,
        last_notified_ms: i64,
        severity: Severity,
        normal: u32,
        /// Start of the first bucket of the current normal streak: when it ended.
        normal_since_ms: i64,
    },
}

impl Track {
    /// Feeds one bucket `[start_ms, end_ms)`; returns the notification to send, if any.
    pub fn observe(
        &mut self,
        observation: Observation,
        start_ms: i64,
        end_ms: i64,
        rules: &Rules,
    ) -> Option<Notice> {
        match (*self, observation) {
            (Track::Idle, Observation::Normal) => None,
            (Track::Pending { .. }, Observation::Normal) => {
                *self = Track::Idle;
                None
            }
            (Track::Idle, Observation::Anomalous(severity)) => {
                self.pending(1, severity, end_ms, rules)
            }
            (Track::Pending { anomalous }, Observation::Anomalous(severity)) => {
                self.pending(anomalous + 1, severity, end_ms, rules)
            }
            (
                Track::Firing {
                    started_ms,
                    last_notified_ms,
                    severity: fired,
                    ..
                },
                Observation::Anomalous(severity),
            ) => {
                let escalated = severity > fired;
                let due = end_ms - last_notified_ms >= rules.repeat_interval_ms;
                let notify = escalated || due;
                *self = Track::Firing {
                    started_ms,
                    last_notified_ms: if notify { end_ms } else { last_notified_ms },
                    severity: severity.max(fired),
                    normal: 0,
                    normal_since_ms: 0,
                };
                notify.then_some(Notice::Firing {
                    started_ms,
                    severity: severity.max(fired),
                })
            }
            (
                Track::Firing {
                    started_ms,
                    last_notified_ms,
                    severity,
                    normal,
                    normal_since_ms,
                },
                Observation::Normal,
            ) => {
                // Never before it started: data-flow observations are runs, and a run can
                // end in the bucket whose end the alert started at.
                let normal_since_ms = if normal == 0 {
                    start_ms.max(started_ms)
                } else {
                    normal_since_ms
                };
                if normal + 1 >= rules.resolve_after {
                    *self = Track::Idle;
                    return Some(Notice::Resolved {
                        started_ms,
                        ended_ms: normal_since_ms,
                        severity,
                    });
                }
                *self = Track::Firing {
                    started_ms,
                    last_notified_ms,
                    severity,
                    normal: normal + 1,
                    normal_since_ms,
                };
                None
            }
        }
    }

    fn pending(
        &mut self,
        anomalous: u32,
        severity: Severity,
        end_ms: i64,
        rules: &Rules,
    ) -> Option<Notice> {
        if anomalous >= rules.for_buckets {
            *self = Track::Firing {
                started_ms: end_ms,
                last_notified_ms: end_ms,
                severity,
                normal: 0,
                normal_since_ms: 0,
            };
            Some(Notice::Firing {
                started_ms: end_ms,
                severity,
            })
        } else {
            *self = Track::Pending { anomalous };
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Observation::*;
    use Severity::*;

    const B: i64 = 60_000;

    fn run(rules: Rules, observations: &[Observation]) -> Vec<(usize, Notice)> {
        let mut track = Track::default();
        observations
            .iter()
            .enumerate()
            .filter_map(|(i, &o)| {
                let start = i as i64 * B;
                track.observe(o, start, start + B, &rules).map(|n| (i, n))
            })
            .collect()
    }

    fn rules(for_buckets: u32, resolve_after: u32, repeat_min: i64) -> Rules {
        Rules {
            for_buckets,
            resolve_after,
            repeat_interval_ms: repeat_min * B,
        }
    }

    #[test]
    fn fires_once_then_resolves() {
        let n = run(
            rules(1, 2, 60),
            &[
                Normal,
                Anomalous(Warning),
                Anomalous(Warning),
                Anomalous(Warning),
                Normal,
                Normal,
                Normal,
            ],
        );
        assert_eq!(
            n,
            vec![
                (
                    1,
                    Notice::Firing {
                        started_ms: 2 * B,
                        severity: Warning
                    }
                ),
                (
                    5,
                    Notice::Resolved {
                        started_ms: 2 * B,
                        ended_ms: 4 * B,
                        severity: Warning
                    }
                ),
            ]
        );
    }

    #[test]
    fn for_needs_consecutive_buckets() {
        let n = run(
            rules(3, 1, 60),
            &[
                Anomalous(Warning),
                Anomalous(Warning),
                Normal,
                Anomalous(Warning),
                Anomalous(Warning),
                Anomalous(Warning),
            ],
        );
        assert_eq!(
            n,
            vec![(
                5,
                Notice::Firing {
                    started_ms: 6 * B,
                    severity: Warning
                }
            )]
        );
    }

    #[test]
    fn repeats_only_after_the_interval_and_escalates_at_once() {
        let mut obs = vec![Anomalous(Warning); 12];
        obs[3] = Anomalous(Critical);
        let n = run(rules(1, 1, 5), &obs);
        let at: Vec<usize> = n.iter().map(|(i, _)| *i).collect();
        assert_eq!(at, vec![0, 3, 8], "fire, escalate, repeat 5 buckets later");
        assert!(
            matches!(
                n[2].1,
                Notice::Firing {
                    severity: Critical,
                    ..
                }
            ),
            "severity never drops while firing"
        );
    }

    #[test]
    fn a_normal_bucket_inside_the_resolve_streak_is_reset_by_an_anomaly() {
        let n = run(
            rules(1, 2, 60),
            &[
                Anomalous(Warning),
                Normal,
                Anomalous(Warning),
                Normal,
                Normal,
            ],
        );
        assert_eq!(n.len(), 2);
        assert_eq!(
            n[1],
            (
                4,
                Notice::Resolved {
                    started_ms: B,
                    ended_ms: 3 * B,
                    severity: Warning
                }
            )
        );
    }
}
