//! Embedding: run a Raft node with your own [`StateMachine`] inside your process, without HTTP and without
//! an async runtime.
//!
//! A [`Node`] is the same runtime as the `nimbus` key-value server (one Raft thread per node running the
//! select loop, the write-ahead log with group commit, background snapshots, the TCP peer transport), with
//! the embedder's state machine in place of the key-value store and a [`Node`] handle in place of the HTTP
//! API. See the crate-level tutorial and `examples/embedded.rs`.
//!
//! # Threads
//! [`Node::start`] starts the Raft thread and the transport's threads (an acceptor, one reader and one
//! writer per peer connection); they run until [`Node::shutdown`], [`Node::halt`] or the drop of the
//! [`Node`]. The handle's methods may be called from any number of threads at once: each sends one
//! request to the Raft thread and blocks its caller until the answer (or the timeout). The state machine
//! is only ever touched by the Raft thread, so it needs `Send` but not `Sync`, and no locks.
//!
//! # Guarantees
//! - [`Node::propose`] returns `Ok` only once the command is committed by a quorum **and** applied on this
//!   node, with the output `apply` gave; never before. On a follower the command is forwarded to the
//!   leader (over the Raft transport) and the answer comes when this node applies the entry.
//! - [`Node::read`] is linearizable: it runs on this node's state machine once it has applied everything
//!   committed before the read began (a read index confirmed by a quorum of heartbeats, thesis §6.4; on a
//!   follower the leader confirms it). [`Node::read_local`] reads the local state as it is (possibly
//!   behind).
//! - Errors say whether the command may have been applied ([`Error::outcome_unknown`]). `propose` keeps
//!   retrying, until its timeout, the failures that guarantee the command was *not* applied (no leader
//!   known during an election, an uncommitted entry overwritten by a new leader, a full queue), so callers
//!   see them only when no leader emerged in time.
//! - Unlike the key-value server's writes, embedded proposals carry no idempotency token: if the leader
//!   changes while a forwarded proposal is in flight, the answer is [`Error::LeaderChanged`] (outcome
//!   unknown), never a silent second application. A state machine that needs exactly-once retries can
//!   put a client-chosen request id in its commands and ignore repeats in `apply`.
//!
//! # Restarts
//! The data directory holds the WAL and the snapshots; [`Node::start`] on the same directory recovers:
//! the state machine passed in (in its initial state) is restored from the newest snapshot, then the
//! committed entries after it are applied again. The directory is locked while a node runs in it.
//!
//! # Failures
//! A storage failure (a failed WAL write or fsync, a full disk) stops the node as it stops the server:
//! every waiting call gets [`Error::Stopped`], nothing after the failure is acknowledged, and
//! [`Node::shutdown`] / [`Node::halt`] return the error. The peer transport's threads (and its listening
//! socket) are then left to the process's exit, as in the server (a reader blocked on a full queue could
//! hold up a graceful stop): restart the process before starting a node on that address again. A panic in
//! the state machine stops the Raft thread the same way ([`Error::Stopped`]).
//!
//! # Membership
//! The members are fixed by [`Config::members`] (every member must be started with the same list). The
//! runtime supports membership changes (the key-value server exposes them over HTTP); this API does not
//! yet.

use crate::config::NodeConfig;
use crate::server::api::{ApiError, Consistency};
use crate::server::metrics::Metrics;
use crate::server::request::{ReadMeta, Request};
use crate::server::{prepare, ServerError};
use crate::storage::DataDirLock;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use crate::machine::{SnapshotWriter, StateMachine};
pub use crate::raft::{Index, NodeId, Role, Term};

/// Requests queued for the Raft thread at most; beyond it callers get [`Error::Busy`] (retried by
/// `propose` and `read` until their timeout).
const REQUEST_QUEUE: usize = 16_384;

