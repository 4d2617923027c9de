//! The peer handshake (protocol version 4): who connects, to whom, for what, and, when the cluster has a
//! token, proof in both directions that each side knows it.
//!
//! # Wire format
//!
//! Three frames (the transport's framing: `u32` little-endian length, payload) before anything else:
//!
//! ```text
//! 1. connector -> acceptor, hello:
//!      "NIMB" | version u16 = 4 | cluster name (bytes) | sender id u64 | receiver id u64
//!      | sender's HTTP address (bytes, may be empty) | kind u8 (0 messages, 1 snapshot)
//!      | auth u8 (0 none, 1 HMAC-SHA256) | connector nonce (bytes: 32 when auth = 1, else empty)
//! 2. acceptor -> connector, challenge:
//!      "NIMB" | version u16 = 4 | auth u8 | acceptor nonce (bytes) | acceptor proof (bytes)
//!      (nonce and proof are 32 bytes when auth = 1, else empty)
//! 3. connector -> acceptor, proof (auth = 1 only): the connector proof, 32 bytes
//! ```
//!
//! "bytes" is a `u32` little-endian length and the bytes ([`crate::codec`]). With a token `K`:
//!
//! ```text
//! acceptor proof  = HMAC-SHA256(K, "nimbus peer handshake v4: acceptor proof"  | u32 len(hello) | hello | acceptor nonce)
//! connector proof = HMAC-SHA256(K, "nimbus peer handshake v4: connector proof" | u32 len(hello) | hello | acceptor nonce)
//! ```
//!
//! where `hello` is frame 1's payload as sent, so each proof covers the cluster name, both node ids, the
//! connection kind, the announced HTTP address and both nonces. Then the connection carries what its kind
//! says (messages, or one snapshot transfer).
//!
//! # Rules
//! - Mutual: the acceptor proves first (frame 2); the connector checks that proof before it sends a single
//!   message, and the acceptor checks the connector's proof (frame 3) before it reads one. Proofs are
//!   compared in constant time.
//! - No replay: every connection gets a fresh 32-byte nonce from each side (the OS generator through
//!   `getrandom`: the getrandom(2) system call on Linux). A recorded frame 3 is a proof over the acceptor
//!   nonce of that recorded connection, never of a new one; the two labels keep an acceptor's proof from
//!   passing for a connector's (no reflection).
//! - The acceptor refuses a hello whose cluster name differs, whose sender is not a current peer (or is
//!   itself), whose receiver is not this node, whose version is not 4, or whose auth mode differs from its
//!   own (a node with a token refuses peers without one, and the reverse): it closes the connection without
//!   answering. Nodes with different tokens never get past frame 2/3, so they never exchange a message.
//! - Before the handshake completes the acceptor caps frames at [`MAX_HANDSHAKE_FRAME`] bytes and the whole
//!   handshake at the configured handshake timeout; at most `max_handshaking` connections may be in the
//!   handshake at once (more are closed on accept).
//! - Refusals are logged through the transport's rate-limited refusal log (see the [`super`] module
//!   docs), so a flood of garbage connections cannot flood the log, and counted.
//! - The token never appears in a log line or a `Debug` output.
//!
//! Not protected: what follows the handshake travels in clear text and unauthenticated frame by frame, so
//! an attacker on the network path can read it, or take over a connection after its handshake. Use a
//! private network, a VPN or an encrypted tunnel between nodes until the transport has TLS.

