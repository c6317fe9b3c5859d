//! nginx's HTTP traffic, counted in the kernel (see `docs/design/nginx-counting.md`): the maps,
//! their values, and the HTTP/1.x framing state machine that both the eBPF program and the
//! unit tests run, so the parser tested in user space is the one the kernel runs.
//!
//! The state machine sees one direction of one connection: the bytes nginx read from a client,
//! or wrote to an upstream, in order and once (the socket layer has reassembled them). It
//! counts a *request start* at the first byte that arrives where a request is due, which is
//! when nginx itself creates a request and counts it in `stub_status`; follows the request line
//! and headers; and skips `Content-Length` and chunked bodies arithmetically, so body bytes are
//! never taken for requests.

/// Array of [`HttpFlowEntry`], the sockets of nginx being followed, each in one of the
/// [`HTTP_FLOW_PROBES`] slots from [`flow_slot`]`(cookie, 0)` on, `cookie` being the socket's
/// (the kernel's `sock_gen_cookie`). A slot is claimed with a compare-and-swap of its cookie
/// and freed when the socket closes: no lock, no hash, no allocation per connection.
pub const HTTP_FLOWS_MAP: &str = "HTTP_FLOWS";
/// Hash: [`Endpoint`] -> slot (`u32`) in [`HTTP_COUNTERS_MAP`], assigned by the kernel the
/// first time nginx accepts on a port or connects to an upstream.
pub const HTTP_ENDPOINTS_MAP: &str = "HTTP_ENDPOINTS";
/// Per-CPU array of [`EndpointCounters`], indexed by slot: an inlined array lookup (no hash)
/// on every transfer.
pub const HTTP_COUNTERS_MAP: &str = "HTTP_COUNTERS";
/// Hash: slot (`u32`) -> the [`Endpoint`] that owns it (how the kernel claims a free slot
/// without atomics).
pub const HTTP_SLOT_OWNERS_MAP: &str = "HTTP_SLOT_OWNER";
/// Array with one [`HttpTarget`]: which nginx to follow, written by user space.
pub const HTTP_TARGET_MAP: &str = "HTTP_TARGET";
/// Hash: process id (`u32`) -> `u32` 1: nginx's processes. Seeded by user space from the
/// master's pid file; the fork program adds the children nginx starts (workers after a
/// reload) at once.
pub const NGINX_TGIDS_MAP: &str = "NGINX_TGIDS";
/// Hash: local port (`u32`) -> `PORT_*`: the listening ports whose connections are followed.
pub const HTTP_PORTS_MAP: &str = "HTTP_PORTS";

/// Capacity of [`HTTP_FLOWS_MAP`]: open nginx sockets followed at one time.
pub const HTTP_FLOW_ENTRIES: u32 = 65536;
/// Slots a socket's flow may take in [`HTTP_FLOWS_MAP`]: from its cookie's slot on.
pub const HTTP_FLOW_PROBES: u32 = 8;

/// The `probe`th slot in [`HTTP_FLOWS_MAP`] that socket `cookie`'s flow may take. The kernel
/// hands out cookies in sequence, so the flows open at one time fall in distinct slots.
#[inline(always)]
pub const fn flow_slot(cookie: u64, probe: u32) -> u32 {
    (cookie as u32).wrapping_add(probe) & (HTTP_FLOW_ENTRIES - 1)
}
const _: () = assert!(HTTP_FLOW_ENTRIES.is_power_of_two());
/// Endpoints (listening ports plus upstream addresses) that can be counted.
pub const HTTP_ENDPOINT_ENTRIES: u32 = 4096;
/// nginx processes that can be followed (master, workers, cache helpers, old generations).
pub const NGINX_TGID_ENTRIES: u32 = 1024;
/// Listening ports that can be configured.
pub const HTTP_PORT_ENTRIES: u32 = 64;

