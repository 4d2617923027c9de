//! WAL compaction (`Wal::compact`) and reset (`Wal::reset`): what reopening recovers, which segments go,
//! and every intermediate state a crash can leave behind.

use hash_nimbus::raft::{Entry, EntryKind, HardState};
use hash_nimbus::storage::{Recovered, StorageError, Wal, WalOptions};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        kind: EntryKind::Command(format!("command {index}").into_bytes()),
    }
}

fn small_segments() -> WalOptions {
    WalOptions {
        segment_size: 300,
        ..Default::default()
    }
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    v.sort();
    v
}

/// Every file in `dir` by name, with its contents.
fn snapshot_dir(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn materialize(files: &BTreeMap<String, Vec<u8>>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, data) in files {
        std::fs::write(dir.path().join(name), data).unwrap();
    }
    dir
}

/// Record framing of a segment file: (start, end, type, entry index if an entry). Stops at a record
/// that does not fit (a torn tail).
fn records(data: &[u8]) -> Vec<(usize, usize, u8, Option<u64>)> {
    let mut out = Vec::new();
    let mut p = 8;
    while p + 9 <= data.len() {
        let len = u32::from_le_bytes(data[p..p + 4].try_into().unwrap()) as usize;
        if p + 8 + len > data.len() {
            break;
        }
        let kind = data[p + 8];
        let index =
            (kind == 1).then(|| u64::from_le_bytes(data[p + 9..p + 17].try_into().unwrap()));
        out.push((p, p + 8 + len, kind, index));
        p += 8 + len;
    }
    out
}

/// A raw record, for hand-made segments.
fn raw_record(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = vec![kind];
    body.extend_from_slice(payload);
    let mut out = (body.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

fn raw_entry(index: u64, term: u64) -> Vec<u8> {
    let mut p = index.to_le_bytes().to_vec();
    p.extend_from_slice(&term.to_le_bytes());
    p.push(0); // no-op
    raw_record(1, &p)
}

fn raw_start(kind: u8, index: u64, term: u64) -> Vec<u8> {
    let mut p = index.to_le_bytes().to_vec();
    p.extend_from_slice(&term.to_le_bytes());
    raw_record(kind, &p)
}

/// Appends entries `from..=to` (term = 1 + index / 25) in batches of 3, each batch with a hard state.
fn append_range(wal: &mut Wal, from: u64, to: u64, expect: &mut Vec<Entry>) -> HardState {
    let mut hs = HardState::default();
    let mut i = from;
    while i <= to {
        let batch: Vec<Entry> = (i..=to.min(i + 2)).map(|k| entry(k, 1 + k / 25)).collect();
        i += batch.len() as u64;
        wal.append(&batch).unwrap();
        expect.extend(batch);
        let last = expect.last().unwrap();
        hs = HardState {
            term: last.term,
            vote: 1,
            commit: last.index - 1,
        };
        wal.set_hard_state(hs).unwrap();
        wal.sync().unwrap();
    }
    hs
}

fn reopen(dir: &Path) -> (Wal, Recovered) {
    Wal::open(dir, small_segments()).unwrap_or_else(|e| panic!("reopen: {e}"))
}

fn assert_log(rec: &Recovered, first: u64, start_term: u64, entries: &[Entry], hs: HardState) {
    assert_eq!(rec.first_index, first, "first index");
    assert_eq!(rec.start_term, start_term, "start term");
    assert_eq!(rec.entries.len(), entries.len(), "entry count");
    assert_eq!(rec.entries, entries, "entries");
    assert_eq!(rec.hard_state, hs, "hard state");
}

#[test]
fn compact_removes_only_wholly_covered_segments_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), small_segments()).unwrap();
    let mut expect = Vec::new();
    let hs = append_range(&mut wal, 1, 100, &mut expect);
    let before = snapshot_dir(dir.path());
    let max_of = |data: &Vec<u8>| records(data).iter().filter_map(|r| r.3).max();
    assert!(before.len() > 10, "rotation made many segments");

    let through = 60;
    let removed = wal.compact(through, expect[59].term).unwrap();
    assert_eq!(wal.first_index(), 61);
    assert_eq!(wal.last_index(), 100);
    let after = snapshot_dir(dir.path());
    // Removed: exactly the oldest segments whose entries are all <= through.
    let names: Vec<&String> = before.keys().collect();
    let want_removed = names
        .iter()
        .take(names.len() - 1)
        .take_while(|n| max_of(&before[**n]).is_none_or(|m| m <= through))
        .count();
    assert!(want_removed > 3);
    assert_eq!(removed, want_removed);
    for (k, n) in names.iter().enumerate() {
        assert_eq!(after.contains_key(*n), k >= removed, "{n}");
    }
    // The first kept segment holds an entry above `through`.
    assert!(max_of(&after[names[removed]]).unwrap() > through);

    drop(wal);
    let (mut wal, rec) = reopen(dir.path());
    assert_log(&rec, 61, expect[59].term, &expect[60..], hs);
    // The log goes on, compacts again (to its very end), and still reopens.
    let hs = append_range(&mut wal, 101, 130, &mut expect);
    assert!(matches!(
        wal.append(&[entry(60, 3)]),
        Err(StorageError::Invalid(_))
    ));
    assert_eq!(
        wal.compact(50, 1).unwrap(),
        0,
        "below the first index: no-op"
    );
    assert!(matches!(wal.compact(131, 6), Err(StorageError::Invalid(_))));
    let removed = wal.compact(130, expect[129].term).unwrap();
    assert!(removed > 5);
    assert!(segment_files(dir.path()).len() <= 2);
    drop(wal);
    let (_, rec) = reopen(dir.path());
    assert_log(&rec, 131, expect[129].term, &[], hs);
}

