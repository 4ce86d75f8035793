//! A manual failover under a static topology: the leader crashes, a
//! replica is promoted with `pg_ctl promote`, and pgsplit finds the new
//! leader by probing, with writes waiting instead of failing.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{connect, sqlstate, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_wait_for_a_promoted_replica() {
    support::init_logging();
    let env = TestEnv::start(2, "pool_size = 4\n[routing]\nleader_wait_timeout = \"20s\"").await;
    let c = env.connect().await;
    env.wait_for_replicas(&c).await;
    c.batch_execute("CREATE TABLE fo(id int PRIMARY KEY, t timestamptz DEFAULT clock_timestamp())")
        .await
        .unwrap();
    let url = env.url();

    // Writers insert rows one at a time, reconnecting after an error.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let next_id = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for _ in 0..4 {
        let (url, stop, ok, failed, next_id) = (
            url.clone(),
            stop.clone(),
            ok.clone(),
            failed.clone(),
            next_id.clone(),
        );
        writers.push(tokio::spawn(async move {
            let mut client = connect(&url).await.unwrap();
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let id = next_id.fetch_add(1, Ordering::Relaxed) as i32;
                match client
                    .execute("INSERT INTO fo(id) VALUES ($1)", &[&id])
                    .await
                {
                    Ok(_) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors.push(format!("{:?} {e}", sqlstate(&e)));
                        client = loop {
                            if let Ok(c) = connect(&url).await {
                                break c;
                            }
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        };
                    }
                }
            }
            errors
        }));
    }
    // The writers log in and start within a few seconds even when the
    // machine is busy with other tests (a fixed 500 ms once was not enough).
    let started = Instant::now();
    while ok.load(Ordering::Relaxed) == 0 && started.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = ok.load(Ordering::Relaxed);
    assert!(before > 0, "writes flow before the failover");

    // Crash the leader, promote replica 0 a second later.
    env.cluster.crash(&env.cluster.leader).unwrap();
    let crashed_at = Instant::now();
    let failed_at_crash = failed.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during_gap = ok.load(Ordering::Relaxed);
    env.cluster.promote(&env.cluster.replicas[0]).unwrap();
    let promoted_at = Instant::now();
    // Writes resume on the new leader.
    let resume_deadline = promoted_at + Duration::from_secs(10);
    let after_promotion = ok.load(Ordering::Relaxed);
    while ok.load(Ordering::Relaxed) == after_promotion && Instant::now() < resume_deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let resumed_after = promoted_at.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for w in writers {
        errors.extend(w.await.unwrap());
    }
    let failed = failed.load(Ordering::Relaxed);
    println!(
        "writes before crash {before}, during the 1 s gap {}, failed {failed} ({errors:?}); writes resumed {resumed_after:?} after promotion ({:?} after the crash)",
        during_gap - before,
        crashed_at.elapsed()
    );
    assert!(
        ok.load(Ordering::Relaxed) > after_promotion,
        "writes resumed after promotion"
    );
    assert!(
        resumed_after < Duration::from_secs(2),
        "writes resumed within {resumed_after:?}"
    );
    // Only writes in flight on the crashed leader may fail: one per writer.
    assert!(
        failed - failed_at_crash <= 4,
        "{failed} writes failed: {errors:?}"
    );

    // The new leader (not in recovery) has the writes acknowledged well
    // before the crash (replication is asynchronous: the last few before
    // a crash may be lost, as PostgreSQL itself would lose them) and every
    // write since.
    let new_leader = connect(&url).await.unwrap();
    let row = new_leader
        .query_one(
            "/* pgsplit:leader */ SELECT count(*), pg_is_in_recovery(), inet_server_port() FROM fo",
            &[],
        )
        .await
        .unwrap();
    assert!(!row.get::<_, bool>(1));
    assert_eq!(row.get::<_, i32>(2) as u16, env.cluster.replicas[0].port);
    let since_promotion = ok.load(Ordering::Relaxed) - during_gap;
    assert!(row.get::<_, i64>(0) as usize >= since_promotion + before.saturating_sub(50));
}

