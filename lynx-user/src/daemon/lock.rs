//! [`DaemonLock`]: one daemon per set of pinned maps, and no other user able to get in the
//! way of that.
//!
//! The lock is `flock` on `/run/lynx/daemon-<pin dir>.lock`. `flock` works on a descriptor
//! opened read-only, so a lock file others can read is one any local user can hold to keep
//! every daemon from starting. The file is therefore made mode 0600 in a directory only its
//! owner (root) can write to, opened with `O_NOFOLLOW`. A lock file others can open (left by
//! an older Lynx) is replaced, unless a process of this daemon's user holds it: that is a
//! daemon.
use std::{
    fs,
    io::{self, Read, Seek, Write},
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use super::DaemonError;
use crate::process::real_uid;

/// Held while a daemon counts into the maps pinned in a directory: a second daemon there
/// would count everything twice. The lock goes with the process, also on SIGKILL.
#[derive(Debug)]
pub struct DaemonLock {
    _file: fs::File,
}

impl DaemonLock {
    /// Takes the lock for `pin_dir`, or says which daemon holds it.
    pub fn acquire(pin_dir: &Path) -> Result<Self, DaemonError> {
        let path = lock_path(pin_dir);
        let error = |source| DaemonError::Lock {
            path: path.clone(),
            source,
        };
        secure_dir(path.parent().expect("lock path has a parent"))?;
        let mut file = open(&path, pin_dir)?;
        if !try_lock(&file) {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            return Err(DaemonError::AlreadyRunning {
                pid: pid.trim().to_owned(),
                pin_dir: pin_dir.to_owned(),
            });
        }
        file.set_len(0).map_err(error)?;
        file.rewind().map_err(error)?;
        write!(file, "{}", std::process::id()).map_err(error)?;
        Ok(Self { _file: file })
    }

    /// True when a daemon holds the lock for `pin_dir` now. Needs no permission on the file:
    /// the kernel's list of locks is read.
    pub fn is_held(pin_dir: &Path) -> bool {
        fs::symlink_metadata(lock_path(pin_dir)).is_ok_and(|meta| holder(&meta).is_some())
    }
}

/// `/run/lynx/daemon-<pin dir>.lock`, one per pin directory. Left in place when the daemon
/// exits, as a pid file is (`/run` is emptied at boot).
pub fn lock_path(pin_dir: &Path) -> PathBuf {
    let name: String = pin_dir
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    Path::new("/run/lynx").join(format!("daemon-{name}.lock"))
}

/// This process's effective uid, the owner everything here must have.
fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// Makes `dir` (mode 0755) when missing; refuses one that is a link, another user's (not
/// root's or this daemon's), or writable by others.
fn secure_dir(dir: &Path) -> Result<(), DaemonError> {
    let unsafe_dir = |reason: String| DaemonError::UnsafeLockDir {
        path: dir.to_owned(),
        reason,
    };
    let meta = match fs::symlink_metadata(dir) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            let made = fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .and_then(|()| fs::set_permissions(dir, fs::Permissions::from_mode(0o755)));
            return made.map_err(|source| DaemonError::Lock {
                path: dir.to_owned(),
                source,
            });
        }
        Err(source) => {
            return Err(DaemonError::Lock {
                path: dir.to_owned(),
                source,
            });
        }
        Ok(meta) => meta,
    };
    if !meta.is_dir() {
        return Err(unsafe_dir("it is not a directory".into()));
    }
    // Root's, or this user's: no one else may replace what is in it.
    if meta.uid() != euid() && meta.uid() != 0 {
        return Err(unsafe_dir(format!(
            "it belongs to uid {}, neither root nor this daemon's user ({})",
            meta.uid(),
            euid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(unsafe_dir(format!(
            "others may write in it (mode {:o})",
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

/// Opens (creating it 0600) the lock file, replacing one that others can open.
fn open(path: &Path, pin_dir: &Path) -> Result<fs::File, DaemonError> {
    let error = |source| DaemonError::Lock {
        path: path.to_owned(),
        source,
    };
    let options = |new: bool| {
        let mut options = fs::OpenOptions::new();
        options
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW);
        match new {
            true => options.create_new(true),
            false => options.create(true).truncate(false),
        };
        options
    };
    let file = options(false).open(path).map_err(error)?;
    let meta = file.metadata().map_err(error)?;
    if meta.is_file() && meta.uid() == euid() && meta.mode() & 0o077 == 0 {
        return Ok(file);
    }
    // Others can open it, so anyone may be holding a lock on it. A process of this user
    // holding it is a daemon; any other holder is shut out by a new file.
    let uid_of = |pid: u32| real_uid(Path::new(&format!("/proc/{pid}")));
    if let Some(pid) = holder(&meta).filter(|&pid| uid_of(pid) == Some(euid())) {
        return Err(DaemonError::AlreadyRunning {
            pid: pid.to_string(),
            pin_dir: pin_dir.to_owned(),
        });
    }
    tracing::warn!(
        path = %path.display(),
        "the lock file could be opened by other users (mode {:o}, uid {}): replaced by one only this user can open",
        meta.mode() & 0o7777,
        meta.uid()
    );
    drop(file);
    fs::remove_file(path).map_err(error)?;
    options(true).open(path).map_err(error)
}

/// Takes an exclusive lock without waiting (`flock`, which `/proc/locks` lists as FLOCK);
/// false when another process holds it.
fn try_lock(file: &fs::File) -> bool {
    file.try_lock().is_ok()
}

/// The process holding a `flock` on the file `meta` describes, from `/proc/locks`.
fn holder(meta: &fs::Metadata) -> Option<u32> {
    let locks = fs::read_to_string("/proc/locks").ok()?;
    let device = format!(
        "{:02x}:{:02x}:{}",
        libc::major(meta.dev()),
        libc::minor(meta.dev()),
        meta.ino()
    );
    holder_in(&locks, &device)
}

/// The holder of the `flock` on `device` (`major:minor:inode`) in `/proc/locks` text; waiters
/// (`->`) are not holders.
fn holder_in(locks: &str, device: &str) -> Option<u32> {
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [_, "FLOCK", _, _, pid, file, ..] if *file == device => pid.parse().ok(),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_of_a_lock_is_read_from_the_kernels_list() {
        let locks = "1: FLOCK  ADVISORY  WRITE 4095 fe:00:9805833 0 EOF\n\
                     1: -> FLOCK  ADVISORY  WRITE 4410 fe:00:9805833 0 EOF\n\
                     2: POSIX  ADVISORY  WRITE 77 fe:00:1 0 EOF\n";
        assert_eq!(holder_in(locks, "fe:00:9805833"), Some(4095));
        assert_eq!(holder_in(locks, "fe:00:1"), None, "not a flock");
        assert_eq!(holder_in(locks, "fe:00:2"), None);
    }

    #[test]
    fn a_lock_this_process_holds_is_found() {
        let dir = crate::test_support::TempDir::new("daemon-lock-holder");
        let path = dir.path().join("x.lock");
        let file = fs::File::create(&path).expect("create");
        assert!(try_lock(&file));
        let meta = fs::metadata(&path).expect("stat");
        assert_eq!(holder(&meta), Some(std::process::id()));
        drop(file);
        assert_eq!(holder(&meta), None, "released with its descriptor");
    }

    #[test]
    fn a_directory_others_can_write_to_is_refused() {
        let dir = crate::test_support::TempDir::new("daemon-lock-dir");
        let open = dir.path().join("open");
        fs::create_dir(&open).expect("mkdir");
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).expect("chmod");
        let error = secure_dir(&open).expect_err("world-writable");
        assert!(
            error
                .to_string()
                .contains("others may write in it (mode 777)"),
            "{error}"
        );
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path(), &link).expect("symlink");
        let error = secure_dir(&link).expect_err("a link");
        assert!(error.to_string().contains("not a directory"), "{error}");
        let made = dir.path().join("made/here");
        secure_dir(&made).expect("made");
        assert_eq!(fs::metadata(&made).expect("stat").mode() & 0o7777, 0o755);
    }
}
