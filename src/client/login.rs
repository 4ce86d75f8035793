//! A client's first moments: the startup packet (answering SSLRequest and
//! GSSENCRequest with 'N', serving CancelRequest), protocol version
//! negotiation, the client limit, authentication, and the first server
//! connection, whose ParameterStatus values the client receives.

use bytes::BytesMut;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::auth::User;
use super::close::CloseReason;
use super::params::ClientParams;
use super::registry::ClientEntry;
use super::routing::Routing;
use crate::config::PoolMode;
use crate::config::RoutingConfig;
use crate::pool::cancel::{CancelKey, CancelSlot};
use crate::pool::pools::{CheckoutError, PooledServer};
use crate::pool::server::ServerError;
use crate::proxy::Shared;
use crate::route::choose::{choose_reader, Rng};
use crate::stream::Stream;
use crate::topology::{ClusterTopology, Member};
use crate::wire::messages::{self, ProxyError};
use crate::wire::startup::{self, StartupPacket};

/// A client that passed login, ready for its session loop.
pub struct LoggedIn {
    pub peer: SocketAddr,
    pub user: Arc<User>,
    pub database: String,
    pub params: ClientParams,
    pub client_id: u64,
    pub cancel_key: CancelKey,
    pub cancel: Arc<CancelSlot>,
    /// This client in the registry SHOW CLIENTS reads.
    pub entry: Arc<ClientEntry>,
}

/// A client past login, handed to its session.
pub struct Admitted {
    pub stream: Stream,
    /// Bytes the client sent after its last login message.
    pub pending: BytesMut,
    pub login: LoggedIn,
    /// The login server, kept in session mode.
    pub server: Option<PooledServer>,
    pub routing: Routing,
}

/// Where a client goes after login.
pub enum Entry {
    /// The request loop towards the servers (boxed: the client task's
    /// future holds this across the login's end, per idle client).
    Session(Box<Admitted>),
    /// The admin console (database `pgsplit`, or `pgbouncer` for tools
    /// written for PgBouncer).
    Console(crate::admin::console::ConsoleClient),
}

/// Database names that reach the admin console.
pub const ADMIN_DATABASES: [&str; 2] = ["pgsplit", "pgbouncer"];

/// What finish_login ended with.
#[allow(clippy::large_enum_variant)]
enum Finished {
    Session(LoggedIn, Option<PooledServer>, Routing),
    Console(Arc<User>, String),
}

/// What the plaintext (or, after an upgrade, encrypted) startup phase ended with.
enum Phase {
    /// A StartupMessage: protocol minor version and parameters.
    Startup(u16, Vec<(String, String)>),
    /// The client asked for TLS and was told 'S': the handshake is next.
    UpgradeTls,
    /// Nothing more to do (a CancelRequest, or a close before any packet).
    Done,
}

/// Runs login within `client_login_timeout`. Errors are sent to the client
/// as FATAL ErrorResponses and logged; `None` means the connection is done.
/// On success returns the stream, the bytes the client already sent past
/// login, and the session's identity.
pub async fn login(
    tcp: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    over_limit: bool,
) -> Option<Entry> {
    let deadline = Instant::now() + shared.config().proxy.client_login_timeout.0;
    let mut buf = BytesMut::with_capacity(1024);
    let mut tcp = tcp;
    let offer_tls = shared.tls_acceptor.is_some();
    let (mut stream, phase) = match within(
        deadline,
        startup_phase(&mut tcp, &mut buf, shared, offer_tls, false),
    )
    .await
    {
        Ok(Phase::UpgradeTls) => {
            let acceptor = shared.tls_acceptor.as_ref()?;
            let tls = match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::info!(client = %peer, error = %e, "TLS handshake failed");
                    return None;
                }
                Err(_) => return None,
            };
            let mut stream = Stream::Accepted(Box::new(tls));
            let phase = within(
                deadline,
                startup_phase(&mut stream, &mut buf, shared, false, true),
            )
            .await;
            (stream, phase)
        }
        other => (Stream::Plain(tcp), other),
    };
    let outcome = match phase {
        Ok(Phase::Startup(minor, params)) => {
            within(
                deadline,
                finish_login(
                    &mut stream,
                    &mut buf,
                    minor,
                    params,
                    shared,
                    over_limit,
                    peer,
                ),
            )
            .await
        }
        Ok(Phase::UpgradeTls | Phase::Done) => return None,
        Err(e) => Err(e),
    };
    let err = match outcome {
        Ok(Finished::Session(ready, server, routing)) => {
            tracing::info!(client = %peer, user = %ready.user.config.name, database = %ready.database, read_only = routing.read_only, tls = stream.is_tls(), "client logged in");
            return Some(Entry::Session(Box::new(Admitted {
                stream,
                pending: buf,
                login: ready,
                server,
                routing,
            })));
        }
        Ok(Finished::Console(user, database)) => {
            tracing::info!(client = %peer, user = %user.config.name, database = %database, "admin console login");
            return Some(Entry::Console(crate::admin::console::ConsoleClient {
                stream,
                pending: buf,
                peer,
                user: user.config.name.clone(),
            }));
        }
        Err(e) => e,
    };
    let reason = CloseReason::for_login(&err.code, Instant::now() >= deadline);
    tracing::info!(client = %peer, reason = reason.as_str(), error = %err, "client login refused");
    shared.metrics.client_closed(reason.as_str());
    shared.metrics.error_sent(&err.code);
    let _ = stream.write_all(&err.to_bytes()).await;
    None
}

