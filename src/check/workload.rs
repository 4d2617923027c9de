//! Concurrent clients against a cluster's HTTP API, recording every operation for the checker.
//!
//! Each client thread picks a random node and a random key per operation, writes unique values (`<client
//! process>-<counter>` encoded as a number) or reads linearizably, with a timeout. The outcome of each
//! operation is classified:
//! - **ok**: 200 (or 404 for a read: the key does not exist);
//! - **failed**: an error that guarantees nothing was applied (400/404/413, 503 `no_leader`, `not_leader`,
//!   `busy`, `not_committed`, or a refused connection);
//! - **indeterminate**: anything else (timeout, 504, 503 `leader_changed`, a reset connection): the write may
//!   or may not have happened. The client then continues under a new process id, as Jepsen does.
//!
//! All loops are bounded by the run's duration and an operation count.

use super::linearizable::{Op, Operation};
use crate::http_client::{encode_query_value, HttpClient, HttpResponse};
use crate::raft::Rng;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Failed,
    Indeterminate,
}

/// One recorded operation.
#[derive(Debug, Clone)]
pub struct Record {
    pub process: u64,
    pub node: usize,
    pub key: String,
    pub op: Op,
    pub outcome: Outcome,
    /// Nanoseconds since the run started.
    pub invoke: u64,
    pub complete: u64,
    /// Status code or error text, for reports.
    pub detail: String,
}

/// Workload settings.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    pub nodes: Vec<SocketAddr>,
    pub clients: usize,
    pub keys: usize,
    pub duration: Duration,
    /// Per-request timeout (a request over it is indeterminate).
    pub timeout: Duration,
    /// Percentage of operations that are writes.
    pub write_percent: u64,
    pub seed: u64,
    /// Hard cap on operations per client.
    pub max_ops_per_client: u64,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            nodes: Vec::new(),
            clients: 8,
            keys: 32,
            duration: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            write_percent: 50,
            seed: 1,
            max_ops_per_client: 100_000,
        }
    }
}

/// Shared state of a run: the history and a stop flag.
pub struct Run {
    pub start: Instant,
    pub records: Mutex<Vec<Record>>,
    pub stop: AtomicBool,
    next_process: AtomicU64,
}

impl Run {
    pub fn new() -> Arc<Run> {
        Arc::new(Run {
            start: Instant::now(),
            records: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            next_process: AtomicU64::new(0),
        })
    }

    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn new_process(&self) -> u64 {
        self.next_process.fetch_add(1, Ordering::Relaxed)
    }

    fn record(&self, r: Record) {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(r);
    }
}

