//! Arrow record batches in the wire schemas (`tally_wire::Table`) from the collector's rows.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use tally_wire::Table;

use crate::inventory::{EventRow, PodRow, WorkloadRow};
use crate::usage::{ContainerUsageRow, NodeUsageRow};

fn time<T>(rows: &[T], f: impl Fn(&T) -> i64) -> ArrayRef {
    Arc::new(TimestampMillisecondArray::from_iter_values(rows.iter().map(f)).with_timezone("UTC"))
}
fn text<T>(rows: &[T], f: impl Fn(&T) -> &str) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
}
fn text_opt<T>(rows: &[T], f: impl Fn(&T) -> Option<&str>) -> ArrayRef {
    Arc::new(rows.iter().map(f).collect::<StringArray>())
}
fn float<T>(rows: &[T], f: impl Fn(&T) -> Option<f64>) -> ArrayRef {
    Arc::new(rows.iter().map(f).collect::<Float64Array>())
}
fn int<T>(rows: &[T], f: impl Fn(&T) -> Option<i64>) -> ArrayRef {
    Arc::new(rows.iter().map(f).collect::<Int64Array>())
}
fn flag<T>(rows: &[T], f: impl Fn(&T) -> bool) -> ArrayRef {
    Arc::new(rows.iter().map(|r| Some(f(r))).collect::<BooleanArray>())
}

fn batch(table: Table, columns: Vec<ArrayRef>) -> RecordBatch {
    RecordBatch::try_new(table.schema(), columns).expect("columns follow the wire schema")
}

/// `pods` rows.
pub fn pods(rows: &[PodRow]) -> RecordBatch {
    batch(
        Table::Pods,
        vec![
            time(rows, |r| r.time_ms),
            text(rows, |r| &r.namespace),
            text(rows, |r| &r.name),
            text(rows, |r| &r.node),
            text(rows, |r| &r.phase),
            text(rows, |r| &r.workload_kind),
            text(rows, |r| &r.workload_name),
            text_opt(rows, |r| r.qos_class.as_deref()),
            text_opt(rows, |r| r.ip.as_deref()),
            text_opt(rows, |r| r.labels.as_deref()),
            Arc::new(
                rows.iter()
                    .map(|r| r.start_time_ms)
                    .collect::<TimestampMillisecondArray>()
                    .with_timezone("UTC"),
            ),
            flag(rows, |r| r.deleted),
            float(rows, |r| r.cpu_request_cores),
            int(rows, |r| r.memory_request_bytes),
            text_opt(rows, |r| r.scheduling.as_deref()),
        ],
    )
}

/// `workloads` rows.
pub fn workloads(rows: &[WorkloadRow]) -> RecordBatch {
    batch(
        Table::Workloads,
        vec![
            time(rows, |r| r.time_ms),
            text(rows, |r| &r.namespace),
            text(rows, |r| &r.kind),
            text(rows, |r| &r.name),
            text(rows, |r| &r.container),
            int(rows, |r| r.replicas),
            float(rows, |r| r.cpu_request_cores),
            float(rows, |r| r.cpu_limit_cores),
            int(rows, |r| r.memory_request_bytes),
            int(rows, |r| r.memory_limit_bytes),
            int(rows, |r| r.hpa_min_replicas),
            int(rows, |r| r.hpa_max_replicas),
            float(rows, |r| r.hpa_target_cpu_utilization),
            // PodDisruptionBudgets are not watched yet.
            int(rows, |_| None),
            text_opt(rows, |r| r.labels.as_deref()),
            flag(rows, |r| r.deleted),
        ],
    )
}

/// `events` rows.
pub fn events(rows: &[EventRow]) -> RecordBatch {
    batch(
        Table::Events,
        vec![
            time(rows, |r| r.time_ms),
            text(rows, |r| &r.namespace),
            text(rows, |r| &r.pod),
            text_opt(rows, |r| r.container.as_deref()),
            text_opt(rows, |r| r.node.as_deref()),
            text(rows, |r| &r.workload_kind),
            text(rows, |r| &r.workload_name),
            text(rows, |r| &r.reason),
            text_opt(rows, |r| r.message.as_deref()),
            int(rows, |r| r.memory_limit_bytes),
            int(rows, |r| r.restart_count),
        ],
    )
}

