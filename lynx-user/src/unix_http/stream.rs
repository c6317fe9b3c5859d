//! An endless chunked response read as newline-separated messages: the Docker Engine's
//! `/events` writes one JSON object and a newline per event and never ends the body.
//!
//! The decoder keeps every byte it has read in its own buffers, so a read timeout anywhere (in
//! a chunk-size line, in the middle of a message) only means "nothing more yet": the caller
//! gets [`Line::Idle`], looks up, and calls again without losing its place.
use std::io::{self, Read};

use super::{HttpError, MAX_LINE};

/// A message longer than this is not an event: the stream is given up.
pub const MAX_MESSAGE: usize = 1 << 20;

/// What the next call gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// One message, without its newline.
    Message(Vec<u8>),
    /// Nothing new within the read timeout; the stream is still open.
    Idle,
    /// The body ended (a zero-size chunk) or the server closed the connection between
    /// messages.
    End,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk, with this many bytes of it still to come.
    Data(u64),
    /// Expecting the line end after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines up to an empty one.
    Trailer,
    Done,
}

/// Lines of a chunked body, decoded from `input` as it arrives.
pub struct ChunkedLines<R> {
    input: R,
    /// Bytes read and not yet decoded.
    raw: Vec<u8>,
    /// Body bytes decoded and not yet handed out as lines.
    data: Vec<u8>,
    state: State,
}

impl<R: Read> ChunkedLines<R> {
    /// Reads the body from `input`, after `buffered`: what a reader of the head took past it.
    pub fn new(input: R, buffered: Vec<u8>) -> Self {
        Self {
            input,
            raw: buffered,
            data: Vec::new(),
            state: State::Size,
        }
    }

