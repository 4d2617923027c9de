//! The HTTP API, served by a pool of tiny_http worker threads.
//!
//! Routes (the seed's, made correct):
//! - `GET|POST|PUT /set?key=K&value=V` → 200 `OK` once committed by a quorum and applied. A follower forwards
//!   the write to the leader and answers with the leader's outcome.
//! - `GET /get?key=K` → 200 with the raw value; linearizable on every node (read index). `relaxed=true`
//!   answers from the local state (may be stale). Missing key → 404.
//! - `GET|POST|DELETE /delete?key=K` → 200 `OK`, or 404 if the key did not exist.
//! - `GET /status` → JSON: role, term, leader, indexes, batching counters.
//! - `GET /metrics` → every [`Metrics`] value in the Prometheus text format 0.0.4, rendered on this worker.
//!
//! Every request, whatever its outcome, is counted by route, method and status, and its latency (from
//! `recv` to the response written) observed per route, after the response is sent; a scrape therefore does
//! not yet count itself.
//!
//! Errors are JSON `{"error":{"code":…,"message":…}}` with the status codes listed in [`super::api`]; 503s
//! carry `Retry-After: 1`. Each worker hands the request to the Raft thread with a one-shot reply channel and
//! waits at most the request timeout plus a margin.
//!
//! Limits: keys 1..=`max_key_bytes` (default 4 KiB), values up to `max_value_bytes` (default 1 MiB), URLs up
//! to 8 KiB plus three times the value size; anything larger is refused with 413 before it reaches the log.
//! Connections, request heads, bodies and their timing are bounded earlier, by [`super::http_guard`].

use super::api::{ApiError, ClientRequest, Consistency, ReadOk, ReadQuery, WriteOk};
use super::metrics::{Metrics, Route};
use crate::config::NodeConfig;
use crate::kv::{Command, Condition, MAX_TOKEN_BYTES};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::io::Cursor;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tiny_http::{Header, Method, Request, Response, Server};

/// A response with an in-memory body, as every route builds it.
pub(super) type HttpResponse = Response<Cursor<Vec<u8>>>;
/// Decoded query parameters: (name, value) pairs in URL order.
pub(super) type Params = [(String, Vec<u8>)];

/// Serves requests until the server is unblocked (shutdown).
pub fn worker(
    server: Arc<Server>,
    to_raft: Sender<ClientRequest>,
    cfg: Arc<NodeConfig>,
    metrics: Arc<Metrics>,
) {
    loop {
        let mut req = match server.recv() {
            Ok(r) => r,
            Err(e) => {
                log::debug!("http worker stopping: {e}");
                return;
            }
        };
        let started = Instant::now();
        let method = req.method().clone();
        let route = Route::of(req.url(), &method);
        let resp = handle(&mut req, &to_raft, &cfg, &metrics);
        let status = resp.status_code().0;
        if let Err(e) = req.respond(resp) {
            log::debug!("http: failed to send a response: {e}");
        }
        metrics.observe_request(route, &method, status, started.elapsed());
    }
}

fn handle(
    req: &mut Request,
    to_raft: &Sender<ClientRequest>,
    cfg: &NodeConfig,
    metrics: &Metrics,
) -> HttpResponse {
    let url = req.url().to_string();
    let url = url.as_str();
    let max_url = cfg.max_url_bytes();
    if url.len() > max_url {
        return error_response(&ApiError::TooLarge(format!(
            "URL of {} bytes exceeds the limit of {max_url}",
            url.len()
        )));
    }
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let params = match parse_query(query) {
        Ok(p) => p,
        Err(e) => return error_response(&ApiError::BadRequest(e)),
    };
    let method = req.method().clone();
    if path == "/v1/cluster" || path.starts_with("/v1/cluster/") {
        return super::admin::handle(req, path, to_raft, cfg)
            .unwrap_or_else(|e| error_response(&e));
    }
    if path == "/v1/kv" || path.starts_with("/v1/kv/") {
        return super::rest::handle(req, path, &params, to_raft, cfg)
            .unwrap_or_else(|e| error_response(&e));
    }
    let result = match (path, &method) {
        ("/set", Method::Get | Method::Post | Method::Put) => {
            idempotency_key(req).and_then(|t| set(&params, t, to_raft, cfg))
        }
        ("/get", Method::Get) => get(&params, to_raft, cfg),
        ("/delete", Method::Get | Method::Post | Method::Delete) => {
            idempotency_key(req).and_then(|t| delete(&params, t, to_raft, cfg))
        }
        ("/status", Method::Get) => status(to_raft, cfg),
        ("/health", Method::Get) => health(to_raft, cfg),
        ("/metrics", Method::Get) => render_metrics(metrics),
        ("/set" | "/get" | "/delete" | "/status" | "/health" | "/metrics", m) => Err(
            ApiError::MethodNotAllowed(format!("method {m} not allowed on {path}")),
        ),
        _ => Err(ApiError::NotFound(format!("no route {path}"))),
    };
    result.unwrap_or_else(|e| error_response(&e))
}

