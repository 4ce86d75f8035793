//! Live reload: SIGHUP (the binary), `RELOAD` in the console, and a change
//! of the config file (a Kubernetes-style symlink swap). Users, pool
//! sizes, routing and discovery apply without dropping clients; an
//! invalid file is refused and the running config stays.

mod support;

use pgsplit::demo::cluster::LocalCluster;
use std::time::{Duration, Instant};
use support::{connect, http_get, metric_sum, parse_metrics, sqlstate, TestEnv};

/// A config for `cluster` with `users`, `[proxy]` lines and `[routing]`
/// lines; `replicas` of the cluster's replicas listed.
fn config(
    cluster: &LocalCluster,
    users: &[(&str, &str)],
    proxy: &str,
    routing: &str,
    replicas: usize,
) -> String {
    let text = pgsplit::demo::cluster_config(cluster, "127.0.0.1:0", proxy, users);
    let listed: Vec<String> = cluster.replicas[..replicas]
        .iter()
        .map(|r| format!("\"{}\"", r.addr()))
        .collect();
    let (head, _) = text.split_once("replicas = [").unwrap();
    format!(
        "{head}replicas = [{}]\n[routing]\n{routing}\n",
        listed.join(", ")
    )
}

async fn scrape(env: &TestEnv) -> Vec<(String, f64)> {
    let admin = env.proxy.as_ref().unwrap().admin_addr();
    parse_metrics(&http_get(admin, "/metrics").await.1)
}

