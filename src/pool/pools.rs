//! One pool of server connections per (server node, database, user).
//!
//! Checkout in the common case is a lock, a pop and an unlock; a returned
//! connection goes straight to the longest waiter, else onto the idle
//! stack (last-in first-out, so the rest can age out). New connections are
//! opened in the background, at most `pool_size` per pool, and go to the
//! longest waiter when ready. The rules live in [`super::slots`].
//!
//! This replaced deadpool: its checkout (semaphore, wait-timeout wrapper,
//! `recycle` call, metrics clock reads) and the moves of the connection
//! through its object types cost about 2,300 instructions per transaction
//! (callgrind, pgbench select-only), more than the rest of a checkout
//! here; and topology changes need pools that can be told to retire their
//! connections.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use thiserror::Error;

use super::server::{ServerConn, ServerError, ServerSpec};
use super::slots::{abandon, Delivery, Idle, Slots, Take};
use crate::topology::MemberState;
use tokio::sync::oneshot;

/// ParameterStatus name/value pairs a fresh server reported.
pub type StartupParams = Arc<Vec<(String, String)>>;

/// A pool for one (node, database, user). Cheap to clone: clones share it.
#[derive(Clone)]
pub struct ServerPool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    spec: ServerSpec,
    /// The member's live state: lent connections are counted there.
    member: Arc<MemberState>,
    /// Bumped by [`ServerPool::retire`]: connections lent before come back
    /// to be closed.
    generation: AtomicU64,
    wait_timeout: Duration,
    lifetime: Option<Duration>,
    slots: Mutex<Slots<Box<ServerConn>, CheckoutError>>,
    /// ParameterStatus values of the newest fresh connection, so a client
    /// can log in while every server is busy.
    startup_params: Mutex<Option<StartupParams>>,
}

/// Checkouts waiting for a connection, in every pool of the process.
static CLIENTS_WAITING: AtomicUsize = AtomicUsize::new(0);

/// Whether any client waits for a server connection right now. Then the
/// pools are the bottleneck and every moment pgsplit does not spend
/// moving answers keeps servers held longer: the event loop does not
/// yield its CPU before sleeping (`yield_before_sleep`).
pub fn clients_waiting() -> bool {
    CLIENTS_WAITING.load(Ordering::Relaxed) > 0
}

/// A checkout waiting for a connection to be handed over. The wait ends
/// early when its client cancels or goes away (the future is dropped); a
/// connection handed over at that very moment goes back to the pool then
/// (to the next waiter) instead of closing with its slot still counted.
struct Waiting<'a> {
    pool: &'a ServerPool,
    delivery: oneshot::Receiver<Delivery<Box<ServerConn>, CheckoutError>>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        CLIENTS_WAITING.fetch_sub(1, Ordering::Relaxed);
        if let Some(conn) = abandon(&mut self.delivery) {
            self.pool.give_back(conn);
        }
    }
}

/// A server connection lent by a [`ServerPool`]; dropping it gives it back
/// (closed instead if it is not idle and in sync), [`discard`] closes it.
pub struct PooledServer {
    conn: Option<Box<ServerConn>>,
    pool: ServerPool,
    generation: u64,
}

impl std::ops::Deref for PooledServer {
    type Target = ServerConn;
    fn deref(&self) -> &ServerConn {
        self.conn
            .as_deref()
            .expect("a lent connection is present until drop")
    }
}

impl std::ops::DerefMut for PooledServer {
    fn deref_mut(&mut self) -> &mut ServerConn {
        self.conn
            .as_deref_mut()
            .expect("a lent connection is present until drop")
    }
}

impl PooledServer {
    /// Whether this connection's server refuses new connections because
    /// it is shutting down (see [`super::stopping`]).
    pub async fn server_shutting_down(&self) -> bool {
        super::stopping::shutting_down(&self.pool.inner.spec).await
    }
}

impl Drop for PooledServer {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.inner.member.returned();
            if self.generation == self.pool.inner.generation.load(Ordering::Relaxed) {
                self.pool.give_back(conn);
            } else {
                drop(conn);
                self.pool.forget_one();
            }
        }
    }
}

/// Closes a lent connection instead of returning it to the pool.
pub fn discard(mut server: PooledServer) {
    if let Some(conn) = server.conn.take() {
        server.pool.inner.member.returned();
        drop(conn);
        server.pool.forget_one();
    }
}

