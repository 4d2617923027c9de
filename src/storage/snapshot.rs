//! Snapshot files: the state machine as of a log index, written whole and atomically, verified before use.
//!
//! # Format
//! One file per snapshot, named `snap-<20-digit index>-<20-digit term>.snap`:
//!
//! ```text
//! header, 34 bytes:  magic "NIMBSNAP" | u16 LE version (1) | u64 LE index | u64 LE term | u64 LE body length
//! body:              body-length bytes, opaque to this module (the state machine's encoding)
//! trailer, 4 bytes:  u32 LE CRC32 of header + body
//! ```
//!
//! The file is also the wire format for sending a snapshot to a follower: the receiver stores the leader's
//! bytes verbatim ([`IncomingSnapshot`]) and [`SnapshotStore::verify`] is the integrity check.
//!
//! # Rules
//! - A snapshot appears under its final name only complete and durable: it is streamed into a `*.tmp`
//!   file in the same directory, fsynced, renamed, and the directory is fsynced. `*.tmp` files found by
//!   [`SnapshotStore::open`] are leftovers of a crash (or of an interrupted transfer) and are deleted.
//! - Memory is bounded: bodies stream through buffered writers and readers; nothing holds a whole body.
//! - No file content can cause a panic or a large allocation: the header has a fixed size, and the body
//!   length is checked against [`SNAPSHOT_MAX_BODY_LEN`] and against the file's actual size before
//!   anything else is read. Index and term must be at least 1.
//! - [`SnapshotStore::list`] goes by file names (unverified). A snapshot is verified (size, CRC, and that
//!   the header agrees with the name) before use; [`SnapshotStore::latest_valid`] renames a corrupt file
//!   to `*.corrupt` (never deletes it) and falls back to the next older snapshot.
//! - After a write or an import only the `keep` newest snapshots (by index, then term) are kept; the
//!   snapshot just written or imported is never removed by its own pruning. Renames and removals are
//!   serialized by one lock, so the store may be shared between threads (it is `Clone`, `Send`, `Sync`).
//!   One store per directory: a second `open` of the same directory would remove the first one's
//!   temporary files.

use super::{io_err, sync_dir, StorageError};
use crate::raft::{Index, Term};
use log::{info, warn};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

const MAGIC: &[u8; 8] = b"NIMBSNAP";
/// The format version written and accepted.
pub const SNAPSHOT_VERSION: u16 = 1;
/// Size of the fixed header.
pub const SNAPSHOT_HEADER_LEN: usize = 34;
/// Size of the CRC trailer.
pub const SNAPSHOT_TRAILER_LEN: usize = 4;
/// Largest body written or accepted (64 GiB).
pub const SNAPSHOT_MAX_BODY_LEN: u64 = 64 << 30;
/// Buffer size for streaming bodies.
const IO_BUF: usize = 256 * 1024;
const OVERHEAD: u64 = (SNAPSHOT_HEADER_LEN + SNAPSHOT_TRAILER_LEN) as u64;
/// Offsets of the header's fields, for error messages.
const OFF_VERSION: u64 = 8;
const OFF_INDEX: u64 = 10;
const OFF_TERM: u64 = 18;
const OFF_BODY_LEN: u64 = 26;

/// A snapshot file and what its header (or, from [`SnapshotStore::list`], its name) says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// The last log index the snapshot covers.
    pub index: Index,
    /// The term of the entry at `index`.
    pub term: Term,
    /// Size of the whole file in bytes (header, body and trailer).
    pub size: u64,
    /// The snapshot file's path.
    pub path: PathBuf,
}

impl SnapshotMeta {
    /// Length of the body (the file minus header and trailer).
    pub fn body_len(&self) -> u64 {
        self.size.saturating_sub(OVERHEAD)
    }
}

fn encode_header(index: Index, term: Term, body_len: u64) -> [u8; SNAPSHOT_HEADER_LEN] {
    let mut h = [0u8; SNAPSHOT_HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..10].copy_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    h[10..18].copy_from_slice(&index.to_le_bytes());
    h[18..26].copy_from_slice(&term.to_le_bytes());
    h[26..34].copy_from_slice(&body_len.to_le_bytes());
    h
}

