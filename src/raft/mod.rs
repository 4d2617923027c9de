//! The Raft core (being written).
mod message;
pub use message::*;
