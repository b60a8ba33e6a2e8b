//! `pipewatch replay`: events from NDJSON, processed in event time, alerts and scores out.
//!
//! Replay is the engine's offline driver: it is how users backtest thresholds on history
//! and how the scenario tests exercise detection end to end. Same input, same output.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::PathBuf;

use anyhow::Context;
use serde::Serialize;

use std::sync::Arc;

use crate::config::Settings;
use crate::engine::{Engine, Outcome, Outputs, ScoreRows, StageBudget, Stats};
use crate::live::{Driver, Live};
use crate::sink::ndjson::NdjsonWriter;
use crate::source::ndjson::LineReader;

#[derive(clap::Args, Debug, Clone)]
pub struct ReplayArgs {
    /// NDJSON events, or `-` for standard input.
    #[arg(long)]
    pub input: PathBuf,
    /// Where alerts go, one JSON object per line (default: standard output).
    #[arg(long, default_value = "-")]
    pub output: PathBuf,
    /// Also write one scored bucket per line, per stage, metric and detector.
    #[arg(long)]
    pub scores: Option<PathBuf>,
    /// Write each invalid line with its reason, as JSON, here.
    #[arg(long)]
    pub dead_letters: Option<PathBuf>,
    /// Serve the API, /metrics and health checks on `http.listen` while replaying and
    /// after, until Ctrl-C or SIGTERM: a backtest to explore. /readyz turns ready when
    /// the input is done. Nothing is emailed.
    #[arg(long)]
    pub serve: bool,
}

/// Lines between two updates of the live metrics while replaying.
const REPORT_EVERY: u64 = 4096;

/// A refused input line, as `--dead-letters` records it.
#[derive(Serialize)]
struct DeadLetter<'a> {
    line: u64,
    reason: &'static str,
    field: Option<&'static str>,
    detail: &'a str,
    /// The line as text (invalid UTF-8 replaced), cut to 1 KiB.
    payload: String,
}

/// Replays `args.input`; with `live`, also shows the replay in the live state.
pub fn run(settings: &Settings, args: &ReplayArgs, live: Option<&Live>) -> anyhow::Result<Stats> {
    let input: Box<dyn BufRead> = if args.input.as_os_str() == "-" {
        Box::new(BufReader::with_capacity(1 << 16, io::stdin().lock()))
    } else {
        let file = File::open(&args.input)
            .with_context(|| format!("cannot open {}", args.input.display()))?;
        Box::new(BufReader::with_capacity(1 << 16, file))
    };
    let create = |path: &PathBuf| {
        NdjsonWriter::create(path).with_context(|| format!("cannot create {}", path.display()))
    };
    let mut alerts = create(&args.output)?;
    let mut scores = args.scores.as_ref().map(create).transpose()?;
    let mut dead = args.dead_letters.as_ref().map(create).transpose()?;

    let score_rows = match (&scores, &live) {
        (Some(_), _) => ScoreRows::All,
        (None, Some(_)) => ScoreRows::Lead,
        (None, None) => ScoreRows::None,
    };
    let mut engine = match live {
        // The live state shows the runs this engine tracks.
        Some(live) => Engine::with_shared(
            settings,
            score_rows,
            StageBudget::new(settings.stages.max_tracked),
            live.flow.clone(),
        ),
        None => Engine::new(settings, score_rows),
    };
    let mut reader = LineReader::new(input, settings.input.max_event_bytes);
    let mut out = Outputs::default();
    // Replay judges history by its own event time: comparing timestamps with today's
    // clock would make the output depend on when it runs. The decoder's year-2200 bound
    // and the engine's cap on empty buckets after a jump still contain a wild timestamp.
    let no_wall_clock = i64::MAX;
    while let Some((line_number, line)) = reader
        .next_line()
        .with_context(|| format!("reading {}", args.input.display()))?
    {
        if let Outcome::Invalid(rejection) = engine.ingest(line, no_wall_clock, &mut out) {
            tracing::debug!(line = line_number, %rejection, "invalid event");
            if let Some(dead) = dead.as_mut() {
                let text = String::from_utf8_lossy(&line[..line.len().min(1024)]).into_owned();
                dead.write(&DeadLetter {
                    line: line_number,
                    reason: rejection.reason.as_str(),
                    field: rejection.field,
                    detail: &rejection.detail,
                    payload: text,
                })?;
            }
        }
        drain(&mut out, &mut alerts, scores.as_mut(), live)?;
        if line_number % REPORT_EVERY == 0 {
            report(&engine, live);
        }
    }
    engine.finish(&mut out);
    drain(&mut out, &mut alerts, scores.as_mut(), live)?;
    report(&engine, live);
    alerts.flush()?;
    if let Some(s) = scores.as_mut() {
        s.flush()?;
    }
    if let Some(d) = dead.as_mut() {
        d.flush()?;
    }
    Ok(engine.stats().clone())
}

fn drain(
    out: &mut Outputs,
    alerts: &mut NdjsonWriter,
    scores: Option<&mut NdjsonWriter>,
    live: Option<&Live>,
) -> io::Result<()> {
    for mut alert in out.alerts.drain(..) {
        if let Some(live) = live {
            live.record_alert(&mut alert);
        }
        alerts.write(&alert)?;
    }
    if let Some(scores) = scores {
        for score in &out.scores {
            scores.write(score)?;
        }
    }
    match live {
        Some(live) => live.observe(out, None),
        None => {
            out.scores.clear();
            out.forgotten.clear();
        }
    }
    Ok(())
}

fn report(engine: &Engine, live: Option<&Live>) {
    if let Some(live) = live {
        live.telemetry.record_engine(engine.stats());
        live.record_flow();
        live.telemetry
            .tracked_stages
            .set(engine.tracked_stages() as i64);
    }
}

/// `pipewatch replay --serve`: replays while serving the live state, then serves on
/// until SIGINT or SIGTERM.
pub async fn serve(settings: Settings, args: ReplayArgs) -> anyhow::Result<Stats> {
    let live = Arc::new(Live::new(&settings, Driver::Replay));
    let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let (address, http) = crate::api::serve(&settings.http.listen, Arc::clone(&live), async {
        let _ = http_stopped.await;
    })
    .await?;
    let stats = tokio::task::spawn_blocking({
        let live = Arc::clone(&live);
        move || run(&settings, &args, Some(&live))
    })
    .await
    .context("the replay thread panicked")??;
    live.set_replay_finished();
    eprintln!("{}", summary(&stats));
    eprintln!("replay done; serving its results on http://{address} until Ctrl-C");
    let signal = crate::run::stop_requested().await;
    tracing::info!("{signal}: stopping");
    let _ = http_stop.send(());
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), http).await;
    Ok(stats)
}

/// The one-paragraph account replay prints to standard error when it ends.
pub fn summary(stats: &Stats) -> String {
    let mut invalid: Vec<String> = crate::decode::Reason::ALL
        .iter()
        .filter(|r| stats.invalid[r.index()] > 0)
        .map(|r| format!("{}={}", r.as_str(), stats.invalid[r.index()]))
        .collect();
    if invalid.is_empty() {
        invalid.push("none".into());
    }
    format!(
        "replay: {} events applied, {} late, {} duplicate, {} over the stage limit, {} invalid ({}); \
         {} stages, {} buckets closed ({} skipped); {} alerts fired, {} resolved",
        stats.applied,
        stats.late,
        stats.duplicate,
        stats.stage_limit,
        stats.invalid_total(),
        invalid.join(", "),
        stats.stages_created,
        stats.buckets_closed,
        stats.buckets_skipped,
        stats.alerts.firing,
        stats.alerts.resolved,
    )
}