/// (index, term, body length) from a header, or (offset, reason) of the first bad field.
fn parse_header(h: &[u8; SNAPSHOT_HEADER_LEN]) -> Result<(Index, Term, u64), (u64, String)> {
    let u64_at = |o: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&h[o..o + 8]);
        u64::from_le_bytes(a)
    };
    if &h[..8] != MAGIC {
        return Err((0, "not a nimbus snapshot (bad magic)".into()));
    }
    let version = u16::from_le_bytes([h[8], h[9]]);
    if version != SNAPSHOT_VERSION {
        return Err((
            OFF_VERSION,
            format!("unsupported snapshot version {version} (this build reads {SNAPSHOT_VERSION})"),
        ));
    }
    let (index, term, body_len) = (u64_at(10), u64_at(18), u64_at(26));
    if index == 0 {
        return Err((OFF_INDEX, "snapshot index 0".into()));
    }
    if term == 0 {
        return Err((OFF_TERM, "snapshot term 0".into()));
    }
    if body_len > SNAPSHOT_MAX_BODY_LEN {
        return Err((
            OFF_BODY_LEN,
            format!("body length {body_len} exceeds the limit of {SNAPSHOT_MAX_BODY_LEN}"),
        ));
    }
    Ok((index, term, body_len))
}

fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason: reason.into(),
    }
}

/// The canonical file name of a snapshot.
fn snapshot_name(index: Index, term: Term) -> String {
    format!("snap-{index:020}-{term:020}.snap")
}

/// (index, term) from a canonical file name; `None` for any other name.
fn parse_name(name: &str) -> Option<(Index, Term)> {
    let rest = name.strip_prefix("snap-")?.strip_suffix(".snap")?;
    let (i, t) = rest.split_once('-')?;
    let digits = |s: &str| s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(i) || !digits(t) {
        return None;
    }
    Some((i.parse().ok()?, t.parse().ok()?))
}

/// A reader over a snapshot's body. It checks the trailer CRC when the body is exhausted: the read that
/// would return end-of-file fails instead if the checksum does not match (for example, a file changed
/// after it was verified). Buffered internally (each chunk is hashed once, as it is read from the file),
/// so small reads are cheap. Errors are [`io::Error`]s wrapping a [`StorageError`] that names the file and
/// offset.
pub struct SnapshotReader {
    meta: SnapshotMeta,
    file: File,
    hasher: crc32fast::Hasher,
    /// Body bytes not yet read from the file.
    remaining: u64,
    buf: Vec<u8>,
    pos: usize,
    filled: usize,
    checked: bool,
}

