//! The REST key-value API beside the seed routes.
//!
//! - `GET /v1/kv/{key}` → 200 with the raw value, `ETag: "<modify index>"`, `X-Raft-Index` (the applied
//!   index the read saw) and `X-Raft-Term`; a missing key is 404.
//! - `PUT /v1/kv/{key}` (body = value) → 200 `{"index": N}`. `If-Match: "<index>"` makes it a
//!   compare-and-swap; `If-None-Match: *` creates only. A failed condition is 412 with `current_index`.
//! - `DELETE /v1/kv/{key}` (also `If-Match`) → 200 `{"index": N}`; a missing key is 404.
//! - `GET /v1/kv?prefix=P&limit=N&after=K` → `{"items": [{key, value, index}], "next": K | null}` in key
//!   order; pass `next` as `after` for the following page. `limit` defaults to 100, at most 1,000.
//!
//! Writes may carry `Idempotency-Key: <token>` (1-128 visible ASCII characters): a retry with the same key
//! within the idempotency window is applied once and answered with the first result.
//!
//! Reads take `consistency=linearizable` (the default: read index, on any node) or `stale` (this node's
//! state, possibly behind; the answer carries `X-Nimbus-Applied-Index`). `{key}` is the rest of the path,
//! percent-decoded, so it may contain `/`. Keys and values are bytes: in JSON listings a UTF-8 key or value
//! is a string, anything else is given as `key_base64` / `value_base64` instead.

use super::api::{ApiError, ClientRequest, Consistency, ReadQuery};
use super::http::{
    check_key, check_value_len, consistency_param, header, idempotency_key, json_response, param,
    percent_decode, read, stale_headers, write, HttpResponse, Params,
};
use crate::config::NodeConfig;
use crate::kv::{Command, Condition};
use crossbeam_channel::Sender;
use std::io::Read;
use tiny_http::{Method, Request, Response};

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// Serves one `/v1/kv…` request (`path` is the URL path, `params` its decoded query).
pub(super) fn handle(
    req: &mut Request,
    path: &str,
    params: &Params,
    to_raft: &Sender<ClientRequest>,
    cfg: &NodeConfig,
) -> Result<HttpResponse, ApiError> {
    let method = req.method().clone();
    if path == "/v1/kv" || path == "/v1/kv/" {
        return match method {
            Method::Get => list(params, to_raft, cfg),
            _ => Err(method_not_allowed(&method, path)),
        };
    }
    let raw_key = &path["/v1/kv/".len()..];
    let key = percent_decode(raw_key).map_err(ApiError::BadRequest)?;
    let key = check_key(&key, cfg)?;
    match method {
        Method::Get => get(key, params, to_raft, cfg),
        Method::Put => put(req, key, to_raft, cfg),
        Method::Delete => delete(req, key, to_raft, cfg),
        _ => Err(method_not_allowed(&method, path)),
    }
}

fn method_not_allowed(method: &Method, path: &str) -> ApiError {
    ApiError::MethodNotAllowed(format!("method {method} not allowed on {path}"))
}

fn get(
    key: Vec<u8>,
    params: &Params,
    to_raft: &Sender<ClientRequest>,
    cfg: &NodeConfig,
) -> Result<HttpResponse, ApiError> {
    let c = consistency_param(params)?;
    let mut ok = read(ReadQuery::Get(key), c, to_raft, cfg)?;
    let Some(value) = ok.value.take() else {
        return Err(ApiError::NotFound("no such key".into()));
    };
    let mut r = Response::from_data(value)
        .with_header(header("Content-Type", "application/octet-stream"))
        .with_header(header("ETag", &format!("\"{}\"", ok.modify_index)))
        .with_header(header("X-Raft-Index", &ok.applied_index.to_string()))
        .with_header(header("X-Raft-Term", &ok.term.to_string()));
    if c == Consistency::Stale {
        r = stale_headers(r, &ok);
    }
    Ok(r)
}

/// `If-Match: "N"` (quotes optional) → modify index N; `If-None-Match: *` → absent.
fn condition(req: &Request) -> Result<Condition, ApiError> {
    let mut cond = Condition::Any;
    for h in req.headers() {
        if h.field.equiv("If-Match") {
            let v = h.value.as_str().trim().trim_matches('"');
            let index = v.parse::<u64>().map_err(|_| {
                ApiError::BadRequest(format!(
                    "If-Match must be a modify index such as \"42\", got {:?}",
                    h.value.as_str()
                ))
            })?;
            cond = Condition::Index(index);
        } else if h.field.equiv("If-None-Match") {
            if h.value.as_str().trim() != "*" {
                return Err(ApiError::BadRequest(
                    "If-None-Match supports only \"*\" (create only)".into(),
                ));
            }
            if cond != Condition::Any {
                return Err(ApiError::BadRequest(
                    "If-Match and If-None-Match cannot be combined".into(),
                ));
            }
            cond = Condition::Absent;
        }
    }
    Ok(cond)
}

