//! Which container a cgroup belongs to, and the per-container figures read from cgroupfs
//! (memory, processes). Kernel counters are per cgroup; a container is the subtree under its
//! top cgroup, recognised by path.
use std::{collections::VecDeque, fs, path::Path};

use super::cgroupfs::CgroupLayout;

/// What runs a cgroup.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Owner {
    /// An LXC container (LXD's too): `/lxc.payload.NAME` or, with older LXC, `/lxc/NAME`.
    Lxc(String),
    /// A Docker container, by its full id: `/system.slice/docker-ID.scope` (systemd driver)
    /// or `/docker/ID` (cgroupfs driver).
    Docker(String),
    /// A systemd service: `/system.slice/NAME.service`.
    Service(String),
    /// Everything else.
    Host,
}

impl Owner {
    /// The owner of the cgroup at `path` (relative to the hierarchy root) and the path of the
    /// owner's top cgroup.
    pub fn of(path: &str) -> (Self, String) {
        let mut parts = path.trim_start_matches('/').split('/');
        let first = parts.next().unwrap_or_default();
        let second = parts.next();
        let owned = |owner, depth: usize| {
            let top: Vec<&str> = path
                .trim_start_matches('/')
                .split('/')
                .take(depth)
                .collect();
            (owner, format!("/{}", top.join("/")))
        };
        if let Some(name) = first.strip_prefix("lxc.payload.").filter(|n| !n.is_empty()) {
            return owned(Self::Lxc(name.into()), 1);
        }
        match (first, second) {
            ("lxc", Some(name)) if !name.is_empty() => owned(Self::Lxc(name.into()), 2),
            ("docker", Some(id)) if !id.is_empty() => owned(Self::Docker(id.into()), 2),
            ("system.slice", Some(unit)) => {
                if let Some(id) = unit
                    .strip_prefix("docker-")
                    .and_then(|u| u.strip_suffix(".scope"))
                {
                    owned(Self::Docker(id.into()), 2)
                } else if let Some(name) = unit.strip_suffix(".service") {
                    owned(Self::Service(name.into()), 2)
                } else {
                    (Self::Host, "/".into())
                }
            }
            _ => (Self::Host, "/".into()),
        }
    }

    /// A container (LXC/LXD, Docker), as opposed to a systemd service or the host: what the
    /// network programs count by default.
    pub fn is_container(&self) -> bool {
        matches!(self, Self::Lxc(_) | Self::Docker(_))
    }

    /// The name shown for it when no manager names it: a Docker container's is the first
    /// 12 digits of its id, as `docker ps` shows.
    pub fn name(&self) -> &str {
        match self {
            Self::Lxc(name) | Self::Service(name) => name,
            Self::Docker(id) => id.get(..12).unwrap_or(id),
            Self::Host => "host",
        }
    }
}

/// The containers that have a cgroup now, found by listing only the directories where
/// container cgroups live (the root, `/lxc`, `/docker`, `/system.slice`): an idle container
/// has no kernel counters yet and must still be listed.
pub fn discover(layout: &CgroupLayout) -> Vec<(Owner, String)> {
    let mut found = Vec::new();
    for parent in ["", "lxc", "docker", "system.slice"] {
        let Ok(entries) = fs::read_dir(layout.unified.join(parent)) else {
            continue;
        };
        for entry in entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        {
            let path = match parent {
                "" => format!("/{}", entry.file_name().to_string_lossy()),
                parent => format!("/{parent}/{}", entry.file_name().to_string_lossy()),
            };
            let (owner, top) = Owner::of(&path);
            if owner != Owner::Host && top == path {
                found.push((owner, top));
            }
        }
    }
    found
}

/// Memory of a cgroup subtree, from cgroupfs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryUsage {
    /// Bytes charged: `memory.current` (v2) or `memory.usage_in_bytes` (v1).
    pub used_bytes: u64,
    /// The limit, `None` when unlimited.
    pub limit_bytes: Option<u64>,
    /// Swap in use: `memory.swap.current` (v2) or `memsw.usage - usage` (v1); 0 if unknown.
    pub swap_bytes: u64,
}

/// v1 reports "no limit" as a huge page-aligned number near `i64::MAX`.
const V1_UNLIMITED: u64 = 1 << 62;

