//! nginx's HTTP traffic: the bookkeeping shared by [`crate::http::sock_ops`],
//! [`crate::http::recv`], [`crate::http::send`], [`crate::http::exit`] and [`crate::nginx_fork`]
//! (design: `docs/design/nginx-counting.md`).
//!
//! nginx's sockets are followed where the socket layer hands bytes to nginx or takes them from
//! it, so the byte stream is the one nginx read or wrote, in order, without retransmissions,
//! in nginx's own buffers. Flows are keyed by socket cookie.
//!
//! - A TCP connection established on a followed port of a listening socket in nginx's cgroup
//!   and network namespace: a client flow, counted by nginx's local port.
//! - A TCP connection an nginx process starts: an upstream flow, by peer address and port.
//! - Bytes received (at the socket tracepoints from kernel 6.3, at the end of nginx's system
//!   calls before): counted; on a client flow, requests are parsed.
//! - Bytes sent: counted; on an upstream flow, requests are parsed.
//! - nginx closing the socket, or the state of a client connection nginx never accepted
//!   reaching `TCP_CLOSE`: the flow ends.
mod call;
mod exit;
mod parse;
mod recv;
mod release;
mod send;
mod sock_ops;

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_task_btf},
};
use lynx_common::{
    DROP_HTTP_ENDPOINTS_FULL, DROP_HTTP_FLOWS_FULL,
    http::{
        Endpoint, EndpointCounters, FLOW_CLIENT, FLOW_UPSTREAM, HTTP_ENDPOINT_ENTRIES,
        HTTP_FLOW_PROBES, HttpFlow, HttpFlowEntry, PORT_TLS, flow_slot, new_flow,
    },
};

use crate::maps::{
    HTTP_COUNTERS, HTTP_ENDPOINTS, HTTP_FLOWS, HTTP_PORTS, HTTP_SLOT_OWNER, HTTP_TARGET,
    NGINX_TGIDS, count_drop,
};
pub use parse::Buffer;
use parse::scan;

/// `task_struct.tgid`, set by the loader from BTF (`lynx_common::http::TASK_TGID_OFFSET_GLOBAL`).
#[unsafe(no_mangle)]
static TASK_TGID_OFFSET: u64 = 0;

/// Whether the current task runs in nginx's cgroup: one helper call, which rejects most of the
/// host when nginx has a cgroup of its own.
#[inline(always)]
pub fn in_nginx_cgroup() -> bool {
    let Some(target) = HTTP_TARGET.get(0) else {
        return false;
    };
    // SAFETY: no preconditions.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    cgroup == target.cgroup_id && target.cgroup_id != 0
}

/// Whether `netns_cookie` is nginx's network namespace.
#[inline(always)]
pub fn is_nginx_netns(netns_cookie: u64) -> bool {
    HTTP_TARGET
        .get(0)
        .is_some_and(|target| target.netns_cookie == netns_cookie)
}

/// Whether the current task is one of nginx's processes. Read from the task itself:
/// `bpf_get_current_pid_tgid` is refused to `sock_ops` programs before kernel 6.10, while
/// `bpf_get_current_task_btf` is offered to every program type (with `CAP_PERFMON`).
#[inline(always)]
pub fn is_nginx_process() -> bool {
    // SAFETY: no preconditions; the result is the current task, a trusted BTF pointer.
    let task = unsafe { bpf_get_current_task_btf() } as *const u8;
    is_nginx_tgid(task_tgid(task))
}

#[inline(always)]
pub fn is_nginx_tgid(tgid: u32) -> bool {
    // SAFETY: only tested for presence.
    unsafe { NGINX_TGIDS.get(tgid) }.is_some()
}

#[inline(always)]
pub fn add_nginx_tgid(tgid: u32) {
    // Full: the process is not followed; user space sees the map full and says so.
    let _ = NGINX_TGIDS.insert(tgid, 1, 0);
}

