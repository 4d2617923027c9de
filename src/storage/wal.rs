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
//! Record types (payloads in [`crate::codec`] encoding):
//! - 1 = one log entry;
//! - 2 = hard state;
//! - 3 = log start, `u64 I | u64 T`: "entries up to I (whose entry I has term T) are covered by a
//!   snapshot"; written by [`Wal::compact`]. Replay drops the entries held at or below I and keeps the rest;
//! - 4 = log reset, `u64 I | u64 T`: "the log is empty and starts after I, term T"; written by
//!   [`Wal::reset`] when a snapshot replaces the log. Replay drops every entry held.
//!
//! Temporary files `wal-<sequence>.tmp` (a reset segment not yet renamed into place) are removed on open.
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
//!
//! # Compaction and reset
//! - [`Wal::compact`] first appends a log-start record and the current hard state to the active segment
//!   and syncs them; only then does it remove segments, oldest first, each only if every entry it holds
//!   is at or below the compaction point, never the active segment. So the hard state and the log start
//!   always live in a remaining segment, and a crash at any point leaves a log that replays to the state
//!   before or after the compaction.
//! - Replay therefore accepts a log whose first segment begins above index 1, or whose entries resume
//!   above the start a log-start record set (that record was written while the entries after it still
//!   lay in older segments, which a later compaction removed), provided a later log-start or reset record
//!   covers everything before that entry; otherwise a segment is missing and opening fails. Until that
//!   record, an entry below the first one held is an overwrite whose predecessors were compacted away:
//!   the log restarts at it, and the record must cover it too. A log-start record that contradicts a held
//!   entry's term, or lies below what the log already dropped, is corruption.
//! - [`Wal::reset`] syncs the active segment, writes a new segment (higher sequence number) holding only
//!   a reset record and the hard state to a temporary file, syncs it, renames it into place, syncs the
//!   directory, and only then removes the older segments. A crash before the rename leaves the old log
//!   (the temporary file is removed on open); after it, the reset record makes whatever old segments
//!   remain irrelevant, and `open` finishes removing them.

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
const REC_LOG_RESET: u8 = 4;

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
    /// The last hard state found in the log (the default if none was written).
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
    /// How many times a segment was synced to disk since the log was opened.
    pub syncs: u64,
    /// Bytes written to segment files since the log was opened, record framing included.
    pub bytes_written: u64,
    /// How many segment files the log has now.
    pub segments: u64,
}

