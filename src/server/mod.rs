//! The node runtime: opens storage, starts the transport, the Raft thread and the HTTP workers.
//!
//! ```text
//!  curl ─HTTP─> guard ─Unix socket─> tiny_http workers ─(request, reply channel)─> Raft thread <─ peer readers <─TCP─ peers
//!                                                              │ select! over ticker, peers, clients, shutdown
//!                                                              │ persist (one fsync per batch), send, apply,
//!                                                              │ answer clients
//!                                                              └─> per-peer writer threads ─TCP─> peers
//! ```
//!
//! The HTTP workers and the Raft thread share one [`metrics::Metrics`] (atomics, no locks on the hot path);
//! `GET /metrics` renders it on the worker that serves the scrape.
//!
//! A [`Node`] owns every thread it starts; [`Node::shutdown`] stops them all. [`run`] is what the `nimbus`
//! binary calls: start a node and serve until the Raft thread stops.
//!
//! The Raft side (data directory lock, recovery, core, transport, the Raft thread) is started by
//! `prepare` and `Prepared::spawn`, generic over the [`StateMachine`]: the key-value [`Node`] runs it
//! with the `KvMachine` and its HTTP workers, an [`crate::embed::Node`] with the embedder's state machine
//! and no HTTP.
//!
//! Rules kept here:
//! - The data directory lock ([`DataDirLock`]) is taken before anything in the directory is read, and
//!   held until the node is dropped.
//! - Clients reach tiny_http only through the guard ([`http_guard`]), which enforces the HTTP limits;
//!   tiny_http itself listens on a Unix socket, `<data-dir>/http-<pid>-<n>.sock`.
//! - A fatal error of the Raft thread (a storage failure) is logged as one `FATAL` line naming the cause
//!   and what to do; the requests it held were already answered `storage_failure`; the HTTP workers get
//!   [`FATAL_GRACE`] to send those answers, then [`Node::wait`] returns the error (the binary exits 1).

mod admin;
pub mod api;
pub mod cluster;
pub mod http;
pub mod http_guard;
pub mod join;
mod kv_machine;
pub mod metrics;
mod raft_loop;
mod recovery;
pub(crate) mod request;
mod rest;
pub mod space;

use crate::config::{connect_addr, listen_addr, NodeConfig};
use crate::machine::StateMachine;
use crate::raft::{Config as RaftConfig, Index, Message, Raft};
use crate::storage::{DataDirLock, Wal};
use crate::transport::{Transport, TransportConfig};
use api::ClientRequest;
use crossbeam_channel::{Receiver, Sender};
use log::{error, info, warn};
use request::Request;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

/// Bound on client requests queued for the Raft thread; beyond it clients get 503 `busy`.
const CLIENT_QUEUE: usize = 4_096;
/// Bound on peer messages queued for the Raft thread (readers block briefly when it is full). Both bounds
/// are allocated (and touched) up front by the channel: 8,192 messages cost about 1 MiB of RSS.
const PEER_QUEUE: usize = 8_192;

/// Why a node could not start or had to stop.
#[derive(Debug)]
pub struct ServerError(pub String);

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ServerError {}

/// A running node.
pub struct Node {
    http_addr: SocketAddr,
    raft_addr: SocketAddr,
    shutdown_tx: Sender<()>,
    http: Arc<tiny_http::Server>,
    /// `None` with `--http-guard off`.
    guard: Option<http_guard::Guard>,
    raft_thread: Option<JoinHandle<Result<(), String>>>,
    workers: Vec<JoinHandle<()>>,
    clients: Sender<ClientRequest>,
    /// Held for the node's lifetime; dropped last.
    _lock: DataDirLock,
}

