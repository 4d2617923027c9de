//! Snapshot transfers: a leader streams a snapshot file to a follower on a connection of its own.
//!
//! Wire format, after the handshake frame (whose kind byte is 1):
//!
//! ```text
//! header frame: total length u64 (little-endian) | the InstallSnapshot message (codec-encoded)
//! data frames:  the file's bytes, at most CHUNK bytes each, in order
//! end frame:    an empty frame
//! ```
//!
//! then the receiver answers with one byte: 1 if the whole file is on its disk, 0 otherwise.
//!
//! Rules:
//! - Bounded memory on both sides: the sender reads the file a chunk at a time; the receiver writes each
//!   frame to disk as it arrives. TCP flow control paces the sender.
//! - The receiver writes to `incoming-<from>-<index>.tmp` in the snapshot directory, checks the length
//!   against the header and the configured maximum, fsyncs the file, renames it to
//!   [`incoming_path`] and fsyncs the directory, and only then hands the node an
//!   [`MessageBody::InstallSnapshot`] message (with the leader's term) and answers 1. The file's own
//!   checksum is verified by the node before it installs anything. On any error the temporary file is
//!   removed and nothing is handed on.
//! - The sender reports every transfer's end exactly once on the channel it was given: `ok` only when the
//!   receiver answered 1. A transfer stops early when the transport shuts down.
//! - A transfer that takes longer than the transport's read timeout between two frames is abandoned.

use super::{handshake, write_frame, Frame, FrameReader, Shared, Transport, KIND_SNAPSHOT};
use crate::raft::{Index, Message, MessageBody, NodeId};
use crossbeam_channel::Sender;
use log::{info, warn};
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Bytes of the file in one data frame.
const CHUNK: usize = 1 << 20;
/// How long the sender waits for the receiver's answer after the last frame (it fsyncs the file).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// Where a complete snapshot received from `from` at `index` lies in the snapshot directory.
pub fn incoming_path(dir: &Path, from: NodeId, index: Index) -> PathBuf {
    dir.join(format!("incoming-{from}-{index}.snap"))
}

/// How a snapshot transfer ended, reported to the sending node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotSent {
    /// The peer the snapshot was sent to.
    pub to: NodeId,
    /// The last log index the snapshot covers.
    pub index: Index,
    /// The receiver has the whole file on its disk.
    pub ok: bool,
}

/// The snapshot being sent: the core's `InstallSnapshot` message and the file it names.
#[derive(Debug, Clone)]
pub struct OutgoingSnapshot {
    /// The `InstallSnapshot` message to hand the receiver once the file has arrived; its `to` is the peer.
    pub message: Message,
    /// The snapshot file to stream.
    pub path: PathBuf,
}

impl OutgoingSnapshot {
    fn index(&self) -> Index {
        match self.message.body {
            MessageBody::InstallSnapshot { index, .. } => index,
            _ => 0,
        }
    }
}

impl Transport {
    /// Streams a snapshot file to a peer on a thread of its own; the end is reported on `done`.
    pub fn send_snapshot(&self, snap: OutgoingSnapshot, done: Sender<SnapshotSent>) {
        let (to, index) = (snap.message.to, snap.index());
        let sh = self.shared.clone();
        let report = done.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("snapshot-to-{to}"))
            .spawn(move || {
                let started = Instant::now();
                let result = send(&sh, &snap);
                match &result {
                    Ok(bytes) => info!(
                        "transport: snapshot at {index} sent to node {to}: {bytes} bytes in {:?}",
                        started.elapsed()
                    ),
                    Err(e) => warn!("transport: snapshot at {index} to node {to} failed: {e}"),
                }
                let _ = report.send(SnapshotSent {
                    to,
                    index,
                    ok: result.is_ok(),
                });
            });
        if let Err(e) = spawned {
            warn!("transport: cannot spawn a snapshot sender: {e}");
            let _ = done.send(SnapshotSent {
                to,
                index,
                ok: false,
            });
        }
    }
}

fn send(sh: &Shared, snap: &OutgoingSnapshot) -> Result<u64, String> {
    let cfg = &sh.cfg;
    let to = snap.message.to;
    let addr = sh
        .peer_addr(to)
        .ok_or_else(|| format!("node {to} is not a peer"))?;
    let mut file =
        File::open(&snap.path).map_err(|e| format!("open {}: {e}", snap.path.display()))?;
    let total = file
        .metadata()
        .map_err(|e| format!("stat {}: {e}", snap.path.display()))?
        .len();
    let mut w = handshake::connect(&addr, cfg, to, KIND_SNAPSHOT)
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    let mut header = total.to_le_bytes().to_vec();
    header.extend_from_slice(&super::codec::encode_message(&snap.message));
    write_frame(&mut w, &header).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; CHUNK];
    let mut sent = 0u64;
    loop {
        if sh.stop.load(Ordering::SeqCst) {
            return Err("transport shutting down".into());
        }
        let n = file
            .read(&mut buf)
            .map_err(|e| format!("read {}: {e}", snap.path.display()))?;
        if n == 0 {
            break;
        }
        write_frame(&mut w, &buf[..n]).map_err(|e| e.to_string())?;
        sent += n as u64;
    }
    if sent != total {
        return Err(format!(
            "file changed while sending: {sent} of {total} bytes"
        ));
    }
    write_frame(&mut w, &[]).map_err(|e| e.to_string())?;
    w.flush().map_err(|e| e.to_string())?;
    let mut stream = w.into_inner().map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut answer = [0u8; 1];
    stream
        .read_exact(&mut answer)
        .map_err(|e| format!("no answer from the receiver: {e}"))?;
    match answer[0] {
        1 => Ok(sent),
        _ => Err("the receiver refused the snapshot".into()),
    }
}

