//! `cgroup_skb/egress` on each container's top cgroup: counts packets sent from a socket of
//! the container, into its cgroup storage.
use aya_ebpf::{macros::cgroup_skb, programs::SkBuffContext};

use crate::net::{Direction, count_for_attached_cgroup};

#[cgroup_skb(egress)]
pub fn lynx_net_out(ctx: SkBuffContext) -> i32 {
    count_for_attached_cgroup(&ctx, Direction::Sent)
}
