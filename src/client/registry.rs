//! Every logged-in client, for the admin console's SHOW CLIENTS. Entries
//! are added at login and removed at close; a session updates only its
//! entry's state (one relaxed store when it takes or gives back a server).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

/// What a client is doing, as PgBouncer's SHOW CLIENTS names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// Between transactions, holding no server.
    Idle = 0,
    /// Holding a server.
    Active = 1,
    /// Waiting for a server.
    Waiting = 2,
}

/// One client, as listed.
#[derive(Debug)]
pub struct ClientEntry {
    pub id: u64,
    /// Shared with the pool group (no copy per client).
    pub user: Arc<str>,
    pub database: Arc<str>,
    pub addr: SocketAddr,
    pub connected: SystemTime,
    pub tls: bool,
    state: AtomicU8,
    /// Wakes the session when a shutdown starts draining clients (an
    /// atomic register per loop turn: no lock on the hot path).
    drain: futures_util::task::AtomicWaker,
}

impl ClientEntry {
    pub fn new(
        id: u64,
        user: Arc<str>,
        database: Arc<str>,
        addr: SocketAddr,
        tls: bool,
    ) -> ClientEntry {
        ClientEntry {
            id,
            user,
            database,
            addr,
            connected: SystemTime::now(),
            tls,
            state: AtomicU8::new(ClientState::Idle as u8),
            drain: futures_util::task::AtomicWaker::new(),
        }
    }

    /// Ready once `draining` is set (the request loop polls it among its
    /// other events); the registry's
    /// [`wake_all`](ClientRegistry::wake_all) wakes it. (A flag, not a
    /// CancellationToken: its `is_cancelled` takes a lock shared by every
    /// session.)
    ///
    /// The waker is registered once per session (`registered` remembers
    /// it): the session's task keeps one waker, and re-registering on every
    /// poll cost two atomic compare-and-swaps each time the request loop
    /// turned, four turns per transaction.
    pub fn poll_drained(
        &self,
        cx: &mut std::task::Context<'_>,
        draining: &std::sync::atomic::AtomicBool,
        registered: &mut bool,
    ) -> std::task::Poll<()> {
        if !*registered {
            self.drain.register(cx.waker());
            *registered = true;
        }
        if draining.load(Ordering::Acquire) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    }

    pub fn set_state(&self, state: ClientState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    pub fn state(&self) -> ClientState {
        match self.state.load(Ordering::Relaxed) {
            1 => ClientState::Active,
            2 => ClientState::Waiting,
            _ => ClientState::Idle,
        }
    }
}

/// The clients connected now.
#[derive(Default)]
pub struct ClientRegistry {
    entries: Mutex<HashMap<u64, Arc<ClientEntry>>>,
}

impl ClientRegistry {
    pub fn add(&self, entry: Arc<ClientEntry>) {
        self.lock().insert(entry.id, entry);
    }

    pub fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Wakes every session (after the drain token was cancelled).
    pub fn wake_all(&self) {
        for entry in self.lock().values() {
            entry.drain.wake();
        }
    }

    /// Every client, by id.
    pub fn list(&self) -> Vec<Arc<ClientEntry>> {
        let mut all: Vec<_> = self.lock().values().cloned().collect();
        all.sort_by_key(|e| e.id);
        all
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ClientEntry>>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_list_remove_and_state() {
        let r = ClientRegistry::default();
        let addr = SocketAddr::from(([127, 0, 0, 1], 5000));
        let a = Arc::new(ClientEntry::new(2, "u".into(), "d".into(), addr, false));
        r.add(a.clone());
        r.add(Arc::new(ClientEntry::new(
            1,
            "u".into(),
            "d".into(),
            addr,
            true,
        )));
        assert_eq!(
            r.list().iter().map(|e| e.id).collect::<Vec<_>>(),
            vec![1, 2]
        );
        a.set_state(ClientState::Waiting);
        assert_eq!(r.list()[1].state(), ClientState::Waiting);
        r.remove(1);
        assert_eq!(r.list().len(), 1);
    }

    #[tokio::test]
    async fn a_session_that_polled_many_times_is_woken_by_the_drain() {
        use std::sync::atomic::AtomicBool;
        use std::time::Duration;
        let r = ClientRegistry::default();
        let addr = SocketAddr::from(([127, 0, 0, 1], 5000));
        let entry = Arc::new(ClientEntry::new(1, "u".into(), "d".into(), addr, false));
        r.add(entry.clone());
        let draining = Arc::new(AtomicBool::new(false));
        let session = tokio::spawn({
            let (entry, draining) = (entry.clone(), draining.clone());
            async move {
                let mut registered = false;
                // The request loop makes a new future on every turn.
                for _ in 0..3 {
                    let turn = std::future::poll_fn(|cx| {
                        entry.poll_drained(cx, &draining, &mut registered)
                    });
                    let waited = tokio::time::timeout(Duration::from_millis(10), turn).await;
                    assert!(waited.is_err(), "not draining yet");
                }
                assert!(registered);
                std::future::poll_fn(|cx| entry.poll_drained(cx, &draining, &mut registered)).await;
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        draining.store(true, Ordering::Release);
        r.wake_all();
        tokio::time::timeout(Duration::from_secs(10), session)
            .await
            .expect("the drain woke the session")
            .expect("session task");
    }
}