/// A backend waiting for synchronous replication of its commit is
/// terminated (what a fast shutdown does to the old leader in a
/// switchover): PostgreSQL warns that the transaction committed locally and
/// closes without a ReadyForQuery. pgsplit reports the commit, as
/// PostgreSQL does when that wait is cancelled, and the client goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_orphaned_by_a_terminated_sync_wait_is_reported() {
    support::init_logging();
    let env = TestEnv::start(0, "pool_size = 2").await;
    let c = env.connect().await;
    c.batch_execute("CREATE TABLE orphan(id int PRIMARY KEY)")
        .await
        .unwrap();
    // A synchronous standby that never comes: every commit waits.
    env.leader_sql("ALTER SYSTEM SET synchronous_standby_names = 'nobody'");
    env.leader_sql("SELECT pg_reload_conf()");
    let insert = {
        let c = env.connect().await;
        tokio::spawn(async move {
            let row = c
                .query_one("INSERT INTO orphan VALUES ($1) RETURNING id", &[&7i32])
                .await;
            (row.map(|r| r.get::<_, i32>(0)), c)
        })
    };
    let pid = env.leader_backend_where("wait_event = 'SyncRep'").await;
    env.leader_sql(&format!("SELECT pg_terminate_backend({pid})"));
    let (row, client) = tokio::time::timeout(Duration::from_secs(10), insert)
        .await
        .expect("the insert got an answer")
        .unwrap();
    env.leader_sql("ALTER SYSTEM RESET synchronous_standby_names");
    env.leader_sql("SELECT pg_reload_conf()");
    assert_eq!(
        row.map_err(|e| e.to_string()),
        Ok(7),
        "the commit is reported"
    );
    let count: i64 = client
        .query_one("SELECT count(*) FROM orphan", &[])
        .await
        .expect("the client goes on with another server")
        .get(0);
    assert_eq!(count, 1, "the row committed");
}

/// A fast shutdown (what Patroni does to the old leader in a switchover)
/// ends a backend whose statement waits with BindComplete and then a FATAL
/// 57P01, in one packet. Nothing ran and the client heard nothing: pgsplit
/// finds the server refusing new connections as it shuts down, and sends
/// the request again once the server is back. The client sees its insert
/// succeed, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_cut_off_by_a_fast_shutdown_is_sent_again() {
    support::init_logging();
    let env = TestEnv::start(0, "pool_size = 2\n[routing]\nleader_wait_timeout = \"30s\"").await;
    let c = env.connect().await;
    c.batch_execute("CREATE TABLE waits(id int PRIMARY KEY)")
        .await
        .unwrap();
    // A direct session inserts the same key without committing: the
    // insert through pgsplit waits for it while it executes (not while it
    // is parsed or bound). The shutdown ends the holder too.
    let holder = env.connect_leader().await;
    holder
        .batch_execute("BEGIN; INSERT INTO waits VALUES (7)")
        .await
        .unwrap();
    let insert = {
        let c = env.connect().await;
        tokio::spawn(async move {
            let row = c
                .query_one("INSERT INTO waits VALUES ($1) RETURNING id", &[&7i32])
                .await;
            row.map(|r| r.get::<_, i32>(0))
                .map_err(|e| format!("{:?} {e}", sqlstate(&e)))
        })
    };
    env.leader_backend_where(
        "wait_event_type = 'Lock' AND starts_with(query, 'INSERT INTO waits VALUES ($1)')",
    )
    .await;
    tokio::task::block_in_place(|| env.cluster.restart_fast(&env.cluster.leader)).unwrap();
    let row = tokio::time::timeout(Duration::from_secs(30), insert)
        .await
        .expect("the insert got an answer")
        .unwrap();
    assert_eq!(row, Ok(7), "the insert ran once the server was back");
    let c = env.connect().await;
    let count: i64 = c
        .query_one("SELECT count(*) FROM waits", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 1, "the row was inserted once");
}
