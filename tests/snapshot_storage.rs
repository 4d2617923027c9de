//! The snapshot store: writing, listing, pruning, verification against every kind of damage, the corrupt
//! fallback, and receiving a leader's file in chunks.

use hash_nimbus::raft::Rng;
use hash_nimbus::storage::{
    SnapshotStore, StorageError, SNAPSHOT_HEADER_LEN, SNAPSHOT_MAX_BODY_LEN, SNAPSHOT_TRAILER_LEN,
};
use std::io::{Read, Write};
use std::path::Path;

/// A deterministic body of `len` bytes.
fn body(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

fn write(store: &SnapshotStore, index: u64, term: u64, data: &[u8]) -> std::path::PathBuf {
    store
        .write(index, term, |w| {
            // In uneven pieces, as a real encoder would.
            for chunk in data.chunks(1000) {
                w.write_all(chunk)?;
            }
            Ok(())
        })
        .unwrap()
        .path
}

fn read_body(path: &Path) -> Vec<u8> {
    let mut r = SnapshotStore::open_body(path).unwrap();
    let mut out = Vec::new();
    r.read_to_end(&mut out).unwrap();
    out
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn write_list_verify_read_and_prune() {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path(), 2).unwrap();
    assert!(store.list().unwrap().is_empty());
    assert!(store.latest_valid().unwrap().is_none());
    // Larger than the I/O buffers, so streaming is exercised.
    let big = body(1, 1_000_003);
    let meta = store.write(10, 2, |w| w.write_all(&big)).unwrap();
    assert_eq!((meta.index, meta.term), (10, 2));
    assert_eq!(
        meta.size,
        (big.len() + SNAPSHOT_HEADER_LEN + SNAPSHOT_TRAILER_LEN) as u64
    );
    assert_eq!(meta.body_len(), big.len() as u64);
    assert_eq!(
        meta.path.file_name().unwrap(),
        "snap-00000000000000000010-00000000000000000002.snap"
    );
    assert_eq!(SnapshotStore::verify(&meta.path).unwrap(), meta);
    assert_eq!(read_body(&meta.path), big);
    // An empty body is fine.
    let empty = store.write(11, 2, |_| Ok(())).unwrap();
    assert_eq!(read_body(&empty.path), b"");
    // Newest first; only `keep` survive; the order is by index, not by write time.
    let indexes = || -> Vec<u64> { store.list().unwrap().iter().map(|m| m.index).collect() };
    assert_eq!(indexes(), [11, 10]);
    write(&store, 30, 3, b"thirty");
    assert_eq!(indexes(), [30, 11]);
    write(&store, 40, 3, b"forty");
    assert_eq!(indexes(), [40, 30]);
    // Older than both but just written: not removed by its own pruning.
    write(&store, 20, 3, b"twenty");
    assert_eq!(indexes(), [40, 30, 20]);
    write(&store, 50, 4, b"fifty");
    assert_eq!(indexes(), [50, 40]);
    assert_eq!(store.latest_valid().unwrap().unwrap().index, 50);
    // A reopened store sees the same.
    let again = SnapshotStore::open(dir.path(), 2).unwrap();
    assert_eq!(again.list().unwrap(), store.list().unwrap());
    assert!(matches!(
        SnapshotStore::open(dir.path(), 0),
        Err(StorageError::Invalid(_))
    ));
    assert!(matches!(
        store.write(0, 1, |_| Ok(())),
        Err(StorageError::Invalid(_))
    ));
}

#[test]
fn failed_writes_and_leftovers_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path(), 3).unwrap();
    let err = store
        .write(5, 1, |w| {
            w.write_all(b"partial")?;
            Err(std::io::Error::other("encoder failed"))
        })
        .unwrap_err();
    assert!(err.to_string().contains("encoder failed"), "{err}");
    assert!(file_names(dir.path()).is_empty(), "temporary file removed");
    // Leftovers of a crash: removed on open. Strangers and corrupt files are left alone.
    std::fs::write(dir.path().join("write-5-1-0.tmp"), b"half").unwrap();
    std::fs::write(
        dir.path().join("incoming-2-00000000000000000005.tmp"),
        b"half",
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
    std::fs::write(dir.path().join("snap-1-1.snap"), b"x").unwrap();
    let store = SnapshotStore::open(dir.path(), 3).unwrap();
    assert_eq!(file_names(dir.path()), ["notes.txt", "snap-1-1.snap"]);
    assert!(store.list().unwrap().is_empty());
}

