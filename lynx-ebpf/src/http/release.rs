//! `cgroup/sock_release` attached to nginx's cgroup: nginx closed a socket (its last file
//! reference went), which ends the socket's flow. One run per socket, where following the
//! TCP states to `TCP_CLOSE` takes three or four `sock_ops` runs, and the flow ends when nginx
//! lets go of it, as nginx's own active count does.
use aya_ebpf::{helpers::bpf_get_socket_cookie, macros::cgroup_sock, programs::SockContext};

use crate::http;

const IPPROTO_TCP: u32 = 6;

#[cgroup_sock(sock_release)]
pub fn lynx_http_close(ctx: SockContext) -> i32 {
    try_http_close(&ctx);
    // 1: the release goes on; this program only counts.
    1
}

#[inline(always)]
fn try_http_close(ctx: &SockContext) {
    // SAFETY: the context is the kernel's `struct bpf_sock`.
    if unsafe { (*ctx.sock).protocol } != IPPROTO_TCP {
        return;
    }
    // SAFETY: the context is the helper's argument.
    http::closing(unsafe { bpf_get_socket_cookie(ctx.sock.cast()) });
}
