//! `cgroup_skb/ingress` on the cgroup v2 root: counts packets delivered to a socket, per the
//! socket's cgroup.
use aya_ebpf::{macros::cgroup_skb, programs::SkBuffContext};

use crate::net::{Direction, count};

#[cgroup_skb(ingress)]
pub fn lynx_net_in(ctx: SkBuffContext) -> i32 {
    count(&ctx, Direction::Received)
}
