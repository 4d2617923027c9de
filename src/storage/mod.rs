//! Durable storage: the write-ahead log ([`Wal`]). Snapshot files arrive with log compaction.
//!
//! Errors name the file, the operation and (for corruption) the offset, so an operator knows what to look at.

mod wal;

pub use wal::{Recovered, Wal, WalOptions, WalStats};

use std::fmt;
use std::path::PathBuf;

/// A storage failure.
#[derive(Debug)]
pub enum StorageError {
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    /// The data on disk is damaged somewhere a crash cannot explain; the node must not start on it.
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// The caller asked for something the log cannot do (a bug in the caller).
    Invalid(String),
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::Io { path, op, source } => {
                write!(f, "{op} {}: {source}", path.display())
            }
            StorageError::Corrupt {
                path,
                offset,
                reason,
            } => write!(
                f,
                "corrupt WAL {} at offset {offset}: {reason} (refusing to start; move the file aside \
                 only if you know this node's data can be rebuilt from its peers)",
                path.display()
            ),
            StorageError::Invalid(m) => write!(f, "invalid WAL operation: {m}"),
        }
    }
}

impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StorageError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
