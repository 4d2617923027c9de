//! Peer transport: Raft messages over TCP, one outbound connection per peer, no async runtime.
//!
//! Wire format: every frame is a `u32` little-endian payload length followed by the payload. The first frame
//! on a connection is the handshake (`NIMB`, protocol version `u16`, cluster name as a byte string of at most
//! 255 bytes, sender id `u64`, the sender's HTTP address as a byte string of at most 255 bytes, possibly
//! empty, and the connection's kind `u8`: 0 for messages, 1 for one snapshot transfer, see [`snapshot`]);
//! on a message connection every later frame is one [`Message`] encoded by [`codec`]. Frames over
//! `max_frame_size` (default 64 MiB), undecodable frames, a bad handshake (wrong magic, version or cluster
//! name; an unknown or zero sender) or a message whose `from`/`to` do not match the connection close that
//! connection with a warning naming the peer address and the reason. Those warnings are rate-limited (the
//! first [`WARN_BURST`] in each [`WARN_WINDOW`], then one line counting the rest), so a client opening
//! bad connection after connection cannot flood the log; [`Transport::refused_connections`] counts them
//! all. A peer's HTTP address is taken from its handshake only once that connection has carried a valid
//! message, so a handshake followed by garbage cannot replace it. (Peers are not authenticated: anyone who
//! can reach the Raft port and knows the cluster name can still speak as a member.)
//!
//! Threads and the rules they keep:
//! - One acceptor thread; one reader thread per inbound connection, forwarding decoded messages to the
//!   Raft thread's channel.
//! - One writer thread per peer owning the only outbound connection to it, fed by a bounded queue.
//!   [`Transport::send`] never blocks: a full queue drops the message (Raft retransmits) and counts it.
//!   The writer batches whatever is queued into one buffered write; it connects lazily with a timeout,
//!   writes with a timeout, and reconnects with exponential backoff, discarding messages that went stale
//!   while the peer was unreachable. A slow or dead peer therefore never blocks the Raft thread or the
//!   other peers.
//! - No connection is opened per message.

pub mod codec;
pub mod snapshot;

use crate::codec::{Reader, Writer};
use crate::config::connect_addr;
use crate::raft::{Message, NodeId};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use log::{debug, info, warn};
use std::collections::BTreeMap;
use std::fmt;
use std::io::{BufWriter, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const MAGIC: &[u8; 4] = b"NIMB";
const PROTOCOL_VERSION: u16 = 2;
const MAX_CLUSTER_NAME: usize = 255;
/// Bytes of queued messages folded into one write.
const MAX_WRITE_BATCH: usize = 4 << 20;
/// Warnings about refused or failed inbound connections logged one by one in each [`WARN_WINDOW`]...
pub const WARN_BURST: u64 = 10;
/// ...after which the rest of the window's are counted and reported in one line when it ends.
pub const WARN_WINDOW: Duration = Duration::from_secs(10);

/// Transport settings.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    pub node_id: NodeId,
    pub cluster: String,
    pub listen: SocketAddr,
    /// Every other member's address (`:port` or `host:port`).
    pub peers: BTreeMap<NodeId, String>,
    pub queue_len: usize,
    pub max_frame_size: usize,
    pub connect_timeout: Duration,
    pub write_timeout: Duration,
    /// An inbound connection silent this long is closed (heartbeats normally flow every tick).
    pub read_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// This node's HTTP address, told to peers in the handshake so followers can name the leader's. An
    /// unspecified IP (`0.0.0.0`) is replaced, on the receiving side, by the IP the connection came from.
    pub advertise_http: Option<SocketAddr>,
    /// Where snapshots received from the leader are written (`None`: snapshot transfers are refused).
    pub snapshot_dir: Option<std::path::PathBuf>,
    /// Largest snapshot accepted from a peer.
    pub max_snapshot_size: u64,
}

impl TransportConfig {
    pub fn new(
        node_id: NodeId,
        cluster: String,
        listen: SocketAddr,
        peers: BTreeMap<NodeId, String>,
    ) -> Self {
        TransportConfig {
            node_id,
            cluster,
            listen,
            peers,
            queue_len: 8192,
            max_frame_size: 64 << 20,
            connect_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(30),
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_secs(1),
            advertise_http: None,
            snapshot_dir: None,
            max_snapshot_size: 64 << 30,
        }
    }
}