impl SnapshotReader {
    /// Opens a snapshot and checks its header against the file's size; the body is not read yet.
    fn open(path: &Path) -> Result<SnapshotReader, StorageError> {
        let mut file = File::open(path).map_err(io_err(path, "open snapshot"))?;
        let size = file
            .metadata()
            .map_err(io_err(path, "stat snapshot"))?
            .len();
        if size < OVERHEAD {
            return Err(corrupt(
                path,
                0,
                format!("file of {size} bytes is shorter than a snapshot's header and trailer ({OVERHEAD})"),
            ));
        }
        let mut h = [0u8; SNAPSHOT_HEADER_LEN];
        file.read_exact(&mut h)
            .map_err(io_err(path, "read snapshot header"))?;
        let (index, term, body_len) =
            parse_header(&h).map_err(|(offset, reason)| corrupt(path, offset, reason))?;
        // body_len <= 64 GiB, so this cannot overflow.
        if size != body_len + OVERHEAD {
            return Err(corrupt(
                path,
                OFF_BODY_LEN,
                format!(
                    "the header announces a body of {body_len} bytes (a file of {} bytes) but the file is \
                     {size} bytes",
                    body_len + OVERHEAD
                ),
            ));
        }
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&h);
        Ok(SnapshotReader {
            meta: SnapshotMeta {
                index,
                term,
                size,
                path: path.to_path_buf(),
            },
            file,
            hasher,
            remaining: body_len,
            // Never more than the body: a small snapshot gets a small buffer.
            buf: vec![0u8; (body_len as usize).clamp(1, IO_BUF)],
            pos: 0,
            filled: 0,
            checked: false,
        })
    }

    /// The snapshot's header fields and file.
    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    /// Refills the buffer with the next body chunk (hashing it). At the end of the body, checks the
    /// trailer and returns false.
    fn refill(&mut self) -> Result<bool, StorageError> {
        let path = &self.meta.path;
        let at = SNAPSHOT_HEADER_LEN as u64 + self.meta.body_len() - self.remaining;
        if self.remaining == 0 {
            if !self.checked {
                let mut t = [0u8; SNAPSHOT_TRAILER_LEN];
                self.file.read_exact(&mut t).map_err(|e| {
                    if e.kind() == io::ErrorKind::UnexpectedEof {
                        corrupt(path, at, "the file ends inside the trailer")
                    } else {
                        io_err(path, "read snapshot trailer")(e)
                    }
                })?;
                let stored = u32::from_le_bytes(t);
                let computed = self.hasher.clone().finalize();
                if stored != computed {
                    return Err(corrupt(
                        path,
                        at,
                        format!("checksum mismatch (stored {stored:08x}, computed {computed:08x})"),
                    ));
                }
                self.checked = true;
            }
            return Ok(false);
        }
        let want = (self.buf.len() as u64).min(self.remaining) as usize;
        let got = loop {
            match self.file.read(&mut self.buf[..want]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r.map_err(io_err(path, "read snapshot body"))?,
            }
        };
        if got == 0 {
            return Err(corrupt(
                path,
                at,
                "the file ends inside the body (it shrank after opening)",
            ));
        }
        self.hasher.update(&self.buf[..got]);
        self.remaining -= got as u64;
        self.pos = 0;
        self.filled = got;
        Ok(true)
    }

    /// Reads body bytes; 0 once the body is exhausted and the trailer matched.
    fn read_body(&mut self, out: &mut [u8]) -> Result<usize, StorageError> {
        if out.is_empty() {
            return Ok(0);
        }
        if self.pos == self.filled && !self.refill()? {
            return Ok(0);
        }
        let n = out.len().min(self.filled - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }

    /// Reads the rest of the body and the trailer, discarding the bytes.
    fn drain(&mut self) -> Result<(), StorageError> {
        self.pos = self.filled;
        while self.refill()? {
            self.pos = self.filled;
        }
        Ok(())
    }
}

impl Read for SnapshotReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_body(buf).map_err(|e| {
            let kind = match &e {
                StorageError::Io { source, .. } => source.kind(),
                _ => io::ErrorKind::InvalidData,
            };
            io::Error::new(kind, e)
        })
    }
}

/// Streams a body to the temporary file, computing its CRC and length, refusing to exceed the limit.
struct BodyWriter {
    out: BufWriter<File>,
    hasher: crc32fast::Hasher,
    len: u64,
}

impl Write for BodyWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.len + buf.len() as u64 > SNAPSHOT_MAX_BODY_LEN {
            return Err(io::Error::other(format!(
                "snapshot body exceeds the limit of {SNAPSHOT_MAX_BODY_LEN} bytes"
            )));
        }
        let n = self.out.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

struct Inner {
    dir: PathBuf,
    keep: usize,
    /// Serializes renames and removals (publishing, pruning, moving corrupt files aside).
    lock: Mutex<()>,
    /// Makes temporary file names unique within the process.
    next_tmp: AtomicU64,
}

/// The snapshot files of one node, in one directory. Cheap to clone; clones share the directory and lock.
#[derive(Clone)]
pub struct SnapshotStore {
    inner: Arc<Inner>,
}

