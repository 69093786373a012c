//! The disk spool of one stream destination: an append-only queue of whole HEPv3 frames in
//! segment files, read oldest first, that survives a restart.
//!
//! # Files
//!
//! The spool of a destination is a directory of its own (`<dir>/<destination name>/`):
//!
//! - `<sequence>.seg`: segment files, 20-digit sequence numbers, each at most
//!   [`SpoolOptions::segment_bytes`] (plus one record). Records ([`record`]) are appended
//!   to the newest; reading starts at the oldest.
//! - `lock`: `flock`ed by the process that has the spool open; a second opener fails.
//! - `position`: where the oldest frame not yet consumed starts (segment sequence and
//!   offset, with a CRC-32), written to `position.tmp` and renamed over at each
//!   [`Spool::sync`]. A segment wholly consumed is deleted.
//!
//! # Durability
//!
//! Each append is one `write(2)` of the whole record, so a frame the spool took is in the
//! kernel's page cache when [`Spool::append`] returns: a crash of the process (kill -9)
//! loses nothing. [`Spool::sync`] (at most every `sync`, and at a clean stop) runs
//! `fdatasync` on the segments written since and saves the position: a crash of the
//! machine loses at most the frames appended within `sync`, and frames consumed within
//! `sync` are sent again after a restart (at least once, never lost).
//!
//! # Recovery
//!
//! [`Spool::open`] reads every segment from the saved position: records that check out
//! are counted, runs of corrupt bytes between them are skipped (and counted in
//! [`Recovery::corrupt_skipped`]), and corrupt or torn bytes at the end of the newest
//! segment (a write cut by a crash) are truncated off and logged. Nothing in the files can
//! make it panic; a file it cannot read is an error.
//!
//! # Full
//!
//! When an append would take the spool past `max_bytes`, or the disk refuses it
//! (`ENOSPC`, `EDQUOT`), the policy decides: [`OnFull::DropOldest`] deletes the oldest
//! segment (its unconsumed frames are counted dropped) and tries again;
//! [`OnFull::DropNewest`] refuses the new frame. A write that failed half way is cut back
//! (`ftruncate`), so the spool stays readable.

pub mod record;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use record::{HEADER_LEN, MAX_RECORD, Step};

/// The default of `max_bytes`.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;
/// The default of `sync`.
pub const DEFAULT_SYNC: Duration = Duration::from_secs(1);
/// The largest segment.
pub const MAX_SEGMENT_BYTES: u64 = 16 << 20;
/// The smallest segment.
pub const MIN_SEGMENT_BYTES: u64 = 256 << 10;
/// The smallest `max_bytes`.
pub const MIN_MAX_BYTES: u64 = 1 << 20;
/// Bytes read from a segment at once while replaying: room for two records of the
/// largest size at least.
const READ_WINDOW: usize = 4 * MAX_RECORD;
/// The largest segment file read at open; bytes past it are corrupt.
const MAX_SEGMENT_FILE: u64 = 4 * MAX_SEGMENT_BYTES;
const POSITION: &str = "position";
const LOCK: &str = "lock";
const POSITION_TMP: &str = "position.tmp";
const SEGMENT_SUFFIX: &str = ".seg";

/// What to do when the spool is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OnFull {
    /// Delete the oldest segment (its frames are counted dropped), keep the new frame.
    #[default]
    DropOldest,
    /// Refuse the new frame (counted dropped).
    DropNewest,
}

impl OnFull {
    /// The configuration's word.
    pub fn name(self) -> &'static str {
        match self {
            OnFull::DropOldest => "drop-oldest",
            OnFull::DropNewest => "drop-newest",
        }
    }
}

/// The settings of one spool.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpoolOptions {
    /// The destination's own directory.
    pub dir: PathBuf,
    /// The most bytes of segment files.
    pub max_bytes: u64,
    /// `fdatasync` at most this often.
    pub sync: Duration,
    /// The policy when full.
    pub on_full: OnFull,
    /// The size at which a segment is closed and the next one started.
    pub segment_bytes: u64,
}

impl SpoolOptions {
    /// A spool in `dir` of at most `max_bytes`, segments of an eighth of it (within
    /// [`MIN_SEGMENT_BYTES`]..=[`MAX_SEGMENT_BYTES`]).
    pub fn new(dir: PathBuf, max_bytes: u64, sync: Duration, on_full: OnFull) -> Self {
        SpoolOptions {
            dir,
            max_bytes,
            sync,
            on_full,
            segment_bytes: (max_bytes / 8).clamp(MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES),
        }
    }
}

