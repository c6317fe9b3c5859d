//! `cgroup_skb/egress` on the cgroup v2 root: counts packets sent from a socket, per the
//! socket's cgroup.
use aya_ebpf::{macros::cgroup_skb, programs::SkBuffContext};

use crate::net::{Direction, count};

#[cgroup_skb(egress)]
pub fn lynx_net_out(ctx: SkBuffContext) -> i32 {
    count(&ctx, Direction::Sent)
}
