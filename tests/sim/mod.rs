//! A deterministic simulated cluster for the Raft core, with a checker of the five Raft properties.
//!
//! Everything is driven by one seeded [`Rng`]: message loss, duplication, delay (hence reordering),
//! partitions, crashes and restarts. Nodes are iterated in id order and messages kept in a queue ordered by
//! (delivery tick, sequence), so a seed replays exactly.
//!
//! A crashed node keeps only what it persisted (its simulated disk: hard state, entries and its newest
//! snapshot); its state machine is rebuilt on restart from the snapshot and by re-applying committed entries.
//!
//! Snapshots (when [`Sim::snapshots`] is set): a node snapshots its state machine every so many applied
//! entries, then compacts its log and its disk, keeping a tail. A leader's `InstallSnapshot` is answered with
//! the snapshot of that index (every snapshot at an index has the same content, which is checked); the leader
//! learns the transfer's end when the message is delivered or lost.
//!
//! Properties checked after every delivery and tick (paper Figure 3):
//! - Election Safety: at most one leader per term.
//! - Leader Append-Only: a leader never overwrites or deletes entries in its log.
//! - Log Matching: two entries with the same index and term have the same command and the same prefix
//!   (checked as: same command and same previous term, for every entry any node ever persists).
//! - Leader Completeness: a leader holds every entry committed in an earlier or equal term.
//! - State Machine Safety: no two nodes apply different entries at the same index.
#![allow(dead_code)]

use hash_nimbus::raft::*;
use std::collections::{BTreeMap, BTreeSet};

/// Network fault rates (per mille) and delays, all in ticks.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    pub drop_per_mille: u64,
    pub dup_per_mille: u64,
    /// Each message is delayed by a uniform 0..=max_delay ticks (so messages reorder).
    pub max_delay: u64,
}

#[derive(Debug, Clone, Default)]
pub struct Disk {
    pub hard_state: HardState,
    /// Contiguous entries, after the newest snapshot's compaction point.
    pub entries: Vec<Entry>,
    pub snapshot: Option<SimSnapshot>,
}

impl Disk {
    fn term(&self, index: Index) -> Option<Term> {
        if let Some(s) = &self.snapshot {
            if s.meta.index == index {
                return Some(s.meta.term);
            }
        }
        let first = self.entries.first()?.index;
        if index < first {
            return None;
        }
        self.entries.get((index - first) as usize).map(|e| e.term)
    }
}

/// A snapshot of a simulated state machine: every applied command up to `meta.index`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimSnapshot {
    pub meta: SnapshotMeta,
    /// The membership at `meta.index`, with its context.
    pub membership: (Membership, Vec<u8>),
    pub applied: Vec<(Index, Term, Vec<u8>)>,
}

/// When nodes snapshot: every `every` applied entries, keeping `keep` entries before the snapshot.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotPolicy {
    pub every: u64,
    pub keep: u64,
}

pub struct SimNode {
    pub raft: Option<Raft>,
    pub disk: Disk,
    /// The state machine: (index, term, command) of every applied command entry, in order.
    pub applied: Vec<(Index, Term, Vec<u8>)>,
    pub applied_index: Index,
    /// Proposals appended on this node (request id -> (index, term)), waiting to be applied.
    waiting: BTreeMap<u64, (Index, Term, Vec<u8>)>,
    /// Reads confirmed at an index, waiting for apply: request id -> (index, invoked at tick).
    reads_waiting: BTreeMap<u64, Index>,
    restarts: u64,
}

struct InFlight {
    at: u64,
    seq: u64,
    msg: Message,
}

/// What happened to a client request, for the tests to inspect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A write applied on the node it was proposed to: (index, term).
    Written(Index, Term),
    /// A read answered: the index the state machine had applied when it answered.
    Read(Index),
    Failed(RequestError),
    /// The write's entry was overwritten by another term.
    Lost,
}