/// [`HTTP_PORTS_MAP`] value: plain HTTP/1.x, requests are parsed.
pub const PORT_PLAIN: u32 = 1;
/// [`HTTP_PORTS_MAP`] value: TLS, connections and bytes only.
pub const PORT_TLS: u32 = 2;

/// Read-only global set by the loader from BTF: `task_struct.tgid`.
pub const TASK_TGID_OFFSET_GLOBAL: &str = "TASK_TGID_OFFSET";

/// Read-only global set by the loader from BTF: [`FdWalk`], for [`HTTP_EXIT_PROGRAM`].
pub const FD_WALK_GLOBAL: &str = "FD_WALK";

/// BTF tracepoint program on `sock_recv_length`: what nginx's sockets received.
pub const HTTP_RECV_PROGRAM: &str = "lynx_http_recv";
pub const HTTP_RECV_TRACEPOINT: &str = "sock_recv_length";
/// BTF tracepoint program on `sock_send_length`: what nginx's sockets sent.
pub const HTTP_SEND_PROGRAM: &str = "lynx_http_send";
pub const HTTP_SEND_TRACEPOINT: &str = "sock_send_length";
/// BTF tracepoint program on `sys_exit`: what nginx's sockets received and sent, on kernels
/// without `sock_recv_length` and `sock_send_length` (before 6.3). Runs at the end of every
/// system call of the host, up to its cgroup check.
pub const HTTP_EXIT_PROGRAM: &str = "lynx_http_exit";
pub const HTTP_EXIT_TRACEPOINT: &str = "sys_exit";
/// `sock_ops` program on nginx's cgroup: its TCP connections' start, and the end of those
/// that close before nginx accepts them.
pub const HTTP_SOCK_OPS_PROGRAM: &str = "lynx_http_conn";
/// `cgroup/sock_release` program on nginx's cgroup: nginx closed a socket.
pub const HTTP_RELEASE_PROGRAM: &str = "lynx_http_close";
/// BTF tracepoint program on `sched_process_fork`: new nginx processes.
pub const NGINX_FORK_PROGRAM: &str = "lynx_nginx_fork";
pub const NGINX_FORK_TRACEPOINT: &str = "sched_process_fork";

/// [`HttpFlow::kind`] and [`Endpoint::kind`]: a connection nginx accepted (client side).
pub const FLOW_CLIENT: u8 = 1;
/// [`HttpFlow::kind`] and [`Endpoint::kind`]: a connection nginx opened (upstream side).
pub const FLOW_UPSTREAM: u8 = 2;

/// Which nginx to follow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HttpTarget {
    /// The cgroup v2 id nginx's master runs in: a cheap first filter for every socket call of
    /// the host. 0: nginx is not running, nothing is followed.
    pub cgroup_id: u64,
    /// The cookie of nginx's network namespace: a connection to a followed port is nginx's
    /// only there (a container in a cgroup below nginx's has its own namespace).
    pub netns_cookie: u64,
}

/// Byte offsets in the running kernel's structs, read from its BTF by the loader, of the walk
/// from one of the current task's file descriptors to its socket's cookie
/// (`task->files->fdt->fd[fd]`, a socket file's `private_data`, `->sk`,
/// `->__sk_common.skc_cookie`): what [`HTTP_EXIT_PROGRAM`] needs to tell which followed socket
/// a system call moved bytes through. The cookie is the one `bpf_get_socket_cookie` gave the
/// socket when its flow started (0 until then: not followed).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FdWalk {
    pub task_files: u64,
    pub files_fdt: u64,
    pub fdt_max_fds: u64,
    pub fdt_fd: u64,
    pub file_inode: u64,
    pub inode_mode: u64,
    pub file_private_data: u64,
    pub socket_sk: u64,
    pub sock_cookie: u64,
}

impl FdWalk {
    /// The value before the loader sets it.
    pub const UNSET: Self = Self {
        task_files: 0,
        files_fdt: 0,
        fdt_max_fds: 0,
        fdt_fd: 0,
        file_inode: 0,
        inode_mode: 0,
        file_private_data: 0,
        socket_sk: 0,
        sock_cookie: 0,
    };
}

