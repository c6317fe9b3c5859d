//! Who holds a TCP port: the listening socket in `/proc/net/tcp` (or `tcp6`), its owner, and
//! the process whose descriptor it is. An operator told "address in use" needs to know
//! whether that is another Lynx, an old exporter, or a local user squatting the port to serve
//! forged metrics.
use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

/// `st` of a listening socket in `/proc/net/tcp`.
const LISTEN: &str = "0A";

/// A listening socket as `/proc/net/tcp` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub address: SocketAddr,
    pub uid: u32,
    pub inode: u64,
}

/// ` (held by pid 4242 python3, uid 65534)`, or what is known of it; empty when nothing is.
pub fn describe(address: SocketAddr) -> String {
    let Some(listener) = holder(address) else {
        return String::new();
    };
    match process_of(listener.inode) {
        Some((pid, comm)) => format!(" (held by pid {pid} {comm}, uid {})", listener.uid),
        None => format!(" (held by a socket of uid {})", listener.uid),
    }
}

/// The listening socket that keeps `address` from being bound.
pub fn holder(address: SocketAddr) -> Option<Listener> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| fs::read_to_string(path).ok())
        .flat_map(|text| parse(&text))
        .find(|listener| conflicts(listener.address, address))
}

/// Whether a socket listening on `held` keeps `wanted` from being bound: same port, and the
/// same address or either one the wildcard.
fn conflicts(held: SocketAddr, wanted: SocketAddr) -> bool {
    held.port() == wanted.port()
        && (held.ip() == wanted.ip() || held.ip().is_unspecified() || wanted.ip().is_unspecified())
}

/// The listening sockets of `/proc/net/tcp` or `tcp6` text; lines that do not parse are
/// skipped.
pub fn parse(text: &str) -> Vec<Listener> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, state, uid, inode) = (
                fields.get(1)?,
                fields.get(3)?,
                fields.get(7)?,
                fields.get(9)?,
            );
            if *state != LISTEN {
                return None;
            }
            Some(Listener {
                address: parse_address(local)?,
                uid: uid.parse().ok()?,
                inode: inode.parse().ok()?,
            })
        })
        .collect()
}

/// `0100007F:24F8` (IPv4) or 32 hex digits and a port (IPv6): the kernel prints each 32-bit
/// word of the address as a number in the host's byte order, and the port in hex.
fn parse_address(text: &str) -> Option<SocketAddr> {
    let (address, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = address.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match address.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            let ip = Ipv6Addr::from(bytes);
            // A v4-mapped listener holds the IPv4 address too.
            ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4)
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The process with a descriptor for socket `inode`, and its command name.
fn process_of(inode: u64) -> Option<(u32, String)> {
    let target = format!("socket:[{inode}]");
    fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let holds = fs::read_dir(entry.path().join("fd"))
            .ok()?
            .flatten()
            .any(|fd| {
                fs::read_link(fd.path()).is_ok_and(|link| link.as_os_str() == target.as_str())
            });
        holds.then(|| {
            let comm = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            (pid, comm.trim().to_owned())
        })
    })
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn parses_the_kernels_listening_sockets() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:24F8 00000000:0000 0A 00000000:00000000 00:00000000 00000000 65534        0 123456 1 0000000000000000 100 0 0 10 0
   1: 0100007F:24F8 0100007F:A1B2 01 00000000:00000000 00:00000000 00000000     0        0 0 1 0000000000000000 20 4 30 10 -1
";
        assert_eq!(
            parse(tcp),
            [Listener {
                address: "127.0.0.1:9464".parse().expect("an address"),
                uid: 65534,
                inode: 123456,
            }]
        );
        let tcp6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:24F8 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 778 1 0000000000000000 100 0 0 10 0
";
        let listeners = parse(tcp6);
        assert_eq!(
            listeners[0].address,
            "[::1]:9464".parse().expect("an address")
        );
        assert_eq!(
            listeners[1].address,
            "127.0.0.1:80".parse().expect("an address")
        );
        assert!(parse("header\n garbage\n").is_empty());
    }

    #[test]
    fn names_the_process_that_holds_a_port() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a port");
        let address = listener.local_addr().expect("its address");
        let found = holder(address).expect("the listener is in /proc/net/tcp");
        // SAFETY: getuid has no preconditions.
        assert_eq!(found.uid, unsafe { libc::getuid() });
        let described = describe(address);
        assert!(
            described.contains(&format!("pid {}", std::process::id())),
            "{described}"
        );
        let wildcard = SocketAddr::from(([0, 0, 0, 0], address.port()));
        assert!(
            holder(wildcard).is_some(),
            "the wildcard address conflicts too"
        );
    }
}
