//! HTTP/1.x of the tests' own, for what wrk cannot do: a keep-alive backend that counts what
//! it served, and a raw client that pipelines, splits requests across writes, sends bodies
//! that look like requests, goes one byte at a time, and sends malformed input. Only to
//! loopback or the rig's bridge; every loop is bounded.
use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle, sleep},
    time::{Duration, Instant},
};

/// An HTTP/1.1 keep-alive backend on loopback that counts the requests it answered. It stops
/// accepting when dropped.
pub struct CountingBackend {
    pub addr: SocketAddr,
    served: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl CountingBackend {
    /// A backend on IPv4 loopback.
    pub fn start() -> Self {
        Self::start_on(Ipv4Addr::LOCALHOST.into())
    }

    /// A backend on a free port of `ip`, a loopback address.
    pub fn start_on(ip: IpAddr) -> Self {
        let listener = TcpListener::bind((ip, 0)).expect("bind a backend");
        let addr = listener.local_addr().expect("backend address");
        listener.set_nonblocking(true).expect("non-blocking accept");
        let served = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stopping) = (Arc::clone(&served), Arc::clone(&stop));
        thread::spawn(move || {
            while !stopping.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let count = Arc::clone(&count);
                        stream.set_nonblocking(false).expect("blocking stream");
                        thread::spawn(move || serve(stream, &count));
                    }
                    Err(_) => sleep(Duration::from_millis(5)),
                }
            }
        });
        Self { addr, served, stop }
    }

    /// Requests answered so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }
}

impl Drop for CountingBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Answers requests on one connection until it closes: headers, then a Content-Length body
/// (nginx always sends one upstream; it de-chunks client bodies).
fn serve(mut stream: TcpStream, served: &AtomicU64) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        let head_end = loop {
            if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        let body = content_length(&buffer[..head_end]);
        while buffer.len() < head_end + body {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        buffer.drain(..head_end + body);
        served.fetch_add(1, Ordering::SeqCst);
        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok";
        if stream.write_all(answer).is_err() {
            return;
        }
    }
}

/// Opens a connection to `ip:port`, writes `parts` (sleeping `gap` between them), and reads
/// until `answers` responses came, the peer closed, or 5 s passed. Returns the status codes
/// seen, in order.
pub fn session(
    ip: Ipv4Addr,
    port: u16,
    parts: &[Vec<u8>],
    gap: Duration,
    answers: usize,
) -> Vec<u16> {
    let mut stream = TcpStream::connect((ip, port)).expect("connect to nginx");
    stream.set_nodelay(true).expect("nodelay");
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("read timeout");
    for (i, part) in parts.iter().enumerate() {
        if i > 0 && !gap.is_zero() {
            sleep(gap);
        }
        if stream.write_all(part).is_err() {
            break;
        }
    }
    let mut got = Vec::new();
    let mut buffer = [0u8; 65536];
    let deadline = Instant::now() + Duration::from_secs(5);
    while statuses(&got).len() < answers && Instant::now() < deadline {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buffer[..n]),
        }
    }
    statuses(&got)
}

/// The status codes of the responses in `bytes`.
fn statuses(bytes: &[u8]) -> Vec<u16> {
    bytes
        .windows(12)
        .filter(|w| w.starts_with(b"HTTP/1.1 ") || w.starts_with(b"HTTP/1.0 "))
        .filter_map(|w| std::str::from_utf8(&w[9..12]).ok()?.parse().ok())
        .collect()
}

/// `GET path` with a Host header.
pub fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: lynx\r\nUser-Agent: lynx-test\r\n\r\n").into_bytes()
}

