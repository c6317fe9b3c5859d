//! The server over real sockets: what it serves, what it refuses, and what abusive clients
//! cannot do to it.
use std::{
    io::{Read, Write},
    net::{Shutdown, TcpStream},
    os::fd::FromRawFd,
    time::Instant,
};

use super::*;
use crate::{
    model::fixtures,
    sink::prometheus::tests::{FIXTURE_METRICS, fixture},
};

pub(super) fn options(listen: &str) -> WebOptions {
    WebOptions {
        listen: listen.parse().expect("an address"),
        allowed_hosts: vec!["lynx.example.org".into()],
        max_connections: 64,
        timeout: Duration::from_secs(10),
        retry: Duration::from_millis(100),
        actions: false,
        login_file: None,
        lxd_sockets: Vec::new(),
        history_path: None,
    }
}

fn start() -> (WebServer, SocketAddr) {
    let server = WebServer::start(options("127.0.0.1:0")).expect("start the server");
    let addr = server.local_addr().expect("listening");
    (server, addr)
}

/// The status line, the headers (names lowercased) and the body of one response.
pub(super) type Answer = (String, Vec<(String, String)>, Vec<u8>);

fn head_end(bytes: &[u8]) -> Option<usize> {
    bytes.windows(4).position(|w| w == b"\r\n\r\n")
}

/// Sends `request` and reads the response to its end.
pub(super) fn exchange(addr: SocketAddr, request: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set a read timeout");
    stream.write_all(request).expect("send the request");
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .expect("read the response to its end");
    let end = head_end(&response).unwrap_or_else(|| {
        panic!(
            "no head in the response: {:?}",
            String::from_utf8_lossy(&response)
        )
    });
    let head = String::from_utf8(response[..end].to_vec()).expect("an ASCII head");
    let body = response[end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status = lines.next().expect("a status line").to_owned();
    let headers = lines
        .map(|line| {
            let (name, value) = line
                .split_once(": ")
                .unwrap_or_else(|| panic!("header line {line:?}"));
            (name.to_ascii_lowercase(), value.to_owned())
        })
        .collect();
    (status, headers, body)
}

fn get(addr: SocketAddr, path: &str) -> Answer {
    get_as(addr, path, "localhost:9464")
}

fn get_as(addr: SocketAddr, path: &str, host: &str) -> Answer {
    exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: lynx-test\r\n\r\n").as_bytes(),
    )
}

pub(super) fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {name} header in {headers:?}"))
}

#[test]
fn serves_metrics_and_snapshot_of_the_latest_publish() {
    let (mut server, addr) = start();
    assert_ne!(addr.port(), 0, "a port was chosen");

    let (status, headers, body) = get(addr, "/metrics");
    assert_eq!(
        status, "HTTP/1.1 503 Service Unavailable",
        "before any snapshot"
    );
    assert_eq!(body, b"no snapshot yet\n");
    assert_eq!(header(&headers, "retry-after"), "1");
    let (status, ..) = get(addr, "/snapshot");
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable");

    let snapshot = fixture();
    server.publish(&snapshot);
    let (status, headers, body) = get(addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK", "/metrics");
    assert_eq!(header(&headers, "content-type"), METRICS_CONTENT_TYPE);
    assert_eq!(header(&headers, "content-length"), body.len().to_string());
    assert_eq!(header(&headers, "connection"), "close");
    assert_eq!(
        String::from_utf8(body).expect("UTF-8 metrics"),
        FIXTURE_METRICS,
        "/metrics renders the published snapshot"
    );

    let (status, headers, body) = get(addr, "/snapshot?pretty=1");
    assert_eq!(status, "HTTP/1.1 200 OK", "/snapshot");
    assert_eq!(header(&headers, "content-type"), "application/json");
    let mut expected = serde_json::to_vec_pretty(&snapshot).expect("serialises");
    expected.push(b'\n');
    assert_eq!(
        body, expected,
        "/snapshot is the published snapshot, byte for byte"
    );

    let mut newer = fixture();
    newer.host.timestamp = "2026-11-22T04:22:03Z".into();
    server.publish(&newer);
    let (_, _, body) = get(addr, "/metrics");
    assert!(
        String::from_utf8_lossy(&body).contains("\nlynx_snapshot_timestamp_seconds 1795321323\n"),
        "the newer snapshot replaced the old one"
    );
}

#[test]
fn answers_other_requests_with_errors() {
    let (mut server, addr) = start();
    server.publish(&fixture());

    let (status, _, body) = get(addr, "/");
    assert_eq!(status, "HTTP/1.1 404 Not Found", "/");
    assert_eq!(body, b"not found: try /metrics or /snapshot\n");
    let (status, ..) = get(addr, "/metrics/x");
    assert_eq!(status, "HTTP/1.1 404 Not Found", "/metrics/x");

    let (status, headers, _) = exchange(addr, b"POST /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed", "POST");
    assert_eq!(header(&headers, "allow"), "GET,HEAD");

    let (status, headers, body) =
        exchange(addr, b"HEAD /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK", "HEAD");
    assert_eq!(
        header(&headers, "content-length"),
        FIXTURE_METRICS.len().to_string(),
        "HEAD's length is GET's"
    );
    assert!(body.is_empty(), "HEAD has no body");

    let (status, ..) = exchange(addr, b"GET /metrics HTTP/1.0\r\n\r\n");
    assert_eq!(status, "HTTP/1.0 200 OK", "HTTP/1.0 without Host");

    let (status, ..) = exchange(addr, b"hello\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 400 Bad Request", "garbage");

    let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 256 * 1024));
    huge.extend(b"\r\n\r\n");
    let (status, ..) = exchange(addr, &huge);
    assert_eq!(
        status, "HTTP/1.1 431 Request Header Fields Too Large",
        "an endless head"
    );

    let mut body = format!(
        "POST /metrics HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
        MAX_BODY + 1
    )
    .into_bytes();
    body.extend(std::iter::repeat_n(b'a', MAX_BODY + 1));
    let (status, ..) = exchange(addr, &body);
    assert!(status.starts_with("HTTP/1.1 4"), "a large body: {status}");
}

