//! Hash Nimbus: a small, embeddable, tokio-free Raft key-value store.
//!
//! It runs as the `nimbus` server (an HTTP key-value API, see the README), or inside your own program
//! with your own replicated state machine ([`embed`]).
//!
//! # Tutorial: embedding a replicated state machine
//!
//! Hash Nimbus runs without an async runtime: a node is a handful of plain threads (one Raft thread, the
//! TCP transport's), and the handle's calls block. To replicate your own state:
//!
//! 1. Implement [`StateMachine`]: `apply` a command (bytes) at a log index and return an output,
//!    `snapshot` a frozen copy and return a writer for it (run on a background thread), `restore` the
//!    state from what a writer wrote. `apply` must be deterministic and must not panic on any input.
//! 2. Give every node an [`embed::Config`]: its id, every member's id and Raft address, its own data
//!    directory.
//! 3. [`embed::Node::start`] each node with an initial (empty) state machine; it recovers from its data
//!    directory if there is something to recover.
//! 4. [`embed::Node::propose`] commands from any node (a follower forwards to the leader): it returns
//!    once the command is committed and applied, with its output. [`embed::Node::read`] runs a closure
//!    on the state machine once it is linearizable.
//! 5. [`embed::Node::shutdown`] hands leadership over and stops; [`embed::Node::halt`] stops at once.
//!
//! A counter replicated by a single node (a real cluster lists three or five members, one `Node` each,
//! usually on different machines):
//!
//! ```no_run
//! use hash_nimbus::embed::{Config, Error, Index, Node, SnapshotWriter, StateMachine};
//! use std::io::{self, Read};
//! use std::time::Duration;
//!
//! /// Adds each command's number (8 bytes, little-endian) to a total.
//! #[derive(Default)]
//! struct Counter {
//!     total: u64,
//! }
//!
//! impl StateMachine for Counter {
//!     /// The total after the command, or `None` for a malformed command (which changes nothing).
//!     type Output = Option<u64>;
//!
//!     fn apply(&mut self, _index: Index, command: &[u8]) -> Option<u64> {
//!         let n = u64::from_le_bytes(command.try_into().ok()?);
//!         self.total = self.total.wrapping_add(n);
//!         Some(self.total)
//!     }
//!
//!     fn snapshot(&self) -> SnapshotWriter {
//!         let total = self.total; // the frozen copy
//!         Box::new(move |w| w.write_all(&total.to_le_bytes()))
//!     }
//!
//!     fn restore(&mut self, _index: Index, snapshot: &mut dyn Read) -> io::Result<()> {
//!         let mut buf = [0u8; 8];
//!         snapshot.read_exact(&mut buf)?;
//!         self.total = u64::from_le_bytes(buf);
//!         Ok(())
//!     }
//! }
//!
//! fn main() -> Result<(), Error> {
//!     let config = Config::new(1, [(1, "127.0.0.1:7401".to_string())], "/tmp/counter-1");
//!     let node = Node::start(config, Counter::default())?;
//!     let timeout = Duration::from_secs(5);
//!     // Waits for the node to elect itself, then for the command to commit and apply.
//!     let applied = node.propose(5u64.to_le_bytes().to_vec(), timeout)?;
//!     assert_eq!(applied.output, Some(5));
//!     let total = node.read(|c| c.total, timeout)?;
//!     println!("total {total} at index {}", applied.index);
//!     node.shutdown()
//! }
//! ```
//!
//! `examples/embedded.rs` runs three nodes in one process over loopback TCP with a replicated queue,
//! stops the leader, and shows the new leader taking over with the state intact (`tests/embedded.rs` runs
//! it in CI). `docs/embedding.md` covers the design: what the runtime guarantees, and what it asks of a
//! state machine.
//!
//! # Layers
//!
//! Layers (each a module, each testable alone):
//! - [`raft`]: the pure, deterministic consensus core (no I/O, no clocks, seeded randomness);
//! - [`storage`]: the write-ahead log and the snapshot files on disk;
//! - [`transport`]: framed messages between peers over TCP;
//! - [`kv`]: the replicated key-value state machine;
//! - [`machine`]: the [`StateMachine`] trait the runtime replicates (the key-value store is one
//!   implementation); [`embed`]: a node with your own state machine in your own process, no HTTP;
//! - [`server`]: the node runtime joining them (the Raft thread's select loop and the HTTP API);
//! - [`dev`]: `nimbus dev`, a local cluster of child processes for a first look;
//! - [`config`]: flags and their validation; [`codec`]: the binary encoding; [`http_client`]: a small
//!   blocking HTTP client for tools and tests;
//! - [`check`]: a linearizability checker and its workload; [`mod@bench`]: the `nimbus bench` load generator.
// Every public item is documented; CI (clippy and rustdoc with -D warnings) keeps it so.
#![warn(missing_docs)]

pub mod bench;
pub mod check;
pub mod codec;
pub mod config;
pub mod dev;
pub mod http_client;
pub mod kv;
pub mod raft;
pub mod server;
pub mod storage;
pub mod transport;

// The embedding API (issue #10): every public item documented.
#[deny(missing_docs)]
pub mod embed;
#[deny(missing_docs)]
pub mod machine;

pub use machine::StateMachine;
