//! `lynx daemon`: collect every interval and hand each snapshot to the sinks, until told to
//! stop. Faults the daemon can outlive are logged and the loop goes on.
use std::{
    fs,
    io::{self, Read, Seek, Write},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::atomic::AtomicBool,
    time::{Duration, Instant},
};

use crate::{
    collector::{
        CollectError, Collector, CollectorOptions, NginxOptions, lxd_instances::LxdInstances,
    },
    config::{DockerConfig, HistoryConfig},
    controller::{ControlOptions, Controller},
    model,
    sink::{
        Sink,
        history::{HistoryError, HistorySink},
        json_file::JsonFileSink,
        prometheus::{PrometheusError, PrometheusServer},
    },
    stop::sleep_until,
};

/// How the daemon runs.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    pub interval: Duration,
    pub snapshot_path: PathBuf,
    /// bpffs directory for the pinned maps.
    pub pin_dir: PathBuf,
    /// Count the network traffic of every socket on the host, not only containers'.
    pub count_host_network: bool,
    /// LXD API sockets to try.
    pub lxd_sockets: Vec<PathBuf>,
    pub docker: DockerConfig,
    pub history: HistoryConfig,
    /// Prometheus endpoint address; empty for none.
    pub prometheus_listen: String,
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
    Lock { path: PathBuf, source: io::Error },
    #[error(transparent)]
    History(#[from] HistoryError),
    #[error(transparent)]
    Prometheus(#[from] PrometheusError),
}

/// Held while a daemon counts into the maps pinned in a directory: a second daemon there
/// would count everything twice. The lock goes with the process, also on SIGKILL.
#[derive(Debug)]
pub struct DaemonLock {
    _file: fs::File,
}

impl DaemonLock {
    /// Takes the lock for `pin_dir`, or says which daemon holds it.
    pub fn acquire(pin_dir: &Path) -> Result<Self, DaemonError> {
        let path = lock_path(pin_dir);
        let error = |source| DaemonError::Lock {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(path.parent().expect("lock path has a parent")).map_err(error)?;
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(error)?;
        if !try_lock(&file) {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            return Err(DaemonError::AlreadyRunning {
                pid: pid.trim().to_owned(),
                pin_dir: pin_dir.to_owned(),
            });
        }
        file.set_len(0).map_err(error)?;
        file.rewind().map_err(error)?;
        write!(file, "{}", std::process::id()).map_err(error)?;
        Ok(Self { _file: file })
    }

    /// True when a daemon holds the lock for `pin_dir` now.
    pub fn is_held(pin_dir: &Path) -> bool {
        fs::File::open(lock_path(pin_dir)).is_ok_and(|file| !try_lock(&file))
    }
}

/// `/run/lynx/daemon-<pin dir>.lock`, one per pin directory. Left in place when the daemon
/// exits, as a pid file is (`/run` is emptied at boot).
pub fn lock_path(pin_dir: &Path) -> PathBuf {
    let name: String = pin_dir
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    Path::new("/run/lynx").join(format!("daemon-{name}.lock"))
}

/// Takes an exclusive lock without waiting; false when another process holds it. A probe
/// that gets it lets go when its descriptor closes.
fn try_lock(file: &fs::File) -> bool {
    // SAFETY: flock on a descriptor this process owns.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Runs until `stop` is set. Fails only when collection cannot start.
pub fn run(options: &DaemonOptions, stop: &AtomicBool) -> Result<(), DaemonError> {
    let _lock = DaemonLock::acquire(&options.pin_dir)?;
    let mut collector = Collector::start(CollectorOptions {
        nginx: options.nginx.clone(),
        pin_dir: Some(options.pin_dir.clone()),
        instances: Some(Box::new(LxdInstances::spawn(
            options.lxd_sockets.clone(),
            options.interval,
        ))),
        docker: Some(Box::new(options.docker.watch())),
        count_host_network: options.count_host_network,
    })?;
    let mut sinks: Vec<Box<dyn Sink>> = vec![
        Box::new(JsonFileSink {
            path: options.snapshot_path.clone(),
        }),
        Box::new(HistorySink::open(
            &options.history.path,
            options.history.retention_days,
        )?),
    ];
    if !options.prometheus_listen.is_empty() {
        sinks.push(Box::new(PrometheusServer::start(
            &options.prometheus_listen,
        )?));
    }
    // After the sinks: a daemon that cannot serve its endpoint must not have touched nginx.
    let controller = options.control.clone().map(Controller::spawn);
    let mut previous = collector.sample()?;
    tracing::info!(
        interval = ?options.interval,
        snapshot = %options.snapshot_path.display(),
        "daemon running"
    );
    let mut next_tick = Instant::now() + options.interval;
    while sleep_until(next_tick, stop) {
        // A slow tick must not make the following ones bunch up.
        next_tick = (next_tick + options.interval).max(Instant::now());
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
        let mut snapshot = model::snapshot(&previous, &current);
        if let Some(controller) = &controller {
            controller.feed(&snapshot);
            snapshot.groups = controller.groups();
        }
        for sink in &mut sinks {
            sink.publish(&snapshot);
        }
        previous = current;
    }
    tracing::info!("daemon stopping");
    Ok(())
}
