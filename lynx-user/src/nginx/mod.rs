//! nginx: the upstream file Lynx owns (never any other file), validated with `nginx -t` and
//! reloaded without dropping requests.
//!
//! A reload is SIGHUP to the master: it re-reads the config and starts a new generation of
//! workers while the old ones finish the requests they have, so no connection is cut. Lynx
//! confirms the reload took by seeing a worker that was not there before.
pub mod master;
pub mod upstream;

use std::{
    collections::{BTreeSet, HashSet},
    fs, io,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::sleep,
    time::{Duration, Instant, SystemTime},
};

pub use self::master::{MasterError, find_master};
use crate::{
    atomic_file,
    command::{self, CommandError},
};

/// How long nginx may take to start its new workers after SIGHUP.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a file nginx did not reload with (no master, no new workers, or an `nginx -t`
/// that hung) waits before it is tried again: each try may wait for nginx that long.
const RELOAD_RETRY: Duration = Duration::from_secs(30);
/// Mode of an upstream file Lynx creates (an existing one keeps its own).
const FILE_MODE: u32 = 0o644;

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
    /// How long `nginx -t` may take before it is killed and the change given up.
    pub test_timeout: Duration,
}

/// Why a change did not take effect. nginx kept serving the previous upstreams.
#[derive(Debug, thiserror::Error)]
pub enum NginxError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error(
        "{path} was not written by Lynx (its first line is not Lynx's header): refusing to overwrite it"
    )]
    NotOurs { path: PathBuf },
    #[error("nginx -t ({binary}): {source}")]
    Run {
        binary: PathBuf,
        source: CommandError,
    },
    #[error("nginx -t rejected the new upstreams, previous file restored: {message}")]
    Rejected { message: String },
    #[error("no nginx master to reload: {0}")]
    NoMaster(#[from] MasterError),
    #[error(
        "cannot reload nginx: SIGHUP to its master (pid {pid}) was refused; signalling another \
         user's process needs CAP_KILL"
    )]
    SignalRefused { pid: i32 },
    #[error(
        "nginx did not start new workers within {RELOAD_TIMEOUT:?} of SIGHUP (see its error log)"
    )]
    NotReloaded,
    #[error("stopped while waiting for nginx: the daemon is shutting down")]
    Cancelled,
}

/// What [`UpstreamFile::apply`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// nginx was confirmed to reload with exactly this content, and the file still has it:
    /// nothing written, nothing reloaded.
    Unchanged,
    /// This same content failed before (nginx rejected it with this same main config, or did
    /// not reload with it); it is tried again once either changes, or a while later.
    StillFailing,
    /// Written, validated and reloaded.
    Reloaded,
}

/// A content that failed, and when it may be tried again.
#[derive(Debug)]
struct Failed {
    content: String,
    /// The main config's modification time then: an edit there is worth a new try.
    main_config_modified: Option<SystemTime>,
    /// `None`: not before the content or the main config changes (nginx rejected it).
    retry_at: Option<Instant>,
}

/// The upstream file and the nginx that reads it.
#[derive(Debug)]
pub struct UpstreamFile {
    path: PathBuf,
    control: NginxControl,
    /// The content nginx last confirmed reloading with (new workers seen). Only this counts
    /// as served: a file left on disk by a failed reload, or by an earlier daemon, does not.
    confirmed: Option<String>,
    /// The last content that failed, not retried every tick.
    failed: Option<Failed>,
    /// The master reloaded last, and the processes it had before: retired workers finish
    /// their requests (and may still hold connections to a server just removed) and exit.
    retired: Option<(i32, HashSet<u32>)>,
    /// Set when the daemon stops: a running `nginx -t` is killed, a wait for workers ends.
    cancel: Arc<AtomicBool>,
}

impl UpstreamFile {
    pub fn new(path: PathBuf, control: NginxControl) -> Self {
        Self {
            path,
            control,
            confirmed: None,
            failed: None,
            retired: None,
            cancel: Arc::default(),
        }
    }

    /// Ends a running `nginx -t` or wait for nginx's workers as soon as `cancel` is set.
    pub fn cancelled_by(self, cancel: Arc<AtomicBool>) -> Self {
        Self { cancel, ..self }
    }

