//! The Kubernetes objects the collector watches, projected to the fields it needs.
//!
//! Each type deserializes only what Tally stores: everything else in the API server's JSON
//! (environment variables and their values, `envFrom`, annotations such as
//! `kubectl.kubernetes.io/last-applied-configuration` that repeat the whole spec, managed
//! fields, volumes' sources, commands, ...) is skipped by the deserializer and never held in
//! memory. This keeps the informers' memory small with 10,000 pods and means no secret-looking
//! value in a pod spec can reach the appliance. Every type implements [`kube::Resource`] with
//! an [`ApiResource`] as its dynamic type, so one type serves several API versions (CronJobs
//! in `batch/v1` or `batch/v1beta1`, HPAs in `autoscaling/v2`, `v2beta2` or `v1`).

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeSelector, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference, Time};
use kube::core::{ApiResource, DynamicResourceScope, ObjectMeta};
use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer};

/// The metadata fields the collector keeps; annotations and managed fields are dropped.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SlimMeta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    owner_references: Option<Vec<OwnerReference>>,
    creation_timestamp: Option<Time>,
    deletion_timestamp: Option<Time>,
}

fn slim_meta<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let m = SlimMeta::deserialize(d)?;
    Ok(ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        uid: m.uid,
        resource_version: m.resource_version,
        labels: m.labels,
        owner_references: m.owner_references,
        creation_timestamp: m.creation_timestamp,
        deletion_timestamp: m.deletion_timestamp,
        ..ObjectMeta::default()
    })
}

/// `null` in the JSON becomes the type's default.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

macro_rules! projected_resource {
    ($($ty:ident),*) => {$(
        impl kube::Resource for $ty {
            type DynamicType = ApiResource;
            type Scope = DynamicResourceScope;
            fn kind(dt: &ApiResource) -> Cow<'_, str> {
                dt.kind.as_str().into()
            }
            fn group(dt: &ApiResource) -> Cow<'_, str> {
                dt.group.as_str().into()
            }
            fn version(dt: &ApiResource) -> Cow<'_, str> {
                dt.version.as_str().into()
            }
            fn api_version(dt: &ApiResource) -> Cow<'_, str> {
                dt.api_version.as_str().into()
            }
            fn plural(dt: &ApiResource) -> Cow<'_, str> {
                dt.plural.as_str().into()
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    )*};
}

projected_resource!(Pod, Workload, Hpa, Node, Event, Other);

/// A container's name and resources: never its image, command, env or mounts.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub resources: Resources,
}

/// Requests and limits as the API server states them.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Resources {
    #[serde(default, deserialize_with = "nullable")]
    pub requests: BTreeMap<String, Quantity>,
    #[serde(default, deserialize_with = "nullable")]
    pub limits: BTreeMap<String, Quantity>,
}

/// A pod: where it runs, who owns it, what it requests, what constrains it, its state.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Pod {
    #[serde(deserialize_with = "slim_meta")]
    pub metadata: ObjectMeta,
    #[serde(default, deserialize_with = "nullable")]
    pub spec: PodSpec,
    #[serde(default, deserialize_with = "nullable")]
    pub status: PodStatus,
}

/// The parts of a pod spec Tally stores.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    pub node_name: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub containers: Vec<Container>,
    #[serde(default, deserialize_with = "nullable")]
    pub init_containers: Vec<Container>,
    #[serde(default, deserialize_with = "nullable")]
    pub overhead: BTreeMap<String, Quantity>,
    #[serde(default, deserialize_with = "nullable")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "nullable")]
    pub tolerations: Vec<Toleration>,
    pub affinity: Option<Affinity>,
    #[serde(default, deserialize_with = "nullable")]
    pub volumes: Vec<Volume>,
}

/// Only the required node affinity (what limits where a pod may be scheduled).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Affinity {
    pub node_affinity: Option<NodeAffinity>,
}

/// See [`Affinity`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeAffinity {
    pub required_during_scheduling_ignored_during_execution: Option<NodeSelector>,
}

/// Whether a volume ties the pod to its node (emptyDir, hostPath); nothing else of it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    pub empty_dir: Option<IgnoredAny>,
    pub host_path: Option<IgnoredAny>,
}