/// The value of the first query parameter called `name`, if any.
pub(super) fn param<'a>(params: &'a Params, name: &str) -> Option<&'a [u8]> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_slice())
}

fn key_param(params: &Params, cfg: &NodeConfig) -> Result<Vec<u8>, ApiError> {
    let key = param(params, "key")
        .ok_or_else(|| ApiError::BadRequest("missing query parameter \"key\"".into()))?;
    check_key(key, cfg)
}

/// Keys are 1..=`max_key_bytes` bytes.
pub(super) fn check_key(key: &[u8], cfg: &NodeConfig) -> Result<Vec<u8>, ApiError> {
    if key.is_empty() {
        return Err(ApiError::BadRequest("key must not be empty".into()));
    }
    if key.len() > cfg.max_key_bytes {
        return Err(ApiError::TooLarge(format!(
            "key of {} bytes exceeds the limit of {}",
            key.len(),
            cfg.max_key_bytes
        )));
    }
    Ok(key.to_vec())
}

fn set(
    params: &Params,
    token: Option<Vec<u8>>,
    to_raft: &Sender<ClientRequest>,
    cfg: &NodeConfig,
) -> Result<HttpResponse, ApiError> {
    let key = key_param(params, cfg)?;
    let value = param(params, "value")
        .ok_or_else(|| ApiError::BadRequest("missing query parameter \"value\"".into()))?;
    check_value_len(value.len(), cfg)?;
    let command = Command::Put {
        key,
        value: value.to_vec(),
        cond: Condition::Any,
    };
    let ok = write(command, token, to_raft, cfg)?;
    Ok(text_response(200, "OK\n").with_header(index_header(&ok)))
}

fn delete(
    params: &Params,
    token: Option<Vec<u8>>,
    to_raft: &Sender<ClientRequest>,
    cfg: &NodeConfig,
) -> Result<HttpResponse, ApiError> {
    let key = key_param(params, cfg)?;
    let ok = write(
        Command::Delete {
            key,
            cond: Condition::Any,
        },
        token,
        to_raft,
        cfg,
    )?;
    if !ok.found {
        return Err(ApiError::NotFound("no such key".into()));
    }
    Ok(text_response(200, "OK\n").with_header(index_header(&ok)))
}

fn get(
    params: &[(String, Vec<u8>)],
    to_raft: &Sender<ClientRequest>,
    cfg: &NodeConfig,
) -> Result<HttpResponse, ApiError> {
    let key = key_param(params, cfg)?;
    let relaxed = match param(params, "relaxed") {
        None => false,
        Some(b"true") | Some(b"1") => true,
        Some(b"false") | Some(b"0") => false,
        Some(v) => {
            return Err(ApiError::BadRequest(format!(
                "relaxed must be true or false, got {:?}",
                String::from_utf8_lossy(v)
            )))
        }
    };
    let consistency = if relaxed {
        Consistency::Stale
    } else {
        consistency_param(params)?
    };
    let mut ok = read(ReadQuery::Get(key), consistency, to_raft, cfg)?;
    let Some(value) = ok.value.take() else {
        return Err(ApiError::NotFound("no such key".into()));
    };
    let mut resp = Response::from_data(value)
        .with_header(header("Content-Type", "application/octet-stream"))
        .with_header(header("X-Raft-Index", &ok.applied_index.to_string()))
        .with_header(header("X-Raft-Term", &ok.term.to_string()))
        .with_header(header("ETag", &format!("\"{}\"", ok.modify_index)));
    if consistency == Consistency::Stale {
        resp = stale_headers(resp, &ok);
    }
    Ok(resp)
}

