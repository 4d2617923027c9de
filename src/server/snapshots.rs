//! Snapshots in a running node: taking them, compacting the log and the WAL, sending them to followers that
//! fell behind the log, and installing the ones a leader sends.
//!
//! Rules this module keeps:
//! - Taking a snapshot stops the Raft thread only for the copy of the state machine (`KvStore::clone`,
//!   which copies one pointer per chunk of about a thousand keys, see `kv/chunked.rs`: 0.13 ms for a
//!   million keys); a background thread serializes the copy and writes the file (temp file, fsync, rename, directory
//!   fsync). Only once the file is durable are the core's log and the WAL compacted, keeping
//!   `log_keep_entries` entries before it. At most one snapshot is being taken at a time; a failed one
//!   is retried no sooner than a second later.
//! - A snapshot is sent on a connection of its own, one transfer per follower at a time; its end is always
//!   reported to the core (`Raft::report_snapshot`), so a failed transfer is retried.
//! - A snapshot received from the leader is verified (length and checksum) before the core sees the
//!   `InstallSnapshot` message. Installing it, when the core accepts it, replaces the state machine and
//!   restarts the WAL after it, before anything else of that turn is persisted or sent. Writes waiting for
//!   entries the snapshot covers learn only that their outcome is unknown (`leader_changed`).
//! - Restart: the newest valid snapshot is loaded and the WAL replayed after it (see `recovery.rs`).
//!
//! The state machine is any [`StateMachine`]: the copy is what its `snapshot` returns (for the key-value
//! store, the clone above) and the background thread runs that writer; installing calls its `restore`.

use super::{ApiError, RaftLoop, Request};
use crate::machine::StateMachine;
use crate::raft::{Index, Membership, Message, MessageBody, NodeId, SnapshotMeta};
use crate::server::cluster::{read_membership, write_membership};
use crate::storage::SnapshotStore;
use crate::transport::snapshot::{incoming_path, OutgoingSnapshot, SnapshotSent};
use crossbeam_channel::{Receiver, Sender};
use log::{error, info, warn};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A snapshot written by the background thread: (index, file size, time to write), or why not.
pub(crate) type Taken = Result<(Index, u64, Duration), String>;

/// Counters for `/status`.
#[derive(Debug, Default, Clone)]
pub(crate) struct SnapshotStats {
    /// Snapshots this node wrote.
    pub taken: u64,
    /// Snapshots that failed to be written.
    pub failed: u64,
    /// Snapshots received from a leader and installed.
    pub installed: u64,
    /// Snapshots sent to followers.
    pub sent: u64,
    /// Snapshot sends to followers that failed.
    pub send_failures: u64,
    /// Index of the newest snapshot written or installed (at start, the one recovered).
    pub last_index: Index,
    /// Size in bytes of the last snapshot this node wrote.
    pub last_size: u64,
    /// How long the Raft thread stopped to copy the state machine for the last snapshot.
    pub last_pause: Duration,
    /// How long the background thread took to write it.
    pub last_write: Duration,
    /// WAL segment files deleted by compaction after a snapshot.
    pub segments_removed: u64,
}

/// The Raft thread's snapshot bookkeeping: the store, the newest snapshot, and the channels the background
/// writer and senders report on.
pub(crate) struct Snapshots {
    /// The snapshot directory.
    pub store: SnapshotStore,
    /// Index of the newest durable snapshot (0: none).
    pub last: Index,
    /// WAL bytes written when the newest snapshot was started.
    wal_bytes_at_last: u64,
    taking: bool,
    failed_at: Option<Instant>,
    /// Where the background thread reports a snapshot it wrote (capacity 1: one snapshot at a time).
    pub taken_tx: Sender<Taken>,
    /// Where the Raft thread hears of snapshots written.
    pub taken_rx: Receiver<Taken>,
    /// Where a snapshot sender reports the end of a transfer to a follower.
    pub sent_tx: Sender<SnapshotSent>,
    /// Where the Raft thread hears of finished transfers.
    pub sent_rx: Receiver<SnapshotSent>,
    sending: BTreeSet<NodeId>,
    /// A verified snapshot from the leader whose `InstallSnapshot` the core is looking at.
    incoming: Option<(Index, PathBuf)>,
    /// Counters for `/status`.
    pub stats: SnapshotStats,
}

