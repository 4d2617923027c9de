//! A bounded `/set` load generator for benchmarks, with keep-alive connections (the library's
//! `HttpClient`). Keys are 16 bytes (`PREFIX` as 6 hex digits, then a 10-hex-digit counter), values 100
//! bytes. Every loop stops at its count or its time limit, whichever comes first.
//!
//! ```text
//! write_load load    ADDR COUNT CONNS SECS PREFIX   COUNT successful writes over CONNS connections;
//!                                                   prints the rate and why requests failed
//! write_load latency ADDR COUNT SECS PREFIX         one connection, each request timed; prints the
//!                                                   distribution, every request slower than 50 ms
//!                                                   (with its offset from the start), and a summary line
//! ```
//!
//! A request that fails (non-200 or an I/O error) is counted by its reason and not retried: the load goes on
//! with the next key until COUNT writes succeeded or SECS passed. The latency loop counts failures too.

use hash_nimbus::http_client::HttpClient;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn path(prefix: u32, i: u64) -> String {
    format!(
        "/set?key={:06x}{:010x}&value={}{:010}",
        prefix & 0xff_ffff,
        i,
        "v".repeat(90),
        i % 10_000_000_000
    )
}

fn usage() -> ! {
    eprintln!(
        "usage: write_load load ADDR COUNT CONNS SECS PREFIX | write_load latency ADDR COUNT SECS PREFIX"
    );
    std::process::exit(2)
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize) -> T {
    args.get(i)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| usage())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("load") if args.len() == 6 => load(
            arg(&args, 1),
            arg(&args, 2),
            arg(&args, 3),
            arg(&args, 4),
            u32::from_str_radix(&args[5], 16).unwrap_or_else(|_| usage()),
        ),
        Some("latency") if args.len() == 5 => latency(
            arg(&args, 1),
            arg(&args, 2),
            arg(&args, 3),
            u32::from_str_radix(&args[4], 16).unwrap_or_else(|_| usage()),
        ),
        _ => usage(),
    }
}

fn load(addr: SocketAddr, count: u64, conns: u64, secs: u64, prefix: u32) {
    let conns = conns.clamp(1, 256);
    let next = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let mut threads = Vec::new();
    for _ in 0..conns {
        let (next, ok, failed) = (next.clone(), ok.clone(), failed.clone());
        threads.push(std::thread::spawn(move || {
            let mut c = HttpClient::new(addr, Duration::from_secs(10));
            // Each thread stops once COUNT writes succeeded in all (a few more may be in flight).
            while ok.load(Ordering::Relaxed) < count && Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                match c.get(&path(prefix, i)) {
                    Ok(r) if r.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    r => {
                        *failed.lock().unwrap().entry(reason(&r)).or_default() += 1;
                    }
                }
            }
        }));
        // Spaced out: a burst of new connections can leave some waiting in tiny_http's pool queue
        // (docs/benchmarks.md, "Writes through the seed API").
        std::thread::sleep(Duration::from_millis(5));
    }
    for t in threads {
        let _ = t.join();
    }
    let secs = start.elapsed().as_secs_f64();
    let ok = ok.load(Ordering::Relaxed);
    let failed = failed.lock().unwrap();
    println!(
        "load: {ok} ok, {} failed{} in {secs:.1} s: {:.0} writes/s over {conns} connections",
        failed.values().sum::<u64>(),
        if failed.is_empty() {
            String::new()
        } else {
            format!(" {failed:?}")
        },
        ok as f64 / secs
    );
}

/// Why a request failed: the status and the error code of our JSON errors, or the I/O error's kind.
fn reason(r: &std::io::Result<hash_nimbus::http_client::HttpResponse>) -> String {
    match r {
        Ok(r) => {
            let code = serde_json::from_slice::<serde_json::Value>(&r.body)
                .ok()
                .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
                .unwrap_or_default();
            format!("{} {code}", r.status)
        }
        Err(e) => format!("io {:?}", e.kind()),
    }
}

fn latency(addr: SocketAddr, count: u64, secs: u64, prefix: u32) {
    let mut c = HttpClient::new(addr, Duration::from_secs(10));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let mut lat = Vec::new();
    let mut failed = 0u64;
    let mut slow = Vec::new();
    for i in 0..count {
        if Instant::now() >= deadline {
            break;
        }
        let t = Instant::now();
        let r = c.get(&path(prefix, i));
        let d = t.elapsed();
        if !matches!(r, Ok(ref r) if r.status == 200) {
            failed += 1;
            println!(
                "failed: request {i} at +{:.3} s: {}",
                t.duration_since(start).as_secs_f64(),
                reason(&r)
            );
        }
        if d > Duration::from_millis(50) {
            slow.push((i, t.duration_since(start), d));
        }
        lat.push(d);
    }
    let total = start.elapsed();
    for (i, at, d) in &slow {
        println!(
            "slow: request {i} at +{:.3} s took {:.1} ms",
            at.as_secs_f64(),
            d.as_secs_f64() * 1e3
        );
    }
    let mut sorted = lat.clone();
    sorted.sort_unstable();
    let q = |p: f64| -> f64 {
        if sorted.is_empty() {
            return 0.0;
        }
        let k = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[k].as_secs_f64() * 1e3
    };
    println!(
        "latency: n={} failed={failed} secs={:.1} p50_ms={:.2} p99_ms={:.2} p999_ms={:.2} max_ms={:.1} over50ms={}",
        lat.len(),
        total.as_secs_f64(),
        q(0.5),
        q(0.99),
        q(0.999),
        q(1.0),
        slow.len()
    );
}
