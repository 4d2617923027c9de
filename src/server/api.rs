//! What the HTTP workers and the Raft thread say to each other, and the errors a client can get.
//!
//! Status codes (the contract the README documents):
//! - 200: done. A write was committed by a quorum and applied; a read saw everything acknowledged before it.
//! - 400 bad input, 404 no such key or route, 405 wrong method, 412 a condition (`If-Match`, `If-None-Match`) failed (nothing
//!   changed; the body names the key's current index), 413 key or value too large.
//! - 503 `no_leader`, `not_leader`, `busy`, `not_committed`: the request was **not** applied; retry.
//! - 503 `leader_changed` and 504 `timeout`: the outcome is **unknown** (a write may or may not have been
//!   applied). Retrying a write is only safe if it is idempotent.
//! - 500 `internal`: a bug or a storage failure; the node logs the details.

use crate::kv::Command;
use crate::raft::{Index, NodeId, Term};
use crossbeam_channel::Sender;

/// The read consistency a client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Through the read index: reflects every write acknowledged before the read began.
    Linearizable,
    /// This node's local state, possibly behind (the seed's `relaxed=true`).
    Stale,
    /// On the leader, from its lease when it holds one (thesis §6.4.1: no heartbeat round; relies on
    /// bounded clock drift); otherwise, and on followers, exactly like `Linearizable`.
    Lease,
}

/// A request from an HTTP worker to the Raft thread. The reply goes to a one-shot channel.
pub enum ClientRequest {
    /// Propose a key-value command; answered once it is committed and applied, or fails.
    Write {
        /// The command to replicate.
        command: Command,
        /// The client's `Idempotency-Key`, if it sent one.
        token: Option<Vec<u8>>,
        /// Where the outcome goes.
        reply: Sender<Result<WriteOk, ApiError>>,
    },
    /// Read a key or a range at the given consistency.
    Read {
        /// What to read.
        query: ReadQuery,
        /// How fresh the answer must be.
        consistency: Consistency,
        /// Where the answer goes.
        reply: Sender<Result<ReadOk, ApiError>>,
    },
    /// This node's status as JSON (served by `/status`, also read by `/health`).
    Status {
        /// Where the status goes.
        reply: Sender<serde_json::Value>,
    },
    /// A membership change (leader only; the HTTP layer forwards it to the leader). `addrs` are the new
    /// member's, for `AddLearner`. Answered once the configuration entry is applied.
    Membership {
        /// The change to propose.
        change: crate::raft::MembershipChange,
        /// The new member's addresses (for `AddLearner`), recorded in the address book.
        addrs: Option<super::cluster::Addrs>,
        /// Promote the learner automatically once it has caught up.
        auto_promote: bool,
        /// Where the outcome goes (once the configuration entry is applied).
        reply: Sender<Result<WriteOk, ApiError>>,
    },
    /// Hand leadership to a voter (leader only). Answered when the transfer starts.
    Transfer {
        /// The voter that should become leader.
        target: NodeId,
        /// Where the outcome goes (once the transfer starts).
        reply: Sender<Result<(), ApiError>>,
    },
    /// The members, their addresses and, on the leader, their progress.
    Cluster {
        /// Where the cluster description goes, as JSON.
        reply: Sender<serde_json::Value>,
    },
    /// Leave gracefully: a leader hands leadership over first; then the Raft thread stops.
    Shutdown,
}

/// What a read looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadQuery {
    /// The value of one key.
    Get(Vec<u8>),
    /// Keys starting with `prefix`, strictly after `after`, at most `limit` of them.
    Scan {
        /// Only keys starting with these bytes (empty: every key).
        prefix: Vec<u8>,
        /// Only keys strictly greater than this one (the last key of the previous page).
        after: Option<Vec<u8>>,
        /// At most this many keys.
        limit: usize,
    },
}

/// One key of a scan: key, value, modify index.
pub type Item = (Vec<u8>, Vec<u8>, Index);

/// A write that was committed and applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOk {
    /// The log index of the write's entry (for a repeated idempotency token, the first use's index).
    pub index: Index,
    /// The term of the write's entry.
    pub term: Term,
    /// For deletes: whether the key existed.
    pub found: bool,
}

/// The answer to a read: the value (if any) and the applied index it was read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOk {
    /// For `Get`: the value, if the key exists.
    pub value: Option<Vec<u8>>,
    /// For `Scan`: the keys found, in order, and whether more may follow.
    pub items: Vec<Item>,
    /// For `Scan`: whether more keys match after the last one returned.
    pub more: bool,
    /// For `Get`: the key's modify index (0 when the key does not exist).
    pub modify_index: Index,
    /// The applied index of the state the read was served from.
    pub applied_index: Index,
    /// This node's current term when the read was served.
    pub term: Term,
    /// How long ago this node last heard from the leader (zero on the leader; `None`: no leader known).
    pub leader_contact: Option<std::time::Duration>,
}