use super::{
    write_frame, Frame, FrameReader, Shared, TransportConfig, KIND_MESSAGES, KIND_SNAPSHOT,
};
use crate::codec::{Reader, Writer};
use crate::config::connect_addr;
use crate::raft::NodeId;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;
use std::io::{BufWriter, ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub(super) const MAGIC: &[u8; 4] = b"NIMB";
/// The peer protocol version this build speaks. Version 2 had no challenge and no receiver id; version 3
/// (the unmerged `harden` branch) had this handshake with the messages of before membership changes
/// (no `transfer` in votes, no membership in `InstallSnapshot`, a fixed 32-byte snapshot header); version
/// 4 is this handshake with those messages and the snapshot header of [`super::snapshot`].
pub const PROTOCOL_VERSION: u16 = 4;
/// Longest cluster name and HTTP address in a hello.
pub(super) const MAX_NAME: usize = 255;
/// Largest frame accepted before the handshake completes.
pub const MAX_HANDSHAKE_FRAME: usize = 1024;
const NONCE_LEN: usize = 32;
const PROOF_LEN: usize = 32;
const AUTH_NONE: u8 = 0;
const AUTH_HMAC_SHA256: u8 = 1;
const LABEL_ACCEPTOR: &[u8] = b"nimbus peer handshake v4: acceptor proof";
const LABEL_CONNECTOR: &[u8] = b"nimbus peer handshake v4: connector proof";

/// The cluster's shared secret. Its `Debug` output never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterToken(Vec<u8>);

impl ClusterToken {
    /// Shortest accepted token.
    pub const MIN_LEN: usize = 16;
    /// Longest accepted token.
    pub const MAX_LEN: usize = 4096;

    /// A token from its bytes, after trimming ASCII whitespace at both ends (a file's final newline).
    pub fn new(bytes: &[u8]) -> Result<ClusterToken, String> {
        let start = bytes.iter().position(|b| !b.is_ascii_whitespace());
        let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace());
        let trimmed = match (start, end) {
            (Some(s), Some(e)) => &bytes[s..=e],
            _ => &[][..],
        };
        if trimmed.len() < Self::MIN_LEN || trimmed.len() > Self::MAX_LEN {
            return Err(format!(
                "the cluster token must be {} to {} bytes (not counting surrounding whitespace), got {}",
                Self::MIN_LEN,
                Self::MAX_LEN,
                trimmed.len()
            ));
        }
        Ok(ClusterToken(trimmed.to_vec()))
    }

    fn mac(&self, label: &[u8], hello: &[u8], nonce: &[u8]) -> Option<Hmac<Sha256>> {
        // HMAC takes keys of any length; the error arm is unreachable but costs nothing to handle.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).ok()?;
        mac.update(label);
        mac.update(&(hello.len() as u32).to_le_bytes());
        mac.update(hello);
        mac.update(nonce);
        Some(mac)
    }

    /// The proof one side sends; `acceptor` chooses the label.
    pub fn proof(&self, acceptor: bool, hello: &[u8], acceptor_nonce: &[u8]) -> Vec<u8> {
        let label = if acceptor {
            LABEL_ACCEPTOR
        } else {
            LABEL_CONNECTOR
        };
        self.mac(label, hello, acceptor_nonce)
            .map(|m| m.finalize().into_bytes().to_vec())
            .unwrap_or_default()
    }

    /// Checks a proof in constant time.
    fn verify(&self, acceptor: bool, hello: &[u8], acceptor_nonce: &[u8], proof: &[u8]) -> bool {
        let label = if acceptor {
            LABEL_ACCEPTOR
        } else {
            LABEL_CONNECTOR
        };
        self.mac(label, hello, acceptor_nonce)
            .is_some_and(|m| m.verify_slice(proof).is_ok())
    }
}

impl fmt::Debug for ClusterToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterToken(<{} bytes, redacted>)", self.0.len())
    }
}

/// A decoded hello (frame 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The cluster name, as bytes; the acceptor refuses a name other than its own.
    pub cluster: Vec<u8>,
    /// The connecting node's id.
    pub from: NodeId,
    /// The id of the node it means to reach.
    pub to: NodeId,
    /// The connector's HTTP address as text, or empty if it announces none.
    pub http: Vec<u8>,
    /// What the connection will carry: `0` messages, `1` one snapshot transfer.
    pub kind: u8,
    /// Whether the connector authenticates with HMAC-SHA256 (it has a cluster token).
    pub auth: bool,
    /// The connector's nonce: 32 bytes when `auth`, else empty.
    pub nonce: Vec<u8>,
}

