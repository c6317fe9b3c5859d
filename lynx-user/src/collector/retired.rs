//! Counters of removed cgroups, kept with their owner. A container's inner cgroups come and go
//! (systemd's scopes and sessions, a nested engine's containers); what they counted stays the
//! container's, so its totals never go back when one of them is removed.
//!
//! A cgroup is attributed from the sample that last saw it alive: one created and removed
//! between two samples has no known owner, and its counters go with it.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{CgroupSample, Counters, containers::Owner};

/// The owners of the cgroups seen alive, and what each owner's removed cgroups counted.
#[derive(Debug, Default)]
pub struct Retired {
    owners: HashMap<u64, Owner>,
    kept: BTreeMap<Owner, Counters>,
}

impl Retired {
    /// Keeps the final counters of a removed cgroup with the owner it last had.
    pub fn retire(&mut self, id: u64, last: Counters) {
        if let Some(owner) = self.owners.remove(&id) {
            self.kept.entry(owner).or_default().accumulate(&last);
        }
    }

    /// Notes the owners of the cgroups alive now. An owner with none left is gone as a whole
    /// (a container stopped or deleted): its removed cgroups' counters are let go with it.
    pub fn alive(&mut self, cgroups: &[CgroupSample]) {
        self.owners = cgroups.iter().map(|c| (c.id, c.owner.clone())).collect();
        let alive: BTreeSet<&Owner> = self.owners.values().collect();
        self.kept.retain(|owner, _| alive.contains(owner));
    }

    /// What each owner's removed cgroups counted.
    pub fn totals(&self) -> &BTreeMap<Owner, Counters> {
        &self.kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures;

    fn cgroup(id: u64, path: &str, cpu_ns: u64) -> CgroupSample {
        fixtures::cgroup(id, path, cpu_ns, 0)
    }

    #[test]
    fn a_removed_inner_cgroup_stays_with_its_container_until_the_container_goes() {
        let web1 = Owner::Lxc("web1".into());
        let mut retired = Retired::default();
        retired.alive(&[
            cgroup(1, "/lxc.payload.web1", 10),
            cgroup(2, "/lxc.payload.web1/system.slice/cron.service", 5),
            cgroup(3, "/system.slice/ssh.service", 7),
        ]);
        let last = |cpu_ns| Counters {
            cpu_ns,
            ..Counters::default()
        };
        // The cron job's cgroup is removed; it counted 6 ns by its end.
        retired.retire(2, last(6));
        // One never seen alive has no owner to keep it.
        retired.retire(9, last(100));
        retired.alive(&[
            cgroup(1, "/lxc.payload.web1", 12),
            cgroup(3, "/system.slice/ssh.service", 7),
        ]);
        assert_eq!(retired.totals().len(), 1);
        assert_eq!(retired.totals()[&web1].cpu_ns, 6);

        // The container stops: its cgroups are all gone, and what they kept with them.
        retired.retire(1, last(12));
        retired.alive(&[cgroup(3, "/system.slice/ssh.service", 8)]);
        assert!(retired.totals().is_empty());
    }
}
