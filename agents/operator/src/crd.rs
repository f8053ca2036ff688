//! The operator's custom resources (group `tally.dev`, version `v1alpha1`), defined once as
//! Rust structs. The CRD YAML for the chart is generated from them (`tally-agent crds`), so
//! the schema the API server enforces and the types the operator reads can never drift.
//!
//! Units follow the wire crate: CPU in cores, memory in bytes, money in US dollars per
//! month. Policy bounds are Kubernetes quantities (`250m`, `2`, `512Mi`) because people
//! write them by hand.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResource;
use kube::core::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of every Tally resource.
pub const GROUP: &str = "tally.dev";
/// The finalizer that lets the operator restore a workload before its recommendation goes.
pub const FINALIZER: &str = "tally.dev/rollback";
/// The field manager of everything the operator applies.
pub const FIELD_MANAGER: &str = "tally-operator";

/// A Kubernetes quantity: a decimal number with an optional SI or binary suffix.
pub const QUANTITY_PATTERN: &str =
    r"^[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+|[numkMGTPE]|Ki|Mi|Gi|Ti|Pi|Ei)?$";

/// What Tally recommends for one workload: per-container requests and limits beside the
/// values set now, replicas and HPA settings, how sure the analysis is, why, and the
/// projected monthly savings. The operator creates one per workload from the appliance's
/// latest analysis run; whether it is applied is decided by the Policies.
// One `printcolumn(...)` per column: clippy reads the repeats as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[kube(
    group = "tally.dev",
    version = "v1alpha1",
    kind = "WorkloadRecommendation",
    namespaced,
    status = "WorkloadRecommendationStatus",
    shortname = "wrec",
    category = "tally",
    printcolumn(name = "Kind", type_ = "string", json_path = ".spec.target.kind"),
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.target.name"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Savings",
        type_ = "number",
        description = "Projected savings, US dollars per month",
        json_path = ".spec.savingsMonthlyUsd"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRecommendationSpec {
    /// The workload, in the recommendation's namespace.
    pub target: TargetRef,
    /// The analysis run this recommendation comes from.
    pub run_id: String,
    /// Requests and limits per container.
    #[serde(default)]
    pub containers: Vec<ContainerRecommendation>,
    /// Replica count, when the analysis recommends one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<ReplicasRecommendation>,
    /// HorizontalPodAutoscaler settings, when the workload has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hpa: Option<HpaRecommendation>,
    /// How sure the analysis is, 0 to 1 (grows with the length of the history).
    #[schemars(range(min = 0.0, max = 1.0))]
    pub confidence: f64,
    /// Why, in words.
    pub why: String,
    /// Projected savings, US dollars per month.
    pub savings_monthly_usd: f64,
    /// A person's decision: `Rejected` stops the operator from applying it and, if it was
    /// applied, restores the previous spec. Set by people, never by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
}

/// The workload a recommendation is for.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    pub kind: WorkloadKind,
    #[schemars(length(min = 1))]
    pub name: String,
}

/// The workload kinds the operator can change.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, JsonSchema)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
}

impl WorkloadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "deployments",
            WorkloadKind::StatefulSet => "statefulsets",
            WorkloadKind::DaemonSet => "daemonsets",
        }
    }

    pub fn parse(kind: &str) -> Option<Self> {
        match kind {
            "Deployment" => Some(WorkloadKind::Deployment),
            "StatefulSet" => Some(WorkloadKind::StatefulSet),
            "DaemonSet" => Some(WorkloadKind::DaemonSet),
            _ => None,
        }
    }
}

/// One container: what is set now and what Tally recommends.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerRecommendation {
    pub name: String,
    pub current: Resources,
    pub recommended: Resources,
}

