//! The operator's link to the appliance, over mutual TLS on the appliance's Flight port:
//! recommendations are read with a Flight SQL query (the latest analysis run), actions are
//! appended to the `actions` table with Flight `DoPut`. When a run finishes the appliance
//! pushes it over its recommendation stream ([`crate::stream`]), which triggers a pass that
//! reads it here: pushed and polled runs go through the same code.
//!
//! The certificate comes from the appliance's bootstrap endpoint (the ServiceAccount token
//! proves who the operator is) and is renewed at two thirds of its life by
//! `tally_wire::link::AgentTls`, the same as every agent's, or from files.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{Float64Type, Int64Type};
use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::TryStreamExt;
use tally_wire::link::{AgentTls, CertificateError};
use tally_wire::{BatchKey, ClientTls, IngestClient, KeySource, Table, split_for_flight};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::crd::{ContainerRecommendation, HpaRecommendation, Resources, WorkloadKind};

pub use tally_wire::agent::Credentials;

#[derive(Debug, thiserror::Error)]
pub enum ApplianceError {
    #[error("cannot get a client certificate: {0}")]
    Certificate(#[from] CertificateError),
    #[error("cannot connect to the appliance at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("query `{sql}` failed: {reason}")]
    Query { sql: String, reason: String },
    #[error("the appliance refused the action rows: {0}")]
    Write(String),
}

/// A node group a consolidation plan would shrink (queries/operator_node_groups.sql).
#[derive(Debug, Clone, PartialEq)]
pub struct NodeGroupRow {
    pub run_id: String,
    pub node_group: String,
    pub current_nodes: i64,
    pub target_nodes: i64,
    pub nodes_to_remove: Vec<String>,
    pub why: String,
    pub savings_monthly_usd: f64,
}

/// One workload's recommendation from one analysis run.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadRow {
    pub run_id: String,
    pub namespace: String,
    pub kind: WorkloadKind,
    pub name: String,
    pub containers: Vec<ContainerRecommendation>,
    pub replicas: Option<(Option<i64>, Option<i64>)>,
    pub hpa: Option<HpaRecommendation>,
    pub confidence: f64,
    pub why: String,
    pub savings_monthly_usd: f64,
}

impl WorkloadRow {
    /// `run/namespace/Kind/name`: the recommendation id in the `actions` table.
    pub fn id(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.run_id,
            self.namespace,
            self.kind.as_str(),
            self.name
        )
    }
}

/// One row of the appliance's audit log.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionRow {
    pub recommendation_id: Option<String>,
    pub operation: String,
    pub namespace: String,
    pub target_kind: String,
    pub target_name: String,
    pub actor: String,
    pub policy: Option<String>,
    pub before: Option<String>,
    pub after: Option<String>,
    pub result: String,
    pub message: Option<String>,
}

/// A connection to the appliance that renews its certificate (`tally_wire::link`) and
/// reconnects when needed.
pub struct Appliance {
    url: String,
    tls: AgentTls,
    sql: Option<FlightSqlServiceClient<Channel>>,
    ingest: Option<IngestClient>,
    /// The keys of the action batches ([`Appliance::log`]): one producer per process.
    keys: KeySource,
    /// The last action write that got no acknowledgement: its rows, and the keyed batches
    /// sent. Logging the same rows again resends these (same keys), so an appliance that
    /// stored them before the acknowledgement was lost does not store them twice.
    unacknowledged: Option<Unacknowledged>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Appliance {
    pub fn new(url: String, credentials: Credentials) -> Self {
        Self {
            url,
            tls: AgentTls::new(credentials),
            sql: None,
            ingest: None,
            keys: KeySource::new(),
            unacknowledged: None,
        }
    }

    /// Drops the connections (after an error), so the next call reconnects.
    pub fn reset(&mut self) {
        self.sql = None;
        self.ingest = None;
    }

    /// The identity to connect with; a renewed certificate drops the connections made with
    /// the previous one.
    async fn tls(&mut self) -> Result<Option<ClientTls>, ApplianceError> {
        let current = self.tls.current().await?;
        if current.renewed {
            self.reset();
        }
        Ok(current.tls)
    }

    async fn sql_client(&mut self) -> Result<&mut FlightSqlServiceClient<Channel>, ApplianceError> {
        let tls = self.tls().await?;
        if self.sql.is_none() {
            let connect = |reason: String| ApplianceError::Connect {
                url: self.url.clone(),
                reason,
            };
            let mut endpoint =
                Endpoint::from_shared(self.url.clone()).map_err(|e| connect(e.to_string()))?;
            if let Some(tls) = tls {
                let mut config = ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(tls.ca_pem))
                    .identity(Identity::from_pem(tls.cert_pem, tls.key_pem));
                if let Some(domain) = tls.domain {
                    config = config.domain_name(domain);
                }
                endpoint = endpoint
                    .tls_config(config)
                    .map_err(|e| connect(e.to_string()))?;
            }
            let channel = endpoint
                .connect()
                .await
                .map_err(|e| connect(error_chain(&e)))?;
            self.sql = Some(FlightSqlServiceClient::new(channel));
        }
        Ok(self.sql.as_mut().expect("connected"))
    }

