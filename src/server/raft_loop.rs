//! The Raft thread: one `select!` loop joining the core, the WAL, the transport and the state machine.
//!
//! Rules this loop keeps:
//! - It is the only owner of the core, the WAL and the state machine; nothing else touches them.
//! - Each turn waits for one event (tick, peer message, client request, shutdown), drains whatever else is
//!   already queued (bounded), then runs the core's `ready` cycle: persist once (one fsync for the whole
//!   batch: group commit), send, apply, answer clients, `advance`.
//! - A leader's appends go out before its own fsync (allowed by the core's contract); every other message
//!   goes out after it.
//! - A write is answered only once its entry is applied *with the term it was appended in*. A read is
//!   answered once the state machine has applied its confirmed read index.
//! - Every waiting client has a deadline; past it, it gets `Timeout` (outcome unknown). Nobody waits forever.
//! - Exactly-once forwarding: a write proposed while this node is not the leader carries an idempotency
//!   token (the client's, or one generated here). If the leader changes while it is in flight, the same
//!   bytes are proposed again (as soon as a leader is known, until the deadline); the state machine applies
//!   the token once and answers a repeat with the first result.
//!   Only for state machines that apply tokens (the request says so: the key-value store does); other
//!   proposals lost in a leader change are answered `leader_changed` (outcome unknown).
//! - The state machine is any `StateMachine` (`crate::machine`); the loop keeps its applied index, and
//!   client requests are the generic `Request`s of `request.rs` (the HTTP layer's `ClientRequest`s are
//!   converted in `kv_machine.rs`).
//! - The core's clock follows real time: every tick event (and every lease read) first catches up on the
//!   ticks that are due, so a paused process (SIGSTOP, a long GC-like stall, an overloaded machine) sees
//!   its missed ticks before it serves anything from a lease.
//! - A lease read (`consistency=lease`) is answered without a heartbeat round only while the core says the
//!   lease holds; otherwise it takes the read-index path like a linearizable read.
//! - The loop never blocks on the network: the transport's `send` only enqueues.
//! - A storage failure is fatal: the loop stops, and the node with it, since what is durable is unknown
//!   (after a failed fsync the kernel may have dropped the dirty pages: retrying could report data durable
//!   that is not). Nothing after the failure is persisted, sent, applied or acknowledged: the failing
//!   ready cycle stops before its post-persist messages, applies and answers. Every waiting client and
//!   every request still queued is answered `storage_failure` (500, outcome unknown) at once, then the
//!   loop returns the error and the process exits non-zero. A full disk (ENOSPC) is handled the same way;
//!   the WAL's torn-tail repair makes the restart clean once space is freed.
//! - Metrics cost the loop only relaxed atomic adds and stores (see `super::metrics`); role, term and leader
//!   changes are derived from the core's read-only state after every tick and peer message, never by
//!   changing the core.

use super::api::{ApiError, Consistency, WriteOk};
use super::cluster::{decode_book, AddressBook, Addrs};
use super::metrics::{Metrics, ProposalKind, RaftWatch};
use super::request::{Committed, ReadFn, ReadMeta, Request, WriteReply};
use super::space::SpaceWatch;
use crate::config::NodeConfig;
use crate::machine::StateMachine;
use crate::raft::{
    EntryKind, Index, Membership, Message, MessageBody, Raft, RequestError, Role, Term,
};
use crate::storage::Wal;
use crate::transport::Transport;
use crossbeam_channel::{select, Receiver};
use log::{info, warn};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

#[path = "admin_loop.rs"]
mod admin_loop;
#[path = "snapshots.rs"]
mod snapshots;
pub(super) use snapshots::{load_snapshot, Snapshots};

/// At most this many queued inputs are folded into one turn.
const MAX_BATCH: usize = 4096;
/// Apply results kept for proposals whose answer arrives after their entry was applied.
const RECENT_RESULTS: usize = 65_536;

