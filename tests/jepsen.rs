//! Jepsen-style fault testing: real `nimbus` processes, concurrent clients, a nemesis, and a linearizability
//! check of the whole history (one register per key).
//!
//! Faults: kill -9 and restart (leader included), SIGSTOP/SIGCONT, and network partitions made with
//! fault-injecting TCP proxies that this test owns (`common/proxy.rs`): every node reaches every peer
//! through its own proxy per link, so cutting a link is stalling that proxy. Nothing touches the host's
//! firewall.
//!
//! `JEPSEN_SEED=7 cargo test --release --test jepsen -- --nocapture` replays a nemesis schedule (process and
//! network timing still vary between runs, as in any real-process test). `JEPSEN_SECS` sets the fault
//! phase's length (default 15 s), `JEPSEN_RUNS` the number of runs per test (default 1, each with the
//! next seed) and `JEPSEN_MIX` the routes the clients use (`all`, the default: seed and REST routes with
//! compare-and-swap, create-only writes and deletes; `rest`; `seed`: `/set` and `/get` only).
//! A long soak: `JEPSEN_RUNS=100 JEPSEN_SECS=60 cargo test --release --test jepsen -- --nocapture`.

mod common;

use common::proxy::Proxy;
use common::{free_ports_except, TestCluster};
use hash_nimbus::check::analyze;
use hash_nimbus::check::workload::{self, Kind, Mix, Outcome, Run, WorkloadConfig};
use hash_nimbus::raft::Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Net {
    /// proxies[(i, j)]: node i's link to node j.
    proxies: BTreeMap<(usize, usize), Proxy>,
}

impl Net {
    fn heal(&self) {
        for p in self.proxies.values() {
            p.pass();
        }
    }

    /// Only nodes in the same group can talk. A node may be in two groups (a bridge).
    fn partition(&self, groups: &[BTreeSet<usize>]) {
        for (&(i, j), p) in &self.proxies {
            let ok = groups.iter().any(|g| g.contains(&i) && g.contains(&j));
            if ok {
                p.pass()
            } else {
                p.drop_all()
            }
        }
    }
}

fn start_cluster(n: usize) -> (TestCluster, Net) {
    // Snapshots every 100 entries, keeping 20, so they are taken, sent and installed under the faults.
    let flags = [
        "--request-timeout-ms",
        "1500",
        "--snapshot-entries",
        "100",
        "--log-keep-entries",
        "20",
        "--wal-segment-bytes",
        "65536",
    ];
    let mut c = TestCluster::prepare(n, &flags);
    let mut proxies = BTreeMap::new();
    let taken: Vec<u16> = c
        .nodes
        .iter()
        .flat_map(|x| [x.http_port, x.raft_port])
        .collect();
    let mut ports = free_ports_except(n * (n - 1), &taken).into_iter();
    for i in 0..n {
        for j in 0..n {
            if i != j {
                let target = SocketAddr::from(([127, 0, 0, 1], c.nodes[j].raft_port));
                let port = ports.next().expect("enough ports");
                proxies.insert((i, j), Proxy::start(port, target).expect("start proxy"));
            }
        }
    }
    for i in 0..n {
        let spec: Vec<String> = (0..n)
            .map(|j| {
                let port = if i == j {
                    c.nodes[j].raft_port
                } else {
                    proxies[&(i, j)].port
                };
                format!("{},127.0.0.1:{port}", c.nodes[j].id)
            })
            .collect();
        c.specs[i] = Some(spec.join(";"));
    }
    for i in 0..n {
        c.spawn(i);
    }
    (c, Net { proxies })
}

/// Runs the nemesis until `until`, then undoes every fault.
/// Which faults a run injects.
#[derive(Clone, Copy, Debug)]
enum Faults {
    /// kill -9 and SIGSTOP/SIGCONT.
    Process,
    /// Isolated node, leader in the minority, bridge.
    Network,
    Mixed,
}

