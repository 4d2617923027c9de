//! The Raft node: roles, terms, votes, the message handlers, and the `ready`/`advance` contract with the
//! driver. Leader-only machinery (replication, commit, read index) lives in `leader.rs`.
//!
//! See the module docs of [`crate::raft`] for the contract and the rules; each handler cites the rule of the
//! paper ("Raft", Ongaro & Ousterhout 2014) or the thesis ("Consensus: Bridging Theory and Practice", 2014)
//! it implements.

use super::leader::LeaderState;
use super::log::RaftLog;
use super::message::*;
use super::rng::Rng;
use log::{debug, info};
use std::collections::{BTreeMap, BTreeSet};

/// Tuning of the core. Times are in ticks; the driver decides how long a tick is.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's id (non-zero).
    pub id: NodeId,
    /// Every voting member, this node included.
    pub voters: BTreeSet<NodeId>,
    /// Base election timeout; the actual one is drawn uniformly from `[election_ticks, 2 * election_ticks)`.
    pub election_ticks: u32,
    /// A leader sends heartbeats every this many ticks. Must be well below `election_ticks`.
    pub heartbeat_ticks: u32,
    /// Thesis §9.6: ask for votes without raising the term first.
    pub pre_vote: bool,
    /// Thesis §6.2: a leader that hears from no quorum for an election timeout steps down; followers that
    /// hear from a leader ignore vote requests until an election timeout passes (thesis §4.2.3).
    pub check_quorum: bool,
    /// At most this many unacknowledged appends per follower in the replicate state.
    pub max_inflight: usize,
    /// At most this many entries in one append.
    pub max_entries_per_msg: usize,
    /// At most about this many bytes of entries in one append (at least one entry is always sent).
    pub max_bytes_per_msg: usize,
    /// At most about this many bytes of committed entries handed out per `ready`.
    pub max_apply_bytes: usize,
    /// At most this many reads waiting for a read-index round on the leader.
    pub max_pending_reads: usize,
    /// Thesis §6.4.1: a leader whose heartbeat round started at tick T was acknowledged by a quorum may serve
    /// reads without another round until T + `lease_ticks` ([`Raft::lease_read`]). Requires `check_quorum`
    /// (followers then refuse votes for `election_ticks` after hearing from the leader) and must be below
    /// `election_ticks`; the margin is what tolerates nodes' clocks running at different rates. 0 disables.
    pub lease_ticks: u32,
}

impl Config {
    /// Defaults close to etcd's: election 10 ticks, heartbeat 1 tick, pre-vote and check-quorum on, 256
    /// in-flight appends, 1 MiB per append.
    pub fn new(id: NodeId, voters: impl IntoIterator<Item = NodeId>) -> Self {
        Config {
            id,
            voters: voters.into_iter().collect(),
            election_ticks: 10,
            heartbeat_ticks: 1,
            pre_vote: true,
            check_quorum: true,
            max_inflight: 256,
            max_entries_per_msg: 4096,
            max_bytes_per_msg: 1 << 20,
            max_apply_bytes: 64 << 20,
            max_pending_reads: 100_000,
            lease_ticks: 8,
        }
    }

    /// Checks the settings; the error says which one is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.id == 0 {
            return Err("node id must be non-zero".into());
        }
        if self.voters.contains(&0) {
            return Err("voter ids must be non-zero".into());
        }
        // A node outside `voters` (one joining a running cluster) never campaigns until a configuration
        // entry makes it a voter.
        if self.heartbeat_ticks == 0 || self.election_ticks <= self.heartbeat_ticks {
            return Err(format!(
                "election ticks ({}) must exceed heartbeat ticks ({}) which must be at least 1",
                self.election_ticks, self.heartbeat_ticks
            ));
        }
        if self.lease_ticks >= self.election_ticks {
            return Err(format!(
                "lease ticks ({}) must be below election ticks ({})",
                self.lease_ticks, self.election_ticks
            ));
        }
        if self.max_inflight == 0 || self.max_entries_per_msg == 0 || self.max_pending_reads == 0 {
            return Err(
                "max_inflight, max_entries_per_msg and max_pending_reads must be at least 1".into(),
            );
        }
        Ok(())
    }
}

/// What a node recovered from its storage when it starts.
#[derive(Debug, Clone, Default)]
pub struct InitialState {
    /// The durable term, vote and commit index.
    pub hard_state: HardState,
    /// Index and term of the last entry covered by a snapshot (0, 0 without one).
    pub snapshot_index: Index,
    /// The term of the entry at `snapshot_index` (0 without a snapshot).
    pub snapshot_term: Term,
    /// The durable entries after `snapshot_index`, contiguous.
    pub entries: Vec<Entry>,
    /// Entries up to here are already reflected in the state machine (at least `snapshot_index`).
    pub applied: Index,
    /// The membership the snapshot recorded, with the driver's context (`None`: no snapshot, or one from
    /// before membership changes: the configuration's `voters` apply until the log says otherwise).
    pub snapshot_membership: Option<(Membership, Vec<u8>)>,
}

