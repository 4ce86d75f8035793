//! Cancel keys: each client gets pgsplit's own BackendKeyData, and a
//! CancelRequest for it reaches the server that client holds at that moment.
//!
//! The trap: a cancel that is read while client A holds server S but sent
//! after S went to client B cancels B's query. So a client cannot give its
//! server back while a cancel for it is being delivered: `release` waits
//! until in-flight cancels have been acknowledged by the server (the
//! postmaster closes the cancel socket after it has signalled the backend).
//! Even then the backend acts on the signal when it next runs, which under
//! load can be after the next client's query has arrived; so a server that
//! was sent a cancel is closed rather than pooled (`release` says so).
//! No lock is held across an `.await`; waiting for deliveries uses a
//! `Notify`, and a client waiting for a server leaves its task's waker
//! (a wait happens on most checkouts when clients outnumber servers, and
//! a waker costs less than joining and leaving a `Notify`'s list).

use rand::RngExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Poll, Waker};
use std::time::Duration;
use tokio::sync::Notify;

use super::server::CancelTarget;

/// How long one cancel delivery may take before it is abandoned.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct SlotState {
    target: Option<CancelTarget>,
    in_flight: u32,
    /// The client waits for a server connection.
    waiting: bool,
    /// A cancel arrived while it waited.
    cancel_requested: bool,
    /// Wakes the waiting client when a cancel arrives.
    waker: Option<Waker>,
    /// A cancel was sent to the held server.
    sent_to_target: bool,
}

/// The cancel state of one client session.
#[derive(Default)]
pub struct CancelSlot {
    state: Mutex<SlotState>,
    delivered: Notify,
}

impl CancelSlot {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The client now holds a server; cancels go there.
    pub fn hold(&self, target: CancelTarget) {
        let mut state = self.lock();
        state.target = Some(target);
        state.sent_to_target = false;
    }

    /// The client gives its server back. Waits while a cancel for that
    /// server is on its way, so it can never hit the next client's query.
    /// Returns whether a cancel was sent to that server: it must then be
    /// closed, not pooled.
    pub async fn release(&self) -> bool {
        loop {
            // Looked at first without a waiter: nearly always nothing is
            // in flight.
            if let Some(sent) = self.try_release() {
                return sent;
            }
            let notified = self.delivered.notified();
            if let Some(sent) = self.try_release() {
                return sent;
            }
            notified.await;
        }
    }

    /// [`CancelSlot::release`] when no cancel is on its way.
    fn try_release(&self) -> Option<bool> {
        let mut state = self.lock();
        if state.in_flight != 0 {
            return None;
        }
        state.target = None;
        Some(std::mem::take(&mut state.sent_to_target))
    }

    /// The client starts waiting for a server connection: a cancel now
    /// ends the wait instead of going to a server.
    pub fn begin_wait(&self) {
        let mut state = self.lock();
        state.waiting = true;
        state.cancel_requested = false;
    }

    /// The wait is over; returns whether a cancel arrived during it.
    pub fn end_wait(&self) -> bool {
        let mut state = self.lock();
        state.waiting = false;
        state.waker = None;
        std::mem::take(&mut state.cancel_requested)
    }

    /// Resolves once a cancel arrives during the wait.
    pub async fn cancelled(&self) {
        std::future::poll_fn(|cx| {
            let mut state = self.lock();
            if state.cancel_requested {
                return Poll::Ready(());
            }
            match &mut state.waker {
                Some(w) => w.clone_from(cx.waker()),
                None => state.waker = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }

    /// Delivers a cancel to the server the client holds, or ends its wait
    /// for one. Returns whether there was anything to cancel.
    pub async fn cancel(&self) -> bool {
        let target = {
            let mut state = self.lock();
            let Some(t) = state.target.clone() else {
                if state.waiting {
                    state.cancel_requested = true;
                    let waker = state.waker.take();
                    drop(state);
                    if let Some(w) = waker {
                        w.wake();
                    }
                    return true;
                }
                return false;
            };
            state.in_flight += 1;
            state.sent_to_target = true;
            t
        };
        if let Err(e) = target.send(CANCEL_TIMEOUT).await {
            tracing::warn!(server = %target.addr, error = %e, "cancel request to server failed");
        }
        self.lock().in_flight -= 1;
        self.delivered.notify_waiters();
        true
    }
}

/// pgsplit's BackendKeyData for one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CancelKey {
    pub process_id: i32,
    pub secret_key: i32,
}

/// All live clients' cancel keys.
#[derive(Default)]
pub struct CancelRegistry {
    next_id: AtomicU32,
    slots: Mutex<HashMap<i32, (i32, Arc<CancelSlot>)>>,
}

impl CancelRegistry {
    /// Issues a fresh key for a new client and registers its slot.
    pub fn register(&self) -> (CancelKey, Arc<CancelSlot>) {
        let slot = Arc::new(CancelSlot::default());
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            // Positive ids like real backend pids; skip ids still in use.
            let id = (self.next_id.fetch_add(1, Ordering::Relaxed) & 0x7fff_ffff) as i32;
            if id == 0 || slots.contains_key(&id) {
                continue;
            }
            let key = CancelKey {
                process_id: id,
                secret_key: rand::rng().random(),
            };
            slots.insert(id, (key.secret_key, slot.clone()));
            return (key, slot);
        }
    }

    /// Forgets a client that disconnected.
    pub fn unregister(&self, key: CancelKey) {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key.process_id);
    }

    /// The slot for a CancelRequest, if the key is known and the secret
    /// matches.
    pub fn find(&self, key: CancelKey) -> Option<Arc<CancelSlot>> {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        match slots.get(&key.process_id) {
            Some((secret, slot)) if *secret == key.secret_key => Some(slot.clone()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique_and_secret_checked() {
        let reg = CancelRegistry::default();
        let (a, _) = reg.register();
        let (b, _) = reg.register();
        assert_ne!(a.process_id, b.process_id);
        assert!(reg.find(a).is_some());
        let wrong = CancelKey {
            process_id: a.process_id,
            secret_key: a.secret_key.wrapping_add(1),
        };
        assert!(reg.find(wrong).is_none());
        reg.unregister(a);
        assert!(reg.find(a).is_none());
    }

    #[tokio::test]
    async fn cancel_without_server_does_nothing() {
        let slot = CancelSlot::default();
        assert!(!slot.cancel().await);
    }

    #[tokio::test]
    async fn cancel_ends_a_wait_for_a_server() {
        let slot = Arc::new(CancelSlot::default());
        slot.begin_wait();
        let waiter = tokio::spawn({
            let slot = slot.clone();
            async move { slot.cancelled().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(slot.cancel().await);
        waiter.await.unwrap();
        assert!(slot.end_wait());
        // Not waiting any more: nothing to cancel.
        assert!(!slot.cancel().await);
        assert!(!slot.end_wait());
    }

    #[tokio::test]
    async fn release_waits_for_cancel_in_flight() {
        // A listener that accepts the cancel and holds the socket open for a
        // while, like a slow postmaster.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            let closing_at = std::time::Instant::now();
            drop(sock);
            closing_at
        });
        let slot = Arc::new(CancelSlot::default());
        slot.hold(CancelTarget {
            addr: addr.into(),
            process_id: 1,
            secret_key: 2,
        });
        let canceller = tokio::spawn({
            let slot = slot.clone();
            async move { slot.cancel().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        slot.release().await;
        let released_at = std::time::Instant::now();
        let closed_at = server.await.unwrap();
        assert!(canceller.await.unwrap());
        assert!(
            released_at >= closed_at,
            "release returned before the cancel was delivered"
        );
    }
}