/// The parts of a pod's status Tally stores.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    pub phase: Option<String>,
    pub reason: Option<String>,
    pub message: Option<String>,
    #[serde(rename = "podIP")]
    pub pod_ip: Option<String>,
    pub qos_class: Option<String>,
    pub start_time: Option<Time>,
    #[serde(default, deserialize_with = "nullable")]
    pub conditions: Vec<Condition>,
    #[serde(default, deserialize_with = "nullable")]
    pub container_statuses: Vec<ContainerStatus>,
}

/// A pod or node condition.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: Option<String>,
    pub message: Option<String>,
}

/// A container's restarts and how it last ended.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    pub name: String,
    #[serde(default)]
    pub restart_count: i32,
    #[serde(default, deserialize_with = "nullable")]
    pub state: ContainerState,
    #[serde(default, deserialize_with = "nullable")]
    pub last_state: ContainerState,
}

/// Only the terminated state matters (OOM kills, restarts).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ContainerState {
    pub terminated: Option<Terminated>,
}

/// How a container ended.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Terminated {
    pub reason: Option<String>,
    #[serde(default)]
    pub exit_code: i32,
    pub finished_at: Option<Time>,
}

/// Any workload: Deployment, StatefulSet, DaemonSet, ReplicaSet, Job or CronJob. The pod
/// template is reduced to its containers' names and resources.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Workload {
    #[serde(deserialize_with = "slim_meta")]
    pub metadata: ObjectMeta,
    #[serde(default, deserialize_with = "nullable")]
    pub spec: WorkloadSpec,
    #[serde(default, deserialize_with = "nullable")]
    pub status: WorkloadStatus,
}

/// See [`Workload`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSpec {
    pub replicas: Option<i32>,
    /// Jobs (and a CronJob's job template).
    pub parallelism: Option<i32>,
    pub template: Option<Template>,
    /// CronJobs.
    pub job_template: Option<Box<JobTemplate>>,
}

/// A DaemonSet's replica count lives in its status.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadStatus {
    pub desired_number_scheduled: Option<i32>,
}

/// A pod template.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Template {
    #[serde(default, deserialize_with = "nullable")]
    pub spec: TemplateSpec,
}

/// A pod template's containers.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateSpec {
    #[serde(default, deserialize_with = "nullable")]
    pub containers: Vec<Container>,
}

/// A CronJob's job template.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct JobTemplate {
    #[serde(default, deserialize_with = "nullable")]
    pub spec: WorkloadSpec,
}

impl Workload {
    /// The containers of the pods this workload creates.
    pub fn containers(&self) -> &[Container] {
        let spec = match &self.spec.job_template {
            Some(job) => &job.spec,
            None => &self.spec,
        };
        spec.template
            .as_ref()
            .map(|t| t.spec.containers.as_slice())
            .unwrap_or(&[])
    }
}

/// A HorizontalPodAutoscaler in any of `autoscaling/v1`, `v2beta1`, `v2beta2` or `v2`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Hpa {
    #[serde(deserialize_with = "slim_meta")]
    pub metadata: ObjectMeta,
    #[serde(default, deserialize_with = "nullable")]
    pub spec: HpaSpec,
}

/// See [`Hpa`].
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HpaSpec {
    #[serde(default)]
    pub scale_target_ref: ScaleTarget,
    pub min_replicas: Option<i32>,
    pub max_replicas: Option<i32>,
    /// `autoscaling/v1`.
    #[serde(rename = "targetCPUUtilizationPercentage")]
    pub target_cpu_utilization_percentage: Option<i32>,
    /// `autoscaling/v2*`.
    #[serde(default, deserialize_with = "nullable")]
    pub metrics: Vec<HpaMetric>,
}

/// What an HPA scales.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct ScaleTarget {
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
}

/// One metric of a `v2*` HPA; only resource metrics are read.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct HpaMetric {
    #[serde(rename = "type", default)]
    pub type_: String,
    pub resource: Option<HpaResourceMetric>,
}

