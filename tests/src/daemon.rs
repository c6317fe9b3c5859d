//! `lynx daemon` under test: its own config, pin directory, snapshot file and log, so it never
//! shares maps with a daemon the host runs. Killed, and its pins removed, on drop. It runs
//! with umask 077, as a hardened service unit has it: what it writes for others to read must
//! say its mode itself.
use std::{
    fs,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use aya::{
    Pod,
    maps::{Map, MapData, PerCpuHashMap},
};
use lynx::model::Snapshot;
use lynx_common::MAPS_LAYOUT_VERSION;

use crate::{ChildGuard, clock_ticks, lynx_bin};

pub struct DaemonUnderTest {
    daemon: ChildGuard,
    /// Holds the daemon's config (`lynx.toml`), log, snapshot and history database.
    pub dir: PathBuf,
    pub snapshot_path: PathBuf,
    pub log_path: PathBuf,
    pub pin_dir: PathBuf,
    pub config: PathBuf,
    /// Arguments after `lynx daemon`.
    args: Vec<String>,
}

impl DaemonUnderTest {
    /// Starts a daemon collecting every `interval` (e.g. `"200ms"`), with its HTTP server
    /// off, and waits for its first snapshot.
    pub fn start(name: &str, interval: &str) -> Self {
        Self::start_with_prometheus(name, interval, "")
    }

    /// As [`Self::start`], serving `/metrics` and `/snapshot` on `listen` (e.g.
    /// `"127.0.0.1:19464"`).
    pub fn start_with_prometheus(name: &str, interval: &str, listen: &str) -> Self {
        Self::start_configured(name, interval, listen, "")
    }

    /// As [`Self::start_with_prometheus`], with more config sections appended (`[nginx]`...).
    pub fn start_configured(name: &str, interval: &str, listen: &str, extra: &str) -> Self {
        Self::start_with_args(name, interval, listen, extra, &[])
    }

    /// As [`Self::start_configured`], with `args` after `lynx daemon`.
    pub fn start_with_args(
        name: &str,
        interval: &str,
        listen: &str,
        extra: &str,
        args: &[&str],
    ) -> Self {
        let unique = format!("lynx-test-{name}-{}", std::process::id());
        let dir = std::env::temp_dir().join(&unique);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create daemon test dir");
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(&unique);
        let snapshot_path = dir.join("snapshot.json");
        let config = dir.join("lynx.toml");
        let history = dir.join("history.db");
        fs::write(
            &config,
            format!(
                "[daemon]\ninterval = \"{interval}\"\nsnapshot_path = \"{}\"\npin_dir = \"{}\"\n\
                 [history]\npath = \"{}\"\n[web]\nlisten = \"{listen}\"\n{extra}",
                snapshot_path.display(),
                pin_dir.display(),
                history.display(),
            ),
        )
        .expect("write daemon config");
        let log_path = dir.join("daemon.log");
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let daemon = spawn(&config, &log_path, &args);
        let daemon = Self {
            daemon,
            dir,
            snapshot_path,
            log_path,
            pin_dir,
            config,
            args,
        };
        daemon.next_snapshot();
        daemon
    }

    /// Kills the daemon with SIGKILL, runs `while_down`, and starts another on the same config
    /// and pins.
    pub fn kill_and_restart(&mut self, while_down: impl FnOnce()) {
        self.daemon.kill();
        while_down();
        let _ = fs::remove_file(&self.snapshot_path);
        self.daemon = spawn(&self.config, &self.log_path, &self.args);
        self.next_snapshot();
    }

    /// Stops the daemon with SIGTERM, replaces `from` by `to` in its config, and starts it
    /// again on the same pins.
    pub fn restart_with_config_change(&mut self, from: &str, to: &str) {
        let text = fs::read_to_string(&self.config).expect("read daemon config");
        assert!(
            text.contains(from),
            "{from:?} is not in the config:\n{text}"
        );
        let status = self.terminate();
        assert!(status.success(), "daemon exit on SIGTERM: {status}");
        fs::write(&self.config, text.replace(from, to)).expect("write daemon config");
        let _ = fs::remove_file(&self.snapshot_path);
        self.daemon = spawn(&self.config, &self.log_path, &self.args);
        self.next_snapshot();
    }

    /// The document now in the snapshot file.
    pub fn snapshot(&self) -> Option<Snapshot> {
        read_snapshot(&self.snapshot_path)
    }

    /// A snapshot collected wholly after this call: waits for two new documents.
    pub fn next_snapshot(&self) -> Snapshot {
        next_snapshot_at(&self.snapshot_path, &|| self.log())
    }

    /// Waits until a snapshot satisfies `condition`, up to `timeout`.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        condition: impl FnMut(&Snapshot) -> bool,
    ) -> Snapshot {
        wait_for_snapshot(
            &self.snapshot_path,
            what,
            timeout,
            &|| self.log(),
            condition,
        )
    }

    /// Keys (cgroup ids) of the per-cgroup map `name` that the daemon pinned.
    pub fn pinned_keys<V: Pod>(&self, name: &str) -> Vec<u64> {
        let path = self
            .pin_dir
            .join(format!("v{MAPS_LAYOUT_VERSION}"))
            .join(name);
        let data =
            MapData::from_pin(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        let map: PerCpuHashMap<_, u64, V> =
            PerCpuHashMap::try_from(Map::PerCpuHashMap(data)).expect("a per-CPU hash of u64 keys");
        map.keys().map(|key| key.expect("read a key")).collect()
    }

    /// Stops the daemon with SIGTERM, as an init system would, and returns how it exited.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        self.daemon.0.wait().expect("the daemon exits")
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.daemon.0.id()
    }

    /// The tracepoints the daemon's programs are attached to now, sorted.
    pub fn tracepoints(&self) -> Vec<String> {
        tracepoints_of(self.pid())
    }

    /// The daemon's user + system CPU time so far.
    pub fn cpu_time(&self) -> Duration {
        let pid = self.pid();
        let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_else(|e| panic!("read /proc/{pid}/stat: {e}"));
        let ticks: u64 = stat
            .rsplit_once(')')
            .expect("stat has a command name")
            .1
            .split_whitespace()
            .skip(11)
            .take(2)
            .map(|f| f.parse::<u64>().expect("utime/stime"))
            .sum();
        clock_ticks(ticks)
    }

    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

/// The tracepoints process `pid`'s programs are attached to now, sorted: the `tp_name` of
/// each BPF link it holds, from its descriptors' fdinfo.
pub fn tracepoints_of(pid: u32) -> Vec<String> {
    let fds = fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("list /proc/{pid}/fd: {e}"));
    let mut names: Vec<String> = fds
        .filter_map(Result::ok)
        .filter(|fd| {
            fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == "anon_inode:bpf_link")
        })
        .filter_map(|fd| {
            // A descriptor closed since it was listed has no fdinfo: not attached.
            let info =
                fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.file_name().display()))
                    .ok()?;
            let name = info
                .lines()
                .find_map(|line| line.strip_prefix("tp_name:"))?;
            Some(name.trim().to_owned())
        })
        .collect();
    names.sort();
    names
}

