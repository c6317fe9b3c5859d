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

/// Per-CPU array with one [`CpuSlice`]: the task the CPU runs now and the CPU time not yet
/// moved into [`CGROUP_CPU_MAP`].
pub const CPU_SLICE_MAP: &str = "CPU_SLICE";

/// Read-only global set by the loader: byte offset of `se.sum_exec_runtime` in the running
/// kernel's `struct task_struct`, read from its BTF (the layout differs between builds).
pub const TASK_RUNTIME_OFFSET_GLOBAL: &str = "TASK_RUNTIME_OFFSET";

/// Per-CPU array of `u64` counters of events the kernel side had to drop, indexed by
/// the `DROP_*` constants.
pub const DROPS_MAP: &str = "DROPS";
/// A cgroup's CPU time could not be recorded because [`CGROUP_CPU_MAP`] was full.
pub const DROP_CGROUP_CPU_FULL: u32 = 0;
/// Number of slots in [`DROPS_MAP`].
pub const DROP_KINDS: u32 = 1;

/// Program on the `sched_switch` BTF tracepoint.
pub const SCHED_SWITCH_PROGRAM: &str = "lynx_sched_switch";
/// Tracepoint that [`SCHED_SWITCH_PROGRAM`] attaches to (`sched/sched_switch`).
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

/// What one CPU is running, and CPU time charged on it but not yet moved to
/// [`CGROUP_CPU_MAP`]. While one cgroup keeps the CPU its time accumulates here, so a context
/// switch costs no hash update; it moves to the map when another cgroup gets the CPU and on
/// every cpu-clock sample, so at most one sample period (10 ms) of a CPU's time is here.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuSlice {
    /// Address of the `task_struct` switched in last; 0 before the first switch.
    pub task: u64,
    /// That task's `se.sum_exec_runtime` when last charged (switch-in or sample).
    pub task_runtime_ns: u64,
    /// cgroup v2 id that [`Self::pending_ns`] belongs to.
    pub cgroup_id: u64,
    /// Nanoseconds charged to [`Self::cgroup_id`] not yet in [`CGROUP_CPU_MAP`].
    pub pending_ns: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` structs of `u64` fields: no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::CpuTime {}
    unsafe impl aya::Pod for super::CpuSlice {}
}
