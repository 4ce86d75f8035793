//! Read-your-writes with replicas that apply WAL late: a client reading
//! right after its own write never sees the row missing when the setting
//! is on, and does see it missing when it is off (so the test can fail).

mod support;

use pgsplit::config::Config;
use pgsplit::proxy::Proxy;
use support::{config_text, connect, TestEnv};
use tokio_postgres::Client;

/// A second pgsplit in front of the same cluster with `extra` config.
async fn second_proxy(env: &TestEnv, extra: &str) -> (Proxy, String) {
    let text = config_text(&env.cluster, &format!("pool_size = 4\n[routing]\n{extra}"));
    let proxy = Proxy::start(Config::parse(&text, "second", std::iter::empty()).unwrap())
        .await
        .unwrap();
    let url = env.url().replace(
        &format!(":{}/", env.addr.port()),
        &format!(":{}/", proxy.local_addr().port()),
    );
    (proxy, url)
}

/// Writes `n` rows from `first` and reads each back at once through
/// `writer` or `reader`; returns (stale reads, reads served by a replica).
async fn write_then_read(writer: &Client, reader: &Client, table: &str, n: i32) -> (usize, usize) {
    writer
        .batch_execute(&format!("CREATE TABLE {table}(id int PRIMARY KEY)"))
        .await
        .unwrap();
    let insert = writer
        .prepare(&format!("INSERT INTO {table} VALUES ($1)"))
        .await
        .unwrap();
    // Without read-your-writes the reader's Parse may reach a replica that
    // has not replayed the CREATE TABLE yet: retry until it has.
    let text = format!("SELECT (SELECT count(*) FROM {table} WHERE id = $1), pg_is_in_recovery()");
    let mut select = reader.prepare(&text).await;
    for _ in 0..100 {
        if select.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        select = reader.prepare(&text).await;
    }
    let select = select.unwrap();
    let (mut stale, mut on_replica) = (0, 0);
    for i in 0..n {
        writer.execute(&insert, &[&i]).await.unwrap();
        let row = reader.query_one(&select, &[&i]).await.unwrap();
        stale += (row.get::<_, i64>(0) == 0) as usize;
        on_replica += row.get::<_, bool>(1) as usize;
    }
    (stale, on_replica)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_writes_are_never_missing() {
    let env = TestEnv::start(2, "pool_size = 4").await;
    let c = env.connect().await;
    env.wait_for_replicas(&c).await;
    // Replicas apply commits 20 ms late.
    for i in 0..2 {
        env.replica_sql(i, "ALTER SYSTEM SET recovery_min_apply_delay = '20ms'");
        env.replica_sql(i, "SELECT pg_reload_conf()");
    }

    // On (per session, the default): 1,000 writes each read back at once.
    let (stale, on_replica) = write_then_read(&c, &c, "ryw_session", 1000).await;
    println!("read-your-writes on: {stale} stale of 1000, {on_replica} served by replicas");
    assert_eq!(stale, 0, "a client missed its own committed write");
    // Once the replicas have replayed a write, its writer reads from them.
    let insert = c
        .prepare("INSERT INTO ryw_session VALUES ($1)")
        .await
        .unwrap();
    let select = c
        .prepare("SELECT (SELECT count(*) FROM ryw_session WHERE id = $1), pg_is_in_recovery()")
        .await
        .unwrap();
    let mut replica_reads = 0;
    for i in 1000..1005 {
        c.execute(&insert, &[&i]).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        let row = c.query_one(&select, &[&i]).await.unwrap();
        assert_eq!(row.get::<_, i64>(0), 1, "stale after waiting");
        replica_reads += row.get::<_, bool>(1) as usize;
    }
    assert!(
        replica_reads > 0,
        "reads never returned to replicas after they caught up"
    );

    // Per user: another connection of the same user sees the writes too.
    let (user_proxy, user_url) = second_proxy(&env, "read_your_writes = \"user\"").await;
    let (w, r) = (
        connect(&user_url).await.unwrap(),
        connect(&user_url).await.unwrap(),
    );
    env.wait_for_replicas(&r).await;
    let (stale, on_replica) = write_then_read(&w, &r, "ryw_user", 300).await;
    println!("read-your-writes per user: {stale} stale of 300, {on_replica} served by replicas");
    assert_eq!(stale, 0, "a connection missed its user's committed write");
    user_proxy.stop().await;

    // Off: the same loop reads stale rows from the lagging replicas.
    let (off_proxy, off_url) = second_proxy(&env, "read_your_writes = \"off\"").await;
    let off = connect(&off_url).await.unwrap();
    env.wait_for_replicas(&off).await;
    let (stale, on_replica) = write_then_read(&off, &off, "ryw_off", 300).await;
    println!("read-your-writes off: {stale} stale of 300, {on_replica} served by replicas");
    assert!(
        stale > 0,
        "with the setting off, lagging replicas must show stale reads"
    );
    off_proxy.stop().await;
}
