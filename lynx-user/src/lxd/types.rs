//! What the client returns, and the shapes of LXD's JSON it is read from.
//!
//! LXD's objects are decoded into private `Raw*` structs that mirror the API (every field
//! optional where LXD may send `null` or leave it out), then converted into the public types,
//! which keep only what Lynx uses, in Rust terms: absent PIDs as `None`, addresses parsed.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use serde::{Deserialize, Deserializer};

/// An instance's run state, as LXD's `status` field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InstanceStatus {
    Running,
    Stopped,
    Frozen,
    /// Anything else, as LXD spells it (`Error`, `Starting`, `Stopping`, …).
    Other(String),
}

impl InstanceStatus {
    fn parse(status: String) -> Self {
        match status.as_str() {
            "Running" => Self::Running,
            "Stopped" => Self::Stopped,
            "Frozen" => Self::Frozen,
            _ => Self::Other(status),
        }
    }

    /// The status as LXD spells it.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Running => "Running",
            Self::Stopped => "Stopped",
            Self::Frozen => "Frozen",
            Self::Other(word) => word,
        }
    }
}

/// One instance (container or VM), from `GET /1.0/instances?recursion=2`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub name: String,
    /// `container` or `virtual-machine`.
    pub kind: String,
    pub status: InstanceStatus,
    /// The init process's PID on the host; `None` when not running (LXD says 0 or -1).
    pub pid: Option<u32>,
    /// Global-scope addresses of every NIC but `lo`; empty when stopped. For people: what
    /// the instance itself reports, whichever interface carries it.
    pub ipv4: Vec<Ipv4Addr>,
    pub ipv6: Vec<Ipv6Addr>,
    /// Global-scope IPv4 addresses by interface name inside the instance (`lo` left out).
    pub interfaces: Interfaces,
    /// The NICs LXD gives it (`expanded_devices` of type `nic`), by device name.
    pub nics: Vec<NicDevice>,
    /// What the instance was created from, for people: the image's description as copied
    /// into `config["image.description"]` at creation (`Debian bookworm amd64 (20240101_05:24)`),
    /// else `image.os` and `image.release` joined by a space; `None` for an instance made
    /// without an image or whose image had none of these properties.
    pub image: Option<String>,
    /// Fingerprint of the image it was created from (`config["volatile.base_image"]`), to
    /// match against [`Image::fingerprint`]; the image itself may have been deleted since.
    pub base_image: Option<String>,
    /// Applied profiles, in order.
    pub profiles: Vec<String>,
    /// RFC 3339, as LXD sends it.
    pub created_at: String,
    /// RFC 3339; `None` for an instance never started (LXD sends the Unix epoch or Go's zero
    /// time there).
    pub last_used_at: Option<String>,
}

/// Global-scope IPv4 addresses by interface name inside an instance.
pub type Interfaces = BTreeMap<String, Vec<Ipv4Addr>>;

/// A NIC device in an instance's LXD config: what LXD itself set up, which the instance
/// cannot change (it can add interfaces and addresses inside, which are not this).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NicDevice {
    /// The device's name in LXD's config (`eth0`).
    pub device: String,
    /// The interface's name inside the instance: the device's `name`, else the device name.
    pub interface: String,
    /// The LXD network it is on (`network`), else the host bridge it is attached to
    /// (`parent`).
    pub network: Option<String>,
    /// A static address LXD's DHCP server hands it (`ipv4.address`).
    pub ipv4_address: Option<Ipv4Addr>,
}

/// An LXD network, from `GET /1.0/networks?recursion=1`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    pub name: String,
    /// Managed by LXD (a bridge it made); otherwise a host interface LXD only lists.
    pub managed: bool,
    /// `ipv4.address` of a managed network: the host's address on it and the prefix length.
    pub ipv4: Option<(Ipv4Addr, u8)>,
}

