//! Builds a node's data directory offline, as a node would have left it, so restart and catch-up can be
//! measured with a large state without loading it through HTTP first.
//!
//! `cargo run --release --example make_datadir -- DIR KEYS [TAIL] [TERM] [VOTERS]`
//!
//! - `KEYS` puts of 16-byte keys with 100-byte values are applied at indexes `1..=KEYS` to a `KvStore`,
//!   each carrying an idempotency token shaped like the ones a follower generates when it forwards a write
//!   (`n2.<nonce>.<counter>`), so the store also holds the last 100,000 tokens, as a node loaded through a
//!   follower does. The store is written as the snapshot `DIR/snap/` at index `KEYS`, term `TERM` (default
//!   2), with `SnapshotStore::write` (the same call the node's snapshot thread makes), after the
//!   membership section a node writes: voters `1..=VOTERS` (default 3), no learners, no addresses (the
//!   nodes' flags give those). Start it with a `--cluster` of exactly `VOTERS` members.
//! - The WAL `DIR/wal/` is restarted after that snapshot with `Wal::reset` (the call a node makes when it
//!   installs a snapshot), then `TAIL` (default 0) more puts of new keys follow at indexes
//!   `KEYS+1..=KEYS+TAIL` in the same term, and the hard state is `{term: TERM, vote: 0, commit:
//!   KEYS+TAIL}`. The WAL uses the node's default segment size (16 MiB) and syncs every 1,000 entries.
//!
//! Copy the directory once per node to start a 3-node cluster on it: every node then holds the same
//! committed state. Prints what it wrote and how long each step took.

use hash_nimbus::kv::{Command, Condition, KvStore};
use hash_nimbus::raft::{Entry, EntryKind, HardState, Membership, Rng};
use hash_nimbus::server::cluster::write_membership;
use hash_nimbus::storage::{SnapshotStore, Wal, WalOptions};
use std::path::PathBuf;
use std::time::Instant;

struct Gen {
    rng: Rng,
    nonce: u64,
    counter: u64,
}

impl Gen {
    /// The next put: a random 16-hex-digit key, a 100-byte value, and a follower-style token.
    fn next(&mut self) -> Vec<u8> {
        let key = format!("{:016x}", self.rng.next_u64()).into_bytes();
        let value: Vec<u8> = (0..100)
            .map(|_| b'a' + (self.rng.below(26) as u8))
            .collect();
        self.counter += 1;
        let token = format!("n2.{:x}.{}", self.nonce, self.counter);
        Command::Put {
            key,
            value,
            cond: Condition::Any,
        }
        .encode_with_token(token.as_bytes())
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 || args.len() > 5 {
        eprintln!("usage: make_datadir DIR KEYS [TAIL] [TERM] [VOTERS]");
        std::process::exit(2);
    }
    let dir = PathBuf::from(&args[0]);
    let num = |i: usize, default: u64| -> u64 {
        args.get(i).map_or(default, |s| {
            s.parse().unwrap_or_else(|_| {
                eprintln!("argument {} must be a number: {s}", i + 1);
                std::process::exit(2)
            })
        })
    };
    let keys = num(1, 0);
    let tail = num(2, 0);
    let term = num(3, 2);
    let voters = num(4, 3);
    if keys == 0 || term == 0 || voters == 0 {
        eprintln!("KEYS, TERM and VOTERS must be at least 1");
        std::process::exit(2);
    }
    if dir.join("wal").exists() || dir.join("snap").exists() {
        eprintln!("{} already holds a data directory", dir.display());
        std::process::exit(2);
    }

    let mut gen = Gen {
        rng: Rng::new(keys ^ (tail << 32) ^ 0x5eed),
        nonce: 0x6e69_6d62_7573,
        counter: 0,
    };
    let t = Instant::now();
    let mut kv = KvStore::new();
    for i in 1..=keys {
        kv.apply(i, &gen.next());
    }
    println!(
        "built {} keys ({} bytes of keys and values, {} tokens) in {:.2?}",
        kv.len(),
        kv.data_bytes(),
        kv.tokens(),
        t.elapsed()
    );

    let t = Instant::now();
    let membership = Membership {
        voters: (1..=voters).collect(),
        learners: Default::default(),
    };
    let store = SnapshotStore::open(&dir.join("snap"), 2).expect("snapshot directory");
    let meta = store
        .write(keys, term, |w| {
            write_membership(w, &membership, &[])?;
            kv.write_snapshot(w)
        })
        .expect("write the snapshot");
    println!(
        "snapshot at {keys}/t{term}: {} bytes in {:.2?} ({})",
        meta.size,
        t.elapsed(),
        meta.path.display()
    );
    drop(kv);

    let t = Instant::now();
    let opts = WalOptions {
        segment_size: 16 << 20,
        ..WalOptions::default()
    };
    let (mut wal, rec) = Wal::open(&dir.join("wal"), opts).expect("open the WAL");
    assert!(rec.entries.is_empty(), "a new WAL");
    let mut hs = HardState {
        term,
        vote: 0,
        commit: keys,
    };
    wal.reset(keys, term, hs).expect("reset the WAL");
    let mut batch = Vec::with_capacity(1000);
    for index in keys + 1..=keys + tail {
        batch.push(Entry {
            index,
            term,
            kind: EntryKind::Command(gen.next()),
        });
        if batch.len() == 1000 || index == keys + tail {
            wal.append(&batch).expect("append");
            batch.clear();
            hs.commit = index;
            wal.set_hard_state(hs).expect("hard state");
            wal.sync().expect("sync");
        }
    }
    println!(
        "WAL after {keys}: {tail} entries, {} segments, commit {} in {:.2?}",
        wal.stats().segments,
        hs.commit,
        t.elapsed()
    );
}