struct Segment {
    seq: u64,
    path: PathBuf,
    /// The highest entry index written to it, if any: compaction may remove it once that is covered.
    max_index: Option<Index>,
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
    /// The term of the entry at `first_index - 1` (0 if none).
    start_term: Term,
    /// The latest hard state given or recovered, rewritten by compaction before old segments go.
    hard_state: HardState,
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
            } else if name.starts_with("wal-") && name.ends_with(".tmp") {
                warn!("removing {name}: a WAL reset interrupted before it took effect");
                let path = entry.path();
                std::fs::remove_file(&path).map_err(io_err(&path, "remove"))?;
            } else if name.starts_with("wal-") {
                warn!("ignoring unexpected file {} in the WAL directory", name);
            }
        }
        seqs.sort_unstable();
        let mut st = Replay {
            rec: Recovered {
                first_index: 1,
                ..Default::default()
            },
            pending: None,
        };
        let mut segments = Vec::new();
        let mut last_reset = None;
        let n = seqs.len();
        for (k, &seq) in seqs.iter().enumerate() {
            let path = segment_path(dir, seq);
            let info = replay_segment(&path, &opts, k + 1 == n, &mut st)?;
            if info.reset {
                last_reset = Some(k);
            }
            segments.push(Segment {
                seq,
                path,
                max_index: info.max_index,
            });
        }
        if let Some((path, offset, first)) = st.pending {
            return Err(StorageError::Corrupt {
                path,
                offset,
                reason: format!(
                    "the log begins at entry {first} but no log-start record covers the entries before \
                     it (a segment is missing)"
                ),
            });
        }
        let rec = st.rec;
        // Segments before the last reset record are obsolete: finish the interrupted reset.
        if let Some(k) = last_reset.filter(|&k| k > 0) {
            for s in segments.drain(..k) {
                info!(
                    "removing {}: replaced by a snapshot (finishing an interrupted reset)",
                    s.path.display()
                );
                std::fs::remove_file(&s.path).map_err(io_err(&s.path, "remove"))?;
            }
            sync_dir(dir)?;
        }
        let last_index = rec.first_index - 1 + rec.entries.len() as u64;
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
        if !rec.entries.is_empty() || rec.hard_state != HardState::default() || rec.first_index > 1
        {
            info!(
                "WAL {}: {} segments, entries {}..={}, start term {}, {:?}",
                dir.display(),
                segments.len(),
                rec.first_index,
                last_index,
                rec.start_term,
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
            start_term: rec.start_term,
            hard_state: rec.hard_state,
        };
        Ok((wal, rec))
    }

    /// Buffers entries. The first may be at or below the last index (its suffix is overwritten on replay).
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        for (k, e) in entries.iter().enumerate() {
            let expect_contiguous = k == 0 || e.index == entries[k - 1].index + 1;
            if !expect_contiguous || e.index < self.first_index || e.index - 1 > self.last_index {
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
            seg.max_index = Some(seg.max_index.map_or(e.index, |m| m.max(e.index)));
        }
        Ok(())
    }

    /// Buffers a hard state.
    pub fn set_hard_state(&mut self, hs: HardState) -> Result<(), StorageError> {
        let mut w = Writer::with_capacity(24);
        w.hard_state(&hs);
        self.record(REC_HARD_STATE, &w.buf)?;
        self.hard_state = hs;
        Ok(())
    }

    fn record(&mut self, kind: u8, payload: &[u8]) -> Result<(), StorageError> {
        encode_record(&mut self.buf, kind, payload, self.opts.max_record_size)
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
        self.sync_active()?;
        if self.file_len >= self.opts.segment_size {
            self.rotate()?;
        }
        Ok(())
    }

    /// Writes the buffer and fdatasyncs the active segment (even if the buffer is empty: earlier
    /// `flush`es may not be durable yet). Never rotates.
    fn sync_active(&mut self) -> Result<(), StorageError> {
        self.flush()?;
        let path = &self.segments.last().expect("a segment is open").path;
        self.file.sync_data().map_err(io_err(path, "fdatasync"))?;
        self.stats.syncs += 1;
        Ok(())
    }

    /// Drops entries up to `through` (term `term`), which a snapshot now covers: writes a log-start
    /// record and the current hard state into the active segment and syncs them, then removes the oldest
    /// segments whose entries are all at or below `through` (never the active one) and syncs the
    /// directory. Returns how many segments were removed.
    ///
    /// Below the first index this is a no-op. At `first_index - 1` (the point already compacted to, e.g.
    /// after a crash interrupted the removals) it only removes what is still removable. After an error,
    /// reopen the WAL: what is on disk is consistent, the in-memory view may not be.
    pub fn compact(&mut self, through: Index, term: Term) -> Result<usize, StorageError> {
        if through.saturating_add(1) < self.first_index {
            return Ok(0);
        }
        if through > self.last_index || through == Index::MAX {
            return Err(StorageError::Invalid(format!(
                "cannot compact through {through}: the log ends at {} (a snapshot beyond the log \
                 needs reset)",
                self.last_index
            )));
        }
        if through + 1 == self.first_index {
            if term != self.start_term {
                return Err(StorageError::Invalid(format!(
                    "compaction through {through} with term {term}, but the log starts after term {}",
                    self.start_term
                )));
            }
            if self.removable(through) == 0 {
                return Ok(0);
            }
        }
        let mut w = Writer::with_capacity(16);
        w.u64(through);
        w.u64(term);
        self.record(REC_LOG_START, &w.buf)?;
        let hs = self.hard_state;
        self.set_hard_state(hs)?;
        // Durable before any segment goes: the records that replace theirs are in the active segment.
        self.sync_active()?;
        self.first_index = through + 1;
        self.start_term = term;
        let removable = self.removable(through);
        // Oldest first, so a crash in between leaves a suffix of segments, which replay accepts.
        let mut removed = 0;
        let mut result = Ok(());
        for s in &self.segments[..removable] {
            if let Err(e) = std::fs::remove_file(&s.path) {
                result = Err(io_err(&s.path, "remove compacted segment")(e));
                break;
            }
            removed += 1;
        }
        self.segments.drain(..removed);
        self.stats.segments = self.segments.len() as u64;
        result?;
        if removed > 0 {
            sync_dir(&self.dir)?;
            info!(
                "WAL {}: compacted through {through} (term {term}), removed {removed} segments",
                self.dir.display()
            );
        }
        if self.file_len >= self.opts.segment_size {
            self.rotate()?;
        }
        Ok(removed)
    }

    /// How many of the oldest segments hold no entry above `through`, not counting the active one.
    fn removable(&self, through: Index) -> usize {
        let active = self.segments.len() - 1;
        self.segments[..active]
            .iter()
            .take_while(|s| s.max_index.is_none_or(|m| m <= through))
            .count()
    }

    /// Replaces the whole log with an empty one that starts after `index` (term `term`), as after
    /// installing a snapshot at (`index`, `term`), and records `hs`. The new segment is complete and
    /// durable before the old ones are removed; a crash at any point leaves the old log or the new one.
    /// After an error, reopen the WAL: what is on disk is consistent, the in-memory view may not be.
    pub fn reset(&mut self, index: Index, term: Term, hs: HardState) -> Result<(), StorageError> {
        let Some(first) = index.checked_add(1) else {
            return Err(StorageError::Invalid(format!(
                "cannot reset to index {index}"
            )));
        };
        // Old segments stop being the last one: they must be whole (only the last may have a torn tail).
        self.sync_active()?;
        let seq = self.segments.last().map_or(1, |s| s.seq + 1);
        let mut data = HEADER.to_vec();
        let mut w = Writer::with_capacity(40);
        w.u64(index);
        w.u64(term);
        encode_record(&mut data, REC_LOG_RESET, &w.buf, self.opts.max_record_size)?;
        let mut w = Writer::with_capacity(24);
        w.hard_state(&hs);
        encode_record(&mut data, REC_HARD_STATE, &w.buf, self.opts.max_record_size)?;
        let tmp = self.dir.join(format!("wal-{seq:020}.tmp"));
        let path = segment_path(&self.dir, seq);
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(&data)?;
                f.sync_all()
            })
            .map_err(io_err(&tmp, "write reset segment"))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&tmp, "rename reset segment"))?;
        sync_dir(&self.dir)?;
        // The reset is durable. From here on the old segments are obsolete.
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_err(&path, "open"))?;
        let old = std::mem::replace(
            &mut self.segments,
            vec![Segment {
                seq,
                path,
                max_index: None,
            }],
        );
        self.file = file;
        self.file_len = data.len() as u64;
        self.first_index = first;
        self.last_index = index;
        self.start_term = term;
        self.hard_state = hs;
        self.stats.syncs += 1;
        self.stats.bytes_written += data.len() as u64;
        self.stats.segments = 1;
        for s in &old {
            // Should this fail, `open` removes the rest (they precede a reset record).
            std::fs::remove_file(&s.path).map_err(io_err(&s.path, "remove replaced segment"))?;
        }
        sync_dir(&self.dir)?;
        info!(
            "WAL {}: reset to start after index {index} (term {term}), removed {} segments",
            self.dir.display(),
            old.len()
        );
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

    /// The index of the last entry in the log (`first_index() - 1` when it holds none).
    pub fn last_index(&self) -> Index {
        self.last_index
    }

    /// The first index the log holds (the one after the compaction or reset point; 1 if neither).
    pub fn first_index(&self) -> Index {
        self.first_index
    }

    /// The term of the entry just before the first index (0 for a log never compacted or reset).
    pub fn start_term(&self) -> Term {
        self.start_term
    }

    /// The latest hard state given to [`Wal::set_hard_state`] or [`Wal::reset`], or recovered.
    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    /// The log's counters.
    pub fn stats(&self) -> WalStats {
        self.stats
    }
}