/// `consistency=linearizable|lease|stale` (default linearizable).
pub(super) fn consistency_param(params: &[(String, Vec<u8>)]) -> Result<Consistency, ApiError> {
    match param(params, "consistency") {
        None | Some(b"linearizable") => Ok(Consistency::Linearizable),
        Some(b"lease") => Ok(Consistency::Lease),
        Some(b"stale") => Ok(Consistency::Stale),
        Some(v) => Err(ApiError::BadRequest(format!(
            "consistency must be linearizable, lease or stale, got {:?}",
            String::from_utf8_lossy(v)
        ))),
    }
}

/// What a stale answer says about its staleness: the index this node had applied, and how long ago it
/// last heard from the leader (`none` when it knows no leader).
pub(super) fn stale_headers(resp: HttpResponse, ok: &ReadOk) -> HttpResponse {
    let contact = ok
        .leader_contact
        .map(|d| d.as_millis().to_string())
        .unwrap_or_else(|| "none".into());
    resp.with_header(header(
        "X-Nimbus-Applied-Index",
        &ok.applied_index.to_string(),
    ))
    .with_header(header("X-Nimbus-Last-Contact-Ms", &contact))
}

fn status(to_raft: &Sender<ClientRequest>, cfg: &NodeConfig) -> Result<HttpResponse, ApiError> {
    let (reply, rx) = crossbeam_channel::bounded(1);
    submit(to_raft, ClientRequest::Status { reply })?;
    let v = wait(rx, cfg)?;
    Ok(json_response(200, &v))
}

/// The Prometheus text exposition of every metric, rendered here (not on the Raft thread).
fn render_metrics(metrics: &Metrics) -> Result<HttpResponse, ApiError> {
    let body = metrics
        .render()
        .map_err(|e| ApiError::Internal(format!("cannot render the metrics: {e}")))?;
    Ok(Response::from_data(body.into_bytes())
        .with_header(header("Content-Type", super::metrics::CONTENT_TYPE)))
}

/// 200 when this node knows a leader and has applied everything it knows to be committed (within 1,000
/// entries); 503 otherwise. For load balancers.
fn health(to_raft: &Sender<ClientRequest>, cfg: &NodeConfig) -> Result<HttpResponse, ApiError> {
    let (reply, rx) = crossbeam_channel::bounded(1);
    submit(to_raft, ClientRequest::Status { reply })?;
    let s = wait(rx, cfg)?;
    let leader = !s["leader"].is_null();
    let lag = s["commit_index"].as_u64().unwrap_or(0)
        - s["applied_index"]
            .as_u64()
            .unwrap_or(0)
            .min(s["commit_index"].as_u64().unwrap_or(0));
    let healthy = leader && lag <= 1000;
    let body = serde_json::json!({"healthy": healthy, "leader": s["leader"], "apply_lag": lag});
    let mut r = json_response(if healthy { 200 } else { 503 }, &body);
    if !healthy {
        r = r.with_header(header("Retry-After", "1"));
    }
    Ok(r)
}

/// Values are at most `max_value_bytes`.
pub(super) fn check_value_len(len: usize, cfg: &NodeConfig) -> Result<(), ApiError> {
    if len > cfg.max_value_bytes {
        return Err(ApiError::TooLarge(format!(
            "value of {len} bytes exceeds the limit of {}",
            cfg.max_value_bytes
        )));
    }
    Ok(())
}

/// Runs a read on the Raft thread and waits for the answer.
pub(super) fn read(
    query: ReadQuery,
    consistency: Consistency,
    to_raft: &Sender<ClientRequest>,
    cfg: &NodeConfig,
) -> Result<ReadOk, ApiError> {
    let (reply, rx) = crossbeam_channel::bounded(1);
    submit(
        to_raft,
        ClientRequest::Read {
            query,
            consistency,
            reply,
        },
    )?;
    wait(rx, cfg)?
}

/// The `Idempotency-Key` header: 1 to 128 visible ASCII characters.
pub(super) fn idempotency_key(req: &Request) -> Result<Option<Vec<u8>>, ApiError> {
    let Some(h) = req
        .headers()
        .iter()
        .find(|h| h.field.equiv("Idempotency-Key"))
    else {
        return Ok(None);
    };
    let v = h.value.as_str().trim();
    if v.is_empty() || v.len() > MAX_TOKEN_BYTES || !v.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::BadRequest(format!(
            "Idempotency-Key must be 1 to {MAX_TOKEN_BYTES} visible ASCII characters"
        )));
    }
    Ok(Some(v.as_bytes().to_vec()))
}

