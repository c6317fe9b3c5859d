//! `raw_tracepoint/sched_switch`: when a task goes off the CPU, charges the time it ran to
//! its cgroup.
//!
//! A raw tracepoint attaches by name, without tracefs, and skips the trace record that the
//! classic `sched/sched_switch` tracepoint fills on every context switch: nothing here reads
//! it. The hook runs in `__schedule()` before the switch, so `current` is still the task going
//! off the CPU and its cgroup and pid come from helpers.
use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};

use crate::cpu_time::end_slice;

#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn lynx_sched_switch(_ctx: RawTracePointContext) -> i32 {
    try_sched_switch().map_or(1, |()| 0)
}

fn try_sched_switch() -> Result<(), u32> {
    end_slice()
}
