//! Evicting pods through the API the cluster offers, so PodDisruptionBudgets decide.
//!
//! The eviction subresource (`pods/eviction`) is served as `policy/v1` from Kubernetes 1.22
//! and as `policy/v1beta1` before; which one is read from the core API's resource list
//! ([`discover`]) and the `Eviction` body is written in that version. The API server's
//! answer is sorted into [`Outcome`]s: a 429 (a PodDisruptionBudget does not allow the
//! disruption now, or the server is busy) is "try again later", never an error; a 404
//! means the pod is already gone. Pods a drain must not evict (DaemonSet pods, mirror pods
//! of static manifests, pods already terminating) are named by [`skip_reason`].

use axum::http;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList;
use kube::Client;
use serde_json::{Value, json};

/// The annotation the kubelet puts on a mirror pod (the API copy of a static pod).
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// The version of the `Eviction` kind the cluster serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvictionApi {
    /// `policy/v1` (Kubernetes 1.22 and later).
    V1,
    /// `policy/v1beta1` (before 1.22).
    V1beta1,
}

impl EvictionApi {
    pub fn api_version(self) -> &'static str {
        match self {
            EvictionApi::V1 => "policy/v1",
            EvictionApi::V1beta1 => "policy/v1beta1",
        }
    }
}

/// What became of one eviction request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The API server accepted it: the pod is being deleted.
    Evicted,
    /// The pod no longer exists (404): nothing left to do.
    Gone,
    /// Refused for now (429): a PodDisruptionBudget allows no disruption at the moment
    /// (or the API server asked to slow down). Retried on a later pass.
    Refused(String),
}

/// Why an eviction could not be asked for or failed for another reason than a 429 or 404.
#[derive(Debug, thiserror::Error)]
pub enum EvictError {
    #[error("cannot discover the eviction API: {0}")]
    Discover(String),
    #[error("evicting pod {namespace}/{name} failed: {source}")]
    Evict {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// The version the core API lists for `pods/eviction`, if it lists one.
pub fn eviction_api_in(resources: &APIResourceList) -> Option<EvictionApi> {
    let eviction = resources
        .resources
        .iter()
        .find(|r| r.name == "pods/eviction")?;
    match (eviction.group.as_deref(), eviction.version.as_deref()) {
        (Some("policy"), Some("v1")) => Some(EvictionApi::V1),
        (Some("policy"), Some("v1beta1")) => Some(EvictionApi::V1beta1),
        // Listed without a group/version (very old servers): the version they all serve.
        (None, None) | (Some(""), _) => Some(EvictionApi::V1beta1),
        _ => None,
    }
}

/// Asks the API server which `Eviction` version it serves.
pub async fn discover(client: &Client) -> Result<EvictionApi, EvictError> {
    let core = client
        .list_core_api_resources("v1")
        .await
        .map_err(|e| EvictError::Discover(e.to_string()))?;
    if let Some(api) = eviction_api_in(&core) {
        return Ok(api);
    }
    // Not listed with a version: whichever policy version the server offers.
    let groups = client
        .list_api_groups()
        .await
        .map_err(|e| EvictError::Discover(e.to_string()))?;
    let policy = groups.groups.iter().find(|g| g.name == "policy");
    match policy {
        Some(g) if g.versions.iter().any(|v| v.version == "v1") => Ok(EvictionApi::V1),
        Some(g) if g.versions.iter().any(|v| v.version == "v1beta1") => Ok(EvictionApi::V1beta1),
        _ => Err(EvictError::Discover(
            "the API server serves neither policy/v1 nor policy/v1beta1".into(),
        )),
    }
}

/// The `Eviction` object for one pod.
pub fn eviction_body(api: EvictionApi, namespace: &str, name: &str) -> Value {
    json!({
        "apiVersion": api.api_version(),
        "kind": "Eviction",
        "metadata": {"name": name, "namespace": namespace},
    })
}

/// Sorts the API server's answer: 429 is "later", 404 is "done", anything else an error.
pub fn outcome(result: Result<String, kube::Error>) -> Result<Outcome, kube::Error> {
    match result {
        Ok(_) => Ok(Outcome::Evicted),
        Err(kube::Error::Api(status)) if status.code == 429 => {
            let reason = if status.message.is_empty() {
                "too many requests".to_string()
            } else {
                status.message.clone()
            };
            Ok(Outcome::Refused(reason))
        }
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(Outcome::Gone),
        Err(other) => Err(other),
    }
}

/// Asks the API server to evict one pod (it checks every PodDisruptionBudget covering it).
pub async fn evict(
    client: &Client,
    api: EvictionApi,
    namespace: &str,
    name: &str,
) -> Result<Outcome, EvictError> {
    let fail = |source| EvictError::Evict {
        namespace: namespace.to_string(),
        name: name.to_string(),
        source,
    };
    let body = serde_json::to_vec(&eviction_body(api, namespace, name))
        .map_err(|e| fail(kube::Error::SerdeError(e)))?;
    let request = http::Request::post(format!(
        "/api/v1/namespaces/{namespace}/pods/{name}/eviction"
    ))
    .header(http::header::CONTENT_TYPE, "application/json")
    .body(body)
    .map_err(|e| fail(kube::Error::HttpError(e)))?;
    outcome(client.request_text(request).await).map_err(fail)
}

/// Why a drain leaves this pod alone, if it does: DaemonSet pods (the DaemonSet would put
/// them back at once, and they go with the node), mirror pods (the kubelet's static pods;
/// the API cannot evict them), and pods already terminating.
pub fn skip_reason(pod: &Pod) -> Option<&'static str> {
    if pod.metadata.deletion_timestamp.is_some() {
        return Some("already terminating");
    }
    if pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(MIRROR_ANNOTATION))
    {
        return Some("a mirror pod of a static manifest");
    }
    if pod.metadata.owner_references.as_ref().is_some_and(|refs| {
        refs.iter()
            .any(|r| r.kind == "DaemonSet" && r.controller == Some(true))
    }) {
        return Some("a DaemonSet pod");
    }
    None
}

