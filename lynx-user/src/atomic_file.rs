//! Replacing a file so that a reader (nginx, a script polling the snapshot) sees either the
//! old contents or the new, never a mix: written to a temporary file beside it, synced, then
//! renamed over it, and the directory synced so that the rename survives a power loss.
//!
//! Lynx writes as root into directories other programs use, so the temporary file is made
//! the way a file in a shared directory must be: a random name, created with `O_EXCL` and
//! `O_NOFOLLOW` (a planted file or symlink makes the write fail instead of redirecting it),
//! and given its mode explicitly, whatever the umask. A file that already exists keeps its
//! mode, and its owner and group where this process may give files away (root, or
//! `CAP_CHOWN`); otherwise (the packaged daemon runs as its own user) the new file is this
//! process's.
use std::{
    fs,
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

/// Replaces `path` with `contents`, creating its directory (mode 0755) if needed. A new file
/// gets `mode`; an existing one keeps its mode, and its owner and group where this process
/// may give files away.
pub fn write(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let dir = parent(path);
    create_dir(dir)?;
    let name = path.file_name().ok_or(io::ErrorKind::InvalidInput)?;
    let temporary = dir.join(format!(
        ".{}.{:016x}.tmp",
        name.to_string_lossy(),
        random_u64()?
    ));
    write_via(path, contents, mode, &temporary)
}

/// [`write`] through the temporary file `temporary`, which must not exist.
fn write_via(path: &Path, contents: &[u8], mode: u32, temporary: &Path) -> io::Result<()> {
    // The file as it is now, not what a symlink there points at: rename replaces the link.
    let existing = match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_file() => Some(meta),
        Ok(_) => None,
        Err(error) if error.kind() == io::ErrorKind::NotFound => None,
        Err(error) => return Err(error),
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(temporary)?;
    let result = (|| {
        file.write_all(contents)?;
        let mode = match &existing {
            Some(meta) => {
                std::os::unix::fs::fchown(&file, Some(meta.uid()), Some(meta.gid()))
                    .or_else(|error| same_owner(&file, meta, error))?;
                meta.mode() & 0o7777
            }
            None => mode,
        };
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        fs::rename(temporary, path)?;
        fs::File::open(parent(path))?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(temporary);
    }
    result
}

/// A process that may not give files away (not root, no `CAP_CHOWN`) replaces the file with
/// one of its own; any other failure to keep the owner fails the write.
fn same_owner(file: &fs::File, wanted: &fs::Metadata, error: io::Error) -> io::Result<()> {
    let made = file.metadata()?;
    if (made.uid(), made.gid()) == (wanted.uid(), wanted.gid())
        || error.kind() == io::ErrorKind::PermissionDenied
    {
        Ok(())
    } else {
        Err(error)
    }
}

fn parent(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Creates `dir` and its missing parents with mode 0755, whatever the umask: the snapshot's
/// directory must stay readable for `lynx top` run by any user.
fn create_dir(dir: &Path) -> io::Result<()> {
    let mut missing: Vec<PathBuf> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
        .map(Path::to_owned)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)?;
    missing.reverse();
    for made in missing {
        fs::set_permissions(&made, fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

/// Eight bytes from the kernel's random source, for a name no other user can predict.
fn random_u64() -> io::Result<u64> {
    let mut bytes = [0u8; 8];
    // SAFETY: the kernel writes at most `bytes.len()` bytes into the buffer.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if got != bytes.len() as isize {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::from_ne_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TempDir;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("list")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn replaces_the_file_whole_and_leaves_no_temporary() {
        let dir = TempDir::new("atomic-replace");
        let path = dir.path().join("nested/file.json");
        write(&path, b"{\"a\":1}", 0o644).expect("first write");
        write(&path, b"{\"a\":2}", 0o644).expect("second write");
        assert_eq!(fs::read(&path).expect("read back"), b"{\"a\":2}");
        assert_eq!(names(path.parent().expect("has parent")), ["file.json"]);
    }

    #[test]
    fn a_symlink_planted_at_the_temporary_name_fails_the_write_and_leaves_its_target() {
        let dir = TempDir::new("atomic-symlink");
        let target = dir.path().join("root-only");
        fs::write(&target, "secret\n").expect("write the target");
        let path = dir.path().join("lynx-upstreams.conf");
        // Where an older Lynx put its temporary file, and a name this one might draw.
        let predictable = dir.path().join(".lynx-upstreams.conf.tmp");
        std::os::unix::fs::symlink(&target, &predictable).expect("plant a symlink");
        write(&path, b"new\n", 0o644).expect("the write goes elsewhere");
        assert_eq!(fs::read_to_string(&target).expect("target"), "secret\n");
        assert_eq!(fs::read_to_string(&path).expect("written"), "new\n");

        let drawn = dir.path().join(".lynx-upstreams.conf.0123456789abcdef.tmp");
        std::os::unix::fs::symlink(&target, &drawn).expect("plant a symlink");
        let error = write_via(&path, b"newer\n", 0o644, &drawn).expect_err("must fail");
        assert_eq!(error.kind(), io::ErrorKind::AlreadyExists, "{error}");
        assert_eq!(fs::read_to_string(&target).expect("target"), "secret\n");
        assert_eq!(fs::read_to_string(&path).expect("kept"), "new\n");
        assert!(
            fs::symlink_metadata(&drawn).is_ok_and(|m| m.file_type().is_symlink()),
            "the planted link is not removed as if it were ours"
        );
    }

    #[test]
    fn a_new_file_gets_its_mode_and_an_existing_one_keeps_its_own() {
        let dir = TempDir::new("atomic-mode");
        let path = dir.path().join("file");
        write(&path, b"a", 0o644).expect("write");
        let mode = |p: &Path| fs::metadata(p).expect("stat").mode() & 0o7777;
        assert_eq!(mode(&path), 0o644);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).expect("chmod");
        write(&path, b"b", 0o644).expect("write again");
        assert_eq!(mode(&path), 0o640, "the operator's mode is kept");
    }
}
