//! Peer authentication in the transport (cluster token, HMAC-SHA256 challenge-response): the right token
//! works, a wrong or missing token is refused in both directions, a recorded handshake cannot be replayed,
//! and a stranger's forged vote never reaches the node's inbound channel. Every wait polls with a deadline.

mod common;

use common::{free_ports, poll};
use crossbeam_channel::Receiver;
use hash_nimbus::raft::{Message, MessageBody};
use hash_nimbus::transport::codec::encode_message;
use hash_nimbus::transport::handshake::Hello;
use hash_nimbus::transport::{ClusterToken, Transport, TransportConfig};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);
/// How long a refused pair keeps trying before the test checks that nothing got through.
const TRY_FOR: Duration = Duration::from_millis(1500);

fn token(s: &str) -> Option<ClusterToken> {
    Some(ClusterToken::new(s.as_bytes()).expect("valid token"))
}

/// Starts node `id` (1-based) of a cluster whose nodes listen on `ports`; `peer_ports` overrides where it
/// reaches the others.
fn start_with(
    id: u64,
    ports: &[u16],
    peer_ports: Option<&[u16]>,
    tok: Option<ClusterToken>,
) -> (Transport, Receiver<Message>) {
    let reach = peer_ports.unwrap_or(ports);
    let peers: BTreeMap<u64, String> = reach
        .iter()
        .enumerate()
        .map(|(i, p)| (i as u64 + 1, format!("127.0.0.1:{p}")))
        .filter(|(pid, _)| *pid != id)
        .collect();
    let listen = SocketAddr::from(([127, 0, 0, 1], ports[id as usize - 1]));
    let mut cfg = TransportConfig::new(id, "test".into(), listen, peers);
    cfg.queue_len = 64;
    cfg.max_frame_size = 1 << 20;
    cfg.backoff_max = Duration::from_millis(100);
    cfg.handshake_timeout = Duration::from_secs(2);
    cfg.token = tok;
    let (tx, rx) = crossbeam_channel::unbounded();
    (Transport::start(cfg, tx).expect("start transport"), rx)
}

fn start(id: u64, ports: &[u16], tok: Option<ClusterToken>) -> (Transport, Receiver<Message>) {
    start_with(id, ports, None, tok)
}

fn hb(from: u64, to: u64, seq: u64) -> Message {
    Message {
        from,
        to,
        term: 1,
        body: MessageBody::Heartbeat {
            commit: 0,
            read_seq: seq,
        },
    }
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_le_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

/// Both directions deliver.
fn assert_delivers(a: &Transport, arx: &Receiver<Message>, b: &Transport, brx: &Receiver<Message>) {
    poll("delivery from 1 to 2", WAIT, || {
        a.send(hb(1, 2, 1));
        brx.recv_timeout(Duration::from_millis(50)).ok()
    });
    poll("delivery from 2 to 1", WAIT, || {
        b.send(hb(2, 1, 1));
        arx.recv_timeout(Duration::from_millis(50)).ok()
    });
}

/// Both sides keep sending for a while; nothing arrives anywhere, and both acceptors refused connections.
fn assert_refused_both_ways(
    a: &Transport,
    arx: &Receiver<Message>,
    b: &Transport,
    brx: &Receiver<Message>,
) {
    let until = Instant::now() + TRY_FOR;
    while Instant::now() < until {
        a.send(hb(1, 2, 1));
        b.send(hb(2, 1, 1));
        std::thread::sleep(Duration::from_millis(20));
    }
    poll("refusals on both sides", WAIT, || {
        (a.refused_connections() > 0 && b.refused_connections() > 0).then_some(())
    });
    assert!(arx.try_recv().is_err(), "node 1 received a message");
    assert!(brx.try_recv().is_err(), "node 2 received a message");
}

#[test]
fn the_right_token_works() {
    let ports = free_ports(2);
    let t = token("a shared secret of the test cluster");
    let (a, arx) = start(1, &ports, t.clone());
    let (b, brx) = start(2, &ports, t);
    assert_delivers(&a, &arx, &b, &brx);
    assert_eq!(a.refused_connections() + b.refused_connections(), 0);
    a.shutdown();
    b.shutdown();
}

#[test]
fn without_tokens_on_both_sides_peers_still_talk() {
    let ports = free_ports(2);
    let (a, arx) = start(1, &ports, None);
    let (b, brx) = start(2, &ports, None);
    assert_delivers(&a, &arx, &b, &brx);
    a.shutdown();
    b.shutdown();
}

#[test]
fn a_wrong_token_is_refused_both_ways() {
    let ports = free_ports(2);
    let (a, arx) = start(1, &ports, token("the first cluster's secret"));
    let (b, brx) = start(2, &ports, token("the second cluster's secret"));
    assert_refused_both_ways(&a, &arx, &b, &brx);
    a.shutdown();
    b.shutdown();
}

#[test]
fn a_token_against_none_is_refused_both_ways() {
    let ports = free_ports(2);
    let (a, arx) = start(1, &ports, token("only node one has a token"));
    let (b, brx) = start(2, &ports, None);
    assert_refused_both_ways(&a, &arx, &b, &brx);
    a.shutdown();
    b.shutdown();
}

/// Forwards one connection from a listener to `to`, recording what the connector sent.
fn recording_proxy(listener: TcpListener, to: u16, record: Arc<Mutex<Vec<u8>>>) {
    std::thread::spawn(move || {
        let Ok((mut client, _)) = listener.accept() else {
            return;
        };
        let Ok(mut server) = TcpStream::connect(("127.0.0.1", to)) else {
            return;
        };
        let (Ok(mut c2), Ok(mut s2)) = (client.try_clone(), server.try_clone()) else {
            return;
        };
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut s2, &mut c2);
            let _ = c2.shutdown(std::net::Shutdown::Both);
        });
        let mut buf = [0u8; 4096];
        loop {
            match client.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    record.lock().unwrap().extend_from_slice(&buf[..n]);
                    if server.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = server.shutdown(std::net::Shutdown::Both);
    });
}

