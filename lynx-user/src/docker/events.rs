//! The engine's event stream, `GET /events` filtered to containers: an endless chunked
//! response with one JSON object per line. Lynx reads it to refresh a container the moment it
//! starts, pauses, dies or goes, rather than at the next full read.
use std::{io::BufReader, os::unix::net::UnixStream, time::Duration};

use serde::Deserialize;

use super::{DockerClient, DockerError};
use crate::unix_http::{self, ChunkedLines, HttpError, Line};

/// `filters={"type":["container"]}`, percent-encoded.
const CONTAINER_EVENTS: &str = "/events?filters=%7B%22type%22%3A%5B%22container%22%5D%7D";

/// What an event means for the view of the containers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// The container is gone (`destroy`).
    Removed,
    /// Its state, name or settings may have changed: read it again.
    Changed,
    /// Nothing Lynx shows changed (`exec_*`, `attach`, `top`, health checks, ...).
    Unchanged,
}

impl Change {
    fn of(action: &str) -> Self {
        // Actions with details carry them after a colon (`exec_start: sh -c ...`).
        match action.split(':').next().unwrap_or_default() {
            "destroy" => Self::Removed,
            "create" | "start" | "restart" | "die" | "stop" | "kill" | "oom" | "pause"
            | "unpause" | "rename" | "update" => Self::Changed,
            _ => Self::Unchanged,
        }
    }
}

/// One container event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The container's full id.
    pub id: String,
    /// The engine's word for what happened (`start`, `pause`, `destroy`, ...).
    pub action: String,
    pub change: Change,
}

#[derive(Debug, Deserialize)]
struct RawEvent {
    #[serde(rename = "Type", default)]
    kind: String,
    #[serde(rename = "Action", default)]
    action: String,
    #[serde(rename = "Actor", default)]
    actor: RawActor,
}

#[derive(Debug, Default, Deserialize)]
struct RawActor {
    #[serde(rename = "ID", default)]
    id: String,
}

/// What waiting for the next event gave.
pub type Next = crate::unix_http::Next<Event>;

/// An open event stream.
pub struct EventStream {
    lines: ChunkedLines<UnixStream>,
    client: DockerClient,
}

impl DockerClient {
    /// Subscribes to container events from now on. Each [`EventStream::recv`] waits at most
    /// `poll`, so that the caller can look up between events.
    pub fn events(&self, poll: Duration) -> Result<EventStream, DockerError> {
        let endpoint = || format!("GET {CONTAINER_EVENTS}");
        let stream = self.connect_stream()?;
        let timeout = self.timeout();
        let io_error = |source| self.io_error(endpoint(), timeout, source);
        // The engine sends the head at once; a slow one is a failure, not idleness.
        stream.set_read_timeout(Some(timeout)).map_err(io_error)?;
        stream.set_write_timeout(Some(timeout)).map_err(io_error)?;
        unix_http::write_request(&mut &stream, "docker", "GET", CONTAINER_EVENTS, &[], None)
            .map_err(io_error)?;
        let mut reader = BufReader::new(stream);
        let head = unix_http::read_head(&mut reader)
            .map_err(|error| self.http_error(endpoint(), timeout, error))?;
        if head.status != 200 {
            return Err(DockerError::Api {
                endpoint: endpoint(),
                code: head.status,
                message: head.reason,
            });
        }
        if !head.is_chunked() {
            return Err(DockerError::Http {
                socket: self.socket().to_owned(),
                endpoint: endpoint(),
                source: HttpError::Malformed {
                    what: "event stream",
                    line: "not chunked".into(),
                },
            });
        }
        let buffered = reader.buffer().to_vec();
        let stream = reader.into_inner();
        stream.set_read_timeout(Some(poll)).map_err(io_error)?;
        Ok(EventStream {
            lines: ChunkedLines::new(stream, buffered),
            client: self.clone(),
        })
    }
}

impl EventStream {
    /// The next container event, [`Next::Idle`] after the poll time without one, or
    /// [`Next::Closed`]. Events of other types, should the filter let one through, are
    /// skipped.
    pub fn recv(&mut self) -> Result<Next, DockerError> {
        loop {
            let line = self.lines.next_line().map_err(|error| {
                self.client
                    .http_error(format!("GET {CONTAINER_EVENTS}"), Duration::ZERO, error)
            })?;
            let message = match line {
                Line::Message(message) => message,
                Line::Idle => return Ok(Next::Idle),
                Line::End => return Ok(Next::Closed),
            };
            let raw: RawEvent =
                serde_json::from_slice(&message).map_err(|source| DockerError::Json {
                    endpoint: format!("GET {CONTAINER_EVENTS}"),
                    source,
                })?;
            if raw.kind != "container" || raw.actor.id.is_empty() {
                continue;
            }
            return Ok(Next::Event(Event {
                change: Change::of(&raw.action),
                id: raw.actor.id,
                action: raw.action,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_are_classified() {
        for (action, change) in [
            ("destroy", Change::Removed),
            ("pause", Change::Changed),
            ("die", Change::Changed),
            ("rename", Change::Changed),
            ("exec_start: sh -c true", Change::Unchanged),
            ("health_status: healthy", Change::Unchanged),
            ("attach", Change::Unchanged),
        ] {
            assert_eq!(Change::of(action), change, "{action}");
        }
    }
}
