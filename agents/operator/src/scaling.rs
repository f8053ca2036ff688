//! Replicas and HorizontalPodAutoscalers: what the operator sets when a recommendation
//! carries `replicas` or `hpa`, and how it is rolled back.
//!
//! - A Deployment or StatefulSet no HPA targets gets `spec.replicas` patched (guarded by a
//!   JSON-patch `test` of the count it read, so a concurrent scaler makes the patch fail
//!   instead of being overwritten).
//! - When an HPA targets the workload its `spec.replicas` belongs to the HPA and is never
//!   written: the HPA's `minReplicas`, `maxReplicas` and CPU target utilisation are patched
//!   instead. The HPA API is discovered: `autoscaling/v2` when served, else `v2beta2`, else
//!   `v1` (Kubernetes 1.20 serves `v2beta2` and `v1`). The CPU target is changed only where
//!   the HPA already has one (a `Resource` metric `cpu` of type `Utilization`, or v1's
//!   `targetCPUUtilizationPercentage`); no metric is ever added.
//! - The rule for the Policy's bounds: `maxStepPercent` holds for replica counts and the CPU
//!   target like for requests (a count moves by at least one per step); `minCpu`/`maxCpu`
//!   and the memory bounds are about requests and do not apply to counts. A count is never
//!   below 1 and an HPA's maximum never below its minimum.
//! - An `hpa` recommendation for a workload without an HPA (the analysis suggests one) is
//!   shown, not applied: the operator does not create HPAs.
//! - The changed fields are kept exactly as they were (`status.previousScaling`) before the
//!   first change; a rollback writes them back (a field that was absent is removed again).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIGroupList;
use kube::api::DynamicObject;
use kube::core::ApiResource;
use serde_json::{Map, Value, json};

use arrow::array::{Array, RecordBatch};

use crate::appliance::WorkloadRow;
use crate::crd::{HpaRecommendation, PreviousScaling, ReplicasRecommendation, WorkloadKind};

/// The HorizontalPodAutoscaler API version the operator reads and patches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HpaApi {
    V2,
    V2beta2,
    V1,
}

impl HpaApi {
    pub fn api_version(self) -> &'static str {
        match self {
            HpaApi::V2 => "autoscaling/v2",
            HpaApi::V2beta2 => "autoscaling/v2beta2",
            HpaApi::V1 => "autoscaling/v1",
        }
    }

    pub fn parse(api_version: &str) -> Option<Self> {
        [HpaApi::V2, HpaApi::V2beta2, HpaApi::V1]
            .into_iter()
            .find(|a| a.api_version() == api_version)
    }

    pub fn resource(self) -> ApiResource {
        let (_, version) = self.api_version().split_once('/').expect("group/version");
        ApiResource {
            group: "autoscaling".into(),
            version: version.into(),
            api_version: self.api_version().into(),
            kind: "HorizontalPodAutoscaler".into(),
            plural: "horizontalpodautoscalers".into(),
        }
    }

    /// The fields of an HPA's spec the operator changes (and a rollback restores).
    fn fields(self) -> &'static [&'static str] {
        match self {
            HpaApi::V1 => &[
                "minReplicas",
                "maxReplicas",
                "targetCPUUtilizationPercentage",
            ],
            _ => &["minReplicas", "maxReplicas", "metrics"],
        }
    }
}

/// The newest HPA API the server offers (`autoscaling/v2`, else `v2beta2`, else `v1`).
pub fn hpa_api_in(groups: &APIGroupList) -> Option<HpaApi> {
    let autoscaling = groups.groups.iter().find(|g| g.name == "autoscaling")?;
    [HpaApi::V2, HpaApi::V2beta2, HpaApi::V1]
        .into_iter()
        .find(|api| {
            autoscaling
                .versions
                .iter()
                .any(|v| v.group_version == api.api_version())
        })
}

