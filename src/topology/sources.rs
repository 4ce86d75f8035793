//! Which sources run: one task per cluster whose discovery asks for one
//! (`patroni`, `kubernetes`), plus the probes. A reload hands the new
//! config to [`Sources::apply`]: clusters whose discovery settings are
//! unchanged keep their source and members; changed ones restart (static
//! members are replaced); added and removed clusters come and go.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use tokio_util::sync::CancellationToken;

use super::probe::ProbeSettings;
use super::{ClusterTopology, TopologySender, TopologyWatch};
use crate::config::{Config, DiscoveryConfig};

/// The running sources.
pub struct Sources {
    sender: TopologySender,
    stop: CancellationToken,
    running: Mutex<Running>,
}

#[derive(Default)]
struct Running {
    clusters: HashMap<String, (DiscoveryConfig, CancellationToken)>,
    probes: Option<CancellationToken>,
}

impl Sources {
    /// Nothing runs until [`apply`](Self::apply); everything stops with `stop`.
    pub fn new(sender: TopologySender, stop: CancellationToken) -> Sources {
        Sources {
            sender,
            stop,
            running: Mutex::default(),
        }
    }

    /// Brings the running sources to `config`; the probes restart with
    /// `probes`. Returns the names of clusters whose source (re)started.
    pub fn apply(
        &self,
        config: &Config,
        probes: ProbeSettings,
        watch: TopologyWatch,
    ) -> Vec<String> {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let mut restarted = Vec::new();
        let wanted: Vec<&str> = config.clusters.iter().map(|c| c.name.as_str()).collect();
        running.clusters.retain(|name, (_, token)| {
            let keep = wanted.contains(&name.as_str());
            if !keep {
                token.cancel();
            }
            keep
        });
        for cluster in &config.clusters {
            if running
                .clusters
                .get(&cluster.name)
                .is_some_and(|(d, _)| *d == cluster.discovery)
            {
                continue;
            }
            if let Some((_, old)) = running.clusters.remove(&cluster.name) {
                old.cancel();
            }
            let token = self.stop.child_token();
            self.spawn(cluster, token.clone());
            running
                .clusters
                .insert(cluster.name.clone(), (cluster.discovery.clone(), token));
            restarted.push(cluster.name.clone());
        }
        // The snapshot lists exactly the configured clusters; restarted
        // ones start from their config.
        let current = self.sender.borrow().clone();
        let clusters: Vec<ClusterTopology> = config
            .clusters
            .iter()
            .map(|c| match current.cluster(&c.name) {
                Some(known) if !restarted.contains(&c.name) => known.clone(),
                _ => ClusterTopology::from_config(c),
            })
            .collect();
        if clusters != current.clusters {
            self.sender
                .send_replace(Arc::new(super::Topology { clusters }));
        }
        if let Some(old) = running.probes.take() {
            old.cancel();
        }
        let token = self.stop.child_token();
        tokio::spawn(super::probe::run(watch, probes, token.clone()));
        running.probes = Some(token);
        restarted
    }

    fn spawn(&self, cluster: &crate::config::ClusterConfig, token: CancellationToken) {
        let name = cluster.name.clone();
        match &cluster.discovery {
            DiscoveryConfig::Patroni {
                urls,
                poll_interval,
            } => {
                tokio::spawn(super::patroni::run(
                    name,
                    urls.clone(),
                    poll_interval.0,
                    self.sender.clone(),
                    token,
                ));
            }
            DiscoveryConfig::Kubernetes(settings) => {
                tokio::spawn(super::kubernetes::run(
                    name,
                    (**settings).clone(),
                    self.sender.clone(),
                    token,
                ));
            }
            DiscoveryConfig::Static { .. } => {}
        }
    }
}
