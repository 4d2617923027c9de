//! End-to-end tests against real `nimbus` processes on loopback (see `common/mod.rs`).

mod common;

use common::{nimbus_bin, poll, TestCluster};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

const ELECTION: Duration = Duration::from_secs(20);

/// The seed README's session, word for word: set on node 0, get on nodes 1 and 2.
#[test]
fn seed_readme_session() {
    let mut c = TestCluster::start(3);
    c.wait_leader(ELECTION);
    c.set_eventually(0, "test", "success", ELECTION);
    for i in [1, 2] {
        let r = c.get(i, "test").unwrap();
        assert_eq!(r.status, 200, "node {i}: {}", r.text());
        assert_eq!(r.text(), "success");
    }
    // Missing keys are 404 (the seed answered 500), missing parameters 400.
    let r = c.get(1, "nope").unwrap();
    assert_eq!(r.status, 404);
    assert!(r.text().contains("\"not_found\""), "{}", r.text());
    let r = c.client(0).get("/get").unwrap();
    assert_eq!(r.status, 400);
    let r = c.client(0).get("/set?key=a").unwrap();
    assert_eq!(r.status, 400);
    let r = c.client(0).get("/nowhere").unwrap();
    assert_eq!(r.status, 404);
    // Relaxed reads answer locally.
    let r = poll("relaxed read on node 2", ELECTION, || {
        c.get_relaxed(2, "test").ok().filter(|r| r.status == 200)
    });
    assert_eq!(r.text(), "success");
}

/// A write sent to each follower is forwarded, acknowledged only once applied, and visible everywhere.
#[test]
fn writes_through_every_node() {
    let mut c = TestCluster::start(3);
    let leader = c.wait_leader(ELECTION);
    for i in 0..3 {
        let key = format!("k{i}");
        c.set_eventually(i, &key, &format!("from node {i}"), ELECTION);
        // Linearizable reads on every node see it at once: no polling needed.
        for j in 0..3 {
            let r = c.get(j, &key).unwrap();
            assert_eq!(r.status, 200, "node {j} key {key}: {}", r.text());
            assert_eq!(r.text(), format!("from node {i}"));
        }
    }
    let s = c.status(leader).unwrap();
    assert_eq!(s["role"], "leader");
    assert!(s["stats"]["fsyncs"].as_u64().unwrap() > 0);
    // Keys and values with spaces, symbols and percent-escapes round-trip.
    c.set_eventually(1, "a key/with?odd&chars", "v a=l%ue+", ELECTION);
    assert_eq!(
        c.get(2, "a key/with?odd&chars").unwrap().text(),
        "v a=l%ue+"
    );
}

/// kill -9 the leader: the others elect a new one and take writes; the old leader restarts and serves
/// every acknowledged write.
#[test]
fn leader_crash_and_restart() {
    let mut c = TestCluster::start(3);
    let leader = c.wait_leader(ELECTION);
    let mut acked = BTreeMap::new();
    for n in 0..20 {
        let (k, v) = (format!("key{n}"), format!("value{n}"));
        c.set_eventually(n % 3, &k, &v, ELECTION);
        acked.insert(k, v);
    }
    c.kill(leader);
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    for n in 20..40 {
        let (k, v) = (format!("key{n}"), format!("value{n}"));
        c.set_eventually(others[n % 2], &k, &v, ELECTION);
        acked.insert(k, v);
    }
    let new_leader = c.wait_leader(ELECTION);
    assert_ne!(new_leader, leader);
    c.spawn(leader);
    c.wait_leader(ELECTION);
    for (k, v) in &acked {
        let r = poll(&format!("{k} on the restarted node"), ELECTION, || {
            c.get(leader, k).ok().filter(|r| r.status == 200)
        });
        assert_eq!(&r.text(), v, "key {k}");
    }
}

/// Every node killed and restarted: nothing acknowledged is lost.
#[test]
fn whole_cluster_restart_keeps_acknowledged_writes() {
    let mut c = TestCluster::start(3);
    c.wait_leader(ELECTION);
    let mut acked = BTreeMap::new();
    for n in 0..30 {
        let (k, v) = (format!("k{}", n % 10), format!("v{n}"));
        c.set_eventually(n % 3, &k, &v, ELECTION);
        acked.insert(k, v);
    }
    for i in 0..3 {
        c.kill(i);
    }
    for i in 0..3 {
        c.spawn(i);
    }
    c.wait_leader(ELECTION);
    for (k, v) in &acked {
        for i in 0..3 {
            let r = poll(&format!("{k} on node {i}"), ELECTION, || {
                c.get(i, k).ok().filter(|r| r.status == 200)
            });
            assert_eq!(&r.text(), v, "key {k} on node {i}");
        }
    }
}

/// With no quorum, writes fail cleanly (503 or 504), never 200.
#[test]
fn no_quorum_means_no_acknowledgement() {
    let mut c = TestCluster::start_with(3, &["--request-timeout-ms", "1000"]);
    let leader = c.wait_leader(ELECTION);
    c.set_eventually(leader, "before", "1", ELECTION);
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    for &o in &others {
        c.kill(o);
    }
    let r = c.set(leader, "after", "2").unwrap();
    assert!(
        r.status == 503 || r.status == 504,
        "status {}: {}",
        r.status,
        r.text()
    );
    assert!(r.text().contains("\"error\""), "{}", r.text());
    let r = c.get(leader, "before").unwrap();
    assert!(
        r.status == 503 || r.status == 504,
        "a linearizable read without quorum must fail, got {}",
        r.status
    );
}

