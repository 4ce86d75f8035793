//! Test harness: a real PostgreSQL cluster (leader + streaming replicas from
//! `pgsplit::demo::cluster`, torn down on drop and on panic) with pgsplit
//! running in-process in front of it, and clients to drive both.

#![allow(dead_code)]

pub mod certs;
pub mod fake_apiserver;
pub mod patroni;
pub mod raw;

use pgsplit::config::Config;
use pgsplit::demo::cluster::{LocalCluster, APP_DATABASE, APP_PASSWORD, APP_USER, AUTH_USERS};
use pgsplit::proxy::Proxy;
use std::net::SocketAddr;
use std::process::{Command, Output};
use tokio_postgres::{Client, NoTls};

/// A cluster with pgsplit in front.
pub struct TestEnv {
    pub proxy: Option<Proxy>,
    pub addr: SocketAddr,
    // Dropped last: the proxy must stop before the servers go.
    pub cluster: LocalCluster,
}

/// The config the tests run with; `proxy_extra` adds lines to `[proxy]`.
pub fn config_text(cluster: &LocalCluster, proxy_extra: &str) -> String {
    let mut users = vec![(APP_USER, APP_PASSWORD)];
    users.extend(
        AUTH_USERS
            .iter()
            .map(|(user, password, _)| (*user, *password)),
    );
    pgsplit::demo::cluster_config(cluster, "127.0.0.1:0", proxy_extra, &users)
}

impl TestEnv {
    /// A leader with `replicas` replicas and pgsplit configured with
    /// `proxy_extra` in `[proxy]`.
    pub async fn start(replicas: usize, proxy_extra: &str) -> TestEnv {
        TestEnv::start_with(replicas, |cluster| config_text(cluster, proxy_extra)).await
    }

    /// A leader with `replicas` replicas and pgsplit configured with the
    /// text `config` makes from the cluster.
    pub async fn start_with(
        replicas: usize,
        config: impl FnOnce(&LocalCluster) -> String,
    ) -> TestEnv {
        let cluster = start_cluster(replicas).await;
        let text = config(&cluster);
        let config =
            Config::parse(&text, "test config", std::iter::empty()).expect("test config is valid");
        TestEnv::in_front_of(cluster, config).await
    }

    /// Like [`start_with`](Self::start_with), with the config read from a
    /// file (which reloads read again); returns the file's path.
    pub async fn start_from_file(
        replicas: usize,
        config: impl FnOnce(&LocalCluster) -> String,
    ) -> (TestEnv, std::path::PathBuf) {
        let cluster = start_cluster(replicas).await;
        let path = cluster.dir().join("pgsplit.toml");
        std::fs::write(&path, config(&cluster)).expect("write the config");
        let config = Config::load(&path).expect("test config is valid");
        (TestEnv::in_front_of(cluster, config).await, path)
    }

    async fn in_front_of(cluster: LocalCluster, config: Config) -> TestEnv {
        let proxy = Proxy::start(config).await.expect("start pgsplit");
        let addr = proxy.local_addr();
        TestEnv {
            proxy: Some(proxy),
            addr,
            cluster,
        }
    }

    /// Superuser SQL on replica `i`.
    pub fn replica_sql(&self, i: usize, sql: &str) -> String {
        self.cluster
            .psql(self.cluster.replicas[i].port, APP_DATABASE, sql)
            .expect("psql on a replica")
            .trim()
            .to_string()
    }

    /// Waits until a read through `client` reaches a replica (the probes
    /// have seen the replicas healthy).
    pub async fn wait_for_replicas(&self, client: &Client) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            let row = client.query_one("SELECT pg_is_in_recovery()", &[]).await;
            if row.is_ok_and(|r| r.get::<_, bool>(0)) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("reads never reached a replica");
    }

    /// A libpq URL for `user` through pgsplit.
    pub fn url_for(&self, user: &str, password: &str) -> String {
        format!(
            "postgres://{user}:{password}@127.0.0.1:{}/{APP_DATABASE}?sslmode=disable",
            self.addr.port()
        )
    }

    /// The app user's URL through pgsplit.
    pub fn url(&self) -> String {
        self.url_for(APP_USER, APP_PASSWORD)
    }

    /// The app user's URL straight to the leader.
    pub fn leader_url(&self) -> String {
        format!(
            "postgres://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{}/{APP_DATABASE}?sslmode=disable",
            self.cluster.leader.port
        )
    }

    /// tokio-postgres through pgsplit as the app user.
    pub async fn connect(&self) -> Client {
        connect(&self.url()).await.expect("connect through pgsplit")
    }

    /// tokio-postgres straight to the leader as the app user.
    pub async fn connect_leader(&self) -> Client {
        connect(&self.leader_url())
            .await
            .expect("connect to the leader")
    }

    /// Superuser SQL on the leader (psql over the Unix socket).
    pub fn leader_sql(&self, sql: &str) -> String {
        self.cluster
            .psql(self.cluster.leader.port, APP_DATABASE, sql)
            .expect("psql on the leader")
            .trim()
            .to_string()
    }

    /// Waits (up to 10 s) until a backend on the leader matches the
    /// `pg_stat_activity` condition `condition`; returns its pid.
    pub async fn leader_backend_where(&self, condition: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let pid = self.leader_sql(&format!(
                "SELECT pid FROM pg_stat_activity WHERE {condition} LIMIT 1"
            ));
            if !pid.is_empty() {
                return pid;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no backend with {condition}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Server processes of the app user on the leader (excluding the one
    /// asking).
    pub fn app_backends(&self) -> usize {
        self.leader_sql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = '{APP_USER}' AND datname = current_database() AND pid <> pg_backend_pid()"
        ))
        .parse()
        .expect("a count")
    }

    /// Runs a client program (psql, pgbench) with the app password set.
    pub fn client_command(&self, program: &str, args: &[&str]) -> Output {
        Command::new(program)
            .args(args)
            .env("PGPASSWORD", APP_PASSWORD)
            .env("PGSSLMODE", "disable")
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .unwrap_or_else(|e| panic!("run {program}: {e}"))
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        // Pools close with the proxy; the cluster's own Drop stops servers.
        if let Some(proxy) = self.proxy.take() {
            drop(proxy);
        }
    }
}

