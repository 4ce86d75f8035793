//! Configuration: the TOML schema, defaults, `PGSPLIT_PROXY_*` environment
//! overrides, secrets from files, and validation with precise errors.
//!
//! Every key has a default so that the minimal file in DESIGN.md works as
//! written. Errors name the file, the key and what is wrong.

mod env;
pub mod kubernetes;
pub mod routing;
pub mod units;

pub use kubernetes::{KubernetesDiscovery, Preset, RoleLabels};
pub use routing::{LeaderReads, ReadYourWrites, RoutingConfig, TransactionRouting};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use thiserror::Error;
pub use units::{ByteSize, Seconds};

/// A config that cannot be used, with where and why.
#[derive(Debug, Error)]
#[error("{file}: {key}: {problem}")]
pub struct ConfigError {
    /// The file (or environment variable) the problem is in.
    pub file: String,
    /// Dotted key path, e.g. `clusters[0].discovery.leader`.
    pub key: String,
    pub problem: String,
}

/// How long a client keeps a server connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// From login to logout.
    Session,
    /// For one transaction (until ReadyForQuery says idle).
    #[default]
    Transaction,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// How clients prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
pub enum AuthType {
    #[default]
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    #[serde(rename = "md5")]
    Md5,
}

/// The `[proxy]` table.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Address clients connect to.
    pub listen: String,
    /// Address of the admin HTTP server (metrics, health).
    pub admin_listen: String,
    pub pool_mode: PoolMode,
    /// Server connections per (node, database, user).
    pub pool_size: u32,
    /// Clients beyond this get 53300 at login.
    pub max_client_connections: u32,
    /// How long a request waits for a server connection before 53300.
    pub query_wait_timeout: Seconds,
    /// TCP connect plus authentication to a server.
    pub server_connect_timeout: Seconds,
    /// Idle server connections older than this (unused) are closed; 0 = never.
    pub server_idle_timeout: Seconds,
    /// Server connections are closed once this old, when next idle; 0 = never.
    pub server_lifetime: Seconds,
    /// A client must finish startup and authentication within this.
    pub client_login_timeout: Seconds,
    /// A client idle (between transactions) this long is disconnected
    /// with 57P05; 0 = never.
    pub client_idle_timeout: Seconds,
    /// A client idle inside a transaction this long is disconnected with
    /// 25P03 and its server closed; 0 = never.
    pub idle_transaction_timeout: Seconds,
    /// Largest message a client may send (08P01 beyond it).
    pub max_message_size: ByteSize,
    pub auth_type: AuthType,
    /// Run on a server before another client gets it in session mode.
    pub server_reset_query: String,
    /// Pooled prepared statements kept per server connection (transaction
    /// mode); beyond it the least recently used is closed.
    pub max_prepared_statements: u32,
    /// PEM certificate chain offered to clients that ask for TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key for `tls_cert_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<PathBuf>,
    /// Refuse clients that do not use TLS (28000).
    pub tls_require: bool,
    /// TLS towards servers: disable, prefer, require, verify-ca, verify-full.
    pub server_tls_mode: crate::tls::ServerTlsMode,
    /// CA certificates (PEM) for verify-ca and verify-full.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_tls_ca_file: Option<PathBuf>,
    /// Users (from `[[users]]`) who may open the admin console (database
    /// `pgsplit`).
    pub admin_users: Vec<String>,
    /// `text` or `json` (one JSON object per line), for log collectors.
    pub log_format: LogFormat,
    /// Levels, overall and per module: `info`, or
    /// `info,pgsplit::topology=debug`. `RUST_LOG` wins when set.
    pub log_level: String,
    /// On SIGTERM: how long pgsplit goes on serving (and accepting) with
    /// /readyz false, so that Kubernetes stops sending new clients.
    pub shutdown_delay: Seconds,
    /// Then, after the listener closed: how long running transactions
    /// may take before pgsplit exits anyway.
    pub shutdown_timeout: Seconds,
    /// Threads that serve clients. 1: one event loop on one thread, as
    /// PgBouncer runs (the least CPU per transaction); 0: one per CPU
    /// core; N: N threads sharing the work.
    pub worker_threads: u32,
    /// Before an event loop thread sleeps (nothing left to run), it
    /// yields its CPU once (`sched_yield`), so that the servers and
    /// clients its last writes woke, if they wait for that CPU, run
    /// first. Not while any client waits for a server: then the pools
    /// are the bottleneck and answers that free servers must not wait.
    /// Off by default: measured here it cost CPU per transaction and
    /// bought no throughput, and it gives the CPU to any task the
    /// scheduler picks, not only to pgsplit's own group (README, Layout).
    pub yield_before_sleep: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        use std::time::Duration;
        ProxyConfig {
            listen: "0.0.0.0:6432".into(),
            admin_listen: "0.0.0.0:9930".into(),
            pool_mode: PoolMode::Transaction,
            pool_size: 20,
            max_client_connections: 1000,
            query_wait_timeout: Seconds(Duration::from_secs(30)),
            server_connect_timeout: Seconds(Duration::from_secs(5)),
            server_idle_timeout: Seconds(Duration::from_secs(600)),
            server_lifetime: Seconds(Duration::from_secs(3600)),
            client_login_timeout: Seconds(Duration::from_secs(15)),
            client_idle_timeout: Seconds(Duration::ZERO),
            idle_transaction_timeout: Seconds(Duration::ZERO),
            max_message_size: ByteSize(64 << 20),
            auth_type: AuthType::ScramSha256,
            server_reset_query: "DISCARD ALL".into(),
            max_prepared_statements: 250,
            tls_cert_file: None,
            tls_key_file: None,
            tls_require: false,
            server_tls_mode: crate::tls::ServerTlsMode::Prefer,
            server_tls_ca_file: None,
            admin_users: Vec::new(),
            log_format: LogFormat::Text,
            log_level: "info".into(),
            shutdown_delay: Seconds(Duration::from_secs(5)),
            shutdown_timeout: Seconds(Duration::from_secs(20)),
            worker_threads: 1,
            yield_before_sleep: false,
        }
    }
}

