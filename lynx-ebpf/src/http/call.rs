//! The system call behind a socket transfer: which of nginx's buffers the bytes are in, and,
//! where only the system call is seen ([`crate::http::exit`]), which socket they went through.
//!
//! The socket tracepoints ([`crate::http::recv`], [`crate::http::send`]) hand over the socket
//! and the byte count, not the buffer. The buffer is in the calling task's saved user registers
//! (`bpf_task_pt_regs`; x86-64 syscall ABI: rdi, rsi, rdx, r10; `orig_ax` is the syscall
//! number), which stay the caller's for the whole call.
use aya_ebpf::{
    helpers::{
        bpf_get_current_task, bpf_get_current_task_btf, bpf_get_socket_cookie,
        bpf_probe_read_kernel, bpf_probe_read_user, bpf_task_pt_regs,
    },
    programs::BtfTracePointContext,
};
use lynx_common::http::FdWalk;

use crate::http::{self, Buffer, Way};

/// Where a file descriptor's socket cookie is, set by the loader from BTF.
#[unsafe(no_mangle)]
static FD_WALK: FdWalk = FdWalk::UNSET;

const SYS_READ: u64 = 0;
const SYS_WRITE: u64 = 1;
const SYS_READV: u64 = 19;
const SYS_WRITEV: u64 = 20;
const SYS_SENDFILE: u64 = 40;
const SYS_SENDTO: u64 = 44;
const SYS_RECVFROM: u64 = 45;
const SYS_SENDMSG: u64 = 46;
const SYS_RECVMSG: u64 = 47;

/// Byte offsets in x86-64 `struct pt_regs`.
const REG_R10: usize = 7 * 8;
const REG_DX: usize = 12 * 8;
const REG_SI: usize = 13 * 8;
const REG_DI: usize = 14 * 8;
const REG_ORIG_AX: usize = 15 * 8;

const S_IFMT: u16 = 0o170_000;
const S_IFSOCK: u16 = 0o140_000;

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

/// A system call returned: `sys_exit(struct pt_regs *regs, long ret)`. On a socket call of
/// nginx's cgroup that moved bytes through a followed socket, counts and parses them as
/// [`transfer`] does. Tasks outside nginx's cgroup leave after one helper call; nginx's calls
/// on sockets walk the file table to the socket's cookie.
#[inline(always)]
pub fn returned(ctx: &BtfTracePointContext) {
    if !http::in_nginx_cgroup() {
        return;
    }
    let bytes: i64 = ctx.arg(1);
    if bytes <= 0 {
        return;
    }
    let regs: *const u8 = ctx.arg(0);
    let call = reg(regs, REG_ORIG_AX);
    let (way, flags) = match call {
        SYS_READ | SYS_READV => (Way::Received, 0),
        SYS_RECVFROM => (Way::Received, reg(regs, REG_R10)),
        SYS_RECVMSG => (Way::Received, reg(regs, REG_DX)),
        SYS_WRITE | SYS_WRITEV | SYS_SENDTO | SYS_SENDMSG | SYS_SENDFILE => (Way::Sent, 0),
        _ => return,
    };
    if flags as i32 & MSG_PEEK != 0 {
        return;
    }
    // `sendfile`'s first argument too is where the bytes went.
    let Some(cookie) = socket_cookie(reg(regs, REG_DI)) else {
        return;
    };
    http::transferred(cookie, || buffer(way), bytes as u64, way);
}

/// The cookie of the socket behind the current task's file descriptor `fd`; `None` when it is
/// not a socket or has no cookie yet (no flow ever started on it).
#[inline(always)]
fn socket_cookie(fd: u64) -> Option<u64> {
    let at = |field: &u64| {
        // SAFETY: a read-only global the loader set; volatile so the compiler does not fold it.
        unsafe { core::ptr::read_volatile(field) }
    };
    // SAFETY: no preconditions; the address is only read through bpf_probe_read_kernel.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let files: *const u8 = kernel_read(task, at(&FD_WALK.task_files))?;
    let fdt: *const u8 = kernel_read(files, at(&FD_WALK.files_fdt))?;
    let max_fds: u32 = kernel_read(fdt, at(&FD_WALK.fdt_max_fds))?;
    if fd >= u64::from(max_fds) {
        return None;
    }
    let fds: *const u8 = kernel_read(fdt, at(&FD_WALK.fdt_fd))?;
    let file: *const u8 = kernel_read(fds, fd * 8)?;
    let inode: *const u8 = kernel_read(file, at(&FD_WALK.file_inode))?;
    let mode: u16 = kernel_read(inode, at(&FD_WALK.inode_mode))?;
    if mode & S_IFMT != S_IFSOCK {
        return None;
    }
    let socket: *const u8 = kernel_read(file, at(&FD_WALK.file_private_data))?;
    let sk: *const u8 = kernel_read(socket, at(&FD_WALK.socket_sk))?;
    let cookie: u64 = kernel_read(sk, at(&FD_WALK.sock_cookie))?;
    (cookie != 0).then_some(cookie)
}

/// A `T` at `base + offset` in kernel memory; `None` when `base` is null or the read faults.
#[inline(always)]
fn kernel_read<T>(base: *const u8, offset: u64) -> Option<T> {
    if base.is_null() {
        return None;
    }
    // SAFETY: the helper checks the kernel address and fails rather than fault.
    unsafe { bpf_probe_read_kernel(base.add(offset as usize).cast::<T>()) }.ok()
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
