//! The listener: accepts clients, enforces `max_client_connections`, and
//! runs one task per client (login, then the session loop).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::client::auth::UserDirectory;
use crate::client::routing::WriteMark;
use crate::client::statements::StatementRegistry;
use crate::client::{login, session};
use crate::config::Config;
use crate::config::ReadYourWrites;
use crate::pool::cancel::CancelRegistry;
use crate::pool::group::Pools;
use crate::pool::pools::PoolSettings;
use crate::route::classify::Classifier;
use crate::topology::{self, TopologyWatch};

/// State every client task shares.
pub struct Shared {
    pub users: arc_swap::ArcSwap<UserDirectory>,
    /// Read/write classification with the configured write functions.
    pub classifier: arc_swap::ArcSwap<Classifier>,
    /// Bumped once a reload has stored the new config and classifier:
    /// sessions keep both at hand until it moves (`client::settings`).
    pub settings_epoch: AtomicU64,
    /// The config in force; a reload swaps it.
    config: arc_swap::ArcSwap<Config>,
    /// The running topology sources and probes.
    sources: topology::sources::Sources,
    /// TLS towards servers, as built at start (for probes and pools).
    server_tls: Option<(tokio_rustls::TlsConnector, crate::tls::ServerTlsMode)>,
    pub metrics: crate::metrics::Metrics,
    /// Set when a shutdown starts: /readyz turns false.
    pub shutting_down: std::sync::atomic::AtomicBool,
    /// Set when the listener has closed in a shutdown: sessions close
    /// once idle.
    pub draining: std::sync::atomic::AtomicBool,
    /// The console's PAUSE: new transactions wait until RESUME.
    paused: std::sync::atomic::AtomicBool,
    resumed: tokio::sync::Notify,
    /// When pgsplit started (for per-second averages).
    pub started: std::time::Instant,
    pub pools: Arc<Pools>,
    pub cancels: CancelRegistry,
    pub statements: StatementRegistry,
    /// Present when `tls_cert_file`/`tls_key_file` are set.
    pub tls_acceptor: Option<tokio_rustls::TlsAcceptor>,
    pub topology: TopologyWatch,
    /// Clients connected right now (counted from accept to close).
    pub clients: AtomicUsize,
    /// Logged-in clients, for SHOW CLIENTS.
    pub client_list: crate::client::registry::ClientRegistry,
    /// Clients pinned to their server by session state pgsplit cannot
    /// carry (transaction mode), since start.
    pub pins: AtomicU64,
    /// Per-user read-your-writes marks (`read_your_writes = "user"`).
    write_marks: Mutex<HashMap<String, Arc<WriteMark>>>,
    next_client_id: AtomicU64,
}

impl Shared {
    /// The config in force (cheap: no lock, no reference count when the
    /// guard is short-lived).
    pub fn config(&self) -> arc_swap::Guard<Arc<Config>> {
        self.config.load()
    }

    /// Puts `config` in force (see `admin::reload` for what each part
    /// does to running clients and servers).
    pub fn apply_config(&self, config: Config) {
        let p = &config.proxy;
        let nonzero = |d: std::time::Duration| (!d.is_zero()).then_some(d);
        let renewed = self.pools.reconfigure(
            PoolSettings {
                pool_size: p.pool_size as usize,
                query_wait_timeout: p.query_wait_timeout.0,
                connect_timeout: p.server_connect_timeout.0,
                idle_timeout: nonzero(p.server_idle_timeout.0),
                lifetime: nonzero(p.server_lifetime.0),
                tls: self.server_tls.clone(),
            },
            |user| {
                config
                    .users
                    .iter()
                    .find(|u| u.name == user)
                    .map(|u| u.password().to_string())
            },
        );
        self.users.store(Arc::new(UserDirectory::new(&config)));
        self.classifier
            .store(Arc::new(Classifier::new(&config.routing.write_functions)));
        let probes = probe_settings(&config, self.server_tls.clone());
        let restarted = self.sources.apply(&config, probes, self.topology.clone());
        tracing::info!(pool_groups_renewed = renewed, sources_restarted = ?restarted, users = config.users.len(), "config reloaded");
        self.config.store(Arc::new(config));
        self.settings_epoch.fetch_add(1, Ordering::Release);
    }

    /// PAUSE: transactions that have not started wait.
    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    /// RESUME: waiting transactions go on.
    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
        self.resumed.notify_waiters();
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    /// Returns at once unless paused; then when resumed.
    pub async fn wait_while_paused(&self) {
        while self.paused.load(Ordering::SeqCst) {
            let resumed = self.resumed.notified();
            tokio::pin!(resumed);
            resumed.as_mut().enable();
            if !self.paused.load(Ordering::SeqCst) {
                return;
            }
            resumed.await;
        }
    }

