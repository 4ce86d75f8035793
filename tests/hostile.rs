//! Broken and hostile input: pgsplit answers with a clear PostgreSQL error
//! (or closes), never panics, never leaks a server connection, and keeps
//! serving everyone else. Also the idle timeouts.

mod support;

use std::time::Duration;
use support::raw::{self, field, Raw};
use support::TestEnv;
use tokio::io::AsyncWriteExt;

/// Every pool is back to idle: no server connection is held by anyone.
async fn assert_no_server_held(env: &TestEnv) {
    let mut busy = usize::MAX;
    for _ in 0..100 {
        busy = env
            .proxy
            .as_ref()
            .unwrap()
            .shared()
            .pools
            .status()
            .iter()
            .map(|p| p.active())
            .sum();
        if busy == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{busy} server connections still held");
}

/// A healthy client still gets served.
async fn still_serving(env: &TestEnv) {
    let c = env.connect().await;
    assert_eq!(
        c.query_one("SELECT 42", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        42
    );
}

async fn expect_fatal(c: &mut Raw, code: &str) {
    let (tag, body) = c.recv().await.expect("an error before close");
    assert_eq!(tag, b'E');
    assert_eq!(field(&body, b'C'), code, "{}", field(&body, b'M'));
    assert!(c.recv().await.is_none(), "connection closed after FATAL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_get_08p01() {
    let env = TestEnv::start(0, "pool_size = 2\nmax_message_size = \"1MB\"").await;
    for bad in [
        // Length below 4.
        b"Q\0\0\0\x03".to_vec(),
        // Far too large: refused before any buffer grows.
        b"Q\x7f\xff\xff\xff".to_vec(),
        // Negative length.
        b"Q\xff\xff\xff\xf0".to_vec(),
        // Unknown message type.
        b"z\0\0\0\x04".to_vec(),
        // A password message after login.
        b"p\0\0\0\x08abc\0".to_vec(),
    ] {
        let (mut c, _) = Raw::login(env.addr, "app", "app-secret", "app").await;
        c.send(&bad).await;
        expect_fatal(&mut c, "08P01").await;
    }
    still_serving(&env).await;
    assert_no_server_held(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_before_the_startup_packet() {
    let env = TestEnv::start(0, "").await;
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"\0\0\0\x02",
        b"\x16\x03\x01\x02\0\x01\0\x01\xfc",
    ] {
        let mut c = Raw::connect(env.addr).await;
        c.send(garbage).await;
        expect_fatal(&mut c, "08P01").await;
    }
    // A well-formed packet with a protocol version nobody speaks.
    let mut c = Raw::connect(env.addr).await;
    c.send(b"\0\0\0\x09\0\0\0\0\0").await;
    expect_fatal(&mut c, "0A000").await;
    // A startup packet with an unterminated parameter list.
    let mut c = Raw::connect(env.addr).await;
    c.send(b"\0\0\0\x0e\0\x03\0\0user\0ap").await;
    expect_fatal(&mut c, "08P01").await;
    still_serving(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_message_then_gone() {
    let env = TestEnv::start(0, "pool_size = 1").await;
    let (mut c, _) = Raw::login(env.addr, "app", "app-secret", "app").await;
    c.send(b"Q\0\0\0\x64SELECT").await;
    drop(c);
    still_serving(&env).await;
    assert_no_server_held(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_vanishing_mid_copy_and_mid_pipeline() {
    let env = TestEnv::start(0, "pool_size = 1").await;
    env.connect()
        .await
        .batch_execute("CREATE TABLE vanish_copy(x int)")
        .await
        .unwrap();
    // Mid-COPY: data sent, no CopyDone, socket closed.
    let (mut c, _) = Raw::login(env.addr, "app", "app-secret", "app").await;
    c.send(&raw::query("COPY vanish_copy FROM STDIN")).await;
    assert_eq!(c.recv().await.unwrap().0, b'G');
    let mut data = vec![b'd'];
    data.extend_from_slice(&10i32.to_be_bytes());
    data.extend_from_slice(b"1\n2\n3\n");
    c.send(&data).await;
    c.stream.shutdown().await.unwrap();
    drop(c);
    still_serving(&env).await;
    assert_eq!(env.leader_sql("SELECT count(*) FROM vanish_copy"), "0");
    // Mid-pipeline: Parse/Bind/Execute without Sync, then gone.
    let (mut c, _) = Raw::login(env.addr, "app", "app-secret", "app").await;
    let mut p = Vec::new();
    for m in [
        raw::parse("", "INSERT INTO vanish_copy VALUES (9)"),
        raw::bind("", ""),
        raw::execute("", 0),
        raw::flush(),
    ] {
        p.extend_from_slice(&m);
    }
    c.send(&p).await;
    assert_eq!(c.recv().await.unwrap().0, b'1');
    drop(c);
    still_serving(&env).await;
    assert_eq!(
        env.leader_sql("SELECT count(*) FROM vanish_copy"),
        "0",
        "the unsynced insert never committed"
    );
    assert_no_server_held(&env).await;
    let stuck = env.leader_sql(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND datname = current_database() AND state <> 'idle'",
    );
    assert_eq!(stuck, "0");
}

/// A "server" that accepts, reads the startup packet and hangs up, or
/// answers garbage: the client gets an error, pgsplit stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_closing_during_authentication() {
    use tokio::io::AsyncReadExt;
    let fake = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake_addr = fake.local_addr().unwrap();
    tokio::spawn(async move {
        let mut n = 0u32;
        while let Ok((mut sock, _)) = fake.accept().await {
            n += 1;
            let mut buf = [0u8; 512];
            let _ = sock.read(&mut buf).await;
            if n.is_multiple_of(2) {
                // Garbage instead of an authentication request.
                let _ = sock.write_all(b"R\0\0\0\x08\0\0\0\x63").await;
            }
            drop(sock);
        }
    });
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nserver_connect_timeout = \"2s\"\n\
         [[users]]\nname = \"app\"\npassword = \"x\"\n[[clusters]]\nname = \"m\"\n[clusters.discovery]\nkind = \"static\"\nleader = \"{fake_addr}\"\n"
    );
    let config = pgsplit::config::Config::parse(&text, "t", std::iter::empty()).unwrap();
    let proxy = pgsplit::proxy::Proxy::start(config).await.unwrap();
    for _ in 0..4 {
        let url = format!("postgres://app:x@{}/app", proxy.local_addr());
        let err = support::connect(&url)
            .await
            .expect_err("no real server behind");
        assert_eq!(support::sqlstate(&err).as_deref(), Some("08006"), "{err}");
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeouts() {
    let env = TestEnv::start(
        0,
        "client_idle_timeout = \"700ms\"\nidle_transaction_timeout = \"400ms\"",
    )
    .await;
    // Idle in a transaction: 25P03, and the transaction is rolled back.
    env.connect()
        .await
        .batch_execute("CREATE TABLE idle_t(x int)")
        .await
        .unwrap();
    let (mut c, _) = Raw::login(env.addr, "app", "app-secret", "app").await;
    c.send(&raw::query("BEGIN; INSERT INTO idle_t VALUES (1)"))
        .await;
    c.recv_until(b'Z').await;
    expect_fatal(&mut c, "25P03").await;
    assert_eq!(env.leader_sql("SELECT count(*) FROM idle_t"), "0");
    // Idle between transactions: 57P05.
    let (mut c, _) = Raw::login(env.addr, "app", "app-secret", "app").await;
    c.send(&raw::query("SELECT 1")).await;
    c.recv_until(b'Z').await;
    expect_fatal(&mut c, "57P05").await;
    // Busy is not idle: a query longer than both limits completes.
    let (mut c, _) = Raw::login(env.addr, "app", "app-secret", "app").await;
    c.send(&raw::query("SELECT pg_sleep(1.2)")).await;
    let got = c.recv_until(b'Z').await;
    assert!(got.iter().all(|(t, _)| *t != b'E'));
    assert_no_server_held(&env).await;
}
