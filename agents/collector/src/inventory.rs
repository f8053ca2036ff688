//! What the informers know about the cluster, and the rows it turns into.
//!
//! The informers feed objects in; the inventory keeps the projected objects (see
//! [`crate::objects`]), resolves each pod's owner chain to its top-level workload
//! (Pod → ReplicaSet → Deployment, Pod → Job → CronJob), and emits a `pods` or `workloads`
//! row whenever what Tally stores about an object changes (not on every status heartbeat).
//! `events` rows come from pod status changes (an OOM kill is visible in
//! `lastState.terminated.reason` even when no Event object is emitted, and restarts in
//! `restartCount`) and from Event objects (FailedScheduling, evictions, preemption).

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use kube::core::ObjectMeta;
use serde_json::json;

use crate::objects::{self, Container, Event, Hpa, Node, Other, Pod, Workload};

/// Namespace and name.
pub type Key = (String, String);

/// One object from an informer.
#[derive(Debug)]
pub enum Object {
    Pod(Pod),
    /// The kind (`Deployment`, `ReplicaSet`, `CronJob`, ...) and the object.
    Workload(&'static str, Workload),
    Hpa(Hpa),
    Node(Node),
    Event(Event),
    /// Objects that are only counted: namespaces, PVCs, PVs.
    Other(&'static str, Other),
}

/// Which informer an object came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Pod,
    Workload(&'static str),
    Hpa,
    Node,
    Event,
    Other(&'static str),
}

impl Kind {
    /// The name used in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Pod => "Pod",
            Kind::Workload(kind) | Kind::Other(kind) => kind,
            Kind::Hpa => "HorizontalPodAutoscaler",
            Kind::Node => "Node",
            Kind::Event => "Event",
        }
    }
}

impl Object {
    /// The informer this object belongs to.
    pub fn kind(&self) -> Kind {
        match self {
            Object::Pod(_) => Kind::Pod,
            Object::Workload(kind, _) => Kind::Workload(kind),
            Object::Hpa(_) => Kind::Hpa,
            Object::Node(_) => Kind::Node,
            Object::Event(_) => Kind::Event,
            Object::Other(kind, _) => Kind::Other(kind),
        }
    }

    fn meta(&self) -> &ObjectMeta {
        match self {
            Object::Pod(o) => &o.metadata,
            Object::Workload(_, o) => &o.metadata,
            Object::Hpa(o) => &o.metadata,
            Object::Node(o) => &o.metadata,
            Object::Event(o) => &o.metadata,
            Object::Other(_, o) => &o.metadata,
        }
    }

    /// Namespace (empty for cluster-scoped objects) and name.
    pub fn key(&self) -> Key {
        key(self.meta())
    }
}

fn key(meta: &ObjectMeta) -> Key {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// A row of the `pods` table.
#[derive(Debug, Clone, PartialEq)]
pub struct PodRow {
    pub time_ms: i64,
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub phase: String,
    pub workload_kind: String,
    pub workload_name: String,
    pub qos_class: Option<String>,
    pub ip: Option<String>,
    pub labels: Option<String>,
    pub start_time_ms: Option<i64>,
    pub deleted: bool,
    pub cpu_request_cores: Option<f64>,
    pub memory_request_bytes: Option<i64>,
    pub scheduling: Option<String>,
}

/// A row of the `workloads` table (one per container of a top-level workload).
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadRow {
    pub time_ms: i64,
    pub namespace: String,
    pub kind: String,
    pub name: String,
    pub container: String,
    pub replicas: Option<i64>,
    pub cpu_request_cores: Option<f64>,
    pub cpu_limit_cores: Option<f64>,
    pub memory_request_bytes: Option<i64>,
    pub memory_limit_bytes: Option<i64>,
    pub hpa_min_replicas: Option<i64>,
    pub hpa_max_replicas: Option<i64>,
    pub hpa_target_cpu_utilization: Option<f64>,
    pub labels: Option<String>,
    pub deleted: bool,
}

/// A row of the `events` table.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub time_ms: i64,
    pub namespace: String,
    pub pod: String,
    pub container: Option<String>,
    pub node: Option<String>,
    pub workload_kind: String,
    pub workload_name: String,
    pub reason: String,
    pub message: Option<String>,
    pub memory_limit_bytes: Option<i64>,
    pub restart_count: Option<i64>,
}

/// Rows waiting to be sent.
#[derive(Debug, Default)]
pub struct Rows {
    pub pods: Vec<PodRow>,
    pub workloads: Vec<WorkloadRow>,
    pub events: Vec<EventRow>,
}

impl Rows {
    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty() && self.workloads.is_empty() && self.events.is_empty()
    }
}

