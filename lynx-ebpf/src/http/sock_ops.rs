//! `sock_ops` attached to nginx's cgroup: the start and end of its TCP connections. Runs only
//! for sockets of that cgroup, and for each only at connection events, never per packet.
//!
//! - `PASSIVE_ESTABLISHED`: a connection to a listening socket in nginx's cgroup completed
//!   its handshake; on a followed port in nginx's network namespace (not a container's below
//!   nginx's cgroup), a client flow and an accept.
//! - `TCP_CONNECT`: a process connects (in its own context, so nginx's processes are told
//!   from others in the cgroup); an nginx process's connection is an upstream flow.
//! - `STATE` (asked for on client flows only): reaching `TCP_CLOSE` ends the flow of a
//!   connection that closed before nginx accepted it, which therefore has no file to
//!   release. Every other flow ends when nginx closes it ([`crate::http::release`]), before
//!   its `TCP_CLOSE`, which then finds no flow.
use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_SOCK_OPS_TCP_CONNECT_CB,
    },
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::sock_ops,
    programs::SockOpsContext,
};
use lynx_common::http::Endpoint;

use crate::http;

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const TCP_CLOSE: u32 = 7;

#[sock_ops]
pub fn lynx_http_conn(ctx: SockOpsContext) -> u32 {
    try_http_conn(&ctx);
    // 1: the operation goes on as the kernel meant; this program only counts.
    1
}

#[inline(always)]
fn try_http_conn(ctx: &SockOpsContext) -> Option<()> {
    // SAFETY: the context is the helper's argument.
    let cookie = || unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    match ctx.op() {
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB
            // SAFETY: the context is the helper's argument.
            if http::is_nginx_netns(unsafe { bpf_get_netns_cookie(ctx.ops.cast()) }) =>
        {
            // local_port is in host byte order.
            http::accepted(cookie(), ctx.local_port() as u16)?;
            follow_state(ctx);
        }
        BPF_SOCK_OPS_TCP_CONNECT_CB if http::is_nginx_process() => {
            let addr = match ctx.family() {
                AF_INET => Endpoint::ipv4_mapped(ctx.remote_ip4()),
                AF_INET6 => remote_ip6(ctx),
                _ => return None,
            };
            // remote_port holds the network-order port in its upper 16 bits.
            let port = u16::from_be((ctx.remote_port() >> 16) as u16);
            http::connecting(cookie(), addr, port)?;
        }
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == TCP_CLOSE => http::closing(cookie()),
        _ => {}
    }
    Some(())
}

/// The peer's IPv6 address, a word at a time: the verifier accepts only constant offsets into
/// the context, which a copy of the whole array is not compiled to.
#[inline(always)]
fn remote_ip6(ctx: &SockOpsContext) -> [u32; 4] {
    // SAFETY: fields of the context the kernel handed this program.
    unsafe {
        let words = &raw const (*ctx.ops).remote_ip6;
        [0, 1, 2, 3].map(|i| core::ptr::read_volatile(&raw const (*words)[i]))
    }
}

/// Asks for this socket's state changes, to see it close if nginx never accepts it.
#[inline(always)]
fn follow_state(ctx: &SockOpsContext) {
    // A socket the kernel refuses callbacks for stays counted as open; nothing better to do.
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
}
