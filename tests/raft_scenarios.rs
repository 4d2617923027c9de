//! Golden scenario tests for the Raft core: one readable script per Raft rule, in `tests/scenarios/*.txt`,
//! each run against the simulated cluster of `sim/` in scripted mode (messages wait in a queue until a
//! script delivers them; nodes tick only when told). The property checker of `sim/` runs underneath.
//!
//! # The file format
//!
//! A script is a sequence of commands, one per line. The lines after a command that start with `>` are the
//! output it must produce (the expected output is checked in with the script). Blank lines and lines
//! starting with `#` are comments and are kept as they are. A script passes when re-running its commands
//! reproduces every output line exactly; on a mismatch the test prints a diff (`-` expected, `+` actual)
//! with the file name and fails.
//!
//! To (re)generate the expected output after a deliberate change, run
//!
//! ```text
//! UPDATE_GOLDEN=1 cargo test --release --test raft_scenarios
//! ```
//!
//! which rewrites the `>` lines of every script with what the commands produce now (comments and commands
//! are left alone), then review the change with `git diff tests/scenarios`.
//!
//! Files named `BUG-*.txt` record known core bugs: their expected output is the correct behaviour, written by
//! hand, so they fail until the bug is fixed. They are not run by default (`RUN_BUG=1` runs them) and
//! `UPDATE_GOLDEN` never rewrites them. Every other file must have its own `#[test]` below (a test checks
//! that none is forgotten).
//!
//! Everything is deterministic (the seed of `cluster` drives every randomized election timeout), so a
//! script's output is the same on every run and every machine.
//!
//! # Commands
//!
//! Node ids are written `1` or `n1`. Optional arguments are `key=value`.
//!
//! - `cluster N [prevote=true] [checkquorum=true] [election=10] [heartbeat=1] [inflight=256]
//!   [maxentries=4096] [seed=1]` — a fresh cluster of nodes `1..=N` (replaces any previous one).
//! - `tick [N] [ID...]` — N (default 1) ticks of the given nodes (default: every live node), in id order.
//!   Messages they send are queued, not delivered.
//! - `campaign ID` — ticks one node until its election timeout fires and it starts an election (a pre-vote
//!   or a vote); prints how many ticks that took.
//! - `deliver [from=ID] [to=ID] [type=Name,...] [count=N]` — delivers, in order, the queued messages that
//!   match (all by default; at most N with `count`), but not the ones their delivery produces. Each
//!   delivered message is printed with, indented under it, what it caused.
//! - `elect ID` — `campaign`, then deliver only election messages until the node leads (campaigning again if
//!   it loses, e.g. after a rejection taught it a higher term). Prints only state changes; other messages
//!   stay queued.
//! - `stabilize [from=..] [to=..] [type=..]` — `deliver` again and again until no matching message is
//!   queued (bounded).
//! - `drop [from=ID] [to=ID] [type=Name,...] [count=N]` — removes matching queued messages unseen.
//! - `queue` — lists the queued messages.
//! - `run [N]` — N (default 1) rounds of: every live node ticks, then `stabilize`. Prints only state changes
//!   and client results, each prefixed with its round (a way to let time pass as in a real cluster).
//! - `partition 1 2 | 3 4 5` — only nodes on the same side can talk (a node not listed is alone);
//!   messages across are dropped when delivered. `heal` removes the partition.
//! - `crash ID` — the node loses everything but its disk (hard state and entries); messages to it are lost.
//!   `restart ID` — it boots from its disk and re-applies what it knew to be committed.
//! - `propose ID DATA [xN]` — a client write of DATA (the rest of the line) to node ID; prints its request
//!   id. With `xN`, N writes DATA1..DATAN, one after the other.
//! - `read ID [N]` — N (default 1) linearizable reads on node ID in one driver turn.
//! - `status [ID...]` — role, term, vote, leader, last index/term, commit and applied index.
//! - `log [ID...]` — every entry as `index/term:data` (`noop` for a leader's no-op), with the commit index.
//! - `progress ID` — the leader's view of each follower (match, next, probe/replicate).
//! - `outcomes` — every client request so far and its result (or `pending`).
//! - `stats` — messages delivered and dropped, per type, and rejected appends delivered, since the last
//!   `stats` (or `cluster`).
//! - Any command may end with `quiet`: then it prints only state changes and client results.
//!
//! # The output
//!
//! - A message: `n1->n2 t3 Append prev=4/t2 commit=4 [5-6/t3]` (sender, receiver, term, body). Entries are
//!   `index/term`, consecutive ones of a term as `first-last/term`. A rejected append answers
//!   `AppendResponse reject prev=P hint=tT@I`: the follower's entry at P has term T, whose first entry is at
//!   I (`t0` means its log ends before P, at I-1). Client messages (`Propose`, `ReadIndex` and their answers)
//!   carry no term.
//! - A state change: `n2: role=Follower term=3 vote=none leader=n1 last=6/t3 commit=6 applied=6`, listing
//!   only what changed.
//! - A client result: `r4 on n2: written at 6/t3` (the entry was applied with the term it was appended in),
//!   `read at applied=6`, `failed NotLeader (leader unknown)`, `failed LeaderChanged`, or `lost`.
//! - A message lost on delivery: `... (dropped: partitioned)` or `(dropped: down)`.
//! - Identical top-level lines of one command for messages sent or dropped (e.g. heartbeats sent over several
//!   ticks) are printed once, where they first occur, with `(xN)`.