/// What a node looks like to `node_usage`: identity, placement, capacity.
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    pub name: String,
    pub ready: bool,
    pub node_group: Option<String>,
    pub zone: Option<String>,
    pub region: Option<String>,
    pub instance_type: Option<String>,
    pub capacity_type: Option<String>,
    pub cpu_capacity_cores: Option<f64>,
    pub memory_capacity_bytes: Option<i64>,
    pub cpu_allocatable_cores: Option<f64>,
    pub memory_allocatable_bytes: Option<i64>,
    pub labels: Option<String>,
    pub taints: Option<String>,
}

/// What a usage sample needs to know about a container: its pod's workload, its requests
/// and limits.
#[derive(Debug, Clone, Default)]
pub struct ContainerInfo {
    pub workload_kind: String,
    pub workload_name: String,
    pub cpu_request_cores: Option<f64>,
    pub cpu_limit_cores: Option<f64>,
    pub memory_request_bytes: Option<i64>,
    pub memory_limit_bytes: Option<i64>,
}

/// What was last seen of one container's status, to report each OOM kill and restart once.
#[derive(Debug, Clone, Default)]
struct ContainerSeen {
    restart_count: i32,
    last_oom_mark: Option<i64>,
}

/// The collector's picture of the cluster.
#[derive(Debug, Default)]
pub struct Inventory {
    pods: HashMap<Key, Pod>,
    workloads: HashMap<(&'static str, Key), Workload>,
    hpas: HashMap<Key, Hpa>,
    nodes: BTreeMap<String, Node>,
    others: HashMap<&'static str, HashSet<Key>>,
    event_counts: HashMap<String, i32>,
    pod_fingerprints: HashMap<Key, u64>,
    workload_fingerprints: HashMap<(&'static str, Key), u64>,
    containers_seen: HashMap<(Key, String), ContainerSeen>,
    /// Pods already reported Evicted / Unschedulable (until they are scheduled).
    evicted: HashSet<Key>,
    unschedulable: HashSet<Key>,
    dirty_pods: HashSet<Key>,
    dirty_workloads: HashSet<(&'static str, Key)>,
    out: Rows,
}

/// Kinds that are the top of an owner chain unless something owns them.
const TOP_LEVEL: [&str; 4] = ["Deployment", "StatefulSet", "DaemonSet", "CronJob"];

fn fingerprint(value: &impl std::fmt::Debug) -> u64 {
    let mut hasher = DefaultHasher::new();
    format!("{value:?}").hash(&mut hasher);
    hasher.finish()
}

fn millis(time: &Time) -> i64 {
    time.0.as_millisecond()
}

fn controller(refs: &Option<Vec<OwnerReference>>) -> Option<&OwnerReference> {
    let refs = refs.as_ref()?;
    refs.iter()
        .find(|r| r.controller == Some(true))
        .or_else(|| refs.first())
}

fn labels_json(meta: &ObjectMeta) -> Option<String> {
    Some(serde_json::to_string(meta.labels.as_ref().unwrap_or(&BTreeMap::new())).expect("labels"))
}

/// Effective requests of a pod as the scheduler sees them: the larger of the sum over its
/// containers and the largest init container, plus the pod overhead.
pub fn effective_requests(pod: &Pod) -> (Option<f64>, Option<i64>) {
    let sum = |resource: &str| {
        let values: Vec<f64> = pod
            .spec
            .containers
            .iter()
            .filter_map(|c| objects::cores(&c.resources.requests, resource))
            .collect();
        (!values.is_empty()).then(|| values.iter().sum::<f64>())
    };
    let init_max = |resource: &str| {
        pod.spec
            .init_containers
            .iter()
            .filter_map(|c| objects::cores(&c.resources.requests, resource))
            .fold(None, |max: Option<f64>, v| {
                Some(max.map_or(v, |m| m.max(v)))
            })
    };
    let effective = |resource: &str| {
        let value = match (sum(resource), init_max(resource)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let overhead = objects::cores(&pod.spec.overhead, resource);
        match (value, overhead) {
            (Some(v), Some(o)) => Some(v + o),
            (v, o) => v.or(o),
        }
    };
    (
        effective("cpu"),
        effective("memory").map(|v| v.round() as i64),
    )
}

fn scheduling_json(pod: &Pod) -> String {
    let tolerations: Vec<_> = pod
        .spec
        .tolerations
        .iter()
        .map(
            |t| json!({"key": t.key, "operator": t.operator, "value": t.value, "effect": t.effect}),
        )
        .collect();
    let required = pod
        .spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map(|s| serde_json::to_value(&s.node_selector_terms).expect("terms"))
        .unwrap_or_else(|| json!([]));
    let local_storage = pod
        .spec
        .volumes
        .iter()
        .any(|v| v.empty_dir.is_some() || v.host_path.is_some());
    json!({
        "node_selector": pod.spec.node_selector,
        "tolerations": tolerations,
        "required_node_affinity": required,
        "local_storage": local_storage,
    })
    .to_string()
}

fn container_resources(c: &Container) -> (Option<f64>, Option<f64>, Option<i64>, Option<i64>) {
    (
        objects::cores(&c.resources.requests, "cpu"),
        objects::cores(&c.resources.limits, "cpu"),
        objects::bytes(&c.resources.requests, "memory"),
        objects::bytes(&c.resources.limits, "memory"),
    )
}

/// The node group a node belongs to, from the label its provisioner sets.
fn node_group(labels: &BTreeMap<String, String>) -> Option<String> {
    [
        "eks.amazonaws.com/nodegroup",
        "cloud.google.com/gke-nodepool",
        "karpenter.sh/nodepool",
        "karpenter.sh/provisioner-name",
        "kubernetes.azure.com/agentpool",
        "agentpool",
    ]
    .iter()
    .find_map(|l| labels.get(*l).cloned())
}

/// `on_demand` or `spot`, from the labels of Karpenter, EKS, GKE or AKS.
fn capacity_type(labels: &BTreeMap<String, String>) -> Option<String> {
    let normalise = |v: &str| match v.to_ascii_lowercase().replace('-', "_").as_str() {
        "spot" | "preemptible" => Some("spot".to_string()),
        "on_demand" | "ondemand" | "regular" => Some("on_demand".to_string()),
        _ => None,
    };
    if let Some(v) = labels
        .get("karpenter.sh/capacity-type")
        .or_else(|| labels.get("eks.amazonaws.com/capacityType"))
    {
        return normalise(v);
    }
    if labels.get("cloud.google.com/gke-spot").map(String::as_str) == Some("true")
        || labels
            .get("cloud.google.com/gke-preemptible")
            .map(String::as_str)
            == Some("true")
    {
        return Some("spot".into());
    }
    if let Some(v) = labels.get("kubernetes.azure.com/scalesetpriority") {
        return normalise(v);
    }
    None
}

impl Inventory {
    /// Applies an object the informer added or changed.
    pub fn upsert(&mut self, object: Object, now_ms: i64) {
        let key = object.key();
        match object {
            Object::Pod(pod) => {
                self.pod_events(&key, &pod, now_ms);
                self.dirty_pods.insert(key.clone());
                self.pods.insert(key, pod);
            }
            Object::Workload(kind, workload) => {
                if kind == "ReplicaSet" || kind == "Job" {
                    // Pods owned by it may now resolve to a different top-level workload.
                    let name = &key.1;
                    for (pod_key, pod) in &self.pods {
                        if pod_key.0 == key.0
                            && controller(&pod.metadata.owner_references)
                                .is_some_and(|o| o.kind == kind && &o.name == name)
                        {
                            self.dirty_pods.insert(pod_key.clone());
                        }
                    }
                }
                self.dirty_workloads.insert((kind, key.clone()));
                self.workloads.insert((kind, key), workload);
            }
            Object::Hpa(hpa) => {
                self.mark_hpa_target(&key.0, &hpa);
                if let Some(old) = self.hpas.insert(key.clone(), hpa) {
                    self.mark_hpa_target(&key.0, &old);
                }
            }
            Object::Node(node) => {
                self.nodes.insert(key.1, node);
            }
            Object::Event(event) => self.event(event, now_ms),
            Object::Other(kind, _) => {
                self.others.entry(kind).or_default().insert(key);
            }
        }
    }

    /// Applies an object the informer saw deleted.
    pub fn delete(&mut self, kind: Kind, key: &Key, now_ms: i64) {
        match kind {
            Kind::Pod => {
                if let Some(pod) = self.pods.remove(key) {
                    let mut row = self.pod_row(&pod, now_ms);
                    row.deleted = true;
                    self.out.pods.push(row);
                }
                self.pod_fingerprints.remove(key);
                self.dirty_pods.remove(key);
                self.evicted.remove(key);
                self.unschedulable.remove(key);
                self.containers_seen.retain(|(k, _), _| k != key);
            }
            Kind::Workload(kind) => {
                let id = (kind, key.clone());
                if let Some(workload) = self.workloads.remove(&id)
                    && self.workload_fingerprints.remove(&id).is_some()
                {
                    for mut row in self.workload_rows(kind, &workload, now_ms) {
                        row.deleted = true;
                        self.out.workloads.push(row);
                    }
                }
                self.dirty_workloads.remove(&id);
            }
            Kind::Hpa => {
                if let Some(hpa) = self.hpas.remove(key) {
                    self.mark_hpa_target(&key.0, &hpa);
                }
            }
            Kind::Node => {
                self.nodes.remove(&key.1);
            }
            Kind::Event => {
                // Event objects expire; what they reported has been sent.
            }
            Kind::Other(kind) => {
                if let Some(keys) = self.others.get_mut(kind) {
                    keys.remove(key);
                }
            }
        }
    }

    /// The keys an informer's kind currently holds (to find deletions missed during a relist).
    pub fn keys(&self, kind: Kind) -> Vec<Key> {
        match kind {
            Kind::Pod => self.pods.keys().cloned().collect(),
            Kind::Workload(k) => self
                .workloads
                .keys()
                .filter(|(kind, _)| *kind == k)
                .map(|(_, key)| key.clone())
                .collect(),
            Kind::Hpa => self.hpas.keys().cloned().collect(),
            Kind::Node => self
                .nodes
                .keys()
                .map(|n| (String::new(), n.clone()))
                .collect(),
            Kind::Event => Vec::new(),
            Kind::Other(k) => self
                .others
                .get(k)
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default(),
        }
    }

    /// How many objects of each kind are held (for `/metrics`).
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        counts.insert("Pod", self.pods.len());
        counts.insert("HorizontalPodAutoscaler", self.hpas.len());
        counts.insert("Node", self.nodes.len());
        for (kind, _) in self.workloads.keys() {
            *counts.entry(*kind).or_insert(0) += 1;
        }
        for (kind, keys) in &self.others {
            counts.insert(*kind, keys.len());
        }
        counts
    }

    /// Forgets what was sent, so the next [`Inventory::take_rows`] writes a full snapshot.
    pub fn snapshot(&mut self) {
        self.pod_fingerprints.clear();
        self.workload_fingerprints.clear();
        self.dirty_pods.extend(self.pods.keys().cloned());
        self.dirty_workloads
            .extend(self.workloads.keys().map(|(k, key)| (*k, key.clone())));
    }

    /// The rows of everything that changed since the last call.
    pub fn take_rows(&mut self, now_ms: i64) -> Rows {
        for key in std::mem::take(&mut self.dirty_pods) {
            let Some(pod) = self.pods.get(&key) else {
                continue;
            };
            let row = self.pod_row(pod, now_ms);
            let print = fingerprint(&PodRow {
                time_ms: 0,
                ..row.clone()
            });
            if self.pod_fingerprints.insert(key, print) != Some(print) {
                self.out.pods.push(row);
            }
        }
        for id in std::mem::take(&mut self.dirty_workloads) {
            let Some(workload) = self.workloads.get(&id) else {
                continue;
            };
            let rows = self.workload_rows(id.0, workload, now_ms);
            if rows.is_empty() {
                continue;
            }
            let without_time: Vec<WorkloadRow> = rows
                .iter()
                .map(|r| WorkloadRow {
                    time_ms: 0,
                    ..r.clone()
                })
                .collect();
            let print = fingerprint(&without_time);
            if self.workload_fingerprints.insert(id, print) != Some(print) {
                self.out.workloads.extend(rows);
            }
        }
        std::mem::take(&mut self.out)
    }

    fn mark_hpa_target(&mut self, namespace: &str, hpa: &Hpa) {
        let target = &hpa.spec.scale_target_ref;
        if let Some(kind) = TOP_LEVEL
            .iter()
            .chain(["ReplicaSet"].iter())
            .find(|k| **k == target.kind)
        {
            self.dirty_workloads
                .insert((kind, (namespace.to_string(), target.name.clone())));
        }
    }

    /// The top-level workload that owns a pod: `(kind, name)`.
    pub fn owner_of(&self, pod: &Pod) -> (String, String) {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let Some(owner) = controller(&pod.metadata.owner_references) else {
            return ("Pod".into(), pod.metadata.name.clone().unwrap_or_default());
        };
        let parent = match owner.kind.as_str() {
            "ReplicaSet" | "Job" => {
                let kind = if owner.kind == "Job" {
                    "Job"
                } else {
                    "ReplicaSet"
                };
                self.workloads
                    .get(&(kind, (namespace.clone(), owner.name.clone())))
                    .and_then(|w| controller(&w.metadata.owner_references))
                    .map(|o| (o.kind.clone(), o.name.clone()))
                    .or_else(|| {
                        // The ReplicaSet is not known yet: a Deployment's ReplicaSet is named
                        // `<deployment>-<pod-template-hash>`.
                        let hash = pod.metadata.labels.as_ref()?.get("pod-template-hash")?;
                        let deployment = owner.name.strip_suffix(&format!("-{hash}"))?;
                        (kind == "ReplicaSet")
                            .then(|| ("Deployment".to_string(), deployment.to_string()))
                    })
            }
            _ => None,
        };
        parent.unwrap_or_else(|| (owner.kind.clone(), owner.name.clone()))
    }

    fn pod_row(&self, pod: &Pod, now_ms: i64) -> PodRow {
        let (namespace, name) = key(&pod.metadata);
        let (workload_kind, workload_name) = self.owner_of(pod);
        let (cpu, memory) = effective_requests(pod);
        PodRow {
            time_ms: now_ms,
            namespace,
            name,
            node: pod.spec.node_name.clone().unwrap_or_default(),
            phase: pod.status.phase.clone().unwrap_or_else(|| "Unknown".into()),
            workload_kind,
            workload_name,
            qos_class: pod.status.qos_class.clone(),
            ip: pod.status.pod_ip.clone(),
            labels: labels_json(&pod.metadata),
            start_time_ms: pod.status.start_time.as_ref().map(millis),
            deleted: false,
            cpu_request_cores: cpu,
            memory_request_bytes: memory,
            scheduling: Some(scheduling_json(pod)),
        }
    }

    fn workload_rows(&self, kind: &'static str, w: &Workload, now_ms: i64) -> Vec<WorkloadRow> {
        let top_level = if TOP_LEVEL.contains(&kind) {
            true
        } else {
            // A ReplicaSet or Job is reported only when nothing owns it.
            controller(&w.metadata.owner_references).is_none()
        };
        if !top_level {
            return Vec::new();
        }
        let (namespace, name) = key(&w.metadata);
        let replicas = match kind {
            "DaemonSet" => w.status.desired_number_scheduled,
            "Job" => Some(w.spec.parallelism.unwrap_or(1)),
            "CronJob" => Some(
                w.spec
                    .job_template
                    .as_ref()
                    .and_then(|j| j.spec.parallelism)
                    .unwrap_or(1),
            ),
            _ => Some(w.spec.replicas.unwrap_or(1)),
        };
        let hpa = self.hpas.iter().find_map(|((ns, _), hpa)| {
            (ns == &namespace
                && hpa.spec.scale_target_ref.kind == kind
                && hpa.spec.scale_target_ref.name == name)
                .then_some(hpa)
        });
        let labels = labels_json(&w.metadata);
        w.containers()
            .iter()
            .map(|c| {
                let (cpu_req, cpu_lim, mem_req, mem_lim) = container_resources(c);
                WorkloadRow {
                    time_ms: now_ms,
                    namespace: namespace.clone(),
                    kind: kind.to_string(),
                    name: name.clone(),
                    container: c.name.clone(),
                    replicas: replicas.map(i64::from),
                    cpu_request_cores: cpu_req,
                    cpu_limit_cores: cpu_lim,
                    memory_request_bytes: mem_req,
                    memory_limit_bytes: mem_lim,
                    hpa_min_replicas: hpa.map(|h| i64::from(h.spec.min_replicas.unwrap_or(1))),
                    hpa_max_replicas: hpa.and_then(|h| h.spec.max_replicas.map(i64::from)),
                    hpa_target_cpu_utilization: hpa.and_then(Hpa::cpu_target),
                    labels: labels.clone(),
                    deleted: false,
                }
            })
            .collect()
    }

    /// OOM kills, restarts, evictions and unschedulable pods, from a pod's new status.
    fn pod_events(&mut self, key: &Key, pod: &Pod, now_ms: i64) {
        let (workload_kind, workload_name) = self.owner_of(pod);
        let node = pod.spec.node_name.clone();
        let row = |reason: &str, time_ms: i64| EventRow {
            time_ms,
            namespace: key.0.clone(),
            pod: key.1.clone(),
            container: None,
            node: node.clone(),
            workload_kind: workload_kind.clone(),
            workload_name: workload_name.clone(),
            reason: reason.to_string(),
            message: None,
            memory_limit_bytes: None,
            restart_count: None,
        };
        let mut rows = Vec::new();
        for status in &pod.status.container_statuses {
            let memory_limit = pod
                .spec
                .containers
                .iter()
                .find(|c| c.name == status.name)
                .and_then(|c| objects::bytes(&c.resources.limits, "memory"));
            let seen = self
                .containers_seen
                .entry((key.clone(), status.name.clone()))
                .or_default();
            for terminated in [&status.last_state.terminated, &status.state.terminated]
                .into_iter()
                .flatten()
            {
                if terminated.reason.as_deref() != Some("OOMKilled") {
                    continue;
                }
                let time_ms = terminated.finished_at.as_ref().map(millis);
                // A kill is identified by when it ended (or, lacking that, the restart count).
                let mark = time_ms.unwrap_or(i64::from(status.restart_count));
                if seen.last_oom_mark == Some(mark) {
                    continue;
                }
                seen.last_oom_mark = Some(mark);
                rows.push(EventRow {
                    container: Some(status.name.clone()),
                    message: Some(format!(
                        "container {} was OOM-killed (exit code {})",
                        status.name, terminated.exit_code
                    )),
                    memory_limit_bytes: memory_limit,
                    restart_count: Some(i64::from(status.restart_count)),
                    ..row("OOMKilled", time_ms.unwrap_or(now_ms))
                });
            }
            if status.restart_count > seen.restart_count {
                let why = status
                    .last_state
                    .terminated
                    .as_ref()
                    .and_then(|t| t.reason.clone())
                    .unwrap_or_else(|| "unknown".into());
                rows.push(EventRow {
                    container: Some(status.name.clone()),
                    message: Some(format!(
                        "container {} restarted (last termination: {why})",
                        status.name
                    )),
                    memory_limit_bytes: memory_limit,
                    restart_count: Some(i64::from(status.restart_count)),
                    ..row("Restarted", now_ms)
                });
            }
            seen.restart_count = status.restart_count;
        }
        if pod.status.reason.as_deref() == Some("Evicted") && self.evicted.insert(key.clone()) {
            rows.push(EventRow {
                message: pod.status.message.clone(),
                ..row("Evicted", now_ms)
            });
        }
        let unschedulable = pod.status.conditions.iter().find(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
        });
        match unschedulable {
            Some(condition) if self.unschedulable.insert(key.clone()) => rows.push(EventRow {
                message: condition.message.clone(),
                ..row("Unschedulable", now_ms)
            }),
            Some(_) => {}
            None => {
                if pod.spec.node_name.is_some() {
                    self.unschedulable.remove(key);
                }
            }
        }
        self.out.events.extend(rows);
    }

    /// Event objects about pods: FailedScheduling, Evicted, Preempted (each once per count).
    fn event(&mut self, event: Event, now_ms: i64) {
        if event.involved_object.kind != "Pod" {
            return;
        }
        let reason = match event.reason.as_deref() {
            Some("FailedScheduling") => "Unschedulable",
            Some("Evicted") => "Evicted",
            Some("Preempted") => "Preempted",
            _ => return,
        };
        let uid = event.metadata.uid.clone().unwrap_or_default();
        let count = event.count.unwrap_or(1);
        if self.event_counts.insert(uid, count) == Some(count) {
            return;
        }
        let pod_key = (
            event.involved_object.namespace.clone().unwrap_or_default(),
            event.involved_object.name.clone(),
        );
        // The pod's status may have reported it already.
        let already = match reason {
            "Unschedulable" => !self.unschedulable.insert(pod_key.clone()),
            "Evicted" => !self.evicted.insert(pod_key.clone()),
            _ => false,
        };
        if already {
            return;
        }
        let (workload_kind, workload_name) = self
            .pods
            .get(&pod_key)
            .map(|p| self.owner_of(p))
            .unwrap_or_else(|| ("Pod".into(), pod_key.1.clone()));
        let time_ms = event
            .last_timestamp
            .as_ref()
            .map(millis)
            .or(event.event_time.as_ref().map(|t| t.0.as_millisecond()))
            .unwrap_or(now_ms);
        self.out.events.push(EventRow {
            time_ms,
            namespace: pod_key.0,
            pod: pod_key.1,
            container: None,
            node: event.source.host.clone(),
            workload_kind,
            workload_name,
            reason: reason.to_string(),
            message: event.message.clone(),
            memory_limit_bytes: None,
            restart_count: None,
        });
    }

    /// Every node with its placement labels and capacity.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        self.nodes
            .iter()
            .map(|(name, node)| {
                let labels = node.metadata.labels.clone().unwrap_or_default();
                let label = |keys: &[&str]| keys.iter().find_map(|k| labels.get(*k).cloned());
                let taints: Vec<_> = node
                    .spec
                    .taints
                    .iter()
                    .map(|t| json!({"key": t.key, "value": t.value, "effect": t.effect}))
                    .collect();
                NodeInfo {
                    name: name.clone(),
                    ready: node.ready(),
                    node_group: node_group(&labels),
                    zone: label(&[
                        "topology.kubernetes.io/zone",
                        "failure-domain.beta.kubernetes.io/zone",
                    ]),
                    region: label(&[
                        "topology.kubernetes.io/region",
                        "failure-domain.beta.kubernetes.io/region",
                    ]),
                    instance_type: label(&[
                        "node.kubernetes.io/instance-type",
                        "beta.kubernetes.io/instance-type",
                    ]),
                    capacity_type: capacity_type(&labels),
                    cpu_capacity_cores: objects::cores(&node.status.capacity, "cpu"),
                    memory_capacity_bytes: objects::bytes(&node.status.capacity, "memory"),
                    cpu_allocatable_cores: objects::cores(&node.status.allocatable, "cpu"),
                    memory_allocatable_bytes: objects::bytes(&node.status.allocatable, "memory"),
                    labels: Some(serde_json::to_string(&labels).expect("labels")),
                    taints: Some(serde_json::Value::from(taints).to_string()),
                }
            })
            .collect()
    }

    /// A container's workload, requests and limits, if the pod is known.
    pub fn container(&self, namespace: &str, pod: &str, container: &str) -> Option<ContainerInfo> {
        let p = self.pods.get(&(namespace.to_string(), pod.to_string()))?;
        let (workload_kind, workload_name) = self.owner_of(p);
        let c = p.spec.containers.iter().find(|c| c.name == container);
        let (cpu_req, cpu_lim, mem_req, mem_lim) = c.map(container_resources).unwrap_or_default();
        Some(ContainerInfo {
            workload_kind,
            workload_name,
            cpu_request_cores: cpu_req,
            cpu_limit_cores: cpu_lim,
            memory_request_bytes: mem_req,
            memory_limit_bytes: mem_lim,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    fn workload(json: serde_json::Value) -> Workload {
        serde_json::from_value(json).unwrap()
    }

    fn web_pod(restarts: i32, last: serde_json::Value) -> Pod {
        pod(serde_json::json!({
            "metadata": {"name": "web-7d9-x", "namespace": "shop", "labels": {"app": "web", "pod-template-hash": "7d9"},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9", "uid": "r", "controller": true}]},
            "spec": {"nodeName": "n1",
                     "containers": [{"name": "app", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}}},
                                    {"name": "side", "resources": {"requests": {"cpu": "50m"}}}],
                     "initContainers": [{"name": "init", "resources": {"requests": {"cpu": "1", "memory": "16Mi"}}}],
                     "tolerations": [{"key": "spot", "operator": "Exists", "effect": "NoSchedule"}],
                     "volumes": [{"name": "tmp", "emptyDir": {}}]},
            "status": {"phase": "Running", "podIP": "10.1.0.4", "qosClass": "Burstable",
                       "containerStatuses": [{"name": "app", "restartCount": restarts, "lastState": last}]}
        }))
    }

    fn oom(at: &str) -> serde_json::Value {
        serde_json::json!({"terminated": {"reason": "OOMKilled", "exitCode": 137, "finishedAt": at}})
    }

    #[test]
    fn pods_resolve_to_their_deployment_through_the_replicaset() {
        let mut inv = Inventory::default();
        // Before the ReplicaSet is known, the pod-template-hash names the Deployment.
        inv.upsert(Object::Pod(web_pod(0, serde_json::json!({}))), 1);
        let rows = inv.take_rows(1);
        assert_eq!(
            (
                rows.pods[0].workload_kind.as_str(),
                rows.pods[0].workload_name.as_str()
            ),
            ("Deployment", "web")
        );
        // Effective requests: max(sum of containers, largest init container).
        assert_eq!(rows.pods[0].cpu_request_cores, Some(1.0));
        assert_eq!(rows.pods[0].memory_request_bytes, Some(64 << 20));
        let scheduling: serde_json::Value =
            serde_json::from_str(rows.pods[0].scheduling.as_deref().unwrap()).unwrap();
        assert_eq!(scheduling["local_storage"], true);
        assert_eq!(scheduling["tolerations"][0]["key"], "spot");

        inv.upsert(Object::Workload("ReplicaSet", workload(serde_json::json!({
            "metadata": {"name": "web-7d9", "namespace": "shop",
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "d", "controller": true}]},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "app"}]}}}
        }))), 2);
        let rows = inv.take_rows(2);
        assert!(
            rows.pods.is_empty(),
            "nothing changed for the pod: {:?}",
            rows.pods
        );
        assert!(
            rows.workloads.is_empty(),
            "an owned ReplicaSet is not a top-level workload"
        );

        // A Job owned by a CronJob resolves to the CronJob.
        inv.upsert(Object::Workload("Job", workload(serde_json::json!({
            "metadata": {"name": "nightly-123", "namespace": "shop",
                         "ownerReferences": [{"apiVersion": "batch/v1beta1", "kind": "CronJob", "name": "nightly", "uid": "c", "controller": true}]}
        }))), 3);
        let job_pod = pod(
            serde_json::json!({"metadata": {"name": "nightly-123-abc", "namespace": "shop",
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "nightly-123", "uid": "j", "controller": true}]}}),
        );
        assert_eq!(
            inv.owner_of(&job_pod),
            ("CronJob".to_string(), "nightly".to_string())
        );
        let bare = pod(serde_json::json!({"metadata": {"name": "debug", "namespace": "shop"}}));
        assert_eq!(
            inv.owner_of(&bare),
            ("Pod".to_string(), "debug".to_string())
        );
    }

    #[test]
    fn an_oom_kill_in_pod_status_becomes_one_event_and_a_restart() {
        let mut inv = Inventory::default();
        inv.upsert(Object::Pod(web_pod(0, serde_json::json!({}))), 1);
        assert!(inv.take_rows(1).events.is_empty());
        inv.upsert(Object::Pod(web_pod(1, oom("2026-01-01T00:00:05Z"))), 2);
        let events = inv.take_rows(2).events;
        let reasons: Vec<&str> = events.iter().map(|e| e.reason.as_str()).collect();
        assert_eq!(reasons, ["OOMKilled", "Restarted"]);
        assert_eq!(events[0].memory_limit_bytes, Some(128 << 20));
        assert_eq!(events[0].restart_count, Some(1));
        assert_eq!(events[0].time_ms, 1_767_225_605_000, "the time of the kill");
        assert_eq!(events[0].workload_name, "web");
        // The same status again (a resync) reports nothing new.
        inv.upsert(Object::Pod(web_pod(1, oom("2026-01-01T00:00:05Z"))), 3);
        assert!(inv.take_rows(3).events.is_empty());
        // A second kill does.
        inv.upsert(Object::Pod(web_pod(2, oom("2026-01-01T00:01:00Z"))), 4);
        assert_eq!(inv.take_rows(4).events.len(), 2);
    }

    #[test]
    fn workload_rows_are_written_when_the_spec_changes_and_when_deleted() {
        let mut inv = Inventory::default();
        let deployment = |replicas: i32, cpu: &str| {
            Object::Workload(
                "Deployment",
                workload(serde_json::json!({
                    "metadata": {"name": "web", "namespace": "shop", "labels": {"team": "a"}},
                    "spec": {"replicas": replicas, "template": {"spec": {"containers": [
                        {"name": "app", "env": [{"name": "SECRET", "value": "x"}],
                         "resources": {"requests": {"cpu": cpu}, "limits": {"cpu": "1", "memory": "1Gi"}}}]}}},
                    "status": {"readyReplicas": 1}
                })),
            )
        };
        inv.upsert(deployment(1, "100m"), 1);
        let rows = inv.take_rows(1).workloads;
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (
                rows[0].replicas,
                rows[0].cpu_request_cores,
                rows[0].memory_limit_bytes
            ),
            (Some(1), Some(0.1), Some(1 << 30))
        );
        inv.upsert(deployment(1, "100m"), 2);
        assert!(
            inv.take_rows(2).workloads.is_empty(),
            "a status-only update writes nothing"
        );
        inv.upsert(deployment(3, "100m"), 3);
        assert_eq!(inv.take_rows(3).workloads[0].replicas, Some(3));
        inv.upsert(Object::Hpa(serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "minReplicas": 2, "maxReplicas": 6,
                     "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 75}}}]}
        })).unwrap()), 4);
        let rows = inv.take_rows(4).workloads;
        assert_eq!(
            (
                rows[0].hpa_min_replicas,
                rows[0].hpa_max_replicas,
                rows[0].hpa_target_cpu_utilization
            ),
            (Some(2), Some(6), Some(0.75))
        );
        inv.delete(
            Kind::Workload("Deployment"),
            &("shop".into(), "web".into()),
            5,
        );
        let rows = inv.take_rows(5).workloads;
        assert!(rows[0].deleted);
        inv.snapshot();
        assert!(
            inv.take_rows(6).workloads.is_empty(),
            "a deleted workload is not in the snapshot"
        );
    }

    #[test]
    fn nodes_carry_placement_labels_capacity_and_taints() {
        let mut inv = Inventory::default();
        inv.upsert(Object::Node(serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1", "labels": {"topology.kubernetes.io/zone": "us-east-1b", "topology.kubernetes.io/region": "us-east-1",
                         "node.kubernetes.io/instance-type": "c5.2xlarge", "karpenter.sh/capacity-type": "spot", "karpenter.sh/nodepool": "batch"}},
            "spec": {"taints": [{"key": "tally.dev/fake-node", "value": "true", "effect": "NoSchedule"}]},
            "status": {"capacity": {"cpu": "8", "memory": "16012196Ki"}, "allocatable": {"cpu": "7910m", "memory": "15307684Ki"},
                       "conditions": [{"type": "Ready", "status": "Unknown"}]}
        })).unwrap()), 1);
        let node = &inv.nodes()[0];
        assert!(!node.ready);
        assert_eq!(node.capacity_type.as_deref(), Some("spot"));
        assert_eq!(node.node_group.as_deref(), Some("batch"));
        assert_eq!(node.zone.as_deref(), Some("us-east-1b"));
        assert_eq!(node.cpu_allocatable_cores, Some(7.91));
        assert_eq!(node.memory_capacity_bytes, Some(16_012_196 * 1024));
        assert!(
            node.taints
                .as_deref()
                .unwrap()
                .contains("tally.dev/fake-node")
        );
    }
}