fn run_nimbus(args: &[&str]) -> (i32, String) {
    let out = Command::new(nimbus_bin())
        .args(args)
        .output()
        .expect("run nimbus");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_flags_exit_nonzero_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let data = data.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "--node",
                "3",
                "--http",
                ":65000",
                "--cluster",
                "1,:3031;2,:3032;3,:3033",
                "--data-dir",
                data,
            ],
            "out of range",
        ),
        (
            &[
                "--node",
                "0",
                "--http",
                ":65000",
                "--cluster",
                "1:3031",
                "--data-dir",
                data,
            ],
            "raft_id,raft_addr",
        ),
        (
            &[
                "--node",
                "0",
                "--http",
                ":65000",
                "--cluster",
                "0,:3031",
                "--data-dir",
                data,
            ],
            "reserved",
        ),
        (
            &[
                "--node",
                "0",
                "--http",
                ":65000",
                "--cluster",
                "1,:3031;1,:3032",
                "--data-dir",
                data,
            ],
            "twice",
        ),
        (
            &[
                "--node",
                "0",
                "--http",
                "nonsense",
                "--cluster",
                "1,:3031",
                "--data-dir",
                data,
            ],
            "--http",
        ),
        (
            &["--node", "x", "--http", ":65000", "--cluster", "1,:3031"],
            "invalid value",
        ),
        (&["--http", ":65000", "--cluster", "1,:3031"], "--node"),
        (
            &[
                "--node",
                "0",
                "--http",
                ":65000",
                "--cluster",
                "1,:3031",
                "--election-ticks",
                "1",
                "--data-dir",
                data,
            ],
            "election-ticks",
        ),
        (
            &[
                "--node",
                "0",
                "--http",
                ":65000",
                "--cluster",
                "1,:3031",
                "--data-dir",
                "/proc/nimbus-cannot-exist",
            ],
            "data directory",
        ),
    ];
    for (args, needle) in cases {
        let (code, stderr) = run_nimbus(args);
        assert_ne!(code, 0, "{args:?} should fail");
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?}: expected {needle:?} in {stderr:?}"
        );
    }
    let (code, out) = {
        let o = Command::new(nimbus_bin())
            .arg("--version")
            .output()
            .unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    assert_eq!(code, 0);
    assert!(out.contains("nimbus"), "{out}");
}

/// Disk crash recovery: kill -9 nodes (the leader half the time) in the middle of heavy writes, again and
/// again. Every restart must reopen its WAL, and every acknowledged write must be on every node at the end.
#[test]
fn repeated_kill_during_heavy_writes() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let mut c = TestCluster::start(3);
    c.wait_leader(ELECTION);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let addrs: Vec<_> = (0..3).map(|i| c.http_addr(i)).collect();
    let writers: Vec<_> = (0..6)
        .map(|w| {
            let (stop, acked, addrs) = (stop.clone(), acked.clone(), addrs.clone());
            std::thread::spawn(move || {
                let mut clients: Vec<_> = addrs
                    .iter()
                    .map(|&a| hash_nimbus::http_client::HttpClient::new(a, Duration::from_secs(3)))
                    .collect();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && n < 200_000 {
                    n += 1;
                    let key = format!("w{w}-{n}");
                    let node = (n as usize + w) % 3;
                    let path = format!("/set?key={key}&value=v{n}");
                    if let Ok(r) = clients[node].get(&path) {
                        if r.status == 200 {
                            acked.lock().unwrap().insert(key, format!("v{n}"));
                        }
                    }
                }
            })
        })
        .collect();
    let mut rng = hash_nimbus::raft::Rng::new(42);
    for round in 0..8 {
        // Let writes pile up, then crash a node mid-stream.
        std::thread::sleep(Duration::from_millis(200 + rng.below(400)));
        let victim = if round % 2 == 0 {
            (0..3)
                .find(|&i| c.status(i).is_some_and(|s| s["role"] == "leader"))
                .unwrap_or(0)
        } else {
            rng.below(3) as usize
        };
        c.kill(victim);
        std::thread::sleep(Duration::from_millis(rng.below(300)));
        c.spawn(victim);
        c.check_alive();
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    c.wait_leader(ELECTION);
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 200,
        "too few writes acknowledged: {}",
        acked.len()
    );
    for i in 0..3 {
        poll(&format!("node {i} caught up"), ELECTION, || {
            let s = c.status(i)?;
            let leader = c.wait_leader_quiet()?;
            let ls = c.status(leader)?;
            (s["applied_index"] == ls["commit_index"]).then_some(())
        });
        for (k, v) in &acked {
            let r = c.get_relaxed(i, k).unwrap();
            assert_eq!(r.status, 200, "node {i} lost acknowledged {k}");
            assert_eq!(&r.text(), v, "node {i} key {k}");
        }
    }
}
