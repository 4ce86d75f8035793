//! Pooling: servers shared per transaction, held per session, limits with
//! their SQLSTATEs, idle timeout and lifetime, and no dirty server ever
//! going back to the pool.

mod support;

use std::time::Duration;
use support::{sqlstate, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_mode_shares_few_servers_among_many_clients() {
    let env = TestEnv::start(0, "pool_mode = \"transaction\"\npool_size = 2").await;
    env.connect()
        .await
        .batch_execute("CREATE TABLE shared_t(client int, n int)")
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for c in 0..10 {
        let url = env.url();
        tasks.push(tokio::spawn(async move {
            let mut client = support::connect(&url).await.unwrap();
            for n in 0..20 {
                let tx = client.transaction().await.unwrap();
                tx.execute("INSERT INTO shared_t VALUES ($1, $2)", &[&c, &n])
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(env.leader_sql("SELECT count(*) FROM shared_t"), "200");
    assert!(
        env.app_backends() <= 2,
        "at most pool_size servers: {}",
        env.app_backends()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_holds_a_server_and_times_out_waiters() {
    let env = TestEnv::start(
        0,
        "pool_mode = \"session\"\npool_size = 1\nquery_wait_timeout = \"500ms\"",
    )
    .await;
    let holder = env.connect().await;
    let pid: i32 = holder
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let again: i32 = holder
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pid, again, "session mode keeps one server");
    let err = support::connect(&env.url())
        .await
        .expect_err("no server for a second session");
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"));
    let message = err
        .as_db_error()
        .expect("an ErrorResponse")
        .message()
        .to_string();
    assert!(message.contains("query_wait_timeout"), "{message}");
    drop(holder);
    // The held server is reset and reused once the session ends.
    let mut reused = false;
    for _ in 0..50 {
        if let Ok(c) = support::connect(&env.url()).await {
            let p: i32 = c
                .query_one("SELECT pg_backend_pid()", &[])
                .await
                .unwrap()
                .get(0);
            reused = p == pid;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        reused,
        "the server goes back to the pool after the reset query"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_mode_wait_timeout() {
    let env = TestEnv::start(0, "pool_size = 1\nquery_wait_timeout = \"300ms\"").await;
    let holder = env.connect().await;
    // A lone BEGIN is answered by pgsplit; the first statement takes the server.
    holder.batch_execute("BEGIN").await.unwrap();
    holder.batch_execute("SELECT 1").await.unwrap();
    let waiter = env.connect().await;
    let waiting = tokio::spawn(async move { waiter.query_one("SELECT 1", &[]).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // While a client waits for a server, the event loop does not yield
    // its CPU before sleeping (`yield_before_sleep`).
    assert!(pgsplit::pool::pools::clients_waiting());
    let err = waiting.await.unwrap().err().unwrap();
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"));
    assert!(!pgsplit::pool::pools::clients_waiting(), "the wait ended");
    holder.batch_execute("COMMIT").await.unwrap();
    let other = env.connect().await;
    assert_eq!(
        other
            .query_one("SELECT 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_vanishing_mid_transaction_never_leaves_a_dirty_server() {
    let env = TestEnv::start(0, "pool_size = 1").await;
    env.connect()
        .await
        .batch_execute("CREATE TABLE vanish_t(x int)")
        .await
        .unwrap();
    let (client, connection) = tokio_postgres::connect(&env.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    let conn_task = tokio::spawn(connection);
    client
        .batch_execute("BEGIN; INSERT INTO vanish_t VALUES (1); SET LOCAL statement_timeout = '1s'")
        .await
        .unwrap();
    let dirty_pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    // Vanish: drop the socket without Terminate.
    conn_task.abort();
    drop(client);
    let next = env.connect().await;
    let row = next
        .query_one("SELECT pg_backend_pid(), (SELECT count(*) FROM vanish_t), current_setting('statement_timeout')", &[])
        .await
        .unwrap();
    assert_ne!(
        row.get::<_, i32>(0),
        dirty_pid,
        "the dirty server was closed, not reused"
    );
    assert_eq!(row.get::<_, i64>(1), 0, "the transaction rolled back");
    assert_eq!(row.get::<_, String>(2), "0");
    let idle_in_tx = env.leader_sql(
        "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'",
    );
    assert_eq!(idle_in_tx, "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_servers_close_after_server_idle_timeout() {
    let env = TestEnv::start(0, "server_idle_timeout = \"1s\"").await;
    let client = env.connect().await;
    client.query_one("SELECT 1", &[]).await.unwrap();
    assert_eq!(env.app_backends(), 1);
    let mut backends = 1;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        backends = env.app_backends();
        if backends == 0 {
            break;
        }
    }
    assert_eq!(backends, 0, "idle server closed");
    // The client is still served: a fresh server is opened.
    assert_eq!(
        client
            .query_one("SELECT 2", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_are_replaced_after_server_lifetime() {
    let env = TestEnv::start(
        0,
        "server_lifetime = \"1s\"\nserver_idle_timeout = 0\npool_size = 1",
    )
    .await;
    let client = env.connect().await;
    let first: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(first, second, "an old server is replaced");
}

/// pgsplit does not watch a server that is idle inside a transaction:
/// its end is read with the next statement's answer, which is then the
/// error PostgreSQL sent (or a lost connection), never a hang; the dead
/// server is not pooled, and the only pool slot serves the next client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_while_its_client_is_idle_in_a_transaction() {
    let env = TestEnv::start(0, "pool_mode = \"transaction\"\npool_size = 1").await;
    let victim = env.connect().await;
    victim.batch_execute("BEGIN").await.unwrap();
    let pid: i32 = victim
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    env.leader_sql(&format!("SELECT pg_terminate_backend({pid})"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let next = tokio::time::timeout(Duration::from_secs(10), victim.query_one("SELECT 1", &[]))
        .await
        .expect("the next statement is answered, not left waiting");
    let error = next.expect_err("the statement fails: its server is gone");
    let code = sqlstate(&error);
    assert!(
        code.is_none() || code.as_deref() == Some("57P01"),
        "the server's own error or a lost connection, not {error}"
    );
    let fresh = env.connect().await;
    let answer: i32 =
        tokio::time::timeout(Duration::from_secs(10), fresh.query_one("SELECT 5", &[]))
            .await
            .expect("the pool's one slot was given back")
            .unwrap()
            .get(0);
    assert_eq!(answer, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_mid_query_fails_only_that_client() {
    let env = TestEnv::start(0, "pool_size = 2").await;
    let victim = env.connect().await;
    let bystander = env.connect().await;
    let pid: i32 = victim
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let running = tokio::spawn(async move { victim.query_one("SELECT pg_sleep(30)", &[]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.leader_sql(&format!("SELECT pg_terminate_backend({pid})"));
    let result = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .unwrap()
        .unwrap();
    // Stopped on purpose, not by a shutdown: the error PostgreSQL sent,
    // and the statement is not run again elsewhere.
    let error = result.expect_err("the victim gets an error");
    assert_eq!(support::sqlstate(&error).as_deref(), Some("57P01"));
    // The same in the simple protocol, where the FATAL is the first answer.
    let victim = env.connect().await;
    let running = tokio::spawn(async move { victim.simple_query("SELECT pg_sleep(31)").await });
    let pid = env
        .leader_backend_where("query = 'SELECT pg_sleep(31)' AND state = 'active'")
        .await;
    env.leader_sql(&format!("SELECT pg_terminate_backend({pid})"));
    let result = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the victim got an answer, not the statement again")
        .unwrap();
    let error = result.expect_err("the victim gets an error");
    assert_eq!(support::sqlstate(&error).as_deref(), Some("57P01"));
    for _ in 0..5 {
        assert_eq!(
            bystander
                .query_one("SELECT 3", &[])
                .await
                .unwrap()
                .get::<_, i32>(0),
            3
        );
    }
    let fresh = env.connect().await;
    assert_eq!(
        fresh
            .query_one("SELECT 4", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        4
    );
}
