//! From Pods to members: which pod leads, which serve reads. Pure code, so
//! that every rule is tested without an apiserver.
//!
//! Rules:
//! - A pod counts when it has an IP, is not terminating (a
//!   `deletionTimestamp` takes it out at once, as a Service would) and its
//!   role label holds a leader or replica value.
//! - A pod with a leader value leads. When several do, Patroni's leader
//!   object (its `leader` annotation names the pod holding the lock)
//!   decides; failing that, the leader Service's EndpointSlices, if they
//!   list exactly one of them. Otherwise no leader is known and writes wait:
//!   guessing could send writes to a node that is about to be demoted. The
//!   losing claimants serve no reads.
//! - Readiness does not decide the leader (Kubernetes reports it up to a
//!   probe period late, which would stretch every switchover), but a pod
//!   that is not Ready serves no reads.

use k8s_openapi::api::core::v1::Pod;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use crate::config::RoleLabels;
use crate::topology::Role;

/// Label with the zone a pod runs in, when the operator copies it there.
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// The parts of a Pod pgsplit uses (everything else, managedFields
/// included, is dropped as soon as the pod arrives).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    pub ip: Option<String>,
    /// The container port named `port_name`, if any.
    pub port: Option<u16>,
    pub role: Option<String>,
    pub ready: bool,
    pub terminating: bool,
    pub zone: String,
}

impl PodView {
    /// Reads what matters from `pod`.
    pub fn from_pod(pod: &Pod, labels: &RoleLabels, port_name: &str) -> PodView {
        let meta = &pod.metadata;
        let label = |key: &str| meta.labels.as_ref().and_then(|l| l.get(key)).cloned();
        let status = pod.status.as_ref();
        let port = pod.spec.as_ref().and_then(|spec| {
            spec.containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| p.name.as_deref() == Some(port_name))
                .and_then(|p| u16::try_from(p.container_port).ok())
        });
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        PodView {
            ip: status
                .and_then(|s| s.pod_ip.clone())
                .filter(|ip| !ip.is_empty()),
            port,
            role: label(&labels.key),
            ready,
            terminating: meta.deletion_timestamp.is_some(),
            zone: label(ZONE_LABEL).unwrap_or_default(),
        }
    }

    fn addr(&self, default_port: u16) -> Option<Arc<str>> {
        let ip = self.ip.as_deref()?;
        let port = self.port.unwrap_or(default_port);
        Some(if ip.contains(':') {
            format!("[{ip}]:{port}").into()
        } else {
            format!("{ip}:{port}").into()
        })
    }
}

/// Signals beside the labels that say who leads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaderSignals {
    /// Pod named by the leader object's `leader` annotation.
    pub lock_holder: Option<String>,
    /// Addresses the leader Service's EndpointSlices list as ready.
    pub service_ips: HashSet<String>,
}

/// Members as (address, role, weight, zone), from pods by name.
pub fn members(
    pods: &BTreeMap<String, PodView>,
    labels: &RoleLabels,
    signals: &LeaderSignals,
    default_port: u16,
) -> Vec<(Arc<str>, Role, u32, Arc<str>)> {
    let counted = |p: &PodView| {
        p.ip.is_some()
            && !p.terminating
            && p.role
                .as_ref()
                .is_some_and(|r| labels.leader.contains(r) || labels.replica.contains(r))
    };
    let claims: Vec<&str> = pods
        .iter()
        .filter(|(_, p)| counted(p) && p.role.as_ref().is_some_and(|r| labels.leader.contains(r)))
        .map(|(name, _)| name.as_str())
        .collect();
    let leader = leader_among(&claims, pods, signals);
    if claims.len() > 1 {
        tracing::warn!(claims = ?claims, chosen = ?leader, "several pods carry a leader label");
    }
    pods.iter()
        .filter(|(_, p)| counted(p))
        .filter_map(|(name, p)| {
            let addr = p.addr(default_port)?;
            let is_leader = Some(name.as_str()) == leader;
            let claims_leader = claims.contains(&name.as_str());
            let role = if is_leader {
                Role::Leader
            } else {
                Role::Replica
            };
            let weight = u32::from(!is_leader && !claims_leader && p.ready);
            Some((addr, role, weight, Arc::from(p.zone.as_str())))
        })
        .collect()
}

