//! A compact binary encoding shared by the WAL and the peer transport.
//!
//! Rules this module keeps:
//! - Integers are little-endian and fixed width; byte strings are a `u32` length followed by the bytes.
//! - Decoding never panics and never allocates more than the input could hold: every length is checked
//!   against the bytes that remain before anything is allocated. Bad input is a [`DecodeError`].
//! - The encoding of [`Entry`] and [`HardState`] is part of the on-disk format: change it only with a
//!   format version bump.

use crate::raft::{Entry, EntryKind, HardState, Membership};
use std::fmt;

/// Why a byte string could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "decode error: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

/// Appends encoded values to a byte vector.
#[derive(Default)]
pub struct Writer {
    /// The encoded bytes written so far.
    pub buf: Vec<u8>,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }
    /// An empty writer whose buffer has room for `n` bytes before it reallocates.
    pub fn with_capacity(n: usize) -> Self {
        Writer {
            buf: Vec::with_capacity(n),
        }
    }
    /// Appends one byte.
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    /// Appends a `u32`, 4 bytes little-endian.
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// Appends a `u64`, 8 bytes little-endian.
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// Appends a bool as one byte, `0` or `1`.
    pub fn bool(&mut self, v: bool) {
        self.u8(v as u8);
    }
    /// A byte string: `u32` length, then the bytes. Panics only if `v` exceeds 4 GiB, which callers'
    /// size limits rule out long before.
    pub fn bytes(&mut self, v: &[u8]) {
        let len = u32::try_from(v.len()).expect("byte string over 4 GiB");
        self.u32(len);
        self.buf.extend_from_slice(v);
    }
    /// Appends an entry: index (`u64`), term (`u64`), a kind tag byte (`0` no-op, `1` command, `2`
    /// config), then for a command its data, for a config its membership and context byte strings.
    pub fn entry(&mut self, e: &Entry) {
        self.u64(e.index);
        self.u64(e.term);
        match &e.kind {
            EntryKind::Noop => self.u8(0),
            EntryKind::Command(data) => {
                self.u8(1);
                self.bytes(data);
            }
            EntryKind::Config {
                membership,
                context,
            } => {
                self.u8(2);
                self.membership(membership);
                self.bytes(context);
            }
        }
    }
    /// Appends a membership: the voters, then the learners, each as a `u32` count followed by that many
    /// `u64` ids in ascending order.
    pub fn membership(&mut self, m: &Membership) {
        for set in [&m.voters, &m.learners] {
            self.u32(set.len() as u32);
            for id in set {
                self.u64(*id);
            }
        }
    }
    /// Appends a hard state: term, vote and commit, each a `u64`.
    pub fn hard_state(&mut self, hs: &HardState) {
        self.u64(hs.term);
        self.u64(hs.vote);
        self.u64(hs.commit);
    }
    /// Consumes the writer and returns the encoded bytes.
    pub fn into_inner(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads encoded values from a byte slice, checking every bound.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader positioned at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    /// The number of bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError(format!(
                "truncated {what}: need {n} bytes at offset {}, have {}",
                self.pos,
                self.remaining()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    /// Reads one byte; a [`DecodeError`] if none remains.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1, "u8")?[0])
    }
    /// Reads a little-endian `u32`; a [`DecodeError`] if fewer than 4 bytes remain.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4, "u32")?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// Reads a little-endian `u64`; a [`DecodeError`] if fewer than 8 bytes remain.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8, "u64")?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    /// Reads a bool; a [`DecodeError`] if the byte is neither `0` nor `1` or none remains.
    pub fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(DecodeError(format!("bad bool byte {b}"))),
        }
    }
    /// Reads a byte string (`u32` length, then the bytes); a [`DecodeError`] if the length exceeds what
    /// remains.
    pub fn bytes(&mut self) -> Result<Vec<u8>, DecodeError> {
        let len = self.u32()? as usize;
        Ok(self.take(len, "byte string")?.to_vec())
    }
    /// A count of items that each take at least `min_item` bytes, checked against what remains so a
    /// corrupt count cannot make the caller allocate a huge vector.
    pub fn count(&mut self, min_item: usize) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_item.max(1)) > self.remaining() {
            return Err(DecodeError(format!(
                "count {n} exceeds the {} bytes that remain",
                self.remaining()
            )));
        }
        Ok(n)
    }
    /// Reads an entry in the layout [`Writer::entry`] writes; a [`DecodeError`] on truncation or an
    /// unknown kind tag.
    pub fn entry(&mut self) -> Result<Entry, DecodeError> {
        let index = self.u64()?;
        let term = self.u64()?;
        let kind = match self.u8()? {
            0 => EntryKind::Noop,
            1 => EntryKind::Command(self.bytes()?),
            2 => EntryKind::Config {
                membership: self.membership()?,
                context: self.bytes()?,
            },
            k => return Err(DecodeError(format!("unknown entry kind {k}"))),
        };
        Ok(Entry { index, term, kind })
    }
    /// A membership: ids non-zero and strictly increasing in each set (the one encoding of a set), no id
    /// both voter and learner.
    pub fn membership(&mut self) -> Result<Membership, DecodeError> {
        let mut m = Membership::default();
        for learners in [false, true] {
            let n = self.count(8)?;
            let mut prev = 0;
            for _ in 0..n {
                let id = self.u64()?;
                let fresh = id > prev
                    && if learners {
                        !m.voters.contains(&id) && m.learners.insert(id)
                    } else {
                        m.voters.insert(id)
                    };
                prev = id;
                if !fresh {
                    return Err(DecodeError(format!("bad member id {id} in a membership")));
                }
            }
        }
        Ok(m)
    }
    /// Reads a hard state (term, vote, commit); a [`DecodeError`] if fewer than 24 bytes remain.
    pub fn hard_state(&mut self) -> Result<HardState, DecodeError> {
        Ok(HardState {
            term: self.u64()?,
            vote: self.u64()?,
            commit: self.u64()?,
        })
    }
    /// Fails unless every byte was consumed.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.remaining() != 0 {
            return Err(DecodeError(format!("{} trailing bytes", self.remaining())));
        }
        Ok(())
    }
}