/// A compaction that removes no segment leaves its log-start record in the middle of a segment; a later
/// compaction removes the segments before that one. The old record then lies below where the log begins,
/// which is harmless (found by the kill -9 snapshot test), and the later record covers the start.
#[test]
fn an_old_log_start_record_below_the_remaining_log_is_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WalOptions {
        segment_size: 2000,
        ..Default::default()
    };
    let (mut wal, _) = Wal::open(dir.path(), opts.clone()).unwrap();
    let mut expect = Vec::new();
    append_range(&mut wal, 1, 150, &mut expect);
    assert!(segment_files(dir.path()).len() >= 3);
    // Through 5: the first segment holds entries above 5, so nothing is removed, and the record goes
    // into the last segment, which begins far above 5.
    assert_eq!(wal.compact(5, expect[4].term).unwrap(), 0);
    let hs = append_range(&mut wal, 151, 200, &mut expect);
    // Through 140: the segments before the one holding that record go.
    let removed = wal.compact(140, expect[139].term).unwrap();
    assert!(removed >= 2, "the first segments go");
    drop(wal);
    let (_, rec) = Wal::open(dir.path(), opts).unwrap_or_else(|e| panic!("reopen: {e}"));
    assert_log(&rec, 141, expect[139].term, &expect[140..], hs);
}

/// A compaction every few appends, trailing the log by a few entries, as a node that snapshots often does:
/// sooner or later a compaction's log-start record opens a fresh segment while the entries just after its
/// index sit in the previous one, which a later compaction removes. Replay then sees the record, a gap,
/// and the next entries; a later record covers the gap (found by the Jepsen runs with snapshots every 100
/// entries). After every compaction a copy of the directory is opened (a crash at that point).
#[test]
fn entries_after_a_log_start_record_in_a_removed_segment() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WalOptions {
        segment_size: 400,
        ..Default::default()
    };
    let (mut wal, _) = Wal::open(dir.path(), opts.clone()).unwrap();
    let mut expect = Vec::new();
    for i in 1..=150u64 {
        let hs = append_range(&mut wal, i, i, &mut expect);
        // Compact when a segment was just opened (the record lands at its start), and every fifth entry.
        let fresh = segment_files(dir.path())
            .last()
            .is_some_and(|p| std::fs::metadata(p).unwrap().len() <= 8);
        if i > 12 && (fresh || i % 5 == 0) {
            let through = i - 12;
            wal.compact(through, expect[(through - 1) as usize].term)
                .unwrap();
            let files = snapshot_dir(dir.path());
            let copy = materialize(&files);
            let (_, rec) = Wal::open(copy.path(), opts.clone())
                .unwrap_or_else(|e| panic!("reopen after compacting through {through}: {e}"));
            assert_log(
                &rec,
                through + 1,
                expect[(through - 1) as usize].term,
                &expect[through as usize..],
                hs,
            );
        }
    }
}

