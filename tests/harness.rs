//! The test harness itself: a leader and two streaming replicas that really
//! stream, and nothing left behind afterwards, even after a panic.

mod support;

use pgsplit::demo::cluster::LocalCluster;

fn postmaster_running(dir: &std::path::Path) -> bool {
    dir.join("leader").join("postmaster.pid").exists()
}

#[test]
fn leader_and_two_streaming_replicas() {
    let cluster = LocalCluster::start(2).expect("cluster");
    let leader = cluster
        .psql(
            cluster.leader.port,
            "postgres",
            "SELECT pg_is_in_recovery()",
        )
        .unwrap();
    assert_eq!(leader.trim(), "f");
    for r in &cluster.replicas {
        let rec = cluster
            .psql(r.port, "postgres", "SELECT pg_is_in_recovery()")
            .unwrap();
        assert_eq!(rec.trim(), "t", "replica {} must be in recovery", r.port);
    }
    let streaming = cluster
        .psql(
            cluster.leader.port,
            "postgres",
            "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
        )
        .unwrap();
    assert_eq!(streaming.trim(), "2");
    // A write on the leader reaches a replica.
    cluster
        .psql(
            cluster.leader.port,
            "app",
            "CREATE TABLE harness_probe(x int); INSERT INTO harness_probe VALUES (42)",
        )
        .unwrap();
    let port = cluster.replicas[0].port;
    let mut seen = String::new();
    for _ in 0..100 {
        if let Ok(out) = cluster.psql(port, "app", "SELECT x FROM harness_probe") {
            seen = out.trim().to_string();
            if seen == "42" {
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(seen, "42");
    let dir = cluster.dir().to_path_buf();
    drop(cluster);
    assert!(!dir.exists(), "cluster dir must be removed on drop");
}

#[test]
fn torn_down_on_panic() {
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let cluster = LocalCluster::start(0).expect("cluster");
        tx.send((cluster.dir().to_path_buf(), cluster.leader.port))
            .unwrap();
        assert!(postmaster_running(cluster.dir()));
        panic!("test body fails");
    })
    .join();
    assert!(result.is_err());
    let (dir, port) = rx.recv().unwrap();
    assert!(!dir.exists(), "cluster dir must be removed after a panic");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "leader must be stopped after a panic"
    );
}
