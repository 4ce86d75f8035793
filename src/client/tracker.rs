//! What a server still owes its client, message by message, so that
//!
//! - in transaction mode the server goes back to the pool exactly when it is
//!   idle and in sync;
//! - answers pgsplit makes up itself (a ParseComplete for a statement the
//!   server already has, a CloseComplete, an error PostgreSQL would have
//!   given) reach the client in the right place in the stream;
//! - answers to messages pgsplit slipped in (a Parse before a Bind on a
//!   server that lacks the statement) never reach the client.
//!
//! Every forwarded message is a unit that the server's messages complete in
//! order. After an ErrorResponse the server skips to the next Sync, so the
//! units up to that Sync are dropped unanswered. A server in COPY FROM
//! STDIN consumes and ignores Sync and Flush until CopyDone/CopyFail.

use bytes::{BufMut, Bytes, BytesMut};
use std::collections::VecDeque;
use std::sync::Arc;

use super::statements::Statement;

/// A response pgsplit makes up for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Synthetic {
    ParseComplete,
    CloseComplete,
    /// A whole ErrorResponse message.
    Error(Bytes),
    /// CommandComplete with this tag, then ReadyForQuery.
    CommandAndReady(&'static str),
}

impl Synthetic {
    /// The bytes for the client; `status` is the transaction status to
    /// report in a ReadyForQuery.
    pub fn encode(&self, status: u8) -> Bytes {
        let mut b = BytesMut::with_capacity(32);
        match self {
            Synthetic::ParseComplete => b.put_slice(b"1\0\0\0\x04"),
            Synthetic::CloseComplete => b.put_slice(b"3\0\0\0\x04"),
            Synthetic::Error(e) => return e.clone(),
            Synthetic::CommandAndReady(tag) => {
                b.put_u8(b'C');
                b.put_i32(tag.len() as i32 + 5);
                b.put_slice(tag.as_bytes());
                b.put_u8(0);
                b.put_slice(b"Z\0\0\0\x05");
                b.put_u8(status);
            }
        }
        b.freeze()
    }
}

/// One forwarded message (or a made-up answer) awaiting its response.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Unit {
    /// Parse; `visible` false for a Parse pgsplit slipped in; `statement`
    /// is the pooled statement id it creates on the server.
    Parse {
        visible: bool,
        statement: Option<Arc<Statement>>,
    },
    Bind,
    /// Describe of a statement ('t' then 'T'/'n') or portal ('T'/'n').
    Describe {
        statement: bool,
        saw_parameters: bool,
    },
    Execute,
    Close {
        visible: bool,
    },
    Sync,
    /// Query or FunctionCall: everything up to ReadyForQuery.
    Query,
    /// A Query pgsplit sent ahead of the client's (a deferred BEGIN): its
    /// CommandComplete and ReadyForQuery are not the client's.
    HiddenQuery,
    /// CopyDone/CopyFail sent before the server said CopyInResponse.
    CopyEnd,
    Synthetic(Synthetic),
}

/// What to do with one server message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Forward,
    /// An answer to a message pgsplit slipped in: the client must not see it.
    Drop,
}

/// Tracks the messages in flight between one client and its server.
#[derive(Debug, Default)]
pub struct Tracker {
    units: VecDeque<Unit>,
    /// How many of `units` are [`Unit::CopyEnd`]: nearly always none, and
    /// then the unit a server message belongs to is simply the first.
    copy_ends: usize,
    /// The server is in COPY FROM STDIN and will ignore Sync.
    copy_in: bool,
    /// Extended-protocol messages were sent since the last Sync.
    unsynced: bool,
    /// Pooled statements whose Parse failed or was skipped: the server does
    /// not have them after all.
    failed_statements: Vec<u64>,
}

