//! What the kernel counted of nginx's connections, as the controller uses it: the drains'
//! probe of open connections per backend, and whether a snapshot's load figures are complete.
//!
//! A full kernel map makes figures lower bounds. CPU time a full map dropped is missing from
//! that interval only. An nginx connection the flow table or the endpoint table had no room
//! for is never followed: it is missing from the counts for as long as it is open, that is
//! until the workers that held it have exited; until then no count is trusted.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddrV4,
    sync::{Arc, Mutex, PoisonError},
    time::Instant,
};

use super::core::DrainProbe;
use crate::model::{self, KernelDrops};

/// nginx's open connections per backend from the latest snapshot that counted nginx: the
/// drains' probe.
#[derive(Clone, Default)]
pub(super) struct KernelCounts(pub(super) Arc<Mutex<Counts>>);

#[derive(Default)]
pub(super) struct Counts {
    /// Open connections per backend nginx has a counter for, and when they were handed over.
    active: Option<(Instant, BTreeMap<SocketAddrV4, u64>)>,
    /// The kernel's drops at the previous snapshot.
    drops: Option<KernelDrops>,
    /// nginx's master and its workers when a connection of theirs went unfollowed (a kernel
    /// map was full): the counts are unknown until every one of those workers has exited.
    tainted: Option<(u32, BTreeSet<u32>)>,
}

impl Counts {
    /// Takes a snapshot's counts and drops; returns whether its load figures are complete.
    pub(super) fn update(
        &mut self,
        now: Instant,
        snapshot: &model::Snapshot,
        backends: Option<&Upstreams>,
    ) -> bool {
        let drops = snapshot.kernel_drops;
        let grew = |of: fn(&KernelDrops) -> u64| {
            let before = self.drops.as_ref().map_or(0, of);
            of(&drops) > before
        };
        let cpu_dropped = grew(|d| d.cgroup_cpu_map_full);
        let nginx_dropped = grew(|d| d.nginx_endpoints_full) || grew(|d| d.nginx_flows_full);
        self.drops = Some(drops);
        if let (true, Some(master)) = (nginx_dropped, snapshot.nginx.master_pid) {
            // The workers hold the connections; the master outlives every reload.
            let processes: BTreeSet<u32> = crate::nginx::children(master).into_iter().collect();
            if self.tainted.is_none() {
                tracing::warn!(
                    "nginx connections went unfollowed (a kernel map was full): connection counts are not trusted for drains until nginx's current workers have exited"
                );
            }
            self.tainted = Some((master, processes));
        }
        if let Some((master, processes)) = &self.tainted {
            let running: BTreeSet<u32> = crate::nginx::children(*master).into_iter().collect();
            if running.is_disjoint(processes) {
                tracing::info!(
                    "every nginx process that had unfollowed connections has exited: connection counts are trusted again"
                );
                self.tainted = None;
            }
        }
        if let Some(backends) = backends {
            let active = backends.iter().map(|(a, e)| (*a, e.active)).collect();
            self.active = Some((now, active));
        }
        let requests_undercounted = backends.is_some() && self.tainted.is_some();
        !(cpu_dropped || requests_undercounted)
    }
}

/// A snapshot's upstream endpoints by backend address.
pub(super) type Upstreams<'a> = BTreeMap<SocketAddrV4, &'a model::NginxEndpoint>;

impl DrainProbe for KernelCounts {
    fn active_connections(&self, address: SocketAddrV4, since: Instant) -> Option<u64> {
        let counts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.tainted.is_some() {
            return None;
        }
        let (_, active) = counts.active.as_ref().filter(|(at, _)| *at >= since)?;
        // No counter for it: unknown (its endpoint may have found no slot), not "none".
        active.get(&address).copied()
    }
}