/// The one claimant that leads, if the signals single one out.
fn leader_among<'a>(
    claims: &[&'a str],
    pods: &BTreeMap<String, PodView>,
    signals: &LeaderSignals,
) -> Option<&'a str> {
    match claims {
        [] => None,
        [only] => Some(only),
        several => {
            if let Some(holder) = &signals.lock_holder {
                if let Some(name) = several.iter().find(|n| **n == holder) {
                    return Some(name);
                }
            }
            let listed: Vec<&&str> = several
                .iter()
                .filter(|n| {
                    pods.get(**n)
                        .and_then(|p| p.ip.as_ref())
                        .is_some_and(|ip| signals.service_ips.contains(ip))
                })
                .collect();
            match listed.as_slice() {
                [one] => Some(one),
                _ => None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> RoleLabels {
        RoleLabels {
            key: "role".into(),
            leader: vec!["master".into(), "primary".into()],
            replica: vec!["replica".into()],
        }
    }

    fn pod(ip: &str, role: &str) -> PodView {
        PodView {
            ip: Some(ip.into()),
            port: None,
            role: Some(role.into()),
            ready: true,
            terminating: false,
            zone: String::new(),
        }
    }

    fn roles(
        pods: &BTreeMap<String, PodView>,
        signals: &LeaderSignals,
    ) -> Vec<(String, Role, u32)> {
        members(pods, &labels(), signals, 5432)
            .into_iter()
            .map(|(a, r, w, _)| (a.to_string(), r, w))
            .collect()
    }

    #[test]
    fn leader_and_replicas_from_labels() {
        let mut pods = BTreeMap::new();
        pods.insert("a".into(), pod("10.0.0.1", "master"));
        pods.insert("b".into(), pod("10.0.0.2", "replica"));
        let mut c = pod("10.0.0.3", "replica");
        c.ready = false;
        c.port = Some(6000);
        pods.insert("c".into(), c);
        pods.insert("d".into(), pod("10.0.0.4", "uninitialized"));
        let mut e = pod("10.0.0.5", "replica");
        e.terminating = true;
        pods.insert("e".into(), e);
        let mut f = pod("", "replica");
        f.ip = None;
        pods.insert("f".into(), f);
        assert_eq!(
            roles(&pods, &LeaderSignals::default()),
            vec![
                ("10.0.0.1:5432".into(), Role::Leader, 0),
                ("10.0.0.2:5432".into(), Role::Replica, 1),
                ("10.0.0.3:6000".into(), Role::Replica, 0),
            ]
        );
    }

    #[test]
    fn two_claims_are_settled_by_the_lock_then_the_service() {
        let mut pods = BTreeMap::new();
        pods.insert("a".into(), pod("10.0.0.1", "master"));
        pods.insert("b".into(), pod("10.0.0.2", "primary"));
        let none = roles(&pods, &LeaderSignals::default());
        assert!(none.iter().all(|(_, r, w)| *r == Role::Replica && *w == 0));
        let lock = LeaderSignals {
            lock_holder: Some("b".into()),
            service_ips: HashSet::from(["10.0.0.1".to_string()]),
        };
        let by_lock = roles(&pods, &lock);
        assert_eq!(by_lock[1], ("10.0.0.2:5432".into(), Role::Leader, 0));
        assert_eq!(by_lock[0], ("10.0.0.1:5432".into(), Role::Replica, 0));
        let by_service = LeaderSignals {
            lock_holder: Some("gone".into()),
            service_ips: HashSet::from(["10.0.0.1".to_string()]),
        };
        assert_eq!(roles(&pods, &by_service)[0].1, Role::Leader);
    }

    #[test]
    fn a_terminating_leader_is_no_leader() {
        let mut pods = BTreeMap::new();
        let mut a = pod("10.0.0.1", "master");
        a.terminating = true;
        pods.insert("a".into(), a);
        pods.insert("b".into(), pod("fd00::2", "replica"));
        assert_eq!(
            roles(&pods, &LeaderSignals::default()),
            vec![("[fd00::2]:5432".into(), Role::Replica, 1)]
        );
    }

    #[test]
    fn reads_a_pod_object() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "labels": {"role": "replica", ZONE_LABEL: "z1"},
                         "managedFields": [{"manager": "x"}]},
            "spec": {"containers": [{"name": "pg", "ports": [
                {"name": "patroni", "containerPort": 8008},
                {"name": "postgresql", "containerPort": 5433}]}]},
            "status": {"podIP": "10.1.1.1", "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        let view = PodView::from_pod(&pod, &labels(), "postgresql");
        assert_eq!(
            view,
            PodView {
                ip: Some("10.1.1.1".into()),
                port: Some(5433),
                role: Some("replica".into()),
                ready: true,
                terminating: false,
                zone: "z1".into(),
            }
        );
    }
}