/// The role a node plays now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Follows a leader, or waits for one until its election timeout fires.
    Follower,
    /// Runs a pre-vote (thesis §9.6) to learn whether it could win an election before raising its term.
    PreCandidate,
    /// Campaigns for votes in a new term.
    Candidate,
    /// Leads the cluster for the current term.
    Leader,
}

/// Why a proposal or read could not be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// Not the leader (and for forwarded requests: the leader was unknown or refused). Nothing was appended.
    NotLeader {
        /// The leader's id as this node knows it, or `None` if it knows of none.
        leader: Option<NodeId>,
    },
    /// The leader changed while a forwarded request was in flight. A proposal may or may not have been
    /// appended: only an idempotent retry is safe.
    LeaderChanged,
    /// Too many requests pending, or a leadership transfer under way; nothing was appended.
    Busy,
    /// A membership change or leadership transfer that cannot be made (the reason says why); nothing was
    /// appended.
    Refused(String),
    /// The leader refuses new commands while its storage is short of space ([`Raft::set_writes_paused`]);
    /// nothing was appended.
    InsufficientStorage,
}

impl From<RemoteError> for RequestError {
    fn from(e: RemoteError) -> Self {
        match e {
            RemoteError::NotLeader { leader } => RequestError::NotLeader { leader },
            RemoteError::Busy => RequestError::Busy,
            RemoteError::InsufficientStorage => RequestError::InsufficientStorage,
        }
    }
}

/// The outcome of a `propose`: where the commands were appended (the first at `index`, the rest after it, all
/// with `term`), or why not. Being appended is not being committed: the driver answers the client once the
/// entry at that index is applied *with that term*; a different term there means the proposal was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposed {
    /// The id the driver gave the proposal.
    pub request_id: u64,
    /// The index of the first command and the term of all of them, or why nothing was appended.
    pub result: Result<(Index, Term), RequestError>,
}

/// A confirmed read index (thesis §6.4): once the state machine has applied `index`, a read started before
/// the `read_index` call may be answered from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadState {
    /// The id the driver gave the `read_index` call.
    pub request_id: u64,
    /// The confirmed read index, or why none could be given.
    pub result: Result<Index, RequestError>,
}

/// Everything the driver must do after feeding the node input. See the ordering rules in [`crate::raft`].
#[derive(Debug, Default)]
pub struct Ready {
    /// The hard state, if it changed since the last `Ready`.
    pub hard_state: Option<HardState>,
    /// Entries to append to stable storage; the first may overwrite (truncate) a suffix already stored.
    pub entries: Vec<Entry>,
    /// Whether `entries`/`hard_state` must be fsynced before `messages` are sent (false when only the commit
    /// index changed, which is not needed for safety).
    pub must_sync: bool,
    /// Messages to send once the above is durable.
    pub messages: Vec<Message>,
    /// Committed entries to apply, in order.
    pub committed: Vec<Entry>,
    /// Outcomes of proposals.
    pub proposed: Vec<Proposed>,
    /// Confirmed (or failed) read indexes.
    pub reads: Vec<ReadState>,
    /// A snapshot from the leader that replaces this node's log and state machine: install it (the state
    /// machine becomes the snapshot's; storage restarts after it, keeping the hard state) before
    /// persisting `entries` and before sending `messages`.
    pub snapshot: Option<SnapshotMeta>,
    /// The membership in effect changed (an entry appended or truncated, a snapshot installed): the new one
    /// and its context, for the driver to connect to new members and drop removed ones.
    pub membership: Option<(Membership, Vec<u8>)>,
}

impl Ready {
    /// Whether there is nothing for the driver to do: no state to persist, no messages, no outcomes.
    pub fn is_empty(&self) -> bool {
        self.hard_state.is_none()
            && self.snapshot.is_none()
            && self.membership.is_none()
            && self.entries.is_empty()
            && self.messages.is_empty()
            && self.committed.is_empty()
            && self.proposed.is_empty()
            && self.reads.is_empty()
    }
}

/// What `ready` handed out, to be confirmed by `advance`.
#[derive(Debug, Default, Clone, Copy)]
struct Handed {
    stable: Option<(Index, Term)>,
    applied: Index,
}

pub(super) enum RoleState {
    Follower,
    PreCandidate { votes: BTreeMap<NodeId, bool> },
    Candidate { votes: BTreeMap<NodeId, bool> },
    Leader(Box<LeaderState>),
}

