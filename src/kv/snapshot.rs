//! The key-value store's snapshot encoding: the body of a snapshot file (see [`crate::storage`]).
//!
//! # Format
//! Little-endian, fixed-width integers; byte strings are a `u32` length and the bytes:
//!
//! ```text
//! magic "NIMBKVS" | u8 version (1)
//! u64 applied index
//! u64 key count, then per key in strictly increasing key order:
//!     key bytes | value bytes | u64 modify index
//! u64 token count, then per idempotency token in order of first use:
//!     token bytes | u64 index of first use | result
//! end of input
//! ```
//!
//! A result is a tag byte and its fields: 1 = `Ok`, `u64` index; 2 = `NotFound`; 3 = `ConditionFailed`,
//! then 0 (absent) or 1 and a `u64` modify index; 4 = `Invalid`, UTF-8 message bytes.
//!
//! # Rules
//! - The snapshot holds everything [`KvStore::apply`] reads, including each token's index of first use
//!   and the tokens' order, so a restored store answers every later `apply` exactly as the original.
//!   The byte count ([`KvStore::data_bytes`]) is recomputed.
//! - Writing streams: memory use does not grow with the store (a 64 KiB batch at a time).
//! - Reading streams from any [`Read`] (pass a buffered one) and trusts nothing: lengths are checked
//!   against the caller's key and value limits before anything is allocated, counts are never used to
//!   pre-allocate (a false count only runs into the end of the input), keys must be strictly increasing,
//!   modify and token indexes must lie in `1..=applied`, tokens must be valid, unique, in increasing order
//!   of first use and within one [`IDEMPOTENCY_WINDOW`] of each other, and the input must end right after
//!   the last token. Errors name the byte offset. No input can make it panic.

use super::ChunkedMap;
use super::{ApplyResult, KvStore, Versioned, IDEMPOTENCY_WINDOW, MAX_TOKEN_BYTES};
use crate::codec::DecodeError;
use crate::raft::Index;
use std::io::{self, Read, Write};

const MAGIC: &[u8; 7] = b"NIMBKVS";
const VERSION: u8 = 1;
/// Longest `Invalid` message accepted in a remembered result.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Batch size for writing.
const BATCH: usize = 64 * 1024;

const RES_OK: u8 = 1;
const RES_NOT_FOUND: u8 = 2;
const RES_CONDITION_FAILED: u8 = 3;
const RES_INVALID: u8 = 4;

fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) -> io::Result<()> {
    let len = u32::try_from(b.len()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("byte string of {} bytes is too long to encode", b.len()),
        )
    })?;
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(b);
    Ok(())
}

fn put_result(buf: &mut Vec<u8>, r: &ApplyResult) -> io::Result<()> {
    match r {
        ApplyResult::Ok { index } => {
            buf.push(RES_OK);
            buf.extend_from_slice(&index.to_le_bytes());
        }
        ApplyResult::NotFound => buf.push(RES_NOT_FOUND),
        ApplyResult::ConditionFailed { current } => {
            buf.push(RES_CONDITION_FAILED);
            match current {
                None => buf.push(0),
                Some(i) => {
                    buf.push(1);
                    buf.extend_from_slice(&i.to_le_bytes());
                }
            }
        }
        ApplyResult::Invalid(m) => {
            buf.push(RES_INVALID);
            put_bytes(buf, m.as_bytes())?;
        }
    }
    Ok(())
}

/// A reader that counts bytes for error messages.
struct Input<'a> {
    r: &'a mut dyn Read,
    pos: u64,
}

