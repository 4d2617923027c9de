//! `nimbus bench`: a closed-loop HTTP load generator for Hash Nimbus and, for comparison, etcd's v2 API.
//!
//! Each connection is one std thread with one keep-alive HTTP/1.1 connection ([`client::Conn`]), sending
//! its next request when the previous answer arrived. A run has four phases, driven by the calling thread:
//! 1. **Ramp**: connections are opened one at a time, each answering a probe request (`GET /health`, or
//!    etcd's `GET /version`) before the next opens. tiny_http 0.12 queues a burst of new keep-alive
//!    connections behind its idle pool threads (docs/benchmarks.md), so a burst would measure a few
//!    connections instead of `--connections`. A probe with no answer within the timeout aborts the run.
//! 2. **Preload** (read and mixed workloads, unless `--no-preload`): every key of the key space is written
//!    once, the keys split across all connections; a failed write is retried a few times, then the run
//!    aborts.
//! 3. **Warmup**: the workload runs `--warmup` seconds without being recorded.
//! 4. **Measure**: the workload runs `--duration` seconds. An operation is recorded if it *started* in
//!    this window; throughput is recorded successes divided by the window's length (each connection may
//!    finish one operation after the window ends).
//!
//! Rules the code keeps:
//! - No async runtime: std threads, std sockets, std channels.
//! - Every loop is bounded in time: each socket operation has `--timeout-ms`, workers stop issuing
//!   requests at the window's end, the calling thread waits on channels with deadlines, preload has a
//!   deadline, and the progress loop ends at the window's end plus the timeout.
//! - Only loopback targets (127.0.0.0/8, ::1) are accepted; this tool shares a machine with what it
//!   measures and is not meant to load anything else.
//! - Latency is measured per request from just before the write to just after the whole response was read,
//!   in nanoseconds, into a per-thread [`histogram::Histogram`] (merged at the end, so recording takes no
//!   lock). Only successes (2xx) are in the latency figures; every other outcome is counted as an error by
//!   kind (`http <status>`, `io <ErrorKind>`).
//! - A second-by-second progress line goes to stderr; the summary (or `--json`, one line) to stdout.

pub mod client;
pub mod histogram;
pub mod report;

use crate::raft::Rng;
use client::Conn;
use histogram::Histogram;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which HTTP API the target speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// Our seed routes: `GET /set?key=&value=`, `GET /get?key=&consistency=`.
    Nimbus,
    /// etcd's v2 keys API: `PUT /v2/keys/K` with form body `value=V`; `GET /v2/keys/K[?quorum=true]`.
    EtcdV2,
}

/// What the connections do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Writes only, to random keys of the key space (or to fresh keys with `--unique-keys`).
    Write,
    /// Reads only, of random keys of the (preloaded) key space.
    Read,
    /// Reads and writes, each operation a read with probability `--read-percent` (default 50).
    Mixed,
}

/// Read consistency asked of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Through the read index: sees every write acknowledged before the read began (etcd v2: `quorum=true`).
    Linearizable,
    /// From the leader's lease when it holds one, else like `Linearizable` (Hash Nimbus only).
    Lease,
    /// The contacted node's local state, possibly behind (etcd v2: a plain GET).
    Stale,
}

macro_rules! names {
    ($t:ty, $what:literal, $($name:literal => $v:expr),+) => {
        impl std::str::FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<$t, String> {
                match s {
                    $($name => Ok($v),)+
                    _ => Err(format!(concat!("unknown ", $what, " {:?}: expected {}"), s,
                        [$($name),+].join(", "))),
                }
            }
        }
        impl $t {
            /// The name used on the command line and in reports.
            pub fn name(self) -> &'static str {
                $(if self == $v { return $name; })+
                unreachable!()
            }
        }
    };
}
names!(Api, "api", "nimbus" => Api::Nimbus, "etcd-v2" => Api::EtcdV2);
names!(Workload, "workload", "write" => Workload::Write, "read" => Workload::Read, "mixed" => Workload::Mixed);
names!(Consistency, "consistency", "linearizable" => Consistency::Linearizable,
    "lease" => Consistency::Lease, "stale" => Consistency::Stale);

