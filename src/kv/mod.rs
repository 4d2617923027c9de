//! The key-value state machine that Raft replicates.
//!
//! Rules this module keeps:
//! - `apply` is deterministic: the same commands at the same indexes give the same map on every node.
//!   Nothing here reads a clock, a random number or the disk.
//! - Commands are validated when decoded; an undecodable command (which a correct leader never appends) is
//!   applied as a no-op that reports an error, so every node still agrees on the state.
//! - Every key remembers the index of the entry that last modified it (its modify index), later used for
//!   ETags and compare-and-swap.
//!
//! Exactly-once (thesis §6.3): a command may carry an idempotency token. The first entry with a token is
//! applied and its result remembered; a later entry with the same token (a retry after a timeout or a
//! leader change) changes nothing and returns the remembered result. Tokens are forgotten
//! [`IDEMPOTENCY_WINDOW`] entries after their first use, by log index, so every node forgets at the same
//! entry.
//!
//! Command encoding (part of the log format): a version byte (1), a tag byte, then the fields with
//! [`crate::codec`]: unconditional `Put` = tag 1, key, value; unconditional `Delete` = tag 2, key;
//! conditional `Put` = tag 3, key, value, condition; conditional `Delete` = tag 4, key, condition. A
//! condition is a byte (1 = the key must be absent, 2 = its modify index must equal the `u64` that follows).
//! A token prefix (tag 5, token bytes) may come before any command's tag.
//!
//! Snapshots: [`KvStore::write_snapshot`] and [`KvStore::read_snapshot`] (format in `kv/snapshot.rs`).

use crate::codec::{DecodeError, Reader, Writer};
use crate::raft::Index;

mod chunked;
mod snapshot;

pub use chunked::ChunkedMap;

const COMMAND_VERSION: u8 = 1;
const TAG_TOKEN: u8 = 5;
/// Longest accepted idempotency token.
pub const MAX_TOKEN_BYTES: usize = 128;
/// Idempotency tokens are remembered for this many log entries after the entry that first used them.
/// Expiry by log index is deterministic: every node forgets a token at the same entry.
pub const IDEMPOTENCY_WINDOW: Index = 100_000;

/// A precondition on the key's current state, checked when the command is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// No condition.
    Any,
    /// The key must not exist (create only).
    Absent,
    /// The key must exist with this modify index (compare-and-swap).
    Index(Index),
}

/// A state machine command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Store `value` under `key` if `cond` holds.
    Put {
        /// The key to write.
        key: Vec<u8>,
        /// The value to store.
        value: Vec<u8>,
        /// The precondition on the key's current state.
        cond: Condition,
    },
    /// Remove `key` if `cond` holds.
    Delete {
        /// The key to remove.
        key: Vec<u8>,
        /// The precondition on the key's current state.
        cond: Condition,
    },
}

fn put_cond(w: &mut Writer, c: Condition) {
    match c {
        Condition::Any => unreachable!("unconditional commands use their own tags"),
        Condition::Absent => w.u8(1),
        Condition::Index(i) => {
            w.u8(2);
            w.u64(i);
        }
    }
}

fn get_cond(r: &mut Reader) -> Result<Condition, DecodeError> {
    match r.u8()? {
        1 => Ok(Condition::Absent),
        2 => Ok(Condition::Index(r.u64()?)),
        t => Err(DecodeError(format!("unknown condition {t}"))),
    }
}

