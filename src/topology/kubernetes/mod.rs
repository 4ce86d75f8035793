//! The `kubernetes` source: watches the cluster's Pods by label selector
//! and publishes members whose role label says leader or replica (rules in
//! [`pods`]). Patroni's leader object (a ConfigMap or Endpoints whose
//! `leader` annotation names the lock holder) and the leader Service's
//! EndpointSlices are watched too when configured; they only break ties.
//!
//! Watching uses kube's watcher: list, then watch from the list's
//! resourceVersion with bookmarks, a relist when the apiserver answers 410
//! Gone, and a growing pause between failed attempts. A relist replaces
//! what was known only once it is complete, so a restart of the apiserver
//! does not empty the cluster for a moment.

pub mod pods;

use futures_util::stream::{BoxStream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, ResourceExt};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use super::TopologySender;
use crate::config::KubernetesDiscovery;
use pods::{LeaderSignals, PodView};

/// Why the source could not start talking to the apiserver.
#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    #[error("cannot read kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        source: kube::config::KubeconfigError,
    },
    #[error("no Kubernetes configuration (KUBECONFIG, ~/.kube/config or in-cluster): {0}")]
    Infer(#[from] kube::config::InferConfigError),
    #[error("cannot build the Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// One object kind's change, reduced to the part pgsplit keeps.
enum Change {
    Pod(Event<(String, PodView)>),
    Lock(Event<(String, Option<String>)>),
    Slice(Event<(String, Vec<String>)>),
}

/// Objects of one kind by name, with a relist buffered until complete.
struct Cache<T> {
    live: BTreeMap<String, T>,
    relisting: Option<BTreeMap<String, T>>,
}

impl<T: PartialEq> Cache<T> {
    fn new() -> Self {
        Cache {
            live: BTreeMap::new(),
            relisting: None,
        }
    }

    /// Applies one event; returns whether what is live changed.
    fn apply(&mut self, event: Event<(String, T)>) -> bool {
        match event {
            Event::Apply((name, value)) => {
                let changed = self.live.get(&name) != Some(&value);
                self.live.insert(name, value);
                changed
            }
            Event::Delete((name, _)) => self.live.remove(&name).is_some(),
            Event::Init => {
                self.relisting = Some(BTreeMap::new());
                false
            }
            Event::InitApply((name, value)) => {
                self.relisting
                    .get_or_insert_with(BTreeMap::new)
                    .insert(name, value);
                false
            }
            Event::InitDone => {
                let listed = self.relisting.take().unwrap_or_default();
                let changed = listed != self.live;
                self.live = listed;
                changed
            }
        }
    }
}

/// Backoff between failed watch attempts: 250 ms doubling to 10 s, reset
/// by the first success. Shorter than kube's default (800 ms to 30 s): a
/// missed leader change costs writes, a retry costs one request.
struct Backoff(Duration);

const FIRST_RETRY: Duration = Duration::from_millis(250);
const LAST_RETRY: Duration = Duration::from_secs(10);

impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let wait = self.0;
        self.0 = (self.0 * 2).min(LAST_RETRY);
        Some(wait)
    }
}

impl kube::runtime::utils::Backoff for Backoff {
    fn reset(&mut self) {
        self.0 = FIRST_RETRY;
    }
}

/// The client for `settings`, and the namespace to watch.
async fn connect(settings: &KubernetesDiscovery) -> Result<(Client, String), KubernetesError> {
    let config = match &settings.kubeconfig {
        Some(path) => {
            let error = |source| KubernetesError::Kubeconfig {
                path: path.display().to_string(),
                source,
            };
            let file = kube::config::Kubeconfig::read_from(path).map_err(error)?;
            kube::Config::from_custom_kubeconfig(file, &Default::default())
                .await
                .map_err(error)?
        }
        None => kube::Config::infer().await?,
    };
    let namespace = settings
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    Ok((Client::try_from(config)?, namespace))
}

/// A watch of `api` as a stream of reduced changes. Errors are logged
/// (once per run of failures) and retried after a backoff.
fn watch<K, T>(
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
    reduce: impl Fn(&K) -> T + Send + 'static,
    wrap: fn(Event<(String, T)>) -> Change,
) -> BoxStream<'static, Change>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    K::DynamicType: Default,
    T: Send + 'static,
{
    let mut failing = false;
    watcher::watcher(api, config)
        .backoff(Backoff(FIRST_RETRY))
        .filter_map(move |item| {
            let change = match item {
                Ok(event) => {
                    failing = false;
                    let named = |k: K| (k.name_any(), reduce(&k));
                    Some(wrap(match event {
                        Event::Apply(k) => Event::Apply(named(k)),
                        Event::Delete(k) => Event::Delete(named(k)),
                        Event::Init => Event::Init,
                        Event::InitApply(k) => Event::InitApply(named(k)),
                        Event::InitDone => Event::InitDone,
                    }))
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, what, "Kubernetes watch failed; retrying");
                    }
                    failing = true;
                    None
                }
            };
            std::future::ready(change)
        })
        .boxed()
}

/// The `leader` annotation of Patroni's leader object.
fn lock_holder(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<String> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get("leader"))
        .filter(|v| !v.is_empty())
        .cloned()
}

