//! [`LxdClient`]: requests, LXD's answer envelope, and waiting for operations.
use std::{
    io::{self, BufReader},
    net::Ipv4Addr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::{Deserialize, de::DeserializeOwned};
use serde_json::{Value, json};

use super::{
    Image, Instance, InstanceState, LxdError, Network, StateAction,
    http::{self, Deadline, HttpError, connect},
    types::{
        InstanceDisks, PoolSpace, RawDevices, RawImage, RawInstance, RawInstanceDevices,
        RawNetwork, RawOperation, RawPoolResources, RawState, RawStoragePool, StoragePool,
    },
};

/// How long a connect may take: only a full listen backlog makes a unix socket connect wait.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one request may take in all, from sending it to the last byte of the answer.
/// Waiting for an operation adds the wait's own timeout to this.
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Slack given to LXD past an action's own timeout before giving up on the operation, so that
/// LXD's message about a failed clean shutdown arrives rather than our timeout.
const WAIT_SLACK: Duration = Duration::from_secs(10);

/// A client for one LXD socket. Cheap to clone; holds no connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LxdClient {
    socket: PathBuf,
    connect_timeout: Duration,
    io_timeout: Duration,
}

/// LXD's answer envelope, every field it may omit defaulted.
#[derive(Debug, Deserialize)]
struct Envelope {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_code: u16,
    #[serde(default)]
    operation: String,
    #[serde(default)]
    metadata: Value,
}

/// A successful answer.
struct Answer {
    envelope: Envelope,
    etag: Option<String>,
}

