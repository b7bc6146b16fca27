//! Framing: a `u32` big-endian length, then the frame. `check` finds whether a whole frame is
//! buffered without allocating; an incomplete frame is `Ok(None)`, not an error, and the size
//! limit is checked from the length prefix alone, before anything is allocated for the frame.
//!
//! ```text
//! request frame:  len u32 | api_key u16 | version u16 | correlation_id u32 | body
//! server frame:   len u32 | kind u8 (0 response, 1 push) | correlation_id u32 | body
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::error::DecodeError;

pub const LENGTH_BYTES: usize = 4;
pub const REQUEST_HEADER_BYTES: usize = 8;
pub const SERVER_HEADER_BYTES: usize = 5;
/// Default largest frame, both ways.
pub const FRAME_BYTES_MAX_DEFAULT: usize = 8 << 20;

/// Returns the total size (prefix included) of the frame at the start of `buf` once all of it
/// is there, `None` while it is incomplete.
pub fn check(
    buf: &[u8],
    frame_bytes_max: usize,
    header_bytes: usize,
) -> Result<Option<usize>, DecodeError> {
    if buf.len() < LENGTH_BYTES {
        return Ok(None);
    }
    let len = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
    if len > frame_bytes_max {
        return Err(DecodeError::FrameTooLarge {
            len,
            max: frame_bytes_max,
        });
    }
    if len < header_bytes {
        return Err(DecodeError::FrameTooShort { len });
    }
    if buf.len() < LENGTH_BYTES + len {
        return Ok(None);
    }
    Ok(Some(LENGTH_BYTES + len))
}

/// A request frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    pub api_key: u16,
    pub version: u16,
    pub correlation_id: u32,
}

/// What kind of frame the server sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerFrameKind {
    /// The answer to the request with this correlation id.
    Response,
    /// Data for the subscription opened by the Subscribe request with this correlation id.
    Push,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerHeader {
    pub kind: ServerFrameKind,
    pub correlation_id: u32,
}

/// Splits a whole request frame (as `check` measured it) into header and body.
pub fn split_request(mut frame: Bytes) -> (RequestHeader, Bytes) {
    frame.advance(LENGTH_BYTES);
    let header = RequestHeader {
        api_key: frame.get_u16(),
        version: frame.get_u16(),
        correlation_id: frame.get_u32(),
    };
    (header, frame)
}

/// Splits a whole server frame into header and body.
pub fn split_server(mut frame: Bytes) -> Result<(ServerHeader, Bytes), DecodeError> {
    frame.advance(LENGTH_BYTES);
    let kind = match frame.get_u8() {
        0 => ServerFrameKind::Response,
        1 => ServerFrameKind::Push,
        _ => {
            return Err(DecodeError::Invalid {
                field: "frame kind",
                reason: "must be 0 or 1",
            })
        }
    };
    let correlation_id = frame.get_u32();
    Ok((
        ServerHeader {
            kind,
            correlation_id,
        },
        frame,
    ))
}

/// Starts a frame in `buf`, returning where its length goes; `end_frame` fills it in.
pub fn begin_frame(buf: &mut BytesMut) -> usize {
    let at = buf.len();
    buf.put_u32(0);
    at
}

pub fn end_frame(buf: &mut BytesMut, at: usize) {
    let len = (buf.len() - at - LENGTH_BYTES) as u32;
    buf[at..at + LENGTH_BYTES].copy_from_slice(&len.to_be_bytes());
}

pub fn put_request_header(buf: &mut BytesMut, header: RequestHeader) {
    buf.put_u16(header.api_key);
    buf.put_u16(header.version);
    buf.put_u32(header.correlation_id);
}

pub fn put_server_header(buf: &mut BytesMut, header: ServerHeader) {
    buf.put_u8(match header.kind {
        ServerFrameKind::Response => 0,
        ServerFrameKind::Push => 1,
    });
    buf.put_u32(header.correlation_id);
}