impl Hello {
    /// Frame 1's payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(64 + self.cluster.len() + self.http.len());
        w.buf.extend_from_slice(MAGIC);
        w.buf.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        w.bytes(&self.cluster);
        w.u64(self.from);
        w.u64(self.to);
        w.bytes(&self.http);
        w.u8(self.kind);
        w.u8(if self.auth {
            AUTH_HMAC_SHA256
        } else {
            AUTH_NONE
        });
        w.bytes(&self.nonce);
        w.into_inner()
    }

    /// Parses frame 1 (the format only; the acceptor then checks it against its configuration).
    pub fn decode(buf: &[u8]) -> Result<Hello, String> {
        let version = check_preamble(buf)?;
        if version != PROTOCOL_VERSION {
            return Err(format!(
                "protocol version {version}, we speak {PROTOCOL_VERSION}"
            ));
        }
        let mut r = Reader::new(&buf[6..]);
        let e = |e: crate::codec::DecodeError| format!("malformed hello: {e}");
        let cluster = r.bytes().map_err(e)?;
        let from = r.u64().map_err(e)?;
        let to = r.u64().map_err(e)?;
        let http = r.bytes().map_err(e)?;
        let kind = r.u8().map_err(e)?;
        let auth = match r.u8().map_err(e)? {
            AUTH_NONE => false,
            AUTH_HMAC_SHA256 => true,
            a => return Err(format!("unknown authentication mode {a}")),
        };
        let nonce = r.bytes().map_err(e)?;
        r.finish().map_err(e)?;
        let want = if auth { NONCE_LEN } else { 0 };
        if nonce.len() != want {
            return Err(format!("nonce of {} bytes", nonce.len()));
        }
        Ok(Hello {
            cluster,
            from,
            to,
            http,
            kind,
            auth,
            nonce,
        })
    }
}

fn check_preamble(buf: &[u8]) -> Result<u16, String> {
    if buf.len() < 6 || &buf[..4] != MAGIC {
        return Err("bad magic: not a nimbus peer".into());
    }
    Ok(u16::from_le_bytes([buf[4], buf[5]]))
}

/// Checks a hello against this node's configuration; returns the announced HTTP address, if usable (empty
/// or unparsable addresses are ignored: they only serve to point clients at the leader).
fn check_hello(h: &Hello, sh: &Shared) -> Result<Option<SocketAddr>, String> {
    let cfg = &sh.cfg;
    if h.cluster != cfg.cluster.as_bytes() {
        return Err(format!(
            "cluster {:?}, we are {:?}",
            String::from_utf8_lossy(&h.cluster),
            cfg.cluster
        ));
    }
    if h.from == 0 || h.from == cfg.node_id || sh.peer_addr(h.from).is_none() {
        return Err(format!(
            "sender id {} is not a peer of node {}",
            h.from, cfg.node_id
        ));
    }
    if h.to != cfg.node_id {
        return Err(format!(
            "addressed to node {}, this is node {}",
            h.to, cfg.node_id
        ));
    }
    if h.kind != KIND_MESSAGES && h.kind != KIND_SNAPSHOT {
        return Err(format!("unknown connection kind {}", h.kind));
    }
    if h.http.len() > MAX_NAME {
        return Err(format!("HTTP address of {} bytes", h.http.len()));
    }
    match (h.auth, cfg.token.is_some()) {
        (false, true) => {
            return Err(
                "the peer sent no cluster token proof, and this node requires one (is the peer \
                 missing --cluster-token-file / NIMBUS_CLUSTER_TOKEN?)"
                    .into(),
            )
        }
        (true, false) => {
            return Err(
                "the peer authenticates with a cluster token, and this node has none configured"
                    .into(),
            )
        }
        _ => {}
    }
    Ok(std::str::from_utf8(&h.http)
        .ok()
        .and_then(|a| a.parse::<SocketAddr>().ok()))
}

fn nonce() -> std::io::Result<Vec<u8>> {
    let mut n = vec![0u8; NONCE_LEN];
    getrandom::fill(&mut n)
        .map_err(|e| std::io::Error::other(format!("no randomness for a nonce: {e}")))?;
    Ok(n)
}

