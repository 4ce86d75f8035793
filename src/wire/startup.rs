//! The untagged first packet a client sends: SSLRequest, GSSENCRequest,
//! CancelRequest or StartupMessage.

use super::frame::{read_cstr, read_i32};
use thiserror::Error;

/// Startup packets are small; PostgreSQL itself caps them at 10000 bytes.
pub const MAX_STARTUP_LEN: usize = 10_000;

const SSL_REQUEST: i32 = 80877103;
const GSSENC_REQUEST: i32 = 80877104;
const CANCEL_REQUEST: i32 = 80877102;

/// One decoded startup-phase packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// The client asks for TLS.
    SslRequest,
    /// The client asks for GSSAPI encryption.
    GssEncRequest,
    /// Cancel the query running on the session identified by the key.
    Cancel { process_id: i32, secret_key: i32 },
    /// A StartupMessage: protocol version and parameters in client order.
    Startup {
        major: u16,
        minor: u16,
        params: Vec<(String, String)>,
    },
}

/// Why a startup packet was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum StartupError {
    #[error("invalid length of startup packet ({0})")]
    BadLength(i32),
    #[error("invalid startup packet layout: {0}")]
    Malformed(&'static str),
}

/// Returns the total length of the packet at the front of `buf` once the
/// length word is there, validated against [`MAX_STARTUP_LEN`].
pub fn packet_len(buf: &[u8]) -> Result<Option<usize>, StartupError> {
    let Some((len, _)) = read_i32(buf) else {
        return Ok(None);
    };
    if !(8..=MAX_STARTUP_LEN as i32).contains(&len) {
        return Err(StartupError::BadLength(len));
    }
    Ok(Some(len as usize))
}

/// Decodes one whole packet (`buf` holds exactly the packet, length word
/// included).
pub fn parse(buf: &[u8]) -> Result<StartupPacket, StartupError> {
    let (_, rest) = read_i32(buf).ok_or(StartupError::Malformed("short packet"))?;
    let (code, rest) = read_i32(rest).ok_or(StartupError::Malformed("short packet"))?;
    match code {
        SSL_REQUEST => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST => {
            let (process_id, rest) =
                read_i32(rest).ok_or(StartupError::Malformed("short cancel request"))?;
            let (secret_key, _) =
                read_i32(rest).ok_or(StartupError::Malformed("short cancel request"))?;
            Ok(StartupPacket::Cancel {
                process_id,
                secret_key,
            })
        }
        version => {
            let major = (version >> 16) as u16;
            let minor = (version & 0xffff) as u16;
            let params = parse_params(rest)?;
            Ok(StartupPacket::Startup {
                major,
                minor,
                params,
            })
        }
    }
}

/// Parameters are name/value C-string pairs ended by one empty name.
fn parse_params(mut rest: &[u8]) -> Result<Vec<(String, String)>, StartupError> {
    let mut params = Vec::new();
    loop {
        let (name, after) =
            read_cstr(rest).ok_or(StartupError::Malformed("unterminated parameter name"))?;
        if name.is_empty() {
            return Ok(params);
        }
        let (value, after) =
            read_cstr(after).ok_or(StartupError::Malformed("unterminated parameter value"))?;
        let name = std::str::from_utf8(name)
            .map_err(|_| StartupError::Malformed("parameter name is not UTF-8"))?;
        let value = std::str::from_utf8(value)
            .map_err(|_| StartupError::Malformed("parameter value is not UTF-8"))?;
        params.push((name.to_owned(), value.to_owned()));
        rest = after;
    }
}

/// Splits a libpq `options` value into `-c name=value` / `--name=value`
/// pairs. Backslash escapes a space, as in PostgreSQL's `pg_split_opts`.
pub fn split_options(options: &str) -> Result<Vec<(String, String)>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_ascii_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let setting = if w == "-c" {
            it.next()
                .ok_or_else(|| "\"-c\" without a setting in options".to_string())?
        } else if let Some(s) = w.strip_prefix("-c") {
            s.to_string()
        } else if let Some(s) = w.strip_prefix("--") {
            s.to_string()
        } else {
            return Err(format!("unsupported word \"{w}\" in options"));
        };
        let (name, value) = setting
            .split_once('=')
            .ok_or_else(|| format!("setting \"{setting}\" in options has no value"))?;
        out.push((name.replace('-', "_"), value.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: i32, body: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((8 + body.len()) as i32).to_be_bytes());
        v.extend_from_slice(&code.to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn ssl_and_gss_requests() {
        assert_eq!(
            parse(&packet(SSL_REQUEST, b"")),
            Ok(StartupPacket::SslRequest)
        );
        assert_eq!(
            parse(&packet(GSSENC_REQUEST, b"")),
            Ok(StartupPacket::GssEncRequest)
        );
    }

    #[test]
    fn cancel_request() {
        let mut body = 7i32.to_be_bytes().to_vec();
        body.extend_from_slice(&(-9i32).to_be_bytes());
        assert_eq!(
            parse(&packet(CANCEL_REQUEST, &body)),
            Ok(StartupPacket::Cancel {
                process_id: 7,
                secret_key: -9
            })
        );
        assert!(parse(&packet(CANCEL_REQUEST, b"\0\0")).is_err());
    }

    #[test]
    fn startup_params() {
        let p = packet(196608, b"user\0app\0database\0db\0\0");
        assert_eq!(
            parse(&p),
            Ok(StartupPacket::Startup {
                major: 3,
                minor: 0,
                params: vec![
                    ("user".into(), "app".into()),
                    ("database".into(), "db".into())
                ]
            })
        );
        assert!(parse(&packet(196608, b"user\0app")).is_err());
    }

    #[test]
    fn length_bounds() {
        assert_eq!(packet_len(&[0, 0]), Ok(None));
        assert_eq!(
            packet_len(&4i32.to_be_bytes()),
            Err(StartupError::BadLength(4))
        );
        assert!(packet_len(&100_000i32.to_be_bytes()).is_err());
        assert_eq!(packet_len(&8i32.to_be_bytes()), Ok(Some(8)));
    }

    #[test]
    fn options_split() {
        assert_eq!(
            split_options("-c search_path=a\\ b --work-mem=4MB -cstatement_timeout=5").unwrap(),
            vec![
                ("search_path".to_string(), "a b".to_string()),
                ("work_mem".to_string(), "4MB".to_string()),
                ("statement_timeout".to_string(), "5".to_string())
            ]
        );
        assert!(split_options("-c").is_err());
        assert!(split_options("-x").is_err());
        assert!(split_options("-c foo").is_err());
    }
}
