//! Node configuration: the seed's `--cluster` syntax and every tuning knob, validated in one place.
//!
//! `--cluster "1,:3031;2,:3032;3,:3033"` lists the members as `raft_id,raft_addr` entries separated by `;`.
//! `--node N` is a 0-based index into that list and picks this node's id and Raft listen address. An address
//! `:port` means all interfaces when listening and the local host when connecting; `host:port` means that
//! host. Every malformed input is an error naming what is wrong; nothing here panics.
//!
//! The cluster token (the peers' shared secret) is never a flag value, which any user could read in the
//! process list: it comes from a file (`--cluster-token-file`) or the environment (`NIMBUS_CLUSTER_TOKEN`),
//! never both ([`load_cluster_token`]). The admin token follows the same conventions
//! (`--admin-token-file` or `NIMBUS_ADMIN_TOKEN`, [`load_admin_token`]).

use crate::raft::NodeId;
use crate::transport::ClusterToken;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The environment variable that may hold the cluster token.
pub const CLUSTER_TOKEN_ENV: &str = "NIMBUS_CLUSTER_TOKEN";

/// The cluster token from `file` (`--cluster-token-file`) or `env` (the value of [`CLUSTER_TOKEN_ENV`]),
/// `None` when neither is given. Both given, an unreadable or oversized file, a variable set but empty or
/// a token too short are errors. Surrounding whitespace (a final newline) is not part of the token. A
/// file that group or others may read is accepted with a warning.
pub fn load_cluster_token(
    file: Option<&Path>,
    env: Option<OsString>,
) -> Result<Option<ClusterToken>, String> {
    load_secret("--cluster-token-file", CLUSTER_TOKEN_ENV, file, env, |b| {
        ClusterToken::new(b)
    })
}

/// The environment variable that may hold the admin token.
pub const ADMIN_TOKEN_ENV: &str = "NIMBUS_ADMIN_TOKEN";

/// The admin token from `file` (`--admin-token-file`) or `env` (the value of [`ADMIN_TOKEN_ENV`]), with
/// the conventions of [`load_cluster_token`].
pub fn load_admin_token(
    file: Option<&Path>,
    env: Option<OsString>,
) -> Result<Option<AdminToken>, String> {
    load_secret(
        "--admin-token-file",
        ADMIN_TOKEN_ENV,
        file,
        env,
        AdminToken::new,
    )
}

/// A secret from a file or an environment variable, never both; `make` checks and wraps the bytes.
fn load_secret<T>(
    flag: &str,
    var: &str,
    file: Option<&Path>,
    env: Option<OsString>,
    make: impl Fn(&[u8]) -> Result<T, String>,
) -> Result<Option<T>, String> {
    const MAX_FILE: u64 = 8192;
    match (file, env) {
        (Some(_), Some(_)) => Err(format!(
            "both {flag} and {var} are set; give the token one way"
        )),
        (None, None) => Ok(None),
        (None, Some(v)) => make(&v.into_encoded_bytes())
            .map(Some)
            .map_err(|e| format!("{var}: {e}")),
        (Some(path), None) => {
            let shown = path.display();
            let meta = std::fs::metadata(path).map_err(|e| format!("{flag} {shown}: {e}"))?;
            if !meta.is_file() || meta.len() > MAX_FILE {
                return Err(format!(
                    "{flag} {shown}: not a regular file of at most {MAX_FILE} bytes"
                ));
            }
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                if meta.permissions().mode() & 0o077 != 0 {
                    log::warn!(
                        "{flag} {shown} may be read by group or others (mode {:o}); chmod 600 it",
                        meta.permissions().mode() & 0o777
                    );
                }
            }
            let bytes = std::fs::read(path).map_err(|e| format!("{flag} {shown}: {e}"))?;
            make(&bytes)
                .map(Some)
                .map_err(|e| format!("{flag} {shown}: {e}"))
        }
    }
}

