//! Prometheus metrics: one [`Metrics`] per node, shared (`Arc`) by the HTTP workers and the Raft thread, and
//! rendered by `GET /metrics` in the Prometheus text exposition format, version 0.0.4
//! (`text/plain; version=0.0.4; charset=utf-8`, no `# EOF` line), which both Prometheus and a person with
//! `curl` read. Every metric is listed in `docs/api.md`.
//!
//! Rules this module keeps:
//! - **Bounded label values.** A route label is one of [`Route`]'s fixed names, never the raw path; a method
//!   is one of six names (`other` for the rest); a status is the numeric code the node answered with. No
//!   client input can create new series.
//! - **No locks on the hot path.** Counters and gauges are prometheus-client's atomics. Histograms are this
//!   module's [`AtomicHistogram`] (one relaxed atomic add for the bucket and one for the sum), because
//!   prometheus-client's own histogram takes a mutex on every observation. A labelled child is looked up in
//!   its family (which takes the family's lock) once, then kept in a `OnceLock` slot that later requests read
//!   with one atomic load.
//! - **Writers.** Only the Raft thread writes the `nimbus_raft_*` and `nimbus_wal_*` metrics (except
//!   `nimbus_wal_disk_bytes`, see below); only HTTP workers write the `nimbus_http_*` ones.
//! - **Rendering happens on the HTTP worker serving the scrape**, never on the Raft thread. The WAL's size
//!   on disk is measured there as well, by listing the WAL directory at most once per second.
//! - **Consistency.** Each value is read atomically, but a scrape is not a snapshot of one instant: a
//!   histogram's `_sum` may already include an observation its buckets do not show yet. A histogram's
//!   `_count` is always the sum of the bucket counts that were read, so the `+Inf` bucket equals it.
//! - Nothing here panics on any input: unknown paths, methods and status codes map to bounded labels.

use crate::raft::{Index, NodeId, Raft, Term};
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tiny_http::Method;

/// The `Content-Type` of `GET /metrics`.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// How often, at most, a scrape lists the WAL directory to measure its size.
const DISK_REFRESH: Duration = Duration::from_secs(1);

/// HTTP request latency bucket bounds, in nanoseconds: 0.1 ms to 5 s.
const LATENCY_NS: &[u64] = &[
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
];

/// WAL fsync latency bucket bounds, in nanoseconds: 10 µs to 1 s.
const FSYNC_NS: &[u64] = &[
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
];

/// Entries-per-fsync bucket bounds (a batch may be 0 entries: a hard-state change alone).
const BATCH_ENTRIES: &[u64] = &[0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096];

/// What a request is counted under: the route it was meant for, from a fixed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// The seed's `/set`.
    Set,
    /// The seed's `/get`.
    Get,
    /// The seed's `/delete`.
    Delete,
    /// `GET /v1/kv/{key}`.
    KvGet,
    /// `PUT /v1/kv/{key}`.
    KvPut,
    /// `DELETE /v1/kv/{key}`.
    KvDelete,
    /// `GET /v1/kv` (listing keys).
    KvList,
    /// `/status`.
    Status,
    /// `/health`.
    Health,
    /// `/metrics`.
    Metrics,
    /// Unknown paths, and methods that no route takes on `/v1/kv`.
    Other,
}

