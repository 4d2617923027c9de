//! A burst of keep-alive connections opened at once: every one of them is served while all stay open.
//!
//! tiny_http 0.12's thread pool can queue a new connection's task behind long-lived ones when connections
//! arrive faster than its idle threads wake; such a connection is never served while the others stay
//! open. The guard hands new connections over one at a time (see `http_guard.rs`); this test opens
//! `CONNS` connections from as many threads released together, sends one request on each, and requires
//! every answer within a deadline, with no connection closed until every thread is done. Each round
//! starts a fresh node (a fresh pool), the situation in which the burst starved connections before.

mod common;

use common::TestCluster;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::time::Duration;

const ELECTION: Duration = Duration::from_secs(20);
const CONNS: usize = 96;
const ROUNDS: usize = 3;
/// Far longer than a served request takes on a loaded machine; a starved one never finishes.
const ANSWER_WITHIN: Duration = Duration::from_secs(15);

/// One request on a fresh connection; true when a 200 answer arrived in time. The connection stays open
/// until `done` releases every thread, so a starved task cannot be rescued by others closing.
fn one(addr: std::net::SocketAddr, start: &Barrier, done: &Barrier) -> bool {
    start.wait();
    let served = (|| {
        let mut s = TcpStream::connect(addr).ok()?;
        s.set_read_timeout(Some(ANSWER_WITHIN)).ok()?;
        s.write_all(b"GET /get?key=burst&consistency=stale HTTP/1.1\r\nHost: x\r\n\r\n")
            .ok()?;
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).ok()?;
            if n == 0 {
                return None;
            }
            got.extend_from_slice(&buf[..n]);
        }
        // 404: the key does not exist; any answer proves the connection was served.
        let ok = got.starts_with(b"HTTP/1.1 404") || got.starts_with(b"HTTP/1.1 200");
        Some((ok, s))
    })();
    done.wait();
    matches!(served, Some((true, _)))
}

#[test]
fn every_connection_of_a_burst_is_served() {
    for round in 0..ROUNDS {
        let mut c = TestCluster::start_with(1, &["--http-max-connections", "512"]);
        c.wait_leader(ELECTION);
        let addr = c.http_addr(0);
        let start = Arc::new(Barrier::new(CONNS));
        let done = Arc::new(Barrier::new(CONNS));
        let threads: Vec<_> = (0..CONNS)
            .map(|_| {
                let (start, done) = (start.clone(), done.clone());
                std::thread::spawn(move || one(addr, &start, &done))
            })
            .collect();
        let served = threads
            .into_iter()
            .map(|t| t.join().unwrap_or(false))
            .filter(|&ok| ok)
            .count();
        assert_eq!(
            served, CONNS,
            "round {round}: {served} of {CONNS} connections opened at once were served"
        );
        c.check_alive();
    }
}