    /// A process-unique id for a new client.
    pub fn next_client_id(&self) -> u64 {
        self.next_client_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The read-your-writes mark a new session of `user` uses: its own, or
    /// the user's shared one.
    pub fn write_mark(&self, user: &str) -> Arc<WriteMark> {
        if self.config().routing.read_your_writes != ReadYourWrites::User {
            return Arc::default();
        }
        self.write_marks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(user.to_string())
            .or_default()
            .clone()
    }
}

/// Why the proxy could not start.
#[derive(Debug, Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// How the health and WAL probes log in: `routing.probe_user` (default:
/// the first user) to the `postgres` database.
fn probe_settings(
    config: &Config,
    tls: Option<(tokio_rustls::TlsConnector, crate::tls::ServerTlsMode)>,
) -> topology::probe::ProbeSettings {
    let routing = &config.routing;
    let user = routing
        .probe_user
        .as_ref()
        .and_then(|name| config.users.iter().find(|u| &u.name == name))
        .or(config.users.first());
    let (name, password) = user.map_or(("", ""), |u| (u.name.as_str(), u.password()));
    topology::probe::ProbeSettings {
        interval: routing.probe_interval.0,
        spec: crate::pool::server::ServerSpec {
            addr: "".into(),
            user: name.into(),
            database: routing.probe_database.as_str().into(),
            password: password.into(),
            connect_timeout: config.proxy.server_connect_timeout.0,
            tls,
        },
    }
}

/// A running proxy.
pub struct Proxy {
    local_addr: SocketAddr,
    admin_addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
    /// Stops the accept loop alone (a graceful shutdown).
    accepting: CancellationToken,
    accept_task: Option<JoinHandle<()>>,
    _topology: topology::TopologySender,
}

impl Proxy {
    /// Binds `proxy.listen` and starts serving.
    pub async fn start(config: Config) -> Result<Proxy, StartError> {
        crate::tls::install_provider();
        let p = &config.proxy;
        let tls_acceptor = match (&p.tls_cert_file, &p.tls_key_file) {
            (Some(cert), Some(key)) => Some(crate::tls::acceptor(cert, key)?),
            _ => None,
        };
        let server_tls = crate::tls::connector(p.server_tls_mode, p.server_tls_ca_file.as_deref())?
            .map(|c| (c, p.server_tls_mode));
        let pools_tls = server_tls.clone();
        let (listener, local_addr) = bind(&config.proxy.listen).await?;
        let (admin_listener, admin_addr) = bind(&config.proxy.admin_listen).await?;
        let p = &config.proxy;
        let nonzero = |d: std::time::Duration| (!d.is_zero()).then_some(d);
        let pools = Pools::new(PoolSettings {
            pool_size: p.pool_size as usize,
            query_wait_timeout: p.query_wait_timeout.0,
            connect_timeout: p.server_connect_timeout.0,
            idle_timeout: nonzero(p.server_idle_timeout.0),
            lifetime: nonzero(p.server_lifetime.0),
            tls: server_tls,
        });
        let (topology_tx, topology_rx) = topology::publish(&config);
        let config_routing_functions = config.routing.write_functions.clone();
        let probes = probe_settings(&config, pools_tls.clone());
        let stop = CancellationToken::new();
        let shared = Arc::new(Shared {
            users: arc_swap::ArcSwap::from_pointee(UserDirectory::new(&config)),
            classifier: arc_swap::ArcSwap::from_pointee(Classifier::new(&config_routing_functions)),
            sources: topology::sources::Sources::new(topology_tx.clone(), stop.clone()),
            server_tls: pools_tls.clone(),
            config: arc_swap::ArcSwap::from_pointee(config),
            metrics: crate::metrics::Metrics::new(),
            shutting_down: std::sync::atomic::AtomicBool::new(false),
            draining: std::sync::atomic::AtomicBool::new(false),
            paused: std::sync::atomic::AtomicBool::new(false),
            resumed: tokio::sync::Notify::new(),
            started: std::time::Instant::now(),
            pools: pools.clone(),
            cancels: CancelRegistry::default(),
            statements: StatementRegistry::default(),
            tls_acceptor,
            topology: topology_rx,
            clients: AtomicUsize::new(0),
            client_list: Default::default(),
            pins: AtomicU64::new(0),
            write_marks: Mutex::new(HashMap::new()),
            next_client_id: AtomicU64::new(1),
            settings_epoch: AtomicU64::new(0),
        });
        tokio::spawn(pools.clone().run_sweeper(stop.clone()));
        let interval = shared.config().routing.probe_interval.0;
        shared
            .sources
            .apply(&shared.config(), probes, shared.topology.clone());
        tokio::spawn(topology::roles::run(
            topology_tx.clone(),
            interval,
            stop.clone(),
        ));
        tokio::spawn(
            pools
                .clone()
                .follow_topology(shared.topology.clone(), stop.clone()),
        );
        tokio::spawn(crate::admin::status::count_leader_changes(
            shared.clone(),
            stop.clone(),
        ));
        tokio::spawn(crate::admin::http::serve(
            admin_listener,
            shared.clone(),
            stop.clone(),
        ));
        if let Some(path) = shared.config().source.clone() {
            tokio::spawn(crate::admin::reload::watch_file(
                shared.clone(),
                path,
                stop.clone(),
            ));
        }
        let accepting = stop.child_token();
        let accept_task = tokio::spawn(accept_loop(listener, shared.clone(), accepting.clone()));
        tracing::info!(listen = %local_addr, admin = %admin_addr, "pgsplit is accepting clients");
        Ok(Proxy {
            local_addr,
            admin_addr,
            shared,
            stop,
            accepting,
            accept_task: Some(accept_task),
            _topology: topology_tx,
        })
    }

