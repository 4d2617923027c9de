//! The Raft consensus core: a pure, deterministic state machine.
//!
//! No sockets, files, threads, clocks or global randomness in here. Time is [`Raft::tick`]; randomness is a
//! seeded generator passed to [`Raft::new`]. Given the same inputs in the same order, a node produces the same
//! outputs, which is what makes the simulated-cluster tests replayable from a seed.
//!
//! # The contract with the driver (etcd-style `ready`/`advance`)
//!
//! The driver owns the node and is the only one to touch it. Inputs mutate the node:
//! - [`Raft::tick`] — one unit of logical time passed;
//! - [`Raft::step`] — a message arrived from a peer;
//! - [`Raft::propose`] — client commands (opaque bytes) to replicate, tagged with a request id;
//! - [`Raft::read_index`] — a linearizable read wants a read index, tagged with a request id.
//!
//! After feeding any number of inputs (a whole batch: that is where group commit comes from), the driver
//! calls [`Raft::ready`] and does, **in this order**:
//! 1. append [`Ready::entries`] to stable storage (the first may overwrite a stored suffix: truncate it) and
//!    write [`Ready::hard_state`]; if [`Ready::must_sync`], make both durable with one fsync;
//! 2. send [`Ready::messages`];
//! 3. apply [`Ready::committed`] to the state machine, in order;
//! 4. answer clients from [`Ready::proposed`] and [`Ready::reads`];
//! 5. call [`Raft::advance`]; loop while [`Raft::has_ready`].
//!
//! Rules behind the order:
//! - **Persist before send.** A vote, or an append acknowledgement, tells a peer something about our durable
//!   state (paper Figure 2: "persistent state … updated on stable storage before responding to RPCs"). So
//!   every message goes out after step 1. The one allowed exception: `Append` messages *from a leader* may be
//!   sent before its own fsync finishes ([`Message::may_send_before_persist`]), because the leader counts
//!   itself towards a quorum only for entries it has persisted, which it learns in `advance`.
//! - **Group commit.** Many proposals, and many incoming appends, accumulate in memory between two `ready`
//!   calls, so they are persisted together with one fsync. A leader broadcasts the new entries of a turn
//!   together at `ready` time.
//! - **Nothing is acknowledged before it is applied.** A proposal's outcome in [`Ready::proposed`] only says
//!   where it was appended. The driver answers the client when the entry at that index is applied *with that
//!   term*; another term at that index means the proposal was overwritten and lost.
//! - **Reads.** A [`ReadState`] with `Ok(index)` means: answer the read once the state machine has applied
//!   `index`. Reads are confirmed by a heartbeat round shared by all reads that arrived before it
//!   (thesis §6.4), never by a log entry per read. A follower forwards the request to the leader.
//!
//! # What it implements (each handler cites its rule)
//! - Elections with randomized timeouts, votes persisted before they are sent, the up-to-date check (paper
//!   §5.2, §5.4.1); pre-vote (thesis §9.6) and check-quorum (thesis §6.2), both on by default; followers that
//!   heard from a leader recently ignore vote requests (thesis §4.2.3).
//! - A no-op entry appended by every new leader (paper §8, thesis §6.4).
//! - AppendEntries with the consistency check, conflict truncation, and a conflict hint that lets the leader
//!   skip a whole term per round trip (paper §5.3).
//! - Commit only by counting replicas of current-term entries (paper §5.4.2, Figure 8).
//! - Per-follower progress in probe/replicate states, a window of in-flight appends, caps on entries and bytes
//!   per append; heartbeats carry the commit index (capped at what the follower is known to match).
//! - Read index with batched heartbeat rounds, forwarded from followers (thesis §6.4).
//! - Leader leases (thesis §6.4.1, [`Raft::lease_read`]): every heartbeat broadcast starts a numbered round;
//!   a round acknowledged by a quorum gives the leader `lease_ticks` of reads without a round. Only with
//!   check-quorum, whose followers refuse votes for an election timeout after hearing from the leader (and,
//!   once restarted, after booting).
//! - Forwarded proposals from followers ([`MessageBody::Propose`]).
//! - A log that may start after index 1 (entries before it compacted into a snapshot); snapshots and
//!   `InstallSnapshot` (paper §7), see `snapshot.rs`.
//! - Membership changes one server at a time, learners, and leadership transfer (thesis §4.1, §3.10), see
//!   `membership.rs`.
//!
//! Invariants are `assert!`s with messages: the term never decreases, the vote never changes within a term,
//! the commit index never decreases and never truncates, applied ≤ commit.
//!
//! # Not yet
//! - Nothing the server needs; see the open issues for what else is planned.

mod leader;
mod log;
mod membership;
mod message;
mod node;
mod progress;
mod rng;
mod snapshot;

pub use self::log::RaftLog;
pub use message::*;
pub use node::{Config, InitialState, Proposed, Raft, ReadState, Ready, RequestError, Role};
pub use rng::Rng;

impl Message {
    /// Whether the driver may send this message before the `Ready` it came in is durable: only a leader's
    /// appends (the leader does not count itself towards the quorum for entries it has not persisted).
    pub fn may_send_before_persist(&self) -> bool {
        matches!(self.body, MessageBody::Append { .. })
    }
}
