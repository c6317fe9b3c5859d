//! Command line: parsing and dispatch. Every subcommand returns a [`CliError`] whose
//! [`CliError::exit_code`] main uses.
use std::{
    io::{self, IsTerminal, Write},
    path::{Path, PathBuf},
    sync::{Arc, atomic::AtomicBool},
    time::{Duration, Instant, SystemTime},
};

use clap::{Args, Parser, Subcommand};

use crate::{
    collector::{CollectError, Collector, CollectorOptions, lxd_instances::LxdInstances},
    config::{Config, ConfigError, DEFAULT_CONFIG_PATH, TopConfig, parse_interval},
    controller::ControlOptions,
    daemon::{self, DaemonError, DaemonLock, DaemonOptions},
    docker::{DockerClient, DockerError},
    follow::{self, FollowError},
    generate,
    lxd::{LxdClient, LxdError, StateAction},
    manage::{self, ContainerRefError, Engine, ImageRefError},
    model,
    remote::{self, Remote, RemoteError},
    sink::history::{self, HistoryError},
    stop::sleep_until,
    tui::{self, FileSource, TopOptions, TuiError},
    web,
};

/// What `lynx --version` prints after the name: the crate version, the git revision and the
/// embedded eBPF object's build id (see build.rs).
pub const VERSION: &str = env!("LYNX_VERSION");

/// Lynx: host observer and autoscaler for nginx + LXD container web farms.
#[derive(Debug, Parser)]
#[command(name = "lynx", version = VERSION, about)]
pub struct Cli {
    /// Config file (TOML); without it `/etc/lynx/lynx.toml` is read when it exists.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Run the command on another host through the system's ssh (its config, keys and
    /// known_hosts), with the lynx installed there; `--config` then names a file on that host.
    /// `top` draws here from the remote daemon's snapshots.
    #[arg(
        long,
        global = true,
        env = "LYNX_HOST",
        value_name = "ssh://USER@HOST[:PORT]"
    )]
    pub host: Option<String>,
    /// The lynx program on the remote host, for `--host`: a name looked up on the remote
    /// user's PATH, or an absolute path.
    #[arg(
        long,
        global = true,
        env = "LYNX_REMOTE_LYNX",
        default_value = "lynx",
        value_name = "PROGRAM"
    )]
    pub remote_lynx: String,
    /// An ssh config file for `--host`, read instead of ~/.ssh/config (`ssh -F`).
    #[arg(long, global = true, env = "LYNX_SSH_CONFIG", value_name = "PATH")]
    pub ssh_config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Collect every interval and write the snapshot file until SIGTERM or Ctrl-C; with
    /// `[[groups]]` configured, also keep nginx's upstreams following the containers and
    /// scale the groups that autoscale. SIGHUP re-reads the config.
    Daemon(DaemonArgs),
    /// Live full-screen view of the daemon's snapshot (no root needed); `--once`, or output
    /// that is not a terminal, prints one plain table.
    Top(TopArgs),
    /// For each of the last days: min and max running containers, peak and average requests
    /// per second, from the daemon's history database.
    History {
        /// How many days back, today included.
        #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..=3660))]
        days: u32,
        /// Print JSON for scripts instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Manage LXD and Docker containers through their engines' APIs.
    Containers {
        #[command(subcommand)]
        action: ContainerAction,
    },
    /// Manage LXD images through LXD's API.
    Images {
        #[command(subcommand)]
        action: ImageAction,
    },
    /// Print the snapshot document as JSON: the running daemon's, or one collected over
    /// `--interval` when no daemon runs.
    Snapshot(SnapshotArgs),
    /// Print the dashboard's address with a one-time login link, from the running daemon's
    /// login token (root's, in /run/lynx); opens nothing.
    Web,
    /// Write the manual pages and shell completions into DIR (for packaging).
    #[command(hide = true)]
    Generate { dir: PathBuf },
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Print one plain table and exit.
    #[arg(long)]
    pub once: bool,
    /// How often to redraw, e.g. `500ms`, `1s`, `10s` [config: top.refresh, default 1s].
    #[arg(long, value_parser = parse_interval)]
    pub refresh: Option<Duration>,
}