/// A store is shared with a background thread that writes while the owner reads.
#[test]
fn writes_from_another_thread() {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path(), 2).unwrap();
    let bg = store.clone();
    let handle = std::thread::spawn(move || bg.write(7, 1, |w| w.write_all(b"from a thread")));
    let meta = handle.join().unwrap().unwrap();
    assert_eq!(store.latest_valid().unwrap(), Some(meta.clone()));
    assert_eq!(read_body(&meta.path), b"from a thread");
}

/// Every single-byte change, every truncation and any extension of a snapshot file is detected by
/// `verify`, with an error naming the file; nothing panics.
#[test]
fn verify_detects_every_damage() {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path(), 1).unwrap();
    let meta = store.write(3, 1, |w| w.write_all(&body(2, 300))).unwrap();
    let good = std::fs::read(&meta.path).unwrap();
    let probe = dir.path().join("probe.bin");
    let check = |data: &[u8], what: &str| {
        std::fs::write(&probe, data).unwrap();
        match SnapshotStore::verify(&probe) {
            Err(e @ StorageError::Corrupt { .. }) => {
                assert!(e.to_string().contains("probe.bin"), "{what}: {e}");
                e.to_string()
            }
            other => panic!("{what}: expected corruption, got {other:?}"),
        }
    };
    for pos in 0..good.len() {
        for flip in [0x01u8, 0x80, 0xFF] {
            let mut bad = good.clone();
            bad[pos] ^= flip;
            check(&bad, &format!("flip {flip:#x} at {pos}"));
        }
    }
    for cut in 0..good.len() {
        check(&good[..cut], &format!("cut at {cut}"));
    }
    let mut long = good.clone();
    long.push(0);
    assert!(check(&long, "extended").contains("the file is"));
    // Specific reasons.
    let mut bad = good.clone();
    bad[10] ^= 1;
    assert!(check(&bad, "index").contains("checksum mismatch"));
    let mut bad = good.clone();
    bad[8] = 9;
    assert!(check(&bad, "version").contains("unsupported snapshot version 9"));
    let mut bad = good.clone();
    bad[26..34].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(check(&bad, "length").contains("exceeds the limit"));
    let mut bad = good.clone();
    bad[26..34].copy_from_slice(&SNAPSHOT_MAX_BODY_LEN.to_le_bytes());
    assert!(check(&bad, "length vs size").contains("the file is"));
}

/// The newest snapshot is damaged: it is moved aside (kept, renamed `.corrupt`) and the previous one
/// is used; a file whose header disagrees with its name is treated the same.
#[test]
fn latest_valid_skips_and_keeps_corrupt_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path(), 3).unwrap();
    write(&store, 10, 1, b"ten");
    write(&store, 20, 1, b"twenty");
    let newest = write(&store, 30, 2, b"thirty");
    let mut data = std::fs::read(&newest).unwrap();
    let n = data.len();
    data[n - 6] ^= 0x20;
    std::fs::write(&newest, &data).unwrap();
    // A copy of 10's file under a newer name: valid bytes, wrong name.
    let misnamed = dir
        .path()
        .join("snap-00000000000000000025-00000000000000000002.snap");
    std::fs::copy(
        dir.path()
            .join("snap-00000000000000000010-00000000000000000001.snap"),
        &misnamed,
    )
    .unwrap();
    let latest = store.latest_valid().unwrap().unwrap();
    assert_eq!(latest.index, 20);
    assert_eq!(read_body(&latest.path), b"twenty");
    let names = file_names(dir.path());
    assert!(names.contains(&"snap-00000000000000000030-00000000000000000002.snap.corrupt".into()));
    assert!(names.contains(&"snap-00000000000000000025-00000000000000000002.snap.corrupt".into()));
    let listed: Vec<u64> = store.list().unwrap().iter().map(|m| m.index).collect();
    assert_eq!(listed, [20, 10]);
    // Damaged again under the same name: a second `.corrupt` name, the first is not overwritten.
    let again = write(&store, 30, 2, b"thirty again");
    std::fs::write(&again, b"junk").unwrap();
    assert_eq!(store.latest_valid().unwrap().unwrap().index, 20);
    assert!(file_names(dir.path())
        .contains(&"snap-00000000000000000030-00000000000000000002.snap.corrupt.1".into()));
}

