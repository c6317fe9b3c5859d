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
fn try_nginx_fork(parent: *const u8, child: *const u8) -> Option<()> {
    let parent = http::task_tgid(parent)?;
    if http::is_nginx_tgid(parent) {
        http::add_nginx_tgid(http::task_tgid(child)?);
    }
    Some(())
}
