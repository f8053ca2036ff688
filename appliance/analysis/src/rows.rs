//! Between query answers and Rust: reading the analysis queries' rows, and writing
//! recommendation rows in the `recommendations` table's schema.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray, new_null_array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use chrono::{DateTime, Utc};
use serde::Serialize;
use tally_wire::Table;

use crate::AnalysisError;
use crate::consolidation::{NodeInfo, Plan, PodInfo, parse_labels, parse_scheduling, parse_taints};
use crate::instance_types::{GroupDemand, PricedType, Suggestion};

/// One row of the `recommendations` table, without its time and run id (the run sets those).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Recommendation {
    pub kind: String,
    pub namespace: String,
    pub target_kind: String,
    pub target_name: String,
    pub container: Option<String>,
    pub current_cpu_request_cores: Option<f64>,
    pub recommended_cpu_request_cores: Option<f64>,
    pub current_cpu_limit_cores: Option<f64>,
    pub recommended_cpu_limit_cores: Option<f64>,
    pub current_memory_request_bytes: Option<i64>,
    pub recommended_memory_request_bytes: Option<i64>,
    pub current_memory_limit_bytes: Option<i64>,
    pub recommended_memory_limit_bytes: Option<i64>,
    pub current_replicas: Option<i64>,
    pub recommended_replicas: Option<i64>,
    pub confidence: Option<f64>,
    pub why: String,
    pub savings_monthly_usd: Option<f64>,
    pub current_max_replicas: Option<i64>,
    pub recommended_max_replicas: Option<i64>,
    pub current_target_cpu_utilization: Option<f64>,
    pub recommended_target_cpu_utilization: Option<f64>,
    pub current_instance_type: Option<String>,
    pub recommended_instance_type: Option<String>,
}

fn shape(query: &'static str, why: impl Into<String>) -> AnalysisError {
    AnalysisError::Shape {
        query,
        why: why.into(),
    }
}

/// A column of `batch` cast to `ty`.
fn column(
    query: &'static str,
    batch: &RecordBatch,
    name: &str,
    ty: &DataType,
) -> Result<ArrayRef, AnalysisError> {
    let c = batch
        .column_by_name(name)
        .ok_or_else(|| shape(query, format!("no column `{name}`")))?;
    cast(c, ty).map_err(|e| shape(query, format!("column `{name}`: {e}")))
}

fn text(a: &ArrayRef, i: usize) -> Option<String> {
    let s = a.as_string::<i32>();
    s.is_valid(i).then(|| s.value(i).to_string())
}

fn float(a: &ArrayRef, i: usize) -> Option<f64> {
    let f = a.as_primitive::<Float64Type>();
    f.is_valid(i).then(|| f.value(i))
}

fn int(a: &ArrayRef, i: usize) -> Option<i64> {
    let f = a.as_primitive::<Int64Type>();
    f.is_valid(i).then(|| f.value(i))
}

/// Query answers whose columns are named like the `recommendations` table's, as batches of
/// that table: columns cast by name, absent ones NULL, `time` and `run_id` set.
pub(crate) fn to_recommendations(
    batches: &[RecordBatch],
    run_id: &str,
    now: DateTime<Utc>,
) -> Result<Vec<RecordBatch>, AnalysisError> {
    let schema = Table::Recommendations.schema();
    let mut out = Vec::new();
    for batch in batches.iter().filter(|b| b.num_rows() > 0) {
        let n = batch.num_rows();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for field in schema.fields() {
            let array: ArrayRef = match field.name().as_str() {
                "time" => Arc::new(
                    arrow::array::TimestampMillisecondArray::from(vec![now.timestamp_millis(); n])
                        .with_timezone("UTC"),
                ),
                "run_id" => Arc::new(StringArray::from(vec![run_id; n])),
                name => match batch.column_by_name(name) {
                    Some(c) => cast(c, field.data_type())
                        .map_err(|e| shape("recommendations", format!("column `{name}`: {e}")))?,
                    None => new_null_array(field.data_type(), n),
                },
            };
            columns.push(array);
        }
        out.push(
            RecordBatch::try_new(schema.clone(), columns)
                .map_err(|e| shape("recommendations", e.to_string()))?,
        );
    }
    Ok(out)
}

