//! Durable storage: the write-ahead log ([`Wal`]), the snapshot files ([`SnapshotStore`]) and the data
//! directory lock ([`DataDirLock`]: one process per data directory).
//!
//! Errors name the file, the operation and (for corruption) the offset, so an operator knows what to look at.

mod lock;
mod snapshot;
mod wal;

pub use lock::{DataDirLock, LOCK_FILE};

pub use snapshot::{
    IncomingSnapshot, SnapshotMeta, SnapshotReader, SnapshotStore, SNAPSHOT_HEADER_LEN,
    SNAPSHOT_MAX_BODY_LEN, SNAPSHOT_TRAILER_LEN, SNAPSHOT_VERSION,
};
pub use wal::{Recovered, Wal, WalOptions, WalStats};

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

/// A storage failure.
#[derive(Debug)]
pub enum StorageError {
    /// An I/O operation on a file failed.
    Io {
        /// The file (or directory) the operation was on.
        path: PathBuf,
        /// The operation, e.g. `"fsync"`.
        op: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The data in a file is damaged (or not what its name says). For the WAL: somewhere a crash cannot
    /// explain, so the node must not start on it. For a snapshot: that file must not be used.
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// The byte offset in the file where the damage was found.
        offset: u64,
        /// What was wrong there.
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
            } => {
                write!(f, "corrupt {} at offset {offset}: {reason}", path.display())?;
                // WAL segments end in `.log`: the node refuses to start on them.
                if path.extension().is_some_and(|x| x == "log") {
                    write!(
                        f,
                        " (refusing to start; move the file aside only if you know this node's data \
                         can be rebuilt from its peers)"
                    )?;
                }
                Ok(())
            }
            StorageError::Invalid(m) => write!(f, "invalid storage operation: {m}"),
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

/// Maps an I/O error to a [`StorageError::Io`] naming the file and the operation.
fn io_err<'a>(
    path: &'a Path,
    op: &'static str,
) -> impl FnOnce(std::io::Error) -> StorageError + 'a {
    move |source| StorageError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// Makes a directory's entries (created, renamed, removed files) durable.
fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "fsync directory"))
}
