//! Maps shared by the kernel programs. Static names are the map names the user side
//! looks up (`lynx_common::*_MAP`).
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap},
};
use lynx_common::{
    CGROUP_MAP_ENTRIES, CpuSlice, CpuTime, DROP_KINDS, IoCounters, NetCounters,
    TASK_RUNTIME_ENTRIES,
    http::{
        Endpoint, EndpointCounters, HTTP_ENDPOINT_ENTRIES, HTTP_FLOW_ENTRIES, HTTP_PORT_ENTRIES,
        HttpFlowEntry, HttpTarget, NGINX_TGID_ENTRIES,
    },
};

#[map]
pub static CGROUP_CPU: PerCpuHashMap<u64, CpuTime> =
    PerCpuHashMap::with_max_entries(CGROUP_MAP_ENTRIES, 0);

/// Task (`task_struct` address) -> its `se.sum_exec_runtime` when it last went off a CPU: where
/// to charge it from when its switch-in was not seen on the CPU it leaves.
#[map]
pub static TASK_RUNTIME: LruHashMap<u64, u64> =
    LruHashMap::with_max_entries(TASK_RUNTIME_ENTRIES, 0);

#[map]
pub static CPU_SLICE: PerCpuArray<CpuSlice> = PerCpuArray::with_max_entries(1, 0);

#[expect(
    deprecated,
    reason = "the kernel's only per-CPU cgroup storage, and the only one kept per attachment \
              point; aya points to BPF_MAP_TYPE_CGRP_STORAGE, which is neither"
)]
#[map]
pub static CONTAINER_NET: aya_ebpf::maps::PerCpuCgroupStorage<NetCounters> =
    aya_ebpf::maps::PerCpuCgroupStorage::new();

#[map]
pub static CGROUP_NET: PerCpuHashMap<u64, NetCounters> =
    PerCpuHashMap::with_max_entries(CGROUP_MAP_ENTRIES, 0);

#[map]
pub static CGROUP_IO: PerCpuHashMap<u64, IoCounters> =
    PerCpuHashMap::with_max_entries(CGROUP_MAP_ENTRIES, 0);

#[map]
pub static HTTP_FLOWS: Array<HttpFlowEntry> = Array::with_max_entries(HTTP_FLOW_ENTRIES, 0);

#[map]
pub static HTTP_ENDPOINTS: HashMap<Endpoint, u32> =
    HashMap::with_max_entries(HTTP_ENDPOINT_ENTRIES, 0);

#[map]
pub static HTTP_COUNTERS: PerCpuArray<EndpointCounters> =
    PerCpuArray::with_max_entries(HTTP_ENDPOINT_ENTRIES, 0);

#[map]
pub static HTTP_SLOT_OWNER: HashMap<u32, Endpoint> =
    HashMap::with_max_entries(HTTP_ENDPOINT_ENTRIES, 0);

#[map]
pub static HTTP_TARGET: Array<HttpTarget> = Array::with_max_entries(1, 0);

#[map]
pub static NGINX_TGIDS: HashMap<u32, u32> = HashMap::with_max_entries(NGINX_TGID_ENTRIES, 0);

#[map]
pub static HTTP_PORTS: HashMap<u32, u32> = HashMap::with_max_entries(HTTP_PORT_ENTRIES, 0);

#[map]
pub static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROP_KINDS, 0);

/// Applies `update` to `cgroup_id`'s counters on this CPU, creating them at zero first; when
/// the map is full, counts a drop of `drop_kind` (a `lynx_common::DROP_*` index) instead.
/// `update` may run twice on a zero value that was not kept, so it must only add.
#[inline(always)]
pub fn update_cgroup<V: Copy + Default>(
    map: &PerCpuHashMap<u64, V>,
    cgroup_id: u64,
    drop_kind: u32,
    update: impl Fn(&mut V),
) {
    if let Some(counters) = map.get_ptr_mut(cgroup_id) {
        // SAFETY: a per-CPU value, written only from this CPU by programs that do not
        // interleave (see each hook's comment).
        update(unsafe { &mut *counters });
        return;
    }
    let mut first = V::default();
    update(&mut first);
    // BPF_NOEXIST never overwrites counts. It fails when another CPU inserted the cgroup
    // meanwhile (its insert zeroed this CPU's slot): then count here, in that entry. Dropping
    // instead lost a whole first slice, hundreds of milliseconds for a task that had run
    // unswitched since its cgroup appeared.
    if map.insert(cgroup_id, first, BPF_NOEXIST as u64).is_ok() {
        return;
    }
    match map.get_ptr_mut(cgroup_id) {
        // SAFETY: as above.
        Some(counters) => update(unsafe { &mut *counters }),
        None => count_drop(drop_kind),
    }
}

/// Counts one dropped event of `kind` on this CPU.
#[inline(always)]
pub fn count_drop(kind: u32) {
    if let Some(counter) = DROPS.get_ptr_mut(kind) {
        // SAFETY: per-CPU slot; a lost increment under nesting only undercounts drops.
        unsafe { *counter += 1 };
    }
}