enum Waiter<S: StateMachine> {
    Write {
        reply: WriteReply<S::Output>,
        /// The proposal's bytes when it carries a token, so it can be proposed again after a leader change.
        retry: Option<Vec<u8>>,
        /// Proposed more than once: a failure is then never definite.
        retried: bool,
        /// Where the latest attempt was appended; only its fate answers the client.
        attempt: Option<(Index, Term)>,
    },
    Read {
        read: ReadFn<S>,
    },
}

struct Pending<S: StateMachine> {
    waiter: Waiter<S>,
}

/// Counters exposed on `/status`.
#[derive(Default, Debug, Clone)]
pub struct LoopStats {
    /// Ready cycles run.
    pub turns: u64,
    /// WAL syncs (write + fdatasync) that ready cycles required.
    pub syncs: u64,
    /// Log entries made durable by those syncs.
    pub entries_persisted: u64,
    /// Most entries made durable by one sync.
    pub max_batch: u64,
    /// Writes answered as committed and applied.
    pub writes_ok: u64,
    /// Reads released once the applied index reached their read index.
    pub reads_ok: u64,
    /// Requests failed with `Timeout` because their deadline passed.
    pub timeouts: u64,
    /// Tokened writes proposed again after a leader change.
    pub retries: u64,
    /// Reads served from the leader's lease (no heartbeat round).
    pub lease_reads: u64,
}

/// The Raft thread's state, generic over the state machine `S` and over what clients send (`R`: the
/// HTTP layer's `ClientRequest` for the key-value server, `Request<S>` itself for an embedded node).
pub struct RaftLoop<S: StateMachine, R> {
    /// The node's configuration.
    pub(super) cfg: NodeConfig,
    /// The Raft core.
    pub(super) raft: Raft,
    /// The write-ahead log the core's entries and hard state are persisted to.
    pub(super) wal: Wal,
    /// Connections to the peers.
    pub(super) transport: Transport,
    /// The replicated state machine.
    pub(super) sm: S,
    /// The index of the last entry applied to `sm` (commands and entries without one alike).
    pub(super) applied: Index,
    /// Messages from the peers.
    pub(super) peer_rx: Receiver<Message>,
    /// Requests from clients (HTTP workers or an embedding program).
    pub(super) client_rx: Receiver<R>,
    /// A message here stops the loop.
    pub(super) shutdown_rx: Receiver<()>,
    next_request: u64,
    pending: HashMap<u64, Pending<S>>,
    /// Request ids in deadline order (all requests share one timeout).
    deadlines: VecDeque<(Instant, u64)>,
    /// Writes appended at an index (with the term they were appended in), waiting for apply.
    writes_at: BTreeMap<Index, Vec<(Term, u64)>>,
    /// Reads waiting for the state machine to reach their read index.
    reads_at: BTreeMap<Index, Vec<u64>>,
    recent: VecDeque<(Index, Term, S::Output)>,
    /// Tokened writes waiting for a leader to be proposed again.
    retry_queue: Vec<u64>,
    /// Makes generated idempotency tokens unique across restarts of this node.
    token_nonce: u64,
    next_token: u64,
    stats: LoopStats,
    last_role: Role,
    /// When the core was last ticked (up to a whole number of tick intervals).
    last_tick: Instant,
    metrics: Arc<Metrics>,
    watch: RaftWatch,
    snaps: Snapshots,
    /// Every member's addresses (see `cluster.rs`).
    book: AddressBook,
    /// Learners the leader promotes once they catch up.
    auto_promote: std::collections::BTreeSet<crate::raft::NodeId>,
    /// A graceful shutdown was asked for: stop by then at the latest.
    shutdown_at: Option<Instant>,
    /// The data directory's free-space reserve (`space.rs`).
    space: SpaceWatch,
}

