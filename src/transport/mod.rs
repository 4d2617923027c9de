//! Peer transport: Raft messages over TCP, one outbound connection per peer, no async runtime.
//!
//! Wire format: every frame is a `u32` little-endian payload length followed by the payload. A connection
//! starts with the handshake of [`handshake`] (protocol version 4): a hello naming the cluster, the sender,
//! the receiver, the sender's HTTP address and the connection's kind (0 for messages, 1 for one snapshot
//! transfer, see [`snapshot`]), the acceptor's answer and, when the cluster has a token
//! ([`TransportConfig::token`]), an HMAC-SHA256 challenge-response that proves to each side that the other
//! knows the token. Nothing is read from or sent to a peer before its handshake completed. On a message
//! connection every later frame is one [`Message`] encoded by [`codec`].
//!
//! Refused and closed: frames over `max_frame_size` (default 64 MiB; 1 KiB during the handshake),
//! undecodable frames, a handshake that fails (wrong magic, version, cluster name or token; an unknown,
//! zero or self sender; another receiver; not done within `handshake_timeout`), connections beyond
//! `max_handshaking` still in their handshake, and a message whose `from`/`to` do not match the
//! connection. Every refused or failed inbound connection (a bad handshake, a bad frame, a spoofed
//! message, silence, an I/O error, a refused snapshot) is logged with the peer address and the reason,
//! rate-limited (the first [`WARN_BURST`] in each [`WARN_WINDOW`], then one line counting the rest), so a
//! client opening bad connection after connection cannot flood the log; [`Transport::refused_connections`]
//! counts them all. The sender must be a current peer (the set follows membership changes, see
//! [`Transport::set_peers`]). A peer's HTTP address is taken from its handshake only once that connection
//! has carried a valid message, so a handshake followed by garbage cannot replace it.
//!
//! Without a token the transport works as before, and logs once at start that peers are unauthenticated.
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
pub mod handshake;
pub mod snapshot;

pub use handshake::{ClusterToken, PROTOCOL_VERSION};

use crate::codec::Writer;
use crate::raft::{Message, NodeId};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use log::{debug, info, warn};
use std::collections::BTreeMap;
use std::fmt;
use std::io::{BufWriter, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Bytes of queued messages folded into one write.
const MAX_WRITE_BATCH: usize = 4 << 20;
/// Warnings about refused or failed inbound connections logged one by one in each [`WARN_WINDOW`]...
pub const WARN_BURST: u64 = 10;
/// ...after which the rest of the window's are counted and reported in one line when it ends.
pub const WARN_WINDOW: Duration = Duration::from_secs(10);

/// Transport settings.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// This node's id.
    pub node_id: NodeId,
    /// The cluster name; peers with another name are refused. At most 255 bytes.
    pub cluster: String,
    /// The address to accept peer connections on.
    pub listen: SocketAddr,
    /// Every other member's address (`:port` or `host:port`).
    pub peers: BTreeMap<NodeId, String>,
    /// Messages queued per peer before [`Transport::send`] drops new ones.
    pub queue_len: usize,
    /// Largest frame read from a peer after the handshake, in bytes; a larger one closes the connection.
    pub max_frame_size: usize,
    /// How long to wait for an outbound TCP connection to be established.
    pub connect_timeout: Duration,
    /// How long a write to a peer's socket may block before the connection counts as failed.
    pub write_timeout: Duration,
    /// An inbound connection silent this long is closed (heartbeats normally flow every tick).
    pub read_timeout: Duration,
    /// The first pause before reconnecting to an unreachable peer; it doubles on each further failure.
    pub backoff_min: Duration,
    /// The longest pause between reconnection attempts.
    pub backoff_max: Duration,
    /// This node's HTTP address, told to peers in the handshake so followers can name the leader's. An
    /// unspecified IP (`0.0.0.0`) is replaced, on the receiving side, by the IP the connection came from.
    pub advertise_http: Option<SocketAddr>,
    /// Where snapshots received from the leader are written (`None`: snapshot transfers are refused).
    pub snapshot_dir: Option<std::path::PathBuf>,
    /// Largest snapshot accepted from a peer.
    pub max_snapshot_size: u64,
    /// The cluster's shared secret: when set, every connection must pass the HMAC challenge-response of
    /// [`handshake`] in both directions; when not, peers are not authenticated.
    pub token: Option<ClusterToken>,
    /// How long an inbound connection may take to complete its handshake (and an outbound one to get
    /// the acceptor's answer).
    pub handshake_timeout: Duration,
    /// Inbound connections allowed in their handshake at once; more are closed on accept.
    pub max_handshaking: usize,
}

