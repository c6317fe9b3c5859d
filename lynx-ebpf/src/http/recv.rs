//! `tp_btf/sock_recv_length`: a socket's `recvmsg` returned (`read`, `recv*`, `readv`,
//! `recvmsg` all end there). Counts the bytes nginx received on a followed connection and, on
//! client connections, parses the requests in them (see [`crate::http::call`]).
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

use crate::http::{Way, call};

#[btf_tracepoint(function = "sock_recv_length")]
pub fn lynx_http_recv(ctx: BtfTracePointContext) -> i32 {
    try_http_recv(&ctx);
    0
}

#[inline(always)]
fn try_http_recv(ctx: &BtfTracePointContext) {
    call::transfer(ctx, Way::Received);
}
