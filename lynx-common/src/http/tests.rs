//! The framing state machine against what nginx counts, fed whole and in every split.
use std::{format, vec, vec::Vec};

use proptest::prelude::*;

use super::*;

fn client() -> HttpFlow {
    new_flow(FLOW_CLIENT, 80, true)
}

/// Counts of `stream` fed in one piece.
fn counts(stream: &[u8]) -> (Tally, HttpFlow) {
    let mut flow = client();
    let mut tally = Tally::default();
    feed(&mut flow, stream, &mut tally);
    (tally, flow)
}

/// Counts of `stream` fed in the pieces that `cuts` (sorted offsets) make.
fn counts_split(stream: &[u8], cuts: &[usize]) -> Tally {
    let mut flow = client();
    let mut tally = Tally::default();
    let mut start = 0;
    for &cut in cuts.iter().chain([stream.len()].iter()) {
        feed(&mut flow, &stream[start..cut], &mut tally);
        start = cut;
    }
    tally
}

fn tally(requests: u64, bad_requests: u64) -> Tally {
    Tally {
        requests,
        bad_requests,
    }
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: lynx\r\nUser-Agent: test\r\n\r\n").into_bytes()
}

/// Requests whose bodies, chunks and trailers hold bytes that look like requests.
fn tricky_stream() -> Vec<u8> {
    let evil = "GET /evil HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut stream = get("/first");
    stream.extend(
        format!(
            "POST /cl HTTP/1.1\r\nHost: x\r\ncontent-LENGTH: {}\r\n\r\n{evil}",
            evil.len()
        )
        .as_bytes(),
    );
    stream.extend(b"POST /chunked HTTP/1.1\r\nTransfer-Encoding:  Chunked \r\n\r\n");
    stream.extend(format!("{:x};ext=1\r\n{evil}\r\n", evil.len()).as_bytes());
    stream.extend(b"A\r\nGET / HTTP\r\n0\r\nX-Trailer: GET / HTTP/1.1\r\n\r\n");
    stream.extend(b"\r\n");
    stream.extend(get("/last"));
    stream
}

#[test]
fn keep_alive_requests_are_counted_each_once() {
    let stream: Vec<u8> = (0..100).flat_map(|i| get(&format!("/{i}"))).collect();
    let (found, flow) = counts(&stream);
    assert_eq!(found, tally(100, 0));
    assert_eq!(flow.state, IDLE);
}

#[test]
fn bodies_chunks_and_trailers_are_never_requests() {
    let (found, flow) = counts(&tricky_stream());
    // The stray CRLF between two requests is a request start of its own in nginx's count,
    // as in `stub_status`, and merges with the next request line.
    assert_eq!(found, tally(4, 0));
    assert_eq!(flow.state, IDLE);
}

#[test]
fn every_split_point_gives_the_same_counts() {
    let stream = tricky_stream();
    let whole = counts(&stream).0;
    for cut in 0..=stream.len() {
        assert_eq!(counts_split(&stream, &[cut]), whole, "cut at {cut}");
    }
    let every_byte: Vec<usize> = (1..stream.len()).collect();
    assert_eq!(counts_split(&stream, &every_byte), whole);
}

/// Header lines that only look like the three that frame a message (by name or by value)
/// change nothing, whole or cut anywhere: the parser passes over them as over any other line.
#[test]
fn look_alike_headers_do_not_frame() {
    let mut stream = b"POST /a HTTP/1.1\r\nContent-Type: chunked\r\nTE: chunked\r\n\
        Cookie: close\r\nX-Note: Content-Length: 99\r\nConnections: close\r\n\
        Transfer-Encodings: chunked\r\ncontent-length: 4\r\n\r\nbody"
        .to_vec();
    stream.extend(get("/next"));
    let (found, flow) = counts(&stream);
    assert_eq!(found, tally(2, 0));
    assert_eq!(flow.state, IDLE);
    for cut in 0..=stream.len() {
        assert_eq!(counts_split(&stream, &[cut]), found, "cut at {cut}");
    }
}