/// What the API server offers that the operator adapts to, discovered once per pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Apis {
    pub hpa: Option<HpaApi>,
    /// Whether the core API lists the `pods/resize` subresource (in-place resize,
    /// Kubernetes 1.33+).
    pub pod_resize: bool,
}

/// Asks the API server (discovery only: no RBAC beyond what every account has).
pub async fn discover(client: &kube::Client) -> Result<Apis, kube::Error> {
    let groups = client.list_api_groups().await?;
    let core = client.list_core_api_resources("v1").await?;
    Ok(Apis {
        hpa: hpa_api_in(&groups),
        pod_resize: core.resources.iter().any(|r| r.name == "pods/resize"),
    })
}

/// The HPA among `hpas` whose `scaleTargetRef` is the workload.
pub fn targeting<'a>(
    hpas: &'a [DynamicObject],
    kind: WorkloadKind,
    name: &str,
) -> Option<&'a DynamicObject> {
    hpas.iter().find(|h| {
        let target = &h.data["spec"]["scaleTargetRef"];
        target["kind"] == kind.as_str() && target["name"] == name
    })
}

/// One value moved toward `recommended`, at most `step` percent of `current` away from it
/// (and at least by one, so a small count can move at all).
fn step_count(current: i64, recommended: i64, step: Option<u32>) -> i64 {
    let mut value = recommended;
    if let Some(step) = step {
        let delta = ((current as f64 * f64::from(step) / 100.0).ceil() as i64).max(1);
        value = value.clamp(current - delta, current + delta);
    }
    value.max(1)
}

/// A change of replicas or HPA settings, planned.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalingPlan {
    /// The object patched: `apps/v1` workload or the HPA.
    pub api_version: String,
    pub kind: String,
    pub name: String,
    /// The changed fields of its spec as they are now (absent: absent).
    pub before: Map<String, Value>,
    /// The same fields as planned.
    pub after: Map<String, Value>,
    /// RFC 6902 operations (a `test` of every value read first).
    pub ops: Vec<Value>,
    /// In words: `replicas 4 → 3`.
    pub summary: String,
}

impl ScalingPlan {
    /// What a rollback needs, kept before the first change.
    pub fn previous(&self) -> PreviousScaling {
        PreviousScaling {
            api_version: self.api_version.clone(),
            kind: self.kind.clone(),
            name: self.name.clone(),
            spec_json: Value::Object(self.before.clone()).to_string(),
        }
    }
}

/// The plan for the replicas of a workload no HPA targets (None: nothing to change).
pub fn plan_replicas(
    workload: &DynamicObject,
    kind: WorkloadKind,
    rec: &ReplicasRecommendation,
    step: Option<u32>,
) -> Option<ScalingPlan> {
    let recommended = rec.recommended?;
    if kind == WorkloadKind::DaemonSet {
        return None;
    }
    let current = workload.data["spec"]["replicas"].as_i64().unwrap_or(1);
    let next = step_count(current, recommended, step);
    if next == current {
        return None;
    }
    let name = workload.metadata.name.clone().unwrap_or_default();
    let mut before = Map::new();
    if let Some(value) = workload.data["spec"].get("replicas") {
        before.insert("replicas".into(), value.clone());
    }
    let mut after = Map::new();
    after.insert("replicas".into(), json!(next));
    let mut ops = Vec::new();
    if let Some(value) = before.get("replicas") {
        ops.push(json!({"op": "test", "path": "/spec/replicas", "value": value}));
    }
    ops.push(json!({"op": "add", "path": "/spec/replicas", "value": next}));
    Some(ScalingPlan {
        api_version: "apps/v1".into(),
        kind: kind.as_str().into(),
        name,
        before,
        after,
        ops,
        summary: format!("replicas {current} → {next}"),
    })
}

