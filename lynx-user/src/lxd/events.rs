//! LXD's event stream: `GET /1.0/events` upgraded to a websocket on the unix socket, as
//! `lxc monitor` does. Lynx listens to lifecycle events (an instance started, stopped,
//! frozen...) to refresh its view of the instances at once rather than at the next poll.
//!
//! The websocket part is the little a client needs: server frames are read (fragments joined,
//! pings answered, close honoured); nothing is sent but pongs and a close.
use std::{
    io::{self, BufRead, BufReader, Read, Write},
    os::unix::net::UnixStream,
    time::{Duration, Instant},
};

use serde::Deserialize;

use super::{LxdClient, LxdError};

/// Any 16 bytes, base64: the key only makes the server prove it speaks websocket.
const HANDSHAKE_KEY: &str = "bHlueC1ldmVudHMtMDAwMQ==";
/// A message larger than this is not an LXD event: the stream is given up.
const MAX_MESSAGE: usize = 1 << 20;
/// How long a message may take to arrive whole once its first byte came: LXD writes each
/// event at once, and a peer trickling one must not hold the reader (nor a daemon told to
/// stop, whose listener looks at its stop flag between reads).
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(2);

/// One event, as much of it as Lynx uses.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Event {
    /// `lifecycle`, `logging` or `operation`.
    #[serde(rename = "type")]
    pub kind: String,
    pub timestamp: String,
    #[serde(default)]
    pub metadata: EventMetadata,
}

/// A lifecycle or operation event's details.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct EventMetadata {
    /// `instance-started`, `instance-stopped`, `instance-paused`, ...
    #[serde(default)]
    pub action: String,
    /// The entity it is about, as `/1.0/instances/web1`.
    #[serde(default)]
    pub source: String,
    /// An operation's description, as `Stopping instance`.
    #[serde(default)]
    pub description: String,
    /// An operation's status: `Pending`, `Running`, `Success`, `Failure`, `Cancelled`.
    #[serde(default)]
    pub status: String,
    /// What an operation is about, by kind: `{"instances": ["/1.0/instances/web1"]}`.
    #[serde(default)]
    pub resources: Option<std::collections::BTreeMap<String, Vec<String>>>,
}

/// What waiting for the next event gave.
pub type Next = crate::unix_http::Next<Event>;

/// An open event stream.
pub struct EventStream {
    reader: BufReader<UnixStream>,
    endpoint: String,
    /// How long [`EventStream::recv`] waits for a message to begin.
    poll: Duration,
}

impl LxdClient {
    /// Subscribes to events of `types` (comma-separated: `lifecycle`, `operation`, ...).
    /// Each [`EventStream::recv`] waits at most `poll` so that the caller can check whether to
    /// stop.
    pub fn events(&self, types: &str, poll: Duration) -> Result<EventStream, LxdError> {
        let endpoint = format!("GET /1.0/events?type={types}");
        let stream = self.connect_stream()?;
        let io_error = |source| LxdError::Io {
            socket: self.socket().to_owned(),
            endpoint: endpoint.clone(),
            source,
        };
        stream.set_read_timeout(Some(poll)).map_err(io_error)?;
        let mut writer = stream.try_clone().map_err(io_error)?;
        write!(
            writer,
            "GET /1.0/events?type={types} HTTP/1.1\r\nHost: lxd\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {HANDSHAKE_KEY}\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        )
        .map_err(io_error)?;
        let mut reader = BufReader::new(stream);
        let mut status = String::new();
        // The upgrade answer comes at once; a slow one counts as a failure, not as idle.
        reader.read_line(&mut status).map_err(io_error)?;
        if status.split_whitespace().nth(1) != Some("101") {
            return Err(LxdError::Api {
                endpoint,
                code: status
                    .split_whitespace()
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0),
                message: format!("no websocket upgrade: {}", status.trim()),
            });
        }
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).map_err(io_error)? == 0 || header.trim().is_empty() {
                break;
            }
        }
        Ok(EventStream {
            reader,
            endpoint,
            poll,
        })
    }
}