/// Polls until a node other than `old` reports itself leader; the time it took.
fn time_to_new_leader(c: &TestCluster, old: usize, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        let found = (0..c.nodes.len())
            .filter(|&i| i != old && c.is_running(i))
            .any(|i| c.status(i).is_some_and(|s| s["role"] == "leader"));
        if found {
            return Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// Runs the nemesis until `until`, then undoes every fault. Returns the election times measured after
/// each kill of the leader.
fn nemesis(
    c: &mut TestCluster,
    net: &Net,
    faults: Faults,
    seed: u64,
    until: Instant,
    log: &mut Vec<String>,
) -> Vec<Duration> {
    let n = c.nodes.len();
    let mut rng = Rng::new(seed);
    let t0 = Instant::now();
    let mut stopped: Option<usize> = None;
    let mut elections = Vec::new();
    while Instant::now() < until {
        let pause = Duration::from_millis(800 + rng.below(1500));
        let action = match faults {
            // 5: leadership transfer; 6: remove a node from the cluster and add it back.
            Faults::Process => [0, 1, 6][rng.below(3) as usize],
            Faults::Network => 2 + rng.below(3),
            Faults::Mixed => rng.below(7),
        };
        let leader =
            (0..n).find(|&i| c.is_running(i) && c.status(i).is_some_and(|s| s["role"] == "leader"));
        let victim = if rng.chance(1, 2) {
            leader.unwrap_or(0)
        } else {
            rng.below(n as u64) as usize
        };
        let what = match action {
            0 => {
                c.kill(victim);
                if leader == Some(victim) {
                    match time_to_new_leader(c, victim, pause) {
                        Some(d) => {
                            elections.push(d);
                            format!("kill -9 node {victim} (leader; new leader after {d:.2?})")
                        }
                        None => format!(
                            "kill -9 node {victim} (leader; no new leader within {pause:?})"
                        ),
                    }
                } else {
                    format!("kill -9 node {victim}")
                }
            }
            1 => {
                c.signal(victim, "STOP");
                stopped = Some(victim);
                format!("SIGSTOP node {victim}")
            }
            2 => {
                net.partition(&[
                    BTreeSet::from([victim]),
                    (0..n).filter(|&i| i != victim).collect(),
                ]);
                format!("isolate node {victim}")
            }
            3 => {
                // The leader in the minority (with one companion when there are five nodes).
                let l = leader.unwrap_or(victim);
                let mut minority = BTreeSet::from([l]);
                if n >= 5 {
                    minority.insert((l + 1) % n);
                }
                let majority = (0..n).filter(|i| !minority.contains(i)).collect();
                net.partition(&[minority.clone(), majority]);
                format!("leader in minority {minority:?}")
            }
            4 => {
                // A bridge: two sides that only the bridge node connects.
                let b = victim;
                let others: Vec<usize> = (0..n).filter(|&i| i != b).collect();
                let (a, z) = others.split_at(others.len() / 2);
                let mut g1: BTreeSet<usize> = a.iter().copied().collect();
                let mut g2: BTreeSet<usize> = z.iter().copied().collect();
                g1.insert(b);
                g2.insert(b);
                net.partition(&[g1, g2]);
                format!("bridge through node {b}")
            }
            5 => match leader {
                Some(l) if l != victim => {
                    let body = format!(r#"{{"id": {}}}"#, victim + 1);
                    let r = c
                        .client(l)
                        .request("POST", "/v1/cluster/leader", &[], body.as_bytes());
                    format!(
                        "transfer leadership from node {l} to node {victim}: {}",
                        r.map(|r| r.status.to_string())
                            .unwrap_or_else(|e| e.to_string())
                    )
                }
                _ => "quiet".to_string(),
            },
            6 => match leader {
                Some(l) if l != victim => remove_and_readd(c, l, victim),
                _ => "quiet".to_string(),
            },
            _ => "quiet".to_string(),
        };
        log.push(format!("{:>6.1}s {what}", t0.elapsed().as_secs_f64()));
        std::thread::sleep(pause.min(until.saturating_duration_since(Instant::now())));
        // Undo.
        net.heal();
        if let Some(s) = stopped.take() {
            c.signal(s, "CONT");
        }
        for i in 0..n {
            if !c.is_running(i) {
                c.spawn(i);
            }
        }
        std::thread::sleep(Duration::from_millis(300 + rng.below(700)));
    }
    net.heal();
    for i in 0..n {
        c.signal(i, "CONT");
        if !c.is_running(i) {
            c.spawn(i);
        }
    }
    restore_membership(c, log);
    elections
}

/// After the faults: every node a voter again (adding back any the nemesis removed), within 60 s.
fn restore_membership(c: &TestCluster, log: &mut Vec<String>) {
    let n = c.nodes.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let view = (0..c.nodes.len()).find_map(|i| {
            let r = c.client(i).get("/v1/cluster").ok()?;
            let v: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
            v["leader"].as_u64().map(|l| (l, v))
        });
        if let Some((leader, v)) = view {
            let members = v["members"].as_array().cloned().unwrap_or_default();
            let voters = members.iter().filter(|m| m["voter"] == true).count() as u64;
            if voters == n {
                return;
            }
            for id in 1..=n {
                if !members.iter().any(|m| m["id"].as_u64() == Some(id)) {
                    let i = (id - 1) as usize;
                    let body = format!(
                        r#"{{"id": {id}, "raft_addr": ":{}", "http_addr": "{}", "auto_promote": true}}"#,
                        c.nodes[i].raft_port,
                        c.http_addr(i)
                    );
                    let l = (leader - 1) as usize;
                    let _ =
                        c.client(l)
                            .request("POST", "/v1/cluster/members", &[], body.as_bytes());
                    log.push(format!("after the faults: adding node {i} back"));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the cluster did not get every node back as a voter within 60 s");
}

/// Removes node `victim` through the leader, then adds it back as a learner that the leader promotes once
/// it has caught up (it keeps its data: it rejoins with its old log). Bounded in time.
fn remove_and_readd(c: &TestCluster, leader: usize, victim: usize) -> String {
    let id = victim as u64 + 1;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut outcome = String::new();
    let mut removed = false;
    while Instant::now() < deadline && !removed {
        match c
            .client(leader)
            .request("DELETE", &format!("/v1/cluster/members/{id}"), &[], b"")
        {
            Ok(r) if r.status == 200 || r.status == 404 => removed = true,
            Ok(r) => outcome = format!("{} {}", r.status, r.text()),
            Err(e) => outcome = e.to_string(),
        }
        if !removed {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    if !removed {
        return format!("remove node {victim}: not done ({outcome})");
    }
    let body = format!(
        r#"{{"id": {id}, "raft_addr": ":{}", "http_addr": "{}", "auto_promote": true}}"#,
        c.nodes[victim].raft_port,
        c.http_addr(victim)
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let r = (0..c.nodes.len())
            .filter(|&i| i != victim && c.is_running(i))
            .find_map(|i| {
                c.client(i)
                    .request("POST", "/v1/cluster/members", &[], body.as_bytes())
                    .ok()
                    .filter(|r| r.status == 200 || r.status == 409)
            });
        if r.is_some() {
            return format!("removed node {victim} and added it back as a learner");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    format!("removed node {victim}; adding it back did not finish in time")
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn jepsen(n: usize, faults: Faults, first_seed: u64) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let secs = env_u64("JEPSEN_SECS", 15);
    for seed in first_seed..first_seed + env_u64("JEPSEN_RUNS", 1) {
        jepsen_run(n, faults, seed, secs);
    }
}

fn jepsen_run(n: usize, faults: Faults, seed: u64, secs: u64) {
    let mix: Mix = std::env::var("JEPSEN_MIX")
        .map(|m| m.parse().expect("JEPSEN_MIX"))
        .unwrap_or(Mix::All);
    let (mut c, net) = start_cluster(n);
    c.wait_leader(Duration::from_secs(30));
    let nodes: Vec<SocketAddr> = (0..n).map(|i| c.http_addr(i)).collect();
    let cfg = Arc::new(WorkloadConfig {
        nodes: nodes.clone(),
        clients: 12,
        keys: 100,
        key_prefix: "k".into(),
        duration: Duration::from_secs(secs),
        timeout: Duration::from_secs(3),
        write_percent: 50,
        mix,
        seed,
        max_ops_per_client: 50_000,
    });
    let run = Run::new();
    let clients = workload::spawn_clients(&run, &cfg);
    let mut log = Vec::new();
    let elections = nemesis(
        &mut c,
        &net,
        faults,
        seed,
        run.start + cfg.duration,
        &mut log,
    );
    let fault_secs = run.start.elapsed().as_secs_f64();
    for h in clients {
        h.join().expect("client thread");
    }
    let ok_during = run
        .records
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.outcome == Outcome::Ok)
        .count();
    // Recovery: the healed cluster must elect a leader and answer every key on every node.
    let recovered_at = Instant::now();
    c.wait_leader(Duration::from_secs(30));
    let recovery = recovered_at.elapsed();
    workload::final_reads(&run, &cfg, Duration::from_secs(60)).expect("final reads");
    run.stop.store(true, Ordering::Relaxed);
    let records = run.records.lock().unwrap().clone();
    let report = analyze(&records);
    let snap = |field: &str| -> u64 {
        (0..n)
            .filter_map(|i| c.status(i))
            .filter_map(|s| s["stats"]["snapshots"][field].as_u64())
            .sum()
    };
    // Counters of the nodes' current lives (a restarted node starts from zero).
    let (taken, installed) = (snap("taken"), snap("installed"));
    let elections: Vec<String> = elections.iter().map(|d| format!("{d:.2?}")).collect();
    eprintln!(
        "jepsen n={n} faults={faults:?} seed={seed}: {} ops ({} ok, {} failed, {} indeterminate), {} checked on {} \
         keys; availability {:.0} ok ops/s under faults; leader elected after leader kills in [{}]; \
         recovery after healing {:.1?}; acknowledged writes lost {}; {} violations; snapshots taken {} and \
         installed {} (current lives)\n{}\nnemesis:\n{}",
        records.len(),
        report.ok,
        report.failed,
        report.indeterminate,
        report.checked,
        report.keys,
        ok_during as f64 / fault_secs,
        elections.join(", "),
        recovery,
        report.lost_writes,
        report.violations.len(),
        taken,
        installed,
        report.by_kind_table(),
        log.join("\n")
    );
    assert!(
        report.violations.is_empty(),
        "linearizability violations (seed {seed}, faults {faults:?}):\n{}",
        report.violations.join("\n")
    );
    assert_eq!(
        report.lost_writes, 0,
        "acknowledged writes lost (seed {seed})"
    );
    assert!(taken > 0, "no snapshot was taken during the run");
    assert!(
        report.ok > 100,
        "too few successful operations to mean anything: {}",
        report.ok
    );
    // The mix must have exercised both outcomes of every conditional write, and deletes.
    let counts = |k: Kind| report.by_kind.get(&k).copied().unwrap_or_default();
    let rest = [Kind::Cas, Kind::Create, Kind::CasDelete, Kind::Delete];
    for k in rest.into_iter().filter(|_| mix != Mix::Seed) {
        let c = counts(k);
        assert!(
            c.ok > c.refused && c.refused > 0,
            "{}: too few successes or refusals to mean anything: {c:?}",
            k.label()
        );
    }
}

/// The runs share the machine's two cores: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn seed() -> u64 {
    std::env::var("JEPSEN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

#[test]
fn jepsen_three_nodes_process_faults() {
    jepsen(3, Faults::Process, seed());
}

#[test]
fn jepsen_five_nodes_network_faults() {
    jepsen(5, Faults::Network, seed() + 1000);
}

#[test]
fn jepsen_three_nodes_mixed_faults() {
    jepsen(3, Faults::Mixed, seed() + 2000);
}
