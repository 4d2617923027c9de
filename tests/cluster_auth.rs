//! Who may change the cluster, with real `nimbus` processes: the admin token on the `/v1/cluster` routes
//! (`--admin-token-file`, `NIMBUS_ADMIN_TOKEN`; `--join` presents it), and a node joining with the wrong
//! cluster token, which is added as a learner over HTTP but never receives an entry or a snapshot, never
//! votes and never disturbs the leader. Every wait polls with a deadline; every loop is bounded.

mod common;

use common::{free_ports, nimbus_bin, poll, TestCluster};
use hash_nimbus::http_client::{HttpClient, HttpResponse};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);
const ADMIN: &str = "the-admin-token-of-this-test";
const CLUSTER: &str = "the cluster token of this test";

/// A node started with `--join`, killed when dropped.
struct Joiner {
    child: Child,
    http: SocketAddr,
    log: std::path::PathBuf,
}

impl Drop for Joiner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Joiner {
    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    fn status(&self) -> Option<serde_json::Value> {
        let r = HttpClient::new(self.http, Duration::from_secs(5))
            .get("/status")
            .ok()?;
        serde_json::from_slice(&r.body).ok()
    }
}

/// Starts node `id` joining through node `via`'s HTTP address, with `env` (the tokens) and `args`.
fn join(c: &TestCluster, id: u64, via: usize, env: &[(&str, &str)], args: &[&str]) -> Joiner {
    let ports = free_ports(2);
    let log = c.dir.path().join(format!("joiner-{id}.log"));
    let mut cmd = Command::new(nimbus_bin());
    cmd.args(["--id", &id.to_string()])
        .args(["--raft", &format!(":{}", ports[1])])
        .args(["--http", &format!(":{}", ports[0])])
        .args(["--join", &format!("http://{}", c.http_addr(via))])
        .arg("--data-dir")
        .arg(c.dir.path().join(format!("data-{id}")))
        .args(["--tick-ms", "20"])
        .args(args)
        .env_remove("NIMBUS_ADMIN_TOKEN")
        .env_remove("NIMBUS_CLUSTER_TOKEN")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Joiner {
        child: cmd.spawn().expect("spawn nimbus --join"),
        http: SocketAddr::from(([127, 0, 0, 1], ports[0])),
        log,
    }
}

fn json(r: &HttpResponse) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.text()))
}

fn request(
    c: &TestCluster,
    i: usize,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &str,
) -> HttpResponse {
    let value = auth.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = value
        .as_deref()
        .map(|v| ("Authorization", v))
        .into_iter()
        .collect();
    HttpClient::new(c.http_addr(i), Duration::from_secs(15))
        .request(method, path, &headers, body.as_bytes())
        .expect("request")
}

fn member(view: &serde_json::Value, id: u64) -> Option<serde_json::Value> {
    view["members"]
        .as_array()?
        .iter()
        .find(|m| m["id"] == id)
        .cloned()
}

fn cluster_view(c: &TestCluster, i: usize) -> Option<serde_json::Value> {
    let r = c.client(i).get("/v1/cluster").ok()?;
    (r.status == 200).then(|| json(&r))
}