#[test]
fn a_foreign_host_name_is_refused() {
    let (mut server, addr) = start();
    server.publish(&fixture());
    for host in [
        "evil.example",
        "evil.example:9464",
        "localhost.evil.example",
        "",
        "lynx.example.org.evil",
    ] {
        let (status, _, body) = get_as(addr, "/metrics", host);
        assert_eq!(status, "HTTP/1.1 403 Forbidden", "Host: {host}");
        assert!(
            String::from_utf8_lossy(&body).contains("[web] allowed_hosts"),
            "{body:?}"
        );
    }
    for host in [
        "localhost",
        "LOCALHOST.:9464",
        "127.0.0.1:9464",
        "[::1]:9464",
        "::1",
        "10.0.0.5",
        "Lynx.Example.Org",
        "lynx.example.org:80",
    ] {
        let (status, ..) = get_as(addr, "/metrics", host);
        assert_eq!(status, "HTTP/1.1 200 OK", "Host: {host}");
    }
}

/// A TCP connection to `addr` whose receive buffer is a few kilobytes, so that a large
/// answer stays stuck in the server's socket when it is read slowly.
fn small_window_connection(addr: SocketAddr) -> TcpStream {
    // SAFETY: plain system calls on a socket this function owns; results are checked.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let stream = TcpStream::from_raw_fd(fd);
        let size: libc::c_int = 4096;
        let set = libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&raw const size).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        );
        assert_eq!(set, 0, "SO_RCVBUF: {}", std::io::Error::last_os_error());
        let SocketAddr::V4(v4) = addr else {
            panic!("an IPv4 address");
        };
        let address = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*v4.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        let connected = libc::connect(
            fd,
            (&raw const address).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(connected, 0, "connect: {}", std::io::Error::last_os_error());
        stream
    }
}