impl ServerPool {
    pub(super) fn new(
        spec: ServerSpec,
        member: Arc<MemberState>,
        settings: &PoolSettings,
    ) -> ServerPool {
        ServerPool {
            inner: Arc::new(PoolInner {
                spec,
                member,
                generation: AtomicU64::new(0),
                wait_timeout: settings.query_wait_timeout,
                lifetime: settings.lifetime,
                slots: Mutex::new(Slots::new(settings.pool_size)),
                startup_params: Mutex::new(None),
            }),
        }
    }

    fn slots(&self) -> MutexGuard<'_, Slots<Box<ServerConn>, CheckoutError>> {
        self.inner
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn lend(&self, conn: Box<ServerConn>) -> PooledServer {
        self.inner.member.lent();
        PooledServer {
            conn: Some(conn),
            pool: self.clone(),
            generation: self.inner.generation.load(Ordering::Relaxed),
        }
    }

    /// An idle connection taken from the stack, if it is still alive (see
    /// [`ServerConn::check_idle`]); a dead one is closed.
    fn usable(&self, mut conn: Box<ServerConn>) -> Option<Box<ServerConn>> {
        if conn.check_idle() {
            return Some(conn);
        }
        tracing::debug!(server = %self.inner.spec.addr, "closing a pooled server connection that died while idle");
        drop(conn);
        self.forget_one();
        None
    }