impl Input<'_> {
    fn err(&self, msg: impl std::fmt::Display) -> DecodeError {
        DecodeError(format!("KV snapshot at byte {}: {msg}", self.pos))
    }

    fn exact(&mut self, buf: &mut [u8], what: &str) -> Result<(), DecodeError> {
        match self.r.read_exact(buf) {
            Ok(()) => {
                self.pos += buf.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Err(self.err(format!("input ends inside {what}")))
            }
            Err(e) => Err(self.err(format!("reading {what}: {e}"))),
        }
    }

    fn u8(&mut self, what: &str) -> Result<u8, DecodeError> {
        let mut b = [0u8; 1];
        self.exact(&mut b, what)?;
        Ok(b[0])
    }

    fn u32(&mut self, what: &str) -> Result<u32, DecodeError> {
        let mut b = [0u8; 4];
        self.exact(&mut b, what)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self, what: &str) -> Result<u64, DecodeError> {
        let mut b = [0u8; 8];
        self.exact(&mut b, what)?;
        Ok(u64::from_le_bytes(b))
    }

    /// A byte string of at most `max` bytes: the length is checked before allocating.
    fn bytes(&mut self, max: usize, what: &str) -> Result<Vec<u8>, DecodeError> {
        let len = self.u32(what)? as usize;
        if len > max {
            return Err(self.err(format!("{what} of {len} bytes exceeds the limit of {max}")));
        }
        let mut v = vec![0u8; len];
        self.exact(&mut v, what)?;
        Ok(v)
    }

    /// An index in `1..=applied`.
    fn index(&mut self, applied: Index, what: &str) -> Result<Index, DecodeError> {
        let i = self.u64(what)?;
        if i == 0 || i > applied {
            return Err(self.err(format!("{what} {i} outside 1..={applied}")));
        }
        Ok(i)
    }

    fn result(&mut self, applied: Index) -> Result<ApplyResult, DecodeError> {
        Ok(match self.u8("a result tag")? {
            RES_OK => ApplyResult::Ok {
                index: self.index(applied, "result index")?,
            },
            RES_NOT_FOUND => ApplyResult::NotFound,
            RES_CONDITION_FAILED => ApplyResult::ConditionFailed {
                current: match self.u8("a condition result")? {
                    0 => None,
                    1 => Some(self.index(applied, "current modify index")?),
                    b => return Err(self.err(format!("bad presence byte {b}"))),
                },
            },
            RES_INVALID => {
                let m = self.bytes(MAX_MESSAGE_BYTES, "an error message")?;
                ApplyResult::Invalid(
                    String::from_utf8(m).map_err(|_| self.err("error message is not UTF-8"))?,
                )
            }
            t => return Err(self.err(format!("unknown result tag {t}"))),
        })
    }
}

impl KvStore {
    /// Streams the whole state (see the module docs for the format) to `w`; pass a buffered writer.
    pub fn write_snapshot(&self, w: &mut dyn Write) -> io::Result<()> {
        let mut buf = Vec::with_capacity(BATCH + 1024);
        buf.extend_from_slice(MAGIC);
        buf.push(VERSION);
        buf.extend_from_slice(&self.applied.to_le_bytes());
        buf.extend_from_slice(&(self.map.len() as u64).to_le_bytes());
        for (k, v) in self.map.iter() {
            put_bytes(&mut buf, k)?;
            put_bytes(&mut buf, &v.value)?;
            buf.extend_from_slice(&v.modify_index.to_le_bytes());
            if buf.len() >= BATCH {
                w.write_all(&buf)?;
                buf.clear();
            }
        }
        buf.extend_from_slice(&(self.token_order.len() as u64).to_le_bytes());
        for (_, token) in self.token_order.iter() {
            let Some((index, result)) = self.tokens.get(token) else {
                return Err(io::Error::other(
                    "idempotency token table inconsistent (a bug): token missing its result",
                ));
            };
            put_bytes(&mut buf, token)?;
            buf.extend_from_slice(&index.to_le_bytes());
            put_result(&mut buf, result)?;
            if buf.len() >= BATCH {
                w.write_all(&buf)?;
                buf.clear();
            }
        }
        w.write_all(&buf)
    }