mod sim;

use hash_nimbus::raft::*;
use sim::{Outcome, Sim};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

// ---- One test per scenario file ----

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run_scenario(stringify!($name));
            }
        )*
        const LISTED: &[&str] = &[$(stringify!($name)),*];
    };
}

scenarios!(
    election_basic,
    figure8,
    prevote_rejoin,
    check_quorum,
    conflict_hint,
    split_vote,
    read_index,
    forward_propose,
    restart,
    commit_once,
);

fn scenario_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios")
}

/// Every scenario file (other than `BUG-*`) has a test above, and every test its file.
#[test]
fn every_scenario_file_has_a_test() {
    let mut files = BTreeSet::new();
    for entry in std::fs::read_dir(scenario_dir()).expect("tests/scenarios exists") {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".txt") {
            if !stem.starts_with("BUG-") {
                files.insert(stem.to_string());
            }
        }
    }
    let listed: BTreeSet<String> = LISTED.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        files, listed,
        "tests/scenarios/*.txt and the scenarios!() list in tests/raft_scenarios.rs differ"
    );
}

/// The `BUG-*` files, only with `RUN_BUG=1`: they fail until the bug they show is fixed.
#[test]
fn known_bugs() {
    if std::env::var("RUN_BUG").is_err() {
        return;
    }
    let mut failed = Vec::new();
    for entry in std::fs::read_dir(scenario_dir()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if let Some(stem) = name
            .strip_prefix("BUG-")
            .and_then(|s| s.strip_suffix(".txt"))
        {
            let stem = format!("BUG-{stem}");
            if let Err(e) = check_file(&stem) {
                eprintln!("{e}");
                failed.push(stem);
            }
        }
    }
    assert!(failed.is_empty(), "failing: {failed:?}");
}

fn run_scenario(name: &str) {
    if let Err(e) = check_file(name) {
        panic!("{e}");
    }
}

/// Runs one file; with `UPDATE_GOLDEN` rewrites it (never a `BUG-*` file: its expected output is the
/// correct behaviour, written by hand), else compares. Err carries the report.
fn check_file(name: &str) -> Result<(), String> {
    let path = scenario_dir().join(format!("{name}.txt"));
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let actual = execute(&format!("{name}.txt"), &text)?;
    if actual == text {
        return Ok(());
    }
    if std::env::var("UPDATE_GOLDEN").is_ok() && !name.starts_with("BUG-") {
        std::fs::write(&path, &actual)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        eprintln!("updated {}", path.display());
        return Ok(());
    }
    Err(format!(
        "scenario tests/scenarios/{name}.txt: output differs (- expected, + actual); \
         rerun with UPDATE_GOLDEN=1 to accept\n{}",
        diff(&text, &actual)
    ))
}

/// Runs the commands of a script and returns the script with the actual output in place of the old one.
fn execute(file: &str, text: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut runner = Runner::default();
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.starts_with('>') {
            continue; // old output: replaced by the actual one
        }
        out.push_str(line);
        out.push('\n');
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let result = catch_unwind(AssertUnwindSafe(|| runner.command(trimmed)));
        let lines = match result {
            Ok(Ok(lines)) => lines,
            Ok(Err(e)) => return Err(format!("{file}:{}: `{trimmed}`: {e}", n + 1)),
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                return Err(format!("{file}:{}: `{trimmed}` panicked: {msg}", n + 1));
            }
        };
        for l in collapse(lines) {
            if l.text.is_empty() {
                out.push_str(">\n");
            } else {
                let _ = writeln!(out, "> {}{}", "  ".repeat(l.indent), l.text);
            }
        }
    }
    Ok(out)
}

// ---- Output lines ----

#[derive(Debug, Clone)]
struct Line {
    indent: usize,
    text: String,
    /// A message (sent, delivered or dropped): left out by `quiet`.
    msg: bool,
    /// May be merged with identical top-level lines of the same command (a message sent or dropped, never
    /// a delivered one: what it caused is printed under it).
    collapsible: bool,
}

impl Line {
    fn new(text: impl Into<String>) -> Line {
        Line {
            indent: 0,
            text: text.into(),
            msg: false,
            collapsible: false,
        }
    }

    /// A message sent or dropped.
    fn msg(text: impl Into<String>) -> Line {
        Line {
            msg: true,
            collapsible: true,
            ..Line::new(text)
        }
    }

    /// A message delivered: what it caused follows, indented.
    fn delivered(text: impl Into<String>) -> Line {
        Line {
            msg: true,
            ..Line::new(text)
        }
    }
}

/// Only the state changes and client results, all at the top level.
fn quieten(lines: Vec<Line>) -> Vec<Line> {
    lines
        .into_iter()
        .filter(|l| !l.msg)
        .map(|l| Line { indent: 0, ..l })
        .collect()
}

