//! CPU time accounting shared by the hooks that end a CPU slice ([`crate::sched_switch`] and
//! [`crate::cpu_clock`]): the time since the previous slice ended on this CPU is charged to the
//! cgroup v2 id of the task that ran it.
//!
//! Both callers run with interrupts off on this CPU (sched_switch under the runqueue lock,
//! the cpu-clock sample in hard-irq context), so they never interleave on one CPU and the
//! per-CPU slots need no atomics.
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
};
use lynx_common::{CpuTime, DROP_CGROUP_CPU_FULL};

use crate::maps::{CGROUP_CPU, CPU_SLICE, count_drop};

/// Ends the slice `current` has been running on this CPU and charges it. The idle task
/// (pid 0) is charged to no cgroup.
#[inline(always)]
pub fn end_slice() -> Result<(), u32> {
    let now = unsafe { bpf_ktime_get_ns() };
    let slice = CPU_SLICE.get_ptr_mut(0).ok_or(1u32)?;
    // SAFETY: this CPU's own slot, not touched concurrently (see the module comment).
    let started = unsafe { core::mem::replace(&mut (*slice).last_switch_ns, now) };
    let is_idle = bpf_get_current_pid_tgid() as u32 == 0;
    if started != 0 && !is_idle {
        charge(unsafe { bpf_get_current_cgroup_id() }, now - started);
    }
    Ok(())
}

#[inline(always)]
fn charge(cgroup_id: u64, ns: u64) {
    match CGROUP_CPU.get_ptr_mut(&cgroup_id) {
        // SAFETY: a per-CPU value, written only from this CPU.
        Some(time) => unsafe { (*time).on_cpu_ns += ns },
        None => {
            let first = CpuTime { on_cpu_ns: ns };
            // No other program inserts on this CPU meanwhile, so any failure is a full map.
            if CGROUP_CPU
                .insert(&cgroup_id, &first, BPF_NOEXIST as u64)
                .is_err()
            {
                count_drop(DROP_CGROUP_CPU_FULL);
            }
        }
    }
}
