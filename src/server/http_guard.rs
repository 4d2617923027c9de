//! The HTTP front guard: the limits tiny_http 0.12 cannot enforce, applied before a request reaches it.
//!
//! tiny_http reads a request head line by line with no bound on a line's length or the number of lines,
//! with no timeout, on a thread of its own per connection, and its accept loop ends for good at the first
//! accept error (for instance EMFILE when a flood exhausts the file descriptors). So the node listens on
//! the HTTP address itself and hands each connection to tiny_http over a private Unix socket
//! (`<data-dir>/http-<pid>-<n>.sock`).
//!
//! Rules this guard keeps:
//! - At most `max_connections` client connections at once; one more is answered `503 busy` (with
//!   `Retry-After: 1`) and closed.
//! - A request line longer than `max_line` bytes is answered `414 uri_too_long`; header fields longer than
//!   `max_header_bytes` bytes in all, or more than [`MAX_HEADER_FIELDS`] of them, `431 headers_too_large`.
//!   Nothing beyond those caps is ever buffered for a head.
//! - A request head must arrive within `read_timeout` of its first byte, and a body must make progress at
//!   least every `read_timeout` and arrive whole within [`BODY_TIMEOUT_FACTOR`] times it; otherwise
//!   `408 request_timeout`. A connection idle between requests for [`IDLE_TIMEOUT`] is closed silently.
//! - A body is forwarded only with a `Content-Length` of at most `max_body` bytes: more is answered
//!   `413 too_large` before a byte of it is read, a `Transfer-Encoding` (chunked uploads) `411
//!   length_required`, conflicting or malformed lengths `400 bad_request`. Exactly `Content-Length` bytes
//!   are forwarded; what follows is the next request, checked the same way.
//! - Before answering an error itself, the guard lets tiny_http finish the answers to the requests it
//!   already forwarded on that connection, so answers never interleave; then it closes the connection.
//! - Responses are copied back verbatim. Errors answered here are JSON like the API's and are not counted
//!   in `/metrics` (they never reach a worker).
//! - Accept errors are logged (at most once per 5 s) and retried after a pause; they never stop the guard.
//! - Worst-case memory for request heads: `max_connections` × (`max_line` + `max_header_bytes`), plus two
//!   `CHUNK` (16 KiB) buffers (reading, copying answers) per open connection, allocated once per connection.
//! - Each client connection holds about [`FDS_PER_CONNECTION`] file descriptors (its socket, the socket to
//!   tiny_http, their clones and tiny_http's); [`connection_cap`] lowers `max_connections` to what the
//!   open-file limit allows, so a flood runs into the guard's 503, never into EMFILE (which would end
//!   tiny_http's accept loop for good).

use log::{debug, warn};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{SocketAddr as UnixAddr, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Header fields allowed in one request head.
pub const MAX_HEADER_FIELDS: usize = 100;
/// A keep-alive connection with no request for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A body must arrive whole within this many read timeouts.
pub const BODY_TIMEOUT_FACTOR: u32 = 6;
/// Longest wait for tiny_http to take a new connection before the next one is handed over.
const HANDOFF_WAIT: Duration = Duration::from_secs(1);
/// How often blocked reads wake up to check deadlines and shutdown.
const POLL: Duration = Duration::from_millis(250);
/// Size of the per-connection scratch buffer for reading heads and bodies, and of the copier's buffer.
/// Allocated once per connection, never per request.
const CHUNK: usize = 16 * 1024;
/// After an error answer, input is discarded for at most this long...
const LINGER: Duration = Duration::from_secs(2);
/// ...or this many bytes.
const LINGER_BYTES: usize = 8 << 20;

/// File descriptors one client connection may hold, with a margin.
pub const FDS_PER_CONNECTION: u64 = 8;
/// File descriptors kept for everything else (WAL, snapshots, peers, logs).
const FDS_RESERVED: u64 = 256;

/// The process's open-file limit (soft), if it can be read.
pub fn fd_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own and pass by pointer.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    (rc == 0).then_some(lim.rlim_cur)
}

