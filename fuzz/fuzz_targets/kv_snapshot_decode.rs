//! The KV snapshot decoder on arbitrary bodies: never panics, never allocates beyond its limits, and
//! whatever it accepts re-encodes to exactly the input.
#![no_main]

use hash_nimbus::kv::KvStore;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Most inputs get the valid 8-byte magic and version in front, so the fuzzer spends its time on the
    // body; an input starting with 0xFF is decoded as it is, header checks included.
    let input = match data.split_first() {
        Some((0xff, rest)) => rest.to_vec(),
        _ => [&b"NIMBKVS\x01"[..], data].concat(),
    };
    if let Ok(kv) = KvStore::read_snapshot(&mut &input[..], 4096, 1 << 20) {
        let mut out = Vec::new();
        kv.write_snapshot(&mut out).expect("write to a Vec");
        assert_eq!(out, input, "accepted a non-canonical snapshot");
    }
});