/// Reads until the other side closes (or resets); panics if it stays open past the deadline.
fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("the connection was not closed: {e}"),
        }
    }
}

#[test]
fn a_recorded_handshake_cannot_be_replayed() {
    let ports = free_ports(3);
    let t = token("secret for the replay test");
    // Node 1 reaches node 2 through a proxy that records everything node 1 sends.
    let proxy = TcpListener::bind(("127.0.0.1", ports[2])).unwrap();
    let record = Arc::new(Mutex::new(Vec::new()));
    recording_proxy(proxy, ports[1], record.clone());
    let (a, _arx) = start_with(1, &ports[..2], Some(&[ports[0], ports[2]]), t.clone());
    let (b, brx) = start(2, &ports[..2], t);
    poll("delivery through the recording proxy", WAIT, || {
        a.send(hb(1, 2, 1));
        brx.recv_timeout(Duration::from_millis(50)).ok()
    });
    a.shutdown();
    let recorded = record.lock().unwrap().clone();
    // Hello (76 bytes framed), proof (36), then at least one heartbeat (45).
    assert!(
        recorded.len() >= 76 + 36 + 45,
        "recorded only {} bytes",
        recorded.len()
    );
    while brx.try_recv().is_ok() {}
    let refused_before = b.refused_connections();
    // The whole recorded stream (hello, proof, heartbeats) replayed on a new connection.
    let mut s = TcpStream::connect(("127.0.0.1", ports[1])).unwrap();
    s.write_all(&recorded).unwrap();
    read_until_closed(&mut s);
    poll("the replay refused", WAIT, || {
        (b.refused_connections() > refused_before).then_some(())
    });
    assert!(
        brx.recv_timeout(Duration::from_millis(500)).is_err(),
        "a replayed message reached node 2"
    );
    b.shutdown();
}

fn vote(from: u64, to: u64) -> Vec<u8> {
    frame(&encode_message(&Message {
        from,
        to,
        term: 1_000,
        body: MessageBody::Vote {
            last_index: 1 << 40,
            last_term: 999,
            transfer: false,
        },
    }))
}

fn hello(auth: bool) -> Vec<u8> {
    Hello {
        cluster: b"test".to_vec(),
        from: 2,
        to: 1,
        http: Vec::new(),
        kind: 0,
        auth,
        nonce: if auth { vec![7; 32] } else { Vec::new() },
    }
    .encode()
}

#[test]
fn a_strangers_forged_vote_never_reaches_the_node() {
    let ports = free_ports(2);
    let (a, arx) = start(1, &ports, token("the cluster's real secret"));
    let port = ports[0];
    // 1. A hello without authentication, then the vote.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut bytes = frame(&hello(false));
    bytes.extend(vote(2, 1));
    let _ = s.write_all(&bytes);
    assert!(read_until_closed(&mut s).is_empty(), "answered a stranger");
    // 2. A hello with authentication and a made-up proof, then the vote.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(&frame(&hello(true))).unwrap();
    let mut bytes = frame(&[0x5A; 32]);
    bytes.extend(vote(2, 1));
    let _ = s.write_all(&bytes);
    read_until_closed(&mut s); // the challenge, then the close
                               // 3. The old protocol (version 2): a bare handshake, then the vote.
    let mut old = b"NIMB".to_vec();
    old.extend_from_slice(&2u16.to_le_bytes());
    old.extend_from_slice(&4u32.to_le_bytes());
    old.extend_from_slice(b"test");
    old.extend_from_slice(&2u64.to_le_bytes());
    old.extend_from_slice(&0u32.to_le_bytes());
    old.push(0);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut bytes = frame(&old);
    bytes.extend(vote(2, 1));
    let _ = s.write_all(&bytes);
    assert!(read_until_closed(&mut s).is_empty());
    // 4. The vote alone, no handshake.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _ = s.write_all(&vote(2, 1));
    read_until_closed(&mut s);
    // 5. A hello that never finishes: closed at the handshake timeout.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _ = s.write_all(&frame(&hello(true))[..10]);
    read_until_closed(&mut s);
    poll("five refusals", WAIT, || {
        (a.refused_connections() >= 5).then_some(())
    });
    assert!(
        arx.recv_timeout(Duration::from_millis(300)).is_err(),
        "a forged message reached the node"
    );
    a.shutdown();
}

