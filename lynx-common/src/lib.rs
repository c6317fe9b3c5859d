//! Everything that crosses the kernel boundary: map and program names, map sizes and the
//! `#[repr(C)]` values stored in maps. `lynx-ebpf` and `lynx-user` both build against this
//! crate, so a layout change is a compile-time change on both sides at once.
//!
//! Map names are the UPPER_CASE statics in `lynx-ebpf`; the kernel truncates object names to
//! 15 bytes, so every name here stays within that.
#![no_std]

#[cfg(test)]
extern crate std;

pub mod http;

/// Per-CPU hash: cgroup v2 id (`u64`) -> nanoseconds on CPU ([`CpuTime`]).
pub const CGROUP_CPU_MAP: &str = "CGROUP_CPU";

/// Per-CPU array with one [`CpuSlice`]: the task the CPU runs now and the CPU time not yet
/// moved into [`CGROUP_CPU_MAP`].
pub const CPU_SLICE_MAP: &str = "CPU_SLICE";

/// Read-only global set by the loader: byte offset of `se.sum_exec_runtime` in the running
/// kernel's `struct task_struct`, read from its BTF (the layout differs between builds).
pub const TASK_RUNTIME_OFFSET_GLOBAL: &str = "TASK_RUNTIME_OFFSET";

/// Per-CPU cgroup storage: one [`NetCounters`] per cgroup [`NET_INGRESS_PROGRAM`] and
/// [`NET_EGRESS_PROGRAM`] are attached to (a container's top cgroup) and direction, for the
/// traffic of every socket in its subtree. Keyed by the cgroup v2 id and
/// [`NET_INGRESS_ATTACH_TYPE`] or [`NET_EGRESS_ATTACH_TYPE`]. The kernel keeps each value
/// as long as the map and the cgroup exist, across detaching and attaching again.
pub const CONTAINER_NET_MAP: &str = "CONTAINER_NET";
/// The kernel's `BPF_CGROUP_INET_INGRESS` and `BPF_CGROUP_INET_EGRESS`, the attach types in
/// [`CONTAINER_NET_MAP`]'s keys.
pub const NET_INGRESS_ATTACH_TYPE: u32 = 0;
pub const NET_EGRESS_ATTACH_TYPE: u32 = 1;
/// Per-CPU hash: cgroup v2 id (`u64`) -> [`NetCounters`] of its sockets' traffic, counted by
/// [`HOST_NET_INGRESS_PROGRAM`] and [`HOST_NET_EGRESS_PROGRAM`] on the root cgroup.
pub const CGROUP_NET_MAP: &str = "CGROUP_NET";
/// Per-CPU hash: cgroup v2 id (`u64`) -> [`IoCounters`] of the block I/O its tasks submitted.
pub const CGROUP_IO_MAP: &str = "CGROUP_IO";
/// Capacity of each per-cgroup map: cgroups that can hold a counter at one time.
pub const CGROUP_MAP_ENTRIES: u32 = 16384;
/// Capacity of the kernel programs' own LRU map of each task's runtime at its last switch-out
/// (tasks beyond it are forgotten least recently used first).
pub const TASK_RUNTIME_ENTRIES: u32 = 32768;

/// Per-CPU array of `u64` counters of events the kernel side had to drop, indexed by
/// the `DROP_*` constants.
pub const DROPS_MAP: &str = "DROPS";
/// A cgroup's CPU time could not be recorded because [`CGROUP_CPU_MAP`] was full.
pub const DROP_CGROUP_CPU_FULL: u32 = 0;
/// A packet could not be counted because [`CGROUP_NET_MAP`] was full (host counting only).
pub const DROP_CGROUP_NET_FULL: u32 = 1;
/// A block I/O could not be counted because [`CGROUP_IO_MAP`] was full.
pub const DROP_CGROUP_IO_FULL: u32 = 2;
/// nginx opened a connection to an endpoint that got no counter slot
/// ([`http::HTTP_ENDPOINTS_MAP`] full): its connections are not followed.
pub const DROP_HTTP_ENDPOINTS_FULL: u32 = 3;
/// nginx opened a connection when the slots its socket may take in [`http::HTTP_FLOWS_MAP`]
/// were all taken: it is not followed.
pub const DROP_HTTP_FLOWS_FULL: u32 = 4;
/// Number of slots in [`DROPS_MAP`].
pub const DROP_KINDS: u32 = 5;