/// The flags as given, before validation (what `main.rs` parses).
#[derive(Debug, Clone)]
pub struct Flags {
    /// `--target`: servers as `host:port` (optionally `http://`-prefixed); must resolve to loopback.
    pub targets: Vec<String>,
    /// `--api`: which HTTP API the targets speak.
    pub api: Api,
    /// `--workload`: reads, writes or a mix.
    pub workload: Workload,
    /// `--consistency`: read consistency; `None` means linearizable. Rejected for the write workload.
    pub consistency: Option<Consistency>,
    /// `--read-percent`: share of reads, 0..=100, mixed workload only; `None` means 50.
    pub read_percent: Option<u64>,
    /// `--connections`: concurrent connections (one thread each), 1..=[`MAX_CONNECTIONS`].
    pub connections: usize,
    /// `--duration`: length of the measured window in seconds, 0.1..=3600.
    pub duration_secs: f64,
    /// `--warmup`: seconds of unrecorded load before the window, 0..=600.
    pub warmup_secs: f64,
    /// `--keys`: size of the key space, 1..=[`MAX_KEYS`].
    pub keys: u64,
    /// `--value-size`: bytes per written value, 1..=[`MAX_VALUE`].
    pub value_size: usize,
    /// `--unique-keys`: every write goes to a key never written before (write and mixed workloads only).
    pub unique_keys: bool,
    /// `--no-preload`: skip writing the key space before a read or mixed run.
    pub no_preload: bool,
    /// `--timeout-ms`: timeout of every connect, read and write, in milliseconds, 1..=60000.
    pub timeout_ms: u64,
    /// `--key-prefix`: prefix of every key, 1-100 characters of `A-Z a-z 0-9 - _ .`.
    pub key_prefix: String,
    /// `--seed`: seed of the per-connection random key and read/write choices.
    pub seed: u64,
}

impl Default for Flags {
    fn default() -> Self {
        Flags {
            targets: Vec::new(),
            api: Api::Nimbus,
            workload: Workload::Write,
            consistency: None,
            read_percent: None,
            connections: 8,
            duration_secs: 10.0,
            warmup_secs: 1.0,
            keys: 1000,
            value_size: 100,
            unique_keys: false,
            no_preload: false,
            timeout_ms: 5000,
            key_prefix: "bench-".into(),
            seed: 1,
        }
    }
}

/// A validated run description.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// The servers, all loopback; connection `i` goes to `targets[i % targets.len()]`.
    pub targets: Vec<SocketAddr>,
    /// Which HTTP API the targets speak.
    pub api: Api,
    /// What the connections do.
    pub workload: Workload,
    /// Read consistency asked of the server (linearizable unless given).
    pub consistency: Consistency,
    /// Percentage of reads (100 for `read`, 0 for `write`).
    pub read_percent: u64,
    /// Number of connections, each on its own thread; 1..=[`MAX_CONNECTIONS`].
    pub connections: usize,
    /// Length of the measured window.
    pub duration: Duration,
    /// Unrecorded load before the measured window.
    pub warmup: Duration,
    /// Size of the key space: keys are the prefix followed by `0..keys`, zero-padded to 8 digits.
    pub keys: u64,
    /// Bytes per written value.
    pub value_size: usize,
    /// Whether every write goes to a fresh key instead of one of the key space.
    pub unique_keys: bool,
    /// Whether the key space is written once before the run (read and mixed workloads, unless `--no-preload`).
    pub preload: bool,
    /// Timeout of every connect, read and write.
    pub timeout: Duration,
    /// Prefix of every key.
    pub key_prefix: String,
    /// Seed of the per-connection random number generators.
    pub seed: u64,
}

/// Most connections a run may open (`--connections`).
pub const MAX_CONNECTIONS: usize = 1024;
/// Largest key space a run may use (`--keys`).
pub const MAX_KEYS: u64 = 10_000_000;
/// Largest value a run may write, in bytes (`--value-size`): 1 MiB.
pub const MAX_VALUE: usize = 1 << 20;
/// The whole preload must finish within this.
pub const PRELOAD_DEADLINE: Duration = Duration::from_secs(300);

