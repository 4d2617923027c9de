//! The replicated state machine interface: what the Raft runtime needs from the state it replicates.
//!
//! The runtime (the Raft thread of a [`crate::server::Node`] or of an [`crate::embed::Node`]) owns the
//! state machine and calls it from that one thread only:
//! - [`StateMachine::apply`] for every committed command, in log order, exactly once per entry on every
//!   node (a restart replays from the newest snapshot on, into a state machine restored from it);
//! - [`StateMachine::skip`] for committed entries without a command (a new leader's no-op, membership
//!   changes), so an implementation that counts indexes itself can follow; most ignore it;
//! - [`StateMachine::snapshot`] when the runtime decides to take a snapshot (every
//!   `snapshot_entries` applied entries, or when the WAL grew by `snapshot_bytes`). It returns a writer
//!   that the runtime runs **on another thread**, so `snapshot` itself should only take a frozen copy
//!   (a clone, or a cheap copy-on-write handle) and leave the serializing to the writer;
//! - [`StateMachine::restore`] at start-up (from the newest snapshot on disk) and when a leader sends a
//!   snapshot to a follower that fell behind the log.
//!
//! The runtime keeps the applied index itself (the state machine never has to store it): it knows the
//! index of every entry it applies and the index of every snapshot it writes or restores, and records
//! both in the snapshot file's header.
//!
//! Determinism is the implementation's part of the contract: the same commands at the same indexes must
//! give the same state (and the same outputs) on every node. `apply` must not read clocks, random numbers,
//! the environment or anything else that differs between nodes, and must not panic on any input: a
//! command it cannot make sense of should be turned into an error *output*, so every node agrees on it.

use crate::raft::Index;
use std::io::{self, Read, Write};

/// Serializes a frozen copy of the state; run on a background thread, so it must own what it writes.
pub type SnapshotWriter = Box<dyn FnOnce(&mut dyn Write) -> io::Result<()> + Send>;

/// A deterministic state machine that Raft replicates (see the [module docs](self)).
///
/// The key-value server's implementation wraps [`crate::kv::KvStore`]; `examples/embedded.rs` and the
/// crate-level tutorial show a small one.
pub trait StateMachine: Send + 'static {
    /// What applying one command produces; handed back to whoever proposed it. Cloned once per command
    /// (the runtime keeps recent outputs to answer proposals whose acknowledgement comes late).
    type Output: Clone + Send + 'static;

    /// Applies the committed command of the log entry at `index`. Called once per entry, with strictly
    /// increasing indexes (gaps are entries without a command, see [`StateMachine::skip`]).
    fn apply(&mut self, index: Index, command: &[u8]) -> Self::Output;

    /// The entry at `index` carried no command (a leader's no-op or a membership change). The default
    /// does nothing.
    fn skip(&mut self, index: Index) {
        let _ = index;
    }

    /// Takes a frozen copy of the state for a snapshot and returns what writes it. The copy is taken on
    /// the Raft thread (which stops meanwhile: keep it cheap); the writer runs on a background thread.
    fn snapshot(&self) -> SnapshotWriter;

    /// Replaces the whole state with the one a [`StateMachine::snapshot`] writer wrote, as of the entry at
    /// `index`. The reader yields exactly the bytes written (their length and checksum were verified
    /// before). Return an error (e.g. [`io::ErrorKind::InvalidData`]) for anything unexpected; never panic.
    /// An error stops the node: the state machine is not used again.
    fn restore(&mut self, index: Index, snapshot: &mut dyn Read) -> io::Result<()>;
}
