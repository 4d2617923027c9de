//! `nimbus dev`: a local cluster in one command, for a first look and for development.
//!
//! Starts `--nodes N` (1 to 7, default 3) nodes as child processes of the running executable, with exactly
//! the flags an operator would pass (`--node i --http 127.0.0.1:P --cluster "1,127.0.0.1:R1;…"
//! --data-dir D`), prints where they listen and a few `curl` commands to try, then watches them: a line
//! whenever the leader changes, and a line when a node exits.
//!
//! Behaviour, in full:
//! - Ports: free ones drawn from 20000-31999 (below Linux's ephemeral range), or with `--base-port P` HTTP on `P, P+1, …` and Raft
//!   on `P+1010, …` (`--base-port 2021` gives the classic 2021-2023 / 3031-3033 layout).
//! - Data: under a fresh temporary directory, removed on exit unless `--keep`; or under `--data-dir D`
//!   (`D/node-<id>`), which is never removed. Each node's output goes to `node-<id>.log` beside its data
//!   directory, or to this terminal with `--verbose`.
//! - A node that exits before the first leader is known is a start-up failure: the others are stopped, the
//!   end of its log is shown, and `nimbus dev` exits 1. So is no leader within 30 s. After a failure the
//!   data directory (with the logs) is kept.
//! - A node that exits later (a crash, or `kill -9 <pid>` to watch a fail-over) is reported and the others
//!   keep serving, as Raft allows. With `--restart` it is started again after a second, at most 5 times
//!   per node. Once no node is left running (and none is about to restart), `nimbus dev` exits 1.
//! - SIGINT (Ctrl-C), SIGTERM or SIGHUP stops every node the way an operator would: SIGTERM to each (a
//!   leader hands leadership over first), up to 10 s for them to exit, then SIGKILL for any still running.
//!   A second signal skips the wait. Then the temporary data is removed and the exit status is 0.
//! - The nodes run in their own process group, so a Ctrl-C in the terminal reaches only `nimbus dev`
//!   (a node's second signal would make it exit at once). On Linux each node is also told to receive
//!   SIGTERM should `nimbus dev` itself die (`PR_SET_PDEATHSIG`), so no cluster is left behind by a
//!   `kill -9` of it.
//!
//! Every wait is bounded; the watch loop runs until a signal or until no node is left.

use crate::http_client::HttpClient;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Most nodes `nimbus dev` starts.
pub const MAX_NODES: u64 = 7;
/// With `--base-port P`, node i's Raft port is its HTTP port plus this (2021 → 3031, as in the seed).
pub const RAFT_PORT_OFFSET: u16 = 1010;
/// No leader by then: start-up failed.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How often each node's `/status` is read.
const POLL_EVERY: Duration = Duration::from_millis(500);
/// Timeout of one `/status` request.
const STATUS_TIMEOUT: Duration = Duration::from_millis(300);
/// How long the nodes get to stop after SIGTERM before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// With `--restart`: delay before a node is started again, and how often at most.
const RESTART_DELAY: Duration = Duration::from_secs(1);
const MAX_RESTARTS: u32 = 5;
/// The watch loop's step.
const STEP: Duration = Duration::from_millis(100);

/// `nimbus dev`'s flags.
#[derive(clap::Args, Debug, Clone)]
pub struct DevArgs {
    /// Number of nodes, 1 to 7.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=MAX_NODES))]
    pub nodes: u64,
    /// First HTTP port: nodes listen on P, P+1, … and Raft on P+1010, … (2021 gives 2021-2023 and
    /// 3031-3033). Default: free ports between 20000 and 31999.
    #[arg(long)]
    pub base_port: Option<u16>,
    /// Keep the nodes' data here (D/node-N, logs in D/node-N.log); never removed. Default: a new
    /// temporary directory, removed on exit unless --keep.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Keep the temporary data directory on exit (its path is printed).
    #[arg(long)]
    pub keep: bool,
    /// Nodes' log output to this terminal instead of log files.
    #[arg(long)]
    pub verbose: bool,
    /// Start a node that exited unexpectedly again after 1 s (at most 5 times per node).
    #[arg(long)]
    pub restart: bool,
    /// Extra flags passed to every node, after `--`, e.g. `nimbus dev -- --tick-ms 50`.
    #[arg(last = true)]
    pub node_args: Vec<String>,
}

