//! One connection to a PostgreSQL server: connect, startup, authenticate
//! with whatever the server asks, remember ParameterStatus and
//! BackendKeyData, and run the few simple statements pgsplit issues itself
//! (parameter sync, reset query).

use bytes::BytesMut;
use postgres_protocol::message::{backend, frontend};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::stream::{ReadHalf, Stream, WriteHalf};
use crate::tls::ServerTlsMode;

use crate::wire::messages::parse_error_fields;
use crate::wire::{md5, scram_client};

/// What it takes to open a server connection.
#[derive(Clone)]
pub struct ServerSpec {
    /// `host:port` of the member.
    pub addr: Arc<str>,
    pub user: Arc<str>,
    pub database: Arc<str>,
    pub password: Arc<str>,
    pub connect_timeout: Duration,
    /// TLS towards the server, with the mode it was built for.
    pub tls: Option<(tokio_rustls::TlsConnector, ServerTlsMode)>,
}

impl ServerSpec {
    /// The StartupMessage pgsplit opens a server connection with (also
    /// what the shutdown probe sends).
    pub fn startup_message(&self) -> std::io::Result<BytesMut> {
        let mut out = BytesMut::new();
        let params = [("user", &*self.user), ("database", &*self.database)];
        frontend::startup_message(params.iter().copied(), &mut out)?;
        Ok(out)
    }
}

/// Why a server connection could not be opened or used.
#[derive(Debug, Error)]
pub enum ServerError {
    #[error("server {addr}: {source}")]
    Io {
        addr: Arc<str>,
        source: std::io::Error,
    },
    #[error("server {0}: connect and login took longer than server_connect_timeout")]
    Timeout(Arc<str>),
    /// The server answered with an ErrorResponse.
    #[error("server {addr}: {severity} {code}: {message}")]
    Rejected {
        addr: Arc<str>,
        severity: String,
        code: String,
        message: String,
    },
    #[error("server {addr}: {problem}")]
    Protocol { addr: Arc<str>, problem: String },
}

/// Where to send a CancelRequest for the query a server connection runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelTarget {
    pub addr: Arc<str>,
    pub process_id: i32,
    pub secret_key: i32,
}

impl CancelTarget {
    /// Sends the CancelRequest and waits until the server closes the socket,
    /// which it does after it has signalled the backend.
    pub async fn send(&self, timeout: Duration) -> std::io::Result<()> {
        let work = async {
            let mut stream = TcpStream::connect(&*self.addr).await?;
            let mut buf = BytesMut::with_capacity(16);
            frontend::cancel_request(self.process_id, self.secret_key, &mut buf);
            stream.write_all(&buf).await?;
            let mut sink = [0u8; 64];
            while stream.read(&mut sink).await? > 0 {}
            Ok(())
        };
        tokio::time::timeout(timeout, work)
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
    }
}

/// The pooled statements a server connection has prepared, bounded: when
/// full, the least recently used one is evicted (and closed on the server).
#[derive(Debug, Default)]
pub struct Prepared {
    last_used: crate::fasthash::FastMap<u64, u64>,
    tick: u64,
}

impl Prepared {
    /// Whether the server has statement `id`; marks it used.
    pub fn touch(&mut self, id: u64) -> bool {
        self.tick += 1;
        match self.last_used.get_mut(&id) {
            Some(t) => {
                *t = self.tick;
                true
            }
            None => false,
        }
    }

    /// Records `id` as prepared; returns the id evicted to make room, if
    /// `capacity` was reached.
    pub fn insert(&mut self, id: u64, capacity: usize) -> Option<u64> {
        self.tick += 1;
        let evicted = if self.last_used.len() >= capacity.max(1) {
            let oldest = self
                .last_used
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(id, _)| *id);
            if let Some(old) = oldest {
                self.last_used.remove(&old);
            }
            oldest
        } else {
            None
        };
        self.last_used.insert(id, self.tick);
        evicted
    }

    /// The server does not have `id` after all (its Parse failed).
    pub fn forget(&mut self, id: u64) {
        self.last_used.remove(&id);
    }

    /// DEALLOCATE ALL / DISCARD ALL ran on the server.
    pub fn clear(&mut self) {
        self.last_used.clear();
    }

    pub fn len(&self) -> usize {
        self.last_used.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last_used.is_empty()
    }
}

