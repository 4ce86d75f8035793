//! Client messages that transaction pooling must look at or rewrite:
//! prepared statement names (Parse, Bind, Describe, Close), the unnamed
//! statement across servers, and simple queries that change session state
//! (SET, DEALLOCATE, DISCARD ALL, and what pins a client to its server).
//!
//! In session mode without read/write splitting the server is the
//! client's own and nothing is rewritten.

use bytes::{BufMut, Bytes};
use std::sync::Arc;

use super::session::Session;
use super::statements::{ClassifyKey, Statement};
use super::tracker::Synthetic;
use crate::config::PoolMode;
use crate::route::classify::Summary;
use crate::route::session::{effects, may_have_effects, Effect};
use crate::wire::frame::{peek_header, read_cstr, Header, HEADER_LEN};
use crate::wire::messages::ProxyError;

/// The name at the start of a message body (`&[]` if malformed).
fn leading_name(body: &[u8]) -> &[u8] {
    read_cstr(body).map_or(&[][..], |(n, _)| n)
}

impl Session<'_> {
    /// Statements are pooled (and session state tracked) in transaction
    /// mode, and in session mode with read/write splitting, where a
    /// session's statements must exist on its leader and replica servers.
    pub(super) fn pooled_statements(&self) -> bool {
        self.mode == PoolMode::Transaction || self.settings.config.routing.read_write_split
    }

    fn standard_strings(&self) -> bool {
        self.login.params.get("standard_conforming_strings") != Some("off")
    }

    /// What classifying a text depends on besides the text.
    pub(super) fn classify_key(&self) -> ClassifyKey {
        (self.settings.epoch(), self.standard_strings())
    }

    /// Classifies statement text under `key` (text that is not UTF-8
    /// goes to the leader, unless it is a plain statement with the odd
    /// bytes inside a literal).
    pub(super) fn classify_text(&self, text: &[u8], key: ClassifyKey) -> Summary {
        self.settings.classifier.classify_bytes(text, key.1)
    }

    /// Whether the server holds the client's current unnamed statement.
    fn server_has_unnamed(&self) -> bool {
        match (self.statements.unnamed(), self.server.as_ref()) {
            (Some((_, seq)), Some(server)) => {
                server.unnamed_owner == Some((self.login.client_id, *seq))
            }
            _ => true,
        }
    }

    /// Looks at one client message (`body` is what follows its length);
    /// returns true when it must go through [`Session::rewrite`] instead of
    /// being forwarded as is. Also notes what a simple Query changes, and
    /// an unnamed Parse (forwarded as is).
    pub(super) fn needs_rewrite(&mut self, tag: u8, body: &[u8]) -> bool {
        if !self.pooled_statements() {
            return false;
        }
        match tag {
            b'P' => !self.note_unnamed_parse(body),
            b'B' => match read_cstr(body).and_then(|(_, rest)| read_cstr(rest)) {
                Some((statement, _)) => !statement.is_empty() || !self.server_has_unnamed(),
                None => false,
            },
            b'D' | b'C' => body.first() == Some(&b'S'),
            b'Q' => self.note_query(body),
            _ => false,
        }
    }

    /// An unnamed Parse goes to the server as the client sent it, in one
    /// run with the messages around it (pgbench -M extended and most
    /// drivers' one-off queries send Parse to Sync in one write): it is only
    /// noted. Returns false for a named Parse, which is rewritten.
    fn note_unnamed_parse(&mut self, body: &[u8]) -> bool {
        let name = leading_name(body);
        if !name.is_empty() {
            return false;
        }
        let rest = &body[(name.len() + 1).min(body.len())..];
        let query = leading_name(rest);
        let key = self.classify_key();
        let classifier = &self.settings.classifier;
        let (seq, summary) = self
            .statements
            .set_unnamed(rest, key, || classifier.classify_bytes(query, key.1));
        self.pin_for_parse(query, summary);
        if let Some(server) = self.server.as_deref_mut() {
            server.unnamed_owner = Some((self.login.client_id, seq));
        }
        true
    }

    /// A simple Query: destroys the unnamed statement, may change session
    /// state. Returns true for a DEALLOCATE of a protocol-level statement,
    /// which pgsplit answers itself.
    fn note_query(&mut self, body: &[u8]) -> bool {
        self.statements.drop_unnamed();
        if let Some(server) = self.server.as_deref_mut() {
            server.unnamed_owner = None;
        }
        if self.routing.take_effect_free_query(body) {
            // Routing found this very text to leave session state alone.
            return false;
        }
        let text = leading_name(body);
        let Some(found) = self.effects_of(text) else {
            return false;
        };
        let mut answer_myself = false;
        for effect in &found {
            match effect {
                Effect::Pin(reason) => self.pin(reason),
                Effect::DeallocateAll => {
                    self.statements.clear();
                    self.forget_server_statements();
                }
                Effect::DiscardAll => {
                    self.statements.clear();
                    self.forget_server_statements();
                    self.pinned = false;
                }
                Effect::Deallocate { name } => {
                    answer_myself = found.len() == 1 && self.statements.get(name).is_some();
                }
                _ => {}
            }
        }
        self.login.params.record_effects(found);
        answer_myself
    }

    /// The session effects of a query text, if it may have any.
    fn effects_of(&self, text: &[u8]) -> Option<Vec<Effect>> {
        if !may_have_effects(text) {
            return None;
        }
        let text = std::str::from_utf8(text).ok()?;
        Some(effects(text, self.standard_strings()))
    }

    fn forget_server_statements(&mut self) {
        if let Some(server) = self.server.as_deref_mut() {
            server.prepared.clear();
        }
    }

    fn pin(&mut self, reason: &str) {
        if !self.pinned {
            tracing::debug!(client = %self.login.peer, reason, "client pinned to its server");
            self.shared
                .pins
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.pinned = true;
        }
    }

    /// Answers with an error PostgreSQL would give, then skips to Sync.
    fn fail(&mut self, code: &'static str, message: String) {
        let error = ProxyError::postgres(code, message).to_bytes();
        self.tracker.synthetic(Synthetic::Error(error));
        self.skip_to_sync = true;
    }

    /// Queues `message` (tag + body parts) for the server.
    fn send(&mut self, tag: u8, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if self.scratch.capacity() == 0 {
            // Room for several messages: each is split off as it is made.
            self.scratch = super::spare::take(len + HEADER_LEN, 1024);
        } else {
            self.scratch.reserve(len + HEADER_LEN);
        }
        self.scratch.put_u8(tag);
        self.scratch.put_i32((len + 4) as i32);
        for p in parts {
            self.scratch.put_slice(p);
        }
        let message = self.scratch.split().freeze();
        self.to_server.push(message);
    }

    /// Makes sure the server has `statement`, slipping in a Parse (and a
    /// Close for an evicted statement) when it does not. `visible` is true
    /// when the client itself sent the Parse.
    fn ensure_prepared(&mut self, statement: &Arc<Statement>, visible: bool) {
        let capacity = self.settings.config.proxy.max_prepared_statements as usize;
        let Some(server) = self.server.as_deref_mut() else {
            return;
        };
        if server.prepared.touch(statement.id) {
            if visible {
                self.tracker.synthetic(Synthetic::ParseComplete);
            }
            return;
        }
        if let Some(evicted) = server.prepared.insert(statement.id, capacity) {
            let name = format!("pgsplit_{evicted}");
            self.send(b'C', &[b"S", name.as_bytes(), b"\0"]);
            self.tracker.close(false);
        }
        self.send(
            b'P',
            &[statement.server_name.as_bytes(), b"\0", &statement.body],
        );
        self.tracker.parse(visible, Some(statement.clone()));
    }

    /// Pins the client when a Parse carries a command that changes
    /// session state (not replayed over the extended protocol). Text
    /// the classifier found to leave session state alone cannot.
    fn pin_for_parse(&mut self, query: &[u8], summary: Summary) {
        if summary.leaves_session_alone() || !may_have_effects(query) {
            return;
        }
        if let Ok(text) = std::str::from_utf8(query) {
            if !effects(text, self.standard_strings()).is_empty() {
                self.pin("session command in a prepared statement");
            }
        }
    }

    /// Re-sends the client's unnamed statement to a server that holds
    /// another one (pgx describes in one round trip and executes in the
    /// next, possibly on another server).
    fn ensure_unnamed(&mut self) {
        if self.server_has_unnamed() {
            return;
        }
        let Some((body, seq)) = self.statements.unnamed().cloned() else {
            return;
        };
        self.send(b'P', &[b"\0", &body]);
        self.tracker.parse(false, None);
        if let Some(server) = self.server.as_deref_mut() {
            server.unnamed_owner = Some((self.login.client_id, seq));
        }
    }

    /// Answers Parse + Sync of a statement some server already parsed
    /// without taking a server, when the client holds none: libpq's
    /// PQprepare waits for this answer synchronously, and a single-threaded
    /// program with several connections would otherwise deadlock against
    /// its own open transactions. Returns the bytes consumed, or 0.
    pub(super) fn answer_prepare(&mut self, at: usize, parse_len: usize) -> usize {
        if self.mode != PoolMode::Transaction || self.server.is_some() {
            return 0;
        }
        let input = &self.client_in[at..];
        let sync = input.get(parse_len..parse_len + HEADER_LEN);
        if sync != Some(b"S\0\0\0\x04".as_slice()) {
            return 0;
        }
        let body = &input[HEADER_LEN..parse_len];
        let name = leading_name(body);
        if name.is_empty() {
            return 0;
        }
        let rest = &body[(name.len() + 1).min(body.len())..];
        let Some(statement) = self
            .shared
            .statements
            .get(rest)
            .filter(|s| s.is_confirmed())
        else {
            return 0;
        };
        let name = String::from_utf8_lossy(name).into_owned();
        if !self.statements.insert(&name, statement) {
            return 0;
        }
        self.to_client
            .push(Bytes::from_static(b"1\0\0\0\x04Z\0\0\0\x05I"));
        parse_len + HEADER_LEN
    }

    /// Answers Close of named statements followed by Sync without taking
    /// a server, when the client holds none: closing a client's name never
    /// touches a server (the pooled statement stays), and drivers such as
    /// tokio-postgres send this pair after every one-off query. Returns the
    /// bytes consumed, or 0.
    pub(super) fn answer_close(&mut self, at: usize) -> usize {
        if self.mode != PoolMode::Transaction || self.server.is_some() {
            return 0;
        }
        let input = &self.client_in[at..];
        let mut pos = 0;
        let mut names = Vec::new();
        while let Ok(Some(h)) = peek_header(&input[pos..], usize::MAX) {
            if input.len() - pos < h.total_len {
                return 0;
            }
            let body = &input[pos + HEADER_LEN..pos + h.total_len];
            match (h.tag, body.first()) {
                (b'C', Some(b'S')) if body.len() > 2 => names.push(leading_name(&body[1..])),
                (b'S', _) if !names.is_empty() => {
                    let consumed = pos + h.total_len;
                    for name in names {
                        let name = String::from_utf8_lossy(name).into_owned();
                        self.statements.remove(&name);
                        self.to_client.push(Bytes::from_static(b"3\0\0\0\x04"));
                    }
                    self.to_client.push(Bytes::from_static(b"Z\0\0\0\x05I"));
                    return consumed;
                }
                _ => return 0,
            }
            pos += h.total_len;
        }
        0
    }

    /// Handles a message [`Session::needs_rewrite`] picked.
    pub(super) fn rewrite(&mut self, header: Header, message: Bytes) {
        self.replay.record(&message);
        let body = message.slice(HEADER_LEN..);
        match header.tag {
            b'P' => self.rewrite_parse(body),
            b'B' => self.rewrite_bind(&message, body),
            b'D' => self.rewrite_describe(&message, body),
            b'C' => self.rewrite_close(&message, body),
            b'Q' => {
                // A DEALLOCATE of a statement pgsplit pooled.
                if let Some(name) = deallocated_name(&body) {
                    self.statements.remove(&name);
                }
                self.tracker
                    .synthetic(Synthetic::CommandAndReady("DEALLOCATE"));
                // Nothing goes to the server: the answer must not wait for it.
                self.replay.stop();
            }
            _ => self.forward(header.tag, message),
        }
    }

    fn forward(&mut self, tag: u8, message: Bytes) {
        self.tracker.client_message(tag, &message[HEADER_LEN..]);
        self.to_server.push(message);
    }

    /// A named Parse: the client's name maps onto a pooled statement,
    /// which the server is given under its pooled name unless it has it.
    fn rewrite_parse(&mut self, body: Bytes) {
        let name = leading_name(&body);
        let rest = body.slice((name.len() + 1).min(body.len())..);
        let query = leading_name(&rest);
        let key = self.classify_key();
        let name = String::from_utf8_lossy(name).into_owned();
        let statement = self
            .shared
            .statements
            .intern(rest.clone(), || self.classify_text(query, key));
        self.pin_for_parse(query, statement.summary);
        if !self.statements.insert(&name, statement.clone()) {
            self.fail(
                "42P05",
                format!("prepared statement \"{name}\" already exists"),
            );
            return;
        }
        self.replay.named(&name);
        self.ensure_prepared(&statement, true);
    }

    /// The pooled statement behind a client's name, or the error
    /// PostgreSQL gives for an unknown one.
    fn lookup(&mut self, name: &[u8]) -> Option<Arc<Statement>> {
        let name = String::from_utf8_lossy(name);
        let found = self.statements.get(&name).cloned();
        if found.is_none() {
            self.fail(
                "26000",
                format!("prepared statement \"{name}\" does not exist"),
            );
        }
        found
    }

    fn rewrite_bind(&mut self, message: &Bytes, body: Bytes) {
        let portal = leading_name(&body);
        let after_portal = &body[(portal.len() + 1).min(body.len())..];
        let statement = leading_name(after_portal);
        if statement.is_empty() {
            self.ensure_unnamed();
            self.forward(b'B', message.clone());
            return;
        }
        let Some(pooled) = self.lookup(statement) else {
            return;
        };
        self.ensure_prepared(&pooled, false);
        let rest = &after_portal[(statement.len() + 1).min(after_portal.len())..];
        self.send(
            b'B',
            &[portal, b"\0", pooled.server_name.as_bytes(), b"\0", rest],
        );
        self.tracker.client_message(b'B', &[]);
    }

    fn rewrite_describe(&mut self, message: &Bytes, body: Bytes) {
        let name = leading_name(&body[1..]);
        if name.is_empty() {
            self.ensure_unnamed();
            self.forward(b'D', message.clone());
            return;
        }
        let Some(pooled) = self.lookup(name) else {
            return;
        };
        self.ensure_prepared(&pooled, false);
        self.send(b'D', &[b"S", pooled.server_name.as_bytes(), b"\0"]);
        self.tracker.describe(true);
    }

    fn rewrite_close(&mut self, message: &Bytes, body: Bytes) {
        let name = leading_name(&body[1..]);
        if name.is_empty() {
            self.statements.drop_unnamed();
            self.forward(b'C', message.clone());
            return;
        }
        // The pooled statement stays on the servers for other clients;
        // closing a name that does not exist is not an error.
        self.statements.remove(&String::from_utf8_lossy(name));
        self.tracker.synthetic(Synthetic::CloseComplete);
    }
}

/// The statement name in a single `DEALLOCATE [PREPARE] name` query body.
fn deallocated_name(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(leading_name(body)).ok()?;
    match effects(text, true).as_slice() {
        [Effect::Deallocate { name }] => Some(name.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::messages::parse_error_fields;

    #[test]
    fn errors_in_postgres_words() {
        let e = ProxyError::postgres("26000", "prepared statement \"x\" does not exist").to_bytes();
        let len = i32::from_be_bytes([e[1], e[2], e[3], e[4]]) as usize;
        assert_eq!(len + 1, e.len());
        let f = parse_error_fields(&e[5..]);
        assert_eq!(f.message, "prepared statement \"x\" does not exist");
        assert_eq!(f.code, "26000");
    }

    #[test]
    fn deallocate_names() {
        assert_eq!(deallocated_name(b"DEALLOCATE s1\0"), Some("s1".into()));
        assert_eq!(deallocated_name(b"DEALLOCATE ALL\0"), None);
        assert_eq!(deallocated_name(b"SELECT 1\0"), None);
    }
}
