//! The data the core exchanges with its driver and with its peers: log entries, the hard state that must be
//! durable, and the messages of the protocol.
//!
//! Everything here is plain data (serde-serializable, no behaviour that touches I/O). The transport frames
//! [`Message`]s; the storage layer persists [`Entry`]s and [`HardState`]s.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// A node's identifier within the cluster. Never 0 (0 means "none" in hints and votes).
pub type NodeId = u64;

/// A position in the replicated log. The first real entry has index 1; index 0 is the empty prefix.
pub type Index = u64;

/// An election term. Term 0 exists only before the first election.
pub type Term = u64;

/// What an entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// The empty entry every new leader appends in its term (thesis §6.4, paper §8). Not applied.
    Noop,
    /// An opaque command for the state machine. The core never looks inside.
    Command(Vec<u8>),
    /// A new cluster membership (thesis §4.1): in effect on every node as soon as the entry is in its log,
    /// committed or not. `context` is the driver's (e.g. the members' addresses); the core never reads it.
    Config {
        /// The new membership.
        membership: Membership,
        /// The driver's opaque data for this membership (e.g. the members' addresses).
        context: Vec<u8>,
    },
}

/// Who is in the cluster: voters count towards elections and commitment; learners only receive the log.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The voting members, in ascending id order.
    pub voters: BTreeSet<NodeId>,
    /// The non-voting members; never overlaps `voters`.
    pub learners: BTreeSet<NodeId>,
}

impl Membership {
    /// Whether `id` is a member, voter or learner.
    pub fn contains(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }
    /// Every member, voters and learners.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(self.learners.iter()).copied()
    }
}

/// One membership change at a time (thesis §4.1, single-server changes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// A new node joins as a learner: it receives the log (or a snapshot) but does not vote yet.
    AddLearner(NodeId),
    /// A learner becomes a voter.
    Promote(NodeId),
    /// A voter or learner leaves.
    Remove(NodeId),
}

/// One entry of the replicated log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The entry's position in the log (1 for the first entry).
    pub index: Index,
    /// The term of the leader that created the entry.
    pub term: Term,
    /// What the entry carries.
    pub kind: EntryKind,
}

impl Entry {
    /// Approximate encoded size, used for the per-message byte cap.
    pub fn approx_size(&self) -> usize {
        24 + match &self.kind {
            EntryKind::Noop => 0,
            EntryKind::Command(data) => data.len(),
            EntryKind::Config {
                membership,
                context,
            } => 8 * (membership.voters.len() + membership.learners.len()) + context.len(),
        }
    }
}

/// The state that must be on disk before a node acts on it (paper Figure 2, "persistent state").
///
/// `commit` is kept too so that a restart can re-apply what it knew to be committed without waiting for a
/// leader; it is not needed for safety and a change of `commit` alone does not require an fsync.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// The latest term this node has seen.
    pub term: Term,
    /// The candidate voted for in `term`, or 0.
    pub vote: NodeId,
    /// The highest log index this node knew to be committed.
    pub commit: Index,
}

/// Where a snapshot of the state machine stands in the log: it reflects every entry up to `index`, whose
/// term is `term`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The index of the last entry the snapshot covers.
    pub index: Index,
    /// The term of the entry at `index`.
    pub term: Term,
}

/// A protocol message between two nodes.
///
/// `term` is the sender's current term, except for the pre-vote messages (the term the sender *would*
/// campaign in) and the client-forwarding messages ([`MessageBody::is_client`]), which carry no term
/// semantics and are sent with term 0.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The sending node.
    pub from: NodeId,
    /// The receiving node.
    pub to: NodeId,
    /// The sender's term (see the type's notes for the exceptions).
    pub term: Term,
    /// What the message says.
    pub body: MessageBody,
}

/// Why a forwarded proposal or read failed at the node it was sent to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RemoteError {
    /// The receiver is not the leader; it names the leader it knows of, if any.
    NotLeader {
        /// The leader's id as the receiver knows it, or `None` if it knows of none.
        leader: Option<NodeId>,
    },
    /// The receiver is leader but refuses for now (e.g. too many pending reads).
    Busy,
    /// The receiver is leader but refuses new commands while its storage is short of space.
    InsufficientStorage,
}

