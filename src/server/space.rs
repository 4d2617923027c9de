//! The free-space reserve of the data directory (`--min-free-bytes`), like etcd's NOSPACE alarm.
//!
//! Rules:
//! - The Raft thread measures the data directory's file system (`statvfs`: `f_bavail × f_frsize`, the
//!   space this unprivileged process may use) on its ticks, at most every [`CHECK_EVERY`], never per
//!   request.
//! - Below the reserve, the node pauses new writes in the core ([`crate::raft::Raft::set_writes_paused`]):
//!   as leader it refuses client commands, local or forwarded by followers, with `507
//!   insufficient_storage`; nothing else changes (reads at every consistency, heartbeats, elections,
//!   replication, snapshots and compaction go on, and a follower keeps appending what its leader sends).
//!   At or above the reserve again, writes resume by themselves.
//! - The reserve is a margin, not a guarantee: a write already admitted, entries from a leader and
//!   snapshots may still fill the disk, and a real `ENOSPC` stays fatal (the node stops, see
//!   `docs/design.md`, "Disk faults"). Set it above what the writes of one check interval and a snapshot
//!   can take.
//! - A failed measurement (the directory vanished, an odd file system) is logged once and counts as
//!   enough space: the check never stops a node by itself.

use log::{info, warn};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often, at most, the free space is measured.
pub const CHECK_EVERY: Duration = Duration::from_millis(100);

/// Bytes available to this process on the file system holding `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in the path"))?;
    // SAFETY: `c` is a valid NUL-terminated string and `st` a properly sized, writable statvfs.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// What the last measurement found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Free bytes, `None` before the first successful measurement.
    pub free: Option<u64>,
    /// Below the reserve.
    pub low: bool,
}

/// Measures the data directory on the Raft thread's schedule.
pub struct SpaceWatch {
    id: u64,
    dir: PathBuf,
    min_free: u64,
    last: Option<Instant>,
    space: Space,
    failed: bool,
}

impl SpaceWatch {
    /// A watch for node `id` (used in log lines) over the file system holding `dir`, with a reserve of
    /// `min_free` bytes (0: the check is off). Nothing is measured until the first [`SpaceWatch::check`].
    pub fn new(id: u64, dir: PathBuf, min_free: u64) -> SpaceWatch {
        SpaceWatch {
            id,
            dir,
            min_free,
            last: None,
            space: Space {
                free: None,
                low: false,
            },
            failed: false,
        }
    }

    /// The reserve, in bytes (0: off).
    pub fn min_free(&self) -> u64 {
        self.min_free
    }

    /// The state found by the last measurement, without measuring.
    pub fn space(&self) -> Space {
        self.space
    }

    /// Measures again if [`CHECK_EVERY`] has passed since the last time; returns the state.
    pub fn check(&mut self, now: Instant) -> Space {
        if self.min_free == 0
            || self
                .last
                .is_some_and(|t| now.duration_since(t) < CHECK_EVERY)
        {
            return self.space;
        }
        self.last = Some(now);
        match free_bytes(&self.dir) {
            Ok(free) => {
                self.failed = false;
                let low = free < self.min_free;
                if low != self.space.low {
                    if low {
                        warn!(
                            "[n{}] {}: {free} bytes free, below the reserve of {} (--min-free-bytes): \
                             new writes are refused with 507 until space is freed; reads go on",
                            self.id,
                            self.dir.display(),
                            self.min_free
                        );
                    } else {
                        info!(
                            "[n{}] {}: {free} bytes free, at or above the reserve of {} again: writes \
                             resume",
                            self.id,
                            self.dir.display(),
                            self.min_free
                        );
                    }
                }
                self.space = Space {
                    free: Some(free),
                    low,
                };
            }
            Err(e) => {
                if !self.failed {
                    warn!(
                        "[n{}] cannot measure the free space of {}: {e} (treated as enough space)",
                        self.id,
                        self.dir.display()
                    );
                }
                self.failed = true;
                self.space.low = false;
            }
        }
        self.space
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_and_compares_with_the_reserve() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        assert!(free > 0);
        let now = Instant::now();
        let mut w = SpaceWatch::new(1, dir.path().to_path_buf(), u64::MAX);
        assert!(w.check(now).low, "nothing has u64::MAX bytes free");
        let mut w = SpaceWatch::new(1, dir.path().to_path_buf(), 1);
        assert!(!w.check(now).low);
        let mut off = SpaceWatch::new(1, dir.path().to_path_buf(), 0);
        assert_eq!(off.check(now).free, None, "0 turns the check off");
        let mut gone = SpaceWatch::new(1, dir.path().join("missing"), 1 << 60);
        assert!(
            !gone.check(now).low,
            "a failed measurement is not low space"
        );
    }
}
