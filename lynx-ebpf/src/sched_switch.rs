//! `tp_btf/sched_switch`: when a task goes off the CPU, charges the time it ran to its cgroup
//! and records where the next task's time starts.
//!
//! A BTF tracepoint gets `prev` and `next` as typed kernel pointers, attaches without tracefs,
//! and skips the trace record the classic `sched/sched_switch` tracepoint fills on every
//! context switch. It runs in `__schedule()` after the scheduler has brought `prev`'s runtime
//! up to date and before the switch, so `current` is still `prev`.
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

use crate::cpu_time;

#[btf_tracepoint(function = "sched_switch")]
pub fn lynx_sched_switch(ctx: BtfTracePointContext) -> i32 {
    try_sched_switch(&ctx).map_or(1, |()| 0)
}

fn try_sched_switch(ctx: &BtfTracePointContext) -> Result<(), u32> {
    // sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next, ...)
    let prev: *const u8 = ctx.arg(1);
    let next: *const u8 = ctx.arg(2);
    cpu_time::switch(prev, next)
}
