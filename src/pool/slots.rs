//! The bookkeeping of one pool, apart from any I/O: which connections are
//! idle, how many exist, and who waits for one.
//!
//! Invariants, kept by every method here and nowhere else:
//! - a connection is idle only while nobody waits (a returned connection
//!   goes straight to the longest waiter: first come, first served);
//! - `open` counts idle, lent and being-opened connections and never
//!   exceeds the pool size;
//! - idle connections are handed out last-in first-out, so the ones not
//!   needed age out and the sweeper can close them;
//! - a connection is opened for waiters only while more clients wait than
//!   connections are being opened: under a burst, a connection that comes
//!   back serves a waiter and the one still opening becomes idle, so a
//!   pool that would open one per waiter ends up at `pool_size` servers
//!   where half as many carry the load (10 pgbench clients opened 20);
//! - waiters queue in arrival order, so the longest waiter's wait is the
//!   first to run out: one timer per pool, set to that moment, serves
//!   every wait ([`Slots::expire`]; a timer per wait cost some 540
//!   instructions per waiting checkout).
//!
//! Generic over the connection type so the rules are unit-tested without
//! a server.

use std::collections::VecDeque;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// What a waiter is eventually sent: a connection, or why none came.
pub type Delivery<T, E> = Result<T, E>;

/// An idle connection and when it was given back.
pub struct Idle<T> {
    pub conn: T,
    pub since: Instant,
}

/// What [`Slots::take`] decided.
pub enum Take<T, E> {
    /// An idle connection, lent at once.
    Ready(T),
    /// Wait on this; `open_one` says the caller must start opening a
    /// connection (a slot was reserved for it), `start_timer` that it must
    /// start the pool's wait timer (none runs).
    Wait {
        delivery: oneshot::Receiver<Delivery<T, E>>,
        open_one: bool,
        start_timer: bool,
    },
    Closed,
}

/// A queued checkout and when it began waiting.
struct Waiter<T, E> {
    tx: oneshot::Sender<Delivery<T, E>>,
    since: Instant,
}

/// Idle connections, the count of open ones and the waiters of one pool.
pub struct Slots<T, E> {
    size: usize,
    idle: Vec<Idle<T>>,
    open: usize,
    /// Of `open`, those being opened for waiters (in the background).
    opening: usize,
    waiters: VecDeque<Waiter<T, E>>,
    /// The pool's wait timer runs (see [`Slots::expire`]).
    timer: bool,
    closed: bool,
}

impl<T, E> Slots<T, E> {
    pub fn new(size: usize) -> Self {
        Slots {
            size,
            idle: Vec::new(),
            open: 0,
            opening: 0,
            waiters: VecDeque::new(),
            timer: false,
            closed: false,
        }
    }

