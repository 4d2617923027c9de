//! Three in-process Raft nodes over loopback TCP replicating a custom state machine (a FIFO queue of
//! strings), and a failover: the leader's node is stopped, the other two elect a new leader, proposals
//! continue, and the state is intact; the stopped node then restarts from its data directory and catches
//! up (from the leader's snapshot: the log it missed was compacted meanwhile).
//!
//! ```text
//! cargo run --release --example embedded
//! RUST_LOG=info cargo run --release --example embedded   # with the nodes' own log
//! ```
//!
//! `tests/embedded.rs` runs this same scenario (this file is compiled into it as a module), so every step
//! is an assertion: a step that does not go as described returns an error. Waits poll with a deadline.

use hash_nimbus::embed::{Config, Index, Node, NodeId, Role, SnapshotWriter, StateMachine};
use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// The replicated state: a FIFO queue of strings.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Queue {
    items: VecDeque<String>,
}

/// A command: `+item` pushes `item`, `-` pops the oldest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Push(String),
    Pop,
}

impl Op {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Op::Push(item) => [b"+", item.as_bytes()].concat(),
            Op::Pop => b"-".to_vec(),
        }
    }
}

/// What applying a command gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Pushed {
        len: usize,
    },
    Popped(Option<String>),
    /// Not a command of ours: applied as a no-op on every node alike.
    Invalid,
}

impl StateMachine for Queue {
    type Output = Output;

    fn apply(&mut self, _index: Index, command: &[u8]) -> Output {
        match command.split_first() {
            Some((b'+', item)) => match std::str::from_utf8(item) {
                Ok(item) => {
                    self.items.push_back(item.to_string());
                    Output::Pushed {
                        len: self.items.len(),
                    }
                }
                Err(_) => Output::Invalid,
            },
            Some((b'-', [])) => Output::Popped(self.items.pop_front()),
            _ => Output::Invalid,
        }
    }

    /// A clone on the Raft thread; the writer (on a background thread) writes each item as a `u32`
    /// length and its bytes.
    fn snapshot(&self) -> SnapshotWriter {
        let items = self.items.clone();
        Box::new(move |w| {
            for item in &items {
                w.write_all(&(item.len() as u32).to_le_bytes())?;
                w.write_all(item.as_bytes())?;
            }
            Ok(())
        })
    }

    fn restore(&mut self, _index: Index, snapshot: &mut dyn Read) -> io::Result<()> {
        let mut bytes = Vec::new();
        snapshot.read_to_end(&mut bytes)?;
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
        let mut items = VecDeque::new();
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let (len, tail) = rest.split_at_checked(4).ok_or_else(|| bad("torn length"))?;
            let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
            let (item, tail) = tail.split_at_checked(len).ok_or_else(|| bad("torn item"))?;
            let item = std::str::from_utf8(item).map_err(|_| bad("item is not UTF-8"))?;
            items.push_back(item.to_string());
            rest = tail;
        }
        self.items = items;
        Ok(())
    }
}

/// Three nodes in one process, each with its own data directory.
pub struct Cluster {
    _dir: tempfile::TempDir,
    configs: Vec<Config>,
    nodes: Vec<Option<Node<Queue>>>,
}

impl Cluster {
    /// Starts `n` nodes on free loopback ports (node ids 1..=n).
    pub fn start(n: u64) -> Res<Cluster> {
        let dir = tempfile::tempdir()?;
        let ports = free_ports(n as usize)?;
        let members: Vec<(NodeId, String)> = (1..=n)
            .zip(&ports)
            .map(|(id, port)| (id, format!("127.0.0.1:{port}")))
            .collect();
        let mut configs = Vec::new();
        let mut nodes = Vec::new();
        for id in 1..=n {
            let mut c = Config::new(id, members.clone(), dir.path().join(format!("n{id}")));
            c.tick = Duration::from_millis(20); // elections after 200-400 ms without a leader
            c.snapshot_entries = 10; // snapshot often, to show them off
            c.log_keep_entries = 4;
            nodes.push(Some(Node::start(c.clone(), Queue::default())?));
            configs.push(c);
        }
        Ok(Cluster {
            _dir: dir,
            configs,
            nodes,
        })
    }

    pub fn node(&self, id: NodeId) -> Res<&Node<Queue>> {
        self.nodes
            .get(id as usize - 1)
            .and_then(|n| n.as_ref())
            .ok_or_else(|| format!("node {id} is not running").into())
    }

    pub fn running(&self) -> Vec<NodeId> {
        (1..=self.nodes.len() as u64)
            .filter(|&id| self.nodes[id as usize - 1].is_some())
            .collect()
    }

    pub fn data_dir(&self, id: NodeId) -> PathBuf {
        self.configs[id as usize - 1].data_dir.clone()
    }

    /// Waits until every running node names the same running leader, which leads in its own eyes too.
    pub fn wait_for_leader(&self, timeout: Duration) -> Res<NodeId> {
        poll("a leader", timeout, || {
            let mut leaders = Vec::new();
            for id in self.running() {
                leaders.push(self.node(id).ok()?.status().ok()?.leader?);
            }
            let l = *leaders.first()?;
            let agreed = leaders.iter().all(|&x| x == l);
            let leads = self.node(l).ok()?.status().ok()?.role == Role::Leader;
            (agreed && leads).then_some(l)
        })
    }

    /// Stops a node at once (no leadership hand-over), as a crash would.
    pub fn halt(&mut self, id: NodeId) -> Res<()> {
        let node = self.nodes[id as usize - 1].take().ok_or("not running")?;
        node.halt()?;
        Ok(())
    }

