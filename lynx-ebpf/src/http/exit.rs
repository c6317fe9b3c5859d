//! `tp_btf/sys_exit`, on kernels without the socket tracepoints (before 6.3): a system call
//! returned. On nginx's socket calls, counts the bytes nginx received or sent on a followed
//! connection and parses the requests in them, as [`crate::http::recv`] and
//! [`crate::http::send`] do from 6.3 on (see [`crate::http::call`]). Every system call of the
//! host runs it up to its cgroup check: the cost of following nginx where the socket layer
//! has no tracepoint.
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

use crate::http::call;

#[btf_tracepoint(function = "sys_exit")]
pub fn lynx_http_exit(ctx: BtfTracePointContext) -> i32 {
    try_http_exit(&ctx);
    0
}

#[inline(always)]
fn try_http_exit(ctx: &BtfTracePointContext) {
    call::returned(ctx);
}
