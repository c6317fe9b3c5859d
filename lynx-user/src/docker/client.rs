//! [`DockerClient`]: requests, the engine's error answers, and state changes.
use std::{
    io::{self, BufReader},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::{Deserialize, de::DeserializeOwned};

use super::{
    Container, DockerError,
    types::{RawContainer, RawListed},
};
use crate::{
    lxd::StateAction,
    unix_http::{self, Deadline, HttpError, Response},
};

/// How long a connect may take: only a full listen backlog makes a unix socket connect wait.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one request may take in all, from sending it to the last byte of the answer.
/// A stop or restart adds the container's shutdown time to this.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A client for one Docker Engine socket. Cheap to clone; holds no connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DockerClient {
    socket: PathBuf,
    connect_timeout: Duration,
    timeout: Duration,
}

/// The engine's error body.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    message: String,
}

impl DockerClient {
    /// A client for the socket at `socket`, with the default timeouts. Nothing is checked
    /// until the first request.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Replaces the connect timeout and the total time a request may take.
    pub fn with_timeouts(self, connect: Duration, total: Duration) -> Self {
        Self {
            connect_timeout: connect,
            timeout: total,
            ..self
        }
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The total time a request may take.
    pub(super) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A new connection to the engine's socket.
    pub(super) fn connect_stream(&self) -> Result<UnixStream, DockerError> {
        unix_http::connect(&self.socket, self.connect_timeout).map_err(|source| {
            DockerError::Connect {
                socket: self.socket.clone(),
                source,
            }
        })
    }

    /// Every container, running or not, as `docker inspect` describes it. One that is removed
    /// while they are read is left out.
    pub fn containers(&self) -> Result<Vec<Container>, DockerError> {
        let listed: Vec<RawListed> = self.get("/containers/json?all=1")?;
        let mut containers = Vec::with_capacity(listed.len());
        for entry in listed {
            if let Some(container) = self.inspect(&entry.id)? {
                containers.push(container);
            }
        }
        Ok(containers)
    }

    /// The container with this name or id (or unique id prefix); `None` when there is none.
    pub fn inspect(&self, reference: &str) -> Result<Option<Container>, DockerError> {
        let target = format!("/containers/{}/json", segment(reference));
        match self.get::<RawContainer>(&target) {
            Ok(raw) => Ok(Some(raw.into())),
            Err(DockerError::Api { code: 404, .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Applies `action` to the container `reference` names, and returns when the engine has
    /// done it. A clean stop or restart gives the container `timeout` (whole seconds, rounded
    /// up) to exit before the engine kills it; `force` kills it at once. Freeze and unfreeze
    /// are Docker's pause and unpause. Starting a running container, or stopping a stopped
    /// one, is not an error (the engine answers 304).
    pub fn change_state(
        &self,
        reference: &str,
        action: StateAction,
        timeout: Duration,
    ) -> Result<(), DockerError> {
        let seconds = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
        let id = segment(reference);
        let (target, wait) = match action {
            StateAction::Start => (format!("/containers/{id}/start"), Duration::ZERO),
            StateAction::Stop { force } | StateAction::Restart { force } => {
                let verb = match action {
                    StateAction::Restart { .. } => "restart",
                    _ => "stop",
                };
                // `t=0` kills at once, as `docker stop -t 0` does.
                let seconds = if force { 0 } else { seconds };
                (
                    format!("/containers/{id}/{verb}?t={seconds}"),
                    Duration::from_secs(seconds),
                )
            }
            StateAction::Freeze => (format!("/containers/{id}/pause"), Duration::ZERO),
            StateAction::Unfreeze => (format!("/containers/{id}/unpause"), Duration::ZERO),
        };
        self.call("POST", &target, wait).map(drop)
    }

    fn get<T: DeserializeOwned>(&self, target: &str) -> Result<T, DockerError> {
        let response = self.call("GET", target, Duration::ZERO)?;
        serde_json::from_slice(&response.body).map_err(|source| DockerError::Json {
            endpoint: format!("GET {target}"),
            source,
        })
    }

    /// One request; error statuses become [`DockerError::Api`] with the engine's message.
    /// `extra` lengthens the deadline, for a stop that waits for the container.
    fn call(&self, method: &str, target: &str, extra: Duration) -> Result<Response, DockerError> {
        let response = self.exchange(method, target, extra)?;
        if response.status < 400 {
            return Ok(response);
        }
        let message = match serde_json::from_slice::<ErrorBody>(&response.body) {
            Ok(body) => body.message,
            // Not the engine's JSON, as from a proxy in between: enough to recognise it.
            Err(_) => format!(
                "{} {}",
                response.reason,
                String::from_utf8_lossy(&response.body[..response.body.len().min(200)])
            ),
        };
        Err(DockerError::Api {
            endpoint: format!("{method} {target}"),
            code: response.status,
            message: message.trim().to_owned(),
        })
    }

    fn exchange(
        &self,
        method: &str,
        target: &str,
        extra: Duration,
    ) -> Result<Response, DockerError> {
        let endpoint = || format!("{method} {target}");
        let stream = self.connect_stream()?;
        let timeout = self.timeout + extra;
        let io_error = |source: io::Error| self.io_error(endpoint(), timeout, source);
        let mut deadline = Deadline {
            stream: &stream,
            at: Instant::now() + timeout,
        };
        unix_http::write_request(&mut deadline, "docker", method, target, &[], None)
            .map_err(io_error)?;
        let response = unix_http::read_response(&mut BufReader::new(deadline), method);
        tracing::trace!(endpoint = %endpoint(), status = ?response.as_ref().map(|r| r.status).ok(), "Docker");
        response.map_err(|error| self.http_error(endpoint(), timeout, error))
    }

    pub(super) fn io_error(
        &self,
        endpoint: String,
        after: Duration,
        source: io::Error,
    ) -> DockerError {
        match source.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                DockerError::Timeout { endpoint, after }
            }
            _ => DockerError::Io {
                socket: self.socket.clone(),
                endpoint,
                source,
            },
        }
    }

    pub(super) fn http_error(
        &self,
        endpoint: String,
        after: Duration,
        error: HttpError,
    ) -> DockerError {
        match error {
            HttpError::Io(source) => self.io_error(endpoint, after, source),
            source => DockerError::Http {
                socket: self.socket.clone(),
                endpoint,
                source,
            },
        }
    }
}

/// Percent-encodes a name or id for one path segment, so that no reference can reach another
/// endpoint (a `.` too, so that `..` is no path step). Ids pass through unchanged.
fn segment(reference: &str) -> String {
    reference
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
