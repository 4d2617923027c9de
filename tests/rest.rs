//! The REST API (`/v1/kv`, `/health`) end to end, on the leader and on followers.

mod common;

use common::{poll, TestCluster};
use std::time::Duration;

const ELECTION: Duration = Duration::from_secs(20);

fn json(r: &hash_nimbus::http_client::HttpResponse) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.text()))
}

#[test]
fn rest_routes_on_every_node() {
    let mut c = TestCluster::start(3);
    let leader = c.wait_leader(ELECTION);
    for i in 0..3 {
        let mut cl = c.client(i);
        let key = format!("/v1/kv/dir/key%20{i}");
        // Create: retried until the cluster is fully up (a fresh follower may not know the leader yet).
        let r = poll("a PUT", ELECTION, || {
            cl.request("PUT", &key, &[], b"hello")
                .ok()
                .filter(|r| r.status == 200)
        });
        let index = json(&r)["index"].as_u64().expect("index");
        assert_eq!(r.header("etag"), Some(format!("\"{index}\"").as_str()));
        // Read back on every node, linearizable by default.
        for j in 0..3 {
            let r = c.client(j).get(&key).unwrap();
            assert_eq!(r.status, 200, "node {j}: {}", r.text());
            assert_eq!(r.body, b"hello");
            assert_eq!(r.header("etag"), Some(format!("\"{index}\"").as_str()));
            assert!(r.header("x-raft-index").unwrap().parse::<u64>().unwrap() >= index);
            assert!(r.header("x-raft-term").is_some());
        }
        // Compare-and-swap: a stale index fails with the current one, the right index wins.
        let r = cl
            .request("PUT", &key, &[("If-Match", "\"1\"")], b"stale")
            .unwrap();
        assert_eq!(r.status, 412, "{}", r.text());
        assert_eq!(json(&r)["error"]["current_index"], index);
        let r = cl
            .request(
                "PUT",
                &key,
                &[("If-Match", &format!("\"{index}\""))],
                b"swapped",
            )
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let index2 = json(&r)["index"].as_u64().unwrap();
        assert!(index2 > index);
        // Create-only fails on an existing key.
        let r = cl
            .request("PUT", &key, &[("If-None-Match", "*")], b"again")
            .unwrap();
        assert_eq!(r.status, 412);
        // Conditional delete, then 404s.
        let r = cl
            .request("DELETE", &key, &[("If-Match", &index.to_string())], b"")
            .unwrap();
        assert_eq!(r.status, 412);
        let r = cl
            .request("DELETE", &key, &[("If-Match", &index2.to_string())], b"")
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(cl.get(&key).unwrap().status, 404);
        let r = cl.request("DELETE", &key, &[], b"").unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(json(&r)["error"]["code"], "not_found");
        // Create-only succeeds on an absent key.
        let r = cl
            .request("PUT", &key, &[("If-None-Match", "*")], b"new")
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // Stale reads say how far the node has applied.
    let r = c
        .client(leader)
        .get("/v1/kv/dir/key%200?consistency=stale")
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(r.header("x-nimbus-applied-index").is_some());
    // Health.
    for i in 0..3 {
        let r = poll("healthy", ELECTION, || {
            c.client(i).get("/health").ok().filter(|r| r.status == 200)
        });
        assert_eq!(json(&r)["healthy"], true);
    }
    c.check_alive();
}

#[test]
fn listing_with_prefix_limit_and_cursor() {
    let mut c = TestCluster::start(3);
    let leader = c.wait_leader(ELECTION);
    let mut cl = c.client(leader);
    for k in ["a", "p/1", "p/2", "p/3", "p/4", "q"] {
        let r = cl
            .request("PUT", &format!("/v1/kv/{k}"), &[], k.as_bytes())
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let follower = (leader + 1) % 3;
    let mut keys = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..10 {
        let mut path = "/v1/kv?prefix=p%2F&limit=3".to_string();
        if let Some(a) = &after {
            path.push_str(&format!(
                "&after={}",
                hash_nimbus::http_client::encode_query_value(a.as_bytes())
            ));
        }
        let r = c.client(follower).get(&path).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let v = json(&r);
        for item in v["items"].as_array().unwrap() {
            assert_eq!(item["key"], item["value"]);
            assert!(item["index"].as_u64().unwrap() > 0);
            keys.push(item["key"].as_str().unwrap().to_string());
        }
        match v["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => break,
        }
    }
    assert_eq!(keys, ["p/1", "p/2", "p/3", "p/4"]);
    // Non-UTF-8 values are base64 in listings.
    let r = cl.request("PUT", "/v1/kv/bin", &[], &[0xff, 0x00]).unwrap();
    assert_eq!(r.status, 200);
    let r = cl.get("/v1/kv?prefix=bin").unwrap();
    assert_eq!(json(&r)["items"][0]["value_base64"], "/wA=");
    c.check_alive();
}

#[test]
fn bad_requests_get_clear_errors() {
    let mut c = TestCluster::start(1);
    c.wait_leader(ELECTION);
    let mut cl = c.client(0);
    let big_key = format!("/v1/kv/{}", "k".repeat(5000));
    type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>, Vec<u8>, u16);
    let cases: Vec<Case> = vec![
        (
            "PUT",
            "/v1/kv/big".into(),
            vec![],
            vec![b'x'; (1 << 20) + 1],
            413,
        ),
        ("GET", big_key.clone(), vec![], vec![], 413),
        (
            "PUT",
            "/v1/kv/k".into(),
            vec![("If-Match", "abc")],
            b"v".to_vec(),
            400,
        ),
        (
            "PUT",
            "/v1/kv/k".into(),
            vec![("If-None-Match", "\"3\"")],
            b"v".to_vec(),
            400,
        ),
        (
            "GET",
            "/v1/kv/k?consistency=eventual".into(),
            vec![],
            vec![],
            400,
        ),
        ("GET", "/v1/kv?limit=0".into(), vec![], vec![], 400),
        ("GET", "/v1/kv?limit=100000".into(), vec![], vec![], 400),
        ("GET", "/v1/kv/%zz".into(), vec![], vec![], 400),
        ("POST", "/v1/kv/k".into(), vec![], vec![], 405),
        ("DELETE", "/v1/kv".into(), vec![], vec![], 405),
        ("POST", "/status".into(), vec![], vec![], 405),
        ("GET", "/v1/kv/".into(), vec![], vec![], 200),
    ];
    for (method, path, headers, body, want) in cases {
        let r = poll("a 1-node leader", ELECTION, || {
            cl.request(method, &path, &headers, &body)
                .ok()
                .filter(|r| r.status != 503)
        });
        assert_eq!(
            r.status,
            want,
            "{method} {}: {}",
            &path[..path.len().min(40)],
            r.text()
        );
        if want >= 400 {
            assert!(json(&r)["error"]["code"].is_string(), "{}", r.text());
        }
    }
    c.check_alive();
}

/// Thesis §6.3: the same compare-and-swap sent twice with one Idempotency-Key applies once, even with the
/// leader killed between the two sends; the retry gets the first answer instead of a 412.
#[test]
fn idempotent_cas_applies_once_across_a_leader_kill() {
    let mut c = TestCluster::start(3);
    let leader = c.wait_leader(ELECTION);
    let mut cl = c.client(leader);
    let r = cl.request("PUT", "/v1/kv/acct", &[], b"100").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let i0 = json(&r)["index"].as_u64().unwrap();
    let if_match = format!("\"{i0}\"");
    let cas = [
        ("If-Match", if_match.as_str()),
        ("Idempotency-Key", "transfer-42"),
    ];
    let r = cl.request("PUT", "/v1/kv/acct", &cas, b"150").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let i1 = json(&r)["index"].as_u64().unwrap();
    c.kill(leader);
    let other = (leader + 1) % 3;
    let r = poll("the retried CAS on another node", ELECTION, || {
        c.client(other)
            .request("PUT", "/v1/kv/acct", &cas, b"150")
            .ok()
            .filter(|r| r.status != 503 && r.status != 504)
    });
    assert_eq!(
        r.status,
        200,
        "the retry must get the first answer: {}",
        r.text()
    );
    assert_eq!(
        json(&r)["index"].as_u64(),
        Some(i1),
        "answered with the first result"
    );
    let r = c.client(other).get("/v1/kv/acct").unwrap();
    assert_eq!(r.body, b"150");
    assert_eq!(
        r.header("etag"),
        Some(format!("\"{i1}\"").as_str()),
        "applied once"
    );
    // Without the key the same stale CAS is refused.
    let r = c
        .client(other)
        .request(
            "PUT",
            "/v1/kv/acct",
            &[("If-Match", if_match.as_str())],
            b"150",
        )
        .unwrap();
    assert_eq!(r.status, 412);
    // Seed routes take the header too, and bad keys are refused.
    let mut f = c.client(other);
    let r = f
        .request(
            "GET",
            "/set?key=s&value=1",
            &[("Idempotency-Key", "seed-1")],
            b"",
        )
        .unwrap();
    assert_eq!(r.status, 200);
    let r = f
        .request("PUT", "/v1/kv/x", &[("Idempotency-Key", "has space")], b"v")
        .unwrap();
    assert_eq!(r.status, 400);
}

/// `consistency=lease` on the leader is served from its lease (counted in `/status`), on followers through
/// the read index; stale answers say how long ago the node heard from the leader; followers name the
/// leader's HTTP address in `/status` and in `not_leader` errors.
#[test]
fn lease_reads_stale_headers_and_leader_addresses() {
    let mut c = TestCluster::start(3);
    let leader = c.wait_leader(ELECTION);
    let follower = (leader + 1) % 3;
    c.set_eventually(leader, "k", "v1", ELECTION);
    let lease_reads = |c: &TestCluster| c.status(leader).unwrap()["stats"]["lease_reads"].as_u64();
    let before = lease_reads(&c).expect("lease_reads counter");
    for i in [leader, follower] {
        for path in ["/get?key=k&consistency=lease", "/v1/kv/k?consistency=lease"] {
            let r = c.client(i).get(path).unwrap();
            assert_eq!(r.status, 200, "node {i} {path}: {}", r.text());
            assert_eq!(r.body, b"v1");
        }
    }
    // The leader holds a lease while heartbeats flow, so at least one of its two reads used it.
    assert!(lease_reads(&c).unwrap() > before, "no read used the lease");
    let st = c.status(leader).unwrap();
    assert_eq!(st["lease_valid"], true, "{st}");
    assert_eq!(st["leader_last_contact_ms"], 0);
    for p in st["progress"].as_array().unwrap() {
        assert!(p["last_contact_ms"].as_u64().is_some(), "{st}");
    }
    // Stale reads on a follower: applied index and last contact with the leader.
    let r = c
        .client(follower)
        .get("/v1/kv/k?consistency=stale")
        .unwrap();
    assert_eq!(r.status, 200);
    let contact: u64 = r
        .header("x-nimbus-last-contact-ms")
        .expect("last contact header")
        .parse()
        .expect("a number of milliseconds while the leader is up");
    assert!(contact < 60_000, "{contact}");
    let r = c.client(follower).get("/get?key=k&relaxed=true").unwrap();
    assert!(r.header("x-nimbus-last-contact-ms").is_some());
    // Followers know the leader's HTTP address (announced in the peer handshake).
    let want = c.http_addr(leader).to_string();
    let st = poll("the leader's HTTP address", ELECTION, || {
        c.status(follower)
            .filter(|s| s["leader_http_addr"].as_str() == Some(want.as_str()))
    });
    assert_eq!(st["lease_valid"], false, "only the leader holds a lease");
    let r = c.client(leader).get("/get?key=k&consistency=fast").unwrap();
    assert_eq!(r.status, 400);
    c.check_alive();
}