/// Whether a controller (ReplicaSet, StatefulSet, Job, ...) owns the pod and would
/// re-create it elsewhere after an eviction.
pub fn managed(pod: &Pod) -> bool {
    pod.metadata
        .owner_references
        .as_ref()
        .is_some_and(|refs| refs.iter().any(|r| r.controller == Some(true)))
}

/// Whether the pod has finished (Succeeded or Failed): it holds nothing on its node.
pub fn finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{APIResource, OwnerReference};
    use kube::core::Status;

    fn resource(name: &str, group: Option<&str>, version: Option<&str>) -> APIResource {
        APIResource {
            name: name.into(),
            group: group.map(str::to_string),
            version: version.map(str::to_string),
            kind: "Eviction".into(),
            namespaced: true,
            singular_name: String::new(),
            verbs: vec!["create".into()],
            ..Default::default()
        }
    }

    fn list(resources: Vec<APIResource>) -> APIResourceList {
        APIResourceList {
            group_version: "v1".into(),
            resources,
        }
    }

    #[test]
    fn the_listed_version_of_pods_eviction_is_used() {
        // Kubernetes 1.20 lists it as policy/v1beta1, 1.22+ as policy/v1.
        let old = list(vec![
            resource("pods", None, None),
            resource("pods/eviction", Some("policy"), Some("v1beta1")),
        ]);
        assert_eq!(eviction_api_in(&old), Some(EvictionApi::V1beta1));
        let new = list(vec![resource("pods/eviction", Some("policy"), Some("v1"))]);
        assert_eq!(eviction_api_in(&new), Some(EvictionApi::V1));
        assert_eq!(
            eviction_api_in(&list(vec![resource("pods", None, None)])),
            None
        );
        assert_eq!(
            eviction_body(EvictionApi::V1beta1, "ns", "web-1"),
            json!({"apiVersion": "policy/v1beta1", "kind": "Eviction", "metadata": {"name": "web-1", "namespace": "ns"}})
        );
        assert_eq!(
            eviction_body(EvictionApi::V1, "ns", "web-1")["apiVersion"],
            "policy/v1"
        );
    }

    fn api_error(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(
            Status {
                code,
                message: message.into(),
                ..Status::failure(message, "")
            }
            .boxed(),
        )
    }

    #[test]
    fn a_429_is_later_a_404_is_done_and_others_are_errors() {
        assert_eq!(outcome(Ok("{}".into())).unwrap(), Outcome::Evicted);
        assert_eq!(
            outcome(Err(api_error(
                429,
                "Cannot evict pod as it would violate the pod's disruption budget."
            )))
            .unwrap(),
            Outcome::Refused(
                "Cannot evict pod as it would violate the pod's disruption budget.".into()
            )
        );
        assert_eq!(
            outcome(Err(api_error(404, "pods \"x\" not found"))).unwrap(),
            Outcome::Gone
        );
        assert!(outcome(Err(api_error(403, "forbidden"))).is_err());
        assert!(outcome(Err(api_error(500, "multiple PDBs"))).is_err());
    }

    fn pod(json: Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn daemonset_mirror_and_terminating_pods_are_skipped() {
        let plain = pod(json!({"metadata": {"name": "a", "namespace": "n",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1", "uid": "1", "controller": true}]}}));
        assert_eq!(skip_reason(&plain), None);
        let mut daemon = plain.clone();
        daemon.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "apps/v1".into(),
            kind: "DaemonSet".into(),
            name: "agent".into(),
            uid: "2".into(),
            controller: Some(true),
            block_owner_deletion: None,
        }]);
        assert_eq!(skip_reason(&daemon), Some("a DaemonSet pod"));
        let mirror = pod(
            json!({"metadata": {"name": "etcd-n1", "namespace": "kube-system",
            "annotations": {"kubernetes.io/config.mirror": "abc"}}}),
        );
        assert_eq!(
            skip_reason(&mirror),
            Some("a mirror pod of a static manifest")
        );
        let going = pod(json!({"metadata": {"name": "b", "namespace": "n",
            "deletionTimestamp": "2026-11-30T04:00:00Z"}}));
        assert_eq!(skip_reason(&going), Some("already terminating"));
        let done = pod(json!({"metadata": {"name": "job-1"}, "status": {"phase": "Succeeded"}}));
        assert!(finished(&done));
        assert!(!finished(&plain));
        // A bare pod would be lost: only controlled pods are evicted.
        assert!(managed(&plain));
        assert!(!managed(&mirror));
        assert!(!managed(&done));
    }
}