impl Route {
    /// Every route, in label order.
    pub const ALL: [Route; 11] = [
        Route::Set,
        Route::Get,
        Route::Delete,
        Route::KvGet,
        Route::KvPut,
        Route::KvDelete,
        Route::KvList,
        Route::Status,
        Route::Health,
        Route::Metrics,
        Route::Other,
    ];

    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            Route::Set => "set",
            Route::Get => "get",
            Route::Delete => "delete",
            Route::KvGet => "kv_get",
            Route::KvPut => "kv_put",
            Route::KvDelete => "kv_delete",
            Route::KvList => "kv_list",
            Route::Status => "status",
            Route::Health => "health",
            Route::Metrics => "metrics",
            Route::Other => "other",
        }
    }

    /// The route of a request URL (path and query) and method, as the HTTP layer dispatches it. A seed or
    /// operations path counts under its route whatever the method (a wrong method is a 405 there); on
    /// `/v1/kv` the method chooses the route, and a method none takes counts as `other`.
    pub fn of(url: &str, method: &Method) -> Route {
        let path = url.split_once('?').map_or(url, |(p, _)| p);
        match path {
            "/set" => Route::Set,
            "/get" => Route::Get,
            "/delete" => Route::Delete,
            "/status" => Route::Status,
            "/health" => Route::Health,
            "/metrics" => Route::Metrics,
            "/v1/kv" | "/v1/kv/" => match method {
                Method::Get => Route::KvList,
                _ => Route::Other,
            },
            p if p.starts_with("/v1/kv/") => match method {
                Method::Get => Route::KvGet,
                Method::Put => Route::KvPut,
                Method::Delete => Route::KvDelete,
                _ => Route::Other,
            },
            _ => Route::Other,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The method label values; anything else is `other`.
const METHODS: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "DELETE", "other"];

fn method_index(m: &Method) -> usize {
    match m {
        Method::Get => 0,
        Method::Head => 1,
        Method::Post => 2,
        Method::Put => 3,
        Method::Delete => 4,
        _ => 5,
    }
}

/// The status codes this node answers with; their counters are cached. Others still count, through the
/// family's map (a lock, on a path no request of ours takes).
const STATUSES: [u16; 11] = [200, 400, 401, 404, 405, 412, 413, 500, 503, 504, 507];

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    method: &'static str,
    status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
}

/// Where a proposal went, for `nimbus_raft_proposals_total{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProposalKind {
    /// Proposed on this node while it was leader: appended to its log.
    Local,
    /// Proposed on this node as a follower that knows the leader: forwarded to it.
    Forwarded,
    /// Proposed while no leader was known: refused at once.
    NoLeader,
    /// Forwarded to this node by a follower while this node was leader.
    FromFollower,
}

/// A histogram with fixed integer bucket bounds and lock-free observations (see the module rules).
/// Values are recorded in a base unit (nanoseconds, entries) and exported divided by `divisor`.
#[derive(Debug, Clone)]
pub struct AtomicHistogram {
    inner: Arc<HistogramInner>,
}

#[derive(Debug)]
struct HistogramInner {
    /// Upper bounds (inclusive), ascending, in the base unit.
    bounds: &'static [u64],
    /// One counter per bound, plus one for values above the last bound (`+Inf`).
    buckets: Box<[AtomicU64]>,
    /// Sum of observed values in the base unit (wraps after 2^64: centuries of nanoseconds).
    sum: AtomicU64,
    divisor: f64,
}

impl AtomicHistogram {
    /// `bounds` must be ascending; `divisor` converts the base unit to the exported one (1e9 for ns → s).
    pub fn new(bounds: &'static [u64], divisor: f64) -> Self {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]));
        AtomicHistogram {
            inner: Arc::new(HistogramInner {
                bounds,
                buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
                sum: AtomicU64::new(0),
                divisor,
            }),
        }
    }

    /// Records one value (in the base unit).
    pub fn observe(&self, v: u64) {
        let i = self.inner.bounds.partition_point(|&b| b < v);
        self.inner.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.inner.sum.fetch_add(v, Ordering::Relaxed);
    }

