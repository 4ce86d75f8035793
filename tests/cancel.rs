//! Cancel requests reach the query of the client that sent them, on the
//! server it holds at that moment, and never another client's query.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{sqlstate, TestEnv};
use tokio_postgres::NoTls;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_running_query() {
    let env = TestEnv::start(0, "").await;
    let client = env.connect().await;
    let token = client.cancel_token();
    let running = tokio::spawn(async move { client.query_one("SELECT pg_sleep(30)", &[]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel_query(NoTls).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .unwrap()
        .unwrap()
        .err()
        .unwrap();
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"));
}

/// A cancel for a query still waiting for a server (the pool is full) is
/// not dropped: the query fails with 57014 at once, the client holding the
/// server goes on untouched, and the cancelled client's next query runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_ends_a_wait_for_a_full_pool() {
    let env = TestEnv::start(0, "pool_size = 1\nquery_wait_timeout = \"60s\"").await;
    let holder = env.connect().await;
    holder.batch_execute("BEGIN").await.unwrap();
    holder.query_one("SELECT 1", &[]).await.unwrap();
    let waiter = env.connect().await;
    let token = waiter.cancel_token();
    let waiter = Arc::new(waiter);
    let waiting = tokio::spawn({
        let waiter = waiter.clone();
        async move { waiter.query_one("SELECT 2", &[]).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the query must wait for the one server"
    );
    token.cancel_query(NoTls).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the cancel ends the wait")
        .unwrap()
        .expect_err("the waiting query is cancelled");
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"));
    let message = err.as_db_error().map(|e| e.message().to_string());
    assert!(
        message
            .as_deref()
            .is_some_and(|m| m.contains("waiting for a server")),
        "{message:?}"
    );
    let row = holder.query_one("SELECT 3", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 3);
    holder.batch_execute("COMMIT").await.unwrap();
    let row = waiter.query_one("SELECT 4", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bogus_cancel_key_cancels_nothing() {
    let env = TestEnv::start(0, "").await;
    let client = env.connect().await;
    let running = tokio::spawn(async move { client.query_one("SELECT pg_sleep(1)", &[]).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A CancelRequest with a made-up key.
    let mut c = support::raw::Raw::connect(env.addr).await;
    let mut packet = 16i32.to_be_bytes().to_vec();
    packet.extend_from_slice(&80877102i32.to_be_bytes());
    packet.extend_from_slice(&1i32.to_be_bytes());
    packet.extend_from_slice(&12345i32.to_be_bytes());
    c.send(&packet).await;
    assert!(c.recv().await.is_none());
    assert!(running.await.unwrap().is_ok());
}

/// Many clients share one server; a third of their queries get a cancel
/// at a random moment. A query may only ever fail with 57014 if its own
/// client sent a cancel while it ran, or during its previous query: a
/// client's CancelRequest is fire-and-forget (tokio-postgres, like libpq,
/// does not wait for it to be acted on), so a late one may land on the
/// same client's next query, as it would against PostgreSQL. Never on
/// another client's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cancels_on_a_pool_of_one_hit_only_their_own_query() {
    let env = TestEnv::start(0, "pool_size = 1\nquery_wait_timeout = \"60s\"").await;
    let cancelled = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for c in 0..8u64 {
        let url = env.url();
        let cancelled = cancelled.clone();
        tasks.push(tokio::spawn(async move {
            let client = support::connect(&url).await.unwrap();
            for round in 0..6u64 {
                let token = client.cancel_token();
                let send_cancel = (c + round) % 3 == 0;
                let sent_before = round > 0 && (c + round - 1) % 3 == 0;
                let delay = Duration::from_millis((c * 37 + round * 53) % 150);
                let canceller = tokio::spawn(async move {
                    if send_cancel {
                        tokio::time::sleep(delay).await;
                        let _ = token.cancel_query(NoTls).await;
                    }
                });
                let result = client.query_one("SELECT pg_sleep(0.05)", &[]).await;
                canceller.await.unwrap();
                match result {
                    Ok(_) => {}
                    Err(e) if sqlstate(&e).as_deref() == Some("57014") => {
                        assert!(
                            send_cancel || sent_before,
                            "client {c} round {round}: cancelled by someone else's CancelRequest"
                        );
                        cancelled.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => panic!("client {c} round {round}: {e}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(
        cancelled.load(Ordering::Relaxed) > 0,
        "some cancels must have landed"
    );
}
