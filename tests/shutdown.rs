//! Graceful shutdown: /readyz turns false at once, clients are served
//! through `shutdown_delay`, then the listener closes, open transactions
//! finish, idle clients are told 57P01, and pgsplit stops.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};
use support::{connect, http_get, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_through_a_graceful_shutdown_loses_nothing() {
    support::init_logging();
    let mut env = TestEnv::start(
        0,
        "pool_size = 4\nshutdown_delay = \"3s\"\nshutdown_timeout = \"10s\"",
    )
    .await;
    let url = env.url();
    let init = env.client_command("pgbench", &["-i", "-s", "1", "-q", &url]);
    assert!(init.status.success());
    let in_tx = env.connect().await;
    in_tx
        .batch_execute("CREATE TABLE sd(id int)")
        .await
        .unwrap();
    let idle = env.connect().await;

    let bench_url = url.clone();
    let bench = {
        let out = tokio::task::spawn_blocking(move || {
            Command::new("pgbench")
                .args([
                    &bench_url, "-n", "-c", "4", "-j", "2", "-T", "2", "-M", "extended",
                ])
                .env("PGPASSWORD", "app-secret")
                .env("PGSSLMODE", "disable")
                .output()
                .expect("run pgbench")
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        out
    };
    let proxy = env.proxy.take().unwrap();
    let (admin, addr) = (proxy.admin_addr(), proxy.local_addr());
    let began = Instant::now();
    let shutdown = tokio::spawn(proxy.shutdown(std::future::pending()));

    // Not ready at once, but still serving and accepting.
    let deadline = Instant::now() + Duration::from_millis(500);
    while http_get(admin, "/readyz").await.0 != 503 {
        assert!(Instant::now() < deadline, "/readyz still says ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(http_get(admin, "/readyz").await.1.contains("shutting down"));
    let late = connect(&url).await.expect("accepted during shutdown_delay");
    late.query_one("SELECT 1", &[]).await.unwrap();
    drop(late);
    in_tx
        .batch_execute("BEGIN; INSERT INTO sd VALUES (1)")
        .await
        .unwrap();

    let out = bench.await.unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pgbench: {text}");
    assert!(text.contains("number of failed transactions: 0"), "{text}");
    assert!(!text.contains("aborted"), "{text}");

    // The listener closes after shutdown_delay.
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            began.elapsed() < Duration::from_secs(8),
            "listener never closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let closed_after = began.elapsed();
    assert!(
        closed_after >= Duration::from_millis(2900),
        "closed after {closed_after:?}"
    );

    // The transaction open at the close finishes; then its client goes.
    in_tx
        .batch_execute("INSERT INTO sd VALUES (2); COMMIT")
        .await
        .expect("a transaction open when the listener closed may finish");
    let deadline = Instant::now() + Duration::from_secs(2);
    while !(in_tx.is_closed() && idle.is_closed()) {
        assert!(Instant::now() < deadline, "idle clients were not closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let e = idle.query_one("SELECT 1", &[]).await.unwrap_err();
    assert!(e.is_closed(), "{e}");

    let left = shutdown.await.unwrap();
    assert_eq!(left, 0, "every client was closed before the timeout");
    assert!(
        began.elapsed() < Duration::from_secs(6),
        "stopped promptly once idle"
    );
    assert_eq!(env.leader_sql("SELECT count(*) FROM sd"), "2");
}

/// The binary: SIGTERM starts the graceful shutdown and it exits 0; a
/// second SIGTERM skips the remaining wait.
#[test]
fn sigterm_twice_exits_at_once_with_status_0() {
    let mut pgsplit = support::Binary::start_standalone("shutdown", "shutdown_delay = \"30s\"");
    assert!(pgsplit.wait_for("accepting clients"));
    pgsplit.signal("-TERM");
    assert!(pgsplit.wait_for("graceful shutdown"));
    let began = Instant::now();
    pgsplit.signal("-TERM");
    let status = pgsplit.exit_within(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "the second signal did not hurry it"
    );
}