impl SnapshotStore {
    /// Opens (creating it if missing) the snapshot directory, removes leftover `*.tmp` files, and keeps
    /// up to `keep` (at least 1) snapshots after each write or import.
    pub fn open(dir: &Path, keep: usize) -> Result<SnapshotStore, StorageError> {
        if keep == 0 {
            return Err(StorageError::Invalid(
                "a snapshot store must keep at least one snapshot".into(),
            ));
        }
        fs::create_dir_all(dir).map_err(io_err(dir, "create directory"))?;
        let mut removed = 0;
        for entry in fs::read_dir(dir).map_err(io_err(dir, "list directory"))? {
            let path = entry.map_err(io_err(dir, "list directory"))?.path();
            if path.extension().is_some_and(|x| x == "tmp") {
                warn!(
                    "removing {}: left over from an interrupted snapshot write or transfer",
                    path.display()
                );
                fs::remove_file(&path).map_err(io_err(&path, "remove"))?;
                removed += 1;
            }
        }
        if removed > 0 {
            sync_dir(dir)?;
        }
        let store = SnapshotStore {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                keep,
                lock: Mutex::new(()),
                next_tmp: AtomicU64::new(0),
            }),
        };
        let list = store.list()?;
        if let Some(newest) = list.first() {
            info!(
                "snapshots in {}: {}, newest at index {} term {}",
                dir.display(),
                list.len(),
                newest.index,
                newest.term
            );
        }
        Ok(store)
    }

    /// The directory holding the snapshot files.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        // The lock guards no data, so a panic elsewhere while holding it leaves nothing inconsistent.
        self.inner.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The snapshots in the directory, newest (highest index, then term) first, going by file names
    /// only: not verified. `size` is the file's size.
    pub fn list(&self) -> Result<Vec<SnapshotMeta>, StorageError> {
        let dir = self.dir();
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err(dir, "list directory"))? {
            let entry = entry.map_err(io_err(dir, "list directory"))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let Some((index, term)) = parse_name(&name) else {
                if name.starts_with("snap-") && name.ends_with(".snap") {
                    warn!("ignoring {name} in {}: not a snapshot name", dir.display());
                }
                continue;
            };
            // A file removed since read_dir (pruned by another thread) is simply not listed.
            let Ok(md) = entry.metadata() else { continue };
            out.push(SnapshotMeta {
                index,
                term,
                size: md.len(),
                path: entry.path(),
            });
        }
        out.sort_unstable_by_key(|m| std::cmp::Reverse((m.index, m.term)));
        Ok(out)
    }

    /// Writes a snapshot at (`index`, `term`): `body` streams the state machine into the file. The file
    /// appears under its final name only once complete and durable; then snapshots beyond `keep` are
    /// removed. May run on a background thread.
    pub fn write(
        &self,
        index: Index,
        term: Term,
        body: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> Result<SnapshotMeta, StorageError> {
        if index == 0 || term == 0 {
            return Err(StorageError::Invalid(format!(
                "snapshot at index {index} term {term}: both must be at least 1"
            )));
        }
        let n = self.inner.next_tmp.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .dir()
            .join(format!("write-{index:020}-{term:020}-{n}.tmp"));
        let size = match write_file(&tmp, index, term, body) {
            Ok(size) => size,
            Err(e) => {
                // Best effort: a leftover is removed by the next `open` anyway.
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let path = self.dir().join(snapshot_name(index, term));
        let _guard = self.lock();
        if let Err(e) = fs::rename(&tmp, &path) {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(&tmp, "rename snapshot into place")(e));
        }
        sync_dir(self.dir())?;
        info!(
            "wrote snapshot {} ({size} bytes) at index {index} term {term}",
            path.display()
        );
        self.prune(&path)?;
        Ok(SnapshotMeta {
            index,
            term,
            size,
            path,
        })
    }

    /// Removes snapshots beyond the `keep` newest, never `protect`. Called with the lock held.
    fn prune(&self, protect: &Path) -> Result<(), StorageError> {
        let mut removed = false;
        for m in self.list()?.iter().skip(self.inner.keep) {
            if m.path == protect {
                continue;
            }
            match fs::remove_file(&m.path) {
                Ok(()) => {
                    info!("removed old snapshot {}", m.path.display());
                    removed = true;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&m.path, "remove old snapshot")(e)),
            }
        }
        if removed {
            sync_dir(self.dir())?;
        }
        Ok(())
    }

    /// Reads a whole snapshot file, checking its header, size and checksum. Any file, any name.
    pub fn verify(path: &Path) -> Result<SnapshotMeta, StorageError> {
        let mut r = SnapshotReader::open(path)?;
        r.drain()?;
        Ok(r.meta)
    }

    /// Verifies a snapshot, then opens it again for reading its body (two passes: the body is not
    /// trusted before its checksum has been seen).
    pub fn open_body(path: &Path) -> Result<SnapshotReader, StorageError> {
        let meta = Self::verify(path)?;
        let r = SnapshotReader::open(path)?;
        if r.meta != meta {
            return Err(corrupt(path, 0, "the file changed while being opened"));
        }
        Ok(r)
    }

    /// Opens a snapshot for reading its body in a single pass, without verifying it first. The header
    /// and size are checked now, the checksum only when the body has been read to its end: the reader
    /// fails then instead of reporting end-of-file, so a consumer must read to the end (as
    /// `KvStore::read_snapshot` does) and discard what it built on any error. Saves a full read of a
    /// snapshot just verified, e.g. by [`SnapshotStore::latest_valid`].
    pub fn open_body_unverified(path: &Path) -> Result<SnapshotReader, StorageError> {
        SnapshotReader::open(path)
    }

    /// The newest snapshot that verifies and whose header matches its name. Corrupt newer ones are
    /// logged, renamed to `*.corrupt` and skipped. I/O errors (other than corruption) are returned.
    pub fn latest_valid(&self) -> Result<Option<SnapshotMeta>, StorageError> {
        let _guard = self.lock();
        for m in self.list()? {
            let checked = Self::verify(&m.path).and_then(|v| {
                if (v.index, v.term) == (m.index, m.term) {
                    Ok(v)
                } else {
                    Err(corrupt(
                        &m.path,
                        OFF_INDEX,
                        format!(
                            "the header says index {} term {}, the file name index {} term {}",
                            v.index, v.term, m.index, m.term
                        ),
                    ))
                }
            });
            match checked {
                Ok(v) => return Ok(Some(v)),
                Err(e @ StorageError::Corrupt { .. }) => {
                    let aside = self.move_aside(&m.path)?;
                    warn!(
                        "skipping snapshot: {e}; moved it to {} (kept for inspection)",
                        aside.display()
                    );
                }
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Renames a corrupt snapshot to `<name>.corrupt` (or `<name>.corrupt.<n>` if taken). Lock held.
    fn move_aside(&self, path: &Path) -> Result<PathBuf, StorageError> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut aside = self.dir().join(format!("{name}.corrupt"));
        let mut n = 1;
        while aside.exists() {
            aside = self.dir().join(format!("{name}.corrupt.{n}"));
            n += 1;
        }
        fs::rename(path, &aside).map_err(io_err(path, "move corrupt snapshot aside"))?;
        sync_dir(self.dir())?;
        Ok(aside)
    }

    /// Where to store a snapshot being received from `from` at `index` (inside the store's directory, so
    /// [`SnapshotStore::import`] can rename it; removed by the next `open` if never imported).
    pub fn incoming_path(&self, from: u64, index: Index) -> PathBuf {
        self.dir().join(format!("incoming-{from}-{index:020}.tmp"))
    }

    /// Verifies a snapshot file received from a leader (in the same file system), makes it durable and
    /// renames it into place under its canonical name, then prunes beyond `keep`.
    pub fn import(&self, incoming: &Path) -> Result<SnapshotMeta, StorageError> {
        let meta = Self::verify(incoming)?;
        File::open(incoming)
            .and_then(|f| f.sync_all())
            .map_err(io_err(incoming, "fsync received snapshot"))?;
        let path = self.dir().join(snapshot_name(meta.index, meta.term));
        let _guard = self.lock();
        fs::rename(incoming, &path).map_err(io_err(incoming, "rename snapshot into place"))?;
        sync_dir(self.dir())?;
        info!(
            "installed received snapshot {} ({} bytes) at index {} term {}",
            path.display(),
            meta.size,
            meta.index,
            meta.term
        );
        self.prune(&path)?;
        Ok(SnapshotMeta { path, ..meta })
    }

    /// Starts receiving the snapshot at `index` from `from`: the leader's file bytes are appended
    /// verbatim to [`SnapshotStore::incoming_path`] (truncated first), then [`IncomingSnapshot::finish`]
    /// imports them.
    pub fn receive(&self, from: u64, index: Index) -> Result<IncomingSnapshot, StorageError> {
        let path = self.incoming_path(from, index);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io_err(&path, "create"))?;
        Ok(IncomingSnapshot {
            store: self.clone(),
            out: Some(BufWriter::with_capacity(IO_BUF, file)),
            path,
            index,
            received: 0,
            header: Vec::with_capacity(SNAPSHOT_HEADER_LEN),
            expected: None,
            done: false,
        })
    }
}

/// Writes the temporary file: placeholder header, body, trailer, then the real header; fsyncs it.
/// Returns the file size.
fn write_file(
    tmp: &Path,
    index: Index,
    term: Term,
    body: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<u64, StorageError> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)
        .map_err(io_err(tmp, "create"))?;
    let mut out = BufWriter::with_capacity(IO_BUF, file);
    out.write_all(&[0u8; SNAPSHOT_HEADER_LEN])
        .map_err(io_err(tmp, "write snapshot"))?;
    let mut w = BodyWriter {
        out,
        hasher: crc32fast::Hasher::new(),
        len: 0,
    };
    body(&mut w).map_err(io_err(tmp, "write snapshot body"))?;
    let BodyWriter {
        mut out,
        hasher,
        len,
    } = w;
    // The header is only known now; CRC(header + body) is combined from the two parts.
    let header = encode_header(index, term, len);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header);
    crc.combine(&hasher);
    out.write_all(&crc.finalize().to_le_bytes())
        .map_err(io_err(tmp, "write snapshot"))?;
    let mut file = out
        .into_inner()
        .map_err(|e| io_err(tmp, "write snapshot")(e.into_error()))?;
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.write_all(&header))
        .map_err(io_err(tmp, "write snapshot header"))?;
    file.sync_all().map_err(io_err(tmp, "fsync"))?;
    Ok(len + OVERHEAD)
}

