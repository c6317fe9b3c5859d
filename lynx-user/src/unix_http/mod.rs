//! Just enough HTTP/1.1 for the local APIs Lynx speaks on unix sockets (LXD, the Docker
//! Engine): write one request, read one response, or follow one endless chunked response.
//!
//! Framing here is transport-free: [`read_response`] parses from any [`BufRead`] so the edge
//! cases are tested on byte strings. Clients send `Connection: close` and open one
//! connection per request, so there is no keep-alive or pipelining to get right; a response
//! without `Content-Length` or chunked encoding runs to end of stream (RFC 9112 §6.3).
//!
//! - [`connect`] opens a socket within a timeout, and [`Deadline`] bounds a whole exchange.
//! - [`ChunkedLines`] reads a stream of newline-separated messages in a chunked body (the
//!   Docker Engine's `/events`) from a socket with a read timeout, so that a waiting reader
//!   can look up between messages without losing a byte.
mod socket;
mod stream;

use std::io::{self, BufRead, Read, Write};

pub use socket::{Deadline, connect};
pub use stream::{ChunkedLines, Line};

/// Longest status, header, chunk-size or trailer line accepted; LXD's are far shorter, and a
/// bound stops a broken peer from growing a line without end.
const MAX_LINE: u64 = 16 * 1024;
/// Most header lines accepted in one response.
const MAX_HEADERS: usize = 128;
/// Largest body accepted: an image list with hundreds of entries is a few MiB.
pub const MAX_BODY: u64 = 256 * 1024 * 1024;

