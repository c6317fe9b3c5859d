//! Per-container disk usage, from LXD: what each disk device of an instance uses, its quota,
//! and what the instance can still write there.
//!
//! Plain functions over what the LXD client read (devices, usage, pools), so that every rule
//! is tested without LXD. LXD measures usage itself (btrfs qgroups, zfs properties, lvm, ceph,
//! project quotas on a `dir` pool's filesystem); Lynx never walks a container's files.
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::lxd::{DiskDevice, DiskState};

/// Why a device has no `used_bytes`: a host path is no storage volume.
pub const HOST_PATH: &str = "a host path, not a storage volume: LXD measures no usage for it";

/// One disk device of an instance, as published in the snapshot (`containers[].disk`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskInfo {
    /// Mount point inside the instance.
    pub path: String,
    /// Storage pool; `None` for a host path.
    pub pool: Option<String>,
    /// Bytes used on the device's volume, as LXD measured them.
    pub used_bytes: Option<u64>,
    /// The device's `size` quota (or the volume size LXD reports).
    pub limit_bytes: Option<u64>,
    /// What the instance can still write there: the quota's rest, capped by the pool's free
    /// space; the pool's free space without a quota.
    pub free_bytes: Option<u64>,
    /// `used_bytes` is at least the configured fraction of `limit_bytes`.
    pub nearly_full: bool,
    /// Why `used_bytes` is `None`.
    pub reason: Option<String>,
}

/// What is known about one storage pool.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolFacts {
    /// LXD's driver (`dir`, `btrfs`, …); empty when unknown.
    pub driver: String,
    /// Free bytes on the pool; `None` when its resources could not be read.
    pub free: Option<u64>,
}

/// The disk devices of one instance, with `usage` as LXD's instance state gave it, or why the
/// state could not be read.
pub fn derive(
    devices: &BTreeMap<String, DiskDevice>,
    usage: Result<&BTreeMap<String, DiskState>, &str>,
    pools: &BTreeMap<String, PoolFacts>,
    full_fraction: f64,
) -> BTreeMap<String, DiskInfo> {
    devices
        .iter()
        .map(|(name, device)| {
            let info = derive_one(name, device, usage, pools, full_fraction);
            (name.clone(), info)
        })
        .collect()
}

fn derive_one(
    name: &str,
    device: &DiskDevice,
    usage: Result<&BTreeMap<String, DiskState>, &str>,
    pools: &BTreeMap<String, PoolFacts>,
    full_fraction: f64,
) -> DiskInfo {
    let Some(pool) = &device.pool else {
        return DiskInfo {
            path: device.path.clone(),
            reason: Some(HOST_PATH.to_owned()),
            ..DiskInfo::default()
        };
    };
    let facts = pools.get(pool).cloned().unwrap_or_default();
    let state = usage.ok().and_then(|usage| usage.get(name));
    let used = state.map(|s| s.usage);
    let limit = device.size.or(state.and_then(|s| s.total));
    let reason = match (used, usage) {
        (Some(_), _) => None,
        (None, Err(error)) => Some(format!("LXD's instance state could not be read: {error}")),
        (None, Ok(_)) if facts.driver == "dir" => Some(format!(
            "pool {pool} is a dir pool: LXD measures its volumes only where its filesystem \
             has project quotas"
        )),
        (None, Ok(_)) => Some(format!(
            "LXD reports no usage for this device (pool {pool}, driver {})",
            if facts.driver.is_empty() {
                "unknown"
            } else {
                &facts.driver
            }
        )),
    };
    let free = match (limit, used) {
        (Some(limit), Some(used)) => {
            let rest = limit.saturating_sub(used);
            Some(facts.free.map_or(rest, |free| rest.min(free)))
        }
        (Some(_), None) => None,
        (None, _) => facts.free,
    };
    let nearly_full = match (limit, used) {
        (Some(limit), Some(used)) if limit > 0 => used as f64 >= full_fraction * limit as f64,
        _ => false,
    };
    DiskInfo {
        path: device.path.clone(),
        pool: Some(pool.clone()),
        used_bytes: used,
        limit_bytes: limit,
        free_bytes: free,
        nearly_full,
        reason,
    }
}

