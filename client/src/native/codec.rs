//! Primitive encoding of the native protocol: big-endian integers, `u16`-length UTF-8
//! strings, `u32`-length byte blobs and `u32`-counted arrays. Every length is checked against
//! the bytes actually left before anything is allocated or sliced.

use bytes::{Buf, BufMut, Bytes};

use super::error::DecodeError;

/// Most items any array in a message may have. Decoded items are at most about a hundred bytes,
/// so a frame's arrays stay within a few MiB of memory whatever the frame says.
pub const ARRAY_ITEMS_MAX: usize = 65_536;

/// Reads fields from a frame body; `Bytes` so that blobs are zero-copy slices of the frame.
#[derive(Debug)]
pub struct Reader {
    buf: Bytes,
}

impl Reader {
    pub fn new(buf: Bytes) -> Reader {
        Reader { buf }
    }

    fn need(&self, n: usize, what: &'static str) -> Result<(), DecodeError> {
        if self.buf.remaining() < n {
            return Err(DecodeError::Truncated { field: what });
        }
        Ok(())
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        self.need(1, what)?;
        Ok(self.buf.get_u8())
    }

    pub fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        self.need(2, what)?;
        Ok(self.buf.get_u16())
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        self.need(4, what)?;
        Ok(self.buf.get_u32())
    }

    pub fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        self.need(8, what)?;
        Ok(self.buf.get_u64())
    }

    pub fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        self.need(8, what)?;
        Ok(self.buf.get_i64())
    }

    pub fn bool(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Invalid {
                field: what,
                reason: "boolean must be 0 or 1",
            }),
        }
    }

    pub fn string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let len = self.u16(what)? as usize;
        self.need(len, what)?;
        let raw = self.buf.split_to(len);
        String::from_utf8(raw.to_vec()).map_err(|_| DecodeError::Invalid {
            field: what,
            reason: "not UTF-8",
        })
    }

    pub fn bytes(&mut self, what: &'static str) -> Result<Bytes, DecodeError> {
        let len = self.u32(what)? as usize;
        self.need(len, what)?;
        Ok(self.buf.split_to(len))
    }

    /// An array count, bounded by the bytes left (each element takes at least `min_element`
    /// bytes) and by [`ARRAY_ITEMS_MAX`], so a lying count cannot make the decoder reserve
    /// memory, and many tiny elements (an empty string is 2 bytes on the wire but 24 in memory)
    /// cannot multiply a frame's size in memory.
    pub fn count(&mut self, what: &'static str, min_element: usize) -> Result<usize, DecodeError> {
        let n = self.u32(what)? as usize;
        if n > ARRAY_ITEMS_MAX {
            return Err(DecodeError::Invalid {
                field: what,
                reason: "more items than the protocol allows (65,536)",
            });
        }
        if n.saturating_mul(min_element.max(1)) > self.buf.remaining() {
            return Err(DecodeError::Truncated { field: what });
        }
        Ok(n)
    }

    /// Fails if bytes are left over: a body must be exactly its fields.
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.buf.has_remaining() {
            return Err(DecodeError::TrailingBytes {
                n: self.buf.remaining(),
            });
        }
        Ok(())
    }
}

pub fn put_string(buf: &mut impl BufMut, s: &str) {
    // Strings longer than u16::MAX are cut at a character boundary rather than corrupting the
    // frame; names are validated far below that.
    let mut end = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    buf.put_u16(end as u16);
    buf.put_slice(&s.as_bytes()[..end]);
}

pub fn put_bytes(buf: &mut impl BufMut, b: &[u8]) {
    buf.put_u32(b.len() as u32);
    buf.put_slice(b);
}