/// One line on stdout; a closed stdout is not worth a panic.
macro_rules! say {
    ($($t:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// One node of the dev cluster.
struct Member {
    id: u64,
    http: SocketAddr,
    raft: SocketAddr,
    dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    restarts: u32,
    restart_at: Option<Instant>,
    client: HttpClient,
}

/// What one node's `/status` says about the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    /// The node's current term (0 if `/status` did not say).
    pub term: u64,
    /// The id of the leader the node knows in that term, if any.
    pub leader: Option<u64>,
}

/// The leader the cluster agrees on, as far as the views tell: the one known in the highest term.
pub fn current_leader(views: &[View]) -> Option<(u64, u64)> {
    views
        .iter()
        .filter_map(|v| v.leader.map(|l| (v.term, l)))
        .max()
        .map(|(term, leader)| (leader, term))
}

/// `(http, raft)` ports for `nodes` nodes: from `base` (checked free), or free ones found at random.
pub fn plan_ports(nodes: usize, base: Option<u16>) -> Result<Vec<(u16, u16)>, String> {
    match base {
        Some(base) => {
            let last_http = u32::from(base) + nodes as u32 - 1;
            if base == 0 || last_http + u32::from(RAFT_PORT_OFFSET) > u32::from(u16::MAX) {
                return Err(format!(
                    "--base-port {base} is out of range: with {nodes} nodes it must be 1..={}",
                    u32::from(u16::MAX) - u32::from(RAFT_PORT_OFFSET) - nodes as u32 + 1
                ));
            }
            let ports: Vec<(u16, u16)> = (0..nodes as u16)
                .map(|i| (base + i, base + i + RAFT_PORT_OFFSET))
                .collect();
            for &(h, r) in &ports {
                for p in [h, r] {
                    TcpListener::bind(("127.0.0.1", p)).map_err(|e| {
                        format!("port {p} (from --base-port {base}) is not free: {e}")
                    })?;
                }
            }
            Ok(ports)
        }
        None => {
            // Drawn from 20000-31999, below Linux's ephemeral range (32768-60999): an outgoing connection
            // then never takes the port of a node that is down for a moment (--restart, kill -9). All held
            // at once so they differ; released just before the nodes bind them. Port 0 (any free port)
            // if that range is crowded.
            let seed = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
                ^ u64::from(std::process::id()) << 32;
            let mut rng = crate::raft::Rng::new(seed);
            let mut held: Vec<(TcpListener, u16)> = Vec::new();
            for _ in 0..1000 {
                if held.len() == nodes * 2 {
                    break;
                }
                let port = 20_000 + rng.below(12_000) as u16;
                if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
                    held.push((l, port));
                }
            }
            while held.len() < nodes * 2 {
                let l = TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr().map(|a| (l, a.port())))
                    .map_err(|e| format!("cannot find a free port on 127.0.0.1: {e}"))?;
                held.push(l);
            }
            Ok(held.chunks(2).map(|c| (c[0].1, c[1].1)).collect())
        }
    }
}

/// The root directory and whether to remove it on exit.
fn data_root(args: &DevArgs) -> Result<(PathBuf, bool), String> {
    if let Some(d) = &args.data_dir {
        std::fs::create_dir_all(d)
            .map_err(|e| format!("cannot create --data-dir {}: {e}", d.display()))?;
        return Ok((d.clone(), false));
    }
    let tmp = std::env::temp_dir();
    for attempt in 0..100u32 {
        let dir = tmp.join(format!("nimbus-dev-{}-{attempt}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok((dir, !args.keep)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(format!(
                    "cannot create a directory in {}: {e}",
                    tmp.display()
                ))
            }
        }
    }
    Err(format!(
        "cannot create a fresh directory in {}: 100 names taken",
        tmp.display()
    ))
}

/// The running dev cluster.
struct Cluster {
    exe: PathBuf,
    spec: String,
    node_args: Vec<String>,
    verbose: bool,
    restart: bool,
    root: PathBuf,
    remove_root: bool,
    members: Vec<Member>,
}