/// Merges identical top-level message lines into their first occurrence, with a count. Heartbeats that
/// differ only in their round number (every broadcast starts a round) merge too, showing the range of
/// rounds: `read_seq=3..9 (x7)`.
fn collapse(lines: Vec<Line>) -> Vec<Line> {
    let mut groups: BTreeMap<String, (usize, u64, u64)> = BTreeMap::new();
    for l in lines.iter().filter(|l| l.collapsible && l.indent == 0) {
        let (key, seq) = round_key(&l.text);
        let g = groups.entry(key).or_insert((0, u64::MAX, 0));
        g.0 += 1;
        if let Some(seq) = seq {
            g.1 = g.1.min(seq);
            g.2 = g.2.max(seq);
        }
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for mut l in lines {
        if l.collapsible && l.indent == 0 {
            let (key, seq) = round_key(&l.text);
            if !seen.insert(key.clone()) {
                continue;
            }
            let (n, lo, hi) = groups[&key];
            if let (Some(seq), true) = (seq, lo < hi) {
                l.text = l
                    .text
                    .replace(&format!("read_seq={seq}"), &format!("read_seq={lo}..{hi}"));
            }
            if n > 1 {
                l.text = format!("{} (x{n})", l.text);
            }
        }
        out.push(l);
    }
    out
}

/// A message line with its `read_seq=N` taken out, and N.
fn round_key(text: &str) -> (String, Option<u64>) {
    let Some(at) = text.find("read_seq=") else {
        return (text.to_string(), None);
    };
    let start = at + "read_seq=".len();
    let end = text[start..]
        .find(|c: char| !c.is_ascii_digit())
        .map_or(text.len(), |e| start + e);
    let seq = text[start..end].parse().ok();
    (
        format!(
            "{}read_seq=*{}",
            &text[..start - "read_seq=".len()],
            &text[end..]
        ),
        seq,
    )
}

/// A line diff (longest common subsequence), with three lines of context around each change.
fn diff(expected: &str, actual: &str) -> String {
    let a: Vec<&str> = expected.lines().collect();
    let b: Vec<&str> = actual.lines().collect();
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    // (kind, expected line number, text)
    let mut ops: Vec<(char, usize, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            ops.push((' ', i + 1, a[i]));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', i + 1, a[i]));
            i += 1;
        } else {
            ops.push(('+', i + 1, b[j]));
            j += 1;
        }
    }
    let changed: Vec<usize> = (0..ops.len()).filter(|&k| ops[k].0 != ' ').collect();
    let mut out = String::new();
    let mut last_printed: Option<usize> = None;
    for &k in &changed {
        let from = k.saturating_sub(3);
        let to = (k + 3).min(ops.len() - 1);
        let start = match last_printed {
            Some(p) if p + 1 >= from => p + 1,
            _ => {
                let _ = writeln!(out, "@@ line {} @@", ops[from].1);
                from
            }
        };
        for (kind, _, text) in ops.iter().take(to + 1).skip(start) {
            let _ = writeln!(out, "{kind}{text}");
        }
        last_printed = Some(last_printed.map_or(to, |p| p.max(to)));
    }
    out
}

// ---- Formatting ----

fn node(id: NodeId) -> String {
    if id == 0 {
        "none".into()
    } else {
        format!("n{id}")
    }
}

fn entries_summary(entries: &[Entry]) -> String {
    let mut groups: Vec<(Index, Index, Term)> = Vec::new();
    for e in entries {
        match groups.last_mut() {
            Some((_, last, t)) if *t == e.term && *last + 1 == e.index => *last = e.index,
            _ => groups.push((e.index, e.index, e.term)),
        }
    }
    let parts: Vec<String> = groups
        .iter()
        .map(|&(a, b, t)| {
            if a == b {
                format!("{a}/t{t}")
            } else {
                format!("{a}-{b}/t{t}")
            }
        })
        .collect();
    format!("[{}]", parts.join(" "))
}

fn remote_err(e: &RemoteError) -> String {
    match e {
        RemoteError::NotLeader { leader: None } => "NotLeader (leader unknown)".into(),
        RemoteError::NotLeader { leader: Some(l) } => format!("NotLeader (leader n{l})"),
        RemoteError::Busy => "Busy".into(),
        RemoteError::InsufficientStorage => "InsufficientStorage".into(),
    }
}

fn request_err(e: &RequestError) -> String {
    match e {
        RequestError::NotLeader { leader: None } => "NotLeader (leader unknown)".into(),
        RequestError::NotLeader { leader: Some(l) } => format!("NotLeader (leader n{l})"),
        RequestError::LeaderChanged => "LeaderChanged".into(),
        RequestError::Busy => "Busy".into(),
        RequestError::Refused(why) => format!("Refused ({why})"),
        RequestError::InsufficientStorage => "InsufficientStorage".into(),
    }
}

fn granted(g: bool) -> &'static str {
    if g {
        "granted"
    } else {
        "rejected"
    }
}