impl Command {
    /// Encodes the command as a log entry payload (the format in the module docs), without an idempotency
    /// token.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(COMMAND_VERSION);
        self.encode_body(&mut w);
        w.into_inner()
    }

    /// Encodes the command tagged with an idempotency token: applying it again with the same token
    /// (within the window) returns the first result and changes nothing.
    pub fn encode_with_token(&self, token: &[u8]) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(COMMAND_VERSION);
        w.u8(TAG_TOKEN);
        w.bytes(token);
        self.encode_body(&mut w);
        w.into_inner()
    }

    fn encode_body(&self, w: &mut Writer) {
        match self {
            Command::Put {
                key,
                value,
                cond: Condition::Any,
            } => {
                w.u8(1);
                w.bytes(key);
                w.bytes(value);
            }
            Command::Delete {
                key,
                cond: Condition::Any,
            } => {
                w.u8(2);
                w.bytes(key);
            }
            Command::Put { key, value, cond } => {
                w.u8(3);
                w.bytes(key);
                w.bytes(value);
                put_cond(w, *cond);
            }
            Command::Delete { key, cond } => {
                w.u8(4);
                w.bytes(key);
                put_cond(w, *cond);
            }
        }
    }

    /// Decodes a command, discarding any idempotency token; errors on an unknown version or tag, a malformed
    /// field, trailing bytes or a token that is empty or longer than [`MAX_TOKEN_BYTES`].
    pub fn decode(buf: &[u8]) -> Result<Command, DecodeError> {
        Ok(Self::decode_with_token(buf)?.1)
    }

    /// Decodes a command and its idempotency token, if it carries one.
    pub fn decode_with_token(buf: &[u8]) -> Result<(Option<Vec<u8>>, Command), DecodeError> {
        let mut r = Reader::new(buf);
        let version = r.u8()?;
        if version != COMMAND_VERSION {
            return Err(DecodeError(format!("unknown command version {version}")));
        }
        let mut tag = r.u8()?;
        let mut token = None;
        if tag == TAG_TOKEN {
            let t = r.bytes()?;
            if t.is_empty() || t.len() > MAX_TOKEN_BYTES {
                return Err(DecodeError(format!(
                    "idempotency token of {} bytes",
                    t.len()
                )));
            }
            token = Some(t);
            tag = r.u8()?;
        }
        let cmd = match tag {
            1 => Command::Put {
                key: r.bytes()?,
                value: r.bytes()?,
                cond: Condition::Any,
            },
            2 => Command::Delete {
                key: r.bytes()?,
                cond: Condition::Any,
            },
            3 => Command::Put {
                key: r.bytes()?,
                value: r.bytes()?,
                cond: get_cond(&mut r)?,
            },
            4 => Command::Delete {
                key: r.bytes()?,
                cond: get_cond(&mut r)?,
            },
            t => return Err(DecodeError(format!("unknown command tag {t}"))),
        };
        r.finish()?;
        Ok((token, cmd))
    }
}

/// What applying a command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyResult {
    /// The command took effect at this index.
    Ok {
        /// The log index of the entry that applied it (for a repeated token, the first use's index).
        index: Index,
    },
    /// A delete of a key that does not exist.
    NotFound,
    /// The condition did not hold; nothing changed. Carries the key's current modify index (None: absent).
    ConditionFailed {
        /// The key's modify index, `None` if it does not exist.
        current: Option<Index>,
    },
    /// The entry did not hold a valid command.
    Invalid(String),
}

/// The index of a `token_order` key (written by `apply` as 8 big-endian bytes).
fn order_index(key: &[u8]) -> Index {
    key.try_into().map(Index::from_be_bytes).unwrap_or(0)
}

/// A stored value and the index of the entry that last wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The stored bytes.
    pub value: Vec<u8>,
    /// The log index of the entry that last wrote this key (used for ETags and compare-and-swap).
    pub modify_index: Index,
}

/// The replicated map. `Clone` is cheap (the maps inside are chunked and copy-on-write), so a snapshot
/// takes a frozen copy on the Raft thread and writes it from another; comparable (equal stores answer
/// every future command alike).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KvStore {
    map: ChunkedMap<Versioned>,
    applied: Index,
    /// Idempotency token -> (index of its first use, result), and the tokens in order of first use
    /// (keyed by that index, big-endian, so key order is index order). Both are chunked maps so that a
    /// snapshot's copy of the store costs pointers, not the table.
    tokens: ChunkedMap<(Index, ApplyResult)>,
    token_order: ChunkedMap<Vec<u8>>,
    /// Sum of key and value bytes, for status and memory accounting.
    data_bytes: usize,
}

impl KvStore {
    /// An empty store with nothing applied (applied index 0).
    pub fn new() -> Self {
        Self::default()
    }

    /// The index of the last entry applied (commands and no-ops alike).
    pub fn applied(&self) -> Index {
        self.applied
    }

    /// Records that entries up to `index` (e.g. no-ops) were applied.
    pub fn set_applied(&mut self, index: Index) {
        assert!(
            index >= self.applied,
            "apply regression: {index} < {}",
            self.applied
        );
        self.applied = index;
    }

    /// Number of keys stored.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no keys are stored.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Total bytes of all keys and values stored.
    pub fn data_bytes(&self) -> usize {
        self.data_bytes
    }

    /// The value and modify index stored under `key`, if any.
    pub fn get(&self, key: &[u8]) -> Option<&Versioned> {
        self.map.get(key)
    }