/// The latest hard state may sit in a segment that compaction removes: it must survive.
#[test]
fn compaction_keeps_a_hard_state_written_long_ago() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), small_segments()).unwrap();
    let hs = HardState {
        term: 7,
        vote: 2,
        commit: 3,
    };
    wal.set_hard_state(hs).unwrap();
    let mut expect = Vec::new();
    for i in 1..=60 {
        wal.append(&[entry(i, 1 + i / 25)]).unwrap();
        expect.push(entry(i, 1 + i / 25));
        wal.sync().unwrap();
    }
    assert!(wal.compact(55, expect[54].term).unwrap() > 3);
    assert_eq!(wal.hard_state(), hs);
    drop(wal);
    let (_, rec) = reopen(dir.path());
    assert_log(&rec, 56, expect[54].term, &expect[55..], hs);
}

/// Overwritten suffixes across segment boundaries: a segment goes only if nothing it ever held is above
/// the compaction point.
#[test]
fn compaction_with_overwrites_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), small_segments()).unwrap();
    let mut expect = Vec::new();
    append_range(&mut wal, 1, 40, &mut expect);
    // A new leader overwrites 31..=40 with term 9 entries, then the log grows.
    expect.truncate(30);
    let over: Vec<Entry> = (31..=45).map(|i| entry(i, 9)).collect();
    wal.append(&over).unwrap();
    expect.extend(over);
    wal.sync().unwrap();
    let hs = HardState {
        term: 9,
        vote: 3,
        commit: 45,
    };
    wal.set_hard_state(hs).unwrap();
    wal.sync().unwrap();
    let before = snapshot_dir(dir.path());
    wal.compact(35, 9).unwrap();
    // Every segment that held an entry above 35 (including the overwritten 36..=40) is still there.
    let after = snapshot_dir(dir.path());
    for (name, data) in &before {
        if records(data).iter().any(|r| r.3.is_some_and(|i| i > 35)) {
            assert!(after.contains_key(name), "{name} removed too early");
        }
    }
    drop(wal);
    let (_, rec) = reopen(dir.path());
    assert_log(&rec, 36, 9, &expect[35..], hs);
}

/// Regression (found by `tests/fuzz.rs`): a segment that begins with entries later overwritten from
/// below them, and a compaction that removes the segment holding what precedes the overwrite. Replay used
/// to meet entry 10, then the overwrite at 9, and refused the log ("entry 9 does not follow the log").
#[test]
fn compaction_removes_the_segment_below_an_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), small_segments()).unwrap();
    let mut expect: Vec<Entry> = (1..=9).map(|i| entry(i, 1)).collect();
    wal.append(&expect).unwrap();
    wal.sync().unwrap(); // over 300 bytes: the next records go to a new segment
    assert_eq!(segment_files(dir.path()).len(), 2);
    wal.append(&[entry(10, 1)]).unwrap();
    // A new leader overwrites from 9, in the second segment.
    let over: Vec<Entry> = (9..=11).map(|i| entry(i, 2)).collect();
    wal.append(&over).unwrap();
    expect.truncate(8);
    expect.extend(over);
    let hs = HardState {
        term: 2,
        vote: 2,
        commit: 11,
    };
    wal.set_hard_state(hs).unwrap();
    wal.sync().unwrap();
    assert_eq!(wal.compact(9, 2).unwrap(), 1, "the first segment goes");
    drop(wal);
    let (_, rec) = reopen(dir.path());
    assert_log(&rec, 10, 2, &expect[9..], hs);
    // Without the log-start record the same segment is a missing-segment error, not a silent log.
    let files = snapshot_dir(dir.path());
    assert_eq!(files.len(), 1);
    let (name, data) = files.iter().next().unwrap();
    let cut = records(data)
        .iter()
        .find(|r| r.2 == 3)
        .map(|r| r.0)
        .expect("a log-start record");
    let mut damaged = files.clone();
    damaged.insert(name.clone(), data[..cut].to_vec());
    let d = materialize(&damaged);
    let err = Wal::open(d.path(), small_segments())
        .err()
        .expect("refused");
    assert!(err.to_string().contains("a segment is missing"), "{err}");
}