#[test]
fn idle_connections_and_a_slow_reader_do_not_hold_up_a_scrape() {
    let (mut server, addr) = start();
    // Large enough that its answer does not fit the sockets' buffers.
    let mut snapshot = fixture();
    let containers = (0..2000).map(|n| {
        let mut container = fixtures::container(&format!("web{n}"), "lxd", "Running");
        container.cpu.ns = n;
        container
    });
    snapshot.containers.extend(containers);
    server.publish(&snapshot);
    let full = render(&snapshot).len();
    assert!(full > 1_000_000, "the answer is {full} bytes");

    // Eight connections that never send a byte, one that sends its head a byte a second,
    // and one that asked for /metrics and reads its answer a byte a second.
    let idle: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(addr).expect("an idle connection"))
        .collect();
    let mut trickle = TcpStream::connect(addr).expect("a slow sender");
    trickle.write_all(b"GE").expect("the first bytes");
    let mut slow = small_window_connection(addr);
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("the slow reader's request");
    let slow_reader = thread::spawn(move || {
        let mut read = 0;
        let mut byte = [0u8];
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until && slow.read(&mut byte).is_ok_and(|n| n == 1) {
            read += 1;
            thread::sleep(Duration::from_secs(1));
        }
        read
    });
    thread::sleep(Duration::from_millis(300));

    let started = Instant::now();
    let (status, _, body) = get(addr, "/metrics");
    let took = started.elapsed();
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(body.len(), full, "the whole answer");
    assert!(
        took < Duration::from_secs(1),
        "a scrape took {took:?} beside idle and slow clients"
    );
    eprintln!(
        "a scrape of {full} bytes took {took:?} beside 8 idle connections and 2 slow clients"
    );
    let read = slow_reader.join().expect("the slow reader");
    assert!(
        read < full,
        "the slow reader read {read} bytes: it was slow"
    );
    drop((idle, trickle));
}

#[test]
fn a_slow_client_is_cut_off_at_the_timeout() {
    let server = WebServer::start(WebOptions {
        timeout: Duration::from_millis(500),
        ..options("127.0.0.1:0")
    })
    .expect("start the server");
    let addr = server.local_addr().expect("listening");
    let mut idle = TcpStream::connect(addr).expect("connect");
    idle.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("a read timeout");
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = idle.read_to_end(&mut rest);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "an idle connection was kept {took:?}"
    );
}

#[test]
fn connections_past_the_limit_are_closed() {
    let server = WebServer::start(WebOptions {
        max_connections: 2,
        ..options("127.0.0.1:0")
    })
    .expect("start the server");
    let addr = server.local_addr().expect("listening");
    let held: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    thread::sleep(Duration::from_millis(200));
    let mut third = TcpStream::connect(addr).expect("connect");
    third
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("a read timeout");
    let _ = third.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let mut answer = Vec::new();
    let _ = third.read_to_end(&mut answer);
    assert!(answer.is_empty(), "served past the limit: {answer:?}");
    drop(held);
    thread::sleep(Duration::from_millis(200));
    let (status, ..) = get(addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable", "served again");
}

#[test]
fn a_client_that_leaves_early_does_not_stop_the_server() {
    let (mut server, addr) = start();
    server.publish(&fixture());
    let stream = TcpStream::connect(addr).expect("connect");
    stream.shutdown(Shutdown::Both).expect("hang up");
    drop(stream);
    let (status, ..) = get(addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK", "served after a client hung up");
}

#[test]
fn drop_stops_the_server_and_frees_the_port() {
    let (server, addr) = start();
    let started = Instant::now();
    drop(server);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "drop took {:?}",
        started.elapsed()
    );
    let again = WebServer::start(options(&addr.to_string())).expect("start again");
    assert_eq!(again.local_addr(), Some(addr), "listening on {addr} again");
}

#[test]
fn a_taken_address_is_retried_until_it_is_free() {
    let squatter = TcpListener::bind("127.0.0.1:0").expect("a port");
    let addr = squatter.local_addr().expect("its address");
    let mut server = WebServer::start(options(&addr.to_string())).expect("started anyway");
    assert_eq!(
        server.local_addr(),
        None,
        "not listening while the port is taken"
    );
    server.publish(&fixture());
    drop(squatter);
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.local_addr().is_none() {
        assert!(Instant::now() < deadline, "the freed port was not taken");
        thread::sleep(Duration::from_millis(20));
    }
    let (status, ..) = get(addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
}

#[test]
fn host_names_are_compared_without_port_case_or_final_dot() {
    let hosts = AllowedHosts::new(&["Metrics.Example.".into()]);
    for (host, admitted) in [
        ("metrics.example", true),
        ("METRICS.EXAMPLE:443", true),
        ("metrics.example.", true),
        ("localhost", true),
        ("192.0.2.1:9464", true),
        ("[2001:db8::1]:9464", true),
        ("[2001:db8::1", false),
        ("example", false),
        ("metrics.example.evil", false),
        ("", false),
        (":9464", false),
    ] {
        assert_eq!(hosts.admits(host.as_bytes()), admitted, "{host:?}");
    }
    assert!(!hosts.admits(b"\xff\xfe"), "not UTF-8");
}