/// `task->tgid` of a BTF task pointer.
#[inline(always)]
pub fn task_tgid(task: *const u8) -> u32 {
    // SAFETY: a read-only global the loader set; volatile so the compiler does not fold it.
    let offset = unsafe { core::ptr::read_volatile(&TASK_TGID_OFFSET) } as usize;
    // SAFETY: a BTF-typed kernel pointer; the verifier checks the offset against the type and
    // turns the load into a fault-safe one.
    unsafe { core::ptr::read(task.add(offset).cast::<u32>()) }
}

/// A client flow for socket `cookie`, established on nginx's local `port`, if that port is
/// followed, and one accept on that port.
#[inline(always)]
pub fn accepted(cookie: u64, port: u16) -> Option<()> {
    // SAFETY: a map value, read once.
    let mode = unsafe { *HTTP_PORTS.get(u32::from(port))? };
    opened(
        cookie,
        new_flow(FLOW_CLIENT, port, mode != PORT_TLS),
        [0; 4],
    )
}

/// An upstream flow for socket `cookie`, which nginx is connecting to `addr` (IPv6 or
/// IPv4-mapped words, as [`Endpoint::addr`]) and `port`.
#[inline(always)]
pub fn connecting(cookie: u64, addr: [u32; 4], port: u16) -> Option<()> {
    opened(cookie, new_flow(FLOW_UPSTREAM, port, true), addr)
}

#[inline(always)]
fn opened(cookie: u64, flow: HttpFlow, addr: [u32; 4]) -> Option<()> {
    let endpoint = Endpoint {
        kind: u32::from(flow.kind),
        port: u32::from(flow.port),
        addr,
    };
    let Some(slot) = slot_of(&endpoint) else {
        count_drop(DROP_HTTP_ENDPOINTS_FULL);
        return None;
    };
    let Some(entry) = claim_flow(cookie) else {
        count_drop(DROP_HTTP_FLOWS_FULL);
        return None;
    };
    entry.flow = flow;
    entry.slot = slot;
    counters(slot)?.opened += 1;
    Some(())
}

/// A free slot for socket `cookie`'s flow, claimed for it: the cookie is swapped in atomically,
/// so two CPUs opening flows at once never take the same slot.
#[inline(always)]
fn claim_flow(cookie: u64) -> Option<&'static mut HttpFlowEntry> {
    for probe in 0..HTTP_FLOW_PROBES {
        let entry = HTTP_FLOWS.get_ptr_mut(flow_slot(cookie, probe))?;
        // SAFETY: a map value.
        let owner = unsafe { &raw mut (*entry).cookie };
        // A read first: a taken slot costs no atomic operation.
        // SAFETY: as above.
        if unsafe { core::ptr::read_volatile(owner) } == 0 && compare_and_swap(owner, 0, cookie) {
            // SAFETY: the slot is this socket's now.
            return Some(unsafe { &mut *entry });
        }
    }
    None
}

/// Atomically replaces `*word` by `new` if it holds `current`; true when it did. The eBPF target
/// offers no compare-and-swap through `core::sync::atomic` (its spec predates `BPF_CMPXCHG`),
/// so the intrinsic is called there; the kernel has had the instruction since 5.12.
#[inline(always)]
fn compare_and_swap(word: *mut u64, current: u64, new: u64) -> bool {
    #[cfg(target_arch = "bpf")]
    {
        use core::intrinsics::{AtomicOrdering, atomic_cxchg};
        // SAFETY: `word` is an aligned u64 in a map value.
        unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::AcqRel }, { AtomicOrdering::Relaxed }>(
                word, current, new,
            )
        }
        .1
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        use core::sync::atomic::{AtomicU64, Ordering};
        // SAFETY: as above.
        unsafe { AtomicU64::from_ptr(word) }
            .compare_exchange(current, new, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }
}

