//! Builders for the few messages pgsplit writes itself, and a view of the
//! fields of an ErrorResponse/NoticeResponse.
//!
//! These are off the hot path (login, errors), so they build into a fresh
//! `BytesMut`; forwarded traffic never passes through here.

use bytes::{BufMut, Bytes, BytesMut};
use std::borrow::Cow;

use super::frame::read_cstr;

/// Appends a message with `tag` whose body `body` writes; fills in the length.
fn put_message(buf: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(tag);
    let at = buf.len();
    buf.put_i32(0);
    body(buf);
    let len = (buf.len() - at) as i32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(buf: &mut BytesMut, s: &[u8]) {
    buf.put_slice(s);
    buf.put_u8(0);
}

/// Severity of an error pgsplit reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The statement failed; the session continues.
    Error,
    /// The session ends after this message.
    Fatal,
}

impl Severity {
    fn as_bytes(self) -> &'static [u8] {
        match self {
            Severity::Error => b"ERROR",
            Severity::Fatal => b"FATAL",
        }
    }
}

/// An ErrorResponse pgsplit sends on its own behalf. The message always
/// starts with "pgsplit: " so users can tell the proxy from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyError {
    pub severity: Severity,
    /// Five-character SQLSTATE (a server's own code when relaying its error).
    pub code: Cow<'static, str>,
    pub message: String,
    pub hint: Option<String>,
    /// False for errors pgsplit answers in PostgreSQL's own words on the
    /// server's behalf (e.g. "prepared statement does not exist"): no
    /// "pgsplit: " prefix then.
    pub from_pgsplit: bool,
}

impl ProxyError {
    /// A FATAL error: the connection closes after it.
    pub fn fatal(code: &'static str, message: impl Into<String>) -> Self {
        ProxyError {
            severity: Severity::Fatal,
            code: Cow::Borrowed(code),
            message: message.into(),
            hint: None,
            from_pgsplit: true,
        }
    }

    /// An ERROR: the statement failed, the session goes on.
    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        ProxyError {
            severity: Severity::Error,
            code: Cow::Borrowed(code),
            message: message.into(),
            hint: None,
            from_pgsplit: true,
        }
    }

    /// An ERROR worded as PostgreSQL words it, for answers pgsplit gives on
    /// the server's behalf.
    pub fn postgres(code: &'static str, message: impl Into<String>) -> Self {
        ProxyError {
            from_pgsplit: false,
            ..Self::error(code, message)
        }
    }

    /// Relays a server's SQLSTATE instead of one of pgsplit's.
    pub fn with_code(mut self, code: String) -> Self {
        if code.len() == 5 {
            self.code = Cow::Owned(code);
        }
        self
    }

    /// Adds a HINT field.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Appends the ErrorResponse to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        put_message(buf, b'E', |b| {
            b.put_u8(b'S');
            put_cstr(b, self.severity.as_bytes());
            b.put_u8(b'V');
            put_cstr(b, self.severity.as_bytes());
            b.put_u8(b'C');
            put_cstr(b, self.code.as_bytes());
            b.put_u8(b'M');
            if self.from_pgsplit {
                b.put_slice(b"pgsplit: ");
            }
            put_cstr(b, self.message.as_bytes());
            if let Some(hint) = &self.hint {
                b.put_u8(b'H');
                put_cstr(b, hint.as_bytes());
            }
            b.put_u8(0);
        });
    }

    /// The ErrorResponse as one frozen message.
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(64 + self.message.len());
        self.encode(&mut b);
        b.freeze()
    }
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.code, self.severity_str(), self.message)
    }
}