/// Raises the soft open-file limit to the hard one (as many servers do at start); returns the new soft
/// limit. For the binary: a library should leave process limits to its host.
pub fn raise_fd_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: as in `fd_limit`; setrlimit only reads the struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return Some(raised.rlim_cur);
            }
        }
    }
    Some(lim.rlim_cur)
}

/// The connection cap the open-file limit `fds` allows for a wanted cap (at least 1).
pub fn connection_cap(wanted: usize, fds: Option<u64>) -> usize {
    match fds {
        Some(fds) => {
            let budget = fds.saturating_sub(FDS_RESERVED) / FDS_PER_CONNECTION;
            wanted
                .min(usize::try_from(budget).unwrap_or(usize::MAX))
                .max(1)
        }
        None => wanted,
    }
}

/// The guard's limits.
#[derive(Debug, Clone)]
pub struct GuardConfig {
    /// Client connections served at once; one more is answered `503 busy` and closed.
    pub max_connections: usize,
    /// Longest request line (method, URL, version).
    pub max_line: usize,
    /// Most bytes of header fields after the request line.
    pub max_header_bytes: usize,
    /// Largest request body.
    pub max_body: u64,
    /// A request head must arrive within this of its first byte, and a body must make progress at least this
    /// often.
    pub read_timeout: Duration,
}

/// The running guard; [`Guard::stop`] ends its acceptor (open connections end within a quarter second).
pub struct Guard {
    local: SocketAddr,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    cfg: GuardConfig,
    backend: UnixAddr,
    stop: Arc<AtomicBool>,
    active: AtomicUsize,
    /// Held while one new connection is handed to tiny_http (see [`Backend::wait_taken`]).
    handoff: Mutex<()>,
}

impl Guard {
    /// Listens on `listen` and forwards accepted requests to the tiny_http server listening on `backend`.
    pub fn start(listen: SocketAddr, backend: UnixAddr, cfg: GuardConfig) -> Result<Guard, String> {
        let listener = TcpListener::bind(listen)
            .map_err(|e| format!("cannot listen for HTTP on {listen}: {e}"))?;
        let local = listener
            .local_addr()
            .map_err(|e| format!("cannot listen for HTTP on {listen}: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let sh = Arc::new(Shared {
            cfg,
            backend,
            stop: stop.clone(),
            active: AtomicUsize::new(0),
            handoff: Mutex::new(()),
        });
        let acceptor = std::thread::Builder::new()
            .name("http-guard".into())
            .spawn(move || accept_loop(listener, sh))
            .map_err(|e| format!("cannot spawn the HTTP acceptor: {e}"))?;
        Ok(Guard {
            local,
            stop,
            acceptor: Some(acceptor),
        })
    }

