//! Reading and pruning the per-cgroup maps.
use std::{collections::HashMap, io};

use aya::{
    Pod,
    maps::{CgroupStorageKey, MapError, PerCpuArray, PerCpuHashMap},
};
use lynx_common::{
    Accumulate, CGROUP_CPU_MAP, CGROUP_IO_MAP, CGROUP_NET_MAP, CONTAINER_NET_MAP, CPU_SLICE_MAP,
    CpuSlice, CpuTime, DROP_CGROUP_CPU_FULL, DROP_CGROUP_IO_FULL, DROP_CGROUP_NET_FULL,
    DROP_HTTP_ENDPOINTS_FULL, DROP_HTTP_FLOWS_FULL, DROPS_MAP, IoCounters, NET_EGRESS_ATTACH_TYPE,
    NET_INGRESS_ATTACH_TYPE, NetCounters,
};

use super::*;

impl KernelCounters {
    /// Reads every per-cgroup counter.
    pub fn sample(&mut self) -> Result<KernelSample, KernelError> {
        Ok(KernelSample {
            cpu_ns: self.cgroup_cpu_ns()?,
            net: self.cgroup_net()?,
            io: self.per_cgroup(CGROUP_IO_MAP)?,
            nginx: self.nginx_endpoints()?,
            drops: self.drops()?,
        })
    }

    /// Removes the counters of `cgroup_ids` (cgroups that are gone) from every map.
    pub fn forget(&mut self, cgroup_ids: &[u64]) -> Result<(), KernelError> {
        self.remove::<CpuTime>(CGROUP_CPU_MAP, cgroup_ids)?;
        self.remove::<NetCounters>(CGROUP_NET_MAP, cgroup_ids)?;
        self.remove::<IoCounters>(CGROUP_IO_MAP, cgroup_ids)?;
        for id in cgroup_ids {
            self.cpu_floor.remove(id);
        }
        Ok(())
    }

