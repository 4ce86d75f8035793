//! `pgsplit demo`: a local leader and two streaming replicas with pgsplit in
//! front, a DATABASE_URL to try, and a live view of the pools until Ctrl-C
//! or SIGTERM, after which everything is stopped and removed.

pub mod cluster;

use std::time::Duration;

use crate::config::Config;
use crate::proxy::Proxy;
use cluster::{free_port, LocalCluster, APP_DATABASE, APP_PASSWORD, APP_USER};

/// The config the demo runs with, for a cluster and a listen address.
pub fn demo_config(cluster: &LocalCluster, listen: &str) -> String {
    let replicas: Vec<String> = cluster
        .replicas
        .iter()
        .map(|r| format!("\"{}\"", r.addr()))
        .collect();
    format!(
        "[proxy]\nlisten = \"{listen}\"\nadmin_listen = \"127.0.0.1:0\"\npool_mode = \"transaction\"\npool_size = 20\n\n\
         [[users]]\nname = \"{APP_USER}\"\npassword = \"{APP_PASSWORD}\"\n\n\
         [[clusters]]\nname = \"demo\"\n\n[clusters.discovery]\nkind = \"static\"\nleader = \"{}\"\nreplicas = [{}]\n",
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
    let text = demo_config(&cluster, &listen);
    let config = Config::parse(&text, "(demo config)", std::iter::empty())?;
    let proxy = Proxy::start(config).await?;
    println!("\nleader   {}", cluster.leader.addr());
    for r in &cluster.replicas {
        println!("replica  {}", r.addr());
    }
    println!("\npgsplit listens on {listen} (transaction pooling)\n");
    println!("DATABASE_URL=postgres://{APP_USER}:{APP_PASSWORD}@{listen}/{APP_DATABASE}");
    println!("try: psql \"postgres://{APP_USER}:{APP_PASSWORD}@{listen}/{APP_DATABASE}\" -c 'select inet_server_port()'\n");
    println!("every statement goes to the leader for now (read/write splitting is not built yet)");
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
    for (addr, database, user, idle, total) in shared.pools.status() {
        let role = if addr == leader { "leader" } else { "replica" };
        line.push_str(&format!(
            " {role} {addr} {user}@{database}: {} busy / {total} open |",
            total - idle
        ));
    }
    println!("{line}");
}
