//! The Raft thread's side of cluster administration: membership changes, leadership transfer, the
//! cluster view, automatic promotion of caught-up learners, and graceful shutdown.
//!
//! Rules:
//! - Membership changes are taken on the leader only (the HTTP layer forwards them); a change's answer
//!   comes when its configuration entry is applied, like a write's. Asked to remove itself, a leader
//!   first hands leadership to the most caught-up voter and answers `busy` (nothing applied): the retry
//!   reaches the new leader, which removes it and answers. The new configuration's context is
//!   the address book restricted to its members (plus the new member's addresses).
//! - A learner added with `auto_promote` is promoted by the leader once its match index is within
//!   `--learner-max-lag` entries of the commit index and no other change is under way.
//! - Shutdown: a leader first hands leadership to the most caught-up voter and waits (at most two election
//!   timeouts) to stop being leader; then the loop stops, answering every waiting request.

use super::{ApiError, RaftLoop, Request, Waiter, WriteOk};
use crate::machine::StateMachine;
use crate::raft::{MembershipChange, NodeId, Role};
use crate::server::cluster::{encode_book, Addrs};
use crossbeam_channel::Sender;
use log::info;
use std::time::Instant;

/// How far behind the commit index a learner may be and still be promoted automatically (it must also
/// have acknowledged at least one entry).
pub(super) const LEARNER_MAX_LAG: u64 = 1000;

impl<S: StateMachine, R: Into<Request<S>>> RaftLoop<S, R> {
    /// Proposes a membership change (leader only) and records the new member's addresses in the address book;
    /// `reply` gets the outcome once the configuration entry is applied.
    pub(super) fn membership_request(
        &mut self,
        change: MembershipChange,
        addrs: Option<Addrs>,
        auto_promote: bool,
        reply: Sender<Result<WriteOk, ApiError>>,
    ) {
        if !self.raft.is_leader() {
            let e = self.request_error(crate::raft::RequestError::NotLeader {
                leader: self.raft.leader(),
            });
            let _ = reply.send(Err(e));
            return;
        }
        if change == MembershipChange::Remove(self.cfg.id) {
            // Removing the leader: hand leadership over first, so the removal is made (and answered) by a
            // leader that stays. The client's retry reaches the new leader.
            if let Some(target) = self.best_transfer_target() {
                let _ = self.raft.transfer_leadership(target);
                info!(
                    "[n{}] asked to remove myself: handing leadership to n{target} first",
                    self.cfg.id
                );
                let _ = reply.send(Err(ApiError::Busy));
                return;
            }
        }
        let mut book = self.book.clone();
        let mut members: Vec<NodeId> = self.raft.membership().members().collect();
        match (change.clone(), addrs) {
            (MembershipChange::AddLearner(id), Some(a)) => {
                book.insert(id, a);
                members.push(id);
                if auto_promote {
                    self.auto_promote.insert(id);
                }
            }
            (MembershipChange::AddLearner(_), None) => {
                let _ = reply.send(Err(ApiError::BadRequest(
                    "a new member needs its addresses".into(),
                )));
                return;
            }
            (MembershipChange::Remove(id), _) => members.retain(|&m| m != id),
            _ => {}
        }
        // Fill in HTTP addresses learned from handshakes, so every node can point clients at the leader.
        for (id, a) in book.iter_mut() {
            if a.http.is_none() {
                a.http = self.http_addr_of(*id).map(|h| h.to_string());
            }
        }
        book.retain(|id, _| members.contains(id));
        let id = self.request_id();
        self.park(
            id,
            Waiter::Write {
                reply: Box::new(move |r| {
                    let _ = reply.send(r.map(|c| WriteOk {
                        index: c.index,
                        term: c.term,
                        found: true,
                    }));
                }),
                retry: None,
                retried: false,
                attempt: None,
            },
        );
        info!("[n{}] membership change {change:?} requested", self.cfg.id);
        self.raft.propose_membership(id, change, encode_book(&book));
    }