impl LxdClient {
    /// A client for the socket at `socket`, with the default timeouts. Nothing is checked
    /// until the first request.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            io_timeout: DEFAULT_IO_TIMEOUT,
        }
    }

    /// A new connection to LXD's socket.
    pub(super) fn connect_stream(&self) -> Result<UnixStream, LxdError> {
        connect(&self.socket, self.connect_timeout).map_err(|source| LxdError::Connect {
            socket: self.socket.clone(),
            source,
        })
    }

    /// The first of `candidates` that accepts a connection (usually [`super::DEFAULT_SOCKETS`]).
    /// A socket file alone is not enough: a stopped LXD leaves its socket behind.
    pub fn discover<P: AsRef<Path>>(candidates: impl IntoIterator<Item = P>) -> Option<Self> {
        candidates.into_iter().find_map(|candidate| {
            let client = Self::new(candidate.as_ref());
            match connect(&client.socket, client.connect_timeout) {
                Ok(_) => Some(client),
                Err(error) if error.kind() == io::ErrorKind::PermissionDenied => {
                    // LXD is there but its socket is root's and its group's: say why, once.
                    static SAID: std::sync::Once = std::sync::Once::new();
                    SAID.call_once(|| {
                        tracing::warn!(
                            socket = %client.socket.display(),
                            %error,
                            "LXD's socket refuses lynx: connecting needs write access to it \
                             (LXD's group, or CAP_DAC_OVERRIDE)"
                        );
                    });
                    None
                }
                Err(error) => {
                    tracing::debug!(socket = %client.socket.display(), %error, "no LXD here");
                    None
                }
            }
        })
    }

    /// Replaces the connect timeout and the total time a request may take.
    pub fn with_timeouts(self, connect: Duration, io: Duration) -> Self {
        Self {
            connect_timeout: connect,
            io_timeout: io,
            ..self
        }
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Every instance of the default project with its state, in one request.
    pub fn instances(&self) -> Result<Vec<Instance>, LxdError> {
        let raw: Vec<RawInstance> = self.get("/1.0/instances?recursion=2")?;
        Ok(raw.into_iter().map(Instance::from).collect())
    }

    /// The networks LXD knows: those it manages, with their subnet, and the host's others.
    pub fn networks(&self) -> Result<Vec<Network>, LxdError> {
        let raw: Vec<RawNetwork> = self.get("/1.0/networks?recursion=1")?;
        Ok(raw.into_iter().map(Network::from).collect())
    }

    /// One instance's live state.
    pub fn instance_state(&self, name: &str) -> Result<InstanceState, LxdError> {
        let raw: RawState = self.get(&format!("/1.0/instances/{}/state", segment(name)))?;
        Ok(raw.into())
    }

    /// Every instance's disk devices (its expanded devices of `type: disk`), in one request.
    pub fn instance_disks(&self) -> Result<Vec<InstanceDisks>, LxdError> {
        let raw: Vec<RawInstanceDevices> = self.get("/1.0/instances?recursion=1")?;
        Ok(raw.into_iter().map(InstanceDisks::from).collect())
    }

    /// The storage pools with their drivers.
    pub fn storage_pools(&self) -> Result<Vec<StoragePool>, LxdError> {
        let raw: Vec<RawStoragePool> = self.get("/1.0/storage-pools?recursion=1")?;
        Ok(raw.into_iter().map(StoragePool::from).collect())
    }

    /// The space used and available on storage pool `pool`.
    pub fn pool_space(&self, pool: &str) -> Result<PoolSpace, LxdError> {
        let target = format!("/1.0/storage-pools/{}/resources", segment(pool));
        let raw: RawPoolResources = self.get(&target)?;
        Ok(raw.into())
    }

    /// Applies `action` to instance `name` and waits until LXD has done it.
    ///
    /// `timeout` is whole seconds (rounded up, at least 1): for a clean stop or restart it is
    /// how long the instance gets to shut down before LXD fails the operation (LXD would read
    /// 0 as "kill it"); the wait for the operation ends 10 s after it, so that LXD's own
    /// message about a failed shutdown arrives first. An action still running then is an
    /// [`LxdError::Timeout`], though LXD carries on with it.
    pub fn change_state(
        &self,
        name: &str,
        action: StateAction,
        timeout: Duration,
    ) -> Result<(), LxdError> {
        let seconds = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
        let seconds = seconds.max(1);
        let body = json!({
            "action": action.verb(),
            "timeout": seconds,
            "force": action.force(),
        });
        let target = format!("/1.0/instances/{}/state", segment(name));
        self.run(
            "PUT",
            &target,
            &[],
            &body,
            Duration::from_secs(seconds) + WAIT_SLACK,
        )
    }

    /// The images in LXD's local store.
    pub fn images(&self) -> Result<Vec<Image>, LxdError> {
        let raw: Vec<RawImage> = self.get("/1.0/images?recursion=1")?;
        Ok(raw.into_iter().map(Image::from).collect())
    }

    /// Deletes the image with this fingerprint and waits until LXD has, for up to the I/O
    /// timeout.
    pub fn delete_image(&self, fingerprint: &str) -> Result<(), LxdError> {
        let target = format!("/1.0/images/{}", segment(fingerprint));
        self.run("DELETE", &target, &[], &Value::Null, self.io_timeout)
    }

    /// Sets `ipv4.address` on NIC device `nic` of instance `name`: the address LXD's DHCP
    /// server on a managed bridge hands that NIC from then on.
    ///
    /// The device is copied from the instance's expanded devices, so a NIC that comes from a
    /// profile becomes the instance's own device with the profile's settings plus the address;
    /// other devices are untouched (LXD merges a `PATCH`'s `devices` by name). The `PATCH`
    /// carries the `ETag` read, so a concurrent change makes it fail (412) rather than be lost.
    /// LXD refuses an address outside the bridge's subnet or already used. A running instance
    /// gets the address at its next DHCP lease, in practice at its next start.
    pub fn set_ipv4(&self, name: &str, nic: &str, address: Ipv4Addr) -> Result<(), LxdError> {
        let target = format!("/1.0/instances/{}", segment(name));
        let answer = self.call("GET", &target, &[], None, Duration::ZERO)?;
        let endpoint = format!("GET {target}");
        let mut devices: RawDevices = decode(&endpoint, answer.envelope.metadata)?;
        let mut device = devices
            .expanded_devices
            .remove(nic)
            .filter(|device| device.get("type").is_some_and(|t| t == "nic"))
            .ok_or_else(|| LxdError::NoNic {
                instance: name.to_owned(),
                nic: nic.to_owned(),
            })?;
        device.insert("ipv4.address".to_owned(), address.to_string());
        let body = json!({ "devices": { nic: device } });
        let headers: Vec<(&str, &str)> = answer
            .etag
            .as_deref()
            .map(|etag| ("If-Match", etag))
            .into_iter()
            .collect();
        self.run("PATCH", &target, &headers, &body, self.io_timeout)
    }

    fn get<T: DeserializeOwned>(&self, target: &str) -> Result<T, LxdError> {
        let answer = self.call("GET", target, &[], None, Duration::ZERO)?;
        decode(&format!("GET {target}"), answer.envelope.metadata)
    }

    /// Sends a request whose answer is either done (sync) or an operation to wait for up to
    /// `wait` (async).
    fn run(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &Value,
        wait: Duration,
    ) -> Result<(), LxdError> {
        let body = (!body.is_null()).then_some(body);
        let answer = self.call(method, target, headers, body, Duration::ZERO)?;
        if answer.envelope.kind != "async" {
            return Ok(());
        }
        let endpoint = format!("{method} {target}");
        let operation: RawOperation = decode(&endpoint, answer.envelope.metadata)?;
        let path = match answer.envelope.operation {
            path if !path.is_empty() => path,
            _ => format!("/1.0/operations/{}", segment(&operation.id)),
        };
        self.wait(&path, operation.description, wait)
    }

    /// Waits for the operation at `path` to end, and fails with its `err` unless it succeeded.
    fn wait(&self, path: &str, description: String, wait: Duration) -> Result<(), LxdError> {
        let target = format!("{path}/wait?timeout={}", wait.as_secs());
        let endpoint = format!("GET {target}");
        let answer = match self.call("GET", &target, &[], None, wait) {
            // Later LXD versions end a wait that outlasts its timeout with this error; 5.0
            // answers with the operation still running, handled below.
            Err(LxdError::Api { message, .. }) if message.contains("deadline exceeded") => {
                return Err(LxdError::Timeout {
                    endpoint,
                    after: wait,
                });
            }
            other => other?,
        };
        let operation: RawOperation = decode(&endpoint, answer.envelope.metadata)?;
        let description = if operation.description.is_empty() {
            description
        } else {
            operation.description
        };
        match operation.status_code {
            200 => Ok(()),
            // 100–199 are LXD's "not done yet" codes (Created, Started, Running, Pending, …).
            100..=199 => Err(LxdError::Timeout {
                endpoint,
                after: wait,
            }),
            _ => Err(LxdError::Operation {
                operation: path.to_owned(),
                description,
                message: one_line(if operation.err.is_empty() {
                    &operation.status
                } else {
                    &operation.err
                }),
            }),
        }
    }

    /// One request; LXD's error answers become [`LxdError::Api`]. `extra` lengthens its
    /// deadline, for a wait that LXD holds open on purpose.
    fn call(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
        extra: Duration,
    ) -> Result<Answer, LxdError> {
        let endpoint = format!("{method} {target}");
        let body = body.map(|b| b.to_string().into_bytes());
        let response = self.exchange(method, target, headers, body.as_deref(), extra)?;
        let envelope = serde_json::from_slice::<Envelope>(&response.body);
        let failed = response.status >= 400;
        match envelope {
            Ok(envelope) if failed || envelope.kind == "error" => Err(LxdError::Api {
                endpoint,
                code: match envelope.error_code {
                    0 => response.status,
                    code => code,
                },
                message: one_line(if envelope.error.is_empty() {
                    &response.reason
                } else {
                    &envelope.error
                }),
            }),
            Ok(envelope) => Ok(Answer {
                envelope,
                etag: response.header("etag").map(str::to_owned),
            }),
            // Not LXD's JSON, as from a proxy in between: the status says more than the parse.
            Err(_) if failed => Err(LxdError::Api {
                endpoint,
                code: response.status,
                message: one_line(&format!(
                    "{} {}",
                    response.reason,
                    // Enough to recognise an error page, not the whole page.
                    String::from_utf8_lossy(&response.body[..response.body.len().min(200)])
                )),
            }),
            Err(source) => Err(LxdError::Json { endpoint, source }),
        }
    }

    fn exchange(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        extra: Duration,
    ) -> Result<http::Response, LxdError> {
        let endpoint = || format!("{method} {target}");
        let stream = self.connect_stream()?;
        let timeout = self.io_timeout + extra;
        let io_error = |source: io::Error| match source.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => LxdError::Timeout {
                endpoint: endpoint(),
                after: timeout,
            },
            _ => LxdError::Io {
                socket: self.socket.clone(),
                endpoint: endpoint(),
                source,
            },
        };
        // One deadline for the whole exchange: an LXD that trickles its answer a byte at a
        // time cannot hold the caller past it.
        let mut stream = Deadline {
            stream: &stream,
            at: Instant::now() + timeout,
        };
        http::write_request(&mut stream, "lxd", method, target, headers, body).map_err(io_error)?;
        let response = http::read_response(&mut BufReader::new(stream), method);
        tracing::trace!(endpoint = %endpoint(), status = ?response.as_ref().map(|r| r.status).ok(), "LXD");
        response.map_err(|error| match error {
            HttpError::Io(source) => io_error(source),
            source => LxdError::Http {
                socket: self.socket.clone(),
                endpoint: endpoint(),
                source,
            },
        })
    }
}

fn decode<T: DeserializeOwned>(endpoint: &str, metadata: Value) -> Result<T, LxdError> {
    serde_json::from_value(metadata).map_err(|source| LxdError::Json {
        endpoint: endpoint.to_owned(),
        source,
    })
}

/// Percent-encodes a name for one path segment, so that no name can reach another endpoint.
/// LXD's own names (instances, fingerprints) pass through unchanged.
fn segment(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// LXD's messages can span lines (a failed start quotes `lxc`'s log); ours stay on one.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}