/// Why a request was not served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// The request is malformed or invalid (400).
    BadRequest(String),
    /// The route does not take this method (405).
    MethodNotAllowed(String),
    /// A key, value, URL or request body exceeds its limit (413).
    TooLarge(String),
    /// No such key or route (404).
    NotFound(String),
    /// The request conflicts with the cluster's state (e.g. a membership change already under way).
    Conflict(String),
    /// A condition did not hold; nothing changed. The key's current modify index (None: absent).
    PreconditionFailed {
        /// The key's current modify index, `None` if it does not exist.
        current: Option<Index>,
    },
    /// No leader is known; nothing was applied.
    NoLeader,
    /// The request reached a node that is not the leader; nothing was applied.
    NotLeader {
        /// The leader's id, if this node knows one.
        leader: Option<NodeId>,
        /// The leader's Raft address, if known.
        leader_addr: Option<String>,
        /// The leader's HTTP address, when it has announced it to this node.
        leader_http: Option<String>,
    },
    /// The write was appended but overwritten by a new leader; it was not applied.
    NotCommitted,
    /// The leader changed while the request was in flight: outcome unknown.
    LeaderChanged,
    /// Too many requests in flight; nothing was applied.
    Busy,
    /// No answer in time: outcome unknown.
    Timeout,
    /// This node hit a storage failure (a failed write or fsync, a full disk) and stopped: outcome unknown.
    StorageFailure(String),
    /// The leader's data directory is below its free-space reserve (`--min-free-bytes`); nothing was
    /// applied.
    InsufficientStorage(String),
    /// An admin route without the right bearer token (`--admin-token-file`); nothing changed.
    Unauthorized(String),
    /// A bug or an unexpected failure (500); the message says what.
    Internal(String),
}

impl ApiError {
    /// HTTP status and a stable machine-readable code.
    pub fn status_and_code(&self) -> (u16, &'static str) {
        match self {
            ApiError::BadRequest(_) => (400, "bad_request"),
            ApiError::MethodNotAllowed(_) => (405, "method_not_allowed"),
            ApiError::TooLarge(_) => (413, "too_large"),
            ApiError::NotFound(_) => (404, "not_found"),
            ApiError::Conflict(_) => (409, "conflict"),
            ApiError::PreconditionFailed { .. } => (412, "precondition_failed"),
            ApiError::NoLeader => (503, "no_leader"),
            ApiError::NotLeader { .. } => (503, "not_leader"),
            ApiError::NotCommitted => (503, "not_committed"),
            ApiError::LeaderChanged => (503, "leader_changed"),
            ApiError::Busy => (503, "busy"),
            ApiError::Timeout => (504, "timeout"),
            ApiError::StorageFailure(_) => (500, "storage_failure"),
            ApiError::InsufficientStorage(_) => (507, "insufficient_storage"),
            ApiError::Unauthorized(_) => (401, "unauthorized"),
            ApiError::Internal(_) => (500, "internal"),
        }
    }

    /// A human-readable explanation for the client, including whether anything was applied.
    pub fn message(&self) -> String {
        match self {
            ApiError::PreconditionFailed { current } => match current {
                Some(i) => format!(
                    "the condition did not hold: the key's current index is {i}; nothing changed"
                ),
                None => {
                    "the condition did not hold: the key does not exist; nothing changed".into()
                }
            },
            ApiError::BadRequest(m)
            | ApiError::MethodNotAllowed(m)
            | ApiError::TooLarge(m)
            | ApiError::NotFound(m)
            | ApiError::Conflict(m)
            | ApiError::StorageFailure(m)
            | ApiError::InsufficientStorage(m)
            | ApiError::Unauthorized(m)
            | ApiError::Internal(m) => m.clone(),
            ApiError::NoLeader => {
                "no leader is known right now; nothing was applied, retry shortly".into()
            }
            ApiError::NotLeader { leader, .. } => format!(
                "this node is not the leader (leader: {}); nothing was applied",
                leader
                    .map(|l| l.to_string())
                    .unwrap_or_else(|| "unknown".into())
            ),
            ApiError::NotCommitted => {
                "the write was overwritten by a new leader before it committed; it was not applied"
                    .into()
            }
            ApiError::LeaderChanged => {
                "the leader changed while the request was in flight; the outcome is unknown".into()
            }
            ApiError::Busy => {
                "too many requests in flight; nothing was applied, retry shortly".into()
            }
            ApiError::Timeout => "no answer in time; the outcome is unknown".into(),
        }
    }

    /// The JSON body: `{"error":{"code":…,"message":…}}`, plus the leader when known.
    pub fn to_json(&self) -> serde_json::Value {
        let (_, code) = self.status_and_code();
        let mut err = serde_json::json!({"code": code, "message": self.message()});
        if let ApiError::NotLeader {
            leader: Some(id),
            leader_addr,
            leader_http,
        } = self
        {
            err["leader"] =
                serde_json::json!({"id": id, "raft_addr": leader_addr, "http_addr": leader_http});
        }
        if let ApiError::PreconditionFailed { current } = self {
            err["current_index"] = serde_json::json!(current);
        }
        serde_json::json!({ "error": err })
    }
}
