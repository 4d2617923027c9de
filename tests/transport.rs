//! The peer transport over loopback: delivery and order, dead and restarted peers, hostile connections.
//! Every wait polls with a deadline.

mod common;

use common::{free_ports, poll};
use crossbeam_channel::Receiver;
use hash_nimbus::raft::{Message, MessageBody};
use hash_nimbus::transport::{Transport, TransportConfig};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

fn start(id: u64, ports: &[u16]) -> (Transport, Receiver<Message>) {
    let peers: BTreeMap<u64, String> = ports
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
    let (tx, rx) = crossbeam_channel::unbounded();
    (Transport::start(cfg, tx).expect("start transport"), rx)
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

fn seq_of(m: &Message) -> u64 {
    match m.body {
        MessageBody::Heartbeat { read_seq, .. } => read_seq,
        _ => panic!("unexpected {m:?}"),
    }
}

#[test]
fn three_nodes_exchange_messages_in_order() {
    let ports = free_ports(3);
    let nodes: Vec<_> = (1..=3).map(|id| start(id, &ports)).collect();
    for (i, (t, _)) in nodes.iter().enumerate() {
        let from = i as u64 + 1;
        for to in (1..=3).filter(|&x| x != from) {
            for seq in 1..=50 {
                // Paced so the bounded queue (64) never drops in this test.
                t.send(hb(from, to, seq));
                if seq % 20 == 0 {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
    for (i, (_, rx)) in nodes.iter().enumerate() {
        let me = i as u64 + 1;
        let mut got: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        poll("100 messages", WAIT, || {
            while let Ok(m) = rx.try_recv() {
                assert_eq!(m.to, me);
                got.entry(m.from).or_default().push(seq_of(&m));
            }
            (got.values().map(Vec::len).sum::<usize>() >= 100).then_some(())
        });
        for (from, seqs) in &got {
            assert_eq!(
                *seqs,
                (1..=50).collect::<Vec<_>>(),
                "from {from} to {me}: order kept"
            );
        }
    }
    for (t, _) in nodes {
        t.shutdown();
    }
}

#[test]
fn a_dead_peer_never_blocks_and_traffic_resumes_when_it_starts() {
    let ports = free_ports(2);
    let (a, _arx) = start(1, &ports);
    let t0 = Instant::now();
    for seq in 0..10_000 {
        a.send(hb(1, 2, seq));
    }
    assert!(t0.elapsed() < Duration::from_secs(2), "send must not block");
    let dropped = poll("drops counted", WAIT, || {
        let d = a.stats()[0].2;
        (d > 0).then_some(d)
    });
    assert!(dropped > 0);
    // Peer 2 starts late: messages flow.
    let (b, brx) = start(2, &ports);
    poll("delivery after the peer started", WAIT, || {
        a.send(hb(1, 2, 1_000_000));
        brx.recv_timeout(Duration::from_millis(50)).ok()
    });
    // Peer 2 restarts on the same port: traffic resumes.
    b.shutdown();
    drop(brx);
    let (b2, brx2) = start(2, &ports);
    poll("delivery after the peer restarted", WAIT, || {
        a.send(hb(1, 2, 2_000_000));
        brx2.recv_timeout(Duration::from_millis(50)).ok()
    });
    let t0 = Instant::now();
    a.shutdown();
    b2.shutdown();
    assert!(t0.elapsed() < Duration::from_secs(5), "shutdown is prompt");
}

/// Connects raw, sends `bytes`, and expects the transport to close the connection, after answering
/// nothing or (to a well-formed hello) only its handshake answer.
fn expect_closed(port: u16, bytes: &[u8]) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(bytes);
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => {
                assert!(
                    e.kind() == std::io::ErrorKind::ConnectionReset,
                    "expected a close, got {e}"
                );
                break;
            }
        }
    }
    assert!(
        got.is_empty() || (got.len() < 64 && &got[4..8] == b"NIMB"),
        "transport answered {got:?}"
    );
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_le_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

/// A hello (no token) from `id` to node 1, for a message connection.
fn handshake(cluster: &str, id: u64) -> Vec<u8> {
    frame(
        &hash_nimbus::transport::handshake::Hello {
            cluster: cluster.as_bytes().to_vec(),
            from: id,
            to: 1,
            http: Vec::new(),
            kind: 0,
            auth: false,
            nonce: Vec::new(),
        }
        .encode(),
    )
}

#[test]
fn hostile_connections_are_closed_and_others_keep_working() {
    let ports = free_ports(2);
    let (a, arx) = start(1, &ports);
    let (b, _brx) = start(2, &ports);
    let port = ports[0];
    expect_closed(port, &frame(b"HTTP/1.1 nonsense"));
    expect_closed(port, &handshake("other-cluster", 2));
    expect_closed(port, &handshake("test", 9)); // not a peer
    expect_closed(port, &handshake("test", 1)); // claims to be the receiver itself
    expect_closed(port, &u32::MAX.to_le_bytes()); // oversized frame
    let mut wrong_receiver = handshake("test", 2);
    wrong_receiver[4 + 4 + 2 + 4 + 4 + 8] = 3; // addressed to node 3
    expect_closed(port, &wrong_receiver);
    let mut bad = handshake("test", 2);
    bad.extend(frame(&[0xFF; 40])); // garbage message
    expect_closed(port, &bad);
    let mut spoof = handshake("test", 2);
    spoof.extend(frame(&hash_nimbus::transport::codec::encode_message(&hb(
        3, 1, 1,
    ))));
    expect_closed(port, &spoof); // message from someone else on node 2's connection
                                 // The real peer still gets through.
    poll("delivery from the real peer", WAIT, || {
        b.send(hb(2, 1, 7));
        arx.recv_timeout(Duration::from_millis(50)).ok()
    });
    a.shutdown();
    b.shutdown();
}

fn handshake_announcing(cluster: &str, id: u64, http: &str) -> Vec<u8> {
    frame(
        &hash_nimbus::transport::handshake::Hello {
            cluster: cluster.as_bytes().to_vec(),
            from: id,
            to: 1,
            http: http.as_bytes().to_vec(),
            kind: 0,
            auth: false,
            nonce: Vec::new(),
        }
        .encode(),
    )
}

/// A handshake alone does not set a peer's HTTP address (the one followers show for the leader): only a
/// connection that then carries a valid message from that peer does. Every refused connection is counted.
#[test]
fn a_spoofed_handshake_does_not_replace_a_peers_http_address() {
    let ports = free_ports(2);
    let (a, arx) = start(1, &ports);
    let port = ports[0];
    let refused = a.refused_connections();
    let mut spoof = handshake_announcing("test", 2, "127.0.0.1:1");
    spoof.extend(frame(&[0xFF; 40]));
    expect_closed(port, &spoof);
    expect_closed(
        port,
        &handshake_announcing("other-cluster", 2, "127.0.0.1:2"),
    );
    assert_eq!(a.peer_http(2), None, "taken from a refused connection");
    poll("both refusals counted", WAIT, || {
        (a.refused_connections() == refused + 2).then_some(())
    });
    // The same handshake followed by a valid message from node 2: now it counts.
    let mut real = handshake_announcing("test", 2, "127.0.0.1:5");
    real.extend(frame(&hash_nimbus::transport::codec::encode_message(&hb(
        2, 1, 1,
    ))));
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(&real).unwrap();
    arx.recv_timeout(WAIT).expect("the message is delivered");
    let want: SocketAddr = "127.0.0.1:5".parse().unwrap();
    poll("the announced HTTP address", WAIT, || {
        (a.peer_http(2) == Some(want)).then_some(())
    });
    drop(s);
    a.shutdown();
}

#[test]
fn a_taken_port_is_an_error_not_a_panic() {
    let ports = free_ports(1);
    let _holder = std::net::TcpListener::bind(("127.0.0.1", ports[0])).unwrap();
    let cfg = TransportConfig::new(
        1,
        "test".into(),
        SocketAddr::from(([127, 0, 0, 1], ports[0])),
        BTreeMap::new(),
    );
    let (tx, _rx) = crossbeam_channel::unbounded();
    let err = Transport::start(cfg, tx).err().expect("bind must fail");
    assert!(err.to_string().contains(&ports[0].to_string()), "{err}");
}
