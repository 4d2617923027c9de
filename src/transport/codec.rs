//! Binary encoding of [`Message`]s for the wire.
//!
//! Layout: `from u64, to u64, term u64, tag u8`, then the body's fields in declaration order with the
//! primitives of [`crate::codec`]. `Option`s and `Result`s are a tag byte then the value. Decoding rejects
//! unknown tags and trailing bytes and never panics (counts are checked against the bytes that remain).

use crate::codec::{DecodeError, Reader, Writer, MIN_ENTRY_SIZE};
use crate::raft::{Message, MessageBody, RejectHint, RemoteError};

fn put_remote_error(w: &mut Writer, e: &RemoteError) {
    match e {
        RemoteError::NotLeader { leader } => {
            w.u8(0);
            w.u64(leader.unwrap_or(0));
        }
        RemoteError::Busy => w.u8(1),
        RemoteError::InsufficientStorage => w.u8(2),
    }
}

fn get_remote_error(r: &mut Reader) -> Result<RemoteError, DecodeError> {
    match r.u8()? {
        0 => {
            let l = r.u64()?;
            Ok(RemoteError::NotLeader {
                leader: (l != 0).then_some(l),
            })
        }
        1 => Ok(RemoteError::Busy),
        2 => Ok(RemoteError::InsufficientStorage),
        t => Err(DecodeError(format!("unknown remote error tag {t}"))),
    }
}

/// Encodes a message (without the frame length).
pub fn encode_message(m: &Message) -> Vec<u8> {
    let mut w = Writer::with_capacity(64);
    encode_into(&mut w, m);
    w.into_inner()
}

/// Appends the encoding of `m` to `w`.
pub fn encode_into(w: &mut Writer, m: &Message) {
    w.u64(m.from);
    w.u64(m.to);
    w.u64(m.term);
    match &m.body {
        MessageBody::PreVote {
            last_index,
            last_term,
        } => {
            w.u8(1);
            w.u64(*last_index);
            w.u64(*last_term);
        }
        MessageBody::PreVoteResponse { granted } => {
            w.u8(2);
            w.bool(*granted);
        }
        MessageBody::Vote {
            last_index,
            last_term,
            transfer,
        } => {
            w.u8(3);
            w.u64(*last_index);
            w.u64(*last_term);
            w.bool(*transfer);
        }
        MessageBody::VoteResponse { granted } => {
            w.u8(4);
            w.bool(*granted);
        }
        MessageBody::Append {
            prev_index,
            prev_term,
            entries,
            commit,
        } => {
            w.u8(5);
            w.u64(*prev_index);
            w.u64(*prev_term);
            w.u64(*commit);
            w.u32(entries.len() as u32);
            for e in entries {
                w.entry(e);
            }
        }
        MessageBody::AppendResponse { index, reject } => {
            w.u8(6);
            w.u64(*index);
            match reject {
                None => w.u8(0),
                Some(h) => {
                    w.u8(1);
                    w.u64(h.conflict_term);
                    w.u64(h.conflict_index);
                }
            }
        }
        MessageBody::Heartbeat { commit, read_seq } => {
            w.u8(7);
            w.u64(*commit);
            w.u64(*read_seq);
        }
        MessageBody::HeartbeatResponse { read_seq } => {
            w.u8(8);
            w.u64(*read_seq);
        }
        MessageBody::InstallSnapshot {
            index,
            last_term,
            membership,
            context,
        } => {
            w.u8(13);
            w.u64(*index);
            w.u64(*last_term);
            w.membership(membership);
            w.bytes(context);
        }
        MessageBody::TimeoutNow => w.u8(14),
        MessageBody::Propose {
            request_id,
            commands,
        } => {
            w.u8(9);
            w.u64(*request_id);
            w.u32(commands.len() as u32);
            for c in commands {
                w.bytes(c);
            }
        }
        MessageBody::ProposeResponse { request_id, result } => {
            w.u8(10);
            w.u64(*request_id);
            match result {
                Ok((index, term)) => {
                    w.u8(0);
                    w.u64(*index);
                    w.u64(*term);
                }
                Err(e) => {
                    w.u8(1);
                    put_remote_error(w, e);
                }
            }
        }
        MessageBody::ReadIndex { request_id } => {
            w.u8(11);
            w.u64(*request_id);
        }
        MessageBody::ReadIndexResponse { request_id, result } => {
            w.u8(12);
            w.u64(*request_id);
            match result {
                Ok(index) => {
                    w.u8(0);
                    w.u64(*index);
                }
                Err(e) => {
                    w.u8(1);
                    put_remote_error(w, e);
                }
            }
        }
    }
}