/// A resource metric target (`v2beta1` names it `targetAverageUtilization`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HpaResourceMetric {
    #[serde(default)]
    pub name: String,
    pub target: Option<HpaTarget>,
    pub target_average_utilization: Option<i32>,
}

/// See [`HpaResourceMetric`].
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HpaTarget {
    pub average_utilization: Option<i32>,
}

impl Hpa {
    /// The CPU utilisation target as a fraction of the request (0.8 for 80 %).
    pub fn cpu_target(&self) -> Option<f64> {
        if let Some(percent) = self.spec.target_cpu_utilization_percentage {
            return Some(f64::from(percent) / 100.0);
        }
        self.spec
            .metrics
            .iter()
            .filter(|m| m.type_ == "Resource")
            .filter_map(|m| m.resource.as_ref())
            .filter(|r| r.name == "cpu")
            .find_map(|r| {
                r.target
                    .as_ref()
                    .and_then(|t| t.average_utilization)
                    .or(r.target_average_utilization)
            })
            .map(|percent| f64::from(percent) / 100.0)
    }
}

/// A node: labels (zone, region, instance type, capacity type), taints, capacity, readiness.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Node {
    #[serde(deserialize_with = "slim_meta")]
    pub metadata: ObjectMeta,
    #[serde(default, deserialize_with = "nullable")]
    pub spec: NodeSpec,
    #[serde(default, deserialize_with = "nullable")]
    pub status: NodeStatus,
}

/// See [`Node`].
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NodeSpec {
    #[serde(default, deserialize_with = "nullable")]
    pub taints: Vec<Taint>,
}

/// See [`Node`].
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NodeStatus {
    #[serde(default, deserialize_with = "nullable")]
    pub capacity: BTreeMap<String, Quantity>,
    #[serde(default, deserialize_with = "nullable")]
    pub allocatable: BTreeMap<String, Quantity>,
    #[serde(default, deserialize_with = "nullable")]
    pub conditions: Vec<Condition>,
}

impl Node {
    /// Whether the kubelet reports Ready (only those are scraped).
    pub fn ready(&self) -> bool {
        self.status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    }
}

/// A core/v1 Event: what happened to which object.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    #[serde(deserialize_with = "slim_meta")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub involved_object: InvolvedObject,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub count: Option<i32>,
    pub last_timestamp: Option<Time>,
    pub event_time: Option<MicroTime>,
    #[serde(default, deserialize_with = "nullable")]
    pub source: EventSource,
}

/// The object an event is about.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct InvolvedObject {
    #[serde(default)]
    pub kind: String,
    pub namespace: Option<String>,
    #[serde(default)]
    pub name: String,
}

/// Which component reported an event, on which node.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct EventSource {
    pub host: Option<String>,
}

/// Objects the collector only counts for now (namespaces, PVCs, PVs): metadata only.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Other {
    #[serde(deserialize_with = "slim_meta")]
    pub metadata: ObjectMeta,
}

/// Parses a Kubernetes quantity (`250m`, `1.5`, `128Mi`, `1G`, `2e3`) as a number.
pub fn parse_quantity(text: &str) -> Option<f64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        // Divided, not multiplied, so 250m is exactly 0.25.
        "n" => return Some(value / 1e9),
        "u" => return Some(value / 1e6),
        "m" => return Some(value / 1e3),
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exponent if exponent.starts_with(['e', 'E']) => 10f64.powi(exponent[1..].parse().ok()?),
        _ => return None,
    };
    Some(value * factor)
}

/// A quantity of a resource map in cores (CPU).
pub fn cores(map: &BTreeMap<String, Quantity>, resource: &str) -> Option<f64> {
    map.get(resource).and_then(|q| parse_quantity(&q.0))
}

