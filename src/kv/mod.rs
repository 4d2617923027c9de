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
//! Command encoding (part of the log format): a version byte (1), a tag byte, then the fields with
//! [`crate::codec`]: `Put` = tag 1, key bytes, value bytes; `Delete` = tag 2, key bytes.

use crate::codec::{DecodeError, Reader, Writer};
use crate::raft::Index;
use std::collections::BTreeMap;

const COMMAND_VERSION: u8 = 1;

/// A state machine command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Put { key: Vec<u8>, value: Vec<u8> },
    Delete { key: Vec<u8> },
}

impl Command {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(COMMAND_VERSION);
        match self {
            Command::Put { key, value } => {
                w.u8(1);
                w.bytes(key);
                w.bytes(value);
            }
            Command::Delete { key } => {
                w.u8(2);
                w.bytes(key);
            }
        }
        w.into_inner()
    }

    pub fn decode(buf: &[u8]) -> Result<Command, DecodeError> {
        let mut r = Reader::new(buf);
        let version = r.u8()?;
        if version != COMMAND_VERSION {
            return Err(DecodeError(format!("unknown command version {version}")));
        }
        let cmd = match r.u8()? {
            1 => Command::Put {
                key: r.bytes()?,
                value: r.bytes()?,
            },
            2 => Command::Delete { key: r.bytes()? },
            t => return Err(DecodeError(format!("unknown command tag {t}"))),
        };
        r.finish()?;
        Ok(cmd)
    }
}

/// What applying a command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyResult {
    /// The command took effect at this index.
    Ok { index: Index },
    /// A delete of a key that does not exist.
    NotFound,
    /// The entry did not hold a valid command.
    Invalid(String),
}

/// A stored value and the index of the entry that last wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub value: Vec<u8>,
    pub modify_index: Index,
}

/// The replicated map.
#[derive(Debug, Default, Clone)]
pub struct KvStore {
    map: BTreeMap<Vec<u8>, Versioned>,
    applied: Index,
    /// Sum of key and value bytes, for status and memory accounting.
    data_bytes: usize,
}

impl KvStore {
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

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn data_bytes(&self) -> usize {
        self.data_bytes
    }

    pub fn get(&self, key: &[u8]) -> Option<&Versioned> {
        self.map.get(key)
    }

    /// Applies the command bytes of the entry at `index`.
    pub fn apply(&mut self, index: Index, data: &[u8]) -> ApplyResult {
        assert!(
            index > self.applied,
            "entry {index} applied twice (applied {})",
            self.applied
        );
        self.applied = index;
        let cmd = match Command::decode(data) {
            Ok(c) => c,
            Err(e) => return ApplyResult::Invalid(e.to_string()),
        };
        match cmd {
            Command::Put { key, value } => {
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
            Command::Delete { key } => match self.map.remove(&key) {
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
            },
            Command::Delete { key: vec![0, 255] },
        ] {
            assert_eq!(Command::decode(&c.encode()).unwrap(), c);
        }
        assert!(Command::decode(&[]).is_err());
        assert!(Command::decode(&[9, 1]).is_err());
        assert!(Command::decode(&[1, 7]).is_err());
        let mut buf = Command::Delete { key: b"k".to_vec() }.encode();
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
            }
            .encode()
        };
        assert_eq!(kv.apply(1, &put("a", "xyz")), ApplyResult::Ok { index: 1 });
        assert_eq!(kv.data_bytes(), 4);
        assert_eq!(kv.apply(2, &put("a", "q")), ApplyResult::Ok { index: 2 });
        assert_eq!(kv.get(b"a").unwrap().value, b"q");
        assert_eq!(kv.get(b"a").unwrap().modify_index, 2);
        assert_eq!(kv.data_bytes(), 2);
        let del = Command::Delete { key: b"a".to_vec() }.encode();
        assert_eq!(kv.apply(3, &del), ApplyResult::Ok { index: 3 });
        assert_eq!(kv.apply(4, &del), ApplyResult::NotFound);
        assert_eq!(kv.data_bytes(), 0);
        assert!(matches!(kv.apply(5, b"junk"), ApplyResult::Invalid(_)));
        assert_eq!(kv.applied(), 5);
    }
}