/// One followed socket. The framing state describes the direction that carries requests:
/// received bytes for a client connection, sent bytes for an upstream connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HttpFlow {
    /// `FLOW_CLIENT` or `FLOW_UPSTREAM`.
    pub kind: u8,
    /// Framing state (the `state` constants of this module).
    pub state: u8,
    /// `F_*` flags of the message being parsed.
    pub flags: u8,
    pub _pad: u8,
    /// Client: nginx's local port. Upstream: the peer's port (host order).
    pub port: u16,
    /// Bytes of the current line so far (saturating).
    pub line_len: u16,
    /// FNV-1a hash of the current header name (lowercase).
    pub name_hash: u32,
    pub _pad2: u32,
    /// Body bytes (Content-Length or current chunk) still to skip, or the number being parsed.
    pub left: u64,
    /// The last 8 bytes of the current line (or header value), newest lowest: to recognise
    /// `HTTP/1.x`, `chunked`, `close` and `keep-alive`.
    pub tail: u64,
}

/// A value of [`HTTP_FLOWS_MAP`]: the framing state and the endpoint's slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HttpFlowEntry {
    /// The followed socket's cookie; 0: the slot is free.
    pub cookie: u64,
    pub flow: HttpFlow,
    /// Slot of the flow's endpoint in [`HTTP_COUNTERS_MAP`].
    pub slot: u32,
    pub _pad: u32,
}

/// Where nginx's connections go: its local port (client side, `addr` all zero) or an
/// upstream's address and port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// `FLOW_CLIENT` or `FLOW_UPSTREAM`.
    pub kind: u32,
    pub port: u32,
    /// The upstream's address as the bytes of a `struct in6_addr` (network order), IPv4 as
    /// IPv4-mapped (`::ffff:a.b.c.d`): one key shape for both families.
    pub addr: [u32; 4],
}

/// [`Endpoint::addr`]'s third word for an IPv4-mapped address, the `ffff` bytes in memory order.
pub const IPV4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

impl Endpoint {
    /// `addr` of an IPv4 address given as its 4 bytes in network order, read as one word.
    #[inline(always)]
    pub const fn ipv4_mapped(addr: u32) -> [u32; 4] {
        [0, 0, IPV4_MAPPED_WORD, addr]
    }

    /// The upstream's address: IPv4 for an IPv4-mapped one.
    pub fn address(&self) -> core::net::IpAddr {
        let mut bytes = [0u8; 16];
        for (chunk, word) in bytes.chunks_exact_mut(4).zip(self.addr) {
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        core::net::Ipv6Addr::from(bytes).to_canonical()
    }

    /// [`Self::addr`] of `address`, the inverse of [`Self::address`].
    pub fn addr_of(address: core::net::IpAddr) -> [u32; 4] {
        let bytes = match address {
            core::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            core::net::IpAddr::V6(v6) => v6.octets(),
        };
        core::array::from_fn(|i| {
            u32::from_ne_bytes([
                bytes[4 * i],
                bytes[4 * i + 1],
                bytes[4 * i + 2],
                bytes[4 * i + 3],
            ])
        })
    }
}

/// Counters of one endpoint on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointCounters {
    /// Client side: connections accepted. Upstream side: connections opened.
    pub opened: u64,
    pub closed: u64,
    /// Request starts: the first byte of a request where one is due (client side: what nginx's
    /// `stub_status` counts as `requests`; upstream side: requests nginx sent).
    pub requests: u64,
    /// Request starts that nginx rejects and closes the connection for: a request line that
    /// is not `METHOD target HTTP/1.x`, a bad chunk size, conflicting body headers.
    pub bad_requests: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Transfers in which the framing was lost (bytes needed were not readable); nothing more
    /// is counted on that connection.
    pub unparsed: u64,
}