pub struct Sim {
    pub nodes: BTreeMap<NodeId, SimNode>,
    pub now: u64,
    pub rng: Rng,
    pub faults: Faults,
    seed: u64,
    net: Vec<InFlight>,
    seq: u64,
    /// Node groups that can talk; `None` = everyone.
    partition: Option<Vec<BTreeSet<NodeId>>>,
    /// When false, messages are held until `deliver_all` (scripted scenarios).
    pub auto_deliver: bool,
    cfg: Box<dyn Fn(&mut Config)>,
    /// The voters every node boots with (before its log says otherwise); all nodes by default.
    pub initial_voters: BTreeSet<NodeId>,
    pub trace: Option<Vec<String>>,
    /// Print every trace line to stderr (set `TRACE=1` when replaying a seed).
    pub print_trace: bool,
    /// When set, every message a node sends is also recorded here (the golden scenarios print them).
    pub sent: Option<Vec<Message>>,
    next_request: u64,
    /// Request id -> (node, invoked at, kind write/read, write payload).
    requests: BTreeMap<u64, (NodeId, u64, Option<Vec<u8>>)>,
    pub outcomes: BTreeMap<u64, Outcome>,
    /// Snapshot and compact the logs (`None`: never).
    pub snapshots: Option<SnapshotPolicy>,
    /// Every snapshot taken, by index (all nodes' snapshots at one index must be equal).
    snapshots_taken: BTreeMap<Index, SimSnapshot>,
    /// Snapshot transfers that ended, to report to the leader at the next safe point: (leader, peer, ok).
    snapshot_reports: Vec<(NodeId, NodeId, bool)>,
    /// Logical event counter: request invocations and completions are ordered by it.
    events: u64,
    completed_at: BTreeMap<u64, u64>,
    // Checker state.
    leaders_by_term: BTreeMap<Term, NodeId>,
    leader_seen: BTreeMap<NodeId, (Term, Index, Term)>,
    entries_seen: BTreeMap<(Index, Term), (Term, Vec<u8>)>,
    /// index -> (entry term, the lowest current term of a node that saw it committed).
    committed: BTreeMap<Index, (Term, Term)>,
    applied_global: BTreeMap<Index, (Term, Vec<u8>)>,
    pub stats: Stats,
}

#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub delivered: u64,
    pub dropped: u64,
    pub elections: u64,
    pub writes_acked: u64,
    pub reads_ok: u64,
    /// Reads answered from a leader's lease.
    pub lease_reads: u64,
    pub snapshots: u64,
    pub snapshots_installed: u64,
    /// Membership changes appended.
    pub membership_changes: u64,
    /// AppendResponse rejections delivered.
    pub append_rejects: u64,
}

fn command_of(e: &Entry) -> Vec<u8> {
    match &e.kind {
        EntryKind::Noop => Vec::new(),
        EntryKind::Command(c) => c.clone(),
        EntryKind::Config {
            membership,
            context,
        } => format!("config {membership:?} {context:?}").into_bytes(),
    }
}

impl Sim {
    /// `n` nodes with ids 1..=n. `tune` adjusts each node's config.
    pub fn new(n: u64, seed: u64, tune: impl Fn(&mut Config) + 'static) -> Sim {
        Self::with_voters(n, (1..=n).collect(), seed, tune)
    }

