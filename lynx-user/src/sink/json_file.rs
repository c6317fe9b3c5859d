//! The snapshot file, replaced atomically ([`atomic_file`]): a reader sees either the previous
//! document or the new one, never a partial one.
use std::{
    io,
    path::{Path, PathBuf},
};

use super::Sink;
use crate::{atomic_file, model::Snapshot};

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
    // Readable by `lynx top` run by any user, whatever the daemon's umask.
    atomic_file::write(path, &text, 0o644).map_err(error)
}