/// `container_usage` rows.
pub fn container_usage(rows: &[ContainerUsageRow]) -> RecordBatch {
    batch(
        Table::ContainerUsage,
        vec![
            time(rows, |r| r.time_ms),
            text(rows, |r| &r.namespace),
            text(rows, |r| &r.pod),
            text(rows, |r| &r.container),
            text(rows, |r| &r.node),
            text(rows, |r| &r.info.workload_kind),
            text(rows, |r| &r.info.workload_name),
            float(rows, |r| r.cpu_cores),
            int(rows, |r| r.memory_working_set_bytes),
            int(rows, |r| r.memory_rss_bytes),
            float(rows, |r| r.cpu_throttled_seconds),
            float(rows, |r| r.info.cpu_request_cores),
            float(rows, |r| r.info.cpu_limit_cores),
            int(rows, |r| r.info.memory_request_bytes),
            int(rows, |r| r.info.memory_limit_bytes),
            float(rows, |r| r.gpu_utilization),
            int(rows, |r| r.gpu_memory_bytes),
            int(rows, |r| r.ephemeral_storage_bytes),
        ],
    )
}

/// `node_usage` rows.
pub fn node_usage(rows: &[NodeUsageRow]) -> RecordBatch {
    batch(
        Table::NodeUsage,
        vec![
            time(rows, |r| r.time_ms),
            text(rows, |r| &r.info.name),
            text_opt(rows, |r| r.info.node_group.as_deref()),
            text_opt(rows, |r| r.info.zone.as_deref()),
            text_opt(rows, |r| r.info.region.as_deref()),
            text_opt(rows, |r| r.info.instance_type.as_deref()),
            text_opt(rows, |r| r.info.capacity_type.as_deref()),
            float(rows, |r| r.cpu_cores),
            int(rows, |r| r.memory_working_set_bytes),
            float(rows, |r| r.info.cpu_capacity_cores),
            int(rows, |r| r.info.memory_capacity_bytes),
            float(rows, |r| r.info.cpu_allocatable_cores),
            int(rows, |r| r.info.memory_allocatable_bytes),
            int(rows, |r| r.network_rx_bytes),
            int(rows, |r| r.network_tx_bytes),
            int(rows, |r| r.filesystem_used_bytes),
            text_opt(rows, |r| r.info.labels.as_deref()),
            text_opt(rows, |r| r.info.taints.as_deref()),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{ContainerInfo, NodeInfo};

    #[test]
    fn every_batch_matches_its_wire_schema() {
        let pod = PodRow {
            time_ms: 1,
            namespace: "n".into(),
            name: "p".into(),
            node: "".into(),
            phase: "Pending".into(),
            workload_kind: "Pod".into(),
            workload_name: "p".into(),
            qos_class: None,
            ip: None,
            labels: Some("{}".into()),
            start_time_ms: None,
            deleted: false,
            cpu_request_cores: Some(0.1),
            memory_request_bytes: None,
            scheduling: None,
        };
        tally_wire::validate_schema(Table::Pods, &pods(&[pod]).schema()).unwrap();
        let workload = WorkloadRow {
            time_ms: 1,
            namespace: "n".into(),
            kind: "Deployment".into(),
            name: "d".into(),
            container: "c".into(),
            replicas: Some(2),
            cpu_request_cores: None,
            cpu_limit_cores: None,
            memory_request_bytes: None,
            memory_limit_bytes: None,
            hpa_min_replicas: None,
            hpa_max_replicas: None,
            hpa_target_cpu_utilization: None,
            labels: None,
            deleted: true,
        };
        let b = workloads(&[workload]);
        tally_wire::validate_schema(Table::Workloads, &b.schema()).unwrap();
        assert_eq!(b.num_rows(), 1);
        let event = EventRow {
            time_ms: 1,
            namespace: "n".into(),
            pod: "p".into(),
            container: Some("c".into()),
            node: None,
            workload_kind: "Pod".into(),
            workload_name: "p".into(),
            reason: "OOMKilled".into(),
            message: None,
            memory_limit_bytes: Some(1),
            restart_count: Some(1),
        };
        tally_wire::validate_schema(Table::Events, &events(&[event]).schema()).unwrap();
        let usage = ContainerUsageRow {
            time_ms: 1,
            namespace: "n".into(),
            pod: "p".into(),
            container: "c".into(),
            node: "x".into(),
            info: ContainerInfo::default(),
            cpu_cores: Some(0.5),
            memory_working_set_bytes: Some(1),
            memory_rss_bytes: None,
            cpu_throttled_seconds: None,
            gpu_utilization: None,
            gpu_memory_bytes: None,
            ephemeral_storage_bytes: None,
        };
        tally_wire::validate_schema(Table::ContainerUsage, &container_usage(&[usage]).schema())
            .unwrap();
        let node = NodeUsageRow {
            time_ms: 1,
            info: NodeInfo::default(),
            cpu_cores: None,
            memory_working_set_bytes: None,
            network_rx_bytes: None,
            network_tx_bytes: None,
            filesystem_used_bytes: None,
        };
        tally_wire::validate_schema(Table::NodeUsage, &node_usage(&[node]).schema()).unwrap();
    }
}