/// Remembers which devices are over the threshold, so that each crossing is logged once.
#[derive(Debug, Default)]
pub struct FullTracker {
    over: BTreeSet<(String, String)>,
}

/// A device that crossed the threshold since the last look.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Crossing {
    /// Now at or over it: instance, device, used and limit bytes.
    Over {
        instance: String,
        device: String,
        used: u64,
        limit: u64,
    },
    /// Back under it (or gone).
    Under { instance: String, device: String },
}

impl FullTracker {
    /// The crossings between the last call and `disks`, the current state of every instance.
    pub fn update(
        &mut self,
        disks: &BTreeMap<String, BTreeMap<String, DiskInfo>>,
    ) -> Vec<Crossing> {
        let mut now = BTreeSet::new();
        let mut crossings = Vec::new();
        for (instance, devices) in disks {
            for (device, info) in devices.iter().filter(|(_, info)| info.nearly_full) {
                let key = (instance.clone(), device.clone());
                if !self.over.contains(&key) {
                    crossings.push(Crossing::Over {
                        instance: instance.clone(),
                        device: device.clone(),
                        used: info.used_bytes.unwrap_or_default(),
                        limit: info.limit_bytes.unwrap_or_default(),
                    });
                }
                now.insert(key);
            }
        }
        for (instance, device) in self.over.difference(&now) {
            // A deleted instance is not "back under": only say so for one still there.
            if disks.contains_key(instance) {
                crossings.push(Crossing::Under {
                    instance: instance.clone(),
                    device: device.clone(),
                });
            }
        }
        self.over = now;
        crossings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn device(pool: Option<&str>, size: Option<u64>) -> DiskDevice {
        DiskDevice {
            path: "/".into(),
            pool: pool.map(str::to_owned),
            size,
        }
    }

    fn pools() -> BTreeMap<String, PoolFacts> {
        BTreeMap::from([
            (
                "fast".to_owned(),
                PoolFacts {
                    driver: "btrfs".into(),
                    free: Some(500 * MIB),
                },
            ),
            (
                "default".to_owned(),
                PoolFacts {
                    driver: "dir".into(),
                    free: Some(9000 * MIB),
                },
            ),
        ])
    }

    fn usage(pairs: &[(&str, u64)]) -> BTreeMap<String, DiskState> {
        pairs
            .iter()
            .map(|&(name, usage)| {
                let state = DiskState { usage, total: None };
                (name.to_owned(), state)
            })
            .collect()
    }

    fn one(device: DiskDevice, usage: Result<&BTreeMap<String, DiskState>, &str>) -> DiskInfo {
        let devices = BTreeMap::from([("root".to_owned(), device)]);
        derive(&devices, usage, &pools(), 0.9)
            .remove("root")
            .unwrap()
    }

    #[test]
    fn a_quota_gives_limit_and_free_as_its_rest() {
        let used = usage(&[("root", 20 * MIB)]);
        let info = one(device(Some("fast"), Some(64 * MIB)), Ok(&used));
        assert_eq!(info.used_bytes, Some(20 * MIB));
        assert_eq!(info.limit_bytes, Some(64 * MIB));
        assert_eq!(info.free_bytes, Some(44 * MIB));
        assert!(!info.nearly_full);
        assert_eq!(info.reason, None);
        assert_eq!(info.pool.as_deref(), Some("fast"));
    }

    #[test]
    fn free_is_capped_by_the_pool() {
        let used = usage(&[("root", MIB)]);
        let info = one(device(Some("fast"), Some(4096 * MIB)), Ok(&used));
        assert_eq!(info.free_bytes, Some(500 * MIB));
    }

    #[test]
    fn without_a_quota_free_is_the_pools() {
        let used = usage(&[("root", 3 * MIB)]);
        let info = one(device(Some("fast"), None), Ok(&used));
        assert_eq!(
            (info.used_bytes, info.limit_bytes, info.free_bytes),
            (Some(3 * MIB), None, Some(500 * MIB))
        );
        assert!(!info.nearly_full, "no quota, no flag");
    }

    #[test]
    fn the_flag_is_set_at_the_fraction() {
        let limit = 64 * MIB;
        let at = (0.9 * limit as f64).ceil() as u64;
        for (used, full) in [
            (at - 1, false),
            (at, true),
            (limit, true),
            (limit + 1, true),
        ] {
            let state = usage(&[("root", used)]);
            let info = one(device(Some("fast"), Some(limit)), Ok(&state));
            assert_eq!(info.nearly_full, full, "{used}");
        }
        let state = usage(&[("root", 58 * MIB)]);
        let devices = BTreeMap::from([("root".to_owned(), device(Some("fast"), Some(limit)))]);
        assert!(derive(&devices, Ok(&state), &pools(), 0.9)["root"].nearly_full);
        assert!(!derive(&devices, Ok(&state), &pools(), 0.95)["root"].nearly_full);
    }

    #[test]
    fn a_dir_pool_says_why_usage_is_missing() {
        let none = usage(&[]);
        let info = one(device(Some("default"), None), Ok(&none));
        assert_eq!((info.used_bytes, info.limit_bytes), (None, None));
        assert_eq!(info.free_bytes, Some(9000 * MIB), "what it can still write");
        let reason = info.reason.unwrap();
        assert!(
            reason.contains("dir pool") && reason.contains("project quotas"),
            "{reason}"
        );
        assert!(!info.nearly_full);
    }

    #[test]
    fn a_quota_without_usage_has_no_free() {
        let none = usage(&[]);
        let info = one(device(Some("default"), Some(64 * MIB)), Ok(&none));
        assert_eq!(
            (info.used_bytes, info.limit_bytes, info.free_bytes),
            (None, Some(64 * MIB), None)
        );
    }

    #[test]
    fn a_host_path_and_an_unreadable_state_are_explained() {
        let none = usage(&[]);
        let info = one(device(None, None), Ok(&none));
        assert_eq!(info.reason.as_deref(), Some(HOST_PATH));
        assert_eq!((info.pool, info.free_bytes), (None, None));
        let info = one(device(Some("fast"), Some(MIB)), Err("LXD GET …: error 404"));
        assert_eq!(
            info.reason.as_deref(),
            Some("LXD's instance state could not be read: LXD GET …: error 404")
        );
        let info = one(device(Some("elsewhere"), None), Ok(&none));
        assert_eq!(
            info.reason.as_deref(),
            Some("LXD reports no usage for this device (pool elsewhere, driver unknown)")
        );
        assert_eq!(info.free_bytes, None, "unknown pool");
    }

    #[test]
    fn lxds_total_is_the_limit_when_the_device_sets_none() {
        let state = BTreeMap::from([(
            "root".to_owned(),
            DiskState {
                usage: 10 * MIB,
                total: Some(100 * MIB),
            },
        )]);
        let info = one(device(Some("fast"), None), Ok(&state));
        assert_eq!(info.limit_bytes, Some(100 * MIB));
        assert_eq!(info.free_bytes, Some(90 * MIB));
    }

    #[test]
    fn crossings_are_reported_once_each_way() {
        let mut tracker = FullTracker::default();
        let disks = |used: u64| {
            let info = DiskInfo {
                used_bytes: Some(used),
                limit_bytes: Some(100),
                nearly_full: used >= 90,
                ..DiskInfo::default()
            };
            BTreeMap::from([(
                "web1".to_owned(),
                BTreeMap::from([("root".to_owned(), info)]),
            )])
        };
        assert_eq!(tracker.update(&disks(10)), []);
        let over = Crossing::Over {
            instance: "web1".into(),
            device: "root".into(),
            used: 95,
            limit: 100,
        };
        assert_eq!(tracker.update(&disks(95)), [over]);
        assert_eq!(tracker.update(&disks(96)), [], "once");
        let under = Crossing::Under {
            instance: "web1".into(),
            device: "root".into(),
        };
        assert_eq!(tracker.update(&disks(50)), [under]);
        assert_eq!(tracker.update(&disks(50)), []);
        tracker.update(&disks(95));
        assert_eq!(
            tracker.update(&BTreeMap::new()),
            [],
            "deleted, not back under"
        );
    }
}
