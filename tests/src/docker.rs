//! The Docker rig: a Docker Engine of the test's own, with containers made from a local
//! busybox image.
//!
//! - [`DockerEngine::start`] runs Debian's `dockerd` with its own data root, exec root, pid
//!   file and socket under [`STATE_ROOT`]`/NAME-PID` (on disk, so that direct I/O in a
//!   container reaches a block device), with no iptables, no bridge and no registry
//!   (`--iptables=false --ip6tables=false --bridge=none`), and imports [`IMAGE`] from a tar
//!   of the host's static busybox with `docker import`. Containers run with `--network none`.
//! - [`DockerEngine::docker`] runs the `docker` CLI against it, [`DockerEngine::inspect`]
//!   reads `docker inspect`, [`DockerEngine::kill`] kills the engine as a crash would and
//!   [`DockerEngine::restart`] starts it again on the same state.
//! - On drop, every container and the image are removed through the engine, the engine is
//!   stopped, whatever it left running (its containerd, the containers' shims and processes)
//!   is killed, its mounts are undone and its directory is deleted, also after a failure. The
//!   directories of test processes that no longer exist are cleaned the same way at the next
//!   start.
//!
//! Every wait and every command is bounded in time; everything panics with a message.
use std::{
    fs,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Output, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    lxd::{busybox_rootfs, run, system_command},
    require,
};

/// The image every container is made from.
pub const IMAGE: &str = "lynx-busybox:test";
/// Where each engine keeps its state, one directory per test engine.
pub const STATE_ROOT: &str = "/var/lib/lynx-tests-docker";
/// How long the engine may take to answer after it starts.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound for one `docker` command.
const DOCKER_TIMEOUT: Duration = Duration::from_secs(120);

/// A Docker Engine started for one test.
pub struct DockerEngine {
    dir: PathBuf,
    daemon: Option<Child>,
}

