//! The request loop of one logged-in client.
//!
//! One task per client drives four things from one poll function
//! (`Session::poll_event`): reading the client, reading its server (while
//! it holds one), and writing each way.
//! Client messages are cut off the read buffer as whole messages and queued
//! for the server without copying; server messages pass through as they
//! arrive (a large DataRow streams through without being buffered whole),
//! and only ReadyForQuery, ParameterStatus, CopyInResponse and
//! ErrorResponse are looked at. Reading stops while a queue is above its
//! high-water mark, so memory per client is bounded. What the server sends
//! back is handled in [`super::answers`]; how a session ends (idle
//! timers, the last error, what becomes of its server) in
//! [`super::ending`].
//!
//! In transaction mode the server goes back to the pool the moment its
//! ReadyForQuery says idle and nothing else is in flight, before that
//! ReadyForQuery is flushed to the client. A client that leaves with a
//! server in any other state has that server closed, never pooled.

use bytes::{Bytes, BytesMut};
use std::task::{Context, Poll};
use std::time::Instant;

use super::answers::ServerData;
pub use super::close::CloseReason;
use super::idle::IdleTimer;
use super::login::{checkout_error, server_error, Admitted, LoggedIn};
use super::outq::OutQueue;
use super::registry::ClientState;
use super::replay::{Replay, Retry};
use super::routing::{Point, Routing};
use super::settings::Settings;
use super::statements::ClientStatements;
use super::tracker::Tracker;
use crate::config::PoolMode;
use crate::pool::pools::{discard, CheckoutError, PooledServer, ServerPool};
use crate::proxy::Shared;
use crate::stream::{ReadHalf, WriteHalf};
use crate::wire::frame::{peek_header, HEADER_LEN};
use crate::wire::messages::ProxyError;

/// Stop reading a side while this much waits to be written to the other.
const HIGH_WATER: usize = 256 * 1024;
/// Grow a server read buffer by this much when it runs low.
const READ_RESERVE: usize = 16 * 1024;
/// A client's read buffer starts small: it is given back after every
/// transaction, and most requests are small.
const CLIENT_READ_RESERVE: usize = 4 * 1024;
/// Below this much free room a client read buffer is grown first.
const CLIENT_READ_LOW: usize = 512;
/// Below this much free room a read buffer is grown first.
const READ_LOW: usize = 4 * 1024;
/// ReadyForQuery, idle: the answer to a Sync no server saw.
const READY_IDLE: &[u8] = b"Z\0\0\0\x05I";
/// Message types a client may send after login (a `match`, not a slice
/// search: it runs for every client message).
fn is_frontend_tag(tag: u8) -> bool {
    matches!(
        tag,
        b'B' | b'C' | b'd' | b'c' | b'f' | b'D' | b'E' | b'H' | b'F' | b'P' | b'Q' | b'S' | b'X'
    )
}

enum Event {
    ClientRead(std::io::Result<usize>),
    ServerRead(std::io::Result<usize>),
    ClientWritten(std::io::Result<()>),
    ServerWritten(std::io::Result<()>),
    IdleCheck,
    /// pgsplit stopped accepting clients: this one goes once idle.
    Drain,
}

pub(super) struct Session<'a> {
    pub(super) shared: &'a Shared,
    pub(super) login: LoggedIn,
    pub(super) mode: PoolMode,
    /// The config and classifier in force, refreshed as input arrives.
    pub(super) settings: Settings,
    max_message: usize,
    client_rd: ReadHalf,
    pub(super) client_wr: WriteHalf,
    pub(super) client_in: BytesMut,
    pub(super) to_client: OutQueue,
    pub(super) to_server: OutQueue,
    pub(super) server: Option<PooledServer>,
    /// Bytes of a server message still to pass through unexamined.
    pub(super) server_passthrough: usize,
    pub(super) tracker: Tracker,
    /// The client's prepared statement names (transaction mode).
    pub(super) statements: ClientStatements,
    /// The client keeps its server: it has session state pgsplit cannot
    /// carry to another server (SQL PREPARE, LISTEN, WITH HOLD cursors,
    /// temp tables, session advisory locks, set_config).
    pub(super) pinned: bool,
    /// After an error pgsplit made up, client messages are skipped up to
    /// the next Sync, as PostgreSQL does.
    pub(super) skip_to_sync: bool,
    /// Room for messages pgsplit rewrites.
    pub(super) scratch: BytesMut,
    /// When the client last sent anything.
    pub(super) last_activity: Instant,
    pub(super) idle: Option<IdleTimer>,
    /// Which server role each request needs, and what is held.
    pub(super) routing: Routing,
    /// The request in flight, kept while it may be sent again.
    pub(super) replay: Replay,
    /// pgsplit is shutting down: the client goes once idle.
    draining: bool,
    /// The session's waker is registered for the shutdown drain.
    drain_registered: bool,
}

