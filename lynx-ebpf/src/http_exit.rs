//! `tp_btf/sys_exit`: nginx's socket system calls, at their return (see [`crate::http`]).
//! Every task's system calls pass here; tasks outside nginx's cgroup leave after one helper
//! call, tasks of that cgroup that are not nginx after one more hash lookup.
//!
//! Arguments are read from the `struct pt_regs` the tracepoint hands over (x86-64 syscall
//! ABI: rdi, rsi, rdx, r10; `orig_ax` is the syscall number). At `sys_exit` they are still the
//! caller's: the kernel returns the result in `ax` and leaves the argument registers saved.
use aya_ebpf::{
    helpers::bpf_probe_read_user, macros::btf_tracepoint, programs::BtfTracePointContext,
};

use crate::http::{self, Buffer, Way};

const SYS_READ: u64 = 0;
const SYS_WRITE: u64 = 1;
const SYS_CLOSE: u64 = 3;
const SYS_READV: u64 = 19;
const SYS_WRITEV: u64 = 20;
const SYS_SENDFILE: u64 = 40;
const SYS_CONNECT: u64 = 42;
const SYS_ACCEPT: u64 = 43;
const SYS_SENDTO: u64 = 44;
const SYS_RECVFROM: u64 = 45;
const SYS_SENDMSG: u64 = 46;
const SYS_RECVMSG: u64 = 47;
const SYS_ACCEPT4: u64 = 288;

/// Byte offsets in x86-64 `struct pt_regs`.
const REG_R10: usize = 7 * 8;
const REG_DX: usize = 12 * 8;
const REG_SI: usize = 13 * 8;
const REG_DI: usize = 14 * 8;
const REG_ORIG_AX: usize = 15 * 8;

const MSG_PEEK: u64 = 2;
const EINPROGRESS: i64 = 115;

/// A saved register: a plain load, which the verifier checks against `struct pt_regs` in the
/// kernel's BTF (the tracepoint's argument is a trusted BTF pointer), no helper call.
#[inline(always)]
fn reg(regs: *const u8, offset: usize) -> u64 {
    // SAFETY: `regs` is the tracepoint's `struct pt_regs *`; every offset used is a field.
    unsafe { core::ptr::read_volatile(regs.add(offset).cast::<u64>()) }
}

/// The system calls below 64 that are followed, as a bit mask.
const FOLLOWED_BELOW_64: u64 = 1 << SYS_READ
    | 1 << SYS_WRITE
    | 1 << SYS_CLOSE
    | 1 << SYS_READV
    | 1 << SYS_WRITEV
    | 1 << SYS_SENDFILE
    | 1 << SYS_CONNECT
    | 1 << SYS_ACCEPT
    | 1 << SYS_SENDTO
    | 1 << SYS_RECVFROM
    | 1 << SYS_SENDMSG
    | 1 << SYS_RECVMSG;

#[btf_tracepoint(function = "sys_exit")]
pub fn lynx_http_exit(ctx: BtfTracePointContext) -> i32 {
    // sys_exit(struct pt_regs *regs, long ret)
    let regs: *const u8 = ctx.arg(0);
    let id = reg(regs, REG_ORIG_AX);
    // The system call number first: one load and a mask leave out most calls of every task
    // (epoll, futex, mmap...) before the cgroup helper and the process lookup.
    let followed = if id < 64 {
        FOLLOWED_BELOW_64 & (1 << id) != 0
    } else {
        id == SYS_ACCEPT4
    };
    if !followed || !http::is_nginx() {
        return 0;
    }
    try_sys_exit(regs, id, ctx.arg(1));
    0
}

#[inline(always)]
fn try_sys_exit(regs: *const u8, id: u64, ret: i64) -> Option<()> {
    match id {
        SYS_ACCEPT | SYS_ACCEPT4 if ret >= 0 => {
            http::accepted(ret as u64, http::sock_of_fd(ret as u64)?)?;
        }
        SYS_CONNECT if ret == 0 || ret == -EINPROGRESS => {
            let fd = reg(regs, REG_DI);
            http::connecting(fd, http::sock_of_fd(fd)?)?;
        }
        SYS_CLOSE if ret == 0 => http::closing(reg(regs, REG_DI)),
        _ if ret <= 0 => {}
        SYS_READ | SYS_RECVFROM | SYS_READV | SYS_RECVMSG => {
            let fd = reg(regs, REG_DI);
            let buffer = match id {
                SYS_READ => Buffer::User(reg(regs, REG_SI)),
                SYS_RECVFROM if reg(regs, REG_R10) & MSG_PEEK != 0 => return None,
                SYS_RECVFROM => Buffer::User(reg(regs, REG_SI)),
                SYS_READV => Buffer::Iovec(reg(regs, REG_SI), reg(regs, REG_DX)),
                _ if reg(regs, REG_DX) & MSG_PEEK != 0 => return None,
                _ => msghdr_iovec(reg(regs, REG_SI)),
            };
            http::transferred(fd, buffer, ret as u64, Way::Received);
        }
        SYS_WRITE | SYS_SENDTO | SYS_WRITEV | SYS_SENDMSG => {
            let fd = reg(regs, REG_DI);
            let buffer = match id {
                SYS_WRITE | SYS_SENDTO => Buffer::User(reg(regs, REG_SI)),
                SYS_WRITEV => Buffer::Iovec(reg(regs, REG_SI), reg(regs, REG_DX)),
                _ => msghdr_iovec(reg(regs, REG_SI)),
            };
            http::transferred(fd, buffer, ret as u64, Way::Sent);
        }
        // sendfile(out_fd, in_fd, offset, count): the bytes are not in user memory.
        SYS_SENDFILE => http::transferred(reg(regs, REG_DI), Buffer::None, ret as u64, Way::Sent),
        _ => {}
    }
    Some(())
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
