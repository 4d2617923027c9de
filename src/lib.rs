//! Hash Nimbus: a small, embeddable, tokio-free Raft key-value store.
//!
//! Layers (each a module, each testable alone):
//! - [`raft`]: the pure, deterministic consensus core (no I/O, no clocks, seeded randomness);
//! - [`storage`]: the write-ahead log and the snapshot files on disk;
//! - [`transport`]: framed messages between peers over TCP;
//! - [`kv`]: the replicated key-value state machine;
//! - [`server`]: the node runtime joining them (the Raft thread's select loop and the HTTP API);
//! - [`config`]: flags and their validation; [`codec`]: the binary encoding; [`http_client`]: a small
//!   blocking HTTP client for tools and tests;
//! - [`check`]: a linearizability checker and its workload; [`mod@bench`]: the `nimbus bench` load generator.
pub mod bench;
pub mod check;
pub mod codec;
pub mod config;
pub mod http_client;
pub mod kv;
pub mod raft;
pub mod server;
pub mod storage;
pub mod transport;
