//! `pipewatch simulate`: writes simulated events (and optionally their fault labels) to files or
//! standard output.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};

use super::{FaultLabel, FaultPlan, SimOptions, Simulation, TimestampFormat};

/// Which faults `pipewatch simulate` injects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum FaultsChoice {
    /// Organic data only.
    None,
    /// One fault of each kind (see the label file for where and when).
    #[default]
    Default,
}

/// Arguments of `pipewatch simulate`.
#[derive(clap::Args, Debug, Clone)]
pub struct SimulateArgs {
    /// Seed of every random choice: the same arguments give byte-identical output.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,

    /// Start of the simulated period (RFC 3339).
    #[arg(long, default_value = "2026-11-01T00:00:00Z", value_parser = parse_rfc3339)]
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
            },
            disorder: self.disorder,
            timestamp_format: self.timestamp_format,
            correlation_ids: !self.no_correlation_ids,
        }
    }
}

fn parse_rfc3339(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("not an RFC 3339 time ({e}), e.g. 2026-11-01T00:00:00Z"))
}

/// Runs `pipewatch simulate`: writes the events, then the labels if asked, and prints a one-line
/// summary to standard error.
///
/// # Errors
/// Invalid arguments, or a file that cannot be created or written. A closed standard output
/// (`| head`) is not an error.
pub fn run(args: SimulateArgs) -> anyhow::Result<()> {
    let mut sim = Simulation::new(args.to_options())?;
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