/// One `[[users]]` entry: used for client auth and for the servers.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// File holding the password (a mounted Kubernetes Secret); one trailing
    /// newline is ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
}

impl UserConfig {
    /// The password after `password_file` was read at load time.
    pub fn password(&self) -> &str {
        self.password.as_deref().unwrap_or("")
    }
}

/// One `[[clusters]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub name: String,
    /// Database names routed to this cluster. Empty: every database (allowed
    /// for one cluster only).
    #[serde(default)]
    pub databases: Vec<String>,
    pub discovery: DiscoveryConfig,
}

/// Where a cluster's members come from.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum DiscoveryConfig {
    /// Fixed addresses.
    Static {
        leader: String,
        #[serde(default)]
        replicas: Vec<ReplicaEntry>,
    },
    /// Patroni REST API: any members' `http://host:port`.
    Patroni {
        urls: Vec<String>,
        /// How often `GET /cluster` is polled.
        #[serde(default = "default_poll_interval")]
        poll_interval: Seconds,
    },
    /// Kubernetes Pods by label selector, roles from a label.
    Kubernetes(Box<KubernetesDiscovery>),
}

/// A static replica: `"host:port"`, or a table with a weight and a zone.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum ReplicaEntry {
    Addr(String),
    Detailed {
        addr: String,
        /// Share of reads relative to other replicas (0: none).
        #[serde(default = "default_weight")]
        weight: u32,
        /// Zone, for `routing.zone` preference.
        #[serde(default)]
        zone: String,
    },
}

fn default_poll_interval() -> Seconds {
    Seconds(std::time::Duration::from_millis(250))
}

fn default_weight() -> u32 {
    1
}

impl DiscoveryConfig {
    /// The `kind` key's value.
    pub fn kind(&self) -> &'static str {
        match self {
            DiscoveryConfig::Static { .. } => "static",
            DiscoveryConfig::Patroni { .. } => "patroni",
            DiscoveryConfig::Kubernetes(_) => "kubernetes",
        }
    }
}

impl ReplicaEntry {
    pub fn addr(&self) -> &str {
        match self {
            ReplicaEntry::Addr(a) | ReplicaEntry::Detailed { addr: a, .. } => a,
        }
    }

    pub fn weight(&self) -> u32 {
        match self {
            ReplicaEntry::Addr(_) => 1,
            ReplicaEntry::Detailed { weight, .. } => *weight,
        }
    }

    pub fn zone(&self) -> &str {
        match self {
            ReplicaEntry::Addr(_) => "",
            ReplicaEntry::Detailed { zone, .. } => zone,
        }
    }
}

/// The whole config file.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub proxy: ProxyConfig,
    #[serde(default)]
    pub routing: RoutingConfig,
    #[serde(default)]
    pub users: Vec<UserConfig>,
    #[serde(default)]
    pub clusters: Vec<ClusterConfig>,
    /// The file this config was read from (for reloads).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