impl DockerEngine {
    /// Starts an engine named `name` (unique among the tests of the process) and imports
    /// [`IMAGE`] into it.
    pub fn start(name: &str) -> Self {
        for program in ["dockerd", "containerd", "runc", "docker", "busybox", "tar"] {
            require(program);
        }
        clean_orphans();
        let dir = Path::new(STATE_ROOT).join(format!("{name}-{}", std::process::id()));
        clean(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        // The guard exists before the engine does, so that a failed start is cleaned too.
        let mut engine = Self { dir, daemon: None };
        let started = Instant::now();
        engine.spawn();
        engine.import_image();
        eprintln!(
            "docker rig: engine {name} ready with {IMAGE} in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        engine
    }

    /// The engine's API socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    /// The `[docker]` section of a Lynx config that watches this engine.
    pub fn lynx_config(&self) -> String {
        format!("[docker]\nsocket = \"{}\"\n", self.socket().display())
    }

    /// Runs `docker ARGS` against this engine, whatever its exit status.
    pub fn try_docker(&self, args: &[&str]) -> Output {
        let host = format!("unix://{}", self.socket().display());
        run(
            system_command("docker").arg("--host").arg(&host).args(args),
            DOCKER_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("docker {}: {e}", args.join(" ")))
    }

    /// Runs `docker ARGS`, panicking with its stderr unless it succeeds; returns its stdout
    /// trimmed.
    pub fn docker(&self, args: &[&str]) -> String {
        let output = self.try_docker(args);
        assert!(
            output.status.success(),
            "docker {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Starts a container named `name` from [`IMAGE`] running `command`, detached and with
    /// no network, and returns its full id.
    pub fn run(&self, name: &str, command: &[&str]) -> String {
        let mut args = vec![
            "run",
            "--detach",
            "--network",
            "none",
            "--name",
            name,
            IMAGE,
        ];
        args.extend_from_slice(command);
        self.docker(&args)
    }

    /// `docker inspect NAME`: the engine's own description of the container.
    pub fn inspect(&self, name: &str) -> Value {
        let json = self.docker(&["inspect", name]);
        match serde_json::from_str(&json) {
            Ok(Value::Array(mut all)) if all.len() == 1 => all.remove(0),
            other => panic!("docker inspect {name}: expected one object, got {other:?}"),
        }
    }

    /// The container's cgroup, relative to the v2 hierarchy: `/docker/ID` with the cgroupfs
    /// driver the rig's engine uses.
    pub fn cgroup(&self, name: &str) -> String {
        let id = self.inspect(name)["Id"]
            .as_str()
            .expect("docker inspect has an Id")
            .to_owned();
        format!("/docker/{id}")
    }

    /// Kills the engine as a crash would (SIGKILL; its containerd goes with it, the containers
    /// keep running under their shims) and waits until its socket no longer answers.
    pub fn kill(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.answers() {
            assert!(
                Instant::now() < deadline,
                "the engine still answers 30 s after SIGKILL"
            );
            sleep(Duration::from_millis(100));
        }
    }

    /// Starts the engine again on the same state, after [`Self::kill`].
    pub fn restart(&mut self) {
        assert!(self.daemon.is_none(), "the engine is running");
        self.spawn();
    }

    fn answers(&self) -> bool {
        self.socket().exists() && self.try_docker(&["version"]).status.success()
    }

    fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("dockerd.log"))
            .unwrap_or_else(|e| panic!("open dockerd.log: {e}"));
        let mut command = system_command("dockerd");
        command
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none"])
            // Without it an engine that restarts after a crash kills the containers that ran
            // on (seen with 20.10: `Exited (137)`); with it they live on, as on hosts that
            // must not lose containers to an engine restart.
            .arg("--live-restore")
            .arg("--data-root")
            .arg(self.dir.join("root"))
            .arg("--exec-root")
            .arg(self.dir.join("exec"))
            .arg("--pidfile")
            .arg(self.dir.join("docker.pid"))
            .arg("--host")
            .arg(format!("unix://{}", self.socket().display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log descriptor"))
            .stderr(log);
        // SAFETY: setsid is async-signal-safe. Its own session keeps the engine out of the
        // test's process group and terminal.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        self.daemon = Some(
            command
                .spawn()
                .unwrap_or_else(|e| panic!("start dockerd: {e}")),
        );
        let deadline = Instant::now() + START_TIMEOUT;
        while !self.answers() {
            assert!(
                Instant::now() < deadline,
                "dockerd did not answer within {START_TIMEOUT:?}; its log:\n{}",
                fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
            );
            sleep(Duration::from_millis(100));
        }
    }

    /// `docker import` of a tar of the host's static busybox with its applets.
    fn import_image(&self) {
        let rootfs = self.dir.join("rootfs");
        busybox_rootfs(&rootfs, &["sh", "dd", "sleep", "timeout"]);
        let tar = self.dir.join("rootfs.tar");
        let output = run(
            system_command("tar")
                .args(["--numeric-owner", "--owner=0", "--group=0", "-cf"])
                .arg(&tar)
                .arg("-C")
                .arg(&rootfs)
                .arg("."),
            DOCKER_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("tar the rootfs: {e}"));
        assert!(
            output.status.success(),
            "tar the rootfs: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        self.docker(&["import", tar.to_str().expect("UTF-8 path"), IMAGE]);
    }
}

impl Drop for DockerEngine {
    fn drop(&mut self) {
        // No panic here: during unwinding a second panic would abort the whole test binary.
        if self.daemon.is_some() && self.answers() {
            let ids = self.try_docker(&["ps", "--all", "--quiet", "--no-trunc"]);
            let ids = String::from_utf8_lossy(&ids.stdout).into_owned();
            for id in ids.split_whitespace() {
                let removed = self.try_docker(&["rm", "--force", "--volumes", id]);
                if !removed.status.success() {
                    eprintln!(
                        "docker rig: cannot remove container {id}: {}",
                        String::from_utf8_lossy(&removed.stderr).trim()
                    );
                }
            }
            let _ = self.try_docker(&["rmi", "--force", IMAGE]);
        }
        if let Some(mut daemon) = self.daemon.take() {
            // SIGTERM first: the engine then stops its containerd cleanly.
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while daemon.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                sleep(Duration::from_millis(50));
            }
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
        clean(&self.dir);
    }
}

/// Removes what an engine whose state is in `dir` left: processes that name the directory
/// on their command line (the engine, its containerd, the containers' shims) and the
/// containers' processes (the shims' children), mounts under it, and the directory.
fn clean(dir: &Path) {
    if !dir.exists() {
        return;
    }
    let needle = dir.to_string_lossy().into_owned();
    let mut pids: Vec<i32> = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            pids.push(pid);
        }
    }
    // The containers' processes are the shims' children; kill them first, then the shims.
    let children: Vec<i32> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<i32>().ok()?;
            let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
            let ppid: i32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            pids.contains(&ppid).then_some(pid)
        })
        .collect();
    for pid in children.iter().chain(&pids) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    if !pids.is_empty() {
        eprintln!(
            "docker rig: killed {} processes left by the engine in {}",
            pids.len() + children.len(),
            dir.display()
        );
        sleep(Duration::from_millis(200));
    }
    // Deepest first, so that nested mounts come off before their parents.
    let mut mounts: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_whitespace().nth(4).map(str::to_owned))
        .filter(|point| point.starts_with(&needle))
        .collect();
    mounts.sort_by_key(|point| std::cmp::Reverse(point.len()));
    for point in mounts {
        let _ = run(
            system_command("umount").args(["--lazy", &point]),
            Duration::from_secs(30),
        );
    }
    // The containers' cgroups, which the engine would have removed: empty now, so `rmdir`
    // takes them, in every hierarchy.
    let containers = fs::read_dir(dir.join("root/containers"))
        .into_iter()
        .flatten()
        .flatten();
    for id in containers.map(|entry| entry.file_name()) {
        let hierarchies = fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten();
        for hierarchy in hierarchies
            .map(|entry| entry.path())
            .chain([PathBuf::from("/sys/fs/cgroup")])
        {
            let _ = fs::remove_dir(hierarchy.join("docker").join(&id));
        }
    }
    if let Err(error) = fs::remove_dir_all(dir) {
        eprintln!("docker rig: cannot remove {}: {error}", dir.display());
    }
}

/// Cleans the engine directories of test processes that no longer exist.
fn clean_orphans() {
    for entry in fs::read_dir(STATE_ROOT).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.rsplit('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("docker rig: cleaning {name}, left behind by test process {pid}");
            clean(&entry.path());
        }
    }
}