/// The smallest encoded size of an entry, for [`Reader::count`].
pub const MIN_ENTRY_SIZE: usize = 17;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_and_hard_state_round_trip() {
        let entries = vec![
            Entry {
                index: 1,
                term: 1,
                kind: EntryKind::Noop,
            },
            Entry {
                index: u64::MAX,
                term: 7,
                kind: EntryKind::Command(b"hello".to_vec()),
            },
        ];
        let hs = HardState {
            term: 9,
            vote: 3,
            commit: 2,
        };
        let mut w = Writer::new();
        for e in &entries {
            w.entry(e);
        }
        w.hard_state(&hs);
        let buf = w.into_inner();
        let mut r = Reader::new(&buf);
        assert_eq!(r.entry().unwrap(), entries[0]);
        assert_eq!(r.entry().unwrap(), entries[1]);
        assert_eq!(r.hard_state().unwrap(), hs);
        r.finish().unwrap();
        // Every strict prefix fails cleanly.
        for cut in 0..buf.len() {
            let mut r = Reader::new(&buf[..cut]);
            let ok = r
                .entry()
                .and_then(|_| r.entry())
                .and_then(|_| r.hard_state());
            assert!(ok.is_err(), "prefix of {cut} bytes decoded");
        }
    }

    #[test]
    fn huge_count_is_refused() {
        let mut w = Writer::new();
        w.u32(u32::MAX);
        let buf = w.into_inner();
        assert!(Reader::new(&buf).count(MIN_ENTRY_SIZE).is_err());
        assert!(Reader::new(&buf).bytes().is_err());
    }
}