impl Config {
    /// Reads, overrides from the environment, resolves secrets, validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            key: "(file)".into(),
            problem: format!("cannot read: {e}"),
        })?;
        let mut config = Self::parse(&text, &file, std::env::vars())?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses `text` (named `file` in errors) with `vars` as the environment.
    pub fn parse(
        text: &str,
        file: &str,
        vars: impl Iterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let err = |key: &str, problem: String| ConfigError {
            file: file.to_string(),
            key: key.to_string(),
            problem,
        };
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            err(&span_key(text, e.span()), e.message().to_string())
        })?;
        // Re-read the text itself when nothing was overridden, so that schema
        // errors point at the user's own line.
        let overridden = env::apply_overrides(&mut table, file, vars)?;
        let source = if overridden {
            toml::to_string(&table).map_err(|e| err("(environment)", e.to_string()))?
        } else {
            text.to_string()
        };
        let mut config: Config = toml::from_str(&source)
            .map_err(|e| err(&span_key(&source, e.span()), e.message().to_string()))?;
        config.resolve_secrets(file)?;
        config
            .validate()
            .map_err(|(key, problem)| err(&key, problem))?;
        Ok(config)
    }

    fn resolve_secrets(&mut self, file: &str) -> Result<(), ConfigError> {
        for (i, user) in self.users.iter_mut().enumerate() {
            if let (None, Some(path)) = (&user.password, &user.password_file) {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
                    file: file.to_string(),
                    key: format!("users[{i}].password_file"),
                    problem: format!("cannot read {}: {e}", path.display()),
                })?;
                let text = text.strip_suffix('\n').unwrap_or(&text);
                user.password = Some(text.strip_suffix('\r').unwrap_or(text).to_string());
            }
        }
        Ok(())
    }

    /// Checks values serde cannot: ranges, addresses, cross references.
    fn validate(&self) -> Result<(), (String, String)> {
        let p = &self.proxy;
        check_addr("proxy.listen", &p.listen)?;
        check_addr("proxy.admin_listen", &p.admin_listen)?;
        if p.pool_size == 0 {
            return Err(("proxy.pool_size".into(), "must be at least 1".into()));
        }
        if p.max_client_connections == 0 {
            return Err((
                "proxy.max_client_connections".into(),
                "must be at least 1".into(),
            ));
        }
        if p.max_message_size.0 < 1024 || p.max_message_size.0 > (1 << 30) {
            return Err((
                "proxy.max_message_size".into(),
                "must be between 1kB and 1GB".into(),
            ));
        }
        if p.max_prepared_statements == 0 {
            return Err((
                "proxy.max_prepared_statements".into(),
                "must be at least 1".into(),
            ));
        }
        if p.worker_threads > 1024 {
            return Err((
                "proxy.worker_threads".into(),
                "must be 0 (one per CPU core) to 1024".into(),
            ));
        }
        if p.query_wait_timeout.0.is_zero() {
            return Err(("proxy.query_wait_timeout".into(), "must be above 0".into()));
        }
        match (&p.tls_cert_file, &p.tls_key_file) {
            (Some(cert), Some(key)) => {
                crate::tls::acceptor(cert, key)
                    .map_err(|e| ("proxy.tls_cert_file".to_string(), e.to_string()))?;
            }
            (None, None) if p.tls_require => {
                return Err((
                    "proxy.tls_require".into(),
                    "needs tls_cert_file and tls_key_file".into(),
                ));
            }
            (None, None) => {}
            _ => {
                return Err((
                    "proxy.tls_key_file".into(),
                    "set both tls_cert_file and tls_key_file, or neither".into(),
                ))
            }
        }
        crate::tls::connector(p.server_tls_mode, p.server_tls_ca_file.as_deref())
            .map_err(|e| ("proxy.server_tls_mode".to_string(), e.to_string()))?;
        if self.users.is_empty() {
            return Err((
                "users".into(),
                "at least one [[users]] entry is needed".into(),
            ));
        }
        for (i, u) in self.users.iter().enumerate() {
            if u.name.is_empty() {
                return Err((format!("users[{i}].name"), "must not be empty".into()));
            }
            if self.users[..i].iter().any(|o| o.name == u.name) {
                return Err((
                    format!("users[{i}].name"),
                    format!("user \"{}\" appears twice", u.name),
                ));
            }
            if u.password.is_none() {
                return Err((
                    format!("users[{i}].password"),
                    "set password or password_file".into(),
                ));
            }
        }
        if tracing_subscriber::EnvFilter::try_new(&self.proxy.log_level).is_err() {
            return Err((
                "proxy.log_level".into(),
                format!(
                    "\"{}\" is not a level list like \"info,pgsplit::topology=debug\"",
                    self.proxy.log_level
                ),
            ));
        }
        self.routing.validate()?;
        for (i, name) in self.proxy.admin_users.iter().enumerate() {
            if !self.users.iter().any(|u| &u.name == name) {
                return Err((
                    format!("proxy.admin_users[{i}]"),
                    format!("\"{name}\" is not one of [[users]]"),
                ));
            }
        }
        if let Some(name) = &self.routing.probe_user {
            if !self.users.iter().any(|u| &u.name == name) {
                return Err((
                    "routing.probe_user".into(),
                    format!("\"{name}\" is not one of [[users]]"),
                ));
            }
        }
        if self.clusters.is_empty() {
            return Err((
                "clusters".into(),
                "at least one [[clusters]] entry is needed".into(),
            ));
        }
        for (i, c) in self.clusters.iter().enumerate() {
            if self.clusters[..i].iter().any(|o| o.name == c.name) {
                return Err((
                    format!("clusters[{i}].name"),
                    format!("cluster \"{}\" appears twice", c.name),
                ));
            }
            if c.databases.is_empty() && self.clusters.len() > 1 {
                return Err((
                    format!("clusters[{i}].databases"),
                    "with several clusters, each must list its databases".into(),
                ));
            }
            let key = format!("clusters[{i}].discovery");
            match &c.discovery {
                DiscoveryConfig::Static { leader, replicas } => {
                    check_host_port(&format!("{key}.leader"), leader)?;
                    for (j, r) in replicas.iter().enumerate() {
                        check_host_port(&format!("{key}.replicas[{j}]"), r.addr())?;
                    }
                }
                DiscoveryConfig::Patroni {
                    urls,
                    poll_interval,
                } => {
                    if urls.is_empty() {
                        return Err((
                            format!("{key}.urls"),
                            "list at least one member's REST API URL".into(),
                        ));
                    }
                    for (j, u) in urls.iter().enumerate() {
                        let host = u.strip_prefix("http://").map(|h| h.trim_end_matches('/'));
                        match host {
                            Some(h) => check_host_port(&format!("{key}.urls[{j}]"), h)?,
                            None => {
                                return Err((
                                    format!("{key}.urls[{j}]"),
                                    format!("\"{u}\" is not an http://host:port URL"),
                                ))
                            }
                        }
                    }
                    if poll_interval.0 < std::time::Duration::from_millis(10) {
                        return Err((
                            format!("{key}.poll_interval"),
                            "must be at least 10ms".into(),
                        ));
                    }
                }
                DiscoveryConfig::Kubernetes(k) => {
                    k.validate()
                        .map_err(|(field, problem)| (format!("{key}.{field}"), problem))?;
                }
            }
        }
        Ok(())
    }

    /// The effective config as TOML with every password replaced by `****`.
    pub fn masked_toml(&self) -> String {
        let mut copy = self.clone();
        for u in &mut copy.users {
            if u.password.is_some() {
                u.password = Some("****".into());
            }
        }
        toml::to_string(&copy).unwrap_or_else(|e| format!("# cannot print config: {e}\n"))
    }

    /// The cluster serving `database`, if any.
    pub fn cluster_for(&self, database: &str) -> Option<&ClusterConfig> {
        self.clusters
            .iter()
            .find(|c| c.databases.iter().any(|d| d == database))
            .or_else(|| self.clusters.iter().find(|c| c.databases.is_empty()))
    }
}

fn check_addr(key: &str, value: &str) -> Result<(), (String, String)> {
    value
        .parse::<std::net::SocketAddr>()
        .map(|_| ())
        .map_err(|_| {
            (
                key.to_string(),
                format!("\"{value}\" is not an IP:port address"),
            )
        })
}

fn check_host_port(key: &str, value: &str) -> Result<(), (String, String)> {
    match value.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err((
            key.to_string(),
            format!("\"{value}\" is not a host:port address"),
        )),
    }
}

/// Names the place of a parse or schema error: the line and the key
/// written on it, since the parser reports a position, not a key.
fn span_key(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(r) = span else {
        return "(file)".into();
    };
    let start = r.start.min(text.len());
    let line_no = text[..start].matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("");
    match line.split_once('=') {
        Some((key, _)) if !key.trim().starts_with('[') => {
            format!("line {line_no} (key \"{}\")", key.trim())
        }
        _ => format!("line {line_no} ({})", line.trim()),
    }
}

#[cfg(test)]
mod tests;
