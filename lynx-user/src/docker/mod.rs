//! The Docker Engine API over its unix socket, without the `docker` CLI.
//!
//! [`DockerClient`] speaks blocking HTTP/1.1 ([`crate::unix_http`], the framing LXD's client
//! uses) on one new connection per request, each under one total deadline. Paths carry no
//! API version, which the engine reads as its own current one: the fields used here are in
//! every version since 1.24, and Podman's Docker-compatible socket serves them too.
//!
//! - [`DockerClient::containers`] lists every container, running or not, with what
//!   `GET /containers/ID/json` says of each: name, image, state, main PID, command line,
//!   created and started times, labels, and addresses per network.
//! - [`DockerClient::inspect`] reads one container; [`DockerClient::change_state`] starts,
//!   stops, restarts, pauses or unpauses one (`POST /containers/ID/ACTION`).
//! - [`DockerClient::events`] follows `GET /events` (container events only), an endless
//!   chunked response of one JSON object per line.
//!
//! The engine answers failures with `{"message": "..."}` and an HTTP status;
//! [`DockerError::Api`] carries both, so the engine's own words reach the operator.
mod client;
pub mod events;
#[cfg(test)]
mod tests;
mod types;

use std::{io, path::PathBuf, time::Duration};

pub use client::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_TIMEOUT, DockerClient};
pub use types::{Container, ContainerState, NetworkAddresses};

use crate::unix_http::HttpError;

/// Docker's own socket.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// Podman's Docker-compatible socket (rootful), used when Docker's is absent and the socket
/// was not configured.
pub const PODMAN_SOCKET: &str = "/run/podman/podman.sock";

/// Errors of talking to the Docker Engine. `endpoint` is the request, as
/// `GET /containers/json?all=1`.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot connect to Docker at {}: {source}", socket.display())]
    Connect { socket: PathBuf, source: io::Error },
    #[error("Docker at {}: {endpoint}: {source}", socket.display())]
    Io {
        socket: PathBuf,
        endpoint: String,
        source: io::Error,
    },
    #[error("Docker at {}: {endpoint}: bad HTTP answer: {source}", socket.display())]
    Http {
        socket: PathBuf,
        endpoint: String,
        source: HttpError,
    },
    /// The engine refused the request: its HTTP status and its message.
    #[error("Docker {endpoint}: error {code}: {message}")]
    Api {
        endpoint: String,
        code: u16,
        message: String,
    },
    #[error("Docker {endpoint}: unexpected answer: {source}")]
    Json {
        endpoint: String,
        source: serde_json::Error,
    },
    #[error("Docker {endpoint}: no answer within {after:?}")]
    Timeout { endpoint: String, after: Duration },
}

impl DockerError {
    /// True when the engine could not be reached at all (as opposed to refusing a request).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Connect { .. })
    }
}
