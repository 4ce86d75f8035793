//! Where each request of a session runs: the session's half of routing.
//!
//! A request ("unit") is a simple Query, or extended-protocol messages up
//! to and including a Sync. At the first message of a unit pgsplit looks
//! at the whole unit as far as it has arrived and decides leader or
//! replica: read-only alias, then a leading comment hint, then the
//! session's `pgsplit.target`, then a deferred BEGIN, then the statements'
//! classes ([`crate::route::policy`]). Then it makes sure the session holds
//! a server of that role (taking one is [`super::acquire`]'s part):
//! - no server: one from the chosen member's pool;
//! - a server of the other role that is idle and in sync: given back
//!   (transaction mode) or parked for later (session mode), and the right
//!   one taken;
//! - a server inside a transaction: the unit stays with it (a write in a
//!   read-only transaction fails with 25006, as PostgreSQL says);
//! - a replica still busy with earlier requests while this one needs the
//!   leader: client input waits until the replica is done, so pipelined
//!   requests keep their order.
//!
//! A unit whose Execute has arrived but whose Sync has not goes to the
//! leader: pgsplit cannot see the rest of it. A lone simple-query BEGIN
//! is answered by pgsplit and sent ahead of the transaction's first
//! request, once that request shows where the transaction belongs.
//!
//! Read-your-writes: when work that may have written ends on the leader
//! (an autocommit write, or any transaction block there), the time is
//! noted in a [`WriteMark`] (the session's own, or shared by the user's
//! sessions). Later reads go only to replicas that have replayed the WAL
//! position the first leader probe sent after that time saw; until such a
//! probe has answered, and whenever no replica qualifies, they go to the
//! leader. Nothing is added to the client's round trips.

use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::recycle::Recycled;
use super::session::{CloseReason, Session};
use crate::metrics::{Route, SessionMetrics};
use crate::pool::group::PoolGroup;
use crate::pool::pools::{PooledServer, ServerPool};
use crate::route::choose::Rng;
use crate::route::classify::{Summary, Target};
use crate::route::policy::{after_begin, decide, Decision};
use crate::topology::{
    now_nanos, seconds_since, Member, MemberState, Role, Topology, TopologyWatch,
};
use crate::wire::frame::{peek_header, read_cstr, HEADER_LEN};

/// When a session (or user) last finished work on the leader that may
/// have written; 0 for never.
#[derive(Debug, Default)]
pub struct WriteMark(AtomicU64);

