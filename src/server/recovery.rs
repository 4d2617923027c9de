//! Start-up recovery: the newest valid snapshot, then the WAL after it.
//!
//! Rules:
//! - The newest snapshot that verifies (length, checksum, and a state machine that decodes within the
//!   configured limits) is loaded; a corrupt newer one is set aside by the snapshot store with a warning.
//! - The WAL must continue the snapshot: its entries must reach back to the entry after the snapshot (or
//!   before it). If entries between the snapshot and the WAL are missing, the node refuses to start and
//!   says which, rather than serve a state with a hole in it.
//! - WAL entries the snapshot covers are dropped. If the WAL disagrees with the snapshot about the
//!   snapshot's own entry (a crash after a leader's snapshot was kept but before the WAL was restarted
//!   after it), or ends before it, the WAL is restarted after the snapshot, keeping the hard state.

use super::raft_loop::load_snapshot;
use crate::config::NodeConfig;
use crate::machine::StateMachine;
use crate::raft::{HardState, InitialState};
use crate::storage::SnapshotStore;
use crate::storage::{Wal, WalOptions};
use log::{info, warn};

/// What [`recover`] found in the data directory: the WAL, the core's initial state, the state machine and the
/// snapshot store.
pub(super) struct Recovered<S> {
    /// The opened write-ahead log.
    pub wal: Wal,
    /// The state the Raft core starts from.
    pub init: InitialState,
    /// The state machine as of `init.snapshot_index` (restored from that snapshot, or as given).
    pub sm: S,
    /// The snapshot directory.
    pub store: SnapshotStore,
}

/// `sm` is the state machine's initial (empty) state; it is restored from the newest snapshot if any.
pub(super) fn recover<S: StateMachine>(
    cfg: &NodeConfig,
    mut sm: S,
) -> Result<Recovered<S>, String> {
    let id = cfg.id;
    let store = SnapshotStore::open(&cfg.data_dir.join("snap"), cfg.snapshots_kept)
        .map_err(|e| format!("cannot open the snapshot directory: {e}"))?;
    // Snapshots received from a leader but never installed (a crash in between) are of no use.
    if let Ok(rd) = std::fs::read_dir(store.dir()) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with("incoming-") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let latest = store
        .latest_valid()
        .map_err(|e| format!("cannot read the snapshots: {e}"))?;
    let opts = WalOptions {
        segment_size: cfg.wal_segment_bytes,
        ..WalOptions::default()
    };
    let (mut wal, rec) = Wal::open(&cfg.data_dir.join("wal"), opts)
        .map_err(|e| format!("cannot open the WAL: {e}"))?;
    let mut snapshot_membership = None;
    let (snap_index, snap_term) = match &latest {
        Some(meta) => {
            let membership = load_snapshot(&meta.path, meta.index, &mut sm)?;
            snapshot_membership = Some(membership);
            info!(
                "[n{id}] loaded the snapshot at {}/t{}",
                meta.index, meta.term
            );
            (meta.index, meta.term)
        }
        None => (0, 0),
    };
    let first = rec.first_index;
    let last = first + rec.entries.len() as u64 - 1;
    if first > snap_index + 1 {
        return Err(format!(
            "the WAL starts at index {first} but the newest valid snapshot covers only up to {snap_index}: \
             entries {}..={} are missing (was a snapshot file removed or corrupted?); refusing to start",
            snap_index + 1,
            first - 1
        ));
    }
    let term_at_snapshot = if snap_index + 1 == first {
        Some(rec.start_term)
    } else if snap_index <= last {
        rec.entries
            .get((snap_index - first) as usize)
            .map(|e| e.term)
    } else {
        None
    };
    let mut hard_state = rec.hard_state;
    let entries = if snap_index == 0 || term_at_snapshot == Some(snap_term) {
        rec.entries
            .into_iter()
            .filter(|e| e.index > snap_index)
            .collect()
    } else {
        warn!(
            "[n{id}] the WAL (entries {first}..={last}) does not continue the snapshot at {snap_index}/t{snap_term}: restarting it after the snapshot"
        );
        hard_state = HardState {
            commit: hard_state.commit.max(snap_index),
            ..hard_state
        };
        wal.reset(snap_index, snap_term, hard_state)
            .map_err(|e| format!("cannot restart the WAL after the snapshot: {e}"))?;
        Vec::new()
    };
    info!(
        "[n{id}] recovered {} log entries after index {snap_index}, hard state {hard_state:?}",
        entries.len()
    );
    Ok(Recovered {
        wal,
        init: InitialState {
            hard_state,
            snapshot_index: snap_index,
            snapshot_term: snap_term,
            entries,
            applied: snap_index,
            snapshot_membership,
        },
        sm,
        store,
    })
}
