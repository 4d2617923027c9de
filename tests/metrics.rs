//! `GET /metrics` end to end: a real 3-node cluster takes writes and reads on the leader and on a follower,
//! then both are scraped and the exposition is parsed and checked against what was sent and `/status`.
//!
//! The server counts a request after its response is written, so a scrape sent right after an answer may
//! miss that request for a moment: every check polls with a deadline instead of sleeping.

mod common;

use common::{poll, TestCluster};
use std::collections::BTreeMap;
use std::time::Duration;

const ELECTION: Duration = Duration::from_secs(20);
const SETTLE: Duration = Duration::from_secs(10);

const ROUTES: [&str; 11] = [
    "set",
    "get",
    "delete",
    "kv_get",
    "kv_put",
    "kv_delete",
    "kv_list",
    "status",
    "health",
    "metrics",
    "other",
];

/// One sample line: `name{label="value",...} value`.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

type Buckets = Vec<(f64, f64)>;

/// A scrape, parsed. Panics (failing the test) on any line that is not valid text exposition format.
#[derive(Debug)]
struct Scrape {
    samples: Vec<Sample>,
    types: BTreeMap<String, String>,
}

fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    // `s` starts just after `{`; returns the labels and the text after `}`.
    let mut labels = BTreeMap::new();
    let mut rest = s;
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = rest.find('=').ok_or("label without '='")?;
        let key = &rest[..eq];
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("bad label name {key:?}"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value".into()),
            }
        };
        if labels.insert(key.to_string(), value).is_some() {
            return Err(format!("duplicate label {key}"));
        }
        rest = &rest[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

fn parse(text: &str) -> Result<Scrape, String> {
    let mut samples = Vec::new();
    let mut types = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let err = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(c) = line.strip_prefix("# ") {
            let mut parts = c.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("TYPE"), Some(name), Some(t)) => {
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&t) {
                        return Err(err(format!("unknown type {t}")));
                    }
                    if types.insert(name.to_string(), t.to_string()).is_some() {
                        return Err(err("a second TYPE line".into()));
                    }
                }
                (Some("HELP"), Some(_), Some(_)) => {}
                _ => return Err(err("malformed comment".into())),
            }
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| err("no value".into()))?;
        let name = &line[..name_end];
        if name.is_empty()
            || name.starts_with(|c: char| c.is_ascii_digit())
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        {
            return Err(err(format!("bad metric name {name:?}")));
        }
        let (labels, rest) = match line[name_end..].strip_prefix('{') {
            Some(l) => parse_labels(l).map_err(err)?,
            None => (BTreeMap::new(), &line[name_end..]),
        };
        let value = rest
            .strip_prefix(' ')
            .ok_or_else(|| err("no space before the value".into()))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .map_err(|e| err(format!("bad value {v:?}: {e}")))?,
        };
        // Every sample belongs to a family declared before it.
        let family = ["_bucket", "_sum", "_count", "_total"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| types.contains_key(*f)))
            .unwrap_or(name);
        if !types.contains_key(family) && !types.contains_key(name) {
            return Err(err(format!("no TYPE line before {name}")));
        }
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Ok(Scrape { samples, types })
}