/// Appends a framed record (length, CRC, type, payload) to `buf`.
fn encode_record(
    buf: &mut Vec<u8>,
    kind: u8,
    payload: &[u8],
    max: u32,
) -> Result<(), StorageError> {
    let len = payload.len() + 1;
    if len > max as usize {
        return Err(StorageError::Invalid(format!(
            "record of {len} bytes exceeds the WAL's limit of {max}"
        )));
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&[kind]);
    h.update(payload);
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    buf.extend_from_slice(&h.finalize().to_le_bytes());
    buf.push(kind);
    buf.extend_from_slice(payload);
    Ok(())
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
            max_index: None,
        },
        f,
    ))
}

/// Replay state across segments.
struct Replay {
    rec: Recovered,
    /// The log began above index 1 (earlier segments compacted away): where, until a log-start or reset
    /// record covers what precedes it.
    pending: Option<(PathBuf, u64, Index)>,
}

/// What replaying one segment found.
struct SegmentInfo {
    /// The highest entry index in it.
    max_index: Option<Index>,
    /// Whether it holds a reset record.
    reset: bool,
}

/// Replays one segment into `st`.
fn replay_segment(
    path: &Path,
    opts: &WalOptions,
    is_last: bool,
    st: &mut Replay,
) -> Result<SegmentInfo, StorageError> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(io_err(path, "read"))?;
    let corrupt = |offset: usize, reason: String| StorageError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    let mut info = SegmentInfo {
        max_index: None,
        reset: false,
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
            return Ok(info);
        }
        return Err(corrupt(0, "not a nimbus WAL segment (bad header)".into()));
    }
    let mut pos = HEADER.len();
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
                    return Ok(info);
                }
                let reason = match later {
                    Some(at) => format!("{reason}; a valid record follows at offset {at}"),
                    None => reason,
                };
                return Err(corrupt(pos, reason));
            }
        };
        let mut r = Reader::new(payload);
        let rec = &mut st.rec;
        match kind {
            REC_ENTRY => {
                let e = r.entry().map_err(|e| corrupt(pos, e.to_string()))?;
                r.finish().map_err(|e| corrupt(pos, e.to_string()))?;
                if rec.entries.is_empty() && e.index > rec.first_index {
                    // The first entry of a log whose earlier segments compaction removed, or the first
                    // after a log-start record whose following entries lay in such segments (the record
                    // was written before a later compaction removed them): a log-start record further on
                    // must cover what comes before it.
                    rec.first_index = e.index;
                    st.pending = Some((path.to_path_buf(), pos as u64, e.index));
                }
                if st.pending.is_some() && e.index >= 1 && e.index < rec.first_index {
                    // The entries this log began with were overwritten later from below them, and the
                    // segments that held what precedes were compacted away (their entries were all
                    // covered). The log starts at the overwrite; the log-start record that must still
                    // follow covers what precedes it.
                    rec.entries.clear();
                    rec.first_index = e.index;
                    st.pending = Some((path.to_path_buf(), pos as u64, e.index));
                }
                // first_index >= 1, so neither side can overflow.
                let last = rec.first_index - 1 + rec.entries.len() as u64;
                if e.index < rec.first_index || e.index - 1 > last {
                    return Err(corrupt(
                        pos,
                        format!(
                            "entry {} does not follow the log ({}..={last})",
                            e.index, rec.first_index
                        ),
                    ));
                }
                rec.entries.truncate((e.index - rec.first_index) as usize);
                info.max_index = Some(info.max_index.map_or(e.index, |m| m.max(e.index)));
                rec.entries.push(e);
            }
            REC_HARD_STATE => {
                rec.hard_state = r.hard_state().map_err(|e| corrupt(pos, e.to_string()))?;
                r.finish().map_err(|e| corrupt(pos, e.to_string()))?;
            }
            REC_LOG_START | REC_LOG_RESET => {
                let index = r.u64().map_err(|e| corrupt(pos, e.to_string()))?;
                let term = r.u64().map_err(|e| corrupt(pos, e.to_string()))?;
                r.finish().map_err(|e| corrupt(pos, e.to_string()))?;
                let Some(keep_from) = index.checked_add(1) else {
                    return Err(corrupt(pos, format!("log start {index} out of range")));
                };
                if kind == REC_LOG_RESET {
                    rec.entries.clear();
                    info.reset = true;
                } else {
                    if keep_from < rec.first_index && st.pending.is_some() {
                        // An older compaction's record, in a segment whose predecessors a later compaction
                        // removed: the entries it covers are gone already. A later log-start record must
                        // still cover the start of what remains.
                        pos = next;
                        continue;
                    }
                    if keep_from < rec.first_index {
                        return Err(corrupt(
                            pos,
                            format!(
                                "log-start record for index {index}, but the log already begins at {}{}",
                                rec.first_index,
                                if st.pending.is_some() {
                                    " (a segment is missing)"
                                } else {
                                    ""
                                }
                            ),
                        ));
                    }
                    // Entries held at or below `index` (keep_from >= first_index here).
                    let held = (keep_from - rec.first_index) as usize;
                    if let Some(e) = held.checked_sub(1).and_then(|k| rec.entries.get(k)) {
                        if e.term != term {
                            return Err(corrupt(
                                pos,
                                format!(
                                    "log-start record says entry {index} has term {term}, the log has \
                                     term {}",
                                    e.term
                                ),
                            ));
                        }
                    }
                    rec.entries.drain(..held.min(rec.entries.len()));
                }
                rec.first_index = keep_from;
                rec.start_term = term;
                st.pending = None;
            }
            k => return Err(corrupt(pos, format!("unknown record type {k}"))),
        }
        pos = next;
    }
    Ok(info)
}

/// The offset of the first well-formed record (plausible length, known type, matching CRC) at or after
/// `from`, if any.
fn next_valid_record(data: &[u8], from: usize, max: u32) -> Option<usize> {
    (from..data.len().saturating_sub(8)).find(|&o| {
        matches!(
            data.get(o + 8),
            Some(&(REC_ENTRY | REC_HARD_STATE | REC_LOG_START | REC_LOG_RESET))
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
