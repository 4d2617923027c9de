//! Concurrent clients against a cluster's HTTP API, recording every operation for the checker.
//!
//! Each client thread picks a random node, a random key and a random kind of request per operation (see
//! [`Mix`]): writes carry unique values (`<client process> << 24 | <counter>`, as decimal text), reads are
//! linearizable, every request has a timeout and nothing is retried. The outcome of each operation is
//! classified:
//! - **ok**: a definite answer, recorded with what it observed: 200; 404 for a read or a delete (the key did
//!   not exist); 412 for a conditional write (its condition did not hold, and `current_index` names the
//!   key's modify index, or null if absent);
//! - **failed**: an answer that guarantees nothing was applied and observed nothing (400/404/405/413, 503
//!   `no_leader`, `not_leader`, `busy`, `not_committed`, a refused connection), or a read without an answer;
//! - **indeterminate**: anything else from a write (timeout, 504, 503 `leader_changed`, a reset connection):
//!   it may or may not have happened. The client then continues under a new process id, as Jepsen does.
//!
//! Modify indexes: every ok write and read records the index its answer named (`{"index": N}`,
//! `X-Raft-Index` or `ETag`) in [`Record::index`], so the analysis can map indexes to values. A CAS
//! (`If-Match`) names the highest index any client has seen for the key so far together with the value
//! written at that index ([`Run`] keeps that knowledge); if nothing is known about the key yet, a read is
//! made instead. An index enters the knowledge only from an ok answer.
//!
//! All loops are bounded by the run's duration and an operation count.

use super::linearizable::{Op, Operation};
use crate::http_client::{encode_query_value, HttpClient, HttpResponse};
use crate::raft::Rng;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A definite answer, recorded with what it observed (200, a 404 read or delete, a 412).
    Ok,
    /// Guaranteed not applied and observed nothing (e.g. 503 `not_leader`, a refused connection), or a
    /// read without an answer.
    Failed,
    /// A write that may or may not have taken effect (timeout, 504, 503 `leader_changed`, a reset).
    Indeterminate,
}

/// Which routes the clients use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mix {
    /// The seed routes only: `/set` and `/get` (the original workload).
    Seed,
    /// The REST routes only: `PUT` (plain, `If-Match`, `If-None-Match: *`), `DELETE` (plain and
    /// `If-Match`), `GET /v1/kv/{key}`.
    Rest,
    /// Both: the seed routes (with `/delete`) beside the REST routes.
    All,
}

impl std::str::FromStr for Mix {
    type Err = String;

    fn from_str(s: &str) -> Result<Mix, String> {
        match s {
            "seed" => Ok(Mix::Seed),
            "rest" => Ok(Mix::Rest),
            "all" => Ok(Mix::All),
            _ => Err(format!("unknown mix {s:?}: seed, rest or all")),
        }
    }
}

/// The kind of request an operation made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `/set?key=&value=`.
    SeedSet,
    /// `/get?key=`.
    SeedGet,
    /// `/delete?key=`.
    SeedDelete,
    /// `PUT /v1/kv/{key}`.
    Put,
    /// `GET /v1/kv/{key}`.
    Get,
    /// `GET /v1/kv/{key}?consistency=lease` (the leader answers from its lease when it holds one).
    LeaseGet,
    /// `PUT /v1/kv/{key}` with `If-Match`.
    Cas,
    /// `PUT /v1/kv/{key}` with `If-None-Match: *`.
    Create,
    /// `DELETE /v1/kv/{key}`.
    Delete,
    /// `DELETE /v1/kv/{key}` with `If-Match`.
    CasDelete,
    /// The reads of every key on every node after the faults.
    FinalRead,
}

