//! Traffic counting shared by the container hooks ([`crate::net::ingress`],
//! [`crate::net::egress`]) and the host hooks ([`crate::net::host_ingress`],
//! [`crate::net::host_egress`]).
//!
//! Lengths are from the network header on. Both count every packet of a socket in the subtree
//! they are attached to, whichever task is current: a TCP ACK or retransmission sent from
//! softirq still counts for the socket's cgroup.
mod egress;
mod host_egress;
mod host_ingress;
mod ingress;

use aya_ebpf::{helpers::bpf_skb_cgroup_id, programs::SkBuffContext};
use lynx_common::{DROP_CGROUP_NET_FULL, NetCounters};

use crate::maps::{CGROUP_NET, CONTAINER_NET, update_cgroup};

/// Which way a packet goes, seen from the cgroup.
#[derive(Clone, Copy)]
pub enum Direction {
    Received,
    Sent,
}

/// Counts `ctx`'s packet for the cgroup the program is attached to: its storage is at hand,
/// with no key to compute and no table to search. Never drops the packet.
#[inline(always)]
pub fn count_for_attached_cgroup(ctx: &SkBuffContext, direction: Direction) -> i32 {
    // SAFETY: this CPU's value for the attachment running this program, always present while
    // it runs. As with the per-CPU hash, a packet sent from softirq that interrupts a send on
    // the same CPU and container can lose one of the two plain additions.
    add(unsafe { &mut *CONTAINER_NET.get_ptr_mut() }, ctx, direction);
    PASS
}

/// Counts `ctx`'s packet for its socket's cgroup. Never drops the packet.
#[inline(always)]
pub fn count_for_socket_cgroup(ctx: &SkBuffContext, direction: Direction) -> i32 {
    // SAFETY: the helper only reads the socket buffer the kernel handed this program.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    update_cgroup(&CGROUP_NET, cgroup_id, DROP_CGROUP_NET_FULL, |net| {
        add(net, ctx, direction)
    });
    PASS
}

/// Let the packet through: these hooks only count.
const PASS: i32 = 1;

#[inline(always)]
fn add(net: &mut NetCounters, ctx: &SkBuffContext, direction: Direction) {
    let bytes = u64::from(ctx.len());
    match direction {
        Direction::Received => {
            net.rx_bytes += bytes;
            net.rx_packets += 1;
        }
        Direction::Sent => {
            net.tx_bytes += bytes;
            net.tx_packets += 1;
        }
    }
}