/// `nimbus dev`: 0 after a signal stopped every node, 1 on a start-up failure or once no node is left,
/// 2 on bad input.
pub fn run(args: DevArgs) -> ExitCode {
    // Before any child exists, so that a Ctrl-C during start-up is ours to handle.
    let mut signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("nimbus dev: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    let mut cluster = match Cluster::new(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nimbus dev: {e}");
            return ExitCode::from(2);
        }
    };
    for i in 0..cluster.members.len() {
        if let Err(e) = cluster.spawn(i) {
            eprintln!("nimbus dev: cannot start node {}: {e}", i + 1);
            cluster.stop(&mut signals);
            return ExitCode::from(1);
        }
    }
    cluster.banner();
    let code = cluster.watch(&mut signals);
    if code != 0 {
        // Something went wrong: the logs are worth a look.
        cluster.remove_root = false;
    }
    cluster.stop(&mut signals);
    ExitCode::from(code)
}

impl Cluster {
    fn new(args: &DevArgs) -> Result<Cluster, String> {
        let exe = std::env::current_exe()
            .map_err(|e| format!("cannot find the running executable: {e}"))?;
        let n = args.nodes.clamp(1, MAX_NODES) as usize;
        let ports = plan_ports(n, args.base_port)?;
        let (root, remove_root) = data_root(args)?;
        let ip = std::net::Ipv4Addr::LOCALHOST;
        let members: Vec<Member> = ports
            .iter()
            .enumerate()
            .map(|(i, &(h, r))| {
                let id = i as u64 + 1;
                let http = SocketAddr::from((ip, h));
                Member {
                    id,
                    http,
                    raft: SocketAddr::from((ip, r)),
                    dir: root.join(format!("node-{id}")),
                    log: root.join(format!("node-{id}.log")),
                    child: None,
                    restarts: 0,
                    restart_at: None,
                    client: HttpClient::new(http, STATUS_TIMEOUT),
                }
            })
            .collect();
        let spec = members
            .iter()
            .map(|m| format!("{},{}", m.id, m.raft))
            .collect::<Vec<_>>()
            .join(";");
        Ok(Cluster {
            exe,
            spec,
            node_args: args.node_args.clone(),
            verbose: args.verbose,
            restart: args.restart,
            root,
            remove_root,
            members,
        })
    }