fn fmt_msg(m: &Message) -> String {
    let body = match &m.body {
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
        MessageBody::PreVoteResponse { granted: g } => format!("PreVoteResponse {}", granted(*g)),
        MessageBody::VoteResponse { granted: g } => format!("VoteResponse {}", granted(*g)),
        MessageBody::Append {
            prev_index,
            prev_term,
            entries,
            commit,
        } => format!(
            "Append prev={prev_index}/t{prev_term} commit={commit} {}",
            entries_summary(entries)
        ),
        MessageBody::AppendResponse {
            index,
            reject: None,
        } => format!("AppendResponse ok match={index}"),
        MessageBody::AppendResponse {
            index,
            reject: Some(h),
        } => format!(
            "AppendResponse reject prev={index} hint=t{}@{}",
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
        } => {
            let data: Vec<String> = commands
                .iter()
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect();
            format!("Propose r{request_id} {}", data.join(" "))
        }
        MessageBody::ProposeResponse { request_id, result } => match result {
            Ok((i, t)) => format!("ProposeResponse r{request_id} appended at {i}/t{t}"),
            Err(e) => format!("ProposeResponse r{request_id} {}", remote_err(e)),
        },
        MessageBody::ReadIndex { request_id } => format!("ReadIndex r{request_id}"),
        MessageBody::ReadIndexResponse { request_id, result } => match result {
            Ok(i) => format!("ReadIndexResponse r{request_id} index={i}"),
            Err(e) => format!("ReadIndexResponse r{request_id} {}", remote_err(e)),
        },
    };
    if m.body.is_client() {
        format!("n{}->n{} {body}", m.from, m.to)
    } else {
        format!("n{}->n{} t{} {body}", m.from, m.to, m.term)
    }
}

fn fmt_outcome(o: &Outcome) -> String {
    match o {
        Outcome::Written(i, t) => format!("written at {i}/t{t}"),
        Outcome::Read(i) => format!("read at applied={i}"),
        Outcome::Failed(e) => format!("failed {}", request_err(e)),
        Outcome::Lost => "lost (its entry was overwritten)".into(),
    }
}

fn fmt_entry(e: &Entry) -> String {
    match &e.kind {
        EntryKind::Noop => format!("{}/t{}:noop", e.index, e.term),
        EntryKind::Command(c) => format!("{}/t{}:{}", e.index, e.term, String::from_utf8_lossy(c)),
        EntryKind::Config { membership, .. } => format!(
            "{}/t{}:config voters={:?} learners={:?}",
            e.index, e.term, membership.voters, membership.learners
        ),
    }
}

// ---- What the runner watches ----

/// The observable state of a node, compared before and after every step to print what changed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum View {
    Down,
    Up {
        role: Role,
        term: Term,
        vote: NodeId,
        leader: Option<NodeId>,
        last: (Index, Term),
        commit: Index,
        applied: Index,
    },
}

fn view(sim: &Sim, id: NodeId) -> View {
    let Some(r) = sim.nodes[&id].raft.as_ref() else {
        return View::Down;
    };
    View::Up {
        role: r.role(),
        term: r.term(),
        vote: r.vote(),
        leader: r.leader(),
        last: (r.log().last_index(), r.log().last_term()),
        commit: r.log().committed(),
        applied: sim.nodes[&id].applied_index,
    }
}

/// `role=.. term=.. ...` for the fields of `new` that differ from `old` (all of them if `old` is None).
fn view_fields(old: Option<&View>, new: &View) -> String {
    let View::Up {
        role,
        term,
        vote,
        leader,
        last,
        commit,
        applied,
    } = new
    else {
        return "down".into();
    };
    let old = match old {
        Some(View::Up {
            role,
            term,
            vote,
            leader,
            last,
            commit,
            applied,
        }) => Some((role, term, vote, leader, last, commit, applied)),
        _ => None,
    };
    let mut parts = Vec::new();
    if old.is_none_or(|o| o.0 != role) {
        parts.push(format!("role={role:?}"));
    }
    if old.is_none_or(|o| o.1 != term) {
        parts.push(format!("term={term}"));
    }
    if old.is_none_or(|o| o.2 != vote) {
        parts.push(format!("vote={}", node(*vote)));
    }
    if old.is_none_or(|o| o.3 != leader) {
        parts.push(format!("leader={}", node(leader.unwrap_or(0))));
    }
    if old.is_none_or(|o| o.4 != last) {
        parts.push(format!("last={}/t{}", last.0, last.1));
    }
    if old.is_none_or(|o| o.5 != commit) {
        parts.push(format!("commit={commit}"));
    }
    if old.is_none_or(|o| o.6 != applied) {
        parts.push(format!("applied={applied}"));
    }
    parts.join(" ")
}

#[derive(Default, Clone)]
struct Counters {
    /// Per message type.
    delivered: BTreeMap<&'static str, u64>,
    dropped: BTreeMap<&'static str, u64>,
    rejects: u64,
}