    /// Up to `limit` entries whose key starts with `prefix`, in key order, strictly after `after` if given.
    pub fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Vec<(&[u8], &Versioned)> {
        use std::ops::Bound;
        let lower = match after {
            Some(a) if a >= prefix => Bound::Excluded(a),
            _ => Bound::Included(prefix),
        };
        self.map
            .range_from(lower)
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.as_slice(), v))
            .collect()
    }

    /// Applies the command bytes of the entry at `index`.
    pub fn apply(&mut self, index: Index, data: &[u8]) -> ApplyResult {
        assert!(
            index > self.applied,
            "entry {index} applied twice (applied {})",
            self.applied
        );
        self.applied = index;
        // Forget tokens that left the window (deterministic: by log index).
        while let Some((first, _)) = self.token_order.first() {
            if order_index(first) + IDEMPOTENCY_WINDOW >= index {
                break;
            }
            let first = first.clone();
            if let Some(t) = self.token_order.remove(&first) {
                self.tokens.remove(&t);
            }
        }
        let (token, cmd) = match Command::decode_with_token(data) {
            Ok(c) => c,
            Err(e) => return ApplyResult::Invalid(e.to_string()),
        };
        let Some(token) = token else {
            return self.apply_command(index, cmd);
        };
        if let Some((_, first)) = self.tokens.get(&token) {
            return first.clone();
        }
        let result = self.apply_command(index, cmd);
        self.tokens.insert(token.clone(), (index, result.clone()));
        self.token_order.insert(index.to_be_bytes().to_vec(), token);
        result
    }

    /// Idempotency tokens currently remembered.
    pub fn tokens(&self) -> usize {
        self.tokens.len()
    }

    fn apply_command(&mut self, index: Index, cmd: Command) -> ApplyResult {
        let (key, cond) = match &cmd {
            Command::Put { key, cond, .. } | Command::Delete { key, cond } => (key, *cond),
        };
        let current = self.map.get(key).map(|v| v.modify_index);
        let holds = match cond {
            Condition::Any => true,
            Condition::Absent => current.is_none(),
            Condition::Index(i) => current == Some(i),
        };
        if !holds {
            return ApplyResult::ConditionFailed { current };
        }
        match cmd {
            Command::Put { key, value, .. } => {
                let (key_len, value_len) = (key.len(), value.len());
                let old = self.map.insert(
                    key,
                    Versioned {
                        value,
                        modify_index: index,
                    },
                );
                // The key is counted once; a replaced value is uncounted.
                match old {
                    Some(old) => self.data_bytes = self.data_bytes - old.value.len() + value_len,
                    None => self.data_bytes += key_len + value_len,
                }
                ApplyResult::Ok { index }
            }
            Command::Delete { key, .. } => match self.map.remove(&key) {
                Some(old) => {
                    self.data_bytes -= key.len() + old.value.len();
                    ApplyResult::Ok { index }
                }
                None => ApplyResult::NotFound,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_and_reject_garbage() {
        for c in [
            Command::Put {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                cond: Condition::Any,
            },
            Command::Delete {
                key: vec![0, 255],
                cond: Condition::Any,
            },
            Command::Put {
                key: b"k".to_vec(),
                value: vec![],
                cond: Condition::Absent,
            },
            Command::Delete {
                key: b"k".to_vec(),
                cond: Condition::Index(u64::MAX),
            },
        ] {
            assert_eq!(Command::decode(&c.encode()).unwrap(), c);
        }
        assert!(Command::decode(&[]).is_err());
        assert!(Command::decode(&[9, 1]).is_err());
        assert!(Command::decode(&[1, 7]).is_err());
        let mut buf = Command::Delete {
            key: b"k".to_vec(),
            cond: Condition::Any,
        }
        .encode();
        buf.push(0);
        assert!(Command::decode(&buf).is_err(), "trailing bytes");
    }

    #[test]
    fn apply_tracks_values_indexes_and_bytes() {
        let mut kv = KvStore::new();
        let put = |k: &str, v: &str| {
            Command::Put {
                key: k.into(),
                value: v.into(),
                cond: Condition::Any,
            }
            .encode()
        };
        assert_eq!(kv.apply(1, &put("a", "xyz")), ApplyResult::Ok { index: 1 });
        assert_eq!(kv.data_bytes(), 4);
        assert_eq!(kv.apply(2, &put("a", "q")), ApplyResult::Ok { index: 2 });
        assert_eq!(kv.get(b"a").unwrap().value, b"q");
        assert_eq!(kv.get(b"a").unwrap().modify_index, 2);
        assert_eq!(kv.data_bytes(), 2);
        let del = Command::Delete {
            key: b"a".to_vec(),
            cond: Condition::Any,
        }
        .encode();
        assert_eq!(kv.apply(3, &del), ApplyResult::Ok { index: 3 });
        assert_eq!(kv.apply(4, &del), ApplyResult::NotFound);
        assert_eq!(kv.data_bytes(), 0);
        assert!(matches!(kv.apply(5, b"junk"), ApplyResult::Invalid(_)));
        assert_eq!(kv.applied(), 5);
    }

    #[test]
    fn conditions_compare_and_swap_and_create_only() {
        let mut kv = KvStore::new();
        let put = |k: &str, v: &str, cond| {
            Command::Put {
                key: k.into(),
                value: v.into(),
                cond,
            }
            .encode()
        };
        assert_eq!(
            kv.apply(1, &put("a", "1", Condition::Absent)),
            ApplyResult::Ok { index: 1 }
        );
        assert_eq!(
            kv.apply(2, &put("a", "2", Condition::Absent)),
            ApplyResult::ConditionFailed { current: Some(1) }
        );
        assert_eq!(
            kv.apply(3, &put("a", "3", Condition::Index(2))),
            ApplyResult::ConditionFailed { current: Some(1) }
        );
        assert_eq!(
            kv.apply(4, &put("a", "4", Condition::Index(1))),
            ApplyResult::Ok { index: 4 }
        );
        assert_eq!(kv.get(b"a").unwrap().value, b"4");
        let del = |cond| {
            Command::Delete {
                key: b"a".to_vec(),
                cond,
            }
            .encode()
        };
        assert_eq!(
            kv.apply(5, &del(Condition::Index(1))),
            ApplyResult::ConditionFailed { current: Some(4) }
        );
        assert_eq!(
            kv.apply(6, &del(Condition::Index(4))),
            ApplyResult::Ok { index: 6 }
        );
        assert_eq!(
            kv.apply(7, &put("a", "x", Condition::Index(4))),
            ApplyResult::ConditionFailed { current: None }
        );
        assert_eq!(kv.applied(), 7);
    }

    #[test]
    fn scan_by_prefix_with_cursor() {
        let mut kv = KvStore::new();
        for (i, k) in ["a", "b/1", "b/2", "b/3", "c"].iter().enumerate() {
            let cmd = Command::Put {
                key: k.as_bytes().to_vec(),
                value: b"v".to_vec(),
                cond: Condition::Any,
            };
            kv.apply(i as u64 + 1, &cmd.encode());
        }
        let keys = |v: Vec<(&[u8], &Versioned)>| -> Vec<String> {
            v.into_iter()
                .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
                .collect()
        };
        assert_eq!(keys(kv.scan(b"b/", None, 10)), ["b/1", "b/2", "b/3"]);
        assert_eq!(keys(kv.scan(b"b/", None, 2)), ["b/1", "b/2"]);
        assert_eq!(keys(kv.scan(b"b/", Some(b"b/2"), 10)), ["b/3"]);
        assert_eq!(keys(kv.scan(b"", Some(b"b/3"), 10)), ["c"]);
        assert!(kv.scan(b"z", None, 10).is_empty());
    }

    #[test]
    fn idempotency_tokens_apply_once_and_expire_by_index() {
        let mut kv = KvStore::new();
        let cas = Command::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            cond: Condition::Absent,
        };
        let first = kv.apply(1, &cas.encode_with_token(b"t1"));
        assert_eq!(first, ApplyResult::Ok { index: 1 });
        // The retry changes nothing and answers like the first time (not 412).
        assert_eq!(kv.apply(2, &cas.encode_with_token(b"t1")), first);
        assert_eq!(kv.get(b"k").unwrap().modify_index, 1);
        // Another token is another request.
        assert_eq!(
            kv.apply(3, &cas.encode_with_token(b"t2")),
            ApplyResult::ConditionFailed { current: Some(1) }
        );
        assert_eq!(kv.tokens(), 2);
        // Past the window the token is forgotten, at the same index on every node.
        let later = 1 + IDEMPOTENCY_WINDOW + 1;
        kv.set_applied(later - 1);
        let del = Command::Delete {
            key: b"k".to_vec(),
            cond: Condition::Any,
        };
        kv.apply(later, &del.encode());
        assert_eq!(kv.tokens(), 1, "t1 expired, t2 (used at 3) not yet");
        assert_eq!(
            kv.apply(later + 1, &cas.encode_with_token(b"t1")),
            ApplyResult::Ok { index: later + 1 }
        );
        // Tokens round-trip and are bounded.
        let (t, c) = Command::decode_with_token(&cas.encode_with_token(b"abc")).unwrap();
        assert_eq!((t.as_deref(), c), (Some(&b"abc"[..]), cas.clone()));
        assert!(Command::decode(&cas.encode_with_token(&[b'x'; MAX_TOKEN_BYTES + 1])).is_err());
        assert!(Command::decode(&cas.encode_with_token(b"")).is_err());
    }
}
