//! `tcp_framer`: the stream framing loop over the input, split at arbitrary points.
//!
//! Input layout: byte 0 = number of split points (low 4 bits) and whether to use a small
//! maximum (bit 4); 2 bytes per split point; the rest is the stream. The stream is fed in
//! those pieces through an accumulate-and-`frame_len` loop, and must give exactly the
//! frames (and the same kind of error at the same place) as framing it in one piece.
#![no_main]

use hep_common::Hep3;
use hep_common::framing::{FrameError, MAX_FRAME_LEN, frame_len};
use libfuzzer_sys::fuzz_target;

/// Frames cut from the stream and the error that closed it, if any.
fn reframe(pieces: &[&[u8]], max: usize) -> (Vec<Vec<u8>>, Option<FrameError>, usize) {
    let mut acc = Vec::new();
    let mut frames = Vec::new();
    let mut consumed = 0;
    for piece in pieces {
        acc.extend_from_slice(piece);
        loop {
            match frame_len(&acc, max) {
                Ok(Some(n)) => {
                    assert!((6..=acc.len()).contains(&n) && n <= max);
                    assert_eq!(&acc[..4], b"HEP3");
                    assert_eq!(usize::from(u16::from_be_bytes([acc[4], acc[5]])), n);
                    consumed += n;
                    frames.push(acc.drain(..n).collect());
                }
                Ok(None) => break,
                Err(e) => return (frames, Some(e), consumed),
            }
        }
    }
    (frames, None, consumed)
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let n_cuts = usize::from(ctl & 0x0f);
    let max = if ctl & 0x10 != 0 { 512 } else { MAX_FRAME_LEN };
    if rest.len() < 2 * n_cuts {
        return;
    }
    let (cuts, stream) = rest.split_at(2 * n_cuts);
    let mut points: Vec<usize> = cuts
        .chunks_exact(2)
        .map(|c| usize::from(u16::from_be_bytes([c[0], c[1]])) % (stream.len() + 1))
        .collect();
    points.push(0);
    points.push(stream.len());
    points.sort_unstable();
    let pieces: Vec<&[u8]> = points.windows(2).map(|w| &stream[w[0]..w[1]]).collect();

    let (frames, err, consumed) = reframe(&pieces, max);
    let (whole, whole_err, whole_consumed) = reframe(&[stream], max);
    assert_eq!(
        frames, whole,
        "split framing differs from one-piece framing"
    );
    assert_eq!(consumed, whole_consumed);
    assert_eq!(
        err.map(|e| std::mem::discriminant(&e)),
        whole_err.map(|e| std::mem::discriminant(&e))
    );
    // The frames are the stream's prefix, in order.
    assert_eq!(frames.concat(), stream[..consumed]);
    // Byte-at-a-time feeding agrees too (bounded, to keep executions fast).
    if stream.len() <= 4096 {
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        let (one, _, _) = reframe(&bytes, max);
        assert_eq!(one, frames);
    }
    for f in &frames {
        let _ = Hep3::parse(f);
    }
});
