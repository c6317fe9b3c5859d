//! Reading the daemon's snapshot file. The daemon replaces it atomically, so a read sees a whole
//! document; what can still go wrong is named, each with its own message.
use std::{io, path::Path};

use serde_json::Value;

use super::TuiError;
use crate::model::{SNAPSHOT_VERSION, Snapshot};

/// Reads and checks the snapshot at `path`. The schema version is compared before the rest is
/// deserialised, so a document from another lynx says so instead of naming a missing field.
pub fn load_snapshot(path: &Path) -> Result<Snapshot, TuiError> {
    let text = std::fs::read(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => TuiError::NoSnapshot {
            path: path.to_owned(),
        },
        _ => TuiError::Read {
            path: path.to_owned(),
            source,
        },
    })?;
    let document: Value = serde_json::from_slice(&text).map_err(|source| TuiError::Json {
        path: path.to_owned(),
        source,
    })?;
    let Some(version) = document.get("version").and_then(Value::as_u64) else {
        return Err(TuiError::NoVersion {
            path: path.to_owned(),
        });
    };
    if version != u64::from(SNAPSHOT_VERSION) {
        return Err(TuiError::Version {
            path: path.to_owned(),
            found: version,
            expected: SNAPSHOT_VERSION,
        });
    }
    serde_json::from_value(document).map_err(|source| TuiError::Schema {
        path: path.to_owned(),
        version: SNAPSHOT_VERSION,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::tests::{ScratchFile, fixture, scratch_file};

    fn error_for(name: &str, contents: &[u8]) -> (ScratchFile, String) {
        let file = scratch_file(name, contents);
        let error = load_snapshot(file.path()).expect_err("not a loadable snapshot");
        (file, error.to_string())
    }

    #[test]
    fn a_good_file_loads() {
        let snapshot = fixture("2026-11-22T04:22:02Z", &[("web1", 76.7, 1 << 20)]);
        let json = serde_json::to_vec(&snapshot).expect("serialise fixture");
        let file = scratch_file("good", &json);
        assert_eq!(load_snapshot(file.path()).expect("loads"), snapshot);
    }

    #[test]
    fn a_missing_file_asks_whether_the_daemon_runs() {
        let path = Path::new("/nonexistent/lynx/snapshot.json");
        let error = load_snapshot(path).expect_err("missing");
        assert_eq!(
            error.to_string(),
            "no snapshot at /nonexistent/lynx/snapshot.json: is `lynx daemon` running?"
        );
    }

    #[test]
    fn an_unreadable_file_names_the_cause() {
        // A directory: unreadable as a file even for root, which the tests may run as.
        let file = scratch_file("dir", b"");
        std::fs::remove_file(file.path()).expect("remove scratch file");
        std::fs::create_dir(file.path()).expect("create scratch dir");
        let error = load_snapshot(file.path())
            .expect_err("a directory")
            .to_string();
        assert!(
            error.starts_with(&format!("cannot read snapshot {}: ", file.path().display())),
            "{error}"
        );
        assert!(!error.contains('\n'), "{error}");
    }

    #[test]
    fn invalid_json_says_so() {
        let (file, error) = error_for("garbage", b"{\"version\": 2, \"host\": ");
        assert!(
            error.starts_with(&format!(
                "snapshot {} is not valid JSON: ",
                file.path().display()
            )),
            "{error}"
        );
    }

    #[test]
    fn another_schema_version_is_named_before_any_field() {
        let (file, error) = error_for("v99", br#"{"version": 99, "cgroups": []}"#);
        assert_eq!(
            error,
            format!(
                "snapshot {} has schema version 99, this lynx reads {SNAPSHOT_VERSION}",
                file.path().display()
            )
        );
        let (_, error) = error_for("unversioned", br#"{"host": {}}"#);
        assert!(error.ends_with("has no schema version"), "{error}");
    }

    #[test]
    fn same_version_wrong_shape_names_the_field() {
        let (_, error) = error_for(
            "shape",
            format!(r#"{{"version": {SNAPSHOT_VERSION}, "host": {{}}}}"#).as_bytes(),
        );
        assert!(
            error.contains(&format!("does not match schema version {SNAPSHOT_VERSION}")),
            "{error}"
        );
        assert!(error.contains("missing field"), "{error}");
    }
}