    /// What a fresh server of this pool reports at startup, once one was
    /// opened.
    pub fn startup_params(&self) -> Option<StartupParams> {
        self.inner
            .startup_params
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits up to `query_wait_timeout` for a server connection.
    pub async fn checkout(&self) -> Result<PooledServer, CheckoutError> {
        let take = loop {
            // The lock is released before `usable` runs: closing a dead
            // connection takes it again.
            let taken = self.slots().take(Instant::now());
            match taken {
                Take::Ready(conn) => match self.usable(conn) {
                    Some(conn) => break Take::Ready(conn),
                    None => continue,
                },
                other => break other,
            }
        };
        let delivery = match take {
            Take::Ready(conn) => return Ok(self.lend(conn)),
            Take::Closed => return Err(CheckoutError::Closed),
            Take::Wait {
                delivery,
                open_one,
                start_timer,
            } => {
                if open_one {
                    self.open_in_background();
                }
                if start_timer {
                    self.time_waits_in_background();
                }
                delivery
            }
        };
        CLIENTS_WAITING.fetch_add(1, Ordering::Relaxed);
        let mut waiting = Waiting {
            pool: self,
            delivery,
        };
        // `query_wait_timeout` is the pool's wait timer's to enforce.
        match (&mut waiting.delivery).await {
            Ok(Ok(conn)) => Ok(self.lend(conn)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(CheckoutError::Closed),
        }
    }

    /// The pool's wait timer: while anyone waits, it sleeps until the
    /// longest wait runs out (`query_wait_timeout`) and fails the waits
    /// that did ([`Slots::expire`]); it stops when nobody waits. It holds
    /// the pool weakly, so a pool that is dropped is not kept alive.
    fn time_waits_in_background(&self) {
        let pool = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                let Some(inner) = pool.upgrade() else { return };
                let limit = inner.wait_timeout;
                let next = inner
                    .slots
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .expire(Instant::now(), limit, || CheckoutError::WaitTimeout(limit));
                drop(inner);
                let Some(at) = next else { return };
                tokio::time::sleep_until(at.into()).await;
            }
        });
    }

    /// An idle connection, without waiting: the common checkout. `None`
    /// when none is pooled (then [`ServerPool::checkout`] waits).
    pub fn checkout_idle(&self) -> Option<PooledServer> {
        loop {
            let conn = self.slots().take_idle()?;
            if let Some(conn) = self.usable(conn) {
                return Some(self.lend(conn));
            }
        }
    }

    /// A server only if one is idle or can be opened right now.
    pub async fn checkout_now(&self) -> Option<PooledServer> {
        let reserved = loop {
            let taken = self.slots().take_now();
            match taken {
                Ok(conn) => {
                    if let Some(conn) = self.usable(conn) {
                        return Some(self.lend(conn));
                    }
                }
                Err(reserved) => break reserved,
            }
        };
        if !reserved {
            return None;
        }
        match self.open().await {
            Ok(conn) => Some(self.lend(conn)),
            Err(_) => {
                self.forget_one();
                None
            }
        }
    }

    /// Opens a connection (bounded by `server_connect_timeout`) and notes
    /// what it reported at startup.
    async fn open(&self) -> Result<Box<ServerConn>, ServerError> {
        let spec = &self.inner.spec;
        // Boxed: connecting is rare, and its large future would otherwise
        // sit inside every checkout's future.
        let conn = Box::pin(ServerConn::connect(spec)).await?;
        *self
            .inner
            .startup_params
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(conn.params().to_vec()));
        tracing::debug!(server = %spec.addr, user = %spec.user, database = %spec.database, "server connection opened");
        Ok(Box::new(conn))
    }

    /// Opens a connection for the waiters, in its own task so that a
    /// waiter giving up does not abandon the attempt.
    fn open_in_background(&self) {
        let pool = self.clone();
        tokio::spawn(async move {
            match pool.open().await {
                Ok(conn) => {
                    let closed = pool.slots().opened(conn, Instant::now());
                    drop(closed);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open a server connection");
                    let again = pool.slots().open_failed(CheckoutError::Connect(e));
                    if again {
                        pool.open_in_background();
                    }
                }
            }
        });
    }

    /// Takes a connection back: to a waiter or the idle stack if it is idle,
    /// in sync and young enough; closed otherwise.
    fn give_back(&self, conn: Box<ServerConn>) {
        // One clock read serves the lifetime check and the idle mark.
        let now = Instant::now();
        let expired = self
            .inner
            .lifetime
            .is_some_and(|l| now.saturating_duration_since(conn.created) >= l);
        if !conn.is_clean() || expired {
            drop(conn);
            self.forget_one();
            return;
        }
        let closed = self.slots().give_back(conn, now);
        drop(closed);
    }

    /// One connection is gone; open a replacement if someone waits.
    fn forget_one(&self) {
        if self.slots().forget() {
            self.open_in_background();
        }
    }

    /// Closes idle connections that `keep` rejects.
    pub(super) fn retain_idle(&self, keep: impl FnMut(&Idle<Box<ServerConn>>) -> bool) {
        let gone = self.slots().retain_idle(keep);
        drop(gone);
    }

    /// The member changed role: idle connections close now, lent ones when
    /// they come back; new checkouts get new connections.
    pub fn retire(&self) {
        self.inner.generation.fetch_add(1, Ordering::Relaxed);
        self.retain_idle(|_| false);
    }

    /// Closes the pool: idle connections now, lent ones when returned.
    pub(super) fn close(&self) {
        let gone = self.slots().close();
        drop(gone);
    }

    /// (idle, open, waiting) connections and clients.
    pub fn counts(&self) -> (usize, usize, usize) {
        self.slots().counts()
    }
}

/// Why no server connection could be handed out.
#[derive(Debug, Error)]
pub enum CheckoutError {
    #[error("no server connection became free within query_wait_timeout ({0:?})")]
    WaitTimeout(Duration),
    #[error("{0}")]
    Connect(ServerError),
    #[error("the pool is closed")]
    Closed,
}

impl PoolSettings {
    /// Same sizes, timeouts and TLS mode (the connector itself is not
    /// compared: TLS files change only with a restart).
    pub fn same_as(&self, other: &PoolSettings) -> bool {
        self.pool_size == other.pool_size
            && self.query_wait_timeout == other.query_wait_timeout
            && self.connect_timeout == other.connect_timeout
            && self.idle_timeout == other.idle_timeout
            && self.lifetime == other.lifetime
            && self.tls.as_ref().map(|t| t.1) == other.tls.as_ref().map(|t| t.1)
    }
}

/// Pool sizes and timeouts shared by every pool.
#[derive(Clone)]
pub struct PoolSettings {
    pub pool_size: usize,
    pub query_wait_timeout: Duration,
    pub connect_timeout: Duration,
    pub idle_timeout: Option<Duration>,
    pub lifetime: Option<Duration>,
    /// TLS towards servers, with the mode it was built for.
    pub tls: Option<(tokio_rustls::TlsConnector, crate::tls::ServerTlsMode)>,
}
