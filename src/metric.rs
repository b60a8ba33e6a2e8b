//! The metrics pipewatch derives per stage and bucket (`../shared/schema/event.md`), and the
//! alert kinds they map to.

use std::borrow::Cow;
use std::fmt;

/// Built-in metrics, in the slot order every stage uses; quality figures follow them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    Events,
    Records,
    Bytes,
    ErrorRate,
    FailureRate,
    RejectedRate,
    DurationP95,
}

impl Builtin {
    pub const ALL: [Builtin; 7] = [
        Builtin::Events,
        Builtin::Records,
        Builtin::Bytes,
        Builtin::ErrorRate,
        Builtin::FailureRate,
        Builtin::RejectedRate,
        Builtin::DurationP95,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Builtin::Events => "events",
            Builtin::Records => "records",
            Builtin::Bytes => "bytes",
            Builtin::ErrorRate => "error_rate",
            Builtin::FailureRate => "failure_rate",
            Builtin::RejectedRate => "rejected_rate",
            Builtin::DurationP95 => "duration_p95",
        }
    }

    /// Volume metrics alert as drops and spikes; the others have one kind each.
    pub fn is_throughput(self) -> bool {
        matches!(self, Builtin::Events | Builtin::Records | Builtin::Bytes)
    }
}

/// Slots `0..BUILTIN_SLOTS` are the built-ins; quality figures take the slots after.
pub const BUILTIN_SLOTS: usize = Builtin::ALL.len();

/// A metric of one stage, for naming it in alerts, scores and config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricName<'a> {
    Builtin(Builtin),
    Quality(&'a str),
    /// A data-flow figure: `hop_delay` (milliseconds from the end of the last of the
    /// stage's upstream stages to its start) or `e2e_latency` (milliseconds from a run's
    /// first start to its end at this stage). See `crate::flow`.
    Flow(&'static str),
}

impl MetricName<'_> {
    /// The name as scored buckets carry it: borrowed for the fixed names, built only for
    /// quality figures. A bucket closes for every metric of every stage, so this is on a
    /// hot path whenever scores are kept (always, in `run`).
    pub fn label(&self) -> Cow<'static, str> {
        match self {
            MetricName::Builtin(b) => Cow::Borrowed(b.name()),
            MetricName::Quality(_) => Cow::Owned(self.to_string()),
            MetricName::Flow(name) => Cow::Borrowed(name),
        }
    }
}

impl fmt::Display for MetricName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetricName::Builtin(b) => f.write_str(b.name()),
            MetricName::Quality(q) => write!(f, "quality.{q}"),
            MetricName::Flow(name) => f.write_str(name),
        }
    }
}

/// `kind` of an alert (`../shared/schema/alert.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlertKind {
    ThroughputDrop,
    ThroughputSpike,
    Silence,
    ErrorRate,
    FailureRate,
    RejectedRate,
    Latency,
    Quality,
    /// A downstream stage read fewer records than its upstream stages wrote, in one run.
    DataLoss,
    /// A run reached a stage but not the next one within the hop's learned deadline.
    StuckRun,
    /// A stage failed a run, and no retry succeeded within `flow.stuck_min`.
    FailedRun,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::ThroughputDrop => "throughput_drop",
            AlertKind::ThroughputSpike => "throughput_spike",
            AlertKind::Silence => "silence",
            AlertKind::ErrorRate => "error_rate",
            AlertKind::FailureRate => "failure_rate",
            AlertKind::RejectedRate => "rejected_rate",
            AlertKind::Latency => "latency",
            AlertKind::Quality => "quality",
            AlertKind::DataLoss => "data_loss",
            AlertKind::StuckRun => "stuck_run",
            AlertKind::FailedRun => "failed_run",
        }
    }

    /// The kind an anomaly of `metric` on one side of its band raises.
    pub fn of(metric: MetricName, above: bool) -> AlertKind {
        match metric {
            MetricName::Builtin(b) if b.is_throughput() => {
                if above {
                    AlertKind::ThroughputSpike
                } else {
                    AlertKind::ThroughputDrop
                }
            }
            MetricName::Builtin(Builtin::ErrorRate) => AlertKind::ErrorRate,
            MetricName::Builtin(Builtin::FailureRate) => AlertKind::FailureRate,
            MetricName::Builtin(Builtin::RejectedRate) => AlertKind::RejectedRate,
            MetricName::Builtin(_) => AlertKind::Latency,
            MetricName::Quality(_) => AlertKind::Quality,
            MetricName::Flow(_) => AlertKind::Latency,
        }
    }
}
