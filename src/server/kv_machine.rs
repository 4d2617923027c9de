//! The key-value server's state machine: [`KvStore`] behind the [`StateMachine`] interface, and the
//! translation of the HTTP layer's [`ClientRequest`]s into the Raft loop's generic [`Request`]s.
//!
//! - Commands are [`crate::kv::Command`]s in their log encoding; outputs are [`ApplyResult`]s.
//! - The store records the applied index in its own snapshot format, so entries without a command are
//!   passed on ([`KvStore::set_applied`]) and a restored snapshot must hold the state at exactly the
//!   snapshot's index.
//! - Snapshots: a clone of the store on the Raft thread, serialized by the background writer.
//! - Restoring checks every length against the configured key and value limits.
//! - The store applies an idempotency token once, so writes use exactly-once forwarding (see
//!   `raft_loop.rs`).

use super::api::{ApiError, ClientRequest, ReadOk, ReadQuery, WriteOk};
use super::request::{Committed, ReadMeta, Request};
use crate::kv::{ApplyResult, KvStore};
use crate::machine::{SnapshotWriter, StateMachine};
use crate::raft::Index;
use std::io;

/// The replicated key-value store, with the limits its snapshots are read with.
#[derive(Debug, Clone)]
pub(crate) struct KvMachine {
    /// The store itself.
    pub kv: KvStore,
    max_key: usize,
    max_value: usize,
}

impl KvMachine {
    /// An empty store whose snapshots are read with these key and value limits (bytes).
    pub(crate) fn new(max_key: usize, max_value: usize) -> Self {
        KvMachine {
            kv: KvStore::new(),
            max_key,
            max_value,
        }
    }
}

impl StateMachine for KvMachine {
    type Output = ApplyResult;

    fn apply(&mut self, index: Index, command: &[u8]) -> ApplyResult {
        self.kv.apply(index, command)
    }

    fn skip(&mut self, index: Index) {
        self.kv.set_applied(index);
    }

    fn snapshot(&self) -> SnapshotWriter {
        let copy = self.kv.clone();
        Box::new(move |w| copy.write_snapshot(w))
    }

    fn restore(&mut self, index: Index, snapshot: &mut dyn io::Read) -> io::Result<()> {
        let kv = KvStore::read_snapshot(snapshot, self.max_key, self.max_value)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        if kv.applied() != index {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the snapshot at {index} holds a state applied to {}",
                    kv.applied()
                ),
            ));
        }
        self.kv = kv;
        Ok(())
    }
}

impl From<ClientRequest> for Request<KvMachine> {
    fn from(req: ClientRequest) -> Self {
        match req {
            ClientRequest::Write {
                command,
                token,
                reply,
            } => Request::Propose {
                encode: Box::new(move |token| match token {
                    Some(t) => command.encode_with_token(t),
                    None => command.encode(),
                }),
                token,
                tokens: true,
                reply: Box::new(move |r| {
                    let _ = reply.send(r.and_then(write_answer));
                }),
            },
            ClientRequest::Read {
                query,
                consistency,
                reply,
            } => Request::Read {
                consistency,
                read: Box::new(move |r| {
                    let _ = reply.send(r.map(|(m, meta)| read_local(&m.kv, &query, meta)));
                }),
            },
            ClientRequest::Status { reply } => Request::Status {
                reply: Box::new(move |mut status, m| {
                    status["keys"] = m.kv.len().into();
                    status["data_bytes"] = m.kv.data_bytes().into();
                    status["stats"]["idempotency_tokens"] = m.kv.tokens().into();
                    let _ = reply.send(status);
                }),
            },
            ClientRequest::Membership {
                change,
                addrs,
                auto_promote,
                reply,
            } => Request::Membership {
                change,
                addrs,
                auto_promote,
                reply,
            },
            ClientRequest::Transfer { target, reply } => Request::Transfer { target, reply },
            ClientRequest::Cluster { reply } => Request::Cluster { reply },
            ClientRequest::Shutdown => Request::Shutdown,
        }
    }
}

/// What a client hears about its applied write.
fn write_answer(c: Committed<ApplyResult>) -> Result<WriteOk, ApiError> {
    let (index, term) = (c.index, c.term);
    match c.output {
        // A configuration entry (membership changes answer like writes).
        None => Ok(WriteOk {
            index,
            term,
            found: true,
        }),
        // For a repeated token this is the first application's index.
        Some(ApplyResult::Ok { index: first }) => Ok(WriteOk {
            index: first,
            term,
            found: true,
        }),
        Some(ApplyResult::NotFound) => Ok(WriteOk {
            index,
            term,
            found: false,
        }),
        Some(ApplyResult::ConditionFailed { current }) => {
            Err(ApiError::PreconditionFailed { current })
        }
        Some(ApplyResult::Invalid(e)) => Err(ApiError::Internal(format!("invalid command: {e}"))),
    }
}

fn read_local(kv: &KvStore, query: &ReadQuery, meta: ReadMeta) -> ReadOk {
    let mut ok = ReadOk {
        value: None,
        items: Vec::new(),
        more: false,
        modify_index: 0,
        applied_index: meta.applied_index,
        term: meta.term,
        leader_contact: meta.leader_contact,
    };
    match query {
        ReadQuery::Get(key) => {
            if let Some(v) = kv.get(key) {
                ok.value = Some(v.value.clone());
                ok.modify_index = v.modify_index;
            }
        }
        ReadQuery::Scan {
            prefix,
            after,
            limit,
        } => {
            // One more than asked tells whether another page exists.
            let found = kv.scan(prefix, after.as_deref(), limit.saturating_add(1));
            ok.more = found.len() > *limit;
            ok.items = found
                .into_iter()
                .take(*limit)
                .map(|(k, v)| (k.to_vec(), v.value.clone(), v.modify_index))
                .collect();
        }
    }
    ok
}
