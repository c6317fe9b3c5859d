//! `tp_btf/sched_process_fork`: a process nginx starts (a worker after a reload, a cache
//! helper) is nginx from its first system call, before user space could notice it.
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

use crate::http;

#[btf_tracepoint(function = "sched_process_fork")]
pub fn lynx_nginx_fork(ctx: BtfTracePointContext) -> i32 {
    // sched_process_fork(struct task_struct *parent, struct task_struct *child)
    try_nginx_fork(ctx.arg(0), ctx.arg(1));
    0
}

#[inline(always)]
fn try_nginx_fork(parent: *const u8, child: *const u8) {
    // The parent is the current task: forks elsewhere on the host (a backend forking per
    // connection) leave after one helper call, before the process table is searched.
    if http::in_nginx_cgroup() && http::is_nginx_tgid(http::task_tgid(parent)) {
        http::add_nginx_tgid(http::task_tgid(child));
    }
}
