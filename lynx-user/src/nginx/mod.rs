//! nginx: the upstream file Lynx owns (never any other file), validated with `nginx -t` and
//! reloaded without dropping requests.
//!
//! A reload is SIGHUP to the master: it re-reads the config and starts a new generation of
//! workers while the old ones finish the requests they have, so no connection is cut. Lynx
//! confirms the reload took by seeing a worker that was not there before.
pub mod upstream;

use std::{
    collections::{BTreeSet, HashSet},
    fs, io,
    path::{Path, PathBuf},
    process::Command,
    thread::sleep,
    time::{Duration, Instant, SystemTime},
};

use crate::atomic_file;

/// How long nginx may take to start its new workers after SIGHUP.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(5);

/// How to reach the nginx that includes the upstream file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NginxControl {
    /// The `nginx` binary.
    pub binary: PathBuf,
    /// nginx's main config, which `include`s the upstream file.
    pub main_config: PathBuf,
    /// `-p` prefix, when nginx runs with one.
    pub prefix: Option<PathBuf>,
    /// Where the master writes its pid.
    pub pid_file: PathBuf,
}

/// Why a change did not take effect. nginx kept serving the previous upstreams.
#[derive(Debug, thiserror::Error)]
pub enum NginxError {
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot run {binary}: {source}")]
    Run { binary: PathBuf, source: io::Error },
    #[error("nginx -t rejected the new upstreams, previous file restored: {message}")]
    Rejected { message: String },
    #[error("cannot find the nginx master from {pid_file}: {reason}")]
    NoMaster { pid_file: PathBuf, reason: String },
    #[error(
        "cannot reload nginx: SIGHUP to its master (pid {pid}) was refused; signalling another \
         user's process needs CAP_KILL"
    )]
    SignalRefused { pid: i32 },
    #[error(
        "nginx did not start new workers within {RELOAD_TIMEOUT:?} of SIGHUP (see its error log)"
    )]
    NotReloaded,
}

/// What [`UpstreamFile::apply`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The file already had this content: nothing written, nothing reloaded.
    Unchanged,
    /// nginx rejected this same content with this same main config before; it is tried again
    /// once either changes.
    StillRejected,
    /// Written, validated and reloaded.
    Reloaded,
}

/// The upstream file and the nginx that reads it.
#[derive(Debug)]
pub struct UpstreamFile {
    path: PathBuf,
    control: NginxControl,
    /// What nginx rejected last: the content, and the main config's modification time then.
    /// The same inputs are not retried every tick; an edit to either is.
    rejected: Option<(String, Option<SystemTime>)>,
    /// The master reloaded last, and the processes it had before: retired workers finish
    /// their requests (and may still hold connections to a server just removed) and exit.
    retired: Option<(i32, HashSet<u32>)>,
}

impl UpstreamFile {
    pub fn new(path: PathBuf, control: NginxControl) -> Self {
        Self {
            path,
            control,
            rejected: None,
            retired: None,
        }
    }

    /// Makes `content` the upstream file and nginx's running config, or leaves both as they
    /// were.
    pub fn apply(&mut self, content: &str) -> Result<Applied, NginxError> {
        let previous = fs::read_to_string(&self.path).ok();
        if previous.as_deref() == Some(content) {
            return Ok(Applied::Unchanged);
        }
        let inputs = (content.to_owned(), self.main_config_modified());
        if self.rejected.as_ref() == Some(&inputs) {
            return Ok(Applied::StillRejected);
        }
        let write_error = |source| NginxError::Write {
            path: self.path.clone(),
            source,
        };
        atomic_file::write(&self.path, content.as_bytes()).map_err(write_error)?;
        if let Err(error) = self.test_config() {
            let restored = match &previous {
                Some(previous) => atomic_file::write(&self.path, previous.as_bytes()),
                None => fs::remove_file(&self.path),
            };
            restored.map_err(write_error)?;
            if matches!(error, NginxError::Rejected { .. }) {
                self.rejected = Some(inputs);
            }
            return Err(error);
        }
        self.rejected = None;
        self.reload()?;
        Ok(Applied::Reloaded)
    }

    fn main_config_modified(&self) -> Option<SystemTime> {
        fs::metadata(&self.control.main_config)
            .and_then(|m| m.modified())
            .ok()
    }

    /// `nginx -t` against the real main config, with the new file in place.
    fn test_config(&self) -> Result<(), NginxError> {
        let mut command = Command::new(&self.control.binary);
        command.arg("-t").arg("-c").arg(&self.control.main_config);
        if let Some(prefix) = &self.control.prefix {
            command.arg("-p").arg(prefix);
        }
        let output = command.output().map_err(|source| NginxError::Run {
            binary: self.control.binary.clone(),
            source,
        })?;
        if output.status.success() {
            return Ok(());
        }
        let message = String::from_utf8_lossy(&output.stderr)
            .lines()
            .filter(|line| !line.contains("test failed"))
            .map(str::trim)
            .collect::<Vec<_>>()
            .join("; ");
        Err(NginxError::Rejected { message })
    }

    /// Workers that reloads retired and that still run: until they exit, a server removed by
    /// the last reload may still have requests or connections from them.
    pub fn retiring_workers(&self) -> BTreeSet<u32> {
        let Some((master, retired)) = &self.retired else {
            return BTreeSet::new();
        };
        // A child that has exited but not been reaped is gone for this purpose; the master
        // reaps at once, and only its current children are looked at.
        children(*master).intersection(retired).copied().collect()
    }

    /// SIGHUP to the master, then waits for a worker that was not there before.
    fn reload(&mut self) -> Result<(), NginxError> {
        let no_master = |reason: String| NginxError::NoMaster {
            pid_file: self.control.pid_file.clone(),
            reason,
        };
        let master: i32 = fs::read_to_string(&self.control.pid_file)
            .map_err(|e| no_master(e.to_string()))?
            .trim()
            .parse()
            .map_err(|e| no_master(format!("not a pid: {e}")))?;
        let before = children(master);
        // SAFETY: kill has no memory-safety preconditions.
        if unsafe { libc::kill(master, libc::SIGHUP) } != 0 {
            let error = io::Error::last_os_error();
            return Err(match error.raw_os_error() {
                // The master runs as root and Lynx does not.
                Some(libc::EPERM) => NginxError::SignalRefused { pid: master },
                _ => no_master(error.to_string()),
            });
        }
        let deadline = Instant::now() + RELOAD_TIMEOUT;
        while Instant::now() < deadline {
            if children(master).difference(&before).next().is_some() {
                // `before` holds every child at the SIGHUP, so also the workers of earlier
                // generations that still run.
                self.retired = Some((master, before));
                return Ok(());
            }
            sleep(Duration::from_millis(10));
        }
        Err(NginxError::NotReloaded)
    }
}

/// The child processes of `pid` (nginx's workers and helpers).
fn children(pid: i32) -> HashSet<u32> {
    let path = Path::new("/proc").join(pid.to_string()).join("task");
    let Ok(tasks) = fs::read_dir(path) else {
        return HashSet::new();
    };
    tasks
        .flatten()
        .filter_map(|task| fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|pid| pid.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}