/// The bearer token the cluster administration routes require (`--admin-token-file`). Its `Debug`
/// output never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    /// Shortest accepted token.
    pub const MIN_LEN: usize = 16;
    /// Longest accepted token.
    pub const MAX_LEN: usize = 4096;

    /// A token from its bytes, after trimming ASCII whitespace at both ends (a file's final newline). It
    /// travels in an `Authorization` header, so it must be visible ASCII (no spaces or control bytes).
    pub fn new(bytes: &[u8]) -> Result<AdminToken, String> {
        let t = bytes.trim_ascii();
        if t.len() < Self::MIN_LEN || t.len() > Self::MAX_LEN {
            return Err(format!(
                "the admin token must be {} to {} bytes (not counting surrounding whitespace), got {}",
                Self::MIN_LEN,
                Self::MAX_LEN,
                t.len()
            ));
        }
        if !t.iter().all(|b| b.is_ascii_graphic()) {
            return Err(
                "the admin token must be visible ASCII characters (it is sent in an HTTP header)"
                    .into(),
            );
        }
        Ok(AdminToken(String::from_utf8_lossy(t).into_owned()))
    }

    /// The `Authorization` header value that carries it.
    pub fn header_value(&self) -> String {
        format!("Bearer {}", self.0)
    }

    /// Whether an `Authorization` header value presents this token: `Bearer` (any case), then the token,
    /// compared in constant time for a given length.
    pub fn accepts(&self, authorization: &str) -> bool {
        let v = authorization.trim();
        let Some((scheme, presented)) = v.split_once(' ') else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case("bearer") {
            return false;
        }
        constant_time_eq(presented.trim().as_bytes(), self.0.as_bytes())
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AdminToken(<{} bytes, redacted>)", self.0.len())
    }
}

/// Compares two byte strings without an early exit on the first difference (the length is not secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// One member of the cluster as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// This member's Raft node id (at least 1, unique in the cluster).
    pub id: NodeId,
    /// This member's Raft address as given: `host:port`, or `:port` (all interfaces when listening, this host
    /// when connecting).
    pub raft_addr: String,
}

/// Parses the seed's cluster syntax: `id,addr;id,addr;…`.
pub fn parse_cluster(spec: &str) -> Result<Vec<Member>, String> {
    let mut members: Vec<Member> = Vec::new();
    for (pos, raw) in spec.split(';').enumerate() {
        let entry = raw.trim();
        if entry.is_empty() {
            if pos > 0 && spec.trim_end().ends_with(';') {
                continue; // tolerate one trailing separator
            }
            return Err(format!(
                "--cluster entry {} is empty (expected \"id,addr\")",
                pos + 1
            ));
        }
        let (id, addr) = entry.split_once(',').ok_or_else(|| {
            format!("--cluster entry {entry:?} must be \"raft_id,raft_addr\", e.g. \"1,:3031\"")
        })?;
        let id: NodeId = id.trim().parse().map_err(|_| {
            format!(
                "--cluster entry {entry:?}: raft id {:?} is not a positive integer",
                id.trim()
            )
        })?;
        if id == 0 {
            return Err(format!(
                "--cluster entry {entry:?}: raft id 0 is reserved; ids start at 1"
            ));
        }
        let addr = addr.trim();
        check_addr(addr).map_err(|e| format!("--cluster entry {entry:?}: {e}"))?;
        if members.iter().any(|m| m.id == id) {
            return Err(format!("--cluster lists raft id {id} twice"));
        }
        if members.iter().any(|m| m.raft_addr == addr) {
            return Err(format!("--cluster lists address {addr} twice"));
        }
        members.push(Member {
            id,
            raft_addr: addr.to_string(),
        });
    }
    if members.is_empty() {
        return Err("--cluster lists no members".into());
    }
    Ok(members)
}

/// Checks the shape `host:port` or `:port` (port 1-65535).
pub fn check_addr(addr: &str) -> Result<(), String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("address {addr:?} must be \"host:port\" or \":port\""))?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(format!("address {addr:?} has no valid port (1-65535)")),
    }
    if host.contains(char::is_whitespace) {
        return Err(format!("address {addr:?} contains whitespace"));
    }
    Ok(())
}

/// The address to listen on: `:port` means all interfaces.
pub fn listen_addr(addr: &str) -> Result<SocketAddr, String> {
    check_addr(addr)?;
    let full = if addr.starts_with(':') {
        format!("0.0.0.0{addr}")
    } else {
        addr.to_string()
    };
    resolve(&full)
}

/// The address to connect to: `:port` means this host.
pub fn connect_addr(addr: &str) -> Result<SocketAddr, String> {
    check_addr(addr)?;
    let full = if addr.starts_with(':') {
        format!("127.0.0.1{addr}")
    } else {
        addr.to_string()
    };
    resolve(&full)
}

