//! Sending a request again on another server when the first one could
//! not run it: the server answered, before anything reached the client,
//! that it is shutting down (57P01 admin shutdown, 57P02 crash shutdown,
//! 57P03 cannot connect now) or that it is in recovery (25006 from a
//! server taken as the leader). That is what a Patroni switchover does to
//! the old leader; the request waits for the new leader instead of failing.
//!
//! While a request is replayable, the client messages it was made of are
//! kept (as the `Bytes` they were cut as: no copy). The window closes as
//! soon as anything is queued for the client, when the server goes back
//! to the pool, or past 1 MiB. A retry puts the messages back in front of
//! the unread input, forgets the server and what was in flight, and routes
//! the request afresh. At most three attempts per request.
//!
//! The error may follow answers that only say the request was parsed,
//! bound or described (ParseComplete, BindComplete, ParameterDescription,
//! RowDescription, NoData, CloseComplete), as long as none of them reached
//! the client yet: PostgreSQL buffers those and sends them with the error
//! when a backend is terminated during Execute. Anything else before the
//! error (a row, a command tag, a ReadyForQuery) means the request ran,
//! and it is not sent again.
//!
//! 57P01 is sent both by a fast shutdown and by `pg_terminate_backend()`;
//! the request is sent again only when a probe finds the server refusing
//! new connections as it shuts down (see [`crate::pool::stopping`]).
//!
//! The retry is safe when the answer is an error the server sends instead
//! of running the statement. One race remains, as with any client retry:
//! a fast shutdown's FATAL can follow a commit that had not been reported
//! yet; the commit then happens twice.

use bytes::{Bytes, BytesMut};

use super::session::Session;
use super::tracker::Tracker;
use crate::client::outq::OutQueue;
use crate::topology::Role;
use crate::wire::messages::parse_error_fields;

/// Past this many bytes a request is no longer kept for a retry.
const MAX_REPLAY_BYTES: usize = 1 << 20;
/// Attempts per request (the first included).
const MAX_ATTEMPTS: u8 = 3;

/// The request in flight, kept for a retry.
#[derive(Default)]
pub(super) struct Replay {
    active: bool,
    /// The request's first message run, kept inline: most requests are
    /// one run (a Query, or Parse to Sync as one read), and a vector
    /// would be allocated and freed for each of them.
    first: Option<Bytes>,
    /// Any further message runs.
    more: Vec<Bytes>,
    bytes: usize,
    /// Client pushes when the request started; any push since closes the
    /// window.
    answered_mark: u64,
    /// The deferred BEGIN sent ahead of it.
    begin: Option<Bytes>,
    /// Client statement names its Parse messages added.
    names: Vec<String>,
    /// Attempts of the current request so far.
    attempts: u8,
    /// Set by a retry: the next start continues the count.
    retried: Option<u8>,
    /// Answers pgsplit makes up wait for the server's first message: the
    /// request ends in a Sync (or is a Query), so one will come.
    hold: bool,
}

impl Replay {
    /// A request starts on a freshly taken server.
    pub fn start(&mut self, answered_mark: u64, begin: Option<Bytes>, complete: bool) {
        let attempts = self.retried.take().unwrap_or(0) + 1;
        self.stop();
        self.active = true;
        self.hold = complete;
        self.answered_mark = answered_mark;
        self.begin = begin;
        self.attempts = attempts;
    }

    /// The window closed: nothing is kept.
    pub fn stop(&mut self) {
        self.active = false;
        self.first = None;
        self.more.clear();
        self.names.clear();
        self.begin = None;
        self.bytes = 0;
    }

    /// Whether made-up answers wait for the server's first message.
    pub fn holds_answers(&self) -> bool {
        self.active && self.hold
    }

    /// Notes client bytes sent to the server as part of the request.
    pub fn record(&mut self, message: &Bytes) {
        if !self.active {
            return;
        }
        self.bytes += message.len();
        if self.bytes > MAX_REPLAY_BYTES {
            self.stop();
        } else {
            match self.first {
                None => self.first = Some(message.clone()),
                Some(_) => self.more.push(message.clone()),
            }
        }
    }

    /// A Parse of the request added the client name `name`.
    pub fn named(&mut self, name: &str) {
        if self.active {
            self.names.push(name.to_string());
        }
    }

    /// Closes the window once the client was sent anything.
    pub fn check(&mut self, pushed: u64) {
        if self.active && pushed != self.answered_mark {
            self.stop();
        }
    }

    /// The request may still be sent again.
    pub fn possible(&self, pushed: u64) -> bool {
        self.active && pushed == self.answered_mark && self.attempts < MAX_ATTEMPTS
    }

