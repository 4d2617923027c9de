//! The data directory lock: one `nimbus` process per data directory.
//!
//! Rules:
//! - The lock is `flock(LOCK_EX | LOCK_NB)` on the file `LOCK` in the data directory, taken before anything
//!   in the directory is read or written and held by an open file for as long as the [`DataDirLock`]
//!   lives, normally the whole process. The kernel drops it when the process ends, however it ends
//!   (kill -9 included), so a stale lock file never blocks a restart: the file stays, the lock does not.
//! - A `flock` lock belongs to the open file, not the process, so a second attempt within one process is
//!   refused too (two in-process nodes on one directory are caught as well).
//! - The holder writes its pid into the file after locking; a refused process reads it to name the holder
//!   in its error. The pid is information only: the lock is the `flock`, never the file's content.
//! - Limitation: `flock` is advisory and, on some network file systems, local to one machine. It keeps out
//!   another `nimbus`, not a person or program that ignores it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// The lock file's name in the data directory.
pub const LOCK_FILE: &str = "LOCK";

/// Holds the data directory lock until dropped.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Takes the lock on `dir` (which must exist), or says who holds it.
    pub fn acquire(dir: &Path) -> Result<DataDirLock, String> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| format!("cannot open the lock file {}: {e}", path.display()))?;
        // SAFETY: flock takes a file descriptor and flags, touches no memory of ours, and the descriptor
        // stays open (owned by `file`) for the duration of the call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut content = String::new();
                let _ = file.read_to_string(&mut content);
                let holder = match content.trim().parse::<u32>() {
                    Ok(pid) => format!("process {pid}"),
                    Err(_) => "another process (pid unknown)".to_string(),
                };
                return Err(format!(
                    "data directory {} is in use by {holder} (it holds {}); one nimbus per data \
                     directory",
                    dir.display(),
                    path.display()
                ));
            }
            return Err(format!("cannot lock {}: {err}", path.display()));
        }
        let pid = format!("{}\n", std::process::id());
        let written = file
            .set_len(0)
            .and_then(|_| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(pid.as_bytes()));
        if let Err(e) = written {
            // The lock holds all the same; only the pid shown to a second process is missing.
            log::warn!("cannot write the pid into {}: {e}", path.display());
        }
        Ok(DataDirLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