/// How a node runs. Build it with [`Config::new`], then adjust fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// This node's id (at least 1); a key of `members`.
    pub id: NodeId,
    /// Every member's id and Raft address (`host:port`, or `:port` for all interfaces when listening and
    /// the local host when connecting), this node included. The same on every member.
    pub members: BTreeMap<NodeId, String>,
    /// Where the WAL and the snapshots live; one directory per node.
    pub data_dir: PathBuf,
    /// Names the cluster in the peer handshake, so two clusters on one host never talk to each other.
    pub cluster_name: String,
    /// The Raft clock's period (default 100 ms).
    pub tick: Duration,
    /// Ticks without a leader before an election starts, randomized up to twice this (default 10).
    pub election_ticks: u32,
    /// Ticks between a leader's heartbeats (default 1); less than `election_ticks`.
    pub heartbeat_ticks: u32,
    /// The longest the Raft thread keeps a request waiting (default 5 s); the timeouts given to
    /// [`Node::propose`] and [`Node::read`] are cut to it.
    pub request_timeout: Duration,
    /// Take a snapshot once this many entries were applied since the last one (default 10,000)...
    pub snapshot_entries: u64,
    /// ...or once the WAL grew by this many bytes since the last one (default 64 MiB).
    pub snapshot_bytes: u64,
    /// Snapshot files kept on disk (default 2).
    pub snapshots_kept: usize,
    /// Log entries kept before the newest snapshot, so slightly lagging followers catch up from the log
    /// (default 5,000).
    pub log_keep_entries: u64,
    /// Size at which the WAL starts a new segment file (default 16 MiB).
    pub wal_segment_bytes: u64,
}

impl Config {
    /// A configuration for node `id` among `members` (id, Raft address), storing its data in `data_dir`,
    /// with defaults for everything else.
    pub fn new(
        id: NodeId,
        members: impl IntoIterator<Item = (NodeId, String)>,
        data_dir: impl Into<PathBuf>,
    ) -> Config {
        let node = NodeConfig::new(
            id,
            BTreeMap::new(),
            SocketAddr::from(([127, 0, 0, 1], 0)),
            PathBuf::new(),
        );
        Config {
            id,
            members: members.into_iter().collect(),
            data_dir: data_dir.into(),
            cluster_name: node.cluster_name,
            tick: node.tick,
            election_ticks: node.election_ticks,
            heartbeat_ticks: node.heartbeat_ticks,
            request_timeout: node.request_timeout,
            snapshot_entries: node.snapshot_entries,
            snapshot_bytes: node.snapshot_bytes,
            snapshots_kept: node.snapshots_kept,
            log_keep_entries: node.log_keep_entries,
            wal_segment_bytes: node.wal_segment_bytes,
        }
    }

    /// The server configuration this maps to (no HTTP: its address is never bound or announced).
    fn node_config(&self) -> Result<NodeConfig, Error> {
        if self.id == 0 || self.members.contains_key(&0) {
            return Err(Error::Start("node id 0 is reserved; ids start at 1".into()));
        }
        for (id, addr) in &self.members {
            crate::config::check_addr(addr)
                .map_err(|e| Error::Start(format!("member {id}: {e}")))?;
        }
        let mut c = NodeConfig::new(
            self.id,
            self.members.clone(),
            SocketAddr::from(([127, 0, 0, 1], 0)),
            self.data_dir.clone(),
        );
        c.cluster_name = self.cluster_name.clone();
        c.tick = self.tick;
        c.election_ticks = self.election_ticks;
        c.heartbeat_ticks = self.heartbeat_ticks;
        c.request_timeout = self.request_timeout;
        c.snapshot_entries = self.snapshot_entries;
        c.snapshot_bytes = self.snapshot_bytes;
        c.snapshots_kept = self.snapshots_kept;
        c.log_keep_entries = self.log_keep_entries;
        c.wal_segment_bytes = self.wal_segment_bytes;
        c.http_threads = 1;
        Ok(c)
    }
}

/// A proposal that was committed and applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied<O> {
    /// The log index of the command's entry.
    pub index: Index,
    /// The term of the leader that appended it.
    pub term: Term,
    /// What [`StateMachine::apply`] returned for it.
    pub output: O,
}