/// The whole body, or an error: tiny_http's reader ends quietly when the connection closes early, so a
/// body shorter than its `Content-Length` is refused here rather than stored truncated.
fn read_body(req: &mut Request, cfg: &NodeConfig) -> Result<Vec<u8>, ApiError> {
    let announced = req.body_length();
    if let Some(len) = announced {
        check_value_len(len, cfg)?;
    }
    let mut body = Vec::new();
    req.as_reader()
        .take(cfg.max_value_bytes as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| ApiError::BadRequest(format!("cannot read the request body: {e}")))?;
    check_value_len(body.len(), cfg)?;
    if let Some(len) = announced.filter(|&len| len != body.len()) {
        return Err(ApiError::BadRequest(format!(
            "the body ended after {} of its {len} bytes",
            body.len()
        )));
    }
    Ok(body)
}

fn put(
    req: &mut Request,
    key: Vec<u8>,
    to_raft: &Sender<ClientRequest>,
    cfg: &NodeConfig,
) -> Result<HttpResponse, ApiError> {
    let cond = condition(req)?;
    let token = idempotency_key(req)?;
    let value = read_body(req, cfg)?;
    let ok = write(Command::Put { key, value, cond }, token, to_raft, cfg)?;
    Ok(json_response(200, &serde_json::json!({"index": ok.index}))
        .with_header(header("ETag", &format!("\"{}\"", ok.index))))
}

fn delete(
    req: &mut Request,
    key: Vec<u8>,
    to_raft: &Sender<ClientRequest>,
    cfg: &NodeConfig,
) -> Result<HttpResponse, ApiError> {
    let cond = condition(req)?;
    if cond == Condition::Absent {
        return Err(ApiError::BadRequest(
            "If-None-Match makes no sense on DELETE".into(),
        ));
    }
    let token = idempotency_key(req)?;
    let ok = write(Command::Delete { key, cond }, token, to_raft, cfg)?;
    if !ok.found {
        return Err(ApiError::NotFound("no such key".into()));
    }
    Ok(json_response(200, &serde_json::json!({"index": ok.index})))
}

fn list(
    params: &Params,
    to_raft: &Sender<ClientRequest>,
    cfg: &NodeConfig,
) -> Result<HttpResponse, ApiError> {
    let prefix = param(params, "prefix").unwrap_or_default().to_vec();
    if prefix.len() > cfg.max_key_bytes {
        return Err(ApiError::TooLarge(
            "prefix longer than the key limit".into(),
        ));
    }
    let after = param(params, "after").map(|a| a.to_vec());
    let limit = match param(params, "limit") {
        None => DEFAULT_LIMIT,
        Some(l) => std::str::from_utf8(l)
            .ok()
            .and_then(|l| l.parse::<usize>().ok())
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| {
                ApiError::BadRequest(format!("limit must be an integer from 1 to {MAX_LIMIT}"))
            })?,
    };
    let c = consistency_param(params)?;
    let ok = read(
        ReadQuery::Scan {
            prefix,
            after,
            limit,
        },
        c,
        to_raft,
        cfg,
    )?;
    let items: Vec<serde_json::Value> = ok
        .items
        .iter()
        .map(|(k, v, index)| {
            let mut item = serde_json::json!({ "index": index });
            put_bytes(&mut item, "key", k);
            put_bytes(&mut item, "value", v);
            item
        })
        .collect();
    let mut body = serde_json::json!({ "items": items, "next": null });
    if ok.more {
        if let Some((k, _, _)) = ok.items.last() {
            put_bytes(&mut body, "next", k);
        }
    }
    Ok(json_response(200, &body)
        .with_header(header("X-Raft-Index", &ok.applied_index.to_string()))
        .with_header(header("X-Raft-Term", &ok.term.to_string())))
}

/// A UTF-8 byte string goes in as a string under `name`; anything else base64-encoded under
/// `<name>_base64`.
fn put_bytes(obj: &mut serde_json::Value, name: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(s) => obj[name] = serde_json::json!(s),
        Err(_) => {
            if name == "next" {
                // A cursor must round-trip through a query parameter: percent-encode it instead.
                obj[name] = serde_json::json!(crate::http_client::encode_query_value(bytes));
            } else {
                obj[format!("{name}_base64")] = serde_json::json!(base64(bytes));
            }
        }
    }
}

/// Standard base64 with padding (RFC 4648 §4).
pub fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(T[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::base64;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want);
        }
    }
}