/// Valid traffic that wrk does not send: pipelining, requests split inside the method, the
/// version and a header, POST bodies (Content-Length and chunked, with request-looking bytes
/// in them) split across writes, a 64 KiB body, and a client that sends one byte at a time.
/// Each session's answers must all be 2xx. Returns the requests sent.
pub fn valid_mix(ip: Ipv4Addr, port: u16) -> u64 {
    let mut sent = 0;
    let mut check = |name: &str, parts: Vec<Vec<u8>>, gap: Duration, answers: usize| {
        let codes = session(ip, port, &parts, gap, answers);
        assert!(
            codes.len() == answers && codes.iter().all(|c| (200..300).contains(c)),
            "{name}: expected {answers} 2xx answers, got {codes:?}"
        );
        sent += answers as u64;
    };
    for c in 0..20 {
        let burst: Vec<u8> = (0..50)
            .flat_map(|i| get(&format!("/pipe/{c}/{i}")))
            .collect();
        check("pipelined", vec![burst], Duration::ZERO, 50);
    }
    for _ in 0..20 {
        let parts = vec![
            b"GE".to_vec(),
            b"T /split HTTP/1.1\r\nHo".to_vec(),
            b"st: x\r\n\r\nGET /split2 HTTP/1".to_vec(),
            b".1\r\nHost: x\r\n\r".to_vec(),
            b"\n".to_vec(),
        ];
        check("split", parts, Duration::from_millis(5), 2);
    }
    let evil = "GET /evil HTTP/1.1\r\nHost: x\r\n\r\nPOST /evil HTTP/1.0\r\n\r\n".repeat(50);
    for _ in 0..20 {
        let mut request = format!(
            "POST /cl HTTP/1.1\r\nHost: x\r\ncontent-LENGTH: {}\r\n\r\n{evil}",
            evil.len()
        )
        .into_bytes();
        request.extend(get("/after-cl"));
        let middle = request.len() / 2;
        let parts = vec![request[..middle].to_vec(), request[middle..].to_vec()];
        check("POST with a body", parts, Duration::from_millis(2), 2);
    }
    for _ in 0..20 {
        let mut request =
            b"POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let data = b"GET /in-chunk HTTP/1.1\r\n\r\n";
        request.extend(format!("{:x};ext=1\r\n", data.len()).as_bytes());
        request.extend(data);
        request.extend(b"\r\n");
        request.extend(format!("{:X}\r\n", 3000).as_bytes());
        request.extend(std::iter::repeat_n(b'G', 3000));
        request.extend(b"\r\n0\r\nX-Trailer: GET / HTTP/1.1\r\n\r\n");
        request.extend(get("/after-chunked"));
        let parts = request.chunks(700).map(<[u8]>::to_vec).collect();
        check("chunked POST", parts, Duration::from_millis(1), 2);
    }
    for _ in 0..5 {
        let body = "GET / HTTP/1.1\r\n".repeat(4096);
        let mut request = format!(
            "POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes();
        request.extend(get("/after-big"));
        check("64 KiB POST", vec![request], Duration::ZERO, 2);
    }
    for _ in 0..3 {
        let parts = get("/slow").into_iter().map(|b| vec![b]).collect();
        check("one byte at a time", parts, Duration::from_millis(1), 1);
    }
    sent
}

/// One malformed input: what to send on a connection of its own, and what nginx (and so
/// Lynx, as docs/snapshot.md states) counts for it.
pub struct Malformed {
    pub name: &'static str,
    pub bytes: Vec<u8>,
    /// Request starts nginx counts.
    pub requests: u64,
    /// Of those, the ones Lynx reports as `bad_requests`.
    pub bad_requests: u64,
}

/// The malformed inputs of docs/snapshot.md's table.
pub fn malformed_inputs() -> Vec<Malformed> {
    let case = |name, bytes: Vec<u8>, requests, bad_requests| Malformed {
        name,
        bytes,
        requests,
        bad_requests,
    };
    let big_header = format!(
        "GET /big-header HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(65536)
    );
    vec![
        case("garbage", b"\x00\x01\x02garbage\xff\r\n\r\n".to_vec(), 1, 1),
        case("lowercase method", b"get / HTTP/1.1\r\n\r\n".to_vec(), 1, 1),
        case("cut mid-line, then close", b"GET /cut HT".to_vec(), 1, 0),
        case("no version (HTTP/0.9)", b"GET /\r\n".to_vec(), 1, 1),
        case("64 KiB header", big_header.into_bytes(), 1, 0),
        case(
            "valid, then garbage",
            [get("/ok"), b"BLAH\r\n\r\n".to_vec()].concat(),
            2,
            1,
        ),
        case("only CRLF, then close", b"\r\n".to_vec(), 1, 0),
        case(
            "Connection: close, then a pipelined request",
            [
                b"GET /close HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
                get("/never"),
            ]
            .concat(),
            1,
            0,
        ),
    ]
}

/// Sends `input` on a connection of its own and waits for nginx's answer or close.
pub fn send_malformed(ip: Ipv4Addr, port: u16, input: &Malformed) {
    session(
        ip,
        port,
        std::slice::from_ref(&input.bytes),
        Duration::ZERO,
        2,
    );
}

/// `clients` threads, each sending `requests` (at most nginx's `keepalive_requests`, 1,000)
/// keep-alive GETs of `path` one after the other
/// on a connection of its own and waiting for every answer (so every request counted by
/// nginx is also sent upstream). Returns the threads; each yields its 2xx answers.
pub fn keep_alive_clients(
    ip: Ipv4Addr,
    port: u16,
    path: &'static str,
    clients: usize,
    requests: usize,
) -> Vec<JoinHandle<u64>> {
    spawn_clients(clients, move || {
        let mut stream = TcpStream::connect((ip, port)).expect("connect to nginx");
        stream.set_nodelay(true).expect("nodelay");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        let mut ok = 0;
        let mut buffer = vec![0u8; 65536];
        for _ in 0..requests {
            stream.write_all(&get(path)).expect("send a request");
            let mut answer = Vec::new();
            while !complete_response(&answer) {
                let n = stream.read(&mut buffer).expect("read an answer");
                assert!(n > 0, "nginx closed a keep-alive connection");
                answer.extend_from_slice(&buffer[..n]);
            }
            ok += u64::from(statuses(&answer).first().is_some_and(|c| *c < 300));
        }
        ok
    })
}

/// `clients` threads, each making `requests` GETs of `path`, each on a connection of its own
/// with `Connection: close`, waiting for every answer. Each thread yields its 2xx answers.
pub fn close_clients(
    ip: Ipv4Addr,
    port: u16,
    path: &'static str,
    clients: usize,
    requests: usize,
) -> Vec<JoinHandle<u64>> {
    spawn_clients(clients, move || {
        let request = format!("GET {path} HTTP/1.1\r\nHost: lynx\r\nConnection: close\r\n\r\n");
        let mut ok = 0;
        for _ in 0..requests {
            let mut stream = TcpStream::connect((ip, port)).expect("connect to nginx");
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .expect("read timeout");
            stream
                .write_all(request.as_bytes())
                .expect("send a request");
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).expect("read an answer");
            ok += u64::from(statuses(&answer).first().is_some_and(|c| *c < 300));
        }
        ok
    })
}

/// `clients` threads each running `client`.
fn spawn_clients(
    clients: usize,
    client: impl Fn() -> u64 + Clone + Send + 'static,
) -> Vec<JoinHandle<u64>> {
    (0..clients)
        .map(|_| thread::spawn(client.clone()))
        .collect()
}

/// Whether `bytes` hold one whole response with a Content-Length body.
fn complete_response(bytes: &[u8]) -> bool {
    let Some(head_end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    bytes.len() >= head_end + 4 + content_length(&bytes[..head_end])
}

/// The Content-Length of a message head; 0 when it has none.
fn content_length(head: &[u8]) -> usize {
    String::from_utf8_lossy(head)
        .to_ascii_lowercase()
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}
