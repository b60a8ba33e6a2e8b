//! The `pipewatch` command line.

use std::process::ExitCode;

use clap::Parser;
use pipewatch::cli::{Cli, Command};
use pipewatch::config::{ConfigError, Settings};
use pipewatch::{replay, run as service, simulate};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("pipewatch: {err:#}");
            if err.downcast_ref::<ConfigError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = || Settings::load(cli.config.as_deref());
    match cli.command {
        Command::CheckConfig => {
            print!("{}", settings()?.to_redacted_toml());
            Ok(())
        }
        Command::Replay(args) if args.serve => {
            let settings = settings()?;
            serving(|runtime| runtime.block_on(replay::serve(settings, args)))?;
            Ok(())
        }
        Command::Replay(ref args) => {
            let stats = replay::run(&settings()?, args, None)?;
            eprintln!("{}", replay::summary(&stats));
            Ok(())
        }
        Command::Run(args) => {
            let settings = settings()?;
            let counters = serving(|runtime| runtime.block_on(service::serve(settings, args)))?;
            eprintln!("{}", service::summary(&counters));
            Ok(())
        }
        Command::Simulate(args) => simulate::run(args, &settings()?),
    }
}

/// Runs a command that serves HTTP on a runtime of its own: the engines run on their own
/// blocking thread, so two workers carry the HTTP server and signals with room to spare.
///
/// The command has bounded its own stop (`kafka.shutdown_timeout`); what it gave up
/// waiting for, such as a consumer thread stuck in a commit to a broker that went away,
/// must not hold the process: dropping a runtime waits for its blocking threads for ever.
fn serving<T>(
    command: impl FnOnce(&tokio::runtime::Runtime) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = command(&runtime);
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}