impl TransportConfig {
    /// Settings for node `node_id` of `cluster`, listening on `listen`, with `peers`; everything else
    /// takes its default (no token, no snapshot transfers, 64 MiB frames, 8192 queued messages per peer).
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
            token: None,
            handshake_timeout: Duration::from_secs(5),
            max_handshaking: 64,
        }
    }
}

/// Why the transport could not start.
#[derive(Debug)]
pub enum TransportError {
    /// The listener could not be bound to the address.
    Bind(SocketAddr, std::io::Error),
    /// The configuration is unusable, or a thread could not be spawned; the text says why.
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
    /// Messages written to the peer's connection.
    pub sent: AtomicU64,
    /// Messages dropped: the queue was full, the peer unreachable, or a write failed.
    pub dropped: AtomicU64,
    /// Successful outbound connections (handshake included) to the peer.
    pub connects: AtomicU64,
    /// Bytes written to the peer's connection, framing included.
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
    /// Inbound connections still in their handshake.
    handshaking: Arc<AtomicUsize>,
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
        if cfg.cluster.len() > handshake::MAX_NAME {
            return Err(TransportError::Config(format!(
                "cluster name longer than {} bytes",
                handshake::MAX_NAME
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
        if cfg.token.is_none() {
            warn!(
                "transport: no cluster token configured (--cluster-token-file or NIMBUS_CLUSTER_TOKEN): \
                 peer connections on {local} are NOT authenticated; anyone who can reach that port can \
                 act as a member"
            );
        }
        let shared = Shared {
            peers: Arc::new(RwLock::new(cfg.peers.clone())),
            cfg: Arc::new(cfg),
            stop: stop.clone(),
            peer_http: peer_http.clone(),
            refusals: Arc::new(RefusalLog::new()),
            handshaking: Arc::new(AtomicUsize::new(0)),
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

    /// The address the listener is bound to (with the real port when `listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Inbound connections closed for a reason worth a warning (bad handshake, bad frame, spoofed
    /// message, silence, I/O error, refused snapshot), whether or not the rate limit let it be logged.
    pub fn refused_connections(&self) -> u64 {
        self.shared.refusals.total.load(Ordering::Relaxed)
    }

    /// Each peer's counters, in id order.
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
            buf: Vec::with_capacity(max.min(64 * 1024)),
            start: 0,
            max,
        }
    }

    /// Changes the frame cap (raised once the handshake is done).
    fn set_max(&mut self, max: usize) {
        self.max = max;
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
                if sh.handshaking.load(Ordering::SeqCst) >= sh.cfg.max_handshaking {
                    drop(stream);
                    sh.refusals.warn(format_args!(
                        "transport: refused a peer connection from {addr}: too many connections in \
                         their handshake"
                    ));
                    continue;
                }
                sh.handshaking.fetch_add(1, Ordering::SeqCst);
                let (sh2, tx) = (sh.clone(), inbound.clone());
                let spawned = std::thread::Builder::new()
                    .name(format!("peer-reader-{addr}"))
                    .spawn(move || reader(sh2, stream, addr, tx));
                if spawned.is_err() {
                    sh.handshaking.fetch_sub(1, Ordering::SeqCst);
                }
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
    let mut frames = FrameReader::new(handshake::MAX_HANDSHAKE_FRAME);
    let accepted = handshake::accept(&sh, &mut stream, &mut frames);
    sh.handshaking.fetch_sub(1, Ordering::SeqCst);
    let peer = match accepted {
        Ok(a) => a,
        Err(_) if sh.stop.load(Ordering::SeqCst) => return,
        Err(e) => {
            sh.refusals.warn(format_args!(
                "transport: refused a peer connection from {addr}: {e}"
            ));
            return;
        }
    };
    debug!("transport: node {} connected from {addr}", peer.from);
    frames.set_max(cfg.max_frame_size);
    if peer.kind == KIND_SNAPSHOT {
        snapshot::receive(&sh, &mut stream, &mut frames, addr, peer.from, &inbound);
        return;
    }
    // The HTTP address the handshake announced, recorded once a valid message came from the sender.
    let mut announced_http = peer.http.map(|mut h| {
        if h.ip().is_unspecified() {
            h.set_ip(addr.ip());
        }
        h
    });
    let peer = peer.from;
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
            match handshake::connect(&addr, cfg, peer, KIND_MESSAGES) {
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
