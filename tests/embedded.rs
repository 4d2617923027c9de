//! The embedding API (`hash_nimbus::embed`): `examples/embedded.rs` run as a test (its scenario checks
//! every step), plus the handle's edges. Every wait polls with a deadline.

#[path = "../examples/embedded.rs"]
#[allow(dead_code)]
mod embedded;

use embedded::{Cluster, Op, Output, Queue};
use hash_nimbus::embed::{Config, Error, Node, StateMachine};
use std::time::Duration;

#[test]
fn example_scenario_fails_over_and_catches_up() {
    let mut cluster = Cluster::start(3).unwrap();
    let summary = embedded::scenario(&mut cluster, &mut |line| eprintln!("{line}")).unwrap();
    assert_ne!(summary.first_leader, summary.second_leader);
    assert_eq!(summary.contents.len(), 29);
    // Snapshots were taken (every 10 entries) by the custom state machine's writer on every node, and
    // the restarted node got its state from one (the log it missed was compacted to 4 entries).
    for id in 1..=3 {
        let snaps: Vec<_> = std::fs::read_dir(cluster.data_dir(id).join("snap"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".snap"))
            .collect();
        assert!(!snaps.is_empty(), "node {id} has no snapshot");
    }
    let status = cluster
        .node(summary.second_leader)
        .unwrap()
        .status()
        .unwrap();
    assert_eq!(status.leader, Some(summary.second_leader));
    assert!(status.applied_index >= 31, "{status:?}");
    cluster.shutdown().unwrap();
}

#[test]
fn a_single_node_restarts_from_its_snapshot_and_log() {
    let dir = tempfile::tempdir().unwrap();
    let port = embedded::free_ports(1).unwrap()[0];
    let mut cfg = Config::new(1, [(1, format!("127.0.0.1:{port}"))], dir.path());
    cfg.tick = Duration::from_millis(10);
    cfg.snapshot_entries = 5;
    let t = Duration::from_secs(10);
    let node = Node::start(cfg.clone(), Queue::default()).unwrap();
    for i in 0..12 {
        let applied = node.propose(Op::Push(format!("x{i}")).encode(), t).unwrap();
        assert_eq!(applied.output, Output::Pushed { len: i + 1 });
    }
    // Garbage is an output, not a failure: every node applies it alike.
    let junk = node.propose(b"?".to_vec(), t).unwrap();
    assert_eq!(junk.output, Output::Invalid);
    let before = node.read(|q| q.clone(), t).unwrap();
    // The data directory is locked while the node runs.
    match Node::start(cfg.clone(), Queue::default()) {
        Err(Error::Start(_)) => {}
        other => panic!("a second node on the same directory: {:?}", other.err()),
    }
    node.shutdown().unwrap();
    let node = Node::start(cfg, Queue::default()).unwrap();
    assert_eq!(node.read(|q| q.clone(), t).unwrap(), before);
    assert_eq!(
        node.propose(Op::Pop.encode(), t).unwrap().output,
        Output::Popped(Some("x0".into()))
    );
    let local = node.read_local(|q| q.clone(), t).unwrap();
    assert_eq!(local, {
        let mut q = before.clone();
        q.apply(0, &Op::Pop.encode());
        q
    });
    node.halt().unwrap();
}

#[test]
fn without_a_quorum_proposals_fail_definitely_at_their_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let ports = embedded::free_ports(2).unwrap();
    let members = [
        (1, format!("127.0.0.1:{}", ports[0])),
        (2, format!("127.0.0.1:{}", ports[1])),
    ];
    let mut cfg = Config::new(1, members, dir.path());
    cfg.tick = Duration::from_millis(10);
    // Node 2 never starts: no leader can be elected, so the proposal is never applied.
    let node = Node::start(cfg, Queue::default()).unwrap();
    let err = node
        .propose(Op::Pop.encode(), Duration::from_millis(300))
        .unwrap_err();
    assert_eq!(err, Error::NotLeader { leader: None });
    assert!(!err.outcome_unknown());
    assert!(node.status().unwrap().leader.is_none());
    node.halt().unwrap();
}

#[test]
fn bad_configurations_are_start_errors() {
    let dir = tempfile::tempdir().unwrap();
    for (id, members) in [
        (1, vec![(2, "127.0.0.1:20001".to_string())]),
        (0, vec![(0, "127.0.0.1:20001".to_string())]),
        (1, vec![(1, "no-port".to_string())]),
    ] {
        let cfg = Config::new(id, members.clone(), dir.path());
        match Node::start(cfg, Queue::default()) {
            Err(Error::Start(m)) => assert!(!m.is_empty()),
            other => panic!("{id} {members:?}: {:?}", other.err()),
        }
    }
}

#[test]
fn the_queue_refuses_torn_snapshots() {
    let mut q = Queue::default();
    q.apply(1, &Op::Push("hello".into()).encode());
    let mut bytes = Vec::new();
    q.snapshot()(&mut bytes).unwrap();
    let mut back = Queue::default();
    back.restore(1, &mut &bytes[..]).unwrap();
    assert_eq!(back, q);
    for cut in 1..bytes.len() {
        assert!(Queue::default().restore(1, &mut &bytes[..cut]).is_err());
    }
}