/// The membership in a `/v1/cluster` view: each member's id, vote and Raft address, without the
/// replication progress (match index, probe/replicate, learned HTTP address), which moves on its own.
fn membership(view: &serde_json::Value) -> Vec<(u64, bool, String)> {
    view["members"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .map(|m| {
                    (
                        m["id"].as_u64().unwrap_or(0),
                        m["voter"].as_bool().unwrap_or(false),
                        m["raft_addr"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn write_token(dir: &Path, name: &str, token: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, format!("{token}\n")).unwrap();
    p.display().to_string()
}

/// With `--admin-token-file`, every mutating `/v1/cluster` route answers 401 (with `WWW-Authenticate`)
/// without the token or with a wrong one, on the leader and on a follower, and changes nothing; reads of
/// the cluster stay open. With the token, a transfer sent to a follower is forwarded with the header and
/// done by the leader. A node joining with the admin token (from the environment) is added and promoted;
/// one without it is refused with a log line naming the flag, and never becomes a member.
#[test]
fn admin_routes_need_the_admin_token_and_join_presents_it() {
    let mut c = TestCluster::prepare(3, &[]);
    let file = write_token(c.dir.path(), "admin-token", ADMIN);
    c.extra_args = vec!["--admin-token-file".into(), file];
    for i in 0..3 {
        c.spawn(i);
    }
    let leader = c.wait_leader(WAIT);
    let follower = (0..3).find(|&i| i != leader).unwrap();
    c.set_eventually(leader, "k", "v", WAIT);
    let before = cluster_view(&c, leader).unwrap();

    let target = format!("{{\"id\": {}}}", c.nodes[follower].id);
    let add = r#"{"id": 9, "raft_addr": "127.0.0.1:1", "http_addr": "127.0.0.1:2"}"#;
    for i in [leader, follower] {
        for auth in [None, Some("not the admin token at all"), Some("")] {
            for (method, path, body) in [
                ("POST", "/v1/cluster/members", add),
                ("POST", "/v1/cluster/members/2/promote", ""),
                ("DELETE", "/v1/cluster/members/2", ""),
                ("POST", "/v1/cluster/leader", target.as_str()),
            ] {
                let r = request(&c, i, method, path, auth, body);
                assert_eq!(
                    r.status,
                    401,
                    "{method} {path} on node {i} with {auth:?}: {}",
                    r.text()
                );
                assert_eq!(json(&r)["error"]["code"], "unauthorized", "{}", r.text());
                assert!(
                    r.header("www-authenticate")
                        .is_some_and(|h| h.starts_with("Bearer")),
                    "{method} {path}: no WWW-Authenticate"
                );
            }
        }
        assert_eq!(c.client(i).get("/v1/cluster").unwrap().status, 200);
    }
    let after = cluster_view(&c, leader).unwrap();
    assert_eq!(membership(&before).len(), 3, "{before}");
    assert_eq!(
        membership(&before),
        membership(&after),
        "a refused request changed the members"
    );
    assert_eq!(c.status(leader).unwrap()["role"], "leader");
    let log = c.logs(leader);
    assert!(!log.contains(ADMIN), "the token was logged");

    // With the token, through a follower: forwarded to the leader, which transfers leadership to it.
    let r = request(
        &c,
        follower,
        "POST",
        "/v1/cluster/leader",
        Some(ADMIN),
        &target,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    poll("the follower leads", WAIT, || {
        (c.status(follower)?["role"] == "leader").then_some(())
    });

    // --join with the admin token (from the environment): added, then promoted.
    let good = join(&c, 4, leader, &[("NIMBUS_ADMIN_TOKEN", ADMIN)], &[]);
    poll("node 4 is a voter", WAIT, || {
        let view = cluster_view(&c, follower)?;
        (member(&view, 4)?["voter"] == true).then_some(())
    });
    poll("node 4 has the data", WAIT, || {
        let r = HttpClient::new(good.http, Duration::from_secs(5))
            .get("/get?key=k&consistency=stale")
            .ok()?;
        (r.status == 200 && r.text() == "v").then_some(())
    });

    // --join without it: refused, named in the log, never a member.
    let bad = join(&c, 5, leader, &[], &[]);
    poll("the refusal is logged", WAIT, || {
        bad.logs().contains("NIMBUS_ADMIN_TOKEN").then_some(())
    });
    let view = cluster_view(&c, follower).unwrap();
    assert!(member(&view, 5).is_none(), "node 5 was added: {view}");
    assert!(
        bad.logs().contains("401") || bad.logs().contains("unauthorized"),
        "{}",
        bad.logs()
    );
    c.check_alive();
}

/// A node joining a cluster that has a cluster token, with another token: the HTTP add request works (no
/// admin token here), so it becomes a learner; but the leader's message and snapshot connections to it
/// fail the handshake both ways (the cluster compacts its log, so catching up needs a snapshot), so it
/// never applies an entry, never receives a snapshot file, is never promoted (never votes), and the
/// leader keeps its term. Removed again, the cluster goes on; a node with the right token catches up.
#[test]
fn a_joiner_with_the_wrong_cluster_token_gets_no_entries_no_snapshot_and_no_vote() {
    let mut c = TestCluster::prepare(3, &[]);
    let file = write_token(c.dir.path(), "cluster-token", CLUSTER);
    c.extra_args = vec![
        "--cluster-token-file".into(),
        file,
        "--snapshot-entries".into(),
        "20".into(),
        "--log-keep-entries".into(),
        "0".into(),
    ];
    for i in 0..3 {
        c.spawn(i);
    }
    let leader = c.wait_leader(WAIT);
    for n in 0..60 {
        c.set_eventually(leader, &format!("k{n}"), "v", WAIT);
    }
    poll("a snapshot was taken", WAIT, || {
        let s = c.status(leader)?;
        (s["first_index"].as_u64()? > 1).then_some(())
    });
    let term = c.status(leader).unwrap()["term"].clone();

    let outsider = join(
        &c,
        4,
        leader,
        &[("NIMBUS_CLUSTER_TOKEN", "a different cluster secret")],
        &["--snapshot-entries", "20"],
    );
    poll("node 4 is a learner", WAIT, || {
        let view = cluster_view(&c, leader)?;
        (member(&view, 4)?["voter"] == false).then_some(())
    });
    poll(
        "the leader's connections to node 4 fail the handshake",
        WAIT,
        || {
            c.logs(leader)
                .contains("does not know the cluster token")
                .then_some(())
        },
    );
    poll("node 4 refuses the leader", WAIT, || {
        outsider
            .logs()
            .contains("refused a peer connection")
            .then_some(())
    });
    // Writes go on meanwhile; node 4 gets none of them, for as long as we watch (bounded).
    let watch_until = Instant::now() + Duration::from_secs(3);
    let mut n = 0;
    while Instant::now() < watch_until {
        c.set_eventually(leader, &format!("during{n}"), "v", WAIT);
        n += 1;
        let s = outsider.status().expect("node 4 answers /status");
        assert_eq!(s["applied_index"], 0, "node 4 applied something: {s}");
        assert_eq!(s["keys"], 0, "{s}");
        let view = cluster_view(&c, leader).unwrap();
        assert_eq!(
            member(&view, 4).unwrap()["voter"],
            false,
            "node 4 was promoted"
        );
        assert_eq!(
            c.status(leader).unwrap()["term"],
            term,
            "the leader's term moved"
        );
    }
    let snaps = std::fs::read_dir(c.dir.path().join("data-4").join("snap"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(snaps, 0, "a snapshot reached node 4's directory");
    assert!(
        !outsider.logs().contains("InstallSnapshot from node"),
        "{}",
        outsider.logs()
    );

    // Removed, it leaves the cluster as it was; a node with the right token catches up.
    let r = c
        .client(leader)
        .request("DELETE", "/v1/cluster/members/4", &[], b"")
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    drop(outsider);
    let insider = join(&c, 5, leader, &[("NIMBUS_CLUSTER_TOKEN", CLUSTER)], &[]);
    poll("node 5 with the right token is a voter", WAIT, || {
        let view = cluster_view(&c, leader)?;
        (member(&view, 5)?["voter"] == true).then_some(())
    });
    poll("node 5 has the data", WAIT, || {
        let r = HttpClient::new(insider.http, Duration::from_secs(5))
            .get("/get?key=k0&consistency=stale")
            .ok()?;
        (r.status == 200 && r.text() == "v").then_some(())
    });
    c.check_alive();
}