    /// Runs a query and returns its batches.
    pub async fn query(&mut self, sql: &str) -> Result<Vec<RecordBatch>, ApplianceError> {
        let fail = |reason: String| ApplianceError::Query {
            sql: sql.to_string(),
            reason,
        };
        let client = self.sql_client().await?;
        let result = async {
            let info = client.execute(sql.to_string(), None).await?;
            let mut batches = Vec::new();
            for endpoint in info.endpoint {
                let Some(ticket) = endpoint.ticket else {
                    continue;
                };
                let stream = client.do_get(ticket).await?;
                let mut got: Vec<RecordBatch> = stream.try_collect().await?;
                batches.append(&mut got);
            }
            Ok::<_, arrow_flight::error::FlightError>(batches)
        }
        .await;
        result.map_err(|e| {
            self.reset();
            fail(e.to_string())
        })
    }

    /// The workload recommendations (kind `rightsizing`) of the latest analysis run.
    pub async fn latest_recommendations(&mut self) -> Result<Vec<WorkloadRow>, ApplianceError> {
        let latest = self
            .query(
                "SELECT run_id FROM recommendations WHERE kind = 'rightsizing' \
                 ORDER BY time DESC LIMIT 1",
            )
            .await?;
        let Some(run_id) = latest
            .iter()
            .find(|b| b.num_rows() > 0)
            .map(|b| b.column(0).as_string::<i32>().value(0).to_string())
        else {
            return Ok(Vec::new());
        };
        let sql = format!(
            "SELECT run_id, namespace, target_kind, target_name, container, \
             current_cpu_request_cores, recommended_cpu_request_cores, \
             current_cpu_limit_cores, recommended_cpu_limit_cores, \
             current_memory_request_bytes, recommended_memory_request_bytes, \
             current_memory_limit_bytes, recommended_memory_limit_bytes, \
             current_replicas, recommended_replicas, confidence, why, savings_monthly_usd \
             FROM recommendations WHERE run_id = '{}' AND kind = 'rightsizing' \
             ORDER BY namespace, target_kind, target_name, container",
            run_id.replace('\'', "''")
        );
        let batches = self.query(&sql).await?;
        Ok(group_rows(&batches))
    }

