//! `tp_btf/block_bio_queue`: counts each bio submitted to a block device, bytes and
//! operations, read or write, for the cgroup of the task submitting it.
//!
//! The kernel traces a bio here once, when it is first queued (a split remainder that is
//! resubmitted is not traced again), with its full size: the same bytes the kernel's own
//! per-cgroup I/O statistics count. Direct and synchronous I/O is submitted by the task that
//! does it and lands in its cgroup. Writeback of dirty pages is submitted by kernel flusher
//! threads, so Lynx charges it to the host; the kernel (cgroup v2 with writeback
//! accounting) charges the cgroup that dirtied the pages.
use aya_ebpf::{
    helpers::bpf_get_current_cgroup_id, macros::btf_tracepoint, programs::BtfTracePointContext,
};
use lynx_common::{DROP_CGROUP_IO_FULL, IoCounters};

use crate::maps::{CGROUP_IO, update_cgroup};

/// Offsets in `struct bio` of `bi_opf` and `bi_iter.bi_size`, set by the loader from BTF.
#[unsafe(no_mangle)]
static BIO_OPF_OFFSET: u64 = 0;
#[unsafe(no_mangle)]
static BIO_SIZE_OFFSET: u64 = 0;

/// `REQ_OP_MASK` and `REQ_OP_DISCARD` of `include/linux/blk_types.h`.
const REQ_OP_MASK: u32 = 0xff;
const REQ_OP_DISCARD: u32 = 3;

#[btf_tracepoint(function = "block_bio_queue")]
pub fn lynx_bio_queue(ctx: BtfTracePointContext) -> i32 {
    try_bio_queue(&ctx).map_or(1, |()| 0)
}

fn try_bio_queue(ctx: &BtfTracePointContext) -> Result<(), u32> {
    // block_bio_queue(struct bio *bio)
    let bio: *const u8 = ctx.arg(0);
    // SAFETY: a BTF-typed pointer; the verifier checks both loads against `struct bio`.
    let (opf, size) = unsafe {
        let field = |offset: &u64| {
            bio.add(core::ptr::read_volatile(offset) as usize)
                .cast::<u32>()
        };
        (
            core::ptr::read(field(&BIO_OPF_OFFSET)),
            core::ptr::read(field(&BIO_SIZE_OFFSET)),
        )
    };
    let op = opf & REQ_OP_MASK;
    // As the kernel's statistics: discards apart, odd operations write, the rest read.
    if op == REQ_OP_DISCARD {
        return Ok(());
    }
    let bytes = u64::from(size);
    // SAFETY: a helper without arguments, allowed in tracing programs.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    update_cgroup(
        &CGROUP_IO,
        cgroup_id,
        DROP_CGROUP_IO_FULL,
        |io: &mut IoCounters| {
            if op & 1 == 1 {
                io.write_bytes += bytes;
                io.write_ops += 1;
            } else {
                io.read_bytes += bytes;
                io.read_ops += 1;
            }
        },
    );
    Ok(())
}