    /// `n` nodes of which only `voters` form the initial cluster; the others wait to be added.
    pub fn with_voters(
        n: u64,
        voters: BTreeSet<NodeId>,
        seed: u64,
        tune: impl Fn(&mut Config) + 'static,
    ) -> Sim {
        let mut sim = Sim {
            initial_voters: voters,
            nodes: BTreeMap::new(),
            now: 0,
            rng: Rng::new(seed),
            faults: Faults::default(),
            seed,
            net: Vec::new(),
            seq: 0,
            partition: None,
            auto_deliver: true,
            cfg: Box::new(tune),
            trace: None,
            print_trace: std::env::var("TRACE").is_ok(),
            sent: None,
            next_request: 1,
            requests: BTreeMap::new(),
            outcomes: BTreeMap::new(),
            snapshots: None,
            snapshots_taken: BTreeMap::new(),
            snapshot_reports: Vec::new(),
            events: 0,
            completed_at: BTreeMap::new(),
            leaders_by_term: BTreeMap::new(),
            leader_seen: BTreeMap::new(),
            entries_seen: BTreeMap::new(),
            committed: BTreeMap::new(),
            applied_global: BTreeMap::new(),
            stats: Stats::default(),
        };
        for id in 1..=n {
            sim.nodes.insert(
                id,
                SimNode {
                    raft: None,
                    disk: Disk::default(),
                    applied: Vec::new(),
                    applied_index: 0,
                    waiting: BTreeMap::new(),
                    reads_waiting: BTreeMap::new(),
                    restarts: 0,
                },
            );
        }
        for id in 1..=n {
            sim.boot(id);
        }
        sim
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    fn boot(&mut self, id: NodeId) {
        let mut cfg = Config::new(id, self.initial_voters.iter().copied());
        (self.cfg)(&mut cfg);
        let node = self.nodes.get_mut(&id).unwrap();
        let meta = node
            .disk
            .snapshot
            .as_ref()
            .map(|s| s.meta)
            .unwrap_or_default();
        let init = InitialState {
            hard_state: node.disk.hard_state,
            snapshot_index: meta.index,
            snapshot_term: meta.term,
            entries: node
                .disk
                .entries
                .iter()
                .filter(|e| e.index > meta.index)
                .cloned()
                .collect(),
            applied: meta.index,
            snapshot_membership: node.disk.snapshot.as_ref().map(|s| s.membership.clone()),
        };
        node.restarts += 1;
        let node_seed = self.seed ^ (id << 32) ^ node.restarts.wrapping_mul(0x9E37_79B9);
        node.raft = Some(Raft::new(cfg, init, node_seed).expect("valid config"));
        node.applied = node
            .disk
            .snapshot
            .as_ref()
            .map(|s| s.applied.clone())
            .unwrap_or_default();
        node.applied_index = meta.index;
        node.waiting.clear();
        node.reads_waiting.clear();
    }

    pub fn log(&mut self, line: String) {
        if self.print_trace {
            eprintln!("[tick {}] {line}", self.now);
        }
        if let Some(t) = &mut self.trace {
            t.push(line);
        }
    }

    pub fn raft(&self, id: NodeId) -> &Raft {
        self.nodes[&id].raft.as_ref().expect("node is up")
    }

    pub fn is_up(&self, id: NodeId) -> bool {
        self.nodes[&id].raft.is_some()
    }

    // ---- Faults ----

    pub fn crash(&mut self, id: NodeId) {
        self.log(format!("crash n{id}"));
        let node = self.nodes.get_mut(&id).unwrap();
        node.raft = None;
        // Its pending client requests die with it.
        let ids: Vec<u64> = node
            .waiting
            .keys()
            .chain(node.reads_waiting.keys())
            .copied()
            .collect();
        for r in ids {
            self.outcomes
                .entry(r)
                .or_insert(Outcome::Failed(RequestError::LeaderChanged));
        }
        let lost: Vec<(NodeId, NodeId)> = self
            .net
            .iter()
            .filter(|f| f.msg.to == id && matches!(f.msg.body, MessageBody::InstallSnapshot { .. }))
            .map(|f| (f.msg.from, id))
            .collect();
        for (leader, peer) in lost {
            self.snapshot_reports.push((leader, peer, false));
        }
        self.net.retain(|f| f.msg.to != id);
    }

    pub fn restart(&mut self, id: NodeId) {
        if self.is_up(id) {
            return;
        }
        self.log(format!("restart n{id}"));
        self.boot(id);
        self.process(id);
    }

    pub fn partition(&mut self, groups: Vec<BTreeSet<NodeId>>) {
        self.log(format!("partition {groups:?}"));
        self.partition = Some(groups);
    }

    pub fn heal(&mut self) {
        self.log("heal".to_string());
        self.partition = None;
    }

    fn connected(&self, a: NodeId, b: NodeId) -> bool {
        match &self.partition {
            None => true,
            Some(groups) => groups.iter().any(|g| g.contains(&a) && g.contains(&b)),
        }
    }

    // ---- Clients ----

    /// Proposes one command on `id`; returns the request id.
    pub fn propose(&mut self, id: NodeId, data: Vec<u8>) -> u64 {
        let r = self.next_request;
        self.next_request += 1;
        self.events += 1;
        self.requests
            .insert(r, (id, self.events, Some(data.clone())));
        match self.nodes.get_mut(&id).unwrap().raft.as_mut() {
            Some(raft) => raft.propose(r, vec![data]),
            None => {
                self.outcomes
                    .insert(r, Outcome::Failed(RequestError::NotLeader { leader: None }));
                return r;
            }
        }
        self.process(id);
        r
    }

    /// Asks node `id` for a membership change; returns the request id (its outcome is `Written` once the
    /// configuration entry is applied there, or `Failed` with the reason).
    pub fn change_membership(&mut self, id: NodeId, change: MembershipChange) -> u64 {
        let r = self.next_request;
        self.next_request += 1;
        self.events += 1;
        self.requests.insert(r, (id, self.events, None));
        self.log(format!("n{id}: membership change {change:?} (r{r})"));
        match self.nodes.get_mut(&id).unwrap().raft.as_mut() {
            Some(raft) => raft.propose_membership(r, change, Vec::new()),
            None => {
                self.outcomes
                    .insert(r, Outcome::Failed(RequestError::NotLeader { leader: None }));
                return r;
            }
        }
        self.process(id);
        if !matches!(self.outcomes.get(&r), Some(Outcome::Failed(_))) {
            self.stats.membership_changes += 1;
        }
        r
    }

    /// Starts `n` linearizable reads on `id` in one driver turn; returns their request ids.
    pub fn read_batch(&mut self, id: NodeId, n: usize) -> Vec<u64> {
        let mut ids = Vec::new();
        for _ in 0..n {
            let r = self.next_request;
            self.next_request += 1;
            self.events += 1;
            self.requests.insert(r, (id, self.events, None));
            self.nodes
                .get_mut(&id)
                .unwrap()
                .raft
                .as_mut()
                .expect("node is up")
                .read_index(r);
            ids.push(r);
        }
        self.process(id);
        ids
    }

    /// Starts a linearizable read on `id`; returns the request id.
    pub fn read(&mut self, id: NodeId) -> u64 {
        let r = self.next_request;
        self.next_request += 1;
        self.events += 1;
        self.requests.insert(r, (id, self.events, None));
        match self.nodes.get_mut(&id).unwrap().raft.as_mut() {
            Some(raft) => raft.read_index(r),
            None => {
                self.outcomes
                    .insert(r, Outcome::Failed(RequestError::NotLeader { leader: None }));
                return r;
            }
        }
        self.process(id);
        r
    }

    /// Starts a read on `id` that uses the leader's lease when it holds one (answered at the lease's index
    /// once applied, no heartbeat round), and the read index otherwise; returns the request id.
    pub fn read_lease(&mut self, id: NodeId) -> u64 {
        let lease = self.nodes[&id].raft.as_ref().and_then(|r| r.lease_read());
        let Some(index) = lease else {
            return self.read(id);
        };
        let r = self.next_request;
        self.next_request += 1;
        self.events += 1;
        self.requests.insert(r, (id, self.events, None));
        self.stats.lease_reads += 1;
        self.nodes
            .get_mut(&id)
            .unwrap()
            .reads_waiting
            .insert(r, index);
        self.answer_waiting(id);
        r
    }

    // ---- Driving ----

    /// Runs the driver contract on node `id` until it has nothing ready.
    pub fn process(&mut self, id: NodeId) {
        for _ in 0..1000 {
            let Some(raft) = self.nodes.get_mut(&id).unwrap().raft.as_mut() else {
                return;
            };
            if !raft.has_ready() {
                break;
            }
            let rd = raft.ready();
            self.handle_ready(id, rd);
            self.nodes
                .get_mut(&id)
                .unwrap()
                .raft
                .as_mut()
                .unwrap()
                .advance();
            self.maybe_snapshot(id);
            self.check(id);
        }
    }

    /// Takes a snapshot of node `id`'s state machine if the policy says it is time, then compacts.
    fn maybe_snapshot(&mut self, id: NodeId) {
        let Some(policy) = self.snapshots else {
            return;
        };
        let node = self.nodes.get_mut(&id).unwrap();
        let Some(raft) = node.raft.as_mut() else {
            return;
        };
        let index = node.applied_index;
        let last = node.disk.snapshot.as_ref().map_or(0, |s| s.meta.index);
        if index < last + policy.every {
            return;
        }
        let term = raft.log().term(index).expect("applied entry held");
        raft.compact(index, policy.keep).expect("compact");
        let (m, c) = raft.snapshot_membership();
        let snap = SimSnapshot {
            meta: SnapshotMeta { index, term },
            membership: (m.clone(), c.to_vec()),
            applied: node.applied.clone(),
        };
        let through = index.saturating_sub(policy.keep);
        node.disk.entries.retain(|e| e.index > through);
        node.disk.snapshot = Some(snap.clone());
        match self.snapshots_taken.get(&index) {
            Some(other) => assert_eq!(
                other, &snap,
                "two snapshots at index {index} differ (n{id}, seed {})",
                self.seed
            ),
            None => {
                self.snapshots_taken.insert(index, snap);
            }
        }
        self.stats.snapshots += 1;
    }

    /// Node `id` accepted the snapshot at `meta`: its state machine and disk become the snapshot's.
    fn install_snapshot(&mut self, id: NodeId, meta: SnapshotMeta) {
        let snap = self
            .snapshots_taken
            .get(&meta.index)
            .cloned()
            .unwrap_or_else(|| panic!("n{id} installs a snapshot at {} nobody took", meta.index));
        assert_eq!(
            snap.meta, meta,
            "snapshot term differs (seed {})",
            self.seed
        );
        // State Machine Safety for everything the snapshot carries.
        for (index, term, cmd) in &snap.applied {
            if let Some((t, c)) = self.applied_global.get(index) {
                assert!(
                    t == term && c == cmd,
                    "snapshot at {} disagrees with what was applied at {index} (seed {})",
                    meta.index,
                    self.seed
                );
            }
        }
        let node = self.nodes.get_mut(&id).unwrap();
        node.applied = snap.applied.clone();
        node.applied_index = meta.index;
        node.disk.entries.clear();
        node.disk.snapshot = Some(snap);
        self.stats.snapshots_installed += 1;
    }

    /// Tells leaders how their snapshot transfers ended (at a point where no node is mid-`ready`).
    fn report_snapshots(&mut self) {
        for (leader, peer, ok) in std::mem::take(&mut self.snapshot_reports) {
            if let Some(r) = self.nodes.get_mut(&leader).unwrap().raft.as_mut() {
                r.report_snapshot(peer, ok);
                self.process(leader);
            }
        }
    }

    fn handle_ready(&mut self, id: NodeId, rd: Ready) {
        // 1. Persist (check Log Matching on every entry that reaches a disk).
        for e in &rd.entries {
            let prev_term = if e.index == 1 {
                0
            } else {
                let node = &self.nodes[&id];
                // The previous entry is on disk (or is the snapshot's last) or earlier in this same batch.
                match rd.entries.iter().find(|x| x.index == e.index - 1) {
                    Some(x) => x.term,
                    None => node.disk.term(e.index - 1).unwrap_or(u64::MAX),
                }
            };
            let key = (e.index, e.term);
            let val = (prev_term, command_of(e));
            match self.entries_seen.get(&key) {
                Some(seen) => assert_eq!(
                    seen, &val,
                    "Log Matching violated at index {} term {} on n{id} (seed {})",
                    e.index, e.term, self.seed
                ),
                None => {
                    self.entries_seen.insert(key, val);
                }
            }
        }
        if let Some(meta) = rd.snapshot {
            self.install_snapshot(id, meta);
        }
        let node = self.nodes.get_mut(&id).unwrap();
        if let Some(first) = rd.entries.first() {
            let keep = node
                .disk
                .entries
                .iter()
                .position(|x| x.index >= first.index)
                .unwrap_or(node.disk.entries.len());
            node.disk.entries.truncate(keep);
            if let Some(last) = node.disk.entries.last() {
                assert_eq!(last.index + 1, first.index, "a gap on n{id}'s disk");
            }
            node.disk.entries.extend(rd.entries.iter().cloned());
        }
        if let Some(hs) = rd.hard_state {
            node.disk.hard_state = hs;
        }
        // 2. Send.
        for m in rd.messages {
            self.send(m);
        }
        // 3. Apply (check State Machine Safety).
        let term_now = self.nodes[&id].raft.as_ref().unwrap().term();
        for e in &rd.committed {
            let cmd = command_of(e);
            match self.applied_global.get(&e.index) {
                Some((t, c)) => assert!(
                    *t == e.term && *c == cmd,
                    "State Machine Safety violated at index {} on n{id}: applied t{} but another node applied t{t} (seed {})",
                    e.index, e.term, self.seed
                ),
                None => {
                    self.applied_global.insert(e.index, (e.term, cmd.clone()));
                }
            }
            let c = self.committed.entry(e.index).or_insert((e.term, term_now));
            assert_eq!(
                c.0, e.term,
                "two terms committed at index {} (seed {})",
                e.index, self.seed
            );
            c.1 = c.1.min(term_now);
            let node = self.nodes.get_mut(&id).unwrap();
            assert_eq!(
                e.index,
                node.applied_index + 1,
                "apply out of order on n{id}"
            );
            node.applied_index = e.index;
            if matches!(e.kind, EntryKind::Command(_) | EntryKind::Config { .. }) {
                node.applied.push((e.index, e.term, command_of(e)));
            }
        }
        // 4. Answer clients.
        for p in rd.proposed {
            let node = self.nodes.get_mut(&id).unwrap();
            match p.result {
                Ok((index, term)) => {
                    let data = self.requests[&p.request_id].2.clone().unwrap_or_default();
                    node.waiting.insert(p.request_id, (index, term, data));
                }
                Err(e) => {
                    self.outcomes.insert(p.request_id, Outcome::Failed(e));
                }
            }
        }
        for r in rd.reads {
            match r.result {
                Ok(index) => {
                    self.nodes
                        .get_mut(&id)
                        .unwrap()
                        .reads_waiting
                        .insert(r.request_id, index);
                }
                Err(e) => {
                    self.outcomes.insert(r.request_id, Outcome::Failed(e));
                }
            }
        }
        self.answer_waiting(id);
    }

    fn answer_waiting(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).unwrap();
        let applied = node.applied_index;
        let mut done = Vec::new();
        for (&r, (index, term, data)) in &node.waiting {
            if *index <= applied {
                let ok = node
                    .applied
                    .iter()
                    .rev()
                    .find(|(i, _, _)| i == index)
                    // A membership change (no data) matches the configuration entry at its index.
                    .is_some_and(|(_, t, c)| {
                        t == term && (c == data || (data.is_empty() && c.starts_with(b"config")))
                    });
                done.push((
                    r,
                    if ok {
                        Outcome::Written(*index, *term)
                    } else {
                        Outcome::Lost
                    },
                ));
            }
        }
        for (&r, &index) in &node.reads_waiting {
            if index <= applied {
                done.push((r, Outcome::Read(applied)));
            }
        }
        for (r, o) in done {
            node.waiting.remove(&r);
            node.reads_waiting.remove(&r);
            self.events += 1;
            self.completed_at.insert(r, self.events);
            match o {
                Outcome::Written(..) => self.stats.writes_acked += 1,
                Outcome::Read(_) => self.stats.reads_ok += 1,
                _ => {}
            }
            self.outcomes.insert(r, o);
        }
    }