impl Counters {
    /// `Type=count ...` of what `self` has beyond `base`.
    fn since(now: &BTreeMap<&'static str, u64>, base: &BTreeMap<&'static str, u64>) -> String {
        let parts: Vec<String> = now
            .iter()
            .filter_map(|(k, v)| {
                let d = v - base.get(k).copied().unwrap_or(0);
                (d > 0).then(|| format!("{k}={d}"))
            })
            .collect();
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(" ")
        }
    }
}

/// Which queued messages a `deliver`, `stabilize` or `drop` applies to.
#[derive(Default, Clone)]
struct Filter {
    from: Option<NodeId>,
    to: Option<NodeId>,
    types: Option<Vec<String>>,
    count: Option<usize>,
}

impl Filter {
    fn matches(&self, m: &Message) -> bool {
        self.from.is_none_or(|f| f == m.from)
            && self.to.is_none_or(|t| t == m.to)
            && self
                .types
                .as_ref()
                .is_none_or(|ts| ts.iter().any(|t| t.eq_ignore_ascii_case(m.body.name())))
    }
}

#[derive(Default)]
struct Runner {
    sim: Option<Sim>,
    views: BTreeMap<NodeId, View>,
    outcomes: BTreeMap<u64, Outcome>,
    /// Request id -> (node, what: `propose DATA` or `read`).
    requests: BTreeMap<u64, (NodeId, String)>,
    counters: Counters,
    counters_at_last_stats: Counters,
}

fn parse_id(s: &str) -> Result<NodeId, String> {
    s.strip_prefix('n')
        .unwrap_or(s)
        .parse()
        .map_err(|_| format!("bad node id {s:?}"))
}

fn parse_num<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("bad {what} {s:?}"))
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s {
        "true" | "on" | "yes" => Ok(true),
        "false" | "off" | "no" => Ok(false),
        _ => Err(format!("bad boolean {s:?}")),
    }
}

impl Runner {
    fn sim(&mut self) -> Result<&mut Sim, String> {
        self.sim
            .as_mut()
            .ok_or_else(|| "no cluster: start with `cluster N`".to_string())
    }

    fn check_id(&mut self, id: NodeId) -> Result<NodeId, String> {
        if self.sim()?.nodes.contains_key(&id) {
            Ok(id)
        } else {
            Err(format!("no node n{id}"))
        }
    }

    fn ids_or_all(&mut self, args: &[&str]) -> Result<Vec<NodeId>, String> {
        if args.is_empty() {
            return Ok(self.sim()?.ids());
        }
        args.iter().map(|a| self.check_id(parse_id(a)?)).collect()
    }

    /// Runs one command line; a trailing `quiet` keeps only state changes and client results.
    fn command(&mut self, line: &str) -> Result<Vec<Line>, String> {
        let mut words: Vec<&str> = line.split_whitespace().collect();
        let quiet = words.len() > 1 && words.last() == Some(&"quiet");
        if quiet {
            words.pop();
        }
        let lines = self.command_lines(words[0], &words[1..])?;
        Ok(if quiet { quieten(lines) } else { lines })
    }

