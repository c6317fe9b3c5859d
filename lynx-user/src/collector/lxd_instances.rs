//! LXD as an [`InstanceSource`], polled on a thread of its own so that collection never waits
//! for LXD: a tick takes the latest answer (at most one poll period old), and a slow or hung
//! LXD only makes that answer older. While LXD is down every poll looks for its socket again,
//! so the daemon picks it up when it returns.
//!
//! Disk usage is read on the same thread at its own, slower cadence (`[disk] interval`):
//! every instance's disk devices, each instance's state (where LXD puts the usage it measured)
//! and the free space of each pool in use. Each instance's figures from the last disk poll
//! ride along with every instance answer.
use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{
    InstanceInfo, InstanceSource,
    disk::{self, Crossing, DiskInfo, FullTracker, PoolFacts},
};
use crate::{
    config::DiskConfig,
    lxd::{Instance, LxdClient, LxdError},
    stop::sleep_until,
};

/// Short timeouts: a hung LXD is reported as down rather than waited for.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const IO_TIMEOUT: Duration = Duration::from_secs(5);

type Answer = Result<Vec<InstanceInfo>, String>;

/// Instances from the first of the sockets that answers, refreshed in the background.
pub struct LxdInstances {
    latest: Arc<Mutex<Answer>>,
    stop: Arc<AtomicBool>,
    poller: Option<JoinHandle<()>>,
}

impl LxdInstances {
    /// Polls once now, then every `period` on a background thread until dropped; disk usage
    /// at the first poll and then every `disk.interval`.
    pub fn spawn(sockets: Vec<PathBuf>, period: Duration, disk: DiskConfig) -> Self {
        let mut poller = Poller {
            sockets,
            client: None,
            disk: DiskPoll {
                config: disk,
                last: None,
                by_instance: BTreeMap::new(),
                full: FullTracker::default(),
            },
        };
        let latest = Arc::new(Mutex::new(poller.poll()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (latest, stop) = (Arc::clone(&latest), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("lxd-poller".into())
                .spawn(move || {
                    while sleep_until(Instant::now() + period, &stop) {
                        let answer = poller.poll();
                        *latest.lock().unwrap_or_else(PoisonError::into_inner) = answer;
                    }
                })
                .expect("spawn the LXD poller thread")
        };
        Self {
            latest,
            stop,
            poller: Some(thread),
        }
    }
}

impl InstanceSource for LxdInstances {
    fn instances(&mut self) -> Answer {
        self.latest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for LxdInstances {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.poller.take() {
            let _ = thread.join();
        }
    }
}

struct Poller {
    sockets: Vec<PathBuf>,
    client: Option<LxdClient>,
    disk: DiskPoll,
}

/// The disk poll's cadence and its last results.
struct DiskPoll {
    config: DiskConfig,
    last: Option<Instant>,
    by_instance: BTreeMap<String, BTreeMap<String, DiskInfo>>,
    full: FullTracker,
}

impl DiskPoll {
    fn due(&self, now: Instant) -> bool {
        self.last
            .is_none_or(|last| now.saturating_duration_since(last) >= self.config.interval)
    }

    /// Reads every instance's disks; an error leaves the last results in place.
    fn refresh(&mut self, client: &LxdClient) -> Result<(), LxdError> {
        self.last = Some(Instant::now());
        let instances = client.instance_disks()?;
        let drivers: BTreeMap<String, String> = client
            .storage_pools()?
            .into_iter()
            .map(|pool| (pool.name, pool.driver))
            .collect();
        let mut pools: BTreeMap<String, PoolFacts> = BTreeMap::new();
        for pool in instances
            .iter()
            .flat_map(|i| i.devices.values())
            .filter_map(|d| d.pool.as_ref())
        {
            if pools.contains_key(pool) {
                continue;
            }
            let free = match client.pool_space(pool) {
                Ok(space) => Some(space.free()),
                Err(error) => {
                    tracing::debug!(%error, pool, "storage pool space unknown");
                    None
                }
            };
            let driver = drivers.get(pool).cloned().unwrap_or_default();
            pools.insert(pool.clone(), PoolFacts { driver, free });
        }
        let mut by_instance = BTreeMap::new();
        for instance in instances {
            // Only instances with a volume have anything LXD could measure.
            let state = match instance.devices.values().any(|d| d.pool.is_some()) {
                true => client
                    .instance_state(&instance.name)
                    .map_err(|e| e.to_string()),
                false => Err(String::new()),
            };
            let usage = state.as_ref().map(|s| &s.disk).map_err(String::as_str);
            let disks = disk::derive(&instance.devices, usage, &pools, self.config.full_fraction);
            by_instance.insert(instance.name, disks);
        }
        for crossing in self.full.update(&by_instance) {
            match crossing {
                Crossing::Over {
                    instance,
                    device,
                    used,
                    limit,
                } => tracing::warn!(
                    container = instance,
                    device,
                    used_bytes = used,
                    limit_bytes = limit,
                    fraction = self.config.full_fraction,
                    "a container's disk is nearly full"
                ),
                Crossing::Under { instance, device } => tracing::info!(
                    container = instance,
                    device,
                    fraction = self.config.full_fraction,
                    "a container's disk is no longer nearly full"
                ),
            }
        }
        self.by_instance = by_instance;
        Ok(())
    }
}

impl Poller {
    fn poll(&mut self) -> Answer {
        if self.client.is_none() {
            self.client = LxdClient::discover(&self.sockets)
                .map(|client| client.with_timeouts(CONNECT_TIMEOUT, IO_TIMEOUT));
        }
        let Some(client) = &self.client else {
            let tried: Vec<String> = self
                .sockets
                .iter()
                .map(|s| s.display().to_string())
                .collect();
            return Err(format!(
                "no LXD socket answers (tried {})",
                tried.join(", ")
            ));
        };
        match client.instances() {
            Ok(instances) => {
                if self.disk.due(Instant::now())
                    && let Err(error) = self.disk.refresh(client)
                {
                    tracing::debug!(%error, "disk usage not read; keeping the last figures");
                }
                Ok(instances
                    .into_iter()
                    .map(|instance| {
                        let disk = self.disk.by_instance.get(&instance.name).cloned();
                        info(instance, disk)
                    })
                    .collect())
            }
            Err(error) => {
                // Look for the socket again next time: LXD may come back elsewhere.
                self.client = None;
                Err(error.to_string())
            }
        }
    }
}

fn info(instance: Instance, disk: Option<BTreeMap<String, DiskInfo>>) -> InstanceInfo {
    InstanceInfo {
        disk,
        status: instance.status.as_str().to_owned(),
        pid: instance.pid,
        ipv4: instance.ipv4.iter().map(ToString::to_string).collect(),
        ipv6: instance.ipv6.iter().map(ToString::to_string).collect(),
        image: instance.image,
        created_at: Some(instance.created_at),
        last_used_at: instance.last_used_at,
        name: instance.name,
    }
}
