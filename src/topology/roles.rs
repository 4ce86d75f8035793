//! Roles from what members say of themselves, for the `static` source: the
//! configured leader is where writes go until the probes say otherwise. A
//! member that reports it is not in recovery becomes the leader when the
//! current one is in recovery or gone (two probes missed in a row), and
//! the old one becomes a replica; with none, the cluster has no leader and
//! writes wait (`leader_wait_timeout`). So a static list survives a manual
//! failover (`pg_ctl promote` of a replica) without a config change.

use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use super::{ClusterTopology, Observed, Role, Topology, TopologySender};

/// The roles `cluster` should have given what its members said; `None`
/// when they stay as they are.
pub fn follow(cluster: &ClusterTopology) -> Option<ClusterTopology> {
    if !cluster.follow_probes {
        return None;
    }
    let observed = |i: usize| cluster.members[i].state.observed_role();
    let current = cluster.members.iter().position(|m| m.role == Role::Leader);
    let current_ok = current.is_some_and(|i| match observed(i) {
        Observed::Primary => true,
        // Not probed yet (startup): keep the configured leader.
        Observed::Unknown => !cluster.members[i].state.was_probed(),
        Observed::InRecovery => false,
    });
    if current_ok {
        return None;
    }
    let next = (0..cluster.members.len()).find(|&i| observed(i) == Observed::Primary);
    if next == current {
        return None;
    }
    let mut out = cluster.clone();
    for (i, m) in out.members.iter_mut().enumerate() {
        m.role = if Some(i) == next {
            Role::Leader
        } else {
            Role::Replica
        };
    }
    Some(out)
}

/// Applies [`follow`] to every cluster every `interval` until `stop`,
/// publishing a new snapshot when a role changes.
pub async fn run(sender: TopologySender, interval: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let current = sender.borrow().clone();
        let mut next: Option<Topology> = None;
        for (i, cluster) in current.clusters.iter().enumerate() {
            if let Some(changed) = follow(cluster) {
                let leader = |c: &ClusterTopology| c.leader().map(|m| m.addr.to_string());
                tracing::info!(cluster = %cluster.name, from = ?leader(cluster), to = ?leader(&changed), "leader changed");
                next.get_or_insert_with(|| (*current).clone()).clusters[i] = changed;
            }
        }
        if let Some(next) = next {
            sender.send_replace(Arc::new(next));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{ClusterState, Member, MemberState};

    fn cluster(roles: &[Role]) -> ClusterTopology {
        ClusterTopology {
            name: "c".into(),
            members: roles
                .iter()
                .enumerate()
                .map(|(i, r)| Member {
                    addr: format!("h:{i}").into(),
                    role: *r,
                    weight: 1,
                    zone: "".into(),
                    state: Arc::new(MemberState::default()),
                })
                .collect(),
            state: Arc::new(ClusterState::default()),
            follow_probes: true,
        }
    }

    fn say(c: &ClusterTopology, i: usize, in_recovery: bool) {
        c.members[i].state.observed(in_recovery);
        c.members[i].state.probed_ok(0, 0, 0);
    }

    fn leader(c: &ClusterTopology) -> Option<String> {
        c.leader().map(|m| m.addr.to_string())
    }

    #[test]
    fn configured_leader_stands_until_probes_say_otherwise() {
        let c = cluster(&[Role::Leader, Role::Replica]);
        assert!(follow(&c).is_none(), "nothing probed yet");
        say(&c, 0, false);
        say(&c, 1, true);
        assert!(follow(&c).is_none());
    }

    #[test]
    fn promoted_replica_takes_over_from_a_dead_leader() {
        let c = cluster(&[Role::Leader, Role::Replica, Role::Replica]);
        say(&c, 0, false);
        say(&c, 1, true);
        say(&c, 2, true);
        c.members[0].state.probe_failed();
        assert!(follow(&c).is_none(), "one missed probe is forgiven");
        c.members[0].state.probe_failed();
        assert_eq!(
            follow(&c).map(|n| leader(&n)),
            Some(None),
            "no leader while none is primary"
        );
        say(&c, 2, false);
        let next = follow(&c).unwrap();
        assert_eq!(leader(&next).as_deref(), Some("h:2"));
        assert_eq!(next.members[0].role, Role::Replica);
    }

    #[test]
    fn demoted_leader_in_recovery_loses_the_role() {
        let c = cluster(&[Role::Leader, Role::Replica]);
        say(&c, 0, true);
        say(&c, 1, false);
        let next = follow(&c).unwrap();
        assert_eq!(leader(&next).as_deref(), Some("h:1"));
        // Two primaries (the old one still up): the current leader stays.
        let c = cluster(&[Role::Leader, Role::Replica]);
        say(&c, 0, false);
        say(&c, 1, false);
        assert!(follow(&c).is_none());
    }
}
