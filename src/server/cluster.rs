//! The cluster's address book and how membership travels with the log and the snapshots.
//!
//! Rules:
//! - The core knows members by id only. Their addresses travel as the context of each configuration entry
//!   (JSON: `{"<id>": {"raft": "...", "http": "..."}}`), so every node learns a new member's address from
//!   the log, and a restarted node from its log or snapshot, never from flags alone.
//! - Until the first configuration entry, the book comes from `--cluster` (Raft addresses only; HTTP
//!   addresses are learned from peers' handshakes).
//! - A snapshot file's body starts with the membership in effect at its index and that context
//!   (`NIMBMEM1`, a length, the encoded membership and context), followed by the state machine.

use crate::codec::{Reader, Writer};
use crate::raft::{Membership, NodeId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{Read, Write};

/// A member's addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Addrs {
    /// The member's Raft (peer) address.
    pub raft: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The member's HTTP address, once known.
    pub http: Option<String>,
}

/// Every member's addresses, by node id.
pub type AddressBook = BTreeMap<NodeId, Addrs>;

const MAGIC: &[u8; 8] = b"NIMBMEM1";
/// The longest membership section a snapshot may start with.
const MAX_SECTION: u32 = 16 << 20;

/// Encodes the book as JSON, the context of a configuration entry (empty if encoding fails).
pub fn encode_book(book: &AddressBook) -> Vec<u8> {
    serde_json::to_vec(book).unwrap_or_default()
}

/// `None` for an empty or unreadable context (then the current book stays).
pub fn decode_book(ctx: &[u8]) -> Option<AddressBook> {
    if ctx.is_empty() {
        return None;
    }
    serde_json::from_slice(ctx).ok()
}

/// Writes the membership section that starts a snapshot body.
pub fn write_membership(
    w: &mut dyn Write,
    membership: &Membership,
    context: &[u8],
) -> std::io::Result<()> {
    let mut enc = Writer::new();
    enc.membership(membership);
    enc.bytes(context);
    let body = enc.into_inner();
    w.write_all(MAGIC)?;
    w.write_all(&(body.len() as u32).to_le_bytes())?;
    w.write_all(&body)
}

/// Reads the membership section of a snapshot body.
pub fn read_membership(r: &mut dyn Read) -> Result<(Membership, Vec<u8>), String> {
    let mut head = [0u8; 12];
    r.read_exact(&mut head)
        .map_err(|e| format!("snapshot membership: {e}"))?;
    if &head[..8] != MAGIC {
        return Err("snapshot does not start with a membership section".into());
    }
    let len = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
    if len > MAX_SECTION {
        return Err(format!("membership section of {len} bytes"));
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body)
        .map_err(|e| format!("snapshot membership: {e}"))?;
    let mut rd = Reader::new(&body);
    let m = rd.membership().map_err(|e| e.to_string())?;
    let ctx = rd.bytes().map_err(|e| e.to_string())?;
    rd.finish().map_err(|e| e.to_string())?;
    Ok((m, ctx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership_section_round_trips_and_rejects_garbage() {
        let m = Membership {
            voters: [1, 2].into(),
            learners: [3].into(),
        };
        let mut book = AddressBook::new();
        book.insert(
            3,
            Addrs {
                raft: ":3033".into(),
                http: Some("127.0.0.1:2023".into()),
            },
        );
        let ctx = encode_book(&book);
        let mut buf = Vec::new();
        write_membership(&mut buf, &m, &ctx).unwrap();
        buf.extend_from_slice(b"rest");
        let mut r = &buf[..];
        let (m2, c2) = read_membership(&mut r).unwrap();
        assert_eq!((m2, decode_book(&c2).unwrap()), (m, book));
        assert_eq!(r, b"rest");
        for cut in 0..buf.len() - 4 {
            assert!(read_membership(&mut &buf[..cut]).is_err(), "cut at {cut}");
        }
        assert!(read_membership(&mut &b"NIMBMEM1\xff\xff\xff\xff"[..]).is_err());
    }
}