    /// Starts node `i` (again) with the operator's flags.
    fn spawn(&mut self, i: usize) -> Result<(), String> {
        let m = &self.members[i];
        let mut cmd = Command::new(&self.exe);
        cmd.arg("--node")
            .arg(i.to_string())
            .arg("--http")
            .arg(m.http.to_string())
            .arg("--cluster")
            .arg(&self.spec)
            .arg("--data-dir")
            .arg(&m.dir)
            .args(&self.node_args)
            .stdin(Stdio::null());
        if !self.verbose {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&m.log)
                .map_err(|e| format!("cannot open {}: {e}", m.log.display()))?;
            let log2 = log
                .try_clone()
                .map_err(|e| format!("cannot open {}: {e}", m.log.display()))?;
            cmd.stdout(log).stderr(log2);
        }
        detach(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.exe.display()))?;
        let m = &mut self.members[i];
        m.child = Some(child);
        m.restart_at = None;
        Ok(())
    }

    fn banner(&self) {
        let n = self.members.len();
        say!(
            "Hash Nimbus dev cluster: {n} node{} (Ctrl-C stops {})",
            if n == 1 { "" } else { "s" },
            if n == 1 { "it" } else { "them all" }
        );
        for m in &self.members {
            let pid = m.child.as_ref().map_or(0, Child::id);
            say!(
                "  node {}  http://{}  raft {}  pid {pid}",
                m.id,
                m.http,
                m.raft
            );
            let log = if self.verbose {
                "this terminal".to_string()
            } else {
                m.log.display().to_string()
            };
            say!("          data {}  log {log}", m.dir.display());
        }
        say!(
            "data under {} ({})",
            self.root.display(),
            if self.remove_root {
                "removed on exit; --keep keeps it"
            } else {
                "kept on exit"
            }
        );
        let url = |i: usize| format!("http://{}", self.members[i % n].http);
        say!("try:");
        say!("  curl \"{}/set?key=test&value=success\"", url(0));
        say!("  curl \"{}/get?key=test\"", url(1));
        say!("  curl \"{}/status\"", url(2));
        say!("  curl \"{}/metrics\"", url(0));
        say!("waiting for a leader...");
    }

    /// Watches the nodes until a signal (status 0) or a failure (status 1).
    fn watch(&mut self, signals: &mut signal_hook::iterator::Signals) -> u8 {
        let started = Instant::now();
        let mut next_poll = started;
        let mut leader_seen = false;
        let mut shown: Option<(u64, u64)> = None;
        loop {
            if let Some(sig) = signals.pending().next() {
                say!("signal {sig}: stopping the nodes");
                return 0;
            }
            if let Some(code) = self.reap(leader_seen) {
                return code;
            }
            let now = Instant::now();
            for i in 0..self.members.len() {
                if self.members[i].restart_at.is_some_and(|t| now >= t) {
                    match self.spawn(i) {
                        Ok(()) => {
                            let m = &self.members[i];
                            let pid = m.child.as_ref().map_or(0, Child::id);
                            say!("node {} restarted (pid {pid})", m.id);
                        }
                        Err(e) => say!("node {}: {e}; not restarting it", i + 1),
                    }
                }
            }
            if self
                .members
                .iter()
                .all(|m| m.child.is_none() && m.restart_at.is_none())
            {
                say!("no node is running any more");
                return 1;
            }
            if now >= next_poll {
                next_poll = now + POLL_EVERY;
                let views = self.poll();
                let leader = current_leader(&views);
                if leader != shown {
                    match leader {
                        Some((id, term)) => {
                            let url = self
                                .members
                                .iter()
                                .find(|m| m.id == id)
                                .map_or_else(|| "?".into(), |m| format!("http://{}", m.http));
                            say!("leader is node {id} ({url}), term {term}");
                        }
                        None => say!("no leader known right now (an election is under way)"),
                    }
                    shown = leader;
                }
                leader_seen |= leader.is_some();
                if !leader_seen && started.elapsed() > START_TIMEOUT {
                    say!(
                        "no leader after {} s; see the nodes' logs",
                        START_TIMEOUT.as_secs()
                    );
                    return 1;
                }
            }
            std::thread::sleep(STEP);
        }
    }

    /// Notices nodes that exited. Before the first leader that is a start-up failure (`Some(1)`).
    fn reap(&mut self, leader_seen: bool) -> Option<u8> {
        for m in &mut self.members {
            let Some(child) = m.child.as_mut() else {
                continue;
            };
            let status = match child.try_wait() {
                Ok(Some(s)) => s,
                Ok(None) => continue,
                Err(e) => {
                    say!("node {}: cannot check on it: {e}", m.id);
                    continue;
                }
            };
            let pid = child.id();
            m.child = None;
            if !leader_seen {
                say!(
                    "node {} (pid {pid}) exited during start-up ({}); stopping the others",
                    m.id,
                    describe(status)
                );
                if !self.verbose {
                    say!("last lines of {}:", m.log.display());
                    for line in tail(&m.log, 8) {
                        say!("  {line}");
                    }
                }
                return Some(1);
            }
            say!(
                "node {} (pid {pid}) exited unexpectedly ({}); log: {}",
                m.id,
                describe(status),
                if self.verbose {
                    "above".to_string()
                } else {
                    m.log.display().to_string()
                }
            );
            if self.restart && m.restarts < MAX_RESTARTS {
                m.restarts += 1;
                m.restart_at = Some(Instant::now() + RESTART_DELAY);
                say!(
                    "restarting node {} in {} s (restart {} of {MAX_RESTARTS})",
                    m.id,
                    RESTART_DELAY.as_secs(),
                    m.restarts
                );
            } else if self.restart {
                say!(
                    "node {} restarted {MAX_RESTARTS} times already; leaving it stopped",
                    m.id
                );
            } else {
                say!("the other nodes keep serving (nimbus dev --restart would start it again)");
            }
        }
        None
    }

    /// Each running node's view of the leader (nodes that do not answer are left out).
    fn poll(&mut self) -> Vec<View> {
        let mut views = Vec::new();
        for m in &mut self.members {
            if m.child.is_none() {
                continue;
            }
            let Ok(resp) = m.client.get("/status") else {
                continue;
            };
            if resp.status != 200 {
                continue;
            }
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&resp.body) else {
                continue;
            };
            views.push(View {
                term: v["term"].as_u64().unwrap_or(0),
                leader: v["leader"].as_u64(),
            });
        }
        views
    }

    /// SIGTERM to every running node, up to [`STOP_GRACE`] for them to exit (less if another signal
    /// comes), SIGKILL for the rest; then the temporary data goes.
    fn stop(&mut self, signals: &mut signal_hook::iterator::Signals) {
        for m in &mut self.members {
            m.restart_at = None;
            if let Some(c) = &m.child {
                send_signal(c, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        loop {
            for m in &mut self.members {
                if let Some(c) = m.child.as_mut() {
                    if !matches!(c.try_wait(), Ok(None)) {
                        m.child = None;
                    }
                }
            }
            if self.members.iter().all(|m| m.child.is_none()) {
                break;
            }
            let hurry = signals.pending().next().is_some();
            if hurry || Instant::now() >= deadline {
                for m in &mut self.members {
                    if let Some(mut c) = m.child.take() {
                        say!(
                            "node {} (pid {}) did not stop{}: killing it",
                            m.id,
                            c.id(),
                            if hurry {
                                " before a second signal"
                            } else {
                                " within 10 s"
                            }
                        );
                        let _ = c.kill();
                        let _ = c.wait();
                    }
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        say!("all nodes stopped");
        if self.remove_root {
            match std::fs::remove_dir_all(&self.root) {
                Ok(()) => say!("removed {}", self.root.display()),
                Err(e) => say!("could not remove {}: {e}", self.root.display()),
            }
        } else {
            say!("data kept in {}", self.root.display());
        }
    }
}

/// "exit status 1", "killed by signal 9".
fn describe(s: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => s.to_string(),
    }
}

/// The last `n` lines of a file (reads at most its last 4 KiB).
fn tail(path: &Path, n: usize) -> Vec<String> {
    let mut buf = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let len = f.metadata().map_or(0, |m| m.len());
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(4096)));
        let _ = f.take(4096).read_to_end(&mut buf);
    }
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

fn send_signal(c: &Child, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(c.id()) else {
        return;
    };
    // SAFETY: kill(2) takes two integers and touches no memory of ours. The child has not been reaped
    // (its `Child` is still held), so the pid cannot have been reused by another process.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Own process group (a terminal's Ctrl-C reaches only `nimbus dev`, which then stops each node once);
/// on Linux, SIGTERM to the node should `nimbus dev` die.
fn detach(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    #[cfg(target_os = "linux")]
    {
        let parent = std::process::id();
        // SAFETY: the closure runs in the forked child before exec and calls only prctl(2) and getppid(2),
        // both async-signal-safe; it allocates nothing and touches no lock.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent died between fork and prctl: no signal will come, so do not start.
                if libc::getppid() as u32 != parent {
                    return Err(std::io::Error::other("nimbus dev exited"));
                }
                Ok(())
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_is_the_one_known_in_the_highest_term() {
        let v = |term, leader| View { term, leader };
        assert_eq!(current_leader(&[]), None);
        assert_eq!(current_leader(&[v(3, None), v(2, None)]), None);
        assert_eq!(
            current_leader(&[v(2, Some(1)), v(3, Some(2)), v(3, None)]),
            Some((2, 3))
        );
    }

    #[test]
    fn ports_from_a_base_or_the_os() {
        let p = plan_ports(3, None).unwrap();
        assert_eq!(p.len(), 3);
        let mut all: Vec<u16> = p.iter().flat_map(|&(h, r)| [h, r]).collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 6, "ports differ: {p:?}");
        assert!(plan_ports(3, Some(0)).is_err());
        let e = plan_ports(7, Some(65_000)).unwrap_err();
        assert!(e.contains("out of range"), "{e}");
    }

    #[test]
    fn tail_of_a_missing_file_is_empty() {
        assert!(tail(Path::new("/nonexistent/nimbus-dev.log"), 5).is_empty());
    }
}
