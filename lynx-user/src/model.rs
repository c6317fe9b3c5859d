//! The snapshot document: what lynx publishes each interval. Built from two [`Sample`]s by
//! plain functions; serialised by the sinks. `docs/snapshot.md` documents every field.
use std::{collections::HashMap, time::SystemTime};

use serde::{Deserialize, Serialize};

use crate::collector::Sample;

/// Schema version of [`Snapshot`]; raised whenever a field changes meaning or goes away.
pub const SNAPSHOT_VERSION: u32 = 1;

/// One /proc-like document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub version: u32,
    pub host: Host,
    pub cgroups: Vec<CgroupUsage>,
    pub kernel_drops: KernelDrops,
}

/// Host-wide figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    /// RFC 3339, UTC, when the second sample was taken.
    pub timestamp: String,
    /// Length of the interval the rates are computed over.
    pub interval_ms: u64,
    pub kernel: String,
    pub cpus: u32,
    /// Busy share of all CPUs over the interval: 100 is every CPU busy.
    pub cpu_percent: f64,
    pub memory_total_mb: u64,
    pub memory_free_mb: u64,
    pub memory_available_mb: u64,
    /// `total - available`, as `free(1)` counts it.
    pub memory_used_mb: u64,
}

/// CPU use of one cgroup.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CgroupUsage {
    pub id: u64,
    pub path: String,
    /// Cumulative nanoseconds on CPU since the kernel counters started.
    pub cpu_ns: u64,
    /// CPU use over the interval: 100 is one full CPU.
    pub cpu_percent: f64,
}

/// Events the kernel programs could not record since they were loaded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelDrops {
    pub cgroup_cpu_map_full: u64,
}

/// Builds the document for the interval from `previous` to `current`.
pub fn snapshot(previous: &Sample, current: &Sample) -> Snapshot {
    let elapsed = current.taken.saturating_duration_since(previous.taken);
    let elapsed_ns = elapsed.as_nanos().max(1) as f64;
    let before: HashMap<u64, u64> = previous.cgroups.iter().map(|c| (c.id, c.cpu_ns)).collect();
    let cgroups = current
        .cgroups
        .iter()
        .map(|c| CgroupUsage {
            id: c.id,
            path: c.path.clone(),
            cpu_ns: c.cpu_ns,
            cpu_percent: percent(
                c.cpu_ns
                    .saturating_sub(before.get(&c.id).copied().unwrap_or(0)) as f64,
                elapsed_ns,
            ),
        })
        .collect();

    let (cpu_before, cpu_now) = (previous.host.cpu, current.host.cpu);
    let mem = current.host.memory;
    let mb = |kib: u64| kib / 1024;
    Snapshot {
        version: SNAPSHOT_VERSION,
        host: Host {
            timestamp: rfc3339(current.wall),
            interval_ms: elapsed.as_millis().try_into().unwrap_or(u64::MAX),
            kernel: current.host.kernel.clone(),
            cpus: current.host.cpus,
            cpu_percent: percent(
                cpu_now.busy.saturating_sub(cpu_before.busy) as f64,
                cpu_now.total.saturating_sub(cpu_before.total) as f64,
            ),
            memory_total_mb: mb(mem.total_kib),
            memory_free_mb: mb(mem.free_kib),
            memory_available_mb: mb(mem.available_kib),
            memory_used_mb: mb(mem.total_kib.saturating_sub(mem.available_kib)),
        },
        cgroups,
        kernel_drops: KernelDrops {
            cgroup_cpu_map_full: current.drops.cgroup_cpu_map_full,
        },
    }
}

/// `part / whole` in percent, rounded to hundredths; 0 when `whole` is 0.
fn percent(part: f64, whole: f64) -> f64 {
    if whole <= 0.0 {
        return 0.0;
    }
    (part / whole * 10_000.0).round() / 100.0
}

fn rfc3339(at: SystemTime) -> String {
    time::OffsetDateTime::from(at)
        .format(&time::format_description::well_known::Rfc3339)
        .expect("a SystemTime after 1970 formats as RFC 3339")
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::collector::{
        CgroupSample,
        host::{CpuTicks, HostSample, MemInfo},
        kernel::Drops,
    };

    fn sample(at: Instant, busy: u64, total: u64, cgroups: &[(u64, &str, u64)]) -> Sample {
        Sample {
            taken: at,
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000),
            host: HostSample {
                memory: MemInfo {
                    total_kib: 8 * 1024 * 1024,
                    free_kib: 2 * 1024 * 1024,
                    available_kib: 6 * 1024 * 1024,
                },
                cpu: CpuTicks { busy, total },
                cpus: 2,
                kernel: "6.18.0".into(),
            },
            cgroups: cgroups
                .iter()
                .map(|&(id, path, cpu_ns)| CgroupSample {
                    id,
                    path: path.into(),
                    cpu_ns,
                })
                .collect(),
            drops: Drops::default(),
        }
    }

    #[test]
    fn cgroup_percent_is_share_of_one_cpu_over_the_interval() {
        let start = Instant::now();
        let before = sample(start, 0, 0, &[(7, "/busy", 1_000), (8, "/idle", 5)]);
        let after = sample(
            start + Duration::from_secs(2),
            0,
            0,
            &[
                (7, "/busy", 1_000 + 3_000_000_000),
                (8, "/idle", 5),
                (9, "/new", 20_000_000),
            ],
        );
        let doc = snapshot(&before, &after);
        let by_path = |p: &str| doc.cgroups.iter().find(|c| c.path == p).expect("listed");
        assert_eq!(by_path("/busy").cpu_percent, 150.0, "1.5 CPUs busy");
        assert_eq!(
            by_path("/busy").cpu_ns,
            3_000_001_000,
            "cpu_ns is cumulative"
        );
        assert_eq!(by_path("/idle").cpu_percent, 0.0);
        assert_eq!(
            by_path("/new").cpu_percent,
            1.0,
            "a new cgroup counts from zero"
        );
        assert_eq!(doc.host.interval_ms, 2000);
    }

    #[test]
    fn host_figures_come_from_tick_deltas_and_meminfo() {
        let start = Instant::now();
        let doc = snapshot(
            &sample(start, 100, 1000, &[]),
            &sample(start + Duration::from_secs(1), 150, 1200, &[]),
        );
        assert_eq!(doc.host.cpu_percent, 25.0);
        assert_eq!(doc.host.memory_total_mb, 8192);
        assert_eq!(doc.host.memory_free_mb, 2048);
        assert_eq!(doc.host.memory_used_mb, 2048);
        assert_eq!(doc.host.timestamp, "2026-11-18T11:06:40Z");
        assert_eq!(doc.version, SNAPSHOT_VERSION);
    }

    #[test]
    fn zero_length_interval_gives_zero_not_nan() {
        let start = Instant::now();
        let doc = snapshot(&sample(start, 5, 5, &[]), &sample(start, 5, 5, &[]));
        assert_eq!(doc.host.cpu_percent, 0.0);
    }
}