    /// Lends the newest idle connection, or queues the caller as waiting
    /// since `now`.
    pub fn take(&mut self, now: Instant) -> Take<T, E> {
        if self.closed {
            return Take::Closed;
        }
        if let Some(idle) = self.idle.pop() {
            return Take::Ready(idle.conn);
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.push_back(Waiter { tx, since: now });
        Take::Wait {
            delivery: rx,
            open_one: self.reserve_for_waiters(),
            start_timer: !std::mem::replace(&mut self.timer, true),
        }
    }

    /// The pool's wait timer fired at `now`: waiters that have waited
    /// `limit` or longer are sent `error()` and leave the queue. Returns
    /// when to look again (the longest remaining wait runs out), or `None`
    /// when the timer stops (the next waiter starts it): nobody waits, or
    /// `limit` is too far off to ever run out.
    pub fn expire(
        &mut self,
        now: Instant,
        limit: Duration,
        error: impl Fn() -> E,
    ) -> Option<Instant> {
        while let Some(oldest) = self.waiters.front() {
            let Some(ends) = oldest.since.checked_add(limit) else {
                break;
            };
            if ends > now {
                return Some(ends);
            }
            if let Some(waiter) = self.waiters.pop_front() {
                // A waiter that gave up meanwhile is simply gone.
                let _ = waiter.tx.send(Err(error()));
            }
        }
        self.timer = false;
        None
    }

    /// Lends an idle connection if there is one; otherwise reserves a slot
    /// for the caller to open one itself (`Err(true)`) or says there is no
    /// room (`Err(false)`). Never queues.
    pub fn take_now(&mut self) -> Result<T, bool> {
        if self.closed {
            return Err(false);
        }
        if let Some(idle) = self.idle.pop() {
            return Ok(idle.conn);
        }
        Err(self.waiters.is_empty() && self.reserve())
    }

    /// Lends the newest idle connection, if there is one (there is none
    /// while anyone waits). Never queues and never reserves.
    pub fn take_idle(&mut self) -> Option<T> {
        if self.closed {
            return None;
        }
        self.idle.pop().map(|idle| idle.conn)
    }

    /// Reserves a slot for a connection to open in the background, when
    /// more clients wait than connections are being opened and the pool
    /// has room.
    fn reserve_for_waiters(&mut self) -> bool {
        let needed = !self.closed && self.waiters.len() > self.opening && self.reserve();
        self.opening += usize::from(needed);
        needed
    }

    /// Reserves a slot for a connection about to be opened, if the pool
    /// has room.
    fn reserve(&mut self) -> bool {
        if self.open < self.size {
            self.open += 1;
            true
        } else {
            false
        }
    }

    /// A lent or freshly opened connection is ready for reuse: the longest
    /// waiter gets it, or it becomes idle.
    pub fn give_back(&mut self, mut conn: T, now: Instant) -> Option<T> {
        if self.closed {
            self.open -= 1;
            return Some(conn);
        }
        while let Some(waiter) = self.waiters.pop_front() {
            match waiter.tx.send(Ok(conn)) {
                Ok(()) => return None,
                // The waiter gave up (cancel, client gone): try the next one.
                Err(Ok(returned)) => conn = returned,
                Err(Err(_)) => return None,
            }
        }
        self.idle.push(Idle { conn, since: now });
        None
    }

    /// A connection opened in the background (for a reservation of
    /// [`Slots::take`], [`Slots::forget`] or [`Slots::open_failed`]) is
    /// ready: as [`Slots::give_back`].
    pub fn opened(&mut self, conn: T, now: Instant) -> Option<T> {
        self.opening -= 1;
        self.give_back(conn, now)
    }

    /// A connection is gone (closed, broken, or one the caller opened
    /// itself failed). Returns whether the caller must open a replacement
    /// in the background for a waiter (a slot was reserved for it).
    pub fn forget(&mut self) -> bool {
        self.open -= 1;
        self.waiters.retain(|w| !w.tx.is_closed());
        self.reserve_for_waiters()
    }

    /// Opening a connection in the background failed: the longest waiter
    /// learns why. Returns whether to try again for the waiters still
    /// queued.
    pub fn open_failed(&mut self, error: E) -> bool {
        self.opening -= 1;
        let mut error = Some(error);
        while let Some(waiter) = self.waiters.pop_front() {
            if let Some(e) = error.take() {
                match waiter.tx.send(Err(e)) {
                    Ok(()) => break,
                    Err(Err(e)) => error = Some(e),
                    Err(Ok(_)) => break,
                }
            }
        }
        self.forget()
    }

    /// Removes idle connections that `keep` rejects; returns them so the
    /// caller closes them outside the lock.
    pub fn retain_idle(&mut self, mut keep: impl FnMut(&Idle<T>) -> bool) -> Vec<T> {
        let mut gone = Vec::new();
        let mut kept = Vec::with_capacity(self.idle.len());
        for idle in self.idle.drain(..) {
            if keep(&idle) {
                kept.push(idle);
            } else {
                gone.push(idle.conn);
            }
        }
        self.idle = kept;
        self.open -= gone.len();
        gone
    }

    /// Closes the pool: idle connections are returned for closing, waiters
    /// are dropped (they see the pool closed), lent ones close on return.
    pub fn close(&mut self) -> Vec<T> {
        self.closed = true;
        self.waiters.clear();
        self.retain_idle(|_| false)
    }

    /// (idle, open, waiting) counts.
    pub fn counts(&self) -> (usize, usize, usize) {
        (self.idle.len(), self.open, self.waiters.len())
    }
}

/// A waiter gives up (its client cancelled, timed out or went away): the
/// connection handed to it just before, if any, which the caller must give
/// back. Dropped in the channel instead, it would close with its slot still
/// counted as open, and the pool would shrink for good.
pub fn abandon<T, E>(delivery: &mut oneshot::Receiver<Delivery<T, E>>) -> Option<T> {
    delivery.close();
    match delivery.try_recv() {
        Ok(Ok(conn)) => Some(conn),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait(
        slots: &mut Slots<u32, &'static str>,
    ) -> (oneshot::Receiver<Delivery<u32, &'static str>>, bool) {
        match slots.take(Instant::now()) {
            Take::Wait {
                delivery, open_one, ..
            } => (delivery, open_one),
            _ => panic!("expected to wait"),
        }
    }

    #[test]
    fn opens_up_to_size_then_queues() {
        let mut s = Slots::new(2);
        let (_a, open_a) = wait(&mut s);
        let (_b, open_b) = wait(&mut s);
        let (_c, open_c) = wait(&mut s);
        assert!(open_a && open_b && !open_c);
        assert_eq!(s.counts(), (0, 2, 3));
    }

    #[test]
    fn opens_only_for_waiters_beyond_those_being_opened() {
        let mut s: Slots<u32, &str> = Slots::new(10);
        let (mut first, open) = wait(&mut s);
        assert!(open);
        // A connection comes back while the new one is still opening:
        // the waiter takes it.
        s.open += 1;
        s.give_back(1, Instant::now());
        assert_eq!(first.try_recv().unwrap(), Ok(1));
        // The next waiter is covered by the connection still opening.
        let (mut second, open) = wait(&mut s);
        assert!(!open, "one is already being opened for it");
        let (third, open) = wait(&mut s);
        assert!(open, "two wait, one is being opened");
        assert_eq!(s.counts(), (0, 3, 2));
        assert!(s.opened(2, Instant::now()).is_none());
        assert_eq!(second.try_recv().unwrap(), Ok(2));
        // Opened after everyone was served, a connection becomes idle.
        drop(third);
        assert!(s.opened(3, Instant::now()).is_none());
        assert_eq!(s.counts(), (1, 3, 0));
    }

    #[test]
    fn returned_connection_goes_to_longest_waiter_first() {
        let mut s = Slots::new(1);
        let (mut first, _) = wait(&mut s);
        let (mut second, _) = wait(&mut s);
        assert!(s.give_back(7, Instant::now()).is_none());
        assert_eq!(first.try_recv().unwrap(), Ok(7));
        assert!(second.try_recv().is_err());
        assert_eq!(s.counts(), (0, 1, 1));
    }

    #[test]
    fn a_connection_handed_to_a_waiter_that_gives_up_is_not_lost() {
        let mut s = Slots::new(1);
        let (mut gives_up, open_one) = wait(&mut s);
        assert!(open_one);
        // The connection opened for it arrives just as it gives up.
        assert!(s.opened(5, Instant::now()).is_none());
        let (mut next, open_one) = wait(&mut s);
        assert!(!open_one, "the pool is full: the only slot is lent");
        let conn = abandon(&mut gives_up).expect("the handed-over connection");
        assert!(s.give_back(conn, Instant::now()).is_none());
        assert_eq!(next.try_recv().unwrap(), Ok(5));
        // Nothing was handed over: nothing to give back.
        let (mut empty, _) = wait(&mut s);
        assert!(abandon(&mut empty).is_none());
        assert_eq!(s.counts(), (0, 1, 1));
    }

    #[test]
    fn skips_waiters_that_gave_up() {
        let mut s = Slots::new(1);
        let (first, _) = wait(&mut s);
        let (mut second, _) = wait(&mut s);
        drop(first);
        s.give_back(3, Instant::now());
        assert_eq!(second.try_recv().unwrap(), Ok(3));
    }

    #[test]
    fn idle_is_lifo_and_only_without_waiters() {
        let mut s: Slots<u32, &str> = Slots::new(3);
        for _ in 0..3 {
            assert!(s.take_now().is_err());
        }
        let now = Instant::now();
        s.give_back(1, now);
        s.give_back(2, now);
        assert!(matches!(s.take(now), Take::Ready(2)));
        assert!(matches!(s.take_now(), Ok(1)));
        assert_eq!(s.take_now(), Err(false));
    }

    #[test]
    fn failure_reaches_one_waiter_and_retries_for_the_rest() {
        let mut s = Slots::new(1);
        let (mut a, open) = wait(&mut s);
        assert!(open);
        let (mut b, _) = wait(&mut s);
        assert!(s.open_failed("refused"), "b still waits: open again");
        assert_eq!(a.try_recv().unwrap(), Err("refused"));
        assert!(b.try_recv().is_err());
        assert_eq!(s.counts(), (0, 1, 1));
        drop(b);
        assert!(!s.open_failed("refused"), "nobody waits any more");
        assert_eq!(s.counts(), (0, 0, 0));
    }

    #[test]
    fn take_idle_never_queues() {
        let mut s: Slots<u32, ()> = Slots::new(1);
        assert_eq!(s.take_idle(), None);
        assert_eq!(s.counts(), (0, 0, 0), "nothing reserved, nobody queued");
        s.open = 1;
        s.give_back(7, Instant::now());
        assert_eq!(s.take_idle(), Some(7));
        assert_eq!(s.take_idle(), None);
        s.give_back(7, Instant::now());
        s.close();
        assert_eq!(s.take_idle(), None, "a closed pool lends nothing");
    }

    /// One timer serves every wait: the first waiter starts it, it fires
    /// for the oldest wait, fails only waits that ran out, and stops when
    /// nobody waits.
    #[test]
    fn the_wait_timer_fails_only_waits_that_ran_out() {
        let mut s: Slots<u32, &'static str> = Slots::new(0);
        let t0 = Instant::now();
        let limit = Duration::from_secs(10);
        let start = |s: &mut Slots<u32, &'static str>, at| match s.take(at) {
            Take::Wait {
                delivery,
                start_timer,
                ..
            } => (delivery, start_timer),
            _ => panic!("expected to wait"),
        };
        let (mut a, timer_a) = start(&mut s, t0);
        let (b, timer_b) = start(&mut s, t0 + Duration::from_secs(3));
        let (mut c, timer_c) = start(&mut s, t0 + Duration::from_secs(6));
        assert!(
            (timer_a, timer_b, timer_c) == (true, false, false),
            "one timer"
        );
        assert_eq!(
            s.expire(t0 + Duration::from_secs(9), limit, || "late"),
            Some(t0 + limit)
        );
        assert!(a.try_recv().is_err(), "not run out yet");
        drop(b); // gave up: it is skipped
        assert_eq!(
            s.expire(t0 + Duration::from_secs(13), limit, || "late"),
            Some(t0 + Duration::from_secs(16))
        );
        assert_eq!(a.try_recv().unwrap(), Err("late"));
        assert!(c.try_recv().is_err());
        assert_eq!(s.counts(), (0, 0, 1));
        assert_eq!(
            s.expire(t0 + Duration::from_secs(16), limit, || "late"),
            None
        );
        assert_eq!(c.try_recv().unwrap(), Err("late"));
        let (_d, timer_d) = start(&mut s, t0 + Duration::from_secs(20));
        assert!(
            timer_d,
            "the timer stopped with the queue empty: the next waiter starts it"
        );
        // A limit too far off to add to an instant never runs out.
        assert_eq!(s.expire(t0 + limit * 100, Duration::MAX, || "late"), None);
        assert_eq!(s.counts(), (0, 0, 1), "that wait goes on");
    }

    #[test]
    fn forget_frees_a_slot_for_a_waiter() {
        let mut s: Slots<u32, &str> = Slots::new(1);
        assert_eq!(s.take_now(), Err(true));
        let (_w, open) = wait(&mut s);
        assert!(!open);
        assert!(s.forget(), "the waiter needs a new connection");
        assert_eq!(s.counts(), (0, 1, 1));
    }

    #[test]
    fn retain_and_close_hand_back_what_to_close() {
        let mut s: Slots<u32, &str> = Slots::new(3);
        for _ in 0..3 {
            let _ = s.take_now();
        }
        let now = Instant::now();
        s.give_back(1, now);
        s.give_back(2, now);
        assert_eq!(s.retain_idle(|i| i.conn != 2), vec![2]);
        assert_eq!(s.counts(), (1, 2, 0));
        assert_eq!(s.close(), vec![1]);
        assert!(matches!(s.take(now), Take::Closed));
        assert_eq!(s.give_back(3, now), Some(3), "lent ones close on return");
        assert_eq!(s.counts(), (0, 0, 0));
    }
}
