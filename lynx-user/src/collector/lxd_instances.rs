//! LXD as an [`InstanceSource`]: instances with their state, from LXD's API. While LXD is
//! down (not installed yet, restarting) every read looks for its socket again, so the daemon
//! picks it up when it returns.
use std::{path::PathBuf, time::Duration};

use super::{InstanceInfo, InstanceSource};
use crate::lxd::{Instance, InstanceStatus, LxdClient};

/// Short timeouts: a hung LXD must not hold up a collection tick.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Instances from the first of `sockets` that answers.
pub struct LxdInstances {
    sockets: Vec<PathBuf>,
    client: Option<LxdClient>,
}

impl LxdInstances {
    pub fn new(sockets: Vec<PathBuf>) -> Self {
        Self {
            sockets,
            client: None,
        }
    }
}

impl InstanceSource for LxdInstances {
    fn instances(&mut self) -> Result<Vec<InstanceInfo>, String> {
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
        status: match instance.status {
            InstanceStatus::Running => "Running".into(),
            InstanceStatus::Stopped => "Stopped".into(),
            InstanceStatus::Frozen => "Frozen".into(),
            InstanceStatus::Other(status) => status,
        },
        pid: instance.pid,
        ipv4: instance.ipv4.iter().map(ToString::to_string).collect(),
        ipv6: instance.ipv6.iter().map(ToString::to_string).collect(),
        image: instance.image,
        created_at: Some(instance.created_at),
        last_used_at: instance.last_used_at,
        name: instance.name,
    }
}
