//! The key-value store's snapshot: a restored store behaves exactly like the original on every later
//! command (idempotency tokens included), and no damaged input makes decoding panic.

use hash_nimbus::kv::{ApplyResult, Command, Condition, KvStore, IDEMPOTENCY_WINDOW};
use hash_nimbus::raft::Rng;
use hash_nimbus::storage::SnapshotStore;
use std::io::BufReader;

const MAX_KEY: usize = 1024;
const MAX_VALUE: usize = 1 << 20;

fn put(k: &str, v: &str, cond: Condition) -> Command {
    Command::Put {
        key: k.into(),
        value: v.into(),
        cond,
    }
}

fn del(k: &str, cond: Condition) -> Command {
    Command::Delete {
        key: k.into(),
        cond,
    }
}

fn encode(kv: &KvStore) -> Vec<u8> {
    let mut out = Vec::new();
    kv.write_snapshot(&mut out).unwrap();
    out
}

fn decode(buf: &[u8]) -> Result<KvStore, hash_nimbus::codec::DecodeError> {
    KvStore::read_snapshot(&mut &buf[..], MAX_KEY, MAX_VALUE)
}

/// A store with keys, deletions, and remembered results of every kind, some tokens about to expire.
fn sample() -> KvStore {
    let mut kv = KvStore::new();
    let mut i = 0;
    let mut next = || {
        i += 1;
        i
    };
    for k in 0..40 {
        kv.apply(
            next(),
            &put(&format!("key/{k:03}"), &"v".repeat(k), Condition::Any).encode(),
        );
    }
    kv.apply(next(), &del("key/007", Condition::Any).encode());
    kv.apply(
        next(),
        &put("a", "1", Condition::Absent).encode_with_token(b"tok-ok"),
    );
    kv.apply(
        next(),
        &del("missing", Condition::Any).encode_with_token(b"tok-notfound"),
    );
    kv.apply(
        next(),
        &put("a", "2", Condition::Absent).encode_with_token(b"tok-failed"),
    );
    kv.apply(
        next(),
        &del("nope", Condition::Index(3)).encode_with_token(b"tok-failed-none"),
    );
    kv.apply(next(), b"garbage"); // Invalid: not remembered
    let here = next();
    // Jump ahead (no-ops), so the tokens above expire within the commands that follow.
    kv.set_applied(here + IDEMPOTENCY_WINDOW - 20);
    let base = kv.applied();
    kv.apply(
        base + 1,
        &put("late", "x", Condition::Any).encode_with_token(&[0xFF; 128]),
    );
    kv.apply(base + 2, &put("key/001", "", Condition::Any).encode());
    kv
}

#[test]
fn restored_store_behaves_like_the_original() {
    let original = sample();
    let buf = encode(&original);
    let mut restored = decode(&buf).unwrap();
    assert_eq!(restored, original);
    assert_eq!(restored.data_bytes(), original.data_bytes());
    assert_eq!(restored.tokens(), 5);
    let mut original = original;
    let start = original.applied();
    // Retries of every token, new work, and indexes crossing the expiry of the early tokens.
    let commands: Vec<Vec<u8>> = vec![
        put("a", "1", Condition::Absent).encode_with_token(b"tok-ok"),
        del("missing", Condition::Any).encode_with_token(b"tok-notfound"),
        put("a", "2", Condition::Absent).encode_with_token(b"tok-failed"),
        del("nope", Condition::Index(3)).encode_with_token(b"tok-failed-none"),
        put("late", "y", Condition::Any).encode_with_token(&[0xFF; 128]),
        put("b", "new", Condition::Absent).encode_with_token(b"tok-new"),
        put("b", "again", Condition::Index(1)).encode(),
        del("key/010", Condition::Any).encode(),
    ];
    let mut index = start;
    let mut first_token_results = Vec::new();
    for round in 0..8 {
        for (k, c) in commands.iter().enumerate() {
            index += 1 + round * 3; // spread out so the window passes the early tokens
            let a = original.apply(index, c);
            let b = restored.apply(index, c);
            assert_eq!(a, b, "command at {index}");
            if k == 0 {
                first_token_results.push(a);
            }
        }
    }
    // "tok-ok" was answered from memory at first, then expired and applied anew.
    assert_eq!(first_token_results[0], ApplyResult::Ok { index: 42 });
    assert_ne!(first_token_results.first(), first_token_results.last());
    assert_eq!(restored, original);
}

