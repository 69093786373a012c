//! Typed errors of the codec. Every decoder entry point returns one of these; none panics.

/// Why a buffer is not valid HEP, or why an encode could not be done.
///
/// Offsets are byte offsets from the start of the HEP packet (or TCP stream buffer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HepError {
    /// Fewer bytes than the smallest valid packet of the detected version.
    #[error("truncated: need {needed} bytes, have {have}")]
    Truncated {
        /// Bytes the structure needs.
        needed: usize,
        /// Bytes available.
        have: usize,
    },
    /// Not HEPv3 (`HEP3`) and not a well-formed HEPv1/v2 header.
    #[error("not HEP: unknown magic or version")]
    UnknownVersion,
    /// HEPv3 total length field disagrees with the datagram or frame length.
    #[error("HEPv3 length field says {declared} bytes, packet has {actual}")]
    LengthMismatch {
        /// The value of the length field.
        declared: usize,
        /// The bytes actually present.
        actual: usize,
    },
    /// A chunk header does not fit in what is left of the packet.
    #[error("truncated chunk header at offset {offset}")]
    TruncatedChunkHeader {
        /// Offset of the chunk.
        offset: usize,
    },
    /// A chunk length below 6 (the header alone).
    #[error("chunk length {len} < 6 at offset {offset}")]
    ChunkTooShort {
        /// Offset of the chunk.
        offset: usize,
        /// Its length field.
        len: u16,
    },
    /// A chunk extends past the end of the packet.
    #[error("chunk at offset {offset} with length {len} runs past the end ({end})")]
    ChunkPastEnd {
        /// Offset of the chunk.
        offset: usize,
        /// Its length field.
        len: u16,
        /// End of the packet.
        end: usize,
    },
    /// More chunks than [`crate::chunk::MAX_CHUNKS`].
    #[error("more than {max} chunks (offset {offset})")]
    TooManyChunks {
        /// Offset where the limit was hit.
        offset: usize,
        /// The limit.
        max: usize,
    },
    /// A generic chunk of a fixed-width type (uint8/16/32/64, inet4/inet6) has the wrong size.
    #[error("chunk 0x{kind:04x} at offset {offset} has {len} value bytes, expected {expected}")]
    BadChunkWidth {
        /// Offset of the chunk.
        offset: usize,
        /// Chunk type.
        kind: u16,
        /// Value length found.
        len: usize,
        /// Value length required by the type.
        expected: usize,
    },
    /// HEPv1/v2 header length byte or address family is inconsistent.
    #[error("HEPv{version} header: bad length {hdr_len} for family {family}")]
    BadLegacyHeader {
        /// 1 or 2.
        version: u8,
        /// The `hp_l` byte.
        hdr_len: u8,
        /// The `hp_f` byte.
        family: u8,
    },
    /// A required chunk is missing (for conversion or v2 output).
    #[error("required chunk 0x{kind:04x} is missing")]
    MissingChunk {
        /// The missing generic chunk type.
        kind: u16,
    },
    /// Source and destination addresses are of different families.
    #[error("source and destination addresses are of different IP families")]
    MixedFamilies,
    /// The encoded packet would exceed 65535 bytes or a chunk value 65529 bytes.
    #[error("encoded packet too large ({len} bytes)")]
    TooLarge {
        /// The size that was needed.
        len: usize,
    },
    /// The output buffer is smaller than the encoded packet.
    #[error("output buffer too small: need {needed}, have {have}")]
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        have: usize,
    },
}

impl HepError {
    /// A short stable name for counters and logs (`parse_errors{kind="..."}`).
    pub const fn kind(&self) -> &'static str {
        match self {
            HepError::Truncated { .. } => "truncated",
            HepError::UnknownVersion => "unknown_version",
            HepError::LengthMismatch { .. } => "length_mismatch",
            HepError::TruncatedChunkHeader { .. } => "truncated_chunk_header",
            HepError::ChunkTooShort { .. } => "chunk_too_short",
            HepError::ChunkPastEnd { .. } => "chunk_past_end",
            HepError::TooManyChunks { .. } => "too_many_chunks",
            HepError::BadChunkWidth { .. } => "bad_chunk_width",
            HepError::BadLegacyHeader { .. } => "bad_legacy_header",
            HepError::MissingChunk { .. } => "missing_chunk",
            HepError::MixedFamilies => "mixed_families",
            HepError::TooLarge { .. } => "too_large",
            HepError::BufferTooSmall { .. } => "buffer_too_small",
        }
    }

    /// The byte offset the error refers to, where there is one.
    pub const fn offset(&self) -> usize {
        match *self {
            HepError::TruncatedChunkHeader { offset }
            | HepError::ChunkTooShort { offset, .. }
            | HepError::ChunkPastEnd { offset, .. }
            | HepError::TooManyChunks { offset, .. }
            | HepError::BadChunkWidth { offset, .. } => offset,
            HepError::LengthMismatch { .. } => 4,
            HepError::BadLegacyHeader { .. } => 1,
            HepError::Truncated { have, .. } => have,
            _ => 0,
        }
    }
}
