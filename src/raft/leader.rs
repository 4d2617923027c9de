//! Leader-only machinery: per-follower replication, the commit rule, heartbeats, check-quorum and the read
//! index. All of it lives in [`LeaderState`], which exists only while the node leads; stepping down drops it
//! and fails every request waiting on it (toydb's "each role owns its state").

use super::message::*;
use super::node::{Raft, ReadState, RequestError, RoleState};
use super::progress::{Progress, ProgressState};
use log::{debug, info};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// A read waiting for its read-index round (thesis §6.4).
#[derive(Debug, Clone)]
struct PendingRead {
    request_id: u64,
    /// Who asked: this node, or a follower that forwarded it.
    origin: NodeId,
    /// The commit index when the read arrived (after the leader's no-op committed).
    index: Index,
    /// The heartbeat round that confirms it: it must be acknowledged by a quorum.
    seq: u64,
}

pub(super) struct LeaderState {
    progress: BTreeMap<NodeId, Progress>,
    heartbeat_elapsed: u32,
    /// The last heartbeat round started (every heartbeat carries it; every broadcast starts a new one).
    read_seq: u64,
    /// When rounds started, for leases: `(first round of a tick, that tick)`, oldest first, only as far back
    /// as a lease can reach. A round not listed started no earlier than the listed round before it.
    rounds: VecDeque<(u64, u64)>,
    /// Reads started since the last round: the next flush starts one.
    round_needed: bool,
    /// Reads that arrived before an entry of this term committed (thesis §6.4 step 1): the commit index is
    /// not yet known to be up to date.
    reads_before_noop: Vec<(u64, NodeId)>,
    pending_reads: VecDeque<PendingRead>,
    /// New entries or a new commit index to broadcast at the next flush.
    pub(super) append_needed: bool,
    commit_changed: bool,
    /// Thesis §3.10: a transfer under way to this voter, and for how many ticks (aborted after an
    /// election timeout). Proposals are refused meanwhile.
    pub(super) transfer: Option<(NodeId, u32)>,
    /// A `TimeoutNow` went out this term: another leader may be elected at any moment, so no more leases.
    pub(super) lease_off: bool,
}

impl Raft {
    /// Paper §5.2: a candidate with a quorum of votes becomes leader; thesis §6.4 and paper §8: it appends a
    /// no-op entry of its term so that its commit index becomes current.
    pub(super) fn become_leader(&mut self) {
        info!(
            "[n{} t{}] became leader at last index {}",
            self.id,
            self.term,
            self.log.last_index()
        );
        let next = self.log.last_index() + 1;
        let progress = self
            .peers()
            .into_iter()
            .map(|p| {
                let mut pr = Progress::new(next);
                pr.last_heard = self.ticks;
                (p, pr)
            })
            .collect();
        self.role = RoleState::Leader(Box::new(LeaderState {
            progress,
            heartbeat_elapsed: 0,
            read_seq: 0,
            rounds: VecDeque::new(),
            round_needed: false,
            reads_before_noop: Vec::new(),
            pending_reads: VecDeque::new(),
            append_needed: false,
            commit_changed: false,
            transfer: None,
            lease_off: false,
        }));
        self.set_leader(Some(self.id));
        self.election_elapsed = 0;
        let entry = Entry {
            index: next,
            term: self.term,
            kind: EntryKind::Noop,
        };
        self.log.append(vec![entry]);
        self.leader_state().append_needed = true;
        // A single-voter cluster commits as soon as the no-op is durable (see `advance`).
    }
}

impl LeaderState {
    pub(super) fn progress_mut(&mut self, peer: NodeId) -> Option<&mut Progress> {
        self.progress.get_mut(&peer)
    }

    /// The highest heartbeat round a quorum of `voters` acknowledged (`me` counts with its own round).
    fn round_acked_by_quorum(&self, voters: &BTreeSet<NodeId>, me: NodeId, quorum: usize) -> u64 {
        let mut acked: Vec<u64> = voters
            .iter()
            .map(|v| {
                if *v == me {
                    self.read_seq
                } else {
                    self.progress.get(v).map(|p| p.read_seq).unwrap_or(0)
                }
            })
            .collect();
        acked.sort_unstable_by(|a, b| b.cmp(a));
        acked[quorum - 1]
    }

    pub(super) fn retain_progress(&mut self, keep: impl Fn(NodeId) -> bool) {
        self.progress.retain(|&id, _| keep(id));
    }

