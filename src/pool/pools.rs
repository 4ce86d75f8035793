//! One pool of server connections per (server node, database, user).
//!
//! Built on `deadpool`: its checkout is a semaphore permit plus a pop, its
//! waiters are served first-come first-served, and its `recycle` runs on
//! every checkout, so it is kept to flag checks. deadpool has no idle timeout
//! or lifetime of its own, so a sweeper task applies `server_idle_timeout`
//! and `server_lifetime` with `retain`. Idle connections are handed out
//! last-in first-out so the rest can age out.

use deadpool::managed::{
    self, Metrics, PoolError, QueueMode, RecycleError, RecycleResult, TimeoutType,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use super::server::{ServerConn, ServerError, ServerSpec};

/// ParameterStatus name/value pairs a fresh server reported.
pub type StartupParams = Arc<Vec<(String, String)>>;

/// Opens and vets server connections for one pool.
pub struct ServerManager {
    spec: ServerSpec,
    lifetime: Option<Duration>,
    /// ParameterStatus values of the newest fresh connection, so a client
    /// can log in while every server is busy.
    startup_params: Mutex<Option<StartupParams>>,
}

impl ServerManager {
    /// What a fresh server of this pool reports at startup, once one was
    /// opened.
    pub fn startup_params(&self) -> Option<StartupParams> {
        self.startup_params
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl managed::Manager for ServerManager {
    type Type = ServerConn;
    type Error = ServerError;

    async fn create(&self) -> Result<ServerConn, ServerError> {
        // Boxed: connecting is rare, and its large future would otherwise
        // sit inside every checkout's future.
        let conn = Box::pin(ServerConn::connect(&self.spec)).await?;
        *self
            .startup_params
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(conn.params().to_vec()));
        tracing::debug!(server = %self.spec.addr, user = %self.spec.user, database = %self.spec.database, "server connection opened");
        Ok(conn)
    }

    async fn recycle(&self, conn: &mut ServerConn, _: &Metrics) -> RecycleResult<ServerError> {
        if !conn.is_clean() {
            return Err(RecycleError::message("server connection is not idle"));
        }
        if self.lifetime.is_some_and(|l| conn.created.elapsed() >= l) {
            return Err(RecycleError::message("server_lifetime reached"));
        }
        Ok(())
    }
}

/// A pool for one (node, database, user).
pub type ServerPool = managed::Pool<ServerManager>;
/// A server connection checked out of a [`ServerPool`]; dropping it gives
/// it back, [`discard`] closes it instead.
pub type PooledServer = managed::Object<ServerManager>;

/// Closes a checked-out connection instead of returning it to the pool.
pub fn discard(server: PooledServer) {
    drop(managed::Object::take(server));
}

/// Why no server connection could be handed out.
#[derive(Debug, Error)]
pub enum CheckoutError {
    #[error("no server connection became free within query_wait_timeout ({0:?})")]
    WaitTimeout(Duration),
    #[error("{0}")]
    Connect(ServerError),
    #[error("connecting to the server took longer than server_connect_timeout")]
    ConnectTimeout,
    #[error("the pool is closed")]
    Closed,
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

#[derive(Hash, PartialEq, Eq, Clone)]
struct PoolKey {
    addr: Arc<str>,
    database: Arc<str>,
    user: Arc<str>,
}

/// Every pool pgsplit has opened.
pub struct Pools {
    settings: PoolSettings,
    pools: Mutex<HashMap<PoolKey, ServerPool>>,
}

impl Pools {
    pub fn new(settings: PoolSettings) -> Arc<Pools> {
        Arc::new(Pools {
            settings,
            pools: Mutex::new(HashMap::new()),
        })
    }

    /// The pool for (addr, database, user), created on first use. Sessions
    /// keep the returned handle, so this map is not on the per-query path.
    pub fn pool(&self, addr: &str, database: &str, user: &str, password: &str) -> ServerPool {
        let mut pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        let key = PoolKey {
            addr: addr.into(),
            database: database.into(),
            user: user.into(),
        };
        if let Some(p) = pools.get(&key) {
            return p.clone();
        }
        let s = &self.settings;
        let manager = ServerManager {
            spec: ServerSpec {
                addr: key.addr.clone(),
                user: key.user.clone(),
                database: key.database.clone(),
                password: password.into(),
                connect_timeout: s.connect_timeout,
                tls: s.tls.clone(),
            },
            lifetime: s.lifetime,
            startup_params: Mutex::new(None),
        };
        let pool = managed::Pool::builder(manager)
            .max_size(s.pool_size)
            .wait_timeout(Some(s.query_wait_timeout))
            .create_timeout(Some(s.connect_timeout + Duration::from_millis(100)))
            .queue_mode(QueueMode::Lifo)
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .expect("runtime and sizes are set above");
        pools.insert(key, pool.clone());
        pool
    }

    /// Waits for a server connection from `pool`.
    pub async fn checkout(&self, pool: &ServerPool) -> Result<PooledServer, CheckoutError> {
        pool.get().await.map_err(|e| match e {
            PoolError::Timeout(TimeoutType::Wait) => {
                CheckoutError::WaitTimeout(self.settings.query_wait_timeout)
            }
            PoolError::Timeout(_) => CheckoutError::ConnectTimeout,
            PoolError::Backend(e) => CheckoutError::Connect(e),
            _ => CheckoutError::Closed,
        })
    }

    /// A server only if one is free (or can be opened) right now.
    pub async fn checkout_now(&self, pool: &ServerPool) -> Option<PooledServer> {
        let timeouts = managed::Timeouts {
            wait: Some(Duration::ZERO),
            create: Some(self.settings.connect_timeout),
            recycle: None,
        };
        pool.timeout_get(&timeouts).await.ok()
    }

    /// Closes idle connections past `server_idle_timeout` or
    /// `server_lifetime`. Busy ones are judged when they come back.
    pub fn sweep(&self) {
        let pools: Vec<ServerPool> = self
            .pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        let (idle, life) = (self.settings.idle_timeout, self.settings.lifetime);
        for pool in pools {
            pool.retain(|conn, m| {
                idle.is_none_or(|t| m.last_used() < t)
                    && life.is_none_or(|t| conn.created.elapsed() < t)
            });
        }
    }

    /// Runs [`Pools::sweep`] every second until `stop`.
    pub async fn run_sweeper(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => self.sweep(),
            }
        }
    }

    /// (idle, total) server connections per pool, for status output.
    pub fn status(&self) -> Vec<(String, String, String, usize, usize)> {
        let pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<_> = pools
            .iter()
            .map(|(k, p)| {
                let s = p.status();
                (
                    k.addr.to_string(),
                    k.database.to_string(),
                    k.user.to_string(),
                    s.available,
                    s.size,
                )
            })
            .collect();
        out.sort();
        out
    }

    /// Closes every pool (shutdown).
    pub fn close(&self) {
        for pool in self
            .pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
        {
            pool.close();
        }
    }
}