    pub(super) fn remove<V: Pod>(
        &mut self,
        name: &'static str,
        cgroup_ids: &[u64],
    ) -> Result<(), KernelError> {
        let map_error = |source| KernelError::Map { name, source };
        let mut map: PerCpuHashMap<_, u64, V> =
            self.map_mut(name)?.try_into().map_err(map_error)?;
        for id in cgroup_ids {
            match map.remove(id) {
                Ok(()) => {}
                // Not every map has every cgroup.
                Err(MapError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(map_error(error)),
            }
        }
        Ok(())
    }

    /// Nanoseconds on CPU per cgroup v2 id since the programs were loaded, summed over CPUs.
    ///
    /// The total is the cgroup map plus each CPU's pending time and its running slice so far
    /// (as of the last cpu-clock sample). These are read one after the other while the kernel
    /// moves time between them, so one read can miss up to one sample period per CPU; a total
    /// therefore never goes below what an earlier call returned, and the time missed shows up
    /// in the next read.
    pub fn cgroup_cpu_ns(&mut self) -> Result<HashMap<u64, u64>, KernelError> {
        let map_error = |name| move |source| KernelError::Map { name, source };
        let mut totals: HashMap<u64, u64> = self
            .per_cgroup::<CpuTime>(CGROUP_CPU_MAP)?
            .into_iter()
            .map(|(id, time)| (id, time.on_cpu_ns))
            .collect();

        let slices: PerCpuArray<_, CpuSlice> = self
            .map(CPU_SLICE_MAP)?
            .try_into()
            .map_err(map_error(CPU_SLICE_MAP))?;
        for slice in slices.get(&0, 0).map_err(map_error(CPU_SLICE_MAP))?.iter() {
            let pending = slice.pending.iter().map(|p| (p.cgroup_id, p.ns));
            for (cgroup_id, ns) in pending.chain([(slice.running_cgroup_id, slice.running_ns)]) {
                if ns > 0 {
                    *totals.entry(cgroup_id).or_default() += ns;
                }
            }
        }

        for (cgroup_id, total) in &mut totals {
            let floor = self.cpu_floor.entry(*cgroup_id).or_default();
            *total = (*total).max(*floor);
            *floor = *total;
        }
        self.cpu_floor
            .retain(|cgroup_id, _| totals.contains_key(cgroup_id));
        Ok(totals)
    }

    /// Traffic per cgroup: each container's from its storage, and every cgroup's that the host
    /// programs counted.
    #[expect(
        deprecated,
        reason = "aya deprecates per-CPU cgroup storage for BPF_MAP_TYPE_CGRP_STORAGE, which is \
                  neither per CPU nor per attachment point"
    )]
    pub(super) fn cgroup_net(&self) -> Result<HashMap<u64, NetCounters>, KernelError> {
        let mut net = self.per_cgroup::<NetCounters>(CGROUP_NET_MAP)?;
        let name = CONTAINER_NET_MAP;
        let map_error = |source| KernelError::Map { name, source };
        let storage: aya::maps::PerCpuCgroupStorage<_, NetCounters> =
            self.map(name)?.try_into().map_err(map_error)?;
        for &id in self.network_links.keys() {
            let counters = net.entry(id).or_default();
            for attach_type in [NET_INGRESS_ATTACH_TYPE, NET_EGRESS_ATTACH_TYPE] {
                match storage.get(CgroupStorageKey::new(id, attach_type), 0) {
                    Ok(per_cpu) => per_cpu.iter().for_each(|value| counters.accumulate(value)),
                    // The cgroup went away since it was attached to.
                    Err(MapError::KeyNotFound) => {}
                    Err(error) => return Err(map_error(error)),
                }
            }
        }
        Ok(net)
    }

    /// A per-CPU hash map keyed by cgroup id, summed over CPUs.
    pub(super) fn per_cgroup<V: Pod + Default + Accumulate>(
        &self,
        name: &'static str,
    ) -> Result<HashMap<u64, V>, KernelError> {
        let map_error = |source| KernelError::Map { name, source };
        let map: PerCpuHashMap<_, u64, V> = self.map(name)?.try_into().map_err(map_error)?;
        map.iter()
            .map(|entry| {
                let (cgroup_id, per_cpu) = entry.map_err(map_error)?;
                let mut total = V::default();
                per_cpu.iter().for_each(|value| total.accumulate(value));
                Ok((cgroup_id, total))
            })
            .collect()
    }

    /// What the kernel programs had to drop.
    pub(super) fn drops(&self) -> Result<Drops, KernelError> {
        let map_error = |source| KernelError::Map {
            name: DROPS_MAP,
            source,
        };
        let map: PerCpuArray<_, u64> = self.map(DROPS_MAP)?.try_into().map_err(map_error)?;
        let total = |kind| -> Result<u64, KernelError> {
            Ok(map.get(&kind, 0).map_err(map_error)?.iter().sum())
        };
        Ok(Drops {
            cgroup_cpu_map_full: total(DROP_CGROUP_CPU_FULL)?,
            cgroup_net_map_full: total(DROP_CGROUP_NET_FULL)?,
            cgroup_io_map_full: total(DROP_CGROUP_IO_FULL)?,
            nginx_endpoints_full: total(DROP_HTTP_ENDPOINTS_FULL)?,
            nginx_flows_full: total(DROP_HTTP_FLOWS_FULL)?,
        })
    }

    pub(super) fn map(&self, name: &'static str) -> Result<&aya::maps::Map, KernelError> {
        self.ebpf
            .map(name)
            .ok_or(KernelError::Missing { kind: "map", name })
    }

    pub(super) fn map_mut(
        &mut self,
        name: &'static str,
    ) -> Result<&mut aya::maps::Map, KernelError> {
        self.ebpf
            .map_mut(name)
            .ok_or(KernelError::Missing { kind: "map", name })
    }
}