fn resolve(addr: &str) -> Result<SocketAddr, String> {
    addr.to_socket_addrs()
        .map_err(|e| format!("cannot resolve {addr:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr:?} resolves to no address"))
}

/// Everything a node needs to run.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's Raft id; must be a key of `members`.
    pub id: NodeId,
    /// Raft address of every member, this node included, as given (`:port` or `host:port`).
    pub members: BTreeMap<NodeId, String>,
    /// Where the HTTP API listens.
    pub http_addr: SocketAddr,
    /// The data directory: the WAL, snapshots and the lock file live here (created if missing).
    pub data_dir: PathBuf,
    /// Names the cluster in the peer handshake so two clusters on one host never talk to each other.
    pub cluster_name: String,
    /// The peers' shared secret; `None`: peer connections are not authenticated.
    pub cluster_token: Option<ClusterToken>,
    /// The bearer token the mutating `/v1/cluster` routes require (and `--join` sends); `None`: they are
    /// open to every HTTP client.
    pub admin_token: Option<AdminToken>,
    /// Client writes are refused (507) while the leader's data directory has less free space than this;
    /// 0 turns the check off.
    pub min_free_bytes: u64,
    /// Whether clients reach tiny_http through the HTTP guard (the default) or directly.
    pub http_guard: bool,
    /// Length of one Raft tick, the unit of the election and heartbeat timeouts (default 100 ms; must be
    /// non-zero).
    pub tick: Duration,
    /// Base election timeout in ticks; the actual timeout is drawn from `[election_ticks, 2 *
    /// election_ticks)`. Must exceed `heartbeat_ticks`.
    pub election_ticks: u32,
    /// A leader sends heartbeats every this many ticks (at least 1, below `election_ticks`).
    pub heartbeat_ticks: u32,
    /// How long a client request may wait for commit/apply before it gets 504.
    pub request_timeout: Duration,
    /// Number of HTTP worker threads serving client requests (1 to 4096).
    pub http_threads: usize,
    /// Client connections served at once (the HTTP guard answers one more with 503).
    pub http_max_connections: usize,
    /// Most bytes of header fields in one request head (431 beyond).
    pub http_max_header_bytes: usize,
    /// A request head must arrive within this of its first byte, a body progress at least this often.
    pub http_read_timeout: Duration,
    /// Largest accepted key and value (bytes).
    pub max_key_bytes: usize,
    /// Largest accepted value, in bytes (default 1 MiB; at least 1).
    pub max_value_bytes: usize,
    /// Take a snapshot once this many entries were applied since the last one...
    pub snapshot_entries: u64,
    /// ...or once the WAL grew by this many bytes since the last one.
    pub snapshot_bytes: u64,
    /// Snapshot files kept on disk (the newest ones).
    pub snapshots_kept: usize,
    /// Log entries kept before the newest snapshot, so followers slightly behind catch up from the log.
    pub log_keep_entries: u64,
    /// Size at which the WAL starts a new segment file (segments are deleted whole).
    pub wal_segment_bytes: u64,
    /// The voters before the log says otherwise (default: every member). A node joining a running cluster
    /// is not among them, so it never campaigns until it is promoted.
    pub bootstrap_voters: Option<std::collections::BTreeSet<u64>>,
    /// `--join URL`: after starting, ask the cluster there to add this node.
    pub join: Option<String>,
}

impl NodeConfig {
    /// The longest URL the HTTP routes accept (the seed's `/set` carries the value, percent-encoded, in
    /// the query): 8 KiB plus three times the value limit.
    pub fn max_url_bytes(&self) -> usize {
        8192 + self.max_value_bytes.saturating_mul(3)
    }

