//! The write-ahead log under crashes and corruption: cut at every byte, bytes flipped everywhere.

use hash_nimbus::raft::{Entry, EntryKind, HardState};
use hash_nimbus::storage::{StorageError, Wal, WalOptions};
use std::path::{Path, PathBuf};

fn entry(index: u64, term: u64, data: &str) -> Entry {
    Entry {
        index,
        term,
        kind: if data.is_empty() {
            EntryKind::Noop
        } else {
            EntryKind::Command(data.as_bytes().to_vec())
        },
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    v.sort();
    v
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Writes a log with overwrites and hard states; returns the expected entries and hard state.
fn write_sample(dir: &Path, opts: WalOptions) -> (Vec<Entry>, HardState) {
    let (mut wal, rec) = Wal::open(dir, opts).unwrap();
    assert!(rec.entries.is_empty());
    let mut expect: Vec<Entry> = Vec::new();
    let mut hs = HardState::default();
    for batch in 0..20u64 {
        let term = 1 + batch / 5;
        let first = if batch % 7 == 6 {
            // Overwrite the last two entries (a new leader's conflicting suffix).
            expect.len() as u64 - 1
        } else {
            expect.len() as u64 + 1
        };
        expect.truncate(first as usize - 1);
        let es: Vec<Entry> = (0..3)
            .map(|k| entry(first + k, term, &format!("batch {batch} entry {k}")))
            .collect();
        wal.append(&es).unwrap();
        expect.extend(es);
        hs = HardState {
            term,
            vote: batch % 3,
            commit: expect.len() as u64 - 2,
        };
        wal.set_hard_state(hs).unwrap();
        wal.sync().unwrap();
    }
    (expect, hs)
}

#[test]
fn round_trip_with_overwrites_and_rotation() {
    for segment_size in [64 << 20, 200, 1] {
        let dir = tempfile::tempdir().unwrap();
        let opts = WalOptions {
            segment_size,
            ..Default::default()
        };
        let (expect, hs) = write_sample(dir.path(), opts.clone());
        let (wal, rec) = Wal::open(dir.path(), opts.clone()).unwrap();
        assert_eq!(rec.entries, expect, "segment size {segment_size}");
        assert_eq!(rec.hard_state, hs);
        assert_eq!(rec.first_index, 1);
        assert_eq!(wal.last_index(), expect.len() as u64);
        if segment_size < 1000 {
            assert!(segments(dir.path()).len() > 5, "rotation happened");
        }
    }
}

#[test]
fn appends_must_be_contiguous() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    wal.append(&[entry(1, 1, "a")]).unwrap();
    assert!(matches!(
        wal.append(&[entry(3, 1, "gap")]),
        Err(StorageError::Invalid(_))
    ));
    assert!(wal.append(&[entry(2, 1, "b"), entry(4, 1, "gap")]).is_err());
}

/// Cut the last segment at every byte within its last records: every cut opens, recovers exactly the
/// records written in full, and the log keeps working after it.
#[test]
fn cut_at_every_byte_of_the_tail() {
    let src = tempfile::tempdir().unwrap();
    let (expect, _) = write_sample(src.path(), WalOptions::default());
    let seg = segments(src.path()).pop().unwrap();
    let full = std::fs::read(&seg).unwrap();
    // Record boundaries: the 8-byte header, then `len u32 | crc u32 | body of len bytes` records.
    let mut boundaries = vec![8usize];
    while *boundaries.last().unwrap() < full.len() {
        let p = *boundaries.last().unwrap();
        let len = u32::from_le_bytes(full[p..p + 4].try_into().unwrap()) as usize;
        boundaries.push(p + 8 + len);
    }
    assert_eq!(*boundaries.last().unwrap(), full.len());
    // The last ~8 records (entries are ~40-byte records, hard states 33).
    let start = full.len().saturating_sub(300);
    // What a clean cut at each boundary recovers, computed independently of torn-tail handling: the
    // history is replayed by hand from the records' order (entries overwrite suffixes).
    let mut at_boundary = std::collections::BTreeMap::new();
    for &b in boundaries.iter().filter(|&&b| b + 400 >= start) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(seg.file_name().unwrap()), &full[..b]).unwrap();
        let (_, rec) = Wal::open(dir.path(), WalOptions::default()).unwrap();
        at_boundary.insert(b, (rec.entries, rec.hard_state));
    }
    // The full file is the whole history.
    assert_eq!(at_boundary[&full.len()].0, expect);
    for cut in start..full.len() {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(src.path(), dir.path());
        let path = dir.path().join(seg.file_name().unwrap());
        std::fs::write(&path, &full[..cut]).unwrap();
        let (mut wal, rec) = Wal::open(dir.path(), WalOptions::default())
            .unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        // Exactly the records written in full before the cut survive.
        let boundary = *boundaries.iter().rev().find(|&&b| b <= cut).unwrap();
        let (want_entries, want_hs) = &at_boundary[&boundary];
        assert_eq!(
            &rec.entries, want_entries,
            "cut at {cut} (last whole record ends at {boundary})"
        );
        assert_eq!(&rec.hard_state, want_hs, "cut at {cut}");
        assert!(std::fs::metadata(&path).unwrap().len() <= cut as u64);
        // The log continues from what it recovered and survives another reopen.
        let next = rec.first_index + rec.entries.len() as u64;
        wal.append(&[entry(next, 99, "after the crash")]).unwrap();
        wal.sync().unwrap();
        drop(wal);
        let (_, rec2) = Wal::open(dir.path(), WalOptions::default()).unwrap();
        assert_eq!(
            rec2.entries.last().unwrap(),
            &entry(next, 99, "after the crash")
        );
        assert_eq!(rec2.entries.len(), rec.entries.len() + 1);
    }
    // Cutting nothing recovers everything.
    let (_, rec) = Wal::open(src.path(), WalOptions::default()).unwrap();
    assert_eq!(rec.entries, expect);
}

