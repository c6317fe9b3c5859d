//! Helpers for Lynx's privileged end-to-end tests: the gate that makes a test that cannot run
//! fail under CI, RAII guards for what the tests create, and independent oracles (the kernel's
//! own cgroup accounting) to check Lynx's counters against.
use std::{
    fs,
    io::Write,
    os::unix::{fs::MetadataExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use lynx::collector::{
    cgroupfs::CgroupLayout,
    kernel::{KernelCounters, LoadOptions},
};

pub mod bench;
pub mod browser;
pub mod control;
pub mod daemon;
pub mod docker;
pub mod http_client;
pub mod lxd;
pub mod netns;
pub mod nginx;
pub mod package;
pub mod service;
pub mod tmux;

/// How much slower than on the host the tests' waits may take: the kernel matrix's guests
/// (the `guest` feature) run on emulated CPUs, where loading the programs alone takes 10 to
/// 20 s.
pub const SLOWDOWN: u32 = if cfg!(feature = "guest") { 6 } else { 1 };

/// `ticks` of the kernel's user-visible clock (`/proc` CPU times) as a duration.
pub fn clock_ticks(ticks: u64) -> Duration {
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100);
    Duration::from_nanos(ticks * 1_000_000_000 / hz)
}

/// True when this test may go on. Without root it fails under `CI=true` and is skipped, with
/// a line saying so, elsewhere.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: needs root to load eBPF programs, and CI=true forbids skipping"
    );
    eprintln!("{test}: skipped, needs root (run `cargo xtask test` as root)");
    false
}

/// Lynx's kernel programs loaded and attached with maps private to this test, so that
/// neither a running daemon nor another test shares its counts.
pub fn private_kernel_counters() -> KernelCounters {
    let layout = CgroupLayout::detect().expect("cgroup layout");
    KernelCounters::load(&LoadOptions {
        cgroup_root: layout.unified,
        pin_dir: None,
        count_host_network: false,
        nginx_byte_hooks: Default::default(),
    })
    .expect("load and attach lynx's programs")
}

/// A PATH with the sbin directories, which a test's environment may lack but the rigs' daemons
/// (`lxd`, `dnsmasq`, `nginx`) are in.
pub const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Panics, naming `program`, unless it is installed. `cargo xtask test` installs every program
/// the tests run (xtask/src/setup.rs); the tests themselves install nothing.
pub fn require(program: &str) {
    assert!(
        SYSTEM_PATH
            .split(':')
            .any(|dir| Path::new(dir).join(program).is_file()),
        "{program} is not installed: `cargo xtask setup` installs what the tests run"
    );
}

/// The `lynx` binary that `cargo xtask test` built.
pub fn lynx_bin() -> PathBuf {
    std::env::var_os("LYNX_BIN")
        .expect("LYNX_BIN is unset: run the privileged tests through `cargo xtask test`")
        .into()
}

/// Runs `lynx ARGS`, which must succeed, and returns its standard output.
pub fn lynx_ok(args: &[&str]) -> String {
    let output = Command::new(lynx_bin())
        .args(args)
        .output()
        .expect("run lynx");
    assert!(
        output.status.success(),
        "lynx {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("lynx prints UTF-8")
}

/// Checks `metrics` with `promtool check metrics` (Debian package `prometheus`), which must
/// accept it without a remark.
pub fn promtool_check(metrics: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("run promtool: {e} (it is in Debian's package prometheus: apt-get install prometheus)")
        });
    child
        .stdin
        .take()
        .expect("promtool's stdin")
        .write_all(metrics.as_bytes())
        .expect("feed promtool");
    let output = child.wait_with_output().expect("wait for promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && said.trim().is_empty(),
        "promtool check metrics: {}: {said}\n{metrics}",
        output.status
    );
}

/// Runs `command`, which must succeed, and returns its standard output.
pub fn run_ok(command: &mut Command) -> String {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?}: {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The workspace root, for reading the docs the tests check.
pub fn workspace() -> PathBuf {
    std::env::var_os("LYNX_WORKSPACE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
}

/// The example document of docs/snapshot.md (its first ```json block).
pub fn documented_example() -> serde_json::Value {
    let path = workspace().join("docs/snapshot.md");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let start = text
        .find("```json\n")
        .expect("docs/snapshot.md has a ```json example")
        + 8;
    let end = start
        + text[start..]
            .find("```")
            .expect("the example block is closed");
    serde_json::from_str(&text[start..end]).expect("the documented example is valid JSON")
}

/// A child process that is killed and reaped when dropped, also when a test panics.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    /// Kills the child and waits for it.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `command` (no stdin) to its end and returns its output; panics, killing it, after
/// `timeout`, so that a command waiting for input or a key never hangs the suite. The outputs
/// must fit in a pipe's buffer.
pub fn output_within(command: &mut Command, timeout: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {command:?}: {e}"));
    let deadline = Instant::now() + timeout;
    while child.try_wait().expect("poll child").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} still ran after {timeout:?}");
        }
        sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("collect output")
}

