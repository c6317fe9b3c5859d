//! Helpers shared by the unit tests.
use std::{
    fs,
    path::{Path, PathBuf},
};

/// A directory of its own for one test, removed afterwards, also when the test fails.
pub struct TempDir(PathBuf);

impl TempDir {
    /// `lynx-{name}-PID` in the temporary directory, emptied first; `name` must be unique
    /// among the tests of the process.
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("lynx-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