/// Runs a login step, turning the end of `client_login_timeout` into an error.
async fn within<T>(
    deadline: Instant,
    step: impl std::future::Future<Output = Result<T, ProxyError>>,
) -> Result<T, ProxyError> {
    tokio::time::timeout_at(deadline, step)
        .await
        .unwrap_or_else(|_| {
            Err(ProxyError::fatal(
                "08P01",
                "client did not finish login within client_login_timeout",
            ))
        })
}

/// Reads one startup-phase packet; `None` on a clean close before it.
async fn read_startup_packet<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<Option<BytesMut>, ProxyError> {
    loop {
        let len =
            startup::packet_len(buf).map_err(|e| ProxyError::fatal("08P01", e.to_string()))?;
        if let Some(len) = len {
            if buf.len() >= len {
                return Ok(Some(buf.split_to(len)));
            }
        }
        let n = stream
            .read_buf(buf)
            .await
            .map_err(|e| ProxyError::fatal("08006", format!("client connection lost: {e}")))?;
        if n == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            return Err(ProxyError::fatal("08P01", "incomplete startup packet"));
        }
    }
}

fn lost(e: std::io::Error) -> ProxyError {
    ProxyError::fatal("08006", format!("client connection lost: {e}"))
}

/// Answers SSLRequest ('S' when TLS is configured, else 'N') and
/// GSSENCRequest ('N'), serves CancelRequest, and returns the StartupMessage.
async fn startup_phase<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    shared: &Shared,
    offer_tls: bool,
    encrypted: bool,
) -> Result<Phase, ProxyError> {
    loop {
        let Some(packet) = read_startup_packet(stream, buf).await? else {
            return Ok(Phase::Done);
        };
        match startup::parse(&packet).map_err(|e| ProxyError::fatal("08P01", e.to_string()))? {
            StartupPacket::SslRequest | StartupPacket::GssEncRequest if encrypted => {
                return Err(ProxyError::fatal(
                    "08P01",
                    "encryption requested on an encrypted connection",
                ));
            }
            request @ (StartupPacket::SslRequest | StartupPacket::GssEncRequest) => {
                // Bytes sent before our answer would be read as plaintext
                // after it (CVE-2021-23222); PostgreSQL refuses them too.
                if !buf.is_empty() {
                    return Err(ProxyError::fatal(
                        "08P01",
                        "received unencrypted data after encryption request",
                    ));
                }
                if offer_tls && request == StartupPacket::SslRequest {
                    stream.write_all(b"S").await.map_err(lost)?;
                    return Ok(Phase::UpgradeTls);
                }
                stream.write_all(b"N").await.map_err(lost)?;
            }
            StartupPacket::Cancel {
                process_id,
                secret_key,
            } => {
                let key = CancelKey {
                    process_id,
                    secret_key,
                };
                if let Some(slot) = shared.cancels.find(key) {
                    slot.cancel().await;
                }
                return Ok(Phase::Done);
            }
            StartupPacket::Startup {
                major,
                minor,
                params,
            } => {
                if major != 3 {
                    return Err(ProxyError::fatal(
                        "0A000",
                        format!(
                            "unsupported frontend protocol {major}.{minor}: pgsplit supports 3.0"
                        ),
                    ));
                }
                return Ok(Phase::Startup(minor, params));
            }
        }
    }
}