/// An authenticated server connection, idle or in use by one client.
pub struct ServerConn {
    pub rd: ReadHalf,
    pub wr: WriteHalf,
    /// Bytes read from the server and not yet handled.
    pub rbuf: BytesMut,
    pub addr: Arc<str>,
    process_id: i32,
    secret_key: i32,
    /// ParameterStatus values as the server last reported them.
    params: Vec<(String, String)>,
    /// Values of unreported parameters that pgsplit set on this server.
    settings: Vec<(String, String)>,
    /// ParameterStatus values as reported at connection start: what RESET
    /// brings a parameter back to.
    defaults: Vec<(String, String)>,
    /// What the server last reported for `in_hot_standby` (PostgreSQL
    /// 14+): kept apart from `params` because every checkout looks at it.
    hot_standby: Option<bool>,
    /// Transaction status from the last ReadyForQuery.
    pub status: u8,
    /// Set when the connection must not be reused (state unknown).
    pub broken: bool,
    /// The backend warned that it is terminating after a local commit
    /// whose synchronous replication it stopped waiting for.
    pub orphaned_commit: bool,
    /// Digest of the client parameters this server was last brought to;
    /// cleared by any change pgsplit sees, so a client wanting exactly
    /// those values skips the comparison.
    pub applied_for: Option<u64>,
    /// Pooled statements prepared on this server.
    pub prepared: Prepared,
    /// (client id, sequence) of the unnamed statement the server holds.
    pub unnamed_owner: Option<(u64, u64)>,
    pub created: Instant,
}

impl ServerConn {
    /// Connects and logs in, bounded by `spec.connect_timeout`.
    pub async fn connect(spec: &ServerSpec) -> Result<ServerConn, ServerError> {
        tokio::time::timeout(spec.connect_timeout, Self::connect_inner(spec))
            .await
            .unwrap_or_else(|_| Err(ServerError::Timeout(spec.addr.clone())))
    }

    async fn connect_inner(spec: &ServerSpec) -> Result<ServerConn, ServerError> {
        let io = |source| ServerError::Io {
            addr: spec.addr.clone(),
            source,
        };
        let tcp = TcpStream::connect(&*spec.addr).await.map_err(io)?;
        tcp.set_nodelay(true).map_err(io)?;
        let (rd, wr) = Self::negotiate_tls(tcp, spec).await?.split();
        let mut conn = ServerConn {
            rd,
            wr,
            rbuf: BytesMut::with_capacity(16 * 1024),
            addr: spec.addr.clone(),
            process_id: 0,
            secret_key: 0,
            params: Vec::new(),
            settings: Vec::new(),
            defaults: Vec::new(),
            hot_standby: None,
            status: b'I',
            broken: false,
            orphaned_commit: false,
            applied_for: None,
            prepared: Prepared::default(),
            unnamed_owner: None,
            created: Instant::now(),
        };
        let out = spec.startup_message().map_err(io)?;
        conn.wr.write_all(&out).await.map_err(io)?;
        conn.authenticate(spec).await?;
        conn.read_until_ready().await?;
        conn.defaults = conn.params.clone();
        Ok(conn)
    }

