//! Maps shared by the kernel programs. Static names are the map names the user side
//! looks up (`lynx_common::*_MAP`).
use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, PerCpuHashMap},
};
use lynx_common::{CGROUP_CPU_ENTRIES, CpuSlice, CpuTime, DROP_KINDS};

#[map]
pub static CGROUP_CPU: PerCpuHashMap<u64, CpuTime> =
    PerCpuHashMap::with_max_entries(CGROUP_CPU_ENTRIES, 0);

#[map]
pub static CPU_SLICE: PerCpuArray<CpuSlice> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROP_KINDS, 0);

/// Counts one dropped event of `kind` (a `lynx_common::DROP_*` index) on this CPU.
#[inline(always)]
pub fn count_drop(kind: u32) {
    if let Some(counter) = DROPS.get_ptr_mut(kind) {
        // SAFETY: per-CPU slot, and programs on one CPU do not preempt each other here.
        unsafe { *counter += 1 };
    }
}