    fn send(&mut self, m: Message) {
        self.log(format!(
            "n{}->n{} t{} {}",
            m.from,
            m.to,
            m.term,
            short(&m.body)
        ));
        if let Some(sent) = &mut self.sent {
            sent.push(m.clone());
        }
        if !self.auto_deliver {
            self.seq += 1;
            self.net.push(InFlight {
                at: 0,
                seq: self.seq,
                msg: m,
            });
            return;
        }
        if self.rng.chance(self.faults.drop_per_mille, 1000) {
            self.stats.dropped += 1;
            if matches!(m.body, MessageBody::InstallSnapshot { .. }) {
                self.snapshot_reports.push((m.from, m.to, false));
            }
            return;
        }
        let copies = if self.rng.chance(self.faults.dup_per_mille, 1000) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = if self.faults.max_delay > 0 {
                self.rng.below(self.faults.max_delay + 1)
            } else {
                0
            };
            self.seq += 1;
            self.net.push(InFlight {
                at: self.now + delay,
                seq: self.seq,
                msg: m.clone(),
            });
        }
    }

    /// Delivers every message due now (including answers produced meanwhile), bounded.
    pub fn deliver_due(&mut self) {
        for _ in 0..100_000 {
            let now = self.now;
            let pos = self
                .net
                .iter()
                .enumerate()
                .filter(|(_, f)| f.at <= now)
                .min_by_key(|(_, f)| (f.at, f.seq))
                .map(|(i, _)| i);
            let Some(pos) = pos else {
                return;
            };
            let f = self.net.remove(pos);
            self.deliver(f.msg);
        }
        panic!(
            "message storm: more than 100000 deliveries in one tick (seed {})",
            self.seed
        );
    }

    /// Scripted mode: delivers everything queued now (not what it produces), in order.
    pub fn deliver_all(&mut self) {
        let mut batch = std::mem::take(&mut self.net);
        batch.sort_by_key(|f| (f.at, f.seq));
        for f in batch {
            self.deliver(f.msg);
        }
    }

    /// Scripted mode: delivers the queued messages that `keep` selects, in order; drops the others if
    /// `drop_rest`, else leaves them queued.
    pub fn deliver_where(&mut self, keep: impl Fn(&Message) -> bool, drop_rest: bool) {
        let mut batch = std::mem::take(&mut self.net);
        batch.sort_by_key(|f| (f.at, f.seq));
        let (now, later): (Vec<_>, Vec<_>) = batch.into_iter().partition(|f| keep(&f.msg));
        if !drop_rest {
            self.net = later;
        }
        for f in now {
            self.deliver(f.msg);
        }
    }

    /// Scripted mode: delivers until no message is queued (bounded).
    pub fn stabilize(&mut self) {
        for _ in 0..1000 {
            if self.net.is_empty() {
                return;
            }
            self.deliver_all();
        }
        panic!("messages still flowing after 1000 rounds");
    }

    /// Ticks one node only.
    pub fn tick_node(&mut self, id: NodeId) {
        if let Some(r) = self.nodes.get_mut(&id).unwrap().raft.as_mut() {
            r.tick();
            self.process(id);
        }
    }

    /// Ticks one node until it leaves the follower role (starts a pre-vote or an election), bounded.
    pub fn campaign(&mut self, id: NodeId) {
        for _ in 0..10_000 {
            if self.raft(id).role() != Role::Follower {
                return;
            }
            self.tick_node(id);
        }
        panic!("n{id} never campaigned");
    }

    /// Drops every queued message (scripted mode).
    pub fn drop_all(&mut self) {
        self.net.clear();
    }

    pub fn queued(&self) -> usize {
        self.net.len()
    }

    /// Scripted mode: the queued messages in delivery order.
    pub fn queued_messages(&self) -> Vec<Message> {
        let mut q: Vec<&InFlight> = self.net.iter().collect();
        q.sort_by_key(|f| (f.at, f.seq));
        q.into_iter().map(|f| f.msg.clone()).collect()
    }

    /// Scripted mode: removes and returns, in delivery order, the queued messages `take` selects (it sees
    /// them in that order, so it may count).
    pub fn take_queued(&mut self, mut take: impl FnMut(&Message) -> bool) -> Vec<Message> {
        let mut batch = std::mem::take(&mut self.net);
        batch.sort_by_key(|f| (f.at, f.seq));
        let mut taken = Vec::new();
        for f in batch {
            if take(&f.msg) {
                taken.push(f.msg);
            } else {
                self.net.push(f);
            }
        }
        taken
    }

    fn deliver(&mut self, m: Message) {
        let _ = self.deliver_msg(m);
    }

    /// Delivers one message now (scripted mode), or says why it was lost: the sender and receiver are on
    /// different sides of a partition, or the receiver is down.
    pub fn deliver_msg(&mut self, m: Message) -> Result<(), &'static str> {
        self.report_snapshots();
        let to = m.to;
        let snapshot = matches!(m.body, MessageBody::InstallSnapshot { .. });
        let why = if !self.connected(m.from, to) {
            Some("partitioned")
        } else if !self.is_up(to) {
            Some("down")
        } else {
            None
        };
        if snapshot {
            self.snapshot_reports.push((m.from, to, why.is_none()));
        }
        if let Some(why) = why {
            self.stats.dropped += 1;
            return Err(why);
        }
        self.stats.delivered += 1;
        if matches!(
            m.body,
            MessageBody::AppendResponse {
                reject: Some(_),
                ..
            }
        ) {
            self.stats.append_rejects += 1;
        }
        self.nodes
            .get_mut(&to)
            .unwrap()
            .raft
            .as_mut()
            .unwrap()
            .step(m);
        self.process(to);
        Ok(())
    }

    /// One tick: every live node ticks, then due messages are delivered.
    pub fn tick(&mut self) {
        self.report_snapshots();
        self.now += 1;
        for id in self.ids() {
            if let Some(r) = self.nodes.get_mut(&id).unwrap().raft.as_mut() {
                r.tick();
                self.process(id);
            }
        }
        if self.auto_deliver {
            self.deliver_due();
        }
    }

    pub fn run(&mut self, ticks: u64) {
        for _ in 0..ticks {
            self.tick();
        }
    }

    /// The leader of the highest term among live nodes, if that node is leader.
    pub fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter_map(|(&id, n)| n.raft.as_ref().map(|r| (id, r)))
            .filter(|(_, r)| r.is_leader())
            .max_by_key(|(_, r)| r.term())
            .map(|(id, _)| id)
    }

    // ---- The property checker ----

    fn check(&mut self, id: NodeId) {
        let seed = self.seed;
        let raft = self.nodes[&id].raft.as_ref().unwrap();
        let log = raft.log();
        assert!(
            log.applied() <= log.committed(),
            "applied > commit on n{id} (seed {seed})"
        );
        if raft.is_leader() {
            let term = raft.term();
            // Election Safety.
            let l = *self.leaders_by_term.entry(term).or_insert(id);
            assert_eq!(
                l, id,
                "Election Safety violated: n{l} and n{id} both lead t{term} (seed {seed})"
            );
            // Leader Append-Only.
            let (last, last_term) = (log.last_index(), log.last_term());
            match self.leader_seen.get(&id) {
                Some(&(t, i, it)) if t == term => {
                    assert!(
                        last >= i && (i < log.snapshot_index() || log.term(i) == Some(it)),
                        "Leader Append-Only violated on n{id} t{term}: had {i}/t{it}, now last {last} (seed {seed})"
                    );
                }
                _ => {
                    self.stats.elections += 1;
                    // Leader Completeness, full check at election.
                    // (Entries compacted into its snapshot are checked through the snapshot's content.)
                    for (&index, &(eterm, cterm)) in &self.committed {
                        if cterm <= term && index >= log.snapshot_index() {
                            assert_eq!(
                                log.term(index),
                                Some(eterm),
                                "Leader Completeness violated: n{id} leads t{term} without committed {index}/t{eterm} (seed {seed})"
                            );
                        }
                    }
                }
            }
            self.leader_seen.insert(id, (term, last, last_term));
            // Leader Completeness, cheap check each step: the highest committed entry.
            if let Some((&index, &(eterm, cterm))) = self.committed.iter().next_back() {
                if cterm <= term && index >= log.snapshot_index() {
                    assert_eq!(
                        log.term(index),
                        Some(eterm),
                        "Leader Completeness violated: n{id} t{term} lacks committed {index}/t{eterm} (seed {seed})"
                    );
                }
            }
        }
    }

    /// After faults stop: one leader, everyone follows it, every log and state machine identical, and every
    /// acknowledged write applied everywhere.
    pub fn check_converged(&self) -> Result<(), String> {
        let leader = self.leader().ok_or("no leader")?;
        let lr = self.raft(leader);
        for (&id, n) in &self.nodes {
            let r = n.raft.as_ref().ok_or(format!("n{id} is down"))?;
            if r.term() != lr.term() || r.leader() != Some(leader) {
                return Err(format!(
                    "n{id} at t{} follows {:?}, leader n{leader} at t{}",
                    r.term(),
                    r.leader(),
                    lr.term()
                ));
            }
            if r.log().last_index() != lr.log().last_index()
                || r.log().committed() != lr.log().last_index()
            {
                return Err(format!(
                    "n{id} last {} commit {}, leader last {}",
                    r.log().last_index(),
                    r.log().committed(),
                    lr.log().last_index()
                ));
            }
            if n.applied_index != lr.log().last_index() {
                return Err(format!(
                    "n{id} applied {} of {}",
                    n.applied_index,
                    lr.log().last_index()
                ));
            }
            if n.applied != self.nodes[&leader].applied {
                return Err(format!("n{id} state machine differs from the leader's"));
            }
        }
        for (r, o) in &self.outcomes {
            if let Outcome::Written(index, term) = o {
                let (i, t, c) = self.nodes[&leader]
                    .applied
                    .iter()
                    .find(|(i, _, _)| i == index)
                    .ok_or(format!("acknowledged write {r} at {index} missing"))?;
                let Some(want) = self.requests[r].2.as_ref() else {
                    continue; // a membership change
                };
                if t != term || c != want || i != index {
                    return Err(format!("acknowledged write {r} at {index} replaced"));
                }
            }
        }
        Ok(())
    }

    /// Linearizability of reads against acknowledged writes: a read must reflect every write acknowledged
    /// before it was invoked. (Writes are appends to a list; a read returns the applied index.)
    pub fn check_reads(&self) -> Result<(), String> {
        let mut writes: Vec<(u64, Index)> = self
            .outcomes
            .iter()
            .filter_map(|(r, o)| match o {
                Outcome::Written(index, _) => Some((self.completed_at[r], *index)),
                _ => None,
            })
            .collect();
        writes.sort();
        for (r, o) in &self.outcomes {
            if let Outcome::Read(seen) = o {
                let invoked = self.requests[r].1;
                // The highest index among writes acknowledged before this read was invoked.
                let must_see = writes
                    .iter()
                    .take_while(|(at, _)| *at < invoked)
                    .map(|(_, i)| *i)
                    .max()
                    .unwrap_or(0);
                if *seen < must_see {
                    return Err(format!(
                        "stale read {r} on n{}: saw index {seen}, but a write at {must_see} was acknowledged before it began",
                        self.requests[r].0
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A compact rendering of a message body for traces.
pub fn short(b: &MessageBody) -> String {
    match b {
        MessageBody::PreVote {
            last_index,
            last_term,
        } => format!("PreVote last={last_index}/t{last_term}"),
        MessageBody::Vote {
            last_index,
            last_term,
            transfer,
        } => format!(
            "Vote last={last_index}/t{last_term}{}",
            if *transfer { " transfer" } else { "" }
        ),
        MessageBody::TimeoutNow => "TimeoutNow".to_string(),
        MessageBody::PreVoteResponse { granted } => format!("PreVoteResponse granted={granted}"),
        MessageBody::VoteResponse { granted } => format!("VoteResponse granted={granted}"),
        MessageBody::Append {
            prev_index,
            prev_term,
            entries,
            commit,
        } => {
            let es: Vec<String> = entries
                .iter()
                .map(|e| format!("{}/t{}", e.index, e.term))
                .collect();
            format!(
                "Append prev={prev_index}/t{prev_term} commit={commit} [{}]",
                es.join(" ")
            )
        }
        MessageBody::AppendResponse {
            index,
            reject: None,
        } => format!("AppendResponse ok match={index}"),
        MessageBody::AppendResponse {
            index,
            reject: Some(h),
        } => format!(
            "AppendResponse reject={index} hint=t{}@{}",
            h.conflict_term, h.conflict_index
        ),
        MessageBody::Heartbeat { commit, read_seq } => {
            format!("Heartbeat commit={commit} read_seq={read_seq}")
        }
        MessageBody::HeartbeatResponse { read_seq } => {
            format!("HeartbeatResponse read_seq={read_seq}")
        }
        MessageBody::InstallSnapshot {
            index, last_term, ..
        } => {
            format!("InstallSnapshot {index}/t{last_term}")
        }
        MessageBody::Propose {
            request_id,
            commands,
        } => format!("Propose req={request_id} n={}", commands.len()),
        MessageBody::ProposeResponse { request_id, result } => {
            format!("ProposeResponse req={request_id} {result:?}")
        }
        MessageBody::ReadIndex { request_id } => format!("ReadIndex req={request_id}"),
        MessageBody::ReadIndexResponse { request_id, result } => {
            format!("ReadIndexResponse req={request_id} {result:?}")
        }
    }
}
