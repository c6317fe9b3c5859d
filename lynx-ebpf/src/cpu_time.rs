//! CPU time accounting: [`crate::sched_switch`] charges, [`crate::cpu_clock`] samples.
//!
//! Time comes from the task's own `se.sum_exec_runtime`, the counter the scheduler advances
//! and the kernel's cgroup CPU accounting (`cpu.stat`, `cpuacct.usage`) sums: the difference
//! between two readings is exactly what the kernel charged the task in between. Reading it is
//! a plain load through a BTF pointer, where reading a clock would cost more than the rest of
//! the program (see `cargo xtask bench`).
//!
//! Both callers run with interrupts off on their CPU (sched_switch under the runqueue lock,
//! the cpu-clock sample in hard-irq context), so they never interleave on one CPU and the
//! per-CPU slots need no atomics.
use aya_ebpf::helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid};
use lynx_common::{CpuPending, CpuSlice, DROP_CGROUP_CPU_FULL, pending_slot};

use crate::maps::{CGROUP_CPU, CPU_SLICE, TASK_RUNTIME, update_cgroup};

/// Offset of `se.sum_exec_runtime` in `struct task_struct`, set by the loader from the running
/// kernel's BTF. A read-only global: the verifier sees its value as a constant, so it checks
/// the load below against the kernel's own type information.
#[unsafe(no_mangle)]
static TASK_RUNTIME_OFFSET: u64 = 0;

/// `task->se.sum_exec_runtime`; `task` must be a BTF `task_struct` pointer.
#[inline(always)]
fn runtime_of(task: *const u8) -> u64 {
    // SAFETY: a BTF-typed kernel pointer; the verifier checks the offset against the type
    // and turns the load into a fault-safe one.
    unsafe {
        let offset = core::ptr::read_volatile(&TASK_RUNTIME_OFFSET) as usize;
        core::ptr::read(task.add(offset).cast::<u64>())
    }
}

/// A context switch on this CPU: charges `prev` (the current task) and starts `next`.
#[inline(always)]
pub fn switch(prev: *const u8, next: *const u8) -> Result<(), u32> {
    let slice = slice()?;
    charge_current(slice, prev);
    slice.running_ns = 0;
    slice.task = next as u64;
    slice.task_runtime_ns = runtime_of(next);
    Ok(())
}

/// A periodic sample on this CPU: records the running task's time so far in its slice, for
/// readers, and moves all of this CPU's pending time into the cgroup map.
///
/// The sample only reports: the slice is charged by the switch that ends it, from the
/// baseline its switch-in set. Charging here too (moving the baseline) lost time under CPU
/// contention, measured at 1 to 3.6% against the kernel's own accounting.
#[inline(always)]
pub fn sample(current: *const u8) -> Result<(), u32> {
    let slice = slice()?;
    slice.running_ns = 0;
    let is_idle = bpf_get_current_pid_tgid() as u32 == 0;
    if slice.task == current as u64 && !is_idle {
        slice.running_ns = runtime_of(current).saturating_sub(slice.task_runtime_ns);
        // SAFETY: a helper without arguments, allowed in tracing and perf programs.
        slice.running_cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    }
    for pending in &mut slice.pending {
        flush(pending);
    }
    Ok(())
}

#[inline(always)]
fn slice() -> Result<&'static mut CpuSlice, u32> {
    let slice = CPU_SLICE.get_ptr_mut(0).ok_or(1u32)?;
    // SAFETY: this CPU's own slot, not touched concurrently (see the module comment).
    Ok(unsafe { &mut *slice })
}

/// Charges `task`, the current task, for its runtime since it was last charged, and records
/// where that leaves it. The baseline is the one its switch-in on this CPU set; when that
/// switch-in was not seen (a task switched in before the programs were attached, and, on
/// 6.18 under mixed load, now and then a task whose switch-in this CPU's slot did not record:
/// up to 17% of a busy container's time, measured against `cpu.stat`), it is the runtime the
/// task had when it last went off a CPU. Nothing is charged for the idle task (pid 0), nor for
/// a task seen neither way.
#[inline(always)]
fn charge_current(slice: &mut CpuSlice, task: *const u8) {
    let is_idle = bpf_get_current_pid_tgid() as u32 == 0;
    if is_idle {
        return;
    }
    let runtime = runtime_of(task);
    let key = task as u64;
    let since = if slice.task == key {
        Some(slice.task_runtime_ns)
    } else {
        // SAFETY: a value of this map is only read here, copied out at once.
        unsafe { TASK_RUNTIME.get(key) }.copied()
    };
    // A full map evicts its least recently used task: that one is charged from its next seen
    // switch-in only.
    let _ = TASK_RUNTIME.insert(key, runtime, 0);
    let Some(since) = since else {
        return;
    };
    let ns = runtime.saturating_sub(since);
    slice.task_runtime_ns = runtime;
    // SAFETY: a helper without arguments, allowed in tracing and perf programs.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let pending = &mut slice.pending[pending_slot(cgroup_id)];
    if pending.cgroup_id != cgroup_id {
        flush(pending);
        pending.cgroup_id = cgroup_id;
    }
    pending.ns += ns;
}

/// Moves one slot's pending time into the cgroup map.
#[inline(always)]
fn flush(pending: &mut CpuPending) {
    if pending.ns == 0 {
        return;
    }
    let ns = core::mem::take(&mut pending.ns);
    update_cgroup(
        &CGROUP_CPU,
        pending.cgroup_id,
        DROP_CGROUP_CPU_FULL,
        |time| time.on_cpu_ns += ns,
    );
}
