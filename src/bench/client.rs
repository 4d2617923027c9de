//! The bench's HTTP/1.1 client: one keep-alive connection, a request written in one `write_all`, the
//! response read into a reused buffer and parsed for its status and body length only.
//!
//! Not [`crate::http_client`]: that client builds a `String` per header and a `Vec` per body on every call,
//! which is load-generator CPU taken from the servers on a shared machine; and its parser reads from a
//! socket, so it cannot be tested on bytes. This one parses a byte slice ([`parse_response`]), allocates
//! nothing per request once its buffer has grown, and keeps only what a benchmark needs (status, body
//! length, whether the server closes).
//!
//! Rules the code keeps:
//! - Every connect, read and write has the configured timeout; a response is at most 64 KiB of head and
//!   16 MiB of body, or it is an error.
//! - After any error the connection is dropped (the next request reconnects); after `Connection: close`
//!   too. Nothing is retried here: the caller counts the error and decides.
//! - Bytes after a response (pipelining) are never expected; a response is complete only when its body is.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 16 << 20;

/// What [`parse_response`] found in a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    Incomplete,
    /// A whole response: its status, body length, total length in the buffer, and whether the server said
    /// `Connection: close` (or the body was delimited by the close itself).
    Complete {
        /// The status code, 100 to 599.
        status: u16,
        /// Length of the body in bytes (decoded length for a chunked body).
        body_len: usize,
        /// Bytes of `buf` the whole response takes, head and body (and chunk framing) included.
        consumed: usize,
        /// Whether the connection must be closed after this response.
        close: bool,
    },
}

fn bad(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
}

/// Parses one HTTP/1.x response at the start of `buf`. `eof` says the peer closed after these bytes (so a
/// body without `Content-Length` or chunking ends here). Supports `Content-Length` and chunked bodies
/// (trailers skipped); 1xx, 204 and 304 responses have no body.
pub fn parse_response(buf: &[u8], eof: bool) -> std::io::Result<Parsed> {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD {
            return Err(bad("response head over 64 KiB"));
        }
        return Ok(Parsed::Incomplete);
    };
    if head_end > MAX_HEAD {
        return Err(bad("response head over 64 KiB"));
    }
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| bad("response head not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(bad(format!("bad status line {status_line:?}")));
    }
    let status: u16 = parts
        .next()
        .filter(|s| s.len() == 3)
        .and_then(|s| s.parse().ok())
        .filter(|s| (100..=599).contains(s))
        .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
    let mut length = None;
    let mut chunked = false;
    let mut close = version == "HTTP/1.0";
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| bad(format!("bad header line {line:?}")))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value
                .parse()
                .map_err(|_| bad(format!("bad content-length {value:?}")))?;
            if length.is_some_and(|l| l != n) {
                return Err(bad("conflicting content-length headers"));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            if v.contains("close") {
                close = true;
            } else if v.contains("keep-alive") {
                close = false;
            }
        }
    }
    let body_start = head_end + 4;
    let rest = &buf[body_start..];
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(Parsed::Complete {
            status,
            body_len: 0,
            consumed: body_start,
            close,
        });
    }
    if chunked {
        return Ok(match parse_chunked(rest)? {
            Some((body_len, used)) => Parsed::Complete {
                status,
                body_len,
                consumed: body_start + used,
                close,
            },
            None => Parsed::Incomplete,
        });
    }
    match length {
        Some(n) if n > MAX_BODY => Err(bad(format!("body of {n} bytes over 16 MiB"))),
        Some(n) if rest.len() >= n => Ok(Parsed::Complete {
            status,
            body_len: n,
            consumed: body_start + n,
            close,
        }),
        Some(_) => Ok(Parsed::Incomplete),
        None if eof => Ok(Parsed::Complete {
            status,
            body_len: rest.len(),
            consumed: buf.len(),
            close: true,
        }),
        None if rest.len() > MAX_BODY => Err(bad("body over 16 MiB")),
        None => Ok(Parsed::Incomplete),
    }
}

