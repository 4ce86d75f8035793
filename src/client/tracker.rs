//! What a server still owes its client, so that in transaction mode the
//! server goes back to the pool exactly when it is idle and in sync.
//!
//! Every Sync, Query and FunctionCall is answered by one ReadyForQuery,
//! except that a server in COPY FROM STDIN consumes and ignores Sync and
//! Flush until CopyDone/CopyFail. Extended-protocol messages sent without a
//! Sync yet (a Flush-driven pipeline, as asyncpg and pgx send) keep the
//! server busy too.

use std::collections::VecDeque;

/// One thing forwarded to the server that shapes its answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Sync: answered by ReadyForQuery.
    Sync,
    /// Query or FunctionCall: answered by ReadyForQuery.
    Query,
    /// CopyDone/CopyFail sent before the server said CopyInResponse.
    CopyEnd,
}

/// Tracks the messages in flight between one client and its server.
#[derive(Debug, Default)]
pub struct SyncTracker {
    pending: VecDeque<Expect>,
    /// The server is in COPY FROM STDIN and will ignore Sync.
    copy_in: bool,
    /// Extended-protocol messages were sent since the last Sync.
    unsynced: bool,
}

impl SyncTracker {
    /// A client message with type `tag` is being forwarded to the server.
    pub fn client_message(&mut self, tag: u8) {
        match tag {
            b'S' => {
                if !self.copy_in {
                    self.pending.push_back(Expect::Sync);
                    self.unsynced = false;
                }
            }
            b'Q' | b'F' => self.pending.push_back(Expect::Query),
            b'c' | b'f' => {
                if self.copy_in {
                    self.copy_in = false;
                } else {
                    self.pending.push_back(Expect::CopyEnd);
                }
            }
            b'H' | b'd' => {}
            _ => self.unsynced = true,
        }
    }

    /// The server sent CopyInResponse: Syncs sent after the command that
    /// started the copy and before its CopyDone/CopyFail will be ignored.
    /// In the extended protocol that leaves the Execute unsynced until a
    /// Sync after the CopyDone arrives.
    pub fn server_copy_in(&mut self) {
        let end = self.pending.iter().position(|e| *e == Expect::CopyEnd);
        let upto = end.unwrap_or(self.pending.len());
        let mut kept = VecDeque::with_capacity(self.pending.len());
        let mut voided_sync = false;
        let mut sync_after_end = false;
        for (i, e) in self.pending.drain(..).enumerate() {
            if i < upto && e == Expect::Sync {
                voided_sync = true;
            } else if Some(i) != end {
                sync_after_end |= end.is_some_and(|end| i > end) && e == Expect::Sync;
                kept.push_back(e);
            }
        }
        self.pending = kept;
        self.copy_in = end.is_none();
        if voided_sync && !sync_after_end {
            self.unsynced = true;
        }
    }

    /// The server sent ErrorResponse; it leaves copy-in mode if it was in it.
    pub fn server_error(&mut self) {
        self.copy_in = false;
    }

    /// The server sent ReadyForQuery.
    pub fn server_ready(&mut self) {
        while self.pending.front() == Some(&Expect::CopyEnd) {
            self.pending.pop_front();
        }
        self.pending.pop_front();
    }

    /// Nothing is owed and nothing is half-sent: the server is in sync.
    /// A CopyDone/CopyFail with no command before it is stale (its copy
    /// already failed) and is forgotten here.
    pub fn is_idle(&mut self) -> bool {
        if self.pending.iter().all(|e| *e == Expect::CopyEnd) {
            self.pending.clear();
        }
        self.pending.is_empty() && !self.unsynced && !self.copy_in
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(t: &mut SyncTracker, tags: &[u8]) {
        for &tag in tags {
            t.client_message(tag);
        }
    }

    #[test]
    fn simple_query() {
        let mut t = SyncTracker::default();
        send(&mut t, b"Q");
        assert!(!t.is_idle());
        t.server_ready();
        assert!(t.is_idle());
    }

    #[test]
    fn pipeline_with_several_syncs() {
        let mut t = SyncTracker::default();
        send(&mut t, b"PBDESBES");
        t.server_ready();
        assert!(!t.is_idle());
        t.server_ready();
        assert!(t.is_idle());
    }

    #[test]
    fn flush_without_sync_keeps_server() {
        let mut t = SyncTracker::default();
        send(&mut t, b"PBEH");
        assert!(!t.is_idle());
        send(&mut t, b"S");
        t.server_ready();
        assert!(t.is_idle());
    }

    #[test]
    fn extended_copy_in_ignores_sync_sent_with_execute() {
        // tokio-postgres: Bind, Execute, Sync, then data, CopyDone, Sync.
        let mut t = SyncTracker::default();
        send(&mut t, b"BES");
        t.server_copy_in();
        send(&mut t, b"ddc");
        assert!(!t.is_idle());
        send(&mut t, b"S");
        t.server_ready();
        assert!(t.is_idle());
    }

    #[test]
    fn extended_copy_in_all_pipelined_before_server_answers() {
        let mut t = SyncTracker::default();
        send(&mut t, b"BESdcS");
        t.server_copy_in();
        t.server_ready();
        assert!(t.is_idle());
    }

    #[test]
    fn simple_copy_in() {
        let mut t = SyncTracker::default();
        send(&mut t, b"Q");
        t.server_copy_in();
        send(&mut t, b"ddc");
        t.server_ready();
        assert!(t.is_idle());
    }

    #[test]
    fn copy_in_error_leaves_copy_mode() {
        let mut t = SyncTracker::default();
        send(&mut t, b"Q");
        t.server_copy_in();
        send(&mut t, b"d");
        t.server_error();
        t.server_ready();
        send(&mut t, b"dc");
        assert!(t.is_idle(), "a stale CopyDone owes no ReadyForQuery");
        send(&mut t, b"Q");
        t.server_ready();
        assert!(t.is_idle());
    }

    #[test]
    fn previous_sync_answered_before_copy() {
        let mut t = SyncTracker::default();
        send(&mut t, b"PBESBES");
        t.server_ready();
        t.server_copy_in();
        send(&mut t, b"cS");
        t.server_ready();
        assert!(t.is_idle());
    }
}