impl Snapshots {
    /// Bookkeeping for `store`, whose newest durable snapshot is at `last` (0: none).
    pub(crate) fn new(store: SnapshotStore, last: Index) -> Snapshots {
        let (taken_tx, taken_rx) = crossbeam_channel::bounded(1);
        let (sent_tx, sent_rx) = crossbeam_channel::unbounded();
        Snapshots {
            store,
            last,
            wal_bytes_at_last: 0,
            taking: false,
            failed_at: None,
            taken_tx,
            taken_rx,
            sent_tx,
            sent_rx,
            sending: BTreeSet::new(),
            incoming: None,
            stats: SnapshotStats {
                last_index: last,
                ..SnapshotStats::default()
            },
        }
    }
}

impl<S: StateMachine, R: Into<Request<S>>> RaftLoop<S, R> {
    /// Starts a snapshot if enough was applied, or the WAL grew enough, since the last one.
    pub(super) fn maybe_take_snapshot(&mut self) {
        let s = &self.snaps;
        let applied = self.applied;
        let wal_bytes = self.wal.stats().bytes_written;
        let due = applied >= s.last + self.cfg.snapshot_entries
            || (applied > s.last && wal_bytes >= s.wal_bytes_at_last + self.cfg.snapshot_bytes);
        let backing_off = s
            .failed_at
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1));
        if s.taking || !due || backing_off {
            return;
        }
        let Some(term) = self.raft.log().term(applied) else {
            return;
        };
        let started = Instant::now();
        let write = self.sm.snapshot();
        let pause = started.elapsed();
        let (membership, context) = self.raft.membership_at_index(applied);
        let store = self.snaps.store.clone();
        let tx = self.snaps.taken_tx.clone();
        self.snaps.taking = true;
        self.snaps.wal_bytes_at_last = wal_bytes;
        self.snaps.stats.last_pause = pause;
        let spawned = std::thread::Builder::new()
            .name("snapshot-writer".into())
            .spawn(move || {
                let t0 = Instant::now();
                let result = store
                    .write(applied, term, |w| {
                        write_membership(w, &membership, &context)?;
                        write(w)
                    })
                    .map(|meta| (applied, meta.size, t0.elapsed()))
                    .map_err(|e| e.to_string());
                let _ = tx.send(result);
            });
        if let Err(e) = spawned {
            warn!("[n{}] cannot start a snapshot thread: {e}", self.cfg.id);
            self.snaps.taking = false;
            self.snaps.failed_at = Some(Instant::now());
        }
    }

    /// The background thread finished a snapshot: compact the core's log and the WAL behind it.
    pub(super) fn snapshot_taken(&mut self, taken: Taken) -> Result<(), String> {
        self.snaps.taking = false;
        let (index, size, took) = match taken {
            Ok(t) => t,
            Err(e) => {
                error!("[n{}] snapshot failed: {e}", self.cfg.id);
                self.snaps.stats.failed += 1;
                self.snaps.failed_at = Some(Instant::now());
                return Ok(());
            }
        };
        let st = &mut self.snaps.stats;
        st.taken += 1;
        st.last_index = index;
        st.last_size = size;
        st.last_write = took;
        info!(
            "[n{}] snapshot at {index}: {size} bytes, copied in {:?}, written in {took:?}",
            self.cfg.id, st.last_pause
        );
        if index <= self.snaps.last {
            return Ok(()); // a newer one was installed from the leader meanwhile
        }
        self.snaps.last = index;
        self.raft.compact(index, self.cfg.log_keep_entries)?;
        let log = self.raft.log();
        let (through, term) = (log.snapshot_index(), log.term(log.snapshot_index()));
        if let Some(term) = term.filter(|_| through > 0) {
            let removed = self
                .wal
                .compact(through, term)
                .map_err(|e| format!("WAL compaction failed: {e}"))?;
            self.snaps.stats.segments_removed += removed as u64;
        }
        Ok(())
    }

    /// Sends a message, except `InstallSnapshot`, which becomes a snapshot transfer.
    pub(super) fn send_message(&mut self, m: Message) {
        let MessageBody::InstallSnapshot { index, .. } = m.body else {
            self.transport.send(m);
            return;
        };
        if self.snaps.sending.contains(&m.to) {
            return; // the core asks again only after a report; this is a duplicate
        }
        let path = self
            .snaps
            .store
            .list()
            .ok()
            .and_then(|l| l.into_iter().find(|s| s.index == index).map(|s| s.path));
        let Some(path) = path else {
            warn!(
                "[n{}] no snapshot file at {index} to send to n{}",
                self.cfg.id, m.to
            );
            self.raft.report_snapshot(m.to, false);
            return;
        };
        self.snaps.sending.insert(m.to);
        self.transport.send_snapshot(
            OutgoingSnapshot { message: m, path },
            self.snaps.sent_tx.clone(),
        );
    }

    /// A transfer ended: the core goes back to probing that follower.
    pub(super) fn snapshot_sent(&mut self, sent: SnapshotSent) {
        self.snaps.sending.remove(&sent.to);
        if sent.ok {
            self.snaps.stats.sent += 1;
        } else {
            self.snaps.stats.send_failures += 1;
        }
        self.raft.report_snapshot(sent.to, sent.ok);
    }

    /// Before the core sees an `InstallSnapshot`: the file must be there and intact.
    pub(super) fn check_incoming(&mut self, m: &Message) -> bool {
        let MessageBody::InstallSnapshot { index, .. } = m.body else {
            return true;
        };
        let path = incoming_path(self.snaps.store.dir(), m.from, index);
        match SnapshotStore::verify(&path) {
            Ok(meta) if meta.index == index => {
                self.discard_incoming();
                self.snaps.incoming = Some((index, path));
                true
            }
            Ok(meta) => {
                warn!(
                    "[n{}] snapshot from n{} claims index {index} but holds {}",
                    self.cfg.id, m.from, meta.index
                );
                let _ = std::fs::remove_file(&path);
                false
            }
            Err(e) => {
                warn!(
                    "[n{}] snapshot from n{} at {index} refused: {e}",
                    self.cfg.id, m.from
                );
                let _ = std::fs::remove_file(&path);
                false
            }
        }
    }

    /// Removes a received snapshot the core did not take.
    pub(super) fn discard_incoming(&mut self) {
        if let Some((_, path)) = self.snaps.incoming.take() {
            let _ = std::fs::remove_file(path);
        }
    }

    /// The core accepted the leader's snapshot: it becomes our state machine and the WAL restarts after it.
    pub(super) fn install_snapshot(&mut self, meta: SnapshotMeta) -> Result<(), String> {
        let (index, path) = self
            .snaps
            .incoming
            .take()
            .filter(|(i, _)| *i == meta.index)
            .ok_or_else(|| {
                format!(
                    "the core installs a snapshot at {} never received",
                    meta.index
                )
            })?;
        let started = Instant::now();
        let stored = self
            .snaps
            .store
            .import(&path)
            .map_err(|e| format!("cannot keep the received snapshot: {e}"))?;
        load_snapshot(&stored.path, index, &mut self.sm)?;
        self.applied = index;
        self.wal
            .reset(meta.index, meta.term, self.raft.hard_state())
            .map_err(|e| format!("WAL reset failed: {e}"))?;
        self.snaps.last = index;
        self.snaps.wal_bytes_at_last = self.wal.stats().bytes_written;
        self.snaps.stats.installed += 1;
        self.snaps.stats.last_index = index;
        // Writes waiting for entries the snapshot covers cannot learn their result.
        let covered: Vec<Index> = self.writes_at.range(..=index).map(|(&i, _)| i).collect();
        for i in covered {
            for (_, id) in self.writes_at.remove(&i).unwrap_or_default() {
                self.fail(id, ApiError::LeaderChanged);
            }
        }
        info!(
            "[n{}] installed the leader's snapshot at {index}/t{} in {:?}",
            self.cfg.id,
            meta.term,
            started.elapsed()
        );
        Ok(())
    }

    /// The snapshot part of `/status`: the counters, the last snapshot, and what is being written or sent.
    pub(super) fn snapshot_status(&self) -> serde_json::Value {
        let st = &self.snaps.stats;
        serde_json::json!({
            "last_index": st.last_index,
            "last_size_bytes": st.last_size,
            "last_pause_us": st.last_pause.as_micros() as u64,
            "last_write_ms": st.last_write.as_millis() as u64,
            "taken": st.taken,
            "failed": st.failed,
            "installed": st.installed,
            "sent": st.sent,
            "send_failures": st.send_failures,
            "wal_segments_removed": st.segments_removed,
            "in_progress": self.snaps.taking,
            "sending_to": self.snaps.sending.iter().collect::<Vec<_>>(),
        })
    }
}

/// Reads a verified snapshot file taken at `index`: restores the state machine from it and returns the
/// membership it records.
pub(crate) fn load_snapshot<S: StateMachine>(
    path: &std::path::Path,
    index: Index,
    sm: &mut S,
) -> Result<(Membership, Vec<u8>), String> {
    let mut reader = SnapshotStore::open_body(path)
        .map_err(|e| format!("cannot open snapshot {}: {e}", path.display()))?;
    let membership = read_membership(&mut reader)
        .map_err(|e| format!("snapshot {} is unreadable: {e}", path.display()))?;
    sm.restore(index, &mut reader)
        .map_err(|e| format!("snapshot {} is unreadable: {e}", path.display()))?;
    Ok(membership)
}
