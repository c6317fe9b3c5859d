//! `perf_event` on the software cpu-clock, sampled on every CPU: charges the running task's
//! time so far and moves the CPU's pending time into the cgroup map, so a task that runs for
//! seconds without being switched out is counted while it runs and not only when it stops.
use aya_ebpf::{helpers::bpf_get_current_task_btf, macros::perf_event, programs::PerfEventContext};

use crate::cpu_time;

#[perf_event]
pub fn lynx_cpu_clock(_ctx: PerfEventContext) -> u32 {
    try_cpu_clock().map_or(1, |()| 0)
}

fn try_cpu_clock() -> Result<(), u32> {
    // SAFETY: the helper returns the current task as a BTF pointer; it never fails.
    let current = unsafe { bpf_get_current_task_btf() };
    cpu_time::sample(current.cast_const().cast())
}