/// Serves a logged-in client until it leaves, then cleans up.
/// Serves a logged-in client until it leaves, then cleans up. The session
/// is built before the returned future exists, so the client's task holds
/// it once rather than also keeping the login hand-over alongside.
pub fn run<'a>(
    admitted: Admitted,
    shared: &'a Shared,
) -> impl std::future::Future<Output = ()> + Send + 'a {
    let Admitted {
        stream,
        pending,
        login,
        server,
        routing,
    } = admitted;
    let (client_rd, client_wr) = stream.split();
    let pending = if pending.is_empty() {
        BytesMut::new()
    } else {
        pending
    };
    // One snapshot of the config serves the session's fixed settings and
    // its first requests.
    let settings = Settings::new(shared);
    let proxy = &settings.config.proxy;
    let (mode, max_message, idle) = (
        proxy.pool_mode,
        proxy.max_message_size.0,
        IdleTimer::new(proxy),
    );
    // Boxed: async fn arguments are stored twice in the future (once as
    // the argument, once as the local), so pass a pointer, not the struct.
    let session = Box::new(Session {
        shared,
        mode,
        settings,
        max_message,
        login,
        client_rd,
        client_wr,
        client_in: pending,
        to_client: OutQueue::default(),
        to_server: OutQueue::default(),
        server,
        server_passthrough: 0,
        tracker: Tracker::default(),
        statements: ClientStatements::default(),
        pinned: false,
        skip_to_sync: false,
        scratch: BytesMut::new(),
        last_activity: Instant::now(),
        idle,
        routing,
        replay: Replay::default(),
        draining: false,
        drain_registered: false,
    });
    session.run()
}

/// Room in a client's read buffer for the next read.
fn client_read_room(buf: &mut BytesMut) {
    if buf.capacity() == 0 {
        // A spare keeps whatever room it has left while that is enough:
        // asking for the full reserve would reclaim or reallocate it on
        // every transaction.
        *buf = super::spare::take(CLIENT_READ_LOW, CLIENT_READ_RESERVE);
    } else if buf.capacity() - buf.len() < CLIENT_READ_LOW {
        buf.reserve(CLIENT_READ_RESERVE);
    }
}

/// Room in a server's read buffer for the next read.
fn server_read_room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_LOW {
        buf.reserve(READ_RESERVE);
    }
}