    fn command_lines(&mut self, cmd: &str, args: &[&str]) -> Result<Vec<Line>, String> {
        match cmd {
            "cluster" => self.cmd_cluster(args),
            "tick" => self.cmd_tick(args),
            "campaign" => self.cmd_campaign(args),
            "elect" => self.cmd_elect(args),
            "deliver" => {
                let f = self.parse_filter(args)?;
                Ok(self.deliver_round(&f))
            }
            "stabilize" => self.cmd_stabilize(args),
            "drop" => self.cmd_drop(args),
            "queue" => Ok(self
                .sim()?
                .queued_messages()
                .iter()
                .map(|m| Line::msg(fmt_msg(m)))
                .collect()),
            "run" => self.cmd_run(args),
            "partition" => self.cmd_partition(args),
            "heal" => {
                self.sim()?.heal();
                Ok(Vec::new())
            }
            "crash" | "restart" => {
                let [id] = args else {
                    return Err(format!("usage: {cmd} ID"));
                };
                let id = self.check_id(parse_id(id)?)?;
                let sim = self.sim()?;
                if cmd == "crash" {
                    if !sim.is_up(id) {
                        return Err(format!("n{id} is already down"));
                    }
                    let queued = sim.queued();
                    sim.crash(id);
                    let lost = queued - sim.queued();
                    let mut lines = self.events();
                    if lost > 0 {
                        lines.push(Line::new(format!("({lost} queued messages to n{id} lost)")));
                    }
                    Ok(lines)
                } else {
                    if sim.is_up(id) {
                        return Err(format!("n{id} is up"));
                    }
                    sim.restart(id);
                    Ok(self.events())
                }
            }
            "propose" => {
                let (Some(id), true) = (args.first(), args.len() >= 2) else {
                    return Err("usage: propose ID DATA".into());
                };
                let id = self.check_id(parse_id(id)?)?;
                // `propose ID DATA xN`: N writes DATA1..DATAN, each in its own driver turn.
                let repeat = args[args.len() - 1]
                    .strip_prefix('x')
                    .and_then(|n| n.parse::<u64>().ok())
                    .filter(|_| args.len() >= 3);
                let (data, n) = match repeat {
                    Some(n) => (args[1..args.len() - 1].join(" "), n),
                    None => (args[1..].join(" "), 0),
                };
                let payloads: Vec<String> = if n == 0 {
                    vec![data]
                } else {
                    (1..=n).map(|k| format!("{data}{k}")).collect()
                };
                let mut head = Vec::new();
                let mut lines = Vec::new();
                for data in payloads {
                    let r = self.sim()?.propose(id, data.clone().into_bytes());
                    self.requests.insert(r, (id, format!("propose {data}")));
                    head.push(format!("r{r}"));
                    lines.extend(self.events());
                }
                lines.insert(0, Line::new(head.join(" ")));
                Ok(lines)
            }
            "read" => {
                let (id, n) = match args {
                    [id] => (parse_id(id)?, 1),
                    [id, n] => (parse_id(id)?, parse_num(n, "count")?),
                    _ => return Err("usage: read ID [N]".into()),
                };
                let id = self.check_id(id)?;
                let sim = self.sim()?;
                let rs = if sim.is_up(id) {
                    sim.read_batch(id, n)
                } else {
                    (0..n).map(|_| sim.read(id)).collect()
                };
                let names: Vec<String> = rs.iter().map(|r| format!("r{r}")).collect();
                for r in rs {
                    self.requests.insert(r, (id, "read".into()));
                }
                let mut lines = vec![Line::new(names.join(" "))];
                lines.extend(self.events());
                Ok(lines)
            }
            "status" => {
                let ids = self.ids_or_all(args)?;
                let sim = self.sim()?;
                Ok(ids
                    .into_iter()
                    .map(|id| {
                        let v = view(sim, id);
                        match &v {
                            View::Down => {
                                let hs = sim.nodes[&id].disk.hard_state;
                                Line::new(format!(
                                    "n{id}: down (disk: term={} vote={} entries={})",
                                    hs.term,
                                    node(hs.vote),
                                    sim.nodes[&id].disk.entries.len()
                                ))
                            }
                            _ => Line::new(format!("n{id}: {}", view_fields(None, &v))),
                        }
                    })
                    .collect())
            }
            "log" => {
                let ids = self.ids_or_all(args)?;
                let sim = self.sim()?;
                Ok(ids
                    .into_iter()
                    .map(|id| {
                        let n = &sim.nodes[&id];
                        let (state, entries): (String, Vec<Entry>) = match &n.raft {
                            Some(r) => {
                                let log = r.log();
                                (
                                    format!("commit={}", log.committed()),
                                    log.entries().to_vec(),
                                )
                            }
                            None => ("down, on disk".into(), n.disk.entries.clone()),
                        };
                        let es: Vec<String> = entries.iter().map(fmt_entry).collect();
                        Line::new(
                            format!("n{id} {state}: {}", es.join(" "))
                                .trim_end()
                                .to_string(),
                        )
                    })
                    .collect())
            }
            "progress" => {
                let [id] = args else {
                    return Err("usage: progress ID".into());
                };
                let id = self.check_id(parse_id(id)?)?;
                let sim = self.sim()?;
                if !sim.is_up(id) || !sim.raft(id).is_leader() {
                    return Err(format!("n{id} is not a leader"));
                }
                Ok(sim
                    .raft(id)
                    .progress()
                    .into_iter()
                    .map(|(p, matched, next, state, _)| {
                        Line::new(format!("n{p}: match={matched} next={next} {state}"))
                    })
                    .collect())
            }
            "outcomes" => {
                let sim = self.sim.as_ref().ok_or("no cluster")?;
                Ok(self
                    .requests
                    .iter()
                    .map(|(r, (id, what))| {
                        let res = sim
                            .outcomes
                            .get(r)
                            .map(fmt_outcome)
                            .unwrap_or_else(|| "pending".into());
                        Line::new(format!("r{r} on n{id} {what}: {res}"))
                    })
                    .collect())
            }
            "stats" => {
                let (now, then) = (&self.counters, &self.counters_at_last_stats);
                let lines = vec![
                    Line::new(format!(
                        "delivered: {}",
                        Counters::since(&now.delivered, &then.delivered)
                    )),
                    Line::new(format!(
                        "dropped: {}",
                        Counters::since(&now.dropped, &then.dropped)
                    )),
                    Line::new(format!(
                        "rejected appends delivered: {}",
                        now.rejects - then.rejects
                    )),
                ];
                self.counters_at_last_stats = self.counters.clone();
                Ok(lines)
            }
            _ => Err(format!("unknown command {cmd:?}")),
        }
    }