impl Flags {
    /// Checks every flag and resolves the targets; the error is one line naming the flag.
    pub fn validate(&self) -> Result<BenchConfig, String> {
        if self.targets.is_empty() {
            return Err("--target: at least one host:port is required".into());
        }
        let mut targets = Vec::new();
        for t in &self.targets {
            let t = t.trim();
            let bare = t.strip_prefix("http://").unwrap_or(t).trim_end_matches('/');
            let a =
                crate::config::connect_addr(bare).map_err(|e| format!("--target {t:?}: {e}"))?;
            if !a.ip().is_loopback() {
                return Err(format!(
                    "--target {t:?}: {a} is not a loopback address; nimbus bench only loads this host \
                     (127.0.0.0/8 or ::1)"
                ));
            }
            targets.push(a);
        }
        if !(1..=MAX_CONNECTIONS).contains(&self.connections) {
            return Err(format!(
                "--connections must be 1..={MAX_CONNECTIONS}, got {}",
                self.connections
            ));
        }
        if !(self.duration_secs.is_finite() && (0.1..=3600.0).contains(&self.duration_secs)) {
            return Err(format!(
                "--duration must be 0.1..=3600 seconds, got {}",
                self.duration_secs
            ));
        }
        if !(self.warmup_secs.is_finite() && (0.0..=600.0).contains(&self.warmup_secs)) {
            return Err(format!(
                "--warmup must be 0..=600 seconds, got {}",
                self.warmup_secs
            ));
        }
        if !(1..=MAX_KEYS).contains(&self.keys) {
            return Err(format!("--keys must be 1..={MAX_KEYS}, got {}", self.keys));
        }
        if !(1..=MAX_VALUE).contains(&self.value_size) {
            return Err(format!(
                "--value-size must be 1..={MAX_VALUE} bytes, got {}",
                self.value_size
            ));
        }
        if !(1..=60_000).contains(&self.timeout_ms) {
            return Err(format!(
                "--timeout-ms must be 1..=60000, got {}",
                self.timeout_ms
            ));
        }
        if self.key_prefix.is_empty()
            || self.key_prefix.len() > 100
            || !self
                .key_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(format!(
                "--key-prefix must be 1-100 characters of A-Z a-z 0-9 - _ ., got {:?}",
                self.key_prefix
            ));
        }
        let read_percent = match (self.workload, self.read_percent) {
            (Workload::Mixed, None) => 50,
            (Workload::Mixed, Some(p)) if p <= 100 => p,
            (Workload::Mixed, Some(p)) => {
                return Err(format!("--read-percent must be 0..=100, got {p}"))
            }
            (w, Some(_)) => {
                return Err(format!(
                    "--read-percent applies to --workload mixed only (this is {})",
                    w.name()
                ))
            }
            (Workload::Read, None) => 100,
            (Workload::Write, None) => 0,
        };
        if self.workload == Workload::Write && self.consistency.is_some() {
            return Err("--consistency applies to reads: use --workload read or mixed".into());
        }
        let consistency = self.consistency.unwrap_or(Consistency::Linearizable);
        if self.api == Api::EtcdV2 && consistency == Consistency::Lease {
            return Err(
                "--consistency lease has no etcd v2 counterpart: use linearizable (quorum=true) or stale \
                 (a local read)"
                    .into(),
            );
        }
        if self.unique_keys && self.workload == Workload::Read {
            return Err("--unique-keys applies to writes: use --workload write or mixed".into());
        }
        if self.no_preload && self.workload == Workload::Write {
            return Err(
                "--no-preload applies to read and mixed workloads (writes preload nothing)".into(),
            );
        }
        Ok(BenchConfig {
            targets,
            api: self.api,
            workload: self.workload,
            consistency,
            read_percent,
            connections: self.connections,
            duration: Duration::from_secs_f64(self.duration_secs),
            warmup: Duration::from_secs_f64(self.warmup_secs),
            keys: self.keys,
            value_size: self.value_size,
            unique_keys: self.unique_keys,
            preload: self.workload != Workload::Write && !self.no_preload,
            timeout: Duration::from_millis(self.timeout_ms),
            key_prefix: self.key_prefix.clone(),
            seed: self.seed,
        })
    }
}

