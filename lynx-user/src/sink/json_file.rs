//! The snapshot file: written whole to a temporary file beside it, synced, then renamed over
//! it, so a reader sees either the previous document or the new one, never a partial one.
use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
};

use super::Sink;
use crate::model::Snapshot;

/// Errors of writing the snapshot file.
#[derive(Debug, thiserror::Error)]
pub enum JsonFileError {
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// The snapshot file as a [`Sink`]: a write that fails is logged and the next one tried.
pub struct JsonFileSink {
    pub path: PathBuf,
}

impl Sink for JsonFileSink {
    fn publish(&mut self, snapshot: &Snapshot) {
        if let Err(error) = write(&self.path, snapshot) {
            tracing::warn!(%error, "snapshot not written");
        }
    }
}

/// Writes `snapshot` to `path` atomically, creating its directory if needed.
pub fn write(path: &Path, snapshot: &Snapshot) -> Result<(), JsonFileError> {
    let error = |source| JsonFileError::Write {
        path: path.to_owned(),
        source,
    };
    let mut text = serde_json::to_vec_pretty(snapshot)
        .map_err(io::Error::from)
        .map_err(error)?;
    text.push(b'\n');
    write_atomically(path, &text).map_err(error)
}

fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
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
        let dir = std::env::temp_dir().join(format!("lynx-json-{}", std::process::id()));
        let path = dir.join("nested/snapshot.json");
        write_atomically(&path, b"{\"a\":1}").expect("first write");
        write_atomically(&path, b"{\"a\":2}").expect("second write");
        assert_eq!(fs::read(&path).expect("read back"), b"{\"a\":2}");
        let leftovers: Vec<_> = fs::read_dir(path.parent().expect("has parent"))
            .expect("list")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers, ["snapshot.json"]);
        fs::remove_dir_all(&dir).expect("clean up");
    }
}
