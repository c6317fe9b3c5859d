//! Command line: parsing and dispatch. Every subcommand returns a [`CliError`] whose
//! [`CliError::exit_code`] main uses.
use std::{
    io::{self, Write},
    path::{Path, PathBuf},
    sync::{Arc, atomic::AtomicBool},
    time::{Duration, Instant},
};

use clap::{Args, Parser, Subcommand};

use crate::{
    collector::{CollectError, Collector, CollectorOptions, lxd_instances::LxdInstances},
    config::{Config, ConfigError, DEFAULT_CONFIG_PATH},
    daemon::{self, DaemonError, DaemonLock, DaemonOptions},
    model,
    stop::sleep_until,
};

/// Lynx: host observer and autoscaler for nginx + LXD container web farms.
#[derive(Debug, Parser)]
#[command(name = "lynx", version, about)]
pub struct Cli {
    /// Config file (TOML); without it `/etc/lynx/lynx.toml` is read when it exists.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Collect every interval and write the snapshot file until SIGTERM or Ctrl-C.
    Daemon(DaemonArgs),
    /// Print the snapshot document as JSON: the running daemon's, or one collected over
    /// `--interval` when no daemon runs.
    Snapshot(SnapshotArgs),
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// How often to collect, e.g. `500ms`, `1s`, `10s` [config: daemon.interval, default 1s].
    #[arg(long, value_parser = parse_interval)]
    pub interval: Option<Duration>,
    /// Where to write the snapshot document, replaced atomically each interval
    /// [config: daemon.snapshot_path, default /run/lynx/snapshot.json].
    #[arg(long)]
    pub output: Option<PathBuf>,
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
    Config(#[from] ConfigError),
    #[error(transparent)]
    Collect(#[from] CollectError),
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error("cannot read the daemon's snapshot {path}: {source}")]
    DaemonSnapshot { path: PathBuf, source: io::Error },
    #[error("cannot write to standard output: {0}")]
    Stdout(io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(io::Error),
}

impl CliError {
    /// 2 for bad input (config) or a host that cannot run lynx (privilege, kernel feature),
    /// 1 for any other failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_) => 2,
            Self::Collect(error) | Self::Daemon(DaemonError::Collect(error))
                if error.is_unsupported_host() =>
            {
                2
            }
            Self::Daemon(DaemonError::AlreadyRunning { .. }) => 2,
            _ => 1,
        }
    }
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<(), CliError> {
    let config = match &cli.config {
        Some(path) => Config::load(path, true)?,
        None => Config::load(Path::new(DEFAULT_CONFIG_PATH), false)?,
    };
    match cli.command {
        Command::Daemon(args) => {
            let stop = Arc::new(AtomicBool::new(false));
            for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
                signal_hook::flag::register(signal, Arc::clone(&stop))
                    .map_err(CliError::Signals)?;
            }
            let options = DaemonOptions {
                interval: args.interval.unwrap_or(config.daemon.interval),
                snapshot_path: args.output.unwrap_or(config.daemon.snapshot_path),
                pin_dir: config.daemon.pin_dir,
                lxd_sockets: config.lxd.sockets,
            };
            Ok(daemon::run(&options, &stop)?)
        }
        Command::Snapshot(args) => {
            let daemon_file = &config.daemon.snapshot_path;
            if DaemonLock::is_held(&config.daemon.pin_dir) && daemon_file.exists() {
                let text =
                    std::fs::read(daemon_file).map_err(|source| CliError::DaemonSnapshot {
                        path: daemon_file.clone(),
                        source,
                    })?;
                return io::stdout()
                    .lock()
                    .write_all(&text)
                    .map_err(CliError::Stdout);
            }
            let mut collector = Collector::start(CollectorOptions {
                pin_dir: None,
                instances: Some(Box::new(LxdInstances::spawn(
                    config.lxd.sockets,
                    args.interval,
                ))),
            })?;
            let first = collector.sample()?;
            let never = AtomicBool::new(false);
            sleep_until(Instant::now() + args.interval, &never);
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