impl EndpointCounters {
    /// Connections open now.
    pub fn active(&self) -> u64 {
        self.opened.saturating_sub(self.closed)
    }
}

impl crate::Accumulate for EndpointCounters {
    fn accumulate(&mut self, other: &Self) {
        self.opened += other.opened;
        self.closed += other.closed;
        self.requests += other.requests;
        self.bad_requests += other.bad_requests;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        self.unparsed += other.unparsed;
    }
}

#[cfg(feature = "user")]
mod pod {
    /// Implements `aya::Pod` for each type.
    macro_rules! pod {
        ($($type:ident),* $(,)?) => {$(
            // SAFETY: `#[repr(C)]`, explicit padding, every bit pattern valid.
            unsafe impl aya::Pod for super::$type {}
        )*};
    }

    pod!(
        HttpTarget,
        FdWalk,
        HttpFlow,
        HttpFlowEntry,
        Endpoint,
        EndpointCounters
    );
}

/// Framing states of [`HttpFlow::state`].
pub mod state {
    /// Between requests: the next byte starts one.
    pub const IDLE: u8 = 0;
    pub const LINE: u8 = 1;
    pub const HEADERS: u8 = 2;
    pub const BODY: u8 = 3;
    pub const CHUNK_SIZE: u8 = 4;
    pub const CHUNK_EXT: u8 = 5;
    pub const CHUNK_DATA: u8 = 6;
    pub const CHUNK_END: u8 = 7;
    pub const TRAILER: u8 = 8;
    /// Nothing more on this connection is a request: nginx rejected one and closes, the last
    /// request asked to close, the framing was lost, or the port speaks TLS.
    pub const CLOSED: u8 = 9;
}
use state::*;

const F_CHUNKED: u8 = 1;
const F_IN_VALUE: u8 = 2;
const F_HTTP10: u8 = 4;
const F_CONN_CLOSE: u8 = 8;
const F_CONN_KEEPALIVE: u8 = 16;
const F_CONTENT_LENGTH: u8 = 32;
const F_TRANSFER_ENCODING: u8 = 64;
/// The rest of this line decides nothing but where it ends: the request line after its first
/// byte (only its last 8 bytes, kept in `tail`, are looked at), a header line whose name is
/// none of the three that frame a message, a trailer line. Most bytes of most requests are
/// such (the target, Host, User-Agent, Cookie...): [`take_run_words`] takes them by words,
/// and [`byte`] one at a time in its first branch, without the per-state dispatch.
const F_RUN: u8 = 128;

const CR: u8 = b'\r';
const LF: u8 = b'\n';

const FNV_OFFSET: u32 = 0x811c_9dc5;
const FNV_PRIME: u32 = 0x0100_0193;

const fn fnv(name: &[u8]) -> u32 {
    let mut hash = FNV_OFFSET;
    let mut i = 0;
    while i < name.len() {
        hash = (hash ^ name[i] as u32).wrapping_mul(FNV_PRIME);
        i += 1;
    }
    hash
}
const CONTENT_LENGTH: u32 = fnv(b"content-length");
const TRANSFER_ENCODING: u32 = fnv(b"transfer-encoding");
const CONNECTION: u32 = fnv(b"connection");
/// "HTTP/1." as the 7 bytes before the version digit, newest byte lowest.
const HTTP1_PREFIX: u64 = u64::from_be_bytes(*b"\0HTTP/1.");
/// A whole value of exactly "chunked" (the byte before it is the reset tail's 0), which is
/// the only transfer coding nginx accepts.
const CHUNKED: u64 = u64::from_be_bytes(*b"\0chunked");
const CLOSE: u64 = u64::from_be_bytes(*b"\0\0\0close");
const LOW5: u64 = 0xff_ffff_ffff;
const KEEP_ALIVE: u64 = u64::from_be_bytes(*b"ep-alive");
const LOW7: u64 = 0x00ff_ffff_ffff_ffff;
/// Bodies and chunks larger than this are treated as this large (never reached in practice).
const MAX_LEFT: u64 = 1 << 60;