    pub(super) fn progress_or_insert(&mut self, peer: NodeId, new: impl FnOnce() -> Progress) {
        self.progress.entry(peer).or_insert_with(new);
    }

    /// The indexes of the snapshots being sent to followers.
    pub(super) fn snapshots_in_flight(&self) -> impl Iterator<Item = Index> + '_ {
        self.progress.values().filter_map(|p| match p.state {
            ProgressState::Snapshot(at) => Some(at),
            _ => None,
        })
    }
}

impl Raft {
    fn leader_state(&mut self) -> &mut LeaderState {
        match &mut self.role {
            RoleState::Leader(ls) => ls,
            _ => unreachable!("leader_state() on a non-leader"),
        }
    }

    /// Fails every request that waited on this leadership (called when stepping down).
    pub(super) fn fail_leader_requests(&mut self, ls: LeaderState, new_leader: Option<NodeId>) {
        let waiting = ls.reads_before_noop.into_iter().chain(
            ls.pending_reads
                .into_iter()
                .map(|r| (r.request_id, r.origin)),
        );
        for (request_id, origin) in waiting {
            if origin == self.id {
                self.reads.push(ReadState {
                    request_id,
                    result: Err(RequestError::LeaderChanged),
                });
            } else {
                let result = Err(RemoteError::NotLeader { leader: new_leader });
                self.send(
                    origin,
                    0,
                    MessageBody::ReadIndexResponse { request_id, result },
                );
            }
        }
    }

    /// Appends client commands to the leader's log (paper §5.3). They are broadcast at the next flush, so
    /// all proposals of one driver turn share messages and one fsync.
    pub(super) fn leader_append(
        &mut self,
        commands: Vec<Vec<u8>>,
    ) -> Result<(Index, Term), RequestError> {
        if self.transferring_to().is_some() {
            return Err(RequestError::Busy); // thesis §3.10: no new entries while handing over
        }
        if self.writes_paused() {
            return Err(RequestError::InsufficientStorage);
        }
        let first = self.log.last_index() + 1;
        let term = self.term;
        let entries = commands
            .into_iter()
            .enumerate()
            .map(|(k, data)| Entry {
                index: first + k as u64,
                term,
                kind: EntryKind::Command(data),
            })
            .collect();
        self.log.append(entries);
        self.leader_state().append_needed = true;
        Ok((first, term))
    }

    /// Appends one entry of the given kind (a configuration change) to the leader's log.
    pub(super) fn leader_append_kind(
        &mut self,
        kind: EntryKind,
    ) -> Result<(Index, Term), RequestError> {
        if self.transferring_to().is_some() {
            return Err(RequestError::Busy);
        }
        let index = self.log.last_index() + 1;
        let term = self.term;
        self.log.append(vec![Entry { index, term, kind }]);
        self.leader_state().append_needed = true;
        Ok((index, term))
    }

    /// Sends a follower what it lacks, if its progress allows.
    pub(super) fn leader_send_append(&mut self, to: NodeId) {
        self.send_append(to, false);
    }

    /// Registers a read for the next read-index round (thesis §6.4).
    pub(super) fn leader_read(
        &mut self,
        request_id: u64,
        origin: NodeId,
    ) -> Result<(), RequestError> {
        let max = self.cfg.max_pending_reads;
        let committed = self.log.committed();
        let current = self.log.term(committed) == Some(self.term);
        let ls = self.leader_state();
        if ls.pending_reads.len() + ls.reads_before_noop.len() >= max {
            return Err(RequestError::Busy);
        }
        if !current {
            ls.reads_before_noop.push((request_id, origin));
            return Ok(());
        }
        let seq = ls.read_seq + 1;
        ls.pending_reads.push_back(PendingRead {
            request_id,
            origin,
            index: committed,
            seq,
        });
        ls.round_needed = true;
        Ok(())
    }

    pub(super) fn leader_has_pending_flush(&self) -> bool {
        match &self.role {
            RoleState::Leader(ls) => ls.round_needed || ls.append_needed || ls.commit_changed,
            _ => false,
        }
    }