impl Tracker {
    /// A client message with type `tag` is being forwarded unchanged;
    /// `body` is what follows its length field.
    pub fn client_message(&mut self, tag: u8, body: &[u8]) {
        match tag {
            b'S' => {
                if !self.copy_in {
                    self.units.push_back(Unit::Sync);
                    self.unsynced = false;
                }
            }
            b'Q' | b'F' => self.units.push_back(Unit::Query),
            b'c' | b'f' => {
                if self.copy_in {
                    self.copy_in = false;
                } else {
                    self.units.push_back(Unit::CopyEnd);
                    self.copy_ends += 1;
                }
            }
            b'H' | b'd' => {}
            b'P' => self.parse(true, None),
            b'B' => self.push(Unit::Bind),
            b'E' => self.push(Unit::Execute),
            b'C' => self.close(true),
            b'D' => self.describe(body.first() == Some(&b'S')),
            _ => self.unsynced = true,
        }
    }

    fn push(&mut self, unit: Unit) {
        self.units.push_back(unit);
        self.unsynced = true;
    }

    /// A Parse is forwarded (possibly renamed, possibly slipped in).
    pub fn parse(&mut self, visible: bool, statement: Option<Arc<Statement>>) {
        self.push(Unit::Parse { visible, statement });
    }

    /// A Describe is forwarded: of a statement or of a portal.
    pub fn describe(&mut self, statement: bool) {
        self.push(Unit::Describe {
            statement,
            saw_parameters: false,
        });
    }

    /// A Close is forwarded (`visible` false when pgsplit evicts a
    /// statement on its own).
    pub fn close(&mut self, visible: bool) {
        self.push(Unit::Close { visible });
    }

    /// A Query pgsplit sends on its own, whose answer the client never sees
    /// (errors excepted).
    pub fn hidden_query(&mut self) {
        self.units.push_back(Unit::HiddenQuery);
    }

    /// An answer pgsplit makes up goes here in the stream.
    pub fn synthetic(&mut self, s: Synthetic) {
        self.units.push_back(Unit::Synthetic(s));
    }

    /// Whether a made-up answer is due now.
    pub fn has_due(&self) -> bool {
        matches!(self.units.front(), Some(Unit::Synthetic(_)))
    }

    /// Made-up answers now due (nothing the server owes precedes them).
    pub fn take_due(&mut self) -> Option<Synthetic> {
        match self.units.front() {
            Some(Unit::Synthetic(_)) => match self.units.pop_front() {
                Some(Unit::Synthetic(s)) => Some(s),
                _ => None,
            },
            _ => None,
        }
    }