    /// Reads a state written by [`KvStore::write_snapshot`], refusing keys over `max_key` bytes, values
    /// over `max_value` bytes, and anything inconsistent (see the module docs). Reads `r` to its end.
    pub fn read_snapshot(
        r: &mut dyn Read,
        max_key: usize,
        max_value: usize,
    ) -> Result<KvStore, DecodeError> {
        let mut inp = Input { r, pos: 0 };
        let mut magic = [0u8; 8];
        inp.exact(&mut magic, "the header")?;
        if &magic[..7] != MAGIC {
            return Err(DecodeError("not a KV snapshot (bad magic)".into()));
        }
        if magic[7] != VERSION {
            return Err(DecodeError(format!(
                "unsupported KV snapshot version {} (this build reads {VERSION})",
                magic[7]
            )));
        }
        let applied = inp.u64("the applied index")?;
        let keys = inp.u64("the key count")?;
        // Keys arrive sorted: collected, then bulk-built into the map (much faster than inserting one by
        // one; costs a transient vector of 56 bytes per key). No pre-allocation from `keys`: a false
        // count only runs into the end of the input.
        let mut sorted: Vec<(Vec<u8>, Versioned)> = Vec::new();
        let mut data_bytes = 0usize;
        for _ in 0..keys {
            let key = inp.bytes(max_key, "a key")?;
            if sorted.last().is_some_and(|(p, _)| *p >= key) {
                return Err(inp.err("keys out of order or repeated"));
            }
            let value = inp.bytes(max_value, "a value")?;
            let modify_index = inp.index(applied, "modify index")?;
            data_bytes = data_bytes.saturating_add(key.len() + value.len());
            sorted.push((
                key,
                Versioned {
                    value,
                    modify_index,
                },
            ));
        }
        let map = ChunkedMap::from_sorted(sorted);
        let count = inp.u64("the token count")?;
        if count > IDEMPOTENCY_WINDOW + 1 {
            return Err(inp.err(format!(
                "{count} idempotency tokens: more than one window ({}) can hold",
                IDEMPOTENCY_WINDOW + 1
            )));
        }
        let mut tokens = ChunkedMap::new();
        let mut order: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let (mut first, mut last): (Option<Index>, Option<Index>) = (None, None);
        for _ in 0..count {
            let token = inp.bytes(MAX_TOKEN_BYTES, "an idempotency token")?;
            if token.is_empty() {
                return Err(inp.err("empty idempotency token"));
            }
            let index = inp.index(applied, "token index")?;
            if let Some(last) = last {
                if index <= last {
                    return Err(inp.err(format!("token index {index} not above {last}")));
                }
            }
            if let Some(first) = first {
                if index - first > IDEMPOTENCY_WINDOW {
                    return Err(inp.err(format!(
                        "token indexes {first} and {index} are more than a window apart"
                    )));
                }
            }
            let result = inp.result(applied)?;
            if tokens.insert(token.clone(), (index, result)).is_some() {
                return Err(inp.err("repeated idempotency token"));
            }
            order.push((index.to_be_bytes().to_vec(), token));
            first.get_or_insert(index);
            last = Some(index);
        }
        let mut end = [0u8; 1];
        loop {
            match inp.r.read(&mut end) {
                Ok(0) => break,
                Ok(_) => return Err(inp.err("trailing bytes after the last token")),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(inp.err(format!("reading the end: {e}"))),
            }
        }
        Ok(KvStore {
            map,
            applied,
            tokens,
            token_order: ChunkedMap::from_sorted(order),
            data_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{Command, Condition};

    fn put(k: &str, v: &str) -> Vec<u8> {
        Command::Put {
            key: k.into(),
            value: v.into(),
            cond: Condition::Any,
        }
        .encode()
    }

    fn encode(kv: &KvStore) -> Vec<u8> {
        let mut out = Vec::new();
        kv.write_snapshot(&mut out).unwrap();
        out
    }

    fn decode(buf: &[u8]) -> Result<KvStore, DecodeError> {
        KvStore::read_snapshot(&mut &buf[..], 1024, 1 << 20)
    }

    #[test]
    fn empty_store_round_trips() {
        let kv = KvStore::new();
        let buf = encode(&kv);
        assert_eq!(buf.len(), 8 + 8 + 8 + 8);
        assert_eq!(decode(&buf).unwrap(), kv);
    }

    #[test]
    fn limits_and_order_are_enforced() {
        let mut kv = KvStore::new();
        kv.apply(1, &put("a", "0123456789"));
        kv.apply(2, &put("b", "x"));
        let buf = encode(&kv);
        assert_eq!(decode(&buf).unwrap(), kv);
        let err = KvStore::read_snapshot(&mut &buf[..], 1024, 9).unwrap_err();
        assert!(err.0.contains("exceeds the limit of 9"), "{err}");
        let err = KvStore::read_snapshot(&mut &buf[..], 0, 1024).unwrap_err();
        assert!(err.0.contains("a key of 1 bytes"), "{err}");
        // Swap the keys' single bytes: "b" then "a" is out of order.
        let mut swapped = buf.clone();
        let a = 8 + 8 + 8 + 4;
        let b = a + 1 + 4 + 10 + 8 + 4;
        assert_eq!((swapped[a], swapped[b]), (b'a', b'b'));
        swapped.swap(a, b);
        let err = decode(&swapped).unwrap_err();
        assert!(err.0.contains("out of order"), "{err}");
        // Trailing bytes are refused.
        let mut long = buf.clone();
        long.push(0);
        assert!(decode(&long).unwrap_err().0.contains("trailing"));
        // A modify index above the applied index is refused.
        let mut applied_low = buf;
        applied_low[8..16].copy_from_slice(&1u64.to_le_bytes());
        assert!(decode(&applied_low)
            .unwrap_err()
            .0
            .contains("outside 1..=1"));
    }
}
