//! The write-ahead log: the durable copy of the Raft log and hard state.
//!
//! # Format
//! A directory of segment files `wal-<20-digit sequence>.log`, replayed in sequence order. Each segment starts
//! with an 8-byte header, `NIMBWAL` and a format version byte (1). Records follow:
//!
//! ```text
//! u32 LE length of (type + payload) | u32 LE CRC32 of (type + payload) | u8 type | payload
//! ```
//!
//! Record types: 1 = one log entry ([`crate::codec`] entry encoding), 2 = hard state, 3 = "the log starts
//! after index I with term T" (written by compaction; entries at or below I are dropped).
//!
//! # Rules
//! - Replay: an entry at index i drops every entry >= i held so far, then appends; so an overwrite of a
//!   suffix needs no separate truncation record. An entry that leaves a gap is corruption.
//! - Group commit: `append` and `set_hard_state` only encode into a buffer; `sync` writes the buffer with
//!   one `write` and makes it durable with one `fdatasync`. A new segment (and a removed one) is followed
//!   by an fsync of the directory.
//! - Torn tail: a record in the **last** segment that fails (short header, length running past the end of
//!   the file, bad CRC) is a torn write if no well-formed record (plausible length, known type, matching
//!   CRC) starts anywhere after it; it and everything after it are cut off (logged at warn with file,
//!   offset and size). Any other bad record (in an earlier segment, or followed by a valid record) is
//!   corruption: opening fails naming the file and offset, and nothing is changed on disk. A record that
//!   passes its CRC but does not decode, or breaks the log's contiguity, is always corruption.
//!   Limitation: damage to the very last record looks exactly like a torn write and is cut off.
//! - Every length is checked against `max_record_size` before anything is allocated; no file content can
//!   make opening panic.

use super::{io_err, sync_dir, StorageError};
use crate::codec::{Reader, Writer};
use crate::raft::{Entry, HardState, Index, Term};
use log::{info, warn};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

const HEADER: &[u8; 8] = b"NIMBWAL\x01";
const REC_ENTRY: u8 = 1;
const REC_HARD_STATE: u8 = 2;
const REC_LOG_START: u8 = 3;

/// WAL settings.
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// A new segment is started once the current one exceeds this size.
    pub segment_size: u64,
    /// Largest record accepted on read (and written).
    pub max_record_size: u32,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_size: 64 << 20,
            max_record_size: 64 << 20,
        }
    }
}

/// What replay found.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    pub hard_state: HardState,
    /// Contiguous entries starting at `first_index`.
    pub entries: Vec<Entry>,
    /// Index of the first entry the log holds (1 for a log never compacted).
    pub first_index: Index,
    /// Term of the entry at `first_index - 1` (0 if none).
    pub start_term: Term,
}

/// Counters for status pages.
#[derive(Debug, Clone, Copy, Default)]
pub struct WalStats {
    pub syncs: u64,
    pub bytes_written: u64,
    pub segments: u64,
}

struct Segment {
    seq: u64,
    path: PathBuf,
    /// The first entry index written to it, if any (for compaction).
    first_index: Option<Index>,
}

/// An open write-ahead log.
pub struct Wal {
    dir: PathBuf,
    opts: WalOptions,
    segments: Vec<Segment>,
    file: File,
    file_len: u64,
    buf: Vec<u8>,
    /// Index bookkeeping without keeping the entries (the Raft core holds them).
    first_index: Index,
    last_index: Index,
    stats: WalStats,
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("wal-{seq:020}.log"))
}