/// Builds requests into a reused buffer. Keys and values are made of URL-safe characters only (the prefix
/// is validated, the rest is digits and letters), so nothing needs encoding.
struct Requests {
    api: Api,
    host: String,
    consistency: Consistency,
    prefix: String,
    value: String,
    buf: Vec<u8>,
}

impl Requests {
    fn new(cfg: &BenchConfig, target: SocketAddr) -> Requests {
        Requests {
            api: cfg.api,
            host: target.to_string(),
            consistency: cfg.consistency,
            prefix: cfg.key_prefix.clone(),
            value: (0..cfg.value_size)
                .map(|i| (b'a' + (i % 26) as u8) as char)
                .collect(),
            buf: Vec::with_capacity(256 + cfg.value_size),
        }
    }

    fn key(&self, out: &mut Vec<u8>, key: &Key) {
        out.extend_from_slice(self.prefix.as_bytes());
        match *key {
            Key::Space(k) => {
                let _ = write!(out, "{k:08}");
            }
            Key::Unique { nonce, conn, seq } => {
                let _ = write!(out, "u{nonce:x}-{conn}-{seq}");
            }
        }
    }

    fn probe(&mut self) -> &[u8] {
        self.buf.clear();
        let path = match self.api {
            Api::Nimbus => "/health",
            Api::EtcdV2 => "/version",
        };
        let _ = write!(
            self.buf,
            "GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n",
            self.host
        );
        &self.buf
    }

    fn write(&mut self, key: &Key) -> &[u8] {
        let mut b = std::mem::take(&mut self.buf);
        b.clear();
        match self.api {
            Api::Nimbus => {
                b.extend_from_slice(b"GET /set?key=");
                self.key(&mut b, key);
                let _ = write!(
                    b,
                    "&value={} HTTP/1.1\r\nHost: {}\r\n\r\n",
                    self.value, self.host
                );
            }
            Api::EtcdV2 => {
                b.extend_from_slice(b"PUT /v2/keys/");
                self.key(&mut b, key);
                let _ = write!(
                    b,
                    " HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
                     Content-Length: {}\r\n\r\nvalue={}",
                    self.host,
                    self.value.len() + 6,
                    self.value
                );
            }
        }
        self.buf = b;
        &self.buf
    }

    fn read(&mut self, key: &Key) -> &[u8] {
        let mut b = std::mem::take(&mut self.buf);
        b.clear();
        match self.api {
            Api::Nimbus => {
                b.extend_from_slice(b"GET /get?key=");
                self.key(&mut b, key);
                let _ = write!(b, "&consistency={}", self.consistency.name());
            }
            Api::EtcdV2 => {
                b.extend_from_slice(b"GET /v2/keys/");
                self.key(&mut b, key);
                if self.consistency == Consistency::Linearizable {
                    b.extend_from_slice(b"?quorum=true");
                }
            }
        }
        let _ = write!(b, " HTTP/1.1\r\nHost: {}\r\n\r\n", self.host);
        self.buf = b;
        &self.buf
    }
}

#[derive(Debug, Clone, Copy)]
enum Key {
    Space(u64),
    Unique { nonce: u64, conn: usize, seq: u64 },
}

/// What one connection measured.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    /// Latencies of successful (2xx) reads started in the measured window, in nanoseconds.
    pub reads: Histogram,
    /// Latencies of successful (2xx) writes started in the measured window, in nanoseconds.
    pub writes: Histogram,
    /// Failed operations started in the measured window, by kind (`http <status>`, `io <ErrorKind>`).
    pub errors: BTreeMap<String, u64>,
    /// Connections opened during warmup and measurement (reconnects after errors or closes).
    pub connects: u64,
}

