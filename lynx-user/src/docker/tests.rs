//! The client against a fake engine: a thread on a `UnixListener` that answers each
//! connection with the next canned response and reports the request line it got. The JSON is
//! shaped like Docker 20.10's (captured from one, ids shortened where they do not matter).
use std::{
    io::{BufRead, BufReader, Write},
    net::Ipv4Addr,
    os::unix::net::UnixListener,
    sync::mpsc::{self, Receiver},
    thread,
    time::Duration,
};

use super::{
    events::{Change, Next},
    *,
};
use crate::{lxd::StateAction, test_support::TempDir};

const ID: &str = "530b8ee64a5f369f8345d88baa6cda59be1e0c411b891b32862859f11d7bb005";

/// `GET /containers/ID/json` of a running container with no network, trimmed to the parts
/// read and a few beside them.
fn inspected(id: &str, status: &str, pid: u32) -> String {
    format!(
        r#"{{"Id":"{id}","Created":"2026-12-07T15:15:50.114496086Z","Path":"sh","Args":["-c","while :; do sleep 1; done"],
        "State":{{"Status":"{status}","Running":true,"Paused":false,"Pid":{pid},"ExitCode":0,"Error":"",
        "StartedAt":"2026-12-07T15:15:50.646246142Z","FinishedAt":"0001-01-01T00:00:00Z"}},
        "Image":"sha256:5c7a54744d46","Name":"/dk1","RestartCount":0,"Driver":"overlay2",
        "Config":{{"Hostname":"530b8ee64a5f","Image":"lynx-busybox:test","Labels":{{"a":"b"}},"Cmd":["sh"]}},
        "NetworkSettings":{{"Networks":{{"none":{{"IPAddress":"","GlobalIPv6Address":""}},
        "web":{{"IPAddress":"172.18.0.2","GlobalIPv6Address":""}}}}}}}}"#
    )
}

fn answer(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nApi-Version: 1.41\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

struct FakeEngine {
    dir: TempDir,
    seen: Receiver<String>,
}

impl FakeEngine {
    /// Serves `answers`, one connection each, in order.
    fn serve(test: &str, answers: Vec<Vec<u8>>) -> Self {
        let dir = TempDir::new(&format!("docker-{test}"));
        let listener = UnixListener::bind(dir.path().join("docker.sock")).expect("bind");
        let (tell, seen) = mpsc::channel();
        thread::spawn(move || {
            for answer in answers {
                let (stream, _) = listener.accept().expect("accept");
                let mut reader = BufReader::new(&stream);
                let mut line = String::new();
                reader.read_line(&mut line).expect("request line");
                let mut header = String::new();
                while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
                    header.clear();
                }
                let _ = tell.send(line.trim_end().to_owned());
                (&stream).write_all(&answer).expect("answer");
                // Held open for a stream's sake until the client goes.
                let _ = std::io::copy(&mut reader, &mut std::io::sink());
            }
        });
        Self { dir, seen }
    }

    fn client(&self) -> DockerClient {
        DockerClient::new(self.dir.path().join("docker.sock"))
            .with_timeouts(Duration::from_secs(2), Duration::from_secs(5))
    }

    fn next(&self) -> String {
        self.seen
            .recv_timeout(Duration::from_secs(5))
            .expect("the client sent a request")
    }
}

