//! A byte-level PostgreSQL client for the protocol edges that drivers do not
//! expose: Flush without Sync, hand-built pipelines, startup packets of any
//! version, and malformed input.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long any single receive may take before the test fails.
const RECV_TIMEOUT: Duration = Duration::from_secs(20);

/// One backend message: type byte and body.
pub type Msg = (u8, Bytes);

pub struct Raw {
    pub stream: TcpStream,
    buf: BytesMut,
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(body.len() + 5);
    v.push(tag);
    v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn cstr(v: &mut Vec<u8>, s: &str) {
    v.extend_from_slice(s.as_bytes());
    v.push(0);
}

/// Query.
pub fn query(sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, sql);
    message(b'Q', &b)
}

/// Parse with no parameter types.
pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, name);
    cstr(&mut b, sql);
    b.extend_from_slice(&0i16.to_be_bytes());
    message(b'P', &b)
}

/// Bind with no parameters, text results.
pub fn bind(portal: &str, statement: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal);
    cstr(&mut b, statement);
    b.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    message(b'B', &b)
}

/// Describe a portal ('P') or statement ('S').
pub fn describe(kind: u8, name: &str) -> Vec<u8> {
    let mut b = vec![kind];
    cstr(&mut b, name);
    message(b'D', &b)
}

/// Execute with a row limit (0 = all).
pub fn execute(portal: &str, max_rows: i32) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal);
    b.extend_from_slice(&max_rows.to_be_bytes());
    message(b'E', &b)
}

/// Close a statement ('S') or portal ('P').
pub fn close(kind: u8, name: &str) -> Vec<u8> {
    let mut b = vec![kind];
    cstr(&mut b, name);
    message(b'C', &b)
}

pub fn sync() -> Vec<u8> {
    message(b'S', &[])
}

pub fn flush() -> Vec<u8> {
    message(b'H', &[])
}

pub fn terminate() -> Vec<u8> {
    message(b'X', &[])
}

/// A startup packet with a given protocol version code.
pub fn startup_packet(version: i32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    for (k, v) in params {
        cstr(&mut body, k);
        cstr(&mut body, v);
    }
    body.push(0);
    let mut v = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    v.extend_from_slice(&body);
    v
}

/// The SQLSTATE field of an ErrorResponse/NoticeResponse body.
pub fn field(body: &[u8], kind: u8) -> String {
    let mut rest = body;
    while let Some((&k, tail)) = rest.split_first() {
        if k == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        if k == kind {
            return String::from_utf8_lossy(&tail[..end]).into_owned();
        }
        rest = &tail[(end + 1).min(tail.len())..];
    }
    String::new()
}

impl Raw {
    pub async fn connect(addr: std::net::SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Raw {
            stream,
            buf: BytesMut::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send");
    }

    /// Reads exactly `n` raw bytes (for the one-byte SSL answer).
    pub async fn recv_bytes(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            let read = tokio::time::timeout(RECV_TIMEOUT, self.stream.read_buf(&mut self.buf))
                .await
                .expect("timed out")
                .expect("read");
            assert!(read > 0, "connection closed");
        }
        self.buf.split_to(n).to_vec()
    }

    /// The next message, or None once the peer closed.
    pub async fn recv(&mut self) -> Option<Msg> {
        loop {
            if self.buf.len() >= 5 {
                let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if self.buf.len() > len {
                    let tag = self.buf[0];
                    let mut m = self.buf.split_to(len + 1);
                    m.advance(5);
                    return Some((tag, m.freeze()));
                }
            }
            let read = tokio::time::timeout(RECV_TIMEOUT, self.stream.read_buf(&mut self.buf))
                .await
                .expect("timed out waiting for a message")
                .ok()?;
            if read == 0 {
                return None;
            }
        }
    }

    /// Messages up to and including the first of type `tag`.
    pub async fn recv_until(&mut self, tag: u8) -> Vec<Msg> {
        let mut out = Vec::new();
        loop {
            let m = self
                .recv()
                .await
                .unwrap_or_else(|| panic!("closed before '{}'", tag as char));
            let done = m.0 == tag;
            out.push(m);
            if done {
                return out;
            }
        }
    }

    /// Logs in with SCRAM or md5, whichever is asked; returns the
    /// ParameterStatus pairs and the ReadyForQuery status.
    pub async fn login(
        addr: std::net::SocketAddr,
        user: &str,
        password: &str,
        database: &str,
    ) -> (Raw, Vec<(String, String)>) {
        let mut raw = Raw::connect(addr).await;
        raw.send(&startup_packet(
            196608,
            &[("user", user), ("database", database)],
        ))
        .await;
        let params = raw.authenticate(user, password).await;
        (raw, params)
    }

    /// Answers authentication requests until ReadyForQuery.
    pub async fn authenticate(&mut self, user: &str, password: &str) -> Vec<(String, String)> {
        let mut scram: Option<ScramSha256> = None;
        let mut params = Vec::new();
        loop {
            let (tag, body) = self.recv().await.expect("closed during login");
            match tag {
                b'R' => {
                    let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                    let mut out = BytesMut::new();
                    match code {
                        0 => continue,
                        5 => {
                            let salt = [body[4], body[5], body[6], body[7]];
                            let hash = md5_hash(user.as_bytes(), password.as_bytes(), salt);
                            postgres_protocol::message::frontend::password_message(
                                hash.as_bytes(),
                                &mut out,
                            )
                            .unwrap();
                        }
                        10 => {
                            let s = ScramSha256::new(
                                password.as_bytes(),
                                ChannelBinding::unsupported(),
                            );
                            postgres_protocol::message::frontend::sasl_initial_response(
                                "SCRAM-SHA-256",
                                s.message(),
                                &mut out,
                            )
                            .unwrap();
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram.as_mut().expect("scram started");
                            s.update(&body[4..]).expect("server-first");
                            postgres_protocol::message::frontend::sasl_response(
                                s.message(),
                                &mut out,
                            )
                            .unwrap();
                        }
                        12 => {
                            scram
                                .as_mut()
                                .expect("scram started")
                                .finish(&body[4..])
                                .expect("server signature");
                            continue;
                        }
                        other => panic!("unexpected auth request {other}"),
                    }
                    self.send(&out).await;
                }
                b'S' => {
                    let parts: Vec<&[u8]> = body.split(|&b| b == 0).collect();
                    params.push((
                        String::from_utf8_lossy(parts[0]).into_owned(),
                        String::from_utf8_lossy(parts[1]).into_owned(),
                    ));
                }
                b'K' | b'v' | b'N' => {}
                b'Z' => return params,
                b'E' => panic!(
                    "login failed: {} {}",
                    field(&body, b'C'),
                    field(&body, b'M')
                ),
                other => panic!("unexpected message '{}' during login", other as char),
            }
        }
    }
}

/// A big-endian i32 at the start of a body.
pub fn be_i32(body: &[u8]) -> i32 {
    let mut b = body;
    b.get_i32()
}

/// Appends one message to a pipeline buffer.
pub fn push(pipeline: &mut BytesMut, msg: &[u8]) {
    pipeline.put_slice(msg);
}
