//! The core's in-memory view of the replicated log.
//!
//! Rules this module keeps:
//! - Entries are contiguous: `entries[k].index == first_index() + k`.
//! - Everything at or below `snapshot_index` has been compacted away; its last term is `snapshot_term`.
//!   `first_index() == snapshot_index + 1`, so a log that starts after a compaction is handled everywhere.
//! - `committed` never decreases and never passes the last index; `applied <= committed`.
//! - Entries at or below `committed` are never truncated (that would break State Machine Safety).
//! - `stable` is the last index known to be durable; entries above it (and any rewritten suffix starting at
//!   `unstable_from`) must be handed to the driver to persist.

use super::message::{Entry, Index, Term};

/// The in-memory log of one node.
#[derive(Debug, Clone)]
pub struct RaftLog {
    snapshot_index: Index,
    snapshot_term: Term,
    entries: Vec<Entry>,
    committed: Index,
    applied: Index,
    /// Last index known durable.
    stable: Index,
    /// First index that must be (re)written by the driver; `last_index() + 1` when nothing is pending.
    unstable_from: Index,
    /// Entries below this have been handed out for applying.
    apply_handed: Index,
}

impl RaftLog {
    /// A log recovered from storage: entries after `snapshot_index` (all already durable).
    pub fn new(
        snapshot_index: Index,
        snapshot_term: Term,
        entries: Vec<Entry>,
        committed: Index,
        applied: Index,
    ) -> Self {
        for (k, e) in entries.iter().enumerate() {
            assert_eq!(
                e.index,
                snapshot_index + 1 + k as u64,
                "recovered log is not contiguous at position {k}"
            );
        }
        let last = snapshot_index + entries.len() as u64;
        let committed = committed.min(last).max(snapshot_index);
        let applied = applied.max(snapshot_index);
        assert!(
            applied <= committed,
            "applied {applied} > committed {committed} at recovery"
        );
        RaftLog {
            snapshot_index,
            snapshot_term,
            entries,
            committed,
            applied,
            stable: last,
            unstable_from: last + 1,
            apply_handed: applied,
        }
    }

    /// The index of the first entry held in memory: one past the snapshot index.
    pub fn first_index(&self) -> Index {
        self.snapshot_index + 1
    }

    /// The index of the last entry, or the snapshot index when no entries are held.
    pub fn last_index(&self) -> Index {
        self.snapshot_index + self.entries.len() as u64
    }

    /// The term of the last entry, or the snapshot's term when no entries are held.
    pub fn last_term(&self) -> Term {
        self.entries
            .last()
            .map(|e| e.term)
            .unwrap_or(self.snapshot_term)
    }

    /// The highest index known committed; never decreases and never exceeds [`RaftLog::last_index`].
    pub fn committed(&self) -> Index {
        self.committed
    }

    /// The highest index the state machine has applied; at most [`RaftLog::committed`].
    pub fn applied(&self) -> Index {
        self.applied
    }

    /// The last index known to be durable in storage.
    pub fn stable(&self) -> Index {
        self.stable
    }

    /// The index of the last entry covered by the snapshot (0 if there is none); everything at or below
    /// it has been compacted away.
    pub fn snapshot_index(&self) -> Index {
        self.snapshot_index
    }

    /// The term of the entry at `index`: `Some(0)` for index 0, `None` if compacted away or beyond the end.
    pub fn term(&self, index: Index) -> Option<Term> {
        if index == self.snapshot_index {
            return Some(self.snapshot_term);
        }
        if index < self.snapshot_index || index > self.last_index() {
            return None;
        }
        Some(self.entries[(index - self.first_index()) as usize].term)
    }

    /// The entry at `index`, if held.
    pub fn entry(&self, index: Index) -> Option<&Entry> {
        if index < self.first_index() || index > self.last_index() {
            return None;
        }
        Some(&self.entries[(index - self.first_index()) as usize])
    }

