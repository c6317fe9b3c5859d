//! Following nginx: its ports and processes, its sockets' programs, the byte programs while
//! it runs, and its endpoints' counters.
use std::{
    collections::{BTreeMap, HashSet},
    path::Path,
};

use aya::{
    maps::{Array, HashMap as BpfHashMap, PerCpuArray, PerCpuValues},
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupSock, SockOps, cgroup_sock::CgroupSockLinkId,
        sock_ops::SockOpsLinkId,
    },
};
use lynx_common::{
    Accumulate,
    http::{
        Endpoint, EndpointCounters, HTTP_COUNTERS_MAP, HTTP_ENDPOINTS_MAP, HTTP_EXIT_PROGRAM,
        HTTP_FLOWS_MAP, HTTP_PORTS_MAP, HTTP_RECV_PROGRAM, HTTP_RELEASE_PROGRAM, HTTP_SEND_PROGRAM,
        HTTP_SOCK_OPS_PROGRAM, HTTP_TARGET_MAP, HttpFlowEntry, HttpTarget, NGINX_TGIDS_MAP,
        PORT_PLAIN, PORT_TLS,
    },
};

use super::*;
use crate::collector::{
    features::Family,
    sockets::{self, TcpSockets},
};

/// The programs that follow nginx's bytes, on every socket call of the host (kernel 6.3 on) or
/// on every system call (before): attached only while an nginx is followed, so that a host
/// without one does not pay for them.
pub(super) const SOCKET_TRANSFER_PROGRAMS: [&str; 2] = [HTTP_RECV_PROGRAM, HTTP_SEND_PROGRAM];
pub(super) const SYSTEM_CALL_TRANSFER_PROGRAMS: [&str; 1] = [HTTP_EXIT_PROGRAM];

/// The programs that follow nginx's connections, attached to its cgroup.
pub(super) struct NginxSocketLinks {
    cgroup_id: u64,
    /// [`HTTP_SOCK_OPS_PROGRAM`]: connections opened.
    conn: SockOpsLinkId,
    /// [`HTTP_RELEASE_PROGRAM`]: sockets closed.
    close: CgroupSockLinkId,
}

/// Flows whose sockets are no longer in use.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct ClosedFlows {
    /// Their indices in [`HTTP_FLOWS_MAP`].
    entries: Vec<u32>,
    /// How many of them each counter slot had.
    per_slot: BTreeMap<u32, u64>,
}

/// The taken entries among `flows` (index and value) whose socket is not `in_use`.
pub(super) fn closed_flows(
    flows: impl IntoIterator<Item = (u32, HttpFlowEntry)>,
    in_use: &HashSet<u64>,
) -> ClosedFlows {
    let mut closed = ClosedFlows::default();
    for (index, entry) in flows {
        if entry.cookie != 0 && !in_use.contains(&entry.cookie) {
            closed.entries.push(index);
            *closed.per_slot.entry(entry.slot).or_default() += 1;
        }
    }
    closed
}

impl KernelCounters {
    /// Sets which listening ports of nginx are followed, and which of them speak TLS.
    pub fn set_nginx_ports(&mut self, ports: &[u16], tls_ports: &[u16]) -> Result<(), KernelError> {
        let name = HTTP_PORTS_MAP;
        let map_error = |source| KernelError::Map { name, source };
        let mut map: BpfHashMap<_, u32, u32> = self.map_mut(name)?.try_into().map_err(map_error)?;
        let stale: Vec<u32> = map.keys().filter_map(Result::ok).collect();
        for port in stale {
            map.remove(&port).map_err(map_error)?;
        }
        for &port in ports {
            let mode = if tls_ports.contains(&port) {
                PORT_TLS
            } else {
                PORT_PLAIN
            };
            map.insert(u32::from(port), mode, 0).map_err(map_error)?;
        }
        Ok(())
    }