#[test]
fn a_flood_of_garbage_connections_is_refused_and_the_real_peer_still_works() {
    let ports = free_ports(2);
    let t = token("the flood test's secret");
    let (a, arx) = start(1, &ports, t.clone());
    let (b, _brx) = start(2, &ports, t);
    for k in 0..200u32 {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", ports[0])) {
            let _ = s.write_all(&frame(&k.to_le_bytes()));
        }
    }
    poll("the flood refused", WAIT, || {
        (a.refused_connections() >= 150).then_some(())
    });
    poll("delivery from the real peer", WAIT, || {
        b.send(hb(2, 1, 7));
        arx.recv_timeout(Duration::from_millis(50)).ok()
    });
    a.shutdown();
    b.shutdown();
}

#[test]
fn tokens_are_checked_and_never_shown() {
    assert!(ClusterToken::new(b"short").is_err());
    assert!(ClusterToken::new(b"   \n").is_err());
    assert!(ClusterToken::new(&vec![b'x'; 5000]).is_err());
    let t = ClusterToken::new(b"  sixteen bytes at least\n").unwrap();
    assert_eq!(t, ClusterToken::new(b"sixteen bytes at least").unwrap());
    let shown = format!("{t:?}");
    assert!(!shown.contains("sixteen"), "{shown}");
    // The two roles' proofs differ, and each depends on the hello and the nonce.
    let h = hello(true);
    let n = [1u8; 32];
    let acceptor = t.proof(true, &h, &n);
    assert_eq!(acceptor.len(), 32);
    assert_ne!(acceptor, t.proof(false, &h, &n));
    assert_ne!(acceptor, t.proof(true, &h, &[2u8; 32]));
    assert_ne!(acceptor, t.proof(true, &hello(false), &n));
}

#[test]
fn hellos_round_trip_and_garbage_never_panics() {
    let h = Hello::decode(&hello(true)).unwrap();
    assert_eq!((h.from, h.to, h.auth, h.nonce.len()), (2, 1, true, 32));
    let bytes = hello(true);
    for cut in 0..bytes.len() {
        assert!(Hello::decode(&bytes[..cut]).is_err(), "prefix {cut}");
    }
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut b = bytes.clone();
            b[i] ^= 1 << bit;
            let _ = Hello::decode(&b);
        }
    }
}

/// Snapshot transfers run the same handshake: through with the right token, refused with a wrong one.
#[test]
fn snapshot_transfers_need_the_token_too() {
    use hash_nimbus::transport::snapshot::OutgoingSnapshot;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("snap");
    std::fs::write(&file, vec![42u8; 3 << 20]).unwrap();
    let recv_dir = dir.path().join("incoming");
    std::fs::create_dir_all(&recv_dir).unwrap();
    for (receiver_token, ok) in [
        ("the snapshot test's secret", true),
        ("another secret!!", false),
    ] {
        let ports = free_ports(2);
        let (a, _arx) = start(1, &ports, token("the snapshot test's secret"));
        let listen = SocketAddr::from(([127, 0, 0, 1], ports[1]));
        let peers = BTreeMap::from([(1, format!("127.0.0.1:{}", ports[0]))]);
        let mut cfg = TransportConfig::new(2, "test".into(), listen, peers);
        cfg.snapshot_dir = Some(recv_dir.clone());
        cfg.token = token(receiver_token);
        let (tx, brx) = crossbeam_channel::unbounded();
        let b = Transport::start(cfg, tx).unwrap();
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        a.send_snapshot(
            OutgoingSnapshot {
                message: Message {
                    from: 1,
                    to: 2,
                    term: 1,
                    body: MessageBody::InstallSnapshot {
                        index: 5,
                        last_term: 1,
                        membership: hash_nimbus::raft::Membership {
                            voters: [1, 2].into(),
                            learners: Default::default(),
                        },
                        context: Vec::new(),
                    },
                },
                path: file.clone(),
            },
            done_tx,
        );
        let done = done_rx.recv_timeout(WAIT).expect("the transfer ends");
        assert_eq!(done.ok, ok, "receiver token {receiver_token:?}");
        let got = brx.recv_timeout(Duration::from_millis(300));
        if ok {
            assert!(
                matches!(
                    got,
                    Ok(Message {
                        body: MessageBody::InstallSnapshot { index: 5, .. },
                        ..
                    })
                ),
                "{got:?}"
            );
        } else {
            assert!(got.is_err(), "a refused transfer delivered {got:?}");
            assert!(b.refused_connections() > 0);
        }
        a.shutdown();
        b.shutdown();
    }
}