/// The index of the HPA's CPU utilisation metric (v2, v2beta2) and its target in percent.
fn cpu_metric(spec: &Value) -> Option<(usize, i64)> {
    spec["metrics"]
        .as_array()?
        .iter()
        .enumerate()
        .find_map(|(i, m)| {
            let resource = &m["resource"];
            (m["type"] == "Resource"
                && resource["name"] == "cpu"
                && resource["target"]["type"] == "Utilization")
                .then(|| resource["target"]["averageUtilization"].as_i64())
                .flatten()
                .map(|v| (i, v))
        })
}

/// The plan for an HPA's minimum, maximum and CPU target (None: nothing to change), and
/// notes on what it leaves as it is.
pub fn plan_hpa(
    hpa: &DynamicObject,
    api: HpaApi,
    rec: &HpaRecommendation,
    step: Option<u32>,
) -> (Option<ScalingPlan>, Vec<String>) {
    let spec = &hpa.data["spec"];
    let name = hpa.metadata.name.clone().unwrap_or_default();
    let mut notes = Vec::new();
    let current_min = spec["minReplicas"].as_i64().unwrap_or(1);
    let current_max = spec["maxReplicas"].as_i64().unwrap_or(current_min);
    let min = rec
        .recommended_min_replicas
        .map_or(current_min, |r| step_count(current_min, r, step));
    let max = rec
        .recommended_max_replicas
        .map_or(current_max, |r| step_count(current_max, r, step))
        .max(min);
    // The CPU target: where the HPA has one.
    let current_target = match api {
        HpaApi::V1 => spec["targetCPUUtilizationPercentage"]
            .as_i64()
            .map(|v| (None, v)),
        _ => cpu_metric(spec).map(|(i, v)| (Some(i), v)),
    };
    let target = match (current_target, rec.recommended_target_cpu_utilization) {
        (Some((index, current)), Some(fraction)) => {
            let recommended = (fraction * 100.0).round();
            let mut value = recommended;
            if let Some(step) = step {
                let delta = (current as f64 * f64::from(step) / 100.0).max(1.0);
                value = value.clamp(current as f64 - delta, current as f64 + delta);
            }
            let value = (value.round() as i64).clamp(1, 100);
            (value != current).then_some((index, current, value))
        }
        (None, Some(_)) => {
            notes.push(format!(
                "HPA {name} has no CPU utilisation target, so none is set (the operator adds no metric)"
            ));
            None
        }
        _ => None,
    };

    let mut before = Map::new();
    let mut after = Map::new();
    for field in api.fields() {
        if let Some(value) = spec.get(*field) {
            before.insert((*field).to_string(), value.clone());
        }
    }
    let mut ops = Vec::new();
    let mut said = Vec::new();
    let mut set = |field: &str, current: i64, next: i64| {
        if next == current {
            return;
        }
        if spec.get(field).is_some() {
            ops.push(json!({"op": "test", "path": format!("/spec/{field}"), "value": current}));
        }
        ops.push(json!({"op": "add", "path": format!("/spec/{field}"), "value": next}));
        said.push(format!("{field} {current} → {next}"));
    };
    set("minReplicas", current_min, min);
    set("maxReplicas", current_max, max);
    match target {
        Some((None, current, value)) => set("targetCPUUtilizationPercentage", current, value),
        Some((Some(i), current, value)) => {
            let base = format!("/spec/metrics/{i}/resource");
            ops.push(json!({"op": "test", "path": format!("{base}/name"), "value": "cpu"}));
            ops.push(json!({"op": "test", "path": format!("{base}/target/averageUtilization"), "value": current}));
            ops.push(json!({"op": "replace", "path": format!("{base}/target/averageUtilization"), "value": value}));
            said.push(format!("CPU target {current} % → {value} %"));
        }
        None => {}
    }
    if ops.is_empty() {
        return (None, notes);
    }
    // `after`: the fields as they will be.
    let mut planned = spec.clone();
    if let Ok(patch) = serde_json::from_value::<json_patch::Patch>(Value::Array(
        ops.iter()
            .map(|op| {
                let mut op = op.clone();
                let path = op["path"]
                    .as_str()
                    .unwrap_or_default()
                    .replacen("/spec", "", 1);
                op["path"] = Value::String(path);
                op
            })
            .collect(),
    )) {
        let _ = json_patch::patch(&mut planned, &patch);
    }
    for field in api.fields() {
        if let Some(value) = planned.get(*field) {
            after.insert((*field).to_string(), value.clone());
        }
    }
    let plan = ScalingPlan {
        api_version: api.api_version().into(),
        kind: "HorizontalPodAutoscaler".into(),
        name: name.clone(),
        before,
        after,
        ops,
        summary: format!("HPA {name}: {}", said.join(", ")),
    };
    (Some(plan), notes)
}