    /// Statements the server turned out not to have; drain after each batch.
    pub fn take_failed_statements(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.failed_statements)
    }

    /// Whether any statement failed since the last `take_failed_statements`.
    pub fn has_failed_statements(&self) -> bool {
        !self.failed_statements.is_empty()
    }

    /// The unit the next server message belongs to (made-up answers are
    /// emitted before, so they are never in front here).
    /// (`matches!`, not `==`: the derived comparison was not inlined and
    /// cost some 150 instructions per extended-protocol transaction.)
    fn front(&mut self) -> Option<&mut Unit> {
        if self.copy_ends == 0 {
            return self.units.front_mut();
        }
        self.units.iter_mut().find(|u| !matches!(u, Unit::CopyEnd))
    }

    fn complete_front(&mut self) -> Option<Unit> {
        while self.copy_ends > 0 && matches!(self.units.front(), Some(Unit::CopyEnd)) {
            self.pop_front();
        }
        self.pop_front()
    }

    /// Takes the first unit off, keeping count of CopyEnds.
    fn pop_front(&mut self) -> Option<Unit> {
        let unit = self.units.pop_front();
        if matches!(unit, Some(Unit::CopyEnd)) {
            self.copy_ends -= 1;
        }
        unit
    }

    /// Forgets every unit.
    fn clear(&mut self) {
        self.units.clear();
        self.copy_ends = 0;
    }

    /// One server message of type `tag` arrived; says whether the client
    /// sees it.
    pub fn server_message(&mut self, tag: u8) -> Verdict {
        match tag {
            // Asynchronous: any time, owned by no unit.
            b'N' | b'A' | b'S' => return Verdict::Forward,
            b'E' => return self.server_error(),
            b'G' => {
                self.server_copy_in();
                return Verdict::Forward;
            }
            b'Z' => {
                self.copy_in = false;
                return match self.complete_front() {
                    Some(Unit::HiddenQuery) => Verdict::Drop,
                    _ => Verdict::Forward,
                };
            }
            _ => {}
        }
        let Some(front) = self.front() else {
            return Verdict::Forward;
        };
        if matches!(front, Unit::HiddenQuery) {
            return Verdict::Drop;
        }
        let (done, verdict) = match (front, tag) {
            (Unit::Parse { visible, statement }, b'1') => {
                if let Some(s) = statement {
                    s.confirm();
                }
                (true, visible_verdict(*visible))
            }
            (Unit::Bind, b'2') => (true, Verdict::Forward),
            (Unit::Close { visible }, b'3') => (true, visible_verdict(*visible)),
            (
                Unit::Describe {
                    statement: true,
                    saw_parameters,
                },
                b't',
            ) => {
                *saw_parameters = true;
                (false, Verdict::Forward)
            }
            (Unit::Describe { .. }, b'T' | b'n') => (true, Verdict::Forward),
            (Unit::Execute, b'C' | b's' | b'I') => (true, Verdict::Forward),
            _ => (false, Verdict::Forward),
        };
        if done {
            self.complete_front();
        }
        verdict
    }

    /// ErrorResponse: in a simple Query it is part of the answer; in the
    /// extended protocol it ends the current unit and the server skips to
    /// the next Sync, leaving the units before it unanswered.
    fn server_error(&mut self) -> Verdict {
        self.copy_in = false;
        if matches!(self.front(), Some(Unit::Query | Unit::HiddenQuery) | None) {
            return Verdict::Forward;
        }
        while let Some(unit) = self.units.front() {
            if matches!(unit, Unit::Sync | Unit::Query | Unit::HiddenQuery) {
                break;
            }
            if let Some(Unit::Parse {
                statement: Some(id),
                ..
            }) = self.pop_front()
            {
                self.failed_statements.push(id.id);
            }
        }
        Verdict::Forward
    }

    /// CopyInResponse: Syncs sent after the command that started the copy
    /// and before its CopyDone/CopyFail will be ignored. In the extended
    /// protocol the Execute then waits for a Sync after the CopyDone.
    fn server_copy_in(&mut self) {
        let Some(owner) = self.units.iter().position(|u| *u != Unit::CopyEnd) else {
            return;
        };
        let is_query = self.units[owner] == Unit::Query;
        let end = self
            .units
            .iter()
            .skip(owner + 1)
            .position(|u| *u == Unit::CopyEnd)
            .map(|p| p + owner + 1);
        let upto = end.unwrap_or(self.units.len());
        let mut kept = VecDeque::with_capacity(self.units.len());
        let mut sync_after_end = false;
        for (i, u) in self.units.drain(..).enumerate() {
            let voided = i > owner && i < upto && u == Unit::Sync;
            if voided || Some(i) == end {
                continue;
            }
            sync_after_end |= end.is_some_and(|end| i > end) && u == Unit::Sync;
            kept.push_back(u);
        }
        self.copy_ends = kept.iter().filter(|u| **u == Unit::CopyEnd).count();
        self.units = kept;
        self.copy_in = end.is_none();
        if !is_query && !sync_after_end {
            self.unsynced = true;
        }
    }

    /// Everything the client sent was answered but for the ReadyForQuery
    /// of one final Sync (the commit of an extended-protocol request
    /// happens there). Takes that Sync off when so.
    pub fn take_lone_sync(&mut self) -> bool {
        let lone = !self.unsynced
            && !self.copy_in
            && self.units.len() == 1
            && matches!(self.units.front(), Some(Unit::Sync));
        if lone {
            self.clear();
        }
        lone
    }

    /// Nothing is owed and nothing is half-sent: the server is in sync.
    /// A CopyDone/CopyFail with no command before it is stale (its copy
    /// already failed) and is forgotten here.
    pub fn is_idle(&mut self) -> bool {
        // Asked on every turn of the request loop: a count, not a look
        // at every unit.
        if self.copy_ends != self.units.len() {
            return false;
        }
        if self.copy_ends > 0 {
            self.clear();
        }
        !self.unsynced && !self.copy_in
    }
}

fn visible_verdict(visible: bool) -> Verdict {
    if visible {
        Verdict::Forward
    } else {
        Verdict::Drop
    }
}

#[cfg(test)]
mod tests;
