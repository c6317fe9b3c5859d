//! Command line: parsing and dispatch. Every subcommand returns a [`CliError`] whose
//! [`CliError::exit_code`] main uses.
use std::{
    io::{self, Write},
    path::PathBuf,
    sync::{Arc, atomic::AtomicBool},
    time::{Duration, Instant},
};

use clap::{Args, Parser, Subcommand};

use crate::{
    collector::{CollectError, Collector},
    daemon::{self, DaemonOptions},
    model,
};

/// Default path of the snapshot file.
pub const DEFAULT_SNAPSHOT_PATH: &str = "/run/lynx/snapshot.json";

/// Lynx: host observer and autoscaler for nginx + LXD container web farms.
#[derive(Debug, Parser)]
#[command(name = "lynx", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Collect every interval and write the snapshot file until SIGTERM or Ctrl-C.
    Daemon(DaemonArgs),
    /// Collect over one interval and print the snapshot document as JSON.
    Snapshot(SnapshotArgs),
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// How often to collect, e.g. `500ms`, `1s`, `10s`.
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,
    /// Where to write the snapshot document (replaced atomically each interval).
    #[arg(long, default_value = DEFAULT_SNAPSHOT_PATH)]
    pub output: PathBuf,
}

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// How long to measure rates (CPU %) over, e.g. `500ms`, `1s`.
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,
}

/// Shortest and longest interval accepted: shorter makes rates noise, longer makes them stale.
const INTERVAL_RANGE: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(3600));

/// Parses a human duration (`250ms`, `1s`, `2m`) within [`INTERVAL_RANGE`].
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e}"))?;
    let (min, max) = INTERVAL_RANGE;
    if !(min..=max).contains(&interval) {
        return Err(format!("{text:?} is outside {min:?}..={max:?}"));
    }
    Ok(interval)
}

/// Errors of a subcommand.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Collect(#[from] CollectError),
    #[error("cannot write to standard output: {0}")]
    Stdout(io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(io::Error),
}

impl CliError {
    /// 2 when this host cannot run lynx (privilege, kernel feature), 1 for any other failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Collect(error) if error.is_unsupported_host() => 2,
            _ => 1,
        }
    }
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Daemon(args) => {
            let stop = Arc::new(AtomicBool::new(false));
            for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
                signal_hook::flag::register(signal, Arc::clone(&stop))
                    .map_err(CliError::Signals)?;
            }
            let options = DaemonOptions {
                interval: args.interval,
                snapshot_path: args.output,
            };
            Ok(daemon::run(&options, &stop)?)
        }
        Command::Snapshot(args) => {
            let mut collector = Collector::start()?;
            let first = collector.sample()?;
            let never = AtomicBool::new(false);
            daemon::sleep_until(Instant::now() + args.interval, &never);
            let snapshot = model::snapshot(&first, &collector.sample()?);
            let mut out = io::stdout().lock();
            serde_json::to_writer_pretty(&mut out, &snapshot)
                .map_err(io::Error::from)
                .and_then(|()| writeln!(out))
                .map_err(CliError::Stdout)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_parse_in_human_units() {
        assert_eq!(parse_interval("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_interval("2s"), Ok(Duration::from_secs(2)));
    }

    #[test]
    fn bad_intervals_name_the_value() {
        let error = parse_interval("1 fortnight").unwrap_err();
        assert!(error.contains("\"1 fortnight\""), "{error}");
        let error = parse_interval("1ms").unwrap_err();
        assert!(error.contains("\"1ms\" is outside"), "{error}");
    }

    #[test]
    fn command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
