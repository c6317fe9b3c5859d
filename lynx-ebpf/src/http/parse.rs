//! The `bpf_loop` driver of the HTTP/1.x framing state machine (`lynx_common::http`): feeds it
//! the bytes of one system call, which are in the caller's user memory.
//!
//! The bytes are copied in windows of [`WINDOW`] bytes into a per-CPU scratch value and
//! walked by `bpf_loop`: one callback per segment change, per body skip (however large the
//! body), per run of whole words in a line that decides nothing but its end (up to a window),
//! or per up to [`BYTES_PER_STEP`] other bytes of request line, headers or chunk framing.
use aya_ebpf::{
    cty::c_void,
    helpers::{bpf_probe_read_user, generated},
    macros::map,
    maps::PerCpuArray,
};
use lynx_common::http::{self as framing, HttpFlow, Tally};

/// Bytes copied from user memory at a time.
const WINDOW: usize = 256;
/// Bytes walked per callback: a callback costs an indirect call and a map lookup, more than a
/// byte does. 64 measured about 9% less run time per request than 32; 128 takes the verifier
/// past its million instructions, and 64 already doubles its time (about 0.45 s at load).
const BYTES_PER_STEP: u64 = 64;

/// Where the bytes of a transfer are in the caller's memory.
#[derive(Clone, Copy)]
pub enum Buffer {
    /// One user buffer.
    User(u64),
    /// A user array of `struct iovec` and its length.
    Iovec(u64, u64),
    /// Not in user memory (`sendfile`): only a body skip can consume them.
    None,
}

/// Per-CPU scratch: the whole state of one scan. It lives in a map value rather than on the
/// stack because the verifier tracks stack values precisely across `bpf_loop` callback
/// iterations and never converges on a byte-by-byte parser (1M instructions); map values are
/// opaque to it, so the callback is verified once.
///
/// One run of a BTF tracepoint program never overlaps another run of the same program on the
/// same CPU: the kernel counts a nested or preempting run as a recursion miss and skips it
/// (`bpf_prog->active`), so this per-CPU slot is never shared by two runs in progress.
#[repr(C)]
pub struct Scratch {
    flow: HttpFlow,
    tally: Tally,
    /// 1 when bytes the parser needed were not readable.
    lost: u64,
    /// 1 when the segments come from an iovec array.
    from_iovec: u64,
    /// Current user segment: address of its next byte (0: not readable) and bytes left in it.
    base: u64,
    seg_left: u64,
    /// Iovec source: next `struct iovec` and how many remain.
    iov: u64,
    iov_count: u64,
    /// Bytes of the transfer not yet consumed.
    total_left: u64,
    /// The byte window: user address and length of its bytes.
    start: u64,
    len: u64,
    /// The window's bytes, in aligned words (see [`run_words`]), and a word of slack: the
    /// word after any window word is inside, which the verifier can check from a mask alone.
    words: [u64; WINDOW_WORDS + 1],
}

const WINDOW_WORDS: usize = WINDOW / 8;

/// The window's byte `at`, which the caller knows is in the window; the mask bounds it for
/// the verifier.
#[inline(always)]
fn window_byte(s: &Scratch, at: usize) -> u8 {
    // SAFETY: `at & (WINDOW - 1)` is inside `words`, read as bytes.
    unsafe { *s.words.as_ptr().cast::<u8>().add(at & (WINDOW - 1)) }
}

#[map]
static HTTP_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// What one scan found.
pub struct Found {
    pub tally: Tally,
    /// 1 when the framing was lost in this transfer.
    pub lost: u64,
}

/// Feeds the `bytes` that a system call moved through `buffer` to `flow`'s state machine.
#[inline(always)]
pub fn scan(flow: &mut HttpFlow, buffer: Buffer, bytes: u64) -> Option<Found> {
    if bytes == 0 || framing::is_closed(flow) {
        return None;
    }
    // SAFETY: this CPU's slot, see `Scratch`.
    let s = unsafe { &mut *HTTP_SCRATCH.get_ptr_mut(0)? };
    s.flow = *flow;
    s.tally = Tally::default();
    s.lost = 0;
    s.total_left = bytes;
    // The window never outlives a scan: the next call may reuse the same buffer address
    // with new bytes in it.
    s.len = 0;
    (s.from_iovec, s.base, s.seg_left, s.iov, s.iov_count) = match buffer {
        Buffer::Iovec(iov, count) => (1, 0, 0, iov, count),
        Buffer::User(base) => (0, base, bytes, 0, 0),
        Buffer::None => (0, 0, bytes, 0, 0),
    };
    // One callback per BYTES_PER_STEP bytes of framing, per body skip and per segment: this
    // bound is never reached by a transfer of a consistent size.
    let loops = if bytes > 0xf_0000 {
        0x10_0000
    } else {
        bytes as u32 + 0x1_0000
    };
    // SAFETY: `step` has the callback signature bpf_loop expects; it takes no context.
    unsafe { generated::bpf_loop(loops, step as *mut c_void, core::ptr::null_mut(), 0) };
    *flow = s.flow;
    Some(Found {
        tally: s.tally,
        lost: s.lost,
    })
}

