//! The client against a fake LXD: a thread on a `UnixListener` in a temporary directory that
//! answers each connection with the next canned response and reports the request it got.
//! The JSON is shaped like LXD 5.0.2's (captured from one, host-specific values replaced).
use std::{
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, Ipv6Addr},
    os::unix::net::UnixListener,
    path::PathBuf,
    sync::mpsc::{self, Receiver},
    thread,
    time::Duration,
};

use serde_json::{Value, json};

use super::*;

/// A request as the fake LXD read it.
#[derive(Debug)]
struct Seen {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("request body is JSON")
    }
}

struct FakeLxd {
    dir: PathBuf,
    socket: PathBuf,
    seen: Receiver<Seen>,
}

impl FakeLxd {
    /// Serves `answers`, one connection each, in order, then stops listening.
    fn serve(test: &str, answers: Vec<Vec<u8>>) -> Self {
        let dir = temp_dir(test);
        let socket = dir.join("unix.socket");
        let listener = UnixListener::bind(&socket).expect("bind the fake LXD socket");
        let (tell, seen) = mpsc::channel();
        thread::spawn(move || {
            for answer in answers {
                let (stream, _) = listener.accept().expect("accept");
                let mut reader = BufReader::new(&stream);
                let request = read_request(&mut reader);
                // The test may have finished with an error before reading every request.
                let _ = tell.send(request);
                (&stream).write_all(&answer).expect("answer");
            }
        });
        Self { dir, socket, seen }
    }

    fn client(&self) -> LxdClient {
        LxdClient::new(&self.socket).with_timeouts(Duration::from_secs(2), Duration::from_secs(5))
    }

    fn next(&self) -> Seen {
        self.seen
            .recv_timeout(Duration::from_secs(5))
            .expect("the client sent a request")
    }
}

impl Drop for FakeLxd {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lynx-lxd-{}-{test}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create the temporary directory");
    dir
}

fn read_request(reader: &mut impl BufRead) -> Seen {
    let mut line = String::new();
    reader.read_line(&mut line).expect("request line");
    let mut parts = line.split_whitespace();
    let method = parts.next().expect("method").to_owned();
    let target = parts.next().expect("target").to_owned();
    assert_eq!(parts.next(), Some("HTTP/1.1"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).expect("header line");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(": ").expect("header has a colon");
        headers.push((name.to_owned(), value.to_owned()));
    }
    let mut seen = Seen {
        method,
        target,
        headers,
        body: String::new(),
    };
    let length = seen
        .header("content-length")
        .map_or(0, |l| l.parse().expect("numeric Content-Length"));
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("request body");
    seen.body = String::from_utf8(body).expect("UTF-8 body");
    seen
}

