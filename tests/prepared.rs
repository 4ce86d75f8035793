//! Prepared statements in transaction mode, through a pool smaller than the
//! number of clients: every statement exists on whichever server runs it,
//! and clients see exactly what PostgreSQL would answer.

mod support;

use bytes::BytesMut;
use support::raw::{self, field, Raw};
use support::TestEnv;

fn tags(msgs: &[raw::Msg]) -> String {
    msgs.iter().map(|(t, _)| *t as char).collect()
}

async fn send_all(c: &mut Raw, msgs: &[Vec<u8>]) {
    let mut p = BytesMut::new();
    for m in msgs {
        raw::push(&mut p, m);
    }
    c.send(&p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_statement_cache_with_more_clients_than_servers() {
    let env = TestEnv::start(0, "pool_size = 2").await;
    env.connect()
        .await
        .batch_execute("CREATE TABLE kv(k int PRIMARY KEY, v int)")
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for c in 0..8i32 {
        let url = env.url();
        tasks.push(tokio::spawn(async move {
            let client = support::connect(&url).await.unwrap();
            let insert = client
                .prepare("INSERT INTO kv VALUES ($1, $2)")
                .await
                .unwrap();
            let select = client
                .prepare("SELECT v FROM kv WHERE k = $1")
                .await
                .unwrap();
            let add = client.prepare("SELECT $1::int + $2::int").await.unwrap();
            for i in 0..40 {
                let k = c * 1000 + i;
                client.execute(&insert, &[&k, &(k * 2)]).await.unwrap();
                let v: i32 = client.query_one(&select, &[&k]).await.unwrap().get(0);
                assert_eq!(v, k * 2);
                let s: i32 = client.query_one(&add, &[&i, &c]).await.unwrap().get(0);
                assert_eq!(s, i + c);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(env.leader_sql("SELECT count(*) FROM kv"), "320");
    assert!(env.app_backends() <= 2);
    // Identical statements share server-side statements: at most 3 per server.
    let prepared = env.leader_sql("SELECT count(*) FROM pg_prepared_statements");
    assert_eq!(
        prepared, "0",
        "pg_prepared_statements only shows the asking session"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_prepared_through_a_small_pool() {
    let env = TestEnv::start(0, "pool_size = 2").await;
    let url = env.url();
    let out = env.client_command("pgbench", &["-i", "-s", "1", "-q", &url]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = env.client_command(
        "pgbench",
        &[
            &url, "-n", "-c", "6", "-j", "2", "-t", "60", "-M", "prepared",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("number of transactions actually processed: 360/360"),
        "{text}"
    );
    assert_eq!(
        env.leader_sql("SELECT count(*) FROM pgbench_history"),
        "360"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_only_where_postgres_gives_them() {
    let env = TestEnv::start(0, "pool_size = 1").await;
    let (mut c, _) = Raw::login(env.addr, "app", "app-secret", "app").await;
    // Parse twice under one name: 42P05, and the rest up to Sync is skipped.
    send_all(&mut c, &[raw::parse("s1", "SELECT 1"), raw::sync()]).await;
    assert_eq!(tags(&c.recv_until(b'Z').await), "1Z");
    send_all(
        &mut c,
        &[
            raw::parse("s1", "SELECT 2"),
            raw::bind("", "s1"),
            raw::execute("", 0),
            raw::sync(),
        ],
    )
    .await;
    let got = c.recv_until(b'Z').await;
    assert_eq!(tags(&got), "EZ");
    assert_eq!(field(&got[0].1, b'C'), "42P05");
    assert_eq!(
        field(&got[0].1, b'M'),
        "prepared statement \"s1\" already exists"
    );
    // Bind of an unknown name: 26000.
    send_all(
        &mut c,
        &[raw::bind("", "nope"), raw::execute("", 0), raw::sync()],
    )
    .await;
    let got = c.recv_until(b'Z').await;
    assert_eq!(tags(&got), "EZ");
    assert_eq!(field(&got[0].1, b'C'), "26000");
    // Describe statement, then execute it in a later round trip.
    send_all(&mut c, &[raw::describe(b'S', "s1"), raw::sync()]).await;
    assert_eq!(tags(&c.recv_until(b'Z').await), "tTZ");
    send_all(
        &mut c,
        &[raw::bind("", "s1"), raw::execute("", 0), raw::sync()],
    )
    .await;
    let got = c.recv_until(b'Z').await;
    assert_eq!(tags(&got), "2DCZ");
    assert_eq!(&got[1].1[6..], b"1");
    // Close, then it is gone; closing it again is fine.
    send_all(
        &mut c,
        &[raw::close(b'S', "s1"), raw::close(b'S', "s1"), raw::sync()],
    )
    .await;
    assert_eq!(tags(&c.recv_until(b'Z').await), "33Z");
    send_all(&mut c, &[raw::bind("", "s1"), raw::sync()]).await;
    assert_eq!(field(&c.recv_until(b'Z').await[0].1, b'C'), "26000");
    // The name can be reused for another statement.
    send_all(
        &mut c,
        &[
            raw::parse("s1", "SELECT 'again'"),
            raw::bind("", "s1"),
            raw::execute("", 0),
            raw::sync(),
        ],
    )
    .await;
    let got = c.recv_until(b'Z').await;
    assert_eq!(tags(&got), "12DCZ");
    assert_eq!(&got[2].1[6..], b"again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deallocate_and_discard_all_from_clients() {
    let env = TestEnv::start(0, "pool_size = 1").await;
    let (mut c, _) = Raw::login(env.addr, "app", "app-secret", "app").await;
    send_all(
        &mut c,
        &[
            raw::parse("a", "SELECT 1"),
            raw::parse("b", "SELECT 2"),
            raw::sync(),
        ],
    )
    .await;
    assert_eq!(tags(&c.recv_until(b'Z').await), "11Z");
    c.send(&raw::query("DEALLOCATE a")).await;
    let got = c.recv_until(b'Z').await;
    assert_eq!(tags(&got), "CZ");
    assert_eq!(&got[0].1[..], b"DEALLOCATE\0");
    send_all(&mut c, &[raw::bind("", "a"), raw::sync()]).await;
    assert_eq!(field(&c.recv_until(b'Z').await[0].1, b'C'), "26000");
    // Rails/PDO send DEALLOCATE ALL behind the pooler's back.
    c.send(&raw::query("DEALLOCATE ALL")).await;
    assert_eq!(tags(&c.recv_until(b'Z').await), "CZ");
    send_all(&mut c, &[raw::bind("", "b"), raw::sync()]).await;
    assert_eq!(field(&c.recv_until(b'Z').await[0].1, b'C'), "26000");
    // Names can be parsed again afterwards, and DISCARD ALL forgets them too.
    send_all(
        &mut c,
        &[
            raw::parse("b", "SELECT 3"),
            raw::bind("", "b"),
            raw::execute("", 0),
            raw::sync(),
        ],
    )
    .await;
    assert_eq!(tags(&c.recv_until(b'Z').await), "12DCZ");
    c.send(&raw::query("DISCARD ALL")).await;
    assert_eq!(tags(&c.recv_until(b'Z').await), "CZ");
    send_all(&mut c, &[raw::bind("", "b"), raw::sync()]).await;
    assert_eq!(field(&c.recv_until(b'Z').await[0].1, b'C'), "26000");
    // A DEALLOCATE of an unknown name is PostgreSQL's error.
    c.send(&raw::query("DEALLOCATE nothing_here")).await;
    let got = c.recv_until(b'Z').await;
    assert_eq!(field(&got[0].1, b'C'), "26000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unnamed_statement_survives_a_server_change_between_round_trips() {
    // pgx describe-exec: Parse unnamed + Describe + Sync, then Bind + Execute.
    let env = TestEnv::start(0, "pool_size = 2").await;
    let (mut a, _) = Raw::login(env.addr, "app", "app-secret", "app").await;
    let (mut b, _) = Raw::login(env.addr, "app", "app-secret", "app").await;
    for round in 0..10 {
        send_all(
            &mut a,
            &[
                raw::parse("", &format!("SELECT 'a{round}'")),
                raw::describe(b'S', ""),
                raw::sync(),
            ],
        )
        .await;
        assert_eq!(tags(&a.recv_until(b'Z').await), "1tTZ");
        // b takes a server and leaves its own unnamed statement there.
        send_all(
            &mut b,
            &[
                raw::parse("", "SELECT 'b'"),
                raw::describe(b'S', ""),
                raw::sync(),
            ],
        )
        .await;
        b.recv_until(b'Z').await;
        send_all(
            &mut a,
            &[raw::bind("", ""), raw::execute("", 0), raw::sync()],
        )
        .await;
        let got = a.recv_until(b'Z').await;
        assert_eq!(tags(&got), "2DCZ");
        assert_eq!(&got[1].1[6..], format!("a{round}").as_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_evicted_from_a_full_server_are_prepared_again() {
    let env = TestEnv::start(0, "pool_size = 1\nmax_prepared_statements = 3").await;
    let client = env.connect().await;
    let mut statements = Vec::new();
    for i in 0..8 {
        statements.push(client.prepare(&format!("SELECT {i}::int")).await.unwrap());
    }
    for _ in 0..3 {
        for (i, s) in statements.iter().enumerate() {
            let v: i32 = client.query_one(s, &[]).await.unwrap().get(0);
            assert_eq!(v, i as i32);
        }
    }
    let on_server: i64 = client
        .query_one("SELECT count(*) FROM pg_prepared_statements", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        on_server <= 3,
        "server keeps at most max_prepared_statements: {on_server}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_prepare_pins_the_client_to_its_server() {
    let env = TestEnv::start(0, "pool_size = 2").await;
    let client = env.connect().await;
    client
        .batch_execute("PREPARE q(int) AS SELECT $1 * 2")
        .await
        .unwrap();
    let other = env.connect().await;
    for i in 0..10 {
        // Another client keeps the other server busy in between.
        other.query_one("SELECT 1", &[]).await.unwrap();
        let rows = client
            .simple_query(&format!("EXECUTE q({i})"))
            .await
            .unwrap();
        let value = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        });
        assert_eq!(value, Some((i * 2).to_string()));
    }
    client.batch_execute("DEALLOCATE q").await.unwrap();
}
