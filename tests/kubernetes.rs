//! The `kubernetes` source against the fake apiserver in
//! `support::fake_apiserver` (a fake: no real apiserver can run here), in
//! front of a real leader and two streaming replicas. Pods in the fake
//! point at the real servers through a container port named `postgresql`.

mod support;

use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::fake_apiserver::FakeApiserver;
use support::{connect, sqlstate, TestEnv};
use tokio_postgres::Client;

const NS: &str = "default";
const LEADER_POD: &str = "demo-0";
const REPLICA_PODS: [&str; 2] = ["demo-1", "demo-2"];

fn pod(name: &str, port: u16, role: &str) -> Value {
    json!({
        "metadata": {"name": name, "labels": {"cluster-name": "demo", "role": role},
                     "managedFields": [{"manager": "patroni", "operation": "Update"}]},
        "spec": {"containers": [{"name": "postgres", "ports": [
            {"name": "patroni", "containerPort": 8008},
            {"name": "postgresql", "containerPort": port}]}]},
        "status": {"podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}
    })
}

fn relabel(fake: &FakeApiserver, pod: &str, role: &str) {
    fake.patch(
        "pods",
        NS,
        pod,
        json!({"metadata": {"labels": {"role": role}}}),
    );
}

/// A cluster whose pods the fake lists, and pgsplit following them.
async fn start(fake: &FakeApiserver, extra_discovery: &str) -> TestEnv {
    let kubeconfig = fake.kubeconfig();
    let env = TestEnv::start_with(2, |cluster| {
        fake.apply("pods", NS, pod(LEADER_POD, cluster.leader.port, "master"));
        for (name, node) in REPLICA_PODS.iter().zip(&cluster.replicas) {
            fake.apply("pods", NS, pod(name, node.port, "replica"));
        }
        // A pod of another cluster, which the selector leaves out.
        fake.apply("pods", NS, pod("other-0", 1, "master"));
        fake.patch("pods", NS, "other-0", json!({"metadata": {"labels": {"cluster-name": "other"}}}));
        let text = support::config_text(cluster, "");
        let (head, _) = text.split_once("[clusters.discovery]").expect("discovery table");
        format!(
            "{head}[clusters.discovery]\nkind = \"kubernetes\"\nselector = \"cluster-name=demo\"\npreset = \"patroni\"\n\
             kubeconfig = \"{}\"\nwatch_timeout = \"2s\"\n{extra_discovery}\n\
             [routing]\nleader_wait_timeout = \"1s\"\n",
            kubeconfig.display()
        )
    })
    .await;
    let client = env.connect().await;
    env.wait_for_replicas(&client).await;
    env
}

/// The port of the server a leader-bound statement reaches.
async fn leader_port(client: &Client) -> Result<u16, String> {
    client
        .query_one("/* pgsplit:leader */ SELECT inet_server_port()", &[])
        .await
        .map(|row| row.get::<_, i32>(0) as u16)
        .map_err(|e| sqlstate(&e).unwrap_or_else(|| e.to_string()))
}

/// Ports that 100 autocommit reads reach.
async fn read_ports(client: &Client) -> HashSet<u16> {
    let mut ports = HashSet::new();
    for _ in 0..100 {
        let row = client
            .query_one("SELECT inet_server_port()", &[])
            .await
            .expect("read");
        ports.insert(row.get::<_, i32>(0) as u16);
    }
    ports
}

/// Polls `check` until it holds, for up to `limit`; returns how long it took.
async fn until<F, Fut>(limit: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_labels_move_writes_within_a_second() {
    support::init_logging();
    let fake = FakeApiserver::start().await;
    let env = start(&fake, "").await;
    let client = connect(&env.url()).await.expect("connect");
    let old = env.cluster.leader.port;
    let new = env.cluster.replicas[0].port;
    until(
        Duration::from_secs(10),
        "writes reach the labelled leader",
        || async { leader_port(&client).await == Ok(old) },
    )
    .await;
    let both: HashSet<u16> = env.cluster.replicas.iter().map(|r| r.port).collect();
    assert_eq!(
        read_ports(&client).await,
        both,
        "reads spread over both replicas"
    );

    env.cluster
        .promote(&env.cluster.replicas[0])
        .expect("promote");
    relabel(&fake, LEADER_POD, "replica");
    relabel(&fake, REPLICA_PODS[0], "master");
    let took = until(
        Duration::from_secs(1),
        "writes follow the labels",
        || async { leader_port(&client).await == Ok(new) },
    )
    .await;
    println!("writes reached the newly labelled leader {took:?} after the label change");
    // The old leader, labelled replica but not in recovery (both are
    // writable here), is suspect and takes no reads: only the other replica.
    let reads = read_ports(&client).await;
    assert_eq!(reads, HashSet::from([env.cluster.replicas[1].port]));
    assert!(!reads.contains(&old));

    let admin = env.proxy.as_ref().unwrap().admin_addr();
    let metrics = support::parse_metrics(&support::http_get(admin, "/metrics").await.1);
    assert_eq!(
        support::metric_sum(
            &metrics,
            "pgsplit_leader_changes_total",
            &[("cluster", "main")]
        ),
        1.0
    );

    // The watches were renewed (timeoutSeconds = 2) and bookmarks sent.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(leader_port(&client).await, Ok(new));
    let stats = fake.stats();
    assert!(
        stats.watches.load(Ordering::Relaxed) >= 2,
        "watches renewed"
    );
    assert!(
        stats.bookmarks.load(Ordering::Relaxed) >= 1,
        "bookmarks asked for and sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_leader_claims_are_settled_by_the_leader_object() {
    support::init_logging();
    let fake = FakeApiserver::start().await;
    let env = start(&fake, "leader_configmap = \"demo-leader\"").await;
    let client = connect(&env.url()).await.expect("connect");
    let old = env.cluster.leader.port;
    let new = env.cluster.replicas[0].port;
    env.cluster
        .promote(&env.cluster.replicas[0])
        .expect("promote");
    relabel(&fake, REPLICA_PODS[0], "master");
    // Two claims and no lock: no leader, so writes wait and then fail.
    until(
        Duration::from_secs(5),
        "no leader while two pods claim it",
        || async { leader_port(&client).await == Err("57P03".into()) },
    )
    .await;
    // Patroni's leader ConfigMap names the lock holder.
    fake.apply(
        "configmaps",
        NS,
        json!({"metadata": {"name": "demo-leader", "annotations": {"leader": REPLICA_PODS[0]}}}),
    );
    until(Duration::from_secs(1), "the lock holder leads", || async {
        leader_port(&client).await == Ok(new)
    })
    .await;
    fake.patch(
        "configmaps",
        NS,
        "demo-leader",
        json!({"metadata": {"annotations": {"leader": LEADER_POD}}}),
    );
    until(Duration::from_secs(1), "the lock moved back", || async {
        leader_port(&client).await == Ok(old)
    })
    .await;
    let reads = read_ports(&client).await;
    assert!(
        !reads.contains(&new),
        "the losing claimant serves no reads: {reads:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_unready_and_unselected_pods_leave_the_read_set() {
    support::init_logging();
    let fake = FakeApiserver::start().await;
    let env = start(&fake, "").await;
    let client = connect(&env.url()).await.expect("connect");
    let (r0, r1) = (env.cluster.replicas[0].port, env.cluster.replicas[1].port);
    let both = HashSet::from([r0, r1]);
    until(
        Duration::from_secs(10),
        "reads reach both replicas",
        || async { read_ports(&client).await == both },
    )
    .await;
    let only_r0 = HashSet::from([r0]);

    fake.patch(
        "pods",
        NS,
        REPLICA_PODS[1],
        json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}),
    );
    until(
        Duration::from_secs(1),
        "a terminating pod leaves",
        || async { read_ports(&client).await == only_r0 },
    )
    .await;
    fake.apply("pods", NS, pod(REPLICA_PODS[1], r1, "replica"));
    until(
        Duration::from_secs(2),
        "the recreated pod returns",
        || async { read_ports(&client).await == both },
    )
    .await;

    fake.patch(
        "pods",
        NS,
        REPLICA_PODS[1],
        json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
    );
    until(Duration::from_secs(1), "an unready pod leaves", || async {
        read_ports(&client).await == only_r0
    })
    .await;
    fake.apply("pods", NS, pod(REPLICA_PODS[1], r1, "replica"));
    until(Duration::from_secs(2), "ready again", || async {
        read_ports(&client).await == both
    })
    .await;

    // The selector stops matching (DELETED in the watch), then matches again (ADDED).
    fake.patch(
        "pods",
        NS,
        REPLICA_PODS[1],
        json!({"metadata": {"labels": {"cluster-name": "elsewhere"}}}),
    );
    until(
        Duration::from_secs(1),
        "an unselected pod leaves",
        || async { read_ports(&client).await == only_r0 },
    )
    .await;
    fake.patch(
        "pods",
        NS,
        REPLICA_PODS[1],
        json!({"metadata": {"labels": {"cluster-name": "demo"}}}),
    );
    until(Duration::from_secs(2), "selected again", || async {
        read_ports(&client).await == both
    })
    .await;
    fake.delete("pods", NS, REPLICA_PODS[1]);
    until(Duration::from_secs(1), "a deleted pod leaves", || async {
        read_ports(&client).await == only_r0
    })
    .await;
    assert_eq!(leader_port(&client).await, Ok(env.cluster.leader.port));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apiserver_restarts_410_and_errors_lose_nothing() {
    support::init_logging();
    let mut fake = FakeApiserver::start().await;
    let env = start(&fake, "").await;
    let client = connect(&env.url()).await.expect("connect");
    let (r0, r1) = (env.cluster.replicas[0].port, env.cluster.replicas[1].port);
    let both = HashSet::from([r0, r1]);
    until(
        Duration::from_secs(10),
        "reads reach both replicas",
        || async { read_ports(&client).await == both },
    )
    .await;

    // A change made while the apiserver is down is replayed from history.
    fake.stop().await;
    relabel(&fake, REPLICA_PODS[1], "uninitialized");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        read_ports(&client).await,
        both,
        "nothing seen while the apiserver is down"
    );
    fake.start_again().await;
    until(
        Duration::from_secs(15),
        "the change after a restart",
        || async { read_ports(&client).await == HashSet::from([r0]) },
    )
    .await;
    assert_eq!(fake.stats().gone.load(Ordering::Relaxed), 0);

    // History compacted while down: the watch gets 410 Gone and relists.
    fake.stop().await;
    relabel(&fake, REPLICA_PODS[1], "replica");
    fake.compact();
    fake.start_again().await;
    until(
        Duration::from_secs(15),
        "the change after 410 and a relist",
        || async { read_ports(&client).await == both },
    )
    .await;
    assert!(
        fake.stats().gone.load(Ordering::Relaxed) >= 1,
        "a 410 was answered"
    );

    // Streams dropped and the next requests answered with 500.
    let lists = fake.stats().lists.load(Ordering::Relaxed);
    fake.fail_next(3);
    fake.drop_watches();
    relabel(&fake, REPLICA_PODS[0], "uninitialized");
    until(
        Duration::from_secs(15),
        "the change after dropped streams and 500s",
        || async { read_ports(&client).await == HashSet::from([r1]) },
    )
    .await;
    // At least one request met a 500 (a watch renewed just as the streams
    // were dropped can carry the change before the others are used up).
    assert!(fake.stats().failed.load(Ordering::Relaxed) >= 1);
    assert!(fake.stats().lists.load(Ordering::Relaxed) >= lists);
    assert_eq!(leader_port(&client).await, Ok(env.cluster.leader.port));
}