    /// Records a duration, in nanoseconds (saturating at 2^64 ns).
    pub fn observe_duration(&self, d: Duration) {
        self.observe(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// The number of observations so far.
    pub fn count(&self) -> u64 {
        self.inner
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .sum()
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let h = &self.inner;
        let mut count = 0u64;
        let buckets: Vec<(f64, u64)> = h
            .buckets
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let n = b.load(Ordering::Relaxed);
                count = count.wrapping_add(n);
                let upper = h
                    .bounds
                    .get(i)
                    .map_or(f64::INFINITY, |&b| b as f64 / h.divisor);
                (upper, n)
            })
            .collect();
        let sum = h.sum.load(Ordering::Relaxed) as f64 / h.divisor;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

fn latency_histogram() -> AtomicHistogram {
    AtomicHistogram::new(LATENCY_NS, 1e9)
}

/// Every metric of one node. Fields are clones sharing the registered metrics' atomics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    /// Cached children of `requests`: index `(route * METHODS + method) * STATUSES + status`.
    request_slots: Box<[OnceLock<Counter>]>,
    latency: Family<RouteLabels, AtomicHistogram, fn() -> AtomicHistogram>,
    latency_slots: Box<[OnceLock<AtomicHistogram>]>,

    proposals: [Counter; 4],
    /// Advances of this node's commit index since start (`raft_entries_committed`).
    pub(super) entries_committed: Counter,
    /// Log entries applied to the state machine since start, no-ops included (`raft_entries_applied`).
    pub(super) entries_applied: Counter,
    /// Time to write and fdatasync one WAL batch (`wal_fsync_duration_seconds`).
    pub(super) fsync_seconds: AtomicHistogram,
    /// Log entries made durable by one fsync (`wal_fsync_entries`).
    pub(super) fsync_entries: AtomicHistogram,
    /// Bytes written to the WAL since start (`wal_written_bytes`).
    pub(super) wal_written_bytes: Counter,
    /// Pre-vote rounds this node started (`raft_elections_started{phase="pre_vote"}`).
    pub(super) pre_votes_started: Counter,
    elections_started: Counter,
    elections_won: Counter,
    leader_changes: Counter,
    /// Ready cycles the Raft thread ran (`raft_ready_cycles`).
    pub(super) ready_cycles: Counter,
    /// Client requests that waited past their deadline on the Raft thread (`raft_request_timeouts`).
    pub(super) request_timeouts: Counter,
    /// Tokened writes proposed again after a leader change (`raft_write_retries`).
    pub(super) write_retries: Counter,
    term: Gauge,
    commit_index: Gauge,
    applied_index: Gauge,
    last_log_index: Gauge,
    is_leader: Gauge,
    has_leader: Gauge,

    wal_disk_bytes: Gauge,
    /// Free bytes on the data directory's file system for this process, as last measured by the Raft
    /// thread (at most every 100 ms).
    pub(super) storage_free_bytes: Gauge,
    /// 1 while the free space is below `--min-free-bytes` (a leader then refuses writes), else 0.
    pub(super) storage_low_space: Gauge,
    /// Client writes this node refused because the leader was below its free-space reserve.
    pub(super) writes_refused_low_space: Counter,
    wal_dir: PathBuf,
    /// When the WAL directory was last measured (scrape path only).
    disk_measured: Mutex<Option<Instant>>,
}

fn counter(r: &mut Registry, name: &str, help: &str) -> Counter {
    let c = Counter::default();
    r.register(name, help, c.clone());
    c
}

fn gauge(r: &mut Registry, name: &str, help: &str) -> Gauge {
    let g = Gauge::default();
    r.register(name, help, g.clone());
    g
}

fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Metrics {
    /// Registers every metric. `wal_dir` is measured for `nimbus_wal_disk_bytes`.
    pub fn new(wal_dir: PathBuf) -> Metrics {
        let mut r = Registry::with_prefix("nimbus");

        let requests = Family::<RequestLabels, Counter>::default();
        r.register(
            "http_requests",
            "HTTP requests answered, by route, method and status code",
            requests.clone(),
        );
        let latency: Family<RouteLabels, AtomicHistogram, fn() -> AtomicHistogram> =
            Family::new_with_constructor(latency_histogram);
        r.register(
            "http_request_duration_seconds",
            "Time from receiving an HTTP request to having written its response, by route",
            latency.clone(),
        );

        let proposal_family = Family::<KindLabels, Counter>::default();
        r.register(
            "raft_proposals",
            "Client commands proposed to Raft through this node, by where they went (local: appended here \
             as leader; forwarded: sent to the leader; no_leader: refused, no leader known; from_follower: \
             forwarded here by a follower while this node led)",
            proposal_family.clone(),
        );
        let proposals = ["local", "forwarded", "no_leader", "from_follower"]
            .map(|kind| proposal_family.get_or_create_owned(&KindLabels { kind }));

        let elections = Family::<PhaseLabels, Counter>::default();
        r.register(
            "raft_elections_started",
            "Elections this node started: pre_vote rounds (counted from the PreVote requests it sends) and \
             vote rounds (terms in which it became a candidate)",
            elections.clone(),
        );
        let pre_votes_started = elections.get_or_create_owned(&PhaseLabels { phase: "pre_vote" });
        let elections_started = elections.get_or_create_owned(&PhaseLabels { phase: "vote" });

        let fsync_seconds = AtomicHistogram::new(FSYNC_NS, 1e9);
        r.register(
            "wal_fsync_duration_seconds",
            "Time to write one batch to the WAL and fdatasync it; the count is the number of fsyncs",
            fsync_seconds.clone(),
        );
        let fsync_entries = AtomicHistogram::new(BATCH_ENTRIES, 1.0);
        r.register(
            "wal_fsync_entries",
            "Log entries made durable by one fsync (group commit batch size)",
            fsync_entries.clone(),
        );

        let routes = Route::ALL.len();
        Metrics {
            request_slots: (0..routes * METHODS.len() * STATUSES.len())
                .map(|_| OnceLock::new())
                .collect(),
            latency_slots: (0..routes).map(|_| OnceLock::new()).collect(),
            requests,
            latency,
            proposals,
            entries_committed: counter(
                &mut r,
                "raft_entries_committed",
                "Log entries this node learned are committed (advances of its commit index since start)",
            ),
            entries_applied: counter(
                &mut r,
                "raft_entries_applied",
                "Log entries applied to the state machine since start, no-ops included",
            ),
            fsync_seconds,
            fsync_entries,
            wal_written_bytes: counter(
                &mut r,
                "wal_written_bytes",
                "Bytes written to the WAL since start",
            ),
            pre_votes_started,
            elections_started,
            elections_won: counter(
                &mut r,
                "raft_elections_won",
                "Terms in which this node became leader",
            ),
            leader_changes: counter(
                &mut r,
                "raft_leader_changes",
                "Times the leader this node knows of became a different node (the first leader after \
                 start counts; intervals with no known leader are ignored)",
            ),
            ready_cycles: counter(
                &mut r,
                "raft_ready_cycles",
                "Ready cycles the Raft thread ran (persist, send, apply, answer)",
            ),
            request_timeouts: counter(
                &mut r,
                "raft_request_timeouts",
                "Client requests that waited past their deadline on the Raft thread (answered 504)",
            ),
            write_retries: counter(
                &mut r,
                "raft_write_retries",
                "Writes carrying an idempotency token proposed again after a leader change",
            ),
            term: gauge(&mut r, "raft_term", "This node's current Raft term"),
            commit_index: gauge(&mut r, "raft_commit_index", "This node's commit index"),
            applied_index: gauge(
                &mut r,
                "raft_applied_index",
                "Index of the last entry this node's state machine applied",
            ),
            last_log_index: gauge(
                &mut r,
                "raft_last_log_index",
                "Index of the last entry in this node's log",
            ),
            is_leader: gauge(&mut r, "raft_is_leader", "1 if this node is the leader, else 0"),
            has_leader: gauge(
                &mut r,
                "raft_has_leader",
                "1 if this node knows a leader (itself included), else 0",
            ),
            wal_disk_bytes: gauge(
                &mut r,
                "wal_disk_bytes",
                "Total length of the files in the WAL directory, measured at most once per second when \
                 scraped",
            ),
            storage_free_bytes: gauge(
                &mut r,
                "storage_free_bytes",
                "Bytes available to this process on the data directory's file system (statvfs f_bavail x \
                 f_frsize), measured by the Raft thread at most every 100 ms; -1 if not measured",
            ),
            storage_low_space: gauge(
                &mut r,
                "storage_low_space",
                "1 while the data directory's free space is below --min-free-bytes (as leader, this node \
                 then refuses new writes with 507), else 0",
            ),
            writes_refused_low_space: counter(
                &mut r,
                "storage_writes_refused",
                "Client writes answered 507 insufficient_storage by this node because the leader's data \
                 directory was below its free-space reserve",
            ),
            registry: r,
            wal_dir,
            disk_measured: Mutex::new(None),
        }
    }

    /// Counts one answered HTTP request.
    pub fn observe_request(&self, route: Route, method: &Method, status: u16, elapsed: Duration) {
        let (r, mi) = (route.index(), method_index(method));
        let labels = || RequestLabels {
            route: route.name(),
            method: METHODS[mi],
            status,
        };
        match STATUSES.iter().position(|&s| s == status) {
            Some(si) => {
                let slot = &self.request_slots[(r * METHODS.len() + mi) * STATUSES.len() + si];
                slot.get_or_init(|| self.requests.get_or_create_owned(&labels()))
                    .inc();
            }
            None => {
                self.requests.get_or_create(&labels()).inc();
            }
        }
        self.latency_slots[r]
            .get_or_init(|| {
                self.latency.get_or_create_owned(&RouteLabels {
                    route: route.name(),
                })
            })
            .observe_duration(elapsed);
    }

    /// Counts one proposal.
    pub fn proposal(&self, kind: ProposalKind) {
        self.proposals[kind as usize].inc();
    }

    /// Renders every metric in the Prometheus text format (measuring the WAL directory if it is due).
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        self.refresh_disk_bytes();
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    fn refresh_disk_bytes(&self) {
        let mut last = self
            .disk_measured
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if last.is_some_and(|t| t.elapsed() < DISK_REFRESH) {
            return;
        }
        *last = Some(Instant::now());
        match dir_bytes(&self.wal_dir) {
            Ok(bytes) => {
                self.wal_disk_bytes.set(gauge_value(bytes));
            }
            Err(e) => log::debug!("cannot measure {}: {e}", self.wal_dir.display()),
        }
    }
}

/// The total length of the regular files directly in `dir`. A file that vanishes meanwhile is skipped.
fn dir_bytes(dir: &std::path::Path) -> std::io::Result<u64> {
    let mut total = 0u64;
    for entry in std::fs::read_dir(dir)? {
        let Ok(entry) = entry else { continue };
        if let Ok(md) = entry.metadata() {
            if md.is_file() {
                total = total.saturating_add(md.len());
            }
        }
    }
    Ok(total)
}

/// What the Raft thread has already counted, so role and term changes are counted once. The core exposes
/// no events, so this derives them from its read-only state after every input:
/// - an election (vote phase) started when the node holds its own vote in a term not counted yet (a
///   candidate votes for itself, and the vote is part of the hard state);
/// - an election was won when the node is leader in a term not counted yet;
/// - the leader changed when the known leader is a node other than the last one known.
///
/// Pre-vote rounds leave no trace in the core's state (the term does not move), so they are counted from
/// the `PreVote` requests in a `Ready` instead (see `RaftLoop::process_ready`).
#[derive(Debug)]
pub(super) struct RaftWatch {
    candidate_term: Term,
    leader_term: Term,
    leader: Option<NodeId>,
    commit: Index,
}

impl RaftWatch {
    /// Starts from the recovered state: a vote recovered from the WAL is not a new election.
    pub(super) fn new(raft: &Raft) -> RaftWatch {
        RaftWatch {
            candidate_term: raft.term(),
            leader_term: raft.term(),
            leader: None,
            commit: raft.log().committed(),
        }
    }

