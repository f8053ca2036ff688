//! The updater: for a workload whose Policy applies recommendations through the admission
//! webhook (`applyMethod: webhook`), the workload spec is never written, so running pods
//! keep their old requests until they are re-created. The updater finds the running pods
//! whose requests differ from the recommended ones (as the policies bound them) by more
//! than a threshold (`--updater-threshold-percent`, default 10 %) and evicts them gradually:
//! at most one pod per workload per pass, only while every pod of the workload is Ready and
//! none is terminating, and only through the eviction API ([`crate::evict`]), so
//! PodDisruptionBudgets decide (a refusal is retried on a later pass). The webhook gives
//! the replacement the new requests. It runs only inside the policies' time windows (the
//! reconcile pass checks them before it calls [`Reconciler::update_pods`]).
//!
//! A safeguard: when a pod created after the updater's last eviction of the workload still
//! differs, the webhook did not set its requests (not installed, down, or the pod lacks the
//! opt-in label), so evicting more would only churn pods. The updater then evicts nothing
//! more for that workload and says so in the recommendation's status.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DynamicObject, ListParams};
use kube::{Api, ResourceExt};

use crate::appliance::ActionRow;
use crate::crd::{Resources, WorkloadKind, WorkloadRecommendation};
use crate::evict::{self, Outcome};
use crate::quantity;
use crate::reconcile::{ReconcileError, Reconciler};

/// Flags of the updater.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// Evict a pod when one of its requests is further than this from the target, in
    /// percent of the target.
    pub threshold_percent: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            threshold_percent: 10.0,
        }
    }
}

/// The requests of each container of a pod, by name.
pub fn pod_requests(pod: &Pod) -> BTreeMap<String, Resources> {
    let mut out = BTreeMap::new();
    for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
        let requests = c.resources.as_ref().and_then(|r| r.requests.as_ref());
        let q = |name: &str| {
            requests
                .and_then(|r| r.get(name))
                .and_then(|v| quantity::parse(&v.0).ok())
        };
        out.insert(
            c.name.clone(),
            Resources {
                cpu_request_cores: q("cpu"),
                memory_request_bytes: q("memory").map(|v| v.round() as i64),
                ..Default::default()
            },
        );
    }
    out
}

/// How one request differs from its target by more than `threshold` percent, in words;
/// `None` when it is close enough (or there is no target).
fn request_differs(
    what: &str,
    have: Option<f64>,
    want: Option<f64>,
    threshold: f64,
    show: fn(f64) -> String,
) -> Option<String> {
    let want = want?;
    let differs = match have {
        None => true,
        Some(have) if want == 0.0 => have != 0.0,
        Some(have) => (have - want).abs() / want * 100.0 > threshold,
    };
    differs.then(|| {
        format!(
            "{what} {} (recommended {})",
            have.map_or("unset".into(), show),
            show(want)
        )
    })
}

/// Why the pod's requests differ from the targets (per container) by more than the
/// threshold, or `None` when every container the targets name is close enough.
pub fn differences(
    pod: &BTreeMap<String, Resources>,
    targets: &BTreeMap<String, Resources>,
    threshold: f64,
) -> Option<String> {
    let mut out = Vec::new();
    for (container, target) in targets {
        let Some(have) = pod.get(container) else {
            continue;
        };
        let cpu = request_differs(
            "cpu",
            have.cpu_request_cores,
            target.cpu_request_cores,
            threshold,
            quantity::cpu,
        );
        let memory = request_differs(
            "memory",
            have.memory_request_bytes.map(|v| v as f64),
            target.memory_request_bytes.map(|v| v as f64),
            threshold,
            |v| quantity::memory(v.round() as i64),
        );
        for d in [cpu, memory].into_iter().flatten() {
            out.push(format!("{container}: {d}"));
        }
    }
    (!out.is_empty()).then(|| out.join(", "))
}