/// Requests and limits (absent: not set / no recommendation).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub cpu_request_cores: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub cpu_limit_cores: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub memory_request_bytes: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub memory_limit_bytes: Option<i64>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicasRecommendation {
    pub current: Option<i64>,
    pub recommended: Option<i64>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HpaRecommendation {
    pub current_min_replicas: Option<i64>,
    pub recommended_min_replicas: Option<i64>,
    pub current_max_replicas: Option<i64>,
    pub recommended_max_replicas: Option<i64>,
    /// A fraction (0.7 is 70 %).
    pub current_target_cpu_utilization: Option<f64>,
    pub recommended_target_cpu_utilization: Option<f64>,
}

/// A person's decision on a recommendation.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
pub enum Approval {
    Approved,
    Rejected,
}

/// Where a recommendation stands.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, JsonSchema)]
pub enum Phase {
    /// Not applied: no policy allows it yet (none covers it, or audit-only).
    #[default]
    Pending,
    /// An auto-apply policy allows it; waiting for its time window.
    Approved,
    /// The workload carries the recommended values.
    Applied,
    /// A person rejected it; nothing is applied.
    Rejected,
    /// It was applied and the previous spec has been restored.
    RolledBack,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Approved => "Approved",
            Phase::Applied => "Applied",
            Phase::Rejected => "Rejected",
            Phase::RolledBack => "RolledBack",
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRecommendationStatus {
    #[serde(default)]
    pub phase: Phase,
    /// Why it is in this phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The Policy that decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The run whose values are applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_run_id: Option<String>,
    /// Each container's `resources` exactly as they were before the operator first changed
    /// the workload (JSON), restored by a rollback.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous: Vec<PreviousResources>,
    /// The replica count (of the workload) or the HPA settings exactly as they were before
    /// the operator first changed them, restored by a rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_scaling: Option<PreviousScaling>,
    /// The requests and limits the operator set, per container.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub applied: BTreeMap<String, Resources>,
    /// A key of the last outcome logged to the appliance's `actions` table, so each
    /// decision is logged once however often the loop runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_logged: Option<String>,
}

/// One container's `resources` object before the operator changed it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreviousResources {
    pub container: String,
    /// The JSON of the container's `resources` as the API server returned it (absent: the
    /// container had no `resources`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources_json: Option<String>,
}

/// The replica count or HPA settings of a workload before the operator changed them.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreviousScaling {
    /// The API the change went through: `apps/v1` (the workload's `spec.replicas`) or the
    /// HPA's (`autoscaling/v2`, `autoscaling/v2beta2` or `autoscaling/v1`).
    pub api_version: String,
    /// `Deployment`, `StatefulSet` or `HorizontalPodAutoscaler`.
    pub kind: String,
    pub name: String,
    /// The changed fields of its `spec` as the API server returned them (JSON object; a
    /// field not in it was absent and is removed again by a rollback).
    pub spec_json: String,
}