impl Measured {
    fn merge(&mut self, o: &Measured) {
        self.reads.merge(&o.reads);
        self.writes.merge(&o.writes);
        for (k, v) in &o.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        self.connects += o.connects;
    }
}

/// The outcome of one request, as counted.
fn outcome(r: &std::io::Result<client::Response>) -> Result<(), String> {
    match r {
        Ok(r) if (200..300).contains(&r.status) => Ok(()),
        Ok(r) => Err(format!("http {}", r.status)),
        Err(e) => Err(format!("io {:?}", e.kind())),
    }
}

/// Counters the progress line reads while workers run.
#[derive(Default)]
struct Live {
    ops: AtomicU64,
    errors: AtomicU64,
    abort: AtomicBool,
}

enum Cmd {
    Preload { deadline: Instant },
    Run { measure_from: Instant, end: Instant },
    Stop,
}

enum Event {
    Ready(Result<(), String>),
    Preloaded(usize, Result<u64, String>),
}

struct Worker {
    idx: usize,
    cfg: Arc<BenchConfig>,
    conn: Conn,
    req: Requests,
    live: Arc<Live>,
    nonce: u64,
}

impl Worker {
    fn main(mut self, cmds: mpsc::Receiver<Cmd>, events: mpsc::Sender<Event>) -> Measured {
        let probe = self.conn.send(self.req.probe());
        let ready = probe
            .map(|_| ())
            .map_err(|e| format!("connection {} to {}: {e}", self.idx + 1, self.conn.addr()));
        let _ = events.send(Event::Ready(ready));
        // Commands come within bounded time: the driver sends Stop on every path that abandons the run, and
        // dropping its sender ends this loop too.
        while let Ok(cmd) = cmds.recv() {
            match cmd {
                Cmd::Preload { deadline } => {
                    let r = self.preload(deadline);
                    let _ = events.send(Event::Preloaded(self.idx, r));
                }
                Cmd::Run { measure_from, end } => return self.run(measure_from, end),
                Cmd::Stop => break,
            }
        }
        Measured::default()
    }

    /// Writes keys idx, idx + C, idx + 2C, ... of the key space.
    fn preload(&mut self, deadline: Instant) -> Result<u64, String> {
        let step = self.cfg.connections as u64;
        let mut n = 0;
        let mut k = self.idx as u64;
        while k < self.cfg.keys {
            let mut attempt = 0;
            loop {
                if Instant::now() > deadline || self.live.abort.load(Ordering::Relaxed) {
                    return Err(format!("preload stopped after {n} keys: deadline or abort"));
                }
                let r = self.conn.send(self.req.write(&Key::Space(k)));
                match outcome(&r) {
                    Ok(()) => break,
                    Err(e) if attempt >= 5 => {
                        return Err(format!("preload of key {k} failed 6 times, last: {e}"))
                    }
                    Err(_) => {
                        attempt += 1;
                        std::thread::sleep(Duration::from_millis(50 << attempt));
                    }
                }
            }
            n += 1;
            k += step;
        }
        Ok(n)
    }

    fn run(mut self, measure_from: Instant, end: Instant) -> Measured {
        let cfg = self.cfg.clone();
        let mut m = Measured::default();
        let mut rng = Rng::new(
            cfg.seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(self.idx as u64 + 1),
        );
        let mut seq = 0u64;
        let connects_before = self.conn.connects;
        loop {
            let now = Instant::now();
            if now >= end || self.live.abort.load(Ordering::Relaxed) {
                break;
            }
            let is_read = match cfg.workload {
                Workload::Read => true,
                Workload::Write => false,
                Workload::Mixed => rng.below(100) < cfg.read_percent,
            };
            let key = if !is_read && cfg.unique_keys {
                seq += 1;
                Key::Unique {
                    nonce: self.nonce,
                    conn: self.idx,
                    seq,
                }
            } else {
                Key::Space(rng.below(cfg.keys))
            };
            let request = if is_read {
                self.req.read(&key)
            } else {
                self.req.write(&key)
            };
            let t0 = Instant::now();
            let r = self.conn.send(request);
            let ns = t0.elapsed().as_nanos().min(u64::MAX as u128) as u64;
            let measured = t0 >= measure_from;
            match outcome(&r) {
                Ok(()) => {
                    self.live.ops.fetch_add(1, Ordering::Relaxed);
                    if measured {
                        if is_read {
                            m.reads.record(ns)
                        } else {
                            m.writes.record(ns)
                        }
                    }
                }
                Err(kind) => {
                    self.live.errors.fetch_add(1, Ordering::Relaxed);
                    if measured {
                        *m.errors.entry(kind).or_default() += 1;
                    }
                    if r.is_err() {
                        // No hot loop against a refused or broken connection.
                        let pause = Duration::from_millis(20);
                        std::thread::sleep(
                            pause.min(end.saturating_duration_since(Instant::now())),
                        );
                    }
                }
            }
        }
        m.connects = self.conn.connects - connects_before;
        m
    }
}

