//! A cluster of real `nimbus` processes on loopback, for end-to-end tests.
//!
//! Every wait polls with a deadline; nothing sleeps to synchronize. Processes are killed when the cluster is
//! dropped, and data directories live in a temporary directory removed with it.
#![allow(dead_code)]

use hash_nimbus::http_client::{encode_query_value, HttpClient, HttpResponse};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct ProcNode {
    pub id: u64,
    pub http_port: u16,
    pub raft_port: u16,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    pub child: Option<Child>,
}

pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<ProcNode>,
    pub cluster_spec: String,
    /// Per-node `--cluster` overrides (e.g. peers reached through fault proxies).
    pub specs: Vec<Option<String>>,
    pub extra_args: Vec<String>,
}

/// Distinct ports that were free a moment ago. They are drawn from 20000-31999, below Linux's ephemeral
/// range (32768-60999), so outgoing connections never take a port reserved for a node that restarts later.
pub fn free_ports(n: usize) -> Vec<u16> {
    free_ports_except(n, &[])
}

/// Like [`free_ports`], never returning one of `except`.
pub fn free_ports_except(n: usize, except: &[u16]) -> Vec<u16> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let salt = std::process::id() as u64 * 7919
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or(0);
    let mut rng = hash_nimbus::raft::Rng::new(salt ^ NEXT.fetch_add(1, Ordering::Relaxed) << 40);
    let mut held = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..100_000 {
        if ports.len() == n {
            break;
        }
        let port = 20_000 + rng.below(12_000) as u16;
        if ports.contains(&port) || except.contains(&port) {
            continue;
        }
        if let Ok(l) = TcpListener::bind(("0.0.0.0", port)) {
            held.push(l);
            ports.push(port);
        }
    }
    assert_eq!(ports.len(), n, "could not find {n} free ports");
    ports
}