    /// On the leader, each tick: promotes a learner marked for it once it has caught up.
    pub(super) fn promote_caught_up_learners(&mut self) {
        if !self.raft.is_leader() || !self.raft.membership_committed() {
            return;
        }
        let learners = self.raft.membership().learners.clone();
        self.auto_promote.retain(|id| learners.contains(id));
        let commit = self.raft.log().committed();
        let ready = self.raft.progress().into_iter().find(|(id, matched, ..)| {
            // `matched > 0`: a learner that never acknowledged an entry (unreachable, or refused by
            // the handshake: another cluster token) is not caught up, however short the log is.
            self.auto_promote.contains(id) && *matched > 0 && matched + LEARNER_MAX_LAG >= commit
        });
        if let Some((learner, ..)) = ready {
            self.auto_promote.remove(&learner);
            info!("[n{}] n{learner} has caught up: promoting it", self.cfg.id);
            let id = self.request_id();
            // Nobody waits on it: the outcome shows in the membership.
            self.raft.propose_membership(
                id,
                MembershipChange::Promote(learner),
                self.book_context(),
            );
        }
    }

    fn book_context(&self) -> Vec<u8> {
        let members: Vec<NodeId> = self.raft.membership().members().collect();
        let mut book = self.book.clone();
        book.retain(|id, _| members.contains(id));
        encode_book(&book)
    }

    /// The members with their addresses, roles and (on the leader) replication progress.
    pub(super) fn cluster_view(&self) -> serde_json::Value {
        let m = self.raft.membership();
        let progress: std::collections::BTreeMap<NodeId, (u64, String)> = self
            .raft
            .progress()
            .into_iter()
            .map(|(id, matched, _, state, _)| (id, (matched, state.to_string())))
            .collect();
        let members: Vec<serde_json::Value> = m
            .members()
            .map(|id| {
                let a = self.book.get(&id);
                let mut v = serde_json::json!({
                    "id": id,
                    "raft_addr": a.map(|a| a.raft.clone()),
                    "http_addr": self.http_addr_of(id).map(|h| h.to_string())
                        .or_else(|| a.and_then(|a| a.http.clone())),
                    "voter": m.voters.contains(&id),
                });
                if let Some((matched, state)) = progress.get(&id) {
                    v["match_index"] = (*matched).into();
                    v["replication"] = state.clone().into();
                } else if id == self.cfg.id {
                    v["match_index"] = self.raft.log().last_index().into();
                }
                v
            })
            .collect();
        serde_json::json!({
            "leader": self.raft.leader(),
            "term": self.raft.term(),
            "members": members,
            "change_in_progress": !self.raft.membership_committed(),
            "transferring_to": self.raft.transferring_to(),
        })
    }

    /// Starts a graceful shutdown (see the module docs).
    pub(super) fn begin_shutdown(&mut self) {
        if self.shutdown_at.is_some() {
            return;
        }
        let wait = self.cfg.tick * self.cfg.election_ticks * 2;
        self.shutdown_at = Some(Instant::now() + wait);
        if self.raft.is_leader() {
            if let Some(target) = self.best_transfer_target() {
                info!(
                    "[n{}] shutting down: handing leadership to n{target}",
                    self.cfg.id
                );
                let _ = self.raft.transfer_leadership(target);
            }
        }
    }

    /// The most caught-up other voter: where leadership goes when this leader leaves.
    fn best_transfer_target(&self) -> Option<NodeId> {
        self.raft
            .progress()
            .into_iter()
            .filter(|(id, ..)| self.raft.membership().voters.contains(id))
            .max_by_key(|(_, matched, ..)| *matched)
            .map(|(id, ..)| id)
    }

    /// Whether the loop should stop now: a shutdown was asked for, and this node no longer leads (or
    /// waited long enough).
    pub(super) fn shutdown_due(&self) -> bool {
        match self.shutdown_at {
            None => false,
            Some(deadline) => {
                self.raft.role() != Role::Leader
                    || Instant::now() >= deadline
                    || self.raft.membership().voters.len() <= 1
            }
        }
    }
}
