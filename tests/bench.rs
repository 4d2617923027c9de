//! `nimbus bench` against a real 3-node cluster on loopback: it runs, measures something, and counts no
//! errors on a healthy cluster; bad flags exit 2 with the flag named.

mod common;

use common::{nimbus_bin, TestCluster};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const ELECTION: Duration = Duration::from_secs(20);

/// Runs `nimbus bench ARGS`, killing it if it outlives `limit`.
fn bench(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(nimbus_bin())
        .arg("bench")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nimbus bench");
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "nimbus bench {args:?} ran over {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

fn summary(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "exit {:?}; stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn assert_clean_run(s: &serde_json::Value, what: &str) {
    assert!(s["ops"].as_u64().unwrap() > 0, "{what}: no operations: {s}");
    assert!(s["ops_per_sec"].as_f64().unwrap() > 0.0, "{what}: {s}");
    assert_eq!(s["errors"], 0, "{what}: errors: {s}");
    let l = &s["latency"];
    let (p50, p99, max) = (
        l["p50_ms"].as_f64().unwrap(),
        l["p99_ms"].as_f64().unwrap(),
        l["max_ms"].as_f64().unwrap(),
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{what}: {l}");
}

#[test]
fn bench_writes_and_reads_on_a_real_cluster() {
    // Election timeout 1-2 s (50 ticks of 20 ms) instead of the tests' usual 0.2-0.4 s: the assertion is "no
    // errors", and on a loaded machine a spurious election mid-run would answer some requests 503.
    let mut c = TestCluster::start_with(3, &["--election-ticks", "50"]);
    let leader = c.wait_leader(ELECTION);
    let follower = (leader + 1) % 3;
    let to_leader = c.http_addr(leader).to_string();
    let everywhere: Vec<String> = (0..3).map(|i| c.http_addr(i).to_string()).collect();
    let limit = Duration::from_secs(60);

    // Writes to fresh keys through the leader, 4 connections, 2 s.
    let out = bench(
        &[
            "--target",
            &to_leader,
            "--workload",
            "write",
            "--unique-keys",
            "-c",
            "4",
            "--duration",
            "2",
            "--warmup",
            "0.5",
            "--json",
            "-q",
        ],
        limit,
    );
    let s = summary(&out);
    assert_clean_run(&s, "writes");
    assert_eq!(s["workload"], "write");
    assert_eq!(s["writes"]["count"], s["ops"]);
    assert_eq!(s["reads"]["count"], 0);

    // Linearizable reads spread over all three nodes (the key space preloaded first), with progress lines.
    let out = bench(
        &[
            "--target",
            &everywhere.join(","),
            "--workload",
            "read",
            "--keys",
            "200",
            "-c",
            "6",
            "--duration",
            "2",
            "--warmup",
            "0.5",
            "--json",
        ],
        limit,
    );
    let s = summary(&out);
    assert_clean_run(&s, "linearizable reads");
    assert_eq!(s["preloaded"], 200);
    assert_eq!(s["consistency"], "linearizable");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ops/s"), "no progress lines: {stderr}");

    // A follower's text summary for a mixed run.
    let out = bench(
        &[
            "--target",
            &c.http_addr(follower).to_string(),
            "--workload",
            "mixed",
            "--read-percent",
            "80",
            "--consistency",
            "lease",
            "--keys",
            "50",
            "-c",
            "2",
            "--duration",
            "1",
            "--warmup",
            "0",
            "-q",
        ],
        limit,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ops/s; errors: 0"), "{text}");
    assert!(
        text.contains("reads") && text.contains("writes") && text.contains("p99.9"),
        "{text}"
    );
    c.check_alive();
}

#[test]
fn bad_flags_exit_2_naming_the_flag() {
    for (args, want) in [
        (&["--target", "127.0.0.1:1", "-c", "0"][..], "--connections"),
        (&["--target", "192.0.2.1:2021"][..], "loopback"),
        (
            &["--target", "127.0.0.1:1", "--consistency", "stale"][..],
            "--consistency",
        ),
        (
            &["--target", "127.0.0.1:1", "--workload", "nope"][..],
            "write, read, mixed",
        ),
    ] {
        let out = bench(args, Duration::from_secs(10));
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // Nothing listening: the probe fails, exit 1.
    let port = common::free_ports(1)[0].to_string();
    let out = bench(
        &[
            "--target",
            &format!("127.0.0.1:{port}"),
            "--timeout-ms",
            "500",
        ],
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("probe"));
}