/// Everything after the StartupMessage: version negotiation, limits,
/// authentication, the first server and the client's parameters.
async fn finish_login(
    stream: &mut Stream,
    buf: &mut BytesMut,
    minor: u16,
    params: Vec<(String, String)>,
    shared: &Shared,
    over_limit: bool,
    peer: SocketAddr,
) -> Result<Finished, ProxyError> {
    if shared.config().proxy.tls_require && !stream.is_tls() {
        return Err(ProxyError::fatal(
            "28000",
            "TLS is required (tls_require = true); connect with sslmode=require",
        ));
    }
    let mut out = BytesMut::with_capacity(512);
    let protocol_options: Vec<&str> = params
        .iter()
        .filter(|(n, _)| n.starts_with("_pq_."))
        .map(|(n, _)| n.as_str())
        .collect();
    if minor > 0 || !protocol_options.is_empty() {
        messages::negotiate_protocol_version(&mut out, 0, &protocol_options);
        stream.write_all(&out.split()).await.map_err(lost)?;
    }
    if over_limit {
        return Err(ProxyError::fatal(
            "53300",
            format!(
                "sorry, too many clients already (max_client_connections = {})",
                shared.config().proxy.max_client_connections
            ),
        ));
    }
    let param = |name: &str| {
        params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let user_name = param("user")
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            ProxyError::fatal(
                "28000",
                "no PostgreSQL user name specified in startup packet",
            )
        })?
        .to_string();
    let database = param("database")
        .filter(|d| !d.is_empty())
        .unwrap_or(&user_name)
        .to_string();
    if param("replication").is_some_and(|r| !matches!(r, "false" | "off" | "no" | "0")) {
        return Err(ProxyError::fatal(
            "0A000",
            "replication connections are not supported",
        ));
    }
    let mut client_params = ClientParams::from_startup(&params)?;
    let users = shared.users.load_full();
    let user = users.authenticate(stream, buf, &user_name).await?;
    messages::auth_ok(&mut out);
    if ADMIN_DATABASES.contains(&database.as_str()) {
        if !shared
            .config()
            .proxy
            .admin_users
            .contains(&user.config.name)
        {
            return Err(ProxyError::fatal(
                "28000",
                format!(
                    "user \"{}\" may not use the admin console (not in admin_users)",
                    user.config.name
                ),
            ));
        }
        crate::admin::console::greet(&mut out);
        stream.write_all(&out).await.map_err(lost)?;
        return Ok(Finished::Console(user, database));
    }

    let config = std::sync::Arc::clone(&shared.config());
    let routing_config = &config.routing;
    let (database, read_only) = match routing_config.read_only_alias(&database) {
        Some(real) => (real.to_string(), true),
        None => (database, false),
    };
    let cluster = config.cluster_for(&database).ok_or_else(|| {
        ProxyError::fatal(
            "3D000",
            format!("no cluster serves database \"{database}\""),
        )
    })?;
    let client_id = shared.next_client_id();
    // The login server: the leader, or a replica for a read-only alias.
    // While the cluster has no member to offer (a source that has not
    // answered yet, a failover), the login waits as writes do.
    let mut watch = shared.topology.clone();
    let wait_until = tokio::time::Instant::now() + routing_config.leader_wait_timeout.0;
    let (topology, home) = loop {
        let topology = watch.borrow_and_update().clone();
        let home = topology
            .cluster(&cluster.name)
            .and_then(|c| login_member(c, routing_config, read_only, client_id))
            .cloned();
        if let Some(home) = home {
            break (topology, home);
        }
        if !matches!(
            tokio::time::timeout_at(wait_until, watch.changed()).await,
            Ok(Ok(()))
        ) {
            let what = if read_only {
                "no replica available"
            } else {
                "no leader known"
            };
            return Err(ProxyError::fatal(
                "57P03",
                format!("{what} for cluster \"{}\"", cluster.name),
            ));
        }
    };
    let home = &home;
    let _ = &topology;
    let group = shared
        .pools
        .group(&database, &user.config.name, user.config.password());
    let pool = group.pool(home);
    let mark = shared.write_mark(&user.config.name);
    let metrics = shared
        .metrics
        .session(&cluster.name, &database, &user.config.name);
    let mut routing = Routing::new(
        cluster.name.clone(),
        shared.topology.clone(),
        group,
        read_only,
        mark,
        client_id,
        metrics,
    );
    if home.role == crate::topology::Role::Replica {
        routing.route = crate::metrics::Route::Replica;
    }
    let session_mode = config.proxy.pool_mode == PoolMode::Session;
    // A server now, if one is free, to check the client's settings and
    // learn the server's values; in transaction mode a busy pool must not
    // stop logins, so the values a fresh server reported stand in.
    let cached = pool.startup_params();
    let server = match (&cached, session_mode) {
        (Some(_), false) => pool.checkout_now().await,
        _ => Some(pool.checkout().await.map_err(checkout_error)?),
    };
    let mut server = match server {
        Some(mut server) => {
            if let Err(e) = client_params.apply(&mut server).await {
                return Err(server_error(e));
            }
            for (name, value) in server.params() {
                messages::parameter_status(&mut out, name, value);
            }
            Some(server)
        }
        None => {
            let startup = cached.unwrap_or_default();
            for (name, value) in client_params.overlay(&startup) {
                messages::parameter_status(&mut out, name, value);
            }
            None
        }
    };
    let (cancel_key, cancel) = shared.cancels.register();
    messages::backend_key_data(&mut out, cancel_key.process_id, cancel_key.secret_key);
    messages::ready_for_query(&mut out, b'I');
    if let Err(e) = stream.write_all(&out).await {
        shared.cancels.unregister(cancel_key);
        return Err(lost(e));
    }
    if !session_mode {
        server = None;
    } else if let Some(server) = &server {
        cancel.hold(server.cancel_target());
        routing.held = Some(home.role);
    }
    let (group_database, group_user) = routing.group.names();
    let entry = Arc::new(ClientEntry::new(
        client_id,
        group_user,
        group_database,
        peer,
        stream.is_tls(),
    ));
    if server.is_some() {
        entry.set_state(super::registry::ClientState::Active);
    }
    shared.client_list.add(entry.clone());
    let login = LoggedIn {
        peer,
        user,
        database,
        params: client_params,
        client_id,
        cancel_key,
        cancel,
        entry,
    };
    Ok(Finished::Session(login, server, routing))
}