/// The table of docs/design/nginx-counting.md §5: what nginx counts for each malformed input.
#[test]
fn malformed_input_counts_as_nginx_does() {
    let big_header = format!(
        "GET /big HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(65536)
    );
    let cases: Vec<(&str, Vec<u8>, Tally)> =
        vec![
        ("garbage", b"\x00\x01\x02garbage\xff\r\n\r\n".to_vec(), tally(1, 1)),
        ("lowercase method", b"get / HTTP/1.1\r\n\r\n".to_vec(), tally(1, 1)),
        ("cut mid-line", b"GET /cut HT".to_vec(), tally(1, 0)),
        ("HTTP/0.9", b"GET /\r\n".to_vec(), tally(1, 1)),
        ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), tally(1, 1)),
        ("64 KiB header", big_header.into_bytes(), tally(1, 0)),
        (
            "valid then garbage",
            [get("/ok"), b"BLAH\r\n\r\n".to_vec()].concat(),
            tally(2, 1),
        ),
        ("only CRLF", b"\r\n".to_vec(), tally(1, 0)),
        (
            "bad chunk size",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
            tally(1, 1),
        ),
        (
            "Content-Length and Transfer-Encoding",
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                .to_vec(),
            tally(1, 1),
        ),
        (
            "unknown transfer coding",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n".to_vec(),
            tally(1, 1),
        ),
        (
            "chunked HTTP/1.0",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            tally(1, 1),
        ),
    ];
    for (name, stream, expected) in cases {
        assert_eq!(counts(&stream).0, expected, "{name}");
        // Nothing after a rejected request counts: nginx has closed the connection.
        if expected.bad_requests > 0 {
            let more = [stream, get("/after")].concat();
            assert_eq!(counts(&more).0, expected, "{name}, then a request");
        }
    }
}

#[test]
fn requests_after_a_close_are_not_counted() {
    let close = b"GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n".to_vec();
    assert_eq!(counts(&[close, get("/piped")].concat()).0, tally(1, 0));
    let old = b"GET / HTTP/1.0\r\nHost: x\r\n\r\n".to_vec();
    assert_eq!(counts(&[old, get("/piped")].concat()).0, tally(1, 0));
    let old_keep_alive = b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n".to_vec();
    assert_eq!(
        counts(&[old_keep_alive, get("/piped")].concat()).0,
        tally(2, 0)
    );
    // The body of the closing request is still skipped, not parsed.
    let post = b"POST / HTTP/1.1\r\nConnection: close\r\nContent-Length: 5\r\n\r\nGET /".to_vec();
    let (found, flow) = counts(&post);
    assert_eq!(found, tally(1, 0));
    assert_eq!(flow.state, CLOSED);
}

#[test]
fn tls_flows_count_nothing() {
    let mut flow = new_flow(FLOW_CLIENT, 443, false);
    let mut found = Tally::default();
    feed(&mut flow, &get("/"), &mut found);
    assert_eq!(found, Tally::default());
}

#[test]
fn huge_bodies_are_skipped_in_one_step() {
    let mut flow = client();
    let mut found = Tally::default();
    feed(
        &mut flow,
        b"PUT / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        &mut found,
    );
    assert_eq!(flow.state, BODY);
    assert_eq!(flow.left, MAX_LEFT);
    assert_eq!(skip(&mut flow, u64::MAX), MAX_LEFT);
    assert_eq!(flow.state, IDLE);
}

