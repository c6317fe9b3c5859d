//! nginx's HTTP traffic: the bookkeeping shared by [`crate::http_exit`] and
//! [`crate::nginx_fork`] (design: `docs/design/nginx-counting.md`).
//!
//! nginx is followed at the exit of its system calls, so the byte stream is the one nginx
//! read or wrote, in order, without retransmissions, in nginx's own buffers. Flows are keyed
//! by (process, file descriptor); the descriptor is resolved to its `struct sock` (through the
//! task's file table) only at `accept`/`connect`, for the port, peer and socket type.
//!
//! - `accept`/`accept4` on a followed port: a client flow, counted by nginx's local port.
//! - `connect` of a TCP/IPv4 socket: an upstream flow, counted by peer address and port.
//! - `read`/`recvfrom`/`readv`/`recvmsg`: bytes in; on a client flow, requests are parsed.
//! - `write`/`sendto`/`writev`/`sendmsg`/`sendfile`: bytes out; on an upstream flow,
//!   requests are parsed.
//! - `close`: the flow ends.
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_probe_read_kernel,
    },
};
use lynx_common::{
    DROP_HTTP_ENDPOINTS_FULL,
    http::{
        Endpoint, EndpointCounters, FLOW_CLIENT, FLOW_UPSTREAM, HTTP_ENDPOINT_ENTRIES, HttpFlow,
        HttpFlowEntry, PORT_TLS, new_flow,
    },
};

pub use crate::http_parse::Buffer;
use crate::{
    http_parse::scan,
    maps::{
        HTTP_COUNTERS, HTTP_ENDPOINTS, HTTP_FLOWS, HTTP_PORTS, HTTP_SLOT_OWNER, HTTP_TARGET,
        NGINX_TGIDS, count_drop,
    },
};

/// Offsets set by the loader from BTF (`lynx_common::http::*_OFFSET_GLOBAL`).
#[unsafe(no_mangle)]
static SK_NUM_OFFSET: u64 = 0;
#[unsafe(no_mangle)]
static SK_DPORT_OFFSET: u64 = 0;
#[unsafe(no_mangle)]
static SK_DADDR_OFFSET: u64 = 0;
#[unsafe(no_mangle)]
static SK_V6_DADDR_OFFSET: u64 = 0;
#[unsafe(no_mangle)]
static SK_FAMILY_OFFSET: u64 = 0;
#[unsafe(no_mangle)]
static SK_TYPE_OFFSET: u64 = 0;
/// `task_struct.files`, `task_struct.tgid`, `files_struct.fdt`, `fdtable.fd`,
/// `fdtable.max_fds`, `file.private_data`, `file.f_inode`, `inode.i_mode`, `socket.sk`.
#[unsafe(no_mangle)]
static TASK_FILES_OFFSET: u64 = 0;
#[unsafe(no_mangle)]
static TASK_TGID_OFFSET: u64 = 0;
#[unsafe(no_mangle)]
static FILES_FDT_OFFSET: u64 = 0;
#[unsafe(no_mangle)]
static FDT_FD_OFFSET: u64 = 0;
#[unsafe(no_mangle)]
static FDT_MAX_FDS_OFFSET: u64 = 0;
#[unsafe(no_mangle)]
static FILE_PRIVATE_OFFSET: u64 = 0;
#[unsafe(no_mangle)]
static FILE_INODE_OFFSET: u64 = 0;
#[unsafe(no_mangle)]
static INODE_MODE_OFFSET: u64 = 0;
#[unsafe(no_mangle)]
static SOCKET_SK_OFFSET: u64 = 0;

const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const SOCK_STREAM: u16 = 1;

#[inline(always)]
fn global(value: &u64) -> u64 {
    // SAFETY: a read-only global the loader set; volatile so the compiler does not fold it.
    unsafe { core::ptr::read_volatile(value) }
}

