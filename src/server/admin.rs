//! The cluster administration routes (`docs/operations.md`):
//!
//! - `GET /v1/cluster`: members (id, Raft and HTTP address, voter or learner, match index on the leader),
//!   the leader, whether a change is under way. Any node answers from its own view.
//! - `POST /v1/cluster/members` with `{"id", "raft_addr", "http_addr", "auto_promote"}`: adds a learner
//!   (`auto_promote`, default false: the leader promotes it once it has caught up).
//! - `POST /v1/cluster/members/{id}/promote`, `DELETE /v1/cluster/members/{id}`.
//! - `POST /v1/cluster/leader` with `{"id": N}`: leadership transfer.
//!
//! Rules: with an admin token (`--admin-token-file` / `NIMBUS_ADMIN_TOKEN`) every route but `GET` needs
//! `Authorization: Bearer <token>` (compared in constant time), else `401 unauthorized` before the body is
//! read; a forwarded request carries the client's `Authorization` header and the leader checks it again.
//! Changes go to the leader; a follower forwards the request once to the leader's HTTP address
//! (marked with `X-Nimbus-Forwarded`, so a request is never forwarded twice) and relays its answer. A change
//! is answered once its configuration entry is applied. Bodies are capped at 64 KiB; ids must be positive;
//! addresses are checked like `--cluster`'s.

use super::api::{ApiError, ClientRequest};
use super::cluster::Addrs;
use super::http::{header, json_response, submit, wait, HttpResponse};
use crate::config::{check_addr, NodeConfig};
use crate::http_client::HttpClient;
use crate::raft::{MembershipChange, NodeId};
use crossbeam_channel::Sender;
use serde::Deserialize;
use std::io::Read;
use std::time::Duration;
use tiny_http::{Method, Request, Response};

const MAX_BODY: u64 = 64 << 10;
const FORWARDED: &str = "X-Nimbus-Forwarded";

#[derive(Deserialize)]
struct NewMember {
    id: NodeId,
    raft_addr: String,
    http_addr: Option<String>,
    #[serde(default)]
    auto_promote: bool,
}

#[derive(Deserialize)]
struct Target {
    id: NodeId,
}

/// Serves one `/v1/cluster…` request (`path` is the URL path); checks the admin token first on every method
/// but `GET` and `HEAD`.
pub(super) fn handle(
    req: &mut Request,
    path: &str,
    to_raft: &Sender<ClientRequest>,
    cfg: &NodeConfig,
) -> Result<HttpResponse, ApiError> {
    let method = req.method().clone();
    if method != Method::Get && method != Method::Head {
        authorize(req, cfg)?;
    }
    let rest = path.strip_prefix("/v1/cluster").unwrap_or("");
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    match (segments.as_slice(), &method) {
        ([], Method::Get) => {
            let (reply, rx) = crossbeam_channel::bounded(1);
            submit(to_raft, ClientRequest::Cluster { reply })?;
            Ok(json_response(200, &wait(rx, cfg)?))
        }
        (["members"], Method::Post) => {
            let body = read_body(req)?;
            let m: NewMember = serde_json::from_slice(&body).map_err(|e| {
                ApiError::BadRequest(format!(
                    "expected {{\"id\": N, \"raft_addr\": \"host:port\", \"http_addr\": \"host:port\"}}: {e}"
                ))
            })?;
            if m.id == 0 {
                return Err(ApiError::BadRequest("member ids are positive".into()));
            }
            check_addr(&m.raft_addr).map_err(ApiError::BadRequest)?;
            if let Some(h) = &m.http_addr {
                check_addr(h).map_err(ApiError::BadRequest)?;
            }
            let addrs = Addrs {
                raft: m.raft_addr,
                http: m.http_addr,
            };
            change(
                req,
                &body,
                MembershipChange::AddLearner(m.id),
                Some(addrs),
                m.auto_promote,
                to_raft,
                cfg,
            )
        }
        (["members", id, "promote"], Method::Post) => {
            let id = parse_id(id)?;
            change(
                req,
                &[],
                MembershipChange::Promote(id),
                None,
                false,
                to_raft,
                cfg,
            )
        }
        (["members", id], Method::Delete) => {
            let id = parse_id(id)?;
            change(
                req,
                &[],
                MembershipChange::Remove(id),
                None,
                false,
                to_raft,
                cfg,
            )
        }
        (["leader"], Method::Post) => {
            let body = read_body(req)?;
            let t: Target = serde_json::from_slice(&body)
                .map_err(|e| ApiError::BadRequest(format!("expected {{\"id\": N}}: {e}")))?;
            let (reply, rx) = crossbeam_channel::bounded(1);
            submit(
                to_raft,
                ClientRequest::Transfer {
                    target: t.id,
                    reply,
                },
            )?;
            match wait(rx, cfg)? {
                Ok(()) => Ok(json_response(
                    200,
                    &serde_json::json!({"transferring_to": t.id}),
                )),
                Err(e) => forward_or(req, &body, e),
            }
        }
        ([], _)
        | (["members"], _)
        | (["members", _], _)
        | (["members", _, "promote"], _)
        | (["leader"], _) => Err(ApiError::MethodNotAllowed(format!(
            "method {method} not allowed on {path}"
        ))),
        _ => Err(ApiError::NotFound(format!("no route {path}"))),
    }
}