/// The operations that put the fields kept in `previous` back exactly into `spec` (a field
/// that was absent is removed); empty when the spec already has them.
pub fn restore_ops(previous: &PreviousScaling, spec: &Value) -> Result<Vec<Value>, String> {
    let kept: Map<String, Value> = serde_json::from_str(&previous.spec_json)
        .map_err(|e| format!("status.previousScaling.specJson: {e}"))?;
    let fields: Vec<&str> = if previous.kind == "HorizontalPodAutoscaler" {
        HpaApi::parse(&previous.api_version)
            .ok_or_else(|| format!("unknown HPA API {}", previous.api_version))?
            .fields()
            .to_vec()
    } else {
        vec!["replicas"]
    };
    let mut ops = Vec::new();
    for field in fields {
        let path = format!("/spec/{field}");
        match (kept.get(field), spec.get(field)) {
            (Some(old), now) if now != Some(old) => {
                ops.push(json!({"op": "add", "path": path, "value": old}))
            }
            (None, Some(_)) => ops.push(json!({"op": "remove", "path": path})),
            _ => {}
        }
    }
    Ok(ops)
}

/// The replicas and HPA rows (kinds `replicas` and `hpa`, queries/replicas.sql) of one
/// analysis run.
pub fn scaling_rows_sql(run_id: &str) -> String {
    format!(
        "SELECT kind, namespace, target_kind, target_name, \
         current_replicas, recommended_replicas, current_max_replicas, recommended_max_replicas, \
         current_target_cpu_utilization, recommended_target_cpu_utilization, \
         confidence, why, savings_monthly_usd \
         FROM recommendations WHERE run_id = '{}' AND kind IN ('replicas', 'hpa') \
         ORDER BY namespace, target_kind, target_name",
        run_id.replace('\'', "''")
    )
}

