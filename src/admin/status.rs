//! The figures operators read, computed from the state pgsplit keeps
//! anyway (pools, topology snapshots, client count) when asked: readiness,
//! the scrape-time metrics, and the `/topology` document.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use crate::pool::group::PoolStatus;
use crate::proxy::Shared;
use crate::topology::{Member, Role, Topology};

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Leader => "leader",
        Role::Replica => "replica",
    }
}

/// (cluster, role) of the member at `addr`, if the topology has it.
fn place<'t>(topology: &'t Topology, addr: &str) -> Option<(&'t str, &'t Member)> {
    topology.clusters.iter().find_map(|c| {
        c.members
            .iter()
            .find(|m| &*m.addr == addr)
            .map(|m| (c.name.as_str(), m))
    })
}

/// Why pgsplit should get no traffic now, or None when it is ready.
pub fn not_ready(shared: &Shared) -> Option<String> {
    if shared.shutting_down.load(Ordering::Relaxed) {
        return Some("shutting down".into());
    }
    let topology = shared.topology.borrow().clone();
    let leaderless: Vec<&str> = topology
        .clusters
        .iter()
        .filter(|c| c.leader().is_none())
        .map(|c| c.name.as_str())
        .collect();
    if leaderless.is_empty() {
        None
    } else {
        Some(format!("no leader known for {}", leaderless.join(", ")))
    }
}

/// Client connections as (active, waiting, idle): active ones hold a
/// server, waiting ones wait for one.
pub fn client_states(shared: &Shared, pools: &[PoolStatus]) -> (usize, usize, usize) {
    let total = shared.clients.load(Ordering::Relaxed);
    let active: usize = pools.iter().map(PoolStatus::active).sum();
    let waiting: usize = pools.iter().map(|p| p.waiting).sum();
    let active = active.min(total);
    let waiting = waiting.min(total - active);
    (active, waiting, total - active - waiting)
}

/// The Prometheus exposition, with the scrape-time gauges brought up to date.
pub fn metrics_text(shared: &Shared) -> String {
    let m = &shared.metrics;
    let pools = shared.pools.status();
    let topology = shared.topology.borrow().clone();
    let (active, waiting, idle) = client_states(shared, &pools);
    for (state, n) in [("active", active), ("waiting", waiting), ("idle", idle)] {
        m.client_connections
            .with_label_values(&[state])
            .set(n as i64);
    }
    m.server_connections.reset();
    m.pool_waiting_clients.reset();
    // By member: (active, idle, waiting) summed over databases and users.
    let mut by_member: BTreeMap<&str, (usize, usize, usize)> = BTreeMap::new();
    for p in &pools {
        let e = by_member.entry(&p.member).or_default();
        e.0 += p.active();
        e.1 += p.idle;
        e.2 += p.waiting;
    }
    for (addr, (busy, free, waiters)) in by_member {
        let (cluster, role) = place(&topology, addr)
            .map_or(("", "retired"), |(c, member)| (c, role_name(member.role)));
        m.server_connections
            .with_label_values(&[cluster, addr, role, "active"])
            .set(busy as i64);
        m.server_connections
            .with_label_values(&[cluster, addr, role, "idle"])
            .set(free as i64);
        m.pool_waiting_clients
            .with_label_values(&[cluster, addr, role])
            .set(waiters as i64);
    }
    m.members.reset();
    m.member_healthy.reset();
    m.replica_lag_bytes.reset();
    m.replica_lag_seconds.reset();
    for c in &topology.clusters {
        for role in [Role::Leader, Role::Replica] {
            let n = c.members.iter().filter(|x| x.role == role).count();
            m.members
                .with_label_values(&[c.name.as_str(), role_name(role)])
                .set(n as i64);
        }
        for member in &c.members {
            let s = &member.state;
            m.member_healthy
                .with_label_values(&[c.name.as_str(), &*member.addr, role_name(member.role)])
                .set(i64::from(s.is_healthy()));
            if member.role == Role::Replica {
                m.replica_lag_bytes
                    .with_label_values(&[c.name.as_str(), &*member.addr])
                    .set(s.lag_bytes() as i64);
                m.replica_lag_seconds
                    .with_label_values(&[c.name.as_str(), &*member.addr])
                    .set(s.lag_millis() as f64 / 1000.0);
            }
        }
    }
    let config = shared.config();
    m.pool_size.set(i64::from(config.proxy.pool_size));
    m.max_client_connections
        .set(i64::from(config.proxy.max_client_connections));
    m.sync_pins(shared.pins.load(Ordering::Relaxed));
    m.encode()
}

/// The `/topology` document: clusters, members with role, health, lag and
/// load, and each member's pools.
pub fn topology_json(shared: &Shared) -> Value {
    let pools = shared.pools.status();
    let topology = shared.topology.borrow().clone();
    let config = shared.config();
    let clusters: Vec<Value> = topology
        .clusters
        .iter()
        .map(|c| {
            let source = config
                .clusters
                .iter()
                .find(|cc| cc.name == c.name)
                .map_or("", |cc| cc.discovery.kind());
            let members: Vec<Value> = c
                .members
                .iter()
                .map(|member| {
                    let s = &member.state;
                    let member_pools: Vec<Value> = pools
                        .iter()
                        .filter(|p| p.member == member.addr)
                        .map(|p| {
                            json!({"database": &*p.database, "user": &*p.user, "active": p.active(),
                                   "idle": p.idle, "waiting": p.waiting})
                        })
                        .collect();
                    json!({
                        "addr": &*member.addr,
                        "role": role_name(member.role),
                        "weight": member.weight,
                        "zone": &*member.zone,
                        "healthy": s.is_healthy(),
                        "observed": format!("{:?}", s.observed_role()).to_lowercase(),
                        "wal_lsn": s.wal_lsn(),
                        "lag_bytes": s.lag_bytes(),
                        "lag_seconds": s.lag_millis() as f64 / 1000.0,
                        "lent": s.outstanding(),
                        "pools": member_pools,
                    })
                })
                .collect();
            json!({
                "name": c.name,
                "source": source,
                "leader": c.leader().map(|l| l.addr.to_string()),
                "members": members,
            })
        })
        .collect();
    let (active, waiting, idle) = client_states(shared, &pools);
    json!({
        "ready": not_ready(shared).is_none(),
        "clients": {"active": active, "waiting": waiting, "idle": idle},
        "pool_size": config.proxy.pool_size,
        "clusters": clusters,
    })
}

/// Counts leader changes per cluster from the topology snapshots, until
/// `stop`: a leader that differs from the last one known (the first one
/// found at start is not a change; a gap with no leader is not either).
pub async fn count_leader_changes(
    shared: std::sync::Arc<Shared>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut topology = shared.topology.clone();
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    loop {
        for c in &topology.borrow_and_update().clusters {
            let Some(leader) = c.leader() else { continue };
            if let Some(before) = last.insert(c.name.clone(), leader.addr.to_string()) {
                if before != *leader.addr {
                    shared.metrics.leader_changed(&c.name);
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = topology.changed() => if changed.is_err() { return },
        }
    }
}