/// A node group Tally would consolidate: current and target node count, the nodes to
/// remove, and what it saves. Cluster-scoped.
// One `printcolumn(...)` per column: clippy reads the repeats as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[kube(
    group = "tally.dev",
    version = "v1alpha1",
    kind = "NodeGroupRecommendation",
    status = "NodeGroupRecommendationStatus",
    shortname = "ngrec",
    category = "tally",
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.nodeGroup"),
    printcolumn(name = "Action", type_ = "string", json_path = ".spec.action"),
    printcolumn(name = "Nodes", type_ = "integer", json_path = ".spec.targetNodes"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Savings",
        type_ = "number",
        description = "Projected savings, US dollars per month",
        json_path = ".spec.savingsMonthlyUsd"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct NodeGroupRecommendationSpec {
    #[schemars(length(min = 1))]
    pub node_group: String,
    pub action: NodeGroupAction,
    pub run_id: String,
    #[schemars(range(min = 0))]
    pub current_nodes: i64,
    #[schemars(range(min = 0))]
    pub target_nodes: i64,
    /// The nodes to cordon and drain.
    #[serde(default)]
    pub nodes_to_remove: Vec<String>,
    pub why: String,
    pub savings_monthly_usd: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum NodeGroupAction {
    Consolidate,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeGroupRecommendationStatus {
    #[serde(default)]
    pub phase: Phase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The Policy (or policies, joined by `+`) under which the nodes are drained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The nodes the operator cordoned (they were schedulable before), so rejecting or
    /// deleting the recommendation makes exactly these schedulable again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cordoned: Vec<String>,
    /// A key of the last outcome logged to the appliance's `actions` table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_logged: Option<String>,
}

/// Which workloads the operator may change, within which bounds, how fast and when.
/// Nothing outside an active (valid) Policy is ever modified. Cluster-scoped.
// One `printcolumn(...)` per column: clippy reads the repeats as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[kube(
    group = "tally.dev",
    version = "v1alpha1",
    kind = "Policy",
    plural = "policies",
    status = "PolicyStatus",
    shortname = "tpol",
    category = "tally",
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(name = "Valid", type_ = "boolean", json_path = ".status.valid"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PolicySpec {
    /// Namespaces covered by name (empty: every namespace, unless namespaceSelector says).
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Namespaces covered by their labels (ANDed with `namespaces` when both are given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Workloads covered (absent: every Deployment, StatefulSet and DaemonSet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workloads: Option<WorkloadSelector>,
    /// `audit-only`: recommendations are shown, workloads never written. `auto-apply`: the
    /// operator applies them inside the time windows.
    pub mode: Mode,
    /// Lowest CPU request or limit the operator sets (quantity, e.g. `50m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = QUANTITY_PATTERN))]
    pub min_cpu: Option<String>,
    /// Highest CPU request or limit the operator sets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = QUANTITY_PATTERN))]
    pub max_cpu: Option<String>,
    /// Lowest memory request or limit the operator sets (e.g. `64Mi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = QUANTITY_PATTERN))]
    pub min_memory: Option<String>,
    /// Highest memory request or limit the operator sets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = QUANTITY_PATTERN))]
    pub max_memory: Option<String>,
    /// The largest change of one value in one step, in percent of the value set now
    /// (absent: no limit). 50 lets 1 core become 0.5 to 1.5 cores per analysis run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub max_step_percent: Option<u32>,
    /// When changes may happen (empty: at any time).
    #[serde(default)]
    pub windows: Vec<TimeWindow>,
    /// How a change reaches the pods.
    #[serde(default)]
    pub apply_method: ApplyMethod,
    /// Node groups whose consolidation this policy covers: the operator cordons and drains
    /// (through the eviction API, honouring PodDisruptionBudgets) the nodes their
    /// NodeGroupRecommendations list, when the policy is auto-apply or a person approved
    /// the recommendation (`spec.approval: Approved`), inside the time windows. Empty: no
    /// node group; nodes are never cordoned or drained under this policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_groups: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    AuditOnly,
    AutoApply,
}

/// How a change reaches the pods.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ApplyMethod {
    /// Patch the workload's pod template (a rolling update).
    #[default]
    Patch,
    /// Resize running pods in place where the cluster offers it (Kubernetes 1.33+),
    /// otherwise patch.
    InPlaceResize,
    /// Set the requests at pod creation through the admission webhook; the workload spec
    /// is never written. Only pods that carry the opt-in label `tally.dev/rightsize: enabled`
    /// (in their pod template) are changed; the updater replaces running pods that differ.
    /// Replicas and HPA settings are not applied under this method.
    Webhook,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

impl LabelSelector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    /// Kinds covered (empty: all three).
    #[serde(default)]
    pub kinds: Vec<WorkloadKind>,
    /// Names covered (empty: any name).
    #[serde(default)]
    pub names: Vec<String>,
    /// Labels the workload must carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// Days and hours in a time zone; `end` before `start` crosses midnight.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TimeWindow {
    /// Days the window starts on (empty: every day).
    #[serde(default)]
    pub days: Vec<Weekday>,
    /// `HH:MM`, inclusive.
    #[schemars(regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"))]
    pub start: String,
    /// `HH:MM`, exclusive (`24:00` is the end of the day).
    #[schemars(regex(pattern = r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$"))]
    pub end: String,
    /// An IANA time zone (`Europe/Berlin`); default UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// Whether the policy passed the operator's checks; an invalid policy covers nothing.
    #[serde(default)]
    pub valid: bool,
    /// Each problem, naming the field (`spec.maxCpu: must be >= spec.minCpu`).
    #[serde(default)]
    pub errors: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Every CRD of the operator, in the order the chart installs them.
pub fn crds() -> Vec<CustomResourceDefinition> {
    [
        WorkloadRecommendation::crd(),
        NodeGroupRecommendation::crd(),
        Policy::crd(),
    ]
    .into_iter()
    .map(without_null_enum_values)
    .collect()
}

/// An optional enum's schema lists `null` among its values (beside `nullable: true`);
/// kubectl 1.20's client-side validation refuses a `null` there, so it is left out
/// (`nullable` alone still allows it).
fn without_null_enum_values(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    fn strip(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::Array(values)) = map.get_mut("enum") {
                    values.retain(|v| !v.is_null());
                }
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut value = serde_json::to_value(&crd).expect("a CRD serializes");
    strip(&mut value);
    serde_json::from_value(value).expect("the same CRD without null enum values")
}

/// The CRDs as one multi-document YAML.
pub fn crds_yaml() -> Result<String, String> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&crd_yaml(&crd)?);
    }
    Ok(out)
}

/// One CRD as YAML.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, String> {
    serde_saphyr::to_string(crd).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crds_have_the_group_scope_and_printer_columns() {
        let crds = crds();
        let names: Vec<_> = crds
            .iter()
            .map(|c| c.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "workloadrecommendations.tally.dev",
                "nodegrouprecommendations.tally.dev",
                "policies.tally.dev"
            ]
        );
        let scopes: Vec<_> = crds.iter().map(|c| c.spec.scope.as_str()).collect();
        assert_eq!(scopes, ["Namespaced", "Cluster", "Cluster"]);
        let wrec = &crds[0].spec.versions[0];
        assert_eq!(wrec.name, "v1alpha1");
        assert!(wrec.subresources.as_ref().unwrap().status.is_some());
        let columns: Vec<_> = wrec
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| (c.name.as_str(), c.json_path.as_str()))
            .collect();
        assert!(columns.contains(&("Target", ".spec.target.name")));
        assert!(columns.contains(&("Phase", ".status.phase")));
        assert!(columns.contains(&("Savings", ".spec.savingsMonthlyUsd")));
    }

    #[test]
    fn the_policy_schema_carries_openapi_constraints() {
        let crd = Policy::crd();
        let schema = serde_json::to_value(
            crd.spec.versions[0]
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref()
                .unwrap(),
        )
        .unwrap();
        let spec = &schema["properties"]["spec"]["properties"];
        assert_eq!(spec["maxStepPercent"]["maximum"], 100.0);
        assert_eq!(spec["maxStepPercent"]["minimum"], 1.0);
        assert_eq!(spec["maxCpu"]["pattern"], QUANTITY_PATTERN);
        assert_eq!(
            spec["mode"]["enum"],
            serde_json::json!(["audit-only", "auto-apply"])
        );
        let required = schema["properties"]["spec"]["required"].as_array().unwrap();
        assert!(required.contains(&serde_json::json!("mode")));
    }

    #[test]
    fn no_enum_lists_null() {
        for crd in crds() {
            let text = serde_json::to_string(&crd).unwrap();
            assert!(!text.contains("null]") && !text.contains("null,"), "{text}");
        }
    }

    #[test]
    fn the_yaml_holds_three_documents_that_parse_back() {
        let yaml = crds_yaml().unwrap();
        assert_eq!(yaml.matches("---\n").count(), 3);
        let back: Vec<CustomResourceDefinition> =
            serde_saphyr::from_multiple(&yaml).expect("YAML parses back");
        assert_eq!(back, crds());
    }
}