/// Socket `cookie`'s flow, if it is followed.
#[inline(always)]
fn flow_of(cookie: u64) -> Option<&'static mut HttpFlowEntry> {
    for probe in 0..HTTP_FLOW_PROBES {
        let entry = HTTP_FLOWS.get_ptr_mut(flow_slot(cookie, probe))?;
        // SAFETY: a map value; only this socket's events use the entry of its cookie.
        let entry = unsafe { &mut *entry };
        if entry.cookie == cookie {
            return Some(entry);
        }
    }
    None
}

/// The counter slot of `endpoint`, assigned on first sight: the first free one of a few
/// candidates derived from the endpoint, claimed in [`HTTP_SLOT_OWNER`] (no atomics needed).
/// A CPU that loses the race for a new endpoint gives its claim back and uses the winner's.
#[inline(always)]
fn slot_of(endpoint: &Endpoint) -> Option<u32> {
    if let Some(slot) = HTTP_ENDPOINTS.get_ptr(endpoint) {
        // SAFETY: a map value.
        return Some(unsafe { *slot });
    }
    let [a, b, c, d] = endpoint.addr;
    let hash = (a ^ b ^ c ^ d ^ endpoint.port.wrapping_mul(0x9e37_79b9) ^ endpoint.kind)
        .wrapping_mul(0x85eb_ca6b);
    for i in 0..8u32 {
        let slot = (hash.wrapping_add(i)) % HTTP_ENDPOINT_ENTRIES;
        if HTTP_SLOT_OWNER
            .insert(slot, endpoint, BPF_NOEXIST as u64)
            .is_err()
        {
            continue;
        }
        if HTTP_ENDPOINTS
            .insert(endpoint, slot, BPF_NOEXIST as u64)
            .is_ok()
        {
            return Some(slot);
        }
        let _ = HTTP_SLOT_OWNER.remove(slot);
        // SAFETY: a map value.
        return HTTP_ENDPOINTS.get_ptr(endpoint).map(|s| unsafe { *s });
    }
    None
}

/// This CPU's counters of `slot`: an array lookup, which the verifier inlines.
#[inline(always)]
fn counters(slot: u32) -> Option<&'static mut EndpointCounters> {
    // SAFETY: a per-CPU value; runs of the program on one CPU do not overlap.
    HTTP_COUNTERS.get_ptr_mut(slot).map(|c| unsafe { &mut *c })
}

/// The end of socket `cookie`'s flow, if it is one. nginx's close and a client's reset can
/// end one flow on two CPUs at once: the slot is given back by compare-and-swap, and only
/// the CPU that gave it back counts the close (the other must not clear a slot that a new
/// flow may have claimed in between).
#[inline(always)]
pub fn closing(cookie: u64) {
    let Some(entry) = flow_of(cookie) else {
        return;
    };
    let slot = entry.slot;
    if compare_and_swap(&raw mut entry.cookie, cookie, 0)
        && let Some(c) = counters(slot)
    {
        c.closed += 1;
    }
}

/// Which way bytes went through the socket.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Way {
    Received,
    Sent,
}

/// `bytes` went `way` through socket `cookie`, from or to the buffer `buffer` finds: counts
/// them and, in the direction that carries requests, parses them. The buffer is looked for
/// only then, not for every socket call of nginx's cgroup.
#[inline(always)]
pub fn transferred(cookie: u64, buffer: impl FnOnce() -> Buffer, bytes: u64, way: Way) {
    // nginx's calls on one socket do not interleave (one worker owns it).
    let Some(entry) = flow_of(cookie) else {
        return;
    };
    let Some(c) = counters(entry.slot) else {
        return;
    };
    match way {
        Way::Received => c.bytes_in += bytes,
        Way::Sent => c.bytes_out += bytes,
    }
    if (entry.flow.kind == FLOW_CLIENT) == (way == Way::Received)
        && let Some(found) = scan(&mut entry.flow, buffer(), bytes)
    {
        c.requests += found.tally.requests;
        c.bad_requests += found.tally.bad_requests;
        c.unparsed += found.lost;
    }
}