/// Whether the current task is nginx: first its cgroup (one helper call, which rejects most
/// of the host when nginx has a cgroup of its own), then its process.
#[inline(always)]
pub fn is_nginx() -> bool {
    let Some(target) = HTTP_TARGET.get(0) else {
        return false;
    };
    // SAFETY: no preconditions.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    cgroup == target.cgroup_id
        && target.cgroup_id != 0
        && is_nginx_tgid((bpf_get_current_pid_tgid() >> 32) as u32)
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
pub fn task_tgid(task: *const u8) -> Option<u32> {
    read(task, global(&TASK_TGID_OFFSET))
}

/// The key of a flow: nginx's process (tgid) and the socket's file descriptor in it. A worker
/// owns the sockets it accepts and connects, so this names one socket for its lifetime,
/// from `accept`/`connect` to `close`, and costs no walk of the file table per call.
#[inline(always)]
fn flow_key(fd: u64) -> u64 {
    let tgid = bpf_get_current_pid_tgid() >> 32;
    (tgid << 32) | (fd & 0xffff_ffff)
}

/// The `struct sock` behind file descriptor `fd` of the current task, if it is a socket.
#[inline(always)]
pub fn sock_of_fd(fd: u64) -> Option<*const u8> {
    // SAFETY: no preconditions; the pointer is only read through bpf_probe_read_kernel.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let files: *const u8 = read(task, global(&TASK_FILES_OFFSET))?;
    let fdt: *const u8 = read(files, global(&FILES_FDT_OFFSET))?;
    let max_fds: u32 = read(fdt, global(&FDT_MAX_FDS_OFFSET))?;
    if fd >= u64::from(max_fds) {
        return None;
    }
    let fds: *const u8 = read(fdt, global(&FDT_FD_OFFSET))?;
    let file: *const u8 = read(fds, fd * 8)?;
    if file.is_null() {
        return None;
    }
    let inode: *const u8 = read(file, global(&FILE_INODE_OFFSET))?;
    let mode: u16 = read(inode, global(&INODE_MODE_OFFSET))?;
    if mode & S_IFMT != S_IFSOCK {
        return None;
    }
    let socket: *const u8 = read(file, global(&FILE_PRIVATE_OFFSET))?;
    let sk: *const u8 = read(socket, global(&SOCKET_SK_OFFSET))?;
    (!sk.is_null()).then_some(sk)
}

#[inline(always)]
fn read<T>(base: *const u8, offset: u64) -> Option<T> {
    // SAFETY: the helper checks the kernel address and fails rather than fault.
    unsafe { bpf_probe_read_kernel(base.add(offset as usize).cast::<T>()).ok() }
}

/// A client flow for the socket nginx just accepted, if its port is followed, and one
/// accept on that port.
#[inline(always)]
pub fn accepted(fd: u64, sk: *const u8) -> Option<()> {
    let family: u16 = read(sk, global(&SK_FAMILY_OFFSET))?;
    if family != AF_INET && family != AF_INET6 {
        return None;
    }
    let port: u16 = read(sk, global(&SK_NUM_OFFSET))?;
    // SAFETY: a map value, read once.
    let mode = unsafe { *HTTP_PORTS.get(u32::from(port))? };
    opened(fd, new_flow(FLOW_CLIENT, port, mode != PORT_TLS), [0; 4])
}

/// An upstream flow for the TCP socket nginx is connecting, IPv4 or IPv6 (not its
/// resolver's UDP sockets, not unix sockets).
#[inline(always)]
pub fn connecting(fd: u64, sk: *const u8) -> Option<()> {
    let family: u16 = read(sk, global(&SK_FAMILY_OFFSET))?;
    let sock_type: u16 = read(sk, global(&SK_TYPE_OFFSET))?;
    if sock_type != SOCK_STREAM {
        return None;
    }
    let addr = match family {
        AF_INET => Endpoint::ipv4_mapped(read(sk, global(&SK_DADDR_OFFSET))?),
        AF_INET6 => read(sk, global(&SK_V6_DADDR_OFFSET))?,
        _ => return None,
    };
    let port: u16 = read(sk, global(&SK_DPORT_OFFSET))?;
    opened(fd, new_flow(FLOW_UPSTREAM, u16::from_be(port), true), addr)
}

#[inline(always)]
fn opened(fd: u64, flow: HttpFlow, addr: [u32; 4]) -> Option<()> {
    let endpoint = Endpoint {
        kind: u32::from(flow.kind),
        port: u32::from(flow.port),
        addr,
    };
    let Some(slot) = slot_of(&endpoint) else {
        count_drop(DROP_HTTP_ENDPOINTS_FULL);
        return None;
    };
    let entry = HttpFlowEntry {
        flow,
        slot,
        _pad: 0,
    };
    let _ = HTTP_FLOWS.insert(flow_key(fd), entry, 0);
    counters(slot)?.opened += 1;
    Some(())
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

/// The end of `fd`'s flow, if it is one.
#[inline(always)]
pub fn closing(fd: u64) {
    let key = flow_key(fd);
    let Some(entry) = HTTP_FLOWS.get_ptr(key) else {
        return;
    };
    // SAFETY: a map value.
    let slot = unsafe { (*entry).slot };
    if let Some(c) = counters(slot) {
        c.closed += 1;
    }
    let _ = HTTP_FLOWS.remove(key);
}

/// Which way bytes went through the socket.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Way {
    Received,
    Sent,
}

/// `bytes` went `way` through `fd`, from or to `buffer`: counts them and, in the direction
/// that carries requests, parses them.
#[inline(always)]
pub fn transferred(fd: u64, buffer: Buffer, bytes: u64, way: Way) {
    let Some(entry) = HTTP_FLOWS.get_ptr_mut(flow_key(fd)) else {
        return;
    };
    // SAFETY: a map value; nginx's calls on one socket do not interleave (one worker owns it).
    let entry = unsafe { &mut *entry };
    let Some(c) = counters(entry.slot) else {
        return;
    };
    match way {
        Way::Received => c.bytes_in += bytes,
        Way::Sent => c.bytes_out += bytes,
    }
    if (entry.flow.kind == FLOW_CLIENT) == (way == Way::Received)
        && let Some(found) = scan(&mut entry.flow, buffer, bytes)
    {
        c.requests += found.tally.requests;
        c.bad_requests += found.tally.bad_requests;
        c.unparsed += found.lost;
    }
}
