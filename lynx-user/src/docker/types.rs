//! What the client returns, and the shapes of the engine's JSON it is read from.
//!
//! `GET /containers/ID/json` is decoded into private `Raw*` structs that mirror the API
//! (Go leaves unset maps `null`), then converted into [`Container`]: typed state, times and
//! addresses, absent values as `None`.
use std::{
    collections::BTreeMap,
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
};

use serde::{Deserialize, Deserializer};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// A container's state, as the engine's `State.Status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContainerState {
    Created,
    Running,
    Paused,
    Restarting,
    Removing,
    Exited,
    Dead,
    /// A word this version of Lynx does not know, as the engine spelled it.
    Other(String),
}

impl ContainerState {
    fn parse(word: String) -> Self {
        match word.as_str() {
            "created" => Self::Created,
            "running" => Self::Running,
            "paused" => Self::Paused,
            "restarting" => Self::Restarting,
            "removing" => Self::Removing,
            "exited" => Self::Exited,
            "dead" => Self::Dead,
            _ => Self::Other(word),
        }
    }

    /// The state as the engine spells it (`docker inspect -f '{{.State.Status}}'`).
    pub fn as_str(&self) -> &str {
        match self {
            Self::Created => "created",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Restarting => "restarting",
            Self::Removing => "removing",
            Self::Exited => "exited",
            Self::Dead => "dead",
            Self::Other(word) => word,
        }
    }
}

impl fmt::Display for ContainerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One container, from `GET /containers/ID/json`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    /// The full 64-digit id, as in its cgroup's path.
    pub id: String,
    /// Its name, without the leading `/` the API puts there.
    pub name: String,
    /// The image as it was asked for (`Config.Image`, as `busybox:latest`).
    pub image: String,
    /// The image's id (`sha256:…`).
    pub image_id: String,
    pub state: ContainerState,
    /// The main process on the host, while it runs (paused included); the API says 0 else.
    pub pid: Option<u32>,
    /// The main process's program and arguments (`Path` and `Args`).
    pub command: Vec<String>,
    pub created_at: OffsetDateTime,
    /// The last start; `None` for a container never started (the API sends Go's zero time).
    pub started_at: Option<OffsetDateTime>,
    pub labels: BTreeMap<String, String>,
    /// Per network it is attached to, by name.
    pub networks: Vec<NetworkAddresses>,
}

impl Container {
    /// Its IPv4 addresses, over every network.
    pub fn ipv4(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.networks.iter().filter_map(|n| n.ipv4)
    }

    /// Its global IPv6 addresses, over every network.
    pub fn ipv6(&self) -> impl Iterator<Item = Ipv6Addr> + '_ {
        self.networks.iter().filter_map(|n| n.ipv6)
    }

    /// True when `reference` names it as the `docker` CLI accepts: its name, or its id or a
    /// prefix of the id.
    pub fn is_named(&self, reference: &str) -> bool {
        let reference = reference.strip_prefix('/').unwrap_or(reference);
        !reference.is_empty() && (self.name == reference || self.id.starts_with(reference))
    }
}

/// A container's addresses on one network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkAddresses {
    /// The network's name (`bridge`, `none`, or one the operator made).
    pub name: String,
    pub ipv4: Option<Ipv4Addr>,
    /// Its global IPv6 address, on a network with IPv6.
    pub ipv6: Option<Ipv6Addr>,
}

/// Go leaves unset maps and slices `null`; they read as empty here.
fn nullable<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// An RFC 3339 time, as the engine writes them (`2026-11-22T04:00:00.123456789Z`).
fn rfc3339<'de, D: Deserializer<'de>>(deserializer: D) -> Result<OffsetDateTime, D::Error> {
    let text = String::deserialize(deserializer)?;
    OffsetDateTime::parse(&text, &Rfc3339)
        .map_err(|e| serde::de::Error::custom(format!("time {text:?}: {e}")))
}

/// One entry of `GET /containers/json`: only the id is used, to inspect each.
#[derive(Debug, Deserialize)]
pub(super) struct RawListed {
    #[serde(rename = "Id")]
    pub id: String,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawContainer {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "Created", deserialize_with = "rfc3339")]
    created: OffsetDateTime,
    #[serde(rename = "Path", default)]
    path: String,
    #[serde(rename = "Args", default, deserialize_with = "nullable")]
    args: Vec<String>,
    #[serde(rename = "State")]
    state: RawState,
    #[serde(rename = "Image", default)]
    image: String,
    #[serde(rename = "Config", default, deserialize_with = "nullable")]
    config: RawConfig,
    #[serde(rename = "NetworkSettings", default, deserialize_with = "nullable")]
    network_settings: RawNetworkSettings,
}

#[derive(Debug, Deserialize)]
struct RawState {
    #[serde(rename = "Status")]
    status: String,
    #[serde(rename = "Pid", default)]
    pid: i64,
    #[serde(rename = "StartedAt", deserialize_with = "rfc3339")]
    started_at: OffsetDateTime,
}

#[derive(Debug, Default, Deserialize)]
struct RawConfig {
    #[serde(rename = "Image", default)]
    image: String,
    #[serde(rename = "Labels", default, deserialize_with = "nullable")]
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawNetworkSettings {
    #[serde(rename = "Networks", default, deserialize_with = "nullable")]
    networks: BTreeMap<String, RawEndpoint>,
}

#[derive(Debug, Default, Deserialize)]
struct RawEndpoint {
    #[serde(rename = "IPAddress", default)]
    ip_address: String,
    #[serde(rename = "GlobalIPv6Address", default)]
    global_ipv6_address: String,
}

impl From<RawContainer> for Container {
    fn from(raw: RawContainer) -> Self {
        let networks = raw
            .network_settings
            .networks
            .into_iter()
            .map(|(name, endpoint)| NetworkAddresses {
                name,
                // Empty where the network gives none (`none`, or a stopped container).
                ipv4: endpoint.ip_address.parse().ok(),
                ipv6: endpoint.global_ipv6_address.parse().ok(),
            })
            .collect();
        let state = ContainerState::parse(raw.state.status);
        let started_at = Some(raw.state.started_at).filter(|at| at.year() > 1);
        Self {
            name: raw.name.trim_start_matches('/').to_owned(),
            id: raw.id,
            image: raw.config.image,
            image_id: raw.image,
            pid: u32::try_from(raw.state.pid).ok().filter(|&pid| pid > 0),
            state,
            command: std::iter::once(raw.path)
                .filter(|path| !path.is_empty())
                .chain(raw.args)
                .collect(),
            created_at: raw.created,
            started_at,
            labels: raw.config.labels,
            networks,
        }
    }
}