/// An instance's live state, from `GET /1.0/instances/NAME/state`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceState {
    pub status: InstanceStatus,
    pub pid: Option<u32>,
    /// Processes in the instance; `None` when LXD cannot tell (it says -1, as for a VM
    /// without its agent).
    pub processes: Option<u64>,
    /// Global-scope addresses of every NIC but `lo`.
    pub ipv4: Vec<Ipv4Addr>,
    pub ipv6: Vec<Ipv6Addr>,
    /// Global-scope IPv4 addresses by interface (`lo` left out).
    pub interfaces: Interfaces,
    /// CPU time used, in nanoseconds, from the instance's cgroup.
    pub cpu_usage_ns: u64,
    pub memory: MemoryState,
    /// Per NIC inside the instance, by its name there (`eth0`, `lo`, …).
    pub network: BTreeMap<String, NicState>,
    /// Per disk device that LXD could measure, by device name (`root`, …). LXD leaves out
    /// devices it cannot measure: host paths, and volumes on a `dir` pool without project
    /// quotas.
    pub disk: BTreeMap<String, DiskState>,
}

/// One disk device's usage as LXD measured it on its storage pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskState {
    /// Bytes used on the device's volume.
    pub usage: u64,
    /// The volume's size as LXD sees it; `None` where LXD does not say (5.0 never does).
    pub total: Option<u64>,
}

/// An instance's disk devices, from `GET /1.0/instances?recursion=1`'s `expanded_devices`
/// (profiles' devices merged in).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstanceDisks {
    pub name: String,
    /// By device name.
    pub devices: BTreeMap<String, DiskDevice>,
}

/// One `type: disk` device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskDevice {
    /// Mount point inside the instance (`/` for the root disk).
    pub path: String,
    /// The storage pool of a volume; `None` for a host path (`source` on the host).
    pub pool: Option<String>,
    /// The device's `size` quota in bytes (set on root disks); `None` when unset.
    pub size: Option<u64>,
}

/// A storage pool, from `GET /1.0/storage-pools?recursion=1`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoragePool {
    pub name: String,
    /// `dir`, `btrfs`, `zfs`, `lvm`, `ceph`, …
    pub driver: String,
}

/// A pool's space, from `GET /1.0/storage-pools/NAME/resources`, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolSpace {
    pub used: u64,
    pub total: u64,
}

impl PoolSpace {
    /// What is left on the pool.
    pub fn free(self) -> u64 {
        self.total.saturating_sub(self.used)
    }
}

/// Memory use, in bytes, from the instance's cgroup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryState {
    pub usage: u64,
    pub usage_peak: u64,
    pub swap_usage: u64,
    pub swap_usage_peak: u64,
}

/// One NIC's state as LXD reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NicState {
    /// The host side of the NIC (the `veth…` for a bridged container NIC); empty for `lo`.
    pub host_name: String,
    pub hwaddr: String,
    pub mtu: u32,
    /// `up` or `down`.
    pub state: String,
    /// Counted inside the instance: `received` is traffic into it.
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub packets_received: u64,
    pub packets_sent: u64,
}

/// One image in the local store, from `GET /1.0/images?recursion=1`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    pub fingerprint: String,
    pub aliases: Vec<String>,
    /// Kernel architecture name (`x86_64`, `aarch64`).
    pub architecture: String,
    /// `properties["description"]`, if set and not empty.
    pub description: Option<String>,
    /// `container` or `virtual-machine`.
    pub kind: String,
    /// Bytes.
    pub size: u64,
    /// RFC 3339, as LXD sends it.
    pub uploaded_at: String,
    /// Pulled automatically from a remote to create an instance (LXD may expire these).
    pub cached: bool,
}

/// A state change for [`LxdClient::change_state`](super::LxdClient::change_state).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateAction {
    Start,
    /// `force: false` asks the instance to shut down cleanly within the timeout;
    /// `force: true` kills it.
    Stop {
        force: bool,
    },
    /// As [`StateAction::Stop`], then starts it again.
    Restart {
        force: bool,
    },
    Freeze,
    Unfreeze,
}

impl StateAction {
    pub(super) fn verb(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Stop { .. } => "stop",
            Self::Restart { .. } => "restart",
            Self::Freeze => "freeze",
            Self::Unfreeze => "unfreeze",
        }
    }

    pub(super) fn force(self) -> bool {
        matches!(
            self,
            Self::Stop { force: true } | Self::Restart { force: true }
        )
    }
}