/// Regression (found by `tests/fuzz.rs`): a compaction whose log-start record opens a fresh segment
/// while the entries after it still lie in the older one, then a later compaction that removes the older
/// one. Replay used to take the first record's start (3) for the log's and refuse the next entry (7) as
/// a gap, although the later log-start record covers it.
#[test]
fn a_later_compaction_removes_the_entries_after_an_earlier_log_start() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), small_segments()).unwrap();
    let entries: Vec<Entry> = (1..=6).map(|i| entry(i, 1)).collect();
    wal.append(&entries).unwrap();
    wal.sync().unwrap();
    assert_eq!(segment_files(dir.path()).len(), 1);
    // Its log-start and hard-state records fill the segment to 300 bytes: the next record opens a new one.
    wal.compact(1, 1).unwrap();
    assert_eq!(segment_files(dir.path()).len(), 2);
    assert_eq!(
        wal.compact(2, 1).unwrap(),
        0,
        "3..=6 are still in the first segment"
    );
    wal.append(&[entry(7, 1)]).unwrap();
    wal.sync().unwrap();
    assert_eq!(wal.compact(6, 1).unwrap(), 1);
    drop(wal);
    let (_, rec) = reopen(dir.path());
    assert_log(&rec, 7, 1, &[entry(7, 1)], HardState::default());
}

/// Every state a crash during `compact` can leave: the new records torn at every byte (old segments all
/// present), then each prefix of the segment removals. Each opens to the state before or after.
#[test]
fn crash_during_compaction_recovers_before_or_after() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), small_segments()).unwrap();
    let mut expect = Vec::new();
    let hs = append_range(&mut wal, 1, 80, &mut expect);
    let before = snapshot_dir(dir.path());
    let active = before.keys().last().unwrap().clone();
    let through = 50;
    let term = expect[49].term;
    let removed = wal.compact(through, term).unwrap();
    assert!(removed > 2);
    let after = snapshot_dir(dir.path());
    let new_active = &after[&active];
    assert!(new_active.len() > before[&active].len());

    // 1. Torn log-start / hard-state records, nothing removed yet.
    let (mut old_state, mut new_state) = (0, 0);
    for cut in before[&active].len()..new_active.len() {
        let mut files = before.clone();
        files.insert(active.clone(), new_active[..cut].to_vec());
        let d = materialize(&files);
        let (_, rec) = reopen(d.path());
        // The log-start record is the first of the two: once whole, the log starts after `through`.
        let start_whole = records(&new_active[..cut]).iter().any(|r| r.2 == 3);
        if start_whole {
            assert_log(&rec, through + 1, term, &expect[50..], hs);
            new_state += 1;
        } else {
            assert_log(&rec, 1, 0, &expect, hs);
            old_state += 1;
        }
    }
    assert!(old_state > 20 && new_state > 20, "{old_state} {new_state}");
    // 2. Records durable; any prefix of the (oldest-first) removals done.
    let names: Vec<String> = before.keys().cloned().collect();
    for k in 0..=removed {
        let mut files = before.clone();
        files.insert(active.clone(), new_active.clone());
        for n in &names[..k] {
            files.remove(n);
        }
        let d = materialize(&files);
        let (mut w, rec) = reopen(d.path());
        assert_log(&rec, through + 1, term, &expect[50..], hs);
        // Compacting to the same point again finishes the removals.
        assert_eq!(w.compact(through, term).unwrap(), removed - k);
        assert_eq!(w.compact(through, term).unwrap(), 0);
        assert!(matches!(
            w.compact(through, term + 1),
            Err(StorageError::Invalid(_))
        ));
        drop(w);
        assert_eq!(
            segment_files(d.path()).len(),
            segment_files(dir.path()).len()
        );
        let (_, rec) = reopen(d.path());
        assert_log(&rec, through + 1, term, &expect[50..], hs);
    }
}

