//! Framing of regular protocol messages (one tag byte, an Int32 length that
//! counts itself, the body).
//!
//! The proxy never decodes a message just to forward it: it peeks at the
//! five-byte header, decides whether the message must be inspected, and cuts
//! whole messages off the read buffer as `Bytes` without copying.

use thiserror::Error;

/// Size of a regular message header: tag byte plus Int32 length.
pub const HEADER_LEN: usize = 5;

/// The header of one regular message, read without consuming it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Message type byte, e.g. `b'Q'` for Query.
    pub tag: u8,
    /// Whole size on the wire: tag byte + length field + body.
    pub total_len: usize,
}

impl Header {
    /// Size of the body alone (what follows the length field).
    pub fn body_len(&self) -> usize {
        self.total_len - HEADER_LEN
    }
}

/// A message header that cannot be valid.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    /// The length field was below 4, which PostgreSQL never sends.
    #[error("invalid message length {len} for message type '{}'", char::from(*tag))]
    LengthTooSmall { tag: u8, len: i32 },
    /// The message is larger than the configured `max_message_size`.
    #[error("message of {len} bytes (type '{}') exceeds max_message_size ({max} bytes)", char::from(*tag))]
    TooLarge { tag: u8, len: usize, max: usize },
}

/// Reads the header at the start of `buf`, if five bytes are there.
///
/// `max` bounds `total_len`; a larger message is an error rather than a
/// reason to grow the buffer without limit.
pub fn peek_header(buf: &[u8], max: usize) -> Result<Option<Header>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let tag = buf[0];
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(FrameError::LengthTooSmall { tag, len });
    }
    let total_len = len as usize + 1;
    if total_len > max {
        return Err(FrameError::TooLarge {
            tag,
            len: total_len,
            max,
        });
    }
    Ok(Some(Header { tag, total_len }))
}

/// Reads a NUL-terminated string at the start of `buf`; returns it and the
/// rest after the NUL. `memchr` looks at 16 or 32 bytes per step: statement
/// texts are found on every request, and a byte loop cost about 580
/// instructions per pgbench select-only transaction.
pub fn read_cstr(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    // The unnamed statement and portal: an empty name, without the cost
    // of a memchr call.
    if let Some((&0, rest)) = buf.split_first() {
        return Some((&[], rest));
    }
    let end = memchr::memchr(0, buf)?;
    Some((&buf[..end], &buf[end + 1..]))
}

/// Reads a big-endian Int32 at the start of `buf`.
pub fn read_i32(buf: &[u8]) -> Option<(i32, &[u8])> {
    if buf.len() < 4 {
        return None;
    }
    let v = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    Some((v, &buf[4..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_five_bytes() {
        assert_eq!(peek_header(b"Q\0\0\0", 100), Ok(None));
    }

    #[test]
    fn reads_tag_and_length() {
        let h = peek_header(b"Q\0\0\0\x09SELE", 100).unwrap().unwrap();
        assert_eq!(h.tag, b'Q');
        assert_eq!(h.total_len, 10);
        assert_eq!(h.body_len(), 5);
    }

    #[test]
    fn rejects_short_length() {
        assert_eq!(
            peek_header(b"Q\0\0\0\x03", 100),
            Err(FrameError::LengthTooSmall { tag: b'Q', len: 3 })
        );
        assert!(peek_header(b"Q\xff\xff\xff\xff", 100).is_err());
    }

    #[test]
    fn rejects_oversized() {
        let err = peek_header(b"D\0\x01\0\0", 1000).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len: 65537, .. }));
    }

    #[test]
    fn cstr_and_int() {
        assert_eq!(read_cstr(b"ab\0c"), Some((&b"ab"[..], &b"c"[..])));
        assert_eq!(read_cstr(b"ab"), None);
        assert_eq!(read_cstr(b"\0c"), Some((&b""[..], &b"c"[..])));
        assert_eq!(read_cstr(b""), None);
        assert_eq!(read_i32(b"\0\0\0\x07x"), Some((7, &b"x"[..])));
        assert_eq!(read_i32(b"\0\0"), None);
    }
}
