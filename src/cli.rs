//! The `pipewatch` command line, in the library so that tests can parse command lines
//! exactly as the binary does (tests/docker.rs checks the compose file's commands).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::{replay, run as service, simulate};

#[derive(Parser, Debug)]
#[command(
    name = "pipewatch",
    version,
    about = "Watches data pipelines and alerts on anomalies"
)]
pub struct Cli {
    /// Configuration file (TOML), read over the built-in defaults.
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Watch the configured Kafka topics in a consumer group, as a service.
    Run(service::RunArgs),
    /// Process NDJSON events in event time and write alerts (and scores).
    Replay(replay::ReplayArgs),
    /// Generate realistic pipeline events with injected faults.
    Simulate(simulate::SimulateArgs),
    /// Print the effective configuration, secrets redacted.
    CheckConfig,
}
