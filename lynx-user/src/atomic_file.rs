//! Replacing a file so that a reader (nginx, a script polling the snapshot) sees either the
//! old contents or the new, never a mix: written to a temporary file beside it, synced, then
//! renamed over it.
use std::{
    fs,
    io::{self, Write},
    path::Path,
};

/// Replaces `path` with `contents`, creating its directory if needed.
pub fn write(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let name = path.file_name().ok_or(io::ErrorKind::InvalidInput)?;
    let temporary = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let result = (|| {
        let mut file = fs::File::create(&temporary)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&temporary, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_whole_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("lynx-atomic-{}", std::process::id()));
        let path = dir.join("nested/file.json");
        write(&path, b"{\"a\":1}").expect("first write");
        write(&path, b"{\"a\":2}").expect("second write");
        assert_eq!(fs::read(&path).expect("read back"), b"{\"a\":2}");
        let leftovers: Vec<_> = fs::read_dir(path.parent().expect("has parent"))
            .expect("list")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers, ["file.json"]);
        fs::remove_dir_all(&dir).expect("clean up");
    }
}
