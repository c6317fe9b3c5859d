//! LXD as an [`InstanceSource`], polled on a thread of its own so that collection never waits
//! for LXD: a tick takes the latest answer (at most one poll period old), and a slow or hung
//! LXD only makes that answer older. While LXD is down every poll looks for its socket again,
//! so the daemon picks it up when it returns.
use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{InstanceInfo, InstanceSource};
use crate::{
    lxd::{Instance, LxdClient},
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
    /// Polls once now, then every `period` on a background thread until dropped.
    pub fn spawn(sockets: Vec<PathBuf>, period: Duration) -> Self {
        let mut poller = Poller {
            sockets,
            client: None,
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
            Ok(instances) => Ok(instances.into_iter().map(info).collect()),
            Err(error) => {
                // Look for the socket again next time: LXD may come back elsewhere.
                self.client = None;
                Err(error.to_string())
            }
        }
    }
}

fn info(instance: Instance) -> InstanceInfo {
    InstanceInfo {
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