/// What a stretch of bytes contained.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub requests: u64,
    pub bad_requests: u64,
}

/// A new flow: client side follows requests unless its port speaks TLS.
#[inline(always)]
pub fn new_flow(kind: u8, port: u16, parse: bool) -> HttpFlow {
    HttpFlow {
        kind,
        state: if parse { IDLE } else { CLOSED },
        port,
        ..HttpFlow::default()
    }
}

/// Whether the next bytes are read one by one ([`byte`]) rather than skipped ([`skip`]) or
/// ignored.
#[inline(always)]
pub fn wants_bytes(flow: &HttpFlow) -> bool {
    !matches!(flow.state, BODY | CHUNK_DATA | CLOSED)
}

/// Whether nothing more on this connection can count.
#[inline(always)]
pub fn is_closed(flow: &HttpFlow) -> bool {
    flow.state == CLOSED
}

/// Consumes up to `available` body bytes (a body or a chunk's data) without looking at them;
/// returns how many.
#[inline(always)]
pub fn skip(flow: &mut HttpFlow, available: u64) -> u64 {
    let n = if flow.left < available {
        flow.left
    } else {
        available
    };
    flow.left -= n;
    if flow.left == 0 {
        if flow.state == BODY {
            end_message(flow);
        } else {
            flow.state = CHUNK_END;
        }
    }
    n
}

/// Gives up on the connection's framing (bytes that were needed are not readable).
#[inline(always)]
pub fn lose(flow: &mut HttpFlow) {
    flow.state = CLOSED;
}

/// Whether the next bytes may be taken by words ([`is_run_word`], [`take_run_words`]).
#[inline(always)]
pub fn in_run(flow: &HttpFlow) -> bool {
    flow.flags & F_RUN != 0
}

/// Whether a run can take these eight bytes (`word` is their little-endian load) at once:
/// none of them is CR, LF or below, which end a run or need [`byte`]'s full path.
#[inline(always)]
pub fn is_run_word(word: u64) -> bool {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGH: u64 = u64::from_le_bytes([0x80; 8]);
    // Whether no byte is below CR + 1 (exact for a bound up to 128: the borrow of a byte
    // that is not below never reaches a lower byte's high bit and sets none of its own).
    word.wrapping_sub(ONES * u64::from(CR + 1)) & !word & HIGH == 0
}

/// What [`byte`] would have done with `words` run words ([`is_run_word`]), the last of which
/// is `last`: a run keeps only the line's last eight bytes and its length.
#[inline(always)]
pub fn take_run_words(flow: &mut HttpFlow, last: u64, words: u16) {
    // Newest byte lowest: the first byte loaded is the oldest.
    flow.tail = last.swap_bytes();
    flow.line_len = flow.line_len.saturating_add(words.saturating_mul(8));
}

/// One byte of request line, headers or chunk framing.
#[inline(always)]
pub fn byte(flow: &mut HttpFlow, byte: u8, tally: &mut Tally) {
    // A run byte: neither CR nor LF (the bytes below them take the full path, which treats
    // them alike).
    if byte > CR && in_run(flow) {
        extend_line(flow, byte);
        return;
    }
    if flow.state == IDLE {
        tally.requests += 1;
        flow.state = LINE;
        flow.line_len = 0;
        flow.tail = 0;
        flow.flags = 0;
    }
    match flow.state {
        LINE => line_byte(flow, byte, tally),
        HEADERS => header_byte(flow, byte, tally),
        CHUNK_SIZE | CHUNK_EXT => chunk_size_byte(flow, byte, tally),
        CHUNK_END => match byte {
            CR => {}
            LF => {
                flow.state = CHUNK_SIZE;
                flow.left = 0;
            }
            _ => reject(flow, tally),
        },
        TRAILER => match byte {
            CR => {}
            LF if flow.line_len == 0 => end_message(flow),
            LF => flow.line_len = 0,
            _ => {
                flow.line_len = flow.line_len.saturating_add(1);
                flow.flags |= F_RUN;
            }
        },
        _ => {}
    }
}