impl Session<'_> {
    async fn run(mut self: Box<Self>) {
        let reason = self.serve().await;
        Box::pin(self.finish(reason)).await;
        self.shared.cancels.unregister(self.login.cancel_key);
        self.shared.client_list.remove(self.login.client_id);
        tracing::info!(client = %self.login.peer, user = %self.login.user.config.name, reason = reason.as_str(), "client connection closed");
        self.shared.metrics.client_closed(reason.as_str());
    }

    async fn serve(&mut self) -> CloseReason {
        if !self.client_in.is_empty() {
            if let Err(reason) = self.on_client_data().await {
                return reason;
            }
        }
        loop {
            let event = std::future::poll_fn(|cx| self.poll_event(cx)).await;
            match event {
                Event::Drain => self.draining = true,
                Event::IdleCheck => {
                    if let Some(reason) = Box::pin(self.check_idle()).await {
                        return reason;
                    }
                }
                Event::ClientRead(Ok(0)) => return CloseReason::ClientClosed,
                Event::ClientRead(Ok(_)) => {
                    if let Err(reason) = self.on_client_data().await {
                        return reason;
                    }
                    let written = match self.server.as_deref_mut() {
                        Some(s) => self.to_server.write_now(&mut s.wr),
                        None => Ok(()),
                    };
                    if let Err(e) = written {
                        return self.lose_server(&e.to_string()).await;
                    }
                }
                Event::ServerRead(Ok(0)) => {
                    let status = self.server.as_ref().map_or(b'I', |s| s.status);
                    if self.between_requests(status) {
                        // Closed while idle: another server takes the next request.
                        if let Some(server) = self.server.take() {
                            discard(server);
                        }
                        self.release_server().await;
                    } else if !self.finish_orphaned_commit().await {
                        return self.lose_server("server closed the connection").await;
                    }
                }
                Event::ServerRead(Ok(_)) => {
                    let mut data = self.on_server_data();
                    if let Ok(ServerData::Retry {
                        when: Retry::IfShuttingDown,
                        answered,
                        ..
                    }) = data
                    {
                        if !self.held_server_shutting_down().await {
                            data = self.forward_refusal(answered);
                        }
                    }
                    match data {
                        Ok(ServerData::Release) => self.release_server().await,
                        Ok(ServerData::Keep) => {}
                        Ok(ServerData::Retry { why, .. }) => {
                            if !Box::pin(self.retry_request(why)).await {
                                return self.lose_server(why).await;
                            }
                            if let Err(reason) = self.on_client_data().await {
                                return reason;
                            }
                        }
                        Err(problem) => return self.lose_server(problem).await,
                    }
                    self.replay.check(self.to_client.pushed());
                    if self.to_client.write_now(&mut self.client_wr).is_err() {
                        return CloseReason::ClientIo;
                    }
                    if self.routing.blocked && (self.server.is_none() || self.server_quiescent()) {
                        // The server finished what the waiting input was
                        // queued behind: route it now.
                        self.routing.blocked = false;
                        if let Err(reason) = self.on_client_data().await {
                            return reason;
                        }
                    }
                }
                Event::ServerRead(Err(e)) | Event::ServerWritten(Err(e)) => {
                    return self.lose_server(&e.to_string()).await
                }
                Event::ClientRead(Err(_)) | Event::ClientWritten(Err(_)) => {
                    return CloseReason::ClientIo
                }
                Event::ClientWritten(Ok(())) | Event::ServerWritten(Ok(())) => {}
            }
            if self.draining && self.idle_for_shutdown() {
                self.farewell(ProxyError::fatal(
                    "57P01",
                    "pgsplit is shutting down; connect again to reach another instance",
                ))
                .await;
                return CloseReason::Shutdown;
            }
        }
    }

    /// The next thing the session must act on. Polled in this order, and
    /// each only while it may go on: the server's answer, output for the
    /// client, output for the server, the client's input, the idle timer,
    /// the shutdown drain. Every branch is bounded (the queues stop reading
    /// at HIGH_WATER), so none starves the others, and answers go before
    /// new requests. One poll function calling the sockets' poll functions
    /// directly, not `select!` over a future per branch: the request loop
    /// waits here twice per transaction, and the macro's futures cost some
    /// hundreds of instructions per transaction.
    ///
    /// A plain TCP client is given read buffer room only once it is
    /// readable, so an idle client holds no read buffer at all.
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        let can_read_server =
            self.to_client.len() < HIGH_WATER && !self.server_silent_in_transaction();
        if let (true, Some(s)) = (can_read_server, self.server.as_deref_mut()) {
            if let Poll::Ready(r) = s.rd.poll_read_bytes(cx, &mut s.rbuf, server_read_room) {
                return Poll::Ready(Event::ServerRead(r));
            }
        }
        if !self.to_client.is_empty() {
            if let Poll::Ready(r) = self.to_client.poll_write_some(cx, &mut self.client_wr) {
                return Poll::Ready(Event::ClientWritten(r));
            }
        }
        if let (false, Some(s)) = (self.to_server.is_empty(), self.server.as_deref_mut()) {
            if let Poll::Ready(r) = self.to_server.poll_write_some(cx, &mut s.wr) {
                return Poll::Ready(Event::ServerWritten(r));
            }
        }
        if self.to_server.len() < HIGH_WATER && !self.routing.blocked {
            let read = self
                .client_rd
                .poll_read_bytes(cx, &mut self.client_in, client_read_room);
            if let Poll::Ready(r) = read {
                return Poll::Ready(Event::ClientRead(r));
            }
        }
        if let Some(timer) = &mut self.idle {
            if timer.poll_elapsed(cx).is_ready() {
                return Poll::Ready(Event::IdleCheck);
            }
        }
        if !self.draining {
            let drained = self.login.entry.poll_drained(
                cx,
                &self.shared.draining,
                &mut self.drain_registered,
            );
            if drained.is_ready() {
                return Poll::Ready(Event::Drain);
            }
        }
        Poll::Pending
    }

    /// Cuts whole client messages off the buffer and queues them for the
    /// server, checking out a server first when the client holds none.
    /// Messages that need no rewriting are forwarded as one contiguous run.
    /// A Terminate from the client ends the session (`ClientTerminate`).
    async fn on_client_data(&mut self) -> Result<(), CloseReason> {
        // Input is being looked at now; a routing point blocks it again if
        // it must still wait.
        self.routing.blocked = false;
        self.settings.refresh(self.shared);
        if self.idle.is_some() {
            self.last_activity = Instant::now();
        }
        let mut ready = 0;
        loop {
            let header = match peek_header(&self.client_in[ready..], self.max_message) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => {
                    self.queue_client_messages(ready);
                    self.farewell(ProxyError::fatal("08P01", e.to_string()))
                        .await;
                    return Err(CloseReason::ProtocolViolation);
                }
            };
            let available = self.client_in.len() - ready;
            if available < header.total_len {
                self.client_in.reserve(header.total_len - available);
                break;
            }
            if header.tag == b'X' {
                self.queue_client_messages(ready);
                return Err(CloseReason::ClientTerminate);
            }
            if !is_frontend_tag(header.tag) {
                self.queue_client_messages(ready);
                let message = format!("invalid frontend message type {}", header.tag);
                self.farewell(ProxyError::fatal("08P01", message)).await;
                return Err(CloseReason::ProtocolViolation);
            }
            if self.skip_to_sync {
                if header.tag != b'S' || self.server.is_none() {
                    self.queue_client_messages(ready);
                    ready = 0;
                    let _ = self.client_in.split_to(header.total_len);
                    if header.tag == b'S' {
                        // No server ever saw this request: answer the Sync.
                        self.skip_to_sync = false;
                        self.routing.unit_start = true;
                        self.to_client.push(Bytes::from_static(READY_IDLE));
                    }
                    continue;
                }
                self.skip_to_sync = false;
            }
            if self.server.is_none() && matches!(header.tag, b'P' | b'C') {
                let answered = if header.tag == b'P' {
                    self.answer_prepare(ready, header.total_len)
                } else {
                    self.answer_close(ready)
                };
                if answered > 0 {
                    let _ = self.client_in.split_to(answered);
                    self.routing.unit_start = true;
                    continue;
                }
            }
            if self.server.is_none() || self.routing.unit_start {
                match self.route_point(&mut ready, header.tag).await? {
                    Point::Go => {}
                    Point::Handled => {
                        // The message was answered, not forwarded: what
                        // its scan noted is void.
                        self.routing.forget_effect_free_query();
                        continue;
                    }
                    Point::Blocked => {
                        self.routing.forget_effect_free_query();
                        self.routing.blocked = true;
                        break;
                    }
                }
            }
            // Lend the buffer out so the body can be read while the
            // session notes what it says.
            let input = std::mem::take(&mut self.client_in);
            let body = &input[ready + HEADER_LEN..ready + header.total_len];
            let rewrite = self.needs_rewrite(header.tag, body);
            if !rewrite {
                self.tracker.client_message(header.tag, body);
            }
            self.routing.forwarded(header.tag, body);
            // The empty buffer that stood in owns no memory (`BytesMut::new`
            // does not allocate): forgotten, not dropped, which saves a
            // drop's checks on every message.
            std::mem::forget(std::mem::replace(&mut self.client_in, input));
            if rewrite {
                self.queue_client_messages(ready);
                ready = 0;
                let message = self.client_in.split_to(header.total_len).freeze();
                self.rewrite(header, message);
            } else {
                ready += header.total_len;
            }
            if !self.replay.holds_answers() {
                self.emit_due();
            }
        }
        self.queue_client_messages(ready);
        Ok(())
    }

    pub(super) fn queue_client_messages(&mut self, len: usize) {
        if len > 0 {
            let messages = self.client_in.split_to(len).freeze();
            self.replay.record(&messages);
            self.to_server.push(messages);
        }
    }

    /// Forgets a message streaming through and any skip to Sync (the
    /// server is being replaced).
    pub(super) fn reset_server_stream(&mut self) {
        self.server_passthrough = 0;
        self.skip_to_sync = false;
    }

    /// The client cancelled while waiting for a server: its request fails
    /// with 57014 as a cancelled statement would.
    pub(super) fn cancelled_while_waiting(&mut self, tag: u8) {
        let error = ProxyError::error(
            "57014",
            "canceling statement due to user request (while waiting for a server connection)",
        );
        self.fail_request(tag, error);
    }

    /// Answers the request starting with the message at the front of the
    /// input with `error` instead of running it: a Query is answered with
    /// the error and ReadyForQuery, extended messages are skipped up to
    /// their Sync.
    pub(super) fn fail_request(&mut self, tag: u8, error: ProxyError) {
        self.shared.metrics.error_sent(&error.code);
        self.to_client.push(error.to_bytes());
        if tag == b'Q' {
            let header = peek_header(&self.client_in, usize::MAX).ok().flatten();
            if let Some(h) = header {
                let _ = self.client_in.split_to(h.total_len);
            }
            self.to_client.push(Bytes::from_static(READY_IDLE));
            self.routing.unit_start = true;
        } else {
            self.skip_to_sync = true;
        }
    }

    /// Waits for a server from `pool`; `Ok(None)` when the client cancelled
    /// its request meanwhile.
    pub(super) async fn acquire_server(
        &mut self,
        pool: ServerPool,
    ) -> Result<Option<PooledServer>, CheckoutError> {
        self.login.cancel.begin_wait();
        // Biased: a server that came is taken before a cancel that came
        // with it is looked at (`end_wait` still reports the cancel), and
        // no random start is drawn on every wait.
        let checkout = tokio::select! {
            biased;
            r = pool.checkout() => Some(r),
            _ = self.login.cancel.cancelled() => None,
        };
        let cancelled = self.login.cancel.end_wait();
        match checkout {
            None => Ok(None),
            Some(Ok(s)) if cancelled => {
                drop(s);
                Ok(None)
            }
            Some(r) => r.map(Some),
        }
    }

    /// No server could be had: the client is told why and disconnected.
    pub(super) async fn no_server(&mut self, e: CheckoutError) -> CloseReason {
        self.farewell(checkout_error(e)).await;
        CloseReason::NoServer
    }

    /// Brings a server to this client's session parameters.
    pub(super) async fn prepare_server(
        &mut self,
        mut server: PooledServer,
    ) -> Result<PooledServer, CloseReason> {
        if let Err(e) = self.login.params.apply(&mut server).await {
            discard(server);
            self.farewell(server_error(e)).await;
            return Err(CloseReason::NoServer);
        }
        Ok(server)
    }

    /// Whether a large server message is still streaming through.
    pub(super) fn server_passthrough_done(&self) -> bool {
        self.server_passthrough == 0
    }

    /// Gives the server back to the pool, after any cancel aimed at it has
    /// been delivered, and lets go of buffers an idle client does not need.
    pub(super) async fn release_server(&mut self) {
        let cancelled = self.login.cancel.release().await;
        if let Some(server) = self.server.take() {
            if cancelled {
                // Its backend may act on the signal late: never reuse it.
                discard(server);
            }
        }
        self.routing.held = None;
        self.routing.held_member = None;
        self.login.entry.set_state(ClientState::Idle);
        self.replay.stop();
        self.drop_idle_buffers();
    }

    /// An idle client keeps no buffer: the read buffer and the rewrite
    /// scratch space are given up when empty, to the thread's spares
    /// (they are shared with messages still queued, which keep their own
    /// bytes alive).
    fn drop_idle_buffers(&mut self) {
        if self.client_in.is_empty() && self.client_in.capacity() > 0 {
            super::spare::give(std::mem::take(&mut self.client_in));
        }
        if self.scratch.capacity() > 0 {
            super::spare::give(std::mem::take(&mut self.scratch));
        }
        self.replay.shrink();
    }

    /// The held server is inside a transaction and owes nothing, in
    /// transaction mode without pinning: PostgreSQL sends nothing unasked
    /// there (notifications wait for the transaction's end), so the loop
    /// does not poll it, which saves a waker registration per statement
    /// of a transaction. A FATAL error or close that comes meanwhile is
    /// read with the next request's answer, as a client connected
    /// straight to PostgreSQL reads it.
    fn server_silent_in_transaction(&mut self) -> bool {
        let in_transaction = self
            .server
            .as_ref()
            .is_some_and(|s| matches!(s.status, b'T' | b'E'));
        in_transaction
            && self.mode == PoolMode::Transaction
            && !self.pinned
            && self.server_quiescent()
    }

    /// Nothing is owed by the server or queued for it, and no transaction
    /// is open, in transaction mode without pinning: losing the server
    /// now costs the client nothing.
    fn between_requests(&mut self, status: u8) -> bool {
        between_requests(
            status,
            self.mode,
            self.pinned,
            &self.to_server,
            &mut self.tracker,
        )
    }
}

/// See [`Session::between_requests`].
pub(super) fn between_requests(
    status: u8,
    mode: PoolMode,
    pinned: bool,
    to_server: &OutQueue,
    tracker: &mut Tracker,
) -> bool {
    status == b'I'
        && mode == PoolMode::Transaction
        && !pinned
        && to_server.is_empty()
        && tracker.is_idle()
}