/// What went wrong with a spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A file or directory operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// The operation.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Another spool (another process, or a sink being replaced) holds the directory.
    #[error("spool directory {0} is in use by another process or sink")]
    Locked(PathBuf),
    /// The frame cannot be a record (empty, or larger than a HEPv3 frame can be).
    #[error("a frame of {0} bytes cannot be spooled")]
    BadFrame(usize),
}

impl SpoolError {
    fn io(what: &'static str, path: &Path, source: io::Error) -> Self {
        SpoolError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }

    /// Whether the disk (or quota) is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, SpoolError::Io { source, .. }
            if matches!(source.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)))
    }
}

/// What [`Spool::open`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Frames waiting to be replayed.
    pub frames: u64,
    /// Runs of corrupt bytes skipped.
    pub corrupt_skipped: u64,
    /// Bytes cut off the end of the newest segment (a torn or corrupt tail).
    pub truncated_bytes: u64,
}

/// What [`Spool::append`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Stored; `dropped_oldest` older frames were deleted to make room.
    Stored {
        /// Frames deleted with the oldest segments.
        dropped_oldest: u64,
    },
    /// Refused (full); `dropped_oldest` older frames were deleted before giving up.
    Refused {
        /// Frames deleted with the oldest segments.
        dropped_oldest: u64,
    },
}

/// A position: a segment and an offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    /// The segment's sequence number.
    pub segment: u64,
    /// The byte offset.
    pub offset: u64,
}

#[derive(Debug)]
struct Segment {
    sequence: u64,
    /// Bytes in the file.
    len: u64,
    /// Records in it not consumed yet.
    frames: u64,
}

/// A frame read for replay, not consumed yet.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    /// Where its record ends.
    end: Position,
    /// When it was spooled.
    time_ms: u64,
}