/// nginx answers 400 (or 501) and closes: one bad request, nothing more counts.
#[inline(always)]
fn reject(flow: &mut HttpFlow, tally: &mut Tally) {
    tally.bad_requests += 1;
    flow.state = CLOSED;
}

/// The message is complete: the next byte starts a request, unless this one asked nginx to
/// close the connection (then whatever a pipelining client sent after it is never read as a
/// request).
#[inline(always)]
fn end_message(flow: &mut HttpFlow) {
    let close = flow.flags & F_CONN_CLOSE != 0
        || (flow.flags & F_HTTP10 != 0 && flow.flags & F_CONN_KEEPALIVE == 0);
    flow.state = if close { CLOSED } else { IDLE };
    flow.flags &= !F_RUN;
}

#[inline(always)]
fn line_byte(flow: &mut HttpFlow, byte: u8, tally: &mut Tally) {
    if flow.line_len == 0 {
        // nginx skips empty lines before a request line, and takes only A-Z, '_' and '-' in
        // a method: anything else is answered 400 at once.
        if byte == CR || byte == LF {
            return;
        }
        if !(byte.is_ascii_uppercase() || byte == b'_' || byte == b'-') {
            reject(flow, tally);
            return;
        }
    }
    match byte {
        CR => {}
        LF => {
            let digit = flow.tail as u8;
            if (flow.tail >> 8) & LOW7 == HTTP1_PREFIX && digit.is_ascii_digit() {
                flow.state = HEADERS;
                flow.flags = if digit == b'0' { F_HTTP10 } else { 0 };
                flow.left = 0;
                start_header_line(flow);
            } else {
                reject(flow, tally);
            }
        }
        _ => {
            extend_line(flow, byte);
            flow.flags |= F_RUN;
        }
    }
}

/// A byte that only lengthens the line: the line keeps its last eight bytes and its length.
#[inline(always)]
fn extend_line(flow: &mut HttpFlow, byte: u8) {
    flow.tail = (flow.tail << 8) | u64::from(byte);
    flow.line_len = flow.line_len.saturating_add(1);
}

#[inline(always)]
fn start_header_line(flow: &mut HttpFlow) {
    flow.line_len = 0;
    flow.tail = 0;
    flow.name_hash = FNV_OFFSET;
    flow.flags &= !(F_IN_VALUE | F_RUN);
}

#[inline(always)]
fn header_byte(flow: &mut HttpFlow, byte: u8, tally: &mut Tally) {
    match byte {
        CR => return,
        LF if flow.line_len == 0 => {
            end_headers(flow, tally);
            return;
        }
        LF => {
            if flow.flags & (F_IN_VALUE | F_RUN) == F_IN_VALUE
                && flow.name_hash == TRANSFER_ENCODING
            {
                flow.flags |= F_TRANSFER_ENCODING;
                if flow.tail == CHUNKED {
                    flow.flags |= F_CHUNKED;
                }
            }
            start_header_line(flow);
            return;
        }
        _ => {}
    }
    flow.line_len = flow.line_len.saturating_add(1);
    if in_run(flow) {
        return;
    }
    let lower = byte.to_ascii_lowercase();
    if flow.flags & F_IN_VALUE == 0 {
        if byte == b':' {
            flow.flags |= F_IN_VALUE;
            match flow.name_hash {
                CONTENT_LENGTH => {
                    flow.flags |= F_CONTENT_LENGTH;
                    flow.left = 0;
                }
                TRANSFER_ENCODING | CONNECTION => {}
                _ => flow.flags |= F_RUN,
            }
        } else if flow.line_len == 1 && lower != b'c' && lower != b't' {
            // No name that frames a message starts so.
            flow.flags |= F_RUN;
        } else {
            flow.name_hash = (flow.name_hash ^ u32::from(lower)).wrapping_mul(FNV_PRIME);
        }
        return;
    }
    match flow.name_hash {
        CONTENT_LENGTH if byte.is_ascii_digit() => {
            let value = flow.left * 10 + u64::from(byte - b'0');
            flow.left = if value > MAX_LEFT { MAX_LEFT } else { value };
        }
        TRANSFER_ENCODING | CONNECTION if byte != b' ' && byte != b'\t' => {
            flow.tail = (flow.tail << 8) | u64::from(lower);
            // nginx looks for these as substrings of the Connection value, "close" first.
            if flow.name_hash == CONNECTION {
                if flow.tail & LOW5 == CLOSE {
                    flow.flags |= F_CONN_CLOSE;
                } else if flow.tail == KEEP_ALIVE {
                    flow.flags |= F_CONN_KEEPALIVE;
                }
            }
        }
        _ => {}
    }
}

