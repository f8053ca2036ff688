//! Pod enrichment: which local pod owns an IP address (IPv4 and IPv6).
//!
//! [`PodIndex`] is a plain map fed by events, testable without a cluster; [`watch_local_pods`]
//! feeds it from a kube watcher on the pods of this node (`spec.nodeName=<node>`).
//! hostNetwork pods share the node's address and own none: traffic from the node's own
//! address belongs to no pod.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;

/// The pod that owns an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

/// IP address → pod, for the pods of one node.
#[derive(Debug, Default)]
pub struct PodIndex {
    by_ip: HashMap<IpAddr, PodRef>,
    /// The addresses each pod holds, to remove them when it goes.
    by_pod: HashMap<(String, String), Vec<IpAddr>>,
    /// Addresses collected during a watcher (re)list, swapped in when it completes.
    relist: Option<Vec<Pod>>,
}

impl PodIndex {
    /// The pod owning `ip`, if a local pod does.
    pub fn lookup(&self, ip: &IpAddr) -> Option<&PodRef> {
        self.by_ip.get(ip)
    }

    /// Pods indexed.
    pub fn len(&self) -> usize {
        self.by_pod.len()
    }

    /// True when no pod is indexed.
    pub fn is_empty(&self) -> bool {
        self.by_pod.is_empty()
    }

    /// A pod was created or changed.
    pub fn apply(&mut self, pod: &Pod) {
        let Some(id) = pod_id(pod) else { return };
        self.remove(&id);
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        let finished = matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
        if host_network || finished {
            return;
        }
        let ips = pod_ips(pod);
        if ips.is_empty() {
            return;
        }
        let pod_ref = PodRef {
            namespace: id.0.clone(),
            name: id.1.clone(),
        };
        for ip in &ips {
            self.by_ip.insert(*ip, pod_ref.clone());
        }
        self.by_pod.insert(id, ips);
    }

    /// A pod was deleted.
    pub fn delete(&mut self, pod: &Pod) {
        if let Some(id) = pod_id(pod) {
            self.remove(&id);
        }
    }

    fn remove(&mut self, id: &(String, String)) {
        if let Some(ips) = self.by_pod.remove(id) {
            for ip in ips {
                // Only if the address still points at this pod (it may have been reused).
                if self
                    .by_ip
                    .get(&ip)
                    .is_some_and(|p| p.namespace == id.0 && p.name == id.1)
                {
                    self.by_ip.remove(&ip);
                }
            }
        }
    }

    /// Applies one watcher event; a relist replaces the whole index when it completes.
    pub fn handle(&mut self, event: watcher::Event<Pod>) {
        match event {
            watcher::Event::Apply(pod) => self.apply(&pod),
            watcher::Event::Delete(pod) => self.delete(&pod),
            watcher::Event::Init => self.relist = Some(Vec::new()),
            watcher::Event::InitApply(pod) => match &mut self.relist {
                Some(pods) => pods.push(pod),
                None => self.apply(&pod),
            },
            watcher::Event::InitDone => {
                let pods = self.relist.take().unwrap_or_default();
                self.by_ip.clear();
                self.by_pod.clear();
                for pod in &pods {
                    self.apply(pod);
                }
            }
        }
    }
}

fn pod_id(pod: &Pod) -> Option<(String, String)> {
    Some((pod.metadata.namespace.clone()?, pod.metadata.name.clone()?))
}

/// Every address of the pod: `status.podIPs` (dual stack), or `status.podIP`.
fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    let mut ips: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    if let Some(ip) = status.pod_ip.as_deref().and_then(|ip| ip.parse().ok())
        && !ips.contains(&ip)
    {
        ips.push(ip);
    }
    ips
}

/// Keeps `index` up to date with the pods of `node` until the watcher ends (it retries with
/// backoff on errors, so in practice: until the task is dropped).
pub async fn watch_local_pods(client: kube::Client, node: String, index: Arc<RwLock<PodIndex>>) {
    use kube::runtime::WatchStreamExt;
    let pods: kube::Api<Pod> = kube::Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut events = watcher(pods, config).default_backoff().boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(event) => index.write().expect("pod index lock").handle(event),
            Err(e) => tracing::warn!("watching the pods of node {node}: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodIP, PodSpec, PodStatus};
    use kube::api::ObjectMeta;

    fn pod(ns: &str, name: &str, ips: &[&str], host_network: bool, phase: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                host_network: Some(host_network),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                pod_ip: ips.first().map(|s| s.to_string()),
                pod_ips: Some(ips.iter().map(|ip| PodIP { ip: ip.to_string() }).collect()),
                ..Default::default()
            }),
        }
    }

    fn owner(index: &PodIndex, ip: &str) -> Option<String> {
        index
            .lookup(&ip.parse().unwrap())
            .map(|p| format!("{}/{}", p.namespace, p.name))
    }

    #[test]
    fn dual_stack_pods_own_both_addresses() {
        let mut index = PodIndex::default();
        index.apply(&pod(
            "shop",
            "web-1",
            &["10.1.0.5", "fd00::5"],
            false,
            "Running",
        ));
        assert_eq!(owner(&index, "10.1.0.5").as_deref(), Some("shop/web-1"));
        assert_eq!(owner(&index, "fd00::5").as_deref(), Some("shop/web-1"));
        assert_eq!(owner(&index, "10.1.0.6"), None);
    }

    #[test]
    fn host_network_and_finished_pods_own_nothing() {
        let mut index = PodIndex::default();
        index.apply(&pod("kube-system", "proxy", &["10.0.0.1"], true, "Running"));
        index.apply(&pod("batch", "job-1", &["10.1.0.9"], false, "Succeeded"));
        assert!(index.is_empty());
        assert_eq!(owner(&index, "10.0.0.1"), None);
    }

    #[test]
    fn deleted_pods_release_addresses_but_not_reused_ones() {
        let mut index = PodIndex::default();
        index.apply(&pod("shop", "old", &["10.1.0.7"], false, "Running"));
        // The address is reused by a new pod before the old one's delete event arrives.
        index.apply(&pod("shop", "new", &["10.1.0.7"], false, "Running"));
        index.delete(&pod("shop", "old", &["10.1.0.7"], false, "Running"));
        assert_eq!(owner(&index, "10.1.0.7").as_deref(), Some("shop/new"));
        index.delete(&pod("shop", "new", &[], false, "Running"));
        assert_eq!(owner(&index, "10.1.0.7"), None);
        assert!(index.is_empty());
    }

    #[test]
    fn a_relist_replaces_the_index() {
        let mut index = PodIndex::default();
        index.apply(&pod("shop", "gone", &["10.1.0.1"], false, "Running"));
        index.handle(watcher::Event::Init);
        index.handle(watcher::Event::InitApply(pod(
            "shop",
            "kept",
            &["10.1.0.2"],
            false,
            "Running",
        )));
        assert_eq!(
            owner(&index, "10.1.0.1").as_deref(),
            Some("shop/gone"),
            "until done"
        );
        index.handle(watcher::Event::InitDone);
        assert_eq!(owner(&index, "10.1.0.1"), None);
        assert_eq!(owner(&index, "10.1.0.2").as_deref(), Some("shop/kept"));
        assert_eq!(index.len(), 1);
    }
}