impl Scrape {
    /// The sum of the samples named `name` whose labels include all of `want`.
    fn sum(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        self.matching(name, want).map(|s| s.value).sum()
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        want: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && want
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The one sample named `name` with no labels.
    fn value(&self, name: &str) -> f64 {
        let found: Vec<_> = self.matching(name, &[]).collect();
        assert_eq!(found.len(), 1, "{name}: {found:?}");
        found[0].value
    }

    /// Histogram rules: cumulative buckets never decrease, and `+Inf` equals `_count`.
    fn check_histogram(&self, name: &str) {
        assert_eq!(self.types.get(name).map(String::as_str), Some("histogram"));
        // Labels other than `le` → (upper bound, cumulative count) in exposition order.
        let mut series: BTreeMap<Vec<(String, String)>, Buckets> = BTreeMap::new();
        for s in self.matching(&format!("{name}_bucket"), &[]) {
            let le = s.labels["le"].as_str();
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            let key: Vec<_> = s
                .labels
                .iter()
                .filter(|(k, _)| *k != "le")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            series.entry(key).or_default().push((le, s.value));
        }
        assert!(!series.is_empty(), "{name} has no buckets");
        for (labels, buckets) in series {
            assert!(
                buckets
                    .windows(2)
                    .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
                "{name}{labels:?}: {buckets:?}"
            );
            let want: Vec<(&str, &str)> = labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let last = buckets.last().unwrap();
            assert_eq!(last.0, f64::INFINITY);
            assert_eq!(last.1, self.sum(&format!("{name}_count"), &want));
        }
    }
}

fn scrape(c: &TestCluster, i: usize) -> Scrape {
    let r = c.client(i).get("/metrics").expect("scrape");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    parse(&r.text()).unwrap_or_else(|e| panic!("node {i}: {e}\n{}", r.text()))
}

/// What this test sent to one node: (route, method, status) → count.
type Sent = BTreeMap<(&'static str, &'static str, u16), u64>;

fn send(
    c: &TestCluster,
    i: usize,
    sent: &mut Sent,
    route: &'static str,
    method: &'static str,
    path: &str,
    body: &[u8],
) -> u16 {
    let r = c
        .client(i)
        .request(method, path, &[], body)
        .expect("request");
    *sent.entry((route, method, r.status)).or_default() += 1;
    r.status
}

#[test]
fn metrics_reflect_requests_and_raft_activity() {
    let mut c = TestCluster::start(3);
    let leader = c.wait_leader(ELECTION);
    let follower = (leader + 1) % 3;
    let mut sent: [Sent; 3] = Default::default();

    for (node, writes) in [(leader, 5), (follower, 3)] {
        let s = &mut sent[node];
        for k in 0..writes {
            let path = format!("/set?key=n{node}-{k}&value=v{k}");
            assert_eq!(send(&c, node, s, "set", "GET", &path, b""), 200);
            let path = format!("/v1/kv/n{node}/{k}");
            assert_eq!(send(&c, node, s, "kv_put", "PUT", &path, b"x"), 200);
        }
        let path = format!("/get?key=n{node}-0");
        assert_eq!(send(&c, node, s, "get", "GET", &path, b""), 200);
        assert_eq!(send(&c, node, s, "get", "GET", "/get?key=absent", b""), 404);
        let path = format!("/v1/kv/n{node}/0");
        assert_eq!(send(&c, node, s, "kv_get", "GET", &path, b""), 200);
        let path = format!("/v1/kv?prefix=n{node}/");
        assert_eq!(send(&c, node, s, "kv_list", "GET", &path, b""), 200);
        let path = format!("/v1/kv/n{node}/absent");
        assert_eq!(send(&c, node, s, "kv_delete", "DELETE", &path, b""), 404);
        assert_eq!(send(&c, node, s, "status", "POST", "/status", b""), 405);
        // Unknown paths are counted, but never under their own name.
        let path = format!("/no/such/route/{node}?x=1");
        assert_eq!(send(&c, node, s, "other", "GET", &path, b""), 404);
        assert_eq!(send(&c, node, s, "other", "POST", "/v1/kv/k", b""), 405);
    }

    // Every request shows up under its route, method and status (counted once its answer is written).
    for node in [leader, follower] {
        let m = poll("request counters", SETTLE, || {
            let m = scrape(&c, node);
            sent[node]
                .iter()
                .all(|(&(route, method, status), &n)| {
                    let status = status.to_string();
                    m.sum(
                        "nimbus_http_requests_total",
                        &[("route", route), ("method", method), ("status", &status)],
                    ) >= n as f64
                })
                .then_some(m)
        });
        for s in m.matching("nimbus_http_requests_total", &[]) {
            let route = s.labels["route"].as_str();
            assert!(ROUTES.contains(&route), "route label {route:?}");
            assert!(s.labels["status"].parse::<u16>().is_ok(), "{s:?}");
        }
        for route in ["set", "kv_put", "get", "other"] {
            let n: u64 = sent[node]
                .iter()
                .filter(|((r, _, _), _)| *r == route)
                .map(|(_, n)| n)
                .sum();
            let count = m.sum(
                "nimbus_http_request_duration_seconds_count",
                &[("route", route)],
            );
            assert!(count >= n as f64, "node {node} {route}: {count} < {n}");
        }
        m.check_histogram("nimbus_http_request_duration_seconds");
        m.check_histogram("nimbus_wal_fsync_duration_seconds");
        m.check_histogram("nimbus_wal_fsync_entries");
        assert!(m.value("nimbus_wal_fsync_duration_seconds_count") > 0.0);
        assert!(m.value("nimbus_wal_fsync_entries_count") > 0.0);
        assert!(m.value("nimbus_wal_disk_bytes") > 0.0);
        assert!(m.value("nimbus_wal_written_bytes_total") > 0.0);
        assert!(m.value("nimbus_raft_entries_applied_total") > 0.0);
        assert!(m.value("nimbus_raft_has_leader") == 1.0);
        assert!(m.value("nimbus_raft_leader_changes_total") >= 1.0);
    }

    let lm = scrape(&c, leader);
    let fm = scrape(&c, follower);
    // 10 writes were sent to the leader, 6 to the follower, which forwarded them.
    assert!(lm.sum("nimbus_raft_proposals_total", &[("kind", "local")]) >= 10.0);
    assert!(lm.sum("nimbus_raft_proposals_total", &[("kind", "from_follower")]) >= 6.0);
    assert!(fm.sum("nimbus_raft_proposals_total", &[("kind", "forwarded")]) >= 6.0);
    assert_eq!(
        fm.sum("nimbus_raft_proposals_total", &[("kind", "local")]),
        0.0
    );
    // 16 writes plus the leader's no-op.
    assert!(lm.value("nimbus_raft_entries_committed_total") >= 17.0);
    assert!(lm.value("nimbus_wal_fsync_entries_sum") >= 17.0);
    assert_eq!(lm.value("nimbus_raft_is_leader"), 1.0);
    assert_eq!(fm.value("nimbus_raft_is_leader"), 0.0);

    // The gauges agree with /status (polled: an election in between would move the term).
    for node in 0..3 {
        poll("gauges matching /status", SETTLE, || {
            let before = c.status(node)?;
            let m = scrape(&c, node);
            let after = c.status(node)?;
            (before["term"] == after["term"]
                && before["commit_index"] == after["commit_index"]
                && before["applied_index"] == after["applied_index"]
                && before["last_index"] == after["last_index"])
                .then_some(())?;
            let term = after["term"].as_f64()?;
            assert_eq!(m.value("nimbus_raft_term"), term, "node {node}");
            assert_eq!(
                m.value("nimbus_raft_commit_index"),
                after["commit_index"].as_f64()?
            );
            assert_eq!(
                m.value("nimbus_raft_applied_index"),
                after["applied_index"].as_f64()?
            );
            assert_eq!(
                m.value("nimbus_raft_last_log_index"),
                after["last_index"].as_f64()?
            );
            Some(())
        });
    }

    // Somebody won an election, and someone started one.
    let all: Vec<Scrape> = (0..3).map(|i| scrape(&c, i)).collect();
    let won: f64 = all
        .iter()
        .map(|m| m.value("nimbus_raft_elections_won_total"))
        .sum();
    assert!(won >= 1.0, "elections won: {won}");
    let started: f64 = all
        .iter()
        .map(|m| m.sum("nimbus_raft_elections_started_total", &[("phase", "vote")]))
        .sum();
    assert!(started >= won, "started {started} < won {won}");
    assert!(
        all[leader].sum(
            "nimbus_raft_elections_started_total",
            &[("phase", "pre_vote")]
        ) >= 1.0,
        "pre-vote is on by default: the leader pre-voted first"
    );
    c.check_alive();
}

#[test]
fn parser_rejects_malformed_expositions() {
    let good = "# HELP a_total x.\n# TYPE a_total counter\na_total{r=\"x\\\"y\",s=\"2\"} 3\n";
    let m = parse(good).unwrap();
    assert_eq!(m.samples[0].labels["r"], "x\"y");
    assert_eq!(m.sum("a_total", &[("s", "2")]), 3.0);
    for bad in [
        "a 1\n",
        "# TYPE a counter\na{r=x} 1\n",
        "# TYPE a counter\na{r=\"x} 1\n",
        "# TYPE a counter\na 1 2 3\n",
        "# TYPE a counter\na\n",
        "# TYPE a widget\na 1\n",
        "# TYPE a counter\n# TYPE a counter\na 1\n",
        "# TYPE a counter\n1a 1\n",
    ] {
        assert!(parse(bad).is_err(), "accepted {bad:?}");
    }
}