/// After compaction, cut the last segment at every byte of its tail: appends made after the compaction
/// are recovered as a prefix; cuts into the (synced) compaction records themselves are damage, which is
/// refused, never misread.
#[test]
fn torn_tail_after_compaction() {
    let src = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(
        src.path(),
        WalOptions {
            segment_size: 1500,
            ..Default::default()
        },
    )
    .unwrap();
    let mut expect = Vec::new();
    append_range(&mut wal, 1, 60, &mut expect);
    let term = expect[44].term;
    assert!(wal.compact(45, term).unwrap() > 0);
    let seg = segment_files(src.path()).pop().unwrap();
    let compacted_len = std::fs::read(&seg).unwrap().len();
    append_range(&mut wal, 61, 70, &mut expect);
    drop(wal);
    assert_eq!(
        segment_files(src.path()).pop().unwrap(),
        seg,
        "no rotation since"
    );
    let full = std::fs::read(&seg).unwrap();
    let recs = records(&full);
    let start_rec = recs.iter().rev().find(|r| r.2 == 3).unwrap();
    let (mut refused, mut recovered) = (0, 0);
    for cut in start_rec.0..full.len() {
        let d = tempfile::tempdir().unwrap();
        for f in std::fs::read_dir(src.path()).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), d.path().join(f.file_name())).unwrap();
        }
        std::fs::write(d.path().join(seg.file_name().unwrap()), &full[..cut]).unwrap();
        match Wal::open(d.path(), WalOptions::default()) {
            Ok((_, rec)) => {
                assert!(cut >= start_rec.1, "cut at {cut}: torn log-start accepted");
                assert_eq!(rec.first_index, 46, "cut at {cut}");
                assert_eq!(rec.start_term, term);
                assert_eq!(rec.entries[..], expect[45..45 + rec.entries.len()]);
                if cut >= compacted_len {
                    assert!(
                        rec.entries.len() >= 15,
                        "cut at {cut}: entries before compaction lost"
                    );
                }
                recovered += 1;
            }
            Err(StorageError::Corrupt { reason, .. }) => {
                assert!(cut < start_rec.1, "cut at {cut} refused: {reason}");
                assert!(reason.contains("segment is missing"), "{reason}");
                refused += 1;
            }
            Err(e) => panic!("cut at {cut}: {e}"),
        }
    }
    assert!(refused > 10 && recovered > 300, "{refused} {recovered}");
}

#[test]
fn reset_replaces_the_log_and_reopens() {
    for (reset_to, label) in [(500, "beyond the log"), (30, "inside the log")] {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), small_segments()).unwrap();
        let mut expect = Vec::new();
        append_range(&mut wal, 1, 60, &mut expect);
        let hs = HardState {
            term: 12,
            vote: 0,
            commit: reset_to,
        };
        wal.reset(reset_to, 11, hs).unwrap();
        assert_eq!(segment_files(dir.path()).len(), 1, "{label}");
        assert_eq!(
            (wal.first_index(), wal.last_index()),
            (reset_to + 1, reset_to)
        );
        drop(wal);
        let (mut wal, rec) = reopen(dir.path());
        assert_log(&rec, reset_to + 1, 11, &[], hs);
        // The log continues after the snapshot.
        let next: Vec<Entry> = (reset_to + 1..=reset_to + 5)
            .map(|i| entry(i, 12))
            .collect();
        wal.append(&next).unwrap();
        wal.sync().unwrap();
        drop(wal);
        let (_, rec) = reopen(dir.path());
        assert_log(&rec, reset_to + 1, 11, &next, hs);
    }
}

#[test]
fn reset_after_compaction_and_to_a_lower_index() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), small_segments()).unwrap();
    let mut expect = Vec::new();
    append_range(&mut wal, 1, 60, &mut expect);
    wal.compact(40, expect[39].term).unwrap();
    let hs = HardState {
        term: 5,
        vote: 1,
        commit: 20,
    };
    // Lower than the compaction point: the storage layer does what it is told.
    wal.reset(20, 3, hs).unwrap();
    drop(wal);
    let (_, rec) = reopen(dir.path());
    assert_log(&rec, 21, 3, &[], hs);
}

/// Every state a crash during `reset` can leave: the new segment not yet renamed (old log), renamed
/// with any prefix of the old segments removed (new log; `open` removes the rest), and torn appends
/// after it (a prefix of them).
#[test]
fn crash_during_reset_recovers_old_or_new() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), small_segments()).unwrap();
    let mut expect = Vec::new();
    let old_hs = append_range(&mut wal, 1, 60, &mut expect);
    let before = snapshot_dir(dir.path());
    let hs = HardState {
        term: 20,
        vote: 4,
        commit: 900,
    };
    wal.reset(900, 19, hs).unwrap();
    let after = snapshot_dir(dir.path());
    assert_eq!(after.len(), 1);
    let (new_name, new_seg) = after.iter().next().unwrap();
    assert!(new_name > before.keys().last().unwrap(), "higher sequence");

    // Written to the temporary file, not renamed: the old log, and the leftover goes.
    let mut files = before.clone();
    files.insert(new_name.replace(".log", ".tmp"), new_seg.clone());
    let d = materialize(&files);
    let (_, rec) = reopen(d.path());
    assert_log(&rec, 1, 0, &expect, old_hs);
    assert_eq!(snapshot_dir(d.path()).len(), before.len());

    // Renamed; k of the old segments removed.
    let names: Vec<&String> = before.keys().collect();
    for k in 0..=names.len() {
        let mut files = before.clone();
        files.insert(new_name.clone(), new_seg.clone());
        for n in &names[..k] {
            files.remove(*n);
        }
        let d = materialize(&files);
        let (_, rec) = reopen(d.path());
        assert_log(&rec, 901, 19, &[], hs);
        assert_eq!(segment_files(d.path()).len(), 1, "open finished the reset");
    }

    // Appends after the reset, torn at every byte.
    let next: Vec<Entry> = (901..=905).map(|i| entry(i, 20)).collect();
    for e in &next {
        wal.append(std::slice::from_ref(e)).unwrap();
        wal.sync().unwrap();
    }
    drop(wal);
    let full = snapshot_dir(dir.path());
    let (name, data) = full.iter().next().unwrap();
    for cut in new_seg.len()..=data.len() {
        let mut files = full.clone();
        files.insert(name.clone(), data[..cut].to_vec());
        let d = materialize(&files);
        let (_, rec) = reopen(d.path());
        let whole = records(&data[..cut]).iter().filter(|r| r.2 == 1).count();
        assert_log(&rec, 901, 19, &next[..whole], hs);
    }
}