    /// The address clients connect to (useful when listening on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Reads the config file again and applies it (SIGHUP).
    pub async fn reload(&self) -> Result<(), crate::admin::reload::ReloadError> {
        crate::admin::reload::reload(&self.shared).await
    }

    /// The admin HTTP server's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// State shared with client tasks (pools, clients), for status output.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// A graceful shutdown: /readyz turns false at once; clients are
    /// served (and accepted) for `shutdown_delay` so that load balancers
    /// stop sending new ones; then the listener closes and every client is
    /// told 57P01 and closed as soon as it is idle (no transaction open,
    /// nothing in flight), for at most `shutdown_timeout`; then
    /// [`stop`](Self::stop). `hurry` resolving (a second signal) skips
    /// whatever waiting is left. Returns how many clients were still
    /// connected at the end.
    pub async fn shutdown(mut self, hurry: impl std::future::Future<Output = ()>) -> usize {
        let config = Arc::clone(&self.shared.config());
        let (delay, timeout) = (
            config.proxy.shutdown_delay.0,
            config.proxy.shutdown_timeout.0,
        );
        self.shared.shutting_down.store(true, Ordering::Relaxed);
        tracing::info!(
            ?delay,
            ?timeout,
            "shutting down: /readyz is false; still serving for shutdown_delay"
        );
        tokio::pin!(hurry);
        let hurried = tokio::select! {
            _ = tokio::time::sleep(delay) => false,
            _ = &mut hurry => true,
        };
        self.stop_accepting().await;
        self.shared.draining.store(true, Ordering::Release);
        self.shared.client_list.wake_all();
        let clients = || self.shared.clients.load(Ordering::Relaxed);
        tracing::info!(
            clients = clients(),
            "listener closed; closing clients as they become idle"
        );
        if !hurried {
            let drained = async {
                while clients() > 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            };
            tokio::select! {
                _ = drained => {}
                _ = tokio::time::sleep(timeout) => {
                    tracing::warn!(clients = clients(), "shutdown_timeout passed with clients still busy");
                }
                _ = &mut hurry => {}
            }
        }
        let left = clients();
        self.stop().await;
        left
    }

    /// Closes the listener (once).
    async fn stop_accepting(&mut self) {
        self.accepting.cancel();
        if let Some(task) = self.accept_task.take() {
            let _ = task.await;
        }
    }

    /// Stops accepting and closes the pools. Client tasks end as their
    /// sockets close.
    pub async fn stop(mut self) {
        self.stop.cancel();
        self.stop_accepting().await;
        self.shared.pools.close();
    }
}

/// Binds `addr`, returning the listener and the address it got.
async fn bind(addr: &str) -> Result<(TcpListener, SocketAddr), StartError> {
    let error = |source| StartError::Listen {
        addr: addr.to_string(),
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(error)?;
    let local = listener.local_addr().map_err(error)?;
    Ok((listener, local))
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                tokio::spawn(serve_client(stream, peer, shared.clone()));
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Decrements the client count however the task ends.
struct ClientSlot<'a>(&'a AtomicUsize);

impl Drop for ClientSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve_client(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let count = shared.clients.fetch_add(1, Ordering::Relaxed) + 1;
    let _slot = ClientSlot(&shared.clients);
    let over_limit = count > shared.config().proxy.max_client_connections as usize;
    // Boxed: login's future is large and needed once; every idle client's
    // task would otherwise carry its space for the whole session.
    let login = Box::pin(login::login(stream, peer, &shared, over_limit));
    match login.await {
        Some(login::Entry::Session(admitted)) => session::run(*admitted, &shared).await,
        Some(login::Entry::Console(client)) => {
            Box::pin(crate::admin::console::run(client, &shared)).await
        }
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every idle client is one task; its future's size is memory per
    /// client, so it must stay small (big inner futures are boxed).
    #[tokio::test]
    async fn client_task_is_small() {
        let config = Config::parse(
            "[[users]]\nname='a'\npassword='b'\n[[clusters]]\nname='m'\n[clusters.discovery]\nkind='static'\nleader='127.0.0.1:1'\n",
            "t",
            std::iter::empty(),
        )
        .unwrap();
        let proxy = Proxy::start(Config {
            proxy: crate::config::ProxyConfig {
                listen: "127.0.0.1:0".into(),
                ..config.proxy.clone()
            },
            ..config
        })
        .await
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        let task = serve_client(stream, peer, proxy.shared().clone());
        let size = std::mem::size_of_val(&task);
        println!("client task future: {size} bytes");
        assert!(size <= 1024, "client task future is {size} bytes");
    }
}