    /// A configuration for node `id` among `members`, with defaults for everything else.
    pub fn new(
        id: NodeId,
        members: BTreeMap<NodeId, String>,
        http_addr: SocketAddr,
        data_dir: PathBuf,
    ) -> Self {
        NodeConfig {
            id,
            members,
            http_addr,
            data_dir,
            cluster_name: "nimbus".into(),
            cluster_token: None,
            admin_token: None,
            min_free_bytes: 64 << 20,
            http_guard: true,
            tick: Duration::from_millis(100),
            election_ticks: 10,
            heartbeat_ticks: 1,
            request_timeout: Duration::from_secs(5),
            http_threads: 64,
            http_max_connections: 1024,
            http_max_header_bytes: 16 << 10,
            http_read_timeout: Duration::from_secs(10),
            max_key_bytes: 4096,
            max_value_bytes: 1 << 20,
            snapshot_entries: 10_000,
            snapshot_bytes: 64 << 20,
            snapshots_kept: 2,
            log_keep_entries: 5_000,
            wal_segment_bytes: 16 << 20,
            bootstrap_voters: None,
            join: None,
        }
    }

    /// Checks the settings together; the error names the flag to fix.
    pub fn validate(&self) -> Result<(), String> {
        if !self.members.contains_key(&self.id) {
            return Err(format!("node id {} is not in the cluster", self.id));
        }
        if self.tick.is_zero() {
            return Err("--tick-ms must be at least 1".into());
        }
        if self.heartbeat_ticks == 0 || self.election_ticks <= self.heartbeat_ticks {
            return Err(format!(
                "--election-ticks ({}) must be greater than --heartbeat-ticks ({}), which must be at least 1",
                self.election_ticks, self.heartbeat_ticks
            ));
        }
        if self.http_threads == 0 || self.http_threads > 4096 {
            return Err("--http-threads must be between 1 and 4096".into());
        }
        if self.http_max_connections == 0 || self.http_max_connections > 65_536 {
            return Err("--http-max-connections must be between 1 and 65536".into());
        }
        if self.http_max_header_bytes < 1024 || self.http_max_header_bytes > 1 << 20 {
            return Err("--http-max-header-bytes must be between 1024 and 1048576".into());
        }
        if self.http_read_timeout.is_zero() {
            return Err("--http-read-timeout-ms must be at least 1".into());
        }
        if self.request_timeout.is_zero() {
            return Err("--request-timeout-ms must be at least 1".into());
        }
        if self.snapshot_entries == 0 || self.snapshot_bytes < 1024 {
            return Err(
                "--snapshot-entries must be at least 1 and --snapshot-bytes at least 1024".into(),
            );
        }
        if self.snapshots_kept == 0 || self.snapshots_kept > 100 {
            return Err("--snapshots-kept must be between 1 and 100".into());
        }
        if self.wal_segment_bytes < 4096 || self.wal_segment_bytes > 1 << 32 {
            return Err("--wal-segment-bytes must be between 4096 and 4 GiB".into());
        }
        if self.max_key_bytes == 0 || self.max_value_bytes == 0 {
            return Err("key and value limits must be at least 1 byte".into());
        }
        for addr in self.members.values() {
            check_addr(addr)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_seed_syntax() {
        let m = parse_cluster("1,:3031;2,:3032;3,:3033").unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(
            m[1],
            Member {
                id: 2,
                raft_addr: ":3032".into()
            }
        );
        let m = parse_cluster(" 7 , 127.0.0.1:4000 ; 9,[::1]:4001;").unwrap();
        assert_eq!(m[0].id, 7);
        assert_eq!(m[1].raft_addr, "[::1]:4001");
    }

    #[test]
    fn rejects_bad_clusters_with_clear_errors() {
        for (spec, needle) in [
            ("", "empty"),
            ("1:3031", "raft_id,raft_addr"),
            ("x,:3031", "not a positive integer"),
            ("0,:3031", "reserved"),
            ("1,:3031;1,:3032", "twice"),
            ("1,:3031;2,:3031", "twice"),
            ("1,3031", "host:port"),
            ("1,:0", "valid port"),
            ("1,:99999", "valid port"),
            ("1,:3031;;2,:3032", "empty"),
        ] {
            let err = parse_cluster(spec).unwrap_err();
            assert!(err.contains(needle), "{spec:?}: {err}");
        }
    }

    #[test]
    fn addresses() {
        assert_eq!(listen_addr(":2021").unwrap().to_string(), "0.0.0.0:2021");
        assert_eq!(connect_addr(":2021").unwrap().to_string(), "127.0.0.1:2021");
        assert_eq!(
            connect_addr("127.0.0.2:80").unwrap().to_string(),
            "127.0.0.2:80"
        );
        assert!(listen_addr("2021").is_err());
    }
}
