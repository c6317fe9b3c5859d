//! `perf_event` on the software cpu-clock, sampled on every CPU: charges the running task's
//! time so far, so a task that runs for seconds without being switched out is counted while it
//! runs and not only when it stops.
use aya_ebpf::{macros::perf_event, programs::PerfEventContext};

use crate::cpu_time::end_slice;

#[perf_event]
pub fn lynx_cpu_clock(_ctx: PerfEventContext) -> u32 {
    try_cpu_clock().map_or(1, |()| 0)
}

fn try_cpu_clock() -> Result<(), u32> {
    end_slice()
}