impl EventStream {
    /// A stream over a socket past the websocket upgrade; for the fuzzer.
    #[cfg(fuzzing)]
    pub fn over(stream: UnixStream, poll: Duration) -> Self {
        let _ = stream.set_read_timeout(Some(poll));
        Self {
            reader: BufReader::new(stream),
            endpoint: "GET /1.0/events".into(),
            poll,
        }
    }

    /// The next event, [`Next::Idle`] after the poll time without one, or [`Next::Closed`].
    pub fn recv(&mut self) -> Result<Next, LxdError> {
        let result = self.next_message();
        // What a message in progress shortened is the poll again for the next call.
        let restored = self.reader.get_ref().set_read_timeout(Some(self.poll));
        match (result, restored) {
            (Ok(next), Err(error)) if next != Next::Closed => Err(self.error(error)),
            (result, _) => result,
        }
    }

    fn next_message(&mut self) -> Result<Next, LxdError> {
        let mut message = Vec::new();
        // Set by the first byte of a message: the rest of it must come by then.
        let mut deadline = None;
        loop {
            let frame = match self.read_frame(&mut deadline) {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(Next::Closed),
                // Only a timeout before a message begins is idleness; inside one it is a fault.
                Err(error)
                    if deadline.is_none()
                        && matches!(
                            error.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                {
                    return Ok(Next::Idle);
                }
                Err(error) => return Err(self.error(error)),
            };
            match frame.opcode {
                OPCODE_CLOSE => return Ok(Next::Closed),
                OPCODE_PING | OPCODE_PONG => {
                    if frame.opcode == OPCODE_PING {
                        self.send(OPCODE_PONG, &frame.payload)
                            .map_err(|e| self.error(e))?;
                    }
                    // A control frame between messages begins none: what follows may be a
                    // while coming.
                    if message.is_empty() {
                        deadline = None;
                        self.reader
                            .get_ref()
                            .set_read_timeout(Some(self.poll))
                            .map_err(|e| self.error(e))?;
                    }
                    continue;
                }
                _ => {}
            }
            message.extend_from_slice(&frame.payload);
            if message.len() > MAX_MESSAGE {
                return Err(self.error(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "message too large",
                )));
            }
            if frame.fin {
                return serde_json::from_slice(&message)
                    .map(Next::Event)
                    .map_err(|source| LxdError::Json {
                        endpoint: self.endpoint.clone(),
                        source,
                    });
            }
        }
    }

