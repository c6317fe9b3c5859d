//! Sockets and network namespaces: which TCP sockets are in use, as the kernel's `sock_diag`
//! netlink interface lists them (what `ss` reads), and how to ask in another process's
//! network namespace.
use super::preflight::needing;
use std::{
    collections::HashSet,
    fs, io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
};

/// Errors of listing the sockets.
#[derive(Debug, thiserror::Error)]
pub enum SocketsError {
    #[error("cannot list TCP sockets over sock_diag netlink: {0}")]
    Io(#[from] io::Error),
    #[error("sock_diag netlink answered with a malformed message: {0}")]
    Malformed(&'static str),
}

/// The TCP sockets in use in the calling thread's network namespace.
#[derive(Debug, Default)]
pub struct TcpSockets {
    /// Cookies (the kernel's `sock_gen_cookie`, as `bpf_get_socket_cookie` gives them) of the
    /// IPv4 and IPv6 TCP sockets a process holds, or that wait in a listener's queue to be
    /// accepted. Sockets their process has closed and the kernel is still winding down (FIN
    /// or TIME_WAIT states) are not in use.
    pub in_use: HashSet<u64>,
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HEADER_LEN: usize = 16;
/// `struct inet_diag_msg`: family, state, timer, retrans, then `inet_diag_sockid` (ports,
/// addresses, interface, cookie at 44), expires, queues, uid, inode at 68.
const DIAG_MSG_LEN: usize = 72;
const DIAG_COOKIE_AT: usize = 44;
const DIAG_INODE_AT: usize = 68;
const TCP_ESTABLISHED: u8 = 1;
const TCP_CLOSE_WAIT: u8 = 8;

impl TcpSockets {
    /// Lists them.
    pub fn read() -> Result<Self, SocketsError> {
        let socket = open(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_SOCK_DIAG)?;
        let mut sockets = Self::default();
        for family in [libc::AF_INET, libc::AF_INET6] {
            send(&socket, &dump_request(family as u8))?;
            receive_dump(&socket, |message| {
                if let Some(cookie) = in_use_cookie(message)? {
                    sockets.in_use.insert(cookie);
                }
                Ok(())
            })?;
        }
        Ok(sockets)
    }
}

/// A netlink request to dump every TCP socket of `family`: `nlmsghdr` and
/// `inet_diag_req_v2` (all states, no extensions, any address).
fn dump_request(family: u8) -> Vec<u8> {
    const REQUEST_LEN: u32 = 72;
    let mut request = Vec::with_capacity(REQUEST_LEN as usize);
    request.extend_from_slice(&REQUEST_LEN.to_ne_bytes());
    request.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    request.extend_from_slice(&flags.to_ne_bytes());
    request.extend_from_slice(&[0; 8]); // sequence number and port id
    request.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, 0, 0]);
    request.extend_from_slice(&u32::MAX.to_ne_bytes()); // every TCP state
    request.resize(REQUEST_LEN as usize, 0); // inet_diag_sockid: any
    request
}

/// The cookie of the socket an `inet_diag_msg` describes, if the socket is in use: a process
/// holds it (it has an inode), or it is established (or already closed by the peer) and
/// waits to be accepted. A socket its process closed has neither.
fn in_use_cookie(message: &[u8]) -> Result<Option<u64>, SocketsError> {
    if message.len() < DIAG_MSG_LEN {
        return Err(SocketsError::Malformed("inet_diag_msg too short"));
    }
    let state = message[1];
    let held = u32_at(message, DIAG_INODE_AT) != 0;
    let queued = matches!(state, TCP_ESTABLISHED | TCP_CLOSE_WAIT);
    let cookie = u64::from(u32_at(message, DIAG_COOKIE_AT))
        | u64::from(u32_at(message, DIAG_COOKIE_AT + 4)) << 32;
    Ok((held || queued).then_some(cookie))
}

/// The native-endian `u32` at byte `at` of `bytes`, which the caller knows holds it.
fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// A new socket (`socket(2)`, close-on-exec) of the calling thread's network namespace.
pub fn open(domain: libc::c_int, kind: libc::c_int, protocol: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: a plain system call; the descriptor is owned by `OwnedFd` from here on.
    let fd = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn send(socket: &OwnedFd, request: &[u8]) -> Result<(), SocketsError> {
    // SAFETY: `request` is valid for its length; an unbound netlink socket sends to the kernel.
    let sent = unsafe {
        libc::send(
            socket.as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error().into());
    }
    Ok(())
}

/// Hands each message of a dump to `each` until the dump's end.
fn receive_dump(
    socket: &OwnedFd,
    mut each: impl FnMut(&[u8]) -> Result<(), SocketsError>,
) -> Result<(), SocketsError> {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: `buffer` is valid for writes of its length.
        let received = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                0,
            )
        };
        if received < 0 {
            return Err(io::Error::last_os_error().into());
        }
        if each_message(&buffer[..received as usize], &mut each)? {
            return Ok(());
        }
    }
}