/// Whether the workload controls the pod (a Deployment through its ReplicaSets, named
/// `<deployment>-<hash>`).
pub fn owned_by(pod: &Pod, kind: WorkloadKind, name: &str) -> bool {
    pod.owner_references().iter().any(|r| {
        r.controller == Some(true)
            && match kind {
                WorkloadKind::Deployment => {
                    r.kind == "ReplicaSet"
                        && r.name
                            .strip_prefix(name)
                            .and_then(|rest| rest.strip_prefix('-'))
                            .is_some_and(|hash| !hash.is_empty() && !hash.contains('-'))
                }
                other => r.kind == other.as_str() && r.name == name,
            }
    })
}

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn created_ms(pod: &Pod) -> i64 {
    pod.metadata
        .creation_timestamp
        .as_ref()
        .map_or(0, |t| t.0.as_millisecond())
}

impl Reconciler {
    /// Evicts at most one pod of the workload whose requests differ from `targets`, and says
    /// what it did or waits for (a phrase for the recommendation's status).
    pub(crate) async fn update_pods(
        &mut self,
        wr: &WorkloadRecommendation,
        workload: &DynamicObject,
        targets: &BTreeMap<String, Resources>,
        actor: &str,
        policy: &str,
        now: DateTime<Utc>,
    ) -> Result<String, ReconcileError> {
        let ns = wr.namespace().unwrap_or_default();
        let kind = wr.spec.target.kind;
        let name = &wr.spec.target.name;
        let threshold = self.updater.threshold_percent;
        let selector = workload.data["spec"]["selector"]["matchLabels"]
            .as_object()
            .map(|labels| {
                labels
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        if selector.is_empty() {
            return Ok("the updater cannot find its pods (no spec.selector.matchLabels)".into());
        }
        let pods_api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let mut pods: Vec<Pod> = pods_api
            .list(&ListParams::default().labels(&selector))
            .await?
            .items
            .into_iter()
            .filter(|p| owned_by(p, kind, name))
            .collect();
        pods.sort_by_key(created_ms);
        let key = format!("{ns}/{}/{name}", kind.as_str());
        let last_eviction = self.drain.last_eviction.get(&key).copied();

        let mut differing = Vec::new();
        let mut settling = Vec::new();
        for pod in &pods {
            if evict::finished(pod) {
                continue;
            }
            let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            if pod.metadata.deletion_timestamp.is_some() || !running || !ready(pod) {
                settling.push(pod.name_any());
                continue;
            }
            if let Some(why) = differences(&pod_requests(pod), targets, threshold) {
                differing.push((pod, why));
            }
        }
        if differing.is_empty() {
            return Ok(format!(
                "the updater finds every running pod within {threshold}% of these requests"
            ));
        }
        // Seconds are all a creation timestamp holds: a pod of the eviction's second counts
        // as created after it.
        if let Some(at) = last_eviction
            && let Some((pod, why)) = differing
                .iter()
                .find(|(p, _)| created_ms(p) >= at.timestamp() * 1000)
        {
            return Ok(format!(
                "pod {} was created after the updater's last eviction and still differs ({why}): the admission webhook did not set its requests, so the updater evicts no more pods of {} {name}",
                pod.name_any(),
                kind.as_str()
            ));
        }
        if !settling.is_empty() {
            return Ok(format!(
                "{} pod(s) differ by more than {threshold}%; the updater waits until {} is Ready",
                differing.len(),
                settling.join(", ")
            ));
        }
        let (pod, why) = &differing[0];
        let pod_name = pod.name_any();
        let uid = pod.uid().unwrap_or_default();
        let eviction_api = self.eviction_api().await?;
        let action = |result: &str, message: String| ActionRow {
            recommendation_id: Some(format!("{}/{ns}/{}/{name}", wr.spec.run_id, kind.as_str())),
            operation: "evict".into(),
            namespace: ns.clone(),
            target_kind: "Pod".into(),
            target_name: pod_name.clone(),
            actor: actor.into(),
            policy: Some(policy.into()),
            before: None,
            after: None,
            result: result.into(),
            message: Some(message),
        };
        let client = self.drain.eviction_client.as_ref().unwrap_or(&self.client);
        let summary = match evict::evict(client, eviction_api, &ns, &pod_name)
            .await
            .map_err(|e| ReconcileError::Other(e.to_string()))?
        {
            Outcome::Evicted => {
                self.drain.last_eviction.insert(key, now);
                let row = action(
                    "evicted",
                    format!(
                        "its requests differ from the recommendation by more than {threshold}% ({why}); the webhook sets them on the replacement"
                    ),
                );
                self.log_actions(&[row]).await;
                format!(
                    "the updater evicted pod {pod_name} ({why}); {} more differ",
                    differing.len() - 1
                )
            }
            Outcome::Gone => format!("pod {pod_name} is gone already"),
            Outcome::Refused(reason) => {
                if self.drain.refusals_logged.insert(uid) {
                    let row = action("refused", format!("{reason} (retried on a later pass)"));
                    self.log_actions(&[row]).await;
                }
                format!(
                    "{} pod(s) differ; a PodDisruptionBudget allows no eviction of {pod_name} now (retried next pass)",
                    differing.len()
                )
            }
        };
        Ok(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    fn target(cpu: f64, memory_mi: i64) -> BTreeMap<String, Resources> {
        BTreeMap::from([(
            "main".to_string(),
            Resources {
                cpu_request_cores: Some(cpu),
                memory_request_bytes: Some(memory_mi << 20),
                ..Default::default()
            },
        )])
    }

    #[test]
    fn pods_further_than_the_threshold_differ() {
        let p = pod(
            json!({"metadata": {"name": "web-0"}, "spec": {"containers": [
                {"name": "main", "resources": {"requests": {"cpu": "200m", "memory": "128Mi"}}},
                {"name": "side", "resources": {"requests": {"cpu": "1"}}}
            ]}}),
        );
        let requests = pod_requests(&p);
        assert_eq!(requests["main"].cpu_request_cores, Some(0.2));
        assert_eq!(requests["main"].memory_request_bytes, Some(128 << 20));
        // 200m against 100m: 100 % away.
        let why = differences(&requests, &target(0.1, 128), 10.0).expect("differs");
        assert_eq!(why, "main: cpu 200m (recommended 100m)");
        // 200m against 190m: 5 %, inside 10 %.
        assert_eq!(differences(&requests, &target(0.19, 130), 10.0), None);
        // ... but not inside 2 %.
        assert!(differences(&requests, &target(0.19, 128), 2.0).is_some());
        // A request the pod does not set differs.
        let bare =
            pod(json!({"metadata": {"name": "x"}, "spec": {"containers": [{"name": "main"}]}}));
        assert_eq!(
            differences(&pod_requests(&bare), &target(0.1, 64), 10.0).unwrap(),
            "main: cpu unset (recommended 100m), main: memory unset (recommended 64Mi)"
        );
        // Containers without a target are not looked at.
        assert_eq!(differences(&requests, &BTreeMap::new(), 10.0), None);
    }

    #[test]
    fn pods_belong_to_their_controller() {
        let owned = |kind: &str, name: &str| {
            pod(json!({"metadata": {"name": "p", "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": "1", "controller": true}
            ]}}))
        };
        let rs = owned("ReplicaSet", "web-5d9c7f");
        assert!(owned_by(&rs, WorkloadKind::Deployment, "web"));
        // `web-api`'s ReplicaSet is not `web`'s.
        assert!(!owned_by(
            &owned("ReplicaSet", "web-api-5d9c7f"),
            WorkloadKind::Deployment,
            "web"
        ));
        assert!(owned_by(
            &owned("StatefulSet", "db"),
            WorkloadKind::StatefulSet,
            "db"
        ));
        assert!(!owned_by(
            &owned("StatefulSet", "db"),
            WorkloadKind::Deployment,
            "db"
        ));
    }
}