/// The maps a daemon pins under bpffs, so that its successor continues the counts.
/// nginx's open connections and their counts are among them: a restarted daemon goes on
/// following connections opened before it started.
pub const PINNED_MAPS: [&str; 10] = [
    CGROUP_CPU_MAP,
    CPU_SLICE_MAP,
    CONTAINER_NET_MAP,
    CGROUP_NET_MAP,
    CGROUP_IO_MAP,
    DROPS_MAP,
    http::HTTP_FLOWS_MAP,
    http::HTTP_ENDPOINTS_MAP,
    http::HTTP_COUNTERS_MAP,
    http::HTTP_SLOT_OWNERS_MAP,
];
/// Raised whenever a pinned map's key, value or size changes, so that a new daemon never
/// reuses a pinned map of another layout: pins live in a directory named after it.
pub const MAPS_LAYOUT_VERSION: u32 = 7;

/// Program on the `sched_switch` BTF tracepoint.
pub const SCHED_SWITCH_PROGRAM: &str = "lynx_sched_switch";
/// Tracepoint that [`SCHED_SWITCH_PROGRAM`] attaches to (`sched/sched_switch`).
pub const SCHED_SWITCH_TRACEPOINT: &str = "sched_switch";

/// Program on the software cpu-clock perf event of every CPU.
pub const CPU_CLOCK_PROGRAM: &str = "lynx_cpu_clock";

/// cgroup socket-buffer programs on ingress and egress of each container's top cgroup,
/// counting into [`CONTAINER_NET_MAP`].
pub const NET_INGRESS_PROGRAM: &str = "lynx_net_in";
pub const NET_EGRESS_PROGRAM: &str = "lynx_net_out";
/// cgroup socket-buffer programs on ingress and egress of the v2 root cgroup, when the host's
/// traffic is counted too: per socket cgroup, into [`CGROUP_NET_MAP`].
pub const HOST_NET_INGRESS_PROGRAM: &str = "lynx_host_in";
pub const HOST_NET_EGRESS_PROGRAM: &str = "lynx_host_out";

/// Program on the `block_bio_queue` BTF tracepoint.
pub const BIO_QUEUE_PROGRAM: &str = "lynx_bio_queue";
/// Tracepoint that [`BIO_QUEUE_PROGRAM`] attaches to (`block/block_bio_queue`).
pub const BIO_QUEUE_TRACEPOINT: &str = "block_bio_queue";
/// Read-only globals set by the loader from BTF: offsets of `bi_opf` and `bi_iter.bi_size`
/// in `struct bio`.
pub const BIO_OPF_OFFSET_GLOBAL: &str = "BIO_OPF_OFFSET";
pub const BIO_SIZE_OFFSET_GLOBAL: &str = "BIO_SIZE_OFFSET";

/// CPU time charged to one cgroup on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTime {
    /// Nanoseconds that tasks of the cgroup spent on this CPU.
    pub on_cpu_ns: u64,
}

/// Cgroups whose time one CPU holds pending at once ([`CpuSlice::pending`]).
pub const CPU_PENDING_SLOTS: usize = 8;

/// The [`CpuSlice::pending`] slot of `cgroup_id`: Fibonacci hashing, whose top bits spread
/// the consecutive ids (inode numbers) of sibling cgroups over different slots.
#[inline(always)]
pub const fn pending_slot(cgroup_id: u64) -> usize {
    (cgroup_id.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - CPU_PENDING_SLOTS.trailing_zeros()))
        as usize
}

