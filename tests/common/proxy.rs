//! A fault-injecting TCP proxy for one direction of one peer link (node i's connections to node j).
//!
//! Modes:
//! - `Pass`: bytes flow both ways.
//! - `Drop`: nothing is forwarded: established connections stall (bytes stay in the socket buffers, as when
//!   a firewall drops packets and TCP keeps retransmitting), and new connections are accepted but held.
//!   The sender sees no error until its own timeouts fire. On `pass` everything still buffered flows again,
//!   late, like TCP after a partition heals; the stream is never corrupted.
//!
//! Threads: one acceptor plus two pumps per connection. Every blocking call has a short timeout so the
//! proxy notices mode changes and stops promptly; all loops end when `stop` is set.
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

const PASS: u8 = 0;
const DROP: u8 = 1;

pub struct Proxy {
    pub port: u16,
    mode: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Listens on 127.0.0.1:`port` (0 = any) and forwards to `target`.
    pub fn start(port: u16, target: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let mode = Arc::new(AtomicU8::new(PASS));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (mode.clone(), stop.clone());
        let acceptor = std::thread::spawn(move || accept_loop(listener, target, m, s));
        Ok(Proxy {
            port,
            mode,
            stop,
            acceptor: Some(acceptor),
        })
    }

    pub fn pass(&self) {
        self.mode.store(PASS, Ordering::SeqCst);
    }

    pub fn drop_all(&self) {
        self.mode.store(DROP, Ordering::SeqCst);
    }

    pub fn is_dropping(&self) -> bool {
        self.mode.load(Ordering::SeqCst) == DROP
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    mode: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
) {
    let mut pumps: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                let _ = client.set_nonblocking(false);
                let (m, s) = (mode.clone(), stop.clone());
                pumps.push(std::thread::spawn(move || {
                    connect_and_pump(client, target, m, s)
                }));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
        pumps.retain(|p| !p.is_finished());
    }
    for p in pumps {
        let _ = p.join();
    }
}

/// Holds the client until the link passes traffic, then connects to the target and pumps both ways.
fn connect_and_pump(
    client: TcpStream,
    target: SocketAddr,
    mode: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
) {
    while mode.load(Ordering::SeqCst) == DROP {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_millis(500)) else {
        return; // target down: closing the client makes its writer retry later
    };
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let (m, s) = (mode.clone(), stop.clone());
    let back = std::thread::spawn(move || pump(s2, c2, m, s));
    pump(client, server, mode, stop);
    let _ = back.join();
}

fn pump(mut from: TcpStream, mut to: TcpStream, mode: Arc<AtomicU8>, stop: Arc<AtomicBool>) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
    let _ = to.set_write_timeout(Some(Duration::from_secs(5)));
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::SeqCst) {
        if mode.load(Ordering::SeqCst) == DROP {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
    let _ = from.shutdown(std::net::Shutdown::Both);
}