    /// The next message, [`Line::Idle`] when the input's read timed out without completing
    /// one, or [`Line::End`].
    pub fn next_line(&mut self) -> Result<Line, HttpError> {
        loop {
            if let Some(end) = self.data.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.data.drain(..=end).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if line.is_empty() {
                    continue;
                }
                return Ok(Line::Message(line));
            }
            if self.data.len() > MAX_MESSAGE {
                return Err(HttpError::TooLong("message"));
            }
            if self.decode()? {
                continue;
            }
            if self.state == State::Done {
                return Ok(Line::End);
            }
            let mut buffer = [0u8; 8192];
            match self.input.read(&mut buffer) {
                Ok(0)
                    if self.state == State::Size && self.raw.is_empty() && self.data.is_empty() =>
                {
                    return Ok(Line::End);
                }
                Ok(0) => return Err(HttpError::Closed("inside the body")),
                Ok(read) => self.raw.extend_from_slice(&buffer[..read]),
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(Line::Idle);
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Decodes what it can of `raw`; false when it needs more bytes first.
    fn decode(&mut self) -> Result<bool, HttpError> {
        let mut progressed = false;
        loop {
            match self.state {
                State::Size => {
                    let Some(line) = self.take_line("chunk size")? else {
                        return Ok(progressed);
                    };
                    // Chunk extensions (`;name=value`) carry nothing we use.
                    let size = line.split(';').next().unwrap_or_default().trim();
                    let size = u64::from_str_radix(size, 16).map_err(|_| HttpError::Malformed {
                        what: "chunk size",
                        line: line.clone(),
                    })?;
                    self.state = if size == 0 {
                        State::Trailer
                    } else {
                        State::Data(size)
                    };
                }
                State::Data(left) => {
                    if self.raw.is_empty() {
                        return Ok(progressed);
                    }
                    let take = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(self.raw.len());
                    self.data.extend(self.raw.drain(..take));
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::DataEnd
                    } else {
                        State::Data(left)
                    };
                }
                State::DataEnd => {
                    let Some(line) = self.take_line("chunk end")? else {
                        return Ok(progressed);
                    };
                    if !line.is_empty() {
                        return Err(HttpError::Malformed {
                            what: "chunk end",
                            line,
                        });
                    }
                    self.state = State::Size;
                }
                State::Trailer => {
                    let Some(line) = self.take_line("trailer")? else {
                        return Ok(progressed);
                    };
                    if line.is_empty() {
                        self.state = State::Done;
                    }
                }
                State::Done => return Ok(progressed),
            }
            progressed = true;
        }
    }

    /// One whole line of `raw` without its line end, or `None` until one has arrived.
    fn take_line(&mut self, what: &'static str) -> Result<Option<String>, HttpError> {
        let Some(end) = self.raw.iter().position(|&b| b == b'\n') else {
            if self.raw.len() as u64 > MAX_LINE {
                return Err(HttpError::TooLong(what));
            }
            return Ok(None);
        };
        let mut line: Vec<u8> = self.raw.drain(..=end).collect();
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        Ok(Some(String::from_utf8_lossy(&line).into_owned()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    /// A socket that hands out the given pieces one read at a time, and times out between
    /// them when a piece is `None`.
    struct Pieces(VecDeque<Option<&'static [u8]>>);

    impl Read for Pieces {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.0.pop_front() {
                None => Ok(0),
                Some(None) => Err(io::ErrorKind::WouldBlock.into()),
                Some(Some(piece)) => {
                    buf[..piece.len()].copy_from_slice(piece);
                    Ok(piece.len())
                }
            }
        }
    }

    fn lines(buffered: &[u8], pieces: &[Option<&'static [u8]>]) -> Vec<Result<Line, String>> {
        let mut reader =
            ChunkedLines::new(Pieces(pieces.iter().copied().collect()), buffered.into());
        let mut out = Vec::new();
        loop {
            let next = reader.next_line().map_err(|e| e.to_string());
            let last = !matches!(next, Ok(Line::Message(_) | Line::Idle));
            out.push(next);
            if last {
                return out;
            }
        }
    }

    fn message(text: &str) -> Result<Line, String> {
        Ok(Line::Message(text.as_bytes().to_vec()))
    }

    #[test]
    fn messages_split_anywhere_survive_timeouts() {
        let got = lines(
            b"8\r\n{\"a\":1}\n\r\n",
            &[
                Some(b"1"),
                None,
                Some(b"0\r\n{\"b\":2}\n{\"c"),
                None,
                Some(b"\":3}\n\r\n5;ext=1\r\n"),
                Some(b"{}\r\n\n\r\n0\r\nX-T: 1\r\n\r\n"),
            ],
        );
        assert_eq!(
            got,
            [
                message("{\"a\":1}"),
                Ok(Line::Idle),
                message("{\"b\":2}"),
                Ok(Line::Idle),
                message("{\"c\":3}"),
                message("{}"),
                Ok(Line::End),
            ]
        );
    }

    #[test]
    fn a_close_between_chunks_ends_and_inside_one_is_an_error() {
        assert_eq!(
            lines(b"", &[Some(b"3\r\n{}\n\r\n")]),
            [message("{}"), Ok(Line::End)]
        );
        assert_eq!(
            lines(b"", &[Some(b"9\r\n{}\n")]),
            [
                message("{}"),
                Err("connection closed inside the body".into())
            ]
        );
    }

    #[test]
    fn broken_framing_is_refused() {
        assert_eq!(
            lines(b"zz\r\n", &[]),
            [Err("malformed chunk size: \"zz\"".into())]
        );
        assert_eq!(
            lines(b"2\r\nabc\r\n", &[]),
            [Err("malformed chunk end: \"c\"".into())]
        );
        let endless: &'static [u8] = Box::leak(vec![b'a'; MAX_MESSAGE + 10].into_boxed_slice());
        let mut chunk = format!("{:x}\r\n", endless.len()).into_bytes();
        chunk.extend_from_slice(endless);
        assert_eq!(
            lines(&chunk, &[]),
            [Err("message longer than the limit".into())]
        );
    }
}
