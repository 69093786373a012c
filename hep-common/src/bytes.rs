//! [`ByteSource`]: random access to packet bytes, the one abstraction the chunk walker and
//! the correlation scanner are written against, so the kernel (the frame, read in place
//! with direct packet access) and userspace (a byte slice) run the same code.

/// Random, bounds-checked access to a packet's bytes.
pub trait ByteSource {
    /// Number of bytes in the source.
    fn len(&self) -> usize;

    /// Whether the source holds no bytes.
    #[inline(always)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `N` bytes at `offset`, or `None` if they are not all inside the source.
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;

    /// The 8 bytes at `8 * index` as a native-endian word, or `None` if they are not all
    /// inside the source. A source that can read a word with one load does (the kernel's,
    /// with one `ldxdw`); the others assemble it from bytes.
    #[inline(always)]
    fn load_word(&self, index: usize) -> Option<u64> {
        self.load::<8>(index.checked_mul(8)?)
            .map(u64::from_ne_bytes)
    }
}

impl ByteSource for [u8] {
    #[inline(always)]
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let end = offset.checked_add(N)?;
        self.get(offset..end)?.try_into().ok()
    }
}

/// A view of part of another source: `base + offset` for `len` bytes.
///
/// Used to walk the HEP packet inside a frame without copying it.
#[derive(Clone, Copy)]
pub struct SubSource<'s, S: ?Sized> {
    inner: &'s S,
    base: usize,
    len: usize,
}

impl<'s, S: ByteSource + ?Sized> SubSource<'s, S> {
    /// The bytes `[base, base + len)` of `inner`; `None` when that range is not inside it.
    #[inline(always)]
    pub fn new(inner: &'s S, base: usize, len: usize) -> Option<Self> {
        let end = base.checked_add(len)?;
        if end > inner.len() {
            return None;
        }
        Some(SubSource { inner, base, len })
    }
}

impl<S: ByteSource + ?Sized> ByteSource for SubSource<'_, S> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.len
    }

    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let end = offset.checked_add(N)?;
        if end > self.len {
            return None;
        }
        self.inner.load::<N>(self.base + offset)
    }
}

#[inline(always)]
pub(crate) fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}
