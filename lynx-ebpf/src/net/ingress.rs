//! `cgroup_skb/ingress` on each container's top cgroup: counts packets delivered to a socket
//! of the container, into its cgroup storage.
use aya_ebpf::{macros::cgroup_skb, programs::SkBuffContext};

use crate::net::{Direction, count_for_attached_cgroup};

#[cgroup_skb(ingress)]
pub fn lynx_net_in(ctx: SkBuffContext) -> i32 {
    count_for_attached_cgroup(&ctx, Direction::Received)
}