/// Hands each message of one received batch to `each`; true at the dump's end.
pub(crate) fn each_message(
    mut rest: &[u8],
    each: &mut impl FnMut(&[u8]) -> Result<(), SocketsError>,
) -> Result<bool, SocketsError> {
    while !rest.is_empty() {
        if rest.len() < NLMSG_HEADER_LEN {
            return Err(SocketsError::Malformed("netlink header cut short"));
        }
        let len = u32_at(rest, 0) as usize;
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        if len < NLMSG_HEADER_LEN || len > rest.len() {
            return Err(SocketsError::Malformed(
                "netlink message length out of bounds",
            ));
        }
        let payload = &rest[NLMSG_HEADER_LEN..len];
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                if payload.len() < 4 {
                    return Err(SocketsError::Malformed("netlink error cut short"));
                }
                // The negative errno, as an `i32`; anything else is no errno.
                let code = u32_at(payload, 0) as i32;
                return Err(match code.checked_neg().filter(|errno| *errno > 0) {
                    Some(errno) => io::Error::from_raw_os_error(errno).into(),
                    None => SocketsError::Malformed("netlink error without an errno"),
                });
            }
            _ => each(payload)?,
        }
        // Messages are aligned to 4 bytes.
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    Ok(false)
}

/// The cookies in use of one received batch of a dump, as [`TcpSockets::read`] reads them;
/// for the fuzzer.
#[cfg(fuzzing)]
pub fn parse_batch(bytes: &[u8]) -> Result<HashSet<u64>, SocketsError> {
    let mut in_use = HashSet::new();
    each_message(bytes, &mut |message| {
        if let Some(cookie) = in_use_cookie(message)? {
            in_use.insert(cookie);
        }
        Ok(())
    })?;
    Ok(in_use)
}

