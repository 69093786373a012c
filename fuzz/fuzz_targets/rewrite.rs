//! `rewrite`: parse, then rewrite with edits derived from the input.
//!
//! Input layout: byte 0 = number of edits (low 3 bits); then 4 bytes per edit; the rest is
//! the packet. An edit `[sel, op, a, b]` names the id of the packet's chunk `sel % count`
//! when `sel < 0x80` (so edits hit present ids), else a made-up id (vendor 0 or 3, type
//! `a:b` or `sel & 0x3f`). `op & 0x80` = delete; otherwise set, with the value taken from
//! the input at offset `a:b`, of the id's fixed width unless `op & 0x40`, else `op & 0x3f`
//! bytes long. Asserts the rewrite definition (`hep_common::rewrite` docs).
#![no_main]

use hep_common::Hep3;
use hep_common::HepError;
use hep_common::chunk::{ChunkId, MAX_CHUNKS, MAX_PACKET_LEN, fixed_width};
use hep_common::rewrite::{ChunkEdit, rewrite};
use libfuzzer_sys::fuzz_target;

fn edits_from<'a>(ctl: &[u8], packet: &Hep3<'_>, data: &'a [u8]) -> Vec<ChunkEdit<'a>> {
    let ids: Vec<ChunkId> = packet.chunks().map(|c| c.id()).collect();
    ctl.chunks_exact(4)
        .map(|e| {
            let (sel, op, a, b) = (e[0], e[1], e[2], e[3]);
            let id = if sel < 0x80 && !ids.is_empty() {
                ids[sel as usize % ids.len()]
            } else {
                let vendor = if sel & 0x40 != 0 { 3 } else { 0 };
                let kind = if sel & 0x20 != 0 {
                    u16::from_be_bytes([a, b])
                } else {
                    u16::from(sel & 0x1f)
                };
                ChunkId { vendor, kind }
            };
            if op & 0x80 != 0 {
                return ChunkEdit::Delete { id };
            }
            let len = match fixed_width(id.vendor, id.kind) {
                Some(w) if op & 0x40 == 0 => w,
                _ => usize::from(op & 0x3f),
            };
            let start = usize::from(u16::from_be_bytes([a, b])) % data.len().max(1);
            let value = data
                .get(start..start + len)
                .unwrap_or(&data[..len.min(data.len())]);
            ChunkEdit::Set { id, value }
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let ctl_len = 4 * usize::from(n & 7);
    if rest.len() < ctl_len {
        return;
    }
    let (ctl, pkt) = rest.split_at(ctl_len);
    let Ok(p) = Hep3::parse(pkt) else {
        return;
    };
    let edits = edits_from(ctl, &p, data);
    let mut out = vec![0u8; MAX_PACKET_LEN];
    match rewrite(&p, &edits, &mut out) {
        Ok(len) => {
            let o = Hep3::parse(&out[..len]).expect("rewrite output parses");
            let sum: usize = 6 + o.chunks().map(|c| c.header.len as usize).sum::<usize>();
            assert_eq!(sum, len);
            for e in &edits {
                let fate = edits.iter().rev().find(|l| l.id() == e.id()).expect("e");
                let count = o.chunks().filter(|c| c.id() == e.id()).count();
                match fate {
                    ChunkEdit::Delete { .. } => assert_eq!(count, 0, "deleted id present"),
                    ChunkEdit::Set { id, value } => {
                        assert_eq!(count, 1, "set id not exactly once");
                        assert_eq!(o.get(*id), Some(*value));
                    }
                }
            }
            // Chunks no edit names are copied byte for byte, in order.
            let named = |id: ChunkId| edits.iter().any(|e| e.id() == id);
            let keep_in: Vec<&[u8]> = p
                .chunks()
                .filter(|c| !named(c.id()))
                .map(|c| &pkt[c.header.offset..c.header.end()])
                .collect();
            let keep_out: Vec<&[u8]> = o
                .chunks()
                .filter(|c| !named(c.id()))
                .map(|c| &out[c.header.offset..c.header.end()])
                .collect();
            assert_eq!(keep_in, keep_out);
            // Idempotent.
            let mut again = vec![0u8; MAX_PACKET_LEN];
            assert_eq!(rewrite(&o, &edits, &mut again), Ok(len));
            assert_eq!(&again[..len], &out[..len]);
        }
        Err(HepError::BadChunkWidth { .. }) => {
            assert!(
                edits
                    .iter()
                    .any(|e| matches!(e, ChunkEdit::Set { id, value }
                if fixed_width(id.vendor, id.kind).is_some_and(|w| w != value.len())))
            );
        }
        Err(HepError::TooManyChunks { max, .. }) => assert_eq!(max, MAX_CHUNKS),
        Err(HepError::TooLarge { len }) => assert!(len > MAX_PACKET_LEN),
        Err(e) => panic!("unexpected rewrite error {e:?}"),
    }
    // No edits: the identity.
    let mut same = vec![0u8; pkt.len()];
    assert_eq!(rewrite(&p, &[], &mut same), Ok(pkt.len()));
    assert_eq!(&same[..], pkt);
});