/// One Raft node. Purely in-memory: see [`crate::raft`] for how a driver runs it.
pub struct Raft {
    pub(super) id: NodeId,
    pub(super) cfg: Config,
    pub(super) term: Term,
    pub(super) vote: NodeId,
    pub(super) leader: Option<NodeId>,
    pub(super) log: RaftLog,
    pub(super) role: RoleState,
    /// Ticks since the last election timer reset (followers, candidates) or check-quorum round (leader).
    pub(super) election_elapsed: u32,
    pub(super) randomized_timeout: u32,
    /// Ticks since this node was constructed: its logical clock.
    pub(super) ticks: u64,
    /// The tick at which we last heard from the leader of our term (followers).
    leader_contact: u64,
    /// Started with a term above 0: this node may have served a leader before it went down.
    restarted: bool,
    /// The newest snapshot the driver holds (what a leader sends to followers behind its log).
    pub(super) snapshot: SnapshotMeta,
    /// A snapshot accepted from the leader, to hand out in the next `Ready`.
    pub(super) pending_snapshot: Option<SnapshotMeta>,
    /// The membership in effect: the latest configuration entry in the log, else the snapshot's, else the
    /// configuration's voters (thesis §4.1: a server uses the latest configuration in its log).
    pub(super) membership: Membership,
    pub(super) membership_context: Vec<u8>,
    /// Index of the entry that set `membership` (0: it came from the snapshot or the configuration).
    pub(super) membership_index: Index,
    /// The membership at the snapshot's index, with its context.
    pub(super) snapshot_membership: (Membership, Vec<u8>),
    pub(super) membership_changed: bool,
    pub(super) rng: Rng,
    pub(super) msgs: Vec<Message>,
    pub(super) proposed: Vec<Proposed>,
    pub(super) reads: Vec<ReadState>,
    /// Follower side: requests forwarded to the leader and not yet answered.
    forwarded_proposals: BTreeSet<u64>,
    /// While set, a leader refuses new commands (local and forwarded) with
    /// [`RequestError::InsufficientStorage`]; replication, elections and configuration changes go on.
    writes_paused: bool,
    forwarded_reads: BTreeSet<u64>,
    last_hard_state: HardState,
    handed: Option<Handed>,
}

impl Raft {
    /// A node starting from what storage recovered. `seed` drives all of its randomness.
    pub fn new(cfg: Config, init: InitialState, seed: u64) -> Result<Raft, String> {
        cfg.validate()?;
        let hs = init.hard_state;
        if hs.vote != 0 && !cfg.voters.contains(&hs.vote) {
            debug!(
                "recovered vote for {} which is not a current voter",
                hs.vote
            );
        }
        let log = RaftLog::new(
            init.snapshot_index,
            init.snapshot_term,
            init.entries,
            hs.commit,
            init.applied,
        );
        let mut r = Raft {
            id: cfg.id,
            term: hs.term,
            vote: hs.vote,
            leader: None,
            role: RoleState::Follower,
            election_elapsed: 0,
            randomized_timeout: cfg.election_ticks,
            ticks: 0,
            leader_contact: 0,
            restarted: hs.term > 0,
            snapshot: SnapshotMeta {
                index: init.snapshot_index,
                term: init.snapshot_term,
            },
            pending_snapshot: None,
            membership: Membership::default(),
            membership_context: Vec::new(),
            membership_index: 0,
            snapshot_membership: init.snapshot_membership.clone().unwrap_or_else(|| {
                (
                    Membership {
                        voters: cfg.voters.clone(),
                        learners: Default::default(),
                    },
                    Vec::new(),
                )
            }),
            membership_changed: false,
            rng: Rng::new(seed),
            msgs: Vec::new(),
            proposed: Vec::new(),
            reads: Vec::new(),
            forwarded_proposals: BTreeSet::new(),
            writes_paused: false,
            forwarded_reads: BTreeSet::new(),
            last_hard_state: HardState {
                term: hs.term,
                vote: hs.vote,
                commit: log.committed(),
            },
            log,
            cfg,
            handed: None,
        };
        r.reset_election_timer();
        r.refresh_membership();
        r.membership_changed = true;
        info!(
            "[n{} t{}] starting as follower: last index {}, commit {}",
            r.id,
            r.term,
            r.log.last_index(),
            r.log.committed()
        );
        Ok(r)
    }

