//! Chunk rewriting: set (replace or insert) and delete chunks by id, re-framing the packet.
//!
//! Semantics, for a list of [`ChunkEdit`]s applied to a packet:
//! - For each chunk id, the **last** edit naming it decides its fate.
//! - `Set`: the first occurrence of the id is replaced in place (same position, new value);
//!   further occurrences are removed. If the id is absent, the chunk is inserted just before
//!   the first payload chunk (0x000f/0x0010), or at the end when there is none, so the
//!   payload stays last.
//! - `Delete`: every occurrence is removed.
//! - Every other chunk, known or not, vendor or generic, is copied byte for byte, in order.
//! - The total length is recomputed. Fixed-width generic types must be set with their width.
//! - An output the walker would reject is refused instead of written: more than
//!   [`chunk::MAX_CHUNKS`] chunks ([`HepError::TooManyChunks`]) or more than 65535 bytes
//!   ([`HepError::TooLarge`]).

use crate::chunk::{self, ChunkId};
use crate::error::HepError;
use crate::v3::{ChunkWriter, Hep3};

/// One edit of a rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkEdit<'a> {
    /// Replace (or insert) the chunk with this value.
    Set {
        /// The chunk to set.
        id: ChunkId,
        /// Its new value.
        value: &'a [u8],
    },
    /// Remove every chunk with this id.
    Delete {
        /// The chunk to delete.
        id: ChunkId,
    },
}

impl ChunkEdit<'_> {
    /// The chunk id the edit names.
    pub const fn id(&self) -> ChunkId {
        match self {
            ChunkEdit::Set { id, .. } | ChunkEdit::Delete { id } => *id,
        }
    }
}

fn is_payload(id: ChunkId) -> bool {
    id.vendor == chunk::VENDOR_GENERIC
        && (id.kind == chunk::PAYLOAD || id.kind == chunk::COMPRESSED_PAYLOAD)
}

/// The edit that decides the fate of `id`: the last one naming it.
fn final_edit<'e, 'a>(edits: &'e [ChunkEdit<'a>], id: ChunkId) -> Option<&'e ChunkEdit<'a>> {
    edits.iter().rev().find(|e| e.id() == id)
}

/// Applies `edits` to `packet`, writing the new packet into `out`; returns its length.
pub fn rewrite(
    packet: &Hep3<'_>,
    edits: &[ChunkEdit<'_>],
    out: &mut [u8],
) -> Result<usize, HepError> {
    for e in edits {
        if let ChunkEdit::Set { id, value } = e
            && let Some(expected) = chunk::fixed_width(id.vendor, id.kind)
            && expected != value.len()
        {
            return Err(HepError::BadChunkWidth {
                offset: 0,
                kind: id.kind,
                len: value.len(),
                expected,
            });
        }
    }
    let mut w = ChunkWriter::new(out)?;
    let mut inserted = false;
    for (i, c) in packet.chunks().enumerate() {
        let id = c.id();
        if !inserted && is_payload(id) {
            insert_absent(packet, edits, &mut w)?;
            inserted = true;
        }
        match final_edit(edits, id) {
            None => w.push_chunk(&c)?,
            Some(ChunkEdit::Delete { .. }) => {}
            Some(ChunkEdit::Set { value, .. }) => {
                let first = !packet.chunks().take(i).any(|p| p.id() == id);
                if first {
                    w.push(id, value)?;
                }
            }
        }
    }
    if !inserted {
        insert_absent(packet, edits, &mut w)?;
    }
    w.finish()
}

/// Writes the `Set` edits whose id the packet does not carry, in edit order, once per id.
fn insert_absent(
    packet: &Hep3<'_>,
    edits: &[ChunkEdit<'_>],
    w: &mut ChunkWriter<'_>,
) -> Result<(), HepError> {
    for (i, e) in edits.iter().enumerate() {
        let ChunkEdit::Set { id, value } = e else {
            continue;
        };
        let decisive = !edits[i + 1..].iter().any(|l| l.id() == *id);
        if decisive && packet.get(*id).is_none() {
            w.push(*id, value)?;
        }
    }
    Ok(())
}