#[derive(Debug, Subcommand)]
pub enum ContainerAction {
    /// List containers of LXD and Docker: name, engine, status, IPv4, IPv6, image, uptime.
    List,
    /// Start a container.
    Start(Target),
    /// Stop a container cleanly, or kill it with `--force`.
    Stop(StopArgs),
    /// Stop (cleanly, or with `--force`) and start a container.
    Restart(StopArgs),
    /// Freeze (pause) a container: its processes stop getting CPU time.
    #[command(visible_alias = "pause")]
    Freeze(Target),
    /// Unfreeze (unpause) a frozen container.
    #[command(visible_alias = "unpause")]
    Unfreeze(Target),
    /// Give a container's NIC a static IPv4 address on its LXD network; it applies from the
    /// container's next start.
    SetIpv4 {
        name: String,
        address: std::net::Ipv4Addr,
        /// The NIC device to set it on.
        #[arg(long, default_value = "eth0")]
        nic: String,
    },
}

/// The container an action is for.
#[derive(Debug, Args)]
pub struct Target {
    /// Its name (for Docker, its id or a unique prefix of the id too).
    pub name: String,
    /// The engine it belongs to; needed only for a name that both LXD and Docker have.
    #[arg(long, value_enum)]
    pub engine: Option<Engine>,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    #[command(flatten)]
    pub target: Target,
    /// Kill the container instead of asking it to shut down.
    #[arg(long)]
    pub force: bool,
    /// How long a clean shutdown may take before LXD gives up, or Docker kills it.
    #[arg(long, default_value = "30s", value_parser = parse_interval)]
    pub timeout: Duration,
}

