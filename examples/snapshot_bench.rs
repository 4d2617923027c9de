//! Measures snapshot costs for a large key-value store: `clone()`, streaming to a snapshot file (with
//! fsync), file size, verification, and loading back.
//!
//! `cargo run --release --example snapshot_bench -- [KEYS] [DIR]` (defaults: 1,000,000 keys of 16 bytes
//! with 100-byte values, a temporary directory under the system temp dir).

use hash_nimbus::kv::{Command, Condition, KvStore};
use hash_nimbus::raft::Rng;
use hash_nimbus::storage::SnapshotStore;
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let keys: u64 = args
        .next()
        .map(|s| s.parse().expect("KEYS must be a number"))
        .unwrap_or(1_000_000);
    let tmp = match args.next() {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .expect("temporary directory");

    let t = Instant::now();
    let mut kv = KvStore::new();
    let mut rng = Rng::new(1);
    for i in 1..=keys {
        let key = format!("{:016x}", rng.next_u64()).into_bytes();
        let value: Vec<u8> = (0..100).map(|_| b'a' + (rng.below(26) as u8)).collect();
        let cmd = Command::Put {
            key,
            value,
            cond: Condition::Any,
        };
        kv.apply(i, &cmd.encode());
    }
    println!(
        "built {} keys ({} bytes of keys and values) in {:.2?}",
        kv.len(),
        kv.data_bytes(),
        t.elapsed()
    );

    let t = Instant::now();
    let copy = kv.clone();
    println!("clone: {:.2?}", t.elapsed());

    let t = Instant::now();
    copy.write_snapshot(&mut std::io::sink()).unwrap();
    println!("encode only (to io::sink): {:.2?}", t.elapsed());

    let t = Instant::now();
    let mut mem = Vec::new();
    copy.write_snapshot(&mut mem).unwrap();
    println!(
        "encode into memory (a Vec, for comparison with clone): {:.2?}",
        t.elapsed()
    );
    drop(mem);

    let store = SnapshotStore::open(tmp.path(), 2).unwrap();
    let t = Instant::now();
    let meta = store
        .write(copy.applied(), 1, |w| copy.write_snapshot(w))
        .unwrap();
    println!(
        "write snapshot file (encode, CRC, fsync, rename): {:.2?}, {} bytes ({:.1} MiB) at {}",
        t.elapsed(),
        meta.size,
        meta.size as f64 / (1 << 20) as f64,
        meta.path.display()
    );
    drop(copy);

    let t = Instant::now();
    SnapshotStore::verify(&meta.path).unwrap();
    println!("verify (full read + CRC): {:.2?}", t.elapsed());

    let t = Instant::now();
    let latest = store.latest_valid().unwrap().unwrap();
    println!(
        "latest_valid (lists, verifies the newest): {:.2?}",
        t.elapsed()
    );

    let t = Instant::now();
    let mut r = SnapshotStore::open_body(&latest.path).unwrap();
    let loaded = KvStore::read_snapshot(&mut r, 1024, 1 << 20).unwrap();
    println!(
        "load with open_body (verify pass + decode pass): {:.2?}",
        t.elapsed()
    );
    assert!(loaded == kv, "loaded store differs");
    drop(loaded);

    let t = Instant::now();
    let mut r = SnapshotStore::open_body_unverified(&latest.path).unwrap();
    let loaded = KvStore::read_snapshot(&mut r, 1024, 1 << 20).unwrap();
    println!(
        "load with open_body_unverified (one pass, CRC checked at the end): {:.2?}",
        t.elapsed()
    );
    assert!(loaded == kv, "loaded store differs");
    println!("loaded stores equal the original");
}