fn io_refused(msg: String) -> std::io::Error {
    std::io::Error::new(ErrorKind::PermissionDenied, msg)
}

/// Opens a connection of `kind` to peer `to` at `addr` and runs the connector's side of the handshake.
/// On success the hello, and (with a token) the connector's proof, are written or buffered: what the caller
/// writes next follows them.
pub(super) fn connect(
    addr: &str,
    cfg: &TransportConfig,
    to: NodeId,
    kind: u8,
) -> std::io::Result<BufWriter<TcpStream>> {
    let sa = connect_addr(addr).map_err(|e| std::io::Error::new(ErrorKind::InvalidInput, e))?;
    let s = TcpStream::connect_timeout(&sa, cfg.connect_timeout)?;
    s.set_nodelay(true)?;
    s.set_write_timeout(Some(cfg.write_timeout))?;
    s.set_read_timeout(Some(cfg.handshake_timeout.max(Duration::from_millis(1))))?;
    let hello = Hello {
        cluster: cfg.cluster.as_bytes().to_vec(),
        from: cfg.node_id,
        to,
        http: cfg
            .advertise_http
            .map(|a| a.to_string())
            .unwrap_or_default()
            .into_bytes(),
        kind,
        auth: cfg.token.is_some(),
        nonce: if cfg.token.is_some() {
            nonce()?
        } else {
            Vec::new()
        },
    }
    .encode();
    let mut w = BufWriter::with_capacity(256 * 1024, s);
    write_frame(&mut w, &hello)?;
    w.flush()?;
    // Frame 2: the acceptor's answer. It sends nothing after it, so the reader holds no extra bytes.
    let mut frames = FrameReader::new(MAX_HANDSHAKE_FRAME);
    let challenge = match frames.next(w.get_mut())? {
        Frame::Data(b) => b.to_vec(),
        Frame::Eof => {
            return Err(io_refused(format!(
            "{addr} closed the connection during the handshake (a different cluster name, cluster \
                 token or protocol version, or not node {to}?)"
        )))
        }
        Frame::Idle => {
            return Err(std::io::Error::new(
                ErrorKind::TimedOut,
                format!(
                    "no handshake answer from {addr} within {:?}",
                    cfg.handshake_timeout
                ),
            ))
        }
    };
    let (auth, acceptor_nonce, proof) = decode_challenge(&challenge)
        .map_err(|e| io_refused(format!("bad handshake answer from {addr}: {e}")))?;
    match (&cfg.token, auth) {
        (Some(token), true) => {
            if !token.verify(true, &hello, &acceptor_nonce, &proof) {
                return Err(io_refused(format!(
                    "{addr} does not know the cluster token (its handshake proof is wrong)"
                )));
            }
            write_frame(&mut w, &token.proof(false, &hello, &acceptor_nonce))?;
        }
        (None, false) => {}
        (Some(_), false) => {
            return Err(io_refused(format!(
                "{addr} answered without authentication, and this node requires the cluster token"
            )))
        }
        (None, true) => {
            return Err(io_refused(format!(
                "{addr} requires a cluster token, and this node has none configured"
            )))
        }
    }
    w.get_ref().set_read_timeout(None)?;
    Ok(w)
}

fn encode_challenge(auth: bool, nonce: &[u8], proof: &[u8]) -> Vec<u8> {
    let mut w = Writer::with_capacity(96);
    w.buf.extend_from_slice(MAGIC);
    w.buf.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    w.u8(if auth { AUTH_HMAC_SHA256 } else { AUTH_NONE });
    w.bytes(nonce);
    w.bytes(proof);
    w.into_inner()
}

