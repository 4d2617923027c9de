//! Membership at runtime with real processes: nodes join with `--join` and are promoted once caught up,
//! members are removed (the leader included), leadership is transferred, bad requests get clear 4xx
//! answers, and SIGTERM stops a leader gracefully. A write load runs throughout; every acknowledged write
//! must be on every remaining member at the end. Every wait polls with a deadline.

mod common;

use common::{free_ports, nimbus_bin, poll, TestCluster};
use hash_nimbus::http_client::{encode_query_value, HttpClient};
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn json(r: &hash_nimbus::http_client::HttpResponse) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.text()))
}

/// A node started with `--join`, outside the TestCluster's bookkeeping.
struct Joiner {
    child: Child,
    http: u16,
}

impl Drop for Joiner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn join(c: &TestCluster, id: u64, via: usize) -> Joiner {
    let ports = free_ports(2);
    let (http, raft) = (ports[0], ports[1]);
    let log = std::fs::File::create(c.dir.path().join(format!("node-{id}.log"))).unwrap();
    let child = Command::new(nimbus_bin())
        .args(["--id", &id.to_string()])
        .args(["--raft", &format!(":{raft}")])
        .args(["--http", &format!(":{http}")])
        .args(["--join", &format!("http://{}", c.http_addr(via))])
        .arg("--data-dir")
        .arg(c.dir.path().join(format!("data-{id}")))
        .args(["--tick-ms", "20"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn nimbus --join");
    Joiner { child, http }
}

fn cluster_view(addr: std::net::SocketAddr) -> Option<serde_json::Value> {
    let r = HttpClient::new(addr, Duration::from_secs(5))
        .get("/v1/cluster")
        .ok()?;
    (r.status == 200).then(|| json(&r))
}

fn voters(view: &serde_json::Value) -> Vec<u64> {
    view["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["voter"] == true)
        .map(|m| m["id"].as_u64().unwrap())
        .collect()
}

fn request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> hash_nimbus::http_client::HttpResponse {
    HttpClient::new(addr, Duration::from_secs(15))
        .request(method, path, &[], body.as_bytes())
        .expect("request")
}

/// Writes keys `w<thread>-<n>` until stopped, through the given nodes in turn; records acknowledged
/// writes.
fn write_load(
    addrs: Arc<Mutex<Vec<std::net::SocketAddr>>>,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<BTreeMap<String, String>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) && n < 200_000 {
            let list = addrs.lock().unwrap().clone();
            let addr = list[n as usize % list.len()];
            let key = format!("k{}", n % 300);
            let value = format!("v{n}");
            let path = format!(
                "/set?key={}&value={}",
                encode_query_value(key.as_bytes()),
                encode_query_value(value.as_bytes())
            );
            match HttpClient::new(addr, Duration::from_secs(5)).get(&path) {
                Ok(r) if r.status == 200 => {
                    acked.lock().unwrap().insert(key, value);
                }
                // A failed write of this key may or may not have applied: forget what we knew of it.
                _ => {
                    acked.lock().unwrap().remove(&key);
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            n += 1;
        }
    })
}

#[test]
fn grow_shrink_replace_and_transfer_under_load() {
    let mut c = TestCluster::start_with(3, &["--snapshot-entries", "500"]);
    let leader = c.wait_leader(WAIT);
    let addrs = Arc::new(Mutex::new(vec![
        c.http_addr(0),
        c.http_addr(1),
        c.http_addr(2),
    ]));
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let load = write_load(addrs.clone(), stop.clone(), acked.clone());

    // Grow 3 -> 5: node 4 joins through the leader, node 5 through a follower (forwarded).
    let n4 = join(&c, 4, leader);
    let n5 = join(&c, 5, (leader + 1) % 3);
    let view = poll("nodes 4 and 5 promoted", Duration::from_secs(60), || {
        let v = cluster_view(c.http_addr(leader))?;
        (voters(&v).len() == 5).then_some(v)
    });
    assert_eq!(voters(&view), vec![1, 2, 3, 4, 5]);
    let a4 = std::net::SocketAddr::from(([127, 0, 0, 1], n4.http));
    let a5 = std::net::SocketAddr::from(([127, 0, 0, 1], n5.http));
    addrs.lock().unwrap().extend([a4, a5]);

    // Bad requests.
    let la = c.http_addr(leader);
    let dup = request(
        la,
        "POST",
        "/v1/cluster/members",
        r#"{"id": 4, "raft_addr": ":1"}"#,
    );
    assert_eq!(dup.status, 409, "{}", dup.text());
    let unknown = request(la, "DELETE", "/v1/cluster/members/99", "");
    assert_eq!(unknown.status, 404, "{}", unknown.text());
    let promote_voter = request(la, "POST", "/v1/cluster/members/2/promote", "");
    assert_eq!(promote_voter.status, 409, "{}", promote_voter.text());
    let garbage = request(la, "POST", "/v1/cluster/members", "{nope");
    assert_eq!(garbage.status, 400);

    // Shrink 5 -> 3, removing the current leader among others (sent to a follower: forwarded).
    let leader_id = leader as u64 + 1;
    let other = (leader + 1) % 3;
    let other_id = other as u64 + 1;
    let survivor = (leader + 2) % 3;
    addrs
        .lock()
        .unwrap()
        .retain(|&a| a != c.http_addr(leader) && a != c.http_addr(other));
    for id in [other_id, leader_id] {
        let r = poll(&format!("removing n{id}"), WAIT, || {
            let r = request(
                c.http_addr(survivor),
                "DELETE",
                &format!("/v1/cluster/members/{id}"),
                "",
            );
            (r.status == 200).then_some(r)
        });
        assert!(json(&r)["index"].as_u64().unwrap() > 0);
    }
    let view = poll("three voters and a new leader", WAIT, || {
        let v = cluster_view(c.http_addr(survivor))?;
        let l = v["leader"].as_u64()?;
        (voters(&v).len() == 3 && l != leader_id && l != other_id).then_some(v)
    });
    let new_leader = view["leader"].as_u64().unwrap();

    // Transfer leadership to another voter.
    let target = voters(&view)
        .into_iter()
        .find(|&v| v != new_leader)
        .unwrap();
    let r = request(
        c.http_addr(survivor),
        "POST",
        "/v1/cluster/leader",
        &format!(r#"{{"id": {target}}}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // A transfer the target cannot finish within an election timeout is abandoned: ask again until done.
    let mut asked = 0;
    poll("the transfer", WAIT, || {
        let v = cluster_view(c.http_addr(survivor))?;
        if v["leader"].as_u64() == Some(target) {
            return Some(());
        }
        asked += 1;
        if asked % 20 == 0 {
            let body = format!(r#"{{"id": {target}}}"#);
            let _ = request(c.http_addr(survivor), "POST", "/v1/cluster/leader", &body);
        }
        None
    });

    // Let the load run on the final cluster too, then stop it.
    poll("writes acknowledged by the final cluster", WAIT, || {
        (acked.lock().unwrap().len() >= 200).then_some(())
    });
    stop.store(true, Ordering::SeqCst);
    load.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    // Every acknowledged write on every remaining member, once they caught up.
    let members = [c.http_addr(survivor), a4, a5];
    let final_key = "final";
    poll("a last write", WAIT, || {
        let r = request(
            members[0],
            "GET",
            &format!("/set?key={final_key}&value=1"),
            "",
        );
        (r.status == 200).then_some(())
    });
    for &m in &members {
        poll("caught up", WAIT, || {
            let r = request(m, "GET", &format!("/get?key={final_key}&relaxed=true"), "");
            (r.status == 200).then_some(())
        });
        for (k, v) in &acked {
            let r = request(m, "GET", &format!("/get?key={k}&relaxed=true"), "");
            assert_eq!(r.text(), *v, "{m} {k}");
        }
    }
    c.check_alive();
}

/// SIGTERM on the leader: it hands leadership over and exits 0; the others keep serving writes.
#[test]
fn sigterm_hands_leadership_over_and_exits_cleanly() {
    let mut c = TestCluster::start(3);
    let leader = c.wait_leader(WAIT);
    c.set_eventually(leader, "before", "1", WAIT);
    c.signal(leader, "TERM");
    let status = poll("the leader to exit", WAIT, || {
        c.nodes[leader]
            .child
            .as_mut()
            .unwrap()
            .try_wait()
            .ok()
            .flatten()
    });
    assert!(status.success(), "exit status {status}");
    c.nodes[leader].child = None;
    let next = c.wait_leader(WAIT);
    assert_ne!(next, leader);
    c.set_eventually(next, "after", "2", WAIT);
    assert!(
        c.logs(leader).contains("handing leadership to"),
        "the leader transferred leadership before exiting"
    );
}
