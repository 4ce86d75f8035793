//! The admin console (database `pgsplit`) through psql, and Debian's
//! prometheus-pgbouncer-exporter pointed at it.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{connect, sqlstate, TestEnv};

/// psql -d pgsplit as `user`, unaligned with headers: (success, stdout+stderr).
fn console(env: &TestEnv, user: &str, password: &str, command: &str) -> (bool, String) {
    let out = Command::new("psql")
        .args([
            "-X",
            "-A",
            "-F",
            "|",
            "-h",
            "127.0.0.1",
            "-p",
            &env.addr.port().to_string(),
            "-U",
            user,
            "-d",
            "pgsplit",
            "-c",
            command,
        ])
        .env("PGPASSWORD", password)
        .env("PGSSLMODE", "disable")
        .output()
        .expect("run psql");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn show(env: &TestEnv, what: &str) -> String {
    let (ok, out) = console(env, "app", "app-secret", &format!("SHOW {what}"));
    assert!(ok, "SHOW {what}: {out}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_commands_answer_with_pgbouncer_columns() {
    let env = TestEnv::start(2, "admin_users = [\"app\"]").await;
    let c = env.connect().await;
    env.wait_for_replicas(&c).await;
    for _ in 0..20 {
        c.query_one("SELECT 1", &[]).await.unwrap();
    }
    let pools = show(&env, "POOLS");
    assert!(
        pools.starts_with("database|user|cl_active|cl_waiting|"),
        "{pools}"
    );
    assert!(pools.contains("|sv_idle|"), "{pools}");
    assert!(pools.lines().any(|l| l.starts_with("app|app|")), "{pools}");
    let clients = show(&env, "CLIENTS");
    assert!(
        clients.starts_with("type|user|database|state|addr|port|"),
        "{clients}"
    );
    assert!(
        clients
            .lines()
            .any(|l| l.starts_with("C|app|app|idle|127.0.0.1|")),
        "{clients}"
    );
    let servers = show(&env, "SERVERS");
    assert!(
        servers
            .lines()
            .any(|l| l.starts_with("S|app|app|idle|127.0.0.1|")),
        "{servers}"
    );
    let stats = show(&env, "STATS");
    let header: Vec<&str> = stats.lines().next().unwrap().split('|').collect();
    let row: Vec<&str> = stats
        .lines()
        .find(|l| l.starts_with("app|"))
        .expect("a row for app")
        .split('|')
        .collect();
    let col = |name: &str| row[header.iter().position(|h| *h == name).unwrap()];
    assert!(
        col("total_xact_count").parse::<u64>().unwrap() >= 20,
        "{stats}"
    );
    assert!(
        col("total_query_count").parse::<u64>().unwrap() >= 20,
        "{stats}"
    );
    assert!(col("avg_xact_time").parse::<u64>().is_ok());
    let databases = show(&env, "DATABASES");
    assert!(
        databases.starts_with("name|host|port|database|force_user|pool_size|"),
        "{databases}"
    );
    assert!(
        databases.contains(&format!("app|127.0.0.1|{}|app|", env.cluster.leader.port)),
        "{databases}"
    );
    let config = show(&env, "CONFIG");
    assert!(config.contains("proxy.pool_size|20|20|yes"), "{config}");
    assert!(config.contains("proxy.listen|"), "{config}");
    assert!(show(&env, "VERSION").contains("pgsplit 0."));
    let lists = show(&env, "LISTS");
    assert!(
        lists.contains("used_servers|") && lists.contains("free_clients|"),
        "{lists}"
    );
    let topology = show(&env, "TOPOLOGY");
    assert_eq!(
        topology
            .lines()
            .filter(|l| l.contains("|replica|yes|"))
            .count(),
        2,
        "{topology}"
    );

    let (ok, out) = console(&env, "app", "app-secret", "SHOW NONSENSE");
    assert!(!ok && out.contains("unknown SHOW target"), "{out}");
    let (ok, out) = console(&env, "app", "app-secret", "DROP TABLE x");
    assert!(
        !ok && out.contains("unknown admin console command"),
        "{out}"
    );
    let (ok, out) = console(&env, "pgsplit_md5", "md5-secret", "SHOW POOLS");
    assert!(
        !ok && out.contains("may not use the admin console"),
        "{out}"
    );
    // An extended-protocol client is told what the console takes.
    let e = connect(&env.url().replace("/app?", "/pgsplit?"))
        .await
        .unwrap()
        .query("SHOW POOLS", &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("0A000"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_waits_for_transactions_resume_releases_reconnect_replaces() {
    let env = TestEnv::start(0, "admin_users = [\"app\"]").await;
    let busy = env.connect().await;
    busy.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let pid_before: i32 = env
        .connect()
        .await
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);

    // PAUSE returns only once the open transaction ended.
    let env_port = env.addr.port();
    let pause = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let out = Command::new("psql")
            .args([
                "-X",
                "-h",
                "127.0.0.1",
                "-p",
                &env_port.to_string(),
                "-U",
                "app",
                "-d",
                "pgsplit",
                "-c",
                "PAUSE",
            ])
            .env("PGPASSWORD", "app-secret")
            .env("PGSSLMODE", "disable")
            .stdout(Stdio::null())
            .status()
            .unwrap();
        (out.success(), started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!pause.is_finished(), "PAUSE waits for the open transaction");
    busy.batch_execute("COMMIT").await.unwrap();
    let (ok, took) = pause.await.unwrap();
    assert!(ok && took >= Duration::from_millis(400));

    // While paused, a new transaction waits; RESUME lets it go.
    let waiting = env.connect().await;
    let query = tokio::spawn(async move { waiting.query_one("SELECT 1", &[]).await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!query.is_finished(), "held while paused");
    let (ok, out) = console(&env, "app", "app-secret", "RESUME");
    assert!(ok, "{out}");
    tokio::time::timeout(Duration::from_secs(5), query)
        .await
        .expect("released by RESUME")
        .unwrap()
        .unwrap();

    // RECONNECT: the next transaction runs on a new server connection.
    let (ok, out) = console(&env, "app", "app-secret", "RECONNECT");
    assert!(ok, "{out}");
    let pid_after: i32 = env
        .connect()
        .await
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(pid_before, pid_after, "server connections were replaced");
}

/// Debian's prometheus-pgbouncer-exporter (installed by scripts/test.sh)
/// reads SHOW STATS, POOLS, DATABASES and LISTS from the console.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_pgbouncer_exporter_reads_the_console() {
    let env = TestEnv::start(0, "admin_users = [\"app\"]").await;
    let c = env.connect().await;
    c.query_one("SELECT 1", &[]).await.unwrap();
    let port = pgsplit::demo::cluster::free_port().unwrap();
    let mut exporter = Command::new("prometheus-pgbouncer-exporter")
        .args([
            "--pgbouncer-host",
            "127.0.0.1",
            "--pgbouncer-port",
            &env.addr.port().to_string(),
            "--pgbouncer-user",
            "app",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .env("PGPASSWORD", "app-secret")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("prometheus-pgbouncer-exporter (Debian package) is installed");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let body = loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            let (status, body) = support::http_get(addr, "/metrics").await;
            if status == 200 {
                break body;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the exporter never served /metrics"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = exporter.kill();
    let output = exporter.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(!log.contains("Traceback"), "{log}");
    let samples = support::parse_metrics(&body);
    let value = |name: &str| {
        samples
            .iter()
            .find(|(n, _)| n.starts_with(name) && n.contains("database=\"app\""))
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no {name} for app in:\n{body}"))
    };
    assert!(value("pgbouncer_requests_total") >= 1.0);
    assert_eq!(value("pgbouncer_active_clients"), 0.0);
    assert_eq!(value("pgbouncer_pool_size"), 20.0);
    assert!(
        samples.iter().any(|(n, _)| n == "pgbouncer_used_servers"),
        "{body}"
    );
}
