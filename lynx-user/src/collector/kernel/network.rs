//! The network programs on the containers' cgroups, attached and detached as containers come
//! and go.
use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use aya::programs::{
    CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, cgroup_skb::CgroupSkbLinkId,
};
use lynx_common::{
    HOST_NET_EGRESS_PROGRAM, HOST_NET_INGRESS_PROGRAM, NET_EGRESS_PROGRAM, NET_INGRESS_PROGRAM,
};

use super::*;
use crate::collector::features::Family;

/// A pair of network programs, each with the way of the packets it counts.
pub(super) type NetworkPrograms = [(&'static str, CgroupSkbAttachType); 2];

/// The programs on containers' cgroups, which count into the attachment's cgroup storage
/// (keyed by [`NET_INGRESS_ATTACH_TYPE`] and [`NET_EGRESS_ATTACH_TYPE`]).
pub(super) const CONTAINER_NETWORK_PROGRAMS: NetworkPrograms = [
    (NET_INGRESS_PROGRAM, CgroupSkbAttachType::Ingress),
    (NET_EGRESS_PROGRAM, CgroupSkbAttachType::Egress),
];

/// The programs on the root cgroup, which count per socket cgroup.
pub(super) const HOST_NETWORK_PROGRAMS: NetworkPrograms = [
    (HOST_NET_INGRESS_PROGRAM, CgroupSkbAttachType::Ingress),
    (HOST_NET_EGRESS_PROGRAM, CgroupSkbAttachType::Egress),
];

/// Links of network programs to one cgroup.
pub(super) type NetworkLinks = Vec<(&'static str, CgroupSkbLinkId)>;

impl KernelCounters {
    /// Has the network programs count the packets of exactly the cgroup subtrees `dirs` (the
    /// containers' top cgroups): attaches to new ones and detaches from the others. Returns
    /// the cgroups it could not attach to, and why; they are tried again at the next call.
    /// A cgroup found again at the same path with a new id (a container restarted in between)
    /// is attached anew.
    pub fn count_network_of(&mut self, dirs: &[PathBuf]) -> Vec<(PathBuf, KernelError)> {
        if !self.counts(Family::Network) {
            return Vec::new();
        }
        let wanted: BTreeMap<u64, &PathBuf> = dirs
            .iter()
            .filter_map(|dir| Some((fs::metadata(dir).ok()?.ino(), dir)))
            .collect();
        let gone: Vec<u64> = self
            .network_links
            .keys()
            .filter(|id| !wanted.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            self.detach_network(id);
        }
        let new: Vec<&PathBuf> = wanted
            .into_iter()
            .filter(|(id, _)| !self.network_links.contains_key(id))
            .map(|(_, dir)| dir)
            .collect();
        new.into_iter()
            .filter_map(
                |dir| match self.attach_network(dir, CONTAINER_NETWORK_PROGRAMS) {
                    Ok((id, links)) => {
                        self.network_links.insert(id, links);
                        None
                    }
                    Err(error) => Some((dir.clone(), error)),
                },
            )
            .collect()
    }

    /// Attaches both of `programs` to the cgroup at `dir`, or neither; returns the cgroup's
    /// id and the links.
    pub(super) fn attach_network(
        &mut self,
        dir: &Path,
        programs: NetworkPrograms,
    ) -> Result<(u64, NetworkLinks), KernelError> {
        let cgroup = open_cgroup(dir)?;
        let id = cgroup.metadata().map_err(cgroup_error(dir))?.ino();
        let mut links = Vec::with_capacity(programs.len());
        for (name, direction) in programs {
            let program: &mut CgroupSkb = program(&mut self.ebpf, name)?;
            // Single makes a BPF link, which coexists with other programs on the cgroup and
            // its descendants; AllowMultiple is refused for links (see shared/TOOLCHAIN.md).
            match program.attach(&cgroup, direction, CgroupAttachMode::Single) {
                Ok(link) => links.push((name, link)),
                Err(error) => {
                    self.detach_links(links);
                    return Err(program_error(name)(error));
                }
            }
        }
        Ok((id, links))
    }

    /// Detaches the network programs from cgroup `id`.
    pub(super) fn detach_network(&mut self, id: u64) {
        let links = self.network_links.remove(&id).unwrap_or_default();
        self.detach_links(links);
    }

    /// A removed cgroup has already let go of its programs, so failures are of no consequence.
    pub(super) fn detach_links(&mut self, links: NetworkLinks) {
        for (name, link) in links {
            if let Ok(program) = program::<CgroupSkb>(&mut self.ebpf, name) {
                let _ = program.detach(link);
            }
        }
    }
}