/// With an admin token configured, the request must present it (`Authorization: Bearer <token>`).
fn authorize(req: &Request, cfg: &NodeConfig) -> Result<(), ApiError> {
    let Some(token) = &cfg.admin_token else {
        return Ok(());
    };
    let presented = req
        .headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .map(|h| h.value.as_str());
    match presented {
        Some(v) if token.accepts(v) => Ok(()),
        Some(_) => Err(ApiError::Unauthorized(
            "wrong admin token: this route needs \"Authorization: Bearer <token>\" with the token of \
             --admin-token-file / NIMBUS_ADMIN_TOKEN; nothing changed"
                .into(),
        )),
        None => Err(ApiError::Unauthorized(
            "this route needs the admin token: send \"Authorization: Bearer <token>\" (the token of \
             --admin-token-file / NIMBUS_ADMIN_TOKEN); nothing changed"
                .into(),
        )),
    }
}

fn change(
    req: &Request,
    body: &[u8],
    change: MembershipChange,
    addrs: Option<Addrs>,
    auto_promote: bool,
    to_raft: &Sender<ClientRequest>,
    cfg: &NodeConfig,
) -> Result<HttpResponse, ApiError> {
    let (reply, rx) = crossbeam_channel::bounded(1);
    submit(
        to_raft,
        ClientRequest::Membership {
            change,
            addrs,
            auto_promote,
            reply,
        },
    )?;
    match wait(rx, cfg)? {
        Ok(ok) => Ok(json_response(200, &serde_json::json!({"index": ok.index}))),
        Err(e) => forward_or(req, body, e),
    }
}

/// On `not_leader` with the leader's HTTP address known, forwards the request there once.
fn forward_or(req: &Request, body: &[u8], e: ApiError) -> Result<HttpResponse, ApiError> {
    let ApiError::NotLeader {
        leader_http: Some(addr),
        ..
    } = &e
    else {
        return Err(e);
    };
    if req.headers().iter().any(|h| h.field.equiv(FORWARDED)) {
        return Err(e);
    }
    let Ok(addr) = addr.parse() else {
        return Err(e);
    };
    let mut client = HttpClient::new(addr, Duration::from_secs(10));
    let method = req.method().to_string();
    // The client's credentials go along: the leader checks the admin token itself.
    let auth = req
        .headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .map(|h| h.value.to_string());
    let mut headers = vec![(FORWARDED, "1")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    let r = client
        .request(&method, req.url(), &headers, body)
        .map_err(|io| ApiError::Internal(format!("forwarding to the leader at {addr}: {io}")))?;
    let ct = r.header("content-type").map(str::to_string);
    let mut resp = Response::from_data(r.body).with_status_code(r.status);
    if let Some(ct) = ct {
        resp = resp.with_header(header("Content-Type", &ct));
    }
    Ok(resp)
}

fn parse_id(s: &str) -> Result<NodeId, ApiError> {
    s.parse::<NodeId>()
        .ok()
        .filter(|&id| id > 0)
        .ok_or_else(|| {
            ApiError::BadRequest(format!("member id must be a positive integer, got {s:?}"))
        })
}

fn read_body(req: &mut Request) -> Result<Vec<u8>, ApiError> {
    let mut body = Vec::new();
    req.as_reader()
        .take(MAX_BODY + 1)
        .read_to_end(&mut body)
        .map_err(|e| ApiError::BadRequest(format!("cannot read the body: {e}")))?;
    if body.len() as u64 > MAX_BODY {
        return Err(ApiError::TooLarge(format!("body over {MAX_BODY} bytes")));
    }
    Ok(body)
}