impl Wal {
    /// Opens the WAL in `dir` (created if missing), replays it and repairs a torn tail.
    pub fn open(dir: &Path, opts: WalOptions) -> Result<(Wal, Recovered), StorageError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir, "create directory"))?;
        let mut seqs = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_err(dir, "list directory"))? {
            let entry = entry.map_err(io_err(dir, "list directory"))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(seq) = name
                .strip_prefix("wal-")
                .and_then(|s| s.strip_suffix(".log"))
                .and_then(|s| s.parse::<u64>().ok())
            {
                seqs.push(seq);
            } else if name.starts_with("wal-") {
                warn!("ignoring unexpected file {} in the WAL directory", name);
            }
        }
        seqs.sort_unstable();
        let mut rec = Recovered {
            first_index: 1,
            ..Default::default()
        };
        let mut segments = Vec::new();
        let n = seqs.len();
        for (k, &seq) in seqs.iter().enumerate() {
            let path = segment_path(dir, seq);
            let first = replay_segment(&path, &opts, k + 1 == n, &mut rec)?;
            segments.push(Segment {
                seq,
                path,
                first_index: first,
            });
        }
        let last_index = rec.first_index + rec.entries.len() as u64 - 1;
        let (file, file_len) = match segments.last() {
            Some(s) => {
                let f = OpenOptions::new()
                    .append(true)
                    .open(&s.path)
                    .map_err(io_err(&s.path, "open"))?;
                let len = f.metadata().map_err(io_err(&s.path, "stat"))?.len();
                (f, len)
            }
            None => {
                let (seg, f) = create_segment(dir, 1)?;
                segments.push(seg);
                (f, HEADER.len() as u64)
            }
        };
        if !rec.entries.is_empty() || rec.hard_state != HardState::default() {
            info!(
                "WAL {}: {} segments, entries {}..={}, {:?}",
                dir.display(),
                segments.len(),
                rec.first_index,
                last_index,
                rec.hard_state
            );
        }
        let wal = Wal {
            dir: dir.to_path_buf(),
            opts,
            stats: WalStats {
                segments: segments.len() as u64,
                ..Default::default()
            },
            segments,
            file,
            file_len,
            buf: Vec::with_capacity(64 * 1024),
            first_index: rec.first_index,
            last_index,
        };
        Ok((wal, rec))
    }

    /// Buffers entries. The first may be at or below the last index (its suffix is overwritten on replay).
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        for (k, e) in entries.iter().enumerate() {
            let expect_contiguous = k == 0 || e.index == entries[k - 1].index + 1;
            if !expect_contiguous || e.index > self.last_index + 1 || e.index < self.first_index {
                return Err(StorageError::Invalid(format!(
                    "entry {} cannot follow last index {} (first index {})",
                    e.index, self.last_index, self.first_index
                )));
            }
            let mut w = Writer::with_capacity(32);
            w.entry(e);
            self.record(REC_ENTRY, &w.buf)?;
            self.last_index = e.index;
            let seg = self.segments.last_mut().expect("a segment is open");
            seg.first_index.get_or_insert(e.index);
        }
        Ok(())
    }

    /// Buffers a hard state.
    pub fn set_hard_state(&mut self, hs: HardState) -> Result<(), StorageError> {
        let mut w = Writer::with_capacity(24);
        w.hard_state(&hs);
        self.record(REC_HARD_STATE, &w.buf)
    }

    fn record(&mut self, kind: u8, payload: &[u8]) -> Result<(), StorageError> {
        let len = payload.len() + 1;
        if len > self.opts.max_record_size as usize {
            return Err(StorageError::Invalid(format!(
                "record of {len} bytes exceeds the WAL's limit of {}",
                self.opts.max_record_size
            )));
        }
        let mut h = crc32fast::Hasher::new();
        h.update(&[kind]);
        h.update(payload);
        self.buf.extend_from_slice(&(len as u32).to_le_bytes());
        self.buf.extend_from_slice(&h.finalize().to_le_bytes());
        self.buf.push(kind);
        self.buf.extend_from_slice(payload);
        Ok(())
    }

    /// Writes the buffered records without forcing them to disk.
    pub fn flush(&mut self) -> Result<(), StorageError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let path = self
            .segments
            .last()
            .expect("a segment is open")
            .path
            .clone();
        self.file
            .write_all(&self.buf)
            .map_err(io_err(&path, "write"))?;
        self.file_len += self.buf.len() as u64;
        self.stats.bytes_written += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Writes the buffered records and makes them durable with one fdatasync.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.flush()?;
        let path = &self.segments.last().expect("a segment is open").path;
        self.file.sync_data().map_err(io_err(path, "fdatasync"))?;
        self.stats.syncs += 1;
        if self.file_len >= self.opts.segment_size {
            self.rotate()?;
        }
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), StorageError> {
        let seq = self.segments.last().map(|s| s.seq + 1).unwrap_or(1);
        let (seg, f) = create_segment(&self.dir, seq)?;
        self.segments.push(seg);
        self.file = f;
        self.file_len = HEADER.len() as u64;
        self.stats.segments = self.segments.len() as u64;
        Ok(())
    }

    pub fn last_index(&self) -> Index {
        self.last_index
    }

    pub fn stats(&self) -> WalStats {
        self.stats
    }
}

fn create_segment(dir: &Path, seq: u64) -> Result<(Segment, File), StorageError> {
    let path = segment_path(dir, seq);
    let mut f = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .map_err(io_err(&path, "create"))?;
    f.write_all(HEADER).map_err(io_err(&path, "write header"))?;
    f.sync_all().map_err(io_err(&path, "fsync"))?;
    sync_dir(dir)?;
    Ok((
        Segment {
            seq,
            path,
            first_index: None,
        },
        f,
    ))
}