/// Recommendation rows made in Rust, as one batch of the `recommendations` table.
pub(crate) fn batch_of(
    rows: &[Recommendation],
    run_id: &str,
    now: DateTime<Utc>,
) -> Result<RecordBatch, AnalysisError> {
    #[derive(Serialize)]
    struct Row<'a> {
        time: i64,
        run_id: &'a str,
        #[serde(flatten)]
        rec: &'a Recommendation,
    }
    let rows: Vec<Row> = rows
        .iter()
        .map(|rec| Row {
            time: now.timestamp_millis(),
            run_id,
            rec,
        })
        .collect();
    let mut decoder = arrow::json::ReaderBuilder::new(Table::Recommendations.schema())
        .build_decoder()
        .map_err(|e| shape("recommendations", e.to_string()))?;
    decoder
        .serialize(&rows)
        .map_err(|e| shape("recommendations", e.to_string()))?;
    decoder
        .flush()
        .map_err(|e| shape("recommendations", e.to_string()))?
        .ok_or_else(|| shape("recommendations", "no rows"))
}

/// Nodes from `node_prices.sql`.
pub(crate) fn nodes(batches: &[RecordBatch]) -> Result<Vec<NodeInfo>, AnalysisError> {
    let q = "node_prices";
    let mut out = Vec::new();
    for b in batches {
        let s = |n| column(q, b, n, &DataType::Utf8);
        let f = |n| column(q, b, n, &DataType::Float64);
        let i = |n| column(q, b, n, &DataType::Int64);
        let (name, group, it, cap, region, labels, taints) = (
            s("node")?,
            s("node_group")?,
            s("instance_type")?,
            s("capacity_type")?,
            s("region")?,
            s("labels")?,
            s("taints")?,
        );
        let (cpu_cap, mem_cap, cpu_alloc, mem_alloc, usd) = (
            f("cpu_capacity_cores")?,
            i("memory_capacity_bytes")?,
            f("cpu_allocatable_cores")?,
            i("memory_allocatable_bytes")?,
            f("hourly_usd")?,
        );
        for r in 0..b.num_rows() {
            let cpu_capacity = float(&cpu_cap, r).unwrap_or(0.0);
            let memory_capacity = int(&mem_cap, r).unwrap_or(0);
            out.push(NodeInfo {
                name: text(&name, r).unwrap_or_default(),
                group: text(&group, r).unwrap_or_else(|| "default".into()),
                instance_type: text(&it, r).unwrap_or_default(),
                capacity_type: text(&cap, r).unwrap_or_else(|| "on_demand".into()),
                region: text(&region, r).unwrap_or_default(),
                cpu_capacity,
                memory_capacity,
                cpu_allocatable: float(&cpu_alloc, r).unwrap_or(cpu_capacity),
                memory_allocatable: int(&mem_alloc, r).unwrap_or(memory_capacity),
                hourly_usd: float(&usd, r).unwrap_or(0.0),
                labels: parse_labels(text(&labels, r).as_deref()),
                taints: parse_taints(text(&taints, r).as_deref()),
            });
        }
    }
    Ok(out)
}

/// Pods from `consolidation_pods.sql`.
pub(crate) fn pods(batches: &[RecordBatch]) -> Result<Vec<PodInfo>, AnalysisError> {
    let q = "consolidation_pods";
    let mut out = Vec::new();
    for b in batches {
        let s = |n| column(q, b, n, &DataType::Utf8);
        let (ns, pod, node, kind, name, sched) = (
            s("namespace")?,
            s("pod")?,
            s("node")?,
            s("workload_kind")?,
            s("workload_name")?,
            s("scheduling")?,
        );
        let cpu = column(q, b, "cpu_request_cores", &DataType::Float64)?;
        let mem = column(q, b, "memory_request_bytes", &DataType::Int64)?;
        let pdb = column(q, b, "pdb_max_unavailable", &DataType::Int64)?;
        for r in 0..b.num_rows() {
            out.push(PodInfo {
                namespace: text(&ns, r).unwrap_or_default(),
                name: text(&pod, r).unwrap_or_default(),
                node: text(&node, r).unwrap_or_default(),
                workload_kind: text(&kind, r).unwrap_or_default(),
                workload_name: text(&name, r).unwrap_or_default(),
                cpu_request: float(&cpu, r).unwrap_or(0.0),
                memory_request: int(&mem, r).unwrap_or(0),
                pdb_max_unavailable: int(&pdb, r),
                scheduling: parse_scheduling(text(&sched, r).as_deref()),
            });
        }
    }
    Ok(out)
}

