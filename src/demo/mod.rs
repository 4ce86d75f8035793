//! `pgsplit demo`: a local leader and two streaming replicas with pgsplit in
//! front, a DATABASE_URL to try, and a live view of the pools until Ctrl-C
//! or SIGTERM, after which everything is stopped and removed.

pub mod cluster;

use std::time::Duration;

use crate::config::Config;
use crate::proxy::Proxy;
use cluster::{free_port, LocalCluster, APP_DATABASE, APP_PASSWORD, APP_USER};

/// A config for pgsplit in front of `cluster`: `listen`, extra `[proxy]`
/// lines, and `users` as (name, password). The demo and the test harness
/// both use it.
pub fn cluster_config(
    cluster: &LocalCluster,
    listen: &str,
    proxy_extra: &str,
    users: &[(&str, &str)],
) -> String {
    let replicas: Vec<String> = cluster
        .replicas
        .iter()
        .map(|r| format!("\"{}\"", r.addr()))
        .collect();
    let users: String = users
        .iter()
        .map(|(name, password)| {
            format!("[[users]]\nname = \"{name}\"\npassword = \"{password}\"\n")
        })
        .collect();
    format!(
        "[proxy]\nlisten = \"{listen}\"\nadmin_listen = \"127.0.0.1:0\"\n{proxy_extra}\n\n{users}\n\
         [[clusters]]\nname = \"main\"\n[clusters.discovery]\nkind = \"static\"\nleader = \"{}\"\nreplicas = [{}]\n",
        cluster.leader.addr(),
        replicas.join(", ")
    )
}

/// Runs the demo until a signal arrives.
pub async fn run() -> Result<(), Box<dyn std::error::Error>> {
    println!("starting a local PostgreSQL leader and 2 streaming replicas ...");
    let cluster = tokio::task::spawn_blocking(|| LocalCluster::start(2)).await??;
    let port = if std::net::TcpListener::bind("127.0.0.1:6432").is_ok() {
        6432
    } else {
        free_port()?
    };
    let listen = format!("127.0.0.1:{port}");
    let text = cluster_config(
        &cluster,
        &listen,
        "pool_mode = \"transaction\"\npool_size = 20",
        &[(APP_USER, APP_PASSWORD)],
    );
    let config = Config::parse(&text, "(demo config)", std::iter::empty())?;
    let proxy = Proxy::start(config).await?;
    println!("\nleader   {}", cluster.leader.addr());
    for r in &cluster.replicas {
        println!("replica  {}", r.addr());
    }
    println!("\npgsplit listens on {listen} (transaction pooling)\n");
    println!("DATABASE_URL=postgres://{APP_USER}:{APP_PASSWORD}@{listen}/{APP_DATABASE}");
    println!("try: psql \"postgres://{APP_USER}:{APP_PASSWORD}@{listen}/{APP_DATABASE}\" -c 'select inet_server_port()'\n");
    println!("reads go to the replicas, writes and transactions to the leader;");
    println!("try: psql ... -c 'select inet_server_port()'  and  -c 'begin; select inet_server_port(); commit'");
    println!("press Ctrl-C to stop and remove the cluster\n");

    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = tick.tick() => print_status(&proxy, &cluster),
        }
    }
    println!("\nstopping ...");
    proxy.stop().await;
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    println!("cluster stopped and removed");
    Ok(())
}

fn print_status(proxy: &Proxy, cluster: &LocalCluster) {
    let shared = proxy.shared();
    let clients = shared.clients.load(std::sync::atomic::Ordering::Relaxed);
    let mut line = format!("clients {clients:>4} |");
    let leader = cluster.leader.addr();
    for pool in shared.pools.status() {
        let role = if *pool.member == leader {
            "leader"
        } else {
            "replica"
        };
        line.push_str(&format!(
            " {role} {} {}@{}: {} busy / {} open |",
            pool.member,
            pool.user,
            pool.database,
            pool.active(),
            pool.open
        ));
    }
    println!("{line}");
}