/// One destination's spool. Not thread-safe by itself: the sink keeps it under a lock.
#[derive(Debug)]
pub struct Spool {
    /// The `lock` file, `flock`ed while the spool is open.
    _lock: File,
    options: SpoolOptions,
    /// Oldest first; the last one is written to.
    segments: VecDeque<Segment>,
    /// The newest segment, open for appending.
    writer: Option<File>,
    /// Sealed segments written since the last sync.
    unsynced: Vec<File>,
    /// Whether the newest segment was written since the last sync.
    writer_dirty: bool,
    /// A failed write could not be cut back: the next append starts a new segment.
    writer_broken: bool,
    /// Where the next frame to replay starts.
    read: Position,
    /// Everything before this is consumed.
    consumed: Position,
    /// Whether `consumed` changed since the position file was written.
    position_dirty: bool,
    /// Frames read and not consumed, in order.
    in_flight: VecDeque<InFlight>,
    /// When the oldest unconsumed frame was spooled, if known.
    oldest_ms: Option<u64>,
    /// Scratch for encoding and reading.
    buf: Vec<u8>,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn segment_name(sequence: u64) -> String {
    format!("{sequence:020}{SEGMENT_SUFFIX}")
}

impl Spool {
    /// Opens (creating it if needed) the spool in `options.dir`, recovering what a crash
    /// left: see the module documentation.
    pub fn open(options: SpoolOptions) -> Result<(Spool, Recovery), SpoolError> {
        let dir = options.dir.clone();
        fs::create_dir_all(&dir).map_err(|e| SpoolError::io("creating", &dir, e))?;
        let lock = lock_dir(&dir)?;
        let mut sequences = Vec::new();
        let entries = fs::read_dir(&dir).map_err(|e| SpoolError::io("listing", &dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| SpoolError::io("listing", &dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(number) = name.strip_suffix(SEGMENT_SUFFIX)
                && number.len() == 20
                && let Ok(sequence) = number.parse::<u64>()
            {
                sequences.push(sequence);
            }
        }
        sequences.sort_unstable();
        let saved = read_position(&dir.join(POSITION));
        let mut recovery = Recovery::default();
        let mut segments = VecDeque::new();
        let mut start = saved.unwrap_or_default();
        let newest = sequences.last().copied();
        for &sequence in &sequences {
            let path = dir.join(segment_name(sequence));
            if sequence < start.segment {
                // Wholly consumed before the crash; its deletion did not happen.
                remove(&path)?;
                continue;
            }
            let from = if sequence == start.segment {
                start.offset
            } else {
                0
            };
            let mut bytes = Vec::new();
            File::open(&path)
                .and_then(|f| f.take(MAX_SEGMENT_FILE).read_to_end(&mut bytes))
                .map_err(|e| SpoolError::io("reading", &path, e))?;
            let file_len = fs::metadata(&path)
                .map_err(|e| SpoolError::io("reading", &path, e))?
                .len();
            let from = usize::try_from(from).unwrap_or(usize::MAX).min(bytes.len());
            let mut summary = record::summarise(&bytes, from);
            let mut len = file_len;
            if Some(sequence) == newest && (summary.valid_end as u64) < file_len {
                // The tail after the last good record: a torn write (or worse). Cut it.
                let cut = file_len - summary.valid_end as u64;
                if summary.corrupt_runs > 0 && (summary.valid_end as u64) < bytes.len() as u64 {
                    // That run is the tail, not a skipped record.
                    summary.corrupt_runs -= 1;
                }
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| SpoolError::io("opening", &path, e))?;
                file.set_len(summary.valid_end as u64)
                    .and_then(|()| file.sync_data())
                    .map_err(|e| SpoolError::io("truncating", &path, e))?;
                tracing::warn!(
                    segment = %path.display(),
                    bytes = cut,
                    "spool: torn or corrupt tail of the newest segment truncated"
                );
                recovery.truncated_bytes += cut;
                len = summary.valid_end as u64;
            } else if file_len > bytes.len() as u64 {
                // Bytes past what is read at most: one more corrupt run.
                summary.corrupt_runs += 1;
            }
            if summary.corrupt_runs > 0 {
                tracing::warn!(
                    segment = %path.display(),
                    runs = summary.corrupt_runs,
                    "spool: corrupt records skipped"
                );
            }
            recovery.frames += summary.records;
            recovery.corrupt_skipped += summary.corrupt_runs;
            if segments.is_empty() {
                start = Position {
                    segment: sequence,
                    offset: from as u64,
                };
            }
            segments.push_back(Segment {
                sequence,
                len,
                frames: summary.records,
            });
        }
        let mut spool = Spool {
            _lock: lock,
            options,
            segments,
            writer: None,
            unsynced: Vec::new(),
            writer_dirty: false,
            writer_broken: false,
            read: start,
            consumed: start,
            position_dirty: saved != Some(start),
            in_flight: VecDeque::new(),
            oldest_ms: None,
            buf: Vec::new(),
        };
        spool.drop_consumed_segments()?;
        spool.refresh_oldest();
        Ok((spool, recovery))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.options.dir
    }

    /// The policy when full.
    pub fn on_full(&self) -> OnFull {
        self.options.on_full
    }

    /// How often to sync.
    pub fn sync_every(&self) -> Duration {
        self.options.sync
    }

    /// Frames not consumed (read for replay or not).
    pub fn frames(&self) -> u64 {
        self.segments.iter().map(|s| s.frames).sum()
    }

    /// Frames not read for replay yet.
    pub fn unread_frames(&self) -> u64 {
        self.frames() - self.in_flight.len() as u64
    }

    /// Whether no frame waits to be consumed.
    pub fn is_empty(&self) -> bool {
        self.frames() == 0
    }

    /// Bytes of the segment files.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }

    /// When the oldest frame not consumed was spooled (ms since the epoch), if any.
    pub fn oldest_ms(&self) -> Option<u64> {
        self.oldest_ms
    }

    /// Appends one frame (one `write(2)`), applying the full policy.
    pub fn append(&mut self, frame: &[u8]) -> Result<Appended, SpoolError> {
        if frame.is_empty() || frame.len() > record::MAX_PAYLOAD {
            return Err(SpoolError::BadFrame(frame.len()));
        }
        let time_ms = now_ms();
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        record::encode(frame, time_ms, &mut buf);
        let result = self.append_record(&buf);
        self.buf = buf;
        if let Ok(Appended::Stored { .. }) = result
            && self.oldest_ms.is_none()
        {
            self.oldest_ms = Some(time_ms);
        }
        result
    }

    fn append_record(&mut self, record: &[u8]) -> Result<Appended, SpoolError> {
        let len = record.len() as u64;
        let mut dropped_oldest = 0;
        loop {
            if self.bytes() + len <= self.options.max_bytes {
                match self.write_record(record) {
                    Ok(()) => return Ok(Appended::Stored { dropped_oldest }),
                    Err(e) if e.is_disk_full() => {
                        tracing::debug!(error = %e, "spool: disk full");
                    }
                    Err(e) => return Err(e),
                }
            }
            // Full.
            if self.options.on_full == OnFull::DropNewest {
                return Ok(Appended::Refused { dropped_oldest });
            }
            match self.drop_oldest_segment()? {
                Some(frames) => dropped_oldest += frames,
                None => return Ok(Appended::Refused { dropped_oldest }),
            }
        }
    }

    /// Writes one record at the end of the newest segment (starting a new one if it is
    /// full). A failed write is cut back.
    fn write_record(&mut self, record: &[u8]) -> Result<(), SpoolError> {
        let needs_new = self.writer_broken
            || self
                .segments
                .back()
                .is_none_or(|last| last.len >= self.options.segment_bytes);
        if needs_new || self.writer.is_none() {
            self.open_writer(needs_new)?;
        }
        let (sequence, len) = match self.segments.back() {
            Some(s) => (s.sequence, s.len),
            None => return Err(SpoolError::BadFrame(record.len())),
        };
        let path = self.options.dir.join(segment_name(sequence));
        let Some(writer) = self.writer.as_mut() else {
            return Err(SpoolError::BadFrame(record.len()));
        };
        if let Err(e) = writer.write_all(record) {
            // Cut back what was written of it, so the segment ends on a record.
            if let Err(cut) = writer
                .set_len(len)
                .and_then(|()| writer.seek(SeekFrom::Start(len)).map(drop))
            {
                tracing::warn!(segment = %path.display(), error = %cut, "spool: cannot cut back a failed write");
                // The writer's position is unknown: start a new segment next time.
                self.writer = None;
                self.writer_broken = true;
            }
            return Err(SpoolError::io("writing", &path, e));
        }
        self.writer_dirty = true;
        if let Some(last) = self.segments.back_mut() {
            last.len += record.len() as u64;
            last.frames += 1;
        }
        Ok(())
    }

    /// Opens the newest segment for appending, or (`new`) starts the next one.
    fn open_writer(&mut self, new: bool) -> Result<(), SpoolError> {
        if let Some(old) = self.writer.take()
            && self.writer_dirty
        {
            self.unsynced.push(old);
            self.writer_dirty = false;
        }
        let sequence = match (self.segments.back(), new) {
            (Some(last), false) => last.sequence,
            (Some(last), true) => last.sequence + 1,
            // Past every sequence the position file may name.
            (None, _) => self.consumed.segment + 1,
        };
        let path = self.options.dir.join(segment_name(sequence));
        let mut file = OpenOptions::new()
            .create(true)
            .append(false)
            .write(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| SpoolError::io("opening", &path, e))?;
        if new || self.segments.is_empty() {
            self.writer_broken = false;
            // A leftover of the same name (cannot happen unless files were moved): empty.
            file.set_len(0)
                .map_err(|e| SpoolError::io("creating", &path, e))?;
            self.segments.push_back(Segment {
                sequence,
                len: 0,
                frames: 0,
            });
            if self.segments.len() == 1 {
                self.read = Position {
                    segment: sequence,
                    offset: 0,
                };
                self.consumed = self.read;
                self.position_dirty = true;
            }
        }
        let len = self.segments.back().map_or(0, |s| s.len);
        file.seek(SeekFrom::Start(len))
            .map_err(|e| SpoolError::io("opening", &path, e))?;
        self.writer = Some(file);
        Ok(())
    }

    /// Deletes the oldest segment to make room; returns how many unconsumed frames it held,
    /// or `None` when it cannot (it is the one written to, or frames of it are being
    /// replayed).
    fn drop_oldest_segment(&mut self) -> Result<Option<u64>, SpoolError> {
        if self.segments.len() < 2 {
            return Ok(None);
        }
        let Some(oldest) = self.segments.front() else {
            return Ok(None);
        };
        if self
            .in_flight
            .front()
            .is_some_and(|f| f.end.segment == oldest.sequence)
        {
            return Ok(None);
        }
        let (sequence, frames) = (oldest.sequence, oldest.frames);
        self.remove_oldest_segment(sequence)?;
        tracing::warn!(
            segment = sequence,
            frames,
            "spool full: oldest segment deleted (on_full = \"drop-oldest\")"
        );
        self.refresh_oldest();
        Ok(Some(frames))
    }

    /// Reads up to `max_frames` frames (and about `max_bytes`) after those already read,
    /// oldest first. They stay in the spool until [`Spool::consume`]d.
    pub fn read(&mut self, max_frames: usize, max_bytes: usize) -> Result<Vec<Bytes>, SpoolError> {
        let mut out = Vec::new();
        let mut taken_bytes = 0;
        let mut window = Vec::new();
        while out.len() < max_frames && taken_bytes < max_bytes {
            let Some(index) = self
                .segments
                .iter()
                .position(|s| s.sequence == self.read.segment)
            else {
                // The read position is before the oldest segment (never after the newest).
                match self
                    .segments
                    .iter()
                    .find(|s| s.sequence > self.read.segment)
                {
                    Some(next) => {
                        self.read = Position {
                            segment: next.sequence,
                            offset: 0,
                        };
                        continue;
                    }
                    None => break,
                }
            };
            let segment_len = self.segments[index].len;
            if self.read.offset >= segment_len {
                match self.segments.get(index + 1) {
                    Some(next) => {
                        self.read = Position {
                            segment: next.sequence,
                            offset: 0,
                        };
                        continue;
                    }
                    None => break,
                }
            }
            let path = self.options.dir.join(segment_name(self.read.segment));
            let want = (segment_len - self.read.offset).min(READ_WINDOW as u64) as usize;
            let at_end = self.read.offset + want as u64 == segment_len;
            window.resize(want, 0);
            let got = read_at(&path, &mut window, self.read.offset)?;
            window.truncate(got);
            let at_end = at_end && got == want;
            let mut at = 0;
            let mut progressed = false;
            while out.len() < max_frames && taken_bytes < max_bytes {
                match record::step(&window, at, at_end) {
                    Step::Record { time_ms, end } => {
                        let frame = Bytes::copy_from_slice(&window[at + HEADER_LEN..end]);
                        taken_bytes += frame.len();
                        out.push(frame);
                        at = end;
                        self.in_flight.push_back(InFlight {
                            end: Position {
                                segment: self.read.segment,
                                offset: self.read.offset + end as u64,
                            },
                            time_ms,
                        });
                        progressed = true;
                    }
                    Step::Corrupt { resume } => {
                        tracing::debug!(
                            segment = %path.display(),
                            offset = self.read.offset + at as u64,
                            bytes = resume - at,
                            "spool: skipping corrupt bytes"
                        );
                        at = resume;
                        progressed = true;
                    }
                    Step::Stop => break,
                }
            }
            self.read.offset += at as u64;
            if !progressed {
                if got < want || at_end {
                    // The file is shorter than recorded (or ends in the middle of a
                    // record): skip what is left of it.
                    self.read.offset = segment_len;
                } else {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Every frame read is to be read again (the connection that carried them broke).
    pub fn rewind(&mut self) {
        self.in_flight.clear();
        self.read = self.consumed;
    }

    /// The oldest `frames` frames read are consumed (acknowledged): they leave the spool.
    pub fn consume(&mut self, frames: u64) -> Result<(), SpoolError> {
        for _ in 0..frames {
            let Some(done) = self.in_flight.pop_front() else {
                break;
            };
            if let Some(segment) = self
                .segments
                .iter_mut()
                .find(|s| s.sequence == done.end.segment)
            {
                segment.frames = segment.frames.saturating_sub(1);
            }
            if self.consumed < done.end {
                self.consumed = done.end;
                self.position_dirty = true;
            }
        }
        self.drop_consumed_segments()?;
        self.refresh_oldest();
        Ok(())
    }

    /// Deletes the oldest segments with nothing left to consume (not the one written to).
    fn drop_consumed_segments(&mut self) -> Result<(), SpoolError> {
        while self.segments.len() > 1
            && let Some(oldest) = self.segments.front()
            && oldest.frames == 0
            && !self
                .in_flight
                .iter()
                .any(|f| f.end.segment == oldest.sequence)
        {
            let sequence = oldest.sequence;
            self.remove_oldest_segment(sequence)?;
        }
        Ok(())
    }

    /// Deletes the oldest segment (`sequence`, the front one) and moves the consumed and
    /// read positions, if they lagged, to the start of the next.
    fn remove_oldest_segment(&mut self, sequence: u64) -> Result<(), SpoolError> {
        remove(&self.options.dir.join(segment_name(sequence)))?;
        self.segments.pop_front();
        if let Some(next) = self.segments.front() {
            let start = Position {
                segment: next.sequence,
                offset: 0,
            };
            if self.consumed < start {
                self.consumed = start;
                self.position_dirty = true;
            }
            if self.read < start {
                self.read = start;
            }
        }
        Ok(())
    }

    fn refresh_oldest(&mut self) {
        if self.is_empty() {
            self.oldest_ms = None;
            return;
        }
        if let Some(first) = self.in_flight.front() {
            self.oldest_ms = Some(first.time_ms);
            return;
        }
        // Peek the header of the next record to read.
        let mut header = [0u8; HEADER_LEN];
        let path = self.options.dir.join(segment_name(self.read.segment));
        self.oldest_ms = match read_at(&path, &mut header, self.read.offset) {
            Ok(HEADER_LEN) if header[..4] == record::MAGIC => {
                let mut time = [0u8; 8];
                time.copy_from_slice(&header[8..16]);
                Some(u64::from_le_bytes(time))
            }
            _ => self.oldest_ms.or(Some(now_ms())),
        };
    }

    /// `fdatasync`s what was written since the last sync and saves the position.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        for file in self.unsynced.drain(..) {
            file.sync_data()
                .map_err(|e| SpoolError::io("syncing", &self.options.dir, e))?;
        }
        if self.writer_dirty
            && let Some(writer) = &self.writer
        {
            writer
                .sync_data()
                .map_err(|e| SpoolError::io("syncing", &self.options.dir, e))?;
            self.writer_dirty = false;
        }
        if self.position_dirty {
            write_position(&self.options.dir, self.consumed)?;
            self.position_dirty = false;
        }
        Ok(())
    }
}

/// Takes the directory's lock (`flock` of its `lock` file), so two spools never share it.
fn lock_dir(dir: &Path) -> Result<File, SpoolError> {
    use std::os::fd::AsRawFd;
    let path = dir.join(LOCK);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| SpoolError::io("opening", &path, e))?;
    // SAFETY: flock(2) on a descriptor `file` owns for the whole call.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(SpoolError::Locked(dir.to_path_buf()));
        }
        return Err(SpoolError::io("locking", &path, e));
    }
    Ok(file)
}

fn remove(path: &Path) -> Result<(), SpoolError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(SpoolError::io("deleting", path, e)),
    }
}