/// A leader with `replicas` streaming replicas.
async fn start_cluster(replicas: usize) -> LocalCluster {
    tokio::task::spawn_blocking(move || LocalCluster::start(replicas))
        .await
        .expect("cluster thread")
        .expect("start the local cluster")
}

/// The name of a [`Binary`]'s config file in its directory.
const BINARY_CONFIG: &str = "pgsplit.toml";

/// The `pgsplit` binary run with a config file holding `config`, its
/// stdout (the log) readable line by line; the directory goes with it.
pub struct Binary {
    pub child: std::process::Child,
    pub lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
    dir: std::path::PathBuf,
}

impl Binary {
    /// The binary on a standalone config (a static leader nobody
    /// listens on) with `proxy_extra` lines in `[proxy]`.
    pub fn start_standalone(name: &str, proxy_extra: &str) -> Binary {
        Binary::start(
            name,
            &format!(
                "[proxy]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{proxy_extra}\n\
                 [[users]]\nname = \"a\"\npassword = \"b\"\n\
                 [[clusters]]\nname = \"m\"\n[clusters.discovery]\nkind = \"static\"\nleader = \"127.0.0.1:1\"\n"
            ),
        )
    }

    pub fn start(name: &str, config: &str) -> Binary {
        use std::io::BufRead;
        let dir = std::env::temp_dir().join(format!("pgsplit-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(BINARY_CONFIG);
        std::fs::write(&file, config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_pgsplit"))
            .arg("--config")
            .arg(&file)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        Binary { child, lines, dir }
    }

    /// The config file it was started with.
    pub fn config_file(&self) -> std::path::PathBuf {
        self.dir.join(BINARY_CONFIG)
    }

    /// Reads the log until a line contains `needle`; that line, or `None`
    /// at the log's end.
    pub fn line_with(&mut self, needle: &str) -> Option<String> {
        self.lines
            .by_ref()
            .map_while(Result::ok)
            .find(|l| l.contains(needle))
    }

    /// Reads the log until a line contains `needle`; false at its end.
    pub fn wait_for(&mut self, needle: &str) -> bool {
        self.line_with(needle).is_some()
    }

    /// Waits up to `limit` for the process to exit.
    pub fn exit_within(&mut self, limit: std::time::Duration) -> std::process::ExitStatus {
        let began = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                began.elapsed() < limit,
                "pgsplit did not exit within {limit:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Sends `signal` (`-TERM`, `-HUP`).
    pub fn signal(&self, signal: &str) {
        Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends pgsplit's log to the test output (level from `RUST_LOG`, default
/// warnings), for tests where its account of events helps.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "pgsplit=warn".into()))
        .with_test_writer()
        .try_init();
}

/// Connects tokio-postgres and drives its connection in the background.
pub async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// The SQLSTATE of a tokio-postgres error, if it carries one.
pub fn sqlstate(e: &tokio_postgres::Error) -> Option<String> {
    e.code().map(|c| c.code().to_string())
}

/// `GET path` from an HTTP server at `addr`: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    (status, body.to_string())
}

/// Prometheus text exposition as (name with labels, value) pairs.
pub fn parse_metrics(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad sample line: {l}"));
            let value = value
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("bad sample value: {l}"));
            (name.to_string(), value)
        })
        .collect()
}

/// The sum of samples named `name` whose labels include every `labels` pair.
pub fn metric_sum(samples: &[(String, f64)], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, _)| {
            let (base, rest) = n.split_once('{').unwrap_or((n, ""));
            base == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, v)| v)
        .sum()
}