/// Submits a write to the Raft thread and waits for its outcome (at most the request timeout plus a second).
pub(super) fn write(
    command: Command,
    token: Option<Vec<u8>>,
    to_raft: &Sender<ClientRequest>,
    cfg: &NodeConfig,
) -> Result<WriteOk, ApiError> {
    let (reply, rx) = crossbeam_channel::bounded(1);
    submit(
        to_raft,
        ClientRequest::Write {
            command,
            token,
            reply,
        },
    )?;
    wait(rx, cfg)?
}

/// Queues a request for the Raft thread without blocking: `Busy` when the queue is full, `Internal` when the
/// node is shutting down.
pub(super) fn submit(to_raft: &Sender<ClientRequest>, req: ClientRequest) -> Result<(), ApiError> {
    match to_raft.try_send(req) {
        Ok(()) => Ok(()),
        Err(TrySendError::Full(_)) => Err(ApiError::Busy),
        Err(TrySendError::Disconnected(_)) => {
            Err(ApiError::Internal("the node is shutting down".into()))
        }
    }
}

/// Waits for the Raft thread's answer. It enforces the request timeout itself; the margin here only covers
/// a Raft thread that is stuck (e.g. on a very slow disk).
pub(super) fn wait<T>(rx: Receiver<T>, cfg: &NodeConfig) -> Result<T, ApiError> {
    rx.recv_timeout(cfg.request_timeout + Duration::from_secs(1))
        .map_err(|e| match e {
            crossbeam_channel::RecvTimeoutError::Timeout => ApiError::Timeout,
            crossbeam_channel::RecvTimeoutError::Disconnected => {
                ApiError::Internal("the node is shutting down".into())
            }
        })
}

/// A header; panics if `name` or `value` is not a valid header (callers pass fixed names).
pub(super) fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("static header names are valid")
}

fn index_header(ok: &WriteOk) -> Header {
    header("X-Raft-Index", &ok.index.to_string())
}

fn text_response(status: u16, body: &str) -> HttpResponse {
    Response::from_data(body.as_bytes().to_vec())
        .with_status_code(status)
        .with_header(header("Content-Type", "text/plain; charset=utf-8"))
}

/// A JSON response with this status (body: `v` and a newline; `Content-Type: application/json`).
pub(super) fn json_response(status: u16, v: &serde_json::Value) -> HttpResponse {
    let mut body = serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec());
    body.push(b'\n');
    Response::from_data(body)
        .with_status_code(status)
        .with_header(header("Content-Type", "application/json"))
}

/// The error's JSON response with its status, plus `Retry-After: 1` on 503 and `WWW-Authenticate` on 401.
pub(super) fn error_response(e: &ApiError) -> HttpResponse {
    let (status, _) = e.status_and_code();
    let mut r = json_response(status, &e.to_json());
    if status == 503 {
        r = r.with_header(header("Retry-After", "1"));
    }
    if status == 401 {
        r = r.with_header(header("WWW-Authenticate", "Bearer realm=\"nimbus-admin\""));
    }
    r
}

/// Parses `a=b&c=d`, percent-decoding names and values (`+` is a space, as in HTML forms and Go's
/// `url.ParseQuery`). A malformed escape is an error.
pub fn parse_query(q: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut out = Vec::new();
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = String::from_utf8(percent_decode(k)?)
            .map_err(|_| format!("query parameter name {k:?} is not UTF-8"))?;
        out.push((k, percent_decode(v)?));
    }
    Ok(out)
}