impl Node {
    /// Opens the data directory, recovers the log, and starts serving.
    pub fn start(cfg: NodeConfig) -> Result<Node, ServerError> {
        let id = cfg.id;
        let sm = kv_machine::KvMachine::new(cfg.max_key_bytes, cfg.max_value_bytes);
        let http_addr = cfg.http_addr;
        let prepared = prepare(cfg, sm, Some(http_addr))?;
        let raft_addr = prepared.raft_addr;

        let (http, guard, http_addr) = if prepared.cfg.http_guard {
            let (http, guard) = guarded_http_server(id, &prepared.cfg)?;
            let addr = guard.local_addr();
            (http, Some(guard), addr)
        } else {
            warn!(
                "[n{id}] --http-guard off: tiny_http listens on {} itself, without the HTTP limits",
                http_addr
            );
            let http = tiny_http::Server::http(http_addr)
                .map_err(|e| ServerError(format!("cannot listen for HTTP on {http_addr}: {e}")))?;
            let addr = http
                .server_addr()
                .to_ip()
                .ok_or_else(|| ServerError("HTTP server has no IP address".into()))?;
            (http, None, addr)
        };
        let http = Arc::new(http);

        let metrics = Arc::new(metrics::Metrics::new(prepared.cfg.data_dir.join("wal")));
        let (client_tx, client_rx) = crossbeam_channel::bounded::<ClientRequest>(CLIENT_QUEUE);
        let cfg = Arc::new(prepared.cfg.clone());
        let http_for_stop = http.clone();
        let running = prepared.spawn(client_rx, metrics.clone(), move || {
            // Stop accepting requests that could no longer be served.
            for _ in 0..1024 {
                http_for_stop.unblock();
            }
        })?;
        let mut workers = Vec::new();
        for i in 0..cfg.http_threads {
            let (server, tx, cfg, m) = (
                http.clone(),
                client_tx.clone(),
                cfg.clone(),
                metrics.clone(),
            );
            let w = std::thread::Builder::new()
                .name(format!("http-{id}-{i}"))
                .stack_size(256 * 1024)
                .spawn(move || http::worker(server, tx, cfg, m))
                .map_err(|e| ServerError(format!("cannot spawn an HTTP worker: {e}")))?;
            workers.push(w);
        }
        info!("[n{id}] serving HTTP on {http_addr}, raft on {raft_addr}");
        Ok(Node {
            http_addr,
            raft_addr,
            shutdown_tx: running.shutdown_tx,
            http,
            guard,
            raft_thread: Some(running.raft_thread),
            workers,
            clients: client_tx,
            _lock: running.lock,
        })
    }

    /// The address the HTTP API actually listens on (the real port when the configuration asked for port 0).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The address the Raft transport actually listens on.
    pub fn raft_addr(&self) -> SocketAddr {
        self.raft_addr
    }

    /// A sender for in-process clients (embedding without HTTP).
    pub fn client_sender(&self) -> Sender<ClientRequest> {
        self.clients.clone()
    }

    /// Blocks until the Raft thread stops (it only stops on shutdown or a fatal storage error). After a
    /// fatal error the HTTP workers get [`FATAL_GRACE`] to send the error answers already handed to them;
    /// one still stuck then (on a slow client) is left behind for the process exit to end.
    pub fn wait(mut self) -> Result<(), ServerError> {
        let r = self.join_raft();
        if r.is_err() {
            for _ in 0..self.workers.len() {
                self.http.unblock();
            }
            let deadline = std::time::Instant::now() + FATAL_GRACE;
            while std::time::Instant::now() < deadline
                && !self.workers.iter().all(|w| w.is_finished())
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            return r;
        }
        self.stop_http();
        r
    }

    /// Stops every thread this node started and waits for them.
    pub fn shutdown(mut self) -> Result<(), ServerError> {
        let _ = self.shutdown_tx.send(());
        let r = self.join_raft();
        self.stop_http();
        r
    }

