//! Read/write splitting against a real leader and streaming replicas:
//! classification, transactions, hints, the read-only alias, prepared
//! statements across leader and replicas, session mode, replica choice and
//! fallback.

mod support;

use std::collections::HashSet;
use support::{config_text, connect, sqlstate, TestEnv};
use tokio_postgres::{Client, GenericClient};

/// Whether `sql` (which must return one boolean column) ran in recovery.
async fn on_replica(client: &impl GenericClient, sql: &str) -> bool {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get::<_, bool>(0)
}

/// The port of the server a simple-query `sql` ran on (it must return the
/// port as its first column).
async fn port(client: &Client, sql: &str) -> u16 {
    let rows = client.simple_query(sql).await.unwrap();
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(|p| p.parse().unwrap()),
            _ => None,
        })
        .expect("a row")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_to_replicas_and_writes_to_the_leader() {
    let env = TestEnv::start(2, "pool_size = 4").await;
    let c = env.connect().await;
    env.wait_for_replicas(&c).await;
    c.batch_execute("CREATE TABLE rw(x int); CREATE SEQUENCE rw_seq; INSERT INTO rw VALUES (1)")
        .await
        .unwrap();
    // A second connection: no read-your-writes bookkeeping of its own.
    let r = env.connect().await;
    env.wait_for_replicas(&r).await;
    let leader_port = env.cluster.leader.port;
    let replica_ports: HashSet<u16> = env.cluster.replicas.iter().map(|n| n.port).collect();
    let mut seen = HashSet::new();
    for _ in 0..60 {
        seen.insert(port(&r, "SELECT inet_server_port()").await);
    }
    assert_eq!(seen, replica_ports, "reads spread over both replicas");
    for (sql, replica) in [
        ("SELECT pg_is_in_recovery()", true),
        (
            "WITH a AS (SELECT 1) SELECT pg_is_in_recovery() FROM a",
            true,
        ),
        ("SELECT pg_is_in_recovery() FROM rw FOR UPDATE", false),
        ("SELECT pg_is_in_recovery() FROM rw FOR KEY SHARE", false),
        ("SELECT pg_is_in_recovery(), nextval('rw_seq')", false),
        ("SELECT pg_is_in_recovery(), txid_current()", false),
        (
            "SELECT pg_is_in_recovery(), pg_advisory_xact_lock(1)",
            false,
        ),
        (
            "WITH d AS (INSERT INTO rw VALUES (2) RETURNING x) SELECT pg_is_in_recovery() FROM d",
            false,
        ),
    ] {
        assert_eq!(on_replica(&r, sql).await, replica, "{sql}");
    }
    // Writes that would fail on a replica succeed.
    r.batch_execute("EXPLAIN ANALYZE INSERT INTO rw VALUES (3)")
        .await
        .unwrap();
    r.batch_execute("SELECT 1 INTO rw_copy").await.unwrap();
    r.batch_execute("UPDATE rw SET x = x").await.unwrap();
    // Several statements in one string: one write sends it all to the
    // leader. (Fresh connections: `r` wrote, so read-your-writes keeps its
    // reads on the leader until the replicas have replayed its writes.)
    let m = env.connect().await;
    assert_eq!(
        port(&m, "SELECT inet_server_port(); INSERT INTO rw VALUES (4)").await,
        leader_port
    );
    let m = env.connect().await;
    assert!(replica_ports.contains(&port(&m, "SELECT inet_server_port(); SELECT 1").await));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_go_where_their_first_statement_says() {
    let env = TestEnv::start(2, "pool_size = 4").await;
    let c = env.connect().await;
    env.wait_for_replicas(&c).await;
    c.batch_execute("CREATE TABLE tx(x int)").await.unwrap();
    let mut r = env.connect().await;
    env.wait_for_replicas(&r).await;

    r.batch_execute("BEGIN READ ONLY").await.unwrap();
    assert!(on_replica(&r, "SELECT pg_is_in_recovery()").await);
    let err = r
        .batch_execute("INSERT INTO tx VALUES (1)")
        .await
        .unwrap_err();
    assert_eq!(
        sqlstate(&err).as_deref(),
        Some("25006"),
        "read-only transaction"
    );
    r.batch_execute("ROLLBACK").await.unwrap();

    r.batch_execute("START TRANSACTION READ ONLY")
        .await
        .unwrap();
    assert!(on_replica(&r, "SELECT pg_is_in_recovery()").await);
    r.batch_execute("COMMIT").await.unwrap();

    // A lone BEGIN, then SET TRANSACTION READ ONLY as the first statement.
    r.batch_execute("BEGIN").await.unwrap();
    r.batch_execute("SET TRANSACTION READ ONLY").await.unwrap();
    assert!(on_replica(&r, "SELECT pg_is_in_recovery()").await);
    r.batch_execute("COMMIT").await.unwrap();

    // Other transactions: the leader, reads included, and they stay there.
    let t = r.transaction().await.unwrap();
    assert!(!on_replica(&t, "SELECT pg_is_in_recovery()").await);
    t.execute("INSERT INTO tx VALUES (1)", &[]).await.unwrap();
    assert!(!on_replica(&t, "SELECT pg_is_in_recovery()").await);
    t.commit().await.unwrap();
    r.batch_execute("BEGIN; SELECT 1; COMMIT").await.unwrap();
    assert_eq!(
        port(&r, "BEGIN; SELECT inet_server_port(); COMMIT").await,
        env.cluster.leader.port
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_statement_routing_sends_read_transactions_to_replicas() {
    let env = TestEnv::start(
        2,
        "pool_size = 4\n[routing]\ntransaction_routing = \"first_statement\"",
    )
    .await;
    let c = env.connect().await;
    env.wait_for_replicas(&c).await;
    c.batch_execute("CREATE TABLE fs(x int)").await.unwrap();
    let mut r = env.connect().await;
    env.wait_for_replicas(&r).await;
    let t = r.transaction().await.unwrap();
    assert!(on_replica(&t, "SELECT pg_is_in_recovery()").await);
    t.commit().await.unwrap();
    let t = r.transaction().await.unwrap();
    t.execute("INSERT INTO fs VALUES (1)", &[]).await.unwrap();
    assert!(!on_replica(&t, "SELECT pg_is_in_recovery()").await);
    t.commit().await.unwrap();
    let n: i64 = c
        .query_one("/* pgsplit:leader */ SELECT count(*) FROM fs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "the write committed on the leader");
    // A fresh connection: `r` wrote, so its reads stay on the leader for now.
    let fresh = env.connect().await;
    assert!(simple_on_replica(&fresh, "BEGIN; SELECT pg_is_in_recovery(); COMMIT").await);
}

/// `on_replica` for a simple query whose last row is the boolean.
async fn simple_on_replica(client: &Client, sql: &str) -> bool {
    let rows = client.simple_query(sql).await.unwrap();
    rows.iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(|v| v == "t"),
            _ => None,
        })
        .last()
        .expect("a row")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_override_classification() {
    let env = TestEnv::start(2, "pool_size = 4").await;
    let c = env.connect().await;
    env.wait_for_replicas(&c).await;
    assert!(!on_replica(&c, "/* pgsplit:leader */ SELECT pg_is_in_recovery()").await);
    assert!(on_replica(&c, "/* pgsplit:replica */ SELECT pg_is_in_recovery()").await);
    c.batch_execute("SET pgsplit.target = 'leader'")
        .await
        .unwrap();
    assert!(!on_replica(&c, "SELECT pg_is_in_recovery()").await);
    assert!(
        on_replica(&c, "/* pgsplit:replica */ SELECT pg_is_in_recovery()").await,
        "comment wins"
    );
    c.batch_execute("SET pgsplit.target = 'auto'")
        .await
        .unwrap();
    assert!(on_replica(&c, "SELECT pg_is_in_recovery()").await);
    c.batch_execute("SET pgsplit.target = 'replica'")
        .await
        .unwrap();
    assert!(on_replica(&c, "SELECT pg_is_in_recovery(), now()").await);
    c.batch_execute("RESET pgsplit.target").await.unwrap();

    let url = format!("{}&options=-c%20pgsplit.target%3Dleader", env.url());
    let l = connect(&url).await.unwrap();
    for _ in 0..5 {
        assert!(!on_replica(&l, "SELECT pg_is_in_recovery()").await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_alias_reaches_only_replicas() {
    let env = TestEnv::start(1, "pool_size = 4").await;
    env.connect()
        .await
        .batch_execute("CREATE TABLE ro(x int)")
        .await
        .unwrap();
    let url = env.url().replace("/app?", "/app_ro?");
    let ro = connect(&url).await.unwrap();
    for _ in 0..10 {
        assert!(on_replica(&ro, "SELECT pg_is_in_recovery()").await);
        assert!(simple_on_replica(&ro, "/* pgsplit:leader */ SELECT pg_is_in_recovery()").await);
    }
    let err = ro
        .batch_execute("INSERT INTO ro VALUES (1)")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("25006"));
    assert_eq!(
        ro.query_one("SELECT current_database()", &[])
            .await
            .unwrap()
            .get::<_, String>(0),
        "app"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_run_on_leader_and_replicas_alike() {
    // Fewer servers than clients, so statements meet servers that lack them.
    let env = TestEnv::start(2, "pool_size = 2").await;
    let setup = env.connect().await;
    env.wait_for_replicas(&setup).await;
    setup.batch_execute("CREATE TABLE ps(x int)").await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..6 {
        // Reads and writes on separate connections: read-your-writes would
        // keep a writer's own reads on the leader.
        let (reader, writer) = (env.connect().await, env.connect().await);
        tasks.push(tokio::spawn(async move {
            let read = reader.prepare("SELECT pg_is_in_recovery()").await.unwrap();
            let write = writer
                .prepare("INSERT INTO ps VALUES ($1) RETURNING pg_is_in_recovery()")
                .await
                .unwrap();
            let mut replica_reads = 0;
            for j in 0..40 {
                let on_replica: bool = reader.query_one(&read, &[]).await.unwrap().get(0);
                replica_reads += on_replica as usize;
                let written: bool = writer
                    .query_one(&write, &[&(i * 100 + j)])
                    .await
                    .unwrap()
                    .get(0);
                assert!(!written, "a write reached a replica");
            }
            replica_reads
        }));
    }
    let mut replica_reads = 0;
    for t in tasks {
        replica_reads += t.await.unwrap();
    }
    let n: i64 = setup
        .query_one("/* pgsplit:leader */ SELECT count(*) FROM ps", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 240);
    assert!(
        replica_reads > 200,
        "prepared reads reach replicas: {replica_reads} of 240"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_keeps_one_server_per_role() {
    let env = TestEnv::start(1, "pool_mode = \"session\"\npool_size = 4").await;
    let c = env.connect().await;
    env.wait_for_replicas(&c).await;
    c.batch_execute("CREATE TABLE sm(x int); SET search_path = pg_catalog, public")
        .await
        .unwrap();
    let mut replica_pids = HashSet::new();
    let mut leader_pids = HashSet::new();
    for i in 0..10 {
        let row = c
            .query_one(
                "SELECT pg_is_in_recovery(), pg_backend_pid(), current_setting('search_path')",
                &[],
            )
            .await
            .unwrap();
        if row.get::<_, bool>(0) {
            replica_pids.insert(row.get::<_, i32>(1));
        }
        assert_eq!(
            row.get::<_, String>(2),
            "pg_catalog, public",
            "settings follow to the replica"
        );
        let row = c
            .query_one(
                "INSERT INTO sm VALUES ($1) RETURNING pg_is_in_recovery(), pg_backend_pid()",
                &[&i],
            )
            .await
            .unwrap();
        assert!(!row.get::<_, bool>(0));
        leader_pids.insert(row.get::<_, i32>(1));
    }
    assert_eq!(leader_pids.len(), 1, "one leader server for the session");
    assert!(
        replica_pids.len() <= 1,
        "one replica server for the session"
    );
    // A lone BEGIN (answered by pgsplit) still opens the transaction on the
    // server the session holds: the rollback undoes the insert.
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute("INSERT INTO sm VALUES (100)")
        .await
        .unwrap();
    c.batch_execute("ROLLBACK").await.unwrap();
    let n: i64 = c
        .query_one(
            "/* pgsplit:leader */ SELECT count(*) FROM sm WHERE x = 100",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "the insert ran outside the transaction");
}

/// Reads through a fresh connection of `proxy_url` until one lands on
/// `port` (true), or 5 s pass (false).
async fn reads_reach(url: &str, port_wanted: u16) -> bool {
    let c = connect(url).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if port(&c, "SELECT inet_server_port()").await == port_wanted {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    false
}

/// Ports that 30 reads through a fresh connection reached.
async fn read_ports(url: &str) -> HashSet<u16> {
    let c = connect(url).await.unwrap();
    let mut seen = HashSet::new();
    for _ in 0..30 {
        seen.insert(port(&c, "SELECT inet_server_port()").await);
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_preference_and_fallback_to_the_leader() {
    let env = TestEnv::start_with(2, |cluster| {
        let text = config_text(
            cluster,
            "pool_size = 4\n[routing]\nzone = \"b\"\nmax_replica_lag_bytes = \"64kB\"",
        );
        let (a, b) = (cluster.replicas[0].addr(), cluster.replicas[1].addr());
        text.replace(
            &format!("replicas = [\"{a}\", \"{b}\"]"),
            &format!("replicas = [{{ addr = \"{a}\", zone = \"a\" }}, {{ addr = \"{b}\", zone = \"b\" }}]"),
        )
    })
    .await;
    let writer = env.connect().await;
    env.wait_for_replicas(&writer).await;
    writer
        .batch_execute("CREATE TABLE zf(x int)")
        .await
        .unwrap();
    let (a, b) = (env.cluster.replicas[0].port, env.cluster.replicas[1].port);
    let leader = env.cluster.leader.port;
    assert!(reads_reach(&env.url(), b).await);
    assert_eq!(
        read_ports(&env.url()).await,
        HashSet::from([b]),
        "same-zone replica only"
    );
    // Zone b falls behind: reads move to zone a.
    env.replica_sql(1, "SELECT pg_wal_replay_pause()");
    writer
        .batch_execute("INSERT INTO zf SELECT generate_series(1, 20000)")
        .await
        .unwrap();
    assert!(
        reads_reach(&env.url(), a).await,
        "reads moved to the other zone"
    );
    assert_eq!(read_ports(&env.url()).await, HashSet::from([a]));
    // No replica qualifies: reads fall back to the leader.
    env.replica_sql(0, "SELECT pg_wal_replay_pause()");
    writer
        .batch_execute("INSERT INTO zf SELECT generate_series(1, 20000)")
        .await
        .unwrap();
    assert!(reads_reach(&env.url(), leader).await);
    assert_eq!(read_ports(&env.url()).await, HashSet::from([leader]));
    // With leader_reads = "never" they fail instead, with 57P03.
    let strict = pgsplit::proxy::Proxy::start(
        pgsplit::config::Config::parse(
            &config_text(
                &env.cluster,
                "[routing]\nleader_reads = \"never\"\nmax_replica_lag_bytes = \"64kB\"",
            ),
            "strict",
            std::iter::empty(),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    let strict_url = env.url().replace(
        &env.addr.port().to_string(),
        &strict.local_addr().port().to_string(),
    );
    let s = connect(&strict_url).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let err = s.query_one("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("57P03"));
    assert!(
        !on_replica(
            &s,
            "INSERT INTO zf VALUES (0) RETURNING pg_is_in_recovery()"
        )
        .await,
        "writes still work"
    );
    // Replay resumes: reads come back to the same zone.
    env.replica_sql(0, "SELECT pg_wal_replay_resume()");
    env.replica_sql(1, "SELECT pg_wal_replay_resume()");
    assert!(reads_reach(&env.url(), b).await, "back to zone b");
    strict.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_replica_leaves_the_read_set_until_it_replays() {
    let env = TestEnv::start(
        2,
        "pool_size = 4\n[routing]\nmax_replica_lag_bytes = \"64kB\"\nmax_replica_lag_seconds = \"1s\"",
    )
    .await;
    let writer = env.connect().await;
    env.wait_for_replicas(&writer).await;
    writer
        .batch_execute("CREATE TABLE lag(x int)")
        .await
        .unwrap();
    let (a, b) = (env.cluster.replicas[0].port, env.cluster.replicas[1].port);
    assert!(reads_reach(&env.url(), a).await && reads_reach(&env.url(), b).await);

    // Bytes: replay paused on a, a large write: a leaves the read set.
    env.replica_sql(0, "SELECT pg_wal_replay_pause()");
    writer
        .batch_execute("INSERT INTO lag SELECT generate_series(1, 20000)")
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    for _ in 0..3 {
        assert!(
            !read_ports(&env.url()).await.contains(&a),
            "a paused replica took reads"
        );
    }
    env.replica_sql(0, "SELECT pg_wal_replay_resume()");
    assert!(
        reads_reach(&env.url(), a).await,
        "a came back after replaying"
    );

    // Seconds: a small write a lagging replica has not replayed for 1 s.
    env.replica_sql(1, "SELECT pg_wal_replay_pause()");
    writer
        .batch_execute("INSERT INTO lag VALUES (1)")
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1600)).await;
    for _ in 0..3 {
        assert!(
            !read_ports(&env.url()).await.contains(&b),
            "a replica 1 s behind took reads"
        );
    }
    env.replica_sql(1, "SELECT pg_wal_replay_resume()");
    assert!(
        reads_reach(&env.url(), b).await,
        "b came back after replaying"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_reads_and_writes_keep_their_order_and_roles() {
    let env = TestEnv::start(2, "pool_size = 4").await;
    let c = env.connect().await;
    env.wait_for_replicas(&c).await;
    c.batch_execute("CREATE TABLE pipe(x int)").await.unwrap();
    let p = env.connect().await;
    env.wait_for_replicas(&p).await;
    let read = p.prepare("SELECT pg_is_in_recovery()").await.unwrap();
    let write = p
        .prepare("INSERT INTO pipe VALUES ($1) RETURNING pg_is_in_recovery()")
        .await
        .unwrap();
    for i in 0..50i32 {
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&i];
        // tokio-postgres pipelines requests issued together on one
        // connection: a read, a write behind it, another read.
        let (r1, w, r2) = tokio::join!(
            p.query_one(&read, &[]),
            p.query_one(&write, &params),
            p.query_one(&read, &[]),
        );
        r1.unwrap();
        r2.unwrap();
        assert!(
            !w.unwrap().get::<_, bool>(0),
            "a pipelined write reached a replica"
        );
    }
    let n: i64 = c
        .query_one("/* pgsplit:leader */ SELECT count(*) FROM pipe", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 50);
}