/// Go leaves unset maps and slices `null` in LXD's JSON; they read as empty here.
fn nullable<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[derive(Debug, Deserialize)]
pub(super) struct RawInstance {
    name: String,
    status: String,
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default, deserialize_with = "nullable")]
    profiles: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    config: BTreeMap<String, String>,
    #[serde(default)]
    created_at: String,
    #[serde(default)]
    last_used_at: String,
    #[serde(default, deserialize_with = "nullable")]
    expanded_devices: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    state: Option<RawState>,
}

impl From<RawInstance> for Instance {
    fn from(raw: RawInstance) -> Self {
        let config = |key: &str| raw.config.get(key).filter(|v| !v.is_empty()).cloned();
        let image = config("image.description").or_else(|| {
            let parts: Vec<String> = ["image.os", "image.release"]
                .into_iter()
                .filter_map(config)
                .collect();
            (!parts.is_empty()).then(|| parts.join(" "))
        });
        let base_image = config("volatile.base_image");
        // `state` is `null` when LXD could not read it; then the instance shows no PID or
        // addresses rather than failing the whole list.
        let (pid, ipv4, ipv6, interfaces) = raw
            .state
            .map(InstanceState::from)
            .map(|s| (s.pid, s.ipv4, s.ipv6, s.interfaces))
            .unwrap_or_default();
        let nics = raw
            .expanded_devices
            .iter()
            .filter(|(_, device)| device.get("type").is_some_and(|t| t == "nic"))
            .map(|(name, device)| {
                let value = |key: &str| device.get(key).filter(|v| !v.is_empty());
                NicDevice {
                    device: name.clone(),
                    interface: value("name").unwrap_or(name).clone(),
                    network: value("network").or(value("parent")).cloned(),
                    ipv4_address: value("ipv4.address").and_then(|a| a.parse().ok()),
                }
            })
            .collect();
        Self {
            name: raw.name,
            kind: raw.kind,
            status: InstanceStatus::parse(raw.status),
            pid,
            ipv4,
            ipv6,
            interfaces,
            nics,
            image,
            base_image,
            profiles: raw.profiles,
            created_at: raw.created_at,
            last_used_at: never_as_none(raw.last_used_at),
        }
    }
}

/// LXD 5.0 reports a never-started instance's `last_used_at` as the Unix epoch; other
/// versions as Go's zero time.
fn never_as_none(time: String) -> Option<String> {
    let never = time.is_empty()
        || time.starts_with("0001-01-01T00:00:00")
        || time.starts_with("1970-01-01T00:00:00");
    (!never).then_some(time)
}

#[derive(Debug, Deserialize)]
pub(super) struct RawState {
    #[serde(default)]
    status: String,
    #[serde(default)]
    pid: i64,
    #[serde(default)]
    processes: i64,
    #[serde(default, deserialize_with = "nullable")]
    network: BTreeMap<String, RawNic>,
    #[serde(default, deserialize_with = "nullable")]
    memory: RawMemory,
    #[serde(default, deserialize_with = "nullable")]
    cpu: RawCpu,
    #[serde(default, deserialize_with = "nullable")]
    disk: BTreeMap<String, RawDiskState>,
}

#[derive(Debug, Default, Deserialize)]
struct RawDiskState {
    #[serde(default)]
    usage: i64,
    #[serde(default)]
    total: i64,
}

#[derive(Debug, Default, Deserialize)]
struct RawNic {
    #[serde(default, deserialize_with = "nullable")]
    addresses: Vec<RawAddress>,
    #[serde(default, deserialize_with = "nullable")]
    counters: RawCounters,
    #[serde(default)]
    hwaddr: String,
    #[serde(default)]
    host_name: String,
    #[serde(default)]
    mtu: i64,
    #[serde(default)]
    state: String,
}

#[derive(Debug, Default, Deserialize)]
struct RawAddress {
    #[serde(default)]
    address: String,
    #[serde(default)]
    scope: String,
}

#[derive(Debug, Default, Deserialize)]
struct RawCounters {
    #[serde(default)]
    bytes_received: i64,
    #[serde(default)]
    bytes_sent: i64,
    #[serde(default)]
    packets_received: i64,
    #[serde(default)]
    packets_sent: i64,
}

#[derive(Debug, Default, Deserialize)]
struct RawMemory {
    #[serde(default)]
    usage: i64,
    #[serde(default)]
    usage_peak: i64,
    #[serde(default)]
    swap_usage: i64,
    #[serde(default)]
    swap_usage_peak: i64,
}