impl WriteMark {
    /// Work that may have written ended at `at` (see [`now_nanos`]).
    pub fn note(&self, at: u64) {
        self.0.fetch_max(at, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A session's routing state.
pub struct Routing {
    pub cluster: String,
    pub group: Arc<PoolGroup>,
    /// Connected through a read-only alias: replicas only.
    pub read_only: bool,
    /// Role of the server the session holds.
    pub held: Option<Role>,
    /// Live state of the member the held server belongs to.
    pub held_member: Option<Arc<MemberState>>,
    /// Session mode: the server of the other role, kept for the session.
    pub parked: Option<(PooledServer, Role)>,
    /// The next client message starts a new unit.
    pub unit_start: bool,
    /// Client input waits until the held server is done.
    pub blocked: bool,
    /// The last scanned unit's Sync (or Query) had arrived.
    unit_complete: bool,
    /// A lone BEGIN pgsplit answered, to send ahead of the next unit.
    deferred_begin: Option<Bytes>,
    /// Work on the leader since the last idle ReadyForQuery may have written.
    wrote: bool,
    pub mark: Arc<WriteMark>,
    /// (mark, leader WAL position) resolved for read-your-writes.
    pub(super) resolved: (u64, u64),
    /// What the client's unnamed statement is, when known.
    unnamed: Option<Summary>,
    /// Unnamed Parses looked at by a scan and not yet forwarded.
    scanned_unnamed: usize,
    /// The session's own view of the topology, and the snapshot it last
    /// took from it: a new snapshot is taken only when one was published
    /// (a version comparison), instead of a read lock and a reference
    /// count shared by every session per transaction.
    topology: TopologyWatch,
    snapshot: Option<Arc<Topology>>,
    /// The pool last used, kept at hand: (group epoch, member address,
    /// pool). Saves the group's lock and map lookup per transaction.
    pool_at_hand: Option<(u64, Arc<str>, ServerPool)>,
    /// A simple Query's text the scan found to leave session state alone
    /// (address and length in the client's buffer): its session-state
    /// scan is skipped.
    effect_free_query: Option<(usize, u32)>,
    pub(super) rng: Rng,
    /// Counters and timers of this (cluster, database, user).
    pub metrics: Arc<SessionMetrics>,
    /// Where the held server's work counts: leader, replica, or fallback
    /// (a read the leader took because no replica qualified).
    pub route: Route,
    /// When the request in flight started (its first message), in
    /// [`now_nanos`]; 0 when none is.
    request_started: u64,
    /// When the transaction in flight started; 0 when none is.
    transaction_started: u64,
}

impl Routing {
    pub fn new(
        cluster: String,
        topology: TopologyWatch,
        group: Arc<PoolGroup>,
        read_only: bool,
        mark: Arc<WriteMark>,
        seed: u64,
        metrics: Arc<SessionMetrics>,
    ) -> Routing {
        Routing {
            cluster,
            group,
            read_only,
            held: None,
            held_member: None,
            parked: None,
            unit_start: true,
            blocked: false,
            unit_complete: false,
            deferred_begin: None,
            wrote: false,
            mark,
            resolved: (0, 0),
            unnamed: None,
            scanned_unnamed: 0,
            effect_free_query: None,
            topology,
            snapshot: None,
            pool_at_hand: None,
            rng: Rng::new(seed),
            metrics,
            route: Route::Leader,
            request_started: 0,
            transaction_started: 0,
        }
    }

    /// A client message was forwarded: note unit boundaries and what
    /// happens to the unnamed statement.
    pub fn forwarded(&mut self, tag: u8, body: &[u8]) {
        match tag {
            b'P' if body.first() == Some(&0) => {
                if self.scanned_unnamed > 0 {
                    self.scanned_unnamed -= 1;
                } else {
                    self.unnamed = None;
                }
            }
            b'Q' => self.unnamed = None,
            _ => {}
        }
        if self.unit_start && self.request_started == 0 {
            let now = now_nanos();
            self.request_started = now;
            if self.transaction_started == 0 {
                self.transaction_started = now;
            }
        }
        self.unit_start = matches!(tag, b'S' | b'Q' | b'F');
    }

    /// The newest topology snapshot, lent out: give it back with
    /// [`Routing::return_snapshot`].
    pub(super) fn take_snapshot(&mut self) -> Arc<Topology> {
        let stale = self.topology.has_changed().unwrap_or(true);
        match self.snapshot.take() {
            Some(snapshot) if !stale => snapshot,
            _ => self.topology.borrow_and_update().clone(),
        }
    }

    pub(super) fn return_snapshot(&mut self, snapshot: Arc<Topology>) {
        self.snapshot = Some(snapshot);
    }

    /// The pool of `member` in this session's group.
    pub fn pool_for(&mut self, member: &Member) -> &ServerPool {
        let epoch = self.group.epoch();
        let at_hand = matches!(&self.pool_at_hand,
            Some((e, addr, _)) if *e == epoch && **addr == *member.addr);
        if !at_hand {
            self.pool_at_hand = None;
        }
        let group = &self.group;
        let (_, _, pool) = self
            .pool_at_hand
            .get_or_insert_with(|| (epoch, member.addr.clone(), group.pool(member)));
        pool
    }

    /// Forgets the Query text the last scan noted (its message was not
    /// forwarded).
    pub fn forget_effect_free_query(&mut self) {
        self.effect_free_query = None;
    }

    /// Whether the Query `body` holds the text the last scan found to
    /// leave session state alone: the same bytes, ended by its NUL;
    /// forgets it either way. Compared by place, so the text is not
    /// searched for its end a second time.
    pub fn take_effect_free_query(&mut self, body: &[u8]) -> bool {
        self.effect_free_query
            .take()
            .is_some_and(|mark| holds_marked_text(mark, body))
    }

    /// The held server reported `in_hot_standby`: the member's role as it
    /// says it.
    pub fn server_recovery(&mut self, in_recovery: bool) {
        if let Some(member) = &self.held_member {
            member.observed(in_recovery);
        }
    }

    /// The request is sent again from its first message.
    pub fn restart_request(&mut self, begin: Option<Bytes>) {
        self.unit_start = true;
        self.scanned_unnamed = 0;
        if begin.is_some() {
            self.deferred_begin = begin;
        }
    }

    /// ReadyForQuery with `status` from the held server: a request ended
    /// (and a transaction, when idle). A pipelined request whose start
    /// was not marked counts with no duration.
    pub fn server_ready(&mut self, status: u8) {
        let now = now_nanos();
        let started = std::mem::take(&mut self.request_started);
        self.metrics.query(self.route, seconds_since(started, now));
        if status == b'I' {
            let t = std::mem::take(&mut self.transaction_started);
            if t != 0 {
                self.metrics.transaction(self.route, seconds_since(t, now));
            }
        }
        if self.held != Some(Role::Leader) {
            return;
        }
        if status != b'I' {
            // A transaction block on the leader: assume it writes.
            self.wrote = true;
        } else if self.wrote {
            self.wrote = false;
            self.mark.note(now);
        }
    }
}

/// Where a Query's text sits in the client's buffer (address and length,
/// compact: every session carries one); `None` for text too long to mark.
fn query_mark(text: &[u8]) -> Option<(usize, u32)> {
    let len = u32::try_from(text.len()).ok()?;
    Some((text.as_ptr() as usize, len))
}

/// Whether `body` starts with the text `mark` was taken of, in the same
/// place, ended by its NUL.
fn holds_marked_text((at, len): (usize, u32), body: &[u8]) -> bool {
    at == body.as_ptr() as usize && body.get(len as usize) == Some(&0)
}

/// What a routing point decided for the message at hand.
pub(super) enum Point {
    /// The session holds the right server: go on with the message.
    Go,
    /// Client input must wait until the held server is done.
    Blocked,
    /// The message was answered or dropped; look at the next one.
    Handled,
}

/// What the waiting-free part of a routing point found.
enum Routed {
    /// Decided without taking a server.
    Point(Point),
    /// A server of this role must be taken.
    To(Role),
}

/// What a scan of one unit found.
struct Unit {
    summary: Summary,
    /// No statement and nothing executed (Sync, Flush, Describe, Close).
    neutral: bool,
    executes: bool,
    /// Its Sync (or it is a Query) has arrived.
    complete: bool,
}

/// Tags that can start a unit.
const UNIT_TAGS: &[u8] = b"QPBDCEFSH";

impl Session<'_> {
    /// At a message that may start a unit: make sure the right server is
    /// held. `ready` counts bytes of earlier messages not yet queued; they
    /// are queued first whenever the held server may change.
    ///
    /// What needs no waiting is decided first ([`Session::route_decision`]);
    /// the common case of transaction pooling, an idle server of the right
    /// role in the pool, is then served without waiting
    /// ([`Session::take_server_now`]); only the rest becomes a future
    /// (on the heap: taking a server may wait, and every idle client's
    /// task would otherwise carry that future's space; in a reused block,
    /// see [`super::recycle`]).
    pub(super) async fn route_point(
        &mut self,
        ready: &mut usize,
        tag: u8,
    ) -> Result<Point, CloseReason> {
        match self.route_decision(ready, tag) {
            Routed::Point(point) => Ok(point),
            Routed::To(role) if self.take_server_now(role) => Ok(self.request_started()),
            Routed::To(role) => Recycled::new(self.route_to(role, ready, tag)).await,
        }
    }

    /// The part of a routing point that needs no waiting: whether the
    /// held server serves the unit, or which role must serve it.
    fn route_decision(&mut self, ready: &mut usize, tag: u8) -> Routed {
        let held = self.server.is_some();
        if held && (!self.routing.unit_start || self.pinned || !UNIT_TAGS.contains(&tag)) {
            return Routed::Point(Point::Go);
        }
        let quiescent = held && self.server_quiescent();
        if quiescent && self.server.as_ref().is_some_and(|s| s.status != b'I') {
            // Inside a transaction: the unit belongs to it.
            return Routed::Point(Point::Go);
        }
        let decision = if UNIT_TAGS.contains(&tag) {
            self.decide_unit(*ready, tag)
        } else {
            None
        };
        let target = match decision {
            None if held => return Routed::Point(self.go_with_deferred_begin()),
            None if self.routing.read_only => Target::Replica,
            None => Target::Leader,
            Some(Decision::DeferBegin) if held && !quiescent => {
                return Routed::Point(Point::Blocked)
            }
            Some(Decision::DeferBegin) => {
                self.defer_begin(ready);
                return Routed::Point(Point::Handled);
            }
            Some(Decision::To(t)) => t,
        };
        let role = match target {
            Target::Leader => Role::Leader,
            Target::Replica => Role::Replica,
        };
        if held {
            if self.routing.held == Some(role) {
                return Routed::Point(self.go_with_deferred_begin());
            }
            if !quiescent {
                return Routed::Point(if self.routing.held == Some(Role::Leader) {
                    self.go_with_deferred_begin()
                } else {
                    Point::Blocked
                });
            }
        }
        Routed::To(role)
    }

    /// The rest of a routing point: lets go of a server of the other role
    /// and takes one for `role`, waiting as long as that takes.
    async fn route_to(
        &mut self,
        role: Role,
        ready: &mut usize,
        tag: u8,
    ) -> Result<Point, CloseReason> {
        if self.server.is_some() {
            self.queue_client_messages(*ready);
            *ready = 0;
            self.let_go_of_server().await;
        }
        if !self.take_server(role, tag).await? {
            return Ok(Point::Handled);
        }
        Ok(self.request_started())
    }

    /// A request starts on a freshly taken server: it may be sent again
    /// until the client hears anything.
    fn request_started(&mut self) -> Point {
        let begin = self.routing.deferred_begin.clone();
        let complete = self.routing.unit_complete;
        self.replay.start(self.to_client.pushed(), begin, complete);
        self.go_with_deferred_begin()
    }

    /// Goes on with the held server, sending a deferred BEGIN ahead of the
    /// request first (the transaction belongs on this server).
    fn go_with_deferred_begin(&mut self) -> Point {
        if let Some(begin) = self.routing.deferred_begin.take() {
            self.to_server.push(begin);
            self.tracker.hidden_query();
        }
        Point::Go
    }

    /// Whether everything sent to the held server has been answered.
    pub(super) fn server_quiescent(&mut self) -> bool {
        self.to_server.is_empty() && self.server_passthrough_done() && self.tracker.is_idle()
    }

    /// Where the unit starting at `at` goes; `None` when it has no
    /// statement to route by.
    fn decide_unit(&mut self, at: usize, tag: u8) -> Option<Decision> {
        // Made-up answers are held back only for a unit seen to end in a
        // Sync (set by the scan below).
        self.routing.unit_complete = false;
        if self.routing.read_only {
            return Some(Decision::To(Target::Replica));
        }
        if !self.settings.config.routing.read_write_split {
            return Some(Decision::To(Target::Leader));
        }
        let unit = self.scan_unit(at, tag);
        let routing = &self.settings.config.routing;
        self.routing.unit_complete = unit.complete;
        if unit.neutral {
            return None;
        }
        if unit.summary.first.is_some() && !unit.summary.reads_only() {
            self.routing.wrote = true;
        }
        let to = |t| Some(Decision::To(t));
        if let Some(hint) = unit.summary.hint {
            return to(hint);
        }
        if let Some(t) = self.login.params.route_target() {
            return to(t);
        }
        if self.routing.deferred_begin.is_some() {
            return to(after_begin(&unit.summary, routing));
        }
        if unit.executes && !unit.complete {
            return to(Target::Leader);
        }
        Some(decide(&unit.summary, routing, tag == b'Q'))
    }

    /// Looks at the messages of the unit starting at `at`, as far as they
    /// have arrived.
    fn scan_unit(&mut self, at: usize, tag: u8) -> Unit {
        let key = self.classify_key();
        let input = &self.client_in[at..];
        if tag == b'Q' {
            let body = input.get(HEADER_LEN..).unwrap_or_default();
            let text = read_cstr(body).map_or(&[][..], |(t, _)| t);
            let summary = self.classify_text(text, key);
            self.routing.effect_free_query =
                query_mark(text).filter(|_| summary.leaves_session_alone());
            return Unit {
                summary,
                neutral: false,
                executes: true,
                complete: true,
            };
        }
        let mut first: Option<Summary> = None;
        let mut rest_reads_only = true;
        let mut executes = false;
        let mut complete = false;
        let mut named: Vec<(&[u8], Summary)> = Vec::new();
        let mut unnamed = self.routing.unnamed;
        let mut scanned_unnamed = 0;
        let mut pos = 0;
        while let Ok(Some(h)) = peek_header(&input[pos..], usize::MAX) {
            if input.len() - pos < h.total_len {
                break;
            }
            let body = &input[pos + HEADER_LEN..pos + h.total_len];
            pos += h.total_len;
            let statement = match h.tag {
                b'P' => {
                    let (name, rest) = read_cstr(body).unwrap_or_default();
                    let text = read_cstr(rest).map_or(&[][..], |(t, _)| t);
                    let summary = match self.statements.recent_summary(rest, key) {
                        Some(s) if name.is_empty() => s,
                        _ => self.classify_text(text, key),
                    };
                    if name.is_empty() {
                        unnamed = Some(summary);
                        scanned_unnamed += 1;
                    } else {
                        named.push((name, summary));
                    }
                    Some(summary)
                }
                b'B' => {
                    executes = true;
                    let name = read_cstr(body)
                        .and_then(|(_, rest)| read_cstr(rest))
                        .map_or(&[][..], |(n, _)| n);
                    Some(if name.is_empty() {
                        unnamed.unwrap_or_else(Summary::leader)
                    } else if let Some((_, s)) = named.iter().rev().find(|(n, _)| *n == name) {
                        *s
                    } else {
                        std::str::from_utf8(name)
                            .ok()
                            .and_then(|n| self.statements.get(n))
                            .map_or_else(Summary::leader, |s| s.summary)
                    })
                }
                b'E' => {
                    executes = true;
                    None
                }
                b'S' => {
                    complete = true;
                    break;
                }
                b'D' | b'C' | b'H' => None,
                b'Q' => break,
                _ => {
                    executes = true;
                    Some(Summary::leader())
                }
            };
            if let Some(s) = statement {
                match first {
                    None => first = Some(s),
                    Some(_) => rest_reads_only &= s.reads_only(),
                }
            }
        }
        self.routing.unnamed = unnamed;
        self.routing.scanned_unnamed += scanned_unnamed;
        let neutral = first.is_none() && !executes;
        let mut summary = first.unwrap_or_default();
        summary.rest_reads_only &= rest_reads_only;
        Unit {
            summary,
            neutral,
            executes,
            complete,
        }
    }

    /// Answers a lone BEGIN and keeps it for the next unit.
    fn defer_begin(&mut self, ready: &mut usize) {
        self.queue_client_messages(*ready);
        *ready = 0;
        let Ok(Some(h)) = peek_header(&self.client_in, usize::MAX) else {
            return;
        };
        let message = self.client_in.split_to(h.total_len).freeze();
        let text = read_cstr(&message[HEADER_LEN..]).map_or(&[][..], |(t, _)| t);
        let start = text
            .trim_ascii_start()
            .get(..5)
            .is_some_and(|w| w.eq_ignore_ascii_case(b"start"));
        self.to_client.push(Bytes::from_static(if start {
            b"C\0\0\0\x16START TRANSACTION\0Z\0\0\0\x05T"
        } else {
            b"C\0\0\0\x0aBEGIN\0Z\0\0\0\x05T"
        }));
        self.routing.deferred_begin = Some(message);
        self.routing.unit_start = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marked_text_is_known_by_its_place_and_its_nul() {
        let body = b"SELECT 1\0".to_vec();
        let mark = query_mark(&body[..8]).unwrap();
        assert!(holds_marked_text(mark, &body));
        let copy = body.clone();
        assert!(!holds_marked_text(mark, &copy), "the same text elsewhere");
        let longer = query_mark(&body[..7]).unwrap();
        assert!(!holds_marked_text(longer, &body), "no NUL after the mark");
        assert!(!holds_marked_text(mark, &body[..8]), "the body ends early");
    }
}