/// Decodes one message; the whole buffer must be consumed.
pub fn decode_message(buf: &[u8]) -> Result<Message, DecodeError> {
    let mut r = Reader::new(buf);
    let from = r.u64()?;
    let to = r.u64()?;
    let term = r.u64()?;
    let body = match r.u8()? {
        1 => MessageBody::PreVote {
            last_index: r.u64()?,
            last_term: r.u64()?,
        },
        2 => MessageBody::PreVoteResponse { granted: r.bool()? },
        3 => MessageBody::Vote {
            last_index: r.u64()?,
            last_term: r.u64()?,
            transfer: r.bool()?,
        },
        4 => MessageBody::VoteResponse { granted: r.bool()? },
        5 => {
            let prev_index = r.u64()?;
            let prev_term = r.u64()?;
            let commit = r.u64()?;
            let n = r.count(MIN_ENTRY_SIZE)?;
            let mut entries = Vec::with_capacity(n);
            for _ in 0..n {
                entries.push(r.entry()?);
            }
            MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            }
        }
        6 => {
            let index = r.u64()?;
            let reject = match r.u8()? {
                0 => None,
                1 => Some(RejectHint {
                    conflict_term: r.u64()?,
                    conflict_index: r.u64()?,
                }),
                t => return Err(DecodeError(format!("bad reject tag {t}"))),
            };
            MessageBody::AppendResponse { index, reject }
        }
        7 => MessageBody::Heartbeat {
            commit: r.u64()?,
            read_seq: r.u64()?,
        },
        8 => MessageBody::HeartbeatResponse { read_seq: r.u64()? },
        13 => MessageBody::InstallSnapshot {
            index: r.u64()?,
            last_term: r.u64()?,
            membership: r.membership()?,
            context: r.bytes()?,
        },
        14 => MessageBody::TimeoutNow,
        9 => {
            let request_id = r.u64()?;
            let n = r.count(4)?;
            let mut commands = Vec::with_capacity(n);
            for _ in 0..n {
                commands.push(r.bytes()?);
            }
            MessageBody::Propose {
                request_id,
                commands,
            }
        }
        10 => {
            let request_id = r.u64()?;
            let result = match r.u8()? {
                0 => Ok((r.u64()?, r.u64()?)),
                1 => Err(get_remote_error(&mut r)?),
                t => return Err(DecodeError(format!("bad result tag {t}"))),
            };
            MessageBody::ProposeResponse { request_id, result }
        }
        11 => MessageBody::ReadIndex {
            request_id: r.u64()?,
        },
        12 => {
            let request_id = r.u64()?;
            let result = match r.u8()? {
                0 => Ok(r.u64()?),
                1 => Err(get_remote_error(&mut r)?),
                t => return Err(DecodeError(format!("bad result tag {t}"))),
            };
            MessageBody::ReadIndexResponse { request_id, result }
        }
        t => return Err(DecodeError(format!("unknown message tag {t}"))),
    };
    r.finish()?;
    Ok(Message {
        from,
        to,
        term,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{Entry, EntryKind, Rng};

    pub(crate) fn samples() -> Vec<Message> {
        let bodies = vec![
            MessageBody::PreVote {
                last_index: 5,
                last_term: 2,
            },
            MessageBody::PreVoteResponse { granted: true },
            MessageBody::Vote {
                last_index: 1,
                last_term: 1,
                transfer: true,
            },
            MessageBody::VoteResponse { granted: false },
            MessageBody::TimeoutNow,
            MessageBody::Append {
                prev_index: 3,
                prev_term: 1,
                entries: vec![
                    Entry {
                        index: 4,
                        term: 2,
                        kind: EntryKind::Noop,
                    },
                    Entry {
                        index: 5,
                        term: 2,
                        kind: EntryKind::Command(b"set x".to_vec()),
                    },
                ],
                commit: 3,
            },
            MessageBody::AppendResponse {
                index: 9,
                reject: None,
            },
            MessageBody::AppendResponse {
                index: 9,
                reject: Some(RejectHint {
                    conflict_term: 3,
                    conflict_index: 7,
                }),
            },
            MessageBody::Heartbeat {
                commit: 4,
                read_seq: 8,
            },
            MessageBody::HeartbeatResponse { read_seq: 8 },
            MessageBody::InstallSnapshot {
                index: 40,
                last_term: 3,
                membership: crate::raft::Membership {
                    voters: [1, 2, 3].into(),
                    learners: [4].into(),
                },
                context: b"addresses".to_vec(),
            },
            MessageBody::Propose {
                request_id: 77,
                commands: vec![b"a".to_vec(), vec![]],
            },
            MessageBody::ProposeResponse {
                request_id: 77,
                result: Ok((10, 3)),
            },
            MessageBody::ProposeResponse {
                request_id: 78,
                result: Err(RemoteError::NotLeader { leader: Some(2) }),
            },
            MessageBody::ReadIndex { request_id: 5 },
            MessageBody::ReadIndexResponse {
                request_id: 5,
                result: Ok(12),
            },
            MessageBody::ReadIndexResponse {
                request_id: 6,
                result: Err(RemoteError::Busy),
            },
            MessageBody::ReadIndexResponse {
                request_id: 7,
                result: Err(RemoteError::NotLeader { leader: None }),
            },
        ];
        bodies
            .into_iter()
            .map(|body| Message {
                from: 1,
                to: 2,
                term: 3,
                body,
            })
            .collect()
    }

    #[test]
    fn every_variant_round_trips() {
        for m in samples() {
            assert_eq!(decode_message(&encode_message(&m)).unwrap(), m);
        }
    }

    #[test]
    fn truncations_flips_and_garbage_never_panic() {
        let mut rng = Rng::new(11);
        for m in samples() {
            let buf = encode_message(&m);
            for cut in 0..buf.len() {
                assert!(
                    decode_message(&buf[..cut]).is_err(),
                    "prefix {cut} of {m:?}"
                );
            }
            let mut extra = buf.clone();
            extra.push(0);
            assert!(decode_message(&extra).is_err(), "trailing byte");
            for i in 0..buf.len() {
                for bit in 0..8 {
                    let mut b = buf.clone();
                    b[i] ^= 1 << bit;
                    let _ = decode_message(&b); // must not panic; may decode to something else
                }
            }
        }
        for _ in 0..20_000 {
            let len = rng.below(64) as usize;
            let b: Vec<u8> = (0..len).map(|_| rng.below(256) as u8).collect();
            let _ = decode_message(&b);
        }
    }
}
