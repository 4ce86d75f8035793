//! Health and WAL probes: one task per member keeps a connection of its
//! own and asks, every `probe_interval`, whether the member is in recovery
//! and where its WAL is (written on the leader, replayed on a replica).
//! Results go into the member's [`MemberState`]; leader positions also
//! into the cluster's history, which read-your-writes uses and which gives
//! a replica's time lag: how long ago the leader first had WAL the replica
//! has not replayed. (The usual `now() - pg_last_xact_replay_timestamp()`
//! is not used: after a quiet hour it reports an hour of lag for the
//! instant between receiving a new commit and replaying it.)
//!
//! A member that does not answer within the interval (at least 1 s) is
//! unhealthy until it answers again. Tasks follow the topology: members
//! that appear get a task, members that leave lose theirs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use super::{now_nanos, ClusterState, MemberState, Role, TopologyWatch};
use crate::pool::server::{ServerConn, ServerSpec};

/// One round trip: recovery state and WAL position in bytes.
const PROBE_SQL: &str = "SELECT pg_is_in_recovery(), \
     (CASE WHEN pg_is_in_recovery() THEN COALESCE(pg_last_wal_replay_lsn(), '0/0') \
      ELSE pg_current_wal_lsn() END - '0/0'::pg_lsn)::bigint";

/// How probes connect and how often they run.
#[derive(Clone)]
pub struct ProbeSettings {
    pub interval: Duration,
    /// Connection template; `addr` is replaced per member.
    pub spec: ServerSpec,
}

/// What one probe learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub in_recovery: bool,
    pub wal_lsn: u64,
}

impl Probe {
    /// Reads the row `PROBE_SQL` returns.
    pub fn from_row(row: &[Option<String>]) -> Option<Probe> {
        let text = |i: usize| row.get(i).and_then(|v| v.as_deref());
        Some(Probe {
            in_recovery: text(0)? == "t",
            wal_lsn: text(1)?.parse().ok()?,
        })
    }
}

/// Runs probe tasks for every member of every snapshot until `stop`.
pub async fn run(mut topology: TopologyWatch, settings: ProbeSettings, stop: CancellationToken) {
    let mut tasks: HashMap<(Arc<str>, Role), CancellationToken> = HashMap::new();
    loop {
        let snapshot = topology.borrow_and_update().clone();
        let mut wanted = HashMap::new();
        for cluster in &snapshot.clusters {
            for member in &cluster.members {
                wanted.insert(
                    (member.addr.clone(), member.role),
                    (member.state.clone(), cluster.state.clone()),
                );
            }
        }
        tasks.retain(|key, token| {
            let keep = wanted.contains_key(key);
            if !keep {
                token.cancel();
            }
            keep
        });
        for (key, (member, cluster)) in wanted {
            if tasks.contains_key(&key) {
                continue;
            }
            let token = stop.child_token();
            let (addr, role) = key.clone();
            tokio::spawn(probe_member(
                addr,
                role,
                member,
                cluster,
                settings.clone(),
                token.clone(),
            ));
            tasks.insert(key, token);
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = topology.changed() => if changed.is_err() { return },
        }
    }
}

async fn probe_member(
    addr: Arc<str>,
    role: Role,
    member: Arc<MemberState>,
    cluster: Arc<ClusterState>,
    settings: ProbeSettings,
    stop: CancellationToken,
) {
    let spec = ServerSpec {
        addr: addr.clone(),
        ..settings.spec.clone()
    };
    let timeout = settings.interval.max(Duration::from_secs(1));
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut conn: Option<ServerConn> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let sent_at = now_nanos();
        let result = tokio::time::timeout(timeout, probe_once(&spec, &mut conn)).await;
        match result {
            Ok(Some(probe)) => {
                member.observed(probe.in_recovery);
                if probe.in_recovery != (role == Role::Replica) {
                    tracing::debug!(member = %addr, ?role, in_recovery = probe.in_recovery, "member's recovery state differs from its role");
                }
                match role {
                    Role::Leader if !probe.in_recovery => {
                        cluster.leader_sample(sent_at, probe.wal_lsn);
                        member.probed_ok(probe.wal_lsn, 0, 0);
                    }
                    _ => {
                        let leader = cluster.latest_leader_lsn().unwrap_or(probe.wal_lsn);
                        let lag = leader.saturating_sub(probe.wal_lsn);
                        let lag_millis = cluster.lag_nanos(probe.wal_lsn, now_nanos()) / 1_000_000;
                        member.probed_ok(probe.wal_lsn, lag, lag_millis);
                    }
                }
            }
            Ok(None) | Err(_) => {
                if member.is_healthy() {
                    tracing::warn!(member = %addr, ?role, "member failed its health probe");
                }
                member.probe_failed();
                conn = None;
            }
        }
    }
}

/// Connects when needed and runs one probe; `None` on any failure.
async fn probe_once(spec: &ServerSpec, conn: &mut Option<ServerConn>) -> Option<Probe> {
    if conn.is_none() {
        *conn = Some(Box::pin(ServerConn::connect(spec)).await.ok()?);
    }
    let server = conn.as_mut()?;
    let row = server.query_row(PROBE_SQL).await.ok()?;
    Probe::from_row(&row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_probe_row() {
        let row = |v: &[&str]| v.iter().map(|s| Some(s.to_string())).collect::<Vec<_>>();
        assert_eq!(
            Probe::from_row(&row(&["t", "12345"])),
            Some(Probe {
                in_recovery: true,
                wal_lsn: 12345,
            })
        );
        assert_eq!(Probe::from_row(&row(&["f", "x"])), None);
        assert_eq!(Probe::from_row(&[Some("t".into()), None, None]), None);
    }
}