/// A chunked body at the start of `b`: `Some((body bytes, bytes used))` once the last chunk and the
/// trailers are in.
fn parse_chunked(b: &[u8]) -> std::io::Result<Option<(usize, usize)>> {
    let mut pos = 0;
    let mut body = 0usize;
    loop {
        let Some(eol) = find(&b[pos..], b"\r\n") else {
            if b.len() - pos > 1024 {
                return Err(bad("chunk size line too long"));
            }
            return Ok(None);
        };
        let line = std::str::from_utf8(&b[pos..pos + eol]).map_err(|_| bad("bad chunk size"))?;
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| bad(format!("bad chunk size {line:?}")))?;
        pos += eol + 2;
        if size == 0 {
            // Trailers, each ending in CRLF, then an empty line.
            loop {
                let Some(eol) = find(&b[pos..], b"\r\n") else {
                    return Ok(None);
                };
                pos += eol + 2;
                if eol == 0 {
                    return Ok(Some((body, pos)));
                }
            }
        }
        body += size;
        if body > MAX_BODY {
            return Err(bad("chunked body over 16 MiB"));
        }
        if b.len() < pos + size + 2 {
            return Ok(None);
        }
        if &b[pos + size..pos + size + 2] != b"\r\n" {
            return Err(bad("chunk not followed by CRLF"));
        }
        pos += size + 2;
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A response as the bench sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    /// The HTTP status code.
    pub status: u16,
    /// Length of the body in bytes; the body itself is not kept.
    pub body_len: usize,
}

/// One keep-alive connection to one address.
pub struct Conn {
    addr: SocketAddr,
    timeout: Duration,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    /// Connections opened so far (the first included).
    pub connects: u64,
}

impl Conn {
    /// A connection to `addr`, not opened yet (the first [`Conn::send`] connects); `timeout` bounds every
    /// connect, read and write.
    pub fn new(addr: SocketAddr, timeout: Duration) -> Conn {
        Conn {
            addr,
            timeout,
            stream: None,
            buf: Vec::with_capacity(4096),
            connects: 0,
        }
    }

    /// The address this connection goes to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether a connection is open now.
    pub fn is_connected(&self) -> bool {
        self.stream.is_some()
    }

    /// Sends `request` (a whole HTTP/1.1 request) and reads the response. Any error drops the connection.
    pub fn send(&mut self, request: &[u8]) -> std::io::Result<Response> {
        let r = self.try_send(request);
        if r.is_err() {
            self.stream = None;
        }
        r
    }