/// Classifies an HTTP answer to a write.
fn write_outcome(r: &std::io::Result<HttpResponse>) -> (Outcome, String) {
    match r {
        Ok(resp) if resp.status == 200 => (Outcome::Ok, "200".into()),
        Ok(resp) => {
            let body = resp.text();
            let definite = matches!(resp.status, 400 | 404 | 405 | 413)
                || (resp.status == 503
                    && ["no_leader", "not_leader", "busy", "not_committed"]
                        .iter()
                        .any(|c| body.contains(&format!("\"{c}\""))));
            let outcome = if definite {
                Outcome::Failed
            } else {
                Outcome::Indeterminate
            };
            (outcome, format!("{} {}", resp.status, body.trim()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            (Outcome::Failed, format!("connect: {e}"))
        }
        Err(e) => (Outcome::Indeterminate, format!("io: {e}")),
    }
}

/// Runs one client until the run stops. Returns the number of operations done.
pub fn client(run: Arc<Run>, cfg: Arc<WorkloadConfig>, index: usize) -> u64 {
    let mut rng = Rng::new(cfg.seed.wrapping_mul(1_000_003) ^ index as u64);
    let mut clients: Vec<HttpClient> = cfg
        .nodes
        .iter()
        .map(|&a| HttpClient::new(a, cfg.timeout))
        .collect();
    let mut process = run.new_process();
    let mut counter = 0u64;
    let mut done = 0;
    let deadline = run.start + cfg.duration;
    while !run.stop.load(Ordering::Relaxed)
        && Instant::now() < deadline
        && done < cfg.max_ops_per_client
    {
        done += 1;
        let node = rng.below(cfg.nodes.len() as u64) as usize;
        let key = format!("k{}", rng.below(cfg.keys as u64));
        let is_write = rng.below(100) < cfg.write_percent;
        let invoke = run.now();
        let (op, outcome, detail) = if is_write {
            counter += 1;
            // Unique across the run: process ids never repeat.
            let value = (process << 24) | counter;
            let path = format!(
                "/set?key={}&value={}",
                encode_query_value(key.as_bytes()),
                value
            );
            let r = clients[node].get(&path);
            let (outcome, detail) = write_outcome(&r);
            (Op::Write(value), outcome, detail)
        } else {
            let path = format!("/get?key={}", encode_query_value(key.as_bytes()));
            match clients[node].get(&path) {
                Ok(resp) if resp.status == 200 => match resp.text().parse::<u64>() {
                    Ok(v) => (Op::Read(Some(v)), Outcome::Ok, "200".into()),
                    Err(_) => (
                        Op::Read(None),
                        Outcome::Failed,
                        format!("unparsable value {:?}", resp.text()),
                    ),
                },
                Ok(resp) if resp.status == 404 && resp.text().contains("not_found") => {
                    (Op::Read(None), Outcome::Ok, "404".into())
                }
                Ok(resp) => (
                    Op::Read(None),
                    Outcome::Failed,
                    format!("{} {}", resp.status, resp.text().trim()),
                ),
                Err(e) => (Op::Read(None), Outcome::Failed, format!("io: {e}")),
            }
        };
        let complete = run.now();
        run.record(Record {
            process,
            node,
            key,
            op,
            outcome,
            invoke,
            complete,
            detail,
        });
        if outcome == Outcome::Indeterminate {
            process = run.new_process();
        }
    }
    done
}

/// Per-key histories ready for the checker: definite failures and failed reads dropped, indeterminate
/// writes given an unknown completion.
pub fn histories(records: &[Record]) -> BTreeMap<String, Vec<(Operation, usize)>> {
    let mut out: BTreeMap<String, Vec<(Operation, usize)>> = BTreeMap::new();
    for (i, r) in records.iter().enumerate() {
        let complete = match (r.outcome, &r.op) {
            (Outcome::Ok, _) => Some(r.complete),
            (Outcome::Indeterminate, Op::Write(_) | Op::Delete) => None,
            _ => continue,
        };
        out.entry(r.key.clone()).or_default().push((
            Operation {
                op: r.op.clone(),
                invoke: r.invoke,
                complete,
            },
            i,
        ));
    }
    out
}

/// Starts `cfg.clients` client threads; join the handles to wait for the end of the run.
pub fn spawn_clients(
    run: &Arc<Run>,
    cfg: &Arc<WorkloadConfig>,
) -> Vec<std::thread::JoinHandle<u64>> {
    (0..cfg.clients)
        .map(|k| {
            let (run, cfg) = (run.clone(), cfg.clone());
            std::thread::spawn(move || client(run, cfg, k))
        })
        .collect()
}

/// After the faults: reads every key on every node (retrying until `timeout`) and records the reads under
/// [`super::FINAL_READ_PROCESS`]. Fails if some node never answers.
pub fn final_reads(run: &Run, cfg: &WorkloadConfig, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut clients: Vec<HttpClient> = cfg
        .nodes
        .iter()
        .map(|&a| HttpClient::new(a, cfg.timeout))
        .collect();
    for k in 0..cfg.keys {
        let key = format!("k{k}");
        for (node, client) in clients.iter_mut().enumerate() {
            loop {
                let invoke = run.now();
                let path = format!("/get?key={}", encode_query_value(key.as_bytes()));
                let op = match client.get(&path) {
                    Ok(r) if r.status == 200 => {
                        r.text().parse::<u64>().ok().map(|v| Op::Read(Some(v)))
                    }
                    Ok(r) if r.status == 404 && r.text().contains("not_found") => {
                        Some(Op::Read(None))
                    }
                    _ => None,
                };
                if let Some(op) = op {
                    run.record(Record {
                        process: super::FINAL_READ_PROCESS,
                        node,
                        key: key.clone(),
                        op,
                        outcome: Outcome::Ok,
                        invoke,
                        complete: run.now(),
                        detail: "final read".into(),
                    });
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "node {node} ({}) never answered a read of {key}",
                        client.addr()
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    Ok(())
}