impl Kind {
    /// A short name of the request (`"/set"`, `"PUT If-Match"`, ...), for reports.
    pub fn label(self) -> &'static str {
        match self {
            Kind::SeedSet => "/set",
            Kind::SeedGet => "/get",
            Kind::SeedDelete => "/delete",
            Kind::Put => "PUT",
            Kind::Get => "GET",
            Kind::LeaseGet => "GET lease",
            Kind::Cas => "PUT If-Match",
            Kind::Create => "PUT If-None-Match",
            Kind::Delete => "DELETE",
            Kind::CasDelete => "DELETE If-Match",
            Kind::FinalRead => "final GET",
        }
    }

    fn is_write(self) -> bool {
        !matches!(
            self,
            Kind::SeedGet | Kind::Get | Kind::LeaseGet | Kind::FinalRead
        )
    }
}

/// What an answer said about the key's modify index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexSeen {
    /// Nothing (no answer, or an answer without an index).
    Unknown,
    /// The index a successful write took effect at, a read's `ETag`, or a 412's `current_index`.
    At(u64),
    /// A 412 whose `current_index` was null: the key did not exist.
    Absent,
}

/// One recorded operation.
#[derive(Debug, Clone)]
pub struct Record {
    /// The client's process id; a client takes a new one after an indeterminate operation, and the final
    /// reads use [`super::FINAL_READ_PROCESS`].
    pub process: u64,
    /// Index into [`WorkloadConfig::nodes`] of the node the request went to.
    pub node: usize,
    /// The key operated on.
    pub key: String,
    /// The kind of request made.
    pub kind: Kind,
    /// The operation with what its answer observed (meaningless unless the outcome is ok).
    pub op: Op,
    /// How the operation ended.
    pub outcome: Outcome,
    /// Nanoseconds since the run started.
    pub invoke: u64,
    /// Nanoseconds since the run started when the answer (or error) came back.
    pub complete: u64,
    /// The modify index the answer named, if any.
    pub index: IndexSeen,
    /// Status code or error text (and the `If-Match` index sent), for reports.
    pub detail: String,
}

/// Workload settings.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// HTTP addresses of the cluster's nodes; each operation goes to one picked at random.
    pub nodes: Vec<SocketAddr>,
    /// Number of concurrent client threads.
    pub clients: usize,
    /// Number of keys operated on.
    pub keys: usize,
    /// Keys are `<key_prefix><n>` for n in `0..keys`. The checker assumes every key starts absent, so a run
    /// against a cluster that already holds data needs a prefix no earlier run used.
    pub key_prefix: String,
    /// How long the clients run, from [`Run::start`].
    pub duration: Duration,
    /// Per-request timeout (a request over it is indeterminate).
    pub timeout: Duration,
    /// Percentage of operations that are writes (deletes and conditional writes included).
    pub write_percent: u64,
    /// Which routes the clients use.
    pub mix: Mix,
    /// Seed of the clients' random choices (node, key, kind of request).
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
            key_prefix: "k".into(),
            duration: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            write_percent: 50,
            mix: Mix::All,
            seed: 1,
            max_ops_per_client: 100_000,
        }
    }
}

/// Shared state of a run: the history, a stop flag, and what the clients know of each key.
pub struct Run {
    /// When the run began; record times are nanoseconds since this.
    pub start: Instant,
    /// Every operation recorded so far, in the order they completed.
    pub records: Mutex<Vec<Record>>,
    /// Set to make the clients stop before their next operation.
    pub stop: AtomicBool,
    next_process: AtomicU64,
    /// Key -> (highest modify index seen in an ok answer, the value written at that index).
    known: Mutex<HashMap<String, (u64, u64)>>,
}

impl Run {
    /// A run starting now, with no records.
    pub fn new() -> Arc<Run> {
        Arc::new(Run {
            start: Instant::now(),
            records: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            next_process: AtomicU64::new(0),
            known: Mutex::new(HashMap::new()),
        })
    }

    /// Nanoseconds since [`Run::start`].
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

    fn known(&self, key: &str) -> Option<(u64, u64)> {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.get(key).copied()
    }

    /// Remembers that `value` was written at `index` if that is the newest index seen for `key`.
    fn learn(&self, key: &str, index: u64, value: u64) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let e = known.entry(key.to_string()).or_insert((index, value));
        if index > e.0 {
            *e = (index, value);
        }
    }
}

