//! The maps a daemon pins under bpffs, so that its successor continues the counts: where they
//! live, which pins this build may reuse, and the other layout versions' pins it removes.
use std::{
    collections::HashMap,
    fmt, fs,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
};

use aya::maps::MapInfo;
use lynx_common::{MAPS_LAYOUT_VERSION, PINNED_MAPS};

use super::{
    kernel::{EBPF_OBJECT, KernelError},
    preflight,
};

/// Pin paths of the pinned maps under `dir`, creating it (and mounting bpffs at
/// `/sys/fs/bpf` when `dir` is below it and nothing is mounted there). Pins, and so bpffs,
/// must outlive the daemon: this mount is deliberately not undone. The directories are
/// the daemon user's alone (0700): a pinned map can be opened by anyone who can reach its path, and
/// writing Lynx's maps would forge its counts. A pin this build cannot use (another map
/// shape under the same layout version) is removed, so that the load makes the map anew.
pub(super) fn pin_paths(dir: &Path) -> Result<Vec<(&'static str, PathBuf)>, KernelError> {
    let versioned = dir.join(format!("v{MAPS_LAYOUT_VERSION}"));
    let error = |source| KernelError::PinDir {
        path: versioned.clone(),
        source,
    };
    preflight::ensure_bpffs(dir).map_err(error)?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&versioned)
        .map_err(|e| {
            // bpffs is root's, mode 0700, where systemd mounts it.
            preflight::needing(e, "CAP_DAC_OVERRIDE", "a pin directory in root's bpffs")
        })
        .map_err(error)?;
    for private in [dir, versioned.as_path()] {
        fs::set_permissions(private, fs::Permissions::from_mode(0o700)).map_err(error)?;
    }
    for removed in remove_other_layouts(dir) {
        tracing::info!(path = %removed.display(), "removed maps pinned by another layout version");
    }
    let paths: Vec<(&'static str, PathBuf)> = PINNED_MAPS
        .iter()
        .map(|&name| (name, versioned.join(name)))
        .collect();
    let expected = object_map_shapes()?;
    let pinned = |path: &Path| {
        let info = MapInfo::from_pin(path).ok()?;
        Some(MapShape {
            map_type: info.map_type().ok()? as u32,
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
        })
    };
    for (name, path, found, wanted) in misshapen_pins(&paths, &expected, pinned) {
        tracing::warn!(
            map = name,
            pinned = %found,
            expected = %wanted,
            path = %path.display(),
            "a pinned map is not of the shape this build uses: removed, its counts start anew"
        );
        fs::remove_file(&path).map_err(|source| KernelError::PinDir { path, source })?;
    }
    Ok(paths)
}

/// What the kernel keeps of a map's definition: a pinned map is reused only when all of it is
/// what the object defines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MapShape {
    /// `BPF_MAP_TYPE_*`.
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
}

impl fmt::Display for MapShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "type {}, key {} B, value {} B, {} entries",
            self.map_type, self.key_size, self.value_size, self.max_entries
        )
    }
}

/// The shape of every map the embedded object defines, by name.
fn object_map_shapes() -> Result<HashMap<String, MapShape>, KernelError> {
    let object =
        aya_obj::Object::parse(EBPF_OBJECT).map_err(|e| KernelError::Object(e.to_string()))?;
    Ok(object
        .maps
        .iter()
        .map(|(name, map)| {
            let shape = MapShape {
                map_type: map.map_type(),
                key_size: map.key_size(),
                value_size: map.value_size(),
                max_entries: map.max_entries(),
            };
            (name.clone(), shape)
        })
        .collect())
}