    /// Counts elections started and won and leader changes. Call after every input that can change them.
    pub(super) fn observe_role(&mut self, raft: &Raft, m: &Metrics) {
        let term = raft.term();
        if term > self.candidate_term && raft.vote() == raft.id() {
            self.candidate_term = term;
            m.elections_started.inc();
        }
        if term > self.leader_term && raft.is_leader() {
            self.leader_term = term;
            m.elections_won.inc();
        }
        if let Some(l) = raft.leader() {
            if self.leader != Some(l) {
                self.leader = Some(l);
                m.leader_changes.inc();
            }
        }
    }

    /// Updates the index and role gauges and the commit counter. Call once per turn.
    pub(super) fn observe_state(&mut self, raft: &Raft, applied: Index, m: &Metrics) {
        let log = raft.log();
        let commit = log.committed();
        if commit > self.commit {
            m.entries_committed.inc_by(commit - self.commit);
            self.commit = commit;
        }
        m.term.set(gauge_value(raft.term()));
        m.commit_index.set(gauge_value(commit));
        m.applied_index.set(gauge_value(applied));
        m.last_log_index.set(gauge_value(log.last_index()));
        m.is_leader.set(i64::from(raft.is_leader()));
        m.has_leader.set(i64::from(raft.leader().is_some()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_labels_are_a_fixed_set() {
        let cases: &[(&str, Method, Route)] = &[
            ("/set?key=a&value=b", Method::Get, Route::Set),
            ("/set", Method::Delete, Route::Set),
            ("/get?key=a&relaxed=true", Method::Get, Route::Get),
            ("/delete?key=a", Method::Post, Route::Delete),
            ("/v1/kv/a/b%20c", Method::Get, Route::KvGet),
            ("/v1/kv/a?consistency=stale", Method::Get, Route::KvGet),
            ("/v1/kv/a", Method::Put, Route::KvPut),
            ("/v1/kv/a", Method::Delete, Route::KvDelete),
            ("/v1/kv/a", Method::Post, Route::Other),
            ("/v1/kv?prefix=a&limit=3", Method::Get, Route::KvList),
            ("/v1/kv/", Method::Get, Route::KvList),
            ("/v1/kv", Method::Put, Route::Other),
            ("/v1/kvx", Method::Get, Route::Other),
            ("/status", Method::Get, Route::Status),
            ("/health", Method::Get, Route::Health),
            ("/metrics", Method::Get, Route::Metrics),
            ("/metrics?x=1", Method::Post, Route::Metrics),
            ("/", Method::Get, Route::Other),
            ("", Method::Get, Route::Other),
            ("/set/../etc/passwd", Method::Get, Route::Other),
            ("/SET", Method::Get, Route::Other),
            ("?", Method::Get, Route::Other),
        ];
        for (url, method, want) in cases {
            assert_eq!(Route::of(url, method), *want, "{method} {url}");
        }
        let names: std::collections::BTreeSet<_> = Route::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), Route::ALL.len());
        for (i, r) in Route::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }

    #[test]
    fn unbounded_input_maps_to_bounded_series() {
        let m = Metrics::new(std::env::temp_dir().join("nimbus-metrics-test-missing-dir"));
        for i in 0..500 {
            let url = format!("/random/{i}?q={i}");
            m.observe_request(
                Route::of(&url, &Method::Get),
                &Method::Get,
                404,
                Duration::from_micros(i),
            );
        }
        m.observe_request(
            Route::Other,
            &Method::NonStandard("BREW".parse().unwrap()),
            418,
            Duration::ZERO,
        );
        let out = m.render().unwrap();
        let mut series: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("nimbus_http_requests_total{"))
            .collect();
        series.sort_unstable();
        assert_eq!(
            series,
            [
                "nimbus_http_requests_total{route=\"other\",method=\"GET\",status=\"404\"} 500",
                "nimbus_http_requests_total{route=\"other\",method=\"other\",status=\"418\"} 1",
            ],
            "{out}"
        );
        assert!(out.contains("nimbus_http_request_duration_seconds_count{route=\"other\"} 501"));
    }