    fn cmd_cluster(&mut self, args: &[&str]) -> Result<Vec<Line>, String> {
        let Some(n) = args.first() else {
            return Err("usage: cluster N [key=value...]".into());
        };
        let n: u64 = parse_num(n, "cluster size")?;
        let mut seed = 1u64;
        let mut cfg = Config::new(1, [1]);
        for a in &args[1..] {
            let (k, v) = a
                .split_once('=')
                .ok_or_else(|| format!("expected key=value, got {a:?}"))?;
            match k {
                "prevote" => cfg.pre_vote = parse_bool(v)?,
                "checkquorum" => cfg.check_quorum = parse_bool(v)?,
                "election" => cfg.election_ticks = parse_num(v, k)?,
                "heartbeat" => cfg.heartbeat_ticks = parse_num(v, k)?,
                "inflight" => cfg.max_inflight = parse_num(v, k)?,
                "maxentries" => cfg.max_entries_per_msg = parse_num(v, k)?,
                "seed" => seed = parse_num(v, k)?,
                _ => return Err(format!("unknown option {k:?}")),
            }
        }
        let tuned = cfg.clone();
        let mut sim = Sim::new(n, seed, move |c| {
            c.pre_vote = tuned.pre_vote;
            c.check_quorum = tuned.check_quorum;
            c.election_ticks = tuned.election_ticks;
            c.heartbeat_ticks = tuned.heartbeat_ticks;
            c.max_inflight = tuned.max_inflight;
            c.max_entries_per_msg = tuned.max_entries_per_msg;
        });
        sim.auto_deliver = false;
        sim.sent = Some(Vec::new());
        let ids = sim.ids();
        self.views = ids.iter().map(|&id| (id, view(&sim, id))).collect();
        self.outcomes.clear();
        self.requests.clear();
        self.counters = Counters::default();
        self.counters_at_last_stats = Counters::default();
        self.sim = Some(sim);
        Ok(Vec::new())
    }

    fn parse_filter(&mut self, args: &[&str]) -> Result<Filter, String> {
        let mut f = Filter::default();
        for a in args {
            let (k, v) = a
                .split_once('=')
                .ok_or_else(|| format!("expected key=value, got {a:?}"))?;
            match k {
                "from" => f.from = Some(self.check_id(parse_id(v)?)?),
                "to" => f.to = Some(self.check_id(parse_id(v)?)?),
                "type" => f.types = Some(v.split(',').map(str::to_string).collect()),
                "count" => f.count = Some(parse_num(v, k)?),
                _ => return Err(format!("unknown filter {k:?}")),
            }
        }
        Ok(f)
    }

    /// What changed since the last call: node states, messages sent, client results.
    fn events(&mut self) -> Vec<Line> {
        let sim = self.sim.as_mut().expect("cluster");
        let mut lines = Vec::new();
        for id in sim.ids() {
            let new = view(sim, id);
            let old = self.views.get(&id);
            if old != Some(&new) {
                let text = match (old, &new) {
                    (_, View::Down) => format!("n{id}: down"),
                    (Some(View::Down), _) => format!("n{id}: up {}", view_fields(None, &new)),
                    _ => format!("n{id}: {}", view_fields(old, &new)),
                };
                lines.push(Line::new(text));
                self.views.insert(id, new);
            }
        }
        let sent = std::mem::take(sim.sent.as_mut().expect("capture on"));
        lines.extend(sent.iter().map(|m| Line::msg(fmt_msg(m))));
        for (r, o) in &sim.outcomes {
            if self.outcomes.get(r) != Some(o) {
                let id = self.requests.get(r).map(|x| x.0).unwrap_or(0);
                lines.push(Line::new(format!("r{r} on n{id}: {}", fmt_outcome(o))));
                self.outcomes.insert(*r, o.clone());
            }
        }
        lines
    }

    /// Delivers the matching messages queued now, one by one, each followed (indented) by what it caused.
    fn deliver_round(&mut self, f: &Filter) -> Vec<Line> {
        let mut budget = f.count.unwrap_or(usize::MAX);
        let msgs = self.sim.as_mut().expect("cluster").take_queued(|m| {
            if budget > 0 && f.matches(m) {
                budget -= 1;
                true
            } else {
                false
            }
        });
        let mut lines = Vec::new();
        for m in msgs {
            let head = fmt_msg(&m);
            let reject = matches!(
                m.body,
                MessageBody::AppendResponse {
                    reject: Some(_),
                    ..
                }
            );
            let name = m.body.name();
            match self.sim.as_mut().unwrap().deliver_msg(m) {
                Ok(()) => {
                    *self.counters.delivered.entry(name).or_default() += 1;
                    if reject {
                        self.counters.rejects += 1;
                    }
                    lines.push(Line::delivered(head));
                    let nested = self.events();
                    lines.extend(nested.into_iter().map(|l| Line { indent: 1, ..l }));
                }
                Err(why) => {
                    *self.counters.dropped.entry(name).or_default() += 1;
                    lines.push(Line::msg(format!("{head} (dropped: {why})")));
                }
            }
        }
        lines
    }

    fn stabilize(&mut self, f: &Filter) -> Result<Vec<Line>, String> {
        let mut lines = Vec::new();
        for _ in 0..1000 {
            let any = self
                .sim
                .as_ref()
                .unwrap()
                .queued_messages()
                .iter()
                .any(|m| f.matches(m));
            if !any {
                return Ok(lines);
            }
            lines.extend(self.deliver_round(f));
        }
        Err("messages still flowing after 1000 rounds".into())
    }