    /// The node groups the newest consolidation plan would shrink
    /// (queries/operator_node_groups.sql).
    pub async fn node_groups(&mut self) -> Result<Vec<NodeGroupRow>, ApplianceError> {
        let sql = tally_queries::analysis::OPERATOR_NODE_GROUPS
            .render(&[("run_id", tally_queries::Param::Text(String::new()))])
            .map_err(|e| ApplianceError::Query {
                sql: "operator_node_groups.sql".into(),
                reason: e.to_string(),
            })?;
        let batches = self.query(&sql).await?;
        let mut out = Vec::new();
        for b in &batches {
            let text = |name: &str| {
                b.column_by_name(name)
                    .and_then(|c| arrow::compute::cast(c, &arrow::datatypes::DataType::Utf8).ok())
            };
            let (Some(run), Some(group), Some(nodes), Some(why)) = (
                text("run_id"),
                text("node_group"),
                text("nodes_to_remove"),
                text("why"),
            ) else {
                continue;
            };
            let int = |name: &str| {
                b.column_by_name(name)
                    .and_then(|c| arrow::compute::cast(c, &arrow::datatypes::DataType::Int64).ok())
            };
            let (Some(now), Some(target)) = (int("current_nodes"), int("target_nodes")) else {
                continue;
            };
            let savings = b
                .column_by_name("savings_monthly_usd")
                .and_then(|c| arrow::compute::cast(c, &arrow::datatypes::DataType::Float64).ok());
            let (run, group, nodes, why) = (
                run.as_string::<i32>(),
                group.as_string::<i32>(),
                nodes.as_string::<i32>(),
                why.as_string::<i32>(),
            );
            let (now, target) = (
                now.as_primitive::<Int64Type>(),
                target.as_primitive::<Int64Type>(),
            );
            for i in 0..b.num_rows() {
                out.push(NodeGroupRow {
                    run_id: run.value(i).to_string(),
                    node_group: group.value(i).to_string(),
                    current_nodes: now.value(i),
                    target_nodes: target.value(i),
                    nodes_to_remove: nodes
                        .value(i)
                        .split(',')
                        .filter(|n| !n.is_empty())
                        .map(str::to_string)
                        .collect(),
                    why: why.value(i).to_string(),
                    savings_monthly_usd: savings
                        .as_ref()
                        .map(|s| s.as_primitive::<Float64Type>())
                        .filter(|s| s.is_valid(i))
                        .map_or(0.0, |s| s.value(i)),
                });
            }
        }
        Ok(out)
    }

    /// Recommendation ids whose custom resource a person deleted (the operator does not
    /// create them again for the same run).
    pub async fn dismissed(&mut self, run_id: &str) -> Result<Vec<String>, ApplianceError> {
        let sql = format!(
            "SELECT DISTINCT recommendation_id FROM actions WHERE operation = 'dismiss' \
             AND recommendation_id LIKE '{}/%'",
            run_id.replace('\'', "''")
        );
        let batches = self.query(&sql).await?;
        Ok(batches
            .iter()
            .flat_map(|b| {
                let col = b.column(0).as_string::<i32>();
                (0..b.num_rows())
                    .filter(|&i| col.is_valid(i))
                    .map(|i| col.value(i).to_string())
                    .collect::<Vec<_>>()
            })
            .collect())
    }

    /// Appends actions to the `actions` table (durable once this returns), as keyed batches
    /// (`tally_wire::key`): when a write fails and the same rows are logged again (the
    /// reconcile loop retries a decision on its next pass), they go with the same keys and
    /// the appliance stores them once even if it had stored them before the
    /// acknowledgement was lost. Other rows drop the unacknowledged batch and get new keys
    /// (keys only ever increase, as the key contract wants).
    pub async fn log(&mut self, actions: &[ActionRow]) -> Result<(), ApplianceError> {
        if actions.is_empty() {
            return Ok(());
        }
        let batches = keyed_batches(&mut self.keys, self.unacknowledged.take(), actions);
        let tls = self.tls().await?;
        if self.ingest.is_none() {
            let client = IngestClient::connect(&self.url, tls).await.map_err(|e| {
                ApplianceError::Connect {
                    url: self.url.clone(),
                    reason: e.to_string(),
                }
            })?;
            self.ingest = Some(client);
        }
        let client = self.ingest.as_mut().expect("connected");
        if let Err(e) = client.write_keyed(Table::Actions, batches.clone()).await {
            self.unacknowledged = Some((actions.to_vec(), batches));
            self.reset();
            return Err(ApplianceError::Write(e.to_string()));
        }
        Ok(())
    }
}

/// An action write without an acknowledgement: its rows and the keyed batches sent.
type Unacknowledged = (Vec<ActionRow>, Vec<(BatchKey, RecordBatch)>);

