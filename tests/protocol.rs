//! Every protocol edge drivers use, through pgsplit in transaction mode
//! (session mode where the feature needs it), against a real leader.

mod support;

use bytes::BytesMut;
use futures_util::{future, pin_mut, SinkExt, StreamExt, TryStreamExt};
use support::raw::{self, field, Raw};
use support::TestEnv;

async fn env() -> TestEnv {
    TestEnv::start(0, "pool_mode = \"transaction\"\npool_size = 2").await
}

async fn app_raw(env: &TestEnv) -> Raw {
    Raw::login(env.addr, "app", "app-secret", "app").await.0
}

fn tags(msgs: &[raw::Msg]) -> String {
    msgs.iter().map(|(t, _)| *t as char).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_query_with_several_statements() {
    let env = env().await;
    let client = env.connect().await;
    let rows = client
        .simple_query(
            "SELECT 1 AS a; SELECT 'two' AS b, 3 AS c; CREATE TEMP TABLE t(x int); SELECT 4",
        )
        .await
        .unwrap();
    let values: Vec<String> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap().to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            _ => None,
        })
        .collect();
    assert_eq!(values, vec!["1", "two,3", "4"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_unnamed_statement_and_portals() {
    let env = env().await;
    let client = env.connect().await;
    // tokio-postgres: query_raw uses the unnamed portal of a named statement;
    // query_typed uses the unnamed statement.
    let n: i32 = client
        .query_one("SELECT $1::int + 1", &[&41i32])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 42);
    let rows = client
        .query_typed(
            "SELECT $1::text || 'x'",
            &[(&"a", tokio_postgres::types::Type::TEXT)],
        )
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(0), "ax");
    // Named portal with a row limit inside a transaction: portal suspension.
    let mut client = client;
    let tx = client.transaction().await.unwrap();
    let stmt = tx.prepare("SELECT generate_series(1, 10)").await.unwrap();
    let portal = tx.bind(&stmt, &[]).await.unwrap();
    let first: Vec<i32> = tx
        .query_portal(&portal, 4)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let second: Vec<i32> = tx
        .query_portal(&portal, 4)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let rest: Vec<i32> = tx
        .query_portal(&portal, 0)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    tx.commit().await.unwrap();
    assert_eq!(first, vec![1, 2, 3, 4]);
    assert_eq!(second, vec![5, 6, 7, 8]);
    assert_eq!(rest, vec![9, 10]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portal_suspension_on_the_wire() {
    let env = env().await;
    let mut c = app_raw(&env).await;
    let mut p = BytesMut::new();
    {
        let m = raw::query("BEGIN");
        raw::push(&mut p, &m);
    }
    c.send(&p).await;
    c.recv_until(b'Z').await;
    let mut p = BytesMut::new();
    for m in [
        raw::parse("", "SELECT generate_series(1,5)"),
        raw::bind("p1", ""),
        raw::execute("p1", 2),
        raw::execute("p1", 0),
        raw::sync(),
    ] {
        raw::push(&mut p, &m);
    }
    c.send(&p).await;
    let got = c.recv_until(b'Z').await;
    // ParseComplete, BindComplete, 2 rows, PortalSuspended, 3 rows, CommandComplete, ReadyForQuery(T)
    assert_eq!(tags(&got), "12DDsDDDCZ");
    assert_eq!(&got.last().unwrap().1[..], b"T");
    c.send(&raw::query("COMMIT")).await;
    c.recv_until(b'Z').await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_with_several_syncs() {
    let env = env().await;
    let client = env.connect().await;
    let s1 = client.prepare("SELECT $1::int * 2").await.unwrap();
    // tokio-postgres pipelines concurrent queries: each is Bind/Execute/Sync.
    let futures: Vec<_> = (0..50)
        .map(|i| {
            let client = &client;
            let s1 = &s1;
            async move {
                client
                    .query_one(s1, &[&i])
                    .await
                    .map(|r| r.get::<_, i32>(0))
            }
        })
        .collect();
    let results = future::join_all(futures).await;
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.unwrap(), i as i32 * 2);
    }
    // On the wire: three Syncs in one write.
    let mut c = app_raw(&env).await;
    let mut p = BytesMut::new();
    for i in 0..3 {
        raw::push(&mut p, &raw::parse("", &format!("SELECT {i}")));
        raw::push(&mut p, &raw::bind("", ""));
        raw::push(&mut p, &raw::execute("", 0));
        raw::push(&mut p, &raw::sync());
    }
    c.send(&p).await;
    let mut all = String::new();
    for _ in 0..3 {
        all.push_str(&tags(&c.recv_until(b'Z').await));
    }
    assert_eq!(all, "12DCZ12DCZ12DCZ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_without_sync_gets_answers() {
    let env = env().await;
    let mut c = app_raw(&env).await;
    let mut p = BytesMut::new();
    for m in [
        raw::parse("s1", "SELECT 7"),
        raw::describe(b'S', "s1"),
        raw::flush(),
    ] {
        raw::push(&mut p, &m);
    }
    c.send(&p).await;
    // asyncpg waits for these before it sends anything else.
    assert_eq!(tags(&c.recv_until(b'T').await), "1tT");
    let mut p = BytesMut::new();
    for m in [raw::bind("", "s1"), raw::execute("", 0), raw::flush()] {
        raw::push(&mut p, &m);
    }
    c.send(&p).await;
    let got = c.recv_until(b'C').await;
    assert_eq!(tags(&got), "2DC");
    assert_eq!(&got[1].1[6..], b"7");
    c.send(&raw::sync()).await;
    assert_eq!(tags(&c.recv_until(b'Z').await), "Z");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_in_the_middle_of_a_pipeline() {
    let env = env().await;
    let mut c = app_raw(&env).await;
    let mut p = BytesMut::new();
    for m in [
        raw::parse("", "SELECT 1"),
        raw::bind("", ""),
        raw::execute("", 0),
        raw::sync(),
        raw::parse("", "SELECT 1/0"),
        raw::bind("", ""),
        raw::execute("", 0),
        raw::parse("", "SELECT 'skipped'"),
        raw::bind("", ""),
        raw::execute("", 0),
        raw::sync(),
        raw::parse("", "SELECT 3"),
        raw::bind("", ""),
        raw::execute("", 0),
        raw::sync(),
    ] {
        raw::push(&mut p, &m);
    }
    c.send(&p).await;
    assert_eq!(tags(&c.recv_until(b'Z').await), "12DCZ");
    let failed = c.recv_until(b'Z').await;
    assert_eq!(tags(&failed), "1EZ");
    assert_eq!(field(&failed[1].1, b'C'), "22012");
    assert_eq!(tags(&c.recv_until(b'Z').await), "12DCZ");
    // The pool of 2 is not drained: other clients go on.
    for _ in 0..5 {
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_from_stdin_and_to_stdout() {
    let env = env().await;
    let client = env.connect().await;
    client
        .batch_execute("CREATE TABLE copy_t(id int, name text)")
        .await
        .unwrap();
    let sink = client.copy_in("COPY copy_t FROM STDIN").await.unwrap();
    pin_mut!(sink);
    for i in 0..1000 {
        sink.send(bytes::Bytes::from(format!("{i}\tname {i}\n")))
            .await
            .unwrap();
    }
    assert_eq!(sink.finish().await.unwrap(), 1000);
    let stream = client
        .copy_out("COPY (SELECT * FROM copy_t ORDER BY id) TO STDOUT")
        .await
        .unwrap();
    let chunks: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
    let text: String = chunks
        .iter()
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    assert_eq!(text.lines().count(), 1000);
    assert!(text.starts_with("0\tname 0\n"));
    // The server went back in sync: more statements work on a pool of 2.
    let n: i64 = client
        .query_one("SELECT count(*) FROM copy_t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1000);
    // psql's simple-protocol COPY too.
    let out = env.client_command(
        "psql",
        &[
            &env.url(),
            "-c",
            "\\copy copy_t FROM STDIN",
            "-c",
            "SELECT count(*) FROM copy_t",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_with_an_error_keeps_the_server_usable() {
    let env = env().await;
    let client = env.connect().await;
    client
        .batch_execute("CREATE TABLE copy_e(id int)")
        .await
        .unwrap();
    let sink = client.copy_in("COPY copy_e FROM STDIN").await.unwrap();
    pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"1\nnot a number\n"))
        .await
        .unwrap();
    let err = sink.finish().await.unwrap_err();
    assert_eq!(support::sqlstate(&err).as_deref(), Some("22P02"));
    let n: i64 = client
        .query_one("SELECT count(*) FROM copy_e", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notice_response_reaches_the_client() {
    let env = env().await;
    let mut c = app_raw(&env).await;
    c.send(&raw::query(
        "DO $$ BEGIN RAISE NOTICE 'hello from plpgsql'; END $$",
    ))
    .await;
    let got = c.recv_until(b'Z').await;
    let notice = got
        .iter()
        .find(|(t, _)| *t == b'N')
        .expect("a NoticeResponse");
    assert_eq!(field(&notice.1, b'M'), "hello from plpgsql");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_query_response() {
    let env = env().await;
    let mut c = app_raw(&env).await;
    c.send(&raw::query("")).await;
    assert_eq!(tags(&c.recv_until(b'Z').await), "IZ");
    c.send(&raw::query(";")).await;
    assert_eq!(tags(&c.recv_until(b'Z').await), "IZ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_larger_than_one_mebibyte() {
    let env = env().await;
    let client = env.connect().await;
    let row = client
        .query_one(
            "SELECT repeat('x', 3000000), md5(repeat('x', 3000000))",
            &[],
        )
        .await
        .unwrap();
    let big: String = row.get(0);
    assert_eq!(big.len(), 3_000_000);
    // And the other way: a 2 MB parameter.
    let value = "y".repeat(2_000_000);
    let len: i32 = client
        .query_one("SELECT length($1::text)", &[&value])
        .await
        .unwrap()
        .get(0);
    assert_eq!(len, 2_000_000);
    let direct = env.connect_leader().await;
    let expected: String = direct
        .query_one("SELECT md5(repeat('x', 3000000))", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(row.get::<_, String>(1), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_above_max_message_size_is_refused() {
    let env = TestEnv::start(0, "max_message_size = \"64kB\"").await;
    let client = env.connect().await;
    let small = "z".repeat(60_000);
    let ok: i32 = client
        .query_one("SELECT length($1::text)", &[&small])
        .await
        .unwrap()
        .get(0);
    assert_eq!(ok, 60_000);
    let mut c = app_raw(&env).await;
    c.send(&raw::query(&format!("SELECT '{}'", "z".repeat(100_000))))
        .await;
    let (tag, body) = c.recv().await.expect("an error");
    assert_eq!(tag, b'E');
    assert_eq!(field(&body, b'C'), "08P01");
    assert!(
        field(&body, b'M').contains("max_message_size"),
        "{}",
        field(&body, b'M')
    );
    assert!(c.recv().await.is_none(), "connection closes");
    // Everyone else is still served.
    assert_eq!(
        client
            .query_one("SELECT 5", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify_in_session_mode() {
    let env = TestEnv::start(0, "pool_mode = \"session\"").await;
    let (listener, mut connection) = tokio_postgres::connect(&env.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
            }
        }
    });
    listener.batch_execute("LISTEN pgsplit_chan").await.unwrap();
    let notifier = env.connect().await;
    notifier
        .batch_execute("NOTIFY pgsplit_chan, 'payload-1'")
        .await
        .unwrap();
    let got = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, ("pgsplit_chan".to_string(), "payload-1".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_prepared_statements_in_session_mode() {
    let env = TestEnv::start(0, "pool_mode = \"session\"\npool_size = 2").await;
    let client = env.connect().await;
    let stmt = client.prepare("SELECT $1::int + $2::int").await.unwrap();
    for i in 0..20 {
        let v: i32 = client.query_one(&stmt, &[&i, &1i32]).await.unwrap().get(0);
        assert_eq!(v, i + 1);
    }
    // SQL-level PREPARE as well.
    client
        .batch_execute("PREPARE p(int) AS SELECT $1 * 10")
        .await
        .unwrap();
    let rows = client.simple_query("EXECUTE p(4)").await.unwrap();
    let value = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    });
    assert_eq!(value.as_deref(), Some("40"));
}
