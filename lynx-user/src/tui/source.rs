//! Where `lynx top` gets its documents: the daemon's snapshot file ([`FileSource`]), or a
//! stream of them from `lynx snapshot --follow` on another host ([`StreamSource`]). The daemon
//! replaces its file atomically, so a read sees a whole document; what can still go wrong is
//! named, each with its own message.
use std::{
    io::{self, BufRead},
    path::{Path, PathBuf},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread,
    time::Duration,
};

use serde_json::Value;

use super::TuiError;
use crate::{
    follow::{FollowError, read_frame},
    model::{SNAPSHOT_VERSION, Snapshot},
};

/// The documents `top` shows, as they come.
pub trait SnapshotSource {
    /// Where they come from, as `top` names it while it waits.
    fn origin(&self) -> String;
    /// The first document: `top` shows nothing before it, and fails without it.
    fn first(&mut self) -> Result<Snapshot, TuiError>;
    /// The newest document since the last call, `None` when none came; an error is shown in
    /// the status line over the last good document.
    fn poll(&mut self) -> Result<Option<Snapshot>, TuiError>;
}

/// The daemon's snapshot file, read again at each poll.
pub struct FileSource(pub PathBuf);

impl SnapshotSource for FileSource {
    fn origin(&self) -> String {
        self.0.display().to_string()
    }

    fn first(&mut self) -> Result<Snapshot, TuiError> {
        load_snapshot(&self.0)
    }

    fn poll(&mut self) -> Result<Option<Snapshot>, TuiError> {
        load_snapshot(&self.0).map(Some)
    }
}

/// What the reading thread of a [`StreamSource`] passes on.
enum Frame {
    Document(Vec<u8>),
    /// The stream ended: cleanly (`None`) or broken.
    End(Option<FollowError>),
}

/// Documents framed by [`crate::follow`], read on a thread of their own from `reader` (the
/// standard output of `ssh ... lynx snapshot --follow`), so that `top` never blocks on them.
pub struct StreamSource {
    origin: String,
    frames: Receiver<Frame>,
    /// How long the first document may take (connecting included).
    first_within: Duration,
    /// Why the stream ended (the producer's own message), asked once when it ends; it owns
    /// the producer, which ends when the source is dropped.
    ended: Box<dyn FnMut() -> String>,
    /// Set once the stream ended: shown at every later poll.
    end: Option<String>,
}

impl StreamSource {
    pub fn new(
        origin: String,
        mut reader: impl BufRead + Send + 'static,
        first_within: Duration,
        ended: Box<dyn FnMut() -> String>,
    ) -> Self {
        let (sender, frames) = mpsc::channel();
        thread::spawn(move || {
            loop {
                let frame = match read_frame(&mut reader) {
                    Ok(Some(document)) => Frame::Document(document),
                    Ok(None) => Frame::End(None),
                    Err(error) => Frame::End(Some(error)),
                };
                let last = matches!(frame, Frame::End(_));
                if sender.send(frame).is_err() || last {
                    return;
                }
            }
        });
        Self {
            origin,
            frames,
            first_within,
            ended,
            end: None,
        }
    }

    fn ended(&mut self, broken: Option<FollowError>) -> TuiError {
        let why = (self.ended)();
        let why = match broken {
            Some(error) => format!("{error}; {why}"),
            None => why,
        };
        self.end = Some(why.clone());
        TuiError::StreamEnded {
            origin: self.origin.clone(),
            why,
        }
    }

    fn parse(&self, document: &[u8]) -> Result<Snapshot, TuiError> {
        parse_snapshot(document, Path::new(&self.origin))
    }
}

impl SnapshotSource for StreamSource {
    fn origin(&self) -> String {
        self.origin.clone()
    }

    fn first(&mut self) -> Result<Snapshot, TuiError> {
        match self.frames.recv_timeout(self.first_within) {
            Ok(Frame::Document(document)) => self.parse(&document),
            Ok(Frame::End(broken)) => Err(self.ended(broken)),
            Err(RecvTimeoutError::Disconnected) => Err(self.ended(None)),
            Err(RecvTimeoutError::Timeout) => Err(TuiError::StreamEnded {
                origin: self.origin.clone(),
                why: format!("no snapshot within {:?}", self.first_within),
            }),
        }
    }