/// Receives one snapshot on a connection whose handshake said so (see the module docs).
pub(super) fn receive(
    sh: &Shared,
    stream: &mut TcpStream,
    frames: &mut FrameReader,
    addr: SocketAddr,
    from: NodeId,
    inbound: &Sender<Message>,
) {
    let result = receive_file(sh, stream, frames, from);
    let ok = result.is_ok();
    let _ = stream.write_all(&[u8::from(ok)]);
    match result {
        Ok((msg, bytes)) => {
            info!(
                "transport: {} from node {from} ({addr}): {bytes} bytes",
                msg.body.name()
            );
            let _ = inbound.send(msg);
        }
        Err(e) => sh.refusals.warn(format_args!(
            "transport: snapshot from node {from} ({addr}) refused: {e}"
        )),
    }
}

/// Writes the streamed file to disk; returns the message to hand the node and the file's size.
fn receive_file(
    sh: &Shared,
    stream: &mut TcpStream,
    frames: &mut FrameReader,
    from: NodeId,
) -> Result<(Message, u64), String> {
    let cfg = &sh.cfg;
    let dir = cfg
        .snapshot_dir
        .as_ref()
        .ok_or("this node takes no snapshots")?;
    let header = next_frame(sh, stream, frames)?;
    if header.len() < 8 {
        return Err(format!("snapshot header of {} bytes", header.len()));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&header[..8]);
    let total = u64::from_le_bytes(len);
    let msg = super::codec::decode_message(&header[8..]).map_err(|e| e.to_string())?;
    let MessageBody::InstallSnapshot {
        index, last_term, ..
    } = msg.body
    else {
        return Err(format!("a {} instead of InstallSnapshot", msg.body.name()));
    };
    let term = msg.term;
    if msg.from != from || msg.to != cfg.node_id {
        return Err(format!(
            "message from {} to {} on node {from}'s connection",
            msg.from, msg.to
        ));
    }
    if total > cfg.max_snapshot_size {
        return Err(format!(
            "snapshot of {total} bytes exceeds the limit of {}",
            cfg.max_snapshot_size
        ));
    }
    if index == 0 || last_term == 0 || term == 0 {
        return Err(format!(
            "snapshot header with index {index}, last term {last_term}, term {term}"
        ));
    }
    let tmp = dir.join(format!("incoming-{from}-{index}.tmp"));
    let result = write_file(sh, stream, frames, &tmp, total);
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let done = incoming_path(dir, from, index);
    std::fs::rename(&tmp, &done).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("rename {}: {e}", tmp.display())
    })?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("fsync {}: {e}", dir.display()))?;
    Ok((msg, total))
}

fn write_file(
    sh: &Shared,
    stream: &mut TcpStream,
    frames: &mut FrameReader,
    path: &Path,
    total: u64,
) -> Result<(), String> {
    let mut file = File::create(path).map_err(|e| format!("create {}: {e}", path.display()))?;
    let mut got = 0u64;
    loop {
        let data = next_frame(sh, stream, frames)?;
        if data.is_empty() {
            break;
        }
        got += data.len() as u64;
        if got > total {
            return Err(format!("more than the announced {total} bytes"));
        }
        file.write_all(&data)
            .map_err(|e| format!("write {}: {e}", path.display()))?;
    }
    if got != total {
        return Err(format!("{got} of {total} bytes, then the end"));
    }
    file.sync_all()
        .map_err(|e| format!("fsync {}: {e}", path.display()))
}

/// The next frame, waiting at most the read timeout for it.
fn next_frame(
    sh: &Shared,
    stream: &mut TcpStream,
    frames: &mut FrameReader,
) -> Result<Vec<u8>, String> {
    let started = Instant::now();
    loop {
        if sh.stop.load(Ordering::SeqCst) {
            return Err("transport shutting down".into());
        }
        match frames.next(stream) {
            Ok(Frame::Data(b)) => return Ok(b.to_vec()),
            Ok(Frame::Eof) => return Err("connection closed mid-transfer".into()),
            Ok(Frame::Idle) => {
                if started.elapsed() > sh.cfg.read_timeout {
                    return Err(format!("silent for {:?}", sh.cfg.read_timeout));
                }
            }
            Err(e) if e.kind() == ErrorKind::InvalidData => return Err(e.to_string()),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}