impl<S: StateMachine, R: Into<Request<S>>> RaftLoop<S, R> {
    /// `sm` holds the state as of entry `applied` (the snapshot it was restored from; 0: none).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: NodeConfig,
        raft: Raft,
        wal: Wal,
        transport: Transport,
        sm: S,
        applied: Index,
        peer_rx: Receiver<Message>,
        client_rx: Receiver<R>,
        shutdown_rx: Receiver<()>,
        metrics: Arc<Metrics>,
        snaps: Snapshots,
    ) -> Self {
        let mut book: AddressBook = cfg
            .members
            .iter()
            .map(|(&id, raft)| {
                let addrs = Addrs {
                    raft: raft.clone(),
                    http: None,
                };
                (id, addrs)
            })
            .collect();
        if let Some(me) = book.get_mut(&cfg.id) {
            me.http = Some(cfg.http_addr.to_string());
        }
        let space = SpaceWatch::new(cfg.id, cfg.data_dir.clone(), cfg.min_free_bytes);
        RaftLoop {
            space,
            book,
            auto_promote: Default::default(),
            shutdown_at: None,
            snaps,
            watch: RaftWatch::new(&raft),
            metrics,
            cfg,
            raft,
            wal,
            transport,
            sm,
            applied,
            peer_rx,
            client_rx,
            shutdown_rx,
            next_request: 1,
            pending: HashMap::new(),
            deadlines: VecDeque::new(),
            writes_at: BTreeMap::new(),
            reads_at: BTreeMap::new(),
            recent: VecDeque::new(),
            retry_queue: Vec::new(),
            token_nonce: super::seed_for(0),
            next_token: 0,
            stats: LoopStats::default(),
            last_role: Role::Follower,
            last_tick: Instant::now(),
        }
    }

    /// Runs until shutdown or a fatal storage error.
    pub fn run(mut self) -> Result<(), String> {
        if let Err(e) = self.serve() {
            self.fence(&e);
            return Err(e);
        }
        info!("[n{}] raft loop stopping", self.cfg.id);
        self.fail_all(ApiError::LeaderChanged);
        self.transport.shutdown();
        Ok(())
    }

    /// After a storage failure: answers every waiting and queued request `storage_failure`. The transport
    /// is not shut down gracefully (a reader blocked on the full inbound queue would hold it up); its
    /// threads end with the process.
    fn fence(&mut self, e: &str) {
        let err = ApiError::StorageFailure(format!(
            "node {} stopped after a storage failure ({e}); the outcome of this request is unknown",
            self.cfg.id
        ));
        self.fail_all(err.clone());
        while let Ok(r) = self.client_rx.try_recv() {
            r.into().fail(err.clone());
        }
    }

    /// The loop proper; returns on shutdown (`Ok`) or at the first storage failure.
    fn serve(&mut self) -> Result<(), String> {
        let ticker = crossbeam_channel::tick(self.cfg.tick);
        // Re-apply what the log says is committed before serving anything.
        self.process_ready()?;
        loop {
            select! {
                recv(ticker) -> _ => {
                    self.watch_space();
                    self.catch_up_ticks();
                    self.promote_caught_up_learners();
                    self.watch.observe_role(&self.raft, &self.metrics);
                    self.expire(Instant::now());
                    self.retry_writes();
                }
                recv(self.peer_rx) -> m => match m {
                    Ok(m) => self.step(m),
                    Err(_) => break,
                },
                recv(self.client_rx) -> r => match r {
                    Ok(r) => self.handle_client(r.into()),
                    Err(_) => break,
                },
                recv(self.snaps.taken_rx) -> t => {
                    if let Ok(t) = t {
                        self.snapshot_taken(t)?;
                    }
                }
                recv(self.snaps.sent_rx) -> s => {
                    if let Ok(s) = s {
                        self.snapshot_sent(s);
                    }
                }
                recv(self.shutdown_rx) -> _ => break,
            }
            // Group commit: fold everything already queued into this turn.
            for _ in 0..MAX_BATCH {
                let mut any = false;
                if let Ok(m) = self.peer_rx.try_recv() {
                    self.step(m);
                    any = true;
                }
                if let Ok(r) = self.client_rx.try_recv() {
                    self.handle_client(r.into());
                    any = true;
                }
                if !any {
                    break;
                }
            }
            self.process_ready()?;
            if self.shutdown_due() {
                break;
            }
        }
        Ok(())
    }

    /// Measures the data directory's free space (at most every `space::CHECK_EVERY`) and pauses or
    /// resumes new writes in the core accordingly.
    fn watch_space(&mut self) {
        let s = self.space.check(Instant::now());
        if s.low != self.raft.writes_paused() {
            self.raft.set_writes_paused(s.low);
        }
        if let Some(free) = s.free {
            self.metrics
                .storage_free_bytes
                .set(i64::try_from(free).unwrap_or(i64::MAX));
        } else {
            self.metrics.storage_free_bytes.set(-1);
        }
        self.metrics.storage_low_space.set(i64::from(s.low));
    }

    /// Ticks the core once for every whole tick interval since the last tick (bounded, so a process
    /// frozen for hours does not spin: past three election timeouts more ticks change nothing).
    fn catch_up_ticks(&mut self) {
        let now = Instant::now();
        let tick = self.cfg.tick;
        let due = (now.saturating_duration_since(self.last_tick).as_nanos()
            / tick.as_nanos().max(1))
        .min(u128::from(u32::MAX)) as u32;
        let cap = 3 * self.cfg.election_ticks + 1;
        for _ in 0..due.min(cap) {
            self.raft.tick();
        }
        if due > cap {
            self.last_tick = now;
        } else {
            self.last_tick += tick * due;
        }
    }

    /// Feeds a peer message to the core and counts what it changed.
    fn step(&mut self, m: Message) {
        if matches!(m.body, MessageBody::Propose { .. }) && self.raft.is_leader() {
            self.metrics.proposal(ProposalKind::FromFollower);
        }
        if !self.check_incoming(&m) {
            return;
        }
        self.raft.step(m);
        self.watch.observe_role(&self.raft, &self.metrics);
    }

    /// Counts a proposal by where the core will send it (mirrors `Raft::propose`).
    fn count_proposal(&self) {
        let kind = if self.raft.is_leader() {
            ProposalKind::Local
        } else if self.raft.role() == Role::Follower && self.raft.leader().is_some() {
            ProposalKind::Forwarded
        } else {
            ProposalKind::NoLeader
        };
        self.metrics.proposal(kind);
    }

    fn request_id(&mut self) -> u64 {
        let id = self.next_request;
        self.next_request += 1;
        id
    }

    fn park(&mut self, id: u64, waiter: Waiter<S>) {
        let deadline = Instant::now() + self.cfg.request_timeout;
        self.pending.insert(id, Pending { waiter });
        self.deadlines.push_back((deadline, id));
    }

    fn handle_client(&mut self, req: Request<S>) {
        match req {
            Request::Propose {
                encode,
                token,
                tokens,
                reply,
            } => {
                let id = self.request_id();
                // A write that will be forwarded gets a token, so a leader change cannot apply it twice.
                let token = token.or_else(|| {
                    (tokens && !self.raft.is_leader()).then(|| {
                        self.next_token += 1;
                        format!(
                            "n{}.{:x}.{}",
                            self.cfg.id, self.token_nonce, self.next_token
                        )
                        .into_bytes()
                    })
                });
                let bytes = encode(token.as_deref());
                let retry = token.is_some().then(|| bytes.clone());
                self.park(
                    id,
                    Waiter::Write {
                        reply,
                        retry,
                        retried: false,
                        attempt: None,
                    },
                );
                self.count_proposal();
                self.raft.propose(id, vec![bytes]);
            }
            Request::Read {
                consistency: Consistency::Stale,
                read,
            } => read(Ok((&self.sm, self.read_meta()))),
            Request::Read {
                consistency: Consistency::Linearizable,
                read,
            } => {
                let id = self.request_id();
                self.park(id, Waiter::Read { read });
                self.raft.read_index(id);
            }
            Request::Read {
                consistency: Consistency::Lease,
                read,
            } => {
                let id = self.request_id();
                self.park(id, Waiter::Read { read });
                self.catch_up_ticks();
                match self.raft.lease_read() {
                    Some(index) => {
                        self.stats.lease_reads += 1;
                        self.reads_at.entry(index).or_default().push(id);
                        self.release_reads();
                    }
                    None => self.raft.read_index(id),
                }
            }
            Request::Status { reply } => reply(self.status(), &self.sm),
            Request::Membership {
                change,
                addrs,
                auto_promote,
                reply,
            } => self.membership_request(change, addrs, auto_promote, reply),
            Request::Transfer { target, reply } => {
                let r = self
                    .raft
                    .transfer_leadership(target)
                    .map_err(|e| self.request_error(e));
                let _ = reply.send(r);
            }
            Request::Cluster { reply } => {
                let _ = reply.send(self.cluster_view());
            }
            Request::Shutdown => self.begin_shutdown(),
        }
    }

    /// What a read served now sees.
    fn read_meta(&self) -> ReadMeta {
        ReadMeta {
            applied_index: self.applied,
            term: self.raft.term(),
            leader_contact: self
                .raft
                .leader_contact_age()
                .map(|t| self.cfg.tick * u32::try_from(t).unwrap_or(u32::MAX)),
        }
    }

    /// Runs the core's ready cycle until it has nothing more (see the module rules).
    fn process_ready(&mut self) -> Result<(), String> {
        while self.raft.has_ready() {
            let rd = self.raft.ready();
            self.stats.turns += 1;
            if let Some(meta) = rd.snapshot {
                self.install_snapshot(meta)?;
            }
            if let Some((membership, context)) = &rd.membership {
                self.membership_changed(membership, context);
            }
            self.metrics.ready_cycles.inc();
            if rd
                .messages
                .iter()
                .any(|m| matches!(m.body, MessageBody::PreVote { .. }))
            {
                // One pre-vote round sends its requests to every peer at once, in one Ready.
                self.metrics.pre_votes_started.inc();
            }
            let (early, late): (Vec<_>, Vec<_>) = rd
                .messages
                .into_iter()
                .partition(|m| m.may_send_before_persist());
            for m in early {
                self.transport.send(m);
            }
            if !rd.entries.is_empty() {
                self.wal
                    .append(&rd.entries)
                    .map_err(|e| format!("WAL append failed: {e}"))?;
            }
            if let Some(hs) = rd.hard_state {
                self.wal
                    .set_hard_state(hs)
                    .map_err(|e| format!("WAL write failed: {e}"))?;
            }
            let wal_before = self.wal.stats();
            if rd.must_sync {
                let started = Instant::now();
                self.wal
                    .sync()
                    .map_err(|e| format!("WAL sync (write + fdatasync) failed: {e}"))?;
                self.stats.syncs += 1;
                let n = rd.entries.len() as u64;
                if self.wal.stats().syncs > wal_before.syncs {
                    self.metrics
                        .fsync_seconds
                        .observe_duration(started.elapsed());
                    self.metrics.fsync_entries.observe(n);
                }
                self.stats.entries_persisted += n;
                self.stats.max_batch = self.stats.max_batch.max(n);
            } else if rd.hard_state.is_some() {
                self.wal
                    .flush()
                    .map_err(|e| format!("WAL write failed: {e}"))?;
            }
            let written = self.wal.stats().bytes_written - wal_before.bytes_written;
            if written > 0 {
                self.metrics.wal_written_bytes.inc_by(written);
            }
            for m in late {
                self.send_message(m);
            }
            self.metrics
                .entries_applied
                .inc_by(rd.committed.len() as u64);
            for e in rd.committed {
                match e.kind {
                    EntryKind::Noop => {
                        self.sm.skip(e.index);
                        self.applied = e.index;
                        // A write waiting here was overwritten by a new leader's no-op.
                        for (t, id) in self.writes_at.remove(&e.index).unwrap_or_default() {
                            if self.is_latest_attempt(id, e.index, t) {
                                self.fail(id, ApiError::NotCommitted);
                            }
                        }
                    }
                    EntryKind::Config { .. } => {
                        self.sm.skip(e.index);
                        self.applied = e.index;
                        self.finish_writes(e.index, e.term, None);
                    }
                    EntryKind::Command(data) => {
                        let result = self.sm.apply(e.index, &data);
                        self.applied = e.index;
                        self.finish_writes(e.index, e.term, Some(&result));
                        self.recent.push_back((e.index, e.term, result));
                        if self.recent.len() > RECENT_RESULTS {
                            self.recent.pop_front();
                        }
                    }
                }
            }
            for p in rd.proposed {
                match p.result {
                    Ok((index, term)) => self.appended(p.request_id, index, term),
                    Err(e) => self.proposal_failed(p.request_id, e),
                }
            }
            for r in rd.reads {
                match r.result {
                    Ok(index) => self.reads_at.entry(index).or_default().push(r.request_id),
                    Err(e) => {
                        let e = self.request_error(e);
                        self.fail(r.request_id, e)
                    }
                }
            }
            self.raft.advance();
            self.release_reads();
        }
        // A received snapshot the core did not take is of no use.
        self.discard_incoming();
        self.maybe_take_snapshot();
        self.watch.observe_role(&self.raft, &self.metrics);
        self.watch
            .observe_state(&self.raft, self.applied, &self.metrics);
        let role = self.raft.role();
        if role != self.last_role {
            self.last_role = role;
            if role != Role::Leader {
                // Nothing to do for writes: they resolve by index and term as entries apply.
                info!("[n{} t{}] now {:?}", self.cfg.id, self.raft.term(), role);
            }
        }
        Ok(())
    }

    /// A proposal was refused or lost track of. A tokened write is proposed again (its token makes that
    /// safe); anything else fails, definitely only if it was never proposed before.
    fn proposal_failed(&mut self, id: u64, e: RequestError) {
        let retryable = match self.pending.get_mut(&id) {
            Some(Pending {
                waiter:
                    Waiter::Write {
                        retry: Some(_),
                        retried,
                        ..
                    },
            }) => {
                let again = e != RequestError::InsufficientStorage
                    && (*retried || e == RequestError::LeaderChanged);
                if again {
                    *retried = true;
                }
                again
            }
            _ => false,
        };
        if retryable {
            self.retry_queue.push(id);
            self.retry_writes();
        } else {
            let e = self.request_error(e);
            self.fail(id, e);
        }
    }

    /// Proposes queued tokened writes again once a leader is known.
    fn retry_writes(&mut self) {
        if self.retry_queue.is_empty() || self.raft.leader().is_none() {
            return;
        }
        for id in std::mem::take(&mut self.retry_queue) {
            if let Some(Pending {
                waiter: Waiter::Write {
                    retry: Some(bytes), ..
                },
            }) = self.pending.get(&id)
            {
                let bytes = bytes.clone();
                self.stats.retries += 1;
                self.metrics.write_retries.inc();
                self.count_proposal();
                self.raft.propose(id, vec![bytes]);
            }
        }
    }

    /// A proposal was appended at `index` in `term`: wait for that entry to apply.
    fn appended(&mut self, id: u64, index: Index, term: Term) {
        if let Some(Pending {
            waiter: Waiter::Write { attempt, .. },
        }) = self.pending.get_mut(&id)
        {
            *attempt = Some((index, term));
        }
        if index <= self.applied {
            // Already applied (a forwarded proposal whose answer came late): look up the result.
            let found = self
                .recent
                .iter()
                .rev()
                .find(|(i, _, _)| *i == index)
                .cloned();
            match found {
                Some((_, t, result)) if t == term => {
                    self.answer_write(id, index, term, Some(&result))
                }
                Some(_) => self.fail(id, ApiError::NotCommitted),
                None => self.fail(id, ApiError::LeaderChanged),
            }
            return;
        }
        self.writes_at.entry(index).or_default().push((term, id));
    }

    fn finish_writes(&mut self, index: Index, term: Term, result: Option<&S::Output>) {
        let Some(waiting) = self.writes_at.remove(&index) else {
            return;
        };
        for (t, id) in waiting {
            if !self.is_latest_attempt(id, index, t) {
                continue;
            }
            if t == term {
                self.answer_write(id, index, term, result);
            } else {
                self.fail(id, ApiError::NotCommitted);
            }
        }
    }

    /// Whether (index, term) is where request `id`'s latest attempt was appended (earlier attempts of a
    /// retried write no longer decide its answer).
    fn is_latest_attempt(&self, id: u64, index: Index, term: Term) -> bool {
        match self.pending.get(&id) {
            Some(Pending {
                waiter: Waiter::Write { attempt, .. },
            }) => *attempt == Some((index, term)),
            _ => false,
        }
    }

    /// Answers a write whose entry applied in the term it was appended in (`result`: `None` for an entry
    /// without a command).
    fn answer_write(&mut self, id: u64, index: Index, term: Term, result: Option<&S::Output>) {
        let Some(p) = self.pending.remove(&id) else {
            return;
        };
        let Waiter::Write { reply, .. } = p.waiter else {
            return;
        };
        self.stats.writes_ok += 1;
        reply(Ok(Committed {
            index,
            term,
            output: result.cloned(),
        }));
    }

    fn release_reads(&mut self) {
        let applied = self.applied;
        while let Some((&index, _)) = self.reads_at.first_key_value() {
            if index > applied {
                break;
            }
            let ids = self.reads_at.remove(&index).unwrap_or_default();
            for id in ids {
                if let Some(Pending {
                    waiter: Waiter::Read { read },
                }) = self.pending.remove(&id)
                {
                    self.stats.reads_ok += 1;
                    read(Ok((&self.sm, self.read_meta())));
                }
            }
        }
    }

    fn fail(&mut self, id: u64, err: ApiError) {
        if let Some(p) = self.pending.remove(&id) {
            match p.waiter {
                Waiter::Write { reply, retried, .. } => {
                    // A write proposed more than once may have been applied by an earlier attempt.
                    let err = match err {
                        ApiError::NoLeader
                        | ApiError::NotLeader { .. }
                        | ApiError::NotCommitted
                            if retried =>
                        {
                            ApiError::LeaderChanged
                        }
                        e => e,
                    };
                    reply(Err(err));
                }
                Waiter::Read { read } => read(Err(err)),
            }
        }
    }

    fn fail_all(&mut self, err: ApiError) {
        let ids: Vec<u64> = self.pending.keys().copied().collect();
        for id in ids {
            self.fail(id, err.clone());
        }
    }

    /// Fails every request past its deadline with `Timeout` (outcome unknown).
    fn expire(&mut self, now: Instant) {
        while let Some(&(deadline, id)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            if self.pending.contains_key(&id) {
                self.stats.timeouts += 1;
                self.metrics.request_timeouts.inc();
                self.fail(id, ApiError::Timeout);
            }
        }
        // Index maps may still name expired requests; drop those below the applied index lazily.
        if self.writes_at.len() > 100_000 {
            warn!(
                "[n{}] {} writes waiting for apply",
                self.cfg.id,
                self.writes_at.len()
            );
        }
    }

    fn status(&self) -> serde_json::Value {
        let log = self.raft.log();
        let wal = self.wal.stats();
        let progress: Vec<_> = self
            .raft
            .progress()
            .into_iter()
            .map(|(id, matched, next, state, heard)| {
                serde_json::json!({
                    "id": id, "match": matched, "next": next, "state": state,
                    "last_contact_ms": self.ticks_ms(heard),
                })
            })
            .collect();
        let leader_http = self
            .raft
            .leader()
            .and_then(|l| self.http_addr_of(l))
            .map(|a| a.to_string());
        serde_json::json!({
            "id": self.cfg.id,
            "role": format!("{:?}", self.raft.role()).to_lowercase(),
            "term": self.raft.term(),
            "leader": self.raft.leader(),
            "leader_raft_addr": self.raft.leader().and_then(|l| self.cfg.members.get(&l)),
            "leader_http_addr": leader_http,
            "leader_last_contact_ms": self.raft.leader_contact_age().map(|t| self.ticks_ms(t)),
            "lease_valid": self.raft.lease_read().is_some(),
            "commit_index": log.committed(),
            "applied_index": self.applied,
            "last_index": log.last_index(),
            "first_index": log.first_index(),
            "pending_requests": self.pending.len(),
            "storage": {
                "free_bytes": self.space.space().free,
                "min_free_bytes": self.space.min_free(),
                "low_space": self.space.space().low,
                "writes_paused": self.raft.writes_paused(),
            },
            "progress": progress,
            "stats": {
                "turns": self.stats.turns,
                "fsyncs": self.stats.syncs,
                "entries_persisted": self.stats.entries_persisted,
                "avg_entries_per_fsync": if self.stats.syncs > 0 {
                    self.stats.entries_persisted as f64 / self.stats.syncs as f64
                } else { 0.0 },
                "max_entries_per_fsync": self.stats.max_batch,
                "writes_ok": self.stats.writes_ok,
                "reads_ok": self.stats.reads_ok,
                "timeouts": self.stats.timeouts,
                "write_retries": self.stats.retries,
                "lease_reads": self.stats.lease_reads,
                "snapshots": self.snapshot_status(),
                "wal": format!("{wal:?}"),
            },
        })
    }
}

