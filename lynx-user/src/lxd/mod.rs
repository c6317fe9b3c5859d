//! LXD's REST API over its unix socket, without the `lxc` CLI.
//!
//! [`LxdClient`] speaks blocking HTTP/1.1 ([`http`]) on one new connection per request: the
//! socket is local, so a connect costs microseconds, and no connection state survives an LXD
//! restart. Every request carries `Host: lxd`, as `lxc` sends.
//!
//! - [`LxdClient::discover`] picks the first of [`DEFAULT_SOCKETS`] (or any list) that accepts
//!   a connection; [`LxdClient::new`] takes a socket path as is.
//! - [`LxdClient::instances`] lists instances with their state in one call
//!   (`GET /1.0/instances?recursion=2`); [`LxdClient::instance_state`] reads one instance's
//!   live state (`GET /1.0/instances/NAME/state`).
//! - [`LxdClient::change_state`] starts, stops, restarts, freezes or unfreezes an instance
//!   (`PUT /1.0/instances/NAME/state`) and waits for LXD's background operation.
//! - [`LxdClient::instance_disks`] lists every instance's disk devices
//!   (`GET /1.0/instances?recursion=1`); [`LxdClient::storage_pools`] and
//!   [`LxdClient::pool_space`] read the pools and their free space
//!   (`GET /1.0/storage-pools/NAME/resources`).
//! - [`LxdClient::networks`] lists networks (`GET /1.0/networks?recursion=1`), for the subnet
//!   an upstream address must be in.
//! - [`LxdClient::images`] lists local images, [`LxdClient::delete_image`] deletes one.
//! - [`LxdClient::set_ipv4`] pins a NIC's IPv4 address (`PATCH /1.0/instances/NAME`).
//!
//! LXD answers `{"type":"sync","metadata":…}` for immediate results,
//! `{"type":"async","operation":"/1.0/operations/UUID",…}` for background work, which the
//! client waits for with `GET /1.0/operations/UUID/wait?timeout=N`, and
//! `{"type":"error","error":"…","error_code":404}` for failures, whose message
//! [`LxdError::Api`] carries. Requests are for the `default` project.
mod client;
pub mod events;
#[cfg(test)]
mod tests;
mod types;

use std::{io, path::PathBuf, time::Duration};

use crate::unix_http as http;

pub use client::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_IO_TIMEOUT, LxdClient};
pub use types::{
    DiskDevice, DiskState, Image, Instance, InstanceDisks, InstanceState, InstanceStatus,
    Interfaces, MemoryState, Network, NicDevice, NicState, PoolSpace, StateAction, StoragePool,
    parse_byte_size,
};
#[cfg(fuzzing)]
pub use types::{parse_instances, parse_networks, parse_state};

/// Where LXD's socket lives: Debian's `lxd` package, the snap, then Incus (LXD's fork, which
/// serves the same `/1.0` API).
pub const DEFAULT_SOCKETS: &[&str] = &[
    "/var/lib/lxd/unix.socket",
    "/var/snap/lxd/common/lxd/unix.socket",
    "/var/lib/incus/unix.socket",
];

/// Errors of talking to LXD. `endpoint` is the request, as `GET /1.0/instances?recursion=2`.
#[derive(Debug, thiserror::Error)]
pub enum LxdError {
    #[error("cannot connect to LXD at {}: {source}", socket.display())]
    Connect { socket: PathBuf, source: io::Error },
    #[error("LXD at {}: {endpoint}: {source}", socket.display())]
    Io {
        socket: PathBuf,
        endpoint: String,
        source: io::Error,
    },
    #[error("LXD at {}: {endpoint}: bad HTTP answer: {source}", socket.display())]
    Http {
        socket: PathBuf,
        endpoint: String,
        source: http::HttpError,
    },
    /// LXD refused the request; `code` is LXD's `error_code` (an HTTP status).
    #[error("LXD {endpoint}: error {code}: {message}")]
    Api {
        endpoint: String,
        code: u16,
        message: String,
    },
    #[error("LXD {endpoint}: unexpected answer: {source}")]
    Json {
        endpoint: String,
        source: serde_json::Error,
    },
    /// A background operation ended in failure or was cancelled; `message` is its `err`.
    #[error("LXD operation {operation} ({description}) failed: {message}")]
    Operation {
        operation: String,
        description: String,
        message: String,
    },
    /// No answer in time: the socket read/write timeout, or an operation still running when
    /// its wait ended.
    #[error("LXD {endpoint}: no result within {after:?}")]
    Timeout { endpoint: String, after: Duration },
    #[error("LXD instance {instance} has no NIC device {nic}")]
    NoNic { instance: String, nic: String },
}