    #[test]
    fn histogram_buckets_are_inclusive_and_cumulative() {
        let mut r = Registry::default();
        let h = AtomicHistogram::new(&[0, 1, 4], 1.0);
        r.register("batch", "test", h.clone());
        for v in [0, 1, 2, 4, 5, 100] {
            h.observe(v);
        }
        assert_eq!(h.count(), 6);
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &r).unwrap();
        for line in [
            "batch_bucket{le=\"0\"} 1",
            "batch_bucket{le=\"1\"} 2",
            "batch_bucket{le=\"4\"} 4",
            "batch_bucket{le=\"+Inf\"} 6",
            "batch_sum 112.0",
            "batch_count 6",
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
        }
    }

    #[test]
    fn durations_are_exported_in_seconds() {
        let mut r = Registry::default();
        let h = AtomicHistogram::new(LATENCY_NS, 1e9);
        r.register("lat_seconds", "test", h.clone());
        h.observe_duration(Duration::from_micros(100));
        h.observe_duration(Duration::from_millis(3));
        h.observe_duration(Duration::from_secs(60));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &r).unwrap();
        for line in [
            "lat_seconds_bucket{le=\"0.0001\"} 1",
            "lat_seconds_bucket{le=\"0.005\"} 2",
            "lat_seconds_bucket{le=\"5\"} 2",
            "lat_seconds_bucket{le=\"+Inf\"} 3",
            "lat_seconds_count 3",
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
        }
    }
}