/// Reads the memory figures of the cgroup at `top` (relative path), from the v2 hierarchy
/// when it has the memory controller there, else from the v1 `memory` hierarchy. `None` when
/// neither has the cgroup (it vanished, or no memory controller is mounted).
pub fn memory(layout: &CgroupLayout, top: &str) -> Option<MemoryUsage> {
    let relative = top.trim_start_matches('/');
    let v2 = layout.unified.join(relative);
    if let Some(used_bytes) = read_u64(&v2.join("memory.current")) {
        return Some(MemoryUsage {
            used_bytes,
            limit_bytes: read_u64(&v2.join("memory.max")),
            swap_bytes: read_u64(&v2.join("memory.swap.current")).unwrap_or(0),
        });
    }
    let v1 = layout.v1.get("memory")?.join(relative);
    let used_bytes = read_u64(&v1.join("memory.usage_in_bytes"))?;
    let with_swap = read_u64(&v1.join("memory.memsw.usage_in_bytes"));
    Some(MemoryUsage {
        used_bytes,
        limit_bytes: read_u64(&v1.join("memory.limit_in_bytes")).filter(|&l| l < V1_UNLIMITED),
        swap_bytes: with_swap.map_or(0, |total| total.saturating_sub(used_bytes)),
    })
}

/// The processes of a cgroup subtree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Processes {
    pub count: u32,
    /// A process of the topmost cgroup that has one: the container's init, for most.
    pub first_pid: Option<u32>,
}

/// Processes in the subtree at `top` (relative path) of the v2 hierarchy.
pub fn processes(layout: &CgroupLayout, top: &str) -> Processes {
    let mut found = Processes::default();
    // Breadth first, so the first pid found is in the top-most cgroup that has one.
    let mut pending = VecDeque::from([layout.unified.join(top.trim_start_matches('/'))]);
    while let Some(dir) = pending.pop_front() {
        // The subtree may change while it is walked: whatever vanishes counts as empty.
        if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
            found.count += procs.lines().count() as u32;
            found.first_pid = found
                .first_pid
                .or_else(|| procs.lines().next()?.trim().parse().ok());
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            let children = entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()));
            pending.extend(children.map(|e| e.path()));
        }
    }
    found
}

/// True when the cgroup at `top` is frozen: `cgroup.events` in v2, `freezer.state` in v1.
pub fn is_frozen(layout: &CgroupLayout, top: &str) -> bool {
    let relative = top.trim_start_matches('/');
    let v2 = fs::read_to_string(layout.unified.join(relative).join("cgroup.events"));
    if v2.is_ok_and(|events| events.lines().any(|line| line == "frozen 1")) {
        return true;
    }
    layout.v1.get("freezer").is_some_and(|freezer| {
        let state = fs::read_to_string(freezer.join(relative).join("freezer.state"));
        state.is_ok_and(|state| matches!(state.trim(), "FROZEN" | "FREEZING"))
    })
}