/// The keyed batches of `actions`: those of the unacknowledged write when it held the same
/// rows (a resend), otherwise new batches (each part under 2 MiB) with new keys.
fn keyed_batches(
    keys: &mut KeySource,
    unacknowledged: Option<Unacknowledged>,
    actions: &[ActionRow],
) -> Vec<(BatchKey, RecordBatch)> {
    match unacknowledged {
        Some((rows, batches)) if rows == actions => batches,
        _ => split_for_flight(&actions_batch(actions, now_ms()))
            .into_iter()
            .map(|b| (keys.next_key(), b))
            .collect(),
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The `actions` rows as one batch of the wire schema.
pub fn actions_batch(actions: &[ActionRow], time_ms: i64) -> RecordBatch {
    let n = actions.len();
    let text = |f: &dyn Fn(&ActionRow) -> String| {
        Arc::new(StringArray::from_iter_values(actions.iter().map(f))) as Arc<dyn Array>
    };
    let opt = |f: &dyn Fn(&ActionRow) -> Option<String>| {
        Arc::new(actions.iter().map(f).collect::<StringArray>()) as Arc<dyn Array>
    };
    RecordBatch::try_new(
        Table::Actions.schema(),
        vec![
            Arc::new(TimestampMillisecondArray::from(vec![time_ms; n]).with_timezone("UTC")),
            text(&|_| uuid::Uuid::new_v4().to_string()),
            opt(&|a| a.recommendation_id.clone()),
            text(&|a| a.operation.clone()),
            text(&|a| a.namespace.clone()),
            text(&|a| a.target_kind.clone()),
            text(&|a| a.target_name.clone()),
            text(&|a| a.actor.clone()),
            opt(&|a| a.policy.clone()),
            opt(&|a| a.before.clone()),
            opt(&|a| a.after.clone()),
            text(&|a| a.result.clone()),
            opt(&|a| a.message.clone()),
        ],
    )
    .expect("actions batch of the wire schema")
}

/// Rows (one per container) grouped into one recommendation per workload. Rows of kinds the
/// operator cannot change (a bare ReplicaSet, a Job) are left out.
pub fn group_rows(batches: &[RecordBatch]) -> Vec<WorkloadRow> {
    let mut out: BTreeMap<(String, String, String), WorkloadRow> = BTreeMap::new();
    for b in batches {
        let s = |i: usize| b.column(i).as_string::<i32>();
        let f = |i: usize| b.column(i).as_primitive::<Float64Type>();
        let n = |i: usize| b.column(i).as_primitive::<Int64Type>();
        let fo = |i: usize, row: usize| f(i).is_valid(row).then(|| f(i).value(row));
        let no = |i: usize, row: usize| n(i).is_valid(row).then(|| n(i).value(row));
        for row in 0..b.num_rows() {
            let Some(kind) = WorkloadKind::parse(s(2).value(row)) else {
                continue;
            };
            let key = (
                s(1).value(row).to_string(),
                s(2).value(row).to_string(),
                s(3).value(row).to_string(),
            );
            let entry = out.entry(key).or_insert_with(|| WorkloadRow {
                run_id: s(0).value(row).to_string(),
                namespace: s(1).value(row).to_string(),
                kind,
                name: s(3).value(row).to_string(),
                containers: Vec::new(),
                replicas: None,
                hpa: None,
                confidence: fo(15, row).unwrap_or(0.0),
                why: s(16).value(row).to_string(),
                savings_monthly_usd: 0.0,
            });
            entry.savings_monthly_usd += fo(17, row).unwrap_or(0.0);
            entry.confidence = entry.confidence.min(fo(15, row).unwrap_or(0.0));
            let (cur_rep, rec_rep) = (no(13, row), no(14, row));
            if cur_rep.is_some() || rec_rep.is_some() {
                entry.replicas = Some((cur_rep, rec_rep));
            }
            if s(4).is_valid(row) {
                entry.containers.push(ContainerRecommendation {
                    name: s(4).value(row).to_string(),
                    current: Resources {
                        cpu_request_cores: fo(5, row),
                        cpu_limit_cores: fo(7, row),
                        memory_request_bytes: no(9, row),
                        memory_limit_bytes: no(11, row),
                    },
                    recommended: Resources {
                        cpu_request_cores: fo(6, row),
                        cpu_limit_cores: fo(8, row),
                        memory_request_bytes: no(10, row),
                        memory_limit_bytes: no(12, row),
                    },
                });
            }
        }
    }
    out.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array};

    #[test]
    fn the_same_rows_logged_again_go_with_the_same_keys() {
        let row = |operation: &str| ActionRow {
            recommendation_id: Some("run/ns/Deployment/web".into()),
            operation: operation.into(),
            namespace: "ns".into(),
            target_kind: "Deployment".into(),
            target_name: "web".into(),
            actor: "policy/p".into(),
            policy: Some("p".into()),
            before: None,
            after: None,
            result: "skipped".into(),
            message: None,
        };
        let mut keys = KeySource::new();
        let first = keyed_batches(&mut keys, None, &[row("audit")]);
        assert_eq!(first.len(), 1);
        // The write failed; the same rows again: the same key and the same batch (the row's
        // id and time included), so the appliance recognises a resend.
        let again = keyed_batches(
            &mut keys,
            Some((vec![row("audit")], first.clone())),
            &[row("audit")],
        );
        assert_eq!(again, first);
        // Other rows: a new, higher key; the unacknowledged batch is dropped.
        let other = keyed_batches(
            &mut keys,
            Some((vec![row("audit")], first.clone())),
            &[row("skip")],
        );
        assert_eq!(other[0].0.producer, first[0].0.producer);
        assert!(other[0].0.sequence > first[0].0.sequence);
        assert_ne!(other[0].1, first[0].1);
    }

    #[test]
    fn action_rows_fit_the_wire_schema() {
        let row = ActionRow {
            recommendation_id: Some("run/ns/Deployment/web".into()),
            operation: "apply".into(),
            namespace: "ns".into(),
            target_kind: "Deployment".into(),
            target_name: "web".into(),
            actor: "policy/p (auto-apply)".into(),
            policy: Some("p".into()),
            before: Some("{}".into()),
            after: None,
            result: "applied".into(),
            message: None,
        };
        let batch = actions_batch(&[row.clone(), row], 1_000);
        assert_eq!(batch.num_rows(), 2);
        tally_wire::validate_schema(Table::Actions, &batch.schema()).expect("actions schema");
        let ids = batch.column(1).as_string::<i32>();
        assert_ne!(ids.value(0), ids.value(1), "each action has its own id");
    }

    #[test]
    fn container_rows_group_into_one_recommendation_per_workload() {
        let text = |v: Vec<Option<&str>>| Arc::new(StringArray::from(v)) as Arc<dyn Array>;
        let f = |v: Vec<Option<f64>>| Arc::new(Float64Array::from(v)) as Arc<dyn Array>;
        let i = |v: Vec<Option<i64>>| Arc::new(Int64Array::from(v)) as Arc<dyn Array>;
        let batch = RecordBatch::try_from_iter(vec![
            ("run_id", text(vec![Some("r"); 3])),
            ("namespace", text(vec![Some("ns"); 3])),
            (
                "target_kind",
                text(vec![Some("Deployment"), Some("Deployment"), Some("Job")]),
            ),
            (
                "target_name",
                text(vec![Some("web"), Some("web"), Some("batch")]),
            ),
            (
                "container",
                text(vec![Some("app"), Some("side"), Some("x")]),
            ),
            ("c1", f(vec![Some(1.0), Some(0.2), None])),
            ("c2", f(vec![Some(0.5), Some(0.1), None])),
            ("c3", f(vec![None, None, None])),
            ("c4", f(vec![None, None, None])),
            ("c5", i(vec![Some(100), Some(10), None])),
            ("c6", i(vec![Some(50), None, None])),
            ("c7", i(vec![None, None, None])),
            ("c8", i(vec![None, None, None])),
            ("c9", i(vec![Some(3), Some(3), None])),
            ("c10", i(vec![Some(2), Some(2), None])),
            ("confidence", f(vec![Some(0.9), Some(0.7), Some(1.0)])),
            ("why", text(vec![Some("p95"), Some("p95"), Some("x")])),
            ("savings", f(vec![Some(10.0), Some(2.5), Some(1.0)])),
        ])
        .unwrap();
        let rows = group_rows(&[batch]);
        assert_eq!(rows.len(), 1, "the Job is left out: {rows:?}");
        let web = &rows[0];
        assert_eq!(web.id(), "r/ns/Deployment/web");
        assert_eq!(web.containers.len(), 2);
        assert_eq!(web.savings_monthly_usd, 12.5);
        assert_eq!(web.confidence, 0.7);
        assert_eq!(web.replicas, Some((Some(3), Some(2))));
        assert_eq!(web.containers[0].recommended.cpu_request_cores, Some(0.5));
        assert_eq!(web.containers[1].recommended.memory_request_bytes, None);
    }
}
