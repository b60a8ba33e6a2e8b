//! `pipewatch simulate`: writes simulated events (and optionally their fault labels) to files or
//! standard output.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};

use crate::config::Settings;

use super::{FaultLabel, FaultPlan, SimOptions, Simulation, TimestampFormat};

/// Which faults `pipewatch simulate` injects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum FaultsChoice {
    /// Organic data only.
    None,
    /// One fault of each kind but `stuck_run` and `slow_hop` (see the label file for where
    /// and when).
    #[default]
    Default,
    /// One `records_lost`, one `stuck_run` and one `slow_hop`, each on its own pipeline: the
    /// faults of data-flow tracking.
    Flow,
}

/// Arguments of `pipewatch simulate`.
#[derive(clap::Args, Debug, Clone)]
pub struct SimulateArgs {
    /// Seed of every random choice: the same arguments give byte-identical output.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,

    /// Start of the simulated period: RFC 3339, `now`, or `now-DURATION` (e.g. `now-2d`).
    #[arg(long, default_value = "2026-11-01T00:00:00Z", value_parser = parse_start)]
    pub start: DateTime<Utc>,

    /// Length of the simulated period, e.g. 6h, 1d, 7d.
    #[arg(long, default_value = "1d", value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// Number of pipelines.
    #[arg(long, default_value_t = 4)]
    pub pipelines: usize,

    /// Fault plan.
    #[arg(long, value_enum, default_value_t = FaultsChoice::Default)]
    pub faults: FaultsChoice,

    /// Place the plan's faults in the first this much of the period, e.g. 2d: with
    /// `--start now-2d --duration 3d --realtime`, two days of history hold every fault and
    /// the live events that carry on from them (the same runs, no seam) hold none.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub faults_within: Option<Duration>,

    /// Deliver each event up to this much later than its timestamp order, e.g. 30s.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub disorder: Duration,

    /// Form of the `timestamp` field.
    #[arg(long, value_enum, default_value_t = TimestampFormat::Rfc3339)]
    pub timestamp_format: TimestampFormat,

    /// Leave `correlation_id` out of events.
    #[arg(long)]
    pub no_correlation_ids: bool,

    /// Where to write the events, one JSON object per line ("-" for standard output).
    #[arg(long, default_value = "-")]
    pub output: PathBuf,

    /// Also write one JSON line per injected fault to this file.
    #[arg(long)]
    pub labels: Option<PathBuf>,

    /// Produce the events to Kafka (`kafka.brokers` of the configuration), keyed by
    /// `pipeline/stage`, instead of writing them to `--output`.
    #[arg(long)]
    pub kafka: bool,

    /// With `--kafka`: the topic (default: the first of `kafka.topics` that is a name).
    #[arg(long, requires = "kafka")]
    pub topic: Option<String>,

    /// With `--kafka`: events per second, at most (0: as fast as the broker takes them).
    #[arg(long, default_value_t = 0.0, requires = "kafka")]
    pub rate: f64,

    /// With `--kafka`: an event stamped in the future is sent only when the wall clock
    /// reaches its time, so `--start now-1d --duration 2d` sends a day of history, then
    /// carries on live.
    #[arg(long, requires = "kafka")]
    pub realtime: bool,
}

impl SimulateArgs {
    /// The simulation options these arguments describe.
    pub fn to_options(&self) -> SimOptions {
        SimOptions {
            seed: self.seed,
            start: self.start,
            duration: self.duration,
            pipelines: self.pipelines,
            faults: match self.faults {
                FaultsChoice::None => FaultPlan::None,
                FaultsChoice::Default => FaultPlan::Default,
                FaultsChoice::Flow => FaultPlan::Flow,
            },
            faults_within: self.faults_within,
            disorder: self.disorder,
            timestamp_format: self.timestamp_format,
            correlation_ids: !self.no_correlation_ids,
        }
    }
}