/// A valid request of one of several shapes.
fn request() -> impl Strategy<Value = Vec<u8>> {
    let path = "/[a-z0-9]{0,12}";
    let body = proptest::collection::vec(any::<u8>(), 0..300);
    prop_oneof![
        path.prop_map(|p| get(&p)),
        (path, body.clone()).prop_map(|(p, body)| {
            let mut r = format!(
                "POST {p} HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            r.extend(body);
            r
        }),
        (path, proptest::collection::vec(body, 0..4)).prop_map(|(p, chunks)| {
            let mut r =
                format!("PUT {p} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").into_bytes();
            for chunk in chunks.iter().filter(|c| !c.is_empty()) {
                r.extend(format!("{:x}\r\n", chunk.len()).as_bytes());
                r.extend(chunk);
                r.extend(b"\r\n");
            }
            r.extend(b"0\r\n\r\n");
            r
        }),
    ]
}

proptest! {
    /// Any sequence of valid requests, cut anywhere, counts each request once.
    #[test]
    fn valid_streams_count_each_request_once_however_cut(
        requests in proptest::collection::vec(request(), 1..12),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let stream: Vec<u8> = requests.concat();
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(stream.len())).collect();
        cuts.sort_unstable();
        let found = counts_split(&stream, &cuts);
        prop_assert_eq!(found, tally(requests.len() as u64, 0));
    }

    /// Taking runs eight bytes at a time leaves the machine exactly where taking them one by
    /// one does, on requests with long header lines and on arbitrary bytes.
    #[test]
    fn words_and_bytes_agree(
        requests in proptest::collection::vec(request(), 1..6),
        cookie in "[ -~\t\x0b\x0c\u{80}-\u{ff}]{0,80}",
        soup in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut stream = format!("GET /long/{cookie} HTTP/1.1\r\nCookie: {cookie}\r\n\r\n")
            .into_bytes();
        stream.extend(requests.concat());
        for bytes in [stream, soup] {
            let (mut flow, mut tally) = (client(), Tally::default());
            feed(&mut flow, &bytes, &mut tally);
            let (bytewise_flow, bytewise_tally) = bytewise(&bytes);
            prop_assert_eq!(flow, bytewise_flow);
            prop_assert_eq!(tally, bytewise_tally);
        }
    }
}

/// The machine driven one byte at a time, never by words.
fn bytewise(mut bytes: &[u8]) -> (HttpFlow, Tally) {
    let (mut flow, mut tally) = (client(), Tally::default());
    while !bytes.is_empty() && !is_closed(&flow) {
        let n = if wants_bytes(&flow) {
            byte(&mut flow, bytes[0], &mut tally);
            1
        } else {
            skip(&mut flow, bytes.len() as u64) as usize
        };
        bytes = &bytes[n..];
    }
    (flow, tally)
}

#[test]
fn names_fit_the_kernel() {
    for name in [
        HTTP_FLOWS_MAP,
        HTTP_ENDPOINTS_MAP,
        HTTP_COUNTERS_MAP,
        HTTP_SLOT_OWNERS_MAP,
        HTTP_TARGET_MAP,
        NGINX_TGIDS_MAP,
        HTTP_PORTS_MAP,
        HTTP_RECV_PROGRAM,
        HTTP_SEND_PROGRAM,
        HTTP_EXIT_PROGRAM,
        HTTP_SOCK_OPS_PROGRAM,
        HTTP_RELEASE_PROGRAM,
        NGINX_FORK_PROGRAM,
    ] {
        assert!(name.len() <= 15, "{name} is longer than the kernel keeps");
    }
}

#[test]
fn endpoint_addresses_round_trip_through_one_key_shape() {
    use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let v4 = IpAddr::V4(Ipv4Addr::new(10, 20, 30, 40));
    let v6 = IpAddr::V6(Ipv6Addr::new(
        0xfd42, 0xabcd, 0, 0, 0x216, 0x3eff, 0xfe12, 0x3456,
    ));
    for address in [v4, v6] {
        let endpoint = Endpoint {
            kind: u32::from(FLOW_UPSTREAM),
            port: 80,
            addr: Endpoint::addr_of(address),
        };
        assert_eq!(endpoint.address(), address);
    }
    // What the kernel builds from `skc_daddr` (its bytes in network order, read as one word).
    let raw = u32::from_ne_bytes([10, 20, 30, 40]);
    assert_eq!(Endpoint::ipv4_mapped(raw), Endpoint::addr_of(v4));
}

#[test]
fn sockets_opened_one_after_another_take_distinct_flow_slots() {
    // The kernel hands out cookies in sequence: a run of them never collides, and the probes
    // of one cookie wrap around the table's end.
    let first = 0x1234_0000_fff0_u64;
    let slots: std::collections::HashSet<u32> = (first..first + 4096)
        .map(|cookie| flow_slot(cookie, 0))
        .collect();
    assert_eq!(slots.len(), 4096);
    let last = u64::from(HTTP_FLOW_ENTRIES - 1);
    assert_eq!(flow_slot(last, 0), HTTP_FLOW_ENTRIES - 1);
    assert_eq!(flow_slot(last, 1), 0);
    assert!((0..HTTP_FLOW_PROBES).all(|probe| flow_slot(u64::MAX, probe) < HTTP_FLOW_ENTRIES));
}