pub fn nimbus_bin() -> &'static str {
    env!("CARGO_BIN_EXE_nimbus")
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub fn poll<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl TestCluster {
    /// Starts `n` nodes with fast ticks (20 ms, election 10-20 ticks).
    pub fn start(n: usize) -> TestCluster {
        Self::start_with(n, &[])
    }

    pub fn start_with(n: usize, extra: &[&str]) -> TestCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports = free_ports(2 * n);
        let mut nodes = Vec::new();
        let mut spec = Vec::new();
        for i in 0..n {
            let id = i as u64 + 1;
            let raft_port = ports[2 * i + 1];
            spec.push(format!("{id},:{raft_port}"));
            nodes.push(ProcNode {
                id,
                http_port: ports[2 * i],
                raft_port,
                data_dir: dir.path().join(format!("data-{id}")),
                log_path: dir.path().join(format!("node-{id}.log")),
                child: None,
            });
        }
        let mut c = TestCluster {
            dir,
            nodes,
            cluster_spec: spec.join(";"),
            specs: vec![None; n],
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
        };
        for i in 0..n {
            c.spawn(i);
        }
        c
    }

    /// Like `start_with`, but `spec_for(cluster, i)` may give node `i` its own `--cluster` (its own entry
    /// must stay its real address); nodes are not started until `spawn`.
    pub fn prepare(n: usize, extra: &[&str]) -> TestCluster {
        let mut c = Self::start_with(0, extra);
        let ports = free_ports(2 * n);
        let mut spec = Vec::new();
        for i in 0..n {
            let id = i as u64 + 1;
            let raft_port = ports[2 * i + 1];
            spec.push(format!("{id},:{raft_port}"));
            c.nodes.push(ProcNode {
                id,
                http_port: ports[2 * i],
                raft_port,
                data_dir: c.dir.path().join(format!("data-{id}")),
                log_path: c.dir.path().join(format!("node-{id}.log")),
                child: None,
            });
        }
        c.cluster_spec = spec.join(";");
        c.specs = vec![None; n];
        c
    }

    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// Sends a signal by name (e.g. "STOP", "CONT") to node `i`'s process.
    pub fn signal(&self, i: usize, sig: &str) {
        if let Some(pid) = self.pid(i) {
            let _ = Command::new("kill")
                .args([&format!("-{sig}"), &pid.to_string()])
                .status();
        }
    }

    pub fn spawn(&mut self, i: usize) {
        assert!(self.nodes[i].child.is_none(), "node {i} already running");
        let node = &self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .expect("open node log");
        let child = Command::new(nimbus_bin())
            .args(["--node", &i.to_string()])
            .args(["--http", &format!(":{}", node.http_port)])
            .args([
                "--cluster",
                self.specs[i].as_deref().unwrap_or(&self.cluster_spec),
            ])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--tick-ms", "20"])
            .args(&self.extra_args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn nimbus");
        self.nodes[i].child = Some(child);
    }

    /// kill -9.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
    }

    pub fn http_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.nodes[i].http_port))
    }

    pub fn client(&self, i: usize) -> HttpClient {
        HttpClient::new(self.http_addr(i), Duration::from_secs(10))
    }

    pub fn logs(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log_path).unwrap_or_default()
    }

    pub fn set(&self, i: usize, key: &str, value: &str) -> std::io::Result<HttpResponse> {
        self.client(i).get(&format!(
            "/set?key={}&value={}",
            encode_query_value(key.as_bytes()),
            encode_query_value(value.as_bytes())
        ))
    }

    pub fn get(&self, i: usize, key: &str) -> std::io::Result<HttpResponse> {
        self.client(i)
            .get(&format!("/get?key={}", encode_query_value(key.as_bytes())))
    }

    pub fn get_relaxed(&self, i: usize, key: &str) -> std::io::Result<HttpResponse> {
        self.client(i).get(&format!(
            "/get?key={}&relaxed=true",
            encode_query_value(key.as_bytes())
        ))
    }

    pub fn status(&self, i: usize) -> Option<serde_json::Value> {
        let r = self.client(i).get("/status").ok()?;
        serde_json::from_slice(&r.body).ok()
    }

    /// Panics (showing its log) if a node that should be running has exited.
    pub fn check_alive(&mut self) {
        for i in 0..self.nodes.len() {
            let exited = match self.nodes[i].child.as_mut() {
                Some(c) => c.try_wait().ok().flatten(),
                None => None,
            };
            if let Some(status) = exited {
                self.nodes[i].child = None;
                panic!(
                    "node {i} exited unexpectedly ({status}); its log:\n{}",
                    tail(&self.logs(i), 40)
                );
            }
        }
    }

    /// Waits until the running nodes agree on one leader; returns its index.
    pub fn wait_leader(&mut self, timeout: Duration) -> usize {
        self.check_alive();
        poll("a leader", timeout, || {
            let mut leader = None;
            for (i, n) in self.nodes.iter().enumerate() {
                if n.child.is_none() {
                    continue;
                }
                let s = self.status(i)?;
                if s["role"] == "leader" {
                    leader = Some(i);
                }
            }
            let l = leader?;
            let id = self.nodes[l].id;
            let agreed = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| n.child.is_some())
                .all(|(i, _)| self.status(i).is_some_and(|s| s["leader"] == id));
            agreed.then_some(l)
        })
    }

    /// The node that says it is leader, if any (no waiting).
    pub fn wait_leader_quiet(&self) -> Option<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.is_running(i))
            .find(|&i| self.status(i).is_some_and(|s| s["role"] == "leader"))
    }

    /// Retries a write until it is acknowledged (200) or the deadline passes.
    pub fn set_eventually(&self, i: usize, key: &str, value: &str, timeout: Duration) {
        poll(&format!("set {key} via node {i}"), timeout, || {
            self.set(i, key, value).ok().filter(|r| r.status == 200)
        });
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        if std::thread::panicking() {
            for i in 0..self.nodes.len() {
                eprintln!("---- log of node {} ----\n{}", i, tail(&self.logs(i), 60));
            }
            // KEEP_FAILED=1 keeps the data directories and logs of a failed test for a post-mortem.
            if std::env::var_os("KEEP_FAILED").is_some() {
                let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
                eprintln!(
                    "kept the failed cluster's files in {}",
                    dir.keep().display()
                );
            }
        }
    }
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}
pub mod proxy;