/// The member a client logs in through: the leader, or a replica for a
/// read-only alias. During a failover (no leader known) a client can still
/// log in through a replica and read; its writes wait for the new leader.
fn login_member<'t>(
    cluster: &'t ClusterTopology,
    routing: &RoutingConfig,
    read_only: bool,
    seed: u64,
) -> Option<&'t Member> {
    let replica = || choose_reader(cluster, routing, None, &mut Rng::new(seed));
    if read_only {
        replica()
    } else {
        cluster.leader().or_else(replica)
    }
}

/// The error a client sees when no server connection could be had.
pub fn checkout_error(e: CheckoutError) -> ProxyError {
    match e {
        CheckoutError::WaitTimeout(_) => ProxyError::fatal("53300", e.to_string())
            .with_hint("raise pool_size or query_wait_timeout, or look for long transactions"),
        CheckoutError::Connect(e) => server_error(e),
        CheckoutError::Closed => ProxyError::fatal("08006", e.to_string()),
    }
}

/// A server's refusal relayed with its own SQLSTATE; other failures as
/// 08006 (connection failure).
pub fn server_error(e: ServerError) -> ProxyError {
    match e {
        ServerError::Rejected {
            addr,
            code,
            message,
            ..
        } => ProxyError::fatal("08006", format!("server {addr}: {message}")).with_code(code),
        other => ProxyError::fatal("08006", other.to_string()),
    }
}