impl<S: StateMachine, R: Into<Request<S>>> RaftLoop<S, R> {
    /// Maps a core error to what the client sees.
    fn request_error(&self, e: RequestError) -> ApiError {
        match e {
            RequestError::NotLeader { leader: None } => ApiError::NoLeader,
            RequestError::NotLeader { leader: Some(l) } => ApiError::NotLeader {
                leader: Some(l),
                leader_addr: self.cfg.members.get(&l).cloned(),
                leader_http: self.http_addr_of(l).map(|a| a.to_string()),
            },
            RequestError::LeaderChanged => ApiError::LeaderChanged,
            RequestError::Busy => ApiError::Busy,
            RequestError::Refused(why) if why.contains("not a member") => ApiError::NotFound(why),
            RequestError::Refused(why) => ApiError::Conflict(why),
            RequestError::InsufficientStorage => {
                self.metrics.writes_refused_low_space.inc();
                let who = match self.raft.leader() {
                    Some(l) if l == self.cfg.id => "this node's".to_string(),
                    Some(l) => format!("the leader's (node {l})"),
                    None => "the leader's".to_string(),
                };
                ApiError::InsufficientStorage(format!(
                    "{who} data directory has less free space than its reserve (--min-free-bytes): \
                     writes are refused until space is freed; nothing was applied; reads still work"
                ))
            }
        }
    }

    /// A node's HTTP address: ours from the configuration, a peer's as its handshake announced it (else
    /// as the address book has it).
    fn http_addr_of(&self, id: crate::raft::NodeId) -> Option<std::net::SocketAddr> {
        if id == self.cfg.id {
            Some(self.cfg.http_addr)
        } else {
            self.transport.peer_http(id).or_else(|| {
                self.book
                    .get(&id)
                    .and_then(|a| a.http.as_ref())
                    .and_then(|h| h.parse().ok())
            })
        }
    }

    /// The membership in effect changed: learn the members' addresses and connect to exactly them.
    fn membership_changed(&mut self, membership: &Membership, context: &[u8]) {
        if let Some(book) = decode_book(context) {
            self.book = book;
        }
        let peers = membership
            .members()
            .filter(|&id| id != self.cfg.id)
            .filter_map(|id| self.book.get(&id).map(|a| (id, a.raft.clone())))
            .collect();
        if let Err(e) = self.transport.set_peers(peers) {
            warn!("[n{}] cannot update the peers: {e}", self.cfg.id);
        }
    }

    fn ticks_ms(&self, ticks: u64) -> u64 {
        (self.cfg.tick.as_millis() as u64).saturating_mul(ticks)
    }
}
