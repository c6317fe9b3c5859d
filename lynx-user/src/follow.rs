//! `lynx snapshot --follow`: the daemon's snapshot documents as a stream, one compact JSON
//! document per line, for `lynx --host ssh://... top` to read over ssh. Both ends of the
//! framing are here: [`follow`] writes it, [`read_frame`] reads it back, and each bounds a
//! document to [`MAX_DOCUMENT`] bytes so a broken peer cannot grow memory without end.
use std::{
    io::{self, BufRead, Read, Write},
    time::Duration,
};

/// Largest document either end handles: a snapshot of thousands of containers is a few MB.
pub const MAX_DOCUMENT: usize = 32 << 20;

/// Why a stream of documents stopped.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("the snapshot is not valid JSON: {0}")]
    Json(serde_json::Error),
    #[error("a snapshot document is larger than {MAX_DOCUMENT} bytes")]
    TooLarge,
    #[error("{0}")]
    Read(io::Error),
    #[error("cannot write to standard output: {0}")]
    Write(io::Error),
}

/// `document` (a JSON text, possibly pretty-printed over many lines) as one line: compact
/// JSON escapes every newline inside strings, so the only newline is the frame's end.
pub fn frame(document: &[u8]) -> Result<Vec<u8>, FollowError> {
    if document.len() > MAX_DOCUMENT {
        return Err(FollowError::TooLarge);
    }
    let value: serde_json::Value = serde_json::from_slice(document).map_err(FollowError::Json)?;
    let mut line = serde_json::to_vec(&value).map_err(FollowError::Json)?;
    line.push(b'\n');
    Ok(line)
}

/// The next document of a stream written by [`follow`], without its newline; `None` at a
/// clean end of the stream. A line longer than [`MAX_DOCUMENT`] is an error, read no further.
pub fn read_frame(reader: &mut impl BufRead) -> Result<Option<Vec<u8>>, FollowError> {
    let mut line = Vec::new();
    let limit = MAX_DOCUMENT as u64 + 1;
    reader
        .take(limit)
        .read_until(b'\n', &mut line)
        .map_err(FollowError::Read)?;
    match line.pop() {
        None => Ok(None),
        Some(b'\n') => Ok(Some(line)),
        Some(_) if line.len() >= MAX_DOCUMENT => Err(FollowError::TooLarge),
        // The writer went away in the middle of a line: the document is incomplete.
        Some(_) => Err(FollowError::Read(io::ErrorKind::UnexpectedEof.into())),
    }
}

/// Writes each new document that `read` returns as one line to `out`, flushed at once, every
/// `interval` while `wait` returns true (it sleeps; false means stop), and after `count`
/// documents when given. A document equal to the last one written is not written again. The
/// first read must succeed; a later failed read (the daemon replacing or restarting) is
/// skipped. A reader that closed the pipe ends the stream without error.
pub fn follow(
    mut read: impl FnMut() -> Result<Vec<u8>, FollowError>,
    out: &mut impl Write,
    interval: Duration,
    count: Option<u64>,
    mut wait: impl FnMut(Duration) -> bool,
) -> Result<(), FollowError> {
    let mut last = read()?;
    let mut written = 0;
    let mut pending = Some(frame(&last)?);
    loop {
        if let Some(line) = pending.take() {
            match out.write_all(&line).and_then(|()| out.flush()) {
                Err(error) if error.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
                result => result.map_err(FollowError::Write)?,
            }
            written += 1;
            if count.is_some_and(|count| written >= count) {
                return Ok(());
            }
        }
        if !wait(interval) {
            return Ok(());
        }
        if let Ok(document) = read()
            && document != last
        {
            // A document half-written by something other than the daemon's atomic
            // replacement is skipped like a failed read.
            if let Ok(line) = frame(&document) {
                pending = Some(line);
                last = document;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    #[test]
    fn a_pretty_document_becomes_one_line() {
        let line = frame(b"{\n  \"a\": \"x\\ny\",\n  \"b\": [1, 2]\n}\n").expect("frame");
        assert_eq!(line, b"{\"a\":\"x\\ny\",\"b\":[1,2]}\n");
        assert!(matches!(frame(b"{\"a\": "), Err(FollowError::Json(_))));
    }

    #[test]
    fn frames_read_back_one_by_one_to_a_clean_end() {
        let mut stream = Cursor::new(b"{\"n\":1}\n{\"n\":2}\n".to_vec());
        assert_eq!(
            read_frame(&mut stream).unwrap(),
            Some(b"{\"n\":1}".to_vec())
        );
        assert_eq!(
            read_frame(&mut stream).unwrap(),
            Some(b"{\"n\":2}".to_vec())
        );
        assert_eq!(read_frame(&mut stream).unwrap(), None);
    }

    #[test]
    fn a_cut_line_is_an_error_not_a_document() {
        let mut stream = Cursor::new(b"{\"n\":1}\n{\"n\"".to_vec());
        read_frame(&mut stream).unwrap();
        assert!(matches!(read_frame(&mut stream), Err(FollowError::Read(_))));
    }

    #[test]
    fn an_endless_line_stops_at_the_bound() {
        // A reader that never sends a newline: the bound ends the read, not memory.
        let mut endless = io::BufReader::new(io::repeat(b'x'));
        assert!(matches!(
            read_frame(&mut endless),
            Err(FollowError::TooLarge)
        ));
    }

    /// `follow` over a scripted file: each read returns the next of `documents` (or fails).
    fn followed(
        documents: &[Option<&str>],
        count: Option<u64>,
    ) -> (Result<(), FollowError>, String) {
        let mut reads = documents.iter();
        let mut waits = 0;
        let mut out = Vec::new();
        let result = follow(
            || match reads.next() {
                Some(Some(text)) => Ok(text.as_bytes().to_vec()),
                _ => Err(FollowError::Read(io::ErrorKind::NotFound.into())),
            },
            &mut out,
            Duration::from_millis(1),
            count,
            |_| {
                waits += 1;
                waits < documents.len()
            },
        );
        (result, String::from_utf8(out).expect("UTF-8"))
    }

    #[test]
    fn only_changed_documents_are_written_and_failed_reads_are_skipped() {
        let (result, out) = followed(
            &[
                Some("{\"t\": 1}"),
                Some("{\"t\": 1}"),
                None,
                Some("{\"t\":2}"),
            ],
            None,
        );
        result.expect("follows");
        assert_eq!(out, "{\"t\":1}\n{\"t\":2}\n");
    }

    #[test]
    fn count_bounds_the_stream() {
        let (result, out) = followed(&[Some("1"), Some("2"), Some("3")], Some(2));
        result.expect("follows");
        assert_eq!(out, "1\n2\n");
    }

    #[test]
    fn the_first_read_must_succeed() {
        let (result, out) = followed(&[None, Some("1")], None);
        assert!(matches!(result, Err(FollowError::Read(_))));
        assert_eq!(out, "");
    }

    #[test]
    fn a_closed_reader_ends_the_stream_quietly() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let result = follow(
            || Ok(b"{}".to_vec()),
            &mut Closed,
            Duration::ZERO,
            None,
            |_| panic!("no wait after the reader left"),
        );
        result.expect("quiet end");
    }
}