/// Starts `command` inside the cgroups at `dirs` (one per hierarchy) before it executes
/// anything.
pub fn spawn_in_cgroups<'a>(
    dirs: impl IntoIterator<Item = &'a PathBuf>,
    command: &mut Command,
) -> Child {
    let procs: Vec<fs::File> = dirs
        .into_iter()
        .map(|dir| {
            fs::OpenOptions::new()
                .write(true)
                .open(dir.join("cgroup.procs"))
        })
        .collect::<Result<_, _>>()
        .expect("open cgroup.procs");
    let fds: Vec<i32> = procs.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect();
    // SAFETY: the closure only calls write(2), which is async-signal-safe, on descriptors
    // opened before the fork.
    unsafe {
        command.pre_exec(move || {
            for &fd in &fds {
                // "0" moves the writing process itself.
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = command.spawn().expect("spawn into a cgroup");
    drop(procs);
    child
}

/// A cgroup made for one test: in the v2 hierarchy, and in the v1 `cpuacct` hierarchy too on
/// a hybrid host. Its processes are killed and its directories removed on drop.
pub struct TestCgroup {
    v2: PathBuf,
    cpuacct: Option<PathBuf>,
}

impl TestCgroup {
    pub fn create(name: &str) -> Self {
        Self::at_root(&format!("lynx-test-{name}-{}", std::process::id()))
    }

    /// A cgroup named `leaf` below the root, as a container manager names them
    /// (`lxc.payload.NAME`).
    pub fn at_root(leaf: &str) -> Self {
        let layout = CgroupLayout::detect().expect("cgroup layout");
        let v2 = layout.unified.join(leaf);
        fs::create_dir(&v2).unwrap_or_else(|e| panic!("create {}: {e}", v2.display()));
        let cpuacct = layout.v1.get("cpuacct").map(|root| root.join(leaf));
        if let Some(dir) = &cpuacct {
            fs::create_dir(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        }
        Self { v2, cpuacct }
    }

    /// The cgroup v2 id: the inode number of its directory.
    pub fn id(&self) -> u64 {
        fs::metadata(&self.v2).expect("stat test cgroup").ino()
    }

    /// True when a v1 `cpuacct` twin exists (hybrid host).
    pub fn has_cpuacct(&self) -> bool {
        self.cpuacct.is_some()
    }

    /// Starts `command` inside this cgroup (every hierarchy) before it executes anything.
    pub fn spawn(&self, command: &mut Command) -> ChildGuard {
        ChildGuard(spawn_in_cgroups(self.dirs(), command))
    }

    /// CPU time from the v2 `cpu.stat` `usage_usec`, in nanoseconds.
    pub fn v2_usage_ns(&self) -> u64 {
        cpu_stat_usage_ns(&self.v2)
    }

    /// The file `name` of its v2 directory (`memory.current`, `io.stat`...).
    pub fn v2_file(&self, name: &str) -> PathBuf {
        self.v2.join(name)
    }

    /// Freezes (or thaws) the cgroup through cgroup v2's `cgroup.freeze`, and waits until the
    /// kernel reports it done in `cgroup.events`.
    pub fn freeze(&self, frozen: bool) {
        let value = if frozen { "1" } else { "0" };
        fs::write(self.v2.join("cgroup.freeze"), value).expect("write cgroup.freeze");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !read(&self.v2.join("cgroup.events")).contains(&format!("frozen {value}")) {
            assert!(
                Instant::now() < deadline,
                "cgroup.freeze {value} not done in 10 s"
            );
            sleep(Duration::from_millis(10));
        }
    }

    /// CPU time from the v1 `cpuacct.usage`, in nanoseconds, on a hybrid host.
    pub fn cpuacct_usage_ns(&self) -> Option<u64> {
        let dir = self.cpuacct.as_ref()?;
        Some(
            read(&dir.join("cpuacct.usage"))
                .trim()
                .parse()
                .expect("cpuacct.usage is a number"),
        )
    }

    fn dirs(&self) -> impl Iterator<Item = &PathBuf> {
        std::iter::once(&self.v2).chain(&self.cpuacct)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for dir in self.dirs() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                if procs.trim().is_empty() {
                    break;
                }
                for pid in procs.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
                    // SAFETY: kill has no memory-safety preconditions.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                sleep(Duration::from_millis(20));
            }
            if let Err(error) = fs::remove_dir(dir) {
                eprintln!("cannot remove test cgroup {}: {error}", dir.display());
            }
        }
    }
}

/// The CPU time of the cgroup v2 directory `dir` in nanoseconds: the kernel's own accounting
/// (`cpu.stat` `usage_usec`), the oracle for Lynx's CPU counters.
pub fn cpu_stat_usage_ns(dir: &Path) -> u64 {
    let stat = read(&dir.join("cpu.stat"));
    let usec: u64 = stat
        .lines()
        .find_map(|line| line.strip_prefix("usage_usec "))
        .and_then(|n| n.trim().parse().ok())
        .expect("cpu.stat has usage_usec");
    usec * 1000
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Asserts `measured` is within `tolerance` (a fraction) of the oracle's `expected`.
pub fn assert_close(measured: u64, expected: u64, tolerance: f64, what: &str) {
    let error = (measured as f64 - expected as f64).abs() / expected.max(1) as f64;
    assert!(
        error <= tolerance,
        "{what}: lynx measured {measured}, the oracle says {expected}: off by {:.2}% (allowed {:.2}%)",
        error * 100.0,
        tolerance * 100.0
    );
    eprintln!(
        "{what}: lynx {measured}, oracle {expected}, off by {:.3}%",
        error * 100.0
    );
}

/// The container called `name` in `snapshot`.
pub fn entry<'a>(snapshot: &'a lynx::model::Snapshot, name: &str) -> &'a lynx::model::Container {
    snapshot
        .containers
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("{name} is not in the snapshot"))
}

/// A number in a file (cgroupfs, sysfs).
pub fn read_number(path: &Path) -> u64 {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{} is not a number: {e}", path.display()))
}

/// The kernel's own per-cgroup accounting for one container.
pub struct KernelOracle {
    layout: CgroupLayout,
    top: String,
}

impl KernelOracle {
    /// The cgroup at `top`, relative to each hierarchy's root (`/docker/ID`).
    pub fn of(top: &str) -> Self {
        Self {
            layout: CgroupLayout::detect().expect("cgroup layout"),
            top: top.trim_start_matches('/').to_owned(),
        }
    }

    /// LXD's or LXC's container `name`.
    pub fn lxc(name: &str) -> Self {
        Self::of(&format!("lxc.payload.{name}"))
    }

    fn v2(&self, file: &str) -> PathBuf {
        self.layout.unified.join(&self.top).join(file)
    }

    fn v1(&self, controller: &str, file: &str) -> Option<PathBuf> {
        Some(self.layout.v1.get(controller)?.join(&self.top).join(file))
    }

    pub fn cpu_ns(&self) -> u64 {
        cpu_stat_usage_ns(&self.v2(""))
    }

    /// Waits until the cgroup has stopped using CPU (under 5 ms in 300 ms, at most 30 s), so
    /// that a workload's client returning is not taken for the workload having ended.
    pub fn wait_quiet(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = self.cpu_ns();
        loop {
            sleep(Duration::from_millis(300));
            let now = self.cpu_ns();
            if now - last < 5_000_000 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} still used {} ms of CPU in 300 ms after 30 s",
                self.top,
                (now - last) / 1_000_000
            );
            last = now;
        }
    }

    pub fn memory_bytes(&self) -> u64 {
        match self.v1("memory", "memory.usage_in_bytes") {
            Some(path) if path.exists() => read_number(&path),
            _ => read_number(&self.v2("memory.current")),
        }
    }

    /// Makes the kernel keep per-cgroup I/O statistics for this container: blk-throttle counts
    /// only on devices with a rule, so this sets one (1 TiB/s, which throttles nothing). On a
    /// pure v2 host `io.stat` counts anyway.
    pub fn enable_io_accounting(&self) {
        let Some(dir) = self.v1("blkio", "") else {
            return;
        };
        for line in fs::read_to_string("/proc/partitions")
            .expect("partitions")
            .lines()
            .skip(2)
        {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // Whole disks only (minor 0): that is where the rule applies.
            if let [major, "0", ..] = fields.as_slice() {
                let rule = format!("{major}:0 1099511627776");
                for file in [
                    "blkio.throttle.read_bps_device",
                    "blkio.throttle.write_bps_device",
                ] {
                    fs::write(dir.join(file), &rule).unwrap_or_else(|e| panic!("{file}: {e}"));
                }
            }
        }
    }

    /// (read bytes, write bytes, write operations) the kernel accounted to the cgroup.
    pub fn io(&self) -> (u64, u64, u64) {
        let sum = |text: &str, op: &str| -> u64 {
            text.lines()
                .filter_map(|l| l.strip_suffix("").and_then(|l| l.split_once(' ')))
                .filter_map(|(_, rest)| rest.strip_prefix(op)?.trim().parse::<u64>().ok())
                .sum()
        };
        match self.v1("blkio", "blkio.throttle.io_service_bytes_recursive") {
            Some(bytes) if bytes.exists() => {
                let bytes = fs::read_to_string(bytes).expect("io_service_bytes");
                let ops = fs::read_to_string(
                    self.v1("blkio", "blkio.throttle.io_serviced_recursive")
                        .expect("v1"),
                )
                .expect("io_serviced");
                (
                    sum(&bytes, "Read "),
                    sum(&bytes, "Write "),
                    sum(&ops, "Write "),
                )
            }
            _ => {
                // io.stat: `MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. ...` per device.
                let stat = fs::read_to_string(self.v2("io.stat")).expect("read io.stat");
                let field = |name: &str| -> u64 {
                    stat.split_whitespace()
                        .filter_map(|kv| {
                            kv.strip_prefix(name)?
                                .strip_prefix('=')?
                                .parse::<u64>()
                                .ok()
                        })
                        .sum()
                };
                (field("rbytes"), field("wbytes"), field("wios"))
            }
        }
    }
}