    /// The next frame, `None` at the end of the stream. Its first byte is waited for up to the
    /// poll time (or the message's `deadline`, once one began); the rest by the deadline.
    fn read_frame(&mut self, deadline: &mut Option<Instant>) -> io::Result<Option<Frame>> {
        let mut head = [0u8; 2];
        if let Some(at) = *deadline {
            self.set_timeout_until(at)?;
        }
        match self.reader.read(&mut head[..1])? {
            0 => return Ok(None),
            _ => {
                let at = *deadline.get_or_insert_with(|| Instant::now() + MESSAGE_TIMEOUT);
                self.read_exact_by(&mut head[1..], at)?;
            }
        }
        let at = deadline.expect("set by the first byte");
        let (fin, opcode) = (head[0] & 0x80 != 0, head[0] & 0x0f);
        let masked = head[1] & 0x80 != 0;
        let length = match head[1] & 0x7f {
            126 => {
                let mut bytes = [0u8; 2];
                self.read_exact_by(&mut bytes, at)?;
                usize::from(u16::from_be_bytes(bytes))
            }
            127 => {
                let mut bytes = [0u8; 8];
                self.read_exact_by(&mut bytes, at)?;
                usize::try_from(u64::from_be_bytes(bytes)).unwrap_or(usize::MAX)
            }
            short => usize::from(short),
        };
        if length > MAX_MESSAGE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "frame too large",
            ));
        }
        let mut mask = [0u8; 4];
        if masked {
            self.read_exact_by(&mut mask, at)?;
        }
        let mut payload = vec![0u8; length];
        self.read_exact_by(&mut payload, at)?;
        if masked {
            payload
                .iter_mut()
                .zip(mask.iter().cycle())
                .for_each(|(b, m)| *b ^= m);
        }
        Ok(Some(Frame {
            fin,
            opcode,
            payload,
        }))
    }

    /// Fills `buf` by `deadline`, whatever pace the bytes come at.
    fn read_exact_by(&mut self, buf: &mut [u8], deadline: Instant) -> io::Result<()> {
        let mut filled = 0;
        while filled < buf.len() {
            self.set_timeout_until(deadline)?;
            match self.reader.read(&mut buf[filled..]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => filled += n,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    fn set_timeout_until(&self, deadline: Instant) -> io::Result<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("a message took longer than {MESSAGE_TIMEOUT:?} to arrive"),
            ));
        }
        self.reader.get_ref().set_read_timeout(Some(left))
    }

    /// A client frame: always masked, as the protocol requires of clients.
    fn send(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let mask = [0x6c, 0x79, 0x6e, 0x78];
        let mut frame = vec![0x80 | opcode];
        match payload.len() {
            short @ 0..126 => frame.push(0x80 | short as u8),
            medium @ 126..=0xffff => {
                frame.push(0x80 | 126);
                frame.extend((medium as u16).to_be_bytes());
            }
            long => {
                frame.push(0x80 | 127);
                frame.extend((long as u64).to_be_bytes());
            }
        }
        frame.extend(mask);
        frame.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
        self.reader.get_mut().write_all(&frame)
    }

    fn error(&self, source: io::Error) -> LxdError {
        LxdError::Io {
            socket: self
                .reader
                .get_ref()
                .peer_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(ToOwned::to_owned))
                .unwrap_or_default(),
            endpoint: self.endpoint.clone(),
            source,
        }
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        let _ = self.send(OPCODE_CLOSE, &[]);
    }
}

const OPCODE_PING: u8 = 0x9;
const OPCODE_PONG: u8 = 0xa;
const OPCODE_CLOSE: u8 = 0x8;

struct Frame {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use std::{os::unix::net::UnixListener, thread};

    use super::*;