/// A snapshot being received: the leader's file bytes, appended in order. The header is checked as soon
/// as it is complete, so a bad or oversized transfer is refused early; [`IncomingSnapshot::finish`]
/// verifies the whole file and imports it. Dropped unfinished, the partial file is removed.
pub struct IncomingSnapshot {
    store: SnapshotStore,
    path: PathBuf,
    out: Option<BufWriter<File>>,
    index: Index,
    received: u64,
    header: Vec<u8>,
    /// The file size the header announces, once the header is complete.
    expected: Option<u64>,
    done: bool,
}

impl IncomingSnapshot {
    /// The file the received bytes are written to ([`SnapshotStore::incoming_path`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes received so far: the offset the next chunk must start at.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The whole file's size, once the header has arrived.
    pub fn expected_size(&self) -> Option<u64> {
        self.expected
    }

    /// Appends the next bytes of the leader's file. After an error the transfer is dead: later calls
    /// fail too (drop it and start over).
    pub fn append(&mut self, data: &[u8]) -> Result<(), StorageError> {
        let r = self.try_append(data);
        if r.is_err() {
            self.out = None;
        }
        r
    }

    fn try_append(&mut self, data: &[u8]) -> Result<(), StorageError> {
        if self.header.len() < SNAPSHOT_HEADER_LEN {
            let take = (SNAPSHOT_HEADER_LEN - self.header.len()).min(data.len());
            self.header.extend_from_slice(&data[..take]);
            if self.header.len() == SNAPSHOT_HEADER_LEN {
                self.check_header()?;
            }
        }
        // Checked against the announced size before writing, so a transfer cannot fill the disk.
        if let Some(total) = self.expected {
            if self.received + data.len() as u64 > total {
                return Err(corrupt(
                    &self.path,
                    total,
                    format!(
                        "received more than the {total} bytes the header announces ({} + {})",
                        self.received,
                        data.len()
                    ),
                ));
            }
        }
        let out = self.out.as_mut().ok_or_else(|| {
            StorageError::Invalid("append to a failed or finished transfer".into())
        })?;
        out.write_all(data)
            .map_err(io_err(&self.path, "write received snapshot"))?;
        self.received += data.len() as u64;
        Ok(())
    }

