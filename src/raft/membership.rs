//! Cluster membership changes (thesis §4.1, single-server changes) and leadership transfer (thesis §3.10).
//!
//! Why single-server changes rather than joint consensus: one voter added or removed at a time keeps every
//! majority of the old configuration overlapping every majority of the new one, so no intermediate joint
//! configuration is needed; learners (non-voters) make adding a node safe for availability, because a node
//! only counts towards majorities once it has caught up.
//!
//! Rules kept here:
//! - A configuration entry takes effect on a node as soon as it is in its log, committed or not; if it is
//!   truncated away, the previous configuration in the log (or the snapshot's) is back in effect.
//! - A leader accepts a change only after an entry of its own term is committed (the fix to the
//!   single-server change bug, Ongaro 2015) and only when no earlier change is uncommitted: one at a time.
//! - Each change adds or removes at most one voter: a learner joins, a learner becomes a voter, or a member
//!   leaves. The last voter cannot be removed.
//! - Learners receive the log but never vote, never campaign and never count towards a quorum.
//! - A leader that removes itself keeps leading (without counting itself) until the change commits, then
//!   steps down.
//! - A node not among the voters never campaigns (so a removed node does not disrupt the cluster; pre-vote
//!   and followers' refusal to vote while they hear from a leader cover a node that missed its removal),
//!   except while the change that removed it is uncommitted (see `promotable`).
//! - Leadership transfer: the leader stops taking proposals, brings the target up to date, then sends it
//!   `TimeoutNow`; the target campaigns at once and voters do not refuse it for having heard from the
//!   current leader. From the moment `TimeoutNow` is sent the old leader serves no lease reads this term.
//!   A transfer not done within an election timeout is abandoned.

use super::message::*;
use super::node::{Raft, RequestError, RoleState};
use super::progress::Progress;
use log::info;

impl Raft {
    /// The membership in effect on this node (see the module docs).
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The driver's context stored with the membership in effect.
    pub fn membership_context(&self) -> &[u8] {
        &self.membership_context
    }

    /// The membership in effect at `index` (at least the snapshot's index), with its context: what a
    /// snapshot taken at `index` must record.
    pub fn membership_at_index(&self, index: Index) -> (Membership, Vec<u8>) {
        let (m, c, _) = self.membership_at(index);
        (m, c)
    }

    /// Whether the membership in effect is committed (no change under way).
    pub fn membership_committed(&self) -> bool {
        self.membership_index <= self.log.committed()
    }

    /// Whether this node may campaign: it is a voter, or the change that removed it is not committed yet
    /// and it was a voter before. Without the second case a leader that appended its own removal and then
    /// lost its followers could leave the cluster with no electable node: it has the newest log, so the
    /// others cannot win without it, and it would not campaign (found by the simulation, seed 4605). Votes
    /// are still counted in the candidate's latest configuration, so elections stay safe.
    pub(super) fn promotable(&self) -> bool {
        if self.membership.voters.contains(&self.id) {
            return true;
        }
        !self.membership_committed()
            && self.membership_index > 0
            && self
                .membership_at(self.membership_index - 1)
                .0
                .voters
                .contains(&self.id)
    }

    /// Whether the entry that set the membership is still in the log.
    pub(super) fn membership_entry_held(&self) -> bool {
        self.membership_index == 0
            || self.membership_index <= self.log.snapshot_index()
            || self
                .log
                .entry(self.membership_index)
                .is_some_and(|e| matches!(e.kind, EntryKind::Config { .. }))
    }

    /// The latest configuration at or below `index` (the log's, else the snapshot's), with the index of
    /// the entry that set it (0 for the snapshot's).
    pub(super) fn membership_at(&self, index: Index) -> (Membership, Vec<u8>, Index) {
        let mut i = index.min(self.log.last_index());
        while i > self.log.snapshot_index() {
            if let Some(Entry {
                kind:
                    EntryKind::Config {
                        membership,
                        context,
                    },
                ..
            }) = self.log.entry(i)
            {
                return (membership.clone(), context.clone(), i);
            }
            i -= 1;
        }
        let (m, c) = &self.snapshot_membership;
        (m.clone(), c.clone(), 0)
    }

    /// Recomputes the membership in effect from the log; on a change, tells the driver and, on a leader,
    /// starts or stops tracking members.
    pub(super) fn refresh_membership(&mut self) {
        let (m, context, index) = self.membership_at(self.log.last_index());
        self.membership_index = index;
        if m == self.membership && context == self.membership_context {
            return;
        }
        info!(
            "[n{} t{}] membership: voters {:?}, learners {:?} (entry {index})",
            self.id, self.term, m.voters, m.learners
        );
        self.membership = m;
        self.membership_context = context;
        self.membership_changed = true;
        let members: Vec<NodeId> = self.peers();
        let (next, now) = (self.log.last_index() + 1, self.ticks);
        if let RoleState::Leader(ls) = &mut self.role {
            ls.retain_progress(|id| members.contains(&id));
            for id in members {
                ls.progress_or_insert(id, || {
                    let mut pr = Progress::new(next);
                    pr.last_heard = now;
                    pr
                });
            }
            ls.append_needed = true;
        }
    }

