//! HEP-over-TCP stream framing on top of [`hep_common::framing::frame_len`].
//!
//! [`StreamFramer`] accumulates bytes (several frames per read, a frame split across reads)
//! and hands out whole frames; [`HepFrameCodec`] is the same for `tokio_util::codec`.

use bytes::{Bytes, BytesMut};
use hep_common::framing::{FrameError, MAX_FRAME_LEN, frame_len};
use tokio_util::codec::Decoder;

/// Accumulates a TCP byte stream and cuts it into HEPv3 frames.
#[derive(Debug)]
pub struct StreamFramer {
    buf: BytesMut,
    max: usize,
    consumed: usize,
}

impl StreamFramer {
    /// A framer that rejects frames above `max` bytes (at most 65535).
    pub fn new(max: usize) -> Self {
        StreamFramer {
            buf: BytesMut::new(),
            max: max.min(MAX_FRAME_LEN),
            consumed: 0,
        }
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next whole frame, `Ok(None)` when more bytes are needed.
    ///
    /// After an error the stream cannot be resynchronised: drop the framer (close the
    /// connection).
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        match frame_len(&self.buf, self.max)? {
            Some(n) => {
                self.consumed += n;
                Ok(Some(self.buf.split_to(n).freeze()))
            }
            None => Ok(None),
        }
    }

    /// Stream offset of the next unread byte (for error reports).
    pub fn offset(&self) -> usize {
        self.consumed
    }

    /// Bytes held that do not form a whole frame yet.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// `tokio_util` codec yielding one HEPv3 frame per item.
#[derive(Debug, Clone, Copy)]
pub struct HepFrameCodec {
    max: usize,
}

impl HepFrameCodec {
    /// A codec that rejects frames above `max` bytes (at most 65535).
    pub fn new(max: usize) -> Self {
        HepFrameCodec {
            max: max.min(MAX_FRAME_LEN),
        }
    }
}

/// Errors of [`HepFrameCodec`]: the stream was not HEP, or the socket failed.
#[derive(Debug, thiserror::Error)]
pub enum FrameCodecError {
    /// Garbage or an oversized frame: close the connection.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Decoder for HepFrameCodec {
    type Item = Bytes;
    type Error = FrameCodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameCodecError> {
        if src.is_empty() {
            return Ok(None);
        }
        match frame_len(src, self.max)? {
            Some(n) => Ok(Some(src.split_to(n).freeze())),
            None => {
                if src.len() >= 6 {
                    let len = u16::from_be_bytes([src[4], src[5]]) as usize;
                    src.reserve(len.saturating_sub(src.len()));
                }
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut v = b"HEP3".to_vec();
        let len = 6 + 6 + payload.len();
        v.extend_from_slice(&(len as u16).to_be_bytes());
        v.extend_from_slice(&[0, 0, 0, 0x0f]);
        v.extend_from_slice(&((6 + payload.len()) as u16).to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn several_frames_in_one_read_and_one_split_across_reads() {
        let (a, b, c) = (frame(b"one"), frame(b"two"), frame(b"three"));
        let mut stream = Vec::new();
        for f in [&a, &b, &c] {
            stream.extend_from_slice(f);
        }
        let mut fr = StreamFramer::new(MAX_FRAME_LEN);
        let split = a.len() + b.len() + 4;
        fr.push(&stream[..split]);
        assert_eq!(fr.next_frame().unwrap().as_deref(), Some(&a[..]));
        assert_eq!(fr.next_frame().unwrap().as_deref(), Some(&b[..]));
        assert_eq!(fr.next_frame().unwrap(), None);
        assert_eq!(fr.pending(), 4);
        fr.push(&stream[split..]);
        assert_eq!(fr.next_frame().unwrap().as_deref(), Some(&c[..]));
        assert_eq!(fr.next_frame().unwrap(), None);
        assert_eq!(fr.offset(), stream.len());
    }

    #[test]
    fn garbage_and_oversize_are_errors() {
        let mut fr = StreamFramer::new(MAX_FRAME_LEN);
        fr.push(b"GET / HTTP/1.1\r\n");
        assert!(matches!(fr.next_frame(), Err(FrameError::BadMagic { .. })));

        let mut fr = StreamFramer::new(100);
        let big = frame(&[b'x'; 200]);
        fr.push(&big[..10]);
        assert_eq!(
            fr.next_frame(),
            Err(FrameError::TooLarge {
                len: big.len(),
                max: 100
            })
        );

        let mut fr = StreamFramer::new(MAX_FRAME_LEN);
        fr.push(b"HEP3\x00\x03");
        assert_eq!(fr.next_frame(), Err(FrameError::LengthTooSmall { len: 3 }));
    }

    #[test]
    fn codec_cuts_frames() {
        let (a, b) = (frame(b"alpha"), frame(b"beta"));
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&a);
        buf.extend_from_slice(&b[..3]);
        let mut codec = HepFrameCodec::new(MAX_FRAME_LEN);
        assert_eq!(codec.decode(&mut buf).unwrap().as_deref(), Some(&a[..]));
        assert!(codec.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(&b[3..]);
        assert_eq!(codec.decode(&mut buf).unwrap().as_deref(), Some(&b[..]));
    }
}