const APP: (&str, &str) = ("app", "app-secret");
const MD5: (&str, &str) = ("pgsplit_md5", "md5-secret");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_users_pools_routing_and_discovery_without_dropping_clients() {
    support::init_logging();
    let (env, path) =
        TestEnv::start_from_file(2, |cluster| config(cluster, &[APP], "pool_size = 4", "", 2))
            .await;
    let c = env.connect().await;
    env.wait_for_replicas(&c).await;
    let md5_url = env.url_for(MD5.0, MD5.1);
    let Err(e) = connect(&md5_url).await else {
        panic!("not a user yet")
    };
    assert_eq!(sqlstate(&e).as_deref(), Some("28P01"));

    std::fs::write(
        &path,
        config(
            &env.cluster,
            &[APP, MD5],
            "pool_size = 2",
            "read_write_split = false",
            1,
        ),
    )
    .unwrap();
    env.proxy.as_ref().unwrap().reload().await.expect("reload");

    // The client connected before the reload goes on; reads now go to the leader.
    let port: i32 = c
        .query_one("SELECT inet_server_port()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(port as u16, env.cluster.leader.port);
    // The new user logs in.
    let m = connect(&md5_url).await.expect("new user logs in");
    m.query_one("SELECT 1", &[]).await.unwrap();
    // The new pool size holds.
    let metrics = scrape(&env).await;
    assert_eq!(metric_sum(&metrics, "pgsplit_pool_size", &[]), 2.0);
    let mut sleepers = Vec::new();
    for _ in 0..4 {
        let url = env.url();
        sleepers.push(tokio::spawn(async move {
            let c = connect(&url).await.unwrap();
            c.query_one("SELECT pg_sleep(0.6)", &[]).await.unwrap();
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        env.app_backends() <= 2,
        "pool_size 2: {} backends",
        env.app_backends()
    );
    for s in sleepers {
        s.await.unwrap();
    }
    // Discovery: one replica listed now.
    let admin = env.proxy.as_ref().unwrap().admin_addr();
    let doc: serde_json::Value =
        serde_json::from_str(&http_get(admin, "/topology").await.1).unwrap();
    assert_eq!(doc["clusters"][0]["members"].as_array().unwrap().len(), 2);
    // The explicit reload, and maybe the file watcher's for the same change.
    assert!(
        metric_sum(
            &scrape(&env).await,
            "pgsplit_config_reloads_total",
            &[("result", "ok")]
        ) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_config_is_refused_and_the_running_one_stays() {
    let (env, path) = TestEnv::start_from_file(0, |cluster| {
        config(
            cluster,
            &[APP],
            "pool_size = 4\nadmin_users = [\"app\"]",
            "",
            0,
        )
    })
    .await;
    let c = env.connect().await;
    std::fs::write(&path, "[proxy]\npool_size = \"many\"\n").unwrap();
    let e = env.proxy.as_ref().unwrap().reload().await.unwrap_err();
    assert!(e.to_string().contains("pool_size"), "{e}");
    // The console's RELOAD says the same.
    let out = env.client_command(
        "psql",
        &[
            "-X",
            "-h",
            "127.0.0.1",
            "-p",
            &env.addr.port().to_string(),
            "-U",
            "app",
            "-d",
            "pgsplit",
            "-c",
            "RELOAD",
        ],
    );
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && text.contains("config not reloaded"),
        "{text}"
    );
    c.query_one("SELECT 1", &[]).await.expect("still serving");
    connect(&env.url()).await.expect("logins as before");
    let metrics = scrape(&env).await;
    assert_eq!(metric_sum(&metrics, "pgsplit_pool_size", &[]), 4.0);
    // Refused twice by hand (and maybe once more by the file watcher).
    assert!(
        metric_sum(
            &metrics,
            "pgsplit_config_reloads_total",
            &[("result", "refused")]
        ) >= 2.0
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "pgsplit_config_reloads_total",
            &[("result", "ok")]
        ),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_config_file_is_picked_up() {
    let (env, path) =
        TestEnv::start_from_file(0, |cluster| config(cluster, &[APP], "pool_size = 4", "", 0))
            .await;
    let c = env.connect().await;
    // As Kubernetes updates a mounted ConfigMap: the new file appears
    // elsewhere and a symlink is swapped in over the old name.
    let dir = path.parent().unwrap();
    std::fs::create_dir_all(dir.join("..v2")).unwrap();
    std::fs::write(
        dir.join("..v2/pgsplit.toml"),
        config(&env.cluster, &[APP], "pool_size = 3", "", 0),
    )
    .unwrap();
    std::os::unix::fs::symlink(dir.join("..v2/pgsplit.toml"), dir.join("..tmp")).unwrap();
    std::fs::rename(dir.join("..tmp"), &path).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric_sum(&scrape(&env).await, "pgsplit_pool_size", &[]) != 3.0 {
        assert!(
            Instant::now() < deadline,
            "the file change was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.query_one("SELECT 1", &[])
        .await
        .expect("the client stayed");
}

/// Watching the config file must not read it over and over: the check
/// for a change reads the file, and inotify reports that read as an
/// event in the watched directory, which used to trigger the next check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_config_file_is_not_read_again_and_again() {
    use notify::Watcher;
    let (env, path) =
        TestEnv::start_from_file(0, |cluster| config(cluster, &[APP], "pool_size = 4", "", 0))
            .await;
    // Past pgsplit's first look at the file and the 200 ms it gathers
    // events for.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (tx, rx) = std::sync::mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
        if let Ok(e) = e {
            let _ = tx.send(e.kind);
        }
    })
    .unwrap();
    watcher
        .watch(&path, notify::RecursiveMode::NonRecursive)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(watcher);
    let reads: Vec<_> = rx
        .try_iter()
        .filter(|k| matches!(k, notify::EventKind::Access(_)))
        .collect();
    assert!(reads.is_empty(), "the idle config file was read: {reads:?}");
    env.connect().await;
}

/// Reading the config file happens off the event loop: while a reload
/// waits on a file that cannot be read yet (here a FIFO nobody writes to,
/// as a stalled network volume would), the admin server, and so every
/// client on the same loop, is still served.
#[test]
fn a_config_read_that_waits_does_not_stall_the_event_loop() {
    let mut pgsplit = support::Binary::start_standalone("stalled-read", "");
    let line = pgsplit
        .line_with("accepting clients")
        .expect("pgsplit started");
    assert!(
        !line.contains('\u{1b}'),
        "a log to a pipe is plain: {line:?}"
    );
    let admin: std::net::SocketAddr = line
        .split("admin=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no admin address in {line:?}"));
    let file = pgsplit.config_file();
    std::fs::remove_file(&file).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&file)
        .status()
        .unwrap();
    assert!(made.success());
    pgsplit.signal("-HUP");
    assert!(pgsplit.wait_for("SIGHUP: reloading"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (status, _) = runtime
        .block_on(async {
            tokio::time::timeout(Duration::from_secs(10), http_get(admin, "/healthz")).await
        })
        .expect("the event loop answered while the reload waited for the file");
    assert_eq!(status, 200);
    // The process is killed with its reload still waiting.
}

/// The binary reloads on SIGHUP.
#[test]
fn sighup_reloads() {
    let mut pgsplit = support::Binary::start_standalone("sighup", "shutdown_delay = \"0s\"");
    assert!(pgsplit.wait_for("accepting clients"));
    pgsplit.signal("-HUP");
    assert!(pgsplit.wait_for("SIGHUP: reloading"));
    assert!(pgsplit.wait_for("config reloaded"));
    pgsplit.signal("-TERM");
    assert!(pgsplit.exit_within(Duration::from_secs(10)).success());
}