/// Errors of reading an HTTP response.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("connection closed {0}")]
    Closed(&'static str),
    #[error("malformed {what}: {line:?}")]
    Malformed { what: &'static str, line: String },
    #[error("{0} longer than the limit")]
    TooLong(&'static str),
}

/// One response, body already de-chunked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    /// Header fields in arrival order, names as sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name`, compared case-insensitively as HTTP requires (Go's
    /// server sends `Etag`, not `ETag`).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Writes a request for `target` (path and query) to `host` (a name for the server, as `lxd`
/// or `docker`: a unix socket has no host), with a JSON `body` if any and extra `headers`. It
/// asks the server to close the connection after answering.
pub fn write_request<W: Write>(
    out: &mut W,
    host: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> io::Result<()> {
    // One buffer, one write: the request reaches the server whole.
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: lynx\r\nAccept: application/json\r\nConnection: close\r\n"
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    out.write_all(&bytes)?;
    out.flush()
}

/// Reads one response to a request made with `method`; interim `1xx` responses are skipped.
pub fn read_response<R: BufRead>(input: &mut R, method: &str) -> Result<Response, HttpError> {
    let mut response = read_head(input)?;
    // RFC 9112 §6.3: these never carry a body, whatever the headers say.
    if method.eq_ignore_ascii_case("HEAD") || response.status == 204 || response.status == 304 {
        return Ok(response);
    }
    response.body = read_body(input, &response)?;
    Ok(response)
}

/// Reads the status line and headers of the final response, interim `1xx` ones skipped; the
/// body is left in `input`.
pub fn read_head<R: BufRead>(input: &mut R) -> Result<Response, HttpError> {
    loop {
        let (status, reason) = read_status_line(input)?;
        let headers = read_fields(input, "header")?;
        if !(100..200).contains(&status) {
            return Ok(Response {
                status,
                reason,
                headers,
                body: Vec::new(),
            });
        }
    }
}

impl Response {
    /// True when the body is sent in chunks (the last transfer coding is `chunked`).
    pub fn is_chunked(&self) -> bool {
        self.header("transfer-encoding")
            .and_then(|codings| codings.rsplit(',').next())
            .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
    }
}

fn read_status_line<R: BufRead>(input: &mut R) -> Result<(u16, String), HttpError> {
    let line =
        read_line(input, "status line")?.ok_or(HttpError::Closed("before the status line"))?;
    let malformed = || HttpError::Malformed {
        what: "status line",
        line: line.clone(),
    };
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(malformed());
    }
    let status = code.parse().map_err(|_| malformed())?;
    Ok((status, parts.next().unwrap_or_default().to_owned()))
}

/// Reads `name: value` lines up to the empty line: the header block, or a chunked trailer.
fn read_fields<R: BufRead>(
    input: &mut R,
    what: &'static str,
) -> Result<Vec<(String, String)>, HttpError> {
    let mut fields = Vec::new();
    loop {
        let line = read_line(input, what)?.ok_or(HttpError::Closed("inside the headers"))?;
        if line.is_empty() {
            return Ok(fields);
        }
        if fields.len() == MAX_HEADERS {
            return Err(HttpError::TooLong("header block"));
        }
        let (name, value) = line.split_once(':').ok_or_else(|| HttpError::Malformed {
            what,
            line: line.clone(),
        })?;
        if name.is_empty() || name.contains(|c: char| c.is_ascii_whitespace()) {
            return Err(HttpError::Malformed { what, line });
        }
        fields.push((name.to_owned(), value.trim().to_owned()));
    }
}

fn read_body<R: BufRead>(input: &mut R, response: &Response) -> Result<Vec<u8>, HttpError> {
    if response.is_chunked() {
        return read_chunked(input);
    }
    let lengths: Vec<&str> = response
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.as_str())
        .collect();
    match lengths.as_slice() {
        [] => read_exact_or_eof(input, None),
        [first, rest @ ..] => {
            let length: u64 = first.parse().map_err(|_| HttpError::Malformed {
                what: "Content-Length",
                line: (*first).to_owned(),
            })?;
            // Differing lengths would let two readers frame the stream differently.
            if rest.iter().any(|other| other != first) {
                return Err(HttpError::Malformed {
                    what: "Content-Length",
                    line: lengths.join(", "),
                });
            }
            read_exact_or_eof(input, Some(length))
        }
    }
}

/// Reads `length` bytes, or to end of stream when `None`, refusing more than [`MAX_BODY`].
fn read_exact_or_eof<R: BufRead>(input: &mut R, length: Option<u64>) -> Result<Vec<u8>, HttpError> {
    if length.is_some_and(|length| length > MAX_BODY) {
        return Err(HttpError::TooLong("body"));
    }
    // Never ask for a byte past Content-Length: a server keeping the connection open would
    // leave that read waiting for the timeout.
    let limit = length.unwrap_or(MAX_BODY + 1);
    let mut body = Vec::new();
    input.take(limit).read_to_end(&mut body)?;
    match length {
        Some(length) if (body.len() as u64) < length => Err(HttpError::Closed("inside the body")),
        None if body.len() as u64 > MAX_BODY => Err(HttpError::TooLong("body")),
        _ => Ok(body),
    }
}

fn read_chunked<R: BufRead>(input: &mut R) -> Result<Vec<u8>, HttpError> {
    let mut body = Vec::new();
    loop {
        let line = read_line(input, "chunk size")?.ok_or(HttpError::Closed("inside the body"))?;
        // Chunk extensions (`;name=value`) carry nothing we use.
        let size = line.split(';').next().unwrap_or_default().trim();
        let size = u64::from_str_radix(size, 16).map_err(|_| HttpError::Malformed {
            what: "chunk size",
            line: line.clone(),
        })?;
        if size == 0 {
            read_fields(input, "trailer")?;
            return Ok(body);
        }
        if body.len() as u64 + size > MAX_BODY {
            return Err(HttpError::TooLong("body"));
        }
        let start = body.len();
        input.take(size).read_to_end(&mut body)?;
        if ((body.len() - start) as u64) < size {
            return Err(HttpError::Closed("inside a chunk"));
        }
        let end = read_line(input, "chunk end")?.ok_or(HttpError::Closed("inside the body"))?;
        if !end.is_empty() {
            return Err(HttpError::Malformed {
                what: "chunk end",
                line: end,
            });
        }
    }
}

/// One line without its `\r\n` (a bare `\n` is accepted too); `None` at a clean end of stream.
fn read_line<R: BufRead>(input: &mut R, what: &'static str) -> Result<Option<String>, HttpError> {
    let mut line = Vec::new();
    input.take(MAX_LINE + 1).read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Ok(None);
    }
    if line.pop() != Some(b'\n') {
        return Err(if line.len() as u64 >= MAX_LINE {
            HttpError::TooLong(what)
        } else {
            HttpError::Closed("inside a line")
        });
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(Some(String::from_utf8_lossy(&line).into_owned()))
}

/// What waiting for the next event of an event stream (LXD's, Docker's) gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Next<E> {
    Event(E),
    /// Nothing arrived within the poll time; the stream is still open.
    Idle,
    /// The server ended the stream (it is stopping or restarting).
    Closed,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Result<Response, HttpError> {
        read_response(&mut &bytes[..], "GET")
    }

    #[test]
    fn reads_a_content_length_body_and_ignores_what_follows() {
        let response =
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA").expect("parses");
        assert_eq!(response.status, 200);
        assert_eq!(response.reason, "OK");
        assert_eq!(response.body, b"hello");
    }

    #[test]
    fn reads_chunks_with_extensions_and_trailers() {
        let response = parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n\
              4;name=value\r\n{\"a\"\r\nA ; quoted=\"x;y\"\r\n:[1,2,3]}\n\r\n\
              0;last\r\nX-Trailer: yes\r\n\r\n",
        )
        .expect("parses");
        assert_eq!(response.body, b"{\"a\":[1,2,3]}\n");
    }

    #[test]
    fn chunked_wins_over_content_length() {
        let response =
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
                .expect("parses");
        assert_eq!(response.body, b"ok");
    }

    #[test]
    fn header_names_are_case_insensitive() {
        let response =
            parse(b"HTTP/1.1 200 OK\r\nEtag: \"abc\"\r\ncontent-LENGTH: 2\r\nX-Empty:\r\n\r\nok")
                .expect("parses");
        assert_eq!(response.header("ETag"), Some("\"abc\""));
        assert_eq!(response.header("x-empty"), Some(""));
        assert_eq!(response.header("missing"), None);
        assert_eq!(response.body, b"ok");
    }

    /// A stream that fails the test if read past the bytes given: a socket kept open by the
    /// server would block there.
    fn ending_at(bytes: &[u8]) -> impl BufRead + '_ {
        struct Past;
        impl Read for Past {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                panic!("read past the end of the response");
            }
        }
        io::BufReader::new(bytes.chain(Past))
    }

    #[test]
    fn reads_no_byte_past_the_body() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", b""),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", b"ok"),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
                b"ok",
            ),
        ];
        for (bytes, body) in cases {
            let response = read_response(&mut ending_at(bytes), "GET").expect("parses");
            assert_eq!(response.body, *body);
        }
    }

    #[test]
    fn no_length_reads_to_end_of_stream() {
        let response = parse(b"HTTP/1.0 200 OK\r\n\r\nall of it").expect("parses");
        assert_eq!(response.body, b"all of it");
    }

    #[test]
    fn skips_interim_responses_and_bodyless_statuses() {
        let response = parse(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nContent-Length: 4\r\n\r\n",
        )
        .expect("parses");
        assert_eq!(response.status, 204);
        assert!(response.body.is_empty());
    }

    #[test]
    fn rejects_broken_framing() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "connection closed before the status line"),
            (b"SSH-2.0-OpenSSH\r\n\r\n", "malformed status line"),
            (b"HTTP/1.1 20 OK\r\n\r\n", "malformed status line"),
            (b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", "malformed header"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhi",
                "connection closed inside the body",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                "malformed Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
                "malformed Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "malformed chunk size",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
                "connection closed inside a chunk",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n",
                "malformed chunk end",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n",
                "connection closed inside the body",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
                "body longer than the limit",
            ),
        ];
        for (bytes, expected) in cases {
            let error = parse(bytes).expect_err("must be rejected").to_string();
            assert!(
                error.starts_with(expected),
                "{:?}: got {error:?}, want {expected:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn rejects_an_endless_line() {
        let mut bytes = b"HTTP/1.1 200 OK\r\nX-Long: ".to_vec();
        bytes.resize(bytes.len() + MAX_LINE as usize * 2, b'a');
        let error = parse(&bytes).expect_err("must be rejected");
        assert_eq!(error.to_string(), "header longer than the limit");
    }

    #[test]
    fn writes_one_whole_request() {
        let mut out = Vec::new();
        write_request(
            &mut out,
            "lxd",
            "PATCH",
            "/1.0/instances/web1",
            &[("If-Match", "\"abc\"")],
            Some(b"{}"),
        )
        .expect("writes");
        assert_eq!(
            String::from_utf8(out).expect("ASCII"),
            "PATCH /1.0/instances/web1 HTTP/1.1\r\nHost: lxd\r\nUser-Agent: lynx\r\n\
             Accept: application/json\r\nConnection: close\r\nIf-Match: \"abc\"\r\n\
             Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        );
    }
}
