//! A real Patroni cluster for tests: three Patroni members (Debian's
//! `patroni`) with etcd (`etcd-server`) or the fake Kubernetes apiserver as
//! their DCS, on loopback ports in a temp directory, PostgreSQL run as the `postgres` OS user when we are root,
//! synchronous replication on (`synchronous_mode`), so a failover loses no
//! committed write. Everything is stopped and removed on drop.

use super::fake_apiserver::FakeApiserver;
use pgsplit::demo::cluster::{find_bin_dir, free_port, postgres_user_if_root};
use pgsplit::topology::patroni::{get_cluster, ClusterInfo};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One Patroni member.
pub struct Member {
    pub name: String,
    pub pg_port: u16,
    pub api_port: u16,
    pub config: PathBuf,
    pub dir: PathBuf,
    child: Option<Child>,
}

impl Member {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.pg_port)
    }

    /// PID of this member's postmaster, if it runs.
    pub fn postmaster_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.dir.join("data/postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }
}

/// Where the members keep their shared state.
pub enum Dcs<'a> {
    /// An etcd the harness starts.
    Etcd,
    /// The fake apiserver (`dcs: kubernetes`, ConfigMaps): Patroni writes
    /// the pods' role labels and the leader ConfigMap there itself.
    Kubernetes(&'a FakeApiserver),
}

/// Scope of the test cluster, and its pods' `cluster-name` label.
pub const SCOPE: &str = "pgsplit-test";

/// Three Patroni members and their DCS.
pub struct PatroniCluster {
    pub dir: PathBuf,
    pub members: Vec<Member>,
    etcd: Option<Child>,
    run_as: Option<(u32, u32)>,
    /// KUBECONFIG for Patroni and patronictl on the fake apiserver.
    kubeconfig: Option<PathBuf>,
}

