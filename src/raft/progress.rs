//! The leader's view of each follower's log (paper Figure 2 `nextIndex`/`matchIndex`, plus flow control).
//!
//! A follower's progress is in one of three states:
//! - **Probe**: we do not know where its log matches ours. Send one append at a time and wait for the answer
//!   (or a heartbeat answer) before sending the next; rejections walk `next` back using the conflict hint.
//! - **Replicate**: the follower accepted our last probe. Stream appends optimistically, advancing `next` as
//!   soon as a message is sent, with at most `max_inflight` messages unacknowledged.
//! - **Snapshot**: the entries it needs were compacted away; it must receive a snapshot first.
//!
//! Rules: `match < next`; `match` never decreases while the leader leads; stale or duplicated answers are
//! recognised by their index and ignored.

use super::message::Index;
use std::collections::VecDeque;

/// The replication state of one follower, as the leader sees it (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgressState {
    /// Where the follower's log matches is unknown: one append at a time until one is accepted.
    Probe,
    /// The follower accepted an append: stream appends, at most `max_inflight` unacknowledged.
    Replicate,
    /// Waiting for the follower to install the snapshot at this index.
    Snapshot(Index),
}

/// The leader's replication bookkeeping for one follower.
#[derive(Debug, Clone)]
pub struct Progress {
    /// Highest index known to match the leader's log.
    pub matched: Index,
    /// Next index to send.
    pub next: Index,
    /// Which of the three replication states the follower is in.
    pub state: ProgressState,
    /// In Probe: a probe is outstanding, wait before sending another.
    pub probe_sent: bool,
    /// In Replicate: last index of each unacknowledged append, oldest first.
    pub inflight: VecDeque<Index>,
    /// Heard from since the last check-quorum round.
    pub recent_active: bool,
    /// Highest read-index round this follower has acknowledged.
    pub read_seq: u64,
    /// The highest commit index sent to this follower, so a new one can be sent as soon as possible.
    pub sent_commit: Index,
    /// The leader's tick when this follower last answered.
    pub last_heard: u64,
}

impl Progress {
    /// The progress of a follower the leader knows nothing about yet: in Probe, starting at `next`,
    /// nothing matched.
    pub fn new(next: Index) -> Self {
        Progress {
            matched: 0,
            next,
            state: ProgressState::Probe,
            probe_sent: false,
            inflight: VecDeque::new(),
            recent_active: false,
            read_seq: 0,
            sent_commit: 0,
            last_heard: 0,
        }
    }

    /// Whether the leader may send an append now.
    pub fn can_send(&self, max_inflight: usize) -> bool {
        match self.state {
            ProgressState::Probe => !self.probe_sent,
            ProgressState::Replicate => self.inflight.len() < max_inflight,
            ProgressState::Snapshot(_) => false,
        }
    }

    /// Records that an append ending at `last` (and starting at `next`) was sent.
    pub fn sent(&mut self, last: Index) {
        match self.state {
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Replicate => {
                if last >= self.next {
                    self.next = last + 1;
                    self.inflight.push_back(last);
                }
            }
            ProgressState::Snapshot(_) => {}
        }
    }

    /// A successful answer: the follower matches up to `index`. Returns whether `matched` advanced.
    pub fn on_success(&mut self, index: Index) -> bool {
        let advanced = index > self.matched;
        if advanced {
            self.matched = index;
        }
        self.next = self.next.max(index + 1);
        while self.inflight.front().is_some_and(|&i| i <= index) {
            self.inflight.pop_front();
        }
        match self.state {
            ProgressState::Probe => {
                self.probe_sent = false;
                self.become_replicate();
            }
            ProgressState::Snapshot(at) if self.matched >= at => self.become_probe(),
            _ => {}
        }
        advanced
    }

    /// A rejection of the append whose `prev_index` was `rejected`; `hint_next` is where the conflict hint says
    /// to resume. Returns false for a stale rejection (one that no longer matches what we sent).
    pub fn on_reject(&mut self, rejected: Index, hint_next: Index) -> bool {
        match self.state {
            ProgressState::Replicate => {
                if rejected <= self.matched {
                    return false; // stale: we already know it matches there
                }
                self.become_probe();
                self.next = hint_next.max(self.matched + 1);
                true
            }
            ProgressState::Probe => {
                if rejected + 1 != self.next {
                    return false; // answer to an older probe
                }
                self.next = hint_next.max(self.matched + 1).min(rejected.max(1));
                self.probe_sent = false;
                true
            }
            ProgressState::Snapshot(_) => false,
        }
    }

    /// Switches to Probe: forgets in-flight appends and resumes right after `matched`.
    pub fn become_probe(&mut self) {
        self.state = ProgressState::Probe;
        self.probe_sent = false;
        self.inflight.clear();
        self.next = self.matched + 1;
    }

    /// Switches to Replicate: forgets in-flight appends and resumes right after `matched`.
    pub fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.inflight.clear();
        self.next = self.matched + 1;
    }

    /// Switches to Snapshot: nothing more is sent until the follower has installed the snapshot at
    /// `index`.
    pub fn become_snapshot(&mut self, index: Index) {
        self.state = ProgressState::Snapshot(index);
        self.inflight.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_then_replicate_with_window() {
        let mut p = Progress::new(10);
        assert!(p.can_send(2));
        p.sent(12);
        assert!(!p.can_send(2), "one probe at a time");
        assert!(p.on_success(12));
        assert_eq!(p.state, ProgressState::Replicate);
        assert_eq!(p.next, 13);
        p.sent(14);
        p.sent(16);
        assert!(!p.can_send(2), "window full");
        assert_eq!(p.next, 17);
        p.on_success(14);
        assert!(p.can_send(2));
        assert!(!p.on_success(13), "stale success does not regress");
        assert_eq!(p.matched, 14);
    }

    #[test]
    fn stale_rejections_are_ignored() {
        let mut p = Progress::new(10);
        p.sent(10);
        assert!(!p.on_reject(5, 3), "not the outstanding probe");
        assert!(p.on_reject(9, 4));
        assert_eq!(p.next, 4);
        p.sent(4);
        p.on_success(6);
        assert!(!p.on_reject(5, 1), "already matched past it");
        assert_eq!(p.state, ProgressState::Replicate);
    }
}