#[derive(Debug, Default, Deserialize)]
struct RawCpu {
    #[serde(default)]
    usage: i64,
}

/// LXD's figures are Go `int64`s with -1 for "unknown"; a count cannot be negative.
fn count(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

impl From<RawState> for InstanceState {
    fn from(raw: RawState) -> Self {
        let mut ipv4 = Vec::new();
        let mut ipv6 = Vec::new();
        let mut interfaces = Interfaces::new();
        for (name, nic) in raw.network.iter().filter(|(name, _)| name.as_str() != "lo") {
            let global = nic.addresses.iter().filter(|a| a.scope == "global");
            for address in global {
                // LXD renders addresses with `net.IP.String()`; anything else is not one.
                match address.address.parse() {
                    Ok(IpAddr::V4(a)) => {
                        ipv4.push(a);
                        interfaces.entry(name.clone()).or_default().push(a);
                    }
                    Ok(IpAddr::V6(a)) => ipv6.push(a),
                    Err(_) => {}
                }
            }
        }
        let network = raw
            .network
            .into_iter()
            .map(|(name, nic)| {
                let state = NicState {
                    host_name: nic.host_name,
                    hwaddr: nic.hwaddr,
                    mtu: u32::try_from(nic.mtu).unwrap_or_default(),
                    state: nic.state,
                    bytes_received: count(nic.counters.bytes_received),
                    bytes_sent: count(nic.counters.bytes_sent),
                    packets_received: count(nic.counters.packets_received),
                    packets_sent: count(nic.counters.packets_sent),
                };
                (name, state)
            })
            .collect();
        Self {
            status: InstanceStatus::parse(raw.status),
            pid: u32::try_from(raw.pid).ok().filter(|&pid| pid > 0),
            processes: u64::try_from(raw.processes).ok(),
            ipv4,
            ipv6,
            interfaces,
            cpu_usage_ns: count(raw.cpu.usage),
            memory: MemoryState {
                usage: count(raw.memory.usage),
                usage_peak: count(raw.memory.usage_peak),
                swap_usage: count(raw.memory.swap_usage),
                swap_usage_peak: count(raw.memory.swap_usage_peak),
            },
            network,
            disk: raw
                .disk
                .into_iter()
                .map(|(name, disk)| {
                    let state = DiskState {
                        usage: count(disk.usage),
                        total: u64::try_from(disk.total).ok().filter(|&t| t > 0),
                    };
                    (name, state)
                })
                .collect(),
        }
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct RawImage {
    fingerprint: String,
    #[serde(default, deserialize_with = "nullable")]
    aliases: Vec<RawAlias>,
    #[serde(default)]
    architecture: String,
    #[serde(default, deserialize_with = "nullable")]
    properties: BTreeMap<String, String>,
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    size: i64,
    #[serde(default)]
    uploaded_at: String,
    #[serde(default)]
    cached: bool,
}

#[derive(Debug, Deserialize)]
struct RawAlias {
    name: String,
}

impl From<RawImage> for Image {
    fn from(raw: RawImage) -> Self {
        let mut properties = raw.properties;
        Self {
            fingerprint: raw.fingerprint,
            aliases: raw.aliases.into_iter().map(|a| a.name).collect(),
            architecture: raw.architecture,
            description: properties.remove("description").filter(|d| !d.is_empty()),
            kind: raw.kind,
            size: count(raw.size),
            uploaded_at: raw.uploaded_at,
            cached: raw.cached,
        }
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct RawNetwork {
    name: String,
    #[serde(default)]
    managed: bool,
    #[serde(default, deserialize_with = "nullable")]
    config: BTreeMap<String, String>,
}

impl From<RawNetwork> for Network {
    fn from(raw: RawNetwork) -> Self {
        let ipv4 = raw
            .config
            .get("ipv4.address")
            .and_then(|cidr| cidr.split_once('/'))
            .and_then(|(address, prefix)| Some((address.parse().ok()?, prefix.parse().ok()?)))
            .filter(|&(_, prefix): &(Ipv4Addr, u8)| prefix <= 32);
        Self {
            name: raw.name,
            managed: raw.managed,
            ipv4,
        }
    }
}

/// The part of `GET /1.0/instances/NAME` that [`LxdClient::set_ipv4`](super::LxdClient::set_ipv4)
/// edits: devices are string maps (`type`, `network`, `ipv4.address`, …).
#[derive(Debug, Deserialize)]
pub(super) struct RawDevices {
    #[serde(default, deserialize_with = "nullable")]
    pub expanded_devices: BTreeMap<String, BTreeMap<String, String>>,
}

/// An instance's name and expanded devices, from `GET /1.0/instances?recursion=1`.
#[derive(Debug, Deserialize)]
pub(super) struct RawInstanceDevices {
    name: String,
    #[serde(default, deserialize_with = "nullable")]
    expanded_devices: BTreeMap<String, BTreeMap<String, String>>,
}

impl From<RawInstanceDevices> for InstanceDisks {
    fn from(raw: RawInstanceDevices) -> Self {
        let devices = raw
            .expanded_devices
            .into_iter()
            .filter(|(_, device)| device.get("type").is_some_and(|t| t == "disk"))
            .map(|(name, mut device)| {
                let disk = DiskDevice {
                    path: device.remove("path").unwrap_or_default(),
                    pool: device.remove("pool").filter(|p| !p.is_empty()),
                    // LXD validated the size when it was set, so this parses; a value from a
                    // newer LXD that does not reads as no quota.
                    size: device
                        .get("size")
                        .and_then(|size| parse_byte_size(size).ok()),
                };
                (name, disk)
            })
            .collect();
        Self {
            name: raw.name,
            devices,
        }
    }
}

/// Parses a size as LXD writes them (its `units.ParseByteSizeString`): a whole number of bytes,
/// optionally followed by a decimal (`kB`, `MB`, …, `EB`) or binary (`KiB`, `MiB`, …, `EiB`)
/// unit, or `B`.
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size (a whole number of bytes with a unit)"))?;
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" => 1000,
        "MB" => 1000u64.pow(2),
        "GB" => 1000u64.pow(3),
        "TB" => 1000u64.pow(4),
        "PB" => 1000u64.pow(5),
        "EB" => 1000u64.pow(6),
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "PiB" => 1 << 50,
        "EiB" => 1 << 60,
        other => return Err(format!("{text:?}: unknown unit {other:?}")),
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[derive(Debug, Deserialize)]
pub(super) struct RawStoragePool {
    name: String,
    #[serde(default)]
    driver: String,
}

impl From<RawStoragePool> for StoragePool {
    fn from(raw: RawStoragePool) -> Self {
        Self {
            name: raw.name,
            driver: raw.driver,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawPoolResources {
    #[serde(default, deserialize_with = "nullable")]
    space: RawSpace,
}

#[derive(Debug, Default, Deserialize)]
struct RawSpace {
    #[serde(default)]
    used: i64,
    #[serde(default)]
    total: i64,
}

impl From<RawPoolResources> for PoolSpace {
    fn from(raw: RawPoolResources) -> Self {
        Self {
            used: count(raw.space.used),
            total: count(raw.space.total),
        }
    }
}

/// A background operation, as in an async answer's `metadata` and `GET …/wait`.
#[derive(Debug, Deserialize)]
pub(super) struct RawOperation {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub status_code: u16,
    #[serde(default)]
    pub err: String,
}

/// The instances of `GET /1.0/instances?recursion=2`'s metadata; for the fuzzer.
#[cfg(fuzzing)]
pub fn parse_instances(bytes: &[u8]) -> serde_json::Result<Vec<Instance>> {
    let raw: Vec<RawInstance> = serde_json::from_slice(bytes)?;
    Ok(raw.into_iter().map(Instance::from).collect())
}

/// The state of `GET /1.0/instances/NAME/state`'s metadata; for the fuzzer.
#[cfg(fuzzing)]
pub fn parse_state(bytes: &[u8]) -> serde_json::Result<InstanceState> {
    serde_json::from_slice::<RawState>(bytes).map(InstanceState::from)
}

/// The networks of `GET /1.0/networks?recursion=1`'s metadata; for the fuzzer.
#[cfg(fuzzing)]
pub fn parse_networks(bytes: &[u8]) -> serde_json::Result<Vec<Network>> {
    let raw: Vec<RawNetwork> = serde_json::from_slice(bytes)?;
    Ok(raw.into_iter().map(Network::from).collect())
}