/// A number in a cgroupfs file; `None` when missing, unreadable or `max`.
fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, path::PathBuf};

    use super::*;

    #[test]
    fn lxc_and_lxd_payload_cgroups_belong_to_their_container() {
        assert_eq!(
            Owner::of("/lxc.payload.web1"),
            (Owner::Lxc("web1".into()), "/lxc.payload.web1".into())
        );
        assert_eq!(
            Owner::of("/lxc.payload.web1/system.slice/nginx.service"),
            (Owner::Lxc("web1".into()), "/lxc.payload.web1".into())
        );
        assert_eq!(
            Owner::of("/lxc/old-style/init"),
            (Owner::Lxc("old-style".into()), "/lxc/old-style".into())
        );
    }

    #[test]
    fn lxc_monitor_processes_are_host() {
        assert_eq!(Owner::of("/lxc.monitor.web1").0, Owner::Host);
        assert_eq!(Owner::of("/lxc.payload.").0, Owner::Host);
    }

    #[test]
    fn docker_cgroups_in_both_drivers() {
        let id = "4f1d3c2b1a0e9d8c7b6a5f4e3d2c1b0a";
        assert_eq!(
            Owner::of(&format!("/system.slice/docker-{id}.scope")),
            (
                Owner::Docker(id.into()),
                format!("/system.slice/docker-{id}.scope")
            )
        );
        assert_eq!(
            Owner::of(&format!("/docker/{id}/child")),
            (Owner::Docker(id.into()), format!("/docker/{id}"))
        );
        assert_eq!(Owner::Docker(id.into()).name(), "4f1d3c2b1a0e");
    }

    #[test]
    fn systemd_services_and_everything_else() {
        assert_eq!(
            Owner::of("/system.slice/nginx.service"),
            (
                Owner::Service("nginx".into()),
                "/system.slice/nginx.service".into()
            )
        );
        assert_eq!(Owner::of("/"), (Owner::Host, "/".into()));
        assert_eq!(
            Owner::of("/user.slice/user-0.slice/session-1.scope").0,
            Owner::Host
        );
        assert_eq!(Owner::of("/system.slice/cron.timer").0, Owner::Host);
    }

    fn fake_layout(name: &str) -> (PathBuf, CgroupLayout) {
        let root =
            std::env::temp_dir().join(format!("lynx-containers-{name}-{}", std::process::id()));
        let layout = CgroupLayout {
            unified: root.join("unified"),
            v1: HashMap::from([("memory".to_owned(), root.join("memory"))]),
        };
        (root, layout)
    }

    #[test]
    fn memory_prefers_v2_and_reads_max_as_unlimited() {
        let (root, layout) = fake_layout("v2");
        let dir = layout.unified.join("lxc.payload.a");
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join("memory.current"), "1048576\n").expect("write");
        fs::write(dir.join("memory.max"), "max\n").expect("write");
        fs::write(dir.join("memory.swap.current"), "4096\n").expect("write");
        let memory = memory(&layout, "/lxc.payload.a").expect("read");
        assert_eq!(
            memory,
            MemoryUsage {
                used_bytes: 1_048_576,
                limit_bytes: None,
                swap_bytes: 4096
            }
        );
        fs::remove_dir_all(root).expect("clean up");
    }

    #[test]
    fn memory_falls_back_to_v1_with_swap_from_memsw() {
        let (root, layout) = fake_layout("v1");
        let dir = layout.v1["memory"].join("lxc.payload.b");
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join("memory.usage_in_bytes"), "2000\n").expect("write");
        fs::write(dir.join("memory.limit_in_bytes"), "9223372036854771712\n").expect("write");
        fs::write(dir.join("memory.memsw.usage_in_bytes"), "2500\n").expect("write");
        let memory = memory(&layout, "/lxc.payload.b").expect("read");
        assert_eq!(
            memory,
            MemoryUsage {
                used_bytes: 2000,
                limit_bytes: None,
                swap_bytes: 500
            }
        );
        fs::write(dir.join("memory.limit_in_bytes"), "268435456\n").expect("write");
        assert_eq!(memory_limit(&layout), Some(268_435_456));
        assert_eq!(super::memory(&layout, "/gone"), None);
        fs::remove_dir_all(root).expect("clean up");

        fn memory_limit(layout: &CgroupLayout) -> Option<u64> {
            super::memory(layout, "/lxc.payload.b").and_then(|m| m.limit_bytes)
        }
    }

    #[test]
    fn discovery_lists_container_tops_only() {
        let (root, layout) = fake_layout("discover");
        for dir in [
            "lxc.payload.a/init.scope",
            "lxc.monitor.a",
            "lxc/old",
            "system.slice/nginx.service",
            "user.slice",
        ] {
            fs::create_dir_all(layout.unified.join(dir)).expect("mkdir");
        }
        let mut found = discover(&layout);
        found.sort();
        assert_eq!(
            found,
            [
                (Owner::Lxc("a".into()), "/lxc.payload.a".into()),
                (Owner::Lxc("old".into()), "/lxc/old".into()),
                (
                    Owner::Service("nginx".into()),
                    "/system.slice/nginx.service".into()
                ),
            ]
        );
        fs::remove_dir_all(root).expect("clean up");
    }

    #[test]
    fn processes_are_counted_over_the_subtree() {
        let (root, layout) = fake_layout("procs");
        let top = layout.unified.join("lxc.payload.c");
        fs::create_dir_all(top.join("init.scope")).expect("mkdir");
        fs::write(top.join("cgroup.procs"), "").expect("write");
        fs::write(top.join("init.scope/cgroup.procs"), "1\n20\n21\n").expect("write");
        let found = processes(&layout, "/lxc.payload.c");
        assert_eq!(
            found,
            Processes {
                count: 3,
                first_pid: Some(1)
            }
        );
        assert_eq!(processes(&layout, "/gone"), Processes::default());
        fs::remove_dir_all(root).expect("clean up");
    }
}