/// Why the transport could not start.
#[derive(Debug)]
pub enum TransportError {
    Bind(SocketAddr, std::io::Error),
    Config(String),
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportError::Bind(a, e) => write!(f, "cannot listen on {a}: {e}"),
            TransportError::Config(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for TransportError {}

/// Counters for one peer.
#[derive(Debug, Default)]
pub struct PeerStats {
    pub sent: AtomicU64,
    pub dropped: AtomicU64,
    pub connects: AtomicU64,
    pub bytes: AtomicU64,
}

/// A snapshot of the counters: (peer, sent, dropped, connects, bytes).
pub type TransportStats = Vec<(NodeId, u64, u64, u64, u64)>;

struct Peer {
    tx: Sender<Message>,
    stats: Arc<PeerStats>,
}

/// The running transport. Dropping it without [`Transport::shutdown`] leaves its threads to exit on their
/// own once the process does.
pub struct Transport {
    id: NodeId,
    local: SocketAddr,
    peers: BTreeMap<NodeId, Peer>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    readers: Arc<Mutex<Vec<JoinHandle<()>>>>,
    peer_http: Arc<Mutex<BTreeMap<NodeId, SocketAddr>>>,
    shared: Shared,
}

#[derive(Clone)]
struct Shared {
    cfg: Arc<TransportConfig>,
    stop: Arc<AtomicBool>,
    /// Peers' HTTP addresses, as their handshakes told.
    peer_http: Arc<Mutex<BTreeMap<NodeId, SocketAddr>>>,
    /// The current peers and their Raft addresses (membership changes update it).
    peers: Arc<RwLock<BTreeMap<NodeId, String>>>,
    /// Warnings about inbound connections, rate-limited.
    refusals: Arc<RefusalLog>,
}

impl Shared {
    fn peer_addr(&self, id: NodeId) -> Option<String> {
        self.peers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }
}

/// Logs why inbound connections were refused or failed, at most [`WARN_BURST`] lines per
/// [`WARN_WINDOW`] plus one line counting the rest of the window's, and counts them all.
struct RefusalLog {
    total: AtomicU64,
    window: Mutex<RefusalWindow>,
}

struct RefusalWindow {
    start: Instant,
    logged: u64,
    suppressed: u64,
}

impl RefusalLog {
    fn new() -> Self {
        RefusalLog {
            total: AtomicU64::new(0),
            window: Mutex::new(RefusalWindow {
                start: Instant::now(),
                logged: 0,
                suppressed: 0,
            }),
        }
    }

    /// One refused or failed inbound connection: logged at warn unless the window's burst is spent.
    fn warn(&self, args: fmt::Arguments<'_>) {
        self.total.fetch_add(1, Ordering::Relaxed);
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        Self::roll(&mut w);
        if w.logged < WARN_BURST {
            w.logged += 1;
            drop(w);
            warn!("{args}");
        } else {
            w.suppressed += 1;
        }
    }

    /// Ends the window once it is over, reporting what it did not log. The acceptor calls it as it
    /// polls, so the count comes soon after the window even when no further connection does.
    fn tick(&self) {
        Self::roll(&mut self.window.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn roll(w: &mut RefusalWindow) {
        if w.start.elapsed() < WARN_WINDOW {
            return;
        }
        if w.suppressed > 0 {
            warn!(
                "transport: {} more inbound connections refused or failed in the last {:.0?} (not logged \
                 one by one)",
                w.suppressed,
                w.start.elapsed()
            );
        }
        *w = RefusalWindow {
            start: Instant::now(),
            logged: 0,
            suppressed: 0,
        };
    }
}

impl Transport {
    /// Binds the listener and starts the acceptor and one writer per peer.
    pub fn start(
        cfg: TransportConfig,
        inbound: Sender<Message>,
    ) -> Result<Transport, TransportError> {
        if cfg.cluster.len() > MAX_CLUSTER_NAME {
            return Err(TransportError::Config(format!(
                "cluster name longer than {MAX_CLUSTER_NAME} bytes"
            )));
        }
        let listener =
            TcpListener::bind(cfg.listen).map_err(|e| TransportError::Bind(cfg.listen, e))?;
        let local = listener
            .local_addr()
            .map_err(|e| TransportError::Bind(cfg.listen, e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| TransportError::Bind(cfg.listen, e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let peer_http = Arc::new(Mutex::new(BTreeMap::new()));
        let shared = Shared {
            peers: Arc::new(RwLock::new(cfg.peers.clone())),
            cfg: Arc::new(cfg),
            stop: stop.clone(),
            peer_http: peer_http.clone(),
            refusals: Arc::new(RefusalLog::new()),
        };
        let readers = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        let mut peers = BTreeMap::new();
        for (&pid, addr) in &shared.cfg.peers {
            let (peer, h) = spawn_writer(&shared, pid, addr.clone())?;
            threads.push(h);
            peers.insert(pid, peer);
        }
        let (sh, rd) = (shared.clone(), readers.clone());
        let h = std::thread::Builder::new()
            .name("peer-acceptor".into())
            .spawn(move || acceptor(sh, listener, inbound, rd))
            .map_err(|e| TransportError::Config(format!("cannot spawn the acceptor: {e}")))?;
        threads.push(h);
        Ok(Transport {
            id: shared.cfg.node_id,
            local,
            peers,
            stop,
            threads,
            readers,
            peer_http,
            shared,
        })
    }

    /// Replaces the set of peers (after a membership change): writers for new peers start, writers for
    /// removed peers stop, a peer whose address changed gets a new writer; connections from ids no longer
    /// listed are refused from then on.
    pub fn set_peers(&mut self, peers: BTreeMap<NodeId, String>) -> Result<(), TransportError> {
        let peers: BTreeMap<NodeId, String> =
            peers.into_iter().filter(|(id, _)| *id != self.id).collect();
        let old = self
            .shared
            .peers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for (id, addr) in &old {
            if peers.get(id) != Some(addr) {
                self.peers.remove(id); // closes its queue: the writer exits
                info!("transport: node {id} ({addr}) is no longer a peer");
            }
        }
        for (&id, addr) in &peers {
            if !self.peers.contains_key(&id) {
                let (peer, h) = spawn_writer(&self.shared, id, addr.clone())?;
                self.threads.push(h);
                self.peers.insert(id, peer);
                info!("transport: node {id} at {addr} is a peer");
            }
        }
        *self.shared.peers.write().unwrap_or_else(|e| e.into_inner()) = peers;
        Ok(())
    }

    /// The HTTP address a peer announced when it last connected to us, if it did.
    pub fn peer_http(&self, id: NodeId) -> Option<SocketAddr> {
        self.peer_http
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .copied()
    }

    /// Queues a message for its destination; never blocks. Drops (and counts) it if the queue is full.
    pub fn send(&self, msg: Message) {
        debug_assert_ne!(msg.to, self.id, "message to self");
        let Some(peer) = self.peers.get(&msg.to) else {
            debug!("transport: no peer {} for {}", msg.to, msg.body.name());
            return;
        };
        match peer.tx.try_send(msg) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                peer.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Inbound connections closed for a reason worth a warning (bad handshake, bad frame, spoofed
    /// message, silence, I/O error, refused snapshot), whether or not the rate limit let it be logged.
    pub fn refused_connections(&self) -> u64 {
        self.shared.refusals.total.load(Ordering::Relaxed)
    }

    pub fn stats(&self) -> TransportStats {
        self.peers
            .iter()
            .map(|(&id, p)| {
                let s = &p.stats;
                (
                    id,
                    s.sent.load(Ordering::Relaxed),
                    s.dropped.load(Ordering::Relaxed),
                    s.connects.load(Ordering::Relaxed),
                    s.bytes.load(Ordering::Relaxed),
                )
            })
            .collect()
    }

    /// Stops every thread the transport started and waits for them (bounded by their timeouts).
    pub fn shutdown(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.peers.clear(); // closes the writers' queues
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let readers = std::mem::take(&mut *self.readers.lock().unwrap_or_else(|e| e.into_inner()));
        for r in readers {
            let _ = r.join();
        }
    }
}

// ---- Framing ----

fn write_frame(w: &mut impl Write, payload: &[u8]) -> std::io::Result<()> {
    w.write_all(&(payload.len() as u32).to_le_bytes())?;
    w.write_all(payload)
}

/// Reassembles frames from a stream whose reads may time out: a timeout loses nothing, the partial frame
/// stays buffered. Lengths are checked against the cap before anything is buffered for them.
struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    max: usize,
}

enum Frame<'a> {
    Data(&'a [u8]),
    Eof,
    /// Nothing complete yet (read timed out).
    Idle,
}

impl FrameReader {
    fn new(max: usize) -> Self {
        FrameReader {
            buf: Vec::with_capacity(64 * 1024),
            start: 0,
            max,
        }
    }

    fn next(&mut self, r: &mut impl Read) -> std::io::Result<Frame<'_>> {
        loop {
            let avail = self.buf.len() - self.start;
            if avail >= 4 {
                let b = &self.buf[self.start..self.start + 4];
                let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
                if len > self.max {
                    return Err(std::io::Error::new(
                        ErrorKind::InvalidData,
                        format!("frame of {len} bytes exceeds the cap of {}", self.max),
                    ));
                }
                if avail >= 4 + len {
                    let at = self.start + 4;
                    self.start = at + len;
                    return Ok(Frame::Data(&self.buf[at..at + len]));
                }
            }
            // Compact before reading more.
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            let old = self.buf.len();
            self.buf.resize(old + 64 * 1024, 0);
            match r.read(&mut self.buf[old..]) {
                Ok(0) => {
                    self.buf.truncate(old);
                    return Ok(Frame::Eof);
                }
                Ok(n) => self.buf.truncate(old + n),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    self.buf.truncate(old);
                    return Ok(Frame::Idle);
                }
                Err(e) => {
                    self.buf.truncate(old);
                    return Err(e);
                }
            }
        }
    }
}

/// What a connection carries, named in its handshake.
const KIND_MESSAGES: u8 = 0;
const KIND_SNAPSHOT: u8 = 1;

fn handshake(cluster: &str, id: NodeId, http: Option<SocketAddr>, kind: u8) -> Vec<u8> {
    let mut w = Writer::new();
    w.buf.extend_from_slice(MAGIC);
    w.buf.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    w.bytes(cluster.as_bytes());
    w.u64(id);
    w.bytes(http.map(|a| a.to_string()).unwrap_or_default().as_bytes());
    w.u8(kind);
    w.into_inner()
}

/// Validates a handshake; returns the sender's id and the HTTP address it announced (empty or unparsable
/// addresses are ignored: they only serve to point clients at the leader).
fn check_handshake(buf: &[u8], sh: &Shared) -> Result<(NodeId, Option<SocketAddr>, u8), String> {
    let cfg = &sh.cfg;
    if buf.len() < 6 || &buf[..4] != MAGIC {
        return Err("bad magic: not a nimbus peer".into());
    }
    let version = u16::from_le_bytes([buf[4], buf[5]]);
    if version != PROTOCOL_VERSION {
        return Err(format!(
            "protocol version {version}, we speak {PROTOCOL_VERSION}"
        ));
    }
    let mut r = Reader::new(&buf[6..]);
    let cluster = r.bytes().map_err(|e| e.to_string())?;
    let id = r.u64().map_err(|e| e.to_string())?;
    let http = r.bytes().map_err(|e| e.to_string())?;
    let kind = r.u8().map_err(|e| e.to_string())?;
    r.finish().map_err(|e| e.to_string())?;
    if kind != KIND_MESSAGES && kind != KIND_SNAPSHOT {
        return Err(format!("unknown connection kind {kind}"));
    }
    if http.len() > MAX_CLUSTER_NAME {
        return Err(format!("HTTP address of {} bytes", http.len()));
    }
    let http = std::str::from_utf8(&http)
        .ok()
        .and_then(|h| h.parse::<SocketAddr>().ok());
    if cluster != cfg.cluster.as_bytes() {
        return Err(format!(
            "cluster {:?}, we are {:?}",
            String::from_utf8_lossy(&cluster),
            cfg.cluster
        ));
    }
    if id == 0 || id == cfg.node_id || sh.peer_addr(id).is_none() {
        return Err(format!(
            "sender id {id} is not a peer of node {}",
            cfg.node_id
        ));
    }
    Ok((id, http, kind))
}

// ---- Threads ----

fn spawn_writer(
    sh: &Shared,
    pid: NodeId,
    addr: String,
) -> Result<(Peer, JoinHandle<()>), TransportError> {
    let (tx, rx) = crossbeam_channel::bounded(sh.cfg.queue_len.max(1));
    let stats = Arc::new(PeerStats::default());
    let (sh, st) = (sh.clone(), stats.clone());
    let h = std::thread::Builder::new()
        .name(format!("peer-writer-{pid}"))
        .spawn(move || writer(sh, pid, addr, rx, st))
        .map_err(|e| TransportError::Config(format!("cannot spawn a writer thread: {e}")))?;
    Ok((Peer { tx, stats }, h))
}

fn acceptor(
    sh: Shared,
    listener: TcpListener,
    inbound: Sender<Message>,
    readers: Arc<Mutex<Vec<JoinHandle<()>>>>,
) {
    while !sh.stop.load(Ordering::SeqCst) {
        sh.refusals.tick();
        match listener.accept() {
            Ok((stream, addr)) => {
                let (sh2, tx) = (sh.clone(), inbound.clone());
                let spawned = std::thread::Builder::new()
                    .name(format!("peer-reader-{addr}"))
                    .spawn(move || reader(sh2, stream, addr, tx));
                match spawned {
                    Ok(h) => {
                        let mut rs = readers.lock().unwrap_or_else(|e| e.into_inner());
                        rs.retain(|h| !h.is_finished());
                        rs.push(h);
                    }
                    Err(e) => warn!("transport: cannot spawn a reader for {addr}: {e}"),
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                warn!("transport: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn reader(sh: Shared, mut stream: TcpStream, addr: SocketAddr, inbound: Sender<Message>) {
    let cfg = &sh.cfg;
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_nodelay(true);
    // A short timeout lets the thread notice shutdown; `idle` tracks the real read timeout.
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut frames = FrameReader::new(cfg.max_frame_size);
    let mut from = None;
    // The HTTP address the handshake announced, recorded once a valid message came from the sender.
    let mut announced_http = None;
    let mut last_data = Instant::now();
    loop {
        if sh.stop.load(Ordering::SeqCst) {
            return;
        }
        let buf = match frames.next(&mut stream) {
            Ok(Frame::Data(b)) => {
                last_data = Instant::now();
                b
            }
            Ok(Frame::Eof) => {
                debug!("transport: {addr} closed the connection");
                return;
            }
            Ok(Frame::Idle) => {
                if last_data.elapsed() > cfg.read_timeout {
                    sh.refusals.warn(format_args!(
                        "transport: closing connection from {addr}: silent for {:?}",
                        cfg.read_timeout
                    ));
                    return;
                }
                continue;
            }
            Err(e) => {
                sh.refusals.warn(format_args!(
                    "transport: closing connection from {addr}: {e}"
                ));
                return;
            }
        };
        let Some(peer) = from else {
            match check_handshake(buf, &sh) {
                Ok((id, http, kind)) => {
                    debug!("transport: node {id} connected from {addr}");
                    if kind == KIND_SNAPSHOT {
                        snapshot::receive(&sh, &mut stream, &mut frames, addr, id, &inbound);
                        return;
                    }
                    from = Some(id);
                    announced_http = http.map(|mut h| {
                        if h.ip().is_unspecified() {
                            h.set_ip(addr.ip());
                        }
                        h
                    });
                    continue;
                }
                Err(e) => {
                    sh.refusals.warn(format_args!(
                        "transport: closing connection from {addr}: bad handshake: {e}"
                    ));
                    return;
                }
            }
        };
        let msg = match codec::decode_message(buf) {
            Ok(m) => m,
            Err(e) => {
                sh.refusals.warn(format_args!(
                    "transport: closing connection from node {peer} ({addr}): {e}"
                ));
                return;
            }
        };
        if msg.from != peer || msg.to != cfg.node_id {
            sh.refusals.warn(format_args!(
                "transport: closing connection from node {peer} ({addr}): message from {} to {} on its connection",
                msg.from, msg.to
            ));
            return;
        }
        if let Some(h) = announced_http.take() {
            let mut map = sh.peer_http.lock().unwrap_or_else(|e| e.into_inner());
            map.insert(peer, h);
        }
        if inbound.send(msg).is_err() {
            return; // the node is shutting down
        }
    }
}

/// Owns the one outbound connection to `peer`.
fn writer(sh: Shared, peer: NodeId, addr: String, rx: Receiver<Message>, stats: Arc<PeerStats>) {
    let cfg = &sh.cfg;
    let hello = handshake(&cfg.cluster, cfg.node_id, cfg.advertise_http, KIND_MESSAGES);
    let mut conn: Option<BufWriter<TcpStream>> = None;
    let mut backoff = cfg.backoff_min;
    let mut unreachable = false;
    let mut batch = Writer::with_capacity(64 * 1024);
    loop {
        let first = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(m) => m,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                if sh.stop.load(Ordering::SeqCst) {
                    return;
                }
                continue;
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
        };
        if conn.is_none() {
            match connect(&addr, cfg, &hello) {
                Ok(c) => {
                    stats.connects.fetch_add(1, Ordering::Relaxed);
                    debug!("transport: connected to node {peer} at {addr}");
                    conn = Some(c);
                }
                Err(e) => {
                    if !unreachable {
                        info!("transport: cannot reach node {peer} at {addr}: {e} (retrying with backoff)");
                        unreachable = true;
                    }
                    stats.dropped.fetch_add(1, Ordering::Relaxed); // `first`
                    backoff = pause_and_discard(&rx, &stats, backoff, cfg);
                    continue;
                }
            }
        }
        // Fold everything already queued into one write.
        batch.buf.clear();
        let mut count = 0u64;
        let mut next = Some(first);
        while let Some(m) = next {
            let start = batch.buf.len();
            batch.buf.extend_from_slice(&[0; 4]);
            codec::encode_into(&mut batch, &m);
            let len = (batch.buf.len() - start - 4) as u32;
            batch.buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
            count += 1;
            next = if batch.buf.len() < MAX_WRITE_BATCH {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        let c = conn.as_mut().expect("connected above");
        let result = c.write_all(&batch.buf).and_then(|_| c.flush());
        match result {
            Ok(()) => {
                stats.sent.fetch_add(count, Ordering::Relaxed);
                stats
                    .bytes
                    .fetch_add(batch.buf.len() as u64, Ordering::Relaxed);
                if unreachable {
                    info!("transport: node {peer} at {addr} is reachable again");
                    unreachable = false;
                }
                // Only a connection that carried data proves the peer healthy.
                backoff = cfg.backoff_min;
            }
            Err(e) => {
                if !unreachable {
                    warn!("transport: lost connection to node {peer} at {addr}: {e}");
                    unreachable = true;
                }
                stats.dropped.fetch_add(count, Ordering::Relaxed);
                conn = None;
                backoff = pause_and_discard(&rx, &stats, backoff, cfg);
            }
        }
    }
}

/// Waits out the backoff, then discards what went stale meanwhile (Raft resends what still matters).
/// Returns the next backoff.
fn pause_and_discard(
    rx: &Receiver<Message>,
    stats: &PeerStats,
    backoff: Duration,
    cfg: &TransportConfig,
) -> Duration {
    std::thread::sleep(backoff);
    let stale = rx.try_iter().count() as u64;
    stats.dropped.fetch_add(stale, Ordering::Relaxed);
    (backoff * 2).min(cfg.backoff_max)
}

fn connect(
    addr: &str,
    cfg: &TransportConfig,
    hello: &[u8],
) -> std::io::Result<BufWriter<TcpStream>> {
    let sa = connect_addr(addr).map_err(|e| std::io::Error::new(ErrorKind::InvalidInput, e))?;
    let s = TcpStream::connect_timeout(&sa, cfg.connect_timeout)?;
    s.set_nodelay(true)?;
    s.set_write_timeout(Some(cfg.write_timeout))?;
    let mut w = BufWriter::with_capacity(256 * 1024, s);
    write_frame(&mut w, hello)?;
    w.flush()?;
    Ok(w)
}