    /// Proposes one membership change (leader only; see the module docs for what is refused). The outcome
    /// arrives in [`Ready::proposed`](super::Ready::proposed) under `request_id`, like a proposal's; the
    /// change is in effect once appended and done once applied.
    pub fn propose_membership(
        &mut self,
        request_id: u64,
        change: MembershipChange,
        context: Vec<u8>,
    ) {
        let result = self.membership_entry(change).and_then(|membership| {
            self.leader_append_kind(EntryKind::Config {
                membership,
                context,
            })
        });
        if result.is_ok() {
            self.refresh_membership();
        }
        self.proposed
            .push(super::node::Proposed { request_id, result });
    }

    fn membership_entry(&self, change: MembershipChange) -> Result<Membership, RequestError> {
        if !self.is_leader() {
            return Err(RequestError::NotLeader {
                leader: self.leader,
            });
        }
        let committed = self.log.committed();
        if self.log.term(committed) != Some(self.term) {
            // Until an entry of this term commits, an uncommitted change of an earlier leader may still
            // be in flight (Ongaro 2015).
            return Err(RequestError::Busy);
        }
        if self.membership_index > committed {
            return Err(RequestError::Refused(
                "a membership change is already in progress".into(),
            ));
        }
        let mut m = self.membership.clone();
        match change {
            MembershipChange::AddLearner(id) => {
                if id == 0 || m.contains(id) {
                    return Err(RequestError::Refused(format!(
                        "node {id} is already a member"
                    )));
                }
                m.learners.insert(id);
            }
            MembershipChange::Promote(id) => {
                if !m.learners.remove(&id) {
                    return Err(RequestError::Refused(format!("node {id} is not a learner")));
                }
                m.voters.insert(id);
            }
            MembershipChange::Remove(id) => {
                if m.voters.contains(&id) && m.voters.len() == 1 {
                    return Err(RequestError::Refused(format!(
                        "node {id} is the last voter"
                    )));
                }
                if !m.voters.remove(&id) && !m.learners.remove(&id) {
                    return Err(RequestError::Refused(format!("node {id} is not a member")));
                }
            }
        }
        Ok(m)
    }

    /// After a commit: a leader whose removal committed steps down.
    pub(super) fn maybe_step_down_removed(&mut self) {
        if self.is_leader()
            && !self.membership.voters.contains(&self.id)
            && self.membership_index <= self.log.committed()
        {
            info!(
                "[n{} t{}] my removal is committed: stepping down",
                self.id, self.term
            );
            self.become_follower(self.term, None);
        }
    }

    /// Thesis §3.10: hands leadership to voter `target`. Proposals are refused until the transfer ends
    /// (it succeeds, or an election timeout passes).
    pub fn transfer_leadership(&mut self, target: NodeId) -> Result<(), RequestError> {
        if !self.is_leader() {
            return Err(RequestError::NotLeader {
                leader: self.leader,
            });
        }
        if target == self.id {
            return Ok(());
        }
        if !self.membership.voters.contains(&target) {
            return Err(RequestError::Refused(format!(
                "node {target} is not a voter"
            )));
        }
        info!(
            "[n{} t{}] transferring leadership to n{target}",
            self.id, self.term
        );
        if let RoleState::Leader(ls) = &mut self.role {
            ls.transfer = Some((target, 0));
        }
        self.maybe_send_timeout_now(target);
        Ok(())
    }

    /// The transfer under way, if any.
    pub fn transferring_to(&self) -> Option<NodeId> {
        match &self.role {
            RoleState::Leader(ls) => ls.transfer.map(|(t, _)| t),
            _ => None,
        }
    }

    /// Sends `TimeoutNow` if the transfer target has every entry; otherwise sends it what it lacks.
    pub(super) fn maybe_send_timeout_now(&mut self, target: NodeId) {
        let last = self.log.last_index();
        let RoleState::Leader(ls) = &mut self.role else {
            return;
        };
        if ls.transfer.map(|(t, _)| t) != Some(target) {
            return;
        }
        let caught_up = ls.progress_mut(target).is_some_and(|p| p.matched == last);
        if caught_up {
            ls.lease_off = true;
            ls.transfer = None;
            self.send(target, self.term, MessageBody::TimeoutNow);
        } else {
            self.leader_send_append(target);
        }
    }

    /// Thesis §3.10: the leader asks us to campaign now.
    pub(super) fn handle_timeout_now(&mut self, from: NodeId) {
        if self.leader != Some(from) || !self.promotable() {
            return;
        }
        info!(
            "[n{} t{}] n{from} hands leadership over: campaigning",
            self.id, self.term
        );
        self.become_candidate(true);
    }
}