fn as_postgres(cmd: &mut Command, run_as: Option<(u32, u32)>) -> &mut Command {
    if let Some((uid, gid)) = run_as {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// State and parent of process `pid`, from /proc (after the command
/// name, which may hold spaces and parentheses).
fn state_and_parent(pid: i32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    Some((state, parent))
}

/// The processes whose parent is `pid`.
fn children_of(pid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| state_and_parent(p).is_some_and(|(_, parent)| parent == pid))
        .collect()
}

/// Whether `pid` still runs (a zombie has exited).
fn alive(pid: i32) -> bool {
    state_and_parent(pid).is_some_and(|(state, _)| !matches!(state, 'Z' | 'X'))
}

/// A leader, a synchronous standby and every member running.
pub fn whole(info: &ClusterInfo) -> bool {
    ["leader", "sync_standby"].iter().all(|role| {
        info.members
            .iter()
            .any(|m| m.role == *role && m.state == "running")
    }) && info.members.len() == 3
        && info
            .members
            .iter()
            .all(|m| m.state == "running" || m.state == "streaming")
}

fn log_file(path: &Path) -> Stdio {
    Stdio::from(std::fs::File::create(path).expect("create a log file"))
}

impl PatroniCluster {
    /// Starts etcd and three members and waits for a leader and two
    /// running replicas; creates role `app` (password `app-secret`) and
    /// database `app`.
    pub async fn start() -> PatroniCluster {
        PatroniCluster::start_on(Dcs::Etcd).await
    }

    /// Like [`start`](Self::start), with the DCS named.
    pub async fn start_on(dcs: Dcs<'_>) -> PatroniCluster {
        let run_as = postgres_user_if_root().expect("find the postgres user");
        let dir = std::env::temp_dir().join(format!(
            "pgsplit-patroni-{}-{}",
            std::process::id(),
            free_port().unwrap()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let chown = |p: &Path| {
            if let Some((uid, gid)) = run_as {
                std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
            }
        };
        chown(&dir);
        let (etcd, dcs_yaml, kubeconfig) = match dcs {
            Dcs::Etcd => {
                let (client, peer) = (free_port().unwrap(), free_port().unwrap());
                let etcd = as_postgres(&mut Command::new("etcd"), run_as)
                    .args([
                        "--name",
                        "e1",
                        "--data-dir",
                        &dir.join("etcd").to_string_lossy(),
                        "--listen-client-urls",
                        &format!("http://127.0.0.1:{client}"),
                        "--advertise-client-urls",
                        &format!("http://127.0.0.1:{client}"),
                        "--listen-peer-urls",
                        &format!("http://127.0.0.1:{peer}"),
                        "--initial-advertise-peer-urls",
                        &format!("http://127.0.0.1:{peer}"),
                        "--initial-cluster",
                        &format!("e1=http://127.0.0.1:{peer}"),
                    ])
                    .stdout(log_file(&dir.join("etcd.log")))
                    .stderr(log_file(&dir.join("etcd.err")))
                    .spawn()
                    .expect("start etcd (Debian package etcd-server)");
                (Some(etcd), format!("etcd3:\n  hosts: 127.0.0.1:{client}\n"), None)
            }
            Dcs::Kubernetes(fake) => (
                None,
                "kubernetes:\n  namespace: default\n  context: fake\n  labels:\n    application: patroni\n  role_label: role\n  use_endpoints: false\n  pod_ip: 127.0.0.1\n".to_string(),
                Some((fake, fake.kubeconfig())),
            ),
        };
        let mut cluster = PatroniCluster {
            dir: dir.clone(),
            members: Vec::new(),
            etcd,
            run_as,
            kubeconfig: kubeconfig.as_ref().map(|(_, path)| path.clone()),
        };
        let bin = find_bin_dir().expect("PostgreSQL binaries");
        for i in 1..=3 {
            let name = format!("m{i}");
            let mdir = dir.join(&name);
            std::fs::create_dir_all(&mdir).unwrap();
            std::fs::set_permissions(&mdir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .unwrap();
            chown(&mdir);
            let (pg_port, api_port) = (free_port().unwrap(), free_port().unwrap());
            let config = dir.join(format!("{name}.yml"));
            std::fs::write(
                &config,
                format!(
                    "scope: {SCOPE}
name: {name}
restapi:
  listen: 127.0.0.1:{api_port}
  connect_address: 127.0.0.1:{api_port}
{dcs_yaml}bootstrap:
  dcs:
    ttl: 10
    loop_wait: 1
    retry_timeout: 5
    synchronous_mode: true
    postgresql:
      use_pg_rewind: false
      parameters:
        max_connections: 100
        fsync: 'off'
  initdb:
    - encoding: UTF8
    - locale: C
  pg_hba:
    - local all all trust
    - host all all 127.0.0.1/32 trust
    - host replication all 127.0.0.1/32 trust
postgresql:
  listen: 127.0.0.1:{pg_port}
  connect_address: 127.0.0.1:{pg_port}
  data_dir: {data}
  bin_dir: {bin}
  pgpass: {pgpass}
  authentication:
    superuser: {{username: postgres, password: postgres}}
    replication: {{username: replicator, password: replicator}}
  parameters:
    unix_socket_directories: {socket}
",
                    data = mdir.join("data").display(),
                    bin = bin.display(),
                    pgpass = mdir.join("pgpass").display(),
                    socket = mdir.display(),
                ),
            )
            .unwrap();
            chown(&config);
            if let Some((fake, _)) = &kubeconfig {
                // The pod Patroni runs in, as a StatefulSet would create it.
                fake.apply("pods", "default", serde_json::json!({
                    "metadata": {"name": name, "labels": {"application": "patroni", "cluster-name": SCOPE}},
                    "spec": {"containers": [{"name": "postgres", "ports": [
                        {"name": "postgresql", "containerPort": pg_port}]}]},
                    "status": {"podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}
                }));
            }
            let mut member = Member {
                name,
                pg_port,
                api_port,
                config,
                dir: mdir,
                child: None,
            };
            cluster.spawn(&mut member);
            cluster.members.push(member);
        }
        cluster.wait_until(Duration::from_secs(90), whole).await;
        let leader = cluster.leader().await;
        cluster.psql(leader, "CREATE ROLE app LOGIN PASSWORD 'app-secret'");
        cluster.psql(leader, "CREATE DATABASE app OWNER app");
        cluster
    }

    /// `program` as the postgres user, with KUBECONFIG when on the fake.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        as_postgres(&mut cmd, self.run_as);
        if let Some(path) = &self.kubeconfig {
            cmd.env("KUBECONFIG", path);
        }
        cmd
    }

    fn spawn(&self, member: &mut Member) {
        let child = self
            .command("patroni")
            .arg(&member.config)
            .current_dir(&self.dir)
            .stdout(log_file(&self.dir.join(format!("{}.out", member.name))))
            .stderr(log_file(&self.dir.join(format!("{}.log", member.name))))
            .spawn()
            .expect("start patroni (Debian package patroni)");
        member.child = Some(child);
    }

    /// The REST API URLs of every member.
    pub fn urls(&self) -> Vec<String> {
        self.members.iter().map(Member::url).collect()
    }

    /// `GET /cluster` from the first member that answers.
    pub async fn info(&self) -> Option<ClusterInfo> {
        for m in &self.members {
            if let Ok(info) = get_cluster(&m.url(), Duration::from_secs(1)).await {
                return Some(info);
            }
        }
        None
    }

    /// Waits until `GET /cluster` satisfies `done`.
    pub async fn wait_until(&self, timeout: Duration, done: impl Fn(&ClusterInfo) -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.info().await.is_some_and(|i| done(&i)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!(
            "Patroni cluster did not get there in {timeout:?}; last state: {:?}; logs in {}",
            self.info().await,
            self.dir.display()
        );
    }

    /// Index of the member with Patroni role `role` ("leader",
    /// "sync_standby", ...).
    pub async fn member_with_role(&self, role: &str) -> usize {
        let info = self.info().await.expect("a member answers");
        let name = info
            .members
            .iter()
            .find(|m| m.role == role)
            .map(|m| m.name.clone())
            .unwrap_or_else(|| panic!("no {role} in {info:?}"));
        self.members.iter().position(|m| m.name == name).unwrap()
    }

    /// Index of the current leader.
    pub async fn leader(&self) -> usize {
        self.member_with_role("leader").await
    }

    /// Superuser SQL on member `i` over its Unix socket.
    pub fn psql(&self, i: usize, sql: &str) -> String {
        let m = &self.members[i];
        let out = Command::new("psql")
            .args(["-X", "-A", "-t", "-h"])
            .arg(&m.dir)
            .args([
                "-p",
                &m.pg_port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                sql,
            ])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `patronictl switchover` from member `from` to member `to`.
    pub fn switchover(&self, from: usize, to: usize) -> String {
        let out = self
            .command("patronictl")
            .arg("-c")
            .arg(&self.members[from].config)
            .args([
                "switchover",
                "--leader",
                &self.members[from].name,
                "--candidate",
                &self.members[to].name,
                "--force",
            ])
            .current_dir(&self.dir)
            .output()
            .expect("run patronictl");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "patronictl switchover: {text}");
        text
    }

    /// kill -9 of member `i`'s Patroni and postmaster; returns once every
    /// process the postmaster had started (backends, walsenders) is gone
    /// too. They outlive it by a moment: each notices the postmaster's
    /// death on its own, and a backend that reads a request before it
    /// does still runs that request. Until the last one is gone, a write
    /// can reach the dying leader.
    pub fn kill_member(&mut self, i: usize) {
        let pm = self.members[i].postmaster_pid();
        let children = pm.map(children_of).unwrap_or_default();
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(pid) = pm {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while children.iter().any(|&pid| alive(pid)) {
            assert!(
                Instant::now() < deadline,
                "the killed postmaster's processes did not exit"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for PatroniCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(child) = &m.child {
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(100));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
            // A postmaster Patroni left behind.
            if let Some(pid) = m.postmaster_pid() {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
        if let Some(mut etcd) = self.etcd.take() {
            let _ = etcd.kill();
            let _ = etcd.wait();
        }
        if std::env::var_os("PGSPLIT_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