    fn check_header(&mut self) -> Result<(), StorageError> {
        let mut h = [0u8; SNAPSHOT_HEADER_LEN];
        h.copy_from_slice(&self.header);
        let (index, _, body_len) =
            parse_header(&h).map_err(|(offset, reason)| corrupt(&self.path, offset, reason))?;
        if index != self.index {
            return Err(corrupt(
                &self.path,
                OFF_INDEX,
                format!(
                    "expected the snapshot at index {}, received one at {index}",
                    self.index
                ),
            ));
        }
        self.expected = Some(body_len + OVERHEAD);
        Ok(())
    }

    /// Checks that the whole file arrived, makes it durable, verifies it and imports it into the store.
    pub fn finish(mut self) -> Result<SnapshotMeta, StorageError> {
        match self.expected {
            Some(total) if total == self.received => {}
            _ => {
                return Err(corrupt(
                    &self.path,
                    self.received,
                    format!(
                        "incomplete transfer: {} bytes received, {} expected",
                        self.received,
                        self.expected
                            .map_or_else(|| "a header".to_string(), |t| t.to_string())
                    ),
                ))
            }
        }
        let out = self
            .out
            .take()
            .ok_or_else(|| StorageError::Invalid("finish twice".into()))?;
        let file = out
            .into_inner()
            .map_err(|e| io_err(&self.path, "write received snapshot")(e.into_error()))?;
        file.sync_all().map_err(io_err(&self.path, "fsync"))?;
        drop(file);
        let meta = self.store.import(&self.path)?;
        self.done = true;
        Ok(meta)
    }
}

