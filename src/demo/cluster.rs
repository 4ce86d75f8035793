//! A throw-away local PostgreSQL cluster: a leader and streaming replicas on
//! free loopback ports in a temporary directory, made from the server
//! binaries on this machine. Used by `pgsplit demo` and by the test harness.
//!
//! PostgreSQL refuses to run as root, so when pgsplit runs as root the
//! servers run as the `postgres` OS user. Everything is stopped and removed
//! on drop, including during a panic.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use thiserror::Error;

/// The application role every local cluster has.
pub const APP_USER: &str = "app";
/// Its password.
pub const APP_PASSWORD: &str = "app-secret";
/// Its database.
pub const APP_DATABASE: &str = "app";

/// Roles that log in with each server-side authentication method, as
/// (user, password, method), for tests of server authentication.
pub const AUTH_USERS: &[(&str, &str, &str)] = &[
    ("pgsplit_md5", "md5-secret", "md5"),
    ("pgsplit_password", "plain-secret", "password"),
    ("pgsplit_trust", "trust-secret", "trust"),
];

/// Why a local cluster could not be made or used.
#[derive(Debug, Error)]
pub enum ClusterError {
    #[error("no PostgreSQL server binaries found on PATH or under /usr/lib/postgresql/*/bin")]
    NoBinaries,
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{command} failed: {output}")]
    Command { command: String, output: String },
    #[error("{0}")]
    Timeout(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Io { what, source }
}

/// One running PostgreSQL server of the cluster.
#[derive(Debug, Clone)]
pub struct Node {
    pub port: u16,
    pub data_dir: PathBuf,
}

impl Node {
    /// `127.0.0.1:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// A leader and its streaming replicas.
pub struct LocalCluster {
    dir: PathBuf,
    bin: PathBuf,
    run_as: Option<(u32, u32)>,
    pub leader: Node,
    pub replicas: Vec<Node>,
    stopped: bool,
}

/// A port nobody listens on right now.
pub fn free_port() -> Result<u16, ClusterError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("bind a free port"))?;
    Ok(l.local_addr().map_err(io("bind a free port"))?.port())
}

/// The directory holding `postgres`, `initdb`, `pg_ctl`, `pg_basebackup`.
pub fn find_bin_dir() -> Result<PathBuf, ClusterError> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            // Resolve symlinks: some machines link only a few of the
            // binaries into PATH; the real directory has them all.
            if let Ok(real) = dir.join("postgres").canonicalize() {
                if let Some(bin) = real.parent().filter(|b| b.join("pg_basebackup").is_file()) {
                    return Ok(bin.to_path_buf());
                }
            }
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p).ok_or(ClusterError::NoBinaries)
}

/// uid and gid of the `postgres` OS user when we are root.
pub fn postgres_user_if_root() -> Result<Option<(u32, u32)>, ClusterError> {
    let status =
        std::fs::read_to_string("/proc/self/status").map_err(io("read /proc/self/status"))?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u32>().ok());
    if euid != Some(0) {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(io("read /etc/passwd"))?;
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"postgres") && f.len() > 3)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
        .map(Some)
        .ok_or_else(|| ClusterError::Command {
            command: "find the postgres OS user".into(),
            output: "running as root and /etc/passwd has no usable postgres user".into(),
        })
}

fn check(command: &str, output: Output) -> Result<String, ClusterError> {
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(ClusterError::Command {
            command: command.to_string(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        })
    }
}

const HBA: &str = "\
local all all trust
local replication all trust
host replication all 127.0.0.1/32 trust
host all pgsplit_trust 127.0.0.1/32 trust
host all pgsplit_md5 127.0.0.1/32 md5
host all pgsplit_password 127.0.0.1/32 password
host all all 127.0.0.1/32 scram-sha-256
";

impl LocalCluster {
    /// Starts a leader and `replicas` streaming replicas and waits until
    /// every replica streams.
    pub fn start(replicas: usize) -> Result<LocalCluster, ClusterError> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let bin = find_bin_dir()?;
        let run_as = postgres_user_if_root()?;
        let dir = std::env::temp_dir().join(format!(
            "pgsplit-cluster-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .map_err(io("chown cluster dir"))?;
        }
        let leader = Node {
            port: free_port()?,
            data_dir: dir.join("leader"),
        };
        let mut cluster = LocalCluster {
            dir,
            bin,
            run_as,
            leader: leader.clone(),
            replicas: Vec::new(),
            stopped: false,
        };
        cluster.init_leader()?;
        for i in 0..replicas {
            let mut node = Node {
                port: free_port()?,
                data_dir: cluster.dir.join(format!("replica{}", i + 1)),
            };
            cluster.clone_replica(&mut node)?;
            cluster.replicas.push(node);
        }
        cluster.wait_streaming(replicas)?;
        Ok(cluster)
    }

