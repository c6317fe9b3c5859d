//! Per-cgroup traffic counting shared by [`crate::net_ingress`] and [`crate::net_egress`].
//!
//! Packets are charged to the cgroup of the socket they belong to (`bpf_skb_cgroup_id`), not
//! to whichever task happens to be current: a TCP ACK or retransmission sent from softirq
//! still counts for the socket's container. Lengths are from the network header on.
use aya_ebpf::{helpers::bpf_skb_cgroup_id, programs::SkBuffContext};
use lynx_common::{DROP_CGROUP_NET_FULL, NetCounters};

use crate::maps::{CGROUP_NET, update_cgroup};

/// Which way a packet goes, seen from the cgroup.
#[derive(Clone, Copy)]
pub enum Direction {
    Received,
    Sent,
}

/// Counts `ctx`'s packet for its socket's cgroup. Never drops the packet.
#[inline(always)]
pub fn count(ctx: &SkBuffContext, direction: Direction) -> i32 {
    // SAFETY: the helper only reads the socket buffer the kernel handed this program.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    let bytes = u64::from(ctx.len());
    update_cgroup(
        &CGROUP_NET,
        cgroup_id,
        DROP_CGROUP_NET_FULL,
        |net: &mut NetCounters| match direction {
            Direction::Received => {
                net.rx_bytes += bytes;
                net.rx_packets += 1;
            }
            Direction::Sent => {
                net.tx_bytes += bytes;
                net.tx_packets += 1;
            }
        },
    );
    // 1: let the packet through; these hooks only count.
    1
}
