//! What the held server sends back and what becomes of it: answers queued
//! for the client as they arrive (only ReadyForQuery, ParameterStatus,
//! NoticeResponse and ErrorResponse are looked at), answers to messages
//! pgsplit slipped in dropped, answers pgsplit made up emitted in their
//! place, a refusal turned into a retry (see [`super::replay`]), and a
//! server that goes away mid-request.

use bytes::Bytes;
use std::time::Instant;

use super::replay::{precedes_execution, retryable_error, Retry};
use super::session::{between_requests, CloseReason, Session};
use super::tracker::Verdict;
use crate::config::PoolMode;
use crate::pool::pools::discard;
use crate::topology::Role;
use crate::wire::frame::{peek_header, read_cstr, HEADER_LEN};
use crate::wire::messages::ProxyError;

/// What a batch of server messages means for the held server.
pub(super) enum ServerData {
    Keep,
    /// Idle and in sync: back to the pool.
    Release,
    /// It refused the request before it ran and before the client heard
    /// anything: send it again (`when` allows). `answered` bytes of its
    /// buffer were taken in but not queued for the client.
    Retry {
        why: &'static str,
        when: Retry,
        answered: usize,
    },
}

impl Session<'_> {
    /// Queues what the server sent for the client, noting what must be
    /// noted, dropping answers to messages pgsplit slipped in and emitting
    /// answers pgsplit made up. Returns whether the server can go back to
    /// the pool now.
    pub(super) fn on_server_data(&mut self) -> Result<ServerData, &'static str> {
        let Some(server) = self.server.as_deref_mut() else {
            return Ok(ServerData::Keep);
        };
        let mut off = 0;
        let mut release = false;
        // Whether the messages before `off` show that the request ran (a
        // row, a command tag, ...), not only that it was parsed and bound.
        let mut ran = false;
        loop {
            if self.server_passthrough > 0 {
                let n = self.server_passthrough.min(server.rbuf.len() - off);
                off += n;
                self.server_passthrough -= n;
                if self.server_passthrough > 0 {
                    break;
                }
                continue;
            }
            let header = match peek_header(&server.rbuf[off..], usize::MAX) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(_) => return Err("server sent an invalid message length"),
            };
            let available = server.rbuf.len() - off;
            if matches!(header.tag, b'D' | b'd') {
                // Rows and copy data: the bulk of the traffic, never examined.
                ran = true;
                if available >= header.total_len {
                    off += header.total_len;
                } else {
                    // Stream the rest of a large message as it arrives.
                    self.server_passthrough = header.total_len - available;
                    off = server.rbuf.len();
                    break;
                }
                continue;
            }
            if available < header.total_len {
                server.rbuf.reserve(header.total_len - available);
                break;
            }
            if header.tag == b'E'
                && between_requests(
                    server.status,
                    self.mode,
                    self.pinned,
                    &self.to_server,
                    &mut self.tracker,
                )
            {
                // Nothing was asked of it: the server is going away (a
                // FATAL while idle, as in a shutdown). The client, whose
                // answers are all in, need not hear of it.
                server.broken = true;
                server.rbuf.truncate(off);
                release = true;
                break;
            }
            if header.tag == b'E' && !ran && self.replay.possible(self.to_client.pushed()) {
                let refusal = retryable_error(
                    &server.rbuf[off + HEADER_LEN..off + header.total_len],
                    self.routing.held,
                    server.in_hot_standby() == Some(true),
                );
                if let Some(when) = refusal {
                    return Ok(ServerData::Retry {
                        why: "the server refused the request before running it",
                        when,
                        answered: off,
                    });
                }
            }
            if self.tracker.has_due() {
                // Answers pgsplit made up and held back while the request
                // could still be sent again go out before the server's.
                if off > 0 {
                    self.to_client.push(server.rbuf.split_to(off).freeze());
                    off = 0;
                }
                while let Some(due) = self.tracker.take_due() {
                    self.to_client.push(due.encode(server.status));
                }
            }
            let body = &server.rbuf[off + HEADER_LEN..off + header.total_len];
            match header.tag {
                b'Z' => server.status = body.first().copied().unwrap_or(b'I'),
                b'S' => {
                    if let Some((name, value)) = parameter_status(body) {
                        if name == "in_hot_standby" {
                            // Promoted or demoted under this connection.
                            let in_recovery = value == "on";
                            self.routing.server_recovery(in_recovery);
                            server.broken |= in_recovery && self.routing.held == Some(Role::Leader);
                        }
                        server.set_param(&name, &value);
                        self.login.params.follow_report(&name, &value);
                    }
                }
                b'N' if is_orphaned_commit_warning(body) => {
                    // The server will close without a ReadyForQuery.
                    server.broken = true;
                    server.orphaned_commit = true;
                }
                b'E' => self.login.params.transaction_failed(),
                b'C' if self.login.params.has_pending() && body.starts_with(b"ROLLBACK") => {
                    self.login.params.transaction_failed()
                }
                _ => {}
            }
            let verdict = self.tracker.server_message(header.tag);
            if verdict == Verdict::Drop {
                if off > 0 {
                    self.to_client.push(server.rbuf.split_to(off).freeze());
                    off = 0;
                }
                let _ = server.rbuf.split_to(header.total_len);
            } else {
                off += header.total_len;
                ran |= !precedes_execution(header.tag);
            }
            if header.tag == b'Z' {
                self.routing.server_ready(server.status);
                self.login.params.ready(server.status, server);
                if self.idle.is_some() {
                    // Idle time counts from the end of the last request.
                    self.last_activity = Instant::now();
                }
            }
            if let Some(due) = self.tracker.take_due() {
                if off > 0 {
                    self.to_client.push(server.rbuf.split_to(off).freeze());
                    off = 0;
                }
                self.to_client.push(due.encode(server.status));
                while let Some(due) = self.tracker.take_due() {
                    self.to_client.push(due.encode(server.status));
                }
            }
            if header.tag == b'Z'
                && self.mode == PoolMode::Transaction
                && !self.pinned
                && server.status == b'I'
                && off == server.rbuf.len()
                && self.to_server.is_empty()
                && self.tracker.is_idle()
            {
                release = true;
                break;
            }
        }
        if off > 0 {
            self.to_client.push(server.rbuf.split_to(off).freeze());
        }
        if self.tracker.has_failed_statements() {
            for id in self.tracker.take_failed_statements() {
                server.prepared.forget(id);
            }
        }
        Ok(if release {
            ServerData::Release
        } else {
            ServerData::Keep
        })
    }

    /// Whether the held server is shutting down (a probe; rare, so
    /// boxed).
    pub(super) async fn held_server_shutting_down(&self) -> bool {
        match self.server.as_ref() {
            Some(server) => Box::pin(server.server_shutting_down()).await,
            None => true,
        }
    }

    /// The server ended the backend on its own (`pg_terminate_backend()`),
    /// not in a shutdown: the request fails as PostgreSQL reports it. What
    /// was taken in before the error goes to the client first, after any
    /// answers pgsplit made up and held back.
    pub(super) fn forward_refusal(&mut self, answered: usize) -> Result<ServerData, &'static str> {
        self.replay.stop();
        self.emit_due();
        if let Some(server) = self.server.as_deref_mut() {
            if answered > 0 {
                self.to_client.push(server.rbuf.split_to(answered).freeze());
            }
        }
        self.on_server_data()
    }

    /// Queues answers pgsplit made up that are now due.
    pub(super) fn emit_due(&mut self) {
        let status = self.server.as_ref().map_or(b'I', |s| s.status);
        while let Some(due) = self.tracker.take_due() {
            self.to_client.push(due.encode(status));
        }
    }

    /// The server closed after warning that it stopped waiting for
    /// synchronous replication of a commit because it is shutting down
    /// (what a fast shutdown, and so a Patroni switchover, does to a
    /// backend in that wait): the transaction committed locally, and a
    /// clean shutdown streams it to the standbys. When only the final
    /// Sync's ReadyForQuery is missing, pgsplit reports the commit, as
    /// PostgreSQL itself does when that wait is cancelled (the client has
    /// the warning), and the session goes on with a new server. Returns
    /// false when more was owed: the client is then told the server was
    /// lost.
    pub(super) async fn finish_orphaned_commit(&mut self) -> bool {
        let orphaned = self.server.as_ref().is_some_and(|s| s.orphaned_commit);
        if !orphaned || !self.tracker.take_lone_sync() {
            return false;
        }
        if let Some(server) = self.server.take() {
            tracing::info!(server = %server.addr, "server shut down after a local commit; reported the commit to the client");
            self.login.cancel.release().await;
            discard(server);
        }
        self.to_client.push(Bytes::from_static(b"Z\0\0\0\x05I"));
        self.reset_server_stream();
        self.release_server().await;
        if self.to_client.write_now(&mut self.client_wr).is_err() {
            return false;
        }
        true
    }

    /// The server failed mid-use: close it and tell the client. Rare, so
    /// boxed.
    pub(super) async fn lose_server(&mut self, problem: &str) -> CloseReason {
        Box::pin(self.server_lost(problem)).await
    }

    async fn server_lost(&mut self, problem: &str) -> CloseReason {
        if let Some(server) = self.server.take() {
            let addr = server.addr.clone();
            self.login.cancel.release().await;
            discard(server);
            tracing::warn!(server = %addr, problem, "server connection lost");
            let message = format!("lost connection to server {addr}: {problem}");
            self.farewell(ProxyError::fatal("08006", message)).await;
        }
        CloseReason::ServerLost
    }
}

/// A NoticeResponse saying the backend stopped waiting for synchronous
/// replication of its commit because it is being terminated: a WARNING
/// with SQLSTATE 57P01, which PostgreSQL sends only there.
fn is_orphaned_commit_warning(body: &[u8]) -> bool {
    crate::wire::messages::parse_error_fields(body).code == "57P01"
}

/// Name and value of a ParameterStatus body.
fn parameter_status(body: &[u8]) -> Option<(String, String)> {
    let (name, rest) = read_cstr(body)?;
    let (value, _) = read_cstr(rest)?;
    Some((
        String::from_utf8_lossy(name).into_owned(),
        String::from_utf8_lossy(value).into_owned(),
    ))
}