    /// The temporary directory everything lives in (sockets too).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn server_command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.current_dir(&self.dir);
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        cmd.env_remove("PGDATA").env("LC_ALL", "C");
        cmd
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<String, ClusterError> {
        let out = self
            .server_command(program)
            .args(args)
            .output()
            .map_err(io(format!("run {program}")))?;
        check(&format!("{program} {}", args.join(" ")), out)
    }

    fn start_node(&self, node: &Node) -> Result<(), ClusterError> {
        let log = node.data_dir.with_extension("log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                &node.data_dir.to_string_lossy(),
                "-l",
                &log.to_string_lossy(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
        .map(|_| ())
    }

    /// Starts a node for the first time on `node.port`, or on another
    /// free port when that one was taken in the meantime: `free_port`
    /// only finds a port that was free a moment ago, and tests running in
    /// parallel open ports too.
    fn start_new_node(&self, node: &mut Node) -> Result<(), ClusterError> {
        let mut attempts_left = 4;
        loop {
            // The last `port` line in postgresql.conf wins.
            append(
                &node.data_dir.join("postgresql.conf"),
                &format!("\nport = {}\n", node.port),
            )?;
            let log = node.data_dir.with_extension("log");
            let logged_before = std::fs::metadata(&log).map_or(0, |m| m.len());
            match self.start_node(node) {
                Err(e) if attempts_left > 0 && port_was_taken(&log, logged_before) => {
                    tracing::debug!(
                        port = node.port,
                        "port taken before PostgreSQL bound it: {e}"
                    );
                    attempts_left -= 1;
                    node.port = free_port()?;
                }
                done => return done,
            }
        }
    }

    fn init_leader(&mut self) -> Result<(), ClusterError> {
        let data = self.leader.data_dir.to_string_lossy().into_owned();
        self.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "-N",
            ],
        )?;
        let conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             wal_level = replica\nmax_wal_senders = 10\nhot_standby = on\nfsync = off\n\
             full_page_writes = off\nmax_connections = 200\nshared_buffers = 32MB\n\
             wal_keep_size = '256MB'\nlog_min_messages = warning\n",
            self.dir.display()
        );
        append(&self.leader.data_dir.join("postgresql.conf"), &conf)?;
        std::fs::write(self.leader.data_dir.join("pg_hba.conf"), HBA)
            .map_err(io("write pg_hba.conf"))?;
        let mut leader = self.leader.clone();
        self.start_new_node(&mut leader)?;
        self.leader = leader;
        self.psql(
            self.leader.port,
            "postgres",
            &format!("CREATE ROLE {APP_USER} LOGIN PASSWORD '{APP_PASSWORD}'"),
        )?;
        self.psql(
            self.leader.port,
            "postgres",
            &format!("CREATE DATABASE {APP_DATABASE} OWNER {APP_USER}"),
        )?;
        for (user, password, method) in AUTH_USERS {
            let sql = match *method {
                "trust" => format!("CREATE ROLE {user} LOGIN"),
                "md5" => format!("SET password_encryption = 'md5'; CREATE ROLE {user} LOGIN PASSWORD '{password}'"),
                _ => format!("CREATE ROLE {user} LOGIN PASSWORD '{password}'"),
            };
            self.psql(self.leader.port, "postgres", &sql)?;
        }
        Ok(())
    }

    fn clone_replica(&self, node: &mut Node) -> Result<(), ClusterError> {
        let data = node.data_dir.to_string_lossy().into_owned();
        self.run(
            "pg_basebackup",
            &[
                "-h",
                &self.dir.to_string_lossy(),
                "-p",
                &self.leader.port.to_string(),
                "-U",
                "postgres",
                "-D",
                &data,
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ],
        )?;
        self.start_new_node(node)
    }

    fn wait_streaming(&self, replicas: usize) -> Result<(), ClusterError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.psql(
                self.leader.port,
                "postgres",
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
            )?;
            if out.trim().parse::<usize>().ok() == Some(replicas) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(ClusterError::Timeout(format!(
                    "replicas did not start streaming within 60 s ({} of {replicas})",
                    out.trim()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs SQL as the `postgres` superuser through the node's Unix socket
    /// and returns psql's unaligned, tuples-only output.
    pub fn psql(&self, port: u16, database: &str, sql: &str) -> Result<String, ClusterError> {
        let psql = self.bin.join("psql");
        let psql = if psql.is_file() {
            psql
        } else {
            PathBuf::from("psql")
        };
        let out = Command::new(psql)
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.dir)
            .args([
                "-p",
                &port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
                "-c",
                sql,
            ])
            .output()
            .map_err(io("run psql"))?;
        check(&format!("psql -c {sql}"), out)
    }

    /// Turns on TLS on the leader with the given PEM certificate and key.
    pub fn enable_leader_tls(&self, cert_pem: &str, key_pem: &str) -> Result<(), ClusterError> {
        use std::os::unix::fs::PermissionsExt;
        for (name, text) in [("server.crt", cert_pem), ("server.key", key_pem)] {
            let path = self.leader.data_dir.join(name);
            std::fs::write(&path, text).map_err(io(format!("write {}", path.display())))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(io("chmod server key"))?;
            if let Some((uid, gid)) = self.run_as {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                    .map_err(io("chown server key"))?;
            }
        }
        self.psql(self.leader.port, "postgres", "ALTER SYSTEM SET ssl = on")?;
        self.psql(self.leader.port, "postgres", "SELECT pg_reload_conf()")?;
        // The reload is asynchronous; wait until new sessions see it.
        for _ in 0..100 {
            if self.psql(self.leader.port, "postgres", "SHOW ssl")?.trim() == "on" {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(ClusterError::Timeout("ssl = on did not take effect".into()))
    }

    /// Stops one server at once (`pg_ctl -m immediate stop`): a crash as
    /// its clients see it.
    pub fn crash(&self, node: &Node) -> Result<String, ClusterError> {
        let dir = node.data_dir.to_string_lossy().into_owned();
        self.run("pg_ctl", &["-D", &dir, "-m", "immediate", "-w", "stop"])
    }

    /// Stops one server with a fast shutdown (what Patroni does to the old
    /// leader in a switchover: every backend gets 57P01) and starts it
    /// again.
    pub fn restart_fast(&self, node: &Node) -> Result<(), ClusterError> {
        let dir = node.data_dir.to_string_lossy().into_owned();
        self.run("pg_ctl", &["-D", &dir, "-m", "fast", "-w", "stop"])?;
        self.start_node(node)
    }

    /// Promotes a replica to leader (`pg_ctl promote`), waiting until it
    /// accepts writes.
    pub fn promote(&self, node: &Node) -> Result<String, ClusterError> {
        let dir = node.data_dir.to_string_lossy().into_owned();
        self.run("pg_ctl", &["-D", &dir, "-w", "promote"])
    }

    /// Stops every server (immediate shutdown) and removes the directory.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        for node in self.replicas.iter().chain(std::iter::once(&self.leader)) {
            let _ = self
                .server_command("pg_ctl")
                .args([
                    "-D",
                    &node.data_dir.to_string_lossy(),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ])
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether a server's log, from byte `from` on (what this start wrote),
/// says it could not listen because its port was in use.
fn port_was_taken(log: &Path, from: u64) -> bool {
    std::fs::read(log).is_ok_and(|text| {
        let new = text
            .get(usize::try_from(from).unwrap_or(usize::MAX)..)
            .unwrap_or(&[]);
        log_says_port_taken(&String::from_utf8_lossy(new))
    })
}

fn log_says_port_taken(log: &str) -> bool {
    log.contains("Address already in use")
}

fn append(path: &Path, text: &str) -> Result<(), ClusterError> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(io(format!("open {}", path.display())))?;
    f.write_all(text.as_bytes())
        .map_err(io(format!("write {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_port_is_recognised_in_the_server_log() {
        let taken = "LOG:  could not bind IPv4 address \"127.0.0.1\": Address already in use\n\
                     HINT:  Is another postmaster already running on port 5432?\n\
                     FATAL:  could not create any TCP/IP sockets\n";
        assert!(log_says_port_taken(taken));
        assert!(!log_says_port_taken(
            "FATAL:  data directory \"/x\" has invalid permissions\n"
        ));
        assert!(!port_was_taken(Path::new("/nonexistent/pgsplit.log"), 0));
        let log = std::env::temp_dir().join(format!("pgsplit-port-log-{}", std::process::id()));
        std::fs::write(&log, taken).unwrap();
        assert!(port_was_taken(&log, 0));
        let len = taken.len() as u64;
        assert!(
            !port_was_taken(&log, len),
            "an earlier start's lines do not count"
        );
        std::fs::remove_file(&log).unwrap();
    }
}