    /// Starts the read round and sends the appends accumulated during this driver turn.
    pub(super) fn leader_flush(&mut self) {
        if !self.is_leader() {
            return;
        }
        let ls = self.leader_state();
        if ls.round_needed {
            ls.round_needed = false;
            self.bcast_heartbeat();
            self.confirm_reads();
        }
        let ls = self.leader_state();
        let (append, commit) = (ls.append_needed, ls.commit_changed);
        ls.append_needed = false;
        ls.commit_changed = false;
        if append || commit {
            let committed = self.log.committed();
            for p in self.peers() {
                // An empty append only to carry the commit index goes to peers that have not already been
                // sent it (an answer handled this turn may have told them).
                let stale = commit
                    && self
                        .leader_state()
                        .progress
                        .get(&p)
                        .is_some_and(|pr| pr.sent_commit < committed);
                self.send_append(p, stale);
            }
        }
    }

    pub(super) fn tick_leader(&mut self) {
        self.election_elapsed += 1;
        let limit = self.cfg.election_ticks;
        if let RoleState::Leader(ls) = &mut self.role {
            if let Some((target, elapsed)) = &mut ls.transfer {
                *elapsed += 1;
                if *elapsed >= limit {
                    info!(
                        "[n{} t{}] transfer to n{target} abandoned after an election timeout",
                        self.id, self.term
                    );
                    ls.transfer = None;
                }
            }
        }
        if self.election_elapsed >= self.cfg.election_ticks {
            self.election_elapsed = 0;
            if self.cfg.check_quorum && !self.check_quorum_active() {
                // Thesis §6.2: without a quorum for an election timeout we may have been deposed; step down
                // so clients go elsewhere instead of waiting on us.
                info!(
                    "[n{} t{}] check-quorum failed: stepping down",
                    self.id, self.term
                );
                self.become_follower(self.term, None);
                return;
            }
        }
        let hb = self.cfg.heartbeat_ticks;
        let ls = self.leader_state();
        ls.heartbeat_elapsed += 1;
        if ls.heartbeat_elapsed >= hb {
            ls.heartbeat_elapsed = 0;
            self.bcast_heartbeat();
            // A single voter confirms its own rounds.
            self.confirm_reads();
        }
    }

    /// Whether a quorum (counting ourselves) was heard from since the last check; resets the marks.
    fn check_quorum_active(&mut self) -> bool {
        let quorum = self.quorum();
        let voters = self.membership.voters.clone();
        let me = usize::from(voters.contains(&self.id));
        let ls = self.leader_state();
        let active = me
            + ls.progress
                .iter()
                .filter(|(id, p)| p.recent_active && voters.contains(id))
                .count();
        for p in ls.progress.values_mut() {
            p.recent_active = false;
        }
        active >= quorum
    }

    /// Starts a heartbeat round. Heartbeats carry `min(match, commit)` so a follower never commits an entry
    /// it has not been shown to match, and the round's number, so answers double as read-index
    /// confirmations and lease renewals.
    fn bcast_heartbeat(&mut self) {
        let committed = self.log.committed();
        let term = self.term;
        let (now, lease) = (self.ticks, u64::from(self.cfg.lease_ticks));
        let ls = self.leader_state();
        ls.read_seq += 1;
        let seq = ls.read_seq;
        if ls.rounds.back().is_none_or(|&(_, t)| t < now) {
            ls.rounds.push_back((seq, now));
        }
        while ls.rounds.len() > 1 && ls.rounds[1].1 + lease < now {
            ls.rounds.pop_front();
        }
        let beats: Vec<_> = ls
            .progress
            .iter_mut()
            .map(|(&p, pr)| {
                let commit = pr.matched.min(committed);
                pr.sent_commit = pr.sent_commit.max(commit);
                (p, commit)
            })
            .collect();
        for (p, commit) in beats {
            self.send(
                p,
                term,
                MessageBody::Heartbeat {
                    commit,
                    read_seq: seq,
                },
            );
        }
        if let RoleState::Leader(ls) = &mut self.role {
            ls.heartbeat_elapsed = 0;
        }
    }

