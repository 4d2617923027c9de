//! The peer message decoder on arbitrary frame payloads: never panics, and whatever it accepts re-encodes
//! to exactly the input (the encoding is canonical).
#![no_main]

use hash_nimbus::transport::codec::{decode_message, encode_message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = decode_message(data) {
        assert_eq!(encode_message(&m), data, "{m:?} is not canonical");
    }
});
