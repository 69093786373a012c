//! The record format of spool segments, and its reader: pure functions over bytes, so they
//! can be fuzzed (`fuzz/fuzz_targets/spool_record.rs`).
//!
//! A record is a 20-byte header then the payload (one whole HEPv3 frame):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `HSPL` (resynchronisation point) |
//! | 4 | 4 | payload length, little endian (1..=[`MAX_PAYLOAD`]) |
//! | 8 | 8 | when the frame was spooled, milliseconds since the Unix epoch, little endian |
//! | 16 | 4 | CRC-32 (IEEE) of bytes 4..16 and the payload, little endian |
//!
//! A reader that meets anything else at a record boundary (a torn write, flipped bytes)
//! looks for the next magic whose record checks out and goes on from there.

/// The first bytes of every record.
pub const MAGIC: [u8; 4] = *b"HSPL";
/// Bytes of a record header.
pub const HEADER_LEN: usize = 20;
/// The largest payload: one HEPv3 frame of the largest size.
pub const MAX_PAYLOAD: usize = hep_common::framing::MAX_FRAME_LEN;
/// The largest record.
pub const MAX_RECORD: usize = HEADER_LEN + MAX_PAYLOAD;

/// The bytes of one record holding `payload`, spooled at `time_ms`.
pub fn encode(payload: &[u8], time_ms: u64, out: &mut Vec<u8>) {
    let len = payload.len() as u32;
    out.extend_from_slice(&MAGIC);
    let start = out.len();
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&time_ms.to_le_bytes());
    let crc = checksum(&out[start..start + 12], payload);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
}

fn checksum(length_and_time: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(length_and_time);
    hasher.update(payload);
    hasher.finalize()
}

/// What the bytes at a record boundary hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A whole record that checks out: its payload is `buf[HEADER_LEN..total]`.
    Record {
        /// The payload's length.
        payload_len: usize,
        /// When it was spooled (ms since the epoch).
        time_ms: u64,
        /// The record's length, header included.
        total: usize,
    },
    /// A plausible start of a record whose end is beyond the buffer.
    Short,
    /// Not a record.
    Invalid,
}

/// Reads the record at the start of `buf`.
pub fn parse(buf: &[u8]) -> Parsed {
    let Some(header) = buf.get(..HEADER_LEN) else {
        // A prefix of the magic may still become a record.
        let n = buf.len().min(MAGIC.len());
        return if buf[..n] == MAGIC[..n] {
            Parsed::Short
        } else {
            Parsed::Invalid
        };
    };
    if header[..4] != MAGIC {
        return Parsed::Invalid;
    }
    let word = |at: usize| [header[at], header[at + 1], header[at + 2], header[at + 3]];
    let payload_len = u32::from_le_bytes(word(4)) as usize;
    if payload_len == 0 || payload_len > MAX_PAYLOAD {
        return Parsed::Invalid;
    }
    let time_ms = u64::from_le_bytes([
        header[8], header[9], header[10], header[11], header[12], header[13], header[14],
        header[15],
    ]);
    let crc = u32::from_le_bytes(word(16));
    let total = HEADER_LEN + payload_len;
    let Some(payload) = buf.get(HEADER_LEN..total) else {
        return Parsed::Short;
    };
    if checksum(&header[4..16], payload) != crc {
        return Parsed::Invalid;
    }
    Parsed::Record {
        payload_len,
        time_ms,
        total,
    }
}

/// Where the next magic after the first byte of `buf` starts, if any.
pub fn next_magic(buf: &[u8]) -> Option<usize> {
    buf.get(1..)?
        .windows(MAGIC.len())
        .position(|w| w == MAGIC)
        .map(|i| i + 1)
}

/// One step of reading `buf` (a whole segment, or a window of one whose end is the
/// segment's end when `at_end`) from offset `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A record at `at`: payload `at + HEADER_LEN .. end`.
    Record {
        /// When it was spooled.
        time_ms: u64,
        /// Just past its last byte.
        end: usize,
    },
    /// Corrupt bytes from `at` to `resume` (the next record, or the end of the buffer).
    Corrupt {
        /// Where reading goes on.
        resume: usize,
    },
    /// Nothing more can be read from this buffer: it ends (or, not `at_end`, the rest is
    /// the start of a record that continues past it).
    Stop,
}

/// Reads one record or skips one corrupt run of `buf` from `at`. With `at_end` false the
/// buffer is a window and bytes past it may complete a record: a run is only declared
/// corrupt up to a point that cannot be the start of a record cut by the window.
pub fn step(buf: &[u8], at: usize, at_end: bool) -> Step {
    let Some(rest) = buf.get(at..).filter(|r| !r.is_empty()) else {
        return Step::Stop;
    };
    match parse(rest) {
        Parsed::Record { time_ms, total, .. } => Step::Record {
            time_ms,
            end: at + total,
        },
        Parsed::Short if !at_end => Step::Stop,
        Parsed::Short | Parsed::Invalid => {
            // Resynchronise: the first later magic that starts a record (or that may, cut
            // by the window).
            let mut from = 0;
            while let Some(found) = next_magic(&rest[from..]) {
                let candidate = from + found;
                match parse(&rest[candidate..]) {
                    Parsed::Record { .. } => {
                        return Step::Corrupt {
                            resume: at + candidate,
                        };
                    }
                    Parsed::Short if !at_end => {
                        return Step::Corrupt {
                            resume: at + candidate,
                        };
                    }
                    Parsed::Short | Parsed::Invalid => from = candidate,
                }
            }
            if at_end {
                Step::Corrupt { resume: buf.len() }
            } else {
                // The last few bytes may be the start of a magic cut by the window.
                let keep = (MAGIC.len() - 1).min(rest.len());
                let resume = at + rest.len() - keep;
                if resume == at {
                    Step::Stop
                } else {
                    Step::Corrupt { resume }
                }
            }
        }
    }
}

/// What a whole segment holds, read from `start`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Records that check out.
    pub records: u64,
    /// Runs of corrupt bytes between (or after) them.
    pub corrupt_runs: u64,
    /// Just past the last record that checks out (`start` if none).
    pub valid_end: usize,
    /// When the first record was spooled.
    pub first_time_ms: Option<u64>,
}

/// Reads a whole segment from `start`.
pub fn summarise(buf: &[u8], start: usize) -> Summary {
    let mut summary = Summary {
        valid_end: start.min(buf.len()),
        ..Summary::default()
    };
    let mut at = start;
    loop {
        match step(buf, at, true) {
            Step::Record { time_ms, end } => {
                summary.records += 1;
                summary.valid_end = end;
                summary.first_time_ms.get_or_insert(time_ms);
                at = end;
            }
            Step::Corrupt { resume } => {
                summary.corrupt_runs += 1;
                at = resume;
            }
            Step::Stop => return summary,
        }
    }
}
