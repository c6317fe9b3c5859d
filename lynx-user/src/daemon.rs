//! `lynx daemon`: collect every interval and hand each snapshot to the sinks, until told to
//! stop. Faults the daemon can outlive are logged and the loop goes on: the HTTP server's
//! address taken by another process, a history database that cannot be opened, LXD or nginx
//! misbehaving. SIGHUP re-reads the config: what can change while running changes, the rest
//! is named in the log as waiting for a restart, and a config that does not load leaves the
//! running one in place.
mod lock;

use std::{
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

pub use self::lock::{DaemonLock, lock_path};
use crate::{
    collector::{
        CollectError, Collector, CollectorOptions, NginxOptions, lxd_instances::LxdInstances,
    },
    config::{ConfigError, DiskConfig, DockerConfig, HistoryConfig},
    controller::{ControlOptions, Controller},
    model,
    sink::{
        Sink,
        history::{HistoryError, HistorySink},
        json_file::JsonFileSink,
    },
    web::{WebError, WebOptions, WebServer},
};

/// How the daemon runs.
#[derive(Clone, Debug, PartialEq)]
pub struct DaemonOptions {
    pub interval: Duration,
    pub snapshot_path: PathBuf,
    /// bpffs directory for the pinned maps.
    pub pin_dir: PathBuf,
    /// Count the network traffic of every socket on the host, not only containers'.
    pub count_host_network: bool,
    /// LXD API sockets to try.
    pub lxd_sockets: Vec<PathBuf>,
    /// Disk usage polling and its threshold.
    pub disk: DiskConfig,
    pub docker: DockerConfig,
    pub history: HistoryConfig,
    /// The HTTP server (`/metrics`, `/snapshot`); `None` for none.
    pub web: Option<WebOptions>,
    /// The nginx whose traffic is counted.
    pub nginx: NginxOptions,
    /// The upstream controller and autoscaler; `None` without `[[groups]]`.
    pub control: Option<ControlOptions>,
}

/// Errors that stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Collect(#[from] CollectError),
    #[error("another lynx daemon (pid {pid}) is running with the maps pinned in {pin_dir}")]
    AlreadyRunning { pid: String, pin_dir: PathBuf },
    #[error("cannot lock {path}: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("refusing to keep the daemon's lock in {path}: {reason}")]
    UnsafeLockDir { path: PathBuf, reason: String },
    #[error(transparent)]
    History(#[from] HistoryError),
    #[error(transparent)]
    Web(#[from] WebError),
}

/// What the daemon is told from outside while it runs.
pub struct Signals<'a> {
    /// Stop (SIGTERM, SIGINT).
    pub stop: &'a AtomicBool,
    /// Re-read the config (SIGHUP).
    pub reload: &'a AtomicBool,
}

/// Runs until `signals.stop` is set; `reread` loads the config again on `signals.reload`.
/// Fails only when collection cannot start.
pub fn run(
    options: DaemonOptions,
    signals: &Signals,
    reread: &dyn Fn() -> Result<DaemonOptions, ConfigError>,
) -> Result<(), DaemonError> {
    let _lock = DaemonLock::acquire(&options.pin_dir)?;
    let mut collector = Collector::start(CollectorOptions {
        nginx: options.nginx.clone(),
        pin_dir: Some(options.pin_dir.clone()),
        instances: Some({
            let (sockets, interval, disk) =
                (options.lxd_sockets.clone(), options.interval, options.disk);
            Box::new(move || Box::new(LxdInstances::spawn(sockets, interval, disk)))
        }),
        docker: Some({
            let docker = options.docker.clone();
            Box::new(move || Box::new(docker.watch()))
        }),
        count_host_network: options.count_host_network,
    })?;
    let mut running = Running::start(options)?;
    let mut previous = collector.sample()?;
    tracing::info!(
        version = crate::cli::VERSION,
        interval = ?running.options.interval,
        snapshot = %running.options.snapshot_path.display(),
        "daemon running"
    );
    let mut ready = false;
    let mut next_tick = Instant::now() + running.options.interval;
    while wait(next_tick, signals) {
        if signals.reload.swap(false, Ordering::Relaxed) {
            match reread() {
                Ok(options) => running.reconfigure(options),
                Err(error) => {
                    tracing::error!("config not reloaded, the running one stays: {error}")
                }
            }
            next_tick = next_tick.min(Instant::now() + running.options.interval);
            continue;
        }
        // A slow tick must not make the following ones bunch up.
        next_tick = (next_tick + running.options.interval).max(Instant::now());
        let current = match collector.sample() {
            Ok(current) => current,
            Err(error) => {
                tracing::warn!(%error, "collection failed; keeping the previous snapshot");
                continue;
            }
        };
        if current.drops != previous.drops {
            tracing::warn!(
                drops = ?current.drops,
                "a kernel map is full: some events were not counted (see kernel_drops)"
            );
        }
        let snapshot = model::snapshot(&previous, &current);
        running.publish(snapshot);
        if !ready {
            // systemd's Type=notify: programs attached, first snapshot written. A no-op
            // without $NOTIFY_SOCKET; a service manager that cannot be told is not fatal.
            ready = true;
            if let Err(error) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
                tracing::warn!(%error, "cannot tell the service manager the daemon is ready");
            }
        }
        previous = current;
    }
    tracing::info!("daemon stopping");
    Ok(())
}