impl Drop for IncomingSnapshot {
    fn drop(&mut self) {
        if !self.done {
            drop(self.out.take());
            // Best effort; `SnapshotStore::open` removes leftovers too.
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_strangers_are_ignored() {
        assert_eq!(parse_name(&snapshot_name(7, 3)), Some((7, 3)));
        assert_eq!(
            parse_name(&snapshot_name(u64::MAX, u64::MAX)),
            Some((u64::MAX, u64::MAX))
        );
        for bad in [
            "snap-7-3.snap",
            "snap-00000000000000000007-00000000000000000003.snap.corrupt",
            "snap-0000000000000000000x-00000000000000000003.snap",
            "snap-99999999999999999999-00000000000000000003.snap",
            "snap-00000000000000000007_00000000000000000003.snap",
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn header_fields_are_checked() {
        assert_eq!(parse_header(&encode_header(5, 2, 10)), Ok((5, 2, 10)));
        let bad = |h: [u8; SNAPSHOT_HEADER_LEN]| parse_header(&h).unwrap_err().0;
        let mut h = encode_header(5, 2, 10);
        h[0] = b'X';
        assert_eq!(bad(h), 0);
        let mut h = encode_header(5, 2, 10);
        h[8] = 2;
        assert_eq!(bad(h), OFF_VERSION);
        assert_eq!(bad(encode_header(0, 2, 10)), OFF_INDEX);
        assert_eq!(bad(encode_header(5, 0, 10)), OFF_TERM);
        assert_eq!(
            bad(encode_header(5, 2, SNAPSHOT_MAX_BODY_LEN + 1)),
            OFF_BODY_LEN
        );
        assert_eq!(bad(encode_header(5, 2, u64::MAX)), OFF_BODY_LEN);
    }
}
