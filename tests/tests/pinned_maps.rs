//! The maps a daemon pins: root's alone, and reused only when they are of the shape this build
//! defines. A pin of another shape under the same layout version (left by a build that forgot
//! to raise the version, or put there by hand) must not be written into as if it were Lynx's.
use std::{
    ffi::CString,
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use aya::maps::MapInfo;
use lynx::collector::{
    cgroupfs::CgroupLayout,
    kernel::{KernelCounters, LoadOptions},
};
use lynx_common::{CGROUP_CPU_MAP, MAPS_LAYOUT_VERSION};
use lynx_tests::privileged;

/// A pin directory of the test's own, removed on drop.
struct PinDir(PathBuf);

impl PinDir {
    fn new(name: &str) -> Self {
        let dir =
            PathBuf::from("/sys/fs/bpf").join(format!("lynx-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        Self(dir)
    }

    fn versioned(&self) -> PathBuf {
        self.0.join(format!("v{MAPS_LAYOUT_VERSION}"))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn load(pins: &PinDir) -> KernelCounters {
    KernelCounters::load(&LoadOptions {
        cgroup_root: CgroupLayout::detect().expect("cgroup layout").unified,
        pin_dir: Some(pins.0.clone()),
        count_host_network: false,
        nginx_byte_hooks: Default::default(),
    })
    .expect("load with pins")
}

/// Creates a `BPF_MAP_TYPE_HASH` map (key 8 bytes, value 4, 16 entries) and pins it at `path`.
fn pin_foreign_hash(path: &Path) {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_MAP_TYPE_HASH: u32 = 1;
    // The leading fields of `union bpf_attr` for each command; the kernel reads no further
    // than the size passed.
    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
    }
    #[repr(C)]
    struct ObjPin {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let create = MapCreate {
        map_type: BPF_MAP_TYPE_HASH,
        key_size: 8,
        value_size: 4,
        max_entries: 16,
        map_flags: 0,
    };
    // SAFETY: a valid attribute struct, read by the kernel for its size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &raw const create,
            size_of::<MapCreate>(),
        )
    };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    let pathname = CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL");
    let pin = ObjPin {
        pathname: pathname.as_ptr() as u64,
        bpf_fd: fd as u32,
        file_flags: 0,
    };
    // SAFETY: as above; `pathname` outlives the call.
    let pinned = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_PIN,
            &raw const pin,
            size_of::<ObjPin>(),
        )
    };
    assert_eq!(
        pinned,
        0,
        "BPF_OBJ_PIN: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: the descriptor is ours; the pin keeps the map.
    unsafe { libc::close(fd as i32) };
}

#[test]
fn a_pinned_map_of_another_shape_is_made_anew_and_a_right_one_kept() {
    if !privileged("a_pinned_map_of_another_shape_is_made_anew_and_a_right_one_kept") {
        return;
    }
    let pins = PinDir::new("shape");
    fs::create_dir_all(pins.versioned()).expect("create the pin directory");
    let path = pins.versioned().join(CGROUP_CPU_MAP);
    pin_foreign_hash(&path);

    let mut kernel = load(&pins);
    let info = MapInfo::from_pin(&path).expect("CGROUP_CPU is pinned");
    assert_eq!(
        (info.value_size(), info.max_entries()),
        (8, lynx_common::CGROUP_MAP_ENTRIES),
        "the foreign pin was replaced by Lynx's map"
    );
    kernel
        .cgroup_cpu_ns()
        .expect("CPU time reads from the new map");
    let id = info.id();
    drop(kernel);

    // A pin of the right shape is reused: the counts of a daemon go on in its successor.
    let _kernel = load(&pins);
    let again = MapInfo::from_pin(&path).expect("still pinned");
    assert_eq!(again.id(), id, "the pinned map was kept");
}

#[test]
fn pin_directories_are_roots_alone() {
    if !privileged("pin_directories_are_roots_alone") {
        return;
    }
    let pins = PinDir::new("mode");
    let _kernel = load(&pins);
    for dir in [pins.0.clone(), pins.versioned()] {
        let mode = fs::metadata(&dir)
            .expect("the pin directory")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "{}: mode {mode:o}", dir.display());
    }
}
