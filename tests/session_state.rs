//! Session state in transaction mode: what a client sets follows it to
//! every server it gets, is undone when its transaction rolls back, and
//! never reaches another client through a shared server.

mod support;

use support::TestEnv;
use tokio_postgres::Client;

const SETTINGS: &str = "SELECT current_setting('search_path'), current_setting('TimeZone'), \
    current_setting('application_name'), coalesce(current_setting('my.guc', true), ''), \
    current_setting('statement_timeout'), current_setting('work_mem'), pg_backend_pid()";

async fn settings(c: &Client) -> (Vec<String>, i32) {
    let row = c.query_one(SETTINGS, &[]).await.unwrap();
    (
        (0..6).map(|i| row.get::<_, String>(i)).collect(),
        row.get(6),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_never_carries_another_clients_settings() {
    let env = TestEnv::start(0, "pool_size = 1").await;
    let a = env.connect().await;
    let b = env.connect().await;
    let (defaults, _) = settings(&b).await;
    a.batch_execute(
        "SET search_path TO pg_catalog, public; SET TimeZone = 'Asia/Tokyo'; \
         SET application_name = 'client-a'; SET my.guc = 'a-value'; SET statement_timeout = '7s'",
    )
    .await
    .unwrap();
    let want_a = vec![
        "pg_catalog, public",
        "Asia/Tokyo",
        "client-a",
        "a-value",
        "7s",
        &defaults[5],
    ];
    for _ in 0..3 {
        let (seen_b, pid_b) = settings(&b).await;
        assert_eq!(seen_b, defaults, "b must see none of a's settings");
        let (seen_a, pid_a) = settings(&a).await;
        assert_eq!(seen_a, want_a, "a keeps its settings on every server");
        assert_eq!(pid_a, pid_b, "one server shared by both");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_follow_commit_and_rollback() {
    let env = TestEnv::start(0, "pool_size = 1").await;
    let a = env.connect().await;
    let b = env.connect().await;
    let (defaults, _) = settings(&b).await;
    // Rolled back: undone, for reported and unreported parameters alike.
    a.batch_execute("BEGIN; SET search_path TO pg_catalog; SET TimeZone = 'Asia/Tokyo'; ROLLBACK")
        .await
        .unwrap();
    b.query_one("SELECT 1", &[]).await.unwrap();
    assert_eq!(settings(&a).await.0, defaults);
    // Committed in a later statement: kept.
    a.batch_execute("BEGIN; SET statement_timeout = '9s'")
        .await
        .unwrap();
    a.batch_execute("COMMIT").await.unwrap();
    b.query_one("SELECT 1", &[]).await.unwrap();
    assert_eq!(settings(&a).await.0[4], "9s");
    assert_eq!(settings(&b).await.0[4], defaults[4]);
    // An error in the implicit transaction undoes the SET before it.
    let err = a.batch_execute("SET work_mem = '8MB'; SELECT 1/0").await;
    assert!(err.is_err());
    b.query_one("SELECT 1", &[]).await.unwrap();
    assert_eq!(settings(&a).await.0[5], defaults[5]);
    // RESET and RESET ALL and DISCARD ALL.
    a.batch_execute("SET search_path TO pg_catalog")
        .await
        .unwrap();
    a.batch_execute("RESET search_path").await.unwrap();
    b.query_one("SELECT 1", &[]).await.unwrap();
    assert_eq!(settings(&a).await.0[0], defaults[0]);
    a.batch_execute("SET search_path TO pg_catalog; SET my.guc = 'x'")
        .await
        .unwrap();
    a.batch_execute("RESET ALL").await.unwrap();
    b.query_one("SELECT 1", &[]).await.unwrap();
    assert_eq!(settings(&a).await.0, defaults);
    a.batch_execute("SET search_path TO pg_catalog")
        .await
        .unwrap();
    a.batch_execute("DISCARD ALL").await.unwrap();
    b.query_one("SELECT 1", &[]).await.unwrap();
    assert_eq!(settings(&a).await.0, defaults);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrackable_state_pins_the_client() {
    let env = TestEnv::start(0, "pool_size = 2").await;
    let a = env.connect().await;
    let b = env.connect().await;
    let (defaults, _) = settings(&b).await;
    a.query_one("SELECT set_config('search_path', 'pg_catalog', false)", &[])
        .await
        .unwrap();
    let (seen, pinned_pid) = settings(&a).await;
    assert_eq!(seen[0], "pg_catalog");
    for _ in 0..10 {
        let (seen_b, pid_b) = settings(&b).await;
        assert_ne!(pid_b, pinned_pid, "the pinned server is a's alone");
        assert_eq!(seen_b, defaults);
        let (_, pid_a) = settings(&a).await;
        assert_eq!(pid_a, pinned_pid);
    }
    // Session temp tables live as long as the session, so pin too.
    b.batch_execute("CREATE TEMP TABLE mine(x int); INSERT INTO mine VALUES (1)")
        .await
        .unwrap();
    for _ in 0..5 {
        let n: i64 = b
            .query_one("SELECT count(*) FROM mine", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1);
    }
}

/// `SELECT ... INTO TEMP` makes a table that lives as long as the
/// session: its server stays the client's, and no other client is handed
/// a server that has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_into_a_temporary_table_pins_the_client() {
    let env = TestEnv::start(0, "pool_size = 2").await;
    let a = env.connect().await;
    let b = env.connect().await;
    a.batch_execute("SELECT 1 AS x INTO TEMP made_here")
        .await
        .unwrap();
    for _ in 0..5 {
        // Simple protocol, as the table was made: one plain statement.
        a.batch_execute("SELECT x FROM made_here").await.unwrap();
        let seen: Option<String> = b
            .query_one("SELECT to_regclass('made_here')::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(seen, None, "b was handed the server with a's table");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jdbc_style_multi_statement_strings() {
    let env = TestEnv::start(0, "pool_size = 1").await;
    let a = env.connect().await;
    let b = env.connect().await;
    a.batch_execute("BEGIN; SET extra_float_digits = 2; SELECT 1; COMMIT")
        .await
        .unwrap();
    let theirs: String = b
        .query_one("SELECT current_setting('extra_float_digits')", &[])
        .await
        .unwrap()
        .get(0);
    let mine: String = a
        .query_one("SELECT current_setting('extra_float_digits')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(mine, "2");
    assert_eq!(theirs, "1");
}