/// The document in the snapshot file at `path`, if there is a whole one.
pub fn read_snapshot(path: &Path) -> Option<Snapshot> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

/// A snapshot at `path` collected wholly after this call: waits for two new documents.
/// `log` is the daemon's log, shown if none comes.
pub fn next_snapshot_at(path: &Path, log: &dyn Fn() -> String) -> Snapshot {
    let mut seen = 0;
    let mut last = read_snapshot(path).map(|s| s.host.timestamp);
    wait_for_snapshot(
        path,
        "two fresh snapshots",
        Duration::from_secs(30) * crate::SLOWDOWN,
        log,
        |snapshot| {
            if Some(&snapshot.host.timestamp) != last.as_ref() {
                seen += 1;
                last = Some(snapshot.host.timestamp.clone());
            }
            seen >= 2
        },
    )
}

/// Waits until the snapshot at `path` satisfies `condition`, up to `timeout`; panics with
/// `what` and the daemon's `log` otherwise.
pub fn wait_for_snapshot(
    path: &Path,
    what: &str,
    timeout: Duration,
    log: &dyn Fn() -> String,
    mut condition: impl FnMut(&Snapshot) -> bool,
) -> Snapshot {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(snapshot) = read_snapshot(path)
            && condition(&snapshot)
        {
            return snapshot;
        }
        assert!(
            Instant::now() < deadline,
            "waited {timeout:?} for {what}; daemon log:\n{}",
            log()
        );
        sleep(Duration::from_millis(20));
    }
}

fn spawn(config: &PathBuf, log_path: &PathBuf, args: &[String]) -> ChildGuard {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .expect("open daemon log");
    let mut command = Command::new(lynx_bin());
    command
        .arg("--config")
        .arg(config)
        .arg("daemon")
        .args(args)
        .env("LYNX_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log);
    // SAFETY: umask is async-signal-safe and touches only the child's own state.
    unsafe {
        command.pre_exec(|| {
            libc::umask(0o077);
            Ok(())
        });
    }
    ChildGuard(command.spawn().expect("start lynx daemon"))
}

impl Drop for DaemonUnderTest {
    fn drop(&mut self) {
        self.daemon.kill();
        let _ = fs::remove_dir_all(&self.pin_dir);
        let _ = fs::remove_file(lynx::daemon::lock_path(&self.pin_dir));
        let _ = fs::remove_dir_all(&self.dir);
    }
}