    /// All entries currently held, in order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Entries from `lo` (inclusive), at most `max_count` of them and at most `max_bytes` bytes (but always at
    /// least one if any exist), or `None` if `lo` has been compacted.
    pub fn slice(&self, lo: Index, max_count: usize, max_bytes: usize) -> Option<Vec<Entry>> {
        if lo < self.first_index() {
            return None;
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut i = lo;
        while i <= self.last_index() && out.len() < max_count {
            let e = &self.entries[(i - self.first_index()) as usize];
            bytes += e.approx_size();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(e.clone());
            i += 1;
        }
        Some(out)
    }

    /// Paper §5.4.1: a candidate's log is at least as up-to-date as ours if its last term is higher, or equal
    /// with a last index at least as high.
    pub fn is_up_to_date(&self, last_index: Index, last_term: Term) -> bool {
        last_term > self.last_term()
            || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// Whether our entry at `index` has term `term` (index 0 always matches; compacted indexes are committed and
    /// therefore match whatever a legitimate leader sends).
    pub fn matches(&self, index: Index, term: Term) -> bool {
        if index < self.snapshot_index {
            return true;
        }
        self.term(index) == Some(term)
    }

    /// Appends entries that follow the last index (leader path).
    pub fn append(&mut self, entries: Vec<Entry>) {
        for e in entries {
            assert_eq!(
                e.index,
                self.last_index() + 1,
                "append must be contiguous: {} after {}",
                e.index,
                self.last_index()
            );
            self.entries.push(e);
        }
    }

    /// The follower side of AppendEntries after the consistency check on `prev` passed (paper §5.3, Figure 2
    /// receiver rules 3 and 4): skip entries we already hold with the same term, truncate at the first
    /// conflict, append the rest. Returns the index of the last entry the leader sent (our match index).
    pub fn merge(&mut self, prev_index: Index, entries: Vec<Entry>) -> Index {
        let last_new = prev_index + entries.len() as u64;
        let mut conflict = None;
        for (k, e) in entries.iter().enumerate() {
            assert_eq!(
                e.index,
                prev_index + 1 + k as u64,
                "append entries not contiguous"
            );
            if e.index <= self.snapshot_index {
                continue; // compacted, hence committed, hence identical
            }
            if self.term(e.index) != Some(e.term) {
                conflict = Some(k);
                break;
            }
        }
        if let Some(k) = conflict {
            let at = entries[k].index;
            if at <= self.last_index() {
                assert!(
                    at > self.committed,
                    "conflicting entry at {at} would truncate committed entries (commit {})",
                    self.committed
                );
                self.truncate_from(at);
            }
            self.append(entries.into_iter().skip(k).collect());
        }
        last_new
    }

    /// Drops every entry at or after `index`.
    fn truncate_from(&mut self, index: Index) {
        let keep = (index - self.first_index()) as usize;
        self.entries.truncate(keep);
        self.unstable_from = self.unstable_from.min(index);
        self.stable = self.stable.min(index - 1);
    }

    /// The first index of the term that the entry at `index` belongs to, scanning back no further than the
    /// first held entry. Used for the conflict hint.
    pub fn first_index_of_term_at(&self, index: Index) -> Index {
        let term = match self.term(index) {
            Some(t) => t,
            None => return index,
        };
        let mut i = index;
        while i > self.first_index() && self.term(i - 1) == Some(term) {
            i -= 1;
        }
        i
    }

    /// The last index whose term is `term`, if any entry of that term is held.
    pub fn last_index_of_term(&self, term: Term) -> Option<Index> {
        // Terms are non-decreasing along the log, so scan back from the end.
        let mut i = self.last_index();
        while i >= self.first_index() {
            let t = self.term(i)?;
            if t == term {
                return Some(i);
            }
            if t < term {
                return None;
            }
            i -= 1;
        }
        None
    }

    /// Raises the commit index (never lowers it, never past the last index).
    pub fn commit_to(&mut self, index: Index) -> bool {
        let index = index.min(self.last_index());
        if index > self.committed {
            self.committed = index;
            true
        } else {
            false
        }
    }

    /// Entries that must be persisted now.
    pub fn unstable_entries(&self) -> &[Entry] {
        if self.unstable_from > self.last_index() {
            return &[];
        }
        &self.entries[(self.unstable_from - self.first_index()) as usize..]
    }

    /// The driver persisted everything up to `index`, whose term was `term`. Ignored if the entry has since
    /// been rewritten (a conflicting append arrived between `ready` and `advance`).
    pub fn stable_to(&mut self, index: Index, term: Term) {
        if index == 0 || self.term(index) != Some(term) {
            return;
        }
        // Same index and term means the same prefix (Log Matching), so everything up to `index` is durable.
        self.stable = self.stable.max(index);
        self.unstable_from = self.unstable_from.max(index + 1);
    }

    /// Committed entries not yet handed out for applying.
    pub fn entries_to_apply(&self, max_bytes: usize) -> Vec<Entry> {
        if self.committed <= self.apply_handed {
            return Vec::new();
        }
        let lo = self.apply_handed + 1;
        let count = (self.committed - self.apply_handed) as usize;
        self.slice(lo, count, max_bytes).unwrap_or_default()
    }

    /// Whether committed entries wait to be handed out for applying.
    pub fn has_entries_to_apply(&self) -> bool {
        self.committed > self.apply_handed
    }

    /// Marks entries up to `index` as handed to the state machine.
    pub fn handed_to(&mut self, index: Index) {
        self.apply_handed = self.apply_handed.max(index);
    }

    /// The driver applied everything up to `index`.
    pub fn applied_to(&mut self, index: Index) {
        assert!(
            index <= self.committed,
            "applied {index} beyond commit {}",
            self.committed
        );
        self.applied = self.applied.max(index);
        self.apply_handed = self.apply_handed.max(self.applied);
    }

    /// Replaces the whole log by a snapshot's position (paper §7: "discard the entire log"): nothing held,
    /// everything up to `index` committed and applied (by installing the snapshot). Only for a snapshot
    /// beyond the commit index; one at or below it is never installed.
    pub fn restore(&mut self, index: Index, term: Term) {
        assert!(
            index > self.committed,
            "restoring a snapshot at {index}, not beyond commit {}",
            self.committed
        );
        self.entries.clear();
        self.snapshot_index = index;
        self.snapshot_term = term;
        self.committed = index;
        self.applied = index;
        self.stable = index;
        self.unstable_from = index + 1;
        self.apply_handed = index;
    }

    /// Drops entries at or below `index` (they are covered by a snapshot). Only applied entries may be dropped.
    pub fn compact_to(&mut self, index: Index) {
        if index <= self.snapshot_index {
            return;
        }
        assert!(
            index <= self.applied,
            "compacting to {index} past applied {}",
            self.applied
        );
        let term = self.term(index).expect("compact index is held");
        let drop = (index - self.snapshot_index) as usize;
        self.entries.drain(..drop);
        self.snapshot_index = index;
        self.snapshot_term = term;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::EntryKind;

    fn ents(terms: &[(Index, Term)]) -> Vec<Entry> {
        terms
            .iter()
            .map(|&(index, term)| Entry {
                index,
                term,
                kind: EntryKind::Noop,
            })
            .collect()
    }

    #[test]
    fn merge_truncates_at_first_conflict_only() {
        let mut log = RaftLog::new(0, 0, ents(&[(1, 1), (2, 1), (3, 2), (4, 2)]), 1, 0);
        // Duplicate of what we hold: nothing changes, nothing to persist.
        assert_eq!(log.merge(1, ents(&[(2, 1), (3, 2)])), 3);
        assert_eq!(log.last_index(), 4);
        assert!(log.unstable_entries().is_empty());
        // Conflict at 3: truncate 3.. and append.
        assert_eq!(log.merge(2, ents(&[(3, 3)])), 3);
        assert_eq!(log.last_index(), 3);
        assert_eq!(log.term(3), Some(3));
        assert_eq!(log.unstable_entries(), &ents(&[(3, 3)])[..]);
        assert_eq!(log.stable(), 2);
    }

    #[test]
    fn compaction_keeps_terms_and_bounds() {
        let mut log = RaftLog::new(0, 0, ents(&[(1, 1), (2, 1), (3, 2)]), 3, 3);
        log.compact_to(2);
        assert_eq!(log.first_index(), 3);
        assert_eq!(log.term(2), Some(1));
        assert_eq!(log.term(1), None);
        assert!(log.slice(2, 10, 1000).is_none());
        assert!(
            log.matches(1, 99),
            "compacted indexes are committed and match"
        );
        assert_eq!(log.last_index_of_term(2), Some(3));
        assert_eq!(log.last_index_of_term(1), None);
    }

    #[test]
    fn conflict_hint_scans_back_to_term_start() {
        let log = RaftLog::new(0, 0, ents(&[(1, 1), (2, 2), (3, 2), (4, 2), (5, 3)]), 0, 0);
        assert_eq!(log.first_index_of_term_at(4), 2);
        assert_eq!(log.first_index_of_term_at(5), 5);
        assert_eq!(log.last_index_of_term(2), Some(4));
    }

    #[test]
    #[should_panic(expected = "would truncate committed")]
    fn truncating_committed_entries_is_refused() {
        let mut log = RaftLog::new(0, 0, ents(&[(1, 1), (2, 1)]), 2, 0);
        log.merge(1, ents(&[(2, 2)]));
    }
}
