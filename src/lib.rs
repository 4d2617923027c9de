//! Hash Nimbus: a small, embeddable, tokio-free Raft key-value store.
//!
//! Layers (each a module, each testable alone): [`raft`] is the pure consensus core; [`storage`] owns the
//! write-ahead log on disk; [`transport`] moves framed messages between peers over TCP; [`codec`] is the
//! binary encoding they share.
pub mod codec;
pub mod raft;
pub mod storage;
pub mod transport;