/// Classifies an HTTP answer to a write that is not one of the definite outcomes the caller handles itself.
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

/// `ETag: "N"` or `X-Raft-Index: N`, as the index a value was written at.
fn header_index(resp: &HttpResponse, name: &str) -> IndexSeen {
    resp.header(name)
        .and_then(|v| v.trim().trim_matches('"').parse::<u64>().ok())
        .map_or(IndexSeen::Unknown, IndexSeen::At)
}

fn json(resp: &HttpResponse) -> serde_json::Value {
    serde_json::from_slice(&resp.body).unwrap_or(serde_json::Value::Null)
}

fn has_code(resp: &HttpResponse, code: &str) -> bool {
    json(resp)["error"]["code"] == code
}

/// What a write's answer amounts to.
enum WriteReply {
    /// 200, with the index it named.
    Done(IndexSeen),
    /// 412 `precondition_failed`, with `current_index`.
    ConditionFailed(IndexSeen),
    /// 404 `not_found` (a delete of an absent key).
    NotFound,
    /// Anything else, classified by [`write_outcome`].
    Other(Outcome, String),
}

fn write_reply(r: &std::io::Result<HttpResponse>) -> WriteReply {
    match r {
        Ok(resp) if resp.status == 200 => {
            let index = match json(resp)["index"].as_u64() {
                Some(i) => IndexSeen::At(i),
                None => header_index(resp, "x-raft-index"),
            };
            WriteReply::Done(index)
        }
        Ok(resp) if resp.status == 412 && has_code(resp, "precondition_failed") => {
            let current = match &json(resp)["error"]["current_index"] {
                serde_json::Value::Null => IndexSeen::Absent,
                v => v.as_u64().map_or(IndexSeen::Unknown, IndexSeen::At),
            };
            WriteReply::ConditionFailed(current)
        }
        Ok(resp) if resp.status == 404 && has_code(resp, "not_found") => WriteReply::NotFound,
        _ => {
            let (outcome, detail) = write_outcome(r);
            WriteReply::Other(outcome, detail)
        }
    }
}

/// A read's answer: the op (value or absent), outcome, index seen and detail.
fn read_reply(r: std::io::Result<HttpResponse>) -> (Op, Outcome, IndexSeen, String) {
    match r {
        Ok(resp) if resp.status == 200 => match resp.text().parse::<u64>() {
            Ok(v) => (
                Op::Read(Some(v)),
                Outcome::Ok,
                header_index(&resp, "etag"),
                "200".into(),
            ),
            Err(_) => (
                Op::Read(None),
                Outcome::Failed,
                IndexSeen::Unknown,
                format!("unparsable value {:?}", resp.text()),
            ),
        },
        Ok(resp) if resp.status == 404 && has_code(&resp, "not_found") => (
            Op::Read(None),
            Outcome::Ok,
            IndexSeen::Unknown,
            "404".into(),
        ),
        Ok(resp) => (
            Op::Read(None),
            Outcome::Failed,
            IndexSeen::Unknown,
            format!("{} {}", resp.status, resp.text().trim()),
        ),
        Err(e) => (
            Op::Read(None),
            Outcome::Failed,
            IndexSeen::Unknown,
            format!("io: {e}"),
        ),
    }
}

fn rest_path(key: &str) -> String {
    format!("/v1/kv/{}", encode_query_value(key.as_bytes()))
}

fn seed_path(route: &str, key: &str) -> String {
    format!("/{route}?key={}", encode_query_value(key.as_bytes()))
}