/// Flip every bit... of every byte: opening either refuses naming the file and offset, or (when the damage
/// is in the final record, indistinguishable from a torn write) recovers a strict prefix. Never panics,
/// never returns an entry that was not written.
#[test]
fn flipped_bytes_are_refused_or_cut_never_misread() {
    let src = tempfile::tempdir().unwrap();
    let (expect, _) = write_sample(src.path(), WalOptions::default());
    let seg = segments(src.path()).pop().unwrap();
    let full = std::fs::read(&seg).unwrap();
    let mut refused = 0;
    let mut cut = 0;
    for pos in 0..full.len() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(seg.file_name().unwrap());
        let mut damaged = full.clone();
        damaged[pos] ^= 0x5A;
        std::fs::write(&path, &damaged).unwrap();
        match Wal::open(dir.path(), WalOptions::default()) {
            Err(StorageError::Corrupt {
                path: p, offset, ..
            }) => {
                assert_eq!(p, path);
                assert!(
                    offset as usize <= pos,
                    "offset {offset} names a place after the damage at {pos}"
                );
                refused += 1;
            }
            Err(e) => panic!("flip at {pos}: unexpected error {e}"),
            Ok((_, rec)) => {
                // Only damage within the final record may be taken for a torn tail.
                assert!(pos >= full.len() - 50, "flip at {pos} silently accepted");
                let prefix: Vec<Entry> = expect[..rec.entries.len()].to_vec();
                assert_eq!(rec.entries, prefix, "flip at {pos}: not a prefix");
                cut += 1;
            }
        }
    }
    assert!(
        refused > full.len() / 2,
        "most damage must be refused ({refused})"
    );
    assert!(
        cut > 0,
        "damage in the final record is cut like a torn tail"
    );
}

#[test]
fn zero_filled_tail_is_a_torn_write() {
    let dir = tempfile::tempdir().unwrap();
    let (expect, hs) = write_sample(dir.path(), WalOptions::default());
    let seg = segments(dir.path()).pop().unwrap();
    let mut data = std::fs::read(&seg).unwrap();
    data.extend(std::iter::repeat_n(0u8, 4096));
    std::fs::write(&seg, &data).unwrap();
    let (_, rec) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(rec.entries, expect);
    assert_eq!(rec.hard_state, hs);
}

#[test]
fn damage_in_an_earlier_segment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WalOptions {
        segment_size: 200,
        ..Default::default()
    };
    write_sample(dir.path(), opts.clone());
    let segs = segments(dir.path());
    assert!(segs.len() > 2);
    let first = &segs[0];
    let mut data = std::fs::read(first).unwrap();
    let n = data.len();
    data[n - 3] ^= 0xFF; // inside its last record: would look torn in the last segment, not here
    std::fs::write(first, &data).unwrap();
    match Wal::open(dir.path(), opts) {
        Err(e @ StorageError::Corrupt { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&first.display().to_string()), "{msg}");
            assert!(msg.contains("offset"), "{msg}");
        }
        other => panic!(
            "expected corruption, got {:?}",
            other.map(|(_, r)| r.entries.len())
        ),
    }
}

#[test]
fn garbage_header_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("wal-00000000000000000001.log"),
        b"GARBAGE!more",
    )
    .unwrap();
    let err = Wal::open(dir.path(), WalOptions::default())
        .err()
        .expect("refused");
    assert!(err.to_string().contains("bad header"), "{err}");
}