    /// A server frame (unmasked).
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            short @ 0..126 => out.push(short as u8),
            medium => {
                out.push(126);
                out.extend((medium as u16).to_be_bytes());
            }
        }
        out.extend(payload);
        out
    }

    /// A fake LXD on a socket of its own: accepts one connection, reads the request head and
    /// hands the stream, its reader and the head to `serve`. Returns the directory (to remove)
    /// holding the socket, the socket, and the server thread.
    fn fake_lxd(
        name: &str,
        serve: impl FnOnce(UnixStream, BufReader<UnixStream>, String) + Send + 'static,
    ) -> (
        std::path::PathBuf,
        std::path::PathBuf,
        thread::JoinHandle<()>,
    ) {
        let dir = std::env::temp_dir().join(format!("lynx-events-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("test dir");
        let socket = dir.join("lxd.socket");
        let listener = UnixListener::bind(&socket).expect("listen");
        let server = thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let mut request = BufReader::new(stream.try_clone().expect("clone"));
            let mut head = String::new();
            while !head.ends_with("\r\n\r\n") {
                request.read_line(&mut head).expect("request head");
            }
            serve(stream, request, head);
        });
        (dir, socket, server)
    }

    const STARTED: &str = r#"{"type":"lifecycle","timestamp":"2026-11-22T05:00:00Z","metadata":{"action":"instance-started","source":"/1.0/instances/web1","context":{}},"project":"default"}"#;

    #[test]
    fn events_arrive_pings_are_answered_and_close_ends_the_stream() {
        let (dir, socket, server) = fake_lxd("stream", |mut stream, mut request, head| {
            assert!(
                head.starts_with("GET /1.0/events?type=lifecycle HTTP/1.1\r\n"),
                "{head}"
            );
            assert!(head.contains("Upgrade: websocket\r\n"), "{head}");
            stream
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
                .expect("upgrade");
            stream
                .write_all(&frame(true, 0x1, STARTED.as_bytes()))
                .expect("event");
            stream
                .write_all(&frame(true, OPCODE_PING, b"hi"))
                .expect("ping");
            let (first, second) = STARTED.split_at(40);
            stream
                .write_all(&frame(false, 0x1, first.as_bytes()))
                .expect("fragment");
            stream
                .write_all(&frame(true, 0x0, second.as_bytes()))
                .expect("continuation");
            // The pong comes back masked.
            let mut pong = [0u8; 8];
            request.read_exact(&mut pong).expect("pong");
            assert_eq!(pong[0], 0x80 | OPCODE_PONG);
            assert_eq!(pong[1], 0x80 | 2);
            let unmasked: Vec<u8> = pong[6..]
                .iter()
                .zip(&pong[2..6])
                .map(|(b, m)| b ^ m)
                .collect();
            assert_eq!(unmasked, b"hi");
            thread::sleep(Duration::from_millis(150));
            stream
                .write_all(&frame(true, OPCODE_CLOSE, &[]))
                .expect("close");
        });

        let client = LxdClient::new(&socket);
        let mut events = client
            .events("lifecycle", Duration::from_millis(100))
            .expect("subscribe");
        let expected = Event {
            kind: "lifecycle".into(),
            timestamp: "2026-11-22T05:00:00Z".into(),
            metadata: EventMetadata {
                action: "instance-started".into(),
                source: "/1.0/instances/web1".into(),
                ..EventMetadata::default()
            },
        };
        assert_eq!(events.recv().expect("first"), Next::Event(expected.clone()));
        assert_eq!(
            events.recv().expect("fragmented, after a ping"),
            Next::Event(expected)
        );
        assert_eq!(events.recv().expect("quiet"), Next::Idle);
        let mut next = events.recv().expect("then");
        while next == Next::Idle {
            next = events.recv().expect("then");
        }
        assert_eq!(next, Next::Closed);
        server.join().expect("server thread");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn a_ping_between_events_leaves_the_stream_idle_not_waiting_for_a_message() {
        let (dir, socket, server) = fake_lxd("ping-idle", |mut stream, _, _| {
            stream
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
                .expect("upgrade");
            stream
                .write_all(&frame(true, OPCODE_PING, b"hi"))
                .expect("ping");
            thread::sleep(Duration::from_millis(500));
            stream
                .write_all(&frame(true, 0x1, STARTED.as_bytes()))
                .expect("event");
            thread::sleep(Duration::from_millis(100));
        });
        let mut events = LxdClient::new(&socket)
            .events("lifecycle", Duration::from_millis(100))
            .expect("subscribe");
        let started = std::time::Instant::now();
        assert_eq!(events.recv().expect("after the ping"), Next::Idle);
        assert!(
            started.elapsed() < Duration::from_millis(400),
            "waited {:?} after a ping",
            started.elapsed()
        );
        let mut next = events.recv().expect("then");
        while next == Next::Idle {
            next = events.recv().expect("then");
        }
        assert!(matches!(next, Next::Event(_)), "{next:?}");
        server.join().expect("server thread");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn a_refused_upgrade_is_an_error_with_the_status() {
        let (dir, socket, server) = fake_lxd("refused", |mut stream, _, _| {
            stream
                .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                .expect("answer");
        });
        let error = LxdClient::new(&socket)
            .events("lifecycle", Duration::from_millis(100))
            .err()
            .expect("refused");
        assert!(
            error
                .to_string()
                .contains("no websocket upgrade: HTTP/1.1 403 Forbidden"),
            "{error}"
        );
        server.join().expect("server thread");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