    fn try_send(&mut self, request: &[u8]) -> std::io::Result<Response> {
        if self.stream.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, self.timeout)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(self.timeout))?;
            s.set_write_timeout(Some(self.timeout))?;
            self.connects += 1;
            self.stream = Some(s);
        }
        let s = self.stream.as_mut().expect("connected above");
        s.write_all(request)?;
        self.buf.clear();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let n = s.read(&mut chunk)?;
            self.buf.extend_from_slice(&chunk[..n]);
            match parse_response(&self.buf, n == 0)? {
                Parsed::Complete {
                    status,
                    body_len,
                    consumed,
                    close,
                } => {
                    if close || consumed != self.buf.len() {
                        // Closed by the server, or bytes we did not ask for: start afresh next time.
                        self.stream = None;
                    }
                    return Ok(Response { status, body_len });
                }
                Parsed::Incomplete if n == 0 => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "connection closed before a whole response",
                    ))
                }
                Parsed::Incomplete => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(status: u16, body_len: usize, consumed: usize, close: bool) -> Parsed {
        Parsed::Complete {
            status,
            body_len,
            consumed,
            close,
        }
    }

    #[test]
    fn content_length() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: x\r\n\r\nhello";
        assert_eq!(
            parse_response(r, false).unwrap(),
            complete(200, 5, r.len(), false)
        );
        // Every strict prefix is incomplete.
        for i in 0..r.len() {
            assert_eq!(
                parse_response(&r[..i], false).unwrap(),
                Parsed::Incomplete,
                "{i}"
            );
        }
    }

    #[test]
    fn headers_are_case_insensitive_and_close_is_seen() {
        let r = b"HTTP/1.1 503 Service Unavailable\r\ncontent-LENGTH:  2\r\nCONNECTION: Close\r\n\r\n{}";
        assert_eq!(
            parse_response(r, false).unwrap(),
            complete(503, 2, r.len(), true)
        );
        let r = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            parse_response(r, false).unwrap(),
            complete(200, 0, r.len(), true)
        );
        let r = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            parse_response(r, false).unwrap(),
            complete(200, 0, r.len(), false)
        );
    }

    #[test]
    fn chunked() {
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-T: 1\r\n\r\n";
        assert_eq!(
            parse_response(r, false).unwrap(),
            complete(200, 9, r.len(), false)
        );
        for i in 0..r.len() {
            assert_eq!(
                parse_response(&r[..i], false).unwrap(),
                Parsed::Incomplete,
                "{i}"
            );
        }
        let bad_crlf = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXX0\r\n\r\n";
        assert!(parse_response(bad_crlf, false).is_err());
        let bad_size = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        assert!(parse_response(bad_size, false).is_err());
    }

    #[test]
    fn no_body_statuses_and_body_until_close() {
        let r = b"HTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(
            parse_response(r, false).unwrap(),
            complete(204, 0, r.len(), false)
        );
        let r = b"HTTP/1.1 200 OK\r\n\r\nabc";
        assert_eq!(parse_response(r, false).unwrap(), Parsed::Incomplete);
        assert_eq!(
            parse_response(r, true).unwrap(),
            complete(200, 3, r.len(), true)
        );
    }

    #[test]
    fn a_following_response_is_not_consumed() {
        let r = b"HTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nxHTTP/1.1 200 OK\r\n";
        let head = b"HTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nx".len();
        assert_eq!(
            parse_response(r, false).unwrap(),
            complete(201, 1, head, false)
        );
    }

    #[test]
    fn malformed() {
        for r in [
            &b"HTTP/1.1 20 OK\r\n\r\n"[..],
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"SPDY/3 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
            b"HTTP/1.1 999 Nope\r\n\r\n",
        ] {
            assert!(
                parse_response(r, false).is_err(),
                "{:?}",
                String::from_utf8_lossy(r)
            );
        }
        let huge = vec![b'a'; MAX_HEAD + 10];
        assert!(parse_response(&huge, false).is_err());
    }

    #[test]
    fn conn_talks_to_a_keep_alive_server_and_reconnects_after_close() {
        use std::io::{BufRead, BufReader};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        // Serves two requests on the first connection (the second answered with Connection: close), then
        // one on the second connection.
        let server = std::thread::spawn(move || {
            for answers in [2, 1] {
                let (s, _) = l.accept().unwrap();
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut w = s;
                for i in 0..answers {
                    loop {
                        let mut line = String::new();
                        r.read_line(&mut line).unwrap();
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let close = if answers == 2 && i == 1 {
                        "Connection: close\r\n"
                    } else {
                        ""
                    };
                    write!(w, "HTTP/1.1 200 OK\r\n{close}Content-Length: 3\r\n\r\nabc").unwrap();
                }
            }
        });
        let mut c = Conn::new(addr, Duration::from_secs(5));
        let req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        for _ in 0..3 {
            let r = c.send(req).unwrap();
            assert_eq!((r.status, r.body_len), (200, 3));
        }
        assert_eq!(c.connects, 2);
        assert!(!c.is_connected() || c.connects == 2);
        server.join().unwrap();
    }
}
