//! The HTTP limits of a real `nimbus` process (the guard in front of tiny_http): URL, header fields, slow
//! heads and bodies, body size, chunked uploads, connection count, truncated bodies. Every wait is bounded.

mod common;

use common::TestCluster;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

const ELECTION: Duration = Duration::from_secs(20);

fn node() -> TestCluster {
    let mut c = TestCluster::start_with(
        1,
        &[
            "--http-max-connections",
            "8",
            "--http-max-header-bytes",
            "2048",
            "--http-read-timeout-ms",
            "500",
        ],
    );
    c.wait_leader(ELECTION);
    c
}

fn connect(c: &TestCluster) -> TcpStream {
    let s = TcpStream::connect(c.http_addr(0)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads until the server closes; returns the status code and the whole answer.
fn answer(s: &mut TcpStream) -> (u16, String) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !got.is_empty() => break,
            Err(e) => panic!("no answer: {e}; got {:?}", String::from_utf8_lossy(&got)),
        }
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// Sends `bytes` from another thread (the server may answer before it read them all) and reads the answer.
fn send_and_answer(c: &TestCluster, bytes: Vec<u8>) -> (u16, String) {
    let mut s = connect(c);
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&bytes);
    });
    let a = answer(&mut s);
    let _ = writer.join();
    a
}

#[test]
fn oversized_heads_and_bodies_are_refused_with_their_status() {
    let c = node();
    // A URL over the limit (8 KiB + 3 x 1 MiB, plus room for the method and version): 414.
    let url = format!("/get?key={}", "a".repeat(3_300_000));
    let (status, text) = send_and_answer(&c, format!("GET {url} HTTP/1.1\r\n\r\n").into_bytes());
    assert_eq!(status, 414, "{text}");
    assert!(text.contains("uri_too_long"), "{text}");
    // Header fields over 2 KiB in all, or over 100 of them: 431.
    let big = format!(
        "GET /status HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "b".repeat(4000)
    );
    let (status, text) = send_and_answer(&c, big.into_bytes());
    assert_eq!(status, 431, "{text}");
    assert!(text.contains("headers_too_large"), "{text}");
    let many = format!("GET /status HTTP/1.1\r\n{}\r\n", "A: b\r\n".repeat(101));
    assert_eq!(send_and_answer(&c, many.into_bytes()).0, 431);
    // A body over 1 MiB is refused before it is sent: 413.
    let head = "PUT /v1/kv/big HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n";
    let (status, text) = send_and_answer(&c, head.as_bytes().to_vec());
    assert_eq!(status, 413, "{text}");
    // Chunked uploads: 411.
    let chunked = "PUT /v1/kv/c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n";
    let (status, text) = send_and_answer(&c, chunked.as_bytes().to_vec());
    assert_eq!(status, 411, "{text}");
    // Conflicting lengths: 400.
    let two = "PUT /v1/kv/c HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx";
    assert_eq!(send_and_answer(&c, two.as_bytes().to_vec()).0, 400);
    // The node still serves normal requests, several on one keep-alive connection.
    let mut client = c.client(0);
    for n in 0..5 {
        let r = client
            .request(
                "PUT",
                &format!("/v1/kv/k{n}"),
                &[],
                format!("v{n}").as_bytes(),
            )
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(client.get("/v1/kv/k4").unwrap().text(), "v4");
}

#[test]
fn slow_heads_and_bodies_time_out_with_408() {
    let c = node();
    // Half a request line, then silence.
    let mut s = connect(&c);
    let started = Instant::now();
    s.write_all(b"GET /status HTT").unwrap();
    let (status, text) = answer(&mut s);
    assert_eq!(status, 408, "{text}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // A body that stops halfway.
    let mut s = connect(&c);
    s.write_all(b"PUT /v1/kv/slow HTTP/1.1\r\nContent-Length: 10\r\n\r\n12345")
        .unwrap();
    let (status, text) = answer(&mut s);
    assert!(text.contains("408"), "{status}: {text}");
    let r = c.client(0).get("/v1/kv/slow").unwrap();
    assert_eq!(r.status, 404, "a partial body must not be stored");
    // A body cut short by the client closing its side: not stored. tiny_http reads bodies of up to 1 KiB
    // itself and closes the connection; a longer one reaches the handler, which answers 400.
    let mut s = connect(&c);
    s.write_all(b"PUT /v1/kv/cut HTTP/1.1\r\nContent-Length: 10\r\n\r\n12345")
        .unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let (status, text) = answer(&mut s);
    assert_eq!(status, 0, "{text}");
    let mut s = connect(&c);
    s.write_all(b"PUT /v1/kv/cut HTTP/1.1\r\nContent-Length: 5000\r\n\r\n")
        .unwrap();
    s.write_all(&[b'x'; 2000]).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let (status, text) = answer(&mut s);
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("ended after 2000 of its 5000 bytes"),
        "{text}"
    );
    let r = c.client(0).get("/v1/kv/cut").unwrap();
    assert_eq!(r.status, 404, "a truncated body must not be stored");
}

#[test]
fn connections_beyond_the_cap_get_503_and_others_still_work() {
    let c = node();
    let held: Vec<TcpStream> = (0..8).map(|_| connect(&c)).collect();
    // The ninth is refused at once.
    let mut extra = connect(&c);
    let (status, text) = answer(&mut extra);
    assert_eq!(status, 503, "{text}");
    assert!(
        text.contains("busy") && text.contains("Retry-After"),
        "{text}"
    );
    drop(held);
    // Once they are gone, new connections are served again (the guard notices within its poll).
    common::poll("a connection served again", ELECTION, || {
        c.client(0).get("/health").ok().filter(|r| r.status == 200)
    });
}