/// A quantity of a resource map in bytes (memory, storage).
pub fn bytes(map: &BTreeMap<String, Quantity>, resource: &str) -> Option<i64> {
    map.get(resource)
        .and_then(|q| parse_quantity(&q.0))
        .map(|v| v.round() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_in_every_notation() {
        assert_eq!(parse_quantity("250m"), Some(0.25));
        assert_eq!(parse_quantity("2"), Some(2.0));
        assert_eq!(parse_quantity("1.5"), Some(1.5));
        assert_eq!(parse_quantity("128Mi"), Some(134_217_728.0));
        assert_eq!(parse_quantity("1G"), Some(1e9));
        assert_eq!(parse_quantity("15307684Ki"), Some(15_307_684.0 * 1024.0));
        assert_eq!(parse_quantity("2e3"), Some(2000.0));
        assert_eq!(parse_quantity("100n"), Some(100e-9));
        assert_eq!(parse_quantity("lots"), None);
        assert_eq!(parse_quantity("5Zi"), None);
    }

    #[test]
    fn a_pod_keeps_no_env_values_annotations_or_commands() {
        let json = serde_json::json!({
            "metadata": {
                "name": "web-1", "namespace": "shop", "uid": "u1", "resourceVersion": "7",
                "labels": {"app": "web"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "SECRET_TOKEN=tally-canary-1"},
                "managedFields": [{"manager": "kubectl"}],
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9", "uid": "r1", "controller": true}]
            },
            "spec": {
                "nodeName": "n1",
                "containers": [{
                    "name": "app", "image": "shop:1", "command": ["sh", "-c", "tally-canary-2"],
                    "env": [{"name": "SECRET_TOKEN", "value": "tally-canary-3"}],
                    "envFrom": [{"secretRef": {"name": "creds"}}],
                    "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "1"}}
                }],
                "volumes": [{"name": "scratch", "emptyDir": {}}, {"name": "creds", "secret": {"secretName": "creds"}}],
                "tolerations": [{"key": "spot", "operator": "Exists", "effect": "NoSchedule"}]
            },
            "status": {"phase": "Running", "podIP": "10.0.0.5", "qosClass": "Burstable",
                "containerStatuses": [{"name": "app", "restartCount": 2, "image": "x",
                    "state": {"running": {}},
                    "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137, "finishedAt": "2026-01-01T00:00:00Z"}}}]}
        });
        let pod: Pod = serde_json::from_value(json).unwrap();
        let kept = format!("{pod:?}");
        assert!(!kept.contains("tally-canary"), "{kept}");
        assert!(!kept.contains("SECRET_TOKEN"), "{kept}");
        assert!(!kept.contains("creds"), "{kept}");
        assert_eq!(pod.spec.containers[0].name, "app");
        assert_eq!(
            cores(&pod.spec.containers[0].resources.requests, "cpu"),
            Some(0.25)
        );
        assert_eq!(pod.status.pod_ip.as_deref(), Some("10.0.0.5"));
        assert!(pod.spec.volumes[0].empty_dir.is_some());
        let status = &pod.status.container_statuses[0];
        assert_eq!(status.restart_count, 2);
        assert_eq!(
            status
                .last_state
                .terminated
                .as_ref()
                .unwrap()
                .reason
                .as_deref(),
            Some("OOMKilled")
        );
    }

    #[test]
    fn hpa_cpu_targets_read_from_every_api_version() {
        let v1: Hpa = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "h"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 5,
                     "targetCPUUtilizationPercentage": 70}
        }))
        .unwrap();
        assert_eq!(v1.cpu_target(), Some(0.7));
        let v2: Hpa = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "h"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "minReplicas": 2, "maxReplicas": 5,
                     "metrics": [{"type": "Resource", "resource": {"name": "memory", "target": {"type": "Utilization", "averageUtilization": 90}}},
                                 {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]}
        }))
        .unwrap();
        assert_eq!(v2.cpu_target(), Some(0.8));
        let v2beta1: Hpa = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "h"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 5,
                     "metrics": [{"type": "Resource", "resource": {"name": "cpu", "targetAverageUtilization": 60}}]}
        }))
        .unwrap();
        assert_eq!(v2beta1.cpu_target(), Some(0.6));
    }

    #[test]
    fn a_cronjob_template_yields_its_containers() {
        let cron: Workload = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "nightly"},
            "spec": {"schedule": "0 0 * * *", "jobTemplate": {"spec": {"template": {"spec": {
                "containers": [{"name": "run", "resources": {"requests": {"memory": "1Gi"}}}]}}}}}
        }))
        .unwrap();
        assert_eq!(cron.containers()[0].name, "run");
    }
}
