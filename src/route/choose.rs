//! Which member takes a read.
//!
//! Candidates are the replicas that are healthy, have a weight, are within
//! `max_replica_lag_bytes` / `max_replica_lag_seconds`, and have replayed
//! the client's read-your-writes position; those in the proxy's own zone
//! are preferred when there are any. With `leader_reads = "always"` the
//! leader is a candidate too. Among candidates: power of two choices, two
//! picked at random in proportion to their weights, the one with fewer
//! lent server connections per unit of weight wins. No candidate: `None`,
//! and the caller falls back to the leader or fails, as configured.

use crate::config::{LeaderReads, RoutingConfig};
use crate::topology::{ClusterTopology, Member, Observed, Role};

/// A small fast random number source (xorshift64*), one per session.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        if n == 0 {
            0
        } else {
            x % n
        }
    }
}

/// Whether `member` may take a read for a client that must see WAL up to
/// `need_lsn`.
pub fn can_read(member: &Member, routing: &RoutingConfig, need_lsn: Option<u64>) -> bool {
    if member.role == Role::Leader {
        return routing.leader_reads == LeaderReads::Always;
    }
    let s = &member.state;
    let max_bytes = routing.max_replica_lag_bytes.0 as u64;
    let max_millis = routing.max_replica_lag_seconds.0.as_millis() as u64;
    member.weight > 0
        && s.is_healthy()
        // Suspect: it says it is not in recovery, so it is not what the
        // topology calls it (until the topology agrees).
        && s.observed_role() != Observed::Primary
        && (max_bytes == 0 || s.lag_bytes() <= max_bytes)
        && (max_millis == 0 || s.lag_millis() <= max_millis)
        && need_lsn.is_none_or(|lsn| s.wal_lsn() >= lsn)
}

/// The member a read goes to, or `None` when no candidate qualifies.
pub fn choose_reader<'a>(
    cluster: &'a ClusterTopology,
    routing: &RoutingConfig,
    need_lsn: Option<u64>,
    rng: &mut Rng,
) -> Option<&'a Member> {
    let eligible = |m: &&Member| can_read(m, routing, need_lsn);
    let in_zone = |m: &&Member| routing.zone.is_empty() || *m.zone == *routing.zone;
    let zoned =
        !routing.zone.is_empty() && cluster.members.iter().filter(eligible).any(|m| in_zone(&m));
    let candidate = |m: &&Member| eligible(m) && (!zoned || in_zone(m));
    let weight = |m: &Member| u64::from(m.weight.max(1));
    let total: u64 = cluster.members.iter().filter(candidate).map(weight).sum();
    if total == 0 {
        return None;
    }
    let pick = |rng: &mut Rng| {
        let mut at = rng.below(total);
        cluster.members.iter().filter(candidate).find(|m| {
            let w = weight(m);
            if at < w {
                true
            } else {
                at -= w;
                false
            }
        })
    };
    let a = pick(rng)?;
    let Some(b) = pick(rng) else {
        return Some(a);
    };
    // Fewer lent connections per unit of weight wins (cross-multiplied).
    let out = |m: &Member| m.state.outstanding() as u64;
    if out(a) * weight(b) <= out(b) * weight(a) {
        Some(a)
    } else {
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ByteSize;
    use crate::topology::{ClusterState, MemberState};
    use std::sync::Arc;

    fn member(addr: &str, role: Role, weight: u32, zone: &str) -> Member {
        let state = Arc::new(MemberState::default());
        state.probed_ok(1000, 0, 0);
        Member {
            addr: addr.into(),
            role,
            weight,
            zone: zone.into(),
            state,
        }
    }

    fn cluster(members: Vec<Member>) -> ClusterTopology {
        ClusterTopology {
            name: "c".into(),
            members,
            state: Arc::new(ClusterState::default()),
            follow_probes: true,
        }
    }

    fn counts(c: &ClusterTopology, routing: &RoutingConfig, need: Option<u64>) -> Vec<usize> {
        let mut rng = Rng::new(7);
        let mut n = vec![0; c.members.len()];
        for _ in 0..3000 {
            if let Some(m) = choose_reader(c, routing, need, &mut rng) {
                n[c.members.iter().position(|x| x.addr == m.addr).unwrap()] += 1;
            }
        }
        n
    }

    #[test]
    fn spreads_reads_by_weight_and_skips_the_leader() {
        let c = cluster(vec![
            member("l", Role::Leader, 1, ""),
            member("a", Role::Replica, 1, ""),
            member("b", Role::Replica, 3, ""),
        ]);
        let n = counts(&c, &RoutingConfig::default(), None);
        assert_eq!(n[0], 0);
        assert!(n[2] > n[1] * 2, "weight 3 takes most reads: {n:?}");
        assert!(n[1] > 100, "weight 1 still takes some: {n:?}");
    }

    #[test]
    fn a_replica_that_says_it_is_a_primary_takes_no_reads() {
        let c = cluster(vec![
            member("a", Role::Replica, 1, ""),
            member("b", Role::Replica, 1, ""),
        ]);
        c.members[0].state.observed(false);
        c.members[1].state.observed(true);
        assert_eq!(counts(&c, &RoutingConfig::default(), None), vec![0, 3000]);
    }

    #[test]
    fn prefers_the_less_loaded() {
        let c = cluster(vec![
            member("a", Role::Replica, 1, ""),
            member("b", Role::Replica, 1, ""),
        ]);
        for _ in 0..10 {
            c.members[0].state.lent();
        }
        let n = counts(&c, &RoutingConfig::default(), None);
        assert!(n[1] > n[0] * 2, "{n:?}");
    }

    #[test]
    fn lag_health_zone_and_read_your_writes() {
        let c = cluster(vec![
            member("l", Role::Leader, 1, "z1"),
            member("a", Role::Replica, 1, "z1"),
            member("b", Role::Replica, 1, "z2"),
        ]);
        let mut routing = RoutingConfig {
            zone: "z1".into(),
            ..RoutingConfig::default()
        };
        assert_eq!(counts(&c, &routing, None), vec![0, 3000, 0]);
        c.members[1].state.probed_ok(1000, 1 << 30, 0);
        assert_eq!(counts(&c, &routing, None), vec![0, 0, 3000], "a lags");
        routing.max_replica_lag_bytes = ByteSize(0);
        assert_eq!(
            counts(&c, &routing, None),
            vec![0, 3000, 0],
            "no byte limit"
        );
        assert_eq!(
            counts(&c, &routing, Some(1001)),
            vec![0, 0, 0],
            "none replayed 1001"
        );
        c.members[2].state.probed_ok(2000, 0, 0);
        assert_eq!(counts(&c, &routing, Some(1001)), vec![0, 0, 3000]);
        c.members[2].state.probe_failed();
        assert_eq!(counts(&c, &routing, Some(1001)), vec![0, 0, 0]);
        routing.leader_reads = LeaderReads::Always;
        assert_eq!(counts(&c, &routing, Some(1001)), vec![3000, 0, 0]);
    }
}
