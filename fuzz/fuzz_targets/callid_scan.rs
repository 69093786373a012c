//! `callid_scan`: the Call-ID scanner's block step (`CallIdScanner::feed_block`, which
//! jumps over the bytes of a skipped line) against its byte step (`feed`), the definition.
//!
//! The input is a SIP-ish payload; both scanners run over all of it, one by 8-byte blocks
//! from a start chosen by the first byte (so blocks fall at every alignment), the other
//! byte by byte. After every block their results agree.
#![no_main]

use hep_common::correlation::CallIdScanner;
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
});