/// Percent-decodes `s` (`+` is a space); a `%` not followed by two hex digits is an error.
pub(super) fn percent_decode(s: &str) -> Result<Vec<u8>, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                // Two hex digits exactly (`u8::from_str_radix` alone would also take "+f").
                let digit = |k: usize| b.get(k).and_then(|&c| (c as char).to_digit(16));
                let (Some(hi), Some(lo)) = (digit(i + 1), digit(i + 2)) else {
                    return Err(format!("malformed percent-escape at byte {i} of {s:?}"));
                };
                out.push((hi * 16 + lo) as u8);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let q = parse_query("key=a%20b&value=x+y%2Bz&empty=&flag").unwrap();
        assert_eq!(q[0], ("key".into(), b"a b".to_vec()));
        assert_eq!(q[1], ("value".into(), b"x y+z".to_vec()));
        assert_eq!(q[2], ("empty".into(), vec![]));
        assert_eq!(q[3], ("flag".into(), vec![]));
        assert_eq!(parse_query("k=%ff").unwrap()[0].1, vec![0xff]);
        for bad in ["k=%", "k=%4", "k=%zz", "%ff=1"] {
            assert!(parse_query(bad).is_err(), "{bad}");
        }
        // Regression (found by `tests/fuzz.rs`): a sign is not a hex digit; "%+a" used to decode to 0x0a.
        for bad in ["k=%+a", "k=%+1", "k=%-1", "k=% 1", "k=%1+"] {
            assert!(parse_query(bad).is_err(), "{bad}");
        }
    }

    /// Property tests of what the REST routes do with a path and the key checks; the query parser's
    /// properties are in `tests/fuzz.rs`. Seeded; `FUZZ_CASES` raises the case count.
    mod properties {
        use super::super::{check_key, percent_decode};
        use crate::config::NodeConfig;
        use crate::http_client::encode_query_value;
        use crate::server::api::ApiError;
        use proptest::prelude::*;
        use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

        fn run<S: Strategy>(
            name: &str,
            cases: u32,
            s: S,
            test: impl Fn(S::Value) -> Result<(), TestCaseError>,
        ) where
            S::Value: std::fmt::Debug,
        {
            let cases = std::env::var("FUZZ_CASES")
                .ok()
                .and_then(|c| c.parse().ok())
                .unwrap_or(cases);
            let mut seed = [7u8; 32];
            seed[..name.len().min(32)].copy_from_slice(&name.as_bytes()[..name.len().min(32)]);
            let config = Config {
                cases,
                failure_persistence: None,
                ..Config::default()
            };
            let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed);
            if let Err(e) = TestRunner::new_with_rng(config, rng).run(&s, test) {
                panic!("property {name} failed: {e}");
            }
        }

        fn config(max_key_bytes: usize) -> NodeConfig {
            let mut c = NodeConfig::new(
                1,
                [(1, ":1".to_string())].into(),
                "127.0.0.1:1".parse().unwrap(),
                "unused".into(),
            );
            c.max_key_bytes = max_key_bytes;
            c
        }

        #[test]
        fn rest_keys_round_trip_through_the_path_and_are_checked() {
            let key = prop::collection::vec(any::<u8>(), 0..48);
            run("rest_key", 3000, (key, 1..40usize), |(key, max)| {
                // What `GET /v1/kv/{key}` does with the rest of the path.
                let path = format!("/v1/kv/{}", encode_query_value(&key));
                let decoded =
                    percent_decode(&path["/v1/kv/".len()..]).map_err(TestCaseError::fail)?;
                prop_assert_eq!(&decoded, &key);
                match check_key(&decoded, &config(max)) {
                    Ok(k) => prop_assert!(!k.is_empty() && k.len() <= max && k == key),
                    Err(ApiError::BadRequest(_)) => prop_assert!(key.is_empty()),
                    Err(ApiError::TooLarge(_)) => prop_assert!(key.len() > max),
                    Err(e) => prop_assert!(false, "unexpected {:?}", e),
                }
                Ok(())
            });
        }

        #[test]
        fn percent_decoding_takes_exactly_two_hex_digits() {
            run("percent_decode", 5000, any::<String>(), |s| {
                let _ = percent_decode(&s);
                Ok(())
            });
            let s = prop::string::string_regex(
                "([%+/a-fA-F0-9gz\u{e9}&= -]|%[0-9a-f+ -][0-9A-F+]){0,12}",
            )
            .unwrap();
            run("percent_model", 5000, s, |s| {
                let b = s.as_bytes();
                let mut model = Some(Vec::new());
                let mut i = 0;
                while let (Some(out), Some(&c)) = (model.as_mut(), b.get(i)) {
                    match c {
                        b'+' => out.push(b' '),
                        b'%' => match (b.get(i + 1), b.get(i + 2)) {
                            (Some(h), Some(l))
                                if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() =>
                            {
                                let v = |x: &u8| (*x as char).to_digit(16).unwrap() as u8;
                                out.push(v(h) * 16 + v(l));
                                i += 2;
                            }
                            _ => model = None,
                        },
                        c => out.push(c),
                    }
                    i += 1;
                }
                prop_assert_eq!(percent_decode(&s).ok(), model);
                Ok(())
            });
        }
    }
}
