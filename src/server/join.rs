//! `--join URL`: how a new node finds a running cluster and asks to be added.
//!
//! Rules:
//! - Before starting, the node reads `GET /v1/cluster` from the URL to learn the members' ids and Raft
//!   addresses and who votes. It starts with those voters as its bootstrap configuration, which does not
//!   include itself, so it never campaigns before it is promoted.
//! - After starting (so the leader can reach it), it asks `POST /v1/cluster/members` with
//!   `auto_promote: true`, retrying while the cluster is busy or electing (at most a minute); a node
//!   already a member (a restart) is fine. The leader promotes it once it has caught up.
//! - With an admin token (`--admin-token-file` / `NIMBUS_ADMIN_TOKEN`) the add request carries it as
//!   `Authorization: Bearer`; a 401 ends the join with an error naming the flag. Discovery is a read and
//!   needs no token.
//! - On restart the membership comes from the node's own log and snapshot; the URL only supplies
//!   addresses to bootstrap the connection.

use crate::config::{connect_addr, AdminToken};
use crate::http_client::HttpClient;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn addr_of(url: &str) -> Result<SocketAddr, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("--join {url:?}: expected http://host:port"))?;
    connect_addr(rest.trim_end_matches('/')).map_err(|e| format!("--join {url:?}: {e}"))
}

/// Reads the cluster at `url`: returns the `--cluster` list including this node, this node's index in
/// it, and the current voters.
pub fn discover(
    url: &str,
    id: Option<u64>,
    raft: Option<&str>,
) -> Result<(String, usize, BTreeSet<u64>), String> {
    let (Some(id), Some(raft)) = (id, raft) else {
        return Err("--join needs --id and --raft".into());
    };
    if id == 0 {
        return Err("--id must be positive".into());
    }
    crate::config::check_addr(raft).map_err(|e| format!("--raft: {e}"))?;
    let addr = addr_of(url)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let view = loop {
        let mut c = HttpClient::new(addr, Duration::from_secs(3));
        match c.get("/v1/cluster") {
            Ok(r) if r.status == 200 => {
                break serde_json::from_slice::<serde_json::Value>(&r.body)
                    .map_err(|e| format!("--join: bad answer from {url}: {e}"))?
            }
            Ok(r) if Instant::now() > deadline => {
                return Err(format!("--join: {url} answered {}: {}", r.status, r.text()))
            }
            Err(e) if Instant::now() > deadline => {
                return Err(format!("--join: cannot reach {url}: {e}"))
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    let members = view["members"]
        .as_array()
        .ok_or_else(|| format!("--join: {url} listed no members"))?;
    let mut spec = Vec::new();
    let mut voters = BTreeSet::new();
    for m in members {
        let (Some(mid), Some(mraft)) = (m["id"].as_u64(), m["raft_addr"].as_str()) else {
            continue;
        };
        if m["voter"] == true {
            voters.insert(mid);
        }
        if mid != id {
            spec.push(format!("{mid},{mraft}"));
        }
    }
    if voters.is_empty() {
        return Err(format!("--join: {url} listed no voters"));
    }
    spec.push(format!("{id},{raft}"));
    let index = spec.len() - 1;
    Ok((spec.join(";"), index, voters))
}

/// Asks the cluster at `url` to add this node as a learner promoted once caught up (see the module docs),
/// presenting `admin` (this node's own `--admin-token-file`) as a bearer token when set.
pub fn request_add(
    url: &str,
    id: u64,
    raft: &str,
    http: SocketAddr,
    admin: Option<&AdminToken>,
) -> Result<(), String> {
    let addr = addr_of(url)?;
    let http = if http.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], http.port()))
    } else {
        http
    };
    let body = serde_json::json!({
        "id": id, "raft_addr": raft, "http_addr": http.to_string(), "auto_promote": true,
    })
    .to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    let auth = admin.map(AdminToken::header_value);
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|v| ("Authorization", v))
        .into_iter()
        .collect();
    loop {
        let mut c = HttpClient::new(addr, Duration::from_secs(15));
        let r = c.request("POST", "/v1/cluster/members", &headers, body.as_bytes());
        match r {
            Ok(r) if r.status == 200 => return Ok(()),
            Ok(r) if r.status == 409 && r.text().contains("already a member") => return Ok(()),
            Ok(r) if r.status == 401 => {
                return Err(format!(
                    "the cluster refused to add node {id}: {} (give this node the cluster's admin \
                     token: --admin-token-file or NIMBUS_ADMIN_TOKEN)",
                    r.text()
                ))
            }
            Ok(r) if r.status == 400 || r.status == 404 => {
                return Err(format!(
                    "the cluster refused to add node {id}: {}",
                    r.text()
                ))
            }
            Ok(r) if Instant::now() > deadline => {
                return Err(format!("the cluster did not add node {id}: {}", r.text()))
            }
            Err(e) if Instant::now() > deadline => {
                return Err(format!("cannot reach {url} to join: {e}"))
            }
            _ => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}