    /// Follows `target`'s processes from now on. Processes the kernel added itself (children
    /// forked since) stay while they live; dead ones are removed.
    pub fn follow_nginx(&mut self, target: &NginxTarget) -> Result<(), KernelError> {
        let name = NGINX_TGIDS_MAP;
        let map_error = |source| KernelError::Map { name, source };
        let mut tgids: BpfHashMap<_, u32, u32> =
            self.map_mut(name)?.try_into().map_err(map_error)?;
        let dead: Vec<u32> = tgids
            .keys()
            .filter_map(Result::ok)
            .filter(|tgid| !Path::new(&format!("/proc/{tgid}")).exists())
            .collect();
        for tgid in dead {
            tgids.remove(&tgid).map_err(map_error)?;
        }
        for &tgid in &target.tgids {
            tgids.insert(tgid, 1, 0).map_err(map_error)?;
        }
        if target.cgroup_id != 0 {
            if !self.writes_flows() {
                self.end_flows_closed_unseen(target)?;
            }
            // Before any flow can start (the connection programs attach after), so that no
            // followed connection's bytes go unseen.
            self.attach_nginx_transfers()?;
        }
        let name = HTTP_TARGET_MAP;
        let map_error = |source| KernelError::Map { name, source };
        let mut array: Array<_, HttpTarget> = self.map_mut(name)?.try_into().map_err(map_error)?;
        let value = HttpTarget {
            cgroup_id: target.cgroup_id,
            netns_cookie: target.netns_cookie,
        };
        array.set(0, value, 0).map_err(map_error)?;
        self.follow_nginx_sockets(target)?;
        if target.cgroup_id == 0 {
            // Once the connection programs are gone, for the same reason.
            self.detach_nginx_transfers();
        }
        Ok(())
    }

    /// Whether any program that writes the flows or their counters is attached: the
    /// connection programs, or the byte programs (which write only for a followed nginx).
    pub(super) fn writes_flows(&self) -> bool {
        self.nginx_sockets.is_some() || !self.nginx_transfers.is_empty()
    }

    /// Attaches the [`NGINX_TRANSFER_PROGRAMS`], unless they are.
    pub(super) fn attach_nginx_transfers(&mut self) -> Result<(), KernelError> {
        if !self.nginx_transfers.is_empty() {
            return Ok(());
        }
        for &name in self.nginx_transfer_programs {
            let link = program::<BtfTracePoint>(&mut self.ebpf, name)?
                .attach()
                .map_err(program_error(name));
            match link {
                Ok(link) => self.nginx_transfers.push((name, link)),
                Err(error) => {
                    // Both or neither: sent bytes without received ones would be half the story.
                    self.detach_nginx_transfers();
                    return Err(error);
                }
            }
        }
        Ok(())
    }

    pub(super) fn detach_nginx_transfers(&mut self) {
        for (name, link) in std::mem::take(&mut self.nginx_transfers) {
            if let Ok(program) = program::<BtfTracePoint>(&mut self.ebpf, name) {
                let _ = program.detach(link);
            }
        }
    }

    /// Ends the flows whose sockets closed while nothing followed nginx (a daemon restarting,
    /// or nginx lost for a while): frees their slots and counts them closed, as the programs
    /// would have, so that active connections stay right. Called only while no program writes
    /// the flows or their counters: user space cannot add to a per-CPU counter atomically.
    pub(super) fn end_flows_closed_unseen(
        &mut self,
        nginx: &NginxTarget,
    ) -> Result<(), KernelError> {
        let Some(&pid) = nginx.tgids.first() else {
            return Ok(());
        };
        let sockets = match sockets::in_netns_of(pid, TcpSockets::read) {
            Ok(sockets) => sockets,
            Err(error) => {
                tracing::warn!(
                    %error,
                    "connections nginx closed while no daemon ran stay counted active"
                );
                return Ok(());
            }
        };
        let name = HTTP_FLOWS_MAP;
        let map_error = |source| KernelError::Map { name, source };
        let mut flows: Array<_, HttpFlowEntry> =
            self.map_mut(name)?.try_into().map_err(map_error)?;
        let entries = flows
            .iter()
            .enumerate()
            .map(|(index, entry)| Ok((index as u32, entry.map_err(map_error)?)))
            .collect::<Result<Vec<_>, KernelError>>()?;
        let closed = closed_flows(entries, &sockets.in_use);
        for &index in &closed.entries {
            flows
                .set(index, HttpFlowEntry::default(), 0)
                .map_err(map_error)?;
        }
        let name = HTTP_COUNTERS_MAP;
        let map_error = |source| KernelError::Map { name, source };
        let mut counters: PerCpuArray<_, EndpointCounters> =
            self.map_mut(name)?.try_into().map_err(map_error)?;
        for (&slot, &count) in &closed.per_slot {
            let mut values = counters.get(&slot, 0).map_err(map_error)?.to_vec();
            if let Some(first_cpu) = values.first_mut() {
                first_cpu.closed += count;
            }
            let values = PerCpuValues::try_from(values).map_err(|e| map_error(e.into()))?;
            counters.set(slot, values, 0).map_err(map_error)?;
        }
        if !closed.entries.is_empty() {
            tracing::info!(
                connections = closed.entries.len(),
                "counted nginx's connections that closed while no daemon ran as closed"
            );
        }
        Ok(())
    }