    /// Asks for TLS as `server_tls_mode` says (SSLRequest, then the
    /// handshake on 'S'); a server answering 'N' is fine only for prefer.
    async fn negotiate_tls(mut tcp: TcpStream, spec: &ServerSpec) -> Result<Stream, ServerError> {
        let Some((connector, mode)) = &spec.tls else {
            return Ok(Stream::Plain(tcp));
        };
        let io = |source| ServerError::Io {
            addr: spec.addr.clone(),
            source,
        };
        let protocol = |problem: String| ServerError::Protocol {
            addr: spec.addr.clone(),
            problem,
        };
        tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
            .await
            .map_err(io)?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await.map_err(io)?;
        match answer[0] {
            b'S' => {
                let host = spec.addr.rsplit_once(':').map_or(&*spec.addr, |(h, _)| h);
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let name = crate::tls::server_name(host).map_err(|e| protocol(e.to_string()))?;
                let tls = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| protocol(format!("TLS handshake failed: {e}")))?;
                Ok(Stream::Connected(Box::new(tls)))
            }
            b'N' if *mode == ServerTlsMode::Prefer => Ok(Stream::Plain(tcp)),
            b'N' => Err(protocol(format!(
                "server does not support TLS, but server_tls_mode is {mode:?}"
            ))),
            other => Err(protocol(format!(
                "unexpected answer {other:#x} to SSLRequest"
            ))),
        }
    }

    fn protocol(&self, problem: impl Into<String>) -> ServerError {
        ServerError::Protocol {
            addr: self.addr.clone(),
            problem: problem.into(),
        }
    }

    fn io(&self, source: std::io::Error) -> ServerError {
        ServerError::Io {
            addr: self.addr.clone(),
            source,
        }
    }

    /// Reads one whole message, decoded by postgres-protocol (login and
    /// pgsplit's own statements only; never the forwarding path).
    async fn next_message(&mut self) -> Result<backend::Message, ServerError> {
        loop {
            match backend::Message::parse(&mut self.rbuf) {
                Ok(Some(m)) => return Ok(m),
                Ok(None) => {}
                Err(e) => return Err(self.protocol(e.to_string())),
            }
            let n = self
                .rd
                .read_buf(&mut self.rbuf)
                .await
                .map_err(|e| self.io(e))?;
            if n == 0 {
                return Err(self.io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    async fn send(&mut self, buf: &[u8]) -> Result<(), ServerError> {
        let r = self.wr.write_all(buf).await;
        r.map_err(|e| self.io(e))
    }

    fn rejected(&self, body: &backend::ErrorResponseBody) -> ServerError {
        let raw = body_bytes(body);
        let f = parse_error_fields(&raw);
        ServerError::Rejected {
            addr: self.addr.clone(),
            severity: f.severity.to_string(),
            code: f.code.to_string(),
            message: f.message.to_string(),
        }
    }

    /// Answers whatever authentication the server asks for: trust,
    /// cleartext, md5 or SCRAM-SHA-256.
    async fn authenticate(&mut self, spec: &ServerSpec) -> Result<(), ServerError> {
        let mut out = BytesMut::new();
        let mut scram: Option<scram_client::Login> = None;
        loop {
            out.clear();
            match self.next_message().await? {
                backend::Message::AuthenticationOk => return Ok(()),
                backend::Message::AuthenticationCleartextPassword => {
                    frontend::password_message(spec.password.as_bytes(), &mut out)
                        .map_err(|e| self.io(e))?;
                }
                backend::Message::AuthenticationMd5Password(body) => {
                    let secret = md5::Secret::new(spec.user.as_bytes(), spec.password.as_bytes());
                    frontend::password_message(&secret.answer(body.salt()), &mut out)
                        .map_err(|e| self.io(e))?;
                }
                backend::Message::AuthenticationSasl(body) => {
                    let mut mechanisms = body.mechanisms();
                    let mut found = false;
                    while let Ok(Some(m)) = fallible_next(&mut mechanisms) {
                        found |= m == "SCRAM-SHA-256";
                    }
                    if !found {
                        return Err(
                            self.protocol("server offers no SASL mechanism pgsplit supports")
                        );
                    }
                    let login = scram_client::Login::new();
                    frontend::sasl_initial_response(
                        "SCRAM-SHA-256",
                        login.client_first(),
                        &mut out,
                    )
                    .map_err(|e| self.io(e))?;
                    scram = Some(login);
                }
                backend::Message::AuthenticationSaslContinue(body) => {
                    let login = scram
                        .as_mut()
                        .ok_or_else(|| self.protocol("unexpected SASL continue"))?;
                    let reply = login
                        .answer(&spec.password, body.data())
                        .await
                        .map_err(|e| self.protocol(e.to_string()))?;
                    frontend::sasl_response(&reply, &mut out).map_err(|e| self.io(e))?;
                }
                backend::Message::AuthenticationSaslFinal(body) => {
                    let login = scram
                        .as_ref()
                        .ok_or_else(|| self.protocol("unexpected SASL final"))?;
                    login
                        .server_final(body.data())
                        .map_err(|e| self.protocol(e.to_string()))?;
                    continue;
                }
                backend::Message::ErrorResponse(body) => return Err(self.rejected(&body)),
                backend::Message::NoticeResponse(_) => continue,
                _ => return Err(self.protocol("unsupported authentication request")),
            }
            self.send(&out.split()).await?;
        }
    }

    /// Reads until ReadyForQuery, recording ParameterStatus and
    /// BackendKeyData; an ErrorResponse is returned after the
    /// ReadyForQuery that follows it (or at once if FATAL).
    async fn read_until_ready(&mut self) -> Result<(), ServerError> {
        self.read_until_ready_with_row(None).await
    }

    /// Like `read_until_ready`, keeping the first DataRow's values as text.
    async fn read_until_ready_with_row(
        &mut self,
        mut row: Option<&mut Vec<Option<String>>>,
    ) -> Result<(), ServerError> {
        let mut failed = None;
        loop {
            match self.next_message().await? {
                backend::Message::DataRow(body) => {
                    if let Some(row) = row.take() {
                        let buffer = body.buffer();
                        let mut ranges = body.ranges();
                        while let Ok(Some(range)) =
                            fallible_iterator::FallibleIterator::next(&mut ranges)
                        {
                            row.push(
                                range.map(|r| String::from_utf8_lossy(&buffer[r]).into_owned()),
                            );
                        }
                    }
                }
                backend::Message::ReadyForQuery(body) => {
                    self.status = body.status();
                    return failed.map_or(Ok(()), Err);
                }
                backend::Message::ParameterStatus(body) => {
                    let (Ok(name), Ok(value)) = (body.name(), body.value()) else {
                        return Err(self.protocol("ParameterStatus is not UTF-8"));
                    };
                    let (name, value) = (name.to_string(), value.to_string());
                    self.set_param(&name, &value);
                }
                backend::Message::BackendKeyData(body) => {
                    self.process_id = body.process_id();
                    self.secret_key = body.secret_key();
                }
                backend::Message::ErrorResponse(body) => {
                    let err = self.rejected(&body);
                    if matches!(&err, ServerError::Rejected { severity, .. } if severity == "FATAL" || severity == "PANIC")
                    {
                        return Err(err);
                    }
                    failed = Some(err);
                }
                _ => {}
            }
        }
    }

    /// Runs a simple-protocol statement of pgsplit's own and discards its
    /// results (ParameterStatus changes are recorded).
    pub async fn run_simple(&mut self, sql: &str) -> Result<(), ServerError> {
        // A simple Query destroys the unnamed statement.
        self.unnamed_owner = None;
        let mut out = BytesMut::with_capacity(sql.len() + 8);
        frontend::query(sql, &mut out).map_err(|e| self.io(e))?;
        self.send(&out).await?;
        self.read_until_ready().await
    }

    /// Runs a simple-protocol query of pgsplit's own and returns its first
    /// row as text (`None` for NULL); empty when it returned no row.
    pub async fn query_row(&mut self, sql: &str) -> Result<Vec<Option<String>>, ServerError> {
        self.unnamed_owner = None;
        let mut out = BytesMut::with_capacity(sql.len() + 8);
        frontend::query(sql, &mut out).map_err(|e| self.io(e))?;
        self.send(&out).await?;
        let mut row = Vec::new();
        self.read_until_ready_with_row(Some(&mut row)).await?;
        Ok(row)
    }

    /// Takes in what an idle connection received while it sat in the pool,
    /// without waiting: ParameterStatus (`in_hot_standby` after a
    /// promotion), notices, or the FATAL and close of a server that shut
    /// down or crashed. Returns whether the connection is still usable, so
    /// a dead one is never handed to a client.
    pub fn check_idle(&mut self) -> bool {
        loop {
            match self.rd.read_now(&mut self.rbuf) {
                None => break,
                Some(Ok(0)) | Some(Err(_)) => return false,
                Some(Ok(_)) => {}
            }
            if self.rbuf.len() > 64 * 1024 {
                return false;
            }
        }
        while !self.rbuf.is_empty() {
            let header = match crate::wire::frame::peek_header(&self.rbuf, usize::MAX) {
                Ok(Some(h)) if h.total_len <= self.rbuf.len() => h,
                _ => return false,
            };
            let message = self.rbuf.split_to(header.total_len);
            let body = &message[crate::wire::frame::HEADER_LEN..];
            match header.tag {
                b'S' => {
                    let pair = crate::wire::frame::read_cstr(body).and_then(|(name, rest)| {
                        let (value, _) = crate::wire::frame::read_cstr(rest)?;
                        Some((
                            String::from_utf8_lossy(name).into_owned(),
                            String::from_utf8_lossy(value).into_owned(),
                        ))
                    });
                    if let Some((name, value)) = pair {
                        self.set_param(&name, &value);
                    }
                }
                b'N' | b'A' => {}
                _ => return false,
            }
        }
        true
    }

    /// Records a value the server reported in ParameterStatus.
    pub fn set_param(&mut self, name: &str, value: &str) {
        self.applied_for = None;
        if name == "in_hot_standby" {
            self.hot_standby = Some(value == "on");
        }
        upsert(&mut self.params, name, value);
    }

    /// Whether the server says it is in recovery (`in_hot_standby`);
    /// `None` before PostgreSQL 14, which does not report it.
    pub fn in_hot_standby(&self) -> Option<bool> {
        self.hot_standby
    }

    /// Records a value pgsplit set for a parameter the server does not report.
    pub fn note_setting(&mut self, name: &str, value: &str) {
        self.applied_for = None;
        if self.reported(name).is_none() {
            upsert(&mut self.settings, name, value);
        }
    }

    /// Forgets a setting pgsplit has just RESET.
    pub fn forget_setting(&mut self, name: &str) {
        self.applied_for = None;
        self.settings.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    /// Unreported parameters pgsplit set on this server.
    pub fn settings(&self) -> &[(String, String)] {
        &self.settings
    }

    /// The value `name` had when the connection started.
    pub fn default_value(&self, name: &str) -> Option<&str> {
        lookup(&self.defaults, name)
    }

    /// The value the server last reported for `name`.
    pub fn reported(&self, name: &str) -> Option<&str> {
        lookup(&self.params, name)
    }

    /// The value of a parameter as far as pgsplit knows: reported by the
    /// server or set by pgsplit.
    pub fn current(&self, name: &str) -> Option<&str> {
        self.reported(name).or_else(|| lookup(&self.settings, name))
    }

    /// Every reported parameter, in the order first seen.
    pub fn params(&self) -> &[(String, String)] {
        &self.params
    }

    /// Runs the reset query and forgets what pgsplit had set.
    pub async fn reset(&mut self, query: &str) -> Result<(), ServerError> {
        self.run_simple(query).await?;
        self.settings.clear();
        self.applied_for = None;
        let lower = query.to_ascii_lowercase();
        if lower.contains("discard all") || lower.contains("deallocate") {
            self.prepared.clear();
        }
        Ok(())
    }

    /// Where a CancelRequest for this connection goes.
    pub fn cancel_target(&self) -> CancelTarget {
        CancelTarget {
            addr: self.addr.clone(),
            process_id: self.process_id,
            secret_key: self.secret_key,
        }
    }

    /// True when the connection sits between transactions with nothing
    /// unread, so another client may use it.
    pub fn is_clean(&self) -> bool {
        !self.broken && self.status == b'I' && self.rbuf.is_empty()
    }
}

fn lookup<'a>(list: &'a [(String, String)], name: &str) -> Option<&'a str> {
    list.iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn upsert(list: &mut Vec<(String, String)>, name: &str, value: &str) {
    match list.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
        Some((_, v)) if v == value => {}
        Some((_, v)) => *v = value.to_string(),
        None => list.push((name.to_string(), value.to_string())),
    }
}

/// The raw body of an ErrorResponse, for [`parse_error_fields`].
fn body_bytes(body: &backend::ErrorResponseBody) -> Vec<u8> {
    let mut raw = Vec::new();
    let mut fields = body.fields();
    while let Ok(Some(f)) = fallible_next(&mut fields) {
        raw.push(f.type_());
        raw.extend_from_slice(f.value_bytes());
        raw.push(0);
    }
    raw.push(0);
    raw
}

fn fallible_next<I: fallible_iterator::FallibleIterator>(
    it: &mut I,
) -> Result<Option<I::Item>, I::Error> {
    it.next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepared_set_evicts_least_recently_used() {
        let mut p = Prepared::default();
        assert_eq!(p.insert(1, 2), None);
        assert_eq!(p.insert(2, 2), None);
        assert!(p.touch(1));
        assert_eq!(p.insert(3, 2), Some(2));
        assert!(p.touch(1) && p.touch(3) && !p.touch(2));
        p.forget(1);
        assert_eq!(p.len(), 1);
    }
}