fn parse_start(s: &str) -> Result<DateTime<Utc>, String> {
    if let Some(rest) = s.strip_prefix("now") {
        let now = Utc::now();
        if rest.is_empty() {
            return Ok(now);
        }
        let ago = rest
            .strip_prefix('-')
            .ok_or("expected now or now-DURATION, e.g. now-2d")?;
        let ago = humantime::parse_duration(ago).map_err(|e| format!("{ago}: {e}"))?;
        let ago = chrono::Duration::from_std(ago).map_err(|e| e.to_string())?;
        return now
            .checked_sub_signed(ago)
            .ok_or_else(|| format!("{s} is before the calendar starts"));
    }
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("not an RFC 3339 time ({e}), e.g. 2026-11-01T00:00:00Z, or now-2d"))
}

/// Runs `pipewatch simulate`: writes the events, then the labels if asked, and prints a one-line
/// summary to standard error.
///
/// # Errors
/// Invalid arguments, or a file that cannot be created or written. A closed standard output
/// (`| head`) is not an error.
pub fn run(args: SimulateArgs, settings: &Settings) -> anyhow::Result<()> {
    let mut sim = Simulation::new(args.to_options())?;
    if args.kafka {
        let topic = match &args.topic {
            Some(t) => t.clone(),
            None => settings
                .kafka
                .topics
                .iter()
                .find(|t| !t.starts_with('^'))
                .cloned()
                .context("no --topic, and kafka.topics has only regexes")?,
        };
        let pace = super::kafka::Pace {
            rate: (args.rate > 0.0).then_some(args.rate),
            realtime: args.realtime,
        };
        // Labels first: a `--realtime` run may take days to finish producing.
        if let Some(path) = &args.labels {
            write_labels(path, &sim.labels())
                .with_context(|| format!("writing {}", path.display()))?;
        }
        let sent = super::kafka::produce(&mut sim, &settings.kafka, &topic, pace)?;
        eprintln!(
            "simulate: {sent} events to Kafka topic {topic} at {}",
            settings.kafka.brokers
        );
        return Ok(());
    }
    let to_stdout = args.output.as_os_str() == "-";
    let written = if to_stdout {
        // A closed pipe (`| head`) is the reader saying it has seen enough, not an error.
        match sim.write_events(io::stdout().lock()) {
            Ok(n) => Some(n),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => None,
            Err(e) => return Err(e).context("writing events to standard output"),
        }
    } else {
        let file = File::create(&args.output)
            .with_context(|| format!("creating {}", args.output.display()))?;
        let n = sim
            .write_events(file)
            .with_context(|| format!("writing events to {}", args.output.display()))?;
        Some(n)
    };
    let labels = sim.labels();
    if let Some(path) = &args.labels {
        write_labels(path, &labels).with_context(|| format!("writing {}", path.display()))?;
    }
    eprintln!("{}", summary(&sim, written, &args, labels.len()));
    Ok(())
}

fn write_labels(path: &Path, labels: &[FaultLabel]) -> anyhow::Result<()> {
    let mut out = BufWriter::new(File::create(path)?);
    for label in labels {
        serde_json::to_writer(&mut out, label)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

fn summary(sim: &Simulation, written: Option<u64>, args: &SimulateArgs, faults: usize) -> String {
    let events = written.map_or_else(
        || "events (output closed early)".to_string(),
        |n| format!("{n} events"),
    );
    let destination = if args.output.as_os_str() == "-" {
        "stdout".to_string()
    } else {
        args.output.display().to_string()
    };
    let labels = args
        .labels
        .as_ref()
        .map_or_else(String::new, |p| format!(", labels in {}", p.display()));
    format!(
        "simulate: {events} to {destination}: {} pipelines, {} stages, from {} for {}, seed {}, {faults} faults{labels}",
        args.pipelines,
        sim.stages().len(),
        args.start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        humantime::format_duration(args.duration),
        args.seed,
    )
}