/// A snapshot of a node's Raft state, from [`Node::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// This node's id.
    pub id: NodeId,
    /// Its role now.
    pub role: Role,
    /// Its current term.
    pub term: Term,
    /// The leader it knows of, if any (itself when leading).
    pub leader: Option<NodeId>,
    /// The highest log index known to be committed.
    pub commit_index: Index,
    /// The highest log index applied to the state machine.
    pub applied_index: Index,
    /// The index of the last entry in its log.
    pub last_index: Index,
}

/// Why a request failed. [`Error::outcome_unknown`] tells whether a proposal may have been applied.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// No leader could take the request (`leader`: the one this node knows of, if any); nothing was
    /// applied.
    NotLeader {
        /// The leader this node knows of, if any.
        leader: Option<NodeId>,
    },
    /// The command was appended but overwritten by a new leader before it committed: not applied.
    NotCommitted,
    /// Too many requests in flight: not applied.
    Busy,
    /// The leader changed while the request was in flight: the outcome is unknown.
    LeaderChanged,
    /// No answer in time: the outcome is unknown.
    Timeout,
    /// The node stopped (shut down, or a storage failure stopped it): the outcome is unknown.
    Stopped(String),
    /// The leader's data directory is below its free-space reserve (`min_free_bytes`): nothing was
    /// applied; commands are taken again once space is freed.
    InsufficientStorage(String),
    /// The node could not start (bad configuration, data directory, address in use, ...).
    Start(String),
    /// An error that should not happen; the message says what.
    Internal(String),
}

impl Error {
    /// Whether a proposal that failed this way may still have been (or still be) applied.
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            Error::LeaderChanged | Error::Timeout | Error::Stopped(_) | Error::Internal(_)
        )
    }

    /// Whether the request certainly did nothing and trying again may succeed.
    fn retryable(&self) -> bool {
        matches!(
            self,
            Error::NotLeader { .. } | Error::NotCommitted | Error::Busy
        )
    }

    fn from_api(e: ApiError) -> Error {
        match e {
            ApiError::NoLeader => Error::NotLeader { leader: None },
            ApiError::NotLeader { leader, .. } => Error::NotLeader { leader },
            ApiError::NotCommitted => Error::NotCommitted,
            ApiError::Busy => Error::Busy,
            ApiError::LeaderChanged => Error::LeaderChanged,
            ApiError::Timeout => Error::Timeout,
            ApiError::StorageFailure(m) => Error::Stopped(m),
            ApiError::InsufficientStorage(m) => Error::InsufficientStorage(m),
            other => Error::Internal(other.message()),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotLeader { leader: Some(l) } => {
                write!(f, "not the leader (the leader is node {l}); nothing was applied")
            }
            Error::NotLeader { leader: None } => {
                f.write_str("no leader is known; nothing was applied")
            }
            Error::NotCommitted => f.write_str(
                "the command was overwritten by a new leader before it committed; it was not applied",
            ),
            Error::Busy => f.write_str("too many requests in flight; nothing was applied"),
            Error::LeaderChanged => {
                f.write_str("the leader changed while the request was in flight; outcome unknown")
            }
            Error::Timeout => f.write_str("no answer in time; outcome unknown"),
            Error::Stopped(m) => write!(f, "the node stopped: {m}"),
            Error::InsufficientStorage(m) => write!(f, "insufficient storage: {m}"),
            Error::Start(m) => write!(f, "cannot start the node: {m}"),
            Error::Internal(m) => write!(f, "internal error: {m}"),
        }
    }
}

impl std::error::Error for Error {}

/// A running node: the handle to propose commands, read the state machine, and stop the node.
///
/// Dropping it stops the node like [`Node::halt`].
pub struct Node<S: StateMachine> {
    id: NodeId,
    raft_addr: SocketAddr,
    tick: Duration,
    requests: Sender<Request<S>>,
    shutdown_tx: Sender<()>,
    raft_thread: Option<JoinHandle<Result<(), String>>>,
    /// Held while the node runs; released after the Raft thread stopped.
    lock: Option<DataDirLock>,
}