/// Hand-made segments: a reset record above the last index empties the log; a log-start record above
/// it too (older semantics kept); a log-start record contradicting a held entry's term, a first segment
/// beginning above 1 with nothing to explain it, and a log-start record below the known start are refused.
#[test]
fn replay_rules_for_start_records() {
    let header = b"NIMBWAL\x01".to_vec();
    let open_raw = |records: &[Vec<u8>]| {
        let d = tempfile::tempdir().unwrap();
        let mut data = header.clone();
        for r in records {
            data.extend_from_slice(r);
        }
        std::fs::write(d.path().join("wal-00000000000000000001.log"), &data).unwrap();
        let r = Wal::open(d.path(), WalOptions::default()).map(|(_, rec)| rec);
        (d, r)
    };
    for kind in [3u8, 4] {
        let (_, rec) = open_raw(&[raw_entry(1, 1), raw_entry(2, 1), raw_start(kind, 10, 4)]);
        let rec = rec.unwrap();
        assert_eq!((rec.first_index, rec.start_term), (11, 4));
        assert!(rec.entries.is_empty());
    }
    // Reset drops everything even when it points inside the log; log-start keeps the suffix.
    let (_, rec) = open_raw(&[raw_entry(1, 1), raw_entry(2, 1), raw_start(4, 1, 1)]);
    assert!(rec.unwrap().entries.is_empty());
    let (_, rec) = open_raw(&[raw_entry(1, 1), raw_entry(2, 1), raw_start(3, 1, 1)]);
    assert_eq!(rec.unwrap().entries.len(), 1);

    let refused = |recs: &[Vec<u8>], what: &str| {
        let (_, r) = open_raw(recs);
        match r {
            Err(StorageError::Corrupt { reason, .. }) => {
                assert!(reason.contains(what), "{reason}")
            }
            other => panic!(
                "expected corruption ({what}), got {:?}",
                other.map(|r| r.first_index)
            ),
        }
    };
    refused(
        &[raw_entry(1, 1), raw_entry(2, 1), raw_start(3, 2, 5)],
        "has term 5",
    );
    refused(&[raw_entry(7, 1), raw_entry(8, 1)], "segment is missing");
    refused(&[raw_entry(7, 1), raw_start(3, 4, 1)], "segment is missing");
    refused(
        &[raw_start(3, 10, 2), raw_start(3, 5, 2)],
        "already begins at 11",
    );
    refused(&[raw_start(4, u64::MAX, 2)], "out of range");
    // Covered by a later record: accepted.
    let (_, rec) = open_raw(&[raw_entry(7, 1), raw_entry(8, 1), raw_start(3, 7, 1)]);
    let rec = rec.unwrap();
    assert_eq!((rec.first_index, rec.entries.len()), (8, 1));
}

#[test]
fn a_missing_first_segment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), small_segments()).unwrap();
    append_range(&mut wal, 1, 30, &mut Vec::new());
    drop(wal);
    std::fs::remove_file(&segment_files(dir.path())[0]).unwrap();
    let err = Wal::open(dir.path(), small_segments())
        .err()
        .expect("refused");
    assert!(err.to_string().contains("segment is missing"), "{err}");
}