#[test]
fn every_truncation_is_refused() {
    let buf = encode(&sample());
    for cut in 0..buf.len() {
        let err = decode(&buf[..cut]).expect_err("truncated snapshot accepted");
        assert!(!err.0.is_empty(), "cut at {cut}");
    }
}

/// Thousands of random byte changes: decoding returns an error or some store, never panics. The file's
/// CRC catches such damage in practice; this checks the decoder's own validation.
#[test]
fn random_damage_never_panics() {
    let buf = encode(&sample());
    let mut rng = Rng::new(0x5eed);
    let mut refused = 0;
    let runs = 4000;
    for _ in 0..runs {
        let mut bad = buf.clone();
        for _ in 0..1 + rng.below(3) {
            let pos = rng.below(bad.len() as u64) as usize;
            bad[pos] ^= 1 + rng.below(255) as u8;
        }
        if decode(&bad).is_err() {
            refused += 1;
        }
    }
    // Most bytes are structure (lengths, indexes, counts) or ordered keys; damage there is refused.
    assert!(refused > runs / 4, "only {refused} of {runs} refused");
}

#[test]
fn hostile_counts_and_lengths_are_refused_cheaply() {
    let mut buf = encode(&KvStore::new());
    // A key count of 2^64-1 with no keys: runs into the end of the input, allocating nothing.
    buf[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(decode(&buf).unwrap_err().0.contains("ends inside"));
    // A token count above one window.
    let mut buf = encode(&KvStore::new());
    buf[24..32].copy_from_slice(&(IDEMPOTENCY_WINDOW + 2).to_le_bytes());
    assert!(decode(&buf).unwrap_err().0.contains("more than one window"));
    // A 4 GiB value length.
    let mut kv = KvStore::new();
    kv.apply(1, &put("k", "v", Condition::Any).encode());
    let mut buf = encode(&kv);
    let value_len_at = 8 + 8 + 8 + 4 + 1;
    buf[value_len_at..value_len_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(decode(&buf).unwrap_err().0.contains("exceeds the limit"));
    // Wrong magic and version.
    let mut buf = encode(&kv);
    buf[0] = b'X';
    assert!(decode(&buf).unwrap_err().0.contains("bad magic"));
    let mut buf = encode(&kv);
    buf[7] = 2;
    assert!(decode(&buf).unwrap_err().0.contains("version 2"));
}

/// 1,000 keys through a snapshot file: the size is what the format says, and it loads back equal.
#[test]
fn thousand_keys_through_a_snapshot_file() {
    let mut kv = KvStore::new();
    for i in 0..1000u64 {
        let cmd = put(&format!("key-{i:05}"), &"x".repeat(100), Condition::Any);
        kv.apply(i + 1, &cmd.encode());
    }
    kv.apply(
        1001,
        &put("key-00000", "y", Condition::Any).encode_with_token(b"t"),
    );
    let body = encode(&kv);
    // magic+version, applied, key count, keys (len, 9 bytes, len, value, index), token count, token.
    let keys = 999 * (4 + 9 + 4 + 100 + 8) + (4 + 9 + 4 + 1 + 8);
    let tokens = 4 + 1 + 8 + (1 + 8);
    assert_eq!(body.len(), 8 + 8 + 8 + keys + 8 + tokens);
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path(), 2).unwrap();
    let meta = store
        .write(kv.applied(), 3, |w| kv.write_snapshot(w))
        .unwrap();
    assert_eq!(meta.body_len(), body.len() as u64);
    let latest = store.latest_valid().unwrap().unwrap();
    let mut r = BufReader::new(SnapshotStore::open_body(&latest.path).unwrap());
    let loaded = KvStore::read_snapshot(&mut r, MAX_KEY, MAX_VALUE).unwrap();
    assert_eq!(loaded, kv);
    assert_eq!(loaded.len(), 1000);
    assert_eq!(loaded.applied(), 1001);
}