    /// Starts a stopped node again on its data directory.
    pub fn restart(&mut self, id: NodeId) -> Res<()> {
        let c = self.configs[id as usize - 1].clone();
        self.nodes[id as usize - 1] = Some(Node::start(c, Queue::default())?);
        Ok(())
    }

    /// Stops every node gracefully.
    pub fn shutdown(mut self) -> Res<()> {
        for n in self.nodes.iter_mut() {
            if let Some(n) = n.take() {
                n.shutdown()?;
            }
        }
        Ok(())
    }
}

const TIMEOUT: Duration = Duration::from_secs(10);

fn push(node: &Node<Queue>, item: &str) -> Res<usize> {
    match node
        .propose(Op::Push(item.into()).encode(), TIMEOUT)?
        .output
    {
        Output::Pushed { len } => Ok(len),
        other => Err(format!("push {item}: {other:?}").into()),
    }
}

fn pop(node: &Node<Queue>) -> Res<Option<String>> {
    match node.propose(Op::Pop.encode(), TIMEOUT)?.output {
        Output::Popped(item) => Ok(item),
        other => Err(format!("pop: {other:?}").into()),
    }
}

/// The queue as a node sees it through a linearizable read.
fn contents(node: &Node<Queue>) -> Res<Vec<String>> {
    Ok(node.read(|q| q.items.iter().cloned().collect(), TIMEOUT)?)
}

fn expect_eq<T: PartialEq + std::fmt::Debug>(what: &str, got: T, want: T) -> Res<()> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: got {got:?}, expected {want:?}").into())
    }
}

fn jobs(range: std::ops::RangeInclusive<u32>) -> Vec<String> {
    range.map(|i| format!("job-{i}")).collect()
}

/// What the scenario saw.
#[derive(Debug)]
pub struct Summary {
    pub first_leader: NodeId,
    pub second_leader: NodeId,
    pub contents: Vec<String>,
}

/// The whole scenario on a started three-node cluster; `say` narrates.
pub fn scenario(cluster: &mut Cluster, say: &mut dyn FnMut(String)) -> Res<Summary> {
    let first = cluster.wait_for_leader(TIMEOUT)?;
    let follower = cluster
        .running()
        .into_iter()
        .find(|&id| id != first)
        .ok_or("no follower")?;
    say(format!(
        "node {first} leads; proposing through it and through follower {follower}"
    ));
    for (i, item) in jobs(1..=5).iter().enumerate() {
        // Alternate: a follower forwards its proposals to the leader and answers once it applied them.
        let via = if i % 2 == 0 { follower } else { first };
        expect_eq(
            &format!("length after {item}"),
            push(cluster.node(via)?, item)?,
            i + 1,
        )?;
    }
    expect_eq("pop", pop(cluster.node(follower)?)?, Some("job-1".into()))?;
    for id in cluster.running() {
        expect_eq(
            &format!("node {id}'s queue"),
            contents(cluster.node(id)?)?,
            jobs(2..=5),
        )?;
    }
    say(format!("every node reads {:?}", jobs(2..=5)));

    say(format!("stopping the leader, node {first}"));
    cluster.halt(first)?;
    let second = cluster.wait_for_leader(TIMEOUT)?;
    say(format!("node {second} was elected"));
    // Enough entries for snapshots that compact the log the stopped node misses.
    for (i, item) in jobs(6..=30).iter().enumerate() {
        let via = cluster.running()[i % 2];
        push(cluster.node(via)?, item)?;
    }
    expect_eq(
        "pop after failover",
        pop(cluster.node(second)?)?,
        Some("job-2".into()),
    )?;
    for id in cluster.running() {
        expect_eq(
            &format!("node {id}'s queue"),
            contents(cluster.node(id)?)?,
            jobs(3..=30),
        )?;
    }
    say("after the failover every running node reads job-3..job-30".into());

    say(format!("restarting node {first} on its data directory"));
    cluster.restart(first)?;
    // Its linearizable read waits until it has caught up with the leader.
    expect_eq(
        "restarted node's queue",
        contents(cluster.node(first)?)?,
        jobs(3..=30),
    )?;
    push(cluster.node(first)?, "job-31")?;
    let all = jobs(3..=31);
    for id in cluster.running() {
        expect_eq(
            &format!("node {id}'s queue"),
            contents(cluster.node(id)?)?,
            all.clone(),
        )?;
    }
    say(format!(
        "node {first} caught up; all three read {} jobs",
        all.len()
    ));
    Ok(Summary {
        first_leader: first,
        second_leader: second,
        contents: all,
    })
}

/// Polls `f` until it gives `Some`, failing after `timeout`.
pub fn poll<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Res<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(format!("no {what} within {timeout:?}").into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Distinct ports free a moment ago, below Linux's ephemeral range (so an outgoing connection never takes
/// the port of a node that restarts later).
pub fn free_ports(n: usize) -> Res<Vec<u16>> {
    let seed = std::process::id() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos() as u64;
    let mut rng = hash_nimbus::raft::Rng::new(seed);
    let mut held = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..10_000 {
        if ports.len() == n {
            return Ok(ports);
        }
        let port = 20_000 + rng.below(12_000) as u16;
        if ports.contains(&port) {
            continue;
        }
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            held.push(l);
            ports.push(port);
        }
    }
    Err(format!("found no {n} free ports").into())
}

fn main() -> Res<()> {
    // RUST_LOG=info shows the nodes' elections, snapshots and catch-up.
    env_logger::init();
    let mut cluster = Cluster::start(3)?;
    let summary = scenario(&mut cluster, &mut |line| println!("{line}"))?;
    println!(
        "leader {} -> {}, final queue: {:?}",
        summary.first_leader, summary.second_leader, summary.contents
    );
    cluster.shutdown()?;
    Ok(())
}