    /// The address the guard actually listens on (the real port when `listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Stops accepting and waits for the acceptor thread.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let mut wake = self.local;
        if wake.ip().is_unspecified() {
            wake.set_ip(if wake.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.acceptor.is_some() {
            self.stop();
        }
    }
}

fn accept_loop(listener: TcpListener, sh: Arc<Shared>) {
    let mut last_error_log: Option<Instant> = None;
    let mut errors = 0u64;
    while !sh.stop.load(Ordering::SeqCst) {
        let (stream, addr) = match listener.accept() {
            Ok(c) => c,
            Err(e) => {
                errors += 1;
                if last_error_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                    warn!("http: accept failed: {e} ({errors} accept errors so far); retrying");
                    last_error_log = Some(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if sh.stop.load(Ordering::SeqCst) {
            return;
        }
        if sh.active.load(Ordering::SeqCst) >= sh.cfg.max_connections {
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            let mut s = stream;
            let _ = s.write_all(&error_response(
                503,
                "busy",
                "too many HTTP connections; nothing was applied, retry shortly",
            ));
            debug!("http: refused a connection from {addr}: too many connections");
            continue;
        }
        sh.active.fetch_add(1, Ordering::SeqCst);
        let sh2 = sh.clone();
        let spawned = std::thread::Builder::new()
            .name("http-conn".into())
            .stack_size(128 * 1024)
            .spawn(move || {
                serve(&sh2, stream);
                sh2.active.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            sh.active.fetch_sub(1, Ordering::SeqCst);
            warn!("http: cannot spawn a connection thread: {e}");
        }
    }
}

/// An error the guard answers itself.
struct Refusal(u16, &'static str, String);

/// The connection to tiny_http for one client connection, and the thread copying its answers back. This is
/// the one place where client connections are handed to tiny_http (one Unix-socket connection each,
/// opened at the client's first complete request head): how they reach it changes here only.
struct Backend {
    stream: UnixStream,
    copier: JoinHandle<()>,
    /// Set when the guard ends the connection itself: the copier must then leave the client open.
    finishing: Arc<AtomicBool>,
    /// Set by the copier when the first bytes of an answer arrive.
    answered: Arc<AtomicBool>,
}

impl Backend {
    fn connect(sh: &Shared, client: &TcpStream) -> std::io::Result<Backend> {
        let stream = UnixStream::connect_addr(&sh.backend)?;
        stream.set_write_timeout(Some(sh.cfg.read_timeout * BODY_TIMEOUT_FACTOR))?;
        let mut from = stream.try_clone()?;
        let mut to = client.try_clone()?;
        let finishing = Arc::new(AtomicBool::new(false));
        let fin = finishing.clone();
        let answered = Arc::new(AtomicBool::new(false));
        let ans = answered.clone();
        let copier = std::thread::Builder::new()
            .name("http-copy".into())
            .stack_size(128 * 1024)
            .spawn(move || {
                copy_answers(&mut from, &mut to, &ans);
                if !fin.load(Ordering::SeqCst) {
                    let _ = to.shutdown(Shutdown::Both);
                }
            })?;
        Ok(Backend {
            stream,
            copier,
            finishing,
            answered,
        })
    }

    /// Waits until tiny_http has taken this new connection: its task read the request head sent so far
    /// (the socket's send queue is empty) or an answer arrived; at most [`HANDOFF_WAIT`].
    ///
    /// Why: tiny_http 0.12 runs each connection as a task of its own thread pool, and its `spawn` reads
    /// the count of idle threads without waiting for the threads it already woke to take their tasks.
    /// When connections arrive in a burst, more tasks are queued than there are idle threads; a queued
    /// keep-alive connection then waits until some other connection closes, which under a steady load is
    /// never (64 connections opened at once were seen to get 4 of them served). Handing connections over
    /// one at a time, each only once the previous one runs, keeps the pool's count exact, so every task
    /// gets a thread. The cost is a wait of one local round trip per new connection, not per request.
    fn wait_taken(&self, sh: &Shared) {
        let deadline = Instant::now() + HANDOFF_WAIT;
        let mut pause = Duration::from_micros(20);
        while !self.answered.load(Ordering::SeqCst)
            && unsent_bytes(&self.stream) != Some(0)
            && Instant::now() < deadline
            && !sh.stop.load(Ordering::SeqCst)
        {
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(1));
        }
    }

    /// Lets tiny_http answer what it was given, copies those answers, and waits for the copier.
    fn finish(self) {
        self.finishing.store(true, Ordering::SeqCst);
        let _ = self.stream.shutdown(Shutdown::Write);
        let _ = self.copier.join();
    }
}

/// Copies tiny_http's answers to the client, flagging the first bytes.
fn copy_answers(from: &mut UnixStream, to: &mut TcpStream, answered: &AtomicBool) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                answered.store(true, Ordering::SeqCst);
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Bytes written to a Unix stream socket that its peer has not read yet (`SIOCOUTQ`), if known.
fn unsent_bytes(stream: &UnixStream) -> Option<u64> {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int into the variable we own and pass by pointer; the fd is
    // open for the lifetime of `stream`.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    (rc == 0).then(|| u64::try_from(n).unwrap_or(0))
}

/// Serves one client connection until it closes, idles out, errs or the guard stops.
fn serve(sh: &Shared, mut client: TcpStream) {
    let cfg = &sh.cfg;
    let _ = client.set_nodelay(true);
    if client.set_read_timeout(Some(POLL)).is_err()
        || client.set_write_timeout(Some(cfg.read_timeout)).is_err()
    {
        return;
    }
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut scratch = vec![0u8; CHUNK];
    let mut backend: Option<Backend> = None;
    let refusal = loop {
        let (head_len, body_len) = match read_head(sh, &mut client, &mut buf, &mut scratch) {
            Ok(Some(h)) => h,
            Ok(None) => break None,
            Err(r) => break Some(r),
        };
        // A new connection is handed to tiny_http under the handoff lock, held until tiny_http took it.
        let mut handoff = None;
        if backend.is_none() {
            handoff = Some(sh.handoff.lock().unwrap_or_else(|e| e.into_inner()));
            match Backend::connect(sh, &client) {
                Ok(b) => backend = Some(b),
                Err(e) => {
                    break Some(Refusal(
                        503,
                        "busy",
                        format!("the HTTP server is not accepting requests: {e}"),
                    ))
                }
            }
        }
        let Some(b) = backend.as_mut() else {
            break None;
        };
        if b.stream.write_all(&buf[..head_len]).is_err() {
            break None;
        }
        buf.drain(..head_len);
        // Released before the body: a slow body must not hold up other connections.
        if let Some(lock) = handoff.take() {
            b.wait_taken(sh);
            drop(lock);
        }
        match forward_body(
            sh,
            &mut client,
            &mut b.stream,
            &mut buf,
            body_len,
            &mut scratch,
        ) {
            Ok(true) => {}
            Ok(false) => break None,
            Err(r) => break Some(r),
        }
    };
    match (backend, refusal) {
        (Some(b), Some(r)) => {
            b.finish();
            refuse(&mut client, r);
        }
        (None, Some(r)) => refuse(&mut client, r),
        (Some(b), None) => {
            // The client is gone or idle: let tiny_http see the end of the requests, then stop.
            let _ = b.stream.shutdown(Shutdown::Write);
            let _ = b.copier.join();
        }
        (None, None) => {}
    }
}

/// Answers an error and closes. The close lingers: the client may still be sending (the rest of an
/// oversized head), and closing with unread input would reset the connection and could destroy the answer
/// before the client reads it; so the guard stops writing, then discards input for a bounded while.
fn refuse(client: &mut TcpStream, Refusal(status, code, message): Refusal) {
    debug!("http: answered {status} {code}: {message}");
    let _ = client.write_all(&error_response(status, code, &message));
    let _ = client.shutdown(Shutdown::Write);
    let until = Instant::now() + LINGER;
    let mut sink = vec![0u8; CHUNK];
    let mut drained = 0usize;
    while Instant::now() < until && drained < LINGER_BYTES {
        match client.read(&mut sink) {
            Ok(0) => break,
            Ok(n) => drained += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let _ = client.shutdown(Shutdown::Both);
}

fn error_response(status: u16, code: &str, message: &str) -> Vec<u8> {
    let reason = match status {
        400 => "Bad Request",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let mut body = serde_json::to_vec(&serde_json::json!({
        "error": {"code": code, "message": message}
    }))
    .unwrap_or_default();
    body.push(b'\n');
    let retry = if status == 503 {
        "Retry-After: 1\r\n"
    } else {
        ""
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         {retry}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

/// Reads into `buf` until it holds a whole request head; returns (head length, body length), `None` when
/// the connection ended (closed, idle, shutdown) before a head began or while it was arriving.
fn read_head(
    sh: &Shared,
    client: &mut TcpStream,
    buf: &mut Vec<u8>,
    chunk: &mut [u8],
) -> Result<Option<(usize, u64)>, Refusal> {
    let cfg = &sh.cfg;
    let waiting_since = Instant::now();
    let mut first_byte = (!buf.is_empty()).then(Instant::now);
    // Bytes already searched, and where the request line ends: each byte is searched about once.
    let mut scanned: usize = 0;
    let mut line_end = None;
    loop {
        let from = scanned.saturating_sub(3);
        if let Some(end) = find(&buf[from..], b"\r\n\r\n") {
            let head_len = from + end + 4;
            let body_len = check_head(&buf[..head_len], cfg)?;
            return Ok(Some((head_len, body_len)));
        }
        if line_end.is_none() {
            let from = scanned.saturating_sub(1);
            line_end = find(&buf[from..], b"\r\n").map(|p| from + p);
        }
        scanned = buf.len();
        check_partial_head(buf, line_end, cfg)?;
        if sh.stop.load(Ordering::SeqCst) {
            return Ok(None);
        }
        // Never read past what the caps allow.
        let room = (cfg.max_line + cfg.max_header_bytes + 4)
            .saturating_sub(buf.len())
            .clamp(1, chunk.len());
        match client.read(&mut chunk[..room]) {
            Ok(0) => return Ok(None),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                first_byte.get_or_insert_with(Instant::now);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                match first_byte {
                    None if waiting_since.elapsed() >= IDLE_TIMEOUT => return Ok(None),
                    Some(t) if t.elapsed() >= cfg.read_timeout => {
                        return Err(Refusal(
                            408,
                            "request_timeout",
                            format!(
                                "the request head did not arrive within {} ms",
                                cfg.read_timeout.as_millis()
                            ),
                        ))
                    }
                    _ => {}
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Ok(None),
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn too_long_line(cfg: &GuardConfig) -> Refusal {
    Refusal(
        414,
        "uri_too_long",
        format!(
            "the request line exceeds the limit of {} bytes",
            cfg.max_line
        ),
    )
}

fn too_many_headers(cfg: &GuardConfig) -> Refusal {
    Refusal(
        431,
        "headers_too_large",
        format!(
            "the header fields exceed the limit of {} bytes or {MAX_HEADER_FIELDS} fields",
            cfg.max_header_bytes
        ),
    )
}

/// The caps, checked on a head still arriving whose request line ends at `line_end` (if it does yet).
fn check_partial_head(
    buf: &[u8],
    line_end: Option<usize>,
    cfg: &GuardConfig,
) -> Result<(), Refusal> {
    match line_end {
        None if buf.len() > cfg.max_line + 2 => Err(too_long_line(cfg)),
        None => Ok(()),
        Some(line) if line > cfg.max_line => Err(too_long_line(cfg)),
        Some(line) => {
            let fields = &buf[line + 2..];
            if fields.len() > cfg.max_header_bytes + 2
                || fields.windows(2).filter(|w| w == b"\r\n").count() > MAX_HEADER_FIELDS
            {
                return Err(too_many_headers(cfg));
            }
            Ok(())
        }
    }
}

/// Checks a whole head (ending in an empty line); returns the body length.
fn check_head(head: &[u8], cfg: &GuardConfig) -> Result<u64, Refusal> {
    let line = find(head, b"\r\n").unwrap_or(head.len());
    if line > cfg.max_line {
        return Err(too_long_line(cfg));
    }
    let fields = &head[(line + 2).min(head.len())..head.len().saturating_sub(2)];
    if fields.len() > cfg.max_header_bytes {
        return Err(too_many_headers(cfg));
    }
    let mut length: Option<u64> = None;
    let mut count = 0;
    for field in fields.split(|&b| b == b'\n') {
        let field = field.strip_suffix(b"\r").unwrap_or(field);
        if field.is_empty() {
            continue;
        }
        count += 1;
        if count > MAX_HEADER_FIELDS {
            return Err(too_many_headers(cfg));
        }
        let Some(colon) = field.iter().position(|&b| b == b':') else {
            continue; // tiny_http answers malformed fields itself
        };
        let (name, value) = (&field[..colon], &field[colon + 1..]);
        let value = String::from_utf8_lossy(value);
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return Err(Refusal(
                411,
                "length_required",
                "request bodies must be sent with Content-Length, not a Transfer-Encoding".into(),
            ));
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            let n: u64 = value.trim().parse().map_err(|_| {
                Refusal(
                    400,
                    "bad_request",
                    format!("malformed Content-Length {:?}", value.trim()),
                )
            })?;
            if length.is_some_and(|l| l != n) {
                return Err(Refusal(
                    400,
                    "bad_request",
                    "conflicting Content-Length fields".into(),
                ));
            }
            length = Some(n);
        }
    }
    let length = length.unwrap_or(0);
    if length > cfg.max_body {
        return Err(Refusal(
            413,
            "too_large",
            format!(
                "a body of {length} bytes exceeds the limit of {}",
                cfg.max_body
            ),
        ));
    }
    Ok(length)
}

/// Forwards `len` body bytes (first from `buf`, which keeps what follows them). `Ok(false)`: the client
/// or tiny_http went away.
fn forward_body(
    sh: &Shared,
    client: &mut TcpStream,
    backend: &mut UnixStream,
    buf: &mut Vec<u8>,
    len: u64,
    chunk: &mut [u8],
) -> Result<bool, Refusal> {
    let cfg = &sh.cfg;
    let have = (buf.len() as u64).min(len) as usize;
    if backend.write_all(&buf[..have]).is_err() {
        return Ok(false);
    }
    buf.drain(..have);
    let mut remaining = len - have as u64;
    let deadline = Instant::now() + cfg.read_timeout * BODY_TIMEOUT_FACTOR;
    let mut progress = Instant::now();
    while remaining > 0 {
        if sh.stop.load(Ordering::SeqCst) {
            return Ok(false);
        }
        let want = usize::try_from(remaining)
            .unwrap_or(usize::MAX)
            .min(chunk.len());
        match client.read(&mut chunk[..want]) {
            Ok(0) => return Ok(false),
            Ok(n) => {
                if backend.write_all(&chunk[..n]).is_err() {
                    return Ok(false);
                }
                remaining -= n as u64;
                progress = Instant::now();
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if progress.elapsed() >= cfg.read_timeout || Instant::now() >= deadline {
                    return Err(Refusal(
                        408,
                        "request_timeout",
                        format!("the request body stalled ({remaining} bytes missing)"),
                    ));
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Ok(false),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> GuardConfig {
        GuardConfig {
            max_connections: 4,
            max_line: 100,
            max_header_bytes: 200,
            max_body: 1000,
            read_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn heads_are_checked() {
        let c = cfg();
        let ok = b"PUT /v1/kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n";
        assert_eq!(check_head(ok, &c).ok(), Some(12));
        let code = |h: &[u8]| check_head(h, &c).err().map(|r| r.0);
        assert_eq!(code(b"GET / HTTP/1.1\r\n\r\n"), None);
        assert_eq!(
            code(b"PUT / HTTP/1.1\r\nContent-Length: 1001\r\n\r\n"),
            Some(413)
        );
        assert_eq!(
            code(b"PUT / HTTP/1.1\r\ncontent-length: x\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            code(b"PUT / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            code(b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Some(411)
        );
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(100));
        assert_eq!(code(long.as_bytes()), Some(414));
        let many = format!("GET / HTTP/1.1\r\n{}\r\n", "A: b\r\n".repeat(101));
        assert_eq!(code(many.as_bytes()), Some(431));
        let big = format!("GET / HTTP/1.1\r\nA: {}\r\n\r\n", "b".repeat(300));
        assert_eq!(code(big.as_bytes()), Some(431));
        assert_eq!(
            check_partial_head("x".repeat(103).as_bytes(), None, &c)
                .err()
                .map(|r| r.0),
            Some(414)
        );
        let partial = format!("GET / HTTP/1.1\r\n{}", "A: b\r\n".repeat(101));
        assert_eq!(
            check_partial_head(partial.as_bytes(), Some(14), &c)
                .err()
                .map(|r| r.0),
            Some(431)
        );
    }

    #[test]
    fn the_connection_cap_follows_the_file_limit() {
        assert_eq!(connection_cap(1024, None), 1024);
        assert_eq!(connection_cap(1024, Some(1024)), (1024 - 256) / 8);
        assert_eq!(connection_cap(1024, Some(1 << 20)), 1024);
        assert_eq!(connection_cap(1024, Some(10)), 1);
    }
}
