//! The HTTP query parser on arbitrary query strings: never panics; what it accepts, percent-encoded again,
//! parses to the same pairs; it accepts exactly the strings whose every `%` starts two hex digits and
//! whose names decode to UTF-8.
#![no_main]

use hash_nimbus::http_client::encode_query_value;
use hash_nimbus::server::http::parse_query;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(q) = std::str::from_utf8(data) else {
        return;
    };
    let escapes_ok = q
        .bytes()
        .enumerate()
        .filter(|&(_, c)| c == b'%')
        .all(|(i, _)| {
            let b = q.as_bytes();
            b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit)
        });
    match parse_query(q) {
        Ok(pairs) => {
            assert!(escapes_ok, "accepted a malformed escape in {q:?}");
            let again: Vec<String> = pairs
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{}={}",
                        encode_query_value(k.as_bytes()),
                        encode_query_value(v)
                    )
                })
                .collect();
            assert_eq!(parse_query(&again.join("&")).as_ref(), Ok(&pairs));
        }
        Err(e) => assert!(!escapes_ok || e.contains("not UTF-8"), "refused {q:?}: {e}"),
    }
});
