//! Snapshots and log compaction (paper §7, thesis chapter 5), as the core sees them.
//!
//! The core never holds snapshot data. The driver takes a snapshot of its state machine at an applied index,
//! makes it durable, and calls [`Raft::compact`]: the core then forgets the entries the snapshot covers
//! (keeping a tail for followers that are a little behind) and remembers the snapshot's position. A
//! follower that needs an entry the leader no longer holds gets a [`MessageBody::InstallSnapshot`] naming
//! that position; the driver streams the snapshot's bytes beside the message and steps the message into the
//! follower's core once they arrived whole. The leader's driver reports the transfer's end with
//! [`Raft::report_snapshot`].
//!
//! Rules kept here:
//! - Only applied entries are compacted, and only up to a snapshot the driver made durable. A leader never
//!   compacts past a snapshot it is still sending: after installing it, the follower continues from the
//!   log instead of needing yet another snapshot (the livelock of Consul #9609).
//! - A follower installs a snapshot only if it lies beyond its commit index and its log does not already
//!   hold the snapshot's last entry (Log Matching then says the log is the leader's up to there, and its
//!   suffix is kept, paper §7). Otherwise it answers with what it already matches.
//! - Installing discards the whole log, sets commit and applied to the snapshot's index, and is handed to
//!   the driver in `Ready::snapshot` before anything else of that `Ready` (the answer to the leader goes
//!   out after it, like every answer).
//! - A leader has at most one snapshot in flight per follower (progress state `Snapshot`); the follower's
//!   answer, or the driver's report, puts it back to probing. A failed transfer is retried by the next probe,
//!   which finds the entries still compacted.

use super::message::*;
use super::node::{Raft, RoleState};
use super::progress::ProgressState;
use log::{debug, info};

impl Raft {
    /// The newest snapshot the driver holds, as last told by [`Raft::compact`] (or recovered at start).
    pub fn snapshot(&self) -> SnapshotMeta {
        self.snapshot
    }

    /// The membership at the newest snapshot's index, with its context (what a snapshot file must record
    /// for a restart, and what `InstallSnapshot` carries).
    pub fn snapshot_membership(&self) -> (&Membership, &[u8]) {
        (&self.snapshot_membership.0, &self.snapshot_membership.1)
    }

    /// The driver made a snapshot of the state machine at `index` durable: remember it as the one to send,
    /// and drop the entries up to `index - keep` (the `keep` entries before the snapshot stay so a follower
    /// slightly behind catches up from the log rather than by snapshot). `index` must be applied.
    pub fn compact(&mut self, index: Index, keep: u64) -> Result<(), String> {
        if index <= self.snapshot.index {
            return Ok(()); // an older or the same snapshot: nothing new
        }
        if index > self.log.applied() {
            return Err(format!(
                "snapshot at {index} beyond the applied index {}",
                self.log.applied()
            ));
        }
        let term = self
            .log
            .term(index)
            .ok_or_else(|| format!("snapshot at {index}: entry not in the log"))?;
        self.snapshot = SnapshotMeta { index, term };
        let (m, context, _) = self.membership_at(index);
        self.snapshot_membership = (m, context);
        let mut through = index.saturating_sub(keep);
        if let RoleState::Leader(ls) = &self.role {
            // A follower receiving an older snapshot will need the entries after it: keep them, or it
            // could fall behind again before it finishes and never catch up (Consul #9609).
            if let Some(at) = ls.snapshots_in_flight().min() {
                through = through.min(at);
            }
        }
        if through > self.log.snapshot_index() {
            self.log.compact_to(through);
            debug!(
                "[n{} t{}] compacted the log through {through} (snapshot at {index})",
                self.id, self.term
            );
        }
        Ok(())
    }

    /// The leader's driver finished streaming a snapshot to `peer`: `ok` if every byte was sent. Either way
    /// the follower goes back to probing; after a failure the probe finds the entries compacted and a new
    /// snapshot is sent.
    pub fn report_snapshot(&mut self, peer: NodeId, ok: bool) {
        let (id, term) = (self.id, self.term);
        let RoleState::Leader(ls) = &mut self.role else {
            return;
        };
        let Some(pr) = ls.progress_mut(peer) else {
            return;
        };
        if let ProgressState::Snapshot(at) = pr.state {
            pr.become_probe();
            if ok {
                // Probe right after the snapshot: if the follower installed it, that matches at once.
                pr.next = pr.next.max(at + 1);
            }
            debug!("[n{id} t{term}] snapshot at {at} to n{peer}: sent={ok}");
        }
    }

    /// Paper §7, InstallSnapshot receiver rules (the data already arrived whole through the driver).
    pub(super) fn handle_install_snapshot(
        &mut self,
        from: NodeId,
        meta: SnapshotMeta,
        membership: (Membership, Vec<u8>),
    ) {
        let (index, last_term) = (meta.index, meta.term);
        let committed = self.log.committed();
        if index <= committed {
            // Nothing to install: everything committed matches the leader's log (Leader Completeness).
            self.send_append_ok(from, committed);
            return;
        }
        if self.log.matches(index, last_term) {
            // Our log holds the snapshot's last entry, so it is the leader's up to there: keep the suffix.
            self.log.commit_to(index);
            self.send_append_ok(from, index);
            return;
        }
        info!(
            "[n{} t{}] installing the snapshot at {index}/t{last_term} from n{from} (log had {}..={}, commit {committed})",
            self.id,
            self.term,
            self.log.first_index(),
            self.log.last_index()
        );
        self.log.restore(index, last_term);
        self.snapshot = meta;
        self.snapshot_membership = membership;
        self.refresh_membership();
        self.pending_snapshot = Some(meta);
        self.send_append_ok(from, index);
    }

    fn send_append_ok(&mut self, to: NodeId, index: Index) {
        self.send(
            to,
            self.term,
            MessageBody::AppendResponse {
                index,
                reject: None,
            },
        );
    }
}
