//! The admin HTTP server: /healthz, /readyz, /topology and /metrics,
//! scraped while clients work through pgsplit.

mod support;

use serde_json::Value;
use std::time::Duration;
use support::fake_apiserver::FakeApiserver;
use support::{http_get, metric_sum, parse_metrics, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_topology() {
    let env = TestEnv::start(2, "").await;
    let admin = env.proxy.as_ref().unwrap().admin_addr();
    let c = env.connect().await;
    env.wait_for_replicas(&c).await;
    assert_eq!(http_get(admin, "/healthz").await, (200, "ok\n".into()));
    assert_eq!(http_get(admin, "/readyz").await, (200, "ready\n".into()));
    assert_eq!(http_get(admin, "/nothing").await.0, 404);
    // The replicas' first health and WAL probes may still be on their way
    // on a busy machine: wait (up to 10 s) until both show in /topology.
    let replicas_known = |doc: &Value| {
        let members = doc["clusters"][0]["members"].as_array().cloned();
        members
            .unwrap_or_default()
            .iter()
            .filter(|m| m["role"] == "replica")
            .filter(|m| m["healthy"] == true && m["lag_bytes"].is_u64())
            .count()
            == 2
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let doc = loop {
        let (status, body) = http_get(admin, "/topology").await;
        assert_eq!(status, 200);
        let doc: Value = serde_json::from_str(&body).expect("JSON");
        if replicas_known(&doc) || std::time::Instant::now() > deadline {
            break doc;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let cluster = &doc["clusters"][0];
    assert_eq!(cluster["name"], "main");
    assert_eq!(cluster["source"], "static");
    assert_eq!(cluster["leader"], env.cluster.leader.addr().as_str());
    let members = cluster["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    let replicas: Vec<&Value> = members.iter().filter(|m| m["role"] == "replica").collect();
    assert_eq!(replicas.len(), 2);
    assert!(replicas
        .iter()
        .all(|m| m["healthy"] == true && m["lag_bytes"].is_u64()));
    let leader = members.iter().find(|m| m["role"] == "leader").unwrap();
    let pools = leader["pools"].as_array().unwrap();
    assert!(pools
        .iter()
        .any(|p| p["database"] == "app" && p["user"] == "app"));
    assert_eq!(doc["ready"], true);
    assert!(doc["clients"]["idle"].as_u64().unwrap() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_a_leader() {
    let fake = FakeApiserver::start().await;
    let kubeconfig = fake.kubeconfig();
    let env = TestEnv::start_with(0, |cluster| {
        let text = support::config_text(cluster, "");
        let (head, _) = text.split_once("[clusters.discovery]").unwrap();
        format!(
            "{head}[clusters.discovery]\nkind = \"kubernetes\"\nselector = \"app=pg\"\nkubeconfig = \"{}\"\n",
            kubeconfig.display()
        )
    })
    .await;
    let admin = env.proxy.as_ref().unwrap().admin_addr();
    let (status, body) = http_get(admin, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("no leader known for main"), "{body}");
    assert_eq!(
        http_get(admin, "/healthz").await.0,
        200,
        "alive all the same"
    );
    fake.apply(
        "pods",
        "default",
        serde_json::json!({
            "metadata": {"name": "pg-0", "labels": {"app": "pg", "role": "master"}},
            "spec": {"containers": [{"name": "pg", "ports": [{"name": "postgresql", "containerPort": env.cluster.leader.port}]}]},
            "status": {"podIP": "127.0.0.1"}
        }),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while http_get(admin, "/readyz").await.0 != 200 {
        assert!(std::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_the_work() {
    let env = TestEnv::start(2, "pool_size = 4").await;
    let admin = env.proxy.as_ref().unwrap().admin_addr();
    let c = env.connect().await;
    env.wait_for_replicas(&c).await;
    c.batch_execute("CREATE TABLE m(id int)").await.unwrap();
    let scrape = || async {
        let (status, body) = http_get(admin, "/metrics").await;
        assert_eq!(status, 200);
        parse_metrics(&body)
    };
    let before = scrape().await;
    let writes0 = metric_sum(
        &before,
        "pgsplit_transactions_total",
        &[("route", "leader"), ("database", "app"), ("user", "app")],
    );

    // Load while scraping: readers and writers on their own connections.
    let url = env.url();
    let mut load = Vec::new();
    for i in 0..4 {
        let url = url.clone();
        load.push(tokio::spawn(async move {
            let c = support::connect(&url).await.unwrap();
            for _ in 0..50 {
                if i % 2 == 0 {
                    c.query_one("SELECT 1", &[]).await.unwrap();
                } else {
                    c.execute("INSERT INTO m VALUES (1)", &[]).await.unwrap();
                }
            }
        }));
    }
    // Idle clients show up as idle connections.
    let mut idle = Vec::new();
    for _ in 0..5 {
        idle.push(env.connect().await);
    }
    let during = scrape().await;
    for task in load {
        task.await.unwrap();
    }
    let after = scrape().await;

    let tx_after = |route| {
        metric_sum(
            &after,
            "pgsplit_transactions_total",
            &[("route", route), ("database", "app"), ("user", "app")],
        )
    };
    // Reads go to a replica, or to the leader as a fallback when a busy
    // machine made a replica miss a health probe: counted either way.
    let reads = |samples: &[(String, f64)], name: &str, extra: &[(&str, &str)]| {
        ["replica", "fallback"]
            .iter()
            .map(|route| {
                let mut labels = vec![("route", *route)];
                labels.extend_from_slice(extra);
                metric_sum(samples, name, &labels)
            })
            .sum::<f64>()
    };
    let read_tx = |samples: &[(String, f64)]| {
        reads(
            samples,
            "pgsplit_transactions_total",
            &[("database", "app"), ("user", "app")],
        )
    };
    assert!(read_tx(&after) - read_tx(&before) >= 100.0, "reads counted");
    assert!(tx_after("leader") - writes0 >= 100.0, "writes counted");
    assert!(reads(&after, "pgsplit_queries_total", &[]) >= 100.0);
    assert!(
        metric_sum(
            &after,
            "pgsplit_transaction_duration_seconds_count",
            &[("route", "leader")]
        ) >= 100.0
    );
    assert!(
        reads(
            &after,
            "pgsplit_query_duration_seconds_bucket",
            &[("le", "+Inf")]
        ) >= 100.0
    );
    assert!(
        metric_sum(
            &after,
            "pgsplit_checkout_wait_seconds_count",
            &[("role", "replica")]
        ) >= 1.0
    );
    assert!(
        metric_sum(&during, "pgsplit_transactions_total", &[])
            <= metric_sum(&after, "pgsplit_transactions_total", &[]),
        "counters only grow"
    );
    // The load's clients are on their way out (their last Close and Sync
    // may still hold a server a moment): the six idle ones show as idle
    // once that settles.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let idle_now = metric_sum(
            &scrape().await,
            "pgsplit_client_connections",
            &[("state", "idle")],
        );
        if idle_now >= 6.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{idle_now} idle client connections, expected at least 6"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        metric_sum(&after, "pgsplit_members", &[("role", "replica")]),
        2.0
    );
    assert_eq!(
        metric_sum(&after, "pgsplit_members", &[("role", "leader")]),
        1.0
    );
    // Every member is healthy again soon after the load, whatever a busy
    // machine did to a probe during it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let healthy = metric_sum(&scrape().await, "pgsplit_member_healthy", &[]);
        if healthy == 3.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{healthy} members healthy, not 3"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(metric_sum(&after, "pgsplit_server_connections", &[("role", "replica")]) >= 1.0);
    let leader = env.cluster.leader.addr();
    assert!(
        metric_sum(
            &after,
            "pgsplit_server_connections",
            &[("member", leader.as_str()), ("state", "idle")]
        ) >= 1.0
    );
    assert_eq!(metric_sum(&after, "pgsplit_pool_size", &[]), 4.0);
    assert_eq!(metric_sum(&after, "pgsplit_build_info", &[]), 1.0);
    assert!(after
        .iter()
        .any(|(n, _)| n.starts_with("pgsplit_replica_lag_bytes{")));
    drop(idle);

    // A client that leaves is counted by reason.
    drop(env.connect().await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let last = scrape().await;
    assert!(
        metric_sum(
            &last,
            "pgsplit_client_disconnects_total",
            &[("reason", "client_terminate")]
        ) >= 1.0
    );
}