/// (auth, acceptor nonce, acceptor proof).
fn decode_challenge(buf: &[u8]) -> Result<(bool, Vec<u8>, Vec<u8>), String> {
    let version = check_preamble(buf)?;
    if version != PROTOCOL_VERSION {
        return Err(format!(
            "protocol version {version}, we speak {PROTOCOL_VERSION}"
        ));
    }
    let mut r = Reader::new(&buf[6..]);
    let e = |e: crate::codec::DecodeError| format!("malformed challenge: {e}");
    let auth = match r.u8().map_err(e)? {
        AUTH_NONE => false,
        AUTH_HMAC_SHA256 => true,
        a => return Err(format!("unknown authentication mode {a}")),
    };
    let nonce = r.bytes().map_err(e)?;
    let proof = r.bytes().map_err(e)?;
    r.finish().map_err(e)?;
    let (n, p) = if auth { (NONCE_LEN, PROOF_LEN) } else { (0, 0) };
    if nonce.len() != n || proof.len() != p {
        return Err(format!(
            "nonce of {} and proof of {} bytes",
            nonce.len(),
            proof.len()
        ));
    }
    Ok((auth, nonce, proof))
}

/// What an accepted handshake established.
pub(super) struct Accepted {
    /// The peer that connected.
    pub from: NodeId,
    /// The HTTP address the peer announced, if it announced a usable one.
    pub http: Option<SocketAddr>,
    /// What the connection carries: `0` messages, `1` one snapshot transfer.
    pub kind: u8,
}

/// Runs the acceptor's side of the handshake on a fresh inbound connection whose frames are capped at
/// [`MAX_HANDSHAKE_FRAME`]. On success the caller may raise the cap and read what the kind says.
pub(super) fn accept(
    sh: &Shared,
    stream: &mut TcpStream,
    frames: &mut FrameReader,
) -> Result<Accepted, String> {
    let cfg = &sh.cfg;
    let deadline = Instant::now() + cfg.handshake_timeout;
    let hello_bytes = next_frame(sh, stream, frames, deadline, "hello")?;
    let hello = Hello::decode(&hello_bytes)?;
    let http = check_hello(&hello, sh)?;
    let _ = stream.set_write_timeout(Some(cfg.handshake_timeout.max(Duration::from_millis(1))));
    match &cfg.token {
        None => {
            let mut w = Vec::new();
            write_frame(&mut w, &encode_challenge(false, &[], &[]))
                .and_then(|_| stream.write_all(&w))
                .map_err(|e| format!("cannot answer the hello: {e}"))?;
        }
        Some(token) => {
            let ours = nonce().map_err(|e| e.to_string())?;
            let proof = token.proof(true, &hello_bytes, &ours);
            let mut w = Vec::new();
            write_frame(&mut w, &encode_challenge(true, &ours, &proof))
                .and_then(|_| stream.write_all(&w))
                .map_err(|e| format!("cannot answer the hello: {e}"))?;
            let theirs = next_frame(sh, stream, frames, deadline, "proof")?;
            if !token.verify(false, &hello_bytes, &ours, &theirs) {
                return Err(format!(
                    "node {} failed the cluster token proof (a different token, or a replayed or \
                     forged handshake)",
                    hello.from
                ));
            }
        }
    }
    let _ = stream.set_write_timeout(Some(cfg.write_timeout));
    Ok(Accepted {
        from: hello.from,
        http,
        kind: hello.kind,
    })
}

/// The next handshake frame, by `deadline`.
fn next_frame(
    sh: &Shared,
    stream: &mut TcpStream,
    frames: &mut FrameReader,
    deadline: Instant,
    what: &str,
) -> Result<Vec<u8>, String> {
    loop {
        if sh.stop.load(Ordering::SeqCst) {
            return Err("transport shutting down".into());
        }
        match frames.next(stream) {
            Ok(Frame::Data(b)) => return Ok(b.to_vec()),
            Ok(Frame::Eof) if what == "proof" => {
                return Err(
                    "closed before sending its proof (it found our proof wrong: another cluster \
                     token?)"
                        .into(),
                )
            }
            Ok(Frame::Eof) => return Err(format!("closed before sending its {what}")),
            Ok(Frame::Idle) => {
                if Instant::now() >= deadline {
                    return Err(format!(
                        "no {what} within the handshake timeout of {:?}",
                        sh.cfg.handshake_timeout
                    ));
                }
            }
            Err(e) => return Err(format!("reading its {what}: {e}")),
        }
    }
}
