//! What the Raft thread is asked to do, independent of the state machine's commands and queries.
//!
//! The Raft loop is generic over the [`StateMachine`] and takes [`Request`]s: a proposal is bytes (built by
//! the caller's encoder), a read is a function of the state machine run once the read is safe, and answers
//! go back through one-shot callbacks. The key-value server's [`super::api::ClientRequest`] converts into a
//! `Request<KvMachine>` (see `kv_machine.rs`); the embedded node ([`crate::embed`]) builds them directly.

use super::api::{ApiError, Consistency, WriteOk};
use super::cluster::Addrs;
use crate::machine::StateMachine;
use crate::raft::{Index, MembershipChange, NodeId, Term};
use crossbeam_channel::Sender;
use std::time::Duration;

/// A proposal's entry was committed (in the term it was appended in) and applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Committed<O> {
    /// The entry's log index.
    pub index: Index,
    /// The term the entry was appended and committed in.
    pub term: Term,
    /// What applying the command gave; `None` for an entry without a command (a membership change).
    pub output: Option<O>,
}

/// Where a read was served: the applied index it saw, the term, and how fresh the leader contact is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReadMeta {
    /// The applied index of the state the read saw.
    pub applied_index: Index,
    /// This node's current term when the read was served.
    pub term: Term,
    /// How long ago this node last heard from the leader (zero on the leader; `None`: no leader known).
    pub leader_contact: Option<Duration>,
}

/// Answers a proposal (once).
pub(crate) type WriteReply<O> = Box<dyn FnOnce(Result<Committed<O>, ApiError>) + Send>;
/// Runs a read against the state machine once it is safe, or reports why it cannot be served.
pub(crate) type ReadFn<S> = Box<dyn FnOnce(Result<(&S, ReadMeta), ApiError>) + Send>;
/// Completes the node's status (the runtime's part, as JSON) with the state machine's part.
pub(crate) type StatusFn<S> = Box<dyn FnOnce(serde_json::Value, &S) + Send>;
/// Encodes a command, with an idempotency token when given one.
pub(crate) type Encoder = Box<dyn FnOnce(Option<&[u8]>) -> Vec<u8> + Send>;

/// A request to the Raft thread.
pub(crate) enum Request<S: StateMachine> {
    /// Propose a command; answered once its entry is applied (or definitely not, or past the deadline).
    Propose {
        encode: Encoder,
        /// The client's idempotency token, if any.
        token: Option<Vec<u8>>,
        /// The state machine applies a token once (exactly-once): a forwarded proposal without a token
        /// gets one generated, and is proposed again with it after a leader change. Without tokens a
        /// proposal lost in a leader change is answered `leader_changed` (outcome unknown).
        tokens: bool,
        reply: WriteReply<S::Output>,
    },
    Read {
        consistency: Consistency,
        read: ReadFn<S>,
    },
    Status {
        reply: StatusFn<S>,
    },
    Membership {
        change: MembershipChange,
        addrs: Option<Addrs>,
        auto_promote: bool,
        reply: Sender<Result<WriteOk, ApiError>>,
    },
    Transfer {
        target: NodeId,
        reply: Sender<Result<(), ApiError>>,
    },
    Cluster {
        reply: Sender<serde_json::Value>,
    },
    /// Leave gracefully (see `admin_loop.rs`).
    Shutdown,
}

impl<S: StateMachine> Request<S> {
    /// Answers the request with `err`, if it waits for an answer.
    pub(crate) fn fail(self, err: ApiError) {
        match self {
            Request::Propose { reply, .. } => reply(Err(err)),
            Request::Read { read, .. } => read(Err(err)),
            Request::Membership { reply, .. } => {
                let _ = reply.send(Err(err));
            }
            Request::Transfer { reply, .. } => {
                let _ = reply.send(Err(err));
            }
            Request::Status { .. } | Request::Cluster { .. } | Request::Shutdown => {}
        }
    }
}
