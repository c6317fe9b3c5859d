//! `cgroup_skb/egress` on the cgroup v2 root, when the host's traffic is counted: counts
//! packets sent from a socket, per the socket's cgroup.
use aya_ebpf::{macros::cgroup_skb, programs::SkBuffContext};

use crate::net::{Direction, count_for_socket_cgroup};

#[cgroup_skb(egress)]
pub fn lynx_host_out(ctx: SkBuffContext) -> i32 {
    count_for_socket_cgroup(&ctx, Direction::Sent)
}
