//! What the benches of `tests/src/bin/` share: many cgroups with a process each, and the
//! daemon's cost per collection tick and its memory.
use std::{
    fs,
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use lynx::collector::cgroupfs::CgroupLayout;

use crate::{daemon::DaemonUnderTest, spawn_in_cgroups};

/// How long the daemon is measured.
pub const WINDOW: Duration = Duration::from_secs(10);

/// 1,000 cgroups, each with a sleeping process; all removed on drop.
pub struct ManyCgroups {
    root: PathBuf,
    children: Vec<Child>,
}

impl ManyCgroups {
    pub fn create(count: usize) -> Self {
        let unified = CgroupLayout::detect().expect("cgroup layout").unified;
        let root = unified.join(format!("lynx-bench-{}", std::process::id()));
        fs::create_dir_all(&root).expect("create bench cgroup root");
        let mut children = Vec::with_capacity(count);
        for n in 0..count {
            let dir = root.join(format!("cg-{n}"));
            fs::create_dir(&dir).expect("create bench cgroup");
            let mut command = Command::new("sleep");
            command.arg("600").stdout(Stdio::null());
            children.push(spawn_in_cgroups([&dir], &mut command));
        }
        Self { root, children }
    }
}

impl Drop for ManyCgroups {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Ok(entries) = fs::read_dir(&self.root) {
            for entry in entries.flatten() {
                let _ = fs::remove_dir(entry.path());
            }
        }
        let _ = fs::remove_dir(&self.root);
    }
}

/// Resident memory of `pid` now, in MB.
pub fn rss_mb(pid: u32) -> f64 {
    memory_mb(pid, "VmRSS:")
}

/// `field` of `/proc/PID/status` (a size in kB, as `VmRSS:` or `VmHWM:`), in MB.
pub fn memory_mb(pid: u32, field: &str) -> f64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read daemon status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    kib / 1024.0
}

/// The daemon's CPU per tick over [`WINDOW`], its median `sample_ms`, and its RSS in MB.
pub fn measure_daemon(daemon: &DaemonUnderTest) -> (f64, f64, f64) {
    daemon.next_snapshot();
    let (cpu_before, started) = (daemon.cpu_time(), Instant::now());
    let mut samples = Vec::new();
    let mut last = String::new();
    while started.elapsed() < WINDOW {
        if let Some(snapshot) = daemon.snapshot()
            && snapshot.host.timestamp != last
        {
            last = snapshot.host.timestamp;
            samples.push(snapshot.collector.sample_ms);
        }
        sleep(Duration::from_millis(10));
    }
    let cpu = daemon.cpu_time() - cpu_before;
    let ticks = samples.len().max(1) as f64;
    samples.sort_by(f64::total_cmp);
    (
        cpu.as_secs_f64() * 1000.0 / ticks,
        samples[samples.len() / 2],
        rss_mb(daemon.pid()),
    )
}