    fn poll(&mut self) -> Result<Option<Snapshot>, TuiError> {
        if let Some(why) = &self.end {
            return Err(TuiError::StreamEnded {
                origin: self.origin.clone(),
                why: why.clone(),
            });
        }
        // Only the newest document matters; older ones queued while `top` was busy are
        // skipped. A document that came just before the end is still shown; the end is
        // told at the next poll.
        let mut newest = None;
        let end = loop {
            match self.frames.try_recv() {
                Ok(Frame::Document(document)) => newest = Some(document),
                Ok(Frame::End(broken)) => break Some(self.ended(broken)),
                Err(mpsc::TryRecvError::Empty) => break None,
                Err(mpsc::TryRecvError::Disconnected) => break Some(self.ended(None)),
            }
        };
        match (newest, end) {
            (Some(document), _) => self.parse(&document).map(Some),
            (None, Some(error)) => Err(error),
            (None, None) => Ok(None),
        }
    }
}

/// Reads and checks the snapshot at `path`.
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
    parse_snapshot(&text, path)
}

/// Checks and deserialises a snapshot document that came from `path`. The schema version is
/// compared before the rest is deserialised, so a document from another lynx says so instead
/// of naming a missing field.
pub fn parse_snapshot(text: &[u8], path: &Path) -> Result<Snapshot, TuiError> {
    let document: Value = serde_json::from_slice(text).map_err(|source| TuiError::Json {
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

    /// A stream source over `text`, whose end says `why`.
    fn stream(text: Vec<u8>, why: &'static str) -> StreamSource {
        StreamSource::new(
            "ssh://ops@farm".into(),
            io::Cursor::new(text),
            Duration::from_secs(5),
            Box::new(move || why.to_owned()),
        )
    }

    fn line(timestamp: &str) -> Vec<u8> {
        let mut line = serde_json::to_vec(&fixture(timestamp, &[("web1", 1.0, 1)])).unwrap();
        line.push(b'\n');
        line
    }

    #[test]
    fn a_stream_gives_its_first_then_its_newest_document_then_why_it_ended() {
        let text = [
            line("2026-11-22T04:22:01Z"),
            line("2026-11-22T04:22:02Z"),
            line("2026-11-22T04:22:03Z"),
        ]
        .concat();
        let mut source = stream(text, "lynx: exit 3");
        let first = source.first().expect("first");
        assert_eq!(first.host.timestamp.to_string(), "2026-11-22T04:22:01Z");
        // The reading thread has queued the rest and the end: the newest wins, then the end.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut newest = None;
        let error = loop {
            match source.poll() {
                Ok(Some(snapshot)) => newest = Some(snapshot),
                Ok(None) => assert!(std::time::Instant::now() < deadline, "stream stalled"),
                Err(error) => break error,
            }
            thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(
            newest.expect("a later document").host.timestamp.to_string(),
            "2026-11-22T04:22:03Z"
        );
        assert_eq!(
            error.to_string(),
            "the snapshot stream from ssh://ops@farm ended: lynx: exit 3"
        );
        assert!(source.poll().is_err(), "an ended stream stays ended");
    }

    #[test]
    fn a_stream_that_ends_before_any_document_says_why() {
        let mut source = stream(Vec::new(), "lynx: no snapshot at /run/lynx/snapshot.json");
        let error = source.first().expect_err("empty stream").to_string();
        assert_eq!(
            error,
            "the snapshot stream from ssh://ops@farm ended: lynx: no snapshot at /run/lynx/snapshot.json"
        );
    }

    #[test]
    fn a_foreign_document_in_a_stream_names_its_version() {
        let mut source = stream(b"{\"version\": 99}\n".to_vec(), "");
        let error = source.first().expect_err("v99").to_string();
        assert!(error.contains("has schema version 99"), "{error}");
    }
}