    // ---- Read-only views (status, tests, metrics) ----

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }
    /// The current term.
    pub fn term(&self) -> Term {
        self.term
    }
    /// The candidate this node voted for in the current term, or 0.
    pub fn vote(&self) -> NodeId {
        self.vote
    }
    /// The leader this node currently knows of, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }
    /// The in-memory log.
    pub fn log(&self) -> &RaftLog {
        &self.log
    }
    /// The configuration the node was created with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }
    /// The role the node plays now.
    pub fn role(&self) -> Role {
        match self.role {
            RoleState::Follower => Role::Follower,
            RoleState::PreCandidate { .. } => Role::PreCandidate,
            RoleState::Candidate { .. } => Role::Candidate,
            RoleState::Leader(_) => Role::Leader,
        }
    }
    /// Pauses or resumes new commands on this node while it leads (the driver's free-space reserve on the
    /// data directory, like etcd's NOSPACE alarm). Only proposals of commands are refused: appends from a
    /// leader, votes, heartbeats, reads and configuration changes are not affected.
    pub fn set_writes_paused(&mut self, paused: bool) {
        self.writes_paused = paused;
    }

    /// Whether new commands are paused (see [`Raft::set_writes_paused`]).
    pub fn writes_paused(&self) -> bool {
        self.writes_paused
    }

    /// Whether this node is the leader of the current term.
    pub fn is_leader(&self) -> bool {
        matches!(self.role, RoleState::Leader(_))
    }
    /// The current term, vote and commit index, as they must be persisted.
    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed(),
        }
    }
    /// How many ticks ago we last heard from the leader: 0 on the leader, `None` when no leader is known.
    pub fn leader_contact_age(&self) -> Option<u64> {
        match (&self.role, self.leader) {
            (RoleState::Leader(_), _) => Some(0),
            (_, Some(_)) => Some(self.ticks - self.leader_contact),
            (_, None) => None,
        }
    }
    pub(super) fn quorum(&self) -> usize {
        self.membership.voters.len() / 2 + 1
    }
    /// Every other member (voters and learners): who the leader replicates to.
    pub(super) fn peers(&self) -> Vec<NodeId> {
        self.membership
            .members()
            .filter(|&v| v != self.id)
            .collect()
    }
    /// Every other voter: who a candidate asks for votes.
    pub(super) fn voter_peers(&self) -> Vec<NodeId> {
        self.membership
            .voters
            .iter()
            .copied()
            .filter(|&v| v != self.id)
            .collect()
    }

    // ---- Inputs ----

    /// Advances logical time by one tick: drives election timeouts, heartbeats and check-quorum.
    pub fn tick(&mut self) {
        self.ticks += 1;
        if self.is_leader() {
            self.tick_leader();
            return;
        }
        self.election_elapsed += 1;
        // The only voter has nobody to disrupt and nobody to wait for: it campaigns at its first tick
        // instead of after an election timeout (so a one-node cluster serves at once after a restart).
        let sole_voter =
            self.membership.voters.len() == 1 && self.membership.voters.contains(&self.id);
        if (self.election_elapsed >= self.randomized_timeout || sole_voter) && self.promotable() {
            self.campaign();
        }
    }

    /// Proposes client commands. The outcome arrives in [`Ready::proposed`] under `request_id`: on the leader
    /// at once, on a follower after forwarding to the leader.
    pub fn propose(&mut self, request_id: u64, commands: Vec<Vec<u8>>) {
        if self.is_leader() {
            let result = self.leader_append(commands);
            self.proposed.push(Proposed { request_id, result });
            return;
        }
        match (self.role(), self.leader) {
            (Role::Follower, Some(leader)) => {
                self.forwarded_proposals.insert(request_id);
                self.send(
                    leader,
                    0,
                    MessageBody::Propose {
                        request_id,
                        commands,
                    },
                );
            }
            _ => self.proposed.push(Proposed {
                request_id,
                result: Err(RequestError::NotLeader {
                    leader: self.leader,
                }),
            }),
        }
    }

    /// Asks for a read index (thesis §6.4). The confirmed index arrives in [`Ready::reads`]; on a follower the
    /// request is forwarded to the leader. Every call gets a fresh index: none is reused across calls.
    pub fn read_index(&mut self, request_id: u64) {
        if self.is_leader() {
            let id = self.id;
            if let Err(e) = self.leader_read(request_id, id) {
                self.reads.push(ReadState {
                    request_id,
                    result: Err(e),
                });
            }
            return;
        }
        match (self.role(), self.leader) {
            (Role::Follower, Some(leader)) => {
                self.forwarded_reads.insert(request_id);
                self.send(leader, 0, MessageBody::ReadIndex { request_id });
            }
            _ => self.reads.push(ReadState {
                request_id,
                result: Err(RequestError::NotLeader {
                    leader: self.leader,
                }),
            }),
        }
    }

    /// Feeds a message from a peer.
    pub fn step(&mut self, m: Message) {
        if m.to != self.id || m.from == self.id || m.from == 0 {
            debug!(
                "[n{} t{}] dropping misaddressed {:?}",
                self.id, self.term, m
            );
            return;
        }
        if m.body.is_client() {
            self.step_client(m);
            return;
        }
        if !self.term_check(&m) {
            return;
        }
        match m.body {
            MessageBody::PreVote {
                last_index,
                last_term,
            } => self.handle_vote_request(m.from, m.term, true, last_index, last_term),
            MessageBody::Vote {
                last_index,
                last_term,
                ..
            } => self.handle_vote_request(m.from, m.term, false, last_index, last_term),
            MessageBody::PreVoteResponse { granted } => {
                self.handle_vote_response(m.from, true, granted)
            }
            MessageBody::VoteResponse { granted } => {
                self.handle_vote_response(m.from, false, granted)
            }
            MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            } => {
                if self.become_follower_of(m.from) {
                    self.handle_append(m.from, prev_index, prev_term, entries, commit);
                }
            }
            MessageBody::Heartbeat { commit, read_seq } => {
                if self.become_follower_of(m.from) {
                    self.election_elapsed = 0;
                    // The leader never sends a commit above what it knows we match (see `bcast_heartbeat`).
                    self.log.commit_to(commit);
                    self.send(
                        m.from,
                        self.term,
                        MessageBody::HeartbeatResponse { read_seq },
                    );
                }
            }
            MessageBody::AppendResponse { index, reject } => {
                self.handle_append_response(m.from, index, reject)
            }
            MessageBody::HeartbeatResponse { read_seq } => {
                self.handle_heartbeat_response(m.from, read_seq)
            }
            MessageBody::TimeoutNow => self.handle_timeout_now(m.from),
            MessageBody::InstallSnapshot {
                index,
                last_term,
                membership,
                context,
            } => {
                if self.become_follower_of(m.from) {
                    self.election_elapsed = 0;
                    let meta = SnapshotMeta {
                        index,
                        term: last_term,
                    };
                    self.handle_install_snapshot(m.from, meta, (membership, context));
                }
            }
            MessageBody::Propose { .. }
            | MessageBody::ProposeResponse { .. }
            | MessageBody::ReadIndex { .. }
            | MessageBody::ReadIndexResponse { .. } => {
                unreachable!("client messages handled above")
            }
        }
    }

    /// The term rules every server follows (paper Figure 2 "Rules for Servers", thesis §9.6 for pre-vote,
    /// §4.2.3 for ignoring disruptive vote requests). Returns whether the message should be handled further.
    fn term_check(&mut self, m: &Message) -> bool {
        // A node that restarted may have acknowledged a leader's heartbeat just before: with leases on, it
        // keeps that promise for an election timeout after booting too (see `lease_read`).
        let booting = self.restarted
            && self.cfg.lease_ticks > 0
            && self.ticks < u64::from(self.cfg.election_ticks);
        let in_lease = self.cfg.check_quorum
            && (self.leader.is_some() || booting)
            && self.election_elapsed < self.cfg.election_ticks;
        if m.term > self.term {
            match m.body {
                MessageBody::PreVote { .. }
                | MessageBody::Vote {
                    transfer: false, ..
                } if in_lease => {
                    // §4.2.3: we heard from a live leader within the minimum election timeout, so this
                    // candidate (perhaps a removed or partitioned server) must not disrupt it.
                    debug!(
                        "[n{} t{}] ignoring {} from n{} at t{}: leader n{:?} is in lease",
                        self.id,
                        self.term,
                        m.body.name(),
                        m.from,
                        m.term,
                        self.leader
                    );
                    if matches!(m.body, MessageBody::PreVote { .. }) {
                        self.send(
                            m.from,
                            self.term,
                            MessageBody::PreVoteResponse { granted: false },
                        );
                    }
                    return false;
                }
                // A pre-vote does not change anyone's term; a granted pre-vote answer carries the term the
                // pre-candidate proposed, which it has not taken yet.
                MessageBody::PreVote { .. } => {}
                MessageBody::PreVoteResponse { granted: true } => {}
                MessageBody::Append { .. } | MessageBody::Heartbeat { .. } => {
                    self.become_follower(m.term, Some(m.from));
                }
                _ => self.become_follower(m.term, None),
            }
        } else if m.term < self.term {
            match m.body {
                // A stale leader (e.g. after a partition heals) would never learn the new term when
                // pre-vote or check-quorum stop us from campaigning against it: tell it.
                MessageBody::Append { .. } | MessageBody::Heartbeat { .. }
                    if self.cfg.check_quorum || self.cfg.pre_vote =>
                {
                    self.send(
                        m.from,
                        self.term,
                        MessageBody::AppendResponse {
                            index: 0,
                            reject: None,
                        },
                    );
                }
                MessageBody::PreVote { .. } => {
                    self.send(
                        m.from,
                        self.term,
                        MessageBody::PreVoteResponse { granted: false },
                    );
                }
                _ => debug!(
                    "[n{} t{}] ignoring stale {} from n{} at t{}",
                    self.id,
                    self.term,
                    m.body.name(),
                    m.from,
                    m.term
                ),
            }
            return false;
        }
        true
    }

    /// An append or heartbeat arrived from `from` in our current term: it is the leader (Election Safety
    /// guarantees at most one per term). Returns false if we believe we are the leader ourselves.
    fn become_follower_of(&mut self, from: NodeId) -> bool {
        if self.is_leader() {
            log::error!(
                "[n{} t{}] BUG or forged message: append from n{from} in our own term",
                self.id,
                self.term
            );
            return false;
        }
        if self.role() != Role::Follower || self.leader != Some(from) {
            self.become_follower(self.term, Some(from));
        }
        self.leader_contact = self.ticks;
        true
    }

    // ---- Elections (paper §5.2, thesis §9.6) ----

    fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        let base = self.cfg.election_ticks;
        // Paper §5.2: randomized timeouts make split votes rare.
        self.randomized_timeout = base + self.rng.below(base as u64) as u32;
    }

    fn campaign(&mut self) {
        if self.cfg.pre_vote {
            self.become_pre_candidate();
        } else {
            self.become_candidate(false);
        }
    }

    fn become_pre_candidate(&mut self) {
        info!(
            "[n{} t{}] election timeout: starting pre-vote for t{}",
            self.id,
            self.term,
            self.term + 1
        );
        self.set_leader(None);
        self.role = RoleState::PreCandidate {
            votes: BTreeMap::from([(self.id, true)]),
        };
        self.reset_election_timer();
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        for p in self.voter_peers() {
            self.send(
                p,
                self.term + 1,
                MessageBody::PreVote {
                    last_index,
                    last_term,
                },
            );
        }
        self.tally(true);
    }

    pub(super) fn become_candidate(&mut self, transfer: bool) {
        self.set_term(self.term + 1);
        self.set_vote(self.id);
        self.set_leader(None);
        info!("[n{} t{}] became candidate", self.id, self.term);
        self.role = RoleState::Candidate {
            votes: BTreeMap::from([(self.id, true)]),
        };
        self.reset_election_timer();
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        // The vote for ourselves is in the hard state of the next Ready, and the driver persists it before
        // sending these requests (persist-before-send rule).
        for p in self.voter_peers() {
            self.send(
                p,
                self.term,
                MessageBody::Vote {
                    last_index,
                    last_term,
                    transfer,
                },
            );
        }
        self.tally(false);
    }

    pub(super) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        let was = self.role();
        if term > self.term {
            self.set_term(term);
        }
        if let RoleState::Leader(ls) = std::mem::replace(&mut self.role, RoleState::Follower) {
            self.fail_leader_requests(*ls, leader);
        }
        self.set_leader(leader);
        self.reset_election_timer();
        if was != Role::Follower {
            info!(
                "[n{} t{}] became follower (was {:?}), leader {:?}",
                self.id, self.term, was, leader
            );
        }
    }

    /// Paper §5.2 and §5.4.1 (RequestVote receiver rules), thesis §9.6 for pre-votes.
    fn handle_vote_request(
        &mut self,
        from: NodeId,
        term: Term,
        pre: bool,
        last_index: Index,
        last_term: Term,
    ) {
        let up_to_date = self.log.is_up_to_date(last_index, last_term);
        let granted = if pre {
            // Would we vote for it in the term it proposes? Its term must be beyond ours (checked by the
            // caller for equal terms below), and its log at least as up-to-date as ours.
            term > self.term && up_to_date
        } else {
            // One vote per term (persisted before the answer is sent); none while we follow a known leader.
            let free = self.vote == from || (self.vote == 0 && self.leader.is_none());
            free && up_to_date
        };
        debug!(
            "[n{} t{}] {} {}vote for n{from} (its last {last_index}/t{last_term}, ours {}/t{})",
            self.id,
            self.term,
            if granted { "granting" } else { "rejecting" },
            if pre { "pre-" } else { "" },
            self.log.last_index(),
            self.log.last_term()
        );
        if pre {
            let reply_term = if granted { term } else { self.term };
            self.send(from, reply_term, MessageBody::PreVoteResponse { granted });
        } else {
            if granted {
                self.set_vote(from);
                // Paper §5.2: granting a vote resets the election timer.
                self.reset_election_timer();
            }
            self.send(from, self.term, MessageBody::VoteResponse { granted });
        }
    }

    fn handle_vote_response(&mut self, from: NodeId, pre: bool, granted: bool) {
        match &mut self.role {
            RoleState::PreCandidate { votes } if pre => {
                votes.entry(from).or_insert(granted);
            }
            RoleState::Candidate { votes } if !pre => {
                votes.entry(from).or_insert(granted);
            }
            _ => return,
        }
        self.tally(pre);
    }

    /// Counts votes: a quorum of grants wins the (pre-)election, a quorum of rejections loses it.
    fn tally(&mut self, pre: bool) {
        let votes = match &self.role {
            RoleState::PreCandidate { votes } | RoleState::Candidate { votes } => votes,
            _ => return,
        };
        let granted = votes
            .iter()
            .filter(|(id, g)| **g && self.membership.voters.contains(id))
            .count();
        let rejected = votes
            .iter()
            .filter(|(id, g)| !**g && self.membership.voters.contains(id))
            .count();
        if granted >= self.quorum() {
            if pre {
                self.become_candidate(false);
            } else {
                self.become_leader();
            }
        } else if rejected >= self.quorum() {
            info!(
                "[n{} t{}] lost the {}election",
                self.id,
                self.term,
                if pre { "pre-" } else { "" }
            );
            self.become_follower(self.term, None);
        }
    }

    // ---- Follower: AppendEntries receiver (paper §5.3, Figure 2) ----

    fn handle_append(
        &mut self,
        from: NodeId,
        prev_index: Index,
        prev_term: Term,
        entries: Vec<Entry>,
        commit: Index,
    ) {
        self.election_elapsed = 0;
        if entries
            .iter()
            .enumerate()
            .any(|(k, e)| e.index != prev_index + 1 + k as u64 || e.term > self.term)
        {
            log::warn!(
                "[n{} t{}] malformed append from n{from}: ignored",
                self.id,
                self.term
            );
            return;
        }
        if !self.log.matches(prev_index, prev_term) {
            // Receiver rule 2: reply false if the log has no entry at prev_index with prev_term. Include a
            // hint so the leader can skip a whole conflicting term per round trip (paper §5.3, end).
            let hint = if prev_index > self.log.last_index() {
                RejectHint {
                    conflict_term: 0,
                    conflict_index: self.log.last_index() + 1,
                }
            } else {
                RejectHint {
                    conflict_term: self.log.term(prev_index).unwrap_or(0),
                    conflict_index: self.log.first_index_of_term_at(prev_index),
                }
            };
            debug!(
                "[n{} t{}] rejecting append at {prev_index}/t{prev_term}: hint {:?}",
                self.id, self.term, hint
            );
            self.send(
                from,
                self.term,
                MessageBody::AppendResponse {
                    index: prev_index,
                    reject: Some(hint),
                },
            );
            return;
        }
        // Rules 3 and 4: truncate at the first conflict, append what is new.
        let config = entries
            .iter()
            .any(|e| matches!(e.kind, EntryKind::Config { .. }));
        let last_new = self.log.merge(prev_index, entries);
        if config || !self.membership_entry_held() {
            self.refresh_membership();
        }
        // Rule 5: commit = min(leaderCommit, index of last new entry).
        self.log.commit_to(commit.min(last_new));
        self.send(
            from,
            self.term,
            MessageBody::AppendResponse {
                index: last_new,
                reject: None,
            },
        );
    }

    // ---- Forwarded client requests ----

    fn step_client(&mut self, m: Message) {
        match m.body {
            MessageBody::Propose {
                request_id,
                commands,
            } => {
                let result = if self.is_leader() {
                    self.leader_append(commands).map_err(|e| match e {
                        RequestError::Busy => RemoteError::Busy,
                        RequestError::InsufficientStorage => RemoteError::InsufficientStorage,
                        _ => RemoteError::NotLeader {
                            leader: self.leader,
                        },
                    })
                } else {
                    Err(RemoteError::NotLeader {
                        leader: self.leader,
                    })
                };
                self.send(
                    m.from,
                    0,
                    MessageBody::ProposeResponse { request_id, result },
                );
            }
            MessageBody::ProposeResponse { request_id, result } => {
                if self.forwarded_proposals.remove(&request_id) {
                    self.proposed.push(Proposed {
                        request_id,
                        result: result.map_err(RequestError::from),
                    });
                }
            }
            MessageBody::ReadIndex { request_id } => {
                let res = if self.is_leader() {
                    self.leader_read(request_id, m.from)
                } else {
                    Err(RequestError::NotLeader {
                        leader: self.leader,
                    })
                };
                if let Err(e) = res {
                    let result = Err(match e {
                        RequestError::Busy => RemoteError::Busy,
                        _ => RemoteError::NotLeader {
                            leader: self.leader,
                        },
                    });
                    self.send(
                        m.from,
                        0,
                        MessageBody::ReadIndexResponse { request_id, result },
                    );
                }
            }
            MessageBody::ReadIndexResponse { request_id, result } => {
                if self.forwarded_reads.remove(&request_id) {
                    self.reads.push(ReadState {
                        request_id,
                        result: result.map_err(RequestError::from),
                    });
                }
            }
            _ => unreachable!("not a client message"),
        }
    }

    // ---- State changes with their invariants ----

    pub(super) fn set_term(&mut self, term: Term) {
        assert!(term >= self.term, "term regression: {term} < {}", self.term);
        if term > self.term {
            self.term = term;
            self.vote = 0;
        }
    }

    fn set_vote(&mut self, vote: NodeId) {
        assert!(
            self.vote == 0 || self.vote == vote,
            "vote changed within term {}: {} -> {vote}",
            self.term,
            self.vote
        );
        self.vote = vote;
    }

    /// Changes the known leader. Requests forwarded to a previous leader get `LeaderChanged`: their fate is
    /// unknown to us, and waiting for an answer that may never come helps nobody.
    pub(super) fn set_leader(&mut self, leader: Option<NodeId>) {
        if self.leader != leader {
            for request_id in std::mem::take(&mut self.forwarded_proposals) {
                self.proposed.push(Proposed {
                    request_id,
                    result: Err(RequestError::LeaderChanged),
                });
            }
            for request_id in std::mem::take(&mut self.forwarded_reads) {
                self.reads.push(ReadState {
                    request_id,
                    result: Err(RequestError::LeaderChanged),
                });
            }
        }
        self.leader = leader;
    }

    pub(super) fn send(&mut self, to: NodeId, term: Term, body: MessageBody) {
        self.msgs.push(Message {
            from: self.id,
            to,
            term,
            body,
        });
    }

    // ---- The driver contract ----

    /// Whether `ready` would hand out anything.
    pub fn has_ready(&self) -> bool {
        self.hard_state() != self.last_hard_state
            || !self.log.unstable_entries().is_empty()
            || !self.msgs.is_empty()
            || !self.proposed.is_empty()
            || !self.reads.is_empty()
            || self.pending_snapshot.is_some()
            || self.membership_changed
            || self.log.has_entries_to_apply()
            || self.leader_has_pending_flush()
    }

    /// Collects what the driver must persist, send, apply and answer. Call [`Raft::advance`] after doing it,
    /// before calling `ready` again.
    pub fn ready(&mut self) -> Ready {
        assert!(
            self.handed.is_none(),
            "ready() called twice without advance()"
        );
        self.maybe_step_down_removed();
        self.leader_flush();
        let hs = self.hard_state();
        let entries = self.log.unstable_entries().to_vec();
        let term_or_vote_changed =
            hs.term != self.last_hard_state.term || hs.vote != self.last_hard_state.vote;
        let hard_state = (hs != self.last_hard_state).then_some(hs);
        self.last_hard_state = hs;
        let snapshot = self.pending_snapshot.take();
        let membership = std::mem::take(&mut self.membership_changed)
            .then(|| (self.membership.clone(), self.membership_context.clone()));
        let committed = self.log.entries_to_apply(self.cfg.max_apply_bytes);
        let applied = committed.last().map(|e| e.index).unwrap_or(0);
        self.log.handed_to(applied);
        self.handed = Some(Handed {
            stable: entries.last().map(|e| (e.index, e.term)),
            applied,
        });
        Ready {
            hard_state,
            must_sync: term_or_vote_changed || !entries.is_empty() || snapshot.is_some(),
            snapshot,
            membership,
            entries,
            messages: std::mem::take(&mut self.msgs),
            committed,
            proposed: std::mem::take(&mut self.proposed),
            reads: std::mem::take(&mut self.reads),
        }
    }

    /// The driver persisted, sent and applied what the last `ready` handed out.
    pub fn advance(&mut self) {
        let handed = self.handed.take().expect("advance() without ready()");
        if let Some((index, term)) = handed.stable {
            self.log.stable_to(index, term);
            if self.is_leader() {
                // The leader counts itself towards a quorum only for entries it has made durable.
                self.maybe_commit();
            }
        }
        if handed.applied > 0 {
            assert!(
                handed.applied <= self.log.committed(),
                "applied {} > commit {}",
                handed.applied,
                self.log.committed()
            );
            self.log.applied_to(handed.applied);
        }
    }
}
