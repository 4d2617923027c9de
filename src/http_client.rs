//! A minimal blocking HTTP/1.1 client with keep-alive, for tests, tools and embedding programs that talk to
//! a node over HTTP. It speaks exactly what our server speaks: requests with a `Content-Length` body (or
//! none), responses with `Content-Length` (tiny_http also uses chunked encoding for bodies of unknown length,
//! which it never does for ours; a chunked response is read until the connection closes).
//!
//! Limits: status line and headers at most 64 KiB, bodies at most 64 MiB; a larger or malformed response is
//! an error and the connection is dropped. Every call has a timeout.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 64 << 20;

/// A response: status, headers (names lower-cased) and body.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// The HTTP status code.
    pub status: u16,
    /// The response headers in the order received, as (lower-cased name, value) pairs.
    pub headers: Vec<(String, String)>,
    /// The response body (empty if the response had none).
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The value of the first header named `name` (compared case-insensitively), if any.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text, with invalid UTF-8 sequences replaced by U+FFFD.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One keep-alive connection to one server; reconnects transparently when the server closed it.
pub struct HttpClient {
    addr: SocketAddr,
    timeout: Duration,
    conn: Option<BufReader<TcpStream>>,
}

impl HttpClient {
    /// A client for the server at `addr`; `timeout` bounds the connect and each read and write. Connects
    /// lazily, on the first request.
    pub fn new(addr: SocketAddr, timeout: Duration) -> Self {
        HttpClient {
            addr,
            timeout,
            conn: None,
        }
    }

    /// The server address this client talks to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends `GET path` without headers or body; see [`HttpClient::request`] for errors.
    pub fn get(&mut self, path: &str) -> std::io::Result<HttpResponse> {
        self.request("GET", path, &[], &[])
    }

    /// Sends a request and reads the response. On an I/O error the connection is dropped and the error
    /// returned: nothing is retried, since a request that failed mid-way may still have been applied (the
    /// caller decides whether a retry is safe).
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<HttpResponse> {
        let r = self.try_request(method, path, headers, body);
        if r.is_err() {
            self.conn = None;
        }
        r
    }

    fn try_request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<HttpResponse> {
        if self.conn.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, self.timeout)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(self.timeout))?;
            s.set_write_timeout(Some(self.timeout))?;
            self.conn = Some(BufReader::new(s));
        }
        let conn = self.conn.as_mut().expect("connected above");
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        for (k, v) in headers {
            req.push_str(k);
            req.push_str(": ");
            req.push_str(v);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        let mut buf = req.into_bytes();
        buf.extend_from_slice(body);
        conn.get_mut().write_all(&buf)?;
        let resp = read_response(conn)?;
        if resp
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            self.conn = None;
        }
        Ok(resp)
    }
}

fn bad(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

fn read_response(r: &mut BufReader<TcpStream>) -> std::io::Result<HttpResponse> {
    let mut head = 0usize;
    let mut line = String::new();
    r.read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        ));
    }
    head += line.len();
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        head += h.len();
        if head > MAX_HEAD {
            return Err(bad("response head too large".into()));
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let len = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| v.parse::<usize>())
        .transpose()
        .map_err(|_| bad("bad content-length".into()))?;
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        read_chunked(r)?
    } else {
        match len {
            Some(n) if n > MAX_BODY => return Err(bad(format!("body of {n} bytes too large"))),
            Some(n) => {
                let mut b = vec![0; n];
                r.read_exact(&mut b)?;
                b
            }
            None => Vec::new(),
        }
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn read_chunked(r: &mut BufReader<TcpStream>) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line)?;
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
            .map_err(|_| bad(format!("bad chunk size {line:?}")))?;
        if body.len() + size > MAX_BODY {
            return Err(bad("chunked body too large".into()));
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])?;
        let mut crlf = String::new();
        r.read_line(&mut crlf)?;
        if size == 0 {
            return Ok(body);
        }
    }
}

/// Percent-encodes a query parameter value (everything but unreserved characters).
pub fn encode_query_value(v: &[u8]) -> String {
    let mut s = String::with_capacity(v.len());
    for &b in v {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}