/// Ready addresses of one EndpointSlice.
fn ready_addresses(slice: &EndpointSlice) -> Vec<String> {
    slice
        .endpoints
        .iter()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .flat_map(|e| e.addresses.iter().cloned())
        .collect()
}

/// Watches the pods (and leader signals) of cluster `name` and publishes
/// its members until `stop`.
pub async fn run(
    name: String,
    settings: KubernetesDiscovery,
    sender: TopologySender,
    stop: CancellationToken,
) {
    let mut retry = Backoff(FIRST_RETRY);
    let (client, namespace) = loop {
        match connect(&settings).await {
            Ok(connected) => break connected,
            Err(e) => {
                let wait = retry.next().unwrap_or(LAST_RETRY);
                tracing::error!(cluster = %name, error = %e, "Kubernetes discovery cannot start; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    };
    let labels = settings.role_labels();
    let timeout = u32::try_from(settings.watch_timeout.0.as_secs()).unwrap_or(u32::MAX);
    let selected = watcher::Config::default()
        .labels(&settings.selector)
        .timeout(timeout);
    let by_name = |object: &str| {
        watcher::Config::default()
            .fields(&format!("metadata.name={object}"))
            .timeout(timeout)
    };
    let mut streams = vec![watch(
        Api::<Pod>::namespaced(client.clone(), &namespace),
        selected,
        "pods",
        {
            let labels = labels.clone();
            let port_name = settings.port_name.clone();
            move |pod: &Pod| PodView::from_pod(pod, &labels, &port_name)
        },
        Change::Pod,
    )];
    if let Some(object) = &settings.leader_configmap {
        streams.push(watch(
            Api::<ConfigMap>::namespaced(client.clone(), &namespace),
            by_name(object),
            "leader configmap",
            |c: &ConfigMap| lock_holder(&c.metadata),
            Change::Lock,
        ));
    }
    if let Some(object) = &settings.leader_endpoints {
        streams.push(watch(
            Api::<Endpoints>::namespaced(client.clone(), &namespace),
            by_name(object),
            "leader endpoints",
            |e: &Endpoints| lock_holder(&e.metadata),
            Change::Lock,
        ));
    }
    if let Some(service) = &settings.leader_service {
        streams.push(watch(
            Api::<EndpointSlice>::namespaced(client.clone(), &namespace),
            watcher::Config::default()
                .labels(&format!("kubernetes.io/service-name={service}"))
                .timeout(timeout),
            "leader service endpointslices",
            ready_addresses,
            Change::Slice,
        ));
    }
    tracing::info!(cluster = %name, namespace = %namespace, selector = %settings.selector, "watching Kubernetes pods");
    let mut changes = futures_util::stream::select_all(streams);
    let mut pods = Cache::new();
    let mut locks = Cache::new();
    let mut slices = Cache::new();
    loop {
        let change = tokio::select! {
            _ = stop.cancelled() => return,
            change = changes.next() => change,
        };
        let Some(change) = change else { return };
        let changed = match change {
            Change::Pod(e) => pods.apply(e),
            Change::Lock(e) => locks.apply(e),
            Change::Slice(e) => slices.apply(e),
        };
        if !changed || pods.relisting.is_some() {
            continue;
        }
        let signals = LeaderSignals {
            lock_holder: locks.live.values().flatten().next().cloned(),
            service_ips: slices
                .live
                .values()
                .flatten()
                .cloned()
                .collect::<HashSet<_>>(),
        };
        let members = pods::members(&pods.live, &labels, &signals, settings.port);
        if !super::update_cluster(&sender, &name, |current| {
            super::ClusterTopology::rebuilt(&name, members, Some(current))
        }) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relist_replaces_the_cache_only_when_complete() {
        let mut cache = Cache::new();
        assert!(cache.apply(Event::Apply(("a".to_string(), 1))));
        assert!(!cache.apply(Event::Apply(("a".to_string(), 1))));
        assert!(!cache.apply(Event::Init));
        assert!(!cache.apply(Event::InitApply(("b".to_string(), 2))));
        assert_eq!(
            cache.live.len(),
            1,
            "the old view stays until the relist is done"
        );
        assert!(cache.apply(Event::InitDone));
        assert_eq!(cache.live, BTreeMap::from([("b".to_string(), 2)]));
        assert!(cache.apply(Event::Delete(("b".to_string(), 0))));
        assert!(!cache.apply(Event::Delete(("b".to_string(), 0))));
    }

    #[test]
    fn backoff_grows_and_resets() {
        use kube::runtime::utils::Backoff as _;
        let mut b = Backoff(FIRST_RETRY);
        let waits: Vec<Duration> = b.by_ref().take(8).collect();
        assert_eq!(waits[0], FIRST_RETRY);
        assert_eq!(waits[1], FIRST_RETRY * 2);
        assert_eq!(waits[7], LAST_RETRY);
        b.reset();
        assert_eq!(b.next(), Some(FIRST_RETRY));
    }

    #[test]
    fn endpointslice_ready_addresses() {
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "s"},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false}},
                {"addresses": ["10.0.0.3"]}
            ]
        }))
        .unwrap();
        assert_eq!(ready_addresses(&slice), vec!["10.0.0.1", "10.0.0.3"]);
    }
}