/// The pins among `paths` whose map `pinned` reports a shape other than `expected`'s for its
/// name: name, path, the shape found and the one wanted. A path with no map is not one.
fn misshapen_pins(
    paths: &[(&'static str, PathBuf)],
    expected: &HashMap<String, MapShape>,
    pinned: impl Fn(&Path) -> Option<MapShape>,
) -> Vec<(&'static str, PathBuf, MapShape, MapShape)> {
    paths
        .iter()
        .filter_map(|(name, path)| {
            let wanted = *expected.get(*name)?;
            let found = pinned(path)?;
            (found != wanted).then(|| (*name, path.clone(), found, wanted))
        })
        .collect()
}

/// Removes the pins of other layout versions under `dir` (`v1`, `v2`...) and returns them.
/// This daemon can never reuse them, and a pinned map keeps its kernel memory until it is
/// unpinned, so every upgrade would leave its maps behind. Called only under the daemon lock
/// of `dir`, so no other daemon is counting into them.
fn remove_other_layouts(dir: &Path) -> Vec<PathBuf> {
    let current = format!("v{MAPS_LAYOUT_VERSION}");
    let is_other_layout = |name: &str| {
        name != current
            && name
                .strip_prefix('v')
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| entry.file_name().to_str().is_some_and(is_other_layout))
        .map(|entry| entry.path())
        .filter(|path| fs::remove_dir_all(path).is_ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use lynx_common::{CGROUP_CPU_MAP, CGROUP_IO_MAP, DROPS_MAP};

    use super::*;
    use crate::test_support::TempDir;

    #[test]
    fn pins_of_another_shape_are_found_and_absent_ones_are_not() {
        let shape = |value_size| MapShape {
            map_type: 5,
            key_size: 8,
            value_size,
            max_entries: 16384,
        };
        let expected = HashMap::from([
            (CGROUP_CPU_MAP.to_owned(), shape(8)),
            (CGROUP_IO_MAP.to_owned(), shape(32)),
            (DROPS_MAP.to_owned(), shape(8)),
        ]);
        let paths =
            [CGROUP_CPU_MAP, CGROUP_IO_MAP, DROPS_MAP].map(|name| (name, PathBuf::from(name)));
        let pinned = |path: &Path| match path.to_str() {
            Some(CGROUP_CPU_MAP) => Some(shape(16)),
            Some(CGROUP_IO_MAP) => Some(shape(32)),
            _ => None,
        };
        assert_eq!(
            misshapen_pins(&paths, &expected, pinned),
            [(
                CGROUP_CPU_MAP,
                PathBuf::from(CGROUP_CPU_MAP),
                shape(16),
                shape(8)
            )]
        );
        assert_eq!(
            shape(16).to_string(),
            "type 5, key 8 B, value 16 B, 16384 entries"
        );
    }

    #[test]
    fn the_object_defines_every_pinned_map() {
        // A plain `cargo test` embeds no object (see build.rs); xtask always embeds one.
        if EBPF_OBJECT.is_empty() && std::env::var_os("CI").is_none() {
            eprintln!("no eBPF object embedded: build with `cargo xtask test` to check it");
            return;
        }
        let shapes = object_map_shapes().expect("the object parses");
        for name in PINNED_MAPS {
            assert!(shapes.contains_key(name), "{name} is not in the object");
        }
        assert_eq!(shapes[CGROUP_CPU_MAP].value_size, 8);
    }

    #[test]
    fn pins_of_other_layout_versions_are_removed_and_nothing_else() {
        let dir = TempDir::new("pin-layouts");
        let current = format!("v{MAPS_LAYOUT_VERSION}");
        for sub in ["v1", "v2", current.as_str(), "vx", "v", "maps.debug"] {
            fs::create_dir(dir.path().join(sub)).expect("mkdir");
        }
        fs::write(dir.path().join("v1").join(CGROUP_CPU_MAP), b"pin").expect("a pin");
        fs::write(dir.path().join("v9"), b"a file, not a layout").expect("a file");

        let mut removed = remove_other_layouts(dir.path());
        removed.sort();
        assert_eq!(removed, vec![dir.path().join("v1"), dir.path().join("v2")]);
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["maps.debug", "v", current.as_str(), "v9", "vx"]);
    }
}