    /// Makes `content` the upstream file and nginx's running config, or leaves nginx serving
    /// what it served.
    pub fn apply(&mut self, content: &str) -> Result<Applied, NginxError> {
        let previous = match fs::read_to_string(&self.path) {
            Ok(text) => Some(text),
            Err(error) if error.kind() == io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(NginxError::Read {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        if previous.as_deref() == Some(content) && self.confirmed.as_deref() == Some(content) {
            return Ok(Applied::Unchanged);
        }
        if previous
            .as_deref()
            .is_some_and(|text| !text.starts_with(upstream::HEADER))
        {
            return Err(NginxError::NotOurs {
                path: self.path.clone(),
            });
        }
        let main_config_modified = self.main_config_modified();
        if self.failed.as_ref().is_some_and(|failed| {
            failed.content == content
                && failed.main_config_modified == main_config_modified
                && failed.retry_at.is_none_or(|at| Instant::now() < at)
        }) {
            return Ok(Applied::StillFailing);
        }
        self.confirmed = None;
        let failed = |retry_at| Failed {
            content: content.to_owned(),
            main_config_modified,
            retry_at,
        };
        let write_error = |source| NginxError::Write {
            path: self.path.clone(),
            source,
        };
        if previous.as_deref() != Some(content) {
            atomic_file::write(&self.path, content.as_bytes(), FILE_MODE).map_err(write_error)?;
        }
        if let Err(error) = self.test_config() {
            let restored = match &previous {
                Some(previous) if previous != content => {
                    atomic_file::write(&self.path, previous.as_bytes(), FILE_MODE)
                }
                Some(_) => Ok(()),
                None => fs::remove_file(&self.path),
            };
            restored.map_err(write_error)?;
            self.failed = match &error {
                NginxError::Rejected { .. } => Some(failed(None)),
                // A check that hung or could not run may do better later.
                NginxError::Run { .. } => Some(failed(Some(Instant::now() + RELOAD_RETRY))),
                _ => None,
            };
            return Err(error);
        }
        if let Err(error) = self.reload() {
            // The file stays (nginx -t took it), but it is not served until a reload of it
            // is confirmed.
            self.failed = Some(failed(Some(Instant::now() + RELOAD_RETRY)));
            return Err(error);
        }
        self.failed = None;
        self.confirmed = Some(content.to_owned());
        Ok(Applied::Reloaded)
    }

    fn main_config_modified(&self) -> Option<SystemTime> {
        fs::metadata(&self.control.main_config)
            .and_then(|m| m.modified())
            .ok()
    }

    /// `nginx -t` against the real main config, with the new file in place, within
    /// `test_timeout`.
    fn test_config(&self) -> Result<(), NginxError> {
        let mut command = Command::new(&self.control.binary);
        command.arg("-t").arg("-c").arg(&self.control.main_config);
        if let Some(prefix) = &self.control.prefix {
            command.arg("-p").arg(prefix);
        }
        let output = command::output(&mut command, self.control.test_timeout, &self.cancel)
            .map_err(|source| NginxError::Run {
                binary: self.control.binary.clone(),
                source,
            })?;
        if output.status.success() {
            return Ok(());
        }
        let mut message = String::from_utf8_lossy(&output.stderr)
            .lines()
            .filter(|line| !line.contains("test failed"))
            .map(str::trim)
            .collect::<Vec<_>>()
            .join("; ");
        if message.is_empty() {
            message = command::describe(output.status);
        }
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
        let master = find_master(&self.control, Path::new("/proc"))?;
        // find_master only returns pids that fit.
        let master = i32::try_from(master).expect("a pid fits an i32");
        let before = children(master);
        // SAFETY: kill has no memory-safety preconditions; `master` is a positive pid.
        if unsafe { libc::kill(master, libc::SIGHUP) } != 0 {
            let error = io::Error::last_os_error();
            return Err(match error.raw_os_error() {
                // The master runs as root and Lynx does not.
                Some(libc::EPERM) => NginxError::SignalRefused { pid: master },
                _ => NginxError::NoMaster(MasterError::NotMaster {
                    pid: master.unsigned_abs(),
                    path: self.control.pid_file.clone(),
                    reason: format!("cannot signal it: {error}"),
                }),
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
            if self.cancel.load(Ordering::Relaxed) {
                return Err(NginxError::Cancelled);
            }
            sleep(Duration::from_millis(10));
        }
        Err(NginxError::NotReloaded)
    }
}

/// The child processes of `pid` (nginx's workers and helpers).
pub fn children(pid: impl Into<i64>) -> HashSet<u32> {
    let pid = pid.into();
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

#[cfg(test)]
mod tests {
    use std::{os::unix::fs::PermissionsExt, process::Child};

    use super::*;
    use crate::test_support::TempDir;

    const CONTENT: &str = "# Written by lynx: changes here are overwritten. Running containers are the servers.\nupstream web {\n    server 10.0.0.2:80;\n}\n";

    /// An upstream file in `dir` for an nginx whose `nginx -t` is `binary`.
    fn upstream_file(dir: &TempDir, binary: &str) -> (PathBuf, UpstreamFile) {
        let path = dir.path().join("lynx-upstreams.conf");
        let control = NginxControl {
            binary: binary.into(),
            main_config: dir.path().join("nginx.conf"),
            prefix: None,
            pid_file: dir.path().join("nginx.pid"),
            test_timeout: Duration::from_millis(500),
        };
        (path.clone(), UpstreamFile::new(path, control))
    }

    /// A process killed and reaped on drop.
    struct Reaped(Child);

    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn a_pid_file_that_names_no_nginx_master_is_never_signalled() {
        let dir = TempDir::new("nginx-no-master");
        let (_, mut file) = upstream_file(&dir, "true");
        let mut sleep = Reaped(
            Command::new("sleep")
                .arg("3600")
                .spawn()
                .expect("start a sleep"),
        );
        for text in [
            sleep.0.id().to_string(),
            "-1".into(),
            "0".into(),
            "abc".into(),
        ] {
            fs::write(dir.path().join("nginx.pid"), &text).expect("write the pid file");
            let result = file.apply(CONTENT);
            assert!(
                matches!(result, Err(NginxError::NoMaster(_))),
                "pid file {text:?}: {result:?}"
            );
            assert!(
                result
                    .expect_err("no master")
                    .to_string()
                    .starts_with("no nginx master to reload: "),
            );
            // A new try right away is not made: the same content waits for its retry time.
            file.failed = None;
        }
        assert!(
            sleep.0.try_wait().expect("look at the sleep").is_none(),
            "the sleep was signalled"
        );
    }

    #[test]
    fn a_file_left_by_a_failed_reload_is_not_taken_as_served() {
        let dir = TempDir::new("nginx-unconfirmed");
        let (path, mut file) = upstream_file(&dir, "true");
        let error = file.apply(CONTENT).expect_err("nothing to reload");
        assert!(matches!(error, NginxError::NoMaster(_)), "{error}");
        assert_eq!(fs::read_to_string(&path).expect("the file"), CONTENT);
        assert_eq!(
            file.apply(CONTENT).expect("not retried at once"),
            Applied::StillFailing,
            "the file on disk has the content, but no reload confirmed it"
        );
        // Later the reload is tried again, and fails again: never `Unchanged`.
        file.failed.as_mut().expect("remembered").retry_at = Some(Instant::now());
        let again = file.apply(CONTENT);
        assert!(matches!(again, Err(NginxError::NoMaster(_))), "{again:?}");
    }

    #[test]
    fn a_file_lynx_did_not_write_or_cannot_read_is_left_alone() {
        let dir = TempDir::new("nginx-not-ours");
        let (path, mut file) = upstream_file(&dir, "false");
        fs::write(&path, "upstream web { server 192.0.2.1:80; }\n").expect("an operator's file");
        let error = file.apply(CONTENT).expect_err("not ours");
        assert!(matches!(error, NginxError::NotOurs { .. }), "{error}");
        assert_eq!(
            fs::read_to_string(&path).expect("kept"),
            "upstream web { server 192.0.2.1:80; }\n"
        );

        // Not text: it cannot be compared or restored, so it is not replaced (and then
        // deleted by the rollback of a rejected change).
        let garbled = b"upstream web {\xff\xfe}\n";
        fs::write(&path, garbled).expect("a garbled file");
        let error = file.apply(CONTENT).expect_err("unreadable");
        assert!(matches!(error, NginxError::Read { .. }), "{error}");
        assert_eq!(fs::read(&path).expect("kept"), garbled);
    }

    #[test]
    fn a_rejected_change_restores_the_previous_file_and_is_not_retried() {
        let dir = TempDir::new("nginx-rejected");
        let (path, mut file) = upstream_file(&dir, "false");
        let previous = format!("{}# previous\n", upstream::HEADER);
        fs::write(&path, &previous).expect("previous file");
        let error = file.apply(CONTENT).expect_err("rejected");
        assert!(matches!(error, NginxError::Rejected { .. }), "{error}");
        assert_eq!(fs::read_to_string(&path).expect("restored"), previous);
        assert_eq!(
            file.apply(CONTENT).expect("not retried"),
            Applied::StillFailing
        );
    }

    #[test]
    fn a_hanging_nginx_test_is_killed_at_its_deadline() {
        let dir = TempDir::new("nginx-hang");
        let binary = dir.path().join("nginx");
        fs::write(&binary, "#!/bin/sh\nexec sleep 3600\n").expect("write a hanging nginx");
        fs::set_permissions(&binary, fs::Permissions::from_mode(0o755)).expect("chmod");
        let (path, mut file) = upstream_file(&dir, binary.to_str().expect("UTF-8"));
        let started = Instant::now();
        let error = file.apply(CONTENT).expect_err("hangs");
        let took = started.elapsed();
        assert!(
            matches!(
                error,
                NginxError::Run {
                    source: CommandError::TimedOut(_),
                    ..
                }
            ),
            "{error}"
        );
        assert!(took < Duration::from_secs(3), "apply took {took:?}");
        assert!(!path.exists(), "the new file is taken back");

        let cancel = Arc::new(AtomicBool::new(true));
        let mut file = upstream_file(&dir, binary.to_str().expect("UTF-8"))
            .1
            .cancelled_by(cancel);
        let error = file.apply(CONTENT).expect_err("cancelled");
        assert!(
            matches!(
                error,
                NginxError::Run {
                    source: CommandError::Cancelled,
                    ..
                }
            ),
            "{error}"
        );
    }
}