/// Priced instance types from `instance_prices.sql`.
pub(crate) fn priced_types(batches: &[RecordBatch]) -> Result<Vec<PricedType>, AnalysisError> {
    let q = "instance_prices";
    let mut out = Vec::new();
    for b in batches {
        let s = |n| column(q, b, n, &DataType::Utf8);
        let (provider, region, it, cap) = (
            s("provider")?,
            s("region")?,
            s("instance_type")?,
            s("capacity_type")?,
        );
        let usd = column(q, b, "hourly_usd", &DataType::Float64)?;
        let cpu = column(q, b, "cpu_cores", &DataType::Float64)?;
        let mem = column(q, b, "memory_bytes", &DataType::Int64)?;
        for r in 0..b.num_rows() {
            let (Some(cpu_cores), Some(memory_bytes)) = (float(&cpu, r), int(&mem, r)) else {
                continue; // a price without a size cannot be compared
            };
            out.push(PricedType {
                provider: text(&provider, r).unwrap_or_default(),
                region: text(&region, r).unwrap_or_default(),
                instance_type: text(&it, r).unwrap_or_default(),
                capacity_type: text(&cap, r).unwrap_or_default(),
                hourly_usd: float(&usd, r).unwrap_or(f64::INFINITY),
                cpu_cores,
                memory_bytes,
            });
        }
    }
    Ok(out)
}

/// Adds a rightsizing batch's recommended requests to the per-pod sums by workload
/// (namespace, kind, name).
pub(crate) fn add_pod_requests(
    batch: &RecordBatch,
    per_pod: &mut BTreeMap<(String, String, String), (f64, i64)>,
) {
    let s = |n: &str| {
        batch
            .column_by_name(n)
            .map(|c| c.as_string::<i32>().clone())
    };
    let (Some(ns), Some(kind), Some(name)) = (s("namespace"), s("target_kind"), s("target_name"))
    else {
        return;
    };
    let (Some(cpu), Some(mem)) = (
        batch.column_by_name("recommended_cpu_request_cores"),
        batch.column_by_name("recommended_memory_request_bytes"),
    ) else {
        return;
    };
    for r in 0..batch.num_rows() {
        let e = per_pod
            .entry((
                ns.value(r).to_string(),
                kind.value(r).to_string(),
                name.value(r).to_string(),
            ))
            .or_default();
        e.0 += float(cpu, r).unwrap_or(0.0);
        e.1 += int(mem, r).unwrap_or(0);
    }
}

/// Consolidation rows: one per node (can go, or why not) and one per node group.
pub(crate) fn consolidation_rows(plan: &Plan, nodes: &[NodeInfo]) -> Vec<Recommendation> {
    let mut out = Vec::new();
    for d in &plan.nodes {
        out.push(Recommendation {
            kind: "consolidation".into(),
            namespace: String::new(),
            target_kind: "Node".into(),
            target_name: d.node.clone(),
            current_replicas: Some(1),
            recommended_replicas: Some(if d.removable { 0 } else { 1 }),
            confidence: Some(1.0),
            why: d.why.clone(),
            savings_monthly_usd: Some(if d.removable {
                (d.hourly_usd * crate::HOURS_PER_MONTH * 100.0).round() / 100.0
            } else {
                0.0
            }),
            current_instance_type: Some(d.instance_type.clone()),
            ..Recommendation::default()
        });
    }
    for (group, (now, after, savings, gone)) in plan.groups() {
        let types: std::collections::BTreeSet<&str> = nodes
            .iter()
            .filter(|n| n.group == group)
            .map(|n| n.instance_type.as_str())
            .collect();
        out.push(Recommendation {
            kind: "consolidation".into(),
            namespace: String::new(),
            target_kind: "NodeGroup".into(),
            target_name: group.clone(),
            current_replicas: Some(now as i64),
            recommended_replicas: Some(after as i64),
            confidence: Some(1.0),
            why: if gone.is_empty() {
                format!("{now} node(s); none can go (see each node's row for why)")
            } else {
                format!(
                    "{now} → {after} node(s): {} can go, their pods fit on the others",
                    gone.join(", ")
                )
            },
            savings_monthly_usd: Some((savings * 100.0).round() / 100.0),
            current_instance_type: Some(types.into_iter().collect::<Vec<_>>().join(",")),
            ..Recommendation::default()
        });
    }
    out
}

