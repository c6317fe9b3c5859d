//! Everything that crosses the kernel boundary: map and program names, map sizes and the
//! `#[repr(C)]` values stored in maps. `lynx-ebpf` and `lynx-user` both build against this
//! crate, so a layout change is a compile-time change on both sides at once.
//!
//! Map names are the UPPER_CASE statics in `lynx-ebpf`; the kernel truncates object names to
//! 15 bytes, so every name here stays within that.
#![no_std]

/// Per-CPU hash: cgroup v2 id (`u64`) -> nanoseconds on CPU ([`CpuTime`]).
pub const CGROUP_CPU_MAP: &str = "CGROUP_CPU";
/// Capacity of [`CGROUP_CPU_MAP`]: cgroups that can hold a counter at one time.
pub const CGROUP_CPU_ENTRIES: u32 = 16384;

/// Per-CPU array with one [`CpuSlice`]: the slice the CPU is running now.
pub const CPU_SLICE_MAP: &str = "CPU_SLICE";

/// Per-CPU array of `u64` counters of events the kernel side had to drop, indexed by
/// the `DROP_*` constants.
pub const DROPS_MAP: &str = "DROPS";
/// A cgroup's CPU time could not be recorded because [`CGROUP_CPU_MAP`] was full.
pub const DROP_CGROUP_CPU_FULL: u32 = 0;
/// Number of slots in [`DROPS_MAP`].
pub const DROP_KINDS: u32 = 1;

/// Program on the `sched_switch` raw tracepoint.
pub const SCHED_SWITCH_PROGRAM: &str = "lynx_sched_switch";
/// Raw tracepoint that [`SCHED_SWITCH_PROGRAM`] attaches to (`sched/sched_switch`).
pub const SCHED_SWITCH_TRACEPOINT: &str = "sched_switch";

/// Program on the software cpu-clock perf event of every CPU.
pub const CPU_CLOCK_PROGRAM: &str = "lynx_cpu_clock";

/// CPU time charged to one cgroup on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTime {
    /// Nanoseconds that tasks of the cgroup spent on this CPU.
    pub on_cpu_ns: u64,
}

/// State of one CPU between two context switches.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuSlice {
    /// `bpf_ktime_get_ns()` when the last slice ended on this CPU (a context switch or a
    /// cpu-clock sample); 0 before the first.
    pub last_switch_ns: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` structs of `u64` fields: no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::CpuTime {}
    unsafe impl aya::Pod for super::CpuSlice {}
}