/// The empty line after the headers: where the body ends decides where the next request
/// starts. The body rules are nginx's (1.21.1 on): a transfer coding other than exactly
/// `chunked`, one on an HTTP/1.0 request, or one together with Content-Length is rejected.
#[inline(always)]
fn end_headers(flow: &mut HttpFlow, tally: &mut Tally) {
    flow.tail = 0;
    if flow.flags & F_TRANSFER_ENCODING != 0 {
        if flow.flags & (F_CHUNKED | F_CONTENT_LENGTH | F_HTTP10) != F_CHUNKED {
            reject(flow, tally);
            return;
        }
        flow.left = 0;
        flow.state = CHUNK_SIZE;
    } else if flow.left > 0 {
        flow.state = BODY;
    } else {
        end_message(flow);
    }
}

#[inline(always)]
fn chunk_size_byte(flow: &mut HttpFlow, byte: u8, tally: &mut Tally) {
    match byte {
        CR => {}
        LF => {
            if flow.left == 0 {
                flow.state = TRAILER;
                flow.line_len = 0;
            } else {
                flow.state = CHUNK_DATA;
            }
        }
        _ if flow.state == CHUNK_EXT => {}
        b';' | b' ' | b'\t' => flow.state = CHUNK_EXT,
        _ => {
            let digit = match byte {
                b'0'..=b'9' => byte - b'0',
                b'a'..=b'f' => byte - b'a' + 10,
                b'A'..=b'F' => byte - b'A' + 10,
                _ => {
                    reject(flow, tally);
                    return;
                }
            };
            let value = (flow.left << 4) | u64::from(digit);
            flow.left = if value > MAX_LEFT { MAX_LEFT } else { value };
        }
    }
}

/// Runs `bytes` through the state machine the way the kernel program does (skip bodies, take
/// runs eight bytes at a time where they can, other framing bytes one by one): the reference
/// driver for tests.
pub fn feed(flow: &mut HttpFlow, mut bytes: &[u8], tally: &mut Tally) {
    while !bytes.is_empty() && !is_closed(flow) {
        let (words, last) = bytes
            .chunks_exact(8)
            .map(|w| u64::from_le_bytes(w.try_into().unwrap_or_default()))
            .take_while(|&w| in_run(flow) && is_run_word(w))
            .take(usize::from(u16::MAX / 8))
            .fold((0, 0), |(n, _), w| (n + 1, w));
        if words > 0 {
            take_run_words(flow, last, words as u16);
            bytes = &bytes[8 * words..];
        } else if wants_bytes(flow) {
            byte(flow, bytes[0], tally);
            bytes = &bytes[1..];
        } else {
            let n = skip(flow, bytes.len() as u64) as usize;
            bytes = &bytes[n..];
        }
    }
}

#[cfg(test)]
mod tests;
