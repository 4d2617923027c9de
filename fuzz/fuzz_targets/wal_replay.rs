//! WAL replay of one segment file with arbitrary contents: opening never panics; a log it accepts is
//! contiguous, and opening it again (after any torn-tail repair) recovers the same log with nothing left
//! to repair. A refused segment is left unchanged on disk (unless it is refused as following a missing
//! segment, after its torn tail was cut).
#![no_main]

use hash_nimbus::storage::{Wal, WalOptions};
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("nimbus-fuzz-wal-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("create the scratch directory");
        d
    })
}

fn options() -> WalOptions {
    WalOptions {
        segment_size: 1 << 20,
        max_record_size: 1 << 20,
    }
}

fuzz_target!(|data: &[u8]| {
    let dir = dir();
    for e in std::fs::read_dir(dir).expect("list") {
        std::fs::remove_file(e.expect("entry").path()).expect("clear");
    }
    // Most inputs get the valid segment header in front, so the fuzzer spends its time on the records;
    // an input starting with 0xFF is the whole file, header included.
    let data = match data.split_first() {
        Some((0xff, rest)) => rest.to_vec(),
        _ => [&b"NIMBWAL\x01"[..], data].concat(),
    };
    let seg = dir.join(format!("wal-{:020}.log", 1));
    std::fs::write(&seg, &data).expect("write the segment");
    match Wal::open(dir, options()) {
        Ok((wal, rec)) => {
            for (k, e) in rec.entries.iter().enumerate() {
                assert_eq!(e.index, rec.first_index + k as u64, "not contiguous");
            }
            drop(wal);
            let repaired = std::fs::read(&seg).expect("read");
            let (_, again) = Wal::open(dir, options()).expect("a log that opened once opens again");
            assert_eq!(again.entries, rec.entries);
            assert_eq!(again.first_index, rec.first_index);
            assert_eq!(again.start_term, rec.start_term);
            assert_eq!(again.hard_state, rec.hard_state);
            assert_eq!(
                std::fs::read(&seg).expect("read"),
                repaired,
                "repaired twice"
            );
        }
        // A torn tail cut before a missing segment was noticed is the one change a refusal may leave.
        Err(e) if e.to_string().contains("a segment is missing") => {}
        Err(_) => assert_eq!(
            std::fs::read(&seg).expect("read"),
            data,
            "changed on refusal"
        ),
    }
});