    /// Sends the follower the entries it lacks, if its progress state allows. With `even_empty`, sends an
    /// empty append in the replicate state to carry a new commit index.
    fn send_append(&mut self, to: NodeId, even_empty: bool) {
        let (max_n, max_b, max_inflight) = (
            self.cfg.max_entries_per_msg,
            self.cfg.max_bytes_per_msg,
            self.cfg.max_inflight,
        );
        let snapshot = self.snapshot;
        let (membership, context) = self.snapshot_membership.clone();
        let RoleState::Leader(ls) = &mut self.role else {
            return;
        };
        let Some(pr) = ls.progress.get_mut(&to) else {
            return;
        };
        if !pr.can_send(max_inflight) {
            return;
        }
        let prev_index = pr.next - 1;
        let (Some(prev_term), Some(entries)) = (
            self.log.term(prev_index),
            self.log.slice(pr.next, max_n, max_b),
        ) else {
            // Paper §7: the entries it needs were compacted away; it must take our snapshot, which covers
            // at least everything compacted.
            info!(
                "[n{} t{}] n{to} needs entries from {}, compacted: sending the snapshot at {}/t{}",
                self.id, self.term, pr.next, snapshot.index, snapshot.term
            );
            pr.become_snapshot(snapshot.index);
            self.send(
                to,
                self.term,
                MessageBody::InstallSnapshot {
                    index: snapshot.index,
                    last_term: snapshot.term,
                    membership,
                    context,
                },
            );
            return;
        };
        if entries.is_empty() && pr.state == ProgressState::Replicate && !even_empty {
            return;
        }
        let last = prev_index + entries.len() as u64;
        pr.sent(last);
        let commit = self.log.committed();
        pr.sent_commit = pr.sent_commit.max(commit);
        self.send(
            to,
            self.term,
            MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            },
        );
    }

    pub(super) fn handle_append_response(
        &mut self,
        from: NodeId,
        index: Index,
        reject: Option<RejectHint>,
    ) {
        if !self.is_leader() {
            return;
        }
        let hint_next = reject.map(|h| {
            // Paper §5.3 (end): if we hold entries of the conflicting term, resume after our last one;
            // otherwise skip the follower's whole term.
            if h.conflict_term > 0 {
                match self.log.last_index_of_term(h.conflict_term) {
                    Some(i) => i + 1,
                    None => h.conflict_index,
                }
            } else {
                h.conflict_index
            }
        });
        let (id, term, now) = (self.id, self.term, self.ticks);
        let ls = self.leader_state();
        let Some(pr) = ls.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        pr.last_heard = now;
        match hint_next {
            None => {
                if pr.on_success(index) {
                    self.maybe_commit();
                }
                if self.transferring_to() == Some(from) {
                    self.maybe_send_timeout_now(from);
                }
                // Tell it the commit index if it has not heard the latest (it may have been waiting on a
                // probe when the commit advanced), so followers apply without waiting for a heartbeat.
                let stale_commit = match &self.role {
                    RoleState::Leader(ls) => ls
                        .progress
                        .get(&from)
                        .is_some_and(|p| p.sent_commit < self.log.committed()),
                    _ => false,
                };
                self.send_append(from, stale_commit);
            }
            Some(next) => {
                if pr.on_reject(index, next) {
                    debug!(
                        "[n{} t{}] n{from} rejected {index}: retrying from {}",
                        id, term, pr.next
                    );
                    self.send_append(from, false);
                }
            }
        }
    }

    pub(super) fn handle_heartbeat_response(&mut self, from: NodeId, read_seq: u64) {
        if !self.is_leader() {
            return;
        }
        let last = self.log.last_index();
        let now = self.ticks;
        let ls = self.leader_state();
        let Some(pr) = ls.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        pr.last_heard = now;
        pr.read_seq = pr.read_seq.max(read_seq);
        let mut tail_check = None;
        if pr.matched < last {
            match pr.state {
                // The outstanding probe may be lost: probe again.
                ProgressState::Probe => pr.probe_sent = false,
                // Appends may have been lost: an empty append at our `next - 1` either succeeds or is
                // rejected and sends the follower back to probing.
                ProgressState::Replicate => tail_check = Some(pr.next - 1),
                ProgressState::Snapshot(_) => {}
            }
        }
        self.confirm_reads();
        match tail_check {
            Some(prev_index) if self.log.term(prev_index).is_none() => {
                // The entries it may have lost were compacted meanwhile: probe, which sends the snapshot.
                if let Some(pr) = self.leader_state().progress.get_mut(&from) {
                    pr.become_probe();
                }
                self.send_append(from, false);
            }
            Some(prev_index) => {
                if let Some(prev_term) = self.log.term(prev_index) {
                    let commit = self.log.committed();
                    self.send(
                        from,
                        self.term,
                        MessageBody::Append {
                            prev_index,
                            prev_term,
                            entries: Vec::new(),
                            commit,
                        },
                    );
                }
            }
            None => self.send_append(from, false),
        }
    }

    /// Paper §5.3/§5.4.2: the commit index is the highest index stored on a quorum, but only if that entry is
    /// from the current term (Figure 8: counting replicas of older-term entries is unsafe).
    pub(super) fn maybe_commit(&mut self) {
        let quorum = self.quorum();
        let stable = self.log.stable();
        let term = self.term;
        let voters = self.membership.voters.clone();
        let id = self.id;
        let ls = self.leader_state();
        let mut matched: Vec<Index> = voters
            .iter()
            .map(|v| {
                if *v == id {
                    stable
                } else {
                    ls.progress.get(v).map(|p| p.matched).unwrap_or(0)
                }
            })
            .collect();
        matched.sort_unstable_by(|a, b| b.cmp(a));
        let candidate = matched[quorum - 1];
        if candidate <= self.log.committed() || self.log.term(candidate) != Some(term) {
            return;
        }
        self.log.commit_to(candidate);
        debug!("[n{} t{}] committed to {candidate}", self.id, self.term);
        let committed = self.log.committed();
        let ls = self.leader_state();
        ls.commit_changed = true;
        // Thesis §6.4 step 1: reads that waited for this term's first commit can now take a read index.
        if !ls.reads_before_noop.is_empty() {
            let seq = ls.read_seq + 1;
            for (request_id, origin) in std::mem::take(&mut ls.reads_before_noop) {
                ls.pending_reads.push_back(PendingRead {
                    request_id,
                    origin,
                    index: committed,
                    seq,
                });
            }
            ls.round_needed = true;
        }
    }

    /// Thesis §6.4 steps 2-3: a read is confirmed once a quorum (counting ourselves) acknowledged a heartbeat
    /// round started after it arrived; that proves we were still leader when it arrived.
    fn confirm_reads(&mut self) {
        let quorum = self.quorum();
        let voters = self.membership.voters.clone();
        let id = self.id;
        let ls = self.leader_state();
        let confirmed = ls.round_acked_by_quorum(&voters, id, quorum);
        let mut done = Vec::new();
        while ls.pending_reads.front().is_some_and(|r| r.seq <= confirmed) {
            done.extend(ls.pending_reads.pop_front());
        }
        for r in done {
            if r.origin == self.id {
                self.reads.push(ReadState {
                    request_id: r.request_id,
                    result: Ok(r.index),
                });
            } else {
                let body = MessageBody::ReadIndexResponse {
                    request_id: r.request_id,
                    result: Ok(r.index),
                };
                self.send(r.origin, 0, body);
            }
        }
    }

    /// Thesis §6.4.1, leases: returns the index a read may be answered at (once applied) without a heartbeat
    /// round, or `None` when only a read-index round can serve it (see [`Raft::read_index`]).
    ///
    /// Followers refuse votes for an election timeout after hearing from their leader (thesis §4.2.3, with
    /// check-quorum; also for an election timeout after they boot). So when a quorum acknowledged a round
    /// this leader started at tick T, no other leader can be elected before that quorum's clocks pass
    /// T + `election_ticks`; the lease ends earlier, at T + `lease_ticks`. Assumes every node's ticks run at
    /// rates within the margin between the two (clock drift, not clock offset, matters), and that the driver
    /// ticks according to real time, catching up after a pause before asking for a lease.
    ///
    /// Also requires an entry of this term to be committed (thesis §6.4 step 1), so the commit index is
    /// current.
    pub fn lease_read(&self) -> Option<Index> {
        let RoleState::Leader(ls) = &self.role else {
            return None;
        };
        if !self.cfg.check_quorum || self.cfg.lease_ticks == 0 || ls.lease_off {
            return None;
        }
        let committed = self.log.committed();
        if self.log.term(committed) != Some(self.term) {
            return None;
        }
        let seq = ls.round_acked_by_quorum(&self.membership.voters, self.id, self.quorum());
        // The round's start, or an earlier tick (conservative) when it was not the first of its tick.
        let start = ls
            .rounds
            .iter()
            .rev()
            .find(|&&(s, _)| s <= seq)
            .map(|&(_, t)| t)?;
        (start + u64::from(self.cfg.lease_ticks) > self.ticks).then_some(committed)
    }

    /// Per-follower replication state, for status pages: (id, match, next, state name, ticks since heard).
    pub fn progress(&self) -> Vec<(NodeId, Index, Index, &'static str, u64)> {
        match &self.role {
            RoleState::Leader(ls) => ls
                .progress
                .iter()
                .map(|(&id, p)| {
                    let state = match p.state {
                        ProgressState::Probe => "probe",
                        ProgressState::Replicate => "replicate",
                        ProgressState::Snapshot(_) => "snapshot",
                    };
                    (id, p.matched, p.next, state, self.ticks - p.last_heard)
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}
