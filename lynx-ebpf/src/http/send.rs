//! `tp_btf/sock_send_length`: a socket's `sendmsg` returned (`write`, `send*`, `writev`,
//! `sendmsg`, and `sendfile` through splice). Counts the bytes nginx sent on a followed
//! connection and, on upstream connections, parses the requests in them (see
//! [`crate::http::call`]).
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

use crate::http::{Way, call};

#[btf_tracepoint(function = "sock_send_length")]
pub fn lynx_http_send(ctx: BtfTracePointContext) -> i32 {
    try_http_send(&ctx);
    0
}

#[inline(always)]
fn try_http_send(ctx: &BtfTracePointContext) {
    call::transfer(ctx, Way::Sent);
}