/// One step of the scan: the next segment, a body skip, or a few bytes. Returns 1 to stop.
extern "C" fn step(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some(scratch) = HTTP_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's slot, see `Scratch`.
    let s = unsafe { &mut *scratch };
    if s.total_left == 0 || framing::is_closed(&s.flow) {
        return 1;
    }
    if s.seg_left == 0 {
        next_segment(s);
        return 0;
    }
    if !framing::wants_bytes(&s.flow) {
        let available = s.seg_left.min(s.total_left);
        let n = framing::skip(&mut s.flow, available);
        consume(s, n);
        return 0;
    }
    if framing::in_run(&s.flow) && run_words(s) {
        return 0;
    }
    let want = s.seg_left.min(BYTES_PER_STEP);
    if window_left(s) < want && !refill(s) {
        framing::lose(&mut s.flow);
        s.lost = 1;
        return 1;
    }
    let mut offset = (s.base - s.start) as usize;
    let mut taken = 0u64;
    #[expect(
        clippy::explicit_counter_loop,
        reason = "a constant trip count is what lets the verifier bound the loop"
    )]
    for _ in 0..BYTES_PER_STEP {
        if taken == want || !framing::wants_bytes(&s.flow) {
            break;
        }
        let byte = window_byte(s, offset);
        offset += 1;
        taken += 1;
        let was_in_run = framing::in_run(&s.flow);
        framing::byte(&mut s.flow, byte, &mut s.tally);
        // A run starts: the next callback takes it by words.
        if !was_in_run && framing::in_run(&s.flow) {
            break;
        }
    }
    consume(s, taken);
    0
}

/// `n` bytes of the current segment are consumed. An unreadable segment (`base` 0, only body
/// skips consume it) stays unreadable.
#[inline(always)]
fn consume(s: &mut Scratch, n: u64) {
    s.seg_left -= n;
    s.total_left -= n;
    if s.base != 0 {
        s.base += n;
    }
}

/// Bytes of the current segment already in the window, from `s.base` on.
#[inline(always)]
fn window_left(s: &Scratch) -> u64 {
    if s.base >= s.start && s.base - s.start < s.len {
        s.start + s.len - s.base
    } else {
        0
    }
}

/// Takes a run (`framing::in_run`) eight bytes at a time, up to the word that holds a byte the
/// run cannot take or the window's end: most bytes of a request with long header lines go
/// this way, at a fraction of the byte path's instructions. True when it took any; the byte
/// path takes what is left.
#[inline(always)]
fn run_words(s: &mut Scratch) -> bool {
    if window_left(s) < 8 && (s.seg_left < 8 || !refill(s)) {
        return false;
    }
    let available = window_left(s).min(s.seg_left);
    let offset = (s.base - s.start) as usize;
    // A run's words straddle the window's aligned ones by the same shift throughout (the run
    // advances by whole words): each is the high part of one aligned word and the low part
    // of the next, which the following run word starts from. Two shifts stand for one by
    // `64 - shift`, which would overflow at a shift of 0.
    let shift = (offset % 8) as u32 * 8;
    let mut index = offset / 8;
    let mut low = s.words[index & (WINDOW_WORDS - 1)];
    let mut last = 0;
    let mut taken = 0u64;
    #[expect(
        clippy::explicit_counter_loop,
        reason = "a constant trip count is what lets the verifier bound the loop"
    )]
    for _ in 0..WINDOW_WORDS {
        if taken + 8 > available {
            break;
        }
        // The mask is a no-op (the run word is in the window, so the aligned word after its
        // first byte's is at most the slack word); it bounds the index for the verifier.
        let high = s.words[(index & (WINDOW_WORDS - 1)) + 1];
        let word = (low >> shift) | ((high << 1) << (63 - shift));
        if !framing::is_run_word(word) {
            break;
        }
        last = word;
        low = high;
        index += 1;
        taken += 8;
    }
    if taken > 0 {
        framing::take_run_words(&mut s.flow, last, (taken / 8) as u16);
    }
    consume(s, taken);
    taken > 0
}

/// Moves to the next iovec; past the last one (cannot happen for a consistent return value),
/// the rest is unreadable.
#[inline(always)]
fn next_segment(s: &mut Scratch) {
    if s.from_iovec != 0 && s.iov_count > 0 {
        // SAFETY: the helper checks the user address.
        let base = unsafe { bpf_probe_read_user(s.iov as *const u64) }.unwrap_or(0);
        // SAFETY: as above.
        let len = unsafe { bpf_probe_read_user((s.iov + 8) as *const u64) }.unwrap_or(0);
        s.iov += 16;
        s.iov_count -= 1;
        s.base = base;
        s.seg_left = len.min(s.total_left);
    } else {
        s.base = 0;
        s.seg_left = s.total_left;
    }
}

/// Loads the window from `s.base`: up to [`WINDOW`] bytes of the current segment. False when
/// they are not readable user memory (or there is none: [`Buffer::None`]).
#[inline(always)]
fn refill(s: &mut Scratch) -> bool {
    let n = s.seg_left.min(WINDOW as u64);
    if s.base == 0 || n == 0 {
        return false;
    }
    // SAFETY: the helper checks the user address and fails rather than fault.
    let ret = unsafe {
        generated::bpf_probe_read_user(
            s.words.as_mut_ptr().cast(),
            n as u32,
            s.base as *const c_void,
        )
    };
    if ret != 0 {
        s.len = 0;
        return false;
    }
    s.start = s.base;
    s.len = n;
    true
}
