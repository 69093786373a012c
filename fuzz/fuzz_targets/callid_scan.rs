//! `callid_scan`: the Call-ID scanner's block step (`CallIdScanner::feed_block`, which
//! jumps over the bytes of a skipped line) against its byte step (`feed`), the definition;
//! and the kernel's word-wise scan (`scan_word_step`) against `find_call_id`.
//!
//! The input is a SIP-ish payload; both scanners run over all of it, one by 8-byte blocks
//! from a start chosen by the first byte (so blocks fall at every alignment), the other
//! byte by byte. After every block their results agree. Then the payload, placed after
//! `first % 8` lead bytes and with a window cut by the second byte, is scanned word-wise:
//! the same result as `find_call_id`.
#![no_main]

use hep_common::correlation::{CallIdScanner, find_call_id, scan_word_step};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, payload)) = data.split_first() else {
        return;
    };
    // Fed byte by byte before the blocks start.
    let lead = usize::from(first % 8).min(payload.len());
    let mut by_block = CallIdScanner::new();
    let mut by_byte = CallIdScanner::new();
    for (i, b) in payload[..lead].iter().enumerate() {
        by_block.feed(*b, i);
        by_byte.feed(*b, i);
    }
    let mut pos = lead;
    while pos + 8 <= payload.len() {
        let mut block = [0u8; 8];
        block.copy_from_slice(&payload[pos..pos + 8]);
        by_block.feed_block(block, pos);
        for (i, b) in block.iter().enumerate() {
            by_byte.feed(*b, pos + i);
        }
        assert_eq!(by_block.result(), by_byte.result(), "after the block at {pos}");
        assert_eq!(by_block.is_done(), by_byte.is_done(), "after the block at {pos}");
        pos += 8;
    }
    // The word-wise scan over the payload inside a packet (lead bytes before it).
    let window = match payload.first() {
        Some(&cut) if cut & 1 == 1 => usize::from(cut) % (payload.len() + 1),
        _ => payload.len(),
    };
    let mut packet = vec![0u8; lead];
    packet.extend_from_slice(payload);
    let mut words = CallIdScanner::new();
    let mut at = 0;
    let limit = window.min(hep_common::correlation::CALLID_SCAN_LIMIT);
    while scan_word_step(&packet[..], &mut words, lead, &mut at, limit) {}
    assert_eq!(words.result(), find_call_id(&packet[..], lead, window), "word-wise scan");
});