#[test]
fn containers_are_listed_then_inspected_one_by_one() {
    let list = format!(r#"[{{"Id":"{ID}","Names":["/dk1"]}},{{"Id":"gone","Names":["/x"]}}]"#);
    let engine = FakeEngine::serve(
        "list",
        vec![
            answer("200 OK", &list),
            answer("200 OK", &inspected(ID, "running", 25669)),
            answer("404 Not Found", r#"{"message":"No such container: gone"}"#),
        ],
    );
    let containers = engine.client().containers().expect("listed");
    assert_eq!(engine.next(), "GET /containers/json?all=1 HTTP/1.1");
    assert_eq!(engine.next(), format!("GET /containers/{ID}/json HTTP/1.1"));
    assert_eq!(engine.next(), "GET /containers/gone/json HTTP/1.1");
    let [c] = containers.as_slice() else {
        panic!("one container, the removed one left out: {containers:?}");
    };
    assert_eq!((c.id.as_str(), c.name.as_str()), (ID, "dk1"));
    assert_eq!(c.image, "lynx-busybox:test");
    assert_eq!(c.image_id, "sha256:5c7a54744d46");
    assert_eq!(c.state, ContainerState::Running);
    assert_eq!(c.pid, Some(25669));
    assert_eq!(c.command, ["sh", "-c", "while :; do sleep 1; done"]);
    assert_eq!(c.created_at.unix_timestamp(), 1_796_656_550);
    assert_eq!(c.started_at.map(|t| t.nanosecond()), Some(646_246_142));
    assert_eq!(c.labels.get("a").map(String::as_str), Some("b"));
    assert_eq!(
        c.ipv4().collect::<Vec<_>>(),
        [Ipv4Addr::new(172, 18, 0, 2)],
        "the `none` network has no address"
    );
    assert!(c.is_named("dk1") && c.is_named("/dk1") && c.is_named("530b8e"));
    assert!(!c.is_named("dk") && !c.is_named(""));
}

#[test]
fn a_never_started_container_has_no_start_time_or_pid() {
    let created = inspected(ID, "created", 0)
        .replace("2026-12-07T15:15:50.646246142Z", "0001-01-01T00:00:00Z");
    let engine = FakeEngine::serve("created", vec![answer("200 OK", &created)]);
    let c = engine
        .client()
        .inspect("dk1")
        .expect("read")
        .expect("there");
    assert_eq!(
        (c.state, c.pid, c.started_at),
        (ContainerState::Created, None, None)
    );
}

#[test]
fn actions_reach_their_endpoints_and_refusals_carry_the_engines_message() {
    let engine = FakeEngine::serve(
        "actions",
        vec![
            answer("204 No Content", ""),
            answer("304 Not Modified", ""),
            answer("204 No Content", ""),
            answer("204 No Content", ""),
            answer("204 No Content", ""),
            answer(
                "409 Conflict",
                r#"{"message":"Container dk1 is not paused"}"#,
            ),
        ],
    );
    let client = engine.client();
    let second = Duration::from_secs(1);
    let actions = [
        StateAction::Start,
        StateAction::Start,
        StateAction::Stop { force: false },
        StateAction::Restart { force: true },
        StateAction::Freeze,
    ];
    for action in actions {
        client
            .change_state("dk1", action, second + Duration::from_millis(1))
            .expect("done");
    }
    let error = client
        .change_state("dk1", StateAction::Unfreeze, second)
        .unwrap_err();
    let requests: Vec<String> = (0..6).map(|_| engine.next()).collect();
    assert_eq!(
        requests,
        [
            "POST /containers/dk1/start HTTP/1.1",
            "POST /containers/dk1/start HTTP/1.1",
            "POST /containers/dk1/stop?t=2 HTTP/1.1",
            "POST /containers/dk1/restart?t=0 HTTP/1.1",
            "POST /containers/dk1/pause HTTP/1.1",
            "POST /containers/dk1/unpause HTTP/1.1",
        ]
    );
    assert_eq!(
        error.to_string(),
        "Docker POST /containers/dk1/unpause: error 409: Container dk1 is not paused"
    );
    assert!(!error.is_unreachable());
}

#[test]
fn a_reference_cannot_reach_another_endpoint() {
    let engine = FakeEngine::serve(
        "segment",
        vec![answer(
            "404 Not Found",
            r#"{"message":"No such container"}"#,
        )],
    );
    assert_eq!(engine.client().inspect("../../info?x").expect("404"), None);
    assert_eq!(
        engine.next(),
        "GET /containers/%2E%2E%2F%2E%2E%2Finfo%3Fx/json HTTP/1.1"
    );
}

#[test]
fn events_arrive_as_they_come_and_a_closed_stream_ends() {
    let event = |action: &str| {
        format!(
            r#"{{"status":"{action}","id":"{ID}","Type":"container","Action":"{action}","Actor":{{"ID":"{ID}","Attributes":{{"name":"dk1"}}}},"scope":"local","time":1796656551,"timeNano":1796656551000000000}}"#
        )
    };
    let mut stream =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for line in [event("pause"), event("exec_start: sh"), event("destroy")] {
        let line = line + "\n";
        stream.extend(format!("{:x}\r\n{line}\r\n", line.len()).into_bytes());
    }
    stream.extend(b"0\r\n\r\n");
    let engine = FakeEngine::serve("events", vec![stream]);
    let mut events = engine
        .client()
        .events(Duration::from_millis(100))
        .expect("subscribed");
    assert!(
        engine
            .next()
            .starts_with("GET /events?filters=%7B%22type%22%3A%5B%22container%22%5D%7D ")
    );
    let mut changes = Vec::new();
    loop {
        match events.recv().expect("an event") {
            Next::Event(event) => {
                assert_eq!(event.id, ID);
                changes.push(event.change);
            }
            Next::Idle => {}
            Next::Closed => break,
        }
    }
    assert_eq!(
        changes,
        [Change::Changed, Change::Unchanged, Change::Removed]
    );
}

#[test]
fn an_absent_engine_is_unreachable() {
    let dir = TempDir::new("docker-absent");
    let error = DockerClient::new(dir.path().join("docker.sock"))
        .containers()
        .unwrap_err();
    assert!(error.is_unreachable(), "{error}");
}