/// Per node group: its nodes, prices and its pods' recommended requests.
pub(crate) fn group_demands(
    nodes: &[NodeInfo],
    pods: &[PodInfo],
    per_pod: &BTreeMap<(String, String, String), (f64, i64)>,
) -> Vec<GroupDemand> {
    let node_group: BTreeMap<&str, &NodeInfo> =
        nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    let mut groups: BTreeMap<&str, GroupDemand> = BTreeMap::new();
    let mut regions: BTreeMap<&str, BTreeMap<(&str, &str), usize>> = BTreeMap::new();
    for n in nodes {
        let g = groups
            .entry(n.group.as_str())
            .or_insert_with(|| GroupDemand {
                group: n.group.clone(),
                region: String::new(),
                capacity_type: String::new(),
                current_types: BTreeMap::new(),
                current_nodes: 0,
                current_hourly_usd: 0.0,
                cpu_cores: 0.0,
                memory_bytes: 0,
                largest_cpu_cores: 0.0,
                largest_memory_bytes: 0,
                daemonset_cpu_cores: 0.0,
                daemonset_memory_bytes: 0,
            });
        *g.current_types.entry(n.instance_type.clone()).or_default() += 1;
        g.current_nodes += 1;
        g.current_hourly_usd += n.hourly_usd;
        *regions
            .entry(n.group.as_str())
            .or_default()
            .entry((n.region.as_str(), n.capacity_type.as_str()))
            .or_default() += 1;
    }
    // DaemonSet requests per node: the largest seen on any node of the group.
    let mut ds: BTreeMap<&str, BTreeMap<&str, (f64, i64)>> = BTreeMap::new();
    for p in pods {
        let Some(n) = node_group.get(p.node.as_str()) else {
            continue;
        };
        let Some(g) = groups.get_mut(n.group.as_str()) else {
            continue;
        };
        let (cpu, mem) = per_pod
            .get(&(
                p.namespace.clone(),
                p.workload_kind.clone(),
                p.workload_name.clone(),
            ))
            .copied()
            .unwrap_or((p.cpu_request, p.memory_request));
        if p.workload_kind == "DaemonSet" {
            let e = ds
                .entry(n.group.as_str())
                .or_default()
                .entry(p.node.as_str())
                .or_default();
            e.0 += cpu;
            e.1 += mem;
            continue;
        }
        g.cpu_cores += cpu;
        g.memory_bytes += mem;
        g.largest_cpu_cores = g.largest_cpu_cores.max(cpu);
        g.largest_memory_bytes = g.largest_memory_bytes.max(mem);
    }
    for (group, per_node) in ds {
        if let Some(g) = groups.get_mut(group) {
            g.daemonset_cpu_cores = per_node.values().map(|v| v.0).fold(0.0, f64::max);
            g.daemonset_memory_bytes = per_node.values().map(|v| v.1).max().unwrap_or(0);
        }
    }
    for (group, counts) in regions {
        if let (Some(g), Some(((region, capacity), _))) = (
            groups.get_mut(group),
            counts.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0))),
        ) {
            g.region = region.to_string();
            g.capacity_type = capacity.to_string();
        }
    }
    groups.into_values().collect()
}

/// The instance-type row of a node group.
pub(crate) fn instance_type_row(
    demand: &GroupDemand,
    s: &Suggestion,
    saves: f64,
) -> Recommendation {
    Recommendation {
        kind: "instance_type".into(),
        namespace: String::new(),
        target_kind: "NodeGroup".into(),
        target_name: s.group.clone(),
        current_replicas: Some(demand.current_nodes as i64),
        recommended_replicas: Some(s.nodes as i64),
        confidence: Some(1.0),
        why: s.why.clone(),
        savings_monthly_usd: Some((saves * 100.0).round() / 100.0),
        current_instance_type: Some(
            demand
                .current_types
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(","),
        ),
        recommended_instance_type: Some(s.instance_type.clone()),
        ..Recommendation::default()
    }
}