/// Everything a run produced; see [`report`] for its rendering.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The configuration the run used.
    pub cfg: BenchConfig,
    /// Every connection's measurements, merged.
    pub measured: Measured,
    /// The measured window's length.
    pub window: Duration,
    /// Keys written by the preload (0 without one).
    pub preloaded: u64,
    /// How long the preload took (near zero without one).
    pub preload_time: Duration,
    /// CPU time (user + system) of this process over warmup and measurement, if known.
    pub client_cpu: Option<Duration>,
    /// Seconds since the Unix epoch when measurement started.
    pub started_unix: u64,
}

/// CPU time this process used so far, from `/proc/self/stat` (utime + stime, in clock ticks of 1/100 s,
/// the USER_HZ every Linux architecture we run on uses). `None` elsewhere.
fn process_cpu() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3 of stat(5), so utime (14) and stime (15) are at 11 and 12.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// Runs the benchmark. `progress` receives one line per second (pass `std::io::stderr()`, or a sink).
pub fn run(cfg: BenchConfig, progress: &mut dyn std::io::Write) -> Result<Outcome, String> {
    let cfg = Arc::new(cfg);
    let live = Arc::new(Live::default());
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let (ev_tx, ev_rx) = mpsc::channel();
    let mut cmd_txs = Vec::new();
    let mut handles = Vec::new();
    // Tells every started worker to stop, and waits for them (each is bounded by its socket timeouts).
    let abandon = |cmd_txs: &Vec<mpsc::Sender<Cmd>>,
                   handles: Vec<std::thread::JoinHandle<Measured>>| {
        live.abort.store(true, Ordering::Relaxed);
        for t in cmd_txs {
            let _ = t.send(Cmd::Stop);
        }
        for h in handles {
            let _ = h.join();
        }
    };

    // 1. Ramp: one connection at a time, each answered before the next opens.
    let wait = cfg.timeout * 2 + Duration::from_secs(1);
    for idx in 0..cfg.connections {
        let target = cfg.targets[idx % cfg.targets.len()];
        let w = Worker {
            idx,
            cfg: cfg.clone(),
            conn: Conn::new(target, cfg.timeout),
            req: Requests::new(&cfg, target),
            live: live.clone(),
            nonce,
        };
        let (tx, rx) = mpsc::channel();
        let events = ev_tx.clone();
        let h = std::thread::Builder::new()
            .name(format!("bench-{idx}"))
            .spawn(move || w.main(rx, events))
            .map_err(|e| format!("cannot start connection thread {}: {e}", idx + 1))?;
        cmd_txs.push(tx);
        handles.push(h);
        match ev_rx.recv_timeout(wait) {
            Ok(Event::Ready(Ok(()))) => {}
            Ok(Event::Ready(Err(e))) => {
                abandon(&cmd_txs, handles);
                return Err(format!("probe request failed: {e}"));
            }
            Ok(Event::Preloaded(..)) | Err(_) => {
                abandon(&cmd_txs, handles);
                return Err(format!(
                    "connection {} did not answer its probe in time",
                    idx + 1
                ));
            }
        }
    }

    // 2. Preload.
    let mut preloaded = 0;
    let preload_start = Instant::now();
    if cfg.preload {
        let deadline = preload_start + PRELOAD_DEADLINE;
        for t in &cmd_txs {
            let _ = t.send(Cmd::Preload { deadline });
        }
        let _ = writeln!(
            progress,
            "preloading {} keys over {} connections...",
            cfg.keys, cfg.connections
        );
        for _ in 0..cfg.connections {
            let left = (deadline + wait).saturating_duration_since(Instant::now());
            match ev_rx.recv_timeout(left) {
                Ok(Event::Preloaded(_, Ok(n))) => preloaded += n,
                Ok(Event::Preloaded(i, Err(e))) => {
                    abandon(&cmd_txs, handles);
                    return Err(format!("preload (connection {}): {e}", i + 1));
                }
                Ok(Event::Ready(..)) | Err(_) => {
                    abandon(&cmd_txs, handles);
                    return Err("preload did not finish in time".into());
                }
            }
        }
    }
    let preload_time = preload_start.elapsed();

    // 3 and 4. Warmup and measurement, with a progress line every second.
    let cpu0 = process_cpu();
    let start = Instant::now();
    let measure_from = start + cfg.warmup;
    let end = measure_from + cfg.duration;
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() + cfg.warmup.as_secs());
    for t in &cmd_txs {
        let _ = t.send(Cmd::Run { measure_from, end });
    }
    let (mut last_ops, mut last_err) = (0u64, 0u64);
    let mut tick = 1u32;
    let hard_end = end + cfg.timeout + Duration::from_secs(1);
    while !handles.iter().all(|h| h.is_finished()) && Instant::now() < hard_end {
        let next = start + Duration::from_secs(tick as u64);
        let now = Instant::now();
        if now < next {
            std::thread::sleep((next - now).min(Duration::from_millis(100)));
            continue;
        }
        let ops = live.ops.load(Ordering::Relaxed);
        let errs = live.errors.load(Ordering::Relaxed);
        let phase = if next <= measure_from {
            "warmup"
        } else {
            "run"
        };
        let _ = writeln!(
            progress,
            "[{tick:>4} s {phase:>6}] {:>8} ops/s  {:>6} errors",
            ops - last_ops,
            errs - last_err
        );
        (last_ops, last_err) = (ops, errs);
        tick += 1;
    }
    let cpu1 = process_cpu();
    let mut measured = Measured::default();
    let mut stuck = 0;
    for h in handles {
        if !h.is_finished() && Instant::now() >= hard_end {
            // A worker past every timeout: leave it (it ends with the process) rather than hang.
            stuck += 1;
            continue;
        }
        match h.join() {
            Ok(m) => measured.merge(&m),
            Err(_) => return Err("a connection thread panicked".into()),
        }
    }
    if stuck > 0 {
        *measured
            .errors
            .entry("stuck past the timeout".into())
            .or_default() += stuck;
    }
    let client_cpu = match (cpu0, cpu1) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    Ok(Outcome {
        cfg: (*cfg).clone(),
        measured,
        window: cfg.duration,
        preloaded,
        preload_time,
        client_cpu,
        started_unix,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(targets: &[&str]) -> Flags {
        Flags {
            targets: targets.iter().map(|s| s.to_string()).collect(),
            ..Flags::default()
        }
    }

    #[test]
    fn validation_names_the_flag() {
        let ok = flags(&["127.0.0.1:2021", "http://localhost:2022/", ":2023"])
            .validate()
            .unwrap();
        assert_eq!(ok.targets.len(), 3);
        assert!(ok.targets.iter().all(|a| a.ip().is_loopback()));
        assert_eq!((ok.read_percent, ok.preload), (0, false));

        let cases: Vec<(Flags, &str)> = vec![
            (flags(&[]), "--target"),
            (flags(&["10.1.2.3:2021"]), "loopback"),
            (flags(&["127.0.0.1"]), "--target"),
            (
                Flags {
                    connections: 0,
                    ..flags(&[":1"])
                },
                "--connections",
            ),
            (
                Flags {
                    duration_secs: 0.0,
                    ..flags(&[":1"])
                },
                "--duration",
            ),
            (
                Flags {
                    warmup_secs: -1.0,
                    ..flags(&[":1"])
                },
                "--warmup",
            ),
            (
                Flags {
                    keys: 0,
                    ..flags(&[":1"])
                },
                "--keys",
            ),
            (
                Flags {
                    value_size: 0,
                    ..flags(&[":1"])
                },
                "--value-size",
            ),
            (
                Flags {
                    key_prefix: "a b".into(),
                    ..flags(&[":1"])
                },
                "--key-prefix",
            ),
            (
                Flags {
                    read_percent: Some(10),
                    ..flags(&[":1"])
                },
                "--read-percent",
            ),
            (
                Flags {
                    workload: Workload::Mixed,
                    read_percent: Some(101),
                    ..flags(&[":1"])
                },
                "--read-percent",
            ),
            (
                Flags {
                    consistency: Some(Consistency::Stale),
                    ..flags(&[":1"])
                },
                "--consistency",
            ),
            (
                Flags {
                    api: Api::EtcdV2,
                    workload: Workload::Read,
                    consistency: Some(Consistency::Lease),
                    ..flags(&[":1"])
                },
                "lease",
            ),
            (
                Flags {
                    workload: Workload::Read,
                    unique_keys: true,
                    ..flags(&[":1"])
                },
                "--unique-keys",
            ),
            (
                Flags {
                    no_preload: true,
                    ..flags(&[":1"])
                },
                "--no-preload",
            ),
        ];
        for (f, want) in cases {
            let e = f.validate().unwrap_err();
            assert!(e.contains(want), "{f:?}: {e}");
        }
        let mixed = Flags {
            workload: Workload::Mixed,
            ..flags(&[":1"])
        }
        .validate()
        .unwrap();
        assert_eq!((mixed.read_percent, mixed.preload), (50, true));
    }

    #[test]
    fn names_round_trip() {
        for a in [Api::Nimbus, Api::EtcdV2] {
            assert_eq!(a.name().parse::<Api>().unwrap(), a);
        }
        for c in [
            Consistency::Linearizable,
            Consistency::Lease,
            Consistency::Stale,
        ] {
            assert_eq!(c.name().parse::<Consistency>().unwrap(), c);
        }
        assert!("wrtie"
            .parse::<Workload>()
            .unwrap_err()
            .contains("write, read, mixed"));
    }

    #[test]
    fn requests_are_well_formed() {
        let mut cfg = Flags {
            value_size: 3,
            workload: Workload::Mixed,
            ..flags(&["127.0.0.1:9"])
        }
        .validate()
        .unwrap();
        let t = cfg.targets[0];
        let mut r = Requests::new(&cfg, t);
        assert_eq!(
            r.write(&Key::Space(7)),
            b"GET /set?key=bench-00000007&value=abc HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n"
        );
        assert_eq!(
            r.read(&Key::Space(7)),
            b"GET /get?key=bench-00000007&consistency=linearizable HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n"
        );
        cfg.api = Api::EtcdV2;
        let mut r = Requests::new(&cfg, t);
        let w = Key::Unique {
            nonce: 255,
            conn: 2,
            seq: 9,
        };
        assert_eq!(
            std::str::from_utf8(r.write(&w)).unwrap(),
            "PUT /v2/keys/bench-uff-2-9 HTTP/1.1\r\nHost: 127.0.0.1:9\r\nContent-Type: \
             application/x-www-form-urlencoded\r\nContent-Length: 9\r\n\r\nvalue=abc"
        );
        assert_eq!(
            r.read(&Key::Space(1)),
            b"GET /v2/keys/bench-00000001?quorum=true HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n"
        );
        cfg.consistency = Consistency::Stale;
        let mut r = Requests::new(&cfg, t);
        assert_eq!(
            r.read(&Key::Space(1)),
            b"GET /v2/keys/bench-00000001 HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n"
        );
    }

    #[test]
    fn process_cpu_is_readable() {
        assert!(process_cpu().is_some());
    }
}
