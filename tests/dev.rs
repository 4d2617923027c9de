//! `nimbus dev`: the banner tells where the nodes are, they form one cluster (a write through one node is
//! read through another), and SIGTERM stops every node, removes the temporary data and exits 0.

mod common;

use common::poll;
use hash_nimbus::http_client::HttpClient;
use std::io::BufRead;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

struct DevRun {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl DevRun {
    fn start(nodes: usize) -> DevRun {
        let mut child = Command::new(common::nimbus_bin())
            .args([
                "dev",
                "--nodes",
                &nodes.to_string(),
                "--",
                "--tick-ms",
                "20",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start nimbus dev");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        DevRun {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads output lines until one satisfies `f` (panics after `timeout`, showing what was printed).
    fn until(&mut self, what: &str, timeout: Duration, f: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if f(&l) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "no line with {what} within {timeout:?}; output so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

impl Drop for DevRun {
    fn drop(&mut self) {
        // Only matters on a failed test: SIGTERM, so that the nodes stop and the data goes; SIGKILL if that
        // takes over 15 s (the nodes then get SIGTERM from their parent's death, PR_SET_PDEATHSIG).
        if !matches!(self.child.try_wait(), Ok(None)) {
            return; // exited and reaped: its pid may belong to another process by now
        }
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child, not yet reaped (checked just above).
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `node 2  http://127.0.0.1:P  raft 127.0.0.1:R  pid N` → (HTTP address, pid).
fn parse_node_line(l: &str) -> Option<(SocketAddr, u32)> {
    let words: Vec<&str> = l.split_whitespace().collect();
    if words.first() != Some(&"node") || words.len() < 7 {
        return None;
    }
    let http = words[2].strip_prefix("http://")?.parse().ok()?;
    let pid = words[words.iter().position(|w| *w == "pid")? + 1]
        .parse()
        .ok()?;
    Some((http, pid))
}

fn alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; it counts as gone.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn check_dev_cluster(nodes: usize) {
    let mut dev = DevRun::start(nodes);
    let t = Duration::from_secs(20);
    let mut members = Vec::new();
    for _ in 0..nodes {
        let l = dev.until("a node line", t, |l| parse_node_line(l).is_some());
        members.extend(parse_node_line(&l));
    }
    let data_line = dev.until("the data directory", t, |l| l.starts_with("data under "));
    let root = PathBuf::from(data_line["data under ".len()..].split(" (").next().unwrap());
    assert!(root.is_dir(), "{}", root.display());
    let leader = dev.until("the leader", t, |l| l.starts_with("leader is node "));
    assert!(leader.contains(", term "), "{leader}");

    // Write through the first node, read through the last (a linearizable read on any node).
    let mut first = HttpClient::new(members[0].0, Duration::from_secs(2));
    let mut last = HttpClient::new(members[nodes - 1].0, Duration::from_secs(2));
    let value = format!("success-{nodes}");
    poll("the write", t, || {
        first
            .get(&format!("/set?key=test&value={value}"))
            .ok()
            .filter(|r| r.status == 200)
    });
    poll("the read on another node", t, || {
        last.get("/get?key=test")
            .ok()
            .filter(|r| r.status == 200 && r.text() == value)
    });

    let pid = libc::pid_t::try_from(dev.child.id()).unwrap();
    // SAFETY: kill(2) on our own child, not yet reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = poll("nimbus dev to exit", Duration::from_secs(20), || {
        dev.child.try_wait().unwrap()
    });
    assert!(
        status.success(),
        "{status}; output:\n{}",
        dev.seen.join("\n")
    );
    for (http, pid) in &members {
        assert!(!alive(*pid), "node pid {pid} still running");
        assert!(
            TcpStream::connect_timeout(http, Duration::from_millis(200)).is_err(),
            "{http} still accepts connections"
        );
    }
    assert!(!root.exists(), "{} was not removed", root.display());
}

#[test]
fn dev_cluster_of_three_serves_and_stops_on_sigterm() {
    check_dev_cluster(3);
}

#[test]
fn dev_cluster_of_five() {
    check_dev_cluster(5);
}

#[test]
fn dev_rejects_bad_node_counts() {
    for n in ["0", "8", "x"] {
        let out = Command::new(common::nimbus_bin())
            .args(["dev", "--nodes", n])
            .output()
            .expect("run nimbus dev");
        assert_eq!(out.status.code(), Some(2), "--nodes {n}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--nodes"), "--nodes {n}: {err}");
    }
}