/// CPU time charged to one cgroup on one CPU and not yet moved to [`CGROUP_CPU_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuPending {
    /// cgroup v2 id; 0 with `ns` 0: the slot has held nothing yet.
    pub cgroup_id: u64,
    pub ns: u64,
}

/// What one CPU is running, and CPU time charged on it but not yet moved to
/// [`CGROUP_CPU_MAP`]. A context switch charges the cgroup's slot in `pending`, an update of a
/// value the CPU just touched; the cgroup map is updated only when another cgroup takes the
/// slot and on every cpu-clock sample, which moves all of them, so at most one sample period
/// (10 ms) of a CPU's time is pending.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuSlice {
    /// Address of the `task_struct` switched in last; 0 before the first switch.
    pub task: u64,
    /// That task's `se.sum_exec_runtime` when last charged (switch-in or sample).
    pub task_runtime_ns: u64,
    /// The running task's time so far in its current slice, as of the last cpu-clock sample,
    /// and its cgroup: not charged yet (the switch that ends the slice charges it), but shown
    /// by readers so that a task that runs for seconds counts while it runs.
    pub running_cgroup_id: u64,
    pub running_ns: u64,
    /// Time charged and not yet in [`CGROUP_CPU_MAP`], by cgroup: `cgroup_id`'s is in slot
    /// [`pending_slot`]`(cgroup_id)`.
    pub pending: [CpuPending; CPU_PENDING_SLOTS],
}

/// Traffic of one cgroup's sockets on one CPU, as the cgroup socket-buffer hooks see it:
/// lengths from the network header on, so without link-layer headers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetCounters {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
}

/// Block I/O that one cgroup's tasks submitted, on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoCounters {
    pub read_bytes: u64,
    pub read_ops: u64,
    pub write_bytes: u64,
    pub write_ops: u64,
}

/// A per-cgroup counter value that adds up: over CPUs, over a container's cgroups.
pub trait Accumulate {
    fn accumulate(&mut self, other: &Self);
}

impl Accumulate for CpuTime {
    fn accumulate(&mut self, other: &Self) {
        self.on_cpu_ns += other.on_cpu_ns;
    }
}

impl Accumulate for NetCounters {
    fn accumulate(&mut self, other: &Self) {
        self.rx_bytes += other.rx_bytes;
        self.rx_packets += other.rx_packets;
        self.tx_bytes += other.tx_bytes;
        self.tx_packets += other.tx_packets;
    }
}

impl Accumulate for IoCounters {
    fn accumulate(&mut self, other: &Self) {
        self.read_bytes += other.read_bytes;
        self.read_ops += other.read_ops;
        self.write_bytes += other.write_bytes;
        self.write_ops += other.write_ops;
    }
}

#[cfg(test)]
mod pinned_layout;

#[test]
fn sibling_cgroups_keep_their_cpu_time_in_different_pending_slots() {
    // cgroup ids are inode numbers: the cgroups a CPU alternates between (nginx's, the
    // containers', their parents') are often consecutive.
    for first in [1, 2, 4096, 131_072, 0x7fff_fff8] {
        let slots: std::collections::BTreeSet<usize> =
            (first..first + 8).map(pending_slot).collect();
        assert!(slots.len() >= 6, "ids {first}.. share slots: {slots:?}");
        assert!(slots.iter().all(|&slot| slot < CPU_PENDING_SLOTS));
    }
}

#[cfg(feature = "user")]
mod pod {
    /// Implements `aya::Pod` for each type.
    macro_rules! pod {
        ($($type:ident),* $(,)?) => {$(
            // SAFETY: plain `#[repr(C)]` structs of `u64` fields: no padding, every bit pattern valid.
            unsafe impl aya::Pod for super::$type {}
        )*};
    }

    pod!(CpuTime, CpuSlice, CpuPending, NetCounters, IoCounters);
}