/// An answer with a `Content-Length`, as LXD sends small ones.
fn answer(status: &str, extra_headers: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{extra_headers}Date: Sun, 22 Nov 2026 04:02:34 GMT\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A chunked answer, as LXD sends large ones (Go's server chunks what it streams).
fn chunked(body: &str) -> Vec<u8> {
    let mut bytes =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for chunk in body.as_bytes().chunks(700) {
        bytes.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        bytes.extend_from_slice(chunk);
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(b"0\r\n\r\n");
    bytes
}

fn sync(metadata: &Value) -> String {
    json!({
        "type": "sync", "status": "Success", "status_code": 200, "operation": "",
        "error_code": 0, "error": "", "metadata": metadata,
    })
    .to_string()
}

fn error(code: u16, message: &str) -> String {
    json!({
        "type": "error", "status": "", "status_code": 0, "operation": "",
        "error_code": code, "error": message, "metadata": null,
    })
    .to_string()
}

const OPERATION_ID: &str = "2e68dc22-0f5c-45c1-b05e-a28dbfc0b85f";

/// An operation as LXD 5.0.2 renders it, in an async answer or a wait's.
fn operation(description: &str, status: &str, status_code: u16, err: &str) -> Value {
    json!({
        "id": OPERATION_ID, "class": "task", "description": description,
        "created_at": "2026-11-22T04:02:49.470473738Z",
        "updated_at": "2026-11-22T04:02:49.470473738Z",
        "status": status, "status_code": status_code,
        "resources": {"instances": ["/1.0/instances/web1"]},
        "metadata": null, "may_cancel": false, "err": err, "location": "none",
    })
}

fn accepted(description: &str) -> Vec<u8> {
    let body = json!({
        "type": "async", "status": "Operation created", "status_code": 100,
        "operation": format!("/1.0/operations/{OPERATION_ID}"),
        "error_code": 0, "error": "",
        "metadata": operation(description, "Running", 103, ""),
    });
    answer(
        "202 Accepted",
        &format!("Location: /1.0/operations/{OPERATION_ID}\r\n"),
        &body.to_string(),
    )
}

fn waited(description: &str, status: &str, status_code: u16, err: &str) -> Vec<u8> {
    answer(
        "200 OK",
        "",
        &sync(&operation(description, status, status_code, err)),
    )
}

/// A running instance with a global IPv4 and IPv6 on eth0, and a stopped one never started,
/// as `GET /1.0/instances?recursion=2` lists them.
fn instances_fixture() -> Value {
    json!([
      {
        "architecture": "x86_64",
        "config": {
          "image.architecture": "amd64",
          "image.description": "Debian bookworm amd64 (20231201_05:24)",
          "image.os": "Debian",
          "image.release": "bookworm",
          "image.serial": "20231201_05:24",
          "image.type": "squashfs",
          "image.variant": "default",
          "volatile.base_image": "5b8e7a3c0c4f8a7dd2ed3e6a2c1f0d9e8b7a6c5d4e3f2a1b0c9d8e7f6a5b4c3d",
          "volatile.cloud-init.instance-id": "00000000-0000-4000-8000-000000000001",
          "volatile.eth0.host_name": "veth1a2b3c4d",
          "volatile.eth0.hwaddr": "00:16:3e:00:00:01",
          "volatile.idmap.base": "0",
          "volatile.idmap.current": "[{\"Isuid\":true,\"Isgid\":false,\"Hostid\":100000,\"Nsid\":0,\"Maprange\":10000001},{\"Isuid\":false,\"Isgid\":true,\"Hostid\":100000,\"Nsid\":0,\"Maprange\":10000001}]",
          "volatile.last_state.power": "RUNNING",
          "volatile.uuid": "00000000-0000-4000-8000-000000000002"
        },
        "devices": {},
        "ephemeral": false,
        "profiles": ["default", "web"],
        "stateful": false,
        "description": "",
        "created_at": "2026-11-22T04:02:29.628479328Z",
        "expanded_config": {"image.description": "Debian bookworm amd64 (20231201_05:24)"},
        "expanded_devices": {
          "eth0": {"name": "eth0", "network": "lxdbr0", "type": "nic"},
          "root": {"path": "/", "pool": "default", "type": "disk"}
        },
        "name": "web1",
        "status": "Running",
        "status_code": 103,
        "last_used_at": "2026-11-22T04:02:29.792704513Z",
        "location": "none",
        "type": "container",
        "project": "default",
        "backups": null,
        "state": {
          "status": "Running",
          "status_code": 103,
          "disk": {},
          "memory": {"usage": 897024, "usage_peak": 1605632, "swap_usage": 0, "swap_usage_peak": 0},
          "network": {
            "eth0": {
              "addresses": [
                {"family": "inet", "address": "10.0.3.160", "netmask": "24", "scope": "global"},
                {"family": "inet6", "address": "fd42:1:2:3:216:3eff:fe00:1", "netmask": "64", "scope": "global"},
                {"family": "inet6", "address": "fe80::216:3eff:fe00:1", "netmask": "64", "scope": "link"}
              ],
              "counters": {
                "bytes_received": 712, "bytes_sent": 1200, "packets_received": 2, "packets_sent": 8,
                "errors_received": 0, "errors_sent": 0,
                "packets_dropped_outbound": 0, "packets_dropped_inbound": 0
              },
              "hwaddr": "00:16:3e:00:00:01",
              "host_name": "veth1a2b3c4d",
              "mtu": 1500,
              "state": "up",
              "type": "broadcast"
            },
            "lo": {
              "addresses": [
                {"family": "inet", "address": "127.0.0.1", "netmask": "8", "scope": "local"},
                {"family": "inet6", "address": "::1", "netmask": "128", "scope": "local"}
              ],
              "counters": {
                "bytes_received": 0, "bytes_sent": 0, "packets_received": 0, "packets_sent": 0,
                "errors_received": 0, "errors_sent": 0,
                "packets_dropped_outbound": 0, "packets_dropped_inbound": 0
              },
              "hwaddr": "",
              "host_name": "",
              "mtu": 65536,
              "state": "up",
              "type": "loopback"
            }
          },
          "pid": 29706,
          "processes": 3,
          "cpu": {"usage": 13784069}
        },
        "snapshots": null
      },
      {
        "architecture": "x86_64",
        "config": {
          "image.os": "busybox",
          "image.release": "1.36",
          "volatile.apply_template": "create",
          "volatile.base_image": "a1f8811a70dc100ed622d5e6447b65d3f3c8ca821896095732d4ec9e875e97a6",
          "volatile.eth0.hwaddr": "00:16:3e:00:00:02",
          "volatile.last_state.idmap": "[]"
        },
        "devices": {},
        "ephemeral": false,
        "profiles": ["default"],
        "stateful": false,
        "description": "",
        "created_at": "2026-11-22T04:02:34.802246403Z",
        "expanded_config": {},
        "expanded_devices": {
          "eth0": {"name": "eth0", "network": "lxdbr0", "type": "nic"},
          "root": {"path": "/", "pool": "default", "type": "disk"}
        },
        "name": "web2",
        "status": "Stopped",
        "status_code": 102,
        "last_used_at": "1970-01-01T00:00:00Z",
        "location": "none",
        "type": "container",
        "project": "default",
        "backups": null,
        "state": {
          "status": "Stopped",
          "status_code": 102,
          "disk": {},
          "memory": {"usage": 0, "usage_peak": 0, "swap_usage": 0, "swap_usage_peak": 0},
          "network": null,
          "pid": 0,
          "processes": 0,
          "cpu": {"usage": 0}
        },
        "snapshots": null
      }
    ])
}

#[test]
fn lists_instances_from_a_chunked_answer() {
    let lxd = FakeLxd::serve("instances", vec![chunked(&sync(&instances_fixture()))]);
    let instances = lxd.client().instances().expect("instances");
    let request = lxd.next();
    assert_eq!(
        (request.method.as_str(), request.target.as_str()),
        ("GET", "/1.0/instances?recursion=2")
    );
    assert_eq!(request.header("host"), Some("lxd"));
    assert_eq!(
        instances,
        [
            Instance {
                name: "web1".into(),
                kind: "container".into(),
                status: InstanceStatus::Running,
                pid: Some(29706),
                ipv4: vec![Ipv4Addr::new(10, 0, 3, 160)],
                ipv6: vec![
                    "fd42:1:2:3:216:3eff:fe00:1"
                        .parse::<Ipv6Addr>()
                        .expect("IPv6")
                ],
                interfaces: [("eth0".to_owned(), vec![Ipv4Addr::new(10, 0, 3, 160)])].into(),
                nics: vec![NicDevice {
                    device: "eth0".into(),
                    interface: "eth0".into(),
                    network: Some("lxdbr0".into()),
                    ipv4_address: None,
                }],
                image: Some("Debian bookworm amd64 (20231201_05:24)".into()),
                base_image: Some(
                    "5b8e7a3c0c4f8a7dd2ed3e6a2c1f0d9e8b7a6c5d4e3f2a1b0c9d8e7f6a5b4c3d".into()
                ),
                profiles: vec!["default".into(), "web".into()],
                created_at: "2026-11-22T04:02:29.628479328Z".into(),
                last_used_at: Some("2026-11-22T04:02:29.792704513Z".into()),
            },
            Instance {
                name: "web2".into(),
                kind: "container".into(),
                status: InstanceStatus::Stopped,
                pid: None,
                ipv4: vec![],
                ipv6: vec![],
                interfaces: Interfaces::new(),
                nics: vec![NicDevice {
                    device: "eth0".into(),
                    interface: "eth0".into(),
                    network: Some("lxdbr0".into()),
                    ipv4_address: None,
                }],
                image: Some("busybox 1.36".into()),
                base_image: Some(
                    "a1f8811a70dc100ed622d5e6447b65d3f3c8ca821896095732d4ec9e875e97a6".into()
                ),
                profiles: vec!["default".into()],
                created_at: "2026-11-22T04:02:34.802246403Z".into(),
                last_used_at: None,
            },
        ]
    );
}

#[test]
fn reads_an_instance_state() {
    let state = instances_fixture()[0]["state"].clone();
    let lxd = FakeLxd::serve("state", vec![answer("200 OK", "", &sync(&state))]);
    let state = lxd.client().instance_state("web1").expect("state");
    assert_eq!(lxd.next().target, "/1.0/instances/web1/state");
    assert_eq!(state.status, InstanceStatus::Running);
    assert_eq!(state.pid, Some(29706));
    assert_eq!(state.processes, Some(3));
    assert_eq!(state.ipv4, [Ipv4Addr::new(10, 0, 3, 160)]);
    assert_eq!(state.cpu_usage_ns, 13_784_069);
    assert_eq!(
        state.memory,
        MemoryState {
            usage: 897_024,
            usage_peak: 1_605_632,
            swap_usage: 0,
            swap_usage_peak: 0,
        }
    );
    assert_eq!(
        state.network["eth0"],
        NicState {
            host_name: "veth1a2b3c4d".into(),
            hwaddr: "00:16:3e:00:00:01".into(),
            mtu: 1500,
            state: "up".into(),
            bytes_received: 712,
            bytes_sent: 1200,
            packets_received: 2,
            packets_sent: 8,
        }
    );
    assert_eq!(state.network["lo"].mtu, 65536);
}

#[test]
fn unknown_figures_read_as_none() {
    // A VM whose agent is not running: LXD says -1 for what it cannot see.
    let state = json!({
        "status": "Running", "status_code": 103, "disk": null, "memory": null,
        "network": null, "pid": -1, "processes": -1, "cpu": {"usage": -1},
    });
    let lxd = FakeLxd::serve("unknown", vec![answer("200 OK", "", &sync(&state))]);
    let state = lxd.client().instance_state("vm1").expect("state");
    assert_eq!((state.pid, state.processes), (None, None));
    assert_eq!(state.cpu_usage_ns, 0);
    assert!(state.network.is_empty());
}

#[test]
fn changes_state_and_waits_for_the_operation() {
    let lxd = FakeLxd::serve(
        "change",
        vec![
            accepted("Stopping instance"),
            waited("Stopping instance", "Success", 200, ""),
        ],
    );
    lxd.client()
        .change_state(
            "web1",
            StateAction::Stop { force: false },
            Duration::from_millis(29_500),
        )
        .expect("stopped");
    let put = lxd.next();
    assert_eq!(
        (put.method.as_str(), put.target.as_str()),
        ("PUT", "/1.0/instances/web1/state")
    );
    assert_eq!(put.header("content-type"), Some("application/json"));
    assert_eq!(
        put.json(),
        json!({"action": "stop", "timeout": 30, "force": false})
    );
    let wait = lxd.next();
    assert_eq!(
        (wait.method.as_str(), wait.target.as_str()),
        (
            "GET",
            "/1.0/operations/2e68dc22-0f5c-45c1-b05e-a28dbfc0b85f/wait?timeout=40"
        )
    );
}

#[test]
fn sends_each_action() {
    let actions = [
        (
            StateAction::Start,
            json!({"action": "start", "timeout": 1, "force": false}),
        ),
        (
            StateAction::Restart { force: true },
            json!({"action": "restart", "timeout": 1, "force": true}),
        ),
        (
            StateAction::Freeze,
            json!({"action": "freeze", "timeout": 1, "force": false}),
        ),
        (
            StateAction::Unfreeze,
            json!({"action": "unfreeze", "timeout": 1, "force": false}),
        ),
    ];
    for (action, body) in actions {
        let lxd = FakeLxd::serve(
            "actions",
            vec![accepted("Updating"), waited("Updating", "Success", 200, "")],
        );
        // A zero timeout must not reach LXD as 0, which it reads as "kill".
        lxd.client()
            .change_state("web1", action, Duration::ZERO)
            .expect("done");
        assert_eq!(lxd.next().json(), body, "{action:?}");
        lxd.next();
    }
}

#[test]
fn surfaces_a_failed_operation() {
    // LXD 5.0.2 answers the wait for a failed operation with success, the failure inside.
    let lxd = FakeLxd::serve(
        "failed",
        vec![
            accepted("Starting instance"),
            waited(
                "Starting instance",
                "Failure",
                400,
                "Failed to run: forkstart\nTry `lxc info --show-log web1` for more info",
            ),
        ],
    );
    let error = lxd
        .client()
        .change_state("web1", StateAction::Start, Duration::from_secs(5))
        .expect_err("start fails");
    assert!(
        matches!(&error, LxdError::Operation { message, .. } if message.starts_with("Failed to run: forkstart;")),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "LXD operation /1.0/operations/2e68dc22-0f5c-45c1-b05e-a28dbfc0b85f (Starting instance) \
         failed: Failed to run: forkstart; Try `lxc info --show-log web1` for more info"
    );
}

#[test]
fn an_operation_still_running_is_a_timeout() {
    // LXD 5.0.2 ends a wait that outlasts its timeout with the operation as it stands.
    let lxd = FakeLxd::serve(
        "running",
        vec![
            accepted("Starting instance"),
            waited("Starting instance", "Running", 103, ""),
        ],
    );
    let error = lxd
        .client()
        .change_state("web1", StateAction::Start, Duration::from_secs(1))
        .expect_err("still running");
    assert!(
        matches!(error, LxdError::Timeout { after, .. } if after == Duration::from_secs(11)),
        "{error:?}"
    );
}

#[test]
fn surfaces_lxd_errors_with_their_message() {
    let lxd = FakeLxd::serve(
        "error",
        vec![answer(
            "404 Not Found",
            "X-Content-Type-Options: nosniff\r\n",
            &error(404, "Instance not found"),
        )],
    );
    let error = lxd.client().instance_state("nope").expect_err("not found");
    assert!(
        matches!(&error, LxdError::Api { code: 404, message, .. } if message == "Instance not found"),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "LXD GET /1.0/instances/nope/state: error 404: Instance not found"
    );
}

#[test]
fn an_error_without_lxd_json_keeps_the_http_status() {
    let lxd = FakeLxd::serve(
        "proxy",
        vec![b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 13\r\n\r\nupstream\ndown".to_vec()],
    );
    let error = lxd.client().instances().expect_err("bad gateway");
    assert_eq!(
        error.to_string(),
        "LXD GET /1.0/instances?recursion=2: error 502: Bad Gateway upstream; down"
    );
}

#[test]
fn bad_json_names_the_endpoint() {
    let lxd = FakeLxd::serve(
        "json",
        vec![answer("200 OK", "", &sync(&json!({"not": "a list"})))],
    );
    let error = lxd.client().instances().expect_err("not a list");
    assert!(matches!(error, LxdError::Json { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .starts_with("LXD GET /1.0/instances?recursion=2: unexpected answer: invalid type"),
        "{error}"
    );
}

#[test]
fn a_connect_error_names_the_socket() {
    let dir = temp_dir("connect");
    let socket = dir.join("missing.socket");
    let error = LxdClient::new(&socket)
        .instances()
        .expect_err("nothing listens");
    assert!(matches!(error, LxdError::Connect { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!(
            "cannot connect to LXD at {}: No such file or directory (os error 2)",
            socket.display()
        )
    );
    fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn a_silent_lxd_times_out() {
    let dir = temp_dir("silent");
    let socket = dir.join("unix.socket");
    let listener = UnixListener::bind(&socket).expect("bind");
    // Accepts and reads, never answers; holds the connection until the test ends.
    let server = thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink);
    });
    let error = LxdClient::new(&socket)
        .with_timeouts(Duration::from_secs(1), Duration::from_millis(200))
        .instances()
        .expect_err("no answer");
    assert_eq!(
        error.to_string(),
        "LXD GET /1.0/instances?recursion=2: no result within 200ms"
    );
    fs::remove_dir_all(&dir).expect("clean up");
    drop(server);
}

#[test]
fn an_lxd_that_trickles_its_answer_is_cut_off_at_the_deadline() {
    let dir = temp_dir("trickle");
    let socket = dir.join("unix.socket");
    let listener = UnixListener::bind(&socket).expect("bind");
    // Answers one byte every 100 ms: each read gets a byte well within any per-read
    // timeout, and the whole answer would take minutes.
    let server = thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        let _ = read_request(&mut BufReader::new(&stream));
        let body = sync(&instances_fixture());
        for byte in answer("200 OK", "", &body) {
            if (&stream).write_all(&[byte]).is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
    });
    let started = std::time::Instant::now();
    let error = LxdClient::new(&socket)
        .with_timeouts(Duration::from_secs(1), Duration::from_millis(700))
        .instances()
        .expect_err("too slow");
    let took = started.elapsed();
    assert_eq!(
        error.to_string(),
        "LXD GET /1.0/instances?recursion=2: no result within 700ms"
    );
    assert!(took < Duration::from_secs(2), "the request took {took:?}");
    fs::remove_dir_all(&dir).expect("clean up");
    drop(server);
}

#[test]
fn a_full_backlog_times_out_the_connect() {
    use std::os::fd::AsRawFd;
    let dir = temp_dir("backlog");
    let socket = dir.join("unix.socket");
    let listener = UnixListener::bind(&socket).expect("bind");
    // SAFETY: plain system call on a listening socket this test owns. A backlog of 0 queues
    // one connection; a wedged LXD that stops accepting looks like this.
    assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
    let client = LxdClient::new(&socket)
        .with_timeouts(Duration::from_millis(100), Duration::from_millis(100));
    let mut queued = 0;
    let error = loop {
        match client.instances() {
            Err(LxdError::Connect { source, .. }) => break source,
            // Connected into the queue, then timed out waiting for an answer.
            Err(LxdError::Timeout { .. }) if queued < 4 => queued += 1,
            other => panic!("expected a connect timeout, got {other:?}"),
        }
    };
    assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
    fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn discovers_the_first_socket_that_answers() {
    let dir = temp_dir("discover");
    let missing = dir.join("missing.socket");
    // A socket file nobody listens on, as a stopped LXD leaves behind.
    let stale = dir.join("stale.socket");
    drop(UnixListener::bind(&stale).expect("bind stale"));
    let live = dir.join("live.socket");
    let _listener = UnixListener::bind(&live).expect("bind live");
    let found = LxdClient::discover([&missing, &stale, &live]).expect("found one");
    assert_eq!(found.socket(), live);
    assert_eq!(LxdClient::discover([&missing, &stale]), None);
    fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn names_are_encoded_into_one_path_segment() {
    let lxd = FakeLxd::serve(
        "segment",
        vec![answer(
            "404 Not Found",
            "",
            &error(404, "Instance not found"),
        )],
    );
    let _ = lxd.client().instance_state("../images/x y");
    assert_eq!(
        lxd.next().target,
        "/1.0/instances/%2E%2E%2Fimages%2Fx%20y/state"
    );
}

#[test]
fn sets_ipv4_on_a_nic_from_a_profile() {
    let instance = &instances_fixture()[0];
    let lxd = FakeLxd::serve(
        "ipv4",
        vec![
            answer("200 OK", "Etag: \"a878fa47a17c19cb\"\r\n", &sync(instance)),
            answer("200 OK", "", &sync(&json!({}))),
        ],
    );
    lxd.client()
        .set_ipv4("web1", "eth0", Ipv4Addr::new(10, 0, 3, 77))
        .expect("set");
    let get = lxd.next();
    assert_eq!(
        (get.method.as_str(), get.target.as_str()),
        ("GET", "/1.0/instances/web1")
    );
    let patch = lxd.next();
    assert_eq!(
        (patch.method.as_str(), patch.target.as_str()),
        ("PATCH", "/1.0/instances/web1")
    );
    assert_eq!(patch.header("if-match"), Some("\"a878fa47a17c19cb\""));
    assert_eq!(
        patch.json(),
        json!({"devices": {"eth0": {
            "name": "eth0", "network": "lxdbr0", "type": "nic", "ipv4.address": "10.0.3.77",
        }}})
    );
}

#[test]
fn set_ipv4_refuses_a_device_that_is_not_a_nic() {
    let instance = answer("200 OK", "", &sync(&instances_fixture()[0]));
    let lxd = FakeLxd::serve("nonic", vec![instance.clone(), instance]);
    let client = lxd.client();
    for device in ["root", "eth9"] {
        let error = client
            .set_ipv4("web1", device, Ipv4Addr::new(10, 0, 3, 77))
            .expect_err("not a NIC");
        // Failing before the PATCH: the next request is the next GET.
        assert!(matches!(error, LxdError::NoNic { .. }), "{error:?}");
        assert_eq!(
            error.to_string(),
            format!("LXD instance web1 has no NIC device {device}")
        );
        assert_eq!(lxd.next().method, "GET");
    }
}

#[test]
fn lists_and_deletes_images() {
    let images = json!([{
        "auto_update": false,
        "properties": {"description": "Debian bookworm amd64 (20231201_05:24)", "os": "Debian"},
        "public": false,
        "expires_at": "1970-01-01T00:00:00Z",
        "profiles": ["default"],
        "aliases": [{"name": "debian/12", "description": ""}, {"name": "web", "description": ""}],
        "architecture": "x86_64",
        "cached": false,
        "filename": "debian-12-amd64.tar.xz",
        "fingerprint": "a1f8811a70dc100ed622d5e6447b65d3f3c8ca821896095732d4ec9e875e97a6",
        "size": 1037066,
        "type": "container",
        "created_at": "2026-11-22T04:02:19Z",
        "last_used_at": "2026-11-22T04:02:19.219134407Z",
        "uploaded_at": "2026-11-22T04:02:19.148180633Z"
    }, {
        "properties": null, "aliases": null, "architecture": "x86_64", "cached": true,
        "fingerprint": "0000", "size": 10, "type": "virtual-machine",
        "uploaded_at": "2026-11-22T04:02:20Z"
    }]);
    let lxd = FakeLxd::serve(
        "images",
        vec![
            chunked(&sync(&images)),
            accepted("Deleting image"),
            waited("Deleting image", "Success", 200, ""),
        ],
    );
    let client = lxd.client();
    let images = client.images().expect("images");
    assert_eq!(lxd.next().target, "/1.0/images?recursion=1");
    assert_eq!(
        images,
        [
            Image {
                fingerprint: "a1f8811a70dc100ed622d5e6447b65d3f3c8ca821896095732d4ec9e875e97a6"
                    .into(),
                aliases: vec!["debian/12".into(), "web".into()],
                architecture: "x86_64".into(),
                description: Some("Debian bookworm amd64 (20231201_05:24)".into()),
                kind: "container".into(),
                size: 1_037_066,
                uploaded_at: "2026-11-22T04:02:19.148180633Z".into(),
                cached: false,
            },
            Image {
                fingerprint: "0000".into(),
                aliases: vec![],
                architecture: "x86_64".into(),
                description: None,
                kind: "virtual-machine".into(),
                size: 10,
                uploaded_at: "2026-11-22T04:02:20Z".into(),
                cached: true,
            },
        ]
    );
    client
        .delete_image(&images[0].fingerprint)
        .expect("deleted");
    let delete = lxd.next();
    assert_eq!(
        (
            delete.method.as_str(),
            delete.target.as_str(),
            delete.body.as_str()
        ),
        (
            "DELETE",
            "/1.0/images/a1f8811a70dc100ed622d5e6447b65d3f3c8ca821896095732d4ec9e875e97a6",
            ""
        )
    );
    assert_eq!(
        lxd.next().target,
        format!("/1.0/operations/{OPERATION_ID}/wait?timeout=5")
    );
}

#[test]
fn reads_disk_devices_pools_and_usage() {
    // Shapes as LXD 5.0 sends them: a root disk with a quota on a btrfs pool, a custom volume,
    // a host path, and a NIC that is not a disk.
    let instances = json!([{
        "name": "web1", "status": "Running", "type": "container",
        "expanded_devices": {
            "root": {"type": "disk", "path": "/", "pool": "fast", "size": "64MiB"},
            "data": {"type": "disk", "path": "/srv", "pool": "fast", "source": "web-data"},
            "logs": {"type": "disk", "path": "/var/log/host", "source": "/srv/logs"},
            "eth0": {"type": "nic", "network": "lxdbr0", "name": "eth0"},
        },
    }, {
        "name": "bare", "status": "Stopped", "type": "container", "expanded_devices": null,
    }]);
    let pools = json!([
        {"name": "fast", "driver": "btrfs", "status": "Created"},
        {"name": "default", "driver": "dir", "status": "Created"},
    ]);
    let resources = json!({
        "space": {"used": 104_857_600, "total": 536_870_912},
        "inodes": {"used": 0, "total": 0},
    });
    let state = json!({
        "status": "Running", "status_code": 103, "pid": 10, "processes": 1,
        "cpu": {"usage": 1}, "memory": null, "network": null,
        "disk": {"root": {"usage": 20_971_520}, "data": {"usage": 4096, "total": 1_000_000}},
    });
    let lxd = FakeLxd::serve(
        "disks",
        vec![
            answer("200 OK", "", &sync(&instances)),
            answer("200 OK", "", &sync(&pools)),
            answer("200 OK", "", &sync(&resources)),
            answer("200 OK", "", &sync(&state)),
        ],
    );
    let client = lxd.client();
    let disks = client.instance_disks().expect("disks");
    assert_eq!(lxd.next().target, "/1.0/instances?recursion=1");
    let [web1, bare] = disks.as_slice() else {
        panic!("two instances: {disks:?}");
    };
    assert_eq!((web1.name.as_str(), bare.name.as_str()), ("web1", "bare"));
    assert!(bare.devices.is_empty());
    let names: Vec<&str> = web1.devices.keys().map(String::as_str).collect();
    assert_eq!(names, ["data", "logs", "root"], "disks only");
    assert_eq!(
        web1.devices["root"],
        DiskDevice {
            path: "/".into(),
            pool: Some("fast".into()),
            size: Some(64 << 20),
        }
    );
    assert_eq!(web1.devices["data"].size, None);
    assert_eq!(web1.devices["logs"].pool, None);

    let pools = client.storage_pools().expect("pools");
    assert_eq!(lxd.next().target, "/1.0/storage-pools?recursion=1");
    assert_eq!(
        pools,
        [
            StoragePool {
                name: "fast".into(),
                driver: "btrfs".into()
            },
            StoragePool {
                name: "default".into(),
                driver: "dir".into()
            },
        ]
    );
    let space = client.pool_space("fast").expect("space");
    assert_eq!(lxd.next().target, "/1.0/storage-pools/fast/resources");
    assert_eq!(space.free(), 536_870_912 - 104_857_600);

    let state = client.instance_state("web1").expect("state");
    assert_eq!(
        state.disk["root"],
        DiskState {
            usage: 20_971_520,
            total: None
        }
    );
    assert_eq!(state.disk["data"].total, Some(1_000_000));
}

#[test]
fn a_state_without_disk_has_no_devices() {
    let state = json!({"status": "Stopped", "status_code": 102, "disk": null});
    let lxd = FakeLxd::serve("nodisk", vec![answer("200 OK", "", &sync(&state))]);
    assert!(lxd.client().instance_state("web1").unwrap().disk.is_empty());
}

#[test]
fn sizes_parse_as_lxd_writes_them() {
    for (text, bytes) in [
        ("0", 0),
        ("1234", 1234),
        ("10B", 10),
        ("64MiB", 64 << 20),
        ("64MB", 64_000_000),
        ("1kB", 1000),
        ("2GiB", 2 << 30),
        ("3 GB", 3_000_000_000),
        ("1EiB", 1 << 60),
    ] {
        assert_eq!(parse_byte_size(text), Ok(bytes), "{text}");
    }
    for bad in ["", "MiB", "1.5GiB", "-1", "12XB", "20EiB"] {
        assert!(parse_byte_size(bad).is_err(), "{bad}");
    }
}

#[test]
fn lists_networks_with_their_subnet() {
    let networks = json!([
        {"name": "lxdbr0", "managed": true, "type": "bridge",
         "config": {"ipv4.address": "10.177.42.1/24", "ipv4.nat": "false", "ipv6.address": "none"}},
        {"name": "eth0", "managed": false, "type": "physical", "config": {}},
        {"name": "noaddr", "managed": true, "type": "bridge", "config": {"ipv4.address": "none"}}
    ]);
    let lxd = FakeLxd::serve("networks", vec![answer("200 OK", "", &sync(&networks))]);
    let networks = lxd.client().networks().expect("networks");
    assert_eq!(lxd.next().target, "/1.0/networks?recursion=1");
    assert_eq!(
        networks,
        [
            Network {
                name: "lxdbr0".into(),
                managed: true,
                ipv4: Some((Ipv4Addr::new(10, 177, 42, 1), 24)),
            },
            Network {
                name: "eth0".into(),
                managed: false,
                ipv4: None,
            },
            Network {
                name: "noaddr".into(),
                managed: true,
                ipv4: None,
            },
        ]
    );
}