    fn cmd_stabilize(&mut self, args: &[&str]) -> Result<Vec<Line>, String> {
        let f = self.parse_filter(args)?;
        if f.count.is_some() {
            return Err("stabilize takes no count".into());
        }
        self.stabilize(&f)
    }

    fn cmd_drop(&mut self, args: &[&str]) -> Result<Vec<Line>, String> {
        let f = self.parse_filter(args)?;
        let mut budget = f.count.unwrap_or(usize::MAX);
        let dropped = self.sim()?.take_queued(|m| {
            if budget > 0 && f.matches(m) {
                budget -= 1;
                true
            } else {
                false
            }
        });
        for m in &dropped {
            *self.counters.dropped.entry(m.body.name()).or_default() += 1;
        }
        Ok(dropped
            .iter()
            .map(|m| Line::msg(format!("dropped {}", fmt_msg(m))))
            .collect())
    }

    fn cmd_tick(&mut self, args: &[&str]) -> Result<Vec<Line>, String> {
        let (n, nodes) = match args.first() {
            Some(a) if !a.starts_with('n') => (parse_num::<u64>(a, "tick count")?, &args[1..]),
            _ => (1, args),
        };
        let ids = self.ids_or_all(nodes)?;
        let mut lines = Vec::new();
        for _ in 0..n {
            for &id in &ids {
                self.sim()?.tick_node(id);
                lines.extend(self.events());
            }
        }
        Ok(lines)
    }

    fn cmd_campaign(&mut self, args: &[&str]) -> Result<Vec<Line>, String> {
        let [id] = args else {
            return Err("usage: campaign ID".into());
        };
        let id = self.check_id(parse_id(id)?)?;
        let sim = self.sim()?;
        if !sim.is_up(id) {
            return Err(format!("n{id} is down"));
        }
        let mut lines = Vec::new();
        for ticks in 1..=10_000 {
            let sim = self.sim()?;
            sim.tick_node(id);
            let started = sim.sent.as_ref().unwrap().iter().any(|m| {
                m.from == id
                    && matches!(
                        m.body,
                        MessageBody::PreVote { .. } | MessageBody::Vote { .. }
                    )
            });
            lines.extend(self.events());
            if started {
                let mut out = vec![Line::new(format!("n{id} timed out after {ticks} ticks"))];
                out.extend(lines);
                return Ok(out);
            }
        }
        Err(format!("n{id} did not campaign in 10000 ticks"))
    }

    /// Campaigns and delivers only election traffic until the node leads (retrying if it loses, e.g. when a
    /// rejection taught it a higher term). Quiet: prints state changes only; other messages stay queued.
    fn cmd_elect(&mut self, args: &[&str]) -> Result<Vec<Line>, String> {
        let [id] = args else {
            return Err("usage: elect ID".into());
        };
        let id = self.check_id(parse_id(id)?)?;
        let election = Filter {
            types: Some(
                ["PreVote", "PreVoteResponse", "Vote", "VoteResponse"]
                    .map(String::from)
                    .to_vec(),
            ),
            ..Filter::default()
        };
        let mut lines = Vec::new();
        for _ in 0..5 {
            let campaign = self.cmd_campaign(&[args[0]])?;
            // Keep the "timed out" line and the state changes, not the messages.
            lines.extend(quieten(campaign));
            lines.extend(quieten(self.stabilize(&election)?));
            if self.sim()?.raft(id).is_leader() {
                return Ok(lines);
            }
        }
        Err(format!("n{id} could not win an election"))
    }

    fn cmd_run(&mut self, args: &[&str]) -> Result<Vec<Line>, String> {
        let n: u64 = match args {
            [] => 1,
            [n] => parse_num(n, "round count")?,
            _ => return Err("usage: run [N]".into()),
        };
        let mut lines = Vec::new();
        let all = Filter::default();
        for round in 1..=n {
            let mut round_lines = Vec::new();
            for id in self.sim()?.ids() {
                self.sim()?.tick_node(id);
                round_lines.extend(self.events());
            }
            round_lines.extend(self.stabilize(&all)?);
            lines.extend(quieten(round_lines).into_iter().map(|l| Line {
                text: format!("[{round}] {}", l.text),
                ..l
            }));
        }
        Ok(lines)
    }

    fn cmd_partition(&mut self, args: &[&str]) -> Result<Vec<Line>, String> {
        let mut groups: Vec<BTreeSet<NodeId>> = vec![BTreeSet::new()];
        for a in args {
            if *a == "|" {
                groups.push(BTreeSet::new());
            } else {
                let id = self.check_id(parse_id(a)?)?;
                groups.last_mut().unwrap().insert(id);
            }
        }
        groups.retain(|g| !g.is_empty());
        let listed: BTreeSet<NodeId> = groups.iter().flatten().copied().collect();
        for id in self.sim()?.ids() {
            if !listed.contains(&id) {
                groups.push(BTreeSet::from([id]));
            }
        }
        let desc: Vec<String> = groups
            .iter()
            .map(|g| {
                g.iter()
                    .map(|i| format!("n{i}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        self.sim()?.partition(groups);
        Ok(vec![Line::new(desc.join(" | "))])
    }
}