/// The body of a [`Message`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageBody {
    /// Pre-vote request (thesis §9.6). `term` is the term the sender would campaign in; the receiver does
    /// not adopt it.
    PreVote {
        /// The index of the sender's last log entry.
        last_index: Index,
        /// The term of the sender's last log entry.
        last_term: Term,
    },
    /// Answer to a pre-vote. When granted it carries the term of the request, else the responder's term.
    PreVoteResponse {
        /// Whether the responder would vote for the sender.
        granted: bool,
    },
    /// RequestVote (paper §5.2, Figure 2). `transfer`: the candidate campaigns because the leader handed
    /// leadership to it (thesis §3.10), so voters do not refuse it for having heard from that leader.
    Vote {
        /// The index of the candidate's last log entry.
        last_index: Index,
        /// The term of the candidate's last log entry.
        last_term: Term,
        /// Whether the candidate campaigns because the leader transferred leadership to it.
        transfer: bool,
    },
    /// Answer to [`MessageBody::Vote`].
    VoteResponse {
        /// Whether the responder voted for the candidate in the message's term.
        granted: bool,
    },
    /// AppendEntries (paper §5.3). `commit` is the leader's commit index.
    Append {
        /// The index of the entry just before `entries`.
        prev_index: Index,
        /// The term of the entry at `prev_index`; the follower rejects unless its own entry there matches.
        prev_term: Term,
        /// The entries to append after `prev_index`, in order (empty for a probe).
        entries: Vec<Entry>,
        /// The leader's commit index.
        commit: Index,
    },
    /// Answer to [`MessageBody::Append`].
    AppendResponse {
        /// On success: the index up to which the follower's log now matches the leader's.
        /// On rejection: the `prev_index` that was rejected (lets the leader drop stale answers).
        index: Index,
        /// `None` on success; on rejection a hint for the leader to back up a whole term at once.
        reject: Option<RejectHint>,
    },
    /// Heartbeat (an empty AppendEntries without the consistency check). `commit` is never above what the
    /// leader knows the follower has matched, so a follower may commit up to it without checking terms.
    /// `read_seq` is the read-index round this heartbeat confirms (thesis §6.4); 0 means none.
    Heartbeat {
        /// The commit index the follower may advance to.
        commit: Index,
        /// The read-index round this heartbeat confirms; 0 for none.
        read_seq: u64,
    },
    /// Answer to [`MessageBody::Heartbeat`].
    HeartbeatResponse {
        /// The `read_seq` of the heartbeat being answered.
        read_seq: u64,
    },
    /// InstallSnapshot (paper §7): the follower needs entries the leader compacted away, so it must take
    /// the leader's snapshot covering everything up to `index` (whose entry has term `last_term`). The
    /// message is metadata only: the driver streams the snapshot's bytes beside it and steps this message
    /// into the follower's core once the whole snapshot arrived and verified. Answered with an
    /// [`MessageBody::AppendResponse`] matching `index`.
    InstallSnapshot {
        /// The last log index the snapshot covers.
        index: Index,
        /// The term of the entry at `index`.
        last_term: Term,
        /// The membership at `index`, with the driver's context.
        membership: Membership,
        /// The driver's context for `membership`.
        context: Vec<u8>,
    },
    /// Leadership transfer (thesis §3.10): the leader tells an up-to-date voter to campaign at once.
    TimeoutNow,
    /// A follower forwards a batch of client commands to the leader. Term-less (sent with term 0).
    Propose {
        /// The sender's id for the request, echoed in the answer.
        request_id: u64,
        /// The client commands, in order; each becomes one entry.
        commands: Vec<Vec<u8>>,
    },
    /// The leader's answer: where the commands were appended, or why not. Term-less.
    ProposeResponse {
        /// The `request_id` of the [`MessageBody::Propose`] being answered.
        request_id: u64,
        /// The index of the first appended command and the term of all of them, or why nothing was appended.
        result: Result<(Index, Term), RemoteError>,
    },
    /// A follower asks the leader for a read index (thesis §6.4). Term-less.
    ReadIndex {
        /// The sender's id for the request, echoed in the answer.
        request_id: u64,
    },
    /// The leader's answer: a commit index confirmed by a heartbeat round after the request arrived. Term-less.
    ReadIndexResponse {
        /// The `request_id` of the [`MessageBody::ReadIndex`] being answered.
        request_id: u64,
        /// The confirmed read index, or why none could be given.
        result: Result<Index, RemoteError>,
    },
}

impl MessageBody {
    /// Client-forwarding messages carry no term semantics: they never change a receiver's term or role.
    pub fn is_client(&self) -> bool {
        matches!(
            self,
            MessageBody::Propose { .. }
                | MessageBody::ProposeResponse { .. }
                | MessageBody::ReadIndex { .. }
                | MessageBody::ReadIndexResponse { .. }
        )
    }

    /// A short name for logs and traces.
    pub fn name(&self) -> &'static str {
        match self {
            MessageBody::PreVote { .. } => "PreVote",
            MessageBody::PreVoteResponse { .. } => "PreVoteResponse",
            MessageBody::Vote { .. } => "Vote",
            MessageBody::VoteResponse { .. } => "VoteResponse",
            MessageBody::Append { .. } => "Append",
            MessageBody::AppendResponse { .. } => "AppendResponse",
            MessageBody::Heartbeat { .. } => "Heartbeat",
            MessageBody::HeartbeatResponse { .. } => "HeartbeatResponse",
            MessageBody::InstallSnapshot { .. } => "InstallSnapshot",
            MessageBody::TimeoutNow => "TimeoutNow",
            MessageBody::Propose { .. } => "Propose",
            MessageBody::ProposeResponse { .. } => "ProposeResponse",
            MessageBody::ReadIndex { .. } => "ReadIndex",
            MessageBody::ReadIndexResponse { .. } => "ReadIndexResponse",
        }
    }
}

/// The follower's hint on rejecting an append (paper §5.3, the optimization at the end of the section).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectHint {
    /// The term of the follower's entry at the rejected `prev_index`, or 0 if its log is shorter.
    pub conflict_term: Term,
    /// The first index the follower holds with `conflict_term`; if its log is shorter, its last index + 1.
    pub conflict_index: Index,
}