#[derive(Debug, Subcommand)]
pub enum ImageAction {
    /// List images: alias, fingerprint, architecture, description, size, upload date.
    List,
    /// Delete an image by alias or fingerprint; refused while containers use it.
    Delete { image: String },
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
    /// Decide and log what the controller would do (upstream changes, scale actions, with
    /// their reasons) without doing any of it: no LXD action, no file written, no reload.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// How long to measure rates (CPU %) over, e.g. `500ms`, `1s`; with `--follow`, how
    /// often to look for a new document.
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,
    /// Print the running daemon's document as one JSON line each time it changes, until
    /// the reader goes (what `lynx --host ... top` reads over ssh).
    #[arg(long)]
    pub follow: bool,
    /// With `--follow`: stop after this many documents.
    #[arg(long, requires = "follow", value_name = "N")]
    pub count: Option<u64>,
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
    #[error("no LXD socket answers (tried {tried})")]
    NoLxd { tried: String },
    #[error("no Docker engine answers (tried {tried})")]
    NoDocker { tried: String },
    #[error("neither LXD (tried {lxd}) nor Docker (tried {docker}) answers")]
    NoEngine { lxd: String, docker: String },
    #[error(transparent)]
    Lxd(#[from] LxdError),
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    ContainerRef(#[from] ContainerRefError),
    #[error(transparent)]
    Image(#[from] ImageRefError),
    #[error(transparent)]
    History(#[from] HistoryError),
    #[error(transparent)]
    Top(#[from] TuiError),
    #[error("cannot read the daemon's snapshot {path}: {source}")]
    DaemonSnapshot { path: PathBuf, source: io::Error },
    #[error("cannot write to standard output: {0}")]
    Stdout(io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(io::Error),
    #[error(
        "cannot read the dashboard's login token {path}: {source} (is the daemon running, with [web] listen on loopback? reading it needs root)"
    )]
    WebLogin { path: PathBuf, source: io::Error },
    #[error("the daemon's HTTP server is off ([web] listen = \"\"): there is no dashboard")]
    WebOff,
    #[error("cannot write the manual pages and completions into {dir}: {source}")]
    Generate { dir: PathBuf, source: io::Error },
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error("snapshot stream: {0}")]
    Follow(#[from] FollowError),
    /// The remote lynx failed with this exit code and has said why on standard error.
    #[error("the remote lynx exited with {0}")]
    RemoteExit(u8),
}

impl CliError {
    /// 2 for bad input (config, a name that matches nothing or is both an LXD and a Docker
    /// container) or a host that cannot run lynx (privilege, kernel feature), 3 when the
    /// engine (LXD, Docker) cannot be reached, 1 for any other failure (the engine refused or
    /// failed the operation).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_) => 2,
            Self::Collect(error) | Self::Daemon(DaemonError::Collect(error))
                if error.is_unsupported_host() =>
            {
                2
            }
            Self::Daemon(
                DaemonError::AlreadyRunning { .. } | DaemonError::UnsafeLockDir { .. },
            ) => 2,
            Self::Image(ImageRefError::NotFound(_) | ImageRefError::Ambiguous { .. }) => 2,
            Self::ContainerRef(_) => 2,
            Self::Remote(error) => error.exit_code(),
            Self::RemoteExit(code) => *code,
            Self::NoLxd { .. }
            | Self::NoDocker { .. }
            | Self::NoEngine { .. }
            | Self::Lxd(LxdError::Connect { .. })
            | Self::Docker(DockerError::Connect { .. }) => 3,
            _ => 1,
        }
    }
}

/// The config at `path` (`--config`), or at the default path when it exists.
fn load_config(path: Option<&Path>) -> Result<Config, ConfigError> {
    match path {
        Some(path) => Config::load(path, true),
        None => Config::load(Path::new(DEFAULT_CONFIG_PATH), false),
    }
}

/// The daemon's options: the config, with the command line's flags over it.
fn daemon_options(config: Config, args: &DaemonArgs) -> DaemonOptions {
    let web = config.web.options().map(|web| {
        web.with_dashboard(
            web_login_file(&config.daemon.pin_dir),
            config.lxd.sockets.clone(),
            config.history.path.clone(),
        )
    });
    DaemonOptions {
        control: control_options(&config, args.dry_run),
        interval: args.interval.unwrap_or(config.daemon.interval),
        snapshot_path: args.output.clone().unwrap_or(config.daemon.snapshot_path),
        pin_dir: config.daemon.pin_dir,
        count_host_network: config.daemon.count_host_network,
        lxd_sockets: config.lxd.sockets,
        disk: config.disk,
        docker: config.docker,
        history: config.history,
        web,
        nginx: config.nginx.counting(),
    }
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<(), CliError> {
    // Packaging reads no config: a host's own file must not change what is shipped.
    if let Some(host) = &cli.host {
        return run_remote(&cli, host);
    }
    if let Command::Generate { dir } = cli.command {
        return generate::generate(&dir).map_err(|source| CliError::Generate { dir, source });
    }
    let config = load_config(cli.config.as_deref())?;
    match cli.command {
        Command::Daemon(args) => {
            let stop = Arc::new(AtomicBool::new(false));
            for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
                signal_hook::flag::register(signal, Arc::clone(&stop))
                    .map_err(CliError::Signals)?;
            }
            // SIGHUP re-reads the config rather than ending the daemon (its default action).
            let reload = Arc::new(AtomicBool::new(false));
            signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&reload))
                .map_err(CliError::Signals)?;
            let reread = || load_config(cli.config.as_deref()).map(|c| daemon_options(c, &args));
            let options = daemon_options(config, &args);
            let signals = daemon::Signals {
                stop: &stop,
                reload: &reload,
            };
            Ok(daemon::run(options, &signals, &reread)?)
        }
        Command::Top(args) => Ok(tui::run(
            &mut FileSource(config.daemon.snapshot_path),
            &TopOptions {
                refresh: args.refresh.unwrap_or(config.top.refresh),
                once: args.once,
                history_path: Some(config.history.path),
            },
        )?),
        Command::History { days, json } => {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let summary = history::daily_summary(&config.history.path, days, now as i64)?;
            let text = match json {
                true => serde_json::to_string_pretty(&summary).expect("summaries serialise") + "\n",
                false => history::render_table(&summary),
            };
            print(&text)
        }
        Command::Web => {
            let listen = config.web.options().ok_or(CliError::WebOff)?.listen;
            let path = web_login_file(&config.daemon.pin_dir);
            let link = web::session::login_link(listen, &path)
                .map_err(|source| CliError::WebLogin { path, source })?;
            print(&format!("{link}\n"))
        }
        Command::Containers { action } => containers(&config, action),
        Command::Images { action } => images(&lxd_client(&config)?, action),
        Command::Generate { .. } => unreachable!("handled before the config is read"),
        Command::Snapshot(args) if args.follow => {
            let path = config.daemon.snapshot_path;
            // Says so when no daemon runs, or it is another lynx's.
            tui::load_snapshot(&path)?;
            let read = || std::fs::read(&path).map_err(FollowError::Read);
            let wait = |interval| {
                std::thread::sleep(interval);
                true
            };
            let mut out = io::stdout().lock();
            Ok(follow::follow(
                read,
                &mut out,
                args.interval,
                args.count,
                wait,
            )?)
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
                nginx: config.nginx.counting(),
                pin_dir: None,
                instances: Some(Box::new(move || {
                    Box::new(LxdInstances::spawn(
                        config.lxd.sockets,
                        args.interval,
                        config.disk,
                    ))
                })),
                docker: Some(Box::new(move || Box::new(config.docker.watch()))),
                count_host_network: config.daemon.count_host_network,
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

/// How long a remote command may take beyond its own timeout: connecting, LXD's answer.
const REMOTE_DEADLINE: Duration = Duration::from_secs(120);

/// Runs the command on `host` through ssh: `top` on a terminal here, with the remote
/// daemon's documents streamed; every other command there, its output passed through.
fn run_remote(cli: &Cli, host: &str) -> Result<(), CliError> {
    let remote = Remote {
        host: host.parse()?,
        lynx: cli.remote_lynx.clone(),
        ssh_config: cli.ssh_config.clone(),
    };
    let deadline = match &cli.command {
        Command::Daemon(_) => Err(RemoteError::LocalOnly { command: "daemon" })?,
        Command::Generate { .. } => Err(RemoteError::LocalOnly {
            command: "generate",
        })?,
        Command::Top(args) if !args.once && io::stdout().is_terminal() => {
            let refresh = args.refresh.unwrap_or(TopConfig::default().refresh);
            let mut follow: Vec<String> = match &cli.config {
                Some(path) => vec!["--config".into(), path.display().to_string()],
                None => Vec::new(),
            };
            follow.extend([
                "snapshot".into(),
                "--follow".into(),
                "--interval".into(),
                format!("{}ms", refresh.as_millis()),
            ]);
            let mut source = remote.follow(&follow)?;
            // The history database is the remote host's: no longer sparkline.
            let options = TopOptions {
                refresh,
                once: false,
                history_path: None,
            };
            return Ok(tui::run(&mut source, &options)?);
        }
        // A stream has no end to wait for.
        Command::Snapshot(args) if args.follow => None,
        Command::Snapshot(args) => Some(REMOTE_DEADLINE + args.interval),
        Command::Containers {
            action: ContainerAction::Stop(stop) | ContainerAction::Restart(stop),
        } => Some(REMOTE_DEADLINE + stop.timeout * 2),
        _ => Some(REMOTE_DEADLINE + DEFAULT_ACTION_TIMEOUT),
    };
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    match remote.run(&remote::remote_args(&args)?, deadline)? {
        0 => Ok(()),
        code => Err(CliError::RemoteExit(code)),
    }
}

/// The dashboard's login token file of the daemon with maps pinned in `pin_dir`.
fn web_login_file(pin_dir: &Path) -> PathBuf {
    web::session::login_file(&daemon::lock_path(pin_dir))
}

/// The controller's options, `None` without groups.
fn control_options(config: &Config, dry_run: bool) -> Option<ControlOptions> {
    if config.groups.is_empty() {
        if dry_run {
            tracing::warn!("--dry-run: no [[groups]] in the config, so there is nothing to decide");
        }
        return None;
    }
    Some(ControlOptions {
        groups: config.groups.clone(),
        lxd_sockets: config.lxd.sockets.clone(),
        reconcile_interval: config.lxd.reconcile_interval,
        upstream_file: config.nginx.upstream_file.clone(),
        nginx: config.nginx.control(),
        fallback_port: config.nginx.fallback_port,
        dry_run,
    })
}

fn lxd_client(config: &Config) -> Result<LxdClient, CliError> {
    LxdClient::discover(&config.lxd.sockets).ok_or_else(|| CliError::NoLxd {
        tried: joined(&config.lxd.sockets),
    })
}

/// A client for the first Docker socket that exists; `None` on a host without one.
fn docker_client(config: &Config) -> Option<DockerClient> {
    config
        .docker
        .sockets()
        .into_iter()
        .find(|socket| socket.exists())
        .map(DockerClient::new)
}

fn joined(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|s| s.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn containers(config: &Config, action: ContainerAction) -> Result<(), CliError> {
    let (target, change) = match action {
        ContainerAction::List => return list_containers(config),
        ContainerAction::SetIpv4 { name, address, nic } => {
            lxd_client(config)?.set_ipv4(&name, &nic, address)?;
            return print(&format!(
                "{name}: {nic} gets {address} from its next start\n"
            ));
        }
        ContainerAction::Start(target) => (target, (StateAction::Start, DEFAULT_ACTION_TIMEOUT)),
        ContainerAction::Stop(StopArgs {
            target,
            force,
            timeout,
        }) => (target, (StateAction::Stop { force }, timeout)),
        ContainerAction::Restart(StopArgs {
            target,
            force,
            timeout,
        }) => (target, (StateAction::Restart { force }, timeout)),
        ContainerAction::Freeze(target) => (target, (StateAction::Freeze, DEFAULT_ACTION_TIMEOUT)),
        ContainerAction::Unfreeze(target) => {
            (target, (StateAction::Unfreeze, DEFAULT_ACTION_TIMEOUT))
        }
    };
    let (action, timeout) = change;
    let name = &target.name;
    let engine = match target.engine {
        Some(engine) => engine,
        None => engine_of(config, name)?,
    };
    match engine {
        Engine::Lxd => {
            let lxd = lxd_client(config)?;
            lxd.change_state(name, action, timeout)?;
            let status = lxd.instance_state(name)?.status;
            print(&format!("{name} (lxd): {}\n", status.as_str()))
        }
        Engine::Docker => {
            let docker = docker_client(config).ok_or_else(|| CliError::NoDocker {
                tried: joined(&config.docker.sockets()),
            })?;
            docker.change_state(name, action, timeout)?;
            let state = match docker.inspect(name)? {
                Some(container) => container.state.to_string(),
                None => "removed".to_owned(),
            };
            print(&format!("{name} (docker): {state}\n"))
        }
    }
}

/// The engine `name` belongs to. Docker is asked first: on a host without it, or while it
/// is down, every name is LXD's, as without Docker support; LXD is asked only when Docker
/// answered, to find a name both have.
fn engine_of(config: &Config, name: &str) -> Result<Engine, CliError> {
    let (docker, answered) = match docker_client(config).map(|client| client.inspect(name)) {
        None => (None, false),
        Some(Err(error)) if error.is_unreachable() => (None, false),
        Some(result) => (result?, true),
    };
    let in_lxd = match answered {
        false => None,
        true => LxdClient::discover(&config.lxd.sockets)
            .map(|lxd| lxd.instances())
            .transpose()?
            .map(|instances| instances.iter().any(|i| i.name == *name)),
    };
    Ok(manage::engine_of(name, docker.as_ref(), answered, in_lxd)?)
}

/// Every container of the engines that answer.
fn list_containers(config: &Config) -> Result<(), CliError> {
    let instances = LxdClient::discover(&config.lxd.sockets)
        .map(|lxd| lxd.instances())
        .transpose()?;
    let containers = match docker_client(config).map(|docker| docker.containers()) {
        Some(Err(error)) if error.is_unreachable() => None,
        other => other.transpose()?,
    };
    if instances.is_none() && containers.is_none() {
        return Err(CliError::NoEngine {
            lxd: joined(&config.lxd.sockets),
            docker: joined(&config.docker.sockets()),
        });
    }
    print(&manage::containers_table(
        &instances.unwrap_or_default(),
        &containers.unwrap_or_default(),
        SystemTime::now(),
    ))
}

fn images(lxd: &LxdClient, action: ImageAction) -> Result<(), CliError> {
    match action {
        ImageAction::List => print(&manage::images_table(&lxd.images()?)),
        ImageAction::Delete { image } => {
            let images = lxd.images()?;
            let found = manage::resolve_image(&images, &image)?;
            manage::check_unused(found, &image, &lxd.instances()?)?;
            lxd.delete_image(&found.fingerprint)?;
            print(&format!("deleted image {image} ({})\n", found.fingerprint))
        }
    }
}

/// How long LXD may take for a start, freeze or unfreeze.
const DEFAULT_ACTION_TIMEOUT: Duration = Duration::from_secs(30);

fn print(text: &str) -> Result<(), CliError> {
    io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .map_err(CliError::Stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