    /// Keeps the connection programs on `target`'s cgroup, and on no other.
    pub(super) fn follow_nginx_sockets(&mut self, target: &NginxTarget) -> Result<(), KernelError> {
        if !self.counts(Family::NginxConnections) {
            return Ok(());
        }
        if self.nginx_sockets.as_ref().map(|links| links.cgroup_id) == Some(target.cgroup_id) {
            return Ok(());
        }
        if let Some(links) = self.nginx_sockets.take() {
            // Their cgroup may be gone, and the links with it.
            let _ = program::<SockOps>(&mut self.ebpf, HTTP_SOCK_OPS_PROGRAM)?.detach(links.conn);
            let _ =
                program::<CgroupSock>(&mut self.ebpf, HTTP_RELEASE_PROGRAM)?.detach(links.close);
        }
        if target.cgroup_id == 0 {
            return Ok(());
        }
        let cgroup = open_cgroup(&target.cgroup_dir)?;
        // Single makes BPF links, which coexist with other programs on the cgroup.
        let conn = program::<SockOps>(&mut self.ebpf, HTTP_SOCK_OPS_PROGRAM)?
            .attach(&cgroup, CgroupAttachMode::Single)
            .map_err(program_error(HTTP_SOCK_OPS_PROGRAM))?;
        let close = match program::<CgroupSock>(&mut self.ebpf, HTTP_RELEASE_PROGRAM)?
            .attach(&cgroup, CgroupAttachMode::Single)
        {
            Ok(close) => close,
            Err(error) => {
                // Not one without the other: flows that never end would fill the table.
                let _ = program::<SockOps>(&mut self.ebpf, HTTP_SOCK_OPS_PROGRAM)?.detach(conn);
                return Err(program_error(HTTP_RELEASE_PROGRAM)(error));
            }
        };
        self.nginx_sockets = Some(NginxSocketLinks {
            cgroup_id: target.cgroup_id,
            conn,
            close,
        });
        Ok(())
    }

    /// nginx's counters per endpoint, summed over CPUs.
    pub(super) fn nginx_endpoints(&self) -> Result<Vec<(Endpoint, EndpointCounters)>, KernelError> {
        let map_error = |name| move |source| KernelError::Map { name, source };
        let slots: BpfHashMap<_, Endpoint, u32> = self
            .map(HTTP_ENDPOINTS_MAP)?
            .try_into()
            .map_err(map_error(HTTP_ENDPOINTS_MAP))?;
        let counters: PerCpuArray<_, EndpointCounters> = self
            .map(HTTP_COUNTERS_MAP)?
            .try_into()
            .map_err(map_error(HTTP_COUNTERS_MAP))?;
        slots
            .iter()
            .map(|entry| {
                let (endpoint, slot) = entry.map_err(map_error(HTTP_ENDPOINTS_MAP))?;
                let mut total = EndpointCounters::default();
                for per_cpu in counters
                    .get(&slot, 0)
                    .map_err(map_error(HTTP_COUNTERS_MAP))?
                    .iter()
                {
                    total.accumulate(per_cpu);
                }
                Ok((endpoint, total))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_of_sockets_no_longer_in_use_are_closed_per_counter_slot() {
        let flow = |cookie, slot| HttpFlowEntry {
            cookie,
            slot,
            ..HttpFlowEntry::default()
        };
        let flows = [
            (0, flow(0, 0)),
            (7, flow(70, 1)),
            (8, flow(80, 1)),
            (9, flow(90, 2)),
            (10, flow(100, 1)),
        ];
        let in_use = HashSet::from([80, 12345]);
        assert_eq!(
            closed_flows(flows, &in_use),
            ClosedFlows {
                entries: vec![7, 9, 10],
                per_slot: BTreeMap::from([(1, 2), (2, 1)]),
            }
        );
    }
}