/// Draws the kind of the next operation (before a CAS falls back to a read for lack of an index).
fn pick(rng: &mut Rng, mix: Mix, write_percent: u64) -> Kind {
    let write = rng.below(100) < write_percent;
    let r = rng.below(100);
    match (mix, write) {
        (Mix::Seed, true) => Kind::SeedSet,
        (Mix::Seed, false) => Kind::SeedGet,
        (Mix::Rest, false) if r < 50 => Kind::Get,
        (Mix::Rest, false) => Kind::LeaseGet,
        (Mix::All, false) if r < 40 => Kind::SeedGet,
        (Mix::All, false) if r < 70 => Kind::Get,
        (Mix::All, false) => Kind::LeaseGet,
        // Writes: plain writes keep values coming, CASes are the point, deletes and create-only writes keep
        // the key going between absent and present.
        (Mix::Rest, true) => match r {
            0..=24 => Kind::Put,
            25..=59 => Kind::Cas,
            60..=74 => Kind::Create,
            75..=89 => Kind::Delete,
            _ => Kind::CasDelete,
        },
        (Mix::All, true) => match r {
            0..=11 => Kind::SeedSet,
            12..=16 => Kind::SeedDelete,
            17..=29 => Kind::Put,
            30..=64 => Kind::Cas,
            65..=79 => Kind::Create,
            80..=89 => Kind::Delete,
            _ => Kind::CasDelete,
        },
    }
}

/// Sends one request of `kind` and turns the answer into a record (times and process filled by the
/// caller). `value` is the unique value a write writes; `expect` the (index, value) a CAS matches.
fn perform(
    http: &mut HttpClient,
    kind: Kind,
    key: &str,
    value: u64,
    expect: Option<(u64, u64)>,
) -> (Op, Outcome, IndexSeen, String) {
    let if_match = expect
        .filter(|_| matches!(kind, Kind::Cas | Kind::CasDelete))
        .map(|(i, _)| format!("\"{i}\""));
    let expect_value = expect.map_or(0, |(_, v)| v);
    let body = value.to_string();
    let (request, op) = match kind {
        Kind::SeedGet | Kind::FinalRead => return read_reply(http.get(&seed_path("get", key))),
        Kind::Get => return read_reply(http.get(&rest_path(key))),
        Kind::LeaseGet => {
            return read_reply(http.get(&format!("{}?consistency=lease", rest_path(key))))
        }
        Kind::SeedSet => {
            let path = format!("{}&value={value}", seed_path("set", key));
            (http.get(&path), Op::Write(value))
        }
        Kind::SeedDelete => (
            http.get(&seed_path("delete", key)),
            Op::Delete { existed: None },
        ),
        Kind::Put => (
            http.request("PUT", &rest_path(key), &[], body.as_bytes()),
            Op::Write(value),
        ),
        Kind::Cas | Kind::CasDelete => {
            let header = [("If-Match", if_match.as_deref().unwrap_or("\"0\""))];
            let (r, new) = if kind == Kind::Cas {
                let r = http.request("PUT", &rest_path(key), &header, body.as_bytes());
                (r, Some(value))
            } else {
                (http.request("DELETE", &rest_path(key), &header, &[]), None)
            };
            let op = Op::Cas {
                expect: expect_value,
                new,
                ok: true,
            };
            (r, op)
        }
        Kind::Create => (
            http.request(
                "PUT",
                &rest_path(key),
                &[("If-None-Match", "*")],
                body.as_bytes(),
            ),
            Op::Create {
                new: value,
                ok: true,
            },
        ),
        Kind::Delete => (
            http.request("DELETE", &rest_path(key), &[], &[]),
            Op::Delete { existed: None },
        ),
    };
    let sent = if_match.map_or(String::new(), |m| format!(" (If-Match {m})"));
    let conditional = matches!(kind, Kind::Cas | Kind::CasDelete | Kind::Create);
    let deletes = matches!(kind, Kind::Delete | Kind::SeedDelete);
    match write_reply(&request) {
        WriteReply::Done(index) => {
            let op = match op {
                Op::Delete { .. } => Op::Delete {
                    existed: Some(true),
                },
                op => op,
            };
            (op, Outcome::Ok, index, format!("200{sent}"))
        }
        WriteReply::ConditionFailed(current) if conditional => {
            let op = match op {
                Op::Cas { expect, new, .. } => Op::Cas {
                    expect,
                    new,
                    ok: false,
                },
                Op::Create { new, .. } => Op::Create { new, ok: false },
                op => op,
            };
            (op, Outcome::Ok, current, format!("412{sent}"))
        }
        WriteReply::NotFound if deletes => (
            Op::Delete {
                existed: Some(false),
            },
            Outcome::Ok,
            IndexSeen::Unknown,
            "404".into(),
        ),
        WriteReply::ConditionFailed(_) | WriteReply::NotFound => {
            // An answer this kind of request should never get: treated as any other unexpected answer.
            let (outcome, detail) = write_outcome(&request);
            (op, outcome, IndexSeen::Unknown, format!("{detail}{sent}"))
        }
        WriteReply::Other(outcome, detail) => {
            (op, outcome, IndexSeen::Unknown, format!("{detail}{sent}"))
        }
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
        let key = format!("{}{}", cfg.key_prefix, rng.below(cfg.keys as u64));
        let mut kind = pick(&mut rng, cfg.mix, cfg.write_percent);
        let expect = run.known(&key);
        if matches!(kind, Kind::Cas | Kind::CasDelete) && expect.is_none() {
            kind = Kind::Get;
        }
        if kind.is_write() {
            counter += 1;
        }
        // Unique across the run: process ids never repeat.
        let value = (process << 24) | counter;
        let invoke = run.now();
        let (op, outcome, seen, detail) = perform(&mut clients[node], kind, &key, value, expect);
        let complete = run.now();
        if outcome == Outcome::Ok {
            let observed = match op {
                Op::Read(v) => v,
                Op::Write(_) | Op::Cas { ok: true, .. } | Op::Create { ok: true, .. } => {
                    op.written()
                }
                _ => None,
            };
            if let (Some(v), IndexSeen::At(i)) = (observed, seen) {
                run.learn(&key, i, v);
            }
        }
        run.record(Record {
            process,
            node,
            key,
            kind,
            op,
            outcome,
            invoke,
            complete,
            index: seen,
            detail,
        });
        if outcome == Outcome::Indeterminate {
            process = run.new_process();
        }
    }
    done
}