impl<S: StateMachine> Node<S> {
    /// Opens (or creates) the data directory, recovers `state_machine` from it (pass the initial, empty
    /// state: it is restored from the newest snapshot, then the committed log after it is applied again),
    /// starts the peer transport on this member's address and the Raft thread. Returns once the node is
    /// running; it finds or elects a leader in the background.
    pub fn start(config: Config, state_machine: S) -> Result<Node<S>, Error> {
        let cfg = config.node_config()?;
        let tick = cfg.tick;
        let prepared = prepare(cfg, state_machine, None).map_err(start_error)?;
        let raft_addr = prepared.raft_addr;
        let id = prepared.cfg.id;
        let metrics = Arc::new(Metrics::new(prepared.cfg.data_dir.join("wal")));
        let (requests, rx) = crossbeam_channel::bounded(REQUEST_QUEUE);
        let running = prepared
            .spawn::<Request<S>>(rx, metrics, || {})
            .map_err(start_error)?;
        Ok(Node {
            id,
            raft_addr,
            tick,
            requests,
            shutdown_tx: running.shutdown_tx,
            raft_thread: Some(running.raft_thread),
            lock: Some(running.lock),
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The address the peer transport listens on.
    pub fn raft_addr(&self) -> SocketAddr {
        self.raft_addr
    }

    /// Proposes `command` and waits until it is committed and applied on this node; returns what
    /// [`StateMachine::apply`] gave for it. On a follower the command is forwarded to the leader.
    ///
    /// Failures that guarantee the command was not applied (no leader yet, overwritten before commit, a
    /// full queue) are retried until `timeout` (cut to [`Config::request_timeout`]); the last one is
    /// returned if no attempt succeeded by then. See [`Error::outcome_unknown`] for the others.
    pub fn propose(
        &self,
        command: Vec<u8>,
        timeout: Duration,
    ) -> Result<Applied<S::Output>, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let (tx, rx) = crossbeam_channel::bounded(1);
            let cmd = command.clone();
            let attempt = self.submit(Request::Propose {
                encode: Box::new(move |_| cmd),
                token: None,
                tokens: false,
                reply: Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            });
            let result = attempt.and_then(|()| self.wait(&rx, deadline));
            match result {
                Ok(c) => {
                    return match c.output {
                        Some(output) => Ok(Applied {
                            index: c.index,
                            term: c.term,
                            output,
                        }),
                        None => Err(Error::Internal(format!(
                            "the proposal was answered by entry {} which holds no command",
                            c.index
                        ))),
                    };
                }
                Err(e) if e.retryable() && self.pause_before_retry(deadline) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs `f` on the state machine once it reflects every command committed before this call
    /// (linearizable), and returns its result. `f` runs on the Raft thread: keep it short (everything else
    /// waits) and do not call back into this node from it.
    ///
    /// Retries until `timeout` while no leader can confirm the read index.
    pub fn read<T, F>(&self, f: F, timeout: Duration) -> Result<T, Error>
    where
        F: FnOnce(&S) -> T + Send + 'static,
        T: Send + 'static,
    {
        self.read_with(Consistency::Linearizable, f, timeout)
    }

    /// Runs `f` on this node's state machine as it is now, without asking the leader: fast and always
    /// available, but possibly behind the cluster (a follower that lost touch with the leader may be
    /// arbitrarily stale). Same rules for `f` as [`Node::read`].
    pub fn read_local<T, F>(&self, f: F, timeout: Duration) -> Result<T, Error>
    where
        F: FnOnce(&S) -> T + Send + 'static,
        T: Send + 'static,
    {
        self.read_with(Consistency::Stale, f, timeout)
    }

    fn read_with<T, F>(&self, consistency: Consistency, f: F, timeout: Duration) -> Result<T, Error>
    where
        F: FnOnce(&S) -> T + Send + 'static,
        T: Send + 'static,
    {
        let deadline = Instant::now() + timeout;
        // `f` is used once: the first attempt that reaches the state machine runs it.
        let f = Arc::new(std::sync::Mutex::new(Some(f)));
        loop {
            let (tx, rx) = crossbeam_channel::bounded(1);
            let f = f.clone();
            let attempt = self.submit(Request::Read {
                consistency,
                read: Box::new(move |r: Result<(&S, ReadMeta), ApiError>| {
                    let out = r.and_then(|(sm, _)| {
                        let f = f.lock().ok().and_then(|mut f| f.take());
                        f.map(|f| f(sm))
                            .ok_or_else(|| ApiError::Internal("the read ran already".into()))
                    });
                    let _ = tx.send(out);
                }),
            });
            // A read changes nothing: a lost one may be tried again too.
            match attempt.and_then(|()| self.wait(&rx, deadline)) {
                Ok(v) => return Ok(v),
                Err(e)
                    if (e.retryable() || e == Error::LeaderChanged)
                        && self.pause_before_retry(deadline) =>
                {
                    continue
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// This node's role, term, leader and indexes.
    pub fn status(&self) -> Result<Status, Error> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.submit(Request::Status {
            reply: Box::new(move |v, _| {
                let _ = tx.send(v);
            }),
        })?;
        let v = rx
            .recv()
            .map_err(|_| Error::Stopped("the node is not running".into()))?;
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        let role = match v["role"].as_str() {
            Some("leader") => Role::Leader,
            Some("candidate") => Role::Candidate,
            Some("precandidate") => Role::PreCandidate,
            _ => Role::Follower,
        };
        Ok(Status {
            id: n("id"),
            role,
            term: n("term"),
            leader: v["leader"].as_u64(),
            commit_index: n("commit_index"),
            applied_index: n("applied_index"),
            last_index: n("last_index"),
        })
    }

    /// Stops gracefully: a leader first hands leadership to the most caught-up voter (waiting at most two
    /// election timeouts), so the others need not wait for an election timeout; requests still waiting
    /// are answered ([`Error::LeaderChanged`]: outcome unknown). Returns once every thread of the node
    /// has stopped. `Err` if a storage failure had stopped the node.
    pub fn shutdown(mut self) -> Result<(), Error> {
        let _ = self.requests.send(Request::Shutdown);
        self.join()
    }

    /// Stops at once, as a crash would (minus losing what is on disk): no leadership hand-over, so if this
    /// node led, the others elect a new leader after an election timeout. Returns once every thread of
    /// the node has stopped.
    pub fn halt(mut self) -> Result<(), Error> {
        let _ = self.shutdown_tx.send(());
        self.join()
    }

    fn join(&mut self) -> Result<(), Error> {
        let r = match self.raft_thread.take().map(|t| t.join()) {
            Some(Ok(Ok(()))) | None => Ok(()),
            Some(Ok(Err(e))) => Err(Error::Stopped(e)),
            Some(Err(_)) => Err(Error::Stopped("the raft thread panicked".into())),
        };
        self.lock.take();
        r
    }

    fn submit(&self, req: Request<S>) -> Result<(), Error> {
        match self.requests.try_send(req) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(Error::Busy),
            Err(TrySendError::Disconnected(_)) => {
                Err(Error::Stopped("the node is not running".into()))
            }
        }
    }

    fn wait<T>(&self, rx: &Receiver<Result<T, ApiError>>, deadline: Instant) -> Result<T, Error> {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(r) => r.map_err(Error::from_api),
            Err(RecvTimeoutError::Timeout) => Err(Error::Timeout),
            // The Raft thread stopped with the request still queued.
            Err(RecvTimeoutError::Disconnected) => Err(Error::Stopped("the node stopped".into())),
        }
    }

    /// Waits a moment before another attempt (a leader may be elected meanwhile); false if the deadline
    /// would pass.
    fn pause_before_retry(&self, deadline: Instant) -> bool {
        let pause = self
            .tick
            .clamp(Duration::from_millis(1), Duration::from_millis(50));
        if Instant::now() + pause >= deadline {
            return false;
        }
        std::thread::sleep(pause);
        true
    }
}

impl<S: StateMachine> Drop for Node<S> {
    fn drop(&mut self) {
        if self.raft_thread.is_some() {
            let _ = self.shutdown_tx.send(());
            let _ = self.join();
        }
    }
}

fn start_error(e: ServerError) -> Error {
    Error::Start(e.0)
}