/// A `u64` socket option of `socket` at level `SOL_SOCKET` (`SO_COOKIE`, `SO_NETNS_COOKIE`).
pub fn u64_option(socket: &impl AsRawFd, option: libc::c_int) -> io::Result<u64> {
    let mut value = 0u64;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: `value` and `len` outlive the call that fills them.
    let status = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    if status != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// Runs `f` in process `pid`'s network namespace, on a thread of its own: `setns` changes
/// only the calling thread's namespace, so the daemon's threads stay where they are.
pub fn in_netns_of<T: Send, E: From<io::Error> + Send>(
    pid: u32,
    f: impl FnOnce() -> Result<T, E> + Send,
) -> Result<T, E> {
    let namespace = fs::File::open(format!("/proc/{pid}/ns/net")).map_err(|error| {
        needing(
            error,
            "CAP_SYS_PTRACE",
            "reading the network namespace of another user's process",
        )
    })?;
    // setns asks for CAP_SYS_ADMIN even into the namespace the thread is in already: a
    // process in the daemon's own namespace (nginx, as a rule) is read without it.
    let here = fs::metadata("/proc/thread-self/ns/net")?;
    let there = namespace.metadata()?;
    if (here.dev(), here.ino()) == (there.dev(), there.ino()) {
        return f();
    }
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: a plain system call on a descriptor this thread borrows.
                if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    let error = io::Error::last_os_error();
                    return Err(needing(
                        error,
                        "CAP_SYS_ADMIN",
                        "entering another network namespace",
                    )
                    .into());
                }
                f()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked").into()))
    })
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv6Addr, TcpListener, TcpStream};

    use super::*;

    /// The kernel's cookie of `socket`.
    fn cookie_of(socket: &impl AsRawFd) -> u64 {
        u64_option(socket, libc::SO_COOKIE).unwrap_or_else(|e| panic!("SO_COOKIE: {e}"))
    }

    #[test]
    fn held_and_queued_sockets_are_in_use_and_closed_ones_are_not() {
        let listener = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).expect("listen on loopback");
        let address = listener.local_addr().expect("its address");
        let closed_early = TcpStream::connect(address).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");
        let queued_peer = TcpStream::connect(address).expect("connect");
        let [
            closed_early_cookie,
            accepted_cookie,
            queued_peer_cookie,
            listener_cookie,
        ] = [
            cookie_of(&closed_early),
            cookie_of(&accepted),
            cookie_of(&queued_peer),
            cookie_of(&listener),
        ];
        // Closed first, so it stays in FIN_WAIT2 or TIME_WAIT, closed by its process.
        drop(closed_early);

        let sockets = TcpSockets::read().expect("list the sockets");
        for (what, cookie) in [
            ("the listener", listener_cookie),
            ("an accepted socket whose peer closed", accepted_cookie),
            ("a connecting socket", queued_peer_cookie),
        ] {
            assert!(sockets.in_use.contains(&cookie), "{what} is not in use");
        }
        assert!(
            !sockets.in_use.contains(&closed_early_cookie),
            "a socket its process closed is in use"
        );
        // The listener's end of the connection that waited in its queue, unheld while the
        // sockets were listed (its cookie was made then, and stays).
        let (queued, _) = listener.accept().expect("accept");
        assert!(
            sockets.in_use.contains(&cookie_of(&queued)),
            "a connection waiting to be accepted is not in use"
        );
    }

    #[test]
    fn a_process_in_this_namespace_is_read_in_place_without_setns() {
        let caller = std::thread::current().id();
        let ran_on = in_netns_of(std::process::id(), || {
            Ok::<_, io::Error>(std::thread::current().id())
        })
        .expect("read our own namespace");
        assert_eq!(ran_on, caller);
    }

    #[test]
    fn a_message_shorter_than_inet_diag_msg_is_malformed() {
        assert!(matches!(
            in_use_cookie(&[0; DIAG_MSG_LEN - 1]),
            Err(SocketsError::Malformed(_))
        ));
    }

    #[test]
    fn the_cookie_is_read_low_word_first() {
        let mut message = [0u8; DIAG_MSG_LEN];
        message[1] = TCP_ESTABLISHED;
        message[DIAG_COOKIE_AT..DIAG_COOKIE_AT + 4].copy_from_slice(&2u32.to_ne_bytes());
        message[DIAG_COOKIE_AT + 4..DIAG_COOKIE_AT + 8].copy_from_slice(&1u32.to_ne_bytes());
        assert_eq!(in_use_cookie(&message).ok().flatten(), Some((1 << 32) | 2));
    }

    /// A netlink message of `kind` with `payload`.
    fn message(kind: u16, payload: &[u8]) -> Vec<u8> {
        let len = (NLMSG_HEADER_LEN + payload.len()) as u32;
        let mut bytes = len.to_ne_bytes().to_vec();
        bytes.extend_from_slice(&kind.to_ne_bytes());
        bytes.extend_from_slice(&[0; 10]);
        bytes.extend_from_slice(payload);
        bytes
    }

    #[test]
    fn an_error_message_carries_the_errno_and_a_bogus_one_is_malformed() {
        let mut seen = 0;
        let mut each = |_: &[u8]| {
            seen += 1;
            Ok(())
        };
        let eperm = message(NLMSG_ERROR, &(-libc::EPERM).to_ne_bytes());
        match each_message(&eperm, &mut each) {
            Err(SocketsError::Io(error)) => assert_eq!(error.raw_os_error(), Some(libc::EPERM)),
            other => panic!("{other:?}"),
        }
        // Found by the fuzzer: i32::MIN has no negation, and 0 or a positive code no errno.
        for code in [i32::MIN, 0, 5] {
            let bogus = message(NLMSG_ERROR, &code.to_ne_bytes());
            assert!(
                matches!(
                    each_message(&bogus, &mut each),
                    Err(SocketsError::Malformed(_))
                ),
                "{code}"
            );
        }
        // The fuzzer's input, as it found it.
        let found = b"\x24\0\0\0\x02\0\0\0\0\0\0\0\0\0\0\x09\0\0\0\x80\xff\xff\xff\xff\
                      \0\0\0\0\0\x34\0\0\0\0\xda\0\0\0\0\0";
        assert!(matches!(
            each_message(found, &mut each),
            Err(SocketsError::Malformed(_))
        ));
        let mut batch = message(0x14, &[0; 4]);
        batch.extend(message(NLMSG_DONE, &[]));
        assert!(each_message(&batch, &mut each).expect("a dump's end"));
        assert_eq!(seen, 1);
    }
}