/// Waits until `deadline`, or a signal; false when told to stop.
fn wait(deadline: Instant, signals: &Signals) -> bool {
    const STEP: Duration = Duration::from_millis(50);
    loop {
        if signals.stop.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= deadline || signals.reload.load(Ordering::Relaxed) {
            return true;
        }
        std::thread::sleep((deadline - now).min(STEP));
    }
}

/// What the daemon runs besides the collector, as the config says now.
struct Running {
    options: DaemonOptions,
    json: JsonFileSink,
    history: HistorySink,
    web: Option<WebServer>,
    controller: Option<Controller>,
}

impl Running {
    fn start(options: DaemonOptions) -> Result<Self, DaemonError> {
        let history = HistorySink::start(&options.history.path, options.history.retention_days)?;
        let web = options.web.clone().map(WebServer::start).transpose()?;
        let controller = options.control.clone().map(Controller::spawn);
        Ok(Self {
            json: JsonFileSink {
                path: options.snapshot_path.clone(),
            },
            history,
            web,
            controller,
            options,
        })
    }

    fn publish(&mut self, mut snapshot: model::Snapshot) {
        if let Some(controller) = &self.controller {
            controller.feed(&snapshot);
            snapshot.groups = controller.groups();
        }
        snapshot.history_error = self.history.error();
        self.json.publish(&snapshot);
        self.history.publish(&snapshot);
        if let Some(web) = &mut self.web {
            web.publish(&snapshot);
        }
    }

    /// Applies what changed in `new` that can change while running; logs the rest.
    fn reconfigure(&mut self, new: DaemonOptions) {
        let old = &self.options;
        let mut applied = Vec::new();
        let restart: Vec<&str> = [
            (new.pin_dir != old.pin_dir, "[daemon] pin_dir"),
            (
                new.count_host_network != old.count_host_network,
                "[daemon] count_host_network",
            ),
            (
                new.nginx != old.nginx,
                "[nginx] (which nginx is counted, and on which ports)",
            ),
            (
                new.lxd_sockets != old.lxd_sockets,
                "[lxd] sockets (for the collector)",
            ),
            (new.docker != old.docker, "[docker]"),
            (new.disk != old.disk, "[disk] (for the collector)"),
        ]
        .into_iter()
        .filter_map(|(changed, key)| changed.then_some(key))
        .collect();
        if new.interval != old.interval {
            applied.push("[daemon] interval");
        }
        if new.snapshot_path != old.snapshot_path {
            applied.push("[daemon] snapshot_path");
            self.json.path = new.snapshot_path.clone();
        }
        if new.history != old.history {
            applied.push("[history]");
            match HistorySink::start(&new.history.path, new.history.retention_days) {
                // The old one writes its minute in progress as it goes.
                Ok(history) => self.history = history,
                Err(error) => tracing::error!("{error}: history stays as it was"),
            }
        }
        if new.web != old.web {
            applied.push("[web]");
            // Dropped first: the new one may want the same address.
            self.web = None;
            self.web = new.web.clone().and_then(|options| {
                WebServer::start(options)
                    .inspect_err(|error| tracing::error!("{error}: no HTTP server"))
                    .ok()
            });
        }
        if new.control != old.control {
            applied.push("[[groups]], and [nginx] and [lxd] for the controller");
            // Its threads stop (a running nginx -t is killed) before the new ones start.
            self.controller = None;
            self.controller = new.control.clone().map(Controller::spawn);
        }
        match (applied.is_empty(), restart.is_empty()) {
            (true, true) => tracing::info!("config reloaded: nothing changed"),
            (false, _) => tracing::info!("config reloaded: applied {}", applied.join(", ")),
            (true, false) => tracing::info!("config reloaded: nothing applied"),
        }
        if !restart.is_empty() {
            tracing::warn!(
                "config reloaded, but these take effect only after a restart: {}",
                restart.join(", ")
            );
        }
        // What needs a restart keeps running as it was started.
        self.options = DaemonOptions {
            pin_dir: self.options.pin_dir.clone(),
            count_host_network: self.options.count_host_network,
            nginx: self.options.nginx.clone(),
            lxd_sockets: self.options.lxd_sockets.clone(),
            disk: self.options.disk,
            ..new
        };
    }
}