/// Replays one segment into `rec`. Returns the first entry index it holds.
fn replay_segment(
    path: &Path,
    opts: &WalOptions,
    is_last: bool,
    rec: &mut Recovered,
) -> Result<Option<Index>, StorageError> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(io_err(path, "read"))?;
    let corrupt = |offset: usize, reason: String| StorageError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    if data.len() < HEADER.len() || &data[..HEADER.len()] != HEADER {
        // A crash between creating the file and writing its header leaves it short: only for the last
        // segment, and only if it holds nothing else.
        if is_last && data.len() < HEADER.len() && HEADER.starts_with(&data) {
            warn!(
                "WAL {}: segment header torn ({} bytes); rewriting it",
                path.display(),
                data.len()
            );
            rewrite_prefix(path, HEADER)?;
            return Ok(None);
        }
        return Err(corrupt(0, "not a nimbus WAL segment (bad header)".into()));
    }
    let mut pos = HEADER.len();
    let mut first = None;
    while pos < data.len() {
        let parsed = parse_record(&data, pos, opts.max_record_size);
        let (kind, payload, next) = match parsed {
            Ok(r) => r,
            Err(reason) => {
                // Torn only if nothing valid follows: a damaged length in the middle of the file must not
                // pass for a torn tail and silently drop the good records after it.
                let later = next_valid_record(&data, pos + 1, opts.max_record_size);
                if is_last && later.is_none() {
                    warn!(
                        "WAL {}: dropping a torn tail of {} bytes at offset {pos} ({reason})",
                        path.display(),
                        data.len() - pos
                    );
                    truncate_file(path, pos as u64)?;
                    return Ok(first);
                }
                let reason = match later {
                    Some(at) => format!("{reason}; a valid record follows at offset {at}"),
                    None => reason,
                };
                return Err(corrupt(pos, reason));
            }
        };
        let mut r = Reader::new(payload);
        match kind {
            REC_ENTRY => {
                let e = r.entry().map_err(|e| corrupt(pos, e.to_string()))?;
                r.finish().map_err(|e| corrupt(pos, e.to_string()))?;
                let last = rec.first_index + rec.entries.len() as u64 - 1;
                if e.index < rec.first_index || e.index > last + 1 {
                    return Err(corrupt(
                        pos,
                        format!(
                            "entry {} does not follow the log ({}..={last})",
                            e.index, rec.first_index
                        ),
                    ));
                }
                rec.entries.truncate((e.index - rec.first_index) as usize);
                first.get_or_insert(e.index);
                rec.entries.push(e);
            }
            REC_HARD_STATE => {
                rec.hard_state = r.hard_state().map_err(|e| corrupt(pos, e.to_string()))?;
                r.finish().map_err(|e| corrupt(pos, e.to_string()))?;
            }
            REC_LOG_START => {
                let index = r.u64().map_err(|e| corrupt(pos, e.to_string()))?;
                let term = r.u64().map_err(|e| corrupt(pos, e.to_string()))?;
                r.finish().map_err(|e| corrupt(pos, e.to_string()))?;
                let keep_from = index + 1;
                if keep_from > rec.first_index {
                    let drop = ((keep_from - rec.first_index) as usize).min(rec.entries.len());
                    rec.entries.drain(..drop);
                }
                rec.first_index = keep_from;
                rec.start_term = term;
            }
            k => return Err(corrupt(pos, format!("unknown record type {k}"))),
        }
        pos = next;
    }
    Ok(first)
}

/// The offset of the first well-formed record (plausible length, known type, matching CRC) at or after
/// `from`, if any.
fn next_valid_record(data: &[u8], from: usize, max: u32) -> Option<usize> {
    (from..data.len().saturating_sub(8)).find(|&o| {
        matches!(
            data.get(o + 8),
            Some(&(REC_ENTRY | REC_HARD_STATE | REC_LOG_START))
        ) && parse_record(data, o, max).is_ok()
    })
}

/// Parses the record at `pos`: (type, payload, next position), or why it is bad.
fn parse_record(data: &[u8], pos: usize, max: u32) -> Result<(u8, &[u8], usize), String> {
    if data.len() - pos < 9 {
        return Err(format!("short record header ({} bytes)", data.len() - pos));
    }
    let len = u32::from_le_bytes([data[pos], data[pos + 1], data[pos + 2], data[pos + 3]]);
    if len == 0 || len > max {
        return Err(format!("record length {len} out of range"));
    }
    let end = pos + 8 + len as usize;
    if end > data.len() {
        return Err(format!(
            "record of {len} bytes runs past the end of the file"
        ));
    }
    let crc = u32::from_le_bytes([data[pos + 4], data[pos + 5], data[pos + 6], data[pos + 7]]);
    let body = &data[pos + 8..end];
    if crc32fast::hash(body) != crc {
        return Err("checksum mismatch".into());
    }
    Ok((body[0], &body[1..], end))
}

fn truncate_file(path: &Path, len: u64) -> Result<(), StorageError> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(path, "open for truncation"))?;
    f.set_len(len).map_err(io_err(path, "truncate"))?;
    f.sync_all().map_err(io_err(path, "fsync"))
}

fn rewrite_prefix(path: &Path, header: &[u8]) -> Result<(), StorageError> {
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(io_err(path, "open"))?;
    f.write_all(header).map_err(io_err(path, "write header"))?;
    f.sync_all().map_err(io_err(path, "fsync"))
}