/// Puts the run's replicas and HPA rows into its workload recommendations (one per
/// workload: the rightsizing rows' one, or a new one without containers), adding their
/// savings and why.
pub fn merge_scaling(rows: &mut Vec<WorkloadRow>, run_id: &str, batches: &[RecordBatch]) {
    use arrow::array::AsArray;
    use arrow::datatypes::{DataType, Float64Type, Int64Type};
    for b in batches {
        let column = |name: &str, to: &DataType| {
            b.column_by_name(name)
                .and_then(|c| arrow::compute::cast(c, to).ok())
        };
        let texts: Vec<_> = ["kind", "namespace", "target_kind", "target_name", "why"]
            .iter()
            .map(|n| column(n, &DataType::Utf8))
            .collect();
        let ints: Vec<_> = [
            "current_replicas",
            "recommended_replicas",
            "current_max_replicas",
            "recommended_max_replicas",
        ]
        .iter()
        .map(|n| column(n, &DataType::Int64))
        .collect();
        let floats: Vec<_> = [
            "current_target_cpu_utilization",
            "recommended_target_cpu_utilization",
            "confidence",
            "savings_monthly_usd",
        ]
        .iter()
        .map(|n| column(n, &DataType::Float64))
        .collect();
        if texts
            .iter()
            .chain(&ints)
            .chain(&floats)
            .any(Option::is_none)
        {
            continue;
        }
        let text = |i: usize, row: usize| {
            let c = texts[i].as_ref().expect("checked").as_string::<i32>();
            c.is_valid(row).then(|| c.value(row).to_string())
        };
        let int = |i: usize, row: usize| {
            let c = ints[i]
                .as_ref()
                .expect("checked")
                .as_primitive::<Int64Type>();
            c.is_valid(row).then(|| c.value(row))
        };
        let float = |i: usize, row: usize| {
            let c = floats[i]
                .as_ref()
                .expect("checked")
                .as_primitive::<Float64Type>();
            c.is_valid(row).then(|| c.value(row))
        };
        for row in 0..b.num_rows() {
            let (Some(kind), Some(namespace), Some(target_kind), Some(name)) =
                (text(0, row), text(1, row), text(2, row), text(3, row))
            else {
                continue;
            };
            let Some(target_kind) = WorkloadKind::parse(&target_kind) else {
                continue;
            };
            let why = text(4, row).unwrap_or_default();
            let position = rows
                .iter()
                .position(|r| r.namespace == namespace && r.kind == target_kind && r.name == name);
            let entry = match position {
                Some(i) => &mut rows[i],
                None => {
                    rows.push(WorkloadRow {
                        run_id: run_id.to_string(),
                        namespace: namespace.clone(),
                        kind: target_kind,
                        name: name.clone(),
                        containers: Vec::new(),
                        replicas: None,
                        hpa: None,
                        confidence: float(2, row).unwrap_or(0.0),
                        why: String::new(),
                        savings_monthly_usd: 0.0,
                    });
                    rows.last_mut().expect("pushed")
                }
            };
            entry.savings_monthly_usd += float(3, row).unwrap_or(0.0);
            entry.confidence = entry.confidence.min(float(2, row).unwrap_or(0.0));
            entry.why = if entry.why.is_empty() {
                why
            } else {
                format!("{} {why}", entry.why)
            };
            if kind == "hpa" {
                entry.hpa = Some(HpaRecommendation {
                    current_min_replicas: int(0, row),
                    recommended_min_replicas: int(1, row),
                    current_max_replicas: int(2, row),
                    recommended_max_replicas: int(3, row),
                    current_target_cpu_utilization: float(0, row),
                    recommended_target_cpu_utilization: float(1, row),
                });
            } else {
                entry.replicas = Some((int(0, row), int(1, row)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{APIGroup, GroupVersionForDiscovery};

    fn object(value: Value) -> DynamicObject {
        serde_json::from_value(value).unwrap()
    }

    fn groups(versions: &[&str]) -> APIGroupList {
        APIGroupList {
            groups: vec![APIGroup {
                name: "autoscaling".into(),
                versions: versions
                    .iter()
                    .map(|v| GroupVersionForDiscovery {
                        group_version: format!("autoscaling/{v}"),
                        version: v.to_string(),
                    })
                    .collect(),
                ..Default::default()
            }],
        }
    }

    #[test]
    fn replicas_and_hpa_rows_join_the_workloads_recommendation() {
        use arrow::array::{Float64Array, Int64Array, StringArray};
        use std::sync::Arc;
        let text = |v: Vec<&str>| Arc::new(StringArray::from(v)) as Arc<dyn Array>;
        let int = |v: Vec<Option<i64>>| Arc::new(Int64Array::from(v)) as Arc<dyn Array>;
        let float = |v: Vec<Option<f64>>| Arc::new(Float64Array::from(v)) as Arc<dyn Array>;
        let batch = RecordBatch::try_from_iter(vec![
            ("kind", text(vec!["replicas", "hpa", "replicas"])),
            ("namespace", text(vec!["ns", "ns", "ns"])),
            (
                "target_kind",
                text(vec!["Deployment", "Deployment", "ReplicaSet"]),
            ),
            ("target_name", text(vec!["web", "api", "bare"])),
            ("current_replicas", int(vec![Some(4), Some(2), Some(1)])),
            ("recommended_replicas", int(vec![Some(3), Some(1), Some(2)])),
            ("current_max_replicas", int(vec![None, Some(10), None])),
            ("recommended_max_replicas", int(vec![None, Some(6), None])),
            (
                "current_target_cpu_utilization",
                float(vec![None, Some(0.8), None]),
            ),
            (
                "recommended_target_cpu_utilization",
                float(vec![None, Some(0.7), None]),
            ),
            ("confidence", float(vec![Some(0.5), Some(0.9), Some(1.0)])),
            ("why", text(vec!["steady", "swings", "x"])),
            (
                "savings_monthly_usd",
                float(vec![Some(7.5), Some(0.0), Some(1.0)]),
            ),
        ])
        .unwrap();
        let mut rows = vec![WorkloadRow {
            run_id: "r".into(),
            namespace: "ns".into(),
            kind: WorkloadKind::Deployment,
            name: "web".into(),
            containers: Vec::new(),
            replicas: Some((Some(4), None)),
            hpa: None,
            confidence: 0.9,
            why: "p95".into(),
            savings_monthly_usd: 10.0,
        }];
        merge_scaling(&mut rows, "r", &[batch]);
        assert_eq!(rows.len(), 2, "the ReplicaSet is left out: {rows:?}");
        let web = &rows[0];
        assert_eq!(web.replicas, Some((Some(4), Some(3))));
        assert_eq!(web.savings_monthly_usd, 17.5);
        assert_eq!(web.confidence, 0.5);
        assert_eq!(web.why, "p95 steady");
        let api = &rows[1];
        assert_eq!(api.name, "api");
        assert!(api.containers.is_empty());
        let hpa = api.hpa.as_ref().unwrap();
        assert_eq!(
            (hpa.recommended_min_replicas, hpa.recommended_max_replicas),
            (Some(1), Some(6))
        );
        assert_eq!(hpa.recommended_target_cpu_utilization, Some(0.7));
        assert_eq!(api.replicas, None);
    }

    #[test]
    fn the_newest_hpa_api_served_is_used() {
        assert_eq!(
            hpa_api_in(&groups(&["v1", "v2", "v2beta2"])),
            Some(HpaApi::V2)
        );
        // Kubernetes 1.20.
        assert_eq!(
            hpa_api_in(&groups(&["v1", "v2beta1", "v2beta2"])),
            Some(HpaApi::V2beta2)
        );
        assert_eq!(hpa_api_in(&groups(&["v1"])), Some(HpaApi::V1));
        assert_eq!(hpa_api_in(&APIGroupList { groups: vec![] }), None);
    }

    #[test]
    fn replicas_move_by_the_step_and_never_below_one() {
        assert_eq!(step_count(10, 4, Some(20)), 8);
        assert_eq!(step_count(10, 4, None), 4);
        // A small count still moves by one per step.
        assert_eq!(step_count(2, 1, Some(10)), 1);
        assert_eq!(step_count(3, 0, None), 1);
        let deployment = object(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web"}, "spec": {"replicas": 4}
        }));
        let rec = ReplicasRecommendation {
            current: Some(4),
            recommended: Some(2),
        };
        let plan = plan_replicas(&deployment, WorkloadKind::Deployment, &rec, Some(25)).unwrap();
        assert_eq!(plan.summary, "replicas 4 → 3");
        assert_eq!(
            plan.ops,
            [
                json!({"op": "test", "path": "/spec/replicas", "value": 4}),
                json!({"op": "add", "path": "/spec/replicas", "value": 3}),
            ]
        );
        assert_eq!(plan.previous().spec_json, r#"{"replicas":4}"#);
        let same = ReplicasRecommendation {
            current: Some(4),
            recommended: Some(4),
        };
        assert!(plan_replicas(&deployment, WorkloadKind::Deployment, &same, None).is_none());
        assert!(plan_replicas(&deployment, WorkloadKind::DaemonSet, &rec, None).is_none());
    }

    fn hpa_rec(min: i64, max: i64, target: f64) -> HpaRecommendation {
        HpaRecommendation {
            current_min_replicas: None,
            recommended_min_replicas: Some(min),
            current_max_replicas: None,
            recommended_max_replicas: Some(max),
            current_target_cpu_utilization: None,
            recommended_target_cpu_utilization: Some(target),
        }
    }

    #[test]
    fn a_v2_hpa_gets_min_max_and_cpu_target_and_is_restored_exactly() {
        let spec = json!({
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "minReplicas": 2, "maxReplicas": 10,
            "metrics": [
                {"type": "Resource", "resource": {"name": "memory", "target": {"type": "Utilization", "averageUtilization": 90}}},
                {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}
            ]
        });
        let hpa = object(json!({
            "apiVersion": "autoscaling/v2beta2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web"}, "spec": spec
        }));
        let (plan, notes) = plan_hpa(&hpa, HpaApi::V2beta2, &hpa_rec(1, 6, 0.7), None);
        assert!(notes.is_empty());
        let plan = plan.unwrap();
        assert_eq!(
            plan.summary,
            "HPA web: minReplicas 2 → 1, maxReplicas 10 → 6, CPU target 80 % → 70 %"
        );
        assert_eq!(
            plan.after["metrics"][1]["resource"]["target"]["averageUtilization"],
            70
        );
        assert_eq!(plan.after["metrics"][0], spec["metrics"][0]);
        // Applied, then restored: the same spec again.
        let mut applied = json!({"spec": spec});
        json_patch::patch(
            &mut applied,
            &serde_json::from_value::<json_patch::Patch>(Value::Array(plan.ops.clone())).unwrap(),
        )
        .unwrap();
        assert_eq!(applied["spec"]["maxReplicas"], 6);
        let restore = restore_ops(&plan.previous(), &applied["spec"]).unwrap();
        json_patch::patch(
            &mut applied,
            &serde_json::from_value::<json_patch::Patch>(Value::Array(restore)).unwrap(),
        )
        .unwrap();
        assert_eq!(applied["spec"], spec);
        assert!(restore_ops(&plan.previous(), &spec).unwrap().is_empty());
    }

    #[test]
    fn the_step_holds_for_hpas_and_no_metric_is_added() {
        let hpa = object(json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "q"},
            "spec": {"maxReplicas": 10, "metrics": [
                {"type": "Resource", "resource": {"name": "memory", "target": {"type": "Utilization", "averageUtilization": 90}}}
            ]}
        }));
        let (plan, notes) = plan_hpa(&hpa, HpaApi::V2, &hpa_rec(3, 2, 0.5), Some(50));
        let plan = plan.unwrap();
        // minReplicas (absent: 1) moves one step of at least one toward 3; maxReplicas 10
        // moves 50 % toward 2.
        assert_eq!(plan.summary, "HPA q: minReplicas 1 → 2, maxReplicas 10 → 5");
        assert_eq!(notes.len(), 1, "{notes:?}");
        // minReplicas was absent: restoring removes it again.
        let restore = restore_ops(&plan.previous(), &plan_spec(&plan)).unwrap();
        assert!(restore.contains(&json!({"op": "remove", "path": "/spec/minReplicas"})));
    }

    fn plan_spec(plan: &ScalingPlan) -> Value {
        Value::Object(plan.after.clone())
    }

    #[test]
    fn a_v1_hpa_target_is_its_percentage() {
        let hpa = object(json!({
            "apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "old"},
            "spec": {"minReplicas": 2, "maxReplicas": 4, "targetCPUUtilizationPercentage": 50}
        }));
        let (plan, _) = plan_hpa(&hpa, HpaApi::V1, &hpa_rec(2, 4, 0.75), Some(20));
        let plan = plan.unwrap();
        assert_eq!(
            plan.summary,
            "HPA old: targetCPUUtilizationPercentage 50 → 60"
        );
    }
}
