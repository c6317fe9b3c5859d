//! The system call behind a socket transfer that [`crate::http_recv`] and
//! [`crate::http_send`] see: which of nginx's buffers the bytes are in.
//!
//! The socket tracepoints hand over the socket and the byte count, not the buffer. The buffer
//! is in the calling task's saved user registers (`bpf_task_pt_regs`; x86-64 syscall ABI:
//! rdi, rsi, rdx; `orig_ax` is the syscall number), which stay the caller's for the whole call.
use aya_ebpf::{
    helpers::{
        bpf_get_current_task_btf, bpf_get_socket_cookie, bpf_probe_read_user, bpf_task_pt_regs,
    },
    programs::BtfTracePointContext,
};

use crate::http::{self, Buffer, Way};

const SYS_READ: u64 = 0;
const SYS_WRITE: u64 = 1;
const SYS_READV: u64 = 19;
const SYS_WRITEV: u64 = 20;
const SYS_SENDTO: u64 = 44;
const SYS_RECVFROM: u64 = 45;
const SYS_SENDMSG: u64 = 46;
const SYS_RECVMSG: u64 = 47;

/// Byte offsets in x86-64 `struct pt_regs`.
const REG_DX: usize = 12 * 8;
const REG_SI: usize = 13 * 8;
const REG_ORIG_AX: usize = 15 * 8;

/// `MSG_PEEK`: the bytes stay in the socket and are read again.
const MSG_PEEK: i32 = 2;

/// A saved register: a plain load, which the verifier checks against `struct pt_regs` in the
/// kernel's BTF (`bpf_task_pt_regs` returns a BTF pointer), no helper call.
#[inline(always)]
fn reg(regs: *const u8, offset: usize) -> u64 {
    // SAFETY: `regs` is a `struct pt_regs *`; every offset used is a field.
    unsafe { core::ptr::read_volatile(regs.add(offset).cast::<u64>()) }
}

/// A transfer on a socket: `sock_recv_length`/`sock_send_length(struct sock *sk, int ret,
/// int flags)`. Tasks outside nginx's cgroup leave after one helper call, sockets that are not
/// followed after a cookie and a map lookup.
#[inline(always)]
pub fn transfer(ctx: &BtfTracePointContext, way: Way) {
    if !http::in_nginx_cgroup() {
        return;
    }
    let bytes: i32 = ctx.arg(1);
    let flags: i32 = ctx.arg(2);
    if bytes <= 0 || (way == Way::Received && flags & MSG_PEEK != 0) {
        return;
    }
    let sk: *mut core::ffi::c_void = ctx.arg(0);
    // SAFETY: `sk` is the tracepoint's BTF `struct sock *`.
    let cookie = unsafe { bpf_get_socket_cookie(sk) };
    http::transferred(cookie, || buffer(way), bytes as u64, way);
}

/// Where the bytes of the current system call are in user memory, for the calls nginx makes;
/// [`Buffer::None`] for the others (`sendfile`, `splice`: the bytes are not in user memory).
#[inline(always)]
fn buffer(way: Way) -> Buffer {
    // SAFETY: the helpers take the current task, a trusted BTF pointer.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const u8;
    let (id, si) = (reg(regs, REG_ORIG_AX), reg(regs, REG_SI));
    match (way, id) {
        (Way::Received, SYS_READ | SYS_RECVFROM) | (Way::Sent, SYS_WRITE | SYS_SENDTO) => {
            Buffer::User(si)
        }
        (Way::Received, SYS_READV) | (Way::Sent, SYS_WRITEV) => {
            Buffer::Iovec(si, reg(regs, REG_DX))
        }
        (Way::Received, SYS_RECVMSG) | (Way::Sent, SYS_SENDMSG) => msghdr_iovec(si),
        _ => Buffer::None,
    }
}

/// The iovec array of a user `struct msghdr` (`msg_iov` at 16, `msg_iovlen` at 24).
#[inline(always)]
fn msghdr_iovec(msg: u64) -> Buffer {
    // SAFETY: the helper checks the user address. (Plain values, not a match on the two
    // `Result`s: that shape made LLVM keep a register across the second helper call, which
    // the verifier rejects.)
    let iov = unsafe { bpf_probe_read_user((msg + 16) as *const u64) }.unwrap_or(0);
    // SAFETY: as above.
    let len = unsafe { bpf_probe_read_user((msg + 24) as *const u64) }.unwrap_or(0);
    if iov == 0 {
        Buffer::None
    } else {
        Buffer::Iovec(iov, len)
    }
}
