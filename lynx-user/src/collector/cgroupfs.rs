//! cgroupfs: where the cgroup hierarchies are mounted and which path a cgroup v2 id names.
//!
//! `bpf_get_current_cgroup_id()` returns the id of the task's cgroup in the v2 hierarchy,
//! which is the inode number of its directory there. That hierarchy is `/sys/fs/cgroup` on a
//! pure v2 host and `/sys/fs/cgroup/unified` on a hybrid one; both are found from
//! `/proc/self/mountinfo` rather than assumed.
use std::{
    collections::HashMap,
    fs, io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// Errors of reading the cgroup hierarchy.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("no cgroup v2 hierarchy is mounted (none in /proc/self/mountinfo); lynx needs one")]
    NoUnifiedHierarchy,
}

/// The cgroup mounts of this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupLayout {
    /// Mount point of the cgroup v2 hierarchy.
    pub unified: PathBuf,
    /// Mount points of v1 hierarchies by controller (`cpuacct`, `memory`, ...): empty on a
    /// pure v2 host.
    pub v1: HashMap<String, PathBuf>,
}

impl CgroupLayout {
    /// Reads this process's mount table.
    pub fn detect() -> Result<Self, CgroupError> {
        let path = Path::new("/proc/self/mountinfo");
        let text = fs::read_to_string(path).map_err(|source| CgroupError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_mountinfo(&text)
    }

    /// Parses `/proc/PID/mountinfo` text (proc(5)).
    pub fn from_mountinfo(text: &str) -> Result<Self, CgroupError> {
        let mut unified = None;
        let mut v1 = HashMap::new();
        for line in text.lines() {
            // `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER`
            let Some((mount, fs_part)) = line.split_once(" - ") else {
                continue;
            };
            let mount: Vec<&str> = mount.split(' ').collect();
            let fs_part: Vec<&str> = fs_part.split(' ').collect();
            let (Some(root), Some(mount_point), Some(fs_type)) =
                (mount.get(3), mount.get(4), fs_part.first())
            else {
                continue;
            };
            // A bind mount of a sub-cgroup (as inside a container) does not show every cgroup.
            if *root != "/" {
                continue;
            }
            let mount_point = PathBuf::from(unescape_octal(mount_point));
            match *fs_type {
                "cgroup2" if unified.is_none() => unified = Some(mount_point),
                "cgroup" => {
                    let options = fs_part.get(2).copied().unwrap_or_default();
                    for controller in options.split(',') {
                        if !matches!(controller, "rw" | "ro") && !controller.contains('=') {
                            v1.insert(controller.to_owned(), mount_point.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        let unified = unified.ok_or(CgroupError::NoUnifiedHierarchy)?;
        Ok(Self { unified, v1 })
    }

    /// True when v1 controllers are mounted beside the v2 hierarchy.
    pub fn is_hybrid(&self) -> bool {
        !self.v1.is_empty()
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|digits| bytes[i] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d)));
        match octal {
            Some(digits) => {
                out.push(
                    digits
                        .iter()
                        .fold(0u8, |n, d| n.wrapping_mul(8) + (d - b'0')),
                );
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Maps cgroup v2 ids to their paths, caching the answers.
///
/// Ids are never reused by the kernel, so a cached answer stays right for as long as a
/// directory with that inode number is at that path; the hierarchy is walked again only when
/// an id is not in the cache.
#[derive(Debug)]
pub struct CgroupResolver {
    root: PathBuf,
    paths: HashMap<u64, String>,
}

impl CgroupResolver {
    /// A resolver over the v2 hierarchy mounted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            paths: HashMap::new(),
        }
    }

    /// Mount point of the hierarchy this resolver walks.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Paths (relative to the hierarchy's root, starting with `/`) of those `ids` that still
    /// exist. An id whose cgroup is gone, even if it vanishes while being looked up, is left
    /// out: it is not an error.
    pub fn resolve(&mut self, ids: impl IntoIterator<Item = u64>) -> HashMap<u64, String> {
        let ids: Vec<u64> = ids.into_iter().collect();
        if ids.iter().any(|id| !self.paths.contains_key(id)) {
            self.rescan();
        }
        ids.into_iter()
            .filter_map(|id| {
                let path = self.paths.get(&id)?;
                let still_there = fs::metadata(self.absolute(path)).is_ok_and(|m| m.ino() == id);
                still_there.then(|| (id, path.clone()))
            })
            .collect()
    }

    /// The absolute path of a cgroup path relative to the hierarchy's root.
    pub fn absolute(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    fn rescan(&mut self) {
        self.paths.clear();
        let mut pending = vec![(self.root.clone(), String::from("/"))];
        while let Some((dir, relative)) = pending.pop() {
            // Any entry may vanish mid-walk (a container stopping): skip it.
            let Ok(meta) = fs::metadata(&dir) else {
                continue;
            };
            self.paths.insert(meta.ino(), relative.clone());
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let child = match relative.as_str() {
                        "/" => format!("/{name}"),
                        parent => format!("{parent}/{name}"),
                    };
                    pending.push((entry.path(), child));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
24 29 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
30 24 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
35 30 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,cpu,cpuacct
36 30 0:32 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,memory
37 30 0:33 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:17 - cgroup cgroup rw,xattr,name=systemd
";

    const PURE_V2: &str = "\
24 29 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
30 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
40 30 0:26 /lxc.payload.web1 /mnt/inner rw,relatime shared:9 - cgroup2 cgroup2 rw
";

    #[test]
    fn hybrid_host_has_unified_and_v1_controllers() {
        let layout = CgroupLayout::from_mountinfo(HYBRID).expect("hybrid layout parses");
        assert_eq!(layout.unified, Path::new("/sys/fs/cgroup/unified"));
        assert_eq!(
            layout.v1["cpuacct"],
            Path::new("/sys/fs/cgroup/cpu,cpuacct")
        );
        assert_eq!(layout.v1["cpu"], Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(layout.v1["memory"], Path::new("/sys/fs/cgroup/memory"));
        assert!(
            !layout.v1.contains_key("name=systemd"),
            "named hierarchies are not controllers"
        );
        assert!(layout.is_hybrid());
    }

    #[test]
    fn pure_v2_host_ignores_bind_mounts_of_sub_cgroups() {
        let layout = CgroupLayout::from_mountinfo(PURE_V2).expect("v2 layout parses");
        assert_eq!(layout.unified, Path::new("/sys/fs/cgroup"));
        assert!(!layout.is_hybrid());
    }

    #[test]
    fn no_cgroup2_mount_is_an_error() {
        let only_v1 = HYBRID
            .lines()
            .filter(|l| !l.contains("cgroup2"))
            .collect::<Vec<_>>();
        let error = CgroupLayout::from_mountinfo(&only_v1.join("\n")).unwrap_err();
        assert!(matches!(error, CgroupError::NoUnifiedHierarchy), "{error}");
    }

    #[test]
    fn mount_points_with_escaped_spaces_are_decoded() {
        assert_eq!(unescape_octal(r"/mnt/cg\040two"), "/mnt/cg two");
        assert_eq!(unescape_octal(r"/plain\09"), r"/plain\09");
    }

    #[test]
    fn resolver_maps_inodes_to_relative_paths_and_drops_vanished_ones() {
        let root = std::env::temp_dir().join(format!("lynx-resolver-{}", std::process::id()));
        fs::create_dir_all(root.join("a/b")).expect("create test tree");
        let ino = |p: &Path| fs::metadata(p).expect("stat").ino();
        let (root_id, b_id) = (ino(&root), ino(&root.join("a/b")));

        let mut resolver = CgroupResolver::new(&root);
        let paths = resolver.resolve([root_id, b_id, u64::MAX]);
        assert_eq!(paths[&root_id], "/");
        assert_eq!(paths[&b_id], "/a/b");
        assert!(!paths.contains_key(&u64::MAX), "unknown ids are skipped");

        fs::remove_dir(root.join("a/b")).expect("remove b");
        assert!(
            resolver.resolve([b_id]).is_empty(),
            "a removed cgroup is not listed"
        );
        fs::remove_dir_all(&root).expect("clean up");
    }
}
