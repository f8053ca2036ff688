use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// Every table the appliance stores. The first ten are written by agents (or any Flight
/// client); `ContainerUsageHourly` is derived by the appliance from `container_usage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    ContainerUsage,
    NodeUsage,
    Workloads,
    Pods,
    Events,
    NetworkFlows,
    DnsLookups,
    Prices,
    Recommendations,
    Actions,
    ContainerUsageHourly,
}

/// Everything the storage engine needs to know about a table.
#[derive(Debug)]
pub struct TableDef {
    pub table: Table,
    pub schema: SchemaRef,
    /// Columns that identify one series; Parquet files are sorted by these, then `time`.
    pub series_key: &'static [&'static str],
    /// Whether clients may write the table (derived tables are the appliance's own).
    pub ingestible: bool,
    /// What one row means, for the schema browser and the docs.
    pub description: &'static str,
}

#[derive(Debug, thiserror::Error)]
#[error("unknown table `{0}`; known tables: {known}", known = Table::ALL.iter().map(|t| t.name()).collect::<Vec<_>>().join(", "))]
pub struct UnknownTable(pub String);

impl Table {
    pub const ALL: [Table; 11] = [
        Table::ContainerUsage,
        Table::NodeUsage,
        Table::Workloads,
        Table::Pods,
        Table::Events,
        Table::NetworkFlows,
        Table::DnsLookups,
        Table::Prices,
        Table::Recommendations,
        Table::Actions,
        Table::ContainerUsageHourly,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Table::ContainerUsage => "container_usage",
            Table::NodeUsage => "node_usage",
            Table::Workloads => "workloads",
            Table::Pods => "pods",
            Table::Events => "events",
            Table::NetworkFlows => "network_flows",
            Table::DnsLookups => "dns_lookups",
            Table::Prices => "prices",
            Table::Recommendations => "recommendations",
            Table::Actions => "actions",
            Table::ContainerUsageHourly => "container_usage_hourly",
        }
    }

    pub fn def(self) -> &'static TableDef {
        &DEFS[self as usize]
    }

    pub fn schema(self) -> SchemaRef {
        self.def().schema.clone()
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Table {
    type Err = UnknownTable;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Table::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| UnknownTable(s.to_string()))
    }
}