/// A reader opened after verification still checks the trailer: a file changed under it fails at the
/// end instead of returning bad data as good.
#[test]
fn reader_checks_the_checksum_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path(), 1).unwrap();
    let data = body(3, 2_000_000);
    let meta = store.write(9, 9, |w| w.write_all(&data)).unwrap();
    let mut r = SnapshotStore::open_body(&meta.path).unwrap();
    assert_eq!((r.meta().index, r.meta().term), (9, 9));
    // Change a byte near the end, beyond anything the reader has buffered yet.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&meta.path)
        .unwrap();
    use std::io::{Seek, SeekFrom};
    f.seek(SeekFrom::Start(meta.size - 10)).unwrap();
    f.write_all(&[data[data.len() - 6] ^ 1]).unwrap();
    drop(f);
    let mut out = Vec::new();
    let err = r.read_to_end(&mut out).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
}

/// The leader's file, received in chunks of every size, lands under its canonical name.
#[test]
fn receive_in_chunks_and_import() {
    let src_dir = tempfile::tempdir().unwrap();
    let leader = SnapshotStore::open(src_dir.path(), 1).unwrap();
    let data = body(4, 5000);
    let sent = leader.write(77, 5, |w| w.write_all(&data)).unwrap();
    let wire = std::fs::read(&sent.path).unwrap();
    for chunk in [1, 7, 33, 34, 35, 4096, wire.len()] {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path(), 2).unwrap();
        let mut inc = store.receive(1, 77).unwrap();
        assert_eq!(inc.path(), store.incoming_path(1, 77));
        for c in wire.chunks(chunk) {
            assert_eq!(inc.received() as usize % chunk, 0);
            inc.append(c).unwrap();
        }
        assert_eq!(inc.expected_size(), Some(wire.len() as u64));
        let meta = inc.finish().unwrap();
        assert_eq!((meta.index, meta.term, meta.size), (77, 5, sent.size));
        assert_eq!(
            file_names(dir.path()),
            ["snap-00000000000000000077-00000000000000000005.snap"]
        );
        assert_eq!(read_body(&meta.path), data);
    }
}

#[test]
fn bad_transfers_are_refused_and_cleaned_up() {
    let src_dir = tempfile::tempdir().unwrap();
    let leader = SnapshotStore::open(src_dir.path(), 1).unwrap();
    let sent = leader.write(77, 5, |w| w.write_all(&body(5, 500))).unwrap();
    let wire = std::fs::read(&sent.path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path(), 2).unwrap();

    // Incomplete.
    let mut inc = store.receive(1, 77).unwrap();
    inc.append(&wire[..wire.len() - 1]).unwrap();
    let err = inc.finish().unwrap_err();
    assert!(err.to_string().contains("incomplete"), "{err}");
    assert!(file_names(dir.path()).is_empty(), "partial file removed");
    // More than announced: refused before it is written, and the transfer is dead.
    let mut inc = store.receive(1, 77).unwrap();
    let mut long = wire.clone();
    long.extend_from_slice(b"extra");
    let err = inc.append(&long).unwrap_err();
    assert!(err.to_string().contains("more than"), "{err}");
    assert!(inc.append(b"x").is_err());
    drop(inc);
    // Another index than expected, a bad magic: refused as soon as the header is in.
    let mut inc = store.receive(1, 78).unwrap();
    let err = inc.append(&wire[..SNAPSHOT_HEADER_LEN]).unwrap_err();
    assert!(err.to_string().contains("index 78"), "{err}");
    drop(inc);
    let mut inc = store.receive(1, 77).unwrap();
    inc.append(b"NOTASNAP").unwrap();
    let err = inc.append(&[0; 30]).unwrap_err();
    assert!(err.to_string().contains("bad magic"), "{err}");
    drop(inc);
    // Right size, damaged body: `finish` verifies.
    let mut inc = store.receive(1, 77).unwrap();
    let mut bad = wire.clone();
    bad[100] ^= 4;
    inc.append(&bad).unwrap();
    let err = inc.finish().unwrap_err();
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
    assert!(file_names(dir.path()).is_empty());
    // `import` of a file placed by other means.
    let path = store.incoming_path(3, 77);
    std::fs::write(&path, &wire).unwrap();
    let meta = store.import(&path).unwrap();
    assert_eq!(meta.index, 77);
    assert!(!path.exists());
}