    fn join_raft(&mut self) -> Result<(), ServerError> {
        match self.raft_thread.take().map(|t| t.join()) {
            Some(Ok(Ok(()))) | None => Ok(()),
            Some(Ok(Err(e))) => Err(ServerError(e)),
            Some(Err(_)) => Err(ServerError("the raft thread panicked".into())),
        }
    }

    fn stop_http(&mut self) {
        if let Some(g) = &mut self.guard {
            g.stop();
        }
        for _ in 0..self.workers.len() {
            self.http.unblock();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// tiny_http on a private Unix socket, and the guard listening on the HTTP address in front of it,
/// forwarding what passes its limits (see `http_guard`).
fn guarded_http_server(
    id: u64,
    cfg: &NodeConfig,
) -> Result<(tiny_http::Server, http_guard::Guard), ServerError> {
    let (http, backend) = private_http_server(id, &cfg.data_dir).map_err(ServerError)?;
    let fds = http_guard::fd_limit();
    let max_connections = http_guard::connection_cap(cfg.http_max_connections, fds);
    if max_connections < cfg.http_max_connections {
        warn!(
            "[n{id}] --http-max-connections {} lowered to {max_connections}: the open-file limit is {} \
             and each HTTP connection holds up to {} descriptors (raise ulimit -n)",
            cfg.http_max_connections,
            fds.unwrap_or(0),
            http_guard::FDS_PER_CONNECTION
        );
    }
    let guard = http_guard::Guard::start(
        cfg.http_addr,
        backend,
        http_guard::GuardConfig {
            max_connections,
            // The URL limit of the routes, plus room for the method and the version.
            max_line: cfg.max_url_bytes() + 1024,
            max_header_bytes: cfg.http_max_header_bytes,
            max_body: cfg.max_value_bytes as u64,
            read_timeout: cfg.http_read_timeout,
        },
    )
    .map_err(ServerError)?;
    Ok((http, guard))
}

/// A tiny_http server on a Unix socket for the HTTP guard to forward to: `<data-dir>/http-<pid>-<n>.sock`,
/// or, when that path is too long for a socket address, the same name with the node id in the temporary
/// directory. Sockets of earlier processes left in the data directory (kill -9) are removed first, which
/// the data directory lock makes safe. Names are unique per server because tiny_http removes its file
/// when the server is dropped, which may come late (after a fatal error) and must not remove a newer
/// server's. (Not the abstract namespace: tiny_http's `Drop` panics on an address without a path.) The
/// file is created with the process umask, so with the usual 022 only this user may connect to it.
fn private_http_server(
    id: u64,
    data_dir: &std::path::Path,
) -> Result<(tiny_http::Server, std::os::unix::net::SocketAddr), String> {
    use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener};
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    if let Ok(entries) = std::fs::read_dir(data_dir) {
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("http-") && name.ends_with(".sock") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let name = format!(
        "http-{}-{}.sock",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let mut path = data_dir.join(&name);
    if UnixAddr::from_pathname(&path).is_err() {
        path = std::env::temp_dir().join(format!("nimbus-{id}-{name}"));
    }
    let listener = UnixListener::bind(&path).map_err(|e| {
        format!(
            "cannot bind the internal HTTP socket {}: {e}",
            path.display()
        )
    })?;
    let addr = listener.local_addr().map_err(|e| {
        format!(
            "cannot bind the internal HTTP socket {}: {e}",
            path.display()
        )
    })?;
    let server = tiny_http::Server::from_listener(listener, None)
        .map_err(|e| format!("cannot start the HTTP server: {e}"))?;
    Ok((server, addr))
}

/// A node's Raft side, ready to run: data directory locked, storage recovered, core built, transport
/// listening.
pub(crate) struct Prepared<S: StateMachine> {
    /// The node's configuration.
    pub cfg: NodeConfig,
    /// The address the Raft transport actually listens on.
    pub raft_addr: SocketAddr,
    raft: Raft,
    wal: Wal,
    transport: Transport,
    sm: S,
    applied: Index,
    peer_rx: Receiver<Message>,
    snaps: raft_loop::Snapshots,
    lock: DataDirLock,
}

/// A running Raft thread and what stops it.
pub(crate) struct Running {
    /// Stops the Raft thread at once (no leadership hand-over).
    pub shutdown_tx: Sender<()>,
    /// Ends with the loop: `Err` after a fatal storage failure (the message is logged already).
    pub raft_thread: JoinHandle<Result<(), String>>,
    /// Held for the node's lifetime; drop it last.
    pub lock: DataDirLock,
}

/// Validates `cfg`, locks and recovers the data directory (restoring `sm`, the state machine's initial
/// state, from the newest snapshot), builds the core and starts the peer transport. `advertise_http` is
/// the HTTP address announced to peers (none for an embedded node).
pub(crate) fn prepare<S: StateMachine>(
    cfg: NodeConfig,
    sm: S,
    advertise_http: Option<SocketAddr>,
) -> Result<Prepared<S>, ServerError> {
    cfg.validate().map_err(ServerError)?;
    let id = cfg.id;
    if cfg.data_dir.exists() && !cfg.data_dir.is_dir() {
        return Err(ServerError(format!(
            "data directory {} exists and is not a directory",
            cfg.data_dir.display()
        )));
    }
    std::fs::create_dir_all(&cfg.data_dir).map_err(|e| {
        ServerError(format!(
            "cannot create data directory {}: {e}",
            cfg.data_dir.display()
        ))
    })?;
    // Before anything in the directory is read or written.
    let lock = DataDirLock::acquire(&cfg.data_dir).map_err(ServerError)?;
    let recovery::Recovered {
        wal,
        init,
        sm,
        store,
    } = recovery::recover(&cfg, sm).map_err(ServerError)?;
    let applied = init.snapshot_index;
    let snap_dir = store.dir().to_path_buf();
    let snaps = raft_loop::Snapshots::new(store, init.snapshot_index);
    let voters = match &cfg.bootstrap_voters {
        Some(v) => v.clone(),
        None => cfg.members.keys().copied().collect(),
    };
    let mut rcfg = RaftConfig::new(id, voters);
    rcfg.election_ticks = cfg.election_ticks;
    rcfg.heartbeat_ticks = cfg.heartbeat_ticks;
    // The lease covers 80 % of the minimum election timeout: nodes' tick rates may differ by up to
    // that margin (see `Raft::lease_read`).
    rcfg.lease_ticks = cfg.election_ticks * 4 / 5;
    let raft = Raft::new(rcfg, init, seed_for(id)).map_err(ServerError)?;

    let (peer_tx, peer_rx) = crossbeam_channel::bounded(PEER_QUEUE);
    let raft_listen = listen_addr(&cfg.members[&id]).map_err(ServerError)?;
    let mut peers = std::collections::BTreeMap::new();
    for (&pid, addr) in &cfg.members {
        if pid != id {
            // Checked here so a bad address is a start-up error, not a silent retry loop later.
            connect_addr(addr).map_err(|e| ServerError(format!("peer {pid}: {e}")))?;
            peers.insert(pid, addr.clone());
        }
    }
    let mut tcfg = TransportConfig::new(id, cfg.cluster_name.clone(), raft_listen, peers);
    tcfg.connect_timeout = cfg.tick * cfg.election_ticks;
    tcfg.advertise_http = advertise_http;
    tcfg.snapshot_dir = Some(snap_dir);
    tcfg.token = cfg.cluster_token.clone();
    let transport = Transport::start(tcfg, peer_tx).map_err(|e| {
        ServerError(format!(
            "cannot start the peer transport on {raft_listen}: {e}"
        ))
    })?;
    let raft_addr = transport.local_addr();
    Ok(Prepared {
        cfg,
        raft_addr,
        raft,
        wal,
        transport,
        sm,
        applied,
        peer_rx,
        snaps,
        lock,
    })
}

impl<S: StateMachine> Prepared<S> {
    /// Starts the Raft thread serving the requests that arrive on `client_rx`. `on_stop` runs on that
    /// thread when the loop has stopped (after a fatal error too).
    pub(crate) fn spawn<R>(
        self,
        client_rx: Receiver<R>,
        metrics: Arc<metrics::Metrics>,
        on_stop: impl FnOnce() + Send + 'static,
    ) -> Result<Running, ServerError>
    where
        R: Into<Request<S>> + Send + 'static,
    {
        let id = self.cfg.id;
        let (shutdown_tx, shutdown_rx) = crossbeam_channel::bounded(1);
        let lp = raft_loop::RaftLoop::new(
            self.cfg,
            self.raft,
            self.wal,
            self.transport,
            self.sm,
            self.applied,
            self.peer_rx,
            client_rx,
            shutdown_rx,
            metrics,
            self.snaps,
        );
        let raft_thread = std::thread::Builder::new()
            .name(format!("raft-{id}"))
            .spawn(move || {
                let r = lp.run().map_err(|e| fatal_message(id, &e));
                if let Err(e) = &r {
                    error!("{e}");
                }
                on_stop();
                r
            })
            .map_err(|e| ServerError(format!("cannot spawn the raft thread: {e}")))?;
        Ok(Running {
            shutdown_tx,
            raft_thread,
            lock: self.lock,
        })
    }
}

/// How long HTTP workers may take to send their last answers after a fatal error.
pub const FATAL_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// The one log line (and exit message) for a fatal error of the Raft thread.
fn fatal_message(id: u64, e: &str) -> String {
    let hint = if e.contains("os error 28") || e.contains("No space left") {
        "No space is left for the data directory (its file system, or the storage beneath it, is full): \
         free space, then restart this node (the WAL cuts off a torn last record on open)"
    } else {
        "Check the disk and the kernel log (dmesg) before restarting this node"
    };
    format!(
        "[n{id}] FATAL: {e}. The node stopped: nothing after this failure was acknowledged, and waiting \
         requests were answered 500 storage_failure. {hint}"
    )
}

/// Each node needs its own randomness (identical election timeouts would split every vote).
pub(crate) fn seed_for(id: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ id.rotate_left(32) ^ (std::process::id() as u64).rotate_left(16)
}

/// Starts a node and serves until it stops. SIGTERM or SIGINT stops it gracefully: a leader hands
/// leadership over first, waiting requests get answers, then it returns `Ok` (exit status 0). A second
/// signal exits at once (status 130).
pub fn run(cfg: NodeConfig) -> Result<(), ServerError> {
    let join = cfg
        .join
        .clone()
        .map(|url| (url, cfg.id, cfg.members[&cfg.id].clone()));
    let admin = cfg.admin_token.clone();
    let node = Node::start(cfg)?;
    if let Some((url, id, raft)) = join {
        let http = node.http_addr();
        std::thread::Builder::new()
            .name("join".into())
            .spawn(
                move || match join::request_add(&url, id, &raft, http, admin.as_ref()) {
                    Ok(()) => {
                        info!("[n{id}] joined the cluster at {url} (as a learner until caught up)")
                    }
                    Err(e) => log::error!("[n{id}] {e}"),
                },
            )
            .map_err(|e| ServerError(format!("cannot start the join thread: {e}")))?;
    }
    let clients = node.client_sender();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .map_err(|e| ServerError(format!("cannot install signal handlers: {e}")))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut seen = 0;
            for sig in signals.forever() {
                seen += 1;
                if seen > 1 {
                    log::warn!("second signal {sig}: exiting now");
                    std::process::exit(130);
                }
                info!("signal {sig}: shutting down gracefully");
                let _ = clients.send(ClientRequest::Shutdown);
            }
        })
        .map_err(|e| ServerError(format!("cannot start the signal thread: {e}")))?;
    node.wait()
}