/// Per-key histories ready for the checker: definite failures and failed reads dropped, indeterminate
/// writes given an unknown completion. `ops` replaces each record's operation (the analysis sharpens
/// some with what their answers observed); records mapped to `None` are left out.
pub fn histories(
    records: &[Record],
    ops: &[Option<Op>],
) -> BTreeMap<String, Vec<(Operation, usize)>> {
    let mut out: BTreeMap<String, Vec<(Operation, usize)>> = BTreeMap::new();
    for (i, r) in records.iter().enumerate() {
        let Some(op) = &ops[i] else { continue };
        let complete = match (r.outcome, op) {
            (Outcome::Ok, _) => Some(r.complete),
            (Outcome::Indeterminate, op) if !matches!(op, Op::Read(_)) => None,
            _ => continue,
        };
        out.entry(r.key.clone()).or_default().push((
            Operation {
                op: op.clone(),
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
/// [`super::FINAL_READ_PROCESS`]. They go through `/get` for the seed mix and `GET /v1/kv/{key}` otherwise;
/// both name the modify index. Fails if some node never answers.
pub fn final_reads(run: &Run, cfg: &WorkloadConfig, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut clients: Vec<HttpClient> = cfg
        .nodes
        .iter()
        .map(|&a| HttpClient::new(a, cfg.timeout))
        .collect();
    for k in 0..cfg.keys {
        let key = format!("{}{k}", cfg.key_prefix);
        let path = match cfg.mix {
            Mix::Seed => seed_path("get", &key),
            Mix::Rest | Mix::All => rest_path(&key),
        };
        for (node, client) in clients.iter_mut().enumerate() {
            loop {
                let invoke = run.now();
                let (op, outcome, index, _) = read_reply(client.get(&path));
                if outcome == Outcome::Ok {
                    run.record(Record {
                        process: super::FINAL_READ_PROCESS,
                        node,
                        key: key.clone(),
                        kind: Kind::FinalRead,
                        op,
                        outcome,
                        invoke,
                        complete: run.now(),
                        index,
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