    /// Frees what an idle client does not need.
    pub fn shrink(&mut self) {
        if !self.active && self.more.capacity() > 0 {
            self.more = Vec::new();
        }
    }
}

/// When a request the server refused may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Now: the server cannot run it (crash, cannot connect now, in
    /// recovery).
    Now,
    /// Only if the server is shutting down: 57P01 is also what
    /// `pg_terminate_backend()` sends, and a request stopped on purpose
    /// must fail as it would without pgsplit.
    IfShuttingDown,
}

/// Whether an ErrorResponse body says the server did not run the request
/// and another server may.
pub fn retryable_error(body: &[u8], held: Option<Role>, in_hot_standby: bool) -> Option<Retry> {
    let fields = parse_error_fields(body);
    match fields.code {
        "57P01" => Some(Retry::IfShuttingDown),
        "57P02" | "57P03" => Some(Retry::Now),
        "25006" if held == Some(Role::Leader) && in_hot_standby => Some(Retry::Now),
        _ => None,
    }
}

/// Whether a server message answers only the preparation of a request
/// (parse, bind, describe, close), so that an error after it still means
/// nothing ran.
pub fn precedes_execution(tag: u8) -> bool {
    matches!(tag, b'1' | b'2' | b't' | b'T' | b'n' | b'3')
}

impl Session<'_> {
    /// Sends the request in flight again on another server, if it may be:
    /// returns false when it may not (the caller fails it as before).
    pub(super) async fn retry_request(&mut self, why: &str) -> bool {
        if !self.replay.possible(self.to_client.pushed()) {
            return false;
        }
        let replay = std::mem::take(&mut self.replay);
        if let Some(server) = self.server.take() {
            let addr = server.addr.clone();
            self.login.cancel.release().await;
            crate::pool::pools::discard(server);
            // Its other connections are going the same way.
            self.shared.pools.retire(&addr);
            tracing::info!(server = %addr, attempt = replay.attempts, why, "request sent again on another server");
        }
        self.routing.held = None;
        self.routing.held_member = None;
        self.tracker = Tracker::default();
        self.to_server = OutQueue::default();
        self.reset_server_stream();
        self.login.params.forget_pending();
        for name in &replay.names {
            self.statements.remove(name);
        }
        let mut input = BytesMut::with_capacity(replay.bytes + self.client_in.len());
        for message in replay.first.iter().chain(&replay.more) {
            input.extend_from_slice(message);
        }
        input.extend_from_slice(&self.client_in);
        self.client_in = input;
        self.routing.restart_request(replay.begin.clone());
        self.replay.retried = Some(replay.attempts);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_closes_when_the_client_hears_anything() {
        let mut r = Replay::default();
        r.start(5, None, true);
        r.record(&Bytes::from_static(b"Q...."));
        assert!(r.possible(5));
        r.check(6);
        assert!(!r.possible(6));
        assert!(r.first.is_none() && r.more.is_empty());
    }

    #[test]
    fn attempts_are_bounded_and_size_too() {
        let mut r = Replay::default();
        for _ in 0..MAX_ATTEMPTS - 1 {
            r.start(0, None, true);
            assert!(r.possible(0));
            r.retried = Some(r.attempts);
        }
        r.start(0, None, true);
        assert!(!r.possible(0), "third attempt is the last");
        r.start(0, None, true);
        assert!(r.possible(0), "a new request starts counting again");
        let mut r = Replay::default();
        r.start(0, None, true);
        r.record(&Bytes::from(vec![0u8; MAX_REPLAY_BYTES + 1]));
        assert!(!r.possible(0));
    }

    #[test]
    fn only_preparation_answers_precede_execution() {
        for tag in *b"12tTn3" {
            assert!(precedes_execution(tag), "{}", tag as char);
        }
        for tag in *b"DCIsZEGHWdcNSA" {
            assert!(!precedes_execution(tag), "{}", tag as char);
        }
    }

    #[test]
    fn which_errors_retry() {
        let error = |code: &str| {
            crate::wire::messages::ProxyError::postgres("57P01", "x")
                .with_code(code.to_string())
                .to_bytes()
                .slice(5..)
        };
        let leader = Some(Role::Leader);
        assert_eq!(
            retryable_error(&error("57P01"), leader, false),
            Some(Retry::IfShuttingDown)
        );
        assert_eq!(
            retryable_error(&error("57P02"), leader, false),
            Some(Retry::Now)
        );
        assert_eq!(
            retryable_error(&error("57P03"), Some(Role::Replica), false),
            Some(Retry::Now)
        );
        assert_eq!(retryable_error(&error("25006"), leader, false), None);
        assert_eq!(
            retryable_error(&error("25006"), leader, true),
            Some(Retry::Now)
        );
        assert_eq!(retryable_error(&error("23505"), leader, true), None);
    }
}