impl serde::Serialize for Table {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Table {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

fn time() -> Field {
    Field::new(
        crate::TIME_COLUMN,
        DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        false,
    )
}
fn text(name: &str) -> Field {
    Field::new(name, DataType::Utf8, false)
}
fn text_opt(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true)
}
fn cores(name: &str) -> Field {
    Field::new(name, DataType::Float64, true)
}
fn bytes(name: &str) -> Field {
    Field::new(name, DataType::Int64, true)
}
fn float(name: &str) -> Field {
    Field::new(name, DataType::Float64, true)
}
fn int(name: &str) -> Field {
    Field::new(name, DataType::Int64, true)
}
fn ts_opt(name: &str) -> Field {
    Field::new(
        name,
        DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        true,
    )
}

/// The histogram column of a rollup: sparse log buckets as `(bucket index, sample count)`.
pub fn histogram_type() -> DataType {
    let entry = DataType::Struct(
        vec![
            Field::new("bucket", DataType::UInt16, false),
            Field::new("count", DataType::UInt32, false),
        ]
        .into(),
    );
    DataType::List(Arc::new(Field::new("item", entry, false)))
}

fn schema(fields: Vec<Field>) -> SchemaRef {
    Arc::new(Schema::new(fields))
}

static DEFS: LazyLock<Vec<TableDef>> = LazyLock::new(|| {
    let defs = vec![
        TableDef {
            table: Table::ContainerUsage,
            schema: schema(vec![
                time(),
                text("namespace"),
                text("pod"),
                text("container"),
                text("node"),
                text("workload_kind"),
                text("workload_name"),
                cores("cpu_cores"),
                bytes("memory_working_set_bytes"),
                bytes("memory_rss_bytes"),
                float("cpu_throttled_seconds"),
                cores("cpu_request_cores"),
                cores("cpu_limit_cores"),
                bytes("memory_request_bytes"),
                bytes("memory_limit_bytes"),
                float("gpu_utilization"),
                bytes("gpu_memory_bytes"),
                bytes("ephemeral_storage_bytes"),
            ]),
            series_key: &["namespace", "pod", "container"],
            ingestible: true,
            description: "One sample of one container's usage: CPU averaged over the sample interval, memory at the sample time, with the requests and limits in force then.",
        },
        TableDef {
            table: Table::NodeUsage,
            schema: schema(vec![
                time(),
                text("node"),
                text_opt("node_group"),
                text_opt("zone"),
                text_opt("region"),
                text_opt("instance_type"),
                text_opt("capacity_type"),
                cores("cpu_cores"),
                bytes("memory_working_set_bytes"),
                cores("cpu_capacity_cores"),
                bytes("memory_capacity_bytes"),
                cores("cpu_allocatable_cores"),
                bytes("memory_allocatable_bytes"),
                bytes("network_rx_bytes"),
                bytes("network_tx_bytes"),
                bytes("filesystem_used_bytes"),
                text_opt("labels"),
                text_opt("taints"),
            ]),
            series_key: &["node"],
            ingestible: true,
            description: "One sample of one node: usage, capacity and allocatable, with its zone, region, instance type and capacity type (on_demand or spot); labels as a JSON object and taints as a JSON array of {key, value, effect}.",
        },
        TableDef {
            table: Table::Workloads,
            schema: schema(vec![
                time(),
                text("namespace"),
                text("kind"),
                text("name"),
                text("container"),
                int("replicas"),
                cores("cpu_request_cores"),
                cores("cpu_limit_cores"),
                bytes("memory_request_bytes"),
                bytes("memory_limit_bytes"),
                int("hpa_min_replicas"),
                int("hpa_max_replicas"),
                float("hpa_target_cpu_utilization"),
                int("pdb_max_unavailable"),
                text_opt("labels"),
                Field::new("deleted", DataType::Boolean, false),
            ]),
            series_key: &["namespace", "kind", "name", "container"],
            ingestible: true,
            description: "A snapshot of one container of a top-level workload's spec, written when it changes: requests, limits, replicas, its HPA (target utilisation as a fraction) and PDB.",
        },
        TableDef {
            table: Table::Pods,
            schema: schema(vec![
                time(),
                text("namespace"),
                text("name"),
                text("node"),
                text("phase"),
                text("workload_kind"),
                text("workload_name"),
                text_opt("qos_class"),
                text_opt("ip"),
                text_opt("labels"),
                ts_opt("start_time"),
                Field::new("deleted", DataType::Boolean, false),
                cores("cpu_request_cores"),
                bytes("memory_request_bytes"),
                text_opt("scheduling"),
            ]),
            series_key: &["namespace", "name"],
            ingestible: true,
            description: "A snapshot of one pod, written when it changes: where it runs, its phase, the top-level workload that owns it, its effective requests (what the scheduler reserves: max of the init containers and the sum of the containers) and, in `scheduling`, a JSON object of what constrains where it may run: {node_selector: {..}, tolerations: [{key, operator, value, effect}], required_node_affinity: [nodeSelectorTerms as in the pod spec], local_storage: bool (emptyDir or hostPath volumes)}.",
        },
        TableDef {
            table: Table::Events,
            schema: schema(vec![
                time(),
                text("namespace"),
                text("pod"),
                text_opt("container"),
                text_opt("node"),
                text("workload_kind"),
                text("workload_name"),
                text("reason"),
                text_opt("message"),
                bytes("memory_limit_bytes"),
                int("restart_count"),
            ]),
            series_key: &["namespace", "pod"],
            ingestible: true,
            description: "Something that happened to a pod: reason OOMKilled, Restarted, Evicted, Unschedulable, …",
        },
        TableDef {
            table: Table::NetworkFlows,
            schema: schema(vec![
                time(),
                Field::new("window_seconds", DataType::Int64, false),
                text("node"),
                text("src_ip"),
                text("dst_ip"),
                Field::new("dst_port", DataType::Int64, false),
                text("protocol"),
                text_opt("src_namespace"),
                text_opt("src_pod"),
                text_opt("dst_domain"),
                Field::new("tx_bytes", DataType::Int64, false),
                Field::new("rx_bytes", DataType::Int64, false),
                Field::new("tx_packets", DataType::Int64, false),
                Field::new("rx_packets", DataType::Int64, false),
            ]),
            series_key: &["src_ip", "dst_ip", "dst_port", "protocol"],
            ingestible: true,
            description: "Traffic of one flow (source IP, destination IP, destination port, protocol) in the window ending at `time`, seen from the source pod's node.",
        },
        TableDef {
            table: Table::DnsLookups,
            schema: schema(vec![
                time(),
                text("node"),
                text("client_ip"),
                text_opt("client_namespace"),
                text_opt("client_pod"),
                text("query_name"),
                text("query_type"),
                text("answers"),
                text_opt("cname_chain"),
                int("ttl_seconds"),
            ]),
            series_key: &["client_ip", "query_name"],
            ingestible: true,
            description: "One DNS answer seen by a node: the name asked, the addresses answered (comma-separated) and the CNAME chain followed.",
        },
        TableDef {
            table: Table::Prices,
            schema: schema(vec![
                time(),
                text("provider"),
                text("region"),
                text("instance_type"),
                text("capacity_type"),
                Field::new("hourly_usd", DataType::Float64, false),
                cores("cpu_cores"),
                bytes("memory_bytes"),
                int("gpu_count"),
                text("source"),
            ]),
            series_key: &["provider", "region", "instance_type", "capacity_type"],
            ingestible: true,
            description: "The hourly price of an instance type from `time` on; source says whether it is the shipped catalog or the user's override.",
        },
        TableDef {
            table: Table::Recommendations,
            schema: schema(vec![
                time(),
                text("run_id"),
                text("kind"),
                text("namespace"),
                text("target_kind"),
                text("target_name"),
                text_opt("container"),
                cores("current_cpu_request_cores"),
                cores("recommended_cpu_request_cores"),
                cores("current_cpu_limit_cores"),
                cores("recommended_cpu_limit_cores"),
                bytes("current_memory_request_bytes"),
                bytes("recommended_memory_request_bytes"),
                bytes("current_memory_limit_bytes"),
                bytes("recommended_memory_limit_bytes"),
                int("current_replicas"),
                int("recommended_replicas"),
                float("confidence"),
                text("why"),
                float("savings_monthly_usd"),
                int("current_max_replicas"),
                int("recommended_max_replicas"),
                float("current_target_cpu_utilization"),
                float("recommended_target_cpu_utilization"),
                text_opt("current_instance_type"),
                text_opt("recommended_instance_type"),
            ]),
            series_key: &["namespace", "target_kind", "target_name", "container"],
            ingestible: true,
            description: "One recommendation of one analysis run, kept with its history: what is set now, what Tally recommends, how sure it is, why, and what it saves per month. kind is rightsizing, replicas, hpa, consolidation or instance_type; for hpa rows the replicas columns are the HPA's minimum and the max_replicas/target columns its maximum and target CPU utilisation (a fraction); for consolidation and instance_type rows of a node group (target_kind NodeGroup, namespace '') the replicas columns count nodes.",
        },
        TableDef {
            table: Table::Actions,
            schema: schema(vec![
                time(),
                text("action_id"),
                text_opt("recommendation_id"),
                text("operation"),
                text("namespace"),
                text("target_kind"),
                text("target_name"),
                text("actor"),
                text_opt("policy"),
                text_opt("before"),
                text_opt("after"),
                text("result"),
                text_opt("message"),
            ]),
            series_key: &["namespace", "target_kind", "target_name"],
            ingestible: true,
            description: "The audit log: every change the operator made or refused, who or what approved it, the spec before and after, and the result.",
        },
        TableDef {
            table: Table::ContainerUsageHourly,
            schema: schema(vec![
                time(),
                text("namespace"),
                text("pod"),
                text("container"),
                text("node"),
                text("workload_kind"),
                text("workload_name"),
                Field::new("samples", DataType::Int64, false),
                Field::new("cpu_sum", DataType::Float64, false),
                Field::new("cpu_min", DataType::Float64, false),
                Field::new("cpu_max", DataType::Float64, false),
                Field::new("cpu_histogram", histogram_type(), false),
                Field::new("memory_sum", DataType::Float64, false),
                Field::new("memory_min", DataType::Int64, false),
                Field::new("memory_max", DataType::Int64, false),
                Field::new("memory_histogram", histogram_type(), false),
            ]),
            series_key: &["namespace", "pod", "container"],
            ingestible: false,
            description: "The appliance's hourly rollup of container_usage per container: sample count, sum, min, max and a log-bucket histogram (5 % growth) of CPU and memory. Several rows may exist for one container and hour; aggregate them.",
        },
    ];
    for (i, def) in defs.iter().enumerate() {
        assert_eq!(def.table as usize, i, "DEFS must follow Table's order");
    }
    defs
});

/// Why a batch's schema does not fit its table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaMismatch {
    #[error("table `{table}` has no column `{column}`")]
    UnexpectedColumn { table: Table, column: String },
    #[error("column `{column}` of table `{table}` is missing")]
    MissingColumn { table: Table, column: String },
    #[error("column `{column}` of table `{table}` must be {expected}, got {actual}")]
    WrongType {
        table: Table,
        column: String,
        expected: String,
        actual: String,
    },
    #[error("column `{column}` of table `{table}` must be in position {expected}, got {actual}")]
    WrongPosition {
        table: Table,
        column: String,
        expected: usize,
        actual: usize,
    },
    #[error("table `{0}` is derived by the appliance and cannot be written")]
    NotIngestible(Table),
}

