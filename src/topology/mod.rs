//! The cluster topology: which members each cluster has and what role each
//! plays, published as immutable snapshots through a `watch` channel.
//!
//! Pools and sessions read snapshots and never call back in. Sources:
//! `static` publishes the configured addresses once ([`roles`] then follows
//! what the probes see), [`patroni`] polls the REST API, [`kubernetes`]
//! watches Pods. What changes between snapshots (health, WAL positions, lag, load)
//! lives in [`state`], shared by every snapshot that has the member, and
//! is kept current by [`probe`].

pub mod kubernetes;
pub mod patroni;
pub mod probe;
pub mod roles;
pub mod sources;
pub mod state;

use std::sync::Arc;
use tokio::sync::watch;

use crate::config::{Config, DiscoveryConfig};
pub use state::{now_nanos, seconds_since, ClusterState, MemberState, Observed};

/// What a member does in its cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Leader,
    Replica,
}

/// One PostgreSQL server of a cluster.
#[derive(Debug, Clone)]
pub struct Member {
    /// `host:port`.
    pub addr: Arc<str>,
    pub role: Role,
    /// Share of reads relative to other replicas (0: none).
    pub weight: u32,
    /// Zone, for the same-zone preference ("" when unknown).
    pub zone: Arc<str>,
    /// Health, WAL position, lag and load, updated in place.
    pub state: Arc<MemberState>,
}

impl PartialEq for Member {
    fn eq(&self, other: &Self) -> bool {
        self.addr == other.addr
            && self.role == other.role
            && self.weight == other.weight
            && self.zone == other.zone
    }
}

impl Eq for Member {}

/// One cluster's members.
#[derive(Debug, Clone)]
pub struct ClusterTopology {
    pub name: String,
    pub members: Vec<Member>,
    /// The leader's WAL history, for read-your-writes.
    pub state: Arc<ClusterState>,
    /// Roles follow what the probes see (the `static` source); other
    /// sources say the roles themselves.
    pub follow_probes: bool,
}

impl PartialEq for ClusterTopology {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.members == other.members
    }
}

impl Eq for ClusterTopology {}

impl Member {
    fn new(addr: &str, role: Role, weight: u32, zone: &str) -> Member {
        Member {
            addr: addr.into(),
            role,
            weight,
            zone: zone.into(),
            state: Arc::default(),
        }
    }
}

impl ClusterTopology {
    /// A cluster as its config describes it: static members as
    /// configured; none for other sources until they answer.
    pub fn from_config(c: &crate::config::ClusterConfig) -> ClusterTopology {
        let members = match &c.discovery {
            DiscoveryConfig::Static { leader, replicas } => {
                std::iter::once(Member::new(leader, Role::Leader, 1, ""))
                    .chain(
                        replicas
                            .iter()
                            .map(|r| Member::new(r.addr(), Role::Replica, r.weight(), r.zone())),
                    )
                    .collect()
            }
            DiscoveryConfig::Patroni { .. } | DiscoveryConfig::Kubernetes(_) => Vec::new(),
        };
        ClusterTopology {
            name: c.name.clone(),
            members,
            state: Arc::default(),
            follow_probes: matches!(c.discovery, DiscoveryConfig::Static { .. }),
        }
    }

    /// A source's fresh member list for cluster `name`, keeping the live
    /// state of members `previous` already had (by address) and the
    /// cluster's WAL history.
    pub fn rebuilt(
        name: &str,
        members: impl IntoIterator<Item = (Arc<str>, Role, u32, Arc<str>)>,
        previous: Option<&ClusterTopology>,
    ) -> ClusterTopology {
        let members = members
            .into_iter()
            .map(|(addr, role, weight, zone)| {
                let state = previous
                    .and_then(|p| p.members.iter().find(|x| x.addr == addr))
                    .map_or_else(|| Arc::new(MemberState::default()), |x| x.state.clone());
                Member {
                    addr,
                    role,
                    weight,
                    zone,
                    state,
                }
            })
            .collect();
        ClusterTopology {
            name: name.to_string(),
            members,
            state: previous.map_or_else(|| Arc::new(ClusterState::default()), |p| p.state.clone()),
            follow_probes: false,
        }
    }

    /// The member that takes writes, if one is known.
    pub fn leader(&self) -> Option<&Member> {
        self.members.iter().find(|m| m.role == Role::Leader)
    }

    /// Members that serve reads only.
    pub fn replicas(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| m.role == Role::Replica)
    }
}

/// A snapshot of every cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    pub clusters: Vec<ClusterTopology>,
}

impl Topology {
    /// The first snapshot for `config`: static members as configured;
    /// clusters of other sources empty until they answer.
    pub fn from_config(config: &Config) -> Topology {
        Topology {
            clusters: config
                .clusters
                .iter()
                .map(ClusterTopology::from_config)
                .collect(),
        }
    }

    /// The cluster called `name`.
    pub fn cluster(&self, name: &str) -> Option<&ClusterTopology> {
        self.clusters.iter().find(|c| c.name == name)
    }
}

/// Receiving end of topology snapshots.
pub type TopologyWatch = watch::Receiver<Arc<Topology>>;

/// The sending end: sources publish new snapshots through it.
pub type TopologySender = Arc<watch::Sender<Arc<Topology>>>;

/// Replaces cluster `name` in the published snapshot with what `build`
/// makes of the current one, when that differs; logs leader changes.
/// Returns false when the cluster is gone from the topology.
pub fn update_cluster(
    sender: &TopologySender,
    name: &str,
    build: impl FnOnce(&ClusterTopology) -> ClusterTopology,
) -> bool {
    let current = sender.borrow().clone();
    let Some(index) = current.clusters.iter().position(|c| c.name == name) else {
        return false;
    };
    let before = &current.clusters[index];
    let next = build(before);
    if next != *before {
        let leader = |c: &ClusterTopology| c.leader().map(|m| m.addr.to_string());
        if leader(&next) != leader(before) {
            tracing::info!(cluster = %name, from = ?leader(before), to = ?leader(&next), "leader changed");
        }
        let mut topology = (*current).clone();
        topology.clusters[index] = next;
        sender.send_replace(Arc::new(topology));
    }
    true
}

/// Starts publishing the topology for `config`; the sender must be kept
/// alive as long as the proxy runs.
pub fn publish(config: &Config) -> (TopologySender, TopologyWatch) {
    let (tx, rx) = watch::channel(Arc::new(Topology::from_config(config)));
    (Arc::new(tx), rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_source_lists_leader_and_replicas() {
        let config = Config::parse(
            "[[users]]\nname='a'\npassword='b'\n[[clusters]]\nname='main'\n[clusters.discovery]\nkind='static'\nleader='h:1'\nreplicas=['h:2','h:3']\n",
            "t",
            std::iter::empty(),
        )
        .unwrap();
        let t = Topology::from_config(&config);
        let c = t.cluster("main").unwrap();
        assert_eq!(&*c.leader().unwrap().addr, "h:1");
        assert_eq!(c.replicas().count(), 2);
        assert!(t.cluster("other").is_none());
    }
}
