//! `[clusters.discovery] kind = "kubernetes"`: which Pods make up a
//! cluster and how their labels say who leads.
//!
//! Operators label their pods differently; a `preset` names the label key
//! and values of a known operator, and `role_label` / `leader_values` /
//! `replica_values` override any of them by hand.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use super::Seconds;

/// Label conventions of the operators pgsplit knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// Patroni's own Kubernetes DCS: `role` = primary|master / replica.
    #[default]
    Patroni,
    /// Zalando postgres-operator (Spilo): `spilo-role` = master / replica.
    Spilo,
    /// CloudNativePG: `cnpg.io/instanceRole` = primary / replica.
    Cnpg,
    /// Crunchy PGO: `postgres-operator.crunchydata.com/role` = master|primary / replica.
    Crunchy,
    /// StackGres: `role` = primary|master / replica.
    Stackgres,
    /// KubeDB: `kubedb.com/role` = primary / standby.
    Kubedb,
}

impl Preset {
    /// (label key, leader values, replica values).
    pub fn labels(
        self,
    ) -> (
        &'static str,
        &'static [&'static str],
        &'static [&'static str],
    ) {
        match self {
            Preset::Patroni | Preset::Stackgres => ("role", &["primary", "master"], &["replica"]),
            Preset::Spilo => ("spilo-role", &["master"], &["replica"]),
            Preset::Cnpg => ("cnpg.io/instanceRole", &["primary"], &["replica"]),
            Preset::Crunchy => (
                "postgres-operator.crunchydata.com/role",
                &["master", "primary"],
                &["replica"],
            ),
            Preset::Kubedb => ("kubedb.com/role", &["primary"], &["standby"]),
        }
    }
}

/// The settings of the `kubernetes` source.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KubernetesDiscovery {
    /// Namespace of the pods; default: the kubeconfig context's, or the
    /// service account's when running in a pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Label selector of the cluster's pods, e.g. `cluster-name=acid-minimal-cluster`.
    pub selector: String,
    #[serde(default)]
    pub preset: Preset,
    /// Label key that carries the role (overrides the preset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_label: Option<String>,
    /// Values of `role_label` that mean leader (overrides the preset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_values: Option<Vec<String>>,
    /// Values of `role_label` that mean replica (overrides the preset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_values: Option<Vec<String>>,
    /// PostgreSQL port on each pod, unless a container port is named `port_name`.
    #[serde(default = "default_port")]
    pub port: u16,
    /// A container port with this name wins over `port`.
    #[serde(default = "default_port_name")]
    pub port_name: String,
    /// Patroni's leader ConfigMap (`<scope>-leader`): its `leader`
    /// annotation names the pod that holds the leader lock, which breaks
    /// ties when two pods carry a leader label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_configmap: Option<String>,
    /// Patroni's leader Endpoints (`<scope>`, with `use_endpoints`); same use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_endpoints: Option<String>,
    /// A Service whose EndpointSlices list the leader (the Spilo master
    /// Service, CloudNativePG's `-rw`): consulted after the leader object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_service: Option<String>,
    /// A kubeconfig file; default: `KUBECONFIG`, `~/.kube/config`, then
    /// the in-cluster service account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<PathBuf>,
    /// How long one watch request lasts before it is renewed.
    #[serde(default = "default_watch_timeout")]
    pub watch_timeout: Seconds,
}

fn default_port() -> u16 {
    5432
}

fn default_port_name() -> String {
    "postgresql".into()
}

fn default_watch_timeout() -> Seconds {
    Seconds(std::time::Duration::from_secs(45))
}

/// Role label key and values after applying overrides to the preset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleLabels {
    pub key: String,
    pub leader: Vec<String>,
    pub replica: Vec<String>,
}

impl KubernetesDiscovery {
    /// The label key and values in effect.
    pub fn role_labels(&self) -> RoleLabels {
        let (key, leader, replica) = self.preset.labels();
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        RoleLabels {
            key: self.role_label.clone().unwrap_or_else(|| key.to_string()),
            leader: self.leader_values.clone().unwrap_or_else(|| owned(leader)),
            replica: self
                .replica_values
                .clone()
                .unwrap_or_else(|| owned(replica)),
        }
    }

    /// Checks what serde cannot; returns (key under the discovery table, problem).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.selector.trim().is_empty() {
            return Err((
                "selector",
                "must select the cluster's pods, e.g. \"cluster-name=acid-minimal-cluster\"".into(),
            ));
        }
        if self.leader_configmap.is_some() && self.leader_endpoints.is_some() {
            return Err((
                "leader_endpoints",
                "set leader_configmap or leader_endpoints, not both".into(),
            ));
        }
        let labels = self.role_labels();
        if labels.key.is_empty() {
            return Err(("role_label", "must not be empty".into()));
        }
        if labels.leader.is_empty() {
            return Err(("leader_values", "list at least one value".into()));
        }
        if let Some(v) = labels.leader.iter().find(|v| labels.replica.contains(v)) {
            return Err(("replica_values", format!("\"{v}\" is also a leader value")));
        }
        let timeout = self.watch_timeout.0.as_secs();
        if !(1..=3600).contains(&timeout) {
            return Err(("watch_timeout", "must be between 1s and 1h".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> KubernetesDiscovery {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn presets_name_their_labels() {
        let d = parse("selector = 'a=b'\npreset = 'spilo'");
        assert_eq!(
            d.role_labels(),
            RoleLabels {
                key: "spilo-role".into(),
                leader: vec!["master".into()],
                replica: vec!["replica".into()]
            }
        );
        let d = parse("selector = 'a=b'\npreset = 'kubedb'");
        assert_eq!(d.role_labels().replica, vec!["standby".to_string()]);
        let d = parse("selector = 'a=b'");
        assert_eq!(d.preset, Preset::Patroni);
        assert_eq!(d.port, 5432);
        assert!(d.validate().is_ok());
    }

    #[test]
    fn overrides_win_over_the_preset() {
        let d = parse("selector = 'a=b'\npreset = 'cnpg'\nrole_label = 'role'\nleader_values = ['primary', 'leader']");
        let l = d.role_labels();
        assert_eq!(l.key, "role");
        assert_eq!(l.leader, vec!["primary".to_string(), "leader".to_string()]);
        assert_eq!(l.replica, vec!["replica".to_string()]);
    }

    #[test]
    fn inconsistent_settings_are_refused() {
        let d = parse("selector = 'a=b'\nleader_values = ['x']\nreplica_values = ['x']");
        assert_eq!(d.validate().unwrap_err().0, "replica_values");
        let d = parse("selector = ' '");
        assert_eq!(d.validate().unwrap_err().0, "selector");
        let d = parse("selector = 'a'\nleader_configmap = 'c'\nleader_endpoints = 'c'");
        assert_eq!(d.validate().unwrap_err().0, "leader_endpoints");
        assert!(toml::from_str::<KubernetesDiscovery>("selector = 'a'\npreset = 'nope'").is_err());
    }
}