impl ProxyError {
    fn severity_str(&self) -> &'static str {
        match self.severity {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// AuthenticationOk.
pub fn auth_ok(buf: &mut BytesMut) {
    put_message(buf, b'R', |b| b.put_i32(0));
}

/// AuthenticationMD5Password with the 4-byte salt.
pub fn auth_md5(buf: &mut BytesMut, salt: [u8; 4]) {
    put_message(buf, b'R', |b| {
        b.put_i32(5);
        b.put_slice(&salt);
    });
}

/// AuthenticationSASL offering SCRAM-SHA-256 only (no channel binding yet).
pub fn auth_sasl(buf: &mut BytesMut) {
    put_message(buf, b'R', |b| {
        b.put_i32(10);
        put_cstr(b, b"SCRAM-SHA-256");
        b.put_u8(0);
    });
}

/// AuthenticationSASLContinue carrying the server-first-message.
pub fn auth_sasl_continue(buf: &mut BytesMut, data: &[u8]) {
    put_message(buf, b'R', |b| {
        b.put_i32(11);
        b.put_slice(data);
    });
}

/// AuthenticationSASLFinal carrying the server-final-message.
pub fn auth_sasl_final(buf: &mut BytesMut, data: &[u8]) {
    put_message(buf, b'R', |b| {
        b.put_i32(12);
        b.put_slice(data);
    });
}

/// ParameterStatus.
pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    put_message(buf, b'S', |b| {
        put_cstr(b, name.as_bytes());
        put_cstr(b, value.as_bytes());
    });
}

/// BackendKeyData with pgsplit's own key for this client.
pub fn backend_key_data(buf: &mut BytesMut, process_id: i32, secret_key: i32) {
    put_message(buf, b'K', |b| {
        b.put_i32(process_id);
        b.put_i32(secret_key);
    });
}

/// ReadyForQuery with the transaction status byte (`I`, `T` or `E`).
pub fn ready_for_query(buf: &mut BytesMut, status: u8) {
    put_message(buf, b'Z', |b| b.put_u8(status));
}

/// NegotiateProtocolVersion: the newest minor version pgsplit speaks and the
/// protocol options (`_pq_.*`) it did not recognise.
pub fn negotiate_protocol_version(buf: &mut BytesMut, minor: i32, unrecognised: &[&str]) {
    put_message(buf, b'v', |b| {
        b.put_i32(minor);
        b.put_i32(unrecognised.len() as i32);
        for name in unrecognised {
            put_cstr(b, name.as_bytes());
        }
    });
}

/// The fields of an ErrorResponse or NoticeResponse body, read in place.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ErrorFields<'a> {
    pub severity: &'a str,
    pub code: &'a str,
    pub message: &'a str,
}

/// Reads severity, SQLSTATE and message from an ErrorResponse body (the
/// bytes after the length field).
pub fn parse_error_fields(mut body: &[u8]) -> ErrorFields<'_> {
    let mut fields = ErrorFields::default();
    while let Some((&kind, rest)) = body.split_first() {
        if kind == 0 {
            break;
        }
        let Some((value, after)) = read_cstr(rest) else {
            break;
        };
        let value = std::str::from_utf8(value).unwrap_or("");
        match kind {
            b'V' => fields.severity = value,
            b'S' if fields.severity.is_empty() => fields.severity = value,
            b'C' => fields.code = value,
            b'M' => fields.message = value,
            _ => {}
        }
        body = after;
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_round_trip() {
        let e = ProxyError::fatal("28P01", "password authentication failed for user \"x\"")
            .with_hint("check the password");
        let b = e.to_bytes();
        assert_eq!(b[0], b'E');
        let len = i32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
        assert_eq!(len + 1, b.len());
        let f = parse_error_fields(&b[5..]);
        assert_eq!(f.severity, "FATAL");
        assert_eq!(f.code, "28P01");
        assert!(f.message.starts_with("pgsplit: password"));
    }

    #[test]
    fn simple_messages_have_right_lengths() {
        let mut b = BytesMut::new();
        ready_for_query(&mut b, b'I');
        assert_eq!(&b[..], b"Z\0\0\0\x05I");
        b.clear();
        backend_key_data(&mut b, 1, 2);
        assert_eq!(&b[..], b"K\0\0\0\x0c\0\0\0\x01\0\0\0\x02");
        b.clear();
        parameter_status(&mut b, "a", "b");
        assert_eq!(&b[..], b"S\0\0\0\x08a\0b\0");
        b.clear();
        negotiate_protocol_version(&mut b, 0, &["_pq_.x"]);
        assert_eq!(&b[..], b"v\0\0\0\x13\0\0\0\0\0\0\0\x01_pq_.x\0");
    }

    #[test]
    fn error_fields_tolerate_garbage() {
        assert_eq!(parse_error_fields(b"Sxx"), ErrorFields::default());
        assert_eq!(parse_error_fields(b"").code, "");
    }
}