/// Reads at `offset` until `buf` is full or the file ends; returns the bytes read.
fn read_at(path: &Path, buf: &mut [u8], offset: u64) -> Result<usize, SpoolError> {
    let file = File::open(path).map_err(|e| SpoolError::io("reading", path, e))?;
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(SpoolError::io("reading", path, e)),
        }
    }
    Ok(filled)
}

/// The saved position, if the file exists and checks out.
fn read_position(path: &Path) -> Option<Position> {
    let bytes = fs::read(path).ok()?;
    let bytes: [u8; 20] = bytes.try_into().ok()?;
    let crc = u32::from_le_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
    if crc32fast::hash(&bytes[..16]) != crc {
        tracing::warn!(file = %path.display(), "spool: position file corrupt; replaying from the oldest segment");
        return None;
    }
    let mut segment = [0u8; 8];
    let mut offset = [0u8; 8];
    segment.copy_from_slice(&bytes[..8]);
    offset.copy_from_slice(&bytes[8..16]);
    Some(Position {
        segment: u64::from_le_bytes(segment),
        offset: u64::from_le_bytes(offset),
    })
}

/// Writes the position atomically: a temporary file, synced, renamed over.
fn write_position(dir: &Path, position: Position) -> Result<(), SpoolError> {
    let mut bytes = [0u8; 20];
    bytes[..8].copy_from_slice(&position.segment.to_le_bytes());
    bytes[8..16].copy_from_slice(&position.offset.to_le_bytes());
    let crc = crc32fast::hash(&bytes[..16]);
    bytes[16..].copy_from_slice(&crc.to_le_bytes());
    let tmp = dir.join(POSITION_TMP);
    let path = dir.join(POSITION);
    let mut file = File::create(&tmp).map_err(|e| SpoolError::io("writing", &tmp, e))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_data())
        .map_err(|e| SpoolError::io("writing", &tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| SpoolError::io("renaming", &tmp, e))?;
    // The rename and the segments created or deleted since reach the disk with the
    // directory.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Checks that `dir` can be created and written (a file created and removed in it): for
/// `check-config`. Returns the OS error's text.
pub fn probe_dir(dir: &Path) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let probe = dir.join(".hepfwd-probe");
    let written = File::create(&probe).and_then(|mut f| f.write_all(b"probe"));
    let removed = fs::remove_file(&probe);
    written.map_err(|e| format!("cannot write in {}: {e}", dir.display()))?;
    removed.map_err(|e| format!("cannot delete in {}: {e}", dir.display()))?;
    Ok(())
}
