//! Host-wide figures from procfs: memory, CPU time, kernel release.
use std::{fs, io, path::PathBuf};

/// Errors of reading procfs.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: no {field} line")]
    Missing { path: PathBuf, field: &'static str },
}

/// `/proc/meminfo` figures, in KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemInfo {
    pub total_kib: u64,
    pub free_kib: u64,
    pub available_kib: u64,
}

/// The aggregate `cpu` line of `/proc/stat`, in clock ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTicks {
    /// Ticks in any state but idle and iowait.
    pub busy: u64,
    /// Ticks in all states.
    pub total: u64,
}

/// One reading of the host's figures.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostSample {
    pub memory: MemInfo,
    pub cpu: CpuTicks,
    /// Online CPUs (the `cpuN` lines of `/proc/stat`).
    pub cpus: u32,
    /// Kernel release, as `uname -r`.
    pub kernel: String,
    /// Load average over 1, 5 and 15 minutes.
    pub load_average: [f64; 3],
}

impl HostSample {
    /// Reads `/proc`.
    pub fn read() -> Result<Self, HostError> {
        let meminfo = read("/proc/meminfo")?;
        let stat = read("/proc/stat")?;
        let (cpu, cpus) = parse_stat(&stat).ok_or_else(|| HostError::Missing {
            path: "/proc/stat".into(),
            field: "cpu",
        })?;
        Ok(Self {
            memory: parse_meminfo(&meminfo).map_err(|field| HostError::Missing {
                path: "/proc/meminfo".into(),
                field,
            })?,
            cpu,
            cpus,
            kernel: read("/proc/sys/kernel/osrelease")?.trim().to_owned(),
            load_average: parse_loadavg(&read("/proc/loadavg")?).ok_or_else(|| {
                HostError::Missing {
                    path: "/proc/loadavg".into(),
                    field: "load average",
                }
            })?,
        })
    }
}

fn read(path: &str) -> Result<String, HostError> {
    fs::read_to_string(path).map_err(|source| HostError::Read {
        path: path.into(),
        source,
    })
}

/// Parses `/proc/meminfo`; the error names the first missing field.
pub fn parse_meminfo(text: &str) -> Result<MemInfo, &'static str> {
    let field = |name: &'static str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or(name)
    };
    Ok(MemInfo {
        total_kib: field("MemTotal")?,
        free_kib: field("MemFree")?,
        available_kib: field("MemAvailable")?,
    })
}

/// Parses `/proc/stat`: the aggregate CPU ticks and the number of CPUs.
pub fn parse_stat(text: &str) -> Option<(CpuTicks, u32)> {
    let mut lines = text.lines();
    let ticks: Vec<u64> = lines
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .map(|n| n.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]; guest time is
    // already included in user and nice.
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3)? + ticks.get(4).copied().unwrap_or(0);
    let cpus = lines
        .take_while(|line| line.starts_with("cpu"))
        .count()
        .try_into()
        .ok()?;
    Some((
        CpuTicks {
            busy: total - idle,
            total,
        },
        cpus,
    ))
}

/// Parses the three load averages of `/proc/loadavg`.
pub fn parse_loadavg(text: &str) -> Option<[f64; 3]> {
    let mut fields = text.split_whitespace().map(|f| f.parse().ok());
    Some([fields.next()??, fields.next()??, fields.next()??])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loadavg_has_three_averages() {
        assert_eq!(
            parse_loadavg("0.52 0.58 0.59 2/512 12345\n"),
            Some([0.52, 0.58, 0.59])
        );
        assert_eq!(parse_loadavg("0.52 oops"), None);
    }

    #[test]
    fn meminfo_fields_in_kib() {
        let text = "MemTotal:       24576000 kB\nMemFree:        20000000 kB\nMemAvailable:   22000000 kB\nBuffers: 1 kB\n";
        let memory = parse_meminfo(text).expect("parses");
        assert_eq!(memory.total_kib, 24_576_000);
        assert_eq!(memory.free_kib, 20_000_000);
        assert_eq!(memory.available_kib, 22_000_000);
    }

    #[test]
    fn meminfo_without_memavailable_names_it() {
        assert_eq!(
            parse_meminfo("MemTotal: 1 kB\nMemFree: 1 kB\n"),
            Err("MemAvailable")
        );
    }

    #[test]
    fn stat_busy_excludes_idle_and_iowait_and_counts_cpus() {
        let text = "cpu  100 10 50 800 40 0 5 0 7 0\ncpu0 50 5 25 400 20 0 2 0 0 0\ncpu1 50 5 25 400 20 0 3 0 0 0\nintr 1\n";
        let (ticks, cpus) = parse_stat(text).expect("parses");
        assert_eq!(ticks.total, 1005);
        assert_eq!(ticks.busy, 165);
        assert_eq!(cpus, 2);
    }
}