/// Checks that `schema` is exactly the table's schema: same columns in the same order, same
/// types. A non-nullable column may arrive declared nullable; its values are checked for nulls
/// when the batch is stored.
pub fn validate_schema(table: Table, schema: &Schema) -> Result<(), SchemaMismatch> {
    let def = table.def();
    if !def.ingestible {
        return Err(SchemaMismatch::NotIngestible(table));
    }
    let expected = &def.schema;
    for field in schema.fields() {
        if expected.field_with_name(field.name()).is_err() {
            return Err(SchemaMismatch::UnexpectedColumn {
                table,
                column: field.name().clone(),
            });
        }
    }
    for (position, want) in expected.fields().iter().enumerate() {
        let Some((actual_position, got)) = schema.column_with_name(want.name()) else {
            return Err(SchemaMismatch::MissingColumn {
                table,
                column: want.name().clone(),
            });
        };
        if got.data_type() != want.data_type() {
            return Err(SchemaMismatch::WrongType {
                table,
                column: want.name().clone(),
                expected: want.data_type().to_string(),
                actual: got.data_type().to_string(),
            });
        }
        if actual_position != position {
            return Err(SchemaMismatch::WrongPosition {
                table,
                column: want.name().clone(),
                expected: position,
                actual: actual_position,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_has_time_first_and_its_series_key() {
        for table in Table::ALL {
            let def = table.def();
            assert_eq!(def.table, table);
            assert_eq!(def.schema.field(0).name(), crate::TIME_COLUMN, "{table}");
            for key in def.series_key {
                assert!(def.schema.field_with_name(key).is_ok(), "{table}.{key}");
            }
            assert_eq!(table.name().parse::<Table>().unwrap(), table);
        }
    }

    #[test]
    fn units_follow_the_naming_convention() {
        for table in Table::ALL {
            for field in table.schema().fields() {
                let name = field.name();
                if name.ends_with("_cores") || name.ends_with("_usd") {
                    assert_eq!(field.data_type(), &DataType::Float64, "{table}.{name}");
                }
                if name.ends_with("_bytes") {
                    assert_eq!(field.data_type(), &DataType::Int64, "{table}.{name}");
                }
            }
        }
    }

    #[test]
    fn unknown_table_lists_the_known_ones() {
        let err = "nope".parse::<Table>().unwrap_err().to_string();
        assert!(
            err.starts_with("unknown table `nope`; known tables: container_usage,"),
            "{err}"
        );
    }

    #[test]
    fn validation_names_the_offending_column() {
        let good = Table::Events.schema();
        validate_schema(Table::Events, &good).unwrap();

        let mut fields: Vec<Field> = good.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields[7] = Field::new("reason", DataType::Int64, false);
        let err = validate_schema(Table::Events, &Schema::new(fields.clone())).unwrap_err();
        assert_eq!(
            err.to_string(),
            "column `reason` of table `events` must be Utf8, got Int64"
        );

        fields.pop();
        fields[7] = Field::new("reason", DataType::Utf8, false);
        let err = validate_schema(Table::Events, &Schema::new(fields.clone())).unwrap_err();
        assert!(matches!(err, SchemaMismatch::MissingColumn { .. }), "{err}");

        fields.push(Field::new("restart_count", DataType::Int64, true));
        fields.push(Field::new("secret", DataType::Utf8, true));
        let err = validate_schema(Table::Events, &Schema::new(fields)).unwrap_err();
        assert_eq!(err.to_string(), "table `events` has no column `secret`");

        let err = validate_schema(
            Table::ContainerUsageHourly,
            &Table::ContainerUsageHourly.schema(),
        )
        .unwrap_err();
        assert!(matches!(err, SchemaMismatch::NotIngestible(_)));
    }
}
